"""The disk backend: real files and directories, formats chosen by extension.

Path mapping: without a root a virtual path *is* the real absolute path; with a root,
virtual ``/a/b`` is ``<root>/a/b``.  Virtual paths cannot climb above ``/`` (see
:mod:`hcsflow.paths`), and when a root is set every path is also checked after the
operating system resolves symlinks, so a link cannot lead outside the root either.

Writes are atomic: data goes to ``.hcsflow-<name>.<random>.tmp`` in the target's
directory, is flushed and fsynced, then published with ``os.replace`` (overwrite) or
``os.link`` + unlink (no overwrite: the kernel refuses an existing target, so a file
that appears concurrently is never clobbered).  Listings hide those temporary names.
Symlinks are real OS symlinks storing the absolute real path of their target, so a
link keeps pointing at the same virtual path when it (or a directory holding it) is
moved or copied - the same as the memory backend.
"""

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
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any, NoReturn

from hcsflow import paths as vpaths
from hcsflow.errors import (
    AlreadyExistsError,
    BatchError,
    CorruptDataError,
    DataFormatError,
    DirectoryNotEmptyError,
    HcsflowError,
    InvalidPathError,
    IsADirectoryStorageError,
    NotADirectoryStorageError,
    NotFoundError,
    PathEscapeError,
    PickleRefusedError,
    StorageError,
    SymlinkLoopError,
    UnsupportedFormatError,
)
from hcsflow.storage._base import Backend, EntryKind, FileInfo, StorageBackend, _check_batch
from hcsflow.storage._batch import (
    batch_workers,
    mean_file_size,
    nbytes_of,
    releases_gil,
    run_batch,
)
from hcsflow.storage._codecs import (
    Codec,
    CodecRefusal,
    CodecRegistry,
    PickleNotAllowed,
    default_codecs,
)

__all__ = ["DiskStorageBackend", "TEMP_PREFIX", "TEMP_SUFFIX", "is_temp_name"]

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


class DiskStorageBackend(StorageBackend):
    """Files on a local file system.

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

    def _codec(self, vp: str) -> Codec:
        codec = self.codecs.for_name(vpaths.name(vp))
        if codec is None:
            known = " ".join(self.codecs.extensions())
            raise UnsupportedFormatError(
                f"no file format for this extension (known: {known})", path=vp, backend=self.name
            )
        return codec

    def _check_options(self, codec: Codec, vp: str, options: dict[str, Any], loading: bool) -> None:
        bad = codec.check_options(options, loading=loading)
        if bad is not None:
            raise DataFormatError(
                f"the {codec.name} format does not take option {bad!r}", path=vp, backend=self.name
            )

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

    def _scan_dir(self, directory: str) -> tuple[list[str], list[str]]:
        """Files and subdirectories of one directory, from one ``scandir`` pass.

        The kinds come from the directory entries themselves (no ``stat`` per entry
        except for symlinks); in-flight temporary files are hidden.
        """
        vdir, rdir = self._locate(directory)
        files: list[str] = []
        subdirs: list[str] = []
        prefix = vdir + "/" if vdir != "/" else "/"
        try:
            with os.scandir(rdir) as it:
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
                        if self._root is not None:
                            self._locate(prefix + name)  # refuses a link out of the root
                        if entry.is_file():
                            files.append(name)
        except OSError as exc:
            self._raise_os_error(exc, vdir, "cannot list directory")
        return files, subdirs

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

    # ------------------------------------------------------------------ load

    def load(self, path: vpaths.PathLike, **options: Any) -> Any:
        """Decode the file at ``path`` (through symlinks) with its extension's format."""
        vp, real = self._locate(path)
        codec = self._codec(vp)
        self._check_options(codec, vp, options, loading=True)
        return self._decode(codec, vp, real, options)

    def _decode(self, codec: Codec, vp: str, real: str, options: dict[str, Any]) -> Any:
        try:
            return codec.decode(real, **options)
        except PickleNotAllowed as exc:
            raise PickleRefusedError(
                f"{exc}; pass allow_pickle=True only for files you trust",
                path=vp,
                backend=self.name,
            ) from exc
        except (MemoryError, ImportError):
            raise
        except OSError as exc:
            mapped = self._os_error(exc, vp, "cannot load")
            if mapped is not None:
                raise mapped from exc
            if exc.errno is not None:  # a real I/O failure, not a decoding one
                raise
            raise CorruptDataError(
                f"cannot decode the file as {codec.name}: {exc}", path=vp, backend=self.name
            ) from exc
        except Exception as exc:
            raise CorruptDataError(
                f"cannot decode the file as {codec.name}: {exc}", path=vp, backend=self.name
            ) from exc

    def load_batch(self, paths: Sequence[vpaths.PathLike], **options: Any) -> list[Any]:
        """Load every path on the thread pool; results in the order of ``paths``.

        A failing item raises :class:`BatchError` naming its path (cause chained).
        """
        jobs = []
        for index, path in enumerate(paths):
            try:
                vp, real = self._locate(path)
                codec = self._codec(vp)
                self._check_options(codec, vp, options, loading=True)
            except HcsflowError as exc:
                raise BatchError(
                    f"batch item {index} cannot be loaded",
                    index=index,
                    path=str(path),
                    backend=self.name,
                ) from exc
            jobs.append((codec, vp, real))
        workers = batch_workers(
            len(jobs),
            mean_file_size([real for _, _, real in jobs]),
            gil_free=all(releases_gil(codec) for codec in {job[0] for job in jobs}),
            max_workers=self.max_workers,
        )
        return run_batch(
            lambda i: self._batch_item(i, jobs[i], options),
            len(jobs),
            workers,
            self._executor() if workers > 1 else None,
        )

    def _batch_item(self, index: int, job: tuple[Codec, str, str], options: dict[str, Any]) -> Any:
        codec, vp, real = job
        try:
            return self._decode(codec, vp, real, options)
        except HcsflowError as exc:
            raise BatchError(
                f"batch item {index} could not be loaded", index=index, path=vp, backend=self.name
            ) from exc

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="hcsflow-disk")
            return self._pool

    # ------------------------------------------------------------------ save

    def _prepare(self, data: Any, vp: str, options: dict[str, Any]) -> tuple[Codec, Any]:
        codec = self._codec(vp)
        self._check_options(codec, vp, options, loading=False)
        try:
            return codec, codec.prepare(data, **options)
        except CodecRefusal as exc:
            raise DataFormatError(
                f"cannot save as {codec.name}: {exc}", path=vp, backend=self.name
            ) from exc

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

        workers = batch_workers(
            len(plans),
            sum(nbytes_of(plan[3]) for plan in plans) / max(1, len(plans)),
            gil_free=all(releases_gil(codec) for codec in {plan[2] for plan in plans}),
            durable=self.fsync,
            max_workers=self.max_workers,
        )
        try:
            run_batch(write, len(plans), workers, self._executor() if workers > 1 else None)
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


def _kind(mode: int) -> EntryKind:
    if stat_mod.S_ISDIR(mode):
        return "directory"
    if stat_mod.S_ISLNK(mode):
        return "symlink"
    return "file"
