"""Every reader describes faithful exports: geometry, metadata, files, plane content."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from hcsflow.errors import MissingPlaneError
from hcsflow.readers import (
    FileLayoutReader,
    PlateSource,
    get_reader,
    read_plate,
)
from hcsflow.storage import FileManager
from hcsflow.storage.plate import ImageCoordinates
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


def check(export: Export, fmt: str) -> None:
    """The description of ``export`` matches what was written, plane by plane."""
    desc = read_plate(export.root)
    assert desc.format == fmt and desc.reader is not None
    assert tuple(desc.wells) == export.wells
    assert desc.sites == tuple(range(export.sites))
    assert desc.channels == tuple(range(len(export.channel_names)))
    assert desc.zs == tuple(range(export.z_planes))
    assert desc.ts == tuple(range(export.timepoints))
    assert [c.label for c in desc.image_metadata().channels] == list(export.channel_names)
    assert [c.emission_nm for c in desc.channel_info] == list(export.emission_nm)
    assert desc.pixel_size_um == pytest.approx((export.pixel_size_um, export.pixel_size_um))
    if export.z_step_um is None:
        assert desc.z_step_um is None
    else:
        assert desc.z_step_um == pytest.approx(export.z_step_um)
    if export.time_interval_s is None:
        assert desc.time_interval_s is None
    else:
        assert desc.time_interval_s == pytest.approx(export.time_interval_s)
    assert desc.name == export.plate_name
    assert desc.unplaced == ()
    placed = {img.coords: img for imgs in desc.wells.values() for img in imgs}
    assert set(placed) == set(export.files)
    for coords, img in placed.items():
        assert Path(img.path) == export.root / export.files[coords]
    # every plane reads back with its own content, through the reader
    images = [img for imgs in desc.wells.values() for img in imgs]
    planes = desc.reader.load_planes(images, FileManager(), desc.backend)
    for img, plane in zip(images, planes, strict=True):
        np.testing.assert_array_equal(plane, export.plane(img.coords))


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_export_is_described_plane_by_plane(tmp_path, fmt):
    export = WRITERS[fmt](tmp_path / "plate", z_planes=2, timepoints=2)
    check(export, fmt)


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_single_plane_export(tmp_path, fmt):
    export = WRITERS[fmt](tmp_path / "plate", wells=("C05",), channels=1)
    check(export, fmt)


@pytest.mark.parametrize("version", ["V5", "V6", "V7"])
def test_harmony_versions(tmp_path, version):
    export = write_harmony_export(tmp_path / "p", version=version, fields=3, channels=3)
    check(export, "harmony")
    desc = read_plate(export.root)
    assert any(f"Harmony {version}" in n for n in desc.notes)
    # field positions from PositionX/Y (metres) in micrometres (y, x)
    step = 64 * export.pixel_size_um
    assert desc.field_positions_um[("A01", 1)] == pytest.approx((0.0, step))
    assert desc.field_positions_um[("B02", 0)] == pytest.approx((0.0, 0.0))
    assert desc.plate_shape == (8, 12)


@pytest.mark.parametrize("name", ["Index.idx.xml", "Index.ref.xml", "Index.xml"])
def test_harmony_index_names_and_folder_levels(tmp_path, name):
    export = write_harmony_export(tmp_path / "m", version="V5", index_name=name)
    check(export, "harmony")
    # the Images folder itself is a plate too
    desc = read_plate(export.root / "Images")
    assert desc.format == "harmony" and desc.n_images == export.n_planes
    assert {s.reason for s in desc.skipped} == {"Harmony index"}


def test_harmony_skips_other_exported_files(tmp_path):
    export = write_harmony_export(tmp_path / "m")
    desc = read_plate(export.root)
    reasons = {s.path: s.reason for s in desc.skipped}
    assert reasons["Images/Index.xml"] == "Harmony index"
    assert reasons["Assaylayout/layout.xml"] == "metadata"
    assert desc.metadata_files == ("Images/Index.xml",)


def test_imagexpress_variants(tmp_path):
    # no sites (no _s), no GUIDs, no thumbnails, one wavelength without _w
    export = write_imagexpress_export(
        tmp_path / "a", site_grid=None, channels=1, guid=False, thumbnails=False
    )
    check(export, "imagexpress")
    names = sorted(p.name for p in (export.root / "TimePoint_1").glob("*.tif"))
    assert names[0] == "PLATE_A01.tif"
    # a 3 x 2 site grid, 3 channels, z-stack and time series
    export = write_imagexpress_export(
        tmp_path / "b", site_grid=(3, 2), channels=3, z_planes=3, timepoints=2
    )
    check(export, "imagexpress")
    assert (export.root / "TimePoint_2" / "ZStep_3").is_dir()


def test_imagexpress_thumbnails_and_strays_are_skipped(tmp_path):
    export = write_imagexpress_export(tmp_path / "p")
    desc = read_plate(export.root)
    reasons: dict[str, int] = {}
    for s in desc.skipped:
        reasons[s.reason] = reasons.get(s.reason, 0) + 1
    assert reasons == {
        "thumbnail": export.n_planes,
        "plate description (HTD)": 1,
        "not an image plane": 1,
    }
    assert all("_thumb" in s.path for s in desc.skipped if s.reason == "thumbnail")
    assert desc.plate_shape == (8, 12) and desc.name == "PLATE"


def test_imagexpress_flat_folder_with_time_in_names(tmp_path):
    export = write_imagexpress_export(tmp_path / "p", guid=False, thumbnails=False, timepoints=2)
    # move every plane to the top with a _t suffix, as MetaXpress writes without folders
    for coords, rel in list(export.files.items()):
        target = export.root / rel.name.replace(".tif", f"_t{coords.t + 1}.tif")
        shutil.move(export.root / rel, target)
        export.files[coords] = target.relative_to(export.root)
    shutil.rmtree(export.root / "TimePoint_1")
    shutil.rmtree(export.root / "TimePoint_2")
    check(export, "imagexpress")


def test_cellvoyager_error_records_and_corrections(tmp_path):
    export = write_cellvoyager_export(tmp_path / "p", error_records=2)
    desc = read_plate(export.root)
    assert any("2 acquisition error record(s)" in n for n in desc.notes)
    reasons = {s.path: s.reason for s in desc.skipped}
    assert reasons["SC_BP456_40x_CH01.tif"] == "shading correction image"
    assert reasons["PL1.mes"] == "metadata" and reasons["MeasurementDetail.mrf"] == "metadata"
    assert desc.channel_info[0].color == "0000FF"
    assert desc.plate_shape == (16, 24)
    assert desc.field_positions_um[("A01", 1)] == pytest.approx((318.5, -118.5))


def test_cellvoyager_without_detail_files(tmp_path):
    export = write_cellvoyager_export(tmp_path / "p")
    (export.root / "PL1.mes").unlink()
    desc = read_plate(export.root)
    assert desc.pixel_size_um == (0.325, 0.325)
    assert [c.name for c in desc.channel_info] == [None, None]
    assert any("not in the folder" in n for n in desc.notes)
    (export.root / "MeasurementDetail.mrf").unlink()
    desc = read_plate(export.root)
    assert desc.pixel_size_um is None and any("no MeasurementDetail.mrf" in n for n in desc.notes)
    assert desc.n_images == export.n_planes


def test_ome_tiff_files_without_plate_metadata(tmp_path):
    """OME-TIFFs as tifffile writes them: one image per file, the well in the name."""
    root = tmp_path / "ome"
    root.mkdir()
    rng = np.random.default_rng(0)
    truth = {}
    for well in ("A01", "B02"):
        for site in (1, 2):
            data = rng.integers(0, 4000, (2, 3, 16, 16), dtype=np.uint16)  # (c, z, y, x)
            tifffile.imwrite(
                root / f"plate_{well}_s{site}.ome.tif",
                data,
                ome=True,
                metadata={
                    "axes": "CZYX",
                    "PhysicalSizeX": 0.325,
                    "PhysicalSizeY": 0.325,
                    "PhysicalSizeZ": 1.0,
                    "Channel": {"Name": ["Hoechst", "GFP"]},
                },
            )
            truth[(well, site - 1)] = data
    desc = read_plate(root)
    assert desc.format == "ome-tiff" and list(desc.wells) == ["A01", "B02"]
    assert (len(desc.sites), len(desc.channels), len(desc.zs)) == (2, 2, 3)
    assert [c.name for c in desc.channel_info] == ["Hoechst", "GFP"]
    assert desc.pixel_size_um == (0.325, 0.325) and desc.z_step_um == 1.0
    images = desc.wells["B02"]
    planes = desc.reader.load_planes(images, FileManager(), desc.backend)
    for img, plane in zip(images, planes, strict=True):
        c = img.coords
        np.testing.assert_array_equal(plane, truth[(c.well, c.field)][c.channel, c.z])


def test_omezarr_input_keeps_metadata(tmp_path):
    from hcsflow.storage import ZarrConfig, finalize_plate, write_well

    store = str(tmp_path / "in.zarr")
    for well in ("A01", "B03"):
        write_well(
            store,
            well,
            {0: np.ones((2, 3, 8, 8), np.uint16)},
            ZarrConfig(),
            scale={"z": 2.5, "y": 0.4, "x": 0.4},
            units={"z": "micrometer", "y": "micrometer", "x": "micrometer"},
            channels=[{"label": "DNA", "color": "0000FF"}, {"label": "Actin", "color": "FF0000"}],
            plate_name="screen 7",
        )
    finalize_plate(store)
    desc = read_plate(store)
    assert desc.format == "ome-zarr" and desc.name == "screen 7"
    assert desc.pixel_size_um == (0.4, 0.4) and desc.z_step_um == 2.5
    assert [(c.name, c.color) for c in desc.channel_info] == [
        ("DNA", "0000FF"),
        ("Actin", "FF0000"),
    ]
    planes = desc.reader.load_planes(desc.wells["B03"][:2], FileManager(), desc.backend)
    assert all(p.shape == (8, 8) for p in planes)


def test_named_files_fallback_skips_thumbnails(tmp_path):
    root = tmp_path / "plain"
    root.mkdir()
    for well in ("A01", "A02"):
        for s in (1, 2):
            tifffile.imwrite(root / f"{well}_s{s}_w1.tif", np.full((4, 4), s, np.uint16))
            tifffile.imwrite(root / f"{well}_s{s}_w1_thumb.tif", np.zeros((2, 2), np.uint16))
    (root / "notes.txt").write_text("hello")
    desc = read_plate(root)
    assert desc.format == "files" and desc.layout == "imagexpress" and desc.n_images == 4
    assert sorted({s.reason for s in desc.skipped}) == ["not an image file", "thumbnail"]


def test_forced_format_and_layout(tmp_path):
    export = write_harmony_export(tmp_path / "m")
    # the plane names also fit the Opera Phenix layout: forcing "files" reads them by name
    desc = read_plate(export.root / "Images", format="files")
    assert desc.format == "files" and desc.layout == "operaphenix"
    assert desc.pixel_size_um is None and desc.n_images == export.n_planes
    source = PlateSource(str(export.root))
    assert get_reader("harmony").detect(source) and not get_reader("cellvoyager").detect(source)
    assert isinstance(get_reader("files"), FileLayoutReader)


def test_every_plane_is_read_once_when_grouped(tmp_path):
    """load_planes reads each multi-page OME-TIFF once per call, not once per plane."""
    export = write_ome_tiff_plate(tmp_path / "p", channels=3, z_planes=2)
    desc = read_plate(export.root)
    calls: list[tuple[str, object]] = []

    class CountingFM(FileManager):
        def load(self, path, backend, **options):
            calls.append((str(path), options.get("key")))
            return super().load(path, backend, **options)

    images = desc.wells["A01"]
    planes = desc.reader.load_planes(images, CountingFM(), desc.backend)
    assert len(planes) == 12 and len(calls) == 2  # two fields: one read per file
    assert sorted(len(k) for _, k in calls) == [6, 6]  # type: ignore[arg-type]


def test_description_summary_is_json_ready(tmp_path):
    import json

    export = write_cellvoyager_export(tmp_path / "p")
    summary = read_plate(export.root).summary()
    doc = json.loads(json.dumps(summary))
    assert doc["format"] == "cellvoyager" and doc["pixel_size_um"] == [0.325, 0.325]
    assert [c["name"] for c in doc["channel_info"]] == ["DAPI", "Alexa 488"]
    assert doc["skipped_files"] == 6 and doc["unplaced_files"] == []


def test_coordinates_are_ranked_not_assumed_contiguous(tmp_path):
    """Harmony ids 1, 3 (a skipped channel) become channels 0, 1."""
    export = write_harmony_export(tmp_path / "p", channels=3)
    index = export.root / "Images" / "Index.xml"
    text = index.read_text()
    # drop channel 2 from the index and its files
    import re

    text = re.sub(
        r"<Image Version=\"1\">(?:(?!</Image>).)*?<ChannelID>2</ChannelID>.*?</Image>",
        "",
        text,
        flags=re.S,
    )
    index.write_text(text)
    for coords, rel in list(export.files.items()):
        if coords.channel == 1:
            (export.root / rel).unlink()
    desc = read_plate(export.root)
    assert desc.channels == (0, 1)
    assert [c.source_id for c in desc.channel_info] == ["1", "3"]
    assert [c.name for c in desc.channel_info] == ["DAPI", "Alexa 568"]
    img = next(i for i in desc.wells["A01"] if i.coords == ImageCoordinates("A01", 0, 1))
    assert img.path.endswith("-ch3sk1fk1fl1.tiff")


def test_ome_tiff_companion_fileset(tmp_path):
    export = write_ome_tiff_plate(tmp_path / "p", companion=True, z_planes=2)
    check(export, "ome-tiff")
    desc = read_plate(export.root)
    assert [s.reason for s in desc.skipped] == ["OME companion metadata"]
    (export.root / "OME_plate.companion.ome").unlink()
    with pytest.raises(MissingPlaneError, match="OME_plate.companion.ome"):
        read_plate(export.root)
