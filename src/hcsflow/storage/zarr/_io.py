"""Byte-level access to zarr stores on a local disk or any fsspec URL.

Everything the zarr backend and the plate writer do to storage goes through a
:class:`Location` (a filesystem plus a path on it).  Two implementations share one
small interface: :class:`~hcsflow.storage.zarr._localfs.LocalFS` (descriptor-based and
contained below the store root: atomic ``renameat`` writes and directory renames) and
:class:`_RemoteFS` (an fsspec filesystem: object stores, ``memory://``...).  Errors
from the underlying library are translated here, once, into :mod:`hcsflow.errors`
types naming the store URL and the key.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from hcsflow.errors import (
    CorruptDataError,
    HcsflowError,
    ObjectStoreError,
    PathEscapeError,
    PlateMetadataError,
    ZarrError,
)
from hcsflow.storage._fsspec_paths import as_local_path
from hcsflow.storage._limits import StorageLimits

__all__ = ["Location", "location", "store_errors", "BACKEND", "META_FILES"]

BACKEND = "zarr"

# a "." or ".." component: never part of a key or child path built from metadata
_DOT_PART = re.compile(r"(?:^|/)\.{1,2}(?:/|$)")

#: keys that hold zarr metadata rather than data; hidden from virtual listings
META_FILES = frozenset({"zarr.json", ".zgroup", ".zarray", ".zattrs", ".zmetadata"})

_NETWORK_MODULES = ("botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "adlfs", "requests")


def _is_network_error(exc: BaseException) -> bool:
    mod = type(exc).__module__ or ""
    return (
        isinstance(exc, (PermissionError, ConnectionError, TimeoutError))
        or mod.split(".")[0] in _NETWORK_MODULES
    )


@contextlib.contextmanager
def store_errors(url: str, key: str = "") -> Iterator[None]:
    """Translate storage-library errors raised inside the block into hcsflow errors.

    Network, permission and missing-bucket errors become :class:`ObjectStoreError`;
    anything already an hcsflow error passes through untouched.
    """
    try:
        yield
    except HcsflowError:
        raise
    except Exception as exc:
        where = f"{url}/{key}" if key else url
        remote = "://" in as_local_path(url)
        if (
            _is_network_error(exc)
            or "bucket" in str(exc).lower()
            or (remote and isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError))
        ):
            raise ObjectStoreError(
                f"object store unreachable or access denied: store {url!r}, key {key!r}: "
                f"{type(exc).__name__}: {exc}",
                path=where,
                backend=BACKEND,
            ) from exc
        raise


class _FS(ABC):
    """The operations the zarr backend needs from a filesystem (paths are fs paths)."""

    url_prefix = ""
    local = False

    def url(self, path: str) -> str:
        return self.url_prefix + path

    def join(self, base: str, *parts: str) -> str:
        absolute = base.startswith("/")
        out = base.rstrip("/")
        for p in parts:
            if p:
                out = f"{out}/{p.strip('/')}" if out else p.strip("/")
        if absolute and not out.startswith("/"):
            out = "/" + out  # joining onto the filesystem root keeps the path absolute
        return out or "/"

    @abstractmethod
    def read(self, path: str, limit: int | None = None) -> bytes | None:
        """Bytes of the file at ``path``; ``None`` when there is none.

        ``limit``: read at most ``limit + 1`` bytes (enough to tell the file is larger).
        """

    @abstractmethod
    def write_atomic(self, path: str, data: bytes) -> None:
        """Replace ``path`` with ``data`` so readers see old or new bytes, never a mix."""

    @abstractmethod
    def write_unpublished(self, path: str, data: bytes) -> None:
        """Write ``path`` in place: only for keys no reader follows until a later switch."""

    @abstractmethod
    def write_exclusive(self, path: str, data: bytes) -> bool:
        """Create ``path`` with ``data`` unless it exists; ``True`` when created."""

    def kind(self, path: str) -> str | None:
        """``"directory"``, ``"file"`` or ``None`` (nothing at ``path``)."""
        if self.is_dir(path):
            return "directory"
        if self.is_file(path):
            return "file"
        return None

    @abstractmethod
    def is_file(self, path: str) -> bool:
        """Whether a file/object exists at ``path``."""

    @abstractmethod
    def is_dir(self, path: str) -> bool:
        """Whether ``path`` is a directory (a prefix holding objects on object stores)."""

    @abstractmethod
    def list(self, path: str) -> list[str]:
        """Names directly below ``path``, read fresh (never from a listing cache)."""

    @abstractmethod
    def remove_tree(self, path: str) -> None:
        """Delete ``path`` and everything below it; a missing path is not an error."""

    @abstractmethod
    def remove_file(self, path: str) -> None:
        """Delete one file/object; a missing one is not an error."""

    @abstractmethod
    def copy_tree(self, src: str, dst: str) -> None:
        """Copy a file or a tree from ``src`` to ``dst``."""

    @abstractmethod
    def rename_tree(self, src: str, dst: str) -> None:
        """Move a file or tree: atomic on local disks, copy+delete on object stores."""

    @abstractmethod
    def makedirs(self, path: str) -> None:
        """Create the directory ``path`` where the filesystem has directories."""

    @abstractmethod
    def zarr_store(self, path: str) -> Any:
        """A zarr-python store rooted at ``path``."""


class _RemoteFS(_FS):
    """An fsspec filesystem; listings bypass fsspec's cache so other writers are seen."""

    def __init__(self, fs: Any, protocol: str, storage_options: dict[str, Any]):
        self.fs = fs
        self.protocol = protocol
        self.storage_options = storage_options
        self.url_prefix = f"{protocol}://"

    def read(self, path: str, limit: int | None = None) -> bytes | None:
        try:
            if limit is None:
                data: bytes = self.fs.cat_file(path)
            else:
                data = self.fs.cat_file(path, start=0, end=limit + 1)
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            return None
        return data

    def write_atomic(self, path: str, data: bytes) -> None:
        # a single PUT replaces an object atomically on S3-like stores
        self.fs.pipe_file(path, data)
        self.fs.invalidate_cache(self._parent(path))

    def write_unpublished(self, path: str, data: bytes) -> None:
        self.write_atomic(path, data)

    def write_exclusive(self, path: str, data: bytes) -> bool:
        if self.protocol in ("s3", "s3a"):
            # a conditional PUT (If-None-Match: *) is the object store's atomic create
            try:
                self.fs.pipe_file(path, data, mode="create")
            except FileExistsError:
                return False
            self.fs.invalidate_cache(self._parent(path))
            return True
        # stores without conditional writes: check-then-put
        if self.is_file(path):
            return False
        self.write_atomic(path, data)
        return True

    @staticmethod
    def _parent(path: str) -> str:
        return path.rsplit("/", 1)[0] if "/" in path else path

    def is_file(self, path: str) -> bool:
        self.fs.invalidate_cache(self._parent(path))
        try:
            return bool(self.fs.isfile(path))
        except FileNotFoundError:
            return False

    def is_dir(self, path: str) -> bool:
        self.fs.invalidate_cache(path)
        try:
            return bool(self.fs.isdir(path))
        except FileNotFoundError:
            return False

    def list(self, path: str) -> list[str]:
        self.fs.invalidate_cache(path)
        try:
            entries = self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        base = path.rstrip("/")
        out = []
        for entry in entries:
            entry = entry.rstrip("/")
            if entry == base:
                continue
            out.append(entry.rsplit("/", 1)[-1])
        return out

    def remove_tree(self, path: str) -> None:
        self.fs.invalidate_cache(path)
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(path, recursive=True)
        self.fs.invalidate_cache(self._parent(path))

    def remove_file(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(path)
        self.fs.invalidate_cache(self._parent(path))

    def copy_tree(self, src: str, dst: str) -> None:
        self.fs.invalidate_cache(src)
        if self.is_file(src):
            self.fs.copy(src, dst)
        else:
            for name in self.fs.find(src):
                self.fs.copy(name, dst + name[len(src.rstrip("/")) :])
        self.fs.invalidate_cache(self._parent(dst))

    def rename_tree(self, src: str, dst: str) -> None:
        # no atomic rename on object stores: copy everything, then delete the source
        self.copy_tree(src, dst)
        self.remove_tree(src)

    def makedirs(self, path: str) -> None:
        # object stores have no directories; zarr group metadata marks them instead
        return None

    def zarr_store(self, path: str) -> Any:
        from zarr.storage import FsspecStore

        return FsspecStore.from_url(self.url(path), storage_options=self.storage_options)


_REMOTE_CACHE: dict[tuple[str, str], _RemoteFS] = {}
_CACHE_LOCK = threading.Lock()


@dataclass(frozen=True)
class Location:
    """A path on a filesystem: the root of a store, a node within it, or a key."""

    fs: _FS
    path: str
    _meta: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    limits: StorageLimits = field(default_factory=StorageLimits, compare=False, repr=False)

    @property
    def url(self) -> str:
        """The URL (or absolute local path) of this location, for users and messages."""
        return self.fs.url(self.path)

    def child(self, *parts: str) -> Location:
        """The location ``parts`` below this one (each a relative path without ``..``)."""
        for part in parts:
            if _DOT_PART.search(part):
                raise PathEscapeError(
                    f"{part!r} is not a relative path below {self.url!r}",
                    path=self.url,
                    backend=BACKEND,
                )
        return Location(self.fs, self.fs.join(self.path, *parts), limits=self.limits)

    @property
    def name(self) -> str:
        """Last path component."""
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    # ------------------------------------------------------------------ bytes

    def read(self, key: str = "", limit: int | None = None) -> bytes | None:
        """Bytes stored at ``key`` below this location, ``None`` when absent.

        ``limit``: read at most ``limit + 1`` bytes.
        """
        target = self.fs.join(self.path, key) if key else self.path
        with store_errors(self.url, key):
            return self.fs.read(target, limit)

    def write(self, key: str, data: bytes) -> None:
        """Store ``data`` at ``key`` atomically (readers see the old or the new bytes)."""
        with store_errors(self.url, key):
            self.fs.write_atomic(self.fs.join(self.path, key), data)

    def write_unpublished(self, key: str, data: bytes) -> None:
        """Store ``data`` at ``key`` in place, without the temp-and-rename of :meth:`write`.

        Only for keys under a node no reader follows yet (a new field group that the
        well's metadata will point to once it is complete): a crash leaves an orphan,
        never a half-written published document.
        """
        with store_errors(self.url, key):
            self.fs.write_unpublished(self.fs.join(self.path, key), data)

    def write_once(self, key: str, data: bytes) -> bool:
        """Create ``key`` unless it exists; ``True`` when this call created it."""
        with store_errors(self.url, key):
            return self.fs.write_exclusive(self.fs.join(self.path, key), data)

    def read_json(self, key: str) -> dict[str, Any] | None:
        """Parsed JSON object at ``key``; ``None`` when absent.

        Raises :class:`PlateMetadataError` for bytes that are not a JSON object and
        :class:`~hcsflow.errors.ResourceLimitError` for a document larger or nested
        deeper than :attr:`limits` allow.
        """
        raw = self.read(key, self.limits.max_metadata_bytes)
        if raw is None:
            return None
        try:
            doc = self.limits.parse_json(
                raw, path=f"{self.url}/{key}", backend=BACKEND, metadata=True
            )
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PlateMetadataError(
                f"malformed metadata: store {self.url!r}, key {key!r}: {exc}",
                path=f"{self.url}/{key}",
                backend=BACKEND,
            ) from exc
        if not isinstance(doc, dict):
            raise PlateMetadataError(
                f"malformed metadata: store {self.url!r}, key {key!r}: expected a JSON "
                f"object, found {type(doc).__name__}",
                path=f"{self.url}/{key}",
                backend=BACKEND,
            )
        return doc

    def write_json(self, key: str, doc: dict[str, Any]) -> None:
        """Store ``doc`` as JSON at ``key`` atomically."""
        self.write(key, json.dumps(doc, separators=(",", ":"), allow_nan=False).encode())

    # ------------------------------------------------------------------ tree

    def exists_file(self, key: str = "") -> bool:
        """Whether a plain object/file exists at ``key``."""
        target = self.fs.join(self.path, key) if key else self.path
        with store_errors(self.url, key):
            return self.fs.is_file(target)

    def is_dir(self) -> bool:
        """Whether this location is a directory (a prefix with objects on object stores)."""
        with store_errors(self.url):
            return self.fs.is_dir(self.path)

    def list(self) -> list[str]:
        """Names directly below this location (fresh, never from a cache)."""
        with store_errors(self.url):
            return self.fs.list(self.path)

    def remove(self) -> None:
        """Delete this location and everything below it."""
        with store_errors(self.url):
            self.fs.remove_tree(self.path)

    def remove_key(self, key: str) -> None:
        """Delete one plain object/file below this location."""
        with store_errors(self.url, key):
            self.fs.remove_file(self.fs.join(self.path, key))

    def copy_to(self, dst: Location) -> None:
        """Copy this location's tree to ``dst`` (same filesystem)."""
        with store_errors(self.url):
            self.fs.copy_tree(self.path, dst.path)

    def rename_to(self, dst: Location) -> None:
        """Rename this tree to ``dst``: atomic on local disks, copy+delete on object stores."""
        with store_errors(self.url):
            self.fs.rename_tree(self.path, dst.path)

    def makedirs(self) -> None:
        """Create this directory on filesystems that have directories."""
        with store_errors(self.url):
            self.fs.makedirs(self.path)

    def zarr_store(self) -> Any:
        """A zarr-python store rooted at this location."""
        with store_errors(self.url):
            return self.fs.zarr_store(self.path)


def location(
    url: str | os.PathLike[str],
    storage_options: dict[str, Any] | None = None,
    limits: StorageLimits | None = None,
) -> Location:
    """Resolve a local path, ``file://`` URL or any fsspec URL to a :class:`Location`.

    ``storage_options`` go to fsspec (``endpoint_url``, ``anon``...); credentials come
    from the environment or the provider's config files as usual.  A local path is
    contained: nothing below it is reached through a symlink leading out of it (see
    :mod:`hcsflow.storage.zarr._localfs`).  ``limits``: what reads may allocate.
    """
    limits = limits if limits is not None else StorageLimits()
    raw = os.fspath(url)
    if not isinstance(raw, str) or not raw:
        raise ZarrError(f"a store URL must be a non-empty string, got {raw!r}", backend=BACKEND)
    raw = as_local_path(raw)
    if "://" not in raw:
        from hcsflow.storage.zarr._localfs import LocalFS

        path = os.path.abspath(raw)
        return Location(LocalFS(path, limits), path, limits=limits)
    protocol, _, rest = raw.partition("://")
    opts = dict(storage_options or {})
    key = (protocol, json.dumps(opts, sort_keys=True, default=repr))
    with _CACHE_LOCK:
        fs = _REMOTE_CACHE.get(key)
    if fs is None:
        import fsspec

        with store_errors(raw):
            filesystem, _ = fsspec.core.url_to_fs(raw, **opts)
        fs = _RemoteFS(filesystem, protocol, opts)
        with _CACHE_LOCK:
            _REMOTE_CACHE.setdefault(key, fs)
            fs = _REMOTE_CACHE[key]
    path = rest.rstrip("/")
    if protocol == "memory" and not path.startswith("/"):
        path = "/" + path
    return Location(fs, path, limits=limits)


def check_bucket(loc: Location) -> None:
    """Raise :class:`ObjectStoreError` when ``loc``'s bucket cannot be reached."""
    if loc.fs.local or not isinstance(loc.fs, _RemoteFS):
        return
    if loc.fs.protocol not in ("s3", "s3a", "gs", "gcs", "az", "abfs"):
        return
    bucket = loc.path.lstrip("/").split("/", 1)[0]
    with store_errors(loc.url):
        ok = loc.fs.fs.exists(bucket)
    if not ok:
        raise ObjectStoreError(
            f"bucket {bucket!r} does not exist or is not reachable: store {loc.url!r}",
            path=loc.url,
            backend=BACKEND,
        )


def corrupt(loc: Location, key: str, exc: BaseException) -> CorruptDataError:
    """A :class:`CorruptDataError` naming the store and key whose bytes did not decode."""
    return CorruptDataError(
        f"corrupt or truncated chunk data: store {loc.url!r}, key {key!r}: "
        f"{type(exc).__name__}: {exc}",
        path=f"{loc.url}/{key}",
        backend=BACKEND,
    )
