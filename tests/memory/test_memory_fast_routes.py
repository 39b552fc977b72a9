"""The zero-copy fast routes: taken for plain CPU pairs, never changing a result or an error."""

from __future__ import annotations

import numpy as np
import pytest

from hcsflow.errors import DtypeError, MemoryConversionError, MemoryTypeError
from hcsflow.memory import (
    MemoryType,
    aligned_empty,
    convert_memory,
    record_conversions,
    to_memory_type,
    to_numpy,
)
from hcsflow.memory._fast import lookup

M = MemoryType
HOST = [M.NUMPY, M.TORCH, M.JAX, M.TENSORFLOW]
ZERO_COPY = [(s, t) for s in HOST for t in HOST if s is not t]


@pytest.mark.parametrize(("source", "target"), ZERO_COPY, ids=str)
def test_fast_route_is_taken_and_shares_memory(mem, stack, source, target) -> None:
    mem.need(target)
    src = mem.make(source, stack)
    convert_memory(src, source, target)  # the first call may import and learn the pair
    assert lookup(src, source.value, target.value) is not None
    out = convert_memory(src, source.value, target.value)
    assert mem.host_pointer(out, target) == mem.host_pointer(src, source)
    got = mem.values_of(out, target)
    assert got.dtype == stack.dtype and got.shape == stack.shape
    np.testing.assert_array_equal(got, mem.values_of(src, source))


@pytest.mark.parametrize(("source", "target"), ZERO_COPY, ids=str)
def test_fast_route_is_recorded_like_the_general_path(mem, stack, source, target) -> None:
    mem.need(target)
    src = mem.make(source, stack)
    convert_memory(src, source, target)
    with record_conversions() as rec:
        convert_memory(src, source, target)
    (event,) = rec.events
    assert (event.route, event.source, event.target) == ("dlpack", source.value, target.value)
    assert event.bytes_copied == 0 and event.seconds >= 0


def test_names_in_any_case_and_members_share_one_route(mem, stack) -> None:
    torch = mem.need(M.TORCH)
    for src, tgt in (("numpy", "torch"), (M.NUMPY, M.TORCH), ("NumPy", " Torch ")):
        out = convert_memory(stack, src, tgt)
        assert isinstance(out, torch.Tensor) and out.data_ptr() == stack.ctypes.data


def test_wrong_source_type_still_raises_after_the_pair_is_known(mem, stack) -> None:
    mem.need(M.TORCH)
    convert_memory(stack, "numpy", "torch")
    for _ in range(2):  # the refusal is cached, the error is not swallowed
        with pytest.raises(MemoryTypeError, match="source_type is 'torch'"):
            convert_memory(stack, "torch", "numpy")


def test_unhashable_or_unknown_names_raise_typed_errors(stack) -> None:
    with pytest.raises(MemoryTypeError, match="unknown source_type"):
        convert_memory(stack, ["numpy"], "torch")  # type: ignore[arg-type]
    with pytest.raises(MemoryTypeError, match="unknown target_type"):
        convert_memory(stack, "numpy", "tensor")


def test_numpy_subclasses_take_the_general_path(mem) -> None:
    mem.need(M.TORCH)
    masked = np.ma.masked_array(np.zeros((2, 3, 4), np.float32))
    assert lookup(masked, "numpy", "torch") is None
    with pytest.raises(MemoryTypeError, match="MaskedArray"):
        convert_memory(masked, "numpy", "torch")


def test_numpy_negative_stride_on_length_one_axis(mem) -> None:
    mem.need(M.TORCH)
    base = aligned_empty((1, 4, 5), np.float32)
    base[...] = 1.0
    view = base[::-1]
    out = convert_memory(view, "numpy", "torch", allow_cpu_roundtrip=True)
    np.testing.assert_array_equal(out.numpy(), view)


@pytest.mark.parametrize("target", [M.NUMPY, M.JAX, M.TENSORFLOW], ids=str)
def test_torch_negative_bit_is_not_lost(mem, target) -> None:
    torch = mem.need(M.TORCH)
    mem.need(target)
    z = torch.tensor([[1 + 2j, 3 - 4j]], dtype=torch.complex64)
    negated = z.conj().imag  # a lazy view: the memory holds +2, -4, the values are -2, +4
    assert negated.is_neg()
    out = convert_memory(negated, "torch", target, allow_cpu_roundtrip=True)
    np.testing.assert_array_equal(mem.values_of(out, target), [[-2.0, 4.0]])


@pytest.mark.parametrize("target", [M.NUMPY, M.TENSORFLOW], ids=str)
def test_torch_conjugate_bit_is_not_lost(mem, target) -> None:
    torch = mem.need(M.TORCH)
    mem.need(target)
    z = torch.tensor([[1 + 2j, 3 - 4j]], dtype=torch.complex64).conj()
    assert z.is_conj()
    out = convert_memory(z, "torch", target, allow_cpu_roundtrip=True)
    np.testing.assert_array_equal(mem.values_of(out, target), [[1 - 2j, 3 + 4j]])


@pytest.mark.parametrize("target", [M.NUMPY, M.JAX, M.TENSORFLOW], ids=str)
def test_torch_requiring_grad_is_detached_not_refused(mem, target) -> None:
    torch = mem.need(M.TORCH)
    mem.need(target)
    t = torch.arange(64.0, dtype=torch.float32).reshape(1, 8, 8).requires_grad_(True)
    out = convert_memory(t, "torch", target)
    assert mem.host_pointer(out, target) == t.data_ptr()
    np.testing.assert_array_equal(mem.values_of(out, target), t.detach().numpy())


@pytest.mark.parametrize("target", [M.JAX, M.TENSORFLOW], ids=str)
def test_non_contiguous_torch_is_refused_by_jax_and_tensorflow(mem, target) -> None:
    torch = mem.need(M.TORCH)
    mem.need(target)
    t = torch.arange(64.0, dtype=torch.float32).reshape(1, 8, 8).transpose(1, 2)
    with pytest.raises(MemoryConversionError, match="non-contiguous"):
        convert_memory(t, "torch", target)
    out = convert_memory(t, "torch", target, allow_cpu_roundtrip=True)
    np.testing.assert_array_equal(mem.values_of(out, target), t.numpy())


@pytest.mark.parametrize("target", [M.JAX, M.TENSORFLOW], ids=str)
def test_unaligned_torch_is_copied_for_jax_and_tensorflow(mem, target) -> None:
    torch = mem.need(M.TORCH)
    mem.need(target)
    raw = aligned_empty(64 + 4 * 16, np.uint8)
    t = torch.from_numpy(raw[16 : 16 + 64].view(np.float32).reshape(1, 4, 4))
    assert t.data_ptr() % 64 == 16
    with pytest.raises(MemoryConversionError, match="unaligned"):
        convert_memory(t, "torch", target, zero_copy=True)
    with record_conversions() as rec:
        out = convert_memory(t, "torch", target)
    assert mem.host_pointer(out, target) % 64 == 0
    assert rec.routes() == ["host_copy"]


def test_jax_to_numpy_is_a_read_only_view_of_fresh_arrays(mem) -> None:
    jax = mem.need(M.JAX)
    for _ in range(3):
        x = jax.numpy.arange(60.0, dtype=jax.numpy.float32).reshape(3, 4, 5) * 2
        out = convert_memory(x, "jax", "numpy")
        assert out.ctypes.data == x.unsafe_buffer_pointer()
        assert not out.flags.writeable
        np.testing.assert_array_equal(out, np.arange(60.0, dtype=np.float32).reshape(3, 4, 5) * 2)


@pytest.mark.parametrize("source", [M.NUMPY, M.TORCH, M.TENSORFLOW], ids=str)
def test_empty_arrays_to_jax(mem, source) -> None:
    mem.need(M.JAX)
    src = mem.make(source, np.zeros((0, 4, 5), np.float32))
    out = convert_memory(src, source, "jax")
    assert out.shape == (0, 4, 5)


@pytest.mark.parametrize("source", [M.NUMPY, M.TORCH, M.TENSORFLOW], ids=str)
@pytest.mark.parametrize("dtype", ["float64", "int64", "complex128"])
def test_wide_types_to_jax_without_x64_raise(mem, source, dtype) -> None:
    jax = mem.need(M.JAX)
    if jax.config.read("jax_enable_x64"):
        pytest.skip("jax_enable_x64 is on")
    src = mem.make(source, np.ones((2, 8, 8), dtype))
    with pytest.raises(DtypeError, match=dtype):
        convert_memory(src, source, "jax")


@pytest.mark.parametrize("target", [M.JAX, M.TENSORFLOW], ids=str)
def test_negative_stride_on_length_one_axis_is_shared_by_jax_and_tensorflow(mem, target) -> None:
    mem.need(target)
    base = aligned_empty((1, 4, 5), np.float32)
    base[...] = np.arange(20, dtype=np.float32).reshape(1, 4, 5)
    view = base[::-1]  # C-contiguous: the negative stride sits on an axis of length 1
    out = convert_memory(view, "numpy", target)
    assert mem.host_pointer(out, target) == base.ctypes.data
    np.testing.assert_array_equal(mem.values_of(out, target), view)


@pytest.mark.parametrize("source", [M.TORCH, M.JAX, M.TENSORFLOW], ids=str)
def test_to_numpy_and_to_memory_type_share_like_convert_memory(mem, stack, source) -> None:
    src = mem.make(source, stack)
    for _ in range(2):  # the second call runs on the cached kind and route
        out = to_numpy(src)
        assert out.ctypes.data == mem.host_pointer(src, source)
        np.testing.assert_array_equal(out, stack)
        # jax and tensorflow views are read-only: only torch takes them back without a copy.
        back = to_memory_type(out, source, allow_cpu_roundtrip=source is not M.TORCH)
        if source is M.TORCH:
            assert mem.host_pointer(back, source) == out.ctypes.data
        np.testing.assert_array_equal(mem.values_of(back, source), stack)


def test_to_numpy_and_to_memory_type_still_refuse_subclasses_and_non_arrays() -> None:
    masked = np.ma.masked_array(np.zeros((2, 3), np.float32))
    for fn in (to_numpy, lambda x: to_memory_type(x, "numpy")):
        with pytest.raises(MemoryTypeError, match="MaskedArray"):
            fn(masked)
        with pytest.raises(MemoryTypeError, match="list"):
            fn([1, 2, 3])


def test_to_numpy_detaches_a_tensor_requiring_grad(mem) -> None:
    torch = mem.need(M.TORCH)
    t = torch.arange(6.0).reshape(1, 2, 3).requires_grad_(True)
    out = to_numpy(t)
    assert out.ctypes.data == t.data_ptr()
    np.testing.assert_array_equal(out, t.detach().numpy())


@pytest.mark.parametrize("target", [M.NUMPY, M.TENSORFLOW], ids=str)
def test_torch_lazy_bit_is_a_recorded_copy_that_needs_permission(mem, target) -> None:
    torch = mem.need(M.TORCH)
    mem.need(target)
    z = torch.tensor([[1 + 2j, 3 - 4j]], dtype=torch.complex64).conj()
    with pytest.raises(MemoryConversionError, match="lazy conjugate"):
        convert_memory(z, "torch", target)
    with record_conversions() as rec:
        convert_memory(z, "torch", target, allow_cpu_roundtrip=True)
    assert [e.route for e in rec.events] == ["host_copy"]
    assert rec.bytes_copied >= z.numel() * z.element_size()
