"""``hcsflow functions``: listing, search, source filter, exclusions, JSON."""

from __future__ import annotations

import json

import pytest

from hcsflow.cli import main


def test_functions_search_lists_memory_types_and_signatures(capsys: pytest.CaptureFixture) -> None:
    assert main(["functions", "--search", "top_hat"]) == 0
    out = capsys.readouterr().out
    assert "top_hat  [cupy,numpy,pyclesperanto,torch]" in out or "top_hat  [" in out
    assert "(image, radius=15, *, shape='disk')" in out


def test_functions_json_source_and_excluded(capsys: pytest.CaptureFixture) -> None:
    assert main(["functions", "--search", "sato", "--source", "skimage", "--json"]) == 0
    items = json.loads(capsys.readouterr().out)
    assert [i["name"] for i in items] == ["skimage.filters.sato"]
    assert items[0]["memory_types"] == ["numpy"] and "sigmas" in items[0]["signature"]
    assert main(["functions", "--excluded", "--search", "regionprops"]) == 0
    assert "returns measurements" in capsys.readouterr().out


def test_functions_search_without_match_fails(capsys: pytest.CaptureFixture) -> None:
    assert main(["functions", "--search", "no-such-function-anywhere"]) == 1
    assert "no function matches" in capsys.readouterr().out
