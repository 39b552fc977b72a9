"""Devices: where an array lives, which device a call should use, and per-thread CUDA streams."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, NamedTuple

from hcsflow.errors import DeviceError
from hcsflow.memory._types import MemoryType, import_framework

__all__ = [
    "Location",
    "HOST",
    "use_device",
    "current_device",
    "validate_gpu_id",
    "cuda_device_count",
    "stream_scope",
]


class Location(NamedTuple):
    """Where an array's memory is: ``kind`` is ``"cpu"``, ``"cuda"`` or ``"opencl"``.

    ``ordinal`` is the device number (``None`` for the host and for the current OpenCL device).
    """

    kind: str
    ordinal: int | None = None

    def __str__(self) -> str:
        return self.kind if self.ordinal is None else f"{self.kind}:{self.ordinal}"


HOST = Location("cpu")

_DEVICE: ContextVar[int | None] = ContextVar("hcsflow_gpu_id", default=None)


@contextmanager
def use_device(gpu_id: int | None) -> Iterator[int | None]:
    """Run decorated functions in this context on GPU ``gpu_id`` (``None``: the CPU).

    This is how a caller (the pipeline) chooses the device for a decorated function: it keeps
    the function's own signature untouched and is private to the current thread or task.
    """
    if gpu_id is not None and (isinstance(gpu_id, bool) or not isinstance(gpu_id, int)):
        raise DeviceError(f"gpu_id must be a non-negative int or None, got {gpu_id!r}")
    if gpu_id is not None and gpu_id < 0:
        raise DeviceError(f"gpu_id must be a non-negative int or None, got {gpu_id!r}")
    token = _DEVICE.set(gpu_id)
    try:
        yield gpu_id
    finally:
        _DEVICE.reset(token)


def current_device() -> int | None:
    """The GPU chosen by the innermost :func:`use_device` of this context (``None``: CPU)."""
    return _DEVICE.get()


def cuda_device_count(memory_type: MemoryType) -> int:
    """How many CUDA (or, for pyclesperanto, OpenCL) devices ``memory_type`` can use."""
    if memory_type is MemoryType.TORCH:
        torch = import_framework(memory_type)
        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    if memory_type is MemoryType.CUPY:
        cp = import_framework(memory_type)
        try:
            return int(cp.cuda.runtime.getDeviceCount())
        except Exception as exc:  # cupy raises CUDARuntimeError without a driver
            raise DeviceError(
                f"cupy cannot use any NVIDIA GPU on this machine ({type(exc).__name__}: {exc}); "
                "cupy arrays exist only on CUDA devices"
            ) from exc
    if memory_type is MemoryType.JAX:
        jax = import_framework(memory_type)
        try:
            return len(jax.devices("gpu"))
        except RuntimeError:
            return 0
    if memory_type is MemoryType.TENSORFLOW:
        tf = import_framework(memory_type)
        return len(tf.config.list_logical_devices("GPU"))
    if memory_type is MemoryType.PYCLESPERANTO:
        cle = import_framework(memory_type)
        return len(cle.list_available_devices())
    return 0


def validate_gpu_id(memory_type: MemoryType, gpu_id: int | None) -> None:
    """Raise :class:`DeviceError` unless ``gpu_id`` names a device ``memory_type`` can use."""
    if gpu_id is None or memory_type is MemoryType.NUMPY:
        return
    if isinstance(gpu_id, bool) or not isinstance(gpu_id, int) or gpu_id < 0:
        raise DeviceError(f"gpu_id must be a non-negative int or None, got {gpu_id!r}")
    count = cuda_device_count(memory_type)
    if gpu_id >= count:
        what = "OpenCL devices" if memory_type is MemoryType.PYCLESPERANTO else "CUDA GPUs"
        raise DeviceError(
            f"gpu_id {gpu_id} requested for {memory_type.value}, but it sees {count} {what} "
            f"(valid: {'none' if count == 0 else f'0..{count - 1}'})"
        )


# --------------------------------------------------------------------------- streams

_streams = threading.local()


def _thread_stream(memory_type: MemoryType, device: int) -> Any:
    cache: dict[tuple[MemoryType, int], Any] | None = getattr(_streams, "cache", None)
    if cache is None:
        cache = {}
        _streams.cache = cache
    key = (memory_type, device)
    stream = cache.get(key)
    if stream is None:
        if memory_type is MemoryType.TORCH:
            torch = import_framework(memory_type)
            stream = torch.cuda.Stream(device=device)
        else:
            cp = import_framework(memory_type)
            with cp.cuda.Device(device):
                stream = cp.cuda.Stream(non_blocking=True)
        cache[key] = stream
    return stream


@contextmanager
def stream_scope(memory_type: MemoryType, device: int | None) -> Iterator[Any]:
    """Run the body on this thread's own CUDA stream for ``device`` (torch and cupy only).

    The stream first waits for work already queued on the device's current stream (the
    input's producer); on exit the host waits for the stream, so the result is complete
    before any other stream or thread can see it.  Elsewhere this is a no-op.
    """
    if device is None or memory_type not in (MemoryType.TORCH, MemoryType.CUPY):
        yield None
        return
    stream = _thread_stream(memory_type, device)
    if memory_type is MemoryType.TORCH:
        torch = import_framework(memory_type)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.device(device), torch.cuda.stream(stream):
            yield stream
        stream.synchronize()
    else:
        cp = import_framework(memory_type)
        with cp.cuda.Device(device):
            producer = cp.cuda.get_current_stream()
            stream.wait_event(producer.record())
            with stream:
                yield stream
            stream.synchronize()
