"""The compiler: a pipeline plus a plate become one frozen, picklable plan per well.

Every problem found (unknown function names, bad keyword arguments, special inputs no
earlier function produces, keys produced twice, impossible memory types, an unreadable
plate...) is collected and raised together as one
:class:`~hcsflow.errors.CompilationError` before any work starts.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hcsflow import paths as vpaths
from hcsflow.errors import CompilationError, ConfigurationError, HcsflowError
from hcsflow.pipeline._config import (
    GlobalPipelineConfig,
    PipelineConfig,
    StepMaterializationConfig,
    resolve_config,
    tiff_config_of,
    zarr_config_of,
)
from hcsflow.pipeline._plate import PlateImage, PlateIndex, read_plate
from hcsflow.pipeline._special_io import Materializer, get_special_inputs, get_special_outputs
from hcsflow.pipeline._step import FunctionStep, Pipeline, as_callable_name
from hcsflow.storage import Backend, FileManager
from hcsflow.storage.plate import PlateLayout

__all__ = [
    "FunctionCall",
    "StepPlan",
    "WellPlan",
    "RunPlan",
    "compile_pipeline",
    "step_folder_names",
]

_KNOWN_MEMORY_TYPES = ("numpy", "cupy", "torch", "tensorflow", "jax", "pyclesperanto")


@dataclass(frozen=True)
class FunctionCall:
    """One resolved function of a step: what runs, with which arguments, on which type."""

    label: str
    func: Callable[..., Any]
    kwargs: dict[str, Any]
    input_memory_type: str
    output_memory_type: str
    implementation: str
    special_outputs: tuple[tuple[str, Materializer | None], ...]
    special_inputs: tuple[str, ...]


@dataclass(frozen=True)
class CheckpointPlan:
    """Where a step's main output is saved as a checkpoint, and for which wells."""

    config: StepMaterializationConfig
    backend: str
    directory: str


@dataclass(frozen=True)
class StepPlan:
    """A step resolved: function chains per group key, components, and output folders."""

    index: int
    name: str
    dir_name: str
    variable_components: tuple[str, ...]
    group_by: str | None
    calls: dict[str | None, tuple[FunctionCall, ...]]
    check_finite: bool
    gpu_id: int | None
    materialization_backend: str
    results_dir: str
    checkpoint: CheckpointPlan | None
    zarr_store: str | None = None
    """The OME-Zarr plate whose images this step's zarr materializers attach labels to
    (``MaterializationFileManager.zarr_store``): the run's image plate when the run
    writes zarr, else the step's own ``<results folder>/images.zarr``."""
    writes_zarr_store: bool = False
    """Whether the executor writes the step's output images into ``zarr_store`` when the
    step finishes (the step's own plate: its zarr labels need their image)."""


@dataclass(frozen=True)
class WellPlan:
    """Everything a worker needs to process one well (frozen and picklable)."""

    well: str
    inputs: tuple[PlateImage, ...]
    input_backend: str
    steps: tuple[StepPlan, ...]
    output_dir: str
    images_dir: str
    materialization_backend: str
    zarr_config: Any
    multi_z: bool
    multi_t: bool
    fsync: bool = True
    reader: Any = None
    """The plate reader whose ``load_planes`` reads the inputs (``None``: load the
    input paths with the file manager)."""
    metadata: Any = None
    """``hcsflow.readers.ImageMetadata`` the outputs carry (pixel size, channels...)."""
    tiff_config: Any = None
    """``hcsflow.storage.TiffConfig`` of TIFF outputs (``None``: ``TiffConfig()``)."""
    output: Any = None
    """Where the well writes (a ``WellSink`` set by the run inside the worker; ``None``:
    a local disk backend and zarr stores at their virtual paths)."""


@dataclass(frozen=True)
class RunPlan:
    """The compiled run: one plan per well plus what the manifest records."""

    wells: tuple[WellPlan, ...]
    steps: tuple[StepPlan, ...]
    config: GlobalPipelineConfig
    plate: PlateIndex
    output_dir: str
    extra: dict[str, Any] = field(default_factory=dict)


def _memory_type_name(value: Any) -> str | None:
    if value is None:
        return None
    v = getattr(value, "value", value)
    return str(v)


def _resolve_one(
    item: Any, where: str, preference: Sequence[str], problems: list[str]
) -> FunctionCall | None:
    """Resolve a callable, a name or a ``(func, kwargs)`` pair into a :class:`FunctionCall`."""
    kwargs: dict[str, Any] = {}
    if isinstance(item, tuple):
        if len(item) != 2 or not isinstance(item[1], dict):
            problems.append(f"{where}: a (func, kwargs) pair needs a dict of kwargs, got {item!r}")
            return None
        item, kwargs = item[0], dict(item[1])
    if isinstance(item, str):
        from hcsflow.functions import function_registry

        try:
            res = function_registry.resolve(item, preference)
        except KeyError as exc:
            problems.append(f"{where}: {exc.args[0]}")
            return None
        except ConfigurationError as exc:
            problems.append(f"{where}: {exc}")
            return None
        func: Callable[..., Any] = res.func
        label = item
        mtype_in = mtype_out = res.memory_type
        impl = f"{res.memory_type} ({res.reason})"
    elif callable(item):
        func = item
        label = getattr(item, "__name__", repr(item))
        mtype_in = _memory_type_name(getattr(item, "input_memory_type", None)) or "numpy"
        mtype_out = _memory_type_name(getattr(item, "output_memory_type", None)) or mtype_in
        declared = getattr(item, "input_memory_type", None) is not None
        impl = f"{mtype_in} ({'declared' if declared else 'undecorated: numpy assumed'})"
    else:
        problems.append(
            f"{where}: {item!r} is not a function, a registered function name or a "
            f"(func, kwargs) pair"
        )
        return None
    for m in (mtype_in, mtype_out):
        if m not in _KNOWN_MEMORY_TYPES:
            problems.append(f"{where}: function {label!r} declares unknown memory type {m!r}")
            return None
    from hcsflow.functions import framework_available

    if not framework_available(mtype_in) or not framework_available(mtype_out):
        problems.append(
            f"{where}: function {label!r} needs {mtype_in}/{mtype_out}, which is not installed "
            f"(pip install 'hcsflow[{mtype_in}]')"
        )
        return None
    specials_out = tuple(get_special_outputs(func).items())
    specials_in = get_special_inputs(func)
    target = func.load() if hasattr(func, "load") and callable(func.load) else func
    _check_kwargs(target, label, kwargs, specials_in, where, problems)
    return FunctionCall(
        label=label,
        func=func,
        kwargs=kwargs,
        input_memory_type=mtype_in,
        output_memory_type=mtype_out,
        implementation=impl,
        special_outputs=specials_out,
        special_inputs=specials_in,
    )


def _check_kwargs(
    func: Callable[..., Any],
    label: str,
    kwargs: dict[str, Any],
    specials_in: tuple[str, ...],
    where: str,
    problems: list[str],
) -> None:
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return
    for key in specials_in:
        if key in kwargs:
            problems.append(
                f"{where}: {label!r} gets {key!r} as a special input; do not pass it "
                f"as a keyword argument too"
            )
    try:
        sig.bind(object(), **kwargs, **{k: None for k in specials_in})
    except TypeError as exc:
        problems.append(
            f"{where}: {label!r} cannot be called with the step's arguments {sorted(kwargs)}: {exc}"
        )


def _chain(
    pattern: Any, where: str, preference: Sequence[str], problems: list[str]
) -> tuple[FunctionCall, ...]:
    items = pattern if isinstance(pattern, list) else [pattern]
    if not items:
        problems.append(f"{where}: an empty function list")
    calls = []
    for i, item in enumerate(items):
        sub = f"{where}[{i}]" if isinstance(pattern, list) else where
        call = _resolve_one(item, sub, preference, problems)
        if call is not None:
            calls.append(call)
    return tuple(calls)


def _component_values(plate: PlateIndex | None, component: str) -> tuple[int, ...] | None:
    if plate is None:
        return None
    return {"site": plate.sites, "channel": plate.channels, "z": plate.zs, "t": plate.ts}[component]


_FOLDER_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-+")
_FOLDER_MAX = 100


def step_folder_names(names: Sequence[str], template: str = "{name}") -> list[str]:
    """The results/checkpoint folder name of each step, in pipeline order.

    ``template`` is formatted with ``index`` and ``name``; every character other than
    ASCII letters, digits, ``_``, ``-`` and ``+`` becomes ``_`` (no dots: no hidden,
    ``..`` or ``*.zarr`` folders), the name is cut at 100 characters, and an empty one is
    ``step``.  Names are unique ignoring case (for macOS and Windows disks): the first
    step keeps a name, later steps with the same name get ``_2``, ``_3``... (the first
    number that no step's own name uses).  A step's folder therefore depends only on
    its own name and on earlier steps of the same name.
    """
    bases = []
    for index, name in enumerate(names):
        try:
            raw = template.format(index=index, name=name)
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigurationError(
                f"step_dir_template {template!r} may use only {{index}} and {{name}}: {exc}"
            ) from None
        safe = "".join(c if c in _FOLDER_CHARS else "_" for c in raw)[:_FOLDER_MAX]
        bases.append(safe or "step")
    reserved = {b.lower() for b in bases}
    taken: set[str] = set()
    out = []
    for base in bases:
        name, k = base, 1
        while name.lower() in taken or (k > 1 and name.lower() in reserved):
            k += 1
            suffix = f"_{k}"
            name = base[: _FOLDER_MAX - len(suffix)] + suffix
        taken.add(name.lower())
        out.append(name)
    return out


def compile_pipeline(
    pipeline: Pipeline | Sequence[FunctionStep],
    plate: str | PlateIndex,
    output_dir: str,
    config: GlobalPipelineConfig | None = None,
    *,
    pipeline_config: PipelineConfig | None = None,
    layout: PlateLayout | None = None,
    filemanager: FileManager | None = None,
    input_backend: Backend | str = Backend.DISK,
) -> RunPlan:
    """Compile ``pipeline`` for ``plate`` (a directory or an indexed plate).

    ``output_dir`` is the directory the run writes into.  Raises
    :class:`CompilationError` listing every problem.
    """
    problems: list[str] = []
    global_config = config if config is not None else GlobalPipelineConfig()
    if not isinstance(global_config, GlobalPipelineConfig):
        raise CompilationError(
            [f"config must be a GlobalPipelineConfig, got {type(global_config).__name__}"]
        )
    if isinstance(pipeline, Pipeline):
        steps = list(pipeline.steps)
        if pipeline_config is None:
            pipeline_config = pipeline.config
    else:
        steps = list(pipeline)
    run_config = resolve_config(global_config, pipeline_config)

    plate_index: PlateIndex | None = None
    if isinstance(plate, PlateIndex):
        plate_index = plate
    else:
        try:
            plate_index = read_plate(
                str(plate),
                filemanager=filemanager,
                backend=input_backend,
                layout=layout,
                format=run_config.input_format,
                strict=bool(run_config.strict_input),
            )
        except HcsflowError as exc:
            problems.append(f"plate {plate!s}: {exc}")

    if not steps:
        problems.append("the pipeline has no steps")
    out = vpaths.normalize_path(os.path.abspath(os.fspath(output_dir)))
    assert run_config.vfs is not None and run_config.path_planning is not None
    run_backend = str(run_config.vfs.materialization_backend)
    images_name = run_config.path_planning.images_dir or "images"
    if run_backend == Backend.ZARR.value and not images_name.endswith(".zarr"):
        images_name += ".zarr"
    images_dir = vpaths.join(out, images_name)
    dir_names = step_folder_names(
        [s.name if isinstance(s, FunctionStep) else f"step{i}" for i, s in enumerate(steps)],
        run_config.path_planning.step_dir_template or "{name}",
    )
    plans: list[StepPlan] = []
    produced: dict[str, str] = {}
    for index, step in enumerate(steps):
        if not isinstance(step, FunctionStep):
            problems.append(f"step {index}: expected a FunctionStep, got {type(step).__name__}")
            continue
        where = f"step {index} ({step.name})"
        try:
            cfg = resolve_config(global_config, pipeline_config, step.config)
        except HcsflowError as exc:
            problems.append(f"{where}: {exc}")
            continue
        assert cfg.device is not None and cfg.vfs is not None and cfg.path_planning is not None
        preference = cfg.device.implementation_preference or ("numpy",)
        calls: dict[str | None, tuple[FunctionCall, ...]] = {}
        if isinstance(step.func, dict):
            assert step.group_by is not None
            values = _component_values(plate_index, step.group_by)
            keys = {str(k): v for k, v in step.func.items()}
            if values is not None:
                wanted = {str(v + 1) for v in values}
                missing = sorted(wanted - set(keys), key=int)
                extra = sorted(set(keys) - wanted)
                if missing:
                    problems.append(
                        f"{where}: no function for {step.group_by} "
                        f"{', '.join(missing)} (dict keys: {sorted(keys)})"
                    )
                if extra:
                    problems.append(
                        f"{where}: dict keys {extra} match no {step.group_by} of the "
                        f"plate (it has {sorted(wanted, key=int)})"
                    )
            for key, pattern in keys.items():
                calls[key] = _chain(
                    pattern, f"{where}[{step.group_by}={key}]", preference, problems
                )
        else:
            pattern = step.func
            if step.kwargs:
                # a single function: the step's keyword arguments are its arguments
                if (
                    isinstance(pattern, tuple)
                    and len(pattern) == 2
                    and isinstance(pattern[1], dict)
                ):
                    pattern = (pattern[0], {**step.kwargs, **pattern[1]})
                else:
                    pattern = (pattern, dict(step.kwargs))
            calls[None] = _chain(pattern, where, preference, problems)
        # special I/O: inputs must come from an earlier function, keys produced once
        for chain in calls.values():
            seen_here: set[str] = set()
            for call in chain:
                for key in call.special_inputs:
                    if key not in produced and key not in seen_here:
                        problems.append(
                            f"{where}: {call.label!r} needs special input {key!r}, "
                            f"which no earlier function produces"
                        )
                for key, _ in call.special_outputs:
                    seen_here.add(key)
        step_keys: set[str] = set()
        for chain in calls.values():
            for call in chain:
                for key, _ in call.special_outputs:
                    if key in produced:
                        problems.append(
                            f"{where}: special output {key!r} is already produced "
                            f"by {produced[key]}"
                        )
                    elif isinstance(step.func, dict):
                        step_keys.add(key)
                    elif key in step_keys:
                        problems.append(
                            f"{where}: special output {key!r} is produced twice in the chain"
                        )
                    else:
                        step_keys.add(key)
        for key in step_keys:
            produced[key] = where
        dir_name = dir_names[index]
        results_dir = vpaths.join(out, cfg.path_planning.results_dir or "results", dir_name)
        mat = cfg.materialization_defaults
        assert mat is not None
        checkpoint = None
        mat_backend = str(cfg.vfs.materialization_backend)
        if mat.enabled:
            cp_backend = str(mat.backend or mat_backend)
            sub = mat.sub_dir or f"checkpoints/{dir_name}"
            if cp_backend == Backend.ZARR.value and not sub.endswith(".zarr"):
                sub += ".zarr"
            try:
                cp_dir = vpaths.join(out, sub)
            except HcsflowError as exc:
                problems.append(f"{where}: checkpoint sub_dir {sub!r}: {exc}")
                cp_dir = out
            if not vpaths.is_relative_to(cp_dir, out) or cp_dir == out:
                problems.append(
                    f"{where}: checkpoint sub_dir {sub!r} must be a folder inside the "
                    f"output directory"
                )
            checkpoint = CheckpointPlan(config=mat, backend=cp_backend, directory=cp_dir)
        # NGFF labels live inside an image: a step materializing to zarr in a run whose
        # images go to disk gets a plate of its own output images to attach them to
        zarr_store: str | None = None
        writes_zarr_store = False
        if run_backend == Backend.ZARR.value:
            zarr_store = images_dir
        elif mat_backend == Backend.ZARR.value and any(
            m is not None for chain in calls.values() for c in chain for _, m in c.special_outputs
        ):
            zarr_store = vpaths.join(results_dir, "images.zarr")
            writes_zarr_store = True
        plans.append(
            StepPlan(
                index=index,
                name=step.name,
                dir_name=dir_name,
                variable_components=step.variable_components,
                group_by=step.group_by,
                calls=calls,
                check_finite=bool(cfg.check_finite),
                gpu_id=cfg.device.gpu_id,
                materialization_backend=mat_backend,
                results_dir=results_dir,
                checkpoint=checkpoint,
                zarr_store=zarr_store,
                writes_zarr_store=writes_zarr_store,
            )
        )

    zarr_config = None
    # any zarr output (images, a checkpoint, or a step's materializers, which may also
    # write through the well's zarr backend) needs the run's ZarrConfig
    uses_zarr = run_backend == Backend.ZARR.value or any(
        p.materialization_backend == Backend.ZARR.value
        or (p.checkpoint is not None and p.checkpoint.backend == Backend.ZARR.value)
        for p in plans
    )
    if uses_zarr:
        try:
            zarr_config = zarr_config_of(run_config)
        except ImportError as exc:
            problems.append(f"zarr materialization is not available: {exc}")
    if problems:
        raise CompilationError(problems)
    assert plate_index is not None
    wanted_wells = run_config.well_filter
    wells = list(plate_index.wells)
    if wanted_wells is not None:
        unknown = [w for w in wanted_wells if w not in plate_index.wells]
        if unknown:
            raise CompilationError([f"well_filter names wells the plate does not have: {unknown}"])
        wells = [w for w in wells if w in wanted_wells]
    step_tuple = tuple(plans)
    metadata = plate_index.image_metadata()
    tiff_config = tiff_config_of(run_config)
    well_plans = tuple(
        WellPlan(
            well=w,
            inputs=plate_index.wells[w],
            input_backend=plate_index.backend,
            steps=step_tuple,
            output_dir=out,
            images_dir=images_dir,
            materialization_backend=run_backend,
            zarr_config=zarr_config,
            multi_z=len(plate_index.zs) > 1,
            multi_t=len(plate_index.ts) > 1,
            fsync=bool(run_config.vfs.fsync),
            reader=plate_index.reader,
            metadata=metadata,
            tiff_config=tiff_config,
        )
        for w in wells
    )
    return RunPlan(
        wells=well_plans, steps=step_tuple, config=run_config, plate=plate_index, output_dir=out
    )


def describe_steps(
    steps: Sequence[StepPlan], output_dir: str | None = None
) -> list[dict[str, Any]]:
    """A JSON-ready description of compiled steps (for the manifest).

    Folders inside ``output_dir`` are given relative to it: a run is compiled into a
    staging directory that is renamed when the run is published.
    """

    def rel(path: str | None) -> str | None:
        if path is None or output_dir is None or not vpaths.is_relative_to(path, output_dir):
            return path
        return vpaths.relative_to(path, output_dir) or "."

    out = []
    for s in steps:
        out.append(
            {
                "index": s.index,
                "name": s.name,
                "variable_components": list(s.variable_components),
                "group_by": s.group_by,
                "functions": {
                    str(k): [
                        {
                            "function": c.label,
                            "callable": as_callable_name(c.func),
                            "implementation": c.implementation,
                            "kwargs": {kk: _kwarg_repr(v) for kk, v in c.kwargs.items()},
                            "special_outputs": [k2 for k2, _ in c.special_outputs],
                            "special_inputs": list(c.special_inputs),
                        }
                        for c in chain
                    ]
                    for k, chain in s.calls.items()
                },
                "results_dir": rel(s.results_dir),
                "materialization_backend": s.materialization_backend,
                "checkpoint": rel(s.checkpoint.directory) if s.checkpoint else None,
                "zarr_store": rel(s.zarr_store),
            }
        )
    return out


def _kwarg_repr(v: Any) -> Any:
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    shape = getattr(v, "shape", None)
    if shape is not None:
        return f"array{tuple(shape)}"
    return repr(v)
