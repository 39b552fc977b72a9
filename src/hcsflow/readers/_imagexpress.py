"""Format ``imagexpress``: Molecular Devices ImageXpress / MetaXpress plate exports.

An export is a folder with a plate description ``<plate>.HTD`` and the images::

    PLATE.HTD
    TimePoint_1/PLATE_A01_s1_w1<GUID>.tif        (one site, one wavelength per file)
    TimePoint_1/PLATE_A01_s1_w1_thumb<GUID>.tif  (thumbnail: skipped)
    TimePoint_1/ZStep_2/PLATE_A01_s1_w1<GUID>.tif  (z-stacks: one folder per plane)

The HTD is a list of comma-separated values with quoted keys, ``"HTSInfoFile",
Version 1.0`` first and ``"EndFile"`` last.  What is read: ``XWells``/``YWells`` and
``WellsSelection<row>`` (the selected wells), ``Sites``, ``XSites``/``YSites`` and
``SiteSelection<row>`` (sites are numbered 1.. in reading order over the selected
cells), ``Waves``, ``NWavelengths`` and ``WaveName<w>`` (channel names),
``TimePoints``, ``ZSteps``.  File names are ``[<plate>_]<well>[_s<site>][_w<wave>]``
with an optional GUID (``F1DE6A8E-...`` or ``_[...]``) before ``.tif``; ``_s`` is
absent when ``"Sites", FALSE`` and ``_w`` when ``"Waves", FALSE``.  Time and z come
from the ``TimePoint_<t>``/``ZStep_<z>`` folders (or ``_t<n>``/``_z<n>`` in a name).

The pixel size (``spatial-calibration-x/y``), the emission wavelength and the z step
(``z-position``) come from the MetaSeries XML in the TIFF ``ImageDescription`` of one
plane per channel (two planes for the z step): the only image files opened, and
only their first IFD.
"""

from __future__ import annotations

import csv
import functools
import re
from dataclasses import dataclass
from xml.etree.ElementTree import Element

from hcsflow import paths as vpaths
from hcsflow.errors import ExportMetadataError, MissingPlaneError, PlateLayoutError
from hcsflow.readers import _xml
from hcsflow.readers._base import (
    ChannelInfo,
    PlateBuilder,
    PlateDescription,
    PlateReader,
    listing,
)
from hcsflow.readers._layouts import is_thumbnail
from hcsflow.readers._source import PlateSource
from hcsflow.storage.plate import ImageCoordinates, WellPosition, parse_well, row_name

__all__ = ["ImageXpressReader", "Htd", "parse_htd"]

_GUID = r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
_NAME_RE = re.compile(
    r"^(?:(?P<prefix>.*)_)?(?P<well>[A-Za-z]{1,2}\d{2,3})"
    r"(?:_s(?P<site>\d+))?(?:_w(?P<wave>\d+))?(?:_z(?P<z>\d+))?(?:_t(?P<t>\d+))?"
    r"(?P<thumb>_thumb)?(?:_?\[?(?P<guid>" + _GUID + r")\]?)?\.(?P<ext>tiff?)$",
    re.IGNORECASE,
)
_TIME_DIR = re.compile(r"^TimePoint_(\d+)$", re.IGNORECASE)
_Z_DIR = re.compile(r"^ZStep_(\d+)$", re.IGNORECASE)
_UNITS_UM = {"um": 1.0, "µm": 1.0, "μm": 1.0, "micron": 1.0, "microns": 1.0, "nm": 1e-3, "mm": 1e3}


# --------------------------------------------------------------------------- the HTD


@dataclass(frozen=True)
class Htd:
    """What an HTD file says about the plate (1-based numbers as in file names)."""

    path: str
    values: dict[str, list[str]]
    lines: dict[str, int]
    rows: int
    columns: int
    wells: tuple[str, ...]
    """Selected wells, canonical names, row-major."""
    sites: int
    sites_in_names: bool
    waves: int
    waves_in_names: bool
    wave_names: tuple[str | None, ...]
    timepoints: int
    zsteps: int

    @property
    def name(self) -> str:
        """The plate name: the HTD file name without its extension."""
        base = vpaths.name(self.path)
        return base[: base.rfind(".")] if "." in base else base


def _decode(data: bytes) -> str:
    for enc in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(enc)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")  # maps every byte; descriptions hold arbitrary bytes


def parse_htd(data: bytes, path: str, backend: str = "disk") -> Htd:
    """Parse the HTD document ``data`` (read from ``path``).

    Raises :class:`ExportMetadataError` naming the file (and line) when it is not an
    HTD, is truncated (no ``"EndFile"``), or a value has the wrong type or count.
    """

    def fail(message: str, line: int | None = None) -> ExportMetadataError:
        where = f"line {line}: " if line else ""
        return ExportMetadataError(f"{where}{message}", path=path, backend=backend)

    text = _decode(data)
    values: dict[str, list[str]] = {}
    lines: dict[str, int] = {}
    seen_header = ended = False
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if not line.startswith('"'):
            raise fail(f"expected a quoted key, got {line[:60]!r}", number)
        try:
            fields = next(csv.reader([line], skipinitialspace=True))
        except csv.Error as exc:
            raise fail(f"unreadable line ({exc}): {line[:60]!r}", number) from None
        key, rest = fields[0].strip(), [f.strip() for f in fields[1:]]
        if not seen_header:
            if key != "HTSInfoFile":
                raise fail(f'not an HTD file: the first key is {key!r}, not "HTSInfoFile"', number)
            seen_header = True
            continue
        if key == "EndFile":
            ended = True
            break
        if key in values:
            raise fail(f"key {key!r} appears twice (lines {lines[key]} and {number})", number)
        values[key] = rest
        lines[key] = number
    if not seen_header:
        raise fail('empty file: no "HTSInfoFile" header')
    if not ended:
        raise fail('truncated: the file ends without the "EndFile" line')

    def integer(key: str, default: int | None = None) -> int:
        if key not in values:
            if default is None:
                raise fail(f'the required key "{key}" is missing')
            return default
        vals = values[key]
        try:
            n = int(vals[0])
        except (IndexError, ValueError):
            raise fail(f'"{key}" must be a whole number, got {vals!r}', lines[key]) from None
        if n < 1:
            raise fail(f'"{key}" must be at least 1, got {n}', lines[key])
        return n

    def flag(key: str, default: bool) -> bool:
        if key not in values:
            return default
        vals = values[key]
        word = vals[0].upper() if vals else ""
        if word not in ("TRUE", "FALSE"):
            raise fail(f'"{key}" must be TRUE or FALSE, got {vals!r}', lines[key])
        return word == "TRUE"

    def selection(prefix: str, n_rows: int, n_cols: int) -> list[tuple[int, int]]:
        chosen = []
        for key, vals in values.items():
            if not key.startswith(prefix) or not key[len(prefix) :].isdigit():
                continue
            r = int(key[len(prefix) :])
            if not 1 <= r <= n_rows:
                raise fail(f'"{key}": row {r} is outside 1..{n_rows}', lines[key])
            if len(vals) != n_cols:
                raise fail(
                    f'"{key}" has {len(vals)} values for {n_cols} columns (truncated?)', lines[key]
                )
            for c, v in enumerate(vals):
                word = v.upper()
                if word not in ("TRUE", "FALSE"):
                    raise fail(f'"{key}": value {c + 1} is {v!r}, not TRUE or FALSE', lines[key])
                if word == "TRUE":
                    chosen.append((r - 1, c))
        return sorted(chosen)

    columns, rows = integer("XWells"), integer("YWells")
    try:
        wells = tuple(
            WellPosition(r, c).name for r, c in selection("WellsSelection", rows, columns)
        )
        row_name(rows - 1)
    except PlateLayoutError as exc:
        raise fail(f"plate of {rows} x {columns} wells: {exc}") from None
    if not wells:
        raise fail("no well is selected (every WellsSelection value is FALSE)")
    sites_on = flag("Sites", default=False)
    if sites_on:
        x_sites, y_sites = integer("XSites"), integer("YSites")
        chosen = selection("SiteSelection", y_sites, x_sites)
        if not chosen and x_sites * y_sites == 1:
            chosen = [(0, 0)]  # one site: the selection line may be left out
        if not chosen:
            raise fail("sites are on but no site is selected (every SiteSelection value is FALSE)")
        n_sites = len(chosen)
    else:
        n_sites = 1
    waves_on = flag("Waves", default=False)
    n_waves = integer("NWavelengths", default=1) if waves_on else 1
    names: list[str | None] = []
    for w in range(1, n_waves + 1):
        vals = values.get(f"WaveName{w}")
        names.append(vals[0] if vals and vals[0] else None)
    zsteps = integer("ZSteps", default=1) if flag("ZSeries", default="ZSteps" in values) else 1
    return Htd(
        path=path,
        values=values,
        lines=lines,
        rows=rows,
        columns=columns,
        wells=wells,
        sites=n_sites,
        sites_in_names=sites_on,
        waves=n_waves,
        waves_in_names=waves_on,
        wave_names=tuple(names),
        timepoints=integer("TimePoints", default=1),
        zsteps=zsteps,
    )


# --------------------------------------------------------------------------- MetaSeries


def metaseries_props(description: str, path: str, backend: str) -> dict[str, str] | None:
    """The ``<prop id=... value=...>`` pairs of a MetaSeries ``ImageDescription``.

    ``None`` when the description is not MetaSeries XML; :class:`ExportMetadataError`
    when it starts like MetaSeries but does not parse.
    """
    text = description.strip()
    if not text.startswith("<MetaData>"):
        return None
    root: Element = _xml.parse(text.encode("utf-8"), path, backend)
    return {
        str(p.get("id")): str(p.get("value", ""))
        for p in root.iter("prop")
        if p.get("id") is not None
    }


# --------------------------------------------------------------------------- the reader


class ImageXpressReader(PlateReader):
    """ImageXpress / MetaXpress exports (``.HTD`` plate description and TIFFs)."""

    name = "imagexpress"
    title = "ImageXpress / MetaXpress (.HTD)"
    looks_for = "a .HTD plate description at the top of the folder"

    def _htd_files(self, source: PlateSource) -> list[str]:
        return [source.join(n) for n in source.list_dir() if n.lower().endswith(".htd")]

    def detect(self, source: PlateSource) -> bool:
        return any(source.is_file(p) for p in self._htd_files(source))

    def describe(self, source: PlateSource) -> PlateDescription:
        source.require_dir()
        htds = [p for p in self._htd_files(source) if source.is_file(p)]
        if not htds:
            raise MissingPlaneError(
                "no .HTD plate description at the top of the folder",
                path=source.root,
                backend=source.backend,
            )
        if len(htds) > 1:
            raise ExportMetadataError(
                f"{len(htds)} .HTD files ({listing([source.rel(h) for h in htds])}): which plate "
                "is meant is ambiguous; keep one plate per folder",
                path=source.root,
                backend=source.backend,
            )
        htd_path = htds[0]
        htd = parse_htd(source.read_bytes(htd_path), htd_path, source.backend)
        builder = PlateBuilder(source, self)
        selected = set(htd.wells)
        prefixes: set[str] = set()
        for f in source.files():
            name = vpaths.name(f)
            if f == htd_path:
                builder.skip(f, "plate description (HTD)")
                continue
            if not name.lower().endswith((".tif", ".tiff")):
                builder.skip(f, "not an image plane")
                continue
            m = _NAME_RE.match(name)
            if m is None:
                if is_thumbnail(name):
                    builder.skip(f, "thumbnail")
                else:
                    builder.unplace(f, "name does not fit <plate>_<well>_s<site>_w<wave>")
                continue
            if m.group("thumb"):
                builder.skip(f, "thumbnail")
                continue
            self._place(source, htd, builder, f, m, selected, prefixes)
        wells_with_files = {c.well for c in builder.placed}
        empty = [w for w in htd.wells if w not in wells_with_files]
        if empty:
            raise MissingPlaneError(
                f"the HTD selects {len(empty)} well(s) with no image files: {listing(empty)}",
                path=htd_path,
                backend=source.backend,
            )
        notes = [f"plate description {source.rel(htd_path)!r}"]
        if len(prefixes) > 1:
            notes.append(f"file names carry several plate prefixes: {listing(sorted(prefixes))}")
        channels, pixel, z_step, more = self._tiff_metadata(source, htd, builder)
        return builder.build(
            metadata_path=htd_path,
            name=htd.name,
            channel_info=channels,
            pixel_size_um=pixel,
            z_step_um=z_step,
            plate_shape=(htd.rows, htd.columns),
            metadata_files=(source.rel(htd_path),),
            notes=tuple(notes + more),
        )

    def _place(
        self,
        source: PlateSource,
        htd: Htd,
        builder: PlateBuilder,
        path: str,
        m: re.Match[str],
        selected: set[str],
        prefixes: set[str],
    ) -> None:
        try:
            well = parse_well(m.group("well")).name
        except PlateLayoutError:
            builder.unplace(path, f"{m.group('well')!r} is not a well name")
            return
        t_dir, z_dir = _folders(vpaths.relative_to(vpaths.parent(path), source.root))
        site = int(m.group("site")) if m.group("site") else 1
        wave = int(m.group("wave")) if m.group("wave") else 1
        t = t_dir if t_dir is not None else int(m.group("t")) if m.group("t") else 1
        z = z_dir if z_dir is not None else int(m.group("z")) if m.group("z") else 1
        why = None
        if well not in selected:
            why = f"well {well} is not selected in the HTD"
        elif not 1 <= site <= htd.sites:
            why = f"site {site} is outside the HTD's 1..{htd.sites}"
        elif not 1 <= wave <= htd.waves:
            why = f"wavelength {wave} is outside the HTD's 1..{htd.waves}"
        elif not 1 <= t <= htd.timepoints:
            why = f"timepoint {t} is outside the HTD's 1..{htd.timepoints}"
        elif not 1 <= z <= htd.zsteps:
            why = f"z step {z} is outside the HTD's 1..{htd.zsteps}"
        elif m.group("site") is None and htd.sites > 1:
            why = f"no _s<site> in the name but the HTD has {htd.sites} sites"
        elif m.group("wave") is None and htd.waves > 1:
            why = f"no _w<wave> in the name but the HTD has {htd.waves} wavelengths"
        if why is not None:
            builder.unplace(path, why)
            return
        if m.group("prefix"):
            prefixes.add(m.group("prefix"))
        builder.add(ImageCoordinates(well, site - 1, wave - 1, z - 1, t - 1), path)

    def _tiff_metadata(
        self, source: PlateSource, htd: Htd, builder: PlateBuilder
    ) -> tuple[tuple[ChannelInfo, ...], tuple[float, float] | None, float | None, list[str]]:
        """Channel names and wavelengths, pixel size and z step from MetaSeries headers."""
        first: dict[int, tuple[ImageCoordinates, str]] = {}
        z_planes: dict[int, str] = {}
        ref = min(builder.placed) if builder.placed else None
        for coords, img in builder.placed.items():
            if coords.t == 0 and coords.z == 0:
                seen = first.get(coords.channel)
                if seen is None or coords < seen[0]:
                    first[coords.channel] = (coords, img.path)
            if ref is not None and (coords.well, coords.field, coords.channel, coords.t) == (
                ref.well,
                ref.field,
                ref.channel,
                ref.t,
            ):
                z_planes[coords.z] = img.path
        notes: list[str] = []
        props: dict[int, dict[str, str]] = {}
        origin: dict[int, str] = {}
        for ch, (_, path) in sorted(first.items()):
            if not source.can_open:
                notes.append("TIFF headers not read (no byte access to the files): no pixel size")
                break
            found = metaseries_props(source.tiff_description(path), path, source.backend)
            if found is None:
                notes.append(f"no MetaSeries metadata in {source.rel(path)!r}: no pixel size")
                continue
            props[ch] = found
            origin[ch] = path
        channels = []
        for w in range(htd.waves):
            p = props.get(w, {})
            em = _float(p, "wavelength", origin.get(w, ""), source.backend)
            channels.append(
                ChannelInfo(
                    w,
                    name=htd.wave_names[w] or p.get("image-name") or None,
                    emission_nm=em if em else None,
                    source_id=f"w{w + 1}",
                )
            )
        pixel = None
        for ch in sorted(props):
            p = props[ch]
            x = _float(p, "spatial-calibration-x", origin[ch], source.backend)
            y = _float(p, "spatial-calibration-y", origin[ch], source.backend)
            unit = (p.get("spatial-calibration-units") or "um").strip()
            state = p.get("spatial-calibration-state", "on").lower()
            if x and y and state not in ("off", "false", "0") and unit in _UNITS_UM:
                f = _UNITS_UM[unit]
                pixel = (round(y * f, 9), round(x * f, 9))
            elif x and y:
                notes.append(f"spatial calibration of unit {unit!r} ({state}) is not used")
            break
        z_step = None
        if len(z_planes) > 1 and ref is not None:
            zs: list[float] = []
            for z in sorted(z_planes)[:2]:
                found = (
                    metaseries_props(
                        source.tiff_description(z_planes[z]), z_planes[z], source.backend
                    )
                    if source.can_open
                    else None
                )
                value = _float(found, "z-position", z_planes[z], source.backend) if found else None
                if value is None:
                    zs = []
                    break
                zs.append(value)
            if len(zs) == 2 and zs[1] != zs[0]:
                z_step = round(abs(zs[1] - zs[0]), 6)
        return tuple(channels), pixel, z_step, notes


@functools.lru_cache(maxsize=4096)
def _folders(relative_folder: str) -> tuple[int | None, int | None]:
    """(timepoint, z step) named by ``TimePoint_<t>``/``ZStep_<z>`` folders of a path."""
    t_dir = z_dir = None
    for part in relative_folder.split("/"):
        if (mt := _TIME_DIR.match(part)) is not None:
            t_dir = int(mt.group(1))
        elif (mz := _Z_DIR.match(part)) is not None:
            z_dir = int(mz.group(1))
    return t_dir, z_dir


def _float(props: dict[str, str], key: str, path: str, backend: str) -> float | None:
    """A MetaSeries property as a number (``None`` when absent or empty)."""
    text = props.get(key)
    if text is None or text.strip() == "":
        return None
    return _xml.number(text, f"MetaSeries property {key!r}", path, backend)
