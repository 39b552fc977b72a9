"""``FunctionStep`` and ``Pipeline``: what a user declares; the compiler resolves it."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from hcsflow.errors import ConfigurationError
from hcsflow.pipeline._config import PipelineConfig, StepConfig, StepMaterializationConfig

__all__ = ["Component", "FunctionStep", "Pipeline", "FuncPattern", "normalize_component"]

FuncPattern = Any
"""A callable, a registered name, a ``(func, kwargs)`` pair, a list of those (a chain) or
a dict ``{component value: pattern}`` (with ``group_by``)."""


class Component(enum.StrEnum):
    """Image components a step can stack along or group by."""

    SITE = "site"
    CHANNEL = "channel"
    Z = "z"
    T = "t"

    def __str__(self) -> str:
        return self.value


_ALIASES = {"field": "site", "z_index": "z", "timepoint": "t", "wavelength": "channel"}

# ImageCoordinates attribute of each component.
COMPONENT_ATTR = {"site": "field", "channel": "channel", "z": "z", "t": "t"}


def normalize_component(value: Component | str) -> str:
    """Canonical component name (``"site"``, ``"channel"``, ``"z"``, ``"t"``)."""
    raw = value.value if isinstance(value, Component) else value
    if not isinstance(raw, str):
        raise ConfigurationError(f"a component is a name such as 'site', got {value!r}")
    name = _ALIASES.get(raw.lower(), raw.lower())
    if name not in COMPONENT_ATTR:
        raise ConfigurationError(
            f"unknown component {value!r} (known: site, channel, z, t; aliases: "
            f"{', '.join(_ALIASES)})"
        )
    return name


class FunctionStep:
    """One processing step: a function pattern applied to every group of a well's images.

    ``variable_components`` (default ``("site",)``) are stacked along Z into the
    ``[Z, Y, X]`` array the function receives; the other components (channel, z, t...)
    split a well's images into separate groups.  ``group_by`` names the component whose
    value (1-based, as in file names: ``"1"`` for ``w1``) selects the function when
    ``func`` is a dict.  Keyword arguments other than the named parameters are passed to
    the function.
    """

    def __init__(
        self,
        func: FuncPattern,
        *,
        name: str | None = None,
        variable_components: Sequence[Component | str] | Component | str = ("site",),
        group_by: Component | str | None = None,
        materialization_config: StepMaterializationConfig | None = None,
        config: StepConfig | None = None,
        **kwargs: Any,
    ):
        if func is None:
            raise ConfigurationError("FunctionStep needs a func")
        if isinstance(variable_components, (str, Component)):
            variable_components = (variable_components,)
        vc = tuple(normalize_component(c) for c in variable_components)
        if not vc:
            raise ConfigurationError("variable_components must name at least one component")
        if len(set(vc)) != len(vc):
            raise ConfigurationError(f"variable_components repeats a component: {vc}")
        gb = normalize_component(group_by) if group_by is not None else None
        if gb is not None and gb in vc:
            raise ConfigurationError(f"group_by {gb!r} cannot also be a variable component {vc}")
        if isinstance(func, dict) and gb is None:
            raise ConfigurationError("a dict func pattern needs group_by (e.g. 'channel')")
        if kwargs and isinstance(func, (list, dict)):
            raise ConfigurationError(
                "keyword arguments apply to a single function; with a list or dict pattern "
                "pass (func, kwargs) pairs instead"
            )
        if materialization_config is not None and not isinstance(
            materialization_config, StepMaterializationConfig
        ):
            raise ConfigurationError(
                "materialization_config must be a StepMaterializationConfig, got "
                f"{type(materialization_config).__name__}"
            )
        if config is not None and not isinstance(config, StepConfig):
            raise ConfigurationError(f"config must be a StepConfig, got {type(config).__name__}")
        if materialization_config is not None:
            base = config or StepConfig()
            if base.materialization is not None:
                raise ConfigurationError(
                    "give the step's materialization either as materialization_config or "
                    "in config, not both"
                )
            config = StepConfig(
                vfs=base.vfs,
                materialization=materialization_config,
                device=base.device,
                check_finite=base.check_finite,
            )
        self.func = func
        self.kwargs = dict(kwargs)
        self.variable_components = vc
        self.group_by = gb
        self.config = config
        self.name = name or _default_name(func)

    @property
    def materialization_config(self) -> StepMaterializationConfig | None:
        """The step-level materialization override (``None`` = inherit)."""
        return self.config.materialization if self.config is not None else None

    def __repr__(self) -> str:
        return f"FunctionStep(name={self.name!r}, func={self.func!r})"


def _default_name(func: FuncPattern) -> str:
    if isinstance(func, str):
        return func
    if isinstance(func, tuple) and func:
        return _default_name(func[0])
    if isinstance(func, list):
        return "+".join(_default_name(f) for f in func) or "chain"
    if isinstance(func, dict):
        return "per_" + "_".join(str(k) for k in func)
    return str(getattr(func, "__name__", type(func).__name__))


@dataclass
class Pipeline:
    """An ordered list of steps plus optional pipeline-level configuration overrides."""

    steps: list[FunctionStep]
    name: str = "pipeline"
    config: PipelineConfig | None = None

    def __iter__(self) -> Iterator[FunctionStep]:
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)


def as_callable_name(func: Callable[..., Any]) -> str:
    """A readable ``module.qualname`` of a callable for plans and manifests."""
    mod = getattr(func, "__module__", None) or "?"
    qual = getattr(func, "__qualname__", None) or repr(func)
    return f"{mod}.{qual}"
