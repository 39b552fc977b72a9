"""Format ``ome-zarr``: an OME-Zarr (NGFF 0.4/0.5) HCS plate as input.

Field images are ``(c, z, y, x)`` or ``(t, c, z, y, x)``; each field becomes a site,
its channel, z and time planes become the plate's channels, planes and timepoints.
The physical pixel size, z step and time interval come from the first field image's
``multiscales`` (level-0 ``scale`` with the axes' units), channel names and colours
from its ``omero`` block, the plate name from the plate metadata.  Planes are read
one at a time from the zarr arrays, so a step that needs one channel decodes only
that channel's chunks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from hcsflow.errors import HcsflowError, PlateLayoutError
from hcsflow.readers._base import (
    ChannelInfo,
    PlateDescription,
    PlateImage,
    PlateReader,
)
from hcsflow.readers._source import PlateSource
from hcsflow.storage import Backend, FileManager
from hcsflow.storage.plate import ImageCoordinates, parse_well

__all__ = ["OmeZarrReader", "is_zarr_plate", "read_zarr_plate"]

_LENGTH_UM = {
    "angstrom": 1e-4,
    "nanometer": 1e-3,
    "micrometer": 1.0,
    "millimeter": 1e3,
    "centimeter": 1e4,
    "meter": 1e6,
}
_TIME_S = {"millisecond": 1e-3, "second": 1.0, "minute": 60.0, "hour": 3600.0}
_GROUP_DOC_BYTES = 16 << 20


def is_zarr_plate(root: str) -> bool:
    """Whether the local directory ``root`` is a zarr group (an OME-Zarr plate candidate)."""
    return os.path.isfile(os.path.join(root, "zarr.json")) or os.path.isfile(
        os.path.join(root, ".zattrs")
    )


def _has_plate_metadata(source: PlateSource) -> bool:
    """Whether the group document at the root of ``source`` carries NGFF plate metadata.

    A group document that cannot be parsed counts as a plate: ``describe`` then reports
    what is wrong with it.
    """
    for name in ("zarr.json", ".zattrs"):
        path = source.join(name)
        if not source.is_file(path):
            continue
        try:
            doc = json.loads(source.read_bytes(path, limit=_GROUP_DOC_BYTES))
        except (ValueError, HcsflowError):
            return True  # a broken group document: let describe() report it
        if not isinstance(doc, dict):
            return True
        attrs = doc.get("attributes", doc) if name == "zarr.json" else doc
        if not isinstance(attrs, dict):
            return True
        ome = attrs.get("ome")
        return "plate" in attrs or (isinstance(ome, dict) and "plate" in ome)
    return False


class OmeZarrReader(PlateReader):
    """OME-Zarr HCS plates (local directories or fsspec URLs)."""

    name = "ome-zarr"
    title = "OME-Zarr plate"
    looks_for = "a zarr group (zarr.json or .zattrs) with NGFF plate metadata"

    def detect(self, source: PlateSource) -> bool:
        if source.backend == Backend.ZARR.value:
            return True
        return (source.is_local or source.url is not None) and _has_plate_metadata(source)

    def describe(self, source: PlateSource) -> PlateDescription:
        if source.url is not None:
            return describe_store(source.url, self, storage_options=source.storage_options)
        return describe_store(source.root, self)

    def load_planes(
        self, images: Sequence[PlateImage], filemanager: FileManager, backend: str
    ) -> list[np.ndarray]:
        """The planes of ``images``, read plane by plane from their field arrays.

        A plane's path is its store (a local path or a URL).  When ``backend`` is an
        :class:`~hcsflow.storage.FsspecStorageBackend` (a run reads a URL plate through
        one), its storage options are used to open the store, so credentials given to
        the run reach the workers the same way as for plates of image files.
        """
        from hcsflow.storage import FsspecStorageBackend, open_image

        options = None
        if backend != Backend.ZARR.value:
            via = filemanager.backend(backend)
            if isinstance(via, FsspecStorageBackend):
                options = dict(via.storage_options)
        arrays: dict[tuple[str, str, int], Any] = {}
        out = []
        for img in images:
            c = img.coords
            key = (img.path, c.well, c.field)
            if key not in arrays:
                arrays[key] = open_image(img.path, c.well, c.field, storage_options=options)
            arr = arrays[key]
            index = (c.t, c.channel, c.z) if arr.ndim == 5 else (c.channel, c.z)
            out.append(np.asarray(arr[index]))
        return out


def read_zarr_plate(
    store: str, *, storage_options: dict[str, Any] | None = None
) -> PlateDescription:
    """Describe the OME-Zarr plate at ``store`` (a local path or an fsspec URL read with
    ``storage_options``)."""
    if "://" not in store:
        store = os.path.abspath(store)
    return describe_store(store, OmeZarrReader(), storage_options=storage_options)


def _physical(value: float, unit: str | None, table: dict[str, float]) -> float | None:
    if unit is None:
        return None
    factor = table.get(unit)
    return value * factor if factor is not None else None


def describe_store(
    store: str, reader: PlateReader, *, storage_options: dict[str, Any] | None = None
) -> PlateDescription:
    """The :class:`PlateDescription` of the OME-Zarr plate at ``store`` (fsspec
    ``storage_options`` for a URL).

    Every well must have the same fields, channels, planes and timepoints (reported
    together in one :class:`PlateLayoutError` otherwise).
    """
    from hcsflow.storage import image_metadata, open_plate, open_well

    info = open_plate(store, storage_options=storage_options)
    if not info.wells:
        raise PlateLayoutError(
            "the OME-Zarr plate lists no wells", path=store, backend=Backend.ZARR.value
        )
    wells: dict[str, tuple[PlateImage, ...]] = {}
    problems: list[str] = []
    dims: dict[str, tuple[int, ...]] = {}
    for well in info.wells:
        w = open_well(store, well, storage_options=storage_options)
        axes = tuple(w.axes)
        if axes not in (("c", "z", "y", "x"), ("t", "c", "z", "y", "x")):
            problems.append(f"well {well}: axes {axes} are not (c, z, y, x) or (t, c, z, y, x)")
            continue
        shape = tuple(w.shape)
        t_n, c_n, z_n = (shape[0], shape[1], shape[2]) if len(axes) == 5 else (1, *shape[:2])
        dims[well] = (len(w.field_paths), t_n, c_n, z_n)
        wells[well] = tuple(
            PlateImage(ImageCoordinates(well, f, c, z, t), store)
            for t in range(t_n)
            for c in range(c_n)
            for z in range(z_n)
            for f in range(len(w.field_paths))
        )
    distinct = set(dims.values())
    if len(distinct) > 1:
        first = next(iter(dims))
        for well, d in dims.items():
            if d != dims[first]:
                problems.append(
                    f"well {well} has (fields, t, c, z) = {d}, well {first} has {dims[first]}"
                )
    if problems:
        raise PlateLayoutError(
            "the OME-Zarr plate cannot be read:\n" + "\n".join(f"  - {p}" for p in problems),
            path=store,
            backend=Backend.ZARR.value,
        )
    n_f, n_t, n_c, n_z = next(iter(distinct))
    attrs = image_metadata(store, info.wells[0], 0, storage_options=storage_options)
    notes: list[str] = []
    pixel: tuple[float, float] | None = None
    sy = _physical(attrs.scale.get("y", 1.0), attrs.units.get("y"), _LENGTH_UM)
    sx = _physical(attrs.scale.get("x", 1.0), attrs.units.get("x"), _LENGTH_UM)
    if sy is not None and sx is not None:
        pixel = (sy, sx)
    elif attrs.units.get("x") or attrs.units.get("y"):
        notes.append(f"axis units {attrs.units} are not lengths hcsflow converts to micrometres")
    z_step = _physical(attrs.scale.get("z", 1.0), attrs.units.get("z"), _LENGTH_UM)
    interval = _physical(attrs.scale.get("t", 1.0), attrs.units.get("t"), _TIME_S)
    channels = []
    for i in range(n_c):
        entry = attrs.channels[i] if i < len(attrs.channels) else {}
        label = entry.get("label")
        color = entry.get("color")
        channels.append(
            ChannelInfo(
                i,
                name=str(label) if label else None,
                color=str(color).upper() if isinstance(color, str) and len(color) == 6 else None,
            )
        )
    ordered = {w: wells[w] for w in sorted(wells, key=parse_well)}
    return PlateDescription(
        root=store,
        backend=Backend.ZARR.value,
        layout="ome-zarr",
        wells=ordered,
        sites=tuple(range(n_f)),
        channels=tuple(range(n_c)),
        zs=tuple(range(n_z)),
        ts=tuple(range(n_t)),
        format=reader.name,
        name=info.name,
        channel_info=tuple(channels),
        pixel_size_um=pixel,
        z_step_um=z_step,
        time_interval_s=interval,
        plate_shape=(len(info.rows), len(info.columns)),
        notes=tuple(notes),
        reader=reader,
    )
