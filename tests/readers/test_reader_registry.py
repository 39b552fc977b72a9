"""The reader registry: registration handles, duplicates, detection order, third parties."""

from __future__ import annotations

import csv
import pickle

import numpy as np
import pytest
import tifffile

from hcsflow.errors import ReaderRegistrationError, UnknownPlateFormatError
from hcsflow.readers import (
    ChannelInfo,
    PlateBuilder,
    PlateDescription,
    PlateReader,
    PlateSource,
    ReaderRegistry,
    read_plate,
    reader_registry,
    register_reader,
)
from hcsflow.storage.plate import ImageCoordinates
from hcsflow.testing import write_harmony_export


class CsvIndexReader(PlateReader):
    """A third party's format: ``plate.csv`` lists ``well,site,channel,file`` rows."""

    name = "csv-index"
    title = "CSV-indexed plate"
    looks_for = "plate.csv at the top of the folder"

    def detect(self, source: PlateSource) -> bool:
        return source.is_file(source.join("plate.csv"))

    def describe(self, source: PlateSource) -> PlateDescription:
        index = source.join("plate.csv")
        builder = PlateBuilder(source, self)
        listed = set()
        rows = csv.DictReader(source.read_bytes(index).decode().splitlines())
        for row in rows:
            path = source.join(row["file"])
            listed.add(path)
            coords = ImageCoordinates(row["well"], int(row["site"]) - 1, int(row["channel"]) - 1)
            builder.add(coords, path)
        for f in source.files():
            if f == index:
                builder.skip(f, "plate index")
            elif f not in listed:
                builder.unplace(f, "not in plate.csv")
        return builder.build(
            metadata_path=index,
            name="csv plate",
            channel_info=(ChannelInfo(0, "nuclei", emission_nm=461.0),),
            pixel_size_um=(0.5, 0.5),
        )


def _csv_plate(root):
    root.mkdir()
    rows = ["well,site,channel,file"]
    for well in ("A01", "A02"):
        for site in (1, 2):
            name = f"img_{well}_{site}.tif"
            tifffile.imwrite(root / name, np.full((8, 8), site, np.uint16))
            rows.append(f"{well},{site},1,{name}")
    (root / "plate.csv").write_text("\n".join(rows) + "\n")
    return root


def test_register_detect_unregister(tmp_path):
    root = _csv_plate(tmp_path / "p")
    with pytest.raises(UnknownPlateFormatError, match="unknown plate format 'csv-index'"):
        read_plate(root, format="csv-index")
    unregister = register_reader(CsvIndexReader())
    try:
        assert "csv-index" in reader_registry
        desc = read_plate(root)
        assert desc.format == "csv-index" and desc.name == "csv plate"
        assert list(desc.wells) == ["A01", "A02"] and desc.sites == (0, 1)
        assert desc.pixel_size_um == (0.5, 0.5)
        assert [s.reason for s in desc.skipped] == ["plate index"]
        with pytest.raises(ReaderRegistrationError, match="already registered"):
            register_reader(CsvIndexReader())
    finally:
        unregister()
    assert "csv-index" not in reader_registry
    unregister()  # a second call is harmless


def test_registry_rules():
    reg = ReaderRegistry()
    with pytest.raises(ReaderRegistrationError, match="PlateReader instance"):
        reg.register(object())  # type: ignore[arg-type]
    reg.register(CsvIndexReader(), priority=5)

    class Upper(CsvIndexReader):
        name = "CSV"

    with pytest.raises(ReaderRegistrationError, match="lower-case"):
        reg.register(Upper())
    with pytest.raises(UnknownPlateFormatError, match="known: csv-index"):
        reg.get("nope")

    def broken() -> PlateReader:
        raise ImportError("No module named 'vendorlib'")

    reg.register_factory("vendor", broken, hint="pip install vendorlib")
    with pytest.raises(ImportError, match="pip install vendorlib"):
        reg.get("vendor")
    assert reg.names() == ["csv-index", "vendor"]


def test_detection_order_follows_priority(tmp_path):
    export = write_harmony_export(tmp_path / "h")
    (export.root / "plate.csv").write_text("well,site,channel,file\n")
    reg = ReaderRegistry()
    reg.register(CsvIndexReader(), priority=100)
    from hcsflow.readers._harmony import HarmonyReader

    reg.register(HarmonyReader(), priority=10)
    assert read_plate(export.root, registry=reg).format == "harmony"
    reg2 = ReaderRegistry()
    reg2.register(HarmonyReader(), priority=10)
    reg2.register(CsvIndexReader(), priority=1)
    with pytest.raises(Exception, match="no image planes|describes no"):
        read_plate(export.root, registry=reg2)


def test_builtin_names_and_order():
    assert reader_registry.names() == [
        "ome-zarr",
        "harmony",
        "cellvoyager",
        "imagexpress",
        "ome-tiff",
        "files",
    ]


def test_readers_pickle_with_descriptions(tmp_path):
    export = write_harmony_export(tmp_path / "h")
    desc = read_plate(export.root)
    clone = pickle.loads(pickle.dumps(desc))
    assert clone.reader == desc.reader and clone.wells == desc.wells
    assert clone.image_metadata() == desc.image_metadata()


def test_third_party_reader_runs_a_pipeline(tmp_path):
    from hcsflow.pipeline import FunctionStep, GlobalPipelineConfig, run_pipeline

    root = _csv_plate(tmp_path / "p")
    unregister = register_reader(CsvIndexReader())
    try:
        res = run_pipeline(
            [FunctionStep(func="max_projection")],
            root,
            tmp_path / "out",
            GlobalPipelineConfig(executor="inprocess"),
        )
    finally:
        unregister()
    assert res.ok, res.failed[0].traceback if res.failed else ""
    assert res.manifest["plate"]["format"] == "csv-index"
    with tifffile.TiffFile(tmp_path / "out" / "images" / "A02" / "A02_s1_w1.tif") as tif:
        assert tif.is_ome and tif.asarray().max() == 2  # the projection of sites 1 and 2
        assert 'Name="nuclei"' in tif.ome_metadata


def test_readers_layer_imports_no_pipeline_and_no_ome_types():
    import subprocess
    import sys

    code = (
        "import sys, hcsflow.readers\n"
        "from hcsflow.readers import reader_registry\n"
        "bad = [m for m in sys.modules if m.startswith(('hcsflow.pipeline', 'hcsflow.cli',"
        " 'ome_types', 'tifffile', 'zarr', 'torch', 'jax', 'tensorflow', 'cupy'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
