"""Errors hierarchy, virtual paths and plate geometry."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hcsflow import errors
from hcsflow.paths import join, natural_sorted, normalize_path, parent, relative_to
from hcsflow.storage.plate import ImageCoordinates, WellPosition, parse_well, row_index, row_name


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (errors.NotFoundError, FileNotFoundError),
        (errors.AlreadyExistsError, FileExistsError),
        (errors.IsADirectoryStorageError, IsADirectoryError),
        (errors.NotADirectoryStorageError, NotADirectoryError),
        (errors.InvalidPathError, ValueError),
        (errors.PathEscapeError, ValueError),
        (errors.UnsupportedFormatError, ValueError),
        (errors.DataFormatError, TypeError),
        (errors.PlateLayoutError, ValueError),
    ],
)
def test_storage_errors_are_builtins_and_name_path_and_backend(cls: type, builtin: type) -> None:
    err = cls("went wrong", path="/a/b.tif", backend="disk")
    assert isinstance(err, errors.HcsflowError)
    assert isinstance(err, builtin)
    assert "/a/b.tif" in str(err) and "disk" in str(err)
    assert err.path == "/a/b.tif" and err.backend == "disk"
    with pytest.raises(builtin):
        raise err


def test_memory_conversion_error_has_spec_attributes_and_pickles() -> None:
    err = errors.MemoryConversionError("cupy", "torch", "dlpack", "no GPU")
    assert (err.source_type, err.target_type, err.method, err.reason) == (
        "cupy",
        "torch",
        "dlpack",
        "no GPU",
    )
    assert str(err) == "Failed to convert cupy → torch via dlpack: no GPU"
    again = pickle.loads(pickle.dumps(err))
    assert again.reason == "no GPU" and isinstance(again, TypeError)


def _storage_error_classes() -> list[type]:
    import hcsflow.readers  # noqa: F401  (their error classes join the hierarchy)
    import hcsflow.storage  # noqa: F401

    found, todo = [], [errors.StorageError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(set(found), key=lambda c: c.__name__)


@pytest.mark.parametrize("cls", _storage_error_classes(), ids=lambda c: c.__name__)
def test_storage_errors_pickle_with_their_location_and_attributes(cls: type) -> None:
    # an error raised in a worker process comes back to the caller pickled
    extra = {"index": 4} if issubclass(cls, errors.BatchError) else {}
    err = cls("went wrong", path="/a/b.tif", backend="zarr", **extra)
    err.__dict__["extra_note"] = "kept"
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is cls and str(again) == str(err) and again.args == err.args
    assert (again.path, again.backend, again.reason) == ("/a/b.tif", "zarr", "went wrong")
    assert again.__dict__ == err.__dict__
    with pytest.raises(cls):
        raise again


def test_compilation_error_lists_every_problem() -> None:
    err = errors.CompilationError(["missing input 'positions'", "unknown function 'blur'"])
    assert "2 problem(s)" in str(err) and "blur" in str(err)
    assert pickle.loads(pickle.dumps(err)).problems == err.problems


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a/b", "/a/b"),
        ("/a/./b/", "/a/b"),
        ("/a/b/../c", "/a/c"),
        ("//a//b", "/a/b"),
        ("/", "/"),
    ],
)
def test_normalize_path(raw: str, expected: str) -> None:
    assert normalize_path(raw) == expected


@pytest.mark.parametrize("raw", ["..", "/a/../../b", "../x"])
def test_escaping_paths_raise(raw: str) -> None:
    with pytest.raises(errors.PathEscapeError):
        normalize_path(raw, backend="memory")


@pytest.mark.parametrize("raw", ["", "a\x00b", 3])
def test_invalid_paths_raise(raw: object) -> None:
    with pytest.raises(errors.InvalidPathError):
        normalize_path(raw)  # type: ignore[arg-type]


@given(st.lists(st.sampled_from(["a", "b", ".", "..", "", "c1"]), max_size=8))
def test_normalize_is_idempotent_and_absolute(parts: list[str]) -> None:
    raw = "/".join(parts) or "."
    try:
        once = normalize_path(raw)
    except errors.PathEscapeError:
        return
    assert once.startswith("/")
    assert normalize_path(once) == once
    assert ".." not in once.split("/")


def test_path_helpers() -> None:
    assert join("/a", "b/../c") == "/a/c"
    assert parent("/a/b") == "/a" and parent("/a") == "/"
    assert relative_to("/a/b/c", "/a") == "b/c"
    with pytest.raises(errors.PathEscapeError):
        relative_to("/ab", "/a")


def test_natural_sort() -> None:
    assert natural_sorted(["img_10.tif", "img_2.tif", "img_1.tif"]) == [
        "img_1.tif",
        "img_2.tif",
        "img_10.tif",
    ]
    assert natural_sorted(["A10", "A2", "B1"]) == ["A2", "A10", "B1"]


@pytest.mark.parametrize(
    ("name", "row", "col", "canonical"),
    [
        ("A1", 0, 0, "A01"),
        ("a01", 0, 0, "A01"),
        ("H12", 7, 11, "H12"),
        ("P24", 15, 23, "P24"),
        ("AA01", 26, 0, "AA01"),
        ("AF48", 31, 47, "AF48"),
    ],
)
def test_parse_well(name: str, row: int, col: int, canonical: str) -> None:
    pos = parse_well(name)
    assert pos == WellPosition(row, col)
    assert pos.name == canonical
    assert row_index(pos.row_name) == row


@pytest.mark.parametrize("bad", ["A0", "A49", "AG01", "1A", "", "A-", "BA01"])
def test_parse_well_rejects_non_positions(bad: str) -> None:
    with pytest.raises(errors.PlateLayoutError):
        parse_well(bad)


def test_row_name_roundtrip() -> None:
    assert [row_name(i) for i in (0, 25, 26, 31)] == ["A", "Z", "AA", "AF"]
    with pytest.raises(errors.PlateLayoutError):
        row_name(32)


def test_image_coordinates_canonicalise_and_validate() -> None:
    c = ImageCoordinates("b3", field=1, channel=2)
    assert c.well == "B03" and c.position == WellPosition(1, 2)
    with pytest.raises(errors.PlateLayoutError):
        ImageCoordinates("A01", z=-1)
    with pytest.raises(errors.PlateLayoutError):
        ImageCoordinates("A01", field=True)
