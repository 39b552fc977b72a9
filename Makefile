# Two commands on a fresh machine: `make demo` and `make test`.
# Every target bootstraps .venv itself.  Each install level has its own stamp, rebuilt when
# the dependency list changes, so `make demo` then `make test` adds what the tests need:
#   demo  - the core package only (numpy, scipy, scikit-image, tifffile, zarr, pandas...)
#   test  - plus every optional framework, the test tools and the OpenCL CPU driver
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CORE_STAMP := $(VENV)/.hcsflow-core
TEST_STAMP := $(VENV)/.hcsflow-test
SYSSTAMP := $(VENV)/.hcsflow-sysdeps
BENCHSTAMP := $(VENV)/.hcsflow-benchdeps
# torch is pinned to the CPU build that ships with this machine image; an unpinned
# `torch` would pull a multi-GB CUDA build.
TORCH_PIN := torch==2.13.0
LINT_PATHS := src tests benchmarks conftest.py

.PHONY: demo test lint bench sysdeps venv clean

venv: $(TEST_STAMP)

$(VENV)/bin/python:
	@echo "Creating the virtual environment $(VENV) ..."
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -U pip

# The core package: everything `hcsflow demo` needs, nothing more.
$(CORE_STAMP): pyproject.toml | $(VENV)/bin/python
	@echo "Installing hcsflow (core) into $(VENV) ..."
	$(PY) -m pip install -e .
	touch $@

# Everything the tests, benchmarks and lint need: every optional framework (torch from the
# CPU pin above), the test tools and the third-party referees the tests compare against.
$(TEST_STAMP): pyproject.toml Makefile | $(VENV)/bin/python
	@echo "Installing hcsflow with every optional framework and the test tools into $(VENV) ..."
	$(PY) -m pip install "$(TORCH_PIN)"
	$(PY) -m pip install -e ".[test,testdeps,all]"
	touch $@ $(CORE_STAMP)

# OpenCL CPU driver so pyclesperanto runs without a GPU (Debian's pocl); tests only.
$(SYSSTAMP): | $(VENV)/bin/python
	@if ! dpkg -s pocl-opencl-icd >/dev/null 2>&1 || ! dpkg -s ocl-icd-libopencl1 >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q pocl-opencl-icd ocl-icd-libopencl1 clinfo; \
	fi
	touch $@

# valgrind: the benchmark that counts instructions instead of timing (bench_instructions).
$(BENCHSTAMP): | $(VENV)/bin/python
	@if ! command -v valgrind >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q valgrind; \
	fi
	touch $@

sysdeps: $(SYSSTAMP)

demo: $(CORE_STAMP)
	$(VENV)/bin/hcsflow demo --out demo-output --overwrite
	@echo
	@echo "The hcsflow command is $(VENV)/bin/hcsflow (or run 'source $(VENV)/bin/activate' first, then 'hcsflow')."

test: $(TEST_STAMP) $(SYSSTAMP)
	$(PY) -m pytest -q -n auto

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy

bench: $(TEST_STAMP) $(SYSSTAMP) $(BENCHSTAMP)
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) demo-output .pytest_cache .mypy_cache .ruff_cache .hypothesis
