"""The modules every local worker process starts with, and how the fork server loads them.

Nothing here is imported by ``import hcsflow``: the pipeline's executors read
:data:`WORKER_PRELOAD`, and the fork server imports :mod:`hcsflow._forkserver_preload`,
which calls :func:`load`.
"""

from __future__ import annotations

import importlib

__all__ = ["WORKER_PRELOAD", "load"]

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
    # what scikit-image and imagecodecs load lazily on a function's first call
    "hcsflow.functions._preload",
    "hcsflow.pipeline._commit",
    "hcsflow.pipeline._zarr_out",
)


def load(names: tuple[str, ...] = WORKER_PRELOAD) -> dict[str, str]:
    """Import ``names``; returns ``{module: why its import failed}`` for those that did not.

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
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # set aside: the worker that needs it raises it again
            failed[name] = f"{type(exc).__name__}: {exc}"
    return failed
