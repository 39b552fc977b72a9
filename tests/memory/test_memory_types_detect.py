"""MemoryType, detection without importing, and the lazy-import guarantee."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from hcsflow.errors import MemoryTypeError
from hcsflow.memory import MemoryType, detect_memory_type, is_supported_array

M = MemoryType
CPU_TYPES = [M.NUMPY, M.TORCH, M.JAX, M.TENSORFLOW, M.PYCLESPERANTO]


def test_memory_type_values_and_parsing() -> None:
    assert [m.value for m in MemoryType] == [
        "numpy",
        "cupy",
        "torch",
        "tensorflow",
        "jax",
        "pyclesperanto",
    ]
    assert MemoryType("torch") is MemoryType.TORCH
    assert MemoryType("Torch") is MemoryType.TORCH
    assert MemoryType.JAX == "jax"
    assert str(MemoryType.CUPY) == "cupy"
    with pytest.raises(ValueError):
        MemoryType("tensorflo")


@pytest.mark.parametrize("mt", CPU_TYPES, ids=str)
def test_detect_each_installed_type(mem, mt: MemoryType) -> None:
    x = mem.make(mt, np.zeros((2, 3), np.float32))
    assert detect_memory_type(x) is mt
    assert is_supported_array(x)


@pytest.mark.parametrize(
    "value",
    [[1, 2], 3.0, "array", None, np.float32(1.0), np.ma.masked_array([1.0])],
    ids=["list", "float", "str", "none", "np-scalar", "masked"],
)
def test_detect_rejects_non_arrays_naming_the_type(value: object) -> None:
    with pytest.raises(MemoryTypeError) as info:
        detect_memory_type(value)
    assert isinstance(info.value, TypeError)
    assert type(value).__qualname__ in str(info.value)
    assert not is_supported_array(value)


def test_detect_memmap_is_numpy(tmp_path) -> None:
    mm = np.memmap(tmp_path / "a.dat", dtype=np.uint8, mode="w+", shape=(4,))
    assert detect_memory_type(mm) is MemoryType.NUMPY


def test_torch_parameter_is_torch(mem) -> None:
    torch = mem.need(MemoryType.TORCH)
    assert detect_memory_type(torch.nn.Parameter(torch.zeros(2))) is MemoryType.TORCH


LAZY_CHECK = """
import sys
import hcsflow, hcsflow.memory, hcsflow.memory.decorators
from hcsflow.memory import detect_memory_type, cleanup_all_gpu_frameworks
import numpy as np
detect_memory_type(np.zeros(3))
try:
    detect_memory_type([1])
except TypeError:
    pass
cleanup_all_gpu_frameworks()
from hcsflow.memory.decorators import torch as torch_decorator
@torch_decorator(oom_recovery=True)
def f(x):
    return x
bad = [m for m in ("torch", "jax", "jaxlib", "tensorflow", "cupy", "pyclesperanto", "keras")
       if m in sys.modules]
print(",".join(bad))
"""


def test_import_and_detection_import_no_framework() -> None:
    out = subprocess.run(
        [sys.executable, "-c", LAZY_CHECK], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
