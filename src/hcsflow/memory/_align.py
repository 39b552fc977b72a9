"""64-byte aligned host buffers: the layout every CPU framework can share without a copy."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import DTypeLike

__all__ = ["ALIGNMENT", "aligned_empty", "ensure_aligned", "is_aligned"]

#: jax and tensorflow only import host buffers aligned to this many bytes without copying.
ALIGNMENT = 64


def aligned_empty(
    shape: int | Sequence[int], dtype: DTypeLike, alignment: int = ALIGNMENT
) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an ``alignment``-byte boundary."""
    if alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"alignment must be a positive power of two, got {alignment}")
    dt = np.dtype(dtype)
    shape_t = (shape,) if isinstance(shape, int) else tuple(int(s) for s in shape)
    nbytes = math.prod(shape_t) * dt.itemsize
    raw = np.empty(nbytes + alignment, dtype=np.uint8)
    offset = (-raw.ctypes.data) % alignment
    return raw[offset : offset + nbytes].view(dt).reshape(shape_t)


def is_aligned(x: np.ndarray, alignment: int = ALIGNMENT) -> bool:
    """Whether ``x``'s data pointer is a multiple of ``alignment``."""
    return x.ctypes.data % alignment == 0


def ensure_aligned(x: np.ndarray, alignment: int = ALIGNMENT) -> np.ndarray:
    """``x`` itself if C-contiguous and aligned, else an aligned C-contiguous copy."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"ensure_aligned expects a numpy.ndarray, got {type(x).__qualname__}")
    if x.flags.c_contiguous and is_aligned(x, alignment):
        return x
    out = aligned_empty(x.shape, x.dtype, alignment)
    np.copyto(out, x, casting="no")
    return out
