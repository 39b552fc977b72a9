"""The JSON writer of run records and manifests: same data as ``json``, lines per item."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from hcsflow.pipeline._commit import readable_json

_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300)
@given(st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), _JSON, max_size=6))
def test_same_data_as_the_json_module(doc: dict[Any, Any]) -> None:
    assert json.loads(readable_json(doc)) == json.loads(json.dumps(doc, indent=1, default=str))


def test_one_line_per_well_and_per_file() -> None:
    doc = {
        "run_id": "r1",
        "wells": [{"well": f"A{i:02d}", "status": "ok", "timings": {"s": 1.5}} for i in range(3)],
        "files": {"images/A01/a.tif": {"bytes": 10, "sha256": "ab"}, "A01.csv": {"bytes": 2}},
        "when": {},
    }
    lines = readable_json(doc).splitlines()
    assert lines[0] == "{" and lines[-1] == "}"
    assert sum('"well": "A0' in line for line in lines) == 3  # one line each
    assert '  "images/A01/a.tif": {"bytes": 10, "sha256": "ab"},' in lines
    assert ' "when": {}' in lines
    assert readable_json({}) == "{}"
    # values json cannot encode are written as text, as before
    assert json.loads(readable_json({"p": {1, 2}}))["p"] in ("{1, 2}", "{2, 1}")
