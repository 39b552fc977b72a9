"""Atomic publishing for the disk backend: unnamed temporary files, no-clobber links.

A write never exposes a partial file under any name where the kernel allows it:

1. the data goes into an *unnamed* file in the target's directory
   (``open(dir, O_TMPFILE)``), locked (``flock``), flushed and fsynced: a process
   killed now leaves nothing behind, not even a temporary name;
2. without ``overwrite`` the finished file gets its name with one ``linkat`` (the
   kernel refuses an existing name, so a file another process created meanwhile is
   never clobbered);
3. with ``overwrite`` it is linked to the target's *publish window* name
   ``.hcsflow-<name>.<32 zeros>.tmp`` and renamed over the target.  Only a kill
   between those two system calls leaves that (complete, unpublished) file; the next
   overwrite of the same path finds it under its fixed name and removes it when its
   lock is free (a live writer holds the lock until its rename is done; one that
   finds its window gone links its file again).

File systems without ``O_TMPFILE`` (NFS, most FUSE file systems, macOS) get a named
temporary file ``.hcsflow-<name>.<writer tag>.tmp`` instead (tag: see
:mod:`hcsflow.storage._debris`), published with ``renameat2(RENAME_NOREPLACE)`` or
``link`` + ``unlink``; there a write first lists the directory and removes that
path's temporary files left by writers that died.  Listings hide every ``.hcsflow-``
temporary name.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import resource
import stat as stat_mod
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any

from hcsflow import paths as vpaths
from hcsflow.errors import (
    AlreadyExistsError,
    BatchError,
    CodecRefusal,
    DataFormatError,
    HcsflowError,
    IsADirectoryStorageError,
    StorageError,
)
from hcsflow.storage._base import _check_batch, _reason, batch_item_error
from hcsflow.storage._batch import batch_workers, nbytes_of, releases_gil, run_batch
from hcsflow.storage._codecs import Codec
from hcsflow.storage._contain import copy_fd, copy_file_at, rename_noreplace, renameat2
from hcsflow.storage._debris import (
    GRACE_SECONDS,
    NAME_MAX,
    WINDOW_TAG,
    bounded_name,
    lock,
    lock_held,
    tag_of,
    writer_state,
    writer_tag,
)
from hcsflow.storage.disk._formats import _DiskFormats
from hcsflow.storage.disk._paths import file_object

__all__ = [
    "TEMP_PREFIX",
    "TEMP_SUFFIX",
    "is_temp_name",
    "temp_name",
    "window_name",
    "window_left_behind",
]

TEMP_PREFIX = ".hcsflow-"
TEMP_SUFFIX = ".tmp"
# prefix + base + "." + tag + suffix must fit one file name
_BASE_BYTES = NAME_MAX - len(TEMP_PREFIX) - 1 - 32 - len(TEMP_SUFFIX)


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is an in-flight temporary file of an atomic write."""
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


def _temp_base(name: str) -> str:
    return bounded_name(name, _BASE_BYTES)


def temp_name(name: str) -> str:
    """A fresh temporary name for ``name`` carrying this writer's tag (fits NAME_MAX)."""
    return f"{TEMP_PREFIX}{_temp_base(name)}.{writer_tag()}{TEMP_SUFFIX}"


def window_name(name: str) -> str:
    """The fixed publish-window name of ``name`` (see the module docstring)."""
    return f"{TEMP_PREFIX}{_temp_base(name)}.{WINDOW_TAG}{TEMP_SUFFIX}"


# what os.link raises on file systems without hard links (or at the link-count limit)
_NO_HARDLINK = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK})
#: what open(O_TMPFILE) raises where the file system (or kernel) cannot make one
_NO_TMPFILE = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT})
_O_TMPFILE = getattr(os, "O_TMPFILE", 0)
_MAX_PUBLISH_ATTEMPTS = 16
# module-level names, so tests can take the fallback routes
_renameat2 = renameat2
_rename_noreplace = rename_noreplace


@functools.cache
def _proc_fd_links() -> bool:
    """Whether ``/proc/self/fd`` can name an unnamed file for ``linkat`` here."""
    return sys.platform.startswith("linux") and os.path.isdir("/proc/self/fd")


@functools.cache
def _fd_budget() -> int:
    """Unnamed files a batch may keep open at once (a quarter of the descriptor limit)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return 1024
    return max(8, soft // 4)


_NO_TMPFILE_DEVICES: set[int] = set()


@dataclass
class _Staged:
    """A finished file not yet under its name: unnamed (``fd``) or a temporary name."""

    fd: int | None = None
    tmp: str | None = None

    def discard(self, dir_fd: int) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp, dir_fd=dir_fd)
            self.tmp = None


def _link_fd(fd: int, dir_fd: int, name: str) -> None:
    """Give the unnamed file ``fd`` the name ``name`` (``FileExistsError`` if taken)."""
    os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)


def window_left_behind(dir_fd: int, name: str) -> bool:
    """Whether the publish window ``name`` was left by a writer that died."""
    return _window_state(dir_fd, name) == "left behind"


def _window_state(dir_fd: int, name: str) -> str:
    """``"gone"``, ``"in use"`` or ``"left behind"`` (no writer holds its lock).

    A writer locks its unnamed file when it creates it and keeps the lock through the
    link and the rename, so a window whose lock can be taken was left by a writer that
    died between the two.  Where locks are not supported, a window unchanged for
    :data:`GRACE_SECONDS` counts as left behind.
    """
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except FileNotFoundError:
        return "gone"
    except OSError:
        return "in use"
    try:
        if not lock_held(fd):
            return "left behind"
        stale = _locks_unsupported(fd) and time.time() - os.fstat(fd).st_ctime > GRACE_SECONDS
        return "left behind" if stale else "in use"
    finally:
        os.close(fd)


def _locks_unsupported(fd: int) -> bool:
    """Whether ``flock`` fails on this file for another reason than a held lock."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def _remove_dead_temps(dir_fd: int, base: str | None = None) -> int:
    """Remove temporary names of dead writers in the directory (of ``base`` only, if given).

    Tagged names go when their writer is dead; publish windows when no writer holds
    their lock (see :func:`_window_state`).
    """
    prefix = TEMP_PREFIX + (_temp_base(base) + "." if base is not None else "")
    removed = 0
    with os.scandir(dir_fd) as it:
        names = [e.name for e in it if e.name.startswith(prefix) and is_temp_name(e.name)]
    for name in names:
        tag = tag_of(name)
        if tag == WINDOW_TAG:
            doomed = _window_state(dir_fd, name) == "left behind"
        else:
            doomed = writer_state(tag) == "dead"
        if doomed:
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                os.unlink(name, dir_fd=dir_fd)
                removed += 1
    return removed


class _DiskPublish(_DiskFormats):
    """Writes through an unnamed (or temporary) file, published atomically."""

    def _check_target_at(self, dir_fd: int, name: str, vp: str, overwrite: bool) -> None:
        """The target must not be a directory, nor exist unless ``overwrite``."""
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat_mod.S_ISDIR(st.st_mode):
            raise IsADirectoryStorageError("target is a directory", path=vp, backend=self.name)
        if not overwrite:
            raise AlreadyExistsError(
                "target exists; pass overwrite=True to replace it", path=vp, backend=self.name
            )

    def save(
        self, data: Any, path: vpaths.PathLike, *, overwrite: bool = False, **options: Any
    ) -> None:
        """Encode ``data`` by the path's extension and publish it atomically."""
        vp = self.norm(path)
        codec, prepared = self._prepare(data, vp, options)
        if vp == "/":
            raise IsADirectoryStorageError("the root is a directory", path=vp, backend=self.name)
        with self._parent_at(vp, writing=True) as (dir_fd, name, _):
            self._check_target_at(dir_fd, name, vp, overwrite)
            staged = self._stage(dir_fd, name, vp, codec, prepared, options)
            try:
                self._commit(dir_fd, name, vp, staged, overwrite)
            finally:
                staged.discard(dir_fd)
            if self.fsync:
                os.fsync(dir_fd)

    # ------------------------------------------------------------------ staging

    def _stage(
        self,
        dir_fd: int,
        name: str,
        vp: str,
        codec: Codec | None,
        prepared: Any,
        options: dict[str, Any],
        writer: Callable[[IO[bytes]], None] | None = None,
        *,
        cleanup: bool = True,
    ) -> _Staged:
        """Write the file's bytes into an unnamed file (or a fresh temporary name)."""
        staged = _Staged()
        fd = self._open_unnamed(dir_fd)
        if fd is None:
            if cleanup:
                _remove_dead_temps(dir_fd, name)
            for _attempt in range(16):
                tmp = temp_name(name)
                try:
                    fd = os.open(
                        tmp,
                        os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                        0o666,
                        dir_fd=dir_fd,
                    )
                except FileExistsError:
                    continue
                lock(fd)
                staged.tmp = tmp
                break
            if fd is None:
                raise AlreadyExistsError(
                    "could not create a temporary file next to the target",
                    path=vp,
                    backend=self.name,
                )
        staged.fd = fd
        try:
            with file_object(fd, "r+", vp, closefd=False) as fh:
                if writer is not None:
                    writer(fh)
                else:
                    assert codec is not None
                    try:
                        codec.encode(prepared, fh, **options)
                    except (OSError, MemoryError, ImportError, HcsflowError):
                        raise
                    except CodecRefusal as exc:
                        raise DataFormatError(
                            f"cannot save as {codec.name}: {exc}", path=vp, backend=self.name
                        ) from exc
                    except Exception as exc:
                        raise DataFormatError(
                            f"cannot save as {codec.name}: {exc}", path=vp, backend=self.name
                        ) from exc
                fh.flush()
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            staged.discard(dir_fd)
            raise
        if staged.tmp is not None:
            os.close(fd)
            staged.fd = None
        return staged

    def _open_unnamed(self, dir_fd: int) -> int | None:
        """An unnamed file in the directory, or ``None`` where the file system has none."""
        if not _O_TMPFILE or not _proc_fd_links():
            return None
        dev = os.fstat(dir_fd).st_dev
        if dev in _NO_TMPFILE_DEVICES:
            return None
        try:
            fd = os.open(".", _O_TMPFILE | os.O_RDWR, 0o666, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno not in _NO_TMPFILE:
                raise
            _NO_TMPFILE_DEVICES.add(dev)
            return None
        lock(fd)  # held through the link and the rename: see _window_state
        return fd

    # ------------------------------------------------------------------ publishing

    def _commit(self, dir_fd: int, name: str, vp: str, staged: _Staged, overwrite: bool) -> None:
        """Give the staged file its name (no-clobber unless ``overwrite``)."""
        try:
            if staged.tmp is not None:
                self._publish_named(dir_fd, staged.tmp, name, vp, overwrite)
                staged.tmp = None
                return
            assert staged.fd is not None
            if not overwrite:
                try:
                    _link_fd(staged.fd, dir_fd, name)
                except FileExistsError as exc:
                    raise AlreadyExistsError(
                        "target appeared while writing; not overwritten", path=vp, backend=self.name
                    ) from exc
                return
            self._publish_window(dir_fd, staged, name, vp)
        except OSError as exc:
            self._raise_os_error(exc, vp, "cannot publish file")

    def _publish_window(self, dir_fd: int, staged: _Staged, name: str, vp: str) -> None:
        """Link the staged file to the publish window, then rename it over ``name``.

        Another writer may remove a window it judged left behind just as this one
        links its own (the judgement and the unlink are two system calls).  The kernel
        then refuses to link the same unnamed file a second time, so the bytes are
        copied into a fresh unnamed file and published from there: rare, never lost.
        """
        for _attempt in range(_MAX_PUBLISH_ATTEMPTS):
            assert staged.fd is not None
            window = window_name(name)
            try:
                _link_fd(staged.fd, dir_fd, window)
            except FileExistsError:
                state = _window_state(dir_fd, window)
                if state == "left behind":
                    # a writer died between the link and the rename: its debris
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(window, dir_fd=dir_fd)
                if state != "in use":
                    continue
                # another writer of the same path is inside its window right now
                window = temp_name(name)
                try:
                    _link_fd(staged.fd, dir_fd, window)
                except FileNotFoundError:
                    self._relinkable(dir_fd, staged)
                    continue
            except FileNotFoundError:
                self._relinkable(dir_fd, staged)
                continue
            try:
                os.replace(window, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                return
            except FileNotFoundError:
                continue  # the window name was removed meanwhile: publish again
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(window, dir_fd=dir_fd)
                raise
        raise StorageError(
            "could not publish the file: its temporary name kept disappearing",
            path=vp,
            backend=self.name,
        )

    def _relinkable(self, dir_fd: int, staged: _Staged) -> None:
        """Replace the staged unnamed file by a fresh copy the kernel will still link."""
        assert staged.fd is not None
        fresh = self._open_unnamed(dir_fd)
        if fresh is None:
            raise OSError(errno.ENOENT, "the staged file can no longer be linked")
        try:
            copy_fd(staged.fd, fresh)
            if self.fsync:
                os.fsync(fresh)
        except BaseException:
            os.close(fresh)
            raise
        os.close(staged.fd)
        staged.fd = fresh

    def _publish_named(self, dir_fd: int, tmp: str, name: str, vp: str, overwrite: bool) -> None:
        """Move the finished temporary file ``tmp`` to ``name``."""
        if overwrite:
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            return
        if self._rename_noreplace_or_refuse(dir_fd, tmp, dir_fd, name, vp):
            return
        if not self._link_no_clobber(dir_fd, tmp, dir_fd, name, vp):
            # no hard links on this file system: reserve the name exclusively, then
            # replace the (empty) reservation with the finished file
            try:
                os.close(
                    os.open(
                        name,
                        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                        0o600,
                        dir_fd=dir_fd,
                    )
                )
            except FileExistsError as exc:
                raise AlreadyExistsError(
                    "target appeared while writing; not overwritten", path=vp, backend=self.name
                ) from exc
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            return
        os.unlink(tmp, dir_fd=dir_fd)

    def _rename_noreplace_or_refuse(
        self, src_dir: int, src: str, dst_dir: int, dst: str, vp: str
    ) -> bool:
        """:func:`_rename_noreplace`, refusing an existing ``dst`` with AlreadyExistsError."""
        try:
            return _rename_noreplace(src, dst, src_dir, dst_dir)
        except FileExistsError as exc:
            raise AlreadyExistsError(
                "target appeared meanwhile; not overwritten", path=vp, backend=self.name
            ) from exc

    def _link_no_clobber(self, src_dir: int, src: str, dst_dir: int, dst: str, vp: str) -> bool:
        """Hard-link ``src`` to the new name ``dst``; ``False`` if the file system can't.

        A name that appeared at ``dst`` meanwhile raises :class:`AlreadyExistsError`.
        """
        try:
            os.link(src, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir, follow_symlinks=False)
        except FileExistsError as exc:
            raise AlreadyExistsError(
                "target appeared meanwhile; not overwritten", path=vp, backend=self.name
            ) from exc
        except OSError as exc:
            if exc.errno not in _NO_HARDLINK:
                raise
            return False
        return True

    def _backup_at(self, dir_fd: int, name: str) -> str | None:
        """A second (temporary) name for the entry ``name``, for rollback; ``None`` if none."""
        backup = temp_name(name)
        try:
            os.link(name, backup, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno not in _NO_HARDLINK:
                raise
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if stat_mod.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(name, dir_fd=dir_fd), backup, dir_fd=dir_fd)
            else:
                copy_file_at(dir_fd, name, dir_fd, backup)
        return backup

    # ------------------------------------------------------------------ batches

    def save_batch(
        self,
        data_list: Sequence[Any],
        paths: Sequence[vpaths.PathLike],
        *,
        overwrite: bool = False,
        **options: Any,
    ) -> None:
        """Save many items: all-or-nothing.

        Every item is checked (format, data, target) before anything is written; the
        files are then written (unnamed where the file system allows) on the thread
        pool and only published once all are written.  If an item fails, nothing of
        the batch stays: files already published in this batch are restored to their
        previous content (or removed), and :class:`BatchError` names the failing item.
        Each target directory is first cleared of temporary files of dead writers.
        """
        norm = _check_batch(self, data_list, paths)
        plans: list[tuple[str, int, str, Codec, Any]] = []
        dirs: dict[str, int] = {}
        try:
            for index, (item, vp) in enumerate(zip(data_list, norm, strict=True)):
                try:
                    codec, prepared = self._prepare(item, vp, options)
                    if vp == "/":
                        raise IsADirectoryStorageError(
                            "the root is a directory", path=vp, backend=self.name
                        )
                    parent = vpaths.parent(vp)
                    if parent not in dirs:
                        with self._parent_at(vp, writing=True) as (pfd, _, _):
                            dirs[parent] = os.dup(pfd)
                    else:
                        self._check_name(vp)
                    dir_fd = dirs[parent]
                    name = vpaths.name(vp)
                    self._check_target_at(dir_fd, name, vp, overwrite)
                except HcsflowError as exc:
                    raise batch_item_error(
                        index, "cannot be written", exc, path=vp, backend=self.name
                    ) from exc
                plans.append((vp, dir_fd, name, codec, prepared))
            for dir_fd in dirs.values():
                _remove_dead_temps(dir_fd)
            self._write_batch(plans, overwrite, options)
            if self.fsync:
                for dir_fd in dirs.values():
                    os.fsync(dir_fd)
        finally:
            for dir_fd in dirs.values():
                os.close(dir_fd)

    def _write_batch(
        self,
        plans: list[tuple[str, int, str, Codec, Any]],
        overwrite: bool,
        options: dict[str, Any],
    ) -> None:
        staged: list[_Staged | None] = [None] * len(plans)
        budget = _fd_budget()

        def write(index: int) -> None:
            vp, dir_fd, name, codec, prepared = plans[index]
            try:
                item = self._stage(dir_fd, name, vp, codec, prepared, options, cleanup=False)
                if item.fd is not None and index >= budget:
                    # more unnamed files than descriptors to spare: name this one
                    tmp = temp_name(name)
                    _link_fd(item.fd, dir_fd, tmp)
                    os.close(item.fd)
                    item.fd, item.tmp = None, tmp
                staged[index] = item
            except (HcsflowError, OSError) as exc:
                raise batch_item_error(
                    index, "could not be written", exc, path=vp, backend=self.name
                ) from exc

        workers = batch_workers(
            len(plans),
            sum(nbytes_of(plan[4]) for plan in plans) / max(1, len(plans)),
            gil_free=all(releases_gil(codec) for codec in {plan[3] for plan in plans}),
            durable=self.fsync,
            max_workers=self.max_workers,
        )
        try:
            run_batch(write, len(plans), workers, self._executor() if workers > 1 else None)
        except BaseException:
            for item, (_, dir_fd, _, _, _) in zip(staged, plans, strict=True):
                if item is not None:
                    item.discard(dir_fd)
            raise
        self._publish_batch(plans, staged, overwrite)

    def _publish_batch(
        self,
        plans: list[tuple[str, int, str, Codec, Any]],
        staged: list[_Staged | None],
        overwrite: bool,
    ) -> None:
        published: list[tuple[int, str, str | None]] = []
        index = 0
        try:
            for index, (vp, dir_fd, name, _, _) in enumerate(plans):
                item = staged[index]
                assert item is not None
                backup = self._backup_at(dir_fd, name) if overwrite else None
                try:
                    self._commit(dir_fd, name, vp, item, overwrite)
                except BaseException:
                    if backup is not None:
                        os.unlink(backup, dir_fd=dir_fd)
                    raise
                item.discard(dir_fd)
                published.append((dir_fd, name, backup))
        except BaseException as exc:
            for dir_fd, name, backup in reversed(published):
                if backup is not None:
                    os.replace(backup, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                else:
                    os.unlink(name, dir_fd=dir_fd)
            for item, (_, dir_fd, _, _, _) in zip(staged, plans, strict=True):
                if item is not None:
                    item.discard(dir_fd)
            if isinstance(exc, Exception):
                raise BatchError(
                    f"batch item {index} could not be published; the batch was rolled back: "
                    f"{_reason(exc)}",
                    index=index,
                    path=plans[index][0],
                    backend=self.name,
                ) from exc
            raise
        for dir_fd, _, backup in published:
            if backup is not None:
                os.unlink(backup, dir_fd=dir_fd)
