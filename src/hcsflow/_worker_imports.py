"""The modules every local worker process starts with, and how the fork server loads them.

Nothing here is imported by ``import hcsflow``: the pipeline's executors read
:data:`WORKER_PRELOAD`, and the fork server imports :mod:`hcsflow._forkserver_preload`,
which calls :func:`load`.
"""

from __future__ import annotations

import importlib

__all__ = ["LAZY_FUNCTIONS", "WORKER_PRELOAD", "load"]

# Imported once by the fork server; every worker forked from it starts with them loaded
# instead of importing them again (about a second per spawned worker).
WORKER_PRELOAD: tuple[str, ...] = (
    "numpy",
    "scipy.ndimage",
    "pandas",
    "tifffile",
    "zarr",
    "skimage.measure",
    "skimage.feature",
    "skimage.filters",
    "skimage.morphology",
    "skimage.segmentation",
    "cloudpickle",
    "hcsflow.functions",
    "hcsflow.pipeline._commit",
    "hcsflow.pipeline._zarr_out",
)

#: module -> functions it loads lazily, on their first access, that the built-in
#: functions and writers use.  scikit-image and imagecodecs load their submodules so:
#: importing ``skimage.measure`` loads almost nothing, and the first
#: ``regionprops_table`` of a worker then imports a dozen modules (about 50-80 ms in
#: each freshly forked worker, measured on the demo pipeline).  :func:`load` touches
#: them once in the fork server, so every worker starts with them.
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


def load(
    names: tuple[str, ...] = WORKER_PRELOAD,
    lazy: dict[str, tuple[str, ...]] = LAZY_FUNCTIONS,
) -> dict[str, str]:
    """Import ``names`` and the modules of ``lazy``, touching the functions ``lazy``
    lists; returns ``{module or module.function: why it failed}`` for what did not load.

    The standard library's fork server imports its preload list itself and survives an
    ``ImportError`` only: any other exception raised while importing a module (a broken
    build, a binary compiled against another numpy, a plugin that raises at import)
    ended it, and the run then failed with a bare ``EOFError`` that named nothing.
    Here every exception of a module's import is set aside instead, and the fork server
    goes on.  Nothing is hidden by that: a failed import leaves the module out of
    ``sys.modules``, so the worker that needs it imports it again itself and the well
    fails with the import's own error and traceback, as it would under ``spawn``; a
    module no step needs costs nothing.
    """
    failed: dict[str, str] = {}
    for name in (*names, *lazy):
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # set aside: the worker that needs it raises it again
            failed[name] = f"{type(exc).__name__}: {exc}"
            continue
        for fn in lazy.get(name, ()):
            try:
                getattr(module, fn)
            except Exception as exc:  # the same, for a lazily loaded submodule
                failed[f"{name}.{fn}"] = f"{type(exc).__name__}: {exc}"
    return failed
