"""Vendor exports and OME-Zarr plates on object storage (moto S3 on 127.0.0.1).

Each export is written locally, uploaded to a bucket and run from its ``s3://`` URL; the
outputs must equal (arrays, tables, OME-Zarr and OME-TIFF metadata) those of a run of
the same folder on disk.  ``AWS_ENDPOINT_URL`` is taken out of the environment for
these runs, so the bucket is only reachable with the run's ``storage_options``: every
reader, and every worker reading planes, must have been given them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

import zarr
from hcsflow.errors import CompilationError
from hcsflow.pipeline import FunctionStep, GlobalPipelineConfig, VFSConfig, run_pipeline
from hcsflow.testing import (
    write_cellvoyager_export,
    write_harmony_export,
    write_imagexpress_export,
    write_ome_tiff_plate,
)

STEPS = [
    FunctionStep(func="gaussian_filter", sigma=1.0),
    FunctionStep(func="count_cells", min_size=5),
]
WRITERS = {
    "imagexpress": lambda root: write_imagexpress_export(root),
    "imagexpress-z": lambda root: write_imagexpress_export(root, z_planes=2),
    "harmony": lambda root: write_harmony_export(root, version="V5"),
    "cellvoyager": lambda root: write_cellvoyager_export(root),
    "ome-tiff": lambda root: write_ome_tiff_plate(root),
    "ome-tiff-t": lambda root: write_ome_tiff_plate(root, timepoints=2),
}
IGNORED = {"manifest.json"}


def cfg(backend: str, **kw) -> GlobalPipelineConfig:
    kw.setdefault("executor", "threads")
    kw.setdefault("num_workers", 2)
    return GlobalPipelineConfig(vfs=VFSConfig(materialization_backend=backend), **kw)


@pytest.fixture
def bucket(s3_bucket, monkeypatch):
    """A bucket reachable only through the storage options (no endpoint in the env)."""
    url, opts = s3_bucket
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    return url, opts


def _upload(local: Path, url: str, opts: dict) -> None:
    import fsspec

    fs, _ = fsspec.core.url_to_fs(url, **opts)
    fs.put(f"{local}/", f"{url}/", recursive=True)


def _ome(path: Path) -> tuple:
    """(physical sizes, channel names) of an OME-TIFF, as ome-types parses them."""
    from ome_types import from_xml

    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome, path
        ome = from_xml(tif.ome_metadata)
    px = ome.images[0].pixels
    return (
        px.physical_size_x,
        px.physical_size_y,
        px.physical_size_z,
        [c.name for c in px.channels],
    )


def assert_same_outputs(a: Path, b: Path) -> int:
    """Every file of run ``a`` equals run ``b``'s: arrays, tables, OME and NGFF metadata."""
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    checked = 0
    for rel in files_a:
        if rel.name in IGNORED or rel.parts[0] == ".hcsflow":
            continue
        if rel.suffix == ".tif":
            np.testing.assert_array_equal(tifffile.imread(a / rel), tifffile.imread(b / rel))
            if rel.parts[0] == "images":
                assert _ome(a / rel) == _ome(b / rel)
        elif rel.suffix == ".csv":
            pd.testing.assert_frame_equal(pd.read_csv(a / rel), pd.read_csv(b / rel))
        elif rel.suffix == ".json":  # zarr.json metadata and summaries
            assert json.loads((a / rel).read_text()) == json.loads((b / rel).read_text()), rel
        else:
            continue  # zarr chunks: compared as arrays below
        checked += 1
    for store in sorted(p.relative_to(a) for p in a.glob("*.zarr")):
        ga, gb = zarr.open_group(a / store, mode="r"), zarr.open_group(b / store, mode="r")
        arrays = [k for k, node in ga.members(max_depth=None) if isinstance(node, zarr.Array)]
        assert arrays
        for key in sorted(arrays):
            np.testing.assert_array_equal(ga[key][...], gb[key][...])
            checked += 1
    return checked


def _plate_summary(out: Path) -> dict:
    summary = json.loads((out / "manifest.json").read_text())["plate"]
    return {k: v for k, v in summary.items() if k not in ("root", "backend")}


@pytest.mark.parametrize(
    ("fmt", "backend"),
    [
        ("imagexpress-z", "zarr"),
        ("imagexpress", "disk"),
        ("harmony", "zarr"),
        ("cellvoyager", "disk"),
        ("ome-tiff", "zarr"),
        ("ome-tiff-t", "disk"),
    ],
)
def test_an_export_on_s3_runs_like_the_local_folder(tmp_path, bucket, fmt, backend):
    url, opts = bucket
    export = WRITERS[fmt](tmp_path / "export")
    fmt = fmt.removesuffix("-z").removesuffix("-t")
    plate_url = f"{url}/exports/{fmt}"
    _upload(export.root, plate_url, opts)
    local, remote = tmp_path / "local", tmp_path / "remote"
    res = run_pipeline(STEPS, export.root, local, cfg(backend))
    assert res.ok, res.failed[0].traceback if res.failed else ""
    res = run_pipeline(STEPS, plate_url, remote, cfg(backend), storage_options=opts)
    assert res.ok, res.failed[0].traceback if res.failed else ""
    assert assert_same_outputs(remote, local) > 5
    m = json.loads((remote / "manifest.json").read_text())
    assert m["plate"]["root"] == plate_url and m["plate"]["format"] == fmt
    assert _plate_summary(remote) == _plate_summary(local)
    assert m["plate"]["pixel_size_um"] is not None
    names = [c["name"] for c in m["plate"]["channel_info"]]
    assert names == list(export.channel_names)


def test_an_ome_zarr_plate_on_s3_is_read_with_the_run_options(tmp_path, bucket):
    """The workers open the store with the run's storage options, not the environment."""
    url, opts = bucket
    export = write_harmony_export(tmp_path / "export", z_planes=2)
    first = tmp_path / "first"
    res = run_pipeline(
        [FunctionStep(func="gaussian_filter", sigma=0.5)], export.root, first, cfg("zarr")
    )
    assert res.ok
    plate_url = f"{url}/plates/p1.zarr"
    _upload(first / "images.zarr", plate_url, opts)
    local, remote = tmp_path / "local", tmp_path / "remote"
    res = run_pipeline(STEPS, first / "images.zarr", local, cfg("disk"))
    assert res.ok, res.failed[0].traceback if res.failed else ""
    res = run_pipeline(STEPS, plate_url, remote, cfg("disk"), storage_options=opts)
    assert res.ok, res.failed[0].traceback if res.failed else ""
    assert assert_same_outputs(remote, local) > 5
    m = json.loads((remote / "manifest.json").read_text())
    assert m["plate"]["format"] == "ome-zarr" and m["plate"]["root"] == plate_url
    assert m["plate"]["pixel_size_um"] == [export.pixel_size_um, export.pixel_size_um]
    assert m["plate"]["z_step_um"] == export.z_step_um
    image = next((remote / "images").rglob("*.tif"))
    assert _ome(image)[:2] == (export.pixel_size_um, export.pixel_size_um)


def test_format_strict_and_storage_options_on_the_command_line(tmp_path, bucket, capsys):
    from hcsflow.cli import main

    url, opts = bucket
    export = write_cellvoyager_export(tmp_path / "cv", wells=("A01", "A02"), fields=1)
    stray = export.root / "PL1_B07_T0001F001L01A01Z01C01.tif"
    stray.write_bytes((export.root / sorted(export.files.values())[0]).read_bytes())
    plate_url = f"{url}/cv"
    _upload(export.root, plate_url, opts)
    pipe = tmp_path / "pipe.py"
    pipe.write_text(
        "from hcsflow.pipeline import FunctionStep\n"
        "pipeline = [FunctionStep(func='gaussian_filter', sigma=1.0)]\n"
    )
    so = json.dumps(opts)
    base = ["run", str(pipe), plate_url, "--executor", "threads", "--workers", "2"]
    unreachable = json.dumps(
        {"endpoint_url": "http://127.0.0.1:9", "config_kwargs": {"retries": {"max_attempts": 1}}}
    )
    assert main([*base, "--out", str(tmp_path / "o0"), "--storage-options", unreachable]) == 2
    err = capsys.readouterr().err
    assert "object store unreachable" in err and plate_url in err and len(err.splitlines()) <= 3
    assert main([*base, "--out", str(tmp_path / "o0"), "--storage-options", so, "--format", "x"])
    assert "unknown plate format 'x'" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "o1"), "--storage-options", so, "--strict"]) == 2
    err = capsys.readouterr().err
    assert "could not be placed" in err and stray.name in err
    args = [*base, "--out", str(tmp_path / "o2"), "--storage-options", so, "--format", "harmony"]
    assert main(args) == 2
    assert "Index" in capsys.readouterr().err
    out = tmp_path / "o3"
    args = [*base, "--out", str(out), "--storage-options", so, "--format", "cellvoyager"]
    assert main(args) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["plate"]["format"] == "cellvoyager" and m["summary"]["wells_ok"] == 2
    assert m["plate"]["unplaced_files"] == [f"{stray.name}: not in MeasurementData.mlf"]


def test_a_broken_export_on_s3_is_refused_before_any_work(tmp_path, bucket):
    url, opts = bucket
    export = write_imagexpress_export(tmp_path / "ix", wells=("A01",))
    htd = export.root / "PLATE.HTD"
    htd.write_bytes(htd.read_bytes()[:-40])
    plate_url = f"{url}/ix"
    _upload(export.root, plate_url, opts)
    with pytest.raises(CompilationError) as info:
        run_pipeline(STEPS, plate_url, tmp_path / "o", cfg("disk"), storage_options=opts)
    assert f"{plate_url}/PLATE.HTD" in str(info.value)
    assert not (tmp_path / "o").exists()


def test_info_describes_a_plate_on_s3(tmp_path, s3_bucket, capsys):
    """``hcsflow info URL``: credentials and endpoint from the environment."""
    from hcsflow.cli import main

    url, opts = s3_bucket
    export = write_harmony_export(tmp_path / "h", wells=("B03",), fields=1)
    _upload(export.root, f"{url}/h", opts)
    assert main(["info", f"{url}/h", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "harmony" and info["root"] == f"{url}/h"
    assert info["pixel_size_um"] == [export.pixel_size_um, export.pixel_size_um]
    assert main(["info", f"{url}/h"]) == 0
    assert export.channel_names[0] in capsys.readouterr().out


def test_info_storage_options_reach_the_plate_and_a_run(tmp_path, bucket, capsys):
    """``hcsflow info URL --storage-options JSON``: the endpoint is only in the options."""
    from hcsflow.cli import main

    url, opts = bucket
    so = json.dumps(opts)
    export = write_imagexpress_export(tmp_path / "ix", wells=("A01",), z_planes=2)
    _upload(export.root, f"{url}/ix", opts)
    assert main(["info", f"{url}/ix", "--storage-options", so, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "imagexpress" and info["root"] == f"{url}/ix"
    assert info["z_planes"] == 2 and info["image_size"] == [64, 64]
    # an OME-Zarr plate (geometry from its arrays) and a run, both written to the bucket
    run_url = f"{url}/runs/r1"
    res = run_pipeline(STEPS, f"{url}/ix", run_url, cfg("zarr"), storage_options=opts)
    assert res.ok, res.failed[0].traceback if res.failed else ""
    assert main(["info", f"{run_url}/images.zarr", "--storage-options", so, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "OME-Zarr plate" and info["z_planes"] == 2
    assert info["image_size"] == [64, 64] and info["dtype"] == "float32"
    assert main(["info", run_url, "--storage-options", so]) == 0
    text = capsys.readouterr().out
    assert f"hcsflow run   {run_url}\n" in text and "1 (1 ok, 0 failed)" in text
    assert "cell_counts: cell_counts.csv" in text
    # the options are what is used: an unreachable endpoint fails in one line
    unreachable = json.dumps(
        {"endpoint_url": "http://127.0.0.1:9", "config_kwargs": {"retries": {"max_attempts": 1}}}
    )
    assert main(["info", f"{url}/ix", "--storage-options", unreachable]) == 2
    err = capsys.readouterr().err
    assert "object store unreachable" in err and len(err.splitlines()) <= 3
    assert main(["info", f"{url}/ix", "--storage-options", "[1]"]) == 2
    assert "--storage-options must be a JSON object" in capsys.readouterr().err


@pytest.mark.parametrize("scheme", ["file://", "local://"])
def test_local_urls_are_the_folders_they_name(tmp_path, scheme) -> None:
    """A plate and an output given as ``file://`` or ``local://`` URLs are run as the
    local folders they name: the same outputs as the plain paths, written by the disk
    backend (atomic, fsynced), and no folder named after the scheme."""
    export = write_imagexpress_export(tmp_path / "plate")
    plain, as_url = tmp_path / "plain", tmp_path / "url"
    assert run_pipeline(STEPS, export.root, plain, cfg("disk")).ok
    res = run_pipeline(STEPS, f"{scheme}{export.root}", f"{scheme}{as_url}", cfg("disk"))
    assert res.ok, res.failed[0].traceback if res.failed else ""
    assert assert_same_outputs(as_url, plain) > 5
    m = json.loads((as_url / "manifest.json").read_text())
    assert m["plate"]["root"] == str(export.root)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain", "plate", "url"]
