"""Shared helpers for `make bench`: timing, tables and JSON results."""

from __future__ import annotations

import gc
import json
import os
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
DOCS = Path(__file__).parent.parent / "docs"


def timeit(
    fn: Callable[[], Any],
    *,
    repeat: int = 5,
    number: int = 1,
    setup: Callable[[], Any] | None = None,
) -> float:
    """Best-of-``repeat`` seconds per call of ``fn`` (``number`` calls per repeat)."""
    best = float("inf")
    for _ in range(repeat):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best


def median_time(fn: Callable[[], Any], *, repeat: int = 5) -> float:
    """Median seconds per call of ``fn`` over ``repeat`` calls."""
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def rounds(
    contenders: dict[str, Callable[[], Any]],
    *,
    repeat: int,
    setup: Callable[[str], Any] | None = None,
) -> dict[str, list[float]]:
    """Seconds of every call of each contender over ``repeat`` rounds, paired and alternating.

    Every round runs each contender once, starting one further along the list each
    round, so that no contender always runs first (or right after a given other one)
    and none alone absorbs a noisy spell of the machine.  ``setup(name)`` runs untimed
    before each call, followed by a garbage collection so that no contender pays for
    the garbage of the one before.  A contender that returns a float reports its own
    time (to leave its own setup out); otherwise its whole call is timed.
    """
    names = list(contenders)
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeat):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            if setup is not None:
                setup(name)
            gc.collect()
            t0 = time.perf_counter()
            got = contenders[name]()
            elapsed = time.perf_counter() - t0
            out[name].append(got if isinstance(got, float) else elapsed)
    return out


def summary(samples: list[float], scale: float = 1.0) -> dict[str, float]:
    """Median and interquartile range of ``samples`` times ``scale``."""
    ordered = sorted(s * scale for s in samples)
    if len(ordered) >= 4:
        q1, _, q3 = statistics.quantiles(ordered, n=4)
    else:
        q1, q3 = ordered[0], ordered[-1]
    return {"median": statistics.median(ordered), "p25": q1, "p75": q3}


def load_average() -> list[float]:
    """The 1, 5 and 15-minute load averages, rounded (how busy the machine was)."""
    return [round(x, 2) for x in os.getloadavg()]


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    """Print rows (dicts with the same keys) as an aligned text table."""
    if not rows:
        return
    cols = list(rows[0])
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print(f"\n## {title}")
    print("| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) + " |")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def write_results(name: str, rows: list[dict[str, Any]], **extra: Any) -> Path:
    """Write ``rows`` to ``benchmarks/results/<name>.json`` atomically; return the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "rows": rows,
        **extra,
    }
    target = RESULTS / f"{name}.json"
    _atomic_write(target, json.dumps(payload, indent=2, default=str) + "\n")
    return target


def replace_doc_section(doc: Path, marker: str, text: str) -> None:
    """Replace what lies between ``<!-- marker -->`` and ``<!-- /marker -->`` in ``doc``.

    How the docs quote benchmark results: always the committed results file, rewritten
    by the command that wrote it.
    """
    source = doc.read_text()
    pattern = re.compile(
        rf"(<!-- {re.escape(marker)} -->\n).*?(<!-- /{re.escape(marker)} -->)", re.DOTALL
    )
    if not pattern.search(source):
        raise ValueError(f"{doc} has no <!-- {marker} --> section")
    _atomic_write(doc, pattern.sub(lambda m: m.group(1) + text + m.group(2), source))


def _atomic_write(target: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, target)
