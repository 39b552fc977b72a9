"""Recognising each framework's real out-of-memory errors (without importing frameworks)."""

from __future__ import annotations

import sys

from hcsflow.errors import HcsflowError
from hcsflow.memory._types import MemoryType

__all__ = ["oom_framework"]

M = MemoryType

# OpenCL allocation failures as pyclesperanto reports them in its RuntimeError messages.
_OPENCL_OOM = (
    "CL_MEM_OBJECT_ALLOCATION_FAILURE",
    "CL_OUT_OF_RESOURCES",
    "CL_OUT_OF_HOST_MEMORY",
    "CL_INVALID_BUFFER_SIZE",
    "Failed to allocate",
)


def oom_framework(exc: BaseException) -> MemoryType | None:
    """Which framework ``exc`` is an out-of-memory error of, or ``None`` if it is not one."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.OutOfMemoryError):
        return M.TORCH
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(exc, cupy.cuda.memory.OutOfMemoryError):
        return M.CUPY
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(exc, tf.errors.ResourceExhaustedError):
        return M.TENSORFLOW
    jax_errors = sys.modules.get("jax.errors")
    if (
        jax_errors is not None
        and isinstance(exc, jax_errors.JaxRuntimeError)
        and "RESOURCE_EXHAUSTED" in str(exc)
    ):
        return M.JAX
    if (
        "pyclesperanto" in sys.modules
        and isinstance(exc, RuntimeError)
        and any(code in str(exc) for code in _OPENCL_OOM)
    ):
        return M.PYCLESPERANTO
    # hcsflow's own OutOfMemoryRecoveryError is a MemoryError too: it reports, not retries.
    if isinstance(exc, MemoryError) and not isinstance(exc, HcsflowError):
        return M.NUMPY
    return None
