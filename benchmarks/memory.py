"""Peak memory of one implementation of one case, measured in a fresh process:
``python -m benchmarks.memory FAMILY CASE IMPL [--quick]`` prints the peak in MiB.

On the CPU the resident-set high-water mark is only meaningful when freed memory is not silently reused, so
glibc is told, before anything is allocated, to serve every allocation of 64 KiB or more with fresh pages.
"""
import ctypes
import sys


def _fresh_pages_for_large_allocations() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD (also disables the dynamic threshold)
        libc.mallopt(-1, 64 * 1024)  # M_TRIM_THRESHOLD
    except OSError:
        pass


def main(argv=None) -> int:
    _fresh_pages_for_large_allocations()
    import argparse
    import importlib

    from .harness import peak_memory_mb

    parser = argparse.ArgumentParser()
    parser.add_argument("family")
    parser.add_argument("case")
    parser.add_argument("impl")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    module = importlib.import_module(f".{args.family}", __package__)
    case = next(c for c in module.cases("cpu", args.quick) if c.name == args.case)
    impl = next(i for i in case.impls if i.name == args.impl)
    impl.fn()  # first call: lazy initialisation (module loading, thread pools) is not the op's memory
    print(f"{peak_memory_mb(impl.fn, 'cpu'):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
