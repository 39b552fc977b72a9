"""Running a compiled pipeline over a plate: per-well commits, resume, signals, manifest.

Scheduling is one loop over a :class:`concurrent.futures.Executor` (see
:mod:`hcsflow.pipeline._executors`): in-process, threads, local processes or any Dask
cluster.  Each well is written in place and committed by a record written last
(:mod:`hcsflow.pipeline._commit`); plate-level files (OME-Zarr plate metadata,
consolidated tables, ``manifest.json``) are rebuilt from the committed wells at the end.
That works the same on a local disk and on object storage, makes a retried well
idempotent, and makes ``resume=True`` a matter of reading commit records.

Guarantees: a well without a commit record is never presented as done; a run never
deletes files it did not write (a non-empty output that is not an hcsflow run is
refused); a finished run is replaced only with ``overwrite=True``.  SIGINT and SIGTERM
stop the run, stop every worker process, and raise :class:`RunInterrupted` with one line
saying whether the partial output was kept (resumable) or removed.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import io
import os
import platform
import signal
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hcsflow import __version__
from hcsflow.errors import (
    AlreadyExistsError,
    CompilationError,
    ConfigurationError,
    HcsflowError,
    PipelineError,
    RunDirectoryError,
    RunInterrupted,
    StepExecutionError,
)
from hcsflow.pipeline._commit import (
    CONTROL_DIR,
    RUN_RECORD,
    VERIFY_MODES,
    WellTask,
    WrittenWell,
    commit_well,
    fingerprint,
    fingerprint_diff,
    read_record,
    read_records,
    read_run_record,
    record_rel,
    run_well,
    verify_records,
    well_statuses,
    write_json,
    write_well,
    zarr_well_rel,
)
from hcsflow.pipeline._compiler import RunPlan, WellPlan, compile_pipeline, describe_steps
from hcsflow.pipeline._config import (
    GlobalPipelineConfig,
    PipelineConfig,
    config_to_dict,
    normalize_well_filter,
    resolve_config,
)
from hcsflow.pipeline._execute import WellResult
from hcsflow.pipeline._executors import (
    WORKER_PRELOAD,
    InProcessExecutor,
    WellPool,
    give_back_free_memory,
    import_pipeline_file,
    interrupts_held,
    make_executor,
    make_pool,
    process_start_method,
    raise_interrupt,
    stop_fork_server,
    warm_up_workers,
)
from hcsflow.pipeline._output import INPUT_BACKEND, OutputRoot, ordered_map
from hcsflow.pipeline._plate import PlateIndex
from hcsflow.pipeline._step import FunctionStep, Pipeline
from hcsflow.storage import Backend, neutralize_csv_text
from hcsflow.storage._fsspec import as_local_path, is_url
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


# --------------------------------------------------------------------------- pipeline files


def load_pipeline_file(
    path: str | os.PathLike[str],
) -> tuple[list[FunctionStep], GlobalPipelineConfig | None]:
    """Execute a pipeline file; return its ``pipeline`` list and optional ``config``.

    The file is imported as a module under a name derived from its absolute path, so
    functions it defines pickle by reference and worker processes (which import the
    same file first) find them; Dask workers get them by value.
    """
    p = Path(path).resolve()
    if not p.is_file():
        raise PipelineError(f"pipeline file {str(p)!r} does not exist")
    module = import_pipeline_file(p)
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
    skipped: list[str] = field(default_factory=list)
    """Wells already committed by an earlier run into this output (``resume``)."""

    @property
    def failed(self) -> list[WellResult]:
        """Wells that failed (or were not run: ``status`` ``not_run``)."""
        return [w for w in self.wells if w.status == "failed"]

    @property
    def ran_again(self) -> list[WellResult]:
        """Wells this call started more than once (``WellResult.ran_again_after`` says
        why); wells kept from an earlier run (:attr:`skipped`) are not counted."""
        kept = set(self.skipped)
        return [w for w in self.wells if w.ran_again_after and w.well not in kept]

    @property
    def ok(self) -> bool:
        """Whether every well succeeded."""
        return all(w.status == "ok" for w in self.wells)


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


def _progress(total: int, enabled: bool | None) -> Any:
    from tqdm import tqdm

    show = sys.stderr.isatty() if enabled is None else enabled
    return tqdm(total=total, unit="well", disable=not show, desc="wells", leave=False)


# --------------------------------------------------------------------------- signals


class _Interrupt(BaseException):
    """Raised in the main thread by the signal handler; turned into RunInterrupted."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _signals(enabled: bool) -> Iterator[list[int]]:
    """SIGINT and SIGTERM raise :class:`_Interrupt` once; later ones are noted only."""
    received: list[int] = []
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield received
        return
    leaving = False

    def handler(signum: int, frame: Any) -> None:
        received.append(signum)
        if len(received) == 1 and not leaving:
            raise_interrupt(_Interrupt(signum))

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        leaving = True  # one now is only noted: the caller sees it in ``received``
        for s, h in old.items():
            signal.signal(s, h)


def _checkpoint(received: list[int]) -> None:
    """Raise the interruption again if the code it landed in swallowed it.

    The handler raises wherever the main thread is; an extension module that is
    importing another turns the exception into an ``ImportError``, which an optional
    import's ``except ImportError`` then swallows.
    """
    if received:
        raise _Interrupt(received[0])


# --------------------------------------------------------------------------- the plate


def _pipeline_config(
    pipeline: Pipeline | Sequence[FunctionStep], pipeline_config: PipelineConfig | None
) -> PipelineConfig | None:
    """The pipeline-level configuration the compiler applies (a ``Pipeline``'s own)."""
    if pipeline_config is None and isinstance(pipeline, Pipeline):
        return pipeline.config
    return pipeline_config


def _plate_index(
    plate: str,
    layout: PlateLayout | None,
    storage_options: dict[str, Any] | None,
    config: GlobalPipelineConfig,
) -> PlateIndex:
    """Describe a plate given as a URL, with the run's reader choice and strictness.

    Any reader works (vendor exports, OME-TIFF, OME-Zarr, named files): metadata
    files are read here, through fsspec; the planes later, by the workers.  Problems
    are reported like those of a local plate (:class:`CompilationError`).
    """
    from hcsflow.pipeline._plate import read_plate

    try:
        return read_plate(
            plate,
            layout=layout,
            format=config.input_format,
            strict=bool(config.strict_input),
            storage_options=storage_options,
        )
    except HcsflowError as exc:
        raise CompilationError([f"plate {plate}: {exc}"]) from exc


# --------------------------------------------------------------------------- run state


def _state(root: OutputRoot) -> str:
    """``new`` (absent or empty), ``finished``, ``partial`` (interrupted) or ``foreign``."""
    if root.is_file():
        raise RunDirectoryError(f"output path {root.url!r} exists and is not a directory")
    names = root.entries()
    if not names:
        return "new"
    if MANIFEST_NAME in names and root.read_bytes(MANIFEST_NAME) is not None:
        return "finished"
    if CONTROL_DIR in names and read_run_record(root) is not None:
        return "partial"
    return "foreign"


def _has_manifest(root: OutputRoot) -> bool:
    """Whether the output holds a run's manifest (the run finished)."""
    return root.read_bytes(MANIFEST_NAME) is not None


def _count_committed(root: OutputRoot, wells: Sequence[str]) -> int:
    return sum(status == "ok" for status in well_statuses(root, wells).values())


def _prepare(
    root: OutputRoot,
    plan: RunPlan,
    *,
    overwrite: bool,
    resume: bool,
    rerun_failed: bool,
    wells: Sequence[str] | None,
    session: _Session | None = None,
) -> tuple[str, dict[str, Any]]:
    """Check the output against the request; returns (mode, run record).

    ``mode`` is ``new`` or ``resume``.  Refuses foreign directories always, finished or
    interrupted runs without ``overwrite``/``resume``, and a resume whose pipeline,
    configuration or plate differ from the run's.
    """
    state = _state(root)
    continuing = resume or rerun_failed
    fp = fingerprint(plan)
    if state == "foreign":
        raise RunDirectoryError(
            f"output directory {root.url!r} is not empty and holds no hcsflow run; "
            f"choose another directory (hcsflow never deletes files it did not write)"
        )
    fsync = bool(plan.config.vfs and plan.config.vfs.fsync)
    if state in ("finished", "partial") and overwrite:
        if session is not None:
            session.started_new = True  # interrupted from here on: nothing of either is kept
        # the manifest goes first: from then on nothing presents the old run as done
        root.remove_files([MANIFEST_NAME], fsync=fsync)
        root.remove()
        state = "new"
    if state == "new":
        if continuing and not overwrite:
            raise RunDirectoryError(
                f"nothing to resume: {root.url!r} holds no run (drop --resume/--rerun-failed "
                f"to start one)"
            )
        record: dict[str, Any] | None = {
            "hcsflow_run": 1,
            "run_id": uuid.uuid4().hex,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "output": root.url,
            "wells": [w.well for w in plan.wells],
            "fingerprint": fp,
        }
        assert record is not None
        # one small write, not cut in two: an interruption lands before it (nothing was
        # written) or after it (the output is this run's, and is removed)
        with interrupts_held():
            try:
                write_json(root, RUN_RECORD, record, fsync=fsync, create=True)
            except AlreadyExistsError as exc:
                raise RunDirectoryError(
                    f"another run started in {root.url!r} meanwhile; choose another output"
                ) from exc
            if session is not None:
                session.started_new = True
        return "new", record
    record = read_run_record(root)
    if state == "finished" and record is None:
        raise RunDirectoryError(
            f"output directory {root.url!r} holds a run of an earlier hcsflow without commit "
            f"records; pass --overwrite to replace it"
        )
    assert record is not None
    if not continuing and wells is None:
        if state == "finished":
            raise RunDirectoryError(
                f"output directory {root.url!r} holds a previous run; pass overwrite=True "
                f"(--overwrite) to replace it, rerun_failed=True (--rerun-failed) to run its "
                f"failed wells again, or choose another directory"
            )
        done = _count_committed(root, record.get("wells", []))
        raise RunDirectoryError(
            f"output directory {root.url!r} holds an interrupted run ({done} of "
            f"{len(record.get('wells', []))} wells committed); pass resume=True (--resume) "
            f"to continue it or overwrite=True (--overwrite) to start over"
        )
    diff = fingerprint_diff(record.get("fingerprint", {}), fp)
    if diff:
        shown = "; ".join(diff[:5]) + (f"; and {len(diff) - 5} more" if len(diff) > 5 else "")
        raise RunDirectoryError(
            f"cannot resume the run in {root.url!r}: its pipeline or configuration differs "
            f"from this one ({shown}); pass overwrite=True (--overwrite) to start over"
        )
    # wells are about to change: until a new manifest is written, the run is not finished
    if session is not None:
        session.mode = "resume"
    # (durably so: after a power loss the old manifest must not come back)
    root.remove_files([MANIFEST_NAME], fsync=fsync)
    return "resume", record


# --------------------------------------------------------------------------- run_pipeline


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
    resume: bool = False,
    rerun_failed: bool = False,
    wells: Sequence[str] | None = None,
    verify: str = "full",
    storage_options: dict[str, Any] | None = None,
    progress: bool | None = None,
    preload: Sequence[str] = (),
    on_well_done: Callable[[WellResult], None] | None = None,
    post_run: Callable[[Path, list[WellResult], dict[str, str]], None] | None = None,
    handle_signals: bool = True,
) -> RunResult:
    """Compile and run ``pipeline`` over the wells of ``plate``; write into ``output_dir``.

    ``plate`` and ``output_dir`` are local paths or fsspec URLs (``s3://bucket/prefix``);
    ``storage_options`` go to fsspec for both (credentials otherwise come from the
    environment).  ``executor`` is ``"inprocess"``, ``"threads"``, ``"processes"``,
    ``"dask"`` or any :class:`concurrent.futures.Executor` (default: the configuration's
    ``executor``; ``config.scheduler`` names an existing Dask scheduler).

    Each well is committed as soon as it is written.  ``resume=True`` continues an
    interrupted run in the same output (committed wells are verified against their
    checksums and skipped); ``rerun_failed=True`` runs the wells recorded as failed
    again; ``wells=["A01", "B03"]`` runs only those wells (again, if they were committed).
    A resume with a different pipeline, configuration or plate is refused.  ``verify``
    says how committed wells are checked before they are kept: ``"full"`` (the default)
    reads every file and compares its size and sha256 with the commit record;
    ``"quick"`` compares size, modification time, change time and inode (an object's
    ETag) and reads only files whose identity changed (see ``docs/pipeline.md``).

    Raises :class:`CompilationError` before any work, :class:`RunDirectoryError` for an
    output that holds something else, and (with ``fail_fast``) :class:`StepExecutionError`
    at the first failing well.  SIGINT/SIGTERM raise :class:`RunInterrupted` after every
    worker stopped.  ``post_run(output_dir, well_results, plate_tables)`` may add files to
    a local run before its manifest is written (they are checksummed with the rest).
    """
    t_start = time.time()
    t0 = time.perf_counter()
    if verify not in VERIFY_MODES:
        raise ConfigurationError(f"verify must be one of {', '.join(VERIFY_MODES)}, got {verify!r}")
    global_config = config if config is not None else GlobalPipelineConfig()
    root = OutputRoot.of(output_dir, storage_options)
    if post_run is not None and root.remote:
        raise PipelineError("post_run needs a local output directory")
    warm = False
    session: _Session | None = None
    with _signals(handle_signals) as received:
        try:
            plate_arg: str | PlateIndex
            plate_url: str | None = None
            if not isinstance(plate, PlateIndex):
                plate = as_local_path(os.fspath(plate))
            if isinstance(plate, PlateIndex):
                plate_arg = plate
            elif is_url(os.fspath(plate)):
                plate_url = os.fspath(plate).rstrip("/")
                plate_arg = _plate_index(
                    plate_url,
                    layout,
                    storage_options,
                    resolve_config(global_config, _pipeline_config(pipeline, pipeline_config)),
                )
            else:
                plate_dir = Path(plate).absolute()
                if not root.remote:
                    out = Path(root.url)
                    if out == plate_dir or plate_dir in out.parents:
                        raise RunDirectoryError(
                            f"output directory {str(out)!r} is inside the plate directory "
                            f"{str(plate_dir)!r}; its files would be read as plate images "
                            f"next time"
                        )
                plate_arg = str(plate_dir)
            run_cfg = resolve_config(global_config, pipeline_config)
            if not isinstance(executor, cf.Executor):
                kind = executor or str(run_cfg.executor)
                if kind == "processes" and int(run_cfg.num_workers or 1) > 1:
                    warm = True
                    warm_up_workers()  # its imports overlap with the plate scan below
            plan = compile_pipeline(
                pipeline,
                plate_arg,
                root.vroot,
                global_config,
                pipeline_config=pipeline_config,
                layout=layout,
            )
            selected = None if wells is None else set(normalize_well_filter(list(wells)))
            if selected is not None:
                unknown = sorted(selected - {w.well for w in plan.wells})
                if unknown:
                    raise PipelineError(f"wells {unknown} are not wells of this run")
            _checkpoint(received)
            session = _Session(root, plan, executor, preload, progress, on_well_done, plate_url)
            session.storage_options = storage_options
            session.verify = verify
            session.warm = warm
            session.received = received
            mode, record = _prepare(
                root,
                plan,
                overwrite=overwrite,
                resume=resume,
                rerun_failed=rerun_failed,
                wells=wells,
                session=session,
            )
            session.run_id = str(record["run_id"])
            session.mode = mode
            todo, skipped = session.plan_wells(mode, rerun_failed, selected)
            _checkpoint(received)
            results = session.execute(todo)
            try:
                result = session.finish(
                    results, skipped, post_run, t_start, time.perf_counter() - t0, mode
                )
            finally:
                session.pool_closed()  # no worker outlives the run
        except BaseException:
            if not received:
                raise
            # the interruption, or what the code it landed in turned it into; a second
            # signal while the workers are being stopped is only noted
            if session is not None:
                raise session.interrupted(received[0], received) from None
            if warm:
                stop_fork_server()  # no process of the run outlives it
            raise _interruption(
                received[0], "before any well ran; nothing was written", kept=None
            ) from None
    if received:  # it came as the handlers were put back: the run is complete
        raise _interruption(
            received[0], f"after the run finished; the output {root.url} is complete", kept=True
        )
    return result


def _interruption(signum: int, what: str, *, kept: bool | None) -> RunInterrupted:
    """``interrupted by SIGTERM`` + ``what`` (which starts with a space or a ``;``)."""
    name = signal.Signals(signum).name
    sep = "" if what.startswith(";") else " "
    return RunInterrupted(
        f"interrupted by {name}{sep}{what}", signal_name=name, exit_code=128 + signum, kept=kept
    )


# --------------------------------------------------------------------------- a run


class _Session:
    """One invocation of :func:`run_pipeline` on one output."""

    def __init__(
        self,
        root: OutputRoot,
        plan: RunPlan,
        executor: str | cf.Executor | None,
        preload: Sequence[str],
        progress: bool | None,
        on_well_done: Callable[[WellResult], None] | None,
        plate_url: str | None,
    ):
        self.root = root
        self.plan = plan
        self.executor = executor
        self.preload = preload
        self.progress = progress
        self.on_well_done = on_well_done
        self.plate_url = plate_url
        self.storage_options: dict[str, Any] | None = None
        self.verify = "full"
        """How committed wells are verified before a resume keeps them."""
        self.started_new = False
        self.run_id = ""
        self.pool: WellPool | None = None
        self.warm = False
        """Whether this run started the fork server (an interruption stops it)."""
        self.finished = False
        """Whether the manifest is written (the output is complete)."""
        self.mode: str | None = None
        """``new`` or ``resume`` once the output is prepared."""
        self.received: list[int] = []
        self.committed_now = 0
        #: commit records written by this process (others are read back at the end)
        self.records: dict[str, dict[str, Any]] = {}
        self.fsync = bool(plan.config.vfs.fsync) if plan.config.vfs is not None else True
        self.notes: list[str] = []
        self.kept: dict[str, dict[str, Any]] = {}
        """Records of the wells kept as they are (see :meth:`plan_wells`)."""
        self.to_verify: dict[str, dict[str, Any]] = {}
        """Committed wells whose files :meth:`execute` verifies while wells run."""
        self.stores: tuple[str, ...] | None = None
        self._closing: cf.Future[None] | None = None

    # ------------------------------------------------------------------ what to run

    def _zarr_stores(self) -> tuple[str, ...]:
        stores = set()
        for wp in self.plan.wells[:1]:
            if wp.materialization_backend == Backend.ZARR.value:
                stores.add(self.root.rel(wp.images_dir))
        for step in self.plan.steps:
            cp = step.checkpoint
            if cp is not None and cp.backend == Backend.ZARR.value:
                stores.add(self.root.rel(cp.directory))
            if step.zarr_store is not None and (
                step.writes_zarr_store or step.materialization_backend == Backend.ZARR.value
            ):
                stores.add(self.root.rel(step.zarr_store))
        return tuple(sorted(stores))

    def plan_wells(
        self, mode: str, rerun_failed: bool, selected: set[str] | None
    ) -> tuple[list[WellTask], dict[str, dict[str, Any]]]:
        """Tasks to run now, and the committed records of the wells kept as they are.

        A resume keeps a committed well only once its files are verified.  When some
        wells are to run anyway, that verification is left to :meth:`execute`, which
        runs it while the first wells run (on a large plate, reading back every
        committed file takes a while); a well that fails it is run too, and the kept
        records (the dict returned here) are completed then.
        """
        wells = [w.well for w in self.plan.wells]
        records: dict[str, dict[str, Any] | None] = {}
        if mode == "resume":
            records = read_records(self.root, wells)
        keep: dict[str, dict[str, Any]] = {}
        to_verify: dict[str, dict[str, Any]] = {}
        for w in wells:
            rec = records.get(w)
            if rec is None or (selected is not None and w in selected):
                continue
            if rec["status"] == "failed" and rerun_failed:
                continue
            if selected is not None and rec["status"] == "ok":
                keep[w] = rec  # a subset run leaves the others as they are
                continue
            if rec["status"] == "ok":
                to_verify[w] = rec
            else:
                keep[w] = rec
        self.kept = keep
        self.to_verify = to_verify
        # with nothing else to run, the checks decide what runs: done here, now
        tasks = [
            self._task(wp)
            for wp in self.plan.wells
            if wp.well not in keep
            and wp.well not in to_verify
            and (selected is None or wp.well in selected)
        ]
        if not tasks and to_verify:
            tasks = self._verified(verify_records(self.root, to_verify, self.verify))
        return tasks, keep

    def _task(self, wp: WellPlan) -> WellTask:
        """The task of one well of the plan."""
        plate_root = None
        plate_opts = None
        if self.plate_url is not None:
            # every format of a URL plate: planes read through fsspec by the workers
            plate_root, plate_opts = self.plate_url, self.storage_options
        elif self.root.remote and self.plan.plate.backend == Backend.DISK.value:
            plate_root = "/"  # a local plate: read through its own disk backend
        if plate_root is not None:
            wp = replace(wp, input_backend=INPUT_BACKEND)
        if self.stores is None:
            self.stores = self._zarr_stores()
        return WellTask(
            plan=wp,
            root=self.root,
            run_id=self.run_id,
            zarr_stores=self.stores,
            plate=plate_root,
            plate_options=plate_opts,
        )

    def _verified(self, problems: dict[str, str | None]) -> list[WellTask]:
        """Keep the verified wells of :attr:`to_verify`; the tasks of the others."""
        again = []
        for w, rec in self.to_verify.items():
            problem = problems[w]
            if problem is None:
                self.kept[w] = rec
            else:
                self.notes.append(f"well {w} is run again: {problem}")
                again.append(w)
        self.to_verify = {}
        return [self._task(wp) for wp in self.plan.wells if wp.well in again]

    # ------------------------------------------------------------------ execution

    def execute(self, tasks: list[WellTask]) -> dict[str, WellResult]:
        """Run the tasks; results by well (every task ends with a result).

        With local workers (in-process, threads, processes) and a local output, a worker
        writes a well and this process commits it on a background thread (checksums
        and fsync of the well's files, all on that thread, then the record), while the
        worker already runs the next well.  Dask workers and a caller's executor commit
        their own wells.

        The committed wells a resume keeps (:attr:`to_verify`) are verified on a thread
        of this process while the tasks run; a well whose files do not match is run
        after them.
        """
        cfg = self.plan.config
        workers = int(cfg.num_workers or 1)
        retries = int(cfg.retries or 0)
        kind: str | cf.Executor = self.executor if self.executor is not None else str(cfg.executor)
        results: dict[str, WellResult] = {}
        if not tasks:
            self.pool = make_pool("inprocess", 1)
            return results
        self.pool = make_pool(
            kind, workers, preload=self.preload, scheduler=cfg.scheduler, retries=retries
        )
        pool = self.pool
        commits: cf.ThreadPoolExecutor | None = None
        if pool.local and not self.root.remote:
            commits = cf.ThreadPoolExecutor(
                max_workers=max(2, workers), thread_name_prefix="hcsflow-commit"
            )
        stop_checks = threading.Event()
        checker: cf.ThreadPoolExecutor | None = None
        checks: cf.Future[dict[str, str | None]] | None = None
        bar = _progress(len(tasks), self.progress)
        pending: deque[WellTask] = deque(tasks)
        inflight: dict[cf.Future[Any], WellTask] = {}
        committing: dict[cf.Future[dict[str, Any]], tuple[WellTask, WellResult]] = {}
        # written wells waiting for their commit: bounded, so a slow disk slows the workers
        backlog = 2 * pool.window + 2

        def fill() -> None:
            while pending and len(inflight) < pool.window and len(committing) < backlog:
                task = pending.popleft()
                fn = write_well if commits is not None else run_well
                inflight[pool.submit(fn, task, task.plan.well)] = task

        def give_up(task: WellTask, why: str) -> None:
            result = _lost_result(task, why)
            results[task.plan.well] = result
            # recorded like any failed well, so that --rerun-failed finds it
            write_json(
                self.root,
                record_rel(task.plan.well),
                {
                    "well": task.plan.well,
                    "run_id": self.run_id,
                    "attempt": task.attempt,
                    "status": "failed",
                    "files": {},
                    "result": result.to_dict(),
                },
                fsync=self.fsync,
            )
            bar.update(1)

        def again(task: WellTask, exc: BaseException) -> None:
            # the worker was lost or the storage failed: the well runs again
            why = f"{type(exc).__name__}: {exc}"
            if task.attempt <= retries:
                pending.appendleft(task.again(why))
            else:
                give_up(task, why)

        def done(task: WellTask, result: WellResult) -> None:
            results[task.plan.well] = result
            self.committed_now += result.status == "ok"
            bar.update(1)
            if self.on_well_done is not None:
                self.on_well_done(result)
            if result.status != "ok" and cfg.fail_fast:
                raise StepExecutionError(
                    f"well {task.plan.well} failed (fail_fast): {result.error_type}: "
                    f"{result.error}\n{result.traceback}"
                )

        try:
            fill()
            if self.to_verify:
                # started once the first wells are submitted: the checks' reading and
                # hashing would otherwise delay the workers' start
                checker = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="hcsflow-verify")
                checks = checker.submit(
                    verify_records, self.root, self.to_verify, self.verify, stop=stop_checks
                )
            while inflight or committing or checks is not None:
                _checkpoint(self.received)
                waiting: list[cf.Future[Any]] = [*inflight, *committing]
                if checks is not None:
                    waiting.append(checks)
                finished, _ = cf.wait(waiting, return_when=cf.FIRST_COMPLETED)
                for fut in finished:
                    if fut is checks:
                        checks = None
                        rerun = self._verified(fut.result())
                        pending.extend(rerun)
                        bar.total += len(rerun)
                        bar.refresh()
                        continue
                    if fut in committing:
                        task, result = committing.pop(fut)
                        try:
                            self.records[task.plan.well] = fut.result()
                        except Exception as exc:
                            again(task, exc)
                            continue
                        done(task, result)
                        continue
                    if fut not in inflight:
                        continue  # dropped with a broken pool
                    task = inflight.pop(fut)
                    try:
                        out = fut.result()
                    except BrokenProcessPool:
                        # wells whose results came back before the pool broke (in this
                        # batch of finished futures, not handled yet) keep them: they
                        # stay in flight and are handled on the next pass
                        victims = [task]
                        for f, t in list(inflight.items()):
                            if (
                                not f.done()
                                or f.cancelled()
                                or isinstance(f.exception(), BrokenProcessPool)
                            ):
                                victims.append(t)
                                del inflight[f]
                        lost = pool.lost([t.plan.well for t in victims])
                        began = pool.started([t.plan.well for t in victims])
                        pool.restart()
                        for t in reversed(victims):
                            why = lost.get(t.plan.well)
                            if why is None and t.plan.well not in began:
                                pending.appendleft(t)  # queued, never started: as it was
                            elif why is None:
                                # a bystander: its worker was stopped with the pool; it
                                # starts again as the same attempt
                                pending.appendleft(t.again(_BYSTANDER, counts=False))
                            elif t.attempt <= retries:
                                pending.appendleft(t.again(why))
                            else:
                                give_up(t, f"{why} while running the well")
                        break
                    except Exception as exc:  # worker lost, storage failure...
                        pool.received(task.plan.well)
                        again(task, exc)
                        continue
                    pool.received(task.plan.well)
                    if commits is None:
                        done(task, out)
                        continue
                    assert isinstance(out, WrittenWell)
                    if cfg.fail_fast and out.result.status != "ok":
                        # the run stops at this well: committed here, before another
                        # well is submitted or a later one reported ahead of it
                        try:
                            self.records[task.plan.well] = commit_well(
                                self.root, out, fsync=self.fsync, inline=True
                            )
                        except Exception as exc:
                            again(task, exc)
                            continue
                        done(task, out.result)  # raises StepExecutionError
                        continue
                    fut_c = commits.submit(
                        commit_well, self.root, out, fsync=self.fsync, inline=True
                    )
                    committing[fut_c] = (task, out.result)
                fill()
        except BaseException:
            bar.close()
            stop_checks.set()  # reads only: abandoned where they are
            pool.kill()  # cancels the wells that have not started, stops the workers
            self.pool = None
            if commits is not None:
                # commits in flight end (each is atomic) before anyone counts or removes them
                commits.shutdown(wait=True)
            raise
        finally:
            if checker is not None:
                checker.shutdown(wait=True)
        bar.close()
        if pool.kind == "processes":
            # the workers exit while this process rebuilds the plate-level files (it
            # takes them about 10 ms); :meth:`pool_closed` waits for them before the
            # run returns
            closer = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="hcsflow-pool-close")
            self._closing = closer.submit(pool.close)
            closer.shutdown(wait=False)
        else:
            pool.close()
        if commits is not None:
            commits.shutdown(wait=True)
        if pool.kind in ("inprocess", "threads"):
            # the wells ran here, with glibc's thresholds raised (well_allocations)
            give_back_free_memory()
        return results

    def pool_closed(self, timeout: float | None = None) -> None:
        """Wait until the pool that :meth:`execute` closes in the background is closed
        (raises what closing it raised)."""
        closing = self._closing
        if closing is None:
            return
        try:
            closing.result(timeout)
        finally:
            if closing.done():  # an interrupted wait leaves it for :meth:`interrupted`
                self._closing = None

    # ------------------------------------------------------------------ interruption

    def interrupted(self, signum: int, received: list[int]) -> RunInterrupted:
        """Stop every worker; keep the output if any well is committed, else remove it."""
        if self.pool is not None:
            with contextlib.suppress(Exception):
                self.pool.kill()
        with contextlib.suppress(Exception):  # the pool was stopped just above
            self.pool_closed(timeout=10)
        if self.warm:
            stop_fork_server()
        if self.mode is None and not self.started_new:
            return _interruption(signum, "before any well ran; nothing was written", kept=None)
        with contextlib.suppress(Exception):  # the signal came as the manifest was written
            self.finished = self.finished or _has_manifest(self.root)
        if self.finished:
            what = f"after the run finished; the output {self.root.url} is complete"
            return _interruption(signum, what, kept=True)
        wells = [w.well for w in self.plan.wells]
        try:
            committed = _count_committed(self.root, wells) if self.run_id else 0
        except Exception:
            committed = 0
        if self.started_new and committed == 0:
            with contextlib.suppress(Exception):
                self.root.remove()
            what = f"; no well was committed, the partial output {self.root.url} was removed"
            return _interruption(signum, what, kept=False)
        what = (
            f"; {committed} of {len(wells)} wells committed, the output {self.root.url} was "
            f"kept and is resumable (run again with --resume)"
        )
        return _interruption(signum, what, kept=True)

    # ------------------------------------------------------------------ plate level

    def finish(
        self,
        results: dict[str, WellResult],
        kept: dict[str, dict[str, Any]],
        post_run: Callable[[Path, list[WellResult], dict[str, str]], None] | None,
        t_start: float,
        duration: float,
        mode: str,
    ) -> RunResult:
        """Rebuild plate-level files from the committed wells; write the manifest last."""
        root, plan = self.root, self.plan
        ordered: list[WellResult] = []
        files: dict[str, dict[str, Any]] = {}
        for wp in plan.wells:
            w = wp.well
            if w in results:
                res = results[w]
                rec = None
                if res.status == "ok":
                    rec = self.records.get(w) or read_record(root, w)
                if res.status == "ok" and rec is not None:
                    files.update(rec.get("files") or {})
            elif w in kept:
                rec = kept[w]
                res = WellResult(**_result_fields(rec.get("result") or {"well": w}))
                if res.status == "ok":
                    files.update(rec.get("files") or {})
            else:
                res = WellResult(well=w, status="not_run")
            ordered.append(res)
        ok_wells = {r.well for r in ordered if r.status == "ok"}
        stores = self._zarr_stores()
        for store in stores:  # the plate lists committed wells only
            for wp in plan.wells:
                if wp.well not in ok_wells:
                    root.remove(zarr_well_rel(store, wp.well))
        # plate-level files are made durable together below, before the manifest
        plate_tables = _consolidate(ordered, root)
        plate_files = [f"{name}" for name in plate_tables.values()]
        storage = root.storage_options if root.remote else None
        present = [s for s in stores if root.files_below(s)]
        if present:
            from hcsflow.pipeline._zarr_out import finalize_plates

            finalize_plates(
                [root.store_url(root.vpath(s)) for s in present], storage_options=storage
            )
            for store in present:
                well_groups = [zarr_well_rel(store, w) + "/" for w in ok_wells]
                plate_files.extend(
                    f
                    for f in root.files_below(store)
                    if not any(f.startswith(g) for g in well_groups)
                )
        if post_run is not None:
            before = set(root.files_below(""))
            post_run(Path(root.url), ordered, plate_tables)
            plate_files.extend(
                f
                for f in root.files_below("")
                if f not in before and not f.startswith(CONTROL_DIR + "/")
            )
        plate_files = sorted(set(plate_files) - set(files))
        files.update(root.seal(plate_files, fsync=self.fsync))
        assert self.pool is not None
        manifest = _manifest(
            plan, ordered, plate_tables, files, root, t_start, duration, self.pool.describe()
        )
        manifest["run"] = {
            "run_id": self.run_id,
            "mode": mode,
            "wells_run": sorted(results),
            "wells_kept": sorted(kept),
            "notes": self.notes,
            "retries": plan.config.retries,
        }
        write_json(root, MANIFEST_NAME, manifest, fsync=self.fsync)
        self.finished = True
        return RunResult(
            output_dir=root.url,
            manifest_path=root.display(MANIFEST_NAME),
            wells=ordered,
            plate_tables=plate_tables,
            duration_s=duration,
            manifest=manifest,
            skipped=sorted(kept),
        )


def _result_fields(d: dict[str, Any]) -> dict[str, Any]:
    names = WellResult.__dataclass_fields__
    return {k: v for k, v in d.items() if k in names}


#: why a well that shared a broken process pool with a lost worker started again
_BYSTANDER = "its worker was stopped with the pool after another well's worker was lost"


def _lost_result(task: WellTask, why: str) -> WellResult:
    return WellResult(
        well=task.plan.well,
        status="failed",
        error=f"well {task.plan.well}: {why} (attempt {task.attempt})",
        error_type="WorkerLost",
        started=time.time(),
        attempt=task.attempt,
        ran_again_after=list(task.ran_again_after),
    )


class _HeadersDiffer(Exception):
    """Per-well tables of one key have different columns: they cannot be joined as text."""


def _read_ahead(root: OutputRoot, rels: list[str], depth: int = 8) -> Iterator[bytes | None]:
    """The raw bytes of ``rels`` in order (``None`` for a missing file)."""
    return ordered_map(root.read_bytes, rels, remote=root.remote, depth=depth)


def _csv_chunks(root: OutputRoot, entries: list[tuple[str, bool]]) -> Iterator[bytes]:
    """The header of the first table, then every table's rows (one file in memory at a
    time); cells a spreadsheet would run as formulas are neutralised in tables whose
    materializer did not already do it."""
    header: bytes | None = None
    for (_, neutralized), raw in zip(
        entries, _read_ahead(root, [r for r, _ in entries]), strict=True
    ):
        if raw is None:
            continue
        if not neutralized:
            raw = neutralize_csv_text(raw.decode("utf-8")).encode("utf-8")
        head, _, body = raw.partition(b"\n")
        if header is None:
            header = head
            yield head + b"\n"
        elif head != header:
            raise _HeadersDiffer
        if body and not body.endswith(b"\n"):
            body += b"\n"  # a table written without a final newline keeps its last row
        yield body


def _consolidate(results: list[WellResult], root: OutputRoot) -> dict[str, str]:
    """Concatenate committed per-well tables into one plate CSV per special output key.

    Rows come in plate order: wells as the plate lists them, then each well's groups,
    then each table's own rows.  Tables with identical headers (the usual case: one
    function made them all) are streamed into the plate table one file at a time, so
    memory does not grow with the plate; otherwise pandas aligns the columns.  Only CSV
    files are joined: a table a materializer wrote into a zarr hierarchy (a zarr group
    named ``*.csv``) stays per well.
    """
    by_key: dict[str, list[tuple[str, bool]]] = {}
    for r in results:  # results are in plate order
        if r.status != "ok":
            continue
        for o in r.outputs:
            if o.get("kind") == "special_output" and str(o.get("path", "")).endswith(".csv"):
                entry = (str(o["path"]), bool(o.get("formulas_neutralized")))
                by_key.setdefault(o["key"], []).append(entry)
    plate: dict[str, str] = {}
    backend = root.backend(fsync=False)  # the caller seals them (OutputRoot.seal)
    for key, entries in sorted(by_key.items()):
        name = f"{key}.csv"
        try:
            if root.write_chunks(name, _csv_chunks(root, entries)):
                plate[key] = name
            continue
        except _HeadersDiffer:
            pass
        import pandas as pd

        texts = [raw.decode("utf-8") for raw in _read_ahead(root, [r for r, _ in entries]) if raw]
        frames = [pd.read_csv(io.StringIO(t)) for t in texts if t.strip()]
        text = pd.concat(frames, ignore_index=True).to_csv(index=False)
        backend.save(neutralize_csv_text(text), root.vpath(name), overwrite=True)
        plate[key] = name
    return plate


def _manifest(
    plan: RunPlan,
    results: list[WellResult],
    plate_tables: dict[str, str],
    files: dict[str, dict[str, Any]],
    root: OutputRoot,
    t_start: float,
    duration: float,
    executor: dict[str, Any],
) -> dict[str, Any]:
    wells: dict[str, Any] = {}
    for r in results:
        d = r.to_dict()
        outputs = []
        for o in r.outputs:
            entry = dict(o)
            meta = files.get(str(o.get("path")))
            if meta is not None:  # a file (folders such as images/ are listed under "files")
                entry["sha256"] = meta["sha256"]
            outputs.append(entry)
        d["outputs"] = outputs
        wells[r.well] = d
    n_ok = sum(r.status == "ok" for r in results)
    n_failed = sum(r.status == "failed" for r in results)
    n_again = sum(bool(r.ran_again_after) for r in results)
    images = sum(r.images_in for r in results)
    return {
        "hcsflow_manifest": 2,
        "output_dir": root.url,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_start)),
        "duration_s": duration,
        "plate": plan.plate.summary(),
        "pipeline": describe_steps(plan.steps, plan.output_dir),
        "config": config_to_dict(plan.config),
        "versions": dict(_versions()),
        "executor": executor,
        "summary": {
            "wells": len(results),
            "wells_ok": n_ok,
            "wells_failed": n_failed,
            "wells_not_run": len(results) - n_ok - n_failed,
            "wells_ran_again": n_again,
            "images_in": images,
            "images_per_s": images / duration if duration > 0 else None,
            "conversion_bytes": sum(r.conversion_bytes for r in results),
        },
        "plate_tables": plate_tables,
        "wells": wells,
        "files": dict(sorted(files.items())),
    }
