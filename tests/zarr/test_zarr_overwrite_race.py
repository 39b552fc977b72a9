"""``overwrite=True`` on zarr is never refused by a concurrent create, and leaves no debris."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from hcsflow.errors import AlreadyExistsError
from hcsflow.storage import (
    DiskStorageBackend,
    MemoryStorageBackend,
    ZarrStorageBackend,
    find_debris,
)

THREADS = 8
ROUNDS = 30


def _hammer(backend, paths: list[str]) -> list[BaseException]:
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        barrier.wait()
        for r in range(ROUNDS):
            for p in paths:
                try:
                    backend.save(np.full(16, t * 1000 + r), p, overwrite=True)
                except BaseException as exc:  # any error is a failure of this test
                    errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", ["zarr", "disk", "memory"])
def test_overwrite_saves_racing_creates_are_never_refused(tmp_path, kind) -> None:
    if kind == "zarr":
        backend = ZarrStorageBackend(tmp_path)
    elif kind == "disk":
        backend = DiskStorageBackend(tmp_path, fsync=False)
    else:
        backend = MemoryStorageBackend()
    backend.ensure_directory("/r")
    paths = [f"/r/p{i}.npy" for i in range(4)]  # none exists: every thread races to create
    errors = _hammer(backend, paths)
    assert errors == [], errors[:3]
    written = {t * 1000 + r for t in range(THREADS) for r in range(ROUNDS)}
    for p in paths:
        value = backend.load(p)
        assert int(value[0]) in written and np.all(value == value[0])
    if kind != "memory":
        backend.save(np.zeros(16), paths[0], overwrite=True)  # a clean write after the race
        leftovers = [d for d in find_debris(tmp_path) if d.path.endswith(("p0.npy",))]
        assert leftovers == []
        assert not [d for d in find_debris(tmp_path) if not d.removable]


def test_exclusive_creates_still_have_one_winner(tmp_path) -> None:
    backend = ZarrStorageBackend(tmp_path)
    barrier = threading.Barrier(THREADS)
    outcomes: list[object] = []

    def worker(t: int) -> None:
        barrier.wait()
        try:
            backend.save(np.full(4, t), "/one.npy")
            outcomes.append(t)
        except AlreadyExistsError:
            outcomes.append("refused")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [o for o in outcomes if isinstance(o, int)]
    assert len(winners) == 1 and outcomes.count("refused") == THREADS - 1
    assert int(backend.load("/one.npy")[0]) == winners[0]
    assert find_debris(tmp_path) == []
