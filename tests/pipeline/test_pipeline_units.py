"""Special I/O declarations, configuration resolution, layouts, plate reading, compilation."""

from __future__ import annotations

import pickle
from dataclasses import fields

import numpy as np
import pytest
import tifffile

from hcsflow.errors import (
    CompilationError,
    ConfigurationError,
    NotFoundError,
    PlateLayoutError,
    SpecialIOError,
)
from hcsflow.functions import disk
from hcsflow.pipeline import (
    DEFAULTS,
    DeviceConfig,
    FunctionStep,
    GlobalPipelineConfig,
    ImageXpressLayout,
    OperaPhenixLayout,
    PathPlanningConfig,
    Pipeline,
    PipelineConfig,
    RegexLayout,
    StepConfig,
    StepMaterializationConfig,
    VFSConfig,
    compile_pipeline,
    get_special_inputs,
    get_special_outputs,
    read_plate,
    resolve_config,
    special_inputs,
    special_outputs,
)
from hcsflow.storage import Backend
from hcsflow.storage.plate import ImageCoordinates


def write_plate(root, wells=("A01", "A02"), sites=2, channels=1, shape=(16, 16), skip=()):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for w in wells:
        for s in range(1, sites + 1):
            for c in range(1, channels + 1):
                name = f"{w}_s{s}_w{c}.tif"
                if name in skip:
                    continue
                tifffile.imwrite(root / name, rng.integers(0, 1000, shape).astype(np.uint16))
    return root


# --------------------------------------------------------------------------- special I/O


def _mat(data, path, fm):
    return path


def test_special_outputs_declaration_order_and_materializers():
    @special_outputs("positions", ("cell_counts", _mat))
    def f(stack):
        return stack, [], []

    assert list(get_special_outputs(f)) == ["positions", "cell_counts"]
    assert get_special_outputs(f)["positions"] is None
    assert get_special_outputs(f)["cell_counts"] is _mat

    @special_inputs("positions")
    def g(stack, positions):
        return stack

    assert get_special_inputs(g) == ("positions",)


@pytest.mark.parametrize(
    "specs",
    [(), ("a", "a"), (("a", 3),), ("not an identifier",), (("a", _mat, 1),)],
)
def test_bad_special_output_declarations(specs):
    with pytest.raises(SpecialIOError):
        special_outputs(*specs)


def test_bad_special_input_declarations():
    with pytest.raises(SpecialIOError):
        special_inputs()
    with pytest.raises(SpecialIOError):
        special_inputs("a", "a")


# --------------------------------------------------------------------------- configuration


def test_global_config_is_complete_and_frozen():
    g = GlobalPipelineConfig()
    for f in fields(g):
        # None means "all wells", "detect the plate format" and "a local cluster"
        if f.name not in ("zarr", "well_filter", "input_format", "scheduler"):
            assert getattr(g, f.name) is not None, f.name
    assert g.vfs == VFSConfig("memory", "disk", fsync=True)
    with pytest.raises(AttributeError):
        g.num_workers = 3  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(g)) == g


def test_resolution_step_pipeline_global_field_by_field():
    g = GlobalPipelineConfig(
        num_workers=4,
        vfs=VFSConfig(materialization_backend="zarr"),
        device=DeviceConfig(implementation_preference=("torch", "numpy"), gpu_id=0),
        materialization_defaults=StepMaterializationConfig(sub_dir="g"),
        path_planning=PathPlanningConfig(results_dir="tables"),
    )
    p = PipelineConfig(num_workers=2, device=DeviceConfig(gpu_id=1), check_finite=False)
    s = StepConfig(
        vfs=VFSConfig(materialization_backend="disk"),
        materialization=StepMaterializationConfig(enabled=True, well_filter=("b2",)),
    )
    only_global = resolve_config(g)
    assert only_global.num_workers == 4 and only_global.vfs.materialization_backend == "zarr"
    r = resolve_config(g, p, s)
    assert r.num_workers == 2  # pipeline over global
    assert r.executor == DEFAULTS.executor  # default through every level
    assert r.vfs.materialization_backend == "disk"  # step over global
    assert r.vfs.intermediate_backend == "memory"
    assert r.device.gpu_id == 1  # pipeline over global
    assert r.device.implementation_preference == ("torch", "numpy")  # global kept
    assert r.check_finite is False
    assert r.materialization_defaults.enabled is True  # step
    assert r.materialization_defaults.sub_dir == "g"  # global, not overridden
    assert r.materialization_defaults.well_filter == ("B02",)
    assert r.path_planning.results_dir == "tables"
    assert r.path_planning.images_dir == "images"
    # step without overrides inherits the pipeline level
    assert resolve_config(g, p, StepConfig()).vfs.materialization_backend == "zarr"


@pytest.mark.parametrize(
    "make",
    [
        lambda: VFSConfig(materialization_backend="memory"),
        lambda: VFSConfig(intermediate_backend="disk"),
        lambda: VFSConfig(materialization_backend="tape"),
        lambda: GlobalPipelineConfig(num_workers=0),
        lambda: GlobalPipelineConfig(executor="cluster"),
        lambda: DeviceConfig(implementation_preference=()),
        lambda: DeviceConfig(gpu_id=-1),
        lambda: PathPlanningConfig(images_dir="a/b"),
        lambda: PathPlanningConfig(step_dir_template="{nope}"),
        lambda: StepMaterializationConfig(well_filter_mode="some"),
        lambda: PipelineConfig(well_filter=("Q99",)),
    ],
)
def test_bad_configuration_values(make):
    with pytest.raises((ConfigurationError, PlateLayoutError)):
        make()


def test_materialization_well_filter():
    inc = StepMaterializationConfig(enabled=True, well_filter=("A01",))
    exc = StepMaterializationConfig(enabled=True, well_filter=("A01",), well_filter_mode="exclude")
    assert inc.applies_to("A01") and not inc.applies_to("A02")
    assert not exc.applies_to("A01") and exc.applies_to("A02")
    assert not StepMaterializationConfig(enabled=False).applies_to("A01")


# --------------------------------------------------------------------------- layouts


def test_imagexpress_layout():
    lay = ImageXpressLayout()
    assert lay.parse("/p/A01_s1_w1.tif") == ImageCoordinates("A01", 0, 0, 0, 0)
    assert lay.parse("plate7_B12_s3_w2_z004.TIF") == ImageCoordinates("B12", 2, 1, 3, 0)
    assert lay.parse("AA48_s1_w1_t2.tiff") == ImageCoordinates("AA48", 0, 0, 0, 1)
    for bad in ("A01_w1.tif", "A01_s0_w1.tif", "notes.txt", "Z99_s1_w1.tif"):
        with pytest.raises(PlateLayoutError):
            lay.parse(bad)


def test_opera_phenix_layout():
    lay = OperaPhenixLayout()
    c = lay.parse("r02c03f04p05-ch2sk3fk1fl1.tiff")
    assert c == ImageCoordinates("B03", 3, 1, 4, 2)
    with pytest.raises(PlateLayoutError):
        lay.parse("r02c03f04-ch2.tiff")


def test_regex_layout():
    lay = RegexLayout(r"(?P<well>[A-P]\d\d)-(?P<site>\d+)-(?P<channel>\d+)\.png")
    assert lay.parse("C07-2-1.png") == ImageCoordinates("C07", 1, 0)
    zero = RegexLayout(r"r(?P<row>\d+)c(?P<column>\d+)_f(?P<field>\d+)\.tif", one_based=False)
    assert zero.parse("r1c0_f2.tif") == ImageCoordinates("B01", 2, 0)
    with pytest.raises(PlateLayoutError):
        RegexLayout(r"(?P<site>\d+)\.tif")  # no well
    with pytest.raises(PlateLayoutError):
        RegexLayout(r"(unclosed")
    assert pickle.loads(pickle.dumps(lay)) == lay


# --------------------------------------------------------------------------- plates


def test_read_plate_groups_by_well(tmp_path):
    root = write_plate(tmp_path / "p", wells=("B02", "A01", "A10", "A2"), channels=2)
    plate = read_plate(str(root))
    assert list(plate.wells) == ["A01", "A02", "A10", "B02"]
    assert plate.layout == "imagexpress" and plate.n_images == 16
    assert plate.sites == (0, 1) and plate.channels == (0, 1)


def test_read_plate_reports_every_problem(tmp_path):
    root = write_plate(tmp_path / "p", wells=("A01", "A02"), channels=2, skip=("A02_s2_w2.tif",))
    (root / "A01_extra.tif").write_bytes(b"x")
    tifffile.imwrite(root / "A01_s1_w1_z001.tif", np.zeros((4, 4), np.uint16))
    with pytest.raises(PlateLayoutError) as info:
        read_plate(str(root), layout=ImageXpressLayout())
    msg = str(info.value)
    assert "A01_extra.tif" in msg
    assert "well A02 is missing 1 image(s): 'site 2 channel 2 z 1 t 1'" in msg
    assert "two files at" in msg


def test_read_plate_empty_missing_and_unknown_names(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PlateLayoutError, match="no image files"):
        read_plate(str(tmp_path / "empty"))
    with pytest.raises(NotFoundError):
        read_plate(str(tmp_path / "nowhere"))
    odd = tmp_path / "odd"
    odd.mkdir()
    tifffile.imwrite(odd / "image_001.tif", np.zeros((4, 4), np.uint16))
    with pytest.raises(PlateLayoutError, match="image_001.tif"):
        read_plate(str(odd))


# --------------------------------------------------------------------------- compilation


def test_compile_produces_picklable_well_plans(tmp_path):
    root = write_plate(tmp_path / "p")
    steps = [
        FunctionStep(func="gaussian_filter", sigma=2.0),
        FunctionStep(func="threshold_otsu"),
        FunctionStep(func="binary_opening", footprint=disk(3)),
        FunctionStep(func="label", connectivity=2),
    ]
    plan = compile_pipeline(steps, str(root), str(tmp_path / "out"))
    assert [w.well for w in plan.wells] == ["A01", "A02"]
    assert plan.steps[0].calls[None][0].implementation.startswith("numpy")
    clone = pickle.loads(pickle.dumps(plan.wells[0]))
    assert clone.well == "A01" and len(clone.steps) == 4


def test_compile_reports_every_problem_at_once(tmp_path):
    root = write_plate(tmp_path / "p", channels=2)

    @special_inputs("positions")
    def needs_positions(stack, positions):
        return stack

    @special_outputs("masks")
    def makes_masks(stack):
        return stack, stack

    steps = [
        FunctionStep(func="gausian_filter"),
        FunctionStep(func="gaussian_filter", sigm=2),
        FunctionStep(func=needs_positions),
        FunctionStep(func="count_cells"),  # produces masks
        FunctionStep(func=makes_masks),  # masks again
        FunctionStep(func={"1": "gaussian_filter"}, group_by="channel"),  # no function for 2
        FunctionStep(func=42),
    ]
    with pytest.raises(CompilationError) as info:
        compile_pipeline(steps, str(root), str(tmp_path / "out"))
    problems = "\n".join(info.value.problems)
    assert len(info.value.problems) == 6
    assert "did you mean 'gaussian_filter'" in problems
    assert "sigm" in problems
    assert "needs special input 'positions'" in problems
    assert "special output 'masks' is already produced" in problems
    assert "no function for channel 2" in problems
    assert "42" in problems


def test_compile_reports_unreadable_plate_and_empty_pipeline(tmp_path):
    with pytest.raises(CompilationError) as info:
        compile_pipeline([], str(tmp_path / "missing"), str(tmp_path / "out"))
    assert len(info.value.problems) == 2


def test_compile_well_filter_and_pipeline_object(tmp_path):
    root = write_plate(tmp_path / "p", wells=("A01", "A02", "B01"))
    pipe = Pipeline(
        [FunctionStep(func="max_projection")], config=PipelineConfig(well_filter=("B1",))
    )
    plan = compile_pipeline(pipe, str(root), str(tmp_path / "out"))
    assert [w.well for w in plan.wells] == ["B01"]
    with pytest.raises(CompilationError, match="Z09"):
        compile_pipeline(
            pipe,
            str(root),
            str(tmp_path / "out"),
            pipeline_config=PipelineConfig(well_filter=("Z09",)),
        )


def test_function_step_validation():
    with pytest.raises(ConfigurationError):
        FunctionStep(func={"1": "label"})  # dict without group_by
    with pytest.raises(ConfigurationError):
        FunctionStep(func=["label"], connectivity=2)  # kwargs with a chain
    with pytest.raises(ConfigurationError):
        FunctionStep(func="label", variable_components=("site", "site"))
    with pytest.raises(ConfigurationError):
        FunctionStep(func="label", variable_components="wavelengthz")
    with pytest.raises(ConfigurationError):
        FunctionStep(func="label", group_by="site")
    step = FunctionStep(
        func="label",
        variable_components="field",
        materialization_config=StepMaterializationConfig(enabled=True),
    )
    assert step.variable_components == ("site",)
    assert step.materialization_config.enabled
    assert FunctionStep(func=[("gaussian_filter", {"sigma": 1}), "label"]).name == (
        "gaussian_filter+label"
    )


def test_backend_enum_accepted_in_vfs():
    assert VFSConfig(Backend.MEMORY, Backend.ZARR).materialization_backend == "zarr"


def test_compile_rejects_a_memory_type_that_is_not_installed(tmp_path, monkeypatch):
    import hcsflow.functions._registry as reg
    from hcsflow.memory.decorators import torch as torch_decorator

    root = write_plate(tmp_path / "p")

    @torch_decorator
    def on_gpu(stack):
        return stack

    import hcsflow.functions as functions

    only_numpy = lambda m: m == "numpy"  # noqa: E731
    monkeypatch.setattr(reg, "framework_available", only_numpy)
    monkeypatch.setattr(functions, "framework_available", only_numpy)
    with pytest.raises(CompilationError, match="needs torch/torch, which is not installed"):
        compile_pipeline([FunctionStep(func=on_gpu)], str(root), str(tmp_path / "out"))
    with pytest.raises(CompilationError, match="no usable implementation"):
        compile_pipeline(
            [FunctionStep(func="gaussian_filter")],
            str(root),
            str(tmp_path / "out"),
            GlobalPipelineConfig(device=DeviceConfig(implementation_preference=("torch",))),
        )


@pytest.mark.parametrize("rows", [0, 1, 7, 300])
def test_table_summary_statistics_match_numpy_nan_functions(tmp_path, rows):
    import json
    import warnings

    import pandas as pd

    from hcsflow.pipeline._execute import well_registry
    from hcsflow.pipeline._materialize import MaterializationFileManager, materialize_table

    rng = np.random.default_rng(rows)
    df = pd.DataFrame(
        {
            "x": rng.normal(size=rows) * 1e3,
            "n": rng.integers(0, 10**6, rows),
            "name": ["a"] * rows,
            "empty": np.full(rows, np.nan),
        }
    )
    if rows > 2:
        df.loc[1, "x"] = np.nan
        df.loc[2, "x"] = np.inf
    fm = MaterializationFileManager(
        well_registry(fsync=False), materialization_backend="disk", well="A01"
    )
    materialize_table(df, str(tmp_path / "t.pkl"), fm)
    got = json.loads((tmp_path / "t.json").read_text())
    assert got["rows"] == rows and got["columns"] == ["x", "n", "name", "empty"]
    numeric = [str(c) for c in df.select_dtypes(include="number").columns]
    assert {"x", "n", "empty"} <= set(numeric) and list(got["numeric"]) == numeric
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        for name in numeric:
            col = df[name].to_numpy(dtype=np.float64)
            has = rows > 0 and not np.isnan(col).all()
            expected = {
                "sum": float(np.nansum(col)),
                "mean": float(np.nanmean(col)) if has else None,
                "min": float(np.nanmin(col)) if has else None,
                "max": float(np.nanmax(col)) if has else None,
            }
            assert got["numeric"][name] == expected, name
