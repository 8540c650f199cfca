"""The benchmark suite: ``python -m benchmarks [--family F] [--device cpu|cuda] [--quick]``."""
