"""Dtypes across frameworks: numpy names for every array, lossless promotion, guarded casts."""

from __future__ import annotations

from typing import Any

import numpy as np

from hcsflow.errors import DtypeError
from hcsflow.memory._align import aligned_empty
from hcsflow.memory._types import MemoryType

__all__ = [
    "numpy_dtype",
    "lossless_result_type",
    "cast_array_preserving",
    "DtypePolicy",
    "CLE_DTYPES",
    "check_cle_dtype",
]

# pyclesperanto stores only these; its push would silently narrow anything else.
CLE_DTYPES = frozenset(
    np.dtype(d) for d in ("float32", "int8", "int16", "int32", "uint8", "uint16", "uint32")
)


def check_cle_dtype(dtype: np.dtype) -> None:
    """Raise :class:`DtypeError` unless pyclesperanto can hold ``dtype`` (bool travels as uint8)."""
    if dtype != np.bool_ and dtype not in CLE_DTYPES:
        names = ", ".join(sorted(d.name for d in CLE_DTYPES))
        raise DtypeError(
            f"pyclesperanto cannot hold {dtype.name} (it would narrow it silently); "
            f"supported: {names}, bool (as uint8). Cast explicitly first"
        )


#: ``"preserve"`` | ``"native"`` | an explicit dtype (anything ``np.dtype`` accepts).
DtypePolicy = Any

# Significand bits of each float kind: an integer fits exactly when its bits do not exceed it.
_MANTISSA = {2: 11, 4: 24, 8: 53, 16: 64}


def numpy_dtype(x: Any, memory_type: MemoryType) -> np.dtype:
    """The numpy dtype equivalent to ``x``'s element type (raises for bfloat16 and the like)."""
    if memory_type is MemoryType.TORCH:
        import torch  # the array exists, so torch is already loaded

        if x.dtype is torch.bool:
            return np.dtype(bool)
        try:
            return np.dtype(str(x.dtype).removeprefix("torch."))
        except TypeError as exc:
            raise DtypeError(f"torch dtype {x.dtype} has no numpy equivalent") from exc
    if memory_type is MemoryType.TENSORFLOW:
        try:
            return np.dtype(x.dtype.as_numpy_dtype)
        except TypeError as exc:
            raise DtypeError(f"tensorflow dtype {x.dtype.name} has no numpy equivalent") from exc
    return np.dtype(x.dtype)


def _int_fits_float(i: np.dtype, f: np.dtype) -> bool:
    bits = i.itemsize * 8 - (1 if i.kind == "i" else 0)
    return bits <= _MANTISSA.get(f.itemsize if f.kind == "f" else f.itemsize // 2, 0)


def _lossless(src: np.dtype, dst: np.dtype) -> bool:
    if src == dst or src.kind == "b":
        return True
    if src.kind in "iu" and dst.kind in "fc":
        return _int_fits_float(src, dst)
    return bool(np.can_cast(src, dst, casting="safe"))


def lossless_result_type(dtypes: list[np.dtype]) -> np.dtype:
    """The dtype all ``dtypes`` convert to without losing a value, or raise :class:`DtypeError`.

    Unlike numpy's promotion this refuses int64 + float64 (int64 does not fit in a float64's
    53-bit significand) and never picks an integer type for a float.
    """
    unique = list(dict.fromkeys(dtypes))
    if len(unique) == 1:
        return unique[0]
    result = np.result_type(*unique)
    if result.kind == "O" or not all(_lossless(d, result) for d in unique):
        names = ", ".join(d.name for d in unique)
        raise DtypeError(
            f"cannot combine dtypes {names} without losing values (numpy would use "
            f"{result.name}); cast the slices to one dtype first"
        )
    return result


# --------------------------------------------------------------------------- casting


def _ops(memory_type: MemoryType) -> Any:
    """The numpy-like namespace used to cast an array of ``memory_type`` where it lives."""
    if memory_type is MemoryType.CUPY:
        import cupy

        return cupy
    if memory_type is MemoryType.JAX:
        import jax.numpy as jnp

        return jnp
    return np


def cast_array_preserving(x: Any, memory_type: MemoryType, target: np.dtype) -> Any:
    """Cast ``x`` to ``target`` with hcsflow's documented rules, in ``x``'s own framework.

    * same dtype: unchanged;
    * to bool: only when every value is 0 or 1, else :class:`DtypeError`;
    * float to integer: NaN raises :class:`DtypeError`; values are rounded half to even and
      clipped into the integer range (so -1.0 becomes 0 in uint16, never 65535);
    * integer to integer: clipped into the target range;
    * anything to float: values beyond the float's range raise instead of becoming inf;
    * complex to real raises (the imaginary part would be dropped).
    """
    src = numpy_dtype(x, memory_type)
    target = np.dtype(target)
    if src == target:
        return x
    if memory_type is MemoryType.TORCH:
        return _cast_torch(x, src, target)
    if memory_type is MemoryType.TENSORFLOW:
        return _cast_tf(x, src, target)
    if memory_type is MemoryType.PYCLESPERANTO:
        # pyclesperanto has no NaN test or rounding with these semantics; cast on the host.
        import pyclesperanto as cle

        check_cle_dtype(target)
        host = cle.pull(x)
        return cle.push(_cast_generic(np, host, src, target))
    return _cast_generic(_ops(memory_type), x, src, target)


def _float_bounds(src: np.dtype, target: np.dtype) -> tuple[float, float]:
    """Integer range of ``target`` as floats of ``src`` that stay inside it when cast back.

    ``float32(2**31 - 1)`` rounds up to ``2**31``, which would wrap around when cast to int32;
    step one representable value towards zero instead.
    """
    info = np.iinfo(target)
    bounds = []
    for limit in (info.min, info.max):
        value = np.array(limit, dtype=np.float64).astype(src)
        if abs(int(value)) > abs(int(limit)):
            value = np.nextafter(value, src.type(0))
        bounds.append(float(value))
    return bounds[0], bounds[1]


def _check_int_to_float(xp: Any, x: Any, src: np.dtype, target: np.dtype) -> None:
    if src.kind in "iu" and target.kind in "fc" and not _int_fits_float(src, target):
        limit = 2 ** _MANTISSA[target.itemsize if target.kind == "f" else target.itemsize // 2]
        if int(xp.max(xp.abs(x))) > limit if x.size else False:
            raise DtypeError(
                f"integer values of {src.name} beyond {limit} are not exact in {target.name}"
            )


def _check_complex(src: np.dtype, target: np.dtype) -> None:
    if src.kind == "c" and target.kind != "c":
        raise DtypeError(f"cannot cast complex {src.name} to {target.name}: imaginary part lost")


def _astype(xp: Any, x: Any, target: np.dtype) -> Any:
    """``x.astype(target)``; a numpy result is 64-byte aligned like every array hcsflow makes."""
    if xp is not np:
        return x.astype(target)
    out = aligned_empty(x.shape, target)
    np.copyto(out, x, casting="unsafe")
    return out


def _cast_generic(xp: Any, x: Any, src: np.dtype, target: np.dtype) -> Any:
    _check_complex(src, target)
    if target.kind == "b":
        if src.kind != "b" and bool(xp.any((x != 0) & (x != 1))):
            raise DtypeError(f"cannot cast {src.name} to bool: values other than 0 and 1")
        if xp is np:
            return np.not_equal(x, 0, out=aligned_empty(x.shape, np.bool_))
        return x != 0
    if target.kind in "iu":
        info = np.iinfo(target)
        if src.kind == "f":
            if bool(xp.any(xp.isnan(x))):
                raise DtypeError(f"cannot cast {src.name} with NaN values to {target.name}")
            lo, hi = _float_bounds(src, target)
            return _astype(xp, xp.clip(xp.rint(x), lo, hi), target)
        if src.kind in "iu":
            lo = max(int(info.min), int(np.iinfo(src).min))
            hi = min(int(info.max), int(np.iinfo(src).max))
            return _astype(xp, xp.clip(x, lo, hi), target)
        return _astype(xp, x, target)
    _check_int_to_float(xp, x, src, target)
    with np.errstate(over="ignore"):  # overflow is detected below and reported as DtypeError
        out = _astype(xp, x, target)
    if target.kind == "f" and src.kind == "f" and bool(xp.any(xp.isinf(out) & ~xp.isinf(x))):
        raise DtypeError(f"values of {src.name} overflow {target.name}")
    return out


def _cast_torch(x: Any, src: np.dtype, target: np.dtype) -> Any:
    import torch

    _check_complex(src, target)
    tdt = getattr(torch, target.name if target.kind != "b" else "bool")
    if target.kind == "b":
        if src.kind != "b" and bool(((x != 0) & (x != 1)).any()):
            raise DtypeError(f"cannot cast {src.name} to bool: values other than 0 and 1")
        return x != 0
    if target.kind in "iu":
        info = np.iinfo(target)
        if src.kind == "f":
            if bool(torch.isnan(x).any()):
                raise DtypeError(f"cannot cast {src.name} with NaN values to {target.name}")
            lo, hi = _float_bounds(src, target)
            return torch.round(x).clamp(lo, hi).to(tdt)
        if src.kind in "iu":
            lo = max(int(info.min), int(np.iinfo(src).min))
            hi = min(int(info.max), int(np.iinfo(src).max))
            return x.clamp(lo, hi).to(tdt)
        return x.to(tdt)
    if src.kind in "iu" and target.kind in "fc" and not _int_fits_float(src, target):
        _check_int_to_float(np, x.abs().max().cpu().numpy(), src, target)
    out = x.to(tdt)
    if target.kind == "f" and src.kind == "f" and bool((torch.isinf(out) & ~torch.isinf(x)).any()):
        raise DtypeError(f"values of {src.name} overflow {target.name}")
    return out


def _cast_tf(x: Any, src: np.dtype, target: np.dtype) -> Any:
    import tensorflow as tf

    _check_complex(src, target)
    tdt = tf.as_dtype(target)
    if target.kind == "b":
        if src.kind != "b" and bool(tf.reduce_any((x != 0) & (x != 1))):
            raise DtypeError(f"cannot cast {src.name} to bool: values other than 0 and 1")
        return tf.not_equal(x, tf.zeros((), x.dtype))
    if target.kind in "iu":
        info = np.iinfo(target)
        if src.kind == "f":
            if bool(tf.reduce_any(tf.math.is_nan(x))):
                raise DtypeError(f"cannot cast {src.name} with NaN values to {target.name}")
            rounded = tf.math.round(x)  # rounds half to even, like numpy
            lo, hi = _float_bounds(src, target)
            bounded = tf.clip_by_value(rounded, tf.constant(lo, x.dtype), tf.constant(hi, x.dtype))
            return tf.cast(bounded, tdt)
        if src.kind in "iu":
            lo = max(int(info.min), int(np.iinfo(src).min))
            hi = min(int(info.max), int(np.iinfo(src).max))
            clipped = tf.clip_by_value(x, tf.constant(lo, x.dtype), tf.constant(hi, x.dtype))
            return tf.cast(clipped, tdt)
        return tf.cast(x, tdt)
    if src.kind in "iu" and target.kind in "fc" and not _int_fits_float(src, target):
        _check_int_to_float(np, tf.reduce_max(tf.abs(x)).numpy(), src, target)
    out = tf.cast(x, tdt)
    if target.kind == "f" and src.kind == "f":
        grew = tf.math.is_inf(out) & ~tf.math.is_inf(x)
        if bool(tf.reduce_any(grew)):
            raise DtypeError(f"values of {src.name} overflow {target.name}")
    return out
