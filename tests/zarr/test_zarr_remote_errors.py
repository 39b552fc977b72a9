"""Object-store failures are typed errors naming the store and the key."""

from __future__ import annotations

import errno
import uuid

import numpy as np
import pytest

from hcsflow.errors import ObjectStoreError
from hcsflow.storage import ZarrStorageBackend


def test_a_persistent_server_error_is_an_object_store_error_naming_the_key(monkeypatch) -> None:
    root = f"memory://hcs-{uuid.uuid4().hex[:8]}"
    backend = ZarrStorageBackend(root)
    backend.ensure_directory("/d")
    backend.save(np.arange(4), "/d/x.npy")
    fs = backend._base.fs.fs  # the fsspec filesystem behind the store

    def failing(*args, **kwargs):
        # what s3fs raises once its retries of an HTTP 500 are exhausted
        raise OSError(errno.EREMOTEIO, "Remote I/O error")

    monkeypatch.setattr(fs, "cat_file", failing)
    with pytest.raises(ObjectStoreError) as info:
        backend.load("/d/x.npy")
    message = str(info.value)
    assert "x.npy" in message and "zarr.json" in message and "Remote I/O error" in message
    assert isinstance(info.value, OSError)
