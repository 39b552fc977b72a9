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

import contextlib
import functools
import hashlib
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

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
from hcsflow.storage._fsspec import is_url

__all__ = ["OutputRoot", "WellSink", "INPUT_BACKEND", "plate_location"]

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
        """The root for a path or URL (``file://`` URLs become local paths)."""
        raw = os.fspath(target)
        if raw.startswith("file://"):
            raw = raw[len("file://") :]
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
        h = hashlib.sha256()
        size = 0
        try:
            if self.remote:
                fs, base = self._fs()
                opener: Any = fs.open(f"{base}/{rel}", "rb", block_size=1 << 22)
            else:
                opener = open(os.path.join(self.url, rel), "rb")  # noqa: SIM115
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        with opener as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                size += len(block)
                h.update(block)
        return size, h.hexdigest()

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

    def remove_files(self, rels: Iterable[str]) -> None:
        """Delete the listed files (missing ones are fine)."""
        rels = list(rels)
        if not rels:
            return
        if not self.remote:
            for rel in rels:
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    os.unlink(os.path.join(self.url, rel))
            return
        fs, base = self._fs()
        with contextlib.suppress(FileNotFoundError):
            fs.rm([f"{base}/{r}" for r in rels])


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
    def __init__(self, *, fsync: bool):
        super().__init__(fsync=fsync)
        self.written = set()


class _TrackingFsspec(_Tracking, FsspecStorageBackend):
    def __init__(self, url: str, storage_options: dict[str, Any]):
        super().__init__(url, storage_options=storage_options)
        self.written = set()


@dataclass
class WellSink:
    """Where one well writes, inside its worker: backends, zarr store URLs, written files."""

    root: OutputRoot
    fsync: bool = True
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
                self._disk = _TrackingDisk(fsync=self.fsync)
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
