"""Root mapping and containment of the disk backend, and OS-error translation.

Every operation resolves its path with :class:`~hcsflow.storage._contain.Tree` (open
directory descriptors; ``openat2(RESOLVE_BENEATH)`` or an ``O_NOFOLLOW`` walk) and acts
on the last component with an ``*at`` system call, so a symlink swapped in by another
process cannot redirect a read, write or delete out of the root.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat as stat_mod
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any, NoReturn

from hcsflow import paths as vpaths
from hcsflow.errors import (
    AlreadyExistsError,
    DataFormatError,
    DirectoryNotEmptyError,
    InvalidPathError,
    IsADirectoryStorageError,
    NotADirectoryStorageError,
    NotFoundError,
    PathEscapeError,
    StorageError,
    SymlinkLoopError,
)
from hcsflow.storage._base import Backend, EntryKind, StorageBackend
from hcsflow.storage._codecs import CodecRegistry, default_codecs
from hcsflow.storage._contain import EscapeError, Tree, special_file
from hcsflow.storage._debris import NAME_MAX
from hcsflow.storage._limits import StorageLimits

__all__: list[str] = []


class _DiskPaths(StorageBackend):
    """Files on a local file system.

    ``root``: directory that virtual ``/`` maps to (``None``: the file system root).
    ``codecs``: the format registry (default: :func:`default_codecs`).
    ``fsync``: flush data to the device before publishing a write (durability across
    power loss; atomicity does not depend on it).
    ``max_workers``: threads for ``save_batch``/``load_batch``
    (default ``min(32, cpu_count * 4)``).
    ``limits``: :class:`~hcsflow.storage.StorageLimits` checked before decoding (default:
    half the physical memory per array, or ``HCSFLOW_MAX_DECODED_BYTES``).
    """

    name = Backend.DISK.value

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        codecs: CodecRegistry | None = None,
        fsync: bool = True,
        max_workers: int | None = None,
        limits: StorageLimits | None = None,
    ):
        if root is not None:
            real = os.path.abspath(os.fspath(root))
            if not os.path.isdir(real):
                raise NotFoundError(
                    "the disk backend root is not an existing directory",
                    path=real,
                    backend=self.name,
                )
            self._tree = Tree(real)
        else:
            self._tree = Tree(None)
        self.codecs = codecs if codecs is not None else default_codecs()
        self.fsync = fsync
        self.limits = limits if limits is not None else StorageLimits()
        if max_workers is not None and max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        self.max_workers = max_workers or min(32, (os.cpu_count() or 1) * 4)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    @property
    def root(self) -> str | None:
        """The real directory virtual ``/`` maps to (``None`` for the file system root)."""
        return self._tree.root

    def __repr__(self) -> str:
        return f"DiskStorageBackend(root={self.root!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_pool"] = None
        del state["_pool_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pool_lock = threading.Lock()

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="hcsflow-disk")
            return self._pool

    # ------------------------------------------------------------------ errors

    def _os_error(self, exc: BaseException, vp: str, what: str) -> StorageError | None:
        """The typed error for an OS error about ``vp`` (``None``: not a path problem)."""
        if isinstance(exc, EscapeError):
            return PathEscapeError(
                f"{what}: a symlink on the way leads outside the backend root (to {exc.target!r})",
                path=vp,
                backend=self.name,
            )
        if not isinstance(exc, OSError):
            return None
        code = exc.errno
        if code == errno.ENOENT:
            return NotFoundError(f"{what}: no such file or directory", path=vp, backend=self.name)
        if code == errno.EISDIR:
            return IsADirectoryStorageError(f"{what}: is a directory", path=vp, backend=self.name)
        if code == errno.ENOTDIR:
            return NotADirectoryStorageError(
                f"{what}: a parent is not a directory", path=vp, backend=self.name
            )
        if code == errno.EEXIST:
            return AlreadyExistsError(f"{what}: target exists", path=vp, backend=self.name)
        if code == errno.ELOOP:
            return SymlinkLoopError(f"{what}: symlink chain loops", path=vp, backend=self.name)
        if code == errno.ENOTEMPTY:
            return DirectoryNotEmptyError(
                f"{what}: directory is not empty; use delete_all", path=vp, backend=self.name
            )
        if code == errno.ENAMETOOLONG:
            return InvalidPathError(
                f"{what}: a name is longer than the file system allows ({NAME_MAX} bytes)",
                path=vp,
                backend=self.name,
            )
        return None

    def _raise_os_error(self, exc: BaseException, vp: str, what: str) -> NoReturn:
        """Raise the typed error for ``exc``; other OS errors name the real path."""
        mapped = self._os_error(exc, vp, what)
        if mapped is not None:
            raise mapped from exc
        if isinstance(exc, OSError) and exc.errno is not None:
            raise type(exc)(exc.errno, f"{what}: {exc.strerror}", self._tree.real(vp)) from exc
        raise exc

    def _check_name(self, vp: str) -> None:
        """Refuse a last component longer than the kernel allows, before any work."""
        name = vpaths.name(vp)
        if len(os.fsencode(name)) > NAME_MAX:
            raise InvalidPathError(
                f"the name is {len(os.fsencode(name))} bytes long; file systems allow "
                f"{NAME_MAX} bytes per name",
                path=vp,
                backend=self.name,
            )

    # ------------------------------------------------------------------ resolution

    @contextlib.contextmanager
    def _parent_at(self, vp: str, *, writing: bool = False) -> Iterator[tuple[int, str, str]]:
        """(parent descriptor, name, resolved parent path) of ``vp``, errors typed.

        ``writing``: a missing or non-directory parent is reported as such (naming the
        parent), the way every backend's writes report it.
        """
        if writing:
            self._check_name(vp)
        try:
            fd, name, pvp = self._tree.open_parent(vp)
        except (OSError, EscapeError) as exc:
            if writing and isinstance(exc, OSError):
                parent = vpaths.parent(vp)
                if exc.errno == errno.ENOENT:
                    raise NotFoundError(
                        "parent directory does not exist", path=parent, backend=self.name
                    ) from exc
                if exc.errno == errno.ENOTDIR:
                    raise NotADirectoryStorageError(
                        "a parent is not a directory", path=parent, backend=self.name
                    ) from exc
                self._raise_os_error(exc, parent, "cannot reach parent directory")
            self._raise_os_error(exc, vp, "cannot resolve path")
        try:
            yield fd, name, pvp
        finally:
            os.close(fd)

    def _lookup(self, vp: str, *, follow: bool, what: str) -> tuple[str, os.stat_result | None]:
        """:meth:`Tree.lookup` with typed errors."""
        try:
            return self._tree.lookup(vp, follow=follow)
        except (OSError, EscapeError) as exc:
            self._raise_os_error(exc, vp, what)

    def _virtual_target(self, target: str, link_dir: str, vp: str) -> str:
        """The virtual path a link's text names (``link_dir``: its resolved directory)."""
        try:
            return self._tree.link_target(target, link_dir)
        except EscapeError as exc:
            raise PathEscapeError(
                f"symlink target {target!r} is outside the backend root",
                path=vp,
                backend=self.name,
            ) from exc

    def _open_file(self, vp: str, flags: int, what: str) -> tuple[int, str]:
        """(descriptor, resolved path) of the regular file ``vp``, links followed."""
        try:
            fd, rvp = self._tree.open_file(vp, flags)
        except (OSError, EscapeError) as exc:
            self._raise_os_error(exc, vp, what)
        mode = os.fstat(fd).st_mode
        if stat_mod.S_ISDIR(mode):
            os.close(fd)
            raise IsADirectoryStorageError(f"{what}: is a directory", path=vp, backend=self.name)
        special = special_file(mode)
        if special is not None:
            os.close(fd)
            raise DataFormatError(
                f"{what}: is {special}, not a regular file", path=vp, backend=self.name
            )
        return fd, rvp


def _kind(mode: int) -> EntryKind:
    if stat_mod.S_ISDIR(mode):
        return "directory"
    if stat_mod.S_ISLNK(mode):
        return "symlink"
    return "file"


def file_object(fd: int, mode: str, name: str, *, closefd: bool) -> IO[bytes]:
    """A buffered binary file over ``fd`` whose ``name`` is ``name`` (tifffile wants one)."""
    raw = io.FileIO(fd, mode, closefd=closefd)
    raw.name = name
    if mode == "r":
        return io.BufferedReader(raw)
    return io.BufferedRandom(raw)
