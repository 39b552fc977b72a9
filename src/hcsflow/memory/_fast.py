"""Zero-copy fast routes for host-resident pairs, dispatched before the general conversion.

:func:`~hcsflow.memory.convert_memory` on a CPU pair would otherwise parse both type names,
detect the source type, locate both ends and build a numpy view before importing, which is a
fixed 4-15 µs against a framework idiom of 1-5 µs.  Here one dict lookup keyed by
``(type(data), source, target)`` yields a route bound to the frameworks' functions once.  A
route runs only the guards that keep the share safe and honest (negative strides, alignment
and contiguity for jax and tensorflow, read-only arrays, autograd and lazy conjugate/negative
bits, the jax import's silent copy) using integer pointers and flags, then calls the
framework's own zero-copy function.  It returns ``None`` whenever a guard fails or the import
refuses, and the general path then decides (error, copy when allowed, or another route), so a
route does not change what a conversion returns or raises.  One corner is shared where the
general path refuses: a C-contiguous array whose only negative stride is on a length-1 axis,
to jax or tensorflow (that stride never addresses memory; see docs/memory.md).
"""

from __future__ import annotations

import ctypes
import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from hcsflow.memory._align import ALIGNMENT
from hcsflow.memory._types import MemoryType, loaded_framework, parse_memory_type

__all__ = ["ROUTES", "PAIRS", "learn", "lookup", "plain_kind"]

M = MemoryType

#: A route: the converted array, or ``None`` to hand the call to the general path.
Route = Callable[[Any], Any]

# ``(type(data), source, target)`` -> the pair's route, or ``None`` (no fast route).  The type
# is the exact class, so subclasses (masked arrays, matrices, parameters) are decided on their
# own; names are the caller's strings or members, which hash alike.
ROUTES: dict[tuple[Any, Any, Any], Route | None] = {}
#: The same keys -> the two memory types a route converts between (for the recorder).
PAIRS: dict[tuple[Any, Any, Any], tuple[MemoryType, MemoryType]] = {}
_LOCK = threading.Lock()

_FAIL = (BufferError, TypeError, RuntimeError, ValueError)


def lookup(data: Any, source: Any, target: Any) -> Route | None:
    """The fast route for ``data`` from ``source`` to ``target`` (names or members), if any."""
    try:
        return ROUTES[type(data), source, target]
    except KeyError:
        return learn(data, source, target)
    except TypeError:  # an unhashable type name: the general path reports it
        return None


def learn(data: Any, source: Any, target: Any) -> Route | None:
    """Find, cache and return the fast route for a key :data:`ROUTES` does not hold yet."""
    try:
        src = parse_memory_type(source)
        tgt = parse_memory_type(target)
    except TypeError:
        return None  # an unknown name is not cached: the general path raises for it
    if loaded_framework(tgt) is None:
        return None  # not cached: the general path imports the target, then this call learns
    route = None
    if _exact_type(data) is src:
        factory = _FACTORIES.get((src, tgt))
        route = factory() if factory is not None else None
    key = (type(data), source, target)
    with _LOCK:
        PAIRS[key] = (src, tgt)  # before ROUTES: a reader that finds the route finds the pair
        ROUTES[key] = route
    return route


_KINDS: dict[type, MemoryType] = {}


def plain_kind(data: Any) -> MemoryType | None:
    """The memory type of ``data`` if its class is a framework's plain array class, else None.

    Cached per class: a hint that spares :func:`detect_memory_type` for the common classes
    (``None`` means "ask it": subclasses, device-only types and non-arrays).
    """
    cls = type(data)
    try:
        return _KINDS[cls]
    except KeyError:
        kind = _exact_type(data)
        if kind is not None:  # a class keeps its kind; others go to detect_memory_type each time
            _KINDS[cls] = kind
        return kind


def _exact_type(data: Any) -> MemoryType | None:
    """The memory type of ``data`` if its class is a framework's plain host-capable array class."""
    cls = type(data)
    if cls is np.ndarray:
        return M.NUMPY
    torch = sys.modules.get("torch")
    if torch is not None and cls is torch.Tensor:
        return M.TORCH
    jax = sys.modules.get("jax")
    if jax is not None and cls.__name__ == "ArrayImpl" and isinstance(data, jax.Array):
        return M.JAX
    tf = sys.modules.get("tensorflow")
    if tf is not None and cls.__name__ == "EagerTensor" and isinstance(data, tf.Tensor):
        return M.TENSORFLOW
    return None


def _jax_host_only() -> bool:
    """Whether every jax array in this process lives on the one CPU device."""
    jax = sys.modules["jax"]
    return bool(jax.default_backend() == "cpu" and jax.device_count() == 1)


def _jax_import() -> Callable[[Any], Any]:
    import jax.dlpack  # the submodule is not always loaded with jax

    return jax.dlpack.from_dlpack


def _tf_import() -> Callable[[Any], Any]:
    tf = sys.modules["tensorflow"]
    return tf.experimental.dlpack.from_dlpack


def _torch_shareable(t: Any) -> bool:
    """A CPU tensor whose memory holds exactly its values: no autograd, no lazy conj/neg bit."""
    return bool(t.is_cpu and not t.requires_grad and not t.is_neg() and not t.is_conj())


# --------------------------------------------------------------------------- numpy sources


def _numpy_to_torch() -> Route:
    from_numpy = sys.modules["torch"].from_numpy

    def route(a: np.ndarray) -> Any:
        # A read-only array goes the general way: from_numpy would hand out a writable tensor.
        if not a.flags.writeable:
            return None
        try:
            return from_numpy(a)
        except (TypeError, ValueError):
            # torch checks strides itself and refuses negative ones (ValueError, no crash),
            # like a dtype it lacks (TypeError); the general path then says why.
            return None

    return route


# The data address of a writable, C-contiguous, non-empty array (others raise): a quarter of
# the cost of ``a.ctypes.data``, which builds the whole array interface.
_from_buffer: Callable[[Any], Any] = ctypes.c_char.from_buffer
_addressof = ctypes.addressof


def _numpy_to_jax() -> Route:
    from_dlpack = _jax_import()

    def route(a: np.ndarray) -> Any:
        flags = a.flags
        if not (flags.writeable and flags.c_contiguous) or a.itemsize >= 8:
            return None  # 64-bit and complex types: the general path checks jax_enable_x64
        try:
            ptr = _addressof(_from_buffer(a))
            if ptr % ALIGNMENT:
                return None
            out = from_dlpack(a)
        except _FAIL:
            return None
        # jax copies silently what it cannot share: only a shared result is ours to return.
        return out if out.unsafe_buffer_pointer() == ptr else None

    return route


def _numpy_to_tensorflow() -> Route:
    from_dlpack = _tf_import()
    from_buffer, addressof = _from_buffer, _addressof

    def route(a: np.ndarray) -> Any:
        flags = a.flags
        if not (flags.writeable and flags.c_contiguous):
            return None
        try:
            if addressof(from_buffer(a)) % ALIGNMENT:
                return None  # tensorflow can abort the process on an unaligned capsule
            return from_dlpack(a.__dlpack__())
        except _FAIL:
            return None

    return route


# --------------------------------------------------------------------------- torch sources


def _torch_to_numpy() -> Route:
    def route(t: Any) -> Any:
        if not (t.is_cpu and not t.requires_grad):
            return None
        try:
            return t.numpy()  # refuses conj/neg bits and layouts numpy cannot view
        except (TypeError, RuntimeError):
            return None

    return route


def _torch_to_jax() -> Route:
    from_dlpack = _jax_import()

    def route(t: Any) -> Any:
        if not _torch_shareable(t) or not t.is_contiguous() or t.itemsize >= 8:
            return None
        ptr = t.data_ptr()
        if ptr % ALIGNMENT or t.numel() == 0:
            return None
        try:
            out = from_dlpack(t)
        except _FAIL:
            return None
        return out if out.unsafe_buffer_pointer() == ptr else None

    return route


def _torch_to_tensorflow() -> Route:
    from_dlpack = _tf_import()
    # The capsule function, not ``Tensor.__dlpack__``: the same capsule for a tenth of the cost.
    to_dlpack = sys.modules["torch"].utils.dlpack.to_dlpack

    def route(t: Any) -> Any:
        # to_dlpack exports a tensor's memory as is: a lazy conj/neg bit would be lost silently.
        if not _torch_shareable(t) or not t.is_contiguous() or t.data_ptr() % ALIGNMENT:
            return None
        try:
            return from_dlpack(to_dlpack(t))
        except _FAIL:
            return None

    return route


# --------------------------------------------------------------------------- jax sources


def _jax_to_numpy() -> Route | None:
    if not _jax_host_only():
        return None

    def route(x: Any) -> Any:
        try:
            out = np.asarray(x)
        except _FAIL:
            return None
        # Only jax's buffer protocol (a view of the device buffer, never a copy) leaves a
        # memoryview as base; anything else came through ``__array__``, which may copy.
        return out if type(out.base) is memoryview else None

    return route


def _jax_to_torch() -> Route | None:
    if not _jax_host_only():
        return None
    from_dlpack = sys.modules["torch"].from_dlpack

    def route(x: Any) -> Any:
        try:
            return from_dlpack(x)
        except _FAIL:
            return None

    return route


def _jax_to_tensorflow() -> Route | None:
    if not _jax_host_only():
        return None
    from_dlpack = _tf_import()

    def route(x: Any) -> Any:
        try:
            if x.unsafe_buffer_pointer() % ALIGNMENT:
                return None
            return from_dlpack(x.__dlpack__())
        except _FAIL:
            return None

    return route


# --------------------------------------------------------------------------- tensorflow sources


def _tf_on_host(x: Any) -> bool:
    return "device:CPU:" in x.device


def _tensorflow_to_numpy() -> Route:
    def route(x: Any) -> Any:
        if not _tf_on_host(x):
            return None
        try:
            return np.from_dlpack(x)
        except _FAIL:
            return None

    return route


def _tensorflow_to_torch() -> Route:
    from_dlpack = sys.modules["torch"].from_dlpack

    def route(x: Any) -> Any:
        if not _tf_on_host(x):
            return None
        try:
            return from_dlpack(x)
        except _FAIL:
            return None

    return route


def _tensorflow_to_jax() -> Route:
    from_dlpack = _jax_import()

    def route(x: Any) -> Any:
        if not _tf_on_host(x):
            return None
        try:
            view = np.from_dlpack(x)
            ptr = view.ctypes.data
            if ptr % ALIGNMENT or view.size == 0 or view.itemsize >= 8:
                return None
            out = from_dlpack(x)
        except _FAIL:
            return None
        return out if out.unsafe_buffer_pointer() == ptr else None

    return route


_FACTORIES: dict[tuple[MemoryType, MemoryType], Callable[[], Route | None]] = {
    (M.NUMPY, M.TORCH): _numpy_to_torch,
    (M.NUMPY, M.JAX): _numpy_to_jax,
    (M.NUMPY, M.TENSORFLOW): _numpy_to_tensorflow,
    (M.TORCH, M.NUMPY): _torch_to_numpy,
    (M.TORCH, M.JAX): _torch_to_jax,
    (M.TORCH, M.TENSORFLOW): _torch_to_tensorflow,
    (M.JAX, M.NUMPY): _jax_to_numpy,
    (M.JAX, M.TORCH): _jax_to_torch,
    (M.JAX, M.TENSORFLOW): _jax_to_tensorflow,
    (M.TENSORFLOW, M.NUMPY): _tensorflow_to_numpy,
    (M.TENSORFLOW, M.TORCH): _tensorflow_to_torch,
    (M.TENSORFLOW, M.JAX): _tensorflow_to_jax,
}
