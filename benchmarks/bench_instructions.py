"""Pipeline cost counted, not timed: instructions and cache misses per well under callgrind.

The wall-clock rows of ``bench_pipeline`` compare hcsflow with a hand-written loop in
separate processes.  On a shared or virtual machine the speed of a core drifts by 10-30%
over seconds to minutes, so a ratio of wall times can move by more than the difference
it is meant to show.  This benchmark measures the same comparison without a clock:
valgrind's callgrind counts every instruction each side executes (all threads, the
commits' checksums included) and simulates the caches, so its figures are the same on
every run of the same code, whatever else the machine does.

Protocol: each side (hcsflow's ``run_pipeline`` with the default configuration and one
worker, in-process; the hand-written loop of ``bench_pipeline``) runs in its own process
under ``valgrind --tool=callgrind --instr-atstart=no``: two runs of a 4-well plate
uninstrumented (imports, caches, the allocator's thresholds), then instrumentation on
(``callgrind_control -i on``), one run of the measured plate, a dump, instrumentation
off.  Both sides' outputs are checked equal.  The measured plates have 16 and 64 wells;
the 16-well runs also simulate a cache the size of this machine's level-2 cache (the
last level the simulation models is set to it), whose misses are what a working set
larger than the core's own cache costs.  What the counts do not see: waiting (fsync,
locks), the kernel (page faults, system calls), and how threads share the cores.

The rows report instructions per well and the ratio hcsflow / hand-written, and where
hcsflow's extra instructions go, grouped by library.  Needs ``valgrind`` (``make bench``
installs it); about 15 minutes on 2 cores.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks._common import print_table, write_results

#: measured plates (wells) and whether the run also simulates the caches
PLATES = ((16, True), (64, False))
#: ``HCSFLOW_BENCH_INSTR_WELLS=256`` (comma-separated) counts those plates instead, with
#: no cache simulation, into ``results/instructions-<wells>.json``: a larger plate takes
#: tens of minutes under callgrind, too long for every ``make bench``
_CHOSEN = os.environ.get("HCSFLOW_BENCH_INSTR_WELLS", "").strip()
WARM_WELLS = 4

_DRIVER = r"""
import os, shutil, subprocess, sys
from pathlib import Path
import benchmarks.bench_pipeline as B
who, warm, plate, out = sys.argv[1:5]
def run(p, o):
    shutil.rmtree(o, ignore_errors=True)
    B.run_side(who, p, Path(o), 1)
for _ in range(2):
    run(warm, out + "-warm")
pid = str(os.getpid())
subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
run(plate, out)
subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True)
"""


def _l2_bytes() -> int:
    """Size of this machine's level-2 data cache (sysfs), 2 MiB where it is not found."""
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(base.glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        if level == "2" and kind in ("Unified", "Data"):
            m = re.fullmatch(r"(\d+)([KM]?)", size)
            if m:
                return int(m.group(1)) * {"": 1, "K": 1024, "M": 1024 * 1024}[m.group(2)]
    return 2 * 1024 * 1024


def _callgrind(who: str, warm: str, plate: str, out: Path, cache: bool) -> dict[str, Any]:
    """Run one side under callgrind; its event totals and Ir by library."""
    work = out.parent / f"cg-{out.name}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={work}/callgrind.out.%p",
    ]
    if cache:
        cmd += ["--cache-sim=yes", f"--LL={_l2_bytes()},16,64"]
    cmd += [sys.executable, "-c", _DRIVER, who, warm, plate, str(out)]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"callgrind run of the {who} side failed:\n{proc.stderr[-3000:]}")
    dumps = sorted(work.glob("callgrind.out.*.1"))
    if len(dumps) != 1:
        raise RuntimeError(f"expected one callgrind dump in {work}, found {dumps}")
    return _parse(dumps[0])


def _parse(dump: Path) -> dict[str, Any]:
    """Totals of a callgrind dump and its self cost (first event, Ir) by object file."""
    events: list[str] = []
    totals: list[int] = []
    by_obj: dict[str, int] = {}
    objs: dict[str, str] = {}
    current = "?"
    with open(dump) as fh:
        for line in fh:
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith("totals:"):
                totals = [int(x) for x in line.split()[1:]]
            elif line.startswith(("ob=", "cob=")):
                # "ob=(id) name" defines an id (so may a callee's "cob="); "ob=(id)" reuses it
                m = re.match(r"c?ob=\((\d+)\)(?: (.*))?", line.strip())
                name = line.split("=", 1)[1].strip()
                if m:
                    if m.group(2):
                        objs[m.group(1)] = m.group(2)
                    name = objs.get(m.group(1), "?")
                if line.startswith("ob="):
                    current = name
            elif line.startswith("calls="):
                # the line after it is the call's inclusive cost, not a self cost
                next(fh, None)
            elif line[:1].isdigit() or line[:1] in "+-*":
                parts = line.split()
                if len(parts) >= 2 and parts[1].lstrip("-").isdigit():
                    by_obj[current] = by_obj.get(current, 0) + int(parts[1])
    if not events or not totals:
        raise RuntimeError(f"{dump} has no totals")
    return {"totals": dict(zip(events, totals, strict=False)), "by_obj": by_obj}


def _library(obj: str) -> str:
    """A readable group name for an object file."""
    name = os.path.basename(obj)
    for key, label in (
        ("libpython", "Python interpreter"),
        ("_nd_image", "scipy.ndimage"),
        ("_ni_label", "scipy.ndimage"),
        ("libdeflate", "zlib encoding (libdeflate)"),
        ("libz", "zlib encoding (libz)"),
        ("libcrypto", "sha256 (OpenSSL)"),
        ("_multiarray_umath", "numpy"),
        ("libc.so", "libc (memset, memcpy, malloc)"),
        ("ld-linux", "dynamic loader"),
        ("skimage", "scikit-image"),
        ("pandas", "pandas"),
        ("tifffile", "tifffile"),
    ):
        if key in name or key in obj:
            return label
    return "other"


def _grouped(by_obj: dict[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for obj, ir in by_obj.items():
        label = _library(obj)
        out[label] = out.get(label, 0) + ir
    return out


def main() -> None:
    """Count both sides under callgrind, print a table, write results/instructions.json."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit(
            "bench_instructions needs valgrind (callgrind); `make bench` installs it "
            "(apt-get install valgrind)"
        )
    from benchmarks.bench_pipeline import SITES, SIZE, _same_outputs
    from hcsflow.testing import make_plate

    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="hcsflow-bench-instr-"))
    rows: list[dict[str, Any]] = []
    try:
        warm = make_plate(tmp / "warm", WARM_WELLS, sites=SITES, size=SIZE, seed=11, touching=0.3)
        plates = (
            tuple((int(w), False) for w in _CHOSEN.split(",") if w.strip()) if _CHOSEN else PLATES
        )
        for wells, cache in plates:
            plate = make_plate(
                tmp / f"p{wells}", wells, sites=SITES, size=SIZE, seed=12, touching=0.3
            )
            outs = {who: tmp / f"{who}-{wells}" for who in ("hand", "hcsflow")}
            # valgrind runs one thread at a time: the two sides use both cores
            with ThreadPoolExecutor(2) as pool:
                futs = {
                    who: pool.submit(_callgrind, who, str(warm.root), str(plate.root), out, cache)
                    for who, out in outs.items()
                }
                got = {who: f.result() for who, f in futs.items()}
            _same_outputs(outs["hcsflow"], outs["hand"])
            rows.extend(_rows(wells, got))
            print(f"  {wells} wells: done", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    minutes = (time.perf_counter() - t0) / 60
    print_table("pipeline cost counted under callgrind (1 worker vs hand-written loop)", rows)
    name = "instructions-" + "-".join(str(w) for w, _ in plates) if _CHOSEN else "instructions"
    write_results(name, rows, minutes=round(minutes, 1))


def _info_row(benchmark: str, ours: float, base: float, detail: str) -> dict[str, Any]:
    """A results row that informs (no target): hcsflow's figure against the baseline's."""
    return {
        "benchmark": benchmark,
        "hcsflow": ours,
        "baseline": base,
        "ratio": ours / base,
        "target": "(info)",
        "ok": "-",
        "detail": detail,
    }


def _rows(wells: int, got: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    hc, hand = got["hcsflow"], got["hand"]
    ir_h, ir_b = hc["totals"]["Ir"], hand["totals"]["Ir"]
    gh, gb = _grouped(hc["by_obj"]), _grouped(hand["by_obj"])
    extra = {k: gh.get(k, 0) - gb.get(k, 0) for k in set(gh) | set(gb)}
    top = sorted(extra.items(), key=lambda kv: -abs(kv[1]))[:6]
    where = ", ".join(f"{k} {v / wells / 1e6:+.1f}M" for k, v in top)
    rows = [
        _info_row(
            f"{wells} wells: instructions per well, 1 worker vs hand-written loop",
            ir_h / wells / 1e6,
            ir_b / wells / 1e6,
            "millions of instructions per well, all threads (callgrind); "
            f"difference per well by library: {where}",
        )
    ]
    if "DLmr" in hc["totals"]:
        lh = hc["totals"]["DLmr"] + hc["totals"]["DLmw"] + hc["totals"].get("ILmr", 0)
        lb = hand["totals"]["DLmr"] + hand["totals"]["DLmw"] + hand["totals"].get("ILmr", 0)
        d1h = hc["totals"]["D1mr"] + hc["totals"]["D1mw"]
        d1b = hand["totals"]["D1mr"] + hand["totals"]["D1mw"]
        rows.append(
            _info_row(
                f"  same, misses of a {_l2_bytes() // 1024} KiB last-level cache",
                lh / wells / 1e3,
                lb / wells / 1e3,
                "thousands per well (simulated, the size of this machine's level-2 "
                f"cache); level-1 data misses {d1h / wells / 1e6:.2f}M vs "
                f"{d1b / wells / 1e6:.2f}M per well (ratio {d1h / d1b:.3f})",
            )
        )
    return rows


if __name__ == "__main__":
    main()
