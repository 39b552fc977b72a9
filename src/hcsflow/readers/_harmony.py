"""Format ``harmony``: Revvity/PerkinElmer Opera Phenix and Operetta CLS exports.

Harmony exports a measurement as an XML index plus one TIFF per plane::

    Measurement 1/Images/Index.idx.xml        (Harmony 6/7 exports: Index.xml;
    Measurement 1/Images/r01c01f01p01-ch1sk1fk1fl1.tiff    older: Index.ref.xml)

The index's root element is ``EvaluationInputData`` in a Harmony namespace
(``http://www.perkinelmer.com/PEHH/HarmonyV5``, ``.../HarmonyV6``, Harmony 7's
``43B2A954-E3C3-47E1-B392-6635266B0DD3/HarmonyV7``; an unknown namespace is refused).
What is read, and from where:

* ``Plates/Plate``: ``Name`` (plate name), ``PlateRows``/``PlateColumns``.
* ``Images/Image``, one per plane: ``URL`` (file, relative to the index), ``Row`` and
  ``Col`` (1-based well), ``FieldID``, ``PlaneID``, ``TimepointID``, ``ChannelID``
  (ranked: the n-th distinct value is coordinate n-1), ``State`` (planes not ``Ok``
  are left out and named), ``ChannelName``, ``ImageResolutionX/Y`` (``Unit="m"``:
  metres per pixel), ``PositionX/Y/Z`` (metres), ``MeasurementTimeOffset`` (seconds),
  ``MainExcitationWavelength``/``MainEmissionWavelength`` (nm).
* ``Maps/Map/Entry[@ChannelID]``: the same channel fields, for records that do not
  carry them (Harmony 6 and 7 keep channel descriptions only there).

The z step is the mean ``PositionZ`` step of the first field's stack; the time
interval the median step of ``MeasurementTimeOffset`` between timepoints.
"""

from __future__ import annotations

import posixpath
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple
from xml.etree.ElementTree import Element

from hcsflow import paths as vpaths
from hcsflow.errors import ExportMetadataError, MissingPlaneError, PathEscapeError
from hcsflow.readers import _xml
from hcsflow.readers._base import (
    ChannelInfo,
    PlateBuilder,
    PlateDescription,
    PlateReader,
    dense_index,
    listing,
)
from hcsflow.readers._source import PlateSource
from hcsflow.storage.plate import ImageCoordinates, WellPosition

__all__ = ["HarmonyReader", "HARMONY_NAMESPACES", "INDEX_NAMES"]

HARMONY_NAMESPACES: dict[str, str] = {
    "http://www.perkinelmer.com/PEHH/HarmonyV4": "Harmony V4",
    "http://www.perkinelmer.com/PEHH/HarmonyV5": "Harmony V5",
    "http://www.perkinelmer.com/PEHH/HarmonyV6": "Harmony V6",
    "43B2A954-E3C3-47E1-B392-6635266B0DD3/HarmonyV7": "Harmony V7",
}
"""XML namespaces of Harmony index files the reader knows."""

INDEX_NAMES = ("Index.idx.xml", "Index.xml", "Index.ref.xml")
"""Index file names, in the order they are looked for (in the folder, then ``Images/``)."""

_TIFF = (".tif", ".tiff")
_LENGTH_UM = {"m": 1e6, "mm": 1e3, "um": 1.0, "µm": 1.0, "μm": 1.0, "nm": 1e-3}
_TIME_S = {"s": 1.0, "ms": 1e-3, "min": 60.0, "h": 3600.0}

# channel fields a record may carry itself or inherit from its Maps entry
_CHANNEL_FIELDS = (
    "ChannelName",
    "ImageResolutionX",
    "ImageResolutionY",
    "ImageSizeX",
    "ImageSizeY",
    "MainExcitationWavelength",
    "MainEmissionWavelength",
)


class _Value(NamedTuple):
    text: str
    unit: str | None


# the fields of an image record (or a Maps entry) the reader uses
_WANTED = frozenset(
    {
        "id",
        "State",
        "URL",
        "Row",
        "Col",
        "FieldID",
        "PlaneID",
        "TimepointID",
        "ChannelID",
        "ChannelName",
        "ImageResolutionX",
        "ImageResolutionY",
        "PositionX",
        "PositionY",
        "PositionZ",
        "MeasurementTimeOffset",
        "MainExcitationWavelength",
        "MainEmissionWavelength",
    }
)


@dataclass
class _Record:
    id: str
    fields: dict[str, _Value]


def _find_index(source: PlateSource) -> str | None:
    for folder in ("", "Images"):
        names = set(source.list_dir(source.join(folder) if folder else None))
        for name in INDEX_NAMES:
            if name in names:
                path = source.join(folder, name) if folder else source.join(name)
                if source.is_file(path):
                    return path
    return None


class HarmonyReader(PlateReader):
    """Opera Phenix / Operetta CLS (Harmony) exports."""

    name = "harmony"
    title = "Opera Phenix / Operetta (Harmony)"
    looks_for = "Index.idx.xml, Index.xml or Index.ref.xml in the folder or in its Images/ folder"

    def detect(self, source: PlateSource) -> bool:
        return _find_index(source) is not None

    def describe(self, source: PlateSource) -> PlateDescription:
        source.require_dir()
        index = _find_index(source)
        if index is None:
            raise MissingPlaneError(
                f"no Harmony index ({', '.join(INDEX_NAMES)}) in the folder or its Images/ folder",
                path=source.root,
                backend=source.backend,
            )
        return _Parser(source, index, self).run()


class _Parser:
    def __init__(self, source: PlateSource, index: str, reader: HarmonyReader):
        self.source = source
        self.index = index
        self.reader = reader
        self.backend = source.backend
        self.plate: dict[str, str] = {}
        self.selected: list[str] = []
        self.maps: dict[str, dict[str, _Value]] = {}
        self.records: list[_Record] = []
        self.version = ""
        self.cut = 0
        self.wanted: list[tuple[str, str]] = []
        self.by_path: dict[str, _Record] = {}

    # -- errors
    def error(self, message: str) -> ExportMetadataError:
        return ExportMetadataError(message, path=self.index, backend=self.backend)

    def length_um(self, value: _Value, what: str) -> float:
        unit = (value.unit or "m").strip()
        factor = _LENGTH_UM.get(unit)
        if factor is None:
            raise self.error(f"{what} has unit {unit!r}; expected one of {sorted(_LENGTH_UM)}")
        return _xml.number(value.text, what, self.index, self.backend) * factor

    def seconds(self, value: _Value, what: str) -> float:
        unit = (value.unit or "s").strip()
        factor = _TIME_S.get(unit)
        if factor is None:
            raise self.error(f"{what} has unit {unit!r}; expected one of {sorted(_TIME_S)}")
        return _xml.number(value.text, what, self.index, self.backend) * factor

    # -- parsing
    def root_tag(self, data: bytes) -> str:
        """The root element's tag, from the start of the document only."""
        head = _xml.pull_parser(self.index, self.backend)
        for i in range(0, len(data), 1 << 16):
            for elem in head.feed(data[i : i + (1 << 16)]):
                return str(elem.tag)
        raise self.error("truncated XML: the document has no root element")

    def parse(self) -> None:
        data = self.source.read_bytes(self.index)
        if not data.strip():
            raise self.error("the Harmony index is empty")
        ns, local = _xml.split_tag(self.root_tag(data))
        if local != "EvaluationInputData":
            raise self.error(
                f"root element is {local!r}, not 'EvaluationInputData': not a Harmony index"
            )
        if ns not in HARMONY_NAMESPACES:
            raise self.error(
                f"unknown XML namespace {ns!r} of the Harmony index; known: "
                f"{', '.join(HARMONY_NAMESPACES)}"
            )
        self.version = HARMONY_NAMESPACES[ns]
        self.cut = len(ns) + 2
        self.wanted = [(local, f"{{{ns}}}{local}") for local in sorted(_WANTED)]
        image, entry, plate, well = (f"{{{ns}}}{t}" for t in ("Image", "Entry", "Plate", "Well"))
        # "end" events only: each element is handled once it is complete, then freed
        for elem in _xml.iter_ends(data, self.index, self.backend):
            tag = elem.tag
            if tag == image:
                if len(elem):  # Images/Image; Wells/Well/Image are empty references
                    self.records.append(self.read_record(elem))
                    elem.clear()
            elif tag == entry:
                self.read_map_entry(elem)
                elem.clear()
            elif tag == plate:
                self.read_plate(elem)
                elem.clear()
            elif tag == well and len(elem):
                elem.clear()  # Wells/Well: references to the images, not needed

    def read_plate(self, elem: Element) -> None:
        for child in elem:
            local = child.tag[self.cut :]
            if local == "Well":
                wid = child.get("id")
                if wid:
                    self.selected.append(wid)
            elif local not in self.plate:
                self.plate[local] = (child.text or "").strip()

    def read_map_entry(self, elem: Element) -> None:
        cid = elem.get("ChannelID")
        if cid is None:
            return  # entries keyed otherwise (none known) carry no channel description
        entry = self.maps.setdefault(cid.strip(), {})
        for child in elem:
            local = child.tag[self.cut :]
            if local in _WANTED and local not in entry:
                entry[local] = _Value((child.text or "").strip(), child.get("Unit"))

    def read_record(self, elem: Element) -> _Record:
        by_tag = {child.tag: child for child in elem}  # one C-level pass over the children
        fields: dict[str, _Value] = {}
        for local, tag in self.wanted:
            child = by_tag.get(tag)
            if child is not None:
                text = child.text
                fields[local] = _Value(text.strip() if text else "", child.get("Unit"))
        rid = fields["id"].text if "id" in fields else f"#{len(self.records) + 1}"
        return _Record(rid, fields)

    # -- the plate
    def field_of(self, rec: _Record, name: str, *, inherit: bool = False) -> _Value | None:
        value = rec.fields.get(name)
        if value is not None and value.text != "":
            return value
        if inherit:
            cid = rec.fields.get("ChannelID")
            if cid is not None:
                return self.maps.get(cid.text, {}).get(name)
        return None

    def required_int(self, rec: _Record, name: str) -> int:
        value = rec.fields.get(name)
        if value is None or value.text == "":
            raise self.error(f"image record {rec.id!r} has no {name}")
        return _xml.integer(
            value.text, f"{name} of image record {rec.id!r}", self.index, self.backend
        )

    def run(self) -> PlateDescription:
        self.parse()
        src = self.source
        index_dir = vpaths.parent(self.index)
        files = src.files()
        present = set(files)
        builder = PlateBuilder(src, self.reader)
        rows: list[tuple[_Record, str, int, int, int, int, int, int]] = []
        missing: list[str] = []
        not_ok: dict[str, str] = {}
        for rec in self.records:
            url_v = rec.fields.get("URL")
            if url_v is None or url_v.text == "":
                raise self.error(f"image record {rec.id!r} has no URL")
            path = self.resolve(url_v.text, index_dir, rec)
            vals = rec.fields
            try:
                row, col, fid, pid, tid, cid = (
                    int(vals[k].text)
                    for k in ("Row", "Col", "FieldID", "PlaneID", "TimepointID", "ChannelID")
                )
            except (KeyError, ValueError):
                for k in ("Row", "Col", "FieldID", "PlaneID", "TimepointID", "ChannelID"):
                    self.required_int(rec, k)  # raises the error naming the field
                raise
            state = rec.fields.get("State")
            if state is not None and state.text and state.text != "Ok":
                not_ok[path] = state.text
            elif path not in present:
                missing.append(src.rel(path))
            rows.append((rec, path, row, col, fid, pid, tid, cid))
        if missing:
            raise MissingPlaneError(
                f"{len(missing)} image file(s) named by the Harmony index are missing: "
                f"{listing(missing)}",
                path=self.index,
                backend=self.backend,
            )
        if not rows:
            raise self.error("the Harmony index lists no images")
        self.by_path = {r[1]: r[0] for r in rows}
        fields = dense_index([r[4] for r in rows])
        planes = dense_index([r[5] for r in rows])
        times = dense_index([r[6] for r in rows])
        chans = dense_index([r[7] for r in rows])
        first: dict[int, _Record] = {}
        stacks: dict[tuple[str, int, int, int], list[tuple[int, _Record]]] = {}
        for rec, path, row, col, fid, pid, tid, cid in rows:
            try:
                well = WellPosition(row - 1, col - 1).name
                coords = ImageCoordinates(well, fields[fid], chans[cid], planes[pid], times[tid])
            except (ValueError, TypeError) as exc:
                raise self.error(f"image record {rec.id!r}: Row {row}, Col {col}: {exc}") from None
            if path in not_ok:
                if path in present:
                    builder.unplace(path, f"index record {rec.id!r} has State {not_ok[path]!r}")
                builder.hole(coords, f"record {rec.id!r} has State {not_ok[path]!r}")
                continue
            builder.add(coords, path, what=f"record {rec.id!r} ({src.rel(path)!r})")
            first.setdefault(coords.channel, rec)
            stacks.setdefault((well, coords.field, coords.channel, coords.t), []).append(
                (coords.z, rec)
            )
        placed = {img.path for img in builder.placed.values()} | set(not_ok)
        for f in files:
            name = vpaths.name(f)
            if f == self.index:
                builder.skip(f, "Harmony index")
            elif f in placed:
                continue
            elif name in INDEX_NAMES or name.lower().endswith(".xml"):
                builder.skip(f, "metadata")
            elif not vpaths.is_relative_to(f, index_dir):
                builder.skip(f, "outside the image folder of the index")
            elif name.lower().endswith(_TIFF):
                builder.unplace(f, "not in the Harmony index")
            else:
                builder.skip(f, "not an image plane")
        channel_info = tuple(self.channel(i, cid, first.get(i)) for cid, i in chans.items())
        pixel = self.pixel_size(first)
        return builder.build(
            metadata_path=self.index,
            name=self.plate.get("Name") or self.plate.get("PlateID") or None,
            channel_info=channel_info,
            pixel_size_um=pixel,
            z_step_um=self.z_step(stacks),
            time_interval_s=self.time_interval(builder),
            plate_shape=self.plate_shape(),
            field_positions_um=self.positions(builder),
            metadata_files=(src.rel(self.index),),
            notes=self.notes(chans, builder),
        )

    def resolve(self, url: str, index_dir: str, rec: _Record) -> str:
        if "/" not in url and "\\" not in url and url not in (".", ".."):
            # the usual case: a file beside the index (rstrip: it may be the root "/")
            return f"{index_dir.rstrip('/')}/{url}"
        text = url.replace("\\", "/")
        if "://" in text or text.startswith("/") or (len(text) > 1 and text[1] == ":"):
            # absolute paths and URLs of the acquisition machine: the file sits beside the index
            text = posixpath.basename(text)
        try:
            path = vpaths.join(index_dir, text)
        except PathEscapeError:
            raise self.error(f"image record {rec.id!r} has URL {url!r} outside the plate") from None
        if not vpaths.is_relative_to(path, self.source.root):
            raise self.error(f"image record {rec.id!r} has URL {url!r} outside the plate")
        return path

    def channel(self, index: int, cid: int, rec: _Record | None) -> ChannelInfo:
        name = ex = em = None
        if rec is not None:
            v = self.field_of(rec, "ChannelName", inherit=True)
            name = v.text if v is not None else None
            v = self.field_of(rec, "MainExcitationWavelength", inherit=True)
            ex = (
                _xml.number(v.text, "MainExcitationWavelength", self.index, self.backend)
                if v
                else None
            )
            v = self.field_of(rec, "MainEmissionWavelength", inherit=True)
            em = (
                _xml.number(v.text, "MainEmissionWavelength", self.index, self.backend)
                if v
                else None
            )
        return ChannelInfo(
            index,
            name=name or None,
            excitation_nm=ex or None,
            emission_nm=em or None,
            source_id=str(cid),
        )

    def pixel_size(self, first: Mapping[int, _Record]) -> tuple[float, float] | None:
        for c in sorted(first):
            rec = first[c]
            vx = self.field_of(rec, "ImageResolutionX", inherit=True)
            vy = self.field_of(rec, "ImageResolutionY", inherit=True)
            if vx is not None and vy is not None:
                x = self.length_um(vx, f"ImageResolutionX of record {rec.id!r}")
                y = self.length_um(vy, f"ImageResolutionY of record {rec.id!r}")
                if x <= 0 or y <= 0:
                    raise self.error(f"record {rec.id!r} has a pixel size <= 0 ({y} x {x} µm)")
                return (round(y, 9), round(x, 9))
        return None

    def z_step(
        self, stacks: Mapping[tuple[str, int, int, int], list[tuple[int, _Record]]]
    ) -> float | None:
        for key in sorted(stacks):
            stack = sorted(stacks[key], key=lambda zr: zr[0])
            if len(stack) < 2:
                return None
            zs = []
            for _, rec in stack:
                v = self.field_of(rec, "PositionZ")
                if v is None:
                    return None
                zs.append(self.length_um(v, f"PositionZ of record {rec.id!r}"))
            step = abs(zs[-1] - zs[0]) / (len(zs) - 1)
            return round(step, 6) if step > 0 else None
        return None

    def time_interval(self, builder: PlateBuilder) -> float | None:
        placed = builder.placed
        if not placed:
            return None
        ref = min(placed)
        by_t: dict[int, float] = {}
        for coords, img in placed.items():
            same = (coords.well, coords.field, coords.channel, coords.z)
            if same != (ref.well, ref.field, ref.channel, ref.z):
                continue
            rec = self.by_path[img.path]
            v = self.field_of(rec, "MeasurementTimeOffset")
            if v is None:
                return None
            by_t[coords.t] = self.seconds(v, f"MeasurementTimeOffset of record {rec.id!r}")
        if len(by_t) < 2:
            return None
        times = [by_t[t] for t in sorted(by_t)]
        step = statistics.median(b - a for a, b in zip(times, times[1:], strict=False))
        return round(step, 6) if step > 0 else None

    def positions(self, builder: PlateBuilder) -> dict[tuple[str, int], tuple[float, float]]:
        out: dict[tuple[str, int], tuple[float, float]] = {}
        for coords, img in sorted(builder.placed.items()):
            key = (coords.well, coords.field)
            if key in out:
                continue
            rec = self.by_path[img.path]
            vx, vy = self.field_of(rec, "PositionX"), self.field_of(rec, "PositionY")
            if vx is None or vy is None:
                return {}
            # + 0.0: a position of -0.0 m prints as 0
            out[key] = (
                round(self.length_um(vy, f"PositionY of record {rec.id!r}"), 6) + 0.0,
                round(self.length_um(vx, f"PositionX of record {rec.id!r}"), 6) + 0.0,
            )
        return out

    def plate_shape(self) -> tuple[int, int] | None:
        r, c = self.plate.get("PlateRows"), self.plate.get("PlateColumns")
        if not r or not c:
            return None
        return (
            _xml.integer(r, "PlateRows", self.index, self.backend),
            _xml.integer(c, "PlateColumns", self.index, self.backend),
        )

    def notes(self, chans: Mapping[int, int], builder: PlateBuilder) -> tuple[str, ...]:
        notes = [f"index {self.source.rel(self.index)!r} ({self.version})"]
        wells = {c.well for c in builder.placed}
        empty = []
        for wid in self.selected:
            if len(wid) == 4 and wid.isdigit():
                name = WellPosition(int(wid[:2]) - 1, int(wid[2:]) - 1).name
                if name not in wells:
                    empty.append(name)
        if empty:
            notes.append(f"wells selected in the plate without images: {listing(empty)}")
        return tuple(notes)
