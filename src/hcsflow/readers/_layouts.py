"""File-name layouts, and the reader of plain folders of named image files.

A layout (:class:`~hcsflow.storage.plate.PlateLayout`) maps a file name to plate
coordinates; :class:`FileLayoutReader` (format ``files``) describes a folder whose
image files all fit one layout.  It is the fallback when no export's metadata files
are found.

* :class:`ImageXpressLayout`: ``A01_s1_w1.tif`` (site, wavelength), optional ``_z001`` and
  ``_t1``, optional ``<prefix>_`` before the well, optional MetaXpress GUID after the
  wavelength (``A01_s1_w1F1DE6A8E-2C4F-4E97-A4A5-9F1B59B46C6E.tif``).
* :class:`OperaPhenixLayout`: ``r01c01f01p01-ch1sk1fk1fl1.tiff`` (row, column, field,
  plane, channel, timepoint ``sk``).
* :class:`RegexLayout`: a user regular expression with named groups.

Numbers in file names are 1-based; :class:`ImageCoordinates` are 0-based.  Only the file
name (not the folder) is parsed.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Sequence
from typing import Any

from hcsflow import paths as vpaths
from hcsflow.errors import PlateLayoutError
from hcsflow.readers._base import PlateBuilder, PlateDescription, PlateReader
from hcsflow.readers._source import PlateSource
from hcsflow.storage import IMAGE_EXTENSIONS
from hcsflow.storage.plate import ImageCoordinates, PlateLayout, parse_well, row_name

__all__ = [
    "ImageXpressLayout",
    "OperaPhenixLayout",
    "RegexLayout",
    "FileLayoutReader",
    "image_filename",
    "detect_layout",
    "is_thumbnail",
    "LAYOUTS",
]

_GUID = r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
_THUMB_RE = re.compile(r"_thumb(?:_?\[?" + _GUID + r"\]?)?\.[A-Za-z]+$", re.IGNORECASE)


def is_thumbnail(name: str) -> bool:
    """Whether a file name is an ImageXpress/MetaXpress thumbnail (``..._thumb<GUID>.tif``)."""
    return _THUMB_RE.search(name) is not None


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
    """ImageXpress names: ``[prefix_]A01_s1_w1[<GUID>][_z001][_t1].tif``."""

    name = "imagexpress"

    def __init__(self) -> None:
        super().__init__(
            r"(?:.+_)?(?P<well>[A-Z]{1,2}\d{1,2})_s(?P<site>\d+)_w(?P<channel>\d+)"
            r"(?:_?\[?" + _GUID + r"\]?)?"
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


# --------------------------------------------------------------------------- the reader


class FileLayoutReader(PlateReader):
    """Format ``files``: a folder of image files whose names fit one layout.

    ``layout`` defaults to the built-in layout that parses every name (ImageXpress or
    Opera Phenix).  ImageXpress thumbnails (``_thumb``) and files that are not images
    are skipped; with an explicit layout, an image name it does not parse is an error
    (nothing else says where such a file belongs).
    """

    name = "files"
    title = "folder of named image files"
    looks_for = (
        "image files (.tif .tiff .png .npy) whose names all fit a layout: ImageXpress "
        "A01_s1_w1.tif or Opera Phenix r01c01f01p01-ch1sk1fk1fl1.tiff"
    )

    def __init__(
        self,
        layout: PlateLayout | None = None,
        *,
        extensions: Sequence[str] | None = None,
        recursive: bool = True,
    ):
        if layout is not None and not isinstance(layout, PlateLayout):
            raise PlateLayoutError(f"layout must have a parse(path) method, got {layout!r}")
        self.layout = layout
        self.extensions = tuple(e.lower() for e in (extensions or IMAGE_EXTENSIONS))
        self.recursive = recursive

    def __repr__(self) -> str:
        return f"FileLayoutReader({self.layout!r})"

    def _classify(self, source: PlateSource) -> tuple[list[str], list[str], list[str]]:
        """(image files, thumbnails, other files) below the root, in natural order."""
        files = source.files()
        if not self.recursive:
            files = [f for f in files if vpaths.parent(f) == source.root]
        images, thumbs, other = [], [], []
        for f in files:
            name = vpaths.name(f)
            if not name.lower().endswith(self.extensions):
                other.append(f)
            elif is_thumbnail(name):
                thumbs.append(f)
            else:
                images.append(f)
        return vpaths.natural_sorted(images), thumbs, other

    def detect(self, source: PlateSource) -> bool:
        images, _, _ = self._classify(source)
        if not images:
            return False
        if self.layout is not None:
            return True
        try:
            detect_layout(images)
        except PlateLayoutError:
            return False
        return True

    def explain(self, source: PlateSource) -> str:
        images, _, _ = self._classify(source)
        if not images:
            exts = " ".join(self.extensions)
            return f"looked for image files ({exts}): the plate directory holds no image files"
        try:
            detect_layout(images)
        except PlateLayoutError as exc:
            return f"looked for {self.looks_for}: {exc.args[0]}"
        return f"looked for {self.looks_for}"

    def describe(self, source: PlateSource) -> PlateDescription:
        source.require_dir()
        images, thumbs, other = self._classify(source)
        if not images:
            raise PlateLayoutError(
                "the plate directory holds no image files", path=source.root, backend=source.backend
            )
        layout = self.layout if self.layout is not None else detect_layout(images)
        layout_name = getattr(layout, "name", type(layout).__name__)
        builder = PlateBuilder(source, self, duplicates="layout")
        for f in thumbs:
            builder.skip(f, "thumbnail")
        for f in other:
            builder.skip(f, "not an image file")
        unparseable = []
        for path in images:
            try:
                coords = layout.parse(path)
            except PlateLayoutError:
                unparseable.append(source.rel(path))
                continue
            builder.add(coords, path)
        if unparseable:
            builder.problems.insert(
                0,
                f"{len(unparseable)} file name(s) do not fit the {layout_name} "
                f"layout: {_listing(unparseable)}",
            )
        return builder.build(layout=layout_name)


def _listing(items: list[str]) -> str:
    shown = ", ".join(repr(i) for i in items[:10])
    more = f" and {len(items) - 10} more" if len(items) > 10 else ""
    return shown + more
