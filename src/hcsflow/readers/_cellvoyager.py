"""Format ``cellvoyager``: Yokogawa CellVoyager CV7000 / CV8000 measurements.

A measurement folder holds XML files in the BTS schema
(namespace ``http://www.yokogawa.co.jp/BTS/BTSSchema/1.0``, prefix ``bts``) and one
TIFF per plane::

    MeasurementData.mlf     one bts:MeasurementRecord per plane (the file name is its text)
    MeasurementDetail.mrf   plate size, one bts:MeasurementChannel per channel (pixel size)
    <setting>.mes           the settings the .mrf names: channel targets (names), colours
    PL1_A01_T0001F001L01A01Z01C01.tif

What is read, and from where:

* ``.mlf`` records with ``bts:Type="IMG"``: ``bts:Row``/``bts:Column`` (1-based well),
  ``bts:FieldIndex``, ``bts:ZIndex``, ``bts:TimePoint`` (ranked per well: the n-th
  distinct value is timepoint n-1), ``bts:Ch``, ``bts:X``/``bts:Y``/``bts:Z`` (stage
  position in micrometres), ``bts:Time`` (timestamps: the time interval).  Records of
  type ``ERR`` (the instrument's acquisition errors) describe no image; a plane they
  leave missing is named with the reason.
* ``.mrf``: ``bts:MeasurementChannel`` ``bts:HorizontalPixelDimension``/
  ``bts:VerticalPixelDimension`` (micrometres per pixel) and ``bts:ShadingCorrectionSource``
  (correction images: skipped), ``bts:RowCount``/``bts:ColumnCount``,
  ``bts:MeasurementSamplePlate`` ``bts:Name`` (the plate name), and
  ``bts:MeasurementSettingFileName``.
* ``.mes`` (``bts:ChannelList/bts:Channel``): ``bts:Target`` (the channel name),
  ``bts:Color`` (``#AARRGGBB``), ``bts:Acquisition`` (an emission filter ``BP445/45``
  gives the emission wavelength, its centre).
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from datetime import datetime
from xml.etree.ElementTree import Element

from hcsflow import paths as vpaths
from hcsflow.errors import (
    ExportMetadataError,
    MissingPlaneError,
    PathEscapeError,
    PlateLayoutError,
)
from hcsflow.readers import _xml
from hcsflow.readers._base import (
    ChannelInfo,
    PlateBuilder,
    PlateDescription,
    PlateReader,
    listing,
)
from hcsflow.readers._source import PlateSource
from hcsflow.storage.plate import ImageCoordinates, WellPosition, parse_well

__all__ = ["CellVoyagerReader", "BTS_NAMESPACE"]

BTS_NAMESPACE = "http://www.yokogawa.co.jp/BTS/BTSSchema/1.0"
MLF_NAME = "MeasurementData.mlf"
MRF_NAME = "MeasurementDetail.mrf"
_METADATA_EXT = (".mlf", ".mrf", ".mes", ".wpi", ".wpp", ".ppf", ".xml", ".log", ".csv")
_IMAGE_EXT = (".tif", ".tiff", ".png")
_FILTER_RE = re.compile(r"^\s*BP\s*(\d+(?:\.\d+)?)\s*/\s*\d+", re.IGNORECASE)


def _a(name: str) -> str:
    return f"{{{BTS_NAMESPACE}}}{name}"


@dataclass
class _Rec:
    line: int
    file: str
    path: str
    row: int
    column: int
    field: int
    z: int
    timepoint: int
    ch: int
    x: float | None
    y: float | None
    zpos: float | None
    time: str | None


@dataclass
class _Detail:
    name: str | None = None
    title: str | None = None
    rows: int | None = None
    columns: int | None = None
    setting: str | None = None
    pixel: dict[int, tuple[float, float]] | None = None
    corrections: tuple[str, ...] = ()


class CellVoyagerReader(PlateReader):
    """Yokogawa CellVoyager CV7000/CV8000 measurement folders."""

    name = "cellvoyager"
    title = "Yokogawa CellVoyager (CV7000/CV8000)"
    looks_for = f"{MLF_NAME} (with {MRF_NAME}) at the top of the folder"

    def detect(self, source: PlateSource) -> bool:
        return source.is_file(source.join(MLF_NAME))

    def describe(self, source: PlateSource) -> PlateDescription:
        source.require_dir()
        mlf = source.join(MLF_NAME)
        if not source.is_file(mlf):
            raise MissingPlaneError(
                f"no {MLF_NAME} at the top of the folder", path=source.root, backend=source.backend
            )
        return _Parser(source, mlf, self).run()


class _Parser:
    def __init__(self, source: PlateSource, mlf: str, reader: CellVoyagerReader):
        self.source = source
        self.mlf = mlf
        self.reader = reader
        self.backend = source.backend
        self.errors: list[_Rec] = []
        self.notes: list[str] = []

    def fail(self, path: str, message: str) -> ExportMetadataError:
        return ExportMetadataError(message, path=path, backend=self.backend)

    def root_of(self, path: str, expected: str) -> Element:
        data = self.source.read_bytes(path)
        if not data.strip():
            raise self.fail(path, "the file is empty")
        root = _xml.parse(data, path, self.backend)
        ns, local = _xml.split_tag(root.tag)
        if ns != BTS_NAMESPACE:
            raise self.fail(
                path,
                f"unknown XML namespace {ns!r} of the {local!r} document; expected "
                f"{BTS_NAMESPACE!r}",
            )
        if local != expected:
            raise self.fail(path, f"root element is bts:{local}, not bts:{expected}")
        return root

    # -- MeasurementData.mlf
    def records(self) -> list[_Rec]:
        root = self.root_of(self.mlf, "MeasurementData")
        out: list[_Rec] = []
        record_tag, type_tag, time_tag = _a("MeasurementRecord"), _a("Type"), _a("Time")
        ints = tuple(_a(n) for n in ("Row", "Column", "FieldIndex", "ZIndex", "TimePoint", "Ch"))
        floats = tuple(_a(n) for n in ("X", "Y", "Z"))
        for number, rec in enumerate(root, start=1):
            if rec.tag != record_tag:
                continue
            at = rec.attrib
            kind = at.get(type_tag)
            file = (rec.text or "").strip()
            path = ""
            if kind == "IMG":
                if not file:
                    raise self.fail(self.mlf, f"record {number} of {MLF_NAME} names no image file")
                path = self.resolve(file, f"record {number} of {MLF_NAME}")
            elif kind != "ERR":
                raise self.fail(
                    self.mlf,
                    f"record {number} of {MLF_NAME} has bts:Type {kind!r}, not IMG or ERR",
                )
            try:
                row, col, field, z, tp, ch = (int(at[k]) for k in ints)
                x, y, zpos = (float(at[k]) if k in at else None for k in floats)
            except (KeyError, ValueError):
                self.bad_record(rec, number)
                raise  # bad_record raises; this keeps type checkers informed
            r = _Rec(number, file, path, row, col, field, z, tp, ch, x, y, zpos, at.get(time_tag))
            (out if kind == "IMG" else self.errors).append(r)
        return out

    def bad_record(self, rec: Element, number: int) -> None:
        """Raise the error that names what is wrong with record ``number``."""
        where = f"record {number} of {MLF_NAME}"
        for attr in ("Row", "Column", "FieldIndex", "ZIndex", "TimePoint", "Ch"):
            text = rec.get(_a(attr))
            if text is None:
                raise self.fail(self.mlf, f"{where} has no bts:{attr}")
            _xml.integer(text, f"bts:{attr} of {where}", self.mlf, self.backend)
        for attr in ("X", "Y", "Z"):
            text = rec.get(_a(attr))
            if text is not None:
                _xml.number(text, f"bts:{attr} of {where}", self.mlf, self.backend)

    def resolve(self, file: str, where: str) -> str:
        if "/" not in file and "\\" not in file and file not in (".", ".."):
            # the usual case: a file beside the .mlf (rstrip: the root may be "/")
            return f"{self.source.root.rstrip('/')}/{file}"
        text = file.replace("\\", "/")
        try:
            path = vpaths.join(vpaths.parent(self.mlf), text)
        except PathEscapeError:
            raise self.fail(self.mlf, f"{where} names {file!r}, outside the plate") from None
        if not vpaths.is_relative_to(path, self.source.root):
            raise self.fail(self.mlf, f"{where} names {file!r}, outside the plate")
        return path

    # -- MeasurementDetail.mrf and the .mes it names
    def detail(self) -> _Detail:
        path = self.source.join(MRF_NAME)
        if not self.source.is_file(path):
            self.notes.append(f"no {MRF_NAME}: pixel size and channel names unknown")
            return _Detail()
        root = self.root_of(path, "MeasurementDetail")
        d = _Detail(title=root.get(_a("Title")), setting=root.get(_a("MeasurementSettingFileName")))
        for attr, key in (("RowCount", "rows"), ("ColumnCount", "columns")):
            text = root.get(_a(attr))
            if text is not None:
                setattr(d, key, _xml.integer(text, f"bts:{attr}", path, self.backend))
        pixel: dict[int, tuple[float, float]] = {}
        corrections = []
        for child in root:
            _, local = _xml.split_tag(child.tag)
            if local == "MeasurementSamplePlate":
                d.name = child.get(_a("Name")) or None
            elif local == "MeasurementChannel":
                ch = _xml.integer(child.get(_a("Ch")), "bts:Ch of a channel", path, self.backend)
                h, v = (
                    child.get(_a("HorizontalPixelDimension")),
                    child.get(_a("VerticalPixelDimension")),
                )
                if h is not None and v is not None:
                    x = _xml.number(
                        h, f"bts:HorizontalPixelDimension of Ch {ch}", path, self.backend
                    )
                    y = _xml.number(v, f"bts:VerticalPixelDimension of Ch {ch}", path, self.backend)
                    if x <= 0 or y <= 0:
                        raise self.fail(path, f"Ch {ch} has a pixel size <= 0 ({y} x {x} µm)")
                    pixel[ch] = (y, x)
                shading = child.get(_a("ShadingCorrectionSource"))
                if shading:
                    corrections.append(shading)
        d.pixel = pixel
        d.corrections = tuple(corrections)
        return d

    def setting(self, detail: _Detail) -> dict[int, ChannelInfo]:
        if not detail.setting:
            self.notes.append(f"{MRF_NAME} names no measurement setting (.mes): no channel names")
            return {}
        try:
            path = vpaths.join(self.source.root, detail.setting.replace("\\", "/"))
        except PathEscapeError:
            raise self.fail(
                self.source.join(MRF_NAME), f"setting file {detail.setting!r} is outside the plate"
            ) from None
        if not self.source.is_file(path):
            self.notes.append(
                f"the measurement setting {detail.setting!r} is not in the folder: no channel names"
            )
            return {}
        root = self.root_of(path, "MeasurementSetting")
        out: dict[int, ChannelInfo] = {}
        for chan in root.iter(_a("Channel")):
            ch = _xml.integer(chan.get(_a("Ch")), "bts:Ch of a channel", path, self.backend)
            color = chan.get(_a("Color")) or ""
            rgb = None
            if re.fullmatch(r"#[0-9A-Fa-f]{8}", color):
                rgb = color[3:].upper()
            elif re.fullmatch(r"#[0-9A-Fa-f]{6}", color):
                rgb = color[1:].upper()
            filt = _FILTER_RE.match(chan.get(_a("Acquisition")) or "")
            out[ch] = ChannelInfo(
                ch,
                name=(chan.get(_a("Target")) or "").strip() or None,
                emission_nm=float(filt.group(1)) if filt else None,
                color=rgb,
                source_id=str(ch),
            )
        self.setting_path = path
        return out

    # -- the plate
    def run(self) -> PlateDescription:
        src = self.source
        records = self.records()
        if not records:
            raise self.fail(
                self.mlf,
                f"{MLF_NAME} has no image records"
                + (f" ({len(self.errors)} error records)" if self.errors else ""),
            )
        present = set(src.files())
        missing = [r.file for r in records if r.path not in present]
        if missing:
            raise MissingPlaneError(
                f"{len(missing)} image file(s) named by {MLF_NAME} are missing: {listing(missing)}",
                path=self.mlf,
                backend=self.backend,
            )
        detail = self.detail()
        self.setting_path = ""
        named = self.setting(detail)
        builder = PlateBuilder(src, self.reader)
        fields = sorted({r.field for r in records})
        zs = sorted({r.z for r in records})
        chs = sorted({r.ch for r in records})
        f_of, z_of, c_of = (
            {v: i for i, v in enumerate(fields)},
            {v: i for i, v in enumerate(zs)},
            {v: i for i, v in enumerate(chs)},
        )
        t_of: dict[str, dict[int, int]] = {}
        by_well: dict[str, set[int]] = {}
        wells: dict[int, str] = {}
        for r in records:
            well = self.well(r)
            wells[r.line] = well
            by_well.setdefault(well, set()).add(r.timepoint)
        for well, tps in by_well.items():
            t_of[well] = {v: i for i, v in enumerate(sorted(tps))}
        placed_recs: dict[ImageCoordinates, _Rec] = {}
        for r in records:
            well = wells[r.line]
            coords = ImageCoordinates(
                well, f_of[r.field], c_of[r.ch], z_of[r.z], t_of[well][r.timepoint]
            )
            builder.add(coords, r.path, what=f"record {r.line} ({r.file!r})")
            placed_recs.setdefault(coords, r)
        for e in self.errors:
            well = self.well(e)
            known = e.field in f_of and e.ch in c_of and e.z in z_of
            if known and e.timepoint in t_of.get(well, {}):
                coords = ImageCoordinates(
                    well, f_of[e.field], c_of[e.ch], z_of[e.z], t_of[well][e.timepoint]
                )
                builder.hole(coords, f"{MLF_NAME} record {e.line} is an acquisition error (ERR)")
        if self.errors:
            self.notes.append(
                f"{len(self.errors)} acquisition error record(s) (bts:Type ERR) in {MLF_NAME}"
            )
        corrections = {vpaths.name(c.replace("\\", "/")) for c in detail.corrections}
        placed = {img.path for img in builder.placed.values()}
        for f in src.files():
            name = vpaths.name(f)
            lower = name.lower()
            if f in placed:
                continue
            if f == self.mlf:
                builder.skip(f, "measurement data (MLF)")
            elif lower.endswith(_METADATA_EXT):
                builder.skip(f, "metadata")
            elif name in corrections:
                builder.skip(f, "shading correction image")
            elif lower.endswith(_IMAGE_EXT):
                builder.unplace(f, f"not in {MLF_NAME}")
            else:
                builder.skip(f, "not an image plane")
        channel_info = tuple(
            ChannelInfo(
                i,
                name=named[ch].name if ch in named else None,
                emission_nm=named[ch].emission_nm if ch in named else None,
                color=named[ch].color if ch in named else None,
                source_id=str(ch),
            )
            for ch, i in c_of.items()
        )
        pixel = None
        if detail.pixel:
            ch0 = chs[0] if chs[0] in detail.pixel else min(detail.pixel)
            y, x = detail.pixel[ch0]
            pixel = (round(y, 9), round(x, 9))
            if len(set(detail.pixel.values())) > 1:
                self.notes.append(
                    f"channels have different pixel sizes in {MRF_NAME}; using Ch {ch0}'s"
                )
        metadata_files = [src.rel(self.mlf)]
        if detail.pixel is not None:
            metadata_files.append(MRF_NAME)
        if self.setting_path:
            metadata_files.append(src.rel(self.setting_path))
        return builder.build(
            metadata_path=self.mlf,
            name=detail.name or detail.title or vpaths.name(src.root),
            channel_info=channel_info,
            pixel_size_um=pixel,
            z_step_um=self.z_step(placed_recs),
            time_interval_s=self.interval(placed_recs),
            plate_shape=(detail.rows, detail.columns) if detail.rows and detail.columns else None,
            field_positions_um=self.positions(placed_recs),
            metadata_files=tuple(metadata_files),
            notes=tuple(self.notes),
        )

    def well(self, r: _Rec) -> str:
        if r.row < 1 or r.column < 1:
            raise self.fail(self.mlf, f"record {r.line}: row {r.row}, column {r.column} (1-based)")
        try:
            return parse_well(WellPosition(r.row - 1, r.column - 1).name).name
        except PlateLayoutError as exc:
            raise self.fail(self.mlf, f"record {r.line}: {exc}") from None

    def _series(self, placed: dict[ImageCoordinates, _Rec], axis: str) -> list[_Rec]:
        ref = min(placed)
        keep = []
        for c, r in placed.items():
            same = {
                "z": (c.well, c.field, c.channel, c.t) == (ref.well, ref.field, ref.channel, ref.t),
                "t": (c.well, c.field, c.channel, c.z) == (ref.well, ref.field, ref.channel, ref.z),
            }[axis]
            if same:
                keep.append((getattr(c, axis), r))
        return [r for _, r in sorted(keep, key=lambda kr: kr[0])]

    def z_step(self, placed: dict[ImageCoordinates, _Rec]) -> float | None:
        stack = self._series(placed, "z")
        if len(stack) < 2 or stack[0].zpos is None or stack[-1].zpos is None:
            return None
        step = abs(stack[-1].zpos - stack[0].zpos) / (len(stack) - 1)
        return round(step, 6) if step > 0 else None

    def interval(self, placed: dict[ImageCoordinates, _Rec]) -> float | None:
        series = self._series(placed, "t")
        if len(series) < 2 or any(r.time is None for r in series):
            return None
        times = []
        for r in series:
            try:
                times.append(datetime.fromisoformat(str(r.time)).timestamp())
            except ValueError:
                raise self.fail(
                    self.mlf, f"record {r.line}: bts:Time {r.time!r} is not a timestamp"
                ) from None
        step = statistics.median(b - a for a, b in zip(times, times[1:], strict=False))
        return round(step, 6) if step > 0 else None

    def positions(
        self, placed: dict[ImageCoordinates, _Rec]
    ) -> dict[tuple[str, int], tuple[float, float]]:
        out: dict[tuple[str, int], tuple[float, float]] = {}
        for c in sorted(placed):
            r = placed[c]
            if (c.well, c.field) in out:
                continue
            if r.x is None or r.y is None:
                return {}
            out[(c.well, c.field)] = (r.y, r.x)
        return out
