"""Any fsspec URL works; the default registry's zarr backend takes local absolute paths."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from hcsflow.errors import ObjectStoreError
from hcsflow.storage import (
    Backend,
    FileManager,
    ZarrStorageBackend,
    open_plate,
    read_well,
    write_well,
)
from hcsflow.storage.plate import ImageCoordinates
from hcsflow.storage.zarr.validate import validate_plate


def test_memory_url_plate_and_backend() -> None:
    url = f"memory://hcsflow-{uuid.uuid4().hex}/plate.zarr"
    data = np.arange(2 * 2 * 8 * 8, dtype=np.uint16).reshape(2, 2, 8, 8)
    write_well(url, "D04", data)
    np.testing.assert_array_equal(read_well(url, "D04"), data)
    assert open_plate(url).wells == ("D04",)
    assert validate_plate(url, deep=True).ok
    backend = ZarrStorageBackend(f"memory://hcsflow-{uuid.uuid4().hex}")
    backend.ensure_directory("/d")
    backend.save({"a": 1}, "/d/x.json")
    assert backend.load("/d/x.json") == {"a": 1} and backend.list_dir("/d") == ["x.json"]


@pytest.mark.parametrize("scheme", ["file://", "local://"])
def test_file_url_is_a_local_path(tmp_path, scheme) -> None:
    write_well(f"{scheme}{tmp_path}/p.zarr", "A01", np.ones((1, 1, 4, 4), np.uint8))
    assert open_plate(str(tmp_path / "p.zarr")).wells == ("A01",)
    # the local store: its own file system, not fsspec's (which writes in place)
    assert ZarrStorageBackend(f"{scheme}{tmp_path}").url_of("/p.zarr") == f"{tmp_path}/p.zarr"


def test_default_registry_uses_local_absolute_paths(tmp_path) -> None:
    fm = FileManager()
    store = f"{tmp_path}/out/plate.zarr"
    paths = [f"{store}/A01_c{c}.tif" for c in range(2)]
    layout = {p: ImageCoordinates("A01", channel=c) for c, p in enumerate(paths)}
    imgs = [np.full((5, 6), c, np.uint16) for c in range(2)]
    fm.save_batch(imgs, paths, Backend.ZARR, chunk_name="A01", layout=layout)
    assert (tmp_path / "out/plate.zarr/A/1/0/0/zarr.json").is_file()
    for a, b in zip(imgs, fm.load_batch(paths, Backend.ZARR), strict=True):
        np.testing.assert_array_equal(a, b)
    assert fm.backend(Backend.ZARR).url_of(paths[0]) == paths[0]


def test_backend_on_a_missing_bucket(s3_server) -> None:
    backend = ZarrStorageBackend("s3://no-such-bucket-hcsflow-vfs/x", storage_options=s3_server)
    with pytest.raises(ObjectStoreError, match="no-such-bucket-hcsflow-vfs"):
        backend.save(np.zeros(3), "/a.npy")


def test_backend_pickles_with_its_configuration(tmp_path) -> None:
    import pickle

    from hcsflow.storage import ZarrConfig

    backend = ZarrStorageBackend(tmp_path, config=ZarrConfig(compressor="lz4"))
    backend.save(np.arange(3), "/a.npy")
    clone = pickle.loads(pickle.dumps(backend))
    assert clone.config.compressor == "lz4"
    np.testing.assert_array_equal(clone.load("/a.npy"), np.arange(3))
