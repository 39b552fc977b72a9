"""Writing a run's images and labels into an OME-Zarr plate (the storage layer's helpers).

A well's final images become one field image per site, shaped ``(c, z, y, x)`` (or
``(t, c, z, y, x)`` when the plate has several timepoints), with the input plate's
physical scale, channel names and colours, and plate name.  Label images produced by a
step go to ``<well>/<field>/labels/<name>`` of the same plate.  Plate metadata is
rebuilt once after all wells (:func:`finalize_plates`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from hcsflow import storage as zp
from hcsflow.errors import PlateLayoutError
from hcsflow.readers import ImageMetadata
from hcsflow.storage.plate import ImageCoordinates

__all__ = ["write_well_zarr", "write_labels_zarr", "finalize_plates"]


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


def write_labels_zarr(
    store: str,
    well: str,
    name: str,
    labels: np.ndarray,
    slice_coords: Sequence[ImageCoordinates],
    zarr_config: Any,
    *,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Write a label stack (one plane per entry of ``slice_coords``) as NGFF labels.

    Planes are regrouped by site into ``(z, y, x)`` label images; returns the key of the
    first label image written.
    """
    if labels.shape[0] != len(slice_coords):
        raise PlateLayoutError(
            f"well {well}: label stack {name!r} has {labels.shape[0]} planes for "
            f"{len(slice_coords)} images"
        )
    all_sites = sorted({c.field for c in slice_coords})
    keys = []
    for f, site in enumerate(all_sites):
        planes = sorted((c.z, i) for i, c in enumerate(slice_coords) if c.field == site)
        stack = np.stack([labels[i] for _, i in planes])
        keys.append(
            zp.write_labels(
                store, well, f, name, stack, zarr_config, storage_options=storage_options
            )
        )
    return keys[0]


def finalize_plates(
    stores: Iterable[str], *, storage_options: dict[str, Any] | None = None
) -> list[Any]:
    """Rebuild each plate's metadata once, after all wells are written."""
    return [zp.finalize_plate(s, storage_options=storage_options) for s in sorted(set(stores))]
