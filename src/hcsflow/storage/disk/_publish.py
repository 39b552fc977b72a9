"""Atomic publishing for the disk backend: temporary names, no-clobber renames, batches."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import secrets
import shutil
import stat as stat_mod
import sys
from collections.abc import Callable, Sequence
from typing import IO, Any

from hcsflow import paths as vpaths
from hcsflow.errors import (
    AlreadyExistsError,
    BatchError,
    DataFormatError,
    HcsflowError,
    IsADirectoryStorageError,
    NotADirectoryStorageError,
    NotFoundError,
)
from hcsflow.storage._base import _check_batch
from hcsflow.storage._codecs import (
    Codec,
)
from hcsflow.storage.disk._formats import _DiskFormats, _gather

__all__ = ["TEMP_PREFIX", "TEMP_SUFFIX", "is_temp_name"]

TEMP_PREFIX = ".hcsflow-"
TEMP_SUFFIX = ".tmp"


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is an in-flight temporary file of an atomic write."""
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


def _temp_name(directory: str, base: str) -> str:
    return os.path.join(directory, f"{TEMP_PREFIX}{base[:64]}.{secrets.token_hex(6)}{TEMP_SUFFIX}")


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
#: errors meaning "this kernel or file system has no renameat2(RENAME_NOREPLACE)"
_NOREPLACE_UNSUPPORTED = frozenset({errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP})
# what os.link raises on file systems without hard links (or at the link-count limit)
_NO_HARDLINK = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK})


@functools.cache
def _renameat2() -> Any:
    """glibc's ``renameat2`` (Linux), or ``None`` where the C library lacks it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _rename_noreplace(src: str, dst: str) -> bool:
    """Rename ``src`` to ``dst`` unless ``dst`` exists, in one atomic step.

    Returns ``False`` (nothing done) where the platform or file system cannot do it;
    raises :class:`FileExistsError` when ``dst`` exists.  One metadata operation instead
    of link + unlink, so a durable save commits less to the journal.
    """
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
        return True
    err = ctypes.get_errno()
    if err in _NOREPLACE_UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), dst)


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _DiskPublish(_DiskFormats):
    """Writes through a temporary name, published atomically (single files and batches)."""

    def _check_target(self, vp: str, real: str, overwrite: bool) -> None:
        """Parent must be an existing directory; target must not be a directory or exist."""
        self._check_parent(vp, real)
        try:
            st = os.lstat(real)
        except FileNotFoundError:
            return
        if stat_mod.S_ISDIR(st.st_mode):
            raise IsADirectoryStorageError("target is a directory", path=vp, backend=self.name)
        if not overwrite:
            raise AlreadyExistsError(
                "target exists; pass overwrite=True to replace it", path=vp, backend=self.name
            )

    def _check_parent(self, vp: str, real: str) -> None:
        parent_vp = vpaths.parent(vp)
        try:
            pst = os.stat(os.path.dirname(real))
        except OSError as exc:
            if isinstance(exc, FileNotFoundError):
                raise NotFoundError(
                    "parent directory does not exist", path=parent_vp, backend=self.name
                ) from exc
            if isinstance(exc, NotADirectoryError):
                raise NotADirectoryStorageError(
                    "a parent is not a directory", path=parent_vp, backend=self.name
                ) from exc
            self._raise_os_error(exc, parent_vp, "cannot reach parent directory")
        if not stat_mod.S_ISDIR(pst.st_mode):
            raise NotADirectoryStorageError(
                "parent is not a directory", path=parent_vp, backend=self.name
            )

    def save(
        self, data: Any, path: vpaths.PathLike, *, overwrite: bool = False, **options: Any
    ) -> None:
        """Encode ``data`` by the path's extension and publish it atomically."""
        vp, real = self._locate(path, follow=False)
        codec, prepared = self._prepare(data, vp, options)
        if vp == "/":
            raise IsADirectoryStorageError("the root is a directory", path=vp, backend=self.name)
        self._check_target(vp, real, overwrite)
        tmp = self._write_temp(vp, real, codec, prepared, options)
        try:
            self._publish(tmp, vp, real, overwrite)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        if self.fsync:
            _fsync_dir(os.path.dirname(real))

    def _write_temp(
        self,
        vp: str,
        real: str,
        codec: Codec | None,
        prepared: Any,
        options: dict[str, Any],
        writer: Callable[[IO[bytes]], None] | None = None,
    ) -> str:
        """Write into a fresh temporary file next to ``real``; return its real path."""
        directory, base = os.path.split(real)
        fh = None
        for _attempt in range(16):
            tmp = _temp_name(directory, base)
            try:
                # exclusive create, named (tifffile wants a file object with a real name),
                # nothing to truncate, and the umask gives the mode any new file gets
                fh = open(tmp, "x+b")  # noqa: SIM115 - closed by the with block below
            except FileExistsError:
                continue
            break
        if fh is None:
            raise AlreadyExistsError(
                "could not create a temporary file next to the target", path=vp, backend=self.name
            )
        try:
            with fh:
                if writer is not None:
                    writer(fh)
                else:
                    assert codec is not None
                    try:
                        codec.encode(prepared, fh, **options)
                    except (OSError, MemoryError, ImportError):
                        raise
                    except Exception as exc:
                        raise DataFormatError(
                            f"cannot save as {codec.name}: {exc}", path=vp, backend=self.name
                        ) from exc
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return tmp

    def _publish(self, tmp: str, vp: str, real: str, overwrite: bool) -> None:
        """Move the finished temporary file to ``real`` (no-clobber unless ``overwrite``)."""
        try:
            if overwrite:
                os.replace(tmp, real)
                return
            if self._rename_noreplace_or_refuse(tmp, real, vp):
                return
            if not self._link_no_clobber(tmp, real, vp):
                # no hard links on this file system: reserve the name exclusively, then
                # replace the (empty) reservation with the finished file
                try:
                    os.close(os.open(real, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                except FileExistsError as exc2:
                    raise AlreadyExistsError(
                        "target appeared while writing; not overwritten", path=vp, backend=self.name
                    ) from exc2
                os.replace(tmp, real)
                return
            os.unlink(tmp)
        except OSError as exc:
            self._raise_os_error(exc, vp, "cannot publish file")

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
        files are then written to temporary names on the thread pool and only published
        once all are written.  If an item fails, temporary files are removed and files
        already published in this batch are restored to their previous content (or
        removed), and :class:`BatchError` names the failing item.
        """
        norm = _check_batch(self, data_list, paths)
        plans: list[tuple[str, str, Codec, Any]] = []
        for index, (item, vp) in enumerate(zip(data_list, norm, strict=True)):
            try:
                _, real = self._locate(vp, follow=False)
                codec, prepared = self._prepare(item, vp, options)
                if vp == "/":
                    raise IsADirectoryStorageError(
                        "the root is a directory", path=vp, backend=self.name
                    )
                self._check_target(vp, real, overwrite)
            except HcsflowError as exc:
                raise BatchError(
                    f"batch item {index} cannot be written", index=index, path=vp, backend=self.name
                ) from exc
            plans.append((vp, real, codec, prepared))

        temps: list[str | None] = [None] * len(plans)

        def write(index: int) -> None:
            vp, real, codec, prepared = plans[index]
            try:
                temps[index] = self._write_temp(vp, real, codec, prepared, options)
            except HcsflowError as exc:
                raise BatchError(
                    f"batch item {index} could not be written",
                    index=index,
                    path=vp,
                    backend=self.name,
                ) from exc
            except OSError as exc:
                raise BatchError(
                    f"batch item {index} could not be written: {exc}",
                    index=index,
                    path=vp,
                    backend=self.name,
                ) from exc

        try:
            if len(plans) <= 1:
                for index in range(len(plans)):
                    write(index)
            else:
                pool = self._executor()
                _gather([pool.submit(write, i) for i in range(len(plans))])
        except BaseException:
            for tmp in temps:
                if tmp is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
            raise

        published: list[tuple[str, str | None]] = []
        index = 0
        try:
            for index, (vp, real, _, _) in enumerate(plans):
                backup = self._backup(real) if overwrite else None
                tmp = temps[index]
                assert tmp is not None
                try:
                    self._publish(tmp, vp, real, overwrite)
                except BaseException:
                    if backup is not None:
                        os.unlink(backup)
                    raise
                temps[index] = None
                published.append((real, backup))
        except BaseException as exc:
            for real, backup in reversed(published):
                if backup is not None:
                    os.replace(backup, real)
                else:
                    os.unlink(real)
            for tmp in temps:
                if tmp is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
            if isinstance(exc, Exception):
                raise BatchError(
                    f"batch item {index} could not be published; the batch was rolled back",
                    index=index,
                    path=plans[index][0],
                    backend=self.name,
                ) from exc
            raise
        for _, backup in published:
            if backup is not None:
                os.unlink(backup)
        if self.fsync:
            for directory in dict.fromkeys(os.path.dirname(real) for _, real, _, _ in plans):
                _fsync_dir(directory)

    def _backup(self, real: str) -> str | None:
        """A second name for the current entry at ``real`` (for rollback), if any."""
        backup = _temp_name(os.path.dirname(real), os.path.basename(real))
        try:
            os.link(real, backup, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno not in _NO_HARDLINK:
                raise
            shutil.copy2(real, backup, follow_symlinks=False)
        return backup

    def _rename_noreplace_or_refuse(self, src: str, dst: str, vp: str) -> bool:
        """:func:`_rename_noreplace`, refusing an existing ``dst`` with AlreadyExistsError."""
        try:
            return _rename_noreplace(src, dst)
        except FileExistsError as exc:
            raise AlreadyExistsError(
                "target appeared meanwhile; not overwritten", path=vp, backend=self.name
            ) from exc

    def _rename_dir_no_clobber(self, src: str, dvp: str, dreal: str) -> None:
        """Rename the directory ``src`` to ``dreal`` unless something is there by then.

        ``os.rename`` would silently replace an empty directory that appeared after the
        caller's check; ``renameat2(RENAME_NOREPLACE)`` refuses it in the same step.
        """
        if self._rename_noreplace_or_refuse(src, dreal, dvp):
            return
        # no renameat2 on this platform or file system: check as late as possible
        if os.path.lexists(dreal):
            raise AlreadyExistsError("destination exists", path=dvp, backend=self.name)
        os.rename(src, dreal)

    def _link_no_clobber(self, src: str, dst: str, vp: str) -> bool:
        """Hard-link ``src`` to the new name ``dst``; ``False`` if the file system can't.

        A name that appeared at ``dst`` meanwhile raises :class:`AlreadyExistsError`.
        """
        try:
            os.link(src, dst, follow_symlinks=False)
        except FileExistsError as exc:
            raise AlreadyExistsError(
                "target appeared meanwhile; not overwritten", path=vp, backend=self.name
            ) from exc
        except OSError as exc:
            if exc.errno not in _NO_HARDLINK:
                raise
            return False
        return True

    def _move_no_clobber(self, sreal: str, dvp: str, dreal: str) -> None:
        if not self._link_no_clobber(sreal, dreal, dvp):
            if os.path.lexists(dreal):
                raise AlreadyExistsError("destination exists", path=dvp, backend=self.name)
            os.rename(sreal, dreal)
            return
        os.unlink(sreal)
