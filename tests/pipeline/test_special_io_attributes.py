"""The specification's ``__special_outputs__`` / ``__special_inputs__`` attributes."""

from __future__ import annotations

import functools
import pickle

import numpy as np
import pytest

from hcsflow.errors import HcsflowError, SpecialIOError
from hcsflow.memory.decorators import numpy as numpy_function
from hcsflow.pipeline import (
    get_special_inputs,
    get_special_outputs,
    materialize_table,
    special_inputs,
    special_outputs,
)


def _mat(data, path, fm):
    return path


@special_outputs("debug_info", ("analysis_results", _mat))
def _mixed(stack):
    return stack, {}, []


@special_inputs("positions", "metadata")
def _stitch(stack, positions, metadata):
    return stack


def test_special_outputs_attribute_is_an_ordered_mapping_of_materializers():
    assert _mixed.__special_outputs__ == {"debug_info": None, "analysis_results": _mat}
    assert list(_mixed.__special_outputs__) == ["debug_info", "analysis_results"]
    assert get_special_outputs(_mixed) == dict(_mixed.__special_outputs__)


def test_special_inputs_attribute_maps_each_key_to_required():
    assert _stitch.__special_inputs__ == {"positions": True, "metadata": True}
    assert list(_stitch.__special_inputs__) == ["positions", "metadata"]
    assert get_special_inputs(_stitch) == ("positions", "metadata")


def test_each_decorated_function_gets_its_own_mapping():
    deco = special_outputs(("t", materialize_table))

    @deco
    def a(stack):
        return stack, None

    @deco
    def b(stack):
        return stack, None

    a.__special_outputs__["extra"] = None
    assert list(get_special_outputs(b)) == ["t"]


def test_attributes_survive_wrappers_and_pickling():
    @numpy_function
    @special_outputs("n")
    def counted(stack):
        return stack, 1

    assert get_special_outputs(counted) == {"n": None}

    @functools.wraps(_stitch)
    def wrapper(*args, **kwargs):
        return _stitch(*args, **kwargs)

    assert get_special_inputs(wrapper) == ("positions", "metadata")
    # module-level functions pickle by reference; the attributes are plain dicts
    assert pickle.loads(pickle.dumps(_mixed.__special_outputs__))["analysis_results"] is _mat
    assert pickle.loads(pickle.dumps(_stitch)) is _stitch


def test_undecorated_functions_declare_nothing():
    assert get_special_outputs(np.sum) == {} and get_special_inputs(np.sum) == ()


def test_hand_set_attributes_are_read_and_validated():
    def f(stack):
        return stack, 1, 2

    f.__special_outputs__ = ("a", ("b", _mat))  # type: ignore[attr-defined]
    assert get_special_outputs(f) == {"a": None, "b": _mat}
    f.__special_inputs__ = ["x"]  # type: ignore[attr-defined]
    assert get_special_inputs(f) == ("x",)


@pytest.mark.parametrize(
    "value",
    [{"a", "b"}, "ab", 3, {"a": 3}, {"not a key": None}, (("a", _mat, 1),), ("a", "a")],
)
def test_bad_hand_set_special_outputs_fail_loud(value):
    def f(stack):
        return stack

    f.__special_outputs__ = value  # type: ignore[attr-defined]
    with pytest.raises(SpecialIOError, match="__special_outputs__") as info:
        get_special_outputs(f)
    assert isinstance(info.value, HcsflowError)


@pytest.mark.parametrize("value", [{"a": False}, {"a": None}, {"a"}, "a", 1, ("a", "a")])
def test_bad_hand_set_special_inputs_fail_loud(value):
    def f(stack, a=None):
        return stack

    f.__special_inputs__ = value  # type: ignore[attr-defined]
    with pytest.raises(SpecialIOError, match="__special_inputs__"):
        get_special_inputs(f)
