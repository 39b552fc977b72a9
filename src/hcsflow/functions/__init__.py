"""The built-in function library, addressable by name from ``FunctionStep(func="...")``.

Every function takes and returns a ``[Z, Y, X]`` stack.  numpy implementations
(scipy.ndimage / scikit-image) always exist; torch and pyclesperanto implementations are
registered for the operations those frameworks provide and are imported only when a
run selects them.  See ``docs/functions.md`` for each function's behaviour.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from hcsflow.functions import _numpy
from hcsflow.functions._analysis import count_cells, measure_objects
from hcsflow.functions._numpy import (
    binary_closing,
    binary_opening,
    disk,
    fill_holes,
    gaussian_filter,
    label,
    max_projection,
    mean_projection,
    median_filter,
    normalize_percentile,
    remove_small_objects,
    subtract_background,
    threshold_otsu,
)
from hcsflow.functions._registry import (
    KNOWN_MEMORY_TYPES,
    FunctionRegistry,
    Resolution,
    framework_available,
    function_registry,
    register_function,
)

__all__ = [
    "FunctionRegistry",
    "KNOWN_MEMORY_TYPES",
    "LazyImplementation",
    "Resolution",
    "binary_closing",
    "binary_opening",
    "count_cells",
    "disk",
    "fill_holes",
    "framework_available",
    "function_registry",
    "gaussian_filter",
    "label",
    "max_projection",
    "mean_projection",
    "measure_objects",
    "median_filter",
    "normalize_percentile",
    "register_function",
    "remove_small_objects",
    "subtract_background",
    "threshold_otsu",
]


class LazyImplementation:
    """A registered implementation whose module is imported on first call.

    Keeps ``import hcsflow.functions`` free of torch and pyclesperanto; pickles by
    module and attribute name, so it travels to worker processes.
    """

    def __init__(self, module: str, attr: str, memory_type: str):
        self.module = module
        self.attr = attr
        self.input_memory_type = memory_type
        self.output_memory_type = memory_type
        self.__name__ = attr
        self.__qualname__ = attr
        self.__doc__ = f"{memory_type} implementation of {attr} (module {module})."

    def load(self) -> Callable[..., Any]:
        """Import and return the real function."""
        func: Callable[..., Any] = getattr(importlib.import_module(self.module), self.attr)
        return func

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.load()(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        return (LazyImplementation, (self.module, self.attr, self.input_memory_type))

    def __repr__(self) -> str:
        return f"<{self.input_memory_type} implementation {self.module}.{self.attr}>"


_NUMPY_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "gaussian_filter": gaussian_filter,
    "median_filter": median_filter,
    "subtract_background": subtract_background,
    "normalize_percentile": normalize_percentile,
    "threshold_otsu": threshold_otsu,
    "binary_opening": binary_opening,
    "binary_closing": binary_closing,
    "fill_holes": fill_holes,
    "remove_small_objects": remove_small_objects,
    "label": label,
    "max_projection": max_projection,
    "mean_projection": mean_projection,
    "count_cells": count_cells,
    "measure_objects": measure_objects,
}

_LAZY_FUNCTIONS: dict[str, tuple[str, ...]] = {
    "torch": (
        "gaussian_filter",
        "threshold_otsu",
        "binary_opening",
        "binary_closing",
        "max_projection",
        "mean_projection",
        "normalize_percentile",
    ),
    "pyclesperanto": ("gaussian_filter", "median_filter", "max_projection", "mean_projection"),
}
_LAZY_MODULES = {"torch": "hcsflow.functions._torch", "pyclesperanto": "hcsflow.functions._cle"}


def _register_builtins() -> None:
    for name, fn in _NUMPY_FUNCTIONS.items():
        function_registry.register(name, "numpy", fn)
    for mtype, names in _LAZY_FUNCTIONS.items():
        for name in names:
            function_registry.register(
                name, mtype, LazyImplementation(_LAZY_MODULES[mtype], name, mtype)
            )


_register_builtins()
del _numpy
