"""The function registry: one name, one implementation per memory type.

``FunctionStep(func="gaussian_filter")`` is resolved here.  Every built-in function has
a numpy implementation; torch and pyclesperanto implementations exist where the
framework provides the operation.  Which implementation runs is decided by a preference
list (``DeviceConfig.implementation_preference``) and by availability (the framework is
installed), and the decision is returned with its reason so a run can record it.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from hcsflow.errors import ConfigurationError

__all__ = [
    "FunctionRegistry",
    "Resolution",
    "function_registry",
    "register_function",
    "framework_available",
    "KNOWN_MEMORY_TYPES",
]

KNOWN_MEMORY_TYPES: tuple[str, ...] = (
    "numpy",
    "cupy",
    "torch",
    "tensorflow",
    "jax",
    "pyclesperanto",
)

# Module names probed with ``importlib.util.find_spec`` (no import happens).
_FRAMEWORK_MODULES = {
    "numpy": "numpy",
    "cupy": "cupy",
    "torch": "torch",
    "tensorflow": "tensorflow",
    "jax": "jax",
    "pyclesperanto": "pyclesperanto",
}


def framework_available(memory_type: str) -> bool:
    """Whether the framework behind ``memory_type`` is installed (checked without importing it)."""
    module = _FRAMEWORK_MODULES.get(memory_type)
    if module is None:
        return False
    return importlib.util.find_spec(module) is not None


@dataclass(frozen=True)
class Resolution:
    """Which implementation of a registered function was chosen, and why."""

    name: str
    memory_type: str
    func: Callable[..., Any]
    reason: str


class FunctionRegistry:
    """Thread-safe map ``name -> {memory_type: implementation}``."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._entries: dict[str, dict[str, Callable[..., Any]]] = {}

    def register(
        self, name: str, memory_type: str, func: Callable[..., Any], *, replace: bool = False
    ) -> None:
        """Register ``func`` as the ``memory_type`` implementation of ``name``.

        Raises :class:`ConfigurationError` for an unknown memory type or a duplicate
        registration (unless ``replace=True``).
        """
        if memory_type not in KNOWN_MEMORY_TYPES:
            raise ConfigurationError(
                f"cannot register {name!r}: unknown memory type {memory_type!r} "
                f"(known: {', '.join(KNOWN_MEMORY_TYPES)})"
            )
        if not callable(func):
            raise ConfigurationError(f"cannot register {name!r}: {func!r} is not callable")
        with self._lock:
            impls = self._entries.setdefault(name, {})
            if memory_type in impls and not replace:
                raise ConfigurationError(
                    f"function {name!r} already has a {memory_type} implementation"
                )
            impls[memory_type] = func

    def names(self) -> list[str]:
        """Registered function names, sorted."""
        with self._lock:
            return sorted(self._entries)

    def implementations(self, name: str) -> dict[str, Callable[..., Any]]:
        """``{memory_type: function}`` for ``name``.

        An unknown name raises :class:`~hcsflow.errors.UnknownFunctionError` (a
        ``KeyError``) naming close matches.

        Names not registered are looked up among the library functions
        (``skimage.filters.sato``, ``cle.top_hat_box``, unambiguous short names); their
        CuPy twin (cupyx / cuCIM), where installed, is listed under ``"cupy"``.
        """
        with self._lock:
            impls = self._entries.get(name)
            if impls is not None:
                return dict(impls)
        from hcsflow.functions import _catalog

        entry = _catalog.lookup(name, registered=self.names())
        out: dict[str, Callable[..., Any]] = {entry.memory_type: entry.function()}
        twin = _catalog.gpu_twin(entry)
        if twin is not None:
            out[twin.memory_type] = twin.function()
        return out

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def resolve(self, name: str, preference: Sequence[str] = ("numpy",)) -> Resolution:
        """Choose the implementation of ``name`` following ``preference``.

        The first memory type in ``preference`` that has an implementation and whose
        framework is installed wins.  When none of the preferred types qualifies, the
        numpy implementation is used only if ``"numpy"`` is in the list; otherwise
        :class:`ConfigurationError` explains what was tried.
        """
        if name not in self:
            return self._resolve_library(name, preference)
        impls = self.implementations(name)
        skipped: list[str] = []
        for mtype in preference:
            if mtype not in KNOWN_MEMORY_TYPES:
                raise ConfigurationError(
                    f"implementation preference names unknown memory type {mtype!r}"
                )
            if mtype not in impls:
                skipped.append(f"{mtype}: no implementation")
                continue
            if not framework_available(mtype):
                skipped.append(f"{mtype}: framework not installed")
                continue
            reason = "first preference" if not skipped else "; ".join(skipped)
            return Resolution(name, mtype, impls[mtype], reason)
        raise ConfigurationError(
            f"no usable implementation of {name!r} for preference {list(preference)} "
            f"(available: {sorted(impls)}; skipped: {'; '.join(skipped) or 'none'})"
        )

    def _resolve_library(self, name: str, preference: Sequence[str]) -> Resolution:
        """A library function runs on its own memory type, whatever the preference, except
        that a numpy function's CuPy twin (cupyx / cuCIM) is taken when the preference
        lists ``"cupy"`` before ``"numpy"``."""
        from hcsflow.functions import _catalog

        for mtype in preference:
            if mtype not in KNOWN_MEMORY_TYPES:
                raise ConfigurationError(
                    f"implementation preference names unknown memory type {mtype!r}"
                )
        entry = _catalog.lookup(name, registered=self.names())
        order = list(preference)
        if (
            entry.memory_type == "numpy"
            and "cupy" in order
            and ("numpy" not in order or order.index("cupy") < order.index("numpy"))
        ):
            twin = _catalog.gpu_twin(entry)
            if twin is not None:
                return Resolution(name, "cupy", twin.function(), f"{twin.name} (preferred cupy)")
            reason = f"{entry.name} (cupy preferred, but no CuPy twin is installed)"
        else:
            reason = f"{entry.name} (library function)"
        return Resolution(name, entry.memory_type, entry.function(), reason)

    def _unknown_message(self, name: str) -> str:
        from hcsflow.functions import _catalog

        return _catalog.unknown_message(name, self.names())


function_registry = FunctionRegistry()
"""The registry ``FunctionStep(func="name")`` resolves against."""


def register_function(
    name: str, memory_type: str = "numpy", *, replace: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a function under ``name`` for ``memory_type``."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        function_registry.register(name, memory_type, func, replace=replace)
        return func

    return decorate
