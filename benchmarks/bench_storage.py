"""Storage benchmarks: what users do, against the raw library in the same run.

* **Memory backend, new paths.**  A pipeline saves, loads and deletes paths it has never
  used before.  Through ``FileManager``, in stores already holding 1e3 to 1e6 entries,
  each round saves, loads and deletes 1,000 fresh paths; the same is done with a plain
  dict and with a dict behind an ``RLock`` (the least a thread-safe store costs), and,
  when ``HCSFLOW_BENCH_OPENHCS`` names a Python interpreter with OpenHCS installed, with
  OpenHCS's ``FileManager`` in a subprocess.
* **Listings.**  ``list_files`` and ``list_image_files`` of a folder of 10,000 files on
  each backend, against ``os.scandir`` + ``sorted`` (and, for zarr, zarr-python listing
  the group's members; for the fsspec backend, on fsspec's memory file system, against
  that file system's own ``ls`` + ``sorted``).  "First listing" rows forget the natural
  sort keys before each call; the others list a folder whose names were listed before.
* **Batches.**  ``load_batch``/``save_batch`` of 100 TIFFs of 256x256, 512x512 and
  1024x1024 against a sequential tifffile loop and an 8-thread pool calling tifffile directly;
  writes with the default ``fsync=True`` against the same durable write done by hand
  (temporary file, fsync, rename, directory fsync).  The zarr and memory backends'
  batches against a loop of single calls.
* **Single files.**  Disk TIFF save and load against tifffile.

Contenders alternate round by round (see :func:`benchmarks._common.rounds`); figures
are medians with the interquartile range.  Results go to
``benchmarks/results/storage.json`` and the performance table of ``docs/storage.md``.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import tifffile

import hcsflow
from benchmarks._common import (
    DOCS,
    load_average,
    print_table,
    replace_doc_section,
    rounds,
    summary,
    write_results,
)
from hcsflow import paths as vpaths
from hcsflow.storage import (
    BackendRegistry,
    DiskStorageBackend,
    FileManager,
    FsspecStorageBackend,
    MemoryStorageBackend,
    ZarrStorageBackend,
)
from hcsflow.storage.zarr._listing import TRUST_AFTER_NS

STORE_SIZES = (1_000, 10_000, 100_000, 1_000_000)
NEW_PATHS = 1_000
CHUNK = 100
LISTING = 10_000
BATCH = 100
PEER_ENV = "HCSFLOW_BENCH_OPENHCS"
# HCSFLOW_BENCH_STORAGE_ONLY=zarr: only the zarr backend's rows (see _main_zarr_only)
ONLY_ENV = "HCSFLOW_BENCH_STORAGE_ONLY"
# quick runs while developing: HCSFLOW_BENCH_QUICK=1 (fewer rounds, smaller stores)
QUICK = os.environ.get("HCSFLOW_BENCH_QUICK") == "1"


def _row(
    benchmark: str,
    contender: str,
    samples: list[float],
    reference: str,
    ref_samples: list[float],
    target: str = "",
    unit: str = "us",
    scale: float = 1e6,
) -> dict[str, Any]:
    ours, ref = summary(samples, scale), summary(ref_samples, scale)
    return {
        "benchmark": benchmark,
        "contender": contender,
        "median": ours["median"],
        "p25": ours["p25"],
        "p75": ours["p75"],
        "reference": reference,
        "reference_median": ref["median"],
        "ratio": ours["median"] / ref["median"],
        "unit": unit,
        "target": target,
    }


# ---------------------------------------------------------------------- memory, new paths


class _LockedDict:
    """The least a thread-safe store costs: a dict behind an RLock, called as methods."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._data: dict[str, Any] = {}

    def save(self, data: Any, path: str) -> None:
        with self._lock:
            self._data[path] = data

    def load(self, path: str) -> Any:
        with self._lock:
            return self._data[path]

    def delete(self, path: str) -> None:
        with self._lock:
            del self._data[path]


class _Floor:
    """The memory backend's promises written plainly, for scale: a read-only
    view of an array, a lock around the change, and each file's name in its directory's
    set (the parent found by one ``rpartition`` and one lookup), called as one method.
    No ``FileManager`` layer, no path checks, no refusal of an existing target."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._files: dict[str, Any] = {}
        self._dirs: dict[str, set[str]] = {}

    def mkdir(self, path: str) -> None:
        self._dirs[path] = set()

    def save(self, data: Any, path: str) -> None:
        if isinstance(data, np.ndarray):
            data = data.view()
            data.setflags(False)
        with self._lock:
            parent, _, name = path.rpartition("/")
            self._files[path] = data
            self._dirs[parent].add(name)

    def load(self, path: str) -> Any:
        return self._files[path]  # a dict read is atomic: no lock, as in the backend

    def delete(self, path: str) -> None:
        with self._lock:
            del self._files[path]
            parent, _, name = path.rpartition("/")
            self._dirs[parent].remove(name)


def _new_paths(tag: str, r: int) -> list[str]:
    # fresh string objects every round: nothing about them has been seen or hashed
    return [f"/run/A01/{tag}{r}_s{i % 9}_w{i % 4}_{i:05d}.tif" for i in range(NEW_PATHS)]


def _time_phases(
    save: Callable[[str], Any],
    load: Callable[[str], Any],
    delete: Callable[[str], Any],
    paths: list[str],
) -> tuple[list[float], list[float], list[float]]:
    """Seconds per path of each chunk of :data:`CHUNK` paths, for each phase.

    Timing chunks of about 0.1 ms rather than whole phases keeps the figures of a busy
    machine meaningful: a chunk that another process interrupted is an outlier that the
    median leaves out, where a whole phase would absorb the interruption.
    """
    chunks = [paths[i : i + CHUNK] for i in range(0, len(paths), CHUNK)]
    out: tuple[list[float], list[float], list[float]] = ([], [], [])
    clock = time.perf_counter
    for phase, fn in enumerate((save, load, delete)):
        for chunk in chunks:
            t0 = clock()
            for p in chunk:
                fn(p)
            out[phase].append((clock() - t0) / len(chunk))
    return out


def bench_memory_new_paths(peer: str | None) -> list[dict[str, Any]]:
    """Save, load and delete of never-seen paths through FileManager, by store size."""
    rows: list[dict[str, Any]] = []
    repeat = 5 if QUICK else 15
    for size in STORE_SIZES[:2] if QUICK else STORE_SIZES:
        # the peer runs in its own process between two halves of our rounds, so that a
        # slow or fast minute of the machine falls on both sides of the comparison
        got: list[dict[str, Any]] = []

        def between(size: int = size, got: list[dict[str, Any]] = got) -> None:
            if peer is not None:
                got.append(_peer_memory_rounds(peer, size, repeat))

        times = _memory_rounds(size, repeat, between)
        for phase in ("save", "load", "delete", "save+load+delete"):
            target = "< 1 us, <= 6x dict" if phase != "save+load+delete" else "(sum)"
            for name in ("hcsflow FileManager", "dict + RLock", "floor"):
                rows.append(
                    _row(
                        f"memory {phase}, new path, store of {size:,}",
                        name,
                        times[name][phase],
                        "dict",
                        times["dict"][phase],
                        target if name.startswith("hcsflow") else "(context)",
                    )
                )
        if got:
            rows += _peer_memory(got[0], size, times)
        gc.collect()
    return rows


def _memory_rounds(
    size: int, repeat: int, between: Callable[[], None]
) -> dict[str, dict[str, list[float]]]:
    """Per-path seconds of each phase for each contender, in a store of ``size`` entries;
    ``between()`` is called once half of the rounds are done."""
    value = np.zeros((64, 64), np.uint16)  # writable, as a step's output is
    backend = MemoryStorageBackend()
    fm = FileManager(BackendRegistry({"memory": backend}))
    plain: dict[str, Any] = {}
    locked = _LockedDict()
    floor = _Floor()
    for well in range(max(1, size // 1000)):
        fm.ensure_directory(f"/store/W{well:04d}", "memory")
        floor.mkdir(f"/store/W{well:04d}")
    for i in range(size):
        path = f"/store/W{i // 1000:04d}/img_{i % 1000:04d}.tif"
        fm.save(value, path, "memory")
        plain[path] = value
        locked.save(value, path)
        floor.save(value, path)
    fm.ensure_directory("/run/A01", "memory")
    floor.mkdir("/run/A01")

    def dict_save(p: str) -> None:
        plain[p] = value

    contenders: dict[str, tuple[Callable[[str], Any], ...]] = {
        "dict": (dict_save, plain.__getitem__, plain.__delitem__),
        "dict + RLock": (lambda p: locked.save(value, p), locked.load, locked.delete),
        "floor": (lambda p: floor.save(value, p), floor.load, floor.delete),
        "hcsflow FileManager": (
            lambda p: fm.save(value, p, "memory"),
            lambda p: fm.load(p, "memory"),
            lambda p: fm.delete(p, "memory"),
        ),
    }
    times: dict[str, dict[str, list[float]]] = {
        name: {"save": [], "load": [], "delete": []} for name in contenders
    }
    names = list(contenders)
    for r in range(repeat):
        if r == repeat - repeat // 2:
            between()
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            paths = _new_paths(f"c{k}r", r)
            gc.collect()
            phases = _time_phases(*contenders[name], paths)
            for phase, chunks in zip(("save", "load", "delete"), phases, strict=True):
                times[name][phase] += chunks
    for name in names:
        # a path's round trip: the k-th chunk of each phase (the same paths)
        per_phase = (times[name][p] for p in ("save", "load", "delete"))
        times[name]["save+load+delete"] = [sum(x) for x in zip(*per_phase, strict=True)]
    return times


# ---------------------------------------------------------------------- the peer (OpenHCS)

_PEER_MEMORY = r"""
import gc, json, sys, time
import numpy as np
# OpenHCS does its I/O through polystore: its FileManager over a registry of its own
from polystore.base import _create_storage_registry
from polystore.constants import Backend
from polystore.filemanager import FileManager
size, repeat, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
fm = FileManager(_create_storage_registry())
mem = Backend.MEMORY.value
value = np.zeros((64, 64), np.uint16)
plain = {}
for well in range(max(1, size // 1000)):
    fm.ensure_directory(f"/store/W{well:04d}", mem)
for i in range(size):
    path = f"/store/W{i // 1000:04d}/img_{i % 1000:04d}.tif"
    fm.save(value, path, mem)
    plain[path] = value
fm.ensure_directory("/run/A01", mem)
def paths(tag, r):
    return [f"/run/A01/{tag}{r}_s{i % 9}_w{i % 4}_{i:05d}.tif" for i in range(n)]
def phases(save, load, delete, ps, chunk=100):
    chunks = [ps[i : i + chunk] for i in range(0, len(ps), chunk)]
    out = ([], [], [])
    for k, fn in enumerate((save, load, delete)):
        for c in chunks:
            t0 = time.perf_counter()
            for p in c: fn(p)
            out[k].append((time.perf_counter() - t0) / len(c))
    return out
def dict_save(p):
    plain[p] = value
contenders = {
    "dict": (dict_save, plain.__getitem__, plain.__delitem__),
    "peer": (
        lambda p: fm.save(value, p, mem),
        lambda p: fm.load(p, mem),
        lambda p: fm.delete(p, mem),
    ),
}
out = {name: {"save": [], "load": [], "delete": []} for name in contenders}
names = list(contenders)
for r in range(repeat):
    for k in range(len(names)):
        name = names[(r + k) % len(names)]
        ps = paths(f"c{k}r", r)
        gc.collect()
        for phase, t in zip(("save", "load", "delete"), phases(*contenders[name], ps)):
            out[name][phase] += t
import openhcs, polystore
out["version"] = f"{openhcs.__version__} (polystore {polystore.__version__})"
print(json.dumps(out))
"""


def _peer_memory_rounds(peer: str, size: int, repeat: int) -> dict[str, Any]:
    """OpenHCS's FileManager on the memory backend, same protocol, in its own process."""
    return _run_peer(peer, _PEER_MEMORY, [str(size), str(repeat), str(NEW_PATHS)])


def _peer_memory(
    got: dict[str, Any], size: int, ours: dict[str, dict[str, list[float]]]
) -> list[dict[str, Any]]:
    """Rows of the peer's rounds (:func:`_peer_memory_rounds`).

    The peer's rounds alternate with a dict in its process, and ran between the two
    halves of ours; they are compared through each one's ratio to its own dict as well
    as directly.
    """
    for name in ("peer", "dict"):
        per_phase = (got[name][p] for p in ("save", "load", "delete"))
        got[name]["save+load+delete"] = [sum(x) for x in zip(*per_phase, strict=True)]
    rows = []
    for phase in ("save", "load", "delete", "save+load+delete"):
        peer_t, peer_dict = got["peer"][phase], got["dict"][phase]
        row = _row(
            f"memory {phase}, new path, store of {size:,}",
            f"OpenHCS {got['version']} FileManager",
            peer_t,
            "dict (in its process)",
            peer_dict,
            "(peer)",
        )
        ours_t, ours_dict = ours["hcsflow FileManager"][phase], ours["dict"][phase]
        row["hcsflow_vs_peer"] = statistics.median(ours_t) / statistics.median(peer_t)
        # each against the dict of its own process: what a slower or faster minute of
        # the machine does to both cancels out
        row["hcsflow_vs_peer_per_dict"] = (
            statistics.median(ours_t) / statistics.median(ours_dict)
        ) / (statistics.median(peer_t) / statistics.median(peer_dict))
        rows.append(row)
    return rows


def _run_peer(peer: str, script: str, args: list[str]) -> dict[str, Any]:
    done = subprocess.run(
        [peer, "-c", script, *args], capture_output=True, text=True, check=False, timeout=1800
    )
    if done.returncode != 0:
        raise RuntimeError(f"the OpenHCS benchmark failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------- listings


def _listing_names(n: int) -> list[str]:
    """``n`` microscope-style names (well, site, channel, plane), in a shuffled order."""
    rng = np.random.default_rng(3)
    wells = [f"{r}{c:02d}" for r in "ABCDEFGHIJKLMNOP" for c in range(1, 25)]
    names = [
        f"plate1_{wells[i % 384]}_s{(i // 384) % 9 + 1}_w{(i // 3456) % 4 + 1}"
        f"_z{i // 13824:02d}.tif"
        for i in range(n)
    ]
    return [names[i] for i in rng.permutation(n)]


def _unpadded_names(n: int) -> list[str]:
    """``n`` names whose numbers are not zero-padded (``s1`` ... ``s16``), shuffled: the
    natural sort cannot fall back on plain string order for these."""
    rng = np.random.default_rng(4)
    wells = [f"{r}{c}" for r in "ABCDEFGHIJKLMNOP" for c in range(1, 25)]
    names = [
        f"plate1_{wells[i % 384]}_s{(i // 384) % 16 + 1}_w{(i // 6144) % 4 + 1}.tif"
        for i in range(n)
    ]
    return [names[i] for i in rng.permutation(n)]


def _forget_keys() -> None:
    cache = getattr(vpaths, "_key_cache", None)
    if cache is not None:
        cache.clear()


def bench_listings(tmp: str, peer: str | None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    names = _listing_names(LISTING)
    repeat = 5 if QUICK else 11
    folder = os.path.join(tmp, "listing")
    os.makedirs(folder)
    unpadded = os.path.join(tmp, "listing-unpadded")
    os.makedirs(unpadded)
    for where, chosen in ((folder, names), (unpadded, _unpadded_names(LISTING))):
        for name in chosen:
            with open(os.path.join(where, name), "wb"):
                pass
    disk = DiskStorageBackend()
    memory = MemoryStorageBackend()
    memory.ensure_directory("/listing")
    memory.save_batch([None] * LISTING, [f"/listing/{n}" for n in names])
    big = MemoryStorageBackend()  # the same folder in a store of a million entries
    big.ensure_directory("/listing")
    big.save_batch([None] * LISTING, [f"/listing/{n}" for n in names])
    for well in range(0 if QUICK else 990):
        big.ensure_directory(f"/other/W{well}")
        big.save_batch([None] * 1000, [f"/other/W{well}/f{i}" for i in range(1000)])

    def scandir_sorted(where: str = folder) -> list[str]:
        with os.scandir(where) as it:
            return sorted(e.name for e in it)

    def cold(fn: Callable[[], Any]) -> Callable[[], float]:
        def run() -> float:
            _forget_keys()
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0

        return run

    disk_files = disk.list_files(folder)
    expected = vpaths.natural_sorted(names)
    assert [os.path.basename(p) for p in disk_files] == expected
    assert (
        memory.list_files("/listing")
        == big.list_files("/listing")
        == [f"/listing/{n}" for n in expected]
    )
    contenders: dict[str, Callable[[], Any]] = {
        "os.scandir + sorted": scandir_sorted,
        "os.scandir + sorted, unpadded numbers": lambda: scandir_sorted(unpadded),
        "disk list_files": lambda: disk.list_files(folder),
        "disk list_image_files": lambda: disk.list_image_files(folder),
        "disk list_files, first listing": cold(lambda: disk.list_files(folder)),
        "disk list_files, first listing, unpadded numbers": cold(lambda: disk.list_files(unpadded)),
        "memory list_files": lambda: memory.list_files("/listing"),
        "memory list_files, first listing": cold(lambda: memory.list_files("/listing")),
    }
    if not QUICK:
        contenders["memory list_files, store of 1e6"] = lambda: big.list_files("/listing")
    times = rounds(contenders, repeat=repeat)
    for name in contenders:
        if name.startswith("os.scandir"):
            continue
        reference = (
            "os.scandir + sorted, unpadded numbers"
            if name.endswith("unpadded numbers")
            else "os.scandir + sorted"
        )
        rows.append(
            _row(
                f"list {LISTING:,} files",
                name,
                times[name],
                reference,
                times[reference],
                "<= 3x",
                "ms",
                1e3,
            )
        )
    rows += _zarr_listing(tmp, names, repeat)
    rows += _fsspec_listing(names, repeat)
    if peer is not None:
        got = _run_peer(peer, _PEER_LISTING, [folder, str(repeat)])
        rows.append(
            _row(
                f"list {LISTING:,} files",
                f"OpenHCS {got['version']} disk list_files",
                got["peer"],
                "os.scandir + sorted (in its process)",
                got["scandir"],
                "(peer)",
                "ms",
                1e3,
            )
        )
    return rows


_PEER_LISTING = r"""
import gc, json, os, sys, time
from polystore.base import _create_storage_registry
from polystore.constants import Backend
from polystore.filemanager import FileManager
folder, repeat = sys.argv[1], int(sys.argv[2])
fm = FileManager(_create_storage_registry())
def scandir_sorted():
    with os.scandir(folder) as it:
        return sorted(e.name for e in it)
contenders = {"scandir": scandir_sorted, "peer": lambda: fm.list_files(folder, Backend.DISK.value)}
out = {name: [] for name in contenders}
names = list(contenders)
for r in range(repeat):
    for k in range(len(names)):
        name = names[(r + k) % len(names)]
        gc.collect()
        t0 = time.perf_counter()
        contenders[name]()
        out[name].append(time.perf_counter() - t0)
import openhcs, polystore
out["version"] = f"{openhcs.__version__} (polystore {polystore.__version__})"
print(json.dumps(out))
"""


def _zarr_listing(tmp: str, names: list[str], repeat: int) -> list[dict[str, Any]]:
    """The zarr backend lists a group of file nodes; zarr-python lists the same group.

    The group is left alone for longer than the listing cache waits before it trusts a
    directory's change time (see ``hcsflow.storage.zarr._listing``), as a folder that a
    pipeline lists again and again is; the "first listing" row clears the backend's
    listing cache and the natural sort keys before each call.
    """
    import zarr

    root = os.path.join(tmp, "zarr")
    os.makedirs(root)
    backend = ZarrStorageBackend(root)
    backend.ensure_directory("/listing")
    count = 1000 if QUICK else LISTING
    chosen = names[:count]
    for start in range(0, count, 500):
        part = chosen[start : start + 500]
        backend.save_batch(
            [np.zeros((2, 2), np.uint8)] * len(part), [f"/listing/{n}" for n in part]
        )
    backend.ensure_directory("/listing/a_subgroup")  # a group among the files
    folder = os.path.join(root, "listing")
    expected = [f"/listing/{n}" for n in vpaths.natural_sorted(chosen)]
    assert backend.list_files("/listing") == expected
    time.sleep(TRUST_AFTER_NS / 1e9 + 0.2)

    def scandir_sorted() -> list[str]:
        with os.scandir(folder) as it:
            return sorted(e.name for e in it)

    def zarr_members() -> list[str]:
        return sorted(name for name, _ in zarr.open_group(folder, mode="r").members())

    def first_listing() -> float:
        backend._listings.clear()
        _forget_keys()
        t0 = time.perf_counter()
        backend.list_files("/listing")
        return time.perf_counter() - t0

    contenders: dict[str, Callable[[], Any]] = {
        "os.scandir + sorted": scandir_sorted,
        "zarr-python group.members() + sorted": zarr_members,
        "zarr list_files": lambda: backend.list_files("/listing"),
        "zarr list_image_files": lambda: backend.list_image_files("/listing"),
        "zarr list_files, first listing": first_listing,
    }
    times = rounds(contenders, repeat=repeat)
    assert backend.list_image_files("/listing") == expected
    label = f"list {count:,} files"
    rows = [
        _row(
            label,
            name,
            times[name],
            "os.scandir + sorted",
            times["os.scandir + sorted"],
            "<= 3x",
            "ms",
            1e3,
        )
        for name in ("zarr list_files", "zarr list_image_files", "zarr list_files, first listing")
    ]
    rows.append(
        _row(
            label,
            "zarr list_files",
            times["zarr list_files"],
            "zarr-python group.members() + sorted",
            times["zarr-python group.members() + sorted"],
            "(context)",
            "ms",
            1e3,
        )
    )
    rows.append(
        _row(
            label,
            "zarr-python group.members() + sorted",
            times["zarr-python group.members() + sorted"],
            "os.scandir + sorted",
            times["os.scandir + sorted"],
            "(context)",
            "ms",
            1e3,
        )
    )
    return rows


def _fsspec_listing(names: list[str], repeat: int) -> list[dict[str, Any]]:
    """The fsspec backend lists a folder of fsspec's memory file system, against that
    file system's ``ls`` + ``sorted`` (on object storage the requests dominate both)."""
    import uuid

    import fsspec

    url = f"memory://hcsflow-bench-{uuid.uuid4().hex}"
    backend = FsspecStorageBackend(url)
    backend.ensure_directory("/listing")
    fs, base = fsspec.core.url_to_fs(url)
    count = 1000 if QUICK else LISTING
    chosen = names[:count]
    for name in chosen:
        fs.pipe_file(f"{base}/listing/{name}", b"")
    key = f"{base}/listing"

    def ls_sorted() -> list[str]:
        return sorted(p.rsplit("/", 1)[1] for p in fs.ls(key, detail=False))

    expected = [f"/listing/{n}" for n in vpaths.natural_sorted(chosen)]
    assert backend.list_files("/listing") == expected
    contenders: dict[str, Callable[[], Any]] = {
        "fsspec ls + sorted": ls_sorted,
        "fsspec list_files": lambda: backend.list_files("/listing"),
        "fsspec list_image_files": lambda: backend.list_image_files("/listing"),
    }
    times = rounds(contenders, repeat=repeat)
    fs.rm(base, recursive=True)
    return [
        _row(
            f"list {count:,} files",
            name,
            times[name],
            "fsspec ls + sorted (memory://)",
            times["fsspec ls + sorted"],
            "<= 3x",
            "ms",
            1e3,
        )
        for name in ("fsspec list_files", "fsspec list_image_files")
    ]


# ---------------------------------------------------------------------- batches


def _durable_write(path: str, data: np.ndarray) -> None:
    """What a careful tifffile user writes for a crash-safe, durable file."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        tifffile.imwrite(fh, data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: str, data: np.ndarray) -> None:
    """A crash-safe write without durability: temporary file, then rename."""
    tmp = path + ".tmp"
    tifffile.imwrite(tmp, data)
    os.replace(tmp, path)


def _drop(paths: list[str]) -> None:
    """Remove ``paths`` and flush the file system, so no contender pays for another's
    pending write-back (untimed)."""
    for p in paths:
        if os.path.exists(p):
            os.unlink(p)
    os.sync()


def bench_batches(tmp: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng(1)
    pool = ThreadPoolExecutor(8)
    repeat = 3 if QUICK else 7
    for side in (256, 512, 1024):
        images = [rng.integers(0, 4096, (side, side), dtype=np.uint16) for _ in range(BATCH)]
        folder = os.path.join(tmp, f"batch{side}")
        os.makedirs(folder)
        durable = DiskStorageBackend(folder)
        loose = DiskStorageBackend(folder, fsync=False)
        ours = [f"/ours_{i:03d}.tif" for i in range(BATCH)]
        ours_real = [os.path.join(folder, p[1:]) for p in ours]
        ref = [os.path.join(folder, f"ref_{i:03d}.tif") for i in range(BATCH)]
        label = f"{BATCH} x {side}x{side} uint16 TIFF"

        def seq_plain(ref: list[str] = ref, images: list[np.ndarray] = images) -> None:
            for img, p in zip(images, ref, strict=True):
                tifffile.imwrite(p, img)

        def pool_plain(ref: list[str] = ref, images: list[np.ndarray] = images) -> None:
            list(pool.map(tifffile.imwrite, ref, images))

        def seq_durable(ref: list[str] = ref, images: list[np.ndarray] = images) -> None:
            for img, p in zip(images, ref, strict=True):
                _durable_write(p, img)

        def pool_durable(ref: list[str] = ref, images: list[np.ndarray] = images) -> None:
            list(pool.map(_durable_write, ref, images))

        def seq_atomic(ref: list[str] = ref, images: list[np.ndarray] = images) -> None:
            for img, p in zip(images, ref, strict=True):
                _atomic_write(p, img)

        def seq_save(
            b: DiskStorageBackend, images: list[np.ndarray] = images, ours: list[str] = ours
        ) -> None:
            for img, p in zip(images, ours, strict=True):
                b.save(img, p)

        writes = {
            "tifffile loop": seq_plain,
            "tifffile 8-thread pool": pool_plain,
            "temp + rename loop": seq_atomic,
            "loop of save, fsync=False": lambda b=loose: seq_save(b),
            "save_batch, fsync=False": lambda b=loose, i=images, o=ours: b.save_batch(i, o),
            "durable loop": seq_durable,
            "durable 8-thread pool": pool_durable,
            "loop of save (default fsync=True)": lambda b=durable: seq_save(b),
            "save_batch (default fsync=True)": lambda b=durable, i=images, o=ours: b.save_batch(
                i, o
            ),
        }
        every = ref + ours_real
        times = rounds(writes, repeat=repeat, setup=lambda _name, every=every: _drop(every))
        for name, reference, target in (
            ("save_batch, fsync=False", "loop of save, fsync=False", "<= 1x"),
            ("save_batch, fsync=False", "temp + rename loop", "<= 1x"),
            ("save_batch, fsync=False", "tifffile loop", "(not atomic)"),
            ("save_batch, fsync=False", "tifffile 8-thread pool", "(not atomic)"),
            ("save_batch (default fsync=True)", "loop of save (default fsync=True)", "<= 1x"),
            ("save_batch (default fsync=True)", "durable loop", "<= 1x"),
            ("save_batch (default fsync=True)", "durable 8-thread pool", "<= 1x"),
        ):
            rows.append(
                _row(
                    f"save {label}",
                    name,
                    times[name],
                    reference,
                    times[reference],
                    target,
                    "ms",
                    1e3,
                )
            )
        seq_plain()
        durable.save_batch(images, ours, overwrite=True)
        reads = {
            "tifffile loop": lambda ref=ref: [tifffile.imread(p) for p in ref],
            "tifffile 8-thread pool": lambda ref=ref: list(pool.map(tifffile.imread, ref)),
            "loop of load": lambda b=durable, o=ours: [b.load(p) for p in o],
            "load_batch": lambda b=durable, o=ours: b.load_batch(o),
        }
        times = rounds(reads, repeat=repeat * 2)
        for reference in ("loop of load", "tifffile loop", "tifffile 8-thread pool"):
            rows.append(
                _row(
                    f"load {label}",
                    "load_batch",
                    times["load_batch"],
                    reference,
                    times[reference],
                    "<= 1x",
                    "ms",
                    1e3,
                )
            )
        _drop(ref + ours_real)
    pool.shutdown()
    rows += _other_backend_batches(tmp, repeat)
    return rows


def _other_backend_batches(tmp: str, repeat: int) -> list[dict[str, Any]]:
    """The zarr and memory backends' batches against a loop of their single calls."""
    rows = []
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 4096, (256, 256), dtype=np.uint16) for _ in range(BATCH)]
    root = os.path.join(tmp, "zarrbatch")
    os.makedirs(root)
    zarr_backend = ZarrStorageBackend(root)
    zarr_backend.ensure_directory("/b")
    memory = MemoryStorageBackend()
    memory.ensure_directory("/b")
    batch_paths = [f"/b/batch_{i:03d}.tif" for i in range(BATCH)]
    loop_paths = [f"/b/loop_{i:03d}.tif" for i in range(BATCH)]

    for name, backend, reps in (
        ("zarr", zarr_backend, repeat),
        ("memory", memory, repeat * 5),
    ):

        def clean(_name: str, backend: Any = backend) -> None:
            for p in batch_paths + loop_paths:
                if backend.exists(p):
                    backend.delete(p)

        def loop_save(backend: Any = backend) -> None:
            for img, p in zip(images, loop_paths, strict=True):
                backend.save(img, p)

        saves = {
            "loop of save": loop_save,
            "save_batch": lambda backend=backend: backend.save_batch(images, batch_paths),
        }
        times = rounds(saves, repeat=reps, setup=clean)
        unit, scale = ("ms", 1e3) if name == "zarr" else ("us", 1e6)
        label = f"{BATCH} x 256x256 uint16, {name} backend"
        rows.append(
            _row(
                f"save {label}",
                "save_batch",
                times["save_batch"],
                "loop of save",
                times["loop of save"],
                "<= 1x",
                unit,
                scale,
            )
        )
        for img, p in zip(images, loop_paths, strict=True):
            backend.save(img, p, overwrite=True)
        backend.save_batch(images, batch_paths, overwrite=True)
        loads = {
            "loop of load": lambda backend=backend: [backend.load(p) for p in loop_paths],
            "load_batch": lambda backend=backend: backend.load_batch(batch_paths),
        }
        times = rounds(loads, repeat=reps * 2)
        rows.append(
            _row(
                f"load {label}",
                "load_batch",
                times["load_batch"],
                "loop of load",
                times["loop of load"],
                "<= 1x",
                unit,
                scale,
            )
        )
    return rows


# ---------------------------------------------------------------------- single files


def bench_disk(tmp: str) -> list[dict[str, Any]]:
    """One TIFF saved and loaded: ours against tifffile (durable and plain)."""
    rows = []
    rng = np.random.default_rng(0)
    durable = DiskStorageBackend(tmp)
    loose = DiskStorageBackend(tmp, fsync=False)
    ref_path = os.path.join(tmp, "ref.tif")
    ours_real = os.path.join(tmp, "ours.tif")
    single = rng.integers(0, 4096, (2048, 2048), dtype=np.uint16)
    repeat = 5 if QUICK else 21
    contenders = {
        "tifffile.imwrite": lambda: tifffile.imwrite(ref_path, single),
        "save, fsync=False": lambda: loose.save(single, "/ours.tif"),
        "imwrite to temp + fsync + rename + dir fsync": lambda: _durable_write(ref_path, single),
        "save (default fsync=True)": lambda: durable.save(single, "/ours.tif"),
    }
    times = rounds(contenders, repeat=repeat, setup=lambda _n: _drop([ref_path, ours_real]))
    label = "disk save 2048x2048 uint16 TIFF"
    rows.append(
        _row(
            label,
            "save, fsync=False",
            times["save, fsync=False"],
            "tifffile.imwrite",
            times["tifffile.imwrite"],
            "<= 1.05x",
            "ms",
            1e3,
        )
    )
    rows.append(
        _row(
            label,
            "save (default fsync=True)",
            times["save (default fsync=True)"],
            "imwrite to temp + fsync + rename + dir fsync",
            times["imwrite to temp + fsync + rename + dir fsync"],
            "<= 1.05x",
            "ms",
            1e3,
        )
    )
    tifffile.imwrite(ref_path, single)
    durable.save(single, "/ours.tif", overwrite=True)
    times = rounds(
        {
            "tifffile.imread": lambda: tifffile.imread(ref_path),
            "load": lambda: durable.load("/ours.tif"),
        },
        repeat=repeat * 2,
    )
    rows.append(
        _row(
            "disk load 2048x2048 uint16 TIFF",
            "load",
            times["load"],
            "tifffile.imread",
            times["tifffile.imread"],
            "<= 1.05x",
            "ms",
            1e3,
        )
    )
    _drop([ref_path, ours_real])
    return rows


# ---------------------------------------------------------------------- report


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def _markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The docs' tables, from the rows of one run."""
    peer = meta.get("peer_version")
    lines = [
        f"Run of {meta['time']} ({meta['seconds']:.0f} s, hcsflow {meta['hcsflow']}, Python "
        f"{meta['python']}, {meta['cpus']} CPUs; load average {meta['load_before'][0]} before, "
        f"{meta['load_after'][0]} after; peer: "
        + (f"OpenHCS {peer}" if peer else "not run")
        + "). Medians of paired, alternating rounds, p25-p75 in brackets; ratios are "
        "median / reference median, lower is faster.",
        "",
        "**Memory backend, never-seen paths through `FileManager`**, µs per path "
        "(1,000 paths a round, timed in chunks of 100):",
        "",
        "| store | operation | hcsflow | dict | hcsflow / dict | dict + RLock | floor |"
        " floor / dict |"
        + (" OpenHCS | hcsflow / OpenHCS | the same, each per its own dict |" if peer else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|---|---|" if peer else ""),
    ]
    memory = [r for r in rows if r["benchmark"].startswith("memory ")]
    by_key = {(r["benchmark"], r["contender"].split()[0]): r for r in memory}
    for bench in dict.fromkeys(r["benchmark"] for r in memory):
        ours, locked = by_key[bench, "hcsflow"], by_key[bench, "dict"]
        floor_row = by_key[bench, "floor"]
        op, _, size = bench[len("memory ") :].partition(", new path, store of ")
        line = (
            f"| {size} | {op} | {_fmt(ours['median'])} [{_fmt(ours['p25'])}-{_fmt(ours['p75'])}]"
            f" | {_fmt(ours['reference_median'])} | {ours['ratio']:.1f}x"
            f" | {_fmt(locked['median'])} | {_fmt(floor_row['median'])}"
            f" | {floor_row['ratio']:.1f}x |"
        )
        if peer:
            other = by_key.get((bench, "OpenHCS"))
            line += (
                f" {_fmt(other['median'])} | {ours['median'] / other['median']:.2f}x"
                f" | {other['hcsflow_vs_peer_per_dict']:.2f}x |"
                if other
                else " | | |"
            )
        lines.append(line)
    lines += [
        "",
        "**Listings, batches and single files:**",
        "",
        "| benchmark | contender | median | reference | ratio | target |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r in memory:
            continue
        unit = "µs" if r["unit"] == "us" else r["unit"]
        lines.append(
            f"| {r['benchmark']} | {r['contender']} | {_fmt(r['median'])} {unit} "
            f"[{_fmt(r['p25'])}-{_fmt(r['p75'])}] "
            f"| {r['reference']} {_fmt(r['reference_median'])} {unit} "
            f"| {r['ratio']:.2f}x | {r['target']} |"
        )
    return "\n".join(lines) + "\n"


def _main_zarr_only(started: float, before: Any) -> None:
    """Only the zarr backend's listing and batch rows (and the memory backend's batches,
    measured alongside), written to results/<HCSFLOW_BENCH_RESULT or storage-zarr>.json;
    the docs' table is left alone."""
    tmp = tempfile.mkdtemp(prefix="hcsflow-bench-", dir=os.environ.get("HCSFLOW_BENCH_DIR"))
    try:
        listing = _zarr_listing(tmp, _listing_names(LISTING), 5 if QUICK else 11)
        print_table("zarr listings", listing)
        batches = _other_backend_batches(tmp, 3 if QUICK else 7)
        print_table("zarr and memory batches", batches)
    finally:
        shutil.rmtree(tmp)
    meta = _run_meta(started, before, only="zarr")
    name = os.environ.get("HCSFLOW_BENCH_RESULT", "storage-zarr")
    path = write_results(name, listing + batches, **meta)
    print(f"\nwritten to {path} in {meta['seconds']:.0f} s")
    print(f"load average {before} before, {meta['load_after']} after")


def _run_meta(started: float, before: Any, **extra: Any) -> dict[str, Any]:
    """What a results file records about its run besides the rows."""
    return {
        "seconds": time.perf_counter() - started,
        "hcsflow": hcsflow.__version__,
        "load_before": before,
        "load_after": load_average(),
        "quick": QUICK,
        **extra,
    }


def main() -> None:
    """Run every storage benchmark, print the tables, write results/storage.json and the
    performance table of docs/storage.md."""
    started = time.perf_counter()
    before = load_average()
    if os.environ.get(ONLY_ENV) == "zarr":
        _main_zarr_only(started, before)
        return
    peer = os.environ.get(PEER_ENV)
    rows = bench_memory_new_paths(peer)
    print_table("memory backend, new paths (per path)", rows)
    tmp = tempfile.mkdtemp(prefix="hcsflow-bench-", dir=os.environ.get("HCSFLOW_BENCH_DIR"))
    try:
        listing = bench_listings(tmp, peer)
        print_table("listings", listing)
        batches = bench_batches(tmp)
        print_table("batches", batches)
        single = bench_disk(tmp)
        print_table("single files", single)
    finally:
        shutil.rmtree(tmp)
    rows += listing + batches + single
    meta = _run_meta(started, before)
    peer_rows = [r for r in rows if r["contender"].startswith("OpenHCS")]
    if peer_rows:
        meta["peer_version"] = peer_rows[0]["contender"].split()[1]
    name = os.environ.get("HCSFLOW_BENCH_RESULT", "storage")
    path = write_results(name, rows, **meta)
    print(f"\nwritten to {path} in {meta['seconds']:.0f} s")
    print(f"load average {before} before, {meta['load_after']} after")
    if name == "storage" and not QUICK:
        payload = json.loads(path.read_text())
        replace_doc_section(DOCS / "storage.md", "bench:storage", _markdown(rows, payload))
        print("docs/storage.md performance table rewritten from it")


if __name__ == "__main__":
    sys.exit(main())
