"""NGFF label images of a field: written beside the image with its axes and scale,
listed in the ``labels`` group, read back.

Replacing a label image is atomic like a well write: the new version's arrays are
written under fresh names, the label group's metadata is switched, then the old
arrays are removed.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from hcsflow.errors import AlreadyExistsError, ZarrError
from hcsflow.storage._limits import StorageLimits
from hcsflow.storage.plate import WellPosition
from hcsflow.storage.zarr import _ome
from hcsflow.storage.zarr._arrays import dataset_paths, open_array, open_array_at, read_array
from hcsflow.storage.zarr._config import ZarrConfig
from hcsflow.storage.zarr._images import image_scale, write_image
from hcsflow.storage.zarr._io import BACKEND, Location
from hcsflow.storage.zarr._locate import (
    StoreLike,
    ensure_group,
    image_loc,
    layout_error,
    locate,
    meta_names,
)
from hcsflow.storage.zarr._plate_meta import MAX_SETTLE_ROUNDS

__all__ = ["write_labels", "read_labels"]

_NAME_RE = re.compile(r"^[A-Za-z0-9_\-]+$")

_DEFAULT = ZarrConfig()


def write_labels(
    store: StoreLike,
    well: str | WellPosition,
    field: int,
    name: str,
    labels: Any,
    config: ZarrConfig | None = None,
    *,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Write an NGFF label image ``name`` for one field; returns its key in the store.

    ``labels`` is an integer array shaped like the field's ``(z, y, x)`` or ``(y, x)``
    (or the full image rank with a channel of 1); it is stored with the image's axes,
    channel 1, in ``<well>/<field>/labels/<name>``.  Replacing an existing label image
    needs ``overwrite=True`` and is atomic like a well write.
    """
    cfg = config or _DEFAULT
    plate = locate(store, storage_options)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise layout_error(
            plate, "labels", f"label name {name!r} must be letters, digits, '_' or '-'"
        )
    img, version, zfmt = image_loc(plate, well, field)
    paths, axes, _ = dataset_paths(img)
    base = open_array(img, 0)
    lab = np.asarray(labels)
    rel = img.path[len(plate.path) :].strip("/")
    if lab.dtype.kind not in "iub":
        raise layout_error(
            plate, f"{rel}/labels/{name}", f"labels must be an integer array, got {lab.dtype}"
        )
    shape = tuple(base.shape)
    want = list(shape)
    want[axes.index("c")] = 1
    while lab.ndim < len(want):
        lab = lab[np.newaxis]
    if tuple(lab.shape) != tuple(want):
        raise layout_error(
            plate,
            f"{rel}/labels/{name}",
            f"labels of shape {np.shape(labels)} do not fit the image "
            f"{shape} (expected {tuple(want)})",
        )
    lab_cfg = ZarrConfig(
        compressor=cfg.compressor,
        level=cfg.level,
        chunks=cfg.chunks,
        shards=cfg.shards,
        pyramid_levels=len(paths),
        ngff_version="0.4" if version == "0.4" else "0.5",
    )
    group = img.child("labels")
    target = group.child(name)
    current = _ome.read_node(target)
    if current is not None and not overwrite:
        raise AlreadyExistsError(
            f"label image {name!r} exists; pass overwrite=True: store {plate.url!r}, key "
            f"{rel}/labels/{name}",
            path=target.url,
            backend=BACKEND,
        )
    old: list[str] = []
    if current is not None:
        old = dataset_paths(target)[0]
    ensure_group(group, _ome.wrap({"labels": []}, lab_cfg.ngff_version), zfmt)
    taken = set(target.list()) | set(old)
    extra = {"image-label": {"source": {"image": "../../"}}}
    scale, units = image_scale(img)
    new = write_image(
        target,
        lab,
        lab_cfg,
        tuple(axes),
        name,
        extra,
        labels=True,
        taken=taken,
        scale=scale,
        units=units,
    )
    for stale in set(old) - set(new):
        target.child(stale).remove()
    _settle_labels(group, lab_cfg.ngff_version, zfmt)
    return f"{rel}/labels/{name}"


def _settle_labels(group: Location, version: str, zarr_format: int) -> None:
    def names() -> list[str]:
        out = []
        for child in sorted(group.list()):
            node = _ome.read_node(group.child(child)) if child not in meta_names() else None
            if node is not None and "image-label" in _ome.unwrap(node.attributes)[1]:
                out.append(child)
        return out

    for _ in range(MAX_SETTLE_ROUNDS):
        found = names()
        _ome.write_group(group, _ome.wrap({"labels": found}, version), zarr_format)
        if names() == found:
            return
    raise ZarrError(
        f"labels metadata did not settle: store {group.url!r}", path=group.url, backend=BACKEND
    )


def read_labels(
    store: StoreLike,
    well: str | WellPosition,
    field: int,
    name: str,
    level: int = 0,
    *,
    storage_options: dict[str, Any] | None = None,
    limits: StorageLimits | None = None,
) -> np.ndarray:
    """A label image written by :func:`write_labels` (image axes, channel 1)."""
    plate = locate(store, storage_options, limits)
    img, _, _ = image_loc(plate, well, field)
    target = img.child("labels", name)
    arr, loc = open_array_at(target, level)
    return read_array(arr, Ellipsis, loc)
