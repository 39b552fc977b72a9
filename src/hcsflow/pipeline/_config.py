"""Configuration: frozen dataclasses resolved step -> pipeline -> global.

Every field of every configuration class defaults to ``None``, meaning "inherit" (one
exception: ``StepMaterializationConfig.enabled`` defaults to ``True``, because a
materialization configuration given explicitly asks for materialization).  A
:class:`GlobalPipelineConfig` fills its own unset fields from the built-in defaults
(:data:`DEFAULTS`) when it is created, so a global configuration is always complete.
:func:`resolve_config` then merges, field by field and recursively into nested
configurations, the first value that is not ``None`` from the step, the pipeline and
the global configuration.  ``ZarrConfig`` (owned by the storage layer) is the exception:
it is replaced as a whole, because its fields carry their own defaults (so is
``TiffConfig``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any, Literal

from hcsflow.errors import ConfigurationError
from hcsflow.storage import Backend, TiffConfig
from hcsflow.storage.plate import parse_well

__all__ = [
    "VFSConfig",
    "PathPlanningConfig",
    "StepMaterializationConfig",
    "DeviceConfig",
    "GlobalPipelineConfig",
    "PipelineConfig",
    "StepConfig",
    "DEFAULTS",
    "resolve_config",
    "config_to_dict",
    "normalize_well_filter",
    "zarr_config_of",
    "tiff_config_of",
]

ExecutorName = Literal["inprocess", "threads", "processes", "dask"]
_EXECUTORS = ("inprocess", "threads", "processes", "dask")


def _backend_value(value: Any, what: str) -> str | None:
    if value is None:
        return None
    try:
        return Backend(value).value
    except ValueError:
        raise ConfigurationError(
            f"{what} must be one of {[b.value for b in Backend]}, got {value!r}"
        ) from None


@dataclass(frozen=True)
class VFSConfig:
    """Where data lives: intermediates (memory) and persistent outputs (disk or zarr)."""

    intermediate_backend: Backend | str | None = None
    materialization_backend: Backend | str | None = None
    fsync: bool | None = None
    """Flush each file written to disk to the device before it is renamed into place
    (survives power loss).  Writes are atomic either way (temporary name + rename)."""

    def __post_init__(self) -> None:
        inter = _backend_value(self.intermediate_backend, "VFSConfig.intermediate_backend")
        mat = _backend_value(self.materialization_backend, "VFSConfig.materialization_backend")
        if inter is not None and inter != Backend.MEMORY.value:
            raise ConfigurationError(
                f"VFSConfig.intermediate_backend must be 'memory' (each well keeps its "
                f"intermediates in its own memory backend), got {inter!r}"
            )
        if mat == Backend.MEMORY.value:
            raise ConfigurationError(
                "VFSConfig.materialization_backend must be 'disk' or 'zarr': memory is not "
                "persistent"
            )
        object.__setattr__(self, "intermediate_backend", inter)
        object.__setattr__(self, "materialization_backend", mat)


@dataclass(frozen=True)
class PathPlanningConfig:
    """Names of the output folders inside a run's output directory."""

    images_dir: str | None = None
    """Final images of every well (``images`` on disk, ``images.zarr`` for zarr)."""
    results_dir: str | None = None
    """Materialized special outputs, one sub-folder per step."""
    step_dir_template: str | None = None
    """Sub-folder name of a step: ``str.format`` with ``index`` and ``name`` (default
    ``"{name}"``, so that removing a step does not rename the folders of later steps).
    The result is made a safe, unique folder name (see ``docs/pipeline.md``)."""

    def __post_init__(self) -> None:
        for f in ("images_dir", "results_dir"):
            v = getattr(self, f)
            if v is not None and (not v or "/" in v or v in (".", "..")):
                raise ConfigurationError(
                    f"PathPlanningConfig.{f} must be a plain folder name, got {v!r}"
                )
        if self.step_dir_template is not None:
            try:
                self.step_dir_template.format(index=0, name="x")
            except (KeyError, IndexError, ValueError) as exc:
                raise ConfigurationError(
                    f"PathPlanningConfig.step_dir_template {self.step_dir_template!r} may use "
                    f"only {{index}} and {{name}}: {exc}"
                ) from None


@dataclass(frozen=True)
class StepMaterializationConfig:
    """Whether a step's main output is saved as a checkpoint, where and for which wells.

    A configuration given explicitly is enabled: ``StepMaterializationConfig()`` on a
    step checkpoints that step.  ``enabled=False`` turns checkpoints off at its level: on
    a step, the step opts out of pipeline or global defaults that enable checkpoints; as
    ``materialization_defaults``, its other fields (``backend``, ``well_filter``...) only
    serve as defaults for the steps that enable their own.  ``enabled=None`` inherits.
    """

    enabled: bool | None = True
    sub_dir: str | None = None
    """Folder for the checkpoint images (default: ``checkpoints/<step folder>``)."""
    well_filter: tuple[str, ...] | None = None
    """Wells concerned (``None`` = all)."""
    well_filter_mode: Literal["include", "exclude"] | None = None
    backend: Backend | str | None = None
    """Backend for checkpoints (default: ``VFSConfig.materialization_backend``)."""

    def __post_init__(self) -> None:
        if self.enabled is not None and not isinstance(self.enabled, bool):
            raise ConfigurationError(
                f"StepMaterializationConfig.enabled must be True, False or None (inherit), "
                f"got {self.enabled!r}"
            )
        if self.well_filter is not None:
            object.__setattr__(self, "well_filter", normalize_well_filter(self.well_filter))
        if self.well_filter_mode not in (None, "include", "exclude"):
            raise ConfigurationError(
                f"well_filter_mode must be 'include' or 'exclude', got {self.well_filter_mode!r}"
            )
        backend = _backend_value(self.backend, "StepMaterializationConfig.backend")
        if backend == Backend.MEMORY.value:
            raise ConfigurationError("a checkpoint backend must be 'disk' or 'zarr'")
        object.__setattr__(self, "backend", backend)

    def applies_to(self, well: str) -> bool:
        """Whether the checkpoint is written for ``well`` (needs a resolved config)."""
        if not self.enabled:
            return False
        if self.well_filter is None:
            return True
        inside = well in self.well_filter
        return inside if self.well_filter_mode != "exclude" else not inside


@dataclass(frozen=True)
class DeviceConfig:
    """Which implementation of a library function runs, and on which GPU."""

    implementation_preference: tuple[str, ...] | None = None
    """Memory types in order of preference; the first installed one that implements the
    function wins (see ``hcsflow.functions``)."""
    gpu_id: int | None = None

    def __post_init__(self) -> None:
        pref = self.implementation_preference
        if pref is not None:
            if isinstance(pref, str):
                pref = (pref,)
            pref = tuple(pref)
            if not pref:
                raise ConfigurationError("implementation_preference must not be empty")
            object.__setattr__(self, "implementation_preference", pref)
        if self.gpu_id is not None and (not isinstance(self.gpu_id, int) or self.gpu_id < 0):
            raise ConfigurationError(f"gpu_id must be a non-negative int, got {self.gpu_id!r}")


def tiff_config_of(cfg: PipelineConfig) -> Any:
    """The ``TiffConfig`` a configuration uses (``TiffConfig()`` when unset)."""
    return cfg.tiff if cfg.tiff is not None else TiffConfig()


def zarr_config_of(cfg: PipelineConfig) -> Any:
    """The ``ZarrConfig`` a configuration uses (``ZarrConfig()`` when unset)."""
    if cfg.zarr is not None:
        return cfg.zarr
    from hcsflow.storage import ZarrConfig

    return ZarrConfig()


@dataclass(frozen=True)
class PipelineConfig:
    """Overrides for one pipeline; ``None`` inherits from the global configuration."""

    num_workers: int | None = None
    executor: ExecutorName | None = None
    vfs: VFSConfig | None = None
    zarr: Any = None
    """A ``hcsflow.storage.ZarrConfig``; ``None`` means ``ZarrConfig()``."""
    path_planning: PathPlanningConfig | None = None
    materialization_defaults: StepMaterializationConfig | None = None
    device: DeviceConfig | None = None
    check_finite: bool | None = None
    fail_fast: bool | None = None
    well_filter: tuple[str, ...] | None = None
    input_format: str | None = None
    """The plate reader to use (``"imagexpress"``, ``"harmony"``, ``"cellvoyager"``,
    ``"ome-tiff"``, ``"ome-zarr"``, ``"files"``, or a registered third-party name);
    ``None`` detects it (``hcsflow.readers``)."""
    strict_input: bool | None = None
    """Refuse a plate with image files its reader cannot place (default: report them
    and run without them)."""
    tiff: Any = None
    """A ``hcsflow.storage.TiffConfig`` for TIFF outputs (default ``TiffConfig()``:
    zlib, OME metadata).  Replaced as a whole, like ``zarr``."""
    scheduler: str | None = None
    """Address of an existing Dask scheduler (``tcp://host:8786``) for ``executor="dask"``;
    ``None`` starts a ``LocalCluster`` of ``num_workers`` workers."""
    retries: int | None = None
    """Times a well is run again after its worker died or its storage failed."""

    def __post_init__(self) -> None:
        _validate_run_fields(self)


@dataclass(frozen=True)
class StepConfig:
    """Overrides for one step; ``None`` inherits from the pipeline and global levels."""

    vfs: VFSConfig | None = None
    materialization: StepMaterializationConfig | None = None
    device: DeviceConfig | None = None
    check_finite: bool | None = None


@dataclass(frozen=True)
class GlobalPipelineConfig(PipelineConfig):
    """The complete configuration; unset fields take the values in :data:`DEFAULTS`."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, default in _DEFAULT_VALUES.items():
            object.__setattr__(self, name, _merge(getattr(self, name), default))


def normalize_well_filter(wells: Any) -> tuple[str, ...]:
    """Canonical well names (``"a1"`` -> ``"A01"``) of a well filter, as a tuple."""
    if isinstance(wells, str):
        wells = (wells,)
    try:
        return tuple(parse_well(w).name for w in wells)
    except TypeError:
        raise ConfigurationError(f"a well filter is a list of well names, got {wells!r}") from None


def _validate_run_fields(cfg: PipelineConfig) -> None:
    if cfg.num_workers is not None and (
        not isinstance(cfg.num_workers, int)
        or isinstance(cfg.num_workers, bool)
        or cfg.num_workers < 1
    ):
        raise ConfigurationError(f"num_workers must be a positive int, got {cfg.num_workers!r}")
    if cfg.executor is not None and cfg.executor not in _EXECUTORS:
        raise ConfigurationError(f"executor must be one of {_EXECUTORS}, got {cfg.executor!r}")
    if cfg.well_filter is not None:
        object.__setattr__(cfg, "well_filter", normalize_well_filter(cfg.well_filter))
    if cfg.input_format is not None and (
        not isinstance(cfg.input_format, str) or not cfg.input_format.strip()
    ):
        raise ConfigurationError(
            f"input_format must be a plate format name such as 'harmony', got {cfg.input_format!r}"
        )
    if cfg.tiff is not None and not isinstance(cfg.tiff, TiffConfig):
        raise ConfigurationError(
            f"tiff must be a hcsflow.storage.TiffConfig, got {type(cfg.tiff).__name__}"
        )
    if cfg.retries is not None and (
        not isinstance(cfg.retries, int) or isinstance(cfg.retries, bool) or cfg.retries < 0
    ):
        raise ConfigurationError(f"retries must be a non-negative int, got {cfg.retries!r}")
    if cfg.scheduler is not None and (not isinstance(cfg.scheduler, str) or not cfg.scheduler):
        raise ConfigurationError(
            f"scheduler must be a Dask scheduler address such as 'tcp://host:8786', "
            f"got {cfg.scheduler!r}"
        )


_DEFAULT_VALUES: dict[str, Any] = {
    "num_workers": 1,
    "executor": "processes",
    "vfs": VFSConfig(Backend.MEMORY, Backend.DISK, fsync=True),
    "path_planning": PathPlanningConfig(
        images_dir="images", results_dir="results", step_dir_template="{name}"
    ),
    "materialization_defaults": StepMaterializationConfig(
        enabled=False, well_filter_mode="include"
    ),
    "device": DeviceConfig(implementation_preference=("numpy",), gpu_id=None),
    "check_finite": True,
    "fail_fast": False,
    "strict_input": False,
    "tiff": TiffConfig(),
    "retries": 2,
}


def _merge(specific: Any, general: Any) -> Any:
    """Field-by-field: ``specific``'s value unless ``None``; nested configs recursively."""
    if specific is None:
        return general
    if general is None:
        return specific
    if not (is_dataclass(specific) and is_dataclass(general)):
        return specific
    if _is_whole_config(specific) or _is_whole_config(general):
        return specific
    names = {f.name for f in fields(general)}
    changes = {}
    for f in fields(specific):
        if f.name in names:
            changes[f.name] = _merge(getattr(specific, f.name), getattr(general, f.name))
    return replace(general, **changes)  # type: ignore[type-var]


def _is_whole_config(obj: Any) -> bool:
    # storage encodings carry their own defaults: replaced as a whole, never merged
    return type(obj).__name__ in ("ZarrConfig", "TiffConfig")


DEFAULTS: GlobalPipelineConfig = GlobalPipelineConfig()
"""The built-in defaults every :class:`GlobalPipelineConfig` starts from."""


def resolve_config(
    global_config: GlobalPipelineConfig,
    pipeline: PipelineConfig | None = None,
    step: StepConfig | None = None,
) -> GlobalPipelineConfig:
    """The effective configuration for a step: step, then pipeline, then global.

    Step-level ``materialization`` overrides the pipeline's/global
    ``materialization_defaults``.
    """
    if not isinstance(global_config, GlobalPipelineConfig):
        raise ConfigurationError(
            f"expected a GlobalPipelineConfig, got {type(global_config).__name__}"
        )
    if pipeline is not None and not isinstance(pipeline, PipelineConfig):
        raise ConfigurationError(f"expected a PipelineConfig, got {type(pipeline).__name__}")
    resolved = _merge(pipeline, global_config) if pipeline is not None else global_config
    if step is not None:
        if not isinstance(step, StepConfig):
            raise ConfigurationError(f"expected a StepConfig, got {type(step).__name__}")
        changes = {
            "vfs": _merge(step.vfs, resolved.vfs),
            "materialization_defaults": _merge(
                step.materialization, resolved.materialization_defaults
            ),
            "device": _merge(step.device, resolved.device),
            "check_finite": _merge(step.check_finite, resolved.check_finite),
        }
        resolved = replace(resolved, **changes)
    return resolved


def config_to_dict(cfg: Any) -> Any:
    """A JSON-ready view of a configuration (enums as values, tuples as lists)."""
    if is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in fields(cfg)}
    if isinstance(cfg, Backend):
        return cfg.value
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {str(k): config_to_dict(v) for k, v in cfg.items()}
    if cfg is None or isinstance(cfg, (str, int, float, bool)):
        return cfg
    return repr(cfg)
