"""Conversion matrix pair by pair, proving shared memory where zero-copy is claimed."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from hcsflow.errors import (
    DeviceError,
    DtypeError,
    MemoryConversionError,
    MemoryTypeError,
    ShapeError,
)
from hcsflow.memory import (
    MemoryType,
    aligned_empty,
    convert_memory,
    detect_memory_type,
    record_conversions,
    to_memory_type,
    to_numpy,
)

M = MemoryType
CPU_TYPES = [M.NUMPY, M.TORCH, M.JAX, M.TENSORFLOW, M.PYCLESPERANTO]
SHARING = {M.NUMPY, M.TORCH, M.JAX, M.TENSORFLOW}
PAIRS = [(s, t) for s in CPU_TYPES for t in CPU_TYPES]


@pytest.mark.parametrize(("source", "target"), PAIRS, ids=lambda m: str(m))
def test_pair(mem, stack: np.ndarray, source: MemoryType, target: MemoryType) -> None:
    mem.need(target)
    src = mem.make(source, stack)
    with record_conversions() as rec:
        out = convert_memory(src, source, target)
    assert detect_memory_type(out) is target
    got = mem.values_of(out, target)
    assert got.dtype == np.float32
    assert got.shape == (3, 4, 5)
    np.testing.assert_array_equal(got, stack)
    (event,) = rec.events
    assert (event.source, event.target) == (source.value, target.value)
    if source is target:
        assert out is src
        assert event.route == "noop"
    elif source in SHARING and target in SHARING:
        assert event.route == "dlpack"
        assert event.bytes_copied == 0
        assert mem.host_pointer(out, target) == mem.host_pointer(src, source)
    else:
        assert event.route == "transfer"
        assert event.bytes_copied == stack.nbytes
    assert rec.bytes_copied == event.bytes_copied


@pytest.mark.parametrize("target", [M.TORCH, M.JAX, M.TENSORFLOW], ids=str)
def test_numpy_shares_memory_both_ways(mem, stack: np.ndarray, target: MemoryType) -> None:
    mem.need(target)
    out = convert_memory(stack, "numpy", target)
    back = convert_memory(out, target, "numpy")
    assert np.shares_memory(back, stack)
    # Writing through numpy is visible in the target: it is the same memory.
    stack[0, 0, 0] = 1234.5
    assert mem.values_of(out, target)[0, 0, 0] == 1234.5


@pytest.mark.parametrize("source", [M.JAX, M.TENSORFLOW], ids=str)
def test_jax_and_tensorflow_exports_are_read_only(mem, stack, source) -> None:
    arr = convert_memory(mem.make(source, stack), source, "numpy")
    assert not arr.flags.writeable
    with pytest.raises(ValueError):
        arr[0, 0, 0] = 1


def _unaligned(values: np.ndarray) -> np.ndarray:
    raw = aligned_empty(values.nbytes + 64, np.uint8)
    out = raw[16 : 16 + values.nbytes].view(values.dtype).reshape(values.shape)
    out[...] = values
    return out


@pytest.mark.parametrize("target", [M.JAX, M.TENSORFLOW], ids=str)
def test_unaligned_buffer_is_copied_into_an_aligned_one_and_recorded(mem, stack, target) -> None:
    mem.need(target)
    unaligned = _unaligned(stack)
    assert unaligned.ctypes.data % 64 == 16
    with record_conversions() as rec:
        out = convert_memory(unaligned, "numpy", target)
    np.testing.assert_array_equal(mem.values_of(out, target), stack)
    assert mem.host_pointer(out, target) != unaligned.ctypes.data
    assert mem.host_pointer(out, target) % 64 == 0
    assert rec.routes() == ["host_copy"]  # a copy on the host, not a device round trip
    assert rec.bytes_copied == stack.nbytes
    assert "unaligned" in rec.events[0].detail and "aligned buffer" in rec.events[0].detail


@pytest.mark.parametrize("target", [M.JAX, M.TENSORFLOW], ids=str)
def test_zero_copy_refuses_an_unaligned_buffer(mem, stack, target) -> None:
    mem.need(target)
    unaligned = _unaligned(stack)
    for allow in (False, True):  # zero_copy wins over allow_cpu_roundtrip
        with pytest.raises(MemoryConversionError) as info:
            convert_memory(unaligned, "numpy", target, allow_cpu_roundtrip=allow, zero_copy=True)
        err = info.value
        assert (err.source_type, err.target_type, err.method) == ("numpy", target.value, "dlpack")
        assert "unaligned" in err.reason and "zero_copy=True" in err.reason


@pytest.mark.parametrize("target", [M.JAX, M.TENSORFLOW], ids=str)
def test_whether_a_conversion_succeeds_does_not_depend_on_the_allocator(mem, target) -> None:
    """Every 16-byte offset of the same values behaves the same, over many repeats."""
    mem.need(target)
    values = np.arange(3 * 17 * 19, dtype=np.float32).reshape(3, 17, 19)
    routes = {}
    for repeat in range(25):
        for offset in (0, 4, 8, 16, 32, 48):  # 0 is aligned; float32 allows 4-byte steps
            raw = aligned_empty(values.nbytes + 64, np.uint8)
            arr = raw[offset : offset + values.nbytes].view(np.float32).reshape(values.shape)
            arr[...] = values
            with record_conversions() as rec:
                out = to_memory_type(arr, target)
            np.testing.assert_array_equal(mem.values_of(out, target), values)
            shared = mem.host_pointer(out, target) == arr.ctypes.data
            assert shared == (offset == 0), (repeat, offset)
            routes.setdefault(offset, set()).add(tuple(rec.routes()))
            # strict zero-copy: refused every time for an unaligned buffer, never otherwise
            if offset:
                with pytest.raises(MemoryConversionError, match="unaligned"):
                    to_memory_type(arr, target, zero_copy=True)
            else:
                to_memory_type(arr, target, zero_copy=True)
    assert routes[0] == {("dlpack",)}
    assert all(routes[o] == {("host_copy",)} for o in (4, 8, 16, 32, 48))


@pytest.mark.parametrize("target", [M.JAX, M.TENSORFLOW], ids=str)
def test_plain_numpy_allocations_always_convert(mem, target) -> None:
    """What numpy's allocator returns (aligned or not) converts every time."""
    mem.need(target)
    for n in range(40):
        arr = np.zeros((2, 3 + n % 7, 5), np.float32) + n  # sizes vary: so do the addresses
        out = to_memory_type(arr, target)
        np.testing.assert_array_equal(mem.values_of(out, target), arr)


@pytest.mark.parametrize("target", [M.JAX, M.TENSORFLOW], ids=str)
def test_read_only_unaligned_buffer_is_refused_for_being_read_only(mem, stack, target) -> None:
    mem.need(target)
    for offset in (0, 16):
        raw = aligned_empty(stack.nbytes + 64, np.uint8)
        arr = raw[offset : offset + stack.nbytes].view(stack.dtype).reshape(stack.shape)
        arr[...] = stack
        arr.flags.writeable = False
        with pytest.raises(MemoryConversionError, match="read-only"):
            convert_memory(arr, "numpy", target)
        out = convert_memory(arr, "numpy", target, allow_cpu_roundtrip=True)
        np.testing.assert_array_equal(mem.values_of(out, target), stack)


@pytest.mark.parametrize("target", [M.TORCH, M.JAX, M.TENSORFLOW, M.PYCLESPERANTO], ids=str)
def test_zero_copy_allows_shares_and_refuses_every_copy(mem, stack, target) -> None:
    mem.need(target)
    src = mem.make(M.NUMPY, stack)
    if target is M.PYCLESPERANTO:  # OpenCL memory is never the host's: a transfer
        with pytest.raises(MemoryConversionError, match="zero_copy=True") as info:
            convert_memory(src, "numpy", target, zero_copy=True)
        assert info.value.method == "transfer"
        return
    out = convert_memory(src, "numpy", target, zero_copy=True)
    assert mem.host_pointer(out, target) == src.ctypes.data
    with pytest.raises(MemoryConversionError, match="zero_copy=True"):
        convert_memory(src[:, :, ::-1], "numpy", target, allow_cpu_roundtrip=True, zero_copy=True)


def test_unaligned_buffer_is_shared_with_torch(mem, stack) -> None:
    mem.need(M.TORCH)
    unaligned = _unaligned(stack)
    out = convert_memory(unaligned, "numpy", "torch")
    assert out.data_ptr() == unaligned.ctypes.data


@pytest.mark.parametrize("target", [M.TORCH, M.JAX, M.TENSORFLOW], ids=str)
def test_negative_strides_are_refused_without_crashing(mem, stack, target) -> None:
    mem.need(target)
    view = stack[:, ::-1, :]
    with pytest.raises(MemoryConversionError, match="negative strides"):
        convert_memory(view, "numpy", target)
    out = convert_memory(view, "numpy", target, allow_cpu_roundtrip=True)
    np.testing.assert_array_equal(mem.values_of(out, target), view)


def test_non_contiguous_view_shared_with_torch_refused_by_jax(mem, stack) -> None:
    torch = mem.need(M.TORCH)
    view = stack[:, :, ::2]
    t = convert_memory(view, "numpy", "torch")
    assert isinstance(t, torch.Tensor)
    assert t.data_ptr() == view.ctypes.data
    np.testing.assert_array_equal(t.numpy(), view)
    mem.need(M.JAX)
    with pytest.raises(MemoryConversionError, match="non-contiguous"):
        convert_memory(view, "numpy", "jax")
    j = convert_memory(view, "numpy", "jax", allow_cpu_roundtrip=True)
    np.testing.assert_array_equal(np.asarray(j), view)


@pytest.mark.parametrize("target", [M.JAX, M.TENSORFLOW], ids=str)
def test_read_only_numpy(mem, stack, target) -> None:
    mem.need(target)
    stack.flags.writeable = False
    with pytest.raises(MemoryConversionError, match="read-only"):
        convert_memory(stack, "numpy", target)
    out = convert_memory(stack, "numpy", target, allow_cpu_roundtrip=True)
    np.testing.assert_array_equal(mem.values_of(out, target), stack)


def test_read_only_numpy_is_shared_with_torch(mem, stack) -> None:
    mem.need(M.TORCH)
    stack.flags.writeable = False
    out = convert_memory(stack, "numpy", "torch")
    assert out.data_ptr() == stack.ctypes.data


def test_tensor_requiring_grad_is_detached(mem) -> None:
    torch = mem.need(M.TORCH)
    t = torch.arange(6.0).reshape(1, 2, 3).requires_grad_(True)
    arr = convert_memory(t, "torch", "numpy")
    assert arr.ctypes.data == t.data_ptr()
    np.testing.assert_array_equal(arr, t.detach().numpy())
    np.testing.assert_array_equal(to_numpy(t), arr)
    same = convert_memory(t, "torch", "torch")
    assert same is t and same.requires_grad


def test_float64_to_jax_without_x64_raises(mem) -> None:
    jax = mem.need(M.JAX)
    if jax.config.read("jax_enable_x64"):
        pytest.skip("jax_enable_x64 is on")
    data = aligned_empty((2, 2), np.float64)
    data[...] = 1.0
    with pytest.raises(DtypeError, match="float64"):
        convert_memory(data, "numpy", "jax")


@pytest.mark.parametrize("dtype", ["float64", "int64", "complex64", "float16"])
def test_pyclesperanto_refuses_dtypes_it_would_narrow(mem, dtype) -> None:
    mem.need(M.PYCLESPERANTO)
    with pytest.raises(DtypeError, match=dtype):
        convert_memory(np.zeros((2, 2), dtype), "numpy", "pyclesperanto")


@pytest.mark.parametrize("target", [M.TORCH, M.JAX, M.TENSORFLOW, M.PYCLESPERANTO], ids=str)
def test_bool_mask(mem, target) -> None:
    mem.need(target)
    mask = aligned_empty((2, 3, 4), bool)
    mask[...] = np.arange(24).reshape(2, 3, 4) % 3 == 0
    out = convert_memory(mask, "numpy", target)
    got = mem.values_of(out, target)
    if target is M.PYCLESPERANTO:
        assert got.dtype == np.uint8  # pyclesperanto has no bool
        np.testing.assert_array_equal(got, mask.astype(np.uint8))
    else:
        assert got.dtype == np.bool_
        np.testing.assert_array_equal(got, mask)
        assert mem.host_pointer(out, target) == mask.ctypes.data


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int32", "float32", "complex64"])
@pytest.mark.parametrize("target", [M.TORCH, M.JAX, M.TENSORFLOW], ids=str)
def test_dtypes_round_trip_zero_copy(mem, target, dtype) -> None:
    mem.need(target)
    data = aligned_empty((2, 3), dtype)
    data[...] = np.arange(6).reshape(2, 3)
    out = convert_memory(data, "numpy", target)
    back = convert_memory(out, target, "numpy")
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, data)
    assert back.ctypes.data == data.ctypes.data


@pytest.mark.parametrize("target", [M.TORCH, M.JAX, M.TENSORFLOW, M.PYCLESPERANTO], ids=str)
def test_empty_array(mem, target) -> None:
    mem.need(target)
    if target is M.PYCLESPERANTO:
        with pytest.raises(ShapeError, match="empty"):
            convert_memory(aligned_empty((0, 4, 4), np.float32), "numpy", target)
        return
    out = convert_memory(aligned_empty((0, 4, 4), np.float32), "numpy", target)
    assert tuple(out.shape) == (0, 4, 4)


def test_source_type_must_match(mem, stack) -> None:
    with pytest.raises(MemoryTypeError, match="source_type is 'torch'"):
        convert_memory(stack, "torch", "numpy")


def test_unknown_memory_type_string(stack) -> None:
    with pytest.raises(MemoryTypeError, match="'pytorch'.*expected one of"):
        convert_memory(stack, "numpy", "pytorch")


@pytest.mark.parametrize("target", [M.TORCH, M.JAX, M.TENSORFLOW, M.PYCLESPERANTO], ids=str)
def test_gpu_id_out_of_range(mem, stack, target) -> None:
    mem.need(target)
    from hcsflow.memory._devices import cuda_device_count

    count = cuda_device_count(target)
    with pytest.raises(DeviceError, match=f"gpu_id {count} requested"):
        convert_memory(stack, "numpy", target, gpu_id=count)


@pytest.mark.parametrize("bad", [-1, "0", 1.5, True])
def test_gpu_id_must_be_a_non_negative_int(mem, stack, bad) -> None:
    mem.need(M.TORCH)
    with pytest.raises(DeviceError, match="non-negative int"):
        convert_memory(stack, "numpy", "torch", gpu_id=bad)


def test_numpy_target_ignores_gpu_id(stack) -> None:
    assert convert_memory(stack, "numpy", "numpy", gpu_id=3) is stack


def test_cupy_without_gpu_is_a_clear_error(mem, stack) -> None:
    if mem.installed(M.CUPY):
        from hcsflow.memory._devices import cuda_device_count

        try:
            if cuda_device_count(M.CUPY) > 0:
                pytest.skip("a GPU is present")
        except DeviceError:
            pass
        with pytest.raises(DeviceError, match="cupy"):
            convert_memory(stack, "numpy", "cupy")
    else:
        with pytest.raises(ImportError, match=r"pip install 'hcsflow\[cupy\]'"):
            convert_memory(stack, "numpy", "cupy")


@pytest.mark.parametrize("source", CPU_TYPES, ids=str)
def test_to_numpy_and_to_memory_type(mem, stack, source) -> None:
    src = mem.make(source, stack)
    arr = to_numpy(src)
    assert isinstance(arr, np.ndarray)
    np.testing.assert_array_equal(arr, stack)
    back = to_memory_type(arr, source, allow_cpu_roundtrip=True)
    assert detect_memory_type(back) is source


def test_recorder_is_private_to_each_thread(mem, stack) -> None:
    mem.need(M.TORCH)
    seen: dict[str, list[str]] = {}
    barrier = threading.Barrier(2)

    def work(name: str, target: str) -> None:
        with record_conversions() as rec:
            barrier.wait()
            for _ in range(3):
                convert_memory(stack, "numpy", target)
            barrier.wait()
        seen[name] = [e.target for e in rec.events]

    threads = [
        threading.Thread(target=work, args=("a", "torch")),
        threading.Thread(target=work, args=("b", "numpy")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"a": ["torch"] * 3, "b": ["numpy"] * 3}


def test_nested_recorders_and_no_recorder(mem, stack) -> None:
    mem.need(M.PYCLESPERANTO)
    convert_memory(stack, "numpy", "numpy")  # nothing recording: no error, nothing kept
    with record_conversions() as outer:
        convert_memory(stack, "numpy", "pyclesperanto")
        with record_conversions() as inner:
            convert_memory(stack, "numpy", "numpy")
    assert outer.routes() == ["transfer", "noop"]
    assert inner.routes() == ["noop"]
    assert outer.bytes_copied == stack.nbytes
    assert all(e.seconds >= 0 for e in outer.events)
