"""Where a reader finds an export's files: a plate directory on one storage backend.

Readers list files and read metadata files (XML, HTD, MLF) through a
:class:`PlateSource`; image planes are read later through the
:class:`~hcsflow.storage.FileManager` (see :meth:`PlateReader.load_planes`).  On the
local disk the listing is one ``os.scandir`` walk (no sorting, no per-file stat beyond
the directory entry), which keeps describing a 10,000-file export well under a second.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator

from hcsflow import paths as vpaths
from hcsflow.errors import ExportMetadataError, NotFoundError, PlateReaderError
from hcsflow.storage import Backend, DiskStorageBackend, FileManager

__all__ = ["PlateSource", "MAX_METADATA_BYTES"]

MAX_METADATA_BYTES = 1 << 30
"""Largest metadata file a reader reads into memory (a 384-well Harmony index of a
long time course is a few hundred MB; anything above 1 GiB is not a metadata file)."""


class PlateSource:
    """A plate directory ``root`` on ``backend``, as readers see it.

    Paths handed out and accepted are virtual paths of ``backend`` (absolute, posix);
    :meth:`rel` gives the path relative to the plate root for messages.
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

    def __repr__(self) -> str:
        return f"PlateSource({self.root!r}, backend={self.backend!r})"

    def _is_local(self) -> bool:
        # the default disk backend maps a virtual path to the same local path
        if self.backend != Backend.DISK.value:
            return False
        be = self.filemanager.backend(self.backend)
        return isinstance(be, DiskStorageBackend) and be.root is None

    @property
    def is_local(self) -> bool:
        """Whether the plate is a local directory (metadata and TIFF headers readable)."""
        return self._local

    # -- paths
    def join(self, *parts: str) -> str:
        """The virtual path of ``parts`` below the plate root."""
        return vpaths.join(self.root, *parts)

    def rel(self, path: str) -> str:
        """``path`` relative to the plate root (for messages)."""
        return (
            vpaths.relative_to(path, self.root) if vpaths.is_relative_to(path, self.root) else path
        )

    # -- queries
    def is_dir(self, path: str | None = None) -> bool:
        """Whether ``path`` (default: the root) is a directory."""
        p = path or self.root
        if self._local:
            return os.path.isdir(p)
        return self.filemanager.is_dir(p, self.backend)

    def is_file(self, path: str) -> bool:
        """Whether ``path`` is a file."""
        if self._local:
            return os.path.isfile(path)
        return self.filemanager.is_file(path, self.backend)

    def require_dir(self) -> None:
        """Raise :class:`NotFoundError` unless the root is a directory."""
        if not self.is_dir():
            raise NotFoundError(
                "plate directory does not exist", path=self.root, backend=self.backend
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
            else:
                self._files = self.filemanager.list_files(self.root, self.backend, recursive=True)
        return self._files

    # -- reading
    def read_bytes(self, path: str, *, limit: int = MAX_METADATA_BYTES) -> bytes:
        """The bytes of a metadata file (refused above ``limit`` bytes)."""
        if self._local:
            try:
                with open(path, "rb") as fh:
                    data = fh.read(limit + 1)
            except FileNotFoundError:
                raise NotFoundError(
                    "metadata file does not exist", path=path, backend=self.backend
                ) from None
            except IsADirectoryError:
                raise ExportMetadataError(
                    "expected a metadata file, found a directory", path=path, backend=self.backend
                ) from None
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
