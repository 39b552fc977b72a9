"""The memory backend: the conformance suite plus what only memory promises."""

from __future__ import annotations

import contextlib
import pathlib
import threading
from typing import Any

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, rule

from hcsflow import paths as vpaths
from hcsflow.errors import (
    AlreadyExistsError,
    BatchError,
    InvalidPathError,
    IsADirectoryStorageError,
    NotFoundError,
    PathEscapeError,
)
from hcsflow.storage import MemoryStorageBackend
from hcsflow.storage._memory import _Dir
from hcsflow.testing import BackendTests, backend_state_machine
from hcsflow.testing._state_machine import ANY_PATHS, FILE_PATHS, _outcome, _same

# other spellings of a normal path: the fast paths must treat them as the path itself
_SPELLINGS = [
    lambda p: p.lstrip("/"),
    lambda p: p + "/",
    lambda p: p.replace("/", "//"),
    lambda p: "/." + p,
    lambda p: "/w2/.." + p,
    pathlib.PurePosixPath,
]


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


def test_read_only_arrays_are_stored_as_read_only_views_too() -> None:
    backend = MemoryStorageBackend()
    frozen = np.arange(3)
    frozen.setflags(write=False)
    backend.save(frozen, "/f")
    out = backend.load("/f")
    assert np.shares_memory(out, frozen) and not out.flags.writeable
    assert out.base is frozen  # one view of the caller's array, never a copy


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


# ---------------------------------------------------------------- flat tables and fast paths


def test_equivalent_spellings_name_one_entry() -> None:
    backend = MemoryStorageBackend()
    backend.ensure_directory("/a/b")
    backend.save(1, "a/b/x")  # relative: the slow path
    assert backend.load("/a/b/x") == 1  # normal: the fast path
    for spelling in (
        "/a/b/x/",
        "/a/./b/x",
        "//a//b//x",
        "/a/c/../b/x",
        pathlib.PurePosixPath("a/b/x"),
    ):
        assert backend.load(spelling) == 1
        with pytest.raises(AlreadyExistsError):
            backend.save(2, spelling)
    backend.save(3, "/a/./b/x", overwrite=True)
    assert backend.load("/a/b/x") == 3
    backend.delete("a//b/x/")
    assert not backend.exists("/a/b/x")
    _assert_consistent(backend)
    with pytest.raises(PathEscapeError):
        backend.save(1, "/a/../../x")
    with pytest.raises(InvalidPathError):
        backend.save(1, "/a/b\x00c")


def test_an_existing_file_holding_none_is_not_overwritten_silently() -> None:
    backend = MemoryStorageBackend()
    backend.save(None, "/n")
    with pytest.raises(AlreadyExistsError):
        backend.save(1, "/n")
    assert backend.load("/n") is None


@pytest.mark.parametrize("name", [".hidden", "..x", "a.", "x\\y"])
def test_unusual_names_take_the_full_route(name: str) -> None:
    backend = MemoryStorageBackend()
    backend.ensure_directory("/d")
    backend.save(name, f"/d/{name}")
    assert backend.load(f"/d/{name}") == name
    assert backend.list_dir("/d") == [name]
    backend.delete(f"/d/{name}")
    assert backend.list_dir("/d") == []
    _assert_consistent(backend)


def test_new_files_never_replace_directories_or_links() -> None:
    backend = MemoryStorageBackend()
    backend.ensure_directory("/d/sub")
    backend.save(1, "/d/f")
    backend.create_symlink("/d/f", "/d/link")
    with pytest.raises(IsADirectoryStorageError):
        backend.save(2, "/d/sub")
    with pytest.raises(AlreadyExistsError):
        backend.save(2, "/d/link")
    backend.save(3, "/d/link", overwrite=True)  # replaces the link itself
    assert backend.load("/d/f") == 1 and backend.load("/d/link") == 3
    assert not backend.is_symlink("/d/link")
    _assert_consistent(backend)


def test_paths_through_links_reach_the_real_entries() -> None:
    backend = MemoryStorageBackend()
    backend.ensure_directory("/real")
    backend.create_symlink("/real", "/alias")
    backend.save(1, "/alias/x")  # stored under its real path
    assert backend._files == {"/real/x": 1}
    assert backend.load("/alias/x") == 1
    backend.delete("/alias/x")
    assert backend._files == {} and backend.list_dir("/real") == []
    backend.save(2, "/real/y")
    backend.delete("/alias")  # the link, not its target
    assert backend.load("/real/y") == 2
    _assert_consistent(backend)


def test_structural_changes_keep_the_tables_in_step() -> None:
    backend = MemoryStorageBackend()
    backend.ensure_directory("/p/w1/s")
    for path in ("/p/w1/a", "/p/w1/s/b", "/p/top"):
        backend.save(path, path)
    backend.move("/p/w1", "/p/w2")
    assert backend.load("/p/w2/s/b") == "/p/w1/s/b" and not backend.exists("/p/w1")
    backend.copy("/p/w2", "/q")
    assert backend.load("/q/s/b") == "/p/w1/s/b"
    backend.delete_all("/p/w2")
    assert backend.load("/q/a") == "/p/w1/a"
    backend.create_symlink("/q/a", "/p/top", overwrite=True)
    assert backend.load("/p/top") == "/p/w1/a"
    _assert_consistent(backend)
    backend.clear()
    assert backend._files == {} and backend._index == {"/": backend._root}


def test_store_size_does_not_change_what_a_save_touches() -> None:
    backend = MemoryStorageBackend()
    for well in range(50):
        backend.ensure_directory(f"/plate/w{well}")
        backend.save_batch(list(range(100)), [f"/plate/w{well}/f{i}" for i in range(100)])
    assert len(backend._files) == 5000 and len(backend._index) == 52
    assert backend.list_files("/plate/w7")[:3] == ["/plate/w7/f0", "/plate/w7/f1", "/plate/w7/f2"]
    _assert_consistent(backend)


class _SpelledMachine(backend_state_machine(MemoryStorageBackend, max_examples=40)):  # type: ignore[misc]
    """Operations through other spellings of a path behave as through its normal form,
    and the tree, the directory index and the file table always agree."""

    @rule(path=FILE_PATHS, spelling=st.sampled_from(_SPELLINGS), overwrite=st.booleans())
    def save_spelled(self, path: str, spelling: Any, overwrite: bool) -> None:
        self.counter += 1
        data = np.array([self.counter], dtype=np.int64)
        self._compare(
            lambda: self.model.save(data, path, overwrite=overwrite),
            lambda: self.real.save(data, spelling(path), overwrite=overwrite),
        )

    @rule(path=FILE_PATHS, spelling=st.sampled_from(_SPELLINGS))
    def load_spelled(self, path: str, spelling: Any) -> None:
        self._compare(lambda: self.model.load(path), lambda: self.real.load(spelling(path)))

    @rule(path=ANY_PATHS, spelling=st.sampled_from(_SPELLINGS))
    def delete_spelled(self, path: str, spelling: Any) -> None:
        self._compare(lambda: self.model.delete(path), lambda: self.real.delete(spelling(path)))

    def _compare(self, expected: Any, actual: Any) -> None:
        want, got = _outcome(expected), _outcome(actual)
        assert want[0] == got[0] and _same(want[1], got[1]), (want, got)

    @invariant()
    def tables_match_tree(self) -> None:
        _assert_consistent(self.model)
        _assert_consistent(self.real)


TestMemorySpellingsAndTables = _SpelledMachine.TestCase
TestMemorySpellingsAndTables.settings = settings(
    max_examples=40, stateful_step_count=25, deadline=None
)


def test_batches_take_the_table_route_and_still_refuse_bad_items() -> None:
    backend = MemoryStorageBackend()
    backend.ensure_directory("/d")
    backend.save_batch([1, 2], ["/d/a", "d/./b"])
    assert backend.load_batch(["/d/a", "/d//b"]) == [1, 2]
    with pytest.raises(BatchError) as info:
        backend.save_batch([3, 4], ["/d/c", "/"])
    assert info.value.index == 1 and not backend.exists("/d/c")
    with pytest.raises(BatchError) as info:
        backend.save_batch([3, 4], ["/d/c", "/d/a"])
    assert info.value.index == 1 and isinstance(info.value.__cause__, AlreadyExistsError)
    with pytest.raises(BatchError) as info:
        backend.load_batch(["/d/a", "/d/missing"])
    assert info.value.index == 1 and isinstance(info.value.__cause__, NotFoundError)
    backend.save_batch([5, 6], ["/d/a", "/d/b"], overwrite=True)
    assert backend.load_batch(["/d/a", "/d/b"]) == [5, 6]
    _assert_consistent(backend)


def test_batches_stage_arrays_read_only_without_copies() -> None:
    backend = MemoryStorageBackend()
    arrays = [np.arange(4.0), np.zeros(3)]
    backend.save_batch(arrays, ["/a.npy", "/b.npy"])
    for original, stored in zip(arrays, backend.load_batch(["/a.npy", "/b.npy"]), strict=True):
        assert np.shares_memory(original, stored) and not stored.flags.writeable
        assert original.flags.writeable
