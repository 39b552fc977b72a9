"""Properties of the dtype rules and the aligned-buffer helpers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hcsflow.errors import DtypeError
from hcsflow.memory import MemoryType, aligned_empty, ensure_aligned, is_aligned
from hcsflow.memory._dtype import cast_array_preserving, lossless_result_type

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)
INT_TYPES = ["uint8", "int8", "uint16", "int16", "int32", "uint32", "int64"]
NUMERIC = [*INT_TYPES, "uint64", "float16", "float32", "float64", "bool"]


@SETTINGS
@given(
    values=hnp.arrays(
        np.float64,
        st.integers(1, 20),
        elements=st.floats(-1e12, 1e12, allow_nan=False, allow_infinity=False),
    ),
    target=st.sampled_from(INT_TYPES),
)
def test_float_to_int_is_rounded_and_clipped(values: np.ndarray, target: str) -> None:
    out = cast_array_preserving(values, MemoryType.NUMPY, np.dtype(target))
    info = np.iinfo(target)
    assert out.dtype == np.dtype(target)
    # Reference in exact Python integers: round half to even, then clamp into the range.
    # Bounds above 2**53 are not floats; there the result may sit up to one float step inside.
    slack = 0 if int(info.max) < 2**53 else 1024
    for v, got in zip(values.tolist(), out.tolist(), strict=True):
        want = min(max(round(v), int(info.min)), int(info.max))
        assert abs(int(got) - want) <= slack, (v, got, want)


@SETTINGS
@given(dtypes=st.lists(st.sampled_from(NUMERIC), min_size=1, max_size=4))
def test_promotion_is_lossless_or_refused(dtypes: list[str]) -> None:
    parsed = [np.dtype(d) for d in dtypes]
    try:
        result = lossless_result_type(parsed)
    except DtypeError:
        # Refused: numpy's own choice really loses a value of some input.
        chosen = np.result_type(*parsed)
        assert any(_loses(d, chosen) for d in parsed)
        return
    for d in parsed:
        assert not _loses(d, result)


def _loses(src: np.dtype, dst: np.dtype) -> bool:
    """Whether an extreme value of ``src`` changes when cast to ``dst`` and back."""
    if src.kind == "b":
        return False
    if src.kind in "iu":
        info = np.iinfo(src)
        probes = np.array([info.min, info.max, info.max - 1], dtype=src)
    else:
        info_f = np.finfo(src)
        probes = np.array([info_f.min, info_f.max, info_f.tiny, 1 / 3], dtype=src)
    if dst.kind in "iu" and src.kind == "f":
        return True
    with np.errstate(all="ignore"):
        back = probes.astype(dst).astype(src)
    return not np.array_equal(back, probes)


@SETTINGS
@given(
    shape=st.lists(st.integers(0, 7), min_size=1, max_size=3),
    dtype=st.sampled_from(["uint8", "int16", "float32", "float64", "complex64", "bool"]),
    alignment=st.sampled_from([1, 16, 64, 128, 4096]),
)
def test_aligned_empty(shape: list[int], dtype: str, alignment: int) -> None:
    out = aligned_empty(shape, dtype, alignment)
    assert out.shape == tuple(shape) and out.dtype == np.dtype(dtype)
    assert out.flags.c_contiguous and out.flags.writeable
    if out.size:  # an empty array has no data to align
        assert out.ctypes.data % alignment == 0


def test_aligned_empty_rejects_bad_alignment() -> None:
    for bad in (0, 3, -64):
        with pytest.raises(ValueError, match="power of two"):
            aligned_empty((2,), np.uint8, bad)


def test_ensure_aligned() -> None:
    good = aligned_empty((4, 4), np.float32)
    assert ensure_aligned(good) is good
    raw = aligned_empty(16 * 4 + 64, np.uint8)
    bad = raw[4 : 4 + 64].view(np.float32).reshape(4, 4)
    bad[...] = np.arange(16).reshape(4, 4)
    fixed = ensure_aligned(bad)
    assert fixed is not bad and is_aligned(fixed)
    np.testing.assert_array_equal(fixed, bad)
    strided = good[:, ::2]
    assert ensure_aligned(strided).flags.c_contiguous
    with pytest.raises(TypeError, match="numpy.ndarray"):
        ensure_aligned([1, 2])  # type: ignore[arg-type]


@SETTINGS
@given(
    source=st.sampled_from(NUMERIC),
    target=st.sampled_from(["uint8", "uint16", "int32", "float32", "float64", "bool"]),
    shape=st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9)),
)
def test_numpy_casts_are_64_byte_aligned(source: str, target: str, shape: tuple) -> None:
    """The dtype policy allocates its numpy results aligned, whatever numpy's allocator does."""
    values = np.ones(shape, dtype=source)  # 0/1 values: every cast between these is allowed
    out = cast_array_preserving(values, MemoryType.NUMPY, np.dtype(target))
    assert out.dtype == np.dtype(target)
    if np.dtype(source) != np.dtype(target):
        assert is_aligned(out)
    np.testing.assert_array_equal(out, values.astype(target))


def test_slice_by_slice_results_are_64_byte_aligned() -> None:
    from hcsflow.memory.decorators import numpy as numpy_function

    @numpy_function(slice_by_slice=True, dtype_policy="native")
    def plus_one(stack: np.ndarray) -> np.ndarray:
        return stack + 1

    for z in range(1, 12):
        out = plus_one(np.zeros((z, 5, 3), np.float32))
        assert is_aligned(out) and out.shape == (z, 5, 3) and (out == 1).all()
