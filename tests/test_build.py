"""The compiled modules: they load without a GPU, report what they are, and check arguments before memory."""
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch

from pyvision_fast import _ext
from pyvision_fast.cli import info_dict


def test_import_without_gpu_in_a_fresh_process():
    code = "import pyvision_fast, pyvision_fast.export; from pyvision_fast import ops; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"CUDA_VISIBLE_DEVICES": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_cpu_module_loaded():
    info = info_dict()
    assert info["compiled"]["_C"]["loaded"], info["compiled"]["_C"]["error"]
    assert info["compiled"]["_C"]["openmp"]
    assert "cpu" in info["backends"]["cpu"]


def test_cuda_module_built_and_reports_archs():
    """CI builds with PVF_CUDA=1, so the CUDA module must exist even on this GPU-less machine."""
    info = info_dict()["compiled"]["_C_cuda"]
    assert info["loaded"], info["error"]
    assert info["cuda_archs"] and all(a.strip().isdigit() for a in info["cuda_archs"].split(","))
    assert info["cuda_runtime"] >= 11000


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-device path")
def test_cuda_entry_points_without_device_raise_clearly():
    mod = _ext.cuda_module()
    count, message = mod.device_status()
    assert count == 0 and "CUDA error" in message
    p = torch.rand(1, 4, 3)
    out = torch.empty(1, 4, 2)
    idx = torch.empty(1, 4, 2, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="no CUDA device is available"):
        mod.knn_points(_ext.arg(p), _ext.arg(p), None, None, 2, _ext.arg(out), _ext.arg(idx), 0)


def test_numpy_arrays_through_the_array_interface():
    rng = np.random.default_rng(0)
    p1 = rng.random((2, 20, 3), dtype=np.float32)
    p2 = rng.random((2, 30, 3), dtype=np.float32)
    dists = np.empty((2, 20, 4), np.float32)
    idx = np.empty((2, 20, 4), np.int64)
    ws = np.empty(2 * 3 * 30, np.float32)
    iws = np.empty(2 * _ext.cpu_module().knn_index_workspace(30), np.int64)
    _ext.cpu_module().knn_points(p1, p2, None, None, 4, dists, idx, ws, iws)
    d_ref = ((p1[:, :, None] - p2[:, None]) ** 2).sum(-1)
    np.testing.assert_allclose(dists, np.sort(d_ref, -1)[..., :4], rtol=1e-6)
    np.testing.assert_array_equal(idx, np.argsort(d_ref, -1, kind="stable")[..., :4])


def test_read_only_output_is_rejected():
    p = np.random.rand(1, 5, 3).astype(np.float32)
    dists = np.empty((1, 5, 2), np.float32)
    dists.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        _ext.cpu_module().knn_points(p, p, None, None, 2, dists, np.empty((1, 5, 2), np.int64),
                                     np.empty(15, np.float32), np.empty(100, np.int64))


@pytest.mark.parametrize("bad,error,match", [
    ((1, 2), TypeError, "malformed"),
    ((0, 99, 0, 0, (1,), (1,)), TypeError, "unknown dtype code"),
    ((0, 0, 7, 0, (1,), (1,)), TypeError, "unsupported device"),
    ((0, 0, 0, 0, (-1,), (1,)), ValueError, "negative size"),
    ("not an array", TypeError, "must be an array"),
])
def test_malformed_descriptions_raise(bad, error, match):
    p = torch.rand(1, 4, 3)
    with pytest.raises(error, match=match):
        _ext.cpu_module().knn_points(bad, _ext.arg(p), None, None, 1, _ext.arg(torch.empty(1, 4, 1)),
                                     _ext.arg(torch.empty(1, 4, 1, dtype=torch.int64)), _ext.arg(torch.empty(12)),
                                     _ext.arg(torch.empty(100, dtype=torch.int64)))


def test_wrong_output_shape_and_small_workspace_raise():
    p = torch.rand(1, 4, 3)
    mod = _ext.cpu_module()
    iws = _ext.arg(torch.empty(mod.knn_index_workspace(4), dtype=torch.int64))
    with pytest.raises(ValueError, match="'dists' must have shape"):
        mod.knn_points(_ext.arg(p), _ext.arg(p), None, None, 2, _ext.arg(torch.empty(1, 4, 3)),
                       _ext.arg(torch.empty(1, 4, 2, dtype=torch.int64)), _ext.arg(torch.empty(12)), iws)
    with pytest.raises(ValueError, match="workspace has 5 elements"):
        mod.knn_points(_ext.arg(p), _ext.arg(p), None, None, 2, _ext.arg(torch.empty(1, 4, 2)),
                       _ext.arg(torch.empty(1, 4, 2, dtype=torch.int64)), _ext.arg(torch.empty(5)), iws)


def test_kernels_follow_torch_thread_count():
    mod = _ext.cpu_module()
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _ext.cpu_module()
        assert mod.get_num_threads() == 1
        torch.set_num_threads(2)
        _ext.cpu_module()
        assert mod.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)


@pytest.mark.slow
def test_wheel_holds_the_compiled_modules_and_the_export_package(tmp_path):
    import zipfile
    from pathlib import Path

    import shutil

    root = Path(__file__).resolve().parent.parent
    for stale in (root / "build").glob("lib.*"):  # setuptools would ship stale copies of removed packages
        shutil.rmtree(stale, ignore_errors=True)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", str(root), "-q", "-w", str(tmp_path),
                          "--no-build-isolation", "--no-deps"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("pyvision_fast-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("pyvision_fast/_C.") and n.endswith(".so") for n in names)
    if platform.machine().lower() in ("x86_64", "amd64"):  # the instruction-set variants ship beside it
        for variant in ("_C_avx2", "_C_avx512"):
            assert any(n.startswith(f"pyvision_fast/{variant}.") and n.endswith(".so") for n in names), variant
    assert "pyvision_fast/export/onnx_export.py" in names and "pyvision_fast/export/pointcloud.py" in names
    assert "pyvision_fast/nn/pointnet2.py" in names
    for source in (root / "pyvision_fast").rglob("*.py"):  # every module ships
        rel = source.relative_to(root).as_posix()
        assert rel in names, rel
    assert any(n.endswith("entry_points.txt") for n in names)


def test_cuda_smoke_script_runs_on_the_cpu_backends():
    """tools/cuda_smoke.py (what tools/gpu_check.sh runs under compute-sanitizer) calls every op it names with
    arguments the ops accept: checked here through its CPU dry run, so the GPU run cannot fail on the script."""
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "tools" / "cuda_smoke.py"
    out = subprocess.run([sys.executable, str(script), "--device", "cpu"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    families = ("mvf", "scale_space", "deform_conv", "sphere", "pointcloud", "stylegan2", "mesh_raster")
    assert all(f"{name}: ok" in out.stdout for name in families) and "bad indices: refused" in out.stdout
