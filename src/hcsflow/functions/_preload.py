"""Load now what the built-in functions would load on their first call.

Imported by the fork server of local process workers (``WORKER_PRELOAD``), never by
``import hcsflow``.  scikit-image and imagecodecs load their submodules lazily, on the
first access to one of their functions: importing ``skimage.measure`` loads almost
nothing, and the first ``regionprops_table`` of a worker then imports a dozen modules
(about 50-80 ms in each freshly forked worker, measured on the demo pipeline).  Touching
the functions here loads them once in the fork server, so every worker starts with them.

A library or a function that is missing is left alone: the worker that needs it imports
it (or reports it) itself, as it would without this module.
"""

from __future__ import annotations

import importlib

#: module -> the lazily loaded functions the built-in functions and writers use
LAZY_FUNCTIONS: dict[str, tuple[str, ...]] = {
    "skimage.measure": ("label", "regionprops_table", "regionprops", "find_contours"),
    "skimage.segmentation": ("watershed", "clear_border"),
    "skimage.feature": ("peak_local_max", "blob_log"),
    "skimage.filters": ("threshold_otsu", "threshold_local", "gaussian"),
    "skimage.morphology": ("remove_small_objects", "disk"),
    "skimage.transform": ("integral_image",),
    "imagecodecs": ("zlib_encode", "deflate_encode", "delta_encode"),
    "pandas.io.formats.csvs": (),
}


def load() -> list[str]:
    """Import every module of :data:`LAZY_FUNCTIONS` and touch its functions; returns
    the ``module.function`` names that could not be loaded here."""
    missing = []
    for name, functions in LAZY_FUNCTIONS.items():
        try:
            module = importlib.import_module(name)
        except ImportError:
            missing.append(name)
            continue
        for fn in functions:
            try:
                getattr(module, fn)
            except (ImportError, AttributeError):
                missing.append(f"{name}.{fn}")
    return missing


MISSING = load()
