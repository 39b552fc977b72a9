"""``validate_plate``: check an OME-Zarr plate (NGFF 0.4 or 0.5) and report every problem.

The checks are hcsflow's own reading of the NGFF plate, well and multiscales rules
(independent of the third-party validators the test suite also runs): plate
``rows``/``columns``/``wells`` well-formed and consistent (``rowIndex``/``columnIndex``
match the path, names unique), each listed well group present with ``well`` metadata,
each field image present with ``multiscales`` whose axes fit the arrays, dataset arrays
present with matching rank and halving y/x per level, and optionally (``deep=True``)
every chunk decodable.  Problems are collected, not raised, so one run lists them all.

Metadata is treated as untrusted: a path in it that is not a relative child path
(``..``, absolute) is reported and never followed; an array whose declared shape and
dtype exceed :class:`~hcsflow.storage.StorageLimits` (or, for ``deep=True``, whose
chunk count does) is reported instead of read, so a hostile ``zarr.json`` cannot make
validation allocate or loop without bound.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hcsflow.errors import HcsflowError
from hcsflow.storage._limits import StorageLimits, declared_nbytes
from hcsflow.storage.zarr import _ome
from hcsflow.storage.zarr._io import Location, location

__all__ = ["PlateReport", "validate_plate"]

_NAME = re.compile(r"^[A-Za-z0-9]+$")


@dataclass
class PlateReport:
    """The outcome of :func:`validate_plate`: ``ok`` when ``errors`` is empty."""

    url: str
    ngff_version: str | None = None
    wells_checked: int = 0
    images_checked: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether no error was found."""
        return not self.errors

    def summary(self) -> str:
        """A short human-readable report (one line per problem)."""
        head = (
            f"{self.url}: {'valid' if self.ok else 'INVALID'} OME-Zarr plate "
            f"(NGFF {self.ngff_version or '?'}, {self.wells_checked} wells, "
            f"{self.images_checked} images checked)"
        )
        lines = [head] + [f"  error: {e}" for e in self.errors]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def validate_plate(
    url: str | os.PathLike[str],
    *,
    deep: bool = False,
    storage_options: dict[str, Any] | None = None,
    limits: StorageLimits | None = None,
) -> PlateReport:
    """Validate the plate at ``url`` (a local path or fsspec URL); never raises for bad data.

    ``deep=True`` also decodes every chunk of every level-0 array (slow, finds corrupt
    chunks), one chunk at a time.  ``limits``: the sizes and chunk counts an array may
    declare (default: :class:`~hcsflow.storage.StorageLimits`).
    """
    try:
        plate = location(url, storage_options, limits)
    except HcsflowError as exc:
        return PlateReport(os.fspath(url), errors=[str(exc)])
    report = PlateReport(plate.url)
    try:
        _check_plate(plate, report, deep)
    except HcsflowError as exc:
        report.errors.append(str(exc))
    except (ValueError, TypeError, KeyError, IndexError, OSError) as exc:
        # the plate's data made a library fail: that is a finding, not a crash
        report.errors.append(f"{type(exc).__name__}: {exc}")
    return report


def _check_plate(plate: Location, report: PlateReport, deep: bool) -> None:
    node = _ome.read_node(plate)
    if node is None:
        report.errors.append("no zarr group at the plate URL")
        return
    version, block = _ome.unwrap(node.attributes)
    report.ngff_version = version
    if version not in ("0.4", "0.5"):
        report.errors.append(f"NGFF version {version!r} is not 0.4 or 0.5")
        return
    expected_format = 3 if version == "0.5" else 2
    if node.zarr_format != expected_format:
        report.errors.append(
            f"NGFF {version} needs zarr format {expected_format}, the "
            f"plate is format {node.zarr_format}"
        )
    meta = block.get("plate")
    if not isinstance(meta, dict):
        report.errors.append("the group has no 'plate' metadata")
        return
    rows = _names(meta.get("rows"), "rows", report)
    cols = _names(meta.get("columns"), "columns", report)
    wells = meta.get("wells")
    if not isinstance(wells, list) or not wells:
        report.errors.append("plate 'wells' must be a non-empty list")
        return
    seen: set[str] = set()
    max_fields = 0
    for i, w in enumerate(wells):
        if not isinstance(w, dict):
            report.errors.append(f"plate wells[{i}] is not an object")
            continue
        path = w.get("path")
        ri, ci = w.get("rowIndex"), w.get("columnIndex")
        if not isinstance(path, str) or path.count("/") != 1:
            report.errors.append(f"plate wells[{i}].path {path!r} is not 'row/column'")
            continue
        problem = _ome.unsafe_path(path, parts=2)
        if problem is not None:
            report.errors.append(
                f"plate wells[{i}].path {path!r} {problem}; it must be a relative path "
                "below the plate (not followed)"
            )
            continue
        if path in seen:
            report.errors.append(f"well {path!r} is listed twice")
        seen.add(path)
        rname, cname = path.split("/")
        if not isinstance(ri, int) or not isinstance(ci, int):
            report.errors.append(f"well {path!r}: rowIndex/columnIndex must be integers")
        elif rows is not None and cols is not None:
            if not (0 <= ri < len(rows)) or rows[ri] != rname:
                report.errors.append(f"well {path!r}: rowIndex {ri} does not name row {rname!r}")
            if not (0 <= ci < len(cols)) or cols[ci] != cname:
                report.errors.append(
                    f"well {path!r}: columnIndex {ci} does not name column {cname!r}"
                )
        n = _check_well(plate.child(path), path, report, deep, node.zarr_format)
        max_fields = max(max_fields, n)
        report.wells_checked += 1
    fc = meta.get("field_count")
    if fc is not None and (not isinstance(fc, int) or fc < max_fields):
        report.errors.append(
            f"field_count {fc!r} is smaller than the {max_fields} fields a well has"
        )


def _names(items: Any, what: str, report: PlateReport) -> list[str] | None:
    if not isinstance(items, list) or not items:
        report.errors.append(f"plate '{what}' must be a non-empty list")
        return None
    names = []
    for i, item in enumerate(items):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not _NAME.match(name):
            report.errors.append(f"plate {what}[{i}].name {name!r} is not alphanumeric")
            return None
        names.append(name)
    if len(set(names)) != len(names):
        report.errors.append(f"plate '{what}' has duplicate names")
    return names


def _check_well(loc: Location, path: str, report: PlateReport, deep: bool, fmt: int) -> int:
    node = _ome.read_node(loc)
    if node is None:
        report.errors.append(f"well {path!r} is listed but its group is missing")
        return 0
    _, block = _ome.unwrap(node.attributes)
    well = block.get("well")
    images = well.get("images") if isinstance(well, dict) else None
    if not isinstance(images, list) or not images:
        report.errors.append(f"well {path!r} has no 'well.images' list")
        return 0
    for i, image in enumerate(images):
        ipath = image.get("path") if isinstance(image, dict) else None
        if not isinstance(ipath, str) or not _NAME.match(ipath):
            report.errors.append(f"well {path!r} images[{i}].path {ipath!r} is not alphanumeric")
            continue
        _check_image(loc.child(ipath), f"{path}/{ipath}", report, deep, fmt, _recorded(node))
        report.images_checked += 1
    return len(images)


def _recorded(node: _ome.NodeMeta) -> tuple[int, ...] | None:
    """The field shape hcsflow recorded in a well's own attributes, if any."""
    info = node.attributes.get("hcsflow")
    shape = info.get("shape") if isinstance(info, dict) else None
    if isinstance(shape, list) and all(isinstance(s, int) for s in shape):
        return tuple(shape)
    return None


def _check_image(
    loc: Location,
    key: str,
    report: PlateReport,
    deep: bool,
    fmt: int,
    recorded: tuple[int, ...] | None = None,
) -> None:
    node = _ome.read_node(loc)
    if node is None:
        report.errors.append(f"image {key!r} is listed but its group is missing")
        return
    _, block = _ome.unwrap(node.attributes)
    ms = block.get("multiscales")
    if not isinstance(ms, list) or not ms or not isinstance(ms[0], dict):
        report.errors.append(f"image {key!r} has no 'multiscales' metadata")
        return
    axes = ms[0].get("axes")
    datasets = ms[0].get("datasets")
    if not isinstance(axes, list) or not 2 <= len(axes) <= 5:
        report.errors.append(f"image {key!r}: 'axes' must list 2 to 5 axes")
        return
    names = [a.get("name") if isinstance(a, dict) else a for a in axes]
    if len(set(names)) != len(names):
        report.errors.append(f"image {key!r}: axis names are not unique")
    if not isinstance(datasets, list) or not datasets:
        report.errors.append(f"image {key!r}: 'datasets' must be a non-empty list")
        return
    prev: tuple[int, ...] | None = None
    level0: tuple[int, ...] | None = None
    for level, ds in enumerate(datasets):
        dpath = ds.get("path") if isinstance(ds, dict) else None
        if not isinstance(dpath, str):
            report.errors.append(f"image {key!r}: datasets[{level}] has no path")
            continue
        problem = _ome.unsafe_path(dpath)
        if problem is not None:
            report.errors.append(
                f"image {key!r}: datasets[{level}].path {dpath!r} {problem}; it must be a "
                "relative path below the image (not followed)"
            )
            continue
        ct = ds.get("coordinateTransformations")
        scale = next(
            (t.get("scale") for t in ct or [] if isinstance(t, dict) and t.get("type") == "scale"),
            None,
        )
        if not isinstance(scale, list) or len(scale) != len(axes):
            report.errors.append(
                f"image {key!r}: datasets[{level}] needs a scale of {len(axes)} values"
            )
        arr_node = _ome.read_node(loc.child(dpath))
        if arr_node is None or arr_node.node_type != "array":
            report.errors.append(f"image {key!r}: dataset array {dpath!r} is missing")
            continue
        if arr_node.zarr_format != fmt:
            report.errors.append(
                f"image {key!r}: array {dpath!r} is zarr format "
                f"{arr_node.zarr_format}, the plate is {fmt}"
            )
        shape = tuple(int(s) for s in arr_node.raw.get("shape", []))
        if level == 0:
            level0 = shape
        if not _within_limits(loc.child(dpath), key, dpath, arr_node, shape, report):
            prev = shape
            continue
        if level == 0 and recorded is not None and shape != recorded:
            report.errors.append(
                f"image {key!r}: array {dpath!r} has shape {list(shape)} but the well "
                f"records {list(recorded)}"
            )
        if len(shape) != len(axes):
            report.errors.append(
                f"image {key!r}: array {dpath!r} has {len(shape)} dimensions for {len(axes)} axes"
            )
        if (
            prev is not None
            and len(shape) == len(prev)
            and any(s > p for s, p in zip(shape, prev, strict=True))
        ):
            report.errors.append(f"image {key!r}: level {level} is larger than level {level - 1}")
        prev = shape
        if deep and level == 0:
            _decode_all(loc.child(dpath), key, dpath, report, arr_node.zarr_format)
    _check_labels(loc, key, report, deep, fmt, names, level0)


def _check_labels(
    loc: Location,
    key: str,
    report: PlateReport,
    deep: bool,
    fmt: int,
    axes: list[Any],
    shape: tuple[int, ...] | None,
) -> None:
    """The image's label images: listed, present, valid images of integers, and (a
    warning otherwise) with the image's axes and shape, one channel allowed."""
    ndim = len(axes)
    group = _ome.read_node(loc.child("labels"))
    if group is None:
        return
    names = _ome.unwrap(group.attributes)[1].get("labels")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        report.errors.append(f"image {key!r}: 'labels' must list label image names")
        return
    for name in names:
        lkey = f"{key}/labels/{name}"
        problem = _ome.unsafe_path(name, parts=1)
        if problem is not None:
            report.errors.append(
                f"image {key!r}: label name {name!r} {problem}; it must be one name (not followed)"
            )
            continue
        node = _ome.read_node(loc.child("labels", name))
        if node is None:
            report.errors.append(f"label image {lkey!r} is listed but missing")
            continue
        if "image-label" not in _ome.unwrap(node.attributes)[1]:
            report.errors.append(f"label image {lkey!r} has no 'image-label' metadata")
        before = len(report.errors)
        _check_image(loc.child("labels", name), lkey, report, deep, fmt)
        if len(report.errors) > before:
            continue
        ms = _ome.unwrap(node.attributes)[1]["multiscales"][0]
        arr = _ome.read_node(loc.child("labels", name, str(ms["datasets"][0]["path"])))
        dtype = str((arr.raw.get("data_type") or arr.raw.get("dtype", "")) if arr else "")
        if not any(t in dtype for t in ("int", "<i", "<u", "|u", "|i", ">i", ">u")):
            report.errors.append(f"label image {lkey!r} has non-integer data type {dtype!r}")
        if len(ms.get("axes", [])) != ndim:
            report.warnings.append(
                f"label image {lkey!r} has {len(ms.get('axes', []))} axes, the image {ndim}"
            )
            continue
        lshape = tuple(int(s) for s in arr.raw.get("shape", [])) if arr else None
        if shape is not None and lshape is not None and len(lshape) == len(shape):
            fits = all(
                got == want or (axis == "c" and got == 1)
                for axis, got, want in zip(axes, lshape, shape, strict=True)
            )
            if not fits:
                report.warnings.append(
                    f"label image {lkey!r} has shape {list(lshape)}, its image "
                    f"{list(shape)}: it does not overlay the image"
                )


def _dtype_of(node: _ome.NodeMeta) -> np.dtype[Any] | None:
    raw = node.raw.get("data_type") if node.zarr_format == 3 else node.raw.get("dtype")
    try:
        return np.dtype(raw) if isinstance(raw, str) else None
    except TypeError:
        return None


def _within_limits(
    loc: Location,
    key: str,
    dpath: str,
    node: _ome.NodeMeta,
    shape: tuple[int, ...],
    report: PlateReport,
) -> bool:
    """Report an array whose declared size exceeds the limits; ``True`` when it fits."""
    dtype = _dtype_of(node)
    if dtype is None:
        return True  # reported by the reader if it matters; size unknown, nothing read
    nbytes = declared_nbytes(shape, dtype, what="array", path=loc.url, backend="zarr")
    if nbytes > loc.limits.max_decoded_bytes:
        report.errors.append(
            f"image {key!r}: array {dpath!r} declares shape {list(shape)} {dtype} "
            f"({nbytes:,} bytes), more than the decoded-size limit of "
            f"{loc.limits.max_decoded_bytes:,} bytes (not read)"
        )
        return False
    return True


def _chunk_shape(node: _ome.NodeMeta) -> tuple[int, ...] | None:
    raw = node.raw
    try:
        if node.zarr_format == 3:
            grid = raw["chunk_grid"]["configuration"]["chunk_shape"]
        else:
            grid = raw["chunks"]
        return tuple(int(c) for c in grid)
    except (KeyError, TypeError, ValueError):
        return None


def _decode_all(loc: Location, key: str, dpath: str, report: PlateReport, fmt: int) -> None:
    """Decode every chunk of one array, one chunk (grid cell) at a time."""
    import zarr
    from hcsflow.storage.zarr._arrays import read_array

    node = _ome.read_node(loc)
    chunks = _chunk_shape(node) if node is not None else None
    try:
        arr = zarr.open_array(store=loc.zarr_store(), mode="r", zarr_format=3 if fmt == 3 else 2)
        shape = tuple(int(s) for s in arr.shape)
        grid = chunks if chunks is not None and len(chunks) == len(shape) else arr.chunks
        counts = [-(-s // max(1, int(c))) for s, c in zip(shape, grid, strict=True)]
        total = 1
        for n in counts:
            total *= n
        if total > loc.limits.max_chunks:
            report.errors.append(
                f"image {key!r}: array {dpath!r} has {total:,} chunks, more than the "
                f"limit of {loc.limits.max_chunks:,} (StorageLimits.max_chunks; not decoded)"
            )
            return
        for cell in np.ndindex(*counts):
            box = tuple(
                slice(i * int(c), min((i + 1) * int(c), s))
                for i, c, s in zip(cell, grid, shape, strict=True)
            )
            read_array(arr, box, loc)
    except HcsflowError as exc:
        report.errors.append(f"image {key!r}: array {dpath!r}: {exc}")
    except Exception as exc:
        # an unknown codec, a bad chunk grid...: the array cannot be read, whatever the cause
        report.errors.append(f"image {key!r}: array {dpath!r}: {type(exc).__name__}: {exc}")
