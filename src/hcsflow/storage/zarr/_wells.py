"""Wells of an OME-Zarr plate: write (or replace) one, read a field image, its geometry.

**Nothing lost.**  A well's ``zarr.json`` is the one pointer readers follow to its
field groups.  Writing a well writes complete new field groups under names no reader
is using (``0``, ``1``... or, when those are taken by the current version,
``0v<random>``), then replaces the well ``zarr.json`` in one atomic step (``os.replace``
on a disk, a single PUT on an object store), and only then deletes the field groups of
the version it replaced.  A crash before the switch leaves the previous version
published and intact; unreferenced groups left by a crash are ignored by readers and
removed by the next write of that well.  The plate metadata is then brought up to date
(:mod:`~hcsflow.storage.zarr._plate_meta`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hcsflow.errors import AlreadyExistsError
from hcsflow.storage._limits import StorageLimits
from hcsflow.storage.plate import WellPosition
from hcsflow.storage.zarr import _ome
from hcsflow.storage.zarr._arrays import dataset_paths, open_array, open_array_at, read_array
from hcsflow.storage.zarr._config import ZarrConfig
from hcsflow.storage.zarr._debris import clean_in_flight, debris_kind
from hcsflow.storage.zarr._images import write_image
from hcsflow.storage.zarr._io import BACKEND, Location, check_bucket
from hcsflow.storage.zarr._locate import (
    MARKERS,
    StoreLike,
    ensure_group,
    field_paths,
    fresh_name,
    image_loc,
    is_orphan_name,
    layout_error,
    locate,
    meta_error,
    meta_names,
    read_well_meta,
    require_well,
    well_key,
    well_position,
)
from hcsflow.storage.zarr._plate_meta import (
    mark_well,
    marker_name,
    plate_format,
    plate_version,
    settle_plate,
)

__all__ = ["WellInfo", "write_well", "read_well", "open_image", "open_well"]

_DEFAULT = ZarrConfig()


@dataclass(frozen=True)
class WellInfo:
    """One well: its field image groups and their array geometry."""

    url: str
    well: str
    ngff_version: str
    field_paths: tuple[str, ...]
    axes: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str
    levels: int


def _normalize_fields(loc: Location, key: str, data: Any) -> dict[int, np.ndarray]:
    if isinstance(data, Mapping):
        items = dict(data)
    elif isinstance(data, np.ndarray) or hasattr(data, "__array__"):
        items = {0: data}
    elif isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        items = dict(enumerate(data))
    else:
        raise layout_error(
            loc,
            key,
            f"well data must be an array or a mapping of field -> array, got {type(data).__name__}",
        )
    if not items:
        raise layout_error(loc, key, "no images to write for this well")
    for f in items:
        if not isinstance(f, int) or isinstance(f, bool) or f < 0:
            raise layout_error(loc, key, f"field index {f!r} is not a non-negative int")
    missing = sorted(set(range(max(items) + 1)) - set(items))
    if missing:
        raise layout_error(
            loc, key, f"fields {missing} are missing (fields must be 0..{max(items)} without holes)"
        )
    out: dict[int, np.ndarray] = {}
    first: np.ndarray | None = None
    for f in sorted(items):
        arr = np.asarray(items[f])
        if arr.ndim not in (4, 5):
            raise layout_error(
                loc,
                key,
                f"field {f} has {arr.ndim} dimensions; a field "
                "image is (c, z, y, x) or (t, c, z, y, x)",
            )
        if arr.dtype.kind not in "biuf":
            raise layout_error(
                loc,
                key,
                f"field {f} has dtype {arr.dtype}; images must be boolean, integer or float",
            )
        if first is not None and (arr.shape != first.shape or arr.dtype != first.dtype):
            raise layout_error(
                loc,
                key,
                f"mixed shapes in one well: field {f} is "
                f"{arr.shape} {arr.dtype}, field 0 is "
                f"{first.shape} {first.dtype}",
            )
        first = arr if first is None else first
        out[f] = arr
    return out


def write_well(
    store: StoreLike,
    well: str | WellPosition,
    data: Any,
    config: ZarrConfig | None = None,
    *,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
    update_plate: bool = True,
    scale: Mapping[str, float] | None = None,
    units: Mapping[str, str] | None = None,
    channels: Sequence[Mapping[str, Any]] | None = None,
    plate_name: str | None = None,
) -> WellInfo:
    """Write (or replace) one well of the OME-Zarr plate at ``store``.

    ``data`` is one array for field 0 or a mapping ``{field: array}`` with fields
    ``0..n-1``; every array is ``(c, z, y, x)`` or ``(t, c, z, y, x)`` with one shape
    and dtype.  An existing well is replaced only with ``overwrite=True``, atomically
    (see the module docstring); the plate metadata is updated so it lists this well.

    Image metadata: ``scale`` is the physical size of a pixel per axis (``{"y": 0.65,
    "x": 0.65, "z": 2.0, "t": 300.0}``), ``units`` its NGFF unit per axis
    (``"micrometer"``, ``"second"``), ``channels`` one ``{"label": ..., "color":
    "RRGGBB"}`` per channel (written as ``omero`` with windows from the data).
    ``plate_name`` names the plate when this write creates it (the plate metadata keeps
    it when rebuilt).
    """
    cfg = config or _DEFAULT
    plate = locate(store, storage_options)
    pos = well_position(plate, well)
    key = well_key(pos)
    fields = _normalize_fields(plate, key, data)
    check_bucket(plate)
    plate_node = _ome.read_node(plate)
    plate_version(plate, cfg, plate_node)
    fmt = plate_format(plate, cfg, [(pos.row, pos.column)], plate_node)
    current = read_well_meta(plate, pos)
    if current is not None and not overwrite:
        raise AlreadyExistsError(
            f"well {pos.name} already exists; pass overwrite=True to replace it: store "
            f"{plate.url!r}, key {key!r}",
            path=f"{plate.url}/{key}",
            backend=BACKEND,
        )
    version = cfg.ngff_version
    if current is not None and current[1] != version:
        raise meta_error(
            plate, key, f"the well is NGFF {current[1]}, the config asks for {version}"
        )
    if plate_node is None:
        plate.makedirs()
        initial = _ome.wrap({}, version)
        if plate_name:
            initial["hcsflow"] = {"plate_name": str(plate_name)}
        ensure_group(plate, initial, cfg.zarr_format)
    ensure_group(plate.child(pos.row_name), {}, cfg.zarr_format)
    well_loc = plate.child(key)
    old_paths = field_paths(current[2]) if current is not None else []
    before = set(well_loc.list())
    taken = before | set(old_paths)
    sample = fields[0]
    axes = _ome.axes_for(sample.ndim)
    new_paths = []
    for f in sorted(fields):
        path = fresh_name(taken, str(f))
        taken.add(path)
        # a fresh field group: only the well metadata written below makes it reachable
        write_image(
            well_loc.child(path),
            fields[f],
            cfg,
            axes,
            f"{pos.name} field {f}",
            published=False,
            scale=scale,
            units=units,
            channels=channels,
        )
        new_paths.append(path)
    attrs = _ome.wrap(_ome.well_block(new_paths), version)
    attrs["hcsflow"] = {
        "shape": list(sample.shape),
        "dtype": sample.dtype.str,
        "axes": list(axes),
        "levels": cfg.pyramid_levels,
    }
    # the switch: one atomic metadata write publishes the new version of the well
    _ome.write_group(well_loc, attrs, cfg.zarr_format)
    # the listing taken before this write names every group to clean up: the replaced
    # version and orphans of crashed writes; groups that appeared since belong to a
    # concurrent writer of this well and are left alone
    for stale in (before | set(old_paths)) - set(new_paths) - meta_names():
        if (
            stale in old_paths
            or is_orphan_name(stale)
            or debris_kind(well_loc, stale, None) is not None
        ):
            well_loc.child(stale).remove()
    markers = mark_well(plate, pos, len(new_paths), cfg.zarr_format, version)
    # temporary files of writers of this well that died (plate, row and marker groups)
    for group in (
        plate,
        plate.child(pos.row_name),
        plate.child(*MARKERS, marker_name(pos, len(new_paths))),
    ):
        clean_in_flight(group)
    if update_plate:
        settle_plate(plate, version, cfg.zarr_format, fmt, name=plate_name, listing=markers)
    return WellInfo(
        plate.url,
        pos.name,
        version,
        tuple(new_paths),
        axes,
        tuple(sample.shape),
        sample.dtype.str,
        cfg.pyramid_levels,
    )


def open_image(
    store: StoreLike,
    well: str | WellPosition,
    field: int = 0,
    level: int = 0,
    *,
    storage_options: dict[str, Any] | None = None,
) -> Any:
    """The lazy ``zarr.Array`` of one field image; indexing it decodes only those chunks."""
    plate = locate(store, storage_options)
    img, _, _ = image_loc(plate, well, field)
    return open_array(img, level)


def read_well(
    store: StoreLike,
    well: str | WellPosition,
    field: int = 0,
    level: int = 0,
    *,
    storage_options: dict[str, Any] | None = None,
    limits: StorageLimits | None = None,
) -> np.ndarray:
    """One field image of a well as a numpy array (``(c, z, y, x)`` or with ``t``).

    The array is 64-byte aligned; its declared size and chunk count are checked against
    ``limits`` (default :class:`~hcsflow.storage.StorageLimits`) before reading.
    """
    plate = locate(store, storage_options, limits)
    img, _, _ = image_loc(plate, well, field)
    arr, loc = open_array_at(img, level)
    return read_array(arr, Ellipsis, loc)


def open_well(
    store: StoreLike, well: str | WellPosition, *, storage_options: dict[str, Any] | None = None
) -> WellInfo:
    """Geometry of a well (reads metadata only)."""
    plate = locate(store, storage_options)
    pos, key, _, version, paths = require_well(plate, well)
    img = plate.child(key, paths[0])
    levels, axes, _ = dataset_paths(img)
    arr = open_array(img, 0)
    return WellInfo(
        plate.url,
        pos.name,
        version,
        tuple(paths),
        tuple(axes),
        tuple(int(s) for s in arr.shape),
        np.dtype(arr.dtype).str,
        len(levels),
    )
