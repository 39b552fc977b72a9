"""Materialization as the specification describes it: backends, folders, examples."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tifffile

from hcsflow.errors import ConfigurationError, UnknownBackendError
from hcsflow.pipeline import (
    IDENTIFIER_COLUMNS,
    FunctionStep,
    GlobalPipelineConfig,
    PathPlanningConfig,
    PipelineConfig,
    StepConfig,
    StepMaterializationConfig,
    VFSConfig,
    compile_pipeline,
    materialize_table,
    resolve_config,
    run_pipeline,
    special_outputs,
    step_folder_names,
)
from hcsflow.pipeline._execute import well_registry
from hcsflow.storage import (
    Backend,
    BackendRegistry,
    FileManager,
    MemoryStorageBackend,
    ZarrConfig,
    ZarrStorageBackend,
    open_plate,
    read_labels,
)
from hcsflow.testing import make_plate


def cfg(**kw: Any) -> GlobalPipelineConfig:
    kw.setdefault("executor", "inprocess")
    return GlobalPipelineConfig(**kw)


def backend_cfg(backend: str) -> GlobalPipelineConfig:
    return cfg(vfs=VFSConfig(materialization_backend=backend))


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    root = tmp_path_factory.mktemp("plate")
    return make_plate(
        root / "plate", 2, sites=2, size=64, min_cells=2, max_cells=4, radius=4, seed=5
    )


def run_ok(steps, plate, out, config, **kw):
    res = run_pipeline(steps, plate.root, out, config, **kw)
    assert res.ok, [(w.well, w.error) for w in res.failed]
    return res


# --------------------------------------------------------------------------- backends


def test_well_registry_has_every_backend_a_materializer_may_name():
    zc = ZarrConfig(level=3)
    reg = well_registry(fsync=False, zarr_config=zc)
    assert list(reg) == ["disk", "memory", "zarr"]
    zarr = reg.get("zarr")
    assert isinstance(zarr, ZarrStorageBackend) and zarr.config == zc
    assert reg.get(Backend.ZARR) is zarr
    # a fresh memory backend per well
    assert well_registry().get("memory") is not reg.get("memory")


def test_registry_without_zarr_names_the_fix_not_a_reinstall():
    reg = BackendRegistry({"memory": MemoryStorageBackend()})
    with pytest.raises(UnknownBackendError) as info:
        FileManager(reg).save(b"x", "/a.bin", "zarr")
    assert "reinstall" not in str(info.value)
    assert "register_backend('zarr'" in str(info.value)


def _save_to_materialization_backend(data, path, filemanager):
    target = path.replace(".pkl", ".json")
    filemanager.save(json.dumps(data), target, filemanager.materialization_backend)
    return target


def _save_csv_to_zarr(data, path, filemanager):
    target = path.replace(".pkl", "_z.csv")
    filemanager.save(pd.DataFrame(data), target, "zarr")
    return target


@special_outputs(("summary", _save_to_materialization_backend), ("zcsv", _save_csv_to_zarr))
def summarize(stack):
    return stack, {"planes": int(stack.shape[0])}, {"plane": list(range(stack.shape[0]))}


@pytest.mark.parametrize("backend", ["disk", "zarr"])
def test_materializer_writes_to_the_configured_backend(plate, tmp_path, backend):
    out = tmp_path / backend
    run_ok([FunctionStep(func=summarize)], plate, out, backend_cfg(backend))
    json_path = out / "results/summarize/A01_summary.json"
    owner = FileManager(well_registry())
    assert owner.load(str(json_path), backend) == {"planes": 2}
    assert json_path.is_dir() == (backend == "zarr")  # a zarr "file" is a group
    table = owner.load(str(out / "results/summarize/A02_zcsv_z.csv"), "zarr")
    assert list(table["plane"]) == [0, 1]
    # a CSV inside a zarr hierarchy is not joined into a plate table (only disk files)
    assert not (out / "zcsv.csv").exists()


# (global backend, step-level VFS backend) -> where the labels of count_cells go
COMBINATIONS = [
    ("disk", None, "tiff"),
    ("disk", "disk", "tiff"),
    ("disk", "zarr", "step plate"),
    ("zarr", None, "run plate"),
    ("zarr", "zarr", "run plate"),
    ("zarr", "disk", "tiff"),
]


@pytest.mark.parametrize(("run_backend", "step_backend", "labels"), COMBINATIONS)
def test_step_level_backend_overrides_the_run_for_every_combination(
    plate, tmp_path, run_backend, step_backend, labels
):
    step_cfg = None if step_backend is None else StepConfig(vfs=VFSConfig(None, step_backend))
    steps = [FunctionStep(func="count_cells", min_size=5, config=step_cfg)]
    out = tmp_path / "o"
    res = run_ok(steps, plate, out, backend_cfg(run_backend))
    step_plate = out / "results/count_cells/images.zarr"
    run_plate = out / "images.zarr"
    tif = out / "results/count_cells/A02_masks.tif"
    assert tif.is_file() == (labels == "tiff")
    assert step_plate.exists() == (labels == "step plate")
    assert run_plate.exists() == (run_backend == "zarr")
    if labels == "tiff":
        masks = tifffile.imread(tif)
    else:
        store = step_plate if labels == "step plate" else run_plate
        masks = np.stack([np.asarray(read_labels(str(store), "A02", f, "masks")) for f in (0, 1)])
        assert open_plate(str(store)).wells == ("A01", "A02")
    assert [int(m.max()) for m in masks] == plate.site_counts["A02"]
    # tables stay CSV + JSON on disk in every combination, and are joined per plate
    table = pd.read_csv(out / "cell_counts.csv")
    assert table.groupby("well")["cell_count"].sum().to_dict() == plate.true_counts
    if labels == "step plate":  # the step's images, as the step left them
        assert (out / "images/A01/A01_s1_w1.tif").is_file()
        kinds = [o["kind"] for o in res.wells[0].outputs]
        assert kinds.count("checkpoint") == 1
    described = json.loads((out / "manifest.json").read_text())["pipeline"][0]
    assert described["results_dir"] == "results/count_cells"
    stores = {
        "tiff": "images.zarr" if run_backend == "zarr" else None,
        "step plate": "results/count_cells/images.zarr",
        "run plate": "images.zarr",
    }
    assert described["zarr_store"] == stores[labels]


@pytest.mark.parametrize(
    ("run_backend", "checkpoint_backend"), [("disk", "zarr"), ("zarr", "disk")]
)
def test_checkpoint_backend_overrides_the_run(plate, tmp_path, run_backend, checkpoint_backend):
    mat = StepMaterializationConfig(backend=checkpoint_backend)
    steps = [FunctionStep(func="gaussian_filter", sigma=1.0, materialization_config=mat)]
    out = tmp_path / "o"
    run_ok(steps, plate, out, backend_cfg(run_backend))
    if checkpoint_backend == "zarr":
        assert open_plate(str(out / "checkpoints/gaussian_filter.zarr")).field_count == 2
    else:
        assert tifffile.imread(out / "checkpoints/gaussian_filter/A01/A01_s2_w1.tif").ndim == 2


def test_step_plate_only_for_steps_with_materializers(plate):
    steps = [
        FunctionStep(
            func="gaussian_filter", sigma=1.0, config=StepConfig(vfs=VFSConfig(None, "zarr"))
        ),
        FunctionStep(func="count_cells", config=StepConfig(vfs=VFSConfig(None, "zarr"))),
    ]
    plan = compile_pipeline(steps, plate.root, "/tmp/never-written", backend_cfg("disk"))
    assert [s.writes_zarr_store for s in plan.steps] == [False, True]
    assert plan.steps[1].zarr_store == "/tmp/never-written/results/count_cells/images.zarr"
    assert plan.wells[0].zarr_config is not None  # the step's zarr outputs need it


# --------------------------------------------------------------------------- spec examples


@dataclass
class CellCountResult:
    slice_index: int
    cell_count: int
    detection_method: str
    threshold_value: float


def materialize_cell_counts(data: list[CellCountResult], path: str, filemanager) -> str:
    """Materialize cell counting results as analysis-ready CSV and JSON formats."""

    # Generate output file paths based on the input path
    base_path = path.replace(".pkl", "")
    json_path = f"{base_path}.json"
    csv_path = f"{base_path}_details.csv"

    # Ensure output directory exists for disk backend
    from pathlib import Path

    from hcsflow.storage import Backend

    output_dir = Path(json_path).parent
    filemanager.ensure_directory(str(output_dir), Backend.DISK.value)

    # Create summary data
    summary = {
        "analysis_type": "single_channel_cell_counting",
        "total_slices": len(data),
        "total_cells_detected": sum(result.cell_count for result in data),
    }

    # Save JSON summary
    import json

    json_content = json.dumps(summary, indent=2)
    filemanager.save(json_content, json_path, Backend.DISK.value)

    # Create detailed CSV
    rows = []
    for result in data:
        rows.append(
            {
                "slice_index": result.slice_index,
                "cell_count": result.cell_count,
                "detection_method": result.detection_method,
                "threshold_value": result.threshold_value,
            }
        )

    # Save CSV details
    import pandas as pd

    df = pd.DataFrame(rows)
    csv_content = df.to_csv(index=False)
    filemanager.save(csv_content, csv_path, Backend.DISK.value)

    return json_path  # Return primary output file


def materialize_ashlar_positions(data: list[tuple[float, float]], path: str, filemanager) -> str:
    """Materialize tile positions as scientific CSV with grid metadata."""
    csv_path = path.replace(".pkl", "_ashlar_positions.csv")

    # Convert to DataFrame with metadata
    import pandas as pd

    df = pd.DataFrame(data, columns=["x_position_um", "y_position_um"])
    df["tile_id"] = range(len(df))

    # Add grid analysis
    unique_x = sorted(df["x_position_um"].unique())
    unique_y = sorted(df["y_position_um"].unique())
    df["grid_dimensions"] = f"{len(unique_y)}x{len(unique_x)}"
    df["algorithm"] = "ashlar_cpu"

    # Save using FileManager
    csv_content = df.to_csv(index=False)
    filemanager.save(csv_content, csv_path, "disk")
    return csv_path


@special_outputs(("cell_counts", materialize_cell_counts))
def count_bright(stack):
    return stack, [
        CellCountResult(i, int((plane > plane.mean()).sum() > 0), "threshold", float(plane.mean()))
        for i, plane in enumerate(stack)
    ]


@special_outputs(("positions", materialize_ashlar_positions))
def tile_positions(stack):
    return stack, [(100.0 * i, 0.0) for i in range(stack.shape[0])]


@pytest.mark.parametrize("backend", ["disk", "zarr"])
def test_specification_example_materializers_run_as_written(plate, tmp_path, backend):
    out = tmp_path / "spec"
    steps = [FunctionStep(func=count_bright), FunctionStep(func=tile_positions)]
    res = run_ok(steps, plate, out, backend_cfg(backend))
    summary = json.loads((out / "results/count_bright/A01_cell_counts.json").read_text())
    assert summary == {
        "analysis_type": "single_channel_cell_counting",
        "total_slices": 2,
        "total_cells_detected": 2,
    }
    details = pd.read_csv(out / "results/count_bright/A01_cell_counts_details.csv")
    assert list(details.columns) == [
        "slice_index",
        "cell_count",
        "detection_method",
        "threshold_value",
    ]
    positions = pd.read_csv(out / "results/tile_positions/A02_positions_ashlar_positions.csv")
    assert list(positions["tile_id"]) == [0, 1] and set(positions["grid_dimensions"]) == {"1x2"}
    written = {o["path"] for w in res.wells for o in w.outputs if o["kind"] == "special_output"}
    assert "results/tile_positions/A01_positions_ashlar_positions.csv" in written


def _csv_without_ensure(data, path, filemanager):
    target = path.replace(".pkl", ".csv")
    filemanager.save(pd.DataFrame({"v": [data]}), target, "disk")
    return target


@special_outputs(("v", _csv_without_ensure))
def one_value(stack):
    return stack, 1


def test_results_folder_exists_before_materializers_run(plate, tmp_path):
    out = tmp_path / "o"
    config = cfg(path_planning=PathPlanningConfig(results_dir="tables"))
    run_ok([FunctionStep(func=one_value, name="my step")], plate, out, config)
    assert pd.read_csv(out / "tables/my_step/A01_v.csv")["v"].tolist() == [1]
    assert pd.read_csv(out / "v.csv")["v"].tolist() == [1, 1]


# ------------------------------------------------------------- StepMaterializationConfig


def test_explicit_step_materialization_config_is_enabled():
    assert StepMaterializationConfig().enabled is True
    g = GlobalPipelineConfig()
    assert g.materialization_defaults.enabled is False  # built-in default: off
    on = resolve_config(g, None, StepConfig(materialization=StepMaterializationConfig()))
    assert on.materialization_defaults.enabled is True
    # enabled=False on a step opts out of defaults that enable every step
    p = PipelineConfig(materialization_defaults=StepMaterializationConfig(backend="zarr"))
    assert resolve_config(g, p).materialization_defaults.enabled is True
    off = resolve_config(g, p, StepConfig(materialization=StepMaterializationConfig(enabled=False)))
    assert off.materialization_defaults.enabled is False
    # defaults with enabled=False only lend their other fields to steps that opt in
    d = PipelineConfig(
        materialization_defaults=StepMaterializationConfig(enabled=False, backend="zarr")
    )
    step = resolve_config(g, d, StepConfig(materialization=StepMaterializationConfig()))
    assert step.materialization_defaults.enabled is True
    assert step.materialization_defaults.backend == "zarr"
    inherit = StepMaterializationConfig(enabled=None)
    assert (
        resolve_config(g, d, StepConfig(materialization=inherit)).materialization_defaults.enabled
        is False
    )


@pytest.mark.parametrize("value", ["yes", 1, 0.0])
def test_enabled_must_be_a_bool(value):
    with pytest.raises(ConfigurationError, match="enabled"):
        StepMaterializationConfig(enabled=value)


def test_constructor_example_writes_checkpoints(plate, tmp_path):
    out = tmp_path / "o"
    steps = [
        FunctionStep(
            func="gaussian_filter", sigma=1.0, materialization_config=StepMaterializationConfig()
        ),
        FunctionStep(
            func="threshold_otsu",
            materialization_config=StepMaterializationConfig(enabled=False),
        ),
    ]
    run_ok(
        steps,
        plate,
        out,
        cfg(),
        pipeline_config=PipelineConfig(
            materialization_defaults=StepMaterializationConfig(well_filter=("A02",))
        ),
    )
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["gaussian_filter"]
    assert [p.name for p in (out / "checkpoints/gaussian_filter").iterdir()] == ["A02"]


# --------------------------------------------------------------------------- folder names


def test_folder_names_are_the_step_names_made_safe_and_unique():
    assert step_folder_names(["count_cells", "measure_objects"]) == [
        "count_cells",
        "measure_objects",
    ]
    assert step_folder_names(["a b/c", "..", ".hidden", "", "x.zarr", "Zählung", "gauss+otsu"]) == [
        "a_b_c",
        "__",
        "_hidden",
        "step",
        "x_zarr",
        "Z_hlung",
        "gauss+otsu",
    ]
    # duplicates: the first keeps its name; later ones get the first free number,
    # never one another step uses as its own name; case-insensitive (macOS, Windows)
    assert step_folder_names(["x", "x", "x_2", "X", "x"]) == ["x", "x_3", "x_2", "X_4", "x_5"]
    assert step_folder_names(["a", "b"], "{index:02d}_{name}") == ["00_a", "01_b"]
    long = step_folder_names(["n" * 300, "n" * 300])
    assert [len(n) for n in long] == [100, 100] and long[1].endswith("_2")
    with pytest.raises(ConfigurationError):
        step_folder_names(["a"], "{nope}")


def test_removing_an_earlier_step_keeps_later_folders(plate):
    full = [
        FunctionStep(func="gaussian_filter", sigma=1.0),
        FunctionStep(func="count_cells"),
        FunctionStep(func="measure_objects"),
    ]
    a = compile_pipeline(full, plate.root, "/tmp/never-written", cfg())
    b = compile_pipeline(full[1:], plate.root, "/tmp/never-written", cfg())
    assert [s.results_dir for s in a.steps[1:]] == [s.results_dir for s in b.steps]
    assert a.steps[1].results_dir == "/tmp/never-written/results/count_cells"


def test_duplicate_step_names_get_distinct_folders(plate, tmp_path):
    out = tmp_path / "o"
    steps = [FunctionStep(func=one_value, name="v"), FunctionStep(func=one_value, name="v")]
    with pytest.raises(Exception, match="already produced"):
        run_pipeline(steps, plate.root, out, cfg())
    steps = [
        FunctionStep(func="gaussian_filter", sigma=1.0, name="smooth"),
        FunctionStep(func=one_value, name="smooth"),
    ]
    run_ok(steps, plate, out, cfg())
    assert (out / "results/smooth_2/A01_v.csv").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["results_dir"] for s in manifest["pipeline"]] == [
        "results/smooth",
        "results/smooth_2",
    ]


# --------------------------------------------------------------------------- JSON summaries


def test_json_summary_skips_coordinate_and_identifier_columns(tmp_path):
    df = pd.DataFrame(
        {
            "well": ["A01", "A01"],
            "site": [1, 2],
            "channel": [1, 1],
            "z": [1, 1],
            "t": [1, 1],
            "slice_index": [0, 1],
            "label": [1, 2],
            "Object_ID": [7, 8],
            "area": [10.0, 30.0],
            "intensity_mean": [np.nan, 2.0],
        }
    )
    csv = materialize_table(df, str(tmp_path / "A01_objects.pkl"), FileManager(well_registry()))
    assert csv == str(tmp_path / "A01_objects.csv")
    summary = json.loads((tmp_path / "A01_objects.json").read_text())
    assert set(summary["numeric"]) == {"area", "intensity_mean"}
    assert summary["numeric"]["area"] == {"sum": 40.0, "mean": 20.0, "min": 10.0, "max": 30.0}
    assert summary["numeric"]["intensity_mean"]["mean"] == 2.0
    assert summary["identifier_columns"] == [
        "well",
        "site",
        "channel",
        "z",
        "t",
        "slice_index",
        "label",
        "Object_ID",
    ]
    assert summary["columns"] == list(df.columns)
    assert {"site", "z", "label", "well"} <= IDENTIFIER_COLUMNS


def test_plate_run_summaries_do_not_sum_coordinates(plate, tmp_path):
    out = tmp_path / "o"
    run_ok(
        [FunctionStep(func="count_cells"), FunctionStep(func="measure_objects")], plate, out, cfg()
    )
    counts = json.loads((out / "results/count_cells/A01_cell_counts.json").read_text())
    assert "site" not in counts["numeric"] and "z" not in counts["numeric"]
    assert counts["numeric"]["cell_count"]["sum"] == plate.true_counts["A01"]
    objects = json.loads((out / "results/measure_objects/A01_object_measurements.json").read_text())
    assert "label" not in objects["numeric"] and "label" in objects["identifier_columns"]
    assert objects["numeric"]["area"]["min"] > 0
