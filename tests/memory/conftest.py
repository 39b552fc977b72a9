"""Shared helpers for the memory-type tests: which frameworks exist and how to make arrays."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import numpy as np
import pytest

from hcsflow.memory import MemoryType, aligned_empty

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

CPU_TYPES = [
    MemoryType.NUMPY,
    MemoryType.TORCH,
    MemoryType.JAX,
    MemoryType.TENSORFLOW,
    MemoryType.PYCLESPERANTO,
]
_MODULE = {
    MemoryType.NUMPY: "numpy",
    MemoryType.TORCH: "torch",
    MemoryType.JAX: "jax",
    MemoryType.TENSORFLOW: "tensorflow",
    MemoryType.PYCLESPERANTO: "pyclesperanto",
    MemoryType.CUPY: "cupy",
}


def installed(mt: MemoryType) -> bool:
    return importlib.util.find_spec(_MODULE[mt]) is not None


def need(mt: MemoryType) -> Any:
    """Import the framework for ``mt`` or skip the test with the reason."""
    if mt is MemoryType.PYCLESPERANTO:
        cle = pytest.importorskip("pyclesperanto", reason="pyclesperanto is not installed")
        if not hasattr(cle, "push") or not cle.list_available_devices():
            pytest.skip("pyclesperanto sees no OpenCL device (install pocl-opencl-icd)")
        return cle
    return pytest.importorskip(_MODULE[mt], reason=f"{_MODULE[mt]} is not installed")


def make(mt: MemoryType, values: np.ndarray) -> Any:
    """A fresh array of type ``mt`` (CPU / default device) holding ``values``."""
    fw = need(mt)
    if mt is MemoryType.NUMPY:
        out = aligned_empty(values.shape, values.dtype)
        out[...] = values
        return out
    if mt is MemoryType.TORCH:
        return fw.tensor(values)
    if mt is MemoryType.JAX:
        return fw.numpy.array(values)
    if mt is MemoryType.TENSORFLOW:
        return fw.constant(values)
    if mt is MemoryType.PYCLESPERANTO:
        return fw.push(values)
    return fw.asarray(values)


def host_pointer(x: Any, mt: MemoryType) -> int:
    """Address of the first element of a host-resident array of type ``mt``."""
    if mt is MemoryType.NUMPY:
        return int(x.ctypes.data)
    if mt is MemoryType.TORCH:
        return int(x.data_ptr())
    if mt is MemoryType.JAX:
        return int(x.unsafe_buffer_pointer())
    if mt is MemoryType.TENSORFLOW:
        return int(np.from_dlpack(x).ctypes.data)
    raise AssertionError(f"{mt} has no host pointer")


def values_of(x: Any, mt: MemoryType) -> np.ndarray:
    """Values of ``x`` as numpy, using each framework's own idiom (independent of hcsflow)."""
    if mt is MemoryType.NUMPY:
        return np.asarray(x)
    if mt is MemoryType.TORCH:
        return x.detach().cpu().numpy()
    if mt is MemoryType.JAX:
        return np.asarray(x)
    if mt is MemoryType.TENSORFLOW:
        return x.numpy()
    if mt is MemoryType.PYCLESPERANTO:
        import pyclesperanto as cle

        return np.asarray(cle.pull(x))
    return x.get()


class Helpers:
    """The helpers above, handed to tests as the ``mem`` fixture (conftest is not importable)."""

    installed = staticmethod(installed)
    need = staticmethod(need)
    make = staticmethod(make)
    host_pointer = staticmethod(host_pointer)
    values_of = staticmethod(values_of)


@pytest.fixture
def mem() -> type[Helpers]:
    return Helpers


@pytest.fixture
def stack() -> np.ndarray:
    """A small aligned float32 [Z, Y, X] stack with distinct values."""
    out = aligned_empty((3, 4, 5), np.float32)
    out[...] = np.arange(60, dtype=np.float32).reshape(3, 4, 5) - 7.5
    return out
