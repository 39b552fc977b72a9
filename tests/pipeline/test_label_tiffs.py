"""Label TIFFs on disk: compressed like the run's images, exact integers, OME metadata
with the image's pixel size (checked with tifffile and ome-types)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from ome_types import from_xml

from hcsflow.pipeline import FunctionStep, GlobalPipelineConfig, run_pipeline
from hcsflow.pipeline._materialize import MaterializationFileManager, materialize_labels
from hcsflow.readers import ChannelInfo, ImageMetadata
from hcsflow.storage import (
    Backend,
    BackendRegistry,
    DiskStorageBackend,
    FileManager,
    MemoryStorageBackend,
    TiffConfig,
)
from hcsflow.storage.plate import ImageCoordinates
from hcsflow.testing import write_harmony_export, write_imagexpress_export

META = ImageMetadata(
    pixel_size_um=(0.325, 0.65),
    z_step_um=2.5,
    time_interval_s=30.0,
    channels=(ChannelInfo(0, "DAPI", emission_nm=456.0),),
)
# TIFF compression tags
COMPRESSION = {None: 1, "zlib": 8, "lzw": 5, "zstd": 50000, "lzma": 34925}


def mfm(tmp_path, *, coords=(), tiff_config=None, metadata=META, well="A01"):
    registry = BackendRegistry(
        {
            Backend.DISK.value: DiskStorageBackend(root=str(tmp_path)),
            Backend.MEMORY.value: MemoryStorageBackend(),
        }
    )
    return MaterializationFileManager(
        registry,
        materialization_backend=Backend.DISK.value,
        well=well,
        slice_coords=tuple(coords),
        tiff_config=tiff_config,
        metadata=metadata,
    )


def ome_of(path) -> tuple:
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        series = tif.series[0]
        ome = from_xml(tif.ome_metadata)
        return series.axes, tif.pages.first.compression, ome


def labels(dtype, n: int = 3, top: int = 200, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, top + 1, size=(n, 40, 48), dtype=np.int64)
    arr[:, :4, :4] = top  # the largest label is really there
    return arr.astype(dtype)


@pytest.mark.parametrize("compression", [None, "zlib", "lzw", "zstd", "lzma"])
@pytest.mark.parametrize(
    ("dtype", "top", "stored"),
    [
        (np.bool_, 1, np.uint8),
        (np.int32, 60_000, np.uint16),
        (np.uint64, 5_000_000, np.uint32),  # more objects than uint16 holds
    ],
)
def test_labels_round_trip_exactly(tmp_path, compression, dtype, top, stored):
    data = labels(dtype, top=top)
    fm = mfm(tmp_path, tiff_config=TiffConfig(compression=compression))
    written = materialize_labels(data, "/results/seg/A01_masks.pkl", fm)
    assert written == "/results/seg/A01_masks.tif"
    path = tmp_path / "results/seg/A01_masks.tif"
    back = tifffile.imread(path)
    assert back.dtype == stored
    np.testing.assert_array_equal(back, data.astype(stored))
    via_fm = fm.load(written, Backend.DISK.value)
    np.testing.assert_array_equal(np.asarray(via_fm).reshape(data.shape), data.astype(stored))
    _, tag, _ = ome_of(path)
    assert int(tag) == COMPRESSION[compression]


def test_the_label_file_is_ome_with_the_pixel_size(tmp_path):
    sites = [ImageCoordinates("A01", f, 0, 0, 0) for f in range(3)]
    fm = mfm(tmp_path, coords=sites)
    materialize_labels(labels(np.uint16), "/r/A01_masks_w1.pkl", fm)
    axes, _, ome = ome_of(tmp_path / "r/A01_masks_w1.tif")
    assert axes == "QYX"  # sites: no OME axis for them
    image = ome.images[0]
    px = image.pixels
    assert (px.physical_size_x, px.physical_size_y) == (0.65, 0.325)
    assert px.physical_size_x_unit.value == "µm"
    assert image.name == "A01_masks_w1"
    assert [c.name for c in px.channels] == ["masks_w1"]
    assert px.size_x == 48 and px.size_y == 40


@pytest.mark.parametrize(
    ("coords", "axes"),
    [
        ([ImageCoordinates("A01", 0, 0, z, 0) for z in range(3)], "ZYX"),
        ([ImageCoordinates("A01", 0, 0, 0, t) for t in range(3)], "TYX"),
        ([ImageCoordinates("A01", 0, c, z, 0) for c, z in ((0, 0), (1, 0), (1, 1))], "QYX"),
        ((), "QYX"),  # planes not described
    ],
)
def test_the_stack_axis_says_what_the_planes_are(tmp_path, coords, axes):
    materialize_labels(labels(np.uint16), "/A01_m.pkl", mfm(tmp_path, coords=coords))
    got, _, ome = ome_of(tmp_path / "A01_m.tif")
    assert got == axes
    px = ome.images[0].pixels
    assert px.physical_size_z == (2.5 if axes == "ZYX" else None)
    if axes == "TYX":
        assert px.time_increment == 30.0 and px.size_t == 3
    if axes == "ZYX":
        assert px.size_z == 3


def test_one_plane_and_no_metadata(tmp_path):
    """A single label image, written outside a run: compressed OME-TIFF, no sizes."""
    fm = FileManager(BackendRegistry({"disk": DiskStorageBackend(root=str(tmp_path))}))
    plane = labels(np.uint8, n=1, top=9)[0]
    assert materialize_labels(plane, "/A01_nuclei.pkl", fm) == "/A01_nuclei.tif"
    axes, tag, ome = ome_of(tmp_path / "A01_nuclei.tif")
    assert int(tag) == 8 and axes in ("YX", "ZYX")
    assert ome.images[0].pixels.physical_size_x is None
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "A01_nuclei.tif"), plane)


def test_plain_tiff_when_ome_is_off(tmp_path):
    fm = mfm(tmp_path, tiff_config=TiffConfig(compression="zstd", ome=False))
    data = labels(np.uint16)
    materialize_labels(data, "/A01_m.pkl", fm)
    with tifffile.TiffFile(tmp_path / "A01_m.tif") as tif:
        assert not tif.is_ome and tif.pages.first.compression == 50000
        np.testing.assert_array_equal(tif.asarray(), data)


@pytest.mark.parametrize("compression", ["zlib", "zstd"])
def test_a_run_writes_labels_like_its_images(tmp_path, compression):
    """Label TIFFs of a run follow its TiffConfig and carry the export's pixel size."""
    export = write_imagexpress_export(tmp_path / "ix", wells=("A01",), site_grid=(2, 1))
    config = GlobalPipelineConfig(executor="inprocess", tiff=TiffConfig(compression=compression))
    steps = [FunctionStep(func="count_cells", min_size=5)]
    res = run_pipeline(steps, export.root, tmp_path / "out", config)
    assert res.ok, res.failed[0].traceback if res.failed else ""
    out = tmp_path / "out"
    image = next((out / "images").rglob("*.tif"))
    _, image_tag, image_ome = ome_of(image)
    masks = sorted((out / "results").rglob("*masks*.tif"))
    assert masks
    for path in masks:
        axes, tag, ome = ome_of(path)
        assert tag == image_tag and int(tag) == COMPRESSION[compression]
        px, ipx = ome.images[0].pixels, image_ome.images[0].pixels
        assert (px.physical_size_x, px.physical_size_y) == (
            ipx.physical_size_x,
            ipx.physical_size_y,
        )
        assert px.physical_size_x == export.pixel_size_um
        assert axes == "QYX" and px.size_t == 2  # the well's two sites
        data = tifffile.imread(path)
        assert data.dtype == np.uint16 and data.max() > 0


def test_labels_of_a_z_stack_get_the_z_step(tmp_path):
    export = write_harmony_export(tmp_path / "h", wells=("A01",), fields=1, z_planes=3)
    steps = [FunctionStep(func="count_cells", min_size=5, variable_components=["z"])]
    config = GlobalPipelineConfig(executor="inprocess")
    res = run_pipeline(steps, export.root, tmp_path / "out", config)
    assert res.ok, res.failed[0].traceback if res.failed else ""
    path = sorted((tmp_path / "out" / "results").rglob("*masks*.tif"))[0]
    axes, _, ome = ome_of(path)
    px = ome.images[0].pixels
    assert axes == "ZYX" and px.size_z == 3
    assert px.physical_size_z == pytest.approx(export.z_step_um)
    assert px.physical_size_x == pytest.approx(export.pixel_size_um)
