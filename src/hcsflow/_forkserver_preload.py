"""Imported by the fork server of local process workers, and by nothing else.

Loads :data:`hcsflow._worker_imports.WORKER_PRELOAD` so that every worker forked from
the server starts with those modules (see :func:`hcsflow._worker_imports.load` for why
a failing import does not end the server).
"""

from __future__ import annotations

from hcsflow._worker_imports import load

#: modules whose import failed in the fork server, and why (each worker that needs one
#: imports it again and fails with the import's own error)
FAILED: dict[str, str] = load()
