"""Special input/output contracts: ``@special_outputs`` and ``@special_inputs``.

A function decorated with ``@special_outputs("positions", ("cell_counts", fn))`` returns
``(main_output, positions, cell_counts)``: the main image stack first, then one value per
declared key **in declaration order**.  A key paired with a materialization function
``fn(data, path, filemanager) -> str`` is also written to persistent storage after the
well's staging.  ``@special_inputs("positions")`` asks for the value staged by an earlier
step, injected as the keyword argument ``positions=...``.

The decorators only annotate the function, with the specification's attributes:

* ``func.__special_outputs__``: a dict ``{key: materializer or None}`` in declaration
  order (iterating it gives the keys, as the specification's path planner expects);
* ``func.__special_inputs__``: a dict ``{key: True}`` in declaration order (``True``:
  the input is required; every special input is).

Plain dicts, not read-only views, because a function defined in a script travels to
worker processes by value (cloudpickle), attributes included.

The attributes live in the function's ``__dict__``, so ``functools.wraps`` (and the
memory-type decorators) carry them to wrappers.  The executor enforces the contract and
names the step and function in every error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
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


def _check_key(key: object, what: str, where: str) -> str:
    if not isinstance(key, str) or not key.isidentifier():
        raise SpecialIOError(
            f"{where}: {what} keys must be Python identifiers (they become keyword "
            f"arguments), got {key!r}"
        )
    return key


def _output_specs(specs: Iterable[Any], where: str) -> dict[str, Materializer | None]:
    """``{key: materializer or None}`` from keys and ``(key, materializer)`` pairs."""
    declared: dict[str, Materializer | None] = {}
    for spec in specs:
        if isinstance(spec, tuple):
            if len(spec) != 2:
                raise SpecialIOError(
                    f"{where}: a special output is a key or a (key, materializer) pair, "
                    f"got {spec!r}"
                )
            key, materializer = spec
        else:
            key, materializer = spec, None
        key = _check_key(key, "special output", where)
        if materializer is not None and not callable(materializer):
            raise SpecialIOError(
                f"{where}: materializer for special output {key!r} is not callable: "
                f"{materializer!r}"
            )
        if key in declared:
            raise SpecialIOError(f"{where}: special output {key!r} is declared twice")
        declared[key] = materializer
    return declared


def _input_keys(keys: Iterable[Any], where: str) -> tuple[str, ...]:
    checked = tuple(_check_key(k, "special input", where) for k in keys)
    if len(set(checked)) != len(checked):
        raise SpecialIOError(f"{where}: special inputs repeat a key: {checked}")
    return checked


def special_outputs(*specs: SpecialOutputSpec) -> Callable[[F], F]:
    """Declare the extra values a function returns after its main output.

    Each spec is a key (staged in memory only) or a ``(key, materializer)`` pair.  Sets
    ``func.__special_outputs__`` to ``{key: materializer or None}``.
    """
    if not specs:
        raise SpecialIOError("@special_outputs needs at least one key")
    declared = _output_specs(specs, "@special_outputs")

    def decorate(func: F) -> F:
        func.__special_outputs__ = dict(declared)  # type: ignore[attr-defined]
        return func

    return decorate


def special_inputs(*keys: str) -> Callable[[F], F]:
    """Declare special outputs of earlier steps that this function receives as kwargs.

    Sets ``func.__special_inputs__`` to ``{key: True}`` (every special input is required).
    """
    if not keys:
        raise SpecialIOError("@special_inputs needs at least one key")
    declared = dict.fromkeys(_input_keys(keys, "@special_inputs"), True)

    def decorate(func: F) -> F:
        func.__special_inputs__ = dict(declared)  # type: ignore[attr-defined]
        return func

    return decorate


def _label(func: Callable[..., Any]) -> str:
    return str(getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or func)


def get_special_outputs(func: Callable[..., Any]) -> dict[str, Materializer | None]:
    """The ``{key: materializer or None}`` a function declares (empty when undecorated).

    Reads ``func.__special_outputs__``: the decorator's mapping, or one set by hand as a
    mapping or as a sequence of keys and ``(key, materializer)`` pairs; anything else
    raises :class:`SpecialIOError`.
    """
    declared = getattr(func, "__special_outputs__", None)
    if declared is None:
        return {}
    where = f"{_label(func)}.__special_outputs__"
    if isinstance(declared, Mapping):
        return _output_specs(declared.items(), where)
    if isinstance(declared, (str, bytes)) or not isinstance(declared, Iterable):
        raise SpecialIOError(
            f"{where} must be a mapping or a sequence of keys, got {type(declared).__name__}"
        )
    if isinstance(declared, (set, frozenset)):
        # a set has no order, and the order of the returned tuple is the contract
        raise SpecialIOError(
            f"{where} is a set; special outputs need an order (use @special_outputs)"
        )
    return _output_specs(declared, where)


def get_special_inputs(func: Callable[..., Any]) -> tuple[str, ...]:
    """The special input keys a function declares (empty when undecorated).

    Reads ``func.__special_inputs__``: a mapping ``{key: True}`` or a sequence of keys.  A
    key mapped to anything but ``True`` (an optional input) raises
    :class:`SpecialIOError`: every special input is required.
    """
    declared = getattr(func, "__special_inputs__", None)
    if declared is None:
        return ()
    where = f"{_label(func)}.__special_inputs__"
    if isinstance(declared, Mapping):
        optional = [k for k, required in declared.items() if required is not True]
        if optional:
            raise SpecialIOError(
                f"{where} marks {optional} as not required; every special input is "
                f"required (a step that may lack one needs its own function)"
            )
        return _input_keys(declared, where)
    if isinstance(declared, (str, bytes, set, frozenset)) or not isinstance(declared, Iterable):
        raise SpecialIOError(
            f"{where} must be a mapping or a sequence of keys, got {type(declared).__name__}"
        )
    return _input_keys(declared, where)
