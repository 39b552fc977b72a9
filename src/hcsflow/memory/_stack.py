"""``stack_slices`` / ``unstack_slices``: 2-D slices to one ``[Z, Y, X]`` array and back."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from hcsflow.errors import MemoryTypeError, ShapeError
from hcsflow.memory._align import aligned_empty
from hcsflow.memory._convert import convert_memory, host_view, location_of
from hcsflow.memory._detect import detect_memory_type
from hcsflow.memory._devices import HOST
from hcsflow.memory._dtype import cast_array_preserving, lossless_result_type, numpy_dtype
from hcsflow.memory._recorder import emit
from hcsflow.memory._types import MemoryType, import_framework, parse_memory_type

__all__ = ["stack_slices", "unstack_slices"]

M = MemoryType


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in x.shape)


def _stack_in_framework(items: list[Any], memory_type: MemoryType) -> Any:
    """Stack same-type, same-device 2-D arrays where they live (one framework call)."""
    if memory_type is M.TORCH:
        return import_framework(memory_type).stack(items)
    if memory_type is M.CUPY:
        return import_framework(memory_type).stack(items)
    if memory_type is M.JAX:
        return import_framework(memory_type).numpy.stack(items)
    if memory_type is M.TENSORFLOW:
        return import_framework(memory_type).stack(items)
    cle = import_framework(memory_type)
    first = items[0]
    out = cle.create((len(items), *_shape(first)), dtype=first.dtype)
    for z, item in enumerate(items):
        cle.paste(item, out, 0, 0, z)
    return out


def stack_slices(
    slices: Sequence[Any],
    memory_type: MemoryType | str,
    gpu_id: int | None = None,
    *,
    allow_cpu_roundtrip: bool = False,
) -> Any:
    """Stack 2-D slices (any memory types) into a ``[Z, Y, X]`` array of ``memory_type``.

    Host-resident slices are written into one 64-byte aligned numpy buffer, which is then
    converted once (shared with CPU torch/jax/tensorflow, one upload to a GPU).  Slices that
    all already live on one device as one type are stacked there.  Mixed dtypes are promoted
    only when no value can change (uint16 with float32 gives float32); otherwise
    :class:`~hcsflow.errors.DtypeError`.  An empty list, a non-array, a slice that is not 2-D
    or mismatched shapes raise.
    """
    target = parse_memory_type(memory_type)
    if not isinstance(slices, list | tuple):
        raise MemoryTypeError(
            f"stack_slices expects a list of 2-D arrays, got {type(slices).__qualname__}"
        )
    if not slices:
        raise ShapeError("stack_slices needs at least one 2-D slice, got an empty list")
    kinds: list[MemoryType] = []
    dtypes: list[np.dtype] = []
    shape: tuple[int, ...] | None = None
    for index, item in enumerate(slices):
        try:
            kind = detect_memory_type(item)
        except MemoryTypeError as exc:
            raise MemoryTypeError(f"slice {index}: {exc}") from exc
        item_shape = _shape(item)
        if len(item_shape) != 2:
            raise ShapeError(f"slice {index} has shape {item_shape}; expected a 2-D [Y, X] slice")
        if shape is None:
            shape = item_shape
        elif item_shape != shape:
            raise ShapeError(
                f"slice {index} has shape {item_shape} but slice 0 has {shape}; "
                "all slices must have the same shape"
            )
        kinds.append(kind)
        dtypes.append(numpy_dtype(item, kind))
    assert shape is not None
    dtype = lossless_result_type(dtypes)
    locations = [location_of(item, kind) for item, kind in zip(slices, kinds, strict=True)]

    start = time.perf_counter()
    if all(loc == HOST for loc in locations):
        out = aligned_empty((len(slices), *shape), dtype)
        views = [host_view(item, kind) for item, kind in zip(slices, kinds, strict=True)]
        # Promotion was checked lossless above; numpy's "safe" agrees for every such pair.
        np.stack(views, out=out, casting="safe")
        emit("stack", "host", "numpy", out.nbytes, time.perf_counter() - start, "stack on host")
        return convert_memory(out, M.NUMPY, target, gpu_id, allow_cpu_roundtrip)

    first_kind, first_loc = kinds[0], locations[0]
    if all(k is first_kind for k in kinds) and all(loc == first_loc for loc in locations):
        items = [cast_array_preserving(s, first_kind, dtype) for s in slices]
        stacked = _stack_in_framework(list(items), first_kind)
        nbytes = len(slices) * int(np.prod(shape)) * dtype.itemsize
        emit("stack", first_kind.value, first_kind.value, nbytes, time.perf_counter() - start)
        return convert_memory(stacked, first_kind, target, gpu_id, allow_cpu_roundtrip)

    # Slices spread over devices or types: bring each to the target, then stack there.
    converted = [
        convert_memory(s, k, target, gpu_id, allow_cpu_roundtrip)
        for s, k in zip(slices, kinds, strict=True)
    ]
    converted = [cast_array_preserving(c, target, dtype) for c in converted]
    places = {location_of(c, target) for c in converted}
    if len(places) != 1:
        raise MemoryTypeError(
            f"slices ended up on different devices ({', '.join(map(str, places))}); "
            "pass gpu_id to choose one"
        )
    return _stack_in_framework(converted, target)


def unstack_slices(
    array: Any,
    memory_type: MemoryType | str,
    gpu_id: int | None = None,
    *,
    allow_cpu_roundtrip: bool = False,
) -> list[Any]:
    """Split a ``[Z, Y, X]`` array into ``Z`` 2-D slices of ``memory_type``.

    The whole array is converted once; numpy and torch slices are views of that result.
    A non-3-D array raises :class:`~hcsflow.errors.ShapeError`.
    """
    target = parse_memory_type(memory_type)
    source = detect_memory_type(array)
    shape = _shape(array)
    if len(shape) != 3:
        raise ShapeError(f"unstack_slices expects a 3-D [Z, Y, X] array, got shape {shape}")
    converted = convert_memory(array, source, target, gpu_id, allow_cpu_roundtrip)
    return [converted[z] for z in range(shape[0])]
