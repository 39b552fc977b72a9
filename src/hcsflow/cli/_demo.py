"""``hcsflow demo``: count nuclei on a synthetic plate whose true counts are known."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hcsflow.cli import _interrupt
from hcsflow.cli._common import (
    EXIT_OK,
    EXIT_WELLS_FAILED,
    add_command,
    add_parallel_options,
    local_path,
)
from hcsflow.errors import RunDirectoryError, UsageError

__all__ = ["register", "demo_pipeline"]

DESCRIPTION = """\
Generate a synthetic plate of fluorescent nuclei whose number per well is known, count
them with the default pipeline (background subtraction, smoothing, counting with
touching nuclei split, measurement) and compare the counts with the truth.

Writes to --out: the images as an OME-Zarr plate (images.zarr, with each field's label
image) or TIFF files (--backend disk), cell_counts.csv, object_measurements.csv,
cell_counts_heatmap.png, demo_ground_truth.csv and manifest.json."""

EPILOG = """\
examples:
  hcsflow demo                                  # 24 wells x 2 sites into ./demo-output
  hcsflow demo --out /tmp/demo --overwrite      # replace a previous demo there
  hcsflow demo --wells 96 --workers 4           # a bigger plate, 4 wells at a time
  hcsflow demo --backend disk --size 256        # TIFF outputs, smaller images"""


def demo_pipeline() -> list[Any]:
    """The default counting pipeline: flatten, smooth, count (splitting touching nuclei),
    measure."""
    from hcsflow.pipeline import FunctionStep

    return [
        FunctionStep(func="subtract_background", sigma=20.0),
        FunctionStep(func="gaussian_filter", sigma=1.0),
        FunctionStep(func="count_cells", min_size=20, split_touching=True, min_distance=4),
        FunctionStep(func="measure_objects"),
    ]


def register(subparsers: Any) -> None:
    """Add ``hcsflow demo``."""
    p = add_command(
        subparsers,
        "demo",
        summary="count nuclei on a generated plate and compare with the true counts",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    p.add_argument(
        "--out", default="demo-output", type=local_path, metavar="DIR", help="output directory"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace a previous run in the output directory"
    )
    p.add_argument("--wells", type=int, default=24, metavar="N", help="number of wells (1-96)")
    p.add_argument("--sites", type=int, default=2, metavar="N", help="sites (fields) per well")
    p.add_argument(
        "--size", type=int, default=384, metavar="PX", help="image width and height in pixels"
    )
    add_parallel_options(p, workers=2, executor="processes")
    p.add_argument(
        "--backend",
        choices=["zarr", "disk"],
        default="zarr",
        help="images as an OME-Zarr plate (zarr) or TIFF files (disk)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed of the synthetic plate")
    p.set_defaults(handler=run_demo)


def _check_arguments(args: argparse.Namespace) -> Path:
    """Refuse bad options and an unusable --out before anything is generated."""
    if not 1 <= args.wells <= 96:
        raise UsageError(f"--wells must be between 1 and 96, got {args.wells}")
    if args.sites < 1:
        raise UsageError(f"--sites must be at least 1, got {args.sites}")
    if args.size < 64:
        raise UsageError(f"--size must be at least 64 pixels, got {args.size}")
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    out = Path(args.out).absolute()
    # The same rules the run applies when it publishes, checked now so that a refusal
    # comes at once, not after the plate was generated and processed.
    if out.exists() and not out.is_dir():
        raise RunDirectoryError(f"output path {str(out)!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        finished = (out / "manifest.json").is_file()
        interrupted = (out / ".hcsflow" / "run.json").is_file()
        if not (finished or interrupted):
            raise RunDirectoryError(
                f"output directory {str(out)!r} is not empty and holds no hcsflow run; "
                "choose another --out (hcsflow never deletes files it did not write)"
            )
        if not args.overwrite:
            what = "a previous run" if finished else "an interrupted run"
            raise RunDirectoryError(
                f"output directory {str(out)!r} holds {what}; pass --overwrite to "
                "replace it, or choose another --out"
            )
    return out


def run_demo(args: argparse.Namespace) -> int:
    """Generate, count, compare; print the per-well table and where the outputs are."""
    out = _check_arguments(args)

    with _interrupt.held():
        from hcsflow.cli._heatmap import plate_heatmap
        from hcsflow.pipeline import GlobalPipelineConfig, VFSConfig, run_pipeline
        from hcsflow.testing import make_plate

    n_images = args.wells * args.sites
    print(
        f"generating a synthetic plate: {args.wells} wells x {args.sites} sites, "
        f"{args.size}x{args.size} uint16, {n_images} images ...",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="hcsflow-demo-plate-") as tmp:
        t0 = time.perf_counter()
        area = (args.size / 384) ** 2
        plate = make_plate(
            Path(tmp) / "plate",
            args.wells,
            sites=args.sites,
            size=args.size,
            seed=args.seed,
            touching=0.3,
            # same density at every image size: 10-60 nuclei per 384 x 384 site
            min_cells=max(1, round(10 * area)),
            max_cells=max(2, round(60 * area)),
        )
        print(f"generated in {time.perf_counter() - t0:.1f} s; counting ...", flush=True)
        config = GlobalPipelineConfig(
            num_workers=args.workers,
            executor=args.executor,
            vfs=VFSConfig(materialization_backend=args.backend),
        )
        counts: dict[str, int] = {}

        def add_demo_files(staging: Path, results: list[Any], tables: dict[str, str]) -> None:
            import pandas as pd

            table = pd.read_csv(staging / tables["cell_counts"])
            for well, n in table.groupby("well")["cell_count"].sum().items():
                counts[str(well)] = int(n)
            rows = [
                {
                    "well": w,
                    "true_count": plate.true_counts[w],
                    "counted": counts.get(w),
                    "error": (counts[w] - plate.true_counts[w]) if w in counts else None,
                }
                for w in plate.true_counts
            ]
            pd.DataFrame(rows).to_csv(staging / "demo_ground_truth.csv", index=False)
            plate_heatmap(
                counts,
                staging / "cell_counts_heatmap.png",
                title="Nuclei counted per well (hcsflow demo)",
            )

        t1 = time.perf_counter()
        _interrupt.note(f"; the run had not started, nothing was written to {out}")
        with _interrupt.held(check=False):
            result = run_pipeline(
                demo_pipeline(),
                plate.root,
                out,
                config,
                overwrite=args.overwrite,
                post_run=add_demo_files,
            )
        _interrupt.note(f"; the run had finished, the output {result.output_dir} is complete")
        _interrupt.checkpoint()
        elapsed = time.perf_counter() - t1
    _report(args, plate.true_counts, counts, elapsed, result.output_dir, n_images)
    for bad in result.failed:
        print(f"hcsflow demo: well {bad.well} failed: {bad.error}", file=sys.stderr)
    return EXIT_WELLS_FAILED if result.failed else EXIT_OK


def _report(
    args: argparse.Namespace,
    truth: dict[str, int],
    counts: dict[str, int],
    elapsed: float,
    output_dir: str,
    n_images: int,
) -> None:
    errors = []
    print(f"\n{'well':<6}{'true':>7}{'counted':>9}{'error':>7}")
    for w, true in truth.items():
        got = counts.get(w)
        if got is None:
            print(f"{w:<6}{true:>7}{'failed':>9}")
            continue
        errors.append(abs(got - true))
        print(f"{w:<6}{true:>7}{got:>9}{got - true:>+7}")
    mae = sum(errors) / len(errors) if errors else float("nan")
    total_true = sum(truth.values())
    mbytes = n_images * args.size * args.size * 2 / 1e6
    print(
        f"\nmean absolute error: {mae:.2f} cells per well "
        f"({100 * mae * len(truth) / max(total_true, 1):.2f}% of {total_true} nuclei)"
    )
    print(
        f"throughput: {n_images / elapsed:.1f} images/s, {args.wells / elapsed:.2f} wells/s, "
        f"{mbytes / elapsed:.1f} MB/s ({elapsed:.1f} s, {args.workers} "
        f"worker{'s' if args.workers != 1 else ''}, executor {args.executor!r})"
    )
    print(f"\noutputs in {output_dir}:")
    images = (
        "images.zarr (OME-Zarr plate, labels/masks)"
        if args.backend == "zarr"
        else "images/ (TIFF per well)"
    )
    for line in (
        images,
        "cell_counts.csv (per site)",
        "object_measurements.csv (per nucleus)",
        "cell_counts_heatmap.png",
        "demo_ground_truth.csv",
        "manifest.json",
    ):
        print(f"  {line}")
