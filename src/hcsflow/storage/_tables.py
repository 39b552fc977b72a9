"""CSV formula injection: neutralise cells a spreadsheet would run as formulas.

A cell that begins with ``=``, ``+``, ``-`` or ``@`` (or a tab or carriage return) is
executed as a formula by Excel, LibreOffice and Google Sheets when a user opens the
CSV; ``=HYPERLINK(...)`` or ``=cmd|...`` in a measurement name is an attack on whoever
opens the results.  Following the OWASP recommendation, such a cell is written with a
leading single quote (``'=1+2``), which spreadsheets show as text.

Numbers stay numbers: numeric values are never touched, and a text cell that *is* a
number (``-5``, ``+1.5e3``) is not a formula and is kept as it is.  hcsflow applies this
to the CSV tables it materializes (the per-well tables and the plate-level tables);
JSON outputs and files saved through the storage API keep raw values.
"""

from __future__ import annotations

import csv
import io
import re
from typing import Any

from hcsflow.errors import DataFormatError

__all__ = ["FORMULA_PREFIXES", "neutralize_formula", "neutralize_formulas", "neutralize_csv_text"]

#: first characters that make a spreadsheet treat a cell as a formula (OWASP)
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")


def neutralize_formula(value: Any) -> Any:
    """``value`` with a leading ``'`` if it is text a spreadsheet would run as a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES) and not _NUMBER.match(value):
        return "'" + value
    return value


def neutralize_formulas(frame: Any) -> Any:
    """A pandas DataFrame with every formula-like text cell and header neutralised.

    Returns ``frame`` itself when nothing needs changing (numeric columns are never
    scanned), else a copy.
    """
    import pandas as pd

    if not isinstance(frame, pd.DataFrame):
        raise DataFormatError(
            f"neutralize_formulas takes a pandas DataFrame, got {type(frame).__name__}"
        )
    out = frame
    # the column dtypes first: taking a column out of a frame as a Series costs far more
    # than checking its few text cells, and most columns of a measurement table are numbers
    for position, dtype in enumerate(frame.dtypes.tolist()):
        if dtype.kind not in "OSU" and not isinstance(dtype, pd.StringDtype):
            continue
        series = frame.iloc[:, position]
        if not any(
            isinstance(v, str) and v.startswith(FORMULA_PREFIXES)
            for v in series.to_numpy(dtype=object)
        ):
            continue
        fixed = series.map(neutralize_formula)
        if not fixed.equals(series):
            if out is frame:
                out = frame.copy()
            out.isetitem(position, fixed)
    columns = [neutralize_formula(c) for c in frame.columns]
    if columns != list(frame.columns):
        if out is frame:
            out = frame.copy()
        out.columns = columns
    return out


def neutralize_csv_text(text: str) -> str:
    """CSV text with every formula-like cell neutralised (header included).

    Text without any cell starting with a formula character is returned unchanged;
    otherwise it is re-written with Python's ``csv`` module (minimal quoting, ``\\n``
    line endings, as pandas writes).
    """
    if not any(ch in text for ch in FORMULA_PREFIXES):
        return text
    rows = list(csv.reader(io.StringIO(text)))
    fixed = [[neutralize_formula(cell) for cell in row] for row in rows]
    if fixed == rows:
        return text
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(fixed)
    return buf.getvalue()
