"""Detecting an array's memory type by looking in ``sys.modules`` (never importing)."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from hcsflow.errors import MemoryTypeError
from hcsflow.memory._types import MemoryType

__all__ = ["detect_memory_type", "is_supported_array"]


def _framework_class(module_name: str, attribute: str) -> type | None:
    module = sys.modules.get(module_name)
    if module is None:
        return None
    cls = getattr(module, attribute, None)
    return cls if isinstance(cls, type) else None


def _detect(x: Any) -> MemoryType | None:
    if isinstance(x, np.ndarray):
        return MemoryType.NUMPY
    # Only frameworks that are already imported can have made ``x``; a class from a module
    # that is not loaded cannot be an instance, so nothing is imported here.
    root = type(x).__module__.partition(".")[0]
    if root == "torch":
        cls = _framework_class("torch", "Tensor")
        return MemoryType.TORCH if cls is not None and isinstance(x, cls) else None
    if root == "cupy":
        cls = _framework_class("cupy", "ndarray")
        return MemoryType.CUPY if cls is not None and isinstance(x, cls) else None
    if root in ("jax", "jaxlib"):
        cls = _framework_class("jax", "Array")
        return MemoryType.JAX if cls is not None and isinstance(x, cls) else None
    if root in ("tensorflow", "keras"):
        cls = _framework_class("tensorflow", "Tensor")
        return MemoryType.TENSORFLOW if cls is not None and isinstance(x, cls) else None
    if root.startswith("pyclesperanto"):
        cls = _framework_class("pyclesperanto", "Array")
        return MemoryType.PYCLESPERANTO if cls is not None and isinstance(x, cls) else None
    return None


def detect_memory_type(x: Any) -> MemoryType:
    """Return the :class:`MemoryType` of array ``x``.

    Raises :class:`~hcsflow.errors.MemoryTypeError` (a ``TypeError``) naming the type for
    anything that is not an array of a supported library, including numpy masked arrays and
    matrices, whose extra semantics a conversion would silently drop.
    """
    if type(x) is not np.ndarray and isinstance(x, np.ma.MaskedArray | np.matrix):
        raise MemoryTypeError(
            f"unsupported array subclass {type(x).__module__}.{type(x).__qualname__}: "
            "fill the mask (np.ma.filled) or call np.asarray first"
        )
    if type(x) is np.ndarray:
        return MemoryType.NUMPY
    found = _detect(x)
    if found is None:
        kinds = ", ".join(m.value for m in MemoryType)
        raise MemoryTypeError(
            f"unsupported array type {type(x).__module__}.{type(x).__qualname__}; "
            f"expected an array of one of: {kinds}"
        )
    return found


def is_supported_array(x: Any) -> bool:
    """Whether ``x`` is an array of a supported memory type (never imports a framework)."""
    if isinstance(x, np.ma.MaskedArray | np.matrix):
        return False
    return _detect(x) is not None
