"""The disk backend: the conformance suite plus root mapping, atomicity and batches."""

from __future__ import annotations

import os

import numpy as np
import pytest

from hcsflow.errors import (
    AlreadyExistsError,
    BatchError,
    DataFormatError,
    NotFoundError,
    PathEscapeError,
)
from hcsflow.storage import DiskStorageBackend
from hcsflow.storage.disk import _publish as disk_module
from hcsflow.storage.disk import is_temp_name
from hcsflow.testing import BackendTests


def _real(backend: DiskStorageBackend, path: str) -> str:
    assert backend.root is not None
    return backend.root + path


def use_mode(monkeypatch, mode: str) -> None:
    """Take a fallback route: ``walk`` resolves paths without openat2 (one O_NOFOLLOW
    openat per component), ``named`` writes named temporary files (no O_TMPFILE)."""
    from hcsflow.storage import _contain

    if mode == "walk":
        monkeypatch.setattr(_contain._Openat2, "available", False)
    elif mode == "named":
        monkeypatch.setattr(disk_module, "_O_TMPFILE", 0)


class TestDiskBackend(BackendTests):
    @pytest.fixture(params=["default", "walk", "named"])
    def backend(self, request, tmp_path, monkeypatch) -> DiskStorageBackend:
        use_mode(monkeypatch, request.param)
        root = tmp_path / "root"
        root.mkdir()
        return DiskStorageBackend(root)

    def backdoor_write(self, backend, path, value):
        np.save(_real(backend, path), value)

    def backdoor_read(self, backend, path):
        return np.load(_real(backend, path))

    def backdoor_exists(self, backend, path):
        return os.path.lexists(_real(backend, path))

    def backdoor_mkdir(self, backend, path):
        os.mkdir(_real(backend, path))

    def backdoor_symlink(self, backend, target, link):
        os.symlink(_real(backend, target), _real(backend, link))


@pytest.fixture
def disk(tmp_path) -> DiskStorageBackend:
    root = tmp_path / "root"
    root.mkdir()
    return DiskStorageBackend(root)


def test_without_root_virtual_paths_are_real_paths(tmp_path) -> None:
    backend = DiskStorageBackend()
    target = str(tmp_path / "x.npy")
    backend.save(np.arange(3), target)
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert backend.list_files(str(tmp_path)) == [target]


def test_root_must_exist(tmp_path) -> None:
    with pytest.raises(NotFoundError):
        DiskStorageBackend(tmp_path / "missing")


def test_symlinks_store_absolute_real_targets(disk) -> None:
    disk.ensure_directory("/a")
    disk.save(np.arange(2), "/a/f.npy")
    disk.create_symlink("/a/f.npy", "/l.npy")
    assert os.readlink(_real(disk, "/l.npy")) == _real(disk, "/a/f.npy")
    assert disk.read_link("/l.npy") == "/a/f.npy"


def test_relative_symlinks_made_elsewhere_are_read(disk) -> None:
    disk.ensure_directory("/a")
    disk.save(np.arange(2), "/a/f.npy")
    os.symlink("a/f.npy", _real(disk, "/rel.npy"))
    assert disk.read_link("/rel.npy") == "/a/f.npy"
    np.testing.assert_array_equal(disk.load("/rel.npy"), np.arange(2))


def test_symlink_out_of_the_root_is_refused(disk, tmp_path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    np.save(outside / "secret.npy", np.arange(3))
    os.symlink(outside, _real(disk, "/escape"))
    os.symlink(outside / "secret.npy", _real(disk, "/secret.npy"))
    with pytest.raises(PathEscapeError):
        disk.load("/escape/secret.npy")
    with pytest.raises(PathEscapeError):
        disk.load("/secret.npy")
    with pytest.raises(PathEscapeError):
        disk.save(np.arange(3), "/escape/new.npy")
    with pytest.raises(PathEscapeError):
        disk.read_link("/secret.npy")
    with pytest.raises(PathEscapeError):
        disk.list_files("/", recursive=True)
    assert sorted(os.listdir(outside)) == ["secret.npy"]


def test_temporary_files_are_hidden_and_cleaned_up(disk) -> None:
    disk.ensure_directory("/d")
    open(_real(disk, "/d/.hcsflow-x.tif.abc.tmp"), "wb").close()
    disk.save(np.arange(3), "/d/x.npy")
    assert disk.list_dir("/d") == ["x.npy"]
    assert disk.list_files("/d") == ["/d/x.npy"]
    with pytest.raises(DataFormatError):
        disk.save([1, 2], "/d/y.tif")
    with pytest.raises(DataFormatError):
        disk.save(np.zeros((2, 2), dtype=np.float64), "/d/z.png")
    assert sorted(n for n in os.listdir(_real(disk, "/d")) if not n.startswith(".hcsflow-x")) == [
        "x.npy"
    ]


def test_failed_encode_removes_the_temporary_file(disk) -> None:
    disk.ensure_directory("/d")
    with pytest.raises(DataFormatError):
        # tifffile rejects this option value only while writing
        disk.save(np.zeros((4, 4), np.uint16), "/d/x.tif", compression="no-such-codec")
    assert os.listdir(_real(disk, "/d")) == []


def test_new_files_get_the_umask_mode(disk) -> None:
    disk.save(np.arange(2), "/x.npy")
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(_real(disk, "/x.npy")).st_mode & 0o777 == 0o666 & ~mask


@pytest.fixture(params=["unnamed", "rename-noreplace", "link"])
def publish_route(request, monkeypatch) -> str:
    """Run a test with each publish route: an unnamed file (O_TMPFILE) linked into place,
    a named temporary file renamed with RENAME_NOREPLACE, and the hard-link fallback."""
    if request.param == "unnamed":
        if not disk_module._O_TMPFILE or not disk_module._proc_fd_links():
            pytest.skip("O_TMPFILE is not available here")
        return request.param
    monkeypatch.setattr(disk_module, "_O_TMPFILE", 0)
    if request.param == "link":
        monkeypatch.setattr(disk_module, "_rename_noreplace", lambda *args: False)
    elif disk_module._renameat2() is None:
        pytest.skip("renameat2 is not available here")
    return request.param


def test_no_clobber_publish_refuses_a_target_that_appears(disk, monkeypatch, publish_route) -> None:
    disk.ensure_directory("/d")
    original = disk._stage

    def write_then_race(dir_fd, name, vp, *args, **kwargs):
        staged = original(dir_fd, name, vp, *args, **kwargs)
        with open(_real(disk, vp), "wb") as fh:  # another process wins the race meanwhile
            fh.write(b"theirs")
        return staged

    monkeypatch.setattr(disk, "_stage", write_then_race)
    with pytest.raises(AlreadyExistsError):
        disk.save(np.arange(3), "/d/x.npy")
    with open(_real(disk, "/d/x.npy"), "rb") as fh:
        assert fh.read() == b"theirs"
    assert disk.list_dir("/d") == ["x.npy"]
    assert not [n for n in os.listdir(_real(disk, "/d")) if is_temp_name(n)]


def test_save_batch_rolls_back_when_publishing_fails(disk, monkeypatch) -> None:
    disk.ensure_directory("/b")
    disk.save(np.full(3, 7), "/b/0.npy")
    original = disk._commit
    calls = []

    def flaky_commit(dir_fd, name, vp, staged, overwrite):
        calls.append(vp)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        original(dir_fd, name, vp, staged, overwrite)

    monkeypatch.setattr(disk, "_commit", flaky_commit)
    paths = [f"/b/{i}.npy" for i in range(4)]
    with pytest.raises(BatchError) as info:
        disk.save_batch([np.full(3, i + 10) for i in range(4)], paths, overwrite=True)
    assert info.value.index == 2 and isinstance(info.value.__cause__, OSError)
    # the overwritten file is restored, the new one removed, no temp files remain
    assert sorted(os.listdir(_real(disk, "/b"))) == ["0.npy"]
    np.testing.assert_array_equal(disk.load("/b/0.npy"), np.full(3, 7))


def test_save_batch_failing_item_writes_nothing(disk) -> None:
    disk.ensure_directory("/b")
    data = [np.zeros((4, 4), np.uint16)] * 3
    with pytest.raises(BatchError) as info:
        disk.save_batch(data, ["/b/0.tif", "/b/1.tif", "/b/2.tif"], compression="bogus")
    assert isinstance(info.value.__cause__, DataFormatError)
    assert os.listdir(_real(disk, "/b")) == []
    with pytest.raises(BatchError) as info:
        disk.save_batch([data[0], "text"], ["/b/0.tif", "/b/1.tif"])
    assert info.value.index == 1 and info.value.path == "/b/1.tif"
    assert os.listdir(_real(disk, "/b")) == []


def test_load_batch_is_threaded_and_ordered(tmp_path) -> None:
    backend = DiskStorageBackend(tmp_path, max_workers=3)
    paths = [f"/img_{i}.tif" for i in range(20)]
    backend.save_batch([np.full((8, 8), i, np.uint16) for i in range(20)], paths)
    out = backend.load_batch(paths)
    assert [int(a[0, 0]) for a in out] == list(range(20))
    assert backend._pool is not None and backend._pool._max_workers == 3


def test_pickling_keeps_configuration(tmp_path) -> None:
    import pickle

    backend = DiskStorageBackend(tmp_path, fsync=False, max_workers=2)
    backend.load_batch([])
    clone = pickle.loads(pickle.dumps(backend))
    assert clone.root == backend.root and clone.fsync is False and clone.max_workers == 2


def test_copy_does_not_convert_formats(disk) -> None:
    disk.save(np.zeros((2, 2), np.uint8), "/a.tif")
    with pytest.raises(DataFormatError):
        disk.copy("/a.tif", "/a.png")
    disk.copy("/a.tif", "/b.TIFF")
    np.testing.assert_array_equal(disk.load("/b.TIFF"), np.zeros((2, 2), np.uint8))


def test_move_across_a_symlinked_parent(disk) -> None:
    disk.ensure_directory("/real")
    disk.create_symlink("/real", "/alias")
    disk.save(np.arange(2), "/f.npy")
    disk.move("/f.npy", "/alias/f.npy")
    assert os.path.exists(_real(disk, "/real/f.npy"))
    with pytest.raises(Exception) as info:
        disk.move("/real", "/alias/inside")
    assert "into itself" in str(info.value)


def test_no_clobber_save_publishes_on_either_route(disk, publish_route) -> None:
    disk.ensure_directory("/d")
    disk.save(np.arange(4), "/d/x.npy")
    np.testing.assert_array_equal(disk.load("/d/x.npy"), np.arange(4))
    with pytest.raises(AlreadyExistsError):
        disk.save(np.arange(5), "/d/x.npy")
    np.testing.assert_array_equal(disk.load("/d/x.npy"), np.arange(4))
    assert os.listdir(_real(disk, "/d")) == ["x.npy"]


def test_rename_noreplace_refuses_an_existing_target(tmp_path) -> None:
    if disk_module._renameat2() is None:
        pytest.skip("renameat2 is not available here")
    (tmp_path / "a").write_bytes(b"new")
    (tmp_path / "b").write_bytes(b"old")
    with pytest.raises(FileExistsError):
        disk_module._rename_noreplace(str(tmp_path / "a"), str(tmp_path / "b"))
    assert (tmp_path / "b").read_bytes() == b"old"
    assert disk_module._rename_noreplace(str(tmp_path / "a"), str(tmp_path / "c"))
    assert sorted(os.listdir(tmp_path)) == ["b", "c"]


@pytest.mark.parametrize("operation", ["move", "copy"])
def test_directory_move_and_copy_never_replace_a_directory_that_appears(
    disk, monkeypatch, operation
) -> None:
    if disk_module._renameat2() is None:
        pytest.skip("renameat2 is not available here")
    disk.ensure_directory("/src")
    disk.save(np.arange(3), "/src/f.npy")
    original = disk_module._rename_noreplace

    def race_then_rename(src, dst, *args):
        # every check has passed: another process creates the destination meanwhile
        if dst == "dst" and not os.path.lexists(_real(disk, "/dst")):
            os.mkdir(_real(disk, "/dst"))
        return original(src, dst, *args)

    monkeypatch.setattr(disk_module, "_rename_noreplace", race_then_rename)
    with pytest.raises(AlreadyExistsError):
        getattr(disk, operation)("/src", "/dst")
    assert os.listdir(_real(disk, "/dst")) == []
    np.testing.assert_array_equal(np.load(_real(disk, "/src/f.npy")), np.arange(3))
    assert not [n for n in os.listdir(_real(disk, "/")) if is_temp_name(n)]


def test_names_over_255_bytes_are_refused_before_any_work(disk) -> None:
    from hcsflow.errors import InvalidPathError

    too_long = "é" * 130 + ".npy"  # 264 bytes, 134 characters
    with pytest.raises(InvalidPathError) as info:
        disk.save(np.arange(3), f"/{too_long}")
    assert "255 bytes" in str(info.value)
    with pytest.raises(InvalidPathError):
        disk.load(f"/{too_long}")
    assert os.listdir(_real(disk, "/")) == []


def test_batch_errors_say_why(disk) -> None:
    with pytest.raises(BatchError) as info:
        disk.save_batch([np.array([[object()]], dtype=object)], ["/a.tif"])
    assert "Python objects" in str(info.value)
