"""NGFF label images of z-stacks, time series, several channels and fields, whatever the
grouping: one label image per field and channel, shaped like its image, validated."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

import zarr
from hcsflow.errors import PlateLayoutError
from hcsflow.functions import count_cells
from hcsflow.pipeline import (
    FunctionStep,
    GlobalPipelineConfig,
    StepConfig,
    VFSConfig,
    materialize_labels,
    run_pipeline,
    special_outputs,
)
from hcsflow.pipeline._execute import well_registry
from hcsflow.pipeline._materialize import MaterializationFileManager
from hcsflow.pipeline._zarr_out import WellLabels
from hcsflow.storage import (
    ZarrConfig,
    open_image,
    open_plate,
    open_well,
    read_labels,
    write_labels,
    write_well,
)
from hcsflow.storage.plate import ImageCoordinates
from hcsflow.storage.zarr.validate import validate_plate
from hcsflow.testing import write_imagexpress_export

MIN_SIZE = 5
SMOOTH = FunctionStep(func="gaussian_filter", sigma=1.0)


def cfg(backend: str = "zarr", **kw: Any) -> GlobalPipelineConfig:
    kw.setdefault("executor", "inprocess")
    return GlobalPipelineConfig(vfs=VFSConfig(materialization_backend=backend), **kw)


def export(root: Path, z: int, t: int, channels: int = 2):
    return write_imagexpress_export(
        root, wells=("A01", "B02"), z_planes=z, timepoints=t, channels=channels, size=(48, 48)
    )


@pytest.fixture(scope="module")
def plates(tmp_path_factory):
    base = tmp_path_factory.mktemp("plates")
    return {
        "z": export(base / "z", 3, 1),
        "t": export(base / "t", 1, 2),
        "zt": export(base / "zt", 2, 2),
    }


def expected_labels(plane: np.ndarray) -> np.ndarray:
    """What count_cells labels one plane as (it labels every plane on its own)."""
    return np.asarray(count_cells(plane[np.newaxis], min_size=MIN_SIZE)[2][0])


def _label_names(store: str, well: str, field: int) -> list[str]:
    info = open_well(store, well)
    group = zarr.open_group(f"{store}/{well[0]}/{int(well[1:])}/{info.field_paths[field]}")
    return sorted(group["labels"].attrs["ome"]["labels"])


def check_labels(store: str, key: str = "masks", channels: tuple[int, ...] | None = None) -> int:
    """Every label image of ``store`` has its image's shape and labels its planes; returns
    the number of planes checked."""
    checked = 0
    for well in open_plate(store).wells:
        info = open_well(store, well)
        for field in range(len(info.field_paths)):
            image = np.asarray(open_image(store, well, field)[...])
            image5 = image if image.ndim == 5 else image[np.newaxis]
            n_t, n_c, n_z = image5.shape[:3]
            chans = tuple(range(n_c)) if channels is None else channels
            names = [key if n_c == 1 else f"{key}_w{c + 1}" for c in chans]
            assert _label_names(store, well, field) == sorted(names)
            for c, name in zip(chans, names, strict=True):
                lab = np.asarray(read_labels(store, well, field, name))
                assert lab.shape == (*image.shape[:-4], 1, *image.shape[-3:]), (name, lab.shape)
                lab5 = lab if lab.ndim == 5 else lab[np.newaxis]
                for t in range(n_t):
                    for z in range(n_z):
                        want = expected_labels(image5[t, c, z])
                        where = f"{well} {field} {name} t{t} z{z}"
                        np.testing.assert_array_equal(lab5[t, 0, z], want, err_msg=where)
                        checked += 1
    return checked


def validate(store: str) -> None:
    """ome-zarr-models accepts the plate, every image with its labels and every label
    image; hcsflow's own deep validation finds nothing; label scales equal the image's."""
    from ome_zarr_models.v05.hcs import HCS
    from ome_zarr_models.v05.image import Image
    from ome_zarr_models.v05.image_label import ImageLabel

    HCS.from_zarr(zarr.open_group(store, mode="r"))
    for well in open_plate(store).wells:
        info = open_well(store, well)
        for path in info.field_paths:
            group = zarr.open_group(f"{store}/{well[0]}/{int(well[1:])}/{path}", mode="r")
            image = Image.from_zarr(group)
            assert image.labels is not None
            ms = group.attrs["ome"]["multiscales"][0]
            for name in image.labels.label_paths:
                ImageLabel.from_zarr(group["labels"][name])
                lms = group["labels"][name].attrs["ome"]["multiscales"][0]
                assert [a["name"] for a in lms["axes"]] == [a["name"] for a in ms["axes"]]
                assert lms["axes"] == ms["axes"]
                assert [d["coordinateTransformations"] for d in lms["datasets"]] == [
                    d["coordinateTransformations"] for d in ms["datasets"]
                ]
    report = validate_plate(store, deep=True)
    assert report.ok and not report.warnings, report.summary()


# --------------------------------------------------------------------------- groupings

GROUPINGS = {
    "site (default)": {},
    "z-stacks": {"variable_components": ("z",)},
    "sites and timepoints": {"variable_components": ("site", "t")},
    "channels": {"variable_components": ("channel",)},
}


@pytest.mark.parametrize("grouping", list(GROUPINGS))
@pytest.mark.parametrize("shape", ["z", "t", "zt"])
def test_labels_of_every_grouping_fill_one_label_image_per_field_and_channel(
    plates, tmp_path, shape, grouping
):
    steps = [SMOOTH, FunctionStep(func="count_cells", min_size=MIN_SIZE, **GROUPINGS[grouping])]
    res = run_pipeline(steps, plates[shape].root, tmp_path / "o", cfg())
    assert res.ok, res.failed[0].traceback if res.failed else ""
    store = str(tmp_path / "o/images.zarr")
    n_z, n_t = {"z": (3, 1), "t": (1, 2), "zt": (2, 2)}[shape]
    # 2 wells x 2 fields x 2 channels, every plane of each
    assert check_labels(store) == 2 * 2 * 2 * n_z * n_t
    validate(store)
    masks = [o for o in res.wells[0].outputs if o.get("key") == "masks"]
    assert {o["path"] for o in masks} <= {
        f"images.zarr/A/1/{f}/labels/masks_w{c}" for f in (0, 1) for c in (1, 2)
    }


def test_one_channel_keeps_the_plain_name_and_validate_passes(tmp_path, capsys):
    from hcsflow.cli import main

    plate = export(tmp_path / "p", 2, 2, channels=1)
    steps = [SMOOTH, FunctionStep(func="count_cells", min_size=MIN_SIZE)]
    res = run_pipeline(steps, plate.root, tmp_path / "o", cfg())
    assert res.ok, res.failed[0].traceback if res.failed else ""
    store = str(tmp_path / "o/images.zarr")
    assert check_labels(store) == 2 * 2 * 2 * 2
    assert _label_names(store, "A01", 0) == ["masks"]
    validate(store)
    assert main(["validate", store, "--deep"]) == 0
    assert "valid OME-Zarr plate" in capsys.readouterr().out


def test_a_dict_pattern_labels_only_the_channel_it_segments(plates, tmp_path):
    step = FunctionStep(
        func={"1": ("gaussian_filter", {"sigma": 0.5}), "2": ("count_cells", {"min_size": 5})},
        group_by="channel",
    )
    res = run_pipeline([SMOOTH, step], plates["zt"].root, tmp_path / "o", cfg())
    assert res.ok, res.failed[0].traceback if res.failed else ""
    store = str(tmp_path / "o/images.zarr")
    assert check_labels(store, channels=(1,)) == 2 * 2 * 2 * 2
    validate(store)


# --------------------------------------------------------------------------- projections


@special_outputs(("masks", materialize_labels))
def project_and_count(stack):
    """A z projection that labels the projected plane: one plane and one label plane."""
    projected = stack.max(axis=0, keepdims=True)
    return projected, count_cells(projected, min_size=MIN_SIZE)[2]


def test_labels_of_a_projecting_step_fit_the_projected_image(plates, tmp_path):
    step = FunctionStep(func=project_and_count, variable_components=("z",))
    res = run_pipeline([SMOOTH, step], plates["zt"].root, tmp_path / "o", cfg())
    assert res.ok, res.failed[0].traceback if res.failed else ""
    store = str(tmp_path / "o/images.zarr")
    assert open_image(store, "A01", 0).shape == (2, 2, 1, 48, 48)
    assert read_labels(store, "A01", 0, "masks_w2").shape == (2, 1, 1, 48, 48)
    assert check_labels(store) == 2 * 2 * 2 * 2
    validate(store)


def test_labels_of_planes_a_later_step_removed_fail_loud(plates, tmp_path):
    steps = [
        FunctionStep(func="count_cells", min_size=MIN_SIZE),
        FunctionStep(func="max_projection", variable_components=("z",)),
    ]
    res = run_pipeline(steps, plates["z"].root, tmp_path / "o", cfg())
    assert not res.ok and len(res.failed) == 2
    err = res.failed[0].error
    assert res.failed[0].error_type == "MaterializationError"
    assert "z plane 2 (it has 1)" in err and "NGFF labels take their image's shape" in err
    # the same pipeline writes its labels as TIFFs when that step says so
    steps[0] = FunctionStep(
        func="count_cells",
        min_size=MIN_SIZE,
        config=StepConfig(vfs=VFSConfig(materialization_backend="disk")),
    )
    res = run_pipeline(steps, plates["z"].root, tmp_path / "o2", cfg())
    assert res.ok, res.failed[0].traceback if res.failed else ""
    assert (tmp_path / "o2/results/count_cells/A01_masks_w1_z3.tif").is_file()


# --------------------------------------------------------------------------- disk parity


def test_label_tiffs_hold_the_same_planes_as_the_ngff_labels(plates, tmp_path):
    steps = [SMOOTH, FunctionStep(func="count_cells", min_size=MIN_SIZE)]
    for backend in ("zarr", "disk"):
        res = run_pipeline(steps, plates["zt"].root, tmp_path / backend, cfg(backend))
        assert res.ok, res.failed[0].traceback if res.failed else ""
    store = str(tmp_path / "zarr/images.zarr")
    results = tmp_path / "disk/results/count_cells"
    checked = 0
    for c in (1, 2):
        lab = np.asarray(read_labels(store, "B02", 0, f"masks_w{c}"))
        lab1 = np.asarray(read_labels(store, "B02", 1, f"masks_w{c}"))
        for t in (1, 2):
            for z in (1, 2):
                # the default grouping stacks the sites: one plane per field
                tif = tifffile.imread(results / f"B02_masks_w{c}_z{z}_t{t}.tif")
                np.testing.assert_array_equal(tif[0], lab[t - 1, 0, z - 1])
                np.testing.assert_array_equal(tif[1], lab1[t - 1, 0, z - 1])
                assert tif.dtype == lab.dtype
                checked += 1
    assert checked == 8


# --------------------------------------------------------------------------- workers


@pytest.mark.parametrize("workers", [1, 2])
def test_process_workers_write_the_same_labels(plates, tmp_path, workers):
    steps = [SMOOTH, FunctionStep(func="count_cells", min_size=MIN_SIZE)]
    res = run_pipeline(
        steps, plates["zt"].root, tmp_path / "p", cfg(executor="processes", num_workers=workers)
    )
    assert res.ok, res.failed[0].traceback if res.failed else ""
    store = str(tmp_path / "p/images.zarr")
    assert check_labels(store) == 2 * 2 * 2 * 2 * 2
    validate(store)


def test_a_retried_well_ends_with_exactly_one_complete_label_image(plates, tmp_path):
    steps = [SMOOTH, FunctionStep(func="count_cells", min_size=MIN_SIZE)]
    clean, out = tmp_path / "clean", tmp_path / "o"
    assert run_pipeline(steps, plates["zt"].root, clean, cfg()).ok
    assert run_pipeline(steps, plates["zt"].root, out, cfg()).ok
    store = str(out / "images.zarr")
    # a crash of B02 while its labels were being written: no commit record, one label
    # image half replaced, a stray one from an earlier pipeline
    (out / ".hcsflow/wells/B02.json").unlink()
    shape = read_labels(store, "B02", 0, "masks_w1").shape
    write_labels(store, "B02", 0, "masks_w1", np.full(shape, 7, np.uint16), overwrite=True)
    write_labels(store, "B02", 1, "masks_w1_z1_t1", np.ones(shape, np.uint16))
    res = run_pipeline(
        steps,
        plates["zt"].root,
        out,
        cfg(executor="processes", num_workers=2),
        resume=True,
    )
    assert res.ok and res.skipped == ["A01"]
    assert _label_names(store, "B02", 1) == ["masks_w1", "masks_w2"]
    for well in ("A01", "B02"):
        for field in (0, 1):
            for c in (1, 2):
                np.testing.assert_array_equal(
                    read_labels(store, well, field, f"masks_w{c}"),
                    read_labels(str(clean / "images.zarr"), well, field, f"masks_w{c}"),
                )
    validate(store)
    record = json.loads((out / ".hcsflow/wells/B02.json").read_text())
    assert "images.zarr/B/2/1/labels/masks_w2/zarr.json" in record["files"]


def test_labels_on_object_storage_equal_the_local_ones(plates, tmp_path, s3_bucket):
    import fsspec

    url, opts = s3_bucket
    steps = [SMOOTH, FunctionStep(func="count_cells", min_size=MIN_SIZE)]
    config = cfg(executor="threads", num_workers=2)
    res = run_pipeline(steps, plates["zt"].root, f"{url}/r", config, storage_options=opts)
    assert res.ok, res.failed[0].traceback if res.failed else ""
    fs, _ = fsspec.core.url_to_fs(url, **opts)
    fs.get(f"{url}/r/", str(tmp_path / "copy"), recursive=True)
    store = str(tmp_path / "copy/images.zarr")
    assert check_labels(store) == 2 * 2 * 2 * 2 * 2
    validate(store)
    masks = [o for o in res.wells[0].outputs if o.get("key") == "masks"]
    assert masks[0]["path"] == "images.zarr/A/1/0/labels/masks_w1"


# --------------------------------------------------------------------------- direct use


def _well_image(tmp_path: Path, shape=(2, 2, 3, 16, 16)) -> str:
    store = str(tmp_path / "plate.zarr")
    write_well(store, "C03", {0: np.ones(shape, np.uint16), 1: np.ones(shape, np.uint16)})
    return store


def _fm(store: str, coords, **kw: Any) -> MaterializationFileManager:
    return MaterializationFileManager(
        well_registry(fsync=False),
        materialization_backend="zarr",
        well="C03",
        zarr_store=store,
        slice_coords=tuple(coords),
        **kw,
    )


def test_a_direct_call_writes_a_whole_label_image_with_background_elsewhere(tmp_path):
    store = _well_image(tmp_path)
    coords = [ImageCoordinates("C03", 1, 1, z, 1) for z in range(3)]
    labels = np.arange(3 * 16 * 16).reshape(3, 16, 16) % 5
    path = materialize_labels(labels, str(tmp_path / "C03_cells.pkl"), _fm(store, coords))
    assert path == f"{store}/C/3/1/labels/cells_w2"
    got = np.asarray(read_labels(store, "C03", 1, "cells_w2"))
    assert got.shape == (2, 1, 3, 16, 16) and got.dtype == np.uint16
    np.testing.assert_array_equal(got[1, 0], labels)
    assert not got[0].any()  # timepoint 1 was not labelled: background


def test_well_labels_assemble_groups_and_refuse_what_does_not_fit(tmp_path):
    store = _well_image(tmp_path)
    labels = WellLabels()
    for t in range(2):
        for z in range(3):
            # one group per plane, each a bool mask or uint32 labels
            plane = np.full((1, 16, 16), t * 3 + z + 1)
            data = plane.astype(np.uint32) if z else (plane > 0)
            coords = [ImageCoordinates("C03", 0, 0, z, t)]
            assert labels.add(store, "C03", "nuclei", data, coords, None) == [
                "C/3/0/labels/nuclei_w1"
            ]
    bad = [ImageCoordinates("C03", 0, 0, 0, 0), ImageCoordinates("C03", 0, 0, 1, 0)]
    with pytest.raises(PlateLayoutError, match="3 planes for a group of 2 images"):
        labels.add(store, "C03", "nuclei", np.zeros((3, 16, 16), np.uint8), bad, None)
    with pytest.raises(PlateLayoutError, match="twice"):
        labels.add(store, "C03", "nuclei", np.zeros((1, 16, 16), np.uint8), bad[:1], None)
    with pytest.raises(PlateLayoutError, match="z plane 4 \\(it has 1, 2, 3\\)"):
        coords = [ImageCoordinates("C03", 0, 0, 3, 0)]
        labels.add(store, "C03", "nuclei", np.zeros((1, 16, 16), np.uint8), coords, None)
    with pytest.raises(PlateLayoutError, match="planes of \\(16, 16\\) and \\(8, 8\\)"):
        coords = [ImageCoordinates("C03", 0, 1, 0, 0)]
        labels.add(store, "C03", "nuclei", np.zeros((1, 16, 16), np.uint8), coords, None)
        labels.add(store, "C03", "nuclei", np.zeros((1, 8, 8), np.uint8), bad[1:], None)
    assert labels.write() == ["C/3/0/labels/nuclei_w1", "C/3/0/labels/nuclei_w2"]
    got = np.asarray(read_labels(store, "C03", 0, "nuclei_w1"))
    assert got.dtype == np.uint32
    # the bool masks (z 1) are 1 where set
    np.testing.assert_array_equal(got[:, 0, :, 0, 0], [[1, 2, 3], [1, 5, 6]])
    # written again (a well run twice): replaced whole, not refused
    again = WellLabels()
    again.add(store, "C03", "nuclei", np.zeros((1, 16, 16), np.uint8), bad[:1], ZarrConfig())
    again.write()
    assert not np.asarray(read_labels(store, "C03", 0, "nuclei_w1")).any()


def test_image_coordinates_place_labels_by_rank(tmp_path):
    """Sites 2 and 5, channel 3 only: the image holds them at indices 0, 1 and 0."""
    store = str(tmp_path / "plate.zarr")
    fields = {f: np.ones((1, 2, 8, 8), np.uint8) for f in (0, 1)}
    write_well(store, "C03", fields)
    image = [ImageCoordinates("C03", s, 2, z) for s in (1, 4) for z in (0, 1)]
    coords = [ImageCoordinates("C03", 4, 2, z) for z in (0, 1)]
    fm = _fm(store, coords, image_coords=tuple(image), special_output="cells")
    labels = np.stack([np.full((8, 8), 1), np.full((8, 8), 2)])
    path = materialize_labels(labels, str(tmp_path / "C03_cells_w3.pkl"), fm)
    assert path.endswith("C/3/1/labels/cells")
    got = np.asarray(read_labels(store, "C03", 1, "cells"))
    np.testing.assert_array_equal(got[0, :, 0, 0], [1, 2])
