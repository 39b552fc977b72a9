"""End-to-end runs: executors, materialization on disk and zarr, special I/O, bad input."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from hcsflow.errors import CompilationError, RunDirectoryError, StepExecutionError
from hcsflow.pipeline import (
    FunctionStep,
    GlobalPipelineConfig,
    InProcessExecutor,
    PipelineConfig,
    StepConfig,
    StepMaterializationConfig,
    VFSConfig,
    materialize_positions,
    materialize_table,
    run_pipeline,
    special_inputs,
    special_outputs,
)
from hcsflow.testing import make_plate

COUNTING = [
    FunctionStep(func="gaussian_filter", sigma=1.0),
    FunctionStep(func="count_cells", min_size=20),
    FunctionStep(func="measure_objects"),
]


def cfg(**kw):
    kw.setdefault("executor", "inprocess")
    return GlobalPipelineConfig(**kw)


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    root = tmp_path_factory.mktemp("plate")
    return make_plate(
        root / "plate", 3, sites=2, size=128, min_cells=5, max_cells=15, radius=5, seed=3
    )


def counted(out: Path) -> dict[str, int]:
    df = pd.read_csv(out / "cell_counts.csv")
    return {str(w): int(n) for w, n in df.groupby("well")["cell_count"].sum().items()}


def test_disk_run_counts_cells_and_writes_manifest(plate, tmp_path):
    out = tmp_path / "out"
    res = run_pipeline(COUNTING, plate.root, out, cfg())
    assert res.ok and [w.well for w in res.wells] == ["A01", "A02", "A03"]
    assert counted(out) == plate.true_counts
    assert sorted(p.name for p in (out / "images" / "A01").iterdir()) == [
        "A01_s1_w1.tif",
        "A01_s2_w1.tif",
    ]
    assert tifffile.imread(out / "images/A01/A01_s1_w1.tif").dtype == np.float32
    masks = tifffile.imread(out / "results/count_cells/A01_masks.tif")
    assert masks.shape == (2, 128, 128) and masks.max() > 0
    summary = json.loads((out / "results/count_cells/A01_cell_counts.json").read_text())
    assert summary["rows"] == 2
    assert summary["numeric"]["cell_count"]["sum"] == plate.true_counts["A01"]
    per_object = pd.read_csv(out / "object_measurements.csv")
    assert len(per_object) == sum(plate.true_counts.values())
    assert {"well", "site", "label", "intensity_mean"} <= set(per_object.columns)
    m = json.loads((out / "manifest.json").read_text())
    assert m["summary"]["wells_ok"] == 3 and m["summary"]["wells_failed"] == 0
    assert m["config"]["vfs"]["materialization_backend"] == "disk"
    assert m["pipeline"][0]["functions"]["None"][0]["implementation"].startswith("numpy")
    assert m["wells"]["A01"]["conversion_bytes"] >= 0
    assert "numpy" in m["versions"]
    for rel, meta in m["files"].items():
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == meta["sha256"]
    masks = [o for o in m["wells"]["A02"]["outputs"] if o.get("key") == "masks"][0]
    assert masks["path"] == "results/count_cells/A02_masks.tif"
    assert masks["sha256"] == m["files"][masks["path"]]["sha256"]
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging left


def test_threads_and_processes_agree_with_inprocess(plate, tmp_path):
    a = run_pipeline(COUNTING, plate.root, tmp_path / "a", cfg(executor="threads", num_workers=2))
    b = run_pipeline(COUNTING, plate.root, tmp_path / "b", cfg(executor="processes", num_workers=2))
    assert a.ok and b.ok
    assert counted(tmp_path / "a") == counted(tmp_path / "b") == plate.true_counts
    assert a.manifest["executor"] == {"kind": "threads", "workers": 2, "start_method": None}
    method = "forkserver" if sys.platform != "win32" else "spawn"
    assert b.manifest["executor"] == {"kind": "processes", "workers": 2, "start_method": method}
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["executor"]["workers"] == 2
    for name in ("A01/A01_s1_w1.tif", "A03/A03_s2_w1.tif"):
        np.testing.assert_array_equal(
            tifffile.imread(tmp_path / "a/images" / name),
            tifffile.imread(tmp_path / "b/images" / name),
        )


def test_zarr_materialization_writes_plate_and_labels(plate, tmp_path):
    from hcsflow.storage import open_image, open_plate, read_labels

    out = tmp_path / "z"
    res = run_pipeline(
        COUNTING, plate.root, out, cfg(vfs=VFSConfig(materialization_backend="zarr"))
    )
    assert res.ok
    info = open_plate(str(out / "images.zarr"))
    assert info.wells == ("A01", "A02", "A03") and info.field_count == 2
    arr = open_image(str(out / "images.zarr"), "A02", 1)
    assert arr.shape == (1, 1, 128, 128)
    labels = np.asarray(read_labels(str(out / "images.zarr"), "A02", 1, "masks"))
    assert labels.max() == plate.site_counts["A02"][1]
    assert counted(out) == plate.true_counts


def test_special_io_across_steps_and_positions(plate, tmp_path):
    @special_outputs("centres", ("positions", materialize_positions))
    def find_centres(stack):
        from scipy import ndimage as ndi

        pts = [
            np.array(ndi.center_of_mass(p > p.mean(), ndi.label(p > p.mean())[0], range(1, 3)))
            for p in stack
        ]
        return stack, pts, pts

    seen = {}

    @special_inputs("centres")
    @special_outputs(("n_centres", materialize_table))
    def use_centres(stack, centres):
        seen["n"] = len(centres)
        return stack, pd.DataFrame(
            {"slice_index": range(len(centres)), "n": [len(c) for c in centres]}
        )

    out = tmp_path / "s"
    res = run_pipeline(
        [FunctionStep(func=find_centres), FunctionStep(func=use_centres)], plate.root, out, cfg()
    )
    assert res.ok, res.failed[0].traceback if res.failed else ""
    assert seen["n"] == 2
    pos = pd.read_csv(out / "results/find_centres/A01_positions_positions.csv")
    assert list(pos.columns) == ["y", "x", "slice_index"] and len(pos) == 4
    plate_table = pd.read_csv(out / "n_centres.csv")
    assert list(plate_table["well"]) == ["A01", "A01", "A02", "A02", "A03", "A03"]


def test_dict_pattern_per_channel_and_chains(tmp_path):
    root = tmp_path / "p"
    root.mkdir()
    for c, value in ((1, 10), (2, 20)):
        for s in (1, 2):
            tifffile.imwrite(root / f"A01_s{s}_w{c}.tif", np.full((8, 8), value, np.uint16))

    def add(stack, n):
        return stack + n

    def times(stack, k):
        return stack * k

    step = FunctionStep(
        func={"1": (add, {"n": 1}), "2": [(times, {"k": 2}), (add, {"n": 5})]}, group_by="channel"
    )
    out = tmp_path / "o"
    res = run_pipeline([step, FunctionStep(func="max_projection")], str(root), out, cfg())
    assert res.ok, res.failed[0].traceback if res.failed else ""
    files = sorted(p.name for p in (out / "images/A01").iterdir())
    assert files == ["A01_s1_w1.tif", "A01_s1_w2.tif"]  # sites projected away
    assert tifffile.imread(out / "images/A01/A01_s1_w1.tif").max() == 11
    assert tifffile.imread(out / "images/A01/A01_s1_w2.tif").max() == 45


def test_checkpoint_with_well_filter_and_step_level_config(plate, tmp_path):
    steps = [
        FunctionStep(
            func="gaussian_filter",
            sigma=1.0,
            materialization_config=StepMaterializationConfig(enabled=True, well_filter=("A02",)),
        ),
        FunctionStep(
            func="threshold_otsu",
            config=StepConfig(
                materialization=StepMaterializationConfig(
                    enabled=True, sub_dir="masks", backend="zarr"
                )
            ),
        ),
    ]
    out = tmp_path / "c"
    res = run_pipeline(
        steps, plate.root, out, cfg(), pipeline_config=PipelineConfig(well_filter=("A01", "A02"))
    )
    assert res.ok
    assert [p.name for p in (out / "checkpoints/gaussian_filter").iterdir()] == ["A02"]
    from hcsflow.storage import open_plate

    assert open_plate(str(out / "masks.zarr")).wells == ("A01", "A02")
    assert tifffile.imread(out / "images/A01/A01_s1_w1.tif").dtype == np.uint8  # mask


# --------------------------------------------------------------------------- bad input


def _boom(stack):
    if stack.mean() > 0:
        raise RuntimeError("detector saturated")
    return stack


@special_outputs("a", "b")
def _too_few(stack):
    return stack, 1


def _nan(stack):
    return np.full(stack.shape, np.nan, np.float32)


def _flat(stack):
    return stack[0]


def _bad_mat(data, path, fm):
    raise OSError("disk full")


@special_outputs(("t", _bad_mat))
def _with_bad_mat(stack):
    return stack, [{"x": 1}]


@pytest.mark.parametrize(
    ("func", "error_type", "text"),
    [
        (_boom, "StepExecutionError", "detector saturated"),
        (_too_few, "SpecialIOError", "must return (main_output, a, b), got a tuple of 2"),
        (_nan, "StepExecutionError", "NaN"),
        (_flat, "SpecialIOError", "3-D [Z, Y, X] main output"),
        (_with_bad_mat, "MaterializationError", "disk full"),
    ],
)
def test_failing_wells_are_reported_not_dropped(plate, tmp_path, func, error_type, text):
    res = run_pipeline([FunctionStep(func=func)], plate.root, tmp_path / "o", cfg())
    assert len(res.failed) == 3
    w = res.failed[0]
    assert w.error_type == error_type and text in w.error
    assert "step 0" in w.error and func.__name__ in w.error
    m = json.loads((tmp_path / "o/manifest.json").read_text())
    assert m["wells"]["A01"]["status"] == "failed" and "Traceback" in m["wells"]["A01"]["traceback"]


def test_one_failing_well_does_not_stop_the_others(tmp_path):
    root = tmp_path / "p"
    root.mkdir()
    for w, v in (("A01", 0), ("A02", 5), ("A03", 0)):
        tifffile.imwrite(root / f"{w}_s1_w1.tif", np.full((8, 8), v, np.uint16))
    res = run_pipeline(
        [FunctionStep(func=_boom)],
        str(root),
        tmp_path / "o",
        cfg(executor="threads", num_workers=2),
    )
    assert [w.status for w in res.wells] == ["ok", "failed", "ok"]
    assert (tmp_path / "o/images/A01/A01_s1_w1.tif").is_file()
    assert not (tmp_path / "o/images/A02").exists()


def test_mixed_image_sizes_fail_the_well(tmp_path):
    root = tmp_path / "p"
    root.mkdir()
    tifffile.imwrite(root / "A01_s1_w1.tif", np.zeros((8, 8), np.uint16))
    tifffile.imwrite(root / "A01_s2_w1.tif", np.zeros((9, 8), np.uint16))
    tifffile.imwrite(root / "A02_s1_w1.tif", np.zeros((8, 8), np.uint16))
    tifffile.imwrite(root / "A02_s2_w1.tif", np.zeros((8, 8), np.uint16))
    res = run_pipeline([FunctionStep(func="max_projection")], str(root), tmp_path / "o", cfg())
    assert [w.status for w in res.wells] == ["failed", "ok"]
    assert "mixed image sizes" in res.wells[0].error


def test_previous_run_is_refused_kept_and_replaced_on_overwrite(plate, tmp_path):
    out = tmp_path / "o"
    run_pipeline([FunctionStep(func="max_projection")], plate.root, out, cfg())
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(RunDirectoryError, match="previous run"):
        run_pipeline([FunctionStep(func="max_projection")], plate.root, out, cfg())
    assert (out / "manifest.json").read_bytes() == before
    # a pipeline that does not compile leaves the previous run untouched
    with pytest.raises(CompilationError):
        run_pipeline([FunctionStep(func="nope")], plate.root, out, cfg(), overwrite=True)
    assert (out / "manifest.json").read_bytes() == before
    # overwrite replaces the run as soon as the new one starts: a fail-fast stop leaves
    # the new, interrupted run (no manifest), which the next run reports
    with pytest.raises(StepExecutionError, match="fail_fast"):
        run_pipeline(
            [FunctionStep(func=_boom)], plate.root, out, cfg(fail_fast=True), overwrite=True
        )
    assert not (out / "manifest.json").exists()
    with pytest.raises(RunDirectoryError, match=r"interrupted run \(0 of 3 wells committed\)"):
        run_pipeline([FunctionStep(func=_boom)], plate.root, out, cfg())
    res = run_pipeline(
        [FunctionStep(func="mean_projection")], plate.root, out, cfg(), overwrite=True
    )
    assert res.ok and (out / "manifest.json").read_bytes() != before
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_foreign_directory_is_never_replaced(plate, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.docx").write_text("precious")
    with pytest.raises(RunDirectoryError, match="holds no hcsflow run"):
        run_pipeline([FunctionStep(func="max_projection")], plate.root, out, cfg(), overwrite=True)
    assert (out / "thesis.docx").read_text() == "precious"


def test_custom_executor_instance(plate, tmp_path):
    res = run_pipeline(
        [FunctionStep(func="max_projection")],
        plate.root,
        tmp_path / "o",
        cfg(),
        executor=InProcessExecutor(),
    )
    assert res.ok


def test_dask_executor(plate, tmp_path):
    pytest.importorskip("distributed")
    res = run_pipeline(COUNTING, plate.root, tmp_path / "d", cfg(executor="dask", num_workers=2))
    assert res.ok and counted(tmp_path / "d") == plate.true_counts


# --------------------------------------------------------------------------- more inputs


def test_ome_zarr_plate_as_input(tmp_path):
    from hcsflow.pipeline import read_plate
    from hcsflow.storage import ZarrConfig, finalize_plate, write_well

    store = str(tmp_path / "in.zarr")
    for i, well in enumerate(("A01", "B03")):
        fields = {f: np.full((2, 3, 8, 8), 10 * i + f, np.uint16) for f in range(2)}
        for f in fields:
            fields[f][1] += 100  # channel 2 brighter
        write_well(store, well, fields, ZarrConfig())
    finalize_plate(store)
    plate = read_plate(store)
    assert plate.layout == "ome-zarr" and list(plate.wells) == ["A01", "B03"]
    assert (len(plate.sites), len(plate.channels), len(plate.zs)) == (2, 2, 3)
    step = FunctionStep(func="max_projection", variable_components=("z",))
    out = tmp_path / "o"
    res = run_pipeline([step], store, out, cfg())
    assert res.ok, res.failed[0].traceback if res.failed else ""
    img = tifffile.imread(out / "images/B03/B03_s2_w2_z001.tif")
    assert img.shape == (8, 8) and img.max() == 10 + 1 + 100


def test_opera_phenix_z_stack_in_3d(tmp_path):
    root = tmp_path / "phenix"
    root.mkdir()
    for z in range(1, 4):
        plane = np.zeros((16, 16), np.float32)
        plane[8, 8] = 100.0 if z == 2 else 0.0
        tifffile.imwrite(root / f"r01c02f01p{z:02d}-ch1sk1fk1fl1.tiff", plane)
    flat = FunctionStep(func="gaussian_filter", sigma=1.0, variable_components=("z",))
    deep = FunctionStep(
        func="gaussian_filter", sigma=1.0, variable_components=("z",), slice_by_slice=False
    )
    a = run_pipeline([flat], str(root), tmp_path / "a", cfg())
    b = run_pipeline([deep], str(root), tmp_path / "b", cfg())
    assert a.ok and b.ok
    assert tifffile.imread(tmp_path / "a/images/A02/A02_s1_w1_z001.tif").max() == 0
    assert tifffile.imread(tmp_path / "b/images/A02/A02_s1_w1_z001.tif").max() > 0


def test_fsync_switch_reaches_the_disk_backend(plate, tmp_path):
    from hcsflow.pipeline import compile_pipeline
    from hcsflow.pipeline._execute import well_registry

    plan = compile_pipeline(
        [FunctionStep(func="max_projection")],
        plate.root,
        str(tmp_path / "o"),
        cfg(vfs=VFSConfig(fsync=False)),
    )
    assert plan.wells[0].fsync is False
    assert well_registry(fsync=False).get("disk").fsync is False
    assert (
        compile_pipeline(
            [FunctionStep(func="max_projection")], plate.root, str(tmp_path / "o"), cfg()
        )
        .wells[0]
        .fsync
        is True
    )


def test_implementation_preference_runs_torch_and_is_recorded(plate, tmp_path):
    pytest.importorskip("torch")
    from hcsflow.pipeline import DeviceConfig

    steps = [
        FunctionStep(func="gaussian_filter", sigma=1.0),
        FunctionStep(func="count_cells", min_size=20),
    ]
    out = tmp_path / "t"
    res = run_pipeline(
        steps,
        plate.root,
        out,
        cfg(device=DeviceConfig(implementation_preference=("torch", "numpy"))),
    )
    assert res.ok, res.failed[0].traceback if res.failed else ""
    m = json.loads((out / "manifest.json").read_text())
    impl0 = m["pipeline"][0]["functions"]["None"][0]["implementation"]
    impl1 = m["pipeline"][1]["functions"]["None"][0]["implementation"]
    assert impl0.startswith("torch") and impl1.startswith("numpy (torch: no implementation")
    assert counted(out) == plate.true_counts
    assert m["wells"]["A01"]["conversion_events"] > 0


def test_decorated_function_returning_2d_names_step_and_function(plate, tmp_path):
    from hcsflow.memory.decorators import numpy as np_decorator

    @np_decorator
    def flatten(stack):
        return stack[0]

    res = run_pipeline([FunctionStep(func=flatten)], plate.root, tmp_path / "o", cfg())
    err = res.failed[0].error
    assert res.failed[0].error_type == "StepExecutionError"
    assert "step 0 (flatten)" in err and "'flatten'" in err and "3-D" in err


def test_spec_example_pipeline_runs(plate, tmp_path):
    from hcsflow.functions import disk

    steps = [
        FunctionStep(func="gaussian_filter", sigma=2.0),
        FunctionStep(func="threshold_otsu"),
        FunctionStep(func="binary_opening", footprint=disk(3)),
        FunctionStep(func="label", connectivity=2),
    ]
    res = run_pipeline(steps, plate.root, tmp_path / "o", cfg(executor="threads", num_workers=2))
    assert res.ok, res.failed[0].traceback if res.failed else ""
    labels = tifffile.imread(tmp_path / "o/images/A01/A01_s1_w1.tif")
    assert labels.dtype == np.int32 and labels.max() == plate.site_counts["A01"][0]


def test_importing_pipeline_loads_no_optional_framework():
    import subprocess
    import sys

    code = (
        "import sys, hcsflow.pipeline, hcsflow.functions, hcsflow.cli; "
        "print([m for m in ('torch', 'jax', 'tensorflow', 'cupy', 'pyclesperanto', "
        "'distributed') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.gpu
def test_torch_on_cuda_gpu(plate, tmp_path):
    pytest.importorskip("torch")
    from hcsflow.pipeline import DeviceConfig

    steps = [
        FunctionStep(func="gaussian_filter", sigma=1.0),
        FunctionStep(func="count_cells", min_size=20),
    ]
    res = run_pipeline(
        steps,
        plate.root,
        tmp_path / "g",
        cfg(device=DeviceConfig(implementation_preference=("torch", "numpy"), gpu_id=0)),
    )
    assert res.ok, res.failed[0].traceback if res.failed else ""
    assert counted(tmp_path / "g") == plate.true_counts


def test_fail_fast_stops_submitting_wells(tmp_path):
    root = tmp_path / "p"
    root.mkdir()
    for w, v in (("A01", 5), ("A02", 0), ("A03", 0)):
        tifffile.imwrite(root / f"{w}_s1_w1.tif", np.full((8, 8), v, np.uint16))
    done = []
    with pytest.raises(StepExecutionError, match="well A01 failed"):
        run_pipeline(
            [FunctionStep(func=_boom)],
            str(root),
            tmp_path / "o",
            cfg(fail_fast=True),
            on_well_done=lambda r: done.append(r.well),
        )
    assert done == ["A01"]  # A02 and A03 never ran
    # the stop leaves a resumable run: A01 is recorded as failed, nothing else committed
    record = json.loads((tmp_path / "o/.hcsflow/wells/A01.json").read_text())
    assert record["status"] == "failed" and not (tmp_path / "o/manifest.json").exists()
