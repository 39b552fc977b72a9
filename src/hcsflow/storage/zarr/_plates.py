"""OME-Zarr HCS plates: write a well, read a field, add labels, publish plate metadata.

Layout of a plate store (NGFF 0.5 shown; 0.4 is the same tree in zarr format 2)::

    plate.zarr/zarr.json                  plate group: ome.plate (rows, columns, wells...)
    plate.zarr/A/zarr.json                row group
    plate.zarr/A/1/zarr.json              well group: ome.well.images -> field group paths
    plate.zarr/A/1/0/zarr.json            field image: ome.multiscales (axes, datasets)
    plate.zarr/A/1/0/0                    array (c, z, y, x) or (t, c, z, y, x), level 0
    plate.zarr/A/1/0/1                    pyramid level 1 (y and x halved), if configured
    plate.zarr/A/1/0/labels/cells/0       label image (NGFF labels)
    plate.zarr/.hcsflow/wells/A.1.3       well marker groups (row.column.fields)

**Nothing lost.**  A well's ``zarr.json`` is the one pointer readers follow to its
field groups.  Writing a well writes complete new field groups under names no reader
is using (``0``, ``1``... or, when those are taken by the current version,
``0v<random>``), then replaces the well ``zarr.json`` in one atomic step (``os.replace``
on a disk, a single PUT on an object store), and only then deletes the field groups of
the version it replaced.  A crash before the switch leaves the previous version
published and intact; unreferenced groups left by a crash are ignored by readers and
removed by the next write of that well.

**Plate metadata without locks.**  After publishing, a well writes its marker group
``.hcsflow/wells/<row>.<column>.<fields>`` and then rewrites the plate ``zarr.json``
from a listing of all markers, re-listing afterwards and rewriting until the listing
it wrote is still the listing it sees.  Because every writer finishes with a write
made *after* its own marker existed, and checks the listing after that write, the last
plate write always includes every published well: concurrent threads, processes or
machines cannot drop each other's wells.  :func:`finalize_plate` then rebuilds the
plate metadata once from the well groups themselves (the authoritative source), which
also repairs markers of a writer that crashed between publishing and marking.
"""

from __future__ import annotations

import functools
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hcsflow.errors import (
    AlreadyExistsError,
    CorruptStoreError,
    HcsflowError,
    NotFoundError,
    PlateLayoutError,
    PlateMetadataError,
    ZarrError,
)
from hcsflow.storage._decode import aligned_empty
from hcsflow.storage._limits import StorageLimits
from hcsflow.storage.plate import PLATE_FORMATS, WellPosition, parse_well, row_index, row_name
from hcsflow.storage.zarr import _ome
from hcsflow.storage.zarr._config import ZarrConfig
from hcsflow.storage.zarr._debris import clean_in_flight, debris_kind
from hcsflow.storage.zarr._io import (
    BACKEND,
    Location,
    check_bucket,
    corrupt,
    location,
    store_errors,
)
from hcsflow.storage.zarr._localfs import LocalFS

__all__ = [
    "PlateInfo",
    "WellInfo",
    "write_well",
    "read_well",
    "open_image",
    "open_well",
    "write_labels",
    "read_labels",
    "finalize_plate",
    "open_plate",
    "list_wells",
    "image_metadata",
]

MARKERS = (".hcsflow", "wells")
_MAX_SETTLE_ROUNDS = 200
_NAME_RE = re.compile(r"^[A-Za-z0-9_\-]+$")
_DEFAULT = ZarrConfig()

StoreLike = str | os.PathLike[str] | Location


@dataclass(frozen=True)
class PlateInfo:
    """What a plate's metadata says (no array data is read to produce it)."""

    url: str
    ngff_version: str
    name: str
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    wells: tuple[str, ...]
    """Canonical well names (``"A01"``) in row-major order."""
    well_paths: tuple[str, ...]
    """The wells' paths in the store (``"A/1"``), in the order of :attr:`wells`."""
    field_count: int | None


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


# --------------------------------------------------------------------------- helpers


def _loc(
    store: StoreLike,
    storage_options: dict[str, Any] | None,
    limits: StorageLimits | None = None,
) -> Location:
    if isinstance(store, Location):
        return store
    return location(store, storage_options, limits)


def _well_pos(loc: Location, well: str | WellPosition) -> WellPosition:
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


def _well_key(pos: WellPosition) -> str:
    return f"{pos.row_name}/{pos.column + 1}"


def _layout_error(loc: Location, key: str, problem: str) -> PlateLayoutError:
    return PlateLayoutError(
        f"{problem}: store {loc.url!r}, key {key!r}",
        path=f"{loc.url}/{key}" if key else loc.url,
        backend=BACKEND,
    )


def _meta_error(loc: Location, key: str, problem: str) -> PlateMetadataError:
    return PlateMetadataError(
        f"{problem}: store {loc.url!r}, key {key!r}",
        path=f"{loc.url}/{key}" if key else loc.url,
        backend=BACKEND,
    )


def _fresh_name(taken: set[str], base: str) -> str:
    if base not in taken:
        return base
    while True:
        cand = f"{base}v{uuid.uuid4().hex[:8]}"
        if cand not in taken:
            return cand


def _normalize_fields(loc: Location, key: str, data: Any) -> dict[int, np.ndarray]:
    if isinstance(data, Mapping):
        items = dict(data)
    elif isinstance(data, np.ndarray) or hasattr(data, "__array__"):
        items = {0: data}
    elif isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        items = dict(enumerate(data))
    else:
        raise _layout_error(
            loc,
            key,
            f"well data must be an array or a mapping of field -> array, got {type(data).__name__}",
        )
    if not items:
        raise _layout_error(loc, key, "no images to write for this well")
    for f in items:
        if not isinstance(f, int) or isinstance(f, bool) or f < 0:
            raise _layout_error(loc, key, f"field index {f!r} is not a non-negative int")
    missing = sorted(set(range(max(items) + 1)) - set(items))
    if missing:
        raise _layout_error(
            loc, key, f"fields {missing} are missing (fields must be 0..{max(items)} without holes)"
        )
    out: dict[int, np.ndarray] = {}
    first: np.ndarray | None = None
    for f in sorted(items):
        arr = np.asarray(items[f])
        if arr.ndim not in (4, 5):
            raise _layout_error(
                loc,
                key,
                f"field {f} has {arr.ndim} dimensions; a field "
                "image is (c, z, y, x) or (t, c, z, y, x)",
            )
        if arr.dtype.kind not in "biuf":
            raise _layout_error(
                loc,
                key,
                f"field {f} has dtype {arr.dtype}; images must be boolean, integer or float",
            )
        if first is not None and (arr.shape != first.shape or arr.dtype != first.dtype):
            raise _layout_error(
                loc,
                key,
                f"mixed shapes in one well: field {f} is "
                f"{arr.shape} {arr.dtype}, field 0 is "
                f"{first.shape} {first.dtype}",
            )
        first = arr if first is None else first
        out[f] = arr
    return out


def _downsample(arr: np.ndarray, labels: bool) -> np.ndarray:
    if labels:
        return arr[..., ::2, ::2]
    h, w = arr.shape[-2:]
    pad = [(0, 0)] * (arr.ndim - 2) + [(0, h % 2), (0, w % 2)]
    a = np.pad(arr, pad, mode="edge") if (h % 2 or w % 2) else arr
    shape = a.shape[:-2] + (a.shape[-2] // 2, 2, a.shape[-1] // 2, 2)
    mean = a.reshape(shape).mean(axis=(-1, -3))
    if arr.dtype.kind in "iub":
        return np.rint(mean).astype(arr.dtype)
    return mean.astype(arr.dtype)


def _pyramid(arr: np.ndarray, levels: int, labels: bool) -> list[np.ndarray]:
    out = [arr]
    for _ in range(1, levels):
        out.append(_downsample(out[-1], labels))
    return out


def create_array(
    loc: Location, data: np.ndarray, config: ZarrConfig, dimension_names: Sequence[str] | None
) -> None:
    """Write ``data`` as a new zarr array at ``loc`` encoded per ``config``."""
    import zarr

    chunks = config.chunk_shape(data.shape)
    kwargs: dict[str, Any] = dict(
        shape=data.shape,
        dtype=data.dtype,
        chunks=chunks,
        shards=config.shard_shape(data.shape, chunks),
        zarr_format=config.zarr_format,
        fill_value=0,
        # always a fresh name: never let zarr delete whatever is there (a writer's
        # locked, half-built array under a reused name would be lost)
        overwrite=False,
        **config.codecs(data.dtype.itemsize),
    )
    if config.zarr_format == 3:
        kwargs["dimension_names"] = list(dimension_names) if dimension_names else None
    else:
        kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
    with store_errors(loc.url):
        arr = zarr.create_array(store=loc.zarr_store(), **kwargs)
        arr[...] = data


def _write_image(
    loc: Location,
    arr: np.ndarray,
    config: ZarrConfig,
    axes: tuple[str, ...],
    name: str,
    extra: dict[str, Any] | None = None,
    labels: bool = False,
    taken: set[str] | None = None,
    published: bool = True,
    scale: Mapping[str, float] | None = None,
    units: Mapping[str, str] | None = None,
    channels: Sequence[Mapping[str, Any]] | None = None,
) -> list[str]:
    """Write a multiscale image group at ``loc``; returns the dataset paths used.

    ``published=False``: ``loc`` is a new group no reader reaches until a later metadata
    switch, so its own metadata needs no atomic replace.  ``scale``/``units``: physical
    size of a level-0 pixel per axis; ``channels``: ``omero`` label and colour per
    channel (windows come from ``arr``).
    """
    taken = set(taken or ())
    paths = []
    for level, data in enumerate(_pyramid(arr, config.pyramid_levels, labels)):
        path = _fresh_name(taken, str(level))
        taken.add(path)
        create_array(loc.child(path), data, config, axes)
        paths.append(path)
    block: dict[str, Any] = {"multiscales": _ome.multiscales(axes, paths, name, scale, units)}
    if channels is not None:
        block.update(_ome.omero_block(channels, arr, axes))
    block.update(extra or {})
    _ome.write_group(
        loc, _ome.wrap(block, config.ngff_version), config.zarr_format, published=published
    )
    return paths


def _ensure_group(loc: Location, attributes: dict[str, Any], zarr_format: int) -> None:
    """Create a group at ``loc`` if no node is there (never replaces existing metadata)."""
    if loc.exists_file("zarr.json" if zarr_format == 3 else ".zgroup"):
        return  # the common case: a cheap look instead of a create attempt
    if zarr_format == 3:
        loc.write_once("zarr.json", _ome.group_document(attributes))
    else:
        if loc.write_once(".zgroup", b'{\n  "zarr_format": 2\n}'):
            loc.write_json(".zattrs", attributes)


def _plate_version(plate: Location, config: ZarrConfig, node: _ome.NodeMeta | None) -> None:
    if node is None:
        return
    if node.node_type != "group":
        raise _meta_error(plate, "", "a zarr array is in the way of the plate group")
    if node.zarr_format != config.zarr_format:
        raise _meta_error(
            plate,
            "",
            f"the plate is zarr format {node.zarr_format} but the "
            f"config asks for NGFF {config.ngff_version} "
            f"(zarr format {config.zarr_format})",
        )


# --------------------------------------------------------------------------- well I/O


def _read_well_meta(
    plate: Location,
    pos: WellPosition,
    key: str | None = None,
    node: _ome.NodeMeta | None = None,
) -> tuple[_ome.NodeMeta, str, dict[str, Any]] | None:
    """(node, NGFF version, well block) of a well; ``node``: its metadata if already read."""
    key = key or _well_key(pos)
    if node is None:
        node = _ome.read_node(plate.child(key))
    if node is None:
        return None
    version, block = _ome.unwrap(node.attributes)
    well = block.get("well")
    if version is None or not isinstance(well, dict):
        raise _meta_error(plate, key, "well group has no NGFF 'well' metadata")
    images = well.get("images")
    if not isinstance(images, list) or not all(
        isinstance(i, dict) and isinstance(i.get("path"), str) for i in images
    ):
        raise _meta_error(plate, key, "well metadata 'images' must be a list of {'path': ...}")
    meta_key = f"{key}/{'zarr.json' if node.zarr_format == 3 else '.zattrs'}"
    for image in images:
        _ome.child_path(image["path"], plate, meta_key, "well image path")
    return node, version, well


def _reading_key(plate: Location, pos: WellPosition) -> tuple[str, _ome.NodeMeta | None]:
    """The well's path for reading (``"B/3"``, or the path the plate metadata lists).

    Plates from other tools may name columns ``"03"``; their plate metadata says so.
    Also returns the well's metadata when the first look found it (saves a second read).
    """
    key = _well_key(pos)
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


def _field_paths(well: dict[str, Any]) -> list[str]:
    return [str(i["path"]) for i in well["images"]]


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
    plate = _loc(store, storage_options)
    pos = _well_pos(plate, well)
    key = _well_key(pos)
    fields = _normalize_fields(plate, key, data)
    check_bucket(plate)
    plate_node = _ome.read_node(plate)
    _plate_version(plate, cfg, plate_node)
    fmt = _plate_format(plate, cfg, [(pos.row, pos.column)], plate_node)
    current = _read_well_meta(plate, pos)
    if current is not None and not overwrite:
        raise AlreadyExistsError(
            f"well {pos.name} already exists; pass overwrite=True to replace it: store "
            f"{plate.url!r}, key {key!r}",
            path=f"{plate.url}/{key}",
            backend=BACKEND,
        )
    version = cfg.ngff_version
    if current is not None and current[1] != version:
        raise _meta_error(
            plate, key, f"the well is NGFF {current[1]}, the config asks for {version}"
        )
    if plate_node is None:
        plate.makedirs()
        initial = _ome.wrap({}, version)
        if plate_name:
            initial["hcsflow"] = {"plate_name": str(plate_name)}
        _ensure_group(plate, initial, cfg.zarr_format)
    _ensure_group(plate.child(pos.row_name), {}, cfg.zarr_format)
    well_loc = plate.child(key)
    old_paths = _field_paths(current[2]) if current is not None else []
    before = set(well_loc.list())
    taken = before | set(old_paths)
    sample = fields[0]
    axes = _ome.axes_for(sample.ndim)
    new_paths = []
    for f in sorted(fields):
        path = _fresh_name(taken, str(f))
        taken.add(path)
        # a fresh field group: only the well metadata written below makes it reachable
        _write_image(
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
    for stale in (before | set(old_paths)) - set(new_paths) - _ome_meta_names():
        if (
            stale in old_paths
            or _is_orphan_name(stale)
            or debris_kind(well_loc, stale, None) is not None
        ):
            well_loc.child(stale).remove()
    markers = _mark_well(plate, pos, len(new_paths), cfg.zarr_format, version)
    # temporary files of writers of this well that died (plate, row and marker groups)
    for group in (
        plate,
        plate.child(pos.row_name),
        plate.child(*MARKERS, _marker_name(pos, len(new_paths))),
    ):
        clean_in_flight(group)
    if update_plate:
        _settle_plate(plate, version, cfg.zarr_format, fmt, name=plate_name, listing=markers)
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


def _ome_meta_names() -> set[str]:
    return {"zarr.json", ".zgroup", ".zattrs", ".zarray", ".zmetadata"}


def _is_orphan_name(name: str) -> bool:
    # field groups are "<n>" or "<n>v<hex>"; a crashed write can leave either behind
    return re.fullmatch(r"\d+(v[0-9a-f]{8})?", name) is not None


def _plate_format(
    plate: Location,
    cfg: ZarrConfig,
    new_wells: list[tuple[int, int]],
    node: _ome.NodeMeta | None,
) -> tuple[int, int]:
    """(rows, columns) of the plate; checks the new wells fit on it (``node``: the plate's)."""
    fixed = cfg.plate_format
    if fixed is None and node is not None:
        stored = node.attributes.get("hcsflow", {})
        if isinstance(stored, dict) and stored.get("plate_format") in PLATE_FORMATS:
            fixed = int(stored["plate_format"])
    if fixed is not None:
        rows, cols = PLATE_FORMATS[fixed]
        for r, c in new_wells:
            if r >= rows or c >= cols:
                raise _layout_error(
                    plate,
                    f"{row_name(r)}/{c + 1}",
                    f"well {row_name(r)}{c + 1:02d} is not on a {fixed}-well "
                    f"plate ({rows} rows x {cols} columns)",
                )
        return rows, cols
    return (0, 0)


def _infer_format(wells: list[tuple[int, int]], fixed: tuple[int, int]) -> tuple[int, int, int]:
    if fixed != (0, 0):
        n = next(k for k, v in PLATE_FORMATS.items() if v == fixed)
        return fixed[0], fixed[1], n
    max_r = max((r for r, _ in wells), default=0)
    max_c = max((c for _, c in wells), default=0)
    # without an explicit format, assume a screening plate (96 wells or more): a plate
    # whose wells all sit in A1..B3 is far more often a sparse 96-well plate than a
    # 6-well one
    for n, (rows, cols) in sorted(PLATE_FORMATS.items()):
        if n >= 96 and max_r < rows and max_c < cols:
            return rows, cols, n
    return 32, 48, 1536


def _mark_well(
    plate: Location, pos: WellPosition, n_fields: int, zarr_format: int, version: str
) -> frozenset[str]:
    """Create this well's marker, drop its stale ones; the marker listing taken after that.

    The listing is taken after the marker exists, so it can open the plate settle loop.
    """
    markers = plate.child(*MARKERS)
    # ``.hcsflow`` is always created before ``.hcsflow/wells``: one look covers both
    if not markers.exists_file("zarr.json" if zarr_format == 3 else ".zgroup"):
        _ensure_group(plate.child(MARKERS[0]), {}, zarr_format)
        _ensure_group(markers, {}, zarr_format)
    name = _marker_name(pos, n_fields)
    _ensure_group(markers.child(name), {}, zarr_format)
    listing = set(markers.list())
    for other in list(listing):
        parsed = _parse_marker(other)
        if parsed is not None and parsed[:2] == (pos.row, pos.column) and other != name:
            markers.child(other).remove()
            listing.discard(other)
    return frozenset(listing)


def _marker_name(pos: WellPosition, n_fields: int) -> str:
    return f"{pos.row_name}.{pos.column + 1}.{n_fields}"


@functools.lru_cache(maxsize=4096)
def _parse_marker(name: str) -> tuple[int, int, int] | None:
    parts = name.split(".")
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    try:
        return row_index(parts[0]), int(parts[1]) - 1, int(parts[2])
    except PlateLayoutError:
        return None


def _marker_names(plate: Location) -> frozenset[str]:
    return frozenset(plate.child(*MARKERS).list())


def _list_markers(
    plate: Location, names: frozenset[str] | None = None
) -> dict[tuple[int, int], int]:
    """Wells named by the markers (``names``: a marker listing already taken)."""
    out: dict[tuple[int, int], int] = {}
    for name in _marker_names(plate) if names is None else names:
        parsed = _parse_marker(name)
        if parsed is not None:
            r, c, n = parsed
            out[(r, c)] = max(n, out.get((r, c), 0))
    return out


def _write_plate_meta(
    plate: Location,
    wells: dict[tuple[int, int], int],
    version: str,
    zarr_format: int,
    fixed: tuple[int, int],
    name: str | None,
) -> None:
    node = _ome.read_node(plate)
    old_hcs: dict[str, Any] = {}
    old_name = None
    if node is not None:
        stored = node.attributes.get("hcsflow")
        old_hcs = dict(stored) if isinstance(stored, dict) else {}
        _, block = _ome.unwrap(node.attributes)
        if isinstance(block.get("plate"), dict):
            old_name = block["plate"].get("name")
    rows, cols, n = _infer_format(list(wells), fixed)
    plate_name = name or old_name or old_hcs.get("plate_name") or _default_name(plate)
    block = _ome.plate_block(list(wells), rows, cols, max(wells.values(), default=0), plate_name)
    attrs = _ome.wrap(block, version)
    # only an explicitly chosen format binds later writers; an inferred one may grow
    attrs["hcsflow"] = {**old_hcs, "plate_format": n} if fixed != (0, 0) else old_hcs
    _ome.write_group(plate, attrs, zarr_format)


def _default_name(plate: Location) -> str:
    base = plate.name
    return base[: -len(".zarr")] if base.endswith(".zarr") else base


def _settle_plate(
    plate: Location,
    version: str,
    zarr_format: int,
    fixed: tuple[int, int],
    name: str | None = None,
    listing: frozenset[str] | None = None,
) -> None:
    """Rewrite the plate metadata until the marker listing after a write equals its source.

    ``listing`` is a marker listing this writer took after creating its own marker (it
    saves the first listing); every round still ends with a fresh listing.
    """
    names = _marker_names(plate) if listing is None else listing
    for _ in range(_MAX_SETTLE_ROUNDS):
        _write_plate_meta(plate, _list_markers(plate, names), version, zarr_format, fixed, name)
        after = _marker_names(plate)
        if after == names:
            return
        names = after
    raise ZarrError(
        f"plate metadata did not settle after {_MAX_SETTLE_ROUNDS} rounds of "
        f"concurrent well writes: store {plate.url!r}, key 'zarr.json'",
        path=plate.url,
        backend=BACKEND,
    )


def finalize_plate(
    store: StoreLike,
    *,
    name: str | None = None,
    plate_format: int | None = None,
    storage_options: dict[str, Any] | None = None,
) -> PlateInfo:
    """Rebuild the plate metadata once from the well groups actually in the store.

    Call it once after all wells are written (the pipeline does).  Wells are found by
    listing row and column groups and reading each well's metadata, so the result is
    right even if a writer crashed between publishing a well and marking it.
    """
    plate = _loc(store, storage_options)
    check_bucket(plate)
    node = _ome.read_node(plate)
    if node is None:
        raise NotFoundError(f"no plate at store {plate.url!r}", path=plate.url, backend=BACKEND)
    version = _ome.unwrap(node.attributes)[0] or ("0.5" if node.zarr_format == 3 else "0.4")
    wells: dict[tuple[int, int], int] = {}
    for rname in plate.list():
        try:
            r = row_index(rname)
        except PlateLayoutError:
            continue
        for cname in plate.child(rname).list():
            if not cname.isdigit():
                continue
            pos = WellPosition(r, int(cname) - 1)
            try:
                meta = _read_well_meta(plate, pos)
            except PlateMetadataError:
                raise
            if meta is not None:
                wells[(pos.row, pos.column)] = len(meta[2]["images"])
    markers = _list_markers(plate)
    for (r, c), n in wells.items():
        if markers.get((r, c)) != n:
            _mark_well(plate, WellPosition(r, c), n, node.zarr_format, version)
    for r, c in set(markers) - set(wells):
        for other in plate.child(*MARKERS).list():
            parsed = _parse_marker(other)
            if parsed is not None and parsed[:2] == (r, c):
                plate.child(*MARKERS, other).remove()
    fixed = PLATE_FORMATS[plate_format] if plate_format is not None else (0, 0)
    if plate_format is not None:
        if plate_format not in PLATE_FORMATS:
            raise _layout_error(plate, "", f"unknown plate format {plate_format}")
        rows, cols = fixed
        bad = [WellPosition(r, c).name for r, c in wells if r >= rows or c >= cols]
        if bad:
            raise _layout_error(plate, "", f"wells {bad} are not on a {plate_format}-well plate")
    _write_plate_meta(plate, wells, version, node.zarr_format, fixed, name)
    return open_plate(plate)


# --------------------------------------------------------------------------- reading


def open_plate(store: StoreLike, *, storage_options: dict[str, Any] | None = None) -> PlateInfo:
    """Read the plate metadata of the OME-Zarr plate at ``store`` (NGFF 0.4 or 0.5)."""
    plate = _loc(store, storage_options)
    check_bucket(plate)
    node = _ome.read_node(plate)
    if node is None:
        raise NotFoundError(
            f"no zarr group at store {plate.url!r}", path=plate.url, backend=BACKEND
        )
    version, block = _ome.unwrap(node.attributes)
    key = "zarr.json" if node.zarr_format == 3 else ".zattrs"
    meta = block.get("plate")
    if version is None or not isinstance(meta, dict):
        raise _meta_error(plate, key, "not an OME-Zarr plate (no 'plate' metadata)")
    try:
        rows = tuple(str(r["name"]) for r in meta["rows"])
        columns = tuple(str(c["name"]) for c in meta["columns"])
        names, paths = [], []
        for w in meta["wells"]:
            path = _ome.child_path(w["path"], plate, key, "plate well path", parts=2)
            r_i, c_i = int(w["rowIndex"]), int(w["columnIndex"])
            rname, cname = path.split("/")
            if rows[r_i] != rname or columns[c_i] != cname:
                raise _meta_error(
                    plate,
                    key,
                    f"well {path!r} has rowIndex/columnIndex "
                    f"{r_i}/{c_i} naming {rows[r_i]}/{columns[c_i]}",
                )
            names.append(WellPosition(row_index(rname), int(cname) - 1).name)
            paths.append(path)
    except (PlateMetadataError, CorruptStoreError):
        raise
    except (KeyError, TypeError, ValueError, IndexError, PlateLayoutError) as exc:
        raise _meta_error(
            plate, key, f"malformed plate metadata ({type(exc).__name__}: {exc})"
        ) from exc
    fc = meta.get("field_count")
    return PlateInfo(
        plate.url,
        version,
        str(meta.get("name", _default_name(plate))),
        rows,
        columns,
        tuple(names),
        tuple(paths),
        int(fc) if fc is not None else None,
    )


def list_wells(store: StoreLike, *, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Canonical names (``"A01"``) of the wells the plate metadata lists, row-major."""
    return list(open_plate(store, storage_options=storage_options).wells)


def _require_well(
    plate: Location, well: str | WellPosition
) -> tuple[WellPosition, str, _ome.NodeMeta, str, list[str]]:
    """(position, key, node, NGFF version, field paths) of an existing well, else NotFound."""
    pos = _well_pos(plate, well)
    key, well_node = _reading_key(plate, pos)
    meta = _read_well_meta(plate, pos, key, well_node)
    if meta is None:
        raise NotFoundError(
            f"no well {pos.name}: store {plate.url!r}, key {key!r}",
            path=f"{plate.url}/{key}",
            backend=BACKEND,
        )
    node, version, wmeta = meta
    return pos, key, node, version, _field_paths(wmeta)


def _image_loc(plate: Location, well: str | WellPosition, field: int) -> tuple[Location, str, int]:
    pos, key, node, version, paths = _require_well(plate, well)
    if not isinstance(field, int) or not 0 <= field < len(paths):
        raise NotFoundError(
            f"well {pos.name} has fields 0..{len(paths) - 1}, not {field!r}: "
            f"store {plate.url!r}, key {key!r}",
            path=f"{plate.url}/{key}",
            backend=BACKEND,
        )
    return plate.child(key, paths[field]), version, node.zarr_format


def _dataset_paths(img: Location) -> tuple[list[str], list[str], int]:
    node = _ome.read_node(img)
    if node is None:
        raise NotFoundError(
            f"missing image group: store {img.url!r}", path=img.url, backend=BACKEND
        )
    _, block = _ome.unwrap(node.attributes)
    meta_key = "zarr.json" if node.zarr_format == 3 else ".zattrs"
    try:
        ms = block["multiscales"][0]
        paths = [
            _ome.child_path(d["path"], img, meta_key, "multiscales dataset path")
            for d in ms["datasets"]
        ]
        axes = [str(a["name"]) if isinstance(a, dict) else str(a) for a in ms["axes"]]
    except (KeyError, TypeError, IndexError) as exc:
        raise _meta_error(
            img,
            meta_key,
            f"malformed multiscales metadata ({type(exc).__name__}: {exc})",
        ) from exc
    return paths, axes, node.zarr_format


def _open_array_at(img: Location, level: int) -> tuple[Any, Location]:
    """The zarr array of resolution ``level`` of an image group, and its location."""
    import zarr

    paths, _, fmt = _dataset_paths(img)
    if not isinstance(level, int) or not 0 <= level < len(paths):
        raise NotFoundError(
            f"resolution level {level!r} not in 0..{len(paths) - 1}: store {img.url!r}",
            path=img.url,
            backend=BACKEND,
        )
    loc = img.child(paths[level])
    if not isinstance(loc.fs, LocalFS):
        # the local store checks metadata sizes itself; here read it once through ours
        _ome.read_node(loc)
    with store_errors(loc.url):
        try:
            return zarr.open_array(
                store=loc.zarr_store(), mode="r", zarr_format=3 if fmt == 3 else 2
            ), loc
        except HcsflowError:
            raise
        except (FileNotFoundError, KeyError) as exc:
            raise NotFoundError(
                f"missing array: store {img.url!r}, key {paths[level]!r}",
                path=loc.url,
                backend=BACKEND,
            ) from exc
        except (ValueError, TypeError) as exc:
            raise _meta_error(
                img, paths[level], f"malformed array metadata: {type(exc).__name__}: {exc}"
            ) from exc


def _open_array(img: Location, level: int) -> Any:
    return _open_array_at(img, level)[0]


def open_image(
    store: StoreLike,
    well: str | WellPosition,
    field: int = 0,
    level: int = 0,
    *,
    storage_options: dict[str, Any] | None = None,
) -> Any:
    """The lazy ``zarr.Array`` of one field image; indexing it decodes only those chunks."""
    plate = _loc(store, storage_options)
    img, _, _ = _image_loc(plate, well, field)
    return _open_array(img, level)


def read_array(arr: Any, selection: Any, loc: Location) -> np.ndarray:
    """``arr[selection]`` checked against ``loc.limits``, decoded into an aligned array.

    The bytes the selection decodes to, the bytes of one chunk and the number of chunks
    it touches are checked before anything is read (:class:`ResourceLimitError`);
    decode failures are reported as corrupt chunks by key.
    """
    shape = tuple(int(s) for s in arr.shape)
    box = _selection_box(shape, selection)
    limits = loc.limits
    what = f"array {loc.url!r} selection"
    dtype = np.dtype(arr.dtype)
    limits.check_array(
        tuple(hi - lo for lo, hi in box), dtype, what=what, path=loc.url, backend=BACKEND
    )
    chunks = tuple(int(c) for c in arr.chunks)
    limits.check_array(
        chunks, dtype, what=f"one chunk of {loc.url!r}", path=loc.url, backend=BACKEND
    )
    touched = 1
    for (lo, hi), c in zip(box, chunks, strict=True):
        touched *= 0 if hi <= lo else (hi - 1) // c - lo // c + 1
    limits.check_chunks(touched, what=what, path=loc.url, backend=BACKEND)
    out_shape = _basic_shape(shape, selection)
    with store_errors(loc.url):
        try:
            if out_shape is not None and not dtype.hasobject:
                from zarr.core.buffer.cpu import NDBuffer

                out = aligned_empty(out_shape, dtype)
                arr.get_basic_selection(selection, out=NDBuffer.from_numpy_array(out))
                return out
            return np.asarray(arr[selection])
        except (ZarrError, NotFoundError):
            raise
        except OSError:
            raise
        except Exception as exc:
            if type(exc).__module__.split(".")[0] in ("botocore", "aiobotocore", "aiohttp"):
                raise
            raise corrupt(loc, _bad_chunk_key(arr, selection), exc) from exc


def _basic_shape(shape: tuple[int, ...], selection: Any) -> tuple[int, ...] | None:
    """Result shape of a selection of ints and unit-step slices (``None``: other kinds)."""
    if selection is Ellipsis:
        return shape
    sel = selection if isinstance(selection, tuple) else (selection,)
    if len(sel) > len(shape):
        return None
    out = []
    for i, size in enumerate(shape):
        item = sel[i] if i < len(sel) else slice(None)
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            if not -size <= int(item) < size:
                return None
            continue
        if isinstance(item, slice) and item.step in (None, 1):
            start, stop, _ = item.indices(size)
            out.append(max(0, stop - start))
            continue
        return None
    return tuple(out)


def _bad_chunk_key(arr: Any, selection: Any) -> str:
    """Find the first chunk in ``selection`` that fails to decode (error path only)."""
    import itertools

    chunks = arr.chunks
    idx = (
        np.ndindex(*arr.cdata_shape)
        if hasattr(arr, "cdata_shape")
        else itertools.product(*(range(-(-s // c)) for s, c in zip(arr.shape, chunks, strict=True)))
    )
    sel_box = _selection_box(arr.shape, selection)
    for coords in idx:
        box = tuple(
            slice(i * c, min((i + 1) * c, s))
            for i, c, s in zip(coords, chunks, arr.shape, strict=True)
        )
        if not all(b.start < hi and lo < b.stop for b, (lo, hi) in zip(box, sel_box, strict=True)):
            continue
        try:
            arr[box]
        except Exception:
            try:
                return str(arr.metadata.encode_chunk_key(coords))
            except AttributeError:
                return "/".join(str(c) for c in coords)
    return "?"


def _selection_box(shape: tuple[int, ...], selection: Any) -> list[tuple[int, int]]:
    sel = selection if isinstance(selection, tuple) else (selection,)
    out = []
    for i, s in enumerate(shape):
        item = sel[i] if i < len(sel) else slice(None)
        if isinstance(item, (int, np.integer)):
            index = int(item) + s if int(item) < 0 else int(item)
            out.append((index, index + 1))
        elif isinstance(item, slice):
            start, stop, _ = item.indices(s)
            out.append((start, stop))
        else:
            out.append((0, s))
    return out


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
    plate = _loc(store, storage_options, limits)
    img, _, _ = _image_loc(plate, well, field)
    arr, loc = _open_array_at(img, level)
    return read_array(arr, Ellipsis, loc)


def open_well(
    store: StoreLike, well: str | WellPosition, *, storage_options: dict[str, Any] | None = None
) -> WellInfo:
    """Geometry of a well (reads metadata only)."""
    plate = _loc(store, storage_options)
    pos, key, _, version, paths = _require_well(plate, well)
    img = plate.child(key, paths[0])
    levels, axes, _ = _dataset_paths(img)
    arr = _open_array(img, 0)
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


# --------------------------------------------------------------------------- labels


def write_labels(
    store: StoreLike,
    well: str | WellPosition,
    field: int,
    name: str,
    labels: Any,
    config: ZarrConfig | None = None,
    *,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Write an NGFF label image ``name`` for one field; returns its key in the store.

    ``labels`` is an integer array shaped like the field's ``(z, y, x)`` or ``(y, x)``
    (or the full image rank with a channel of 1); it is stored with the image's axes,
    channel 1, in ``<well>/<field>/labels/<name>``.  Replacing an existing label image
    needs ``overwrite=True`` and is atomic like a well write.
    """
    cfg = config or _DEFAULT
    plate = _loc(store, storage_options)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise _layout_error(
            plate, "labels", f"label name {name!r} must be letters, digits, '_' or '-'"
        )
    img, version, zfmt = _image_loc(plate, well, field)
    paths, axes, _ = _dataset_paths(img)
    base = _open_array(img, 0)
    lab = np.asarray(labels)
    rel = img.path[len(plate.path) :].strip("/")
    if lab.dtype.kind not in "iub":
        raise _layout_error(
            plate, f"{rel}/labels/{name}", f"labels must be an integer array, got {lab.dtype}"
        )
    shape = tuple(base.shape)
    want = list(shape)
    want[axes.index("c")] = 1
    while lab.ndim < len(want):
        lab = lab[np.newaxis]
    if tuple(lab.shape) != tuple(want):
        raise _layout_error(
            plate,
            f"{rel}/labels/{name}",
            f"labels of shape {np.shape(labels)} do not fit the image "
            f"{shape} (expected {tuple(want)})",
        )
    lab_cfg = ZarrConfig(
        compressor=cfg.compressor,
        level=cfg.level,
        chunks=cfg.chunks,
        shards=cfg.shards,
        pyramid_levels=len(paths),
        ngff_version="0.4" if version == "0.4" else "0.5",
    )
    group = img.child("labels")
    target = group.child(name)
    current = _ome.read_node(target)
    if current is not None and not overwrite:
        raise AlreadyExistsError(
            f"label image {name!r} exists; pass overwrite=True: store {plate.url!r}, key "
            f"{rel}/labels/{name}",
            path=target.url,
            backend=BACKEND,
        )
    old: list[str] = []
    if current is not None:
        old = _dataset_paths(target)[0]
    _ensure_group(group, _ome.wrap({"labels": []}, lab_cfg.ngff_version), zfmt)
    taken = set(target.list()) | set(old)
    extra = {"image-label": {"source": {"image": "../../"}}}
    scale, units = _image_scale(img)
    new = _write_image(
        target,
        lab,
        lab_cfg,
        tuple(axes),
        name,
        extra,
        labels=True,
        taken=taken,
        scale=scale,
        units=units,
    )
    for stale in set(old) - set(new):
        target.child(stale).remove()
    _settle_labels(group, lab_cfg.ngff_version, zfmt)
    return f"{rel}/labels/{name}"


def _image_scale(img: Location) -> tuple[dict[str, float], dict[str, str]]:
    """Level-0 scale (axes other than 1 only) and units of an image group's metadata."""
    node = _ome.read_node(img)
    if node is None:
        return {}, {}
    try:
        attrs = _ome.image_attrs(_ome.unwrap(node.attributes)[1])
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        raise _meta_error(
            img,
            "zarr.json" if node.zarr_format == 3 else ".zattrs",
            f"malformed multiscales metadata ({type(exc).__name__}: {exc})",
        ) from exc
    scale = {a: v for a, v in attrs.scale.items() if v != 1.0 and a != "c"}
    return scale, {a: u for a, u in attrs.units.items() if a != "c"}


def image_metadata(
    store: StoreLike,
    well: str | WellPosition,
    field: int = 0,
    *,
    storage_options: dict[str, Any] | None = None,
) -> _ome.ImageAttrs:
    """Axes, units, level-0 scale and ``omero`` channels of one field image (metadata only)."""
    plate = _loc(store, storage_options)
    img, _, _ = _image_loc(plate, well, field)
    node = _ome.read_node(img)
    if node is None:
        raise NotFoundError(
            f"missing image group: store {img.url!r}", path=img.url, backend=BACKEND
        )
    try:
        return _ome.image_attrs(_ome.unwrap(node.attributes)[1])
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        raise _meta_error(
            img,
            "zarr.json" if node.zarr_format == 3 else ".zattrs",
            f"malformed multiscales metadata ({type(exc).__name__}: {exc})",
        ) from exc


def _settle_labels(group: Location, version: str, zarr_format: int) -> None:
    def names() -> list[str]:
        out = []
        for child in sorted(group.list()):
            node = _ome.read_node(group.child(child)) if child not in _ome_meta_names() else None
            if node is not None and "image-label" in _ome.unwrap(node.attributes)[1]:
                out.append(child)
        return out

    for _ in range(_MAX_SETTLE_ROUNDS):
        found = names()
        _ome.write_group(group, _ome.wrap({"labels": found}, version), zarr_format)
        if names() == found:
            return
    raise ZarrError(
        f"labels metadata did not settle: store {group.url!r}", path=group.url, backend=BACKEND
    )


def read_labels(
    store: StoreLike,
    well: str | WellPosition,
    field: int,
    name: str,
    level: int = 0,
    *,
    storage_options: dict[str, Any] | None = None,
    limits: StorageLimits | None = None,
) -> np.ndarray:
    """A label image written by :func:`write_labels` (image axes, channel 1)."""
    plate = _loc(store, storage_options, limits)
    img, _, _ = _image_loc(plate, well, field)
    target = img.child("labels", name)
    arr, loc = _open_array_at(target, level)
    return read_array(arr, Ellipsis, loc)
