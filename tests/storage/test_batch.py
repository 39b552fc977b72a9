"""Batch concurrency: chosen from the work, run in order, failing like a loop."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from hcsflow.errors import BatchError, NotFoundError
from hcsflow.storage import DiskStorageBackend, default_codecs
from hcsflow.storage._batch import (
    MIN_THREADED_ITEM_BYTES,
    THREADS_PER_CORE,
    batch_workers,
    mean_file_size,
    nbytes_of,
    releases_gil,
    run_batch,
)

BIG = MIN_THREADED_ITEM_BYTES


def test_small_or_python_bound_batches_run_in_a_loop() -> None:
    kw = {"max_workers": 8, "cores": 2}
    assert batch_workers(1, BIG * 10, gil_free=True, durable=True, **kw) == 1
    assert batch_workers(100, BIG - 1, gil_free=True, **kw) == 1
    assert batch_workers(100, BIG * 10, gil_free=False, **kw) == 1
    assert batch_workers(100, BIG * 10, gil_free=True, max_workers=1, cores=2) == 1


def test_large_or_durable_batches_use_threads_within_the_caps() -> None:
    assert batch_workers(100, BIG, gil_free=True, max_workers=32, cores=2) == 2 * THREADS_PER_CORE
    assert batch_workers(100, BIG, gil_free=True, max_workers=3, cores=2) == 3
    assert batch_workers(5, BIG, gil_free=True, max_workers=32, cores=8) == 5
    # fsync waits overlap whatever the size or format
    assert batch_workers(100, 10, gil_free=False, durable=True, max_workers=4, cores=2) == 4


def test_which_formats_release_the_gil() -> None:
    codecs = {c.name: c for c in default_codecs().codecs()}
    assert releases_gil(codecs["tiff"]) and releases_gil(codecs["npy"])
    assert not releases_gil(codecs["json"]) and not releases_gil(codecs["pickle"])

    class Own:
        name = "json"
        releases_gil = True

    assert releases_gil(Own())  # a codec's own word wins


def test_sizes(tmp_path) -> None:
    files = []
    for i in range(40):
        path = tmp_path / f"f{i}"
        path.write_bytes(b"x" * (100 + i % 2))
        files.append(str(path))
    assert 100 <= mean_file_size(files) <= 101
    assert mean_file_size([str(tmp_path / "missing")]) == 0.0 and mean_file_size([]) == 0.0
    assert nbytes_of(np.zeros((4, 4), np.uint16)) == 32 and nbytes_of(b"abc") == 3
    assert nbytes_of({"a": 1}) == 0


@pytest.mark.parametrize("workers", [1, 3])
def test_run_batch_keeps_order(workers: int) -> None:
    threads: set[int] = set()

    def item(i: int) -> int:
        threads.add(threading.get_ident())
        time.sleep(0.002 * (i % 3))
        return i * i

    assert run_batch(item, 20, workers) == [i * i for i in range(20)]
    assert len(threads) == workers if workers == 1 else len(threads) > 1


def test_run_batch_raises_the_lowest_failure_after_every_item_stopped() -> None:
    started: list[int] = []
    running = 0
    lock = threading.Lock()

    def item(i: int) -> int:
        nonlocal running
        with lock:
            started.append(i)
            running += 1
        try:
            time.sleep(0.001)
            if i in (5, 7):
                raise ValueError(i)
            return i
        finally:
            with lock:
                running -= 1

    with pytest.raises(ValueError) as info:
        run_batch(item, 50, 4)
    assert info.value.args == (5,)  # what a loop raises
    assert set(range(5)) <= set(started)  # every item before the failure ran
    assert len(started) < 50  # the rest never started
    assert running == 0  # none still running on return


def test_run_batch_passes_interrupts_on() -> None:
    def item(i: int) -> int:
        if i == 2:
            raise KeyboardInterrupt
        return i

    with pytest.raises(KeyboardInterrupt):
        run_batch(item, 10, 3)


def _uses_pool(backend: DiskStorageBackend) -> bool:
    return backend._pool is not None


def test_disk_batches_pick_a_loop_for_small_files(tmp_path) -> None:
    backend = DiskStorageBackend(tmp_path, fsync=False)
    images = [np.full((64, 64), i, np.uint16) for i in range(10)]
    paths = [f"/s{i}.tif" for i in range(10)]
    backend.save_batch(images, paths)
    out = backend.load_batch(paths)
    assert [int(a[0, 0]) for a in out] == list(range(10))
    assert not _uses_pool(backend)


def test_disk_batches_thread_large_files_and_fsyncs(tmp_path) -> None:
    big = [np.full((1024, 1024), i, np.uint16) for i in range(3)]  # 2 MiB each
    paths = [f"/b{i}.tif" for i in range(3)]
    loose = DiskStorageBackend(tmp_path, fsync=False)
    loose.save_batch(big, paths)
    assert _uses_pool(loose)
    reader = DiskStorageBackend(tmp_path)
    assert [int(a[0, 0]) for a in reader.load_batch(paths)] == [0, 1, 2]
    assert _uses_pool(reader)
    durable = DiskStorageBackend(tmp_path)
    durable.save_batch([np.zeros((4, 4), np.uint16)] * 3, ["/d0.tif", "/d1.tif", "/d2.tif"])
    assert _uses_pool(durable)


def test_disk_load_batch_failure_names_the_first_bad_item(tmp_path) -> None:
    backend = DiskStorageBackend(tmp_path, fsync=False)
    big = np.zeros((1024, 1024), np.uint16)
    backend.save_batch([big, big], ["/a.tif", "/b.tif"])
    with pytest.raises(BatchError) as info:
        backend.load_batch(["/a.tif", "/b.tif", "/missing.tif", "/a.tif"])
    assert info.value.index == 2 and isinstance(info.value.__cause__, NotFoundError)
