"""The fsspec backend: the conformance suite on an S3 server (moto on 127.0.0.1) and on
fsspec's memory filesystem, plus what object stores add (plain objects, foreign prefixes)."""

from __future__ import annotations

import io
import uuid

import fsspec
import numpy as np
import pandas as pd
import pytest
import tifffile

from hcsflow.errors import AlreadyExistsError, InvalidPathError, NotFoundError
from hcsflow.storage import FileManager, FsspecStorageBackend
from hcsflow.storage._fsspec import DIR_MARKER, LINK_MAGIC
from hcsflow.storage._registry import BackendRegistry
from hcsflow.testing import BackendTests


class _FsspecBackdoors:
    """Back doors through fsspec itself, bypassing the backend."""

    def _fs(self, backend: FsspecStorageBackend, path: str):
        return fsspec.core.url_to_fs(backend.url_of(path), **backend.storage_options)

    def backdoor_write(self, backend, path, value):
        fs, key = self._fs(backend, path)
        buf = io.BytesIO()
        np.save(buf, value)
        fs.pipe_file(key, buf.getvalue())

    def backdoor_read(self, backend, path):
        fs, key = self._fs(backend, path)
        return np.load(io.BytesIO(fs.cat_file(key)))

    def backdoor_exists(self, backend, path):
        fs, key = self._fs(backend, path)
        fs.invalidate_cache()
        return bool(fs.exists(key))

    def backdoor_mkdir(self, backend, path):
        fs, key = self._fs(backend, path)
        fs.pipe_file(f"{key}/{DIR_MARKER}", b"")

    def backdoor_symlink(self, backend, target, link):
        fs, key = self._fs(backend, link)
        fs.pipe_file(key, LINK_MAGIC + target.encode())


class TestFsspecS3(_FsspecBackdoors, BackendTests):
    @pytest.fixture
    def backend(self, s3_bucket) -> FsspecStorageBackend:
        url, opts = s3_bucket
        return FsspecStorageBackend(url + "/root", storage_options=opts)


class TestFsspecMemory(_FsspecBackdoors, BackendTests):
    @pytest.fixture
    def backend(self) -> FsspecStorageBackend:
        return FsspecStorageBackend(f"memory://hcsflow-test-{uuid.uuid4().hex}")


def test_files_are_plain_objects_any_tool_reads(s3_bucket) -> None:
    url, opts = s3_bucket
    backend = FsspecStorageBackend(url + "/run", storage_options=opts)
    backend.ensure_directory("/images/A01")
    img = np.arange(64, dtype=np.uint16).reshape(8, 8)
    backend.save(img, "/images/A01/A01_s1_w1.tif")
    backend.save(pd.DataFrame({"well": ["A01"], "n": [3]}), "/counts.csv")
    fs, _ = fsspec.core.url_to_fs(url, **opts)
    key = url[len("s3://") :]
    np.testing.assert_array_equal(
        tifffile.imread(io.BytesIO(fs.cat_file(f"{key}/run/images/A01/A01_s1_w1.tif"))), img
    )
    assert fs.cat_file(f"{key}/run/counts.csv").decode() == "well,n\nA01,3\n"
    assert backend.url_of("/counts.csv") == f"{url}/run/counts.csv"


def test_prefixes_written_by_other_tools_are_directories(s3_bucket) -> None:
    url, opts = s3_bucket
    fs, _ = fsspec.core.url_to_fs(url, **opts)
    key = url[len("s3://") :]
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.ones((4, 4), np.uint8))
    fs.pipe_file(f"{key}/plate/sub/A01_s1_w1.tif", buf.getvalue())  # no markers at all
    fm = FileManager(BackendRegistry({"disk": FsspecStorageBackend(url, storage_options=opts)}))
    assert fm.is_dir("/plate/sub", "disk")
    assert fm.list_image_files("/plate", "disk", recursive=True) == ["/plate/sub/A01_s1_w1.tif"]
    assert fm.load("/plate/sub/A01_s1_w1.tif", "disk").sum() == 16


def test_reserved_marker_name_and_bad_root() -> None:
    backend = FsspecStorageBackend(f"memory://hcsflow-test-{uuid.uuid4().hex}")
    with pytest.raises(InvalidPathError, match=DIR_MARKER):
        backend.save(np.zeros(2), f"/{DIR_MARKER}/x.npy")
    with pytest.raises(InvalidPathError, match="URL"):
        FsspecStorageBackend("/local/path")
    with pytest.raises(NotFoundError):
        backend.load("/nothing.npy")


@pytest.mark.parametrize(
    "url",
    ["file://{}", "local://{}", "simplecache::file://{}", "dir::file://{}"],
)
def test_a_local_folder_is_refused_for_the_disk_backend(tmp_path, url) -> None:
    """On a local folder the object-store conventions would break what the disk backend
    keeps: fsspec writes files in place (no rename), a deleted directory's marker leaves
    the folder behind, links on disk are followed out of the root, and a FIFO is read
    forever.  So the folder is refused, naming the backend to use."""
    (tmp_path / "a.npy").write_bytes(b"")
    root = url.format(tmp_path)
    with pytest.raises(InvalidPathError, match="use DiskStorageBackend") as info:
        FsspecStorageBackend(root)
    assert info.value.path == root
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy"]


def test_batch_errors_name_the_item_and_why_like_every_backend(tmp_path) -> None:
    import numpy as np

    from hcsflow.errors import BatchError
    from hcsflow.storage import DiskStorageBackend

    obj = FsspecStorageBackend(f"memory://hcsflow-test-{uuid.uuid4().hex}")
    disk = DiskStorageBackend(root=tmp_path)
    messages = []
    for backend in (obj, disk):
        backend.save(np.zeros((2, 2), np.uint16), "/a.tif")
        with pytest.raises(BatchError) as err:
            backend.load_batch(["/a.tif", "/missing.tif"])
        assert err.value.index == 1 and err.value.path == "/missing.tif"
        messages.append(err.value.reason)
        with pytest.raises(BatchError) as err:
            backend.save_batch([np.zeros((2, 2))] * 2, ["/b.npy", "/a.tif"], overwrite=False)
        assert err.value.index == 1 and "exists" in str(err.value)
    # on object storage as on disk: the item, what failed and why
    for message in messages:
        assert message.startswith("batch item 1 could not be loaded: ")
        assert "no such file" in message


def test_backend_pickles_by_url(s3_bucket) -> None:
    import pickle

    url, opts = s3_bucket
    backend = FsspecStorageBackend(url + "/p", storage_options=opts)
    backend.save(np.arange(3), "/a.npy")
    clone = pickle.loads(pickle.dumps(backend))
    np.testing.assert_array_equal(clone.load("/a.npy"), np.arange(3))
    with pytest.raises(AlreadyExistsError):
        clone.save(np.arange(3), "/a.npy")


def test_missing_bucket_is_an_object_store_error(s3_server) -> None:
    from hcsflow.errors import ObjectStoreError

    backend = FsspecStorageBackend("s3://no-such-bucket-hcsflow/run", storage_options=s3_server)
    with pytest.raises(ObjectStoreError, match="no-such-bucket-hcsflow") as info:
        backend.ensure_directory("/images")
    assert isinstance(info.value, OSError)
