"""Freeing cached device memory of frameworks that are already loaded (never importing one)."""

from __future__ import annotations

import gc
import sys

from hcsflow.memory._types import MemoryType, loaded_framework, parse_memory_type

__all__ = [
    "cleanup_gpu_memory_by_framework",
    "cleanup_all_gpu_frameworks",
    "cleanup_pytorch_gpu",
    "cleanup_cupy_gpu",
    "cleanup_tensorflow_gpu",
    "cleanup_jax_gpu",
    "cleanup_pyclesperanto_gpu",
]

M = MemoryType


def cleanup_pytorch_gpu(device_id: int | None = None) -> bool:
    """Synchronise and empty torch's CUDA cache (all devices when ``device_id`` is None).

    Returns whether torch is loaded; never imports it, and never initialises CUDA.
    """
    torch = loaded_framework(M.TORCH)
    if torch is None:
        return False
    # Only a process that already used CUDA has a cache; do not initialise CUDA to find out.
    if not torch.cuda.is_initialized():
        return True
    devices = range(torch.cuda.device_count()) if device_id is None else [device_id]
    for d in devices:
        with torch.cuda.device(d):
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
    return True


def cleanup_cupy_gpu(device_id: int | None = None) -> bool:
    """Free cupy's device memory pool (one device or all) and its pinned host pool.

    Returns whether cupy is loaded; never imports it.
    """
    cp = loaded_framework(M.CUPY)
    if cp is None:
        return False
    devices = range(cp.cuda.runtime.getDeviceCount()) if device_id is None else [device_id]
    for d in devices:
        with cp.cuda.Device(d):
            cp.cuda.Device(d).synchronize()
            cp.get_default_memory_pool().free_all_blocks()
    cp.get_default_pinned_memory_pool().free_all_blocks()
    return True


def cleanup_jax_gpu(device_id: int | None = None) -> bool:
    """Collect garbage and clear jax's compilation caches (jax has no per-device cache call).

    Returns whether jax is loaded; never imports it.
    """
    jax = loaded_framework(M.JAX)
    if jax is None:
        return False
    # jax frees a buffer when its last array dies; dropping compiled executables and
    # collecting garbage is what can be done from outside.
    gc.collect()
    jax.clear_caches()
    return True


def cleanup_tensorflow_gpu(device_id: int | None = None) -> bool:
    """Clear the keras session (if keras is loaded) and collect garbage.

    Returns whether tensorflow is loaded; never imports it.
    """
    tf = loaded_framework(M.TENSORFLOW)
    if tf is None:
        return False
    keras = sys.modules.get("keras")
    if keras is not None:
        keras.backend.clear_session()
    gc.collect()
    return True


def cleanup_pyclesperanto_gpu(device_id: int | None = None) -> bool:
    """Collect garbage, which releases pyclesperanto's device buffers.

    Returns whether pyclesperanto is loaded; never imports it.
    """
    cle = loaded_framework(M.PYCLESPERANTO)
    if cle is None:
        return False
    # Device buffers are released when their arrays are collected.
    gc.collect()
    return True


_CLEANERS = {
    M.TORCH: cleanup_pytorch_gpu,
    M.CUPY: cleanup_cupy_gpu,
    M.JAX: cleanup_jax_gpu,
    M.TENSORFLOW: cleanup_tensorflow_gpu,
    M.PYCLESPERANTO: cleanup_pyclesperanto_gpu,
}


def cleanup_gpu_memory_by_framework(
    memory_type: MemoryType | str, device_id: int | None = None
) -> bool:
    """Free ``memory_type``'s cached device memory (all devices when ``device_id`` is None).

    Returns whether the framework was loaded and cleaned; numpy and frameworks that are not
    imported are left alone (``False``).
    """
    mt = parse_memory_type(memory_type)
    cleaner = _CLEANERS.get(mt)
    return cleaner(device_id) if cleaner is not None else False


def cleanup_all_gpu_frameworks(device_id: int | None = None) -> dict[str, bool]:
    """Run :func:`cleanup_gpu_memory_by_framework` for every GPU framework; report which ran."""
    return {mt.value: cleaner(device_id) for mt, cleaner in _CLEANERS.items()}
