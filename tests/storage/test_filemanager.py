"""FileManager over a registry: backend names, delegation, and the default registry."""

from __future__ import annotations

import numpy as np
import pytest

from hcsflow.errors import (
    BackendRegistrationError,
    NotFoundError,
    UnknownBackendError,
)
from hcsflow.storage import (
    Backend,
    BackendRegistry,
    DiskStorageBackend,
    FileInfo,
    FileManager,
    MemoryStorageBackend,
    backend_name,
    storage_registry,
)


@pytest.fixture
def fm(tmp_path) -> FileManager:
    registry = BackendRegistry(
        {"memory": MemoryStorageBackend(), "disk": DiskStorageBackend(tmp_path, fsync=False)}
    )
    return FileManager(registry)


@pytest.mark.parametrize("name", [Backend.MEMORY, "memory", Backend.DISK, "disk"])
def test_backend_by_member_or_value(fm, name) -> None:
    fm.ensure_directory("/plate/A01", name)
    fm.save(np.arange(4, dtype=np.uint16).reshape(2, 2), "/plate/A01/s1.tif", name)
    assert fm.exists("/plate/A01/s1.tif", name) and fm.is_file("/plate/A01/s1.tif", name)
    assert fm.is_dir("/plate", name) and not fm.is_symlink("/plate", name)
    np.testing.assert_array_equal(fm.load("/plate/A01/s1.tif", name), np.arange(4).reshape(2, 2))
    assert isinstance(fm.stat("/plate/A01/s1.tif", name), FileInfo)


@pytest.mark.parametrize("name", ["memory", "disk"])
def test_full_surface(fm, name) -> None:
    fm.ensure_directory("/src/w1", name)
    images = [np.full((4, 4), i, np.uint16) for i in range(12)]
    paths = [f"/src/w1/image_{i:d}.tif" for i in range(12)]
    fm.save_batch(images, paths, name)
    assert [int(a[0, 0]) for a in fm.load_batch(paths, name)] == list(range(12))
    listed = fm.list_image_files("/src", name, recursive=True)
    assert listed == [f"/src/w1/image_{i}.tif" for i in range(12)]  # natural order
    assert fm.list_files("/src/w1", name, pattern="image_1*") == [
        "/src/w1/image_1.tif",
        "/src/w1/image_10.tif",
        "/src/w1/image_11.tif",
    ]
    assert fm.list_files("/src", name, extensions=[".png"], recursive=True) == []
    assert fm.list_dir("/src", name) == ["w1"]
    assert fm.find_file_recursive("/src", "image_7.tif", name) == "/src/w1/image_7.tif"
    assert fm.mirror_directory("/src", "/mirror", name) == 12
    assert fm.is_symlink("/mirror/w1/image_3.tif", name)
    fm.copy("/src/w1/image_0.tif", "/src/copy.tif", name)
    fm.move("/src/copy.tif", "/src/moved.tif", name)
    fm.create_symlink("/src/moved.tif", "/src/link.tif", name)
    assert fm.read_link("/src/link.tif", name) == "/src/moved.tif"
    fm.delete("/src/link.tif", name)
    fm.delete_all("/mirror", name)
    assert fm.list_dir("/", name) == ["src"]
    with pytest.raises(NotFoundError):
        fm.load("/mirror/w1/image_3.tif", name)


def test_unknown_backend(fm) -> None:
    with pytest.raises(UnknownBackendError) as info:
        fm.load("/x", "s3")
    assert "s3" in str(info.value) and "memory" in str(info.value)
    assert isinstance(info.value, ValueError)
    with pytest.raises(UnknownBackendError):
        fm.load("/x", 3)  # type: ignore[arg-type]


def test_a_plain_dict_registry_as_the_specification_builds_it(tmp_path) -> None:
    mem = MemoryStorageBackend()
    fm = FileManager({Backend.MEMORY.value: mem, Backend.DISK: DiskStorageBackend(tmp_path)})
    fm.save(np.ones((2, 2)), "/a.npy", Backend.MEMORY)
    assert fm.backend("memory") is mem and fm.exists("/a.npy", "memory")
    with pytest.raises(UnknownBackendError) as info:
        fm.load("/a.npy", Backend.ZARR)
    assert "'zarr'" in str(info.value) and "registered: disk, memory" in str(info.value)
    with pytest.raises(BackendRegistrationError, match="StorageBackend"):
        FileManager({"memory": object()})  # type: ignore[dict-item]
    with pytest.raises(BackendRegistrationError, match="BackendRegistry or"):
        FileManager([mem])  # type: ignore[arg-type]


def test_registry_registration() -> None:
    registry = BackendRegistry()
    mem = MemoryStorageBackend()
    unregister = registry.register_backend("scratch", mem)
    assert registry.get("scratch") is mem and "scratch" in registry and len(registry) == 1
    with pytest.raises(BackendRegistrationError):
        registry.register_backend("scratch", MemoryStorageBackend())
    with pytest.raises(BackendRegistrationError):
        registry.register_backend("other", object())  # type: ignore[arg-type]
    unregister()
    assert "scratch" not in registry
    with pytest.raises(UnknownBackendError):
        registry.get("scratch")


def test_default_registry_builds_backends_lazily_and_once() -> None:
    assert {"memory", "disk", "zarr"} <= set(storage_registry)
    first = storage_registry.get(Backend.MEMORY)
    assert isinstance(first, MemoryStorageBackend)
    assert storage_registry.get("memory") is first
    assert isinstance(storage_registry.get("disk"), DiskStorageBackend)
    assert storage_registry.get("disk").root is None
    assert FileManager().registry is storage_registry


def test_separate_registries_are_isolated() -> None:
    a = FileManager(BackendRegistry({"memory": MemoryStorageBackend()}))
    b = FileManager(BackendRegistry({"memory": MemoryStorageBackend()}))
    a.save(1, "/x", "memory")
    assert not b.exists("/x", "memory")


def test_backend_name() -> None:
    assert backend_name(Backend.ZARR) == "zarr" and backend_name("disk") == "disk"
    assert str(Backend.MEMORY) == "memory" and f"{Backend.DISK}" == "disk"


def test_spec_materialization_example(fm) -> None:
    """The spec's materializer saves JSON text and CSV text through the FileManager."""
    import json

    import pandas as pd

    fm.ensure_directory("/out", Backend.DISK.value)
    summary = {"analysis_type": "single_channel_cell_counting", "total_slices": 2}
    fm.save(json.dumps(summary, indent=2), "/out/cells.json", Backend.DISK.value)
    frame = pd.DataFrame([{"slice_index": 0, "cell_count": 3}, {"slice_index": 1, "cell_count": 5}])
    fm.save(frame.to_csv(index=False), "/out/cells_details.csv", Backend.DISK.value)
    assert fm.load("/out/cells.json", "disk") == summary
    pd.testing.assert_frame_equal(fm.load("/out/cells_details.csv", "disk"), frame)
