"""Plate geometry shared by the zarr backend and pipeline plate readers.

A well is named by a row (``A``..``Z``, then ``AA``..``AF`` on 1536-well plates) and a
1-based column: ``"A1"``, ``"A01"`` and ``"AA48"`` are valid.  :class:`ImageCoordinates`
places one 2-D image on a plate; a :class:`PlateLayout` (a filename parser, supplied by
the caller) maps paths to coordinates, so no backend ever guesses from a name.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from hcsflow.errors import PlateLayoutError

__all__ = [
    "MAX_ROWS",
    "MAX_COLUMNS",
    "PLATE_FORMATS",
    "ImageCoordinates",
    "PlateLayout",
    "WellPosition",
    "parse_well",
    "row_index",
    "row_name",
]

MAX_ROWS = 32  # 1536-well plate: 32 rows x 48 columns
MAX_COLUMNS = 48

#: standard plate formats: wells -> (rows, columns)
PLATE_FORMATS: dict[int, tuple[int, int]] = {
    6: (2, 3),
    12: (3, 4),
    24: (4, 6),
    48: (6, 8),
    96: (8, 12),
    384: (16, 24),
    1536: (32, 48),
}

_WELL_RE = re.compile(r"^([A-Za-z]{1,2})[_-]?0*(\d{1,3})$")


def row_index(name: str) -> int:
    """0-based index of a row name: ``A`` -> 0, ``Z`` -> 25, ``AA`` -> 26, ``AF`` -> 31."""
    up = name.upper()
    if len(up) == 1 and up.isalpha():
        idx = ord(up) - ord("A")
    elif len(up) == 2 and up.isalpha() and up[0] == "A":
        idx = 26 + ord(up[1]) - ord("A")
    else:
        raise PlateLayoutError(f"{name!r} is not a plate row name (A..Z, AA..AF)")
    if not 0 <= idx < MAX_ROWS:
        raise PlateLayoutError(f"row {name!r} is beyond the largest plate (32 rows, A..AF)")
    return idx


def row_name(index: int) -> str:
    """Row name of a 0-based row index (inverse of :func:`row_index`)."""
    if not 0 <= index < MAX_ROWS:
        raise PlateLayoutError(f"row index {index} is outside 0..{MAX_ROWS - 1}")
    return chr(ord("A") + index) if index < 26 else "A" + chr(ord("A") + index - 26)


@dataclass(frozen=True, slots=True, order=True)
class WellPosition:
    """A well as 0-based row and column indices."""

    row: int
    column: int

    @property
    def row_name(self) -> str:
        """``"A"``.. for the row."""
        return row_name(self.row)

    @property
    def column_name(self) -> str:
        """1-based column number as a string (``"1"``, ``"12"``)."""
        return str(self.column + 1)

    @property
    def name(self) -> str:
        """Canonical well name with a two-digit column: ``"A01"``, ``"AF48"``."""
        return f"{self.row_name}{self.column + 1:02d}"

    def __str__(self) -> str:
        return self.name


def parse_well(name: str) -> WellPosition:
    """Parse ``"A1"``, ``"A01"``, ``"b12"``, ``"AA48"`` into a :class:`WellPosition`."""
    if isinstance(name, str):
        # a plate reader places thousands of planes on a few hundred wells
        return _parse_well_str(name)
    raise PlateLayoutError(f"{name!r} is not a well name such as 'A01' or 'AA48'")


@functools.lru_cache(maxsize=8192)
def _parse_well_str(name: str) -> WellPosition:
    m = _WELL_RE.match(name.strip())
    if m is None:
        raise PlateLayoutError(f"{name!r} is not a well name such as 'A01' or 'AA48'")
    col = int(m.group(2))
    if not 1 <= col <= MAX_COLUMNS:
        raise PlateLayoutError(f"well {name!r}: column {col} is outside 1..{MAX_COLUMNS}")
    return WellPosition(row_index(m.group(1)), col - 1)


@dataclass(frozen=True, slots=True, order=True)
class ImageCoordinates:
    """Where one 2-D image sits on a plate: well, field (site), channel, z and t (0-based)."""

    well: str
    field: int = 0
    channel: int = 0
    z: int = 0
    t: int = 0

    def __post_init__(self) -> None:
        canonical = parse_well(self.well).name
        object.__setattr__(self, "well", canonical)
        for attr in ("field", "channel", "z", "t"):
            value = getattr(self, attr)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise PlateLayoutError(
                    f"{attr} must be a non-negative int, got {value!r} for well {self.well}"
                )

    @property
    def position(self) -> WellPosition:
        """The well as a :class:`WellPosition`."""
        return parse_well(self.well)


@runtime_checkable
class PlateLayout(Protocol):
    """Maps an image path to its plate coordinates (a microscope's filename convention)."""

    def parse(self, path: str) -> ImageCoordinates:
        """Coordinates of the image at ``path``; raise ``PlateLayoutError`` when unparseable."""
        ...
