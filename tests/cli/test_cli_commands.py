"""The ``hcsflow`` command: demo, run, info, validate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from hcsflow.cli import main
from hcsflow.testing import make_plate

SMALL = [
    "--wells",
    "3",
    "--sites",
    "1",
    "--size",
    "128",
    "--workers",
    "1",
    "--executor",
    "inprocess",
]


@pytest.mark.parametrize("backend", ["disk", "zarr"])
def test_demo_end_to_end(tmp_path, capsys, backend):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--backend", backend, *SMALL]) == 0
    text = capsys.readouterr().out
    assert "mean absolute error" in text and "images/s" in text
    truth = pd.read_csv(out / "demo_ground_truth.csv")
    assert list(truth["well"]) == ["A01", "A02", "A03"]
    assert (truth["counted"] - truth["true_count"]).abs().mean() <= 1.0
    for w, t, c in truth[["well", "true_count", "counted"]].itertuples(index=False):
        assert f"{w}" in text and str(t) in text and str(c) in text
    with Image.open(out / "cell_counts_heatmap.png") as png:
        assert png.format == "PNG" and png.size[0] > 200
    assert (out / ("images.zarr" if backend == "zarr" else "images")).is_dir()
    manifest = json.loads((out / "manifest.json").read_text())
    assert "cell_counts_heatmap.png" in manifest["files"]
    # a second demo into the same directory needs --overwrite
    assert main(["demo", "--out", str(out), "--backend", backend, *SMALL]) == 2
    assert "previous run" in capsys.readouterr().err
    assert main(["demo", "--out", str(out), "--backend", backend, "--overwrite", *SMALL]) == 0


def test_run_info_validate_with_a_pipeline_file_in_processes(tmp_path, capsys):
    plate = make_plate(
        tmp_path / "plate", 2, sites=1, size=96, min_cells=3, max_cells=6, radius=4, seed=1
    )
    pipe = tmp_path / "my_pipeline.py"
    pipe.write_text(
        "from hcsflow.pipeline import FunctionStep, GlobalPipelineConfig\n"
        "def double(stack):\n"
        "    return stack * 2.0\n"
        "pipeline = [FunctionStep(func=double), FunctionStep(func='count_cells', min_size=5)]\n"
        "config = GlobalPipelineConfig(num_workers=2)\n"
    )
    out = tmp_path / "out"
    rc = main(
        [
            "run",
            str(pipe),
            plate.root,
            "--out",
            str(out),
            "--backend",
            "zarr",
            "--executor",
            "processes",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "2 wells" in text and "0 failed" in text
    counts = pd.read_csv(out / "cell_counts.csv").groupby("well")["cell_count"].sum()
    assert counts.to_dict() == plate.true_counts
    m = json.loads((out / "manifest.json").read_text())
    assert m["config"]["num_workers"] == 2 and m["config"]["executor"] == "processes"

    assert main(["info", str(out)]) == 0
    assert "hcsflow run" in capsys.readouterr().out
    assert main(["info", "--json", str(out / "images.zarr")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["wells"] == 2 and info["kind"] == "OME-Zarr plate"
    assert main(["info", plate.root]) == 0
    assert "imagexpress" in capsys.readouterr().out
    assert main(["validate", str(out / "images.zarr")]) == 0
    assert "valid OME-Zarr plate" in capsys.readouterr().out
    assert main(["validate", "--deep", str(out / "images.zarr")]) == 0


def test_validate_reports_a_broken_plate(tmp_path, capsys):
    plate = make_plate(tmp_path / "plate", 2, sites=1, size=64, seed=2)
    out = tmp_path / "out"
    assert (
        main(
            [
                "run",
                _write_pipeline(tmp_path),
                plate.root,
                "--out",
                str(out),
                "--backend",
                "zarr",
                "--executor",
                "inprocess",
            ]
        )
        == 0
    )
    capsys.readouterr()
    well_meta = out / "images.zarr" / "A" / "2" / "zarr.json"
    well_meta.write_text("{not json")
    assert main(["validate", str(out / "images.zarr")]) != 0


def _write_pipeline(tmp_path: Path) -> str:
    p = tmp_path / "pipe.py"
    p.write_text(
        "from hcsflow.pipeline import FunctionStep\n"
        "pipeline = [FunctionStep(func='gaussian_filter', sigma=1.0)]\n"
    )
    return str(p)


def test_bad_pipeline_file_and_plate_are_reported(tmp_path, capsys):
    bad = tmp_path / "bad.py"
    bad.write_text("pipeline = 3\n")
    (tmp_path / "plate").mkdir()
    assert main(["run", str(bad), str(tmp_path / "plate"), "--out", str(tmp_path / "o")]) == 2
    assert "must define" in capsys.readouterr().err
    assert (
        main(
            [
                "run",
                _write_pipeline(tmp_path),
                str(tmp_path / "plate"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "no image files" in capsys.readouterr().err


def test_console_script_help():
    exe = Path(sys.executable).with_name("hcsflow")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "hcsflow.cli"]
    out = subprocess.run([*cmd, "--help"], capture_output=True, text=True, check=True)
    for sub in ("demo", "run", "info", "validate"):
        assert sub in out.stdout


def test_run_with_a_regex_layout(tmp_path, capsys):
    import numpy as np
    import tifffile

    root = tmp_path / "plate"
    root.mkdir()
    for well in ("C07", "C08"):
        for site in (1, 2):
            tifffile.imwrite(root / f"{well}-{site}-1.tif", np.full((8, 8), site, np.uint16))
    out = tmp_path / "o"
    rc = main(
        [
            "run",
            _write_pipeline(tmp_path),
            str(root),
            "--out",
            str(out),
            "--executor",
            "threads",
            "--workers",
            "2",
            "--backend",
            "disk",
            "--layout",
            r"(?P<well>[A-P]\d\d)-(?P<site>\d+)-(?P<channel>\d+)\.tif",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in (out / "images/C08").iterdir()) == [
        "C08_s1_w1.tif",
        "C08_s2_w1.tif",
    ]
    assert (
        main(
            [
                "run",
                _write_pipeline(tmp_path),
                str(root),
                "--out",
                str(tmp_path / "x"),
                "--executor",
                "inprocess",
            ]
        )
        == 2
    )
    assert "C07-1-1.tif" in capsys.readouterr().err


def test_relative_paths_and_output_inside_the_plate(tmp_path, capsys, monkeypatch):
    make_plate(tmp_path / "plate", 1, sites=1, size=64, seed=4)
    monkeypatch.chdir(tmp_path)
    pipe = _write_pipeline(tmp_path)
    run = ["--executor", "inprocess", "--backend", "disk"]
    assert main(["run", pipe, "plate", "--out", "out", *run]) == 0
    assert (tmp_path / "out/images/A01/A01_s1_w1.tif").is_file()
    assert main(["info", "plate"]) == 0
    assert main(["run", pipe, "plate", "--out", "plate/out", *run]) == 2
    assert "inside the plate directory" in capsys.readouterr().err
