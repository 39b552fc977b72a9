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
    add_storage_options,
    is_zarr_group,
    parse_storage_options,
    path_or_url,
)
from hcsflow.errors import UsageError

__all__ = ["register", "plate_to_validate", "remote_plate_to_validate"]

DESCRIPTION = """\
Open an OME-Zarr plate, every well and every field image through hcsflow's reader
(which checks the NGFF plate, well and multiscales metadata and the arrays they point
to) and list each problem. PATH is the plate (a .zarr directory) or a run directory
written with the zarr backend, whose plate is RUN_DIR/images.zarr. PATH may be a URL
(s3://, gs://, file://, any fsspec file system); credentials come from the environment
as usual, other fsspec options from --storage-options.

exit status: 0 the plate is valid, 1 problems were found, 2 PATH is not a plate."""

EPILOG = """\
examples:
  hcsflow validate results/                 # the run's plate, results/images.zarr
  hcsflow validate screen.zarr --deep       # also decode every chunk
  hcsflow validate s3://bucket/run --storage-options '{"endpoint_url": "http://minio:9000"}'"""


def register(subparsers: Any) -> None:
    """Add ``hcsflow validate``."""
    p = add_command(
        subparsers,
        "validate",
        summary="check an OME-Zarr plate (or a run's plate) against the NGFF specification",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    p.add_argument("path", type=path_or_url, metavar="PATH", help="OME-Zarr plate or run directory")
    p.add_argument(
        "--deep",
        action="store_true",
        help="also read and decode every chunk of every full-resolution image (slow: "
        "reads all the data)",
    )
    add_storage_options(p, "a PATH that is a URL")
    p.set_defaults(handler=run_validate)


def _no_plate(where: str, is_run: bool) -> UsageError:
    """Why ``where`` (a path or URL that exists) cannot be validated."""
    if is_run:
        return UsageError(
            f"the run in {where!r} has no OME-Zarr plate ({RUN_PLATE_NAME}): its images "
            "were written as TIFF files (--backend disk); validate checks OME-Zarr plates"
        )
    return UsageError(
        f"{where!r} is neither an OME-Zarr plate (no zarr.json or .zattrs) nor a run "
        f"directory holding {RUN_PLATE_NAME}"
    )


def plate_to_validate(path: Path) -> Path:
    """The OME-Zarr plate at ``path``: the path itself, or a run directory's plate."""
    if not path.exists():
        raise UsageError(f"{str(path)!r} does not exist")
    if is_zarr_group(path):
        return path
    if (path / RUN_PLATE_NAME).is_dir():
        return path / RUN_PLATE_NAME
    raise _no_plate(str(path), (path / "manifest.json").is_file())


def remote_plate_to_validate(url: str, storage_options: dict[str, Any] | None) -> str:
    """The OME-Zarr plate at the URL ``url``: the URL itself, or a run's plate below it."""
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        root = root.rstrip("/")

        def is_group(where: str) -> bool:
            return bool(fs.exists(f"{where}/zarr.json") or fs.exists(f"{where}/.zattrs"))

        if is_group(root):
            return url
        if is_group(f"{root}/{RUN_PLATE_NAME}"):
            return f"{url.rstrip('/')}/{RUN_PLATE_NAME}"
        is_run = fs.exists(f"{root}/manifest.json")
        exists = is_run or fs.exists(root)
    except (OSError, ValueError, ImportError) as exc:
        # an unknown protocol, a missing fsspec driver, unreachable storage
        raise UsageError(f"cannot read {url!r}: {type(exc).__name__}: {exc}") from exc
    if not exists:
        raise UsageError(f"{url!r} does not exist")
    raise _no_plate(url, is_run)


def run_validate(args: argparse.Namespace) -> int:
    """Validate; print the report; exit 1 when the plate has problems."""
    from hcsflow.storage._fsspec_paths import is_url
    from hcsflow.storage.zarr.validate import validate_plate

    storage_options = parse_storage_options(args.storage_options)
    if is_url(args.path):
        plate = remote_plate_to_validate(args.path, storage_options)
        report = validate_plate(plate, deep=args.deep, storage_options=storage_options)
    else:
        if storage_options is not None:
            raise UsageError("--storage-options is for a PATH that is a URL")
        plate_path = plate_to_validate(Path(args.path).absolute())
        report = validate_plate(str(plate_path), deep=args.deep)
    print(report.summary())
    return EXIT_OK if report.ok else EXIT_WELLS_FAILED
