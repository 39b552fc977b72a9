"""The memory backend: the conformance suite plus what only memory promises."""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import pytest

from hcsflow import paths as vpaths
from hcsflow.errors import BatchError, NotFoundError
from hcsflow.storage import MemoryStorageBackend
from hcsflow.storage._memory import _Dir
from hcsflow.testing import BackendTests


def _parent_node(backend: MemoryStorageBackend, path: str) -> tuple[_Dir, str]:
    node = backend._root
    parts = path.strip("/").split("/")
    for part in parts[:-1]:
        node = node.dirs[part]
    return node, parts[-1]


def _assert_consistent(backend: MemoryStorageBackend) -> None:
    """The tree, the directory index and the file table describe the same store."""
    dirs: dict[str, _Dir] = {}
    files: set[str] = set()
    stack = [("/", backend._root)]
    while stack:
        real, node = stack.pop()
        dirs[real] = node
        prefix = real.rstrip("/") + "/"
        assert not (node.files & set(node.dirs)) and not (node.files & set(node.links))
        assert not (set(node.dirs) & set(node.links))
        for name in node.files:
            files.add(prefix + name)
        stack.extend((prefix + name, child) for name, child in node.dirs.items())
    assert backend._index == dirs
    assert set(backend._files) == files


class TestMemoryBackend(BackendTests):
    @pytest.fixture
    def backend(self) -> MemoryStorageBackend:
        return MemoryStorageBackend()

    def backdoor_write(self, backend, path, value):
        node, name = _parent_node(backend, path)
        node.files.add(name)
        backend._files[vpaths.normalize_path(path)] = value

    def backdoor_read(self, backend, path):
        node, name = _parent_node(backend, path)
        assert name in node.files
        return backend._files[vpaths.normalize_path(path)]

    def backdoor_exists(self, backend, path):
        try:
            node, name = _parent_node(backend, path)
        except KeyError:
            return False
        return name in node.files or name in node.dirs or name in node.links

    def backdoor_mkdir(self, backend, path):
        node, name = _parent_node(backend, path)
        node.dirs[name] = child = _Dir()
        backend._index[vpaths.normalize_path(path)] = child

    def backdoor_symlink(self, backend, target, link):
        node, name = _parent_node(backend, link)
        node.links[name] = target


def test_arrays_are_stored_without_copy_and_read_only() -> None:
    backend = MemoryStorageBackend()
    data = np.arange(10.0)
    backend.save(data, "/a.npy")
    out = backend.load("/a.npy")
    assert np.shares_memory(out, data)
    assert not out.flags.writeable
    assert data.flags.writeable  # the caller's array is untouched
    with pytest.raises(ValueError):
        out[0] = 5
    assert backend.load("/a.npy") is out  # load hands back the stored view, no new object


def test_read_only_arrays_are_stored_as_they_are() -> None:
    backend = MemoryStorageBackend()
    frozen = np.arange(3)
    frozen.setflags(write=False)
    backend.save(frozen, "/f")
    assert backend.load("/f") is frozen


def test_any_object_is_storable() -> None:
    backend = MemoryStorageBackend()
    lock, fn = threading.Lock(), lambda x: x + 1
    backend.save(lock, "/lock")
    backend.save(fn, "/fn.pkl")
    backend.save(None, "/none")
    assert backend.load("/lock") is lock and backend.load("/fn.pkl") is fn
    assert backend.load("/none") is None and backend.is_file("/none")


def test_format_options_are_accepted_and_ignored() -> None:
    backend = MemoryStorageBackend()
    backend.save(np.zeros((2, 2)), "/x.tif", compression="zlib")
    assert backend.load("/x.tif", allow_pickle=False).shape == (2, 2)


def test_path_like_and_cached_paths() -> None:
    import pathlib

    backend = MemoryStorageBackend()
    backend.ensure_directory("/d")
    backend.save(1, pathlib.PurePosixPath("/d/p"))
    assert backend.load("/d/p") == 1 and backend.load(pathlib.PurePosixPath("d/p")) == 1
    backend.delete_all("/d")
    with pytest.raises(NotFoundError):  # a cached split must not outlive the directory
        backend.load("/d/p")
    with pytest.raises(NotFoundError):
        backend.save(2, "/d/p")


def test_listing_reads_one_node() -> None:
    backend = MemoryStorageBackend()
    backend.ensure_directory("/big")
    backend.ensure_directory("/small")
    for i in range(2000):
        backend.save(i, f"/big/{i}")
    backend.save(0, "/small/one")
    # the directory index holds directories only; files live in their parent node
    assert set(backend._index) == {"/", "/big", "/small"}
    assert backend.list_dir("/small") == ["one"]


def test_concurrent_overwrites_and_deletes_keep_the_tree_consistent() -> None:
    backend = MemoryStorageBackend()
    backend.ensure_directory("/d")
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        try:
            while not stop.is_set():
                backend.ensure_directory("/d/sub")
                backend.save(1, "/d/sub/f", overwrite=True)
                backend.delete_all("/d/sub")
        except BaseException as exc:
            errors.append(exc)

    def readers() -> None:
        for _ in range(2000):
            with contextlib.suppress(NotFoundError):
                backend.load("/d/sub/f")

    t = threading.Thread(target=churn)
    t.start()
    readers()
    stop.set()
    t.join()
    assert errors == []
    assert backend.list_dir("/d") == []


def test_batches_are_all_or_nothing() -> None:
    backend = MemoryStorageBackend()
    backend.save(0, "/b")
    with pytest.raises(BatchError):
        backend.save_batch([1, 2, 3], ["/a", "/b", "/c"])
    assert backend.list_dir("/") == ["b"]


def test_not_picklable() -> None:
    import pickle

    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(MemoryStorageBackend())


def test_cached_paths_follow_structural_changes() -> None:
    backend = MemoryStorageBackend()
    backend.ensure_directory("/d")
    backend.save(1, "/d/x")
    assert backend.load("/d/x") == 1  # now cached
    backend.move("/d", "/e")
    with pytest.raises(NotFoundError):
        backend.load("/d/x")
    with pytest.raises(NotFoundError):
        backend.save(2, "/d/x")
    assert backend.load("/e/x") == 1
    backend.ensure_directory("/d")
    backend.save(3, "/d/x")
    assert backend.load("/d/x") == 3
    backend.delete_all("/d")
    backend.ensure_directory("/d")
    with pytest.raises(NotFoundError):
        backend.load("/d/x")
    backend.save(4, "/d/x")
    backend.save(5, "/e/y")
    backend.create_symlink("/e/y", "/d/x", overwrite=True)
    assert backend.load("/d/x") == 5
    backend.save(6, "/d/x", overwrite=True)  # replaces the link
    assert backend.load("/d/x") == 6 and backend.load("/e/y") == 5
    backend.move("/d/x", "/e/z")
    with pytest.raises(NotFoundError):
        backend.load("/d/x")
    backend.clear()
    with pytest.raises(NotFoundError):
        backend.load("/e/z")
    assert backend.list_dir("/") == []
