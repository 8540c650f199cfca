"""Which build of the CPU kernels to load: the instruction-set (ISA) dispatch.

The CPU module is built once per instruction set (CMakeLists.txt): ``_C`` for the architecture's baseline (on
x86-64: SSE2, what runs on every x86-64 machine), ``_C_avx2`` (x86-64-v3: AVX2, FMA, F16C, BMI) and
``_C_avx512`` (x86-64-v4: AVX-512 F/BW/CD/DQ/VL) on x86-64, and ``_C_native`` (``-march=native``) when built
with ``PVF_NATIVE=1``. At first use the best variant the CPU runs is loaded, as ATen picks its CPU capability;
``_C_native`` is never picked on its own (it exists to measure what the portable build costs).

``PVF_CPU_CAPABILITY=default|avx2|avx512|native`` forces one, e.g. to run the tests on every variant of this
machine; forcing one the CPU cannot run, or one not built, is an ImportError that says so (never an illegal
instruction). Torch-free: ``pyvision_fast.array`` loads through it too.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType

ENV = "PVF_CPU_CAPABILITY"
MODULES = {"default": "_C", "avx2": "_C_avx2", "avx512": "_C_avx512", "native": "_C_native"}
AUTOMATIC_ORDER = ("avx512", "avx2", "default")  # best first; native only when forced


def choose(requested: str, supported: dict, built: set) -> str:
    """The capability to load.

    Args:
        requested: the value of ``PVF_CPU_CAPABILITY`` ("" when unset).
        supported: ``{"avx2": bool, "avx512": bool}`` as the baseline module's ``cpu_features()`` reports.
        built: the capabilities whose module exists.
    Raises:
        ImportError: an unknown value, or a forced variant that is not built or that this CPU cannot run.
    """
    requested = requested.strip().lower()
    if not requested:
        return next(c for c in AUTOMATIC_ORDER if c in built and (c == "default" or supported.get(c, False)))
    if requested not in MODULES:
        raise ImportError(f"{ENV}={requested!r} is not one of {', '.join(MODULES)}")
    if requested not in built:
        how = "build with PVF_NATIVE=1" if requested == "native" else "the compiler or architecture lacks it"
        raise ImportError(f"{ENV}={requested}: pyvision_fast.{MODULES[requested]} is not built ({how}); "
                          f"built: {', '.join(c for c in MODULES if c in built)}")
    if requested in ("avx2", "avx512") and not supported.get(requested, False):
        raise ImportError(f"{ENV}={requested}: this CPU does not support {requested} (x86-64-"
                          f"{'v3' if requested == 'avx2' else 'v4'}); it runs: "
                          f"{', '.join(c for c in AUTOMATIC_ORDER if c == 'default' or supported.get(c))}")
    return requested


def built_capabilities() -> set:
    """The capabilities whose module file is present next to this package."""
    from importlib.machinery import EXTENSION_SUFFIXES
    here = os.path.dirname(os.path.abspath(__file__))
    names = set(os.listdir(here))
    return {c for c, m in MODULES.items() if any(m + suffix in names for suffix in EXTENSION_SUFFIXES)}


def load() -> ModuleType:
    """Imports and returns the CPU module to use (its ``cpu_capability`` attribute says which one)."""
    baseline = importlib.import_module(f"{__package__}._C")
    capability = choose(os.environ.get(ENV, ""), dict(baseline.cpu_features()), built_capabilities() | {"default"})
    if capability == "default":
        return baseline
    return importlib.import_module(f"{__package__}.{MODULES[capability]}")
