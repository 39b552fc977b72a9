"""Writing a run's images and labels into an OME-Zarr plate (the storage layer's helpers).

A well's final images become one field image per site, shaped ``(c, z, y, x)`` (or
``(t, c, z, y, x)`` when the plate has several timepoints), with the input plate's
physical scale, channel names and colours, and plate name.  Label images produced by a
step go to ``<well>/<field>/labels/<name>`` of the same plate.  Plate metadata is
rebuilt once after all wells (:func:`finalize_plates`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any

import numpy as np

from hcsflow import storage as zp
from hcsflow.errors import PlateLayoutError
from hcsflow.readers import ImageMetadata
from hcsflow.storage.plate import ImageCoordinates, parse_well

__all__ = [
    "write_well_zarr",
    "ImageGrid",
    "WellLabels",
    "label_image_name",
    "finalize_plates",
]


def _grid(
    coords: Sequence[ImageCoordinates], what: str, well: str
) -> tuple[list[int], list[int], list[int], list[int]]:
    sites = sorted({c.field for c in coords})
    chans = sorted({c.channel for c in coords})
    zs = sorted({c.z for c in coords})
    ts = sorted({c.t for c in coords})
    if len(coords) != len(sites) * len(chans) * len(zs) * len(ts):
        raise PlateLayoutError(
            f"well {well}: the {what} do not form a full site x channel x z x t grid "
            f"({len(coords)} images for {len(sites)} sites, {len(chans)} channels, {len(zs)} "
            f"planes, {len(ts)} timepoints)"
        )
    return sites, chans, zs, ts


def write_well_zarr(
    store: str,
    well: str,
    coords: Sequence[ImageCoordinates],
    arrays: Sequence[np.ndarray],
    zarr_config: Any,
    metadata: ImageMetadata | None = None,
    *,
    storage_options: dict[str, Any] | None = None,
) -> None:
    """Write one well's 2-D images as OME-Zarr field images, one field per site.

    ``metadata`` gives the images' physical scale (``coordinateTransformations`` in
    micrometres and seconds, units on the axes), their ``omero`` channels (label and
    colour of each channel present) and the plate's name.
    """
    sites, chans, zs, ts = _grid(coords, "images", well)
    index = {c: a for c, a in zip(coords, arrays, strict=True)}
    fields: dict[int, np.ndarray] = {}
    for f, site in enumerate(sites):
        planes = [
            [[index[ImageCoordinates(well, site, ch, z, t)] for z in zs] for ch in chans]
            for t in ts
        ]
        arr = np.asarray(planes)  # (t, c, z, y, x)
        fields[f] = arr if len(ts) > 1 else arr[0]
    meta = metadata or ImageMetadata()
    axes = ("t", "c", "z", "y", "x") if len(ts) > 1 else ("c", "z", "y", "x")
    scale, units = meta.ngff_scale(axes)
    channels = [
        {"label": meta.channel(ch).label, "color": meta.channel(ch).display_color} for ch in chans
    ]
    zp.write_well(
        store,
        well,
        fields,
        zarr_config,
        update_plate=False,
        storage_options=storage_options,
        scale=scale,
        units=units,
        channels=channels,
        plate_name=meta.plate_name,
    )


@dataclass(frozen=True)
class ImageGrid:
    """The plate coordinates an OME-Zarr field image of a well holds, index by index.

    ``write_well_zarr`` puts the well's sites in ascending order into fields ``0..``,
    and channels, z planes and timepoints likewise along ``c``, ``z`` and ``t``; a
    plane's coordinate value is therefore found at its rank among ``sites``,
    ``channels``, ``zs`` or ``ts``.  ``has_t``: the image has a ``t`` axis.
    """

    sites: tuple[int, ...]
    channels: tuple[int, ...]
    zs: tuple[int, ...]
    ts: tuple[int, ...]
    has_t: bool

    @classmethod
    def of(cls, coords: Sequence[ImageCoordinates], well: str) -> ImageGrid:
        """The grid of the images ``coords`` (as :func:`write_well_zarr` lays them out)."""
        sites, chans, zs, ts = _grid(coords, "images", well)
        return cls(tuple(sites), tuple(chans), tuple(zs), tuple(ts), len(ts) > 1)

    @classmethod
    def of_well(cls, info: zp.WellInfo) -> ImageGrid:
        """The grid of a well already written (a :class:`~hcsflow.storage.WellInfo`),
        its coordinates taken as indices."""
        size = dict(zip(info.axes, info.shape, strict=True))
        return cls(
            tuple(range(len(info.field_paths))),
            tuple(range(size["c"])),
            tuple(range(size["z"])),
            tuple(range(size.get("t", 1))),
            "t" in size,
        )

    def label_shape(self, yx: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of one label image of a field: the image's, with one channel."""
        front = (len(self.ts),) if self.has_t else ()
        return (*front, 1, len(self.zs), *yx)


def label_image_name(key: str, channel: int, grid: ImageGrid) -> str:
    """The NGFF name of the label image of special output ``key`` for ``channel``.

    ``<key>`` when the image has one channel, else ``<key>_w<n>`` with the channel's
    1-based number, as in the run's file names (``A01_s1_w2.tif``).
    """
    return key if len(grid.channels) == 1 else f"{key}_w{channel + 1}"


@dataclass
class _LabelImage:
    store: str
    well: str
    field: int
    name: str
    key: str
    shape: tuple[int, ...]
    zarr_config: Any
    storage_options: dict[str, Any] | None
    # (t index, z index) -> (plane, who wrote it)
    planes: dict[tuple[int, int], tuple[np.ndarray, str]] = dc_field(default_factory=dict)

    def assemble(self) -> np.ndarray:
        dtype = np.result_type(*(p.dtype for p, _ in self.planes.values()))
        out = np.zeros(self.shape, dtype=dtype)
        has_t = len(self.shape) == 5
        for (ti, zi), (plane, _) in self.planes.items():
            if has_t:
                out[ti, 0, zi] = plane
            else:
                out[0, zi] = plane
        return out


class WellLabels:
    """A well's NGFF label images, assembled from the label planes of its groups.

    A step's function sees one group of the well's images at a time (one plane per
    site with the default grouping, a z-stack with ``variable_components=("z",)``...),
    so the labels of one field and channel arrive in pieces.  :meth:`add` places each
    plane at its field, channel, timepoint and z plane of the well's image;
    :meth:`write` then writes every label image once, whole, shaped like its image
    (``(t, 1, z, y, x)``, or ``(1, z, y, x)`` without timepoints), and replaces any
    label image of that name atomically, so a well run again ends with exactly one
    complete label image per name.  Planes no group wrote are background (0).
    """

    def __init__(self) -> None:
        self._images: dict[tuple[str, str, int, str], _LabelImage] = {}
        self._wells: dict[tuple[str, str], zp.WellInfo] = {}

    def add(
        self,
        store: str,
        well: str,
        key: str,
        labels: np.ndarray,
        slice_coords: Sequence[ImageCoordinates],
        zarr_config: Any,
        *,
        image_coords: Sequence[ImageCoordinates] = (),
        storage_options: dict[str, Any] | None = None,
        source: str = "",
    ) -> list[str]:
        """Place the ``[N, Y, X]`` label stack of one group; returns the label keys touched.

        ``slice_coords`` are the group's images: ``N`` is their number, or 1 when the
        function reduced the group to one plane (it then belongs to the group's first
        image, where the reduced image goes).  ``image_coords`` are the images of the
        well in ``store`` (the labels must fit them); without them the image is read
        from the store and coordinates are taken as indices.  ``source`` names who
        wrote the planes, for the error when two writers claim one plane.
        """
        if labels.ndim != 3:
            raise PlateLayoutError(
                f"well {well}: labels {key!r} must be a [Z, Y, X] stack, got {labels.shape}"
            )
        n, members = labels.shape[0], list(slice_coords)
        if n == len(members):
            targets = members
        elif n == 1 and members:
            targets = members[:1]
        else:
            raise PlateLayoutError(
                f"well {well}: label stack {key!r} has {n} planes for a group of "
                f"{len(members)} images; labels have one plane per image, or one"
            )
        info = self._well(store, well, storage_options)
        grid = ImageGrid.of(image_coords, well) if image_coords else ImageGrid.of_well(info)
        keys = []
        for plane, c in zip(labels, targets, strict=True):
            image = self._image(
                store, info, key, c, grid, plane.shape, zarr_config, storage_options
            )
            index = (grid.ts.index(c.t), grid.zs.index(c.z))
            if index in image.planes:
                raise PlateLayoutError(
                    f"well {well}: label image {image.name!r} of field {image.field} gets "
                    f"plane t{c.t + 1} z{c.z + 1} twice ({image.planes[index][1] or 'unnamed'} "
                    f"and {source or 'unnamed'}); give the label outputs different names"
                )
            image.planes[index] = (plane, source)
            if image.key not in keys:
                keys.append(image.key)
        return keys

    def write(self) -> list[str]:
        """Write every label image added (each replaced atomically); returns their keys."""
        written = []
        for image in self._images.values():
            written.append(
                zp.write_labels(
                    image.store,
                    image.well,
                    image.field,
                    image.name,
                    image.assemble(),
                    image.zarr_config,
                    overwrite=True,
                    storage_options=image.storage_options,
                )
            )
        self._images.clear()
        return written

    def _well(self, store: str, well: str, storage_options: dict[str, Any] | None) -> zp.WellInfo:
        if (store, well) not in self._wells:
            self._wells[store, well] = zp.open_well(store, well, storage_options=storage_options)
        return self._wells[store, well]

    def _image(
        self,
        store: str,
        info: zp.WellInfo,
        key: str,
        c: ImageCoordinates,
        grid: ImageGrid,
        yx: tuple[int, ...],
        zarr_config: Any,
        storage_options: dict[str, Any] | None,
    ) -> _LabelImage:
        missing = [
            f"{what} {value + 1} (it has {', '.join(str(v + 1) for v in have)})"
            for what, value, have in (
                ("site", c.field, grid.sites),
                ("channel", c.channel, grid.channels),
                ("z plane", c.z, grid.zs),
                ("timepoint", c.t, grid.ts),
            )
            if value not in have
        ]
        well = c.well
        if missing:
            raise PlateLayoutError(
                f"well {well}: labels {key!r} belong to {'; '.join(missing)}, which the "
                f"well's image in {store!r} does not have: NGFF labels take their image's "
                f"shape, and a later step changed the image (a projection over z or "
                f"channels); write these labels as TIFFs (materialization backend 'disk' "
                f"for the step that makes them) or make them after that step"
            )
        field = grid.sites.index(c.field)
        name = label_image_name(key, c.channel, grid)
        image = self._images.get((store, well, field, name))
        if image is None:
            if field >= len(info.field_paths):
                raise PlateLayoutError(
                    f"well {well}: labels {key!r} belong to field {field}, and the well in "
                    f"{store!r} has {len(info.field_paths)} fields"
                )
            pos = parse_well(well)
            path = f"{pos.row_name}/{pos.column + 1}/{info.field_paths[field]}/labels/{name}"
            image = _LabelImage(
                store, well, field, name, path, grid.label_shape(yx), zarr_config, storage_options
            )
            self._images[store, well, field, name] = image
        elif image.shape[-2:] != yx:
            raise PlateLayoutError(
                f"well {well}: label image {name!r} of field {field} gets planes of "
                f"{image.shape[-2:]} and {yx} pixels"
            )
        return image


def finalize_plates(
    stores: Iterable[str], *, storage_options: dict[str, Any] | None = None
) -> list[Any]:
    """Rebuild each plate's metadata once, after all wells are written."""
    return [zp.finalize_plate(s, storage_options=storage_options) for s in sorted(set(stores))]
