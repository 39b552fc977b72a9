"""The disk backend: real files and directories, formats chosen by extension.

Path mapping: without a root a virtual path *is* the real absolute path; with a root,
virtual ``/a/b`` is ``<root>/a/b``.  Virtual paths cannot climb above ``/`` (see
:mod:`hcsflow.paths`), and below a root every operation is resolved through directory
descriptors (see :mod:`hcsflow.storage._contain`): a symlink leading out of the root
raises :class:`~hcsflow.errors.PathEscapeError`, and one swapped in by another process
while an operation runs cannot redirect it.

Symlinks are real OS symlinks storing the absolute real path of their target, so a
link keeps pointing at the same virtual path when it (or a directory holding it) is
moved or copied - the same as the memory backend.  Writes are atomic (see
:mod:`hcsflow.storage.disk._publish`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat as stat_mod
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
from hcsflow.storage._base import EntryKind, FileInfo
from hcsflow.storage._contain import EscapeError, Tree, copy_file_at
from hcsflow.storage.disk._paths import _kind
from hcsflow.storage.disk._publish import _DiskPublish, is_temp_name, temp_name

__all__ = ["DiskStorageBackend"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


class DiskStorageBackend(_DiskPublish):
    """Files on a local file system.

    ``root``: directory that virtual ``/`` maps to (``None``: the file system root).
    ``codecs``: the format registry (default: :func:`default_codecs`).
    ``fsync``: flush data to the device before publishing a write (durability across
    power loss; atomicity does not depend on it).
    ``max_workers``: threads for ``save_batch``/``load_batch``
    (default ``min(32, cpu_count * 4)``).
    ``limits``: :class:`~hcsflow.storage.StorageLimits` checked before decoding.
    """

    # ------------------------------------------------------------------ queries

    def entry_kind(
        self, path: vpaths.PathLike, *, follow_symlinks: bool = True
    ) -> EntryKind | None:
        """Kind of entry at ``path``; ``None`` when missing, dangling or looping."""
        vp = self.norm(path)
        try:
            _, st = self._tree.lookup(vp, follow=follow_symlinks)
        except EscapeError as exc:
            self._raise_os_error(exc, vp, "cannot resolve path")
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return None
            self._raise_os_error(exc, vp, "cannot resolve path")
        return None if st is None else _kind(st.st_mode)

    def list_dir(self, directory: vpaths.PathLike) -> list[str]:
        """Entry names in ``directory`` (in-flight temporary files hidden), naturally sorted."""
        vp = self.norm(directory)
        try:
            fd, _ = self._tree.open_dir(vp)
        except (OSError, EscapeError) as exc:
            self._raise_os_error(exc, vp, "cannot list directory")
        try:
            with os.scandir(fd) as it:
                names = [e.name for e in it if not is_temp_name(e.name)]
        finally:
            os.close(fd)
        return vpaths.natural_sorted(names)

    def _scan_dir(self, directory: str) -> tuple[list[str], list[str]]:
        """Files and subdirectories of one directory, from one ``scandir`` pass.

        The kinds come from the directory entries themselves (no ``stat`` per entry
        except for symlinks, which resolve inside the root); in-flight temporary files
        are hidden.
        """
        try:
            fd, _ = self._tree.open_dir(directory)
        except (OSError, EscapeError) as exc:
            self._raise_os_error(exc, directory, "cannot list directory")
        files: list[str] = []
        subdirs: list[str] = []
        links: list[str] = []
        try:
            with os.scandir(fd) as it:
                for entry in it:
                    name = entry.name
                    if name[0] == "." and is_temp_name(name):
                        continue
                    # regular files first: one call for the usual entry
                    if entry.is_file(follow_symlinks=False):
                        files.append(name)
                    elif entry.is_dir(follow_symlinks=False):
                        subdirs.append(name)
                    elif entry.is_symlink():
                        links.append(name)
                    else:
                        files.append(name)  # as before: other entry types list as files
        finally:
            os.close(fd)
        prefix = directory + "/" if directory != "/" else "/"
        files += [name for name in links if self.entry_kind(prefix + name) == "file"]
        return files, subdirs

    def read_link(self, link: vpaths.PathLike) -> str:
        """The virtual path the symlink ``link`` points at."""
        vp = self.norm(link)
        with self._parent_at(vp) as (dir_fd, name, pvp):
            try:
                target = os.readlink(name, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno == errno.EINVAL:
                    raise InvalidPathError("not a symlink", path=vp, backend=self.name) from exc
                self._raise_os_error(exc, vp, "cannot read link")
        return self._virtual_target(target, pvp, vp)

    def stat(self, path: vpaths.PathLike) -> FileInfo:
        """:class:`FileInfo` for ``path`` itself (a symlink is reported as a symlink)."""
        vp = self.norm(path)
        _, st = self._lookup(vp, follow=False, what="cannot stat")
        if st is None:
            raise NotFoundError(
                "cannot stat: no such file or directory", path=vp, backend=self.name
            )
        kind = _kind(st.st_mode)
        if kind == "symlink":
            return FileInfo(vp, "symlink", target=self.read_link(vp), mtime=st.st_mtime)
        if kind == "directory":
            return FileInfo(vp, "directory", mtime=st.st_mtime)
        return FileInfo(vp, "file", size=st.st_size, mtime=st.st_mtime)

    # ------------------------------------------------------------------ structure

    def ensure_directory(self, directory: vpaths.PathLike) -> str:
        """Create ``directory`` and its missing parents; return its normalised path."""
        vp = self.norm(directory)
        try:
            self._tree.makedirs(vp)
        except EscapeError as exc:
            self._raise_os_error(exc, vp, "cannot create directory")
        except OSError as exc:
            where = exc.filename if isinstance(exc.filename, str) else vp
            if exc.errno == errno.ENOENT:
                raise NotFoundError(
                    "symlink target does not exist", path=where, backend=self.name
                ) from exc
            if exc.errno in (errno.EEXIST, errno.ENOTDIR):
                raise NotADirectoryStorageError(
                    "a file is in the way", path=vp, backend=self.name
                ) from exc
            self._raise_os_error(exc, vp, "cannot create directory")
        return vp

    def _delete(self, path: str, recursive: bool) -> None:
        with self._parent_at(path) as (dir_fd, name, _):
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if not stat_mod.S_ISDIR(st.st_mode):
                    os.unlink(name, dir_fd=dir_fd)
                elif recursive:
                    Tree.rmtree(dir_fd, name)
                else:
                    os.rmdir(name, dir_fd=dir_fd)
            except OSError as exc:
                self._raise_os_error(exc, path, "cannot delete")

    def _create_symlink(self, target: str, link: str, overwrite: bool) -> None:
        # an OS symlink holding the target's absolute real path
        if self.entry_kind(target) is None:
            raise NotFoundError("symlink target does not exist", path=target, backend=self.name)
        if link == "/":
            raise IsADirectoryStorageError("the root is a directory", path=link, backend=self.name)
        treal = self._tree.real(target)
        with self._parent_at(link, writing=True) as (dir_fd, name, _):
            self._check_target_at(dir_fd, name, link, overwrite)
            if not overwrite:
                try:
                    os.symlink(treal, name, dir_fd=dir_fd)
                except OSError as exc:
                    self._raise_os_error(exc, link, "cannot create symlink")
                return
            tmp = temp_name(name)
            os.symlink(treal, tmp, dir_fd=dir_fd)
            backup = self._backup_at(dir_fd, name)
            try:
                os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=dir_fd)
                if backup is not None:
                    os.unlink(backup, dir_fd=dir_fd)
                raise
            try:
                self._tree.lookup(link, follow=True)
            except OSError as exc:
                if exc.errno != errno.ELOOP:
                    raise
                # replacing a link can make the new target run through the link itself
                if backup is not None:
                    os.replace(backup, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                else:
                    os.unlink(name, dir_fd=dir_fd)
                raise SymlinkLoopError(
                    "the new link would form a loop", path=link, backend=self.name
                ) from exc
            except EscapeError:
                pass  # the new link's own chain was checked when its target was
            if backup is not None:
                os.unlink(backup, dir_fd=dir_fd)

    def _move(self, src: str, dst: str, replace_symlinks: bool) -> None:
        with (
            self._parent_at(src) as (sdir, sname, spvp),
            self._parent_at(dst, writing=True) as (ddir, dname, dpvp),
        ):
            try:
                sst = os.stat(sname, dir_fd=sdir, follow_symlinks=False)
            except OSError as exc:
                self._raise_os_error(exc, src, "cannot move")
            if dst == "/":
                raise AlreadyExistsError("destination exists", path=dst, backend=self.name)
            try:
                dst_st: os.stat_result | None = os.stat(dname, dir_fd=ddir, follow_symlinks=False)
            except FileNotFoundError:
                dst_st = None
            dkind = None if dst_st is None else _kind(dst_st.st_mode)
            if dkind is not None and not (dkind == "symlink" and replace_symlinks):
                raise AlreadyExistsError("destination exists", path=dst, backend=self.name)
            is_dir = stat_mod.S_ISDIR(sst.st_mode)
            if is_dir and vpaths.is_relative_to(vpaths.join(dpvp, dname), vpaths.join(spvp, sname)):
                raise InvalidPathError(
                    "cannot move a directory into itself", path=dst, backend=self.name
                )
            try:
                if dkind == "symlink" and not is_dir:
                    os.replace(sname, dname, src_dir_fd=sdir, dst_dir_fd=ddir)
                    return
                if dkind == "symlink":
                    os.unlink(dname, dir_fd=ddir)
                if is_dir:
                    self._rename_dir_no_clobber(sdir, sname, ddir, dname, dst)
                else:
                    self._move_no_clobber(sdir, sname, ddir, dname, dst)
            except OSError as exc:
                if exc.errno == errno.EXDEV:
                    self._move_across_devices(sdir, sname, ddir, dname, dst, is_dir)
                    return
                if exc.errno == errno.EINVAL and is_dir:
                    raise InvalidPathError(
                        "cannot move a directory into itself", path=dst, backend=self.name
                    ) from exc
                self._raise_os_error(exc, dst, "cannot move")

    def _rename_dir_no_clobber(self, sdir: int, sname: str, ddir: int, dname: str, vp: str) -> None:
        """Rename a directory unless something is at the destination by then.

        ``os.rename`` would silently replace an empty directory that appeared after the
        caller's check; ``renameat2(RENAME_NOREPLACE)`` refuses it in the same step.
        """
        if self._rename_noreplace_or_refuse(sdir, sname, ddir, dname, vp):
            return
        # no renameat2 on this platform or file system: check as late as possible
        try:
            os.stat(dname, dir_fd=ddir, follow_symlinks=False)
        except FileNotFoundError:
            os.rename(sname, dname, src_dir_fd=sdir, dst_dir_fd=ddir)
            return
        raise AlreadyExistsError("destination exists", path=vp, backend=self.name)

    def _move_no_clobber(self, sdir: int, sname: str, ddir: int, dname: str, vp: str) -> None:
        if self._link_no_clobber(sdir, sname, ddir, dname, vp):
            os.unlink(sname, dir_fd=sdir)
            return
        self._rename_dir_no_clobber(sdir, sname, ddir, dname, vp)

    def _move_across_devices(
        self, sdir: int, sname: str, ddir: int, dname: str, vp: str, is_dir: bool
    ) -> None:
        tmp = temp_name(dname)
        try:
            if is_dir:
                sfd = os.open(sname, _DIR_FLAGS, dir_fd=sdir)
                try:
                    Tree.copytree(sfd, ddir, tmp)
                finally:
                    os.close(sfd)
                self._rename_dir_no_clobber(ddir, tmp, ddir, dname, vp)
            else:
                copy_file_at(sdir, sname, ddir, tmp)
                self._publish_named(ddir, tmp, dname, vp, overwrite=False)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(tmp, dir_fd=ddir, follow_symlinks=False)
                if stat_mod.S_ISDIR(st.st_mode):
                    Tree.rmtree(ddir, tmp)
                else:
                    os.unlink(tmp, dir_fd=ddir)
            raise
        if is_dir:
            Tree.rmtree(sdir, sname)
        else:
            os.unlink(sname, dir_fd=sdir)

    def copy(self, src: vpaths.PathLike, dst: vpaths.PathLike, *, overwrite: bool = False) -> None:
        """Copy a file's bytes (atomically) or a directory tree (links kept as links).

        A file copy needs ``dst`` to have the same format as ``src`` (it copies bytes,
        it does not convert); ``overwrite`` applies to files; a directory copy needs a
        new ``dst``.
        """
        svp, dvp = self.norm(src), self.norm(dst)
        rsrc, st = self._lookup(svp, follow=True, what="cannot copy")
        if st is None:
            raise NotFoundError("no such file or directory", path=svp, backend=self.name)
        if not stat_mod.S_ISDIR(st.st_mode):
            self._copy_file(svp, rsrc, dvp, overwrite)
            return
        if dvp == "/" or self.entry_kind(dvp, follow_symlinks=False) is not None:
            raise AlreadyExistsError("copy destination exists", path=dvp, backend=self.name)
        with self._parent_at(dvp, writing=True) as (ddir, dname, dpvp):
            if vpaths.is_relative_to(vpaths.join(dpvp, dname), rsrc):
                raise InvalidPathError(
                    "cannot copy a directory into itself", path=dvp, backend=self.name
                )
            try:
                sfd, _ = self._tree.open_dir(rsrc)
            except (OSError, EscapeError) as exc:
                self._raise_os_error(exc, svp, "cannot copy")
            tmp = temp_name(dname)
            try:
                try:
                    Tree.copytree(sfd, ddir, tmp, skip=is_temp_name)
                finally:
                    os.close(sfd)
                self._rename_dir_no_clobber(ddir, tmp, ddir, dname, dvp)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    Tree.rmtree(ddir, tmp)
                raise

    def _copy_file(self, svp: str, rsrc: str, dvp: str, overwrite: bool) -> None:
        with self._parent_at(dvp, writing=True) as (ddir, dname, _):
            # the target rules first: a directory is never replaced, whatever its name
            self._check_target_at(ddir, dname, dvp, overwrite)
            scodec, dcodec = self.codecs.for_name(vpaths.name(rsrc)), self._codec(dvp)
            if scodec is not dcodec:
                raise DataFormatError(
                    f"copy does not convert formats ({scodec.name if scodec else 'unknown'} "
                    f"to {dcodec.name}); load and save instead",
                    path=dvp,
                    backend=self.name,
                )
            sfd, _ = self._open_file(rsrc, os.O_RDONLY, "cannot copy")

            def writer(fh: IO[bytes]) -> None:
                with os.fdopen(sfd, "rb", closefd=False) as source:
                    shutil.copyfileobj(source, fh, 1 << 20)

            try:
                staged = self._stage(ddir, dname, dvp, None, None, {}, writer=writer)
            finally:
                os.close(sfd)
            try:
                self._commit(ddir, dname, dvp, staged, overwrite)
            finally:
                staged.discard(ddir)
            if self.fsync:
                os.fsync(ddir)
