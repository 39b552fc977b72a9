"""Special input/output contracts: ``@special_outputs`` and ``@special_inputs``.

A function decorated with ``@special_outputs("positions", ("cell_counts", fn))`` returns
``(main_output, positions, cell_counts)``: the main image stack first, then one value per
declared key **in declaration order**.  A key paired with a materialization function
``fn(data, path, filemanager) -> str`` is also written to persistent storage after the
well's staging.  ``@special_inputs("positions")`` asks for the value staged by an earlier
step, injected as the keyword argument ``positions=...``.

The decorators only annotate the function (attributes ``special_outputs`` and
``special_inputs``); the executor enforces the contract and names the step and function
in every error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from hcsflow.errors import SpecialIOError

__all__ = [
    "Materializer",
    "special_outputs",
    "special_inputs",
    "get_special_outputs",
    "get_special_inputs",
]

F = TypeVar("F", bound=Callable[..., Any])

Materializer = Callable[[Any, str, Any], str]
"""``fn(data, path, filemanager) -> str``: write ``data`` for ``path``, return the main file."""

SpecialOutputSpec = str | tuple[str, Materializer | None]


def _check_key(key: object, what: str) -> str:
    if not isinstance(key, str) or not key.isidentifier():
        raise SpecialIOError(
            f"{what} keys must be Python identifiers (they become keyword arguments), got {key!r}"
        )
    return key


def special_outputs(*specs: SpecialOutputSpec) -> Callable[[F], F]:
    """Declare the extra values a function returns after its main output.

    Each spec is a key (staged in memory only) or a ``(key, materializer)`` pair.
    """
    if not specs:
        raise SpecialIOError("@special_outputs needs at least one key")
    declared: dict[str, Materializer | None] = {}
    for spec in specs:
        if isinstance(spec, tuple):
            if len(spec) != 2:
                raise SpecialIOError(
                    f"a special output is a key or a (key, materializer) pair, got {spec!r}"
                )
            key, materializer = spec
            if materializer is not None and not callable(materializer):
                raise SpecialIOError(
                    f"materializer for special output {key!r} is not callable: {materializer!r}"
                )
        else:
            key, materializer = spec, None
        key = _check_key(key, "special output")
        if key in declared:
            raise SpecialIOError(f"special output {key!r} is declared twice")
        declared[key] = materializer

    def decorate(func: F) -> F:
        func.special_outputs = dict(declared)  # type: ignore[attr-defined]
        return func

    return decorate


def special_inputs(*keys: str) -> Callable[[F], F]:
    """Declare special outputs of earlier steps that this function receives as kwargs."""
    if not keys:
        raise SpecialIOError("@special_inputs needs at least one key")
    checked = tuple(_check_key(k, "special input") for k in keys)
    if len(set(checked)) != len(checked):
        raise SpecialIOError(f"@special_inputs repeats a key: {checked}")

    def decorate(func: F) -> F:
        func.special_inputs = checked  # type: ignore[attr-defined]
        return func

    return decorate


def get_special_outputs(func: Callable[..., Any]) -> dict[str, Materializer | None]:
    """The ``{key: materializer or None}`` a function declares (empty when undecorated)."""
    return dict(getattr(func, "special_outputs", {}) or {})


def get_special_inputs(func: Callable[..., Any]) -> tuple[str, ...]:
    """The special input keys a function declares (empty when undecorated)."""
    return tuple(getattr(func, "special_inputs", ()) or ())
