"""Analysis functions with special outputs: counting, cell and spot detection, measurement.

Tables have one row per object (or plane) with a ``slice_index`` column; the pipeline
adds ``well``, ``site``, ``channel``, ``z`` and ``t`` columns from it, so every table
is tidy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hcsflow.functions import _hcs
from hcsflow.functions import _numpy as npf
from hcsflow.functions._segment import segment_nuclei_array
from hcsflow.memory import decorators as mem
from hcsflow.pipeline._materialize import materialize_labels, materialize_table
from hcsflow.pipeline._special_io import special_inputs, special_outputs

__all__ = [
    "count_cells",
    "measure_objects",
    "measure_cells",
    "watershed_seeded",
    "detect_spots",
]

_THRESHOLD_DEFAULTS = {
    "threshold": "otsu",
    "opening_radius": 1,
    "fill": True,
    "split_touching": False,
    "min_distance": 5,
}


@mem.numpy(dtype_policy="native")
@special_outputs(("cell_counts", materialize_table), ("masks", materialize_labels))
def count_cells(
    image: Any,
    *,
    method: str = "threshold",
    diameter: float | None = None,
    reference: int | None = None,
    threshold: str | float = "otsu",
    min_size: int = 20,
    opening_radius: int = 1,
    fill: bool = True,
    connectivity: int = 1,
    split_touching: bool = False,
    min_distance: int = 5,
) -> tuple[np.ndarray, Any, np.ndarray]:
    """Count bright objects (nuclei) in every plane.

    ``method="segment_nuclei"`` labels each plane with :func:`segment_nuclei` (diameter
    ``diameter``, measured on the image when ``None``; ``min_size`` still drops objects
    below that many pixels).  ``method="threshold"`` (the default) thresholds each
    plane (Otsu's method, or a fixed ``threshold`` value), opens it with a disk of
    ``opening_radius``, fills holes, drops objects below ``min_size`` pixels and labels
    it; with ``split_touching=True`` touching objects are separated by a watershed of the
    distance transform seeded at maxima ``min_distance`` pixels apart.

    ``reference`` (1-based): segment only that plane of the stack and use its labels for
    every plane (for a stack of channels, ``variable_components=("channel",)``, so that a
    following :func:`measure_objects` measures every channel inside the nuclei of one);
    the count table then has the reference plane's row only.

    Returns the input stack unchanged (so later steps can measure intensities), then the
    special outputs ``cell_counts`` (one row per plane: ``slice_index``, ``cell_count``,
    ``threshold_value`` (``nan`` for segment_nuclei), ``detection_method``,
    ``mean_area``) and ``masks`` (an int32 label stack, labels restarting at 1 in every
    plane).
    """
    import pandas as pd
    from skimage.measure import label as _label

    arr = npf.check_stack(image, "count_cells")
    npf.check_connectivity(connectivity, "count_cells")
    if method not in ("threshold", "segment_nuclei"):
        raise ValueError(
            f"count_cells: method must be 'threshold' or 'segment_nuclei', got {method!r}"
        )
    given = {
        "threshold": threshold,
        "opening_radius": opening_radius,
        "fill": fill,
        "split_touching": split_touching,
        "min_distance": min_distance,
    }
    if method == "segment_nuclei":
        changed = sorted(k for k, v in given.items() if v != _THRESHOLD_DEFAULTS[k])
        if changed:
            raise ValueError(f"count_cells: {', '.join(changed)} apply to method='threshold' only")
    elif diameter is not None:
        raise ValueError("count_cells: diameter applies to method='segment_nuclei' only")
    planes = range(arr.shape[0])
    if reference is not None:
        if not 1 <= reference <= arr.shape[0]:
            raise ValueError(
                f"count_cells: reference plane {reference} is outside the stack's "
                f"{arr.shape[0]} planes (1-based)"
            )
        planes = range(reference - 1, reference)
    labels = np.zeros(arr.shape, dtype=np.int32)
    rows = []
    fp = npf.disk(opening_radius, dtype=bool) if opening_radius > 0 else None
    label_conn = min(connectivity, 2)
    for z in planes:
        plane = arr[z]
        if method == "segment_nuclei":
            lab = segment_nuclei_array(plane, diameter)
            if min_size > 1:
                lab = npf.remove_small_plane(lab, min_size, connectivity)
            value = float("nan")
            detection = "segment_nuclei"
        else:
            if threshold == "otsu":
                value = npf.otsu_threshold_value(plane)
                detection = "otsu"
            elif isinstance(threshold, (int, float)) and not isinstance(threshold, bool):
                value = float(threshold)
                detection = "fixed"
            else:
                raise ValueError(
                    f"count_cells: threshold must be 'otsu' or a number, got {threshold!r}"
                )
            # the plain per-plane kernels, not the decorated stack functions (see _numpy.py)
            mask = plane > value
            if fp is not None:
                mask = npf.open_plane(mask, fp)
            if fill:
                mask = npf.fill_plane(mask)
            if min_size > 1:
                mask = npf.remove_small_plane(mask, min_size, connectivity)
            lab = _label(mask, connectivity=label_conn)
            if split_touching and lab.max() > 0:
                lab = _hcs.split_touching(lab, min_distance)
        lab = _sequential(lab)
        labels[z] = lab
        n = int(lab.max())
        area = float(np.count_nonzero(lab)) / n if n else 0.0
        rows.append(
            {
                "slice_index": z,
                "cell_count": n,
                "threshold_value": value,
                "detection_method": detection,
                "mean_area": area,
            }
        )
    if reference is not None:
        labels[:] = labels[reference - 1]
    return arr, pd.DataFrame(rows), labels


def _sequential(lab: np.ndarray) -> np.ndarray:
    """Labels renumbered 1..n in order of their values (0 stays background)."""
    if lab.size == 0 or lab.max() <= 0:
        return lab.astype(np.int32, copy=False)
    if lab.min() < 0:  # not a label image bincount can count; negatives are background
        lab = np.where(lab < 0, 0, lab)
    # which ids occur: one counting pass (np.unique would sort every pixel)
    present = np.bincount(lab.ravel())[1:] > 0
    n = int(np.count_nonzero(present))
    if n == present.size:
        return lab.astype(np.int32, copy=False)
    lut = np.zeros(present.size + 1, dtype=np.int32)
    lut[1:][present] = np.arange(1, n + 1, dtype=np.int32)
    return lut[lab]


# --------------------------------------------------------------------------- measurement

_BASE_PROPERTIES = (
    "label",
    "area",
    "perimeter",
    "centroid",
    "eccentricity",
    "solidity",
    "axis_major_length",
    "axis_minor_length",
    "orientation",
    "intensity_mean",
    "intensity_max",
    "intensity_min",
    "intensity_std",
)

MEASUREMENT_COLUMNS = (
    "slice_index",
    "label",
    "area",
    "perimeter",
    "form_factor",
    "centroid_y",
    "centroid_x",
    "eccentricity",
    "solidity",
    "axis_major_length",
    "axis_minor_length",
    "orientation",
    "intensity_mean",
    "intensity_max",
    "intensity_min",
    "intensity_std",
    "intensity_integrated",
)
TEXTURE_COLUMNS = (
    "texture_contrast",
    "texture_homogeneity",
    "texture_correlation",
    "texture_energy",
)


def _texture(region_mask: np.ndarray, intensity: np.ndarray) -> np.ndarray:
    """Haralick features (distance 1, mean of four angles) on 16 grey levels in the object."""
    from skimage.feature import graycomatrix, graycoprops

    vals = intensity[region_mask]
    lo, hi = (float(vals.min()), float(vals.max())) if vals.size else (0.0, 0.0)
    if hi <= lo:
        return np.array([0.0, 1.0, 1.0, 1.0])
    q = np.clip(((intensity - lo) / (hi - lo) * 15.999).astype(np.uint8), 0, 15)
    q = np.where(region_mask, q + 1, 0).astype(np.uint8)
    glcm = graycomatrix(q, [1], [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], levels=17)
    glcm = glcm[1:, 1:]  # pairs inside the object only
    glcm = glcm / max(glcm.sum(axis=(0, 1), keepdims=True).max(), 1)
    props = [
        float(np.mean(graycoprops(glcm, p))) for p in ("contrast", "homogeneity", "correlation")
    ]
    props.append(float(np.mean(graycoprops(glcm, "energy"))))
    return np.nan_to_num(np.array(props), nan=1.0)


def measurement_table(
    image: np.ndarray, labels: np.ndarray, *, texture: bool = False
) -> dict[str, np.ndarray]:
    """Per-object measurements of a ``[Z, Y, X]`` stack as columns (one row per object and
    plane); ``labels`` has the same planes or one plane used for all."""
    from skimage.measure import regionprops_table

    arr = np.asarray(image)
    lab = np.asarray(labels)
    columns = list(MEASUREMENT_COLUMNS) + (list(TEXTURE_COLUMNS) if texture else [])
    chunks: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    extra = (_texture,) if texture else ()
    for z in range(arr.shape[0]):
        plane_labels = lab[0] if lab.shape[0] == 1 else lab[z]
        t = regionprops_table(
            plane_labels.astype(np.int32, copy=False),
            intensity_image=arr[z].astype(np.float32, copy=False),
            properties=_BASE_PROPERTIES,
            extra_properties=extra,
        )
        n = len(t["label"])
        chunks["slice_index"].append(np.full(n, z, dtype=np.int64))
        for key, values in t.items():
            name = {"centroid-0": "centroid_y", "centroid-1": "centroid_x"}.get(key, key)
            if name.startswith("_texture-"):
                name = TEXTURE_COLUMNS[int(name.rsplit("-", 1)[1])]
            chunks[name].append(np.asarray(values))
        area = np.asarray(t["area"], dtype=np.float64)
        perim = np.asarray(t["perimeter"], dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            chunks["form_factor"].append(
                np.where(perim > 0, 4 * np.pi * area / np.maximum(perim, 1e-12) ** 2, np.nan)
            )
        chunks["intensity_integrated"].append(np.asarray(t["intensity_mean"]) * area)
    return {
        c: (np.concatenate(v) if v else np.zeros(0, dtype=np.float64)) for c, v in chunks.items()
    }


def _measure(image: Any, masks: Any, texture: bool, func: str) -> tuple[np.ndarray, Any]:
    import pandas as pd

    arr = npf.check_stack(image, func)
    lab = npf.check_stack(masks, f"{func} (labels)")
    if lab.shape[1:] != arr.shape[1:] or lab.shape[0] not in (1, arr.shape[0]):
        raise ValueError(
            f"{func}: labels shape {lab.shape} does not fit image shape {arr.shape} "
            f"(same shape, or one plane used for every image plane)"
        )
    if not np.issubdtype(lab.dtype, np.integer) and lab.dtype != bool:
        raise ValueError(f"{func}: labels must be integers, got dtype {lab.dtype}")
    return arr, pd.DataFrame(measurement_table(arr, lab, texture=texture))


@mem.numpy(dtype_policy="native")
@special_inputs("masks")
@special_outputs(("object_measurements", materialize_table))
def measure_objects(image: Any, masks: Any, *, texture: bool = False) -> tuple[np.ndarray, Any]:
    """Measure every labelled object of ``masks`` on ``image``, plane by plane.

    ``masks`` is a label stack of the image's shape, or of one plane used for every plane
    (the ``masks`` special output of :func:`count_cells`).  Returns the image unchanged and
    the special output ``object_measurements``: one row per object and plane with
    ``slice_index``, ``label``, ``area``, ``perimeter``, ``form_factor`` (4 pi area /
    perimeter^2), ``centroid_y``, ``centroid_x``, ``eccentricity``, ``solidity``,
    ``axis_major_length``, ``axis_minor_length``, ``orientation``, ``intensity_mean``,
    ``intensity_max``, ``intensity_min``, ``intensity_std`` and ``intensity_integrated``
    (sum over the object); with ``texture=True`` also Haralick ``texture_contrast``,
    ``texture_homogeneity``, ``texture_correlation`` and ``texture_energy``.  When a step
    stacks channels, each row's ``channel`` column says which channel was measured.
    """
    return _measure(image, masks, texture, "measure_objects")


@mem.numpy(dtype_policy="native")
@special_inputs("cell_masks")
@special_outputs(("cell_measurements", materialize_table))
def measure_cells(image: Any, cell_masks: Any, *, texture: bool = False) -> tuple[np.ndarray, Any]:
    """:func:`measure_objects` for the ``cell_masks`` of :func:`watershed_seeded`.

    Returns the image unchanged and the special output ``cell_measurements`` (the same
    columns as ``object_measurements``).
    """
    return _measure(image, cell_masks, texture, "measure_cells")


@mem.numpy(dtype_policy="native")
@special_inputs("masks")
@special_outputs(("cell_masks", materialize_labels))
def watershed_seeded(
    image: Any,
    masks: Any,
    *,
    threshold: str | float = "otsu",
    compactness: float = 0.0,
    reference: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Grow each seed (e.g. a nucleus of ``masks``) over the foreground of this image: a
    seeded watershed of the smoothed intensity, as for cells from nuclei.

    The foreground is the image above ``threshold`` (a scikit-image method name such as
    ``"otsu"`` or ``"li"``, or a number) plus the seeds themselves; ``compactness`` > 0
    gives more regular regions (compact watershed).  ``masks`` has the image's planes or
    one plane for all.  ``reference`` (1-based): grow the cells on that plane only (the
    cell-body channel of a stack of channels) and give its labels to every plane, so that
    :func:`measure_cells` measures every channel inside the same cells.  Returns the
    image unchanged and the special output ``cell_masks`` (int32 labels carrying the
    seeds' label numbers).
    """
    arr = npf.check_stack(image, "watershed_seeded")
    seeds = npf.check_stack(masks, "watershed_seeded (masks)")
    if seeds.shape[1:] != arr.shape[1:] or seeds.shape[0] not in (1, arr.shape[0]):
        raise ValueError(
            f"watershed_seeded: seeds shape {seeds.shape} does not fit image shape {arr.shape}"
        )
    planes = range(arr.shape[0])
    if reference is not None:
        if not 1 <= reference <= arr.shape[0]:
            raise ValueError(
                f"watershed_seeded: reference plane {reference} is outside the stack's "
                f"{arr.shape[0]} planes (1-based)"
            )
        planes = range(reference - 1, reference)
    out = np.zeros(arr.shape, dtype=np.int32)
    for z in planes:
        plane_seeds = seeds[0] if seeds.shape[0] == 1 else seeds[z]
        out[z] = _hcs.grow_seeds(arr[z], plane_seeds, threshold, compactness)
    if reference is not None:
        out[:] = out[reference - 1]
    return arr, out


SPOT_COLUMNS = ("slice_index", "spot", "y", "x", "sigma", "radius", "intensity")


@mem.numpy(dtype_policy="native")
@special_outputs(("spots", materialize_table))
def detect_spots(
    image: Any,
    min_sigma: float = 1.0,
    max_sigma: float = 3.0,
    *,
    num_sigma: int = 5,
    threshold: float = 0.05,
    overlap: float = 0.5,
) -> tuple[np.ndarray, Any]:
    """Find bright spots (foci, vesicles, smFISH dots) by Laplacian of Gaussian, per plane.

    ``skimage.feature.blob_log`` on each plane scaled to [0, 1] by its own range, so
    ``threshold`` is relative to the plane's contrast.  Returns the image unchanged and
    the special output ``spots``: one row per spot with ``slice_index``, ``spot``
    (1-based per plane), ``y``, ``x``, ``sigma``, ``radius`` (sigma * sqrt 2) and
    ``intensity`` (the image value at the spot).
    """
    import pandas as pd
    from skimage.feature import blob_log

    arr = npf.check_stack(image, "detect_spots")
    rows: dict[str, list[Any]] = {c: [] for c in SPOT_COLUMNS}
    for z in range(arr.shape[0]):
        plane = arr[z].astype(np.float32)
        lo, hi = float(plane.min()), float(plane.max())
        if hi <= lo:
            continue
        blobs = blob_log(
            (plane - lo) / (hi - lo),
            min_sigma=min_sigma,
            max_sigma=max_sigma,
            num_sigma=num_sigma,
            threshold=threshold,
            overlap=overlap,
            exclude_border=False,
        )
        for k, (y, x, s) in enumerate(blobs, start=1):
            rows["slice_index"].append(z)
            rows["spot"].append(k)
            rows["y"].append(float(y))
            rows["x"].append(float(x))
            rows["sigma"].append(float(s))
            rows["radius"].append(float(s) * np.sqrt(2.0))
            rows["intensity"].append(float(arr[z, int(y), int(x)]))
    return arr, pd.DataFrame(rows, columns=list(SPOT_COLUMNS))
