"""The symlink-swap race: a directory inside the root keeps being replaced by a link out.

Another process flips ``<root>/d`` between the real directory and a symlink to a
directory outside the root (``renameat2(RENAME_EXCHANGE)``), as fast as it can, while
the backend saves, loads, lists, copies, moves and deletes below ``/d``.  Nothing
outside the root may be read, written or deleted.  The race runs
``HCSFLOW_RACE_SECONDS`` seconds per backend (default 3; the figures in
docs/storage.md come from 20).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from hcsflow.errors import HcsflowError, PathEscapeError
from hcsflow.storage import DiskStorageBackend, ZarrStorageBackend

SECONDS = float(os.environ.get("HCSFLOW_RACE_SECONDS", "3"))
SECRET = 666


def _snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """Every entry below ``directory`` with its size and modification time (ns)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(directory):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            out[os.path.relpath(path, directory)] = (st.st_size, st.st_mtime_ns)
    return out


_FLIPPER = textwrap.dedent("""
    import ctypes, os, sys, time
    root, outside, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    d, link = os.path.join(root, "d"), os.path.join(root, "d.link")
    os.symlink(outside, link)
    renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    flips, deadline = 0, time.monotonic() + seconds
    print("ready", flush=True)
    while time.monotonic() < deadline:
        # RENAME_EXCHANGE: d and the link trade places in one step, so d is never missing
        if renameat2(-100, d.encode(), -100, link.encode(), 2) == 0:
            flips += 1
    if os.path.islink(d):
        renameat2(-100, d.encode(), -100, link.encode(), 2)
    os.unlink(link)
    print(flips, flush=True)
""")


def _race(backend, root: Path, outside: Path, seed: int) -> dict[str, int]:
    """Run the flipper process and the backend's operations for SECONDS; the counts."""
    rng = random.Random(seed)
    counts = {"ops": 0, "refused": 0, "escapes": 0}
    flipper = subprocess.Popen(
        [sys.executable, "-c", _FLIPPER, str(root), str(outside), str(SECONDS)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert flipper.stdout is not None
    assert flipper.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + SECONDS
    try:
        while time.monotonic() < deadline:
            i = rng.randrange(8)
            op = rng.randrange(7)
            counts["ops"] += 1
            try:
                if op == 0:
                    backend.save(np.full(4, i), f"/d/f{i}.npy", overwrite=True)
                elif op == 1:
                    value = backend.load(f"/d/f{i}.npy")
                    assert int(np.asarray(value)[0]) != SECRET, "read outside the root"
                elif op == 2:
                    names = backend.list_dir("/d")
                    assert "secret.npy" not in names, "listed outside the root"
                elif op == 3:
                    backend.delete(f"/d/f{i}.npy")
                elif op == 4:
                    backend.ensure_directory(f"/d/sub{i}")
                elif op == 5:
                    backend.copy(f"/d/f{i}.npy", f"/d/c{i}.npy", overwrite=True)
                else:
                    backend.move(f"/d/c{i}.npy", f"/d/m{i}.npy", replace_symlinks=True)
            except PathEscapeError:
                counts["escapes"] += 1
            except (HcsflowError, OSError):
                counts["refused"] += 1
    finally:
        out, _ = flipper.communicate(timeout=SECONDS + 30)
    counts["flips"] = int(out.strip().splitlines()[-1])
    return counts


def _check_untouched(outside: Path, before: dict[str, tuple[int, int]]) -> None:
    after = _snapshot(outside)
    assert after == before, {
        "added": sorted(set(after) - set(before)),
        "removed": sorted(set(before) - set(after)),
        "changed": sorted(k for k in before if k in after and after[k] != before[k]),
    }


_LINUX = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the flipper uses renameat2(RENAME_EXCHANGE)"
)


@_LINUX
@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["default", "walk"])
def test_disk_backend_never_leaves_the_root_during_a_symlink_swap_race(
    tmp_path, monkeypatch, mode
) -> None:
    """``walk``: the fallback for kernels without openat2 must be race-free too."""
    from hcsflow.storage import _contain

    if mode == "walk":
        monkeypatch.setattr(_contain._Openat2, "available", False)
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "d").mkdir(parents=True)
    outside.mkdir()
    for i in range(8):
        np.save(outside / f"f{i}.npy", np.full(4, SECRET))
    np.save(outside / "secret.npy", np.full(4, SECRET))
    before = _snapshot(outside)
    counts = _race(DiskStorageBackend(root), root, outside, seed=1)
    _check_untouched(outside, before)
    print(f"disk symlink-swap race, {mode} ({SECONDS:.0f} s): {counts}")
    assert counts["flips"] > 0 and counts["ops"] > 0


@_LINUX
@pytest.mark.timeout(120)
def test_rooted_zarr_backend_never_leaves_the_root_during_a_symlink_swap_race(tmp_path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    backend = ZarrStorageBackend(root)
    backend.ensure_directory("/d")
    foreign = ZarrStorageBackend(outside)
    for i in range(8):
        foreign.save(np.full(4, SECRET), f"/f{i}.npy")
    foreign.save(np.full(4, SECRET), "/secret.npy")
    before = _snapshot(outside)
    counts = _race(backend, root, outside, seed=2)
    _check_untouched(outside, before)
    print(f"zarr symlink-swap race ({SECONDS:.0f} s): {counts}")
    assert counts["flips"] > 0 and counts["ops"] > 0


def test_a_link_out_of_the_root_is_refused_without_a_race(tmp_path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    np.save(outside / "x.npy", np.full(4, SECRET))
    os.symlink(outside, root / "out")
    for backend in (DiskStorageBackend(root), ZarrStorageBackend(root)):
        before = _snapshot(outside)
        with pytest.raises(PathEscapeError) as info:
            backend.load("/out/x.npy")
        assert "/out/x.npy" in str(info.value)
        for call in (
            lambda b=backend: b.save(np.arange(2), "/out/new.npy"),
            lambda b=backend: b.delete("/out/x.npy"),
            lambda b=backend: b.list_dir("/out"),
            lambda b=backend: b.ensure_directory("/out/sub"),
        ):
            with pytest.raises(PathEscapeError):
                call()
        _check_untouched(outside, before)
