"""Reading a plate: list its images, place each on the plate, group them by well.

Every problem is collected (unparseable names, two files at the same coordinates,
wells missing sites or channels) and reported together in one
:class:`~hcsflow.errors.PlateLayoutError`, before any processing.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hcsflow import paths as vpaths
from hcsflow.errors import NotFoundError, PlateLayoutError
from hcsflow.pipeline._layouts import detect_layout
from hcsflow.storage import Backend, FileManager
from hcsflow.storage.plate import ImageCoordinates, PlateLayout, parse_well

__all__ = ["PlateImage", "PlateIndex", "read_plate", "read_zarr_plate", "is_zarr_plate"]

_MAX_LISTED = 10


@dataclass(frozen=True, order=True)
class PlateImage:
    """One source image: its plate coordinates and where it is stored."""

    coords: ImageCoordinates
    path: str


@dataclass(frozen=True)
class PlateIndex:
    """The images of a plate, grouped by well, with the plate's dimensions."""

    root: str
    backend: str
    layout: str
    wells: dict[str, tuple[PlateImage, ...]]
    sites: tuple[int, ...]
    channels: tuple[int, ...]
    zs: tuple[int, ...]
    ts: tuple[int, ...]

    @property
    def n_images(self) -> int:
        """Number of 2-D images on the plate."""
        return sum(len(v) for v in self.wells.values())

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description (for manifests and ``hcsflow info``)."""
        return {
            "root": self.root,
            "backend": self.backend,
            "layout": self.layout,
            "wells": len(self.wells),
            "images": self.n_images,
            "sites": len(self.sites),
            "channels": len(self.channels),
            "z_planes": len(self.zs),
            "timepoints": len(self.ts),
        }


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(repr(i) for i in items[:_MAX_LISTED])
    more = f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return shown + more


def read_plate(
    root: str,
    *,
    filemanager: FileManager | None = None,
    backend: Backend | str = Backend.DISK,
    layout: PlateLayout | None = None,
    recursive: bool = True,
    extensions: Sequence[str] | None = None,
) -> PlateIndex:
    """Index the plate of images below ``root`` (image files, or an OME-Zarr plate).

    An OME-Zarr plate (a directory holding plate metadata) is read with
    :func:`read_zarr_plate`.  For image files, ``layout`` defaults to the built-in
    layout that parses every file name (ImageXpress or Opera Phenix).  Raises
    :class:`PlateLayoutError` listing every problem found, or :class:`NotFoundError`
    when ``root`` is not a directory.
    """
    fm = filemanager or FileManager()
    bname = Backend(backend).value if isinstance(backend, Backend) else str(backend)
    if bname in (Backend.DISK.value, Backend.ZARR.value) and "://" not in str(root):
        # a local folder: relative paths are relative to the working directory
        root = os.path.abspath(os.fspath(root))
    root_n = vpaths.normalize_path(root, backend=bname)
    if bname == Backend.ZARR.value or (bname == Backend.DISK.value and is_zarr_plate(root_n)):
        return read_zarr_plate(root_n)
    if not fm.is_dir(root_n, bname):
        raise NotFoundError("plate directory does not exist", path=root_n, backend=bname)
    files = fm.list_image_files(root_n, bname, extensions=extensions, recursive=recursive)
    if not files:
        raise PlateLayoutError(
            "the plate directory holds no image files", path=root_n, backend=bname
        )
    if layout is None:
        layout = detect_layout(files)
    elif not isinstance(layout, PlateLayout):
        raise PlateLayoutError(f"layout must have a parse(path) method, got {layout!r}")
    layout_name = getattr(layout, "name", type(layout).__name__)

    problems: list[str] = []
    unparseable: list[str] = []
    placed: dict[ImageCoordinates, str] = {}
    for path in files:
        try:
            coords = layout.parse(path)
        except PlateLayoutError:
            unparseable.append(vpaths.relative_to(path, root_n))
            continue
        if coords in placed:
            problems.append(
                f"two files at {coords}: {vpaths.relative_to(placed[coords], root_n)!r} and "
                f"{vpaths.relative_to(path, root_n)!r}"
            )
            continue
        placed[coords] = path
    if unparseable:
        problems.insert(
            0,
            f"{len(unparseable)} file name(s) do not fit the {layout_name} "
            f"layout: {_listing(unparseable)}",
        )

    by_well: dict[str, list[PlateImage]] = {}
    for coords, path in placed.items():
        by_well.setdefault(coords.well, []).append(PlateImage(coords, path))
    sites = tuple(sorted({c.field for c in placed}))
    channels = tuple(sorted({c.channel for c in placed}))
    zs = tuple(sorted({c.z for c in placed}))
    ts = tuple(sorted({c.t for c in placed}))
    expected = set(itertools.product(sites, channels, zs, ts))
    for well, images in sorted(by_well.items()):
        have = {(i.coords.field, i.coords.channel, i.coords.z, i.coords.t) for i in images}
        missing = sorted(expected - have)
        if missing:
            desc = [f"site {s + 1} channel {c + 1} z {z + 1} t {t + 1}" for s, c, z, t in missing]
            problems.append(f"well {well} is missing {len(missing)} image(s): {_listing(desc)}")
    if problems:
        raise PlateLayoutError(
            "the plate cannot be read:\n" + "\n".join(f"  - {p}" for p in problems),
            path=root_n,
            backend=bname,
        )
    wells = {
        w: tuple(
            sorted(
                by_well[w], key=lambda i: (i.coords.t, i.coords.channel, i.coords.z, i.coords.field)
            )
        )
        for w in sorted(by_well, key=parse_well)
    }
    return PlateIndex(
        root=root_n,
        backend=bname,
        layout=layout_name,
        wells=wells,
        sites=sites,
        channels=channels,
        zs=zs,
        ts=ts,
    )


def is_zarr_plate(root: str) -> bool:
    """Whether the local directory ``root`` is a zarr group (an OME-Zarr plate candidate)."""
    return os.path.isfile(os.path.join(root, "zarr.json")) or os.path.isfile(
        os.path.join(root, ".zattrs")
    )


def read_zarr_plate(store: str) -> PlateIndex:
    """Index an OME-Zarr plate: one :class:`PlateImage` per 2-D plane of every field.

    Field images are ``(c, z, y, x)`` or ``(t, c, z, y, x)``; fields become sites.  Every
    well must have the same fields, channels, planes and timepoints (reported together
    in one :class:`PlateLayoutError` otherwise).
    """
    from hcsflow.storage import open_plate, open_well

    if "://" not in store:
        store = os.path.abspath(store)
    info = open_plate(store)
    if not info.wells:
        raise PlateLayoutError(
            "the OME-Zarr plate lists no wells", path=store, backend=Backend.ZARR.value
        )
    wells: dict[str, tuple[PlateImage, ...]] = {}
    problems: list[str] = []
    dims: dict[str, tuple[int, ...]] = {}
    for well in info.wells:
        w = open_well(store, well)
        axes = tuple(w.axes)
        if axes not in (("c", "z", "y", "x"), ("t", "c", "z", "y", "x")):
            problems.append(f"well {well}: axes {axes} are not (c, z, y, x) or (t, c, z, y, x)")
            continue
        shape = tuple(w.shape)
        t_n, c_n, z_n = (shape[0], shape[1], shape[2]) if len(axes) == 5 else (1, *shape[:2])
        dims[well] = (len(w.field_paths), t_n, c_n, z_n)
        wells[well] = tuple(
            PlateImage(ImageCoordinates(well, f, c, z, t), store)
            for t in range(t_n)
            for c in range(c_n)
            for z in range(z_n)
            for f in range(len(w.field_paths))
        )
    distinct = set(dims.values())
    if len(distinct) > 1:
        first = next(iter(dims))
        for well, d in dims.items():
            if d != dims[first]:
                problems.append(
                    f"well {well} has (fields, t, c, z) = {d}, well {first} has {dims[first]}"
                )
    if problems:
        raise PlateLayoutError(
            "the OME-Zarr plate cannot be read:\n" + "\n".join(f"  - {p}" for p in problems),
            path=store,
            backend=Backend.ZARR.value,
        )
    n_f, n_t, n_c, n_z = next(iter(distinct))
    return PlateIndex(
        root=store,
        backend=Backend.ZARR.value,
        layout="ome-zarr",
        wells=wells,
        sites=tuple(range(n_f)),
        channels=tuple(range(n_c)),
        zs=tuple(range(n_z)),
        ts=tuple(range(n_t)),
    )
