"""How many threads a batch of file reads or writes gets, and running it that way.

A thread pool pays off only when each item spends long enough outside the GIL: copying
or decompressing a large buffer in C, or waiting for the device in ``fsync``.  Small
files are the opposite case: decoding a 128 KiB TIFF is mostly tifffile's Python code,
which holds the GIL, so threads only queue for it and add their own switching and
bookkeeping, and a batch of them on a pool runs slower than a plain loop.  So the
concurrency is chosen from the work itself:

* **count**: one item never needs a thread;
* **waiting for the device**: durable writes (``fsync``) wait for milliseconds with
  the GIL released, so they overlap well whatever their size;
* **format**: decoders and encoders that spend their time in C code releasing the GIL
  (TIFF, PNG, NPY, NPZ, raw bytes) can run side by side; the others (JSON, CSV, text,
  pickle) are Python code and always run in a loop.  A :class:`~hcsflow.storage.Codec`
  can say which it is with a ``releases_gil`` class attribute;
* **size**: below :data:`MIN_THREADED_ITEM_BYTES` per item on average (file sizes from
  ``stat`` for reads, array sizes for writes) the batch runs in a loop;
* **cores**: at most :data:`THREADS_PER_CORE` threads per available core, and never
  more than the backend's ``max_workers``.

:func:`run_batch` then deals the items to that many threads, one task per thread rather
than one per item.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = [
    "GIL_RELEASING_CODECS",
    "MIN_THREADED_ITEM_BYTES",
    "THREADS_PER_CORE",
    "available_cores",
    "batch_window",
    "batch_workers",
    "mean_file_size",
    "nbytes_of",
    "releases_gil",
    "run_batch",
]

T = TypeVar("T")

#: names of the built-in codecs whose work is mostly C code that releases the GIL
GIL_RELEASING_CODECS = frozenset({"tiff", "png", "npy", "npz", "bytes"})

#: average bytes per item below which a batch runs in the calling thread (measured:
#: see docs/storage.md, "Batches")
MIN_THREADED_ITEM_BYTES = 1 << 20

#: threads per available core for batches worth threading
THREADS_PER_CORE = 4


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform says)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def releases_gil(codec: Any) -> bool:
    """Whether ``codec`` spends its time in code that releases the GIL.

    A codec's own ``releases_gil`` attribute decides; otherwise built-in codec names in
    :data:`GIL_RELEASING_CODECS` do, and anything else is taken not to.
    """
    own = getattr(codec, "releases_gil", None)
    if own is not None:
        return bool(own)
    return getattr(codec, "name", None) in GIL_RELEASING_CODECS


def batch_workers(
    count: int,
    mean_bytes: float,
    *,
    gil_free: bool,
    durable: bool = False,
    max_workers: int,
    cores: int | None = None,
) -> int:
    """Threads for a batch of ``count`` items (``1``: run it in a loop in the caller).

    ``mean_bytes``: the items' average size (0 when unknown); ``gil_free``: every
    item's format releases the GIL (:func:`releases_gil`); ``durable``: every item ends
    with an ``fsync``; ``max_workers``: the backend's cap.
    """
    if count < 2 or max_workers < 2:
        return 1
    limit = min(count, max_workers, THREADS_PER_CORE * (cores or available_cores()))
    if durable:
        return limit
    if not gil_free or mean_bytes < MIN_THREADED_ITEM_BYTES:
        return 1
    return limit


#: arrays a zarr batch writes together at most (each holds a locked directory open)
WINDOW_ITEMS = 64
#: bytes of arrays a zarr batch writes together at most (bounds the encoding buffers)
WINDOW_BYTES = 256 << 20


def batch_window(items: Sequence[Any], *, cores: int | None = None) -> int:
    """How many of ``items`` (arrays to write, in order) a zarr batch writes together.

    Writing arrays together saves zarr-python's per-call overhead whatever their size,
    so small arrays go up to :data:`WINDOW_ITEMS` at a time; arrays of
    :data:`MIN_THREADED_ITEM_BYTES` or more are compressed side by side on zarr's
    threads, which gains nothing beyond :data:`THREADS_PER_CORE` per core; and the
    window holds at most :data:`WINDOW_BYTES` (at least one item).
    """
    limit = min(len(items), WINDOW_ITEMS)
    total = 0
    for n, item in enumerate(items[:limit]):
        size = nbytes_of(item)
        if size >= MIN_THREADED_ITEM_BYTES:
            limit = min(limit, THREADS_PER_CORE * (cores or available_cores()))
        total += size
        if n and (total > WINDOW_BYTES or n >= limit):
            return n
    return max(1, min(limit, len(items)))


def mean_file_size(
    paths: Sequence[str],
    sample: int = 16,
    size_of: Callable[[str], int | None] | None = None,
) -> float:
    """Average size in bytes of the files at ``paths``, from up to ``sample`` of them
    spread over the list (0 when none can be measured).

    ``size_of`` measures one path (default: ``os.stat`` of a real path).  Only an
    estimate for :func:`batch_workers`: a file that cannot be measured is left out
    here, and the read that follows reports what is wrong with it.
    """
    if not paths:
        return 0.0
    measure = size_of if size_of is not None else _stat_size
    step = max(1, len(paths) // sample)
    sizes = []
    for path in paths[::step][:sample]:
        try:
            size = measure(path)
        except (OSError, ValueError):  # missing, or refused (our errors subclass these)
            continue
        if size is not None:
            sizes.append(size)
    return sum(sizes) / len(sizes) if sizes else 0.0


def _stat_size(path: str) -> int:
    return os.stat(path).st_size


def nbytes_of(obj: Any) -> int:
    """Bytes an item to be written holds (arrays and byte strings; 0 for other objects)."""
    size = getattr(obj, "nbytes", None)
    if isinstance(size, int):
        return size
    if isinstance(obj, (bytes, bytearray)):
        return len(obj)
    return 0


def run_batch(
    fn: Callable[[int], T],
    count: int,
    workers: int,
    executor: Executor | None = None,
) -> list[T]:
    """``[fn(0), ..., fn(count - 1)]``, computed on ``workers`` threads (1: right here).

    ``executor`` runs the threads (default: a pool made for this call).  Each thread
    takes the next index until none is left, so only ``workers`` tasks are submitted.
    Once an item fails no thread starts a later one; when every thread has stopped,
    the failure of the lowest index is raised, the same one a loop would raise, and no
    item is still running.
    """
    if workers <= 1 or count <= 1:
        return [fn(index) for index in range(count)]
    workers = min(workers, count)
    results: list[Any] = [None] * count
    failures: dict[int, BaseException] = {}
    lock = threading.Lock()
    state = {"next": 0, "stop": count}  # next index to take; no index >= stop starts

    def work() -> None:
        while True:
            with lock:
                index = state["next"]
                if index >= state["stop"]:
                    return
                state["next"] = index + 1
            try:
                results[index] = fn(index)
            except BaseException as exc:
                with lock:
                    failures[index] = exc
                    state["stop"] = min(state["stop"], index)
                return

    own = executor is None
    pool = executor if executor is not None else ThreadPoolExecutor(workers)
    futures: list[Future[None]] = []
    try:
        for _ in range(workers):
            futures.append(pool.submit(work))
        for future in futures:
            future.result()  # work() itself never raises
    except BaseException:
        # interrupted while waiting, or the pool refused work: no further item starts,
        # and the running ones finish before this returns
        with lock:
            state["stop"] = -1
        for future in futures:
            if not future.cancel():
                future.exception()
        raise
    finally:
        if own:
            pool.shutdown(wait=True)
    if failures:
        raise failures[min(failures)]
    return results
