"""The CPU module's instruction-set variants: which one loads, forcing one, and the op tests on every variant.

The default test run exercises the variant this CPU picks; the tests here run the property test of every public
op (short) and, with PVF_TEST_ALL_VARIANTS=1 (about 8 minutes), every CPU op test file under each other variant
this CPU runs, in subprocesses with PVF_CPU_CAPABILITY set.
"""
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from pyvision_fast import _cpu_isa, _ext

ROOT = Path(__file__).resolve().parent.parent
X86_64 = platform.machine().lower() in ("x86_64", "amd64")
ALL = {"avx2": True, "avx512": True}

# The test files of the ops with CPU kernels (pyvision_fast._C).
CPU_OP_TESTS = [
    "test_array.py", "test_ball_query.py", "test_chamfer.py", "test_deform_conv.py", "test_gather_grouping.py",
    "test_gaussian_scale_space.py", "test_knn_points.py", "test_memory.py", "test_mesh_raster.py", "test_mvf.py",
    "test_ops_properties.py", "test_pointcloud_dropin.py", "test_pointcloud_eager.py",
    "test_sample_farthest_points.py", "test_scale_attention.py", "test_scale_space_conv.py", "test_sphere.py",
    "test_stylegan2_ops.py", "test_three_interpolate.py", "test_vector_quantize.py",
]


def test_automatic_choice_is_the_best_variant_the_cpu_runs_and_never_native():
    built = {"default", "avx2", "avx512", "native"}
    assert _cpu_isa.choose("", ALL, built) == "avx512"
    assert _cpu_isa.choose("", {"avx2": True, "avx512": False}, built) == "avx2"
    assert _cpu_isa.choose("", {}, built) == "default"
    assert _cpu_isa.choose("", ALL, {"default", "avx2"}) == "avx2"
    assert _cpu_isa.choose("  ", ALL, {"default"}) == "default"


def test_forced_variants_and_their_errors():
    built = {"default", "avx2", "avx512"}
    assert _cpu_isa.choose("AVX2", ALL, built) == "avx2"
    assert _cpu_isa.choose("default", ALL, built) == "default"
    with pytest.raises(ImportError, match="'sse9' is not one of default, avx2, avx512, native"):
        _cpu_isa.choose("sse9", ALL, built)
    with pytest.raises(ImportError, match="_C_native is not built .*PVF_NATIVE=1"):
        _cpu_isa.choose("native", ALL, built)
    with pytest.raises(ImportError, match="this CPU does not support avx512 .*it runs: avx2, default"):
        _cpu_isa.choose("avx512", {"avx2": True, "avx512": False}, built)
    with pytest.raises(ImportError, match="_C_avx2 is not built"):
        _cpu_isa.choose("avx2", ALL, {"default"})


@pytest.mark.skipif(not X86_64, reason="the AVX2 / AVX-512 variants are x86-64 builds")
def test_x86_64_builds_the_portable_variants():
    assert {"default", "avx2", "avx512"} <= _cpu_isa.built_capabilities()


def test_the_loaded_module_is_the_one_chosen():
    import pyvision_fast._C as baseline

    mod = _ext.cpu_module()
    want = _cpu_isa.choose(os.environ.get(_cpu_isa.ENV, ""), dict(baseline.cpu_features()),
                           _cpu_isa.built_capabilities())
    assert mod.cpu_capability == want
    assert mod.__name__ == f"pyvision_fast.{_cpu_isa.MODULES[want]}"


def _runnable_variants() -> list[str]:
    """Every built variant this CPU runs."""
    import pyvision_fast._C as baseline

    features = dict(baseline.cpu_features())
    return [c for c in _cpu_isa.MODULES if c in _cpu_isa.built_capabilities() and
            (c in ("default", "native") or features.get(c, False))]


def _run_in_variant(capability: str, code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, _cpu_isa.ENV: capability}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)


@pytest.mark.parametrize("capability", ["default", "avx2", "avx512", "native"])
def test_a_forced_variant_loads_in_both_loaders(capability):
    if capability not in _runnable_variants():  # native needs PVF_NATIVE=1; avx2/avx512 need the CPU to run them
        pytest.skip(f"{capability} is not built or not runnable on this CPU")
    code = ("import pyvision_fast.array._core as a; from pyvision_fast import _ext; "
            "print(_ext.cpu_module().cpu_capability, a.cpu_module().cpu_capability)")
    out = _run_in_variant(capability, code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [capability, capability]


def test_a_bad_forced_variant_falls_back_with_the_reason():
    out = _run_in_variant("sse9", "from pyvision_fast import _ext; print(_ext.cpu_module(), _ext.load_error('_C'))")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("None PVF_CPU_CAPABILITY='sse9' is not one of"), out.stdout


def _pytest_in_variant(capability: str, args: list[str]) -> None:
    env = {**os.environ, _cpu_isa.ENV: capability}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]


def _other_variants() -> list[str]:
    """The runnable variants other than the one this process loaded (the main test run covers that one)."""
    here = _ext.cpu_module().cpu_capability
    return [c for c in _runnable_variants() if c != here]


def test_every_public_op_gives_the_reference_on_every_other_variant():
    for capability in _other_variants():
        _pytest_in_variant(capability, ["tests/test_ops_properties.py", "-k", "valid_arguments_give_the_reference"])


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("PVF_TEST_ALL_VARIANTS") != "1",
                    reason="about 8 minutes on 2 cores: set PVF_TEST_ALL_VARIANTS=1 to run it")
def test_the_cpu_op_tests_pass_on_every_other_variant():
    for capability in _other_variants():
        _pytest_in_variant(capability, [f"tests/{name}" for name in CPU_OP_TESTS])
