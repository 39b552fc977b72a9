"""``hcsflow run``: run a pipeline file over a plate."""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

from hcsflow.cli import _interrupt
from hcsflow.cli._common import (
    EXIT_OK,
    EXIT_WELLS_FAILED,
    add_command,
    add_parallel_options,
    add_storage_options,
    layout_from,
    parse_storage_options,
    path_or_url,
)
from hcsflow.errors import UsageError, describe_error

__all__ = ["register", "load_pipeline", "materialization_backend"]

DEFAULT_BACKEND = "zarr"

DESCRIPTION = """\
Run the pipeline defined in a Python file over every well of a plate and write images,
tables and a manifest to --out.

The pipeline file is plain Python that defines `pipeline = [FunctionStep(...), ...]` and
optionally `config = GlobalPipelineConfig(...)`; options given here override that
configuration. Functions defined in the file also work in worker processes.

The plate is a directory of images named by a microscope convention (ImageXpress,
Opera Phenix, or --layout REGEX) or an OME-Zarr plate; the plate and --out may be
fsspec URLs (s3://bucket/prefix, gs://...). Each well is committed as soon as it is
written, so an interrupted run continues with --resume."""

EPILOG = """\
a pipeline file:
  from hcsflow.pipeline import FunctionStep
  pipeline = [FunctionStep(func="gaussian_filter", sigma=1.0),
              FunctionStep(func="count_cells", min_size=20)]

examples:
  hcsflow run count.py plate/ --out results/
  hcsflow run count.py plate/ --out results/ --workers 4 --overwrite
  hcsflow run count.py plate/ --out results/ --backend disk      # TIFF files, not OME-Zarr
  hcsflow run count.py scans/ --out results/ \\
      --layout '(?P<well>[A-P]\\d\\d)-(?P<site>\\d+)-(?P<channel>\\d+)\\.tif'
  hcsflow run count.py plate/ --out results/ --resume         # after an interruption
  hcsflow run count.py s3://lab/plate1/ --out s3://lab/runs/plate1 \\
      --scheduler tcp://scheduler:8786

exit status: 0 every well succeeded, 1 some wells failed (the others are written),
2 bad usage or input, 130/143 interrupted (see docs/cli.md)."""


def register(subparsers: Any) -> None:
    """Add ``hcsflow run``."""
    p = add_command(
        subparsers,
        "run",
        summary="run a pipeline file over a plate",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    p.add_argument("pipeline", metavar="PIPELINE.py", help="the pipeline file")
    p.add_argument(
        "plate",
        type=path_or_url,
        metavar="PLATE",
        help="plate directory or URL (s3://bucket/plate/, gs://...): images, or an OME-Zarr plate",
    )
    p.add_argument(
        "--out",
        required=True,
        type=path_or_url,
        metavar="DIR",
        help="output directory or URL (s3://bucket/prefix, gs://...) (required)",
    )
    p.add_argument(
        "--backend",
        choices=["zarr", "disk"],
        default=None,
        help="where images are written: an OME-Zarr plate (zarr) or TIFF files (disk) "
        f"(default: the pipeline file's config.vfs if it sets one, else {DEFAULT_BACKEND})",
    )
    add_parallel_options(p, workers=None, executor=None, inherited="the pipeline file's config")
    p.add_argument(
        "--format",
        default=None,
        metavar="NAME",
        help="plate format: imagexpress, harmony, cellvoyager, ome-tiff, ome-zarr, files "
        "(or a registered reader) (default: detected)",
    )
    p.add_argument(
        "--layout",
        default=None,
        metavar="NAME|REGEX",
        help="file naming of a plain folder of images: imagexpress, operaphenix, or a "
        "regular expression with named groups (well, site, channel, z, t) (default: "
        "detected from the file names)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse a plate with image files its reader cannot place (otherwise they are "
        "named and the run goes on without them)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the run in --out (finished or interrupted) and start over",
    )
    p.add_argument(
        "--fail-fast",
        action="store_true",
        help="stop at the first failing well (the wells committed so far are kept)",
    )
    p.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="address of a running Dask scheduler (tcp://host:8786); implies --executor dask",
    )
    add_storage_options(p, "URL plates and outputs")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in --out: committed wells are verified and kept",
    )
    p.add_argument(
        "--verify",
        choices=("full", "quick"),
        default=None,
        help="how --resume (or --rerun-failed) checks committed wells before keeping "
        "them: full (default) "
        "reads every file and compares its sha256; quick compares size, modification "
        "time and inode (an object's ETag) and reads only the files that changed",
    )
    p.add_argument(
        "--wells",
        default=None,
        metavar="A01,B03",
        help="run only these wells (comma-separated); others keep what they have",
    )
    p.add_argument(
        "--rerun-failed",
        action="store_true",
        help="run the wells the run in --out recorded as failed again",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=None,
        metavar="N",
        help="times a well is run again after its worker died or its storage failed (default: 2)",
    )
    p.set_defaults(handler=run_command)


def _line_in_file(exc: BaseException, path: Path) -> int | None:
    """The line of ``path`` where ``exc`` was raised (deepest frame in that file)."""
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if Path(frame.filename) == path:
            line = frame.lineno
    return line


def load_pipeline(path: str) -> tuple[list[Any], Any]:
    """Load a pipeline file; an error while executing it names the file and the line."""
    from hcsflow.pipeline import load_pipeline_file

    resolved = Path(path).resolve()
    try:
        return load_pipeline_file(resolved)
    except SyntaxError as exc:
        where = f", line {exc.lineno}" if exc.lineno else ""
        source = "pipeline file" if exc.filename == str(resolved) else "file"
        raise UsageError(
            f"{source} {exc.filename or str(resolved)!r}{where}: SyntaxError: {exc.msg}"
        ) from exc
    except Exception as exc:
        line = _line_in_file(exc, resolved)
        if line is None:  # not raised by the file's own code: the loader's own message
            raise
        reason = describe_error(exc)
        if not reason.startswith(type(exc).__name__):
            reason = f"{type(exc).__name__}: {reason}"
        raise UsageError(f"pipeline file {str(resolved)!r}, line {line}: {reason}") from exc


def materialization_backend(args: argparse.Namespace, config: Any) -> str:
    """``--backend``, else what the pipeline file's ``config.vfs`` says, else zarr."""
    from hcsflow.pipeline import DEFAULTS

    if args.backend is not None:
        return str(args.backend)
    # A config that does not set `vfs` keeps the built-in defaults object itself.
    if config is not None and config.vfs is not DEFAULTS.vfs:
        return str(config.vfs.materialization_backend)
    return DEFAULT_BACKEND


def run_command(args: argparse.Namespace) -> int:
    """Run the pipeline; print a summary, and one line per failed well on stderr.

    An interrupted run raises :class:`~hcsflow.errors.RunInterrupted` (one line, exit
    130 or 143), which :func:`hcsflow.cli._main.main` reports.
    """
    # until the run starts (its own handlers say more), and after it finished
    _interrupt.note("; the run had not started, nothing was written")
    with _interrupt.held():
        from hcsflow.pipeline import GlobalPipelineConfig, VFSConfig, run_pipeline

    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    if args.verify is not None and not (args.resume or args.rerun_failed):
        raise UsageError(
            "--verify says how --resume or --rerun-failed checks the wells a run keeps; "
            "add --resume, or leave --verify out"
        )
    storage_options = parse_storage_options(args.storage_options)
    steps, file_config = load_pipeline(args.pipeline)
    config = file_config or GlobalPipelineConfig()
    changes: dict[str, Any] = {
        "vfs": replace(
            config.vfs or VFSConfig(),
            materialization_backend=materialization_backend(args, file_config),
        )
    }
    if args.workers is not None:
        changes["num_workers"] = args.workers
    if args.executor is not None:
        changes["executor"] = args.executor
    if args.fail_fast:
        changes["fail_fast"] = True
    if args.scheduler is not None:
        changes["scheduler"] = args.scheduler
        changes["executor"] = "dask"
    if args.retries is not None:
        changes["retries"] = args.retries
    if args.format is not None:
        changes["input_format"] = args.format
    if args.strict:
        changes["strict_input"] = True
    config = replace(config, **changes)
    wells = [w.strip() for w in args.wells.split(",") if w.strip()] if args.wells else None
    _interrupt.checkpoint()  # one that the pipeline file's imports swallowed
    t0 = time.perf_counter()
    # the run's own handlers take over while it runs; a signal in the moments around
    # them is held and reported below, with what it then leaves behind
    with _interrupt.held(check=False):
        result = run_pipeline(
            steps,
            args.plate,
            args.out,
            config,
            layout=layout_from(args.layout),
            overwrite=args.overwrite,
            resume=args.resume,
            rerun_failed=args.rerun_failed,
            wells=wells,
            verify=args.verify or "full",
            storage_options=storage_options,
            preload=[str(Path(args.pipeline).resolve())],
        )
    _interrupt.note(f"; the run had finished, the output {result.output_dir} is complete")
    _interrupt.checkpoint()
    elapsed = time.perf_counter() - t0
    n_images = sum(w.images_in for w in result.wells)
    kept = f", {len(result.skipped)} kept from before" if result.skipped else ""
    again = f", {len(result.ran_again)} ran again" if result.ran_again else ""
    print(
        f"{len(result.wells)} wells, {n_images} images in {elapsed:.1f} s "
        f"({n_images / max(elapsed, 1e-9):.1f} images/s); {len(result.failed)} failed"
        f"{again}{kept}"
    )
    for name, path in result.plate_tables.items():
        print(f"  plate table {name}: {result.output_dir.rstrip('/')}/{path}")
    print(f"  manifest: {result.manifest_path}")
    for w in result.ran_again:
        # not a failure, but never silent: a rerun may point at a sick node or disk
        print(f"  well {w.well} ran again after: {'; '.join(w.ran_again_after)}")
    for w in result.failed:
        print(f"hcsflow run: well {w.well} failed: {w.error_type}: {w.error}", file=sys.stderr)
    if result.failed:
        print(f"hcsflow run: tracebacks are in {result.manifest_path}", file=sys.stderr)
        return EXIT_WELLS_FAILED
    return EXIT_OK
