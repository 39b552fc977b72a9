"""OME-Zarr plates: round trips, layouts, configs, chunk-sized reads and bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from hcsflow.errors import (
    AlreadyExistsError,
    BatchError,
    ConfigurationError,
    CorruptDataError,
    NotFoundError,
    PathEscapeError,
    PlateLayoutError,
    PlateMetadataError,
)
from hcsflow.storage import (
    Backend,
    BackendRegistry,
    FileManager,
    ZarrConfig,
    ZarrStorageBackend,
    finalize_plate,
    list_wells,
    open_image,
    open_plate,
    open_well,
    read_labels,
    read_well,
    write_labels,
    write_well,
)
from hcsflow.storage.plate import ImageCoordinates


def _field(seed: int, shape=(2, 3, 32, 40), dtype=np.uint16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4000, shape).astype(dtype)


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_well_round_trip_and_metadata(tmp_path, version) -> None:
    url = str(tmp_path / "p.zarr")
    cfg = ZarrConfig(ngff_version=version, pyramid_levels=3)
    f0, f1 = _field(0), _field(1)
    info = write_well(url, "B03", {0: f0, 1: f1}, cfg)
    assert info.field_paths == ("0", "1") and info.axes == ("c", "z", "y", "x")
    write_well(url, "A1", f0, cfg)
    np.testing.assert_array_equal(read_well(url, "B3", 1), f1)
    np.testing.assert_array_equal(read_well(url, "A01"), f0)
    level2 = read_well(url, "A01", 0, level=2)
    assert level2.shape == (2, 3, 8, 10)
    plate = open_plate(url)
    assert plate.ngff_version == version and plate.wells == ("A01", "B03")
    assert plate.well_paths == ("A/1", "B/3") and plate.field_count == 2
    # a 96-well plate is assumed; rowIndex/columnIndex are positions on it
    assert len(plate.rows) == 8 and len(plate.columns) == 12
    assert list_wells(url) == ["A01", "B03"]
    meta_key = "zarr.json" if version == "0.5" else ".zattrs"
    doc = json.loads((tmp_path / "p.zarr" / meta_key).read_text())
    block = doc["attributes"]["ome"] if version == "0.5" else doc
    wells = block["plate"]["wells"]
    assert {"path": "B/3", "rowIndex": 1, "columnIndex": 2} in wells
    if version == "0.5":
        arr_doc = json.loads((tmp_path / "p.zarr/B/3/0/0/zarr.json").read_text())
        assert arr_doc["dimension_names"] == ["c", "z", "y", "x"]


def test_time_axis_and_1536_well_plate(tmp_path) -> None:
    url = str(tmp_path / "t.zarr")
    data = _field(3, shape=(2, 1, 2, 16, 16))
    write_well(url, "AF48", data)
    assert open_well(url, "AF48").axes == ("t", "c", "z", "y", "x")
    np.testing.assert_array_equal(read_well(url, "AF48"), data)
    plate = open_plate(url)
    assert len(plate.rows) == 32 and plate.rows[-1] == "AF" and len(plate.columns) == 48
    doc = json.loads((tmp_path / "t.zarr/zarr.json").read_text())
    assert doc["attributes"]["ome"]["plate"]["wells"] == [
        {"path": "AF/48", "rowIndex": 31, "columnIndex": 47}
    ]


def test_overwrite_replaces_whole_well_and_refuses_without_flag(tmp_path) -> None:
    url = str(tmp_path / "p.zarr")
    write_well(url, "C05", {0: _field(0), 1: _field(1)})
    with pytest.raises(AlreadyExistsError, match="C/5"):
        write_well(url, "C05", _field(2))
    np.testing.assert_array_equal(read_well(url, "C05", 1), _field(1))
    info = write_well(url, "C05", _field(2), overwrite=True)
    assert len(info.field_paths) == 1
    np.testing.assert_array_equal(read_well(url, "C05"), _field(2))
    # the replaced version's field groups are gone
    assert sorted(os.listdir(tmp_path / "p.zarr/C/5")) == sorted(["zarr.json", *info.field_paths])
    assert open_plate(url).field_count == 1


def test_labels(tmp_path) -> None:
    url = str(tmp_path / "p.zarr")
    img = _field(0)
    write_well(url, "A01", img, ZarrConfig(pyramid_levels=2))
    lab = (img[0] > 2000).astype(np.uint32)
    key = write_labels(url, "A01", 0, "cells", lab)
    assert key == "A/1/0/labels/cells"
    np.testing.assert_array_equal(read_labels(url, "A01", 0, "cells")[0], lab)
    assert read_labels(url, "A01", 0, "cells", level=1).shape == (1, 3, 16, 20)
    write_labels(url, "A01", 0, "nuclei", lab[np.newaxis])  # full rank, channel 1
    labels_doc = json.loads((tmp_path / "p.zarr/A/1/0/labels/zarr.json").read_text())
    assert labels_doc["attributes"]["ome"]["labels"] == ["cells", "nuclei"]
    with pytest.raises(AlreadyExistsError):
        write_labels(url, "A01", 0, "cells", lab)
    with pytest.raises(PlateLayoutError, match="integer"):
        write_labels(url, "A01", 0, "f", lab.astype(np.float32), overwrite=True)
    with pytest.raises(PlateLayoutError, match="do not fit"):
        write_labels(url, "A01", 0, "g", lab[:, :5])
    with pytest.raises(PlateLayoutError, match="label name"):
        write_labels(url, "A01", 0, "../x", lab)


@pytest.mark.parametrize(
    "config",
    [
        ZarrConfig(compressor="lz4"),
        ZarrConfig(compressor="blosc-zstd", level=5),
        ZarrConfig(compressor="blosc-lz4"),
        ZarrConfig(compressor="zlib", level=3, chunks="well"),
        ZarrConfig(compressor="none", chunks=(16, 16)),
        ZarrConfig(shards="field"),
        ZarrConfig(chunks=(1, 1, 8, 8), shards=(1, 3, 32, 40)),
        ZarrConfig(compressor="zlib", ngff_version="0.4"),
    ],
)
def test_configs_round_trip(tmp_path, config) -> None:
    url = str(tmp_path / "p.zarr")
    data = _field(5)
    write_well(url, "A01", data, config)
    np.testing.assert_array_equal(read_well(url, "A01"), data)
    arr = open_image(url, "A01")
    assert arr.chunks == config.chunk_shape(data.shape) or config.shards is not None
    if config.shards is not None:
        meta = json.loads((tmp_path / "p.zarr/A/1/0/0/zarr.json").read_text())
        assert meta["codecs"][0]["name"] == "sharding_indexed"


def test_config_validation() -> None:
    with pytest.raises(ConfigurationError):
        ZarrConfig(compressor="brotli")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        ZarrConfig(level=12)
    with pytest.raises(ConfigurationError):
        ZarrConfig(chunks=(0, 4))
    with pytest.raises(ConfigurationError):
        ZarrConfig(shards="field", ngff_version="0.4")
    with pytest.raises(ConfigurationError):
        ZarrConfig(pyramid_levels=0)
    with pytest.raises(ConfigurationError):
        ZarrConfig(plate_format=100)
    assert ZarrConfig().effective_level == 1
    assert ZarrConfig(chunks="plane").chunk_shape((2, 3, 10, 12)) == (1, 1, 10, 12)
    assert ZarrConfig(chunks=(4, 4)).chunk_shape((2, 3, 10, 12)) == (1, 1, 4, 4)


def test_plate_format_is_enforced(tmp_path) -> None:
    url = str(tmp_path / "p.zarr")
    with pytest.raises(PlateLayoutError, match="96-well"):
        write_well(url, "I01", _field(0), ZarrConfig(plate_format=96))
    write_well(url, "H12", _field(0), ZarrConfig(plate_format=96))
    with pytest.raises(PlateLayoutError, match="96-well"):
        write_well(url, "P24", _field(0))  # the plate remembers its format
    assert open_plate(url).wells == ("H12",)


# --------------------------------------------------------------------------- VFS plate mode


class _Layout:
    """A tiny PlateLayout: ``<well>_f<field>_c<channel>_z<z>[_t<t>].tif``."""

    def parse(self, path: str) -> ImageCoordinates:
        parts = os.path.basename(path)[: -len(".tif")].split("_")
        well = parts[0]
        vals = {p[0]: int(p[1:]) for p in parts[1:]}
        return ImageCoordinates(well, vals["f"], vals["c"], vals["z"], vals.get("t", 0))


def _well_paths(root: str, well: str, f=2, c=2, z=3, t=1) -> list[str]:
    return [
        f"{root}/{well}_f{fi}_c{ci}_z{zi}" + (f"_t{ti}" if t > 1 else "") + ".tif"
        for ti in range(t)
        for fi in range(f)
        for ci in range(c)
        for zi in range(z)
    ]


@pytest.fixture
def fm(tmp_path) -> FileManager:
    reg = BackendRegistry({Backend.ZARR.value: ZarrStorageBackend(tmp_path)})
    return FileManager(reg)


def test_save_batch_writes_a_plate_and_load_batch_reads_it(fm, tmp_path) -> None:
    paths = _well_paths("/out/plate.zarr", "B02")
    imgs = [
        np.full((16, 20), i, np.uint16) + np.arange(20, dtype=np.uint16) for i in range(len(paths))
    ]
    fm.save_batch(
        imgs, paths, Backend.ZARR, chunk_name="well_B02", zarr_config=ZarrConfig(), layout=_Layout()
    )
    back = fm.load_batch(paths, Backend.ZARR)
    for a, b in zip(imgs, back, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fm.load(paths[4], Backend.ZARR), imgs[4])
    plate = str(tmp_path / "out/plate.zarr")
    assert open_plate(plate).wells == ("B02",)
    # field 1, channel 0, z 2 is the 9th image
    np.testing.assert_array_equal(read_well(plate, "B02", 1)[0, 2], imgs[8])
    assert fm.is_file(paths[0], Backend.ZARR)
    listed = fm.list_files("/out/plate.zarr", Backend.ZARR, extensions=[".tif"])
    assert listed == sorted(paths, key=lambda p: p)  # names sort naturally here
    # a time series becomes (t, c, z, y, x)
    tpaths = _well_paths("/out/plate.zarr", "C01", f=1, c=1, z=2, t=2)
    fm.save_batch(
        [np.full((4, 4), i, np.uint8) for i in range(4)],
        tpaths,
        Backend.ZARR,
        chunk_name="C01",
        layout=_Layout(),
    )
    assert open_well(plate, "C01").axes == ("t", "c", "z", "y", "x")
    assert fm.load_batch(tpaths, Backend.ZARR)[3][0, 0] == 3
    with pytest.raises(AlreadyExistsError):
        fm.save_batch(
            [np.zeros((4, 4), np.uint8)] * 4,
            tpaths,
            Backend.ZARR,
            chunk_name="C01",
            layout=_Layout(),
        )
    fm.save_batch(
        [np.full((4, 4), 9, np.uint8)] * 4,
        tpaths,
        Backend.ZARR,
        chunk_name="C01",
        layout=_Layout(),
        overwrite=True,
    )
    assert fm.load(tpaths[0], Backend.ZARR)[0, 0] == 9


def test_plate_mode_accepts_a_mapping_layout(fm) -> None:
    paths = ["/p.zarr/a.tif", "/p.zarr/b.tif"]
    layout = {
        paths[0]: ImageCoordinates("A1", channel=0),
        paths[1]: ImageCoordinates("A1", channel=1),
    }
    fm.save_batch([np.ones((3, 3)), np.zeros((3, 3))], paths, Backend.ZARR, layout=layout)
    assert fm.load(paths[1], Backend.ZARR).sum() == 0


def test_load_batch_decodes_each_chunk_once(fm, tmp_path, monkeypatch) -> None:
    from zarr.codecs import BloscCodec

    paths = _well_paths("/p.zarr", "A01", f=1, c=2, z=4)
    imgs = [np.full((8, 8), i, np.uint16) for i in range(len(paths))]
    fm.save_batch(
        imgs,
        paths,
        Backend.ZARR,
        chunk_name="A01",
        layout=_Layout(),
        zarr_config=ZarrConfig(chunks="well"),
    )
    calls = []
    original = BloscCodec._decode_single

    async def counting(self, data, spec):
        calls.append(1)
        return await original(self, data, spec)

    monkeypatch.setattr(BloscCodec, "_decode_single", counting)
    back = fm.load_batch(paths, Backend.ZARR)
    assert len(calls) == 1  # one chunk holds the whole field: decoded once, not 8 times
    for a, b in zip(imgs, back, strict=True):
        np.testing.assert_array_equal(a, b)


def test_one_plane_reads_only_its_chunk(tmp_path) -> None:
    url = str(tmp_path / "p.zarr")
    data = _field(0, shape=(1, 6, 16, 16))
    write_well(url, "A01", data)
    chunk_dir = tmp_path / "p.zarr/A/1/0/0/c/0"
    # corrupt every chunk except z=3: reading z=3 must not touch them
    for z in range(6):
        if z != 3:
            (chunk_dir / str(z) / "0" / "0").write_bytes(b"garbage")
    arr = open_image(url, "A01")
    np.testing.assert_array_equal(arr[0, 3], data[0, 3])
    # listing the plate reads no array data at all
    assert list_wells(url) == ["A01"] and open_well(url, "A01").shape == (1, 6, 16, 16)
    with pytest.raises(CorruptDataError, match=r"A/1/0/0/c/0/0/0/0") as info:
        read_well(url, "A01")
    assert url in str(info.value)


# --------------------------------------------------------------------------- bad input


def test_bad_plate_input_is_refused_before_writing(fm, tmp_path) -> None:
    good = _well_paths("/p.zarr", "A01", f=1, c=1, z=2)
    fm.save_batch([np.ones((4, 4))] * 2, good, Backend.ZARR, chunk_name="A01", layout=_Layout())
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    # mixed shapes
    paths = _well_paths("/p.zarr", "B01", f=1, c=1, z=2)
    with pytest.raises(PlateLayoutError, match="mixed shapes"):
        fm.save_batch(
            [np.ones((4, 4)), np.ones((4, 5))],
            paths,
            Backend.ZARR,
            chunk_name="B01",
            layout=_Layout(),
        )
    # colliding coordinates
    with pytest.raises(PlateLayoutError, match="collide"):
        fm.save_batch(
            [np.ones((4, 4))] * 2,
            paths,
            Backend.ZARR,
            chunk_name="B01",
            layout={p: ImageCoordinates("B01") for p in paths},
        )
    # holes
    with pytest.raises(PlateLayoutError, match="holes"):
        fm.save_batch(
            [np.ones((4, 4))],
            ["/p.zarr/B01_f0_c1_z0.tif"],
            Backend.ZARR,
            chunk_name="B01",
            layout=_Layout(),
        )
    # chunk_name that is not a plate position, and one that disagrees with the layout
    with pytest.raises(PlateLayoutError, match="plate position"):
        fm.save_batch(
            [np.ones((4, 4))] * 2, paths, Backend.ZARR, chunk_name="well_Q99", layout=_Layout()
        )
    with pytest.raises(PlateLayoutError, match="chunk_name names well C01"):
        fm.save_batch(
            [np.ones((4, 4))] * 2, paths, Backend.ZARR, chunk_name="C01", layout=_Layout()
        )
    # a layout is required
    with pytest.raises(PlateLayoutError, match="layout"):
        fm.save_batch([np.ones((4, 4))] * 2, paths, Backend.ZARR, chunk_name="B01")
    # a path outside the store's root
    with pytest.raises(PathEscapeError):
        fm.save_batch(
            [np.ones((4, 4))],
            ["/../escape.zarr/x.tif"],
            Backend.ZARR,
            chunk_name="B01",
            layout=_Layout(),
        )
    after = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert after == before
    for p in good:
        assert fm.load(p, Backend.ZARR).shape == (4, 4)


def test_direct_api_bad_input(tmp_path) -> None:
    url = str(tmp_path / "p.zarr")
    with pytest.raises(PlateLayoutError, match="not a plate position") as info:
        write_well(url, "Z99", _field(0))
    assert url in str(info.value)
    with pytest.raises(PlateLayoutError, match="mixed shapes"):
        write_well(url, "A01", {0: _field(0), 1: _field(0, shape=(2, 3, 8, 8))})
    with pytest.raises(PlateLayoutError, match="without holes"):
        write_well(url, "A01", {0: _field(0), 2: _field(0)})
    with pytest.raises(PlateLayoutError, match="dimensions"):
        write_well(url, "A01", np.zeros((4, 4)))
    assert not os.path.exists(url)
    with pytest.raises(NotFoundError):
        read_well(url, "A01")


def test_malformed_metadata_is_a_typed_error(tmp_path) -> None:
    url = str(tmp_path / "p.zarr")
    write_well(url, "A01", _field(0))
    (tmp_path / "p.zarr/zarr.json").write_text("{not json")
    with pytest.raises(PlateMetadataError, match="zarr.json"):
        open_plate(url)
    (tmp_path / "p.zarr/zarr.json").write_text(
        json.dumps(
            {
                "zarr_format": 3,
                "node_type": "group",
                "attributes": {
                    "ome": {
                        "version": "0.5",
                        "plate": {
                            "rows": [{"name": "A"}],
                            "columns": [],
                            "wells": [{"path": "A/1", "rowIndex": 0, "columnIndex": 0}],
                        },
                    }
                },
            }
        )
    )
    with pytest.raises(PlateMetadataError, match="malformed plate metadata"):
        open_plate(url)
    (tmp_path / "p.zarr/A/1/zarr.json").write_text(
        json.dumps(
            {
                "zarr_format": 3,
                "node_type": "group",
                "attributes": {"ome": {"version": "0.5", "well": {"images": "0"}}},
            }
        )
    )
    with pytest.raises(PlateMetadataError, match="A/1"):
        read_well(url, "A01")
    # the well's data is still there: repairing the metadata makes it readable again
    (tmp_path / "p.zarr/A/1/zarr.json").write_text(
        json.dumps(
            {
                "zarr_format": 3,
                "node_type": "group",
                "attributes": {"ome": {"version": "0.5", "well": {"images": [{"path": "0"}]}}},
            }
        )
    )
    np.testing.assert_array_equal(read_well(url, "A01"), _field(0))


def test_load_batch_names_a_corrupt_plate_image(fm, tmp_path) -> None:
    paths = _well_paths("/p.zarr", "A01", f=1, c=1, z=2)
    fm.save_batch(
        [np.ones((4, 4), np.uint16)] * 2, paths, Backend.ZARR, chunk_name="A01", layout=_Layout()
    )
    (tmp_path / "p.zarr/A/1/0/0/c/0/1/0/0").write_bytes(b"xx")
    with pytest.raises(BatchError) as info:
        fm.load_batch(paths, Backend.ZARR)
    assert isinstance(info.value.__cause__, CorruptDataError)
    assert "c/0/1/0/0" in str(info.value.__cause__)


def test_finalize_plate_rebuilds_from_well_groups(tmp_path) -> None:
    url = str(tmp_path / "p.zarr")
    write_well(url, "A01", _field(0))
    write_well(url, "D07", _field(1), update_plate=False)
    assert open_plate(url).wells == ("A01",)  # D07 published but not yet in the plate
    info = finalize_plate(url, name="screen-1", plate_format=384)
    assert info.wells == ("A01", "D07") and info.name == "screen-1"
    assert len(info.rows) == 16 and len(info.columns) == 24
    with pytest.raises(NotFoundError):
        finalize_plate(str(tmp_path / "none.zarr"))


def test_paths_outside_a_dot_zarr_use_their_directory_as_the_plate(fm, tmp_path) -> None:
    # the specification's example: output paths without a *.zarr segment
    paths = ["/zarr/output_001", "/zarr/output_002", "/zarr/output_003"]
    layout = {p: ImageCoordinates("A01", z=i) for i, p in enumerate(paths)}
    arrays = [np.full((6, 6), i, np.float32) for i in range(3)]
    fm.save_batch(
        arrays, paths, Backend.ZARR, chunk_name="well_A01", zarr_config=ZarrConfig(), layout=layout
    )
    assert open_plate(str(tmp_path / "zarr")).wells == ("A01",)
    assert open_well(str(tmp_path / "zarr"), "A01").shape == (1, 3, 6, 6)
    for a, b in zip(arrays, fm.load_batch(paths, Backend.ZARR), strict=True):
        np.testing.assert_array_equal(a, b)
