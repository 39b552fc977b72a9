"""How a resume verifies committed wells (``verify="full"`` / ``"quick"``), what runs in
a Dask worker's well (allocation thresholds) and what the fork server preloads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hcsflow.errors import ConfigurationError
from hcsflow.pipeline import FunctionStep, GlobalPipelineConfig, run_pipeline
from hcsflow.pipeline._executors import process_start_method
from hcsflow.testing import make_plate

ROOT = Path(__file__).resolve().parents[2]
COUNTING = [
    FunctionStep(func="gaussian_filter", sigma=1.0),
    FunctionStep(func="count_cells", min_size=20),
    FunctionStep(func="measure_objects"),
]
CFG = GlobalPipelineConfig(executor="inprocess")


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    root = tmp_path_factory.mktemp("plate")
    return make_plate(
        root / "plate", 4, sites=2, size=96, min_cells=4, max_cells=10, radius=5, seed=5
    )


def _partial(plate, out: Path) -> None:
    """A run that committed A01-A03 (A04 left for the resume)."""
    res = run_pipeline(COUNTING, plate.root, out, CFG, wells=["A01", "A02", "A03"])
    assert not res.failed and [w.well for w in res.wells if w.status == "ok"] == [
        "A01",
        "A02",
        "A03",
    ]


def _record(out: Path, well: str) -> dict:
    return json.loads((out / f".hcsflow/wells/{well}.json").read_text())


def _resume(plate, out: Path | str, verify: str, **kw) -> tuple[list[str], list[str], list[str]]:
    """(wells run, wells kept, notes) of a resume (``kw``: more run_pipeline arguments);
    the wells run in plate order (a well that fails verification runs after the
    uncommitted ones, which start while the committed ones are verified)."""
    ran: list[str] = []
    res = run_pipeline(
        COUNTING,
        plate.root,
        out,
        CFG,
        resume=True,
        verify=verify,
        on_well_done=lambda r: ran.append(r.well),
        **kw,
    )
    assert res.ok
    return sorted(ran), res.skipped, res.manifest["run"]["notes"]


def test_commit_records_each_files_identity(plate, tmp_path):
    out = tmp_path / "o"
    _partial(plate, out)
    rec = _record(out, "A01")
    assert set(rec["identity"]) == set(rec["files"])
    for rel, ident in rec["identity"].items():
        st = os.stat(out / rel)
        assert ident == f"{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"
    # the manifest lists size and checksum only, as before
    run_pipeline(COUNTING, plate.root, out, CFG, resume=True)
    files = json.loads((out / "manifest.json").read_text())["files"]
    assert all(set(meta) == {"bytes", "sha256"} for meta in files.values())


@pytest.mark.parametrize("verify", ["full", "quick"])
def test_truncated_rewritten_and_removed_files_are_run_again(plate, tmp_path, verify):
    out = tmp_path / "o"
    _partial(plate, out)
    a01 = out / "images/A01/A01_s1_w1.tif"
    a01.write_bytes(a01.read_bytes()[:100])  # truncated
    a02 = out / "results/count_cells/A02_cell_counts.json"
    raw = a02.read_bytes()
    with open(a02, "r+b") as fh:  # same size, same inode, other bytes
        fh.write(bytes([raw[0] ^ 1]))
    (out / "images/A03/A03_s2_w1.tif").unlink()
    ran, kept, notes = _resume(plate, out, verify)
    assert sorted(ran) == ["A01", "A02", "A03", "A04"] and kept == []
    assert any("A01" in n and "changed" in n for n in notes)
    assert any("A02" in n and "changed" in n for n in notes)
    assert any("A03" in n and "missing" in n for n in notes)


def test_quick_catches_an_in_place_change_whose_mtime_was_set_back(plate, tmp_path):
    out = tmp_path / "o"
    _partial(plate, out)
    path = out / "results/count_cells/A02_cell_counts.json"
    st = os.stat(path)
    raw = path.read_bytes()
    with open(path, "r+b") as fh:
        fh.write(bytes([raw[0] ^ 1]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # the change time still moves
    assert os.stat(path).st_mtime_ns == st.st_mtime_ns
    ran, kept, _ = _resume(plate, out, "quick")
    assert ran == ["A02", "A04"] and kept == ["A01", "A03"]


def test_quick_hashes_touched_and_copied_files_instead_of_running_them(plate, tmp_path):
    out = tmp_path / "o"
    _partial(plate, out)
    os.utime(out / "images/A01/A01_s1_w1.tif")  # touched: same bytes, new times
    ran, kept, notes = _resume(plate, out, "quick")
    assert ran == ["A04"] and kept == ["A01", "A02", "A03"] and notes == []
    # a copy of an interrupted output (new inodes and times) resumes without rerunning
    out2 = tmp_path / "o2"
    _partial(plate, out2)
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(out2), str(copy)], check=True)
    ran, kept, notes = _resume(plate, copy, "quick")
    assert ran == ["A04"] and kept == ["A01", "A02", "A03"] and notes == []


def test_full_reads_what_a_matching_identity_does_not_show(plate, tmp_path):
    """What ``quick`` trusts and ``full`` does not: a file whose size and identity
    match the record (here the record is made to match a changed file, as a change
    below the file system's notice, a bit flip on the medium, would look)."""
    out = tmp_path / "o"
    _partial(plate, out)
    rel = "results/count_cells/A02_cell_counts.json"
    raw = (out / rel).read_bytes()
    with open(out / rel, "r+b") as fh:
        fh.write(bytes([raw[0] ^ 1]))
    rec_path = out / ".hcsflow/wells/A02.json"
    rec = json.loads(rec_path.read_text())
    st = os.stat(out / rel)
    rec["identity"][rel] = f"{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"
    rec_path.write_text(json.dumps(rec))
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(out), str(copy)], check=True)
    ran, kept, _ = _resume(plate, out, "quick")
    assert ran == ["A04"] and "A02" in kept  # trusted: the documented limit of quick
    ran, kept, notes = _resume(plate, copy, "full")
    assert ran == ["A02", "A04"] and any("A02" in n and "changed" in n for n in notes)


def test_quick_hashes_files_of_records_without_identity(plate, tmp_path):
    """Records written before identities were recorded are verified by content."""
    out = tmp_path / "o"
    _partial(plate, out)
    for well in ("A01", "A02", "A03"):
        path = out / f".hcsflow/wells/{well}.json"
        rec = json.loads(path.read_text())
        del rec["identity"]
        path.write_text(json.dumps(rec))
    rel = "results/count_cells/A03_cell_counts.json"
    raw = (out / rel).read_bytes()
    with open(out / rel, "r+b") as fh:
        fh.write(bytes([raw[0] ^ 1]))
    ran, kept, _ = _resume(plate, out, "quick")
    assert ran == ["A03", "A04"] and kept == ["A01", "A02"]


def test_quick_on_object_storage_uses_the_etag(plate, tmp_path, s3_bucket):
    import fsspec

    url, opts = s3_bucket
    out = f"{url}/runs/r"
    run_pipeline(COUNTING, plate.root, out, CFG, storage_options=opts, wells=["A01", "A02"])
    fs, _ = fsspec.core.url_to_fs(url, **opts)
    rec = json.loads(fs.cat_file(f"{out}/.hcsflow/wells/A01.json"))
    assert rec["identity"] and all(v.startswith("etag:") for v in rec["identity"].values())
    rel = "results/count_cells/A02_cell_counts.json"
    raw = fs.cat_file(f"{out}/{rel}")
    fs.pipe_file(f"{out}/{rel}", bytes([raw[0] ^ 1]) + raw[1:])  # same size, new ETag
    ran, kept, _ = _resume(plate, out, "quick", storage_options=opts)
    assert ran == ["A02", "A03", "A04"] and kept == ["A01"]


def test_an_unknown_verify_mode_is_refused_before_any_work(plate, tmp_path):
    with pytest.raises(ConfigurationError, match="verify must be one of full, quick"):
        run_pipeline(COUNTING, plate.root, tmp_path / "o", CFG, resume=True, verify="fast")
    assert not (tmp_path / "o").exists()


def test_cli_resume_verify_quick(plate, tmp_path, capsys):
    from hcsflow.cli import main

    pipe = tmp_path / "pipe.py"
    pipe.write_text(
        "from hcsflow.pipeline import FunctionStep\n"
        "pipeline = [FunctionStep(func='gaussian_filter', sigma=1.0),\n"
        "            FunctionStep(func='count_cells', min_size=20)]\n"
    )
    out = tmp_path / "o"
    base = ["run", str(pipe), plate.root, "--out", str(out), "--executor", "inprocess"]
    assert main([*base, "--wells", "A01,A02"]) == 0
    (out / sorted(_record(out, "A01")["files"])[0]).write_bytes(b"")
    assert main([*base, "--resume", "--verify", "quick"]) == 0
    assert "1 kept from before" in capsys.readouterr().out
    notes = json.loads((out / "manifest.json").read_text())["run"]["notes"]
    assert any("A01" in n for n in notes)
    with pytest.raises(SystemExit):
        main([*base, "--resume", "--verify", "fast"])
    capsys.readouterr()
    # --verify without a run that keeps wells would be silently meaningless
    assert main([*base, "--overwrite", "--verify", "quick"]) == 2
    assert "add --resume" in capsys.readouterr().err


# --------------------------------------------------------------------------- workers


def _run_script(code: str, env: dict[str, str]) -> str:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **env}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
    reason="glibc malloc thresholds",
)
def test_wells_reuse_memory_under_the_nannys_fixed_malloc_thresholds(tmp_path):
    """A Dask nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536: every image-sized
    block is then mapped fresh (one page fault per 4 KiB).  Inside a well, blocks are
    reused; before and after it, the process's own thresholds apply."""
    out = _run_script(
        """
        import os, resource
        import numpy as np
        from hcsflow.pipeline import FunctionStep, GlobalPipelineConfig, run_pipeline
        from hcsflow.testing import make_plate

        def faults():
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

        def churn():
            before = faults()
            for _ in range(200):
                a = np.ones(1 << 17)  # 1 MiB
                del a
            return faults() - before

        inside = []

        def churning_step(stack):
            inside.append(churn())
            return stack

        plate = make_plate(os.environ["WORK"] + "/plate", 1, sites=1, size=32)
        churn()
        outside = churn()
        run_pipeline([FunctionStep(func=churning_step)], plate.root,
                     os.environ["WORK"] + "/out", GlobalPipelineConfig(executor="inprocess"))
        after = churn()
        print(outside, inside[0], after)
        """,
        {"MALLOC_TRIM_THRESHOLD_": "65536", "WORK": str(tmp_path)},
    )
    outside, inside, after = map(int, out.split())
    assert outside > 200 * 200  # the cost being avoided: ~256 faults per MiB
    assert inside < outside / 20
    assert after > 200 * 200  # the process's own setting is back after the well


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
    reason="glibc malloc thresholds",
)
def test_a_fresh_process_stops_giving_its_heap_back_once_it_runs_wells(tmp_path):
    """glibc's dynamic thresholds start low: a process that has freed no large block
    gives the top of its heap back after every burst of image-sized temporaries and
    page-faults it in again.  Running wells takes them where glibc's own rule takes any
    process that has freed a 32 MiB block; the rule itself keeps working."""
    out = _run_script(
        """
        import os, resource
        import numpy as np
        from hcsflow.pipeline import FunctionStep, GlobalPipelineConfig, run_pipeline
        from hcsflow.testing import make_plate

        def churn():
            before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
            for _ in range(50):
                blocks = [np.ones(200_000) for _ in range(6)]  # 6 x 1.6 MB, from the heap
                del blocks
            return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before

        # a 2 MiB mapped block freed: the rule's first step (mmap threshold 2 MiB, trim
        # threshold 4 MiB).  Blocks this large do not fit the holes that compiling the
        # imports' sources leaves in the heap where no bytecode is cached (a fresh clone)
        block = np.ones(1 << 18)
        del block
        before = churn()
        plate = make_plate(os.environ["WORK"] + "/plate", 1, sites=1, size=32)
        run_pipeline([FunctionStep(func="gaussian_filter", sigma=1.0)], plate.root,
                     os.environ["WORK"] + "/out", GlobalPipelineConfig(executor="inprocess"))
        print(before, churn(), churn())
        """,
        {"WORK": str(tmp_path)},
    )
    before, first, later = map(int, out.split())
    assert before > 50 * 2000  # the heap given back and faulted in again, every round
    # after the run: the memory the run freed was given back (malloc_trim) and is
    # faulted in once, then reused
    assert first < before / 10 and later < before / 50


@pytest.mark.parametrize(
    ("executor", "workers", "gives_back"),
    [("inprocess", 1, True), ("threads", 2, True), ("processes", 2, False)],
)
def test_a_run_whose_wells_ran_here_gives_the_freed_memory_back(
    tmp_path, monkeypatch, executor, workers, gives_back
):
    """Wells that ran in this process kept glibc's raised thresholds, so up to 64 MiB
    of freed memory may sit at the top of its heap: the run returns it when it ends.
    Wells that ran in worker processes left nothing here to return."""
    import hcsflow.pipeline._run as run_module

    calls: list[int] = []
    monkeypatch.setattr(run_module, "give_back_free_memory", lambda: calls.append(1))
    plate = make_plate(tmp_path / "plate", 2, sites=1, size=32)
    run_pipeline(
        [FunctionStep(func="gaussian_filter", sigma=1.0)],
        plate.root,
        tmp_path / "out",
        GlobalPipelineConfig(executor=executor, num_workers=workers),
        progress=False,
    )
    assert calls == ([1] if gives_back else [])


def test_fork_server_preload_loads_what_the_functions_load_lazily(tmp_path):
    """After the fork server's imports, running the built-in counting functions and
    writing a compressed TIFF imports no further scikit-image or imagecodecs module."""
    out = _run_script(
        """
        import sys
        import numpy as np
        import hcsflow._forkserver_preload as server  # what the fork server imports
        assert server.FAILED == {}, server.FAILED
        before = set(sys.modules)
        import os
        import tifffile
        from hcsflow.functions import count_cells, measure_objects
        stack = np.zeros((1, 64, 64), np.float32)
        stack[0, 10:20, 10:20] = 1.0
        stack[0, 30:45, 30:45] = 1.0
        img, counts, masks = count_cells(stack, min_size=5, split_touching=True)
        measure_objects(img, masks)
        tifffile.imwrite(os.environ["OUT_TIF"], (stack * 1000).astype(np.uint16),
                         compression="zlib", predictor=True)
        new = sorted(m for m in set(sys.modules) - before
                     if m.split(".")[0] in ("skimage", "imagecodecs"))
        print(",".join(new))
        """,
        {"OUT_TIF": str(tmp_path / "x.tif")},
    )
    assert out.strip() == ""


def test_worker_imports_set_aside_every_failed_import(tmp_path, monkeypatch):
    """What the fork server preloads: an import that raises anything is recorded and
    left out of ``sys.modules`` (so a worker that needs it raises the error itself)."""
    from hcsflow._worker_imports import load

    (tmp_path / "hcsflow_raises_at_import.py").write_text('raise RuntimeError("broken")\n')
    # a module whose lazily loaded attribute raises on first access
    (tmp_path / "hcsflow_lazy_attr.py").write_text(
        "def __getattr__(name):\n    raise OSError('lazy ' + name)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    failed = load(
        ("json", "hcsflow_raises_at_import", "hcsflow_no_such_module"),
        {"hcsflow_lazy_attr": ("fast_fn",), "json": ("dumps",)},
    )
    assert failed == {
        "hcsflow_raises_at_import": "RuntimeError: broken",
        "hcsflow_no_such_module": "ModuleNotFoundError: No module named 'hcsflow_no_such_module'",
        "hcsflow_lazy_attr.fast_fn": "OSError: lazy fast_fn",
    }
    assert "hcsflow_raises_at_import" not in sys.modules


@pytest.mark.skipif(
    process_start_method() != "forkserver", reason="workers start from a fork server"
)
def test_a_preloaded_module_that_raises_at_import_does_not_end_the_fork_server(tmp_path):
    """A module of the workers' preload whose import raises something other than an
    ImportError (a broken build) ended the standard library's fork server, and the run
    died with a bare EOFError.  The fork server now sets it aside; a worker that needs
    the module imports it again and its wells fail with the import's own error."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "cloudpickle.py").write_text('raise RuntimeError("a broken build")\n')
    out = _run_script(
        """
        import os, sys
        import cloudpickle  # this process has the real one
        from hcsflow.functions import gaussian_filter
        from hcsflow.pipeline import FunctionStep, GlobalPipelineConfig, run_pipeline
        from hcsflow.testing import make_plate

        # from here on the broken module comes first: for the fork server (its
        # environment, or this path on the Pythons that pass it on) and for the workers
        os.environ["PYTHONPATH"] = os.environ["SHADOW"] + os.pathsep + os.environ["PYTHONPATH"]
        sys.path.insert(0, os.environ["SHADOW"])
        plate = make_plate(os.environ["WORK"] + "/plate", 3, sites=1, size=32)
        res = run_pipeline([FunctionStep(func=(gaussian_filter, {"sigma": 1.0}))], plate.root,
                           os.environ["WORK"] + "/out",
                           GlobalPipelineConfig(num_workers=2, executor="processes", retries=0))
        print(len(res.wells), len(res.failed))
        print(res.failed[0].error)
        """,
        {"SHADOW": str(shadow), "WORK": str(tmp_path)},
    )
    counts, error = out.strip().split("\n", 1)
    assert counts.split() == ["3", "3"]
    assert "RuntimeError" in error and "a broken build" in error
