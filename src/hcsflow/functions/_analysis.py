"""Analysis functions with special outputs: cell counting and object measurement."""

from __future__ import annotations

from typing import Any

import numpy as np

from hcsflow.functions import _numpy as npf
from hcsflow.memory import decorators as mem
from hcsflow.pipeline._materialize import materialize_labels, materialize_table
from hcsflow.pipeline._special_io import special_inputs, special_outputs

__all__ = ["count_cells", "measure_objects"]


@mem.numpy(dtype_policy="native")
@special_outputs(("cell_counts", materialize_table), ("masks", materialize_labels))
def count_cells(
    image: Any,
    *,
    threshold: str | float = "otsu",
    min_size: int = 20,
    opening_radius: int = 1,
    fill: bool = True,
    connectivity: int = 1,
    split_touching: bool = False,
    min_distance: int = 5,
) -> tuple[np.ndarray, Any, np.ndarray]:
    """Count bright objects (nuclei) in every plane.

    Each plane is thresholded (Otsu's method, or a fixed ``threshold`` value), opened
    with a disk of ``opening_radius``, hole-filled, cleaned of objects smaller than
    ``min_size`` pixels and labelled.  With ``split_touching=True``, touching objects
    are separated by a watershed of the distance transform seeded at its maxima at least
    ``min_distance`` pixels apart (use about the smallest object radius).

    Returns the input stack unchanged (so later steps can measure intensities), then the
    special outputs ``cell_counts`` (a table with one row per plane: ``slice_index``,
    ``cell_count``, ``threshold_value``, ``detection_method``, ``mean_area``) and
    ``masks`` (an int32 label stack, labels restarting at 1 in every plane).
    """
    import pandas as pd
    from skimage.measure import label as _label

    arr = npf.check_stack(image, "count_cells")
    npf.check_connectivity(connectivity, "count_cells")
    labels = np.zeros(arr.shape, dtype=np.int32)
    rows = []
    fp = npf.disk(opening_radius, dtype=bool) if opening_radius > 0 else None
    label_conn = min(connectivity, 2)
    for z in range(arr.shape[0]):
        plane = arr[z]
        if threshold == "otsu":
            value = npf.otsu_threshold_value(plane)
            method = "otsu"
        elif isinstance(threshold, (int, float)) and not isinstance(threshold, bool):
            value = float(threshold)
            method = "fixed"
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
        labels[z] = _label(mask, connectivity=label_conn)
        lab = labels[z]
        if split_touching and lab.max() > 0:
            labels[z] = _split(lab, min_distance)
            lab = labels[z]
        n = int(lab.max())
        area = float(np.count_nonzero(lab)) / n if n else 0.0
        rows.append(
            {
                "slice_index": z,
                "cell_count": n,
                "threshold_value": value,
                "detection_method": method,
                "mean_area": area,
            }
        )
    return arr, pd.DataFrame(rows), labels


def _split(lab: np.ndarray, min_distance: int) -> np.ndarray:
    """Watershed split of touching objects of one labelled plane (labels renumbered)."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    fg = lab > 0
    distance = ndi.distance_transform_edt(fg)
    peaks = peak_local_max(
        distance, min_distance=max(1, int(min_distance)), labels=lab, exclude_border=False
    )
    markers = np.zeros(lab.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    # every object keeps at least one seed, even where no maximum was found
    seeded = np.zeros(int(lab.max()) + 1, dtype=bool)
    seeded[lab[markers > 0]] = True
    next_id = len(peaks) + 1
    for obj in np.flatnonzero(~seeded[1:]) + 1:
        ys, xs = np.nonzero(lab == obj)
        markers[ys[0], xs[0]] = next_id
        next_id += 1
    out = watershed(-distance, markers, mask=fg)
    return np.asarray(out, dtype=np.int32)


_PROPERTIES = (
    "label",
    "area",
    "centroid",
    "intensity_mean",
    "intensity_max",
    "eccentricity",
    "solidity",
)


@mem.numpy(dtype_policy="native")
@special_inputs("masks")
@special_outputs(("object_measurements", materialize_table))
def measure_objects(image: Any, masks: Any) -> tuple[np.ndarray, Any]:
    """Measure every labelled object of ``masks`` on ``image``, plane by plane.

    ``masks`` is a label stack of the same shape (the ``masks`` special output of
    :func:`count_cells`).  Returns the image unchanged and the special output
    ``object_measurements``: one row per object with ``slice_index``, ``label``,
    ``area``, ``centroid_y``, ``centroid_x``, ``intensity_mean``, ``intensity_max``,
    ``eccentricity`` and ``solidity``.
    """
    import pandas as pd
    from skimage.measure import regionprops_table

    arr = npf.check_stack(image, "measure_objects")
    lab = npf.check_stack(masks, "measure_objects (masks)")
    if lab.shape != arr.shape:
        raise ValueError(
            f"measure_objects: masks shape {lab.shape} differs from image shape {arr.shape}"
        )
    # one DataFrame from concatenated columns: a frame per plane plus pd.concat costs more
    # than the measurements of a small plane
    tables = [
        regionprops_table(
            lab[z].astype(np.int32, copy=False), intensity_image=arr[z], properties=_PROPERTIES
        )
        for z in range(arr.shape[0])
    ]
    columns = [
        "slice_index",
        "label",
        "area",
        "centroid_y",
        "centroid_x",
        "intensity_mean",
        "intensity_max",
        "eccentricity",
        "solidity",
    ]
    if not tables:
        return arr, pd.DataFrame(columns=columns)
    data = {
        "slice_index": np.concatenate(
            [np.full(len(t["label"]), z, dtype=np.int64) for z, t in enumerate(tables)]
        )
    }
    for key in tables[0]:
        name = {"centroid-0": "centroid_y", "centroid-1": "centroid_x"}.get(key, key)
        data[name] = np.concatenate([t[key] for t in tables])
    df = pd.DataFrame(data)
    return arr, df[columns]
