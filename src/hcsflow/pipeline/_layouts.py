"""Microscope filename conventions: :class:`~hcsflow.storage.plate.PlateLayout` parsers.

* :class:`ImageXpressLayout`: ``A01_s1_w1.tif`` (site, wavelength), optional ``_z001`` and
  ``_t1``, optional ``<prefix>_`` before the well.
* :class:`OperaPhenixLayout`: ``r01c01f01p01-ch1sk1fk1fl1.tiff`` (row, column, field,
  plane, channel, timepoint ``sk``).
* :class:`RegexLayout`: a user regular expression with named groups.

Numbers in file names are 1-based; :class:`ImageCoordinates` are 0-based.  Only the file
name (not the folder) is parsed.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from typing import Any

from hcsflow.errors import PlateLayoutError
from hcsflow.storage.plate import ImageCoordinates, parse_well, row_name

__all__ = [
    "ImageXpressLayout",
    "OperaPhenixLayout",
    "RegexLayout",
    "image_filename",
    "detect_layout",
    "LAYOUTS",
]


def _basename(path: str) -> str:
    return posixpath.basename(str(path).replace("\\", "/"))


def _one_based(value: str | None, what: str, path: str) -> int:
    if value is None:
        return 0
    n = int(value)
    if n < 1:
        raise PlateLayoutError(f"{what} number in {path!r} must start at 1, got {n}", path=path)
    return n - 1


class RegexLayout:
    """A layout from a regular expression matched against the file name.

    Named groups: ``well`` (``"B03"``) or ``row`` + ``column`` (``"B"``/``"2"`` or
    numbers, 1-based), and optionally ``site`` (or ``field``), ``channel``, ``z``,
    ``t``.  Numbers are 1-based unless ``one_based=False``.
    """

    name = "regex"

    def __init__(
        self, pattern: str | re.Pattern[str], *, one_based: bool = True, flags: int = re.IGNORECASE
    ):
        try:
            self.pattern = re.compile(pattern, flags) if isinstance(pattern, str) else pattern
        except re.error as exc:
            raise PlateLayoutError(f"invalid layout pattern {pattern!r}: {exc}") from None
        groups = set(self.pattern.groupindex)
        if "well" not in groups and not {"row", "column"} <= groups:
            raise PlateLayoutError(
                f"layout pattern {self.pattern.pattern!r} needs a 'well' group or 'row' and "
                f"'column' groups"
            )
        self.one_based = one_based

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.pattern.pattern!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RegexLayout) or type(other) is not type(self):
            return False
        return other.pattern.pattern == self.pattern.pattern and other.one_based == self.one_based

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.pattern.pattern, self.one_based))

    def _number(self, value: str | None, what: str, path: str) -> int:
        if value is None:
            return 0
        if self.one_based:
            return _one_based(value, what, path)
        return int(value)

    def parse(self, path: str) -> ImageCoordinates:
        """Coordinates of the image at ``path`` (:class:`PlateLayoutError` if unparseable)."""
        fname = _basename(path)
        m = self.pattern.fullmatch(fname)
        if m is None:
            raise PlateLayoutError(
                f"file name {fname!r} does not match the {self.name} layout "
                f"({self.pattern.pattern})",
                path=str(path),
            )
        g: dict[str, Any] = m.groupdict()
        try:
            if g.get("well") is not None:
                well = parse_well(g["well"]).name
            else:
                row, col = g["row"], g["column"]
                row_label = row_name(self._number(row, "row", path)) if row.isdigit() else row
                col_num = self._number(col, "column", path) + 1
                well = parse_well(f"{row_label}{col_num:02d}").name
            site = g.get("site") if g.get("site") is not None else g.get("field")
            return ImageCoordinates(
                well=well,
                field=self._number(site, "site", path),
                channel=self._number(g.get("channel"), "channel", path),
                z=self._number(g.get("z"), "z", path),
                t=self._number(g.get("t"), "t", path),
            )
        except PlateLayoutError as exc:
            raise PlateLayoutError(
                f"cannot place {fname!r} on a plate: {exc}", path=str(path)
            ) from None


class ImageXpressLayout(RegexLayout):
    """ImageXpress names: ``[prefix_]A01_s1_w1[_z001][_t1].tif``."""

    name = "imagexpress"

    def __init__(self) -> None:
        super().__init__(
            r"(?:.+_)?(?P<well>[A-Z]{1,2}\d{1,2})_s(?P<site>\d+)_w(?P<channel>\d+)"
            r"(?:_z(?P<z>\d+))?(?:_t(?P<t>\d+))?\.(?:tiff?|png|npy)"
        )


class OperaPhenixLayout(RegexLayout):
    """Opera Phenix names: ``r01c01f01p01-ch1sk1fk1fl1.tiff``."""

    name = "operaphenix"

    def __init__(self) -> None:
        super().__init__(
            r"r(?P<row>\d{1,2})c(?P<column>\d{1,2})f(?P<site>\d+)p(?P<z>\d+)"
            r"-ch(?P<channel>\d+)sk(?P<t>\d+)fk\d+fl\d+\.(?:tiff?|png|npy)"
        )


LAYOUTS: dict[str, Callable[[], RegexLayout]] = {
    "imagexpress": ImageXpressLayout,
    "operaphenix": OperaPhenixLayout,
}


def detect_layout(filenames: list[str]) -> RegexLayout:
    """The built-in layout that parses every name in ``filenames``.

    Raises :class:`PlateLayoutError` naming a file no layout parses (or when the names
    are empty).
    """
    if not filenames:
        raise PlateLayoutError("no image files to detect a plate layout from")
    best: tuple[int, str, RegexLayout] | None = None
    for cls in LAYOUTS.values():
        layout = cls()
        bad = [f for f in filenames if layout.pattern.fullmatch(_basename(f)) is None]
        if not bad:
            return layout
        if best is None or len(bad) < best[0]:
            best = (len(bad), bad[0], layout)
    assert best is not None
    raise PlateLayoutError(
        f"{best[0]} of {len(filenames)} file names fit no known layout "
        f"(closest: {best[2].name}); first unparseable: {_basename(best[1])!r}. Pass a "
        f"RegexLayout for other naming schemes",
        path=best[1],
    )


def image_filename(
    coords: ImageCoordinates, ext: str = ".tif", *, with_z: bool = False, with_t: bool = False
) -> str:
    """The ImageXpress-style file name hcsflow writes for ``coords``.

    ``_z001`` / ``_t1`` are added when asked (the plate has several planes or
    timepoints) or when the value is not the first.
    """
    name = f"{coords.well}_s{coords.field + 1}_w{coords.channel + 1}"
    if with_z or coords.z:
        name += f"_z{coords.z + 1:03d}"
    if with_t or coords.t:
        name += f"_t{coords.t + 1}"
    return name + ext
