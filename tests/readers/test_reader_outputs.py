"""Runs over exports: planes land where they belong, outputs carry the metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

import zarr
from hcsflow.errors import CompilationError
from hcsflow.pipeline import FunctionStep, GlobalPipelineConfig, VFSConfig, run_pipeline
from hcsflow.readers import emission_color, read_plate
from hcsflow.readers._harmony import HarmonyReader
from hcsflow.storage import TiffConfig, read_labels, read_well
from hcsflow.testing import (
    Export,
    write_cellvoyager_export,
    write_harmony_export,
    write_imagexpress_export,
    write_ome_tiff_plate,
)

WRITERS = {
    "imagexpress": write_imagexpress_export,
    "harmony": write_harmony_export,
    "cellvoyager": write_cellvoyager_export,
    "ome-tiff": write_ome_tiff_plate,
}


def unchanged(stack):
    """A step that returns its input: outputs must equal the export's planes."""
    return stack


def _cfg(backend: str, **kw) -> GlobalPipelineConfig:
    return GlobalPipelineConfig(
        executor="inprocess", vfs=VFSConfig(materialization_backend=backend), **kw
    )


def _image_groups(store: str) -> list[tuple[str, int, dict]]:
    plate = json.loads(Path(store, "zarr.json").read_text())["attributes"]["ome"]["plate"]
    out = []
    for w in plate["wells"]:
        well_doc = json.loads(Path(store, w["path"], "zarr.json").read_text())
        for f, img in enumerate(well_doc["attributes"]["ome"]["well"]["images"]):
            attrs = json.loads(Path(store, w["path"], img["path"], "zarr.json").read_text())
            out.append((w["path"], f, attrs["attributes"]["ome"]))
    return out


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_zarr_output_carries_the_metadata(tmp_path, fmt):
    from ome_zarr_models.common.omero import Omero
    from ome_zarr_models.v05.hcs import HCS
    from ome_zarr_models.v05.image import Image

    export: Export = WRITERS[fmt](tmp_path / "plate", z_planes=2, timepoints=2)
    res = run_pipeline([FunctionStep(func=unchanged)], export.root, tmp_path / "out", _cfg("zarr"))
    assert res.ok, res.failed[0].traceback if res.failed else ""
    store = str(tmp_path / "out" / "images.zarr")
    hcs = HCS.from_zarr(zarr.open_group(store, mode="r"))
    assert len(list(hcs.well_groups)) == len(export.wells)
    plate = json.loads(Path(store, "zarr.json").read_text())["attributes"]["ome"]["plate"]
    assert plate["name"] == export.plate_name
    px = export.pixel_size_um
    for well_key, field, ome in _image_groups(store):
        Image.from_zarr(zarr.open_group(f"{store}/{well_key}/{field}", mode="r"))
        Omero.model_validate(ome["omero"])
        ms = ome["multiscales"][0]
        assert [a["name"] for a in ms["axes"]] == ["t", "c", "z", "y", "x"]
        assert [a.get("unit") for a in ms["axes"]] == [
            "second" if export.time_interval_s else None,
            None,
            "micrometer" if export.z_step_um else None,
            "micrometer",
            "micrometer",
        ]
        scale = ms["datasets"][0]["coordinateTransformations"][0]["scale"]
        assert scale == pytest.approx(
            [export.time_interval_s or 1.0, 1.0, export.z_step_um or 1.0, px, px]
        )
        chans = ome["omero"]["channels"]
        assert [c["label"] for c in chans] == list(export.channel_names)
        assert [c["color"] for c in chans] == [
            emission_color(em, i) for i, em in enumerate(export.emission_nm)
        ] or fmt == "cellvoyager"  # CellVoyager records its own display colours
        for c in chans:
            w = c["window"]
            assert w["min"] <= w["start"] < w["end"] <= w["max"]
    # content: every plane where it belongs
    for coords in list(export.files)[:: max(1, len(export.files) // 7)]:
        arr = read_well(store, coords.well, coords.field)
        np.testing.assert_array_equal(arr[coords.t, coords.channel, coords.z], export.plane(coords))


def test_cellvoyager_colours_come_from_the_settings(tmp_path):
    export = write_cellvoyager_export(tmp_path / "plate")
    res = run_pipeline([FunctionStep(func=unchanged)], export.root, tmp_path / "out", _cfg("zarr"))
    assert res.ok
    (_, _, ome), *_ = _image_groups(str(tmp_path / "out" / "images.zarr"))
    assert [c["color"] for c in ome["omero"]["channels"]] == ["0000FF", "00FF00"]


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_tiff_output_is_compressed_ome_tiff(tmp_path, fmt):
    import ome_types

    export: Export = WRITERS[fmt](tmp_path / "plate", z_planes=2)
    res = run_pipeline([FunctionStep(func=unchanged)], export.root, tmp_path / "out", _cfg("disk"))
    assert res.ok, res.failed[0].traceback if res.failed else ""
    out = tmp_path / "out" / "images"
    seen = 0
    for coords in export.files:
        path = (
            out
            / coords.well
            / f"{coords.well}_s{coords.field + 1}_w{coords.channel + 1}_z{coords.z + 1:03d}.tif"
        )
        with tifffile.TiffFile(path) as tif:
            assert tif.is_ome
            page = tif.pages.first
            assert page.compression == 8 and page.predictor == 2  # zlib, horizontal differencing
            np.testing.assert_array_equal(tif.asarray(), export.plane(coords))
            ome = ome_types.from_xml(tif.ome_metadata)
        pixels = ome.images[0].pixels
        assert pixels.physical_size_x == pytest.approx(export.pixel_size_um)
        assert pixels.physical_size_y == pytest.approx(export.pixel_size_um)
        assert pixels.channels[0].name == export.channel_names[coords.channel]
        assert pixels.channels[0].emission_wavelength == pytest.approx(
            export.emission_nm[coords.channel]
        )
        seen += 1
    assert seen == export.n_planes


@pytest.mark.parametrize(
    "config, compression", [(TiffConfig(compression=None), 1), (TiffConfig("zstd", 3), 50000)]
)
def test_tiff_compression_is_configurable(tmp_path, config, compression):
    export = write_harmony_export(tmp_path / "plate", wells=("A01",), fields=1, channels=1)
    res = run_pipeline(
        [FunctionStep(func=unchanged)], export.root, tmp_path / "out", _cfg("disk", tiff=config)
    )
    assert res.ok
    with tifffile.TiffFile(tmp_path / "out" / "images" / "A01" / "A01_s1_w1.tif") as tif:
        assert tif.pages.first.compression == compression and tif.is_ome


def test_tiff_without_ome_metadata(tmp_path):
    export = write_harmony_export(tmp_path / "plate", wells=("A01",), fields=1, channels=1)
    cfg = _cfg("disk", tiff=TiffConfig(ome=False))
    assert run_pipeline([FunctionStep(func=unchanged)], export.root, tmp_path / "out", cfg).ok
    with tifffile.TiffFile(tmp_path / "out" / "images" / "A01" / "A01_s1_w1.tif") as tif:
        assert not tif.is_ome and tif.pages.first.compression == 8


def test_labels_share_the_image_scale(tmp_path):
    export = write_harmony_export(tmp_path / "plate", wells=("A01",), fields=1, channels=1)
    steps = [FunctionStep(func="count_cells", min_size=5)]
    res = run_pipeline(steps, export.root, tmp_path / "out", _cfg("zarr"))
    assert res.ok, res.failed[0].traceback if res.failed else ""
    store = tmp_path / "out" / "images.zarr"
    image = json.loads((store / "A/1/0/zarr.json").read_text())["attributes"]["ome"]
    label_dir = next(p for p in (store / "A/1/0/labels").iterdir() if p.is_dir())
    label = json.loads((label_dir / "zarr.json").read_text())["attributes"]["ome"]
    img_scale = image["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    lab_scale = label["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    assert lab_scale == img_scale
    assert [a.get("unit") for a in label["multiscales"][0]["axes"]] == [
        a.get("unit") for a in image["multiscales"][0]["axes"]
    ]
    assert read_labels(str(store), "A01", 0, label_dir.name).shape[-2:] == (64, 64)


class CountingHarmony(HarmonyReader):
    """Counts the planes its load_planes reads (in-process runs only)."""

    read: list = []

    def load_planes(self, images, filemanager, backend):
        CountingHarmony.read.extend(img.coords for img in images)
        return super().load_planes(images, filemanager, backend)


def test_each_plane_is_read_once_and_lazily(tmp_path):
    from hcsflow.readers import PlateSource

    export = write_harmony_export(tmp_path / "plate", channels=3, z_planes=2)
    reader = CountingHarmony()
    plate = reader.describe(PlateSource(str(export.root)))
    CountingHarmony.read = []
    steps = [
        FunctionStep(func="max_projection", variable_components=("z",)),
        FunctionStep(func=unchanged),
    ]
    res = run_pipeline(steps, plate, tmp_path / "out", _cfg("disk"))
    assert res.ok, res.failed[0].traceback if res.failed else ""
    assert sorted(CountingHarmony.read) == sorted(export.files)  # each plane once, all of them
    # planes are read group by group: with z grouping, 2 planes per call
    assert res.wells[0].images_in == export.n_planes // len(export.wells)


def test_unplaced_images_run_or_refuse(tmp_path):
    export = write_harmony_export(tmp_path / "plate", wells=("A01",), fields=1, channels=1)
    tifffile.imwrite(export.root / "Images" / "stray.tiff", np.zeros((64, 64), np.uint16))
    res = run_pipeline([FunctionStep(func=unchanged)], export.root, tmp_path / "out", _cfg("disk"))
    assert res.ok
    assert res.manifest["plate"]["unplaced_files"] == [
        "Images/stray.tiff: not in the Harmony index"
    ]
    with pytest.raises(CompilationError, match="stray.tiff"):
        run_pipeline(
            [FunctionStep(func=unchanged)],
            export.root,
            tmp_path / "out2",
            _cfg("disk", strict_input=True),
        )


def test_input_format_config_forces_a_reader(tmp_path):
    export = write_harmony_export(tmp_path / "plate", wells=("A01",), fields=1, channels=1)
    res = run_pipeline(
        [FunctionStep(func=unchanged)],
        export.root / "Images",
        tmp_path / "out",
        _cfg("disk", input_format="files"),
    )
    assert res.ok and res.manifest["plate"]["format"] == "files"
    assert res.manifest["plate"]["pixel_size_um"] is None
    with pytest.raises(CompilationError, match="unknown plate format 'nope'"):
        run_pipeline(
            [FunctionStep(func=unchanged)],
            export.root,
            tmp_path / "out2",
            _cfg("disk", input_format="nope"),
        )


def test_zarr_to_zarr_keeps_metadata(tmp_path):
    export = write_cellvoyager_export(tmp_path / "plate", z_planes=2)
    first = tmp_path / "first"
    assert run_pipeline([FunctionStep(func=unchanged)], export.root, first, _cfg("zarr")).ok
    second = tmp_path / "second"
    assert run_pipeline(
        [FunctionStep(func=unchanged)], first / "images.zarr", second, _cfg("zarr")
    ).ok
    desc = read_plate(second / "images.zarr")
    assert desc.name == "PL1" and desc.pixel_size_um == (0.325, 0.325) and desc.z_step_um == 3.0
    assert [c.name for c in desc.channel_info] == ["DAPI", "Alexa 488"]
