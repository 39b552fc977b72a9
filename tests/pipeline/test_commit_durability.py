"""Commits made durable together: every file of a well (and every folder leading to it)
is fsynced before the well's record, a record is never written for a file that vanished,
a commit that fails runs the well again, and fsync=False really writes without fsync."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile

from hcsflow.pipeline import FunctionStep, GlobalPipelineConfig, VFSConfig, run_pipeline
from hcsflow.testing import make_plate

COUNTING = [
    FunctionStep(func="gaussian_filter", sigma=1.0),
    FunctionStep(func="count_cells", min_size=20),
    FunctionStep(func="measure_objects"),
]


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    root = tmp_path_factory.mktemp("plate")
    return make_plate(
        root / "plate", 3, sites=2, size=64, min_cells=3, max_cells=6, radius=4, seed=3
    )


class _Journal:
    """Records, in order and from every thread, which paths were fsynced and when each
    commit record started to be written."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        from hcsflow.pipeline import _commit

        self.events: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        real_fsync, real_write_json = os.fsync, _commit.write_json

        def fsync(fd: int) -> None:
            real_fsync(fd)
            with self.lock:
                self.events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))

        def write_json(root, rel, doc, **kw) -> None:
            with self.lock:
                self.events.append(("record", rel))
            real_write_json(root, rel, doc, **kw)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(_commit, "write_json", write_json)


@pytest.mark.skipif(not os.path.exists("/proc/self/fd"), reason="reads /proc/self/fd")
@pytest.mark.parametrize("executor,workers", [("inprocess", 1), ("threads", 2)])
def test_every_file_and_folder_is_fsynced_before_the_record(
    plate, tmp_path, monkeypatch, executor, workers
):
    journal = _Journal(monkeypatch)
    out = tmp_path / "o"
    res = run_pipeline(
        COUNTING, plate.root, out, GlobalPipelineConfig(executor=executor, num_workers=workers)
    )
    assert res.ok
    events = journal.events
    for well in ("A01", "A02", "A03"):
        record_path = str(out / ".hcsflow" / "wells" / f"{well}.json")
        published = [
            i for i, e in enumerate(events) if e == ("record", f".hcsflow/wells/{well}.json")
        ]
        assert len(published) == 1
        before = {p for kind, p in events[: published[0]] if kind == "fsync"}
        files = json.loads(Path(record_path).read_text())["files"]
        assert len(files) >= 5  # images, masks, two tables and their summaries
        for rel in files:
            assert str(out / rel) in before, f"{rel} was not fsynced before {well}'s record"
            parent = (out / rel).parent
            while parent != out.parent:
                assert str(parent) in before, f"folder {parent} not fsynced before the record"
                parent = parent.parent
        # the record itself is flushed: its temporary file, then its folder
        after = [p for kind, p in events[published[0] :] if kind == "fsync"]
        assert str(out / ".hcsflow" / "wells") in after and record_path in after
    # the manifest lists every committed file with the record's checksum
    manifest = json.loads((out / "manifest.json").read_text())
    record = json.loads((out / ".hcsflow/wells/A02.json").read_text())
    for rel, meta in record["files"].items():
        assert manifest["files"][rel] == meta


def test_fsync_off_writes_without_any_fsync(plate, tmp_path, monkeypatch):
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    res = run_pipeline(
        COUNTING,
        plate.root,
        tmp_path / "o",
        GlobalPipelineConfig(executor="inprocess", vfs=VFSConfig(fsync=False)),
    )
    assert res.ok and calls == []


def test_a_failed_commit_runs_the_well_again(plate, tmp_path, monkeypatch):
    """A storage failure while committing (here: the checksum pass) is retried like a
    lost worker: the well runs again and is committed by its second attempt."""
    from hcsflow.pipeline import _run

    real = _run.commit_well
    failed: list[str] = []

    def flaky(root, well, **kw):
        if well.record["well"] == "A02" and not failed:
            failed.append("A02")
            raise OSError("disk went away for a moment")
        return real(root, well, **kw)

    monkeypatch.setattr(_run, "commit_well", flaky)
    out = tmp_path / "o"
    res = run_pipeline(COUNTING, plate.root, out, GlobalPipelineConfig(executor="inprocess"))
    assert failed == ["A02"] and res.ok
    record = json.loads((out / ".hcsflow/wells/A02.json").read_text())
    assert record["attempt"] == 2 and record["status"] == "ok"
    # said, not hidden: in the result, the record and the manifest
    why = ["OSError: disk went away for a moment"]
    assert [(w.well, w.attempt, w.ran_again_after) for w in res.ran_again] == [("A02", 2, why)]
    assert record["result"]["ran_again_after"] == why
    m = json.loads((out / "manifest.json").read_text())
    assert m["summary"]["wells_ran_again"] == 1
    assert m["wells"]["A02"]["ran_again_after"] == why and m["wells"]["A02"]["attempt"] == 2
    assert m["wells"]["A01"]["ran_again_after"] == [] and m["wells"]["A01"]["attempt"] == 1
    # a resume keeps A02 as committed: this call ran nothing again, the output did
    monkeypatch.setattr(_run, "commit_well", real)
    again = run_pipeline(
        COUNTING, plate.root, out, GlobalPipelineConfig(executor="inprocess"), resume=True
    )
    assert again.ok and "A02" in again.skipped and again.ran_again == []
    m = json.loads((out / "manifest.json").read_text())
    assert m["summary"]["wells_ran_again"] == 1 and m["wells"]["A02"]["ran_again_after"] == why


def test_a_commit_failing_every_attempt_fails_its_well_only(plate, tmp_path, monkeypatch):
    from hcsflow.pipeline import _run

    real = _run.commit_well

    def broken(root, well, **kw):
        if well.record["well"] == "A01":
            raise OSError("no space left on device")
        return real(root, well, **kw)

    monkeypatch.setattr(_run, "commit_well", broken)
    out = tmp_path / "o"
    res = run_pipeline(
        COUNTING, plate.root, out, GlobalPipelineConfig(executor="inprocess", retries=1)
    )
    status = {w.well: w.status for w in res.wells}
    assert status == {"A01": "failed", "A02": "ok", "A03": "ok"}
    assert "no space left on device" in res.wells[0].error
    record = json.loads((out / ".hcsflow/wells/A01.json").read_text())
    assert record["status"] == "failed" and record["files"] == {}


def test_a_file_that_vanishes_before_the_commit_is_not_recorded(tmp_path):
    from hcsflow.pipeline._commit import WrittenWell, commit_well, read_record
    from hcsflow.pipeline._execute import WellResult
    from hcsflow.pipeline._output import OutputRoot

    root = OutputRoot.of(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "kept.tif").write_bytes(b"x")
    well = WrittenWell(
        result=WellResult(well="A01"),
        record={
            "well": "A01",
            "run_id": "r",
            "attempt": 1,
            "status": "ok",
            "host": None,
            "pid": 1,
            "result": {},
        },
        files=("images/kept.tif", "images/gone.tif"),
    )
    with pytest.raises(FileNotFoundError, match="gone.tif vanished before its commit"):
        commit_well(root, well, fsync=True)
    assert read_record(root, "A01") is None


def test_removing_a_manifest_is_made_durable(tmp_path, monkeypatch):
    from hcsflow.pipeline._output import OutputRoot

    (tmp_path / "manifest.json").write_text("{}")
    synced = []
    real = os.fsync
    monkeypatch.setattr(
        os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd))
    )
    root = OutputRoot.of(tmp_path)
    root.remove_files(["manifest.json", "absent.json"], fsync=True)
    assert not (tmp_path / "manifest.json").exists()
    assert synced == [str(tmp_path)]
    synced.clear()
    root.remove_files(["absent.json"], fsync=True)  # nothing removed: nothing to flush
    assert synced == []


def test_a_wells_folders_are_created_again_after_being_removed(tmp_path):
    from hcsflow.pipeline._output import OutputRoot, WellSink

    sink = WellSink(OutputRoot.of(tmp_path))
    disk = sink.disk()
    folder = str(tmp_path / "results" / "step")
    disk.ensure_directory(folder)
    disk.save(np.zeros((4, 4), np.uint8), f"{folder}/a.tif")
    disk.delete_all(str(tmp_path / "results"))
    disk.ensure_directory(folder)  # remembered as ensured, but removed since: made again
    disk.save(np.ones((4, 4), np.uint8), f"{folder}/a.tif")
    assert tifffile.imread(f"{folder}/a.tif").max() == 1


# --------------------------------------------------------------------------- plate tables


def _write_csv_as_is(data, path, filemanager):
    """A materializer writing CSV text exactly as given (no neutralising, maybe no final
    newline)."""
    from hcsflow.pipeline._materialize import base_path

    target = f"{base_path(path)}.csv"
    filemanager.ensure_directory(os.path.dirname(target), "disk")
    filemanager.save(data, target, "disk", overwrite=True)
    return target


def test_plate_tables_stream_every_well_and_neutralise_foreign_tables(tmp_path):
    """Tables of a materializer that does not neutralise formulas are neutralised in the
    plate table; a table without a final newline keeps its last row; wells whose tables
    have other columns are aligned by pandas."""
    import pandas as pd

    from hcsflow.pipeline import special_outputs

    root = tmp_path / "p"
    root.mkdir()
    for w, v in (("A01", 0), ("A02", 0), ("A03", 7)):
        tifffile.imwrite(root / f"{w}_s1_w1.tif", np.full((8, 8), v, np.uint16))

    @special_outputs(("notes", _write_csv_as_is))
    def annotate(stack, wide=False):
        columns = "a,b,c" if wide and stack.max() > 0 else "a,b"
        extra = ",9" if wide and stack.max() > 0 else ""
        return stack, f"{columns}\n=1+2,-5{extra}\n3,4{extra}"  # no final newline

    config = GlobalPipelineConfig(executor="inprocess")
    res = run_pipeline([FunctionStep(func=annotate)], str(root), tmp_path / "same", config)
    assert res.ok
    text = (tmp_path / "same" / "notes.csv").read_text()
    assert text == "a,b\n" + "'=1+2,-5\n3,4\n" * 3

    res = run_pipeline(
        [FunctionStep(func=annotate, wide=True)], str(root), tmp_path / "other", config
    )
    assert res.ok
    table = pd.read_csv(tmp_path / "other" / "notes.csv")
    assert list(table.columns) == ["a", "b", "c"] and len(table) == 6
    assert table["a"].tolist() == ["'=1+2", "3"] * 3
    assert table["c"].isna().tolist() == [True] * 4 + [False] * 2


def test_code_digests_are_read_once_and_follow_a_changed_code_object():
    from hcsflow.pipeline._commit import _code_digest

    def f(x):
        return x + 1

    def g(x):
        return x + 2

    first = _code_digest(f)
    assert first is not None and _code_digest(f) == first
    f.__code__ = g.__code__  # same function object, other code: read again
    assert _code_digest(f) == _code_digest(g) != first
    assert _code_digest(len) is None  # no Python source


@pytest.mark.skipif(not os.path.exists("/proc/self/fd"), reason="reads /proc/self/fd")
@pytest.mark.parametrize("files,inline", [(3, False), (20, False), (20, True)])
def test_a_seal_hashes_and_flushes_every_file_and_folder(tmp_path, monkeypatch, files, inline):
    """A small set, or any set ``inline``, is sealed in the calling thread (no thread of
    the pool competes with a well being computed); a larger one on the pool.  Either way
    every file and every folder up to the root is flushed and every checksum is the
    file's."""
    import hashlib

    from hcsflow.pipeline import _output
    from hcsflow.pipeline._output import OutputRoot

    rels = [f"images/W{i % 2}/f{i}.bin" for i in range(files)]
    for i, rel in enumerate(rels):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(bytes([i]) * (1000 + i))
    synced: list[tuple[str, str]] = []
    lock = threading.Lock()
    real = os.fsync

    def fsync(fd: int) -> None:
        real(fd)
        with lock:
            synced.append((os.readlink(f"/proc/self/fd/{fd}"), threading.current_thread().name))

    monkeypatch.setattr(os, "fsync", fsync)
    got = OutputRoot.of(tmp_path).seal(rels, fsync=True, inline=inline)
    assert set(got) == set(rels)
    for rel in rels:
        data = (tmp_path / rel).read_bytes()
        assert got[rel] == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    folders = {str(tmp_path), str(tmp_path / "images"), *(str((tmp_path / r).parent) for r in rels)}
    assert {p for p, _ in synced} == {str(tmp_path / r) for r in rels} | folders
    assert len(synced) == len(rels) + len(folders)  # each once
    threads = {t for _, t in synced}
    small = len(rels) + len(folders) <= _output.SEAL_INLINE
    assert small == (files == 3)
    if small or inline:
        assert threads == {threading.current_thread().name}
    else:
        assert all(t.startswith("hcsflow-seal") for t in threads)


@pytest.mark.skipif(not os.path.exists("/proc/self/fd"), reason="reads /proc/self/fd")
@pytest.mark.parametrize("files,inline", [(1, False), (20, False), (20, True)])
def test_a_flush_reaches_every_file_and_its_folder(tmp_path, monkeypatch, files, inline):
    from hcsflow.pipeline._output import OutputRoot

    rels = [f"d{i % 3}/r{i}.json" for i in range(files)]
    for rel in rels:
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_text("{}")
    synced: list[str] = []
    threads: set[str] = set()
    lock = threading.Lock()
    real = os.fsync

    def fsync(fd: int) -> None:
        real(fd)
        with lock:
            synced.append(os.readlink(f"/proc/self/fd/{fd}"))
            threads.add(threading.current_thread().name)

    monkeypatch.setattr(os, "fsync", fsync)
    OutputRoot.of(tmp_path).flush(rels, inline=inline)
    want = {str(tmp_path / r) for r in rels} | {str((tmp_path / r).parent) for r in rels}
    assert sorted(synced) == sorted(want)
    if files == 1 or inline:
        assert threads == {threading.current_thread().name}
    else:
        assert all(t.startswith("hcsflow-seal") for t in threads)


@pytest.mark.skipif(not os.path.exists("/proc/self/fd"), reason="reads /proc/self/fd")
@pytest.mark.parametrize("executor,workers", [("inprocess", 1), ("processes", 2)])
def test_a_local_run_seals_each_well_on_its_commit_thread(
    plate, tmp_path, monkeypatch, executor, workers
):
    """A well of OME-Zarr chunks has more files than a seal keeps in its own thread, yet
    a local run commits it entirely on the commit thread: no thread pool runs beside the
    well being computed.  Every file of every well is still flushed before its record."""
    from hcsflow.pipeline import _commit, _output

    events: list[tuple[str, str, str]] = []
    lock = threading.Lock()
    real_fsync, real_write_json = os.fsync, _commit.write_json

    def fsync(fd: int) -> None:
        real_fsync(fd)
        with lock:
            path = os.readlink(f"/proc/self/fd/{fd}")
            events.append(("fsync", path, threading.current_thread().name))

    def write_json(root, rel, doc, **kw) -> None:
        with lock:
            events.append(("record", rel, threading.current_thread().name))
        real_write_json(root, rel, doc, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(_commit, "write_json", write_json)
    out = tmp_path / "out"
    result = run_pipeline(
        COUNTING,
        plate.root,
        out,
        GlobalPipelineConfig(
            executor=executor,
            num_workers=workers,
            vfs=VFSConfig(materialization_backend="zarr"),
        ),
    )
    assert result.ok
    records = [i for i, e in enumerate(events) if e[0] == "record"]
    assert len(records) == len(plate.true_counts)
    for well in plate.true_counts:
        rec = json.loads((out / ".hcsflow" / "wells" / f"{well}.json").read_text())
        folders = {
            "/".join(r.split("/")[:i]) for r in rec["files"] for i in range(r.count("/") + 1)
        }
        assert len(rec["files"]) + len(folders) > _output.SEAL_INLINE, "too small a well"
        at = next(i for i in records if events[i][1].endswith(f"/{well}.json"))
        flushed = {p: t for kind, p, t in events[:at] if kind == "fsync"}
        for rel in rec["files"]:
            assert str(out / rel) in flushed, f"{rel} was not fsynced before {well}'s record"
            assert flushed[str(out / rel)].startswith("hcsflow-commit"), flushed[str(out / rel)]
