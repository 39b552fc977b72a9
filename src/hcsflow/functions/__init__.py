"""The built-in function library, addressable by name from ``FunctionStep(func="...")``.

Every function takes and returns a ``[Z, Y, X]`` stack.  numpy implementations
(scipy.ndimage / scikit-image) always exist; torch, pyclesperanto and CuPy
implementations are registered for the operations those frameworks provide and are
imported only when a run selects them.  Every image function of scipy.ndimage,
scikit-image and pyclesperanto is addressable by name too (``"skimage.filters.sato"``,
``"cle.top_hat_box"``), through :mod:`hcsflow.functions._catalog`, built on first use.
See ``docs/functions.md`` for each function's behaviour.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from hcsflow.functions import _numpy
from hcsflow.functions._analysis import (
    count_cells,
    detect_spots,
    measure_cells,
    measure_objects,
    watershed_seeded,
)
from hcsflow.functions._hcs import (
    IlluminationProfile,
    aggregate_wells,
    correct_illumination,
    estimate_illumination,
    estimate_plate_illumination,
    min_projection,
    rolling_ball,
    std_projection,
    sum_projection,
    threshold_adaptive,
    threshold_local,
    top_hat,
    watershed_distance,
)
from hcsflow.functions._numpy import (
    astype,
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
from hcsflow.functions._segment import estimate_diameter, segment_nuclei

__all__ = [
    "FunctionRegistry",
    "IlluminationProfile",
    "KNOWN_MEMORY_TYPES",
    "LazyImplementation",
    "Resolution",
    "aggregate_wells",
    "astype",
    "binary_closing",
    "binary_opening",
    "correct_illumination",
    "count_cells",
    "detect_spots",
    "disk",
    "estimate_diameter",
    "estimate_illumination",
    "estimate_plate_illumination",
    "fill_holes",
    "framework_available",
    "function_registry",
    "gaussian_filter",
    "label",
    "list_functions",
    "max_projection",
    "mean_projection",
    "measure_cells",
    "measure_objects",
    "median_filter",
    "min_projection",
    "normalize_percentile",
    "register_function",
    "remove_small_objects",
    "rolling_ball",
    "segment_nuclei",
    "std_projection",
    "subtract_background",
    "sum_projection",
    "threshold_adaptive",
    "threshold_local",
    "threshold_otsu",
    "top_hat",
    "watershed_distance",
    "watershed_seeded",
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
    "segment_nuclei": segment_nuclei,
    "astype": astype,
    "correct_illumination": correct_illumination,
    "rolling_ball": rolling_ball,
    "top_hat": top_hat,
    "sum_projection": sum_projection,
    "std_projection": std_projection,
    "min_projection": min_projection,
    "threshold_local": threshold_local,
    "threshold_adaptive": threshold_adaptive,
    "watershed_distance": watershed_distance,
    "watershed_seeded": watershed_seeded,
    "measure_cells": measure_cells,
    "detect_spots": detect_spots,
}

_ESSENTIALS = (
    "correct_illumination",
    "top_hat",
    "sum_projection",
    "std_projection",
    "min_projection",
    "threshold_local",
)

_LAZY_FUNCTIONS: dict[str, tuple[str, ...]] = {
    "torch": (
        "gaussian_filter",
        "threshold_otsu",
        "binary_opening",
        "binary_closing",
        "max_projection",
        "mean_projection",
        "normalize_percentile",
        *_ESSENTIALS,
    ),
    "pyclesperanto": (
        "gaussian_filter",
        "median_filter",
        "max_projection",
        "mean_projection",
        *_ESSENTIALS,
    ),
    "cupy": (
        "gaussian_filter",
        "median_filter",
        "subtract_background",
        "normalize_percentile",
        "threshold_otsu",
        "binary_opening",
        "binary_closing",
        "fill_holes",
        "label",
        "max_projection",
        "mean_projection",
        *_ESSENTIALS,
    ),
}
_LAZY_MODULES = {
    "torch": "hcsflow.functions._torch",
    "pyclesperanto": "hcsflow.functions._cle",
    "cupy": "hcsflow.functions._cupy",
}


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


def list_functions(search: str | None = None) -> list[dict[str, Any]]:
    """Every function a step can name: built-ins first, then the library functions.

    Each item has ``name``, ``memory_types``, ``signature``, ``summary`` and ``source``
    (``"hcsflow"`` or the library module).  ``search`` keeps the items whose name or
    summary contains it (case-insensitive).  Builds the library index (imports
    scikit-image, scipy.ndimage and pyclesperanto where installed).
    """
    import inspect

    from hcsflow.functions import _catalog

    def plain(sig: inspect.Signature) -> str:
        # parameter names and defaults; annotations are noise in a listing
        params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
        return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))

    def describe(func: Callable[..., Any]) -> tuple[str, str]:
        target = func.load() if isinstance(func, LazyImplementation) else func
        try:
            sig = plain(inspect.signature(target))
        except (TypeError, ValueError):
            sig = "(...)"
        doc = (inspect.getdoc(target) or "").strip().split("\n\n")[0].replace("\n", " ")
        return sig, doc

    items: list[dict[str, Any]] = []
    for name in function_registry.names():
        impls = function_registry.implementations(name)
        sig, doc = describe(impls.get("numpy") or next(iter(impls.values())))
        items.append(
            {
                "name": name,
                "memory_types": sorted(impls),
                "signature": sig,
                "summary": doc,
                "source": "hcsflow",
            }
        )
    for entry in _catalog.catalog():
        fn = entry.function()
        sig, doc = plain(fn.__signature__), (fn.__doc__ or "").split("\n\n")[0]
        items.append(
            {
                "name": entry.name,
                "memory_types": [entry.memory_type],
                "signature": sig,
                "summary": doc,
                "source": entry.library.module,
            }
        )
    if search:
        word = search.lower()
        items = [i for i in items if word in i["name"].lower() or word in i["summary"].lower()]
    return items
