"""Running a compiled pipeline over a plate: executors, output directory, manifest.

Scheduling is one loop over a :class:`concurrent.futures.Executor`: in-process
(synchronous, deterministic: tests), a thread pool, a process pool (forkserver; spawn on
Windows) or a Dask ``distributed`` client's executor.  The run writes into a staging
directory next to the output directory and moves it into place at the end, so a crash
never leaves a torn output and never destroys a previous run that was not explicitly
overwritten.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import hashlib
import importlib.util
import json
import multiprocessing
import os
import platform
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hcsflow import __version__
from hcsflow.errors import PipelineError, RunDirectoryError, StepExecutionError
from hcsflow.pipeline._compiler import RunPlan, compile_pipeline, describe_steps
from hcsflow.pipeline._config import (
    GlobalPipelineConfig,
    PipelineConfig,
    config_to_dict,
    resolve_config,
)
from hcsflow.pipeline._execute import WellResult, execute_well
from hcsflow.pipeline._plate import PlateIndex
from hcsflow.pipeline._step import FunctionStep, Pipeline
from hcsflow.storage.plate import PlateLayout

__all__ = [
    "InProcessExecutor",
    "RunResult",
    "run_pipeline",
    "make_executor",
    "load_pipeline_file",
    "MANIFEST_NAME",
    "WORKER_PRELOAD",
    "process_start_method",
    "warm_up_workers",
]

MANIFEST_NAME = "manifest.json"


class InProcessExecutor(cf.Executor):
    """A :class:`concurrent.futures.Executor` that runs each task at submission, in order."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        """Run ``fn`` now and return a completed future."""
        fut: cf.Future[Any] = cf.Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # the future carries it to the caller
            fut.set_exception(exc)
        return fut


# --------------------------------------------------------------------------- pipeline files


def _module_name_for(path: Path) -> str:
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    return f"hcsflow_pipeline_{digest}"


def load_pipeline_file(
    path: str | os.PathLike[str],
) -> tuple[list[FunctionStep], GlobalPipelineConfig | None]:
    """Execute a pipeline file; return its ``pipeline`` list and optional ``config``.

    The file is imported as a module under a name derived from its absolute path, so
    functions it defines pickle by reference and worker processes (which import the
    same file first) find them.
    """
    p = Path(path).resolve()
    if not p.is_file():
        raise PipelineError(f"pipeline file {str(p)!r} does not exist")
    module = _import_file(p)
    steps = getattr(module, "pipeline", None)
    if isinstance(steps, Pipeline):
        steps = steps.steps
    if not isinstance(steps, list) or not all(isinstance(s, FunctionStep) for s in steps):
        raise PipelineError(
            f"pipeline file {str(p)!r} must define `pipeline = [FunctionStep(...), ...]`"
        )
    config = getattr(module, "config", None)
    if config is not None and not isinstance(config, GlobalPipelineConfig):
        raise PipelineError(
            f"pipeline file {str(p)!r}: `config` must be a GlobalPipelineConfig, got "
            f"{type(config).__name__}"
        )
    return steps, config


def _import_file(p: Path) -> Any:
    name = _module_name_for(p)
    existing = sys.modules.get(name)
    if existing is not None:
        return existing
    spec = importlib.util.spec_from_file_location(name, p)
    if spec is None or spec.loader is None:
        raise PipelineError(f"cannot import pipeline file {str(p)!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _worker_init(preload: Sequence[str]) -> None:
    for f in preload:
        _import_file(Path(f))


# Imported once by the fork server; every worker forked from it starts with them loaded
# instead of importing them again (about a second per spawned worker).  A module that is
# not installed is skipped by the fork server and imported (or reported) by the worker
# that needs it, as under spawn.
WORKER_PRELOAD: tuple[str, ...] = (
    "numpy",
    "scipy.ndimage",
    "pandas",
    "tifffile",
    "zarr",
    "skimage.measure",
    "skimage.feature",
    "skimage.filters",
    "skimage.morphology",
    "skimage.segmentation",
    "hcsflow.functions",
    "hcsflow.pipeline._execute",
)


def process_start_method() -> str:
    """The start method of ``processes`` workers: ``forkserver`` where the platform has
    it (Linux, macOS), else ``spawn`` (Windows).  Both start workers from a fresh
    interpreter, never a copy of the calling process."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _process_context() -> Any:
    method = process_start_method()
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        # "__main__" keeps the default behaviour: the fork server imports the main module
        # like a spawned worker would, so functions defined there are found
        ctx.set_forkserver_preload(["__main__", *WORKER_PRELOAD])
    return ctx


def warm_up_workers() -> None:
    """Start the fork server now (its imports run in the background); no-op under spawn.

    ``run_pipeline`` calls it before scanning the plate, so the workers' imports overlap
    with the plate scan and compilation.  The fork server lives as long as this process:
    later runs start their workers in milliseconds.
    """
    ctx = _process_context()
    if ctx.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


# --------------------------------------------------------------------------- executors


def make_executor(
    kind: str, num_workers: int, *, preload: Sequence[str] = ()
) -> tuple[cf.Executor, Callable[[], None]]:
    """An executor of ``kind`` and a function that shuts it down."""
    # One worker runs in this process: a pool of one only adds start-up and pickling.
    if kind == "inprocess" or (kind in ("threads", "processes") and num_workers == 1):
        ex: cf.Executor = InProcessExecutor()
        return ex, lambda: ex.shutdown()
    if kind == "threads":
        tp = cf.ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="hcsflow-well")
        return tp, lambda: tp.shutdown(wait=True, cancel_futures=True)
    if kind == "processes":
        pp = cf.ProcessPoolExecutor(
            max_workers=num_workers,
            mp_context=_process_context(),
            initializer=_worker_init,
            initargs=(tuple(preload),),
        )
        return pp, lambda: pp.shutdown(wait=True, cancel_futures=True)
    if kind == "dask":
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise PipelineError(
                "the dask executor needs dask.distributed: pip install 'hcsflow[dask]'"
            ) from None
        # dashboard on a free port: the default fixed port may be held by another cluster
        cluster = LocalCluster(
            n_workers=num_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address="127.0.0.1:0",
        )
        client = Client(cluster)
        if preload:
            client.run(_worker_init, tuple(preload))
        dex = client.get_executor()

        def close() -> None:
            client.close()
            cluster.close()

        return dex, close
    raise PipelineError(f"unknown executor {kind!r} (inprocess, threads, processes, dask)")


# --------------------------------------------------------------------------- output directory


def _is_previous_run(path: Path) -> bool:
    return (path / MANIFEST_NAME).is_file()


def _prepare_output(out: Path, overwrite: bool) -> Path:
    if out.exists() and not out.is_dir():
        raise RunDirectoryError(f"output path {str(out)!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not _is_previous_run(out):
            raise RunDirectoryError(
                f"output directory {str(out)!r} is not empty and holds no hcsflow run; "
                f"choose another directory (hcsflow never deletes files it did not write)"
            )
        if not overwrite:
            raise RunDirectoryError(
                f"output directory {str(out)!r} holds a previous run; pass overwrite=True "
                f"(--overwrite) to replace it, or choose another directory"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.hcsflow-partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    return staging


def _publish(staging: Path, out: Path) -> None:
    """Move the finished staging directory to ``out``; the old run goes only after."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.hcsflow-old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old)


# --------------------------------------------------------------------------- results


@dataclass
class RunResult:
    """What a run produced: per-well results, plate tables, the manifest path."""

    output_dir: str
    manifest_path: str
    wells: list[WellResult]
    plate_tables: dict[str, str]
    duration_s: float
    manifest: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def failed(self) -> list[WellResult]:
        """Wells that failed."""
        return [w for w in self.wells if w.status != "ok"]

    @property
    def ok(self) -> bool:
        """Whether every well succeeded."""
        return not self.failed


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@functools.cache
def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"hcsflow": __version__, "python": platform.python_version()}
    for dist in ("numpy", "scipy", "scikit-image", "tifffile", "zarr", "pandas"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _relative(path: str, staging: Path) -> str:
    p = Path(path)
    try:
        return p.relative_to(staging).as_posix()
    except ValueError:
        return path


def _consolidate(results: list[WellResult], staging: Path) -> dict[str, str]:
    """Concatenate per-well tables into one plate CSV per special output key.

    Rows come in plate order: wells as the plate lists them, then each well's groups,
    then each table's own rows.  Tables with identical headers (the usual case: one
    function made them all) are joined as text; otherwise pandas aligns the columns.
    Only CSV files on disk are joined: a table a materializer wrote into a zarr hierarchy
    (a zarr group named ``*.csv``) stays per well.
    """
    by_key: dict[str, list[Path]] = {}
    for r in results:  # results are in plate order
        for o in r.outputs:
            path = str(o.get("path", ""))
            if o.get("kind") == "special_output" and path.endswith(".csv") and Path(path).is_file():
                by_key.setdefault(o["key"], []).append(Path(path))
    plate: dict[str, str] = {}
    for key, files in sorted(by_key.items()):
        texts = [f.read_text() for f in files]
        headers = {t.split("\n", 1)[0] for t in texts}
        if len(headers) == 1:
            header = headers.pop()
            body = "".join(t.split("\n", 1)[1] if "\n" in t else "" for t in texts)
            text = f"{header}\n{body}"
        else:
            import io

            import pandas as pd

            frames = [pd.read_csv(io.StringIO(t)) for t in texts]
            text = pd.concat(frames, ignore_index=True).to_csv(index=False)
        target = staging / f"{key}.csv"
        _atomic_write_text(target, text)
        plate[key] = target.name
    return plate


def _atomic_write_text(target: Path, text: str) -> None:
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, target)


def _progress(total: int, enabled: bool | None) -> Any:
    from tqdm import tqdm

    show = sys.stderr.isatty() if enabled is None else enabled
    return tqdm(total=total, unit="well", disable=not show, desc="wells", leave=False)


def run_pipeline(
    pipeline: Pipeline | Sequence[FunctionStep],
    plate: str | os.PathLike[str] | PlateIndex,
    output_dir: str | os.PathLike[str],
    config: GlobalPipelineConfig | None = None,
    *,
    pipeline_config: PipelineConfig | None = None,
    layout: PlateLayout | None = None,
    executor: str | cf.Executor | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    preload: Sequence[str] = (),
    on_well_done: Callable[[WellResult], None] | None = None,
    post_run: Callable[[Path, list[WellResult], dict[str, str]], None] | None = None,
) -> RunResult:
    """Compile and run ``pipeline`` over every well of ``plate``; write into ``output_dir``.

    ``executor`` is ``"inprocess"``, ``"threads"``, ``"processes"``, ``"dask"`` or any
    :class:`concurrent.futures.Executor` (default: the configuration's ``executor``).
    Raises :class:`CompilationError` before any work, :class:`RunDirectoryError` when
    ``output_dir`` holds a previous run and ``overwrite`` is false, and (with
    ``fail_fast``) :class:`StepExecutionError` at the first failing well, leaving any
    previous run in place.  Otherwise failing wells are reported in the result and the
    manifest.  ``post_run(staging_dir, well_results, plate_tables)`` may add files to the
    run before its manifest is written (they are checksummed with the rest).
    """
    t_start = time.time()
    t0 = time.perf_counter()
    global_config = config if config is not None else GlobalPipelineConfig()
    out = Path(output_dir).absolute()
    if not isinstance(plate, PlateIndex) and "://" not in str(plate):
        plate_dir = Path(plate).absolute()
        if out == plate_dir or plate_dir in out.parents:
            raise RunDirectoryError(
                f"output directory {str(out)!r} is inside the plate directory "
                f"{str(plate_dir)!r}; its files would be read as plate images next time"
            )
        plate = str(plate_dir)
    staging = _prepare_output(out, overwrite)
    try:
        if not isinstance(executor, cf.Executor):
            run_cfg = resolve_config(global_config, pipeline_config)
            kind = executor or str(run_cfg.executor)
            if kind == "processes" and int(run_cfg.num_workers or 1) > 1:
                warm_up_workers()  # its imports overlap with the plate scan below
        plan = compile_pipeline(
            pipeline,
            plate if isinstance(plate, PlateIndex) else str(plate),
            str(staging),
            global_config,
            pipeline_config=pipeline_config,
            layout=layout,
        )
        results = _execute(plan, executor, preload, progress, on_well_done)
        executor_info = _describe_executor(plan, executor)
        plate_tables = _consolidate(results, staging)
        if post_run is not None:
            post_run(staging, results, plate_tables)
        zarr_stores = {
            o["path"]
            for r in results
            for o in r.outputs
            if o.get("kind") in ("images", "checkpoint") and o.get("backend") == "zarr"
        }
        if zarr_stores:
            from hcsflow.pipeline._zarr_out import finalize_plates

            finalize_plates(zarr_stores)
        manifest = _manifest(
            plan, results, plate_tables, staging, out, t_start, time.perf_counter() - t0
        )
        manifest["executor"] = executor_info
        _atomic_write_text(staging / MANIFEST_NAME, json.dumps(manifest, indent=2, default=str))
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for r in results:
        r.outputs = [{**o, "path": _relative(str(o["path"]), staging)} for o in r.outputs]
    return RunResult(
        output_dir=str(out),
        manifest_path=str(out / MANIFEST_NAME),
        wells=results,
        plate_tables=plate_tables,
        duration_s=time.perf_counter() - t0,
        manifest=manifest,
    )


def _describe_executor(plan: RunPlan, executor: str | cf.Executor | None) -> dict[str, Any]:
    """How the wells ran, for the manifest (the start method matters for reproducing)."""
    workers = int(plan.config.num_workers or 1)
    if isinstance(executor, cf.Executor):
        return {"kind": type(executor).__name__, "workers": workers, "start_method": None}
    kind = executor or str(plan.config.executor)
    in_process = kind == "inprocess" or (kind in ("threads", "processes") and workers == 1)
    method = process_start_method() if kind == "processes" and not in_process else None
    return {
        "kind": "inprocess" if in_process else kind,
        "workers": 1 if in_process else workers,
        "start_method": method,
    }


def _execute(
    plan: RunPlan,
    executor: str | cf.Executor | None,
    preload: Sequence[str],
    progress: bool | None,
    on_well_done: Callable[[WellResult], None] | None,
) -> list[WellResult]:
    cfg = plan.config
    workers = int(cfg.num_workers or 1)
    if isinstance(executor, cf.Executor):
        ex, close = executor, (lambda: None)
    else:
        ex, close = make_executor(executor or str(cfg.executor), workers, preload=preload)
    results: dict[str, WellResult] = {}
    bar = _progress(len(plan.wells), progress)
    # A bounded window of submitted wells: the queue never holds the whole plate, and
    # fail_fast stops submitting (an in-process executor runs each well at submission).
    window = 1 if isinstance(ex, InProcessExecutor) else 2 * workers
    pending = iter(plan.wells)
    inflight: dict[cf.Future[WellResult], str] = {}

    def fill() -> None:
        while len(inflight) < window:
            well_plan = next(pending, None)
            if well_plan is None:
                return
            inflight[ex.submit(execute_well, well_plan)] = well_plan.well

    try:
        fill()
        while inflight:
            done, _ = cf.wait(list(inflight), return_when=cf.FIRST_COMPLETED)
            for fut in done:
                well = inflight.pop(fut)
                result = fut.result()
                results[well] = result
                bar.update(1)
                if on_well_done is not None:
                    on_well_done(result)
                if result.status != "ok" and cfg.fail_fast:
                    for other in inflight:
                        other.cancel()
                    raise StepExecutionError(
                        f"well {well} failed (fail_fast): {result.error_type}: {result.error}\n"
                        f"{result.traceback}"
                    )
            fill()
    finally:
        bar.close()
        close()
    return [results[w.well] for w in plan.wells]


def _manifest(
    plan: RunPlan,
    results: list[WellResult],
    plate_tables: dict[str, str],
    staging: Path,
    out: Path,
    t_start: float,
    duration: float,
) -> dict[str, Any]:
    paths = sorted(p for p in staging.rglob("*") if p.is_file())
    # hashlib releases the GIL on large buffers: hash files in parallel threads
    with cf.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        digests = list(pool.map(_sha256, paths))
    files = {
        p.relative_to(staging).as_posix(): {"bytes": p.stat().st_size, "sha256": d}
        for p, d in zip(paths, digests, strict=True)
    }
    wells: dict[str, Any] = {}
    for r in results:
        d = r.to_dict()
        outputs = []
        for o in r.outputs:
            rel = _relative(str(o["path"]), staging)
            entry = {**o, "path": rel}
            if rel in files:  # a file (folders such as images/ are listed under "files")
                entry["sha256"] = files[rel]["sha256"]
            outputs.append(entry)
        d["outputs"] = outputs
        wells[r.well] = d
    n_ok = sum(r.status == "ok" for r in results)
    images = sum(r.images_in for r in results)
    return {
        "hcsflow_manifest": 1,
        "output_dir": str(out),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_start)),
        "duration_s": duration,
        "plate": plan.plate.summary(),
        "pipeline": describe_steps(plan.steps, plan.output_dir),
        "config": config_to_dict(plan.config),
        "versions": dict(_versions()),
        "summary": {
            "wells": len(results),
            "wells_ok": n_ok,
            "wells_failed": len(results) - n_ok,
            "images_in": images,
            "images_per_s": images / duration if duration > 0 else None,
            "conversion_bytes": sum(r.conversion_bytes for r in results),
        },
        "plate_tables": plate_tables,
        "wells": wells,
        "files": files,
    }
