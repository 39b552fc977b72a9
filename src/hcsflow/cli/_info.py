"""``hcsflow info``: describe a plate directory, an OME-Zarr plate or a run directory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hcsflow.cli._common import EXIT_OK, add_command, is_zarr_group, layout_from
from hcsflow.errors import UsageError

__all__ = ["register"]

DESCRIPTION = """\
Describe what is at PATH: a run directory (its manifest summary and failed wells), an
OME-Zarr plate (NGFF version, rows, columns, wells, fields, axes, shape, dtype) or a
plate directory of images (layout, wells, sites, channels, planes, timepoints)."""

EPILOG = """\
examples:
  hcsflow info plate/
  hcsflow info results/images.zarr
  hcsflow info --json results/ > run.json"""


def register(subparsers: Any) -> None:
    """Add ``hcsflow info``."""
    p = add_command(
        subparsers,
        "info",
        summary="describe a plate directory, an OME-Zarr plate or a run",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    p.add_argument("path", metavar="PATH", help="plate directory, OME-Zarr plate or run directory")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(handler=run_info)


def run_info(args: argparse.Namespace) -> int:
    """Print the description of ``args.path``."""
    path = Path(args.path)
    if not path.exists():
        raise UsageError(f"{args.path!r} does not exist")
    info: dict[str, Any]
    if (path / "manifest.json").is_file():
        m = json.loads((path / "manifest.json").read_text())
        info = {
            "kind": "hcsflow run",
            "output_dir": str(path.absolute()),
            "started": m.get("started"),
            "duration_s": m.get("duration_s"),
            "plate": m.get("plate"),
            "summary": m.get("summary"),
            "steps": [s.get("name") for s in m.get("pipeline", [])],
            "plate_tables": m.get("plate_tables"),
            "failed_wells": {
                w: d.get("error") for w, d in m.get("wells", {}).items() if d.get("status") != "ok"
            },
        }
    elif is_zarr_group(path):
        from hcsflow.storage import open_plate, open_well

        p = open_plate(str(path))
        first = open_well(str(path), p.wells[0]) if p.wells else None
        info = {
            "kind": "OME-Zarr plate",
            "url": p.url,
            "ngff_version": p.ngff_version,
            "name": p.name,
            "rows": len(p.rows),
            "columns": len(p.columns),
            "wells": len(p.wells),
            "fields": p.field_count,
            "axes": list(first.axes) if first else None,
            "shape": list(first.shape) if first else None,
            "dtype": first.dtype if first else None,
        }
    else:
        from hcsflow.pipeline import read_plate

        plate = read_plate(str(path.absolute()), layout=layout_from(None))
        info = {"kind": "image plate", **plate.summary(), "well_names": list(plate.wells)}
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        for k, v in info.items():
            print(f"{k}: {v}")
    return EXIT_OK
