"""CuPy implementations against numpy (needs an NVIDIA GPU; skipped cleanly without one)."""

from __future__ import annotations

import numpy as np
import pytest

from hcsflow.functions import function_registry
from hcsflow.functions.synthetic import nuclei_image

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cp():  # type: ignore[no-untyped-def]
    return pytest.importorskip("cupy")


@pytest.fixture(scope="module")
def sample() -> np.ndarray:
    s = nuclei_image((96, 96), diameter=10.0, seed=9)
    return np.stack([s.image, s.image[::-1]]).astype(np.float32)


FLOAT_FUNCS = [
    ("gaussian_filter", {"sigma": 2.0}),
    ("median_filter", {"size": 3}),
    ("subtract_background", {"sigma": 10.0}),
    ("normalize_percentile", {}),
    ("max_projection", {}),
    ("mean_projection", {}),
    ("sum_projection", {}),
    ("std_projection", {}),
    ("min_projection", {}),
    ("top_hat", {"radius": 4}),
    ("top_hat", {"radius": 4, "shape": "square"}),
]


@pytest.mark.parametrize(("name", "kwargs"), FLOAT_FUNCS)
def test_cupy_matches_numpy(cp, sample: np.ndarray, name: str, kwargs: dict) -> None:  # type: ignore[no-untyped-def]
    impls = function_registry.implementations(name)
    got = impls["cupy"](cp.asarray(sample), **kwargs).get()
    np.testing.assert_allclose(got, impls["numpy"](sample, **kwargs), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("name", ["threshold_otsu", "threshold_local"])
def test_cupy_masks_match_numpy(cp, sample: np.ndarray, name: str) -> None:  # type: ignore[no-untyped-def]
    impls = function_registry.implementations(name)
    got = impls["cupy"](cp.asarray(sample)).get()
    assert (got == impls["numpy"](sample)).mean() > 0.999


def test_cupy_morphology_and_labels(cp, sample: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    impls = {n: function_registry.implementations(n) for n in ("binary_opening", "label")}
    mask = sample > np.percentile(sample, 70)
    for name in ("binary_opening", "binary_closing", "fill_holes"):
        f = function_registry.implementations(name)
        np.testing.assert_array_equal(f["cupy"](cp.asarray(mask)).get(), f["numpy"](mask))
    np.testing.assert_array_equal(
        impls["label"]["cupy"](cp.asarray(mask)).get(), impls["label"]["numpy"](mask)
    )


def test_cupy_illumination(cp, sample: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    from hcsflow.functions import IlluminationProfile, correct_illumination

    profile = IlluminationProfile(np.linspace(0.5, 1.5, 96 * 96).reshape(96, 96), 80.0)
    impl = function_registry.implementations("correct_illumination")["cupy"]
    np.testing.assert_allclose(
        impl(cp.asarray(sample), profile).get(), correct_illumination(sample, profile), rtol=1e-5
    )


def test_library_names_select_the_cupy_twin(cp, sample: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    res = function_registry.resolve("ndi.gaussian_filter", ("cupy", "numpy"))
    assert res.memory_type == "cupy"
    got = res.func(cp.asarray(sample), 2.0).get()
    ref = function_registry.resolve("ndi.gaussian_filter", ("numpy",)).func(sample, 2.0)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3)
