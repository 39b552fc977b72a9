"""segment_nuclei on realistic synthetic images with exact truth, scored by matched F1."""

from __future__ import annotations

import numpy as np
import pytest

from hcsflow.functions import count_cells, estimate_diameter, segment_nuclei
from hcsflow.functions.synthetic import match_labels, nuclei_image, nuclei_volume


@pytest.fixture(scope="module")
def medium() -> object:
    return nuclei_image((256, 256), diameter=16.0, seed=3)


def test_match_labels_scores_known_cases() -> None:
    truth = np.zeros((20, 20), np.int32)
    truth[2:8, 2:8] = 1
    truth[10:18, 10:18] = 2
    assert match_labels(truth, truth).f1 == 1.0
    pred = truth.copy()
    pred[pred == 2] = 0  # one object missed
    pred[0, 19] = 7  # one spurious pixel
    r = match_labels(pred, truth)
    assert (r.tp, r.fp, r.fn) == (1, 1, 1) and r.f1 == pytest.approx(0.5)
    shifted = np.zeros_like(truth)
    shifted[2:8, 5:11] = 1  # IoU 18/54 < 0.5: no match
    assert match_labels(shifted, truth).tp == 0
    with pytest.raises(ValueError):
        match_labels(truth, truth, iou_threshold=0.3)
    stack = np.stack([truth, truth])
    assert match_labels(stack, stack, per_plane=True).tp == 4


def test_synthetic_truth_is_exact_and_reproducible() -> None:
    a = nuclei_image((128, 128), diameter=14.0, seed=5)
    b = nuclei_image((128, 128), diameter=14.0, seed=5)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.image.dtype == np.uint16 and a.labels.dtype == np.int32
    ids = np.unique(a.labels)
    np.testing.assert_array_equal(ids, np.arange(ids.size))  # labels 0..n, none empty
    assert a.count > 10


def test_segment_nuclei_default_arguments_on_realistic_image(medium: object) -> None:
    labels = segment_nuclei(medium.image[None])
    assert labels.dtype == np.int32 and labels.shape == (1, 256, 256)
    r = match_labels(labels[0], medium.labels)
    assert r.f1 >= 0.8, r


def test_touching_nuclei_are_split() -> None:
    yy, xx = np.mgrid[:60, :80]
    img = np.full((60, 80), 120.0)
    truth = np.zeros((60, 80), np.int32)
    for k, cx in enumerate((28, 46), start=1):
        d = np.hypot(yy - 30, xx - cx) / 10.0
        img += np.where(d <= 1, 800 * (1 - 0.35 * d**2), 0)
        truth[(d <= 1) & (truth == 0)] = k
    rng = np.random.default_rng(0)
    stack = rng.poisson(img)[None].astype(np.uint16)
    split = segment_nuclei(stack, 20.0)
    assert split.max() == 2
    assert match_labels(split[0], truth).tp == 2
    merged = segment_nuclei(stack, 20.0, split_touching=False)
    assert merged.max() == 1


def test_dim_nuclei_beside_bright_illumination_gradient() -> None:
    s = nuclei_image((256, 256), diameter=18.0, dim_fraction=0.5, illumination=0.8, seed=11)
    labels = segment_nuclei(s.image[None])[0]
    assert match_labels(labels, s.labels).recall >= 0.8


def test_diameter_is_measured_on_the_image() -> None:
    for d in (10.0, 24.0):
        s = nuclei_image((256, 256), diameter=d, seed=int(d))
        assert estimate_diameter(s.image) == pytest.approx(d, rel=0.3)


def test_empty_and_constant_planes_give_no_objects() -> None:
    stack = np.stack([np.zeros((64, 64), np.uint16), np.full((64, 64), 500, np.uint16)])
    out = segment_nuclei(stack)
    assert out.shape == stack.shape and out.max() == 0


def test_3d_volume_with_anisotropy() -> None:
    v = nuclei_volume((16, 128, 128), anisotropy=3.0, diameter=18.0, seed=2)
    labels = segment_nuclei(v.image, slice_by_slice=False, anisotropy=3.0)
    assert labels.dtype == np.int32 and labels.shape == v.image.shape
    assert match_labels(labels, v.labels).f1 >= 0.6
    same = segment_nuclei(v.image, slice_by_slice=False, spacing=(1.5, 0.5, 0.5))
    np.testing.assert_array_equal(same, labels)


def test_bad_arguments_fail_loudly() -> None:
    stack = np.zeros((1, 16, 16), np.uint16)
    with pytest.raises(ValueError, match="diameter"):
        segment_nuclei(stack, -3)
    with pytest.raises(ValueError, match="slice_by_slice=False"):
        segment_nuclei(stack, anisotropy=2.0)
    with pytest.raises(ValueError, match="contradicts"):
        segment_nuclei(stack, slice_by_slice=False, anisotropy=2.0, spacing=(3, 1, 1))
    with pytest.raises(ValueError, match="outline"):
        segment_nuclei(stack, outline=1.5)


def test_count_cells_with_segment_nuclei_and_reference_plane(medium: object) -> None:
    stack = np.stack([medium.image, medium.image // 2])
    main, table, masks = count_cells(stack, method="segment_nuclei")
    assert main is not None and list(table["detection_method"]) == ["segment_nuclei"] * 2
    assert table["cell_count"].iloc[0] == int(masks[0].max()) > 20
    _, table1, masks1 = count_cells(stack, method="segment_nuclei", reference=1)
    assert list(table1["slice_index"]) == [0]
    np.testing.assert_array_equal(masks1[0], masks1[1])
    with pytest.raises(ValueError, match="method='threshold' only"):
        count_cells(stack, method="segment_nuclei", split_touching=True)
    with pytest.raises(ValueError, match="reference plane"):
        count_cells(stack, reference=3)


@pytest.mark.parametrize(("diameter", "planes"), [(None, 22.0), (18.0, 15.0)])
def test_working_set_of_a_plane(diameter: float | None, planes: float) -> None:
    """The most memory a plane's segmentation holds at once, in float32 planes of its
    size (tracemalloc; before intermediates were dropped as soon as they were used:
    27.3 planes measuring the diameter, 20.8 given it, the same labels)."""
    import tracemalloc

    img = nuclei_image(shape=(512, 512), seed=11).image[None]
    tracemalloc.start()
    try:
        labels = segment_nuclei(img, diameter)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert labels.max() > 150
    assert peak / (512 * 512 * 4) < planes
