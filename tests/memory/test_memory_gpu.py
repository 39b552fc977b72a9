"""CUDA paths: cupy <-> torch <-> jax <-> tensorflow on a GPU, streams, real OOM, devices.

Every test here is marked ``gpu`` and skips cleanly without an NVIDIA GPU; each also skips
when the framework it needs has no CUDA build installed.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from hcsflow.errors import DeviceError, MemoryConversionError, OutOfMemoryRecoveryError
from hcsflow.memory import (
    MemoryType,
    cleanup_gpu_memory_by_framework,
    convert_memory,
    detect_memory_type,
    record_conversions,
    stack_slices,
    to_numpy,
    unstack_slices,
    use_device,
)
from hcsflow.memory import decorators as deco

pytestmark = pytest.mark.gpu
M = MemoryType


def _cupy():
    cp = pytest.importorskip("cupy", reason="cupy is not installed")
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("cupy sees no CUDA device")
    except Exception as exc:  # CUDARuntimeError without a driver
        pytest.skip(f"cupy cannot use CUDA: {exc}")
    return cp


def _torch_cuda():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    if not torch.cuda.is_available():
        pytest.skip("this torch build has no CUDA")
    return torch


def _jax_gpu():
    jax = pytest.importorskip("jax", reason="jax is not installed")
    try:
        jax.devices("gpu")
    except RuntimeError:
        pytest.skip("jax has no GPU backend (jax[cpu] installed)")
    return jax


def _tf_gpu():
    tf = pytest.importorskip("tensorflow", reason="tensorflow is not installed")
    if not tf.config.list_logical_devices("GPU"):
        pytest.skip("tensorflow sees no GPU")
    return tf


def _values() -> np.ndarray:
    return np.arange(2 * 32 * 48, dtype=np.float32).reshape(2, 32, 48)


def test_numpy_to_cupy_is_one_transfer() -> None:
    cp = _cupy()
    with record_conversions() as rec:
        x = convert_memory(_values(), "numpy", "cupy")
    assert isinstance(x, cp.ndarray) and x.device.id == 0
    np.testing.assert_array_equal(x.get(), _values())
    assert rec.routes() == ["transfer"] and rec.bytes_copied == _values().nbytes


def test_cupy_torch_share_device_memory() -> None:
    cp = _cupy()
    torch = _torch_cuda()
    x = cp.asarray(_values())
    with record_conversions() as rec:
        t = convert_memory(x, "cupy", "torch")
        back = convert_memory(t, "torch", "cupy")
    assert t.is_cuda and t.data_ptr() == x.data.ptr
    assert back.data.ptr == x.data.ptr
    assert rec.routes() == ["dlpack", "dlpack"] and rec.bytes_copied == 0
    t.add_(1)  # the same memory: cupy sees torch's in-place write
    torch.cuda.synchronize()
    np.testing.assert_array_equal(x.get(), _values() + 1)


def test_cupy_jax_share_device_memory() -> None:
    cp = _cupy()
    _jax_gpu()
    x = cp.asarray(_values())
    j = convert_memory(x, "cupy", "jax")
    assert j.unsafe_buffer_pointer() == x.data.ptr
    np.testing.assert_array_equal(np.asarray(j), _values())
    back = convert_memory(j, "jax", "cupy")
    assert back.data.ptr == x.data.ptr


def test_torch_tensorflow_on_gpu() -> None:
    torch = _torch_cuda()
    _tf_gpu()
    t = torch.arange(24.0, device="cuda:0").reshape(2, 3, 4)
    tf_t = convert_memory(t, "torch", "tensorflow")
    assert "GPU" in tf_t.device
    np.testing.assert_array_equal(tf_t.numpy(), t.cpu().numpy())


def test_cupy_negative_strides_refused_then_device_copy() -> None:
    cp = _cupy()
    _torch_cuda()
    x = cp.asarray(_values())[:, ::-1]
    with pytest.raises(MemoryConversionError, match="negative strides"):
        convert_memory(x, "cupy", "torch")
    with record_conversions() as rec:
        t = convert_memory(x, "cupy", "torch", allow_cpu_roundtrip=True)
    assert rec.routes() == ["device_copy"]
    np.testing.assert_array_equal(t.cpu().numpy(), x.get())


def test_device_to_host_and_numpy_serialisation() -> None:
    torch = _torch_cuda()
    t = torch.arange(24.0, device="cuda:0", requires_grad=True).reshape(2, 3, 4)
    with record_conversions() as rec:
        arr = convert_memory(t, "torch", "numpy")
    assert rec.routes() == ["transfer"]
    assert arr.ctypes.data % 64 == 0
    np.testing.assert_array_equal(arr, np.arange(24.0).reshape(2, 3, 4))
    np.testing.assert_array_equal(to_numpy(t), arr)


def test_gpu_id_selects_and_validates_the_device() -> None:
    torch = _torch_cuda()
    count = torch.cuda.device_count()
    t = convert_memory(_values(), "numpy", "torch", gpu_id=count - 1)
    assert t.device.index == count - 1
    with pytest.raises(DeviceError, match=f"gpu_id {count} requested"):
        convert_memory(_values(), "numpy", "torch", gpu_id=count)
    cp = _cupy()
    with pytest.raises(DeviceError):
        convert_memory(_values(), "numpy", "cupy", gpu_id=cp.cuda.runtime.getDeviceCount())


def test_stack_and_unstack_on_device() -> None:
    cp = _cupy()
    torch = _torch_cuda()
    planes = [cp.full((8, 8), z, dtype=cp.float32) for z in range(4)]
    with record_conversions() as rec:
        out = stack_slices(planes, "torch", gpu_id=0)
    assert out.is_cuda and tuple(out.shape) == (4, 8, 8)
    assert rec.routes() == ["stack", "dlpack"]
    with record_conversions() as rec:
        host = stack_slices([p.get() for p in planes], "cupy", gpu_id=0)
    assert rec.routes() == ["stack", "transfer"]  # stacked on the host, one upload
    assert isinstance(host, cp.ndarray)
    back = unstack_slices(out, "cupy")
    assert all(isinstance(p, cp.ndarray) for p in back)
    np.testing.assert_array_equal(back[3].get(), np.full((8, 8), 3, np.float32))
    torch.cuda.synchronize()


def test_decorated_torch_runs_on_chosen_gpu_with_thread_streams() -> None:
    torch = _torch_cuda()
    streams = []

    @deco.torch
    def heavy(image_stack):
        streams.append((threading.get_ident(), torch.cuda.current_stream().cuda_stream))
        return (image_stack @ image_stack.transpose(1, 2)).tanh()

    data = np.random.default_rng(0).random((4, 256, 256), dtype=np.float32)
    expected = np.tanh(data @ data.transpose(0, 2, 1))

    def run(_: int):
        with use_device(0):
            out = heavy(data)
        # The stream was synchronised: the result is complete for any other stream/thread.
        return out

    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(run, range(8)))
    for out in outs:
        assert out.is_cuda
        np.testing.assert_allclose(out.cpu().numpy(), expected, rtol=1e-4, atol=1e-4)
    default = torch.cuda.default_stream(0).cuda_stream
    assert all(stream != default for _, stream in streams)
    per_thread = {}
    for ident, stream in streams:
        per_thread.setdefault(ident, set()).add(stream)
    assert all(len(s) == 1 for s in per_thread.values())  # one persistent stream per thread


def test_decorated_cupy_function() -> None:
    cp = _cupy()

    @deco.cupy
    def median(image_stack):
        assert isinstance(image_stack, cp.ndarray)
        return cp.median(image_stack, axis=0, keepdims=True)

    out = median(_values())
    assert isinstance(out, cp.ndarray)
    np.testing.assert_array_equal(out.get(), np.median(_values(), axis=0, keepdims=True))


def test_real_torch_oom_falls_back_to_cpu() -> None:
    torch = _torch_cuda()
    total = torch.cuda.get_device_properties(0).total_memory

    @deco.torch(oom_recovery=True, cpu_fallback=True, oom_slice_fallback=False)
    def greedy(image_stack):
        if image_stack.is_cuda:
            torch.empty(total * 2, dtype=torch.uint8, device=image_stack.device)
        return image_stack + 1

    with use_device(0), record_conversions() as rec:
        out = greedy(_values())
    assert out.device.type == "cpu"
    np.testing.assert_array_equal(out.numpy(), _values() + 1)
    oom = [r for r in rec.routes() if r.startswith("oom:")]
    assert oom == ["oom:free_cache_retry", "oom:cpu_fallback"]


def test_real_cupy_oom_without_fallback_reports() -> None:
    cp = _cupy()
    total = cp.cuda.Device(0).mem_info[1]

    @deco.cupy(oom_recovery=True)
    def greedy(image_stack):
        cp.empty(total * 2, dtype=cp.uint8)
        return image_stack

    with pytest.raises(OutOfMemoryRecoveryError) as info:
        greedy(_values())
    assert isinstance(info.value.__cause__, cp.cuda.memory.OutOfMemoryError)
    assert "CPU fallback" in info.value.attempts[-1]


def test_cleanup_frees_torch_and_cupy_caches() -> None:
    torch = _torch_cuda()
    x = torch.empty(64 * 1024 * 1024, dtype=torch.uint8, device="cuda:0")
    del x
    assert torch.cuda.memory_reserved(0) > 0
    assert cleanup_gpu_memory_by_framework("torch", 0) is True
    assert torch.cuda.memory_reserved(0) == 0
    cp = _cupy()
    y = cp.empty(64 * 1024 * 1024, dtype=cp.uint8)
    del y
    assert cp.get_default_memory_pool().total_bytes() > 0
    assert cleanup_gpu_memory_by_framework("cupy") is True
    assert cp.get_default_memory_pool().total_bytes() == 0


def test_detect_gpu_arrays() -> None:
    cp = _cupy()
    assert detect_memory_type(cp.zeros(3)) is M.CUPY


def test_zero_copy_on_a_gpu_shares_or_refuses() -> None:
    cp = _cupy()
    torch = _torch_cuda()
    x = cp.arange(2 * 8 * 8, dtype=cp.float32).reshape(2, 8, 8)
    t = convert_memory(x, "cupy", "torch", zero_copy=True)  # same GPU: DLPack, shared
    assert t.data_ptr() == x.data.ptr
    with pytest.raises(MemoryConversionError, match="zero_copy=True") as info:
        convert_memory(np.ones((2, 8, 8), np.float32), "numpy", "cupy", zero_copy=True)
    assert info.value.method == "transfer"
    with pytest.raises(MemoryConversionError, match="zero_copy=True"):
        convert_memory(t, "torch", "numpy", zero_copy=True)  # a download is a copy
    assert torch.equal(t.cpu(), torch.from_numpy(cp.asnumpy(x)))


def test_per_framework_cleanup_after_cuda_use() -> None:
    from hcsflow.memory import cleanup_cupy_gpu, cleanup_pytorch_gpu

    cp = _cupy()
    torch = _torch_cuda()
    keep = torch.ones(1 << 20, device="cuda")
    scratch = cp.ones(1 << 20, dtype=cp.float32)
    del scratch
    assert cleanup_cupy_gpu() is True and cleanup_cupy_gpu(device_id=0) is True
    assert cleanup_pytorch_gpu() is True and cleanup_pytorch_gpu(device_id=0) is True
    assert float(keep.sum()) == float(1 << 20)  # live memory is untouched
