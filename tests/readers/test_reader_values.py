"""Small values: colours from wavelengths, NGFF scales, OME-TIFF metadata, TiffConfig."""

from __future__ import annotations

import numpy as np
import pytest

from hcsflow.readers import ChannelInfo, ImageMetadata, emission_color, read_plate
from hcsflow.storage import FileManager, TiffConfig


@pytest.mark.parametrize(
    "nm, color",
    [
        (456, "0052FF"),  # DAPI: blue
        (525, "37FF00"),  # GFP / Alexa 488: green
        (603, "FFA500"),  # Alexa 568: orange
        (665, "FF0000"),  # Cy5 / Alexa 647: red
        (350, "8000FF"),  # near UV: violet
    ],
)
def test_emission_colors(nm, color):
    assert emission_color(nm) == color


def test_colors_without_wavelength_cycle():
    assert [emission_color(None, i) for i in range(3)] == ["0000FF", "00FF00", "FF0000"]
    assert emission_color(0.0, 1) == "00FF00"  # brightfield records 0
    assert ChannelInfo(0, "x", emission_nm=456, color="ABCDEF").display_color == "ABCDEF"
    assert ChannelInfo(4).label == "Channel 5"


def test_ngff_scale_only_for_known_sizes():
    meta = ImageMetadata(pixel_size_um=(0.5, 0.6), z_step_um=None, time_interval_s=60.0)
    scale, units = meta.ngff_scale(("t", "c", "z", "y", "x"))
    assert scale == {"y": 0.5, "x": 0.6, "t": 60.0}
    assert units == {"y": "micrometer", "x": "micrometer", "t": "second"}
    assert ImageMetadata().ngff_scale(("c", "z", "y", "x")) == ({}, {})
    scale, _ = meta.ngff_scale(("c", "z", "y", "x"))
    assert "t" not in scale


def test_ome_tiff_metadata():
    meta = ImageMetadata(
        pixel_size_um=(0.5, 0.5),
        z_step_um=2.0,
        channels=(ChannelInfo(0, "DAPI", excitation_nm=375.0, emission_nm=456.0),),
    )
    d = meta.ome_tiff(0, "ZYX")
    assert d["PhysicalSizeX"] == 0.5 and d["PhysicalSizeZ"] == 2.0
    assert d["Channel"] == {
        "Name": ["DAPI"],
        "EmissionWavelength": [456.0],
        "EmissionWavelengthUnit": ["nm"],
        "ExcitationWavelength": [375.0],
        "ExcitationWavelengthUnit": ["nm"],
    }
    assert "PhysicalSizeZ" not in meta.ome_tiff(0, "YX")
    assert meta.ome_tiff(3, "YX")["Channel"] == {"Name": ["Channel 4"]}


def test_tiff_config():
    assert TiffConfig().save_options(np.uint16) == {
        "compression": "zlib",
        "compressionargs": {"level": 1},
        "predictor": True,
    }
    assert "predictor" not in TiffConfig().save_options(np.float32)
    assert TiffConfig(compression=None).save_options(np.uint8) == {}
    assert TiffConfig("lzw").save_options(np.uint8) == {"compression": "lzw", "predictor": True}
    with pytest.raises(ValueError, match="compression"):
        TiffConfig("jpeg")
    with pytest.raises(ValueError, match="level"):
        TiffConfig(level=-1)


def test_tiff_codec_refuses_a_bad_ome_option(tmp_path):
    from hcsflow.errors import DataFormatError

    with pytest.raises(DataFormatError, match="mapping of OME metadata"):
        FileManager().save(np.zeros((4, 4), np.uint8), str(tmp_path / "x.tif"), "disk", ome="yes")


def test_named_files_on_the_memory_backend():
    fm = FileManager()
    fm.ensure_directory("/mplate", "memory")
    for well in ("A01", "A02"):
        fm.save(np.full((4, 4), 3, np.uint16), f"/mplate/{well}_s1_w1.tif", "memory")
    desc = read_plate("/mplate", filemanager=fm, backend="memory")
    assert desc.format == "files" and desc.backend == "memory" and desc.n_images == 2
    (plane,) = desc.reader.load_planes(desc.wells["A02"], fm, "memory")
    assert plane.shape == (4, 4) and plane.max() == 3
