# make bench: set up .venv, build the extension, run the benchmark suite on this machine.
# make test:  set up .venv, build the extension, run the test suite.
# make bench-peers: make bench's point-cloud tables beside the peer libraries (requirements-peers.txt).
# make docs:  the API reference from the docstrings (pdoc) into build/docs; fails on any warning.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DEPS   := $(VENV)/.deps-stamp
BUILT  := $(VENV)/.build-stamp
PEERS  := $(VENV)/.peers-stamp
# The portable CPU variants (_C, _C_avx2, _C_avx512) and, for the benchmarks' "[native build]" rows, _C_native.
export PVF_NATIVE ?= 1
SOURCES := $(shell find csrc -name '*.h' -o -name '*.cuh' -o -name '*.cpp' -o -name '*.cu') CMakeLists.txt setup.py

.PHONY: all build test bench bench-peers docs clean

all: test

$(PY):
	$(PYTHON) -m venv $(VENV)

$(DEPS): requirements-dev.txt requirements-nodeps.txt | $(PY)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $@

$(BUILT): $(DEPS) $(SOURCES) pyproject.toml
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $@

build: $(BUILT)

test: $(BUILT)
	$(PY) -m pyvision_fast info
	$(PY) -m pytest -q tests

bench: $(BUILT)
	$(PY) -m pyvision_fast info
	$(PY) -m benchmarks $(BENCH_ARGS)

$(PEERS): requirements-peers.txt $(DEPS)
	MAX_JOBS=$${MAX_JOBS:-1} $(PY) -m pip install --quiet --no-build-isolation -r requirements-peers.txt
	touch $@

# make bench-peers: the point-cloud tables beside torch_cluster and pykeops (torch_cluster compiles ~35 min on 2 cores)
bench-peers: $(BUILT) $(PEERS)
	$(PY) -m pyvision_fast info
	$(PY) -m benchmarks --family pointcloud $(BENCH_ARGS)

docs: $(BUILT)
	$(PY) docs/build_api.py build/docs

clean:
	rm -rf build *.egg-info pyvision_fast/_C*.so $(BUILT)
