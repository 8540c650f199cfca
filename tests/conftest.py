import os

import torch

# Without a GPU the Triton kernels run in Triton's interpreter; this must be set before any kernel is defined.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Tests check correctness: one Triton configuration instead of autotuning every shape they draw.
os.environ.setdefault("PVF_TRITON_AUTOTUNE", "0")

import pytest  # noqa: E402

# Keep runs reproducible and CI-sized.
torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    no_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_cuda)


@pytest.fixture(autouse=True)
def _no_forced_backend(monkeypatch):
    """Tests choose backends explicitly; an inherited PVF_BACKEND must not leak in."""
    if "PVF_BACKEND" in os.environ:
        monkeypatch.delenv("PVF_BACKEND")
    yield
