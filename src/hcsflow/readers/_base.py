"""The plate description every reader produces, and the :class:`PlateReader` ABC.

A reader turns a plate directory into a :class:`PlateDescription`: which wells there
are, which fields (sites), channels, z planes and timepoints, the file (and page) of
every 2-D image plane, and what the export says about them (channel names and
wavelengths, pixel size in micrometres, z step, time interval, field positions).
Files of the export that are not image planes are *skipped* (thumbnails, logs, the
metadata files themselves); image files the reader cannot place on the plate are
*unplaced* and reported by name.  The pipeline then reads planes through
:meth:`PlateReader.load_planes`, only when a step needs them.

Coordinates (:class:`~hcsflow.storage.plate.ImageCoordinates`) are 0-based; every
well has the same fields, channels, planes and timepoints (checked here, once, for
every reader).
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from hcsflow import paths as vpaths
from hcsflow.errors import ExportMetadataError, PlateLayoutError, ShapeError
from hcsflow.storage import FileManager
from hcsflow.storage.plate import ImageCoordinates, parse_well

if TYPE_CHECKING:
    from hcsflow.readers._source import PlateSource

__all__ = [
    "PlateImage",
    "ChannelInfo",
    "SkippedFile",
    "ImageMetadata",
    "PlateDescription",
    "PlateReader",
    "PlateBuilder",
    "emission_color",
]

_MAX_LISTED = 10


def listing(items: Sequence[str], limit: int = _MAX_LISTED) -> str:
    """``'a', 'b' and 3 more``: the first ``limit`` items of a list for a message."""
    shown = ", ".join(repr(i) for i in items[:limit])
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return shown + more


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, order=True)
class PlateImage:
    """One 2-D image plane of a plate: its coordinates and where it is stored.

    ``page`` is the plane's index inside a multi-plane file (a TIFF page of an
    OME-TIFF), ``None`` for a file holding one plane.  For an OME-Zarr plate ``path``
    is the store and the coordinates select the plane.
    """

    coords: ImageCoordinates
    path: str
    page: int | None = None


@dataclass(frozen=True)
class ChannelInfo:
    """What an export says about one channel.

    ``index`` is the channel coordinate (0-based, as in :class:`ImageCoordinates`);
    ``source_id`` the export's own id for it (Harmony ``ChannelID``, ImageXpress
    wavelength number, CellVoyager ``Ch``).  Wavelengths are in nanometres;
    ``color`` is ``"RRGGBB"`` when the export records a display colour.
    """

    index: int
    name: str | None = None
    excitation_nm: float | None = None
    emission_nm: float | None = None
    color: str | None = None
    source_id: str | None = None

    @property
    def label(self) -> str:
        """The channel's name, or ``"Channel <n>"`` (1-based) when the export has none."""
        return self.name or f"Channel {self.index + 1}"

    @property
    def display_color(self) -> str:
        """``"RRGGBB"``: the recorded colour, else one from the emission wavelength."""
        if self.color:
            return self.color
        return emission_color(self.emission_nm, self.index)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (``None`` fields left out)."""
        d = {
            "index": self.index,
            "name": self.name,
            "excitation_nm": self.excitation_nm,
            "emission_nm": self.emission_nm,
            "color": self.color,
            "source_id": self.source_id,
        }
        return {k: v for k, v in d.items() if v is not None}


@dataclass(frozen=True, order=True)
class SkippedFile:
    """A file of the export that is not used as an image plane, and why."""

    path: str
    """Relative to the plate root."""
    reason: str


# Display colours for channels without a wavelength: blue, green, red, magenta, cyan,
# yellow, white (the usual order of DAPI, FITC, TRITC, Cy5 ... acquisitions).
_DEFAULT_COLORS = ("0000FF", "00FF00", "FF0000", "FF00FF", "00FFFF", "FFFF00", "FFFFFF")


def emission_color(emission_nm: float | None, index: int = 0) -> str:
    """The ``"RRGGBB"`` colour of light of ``emission_nm`` nanometres, at full brightness.

    Piecewise-linear approximation of the visible spectrum (380-645 nm, red above);
    without a wavelength (or 0, which exports use for brightfield) the channel gets
    the ``index``-th of blue, green, red, magenta, cyan, yellow, white.
    """
    if emission_nm is None or not math.isfinite(emission_nm) or emission_nm <= 0:
        return _DEFAULT_COLORS[index % len(_DEFAULT_COLORS)]
    w = float(emission_nm)
    if w < 380:
        r, g, b = 0.5, 0.0, 1.0  # near UV: violet
    elif w < 440:
        r, g, b = (440 - w) / (440 - 380), 0.0, 1.0
    elif w < 490:
        r, g, b = 0.0, (w - 440) / (490 - 440), 1.0
    elif w < 510:
        r, g, b = 0.0, 1.0, (510 - w) / (510 - 490)
    elif w < 580:
        r, g, b = (w - 510) / (580 - 510), 1.0, 0.0
    elif w < 645:
        r, g, b = 1.0, (645 - w) / (645 - 580), 0.0
    else:
        r, g, b = 1.0, 0.0, 0.0
    return "".join(f"{round(255 * c):02X}" for c in (r, g, b))


@dataclass(frozen=True)
class ImageMetadata:
    """The metadata a run's outputs carry (OME-Zarr ``multiscales``/``omero``, OME-TIFF).

    Physical sizes are in micrometres, the time interval in seconds; ``None`` where
    the input did not record them.
    """

    pixel_size_um: tuple[float, float] | None = None
    """(y, x) size of a pixel."""
    z_step_um: float | None = None
    time_interval_s: float | None = None
    channels: tuple[ChannelInfo, ...] = ()
    plate_name: str | None = None

    def channel(self, index: int) -> ChannelInfo:
        """The :class:`ChannelInfo` of channel ``index`` (a bare one when unknown)."""
        for c in self.channels:
            if c.index == index:
                return c
        return ChannelInfo(index)

    def ngff_scale(self, axes: Sequence[str]) -> tuple[dict[str, float], dict[str, str]]:
        """(scale, unit) per axis for NGFF ``coordinateTransformations`` and ``axes``.

        Only axes whose physical size is known get a unit; the others keep scale 1.
        """
        scale: dict[str, float] = {}
        units: dict[str, str] = {}
        if self.pixel_size_um is not None:
            scale["y"], scale["x"] = self.pixel_size_um
            units["y"] = units["x"] = "micrometer"
        if self.z_step_um is not None and self.z_step_um > 0:
            scale["z"] = self.z_step_um
            units["z"] = "micrometer"
        if self.time_interval_s is not None and self.time_interval_s > 0:
            scale["t"] = self.time_interval_s
            units["t"] = "second"
        return {a: v for a, v in scale.items() if a in axes}, {
            a: u for a, u in units.items() if a in axes
        }

    def ome_tiff(self, channel: int | None, axes: str, name: str | None = None) -> dict[str, Any]:
        """tifffile ``metadata=`` for an OME-TIFF of ``axes`` (``"YX"``, ``"ZYX"``...).

        ``channel`` is the channel coordinate of a single-channel file (its name and
        wavelengths are recorded), ``None`` for a file without a channel axis value.
        """
        meta: dict[str, Any] = {"axes": axes}
        if name:
            meta["Name"] = name
        if self.pixel_size_um is not None:
            meta["PhysicalSizeY"], meta["PhysicalSizeX"] = self.pixel_size_um
            meta["PhysicalSizeYUnit"] = meta["PhysicalSizeXUnit"] = "µm"
        if "Z" in axes and self.z_step_um is not None and self.z_step_um > 0:
            meta["PhysicalSizeZ"] = self.z_step_um
            meta["PhysicalSizeZUnit"] = "µm"
        if "T" in axes and self.time_interval_s is not None and self.time_interval_s > 0:
            meta["TimeIncrement"] = self.time_interval_s
            meta["TimeIncrementUnit"] = "s"
        if channel is not None:
            info = self.channel(channel)
            chan: dict[str, Any] = {"Name": [info.label]}
            if info.emission_nm:
                chan["EmissionWavelength"] = [float(info.emission_nm)]
                chan["EmissionWavelengthUnit"] = ["nm"]
            if info.excitation_nm:
                chan["ExcitationWavelength"] = [float(info.excitation_nm)]
                chan["ExcitationWavelengthUnit"] = ["nm"]
            meta["Channel"] = chan
        return meta

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return {
            "plate_name": self.plate_name,
            "pixel_size_um": list(self.pixel_size_um) if self.pixel_size_um else None,
            "z_step_um": self.z_step_um,
            "time_interval_s": self.time_interval_s,
            "channels": [c.to_dict() for c in self.channels],
        }


# --------------------------------------------------------------------------- description


@dataclass(frozen=True)
class PlateDescription:
    """A plate as a reader describes it (``hcsflow.pipeline.PlateIndex`` is this class).

    ``wells`` maps canonical well names (``"A01"``) in plate order to their
    :class:`PlateImage` planes; ``sites``, ``channels``, ``zs`` and ``ts`` are the
    coordinates every well has.  ``format`` names the reader; ``layout`` the file-name
    layout used (the format's name for exports described by metadata files).
    """

    root: str
    backend: str
    layout: str
    wells: dict[str, tuple[PlateImage, ...]]
    sites: tuple[int, ...]
    channels: tuple[int, ...]
    zs: tuple[int, ...]
    ts: tuple[int, ...]
    format: str = "files"
    name: str | None = None
    channel_info: tuple[ChannelInfo, ...] = ()
    pixel_size_um: tuple[float, float] | None = None
    """(y, x) size of a pixel in micrometres."""
    z_step_um: float | None = None
    time_interval_s: float | None = None
    plate_shape: tuple[int, int] | None = None
    """(rows, columns) of the physical plate, when the export records it."""
    field_positions_um: Mapping[tuple[str, int], tuple[float, float]] = field(default_factory=dict)
    """(well, field) -> (y, x) stage position of the field in micrometres."""
    skipped: tuple[SkippedFile, ...] = ()
    unplaced: tuple[SkippedFile, ...] = ()
    metadata_files: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    reader: PlateReader | None = field(default=None, compare=False, repr=False)

    @property
    def n_images(self) -> int:
        """Number of 2-D images on the plate."""
        return sum(len(v) for v in self.wells.values())

    def channel(self, index: int) -> ChannelInfo:
        """The :class:`ChannelInfo` of channel ``index`` (a bare one when unknown)."""
        return self.image_metadata().channel(index)

    def image_metadata(self) -> ImageMetadata:
        """The metadata outputs of a run over this plate carry."""
        known = {c.index: c for c in self.channel_info}
        return ImageMetadata(
            pixel_size_um=self.pixel_size_um,
            z_step_um=self.z_step_um,
            time_interval_s=self.time_interval_s,
            channels=tuple(known.get(i, ChannelInfo(i)) for i in self.channels),
            plate_name=self.name,
        )

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description (for manifests and ``hcsflow info``)."""
        return {
            "root": self.root,
            "backend": self.backend,
            "format": self.format,
            "layout": self.layout,
            "name": self.name,
            "wells": len(self.wells),
            "images": self.n_images,
            "sites": len(self.sites),
            "channels": len(self.channels),
            "z_planes": len(self.zs),
            "timepoints": len(self.ts),
            "channel_info": [c.to_dict() for c in self.image_metadata().channels],
            "pixel_size_um": list(self.pixel_size_um) if self.pixel_size_um else None,
            "z_step_um": self.z_step_um,
            "time_interval_s": self.time_interval_s,
            "plate_shape": list(self.plate_shape) if self.plate_shape else None,
            "skipped_files": len(self.skipped),
            "unplaced_files": [f"{u.path}: {u.reason}" for u in self.unplaced],
            "metadata_files": list(self.metadata_files),
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------- readers


class PlateReader(ABC):
    """One plate format: recognise a directory, describe it, read its planes.

    Subclasses set :attr:`name` (what ``--format`` takes), :attr:`title` and
    :attr:`looks_for` (shown when no reader recognises a directory) and implement
    :meth:`detect` and :meth:`describe`.  Readers are stateless and picklable (a
    well's plan carries its reader to the worker that loads the planes), so a third
    party's reader must be a module-level class.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    looks_for: ClassVar[str]

    @abstractmethod
    def detect(self, source: PlateSource) -> bool:
        """Whether ``source`` looks like this format (cheap: file names, not contents)."""

    @abstractmethod
    def describe(self, source: PlateSource) -> PlateDescription:
        """The plate in ``source``; typed errors naming the file for bad exports."""

    def explain(self, source: PlateSource) -> str:
        """Why :meth:`detect` did not recognise ``source`` (default: :attr:`looks_for`)."""
        return f"looked for {self.looks_for}"

    def load_planes(
        self, images: Sequence[PlateImage], filemanager: FileManager, backend: str
    ) -> list[np.ndarray]:
        """The 2-D planes of ``images``, in order, each file read once.

        Files holding one plane go through :meth:`FileManager.load_batch`; pages of
        multi-plane TIFF files are read with one ``key=`` read per file.
        """
        out: list[np.ndarray] = [np.empty(0)] * len(images)
        single = [i for i, img in enumerate(images) if img.page is None]
        if single:
            arrays = filemanager.load_batch([images[i].path for i in single], backend)
            for i, arr in zip(single, arrays, strict=True):
                out[i] = np.asarray(arr)
        paged: dict[str, list[int]] = {}
        for i, img in enumerate(images):
            if img.page is not None:
                paged.setdefault(img.path, []).append(i)
        for path, idx in paged.items():
            pages = [images[i].page for i in idx]
            data = np.asarray(filemanager.load(path, backend, key=pages))
            if len(pages) == 1 and data.ndim == 2:
                data = data[np.newaxis]
            if data.shape[0] != len(pages):
                raise ShapeError(
                    f"{path!r}: asked for {len(pages)} pages, got an array of shape {data.shape}"
                )
            for k, i in enumerate(idx):
                out[i] = data[k]
        return out

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.__dict__ == self.__dict__

    def __hash__(self) -> int:
        return hash(type(self).__qualname__)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# --------------------------------------------------------------------------- building


class PlateBuilder:
    """Collects a reader's planes, skipped and unplaced files, then checks the grid.

    ``add`` refuses a second plane at the same coordinates: :class:`ExportMetadataError`
    for exports described by metadata (``duplicates="metadata"``), a
    :class:`PlateLayoutError` problem for folders of named files.
    """

    def __init__(self, source: PlateSource, reader: PlateReader, *, duplicates: str = "metadata"):
        self.source = source
        self.reader = reader
        self.duplicates = duplicates
        self.placed: dict[ImageCoordinates, PlateImage] = {}
        self.where: dict[ImageCoordinates, str] = {}
        self.twice: list[str] = []
        self.problems: list[str] = []
        self.skipped: list[SkippedFile] = []
        self.unplaced: list[SkippedFile] = []
        self.notes: list[str] = []
        self.hole_reasons: dict[tuple[str, int, int, int, int], str] = {}

    def add(
        self, coords: ImageCoordinates, path: str, *, page: int | None = None, what: str = ""
    ) -> None:
        """Place ``path`` (page ``page``) at ``coords``; ``what`` names its record."""
        label = what or repr(self.source.rel(path))
        if coords in self.placed:
            self.twice.append(
                f"{self.where[coords]} and {label} both describe well {coords.well} "
                f"site {coords.field + 1} channel {coords.channel + 1} z {coords.z + 1} "
                f"t {coords.t + 1}"
            )
            return
        self.placed[coords] = PlateImage(coords, path, page)
        self.where[coords] = label

    def skip(self, path: str, reason: str) -> None:
        """Record a file of the export that is not an image plane."""
        self.skipped.append(SkippedFile(self.source.rel(path), reason))

    def unplace(self, path: str, reason: str) -> None:
        """Record an image file the reader cannot place on the plate."""
        self.unplaced.append(SkippedFile(self.source.rel(path), reason))

    def hole(self, coords: ImageCoordinates, reason: str) -> None:
        """Say why a plane is absent (e.g. a record the instrument marked as failed)."""
        c = coords
        self.hole_reasons[(c.well, c.field, c.channel, c.z, c.t)] = reason

    def build(
        self,
        *,
        layout: str | None = None,
        metadata_path: str | None = None,
        **fields: Any,
    ) -> PlateDescription:
        """The :class:`PlateDescription`; raises when planes collide or wells differ."""
        src = self.source
        if self.twice:
            if self.duplicates == "metadata":
                raise ExportMetadataError(
                    f"{len(self.twice)} plane(s) are described twice: "
                    + "; ".join(self.twice[:_MAX_LISTED])
                    + (
                        f"; and {len(self.twice) - _MAX_LISTED} more"
                        if len(self.twice) > _MAX_LISTED
                        else ""
                    ),
                    path=metadata_path or src.root,
                    backend=src.backend,
                )
            self.problems.extend(f"two files at the same plane: {t}" for t in self.twice)
        if not self.placed and not self.problems:
            what = "describes no image planes"
            raise PlateLayoutError(
                f"the {self.reader.title} export {what}"
                + (
                    f" ({len(self.unplaced)} image file(s) could not be placed: "
                    f"{listing([u.path for u in self.unplaced])})"
                    if self.unplaced
                    else ""
                ),
                path=metadata_path or src.root,
                backend=src.backend,
            )
        by_well: dict[str, list[PlateImage]] = {}
        for img in self.placed.values():
            by_well.setdefault(img.coords.well, []).append(img)
        sites = tuple(sorted({c.field for c in self.placed}))
        channels = tuple(sorted({c.channel for c in self.placed}))
        zs = tuple(sorted({c.z for c in self.placed}))
        ts = tuple(sorted({c.t for c in self.placed}))
        expected = set(itertools.product(sites, channels, zs, ts))
        problems = list(self.problems)
        for well, images in sorted(by_well.items(), key=lambda kv: parse_well(kv[0])):
            have = {(i.coords.field, i.coords.channel, i.coords.z, i.coords.t) for i in images}
            missing = sorted(expected - have)
            if missing:
                desc = []
                for s, c, z, t in missing:
                    why = self.hole_reasons.get((well, s, c, z, t))
                    text = f"site {s + 1} channel {c + 1} z {z + 1} t {t + 1}"
                    desc.append(f"{text} ({why})" if why else text)
                problems.append(f"well {well} is missing {len(missing)} image(s): {listing(desc)}")
        if problems:
            raise PlateLayoutError(
                "the plate cannot be read:\n" + "\n".join(f"  - {p}" for p in problems),
                path=src.root,
                backend=src.backend,
            )
        wells = {
            w: tuple(
                sorted(
                    by_well[w],
                    key=lambda i: (i.coords.t, i.coords.channel, i.coords.z, i.coords.field),
                )
            )
            for w in sorted(by_well, key=parse_well)
        }
        return PlateDescription(
            root=src.root,
            backend=src.backend,
            layout=layout or self.reader.name,
            wells=wells,
            sites=sites,
            channels=channels,
            zs=zs,
            ts=ts,
            format=self.reader.name,
            skipped=tuple(sorted(self.skipped)),
            unplaced=tuple(sorted(self.unplaced)),
            notes=tuple(self.notes) + tuple(fields.pop("notes", ())),
            reader=self.reader,
            **fields,
        )


def dense_index(values: Sequence[Any]) -> dict[Any, int]:
    """``{value: rank}`` of the distinct sorted ``values`` (ids 1, 2, 5 -> 0, 1, 2)."""
    return {v: i for i, v in enumerate(sorted(set(values)))}


def relative_name(path: str) -> str:
    """The last component of a virtual path."""
    return vpaths.name(path)
