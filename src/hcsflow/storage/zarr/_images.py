"""NGFF multiscale image groups: a pyramid of arrays with ``multiscales`` (axes, scale,
units) and ``omero`` metadata, written as a new group; the metadata read back.

Field images of wells and label images are both written here; each level is a fresh
array (:func:`~hcsflow.storage.zarr._arrays.create_array`) under a name no reader uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hcsflow.errors import NotFoundError
from hcsflow.storage.plate import WellPosition
from hcsflow.storage.zarr import _arrays, _ome
from hcsflow.storage.zarr._config import ZarrConfig
from hcsflow.storage.zarr._io import BACKEND, Location
from hcsflow.storage.zarr._locate import StoreLike, fresh_name, image_loc, locate, meta_error

__all__ = ["write_image", "image_scale", "image_metadata"]


def _downsample(arr: np.ndarray, labels: bool) -> np.ndarray:
    if labels:
        return arr[..., ::2, ::2]
    h, w = arr.shape[-2:]
    pad = [(0, 0)] * (arr.ndim - 2) + [(0, h % 2), (0, w % 2)]
    a = np.pad(arr, pad, mode="edge") if (h % 2 or w % 2) else arr
    shape = a.shape[:-2] + (a.shape[-2] // 2, 2, a.shape[-1] // 2, 2)
    mean = a.reshape(shape).mean(axis=(-1, -3))
    if arr.dtype.kind in "iub":
        return np.rint(mean).astype(arr.dtype)
    return mean.astype(arr.dtype)


def _pyramid(arr: np.ndarray, levels: int, labels: bool) -> list[np.ndarray]:
    out = [arr]
    for _ in range(1, levels):
        out.append(_downsample(out[-1], labels))
    return out


def write_image(
    loc: Location,
    arr: np.ndarray,
    config: ZarrConfig,
    axes: tuple[str, ...],
    name: str,
    extra: dict[str, Any] | None = None,
    labels: bool = False,
    taken: set[str] | None = None,
    published: bool = True,
    scale: Mapping[str, float] | None = None,
    units: Mapping[str, str] | None = None,
    channels: Sequence[Mapping[str, Any]] | None = None,
) -> list[str]:
    """Write a multiscale image group at ``loc``; returns the dataset paths used.

    ``published=False``: ``loc`` is a new group no reader reaches until a later metadata
    switch, so its own metadata needs no atomic replace.  ``scale``/``units``: physical
    size of a level-0 pixel per axis; ``channels``: ``omero`` label and colour per
    channel (windows come from ``arr``).
    """
    taken = set(taken or ())
    paths = []
    for level, data in enumerate(_pyramid(arr, config.pyramid_levels, labels)):
        path = fresh_name(taken, str(level))
        taken.add(path)
        # through the module: a test replaces create_array to make storage fail mid-write
        _arrays.create_array(loc.child(path), data, config, axes)
        paths.append(path)
    block: dict[str, Any] = {"multiscales": _ome.multiscales(axes, paths, name, scale, units)}
    if channels is not None:
        block.update(_ome.omero_block(channels, arr, axes))
    block.update(extra or {})
    _ome.write_group(
        loc, _ome.wrap(block, config.ngff_version), config.zarr_format, published=published
    )
    return paths


def image_scale(img: Location) -> tuple[dict[str, float], dict[str, str]]:
    """Level-0 scale (axes other than 1 only) and units of an image group's metadata."""
    node = _ome.read_node(img)
    if node is None:
        return {}, {}
    try:
        attrs = _ome.image_attrs(_ome.unwrap(node.attributes)[1])
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        raise meta_error(
            img,
            "zarr.json" if node.zarr_format == 3 else ".zattrs",
            f"malformed multiscales metadata ({type(exc).__name__}: {exc})",
        ) from exc
    scale = {a: v for a, v in attrs.scale.items() if v != 1.0 and a != "c"}
    return scale, {a: u for a, u in attrs.units.items() if a != "c"}


def image_metadata(
    store: StoreLike,
    well: str | WellPosition,
    field: int = 0,
    *,
    storage_options: dict[str, Any] | None = None,
) -> _ome.ImageAttrs:
    """Axes, units, level-0 scale and ``omero`` channels of one field image (metadata only)."""
    plate = locate(store, storage_options)
    img, _, _ = image_loc(plate, well, field)
    node = _ome.read_node(img)
    if node is None:
        raise NotFoundError(
            f"missing image group: store {img.url!r}", path=img.url, backend=BACKEND
        )
    try:
        return _ome.image_attrs(_ome.unwrap(node.attributes)[1])
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        raise meta_error(
            img,
            "zarr.json" if node.zarr_format == 3 else ".zattrs",
            f"malformed multiscales metadata ({type(exc).__name__}: {exc})",
        ) from exc
