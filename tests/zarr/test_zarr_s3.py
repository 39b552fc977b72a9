"""Plates and the zarr backend on an S3 server (moto on 127.0.0.1), and object-store errors."""

from __future__ import annotations

import numpy as np
import pytest

from hcsflow.errors import ObjectStoreError
from hcsflow.storage import (
    ZarrConfig,
    ZarrStorageBackend,
    finalize_plate,
    open_plate,
    read_well,
    write_labels,
    write_well,
)
from hcsflow.storage.plate import ImageCoordinates
from hcsflow.storage.zarr.validate import validate_plate


def test_plate_round_trip_on_s3(s3_bucket) -> None:
    bucket, opts = s3_bucket
    url = f"{bucket}/screens/plate.zarr"
    data = {
        f: np.random.default_rng(f).integers(0, 999, (2, 2, 16, 16)).astype(np.uint16)
        for f in range(2)
    }
    write_well(url, "C03", data, ZarrConfig(shards="field", pyramid_levels=2), storage_options=opts)
    write_well(url, "A01", data[0], storage_options=opts)
    write_labels(url, "A01", 0, "cells", np.ones((2, 16, 16), np.uint8), storage_options=opts)
    np.testing.assert_array_equal(read_well(url, "C03", 1, storage_options=opts), data[1])
    assert open_plate(url, storage_options=opts).wells == ("A01", "C03")
    assert finalize_plate(url, storage_options=opts).field_count == 2
    report = validate_plate(url, deep=True, storage_options=opts)
    assert report.ok, report.summary()
    # rewriting a well on an object store keeps the old version until the switch
    write_well(url, "C03", data[1], overwrite=True, storage_options=opts)
    np.testing.assert_array_equal(read_well(url, "C03", storage_options=opts), data[1])


def test_backend_plate_mode_on_s3(s3_bucket) -> None:
    bucket, opts = s3_bucket
    backend = ZarrStorageBackend(bucket + "/vfs", storage_options=opts)
    paths = [f"/out/p.zarr/img_c{c}_z{z}.tif" for c in range(2) for z in range(2)]
    layout = {p: ImageCoordinates("B02", channel=i // 2, z=i % 2) for i, p in enumerate(paths)}
    imgs = [np.full((8, 8), i, np.uint16) for i in range(4)]
    backend.save_batch(imgs, paths, chunk_name="B02", layout=layout)
    for a, b in zip(imgs, backend.load_batch(paths), strict=True):
        np.testing.assert_array_equal(a, b)
    assert open_plate(bucket + "/vfs/out/p.zarr", storage_options=opts).wells == ("B02",)


def test_missing_bucket_is_an_object_store_error(s3_server) -> None:
    url = "s3://no-such-bucket-hcsflow/plate.zarr"
    with pytest.raises(ObjectStoreError, match="no-such-bucket-hcsflow") as info:
        write_well(url, "A01", np.zeros((1, 1, 4, 4), np.uint8), storage_options=s3_server)
    assert isinstance(info.value, OSError)
    with pytest.raises(ObjectStoreError, match="no-such-bucket-hcsflow"):
        open_plate(url, storage_options=s3_server)


def test_unreachable_endpoint_is_an_object_store_error(s3_server) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    opts = {
        "endpoint_url": f"http://127.0.0.1:{port}",
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1},
    }
    with pytest.raises(ObjectStoreError, match="plate.zarr") as info:
        open_plate("s3://bucket/plate.zarr", storage_options=opts)
    assert "s3://bucket/plate.zarr" in str(info.value)
