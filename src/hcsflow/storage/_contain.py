"""Kernel-enforced containment: every path below a root is resolved through directory fds.

A string check ("does the resolved path start with the root?") followed by an
operation on the path is a race: between the two, another process can replace a
directory inside the root by a symlink to ``/etc``.  :class:`Tree` never hands a full
path to the kernel.  It opens the root, then resolves the rest *relative to open
directory file descriptors*, and every operation on the last component is an
``*at`` system call on the directory that holds it (``openat``, ``fstatat``,
``unlinkat``, ``renameat2``, ``linkat``, ``mkdirat``, ``symlinkat``, ``readlinkat``).
A component swapped for a symlink after we opened its directory cannot redirect us:

* **openat2** (Linux 5.6+): a path below the root is resolved by one
  ``openat2(root_fd, rel, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`` call; the kernel
  refuses anything that would leave the root or pass a symlink, whatever races.
* **The fallback** (older kernels, seccomp filters that hide ``openat2``, macOS...)
  walks one component at a time with ``openat(dir_fd, name, O_NOFOLLOW |
  O_DIRECTORY)``.  A symlink met on the way (``O_NOFOLLOW`` makes it fail instead of
  being followed) is read with ``readlinkat`` and its target is resolved the same way,
  from the root, after checking that it names a path inside the root.  Also race-free,
  at one system call per component.

A path with a symlink on the way makes ``openat2`` fail (``ELOOP``) and is resolved
by the walk, which knows the resolved path of every directory it passes (relative
link targets are joined to it).  Symlinks whose targets
stay inside the root are followed; one leading out is refused with
:class:`~hcsflow.errors.PathEscapeError` naming the path.  A directory *moved* out of
the root while an operation holds it open receives that one operation (as with any
descriptor-based API); nothing is ever reached *through* a link out of the root.

Without a root (``Tree(None)``) paths are the real absolute paths and the kernel
resolves them as usual: there is nothing to contain.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import shutil
import stat as stat_mod
import sys
from collections.abc import Iterator
from typing import Any

from hcsflow import paths as vpaths
from hcsflow.errors import InvalidPathError, PathEscapeError

__all__ = [
    "Tree",
    "EscapeError",
    "MAX_LINK_HOPS",
    "copy_fd",
    "copy_file_at",
    "rename_noreplace",
    "renameat2",
    "special_file",
]

MAX_LINK_HOPS = 40
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC
_NOFOLLOW = os.O_NOFOLLOW
#: added to every file open: opening a FIFO found in a store returns at once instead of
#: waiting forever for a writer (regular files ignore the flag); the caller's ``fstat``
#: then refuses what is not a regular file (:func:`special_file`)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)

_SPECIAL = (
    (stat_mod.S_ISFIFO, "a FIFO"),
    (stat_mod.S_ISSOCK, "a socket"),
    (stat_mod.S_ISCHR, "a character device"),
    (stat_mod.S_ISBLK, "a block device"),
)


def special_file(mode: int) -> str | None:
    """What an entry of ``st_mode`` ``mode`` is when it is neither a regular file nor a
    directory ("a FIFO", "a socket"...), else ``None``: such an entry has no bytes to
    load, and reading it could wait forever or never end."""
    if stat_mod.S_ISREG(mode) or stat_mod.S_ISDIR(mode):
        return None
    return next((what for test, what in _SPECIAL if test(mode)), "not a regular file")


# openat2(2): struct open_how and RESOLVE_* flags (linux/openat2.h)
_SYS_OPENAT2 = 437  # one number on every architecture (the unified syscall table)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
# any link on the way makes the call fail with ELOOP and the walk resolve it: the walk
# knows the resolved path of every directory, which relative link targets need
_RESOLVE = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS
#: errors meaning "no usable openat2 here" (old kernel, seccomp, unknown flags)
_OPENAT2_UNSUPPORTED = frozenset({errno.ENOSYS, errno.EPERM, errno.EINVAL, errno.E2BIG})
#: errors after which the component-by-component walk decides (links, escapes, races)
_OPENAT2_WALK = frozenset({errno.EXDEV, errno.ELOOP, errno.EAGAIN})


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class EscapeError(Exception):
    """A symlink below the root leads outside it (``target`` is its text)."""

    def __init__(self, target: str):
        self.target = target
        super().__init__(target)


@functools.cache
def _openat2_fn() -> Any:
    """``syscall(2)`` bound with ``openat2``'s argument types: a call then converts its
    plain Python arguments itself, which costs a third of wrapping each one in a ctypes
    object (this is on the path of every disk operation)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_long
    fn.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
    return fn


@functools.cache
def _how(flags: int, mode: int) -> tuple[_OpenHow, int]:
    """A shared, never modified ``open_how`` for ``flags`` and ``mode``, and its address."""
    how = _OpenHow(flags | _CLOEXEC, mode, _RESOLVE)
    return how, ctypes.addressof(how)


_HOW_SIZE = ctypes.sizeof(_OpenHow)


class _Openat2:
    """``openat2`` through ``syscall(2)``; disables itself where the kernel lacks it."""

    available: bool = sys.platform.startswith("linux")

    @classmethod
    def call(cls, dirfd: int, rel: str, flags: int, mode: int = 0) -> int | None:
        """An fd, ``None`` when the walk must decide, or an ``OSError`` for real failures."""
        if not cls.available:
            return None
        fn = _openat2_fn()
        if fn is None:
            cls.available = False
            return None
        fd = fn(_SYS_OPENAT2, dirfd, os.fsencode(rel), _how(flags, mode)[1], _HOW_SIZE)
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err in _OPENAT2_UNSUPPORTED:
            if err != errno.EINVAL or not _openat2_works():
                cls.available = False
            return None
        if err in _OPENAT2_WALK:
            return None
        raise OSError(err, os.strerror(err), rel)


@functools.cache
def _openat2_works() -> bool:
    """Whether ``openat2`` accepts a plain call here (tells EINVAL-as-unsupported apart)."""
    fn = _openat2_fn()
    if fn is None:
        return False
    how = _OpenHow(_DIR_FLAGS, 0, _RESOLVE_BENEATH)
    fd = fn(_SYS_OPENAT2, -100, b".", ctypes.addressof(how), _HOW_SIZE)  # -100: AT_FDCWD
    if fd < 0:
        return False
    os.close(int(fd))
    return True


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


class Tree:
    """A directory tree whose operations the kernel keeps below ``root``.

    Virtual paths are normalised absolute posix paths (:mod:`hcsflow.paths`).  Methods
    raise ``OSError`` with the errno of the component that failed (``ENOENT``,
    ``ENOTDIR``, ``ELOOP`` for more than :data:`MAX_LINK_HOPS` links) or
    :class:`EscapeError`; callers turn both into typed errors for the path they were
    given.  Returned descriptors belong to the caller (close them, or use the
    context-manager helpers).
    """

    def __init__(self, root: str | None):
        if root is None:
            self.root: str | None = None
            self.real_root = "/"
        else:
            real = os.path.abspath(root)
            self.root = None if real == "/" else real.rstrip("/")
            self.real_root = os.path.realpath(real)

    @property
    def contained(self) -> bool:
        """Whether paths are resolved below a root (``False``: the whole file system)."""
        return self.root is not None

    def real(self, vp: str) -> str:
        """The real path of ``vp`` as a string (for messages and unrooted operations)."""
        if self.root is None:
            return vp
        return self.root if vp == "/" else self.root + vp

    def open_root(self) -> int:
        """A new descriptor of the root directory (resolved by the kernel: it is trusted)."""
        return os.open(self.root or "/", _DIR_FLAGS)

    # ------------------------------------------------------------------ links

    def link_target(self, target: str, link_dir: str) -> str:
        """The virtual path a link in directory ``link_dir`` (virtual, resolved) names.

        Absolute targets must lie below the root (its path as given or fully resolved);
        relative ones are joined to ``link_dir`` and may not climb above the root.
        """
        if target.startswith("/"):
            if self.root is None:
                return vpaths.normalize_path(target)
            for prefix in (self.root, self.real_root):
                if target == prefix or target.startswith(prefix + "/"):
                    return vpaths.normalize_path(target[len(prefix) :] or "/")
            raise EscapeError(target)
        try:
            return vpaths.normalize_path(vpaths.join(link_dir, target) if target else link_dir)
        except PathEscapeError as exc:
            raise EscapeError(target) from exc
        except InvalidPathError as exc:
            raise EscapeError(target) from exc

    # ------------------------------------------------------------------ resolution

    def open_dir(self, vp: str) -> tuple[int, str]:
        """(descriptor, resolved virtual path) of the directory ``vp``, links followed."""
        if self.root is None:
            return os.open(vp, _DIR_FLAGS), vp
        root_fd = self.open_root()
        if vp == "/":
            return root_fd, "/"
        try:
            fd = _Openat2.call(root_fd, vp[1:], _DIR_FLAGS)
            if fd is not None:
                return fd, vp  # no link on the way (RESOLVE_NO_SYMLINKS): as named
            return self._walk(root_fd, vp, 0)
        finally:
            _close(root_fd)

    def _walk(self, root_fd: int, vp: str, hops: int) -> tuple[int, str]:
        """Component-by-component resolution of the directory ``vp`` (see the module doc)."""
        pending = [p for p in reversed(vp.split("/")) if p]
        fd = os.dup(root_fd)
        cur = "/"
        try:
            while pending:
                name = pending.pop()
                try:
                    nfd = os.open(name, _DIR_FLAGS | _NOFOLLOW, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise OSError(exc.errno, exc.strerror, vpaths.join(cur, name)) from exc
                    try:
                        target = os.readlink(name, dir_fd=fd)
                    except OSError as exc2:
                        if exc2.errno == errno.EINVAL:  # not a link: a file in the way
                            raise OSError(
                                errno.ENOTDIR, "not a directory", vpaths.join(cur, name)
                            ) from exc2
                        raise
                    hops += 1
                    if hops > MAX_LINK_HOPS:
                        raise OSError(
                            errno.ELOOP, "too many links", vpaths.join(cur, name)
                        ) from exc
                    tvp = self.link_target(target, cur)
                    pending.extend(p for p in reversed(tvp.split("/")) if p)
                    _close(fd)
                    fd = os.dup(root_fd)
                    cur = "/"
                    continue
                _close(fd)
                fd = nfd
                cur = cur + name if cur == "/" else cur + "/" + name
            return fd, cur
        except BaseException:
            _close(fd)
            raise

    def open_parent(self, vp: str) -> tuple[int, str, str]:
        """(descriptor of ``vp``'s parent, last name, resolved virtual path of the parent)."""
        if vp == "/":
            raise OSError(errno.EISDIR, "the root has no parent", vp)
        head, _, name = vp.rpartition("/")
        fd, pvp = self.open_dir(head or "/")
        return fd, name, pvp

    @contextlib.contextmanager
    def parent(self, vp: str) -> Iterator[tuple[int, str, str]]:
        """:meth:`open_parent` as a context manager that closes the descriptor."""
        fd, name, pvp = self.open_parent(vp)
        try:
            yield fd, name, pvp
        finally:
            os.close(fd)

    def lookup(self, vp: str, *, follow: bool) -> tuple[str, os.stat_result | None]:
        """(resolved virtual path, ``lstat`` of it or ``None`` if missing), links followed
        through the last component when ``follow``."""
        if self.root is None:
            try:
                return vp, os.stat(vp, follow_symlinks=follow)
            except FileNotFoundError:
                return vp, None
        hops = 0
        while True:
            if vp == "/":
                fd = self.open_root()
                try:
                    return "/", os.fstat(fd)
                finally:
                    os.close(fd)
            with self.parent(vp) as (pfd, name, pvp):
                full = vpaths.join(pvp, name)
                try:
                    st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                except FileNotFoundError:
                    return full, None
                if not (follow and stat_mod.S_ISLNK(st.st_mode)):
                    return full, st
                target = os.readlink(name, dir_fd=pfd)
            hops += 1
            if hops > MAX_LINK_HOPS:
                raise OSError(errno.ELOOP, "too many links", vp)
            vp = self.link_target(target, pvp)

    def open_file(self, vp: str, flags: int = os.O_RDONLY) -> tuple[int, str]:
        """(descriptor, resolved virtual path) of the file ``vp``, links followed.

        Opened with ``O_NONBLOCK``: a FIFO opens at once (check :func:`special_file`)."""
        flags |= _NONBLOCK
        if self.root is None:
            return os.open(vp, flags | _CLOEXEC), vp
        root_fd = self.open_root()
        try:
            fd = _Openat2.call(root_fd, vp[1:], flags) if vp != "/" else None
            if fd is not None:
                return fd, vp
        finally:
            _close(root_fd)
        hops = 0
        while True:
            with self.parent(vp) as (pfd, name, pvp):
                try:
                    return os.open(name, flags | _NOFOLLOW | _CLOEXEC, dir_fd=pfd), vpaths.join(
                        pvp, name
                    )
                except OSError as exc:
                    if exc.errno != errno.ELOOP:
                        raise OSError(exc.errno, exc.strerror, vpaths.join(pvp, name)) from exc
                    target = os.readlink(name, dir_fd=pfd)
            hops += 1
            if hops > MAX_LINK_HOPS:
                raise OSError(errno.ELOOP, "too many links", vp)
            vp = self.link_target(target, pvp)

    # ------------------------------------------------------------------ trees

    def makedirs(self, vp: str) -> str:
        """Create ``vp`` and missing parents (following links that stay inside the root).

        Returns the resolved virtual path.  ``ENOENT`` for a dangling link in the way
        (nothing is created at its target), ``ENOTDIR``/``EEXIST`` for a file in the way.
        """
        if self.root is None:
            try:
                os.makedirs(vp, exist_ok=True)
            except FileExistsError:
                if os.path.islink(vp) and not os.path.exists(vp):
                    raise OSError(errno.ENOENT, "dangling symlink in the way", vp) from None
                raise
            return vp
        try:
            fd = self.open_root()
        except FileNotFoundError:
            # the root itself is trusted configuration: the kernel may create its path
            os.makedirs(self.root or "/", exist_ok=True)
            fd = self.open_root()
        cur = "/"
        try:
            for name in [p for p in vp.split("/") if p]:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, dir_fd=fd)
                nxt = vpaths.join(cur, name)
                try:
                    nfd = os.open(name, _DIR_FLAGS | _NOFOLLOW, dir_fd=fd)
                    nvp = nxt
                except OSError as exc:
                    if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise
                    try:
                        target = os.readlink(name, dir_fd=fd)
                    except OSError as exc2:
                        raise OSError(errno.EEXIST, "a file is in the way", nxt) from exc2
                    try:
                        nfd, nvp = self.open_dir(self.link_target(target, cur))
                    except FileNotFoundError as exc2:
                        raise OSError(errno.ENOENT, "dangling symlink in the way", nxt) from exc2
                    except NotADirectoryError as exc2:
                        raise OSError(errno.EEXIST, "a file is in the way", nxt) from exc2
                os.close(fd)
                fd, cur = nfd, nvp
            return cur
        finally:
            _close(fd)

    @staticmethod
    def rmtree(dir_fd: int, name: str) -> None:
        """Delete the directory ``name`` in ``dir_fd`` and everything below it.

        Never follows a link (Python's descriptor-based ``rmtree``); entries that vanish
        meanwhile (another deleter) are not an error.
        """

        def onerror(func: Any, path: str, exc_info: Any) -> None:
            if not isinstance(exc_info[1], FileNotFoundError):
                raise exc_info[1]

        shutil.rmtree(name, dir_fd=dir_fd, onerror=onerror)

    @staticmethod
    def copytree(src_fd: int, dst_dir_fd: int, dst_name: str, skip: Any = None) -> None:
        """Copy the directory open as ``src_fd`` to the new ``dst_name`` in ``dst_dir_fd``.

        Links are copied as links; files are copied with their mode and times.  Nothing
        is resolved by path, so a link swapped in meanwhile is copied as a link.
        ``skip(name)``: names not to copy.
        """
        os.mkdir(dst_name, dir_fd=dst_dir_fd)
        dfd = os.open(dst_name, _DIR_FLAGS | _NOFOLLOW, dir_fd=dst_dir_fd)
        try:
            with os.scandir(src_fd) as it:
                entries = [e for e in it if skip is None or not skip(e.name)]
            for entry in entries:
                name = entry.name
                st = os.stat(name, dir_fd=src_fd, follow_symlinks=False)
                if stat_mod.S_ISLNK(st.st_mode):
                    os.symlink(os.readlink(name, dir_fd=src_fd), name, dir_fd=dfd)
                elif stat_mod.S_ISDIR(st.st_mode):
                    sub = os.open(name, _DIR_FLAGS | _NOFOLLOW, dir_fd=src_fd)
                    try:
                        Tree.copytree(sub, dfd, name, skip)
                    finally:
                        os.close(sub)
                else:
                    copy_file_at(src_fd, name, dfd, name)
            src_st = os.fstat(src_fd)
            os.chmod(dfd, stat_mod.S_IMODE(src_st.st_mode))
            os.utime(dfd, ns=(src_st.st_atime_ns, src_st.st_mtime_ns))
        finally:
            os.close(dfd)


def copy_file_at(src_dir: int, src_name: str, dst_dir: int, dst_name: str) -> None:
    """Copy one regular file between directories (exclusive create, mode and times kept)."""
    sfd = os.open(src_name, os.O_RDONLY | _NOFOLLOW | _CLOEXEC, dir_fd=src_dir)
    try:
        st = os.fstat(sfd)
        dfd = os.open(
            dst_name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC,
            stat_mod.S_IMODE(st.st_mode),
            dir_fd=dst_dir,
        )
        try:
            copy_fd(sfd, dfd, st.st_size)
            os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


def copy_fd(src: int, dst: int, size: int | None = None) -> None:
    """Copy all bytes of ``src`` (from its start) to ``dst`` (kernel copy where possible)."""
    if hasattr(os, "copy_file_range"):
        offset = 0
        try:
            while True:
                n = os.copy_file_range(src, dst, 1 << 30, offset, offset)
                if n == 0:
                    return
                offset += n
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            if offset:
                os.lseek(dst, offset, os.SEEK_SET)
            os.lseek(src, offset, os.SEEK_SET)
    else:
        os.lseek(src, 0, os.SEEK_SET)
    while True:
        chunk = os.read(src, 1 << 20)
        if not chunk:
            return
        view = memoryview(chunk)
        while view:
            written = os.write(dst, view)
            view = view[written:]


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
#: errors meaning "this kernel or file system has no renameat2(RENAME_NOREPLACE)"
_NOREPLACE_UNSUPPORTED = frozenset({errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP})


@functools.cache
def renameat2() -> Any:
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


def rename_noreplace(
    src: str, dst: str, src_dir_fd: int = _AT_FDCWD, dst_dir_fd: int = _AT_FDCWD
) -> bool:
    """Rename ``src`` to ``dst`` unless ``dst`` exists, in one atomic step.

    Returns ``False`` (nothing done) where the platform or file system cannot do it;
    raises :class:`FileExistsError` when ``dst`` exists.
    """
    fn = renameat2()
    if fn is None:
        return False
    if fn(src_dir_fd, os.fsencode(src), dst_dir_fd, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
        return True
    err = ctypes.get_errno()
    if err in _NOREPLACE_UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), dst)
