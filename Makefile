# Two commands on a fresh machine: `make demo` and `make test`.
# Every target bootstraps .venv itself; the stamp is rebuilt when the dependency list changes.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hcsflow-stamp
SYSSTAMP := $(VENV)/.hcsflow-sysdeps
# torch is pinned to the CPU build that ships with this machine image; an unpinned
# `torch` would pull a multi-GB CUDA build.
TORCH_PIN := torch==2.13.0

.PHONY: demo test test-fast lint bench sysdeps venv clean

venv: $(STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip

# OpenCL CPU driver so pyclesperanto runs without a GPU (Debian's pocl).
$(SYSSTAMP): | $(VENV)/bin/python
	@if ! dpkg -s pocl-opencl-icd >/dev/null 2>&1 || ! dpkg -s ocl-icd-libopencl1 >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q pocl-opencl-icd ocl-icd-libopencl1 clinfo; \
	fi
	touch $@

sysdeps: $(SYSSTAMP)

$(STAMP): pyproject.toml Makefile | $(VENV)/bin/python
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[test,testdeps,all]"
	touch $@

demo: $(STAMP) $(SYSSTAMP)
	$(VENV)/bin/hcsflow demo --out demo-output --overwrite

test: $(STAMP) $(SYSSTAMP)
	$(PY) -m pytest -q -n auto

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

bench: $(STAMP) $(SYSSTAMP)
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) demo-output .pytest_cache .mypy_cache .ruff_cache .hypothesis
