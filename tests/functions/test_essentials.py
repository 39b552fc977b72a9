"""HCS essentials: numpy behaviour, and torch / pyclesperanto agreement on the CPU.

Tolerances (also in docs/functions.md): float results within 1e-4 relative (float32
rounding); masks agree on >= 99.9 % of pixels (ties at the threshold); pyclesperanto
filters are compared away from the border (``nearest`` borders) and its disk element is
its own.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from hcsflow.errors import DataFormatError, NotFoundError, ShapeError
from hcsflow.functions import (
    IlluminationProfile,
    aggregate_wells,
    correct_illumination,
    detect_spots,
    estimate_illumination,
    function_registry,
    measure_cells,
    measure_objects,
    min_projection,
    rolling_ball,
    std_projection,
    sum_projection,
    threshold_adaptive,
    threshold_local,
    top_hat,
    watershed_distance,
    watershed_seeded,
)
from hcsflow.functions.synthetic import nuclei_image


@pytest.fixture(scope="module")
def plate_images() -> list[object]:
    return [nuclei_image((128, 128), diameter=12.0, seed=40 + i) for i in range(24)]


def impl(name: str, memory_type: str):  # type: ignore[no-untyped-def]
    return function_registry.implementations(name)[memory_type]


# --------------------------------------------------------------------------- illumination


def test_flatfield_estimated_across_images_recovers_the_truth(plate_images) -> None:  # type: ignore[no-untyped-def]
    # nuclei at different places in every image, under one shared vignetting field
    truth = plate_images[0].flatfield
    rng = np.random.default_rng(0)
    images = [
        rng.poisson(truth * (200.0 + 800.0 * (s.labels > 0))).astype(np.float32) + 100
        for s in plate_images
    ]
    profile = estimate_illumination(images, darkfield=100.0)
    assert profile.n_images == 24 and abs(profile.flatfield.mean() - 1) < 1e-5
    ratio = profile.flatfield / (truth / truth.mean())
    assert np.percentile(np.abs(ratio - 1), 95) < 0.05
    corrected = correct_illumination(np.stack(images[:2]), profile)
    np.testing.assert_allclose(corrected, (np.stack(images[:2]) - 100) / profile.flatfield)


def test_profile_file_round_trip_and_failures(tmp_path) -> None:  # type: ignore[no-untyped-def]
    flat = np.linspace(0.5, 1.5, 64, dtype=np.float32).reshape(8, 8)
    profile = IlluminationProfile(flat, 3.0)
    path = profile.save(tmp_path / "w1")
    assert path.name == "w1.npz" and not list(tmp_path.glob("*.tmp"))
    back = IlluminationProfile.load(path)
    np.testing.assert_array_equal(back.flatfield, flat)
    assert (back.darkfield == 3.0).all()
    stack = np.full((2, 8, 8), 10, np.uint16)
    expected = np.broadcast_to((10 - 3) / flat, stack.shape)
    np.testing.assert_allclose(correct_illumination(stack, str(path)), expected)
    with pytest.raises(NotFoundError):
        correct_illumination(stack, str(tmp_path / "missing.npz"))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataFormatError):
        IlluminationProfile.load(tmp_path / "bad.npz")
    with pytest.raises(ShapeError):
        correct_illumination(np.zeros((1, 4, 4)), profile)
    with pytest.raises(ValueError, match="positive"):
        IlluminationProfile(np.zeros((4, 4)), 0.0)


def test_plate_profiles_per_channel(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import tifffile

    from hcsflow.functions import estimate_plate_illumination

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    fields = {1: 1.0 - 0.4 * (xx / 31.0), 2: 1.0 - 0.4 * (yy / 31.0)}
    for w in range(6):
        for c, f in fields.items():
            img = rng.poisson(500 * f).astype(np.uint16)
            tifffile.imwrite(tmp_path / f"A{w + 1:02d}_s1_w{c}.tif", img)
    profiles = estimate_plate_illumination(tmp_path, smoothing=2.0)
    assert sorted(profiles) == [1, 2]
    assert profiles[1].flatfield[:, 0].mean() > profiles[1].flatfield[:, -1].mean() * 1.3
    assert profiles[2].flatfield[0].mean() > profiles[2].flatfield[-1].mean() * 1.3


# --------------------------------------------------------------------------- background


def test_rolling_ball_and_top_hat_remove_background(plate_images) -> None:  # type: ignore[no-untyped-def]
    from skimage.morphology import disk, white_tophat
    from skimage.restoration import rolling_ball as sk_rolling_ball

    s = plate_images[0]
    stack = s.image[None].astype(np.float32)
    small = rolling_ball(stack, radius=8)
    np.testing.assert_allclose(
        small[0], np.maximum(stack[0] - sk_rolling_ball(stack[0], radius=8), 0), rtol=1e-5
    )
    flat = rolling_ball(stack, radius=25)  # shrunk by 2, as ImageJ does
    inside, outside = s.labels > 0, ndi.binary_erosion(s.labels == 0, iterations=4)
    assert np.median(flat[0][outside]) < 0.1 * np.median(flat[0][inside])
    th = top_hat(stack, radius=8)
    np.testing.assert_allclose(th[0], white_tophat(stack[0], disk(8)))
    sq = top_hat(stack, radius=3, shape="square")
    np.testing.assert_allclose(sq[0], white_tophat(stack[0], np.ones((7, 7))))


def test_projections() -> None:
    stack = np.arange(60, dtype=np.uint16).reshape(3, 4, 5)
    np.testing.assert_allclose(sum_projection(stack)[0], stack.sum(axis=0))
    np.testing.assert_allclose(std_projection(stack)[0], stack.std(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(min_projection(stack)[0], stack[0])
    assert sum_projection(stack).dtype == np.float32


def test_local_and_adaptive_thresholds_follow_uneven_background() -> None:
    from skimage.filters import threshold_local as sk_local

    s = nuclei_image((192, 192), diameter=12.0, illumination=0.8, seed=7)
    stack = s.image[None].astype(np.float32)
    mask = threshold_local(stack, 51, offset=-5)
    np.testing.assert_array_equal(mask[0], stack[0] > sk_local(stack[0], 51, offset=-5))
    adaptive = threshold_adaptive(stack, 64)
    assert adaptive.dtype == bool
    inside = s.labels > 0
    assert adaptive[0][inside].mean() > 0.6 and adaptive[0][~inside].mean() < 0.1


# --------------------------------------------------------------------------- watersheds


def test_distance_watershed_splits_two_discs() -> None:
    yy, xx = np.mgrid[:40, :60]
    mask = (np.hypot(yy - 20, xx - 20) <= 9) | (np.hypot(yy - 20, xx - 35) <= 9)
    out = watershed_distance(mask[None], min_distance=5)
    assert out.dtype == np.int32 and out.max() == 2


def test_seeded_watershed_grows_cells_from_nuclei() -> None:
    yy, xx = np.mgrid[:50, :80]
    cyto = np.zeros((50, 80), np.float32)
    nuclei = np.zeros((50, 80), np.int32)
    for k, cx in enumerate((22, 56), start=1):
        cyto[np.hypot(yy - 25, xx - cx) <= 16] = 100
        nuclei[np.hypot(yy - 25, xx - cx) <= 5] = k
    main, cells = watershed_seeded(cyto[None] + 5, nuclei[None])
    assert main.shape == (1, 50, 80) and set(np.unique(cells)) == {0, 1, 2}
    assert (cells[0][nuclei > 0] == nuclei[nuclei > 0]).all()
    assert (cells[0] > 0).sum() > 3 * (nuclei > 0).sum()
    _, table = measure_cells(cyto[None], cells)
    assert list(table["label"]) == [1, 2]


# --------------------------------------------------------------------------- measurement


def test_measurements_per_channel_with_one_mask_plane_and_texture() -> None:
    labels = np.zeros((1, 30, 30), np.int32)
    labels[0, 5:15, 5:15] = 1
    labels[0, 18:26, 18:28] = 2
    rng = np.random.default_rng(0)
    chan = np.stack([np.full((30, 30), 10.0), rng.random((30, 30)) * 50]).astype(np.float32)
    _, table = measure_objects(chan, labels, texture=True)
    assert list(table["slice_index"]) == [0, 0, 1, 1]
    first = table.iloc[0]
    assert first["area"] == 100 and first["intensity_mean"] == 10
    assert first["intensity_integrated"] == pytest.approx(1000)
    assert first["intensity_std"] == 0
    assert 0.7 < first["form_factor"] <= 1.1
    assert {"texture_contrast", "texture_energy"} <= set(table.columns)
    with pytest.raises(ValueError, match="does not fit"):
        measure_objects(chan, np.zeros((2, 10, 10), np.int32))


def test_aggregate_wells() -> None:
    table = pd.DataFrame(
        {
            "well": ["A01", "A01", "A02"],
            "channel": [1, 1, 1],
            "label": [1, 2, 1],
            "area": [10.0, 30.0, 5.0],
        }
    )
    out = aggregate_wells(table, stats=("mean", "max"))
    assert list(out["object_count"]) == [2, 1]
    assert list(out["area_mean"]) == [20.0, 5.0] and list(out["area_max"]) == [30.0, 5.0]
    with pytest.raises(ValueError, match="none of the columns"):
        aggregate_wells(table.drop(columns=["well", "channel"]))


def test_detect_spots_finds_bright_dots() -> None:
    img = np.zeros((1, 64, 64), np.float32)
    for y, x in ((10, 10), (30, 40), (50, 20)):
        img[0, y, x] = 100
    img = ndi.gaussian_filter(img, (0, 1.5, 1.5))
    _, spots = detect_spots(img, 1.0, 3.0)
    got = sorted(zip(spots["y"].round().astype(int), spots["x"].round().astype(int), strict=True))
    assert got == [(10, 10), (30, 40), (50, 20)]


# --------------------------------------------------------------------------- frameworks


@pytest.fixture(scope="module")
def sample() -> np.ndarray:
    s = nuclei_image((96, 96), diameter=10.0, seed=9)
    return np.stack([s.image, s.image[::-1]]).astype(np.float32)


def test_torch_essentials_agree_with_numpy(sample: np.ndarray) -> None:
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(sample)
    flat = np.linspace(0.6, 1.2, 96 * 96, dtype=np.float32).reshape(96, 96)
    profile = IlluminationProfile(flat, 90.0)
    np.testing.assert_allclose(
        impl("correct_illumination", "torch")(t, profile).numpy(),
        correct_illumination(sample, profile),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        impl("top_hat", "torch")(t, 5, shape="square").numpy(),
        top_hat(sample, 5, shape="square"),
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match="square"):
        impl("top_hat", "torch")(t, 5)
    for name, ref in (
        ("sum_projection", sum_projection),
        ("std_projection", std_projection),
        ("min_projection", min_projection),
    ):
        np.testing.assert_allclose(impl(name, "torch")(t).numpy(), ref(sample), rtol=1e-5)
    for method in ("gaussian", "mean"):
        got = impl("threshold_local", "torch")(t, 15, method=method).numpy()
        assert (got == threshold_local(sample, 15, method=method)).mean() > 0.999


def test_pyclesperanto_essentials_agree_with_numpy(sample: np.ndarray) -> None:
    cle = pytest.importorskip("pyclesperanto")
    pushed = cle.push(sample)
    flat = np.linspace(0.6, 1.2, 96 * 96, dtype=np.float32).reshape(96, 96)
    profile = IlluminationProfile(flat, 90.0)
    np.testing.assert_allclose(
        cle.pull(impl("correct_illumination", "pyclesperanto")(pushed, profile)),
        correct_illumination(sample, profile),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        cle.pull(impl("top_hat", "pyclesperanto")(pushed, 4, shape="square")),
        top_hat(sample, 4, shape="square"),
        rtol=1e-5,
    )
    disk = cle.pull(impl("top_hat", "pyclesperanto")(pushed, 4))
    assert np.mean(np.isclose(disk, top_hat(sample, 4), rtol=1e-5)) > 0.9
    for name, ref in (
        ("sum_projection", sum_projection),
        ("std_projection", std_projection),
        ("min_projection", min_projection),
    ):
        got = cle.pull(impl(name, "pyclesperanto")(pushed))
        np.testing.assert_allclose(got, ref(sample), rtol=1e-4)
    for method in ("gaussian", "mean"):
        got = cle.pull(impl("threshold_local", "pyclesperanto")(pushed, 15, method=method))
        ref = threshold_local(sample, 15, method=method)
        assert (got.astype(bool)[:, 8:-8, 8:-8] == ref[:, 8:-8, 8:-8]).mean() > 0.99


def test_lazy_tables_match_module_exports_for_cupy() -> None:
    import ast
    from pathlib import Path

    import hcsflow.functions as lib

    source = Path(lib.__file__).with_name("_cupy.py").read_text()
    tree = ast.parse(source)
    exported = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "__all__"
    )
    assert sorted(lib._LAZY_FUNCTIONS["cupy"]) == sorted(exported)
