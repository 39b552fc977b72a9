"""OME-Zarr plate metadata: kept current by concurrent well writers without locks,
rebuilt by :func:`finalize_plate`, read by :func:`open_plate`.

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
from dataclasses import dataclass
from typing import Any

from hcsflow.errors import (
    CorruptStoreError,
    NotFoundError,
    PlateLayoutError,
    PlateMetadataError,
    ZarrError,
)
from hcsflow.storage.plate import PLATE_FORMATS, WellPosition, row_index, row_name
from hcsflow.storage.zarr import _ome
from hcsflow.storage.zarr._config import ZarrConfig
from hcsflow.storage.zarr._io import BACKEND, Location, check_bucket
from hcsflow.storage.zarr._locate import (
    MARKERS,
    StoreLike,
    ensure_group,
    layout_error,
    locate,
    meta_error,
    read_well_meta,
)

__all__ = [
    "PlateInfo",
    "MAX_SETTLE_ROUNDS",
    "finalize_plate",
    "open_plate",
    "list_wells",
    "plate_version",
    "plate_format",
    "mark_well",
    "marker_name",
    "settle_plate",
]

MAX_SETTLE_ROUNDS = 200


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


def plate_version(plate: Location, config: ZarrConfig, node: _ome.NodeMeta | None) -> None:
    if node is None:
        return
    if node.node_type != "group":
        raise meta_error(plate, "", "a zarr array is in the way of the plate group")
    if node.zarr_format != config.zarr_format:
        raise meta_error(
            plate,
            "",
            f"the plate is zarr format {node.zarr_format} but the "
            f"config asks for NGFF {config.ngff_version} "
            f"(zarr format {config.zarr_format})",
        )


def plate_format(
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
                raise layout_error(
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


def mark_well(
    plate: Location, pos: WellPosition, n_fields: int, zarr_format: int, version: str
) -> frozenset[str]:
    """Create this well's marker, drop its stale ones; the marker listing taken after that.

    The listing is taken after the marker exists, so it can open the plate settle loop.
    """
    markers = plate.child(*MARKERS)
    # ``.hcsflow`` is always created before ``.hcsflow/wells``: one look covers both
    if not markers.exists_file("zarr.json" if zarr_format == 3 else ".zgroup"):
        ensure_group(plate.child(MARKERS[0]), {}, zarr_format)
        ensure_group(markers, {}, zarr_format)
    name = marker_name(pos, n_fields)
    ensure_group(markers.child(name), {}, zarr_format)
    listing = set(markers.list())
    for other in list(listing):
        parsed = _parse_marker(other)
        if parsed is not None and parsed[:2] == (pos.row, pos.column) and other != name:
            markers.child(other).remove()
            listing.discard(other)
    return frozenset(listing)


def marker_name(pos: WellPosition, n_fields: int) -> str:
    """The marker group name of a well with ``n_fields`` fields (``"B.3.4"``)."""
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


def settle_plate(
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
    for _ in range(MAX_SETTLE_ROUNDS):
        _write_plate_meta(plate, _list_markers(plate, names), version, zarr_format, fixed, name)
        after = _marker_names(plate)
        if after == names:
            return
        names = after
    raise ZarrError(
        f"plate metadata did not settle after {MAX_SETTLE_ROUNDS} rounds of "
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
    plate = locate(store, storage_options)
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
                meta = read_well_meta(plate, pos)
            except PlateMetadataError:
                raise
            if meta is not None:
                wells[(pos.row, pos.column)] = len(meta[2]["images"])
    markers = _list_markers(plate)
    for (r, c), n in wells.items():
        if markers.get((r, c)) != n:
            mark_well(plate, WellPosition(r, c), n, node.zarr_format, version)
    for r, c in set(markers) - set(wells):
        for other in plate.child(*MARKERS).list():
            parsed = _parse_marker(other)
            if parsed is not None and parsed[:2] == (r, c):
                plate.child(*MARKERS, other).remove()
    fixed = PLATE_FORMATS[plate_format] if plate_format is not None else (0, 0)
    if plate_format is not None:
        if plate_format not in PLATE_FORMATS:
            raise layout_error(plate, "", f"unknown plate format {plate_format}")
        rows, cols = fixed
        bad = [WellPosition(r, c).name for r, c in wells if r >= rows or c >= cols]
        if bad:
            raise layout_error(plate, "", f"wells {bad} are not on a {plate_format}-well plate")
    _write_plate_meta(plate, wells, version, node.zarr_format, fixed, name)
    return open_plate(plate)


def open_plate(store: StoreLike, *, storage_options: dict[str, Any] | None = None) -> PlateInfo:
    """Read the plate metadata of the OME-Zarr plate at ``store`` (NGFF 0.4 or 0.5)."""
    plate = locate(store, storage_options)
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
        raise meta_error(plate, key, "not an OME-Zarr plate (no 'plate' metadata)")
    try:
        rows = tuple(str(r["name"]) for r in meta["rows"])
        columns = tuple(str(c["name"]) for c in meta["columns"])
        names, paths = [], []
        for w in meta["wells"]:
            path = _ome.child_path(w["path"], plate, key, "plate well path", parts=2)
            r_i, c_i = int(w["rowIndex"]), int(w["columnIndex"])
            rname, cname = path.split("/")
            if rows[r_i] != rname or columns[c_i] != cname:
                raise meta_error(
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
        raise meta_error(
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
