"""Virtual paths: normalisation and natural ordering.

A virtual path is a posix string, absolute after normalisation (``a/b`` becomes
``/a/b``), with ``.`` and ``..`` resolved lexically and no trailing slash.  A
``..`` that would climb above the root raises :class:`~hcsflow.errors.PathEscapeError`
instead of being clamped, because silently re-rooting a path writes data somewhere
the user did not ask for.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Iterable
from typing import Any

from natsort import natsort_keygen, ns

from hcsflow.errors import InvalidPathError, PathEscapeError

__all__ = [
    "PathLike",
    "normalize_path",
    "join",
    "parent",
    "name",
    "is_relative_to",
    "relative_to",
    "natural_key",
    "natural_sorted",
]

PathLike = str | os.PathLike[str]


def normalize_path(path: PathLike, *, backend: str | None = None) -> str:
    """Return the canonical absolute posix form of a virtual path.

    Raises :class:`InvalidPathError` for empty or non-string paths and paths with NUL
    bytes, and :class:`PathEscapeError` when ``..`` climbs above ``/``.
    """
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str):
        raise InvalidPathError(
            f"a virtual path must be a str or os.PathLike, got {type(path).__name__}",
            path=repr(path),
            backend=backend,
        )
    if path == "":
        raise InvalidPathError("empty path", path=path, backend=backend)
    if "\x00" in path:
        raise InvalidPathError("path contains a NUL byte", path=path, backend=backend)
    raw = path.replace("\\", "/") if os.sep == "\\" else path
    parts: list[str] = []
    for part in raw.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise PathEscapeError("path climbs above the root", path=path, backend=backend)
            parts.pop()
        else:
            parts.append(part)
    return "/" + "/".join(parts)


def join(*parts: PathLike) -> str:
    """Join path parts and normalise the result."""
    return normalize_path(posixpath.join(*(os.fspath(p) for p in parts)))


def parent(path: str) -> str:
    """Parent of a normalised path (``/`` is its own parent)."""
    return posixpath.dirname(path) or "/"


def name(path: str) -> str:
    """Last component of a normalised path."""
    return posixpath.basename(path)


def is_relative_to(path: str, root: str) -> bool:
    """Whether normalised ``path`` equals ``root`` or lies below it."""
    return root == "/" or path == root or path.startswith(root + "/")


def relative_to(path: str, root: str) -> str:
    """``path`` relative to ``root`` (both normalised); ``""`` for the root itself."""
    if not is_relative_to(path, root):
        raise PathEscapeError(f"path is not below {root!r}", path=path)
    if path == root:
        return ""
    return path[len(root) :].lstrip("/")


natural_key: Callable[[Any], Any] = natsort_keygen(alg=ns.PATH)
"""Sort key for natural order: ``img_2`` before ``img_10``, well ``A2`` before ``A10``."""


def natural_sorted(items: Iterable[str]) -> list[str]:
    """Return ``items`` in natural order (see :data:`natural_key`)."""
    return sorted(items, key=natural_key)
