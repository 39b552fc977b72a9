"""Every bad export gives a typed error naming the file; strays are named, not fatal."""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from hcsflow.errors import (
    ExportMetadataError,
    MissingPlaneError,
    PlateLayoutError,
    UnknownPlateFormatError,
)
from hcsflow.readers import read_plate
from hcsflow.testing import (
    write_cellvoyager_export,
    write_harmony_export,
    write_imagexpress_export,
    write_ome_tiff_plate,
)


def _raises(exc: type[Exception], root: Path, *fragments: str, **kw: object) -> Exception:
    with pytest.raises(exc) as info:
        read_plate(root, **kw)  # type: ignore[arg-type]
    text = str(info.value)
    for f in fragments:
        assert f in text, (f, text)
    return info.value


# --------------------------------------------------------------------------- ImageXpress


@pytest.fixture
def ix(tmp_path):
    return write_imagexpress_export(tmp_path / "ix", thumbnails=False)


def _htd(export) -> Path:
    return export.root / "PLATE.HTD"


def test_htd_truncated(ix):
    htd = _htd(ix)
    htd.write_bytes(htd.read_bytes()[:200])
    err = _raises(ExportMetadataError, ix.root, "PLATE.HTD", "truncated")
    assert isinstance(err, ValueError) and err.path == str(htd)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda t: t.replace('"HTSInfoFile"', '"SomethingElse"'), "not an HTD file"),
        (
            lambda t: t.replace('"XWells", 12', '"XWells", twelve'),
            '"XWells" must be a whole number',
        ),
        (lambda t: t.replace('"TimePoints", 1', "TimePoints 1"), "expected a quoted key"),
        (
            lambda t: re.sub(r'("WellsSelection1",(?: \w+,){3}).*', r"\1 TRUE", t),
            "values for 12 columns",
        ),
        (lambda t: t.replace('"Waves", TRUE', '"Waves", MAYBE'), "must be TRUE or FALSE"),
        (lambda t: t + '"ZSteps", 3\r\n', ""),  # after EndFile: ignored, so no error
    ],
)
def test_htd_malformed(ix, edit, fragment):
    htd = _htd(ix)
    htd.write_text(edit(htd.read_text(encoding="cp1252")), encoding="cp1252")
    if not fragment:
        assert read_plate(ix.root).n_images == ix.n_planes
        return
    _raises(ExportMetadataError, ix.root, "PLATE.HTD", fragment)


def test_htd_duplicate_key(ix):
    htd = _htd(ix)
    text = htd.read_text(encoding="cp1252").replace('"EndFile"', '"XSites", 2\r\n"EndFile"')
    htd.write_text(text, encoding="cp1252")
    _raises(ExportMetadataError, ix.root, "PLATE.HTD", "'XSites' appears twice")


def test_htd_selects_a_well_without_files(ix):
    htd = _htd(ix)
    text = htd.read_text(encoding="cp1252")
    text = text.replace('"WellsSelection3", FALSE', '"WellsSelection3", TRUE')
    htd.write_text(text, encoding="cp1252")
    err = _raises(MissingPlaneError, ix.root, "C01", "PLATE.HTD", "no image files")
    assert isinstance(err, FileNotFoundError)


def test_two_files_for_one_plane(ix):
    rel = ix.files[min(ix.files)]
    src = ix.root / rel
    dup = src.with_name(
        src.name[: src.name.index("_w1") + 3] + "11111111-2222-3333-4444-555555555555.tif"
    )
    shutil.copy(src, dup)
    _raises(ExportMetadataError, ix.root, "described twice", src.name, dup.name)


def test_stray_images_are_named_and_strict_refuses(ix, caplog):
    folder = ix.root / "TimePoint_1"
    tifffile.imwrite(folder / "PLATE_H12_s1_w1.tif", np.zeros((64, 64), np.uint16))  # not selected
    tifffile.imwrite(folder / "overview.tif", np.zeros((8, 8), np.uint16))
    tifffile.imwrite(folder / "PLATE_A01_s9_w1.tif", np.zeros((64, 64), np.uint16))
    with caplog.at_level(logging.WARNING, logger="hcsflow.readers"):
        desc = read_plate(ix.root)
    assert desc.n_images == ix.n_planes
    reasons = {u.path: u.reason for u in desc.unplaced}
    assert reasons["TimePoint_1/PLATE_H12_s1_w1.tif"] == "well H12 is not selected in the HTD"
    assert "does not fit" in reasons["TimePoint_1/overview.tif"]
    assert "site 9 is outside" in reasons["TimePoint_1/PLATE_A01_s9_w1.tif"]
    assert "overview.tif" in caplog.text and "could not be placed" in caplog.text
    _raises(PlateLayoutError, ix.root, "strict", "overview.tif", strict=True)


def test_two_htd_files(ix):
    shutil.copy(_htd(ix), ix.root / "OTHER.HTD")
    _raises(ExportMetadataError, ix.root, "OTHER.HTD", "PLATE.HTD", "ambiguous")


def test_broken_metaseries_description(ix):
    rel = ix.files[min(ix.files)]
    path = ix.root / rel
    tifffile.imwrite(
        path, ix.plane(min(ix.files)), description="<MetaData><prop id=", metadata=None
    )
    _raises(ExportMetadataError, ix.root, path.name, "XML")


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_where_an_image_should_be_is_not_an_image(ix):
    """Opening a FIFO for reading waits for a writer that never comes; a listed folder
    does not count one as an image, so its plane is reported missing at once."""
    path = ix.root / ix.files[min(ix.files)]
    path.unlink()
    os.mkfifo(path)
    _raises(PlateLayoutError, ix.root, "well A01 is missing 1 image(s)")


# --------------------------------------------------------------------------- Harmony


@pytest.fixture
def harmony(tmp_path):
    return write_harmony_export(tmp_path / "h")


def _index(export) -> Path:
    return export.root / "Images" / "Index.xml"


def test_harmony_truncated_index(harmony):
    idx = _index(harmony)
    idx.write_bytes(idx.read_bytes()[: len(idx.read_bytes()) // 2])
    _raises(ExportMetadataError, harmony.root, "Index.xml", "XML at line")


def test_harmony_malformed_index(harmony):
    idx = _index(harmony)
    idx.write_text(idx.read_text().replace("<Row>1</Row>", "<Row>1</Rw>", 1))
    _raises(ExportMetadataError, harmony.root, "Index.xml", "malformed XML")


def test_harmony_unknown_namespace(harmony):
    idx = _index(harmony)
    idx.write_text(idx.read_text().replace("PEHH/HarmonyV6", "PEHH/HarmonyV9"))
    _raises(ExportMetadataError, harmony.root, "Index.xml", "unknown XML namespace", "HarmonyV9")


def test_harmony_not_an_index(harmony):
    _index(harmony).write_text('<?xml version="1.0"?><Measurement/>')
    _raises(ExportMetadataError, harmony.root, "Index.xml", "not 'EvaluationInputData'")


def test_harmony_record_points_at_a_missing_file(harmony):
    gone = harmony.root / harmony.files[max(harmony.files)]
    gone.unlink()
    err = _raises(MissingPlaneError, harmony.root, "Index.xml", gone.name, "missing")
    assert isinstance(err, FileNotFoundError)


def test_harmony_two_records_for_one_plane(harmony):
    idx = _index(harmony)
    text = idx.read_text()
    text = text.replace(
        "<URL>r01c01f02p01-ch1sk1fk1fl1.tiff</URL>\n      <Row>1</Row>\n      <Col>1</Col>\n"
        "      <FieldID>2</FieldID>",
        "<URL>r01c01f02p01-ch1sk1fk1fl1.tiff</URL>\n      <Row>1</Row>\n      <Col>1</Col>\n"
        "      <FieldID>1</FieldID>",
    )
    idx.write_text(text)
    _raises(
        ExportMetadataError,
        harmony.root,
        "described twice",
        "0101K1F1P1R1",
        "0101K1F2P1R1",
        "Index.xml",
    )


def test_harmony_state_not_ok_is_named(harmony):
    idx = _index(harmony)
    idx.write_text(idx.read_text().replace("<State>Ok</State>", "<State>Failed</State>", 1))
    _raises(
        PlateLayoutError, harmony.root, "well A01 is missing 1 image(s)", "'Failed'", "0101K1F1P1R1"
    )


def test_harmony_url_outside_the_plate(harmony):
    idx = _index(harmony)
    idx.write_text(idx.read_text().replace("<URL>r01c01f01p01", "<URL>../../../r01c01f01p01", 1))
    _raises(ExportMetadataError, harmony.root, "outside the plate", "Index.xml")


def test_harmony_bad_values(harmony):
    idx = _index(harmony)
    text = idx.read_text()
    cut = text.index("<Images>")
    idx.write_text(text[:cut] + text[cut:].replace("<Row>2</Row>", "<Row>two</Row>", 1))
    _raises(ExportMetadataError, harmony.root, "Row of image record", "'two'", "Index.xml")
    idx.write_text(text.replace('ImageResolutionX Unit="m"', 'ImageResolutionX Unit="furlong"', 1))
    _raises(ExportMetadataError, harmony.root, "unit 'furlong'", "Index.xml")


def test_harmony_refuses_entities(harmony):
    idx = _index(harmony)
    text = idx.read_text()
    text = text.replace(
        '<?xml version="1.0" encoding="utf-8"?>',
        '<?xml version="1.0" encoding="utf-8"?>\n<!DOCTYPE x [<!ENTITY a "aaaa">]>',
    )
    idx.write_text(text)
    _raises(ExportMetadataError, harmony.root, "entities", "Index.xml")


def test_harmony_unindexed_tiff_is_unplaced(harmony):
    extra = harmony.root / "Images" / "r09c09f01p01-ch1sk1fk1fl1.tiff"
    tifffile.imwrite(extra, np.zeros((64, 64), np.uint16))
    desc = read_plate(harmony.root)
    assert [(u.path, u.reason) for u in desc.unplaced] == [
        ("Images/r09c09f01p01-ch1sk1fk1fl1.tiff", "not in the Harmony index")
    ]
    _raises(PlateLayoutError, harmony.root, "r09c09f01p01", strict=True)


def test_harmony_empty_index(harmony):
    _index(harmony).write_bytes(b"")
    _raises(ExportMetadataError, harmony.root, "empty", "Index.xml")


# --------------------------------------------------------------------------- CellVoyager


@pytest.fixture
def cv(tmp_path):
    return write_cellvoyager_export(tmp_path / "cv")


def test_mlf_truncated(cv):
    mlf = cv.root / "MeasurementData.mlf"
    mlf.write_bytes(mlf.read_bytes()[:-300])
    _raises(ExportMetadataError, cv.root, "MeasurementData.mlf", "XML at line")


def test_mlf_unknown_namespace(cv):
    mlf = cv.root / "MeasurementData.mlf"
    mlf.write_text(mlf.read_text().replace("BTSSchema/1.0", "BTSSchema/9.9"))
    _raises(ExportMetadataError, cv.root, "MeasurementData.mlf", "unknown XML namespace")


def test_mrf_malformed(cv):
    mrf = cv.root / "MeasurementDetail.mrf"
    mrf.write_text(
        mrf.read_text().replace(
            'HorizontalPixelDimension="0.325"', 'HorizontalPixelDimension="wide"', 1
        )
    )
    _raises(ExportMetadataError, cv.root, "MeasurementDetail.mrf", "'wide'")


def test_mlf_record_points_at_a_missing_file(cv):
    gone = cv.root / cv.files[min(cv.files)]
    gone.unlink()
    _raises(MissingPlaneError, cv.root, gone.name, "MeasurementData.mlf")


def test_mlf_two_records_for_one_plane(cv):
    mlf = cv.root / "MeasurementData.mlf"
    text = mlf.read_text()
    # point record 2 (field 1, channel 2) at channel 1: the same plane as record 1
    first_img = text.index('bts:Type="IMG"')
    second = text.index('bts:Type="IMG"', first_img + 1)
    head, tail = text[:second], text[second:]
    tail = tail.replace('bts:Ch="2"', 'bts:Ch="1"', 1)
    mlf.write_text(head + tail)
    _raises(ExportMetadataError, cv.root, "described twice", "MeasurementData.mlf")


def test_mlf_bad_attribute(cv):
    mlf = cv.root / "MeasurementData.mlf"
    mlf.write_text(mlf.read_text().replace('bts:FieldIndex="1"', 'bts:FieldIndex="first"', 1))
    _raises(ExportMetadataError, cv.root, "bts:FieldIndex", "'first'", "MeasurementData.mlf")


def test_mlf_error_record_leaving_a_hole_is_named(cv):
    mlf = cv.root / "MeasurementData.mlf"
    text = mlf.read_text()
    # drop the image record that the ERR record stands beside
    img = re.search(
        r'\s*<bts:MeasurementRecord bts:Type="IMG"[^>]*>[^<]*</bts:MeasurementRecord>', text
    )
    assert img is not None
    mlf.write_text(text[: img.start()] + text[img.end() :])
    (cv.root / cv.files[min(cv.files)]).unlink()
    _raises(PlateLayoutError, cv.root, "acquisition error (ERR)", "well A01 is missing 1 image(s)")


# --------------------------------------------------------------------------- OME-TIFF


@pytest.fixture
def ome(tmp_path):
    return write_ome_tiff_plate(tmp_path / "o", wells=("A01",), fields=2)


def test_ome_xml_malformed(ome):
    path = ome.root / ome.files[min(ome.files)]
    with tifffile.TiffFile(path) as tif:
        data = tif.asarray()
        xml = tif.pages.first.description
    for p in ome.root.glob("*.ome.tif"):
        tifffile.imwrite(
            p, data, description=xml.replace("</Pixels>", "</Pixel>").encode(), metadata=None
        )
    _raises(ExportMetadataError, ome.root, "malformed XML", ".ome.tif")


def test_ome_tiffdata_names_a_missing_file(ome):
    victim = ome.root / ome.files[max(ome.files)]
    victim.unlink()
    _raises(MissingPlaneError, ome.root, victim.name, "missing")


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_named_by_the_ome_xml_is_not_waited_on(ome):
    """The OME-TIFF reader checks the files its OME-XML names against the folder's
    listing, which does not count a FIFO as a file: reported missing at once."""
    victim = ome.root / ome.files[max(ome.files)]
    victim.unlink()
    os.mkfifo(victim)
    _raises(MissingPlaneError, ome.root, victim.name, "missing")


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_plate_source_refuses_a_fifo_or_a_folder_at_once(tmp_path):
    """``PlateSource.open`` (what readers, third-party ones too, read file bytes with)
    opens a FIFO without waiting for a writer and refuses it, naming it."""
    from hcsflow.readers import PlateSource

    os.mkfifo(tmp_path / "pipe.tif")
    (tmp_path / "folder.tif").mkdir()
    tifffile.imwrite(tmp_path / "plane.tif", np.ones((2, 2), np.uint16))
    source = PlateSource(str(tmp_path))
    for name, found in (("pipe.tif", "a FIFO"), ("folder.tif", "a directory")):
        with (
            pytest.raises(ExportMetadataError, match=f"expected a file, found {found}") as info,
            source.open(str(tmp_path / name)),
        ):
            pass
        assert info.value.path == str(tmp_path / name)
    with source.open(str(tmp_path / "plane.tif")) as fh, tifffile.TiffFile(fh) as tif:
        assert tif.asarray().sum() == 4 and tif.filename == "plane.tif"


def test_ome_tiff_truncated(ome):
    victim = ome.root / ome.files[min(ome.files)]
    victim.write_bytes(victim.read_bytes()[:100])
    _raises(ExportMetadataError, ome.root, victim.name, "not a readable TIFF")


# --------------------------------------------------------------------------- detection


def test_nothing_recognised_lists_what_each_reader_looked_for(tmp_path):
    odd = tmp_path / "odd"
    odd.mkdir()
    tifffile.imwrite(odd / "image_001.tif", np.zeros((4, 4), np.uint16))
    err = _raises(
        UnknownPlateFormatError,
        odd,
        "no plate reader recognises",
        "Index.idx.xml",
        "MeasurementData.mlf",
        ".HTD",
        "*.ome.tif",
        "zarr.json",
        "image_001.tif",
        "--format",
    )
    assert isinstance(err, PlateLayoutError)


def test_unknown_format_name(harmony):
    _raises(
        UnknownPlateFormatError,
        harmony.root,
        "unknown plate format 'phenix'",
        "harmony",
        format="phenix",
    )


def test_forced_format_that_does_not_fit(harmony):
    _raises(MissingPlaneError, harmony.root, "MeasurementData.mlf", format="cellvoyager")


def test_layout_with_another_format(harmony):
    from hcsflow.readers import OperaPhenixLayout

    _raises(
        UnknownPlateFormatError,
        harmony.root,
        "layout",
        format="harmony",
        layout=OperaPhenixLayout(),
    )


def test_ome_unknown_namespace_and_bad_values(ome):
    path = ome.root / ome.files[min(ome.files)]
    with tifffile.TiffFile(path) as tif:
        data = tif.asarray()
        xml = tif.pages.first.description

    def rewrite(text: str) -> None:
        for p in ome.root.glob("*.ome.tif"):
            tifffile.imwrite(p, data, description=text.encode(), metadata=None)

    rewrite(xml.replace("Schemas/OME/2016-06", "Schemas/OME/2099-01"))
    _raises(ExportMetadataError, ome.root, "unknown OME-XML namespace", "2099-01", ".ome.tif")
    rewrite(xml.replace('SizeC="2"', 'SizeC="two"'))
    _raises(ExportMetadataError, ome.root, "SizeC", "'two'", ".ome.tif")
    rewrite(xml.replace('PlaneCount="2"', 'PlaneCount="9"'))
    _raises(ExportMetadataError, ome.root, "TiffData", "covers planes", ".ome.tif")
