"""count_cells agrees with the same computation written directly with scipy/scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.measure import label as sk_label
from skimage.morphology import disk

from hcsflow.functions import count_cells


def _synthetic_stack(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    stack = rng.normal(100.0, 8.0, size=(3, 64, 64))
    yy, xx = np.mgrid[:64, :64]
    for z in range(3):
        for _ in range(10 + 3 * z):
            cy, cx = rng.integers(0, 64, size=2)
            r = rng.integers(2, 7)
            stack[z][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] += 200.0
        # a ring with a hole, so hole filling matters
        ring = ((yy - 32) ** 2 + (xx - 32) ** 2 <= 64) & ((yy - 32) ** 2 + (xx - 32) ** 2 > 9)
        stack[z][ring] += 200.0
    return np.clip(stack, 0, None).astype(np.uint16)


def _reference(stack: np.ndarray, min_size: int, radius: int, connectivity: int) -> np.ndarray:
    out = np.zeros(stack.shape, dtype=np.int32)
    for z, plane in enumerate(stack):
        mask = plane > threshold_otsu(plane)
        if radius > 0:
            mask = ndi.binary_opening(mask, structure=disk(radius).astype(bool))
        mask = ndi.binary_fill_holes(mask)
        lab, _ = ndi.label(mask, structure=ndi.generate_binary_structure(2, connectivity))
        sizes = np.bincount(lab.ravel())
        small = sizes < min_size
        small[0] = True
        mask = ~small[lab]
        out[z] = sk_label(mask, connectivity=connectivity)
    return out


@pytest.mark.parametrize(
    ("seed", "min_size", "radius", "connectivity"),
    [(0, 20, 1, 1), (1, 30, 2, 2), (2, 5, 0, 1)],
)
def test_count_cells_matches_direct_scipy_skimage(
    seed: int, min_size: int, radius: int, connectivity: int
) -> None:
    stack = _synthetic_stack(seed)
    expected = _reference(stack, min_size, radius, connectivity)
    main, table, masks = count_cells(
        stack, min_size=min_size, opening_radius=radius, connectivity=connectivity
    )
    assert masks.dtype == np.int32
    np.testing.assert_array_equal(masks, expected)
    np.testing.assert_array_equal(main, stack)
    assert expected.max() > 3
    assert list(table["cell_count"]) == [int(p.max()) for p in expected]
    areas = [np.count_nonzero(p) / p.max() for p in expected]
    np.testing.assert_allclose(table["mean_area"], areas)
    assert list(table["threshold_value"]) == [float(threshold_otsu(p)) for p in stack]


def test_count_cells_rejects_bad_connectivity() -> None:
    with pytest.raises(ValueError, match="connectivity"):
        count_cells(_synthetic_stack(0), connectivity=4)


def test_measure_objects_matches_direct_regionprops_table() -> None:
    import pandas as pd
    from skimage.measure import regionprops_table

    from hcsflow.functions import measure_objects

    stack = _synthetic_stack(3).astype(np.float32)
    masks = _reference(stack, 20, 1, 1)
    masks[1] = 0  # a plane without objects contributes no rows
    props = ("label", "area", "perimeter", "centroid", "eccentricity", "solidity")
    props += ("axis_major_length", "axis_minor_length", "orientation")
    props += ("intensity_mean", "intensity_max", "intensity_min", "intensity_std")
    frames = []
    for z in range(stack.shape[0]):
        frame = pd.DataFrame(
            regionprops_table(masks[z], intensity_image=stack[z], properties=props)
        )
        frame.insert(0, "slice_index", z)
        frames.append(frame)
    expected = pd.concat(frames, ignore_index=True).rename(
        columns={"centroid-0": "centroid_y", "centroid-1": "centroid_x"}
    )
    expected["form_factor"] = 4 * np.pi * expected["area"] / expected["perimeter"] ** 2
    expected["intensity_integrated"] = expected["intensity_mean"] * expected["area"]
    _, table = measure_objects(stack, masks)
    assert len(table) == int(masks[0].max() + masks[2].max()) > 0
    pd.testing.assert_frame_equal(table, expected[list(table.columns)], check_exact=True)


def test_labels_are_renumbered_one_to_n_in_order() -> None:
    """count_cells' renumbering (gaps closed, order kept, background and negatives 0)
    agrees with skimage.segmentation.relabel_sequential."""
    from skimage.segmentation import relabel_sequential

    from hcsflow.functions._analysis import _sequential

    rng = np.random.default_rng(7)
    for lab in (
        rng.integers(0, 40, (32, 32)) * 3,  # gaps everywhere
        np.arange(1, 17).reshape(4, 4),  # already 1..n: returned as it is (int32)
        np.zeros((5, 5), np.int64),
        rng.integers(0, 9, (8, 8)).astype(np.uint16),
    ):
        got = _sequential(lab)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, relabel_sequential(lab)[0])
    np.testing.assert_array_equal(
        _sequential(np.array([[0, -2, 5], [5, 9, 0]])), [[0, 0, 1], [1, 2, 0]]
    )
