"""The disk backend: real files and directories, formats chosen by extension."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat as stat_mod
from collections.abc import Iterator
from typing import IO

from hcsflow import paths as vpaths
from hcsflow.errors import (
    AlreadyExistsError,
    DataFormatError,
    InvalidPathError,
    IsADirectoryStorageError,
    NotADirectoryStorageError,
    NotFoundError,
    SymlinkLoopError,
)
from hcsflow.storage._base import Backend, EntryKind, FileInfo
from hcsflow.storage.disk._paths import _kind
from hcsflow.storage.disk._publish import _DiskPublish, _temp_name, is_temp_name


class DiskStorageBackend(_DiskPublish):
    """Files on a local file system.

    ``root``: directory that virtual ``/`` maps to (``None``: the file system root).
    ``codecs``: the format registry (default: :func:`default_codecs`).
    ``fsync``: flush data to the device before publishing a write (durability across
    power loss; atomicity does not depend on it).
    ``max_workers``: threads for ``save_batch``/``load_batch``
    (default ``min(32, cpu_count * 4)``).
    """

    name = Backend.DISK.value

    # ------------------------------------------------------------------ queries

    def entry_kind(
        self, path: vpaths.PathLike, *, follow_symlinks: bool = True
    ) -> EntryKind | None:
        """Kind of entry at ``path``; ``None`` when missing, dangling or looping."""
        _, real = self._locate(path, follow=follow_symlinks)
        try:
            st = os.stat(real) if follow_symlinks else os.lstat(real)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return None
            raise
        return _kind(st.st_mode)

    def list_dir(self, directory: vpaths.PathLike) -> list[str]:
        """Entry names in ``directory`` (in-flight temporary files hidden), naturally sorted."""
        vp, real = self._locate(directory)
        try:
            with os.scandir(real) as it:
                names = [e.name for e in it if not is_temp_name(e.name)]
        except OSError as exc:
            self._raise_os_error(exc, vp, "cannot list directory")
        return vpaths.natural_sorted(names)

    def walk(self, directory: vpaths.PathLike, *, recursive: bool = True) -> Iterator[str]:
        """Files below ``directory`` (see :meth:`StorageBackend.walk`), read with scandir."""
        root_vp, root_real = self._locate(directory)
        self._require_dir(root_vp)
        stack = [(root_vp, root_real)]
        while stack:
            vdir, rdir = stack.pop()
            with os.scandir(rdir) as it:
                entries = sorted(
                    (e for e in it if not is_temp_name(e.name)),
                    key=lambda e: vpaths.natural_key(e.name),
                )
            subdirs = []
            for entry in entries:
                full = vdir + "/" + entry.name if vdir != "/" else "/" + entry.name
                if entry.is_symlink():
                    if self._root is not None:
                        self._locate(full)
                    if entry.is_file():
                        yield full
                elif entry.is_dir(follow_symlinks=False):
                    subdirs.append((full, entry.path))
                elif entry.is_file(follow_symlinks=False):
                    yield full
            if recursive:
                stack.extend(reversed(subdirs))

    def read_link(self, link: vpaths.PathLike) -> str:
        """The virtual path the symlink ``link`` points at."""
        vp, real = self._locate(link, follow=False)
        try:
            target = os.readlink(real)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise InvalidPathError("not a symlink", path=vp, backend=self.name) from exc
            self._raise_os_error(exc, vp, "cannot read link")
        return self._virtual(os.path.join(os.path.dirname(real), target))

    def stat(self, path: vpaths.PathLike) -> FileInfo:
        """:class:`FileInfo` for ``path`` itself (a symlink is reported as a symlink)."""
        vp, real = self._locate(path, follow=False)
        try:
            st = os.lstat(real)
        except OSError as exc:
            self._raise_os_error(exc, vp, "cannot stat")
        kind = _kind(st.st_mode) if not stat_mod.S_ISLNK(st.st_mode) else "symlink"
        if kind == "symlink":
            return FileInfo(vp, "symlink", target=self.read_link(vp), mtime=st.st_mtime)
        if kind == "directory":
            return FileInfo(vp, "directory", mtime=st.st_mtime)
        return FileInfo(vp, "file", size=st.st_size, mtime=st.st_mtime)

    # ------------------------------------------------------------------ structure

    def ensure_directory(self, directory: vpaths.PathLike) -> str:
        """Create ``directory`` and its missing parents; return its normalised path."""
        vp, real = self._locate(directory)
        try:
            os.makedirs(real, exist_ok=True)
        except FileExistsError as exc:
            if os.path.islink(real) and not os.path.exists(real):
                raise NotFoundError(
                    "symlink target does not exist", path=vp, backend=self.name
                ) from exc
            raise NotADirectoryStorageError(
                "a file is in the way", path=vp, backend=self.name
            ) from exc
        except OSError as exc:
            self._raise_os_error(exc, vp, "cannot create directory")
        return vp

    def _delete(self, path: str, recursive: bool) -> None:
        vp, real = self._locate(path, follow=False)
        try:
            st = os.lstat(real)
            if stat_mod.S_ISDIR(st.st_mode):
                if recursive:
                    shutil.rmtree(real)
                else:
                    os.rmdir(real)
            else:
                os.unlink(real)
        except OSError as exc:
            self._raise_os_error(exc, vp, "cannot delete")

    def _create_symlink(self, target: str, link: str, overwrite: bool) -> None:
        # an OS symlink holding the target's absolute real path
        tvp, treal = self._locate(target)
        lvp, lreal = self._locate(link, follow=False)
        if self.entry_kind(tvp) is None:
            raise NotFoundError("symlink target does not exist", path=tvp, backend=self.name)
        if lvp == "/":
            raise IsADirectoryStorageError("the root is a directory", path=lvp, backend=self.name)
        self._check_target(lvp, lreal, overwrite)
        if not overwrite:
            try:
                os.symlink(treal, lreal)
            except OSError as exc:
                self._raise_os_error(exc, lvp, "cannot create symlink")
            return
        tmp = _temp_name(os.path.dirname(lreal), os.path.basename(lreal))
        os.symlink(treal, tmp)
        backup = self._backup(lreal)
        try:
            os.replace(tmp, lreal)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            if backup is not None:
                os.unlink(backup)
            raise
        try:
            os.stat(lreal)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            # replacing a link can make the new target run through the link itself
            if backup is not None:
                os.replace(backup, lreal)
            else:
                os.unlink(lreal)
            raise SymlinkLoopError(
                "the new link would form a loop", path=lvp, backend=self.name
            ) from exc
        if backup is not None:
            os.unlink(backup)

    def _move(self, src: str, dst: str, replace_symlinks: bool) -> None:
        svp, sreal = self._locate(src, follow=False)
        dvp, dreal = self._locate(dst, follow=False)
        try:
            sst = os.lstat(sreal)
        except OSError as exc:
            self._raise_os_error(exc, svp, "cannot move")
        if dvp == "/":
            raise AlreadyExistsError("destination exists", path=dvp, backend=self.name)
        self._check_parent(dvp, dreal)
        dkind = self.entry_kind(dvp, follow_symlinks=False)
        if dkind is not None and not (dkind == "symlink" and replace_symlinks):
            raise AlreadyExistsError("destination exists", path=dvp, backend=self.name)
        is_dir = stat_mod.S_ISDIR(sst.st_mode)
        if is_dir:
            rsrc = os.path.realpath(sreal)
            rdst = os.path.join(os.path.realpath(os.path.dirname(dreal)), os.path.basename(dreal))
            if rdst == rsrc or rdst.startswith(rsrc + "/"):
                raise InvalidPathError(
                    "cannot move a directory into itself", path=dvp, backend=self.name
                )
        try:
            if dkind == "symlink":
                if is_dir:
                    os.unlink(dreal)
                    self._rename_dir_no_clobber(sreal, dvp, dreal)
                else:
                    os.replace(sreal, dreal)
            elif is_dir:
                self._rename_dir_no_clobber(sreal, dvp, dreal)
            else:
                self._move_no_clobber(sreal, dvp, dreal)
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                self._move_across_devices(sreal, dvp, dreal, is_dir)
                return
            self._raise_os_error(exc, dvp, "cannot move")

    def _move_across_devices(self, sreal: str, dvp: str, dreal: str, is_dir: bool) -> None:
        directory, base = os.path.split(dreal)
        tmp = _temp_name(directory, base)
        try:
            if is_dir:
                shutil.copytree(sreal, tmp, symlinks=True)
                self._rename_dir_no_clobber(tmp, dvp, dreal)
            else:
                shutil.copy2(sreal, tmp, follow_symlinks=False)
                self._publish(tmp, dvp, dreal, overwrite=False)
        except BaseException:
            if os.path.isdir(tmp) and not os.path.islink(tmp):
                shutil.rmtree(tmp)
            elif os.path.lexists(tmp):
                os.unlink(tmp)
            raise
        if is_dir:
            shutil.rmtree(sreal)
        else:
            os.unlink(sreal)

    def copy(self, src: vpaths.PathLike, dst: vpaths.PathLike, *, overwrite: bool = False) -> None:
        """Copy a file's bytes (atomically) or a directory tree (links kept as links).

        A file copy needs ``dst`` to have the same format as ``src`` (it copies bytes,
        it does not convert); ``overwrite`` applies to files; a directory copy needs a
        new ``dst``.
        """
        svp, sreal = self._locate(src)
        dvp, dreal = self._locate(dst, follow=False)
        kind = self.entry_kind(svp)
        if kind is None:
            # the OS says why: missing, a parent that is a file, or a link loop
            try:
                os.stat(sreal)
            except OSError as exc:
                self._raise_os_error(exc, svp, "cannot copy")
            raise NotFoundError("no such file or directory", path=svp, backend=self.name)
        if kind == "file":
            # the target rules first: a directory is never replaced, whatever its name
            self._check_target(dvp, dreal, overwrite)
            source_name = os.path.basename(os.path.realpath(sreal))
            scodec, dcodec = self.codecs.for_name(source_name), self._codec(dvp)
            if scodec is not dcodec:
                raise DataFormatError(
                    f"copy does not convert formats ({scodec.name if scodec else 'unknown'} "
                    f"to {dcodec.name}); load and save instead",
                    path=dvp,
                    backend=self.name,
                )

            def writer(fh: IO[bytes]) -> None:
                with open(sreal, "rb") as source:
                    shutil.copyfileobj(source, fh, 1 << 20)

            tmp = self._write_temp(dvp, dreal, None, None, {}, writer=writer)
            try:
                self._publish(tmp, dvp, dreal, overwrite)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            return
        if dvp == "/" or os.path.lexists(dreal):
            raise AlreadyExistsError("copy destination exists", path=dvp, backend=self.name)
        self._check_target(dvp, dreal, overwrite=False)
        rsrc = os.path.realpath(sreal)
        rdst = os.path.join(os.path.realpath(os.path.dirname(dreal)), os.path.basename(dreal))
        if rdst == rsrc or rdst.startswith(rsrc + "/"):
            raise InvalidPathError(
                "cannot copy a directory into itself", path=dvp, backend=self.name
            )
        tmp = _temp_name(os.path.dirname(dreal), os.path.basename(dreal))
        try:
            shutil.copytree(
                rsrc,
                tmp,
                symlinks=True,
                ignore=lambda _d, names: [n for n in names if is_temp_name(n)],
            )
            self._rename_dir_no_clobber(tmp, dvp, dreal)
        except BaseException:
            if os.path.isdir(tmp):
                shutil.rmtree(tmp)
            raise
