"""``hcsflow validate``: check an OME-Zarr plate (or a run's plate) against NGFF."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hcsflow.cli._common import (
    EXIT_OK,
    EXIT_WELLS_FAILED,
    RUN_PLATE_NAME,
    add_command,
    is_zarr_group,
)
from hcsflow.errors import UsageError

__all__ = ["register", "plate_to_validate"]

DESCRIPTION = """\
Open an OME-Zarr plate, every well and every field image through hcsflow's reader
(which checks the NGFF plate, well and multiscales metadata and the arrays they point
to) and list each problem. PATH is the plate (a .zarr directory) or a run directory
written with the zarr backend, whose plate is RUN_DIR/images.zarr.

exit status: 0 the plate is valid, 1 problems were found, 2 PATH is not a plate."""

EPILOG = """\
examples:
  hcsflow validate results/                 # the run's plate, results/images.zarr
  hcsflow validate screen.zarr --deep       # also decode every chunk"""


def register(subparsers: Any) -> None:
    """Add ``hcsflow validate``."""
    p = add_command(
        subparsers,
        "validate",
        summary="check an OME-Zarr plate (or a run's plate) against the NGFF specification",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    p.add_argument("path", metavar="PATH", help="OME-Zarr plate or run directory")
    p.add_argument(
        "--deep",
        action="store_true",
        help="also read and decode every chunk of every full-resolution image (slow: "
        "reads all the data)",
    )
    p.set_defaults(handler=run_validate)


def plate_to_validate(path: Path) -> Path:
    """The OME-Zarr plate at ``path``: the path itself, or a run directory's plate."""
    if not path.exists():
        raise UsageError(f"{str(path)!r} does not exist")
    if is_zarr_group(path):
        return path
    if (path / RUN_PLATE_NAME).is_dir():
        return path / RUN_PLATE_NAME
    if (path / "manifest.json").is_file():
        raise UsageError(
            f"the run in {str(path)!r} has no OME-Zarr plate ({RUN_PLATE_NAME}): its images "
            "were written as TIFF files (--backend disk); validate checks OME-Zarr plates"
        )
    raise UsageError(
        f"{str(path)!r} is neither an OME-Zarr plate (no zarr.json or .zattrs) nor a run "
        f"directory holding {RUN_PLATE_NAME}"
    )


def run_validate(args: argparse.Namespace) -> int:
    """Validate; print the report; exit 1 when the plate has problems."""
    from hcsflow.storage.zarr.validate import validate_plate

    plate = plate_to_validate(Path(args.path).absolute())
    report = validate_plate(str(plate), deep=args.deep)
    print(report.summary())
    return EXIT_OK if report.ok else EXIT_WELLS_FAILED
