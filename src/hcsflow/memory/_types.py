"""The closed set of memory types and lazy, guarded access to their frameworks."""

from __future__ import annotations

import importlib
import sys
from enum import StrEnum
from types import ModuleType

from hcsflow.errors import DeviceError, MemoryTypeError

__all__ = ["MemoryType", "parse_memory_type", "import_framework", "loaded_framework"]


class MemoryType(StrEnum):
    """An array library hcsflow can convert between; ``MemoryType("torch")`` works."""

    NUMPY = "numpy"
    CUPY = "cupy"
    TORCH = "torch"
    TENSORFLOW = "tensorflow"
    JAX = "jax"
    PYCLESPERANTO = "pyclesperanto"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def _missing_(cls, value: object) -> MemoryType | None:
        if isinstance(value, str):
            lowered = value.strip().lower()
            for member in cls:
                if member.value == lowered:
                    return member
        return None


# The module whose presence in ``sys.modules`` means the framework is loaded.
_MODULE = {
    MemoryType.NUMPY: "numpy",
    MemoryType.CUPY: "cupy",
    MemoryType.TORCH: "torch",
    MemoryType.TENSORFLOW: "tensorflow",
    MemoryType.JAX: "jax",
    MemoryType.PYCLESPERANTO: "pyclesperanto",
}

_INSTALL_HINT = {
    MemoryType.NUMPY: "pip install numpy",
    MemoryType.CUPY: "pip install 'hcsflow[cupy]' (needs an NVIDIA GPU and CUDA 12)",
    MemoryType.TORCH: "pip install 'hcsflow[torch]'",
    MemoryType.TENSORFLOW: "pip install 'hcsflow[tensorflow]'",
    MemoryType.JAX: "pip install 'hcsflow[jax]'",
    MemoryType.PYCLESPERANTO: "pip install 'hcsflow[pyclesperanto]'",
}


# StrEnum members hash and compare like their values: one lookup serves members and strings.
_BY_VALUE: dict[str, MemoryType] = {m.value: m for m in MemoryType}


def parse_memory_type(value: MemoryType | str, *, what: str = "memory type") -> MemoryType:
    """Return the :class:`MemoryType` for ``value`` or raise :class:`MemoryTypeError`."""
    if isinstance(value, str):
        found = _BY_VALUE.get(value)
        if found is not None:
            return found
    if isinstance(value, str):
        try:
            return MemoryType(value)
        except ValueError:
            pass
    valid = ", ".join(repr(m.value) for m in MemoryType)
    raise MemoryTypeError(f"unknown {what} {value!r}; expected one of {valid}")


def loaded_framework(memory_type: MemoryType) -> ModuleType | None:
    """The framework's module if it is already imported, else ``None`` (never imports)."""
    return sys.modules.get(_MODULE[memory_type])


def import_framework(memory_type: MemoryType) -> ModuleType:
    """Import the framework behind ``memory_type``; a missing one names the install command."""
    name = _MODULE[memory_type]
    module = sys.modules.get(name)
    if module is not None:
        return module
    if (
        memory_type is MemoryType.PYCLESPERANTO
        and "tensorflow" in sys.modules
        and "pyclesperanto" not in sys.modules
    ):
        # Activating pyclesperanto's OpenCL backend after tensorflow has loaded its bundled
        # libraries crashes the process (segmentation fault) with the pocl CPU driver.
        raise ImportError(
            "pyclesperanto must be imported before tensorflow in this process: activating "
            "its OpenCL backend after tensorflow is loaded can crash the interpreter. "
            "Add `import pyclesperanto` before `import tensorflow`."
        )
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise ImportError(
            f"memory type {memory_type.value!r} needs {name}, which is not installed: "
            f"{_INSTALL_HINT[memory_type]}"
        ) from exc
    if memory_type is MemoryType.PYCLESPERANTO and not hasattr(module, "push"):
        # pyclesperanto imports without a usable backend but then lacks its array functions.
        raise DeviceError(
            "pyclesperanto found no usable OpenCL or CUDA device; install an OpenCL driver "
            "(on Debian/Ubuntu: apt-get install pocl-opencl-icd, or `make sysdeps`)"
        )
    return module
