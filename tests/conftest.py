import os

import pytest
import torch

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
