"""OME-NGFF metadata (0.5 on zarr format 3, 0.4 on zarr format 2): build and read.

In NGFF 0.5 everything lives under ``attributes["ome"]`` with one ``version``; in 0.4
the blocks (``plate``, ``well``, ``multiscales``...) are top-level attributes each
carrying their own ``version``.  Code elsewhere works on the version-free *block* and
calls :func:`wrap` / :func:`unwrap` at the boundary.  hcsflow's own bookkeeping is kept
under a separate top-level ``"hcsflow"`` attribute that NGFF readers ignore.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hcsflow.errors import CorruptStoreError, PlateMetadataError
from hcsflow.storage._debris import NAME_MAX
from hcsflow.storage.zarr._io import BACKEND, META_FILES, Location

__all__ = [
    "NodeMeta",
    "read_node",
    "v3_node",
    "write_group",
    "wrap",
    "unwrap",
    "axes_for",
    "multiscales",
    "well_block",
    "plate_block",
    "omero_block",
    "ImageAttrs",
    "image_attrs",
    "child_path",
    "unsafe_path",
]

NGFF_VERSIONS = ("0.5", "0.4")


@dataclass(frozen=True)
class NodeMeta:
    """A zarr node's kind, format and attributes."""

    zarr_format: int
    node_type: str  # "group" | "array"
    attributes: dict[str, Any]
    raw: dict[str, Any]


def v3_node(doc: dict[str, Any]) -> NodeMeta | None:
    """The node a parsed ``zarr.json`` describes; ``None`` when it is no valid one."""
    node_type = doc.get("node_type")
    attrs = doc.get("attributes", {})
    if doc.get("zarr_format") != 3 or node_type not in ("group", "array"):
        return None
    if not isinstance(attrs, dict):
        return None
    return NodeMeta(3, node_type, attrs, doc)


def read_node(loc: Location) -> NodeMeta | None:
    """Metadata of the zarr node at ``loc`` (format 3 or 2), ``None`` when there is none."""
    doc = loc.read_json("zarr.json")
    if doc is not None:
        node = v3_node(doc)
        if node is None:
            raise PlateMetadataError(
                f"malformed zarr metadata: store {loc.url!r}, key 'zarr.json': "
                f"zarr_format={doc.get('zarr_format')!r}, node_type={doc.get('node_type')!r}"
                + (
                    ""
                    if isinstance(doc.get("attributes", {}), dict)
                    else ", attributes is not an object"
                ),
                path=f"{loc.url}/zarr.json",
                backend=BACKEND,
            )
        return node
    for key, kind in ((".zarray", "array"), (".zgroup", "group")):
        doc = loc.read_json(key)
        if doc is not None:
            attrs = loc.read_json(".zattrs") or {}
            return NodeMeta(2, kind, attrs, doc)
    return None


def unsafe_path(value: Any, *, parts: int | None = None) -> str | None:
    """Why ``value`` is not a relative child path of ``parts`` names, or ``None`` if it is.

    A child path is one or more names joined by ``/``: no empty name, no ``.`` or
    ``..``, no leading ``/`` (absolute), no backslash or NUL, no zarr metadata file name,
    at most 255 bytes per name.
    """
    if not isinstance(value, str):
        return f"is a {type(value).__name__}, not a string"
    if value.startswith("/"):
        return "is absolute"
    names = value.split("/")
    if parts is not None and len(names) != parts:
        return f"has {len(names)} names, expected {parts}"
    for name in names:
        if name in ("", ".", ".."):
            return f"contains {name!r}" if name else "contains an empty name"
        if "\\" in name or "\x00" in name:
            return "contains a backslash or NUL"
        if name in META_FILES:
            return f"names the metadata file {name!r}"
        if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
            return f"has a name longer than {NAME_MAX} bytes"
    return None


def child_path(value: Any, loc: Location, key: str, what: str, *, parts: int | None = None) -> str:
    """``value`` if it is a safe relative child path (see :func:`unsafe_path`).

    Otherwise :class:`~hcsflow.errors.CorruptStoreError` naming the store, the metadata
    key and the value: a path read from metadata never reaches outside its node.
    """
    problem = unsafe_path(value, parts=parts)
    if problem is not None:
        raise CorruptStoreError(
            f"{what} {value!r} {problem}; it must be a relative path below the node: "
            f"store {loc.url!r}, key {key!r}",
            path=f"{loc.url}/{key}" if key else loc.url,
            backend=BACKEND,
        )
    return str(value)


def group_document(attributes: dict[str, Any]) -> bytes:
    """The bytes of a zarr v3 group ``zarr.json`` holding ``attributes``."""
    doc = {"zarr_format": 3, "node_type": "group", "attributes": attributes}
    # compact separators keep json on its C encoder (``indent`` forces the pure-Python
    # one, which was the largest per-well cost of rewriting a many-well plate document)
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def write_group(
    loc: Location, attributes: dict[str, Any], zarr_format: int, *, published: bool = True
) -> None:
    """Write group metadata at ``loc`` in one atomic step (the attributes object is last).

    In zarr format 3 one ``zarr.json`` holds everything; in format 2 ``.zgroup`` is
    created once and ``.zattrs`` (the part readers act on) is replaced atomically.
    ``published=False`` is for a new group no reader reaches yet (a field image that a
    well's metadata will point to once complete): it is written in place, no rename.
    """
    if zarr_format == 3:
        doc = group_document(attributes)
        if published:
            loc.write("zarr.json", doc)
        else:
            loc.write_unpublished("zarr.json", doc)
    else:
        loc.write_once(".zgroup", b'{\n  "zarr_format": 2\n}')
        loc.write_json(".zattrs", attributes)


def wrap(block: dict[str, Any], version: str) -> dict[str, Any]:
    """Attributes for an NGFF ``block`` in ``version``'s layout."""
    if version == "0.5":
        # ome-zarr-models also wants the plate block to state its version (the 0.5
        # schema allows the extra key)
        if isinstance(block.get("plate"), dict):
            block = {**block, "plate": {**block["plate"], "version": "0.5"}}
        return {"ome": {"version": "0.5", **block}}
    out: dict[str, Any] = {}
    for key, value in block.items():
        if key in ("plate", "well", "image-label") and isinstance(value, dict):
            out[key] = {**value, "version": "0.4"}
        elif key == "multiscales" and isinstance(value, list):
            out[key] = [{**m, "version": "0.4"} for m in value]
        else:
            out[key] = value
    return out


def unwrap(attributes: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """(NGFF version, block) of a node's attributes; version ``None`` when not NGFF."""
    ome = attributes.get("ome")
    if isinstance(ome, dict):
        version = ome.get("version")
        return (str(version) if version is not None else None), ome
    for key in ("plate", "well", "image-label"):
        value = attributes.get(key)
        if isinstance(value, dict) and "version" in value:
            return str(value["version"]), attributes
    ms = attributes.get("multiscales")
    if isinstance(ms, list) and ms and isinstance(ms[0], dict) and "version" in ms[0]:
        return str(ms[0]["version"]), attributes
    if any(k in attributes for k in ("plate", "well", "multiscales", "labels")):
        return "0.4", attributes
    return None, attributes


def axes_for(ndim: int) -> tuple[str, ...]:
    """Axis names of a field image: ``(c, z, y, x)`` or ``(t, c, z, y, x)``."""
    if ndim == 4:
        return ("c", "z", "y", "x")
    if ndim == 5:
        return ("t", "c", "z", "y", "x")
    raise ValueError(f"a field image has 4 or 5 dimensions, not {ndim}")


_AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}


def multiscales(
    axes: tuple[str, ...],
    paths: list[str],
    name: str,
    scale: Mapping[str, float] | None = None,
    units: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """A ``multiscales`` list for datasets ``paths`` (level ``i`` halves y and x ``i`` times).

    ``scale`` gives the level-0 size of one pixel per axis (e.g. ``{"y": 0.65, "x":
    0.65, "z": 2.0}`` in micrometres; missing axes: 1); ``units`` the NGFF unit of an
    axis (``"micrometer"``, ``"second"``).
    """
    base = dict(scale or {})
    unit_of = dict(units or {})
    for a, v in base.items():
        if a not in axes or not (isinstance(v, (int, float)) and v > 0 and v == v):
            raise ValueError(f"scale of axis {a!r} must be a positive number on {axes}, got {v!r}")
    datasets = []
    for level, path in enumerate(paths):
        factors = [
            float(base.get(a, 1.0)) * (float(2**level) if a in ("y", "x") else 1.0) for a in axes
        ]
        datasets.append(
            {"path": path, "coordinateTransformations": [{"type": "scale", "scale": factors}]}
        )
    axis_docs = []
    for a in axes:
        doc = {"name": a, "type": _AXIS_TYPES[a]}
        if a in unit_of:
            doc["unit"] = unit_of[a]
        axis_docs.append(doc)
    return [{"name": name, "axes": axis_docs, "datasets": datasets}]


def omero_block(
    channels: Sequence[Mapping[str, Any]], data: Any, axes: tuple[str, ...]
) -> dict[str, Any]:
    """An ``omero`` block: one entry per channel of ``data`` with label, colour, window.

    ``channels`` holds ``{"label": str, "color": "RRGGBB"}`` per channel of the image's
    ``c`` axis.  The window's ``start``/``end`` are the channel's data range; ``min``/
    ``max`` the dtype's range for integers, the data range for floats.
    """
    import numpy as np

    arr = np.asarray(data)
    c_axis = axes.index("c")
    if len(channels) != arr.shape[c_axis]:
        raise ValueError(
            f"{len(channels)} channel descriptions for an image with {arr.shape[c_axis]} channels"
        )
    entries = []
    for i, ch in enumerate(channels):
        plane = np.take(arr, i, axis=c_axis)
        lo, hi = (float(plane.min()), float(plane.max())) if plane.size else (0.0, 0.0)
        if not (np.isfinite(lo) and np.isfinite(hi)):
            finite = plane[np.isfinite(plane)]
            lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        # a constant channel still gets a window a viewer can map
        end = hi if hi > lo else lo + 1.0
        if arr.dtype.kind in "iu":
            info = np.iinfo(arr.dtype)
            dmin, dmax = float(info.min), float(info.max)
        elif arr.dtype.kind == "b":
            dmin, dmax = 0.0, 1.0
        else:
            dmin, dmax = lo, end
        entries.append(
            {
                "label": str(ch["label"]),
                "color": str(ch["color"]).upper(),
                "active": True,
                "coefficient": 1,
                "family": "linear",
                "inverted": False,
                "window": {"min": dmin, "max": max(dmax, end), "start": lo, "end": end},
            }
        )
    return {"omero": {"channels": entries, "rdefs": {"model": "color"}}}


@dataclass(frozen=True)
class ImageAttrs:
    """What an image group's NGFF metadata says about physical sizes and channels."""

    axes: tuple[str, ...]
    scale: dict[str, float]
    """Level-0 scale per axis (1 where the image does not say)."""
    units: dict[str, str]
    channels: tuple[dict[str, Any], ...]
    """``omero`` channels (``label``, ``color``...) as stored; empty when absent."""


def image_attrs(block: Mapping[str, Any]) -> ImageAttrs:
    """Parse axes, units, level-0 scale and ``omero`` channels from an image ``block``.

    Raises ``KeyError``/``TypeError``/``IndexError``/``ValueError`` on malformed
    metadata (callers turn them into errors naming the key).
    """
    ms = block["multiscales"][0]
    axes_raw = ms["axes"]
    axes = tuple(str(a["name"]) if isinstance(a, dict) else str(a) for a in axes_raw)
    units = {
        str(a["name"]): str(a["unit"]) for a in axes_raw if isinstance(a, dict) and a.get("unit")
    }
    scale = {a: 1.0 for a in axes}
    ds0 = ms["datasets"][0]
    transforms = list(ms.get("coordinateTransformations", [])) + list(
        ds0.get("coordinateTransformations", [])
    )
    for t in transforms:
        if isinstance(t, dict) and t.get("type") == "scale":
            values = [float(v) for v in t["scale"]]
            if len(values) != len(axes):
                raise ValueError(f"scale {values} does not match axes {axes}")
            for a, v in zip(axes, values, strict=True):
                scale[a] *= v
    omero = block.get("omero")
    chans: tuple[dict[str, Any], ...] = ()
    if isinstance(omero, dict) and isinstance(omero.get("channels"), list):
        chans = tuple(dict(c) for c in omero["channels"] if isinstance(c, dict))
    return ImageAttrs(axes, scale, units, chans)


def well_block(field_paths: list[str]) -> dict[str, Any]:
    """A ``well`` block listing the field image groups in field order."""
    return {"well": {"images": [{"path": p, "acquisition": 0} for p in field_paths]}}


def plate_block(
    wells: list[tuple[int, int]],
    n_rows: int,
    n_columns: int,
    field_count: int,
    name: str,
) -> dict[str, Any]:
    """A ``plate`` block for ``wells`` given as (row, column) indices on the plate.

    ``rows``/``columns`` list the whole physical plate, so ``rowIndex``/``columnIndex``
    are simply the well's row and column indices, and stay valid as wells are added.
    """
    from hcsflow.storage.plate import row_name

    rows = [{"name": row_name(r)} for r in range(n_rows)]
    columns = [{"name": str(c + 1)} for c in range(n_columns)]
    entries = [
        {"path": f"{row_name(r)}/{c + 1}", "rowIndex": r, "columnIndex": c}
        for r, c in sorted(set(wells))
    ]
    block: dict[str, Any] = {
        "name": name,
        "rows": rows,
        "columns": columns,
        "wells": entries,
        "acquisitions": [{"id": 0, "name": name, "maximumfieldcount": max(1, field_count)}],
    }
    if field_count > 0:
        block["field_count"] = field_count
    return {"plate": block}
