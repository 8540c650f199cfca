"""Backend selection: automatic choice, PVF_BACKEND, the context manager, and the fallback warning."""
import subprocess
import sys
import warnings

import pytest
import torch

import pyvision_fast
from pyvision_fast import _backend, _ext, ops, use_backend
from pyvision_fast.ops import pointcloud as pc


def test_automatic_choice_on_cpu():
    assert _backend.select("knn_points", torch.device("cpu"), pc._KNN_IMPLS)[0] == "cpu"


def test_context_manager_forces_and_restores():
    with use_backend("reference"):
        assert pyvision_fast.forced_backend() == "reference"
        assert _backend.select("knn_points", torch.device("cpu"), pc._KNN_IMPLS)[0] == "reference"
    assert pyvision_fast.forced_backend() is None


def test_environment_variable(monkeypatch):
    monkeypatch.setenv("PVF_BACKEND", "reference")
    assert _backend.select("knn_points", torch.device("cpu"), pc._KNN_IMPLS)[0] == "reference"
    monkeypatch.setenv("PVF_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="unknown backend 'nonsense'"):
        _backend.forced_backend()


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="unknown backend"):
        with use_backend("fortran"):
            pass


def test_forced_backend_an_op_lacks_falls_back_with_one_warning():
    _backend._warned.clear()
    with use_backend("triton"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        name1, _ = _backend.select("knn_points", torch.device("cpu"), pc._KNN_IMPLS)
        name2, _ = _backend.select("knn_points", torch.device("cpu"), pc._KNN_IMPLS)
    assert name1 == name2 == "cpu"
    assert len([w for w in caught if "no usable 'triton' backend" in str(w.message)]) == 1


def test_missing_compiled_module_falls_back_to_reference_with_one_warning():
    code = """
import sys, warnings, torch
sys.modules['pyvision_fast._C'] = None          # as if the extension had not been built
from pyvision_fast import ops
from pyvision_fast.reference import pointcloud as ref
p1, p2 = torch.rand(2, 20, 3), torch.rand(2, 30, 3)
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter('always')
    a = ops.knn_points(p1, p2, K=3).dists
    b = ops.knn_points(p1, p2, K=3).dists
msgs = [str(x.message) for x in w if 'falls back' in str(x.message)]
assert len(msgs) == 1, msgs
assert torch.allclose(a, ref.knn_points_idx(p1, p2, None, None, 3)[0])
print('ok')
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def _pretend_gpu(monkeypatch):
    """Every backend counts as available, so the GPU order of the automatic choice can be tested on a CPU."""
    monkeypatch.setattr(_backend, "available", lambda name, device: True)
    monkeypatch.delenv("PVF_CANDIDATES", raising=False)
    return torch.device("cuda")


def test_candidate_is_chosen_only_where_enabled(monkeypatch):
    gpu = _pretend_gpu(monkeypatch)
    table = {"cuda": "old", "cuda:next": "new", "reference": "ref"}
    monkeypatch.setitem(_backend._CANDIDATES, "toy_op", "cuda:next")
    assert _backend.select("toy_op", gpu, table)[0] == "cuda"
    with pyvision_fast.use_candidates("toy_op"):
        assert _backend.select("toy_op", gpu, table)[0] == "cuda:next"
        assert _backend.select("toy_op_backward", gpu, table)[0] == "cuda:next"  # follows its forward
    with pyvision_fast.use_candidates("other_op"):
        assert _backend.select("toy_op", gpu, table)[0] == "cuda"
    monkeypatch.setenv("PVF_CANDIDATES", "all")
    assert _backend.select("toy_op", gpu, table)[0] == "cuda:next"
    with pyvision_fast.use_candidates(None):  # the context manager overrides the environment
        assert _backend.select("toy_op", gpu, table)[0] == "cuda"
    # candidates are GPU implementations: the CPU choice never changes
    assert _backend.select("toy_op", torch.device("cpu"), {"cpu": 1, "cuda:next": 2})[0] == "cpu"


def test_backward_op_follows_its_forward_candidate_switch(monkeypatch):
    gpu = _pretend_gpu(monkeypatch)
    monkeypatch.setitem(_backend._CANDIDATES, "toy_op_backward", "triton")
    with pyvision_fast.use_candidates("toy_op"):
        assert _backend.select("toy_op_backward", gpu, {"cuda": 1, "triton": 2})[0] == "triton"


def test_preferred_key_and_forced_backend(monkeypatch):
    gpu = _pretend_gpu(monkeypatch)
    monkeypatch.setitem(_backend._PREFERRED, "toy_op", "triton")
    table = {"cuda": 1, "triton": 2, "reference": 3}
    assert _backend.select("toy_op", gpu, table)[0] == "triton"
    with use_backend("cuda"):
        assert _backend.select("toy_op", gpu, table)[0] == "cuda"


def test_candidate_keys_name_a_backend():
    with pytest.raises(ValueError, match="unknown backend"):
        _backend.register_candidate("toy_op", "vulkan:next")


def test_threads_without_a_block_follow_the_active_one(monkeypatch):
    """The autograd engine runs CUDA backward functions on its own threads, which inherit no context: a thread
    with no block of its own follows the innermost block active anywhere, one with its own block keeps it."""
    import threading

    monkeypatch.delenv("PVF_CANDIDATES", raising=False)
    monkeypatch.delenv("PVF_BACKEND", raising=False)
    seen = {}

    def worker(name, own=None):
        if own is None:
            seen[name] = (_backend.candidates_enabled("toy_op"), _backend.forced_backend())
        else:
            with use_backend(own):
                seen[name] = (_backend.candidates_enabled("toy_op"), _backend.forced_backend())

    def run(name, own=None):
        t = threading.Thread(target=worker, args=(name, own))
        t.start()
        t.join()

    run("outside")
    with pyvision_fast.use_candidates("toy_op"), use_backend("reference"):
        run("inside")
        run("own block", own="cpu")
    run("after")
    assert seen["outside"] == (False, None) and seen["after"] == (False, None)
    assert seen["inside"] == (True, "reference")
    assert seen["own block"] == (True, "cpu")


def test_a_backward_op_without_its_own_entry_follows_its_forward(monkeypatch):
    gpu = _pretend_gpu(monkeypatch)
    monkeypatch.setitem(_backend._CANDIDATES, "toy_op", "triton")
    table = {"cuda": 1, "triton": 2}
    assert _backend.select("toy_op_backward", gpu, table)[0] == "cuda"
    with pyvision_fast.use_candidates("toy_op"):
        assert _backend.select("toy_op_backward", gpu, table)[0] == "triton"
    monkeypatch.delitem(_backend._CANDIDATES, "toy_op")
    monkeypatch.setitem(_backend._PREFERRED, "toy_op", "triton")
    assert _backend.select("toy_op_backward", gpu, table)[0] == "triton"


def test_info_lists_the_gpu_defaults():
    from pyvision_fast.cli import info_dict

    info = info_dict()
    assert info["gpu_preferred"]["knn_points"] == "cuda:next" and info["gpu_preferred"]["deform_conv2d"] == "triton"
    assert info["gpu_candidates"] == _backend.candidates()


def test_use_previous_sets_a_preference_aside(monkeypatch):
    gpu = _pretend_gpu(monkeypatch)
    monkeypatch.setitem(_backend._PREFERRED, "toy_op", "cuda:next")
    table = {"cuda": 1, "cuda:next": 2}
    assert _backend.select("toy_op", gpu, table)[0] == "cuda:next"
    with pyvision_fast.use_previous("toy_op"):
        assert _backend.select("toy_op", gpu, table)[0] == "cuda"
        assert _backend.select("toy_op_backward", gpu, table)[0] == "cuda"
        with use_backend("cuda"):
            assert _backend.select("toy_op", gpu, table)[0] == "cuda"
    with pyvision_fast.use_previous("other_op"):
        assert _backend.select("toy_op", gpu, table)[0] == "cuda:next"
    with use_backend("cuda"):  # a forced backend runs its best variant
        assert _backend.select("toy_op", gpu, table)[0] == "cuda:next"
