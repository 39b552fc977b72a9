"""Runs that survive: per-well commits, resume, re-running failed wells and subsets, a
changed pipeline refused, object storage (moto S3 on 127.0.0.1), a Dask cluster losing a
worker, the client killed, SIGTERM/SIGINT, and plain scripts with process workers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from hcsflow.errors import PipelineError, RunDirectoryError
from hcsflow.pipeline import FunctionStep, GlobalPipelineConfig, VFSConfig, run_pipeline
from hcsflow.testing import make_plate

ROOT = Path(__file__).resolve().parents[2]
COUNTING = [
    FunctionStep(func="gaussian_filter", sigma=1.0),
    FunctionStep(func="count_cells", min_size=20),
    FunctionStep(func="measure_objects"),
]


def cfg(**kw):
    kw.setdefault("executor", "inprocess")
    return GlobalPipelineConfig(**kw)


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    root = tmp_path_factory.mktemp("plate")
    return make_plate(
        root / "plate", 4, sites=2, size=96, min_cells=4, max_cells=10, radius=5, seed=5
    )


def assert_same_outputs(a: Path, b: Path) -> int:
    """Every image, label image and table of run ``a`` equals run ``b``'s; returns a count."""
    checked = 0
    tifs = sorted(p.relative_to(a) for p in a.rglob("*.tif"))
    assert tifs == sorted(p.relative_to(b) for p in b.rglob("*.tif"))
    for rel in tifs:
        np.testing.assert_array_equal(tifffile.imread(a / rel), tifffile.imread(b / rel))
        checked += 1
    tables = sorted(p.relative_to(a) for p in a.rglob("*.csv"))
    assert tables == sorted(p.relative_to(b) for p in b.rglob("*.csv"))
    for rel in tables:
        pd.testing.assert_frame_equal(pd.read_csv(a / rel), pd.read_csv(b / rel))
        checked += 1
    for store in sorted(p.relative_to(a) for p in a.glob("*.zarr")):
        from hcsflow.storage import open_image, open_plate, read_labels

        pa, pb = open_plate(str(a / store)), open_plate(str(b / store))
        assert pa.wells == pb.wells
        for well in pa.wells:
            for field in range(pa.field_count or 1):
                for reader in (open_image, lambda s, w, f: read_labels(s, w, f, "masks")):
                    np.testing.assert_array_equal(
                        np.asarray(reader(str(a / store), well, field)[...]),
                        np.asarray(reader(str(b / store), well, field)[...]),
                    )
                    checked += 1
    return checked


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


# --------------------------------------------------------------------------- commits


def test_each_well_is_committed_with_checksums(plate, tmp_path):
    out = tmp_path / "o"
    res = run_pipeline(COUNTING, plate.root, out, cfg())
    assert res.ok
    for well in ("A01", "A04"):
        rec = json.loads((out / f".hcsflow/wells/{well}.json").read_text())
        assert rec["status"] == "ok" and rec["well"] == well
        assert f"images/{well}/{well}_s1_w1.tif" in rec["files"]
        assert f"results/count_cells/{well}_cell_counts.json" in rec["files"]
        for rel, meta in rec["files"].items():
            import hashlib

            assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == meta["sha256"]
    m = manifest(out)
    assert "cell_counts.csv" in m["files"] and "images/A02/A02_s2_w1.tif" in m["files"]
    assert m["run"]["mode"] == "new" and m["run"]["wells_run"] == ["A01", "A02", "A03", "A04"]


def test_resume_runs_uncommitted_wells_while_it_verifies_the_committed_ones(
    plate, tmp_path, monkeypatch
):
    """Reading back every committed file of a large plate takes a while: the wells that
    must run anyway do not wait for it."""
    import threading

    from hcsflow.pipeline import _run

    out = tmp_path / "o"
    run_pipeline(COUNTING, plate.root, out, cfg(), wells=["A01", "A02", "A03"])
    a04_done = threading.Event()
    waited: list[bool] = []
    real = _run.verify_records

    def slow_verify(*args, **kw):
        # the checks end only once A04 has run (or give up after 30 s)
        waited.append(a04_done.wait(30))
        return real(*args, **kw)

    monkeypatch.setattr(_run, "verify_records", slow_verify)

    def done(r):
        if r.well == "A04":
            a04_done.set()

    res = run_pipeline(COUNTING, plate.root, out, cfg(), resume=True, on_well_done=done)
    assert waited == [True]
    assert res.ok and res.skipped == ["A01", "A02", "A03"]
    assert [w.well for w in res.wells] == ["A01", "A02", "A03", "A04"]


def test_resume_skips_verified_wells_and_reruns_tampered_ones(plate, tmp_path):
    clean = tmp_path / "clean"
    run_pipeline(COUNTING, plate.root, clean, cfg())
    out = tmp_path / "o"
    run_pipeline(COUNTING, plate.root, out, cfg(), wells=["A01", "A02", "A03"])
    m = manifest(out)
    assert m["wells"]["A04"]["status"] == "not_run" and m["summary"]["wells_not_run"] == 1
    # a committed file changed behind hcsflow's back: its well is run again
    tifffile.imwrite(out / "images/A02/A02_s1_w1.tif", np.zeros((96, 96), np.float32))
    ran = []
    res = run_pipeline(
        COUNTING, plate.root, out, cfg(), resume=True, on_well_done=lambda r: ran.append(r.well)
    )
    # the uncommitted well runs while the committed ones are verified; A02, found
    # changed, runs after it
    assert res.ok and ran == ["A04", "A02"] and res.skipped == ["A01", "A03"]
    assert any("A02" in n and "changed" in n for n in manifest(out)["run"]["notes"])
    assert assert_same_outputs(out, clean) > 20


def _tiny_plate(root: Path, values: dict[str, int]) -> Path:
    """One 8x8 site per well, every pixel of well ``w`` equal to ``values[w]``."""
    root.mkdir()
    for w, v in values.items():
        tifffile.imwrite(root / f"{w}_s1_w1.tif", np.full((8, 8), v, np.uint16))
    return root


def test_rerun_failed_and_subset_of_wells(tmp_path):
    root = _tiny_plate(tmp_path / "p", {"A01": 0, "A02": 5, "A03": 0})
    flag = tmp_path / "detector-broken"
    flag.touch()
    step = FunctionStep(func=_fails_while_flag, flag=str(flag))
    res = run_pipeline([step], str(root), tmp_path / "o", cfg())
    assert [w.status for w in res.wells] == ["ok", "failed", "ok"]
    assert not (tmp_path / "o/images/A02").exists()  # a failed well leaves no files
    flag.unlink()
    seen_manifest = []
    ran = []
    res = run_pipeline(
        [step],
        str(root),
        tmp_path / "o",
        cfg(),
        rerun_failed=True,
        on_well_done=lambda r: (
            ran.append(r.well),
            seen_manifest.append((tmp_path / "o/manifest.json").exists()),
        ),
    )
    assert res.ok and ran == ["A02"]
    assert seen_manifest == [False]  # while wells change, the run is not presented as done
    assert (tmp_path / "o/images/A02/A02_s1_w1.tif").is_file()
    # --wells runs exactly those wells again, whatever their state
    res = run_pipeline([step], str(root), tmp_path / "o", cfg(), wells=["a3"])
    assert res.ok and manifest(tmp_path / "o")["run"]["wells_run"] == ["A03"]
    with pytest.raises(PipelineError, match=r"wells \['H12'\] are not wells of this run"):
        run_pipeline([step], str(root), tmp_path / "o", cfg(), wells=["H12"])


def _fails_while_flag(stack, flag):
    if stack.mean() > 0 and os.path.exists(flag):
        raise RuntimeError("detector saturated")
    return stack


def test_resume_with_a_changed_pipeline_is_refused(plate, tmp_path):
    out = tmp_path / "o"
    run_pipeline(COUNTING, plate.root, out, cfg(), wells=["A01"])
    changed = [FunctionStep(func="gaussian_filter", sigma=2.0), *COUNTING[1:]]
    with pytest.raises(RunDirectoryError, match=r"kwargs\.sigma: 1\.0 -> 2\.0"):
        run_pipeline(changed, plate.root, out, cfg(), resume=True)
    with pytest.raises(RunDirectoryError, match="materialization_backend: 'disk' -> 'zarr'"):
        run_pipeline(
            COUNTING,
            plate.root,
            out,
            cfg(vfs=VFSConfig(materialization_backend="zarr")),
            resume=True,
        )
    # how wells run may change; what they compute may not
    res = run_pipeline(
        COUNTING, plate.root, out, cfg(executor="threads", num_workers=2), resume=True
    )
    assert res.ok and res.skipped == ["A01"]
    with pytest.raises(RunDirectoryError, match="holds no run"):
        run_pipeline(COUNTING, plate.root, tmp_path / "empty", cfg(), resume=True)


def test_zarr_run_resumes_to_the_same_plate(plate, tmp_path):
    zcfg = cfg(vfs=VFSConfig(materialization_backend="zarr"))
    clean, out = tmp_path / "clean", tmp_path / "o"
    run_pipeline(COUNTING, plate.root, clean, zcfg)
    run_pipeline(COUNTING, plate.root, out, zcfg, wells=["A02", "A03"])
    from hcsflow.storage import open_plate

    assert open_plate(str(out / "images.zarr")).wells == ("A02", "A03")
    # a crashed attempt's half-written well is replaced, never listed
    shutil_copy = __import__("shutil").copytree
    shutil_copy(clean / "images.zarr/A/4", out / "images.zarr/A/4")
    res = run_pipeline(COUNTING, plate.root, out, zcfg, resume=True)
    assert res.ok and res.skipped == ["A02", "A03"]
    assert assert_same_outputs(out, clean) > 10


# --------------------------------------------------------------------------- object storage


@pytest.mark.parametrize("backend", ["disk", "zarr"])
def test_run_from_a_local_plate_to_s3(plate, tmp_path, s3_bucket, backend):
    import fsspec

    url, opts = s3_bucket
    config = cfg(executor="threads", num_workers=2, vfs=VFSConfig(materialization_backend=backend))
    res = run_pipeline(COUNTING, plate.root, f"{url}/runs/r1", config, storage_options=opts)
    assert res.ok, res.failed[0].traceback if res.failed else ""
    assert res.output_dir == f"{url}/runs/r1"
    local = tmp_path / "local"
    run_pipeline(COUNTING, plate.root, local, config)
    fs, _ = fsspec.core.url_to_fs(url, **opts)
    copy = tmp_path / "copy"
    fs.get(f"{url}/runs/r1/", str(copy), recursive=True)
    assert assert_same_outputs(copy, local) > 10
    m = json.loads((copy / "manifest.json").read_text())
    assert m["output_dir"] == f"{url}/runs/r1" and m["summary"]["wells_ok"] == 4
    masks = [o for o in m["wells"]["A01"]["outputs"] if o.get("key") == "masks"][0]
    if backend == "zarr":
        assert masks["path"] == "images.zarr/A/1/0/labels/masks"
    else:
        assert masks["path"] == "results/count_cells/A01_masks.tif" and "sha256" in masks
    # the plate and the output both on S3, resumed after a partial run
    fs.put(str(Path(plate.root)) + "/", f"{url}/plates/p1/", recursive=True)
    out2 = f"{url}/runs/r2"
    run_pipeline(COUNTING, f"{url}/plates/p1", out2, config, storage_options=opts, wells=["A01"])
    res = run_pipeline(
        COUNTING, f"{url}/plates/p1", out2, config, storage_options=opts, resume=True
    )
    assert res.ok and res.skipped == ["A01"]
    copy2 = tmp_path / "copy2"
    fs.get(f"{out2}/", str(copy2), recursive=True)
    assert assert_same_outputs(copy2, local) > 10


# --------------------------------------------------------------------------- Dask


def _slow(stack, seconds):
    time.sleep(seconds)
    return stack


def test_dask_scheduler_address_and_a_worker_killed_mid_run(plate, tmp_path):
    pytest.importorskip("distributed")
    from distributed import Client, LocalCluster

    steps = [FunctionStep(func=_slow, seconds=0.6), *COUNTING]
    clean = tmp_path / "clean"
    run_pipeline(steps, plate.root, clean, cfg())
    out = tmp_path / "o"
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0"
        ) as cluster,
        Client(cluster) as client,
    ):
        pids = client.run(os.getpid)
        killed = []

        def kill_one_worker_mid_well() -> None:
            # once a well is running on every worker, SIGKILL one of them
            while not killed:
                tasks = client.processing()
                if sum(len(v) for v in tasks.values()) >= 2:
                    addr = next(a for a, v in tasks.items() if v)
                    time.sleep(0.2)
                    os.kill(pids[addr], signal.SIGKILL)
                    killed.append(addr)
                time.sleep(0.05)

        killer = threading.Thread(target=kill_one_worker_mid_well, daemon=True)
        killer.start()
        res = run_pipeline(
            steps,
            plate.root,
            out,
            cfg(executor="dask", scheduler=cluster.scheduler_address, num_workers=2),
        )
        killer.join(10)
    assert killed, "no worker was killed"
    assert res.ok, [w.error for w in res.failed]
    assert manifest(out)["executor"]["scheduler"].startswith("tcp://127.0.0.1:")
    assert assert_same_outputs(out, clean) > 20


# --------------------------------------------------------------------------- processes


PIPELINE_FILE = """
import time
from hcsflow.pipeline import FunctionStep

def slow(stack, seconds):
    time.sleep(seconds)
    return stack

pipeline = [
    FunctionStep(func=slow, seconds={seconds}),
    FunctionStep(func="gaussian_filter", sigma=1.0),
    FunctionStep(func="count_cells", min_size=20),
    FunctionStep(func="measure_objects"),
]
"""


def _cli(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen(
        [sys.executable, "-m", "hcsflow.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
        **kw,
    )


def _finish(p: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def _wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def _committed(out: Path) -> int:
    return len(list((out / ".hcsflow/wells").glob("*.json"))) if out.exists() else 0


def _descendants(pid: int) -> list:
    psutil = pytest.importorskip("psutil")
    return psutil.Process(pid).children(recursive=True)


def _all_gone(procs, timeout: float = 5.0) -> list:
    psutil = pytest.importorskip("psutil")
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return alive


@pytest.fixture(scope="module")
def big_plate(tmp_path_factory):
    root = tmp_path_factory.mktemp("bigplate")
    return make_plate(
        root / "plate", 8, sites=1, size=96, min_cells=4, max_cells=10, radius=5, seed=7
    )


def test_client_sigkilled_mid_run_then_resume_equals_clean_run(big_plate, tmp_path):
    pipe = tmp_path / "pipe.py"
    pipe.write_text(PIPELINE_FILE.format(seconds=0.4))
    clean = tmp_path / "clean"
    code, _, err = _finish(
        _cli(["run", str(pipe), big_plate.root, "--out", str(clean), "--workers", "2"])
    )
    assert code == 0, err
    out = tmp_path / "o"
    p = _cli(["run", str(pipe), big_plate.root, "--out", str(out), "--workers", "2"])
    _wait_for(lambda: _committed(out) >= 2)
    workers = _descendants(p.pid)
    os.kill(p.pid, signal.SIGKILL)
    _finish(p, 10)
    assert _all_gone(workers, timeout=15) == []  # orphans notice and exit
    assert 2 <= _committed(out) < 8 and not (out / "manifest.json").exists()
    code, _, err = _finish(
        _cli(["run", str(pipe), big_plate.root, "--out", str(out), "--workers", "2"])
    )
    assert code == 2 and "interrupted run" in err
    p = _cli(["run", str(pipe), big_plate.root, "--out", str(out), "--workers", "2", "--resume"])
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 0, stderr
    assert "kept from before" in stdout
    assert assert_same_outputs(out, clean) > 16


@pytest.mark.parametrize(
    ("executor", "signum", "code"),
    [
        ("processes", signal.SIGTERM, 143),
        ("processes", signal.SIGINT, 130),
        ("dask", signal.SIGTERM, 143),
    ],
)
def test_signal_stops_every_process_with_one_line(big_plate, tmp_path, executor, signum, code):
    if executor == "dask":
        pytest.importorskip("distributed")
    pipe = tmp_path / "pipe.py"
    pipe.write_text(PIPELINE_FILE.format(seconds=1.0))
    out = tmp_path / "o"
    # the default output (OME-Zarr): its codecs' locks must not leave a resource-tracker
    # warning as a second stderr line
    p = _cli(
        ["run", str(pipe), big_plate.root, "--out", str(out), "--workers", "2"]
        + ["--executor", executor]
    )
    _wait_for(lambda: _committed(out) >= 1)
    procs = _descendants(p.pid)
    assert len(procs) >= 3  # two workers and the fork server (or the Dask nannies)
    t0 = time.monotonic()
    # SIGINT as a terminal's Ctrl-C sends it: to the whole process group
    if signum == signal.SIGINT:
        os.killpg(p.pid, signum)
    else:
        os.kill(p.pid, signum)
    stdout, stderr = p.communicate(timeout=30)
    assert p.returncode == code, stderr
    assert time.monotonic() - t0 < 10
    assert _all_gone(procs, timeout=5) == []
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    name = signal.Signals(signum).name
    assert f"interrupted by {name}" in lines[0] and "kept and is resumable" in lines[0]
    n = _committed(out)
    assert 1 <= n < 8
    # the next run into the same place reports the partial output
    code, _, err = _finish(_cli(["run", str(pipe), big_plate.root, "--out", str(out)]), 60)
    assert code == 2 and f"interrupted run ({n} of 8 wells committed)" in err


def _run_script(script: Path) -> subprocess.CompletedProcess[str]:
    """``python script`` in its folder, as a user runs a pasted script."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=script.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_readme_example_runs_as_a_plain_script(tmp_path):
    text = (ROOT / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    example = next(b for b in blocks if "run_pipeline(" in b)
    make_plate(tmp_path / "plate", 4, sites=1, size=64, min_cells=2, max_cells=5)
    script = tmp_path / "example.py"
    script.write_text(example + "\nprint('wells ok:', result.ok, len(result.wells))\n")
    assert "__main__" not in example and "num_workers=2" in example
    done = _run_script(script)
    assert done.returncode == 0, done.stderr
    assert "wells ok: True 4" in done.stdout


def test_plain_script_with_its_own_function_and_process_workers(tmp_path):
    make_plate(tmp_path / "plate", 3, sites=1, size=64, min_cells=2, max_cells=5)
    script = tmp_path / "mine.py"
    script.write_text(
        textwrap.dedent(
            """
            import os
            from hcsflow.pipeline import FunctionStep, GlobalPipelineConfig, run_pipeline

            print("script body runs in", os.getpid())

            def invert(stack):
                return stack.max() - stack

            config = GlobalPipelineConfig(num_workers=2, executor="processes")
            result = run_pipeline([FunctionStep(func=invert)], "plate", "out", config)
            print("ok", result.ok, [w.error for w in result.failed])
            """
        )
    )
    done = _run_script(script)
    assert done.returncode == 0, done.stderr
    assert "ok True []" in done.stdout
    assert done.stdout.count("script body runs in") == 1  # never re-run by a worker


def _dies_on_bright(stack):
    if stack.mean() > 0:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.3)
    return stack


def test_a_local_worker_that_dies_fails_its_well_by_name(tmp_path):
    root = _tiny_plate(tmp_path / "p", {"A01": 0, "A02": 5, "A03": 0, "A04": 0})
    res = run_pipeline(
        [FunctionStep(func=_dies_on_bright)],
        str(root),
        tmp_path / "o",
        cfg(executor="processes", num_workers=2, retries=1),
    )
    status = {w.well: w.status for w in res.wells}
    assert status == {"A01": "ok", "A02": "failed", "A03": "ok", "A04": "ok"}
    bad = res.wells[1]
    assert bad.error_type == "WorkerLost"
    assert "killed by SIGKILL" in bad.error and "attempt 2" in bad.error
    assert not (tmp_path / "o/images/A02").exists()
    assert manifest(tmp_path / "o")["wells"]["A02"]["error_type"] == "WorkerLost"
    record = json.loads((tmp_path / "o/.hcsflow/wells/A02.json").read_text())
    assert record["status"] == "failed"  # so that --rerun-failed finds it
    # its first attempt's loss is said; wells that shared the broken pool say why they
    # started again without counting an attempt
    assert bad.attempt == 2 and len(bad.ran_again_after) == 1
    assert "killed by SIGKILL" in bad.ran_again_after[0]
    for w in res.wells:
        if w.well != "A02":
            assert w.attempt == 1
            assert set(w.ran_again_after) <= {
                "its worker was stopped with the pool after another well's worker was lost"
            }


def _slow_or_dies_once(stack, flag):
    value = float(stack.mean())
    if value == 5 and not Path(flag).exists():
        time.sleep(0.5)  # while the other worker is busy with the slow well
        Path(flag).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    if value == 1:
        time.sleep(3.0)  # long enough that both workers have started their wells
    return stack


def test_which_wells_say_they_ran_again_after_a_pool_broke(tmp_path):
    """A02's worker dies while A01 runs on the other worker and A03, A04 wait in the
    pool's queue: A02 says why, A01 says its worker was stopped with the pool, and the
    queued wells, which never started, say nothing."""
    res = _on_two_processes(tmp_path, _slow_or_dies_once, {"A01": 1, "A02": 5, "A03": 0, "A04": 0})
    again = {w.well: (w.attempt, w.ran_again_after) for w in res.wells}
    assert again["A01"] == (
        1,
        ["its worker was stopped with the pool after another well's worker was lost"],
    )
    assert again["A02"][0] == 2 and len(again["A02"][1]) == 1
    assert "killed by SIGKILL" in again["A02"][1][0]
    assert again["A03"] == (1, []) and again["A04"] == (1, [])
    assert [w.well for w in res.ran_again] == ["A01", "A02"]


def _quick_or_dies_once(stack, flag):
    with open(flag + ".runs", "a") as f:
        f.write(f"{float(stack.mean()):g}\n")
    if float(stack.mean()) == 5 and not Path(flag).exists():
        time.sleep(0.5)  # the other well's result is back by then
        Path(flag).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return stack


def test_a_result_back_before_the_pool_broke_is_kept(tmp_path, monkeypatch):
    """A01's result arrives before A02's worker dies, and both are handed over in one
    batch, the broken pool first: A01 keeps its result instead of running again."""
    import concurrent.futures as cf

    real_wait = cf.wait

    def together(fs, timeout=None, return_when=cf.ALL_COMPLETED):
        done, rest = real_wait(fs, timeout, cf.ALL_COMPLETED)

        def broken_first(f):
            return not (f.done() and not f.cancelled() and f.exception() is not None)

        return sorted(done, key=broken_first), rest

    monkeypatch.setattr(cf, "wait", together)
    again = _a02_dies_once(tmp_path, _quick_or_dies_once)
    assert again["A01"] == (1, [])
    assert again["A02"][0] == 2


def _on_two_processes(tmp_path, func, values):
    """Run ``func(stack, flag)`` on a tiny plate of ``values`` on two worker processes,
    one retry; the run's result, checked ok."""
    root = _tiny_plate(tmp_path / "p", values)
    res = run_pipeline(
        [FunctionStep(func=func, flag=str(tmp_path / "died"))],
        str(root),
        tmp_path / "o",
        cfg(executor="processes", num_workers=2, retries=1),
    )
    assert res.ok, [w.error for w in res.failed]
    return res


def _a02_dies_once(tmp_path, func):
    """Run ``func`` on wells A01 (dark) and A02 (bright) on two worker processes; check
    that A01 ran once and A02 twice; (attempt, ran_again_after) of each well."""
    res = _on_two_processes(tmp_path, func, {"A01": 0, "A02": 5})
    assert [w.well for w in res.ran_again] == ["A02"]
    assert sorted((tmp_path / "died.runs").read_text().split()) == ["0", "5", "5"]
    return {w.well: (w.attempt, w.ran_again_after) for w in res.wells}


def _dies_sending_its_result(stack, flag):
    with open(flag + ".runs", "a") as f:
        f.write(f"{float(stack.mean()):g}\n")
    if float(stack.mean()) == 5 and not Path(flag).exists():
        time.sleep(0.5)  # the other well is done by then
        Path(flag).touch()
        from hcsflow.pipeline._commit import WrittenWell

        def die(self, protocol):
            os.kill(os.getpid(), signal.SIGKILL)

        # this worker dies while it sends the finished well's result
        WrittenWell.__reduce_ex__ = die
    return stack


def test_a_well_whose_result_was_lost_on_its_way_says_it_ran_again(tmp_path):
    """A02 finishes, and its worker dies while sending the result: A02 runs again and
    says why, rather than being taken for a well that had not started."""
    again = _a02_dies_once(tmp_path, _dies_sending_its_result)
    assert again["A01"] == (1, [])
    assert again["A02"][0] == 2 and len(again["A02"][1]) == 1
    assert "killed by SIGKILL" in again["A02"][1][0]


_DIES_ONCE = """
import os, signal
from pathlib import Path
from hcsflow.pipeline import FunctionStep

def dies_once(stack, flag):
    # the first worker to run a bright well dies; the well's second attempt runs
    if stack.mean() > 0 and not Path(flag).exists():
        Path(flag).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return stack

pipeline = [FunctionStep(func=dies_once, flag={flag!r})]
"""


def test_cli_says_which_well_ran_again_and_why(tmp_path):
    root = _tiny_plate(tmp_path / "p", {"A01": 0, "A02": 5, "A03": 0})
    pipe = tmp_path / "pipe.py"
    pipe.write_text(_DIES_ONCE.format(flag=str(tmp_path / "died")))
    out = tmp_path / "o"
    code, stdout, err = _finish(
        _cli(
            ["run", str(pipe), str(root), "--out", str(out), "--executor", "processes"]
            + ["--workers", "2", "--retries", "1"]
        )
    )
    assert code == 0, err
    # A02's worker died; wells that shared its broken pool ran again too, and say so
    again = int(re.search(r"0 failed, (\d) ran again", stdout).group(1))
    line = next(x for x in stdout.splitlines() if "well A02 ran again after:" in x)
    assert "killed by SIGKILL" in line
    assert stdout.count(" ran again after: ") == again >= 1
    assert manifest(out)["summary"]["wells_ran_again"] == again
    from hcsflow.cli import main

    assert main(["info", str(out)]) == 0


def test_cli_run_flags(plate, tmp_path, capsys):
    from hcsflow.cli import main

    pipe = tmp_path / "pipe.py"
    pipe.write_text(PIPELINE_FILE.format(seconds=0.0))
    out = tmp_path / "o"
    base = ["run", str(pipe), plate.root, "--out", str(out), "--executor", "inprocess"]
    assert main([*base, "--storage-options", "{nope"]) == 2
    assert "--storage-options is not JSON" in capsys.readouterr().err
    assert main([*base, "--storage-options", "[1]"]) == 2
    assert main([*base, "--wells", "A01,A03"]) == 0
    m = manifest(out)
    assert [w for w, d in m["wells"].items() if d["status"] == "not_run"] == ["A02", "A04"]
    assert main(base) == 2
    assert "interrupted run" not in capsys.readouterr().err  # finished: a previous run
    assert main([*base, "--resume", "--retries", "0"]) == 0
    assert "2 kept from before" in capsys.readouterr().out
    assert manifest(out)["config"]["retries"] == 0


def test_two_runs_starting_in_one_place_at_once(plate, tmp_path, monkeypatch):
    """Both see an empty output; the run record is created exclusively, so one loses."""
    from hcsflow.pipeline import _run

    out = tmp_path / "o"
    real_state = _run._state
    started = []

    def racing_state(root):
        state = real_state(root)
        if not started:  # the other run creates its record between our look and our write
            started.append(True)
            run_pipeline(COUNTING, plate.root, out, cfg(), wells=["A01"])
            __import__("os").remove(out / "manifest.json")
        return state

    monkeypatch.setattr(_run, "_state", racing_state)
    with pytest.raises(RunDirectoryError, match="another run started"):
        run_pipeline(COUNTING, plate.root, out, cfg())


@pytest.mark.parametrize("executor", ["inprocess", "threads"])
def test_python_api_signal_raises_run_interrupted(plate, tmp_path, executor):
    from hcsflow.errors import RunInterrupted

    out = tmp_path / "o"

    def stop_after_first(result) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(RunInterrupted) as info:
        run_pipeline(
            COUNTING,
            plate.root,
            out,
            cfg(executor=executor, num_workers=2),
            on_well_done=stop_after_first,
        )
    exc = info.value
    assert isinstance(exc, KeyboardInterrupt) and exc.exit_code == 143 and exc.kept
    assert "interrupted by SIGTERM" in str(exc) and "\n" not in str(exc)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    res = run_pipeline(COUNTING, plate.root, out, cfg(), resume=True)
    assert res.ok and len(res.skipped) >= 1


def test_interrupted_before_any_commit_removes_the_output(plate, tmp_path, monkeypatch):
    from hcsflow.errors import RunInterrupted
    from hcsflow.pipeline import _run

    def interrupted_well(task):
        os.kill(os.getpid(), signal.SIGINT)
        raise AssertionError("the signal handler raises first")

    # local workers write wells (write_well) and this process commits them; others run
    # run_well: the signal arrives before either commits anything
    monkeypatch.setattr(_run, "write_well", interrupted_well)
    monkeypatch.setattr(_run, "run_well", interrupted_well)
    out = tmp_path / "o"
    with pytest.raises(RunInterrupted, match="no well was committed.*was removed") as info:
        run_pipeline(COUNTING, plate.root, out, cfg())
    assert info.value.exit_code == 130 and info.value.kept is False
    assert not out.exists()


@pytest.mark.parametrize("ending", ["returns", "raises", "interrupted"])
def test_process_workers_have_exited_when_the_run_returns(plate, tmp_path, monkeypatch, ending):
    # the pool is closed in the background while the plate-level files are written;
    # the run still returns (or raises) only once every worker it started has exited
    from hcsflow.errors import RunInterrupted
    from hcsflow.pipeline import _executors, _run

    def broken(results, root):
        if ending == "interrupted":
            os.kill(os.getpid(), signal.SIGTERM)
        raise OSError("the disk is full")

    if ending != "returns":
        monkeypatch.setattr(_run, "_consolidate", broken)
    before = set(_executors._STARTED)
    config = cfg(executor="processes", num_workers=2)
    if ending == "returns":
        assert run_pipeline(COUNTING, plate.root, tmp_path / "o", config).ok
    else:
        error = RunInterrupted if ending == "interrupted" else OSError
        with pytest.raises(error):
            run_pipeline(COUNTING, plate.root, tmp_path / "o", config)
    started = [p for pid, p in _executors._STARTED.items() if pid not in before]
    assert len(started) == 2
    # exitcode reads a status the pool already collected: it does not wait.  An
    # interruption stops the workers with SIGTERM if they have not exited yet.
    codes = [p.exitcode for p in started]
    assert all(code == 0 or (ending == "interrupted" and code == -signal.SIGTERM) for code in codes)


def test_plate_tables_read_local_files_in_order_and_switch_to_threads_when_slow(
    tmp_path, monkeypatch
):
    # local per-well tables are read one after the other (threads cost more than such
    # reads); once a read is slow (a network file system) the rest go to threads
    from hcsflow.pipeline import _output, _run
    from hcsflow.pipeline._output import OutputRoot

    root = OutputRoot.of(tmp_path)
    rels = [f"t{i}.csv" for i in range(12)]
    for i, rel in enumerate(rels):
        if i != 5:
            (tmp_path / rel).write_bytes(f"n\n{i}\n".encode())
    readers: dict[str, str] = {}
    slow_at: list[str] = []
    read = OutputRoot.read_bytes

    def watched(self: OutputRoot, rel: str) -> bytes | None:
        readers[rel] = threading.current_thread().name
        if rel in slow_at:
            time.sleep(1.5 * _output._SLOW_READ_S)
        return read(self, rel)

    # a threshold no read of a tiny file reaches, even on a busy machine
    monkeypatch.setattr(_output, "_SLOW_READ_S", 0.2)
    monkeypatch.setattr(OutputRoot, "read_bytes", watched)
    expected = [None if i == 5 else f"n\n{i}\n".encode() for i in range(12)]
    here = threading.current_thread().name
    assert list(_run._read_ahead(root, rels)) == expected
    assert set(readers.values()) == {here}

    readers.clear()
    slow_at.append("t3.csv")
    assert list(_run._read_ahead(root, rels, depth=4)) == expected
    assert [readers[r] == here for r in rels] == [True] * 4 + [False] * 8


def test_exit_codes_are_read_once_the_pools_thread_has_joined_its_workers(tmp_path, monkeypatch):
    """Reading a forkserver worker's exit code while the pool's own thread joins it
    races (the loser records 255): the lost well's cause is read after that thread."""
    from types import SimpleNamespace

    from hcsflow.pipeline import _executors

    joined = threading.Event()

    def pools_thread():
        time.sleep(0.3)  # still joining its workers when the run asks
        joined.set()

    class Worker:
        @property
        def exitcode(self):
            return -signal.SIGKILL if joined.is_set() else 255

    thread = threading.Thread(target=pools_thread)
    thread.start()
    pool = object.__new__(_executors._ProcessPool)
    pool.executor = SimpleNamespace(_executor_manager_thread=thread, _processes={})
    pool._pid_dir = str(tmp_path)
    (tmp_path / "A01").write_text("424242")
    monkeypatch.setitem(_executors._STARTED, 424242, Worker())
    assert pool.lost(["A01"]) == {"A01": "its worker process (pid 424242) killed by SIGKILL"}
