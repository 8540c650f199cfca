"""The pvf command line."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pyvision_fast", *args], capture_output=True, text=True, cwd=cwd)


def test_info_reports_modules_and_backends():
    out = _run("info")
    assert out.returncode == 0, out.stderr
    assert "_C       built" in out.stdout
    assert "_C_cuda  built for sm" in out.stdout
    assert "backend cpu       usable on cpu" in out.stdout
    data = json.loads(_run("info", "--json").stdout)
    assert data["compiled"]["_C"]["loaded"] and data["backends"]["reference"]


def test_export_command(tmp_path):
    (tmp_path / "my_model.py").write_text(
        "import torch\n"
        "from pyvision_fast import ops\n"
        "class Net(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        d, i, _ = ops.knn_points(x, x, K=4)\n"
        "        return d.mean(-1)\n"
        "def build():\n"
        "    return Net()\n")
    out = _run("export", "my_model:build", "--input", "2x50x3", "-o", str(tmp_path / "net.onnx"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "TensorRT operator check: all nodes supported" in out.stdout
    assert Path(tmp_path / "net.onnx").stat().st_size > 0


def test_bench_outside_a_checkout_says_so(tmp_path):
    out = _run("bench", cwd=tmp_path)
    assert out.returncode == 2 and "no benchmarks/" in out.stderr


def test_bench_passes_benchmark_options_through():
    """pvf bench --family X ... reaches python -m benchmarks as given (no '--' needed): an unknown family is
    the benchmark runner's own error, an unknown option of another command still pvf's."""
    root = Path(__file__).resolve().parent.parent
    out = _run("bench", "--root", str(root), "--family", "no_such_family", "--quick")
    assert out.returncode == 2 and "invalid choice: 'no_such_family'" in out.stderr, out.stderr
    out = _run("models", "--no-such-flag")
    assert out.returncode == 2 and "unrecognized arguments: --no-such-flag" in out.stderr


def test_info_on_a_machine_without_gpu_says_cpu_only():
    """No driver reads as 'CPU only', not as a fault; Triton as 'interpreter only'."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = _run("info")
    assert "no usable GPU here, CPU only" in out.stdout and "backend cuda      no GPU here" in out.stdout
    if importlib.util.find_spec("triton") is not None and "TRITON_INTERPRET" not in os.environ:
        assert "interpreter only (TRITON_INTERPRET=1" in out.stdout


@pytest.mark.parametrize("args, expected", [
    (["export", "no_such_model"], "'no_such_model' is neither a registered model"),
    (["export", "vit_tiny_patch16_224", "--input", "1x3x7"], "does not run on an input of shape 1x3x7"),
    (["export", "no_module_here:build", "--input", "1x3"], "cannot load no_module_here:build"),
    (["engine-info", "/no/such/file.engine"], "engine file not found"),
    (["train", "classify", "--data", "/no/such/folder", "--output", "unused"], "/no/such/folder"),
])
def test_cli_errors_are_one_line_with_status_2(tmp_path, args, expected):
    """Every failing command prints one line on stderr (naming what to fix) and exits with 2; --debug shows
    the traceback instead."""
    out = _run(*args, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"pvf {args[0]}: error: ") and expected in lines[0], out.stderr
    assert "--debug shows the traceback" in lines[0]
    debug = _run(*args, "--debug", cwd=tmp_path)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr


def test_model_parameter_counts_on_meta_equal_the_built_models():
    """pvf models counts on the meta device (a 214M-parameter LXMERT costs nothing) and falls back to the CPU for
    models that cannot be built there (timm's ViTs initialise with data); both give the real model's count."""
    from pyvision_fast.cli import model_parameter_counts
    from pyvision_fast.models import count_parameters, create_model

    counts = model_parameter_counts("*[dp][go]*n*")  # dgcnn, pointnet*, ... a mix of small models
    assert {"dgcnn", "pointnet", "pointnet2_ssg"} <= set(counts)
    for name in ("dgcnn", "pointnet2_ssg", "vit_tiny_patch16_224"):
        assert model_parameter_counts(name)[name] == count_parameters(create_model(name))
