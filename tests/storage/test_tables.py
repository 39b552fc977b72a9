"""CSV formula injection: formula-like text cells are neutralised, numbers are not."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from hcsflow.errors import DataFormatError
from hcsflow.storage import (
    Backend,
    BackendRegistry,
    DiskStorageBackend,
    FileManager,
    MemoryStorageBackend,
    neutralize_csv_text,
    neutralize_formula,
    neutralize_formulas,
)


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("=1+2", "'=1+2"),
        ("+SUM(A1)", "'+SUM(A1)"),
        ("-1+2", "'-1+2"),
        ("@cmd", "'@cmd"),
        ("\tX", "'\tX"),
        ("\rX", "'\rX"),
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("-5", "-5"),
        ("+1.5e3", "+1.5e3"),
        ("-.5", "-.5"),
        ("plain", "plain"),
        ("", ""),
        (-5, -5),
        (2.5, 2.5),
        (None, None),
    ],
)
def test_neutralize_formula(cell, expected) -> None:
    assert neutralize_formula(cell) == expected


def test_dataframes_keep_numbers_and_neutralise_text_and_headers() -> None:
    frame = pd.DataFrame({"=name": ["=1+2", "ok", "-3"], "value": [-1.0, 2.0, 3.0]})
    out = neutralize_formulas(frame)
    assert list(out.columns) == ["'=name", "value"]
    assert out["'=name"].tolist() == ["'=1+2", "ok", "-3"]
    assert out["value"].tolist() == [-1.0, 2.0, 3.0] and out["value"].dtype == float
    assert frame.columns[0] == "=name"  # the caller's frame is not modified
    clean = pd.DataFrame({"a": ["x"], "b": [1]})
    assert neutralize_formulas(clean) is clean
    with pytest.raises(DataFormatError):
        neutralize_formulas([{"a": 1}])


def test_csv_text() -> None:
    text = "well,name,count\nA01,\"=cmd|' /C calc'!A0\",-4\nA02,ok,5\n"
    out = neutralize_csv_text(text)
    assert out.splitlines()[1] == "A01,'=cmd|' /C calc'!A0,-4"
    assert neutralize_csv_text("a,b\n1,-2\n") == "a,b\n1,-2\n"


def test_materialized_tables_are_neutralised_and_json_keeps_raw_values(tmp_path) -> None:
    from hcsflow.pipeline import materialize_table

    registry = BackendRegistry(
        {Backend.MEMORY.value: MemoryStorageBackend(), Backend.DISK.value: DiskStorageBackend()}
    )
    fm = FileManager(registry)
    table = [{"label": "=2+3", "area": -12.5}, {"label": "cell", "area": 40.0}]
    csv_path = materialize_table(table, str(tmp_path / "t"), fm)
    text = (tmp_path / "t.csv").read_text()
    assert "'=2+3" in text and "-12.5" in text and "'-12.5" not in text
    back = pd.read_csv(csv_path)
    assert back["area"].tolist() == [-12.5, 40.0]
    summary = json.loads((tmp_path / "t.json").read_text())
    assert summary["numeric"]["area"]["min"] == -12.5
