"""Every error class hcsflow defines is an HcsflowError; describe_error gives one line."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import hcsflow
from hcsflow.errors import (
    BatchError,
    CompilationError,
    CorruptDataError,
    HcsflowError,
    UsageError,
    describe_error,
)

# Layers whose modules (private ones included) are imported and searched for exception
# classes; a module holding one framework's implementations needs that framework.
LAYERS = (
    "hcsflow.memory",
    "hcsflow.pipeline",
    "hcsflow.readers",
    "hcsflow.cli",
    "hcsflow.functions",
)
OPTIONAL_FRAMEWORKS = {"torch", "jax", "tensorflow", "cupy", "cucim", "pyclesperanto"}


def _modules(package: str) -> list[str]:
    pkg = importlib.import_module(package)
    names = [package]
    for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}."):
        if not info.name.endswith(".__main__"):  # importing it runs the command
            names.append(info.name)
    return names


@pytest.mark.parametrize("package", LAYERS)
def test_every_public_exception_class_is_an_hcsflow_error(package: str) -> None:
    offenders = []
    for name in _modules(package):
        try:
            module = importlib.import_module(name)
        except ImportError as exc:  # a framework's implementation module without the framework
            if (exc.name or "").split(".")[0] in OPTIONAL_FRAMEWORKS:
                continue
            raise
        for attr, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__ == name
                and not attr.startswith("_")
                and not issubclass(obj, HcsflowError)
            ):
                offenders.append(f"{name}.{attr}")
    assert offenders == []


def test_describe_error_follows_causes_and_drops_repeats() -> None:
    decode = ValueError("failed to read 131072 bytes, got 65408")
    corrupt = CorruptDataError(
        f"cannot decode the file as tiff: {decode}", path="/p/A01_s2_w1.tif", backend="disk"
    )
    corrupt.__cause__ = decode
    batch = BatchError(
        "batch item 1 could not be loaded", index=1, path="/p/A01_s2_w1.tif", backend="disk"
    )
    batch.__cause__ = corrupt
    assert describe_error(batch) == (
        "batch item 1 could not be loaded (path '/p/A01_s2_w1.tif', backend 'disk'): "
        "cannot decode the file as tiff: failed to read 131072 bytes, got 65408"
    )


def test_describe_error_names_foreign_causes_and_stays_on_one_line() -> None:
    try:
        try:
            int("x")
        except ValueError as exc:
            raise UsageError("--wells is not a number") from exc
    except UsageError as err:
        text = describe_error(err)
    assert (
        text == "--wells is not a number: ValueError: invalid literal for int() with base 10: 'x'"
    )
    problems = CompilationError(["step 0: unknown function 'blur'", "plate: no image files"])
    assert describe_error(problems) == (
        "pipeline compilation found 2 problem(s): step 0: unknown function 'blur'; "
        "plate: no image files"
    )
    assert "\n" not in describe_error(problems)


def test_describe_error_survives_cycles_and_empty_messages() -> None:
    a, b = RuntimeError(), RuntimeError("inner")
    a.__cause__, b.__cause__ = b, a
    assert describe_error(a) == "RuntimeError: RuntimeError: inner"
    syntax = SyntaxError("'[' was never closed", ("pipe.py", 2, 1, "x = [", 2, 0))
    wrapper = UsageError("pipeline file 'pipe.py', line 2: SyntaxError: '[' was never closed")
    wrapper.__cause__ = syntax
    assert describe_error(wrapper) == str(wrapper)


def test_usage_error_is_a_value_error() -> None:
    assert issubclass(UsageError, HcsflowError) and issubclass(UsageError, ValueError)
    assert "UsageError" in hcsflow.errors.__all__ and "describe_error" in hcsflow.errors.__all__
