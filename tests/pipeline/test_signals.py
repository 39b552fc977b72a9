"""SIGTERM and SIGINT at any moment of ``hcsflow run``, with every executor and backend.

Each trial starts ``hcsflow run`` in a session of its own, signals it at one moment
(a delay, or an event seen from outside: the fork server started, the run record
written, the first or the last well committed, the manifest written), to the process
or to its whole process group (as a terminal's Ctrl-C does), and checks what a user
relies on:

* the command exits within a few seconds with 143 (SIGTERM) or 130 (SIGINT), or 0 when
  the run had already finished;
* stderr holds exactly one line and no traceback;
* no process of the run is left (every process of its session, found through
  ``/proc``: workers, the fork server, the resource tracker, Dask's nannies);
* the output is what the line says: removed (or never written), or kept and resumable:
  ``--resume`` then completes and its images and tables equal a clean run's.

The tests run a few moments per executor.  The full sweep is this file run as a script
(a table of executor x backend x signal x moment, one trial per cell)::

    PYTHONPATH=src python tests/pipeline/test_signals.py            # everything
    PYTHONPATH=src python tests/pipeline/test_signals.py --executors processes \\
        --backends zarr --signals TERM --moments 0.5,1,2,forkserver
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WELLS = 8

PIPELINE = """
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

#: (name, signal, to the whole process group)
SIGNALS = {
    "TERM": (signal.SIGTERM, False),
    "INT-group": (signal.SIGINT, True),
    "TERM-group": (signal.SIGTERM, True),
    "INT": (signal.SIGINT, False),
}
#: moments named by what the run is doing, seen from outside: the command's signal
#: handlers are installed, the fork server started, the run record written, the first
#: and the last well committed, the manifest written
EVENTS = ("handlers", "forkserver", "prepared", "first-commit", "last-commit", "manifest")


def catches_sigterm(pid: int) -> bool:
    """Whether process ``pid`` has a handler for SIGTERM (``SigCgt`` in its status)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    except OSError:
        pass
    return False


# --------------------------------------------------------------------------- processes


def session_processes(sid: int) -> list[tuple[int, str, str]]:
    """Live processes of session ``sid`` (pid, state, command line); zombies excluded."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            state, session = fields[0], int(fields[3])
            if session != sid or state in ("Z", "X"):
                continue
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
            with open(f"/proc/{name}/wchan") as fh:
                cmd = f"[{state} {fh.read().strip()}] {cmd}"
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        out.append((int(name), state, cmd[:160]))
    return out


def _kill_session(sid: int) -> None:
    for pid, _, _ in session_processes(sid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- outputs


def same_outputs(a: Path, b: Path) -> str | None:
    """Why run ``a``'s images and tables differ from run ``b``'s (``None``: equal)."""
    import numpy as np
    import pandas as pd
    import tifffile

    import zarr

    def rels(root: Path, pattern: str) -> list[Path]:
        return sorted(
            p.relative_to(root)
            for p in root.rglob(pattern)
            if ".hcsflow" not in p.parts and not any(q.suffix == ".zarr" for q in p.parents)
        )

    for pattern in ("*.tif", "*.csv"):
        ra, rb = rels(a, pattern), rels(b, pattern)
        if ra != rb:
            return f"{pattern} files differ: {sorted(set(ra) ^ set(rb))[:4]}"
        for rel in ra:
            if pattern == "*.tif":
                if not np.array_equal(tifffile.imread(a / rel), tifffile.imread(b / rel)):
                    return f"{rel} differs"
            else:
                try:
                    pd.testing.assert_frame_equal(pd.read_csv(a / rel), pd.read_csv(b / rel))
                except AssertionError:
                    return f"{rel} differs"
    stores = sorted(p.name for p in a.glob("*.zarr"))
    if stores != sorted(p.name for p in b.glob("*.zarr")):
        return "OME-Zarr stores differ"
    for store in stores:
        ga, gb = zarr.open_group(a / store, mode="r"), zarr.open_group(b / store, mode="r")
        ma = dict(ga.members(max_depth=None))
        mb = dict(gb.members(max_depth=None))
        if sorted(ma) != sorted(mb):
            return f"{store}: members differ: {sorted(set(ma) ^ set(mb))[:4]}"
        for key, node in ma.items():
            other = mb[key]
            if isinstance(node, zarr.Array):
                if not np.array_equal(node[...], other[...]):
                    return f"{store}/{key} differs"
            elif dict(node.attrs) != dict(other.attrs):
                return f"{store}/{key}: attributes differ"
    return None


# --------------------------------------------------------------------------- one trial


@dataclass
class Trial:
    """One signalled run and what came of it."""

    executor: str
    backend: str
    signal: str
    moment: str
    at: str = ""
    """What the run had done when the signal was sent (seen from outside)."""
    code: int | None = None
    seconds: float | None = None
    """From the signal to the exit of the command."""
    stderr: str = ""
    left: list[tuple[int, str, str]] = field(default_factory=list)
    output: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def outcome(self) -> str:
        """A short cell for the sweep's table."""
        if self.ok:
            return f"ok {self.code} {self.output}"
        return "FAIL " + "; ".join(self.problems)


class Harness:
    """A plate, a pipeline file, and the clean run of each backend, in one folder."""

    def __init__(self, workdir: Path, src: Path | None = None, seconds: float = 0.3):
        from hcsflow.testing import make_plate

        self.dir = workdir
        self.src = src or ROOT / "src"
        self.plate = workdir / "plate"
        if not self.plate.exists():
            make_plate(self.plate, WELLS, sites=1, size=64, min_cells=3, max_cells=8, seed=3)
        self.pipe = workdir / "pipe.py"
        self.pipe.write_text(PIPELINE.format(seconds=seconds))
        self.clean: dict[str, Path] = {}
        self.durations: dict[str, float] = {}
        self.count = 0

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(self.src)}

    def command(self, out: Path, executor: str, backend: str, *extra: str) -> list[str]:
        args = [sys.executable, "-m", "hcsflow.cli", "run", str(self.pipe), str(self.plate)]
        args += ["--out", str(out), "--backend", backend, "--executor", executor]
        return args + ["--workers", "1" if executor == "inprocess" else "2", *extra]

    def clean_run(self, backend: str, executor: str = "processes") -> Path:
        """The uninterrupted run of ``backend`` (made once)."""
        if backend not in self.clean:
            out = self.dir / f"clean-{backend}"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.monotonic()
            done = subprocess.run(
                self.command(out, executor, backend),
                env=self.env(),
                capture_output=True,
                text=True,
                timeout=300,
            )
            if done.returncode != 0:
                raise RuntimeError(f"the clean {backend} run failed: {done.stderr}")
            self.durations[backend] = time.monotonic() - t0
            self.clean[backend] = out
        return self.clean[backend]

    def _at(self, out: Path) -> str:
        if (out / "manifest.json").exists():
            return "manifest written"
        wells = out / ".hcsflow" / "wells"
        n = len(list(wells.glob("*.json"))) if wells.exists() else 0
        if n:
            return f"{n}/{WELLS} committed"
        if (out / ".hcsflow" / "run.json").exists():
            return "run record written"
        return "no output yet"

    def _wait_event(self, p: subprocess.Popen, out: Path, event: str, timeout: float) -> bool:
        wells = out / ".hcsflow" / "wells"

        def seen() -> bool:
            if event == "handlers":
                return catches_sigterm(p.pid)
            if event == "forkserver":
                return any("forkserver" in c for _, _, c in session_processes(p.pid))
            if event == "prepared":
                return (out / ".hcsflow" / "run.json").exists()
            if event in ("first-commit", "last-commit"):
                n = len(list(wells.glob("*.json"))) if wells.exists() else 0
                return n >= (1 if event == "first-commit" else WELLS)
            if event == "manifest":
                return (out / "manifest.json").exists()
            raise ValueError(event)

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if p.poll() is not None:
                return False
            if seen():
                return True
            time.sleep(0.002)
        return False

    def trial(
        self,
        executor: str,
        backend: str,
        sig: str,
        moment: str,
        *,
        exit_within: float = 15.0,
        verify: bool = True,
    ) -> Trial:
        """Run, signal at ``moment`` (seconds or an event of :data:`EVENTS`), check."""
        signum, group = SIGNALS[sig]
        self.count += 1
        out = self.dir / f"run-{self.count}"
        shutil.rmtree(out, ignore_errors=True)
        t = Trial(executor, backend, sig, moment)
        p = subprocess.Popen(
            self.command(out, executor, backend),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env(),
            start_new_session=True,
        )
        sid = p.pid
        try:
            if moment in EVENTS:
                if not self._wait_event(p, out, moment, timeout=120):
                    t.at = "event not seen (the run ended first)"
            else:
                deadline = time.monotonic() + float(moment)
                while time.monotonic() < deadline and p.poll() is None:
                    time.sleep(0.002)
            if not t.at:
                t.at = self._at(out)
            finished_before = p.poll() is not None
            t0 = time.monotonic()
            if not finished_before:
                if group:
                    os.killpg(sid, signum)
                else:
                    os.kill(sid, signum)
            try:
                _, t.stderr = p.communicate(timeout=exit_within)
            except subprocess.TimeoutExpired:
                t.problems.append(f"still running {exit_within:.0f} s after the signal")
                t.left = session_processes(sid)
                _kill_session(sid)
                p.communicate(timeout=30)
                return t
            t.code = p.returncode
            t.seconds = time.monotonic() - t0
            expected = 0 if finished_before else 128 + signum
            if t.code not in (expected, 0, 128 + signum):
                t.problems.append(f"exit status {t.code}, not {expected}")
            # the run's processes exit with it, or within moments (a reaped worker)
            deadline = time.monotonic() + 3.0
            while True:
                t.left = session_processes(sid)
                if not t.left or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            if t.left:
                t.problems.append(f"{len(t.left)} processes left: {t.left}")
            lines = [ln for ln in t.stderr.splitlines() if ln.strip()]
            if t.code == 0:
                if lines:
                    t.problems.append(f"stderr of a finished run: {lines[:3]}")
            elif len(lines) != 1 or "Traceback" in t.stderr:
                t.problems.append(f"{len(lines)} stderr lines: {lines[:6]}")
            said = [ln for ln in lines if ln.startswith(("hcsflow run:", "hcsflow:"))]
            self._check_output(t, out, said[-1] if said else "", verify)
        finally:
            if p.poll() is None:
                _kill_session(sid)
                p.communicate(timeout=30)
        if t.ok:
            shutil.rmtree(out, ignore_errors=True)
        else:
            (self.dir / f"run-{self.count}.stderr").write_text(t.stderr)
        return t

    def _check_output(self, t: Trial, out: Path, line: str, verify: bool) -> None:
        if t.code == 0:
            t.output = "finished"
            kept = True
        elif "was removed" in line or "nothing was written" in line:
            t.output = "removed"
            kept = False
        elif "kept and is resumable" in line:
            t.output = "resumable"
            kept = True
        elif "output" in line and "complete" in line:
            t.output = "complete"
            kept = True
        else:
            t.problems.append(f"the line says neither kept nor removed: {line!r}")
            return
        if not kept:
            if out.exists() and any(out.iterdir()):
                t.problems.append(f"the line says removed, but {out} holds files")
            return
        if not out.exists():
            t.problems.append(f"the line says kept, but {out} does not exist")
            return
        if not verify:
            return
        if t.output != "finished":
            done = subprocess.run(
                self.command(out, "inprocess", t.backend, "--resume"),
                env=self.env(),
                capture_output=True,
                text=True,
                timeout=300,
            )
            if done.returncode != 0:
                t.problems.append(f"--resume failed: {done.stderr.strip()[-300:]}")
                return
        why = same_outputs(out, self.clean_run(t.backend))
        if why is not None:
            t.problems.append(f"outputs differ from a clean run: {why}")


# --------------------------------------------------------------------------- tests


def _have_dask() -> bool:
    import importlib.util

    return importlib.util.find_spec("distributed") is not None


@contextlib.contextmanager
def sigint_inherited() -> Iterator[None]:
    """Children get Ctrl-C's usual disposition even where this process ignores it.

    A shell starts background jobs with SIGINT ignored, and children inherit that;
    a run started from such a job would never see the SIGINT these trials send.
    """
    old = signal.getsignal(signal.SIGINT)
    if old is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    if not sys.platform.startswith("linux"):
        pytest.skip("the checks read /proc")
    with sigint_inherited():
        yield Harness(tmp_path_factory.mktemp("signals"))


def _expect_ok(t: Trial) -> None:
    assert t.ok, f"{t.executor}/{t.backend}/{t.signal}@{t.moment} ({t.at}): {t.problems}"


@pytest.mark.parametrize("backend", ["zarr", "disk"])
@pytest.mark.parametrize(
    ("sig", "moment"),
    [
        ("TERM", "first-commit"),
        ("INT-group", "first-commit"),
        ("TERM-group", "forkserver"),
        ("INT-group", "0.8"),
    ],
)
def test_processes(harness: Harness, backend: str, sig: str, moment: str) -> None:
    _expect_ok(harness.trial("processes", backend, sig, moment))


@pytest.mark.parametrize(
    ("executor", "sig", "moment"),
    [
        ("threads", "TERM", "first-commit"),
        ("threads", "INT-group", "prepared"),
        ("inprocess", "INT-group", "first-commit"),
        ("inprocess", "TERM", "last-commit"),
    ],
)
def test_threads_and_inprocess(harness: Harness, executor: str, sig: str, moment: str) -> None:
    _expect_ok(harness.trial(executor, "zarr", sig, moment))


@pytest.mark.parametrize(
    ("backend", "sig", "moment"),
    [
        ("disk", "TERM", "first-commit"),
        ("disk", "INT-group", "1.5"),
        # every worker gets the SIGTERM itself and dies by it: the Blosc lock of its
        # zarr writes must not be left for the resource tracker to report
        ("zarr", "TERM-group", "first-commit"),
    ],
)
def test_dask_local_cluster(harness: Harness, backend: str, sig: str, moment: str) -> None:
    if not _have_dask():
        pytest.skip("needs dask.distributed")
    _expect_ok(harness.trial("dask", backend, sig, moment))


@pytest.mark.parametrize("sig", ["TERM", "INT-group"])
def test_signal_while_the_command_starts(harness: Harness, sig: str) -> None:
    t = harness.trial("processes", "disk", sig, "handlers")
    _expect_ok(t)
    assert t.output == "removed" and "nothing was written" in t.stderr


def test_blosc_lock_of_a_worker_is_not_tracked() -> None:
    # a fresh interpreter with the fork server's start method, as a worker is
    code = """
import multiprocessing
multiprocessing.set_start_method("forkserver")
from multiprocessing import resource_tracker
seen = []
resource_tracker.register = lambda name, rtype: seen.append((name, rtype))
from hcsflow.pipeline._executors import _untracked_blosc_lock
import numcodecs.blosc as blosc
_untracked_blosc_lock()
lock = blosc.get_mutex()
with lock:
    pass
blosc.compress(bytes(1000), b"lz4", 5, blosc.SHUFFLE)
print(type(lock).__name__, lock._semlock.name, seen)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    # the lock is a process lock all the same, unlinked at once, never registered
    assert out.stdout.split() == ["Lock", "None", "[]"]


# --------------------------------------------------------------------------- the sweep


def sweep(
    h: Harness,
    executors: Sequence[str],
    backends: Sequence[str],
    signals: Sequence[str],
    moments: Sequence[str] | None,
    report: Callable[[Trial], None],
) -> list[Trial]:
    """One trial per executor x backend x signal x moment."""
    trials = []
    for backend in backends:
        h.clean_run(backend)
        span = h.durations[backend]
        times = moments or [
            *EVENTS,
            *(f"{x:.2f}" for x in (0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)),
            *(f"{x:.2f}" for x in (2.25, 2.5, 2.75, 3.0, 3.5, 4.0, 5.0)),
            *(f"{span * f:.2f}" for f in (0.9, 1.0)),
        ]
        for executor in executors:
            for sig in signals:
                for moment in times:
                    if moment == "forkserver" and executor != "processes":
                        continue
                    t = h.trial(executor, backend, sig, moment)
                    report(t)
                    trials.append(t)
    return trials


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sweep and print one table row per trial."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--executors", default="processes,threads,inprocess,dask")
    ap.add_argument("--backends", default="zarr,disk")
    ap.add_argument("--signals", default=",".join(SIGNALS))
    ap.add_argument("--moments", default=None, help="seconds or events, comma-separated")
    ap.add_argument("--src", default=None, help="the hcsflow sources to run (default: ./src)")
    ap.add_argument("--seconds", type=float, default=0.3, help="time each well sleeps")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    executors = args.executors.split(",")
    if "dask" in executors and not _have_dask():
        executors.remove("dask")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="hcsflow-signals-"))
    workdir.mkdir(parents=True, exist_ok=True)
    h = Harness(workdir, Path(args.src).resolve() if args.src else None, args.seconds)
    print("| executor | backend | signal | moment | state when signalled | outcome |")
    print("|---|---|---|---|---|---|")

    def report(t: Trial) -> None:
        took = f" in {t.seconds:.1f} s" if t.seconds is not None else ""
        cell = t.outcome() + (took if t.ok else "")
        row = [t.executor, t.backend, t.signal, t.moment, t.at, cell.replace("|", "/")]
        print("| " + " | ".join(row) + " |", flush=True)

    with sigint_inherited():
        trials = sweep(
            h,
            executors,
            args.backends.split(","),
            args.signals.split(","),
            args.moments.split(",") if args.moments else None,
            report,
        )
    bad = [t for t in trials if not t.ok]
    print(f"\n{len(trials) - len(bad)} of {len(trials)} trials ok; work folder {workdir}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
