"""Finding things in an OME-Zarr plate store: wells, their metadata, field image groups.

A plate store (NGFF 0.5 shown; 0.4 is the same tree in zarr format 2)::

    plate.zarr/zarr.json                  plate group: ome.plate (rows, columns, wells...)
    plate.zarr/A/zarr.json                row group
    plate.zarr/A/1/zarr.json              well group: ome.well.images -> field group paths
    plate.zarr/A/1/0/zarr.json            field image: ome.multiscales (axes, datasets)
    plate.zarr/A/1/0/0                    array (c, z, y, x) or (t, c, z, y, x), level 0
    plate.zarr/A/1/0/1                    pyramid level 1 (y and x halved), if configured
    plate.zarr/A/1/0/labels/cells/0       label image (NGFF labels)
    plate.zarr/.hcsflow/wells/A.1.3       well marker groups (row.column.fields)

This module owns that map: store locations, well positions and keys, reading a well's
metadata and finding its field image groups, creating a group that is not there yet,
and the errors that name a store and key.  Every path read from stored metadata is
checked to be a child path before it is used.
"""

from __future__ import annotations

import os
import re
import uuid
from typing import Any

from hcsflow.errors import NotFoundError, PlateLayoutError, PlateMetadataError
from hcsflow.storage._limits import StorageLimits
from hcsflow.storage.plate import WellPosition, parse_well
from hcsflow.storage.zarr import _ome
from hcsflow.storage.zarr._io import BACKEND, Location, location

__all__ = [
    "StoreLike",
    "MARKERS",
    "locate",
    "well_position",
    "well_key",
    "layout_error",
    "meta_error",
    "fresh_name",
    "meta_names",
    "is_orphan_name",
    "ensure_group",
    "read_well_meta",
    "field_paths",
    "require_well",
    "image_loc",
]

StoreLike = str | os.PathLike[str] | Location

MARKERS = (".hcsflow", "wells")


def locate(
    store: StoreLike,
    storage_options: dict[str, Any] | None,
    limits: StorageLimits | None = None,
) -> Location:
    """The :class:`Location` of a plate store (a local path, a URL or a location)."""
    if isinstance(store, Location):
        return store
    return location(store, storage_options, limits)


def well_position(loc: Location, well: str | WellPosition) -> WellPosition:
    """``well`` as a :class:`WellPosition` (a typed error naming the store if it is none)."""
    if isinstance(well, WellPosition):
        return well
    try:
        return parse_well(well)
    except PlateLayoutError as exc:
        raise PlateLayoutError(
            f"{well!r} is not a plate position (store {loc.url!r})",
            path=loc.url,
            backend=BACKEND,
        ) from exc


def well_key(pos: WellPosition) -> str:
    """The path of a well group in a plate store (``"B/3"``)."""
    return f"{pos.row_name}/{pos.column + 1}"


def layout_error(loc: Location, key: str, problem: str) -> PlateLayoutError:
    """A :class:`PlateLayoutError` naming the store and key."""
    return PlateLayoutError(
        f"{problem}: store {loc.url!r}, key {key!r}",
        path=f"{loc.url}/{key}" if key else loc.url,
        backend=BACKEND,
    )


def meta_error(loc: Location, key: str, problem: str) -> PlateMetadataError:
    """A :class:`PlateMetadataError` naming the store and key."""
    return PlateMetadataError(
        f"{problem}: store {loc.url!r}, key {key!r}",
        path=f"{loc.url}/{key}" if key else loc.url,
        backend=BACKEND,
    )


def fresh_name(taken: set[str], base: str) -> str:
    """``base``, or ``base`` with a random suffix when ``taken`` holds it (a new group name)."""
    if base not in taken:
        return base
    while True:
        cand = f"{base}v{uuid.uuid4().hex[:8]}"
        if cand not in taken:
            return cand


def meta_names() -> set[str]:
    """Names of zarr metadata documents (never groups to clean up)."""
    return {"zarr.json", ".zgroup", ".zattrs", ".zarray", ".zmetadata"}


def is_orphan_name(name: str) -> bool:
    """Whether ``name`` may be a field group left by a crashed write of its well."""
    # field groups are "<n>" or "<n>v<hex>"; a crashed write can leave either behind
    return re.fullmatch(r"\d+(v[0-9a-f]{8})?", name) is not None


def ensure_group(loc: Location, attributes: dict[str, Any], zarr_format: int) -> None:
    """Create a group at ``loc`` if no node is there (never replaces existing metadata)."""
    if loc.exists_file("zarr.json" if zarr_format == 3 else ".zgroup"):
        return  # the common case: a cheap look instead of a create attempt
    if zarr_format == 3:
        loc.write_once("zarr.json", _ome.group_document(attributes))
    else:
        if loc.write_once(".zgroup", b'{\n  "zarr_format": 2\n}'):
            loc.write_json(".zattrs", attributes)


def read_well_meta(
    plate: Location,
    pos: WellPosition,
    key: str | None = None,
    node: _ome.NodeMeta | None = None,
) -> tuple[_ome.NodeMeta, str, dict[str, Any]] | None:
    """(node, NGFF version, well block) of a well; ``node``: its metadata if already read."""
    key = key or well_key(pos)
    if node is None:
        node = _ome.read_node(plate.child(key))
    if node is None:
        return None
    version, block = _ome.unwrap(node.attributes)
    well = block.get("well")
    if version is None or not isinstance(well, dict):
        raise meta_error(plate, key, "well group has no NGFF 'well' metadata")
    images = well.get("images")
    if not isinstance(images, list) or not all(
        isinstance(i, dict) and isinstance(i.get("path"), str) for i in images
    ):
        raise meta_error(plate, key, "well metadata 'images' must be a list of {'path': ...}")
    meta_key = f"{key}/{'zarr.json' if node.zarr_format == 3 else '.zattrs'}"
    for image in images:
        _ome.child_path(image["path"], plate, meta_key, "well image path")
    return node, version, well


def _reading_key(plate: Location, pos: WellPosition) -> tuple[str, _ome.NodeMeta | None]:
    """The well's path for reading (``"B/3"``, or the path the plate metadata lists).

    Plates from other tools may name columns ``"03"``; their plate metadata says so.
    Also returns the well's metadata when the first look found it (saves a second read).
    """
    key = well_key(pos)
    well_node = _ome.read_node(plate.child(key))
    if well_node is not None:
        return key, well_node
    node = _ome.read_node(plate)
    meta = _ome.unwrap(node.attributes)[1].get("plate") if node is not None else None
    for w in meta.get("wells", []) if isinstance(meta, dict) else []:
        path = w.get("path") if isinstance(w, dict) else None
        if not isinstance(path, str) or path.count("/") != 1:
            continue
        _ome.child_path(path, plate, "zarr.json", "plate well path", parts=2)
        rname, cname = path.split("/")
        if rname.upper() == pos.row_name and cname.isdigit() and int(cname) == pos.column + 1:
            return path, None
    return key, None


def field_paths(well: dict[str, Any]) -> list[str]:
    """The field group paths a well's NGFF ``well`` block lists, in order."""
    return [str(i["path"]) for i in well["images"]]


def require_well(
    plate: Location, well: str | WellPosition
) -> tuple[WellPosition, str, _ome.NodeMeta, str, list[str]]:
    """(position, key, node, NGFF version, field paths) of an existing well, else NotFound."""
    pos = well_position(plate, well)
    key, well_node = _reading_key(plate, pos)
    meta = read_well_meta(plate, pos, key, well_node)
    if meta is None:
        raise NotFoundError(
            f"no well {pos.name}: store {plate.url!r}, key {key!r}",
            path=f"{plate.url}/{key}",
            backend=BACKEND,
        )
    node, version, wmeta = meta
    return pos, key, node, version, field_paths(wmeta)


def image_loc(plate: Location, well: str | WellPosition, field: int) -> tuple[Location, str, int]:
    pos, key, node, version, paths = require_well(plate, well)
    if not isinstance(field, int) or not 0 <= field < len(paths):
        raise NotFoundError(
            f"well {pos.name} has fields 0..{len(paths) - 1}, not {field!r}: "
            f"store {plate.url!r}, key {key!r}",
            path=f"{plate.url}/{key}",
            backend=BACKEND,
        )
    return plate.child(key, paths[field]), version, node.zarr_format
