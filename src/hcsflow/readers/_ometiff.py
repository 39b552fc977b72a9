"""Format ``ome-tiff``: plates stored as OME-TIFF files (``*.ome.tif``).

The OME-XML in each file's first ``ImageDescription`` (or in a ``*.companion.ome``
file that ``BinaryOnly`` points to) is read with ElementTree (see ``_omexml``); files
that an already read document names are not opened.  What is read:

* ``Plate/Well`` (``Row``, ``Column``: 0-based) and its ``WellSample``s in order
  (fields), each naming an ``Image``; ``Plate/@Name`` names the plate;
  ``WellSample/@PositionX/Y`` are the field positions.  Without a ``Plate``, each file
  holds one image whose well (and site) come from its name
  (``A01_s2.ome.tif``, ``plate_B03.ome.tiff``).
* ``Image/Pixels``: ``SizeC/Z/T``, ``DimensionOrder``, ``PhysicalSizeX/Y/Z`` with their
  units, ``TimeIncrement``; ``Channel/@Name``, ``@EmissionWavelength``,
  ``@ExcitationWavelength``, ``@Color``; ``TiffData`` (``IFD``, ``FirstC/Z/T``,
  ``PlaneCount``, ``UUID/@FileName``) places every plane in a file and page.

Planes are read as pages (``key=``), each file once per group of planes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hcsflow import paths as vpaths
from hcsflow.errors import ExportMetadataError, MissingPlaneError, PathEscapeError, PlateLayoutError
from hcsflow.readers._base import (
    ChannelInfo,
    PlateBuilder,
    PlateDescription,
    PlateReader,
    listing,
)
from hcsflow.readers._omexml import (
    OmeDoc,
    OmeImage,
    OmePixels,
    OmeWellSample,
    Quantity,
    parse_ome,
)
from hcsflow.readers._source import PlateSource
from hcsflow.storage.plate import ImageCoordinates, WellPosition, parse_well

__all__ = ["OmeTiffReader"]

_OME_TIFF = (".ome.tif", ".ome.tiff")
_COMPANION = ".companion.ome"
_LENGTH_UM = {"pm": 1e-6, "Å": 1e-4, "nm": 1e-3, "µm": 1.0, "mm": 1e3, "cm": 1e4, "m": 1e6}
_TIME_S = {"ns": 1e-9, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}
_NAME_RE = re.compile(
    r"^(?:.*?[_-])?(?P<well>[A-Za-z]{1,2}\d{2})(?:[_-](?:s|f|site|field)(?P<site>\d+))?"
    r"(?:[_-].*)?\.ome\.tiff?$",
    re.IGNORECASE,
)


@dataclass
class _Doc:
    xml_path: str
    """The file holding the XML (a TIFF or a companion file)."""
    home: str | None
    """The TIFF holding the XML (planes without a file name are in it)."""
    ome: OmeDoc


class OmeTiffReader(PlateReader):
    """OME-TIFF plates (OME-XML: plate, images, channels, TiffData)."""

    name = "ome-tiff"
    title = "OME-TIFF"
    looks_for = "OME-TIFF files (*.ome.tif, *.ome.tiff) or a *.companion.ome file"

    def detect(self, source: PlateSource) -> bool:
        return any(
            f.lower().endswith(_OME_TIFF) or f.lower().endswith(_COMPANION) for f in source.files()
        )

    def describe(self, source: PlateSource) -> PlateDescription:
        source.require_dir()
        return _Parser(source, self).run()


class _Parser:
    def __init__(self, source: PlateSource, reader: OmeTiffReader):
        self.source = source
        self.reader = reader
        self.backend = source.backend
        self.notes: list[str] = []

    def fail(self, path: str, message: str) -> ExportMetadataError:
        return ExportMetadataError(message, path=path, backend=self.backend)

    def from_xml(self, text: str, path: str) -> OmeDoc:
        return parse_ome(text.encode("utf-8"), path, self.backend)

    def documents(self, builder: PlateBuilder) -> tuple[list[_Doc], list[str]]:
        """The OME-XML documents of the folder (companions first).

        A TIFF that an already parsed document names (``TiffData/UUID/@FileName``: a
        companion file, or a fileset's XML repeated in every file) is not opened at
        all; a TIFF whose XML is a ``BinaryOnly`` pointer is recognised without
        parsing it.
        """
        src = self.source
        files = src.files()
        docs: list[_Doc] = []
        tiffs = sorted(f for f in files if f.lower().endswith(_OME_TIFF))
        companions = sorted(f for f in files if f.lower().endswith(_COMPANION))
        covered: set[str] = set()

        def add(doc: _Doc) -> None:
            docs.append(doc)
            for image in doc.ome.images.values():
                for block in image.pixels.tiff_data:
                    if block.file_name:
                        covered.add(self.resolve(block.file_name, doc.xml_path))

        for comp in companions:
            text = src.read_bytes(comp).decode("utf-8", errors="strict")
            add(_Doc(comp, None, self.from_xml(text, comp)))
            builder.skip(comp, "OME companion metadata")
        for tiff in tiffs:
            if tiff in covered:
                continue
            if not src.can_open:
                raise self.fail(
                    tiff, "OME-TIFF headers can only be read from a local folder or an fsspec URL"
                )
            text = src.tiff_description(tiff)
            if not text.rstrip().endswith("OME>"):
                continue  # no OME-XML in this file: placed by another document or unplaced
            pointer = _BINARY_ONLY.search(text)
            meta = pointer.group(1) if pointer is not None else None
            if meta is not None:
                if self.resolve(meta, tiff) not in companions:
                    raise MissingPlaneError(
                        f"BinaryOnly names the metadata file {meta!r}, which is not in the folder",
                        path=tiff,
                        backend=self.backend,
                    )
                continue
            add(_Doc(tiff, tiff, self.from_xml(text, tiff)))
        return docs, tiffs

    def resolve(self, name: str, relative_to: str) -> str:
        if "/" not in name and "\\" not in name and name not in (".", ".."):
            # the usual case: a file alongside (rstrip: its folder may be the root "/")
            return f"{vpaths.parent(relative_to).rstrip('/')}/{name}"
        try:
            path = vpaths.join(vpaths.parent(relative_to), name.replace("\\", "/"))
        except PathEscapeError:
            raise self.fail(relative_to, f"file name {name!r} points outside the plate") from None
        if not vpaths.is_relative_to(path, self.source.root):
            raise self.fail(relative_to, f"file name {name!r} points outside the plate")
        return path

    def run(self) -> PlateDescription:
        src = self.source
        builder = PlateBuilder(src, self.reader)
        docs, tiffs = self.documents(builder)
        if not docs:
            raise self.fail(src.root, "no OME-XML in the OME-TIFF files of the folder")
        present = set(src.files())
        where: dict[ImageCoordinates, tuple[str, int]] = {}
        missing: list[str] = []
        first_pixels: OmePixels | None = None
        plate_name = None
        plate_shape = None
        positions: dict[tuple[str, int], tuple[float, float]] = {}
        for doc in docs:
            images = doc.ome.images
            placements: list[tuple[OmeImage, str, int]] = []  # (image, well, field)
            if doc.ome.plates:
                for plate in doc.ome.plates:
                    plate_name = plate_name or plate.name
                    if plate.rows and plate.columns and plate_shape is None:
                        plate_shape = (plate.rows, plate.columns)
                    for well in plate.wells:
                        try:
                            wname = parse_well(WellPosition(well.row, well.column).name).name
                        except (PlateLayoutError, ValueError) as exc:
                            raise self.fail(doc.xml_path, f"well {well.id!r}: {exc}") from None
                        samples = sorted(
                            well.samples,
                            key=lambda s: s.index if s.index is not None else 0,
                        )
                        for f, sample in enumerate(samples):
                            ref = sample.image_ref
                            if ref is None or ref not in images:
                                raise self.fail(
                                    doc.xml_path,
                                    f"well sample {sample.id!r} refers to image {ref!r}, which the "
                                    "document does not describe",
                                )
                            placements.append((images[ref], wname, f))
                            pos = self.sample_position(sample)
                            if pos is not None:
                                positions[(wname, f)] = pos
            else:
                if len(images) != 1 or doc.home is None:
                    raise self.fail(
                        doc.xml_path,
                        f"the OME-XML describes {len(images)} images and no plate: which well "
                        "each belongs to is unknown",
                    )
                m = _NAME_RE.match(vpaths.name(doc.home))
                if m is None:
                    builder.unplace(doc.home, "no plate in its OME-XML and no well in its name")
                    continue
                try:
                    wname = ImageCoordinates(m.group("well")).well
                except PlateLayoutError as exc:
                    builder.unplace(doc.home, str(exc))
                    continue
                site = int(m.group("site")) - 1 if m.group("site") else 0
                if site < 0:
                    builder.unplace(doc.home, "site numbers in names start at 1")
                    continue
                placements.append((next(iter(images.values())), wname, site))
            for image, wname, fld in placements:
                pixels = image.pixels
                first_pixels = first_pixels if first_pixels is not None else pixels
                for (c, z, t), (path, ifd) in self.planes(doc, image).items():
                    coords = ImageCoordinates(wname, fld, c, z, t)
                    if where.get(coords) == (path, ifd):
                        continue  # the same plane described by another file's copy of the XML
                    where[coords] = (path, ifd)
                    if path not in present:
                        missing.append(src.rel(path))
                        continue
                    builder.add(
                        coords,
                        path,
                        page=ifd,
                        what=f"image {image.id!r} c{c} z{z} t{t} ({src.rel(path)!r} page {ifd})",
                    )
        if missing:
            raise MissingPlaneError(
                f"{len(set(missing))} OME-TIFF file(s) named by the OME-XML are missing: "
                f"{listing(sorted(set(missing)))}",
                path=docs[0].xml_path,
                backend=self.backend,
            )
        used = {img.path for img in builder.placed.values()}
        for name in src.files():
            lower = name.lower()
            if name in used or lower.endswith(_COMPANION):
                continue
            if lower.endswith((".tif", ".tiff")):
                builder.unplace(name, "no OME-XML places it on the plate")
            else:
                builder.skip(name, "not an image plane")
        channels, pixel, z_step, interval = self.pixel_metadata(first_pixels)
        return builder.build(
            metadata_path=docs[0].xml_path,
            name=plate_name,
            channel_info=channels,
            pixel_size_um=pixel,
            z_step_um=z_step,
            time_interval_s=interval,
            plate_shape=plate_shape,
            field_positions_um=positions,
            metadata_files=tuple(src.rel(d.xml_path) for d in docs[:20]),
            notes=tuple(self.notes),
        )

    def planes(self, doc: _Doc, image: OmeImage) -> dict[tuple[int, int, int], tuple[str, int]]:
        """(c, z, t) -> (file, IFD) of every plane of ``image``."""
        p = image.pixels
        sizes = {"C": p.size_c, "Z": p.size_z, "T": p.size_t}
        order = p.dimension_order[2:]  # e.g. "CZT": C varies fastest
        total = sizes["C"] * sizes["Z"] * sizes["T"]

        def coords_of(index: int) -> tuple[int, int, int]:
            out = {}
            for dim in order:
                out[dim] = index % sizes[dim]
                index //= sizes[dim]
            return out["C"], out["Z"], out["T"]

        def index_of(c: int, z: int, t: int) -> int:
            idx, mult = 0, 1
            for dim, v in zip(order, [{"C": c, "Z": z, "T": t}[d] for d in order], strict=True):
                idx += v * mult
                mult *= sizes[dim]
            return idx

        result: dict[tuple[int, int, int], tuple[str, int]] = {}
        blocks = p.tiff_data
        if not blocks:
            if doc.home is None:
                raise self.fail(doc.xml_path, f"image {image.id!r} has no TiffData")
            return {coords_of(i): (doc.home, i) for i in range(total)}
        for block in blocks:
            if block.file_name:
                path = self.resolve(block.file_name, doc.xml_path)
            elif doc.home is not None:
                path = doc.home
            else:
                raise self.fail(
                    doc.xml_path,
                    f"image {image.id!r}: a TiffData block names no file (UUID FileName)",
                )
            start = index_of(block.first_c, block.first_z, block.first_t)
            count = block.plane_count
            if count is None:
                count = total - start if len(blocks) == 1 else 1
            if start + count > total or min(start, block.ifd, count) < 0:
                raise self.fail(
                    doc.xml_path,
                    f"image {image.id!r}: TiffData at IFD {block.ifd} covers planes "
                    f"{start}..{start + count - 1} of {total}",
                )
            for k in range(count):
                result[coords_of(start + k)] = (path, block.ifd + k)
        return result

    def sample_position(self, sample: OmeWellSample) -> tuple[float, float] | None:
        if sample.position_x is None or sample.position_y is None:
            return None
        fx = _LENGTH_UM.get(sample.position_x.unit)
        fy = _LENGTH_UM.get(sample.position_y.unit)
        if fx is None or fy is None:
            return None  # "reference frame" (the default) is not a length
        return (
            round(sample.position_y.value * fy, 6) + 0.0,
            round(sample.position_x.value * fx, 6) + 0.0,
        )

    def length(self, q: Quantity | None, what: str) -> float | None:
        """``q`` in micrometres (``None`` with a note when its unit is not a length)."""
        if q is None:
            return None
        factor = _LENGTH_UM.get(q.unit)
        if factor is None:
            self.notes.append(f"{what} is in {q.unit!r}, not a length: not used")
            return None
        return round(q.value * factor, 9)

    def pixel_metadata(
        self, pixels: OmePixels | None
    ) -> tuple[tuple[ChannelInfo, ...], tuple[float, float] | None, float | None, float | None]:
        if pixels is None:
            return (), None, None, None
        x = self.length(pixels.physical_x, "PhysicalSizeX")
        y = self.length(pixels.physical_y, "PhysicalSizeY")
        z = self.length(pixels.physical_z, "PhysicalSizeZ")
        interval = None
        if pixels.time_increment is not None:
            factor = _TIME_S.get(pixels.time_increment.unit)
            if factor is not None:
                interval = round(pixels.time_increment.value * factor, 9)
        channels = []
        for i, ch in enumerate(pixels.channels):
            em = self.length(ch.emission, "EmissionWavelength")
            ex = self.length(ch.excitation, "ExcitationWavelength")
            color = None
            if ch.color is not None and ch.color != -1:  # -1: opaque white, OME's default
                rgba = ch.color & 0xFFFFFFFF
                color = f"{rgba >> 8:06X}"
            channels.append(
                ChannelInfo(
                    i,
                    name=ch.name or None,
                    emission_nm=round(em * 1000, 3) if em else None,
                    excitation_nm=round(ex * 1000, 3) if ex else None,
                    color=color,
                    source_id=ch.id,
                )
            )
        pixel = (y, x) if x and y else None
        return tuple(channels), pixel, z if z else None, interval if interval else None


_BINARY_ONLY = re.compile(r"<(?:\w+:)?BinaryOnly\b[^>]*\bMetadataFile=\"([^\"]*)\"")
