"""Memory-type decorators: declare which array type a function takes and returns.

``@torch`` (bare) or ``@torch(oom_recovery=True, ...)``; likewise ``numpy``, ``cupy``,
``tensorflow``, ``jax`` and ``pyclesperanto``; ``@memory_types(input_type=..., output_type=...)``
for mixed declarations.  A decorated function called with any supported ``[Z, Y, X]`` array
gets it converted to its input type, must return its output type (checked), and by default
returns the input's dtype (see ``dtype_policy`` in docs/memory.md).  The device comes from
:func:`hcsflow.memory.use_device`.  Decorated functions keep their name, docstring and
signature, expose ``input_memory_type``, ``output_memory_type`` and ``memory_options``, and
pickle by qualified name like the undecorated function.

This module never imports a framework; the names ``torch``, ``jax`` ... here are decorators.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, overload

from hcsflow.memory._decorate import MemoryOptions, decorate, make_options
from hcsflow.memory._types import MemoryType, parse_memory_type

__all__ = [
    "numpy",
    "cupy",
    "torch",
    "tensorflow",
    "jax",
    "pyclesperanto",
    "memory_types",
    "MemoryOptions",
]

F = TypeVar("F", bound=Callable[..., Any])


def memory_types(
    *,
    input_type: MemoryType | str,
    output_type: MemoryType | str,
    oom_recovery: bool = False,
    oom_slice_fallback: bool = True,
    cpu_fallback: bool = False,
    slice_by_slice: bool = False,
    dtype_policy: Any = "preserve",
    allow_cpu_roundtrip: bool = True,
) -> Callable[[F], F]:
    """Declare a function's input and output memory types (and its recovery options).

    ``oom_recovery``: on the framework's out-of-memory error, free caches and retry, then
    (``oom_slice_fallback``, for functions whose Z planes are independent) run plane by plane,
    then (``cpu_fallback``) run on the CPU; else raise ``OutOfMemoryRecoveryError``.
    ``slice_by_slice``: the function is 2-D and runs on each Z plane.
    ``dtype_policy``: ``"preserve"`` (output cast back to the input dtype), ``"native"``
    (as returned) or a dtype.  ``allow_cpu_roundtrip``: the input may be copied when its
    memory cannot be shared (recorded by ``record_conversions``).
    """
    options = make_options(
        input_type,
        output_type,
        oom_recovery=oom_recovery,
        oom_slice_fallback=oom_slice_fallback,
        cpu_fallback=cpu_fallback,
        slice_by_slice=slice_by_slice,
        dtype_policy=dtype_policy,
        allow_cpu_roundtrip=allow_cpu_roundtrip,
    )

    def apply(func: F) -> F:
        return decorate(func, options)  # type: ignore[return-value]

    return apply


def _framework_decorator(default: MemoryType, func: Any, kwargs: dict[str, Any]) -> Any:
    if func is not None and not callable(func):
        raise TypeError(f"@{default.value} takes keyword arguments only, got a positional {func!r}")
    kwargs.setdefault("input_type", default)
    kwargs.setdefault("output_type", default)
    for key in ("input_type", "output_type"):
        kwargs[key] = parse_memory_type(kwargs[key], what=key)
    apply = memory_types(**kwargs)
    return apply if func is None else apply(func)


@overload
def numpy(func: F, /) -> F: ...
@overload
def numpy(func: None = None, /, **options: Any) -> Callable[[F], F]: ...
def numpy(func: Any = None, /, **options: Any) -> Any:
    """Declare a numpy function (bare ``@numpy`` or ``@numpy(...)`` with memory_types options)."""
    return _framework_decorator(MemoryType.NUMPY, func, options)


@overload
def cupy(func: F, /) -> F: ...
@overload
def cupy(func: None = None, /, **options: Any) -> Callable[[F], F]: ...
def cupy(func: Any = None, /, **options: Any) -> Any:
    """Declare a CuPy function (needs an NVIDIA GPU at call time)."""
    return _framework_decorator(MemoryType.CUPY, func, options)


@overload
def torch(func: F, /) -> F: ...
@overload
def torch(func: None = None, /, **options: Any) -> Callable[[F], F]: ...
def torch(func: Any = None, /, **options: Any) -> Any:
    """Declare a PyTorch function (CPU, or the GPU chosen with ``use_device``)."""
    return _framework_decorator(MemoryType.TORCH, func, options)


@overload
def tensorflow(func: F, /) -> F: ...
@overload
def tensorflow(func: None = None, /, **options: Any) -> Callable[[F], F]: ...
def tensorflow(func: Any = None, /, **options: Any) -> Any:
    """Declare a TensorFlow function."""
    return _framework_decorator(MemoryType.TENSORFLOW, func, options)


@overload
def jax(func: F, /) -> F: ...
@overload
def jax(func: None = None, /, **options: Any) -> Callable[[F], F]: ...
def jax(func: Any = None, /, **options: Any) -> Any:
    """Declare a JAX function."""
    return _framework_decorator(MemoryType.JAX, func, options)


@overload
def pyclesperanto(func: F, /) -> F: ...
@overload
def pyclesperanto(func: None = None, /, **options: Any) -> Callable[[F], F]: ...
def pyclesperanto(func: Any = None, /, **options: Any) -> Any:
    """Declare a pyclesperanto function (OpenCL; a CPU OpenCL driver works without a GPU)."""
    return _framework_decorator(MemoryType.PYCLESPERANTO, func, options)
