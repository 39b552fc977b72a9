"""The ``hcsflow`` command: ``demo``, ``run``, ``info``, ``validate`` and ``fsck``."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hcsflow.cli._fsck import add_fsck_parser
from hcsflow.errors import HcsflowError

__all__ = ["main", "build_parser", "demo_pipeline"]


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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``hcsflow`` command."""
    p = argparse.ArgumentParser(
        prog="hcsflow",
        description="Run per-well image-processing pipelines over high-content-screening plates.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser(
        "demo",
        help="generate a synthetic plate with known cell counts, "
        "count the cells and compare with the truth",
    )
    d.add_argument("--out", default="demo-output", help="output directory (default: %(default)s)")
    d.add_argument(
        "--overwrite", action="store_true", help="replace a previous run in the output directory"
    )
    d.add_argument("--wells", type=int, default=24, help="number of wells (default: %(default)s)")
    d.add_argument("--sites", type=int, default=2, help="sites per well (default: %(default)s)")
    d.add_argument(
        "--size",
        type=int,
        default=384,
        help="image width and height in pixels (default: %(default)s)",
    )
    d.add_argument(
        "--workers", type=int, default=2, help="wells processed in parallel (default: %(default)s)"
    )
    d.add_argument(
        "--executor",
        choices=["inprocess", "threads", "processes", "dask"],
        default="processes",
        help="how wells run in parallel (default: %(default)s)",
    )
    d.add_argument(
        "--backend",
        choices=["disk", "zarr"],
        default="zarr",
        help="images as OME-Zarr (zarr, default) or TIFF files (disk)",
    )
    d.add_argument("--seed", type=int, default=0, help="random seed of the synthetic plate")

    r = sub.add_parser("run", help="run a pipeline file over a plate")
    r.add_argument(
        "pipeline",
        help="Python file defining `pipeline = [FunctionStep(...), ...]` "
        "(and optionally `config = GlobalPipelineConfig(...)`)",
    )
    r.add_argument(
        "plate",
        help="plate directory or URL (s3://bucket/plate/, gs://...; ImageXpress or Opera "
        "Phenix file names, or an OME-Zarr plate)",
    )
    r.add_argument(
        "--out", required=True, help="output directory or URL (s3://bucket/prefix, gs://...)"
    )
    r.add_argument(
        "--backend",
        choices=["disk", "zarr"],
        default=None,
        help="where images are materialized (default: the pipeline's config, else disk)",
    )
    r.add_argument("--workers", type=int, default=None, help="wells processed in parallel")
    r.add_argument(
        "--executor",
        choices=["inprocess", "threads", "processes", "dask"],
        default=None,
        help="how wells run in parallel (default: processes)",
    )
    r.add_argument(
        "--format",
        default=None,
        metavar="NAME",
        help="plate format: imagexpress, harmony, cellvoyager, ome-tiff, ome-zarr, files "
        "(or a registered reader); default: detected",
    )
    r.add_argument(
        "--layout",
        default=None,
        help="file naming of a plain folder of images: imagexpress, operaphenix, or a "
        "regular expression with named groups (well, site, channel, z, t); default: detected",
    )
    r.add_argument(
        "--strict",
        action="store_true",
        help="refuse a plate with image files its reader cannot place (default: name them "
        "and run without them)",
    )
    r.add_argument(
        "--overwrite", action="store_true", help="replace a previous run in the output directory"
    )
    r.add_argument(
        "--fail-fast",
        action="store_true",
        help="stop at the first failing well (the wells committed so far are kept)",
    )
    r.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="address of a running Dask scheduler (tcp://host:8786); implies --executor dask",
    )
    r.add_argument(
        "--storage-options",
        default=None,
        metavar="JSON",
        help='fsspec options for URL plates and outputs, e.g. \'{"endpoint_url": '
        '"http://minio:9000"}\' (credentials: the environment, as usual)',
    )
    r.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in --out: committed wells are verified and kept",
    )
    r.add_argument(
        "--wells",
        default=None,
        metavar="A01,B03",
        help="run only these wells (comma-separated); others keep what they have",
    )
    r.add_argument(
        "--rerun-failed",
        action="store_true",
        help="run the wells the run in --out recorded as failed again",
    )
    r.add_argument(
        "--retries",
        type=int,
        default=None,
        help="times a well is run again after its worker died (default: 2)",
    )

    i = sub.add_parser(
        "info",
        help="describe a plate (microscope export, OME-Zarr, folder of images) or a run",
    )
    i.add_argument("path")
    i.add_argument(
        "--format", default=None, metavar="NAME", help="plate format (default: detected)"
    )
    i.add_argument(
        "--layout", default=None, help="file naming of a plain folder of images (see run)"
    )
    i.add_argument("--json", action="store_true", help="print JSON")

    v = sub.add_parser("validate", help="check an OME-Zarr plate against the NGFF specification")
    v.add_argument("path")
    v.add_argument("--deep", action="store_true", help="also decode every chunk (slow)")
    add_fsck_parser(sub)
    from hcsflow.cli._functions import add_functions_parser

    add_functions_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hcsflow`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if hasattr(args, "handler"):
            return int(args.handler(args))
        if args.command == "demo":
            return _demo(args)
        if args.command == "run":
            return _run(args)
        if args.command == "info":
            from hcsflow.cli._info import info_command

            return info_command(args)
        return _validate(args)
    except HcsflowError as exc:
        print(f"hcsflow {args.command}: error: {exc}", file=sys.stderr)
        return 2


# --------------------------------------------------------------------------- demo


def _demo(args: argparse.Namespace) -> int:
    from hcsflow.cli._heatmap import plate_heatmap
    from hcsflow.cli._synthetic import make_synthetic_plate
    from hcsflow.pipeline import GlobalPipelineConfig, VFSConfig, run_pipeline

    if args.wells < 1 or args.wells > 96:
        print("hcsflow demo: --wells must be between 1 and 96", file=sys.stderr)
        return 2
    out = Path(args.out).absolute()
    with tempfile.TemporaryDirectory(prefix="hcsflow-demo-plate-") as tmp:
        t0 = time.perf_counter()
        area = (args.size / 384) ** 2
        plate = make_synthetic_plate(
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
        t_gen = time.perf_counter() - t0
        n_images = args.wells * args.sites
        print(
            f"synthetic plate: {args.wells} wells x {args.sites} sites, "
            f"{args.size}x{args.size} uint16, {n_images} images "
            f"(generated in {t_gen:.1f} s)"
        )
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
        result = run_pipeline(
            demo_pipeline(),
            plate.root,
            out,
            config,
            overwrite=args.overwrite,
            post_run=add_demo_files,
        )
        elapsed = time.perf_counter() - t1
    errors = []
    print(f"\n{'well':<6}{'true':>7}{'counted':>9}{'error':>7}")
    for w, true in plate.true_counts.items():
        got = counts.get(w)
        if got is None:
            print(f"{w:<6}{true:>7}{'failed':>9}")
            continue
        errors.append(abs(got - true))
        print(f"{w:<6}{true:>7}{got:>9}{got - true:>+7}")
    failed = result.failed
    mae = sum(errors) / len(errors) if errors else float("nan")
    total_true = sum(plate.true_counts.values())
    mbytes = n_images * args.size * args.size * 2 / 1e6
    print(
        f"\nmean absolute error: {mae:.2f} cells per well "
        f"({100 * mae * len(plate.true_counts) / max(total_true, 1):.2f}% of "
        f"{total_true} nuclei)"
    )
    print(
        f"throughput: {n_images / elapsed:.1f} images/s, {args.wells / elapsed:.2f} wells/s, "
        f"{mbytes / elapsed:.1f} MB/s ({elapsed:.1f} s, {args.workers} "
        f"worker{'s' if args.workers != 1 else ''}, executor {args.executor!r})"
    )
    print(f"\noutputs in {result.output_dir}:")
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
    if failed:
        for bad in failed:
            print(f"well {bad.well} failed: {bad.error_type}: {bad.error}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- run


def _layout(spec: str | None) -> Any:
    from hcsflow.pipeline import ImageXpressLayout, OperaPhenixLayout, RegexLayout

    if spec is None:
        return None
    named = {"imagexpress": ImageXpressLayout, "operaphenix": OperaPhenixLayout}
    if spec.lower() in named:
        return named[spec.lower()]()
    return RegexLayout(spec)


def _run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from hcsflow.errors import RunInterrupted
    from hcsflow.pipeline import GlobalPipelineConfig, VFSConfig, load_pipeline_file, run_pipeline

    storage_options = None
    if args.storage_options is not None:
        try:
            storage_options = json.loads(args.storage_options)
        except json.JSONDecodeError as exc:
            print(f"hcsflow run: error: --storage-options is not JSON: {exc}", file=sys.stderr)
            return 2
        if not isinstance(storage_options, dict):
            print("hcsflow run: error: --storage-options must be a JSON object", file=sys.stderr)
            return 2

    steps, config = load_pipeline_file(args.pipeline)
    config = config or GlobalPipelineConfig()
    changes: dict[str, Any] = {}
    if args.workers is not None:
        changes["num_workers"] = args.workers
    if args.executor is not None:
        changes["executor"] = args.executor
    if args.fail_fast:
        changes["fail_fast"] = True
    if args.format is not None:
        changes["input_format"] = args.format
    if args.strict:
        changes["strict_input"] = True
    if args.scheduler is not None:
        changes["scheduler"] = args.scheduler
        changes["executor"] = "dask"
    if args.retries is not None:
        changes["retries"] = args.retries
    if args.backend is not None:
        changes["vfs"] = replace(config.vfs or VFSConfig(), materialization_backend=args.backend)
    config = replace(config, **changes)
    t0 = time.perf_counter()
    wells = [w.strip() for w in args.wells.split(",") if w.strip()] if args.wells else None
    try:
        result = run_pipeline(
            steps,
            args.plate,
            args.out,
            config,
            layout=_layout(args.layout),
            overwrite=args.overwrite,
            resume=args.resume,
            rerun_failed=args.rerun_failed,
            wells=wells,
            storage_options=storage_options,
            preload=[str(Path(args.pipeline).resolve())],
        )
    except RunInterrupted as exc:
        print(f"hcsflow run: {exc}", file=sys.stderr)
        return exc.exit_code
    elapsed = time.perf_counter() - t0
    n_images = sum(w.images_in for w in result.wells)
    kept = f", {len(result.skipped)} kept from before" if result.skipped else ""
    print(
        f"{len(result.wells)} wells, {n_images} images in {elapsed:.1f} s "
        f"({n_images / elapsed:.1f} images/s); {len(result.failed)} failed{kept}"
    )
    for name, path in result.plate_tables.items():
        print(f"  plate table {name}: {result.output_dir.rstrip('/')}/{path}")
    print(f"  manifest: {result.manifest_path}")
    for w in result.failed:
        print(f"well {w.well} failed: {w.error_type}: {w.error}", file=sys.stderr)
    return 1 if result.failed else 0


# --------------------------------------------------------------------------- validate


def _validate(args: argparse.Namespace) -> int:
    from hcsflow.storage.zarr.validate import validate_plate

    report = validate_plate(str(Path(args.path).absolute()), deep=args.deep)
    print(report.summary())
    return 0 if report.ok else 1
