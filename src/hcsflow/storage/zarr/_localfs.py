"""Local zarr stores, contained: every byte goes through :class:`~hcsflow.storage._contain.Tree`.

:class:`LocalFS` is the local implementation of the zarr package's small filesystem
interface (see :mod:`hcsflow.storage.zarr._io`), and :class:`ContainedStore` is a
zarr-python store over it, so chunk reads and writes made by zarr-python itself are
resolved through directory descriptors too.  A rooted zarr backend, and a plate store
opened by path, are therefore contained like the disk backend: a symlink on the way
that leads out of the root raises :class:`~hcsflow.errors.PathEscapeError`, and one
swapped in meanwhile cannot redirect a read, write or delete.

Temporary names made here carry a writer tag (:mod:`hcsflow.storage._debris`):
``<name>.<tag>.partial`` while a file is written, ``<name>.<hash>.deleting`` while a
tree is removed (any process may finish removing such a tree).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat as stat_mod
from typing import Any

from hcsflow import paths as vpaths
from hcsflow.errors import CorruptStoreError, PathEscapeError
from hcsflow.storage._contain import (
    EscapeError,
    Tree,
    copy_file_at,
    rename_noreplace,
    special_file,
)
from hcsflow.storage._debris import (
    NAME_MAX,
    bounded_name,
    lock,
    lock_held,
    tag_of,
    writer_state,
    writer_tag,
)
from hcsflow.storage._limits import StorageLimits
from hcsflow.storage.zarr._io import _FS, BACKEND

__all__ = ["LocalFS", "birth_name", "deleting_name", "partial_name", "remove_entry", "read_fd"]

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
#: suffix bytes of ".<32 hex>.partial" / ".deleting"
_SUFFIX_BYTES = 1 + 32 + len(".deleting")


def partial_name(name: str) -> str:
    """A fresh in-flight name for ``name`` (``<name>.<writer tag>.partial``)."""
    return f"{bounded_name(name, NAME_MAX - _SUFFIX_BYTES)}.{writer_tag()}.partial"


def deleting_name(name: str) -> str:
    """The fixed name a tree ``name`` is renamed to while it is removed."""
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:32]
    return f"{bounded_name(name, NAME_MAX - _SUFFIX_BYTES)}.{digest}.deleting"


def birth_name(name: str) -> str:
    """The fixed hidden name that claims the build of a new node ``name`` (a symlink)."""
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:32]
    return f".{bounded_name(name, NAME_MAX - _SUFFIX_BYTES - 1)}.{digest}.partial"


class LocalFS(_FS):
    """The local file system below ``root`` (``None``: the whole file system, uncontained)."""

    local = True

    def __init__(self, root: str | None, limits: StorageLimits | None = None):
        self.tree = Tree(root)
        self.prefix = self.tree.root or ""
        self.limits = limits if limits is not None else StorageLimits()

    def __reduce__(self) -> tuple[Any, ...]:
        return (LocalFS, (self.tree.root, self.limits))

    # ------------------------------------------------------------------ paths

    def vpath(self, path: str) -> str:
        """The path below the root of the real path ``path`` (a virtual path)."""
        if not self.prefix:
            return vpaths.normalize_path(path, backend=BACKEND)
        if path == self.prefix:
            return "/"
        if not path.startswith(self.prefix + "/"):
            raise PathEscapeError(
                f"path is outside the store root {self.prefix!r}", path=path, backend=BACKEND
            )
        return vpaths.normalize_path(path[len(self.prefix) :], backend=BACKEND)

    def _escape(self, path: str, exc: EscapeError) -> PathEscapeError:
        return PathEscapeError(
            f"a symlink on the way leads outside the store root (to {exc.target!r})",
            path=path,
            backend=BACKEND,
        )

    @contextlib.contextmanager
    def _parent(self, path: str, *, create: bool = False) -> Any:
        """(directory descriptor, name) of ``path``'s parent (created when ``create``)."""
        vp = self.vpath(path)
        head, _, name = vp.rpartition("/")
        parent = head or "/"
        try:
            try:
                fd, _ = self.tree.open_dir(parent)
            except FileNotFoundError:
                if not create:
                    raise
                self.tree.makedirs(parent)
                fd, _ = self.tree.open_dir(parent)
        except EscapeError as exc:
            raise self._escape(path, exc) from exc
        try:
            yield fd, name
        finally:
            os.close(fd)

    def kind(self, path: str) -> str | None:
        """``"directory"``, ``"file"`` or ``None``; links inside the root are followed.

        A link leading out of the root is a ``"file"`` here (something is there), and
        reading it raises :class:`~hcsflow.errors.PathEscapeError`.
        """
        try:
            _, st = self.tree.lookup(self.vpath(path), follow=True)
        except EscapeError:
            return "file"
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return None
            raise
        if st is None:
            return None
        return "directory" if stat_mod.S_ISDIR(st.st_mode) else "file"

    # ------------------------------------------------------------------ bytes

    def read(self, path: str, limit: int | None = None) -> bytes | None:
        opened = self.open_regular(self.vpath(path))
        if opened is None:
            return None
        fd, st = opened
        try:
            return read_fd(fd, limit, st.st_size)
        finally:
            os.close(fd)

    def open_regular(self, vp: str) -> tuple[int, os.stat_result] | None:
        """(descriptor, ``fstat``) of the regular file at the virtual path ``vp``, open
        for reading; ``None`` when nothing, or a directory, is there.  Anything else (a
        FIFO...) raises :class:`CorruptStoreError`: reading it could wait forever."""
        try:
            fd, _ = self.tree.open_file(vp, os.O_RDONLY)
        except EscapeError as exc:
            raise self._escape(self.tree.real(vp), exc) from exc
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ELOOP):
                return None
            raise
        try:
            st = os.fstat(fd)
            if stat_mod.S_ISREG(st.st_mode):
                return fd, st
            special = None if stat_mod.S_ISDIR(st.st_mode) else special_file(st.st_mode)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        if special is not None:
            raise CorruptStoreError(
                f"is {special}, not a regular file", path=self.tree.real(vp), backend=BACKEND
            )
        return None

    def _write_new(self, dir_fd: int, name: str, data: Any, *, truncate: bool = False) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_TRUNC if truncate else os.O_EXCL)
        fd = os.open(name, flags, 0o666, dir_fd=dir_fd)
        try:
            view = memoryview(data).cast("B")
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)

    def write_atomic(self, path: str, data: bytes) -> None:
        with self._parent(path, create=True) as (dir_fd, name):
            tmp = partial_name(name)
            try:
                self._write_new(dir_fd, tmp, data)
                os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=dir_fd)
                raise

    def write_unpublished(self, path: str, data: bytes) -> None:
        with self._parent(path, create=True) as (dir_fd, name):
            self._write_new(dir_fd, name, data, truncate=True)

    def write_exclusive(self, path: str, data: bytes) -> bool:
        with self._parent(path, create=True) as (dir_fd, name):
            tmp = partial_name(name)
            self._write_new(dir_fd, tmp, data)
            try:
                # fails if the name exists: an atomic create-once
                os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
                return True
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp, dir_fd=dir_fd)

    # ------------------------------------------------------------------ tree

    def is_file(self, path: str) -> bool:
        return self.kind(path) == "file"

    def is_dir(self, path: str) -> bool:
        return self.kind(path) == "directory"

    def open_listed_dir(self, path: str) -> int | None:
        """A descriptor of the directory ``path`` (contained) for listing it, or ``None``
        when there is no directory there (a listing of nothing is empty)."""
        try:
            fd, _ = self.tree.open_dir(self.vpath(path))
        except EscapeError as exc:
            raise self._escape(path, exc) from exc
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            raise
        return fd

    def list(self, path: str) -> list[str]:
        fd = self.open_listed_dir(path)
        if fd is None:
            return []
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    def remove_tree(self, path: str) -> None:
        if path == self.prefix or self.vpath(path) == "/":
            raise PathEscapeError("refusing to remove the store root", path=path, backend=BACKEND)
        with (
            contextlib.suppress(FileNotFoundError, NotADirectoryError),
            self._parent(path) as (dir_fd, name),
        ):
            remove_entry(dir_fd, name)

    def remove_file(self, path: str) -> None:
        with (
            contextlib.suppress(FileNotFoundError, NotADirectoryError),
            self._parent(path) as (dir_fd, name),
        ):
            os.unlink(name, dir_fd=dir_fd)

    def copy_tree(self, src: str, dst: str) -> None:
        with self._parent(src) as (sdir, sname), self._parent(dst, create=True) as (ddir, dname):
            st = os.stat(sname, dir_fd=sdir, follow_symlinks=False)
            if stat_mod.S_ISDIR(st.st_mode):
                sfd = os.open(sname, _DIR, dir_fd=sdir)
                try:
                    Tree.copytree(sfd, ddir, dname)
                finally:
                    os.close(sfd)
            else:
                copy_file_at(sdir, sname, ddir, dname)

    def rename_tree(self, src: str, dst: str) -> None:
        with self._parent(src) as (sdir, sname), self._parent(dst, create=True) as (ddir, dname):
            try:
                os.rename(sname, dname, src_dir_fd=sdir, dst_dir_fd=ddir)
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    raise FileExistsError(dst) from exc
                raise

    def born_locked_dir(self, path: str, tmp: str) -> int:
        """Create the directory ``path`` already locked (``flock``); returns the locked fd.

        It is made as ``tmp`` next to it, locked, then renamed, so no one ever sees the
        name ``path`` unlocked before its writer is done with it.
        """
        with self._parent(path, create=True) as (dir_fd, name):
            os.mkdir(tmp, dir_fd=dir_fd)
            try:
                fd = os.open(tmp, _DIR, dir_fd=dir_fd)
                lock(fd)
                os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.rmdir(tmp, dir_fd=dir_fd)
                raise
            return fd

    def birth_dir(self, path: str) -> tuple[int, str]:
        """(locked descriptor, real path) of a new hidden directory to build ``path`` in.

        The directory gets a tagged name (:func:`partial_name`), and a symlink with the
        fixed :func:`birth_name` is made to it *first*, in one atomic step: the link
        claims the build and names its builder, so the next write of ``path`` finds the
        debris of a builder that died (:meth:`clean_siblings`).  While a live builder
        holds the claim, this one builds unclaimed.
        """
        with self._parent(path, create=True) as (dir_fd, name):
            head = path.rsplit("/", 1)[0]
            tagged = partial_name(name)
            fixed = birth_name(name)
            for _attempt in range(4):
                try:
                    os.symlink(tagged, fixed, dir_fd=dir_fd)
                    break
                except FileExistsError:
                    if not _remove_dead_claim(dir_fd, fixed):
                        break  # a builder at work holds it
            os.mkdir(tagged, dir_fd=dir_fd)
            fd = os.open(tagged, _DIR, dir_fd=dir_fd)
            lock(fd)
            return fd, f"{head}/{tagged}"

    def publish_dir(self, built: str, path: str) -> bool:
        """Rename the directory ``built`` to ``path`` unless ``path`` exists (then ``False``).

        Either way the build's claim (see :meth:`birth_dir`) is released.
        """
        with self._parent(path) as (dir_fd, name):
            bname = built.rsplit("/", 1)[1]
            try:
                return self._rename_no_clobber(dir_fd, bname, name)
            finally:
                _release_claim(dir_fd, birth_name(name), bname)

    def release_claim(self, built: str, path: str) -> None:
        """Release the build claim of ``path`` if it names ``built`` (a build given up)."""
        with (
            contextlib.suppress(FileNotFoundError, NotADirectoryError),
            self._parent(path) as (dir_fd, name),
        ):
            _release_claim(dir_fd, birth_name(name), built.rsplit("/", 1)[1])

    @staticmethod
    def _rename_no_clobber(dir_fd: int, src: str, dst: str) -> bool:
        try:
            if rename_noreplace(src, dst, dir_fd, dir_fd):
                return True
        except FileExistsError:
            return False
        # no renameat2 here: check as late as possible
        try:
            os.stat(dst, dir_fd=dir_fd, follow_symlinks=False)
            return False
        except FileNotFoundError:
            pass
        try:
            os.rename(src, dst, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                return False
            raise
        return True

    def clean_siblings(self, path: str) -> int:
        """Remove debris next to ``path``: its interrupted removal and the build of a
        builder that died (see :func:`deleting_name`, :func:`birth_name`); how many."""
        removed = 0
        with (
            contextlib.suppress(FileNotFoundError, NotADirectoryError),
            self._parent(path) as (dir_fd, name),
        ):
            doomed = deleting_name(name)
            try:
                os.stat(doomed, dir_fd=dir_fd, follow_symlinks=False)
                Tree.rmtree(dir_fd, doomed)
                removed += 1
            except FileNotFoundError:
                pass
            removed += _remove_dead_claim(dir_fd, birth_name(name))
        return removed

    def locked(self, path: str) -> bool:
        """Whether a writer holds the lock of the directory ``path`` (``False`` if gone)."""
        try:
            fd, _ = self.tree.open_dir(self.vpath(path))
        except (OSError, EscapeError):
            return False
        try:
            return lock_held(fd)
        finally:
            os.close(fd)

    def touch_parent(self, path: str) -> None:
        """Set the times of ``path``'s parent directory to now (its change time moves)."""
        with (
            contextlib.suppress(FileNotFoundError, NotADirectoryError),
            self._parent(path) as (dir_fd, _),
        ):
            os.utime(dir_fd)

    def makedirs(self, path: str) -> None:
        try:
            self.tree.makedirs(self.vpath(path))
        except EscapeError as exc:
            raise self._escape(path, exc) from exc

    def zarr_store(self, path: str) -> Any:
        from hcsflow.storage.zarr._zstore import ContainedStore

        return ContainedStore(self, self.vpath(path))


def remove_entry(dir_fd: int, name: str) -> None:
    """Remove the file or tree ``name``; a tree is first renamed to its deleting name.

    The rename makes the node disappear for readers in one step; a tree already being
    deleted under that name (by a writer that died, or one at work now) is removed too.
    """
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat_mod.S_ISDIR(st.st_mode):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)
        return
    doomed = deleting_name(name)
    for _attempt in range(8):
        try:
            os.rename(name, doomed, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            break
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            # the deleting name holds an earlier tree that was not finished: finish it
            Tree.rmtree(dir_fd, doomed)
    else:
        Tree.rmtree(dir_fd, name)
        return
    with contextlib.suppress(FileNotFoundError):
        Tree.rmtree(dir_fd, doomed)


def _remove_dead_claim(dir_fd: int, fixed: str) -> int:
    """Remove the build claim ``fixed`` and its directory if the builder died; how many.

    ``0`` when there is no claim or its builder may be at work.
    """
    try:
        target = os.readlink(fixed, dir_fd=dir_fd)
    except FileNotFoundError:
        return 0
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        # not a link: a directory of its own; removed once nobody holds its lock
        if _locked_dir(dir_fd, fixed):
            return 0
        Tree.rmtree(dir_fd, fixed)
        return 1
    if "/" in target or writer_state(tag_of(target)) != "dead":
        return 0
    with contextlib.suppress(FileNotFoundError):
        st = os.stat(target, dir_fd=dir_fd, follow_symlinks=False)
        if stat_mod.S_ISDIR(st.st_mode):
            Tree.rmtree(dir_fd, target)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(fixed, dir_fd=dir_fd)
    return 1


def _release_claim(dir_fd: int, fixed: str, built: str) -> None:
    """Remove the build claim ``fixed`` if it is this build's (it names ``built``)."""
    try:
        if os.readlink(fixed, dir_fd=dir_fd) == built:
            os.unlink(fixed, dir_fd=dir_fd)
    except OSError:
        return


def _locked_dir(dir_fd: int, name: str) -> bool:
    """Whether a writer holds the lock of the directory ``name`` (``False`` if gone)."""
    try:
        fd = os.open(name, _DIR, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        return lock_held(fd)
    finally:
        os.close(fd)


def read_fd(fd: int, limit: int | None, size: int | None = None) -> bytes:
    """The bytes of ``fd`` (up to ``limit + 1`` of them); ``size``: its ``st_size``
    when the caller has it (else one more ``fstat``)."""
    if size is None:
        size = os.fstat(fd).st_size
    want = size if limit is None else min(size, limit + 1)
    chunks = []
    while want > 0:
        chunk = os.read(fd, want)
        if not chunk:
            break
        chunks.append(chunk)
        want -= len(chunk)
    return b"".join(chunks)
