"""The fsspec backend: the disk backend's files on any fsspec URL (S3, GCS, Azure, memory).

``FsspecStorageBackend("s3://bucket/prefix")`` maps virtual ``/a/b.tif`` to the object
``s3://bucket/prefix/a/b.tif``.  Files are stored as plain objects encoded by the disk
backend's formats (:func:`hcsflow.storage.default_codecs`): a TIFF written here is the same
bytes as one written to a local disk, readable by any tool that reads the bucket.

Object stores have no directories and no links, so this backend keeps two small
conventions of its own, both invisible in listings:

* an **empty directory** is a zero-byte marker object named ``.hcsflow-dir`` inside it
  (``ensure_directory`` writes one per level); a prefix holding objects written by any
  other tool is a directory too, so buckets filled with ``aws s3 cp`` read as expected;
* a **symlink** is a small object whose bytes start with ``hcsflow-symlink/1`` followed by
  the target's virtual path.

**Nothing lost.**  A PUT replaces an object whole, so readers see the old or the new
bytes, never a mix.  A write that must not replace anything (``overwrite=False``) is a
conditional PUT (``If-None-Match: *`` on S3, ``mode="create"`` in fsspec), so of two
concurrent writers of a new path exactly one wins.  Moves and directory copies are
copy-then-delete: object stores have no atomic rename.
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from hcsflow import paths as vpaths
from hcsflow.errors import (
    AlreadyExistsError,
    DataFormatError,
    DirectoryNotEmptyError,
    HcsflowError,
    InvalidPathError,
    IsADirectoryStorageError,
    NotADirectoryStorageError,
    NotFoundError,
    SymlinkLoopError,
)
from hcsflow.storage._base import EntryKind, _check_batch, batch_item_error
from hcsflow.storage._codecs import (
    Codec,
    CodecRefusal,
    CodecRegistry,
    check_codec_options,
    codec_for,
    decoding,
    default_codecs,
)
from hcsflow.storage._fsspec_paths import (
    DIR_MARKER,
    LINK_MAGIC,
    _FsspecPaths,
    as_local_path,
    is_url,
)
from hcsflow.storage._limits import StorageLimits

__all__ = ["FsspecStorageBackend", "DIR_MARKER", "LINK_MAGIC", "as_local_path", "is_url"]


class FsspecStorageBackend(_FsspecPaths):
    """Files on any fsspec filesystem, encoded by extension like the disk backend.

    ``root``: a URL (``s3://bucket/prefix``, ``gs://...``, ``memory://...``); virtual ``/``
    maps to it.  A local folder (``file://``, ``local://``, or a chain ending in one) is
    refused with :class:`~hcsflow.errors.InvalidPathError`: :class:`DiskStorageBackend`
    is the backend for it, and runs, readers and the zarr backend take ``file://`` URLs
    as the local paths they name.  ``storage_options`` go to fsspec (``endpoint_url``,
    ``anon``...); credentials come from the environment the standard way for the
    filesystem (for S3: ``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``... or the AWS config
    files).  Listings are always read fresh (``use_listings_cache=False``), so other
    writers are seen.  ``max_workers``: threads for ``save_batch``/``load_batch``
    (default 16).
    """

    name = "fsspec"

    def __init__(
        self,
        root: str,
        *,
        storage_options: dict[str, Any] | None = None,
        codecs: CodecRegistry | None = None,
        max_workers: int | None = None,
        limits: StorageLimits | None = None,
    ):
        import fsspec

        if not isinstance(root, str) or not is_url(root):
            raise InvalidPathError(
                "the fsspec backend needs a URL such as s3://bucket/prefix",
                path=str(root),
                backend=self.name,
            )
        self._root_url = root.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.protocol = root.split("://", 1)[0]
        opts = dict(self.storage_options)
        opts.setdefault("use_listings_cache", False)
        with self._errors(root):
            self.fs, base = fsspec.core.url_to_fs(root, **opts)
        if _is_local(self.fs):
            raise InvalidPathError(
                "is a local folder: use DiskStorageBackend for it (this backend keeps object "
                "stores' conventions: no rename, no real directories or links)",
                path=root,
                backend=self.name,
            )
        self._base = base.rstrip("/")
        self.codecs = codecs if codecs is not None else default_codecs()
        self.limits = limits if limits is not None else StorageLimits()
        if max_workers is not None and max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        self.max_workers = max_workers or 16
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    @property
    def root(self) -> str:
        """The URL virtual ``/`` maps to."""
        return self._root_url

    def __repr__(self) -> str:
        return f"FsspecStorageBackend(root={self._root_url!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {
            "root": self._root_url,
            "storage_options": self.storage_options,
            "codecs": self.codecs,
            "max_workers": self.max_workers,
            "limits": self.limits,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["root"],
            storage_options=state["storage_options"],
            codecs=state["codecs"],
            max_workers=state["max_workers"],
            limits=state.get("limits"),
        )

    # ------------------------------------------------------------------ writes

    def _write_target(self, vp: str, overwrite: bool) -> tuple[str, EntryKind | None]:
        """Physical path a write of ``vp`` goes to, after the overwrite checks."""
        if vp == "/":
            raise IsADirectoryStorageError("the root is a directory", path=vp, backend=self.name)
        real = vpaths.join(self._parent_dir(vp), vpaths.name(vp))
        kind = self._node(real)[0]
        if kind == "directory":
            raise IsADirectoryStorageError("target is a directory", path=vp, backend=self.name)
        if kind is not None and not overwrite:
            raise AlreadyExistsError(
                "target exists; pass overwrite=True to replace it", path=vp, backend=self.name
            )
        return real, kind

    def _put(self, real: str, data: bytes, *, exclusive: bool, vp: str) -> None:
        """One PUT; ``exclusive`` makes it a conditional create (refused if it exists)."""
        key = self._key(real)
        with self._errors(self._url(real)):
            if not exclusive:
                self.fs.pipe_file(key, data)
                return
            try:
                self.fs.pipe_file(key, data, mode="create")
            except FileExistsError as exc:
                raise AlreadyExistsError(
                    "target appeared meanwhile; not overwritten", path=vp, backend=self.name
                ) from exc

    def _rm(self, real: str, recursive: bool = False) -> None:
        with self._errors(self._url(real)), contextlib.suppress(FileNotFoundError):
            if recursive:
                self.fs.rm(self._key(real), recursive=True)
            else:
                self.fs.rm_file(self._key(real))

    # ------------------------------------------------------------------ formats

    def _codec(self, vp: str) -> Codec:
        return codec_for(self.codecs, vp, self.name)

    def _encode(self, data: Any, vp: str, options: dict[str, Any]) -> bytes:
        codec = self._codec(vp)
        check_codec_options(codec, options, loading=False, path=vp, backend=self.name)
        try:
            prepared = codec.prepare(data, **options)
        except CodecRefusal as exc:
            raise DataFormatError(
                f"cannot save as {codec.name}: {exc}", path=vp, backend=self.name
            ) from exc
        buf = io.BytesIO()
        try:
            codec.encode(prepared, buf, **options)
        except (OSError, MemoryError, ImportError):
            raise
        except Exception as exc:
            raise DataFormatError(
                f"cannot save as {codec.name}: {exc}", path=vp, backend=self.name
            ) from exc
        return buf.getvalue()

    def _decode(self, vp: str, raw: bytes, options: dict[str, Any]) -> Any:
        codec = self._codec(vp)
        check_codec_options(codec, options, loading=True, path=vp, backend=self.name)
        with decoding(codec, vp, self.name):
            return codec.decode(
                io.BytesIO(raw), limits=self.limits, path=vp, backend=self.name, **options
            )

    # ------------------------------------------------------------------ load / save

    def load(self, path: vpaths.PathLike, **options: Any) -> Any:
        """Decode the object at ``path`` (through symlinks) with its extension's format."""
        vp = self.norm(path)
        real, node = self._resolve(vp, True)
        if node[0] is None:
            raise self._absent_error(vp, "no such file")
        if node[0] == "directory":
            raise IsADirectoryStorageError("path is a directory", path=vp, backend=self.name)
        if node[1] is not None:
            # the whole object is downloaded to decode it: refuse one above the limit first
            self.limits.check_bytes(node[1], what="object", path=vp, backend=self.name)
        raw = self._cat(real)
        if raw is None:
            raise NotFoundError("no such file", path=vp, backend=self.name)
        return self._decode(vp, raw, options)

    def save(
        self, data: Any, path: vpaths.PathLike, *, overwrite: bool = False, **options: Any
    ) -> None:
        """Encode ``data`` by the path's extension and PUT it (conditionally without overwrite)."""
        vp = self.norm(path)
        raw = self._encode(data, vp, options)
        real, kind = self._write_target(vp, overwrite)
        # overwrite=True is never refused because another writer created the path first
        self._put(real, raw, exclusive=not overwrite, vp=vp)

    def save_batch(
        self,
        data_list: Sequence[Any],
        paths: Sequence[vpaths.PathLike],
        *,
        overwrite: bool = False,
        **options: Any,
    ) -> None:
        """Save many items: every item is checked and encoded before anything is written.

        PUTs run on the thread pool.  If one fails, objects this batch created are
        removed and :class:`BatchError` names the failing item; objects it replaced
        (``overwrite=True``) keep their new content, each whole.
        """
        norm = _check_batch(self, data_list, paths)
        plans: list[tuple[str, str, bytes, bool]] = []
        for index, (item, vp) in enumerate(zip(data_list, norm, strict=True)):
            try:
                raw = self._encode(item, vp, options)
                real, kind = self._write_target(vp, overwrite)
            except HcsflowError as exc:
                raise batch_item_error(
                    index, "cannot be written", exc, path=vp, backend=self.name
                ) from exc
            plans.append((vp, real, raw, kind is None or not overwrite))
        created: list[str | None] = [None] * len(plans)

        def put(index: int) -> None:
            vp, real, raw, exclusive = plans[index]
            try:
                self._put(real, raw, exclusive=exclusive, vp=vp)
            except (HcsflowError, OSError) as exc:
                raise batch_item_error(
                    index, "could not be written", exc, path=vp, backend=self.name
                ) from exc
            if exclusive:
                created[index] = real

        try:
            _gather([self._executor().submit(put, i) for i in range(len(plans))])
        except BaseException:
            for made in created:
                if made is not None:
                    self._rm(made)
            raise

    def load_batch(self, paths: Sequence[vpaths.PathLike], **options: Any) -> list[Any]:
        """Load every path on the thread pool; results in the order of ``paths``."""

        def get(index: int, path: vpaths.PathLike) -> Any:
            try:
                return self.load(path, **options)
            except HcsflowError as exc:
                raise batch_item_error(
                    index, "could not be loaded", exc, path=self._item_path(path), backend=self.name
                ) from exc

        if len(paths) <= 1:
            return [get(i, p) for i, p in enumerate(paths)]
        pool = self._executor()
        return _gather([pool.submit(get, i, p) for i, p in enumerate(paths)])

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self.max_workers, thread_name_prefix="hcsflow-fsspec"
                )
            return self._pool

    # ------------------------------------------------------------------ structure

    def ensure_directory(self, directory: vpaths.PathLike) -> str:
        """Create ``directory`` and missing parents (a marker object per new level)."""
        vp = self.norm(directory)
        current = "/"
        for part in [p for p in vp.split("/") if p]:
            nxt = vpaths.join(current, part)
            kind, _, target, _ = self._node(nxt)
            if kind == "symlink":
                try:
                    real, node = self._resolve(nxt, True)
                except SymlinkLoopError as exc:
                    raise NotFoundError("symlink chain loops", path=nxt, backend=self.name) from exc
                if node[0] is None:
                    raise NotFoundError(
                        "symlink target does not exist", path=nxt, backend=self.name
                    )
                if node[0] != "directory":
                    raise NotADirectoryStorageError(
                        "a file is in the way", path=nxt, backend=self.name
                    )
                current = real
                continue
            if kind == "file":
                raise NotADirectoryStorageError("a file is in the way", path=nxt, backend=self.name)
            if kind is None:
                self._put_marker(nxt)
            current = nxt
        return vp

    def _put_marker(self, real: str) -> None:
        with self._errors(self._url(real)):
            self.fs.pipe_file(self._key(real) + "/" + DIR_MARKER, b"")

    def _delete(self, path: str, recursive: bool) -> None:
        real, (kind, _, _, _) = self._resolve(path, False)
        if kind is None:
            raise self._absent_error(path, "cannot delete: no such file or directory")
        if kind != "directory":
            self._rm(real)
            return
        if recursive:
            self._rm(real, recursive=True)
            return
        if self._listing(real):
            raise DirectoryNotEmptyError(
                "cannot delete: directory is not empty; use delete_all",
                path=path,
                backend=self.name,
            )
        self._rm(vpaths.join(real, DIR_MARKER))

    def _create_symlink(self, target: str, link: str, overwrite: bool) -> None:
        if self.entry_kind(target) is None:
            raise NotFoundError("symlink target does not exist", path=target, backend=self.name)
        real, kind = self._write_target(link, overwrite)
        if kind is not None and real in self._link_chain(target):
            raise SymlinkLoopError("the new link would form a loop", path=link, backend=self.name)
        self._put(real, LINK_MAGIC + target.encode("utf-8"), exclusive=not overwrite, vp=link)

    def _copy_objects(self, src_real: str, dst_real: str) -> None:
        """Server-side copy of every object below ``src_real`` (markers and links too)."""
        src_key = self._key(src_real)
        with self._errors(self._url(src_real)):
            names = self.fs.find(src_key)
            for name in names:
                self.fs.copy(name, self._key(dst_real) + name[len(src_key) :])
        # the copy exists as a directory even when the source had no marker of its own
        self._put_marker(dst_real)

    def _move(self, src: str, dst: str, replace_symlinks: bool) -> None:
        sreal, (skind, _, _, _) = self._resolve(src, False)
        if skind is None:
            raise self._absent_error(src, "cannot move: no such file or directory")
        if dst == "/":
            raise AlreadyExistsError("destination exists", path=dst, backend=self.name)
        dreal = vpaths.join(self._parent_dir(dst), vpaths.name(dst))
        dkind = self._node(dreal)[0]
        if dkind is not None and not (dkind == "symlink" and replace_symlinks):
            raise AlreadyExistsError("destination exists", path=dst, backend=self.name)
        if skind == "directory":
            if vpaths.is_relative_to(dreal, sreal):
                raise InvalidPathError(
                    "cannot move a directory into itself", path=dst, backend=self.name
                )
            if dkind is not None:
                self._rm(dreal)
            self._copy_objects(sreal, dreal)
            self._rm(sreal, recursive=True)
            return
        with self._errors(self._url(sreal)):
            self.fs.copy(self._key(sreal), self._key(dreal))
        self._rm(sreal)

    def copy(self, src: vpaths.PathLike, dst: vpaths.PathLike, *, overwrite: bool = False) -> None:
        """Copy a file's bytes or a directory tree (links kept as links).

        A file copy needs ``dst`` to have the same format as ``src`` (bytes are copied,
        not converted); a directory copy needs a new ``dst``.
        """
        svp, dvp = self.norm(src), self.norm(dst)
        sreal, (skind, _, _, _) = self._resolve(svp, True)
        if skind is None:
            raise self._absent_error(svp, "cannot copy: no such file or directory")
        if skind == "file":
            dreal, dkind = self._write_target(dvp, overwrite)
            scodec, dcodec = self.codecs.for_name(vpaths.name(sreal)), self._codec(dvp)
            if scodec is not dcodec:
                raise DataFormatError(
                    f"copy does not convert formats ({scodec.name if scodec else 'unknown'} "
                    f"to {dcodec.name}); load and save instead",
                    path=dvp,
                    backend=self.name,
                )
            raw = self._cat(sreal)
            if raw is None:
                raise NotFoundError("no such file", path=svp, backend=self.name)
            self._put(dreal, raw, exclusive=not overwrite, vp=dvp)
            return
        if dvp == "/":
            raise AlreadyExistsError("copy destination exists", path=dvp, backend=self.name)
        dreal = vpaths.join(self._parent_dir(dvp), vpaths.name(dvp))
        if self._node(dreal)[0] is not None:
            raise AlreadyExistsError("copy destination exists", path=dvp, backend=self.name)
        if vpaths.is_relative_to(dreal, sreal):
            raise InvalidPathError(
                "cannot copy a directory into itself", path=dvp, backend=self.name
            )
        self._copy_objects(sreal, dreal)


def _is_local(fs: Any) -> bool:
    """Whether ``fs`` is, or wraps (a cache, a sub-directory view), the local file system."""
    from fsspec.implementations.local import LocalFileSystem

    for _ in range(8):  # chained URLs nest a few wrappers at most
        if isinstance(fs, LocalFileSystem):
            return True
        fs = getattr(fs, "fs", None)
        if fs is None:
            return False
    return False


def _gather(futures: list[Future[Any]]) -> list[Any]:
    """Results in order; on the first failure wait for the rest, then re-raise it."""
    results = []
    error: BaseException | None = None
    for future in futures:
        try:
            results.append(future.result())
        except BaseException as exc:
            if error is None:
                error = exc
                for later in futures:
                    later.cancel()
    if error is not None:
        raise error
    return results
