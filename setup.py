"""Build script: setuptools drives CMake, which builds the CPU module once per instruction set --
``pyvision_fast._C`` (baseline, always), ``_C_avx2`` and ``_C_avx512`` (x86-64), ``_C_native`` (PVF_NATIVE=1);
``pyvision_fast/_cpu_isa.py`` loads the best one the CPU runs -- and ``pyvision_fast._C_cuda`` (when nvcc is found).

Environment:
  PVF_CUDA=0|1        0 skips the CUDA module; 1 makes a missing nvcc an error; unset builds it if nvcc is found.
  PVF_CUDA_ARCHS      CUDA architectures, default "80;90".
  PVF_NATIVE=1        also build _C_native (-march=native), loaded only with PVF_CPU_CAPABILITY=native: it
                      measures what the portable variants cost (benchmarks' "[native build]" rows).
  PVF_BUILD_JOBS      parallel compile jobs (default: number of CPUs).
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
OPTIONAL_MODULES = ("_C_avx2", "_C_avx512", "_C_native", "_C_cuda")


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    """Configure and build once with CMake, then place each module where setuptools expects it."""

    def run(self):
        import pybind11

        # A persistent build folder in the checkout keeps rebuilds incremental (pip's editable builds
        # otherwise start from an empty temporary folder each time).
        build_dir = ROOT / "build" / f"cmake-py{sys.version_info.major}{sys.version_info.minor}"
        out_dir = build_dir / "out"
        shutil.rmtree(out_dir, ignore_errors=True)  # a module CMake no longer builds must not be picked up
        build_dir.mkdir(parents=True, exist_ok=True)
        cuda = os.environ.get("PVF_CUDA", "")
        args = [
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DPVF_OUTPUT_DIR={out_dir}",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DPVF_CUDA_ARCHS={os.environ.get('PVF_CUDA_ARCHS', '80;90')}",
            f"-DPVF_WITH_CUDA={'OFF' if cuda == '0' else 'ON'}",
            f"-DPVF_REQUIRE_CUDA={'ON' if cuda == '1' else 'OFF'}",
            f"-DPVF_NATIVE={'ON' if os.environ.get('PVF_NATIVE', '0') == '1' else 'OFF'}",
        ]
        nvcc = shutil.which("nvcc") or (
            "/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None
        )
        if nvcc and cuda != "0":
            args.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
        if shutil.which("ninja"):
            args += ["-G", "Ninja"]
        subprocess.check_call(["cmake", str(ROOT), *args], cwd=build_dir)
        jobs = os.environ.get("PVF_BUILD_JOBS", str(os.cpu_count() or 2))
        subprocess.check_call(["cmake", "--build", ".", "--parallel", jobs], cwd=build_dir)

        for ext in self.extensions:
            short = ext.name.rsplit(".", 1)[-1]
            built = sorted(out_dir.glob(f"{short}.*.so")) + sorted(out_dir.glob(f"{short}.*.pyd"))
            target = Path(self.get_ext_fullpath(ext.name))
            if not built:
                if short in OPTIONAL_MODULES:  # CMake skipped it (no nvcc, another architecture, PVF_NATIVE=0)
                    if target.exists():  # a stale module from an earlier build must not survive
                        target.unlink()
                    continue
                raise RuntimeError(f"CMake did not produce {short}")
            target.parent.mkdir(parents=True, exist_ok=True)
            # a new file renamed over the old one: a process that has the old module loaded keeps its mapping
            partial = target.with_name(target.name + ".partial")
            shutil.copyfile(built[0], partial)
            os.replace(partial, target)


setup(
    ext_modules=[CMakeExtension(f"pyvision_fast.{name}") for name in ("_C", *OPTIONAL_MODULES)],
    cmdclass={"build_ext": CMakeBuild},
)
