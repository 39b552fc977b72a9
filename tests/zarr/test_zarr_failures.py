"""A write that fails half-way never loses the previous version (files and wells)."""

from __future__ import annotations

import numpy as np
import pytest

from hcsflow.storage import (
    Backend,
    BackendRegistry,
    FileManager,
    ZarrStorageBackend,
    open_plate,
    read_well,
    write_well,
)
from hcsflow.storage.plate import ImageCoordinates
from hcsflow.storage.zarr import _arrays


class _Boom(RuntimeError):
    pass


def _fail_on_call(monkeypatch, n: int) -> None:
    real = _arrays.create_array
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise _Boom("storage went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(_arrays, "create_array", flaky)


def test_failed_file_overwrite_keeps_the_old_content(tmp_path, monkeypatch) -> None:
    backend = ZarrStorageBackend(tmp_path)
    backend.save(np.arange(5), "/x.npy")
    _fail_on_call(monkeypatch, 1)
    with pytest.raises(_Boom):
        backend.save(np.zeros(5), "/x.npy", overwrite=True)
    np.testing.assert_array_equal(backend.load("/x.npy"), np.arange(5))
    assert backend.list_dir("/") == ["x.npy"]


def test_failed_new_file_leaves_nothing_visible(tmp_path, monkeypatch) -> None:
    backend = ZarrStorageBackend(tmp_path)
    _fail_on_call(monkeypatch, 1)
    with pytest.raises(_Boom):
        backend.save(np.zeros(5), "/y.npy")
    assert not backend.exists("/y.npy") and backend.list_dir("/") == []


def test_failed_plate_batch_keeps_the_previous_well(tmp_path, monkeypatch) -> None:
    fm = FileManager(BackendRegistry({Backend.ZARR.value: ZarrStorageBackend(tmp_path)}))
    paths = [f"/p.zarr/f{f}.tif" for f in range(3)]
    layout = {p: ImageCoordinates("E05", field=f) for f, p in enumerate(paths)}
    old = [np.full((4, 4), f, np.uint16) for f in range(3)]
    fm.save_batch(old, paths, Backend.ZARR, chunk_name="E05", layout=layout)
    _fail_on_call(monkeypatch, 2)  # the second field of the new version fails
    with pytest.raises(_Boom):
        fm.save_batch(
            [a + 10 for a in old],
            paths,
            Backend.ZARR,
            chunk_name="E05",
            layout=layout,
            overwrite=True,
        )
    for a, b in zip(old, fm.load_batch(paths, Backend.ZARR), strict=True):
        np.testing.assert_array_equal(a, b)
    assert open_plate(str(tmp_path / "p.zarr")).wells == ("E05",)


def test_failed_well_rewrite_keeps_the_previous_well(tmp_path, monkeypatch) -> None:
    url = str(tmp_path / "p.zarr")
    old = np.ones((1, 2, 8, 8), np.uint8)
    write_well(url, "A02", old)
    _fail_on_call(monkeypatch, 1)
    with pytest.raises(_Boom):
        write_well(url, "A02", old * 2, overwrite=True)
    np.testing.assert_array_equal(read_well(url, "A02"), old)


def test_failed_well_switch_keeps_the_previous_well(tmp_path, monkeypatch) -> None:
    # the new field groups are complete (their metadata written in place) but the
    # well's own metadata write fails: the old version stays published and whole
    from hcsflow.storage.zarr import _ome

    url = str(tmp_path / "p.zarr")
    old = {0: np.ones((1, 2, 8, 8), np.uint8), 1: np.full((1, 2, 8, 8), 3, np.uint8)}
    write_well(url, "A02", old)
    real = _ome.write_group

    def failing_switch(loc, attributes, zarr_format, *, published=True):
        if "well" in attributes.get("ome", {}):
            raise _Boom("storage went away")
        return real(loc, attributes, zarr_format, published=published)

    monkeypatch.setattr(_ome, "write_group", failing_switch)
    with pytest.raises(_Boom):
        write_well(url, "A02", {0: old[0] * 2, 1: old[1] * 2}, overwrite=True)
    monkeypatch.undo()
    for f, arr in old.items():
        np.testing.assert_array_equal(read_well(url, "A02", f), arr)
    assert open_plate(url).wells == ("A02",)
    # the next write clears the unreferenced groups the failed one left
    info = write_well(url, "A02", old[0] * 5, overwrite=True)
    assert sorted((tmp_path / "p.zarr/A/2").iterdir()) == sorted(
        tmp_path / "p.zarr/A/2" / n for n in ["zarr.json", *info.field_paths]
    )
