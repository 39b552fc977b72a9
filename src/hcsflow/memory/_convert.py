"""Conversion between memory types: routes tried in order, zero-copy wherever memory can be shared.

Routes, in order:

1. ``noop``: already the target type on the target device.
2. ``dlpack``: the target imports the source's memory through DLPack (host or same GPU).
3. ``cuda_array_interface``: the same on a GPU, for producers without usable DLPack.
4. ``transfer``: the one host/device move the request needs (numpy to cupy, torch CUDA to
   numpy, anything to/from pyclesperanto's OpenCL device, GPU to another GPU).
5. ``host_copy`` / ``device_copy``: a copy taken because the memory *could* have been shared
   but cannot be (strides, read-only buffer, CUDA to OpenCL).  Only with
   ``allow_cpu_roundtrip=True``; otherwise :class:`~hcsflow.errors.MemoryConversionError`.

Two host copies are not the caller's doing and are always made (and recorded): a buffer
that jax or tensorflow cannot take because numpy's allocator placed it off a 64-byte
boundary is copied into an aligned one, and a copy jax makes on import is kept.  Whether
a conversion succeeds therefore never depends on where an allocator put the data.
``zero_copy=True`` asks for the opposite: every route that is not a share (including
those two copies and any transfer) raises, every time.
"""

from __future__ import annotations

import time
from typing import Any, NoReturn

import numpy as np

from hcsflow.errors import (
    DeviceError,
    DtypeError,
    MemoryConversionError,
    MemoryTypeError,
    ShapeError,
)
from hcsflow.memory._align import ALIGNMENT, aligned_empty, ensure_aligned
from hcsflow.memory._detect import detect_memory_type
from hcsflow.memory._devices import HOST, Location, validate_gpu_id
from hcsflow.memory._dtype import check_cle_dtype, numpy_dtype
from hcsflow.memory._fast import PAIRS, ROUTES, learn, lookup, plain_kind
from hcsflow.memory._recorder import _ACTIVE, active, emit
from hcsflow.memory._types import MemoryType, import_framework, parse_memory_type

__all__ = ["convert_memory", "to_memory_type", "to_numpy", "location_of", "host_view"]

M = MemoryType


class _Refused(Exception):
    """Internal: memory cannot be shared; ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- where data lives


def location_of(x: Any, memory_type: MemoryType) -> Location:
    """The :class:`Location` of array ``x`` of ``memory_type``."""
    if memory_type is M.NUMPY:
        return HOST
    if memory_type is M.TORCH:
        kind = x.device.type
        if kind == "cpu":
            return HOST
        if kind == "cuda":
            return Location("cuda", x.device.index or 0)
        raise DeviceError(f"torch tensors on device {x.device} are not supported (cpu, cuda)")
    if memory_type is M.CUPY:
        return Location("cuda", int(x.device.id))
    if memory_type is M.JAX:
        devices = list(x.devices())
        if len(devices) != 1:
            raise DeviceError(f"jax array is sharded over {len(devices)} devices; gather it first")
        dev = devices[0]
        return HOST if dev.platform == "cpu" else Location("cuda", int(dev.local_hardware_id))
    if memory_type is M.TENSORFLOW:
        name = x.device.rsplit("device:", 1)[-1]
        kind, _, index = name.partition(":")
        return HOST if kind.upper() == "CPU" else Location("cuda", int(index or 0))
    dev_type, dev_id = x.__dlpack_device__()
    return Location("cuda", int(dev_id)) if int(dev_type) == 2 else Location("opencl", None)


def _target_location(target: MemoryType, gpu_id: int | None, source: Location) -> Location:
    if target is M.NUMPY:
        return HOST
    if target is M.PYCLESPERANTO:
        cle = import_framework(target)
        kind = "cuda" if cle.get_backend_name() == "cuda" else "opencl"
        if kind == "cuda":
            if gpu_id is not None:
                return Location("cuda", gpu_id)
            return source if source.kind == "cuda" else Location("cuda", 0)
        return Location("opencl", gpu_id)
    if gpu_id is not None:
        return Location("cuda", gpu_id)
    if source.kind == "cuda":
        return source
    if target is M.CUPY:
        cp = import_framework(target)
        validate_gpu_id(target, 0)
        return Location("cuda", int(cp.cuda.Device().id))
    return HOST


def _same_place(a: Location, b: Location) -> bool:
    if a.kind != b.kind:
        return False
    # An OpenCL target without an index means "the current pyclesperanto device".
    return a.ordinal == b.ordinal or (a.kind == "opencl" and b.ordinal is None)


# --------------------------------------------------------------------------- host views


_LAZY_DETAIL = "materialised a lazy conjugate/negative bit"


def _has_lazy_bits(t: Any) -> bool:
    """Whether a torch tensor carries a lazy conjugate or negative bit."""
    return bool(t.is_conj() or t.is_neg())


def _exportable(x: Any, memory_type: MemoryType) -> Any:
    """The object to hand a DLPack importer (torch: without autograd and lazy bits)."""
    if memory_type is M.TORCH:
        t = x.detach()
        if t.is_conj():
            t = t.resolve_conj()
        if t.is_neg():
            t = t.resolve_neg()
        return t
    return x


def host_view(x: Any, memory_type: MemoryType) -> np.ndarray:
    """A zero-copy numpy view of a host-resident array (read-only for jax and tensorflow)."""
    if memory_type is M.NUMPY:
        return x
    try:
        if memory_type is M.TORCH:
            return _exportable(x, memory_type).numpy()  # shares memory, cheaper than DLPack
        return np.from_dlpack(_exportable(x, memory_type))
    except (BufferError, TypeError, RuntimeError, ValueError) as exc:
        raise MemoryConversionError(
            memory_type.value, "numpy", "dlpack", f"{type(exc).__name__}: {exc}"
        ) from exc


def _pointer(x: Any, memory_type: MemoryType) -> int | None:
    if memory_type is M.NUMPY:
        return int(x.ctypes.data)
    if memory_type is M.TORCH:
        return int(x.data_ptr())
    if memory_type is M.JAX:
        return int(x.unsafe_buffer_pointer())
    if memory_type is M.CUPY:
        return int(x.data.ptr)
    if memory_type is M.TENSORFLOW and location_of(x, memory_type) == HOST:
        return int(np.from_dlpack(x).ctypes.data)
    return None


def _check_jax_dtype(dtype: np.dtype, source: MemoryType) -> None:
    if dtype.itemsize == 8 and dtype.kind in "iuf" or dtype == np.complex128:
        jax = import_framework(M.JAX)
        if not jax.config.read("jax_enable_x64"):
            raise DtypeError(
                f"jax would silently narrow {dtype.name} (from {source.value}) to 32 bits because "
                "jax_enable_x64 is off; enable it (jax.config.update('jax_enable_x64', True)) "
                "or cast explicitly"
            )


#: Why a buffer is copied rather than shared when only its address is wrong.
UNALIGNED = f"unaligned (data not on a {ALIGNMENT}-byte boundary)"


def _share_blocker(view: np.ndarray, source: MemoryType, target: MemoryType) -> str | None:
    """Why ``target`` cannot share ``view``'s host memory, or ``None`` if it can.

    Properties the caller chose (strides, writability) are checked before the address, so
    an array that is both read-only and unaligned is refused for being read-only every
    time, not only when the allocator happened to align it.
    """
    if any(s < 0 for s in view.strides):
        # torch aborts the whole process on a DLPack tensor with negative strides.
        return "negative strides"
    if target in (M.JAX, M.TENSORFLOW):
        if not view.flags.c_contiguous:
            return "non-contiguous strides"
        if source is M.NUMPY and not view.flags.writeable:
            return "read-only numpy array (DLPack cannot export it to this framework)"
        if view.size and view.ctypes.data % ALIGNMENT:
            # Never hand tensorflow an unaligned capsule: it can abort the process.
            return UNALIGNED
    return None


def _import_host(obj: Any, view: np.ndarray, source: MemoryType, target: MemoryType) -> Any:
    """Import host memory into ``target`` via DLPack (``obj`` or ``view`` exports it)."""
    if target is M.NUMPY:
        return view
    exporter = view if source is M.NUMPY else _exportable(obj, source)
    if target is M.TORCH:
        torch = import_framework(target)
        if source is M.NUMPY and view.flags.writeable:
            return torch.from_numpy(view)  # same sharing as DLPack, a little cheaper
        return torch.from_dlpack(exporter)
    if target is M.JAX:
        jax = import_framework(target)
        return jax.dlpack.from_dlpack(exporter)
    if target is M.TENSORFLOW:
        tf = import_framework(target)
        return tf.experimental.dlpack.from_dlpack(exporter.__dlpack__())
    raise _Refused(f"{target.value} cannot import host memory")


def _host_to_target(
    obj: Any,
    view: np.ndarray,
    source: MemoryType,
    target: MemoryType,
    allow_copy: bool,
    zero_copy: bool = False,
) -> tuple[Any, str, int, str]:
    """Share host memory with a host-resident ``target`` or copy it (see the module doc)."""
    if target is M.JAX:
        _check_jax_dtype(view.dtype, source)
    reason = _share_blocker(view, source, target)
    if reason is None:
        try:
            result = _import_host(obj, view, source, target)
        except (BufferError, TypeError, RuntimeError, ValueError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        else:
            # torch and tensorflow share what they import (tensorflow aborts rather than copy
            # an unaligned buffer, which the checks above exclude); jax may copy silently.
            if (
                target is not M.JAX
                or view.size == 0
                or _pointer(result, target) == int(view.ctypes.data)
            ):
                return result, "dlpack", 0, ""
            if zero_copy:
                raise MemoryConversionError(
                    source.value,
                    target.value,
                    "dlpack",
                    "the framework copied the data instead of sharing it (zero_copy=True)",
                )
            return result, "host_copy", view.nbytes, "the framework copied on import"
    if zero_copy:
        raise MemoryConversionError(
            source.value,
            target.value,
            "dlpack",
            f"{reason}; memory cannot be shared (zero_copy=True)",
        )
    if not allow_copy and reason != UNALIGNED:
        raise MemoryConversionError(
            source.value,
            target.value,
            "dlpack",
            f"{reason}; memory cannot be shared, pass allow_cpu_roundtrip=True to copy",
        )
    fresh = aligned_empty(view.shape, view.dtype)
    np.copyto(fresh, view, casting="no")
    detail = f"{reason}: copied into an aligned buffer" if reason == UNALIGNED else reason
    return _import_host(fresh, fresh, M.NUMPY, target), "host_copy", view.nbytes, detail


# --------------------------------------------------------------------------- devices


def _gpu_dlpack(x: Any, source: MemoryType, target: MemoryType) -> Any:
    exporter = _exportable(x, source)
    if target is M.TORCH:
        return import_framework(target).from_dlpack(exporter)
    if target is M.CUPY:
        return import_framework(target).from_dlpack(exporter)
    if target is M.JAX:
        return import_framework(target).dlpack.from_dlpack(exporter)
    if target is M.TENSORFLOW:
        tf = import_framework(target)
        return tf.experimental.dlpack.from_dlpack(exporter.__dlpack__())
    if target is M.PYCLESPERANTO:
        cle = import_framework(target)
        return cle.Array.from_dlpack(exporter, copy=False)
    raise _Refused(f"{target.value} has no device memory")


def _gpu_cai(x: Any, target: MemoryType, loc: Location) -> Any:
    if not hasattr(x, "__cuda_array_interface__"):
        raise _Refused("source has no __cuda_array_interface__")
    if target is M.CUPY:
        cp = import_framework(target)
        with cp.cuda.Device(loc.ordinal):
            return cp.asarray(x)
    if target is M.TORCH:
        torch = import_framework(target)
        return torch.as_tensor(x, device=f"cuda:{loc.ordinal}")
    raise _Refused(f"{target.value} does not import __cuda_array_interface__")


def _gpu_strides_blocker(x: Any, source: MemoryType, target: MemoryType) -> str | None:
    if source is not M.CUPY:
        return None
    if any(s < 0 for s in x.strides):
        return "negative strides"
    if target in (M.JAX, M.TENSORFLOW, M.PYCLESPERANTO) and not x.flags.c_contiguous:
        return "non-contiguous strides"
    return None


def _upload(view: np.ndarray, target: MemoryType, loc: Location) -> Any:
    """Copy host memory to ``target`` on device ``loc``."""
    if target is M.PYCLESPERANTO:
        return _cle_push(view, loc)
    if target is M.CUPY:
        cp = import_framework(target)
        with cp.cuda.Device(loc.ordinal):
            return cp.asarray(view)
    if target is M.TORCH:
        torch = import_framework(target)
        host = torch.from_dlpack(np.ascontiguousarray(view))
        return host.to(f"cuda:{loc.ordinal}")
    if target is M.JAX:
        jax = import_framework(target)
        _check_jax_dtype(view.dtype, M.NUMPY)
        return jax.device_put(view, jax.devices("gpu")[loc.ordinal])
    tf = import_framework(M.TENSORFLOW)
    with tf.device(f"/GPU:{loc.ordinal}"):
        return tf.identity(tf.convert_to_tensor(view))


def _cle_push(view: np.ndarray, loc: Location) -> Any:
    cle = import_framework(M.PYCLESPERANTO)
    check_cle_dtype(view.dtype)
    if view.size == 0:
        raise ShapeError(f"pyclesperanto cannot hold an empty array (shape {view.shape})")
    if view.dtype == np.bool_:
        # pyclesperanto has no bool: masks travel as uint8 0/1.
        view = view.view(np.uint8)
    if loc.ordinal is not None:
        _cle_select(loc.ordinal)
    return cle.push(np.ascontiguousarray(view))


def _cle_select(index: int) -> None:
    cle = import_framework(M.PYCLESPERANTO)
    names = cle.list_available_devices()
    if cle.get_device().name != names[index]:
        cle.select_device(index)


def _download(x: Any, source: MemoryType, aligned: bool = True) -> np.ndarray:
    """Copy device memory of ``x`` to the host (64-byte aligned unless ``aligned=False``)."""
    if source is M.PYCLESPERANTO:
        host = np.asarray(import_framework(source).pull(x))
        return ensure_aligned(host) if aligned else host
    dtype = numpy_dtype(x, source)
    shape = tuple(int(s) for s in x.shape)
    out = aligned_empty(shape, dtype)
    if source is M.TORCH:
        torch = import_framework(source)
        torch.from_dlpack(out).copy_(x.detach())
    elif source is M.CUPY:
        if x.flags.c_contiguous:
            x.get(out=out)
        else:
            np.copyto(out, x.get())
    elif source is M.JAX:
        np.copyto(out, np.asarray(import_framework(source).device_get(x)))
    else:
        np.copyto(out, x.numpy())
    return out


def _move_between_gpus(x: Any, target: MemoryType, loc: Location) -> Any:
    if target is M.TORCH:
        return x.to(f"cuda:{loc.ordinal}")
    if target is M.CUPY:
        cp = import_framework(target)
        with cp.cuda.Device(loc.ordinal):
            return cp.array(x, copy=True)
    if target is M.JAX:
        jax = import_framework(target)
        return jax.device_put(x, jax.devices("gpu")[loc.ordinal])
    if target is M.TENSORFLOW:
        tf = import_framework(target)
        with tf.device(f"/GPU:{loc.ordinal}"):
            return tf.identity(x)
    raise _Refused(f"{target.value} cannot move between CUDA devices")


def _nbytes(x: Any, memory_type: MemoryType) -> int:
    size = 1
    for s in x.shape:
        size *= int(s)
    return size * numpy_dtype(x, memory_type).itemsize


# --------------------------------------------------------------------------- the conversion


def _no_transfer(source: MemoryType, target: MemoryType, src: Location, tgt: Location) -> NoReturn:
    """``zero_copy=True`` refuses moves between devices: each one is a copy."""
    raise MemoryConversionError(
        source.value,
        target.value,
        "transfer",
        f"{src} -> {tgt} copies the data; zero_copy=True allows only shared memory",
    )


def _convert(
    data: Any,
    source: MemoryType,
    target: MemoryType,
    src_loc: Location,
    tgt_loc: Location,
    allow_copy: bool,
    zero_copy: bool = False,
) -> tuple[Any, str, int, str]:
    if source is target and _same_place(src_loc, tgt_loc):
        return data, "noop", 0, ""
    allow_copy = allow_copy and not zero_copy

    # A torch tensor with a lazy conjugate/negative bit has no memory holding its values:
    # exporting it means materialising them, which is a copy like any other.
    lazy = source is M.TORCH and _has_lazy_bits(data)
    if lazy and not allow_copy:
        raise MemoryConversionError(
            source.value,
            target.value,
            "dlpack",
            "the tensor has a lazy conjugate/negative bit, so its values must be materialised "
            + (
                "(a copy; zero_copy=True)"
                if zero_copy
                else "(a copy); pass allow_cpu_roundtrip=True to copy"
            ),
        )

    # Both on the host: share through DLPack, or copy if allowed.
    if src_loc == HOST and tgt_loc == HOST:
        view = host_view(data, source)
        if lazy:
            if target is M.NUMPY:
                return view, "host_copy", view.nbytes, _LAZY_DETAIL
            result, _, copied, _ = _host_to_target(view, view, M.NUMPY, target, allow_copy)
            return result, "host_copy", view.nbytes + copied, _LAZY_DETAIL
        if target is M.NUMPY:
            return view, "dlpack", 0, ""
        return _host_to_target(data, view, source, target, allow_copy, zero_copy)

    # Same GPU: DLPack, then the CUDA array interface.
    if src_loc.kind == "cuda" and _same_place(src_loc, tgt_loc):
        reason = _gpu_strides_blocker(data, source, target)
        if reason is None:
            failures = []
            try:
                if lazy:
                    moved = _gpu_dlpack(data, source, target)
                    return moved, "device_copy", _nbytes(data, source), _LAZY_DETAIL
                return _gpu_dlpack(data, source, target), "dlpack", 0, ""
            except (_Refused, BufferError, TypeError, RuntimeError, ValueError) as exc:
                failures.append(f"dlpack: {exc}")
            try:
                return _gpu_cai(data, target, tgt_loc), "cuda_array_interface", 0, ""
            except (_Refused, BufferError, TypeError, RuntimeError, ValueError) as exc:
                failures.append(f"cuda_array_interface: {exc}")
            reason = "; ".join(failures)
        if not allow_copy:
            hint = "zero_copy=True" if zero_copy else "pass allow_cpu_roundtrip=True to copy"
            raise MemoryConversionError(source.value, target.value, "dlpack", f"{reason}; {hint}")
        if source is M.CUPY:
            fresh = import_framework(M.CUPY).ascontiguousarray(data)
            return _gpu_dlpack(fresh, M.CUPY, target), "device_copy", _nbytes(data, source), reason
        host = _download(data, source)
        return _upload(host, target, tgt_loc), "host_copy", 2 * host.nbytes, reason

    if zero_copy:
        _no_transfer(source, target, src_loc, tgt_loc)

    # Host to a device: the one upload the request needs.
    if src_loc == HOST:
        view = host_view(data, source)
        return _upload(view, target, tgt_loc), "transfer", view.nbytes, f"host -> {tgt_loc}"

    # A device to the host: one download, then share it on the host.
    if tgt_loc == HOST:
        host = _download(data, source, aligned=target in (M.JAX, M.TENSORFLOW))
        result, route, copied, detail = _host_to_target(host, host, M.NUMPY, target, allow_copy)
        return result, "transfer", host.nbytes + copied, f"{src_loc} -> host"

    # GPU to another GPU: convert in place, then let the target framework copy peer to peer.
    if src_loc.kind == "cuda" and tgt_loc.kind == "cuda" and target is not M.PYCLESPERANTO:
        here, _, _, _ = _convert(data, source, target, src_loc, src_loc, allow_copy)
        moved = _move_between_gpus(here, target, tgt_loc)
        return moved, "transfer", _nbytes(data, source), f"{src_loc} -> {tgt_loc}"

    # CUDA <-> OpenCL (or anything else): only through the host, and only when allowed.
    if not allow_copy:
        raise MemoryConversionError(
            source.value,
            target.value,
            "host_copy",
            f"{src_loc} and {tgt_loc} share no memory protocol; "
            "pass allow_cpu_roundtrip=True to copy through the host",
        )
    host = _download(data, source)
    return (
        _upload(host, target, tgt_loc),
        "host_copy",
        2 * host.nbytes,
        f"{src_loc} -> host -> {tgt_loc}",
    )


def convert_memory(
    data: Any,
    source_type: MemoryType | str,
    target_type: MemoryType | str,
    gpu_id: int | None = None,
    allow_cpu_roundtrip: bool = False,
    *,
    zero_copy: bool = False,
) -> Any:
    """Convert ``data`` from ``source_type`` to ``target_type``, sharing memory where possible.

    ``gpu_id=None`` leaves data where it is: host data stays on the CPU (for cupy, which has no
    CPU, the current CUDA device) and GPU data stays on its GPU; numpy ignores ``gpu_id``.
    A copy that exists only because memory could not be shared (strides, a read-only
    buffer, a device pair without a common protocol) needs ``allow_cpu_roundtrip=True``;
    otherwise :class:`MemoryConversionError` says why.  A host buffer that jax or
    tensorflow cannot take only because of its address is copied into a 64-byte aligned
    buffer (and recorded) without asking.  ``zero_copy=True`` raises
    :class:`MemoryConversionError` for every conversion that is not a share, whatever
    ``allow_cpu_roundtrip`` says.
    """
    if gpu_id is None:
        # Plain CPU pairs: one cached lookup, then the pair's zero-copy route (see _fast.py).
        try:
            fast = ROUTES[type(data), source_type, target_type]
        except KeyError:  # once per new (type, source, target): find and cache its route
            fast = learn(data, source_type, target_type)
        except TypeError:  # an unhashable type name: reported below
            fast = None
        if fast is not None:
            if not _ACTIVE.get():
                result = fast(data)
                if result is not None:
                    return result
            else:
                start = time.perf_counter()
                result = fast(data)
                if result is not None:
                    src, tgt = PAIRS[type(data), source_type, target_type]
                    emit("dlpack", src.value, tgt.value, 0, time.perf_counter() - start)
                    return result
    source = parse_memory_type(source_type, what="source_type")
    target = parse_memory_type(target_type, what="target_type")
    actual = detect_memory_type(data)
    if actual is not source:
        raise MemoryTypeError(f"data is a {actual.value} array but source_type is {source.value!r}")
    import_framework(target)
    if gpu_id is not None:
        validate_gpu_id(target, gpu_id)
    observed = bool(active())
    start = time.perf_counter() if observed else 0.0
    src_loc = location_of(data, source)
    tgt_loc = _target_location(target, gpu_id, src_loc)
    result, route, copied, detail = _convert(
        data, source, target, src_loc, tgt_loc, allow_cpu_roundtrip, zero_copy
    )
    if observed:
        emit(route, source.value, target.value, copied, time.perf_counter() - start, detail)
    return result


def to_memory_type(
    data: Any,
    target: MemoryType | str,
    gpu_id: int | None = None,
    allow_cpu_roundtrip: bool = False,
    *,
    zero_copy: bool = False,
) -> Any:
    """:func:`convert_memory` with the source type detected from ``data``."""
    source = plain_kind(data) or detect_memory_type(data)
    return convert_memory(
        data, source, target, gpu_id, allow_cpu_roundtrip=allow_cpu_roundtrip, zero_copy=zero_copy
    )


def to_numpy(x: Any) -> np.ndarray:
    """A numpy array with ``x``'s values on the host, for serialization.

    Host-resident arrays are shared, not copied (jax and tensorflow ones are read-only);
    device arrays are downloaded once.  A torch tensor that requires grad is detached: the
    values are written, the autograd graph is not.
    """
    source = plain_kind(x) or detect_memory_type(x)
    if source is M.NUMPY:
        return x
    if not _ACTIVE.get():
        share = lookup(x, source, M.NUMPY)
        if share is not None:
            shared = share(x)
            if shared is not None:
                return shared
    start = time.perf_counter()
    loc = location_of(x, source)
    if loc == HOST:
        out = host_view(x, source)
        route, copied = "dlpack", 0
    else:
        out = _download(x, source, aligned=False)
        route, copied = "transfer", out.nbytes
    emit(route, source.value, "numpy", copied, time.perf_counter() - start, "to_numpy")
    return out
