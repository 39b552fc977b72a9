"""The storage conformance suite and the model-based state machine, run on the zarr backend
on a local directory and on an S3 server."""

from __future__ import annotations

import json
import shutil
import tempfile
from typing import Any

import fsspec
import numpy as np
import pytest

import zarr
from hcsflow.errors import AlreadyExistsError, BatchError, HcsflowError
from hcsflow.storage import ZarrStorageBackend
from hcsflow.testing import BackendTests, backend_state_machine


def _group(attrs: dict[str, Any]) -> bytes:
    return json.dumps({"zarr_format": 3, "node_type": "group", "attributes": attrs}).encode()


class _ZarrBackdoors:
    """Back doors through fsspec and zarr-python, bypassing the backend."""

    storage_options: dict[str, Any] = {}

    def _url(self, backend: ZarrStorageBackend, path: str) -> str:
        return backend.url_of(path)

    def _fs(self, backend: ZarrStorageBackend, path: str) -> tuple[Any, str]:
        return fsspec.core.url_to_fs(self._url(backend, path), **backend.storage_options)

    def backdoor_write(self, backend, path, value):
        fs, root = self._fs(backend, path)
        fs.makedirs(root, exist_ok=True)
        zarr.create_array(
            store=self._url(backend, path) + "/data",
            data=value,
            storage_options=backend.storage_options or None,
        )
        fs.pipe_file(
            root + "/zarr.json",
            _group({"hcsflow": {"kind": "file", "format": "array", "data": "data"}}),
        )

    def backdoor_read(self, backend, path):
        fs, root = self._fs(backend, path)
        meta = json.loads(fs.cat_file(root + "/zarr.json"))
        data = meta["attributes"]["hcsflow"]["data"]
        arr = zarr.open_array(
            store=self._url(backend, path) + "/" + data,
            mode="r",
            storage_options=backend.storage_options or None,
        )
        return np.asarray(arr[...])

    def backdoor_exists(self, backend, path):
        fs, root = self._fs(backend, path)
        fs.invalidate_cache()
        return bool(fs.exists(root + "/zarr.json") or fs.exists(root))

    def backdoor_mkdir(self, backend, path):
        fs, root = self._fs(backend, path)
        fs.makedirs(root, exist_ok=True)
        fs.pipe_file(root + "/zarr.json", _group({}))

    def backdoor_symlink(self, backend, target, link):
        fs, root = self._fs(backend, link)
        fs.makedirs(root, exist_ok=True)
        fs.pipe_file(
            root + "/zarr.json", _group({"hcsflow": {"kind": "symlink", "target": target}})
        )


class TestZarrLocal(_ZarrBackdoors, BackendTests):
    @pytest.fixture
    def backend(self, tmp_path) -> ZarrStorageBackend:
        return ZarrStorageBackend(tmp_path)


class TestZarrS3(_ZarrBackdoors, BackendTests):
    @pytest.fixture
    def backend(self, s3_bucket) -> ZarrStorageBackend:
        url, opts = s3_bucket
        return ZarrStorageBackend(url + "/root", storage_options=opts)


def _make_local() -> ZarrStorageBackend:
    return ZarrStorageBackend(tempfile.mkdtemp(prefix="hcsflow-zarr-machine-"))


def _remove_local(backend: ZarrStorageBackend) -> None:
    shutil.rmtree(backend.url_of("/"))


TestZarrAgainstModel = backend_state_machine(
    _make_local, cleanup=_remove_local, max_examples=12
).TestCase


def test_load_racing_an_overwrite_returns_old_or_new_content(tmp_path, monkeypatch) -> None:
    """A reader that looked up a file's data array just before an overwrite switched to a
    new array and deleted the old one gets the new content, never an error or zeros."""
    backend = ZarrStorageBackend(tmp_path)
    old, new = np.arange(6).reshape(2, 3) + 1, np.arange(6).reshape(2, 3) + 100
    backend.save(old, "/f.npy")
    read_array = ZarrStorageBackend._read_array
    raced = []

    def overwritten_first(self, loc, child):
        if not raced:  # the overwrite lands between the lookup and the read
            raced.append(child)
            backend.save(new, "/f.npy", overwrite=True)
        return read_array(self, loc, child)

    monkeypatch.setattr(ZarrStorageBackend, "_read_array", overwritten_first)
    np.testing.assert_array_equal(backend.load("/f.npy"), new)
    assert raced


@pytest.mark.parametrize("operation", ["save_batch", "copy", "create_symlink"])
def test_writes_without_overwrite_never_clobber_a_file_that_appears(
    tmp_path, monkeypatch, operation
) -> None:
    """Without overwrite=True, a target that another writer creates between the checks
    and the write is refused, and the other writer's file is kept."""
    backend = ZarrStorageBackend(tmp_path)
    backend.save(np.arange(3), "/src.npy")
    theirs = np.arange(3) + 50
    original = ZarrStorageBackend._write_target
    raced: list[str] = []

    def check_then_race(self, vp, overwrite):
        outcome = original(self, vp, overwrite)
        if vp == "/dst.npy" and not raced:
            raced.append(vp)
            backend.save(theirs, "/dst.npy")  # another writer wins meanwhile
        return outcome

    monkeypatch.setattr(ZarrStorageBackend, "_write_target", check_then_race)
    with pytest.raises(HcsflowError) as info:
        if operation == "save_batch":
            backend.save_batch([np.arange(3) + 1], ["/dst.npy"])
        elif operation == "copy":
            backend.copy("/src.npy", "/dst.npy")
        else:
            backend.create_symlink("/src.npy", "/dst.npy")
    refusal = info.value.__cause__ if isinstance(info.value, BatchError) else info.value
    assert isinstance(refusal, AlreadyExistsError), repr(info.value)
    assert not backend.is_symlink("/dst.npy")
    np.testing.assert_array_equal(backend.load("/dst.npy"), theirs)
