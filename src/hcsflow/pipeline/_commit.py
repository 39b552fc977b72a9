"""Per-well commits: a well's outputs are written, then one small record commits them.

Layout of a run's output (a local directory or an fsspec URL)::

    .hcsflow/run.json          written first: run id, fingerprint, planned wells
    .hcsflow/wells/<well>.json a well's commit record, written last for that well
    images/ results/ ...       the wells' outputs
    <key>.csv, manifest.json   plate-level files, rebuilt from committed wells at the end

A commit record lists every file the well wrote with its size and sha256, and the
well's result (status, timings, errors).  A well without a record is not done, whatever
files it left: readers go by records and the manifest, and a retried or resumed well
replaces such leftovers.  :func:`run_well` is what every executor runs for a well; it
takes and returns small objects only (plans and results, never image data), so with a
Dask cluster almost nothing passes through the client.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import hashlib
import inspect
import json
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from hcsflow import paths as vpaths
from hcsflow.errors import ConfigurationError
from hcsflow.pipeline._compiler import RunPlan, WellPlan, describe_steps
from hcsflow.pipeline._config import config_to_dict
from hcsflow.pipeline._execute import WellResult, execute_well
from hcsflow.pipeline._executors import well_allocations
from hcsflow.pipeline._output import OutputRoot, WellSink, ordered_map
from hcsflow.storage.plate import parse_well

__all__ = [
    "CONTROL_DIR",
    "RUN_RECORD",
    "WellTask",
    "WrittenWell",
    "run_well",
    "write_well",
    "commit_well",
    "record_rel",
    "well_statuses",
    "read_records",
    "read_record",
    "read_run_record",
    "write_json",
    "readable_json",
    "fingerprint",
    "fingerprint_diff",
    "verify_record",
    "verify_records",
    "VERIFY_MODES",
    "zarr_well_rel",
    "EXECUTION_FIELDS",
]

CONTROL_DIR = ".hcsflow"
RUN_RECORD = f"{CONTROL_DIR}/run.json"
WELLS_DIR = f"{CONTROL_DIR}/wells"
#: configuration fields that say how wells run, not what they compute: a resume may
#: change them
EXECUTION_FIELDS = ("num_workers", "executor", "fail_fast", "well_filter", "scheduler", "retries")


def record_rel(well: str) -> str:
    """Relative path of a well's commit record."""
    return f"{WELLS_DIR}/{well}.json"


def zarr_well_rel(store_rel: str, well: str) -> str:
    """Relative path of a well's group in an OME-Zarr plate (``images.zarr/A/1``)."""
    pos = parse_well(well)
    return f"{store_rel}/{pos.row_name}/{pos.column + 1}"


def write_json(
    root: OutputRoot, rel: str, doc: dict[str, Any], *, fsync: bool = True, create: bool = False
) -> None:
    """Write a small JSON record atomically (temp + rename, or one PUT).

    ``create`` refuses an existing record (:class:`AlreadyExistsError`): of two runs
    starting in one place at once, exactly one creates the run record.
    """
    backend = root.backend(fsync=fsync)
    vp = root.vpath(rel)
    backend.ensure_directory(vpaths.parent(vp))
    backend.save(readable_json(doc), vp, overwrite=not create)


def readable_json(doc: dict[str, Any]) -> str:
    """``doc`` as JSON with one line per top-level key and one per element of a
    top-level list or dict (a manifest: one line per well; a record: one per file).

    Python's ``json`` only uses its C encoder without ``indent``; indenting a manifest
    of a few hundred wells all the way down took its pure-Python encoder a good part of
    a second at the end of every run.  Two levels of lines keep the file easy to read
    and to diff, and everything below them is encoded in C.  Non-string keys fall back
    to the indented encoder, which converts them as ``json`` does.
    """

    def compact(value: Any) -> str:
        return json.dumps(value, default=str)

    if not all(type(k) is str for k in doc):
        return json.dumps(doc, indent=1, default=str)
    lines = []
    for key, value in doc.items():
        if isinstance(value, dict) and value and all(type(k) is str for k in value):
            items = ",\n".join(f"  {compact(k)}: {compact(v)}" for k, v in value.items())
            text = "{\n" + items + "\n }"
        elif isinstance(value, list) and value:
            text = "[\n" + ",\n".join("  " + compact(v) for v in value) + "\n ]"
        else:
            text = compact(value)
        lines.append(f" {compact(key)}: {text}")
    return "{\n" + ",\n".join(lines) + "\n}" if lines else "{}"


def _read_json(root: OutputRoot, rel: str) -> dict[str, Any] | None:
    raw = root.read_bytes(rel)
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def read_record(root: OutputRoot, well: str) -> dict[str, Any] | None:
    """A well's commit record, or ``None`` (absent or unreadable: not committed)."""
    doc = _read_json(root, record_rel(well))
    if doc is None or doc.get("well") != well or doc.get("status") not in ("ok", "failed"):
        return None
    return doc


def read_records(root: OutputRoot, wells: Sequence[str]) -> dict[str, dict[str, Any] | None]:
    """:func:`read_record` of every well of ``wells`` (see :func:`ordered_map` for how
    they are read: on object storage each is a request)."""
    read = functools.partial(read_record, root)
    return dict(zip(wells, ordered_map(read, wells, remote=root.remote), strict=True))


def well_statuses(root: OutputRoot, wells: Sequence[str]) -> dict[str, str]:
    """``{well: "ok" | "failed"}`` for the wells of ``wells`` that have a commit record."""
    return {w: str(r["status"]) for w, r in read_records(root, wells).items() if r is not None}


def read_run_record(root: OutputRoot) -> dict[str, Any] | None:
    """The run record written when the run started, or ``None``."""
    return _read_json(root, RUN_RECORD)


# --------------------------------------------------------------------------- the task


@dataclass(frozen=True)
class WellTask:
    """One well to run: its plan, where it writes, and what it may replace."""

    plan: WellPlan
    root: OutputRoot
    run_id: str
    zarr_stores: tuple[str, ...] = ()
    """Relative paths of the OME-Zarr plates the well writes into (images, checkpoints)."""
    plate: str | None = None
    plate_options: dict[str, Any] | None = None
    attempt: int = 1
    ran_again_after: tuple[str, ...] = ()
    """Why each earlier start of the well in this run did not finish."""

    def again(self, why: str, *, counts: bool = True) -> WellTask:
        """This task started once more after ``why``; ``counts``: as a new attempt."""
        return replace(
            self,
            attempt=self.attempt + 1 if counts else self.attempt,
            ran_again_after=(*self.ran_again_after, why),
        )


@dataclass(frozen=True)
class WrittenWell:
    """A well whose outputs are written but not committed yet (small: no image data)."""

    result: WellResult
    record: dict[str, Any]
    """The commit record to write, without its ``files``."""
    files: tuple[str, ...]
    """Relative paths of every file the well wrote (empty for a failed well)."""


def write_well(task: WellTask) -> WrittenWell:
    """Run one well and write its outputs, without committing them (:func:`commit_well`).

    An earlier record of the well is removed before anything is written, and the well's
    groups in the run's OME-Zarr plates are cleared (leftovers of a crashed attempt), so
    a well run twice ends with exactly one complete result.  A failed well's files are
    removed.  The well runs with glibc's usual allocation thresholds where the process
    was started with fixed ones (:func:`~hcsflow.pipeline._executors.well_allocations`:
    Dask workers).
    """
    root, plan = task.root, task.plan
    root.remove_files([record_rel(plan.well)], fsync=plan.fsync)
    groups = [zarr_well_rel(store, plan.well) for store in task.zarr_stores]
    for group in groups:
        root.remove(group)
    sink = WellSink(root, task.plate, task.plate_options)
    with well_allocations():
        result = execute_well(replace(plan, output=sink))
    result.outputs = [{**o, "path": root.rel(str(o["path"]))} for o in result.outputs]
    result.attempt = task.attempt
    result.ran_again_after = list(task.ran_again_after)
    written = sink.written()
    files: list[str] = []
    if result.status == "ok":
        files = list(written)
        for group in groups:
            files.extend(root.files_below(group))
    else:
        root.remove_files(written)
        for group in groups:
            root.remove(group)
    doc: dict[str, Any] = {
        "well": plan.well,
        "run_id": task.run_id,
        "attempt": task.attempt,
        "status": result.status,
        "host": os.uname().nodename if hasattr(os, "uname") else None,
        "pid": os.getpid(),
        "result": result.to_dict(),
    }
    return WrittenWell(result=result, record=doc, files=tuple(sorted(set(files))))


def commit_well(
    root: OutputRoot, well: WrittenWell, *, fsync: bool, inline: bool = False
) -> dict[str, Any]:
    """Commit a written well: checksum its files, make them durable, write its record last.

    With ``fsync`` every file and directory of the well is flushed (see
    :meth:`OutputRoot.seal`; all in the calling thread with ``inline``, as a local run
    commits beside a well being computed) before the record is written, and the record
    itself is flushed: a record on disk always describes files on disk.  Returns the
    record.
    Errors of the storage itself (a file vanished, the record cannot be written) are
    raised, so the run can try the well again.
    """
    rec = well.record
    identities: dict[str, str] = {}
    doc: dict[str, Any] = {
        "well": rec["well"],
        "run_id": rec["run_id"],
        "attempt": rec["attempt"],
        "committed": "",
        "status": rec["status"],
        "host": rec["host"],
        "pid": rec["pid"],
        "files": root.seal(well.files, fsync=fsync, identities=identities, inline=inline),
        "identity": identities,
        "result": rec["result"],
    }
    doc["committed"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    rel = record_rel(str(rec["well"]))
    # published first and flushed after, file and folder in one round: a record cut
    # short by a power loss does not parse, and an unreadable record is no commit
    write_json(root, rel, doc, fsync=False)
    if fsync:
        root.flush([rel], inline=inline)
    return doc


def run_well(task: WellTask) -> WellResult:
    """Run one well and commit it: outputs first, then the commit record, last.

    What a worker runs when it commits its own wells (Dask, a caller's executor, an
    output on object storage); local runs split it into :func:`write_well` in the
    worker and :func:`commit_well` in the process that started the run.
    """
    written = write_well(task)
    _leave_dask_slot()
    commit_well(task.root, written, fsync=task.plan.fsync)
    return written.result


def _leave_dask_slot() -> None:
    """On a Dask worker, give this task's thread slot to the next well now.

    A commit is hashing and ``fsync`` waits: seceded, it overlaps the next well's
    computation, as a local run's commits overlap its workers'.  The task still ends,
    and so reports the well, only once the commit is done.  Nothing happens outside a
    Dask worker (``distributed`` is not imported for this).
    """
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return
    try:
        worker = distributed.get_worker()
    except ValueError:  # not in a worker's task thread
        return
    from distributed.core import Status

    # a closing worker joins its task threads while holding the lock secede() takes:
    # seceding then would hang the close until the nanny kills the worker
    if worker.status in (Status.running, Status.paused):
        distributed.secede()


#: how ``resume`` verifies a committed well's files before keeping it
VERIFY_MODES = ("full", "quick")


def _check_file(
    root: OutputRoot, rel: str, meta: dict[str, Any], ident: Any, mode: str
) -> str | None:
    """Why one committed file does not match its record (``None``: it matches)."""
    if mode == "quick" and ident is not None:
        now = root.identity(rel)
        if now is None:
            return f"{rel} is missing"
        if now[0] != meta.get("bytes"):
            return f"{rel} changed since it was committed (size)"
        if now[1] == ident:
            return None
        # touched, copied or moved: its content decides (as git does after a stat change)
    got = root.sha256(rel)
    if got is None:
        return f"{rel} is missing"
    if got[0] != meta.get("bytes") or got[1] != meta.get("sha256"):
        return f"{rel} changed since it was committed"
    return None


def verify_records(
    root: OutputRoot,
    records: dict[str, dict[str, Any]],
    mode: str = "full",
    *,
    stop: threading.Event | None = None,
) -> dict[str, str | None]:
    """Verify committed wells; ``{well: why its files do not match (None: they match)}``.

    ``full`` reads every file and compares its size and sha256 with the record.
    ``quick`` compares each file's size and identity (modification time, change time
    and inode, or an object's ETag) with those the commit saw, and reads and hashes
    only the files whose identity differs or was not recorded (records of earlier
    versions).  The wells are checked on one thread pool (hashing releases the GIL; on
    object storage each check is a request).  Once ``stop`` is set, the files not yet
    checked are not read, and their wells are reported as not verified.
    """
    if mode not in VERIFY_MODES:
        raise ConfigurationError(f"verify must be one of {', '.join(VERIFY_MODES)}, got {mode!r}")
    wells = [w for w in records if records[w].get("files")]

    def check(well: str) -> str | None:
        rec = records[well]
        files = rec["files"]
        idents = rec.get("identity") or {}
        for rel in sorted(files):  # the first problem in path order
            if stop is not None and stop.is_set():
                return "not verified: the run stopped"
            problem = _check_file(root, rel, files[rel], idents.get(rel), mode)
            if problem is not None:
                return problem
        return None

    out: dict[str, str | None] = {well: None for well in records}
    if not wells:
        return out
    # one task per well: a local check is a stat or a read from the page cache (threads
    # beyond a few only add switching); on object storage each check is a request
    threads = 16 if root.remote else min(4, os.cpu_count() or 1)
    with cf.ThreadPoolExecutor(max_workers=min(threads, len(wells))) as pool:
        for well, problem in zip(wells, pool.map(check, wells), strict=True):
            out[well] = problem
    return out


def verify_record(root: OutputRoot, record: dict[str, Any], mode: str = "full") -> str | None:
    """Why a committed well's files do not match its record (``None``: they match)."""
    return verify_records(root, {str(record.get("well")): record}, mode)[str(record.get("well"))]


# --------------------------------------------------------------------------- fingerprint


#: function -> (its code object, digest of its source): a function's source is read
#: once per process (inspect.getsource tokenizes it), again only if its code changed
_DIGESTS: weakref.WeakKeyDictionary[Any, tuple[Any, str | None]] = weakref.WeakKeyDictionary()


def _code_digest(func: Callable[..., Any]) -> str | None:
    target = getattr(func, "__wrapped__", func)
    code = getattr(target, "__code__", None)
    try:
        cached = _DIGESTS.get(target)
    except TypeError:  # not weak-referenceable
        cached = None
    if cached is not None and code is not None and cached[0] is code:
        return cached[1]
    try:
        source = inspect.getsource(target)
    except (OSError, TypeError):
        digest = None
    else:
        digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    if code is not None:
        with contextlib.suppress(TypeError):
            _DIGESTS[target] = (code, digest)
    return digest


def _value_digest(value: Any) -> Any:
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    shape = getattr(value, "shape", None)
    tobytes = getattr(value, "tobytes", None)
    if shape is not None and callable(tobytes):
        digest = hashlib.sha256(tobytes()).hexdigest()[:16]
        return f"array{tuple(shape)} {getattr(value, 'dtype', '')} sha256:{digest}"
    return repr(value)


def fingerprint(plan: RunPlan) -> dict[str, Any]:
    """What a run computes: pipeline (functions, code, arguments), configuration, plate.

    Two runs with equal fingerprints produce the same outputs; a resume requires it.
    """
    steps = describe_steps(plan.steps, plan.output_dir)
    for desc, step in zip(steps, plan.steps, strict=True):
        for key, chain in step.calls.items():
            for fdesc, call in zip(desc["functions"][str(key)], chain, strict=True):
                fdesc["kwargs"] = {k: _value_digest(v) for k, v in call.kwargs.items()}
                fdesc["code"] = _code_digest(call.func)
    config = config_to_dict(plan.config)
    for name in EXECUTION_FIELDS:
        config.pop(name, None)
    summary = dict(plan.plate.summary())
    return {"pipeline": steps, "config": config, "plate": summary}


def fingerprint_diff(old: Any, new: Any, where: str = "") -> list[str]:
    """Human-readable differences between two fingerprints (``where: old -> new``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            sub = f"{where}.{key}" if where else str(key)
            if key not in old:
                out.append(f"{sub}: added ({new[key]!r})")
            elif key not in new:
                out.append(f"{sub}: removed (was {old[key]!r})")
            else:
                out.extend(fingerprint_diff(old[key], new[key], sub))
        return out
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            return [f"{where}: {len(old)} entries -> {len(new)}"]
        out = []
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            out.extend(fingerprint_diff(a, b, f"{where}[{i}]"))
        return out
    return [] if old == new else [f"{where}: {old!r} -> {new!r}"]
