"""Root mapping and containment of the disk backend, and OS-error translation."""

from __future__ import annotations

import errno
import os
import stat as stat_mod
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn

from hcsflow import paths as vpaths
from hcsflow.errors import (
    AlreadyExistsError,
    DirectoryNotEmptyError,
    IsADirectoryStorageError,
    NotADirectoryStorageError,
    NotFoundError,
    PathEscapeError,
    StorageError,
    SymlinkLoopError,
)
from hcsflow.storage._base import Backend, EntryKind, StorageBackend
from hcsflow.storage._codecs import (
    CodecRegistry,
    default_codecs,
)


class _DiskPaths(StorageBackend):
    """Root mapping and containment of :class:`DiskStorageBackend` (see there).

    ``root``: directory that virtual ``/`` maps to (``None``: the file system root).
    ``codecs``: the format registry (default: :func:`default_codecs`).
    ``fsync``: flush data to the device before publishing a write (durability across
    power loss; atomicity does not depend on it).
    ``max_workers``: threads for ``save_batch``/``load_batch``
    (default ``min(32, cpu_count * 4)``).
    """

    name = Backend.DISK.value

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        codecs: CodecRegistry | None = None,
        fsync: bool = True,
        max_workers: int | None = None,
    ):
        if root is not None:
            real = os.path.abspath(os.fspath(root))
            if not os.path.isdir(real):
                raise NotFoundError(
                    "the disk backend root is not an existing directory",
                    path=real,
                    backend=self.name,
                )
            self._root: str | None = None if real == "/" else real.rstrip("/")
            self._real_root = os.path.realpath(real)
        else:
            self._root = None
            self._real_root = "/"
        self.codecs = codecs if codecs is not None else default_codecs()
        self.fsync = fsync
        if max_workers is not None and max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        self.max_workers = max_workers or min(32, (os.cpu_count() or 1) * 4)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    @property
    def root(self) -> str | None:
        """The real directory virtual ``/`` maps to (``None`` for the file system root)."""
        return self._root

    def __repr__(self) -> str:
        return f"DiskStorageBackend(root={self._root!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_pool"] = None
        del state["_pool_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pool_lock = threading.Lock()

    # ------------------------------------------------------------------ mapping

    def _real(self, vp: str) -> str:
        if self._root is None:
            return vp
        return self._root if vp == "/" else self._root + vp

    def _virtual(self, real: str) -> str:
        real = os.path.normpath(real)
        if self._root is None:
            return vpaths.normalize_path(real, backend=self.name)
        if real != self._root and not real.startswith(self._root + "/"):
            raise PathEscapeError(
                f"symlink target {real!r} is outside the backend root", path=real, backend=self.name
            )
        return "/" + real[len(self._root) :].lstrip("/")

    def _locate(self, path: vpaths.PathLike, *, follow: bool = True) -> tuple[str, str]:
        """(virtual, real) for ``path``; under a root, refuse paths resolving outside it."""
        vp = self.norm(path)
        real = self._real(vp)
        if self._root is not None and vp != "/":
            probe = real if follow else os.path.dirname(real)
            if self._has_link_below_root(probe):
                resolved = os.path.realpath(probe)
                root = self._real_root
                if resolved != root and not resolved.startswith(root + "/"):
                    raise PathEscapeError(
                        "path resolves outside the backend root through a symlink",
                        path=vp,
                        backend=self.name,
                    )
        return vp, real

    def _has_link_below_root(self, real: str) -> bool:
        """Whether a component of ``real`` below the root is a symlink.

        Cheaper than resolving the whole path for the usual link-free case; only paths
        with a link are resolved and checked against the root.
        """
        assert self._root is not None
        current = self._root
        for part in real[len(self._root) + 1 :].split("/"):
            if not part:
                continue
            current = current + "/" + part
            try:
                mode = os.lstat(current).st_mode
            except OSError:
                return False  # nothing exists from here down, so nothing can lead out
            if stat_mod.S_ISLNK(mode):
                return True
        return False

    def _os_error(self, exc: OSError, vp: str, what: str) -> StorageError | None:
        """The typed error for an OS error about ``vp`` (``None``: not a path problem)."""
        if isinstance(exc, FileNotFoundError):
            return NotFoundError(f"{what}: no such file or directory", path=vp, backend=self.name)
        if isinstance(exc, IsADirectoryError):
            return IsADirectoryStorageError(f"{what}: is a directory", path=vp, backend=self.name)
        if isinstance(exc, NotADirectoryError):
            return NotADirectoryStorageError(
                f"{what}: a parent is not a directory", path=vp, backend=self.name
            )
        if isinstance(exc, FileExistsError):
            return AlreadyExistsError(f"{what}: target exists", path=vp, backend=self.name)
        if exc.errno == errno.ELOOP:
            return SymlinkLoopError(f"{what}: symlink chain loops", path=vp, backend=self.name)
        if exc.errno == errno.ENOTEMPTY:
            return DirectoryNotEmptyError(
                f"{what}: directory is not empty; use delete_all", path=vp, backend=self.name
            )
        return None

    def _raise_os_error(self, exc: OSError, vp: str, what: str) -> NoReturn:
        """Raise the typed error for ``exc`` (see :meth:`_os_error`), else ``exc`` itself."""
        mapped = self._os_error(exc, vp, what)
        if mapped is None:
            raise exc
        raise mapped from exc

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="hcsflow-disk")
            return self._pool


def _kind(mode: int) -> EntryKind:
    if stat_mod.S_ISDIR(mode):
        return "directory"
    if stat_mod.S_ISLNK(mode):
        return "symlink"
    return "file"
