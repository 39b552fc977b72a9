"""Written plates pass two independent validators and ome-zarr's reader; broken ones fail."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

import zarr
from hcsflow.storage import ZarrConfig, finalize_plate, write_labels, write_well
from hcsflow.storage.zarr.validate import validate_plate


def _plate(path, version: str) -> str:
    url = str(path / f"plate{version}.zarr")
    cfg = ZarrConfig(ngff_version=version, pyramid_levels=2)
    rng = np.random.default_rng(0)
    for well in ("A01", "B03", "AF48"):
        fields = {f: rng.integers(0, 1000, (2, 2, 32, 32)).astype(np.uint16) for f in range(2)}
        write_well(url, well, fields, cfg)
    write_labels(url, "A01", 0, "cells", np.ones((2, 32, 32), np.uint16), cfg)
    finalize_plate(url)
    return url


def _ome_zarr_models(url: str, version: str) -> int:
    if version == "0.5":
        from ome_zarr_models.v05.hcs import HCS
    else:
        from ome_zarr_models.v04.hcs import HCS
    hcs = HCS.from_zarr(zarr.open_group(url, mode="r"))
    return len(list(hcs.well_groups))


def _ngff_zarr(url: str) -> int:
    import ngff_zarr

    plate = ngff_zarr.from_hcs_zarr(url, validate=True)
    n = 0
    for w in plate.metadata.wells:
        row, col = w.path.split("/")
        well = plate.get_well(row, col)
        assert well is not None
        assert well.get_image(0) is not None
        n += 1
    return n


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_written_plates_validate(tmp_path, version) -> None:
    pytest.importorskip("ome_zarr_models")
    pytest.importorskip("ngff_zarr")
    url = _plate(tmp_path, version)
    assert _ome_zarr_models(url, version) == 3
    assert _ngff_zarr(url) == 3
    report = validate_plate(url, deep=True)
    assert report.ok, report.summary()
    assert report.wells_checked == 3 and report.images_checked == 6


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_ome_zarr_reader_opens_the_plate(tmp_path, version) -> None:
    pytest.importorskip("ome_zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    url = _plate(tmp_path, version)
    with warnings.catch_warnings():
        # ome-zarr reports the format it detected when it differs from its default
        warnings.simplefilter("ignore")
        nodes = list(Reader(parse_url(url))())
    plate_node = nodes[0]
    assert "plate" in plate_node.metadata or plate_node.specs
    well_img = zarr.open_array(url + "/B/3/0/0", mode="r")
    assert well_img.shape == (2, 2, 32, 32)


def _break(url: str) -> None:
    doc = json.loads(Path(url, "zarr.json").read_text())
    wells = doc["attributes"]["ome"]["plate"]["wells"]
    wells[1]["rowIndex"] = 5  # B/3 claims to be in row F
    with open(url + "/zarr.json", "w") as fh:
        json.dump(doc, fh)


def test_validators_catch_a_broken_plate(tmp_path) -> None:
    pytest.importorskip("ome_zarr_models")
    ngff_zarr = pytest.importorskip("ngff_zarr")
    url = _plate(tmp_path, "0.5")
    _break(url)
    with pytest.raises(ngff_zarr.ValidationError):
        ngff_zarr.from_hcs_zarr(url, validate=True)
    report = validate_plate(url)
    assert not report.ok
    assert any("rowIndex 5" in e for e in report.errors), report.errors


def test_ome_zarr_models_catches_a_broken_well(tmp_path) -> None:
    pytest.importorskip("ome_zarr_models")
    import pydantic

    url = _plate(tmp_path, "0.5")
    doc = json.loads(Path(url, "A/1/zarr.json").read_text())
    doc["attributes"]["ome"]["well"]["images"] = [{"path": "0/bad"}]
    with open(url + "/A/1/zarr.json", "w") as fh:
        json.dump(doc, fh)
    with pytest.raises((pydantic.ValidationError, ValueError)):
        _ome_zarr_models(url, "0.5")
    assert not validate_plate(url).ok


def test_validate_plate_reports_missing_pieces(tmp_path) -> None:
    import shutil

    url = _plate(tmp_path, "0.5")
    shutil.rmtree(url + "/B/3")
    report = validate_plate(url)
    assert any("B/3" in e and "missing" in e for e in report.errors)
    assert "INVALID" in report.summary()
    assert not validate_plate(tmp_path / "nothing.zarr").ok


def test_reads_a_plate_written_by_ome_zarr_py(tmp_path) -> None:
    pytest.importorskip("ome_zarr")
    with warnings.catch_warnings():
        # ome_zarr.writer uses its own deprecated Scaler class at import time
        warnings.simplefilter("ignore", DeprecationWarning)
        from ome_zarr.writer import write_image, write_plate_metadata, write_well_metadata

    from hcsflow.storage import list_wells, open_well, read_well

    url = str(tmp_path / "foreign.zarr")
    root = zarr.open_group(url, mode="w")
    # zero-padded column names, as some tools write them
    write_plate_metadata(root, ["A", "B"], ["01", "02"], ["A/01", "B/02"])
    data = np.arange(2 * 3 * 16 * 16, dtype=np.uint16).reshape(2, 3, 16, 16)
    for path in ("A/01", "B/02"):
        row, col = path.split("/")
        well = root.require_group(row).require_group(col)
        write_well_metadata(well, [{"path": "0"}])
        write_image(data, well.require_group("0"), axes="czyx")
    assert list_wells(url) == ["A01", "B02"]
    assert open_well(url, "B02").axes == ("c", "z", "y", "x")
    np.testing.assert_array_equal(read_well(url, "B02"), data)
    assert validate_plate(url).ok


def test_validate_plate_checks_label_images(tmp_path) -> None:
    import shutil

    url = _plate(tmp_path, "0.5")
    assert validate_plate(url).ok
    shutil.rmtree(url + "/A/1/0/labels/cells/0")
    report = validate_plate(url)
    assert any("labels/cells" in e and "missing" in e for e in report.errors), report.errors


def test_a_label_image_that_does_not_fit_its_image_is_reported(tmp_path) -> None:
    url = _plate(tmp_path, "0.5")
    assert not validate_plate(url).warnings
    for level, yx in ((0, 32), (1, 16)):
        meta = Path(url, f"A/1/0/labels/cells/{level}/zarr.json")
        doc = json.loads(meta.read_text())
        assert doc["shape"] == [1, 2, yx, yx]  # (c, z, y, x)
        doc["shape"] = [1, 1, yx, yx]  # one z plane for an image of two
        meta.write_text(json.dumps(doc))
    report = validate_plate(url)
    assert report.ok and report.warnings == [
        "label image 'A/1/0/labels/cells' has shape [1, 1, 32, 32], its image "
        "[2, 2, 32, 32]: it does not overlay the image"
    ]
