"""Microscope exports written the way the instruments write them, with known content.

Each ``write_*`` function writes a small but complete export (folder structure, file
names, metadata files, one TIFF per plane) and returns an :class:`Export` saying what
a reader must find: wells, sites, channel names and wavelengths, pixel size, z step,
time interval, and the file and content of every plane (:meth:`Export.plane`).  Image
data is not trivial: a tilted background, a few bright blobs and noise, plus an offset
that encodes the plane's coordinates, so a plane read into the wrong place shows.

* :func:`write_imagexpress_export`: ``PLATE.HTD``, ``TimePoint_<t>/[ZStep_<z>/]``
  folders, ``PLATE_A01_s1_w1<GUID>.tif`` with MetaSeries XML, ``_thumb`` thumbnails.
* :func:`write_harmony_export`: ``Images/Index.idx.xml`` (Harmony V5) or
  ``Images/Index.xml`` (V6, V7: channels described in ``Maps``) and
  ``r01c01f01p01-ch1sk1fk1fl1.tiff`` planes.
* :func:`write_cellvoyager_export`: ``MeasurementData.mlf``, ``MeasurementDetail.mrf``,
  the ``.mes`` settings, ``PL1_A01_T0001F001L01A01Z01C01.tif`` planes, shading
  correction images.
* :func:`write_ome_tiff_plate`: one multi-page ``.ome.tif`` per well and field, with
  the plate's OME-XML (``Plate``, ``Well``, ``WellSample``, ``TiffData``) written by
  ``ome-types`` (an independent writer for the reader to be tested against; needs
  ``pip install ome-types``).

Structures follow public descriptions of these formats (Bio-Formats' readers and
other open-source readers); the data is synthetic.
"""

from __future__ import annotations

import os
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hcsflow.storage.plate import ImageCoordinates, parse_well

__all__ = [
    "Export",
    "plane_data",
    "write_imagexpress_export",
    "write_harmony_export",
    "write_cellvoyager_export",
    "write_ome_tiff_plate",
]

# (name, excitation nm, emission nm) of the channels an export has by default
DEFAULT_CHANNELS: tuple[tuple[str, float, float], ...] = (
    ("DAPI", 375.0, 456.0),
    ("Alexa 488", 488.0, 525.0),
    ("Alexa 568", 561.0, 603.0),
    ("Alexa 647", 640.0, 665.0),
)


@dataclass
class Export:
    """What an export generator wrote: where, and what a reader must find."""

    root: Path
    format: str
    wells: tuple[str, ...]
    sites: int
    channel_names: tuple[str, ...]
    emission_nm: tuple[float | None, ...]
    z_planes: int
    timepoints: int
    size: tuple[int, int]
    pixel_size_um: float | None
    z_step_um: float | None
    time_interval_s: float | None
    plate_name: str | None
    seed: int
    files: dict[ImageCoordinates, Path] = field(default_factory=dict)
    """The file (relative to :attr:`root`) of every plane."""
    metadata_file: Path | None = None

    @property
    def n_planes(self) -> int:
        """Number of 2-D planes the export holds."""
        return len(self.files)

    def plane(self, coords: ImageCoordinates) -> np.ndarray:
        """The content written for the plane at ``coords``."""
        return plane_data(coords, self.size, self.seed)


def plane_data(
    coords: ImageCoordinates, size: tuple[int, int] = (64, 64), seed: int = 0
) -> np.ndarray:
    """A uint16 plane: tilted background, bright blobs, noise, and a coordinate offset.

    Deterministic in ``(coords, size, seed)``; the offset ``1000 * (channel + 1) + 100 *
    site + 10 * z + t`` makes planes of different coordinates differ everywhere.
    """
    pos = parse_well(coords.well)
    rng = np.random.default_rng(
        [seed, pos.row, pos.column, coords.field, coords.channel, coords.z, coords.t]
    )
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 200 + 40 * (yy / max(h, 1)) + 25 * (xx / max(w, 1))
    for _ in range(int(rng.integers(3, 7))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = rng.uniform(2.0, max(3.0, min(h, w) / 6))
        img += rng.uniform(300, 1500) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    img += rng.normal(0, 5, size=(h, w))
    img += 1000 * (coords.channel + 1) + 100 * coords.field + 10 * coords.z + coords.t
    return np.clip(np.rint(img), 0, 65535).astype(np.uint16)


def _channels(
    channels: Sequence[str | tuple[str, float, float]] | int,
) -> list[tuple[str, float | None, float | None]]:
    if isinstance(channels, int):
        return [
            DEFAULT_CHANNELS[i] if i < len(DEFAULT_CHANNELS) else (f"Channel {i + 1}", None, None)
            for i in range(channels)
        ]
    out: list[tuple[str, float | None, float | None]] = []
    for ch in channels:
        if isinstance(ch, str):
            out.append((ch, None, None))
        else:
            out.append((str(ch[0]), float(ch[1]), float(ch[2])))
    return out


def _guid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16))).upper()


def _tiff(path: Path, data: np.ndarray, **kwargs: object) -> None:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, data, metadata=None, **kwargs)  # type: ignore[arg-type]


def _xml_bytes(root: ET.Element) -> bytes:
    ET.indent(root, space="  ")
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=False)
    return b'<?xml version="1.0" encoding="utf-8"?>\r\n' + body


# --------------------------------------------------------------------------- ImageXpress


def write_imagexpress_export(
    root: str | os.PathLike[str],
    *,
    plate: str = "PLATE",
    wells: Sequence[str] = ("A01", "B02"),
    site_grid: tuple[int, int] | None = (2, 1),
    channels: Sequence[str | tuple[str, float, float]] | int = 2,
    z_planes: int = 1,
    timepoints: int = 1,
    size: tuple[int, int] = (64, 64),
    pixel_size_um: float = 0.65,
    z_step_um: float = 2.0,
    guid: bool = True,
    thumbnails: bool = True,
    plate_format: tuple[int, int] = (8, 12),
    seed: int = 0,
) -> Export:
    """An ImageXpress/MetaXpress export: ``<plate>.HTD`` plus ``TimePoint_<t>`` folders.

    ``site_grid`` is (XSites, YSites) with every site selected; ``None`` writes
    ``"Sites", FALSE`` and names without ``_s``.  ``channels`` names the wavelengths
    (or counts them); ``channels=1`` writes ``"Waves", FALSE`` and names without
    ``_w``.  z-stacks go to ``ZStep_<z>`` folders; ``guid`` appends a MetaXpress GUID to
    every name; ``thumbnails`` writes a ``_thumb`` file beside every plane.
    ``plate_format`` is (rows, columns) of the plate.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 1)
    chans = _channels(channels)
    waves_on = not (isinstance(channels, int) and channels == 1)
    n_rows, n_cols = plate_format
    selected = {parse_well(w) for w in wells}
    sites = 1 if site_grid is None else site_grid[0] * site_grid[1]
    lines = [
        '"HTSInfoFile", Version 1.0',
        '"Description", "hcsflow synthetic export"',
        '"PlateType", 6',
        f'"TimePoints", {timepoints}',
        f'"ZSeries", {"TRUE" if z_planes > 1 else "FALSE"}',
        f'"ZSteps", {z_planes}',
        '"ZProjection", FALSE',
        f'"XWells", {n_cols}',
        f'"YWells", {n_rows}',
    ]
    for r in range(n_rows):
        flags = ", ".join(
            "TRUE" if any(p.row == r and p.column == c for p in selected) else "FALSE"
            for c in range(n_cols)
        )
        lines.append(f'"WellsSelection{r + 1}", {flags}')
    if site_grid is None:
        lines += ['"Sites", FALSE', '"XSites", 1', '"YSites", 1']
    else:
        lines += ['"Sites", TRUE', f'"XSites", {site_grid[0]}', f'"YSites", {site_grid[1]}']
        for r in range(site_grid[1]):
            lines.append(f'"SiteSelection{r + 1}", ' + ", ".join(["TRUE"] * site_grid[0]))
    lines += [f'"Waves", {"TRUE" if waves_on else "FALSE"}', f'"NWavelengths", {len(chans)}']
    for w, (name, _, _) in enumerate(chans, start=1):
        lines += [f'"WaveName{w}", "{name}"', f'"WaveCollect{w}", 1']
    lines += [f'"UniquePlateIdentifier", "{_guid(rng)}"', '"EndFile"']
    htd = root / f"{plate}.HTD"
    htd.write_bytes(("\r\n".join(lines) + "\r\n").encode("cp1252"))
    export = Export(
        root=root,
        format="imagexpress",
        wells=tuple(sorted((parse_well(w).name for w in wells), key=parse_well)),
        sites=sites,
        channel_names=tuple(c[0] for c in chans),
        emission_nm=tuple(c[2] for c in chans),
        z_planes=z_planes,
        timepoints=timepoints,
        size=size,
        pixel_size_um=pixel_size_um,
        z_step_um=z_step_um if z_planes > 1 else None,
        time_interval_s=None,
        plate_name=plate,
        seed=seed,
        metadata_file=htd.relative_to(root),
    )
    for well in export.wells:
        for t in range(timepoints):
            folder = root / f"TimePoint_{t + 1}"
            for z in range(z_planes):
                zfolder = folder / f"ZStep_{z + 1}" if z_planes > 1 else folder
                for s in range(sites):
                    for w, (name, _, em) in enumerate(chans):
                        coords = ImageCoordinates(well, s, w, z, t)
                        stem = f"{plate}_{well}"
                        if site_grid is not None:
                            stem += f"_s{s + 1}"
                        if waves_on:
                            stem += f"_w{w + 1}"
                        tag = _guid(rng) if guid else ""
                        fname = f"{stem}{tag}.tif"
                        desc = _metaseries(name, em, pixel_size_um, 1000.0 + z * z_step_um, size)
                        _tiff(
                            zfolder / fname,
                            export.plane(coords),
                            description=desc,
                            software="MetaSeries",
                        )
                        export.files[coords] = (zfolder / fname).relative_to(root)
                        if thumbnails:
                            thumb = export.plane(coords)[::4, ::4]
                            _tiff(zfolder / f"{stem}_thumb{_guid(rng) if guid else ''}.tif", thumb)
    (root / "TimePoint_1" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 thumbnail cache")
    return export


def _metaseries(
    name: str, emission: float | None, pixel: float, z: float, size: tuple[int, int]
) -> str:
    props = [
        ("Description", "string", ""),
        ("MetaDataVersion", "float", "1"),
        ("ApplicationName", "string", "MetaXpress"),
        ("ApplicationVersion", "string", "6.7.2.290"),
    ]
    plane = [
        ("plane-type", "string", "plane"),
        ("pixel-size-x", "int", str(size[1])),
        ("pixel-size-y", "int", str(size[0])),
        ("bits-per-pixel", "int", "16"),
        ("spatial-calibration-state", "bool", "on"),
        ("spatial-calibration-x", "float", repr(pixel)),
        ("spatial-calibration-y", "float", repr(pixel)),
        ("spatial-calibration-units", "string", "um"),
        ("image-name", "string", name),
        ("z-position", "float", repr(z)),
    ]
    if emission:
        plane.append(("wavelength", "float", repr(emission)))

    def fmt(items: list[tuple[str, str, str]]) -> str:
        return "\r\n".join(f'<prop id="{i}" type="{t}" value="{v}"/>' for i, t, v in items)

    return (
        "<MetaData>\r\n"
        + fmt(props)
        + "\r\n<PlaneInfo>\r\n"
        + fmt(plane)
        + "\r\n</PlaneInfo>\r\n<SetInfo>\r\n"
        + '<prop id="number-of-planes" type="int" value="1"/>\r\n</SetInfo>\r\n</MetaData>'
    )


# --------------------------------------------------------------------------- Harmony

HARMONY_NS = {
    "V5": "http://www.perkinelmer.com/PEHH/HarmonyV5",
    "V6": "http://www.perkinelmer.com/PEHH/HarmonyV6",
    "V7": "43B2A954-E3C3-47E1-B392-6635266B0DD3/HarmonyV7",
}


def write_harmony_export(
    root: str | os.PathLike[str],
    *,
    version: str = "V6",
    plate: str = "Plate 1",
    wells: Sequence[str] = ("A01", "B02"),
    fields: int = 2,
    channels: Sequence[str | tuple[str, float, float]] | int = 2,
    z_planes: int = 1,
    timepoints: int = 1,
    size: tuple[int, int] = (64, 64),
    pixel_size_um: float = 0.5983,
    z_step_um: float = 1.5,
    time_interval_s: float = 900.0,
    index_name: str | None = None,
    plate_format: tuple[int, int] = (8, 12),
    seed: int = 0,
) -> Export:
    """An Opera Phenix / Operetta CLS export: ``Images/`` with the index and TIFFs.

    ``version`` ``"V5"`` writes ``Index.idx.xml`` with channel fields in every image
    record (``TimepointID`` from 0); ``"V6"``/``"V7"`` write ``Index.xml`` with channel
    descriptions only in ``Maps`` (``TimepointID`` from 1).  Lengths are in metres
    (``Unit="m"``), times in seconds.  Sibling folders hold other exported XML.
    """
    if version not in HARMONY_NS:
        raise ValueError(f"version must be one of {sorted(HARMONY_NS)}, got {version!r}")
    root = Path(root)
    images_dir = root / "Images"
    images_dir.mkdir(parents=True, exist_ok=True)
    ns = HARMONY_NS[version]
    ET.register_namespace("", ns)
    chans = _channels(channels)

    def q(tag: str) -> str:
        return f"{{{ns}}}{tag}"

    def sub(parent: ET.Element, tag: str, text: object = None, **attrs: str) -> ET.Element:
        el = ET.SubElement(parent, q(tag), attrs)
        if text is not None:
            el.text = str(text)
        return el

    rows, cols = plate_format
    doc = ET.Element(q("EvaluationInputData"), {"Version": "1" if version == "V5" else "2"})
    sub(doc, "User", "hcsflow")
    sub(doc, "InstrumentType", "Phenix")
    plate_el = sub(sub(doc, "Plates"), "Plate")
    sub(plate_el, "PlateID", plate.replace(" ", ""))
    sub(plate_el, "MeasurementID", str(uuid.UUID(int=seed + 7)))
    sub(plate_el, "MeasurementStartTime", "2024-05-06T10:11:12.13+02:00")
    sub(plate_el, "Name", plate)
    sub(plate_el, "PlateTypeName", f"{rows * cols}well")
    sub(plate_el, "PlateRows", rows)
    sub(plate_el, "PlateColumns", cols)
    positions = [parse_well(w) for w in wells]
    for p in positions:
        sub(plate_el, "Well", id=f"{p.row + 1:02d}{p.column + 1:02d}")
    wells_el = sub(doc, "Wells")
    maps = sub(doc, "Maps")
    sub(sub(maps, "Map"), "Entry", ChannelID="1").append(ET.Element(q("FlatfieldProfile")))

    def channel_fields(parent: ET.Element, c: int) -> None:
        name, ex, em = chans[c]
        sub(parent, "ChannelName", name)
        sub(parent, "ImageType", "Signal")
        sub(parent, "AcquisitionType", "NipkowConfocal")
        sub(parent, "ImageResolutionX", repr(pixel_size_um * 1e-6), Unit="m")
        sub(parent, "ImageResolutionY", repr(pixel_size_um * 1e-6), Unit="m")
        sub(parent, "ImageSizeX", size[1])
        sub(parent, "ImageSizeY", size[0])
        sub(parent, "BinningX", 2)
        sub(parent, "BinningY", 2)
        sub(parent, "MaxIntensity", 65536)
        sub(parent, "CameraType", "AndorZylaCam")
        if ex is not None:
            sub(parent, "MainExcitationWavelength", int(ex), Unit="nm")
        if em is not None:
            sub(parent, "MainEmissionWavelength", int(em), Unit="nm")
        sub(parent, "ObjectiveMagnification", 40, Unit="")
        sub(parent, "ObjectiveNA", 1.1, Unit="")
        sub(parent, "ExposureTime", 0.2, Unit="s")

    if version != "V5":
        channel_map = sub(maps, "Map")
        for c in range(len(chans)):
            channel_fields(sub(channel_map, "Entry", ChannelID=str(c + 1)), c)
    images_el = sub(doc, "Images")
    export = Export(
        root=root,
        format="harmony",
        wells=tuple(sorted((p.name for p in positions), key=parse_well)),
        sites=fields,
        channel_names=tuple(c[0] for c in chans),
        emission_nm=tuple(c[2] for c in chans),
        z_planes=z_planes,
        timepoints=timepoints,
        size=size,
        pixel_size_um=pixel_size_um,
        z_step_um=z_step_um if z_planes > 1 else None,
        time_interval_s=time_interval_s if timepoints > 1 else None,
        plate_name=plate,
        seed=seed,
    )
    t0 = 0 if version == "V5" else 1
    step_m = size[1] * pixel_size_um * 1e-6
    for p in positions:
        well_el = sub(wells_el, "Well")
        wid = f"{p.row + 1:02d}{p.column + 1:02d}"
        sub(well_el, "id", wid)
        sub(well_el, "Row", p.row + 1)
        sub(well_el, "Col", p.column + 1)
        for t in range(timepoints):
            for f in range(fields):
                for z in range(z_planes):
                    for c in range(len(chans)):
                        rid = f"{wid}K{t + 1}F{f + 1}P{z + 1}R{c + 1}"
                        sub(well_el, "Image", id=rid)
                        url = (
                            f"r{p.row + 1:02d}c{p.column + 1:02d}f{f + 1:02d}p{z + 1:02d}"
                            f"-ch{c + 1}sk{t + 1}fk1fl1.tiff"
                        )
                        img = sub(images_el, "Image", Version="1")
                        sub(img, "id", rid)
                        sub(img, "State", "Ok")
                        sub(img, "URL", url)
                        sub(img, "Row", p.row + 1)
                        sub(img, "Col", p.column + 1)
                        sub(img, "FieldID", f + 1)
                        sub(img, "PlaneID", z + 1)
                        sub(img, "TimepointID", t + t0)
                        sub(img, "FlimID", 1)
                        sub(img, "ChannelID", c + 1)
                        if version == "V5":
                            channel_fields(img, c)
                        sub(img, "PositionX", repr((f % 3) * step_m), Unit="m")
                        sub(img, "PositionY", repr((f // 3) * -step_m), Unit="m")
                        sub(img, "PositionZ", repr(-2e-6 + z * z_step_um * 1e-6), Unit="m")
                        sub(img, "AbsPositionZ", repr(0.1352 + z * z_step_um * 1e-6), Unit="m")
                        sub(
                            img,
                            "MeasurementTimeOffset",
                            repr(t * time_interval_s + 0.5 * c),
                            Unit="s",
                        )
                        sub(img, "AbsTime", "2024-05-06T10:11:12.13+02:00")
                        coords = ImageCoordinates(p.name, f, c, z, t)
                        _tiff(images_dir / url, export.plane(coords))
                        export.files[coords] = Path("Images") / url
    name = index_name or ("Index.idx.xml" if version == "V5" else "Index.xml")
    (images_dir / name).write_bytes(_xml_bytes(doc))
    export.metadata_file = Path("Images") / name
    (root / "Assaylayout").mkdir(exist_ok=True)
    (root / "Assaylayout" / "layout.xml").write_text('<?xml version="1.0"?><AssayLayout/>')
    (root / "FFC_Profile").mkdir(exist_ok=True)
    (root / "FFC_Profile" / "FFC_Profile_Measurement 1.xml").write_text(
        '<?xml version="1.0"?><Profile/>'
    )
    return export


# --------------------------------------------------------------------------- CellVoyager

BTS = "http://www.yokogawa.co.jp/BTS/BTSSchema/1.0"


def write_cellvoyager_export(
    root: str | os.PathLike[str],
    *,
    plate: str = "PL1",
    wells: Sequence[str] = ("A01", "B02"),
    fields: int = 2,
    channels: Sequence[str | tuple[str, float, float]] | int = 2,
    z_planes: int = 1,
    timepoints: int = 1,
    size: tuple[int, int] = (64, 64),
    pixel_size_um: float = 0.325,
    z_step_um: float = 3.0,
    time_interval_s: float = 1800.0,
    error_records: int = 1,
    plate_format: tuple[int, int] = (16, 24),
    seed: int = 0,
) -> Export:
    """A CellVoyager CV8000 measurement folder (``.mlf``, ``.mrf``, ``.mes``, TIFFs).

    Channel names are the ``.mes`` ``bts:Target``s, emission wavelengths come from the
    ``bts:Acquisition`` filter names (``BP456/45``); ``error_records`` ``ERR`` records
    (failed autofocus) are written at positions that also have an image.
    """
    from datetime import datetime, timedelta, timezone

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    ET.register_namespace("bts", BTS)
    chans = _channels(channels)

    def a(name: str) -> str:
        return f"{{{BTS}}}{name}"

    rows, cols = plate_format
    mlf = ET.Element(a("MeasurementData"), {a("Version"): "1.0"})
    start = datetime(2024, 5, 6, 10, 0, 0, tzinfo=timezone(timedelta(hours=9)))
    export = Export(
        root=root,
        format="cellvoyager",
        wells=tuple(sorted((parse_well(w).name for w in wells), key=parse_well)),
        sites=fields,
        channel_names=tuple(c[0] for c in chans),
        emission_nm=tuple(c[2] for c in chans),
        z_planes=z_planes,
        timepoints=timepoints,
        size=size,
        pixel_size_um=pixel_size_um,
        z_step_um=z_step_um if z_planes > 1 else None,
        time_interval_s=time_interval_s if timepoints > 1 else None,
        plate_name=plate,
        seed=seed,
        metadata_file=Path("MeasurementData.mlf"),
    )
    errors = error_records
    for well in export.wells:
        p = parse_well(well)
        for t in range(timepoints):
            for f in range(fields):
                for z in range(z_planes):
                    for c in range(len(chans)):
                        name = (
                            f"{plate}_{well}_T{t + 1:04d}F{f + 1:03d}L01A01"
                            f"Z{z + 1:02d}C{c + 1:02d}.tif"
                        )
                        when = start + timedelta(seconds=t * time_interval_s + 2 * f + 0.1 * c)
                        attrs = {
                            a("Type"): "IMG",
                            a("Time"): when.isoformat(timespec="milliseconds"),
                            a("Column"): str(p.column + 1),
                            a("Row"): str(p.row + 1),
                            a("TimePoint"): str(t + 1),
                            a("FieldIndex"): str(f + 1),
                            a("ZIndex"): str(z + 1),
                            a("TimelineIndex"): "1",
                            a("ActionIndex"): "1",
                            a("Action"): "3D" if z_planes > 1 else "2D",
                            a("X"): repr(-318.5 + 200.0 * (f % 3)),
                            a("Y"): repr(318.5 - 200.0 * (f // 3)),
                            a("Z"): repr(10.0 + z * z_step_um),
                            a("Ch"): str(c + 1),
                        }
                        if errors > 0:
                            err = dict(attrs)
                            err[a("Type")] = "ERR"
                            ET.SubElement(mlf, a("MeasurementRecord"), err).text = "AF failed"
                            errors -= 1
                        ET.SubElement(mlf, a("MeasurementRecord"), attrs).text = name
                        coords = ImageCoordinates(well, f, c, z, t)
                        _tiff(root / name, export.plane(coords))
                        export.files[coords] = Path(name)
    (root / "MeasurementData.mlf").write_bytes(_xml_bytes(mlf))
    mrf = ET.Element(
        a("MeasurementDetail"),
        {
            a("Version"): "1.0",
            a("OperatorName"): "hcsflow",
            a("Title"): plate,
            a("Application"): "CellVoyager",
            a("BeginTime"): start.isoformat(),
            a("EndTime"): (start + timedelta(hours=1)).isoformat(),
            a("MeasurementSettingFileName"): f"{plate}.mes",
            a("ColumnCount"): str(cols),
            a("RowCount"): str(rows),
            a("TimePointCount"): str(timepoints),
            a("FieldCount"): str(fields),
            a("ZCount"): str(z_planes),
            a("TargetSystem"): "CV8000",
        },
    )
    ET.SubElement(
        mrf,
        a("MeasurementSamplePlate"),
        {
            a("Name"): plate,
            a("WellPlateFileName"): f"{plate}.wpi",
            a("WellPlateProductFileName"): "Greiner-781091.wpp",
        },
    )
    for c, (_, _, em) in enumerate(chans):
        ET.SubElement(
            mrf,
            a("MeasurementChannel"),
            {
                a("Ch"): str(c + 1),
                a("HorizontalPixelDimension"): repr(pixel_size_um),
                a("VerticalPixelDimension"): repr(pixel_size_um),
                a("CameraNumber"): str(c % 2 + 1),
                a("InputBitDepth"): "16",
                a("InputLevel"): "4095",
                a("HorizontalPixels"): str(size[1]),
                a("VerticalPixels"): str(size[0]),
                a("FilterWheelPosition"): str(c + 1),
                a("FilterPosition"): str(c + 1),
                a("ShadingCorrectionSource"): f"SC_BP{int(em or 0)}_40x_CH{c + 1:02d}.tif",
            },
        )
        _tiff(
            root / f"SC_BP{int(em or 0)}_40x_CH{c + 1:02d}.tif", np.full(size, 1000 + c, np.uint16)
        )
    (root / "MeasurementDetail.mrf").write_bytes(_xml_bytes(mrf))
    mes = ET.Element(a("MeasurementSetting"), {a("Version"): "1.0"})
    light = ET.SubElement(mes, a("LightSourceList"))
    chan_list = ET.SubElement(mes, a("ChannelList"))
    colors = ("#FF0000FF", "#FF00FF00", "#FFFF0000", "#FFFF00FF")
    for c, (name, ex, em) in enumerate(chans):
        ET.SubElement(
            light,
            a("LightSource"),
            {a("Name"): f"{int(ex or 405)}nm", a("WaveLength"): str(int(ex or 405))},
        )
        ET.SubElement(
            chan_list,
            a("Channel"),
            {
                a("Ch"): str(c + 1),
                a("Target"): name,
                a("Objective"): "40x",
                a("Magnification"): "40",
                a("Method"): "Confocal",
                a("Acquisition"): f"BP{int(em)}/45" if em else "",
                a("ExposureTime"): "200",
                a("Color"): colors[c % len(colors)],
            },
        )
    (root / f"{plate}.mes").write_bytes(_xml_bytes(mes))
    wpi = ET.Element(
        a("WellPlate"),
        {a("Name"): plate, a("ProductID"): "781091", a("Rows"): str(rows), a("Columns"): str(cols)},
    )
    (root / f"{plate}.wpi").write_bytes(_xml_bytes(wpi))
    return export


# --------------------------------------------------------------------------- OME-TIFF


def write_ome_tiff_plate(
    root: str | os.PathLike[str],
    *,
    plate: str = "OME plate",
    wells: Sequence[str] = ("A01", "B02"),
    fields: int = 2,
    channels: Sequence[str | tuple[str, float, float]] | int = 2,
    z_planes: int = 1,
    timepoints: int = 1,
    size: tuple[int, int] = (64, 64),
    pixel_size_um: float = 0.2,
    z_step_um: float = 0.5,
    time_interval_s: float = 60.0,
    plate_format: tuple[int, int] = (8, 12),
    companion: bool = False,
    seed: int = 0,
) -> Export:
    """A multi-file OME-TIFF plate: ``<plate>_<well>_f<field>.ome.tif``, one per field.

    Every file holds its field's planes as pages (``DimensionOrder`` XYCZT) and the
    whole plate's OME-XML (``Plate``/``Well``/``WellSample``, one ``Image`` per field,
    ``TiffData`` with each file's ``UUID`` and ``FileName``), as Bio-Formats writes
    plates.  ``companion=True`` writes the XML once, to ``<plate>.companion.ome``, and
    each TIFF a ``BinaryOnly`` pointer to it (the OME-TIFF way for large plates).
    """
    import tifffile

    try:
        from ome_types import model as om
        from ome_types import to_xml
    except ImportError as exc:  # a test dependency, not a core one
        raise ImportError(
            "write_ome_tiff_plate writes its OME-XML with ome-types: pip install ome-types"
        ) from exc

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    chans = _channels(channels)
    positions = sorted((parse_well(w) for w in wells), key=lambda p: (p.row, p.column))
    stem = plate.replace(" ", "_")
    export = Export(
        root=root,
        format="ome-tiff",
        wells=tuple(p.name for p in positions),
        sites=fields,
        channel_names=tuple(c[0] for c in chans),
        emission_nm=tuple(c[2] for c in chans),
        z_planes=z_planes,
        timepoints=timepoints,
        size=size,
        pixel_size_um=pixel_size_um,
        z_step_um=z_step_um if z_planes > 1 else None,
        time_interval_s=time_interval_s if timepoints > 1 else None,
        plate_name=plate,
        seed=seed,
    )
    rng = np.random.default_rng(seed + 3)
    files: dict[tuple[str, int], tuple[str, str]] = {}
    images, wells_el = [], []
    n = 0
    for p in positions:
        samples = []
        for f in range(fields):
            fname = f"{stem}_{p.name}_f{f + 1}.ome.tif"
            urn = f"urn:uuid:{uuid.UUID(bytes=rng.bytes(16))}"
            files[(p.name, f)] = (fname, urn)
            image_id = f"Image:{n}"
            chan_models = []
            for c, (name, ex, em) in enumerate(chans):
                chan = om.Channel(id=f"Channel:{n}:{c}", name=name, samples_per_pixel=1)
                if em is not None and ex is not None:
                    chan.emission_wavelength, chan.excitation_wavelength = em, ex
                chan_models.append(chan)
            pixels = om.Pixels(
                id=f"Pixels:{n}",
                dimension_order=om.Pixels_DimensionOrder.XYCZT,
                type=om.PixelType.UINT16,
                size_x=size[1],
                size_y=size[0],
                size_c=len(chans),
                size_z=z_planes,
                size_t=timepoints,
                physical_size_x=pixel_size_um,
                physical_size_y=pixel_size_um,
                physical_size_z=z_step_um if z_planes > 1 else None,
                time_increment=time_interval_s if timepoints > 1 else None,
                channels=chan_models,
                tiff_data_blocks=[
                    om.TiffData(
                        ifd=0,
                        plane_count=len(chans) * z_planes * timepoints,
                        uuid=om.TiffData.UUID(value=urn, file_name=fname),
                    )
                ],
            )
            images.append(om.Image(id=image_id, name=f"{p.name} field {f + 1}", pixels=pixels))
            samples.append(
                om.WellSample(
                    id=f"WellSample:{n}",
                    index=n,
                    position_x=100.0 * f,
                    position_x_unit=om.UnitsLength.MICROMETER,
                    position_y=-50.0 * f,
                    position_y_unit=om.UnitsLength.MICROMETER,
                    image_ref=om.ImageRef(id=image_id),
                )
            )
            n += 1
        wells_el.append(
            om.Well(id=f"Well:{p.row}_{p.column}", row=p.row, column=p.column, well_samples=samples)
        )
    rows, cols = plate_format
    ome_plate = om.Plate(id="Plate:0", name=plate, rows=rows, columns=cols, wells=wells_el)
    master_urn = f"urn:uuid:{uuid.UUID(bytes=rng.bytes(16))}"
    # serialised once; each file's copy differs only in the root's UUID
    full = to_xml(om.OME(uuid=master_urn, images=images, plates=[ome_plate], creator="hcsflow"))
    companion_name = f"{stem}.companion.ome"
    if companion:
        (root / companion_name).write_text(full, encoding="utf-8")
    for p in positions:
        for f in range(fields):
            fname, urn = files[(p.name, f)]
            if companion:
                pointer = om.OME(
                    uuid=urn,
                    binary_only=om.OME.BinaryOnly(metadata_file=companion_name, uuid=master_urn),
                )
                text = to_xml(pointer)
            else:
                text = full.replace(master_urn, urn, 1)
            stack = []
            for t in range(timepoints):
                for z in range(z_planes):
                    for c in range(len(chans)):
                        coords = ImageCoordinates(p.name, f, c, z, t)
                        stack.append(export.plane(coords))
                        export.files[coords] = Path(fname)
            tifffile.imwrite(
                root / fname,
                np.stack(stack),
                description=text.encode("utf-8"),
                metadata=None,
                photometric="minisblack",
            )
    return export
