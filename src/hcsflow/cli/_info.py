"""``hcsflow info PATH``: a plate (any format) or a finished run, described for people.

A plate is read with its reader (detected, or ``--format`` / ``--layout``) without
reading image data: one TIFF header (or zarr array) per well gives the image size and
dtype.  A run directory (one holding ``manifest.json``) is summarised from its
manifest.  ``PATH`` may be an fsspec URL (``s3://bucket/plate``, a run written there),
read with ``--storage-options``.  ``--json`` prints the same facts as one JSON document.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "register",
    "info_command",
    "describe_plate",
    "describe_run",
    "format_plate",
    "format_run",
]

DESCRIPTION = """\
Describe what is at PATH for people: a plate (a microscope export, an OME-Zarr plate or
a folder of images: format, wells, fields, channels with names, planes, timepoints,
image size and dtype, pixel size, files it skipped) or a run directory (its manifest:
pipeline, wells done and failed, timings, tables). Reads headers only, no image data.
PATH may be an fsspec URL (s3://bucket/plate, gs://...); credentials come from the
environment as usual, other fsspec options from --storage-options."""

EPILOG = """\
examples:
  hcsflow info plate/                       # a microscope export or a folder of images
  hcsflow info results/                     # a run: its manifest summarised
  hcsflow info results/images.zarr          # an OME-Zarr plate
  hcsflow info scans/ --layout '(?P<well>[A-P]\\d\\d)-(?P<site>\\d+)\\.tif'
  hcsflow info --json plate/ > plate.json
  hcsflow info s3://bucket/plate --storage-options '{"endpoint_url": "http://minio:9000"}'"""


def register(subparsers: Any) -> None:
    """Add ``hcsflow info``."""
    from hcsflow.cli._common import add_command, add_storage_options, path_or_url

    p = add_command(
        subparsers,
        "info",
        summary="describe a plate (microscope export, OME-Zarr, folder of images) or a run",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    p.add_argument(
        "path", type=path_or_url, metavar="PATH", help="plate or run directory (a path or a URL)"
    )
    p.add_argument(
        "--format",
        default=None,
        metavar="NAME",
        help="plate format: imagexpress, harmony, cellvoyager, ome-tiff, ome-zarr, files "
        "(default: detected)",
    )
    p.add_argument(
        "--layout",
        default=None,
        metavar="NAME|REGEX",
        help="file naming of a plain folder of images (see hcsflow run --help) (default: detected)",
    )
    add_storage_options(p, "a PATH that is a URL")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(handler=info_command)


# --------------------------------------------------------------------------- plates


def _plane_geometry(
    desc: Any, storage_options: dict[str, Any] | None = None
) -> dict[str, tuple[tuple[int, ...], str]]:
    """(y, x) size and dtype of the first plane of every well, from headers only; a
    plate at a URL is read with fsspec ``storage_options``."""
    from hcsflow.storage import Backend

    out: dict[str, tuple[tuple[int, ...], str]] = {}
    if desc.backend == Backend.ZARR.value:
        from hcsflow.storage import open_well

        for well in desc.wells:
            w = open_well(desc.root, well, storage_options=storage_options)
            out[well] = (tuple(int(s) for s in w.shape[-2:]), np.dtype(w.dtype).name)
        return out
    from hcsflow.readers import URL_BACKEND, PlateSource

    # a plate at a URL: TIFF headers through fsspec (one ranged read per well)
    source = (
        PlateSource.from_url(desc.root, storage_options) if desc.backend == URL_BACKEND else None
    )
    for well, images in desc.wells.items():
        img = images[0]
        tiff = img.path.lower().endswith((".tif", ".tiff"))
        if tiff and (source is not None or os.path.isfile(img.path)):
            import tifffile

            with contextlib.ExitStack() as stack:
                fh = stack.enter_context(source.open(img.path)) if source else img.path
                tif = stack.enter_context(tifffile.TiffFile(fh))
                page = tif.pages[img.page or 0]
                shape = tuple(int(s) for s in page.shape)
                out[well] = (shape[-2:], str(page.dtype))
        else:
            fm = source.filemanager if source is not None else _filemanager()
            arr = desc.reader.load_planes([img], fm, desc.backend)[0]
            out[well] = (tuple(arr.shape[-2:]), str(arr.dtype))
    return out


def _filemanager() -> Any:
    from hcsflow.storage import FileManager

    return FileManager()


def describe_plate(desc: Any, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """A JSON-ready description of a plate (``PlateDescription.summary`` plus geometry);
    ``storage_options`` are the fsspec options of a plate at a URL."""
    from hcsflow.storage import Backend

    geometry = _plane_geometry(desc, storage_options)
    shapes = sorted({(s, d) for s, d in geometry.values()})
    info: dict[str, Any] = {
        "kind": "OME-Zarr plate" if desc.backend == Backend.ZARR.value else "plate",
        **desc.summary(),
        "well_names": list(desc.wells),
        "image_size": list(shapes[0][0]) if len(shapes) == 1 else None,
        "dtype": shapes[0][1] if len(shapes) == 1 else None,
        "image_sizes": {w: [list(s), d] for w, (s, d) in geometry.items()}
        if len(shapes) > 1
        else None,
        "skipped": [f"{s.path}: {s.reason}" for s in desc.skipped],
    }
    return info


def _um(value: float) -> str:
    return f"{value:.6g} µm"


def _nm(value: float | None) -> str:
    return f"{value:.0f} nm" if value else "-"


def _seconds(value: float) -> str:
    if value >= 3600 and value % 60 == 0:
        return f"{value:.6g} s ({value / 3600:.3g} h)"
    if value >= 60:
        return f"{value:.6g} s ({value / 60:.3g} min)"
    return f"{value:.6g} s"


def _table(rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in rows
    ]


def _pairs(pairs: Sequence[tuple[str, str]]) -> list[str]:
    width = max(len(k) for k, _ in pairs)
    return [f"{k.ljust(width)}  {v}" for k, v in pairs]


def _names(items: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" ... ({len(items) - limit} more)" if len(items) > limit else "")


def format_plate(info: dict[str, Any]) -> str:
    """The text ``hcsflow info`` prints for a plate (``info`` from :func:`describe_plate`)."""
    from collections import Counter

    title = info.get("format") or "?"
    if info.get("layout") and info.get("layout") != title:
        title += f" (file-name layout {info['layout']})"
    pairs: list[tuple[str, str]] = [("plate", str(info["root"])), ("format", title)]
    if info.get("name"):
        pairs.append(("name", str(info["name"])))
    if info.get("plate_shape"):
        r, c = info["plate_shape"]
        pairs.append(("plate format", f"{r * c} wells ({r} rows x {c} columns)"))
    wells = info.get("well_names") or []
    pairs.append(("wells", f"{len(wells)}: {_names(wells)}"))
    pairs.append(("fields", str(info["sites"])))
    pairs.append(("channels", str(info["channels"])))
    z = str(info["z_planes"])
    if info.get("z_step_um"):
        z += f", step {_um(info['z_step_um'])}"
    pairs.append(("z planes", z))
    t = str(info["timepoints"])
    if info.get("time_interval_s"):
        t += f", interval {_seconds(info['time_interval_s'])}"
    pairs.append(("timepoints", t))
    px = info.get("pixel_size_um")
    if px:
        y, x = px
        pairs.append(("pixel size", _um(x) if x == y else f"{_um(y)} (y) x {_um(x)} (x)"))
    else:
        pairs.append(("pixel size", "not recorded"))
    images = f"{info['images']} planes"
    if info.get("image_size"):
        h, w = info["image_size"]
        images += f", {w} x {h} px, {info['dtype']}"
    pairs.append(("images", images))
    skipped = info.get("skipped") or []
    reasons = Counter(s.split(": ", 1)[-1] for s in skipped)
    pairs.append(
        (
            "skipped files",
            f"{len(skipped)}"
            + (
                " (" + ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())) + ")"
                if reasons
                else ""
            ),
        )
    )
    unplaced = info.get("unplaced_files") or []
    pairs.append(("unplaced images", str(len(unplaced))))
    lines = _pairs(pairs)
    chans = info.get("channel_info") or []
    if chans:
        lines.append("")
        lines.append("channels:")
        rows = [("#", "name", "excitation", "emission", "colour", "id")]
        for ch in chans:
            rows.append(
                (
                    str(ch["index"] + 1),
                    ch.get("name") or "-",
                    _nm(ch.get("excitation_nm")),
                    _nm(ch.get("emission_nm")),
                    ch.get("color") or "-",
                    ch.get("source_id") or "-",
                )
            )
        lines += _table(rows)
    sizes = info.get("image_sizes")
    if sizes:
        lines.append("")
        lines.append("image size per well (they differ):")
        lines += _table(
            [("well", "size (x y)", "dtype")]
            + [(w, f"{s[1]} x {s[0]}", d) for w, (s, d) in sizes.items()]
        )
    if unplaced:
        lines.append("")
        lines.append("unplaced image files (left out of a run; --strict refuses the plate):")
        lines += [f"  {u}" for u in unplaced[:20]]
        if len(unplaced) > 20:
            lines.append(f"  ... and {len(unplaced) - 20} more")
    notes = info.get("notes") or []
    if notes:
        lines.append("")
        lines.append("notes:")
        lines += [f"  {n}" for n in notes]
    return "\n".join(lines)


# --------------------------------------------------------------------------- runs


def describe_run(path: Path | str, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """A JSON-ready summary of the run in ``path`` (from its ``manifest.json``, or the
    already read ``manifest`` of a run at a URL)."""
    m = manifest if manifest is not None else json.loads(Path(path, "manifest.json").read_text())
    where = path if isinstance(path, str) and "://" in path else str(Path(path).absolute())
    return {
        "kind": "hcsflow run",
        "output_dir": where,
        "started": m.get("started"),
        "duration_s": m.get("duration_s"),
        "plate": m.get("plate"),
        "summary": m.get("summary"),
        "steps": [s.get("name") for s in m.get("pipeline", [])],
        "plate_tables": m.get("plate_tables"),
        "executor": m.get("executor"),
        "failed_wells": {
            w: {"error_type": d.get("error_type"), "error": d.get("error")}
            for w, d in m.get("wells", {}).items()
            if d.get("status") != "ok"
        },
        "files": len(m.get("files", {})),
        "versions": m.get("versions"),
    }


def format_run(info: dict[str, Any]) -> str:
    """The text ``hcsflow info`` prints for a run directory."""
    summary = info.get("summary") or {}
    plate = info.get("plate") or {}
    pairs: list[tuple[str, str]] = [("hcsflow run", str(info["output_dir"]))]
    started = info.get("started") or "?"
    took = info.get("duration_s")
    pairs.append(("started", f"{started}" + (f", took {took:.1f} s" if took else "")))
    n = summary.get("wells", 0)
    ok, bad = summary.get("wells_ok", 0), summary.get("wells_failed", 0)
    again = summary.get("wells_ran_again", 0)
    pairs.append(
        ("wells", f"{n} ({ok} ok, {bad} failed" + (f", {again} ran again)" if again else ")"))
    )
    images = f"{summary.get('images_in', 0)} in"
    if summary.get("images_per_s"):
        images += f", {summary['images_per_s']:.1f} images/s"
    pairs.append(("images", images))
    if plate:
        desc = plate.get("format") or plate.get("layout") or "?"
        if plate.get("name"):
            desc += f" plate {plate['name']!r}"
        desc += (
            f": {plate.get('wells')} wells x {plate.get('sites')} fields x "
            f"{plate.get('channels')} channels x {plate.get('z_planes')} z x "
            f"{plate.get('timepoints')} t"
        )
        pairs.append(("plate", f"{plate.get('root')}"))
        pairs.append(("", desc))
        if plate.get("pixel_size_um"):
            y, x = plate["pixel_size_um"]
            pairs.append(("pixel size", _um(x) if x == y else f"{_um(y)} (y) x {_um(x)} (x)"))
        names = [
            c.get("name") or f"Channel {c['index'] + 1}" for c in plate.get("channel_info", [])
        ]
        if names:
            pairs.append(("channels", ", ".join(names)))
    steps = info.get("steps") or []
    pairs.append(("steps", "  ".join(f"{i + 1}. {s}" for i, s in enumerate(steps)) or "-"))
    ex = info.get("executor") or {}
    if ex:
        kind = f"{ex.get('kind')}, {ex.get('workers')} worker(s)"
        if ex.get("start_method"):
            kind += f" ({ex['start_method']})"
        pairs.append(("executor", kind))
    tables = info.get("plate_tables") or {}
    for i, (key, name) in enumerate(sorted(tables.items())):
        pairs.append(("plate tables" if i == 0 else "", f"{key}: {name}"))
    pairs.append(("files", f"{info.get('files', 0)} (sizes and sha256 in manifest.json)"))
    lines = _pairs(pairs)
    failed = info.get("failed_wells") or {}
    if failed:
        lines.append("")
        lines.append("failed wells:")
        for w, err in sorted(failed.items()):
            lines.append(f"  {w}: {err.get('error_type')}: {err.get('error')}")
    return "\n".join(lines)


def describe_interrupted_run(
    path: str, storage_options: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """A JSON-ready summary of an interrupted run in ``path`` (a run record, no manifest
    yet): which wells are committed and how to continue; ``None`` if ``path`` holds none."""
    from hcsflow.pipeline._commit import read_run_record, well_statuses
    from hcsflow.pipeline._output import OutputRoot

    root = OutputRoot.of(path, storage_options)
    record = read_run_record(root)
    if record is None:
        return None
    wells = [str(w) for w in record.get("wells", [])]
    statuses = well_statuses(root, wells)
    return {
        "kind": "interrupted run",
        "output_dir": root.url,
        "run_id": record.get("run_id"),
        "started": record.get("started"),
        "wells": len(wells),
        "wells_ok": sorted(w for w, s in statuses.items() if s == "ok"),
        "wells_failed": sorted(w for w, s in statuses.items() if s == "failed"),
        "wells_not_committed": [w for w in wells if w not in statuses],
    }


def format_interrupted_run(info: dict[str, Any]) -> str:
    """The text ``hcsflow info`` prints for an interrupted run."""
    ok, failed, todo = info["wells_ok"], info["wells_failed"], info["wells_not_committed"]
    pairs = [
        ("hcsflow run", f"{info['output_dir']} (interrupted: no manifest yet)"),
        ("started", str(info.get("started") or "?")),
        (
            "wells",
            f"{info['wells']} ({len(ok)} committed ok, {len(failed)} failed, "
            f"{len(todo)} not committed)",
        ),
    ]
    if failed:
        pairs.append(("failed", _names(failed)))
    if todo:
        pairs.append(("not committed", _names(todo)))
    lines = _pairs(pairs)
    lines.append("")
    lines.append(
        "continue it with the same command and --resume (committed wells are verified and "
        "kept), or start over with --overwrite"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------- command


def _remote_manifest(url: str, storage_options: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ``manifest.json`` of a run at ``url``; ``None`` when there is none."""
    from hcsflow.storage import FsspecStorageBackend

    backend = FsspecStorageBackend(url, storage_options=storage_options)
    if backend.entry_kind("/manifest.json") != "file":
        return None
    doc = backend.load("/manifest.json")
    return doc if isinstance(doc, dict) and "wells" in doc else None


def info_command(args: argparse.Namespace) -> int:
    """Run ``hcsflow info`` for parsed ``args`` (``path``, ``format``, ``layout``,
    ``storage_options``, ``json``)."""
    from hcsflow.cli._common import parse_storage_options

    storage_options = parse_storage_options(args.storage_options)
    path = Path(args.path)
    url = "://" in args.path  # a plate at a URL (Path would fold its "//")
    plain = args.format is None and args.layout is None
    manifest = _remote_manifest(args.path, storage_options) if url and plain else None
    info: dict[str, Any]
    if manifest is not None:
        info = describe_run(args.path.rstrip("/"), manifest)
        text = format_run(info)
    elif not url and (path / "manifest.json").is_file() and plain:
        info = describe_run(path)
        text = format_run(info)
    elif plain and (interrupted := describe_interrupted_run(args.path, storage_options)):
        info = interrupted
        text = format_interrupted_run(info)
    else:
        from hcsflow.cli._common import layout_from
        from hcsflow.readers import read_plate

        desc = read_plate(
            args.path if url else str(path.absolute()),
            format=args.format,
            layout=layout_from(args.layout),
            storage_options=storage_options,
        )
        info = describe_plate(desc, storage_options)
        text = format_plate(info)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        print(text)
    return 0
