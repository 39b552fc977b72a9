"""Where a run writes: a local directory or an fsspec URL, seen the same way by every worker.

An :class:`OutputRoot` is small and picklable (a URL and fsspec options), so each worker
rebuilds its own access to the output from it: the disk backend for a local directory,
:class:`~hcsflow.storage.FsspecStorageBackend` for ``s3://``, ``gs://``... URLs.  Paths in
well plans are *virtual* paths of that backend (the absolute local path, or ``/...``
below the URL); :meth:`OutputRoot.store_url` turns one into what the zarr writers take.

A :class:`WellSink` is what one well writes through, inside the worker: it records every
file the well saves (its commit record lists them with checksums) and makes the first
write of each path in an attempt replace what an earlier, crashed attempt of the same
well left there, so a retried well is idempotent.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import hashlib
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hcsflow import paths as vpaths
from hcsflow.errors import AlreadyExistsError
from hcsflow.storage import (
    Backend,
    BackendRegistry,
    DiskStorageBackend,
    FsspecStorageBackend,
    MemoryStorageBackend,
    StorageBackend,
    ZarrStorageBackend,
)
from hcsflow.storage._fsspec import as_local_path, is_url

__all__ = ["OutputRoot", "WellSink", "INPUT_BACKEND", "ordered_map", "plate_location"]

_IO_LOCK = threading.Lock()
_IO_POOL: cf.ThreadPoolExecutor | None = None


def _reset_io_pool() -> None:
    # a forked child has the parent's pool object but none of its threads
    global _IO_POOL, _IO_LOCK
    _IO_POOL = None
    _IO_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_io_pool)


#: a local seal or flush of at most this many files and folders runs in the calling
#: thread; a larger one goes to the thread pool, where issuing the fsync calls together
#: pays (the plate's files at the end of a run, a Dask worker committing a well of
#: OME-Zarr chunks), unless the caller asks for ``inline``.  A local run commits its
#: wells beside the next well's computation, and there threads cost more than they
#: save: handing a well's dozen files to sixteen threads made the scheduler move the
#: computing thread from one core to the other about 35 times a well (``perf stat``:
#: 2,230 migrations for 64 wells of the demo pipeline writing TIFFs, 9 with the files
#: sealed in the committing thread; 4,597 and 71 writing OME-Zarr, 19 files and 33
#: folders a well), each time leaving its cache behind, for about 1 ms less of sealing
#: per well.
SEAL_INLINE = 16


def _io_pool() -> cf.ThreadPoolExecutor:
    """Threads that hash and fsync files (one pool per process, started on first use).

    fsync calls issued together let the file system flush them in one journal commit
    instead of one commit each; hashlib releases the GIL on large buffers.  Used for
    objects on object storage and for local sets of more than :data:`SEAL_INLINE` files
    and folders.
    """
    global _IO_POOL
    with _IO_LOCK:
        if _IO_POOL is None:
            _IO_POOL = cf.ThreadPoolExecutor(16, thread_name_prefix="hcsflow-seal")
        return _IO_POOL


#: how a file is opened to be hashed and fsynced (Windows flushes only writable handles)
_SEAL_FLAGS = os.O_RDONLY if os.name != "nt" else os.O_RDWR | getattr(os, "O_BINARY", 0)


def local_identity(st: os.stat_result) -> str:
    """A local file's identity for a quick check: ``mtime_ns:ctime_ns:inode``.

    Any write to the file changes its modification time, any change of its metadata
    (including setting the modification time back) its change time, and a file put in
    its place (a copy, a rename over it) has another inode: the quick check git's index
    and rsync rely on, with the change time and inode as git uses them.
    """
    return f"{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"


def _object_identity(details: Any) -> str | None:
    """An object's identity for a quick check: its ETag (S3, GCS, Azure), if it has one."""
    if not isinstance(details, dict):
        return None
    for key in ("ETag", "etag"):
        value = details.get(key)
        if value:
            return f"etag:{str(value).strip(chr(34))}"
    return None


def _hash_fd(fd: int) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    while block := os.read(fd, 1 << 20):
        size += len(block)
        h.update(block)
    return size, h.hexdigest()


def _seal_file(real: str, fsync: bool) -> tuple[int, str, str] | None:
    """(size, sha256, identity) of a local file, flushed to the device first when
    ``fsync``; the identity (:func:`local_identity`) is taken from the open file."""
    try:
        fd = os.open(real, _SEAL_FLAGS)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    try:
        size, digest = _hash_fd(fd)
        if fsync:
            os.fsync(fd)
        ident = local_identity(os.fstat(fd))
    finally:
        os.close(fd)
    return size, digest, ident


def _fsync_path(real: str) -> None:
    if os.name == "nt" and os.path.isdir(real):
        return
    fd = os.open(real, _SEAL_FLAGS if not os.path.isdir(real) else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(real: str) -> None:
    if os.name == "nt":  # directories cannot be opened for flushing there
        return
    fd = os.open(real, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


INPUT_BACKEND = "input"
"""Registry name of the backend a well reads its plate images through when the plate or
the output is a URL (the output then owns the name ``disk``)."""


@dataclass(frozen=True)
class OutputRoot:
    """A run's output: an absolute local directory or an fsspec URL, plus fsspec options."""

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(
        cls, target: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
    ) -> OutputRoot:
        """The root for a path or URL (``file://`` and ``local://`` URLs become local paths)."""
        raw = as_local_path(os.fspath(target))
        if is_url(raw):
            return cls(raw.rstrip("/"), dict(storage_options or {}))
        return cls(os.path.abspath(raw), {})

    @property
    def remote(self) -> bool:
        """Whether the output is an fsspec URL (object storage) rather than a local path."""
        return is_url(self.url)

    @property
    def vroot(self) -> str:
        """The output directory as a virtual path of :meth:`backend`."""
        return "/" if self.remote else vpaths.normalize_path(self.url)

    def backend(self, *, fsync: bool = True) -> StorageBackend:
        """A fresh backend for the output's files (TIFF, CSV, JSON...)."""
        if self.remote:
            return FsspecStorageBackend(self.url, storage_options=self.storage_options)
        return DiskStorageBackend(fsync=fsync)

    def vpath(self, rel: str) -> str:
        """Virtual path of ``rel`` (a posix path relative to the output root)."""
        return vpaths.join(self.vroot, rel) if rel else self.vroot

    def rel(self, vpath: str) -> str:
        """``vpath`` (or a URL below the root) relative to the root; else unchanged."""
        if self.remote and vpath.startswith(self.url + "/"):
            return vpath[len(self.url) + 1 :]
        root = self.vroot
        if vpath == root:
            return ""
        if vpaths.is_relative_to(vpath, root):
            return vpaths.relative_to(vpath, root)
        return vpath

    def store_url(self, vpath: str) -> str:
        """The local path or URL of a virtual path (what the zarr writers take)."""
        if not self.remote:
            return vpath
        rel = self.rel(vpath)
        return f"{self.url}/{rel}" if rel else self.url

    def display(self, rel: str = "") -> str:
        """A user-facing location of ``rel``."""
        return f"{self.url}/{rel}" if rel else self.url

    # ------------------------------------------------------------------ raw access

    def _fs(self) -> tuple[Any, str]:
        import fsspec

        opts = {"use_listings_cache": False, **self.storage_options}
        fs, base = fsspec.core.url_to_fs(self.url, **opts)
        return fs, base.rstrip("/")

    def read_bytes(self, rel: str) -> bytes | None:
        """Raw bytes of a file below the root; ``None`` when it does not exist."""
        if not self.remote:
            try:
                with open(os.path.join(self.url, rel), "rb") as fh:
                    return fh.read()
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return None
        fs, base = self._fs()
        try:
            data: bytes = fs.cat_file(f"{base}/{rel}")
        except (FileNotFoundError, IsADirectoryError):
            return None
        return data

    def sha256(self, rel: str) -> tuple[int, str] | None:
        """(size, sha256) of a file below the root, read in blocks; ``None`` if missing."""
        got = self.hash_file(rel)
        return None if got is None else (got[0], got[1])

    def hash_file(self, rel: str) -> tuple[int, str, str | None] | None:
        """(size, sha256, identity) of a file below the root; ``None`` if missing.

        The identity is what :meth:`identity` compares for a quick check: the file's
        modification and change times and inode (:func:`local_identity`), or an
        object's ETag, as seen by the open that read it (``None``: the store has none).
        """
        if not self.remote:
            try:
                fd = os.open(os.path.join(self.url, rel), os.O_RDONLY)
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return None
            try:
                size, digest = _hash_fd(fd)
                return size, digest, local_identity(os.fstat(fd))
            finally:
                os.close(fd)
        h = hashlib.sha256()
        size = 0
        fs, base = self._fs()
        try:
            fh: Any = fs.open(f"{base}/{rel}", "rb", block_size=1 << 22)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        with fh:
            ident = _object_identity(getattr(fh, "details", None))
            for block in iter(lambda: fh.read(1 << 20), b""):
                size += len(block)
                h.update(block)
        return size, h.hexdigest(), ident

    def identity(self, rel: str) -> tuple[int, str | None] | None:
        """(size, identity) of a file below the root, without reading it (one ``stat``,
        or one metadata request on object storage); ``None`` if missing."""
        if not self.remote:
            try:
                st = os.stat(os.path.join(self.url, rel))
            except (FileNotFoundError, NotADirectoryError):
                return None
            return st.st_size, local_identity(st)
        fs, base = self._fs()
        try:
            info = fs.info(f"{base}/{rel}")
        except (FileNotFoundError, NotADirectoryError):
            return None
        return int(info.get("size") or 0), _object_identity(info)

    def seal(
        self,
        rels: Sequence[str],
        *,
        fsync: bool,
        identities: dict[str, str] | None = None,
        inline: bool = False,
    ) -> dict[str, dict[str, Any]]:
        """Checksum files below the root and, with ``fsync``, make them durable.

        Returns ``{rel: {"bytes": size, "sha256": hex}}``; ``identities``, when given,
        receives each file's identity (see :meth:`hash_file`) where it has one, taken
        after the file was flushed.  Locally, every file is read
        once (from the page cache: it was just written), hashed and fsynced, and every
        directory from the root down to each file is fsynced, so that the files and
        their names survive a power loss.  A set of more than :data:`SEAL_INLINE`
        files and folders is issued at once from a thread pool, which the file system
        serves with one journal commit instead of one per call; a smaller one, or any
        set with ``inline``, is sealed in the calling thread (see :data:`SEAL_INLINE`
        for why).  Objects on object storage are durable once written; they are only
        hashed, on the thread pool.  A missing file raises :class:`FileNotFoundError`
        naming it.
        """
        rels = sorted(set(rels))
        if not rels:
            return {}
        if self.remote:
            sizes: list[tuple[int, str, str | None] | None] = list(
                _io_pool().map(self.hash_file, rels)
            )
        else:
            dirs: set[str] = set()
            if fsync:
                dirs.add(self.url)
                for rel in rels:
                    parts = rel.split("/")[:-1]
                    for i in range(1, len(parts) + 1):
                        dirs.add(os.path.join(self.url, *parts[:i]))
            reals = [os.path.join(self.url, r) for r in rels]
            if inline or len(reals) + len(dirs) <= SEAL_INLINE:
                sizes = [_seal_file(real, fsync) for real in reals]
                for d in sorted(dirs):
                    _fsync_directory(d)
            else:
                # files and directories in one round: all of them are complete already
                pool = _io_pool()
                synced = [pool.submit(_fsync_directory, d) for d in sorted(dirs)]
                sizes = list(pool.map(_seal_file, reals, [fsync] * len(reals)))
                for fut in synced:
                    fut.result()
        out: dict[str, dict[str, Any]] = {}
        for rel, got in zip(rels, sizes, strict=True):
            if got is None:
                raise FileNotFoundError(f"{self.display(rel)} vanished before its commit")
            out[rel] = {"bytes": got[0], "sha256": got[1]}
            if identities is not None and got[2] is not None:
                identities[rel] = got[2]
        return out

    def flush(self, rels: Sequence[str], *, inline: bool = False) -> None:
        """fsync local files and their folders (object storage: no-op); more than
        :data:`SEAL_INLINE` of them in one round on the thread pool unless ``inline``."""
        if self.remote or not rels:
            return
        reals = [os.path.join(self.url, r) for r in rels]
        dirs = sorted({os.path.dirname(r) for r in reals})
        paths = [*reals, *dirs]
        if inline or len(paths) <= SEAL_INLINE:
            for p in paths:
                _fsync_path(p)
            return
        pool = _io_pool()
        for fut in [pool.submit(_fsync_path, p) for p in paths]:
            fut.result()

    def write_chunks(self, rel: str, chunks: Iterable[bytes]) -> bool:
        """Write a file below the root from ``chunks`` without holding them all in memory.

        Locally the chunks go to a temporary name next to the target (hidden from
        listings, found by ``hcsflow fsck`` if left behind), which is renamed into place
        at the end: readers see the old file or the complete new one.  On object storage
        the object is written in one PUT at the end.  Returns ``False``, writing
        nothing, when ``chunks`` is empty; an exception from ``chunks`` leaves the
        previous file as it was.  Not fsynced: see :meth:`seal`.
        """
        it = iter(chunks)
        first = next(it, None)
        if first is None:
            return False
        if self.remote:
            data = b"".join([first, *it])
            fs, base = self._fs()
            fs.pipe_file(f"{base}/{rel}", data)
            return True
        from hcsflow.storage.disk._publish import temp_name

        real = os.path.join(self.url, rel)
        tmp = os.path.join(os.path.dirname(real), temp_name(os.path.basename(real)))
        try:
            with open(tmp, "xb") as fh:
                fh.write(first)
                for chunk in it:
                    fh.write(chunk)
            os.replace(tmp, real)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return True

    def files_below(self, rel: str) -> list[str]:
        """Relative paths of every file below ``rel`` (empty when it does not exist)."""
        if not self.remote:
            top = os.path.join(self.url, rel)
            out = []
            for dirpath, _dirs, files in os.walk(top):
                for f in files:
                    out.append(os.path.relpath(os.path.join(dirpath, f), self.url))
            return sorted(p.replace(os.sep, "/") for p in out)
        fs, base = self._fs()
        try:
            names = fs.find(f"{base}/{rel}")
        except FileNotFoundError:
            return []
        return sorted(n[len(base) + 1 :] for n in names)

    def exists(self) -> bool:
        """Whether the output root exists (for URLs: whether any object lies below it)."""
        if not self.remote:
            return os.path.exists(self.url)
        fs, base = self._fs()
        try:
            return bool(fs.ls(base))
        except FileNotFoundError:
            return False

    def is_file(self) -> bool:
        """Whether the root itself is a file (an output cannot go there)."""
        if not self.remote:
            return os.path.exists(self.url) and not os.path.isdir(self.url)
        fs, base = self._fs()
        return bool(fs.isfile(base))

    def entries(self) -> list[str]:
        """Names directly below the root (empty when it does not exist)."""
        if not self.remote:
            try:
                return sorted(os.listdir(self.url))
            except (FileNotFoundError, NotADirectoryError):
                return []
        fs, base = self._fs()
        try:
            names = fs.ls(base, detail=False)
        except FileNotFoundError:
            return []
        return sorted(str(n).rstrip("/").rsplit("/", 1)[-1] for n in names)

    def remove(self, rel: str = "") -> None:
        """Delete ``rel`` (a file or a tree) below the root; the whole root when empty."""
        if not self.remote:
            target = os.path.join(self.url, rel) if rel else self.url
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(target)
            return
        fs, base = self._fs()
        with contextlib.suppress(FileNotFoundError):
            fs.rm(f"{base}/{rel}" if rel else base, recursive=True)

    def remove_files(self, rels: Iterable[str], *, fsync: bool = False) -> None:
        """Delete the listed files (missing ones are fine).

        ``fsync``: make the removals durable (their directories are fsynced when a file
        was removed), for a file whose presence means something (a manifest, a commit).
        """
        rels = list(rels)
        if not rels:
            return
        if not self.remote:
            touched = set()
            for rel in rels:
                real = os.path.join(self.url, rel)
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    os.unlink(real)
                    touched.add(os.path.dirname(real))
            if fsync:
                for directory in sorted(touched):
                    _fsync_directory(directory)
            return
        fs, base = self._fs()
        with contextlib.suppress(FileNotFoundError):
            fs.rm([f"{base}/{r}" for r in rels])


#: a local call of :func:`ordered_map` slower than this (a network file system, a cold
#: disk) hands the rest of the items to its threads
_SLOW_READ_S = 0.5e-3

_T = TypeVar("_T")
_R = TypeVar("_R")
_MISSING: Any = object()


def ordered_map(
    fn: Callable[[_T], _R], items: Sequence[_T], *, remote: bool, depth: int = 8
) -> Iterator[_R]:
    """``fn`` of each item, in order; for reads of small files below an output root.

    On object storage (``remote``) each read waits for a round trip, so ``depth`` reads
    run ahead on threads.  Locally, a small file in the page cache is read in tens of
    microseconds, and handing such reads to threads and back costs more than it saves
    (measured on a 40-well run: 11 against 2.5 ms for its 80 tables, 5.4 against 1 ms
    for its 40 commit records), so they run in this thread until one is slow.
    """
    done = 0
    if not remote:
        clock = time.perf_counter
        for item in items:
            t = clock()
            out = fn(item)
            slow = clock() - t > _SLOW_READ_S
            done += 1
            yield out
            if slow:
                break
    if done == len(items):
        return
    with cf.ThreadPoolExecutor(max_workers=depth) as pool:
        ahead: deque[cf.Future[_R]] = deque()
        it = iter(items[done:])
        for item in it:
            ahead.append(pool.submit(fn, item))
            if len(ahead) >= depth:
                break
        while ahead:
            out = ahead.popleft().result()
            nxt = next(it, _MISSING)
            if nxt is not _MISSING:
                ahead.append(pool.submit(fn, nxt))
            yield out


def plate_location(plate: str, storage_options: dict[str, Any] | None) -> StorageBackend:
    """The backend a well reads a plate of image files through (``plate`` is its root)."""
    if is_url(plate):
        return FsspecStorageBackend(plate, storage_options=storage_options)
    return DiskStorageBackend(fsync=False)


class _Tracking:
    """Records the paths a backend saves; the first save of a path may replace it."""

    written: set[str]

    def _first(self, paths: Sequence[str]) -> bool:
        return not any(p in self.written for p in paths)

    def save(
        self, data: Any, path: vpaths.PathLike, *, overwrite: bool = False, **options: Any
    ) -> None:
        vp = self.norm(path)  # type: ignore[attr-defined]
        # a file an earlier (crashed) attempt of this well left behind is replaced; two
        # writes of one path in the same attempt keep the no-overwrite rule
        replace = overwrite or self._first([vp])
        super().save(data, vp, overwrite=replace, **options)  # type: ignore[misc]
        self.written.add(vp)

    def save_batch(
        self,
        data_list: Sequence[Any],
        paths: Sequence[vpaths.PathLike],
        *,
        overwrite: bool = False,
        **options: Any,
    ) -> None:
        norm = [self.norm(p) for p in paths]  # type: ignore[attr-defined]
        if not overwrite and not self._first(norm):
            dup = next(p for p in norm if p in self.written)
            raise AlreadyExistsError(
                "written twice by the same well",
                path=dup,
                backend=self.name,  # type: ignore[attr-defined]
            )
        super().save_batch(data_list, norm, overwrite=True, **options)  # type: ignore[misc]
        self.written.update(norm)


class _TrackingDisk(_Tracking, DiskStorageBackend):
    # no fsync per file: the well's commit fsyncs all of its files at once before the
    # commit record is written (OutputRoot.seal), and a well is not done before that
    def __init__(self) -> None:
        super().__init__(fsync=False)
        self.written = set()
        self._ensured: set[str] = set()

    def ensure_directory(self, directory: vpaths.PathLike) -> str:
        # every materializer ensures its folder; a well asks the file system once (a
        # folder removed through this backend is forgotten, one removed behind its back
        # makes the next save fail loudly: its parent is missing)
        vp = self.norm(directory)
        if vp not in self._ensured:
            vp = super().ensure_directory(vp)
            self._ensured.add(vp)
        return vp

    def delete(self, path: vpaths.PathLike) -> None:
        self._ensured.clear()
        super().delete(path)

    def delete_all(self, path: vpaths.PathLike) -> None:
        self._ensured.clear()
        super().delete_all(path)

    def move(
        self, src: vpaths.PathLike, dst: vpaths.PathLike, *, replace_symlinks: bool = False
    ) -> None:
        self._ensured.clear()
        super().move(src, dst, replace_symlinks=replace_symlinks)


class _TrackingFsspec(_Tracking, FsspecStorageBackend):
    def __init__(self, url: str, storage_options: dict[str, Any]):
        super().__init__(url, storage_options=storage_options)
        self.written = set()


@dataclass
class WellSink:
    """Where one well writes, inside its worker: backends, zarr store URLs, written files.

    Files are published atomically (temporary name, then rename) but not fsynced one by
    one: the commit makes all of a well's files durable together before its record.
    """

    root: OutputRoot
    plate: str | None = None
    """Root of a plate of image files read through :data:`INPUT_BACKEND` (``None``: the
    plate is read through ``disk`` as before)."""
    plate_options: dict[str, Any] | None = None
    _disk: Any = field(default=None, init=False, repr=False)

    def disk(self) -> _Tracking:
        """The output's file backend (created once per well, tracking its writes)."""
        if self._disk is None:
            if self.root.remote:
                self._disk = _TrackingFsspec(self.root.url, self.root.storage_options)
            else:
                self._disk = _TrackingDisk()
        return self._disk

    def registry(self, zarr_config: Any = None) -> BackendRegistry:
        """The well's registry: a fresh memory backend, the output's files (``disk``) and
        zarr (created on first use, rooted at the output), and the plate if separate."""
        out: dict[str, StorageBackend] = {
            Backend.MEMORY.value: MemoryStorageBackend(),
            Backend.DISK.value: self.disk(),  # type: ignore[dict-item]
        }
        if self.plate is not None:
            out[INPUT_BACKEND] = plate_location(self.plate, self.plate_options)
        if self.root.remote:
            zarr = functools.partial(
                ZarrStorageBackend,
                self.root.url,
                storage_options=self.root.storage_options,
                config=zarr_config,
            )
        else:
            zarr = functools.partial(ZarrStorageBackend, config=zarr_config)
        return BackendRegistry(out, factories={Backend.ZARR.value: zarr})

    @property
    def storage_options(self) -> dict[str, Any] | None:
        """fsspec options for the zarr writers (``None`` for a local output)."""
        return self.root.storage_options if self.root.remote else None

    def store_url(self, vpath: str) -> str:
        """Local path or URL of a zarr store given by its virtual path."""
        return self.root.store_url(vpath)

    def written(self) -> list[str]:
        """Relative paths of the files saved through :meth:`disk`, sorted."""
        if self._disk is None:
            return []
        return sorted(self.root.rel(p) for p in self._disk.written)
