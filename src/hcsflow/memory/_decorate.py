"""The machinery behind the memory-type decorators: conversion, validation, dtype, OOM recovery."""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from hcsflow.errors import DtypeError, MemoryTypeError, OutOfMemoryRecoveryError, ShapeError
from hcsflow.memory._align import aligned_empty
from hcsflow.memory._cleanup import cleanup_gpu_memory_by_framework
from hcsflow.memory._convert import convert_memory, location_of, to_numpy
from hcsflow.memory._detect import detect_memory_type
from hcsflow.memory._devices import current_device, stream_scope, use_device
from hcsflow.memory._dtype import cast_array_preserving, numpy_dtype
from hcsflow.memory._oom import oom_framework
from hcsflow.memory._recorder import emit
from hcsflow.memory._stack import stack_slices
from hcsflow.memory._types import MemoryType, import_framework, parse_memory_type

__all__ = ["MemoryOptions", "decorate"]

M = MemoryType

_POLICIES = ("preserve", "native")


@dataclass(frozen=True)
class MemoryOptions:
    """What a decorated function declared; exposed as ``fn.memory_options``."""

    input_type: MemoryType
    output_type: MemoryType
    oom_recovery: bool = False
    oom_slice_fallback: bool = True
    cpu_fallback: bool = False
    slice_by_slice: bool = False
    dtype_policy: str | np.dtype = "preserve"
    allow_cpu_roundtrip: bool = True


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def make_options(
    input_type: MemoryType | str,
    output_type: MemoryType | str,
    *,
    oom_recovery: bool,
    oom_slice_fallback: bool,
    cpu_fallback: bool,
    slice_by_slice: bool,
    dtype_policy: Any,
    allow_cpu_roundtrip: bool,
) -> MemoryOptions:
    """Validate decorator arguments at decoration time."""
    policy: str | np.dtype
    if isinstance(dtype_policy, str) and dtype_policy in _POLICIES:
        policy = dtype_policy
    else:
        try:
            explicit = np.dtype(dtype_policy)
        except TypeError as exc:
            raise DtypeError(
                f"dtype_policy must be 'preserve', 'native' or a dtype, got {dtype_policy!r}"
            ) from exc
        if explicit.kind not in "biufc":
            raise DtypeError(f"dtype_policy {explicit.name} is not a numeric or bool dtype")
        policy = explicit
    return MemoryOptions(
        input_type=parse_memory_type(input_type, what="input_type"),
        output_type=parse_memory_type(output_type, what="output_type"),
        oom_recovery=_flag("oom_recovery", oom_recovery),
        oom_slice_fallback=_flag("oom_slice_fallback", oom_slice_fallback),
        cpu_fallback=_flag("cpu_fallback", cpu_fallback),
        slice_by_slice=_flag("slice_by_slice", slice_by_slice),
        dtype_policy=policy,
        allow_cpu_roundtrip=_flag("allow_cpu_roundtrip", allow_cpu_roundtrip),
    )


def _concat(parts: list[Any], memory_type: MemoryType) -> Any:
    """Join ``[k, Y, X]`` parts along Z in their own framework."""
    if memory_type is M.TORCH:
        return import_framework(memory_type).cat(parts, dim=0)
    if memory_type is M.CUPY:
        return import_framework(memory_type).concatenate(parts, axis=0)
    if memory_type is M.JAX:
        return import_framework(memory_type).numpy.concatenate(parts, axis=0)
    if memory_type is M.TENSORFLOW:
        return import_framework(memory_type).concat(parts, axis=0)
    if memory_type is M.NUMPY:
        shape = (sum(int(p.shape[0]) for p in parts), *parts[0].shape[1:])
        return np.concatenate(parts, axis=0, out=aligned_empty(shape, np.result_type(*parts)))
    cle = import_framework(memory_type)
    return cle.push(np.concatenate([cle.pull(p) for p in parts], axis=0))


def _split_result(result: Any) -> tuple[Any, tuple[Any, ...] | None]:
    # Functions with special outputs return (main_output, special_1, ...).
    if isinstance(result, tuple):
        if not result:
            raise MemoryTypeError("function returned an empty tuple; expected an array first")
        return result[0], result[1:]
    return result, None


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in x.shape)


def decorate(func: Callable[..., Any], options: MemoryOptions) -> Callable[..., Any]:
    """Wrap ``func`` so it receives ``options.input_type`` and must return ``output_type``."""
    if not callable(func):
        raise TypeError(f"memory-type decorators wrap functions, got {type(func).__qualname__}")
    name = getattr(func, "__qualname__", repr(func))
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        params = []
    first_name = params[0].name if params else None

    Call = Callable[..., Any]

    def run_once(fn: Call, x: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        device = location_of(x, options.input_type).ordinal
        with stream_scope(options.input_type, device):
            if not options.slice_by_slice:
                return fn(x, *args, **kwargs)
            planes = []
            for z in range(_shape(x)[0]):
                plane = fn(x[z], *args, **kwargs)
                _check_type(plane, f"plane {z} of {name}")
                if len(_shape(plane)) != 2:
                    raise ShapeError(
                        f"{name} (slice_by_slice) returned shape {_shape(plane)} for plane {z}; "
                        "expected a 2-D [Y, X] plane"
                    )
                planes.append(plane)
            return stack_slices(planes, options.output_type, current_device())

    def _check_type(value: Any, what: str) -> MemoryType:
        try:
            kind = detect_memory_type(value)
        except MemoryTypeError as exc:
            raise MemoryTypeError(
                f"{what} returned {type(value).__qualname__}; declared output type is "
                f"{options.output_type.value}"
            ) from exc
        if kind is not options.output_type:
            raise MemoryTypeError(
                f"{what} returned a {kind.value} array; declared output type is "
                f"{options.output_type.value}"
            )
        return kind

    def run(fn: Call, x: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not options.oom_recovery:
            return run_once(fn, x, args, kwargs)
        return _run_with_recovery(fn, x, args, kwargs)

    def _run_with_recovery(fn: Call, x: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        mt = options.input_type
        device = location_of(x, mt).ordinal
        where = f"{mt.value} on {location_of(x, mt)}"
        attempts: list[str] = []
        try:
            return run_once(fn, x, args, kwargs)
        except BaseException as exc:
            if oom_framework(exc) is None:
                raise
            attempts.append(f"full stack ({where}): {type(exc).__name__}: {exc}")
            last: BaseException = exc

        def note(strategy: str, detail: str, started: float) -> None:
            emit(f"oom:{strategy}", mt.value, mt.value, 0, time.perf_counter() - started, detail)

        started = time.perf_counter()
        framework = oom_framework(last) or mt
        cleanup_gpu_memory_by_framework(framework, device)
        if framework is not mt:
            cleanup_gpu_memory_by_framework(mt, device)
        note("free_cache_retry", f"{name}: freed {framework.value} caches", started)
        try:
            return run_once(fn, x, args, kwargs)
        except BaseException as exc:
            if oom_framework(exc) is None:
                raise
            attempts.append(f"retry after freeing caches: {type(exc).__name__}: {exc}")
            last = exc

        depth = _shape(x)[0]
        if options.oom_slice_fallback and not options.slice_by_slice and depth > 1:
            started = time.perf_counter()
            note("slice_by_slice", f"{name}: {depth} planes one at a time", started)
            try:
                parts = []
                for z in range(depth):
                    main, extra = _split_result(run_once(fn, x[z : z + 1], args, kwargs))
                    if extra is not None:
                        raise MemoryTypeError(
                            f"{name} returns special outputs, which slice-by-slice recovery "
                            "cannot merge"
                        )
                    _check_type(main, name)
                    parts.append(main)
                return _concat(parts, options.output_type)
            except BaseException as exc:
                if oom_framework(exc) is None and not isinstance(exc, MemoryTypeError):
                    raise
                attempts.append(f"slice by slice: {type(exc).__name__}: {exc}")
                last = exc
        elif options.oom_slice_fallback:
            attempts.append("slice by slice: not applicable (already one plane at a time)")
        else:
            attempts.append("slice by slice: disabled (oom_slice_fallback=False)")

        if not options.cpu_fallback:
            attempts.append("CPU fallback: disabled (cpu_fallback=False)")
        elif device is None or mt in (M.NUMPY, M.CUPY, M.PYCLESPERANTO):
            attempts.append(f"CPU fallback: not possible for {where}")
        else:
            started = time.perf_counter()
            host = convert_memory(
                to_numpy(x), M.NUMPY, mt, None, allow_cpu_roundtrip=options.allow_cpu_roundtrip
            )
            note("cpu_fallback", f"{name}: running on the CPU", started)
            try:
                with use_device(None):
                    return run_once(fn, host, args, kwargs)
            except BaseException as exc:
                if oom_framework(exc) is None:
                    raise
                attempts.append(f"CPU fallback: {type(exc).__name__}: {exc}")
                last = exc
        raise OutOfMemoryRecoveryError(f"{name} ran out of memory ({where})", attempts) from last

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if args:
            image, rest, key = args[0], args[1:], None
        elif first_name is not None and first_name in kwargs:
            key = first_name
            image, rest = kwargs.pop(first_name), ()
        else:
            raise TypeError(f"{name}() needs an image stack as its first argument")
        try:
            source = detect_memory_type(image)
        except MemoryTypeError as exc:
            raise MemoryTypeError(
                f"{name}() expects a 3-D [Z, Y, X] array as its first argument, got "
                f"{type(image).__module__}.{type(image).__qualname__}"
            ) from exc
        shape = _shape(image)
        if len(shape) != 3:
            raise ShapeError(
                f"{name}() expects a 3-D [Z, Y, X] array, got shape {shape} ({len(shape)}-D)"
            )
        in_dtype = numpy_dtype(image, source)
        x = convert_memory(
            image,
            source,
            options.input_type,
            current_device(),
            allow_cpu_roundtrip=options.allow_cpu_roundtrip,
        )
        if key is None:
            result = run(func, x, rest, kwargs)
        else:

            def by_keyword(arr: Any, *_: Any, **kw: Any) -> Any:
                return func(**{key: arr}, **kw)

            result = run(by_keyword, x, (), kwargs)
        main, extra = _split_result(result)
        kind = _check_type(main, f"{name}()")
        if kind is M.TORCH and main.is_cuda:
            # The tensor may have been allocated on this thread's side stream; tell the caching
            # allocator the caller's stream uses it, so its block is not reused too early.
            torch = import_framework(M.TORCH)
            main.record_stream(torch.cuda.current_stream(main.device))
        out_shape = _shape(main)
        if len(out_shape) != 3:
            raise ShapeError(
                f"{name}() returned shape {out_shape}; functions must return a 3-D [Z, Y, X] array"
            )
        policy = options.dtype_policy
        if policy == "preserve":
            main = cast_array_preserving(main, kind, in_dtype)
        elif isinstance(policy, np.dtype):
            main = cast_array_preserving(main, kind, policy)
        return main if extra is None else (main, *extra)

    wrapper.input_memory_type = options.input_type  # type: ignore[attr-defined]
    wrapper.output_memory_type = options.output_type  # type: ignore[attr-defined]
    wrapper.memory_options = options  # type: ignore[attr-defined]
    return wrapper
