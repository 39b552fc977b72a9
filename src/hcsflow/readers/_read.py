"""``read_plate``: find the reader of a plate directory and describe the plate."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from hcsflow.errors import (
    InvalidPathError,
    PlateLayoutError,
    StorageError,
    UnknownPlateFormatError,
)
from hcsflow.readers._base import PlateDescription, PlateReader, listing
from hcsflow.readers._layouts import FileLayoutReader
from hcsflow.readers._registry import ReaderRegistry, reader_registry
from hcsflow.readers._source import PlateSource
from hcsflow.storage import Backend, FileManager
from hcsflow.storage._fsspec import as_local_path
from hcsflow.storage.plate import PlateLayout

__all__ = ["read_plate", "choose_reader"]

logger = logging.getLogger("hcsflow.readers")


def choose_reader(
    source: PlateSource,
    *,
    format: str | None = None,
    layout: PlateLayout | None = None,
    registry: ReaderRegistry | None = None,
    recursive: bool = True,
    extensions: Sequence[str] | None = None,
) -> PlateReader:
    """The reader for ``source``: the one named by ``format``, the ``files`` reader with
    ``layout``, or the first reader of ``registry`` that recognises the directory."""
    reg = registry or reader_registry
    custom_files = layout is not None or extensions is not None or not recursive
    if layout is not None and format not in (None, "files"):
        raise UnknownPlateFormatError(
            f"a file-name layout reads plain folders of images (format 'files'), not "
            f"format {format!r}; give one or the other",
            path=source.root,
            backend=source.backend,
        )
    if format is not None:
        reader = reg.get(format)
        if reader.name == "files" and custom_files:
            return FileLayoutReader(layout, extensions=extensions, recursive=recursive)
        return reader
    if layout is not None:
        return FileLayoutReader(layout, extensions=extensions, recursive=recursive)
    reader = reg.detect(source)
    if reader.name == "files" and custom_files:
        return FileLayoutReader(None, extensions=extensions, recursive=recursive)
    return reader


def read_plate(
    root: str | os.PathLike[str],
    *,
    filemanager: FileManager | None = None,
    backend: Backend | str = Backend.DISK,
    layout: PlateLayout | None = None,
    format: str | None = None,
    strict: bool = False,
    recursive: bool = True,
    extensions: Sequence[str] | None = None,
    registry: ReaderRegistry | None = None,
    storage_options: dict[str, Any] | None = None,
) -> PlateDescription:
    """Describe the plate at ``root``: a microscope export, an OME-Zarr plate or a
    folder of named image files.

    ``root`` is a local directory, a virtual path of ``backend`` in ``filemanager``,
    or an fsspec URL (``s3://bucket/plate``, ``gs://...``, ``memory://...``) read with
    ``storage_options`` (credentials otherwise come from the environment).  For a URL
    the description's :attr:`~PlateDescription.root` is the URL and its planes are
    virtual paths of ``FsspecStorageBackend(root, storage_options=...)``, registered as
    ``"fsspec"`` (:data:`~hcsflow.readers.URL_BACKEND`); an OME-Zarr plate's planes
    name the store URL.  ``file://`` and ``local://`` URLs are local paths.

    The reader is detected (see :data:`~hcsflow.readers.reader_registry`) unless
    ``format`` names one (``"imagexpress"``, ``"harmony"``, ``"cellvoyager"``,
    ``"ome-tiff"``, ``"ome-zarr"``, ``"files"``) or ``layout`` gives a file-name
    layout.  Image files the reader cannot place are listed in
    :attr:`PlateDescription.unplaced` (and logged); with ``strict=True`` they are an
    error.  Raises :class:`~hcsflow.errors.PlateLayoutError` (and its subclass
    :class:`~hcsflow.errors.UnknownPlateFormatError` when nothing recognises the
    directory), :class:`~hcsflow.errors.ExportMetadataError` /
    :class:`~hcsflow.errors.MissingPlaneError` for broken exports,
    :class:`~hcsflow.errors.NotFoundError` when ``root`` is not a directory and
    :class:`~hcsflow.errors.ObjectStoreError` when a URL cannot be reached.  Errors
    about a URL plate name the file by its URL.
    """
    bname = backend.value if isinstance(backend, Backend) else str(backend)
    text = as_local_path(os.fspath(root))
    if "://" in text:
        if filemanager is not None or bname != Backend.DISK.value:
            raise InvalidPathError(
                "a URL names its own storage: give storage_options, not a file manager or backend",
                path=text,
                backend=bname,
            )
        return _read_url(
            text.rstrip("/"),
            storage_options,
            format=format,
            layout=layout,
            strict=strict,
            recursive=recursive,
            extensions=extensions,
            registry=registry,
        )
    fm = filemanager or FileManager()
    if bname == Backend.ZARR.value:
        if format not in (None, "ome-zarr") or layout is not None:
            raise UnknownPlateFormatError(
                "only OME-Zarr plates are read from zarr stores", path=text, backend=bname
            )
        from hcsflow.readers._omezarr import read_zarr_plate

        return _check(read_zarr_plate(text), strict)
    if bname == Backend.DISK.value:
        text = os.path.abspath(text)
    source = PlateSource(text, fm, bname)
    source.require_dir()
    reader = choose_reader(
        source,
        format=format,
        layout=layout,
        registry=registry,
        recursive=recursive,
        extensions=extensions,
    )
    return _check(reader.describe(source), strict)


def _read_url(
    url: str,
    storage_options: dict[str, Any] | None,
    *,
    format: str | None,
    layout: PlateLayout | None,
    strict: bool,
    recursive: bool,
    extensions: Sequence[str] | None,
    registry: ReaderRegistry | None,
) -> PlateDescription:
    """Describe the plate at ``url``; errors name files by their URL."""
    source = PlateSource.from_url(url, storage_options)
    try:
        source.require_dir()
        reader = choose_reader(
            source,
            format=format,
            layout=layout,
            registry=registry,
            recursive=recursive,
            extensions=extensions,
        )
        desc = reader.describe(source)
        if desc.root == source.root and desc.backend == source.backend:
            desc = replace(desc, root=url)
        return _check(desc, strict)
    except StorageError as exc:
        located = _located(exc, source)
        if located is exc:
            raise
        raise located from exc


def _located(exc: StorageError, source: PlateSource) -> StorageError:
    """``exc`` naming its file by URL (``exc`` itself when it names none of the source's)."""
    path = exc.path
    if path is None or exc.backend != source.backend or not path.startswith("/"):
        return exc
    if type(exc).__init__ is not StorageError.__init__:
        return exc  # an error with more fields than (message, path, backend)
    return type(exc)(exc.reason, path=source.location(path), backend=exc.backend)


def _check(desc: PlateDescription, strict: bool) -> PlateDescription:
    if desc.unplaced:
        names = [f"{u.path} ({u.reason})" for u in desc.unplaced]
        if strict:
            raise PlateLayoutError(
                f"{len(names)} image file(s) of the {desc.format} plate could not be placed "
                f"(strict): {listing(names)}",
                path=desc.root,
                backend=desc.backend,
            )
        logger.warning(
            "%d image file(s) of the %s plate %s could not be placed and are left out: %s",
            len(names),
            desc.format,
            desc.root,
            listing(names),
        )
    return desc
