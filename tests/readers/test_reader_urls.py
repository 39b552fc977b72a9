"""Plates on object storage: every reader describes an export at an fsspec URL exactly as
it describes the same folder on disk, reads no image data doing so, names broken files
by their URL, and its planes load through ``FsspecStorageBackend``.

fsspec's in-memory filesystem stands in for a bucket here (one process, no server);
``tests/pipeline/test_run_url_plates.py`` runs the same exports from a moto S3 server.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from hcsflow.errors import (
    ExportMetadataError,
    InvalidPathError,
    MissingPlaneError,
    NotFoundError,
    PlateLayoutError,
)
from hcsflow.readers import URL_BACKEND, PlateSource, read_plate
from hcsflow.readers._source import HEADER_BLOCK_BYTES
from hcsflow.storage import BackendRegistry, FileManager, FsspecStorageBackend
from hcsflow.storage._fsspec import DIR_MARKER
from hcsflow.testing import (
    write_cellvoyager_export,
    write_harmony_export,
    write_imagexpress_export,
    write_ome_tiff_plate,
)

WRITERS = {
    "imagexpress": lambda root: write_imagexpress_export(root, z_planes=2, timepoints=2),
    "harmony": lambda root: write_harmony_export(root, z_planes=2, version="V6"),
    "cellvoyager": lambda root: write_cellvoyager_export(root, z_planes=2),
    "ome-tiff": lambda root: write_ome_tiff_plate(root, z_planes=2),
    "ome-tiff-companion": lambda root: write_ome_tiff_plate(root, companion=True),
}


def _upload(local: Path) -> str:
    """Copy a folder into fsspec's memory filesystem; return its URL."""
    name = f"plate-{uuid.uuid4().hex[:8]}"
    fsspec.filesystem("memory").put(f"{local}/", f"/{name}/", recursive=True)
    return f"memory://{name}"


@pytest.fixture
def memfs():
    fs = fsspec.filesystem("memory")
    yield fs
    for name in list(MemoryFileSystem.store):
        if name.startswith("/plate-"):
            MemoryFileSystem.store.pop(name, None)
    MemoryFileSystem.pseudo_dirs[:] = [
        d for d in MemoryFileSystem.pseudo_dirs if not d.startswith("/plate-")
    ]


def _planes(desc, images, fm, backend):
    return desc.reader.load_planes(images, fm, backend)


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_a_url_plate_is_described_like_the_local_folder(tmp_path, memfs, fmt):
    export = WRITERS[fmt](tmp_path / "export")
    url = _upload(export.root)
    local = read_plate(export.root)
    remote = read_plate(url)
    assert remote.root == url and remote.backend == URL_BACKEND
    assert remote.format == local.format
    for attr in ("sites", "channels", "zs", "ts", "channel_info", "pixel_size_um", "z_step_um"):
        assert getattr(remote, attr) == getattr(local, attr), attr
    for attr in ("time_interval_s", "name", "plate_shape", "notes", "metadata_files"):
        assert getattr(remote, attr) == getattr(local, attr), attr
    assert remote.skipped == local.skipped and remote.unplaced == local.unplaced
    assert dict(remote.field_positions_um) == dict(local.field_positions_um)
    assert list(remote.wells) == list(local.wells)
    fm = FileManager(BackendRegistry({URL_BACKEND: FsspecStorageBackend(url)}))
    root = str(export.root)
    for well, images in local.wells.items():
        assert [i.path[len(root) :] for i in images] == [i.path for i in remote.wells[well]]
        assert [(i.coords, i.page) for i in images] == [
            (i.coords, i.page) for i in remote.wells[well]
        ]
    images = remote.wells[remote.wells.__iter__().__next__()]
    got = _planes(remote, images, fm, remote.backend)
    for img, plane in zip(images, got, strict=True):
        np.testing.assert_array_equal(plane, export.plane(img.coords))


def test_describing_a_url_plate_reads_no_image_data(tmp_path, memfs, monkeypatch):
    """Only metadata files and one header block per TIFF whose header is needed."""
    export = write_imagexpress_export(tmp_path / "ix", channels=3, z_planes=2, size=(512, 512))
    url = _upload(export.root)
    reads: list[tuple[str, int]] = []
    real_open = MemoryFileSystem._open

    def counting_open(self, path, mode="rb", *args, **kwargs):
        fh = real_open(self, path, mode, *args, **kwargs)
        if "r" in mode:
            real_read = fh.read

            def read(n=-1):
                data = real_read(n)
                reads.append((path, len(data)))
                return data

            fh.read = read
        return fh

    real_cat = MemoryFileSystem.cat_file

    def cat_file(self, path, *args, **kwargs):
        assert not str(path).lower().endswith(".tif"), f"a whole image was read: {path}"
        return real_cat(self, path, *args, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "_open", counting_open)
    monkeypatch.setattr(MemoryFileSystem, "cat_file", cat_file)
    desc = read_plate(url)
    assert desc.pixel_size_um == (export.pixel_size_um, export.pixel_size_um)
    tiffs = {p for p, _ in reads if p.lower().endswith(".tif")}
    assert 0 < len(tiffs) <= 3 + 2  # one plane per channel, two planes of one stack
    per_file: dict[str, int] = {}
    for path, n in reads:
        per_file[path] = per_file.get(path, 0) + n
    plane_bytes = 512 * 512 * 2
    assert all(per_file[t] < min(HEADER_BLOCK_BYTES, plane_bytes) for t in tiffs), per_file


def test_errors_name_the_file_by_its_url(tmp_path, memfs):
    export = write_imagexpress_export(tmp_path / "ix")
    htd = export.root / "PLATE.HTD"
    htd.write_bytes(htd.read_bytes().replace(b'"EndFile"', b""))
    url = _upload(export.root)
    with pytest.raises(ExportMetadataError) as info:
        read_plate(url)
    assert info.value.path == f"{url}/PLATE.HTD"
    assert "truncated" in str(info.value) and f"{url}/PLATE.HTD" in str(info.value)

    cv = write_cellvoyager_export(tmp_path / "cv", wells=("A01",), fields=1)
    victim = sorted(cv.files.values())[0]
    (cv.root / victim).unlink()
    with pytest.raises(MissingPlaneError) as info:
        read_plate(_upload(cv.root))
    assert info.value.path.startswith("memory://") and victim.name in str(info.value)

    with pytest.raises(NotFoundError) as missing:
        read_plate("memory://plate-does-not-exist")
    assert missing.value.path == "memory://plate-does-not-exist"


def test_format_layout_and_strict_apply_to_url_plates(tmp_path, memfs):
    export = write_harmony_export(tmp_path / "h", wells=("A01",), fields=1)
    stray = export.root / "Images" / "r09c09f01p01-ch1sk1fk1fl1.tiff"
    stray.write_bytes((export.root / sorted(export.files.values())[0]).read_bytes())
    url = _upload(export.root)
    assert [u.path for u in read_plate(url).unplaced] == ["Images/" + stray.name]
    with pytest.raises(PlateLayoutError, match="could not be placed"):
        read_plate(url, strict=True)
    with pytest.raises(MissingPlaneError, match="HTD"):
        read_plate(url, format="imagexpress")
    stray.unlink()
    files = read_plate(_upload(export.root), format="files")
    assert files.format == "files" and files.n_images == export.n_planes
    assert files.pixel_size_um is None  # names only


def test_a_url_is_not_combined_with_a_file_manager(tmp_path, memfs):
    with pytest.raises(InvalidPathError, match="storage_options"):
        read_plate("memory://x", filemanager=FileManager())
    with pytest.raises(InvalidPathError):
        read_plate("memory://x", backend="memory")


@pytest.mark.parametrize("scheme", ["file://", "local://"])
def test_file_urls_are_local_paths(tmp_path, scheme):
    export = write_cellvoyager_export(tmp_path / "cv", wells=("A01",), fields=1)
    desc = read_plate(f"{scheme}{export.root}")
    assert desc.root == str(export.root) and desc.backend == "disk"
    source = PlateSource.from_url(f"{scheme}{export.root}")
    assert (source.root, source.backend) == (str(export.root), "disk")
    assert source.files() == PlateSource(str(export.root)).files()


def test_directory_markers_and_link_objects(tmp_path, memfs):
    """Markers hcsflow writes for empty folders are hidden; its link objects are followed."""
    export = write_cellvoyager_export(tmp_path / "cv", wells=("A01",), fields=1)
    url = _upload(export.root)
    be = FsspecStorageBackend(url)
    be.ensure_directory("/empty/inside")
    mlf = be.url_of("/MeasurementData.mlf")
    memfs.mv(mlf, be.url_of("/real/MeasurementData.mlf"))
    be.create_symlink("/real/MeasurementData.mlf", "/MeasurementData.mlf")
    source = PlateSource.from_url(url)
    assert not any(DIR_MARKER in f for f in source.files())
    assert source.read_bytes("/MeasurementData.mlf").startswith(b"<?xml")
    desc = read_plate(url)
    assert desc.n_images == export.n_planes


def test_a_plate_source_over_a_file_manager_with_an_fsspec_backend(tmp_path, memfs):
    """A FileManager whose backend is an fsspec one reads raw metadata files too."""
    export = write_imagexpress_export(tmp_path / "ix", wells=("A01",))
    url = _upload(export.root)
    fm = FileManager(BackendRegistry({"bucket": FsspecStorageBackend(url)}))
    desc = read_plate("/", filemanager=fm, backend="bucket")
    assert desc.format == "imagexpress" and desc.pixel_size_um is not None
    assert desc.channel_info[0].name == export.channel_names[0]
