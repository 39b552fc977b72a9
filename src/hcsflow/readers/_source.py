"""Where a reader finds an export's files: a plate directory on one storage backend.

Readers list files, read metadata files (XML, HTD, MLF) and open the odd TIFF header
through a :class:`PlateSource`; image planes are read later, by the workers, through
the :class:`~hcsflow.storage.FileManager` (see :meth:`PlateReader.load_planes`).

A source is one of three kinds:

* a **local folder** (the default disk backend): the listing is one ``os.scandir``
  walk (no sorting, no per-file stat beyond the directory entry), which keeps
  describing a 10,000-file export well under a second;
* a **URL** (``s3://bucket/plate``, ``gs://...``, ``memory://...``;
  :meth:`PlateSource.from_url`), or any path of an
  :class:`~hcsflow.storage.FsspecStorageBackend`: the listing is one recursive
  ``find`` (a paginated LIST on object stores, not one request per folder), metadata
  files are read whole, TIFF headers through a small read-ahead buffer, so describing
  an export downloads no image data;
* any other backend of a :class:`~hcsflow.storage.FileManager` (memory, a rooted disk
  backend): files are listed and read through the backend; TIFF headers cannot be
  opened there, so readers that want them note what is unknown.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
from collections.abc import Iterator
from typing import IO, Any

from hcsflow import paths as vpaths
from hcsflow.errors import (
    ExportMetadataError,
    HcsflowError,
    NotFoundError,
    ObjectStoreError,
    PlateReaderError,
)
from hcsflow.storage import Backend, BackendRegistry, DiskStorageBackend, FileManager
from hcsflow.storage._contain import special_file
from hcsflow.storage._fsspec import DIR_MARKER, LINK_MAGIC, FsspecStorageBackend, as_local_path
from hcsflow.storage.disk._paths import file_object

__all__ = ["PlateSource", "MAX_METADATA_BYTES", "URL_BACKEND", "HEADER_BLOCK_BYTES"]

MAX_METADATA_BYTES = 1 << 30
"""Largest metadata file a reader reads into memory (a 384-well Harmony index of a
long time course is a few hundred MB; anything above 1 GiB is not a metadata file)."""

URL_BACKEND = "fsspec"
"""Registry name of the backend a plate given as a URL is read through: the planes of
its description are virtual paths of ``FsspecStorageBackend(url)`` under this name."""

HEADER_BLOCK_BYTES = 1 << 18
"""Read-ahead block for TIFF headers on object storage: the first IFD and its
``ImageDescription`` of the files the vendors write lie in the first few kilobytes,
so one ranged GET usually serves a header, whatever the image's size."""

_MAX_LINK_HOPS = 64
_NETWORK_MODULES = ("botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "adlfs", "requests")


class PlateSource:
    """A plate directory ``root`` on ``backend``, as readers see it.

    Paths handed out and accepted are virtual paths of ``backend`` (absolute, posix);
    :meth:`rel` gives the path relative to the plate root for messages.  A plate given
    as a URL is :meth:`from_url`: its virtual ``/`` is the URL.
    """

    def __init__(
        self,
        root: str,
        filemanager: FileManager | None = None,
        backend: Backend | str = Backend.DISK,
    ):
        self.filemanager = filemanager or FileManager()
        self.backend = backend.value if isinstance(backend, Backend) else str(backend)
        self.root = vpaths.normalize_path(root, backend=self.backend)
        self._files: list[str] | None = None
        self._local = self._is_local()
        self._remote = self._fsspec_backend()
        # on object storage every look is a request: a source (one description, a
        # snapshot) answers the same question once; detection asks several readers
        self._kinds: dict[str, str | None] = {}
        self._dirs: dict[str, list[str]] = {}

    @classmethod
    def from_url(cls, url: str, storage_options: dict[str, Any] | None = None) -> PlateSource:
        """The plate at ``url`` (any fsspec URL), read with fsspec ``storage_options``.

        A ``file://`` or ``local://`` URL is the local folder it names (a source on the
        disk backend).

        Virtual ``/`` is the URL; the source's backend is registered as
        :data:`URL_BACKEND` in its own :attr:`filemanager`.  Credentials come from
        ``storage_options`` or the environment, the standard way for the filesystem.
        """
        local = as_local_path(url)
        if local != url:  # a local folder, read as one
            return cls(os.path.abspath(local))
        backend = FsspecStorageBackend(url, storage_options=storage_options)
        fm = FileManager(BackendRegistry({URL_BACKEND: backend}))
        return cls("/", fm, URL_BACKEND)

    def __repr__(self) -> str:
        where = self.url if self.url is not None else self.root
        return f"PlateSource({where!r}, backend={self.backend!r})"

    def _is_local(self) -> bool:
        # the default disk backend maps a virtual path to the same local path
        if self.backend != Backend.DISK.value:
            return False
        be = self.filemanager.backend(self.backend)
        return isinstance(be, DiskStorageBackend) and be.root is None

    def _fsspec_backend(self) -> FsspecStorageBackend | None:
        if self._local:
            return None
        be = self.filemanager.backend(self.backend)
        return be if isinstance(be, FsspecStorageBackend) else None

    @property
    def is_local(self) -> bool:
        """Whether the plate is a local directory."""
        return self._local

    @property
    def url(self) -> str | None:
        """The URL of the plate root when it is read through fsspec, else ``None``."""
        return self._remote.url_of(self.root) if self._remote is not None else None

    @property
    def storage_options(self) -> dict[str, Any] | None:
        """The fsspec options the plate is read with (``None`` unless read through fsspec)."""
        return dict(self._remote.storage_options) if self._remote is not None else None

    @property
    def can_open(self) -> bool:
        """Whether :meth:`open` can read a file's bytes (a local folder or fsspec)."""
        return self._local or self._remote is not None

    # -- paths
    def join(self, *parts: str) -> str:
        """The virtual path of ``parts`` below the plate root."""
        return vpaths.join(self.root, *parts)

    def rel(self, path: str) -> str:
        """``path`` relative to the plate root (for messages)."""
        return (
            vpaths.relative_to(path, self.root) if vpaths.is_relative_to(path, self.root) else path
        )

    def location(self, path: str) -> str:
        """Where ``path`` is for a user: its URL for a plate read through fsspec, else itself."""
        if self._remote is None or not path.startswith("/"):
            return path
        try:
            return self._remote.url_of(path)
        except HcsflowError:
            return path

    # -- queries
    def is_dir(self, path: str | None = None) -> bool:
        """Whether ``path`` (default: the root) is a directory."""
        p = path or self.root
        if self._local:
            return os.path.isdir(p)
        if self._remote is not None:
            if p == "/":
                # the backend's root always "exists"; on an object store a plate is a
                # prefix that exists when something is stored below it
                if p not in self._kinds:
                    be = self._remote
                    with self._errors(p):
                        found = bool(be.fs.isdir(be.url_of(p)))
                    self._kinds[p] = "directory" if found else None
                return self._kinds[p] == "directory"
            return self._remote_kind(p) == "directory"
        return self.filemanager.is_dir(p, self.backend)

    def is_file(self, path: str) -> bool:
        """Whether ``path`` is a file."""
        if self._local:
            return os.path.isfile(path)
        if self._remote is not None:
            return self._remote_kind(path) == "file"
        return self.filemanager.is_file(path, self.backend)

    def _remote_kind(self, path: str) -> str | None:
        if path not in self._kinds:
            assert self._remote is not None
            self._kinds[path] = self._remote.entry_kind(path)
        return self._kinds[path]

    def require_dir(self) -> None:
        """Raise :class:`NotFoundError` unless the root is a directory."""
        if not self.is_dir():
            raise NotFoundError(
                "plate directory does not exist",
                path=self.location(self.root),
                backend=self.backend,
            )

    def list_dir(self, path: str | None = None) -> list[str]:
        """Names directly in ``path`` (default: the root), sorted."""
        p = path or self.root
        if self._local:
            try:
                return sorted(os.listdir(p))
            except FileNotFoundError:
                return []
            except NotADirectoryError:
                return []
        if self._remote is not None:
            if p not in self._dirs:
                self._dirs[p] = sorted(self._remote.list_dir(p)) if self.is_dir(p) else []
            return list(self._dirs[p])
        if not self.filemanager.is_dir(p, self.backend):
            return []
        return sorted(self.filemanager.list_dir(p, self.backend))

    def files(self) -> list[str]:
        """Every file below the root (recursive; symlinked directories not followed).

        Listed once and cached: a reader's detection and description share it.
        """
        if self._files is None:
            if self._local:
                self._files = list(_walk_local(self.root))
            elif self._remote is not None:
                self._files = self._find_remote(self._remote)
            else:
                self._files = self.filemanager.list_files(self.root, self.backend, recursive=True)
        return self._files

    def _find_remote(self, be: FsspecStorageBackend) -> list[str]:
        """Every object below the root, from one recursive listing.

        Directory markers are hidden; an object is a file (an object store has no
        directories, and resolving hcsflow's own link objects here would cost a
        request per small file: links to files are followed when they are read).
        """
        fs = be.fs
        top = str(fs._strip_protocol(be.url_of(self.root))).rstrip("/")
        with self._errors(self.root):
            try:
                found = fs.find(top, withdirs=False)
            except FileNotFoundError:
                return []
        base = "" if self.root == "/" else self.root
        out = []
        for name in found:
            name = str(name)
            if name.endswith("/") or not name.startswith(top + "/"):
                continue  # a folder placeholder some tools write, or not below the root
            rel = name[len(top) + 1 :]
            if rel.rsplit("/", 1)[-1] == DIR_MARKER or "//" in rel:
                continue
            out.append(f"{base}/{rel}")
        return out

    # -- reading
    def read_bytes(self, path: str, *, limit: int = MAX_METADATA_BYTES) -> bytes:
        """The bytes of a metadata file (refused above ``limit`` bytes)."""
        if self._local or self._remote is not None:
            with self.open(path) as fh:
                data = fh.read(limit + 1)
        else:
            value = self.filemanager.load(path, self.backend)
            if isinstance(value, str):
                value = value.encode("utf-8")
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise ExportMetadataError(
                    f"metadata file holds {type(value).__name__}, not bytes",
                    path=path,
                    backend=self.backend,
                )
            data = bytes(value)
        if len(data) > limit:
            raise ExportMetadataError(
                f"metadata file is larger than {limit} bytes; not an export's metadata",
                path=path,
                backend=self.backend,
            )
        return data

    @contextlib.contextmanager
    def open(self, path: str) -> Iterator[IO[bytes]]:
        """A binary, seekable file object of ``path`` (local folders and fsspec only).

        On object storage reads go through a :data:`HEADER_BLOCK_BYTES` read-ahead
        buffer, so reading a TIFF header costs a ranged GET, not the whole object.
        Raises :class:`NotFoundError` for a missing file, :class:`ExportMetadataError`
        for a directory and :class:`PlateReaderError` on other backends.
        """
        if self._local:
            try:
                # O_NONBLOCK: a FIFO in the folder opens at once (and is refused below)
                # instead of waiting for a writer; regular files ignore the flag
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
            except FileNotFoundError:
                raise NotFoundError(
                    "file does not exist", path=path, backend=self.backend
                ) from None
            mode = os.fstat(fd).st_mode
            found = "a directory" if stat.S_ISDIR(mode) else special_file(mode)
            if found is not None:
                os.close(fd)
                raise ExportMetadataError(
                    f"expected a file, found {found}", path=path, backend=self.backend
                )
            with file_object(fd, "r", path, closefd=True) as fh:
                yield fh
            return
        if self._remote is None:
            raise PlateReaderError(
                "file bytes can only be read from a local folder or an fsspec URL",
                path=path,
                backend=self.backend,
            )
        with self._open_remote(self._remote, path) as fh:
            yield fh

    def tiff_description(self, path: str) -> str:
        """The ``ImageDescription`` of the first IFD of the TIFF at ``path`` ("" if none).

        Reads the header only; a file that is no readable TIFF raises
        :class:`ExportMetadataError`.
        """
        import tifffile

        with self.open(path) as fh:
            try:
                with tifffile.TiffFile(fh) as tif:
                    return tif.pages.first.description or ""
            except (tifffile.TiffFileError, ValueError, IndexError) as exc:
                raise ExportMetadataError(
                    f"not a readable TIFF (truncated?): {exc}", path=path, backend=self.backend
                ) from exc

    @contextlib.contextmanager
    def _open_remote(self, be: FsspecStorageBackend, path: str) -> Iterator[IO[bytes]]:
        current = path
        for _ in range(_MAX_LINK_HOPS):
            key = be.url_of(current)
            with self._errors(path):
                try:
                    fh = be.fs.open(key, "rb", block_size=HEADER_BLOCK_BYTES)
                except FileNotFoundError:
                    raise NotFoundError(
                        "file does not exist", path=path, backend=self.backend
                    ) from None
                except IsADirectoryError:
                    raise ExportMetadataError(
                        "expected a file, found a directory", path=path, backend=self.backend
                    ) from None
            with fh:
                with self._errors(path):
                    head = fh.read(len(LINK_MAGIC))
                    fh.seek(0)
                if head != LINK_MAGIC:
                    yield fh
                    return
            # one of hcsflow's link objects: read its target instead
            current = be.read_link(current)
        raise ExportMetadataError(
            "symlink chain too long or looping", path=path, backend=self.backend
        )

    @contextlib.contextmanager
    def _errors(self, path: str) -> Iterator[None]:
        """Network, permission and credential failures become :class:`ObjectStoreError`."""
        try:
            yield
        except (HcsflowError, FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise
        except Exception as exc:
            module = (type(exc).__module__ or "").split(".")[0]
            if isinstance(exc, OSError) or module in _NETWORK_MODULES:
                raise ObjectStoreError(
                    f"object store unreachable or access denied: {type(exc).__name__}: {exc}",
                    path=self.location(path),
                    backend=self.backend,
                ) from exc
            raise

    def local_path(self, path: str) -> str | None:
        """The local file system path of ``path`` (``None`` when not on a local disk)."""
        return path if self._local else None


def _walk_local(root: str) -> Iterator[str]:
    """Files below ``root``; symlinks to files are files, symlinked directories are not
    descended into (a link back up would loop)."""
    stack = [root]
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except (FileNotFoundError, NotADirectoryError):
            continue  # removed while listing: nothing to read there
        except PermissionError as exc:
            raise PlateReaderError(
                f"cannot list a folder of the plate: {exc.strerror}", path=current, backend="disk"
            ) from exc
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
            elif entry.is_file():
                yield posixpath.join(current, entry.name)
