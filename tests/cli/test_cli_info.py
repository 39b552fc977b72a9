"""``hcsflow info`` on plates of every format and on runs; ``run --format/--strict``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from hcsflow.cli import main
from hcsflow.testing import (
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


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_info_describes_an_export(tmp_path, capsys, fmt):
    export = WRITERS[fmt](tmp_path / "plate", z_planes=2)
    assert main(["info", str(export.root)]) == 0
    text = capsys.readouterr().out
    assert f"format           {fmt}" in text
    assert f"name             {export.plate_name}" in text
    assert "wells            2: A01, B02" in text
    assert f"pixel size       {export.pixel_size_um:g} µm" in text
    assert "64 x 64 px, uint16" in text
    for name in export.channel_names:
        assert name in text
    assert "{" not in text  # no Python dict reprs
    assert main(["info", "--json", str(export.root)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["format"] == fmt and doc["wells"] == 2 and doc["image_size"] == [64, 64]
    assert [c.get("name") for c in doc["channel_info"]] == list(export.channel_names)


def test_info_counts_skipped_files(tmp_path, capsys):
    export = write_imagexpress_export(tmp_path / "plate")
    assert main(["info", str(export.root)]) == 0
    text = capsys.readouterr().out
    assert f"skipped files    {export.n_planes + 2} (" in text
    assert f"{export.n_planes} thumbnail" in text and "1 plate description (HTD)" in text


def test_info_format_and_layout_options(tmp_path, capsys):
    export = write_harmony_export(tmp_path / "plate")
    assert main(["info", "--format", "files", str(export.root / "Images")]) == 0
    text = capsys.readouterr().out
    assert "files (file-name layout operaphenix)" in text and "not recorded" in text
    layout = (
        r"r(?P<row>\d+)c(?P<column>\d+)f(?P<site>\d+)p(?P<z>\d+)-ch(?P<channel>\d+)"
        r"sk\d+fk1fl1\.tiff"
    )
    assert main(["info", "--layout", layout, str(export.root / "Images")]) == 0
    assert "layout regex" in capsys.readouterr().out
    assert main(["info", "--format", "nope", str(export.root)]) == 2
    assert "unknown plate format 'nope'" in capsys.readouterr().err


def test_info_lists_differing_image_sizes_and_strays(tmp_path, capsys):
    root = tmp_path / "plain"
    root.mkdir()
    for well, size in (("A01", 16), ("A02", 24)):
        tifffile.imwrite(root / f"{well}_s1_w1.tif", np.zeros((size, size + 1), np.uint8))
    assert main(["info", str(root)]) == 0
    text = capsys.readouterr().out
    assert "image size per well (they differ):" in text
    assert "A01   17 x 16" in text and "A02   25 x 24" in text


def test_info_names_unplaced_images(tmp_path, capsys):
    export = write_harmony_export(tmp_path / "plate")
    tifffile.imwrite(export.root / "Images" / "stray.tiff", np.zeros((8, 8), np.uint16))
    assert main(["info", str(export.root)]) == 0
    text = capsys.readouterr().out
    assert "unplaced images  1" in text and "Images/stray.tiff: not in the Harmony index" in text


def test_run_format_strict_and_info_of_the_run(tmp_path, capsys):
    export = write_harmony_export(tmp_path / "plate")
    tifffile.imwrite(export.root / "Images" / "stray.tiff", np.zeros((8, 8), np.uint16))
    pipe = tmp_path / "pipe.py"
    pipe.write_text(
        "from hcsflow.pipeline import FunctionStep\n"
        "pipeline = [FunctionStep(func='gaussian_filter', sigma=1.0)]\n"
    )
    base = ["run", str(pipe), str(export.root), "--executor", "inprocess", "--backend", "zarr"]
    assert main([*base, "--out", str(tmp_path / "strict"), "--strict"]) == 2
    err = capsys.readouterr().err
    assert "stray.tiff" in err and "strict" in err
    assert main([*base, "--out", str(tmp_path / "out"), "--format", "harmony"]) == 0
    captured = capsys.readouterr()
    assert "2 wells" in captured.out
    assert main(["info", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    assert "hcsflow run" in text and "wells        2 (2 ok, 0 failed)" in text
    assert "harmony plate 'Plate 1'" in text and "channels     DAPI, Alexa 488" in text
    assert "{" not in text
    assert main(["info", str(tmp_path / "out" / "images.zarr")]) == 0
    text = capsys.readouterr().out
    assert "format           ome-zarr" in text and "name             Plate 1" in text
    assert "pixel size       0.5983 µm" in text


def _fails_on_a02(stack):
    if stack.mean() > 100:
        raise RuntimeError("detector saturated")
    return stack


def test_info_describes_an_interrupted_run(tmp_path, capsys):
    from hcsflow.errors import StepExecutionError
    from hcsflow.pipeline import FunctionStep, GlobalPipelineConfig, run_pipeline

    plate = tmp_path / "plate"
    plate.mkdir()
    for w, v in (("A01", 5), ("A02", 500), ("A03", 5), ("A04", 5)):
        tifffile.imwrite(plate / f"{w}_s1_w1.tif", np.full((8, 8), v, np.uint16))
    out = tmp_path / "out"
    config = GlobalPipelineConfig(executor="inprocess", fail_fast=True)
    with pytest.raises(StepExecutionError):
        run_pipeline([FunctionStep(func=_fails_on_a02)], str(plate), out, config)
    assert not (out / "manifest.json").exists()  # stopped: a resumable partial run
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "(interrupted: no manifest yet)" in text
    assert "4 (1 committed ok, 1 failed, 2 not committed)" in text
    assert "failed         A02" in text and "not committed  A03, A04" in text
    assert "--resume" in text
    assert main(["info", "--json", str(out)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["kind"] == "interrupted run" and doc["wells"] == 4
    assert (doc["wells_ok"], doc["wells_failed"], doc["wells_not_committed"]) == (
        ["A01"],
        ["A02"],
        ["A03", "A04"],
    )
