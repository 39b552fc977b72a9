"""Running one well: load, stack, run the steps, stage and materialize, write images.

:func:`execute_well` is what every executor runs (it is module-level and takes a
picklable :class:`WellPlan`, so processes and Dask workers can run it).  Each well gets
its own :class:`~hcsflow.storage.BackendRegistry` with a fresh memory backend for its
intermediates and staged special outputs; it is emptied when the well finishes.  A
failure is returned as a ``failed`` :class:`WellResult` carrying the traceback, never
raised, so one bad well does not stop the others.
"""

from __future__ import annotations

import functools
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hcsflow import paths as vpaths
from hcsflow.errors import (
    MaterializationError,
    ShapeError,
    SpecialIOError,
    StepExecutionError,
    describe_error,
)
from hcsflow.pipeline._compiler import FunctionCall, StepPlan, WellPlan
from hcsflow.pipeline._layouts import image_filename
from hcsflow.pipeline._materialize import NEUTRALIZED_CSV, MaterializationFileManager
from hcsflow.pipeline._step import COMPONENT_ATTR
from hcsflow.readers import ImageMetadata, PlateImage
from hcsflow.storage import (
    Backend,
    BackendRegistry,
    DiskStorageBackend,
    FileManager,
    MemoryStorageBackend,
    StorageBackend,
    ZarrStorageBackend,
)
from hcsflow.storage.plate import ImageCoordinates

__all__ = ["WellResult", "execute_well", "well_registry"]

_COORD_COLUMNS = ("site", "channel", "z", "t")


@dataclass
class WellResult:
    """What a worker reports back about one well (small: no image data)."""

    well: str
    status: str = "ok"
    error: str | None = None
    error_type: str | None = None
    traceback: str | None = None
    started: float = 0.0
    duration_s: float = 0.0
    step_seconds: dict[str, float] = field(default_factory=dict)
    conversion_bytes: int = 0
    conversion_events: int = 0
    images_in: int = 0
    images_out: int = 0
    outputs: list[dict[str, Any]] = field(default_factory=list)
    attempt: int = 1
    """Which attempt of the well this result is (``retries`` counts from the second)."""
    ran_again_after: list[str] = field(default_factory=list)
    """Why each earlier start of the well in this run did not finish: a lost worker,
    a failed commit, a worker stopped with its pool after another well's worker died."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return dict(self.__dict__)


def well_registry(*, fsync: bool = True, zarr_config: Any = None) -> BackendRegistry:
    """A fresh registry for one well: its own memory backend, plus disk and zarr.

    Every backend a materializer may name is there (``filemanager.save(..., "zarr")``
    included); zarr is created on first use, with the run's ``ZarrConfig``.  OME-Zarr
    images and labels are written with the storage layer's plate helpers, which place
    them by well and field rather than by file path.
    """
    backends: dict[str, StorageBackend] = {
        Backend.MEMORY.value: MemoryStorageBackend(),
        Backend.DISK.value: DiskStorageBackend(fsync=fsync),
    }
    zarr = functools.partial(ZarrStorageBackend, config=zarr_config)
    return BackendRegistry(backends, factories={Backend.ZARR.value: zarr})


def _zarr_target(plan: WellPlan, store: str | None) -> tuple[str | None, dict[str, Any] | None]:
    """(local path or URL, fsspec options) of a zarr store named by its virtual path."""
    if plan.output is None or store is None:
        return store, None
    return plan.output.store_url(store), plan.output.storage_options


class _Well:
    """State of one well while it runs: its file manager and its current images."""

    def __init__(self, plan: WellPlan, result: WellResult):
        self.plan = plan
        self.result = result
        self.registry = (
            plan.output.registry(plan.zarr_config)
            if plan.output is not None
            else well_registry(fsync=plan.fsync, zarr_config=plan.zarr_config)
        )
        self.fm = FileManager(self.registry)
        self.mem = Backend.MEMORY.value
        self.root = f"/{plan.well}"
        # coords -> memory path of the current 2-D slice
        self.images: dict[ImageCoordinates, str] = {}
        # input planes not read yet: read through the plate reader when a group needs them
        self.sources: dict[ImageCoordinates, PlateImage] = {}
        self.input_shape: tuple[tuple[int, ...], str] | None = None
        # special output key -> {group key: memory path}
        self.staged: dict[str, dict[tuple[tuple[str, int], ...], str]] = {}
        # staged special outputs waiting for their materializer (run after the images)
        self.pending: list[tuple[Any, ...]] = []
        # zarr store -> coordinates of the images written there (what labels must fit)
        self.zarr_images: dict[str, tuple[ImageCoordinates, ...]] = {}
        # components with more than one value in this well (named in output file names)
        self.varying = {
            c
            for c in _COORD_COLUMNS
            if len({getattr(i.coords, COMPONENT_ATTR[c]) for i in plan.inputs}) > 1
        }
        self.fm.ensure_directory(self.root, self.mem)

    def filename(self, coords: ImageCoordinates, ext: str = ".tif") -> str:
        return image_filename(coords, ext, with_z=self.plan.multi_z, with_t=self.plan.multi_t)

    def free(self) -> None:
        """Empty the well's memory backend and free GPU caches of the frameworks it used."""
        from hcsflow.memory import cleanup_gpu_memory_by_framework

        self.fm.delete_all(self.root, self.mem)
        self.images.clear()
        self.sources.clear()
        self.staged.clear()
        self.pending.clear()
        used = {
            (m, step.gpu_id)
            for step in self.plan.steps
            for chain in step.calls.values()
            for call in chain
            for m in (call.input_memory_type, call.output_memory_type)
            if m != "numpy"
        }
        for memory_type, gpu_id in sorted(used, key=str):
            cleanup_gpu_memory_by_framework(memory_type, gpu_id)


def execute_well(plan: WellPlan) -> WellResult:
    """Process one well; return its :class:`WellResult` (``failed`` with a traceback on error)."""
    from hcsflow.memory import record_conversions

    result = WellResult(well=plan.well, started=time.time())
    t0 = time.perf_counter()
    state: _Well | None = None
    try:
        with record_conversions() as rec:
            state = _Well(plan, result)
            _load_inputs(state)
            for step in plan.steps:
                ts = time.perf_counter()
                _run_step(state, step)
                result.step_seconds[f"{step.index:02d}_{step.name}"] = time.perf_counter() - ts
            ts = time.perf_counter()
            _write_images(state)
            _materialize_all(state)
            result.step_seconds["write_outputs"] = time.perf_counter() - ts
        result.conversion_bytes = int(rec.bytes_copied)
        result.conversion_events = len(rec.events)
    except Exception as exc:  # reported in the manifest with its traceback, never dropped
        result.status = "failed"
        result.error = describe_error(exc)  # one line, with the causes (a decoder's reason)
        result.error_type = type(exc).__name__
        result.traceback = traceback.format_exc()
    finally:
        if state is not None:
            state.free()
        result.duration_s = time.perf_counter() - t0
    return result


# --------------------------------------------------------------------------- inputs


def _load_inputs(state: _Well) -> None:
    """Register the well's input planes; they are read when a step's group needs them.

    Reading lazily, group by group, keeps only the planes of the groups processed so
    far in memory, and reads each plane once.
    """
    plan = state.plan
    in_dir = f"{state.root}/input"
    state.fm.ensure_directory(in_dir, state.mem)
    for img in plan.inputs:
        state.images[img.coords] = f"{in_dir}/{state.filename(img.coords)}"
        state.sources[img.coords] = img
    state.result.images_in = len(plan.inputs)


def _read_sources(state: _Well, members: list[ImageCoordinates]) -> None:
    """Read the input planes among ``members`` that are not in memory yet."""
    todo = [state.sources[c] for c in members if c in state.sources]
    if not todo:
        return
    plan = state.plan
    if plan.reader is not None:
        arrays = plan.reader.load_planes(todo, state.fm, plan.input_backend)
    elif plan.input_backend == Backend.ZARR.value:
        arrays = _load_zarr_planes(plan, todo)
    else:
        arrays = state.fm.load_batch([img.path for img in todo], plan.input_backend)
    for img, arr in zip(todo, arrays, strict=True):
        arr = np.asarray(arr)
        while arr.ndim > 2 and arr.shape[0] == 1:
            arr = arr[0]
        where = img.path if img.page is None else f"{img.path} page {img.page}"
        if arr.ndim != 2:
            raise ShapeError(
                f"well {plan.well}: image {where!r} is not a 2-D plane (shape {arr.shape})"
            )
        if state.input_shape is None:
            state.input_shape = (arr.shape, where)
        elif arr.shape != state.input_shape[0]:
            raise ShapeError(
                f"well {plan.well}: mixed image sizes: {state.input_shape[1]!r} is "
                f"{state.input_shape[0]} but {where!r} is {arr.shape}"
            )
        state.fm.save(arr, state.images[img.coords], state.mem)
        del state.sources[img.coords]


def _load_zarr_planes(plan: WellPlan, images: list[PlateImage]) -> list[np.ndarray]:
    """Planes from an OME-Zarr plate, reading each field image once."""
    from hcsflow.storage import open_image

    fields: dict[int, np.ndarray] = {}
    planes = []
    for img in images:
        c = img.coords
        if c.field not in fields:
            fields[c.field] = np.asarray(open_image(img.path, plan.well, c.field)[...])
        arr = fields[c.field]
        planes.append(arr[c.t, c.channel, c.z] if arr.ndim == 5 else arr[c.channel, c.z])
    return planes


# --------------------------------------------------------------------------- steps


def _group_key(coords: ImageCoordinates, variable: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    return tuple(
        (c, getattr(coords, COMPONENT_ATTR[c])) for c in _COORD_COLUMNS if c not in variable
    )


def _groups(
    state: _Well, step: StepPlan
) -> list[tuple[tuple[tuple[str, int], ...], list[ImageCoordinates]]]:
    groups: dict[tuple[tuple[str, int], ...], list[ImageCoordinates]] = {}
    for coords in state.images:
        groups.setdefault(_group_key(coords, step.variable_components), []).append(coords)
    order = [COMPONENT_ATTR[c] for c in step.variable_components]
    out = []
    for key in sorted(groups):
        members = sorted(groups[key], key=lambda c: tuple(getattr(c, a) for a in order))
        out.append((key, members))
    return out


def _group_label(key: tuple[tuple[str, int], ...], state: _Well) -> str:
    """Suffix naming a group in file names, only for components that vary in the well."""
    letters = {"site": "s", "channel": "w", "z": "z", "t": "t"}
    parts = [f"{letters[c]}{v + 1}" for c, v in key if c in state.varying]
    return "_".join(parts)


def _run_step(state: _Well, step: StepPlan) -> None:
    from hcsflow.memory import stack_slices, unstack_slices

    out_dir = f"{state.root}/step{step.index:02d}"
    state.fm.ensure_directory(out_dir, state.mem)
    new_images: dict[ImageCoordinates, str] = {}
    where = f"step {step.index} ({step.name}), well {state.plan.well}"
    for key, members in _groups(state, step):
        chain = _chain_for(step, key, where)
        _read_sources(state, members)
        slices = state.fm.load_batch([state.images[c] for c in members], state.mem)
        stack = stack_slices(
            slices, chain[0].input_memory_type, step.gpu_id, allow_cpu_roundtrip=True
        )
        label = _group_label(key, state)
        for call in chain:
            stack = _call(state, step, call, stack, key, members, label, where)
        out_type = chain[-1].output_memory_type
        planes = unstack_slices(stack, out_type, step.gpu_id, allow_cpu_roundtrip=True)
        if len(planes) == len(members):
            targets = members
        elif len(planes) == 1:
            targets = [members[0]]
        else:
            raise ShapeError(
                f"{where}: the step returned {len(planes)} planes for a stack of "
                f"{len(members)}; a step returns as many planes as it gets, or one"
            )
        for coords, plane in zip(targets, planes, strict=True):
            mpath = f"{out_dir}/{state.filename(coords)}"
            state.fm.save(plane, mpath, state.mem)
            new_images[coords] = mpath
    old_dirs = {vpaths.parent(p) for p in state.images.values()}
    state.images = new_images
    for d in old_dirs:
        state.fm.delete_all(d, state.mem)
    if step.checkpoint is not None and step.checkpoint.config.applies_to(state.plan.well):
        _write_checkpoint(state, step)
    if step.writes_zarr_store:
        assert step.zarr_store is not None
        # recorded as a checkpoint: the step's images as it left them, finalized with the rest
        _save_images(state, Backend.ZARR.value, step.zarr_store, "checkpoint")


def _chain_for(
    step: StepPlan, key: tuple[tuple[str, int], ...], where: str
) -> tuple[FunctionCall, ...]:
    if step.group_by is None:
        return step.calls[None]
    value = dict(key)[step.group_by]
    chain = step.calls.get(str(value + 1))
    if chain is None:
        raise StepExecutionError(f"{where}: no function for {step.group_by} {value + 1}")
    return chain


def _call(
    state: _Well,
    step: StepPlan,
    call: FunctionCall,
    stack: Any,
    key: tuple[tuple[str, int], ...],
    members: list[ImageCoordinates],
    label: str,
    where: str,
) -> Any:
    from hcsflow.memory import to_memory_type

    fwhere = f"{where}, function {call.label!r}"
    stack = to_memory_type(stack, call.input_memory_type, step.gpu_id, allow_cpu_roundtrip=True)
    kwargs = dict(call.kwargs)
    for skey in call.special_inputs:
        kwargs[skey] = _special_input(state, skey, key, fwhere)
    try:
        out = call.func(stack, **kwargs)
    except Exception as exc:
        # the original exception stays attached as __cause__ (and in the traceback)
        raise StepExecutionError(f"{fwhere} raised {type(exc).__name__}: {exc}") from exc
    specials = call.special_outputs
    if specials:
        if not isinstance(out, tuple) or len(out) != 1 + len(specials):
            got = f"a tuple of {len(out)}" if isinstance(out, tuple) else type(out).__name__
            raise SpecialIOError(
                f"{fwhere} declares special outputs {[k for k, _ in specials]} and must return "
                f"(main_output, {', '.join(k for k, _ in specials)}), got {got}"
            )
        main, extras = out[0], out[1:]
    else:
        if isinstance(out, tuple):
            raise SpecialIOError(
                f"{fwhere} returned a tuple of {len(out)} but declares no special outputs "
                f"(decorate it with @special_outputs)"
            )
        main, extras = out, ()
    shape = tuple(getattr(main, "shape", ()))
    if len(shape) != 3:
        raise SpecialIOError(
            f"{fwhere} must return a 3-D [Z, Y, X] main output, got "
            f"{type(main).__name__} with shape {shape}"
        )
    if step.check_finite:
        _check_finite(main, fwhere)
    for (skey, materializer), value in zip(specials, extras, strict=True):
        _stage(state, step, skey, materializer, value, key, members, label, fwhere)
    return main


def _check_finite(x: Any, where: str) -> None:
    from hcsflow.memory import MemoryType, detect_memory_type, to_numpy

    if isinstance(x, np.ndarray):
        # min and max propagate NaN and expose inf: two reductions, no boolean temporary
        bad = (
            x.dtype.kind == "f"
            and x.size > 0
            and not (np.isfinite(x.min()) and np.isfinite(x.max()))
        ) or (x.dtype.kind == "c" and not np.isfinite(x).all())
    elif detect_memory_type(x) == MemoryType.TORCH:
        import torch  # already imported: x is a tensor

        bad = bool(torch.is_floating_point(x) and not torch.isfinite(x).all())
    else:
        arr = to_numpy(x)
        bad = arr.dtype.kind in "fc" and not np.isfinite(arr).all()
    if bad:
        raise StepExecutionError(
            f"{where} returned NaN or infinite values (set check_finite=False to allow them)"
        )


def _special_input(state: _Well, skey: str, key: tuple[tuple[str, int], ...], where: str) -> Any:
    staged = state.staged.get(skey)
    if not staged:
        raise SpecialIOError(f"{where}: special input {skey!r} was not staged for this well")
    if len(staged) == 1:
        path = next(iter(staged.values()))
    else:
        mine = dict(key)
        matches = [p for gk, p in staged.items() if all(mine.get(c, v) == v for c, v in gk)]
        if len(matches) != 1:
            raise SpecialIOError(
                f"{where}: special input {skey!r} was staged for {len(staged)} groups and "
                f"{len(matches)} of them match this group {mine}"
            )
        path = matches[0]
    return state.fm.load(path, state.mem)


def _annotate(value: Any, state: _Well, members: list[ImageCoordinates]) -> Any:
    """Add plate coordinates to a table with a ``slice_index`` column (tidy rows)."""
    import sys

    pd = sys.modules.get("pandas")
    if pd is None or not isinstance(value, pd.DataFrame) or "slice_index" not in value.columns:
        return value
    idx = value["slice_index"].to_numpy()
    if len(idx) and (idx.min() < 0 or idx.max() >= len(members)):
        return value
    pos = idx.astype(np.int64)
    coords: dict[str, Any] = {}
    if "well" not in value.columns:
        coords["well"] = [state.plan.well] * len(idx)
    for col, attr in (("site", "field"), ("channel", "channel"), ("z", "z"), ("t", "t")):
        if col not in value.columns:
            values = np.array([getattr(m, attr) + 1 for m in members], dtype=np.int64)
            coords[col] = values[pos]
    front = pd.DataFrame(coords, index=value.index)
    return pd.concat([front, value], axis=1)


def _stage(
    state: _Well,
    step: StepPlan,
    skey: str,
    materializer: Callable[..., Any] | None,
    value: Any,
    key: tuple[tuple[str, int], ...],
    members: list[ImageCoordinates],
    label: str,
    where: str,
) -> None:
    name = f"{state.plan.well}_{skey}" + (f"_{label}" if label else "")
    vpath = vpaths.join(step.results_dir, f"{name}.pkl")
    value = _annotate(value, state, members)
    staging_dir = vpaths.join(state.root, "special", step.dir_name)
    state.fm.ensure_directory(staging_dir, state.mem)
    mem_path = vpaths.join(staging_dir, f"{name}.pkl")
    state.fm.save(value, mem_path, state.mem, overwrite=True)
    state.staged.setdefault(skey, {})[key] = mem_path
    if materializer is not None:
        state.pending.append((step, skey, materializer, mem_path, vpath, label, members, where))


def _materialize_all(state: _Well) -> None:
    """Phase 2: run every declared materializer on its staged value (after the images).

    The step's results folder exists on disk before its first materializer runs.
    """
    from hcsflow.pipeline._zarr_out import WellLabels

    ready: set[str] = set()
    labels = WellLabels()  # label planes of all groups, one label image each
    for step, skey, materializer, mem_path, vpath, label, members, where in state.pending:
        store, storage_options = _zarr_target(state.plan, step.zarr_store)
        if step.results_dir not in ready:
            state.fm.ensure_directory(step.results_dir, Backend.DISK.value)
            ready.add(step.results_dir)
        mfm = MaterializationFileManager(
            state.registry,
            materialization_backend=step.materialization_backend,
            well=state.plan.well,
            zarr_store=store,
            zarr_config=state.plan.zarr_config,
            slice_coords=tuple(members),
            storage_options=storage_options,
            tiff_config=state.plan.tiff_config,
            metadata=state.plan.metadata,
            special_output=skey,
            image_coords=state.zarr_images.get(step.zarr_store or "", ()),
            labels=labels,
        )
        data = state.fm.load(mem_path, state.mem)
        name = getattr(materializer, "__name__", repr(materializer))
        try:
            written = materializer(data, vpath, mfm)
        except Exception as exc:
            raise MaterializationError(
                f"{where}: materializer {name!r} for special output {skey!r} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(written, str):
            raise MaterializationError(
                f"{where}: materializer {name!r} for {skey!r} returned "
                f"{type(written).__name__}, not the path it wrote"
            )
        entry = {
            "kind": "special_output",
            "step": step.index,
            "key": skey,
            "group": label,
            "materializer": name,
            "path": written,
        }
        if materializer in NEUTRALIZED_CSV:
            entry["formulas_neutralized"] = True
        state.result.outputs.append(entry)
    state.pending.clear()
    try:
        labels.write()
    except Exception as exc:
        raise MaterializationError(
            f"well {state.plan.well}: writing its label images failed: {type(exc).__name__}: {exc}"
        ) from exc


# --------------------------------------------------------------------------- outputs


def _final_arrays(state: _Well) -> tuple[list[ImageCoordinates], list[np.ndarray]]:
    from hcsflow.memory import to_numpy

    coords = sorted(state.images)
    arrays = []
    for c in coords:
        arr = np.asarray(to_numpy(state.fm.load(state.images[c], state.mem)))
        if arr.dtype == bool:
            arr = arr.astype(np.uint8)
        arrays.append(arr)
    return coords, arrays


def _save_images(state: _Well, backend: str, directory: str, what: str) -> int:
    coords, arrays = _final_arrays(state)
    plan = state.plan
    meta = plan.metadata if isinstance(plan.metadata, ImageMetadata) else ImageMetadata()
    if backend == Backend.ZARR.value:
        from hcsflow.pipeline._zarr_out import write_well_zarr

        store, storage_options = _zarr_target(state.plan, directory)
        assert store is not None
        state.zarr_images[directory] = tuple(coords)
        write_well_zarr(
            store,
            plan.well,
            coords,
            arrays,
            plan.zarr_config,
            meta,
            storage_options=storage_options,
        )
    else:
        well_dir = vpaths.join(directory, plan.well)
        state.fm.ensure_directory(well_dir, backend)
        paths = [vpaths.join(well_dir, state.filename(c)) for c in coords]
        _save_tiffs(state, backend, coords, arrays, paths, meta)
    state.result.outputs.append(
        {"kind": what, "backend": backend, "path": directory, "images": len(arrays)}
    )
    return len(arrays)


def _save_tiffs(
    state: _Well,
    backend: str,
    coords: list[ImageCoordinates],
    arrays: list[np.ndarray],
    paths: list[str],
    meta: ImageMetadata,
) -> None:
    """Save the well's planes; TIFFs as compressed OME-TIFFs carrying ``meta``.

    Files sharing their options (one channel, one dtype) go in one ``save_batch``, which
    checks every target before writing any.
    """
    from hcsflow.storage import TiffConfig

    cfg = state.plan.tiff_config if state.plan.tiff_config is not None else TiffConfig()
    batches: dict[tuple[int, str, bool], list[int]] = {}
    for i, p in enumerate(paths):
        is_tiff = p.lower().endswith((".tif", ".tiff"))
        batches.setdefault((coords[i].channel, arrays[i].dtype.str, is_tiff), []).append(i)
    for (channel, dtype, is_tiff), idx in batches.items():
        options: dict[str, Any] = {}
        if is_tiff:
            options.update(cfg.save_options(np.dtype(dtype)))
            if cfg.ome:
                options["ome"] = meta.ome_tiff(channel, "YX")
        state.fm.save_batch([arrays[i] for i in idx], [paths[i] for i in idx], backend, **options)


def _write_images(state: _Well) -> None:
    state.result.images_out = _save_images(
        state, state.plan.materialization_backend, state.plan.images_dir, "images"
    )


def _write_checkpoint(state: _Well, step: StepPlan) -> None:
    assert step.checkpoint is not None
    _save_images(state, step.checkpoint.backend, step.checkpoint.directory, "checkpoint")
