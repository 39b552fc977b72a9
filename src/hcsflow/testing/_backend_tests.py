"""``BackendTests``: the conformance suite every storage backend subclasses once.

Usage (pytest)::

    class TestMyBackend(BackendTests):
        @pytest.fixture
        def backend(self, tmp_path): return MyBackend(tmp_path)
        def backdoor_write(self, backend, path, value): ...
        def backdoor_read(self, backend, path): ...
        def backdoor_exists(self, backend, path): ...
        def backdoor_mkdir(self, backend, path): ...
        def backdoor_symlink(self, backend, target, link): ...

The back-door helpers reach the storage without the backend's API (the memory tree,
``numpy.save`` on real paths, zarr directly...) so the tests check what was really
stored, not only that the backend agrees with itself.  Data in these tests is small
integer numpy arrays saved under ``.npy`` names, which every backend must hold.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from hcsflow.errors import (
    AlreadyExistsError,
    BatchError,
    BatchLengthError,
    DirectoryNotEmptyError,
    HcsflowError,
    InvalidPathError,
    IsADirectoryStorageError,
    NotADirectoryStorageError,
    NotFoundError,
    PathEscapeError,
    StorageError,
    SymlinkLoopError,
)
from hcsflow.storage._base import FileInfo, StorageBackend

__all__ = ["BackendTests"]


def _arr(value: int, n: int = 4) -> np.ndarray:
    return np.arange(n, dtype=np.int64) + value


def _names_backend(exc: BaseException, backend: StorageBackend, path: str | None = None) -> None:
    assert isinstance(exc, StorageError), f"{type(exc).__name__} is not a StorageError"
    assert exc.backend == backend.name, f"error names backend {exc.backend!r}"
    if path is not None:
        assert path in str(exc), f"{path!r} not in error message {str(exc)!r}"


def _run_threads(work: Any, count: int) -> None:
    """Run ``work(0)`` .. ``work(count - 1)`` on their own threads and wait for all."""
    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


class BackendTests:
    """Conformance tests; subclass once and provide the fixture and back-door helpers."""

    # ------------------------------------------------------------------ hooks

    @pytest.fixture
    def backend(self) -> StorageBackend:
        """The backend under test, empty, fresh for each test."""
        raise TypeError("BackendTests subclasses must override the `backend` fixture")

    def backdoor_write(self, backend: StorageBackend, path: str, value: np.ndarray) -> None:
        """Store ``value`` at ``path`` (parent directories already exist) without the API."""
        raise TypeError(f"{type(self).__name__} must implement backdoor_write")

    def backdoor_read(self, backend: StorageBackend, path: str) -> np.ndarray:
        """The array stored at ``path``, read without the API."""
        raise TypeError(f"{type(self).__name__} must implement backdoor_read")

    def backdoor_exists(self, backend: StorageBackend, path: str) -> bool:
        """Whether anything (file, directory or link) is stored at ``path``."""
        raise TypeError(f"{type(self).__name__} must implement backdoor_exists")

    def backdoor_mkdir(self, backend: StorageBackend, path: str) -> None:
        """Create the directory ``path`` (parents exist) without the API."""
        raise TypeError(f"{type(self).__name__} must implement backdoor_mkdir")

    def backdoor_symlink(self, backend: StorageBackend, target: str, link: str) -> None:
        """Create a symlink without any check (used to build loops)."""
        raise TypeError(f"{type(self).__name__} must implement backdoor_symlink")

    # ------------------------------------------------------------------ save / load

    def test_save_then_backdoor_read(self, backend: StorageBackend) -> None:
        backend.ensure_directory("/plate/A01")
        backend.save(_arr(1), "/plate/A01/img.npy")
        np.testing.assert_array_equal(self.backdoor_read(backend, "/plate/A01/img.npy"), _arr(1))

    def test_backdoor_write_then_load(self, backend: StorageBackend) -> None:
        self.backdoor_mkdir(backend, "/d")
        self.backdoor_write(backend, "/d/x.npy", _arr(7))
        out = backend.load("/d/x.npy")
        np.testing.assert_array_equal(out, _arr(7))
        assert out.dtype == np.int64

    def test_relative_and_dotted_paths_normalise(self, backend: StorageBackend) -> None:
        backend.ensure_directory("d/e")
        backend.save(_arr(2), "d/./e/../e/x.npy")
        np.testing.assert_array_equal(backend.load("/d/e/x.npy"), _arr(2))
        assert backend.exists("//d//e/x.npy")

    def test_save_refuses_existing_target(self, backend: StorageBackend) -> None:
        backend.ensure_directory("/d")
        backend.save(_arr(1), "/d/x.npy")
        with pytest.raises(AlreadyExistsError) as info:
            backend.save(_arr(2), "/d/x.npy")
        assert isinstance(info.value, FileExistsError)
        _names_backend(info.value, backend, "/d/x.npy")
        np.testing.assert_array_equal(self.backdoor_read(backend, "/d/x.npy"), _arr(1))
        backend.save(_arr(2), "/d/x.npy", overwrite=True)
        np.testing.assert_array_equal(backend.load("/d/x.npy"), _arr(2))

    def test_save_needs_parent(self, backend: StorageBackend) -> None:
        with pytest.raises(NotFoundError) as info:
            backend.save(_arr(1), "/missing/x.npy")
        _names_backend(info.value, backend, "/missing")
        assert not self.backdoor_exists(backend, "/missing")

    def test_save_under_a_file(self, backend: StorageBackend) -> None:
        backend.save(_arr(1), "/f.npy")
        with pytest.raises(NotADirectoryStorageError) as info:
            backend.save(_arr(1), "/f.npy/x.npy")
        _names_backend(info.value, backend)

    def test_save_onto_directory(self, backend: StorageBackend) -> None:
        backend.ensure_directory("/d.npy")
        with pytest.raises(IsADirectoryStorageError) as info:
            backend.save(_arr(1), "/d.npy", overwrite=True)
        _names_backend(info.value, backend, "/d.npy")
        assert backend.is_dir("/d.npy")

    def test_load_missing(self, backend: StorageBackend) -> None:
        with pytest.raises(NotFoundError) as info:
            backend.load("/nope.npy")
        assert isinstance(info.value, FileNotFoundError)
        _names_backend(info.value, backend, "/nope.npy")

    def test_paths_below_a_file(self, backend: StorageBackend) -> None:
        backend.save(_arr(1), "/y.npy")
        backend.create_symlink("/y.npy", "/b")
        for path in ("/y.npy/x.npy", "/b/x.npy"):
            for call in (backend.load, lambda p: backend.copy(p, "/z.npy")):
                with pytest.raises(NotADirectoryStorageError) as info:
                    call(path)
                _names_backend(info.value, backend)
        with pytest.raises(NotFoundError):
            backend.create_symlink("/y.npy/q.npy", "/x.npy")
        # a file further up (here through a link) is still "not a directory"
        deep = "/b/a/x.npy"
        writes = (
            lambda: backend.save(_arr(2), deep),
            lambda: backend.copy("/y.npy", deep),
            lambda: backend.create_symlink("/y.npy", deep),
            lambda: backend.move("/y.npy", deep),
            lambda: list(backend.walk("/b/a")),
            lambda: backend.list_files("/y.npy/a"),
            lambda: backend.mirror_directory("/b/a", "/m"),
        )
        for write in writes:
            with pytest.raises(NotADirectoryStorageError):
                write()
        with pytest.raises(BatchError) as batch:
            backend.save_batch([_arr(2)], [deep])
        assert isinstance(batch.value.__cause__, NotADirectoryStorageError)
        assert backend.list_dir("/") == ["b", "y.npy"]

    def test_load_directory(self, backend: StorageBackend) -> None:
        backend.ensure_directory("/d.npy")
        with pytest.raises(IsADirectoryStorageError) as info:
            backend.load("/d.npy")
        _names_backend(info.value, backend, "/d.npy")

    @pytest.mark.parametrize("bad", ["../x.npy", "/a/../../x.npy", "/.."])
    def test_path_escaping_the_root(self, backend: StorageBackend, bad: str) -> None:
        with pytest.raises(PathEscapeError) as info:
            backend.save(_arr(1), bad)
        _names_backend(info.value, backend)
        with pytest.raises(PathEscapeError):
            backend.load(bad)

    @pytest.mark.parametrize("bad", ["", "a\x00b.npy"])
    def test_invalid_paths(self, backend: StorageBackend, bad: str) -> None:
        with pytest.raises(InvalidPathError) as info:
            backend.save(_arr(1), bad)
        _names_backend(info.value, backend)

    # ------------------------------------------------------------------ directories

    def test_ensure_directory(self, backend: StorageBackend) -> None:
        assert backend.ensure_directory("a/b/c/") == "/a/b/c"
        assert backend.ensure_directory("/a/b/c") == "/a/b/c"
        assert self.backdoor_exists(backend, "/a/b/c")
        assert backend.is_dir("/a/b") and not backend.is_file("/a/b")

    def test_ensure_directory_through_a_file(self, backend: StorageBackend) -> None:
        backend.save(_arr(1), "/f.npy")
        with pytest.raises(NotADirectoryStorageError) as info:
            backend.ensure_directory("/f.npy/sub")
        _names_backend(info.value, backend)

    def test_ensure_directory_through_a_dangling_link(self, backend: StorageBackend) -> None:
        backend.ensure_directory("/t")
        backend.create_symlink("/t", "/l")
        backend.delete("/t")
        for path in ("/l", "/l/x"):
            with pytest.raises(NotFoundError) as info:
                backend.ensure_directory(path)
            _names_backend(info.value, backend, "/l")
        # nothing was created at the link's old target
        assert not backend.exists("/t") and not self.backdoor_exists(backend, "/t")
        assert backend.is_symlink("/l")

    def test_list_dir_natural_order(self, backend: StorageBackend) -> None:
        backend.ensure_directory("/d/A10")
        backend.ensure_directory("/d/A2")
        for name in ["img_10.npy", "img_2.npy", "img_1.npy"]:
            backend.save(_arr(0), f"/d/{name}")
        assert backend.list_dir("/d") == ["A2", "A10", "img_1.npy", "img_2.npy", "img_10.npy"]

    def test_list_dir_errors(self, backend: StorageBackend) -> None:
        with pytest.raises(NotFoundError):
            backend.list_dir("/missing")
        backend.save(_arr(0), "/f.npy")
        with pytest.raises(NotADirectoryStorageError):
            backend.list_dir("/f.npy")

    def test_list_files_filters(self, backend: StorageBackend) -> None:
        backend.ensure_directory("/p/w1/sub")
        for path in ["/p/b_10.npy", "/p/b_9.npy", "/p/a.NPY", "/p/w1/c_1.npy", "/p/w1/sub/d.npy"]:
            backend.save(_arr(0), path)
        assert backend.list_files("/p") == ["/p/a.NPY", "/p/b_9.npy", "/p/b_10.npy"]
        assert backend.list_files("/p", pattern="b_*") == ["/p/b_9.npy", "/p/b_10.npy"]
        assert backend.list_files("/p", extensions=[".npy"], recursive=True) == [
            "/p/a.NPY",
            "/p/b_9.npy",
            "/p/b_10.npy",
            "/p/w1/c_1.npy",
            "/p/w1/sub/d.npy",
        ]
        assert backend.list_files("/p", extensions=["tif"]) == []
        assert backend.list_image_files("/p/w1", recursive=True) == [
            "/p/w1/c_1.npy",
            "/p/w1/sub/d.npy",
        ]

    def test_find_file_recursive(self, backend: StorageBackend) -> None:
        backend.ensure_directory("/p/a/b")
        backend.save(_arr(0), "/p/a/b/target.npy")
        assert backend.find_file_recursive("/p", "target.npy") == "/p/a/b/target.npy"
        with pytest.raises(NotFoundError):
            backend.find_file_recursive("/p", "other.npy")

    def test_queries(self, backend: StorageBackend) -> None:
        backend.ensure_directory("/d")
        backend.save(_arr(0), "/d/f.npy")
        assert backend.exists("/d") and backend.exists("/d/f.npy") and backend.exists("/")
        assert backend.is_file("/d/f.npy") and not backend.is_dir("/d/f.npy")
        assert not backend.exists("/d/g.npy") and not backend.is_symlink("/d/f.npy")
        assert not backend.exists("/d/f.npy/below")

    def test_stat(self, backend: StorageBackend) -> None:
        backend.ensure_directory("/d")
        backend.save(_arr(0), "/d/f.npy")
        backend.create_symlink("/d/f.npy", "/d/l.npy")
        info = backend.stat("/d/f.npy")
        assert isinstance(info, FileInfo) and info.kind == "file" and info.path == "/d/f.npy"
        assert backend.stat("/d").kind == "directory"
        link = backend.stat("/d/l.npy")
        assert link.kind == "symlink" and link.target == "/d/f.npy"
        with pytest.raises(NotFoundError):
            backend.stat("/d/missing")

    # ------------------------------------------------------------------ deletion

    def test_delete(self, backend: StorageBackend) -> None:
        backend.ensure_directory("/d/e")
        backend.save(_arr(0), "/d/e/f.npy")
        with pytest.raises(DirectoryNotEmptyError) as info:
            backend.delete("/d/e")
        _names_backend(info.value, backend, "/d/e")
        backend.delete("/d/e/f.npy")
        assert not self.backdoor_exists(backend, "/d/e/f.npy")
        backend.delete("/d/e")
        assert not self.backdoor_exists(backend, "/d/e")
        with pytest.raises(NotFoundError):
            backend.delete("/d/e")
        with pytest.raises(InvalidPathError):
            backend.delete("/")

    def test_names_resembling_internal_ones_are_ordinary_entries(
        self, backend: StorageBackend
    ) -> None:
        # backends keep their own in-flight entries out of listings; a user's entry
        # that merely ends like one must still be listed and must keep its parent
        # from counting as empty
        backend.ensure_directory("/d/run.partial")
        backend.ensure_directory("/d/old.deleting")
        backend.save(_arr(1), "/d/run.partial/x.npy")
        assert backend.list_dir("/d") == ["old.deleting", "run.partial"]
        assert backend.list_files("/d", recursive=True) == ["/d/run.partial/x.npy"]
        backend.delete("/d/old.deleting")
        with pytest.raises(DirectoryNotEmptyError):
            backend.delete("/d")
        np.testing.assert_array_equal(backend.load("/d/run.partial/x.npy"), _arr(1))

    def test_delete_all(self, backend: StorageBackend) -> None:
        backend.ensure_directory("/d/e/f")
        backend.save(_arr(0), "/d/e/f/x.npy")
        backend.save(_arr(0), "/d/y.npy")
        backend.delete_all("/d")
        assert not self.backdoor_exists(backend, "/d")
        assert backend.list_dir("/") == []
        backend.ensure_directory("/d/e")  # the tree can be rebuilt afterwards
        assert backend.list_dir("/d") == ["e"]
        with pytest.raises(NotFoundError):
            backend.delete_all("/nothing")

    # ------------------------------------------------------------------ symlinks

    def test_symlink_to_file(self, backend: StorageBackend) -> None:
        backend.save(_arr(3), "/f.npy")
        backend.create_symlink("/f.npy", "/l.npy")
        assert backend.is_symlink("/l.npy") and backend.is_file("/l.npy")
        assert backend.read_link("/l.npy") == "/f.npy"
        np.testing.assert_array_equal(backend.load("/l.npy"), _arr(3))
        backend.delete("/l.npy")
        assert backend.exists("/f.npy") and not backend.exists("/l.npy")

    def test_symlink_chain_and_directory(self, backend: StorageBackend) -> None:
        backend.ensure_directory("/real")
        backend.save(_arr(4), "/real/f.npy")
        backend.create_symlink("/real", "/alias")
        backend.create_symlink("/alias", "/alias2")
        np.testing.assert_array_equal(backend.load("/alias2/f.npy"), _arr(4))
        backend.save(_arr(5), "/alias/g.npy")
        np.testing.assert_array_equal(self.backdoor_read(backend, "/real/g.npy"), _arr(5))
        assert backend.list_dir("/alias2") == ["f.npy", "g.npy"]
        assert backend.is_dir("/alias") and backend.is_symlink("/alias")
        backend.delete_all("/alias")  # removes the link only
        assert backend.list_dir("/real") == ["f.npy", "g.npy"]

    def test_dangling_symlink(self, backend: StorageBackend) -> None:
        backend.save(_arr(0), "/f.npy")
        backend.create_symlink("/f.npy", "/l.npy")
        backend.delete("/f.npy")
        assert not backend.exists("/l.npy") and backend.is_symlink("/l.npy")
        with pytest.raises(NotFoundError):
            backend.load("/l.npy")
        assert backend.list_dir("/") == ["l.npy"]

    def test_symlink_rules(self, backend: StorageBackend) -> None:
        backend.save(_arr(0), "/f.npy")
        backend.save(_arr(1), "/g.npy")
        with pytest.raises(NotFoundError):
            backend.create_symlink("/missing.npy", "/l.npy")
        backend.create_symlink("/f.npy", "/l.npy")
        with pytest.raises(AlreadyExistsError):
            backend.create_symlink("/g.npy", "/l.npy")
        backend.create_symlink("/g.npy", "/l.npy", overwrite=True)
        np.testing.assert_array_equal(backend.load("/l.npy"), _arr(1))
        with pytest.raises(InvalidPathError):
            backend.create_symlink("/l.npy", "/l.npy", overwrite=True)

    def test_symlink_that_would_loop_is_refused(self, backend: StorageBackend) -> None:
        backend.save(_arr(0), "/f.npy")
        backend.create_symlink("/f.npy", "/l.npy")
        with pytest.raises(SymlinkLoopError):
            backend.create_symlink("/l.npy", "/f.npy", overwrite=True)
        np.testing.assert_array_equal(backend.load("/l.npy"), _arr(0))

    def test_symlink_loop(self, backend: StorageBackend) -> None:
        self.backdoor_symlink(backend, "/b.npy", "/a.npy")
        self.backdoor_symlink(backend, "/a.npy", "/b.npy")
        with pytest.raises(SymlinkLoopError) as info:
            backend.load("/a.npy")
        _names_backend(info.value, backend)
        assert backend.is_symlink("/a.npy") and not backend.exists("/a.npy")
        backend.delete("/a.npy")
        assert backend.list_dir("/") == ["b.npy"]

    def test_save_over_symlink_replaces_the_link(self, backend: StorageBackend) -> None:
        backend.save(_arr(0), "/f.npy")
        backend.create_symlink("/f.npy", "/l.npy")
        with pytest.raises(AlreadyExistsError):
            backend.save(_arr(9), "/l.npy")
        backend.save(_arr(9), "/l.npy", overwrite=True)
        assert not backend.is_symlink("/l.npy")
        np.testing.assert_array_equal(backend.load("/f.npy"), _arr(0))
        np.testing.assert_array_equal(backend.load("/l.npy"), _arr(9))

    # ------------------------------------------------------------------ move / copy

    def test_move_file(self, backend: StorageBackend) -> None:
        backend.ensure_directory("/a")
        backend.ensure_directory("/b")
        backend.save(_arr(1), "/a/f.npy")
        backend.move("/a/f.npy", "/b/g.npy")
        assert not self.backdoor_exists(backend, "/a/f.npy")
        np.testing.assert_array_equal(self.backdoor_read(backend, "/b/g.npy"), _arr(1))

    def test_move_rules(self, backend: StorageBackend) -> None:
        backend.save(_arr(1), "/f.npy")
        backend.save(_arr(2), "/g.npy")
        backend.save(_arr(3), "/h.npy")
        with pytest.raises(AlreadyExistsError):
            backend.move("/f.npy", "/g.npy")
        with pytest.raises(NotFoundError):
            backend.move("/missing.npy", "/x.npy")
        with pytest.raises(NotFoundError):
            backend.move("/f.npy", "/nodir/x.npy")
        backend.create_symlink("/h.npy", "/l.npy")
        with pytest.raises(AlreadyExistsError):
            backend.move("/f.npy", "/l.npy")
        backend.move("/f.npy", "/l.npy", replace_symlinks=True)
        assert not backend.is_symlink("/l.npy") and not backend.exists("/f.npy")
        np.testing.assert_array_equal(backend.load("/l.npy"), _arr(1))
        with pytest.raises(AlreadyExistsError):
            backend.move("/l.npy", "/g.npy", replace_symlinks=True)

    def test_move_directory(self, backend: StorageBackend) -> None:
        backend.ensure_directory("/a/b/c")
        backend.save(_arr(5), "/a/b/c/f.npy")
        backend.move("/a", "/z")
        np.testing.assert_array_equal(backend.load("/z/b/c/f.npy"), _arr(5))
        assert not backend.exists("/a/b") and backend.list_dir("/") == ["z"]
        backend.save(_arr(6), "/z/b/g.npy")
        with pytest.raises(InvalidPathError):
            backend.move("/z", "/z/b/inner")
        backend.ensure_directory("/a")  # the old name is free again
        assert backend.list_dir("/a") == []

    def test_move_symlink_keeps_target(self, backend: StorageBackend) -> None:
        backend.ensure_directory("/x/y")
        backend.save(_arr(1), "/f.npy")
        backend.create_symlink("/f.npy", "/l.npy")
        backend.move("/l.npy", "/x/y/l.npy")
        assert backend.read_link("/x/y/l.npy") == "/f.npy"
        np.testing.assert_array_equal(backend.load("/x/y/l.npy"), _arr(1))

    def test_copy_file(self, backend: StorageBackend) -> None:
        backend.save(_arr(1), "/f.npy")
        backend.save(_arr(2), "/g.npy")
        backend.copy("/f.npy", "/c.npy")
        np.testing.assert_array_equal(self.backdoor_read(backend, "/c.npy"), _arr(1))
        with pytest.raises(AlreadyExistsError):
            backend.copy("/f.npy", "/g.npy")
        backend.copy("/f.npy", "/g.npy", overwrite=True)
        np.testing.assert_array_equal(backend.load("/g.npy"), _arr(1))
        with pytest.raises(NotFoundError):
            backend.copy("/missing.npy", "/m.npy")
        backend.ensure_directory("/d")
        backend.ensure_directory("/d.npy")
        for target in ("/d", "/d.npy"):  # a directory, with or without a file extension
            with pytest.raises(IsADirectoryStorageError):
                backend.copy("/f.npy", target, overwrite=True)

    def test_copy_tree(self, backend: StorageBackend) -> None:
        backend.ensure_directory("/src/sub")
        backend.save(_arr(1), "/src/sub/f.npy")
        backend.save(_arr(2), "/outside.npy")
        backend.create_symlink("/outside.npy", "/src/l.npy")
        backend.copy("/src", "/dst")
        np.testing.assert_array_equal(backend.load("/dst/sub/f.npy"), _arr(1))
        assert backend.is_symlink("/dst/l.npy")
        assert backend.read_link("/dst/l.npy") == "/outside.npy"
        backend.save(_arr(3), "/dst/sub/new.npy")
        assert not backend.exists("/src/sub/new.npy")
        with pytest.raises(AlreadyExistsError):
            backend.copy("/src", "/dst")
        with pytest.raises(InvalidPathError):
            backend.copy("/src", "/src/sub/again")

    # ------------------------------------------------------------------ mirror

    def test_mirror_directory_nested(self, backend: StorageBackend) -> None:
        backend.ensure_directory("/src/A01/z")
        backend.ensure_directory("/src/B02")
        files = ["/src/top.npy", "/src/A01/a.npy", "/src/A01/z/deep.npy", "/src/B02/b.npy"]
        for i, path in enumerate(files):
            backend.save(_arr(i), path)
        assert backend.mirror_directory("/src", "/dst") == 4
        for i, path in enumerate(files):
            mirrored = "/dst" + path[len("/src") :]
            assert backend.is_symlink(mirrored)
            assert backend.read_link(mirrored) == path
            np.testing.assert_array_equal(backend.load(mirrored), _arr(i))
        assert backend.list_files("/dst", recursive=True) == [
            "/dst/A01/a.npy",
            "/dst/A01/z/deep.npy",
            "/dst/B02/b.npy",
            "/dst/top.npy",
        ]

    def test_mirror_directory_overwrite_rules(self, backend: StorageBackend) -> None:
        backend.ensure_directory("/src")
        backend.ensure_directory("/dst")
        backend.save(_arr(1), "/src/a.npy")
        backend.save(_arr(2), "/src/b.npy")
        backend.save(_arr(3), "/other.npy")
        backend.create_symlink("/other.npy", "/dst/a.npy")
        with pytest.raises(AlreadyExistsError):
            backend.mirror_directory("/src", "/dst")
        assert not backend.exists("/dst/b.npy")  # nothing was created
        assert backend.mirror_directory("/src", "/dst", overwrite_symlinks_only=True) == 2
        np.testing.assert_array_equal(backend.load("/dst/a.npy"), _arr(1))
        backend.delete("/dst/b.npy")
        backend.save(_arr(4), "/dst/b.npy")
        with pytest.raises(AlreadyExistsError):
            backend.mirror_directory("/src", "/dst", overwrite_symlinks_only=True)
        with pytest.raises(InvalidPathError):
            backend.mirror_directory("/src", "/src/inner")

    # ------------------------------------------------------------------ batches

    def test_batch_round_trip_in_order(self, backend: StorageBackend) -> None:
        backend.ensure_directory("/b")
        paths = [f"/b/img_{i}.npy" for i in range(12)]
        backend.save_batch([_arr(i) for i in range(12)], paths)
        for i, out in enumerate(backend.load_batch(paths[::-1])):
            np.testing.assert_array_equal(out, _arr(11 - i))
        np.testing.assert_array_equal(self.backdoor_read(backend, "/b/img_5.npy"), _arr(5))

    def test_save_batch_checks_every_target_first(self, backend: StorageBackend) -> None:
        backend.ensure_directory("/b")
        backend.save(_arr(100), "/b/2.npy")
        paths = [f"/b/{i}.npy" for i in range(4)]
        with pytest.raises(BatchError) as info:
            backend.save_batch([_arr(i) for i in range(4)], paths)
        assert info.value.index == 2 and info.value.path == "/b/2.npy"
        assert isinstance(info.value.__cause__, AlreadyExistsError)
        assert backend.list_dir("/b") == ["2.npy"]
        np.testing.assert_array_equal(backend.load("/b/2.npy"), _arr(100))

    def test_save_batch_argument_errors(self, backend: StorageBackend) -> None:
        with pytest.raises(ValueError) as info:
            backend.save_batch([_arr(0)], ["/a.npy", "/b.npy"])
        assert isinstance(info.value, BatchLengthError)
        _names_backend(info.value, backend)
        with pytest.raises(InvalidPathError):
            backend.save_batch([_arr(0), _arr(1)], ["/a.npy", "//a.npy"])
        assert backend.list_dir("/") == []

    def test_load_batch_names_the_failing_path(self, backend: StorageBackend) -> None:
        backend.save(_arr(0), "/a.npy")
        with pytest.raises(BatchError) as info:
            backend.load_batch(["/a.npy", "/missing.npy"])
        assert info.value.index == 1 and "/missing.npy" in str(info.value)
        assert isinstance(info.value.__cause__, NotFoundError)

    # ------------------------------------------------------------------ concurrency

    def test_concurrent_writers_lose_nothing(self, backend: StorageBackend) -> None:
        backend.ensure_directory("/c")
        errors: list[BaseException] = []

        def writer(worker: int) -> None:
            try:
                for i in range(20):
                    backend.save(_arr(worker * 100 + i), f"/c/w{worker}_{i}.npy")
            except BaseException as exc:  # collected and re-raised by the test thread
                errors.append(exc)

        _run_threads(writer, 4)
        assert errors == []
        assert len(backend.list_dir("/c")) == 80
        np.testing.assert_array_equal(backend.load("/c/w3_19.npy"), _arr(319))

    def test_concurrent_no_clobber_saves(self, backend: StorageBackend) -> None:
        backend.ensure_directory("/c")
        outcomes: list[Any] = []
        barrier = threading.Barrier(4)

        def writer(worker: int) -> None:
            barrier.wait()
            try:
                backend.save(_arr(worker), "/c/one.npy")
                outcomes.append(worker)
            except AlreadyExistsError:
                outcomes.append("refused")
            except HcsflowError as exc:
                outcomes.append(exc)

        _run_threads(writer, 4)
        winners = [o for o in outcomes if isinstance(o, int)]
        assert len(winners) == 1 and outcomes.count("refused") == 3, outcomes
        np.testing.assert_array_equal(backend.load("/c/one.npy"), _arr(winners[0]))

    def test_concurrent_overwrites_of_a_new_path_are_never_refused(
        self, backend: StorageBackend
    ) -> None:
        # every thread races to create the same path with overwrite=True: none may get
        # AlreadyExistsError (or anything else), and the last write wins whole
        backend.ensure_directory("/c")
        errors: list[BaseException] = []
        barrier = threading.Barrier(4)

        def writer(worker: int) -> None:
            barrier.wait()
            try:
                for i in range(5):
                    backend.save(_arr(worker * 10 + i), "/c/race.npy", overwrite=True)
            except BaseException as exc:  # collected and re-raised by the test thread
                errors.append(exc)

        _run_threads(writer, 4)
        assert errors == [], errors
        value = backend.load("/c/race.npy")
        assert int(value[0]) in {w * 10 + i for w in range(4) for i in range(5)}
        np.testing.assert_array_equal(value, _arr(int(value[0])))

    def test_long_names_are_limited_in_bytes_not_characters(self, backend: StorageBackend) -> None:
        # 240 bytes of UTF-8 (120 characters): valid on every file system, so no
        # temporary or in-flight name derived from it may make it fail
        name = "é" * 118 + ".npy"
        backend.ensure_directory("/long")
        backend.save(_arr(1), f"/long/{name}")
        backend.save(_arr(2), f"/long/{name}", overwrite=True)
        np.testing.assert_array_equal(backend.load(f"/long/{name}"), _arr(2))
        backend.copy(f"/long/{name}", f"/long/{name[:-4]}x.npy")
        assert backend.list_dir("/long") == sorted([name, f"{name[:-4]}x.npy"])
        backend.delete(f"/long/{name}")
        assert not backend.exists(f"/long/{name}")
