"""stack_slices / unstack_slices: one transfer, strict shapes, lossless dtypes only."""

from __future__ import annotations

import re

import numpy as np
import pytest

from hcsflow.errors import DtypeError, MemoryTypeError, ShapeError
from hcsflow.memory import (
    MemoryType,
    detect_memory_type,
    record_conversions,
    stack_slices,
    unstack_slices,
)

M = MemoryType
CPU_TYPES = [M.NUMPY, M.TORCH, M.JAX, M.TENSORFLOW, M.PYCLESPERANTO]


def _planes(n: int = 4, dtype: str = "float32") -> list[np.ndarray]:
    return [np.full((3, 5), z, dtype=dtype) + np.arange(5, dtype=dtype) for z in range(n)]


@pytest.mark.parametrize("target", CPU_TYPES, ids=str)
def test_numpy_slices_to_every_type(mem, target) -> None:
    mem.need(target)
    planes = _planes()
    with record_conversions() as rec:
        out = stack_slices(planes, target)
    assert detect_memory_type(out) is target
    got = mem.values_of(out, target)
    np.testing.assert_array_equal(got, np.stack(planes))
    assert got.dtype == np.float32
    # One stacking step, then one conversion: never one conversion per slice.
    assert rec.routes()[0] == "stack"
    assert len(rec.events) == 2
    expected = (
        "transfer" if target is M.PYCLESPERANTO else ("noop" if target is M.NUMPY else "dlpack")
    )
    assert rec.routes()[1] == expected


def test_numpy_stack_is_aligned_for_zero_copy(mem) -> None:
    out = stack_slices(_planes(), "numpy")
    assert out.ctypes.data % 64 == 0
    assert out.flags.c_contiguous and out.flags.writeable


@pytest.mark.parametrize("source", CPU_TYPES, ids=str)
def test_slices_of_each_type_to_numpy(mem, source) -> None:
    planes = _planes()
    native = [mem.make(source, p) for p in planes]
    out = stack_slices(native, "numpy")
    np.testing.assert_array_equal(out, np.stack(planes))


def test_mixed_host_types(mem) -> None:
    torch = mem.need(M.TORCH)
    jnp = mem.need(M.JAX).numpy
    planes = _planes(3)
    mixed = [planes[0], torch.from_numpy(planes[1]), jnp.asarray(planes[2])]
    out = stack_slices(mixed, "torch")
    assert isinstance(out, torch.Tensor)
    np.testing.assert_array_equal(out.numpy(), np.stack(planes))


def test_pyclesperanto_slices_stack_on_device(mem) -> None:
    cle = mem.need(M.PYCLESPERANTO)
    planes = _planes()
    out = stack_slices([cle.push(p) for p in planes], "pyclesperanto")
    np.testing.assert_array_equal(cle.pull(out), np.stack(planes))


def test_lossless_promotion(mem) -> None:
    a = np.array([[0, 65535]], dtype=np.uint16)
    b = np.array([[-1.0, 0.5]], dtype=np.float32)
    out = stack_slices([a, b], "numpy")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[[0, 65535]], [[-1.0, 0.5]]])
    assert stack_slices(
        [np.zeros((1, 1), np.uint8), np.zeros((1, 1), np.int16)], "numpy"
    ).dtype == (np.int16)


@pytest.mark.parametrize(
    ("a", "b"),
    [("int64", "float64"), ("uint64", "int8"), ("int64", "float32"), ("uint64", "complex64")],
)
def test_lossy_dtype_mix_raises(a, b) -> None:
    with pytest.raises(DtypeError) as info:
        stack_slices([np.zeros((2, 2), a), np.zeros((2, 2), b)], "numpy")
    assert a in str(info.value) and b in str(info.value)


def test_float_never_becomes_huge_uint16() -> None:
    # uint16 + float32 promotes to float32: -1.0 stays -1.0.
    out = stack_slices([np.zeros((1, 2), np.uint16), np.full((1, 2), -1.0, np.float32)], "numpy")
    assert out.min() == -1.0


def test_bad_inputs() -> None:
    with pytest.raises(ShapeError, match="empty"):
        stack_slices([], "numpy")
    with pytest.raises(MemoryTypeError, match="slice 1.*list"):
        stack_slices([np.zeros((2, 2)), [[1, 2], [3, 4]]], "numpy")
    with pytest.raises(ShapeError, match=r"slice 1 has shape \(2, 3\) but slice 0 has \(2, 2\)"):
        stack_slices([np.zeros((2, 2)), np.zeros((2, 3))], "numpy")
    with pytest.raises(ShapeError, match=r"slice 0 has shape \(2, 2, 2\); expected a 2-D"):
        stack_slices([np.zeros((2, 2, 2))], "numpy")
    with pytest.raises(ShapeError, match=r"slice 0 has shape \(4,\)"):
        stack_slices([np.zeros(4)], "numpy")
    with pytest.raises(MemoryTypeError, match="expects a list.*ndarray"):
        stack_slices(np.zeros((2, 2, 2)), "numpy")
    with pytest.raises(MemoryTypeError, match="unknown memory type 'tensor'"):
        stack_slices([np.zeros((2, 2))], "tensor")


def test_non_contiguous_and_negative_stride_slices() -> None:
    base = np.arange(40, dtype=np.float32).reshape(4, 10)
    planes = [base[:, ::2], base[::-1, ::-2]]
    out = stack_slices(planes, "numpy")
    np.testing.assert_array_equal(out, np.stack(planes))


@pytest.mark.parametrize("target", CPU_TYPES, ids=str)
def test_unstack(mem, target) -> None:
    mem.need(target)
    planes = _planes()
    stacked = stack_slices(planes, "numpy")
    out = unstack_slices(stacked, target)
    assert len(out) == len(planes)
    for got, want in zip(out, planes, strict=True):
        assert detect_memory_type(got) is target
        np.testing.assert_array_equal(mem.values_of(got, target), want)


def test_unstack_numpy_gives_views() -> None:
    stacked = stack_slices(_planes(), "numpy")
    out = unstack_slices(stacked, "numpy")
    assert all(np.shares_memory(p, stacked) for p in out)


@pytest.mark.parametrize("shape", [(4,), (3, 4), (1, 2, 3, 4)])
def test_unstack_requires_3d(shape) -> None:
    with pytest.raises(ShapeError, match=re.escape(f"got shape {tuple(shape)}")):
        unstack_slices(np.zeros(shape), "numpy")


def test_lossless_mixes_widen() -> None:
    assert stack_slices(
        [np.zeros((1, 1), "int32"), np.zeros((1, 1), "float32")], "numpy"
    ).dtype == (np.float64)
    assert stack_slices([np.zeros((1, 1), bool), np.ones((1, 1), "uint8")], "numpy").dtype == (
        np.uint8
    )
