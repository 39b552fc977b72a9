"""Per-well pipelines: steps, special I/O, configuration, plate layouts, execution.

Build a list of :class:`FunctionStep`, then :func:`run_pipeline` it over a plate::

    from hcsflow.pipeline import FunctionStep, run_pipeline
    from hcsflow.functions import disk

    pipeline = [
        FunctionStep(func="gaussian_filter", sigma=2.0),
        FunctionStep(func="threshold_otsu"),
        FunctionStep(func="binary_opening", footprint=disk(3)),
        FunctionStep(func="label", connectivity=2),
    ]
    result = run_pipeline(pipeline, "plate/", "out/")

See ``docs/pipeline.md``.
"""

from hcsflow.pipeline._compiler import (
    CheckpointPlan,
    FunctionCall,
    RunPlan,
    StepPlan,
    WellPlan,
    compile_pipeline,
    step_folder_names,
)
from hcsflow.pipeline._config import (
    DEFAULTS,
    DeviceConfig,
    GlobalPipelineConfig,
    PathPlanningConfig,
    PipelineConfig,
    StepConfig,
    StepMaterializationConfig,
    VFSConfig,
    config_to_dict,
    resolve_config,
)
from hcsflow.pipeline._execute import WellResult, execute_well
from hcsflow.pipeline._layouts import (
    ImageXpressLayout,
    OperaPhenixLayout,
    RegexLayout,
    detect_layout,
    image_filename,
)
from hcsflow.pipeline._materialize import (
    IDENTIFIER_COLUMNS,
    MaterializationFileManager,
    is_identifier_column,
    materialize_labels,
    materialize_positions,
    materialize_table,
)
from hcsflow.pipeline._plate import (
    PlateImage,
    PlateIndex,
    is_zarr_plate,
    read_plate,
    read_zarr_plate,
)
from hcsflow.pipeline._run import (
    MANIFEST_NAME,
    InProcessExecutor,
    RunResult,
    load_pipeline_file,
    make_executor,
    run_pipeline,
)
from hcsflow.pipeline._special_io import (
    get_special_inputs,
    get_special_outputs,
    special_inputs,
    special_outputs,
)
from hcsflow.pipeline._step import Component, FunctionStep, Pipeline

__all__ = [
    "CheckpointPlan",
    "Component",
    "DEFAULTS",
    "DeviceConfig",
    "FunctionCall",
    "FunctionStep",
    "GlobalPipelineConfig",
    "IDENTIFIER_COLUMNS",
    "ImageXpressLayout",
    "InProcessExecutor",
    "MANIFEST_NAME",
    "MaterializationFileManager",
    "OperaPhenixLayout",
    "PathPlanningConfig",
    "Pipeline",
    "PipelineConfig",
    "PlateImage",
    "PlateIndex",
    "RegexLayout",
    "RunPlan",
    "RunResult",
    "StepConfig",
    "StepMaterializationConfig",
    "StepPlan",
    "VFSConfig",
    "WellPlan",
    "WellResult",
    "compile_pipeline",
    "config_to_dict",
    "detect_layout",
    "execute_well",
    "get_special_inputs",
    "get_special_outputs",
    "image_filename",
    "is_identifier_column",
    "load_pipeline_file",
    "make_executor",
    "materialize_labels",
    "materialize_positions",
    "materialize_table",
    "is_zarr_plate",
    "read_plate",
    "read_zarr_plate",
    "resolve_config",
    "run_pipeline",
    "special_inputs",
    "special_outputs",
    "step_folder_names",
]
