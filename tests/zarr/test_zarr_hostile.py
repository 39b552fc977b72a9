"""Hostile zarr stores: paths in metadata, declared sizes, links and nesting are untrusted."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from hcsflow.errors import (
    CorruptStoreError,
    HcsflowError,
    PathEscapeError,
    ResourceLimitError,
)
from hcsflow.storage import StorageLimits, ZarrStorageBackend, read_well, write_well
from hcsflow.storage.zarr import open_plate
from hcsflow.storage.zarr.validate import validate_plate


def _field(value: int = 1) -> np.ndarray:
    return np.full((1, 2, 8, 8), value, np.uint16)


def _edit(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    (victim / "0").mkdir(parents=True)
    (victim / "0" / "keep.txt").write_text("precious")
    return victim


@pytest.fixture
def plate(tmp_path) -> Path:
    url = tmp_path / "p.zarr"
    write_well(str(url), "A01", {0: _field(1), 1: _field(2)})
    return url


def test_well_image_path_with_dotdot_is_refused_and_nothing_outside_is_deleted(
    plate, tmp_path
) -> None:
    victim = _victim(tmp_path)
    _edit(
        plate / "A" / "1" / "zarr.json",
        lambda d: d["attributes"]["ome"]["well"]["images"].__setitem__(
            1, {"path": "../../../victim/0"}
        ),
    )
    with pytest.raises(CorruptStoreError) as info:
        write_well(str(plate), "A01", {0: _field(3)}, overwrite=True)
    assert "../../../victim/0" in str(info.value) and "A/1/zarr.json" in str(info.value)
    assert (victim / "0" / "keep.txt").read_text() == "precious"
    with pytest.raises(CorruptStoreError):
        read_well(str(plate), "A01", field=1)
    report = validate_plate(str(plate))
    assert not report.ok and any("victim" in e for e in report.errors), report.errors


def test_dataset_path_with_dotdot_is_refused(plate, tmp_path) -> None:
    _victim(tmp_path)
    _edit(
        plate / "A" / "1" / "0" / "zarr.json",
        lambda d: d["attributes"]["ome"]["multiscales"][0]["datasets"][0].__setitem__(
            "path", "../../../../victim/0"
        ),
    )
    with pytest.raises(CorruptStoreError):
        read_well(str(plate), "A01")
    report = validate_plate(str(plate))
    assert not report.ok and any("datasets[0].path" in e for e in report.errors)


def test_plate_well_path_outside_the_plate_is_refused(plate) -> None:
    _edit(
        plate / "zarr.json",
        lambda d: d["attributes"]["ome"]["plate"]["wells"][0].__setitem__("path", "../1"),
    )
    with pytest.raises(CorruptStoreError):
        open_plate(str(plate))
    report = validate_plate(str(plate))
    assert not report.ok and any("'../1'" in e for e in report.errors), report.errors


def test_file_node_naming_data_outside_it_is_refused(tmp_path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    victim = _victim(tmp_path)
    backend = ZarrStorageBackend(root)
    backend.save(np.arange(3), "/x.npy")
    _edit(
        root / "x.npy" / "zarr.json",
        lambda d: d["attributes"]["hcsflow"].__setitem__("data", "../../victim"),
    )
    with pytest.raises(CorruptStoreError) as info:
        backend.save(np.arange(4), "/x.npy", overwrite=True)
    assert "../../victim" in str(info.value)
    with pytest.raises(CorruptStoreError):
        backend.load("/x.npy")
    assert (victim / "0" / "keep.txt").read_text() == "precious"


def test_stored_link_target_above_the_root_is_refused(tmp_path) -> None:
    backend = ZarrStorageBackend(tmp_path)
    backend.ensure_directory("/d")
    backend.create_symlink("/d", "/l")
    _edit(
        tmp_path / "l" / "zarr.json",
        lambda d: d["attributes"]["hcsflow"].__setitem__("target", "/../outside"),
    )
    for call in (lambda: backend.list_dir("/l"), lambda: backend.load("/l/x.npy")):
        with pytest.raises(CorruptStoreError) as info:
            call()
        assert "/../outside" in str(info.value)


@pytest.mark.timeout(60)
def test_declared_shape_bomb_fails_at_once_and_validation_reports_it(plate) -> None:
    _edit(
        plate / "A" / "1" / "0" / "0" / "zarr.json",
        lambda d: d.__setitem__("shape", [1, 2, 1_000_000, 1_000_000]),
    )
    with pytest.raises(ResourceLimitError) as info:
        read_well(str(plate), "A01")
    assert "p.zarr/A/1/0/0" in str(info.value)
    for deep in (False, True):
        report = validate_plate(str(plate), deep=deep)
        assert not report.ok
        assert any("decoded-size limit" in e for e in report.errors), report.errors


@pytest.mark.timeout(60)
def test_chunk_count_bomb_is_refused_by_deep_validation(tmp_path) -> None:
    url = tmp_path / "p.zarr"
    write_well(str(url), "A01", np.zeros((1, 1, 64, 64), np.uint8))
    _edit(
        url / "A" / "1" / "0" / "0" / "zarr.json",
        lambda d: d["chunk_grid"]["configuration"].__setitem__("chunk_shape", [1, 1, 1, 1]),
    )
    limits = StorageLimits(max_chunks=1000)
    report = validate_plate(str(url), deep=True, limits=limits)
    assert not report.ok and any("chunks, more than the limit" in e for e in report.errors)
    with pytest.raises(ResourceLimitError) as info:
        read_well(str(url), "A01", limits=limits)
    assert "4,096 chunks" in str(info.value)


@pytest.mark.timeout(60)
def test_deeply_nested_zarr_json_is_a_typed_error(plate) -> None:
    (plate / "A" / "1" / "zarr.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ResourceLimitError) as info:
        read_well(str(plate), "A01")
    assert "A/1/zarr.json" in str(info.value)
    report = validate_plate(str(plate), deep=True)
    assert not report.ok


def test_unknown_codec_is_reported_by_deep_validation_not_raised(plate) -> None:
    _edit(
        plate / "A" / "1" / "0" / "0" / "zarr.json",
        lambda d: d.__setitem__("codecs", [{"name": "no-such-codec", "configuration": {}}]),
    )
    report = validate_plate(str(plate), deep=True)
    assert not report.ok and any("no-such-codec" in e for e in report.errors), report.errors
    with pytest.raises(HcsflowError):
        read_well(str(plate), "A01")


def test_os_symlink_out_of_a_plate_store_is_not_followed(plate, tmp_path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (plate / "A" / "1" / "0" / "0").rename(outside / "0")
    os.symlink(outside / "0", plate / "A" / "1" / "0" / "0")
    with pytest.raises(PathEscapeError):
        read_well(str(plate), "A01")
    report = validate_plate(str(plate), deep=True)
    assert not report.ok


def test_names_are_limited_by_bytes(tmp_path) -> None:
    backend = ZarrStorageBackend(tmp_path)
    ok = "é" * 120 + ".npy"  # 244 bytes: valid on every file system
    backend.save(np.arange(3), f"/{ok}")
    backend.save(np.arange(4), f"/{ok}", overwrite=True)
    np.testing.assert_array_equal(backend.load(f"/{ok}"), np.arange(4))
    backend.delete(f"/{ok}")
    with pytest.raises(HcsflowError) as info:
        backend.save(np.arange(3), "/" + "é" * 130 + ".npy")  # 264 bytes
    assert "bytes" in str(info.value)


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_in_a_store_is_refused_at_once_not_waited_on(tmp_path) -> None:
    """A FIFO where a store keeps a document or a chunk would make a read wait forever
    for a writer: listings and loads refuse it at once."""
    b = ZarrStorageBackend(tmp_path)
    b.ensure_directory("/d")
    b.save(np.arange(4, dtype=np.uint16), "/d/a.tif")
    b.save(np.arange(4, dtype=np.uint16), "/d/b.tif")
    # a node whose document is a FIFO: the listing's one-pass read and the generic
    # lookup both open it without waiting
    (tmp_path / "d" / "evil").mkdir()
    os.mkfifo(tmp_path / "d" / "evil" / "zarr.json")
    with pytest.raises(CorruptStoreError, match="is a FIFO, not a regular file"):
        b.list_files("/d")
    # a file node whose data chunk is a FIFO
    (chunk,) = [
        p for p in (tmp_path / "d" / "b.tif").rglob("*") if p.is_file() and p.name != "zarr.json"
    ]
    chunk.unlink()
    os.mkfifo(chunk)
    with pytest.raises(CorruptStoreError, match="is a FIFO, not a regular file"):
        b.load("/d/b.tif")
    assert b.load("/d/a.tif").tolist() == [0, 1, 2, 3]
