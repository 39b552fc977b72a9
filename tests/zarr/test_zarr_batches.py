"""Batches of the zarr backend: windows written and read together, failures like a loop.

``save_batch`` and ``load_batch`` hand each window of arrays to zarr's event loop in
one call; what users see must be what a loop of ``save``/``load`` gives: the items
before a failing one done, none after it, the lowest failing index raised, nothing
half-written left visible.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hcsflow.errors import BatchError, HcsflowError, ZarrError
from hcsflow.storage import ZarrStorageBackend
from hcsflow.storage._batch import (
    MIN_THREADED_ITEM_BYTES,
    THREADS_PER_CORE,
    WINDOW_BYTES,
    WINDOW_ITEMS,
    batch_window,
)
from hcsflow.storage.zarr import _arrays


def _items(n: int, side: int = 8) -> list[np.ndarray]:
    return [np.full((side, side), i, np.uint16) for i in range(n)]


def _fail_for(monkeypatch: pytest.MonkeyPatch, name: str, error: BaseException) -> None:
    """Make the array write of the item whose path ends in ``name`` fail."""
    real = _arrays.create_array_async

    async def failing(request: _arrays.ArrayRequest) -> None:
        # a new node is built in a sibling "<name>.<tag>.partial", an overwrite inside it
        if f"/{name}." in request.loc.path or f"/{name}/" in request.loc.path:
            raise error
        await real(request)

    monkeypatch.setattr(_arrays, "create_array_async", failing)


def _debris(root: Path) -> list[str]:
    return [
        os.path.join(d, n)
        for d, dirs, files in os.walk(root)
        for n in dirs + files
        if n.endswith((".partial", ".deleting"))
    ]


@pytest.mark.parametrize("error", [ZarrError("disk went away"), RuntimeError("boom")])
def test_failing_item_stops_the_batch_like_a_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    b = ZarrStorageBackend(tmp_path)
    b.ensure_directory("/d")
    paths = [f"/d/i{i}.tif" for i in range(10)]
    _fail_for(monkeypatch, "i4.tif", error)
    expected = BatchError if isinstance(error, HcsflowError) else type(error)
    with pytest.raises(expected) as info:
        b.save_batch(_items(10), paths)
    if isinstance(error, HcsflowError):
        assert info.value.index == 4 and info.value.__cause__ is error
    assert b.list_dir("/d") == [f"i{i}.tif" for i in range(4)]
    for i in range(4):
        assert np.array_equal(b.load(paths[i]), np.full((8, 8), i, np.uint16))
    assert _debris(tmp_path) == []


def test_failing_overwrite_keeps_the_old_content_of_it_and_later_items(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = ZarrStorageBackend(tmp_path)
    b.ensure_directory("/d")
    paths = [f"/d/i{i}.tif" for i in range(6)]
    b.save_batch(_items(6), paths)
    _fail_for(monkeypatch, "i2.tif", ZarrError("disk went away"))
    with pytest.raises(BatchError) as info:
        b.save_batch([a + 100 for a in _items(6)], paths, overwrite=True)
    assert info.value.index == 2
    for i, p in enumerate(paths):
        assert np.array_equal(b.load(p), np.full((8, 8), i + (100 if i < 2 else 0), np.uint16))
    assert _debris(tmp_path) == []
    # and nothing but the current data array is left in the nodes
    for p in paths:
        node = Path(b.url_of(p))
        assert len([n for n in os.listdir(node) if n.startswith("data")]) == 1


def test_batches_longer_than_a_window(tmp_path: Path) -> None:
    b = ZarrStorageBackend(tmp_path)
    b.ensure_directory("/d")
    n = WINDOW_ITEMS * 2 + 5
    paths = [f"/d/i{i}.tif" for i in range(n)]
    data = _items(n)
    b.save_batch(data, paths)
    b.save({"kind": "not an array"}, "/d/meta.json")
    mixed = paths[:3] + ["/d/meta.json"] + paths[3:]
    got = b.load_batch(mixed)
    assert got[3] == {"kind": "not an array"}
    for a, g in zip(data, got[:3] + got[4:], strict=True):
        assert np.array_equal(a, g)
    b.save_batch([a * 2 for a in data], paths, overwrite=True)
    for a, g in zip(data, b.load_batch(paths), strict=True):
        assert np.array_equal(a * 2, g)


def test_load_batch_raises_the_lowest_failing_index(tmp_path: Path) -> None:
    b = ZarrStorageBackend(tmp_path)
    b.ensure_directory("/d")
    n = WINDOW_ITEMS + 10
    paths = [f"/d/i{i}.tif" for i in range(n)]
    b.save_batch(_items(n), paths)
    with pytest.raises(BatchError) as info:
        b.load_batch(paths[:70] + ["/d/missing.tif"] + paths[70:])
    assert info.value.index == 70


def test_load_batch_reports_a_corrupt_array_as_load_does(tmp_path: Path) -> None:
    b = ZarrStorageBackend(tmp_path)
    b.ensure_directory("/d")
    paths = [f"/d/i{i}.tif" for i in range(5)]
    b.save_batch(_items(5, side=64), paths)
    node = Path(b.url_of(paths[2]))
    chunk = next(p for p in node.rglob("*") if p.is_file() and "/c/" in str(p))
    chunk.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(HcsflowError) as alone:
        b.load(paths[2])
    with pytest.raises(BatchError) as batch:
        b.load_batch(paths)
    assert batch.value.index == 2
    cause: Any = batch.value.__cause__
    assert type(cause) is type(alone.value) and str(cause) == str(alone.value)


def test_window_sizes_follow_count_sizes_and_cores() -> None:
    small = _items(200)
    assert batch_window(small) == WINDOW_ITEMS
    assert batch_window(small[:3]) == 3
    big = [np.zeros(MIN_THREADED_ITEM_BYTES, np.uint8)] * 100
    assert batch_window(big, cores=2) == THREADS_PER_CORE * 2
    assert batch_window(big, cores=1) == THREADS_PER_CORE
    # an item above the byte budget still goes, alone
    sized = [type("Sized", (), {"nbytes": WINDOW_BYTES + 1})() for _ in range(3)]
    assert batch_window(sized, cores=64) == 1
