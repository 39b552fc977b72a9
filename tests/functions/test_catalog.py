"""Library functions by name: resolution, wrapping, compile-time checks, pickling."""

from __future__ import annotations

import inspect
import pickle
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage as ndi

from hcsflow.errors import ShapeError, UnknownFunctionError
from hcsflow.functions import function_registry, list_functions
from hcsflow.functions._catalog import EXCLUDED, LibraryFunction, catalog, excluded_functions


def resolve(name: str, preference: tuple[str, ...] = ("numpy",)):  # type: ignore[no-untyped-def]
    return function_registry.resolve(name, preference)


def test_qualified_alias_and_short_names_resolve_to_the_same_function() -> None:
    a = resolve("skimage.filters.sato")
    b = resolve("sato")
    assert a.memory_type == b.memory_type == "numpy"
    assert a.func.name == b.func.name == "skimage.filters.sato"
    assert resolve("ndi.gaussian_filter").func.name == "scipy.ndimage.gaussian_filter"
    assert resolve("scipy.ndimage.gaussian_filter").func.name == "scipy.ndimage.gaussian_filter"
    # built-ins win over library functions of the same short name
    assert resolve("gaussian_filter").func.__module__ == "hcsflow.functions._numpy"


def test_wrapped_function_runs_plane_by_plane_and_matches_the_library() -> None:
    from skimage.filters import sato

    rng = np.random.default_rng(0)
    stack = rng.random((3, 40, 40)).astype(np.float32)
    out = resolve("skimage.filters.sato").func(stack, sigmas=[1, 2])
    for z in range(3):
        np.testing.assert_allclose(out[z], sato(stack[z], sigmas=[1, 2]))
    blurred = resolve("ndi.gaussian_filter").func(stack, 2.0)
    np.testing.assert_allclose(blurred[1], ndi.gaussian_filter(stack[1], 2.0))
    whole = resolve("ndi.gaussian_filter").func(stack, 2.0, slice_by_slice=False)
    np.testing.assert_allclose(whole, ndi.gaussian_filter(stack, 2.0))


def test_threshold_functions_become_masks_and_tuples_give_their_image() -> None:
    from skimage.filters import threshold_li, threshold_multiotsu

    rng = np.random.default_rng(1)
    stack = (rng.random((2, 32, 32)) * 100).astype(np.float32)
    mask = resolve("skimage.filters.threshold_li").func(stack)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask[0], stack[0] > threshold_li(stack[0]))
    classes = resolve("skimage.filters.threshold_multiotsu").func(stack, classes=3)
    np.testing.assert_array_equal(
        classes[1], np.digitize(stack[1], threshold_multiotsu(stack[1], classes=3))
    )
    local = resolve("skimage.filters.threshold_local").func(stack, block_size=11)
    assert local.dtype == bool
    labels = resolve("ndi.label").func(stack > 50)
    np.testing.assert_array_equal(labels[0], ndi.label(stack[0] > 50)[0])


def test_unknown_excluded_and_ambiguous_names_explain_themselves() -> None:
    with pytest.raises(UnknownFunctionError, match="did you mean 'skimage.filters.sato'") as err:
        resolve("skimage.filters.satto")
    # a typed error that names the function, still a KeyError, printed without quotes
    assert isinstance(err.value, KeyError) and err.value.name == "skimage.filters.satto"
    assert str(err.value).startswith("skimage.filters has no image function")
    again = pickle.loads(pickle.dumps(err.value))  # as it comes back from a worker
    assert type(again) is UnknownFunctionError and again.name == err.value.name
    assert str(again) == str(err.value)
    with pytest.raises(KeyError, match="footprint"):
        resolve("skimage.morphology.disk")
    with pytest.raises(KeyError, match="ambiguous.*scipy.ndimage.sobel.*skimage.filters.sobel"):
        resolve("sobel")
    with pytest.raises(KeyError, match="did you mean"):
        resolve("satoo")
    with pytest.raises(KeyError, match="skimage.measure.regionprops returns measurements"):
        resolve("regionprops")
    with pytest.raises(KeyError, match="not installed"):
        if "cupy" in sys.modules or _has("cupy"):
            pytest.skip("cupy is installed here")
        resolve("cupyx.scipy.ndimage.gaussian_filter")


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_signature_drops_the_image_and_adds_slice_by_slice() -> None:
    fn = resolve("skimage.filters.sato").func
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    assert params[0].kind is inspect.Parameter.POSITIONAL_ONLY
    assert "sigmas" in sig.parameters and sig.parameters["slice_by_slice"].default is True
    with pytest.raises(TypeError):
        sig.bind(object(), sigmaz=[1])


def test_wrapper_pickles_by_name_and_refuses_non_images() -> None:
    fn = resolve("skimage.filters.sato").func
    again = pickle.loads(pickle.dumps(fn))
    assert isinstance(again, LibraryFunction) and again.name == fn.name
    edt = LibraryFunction("scipy.ndimage.distance_transform_edt")
    mask = np.ones((1, 16, 16), bool)
    assert edt(mask).shape == (1, 16, 16)
    with pytest.raises(ShapeError, match="tuple"):
        edt(mask, return_indices=True)


def test_catalog_covers_the_libraries_and_lists_exclusions_with_reasons() -> None:
    names = {e.name for e in catalog()}
    for expected in (
        "skimage.filters.sato",
        "skimage.morphology.white_tophat",
        "skimage.segmentation.watershed",
        "skimage.exposure.equalize_adapthist",
        "skimage.restoration.denoise_nl_means",
        "skimage.transform.rescale",
        "skimage.feature.canny",
        "skimage.measure.block_reduce",
        "scipy.ndimage.white_tophat",
    ):
        assert expected in names
    excluded = excluded_functions()
    assert excluded["skimage.measure.regionprops"].startswith("returns measurements")
    for lib, rules in EXCLUDED.items():
        for attr in rules:
            assert f"{lib}.{attr}" not in names


def test_pyclesperanto_functions_by_name() -> None:
    cle = pytest.importorskip("pyclesperanto")
    rng = np.random.default_rng(2)
    stack = (rng.random((2, 30, 30)) * 100).astype(np.float32)
    res = resolve("cle.top_hat")
    assert res.memory_type == "pyclesperanto"
    out = res.func(stack, radius_x=3, radius_y=3)
    ref = cle.pull(cle.top_hat(cle.push(stack[1]), radius_x=3, radius_y=3))
    np.testing.assert_allclose(cle.pull(out)[1], ref)
    # deprecated pyclesperanto names still resolve; their own warning reaches the caller
    with pytest.warns(DeprecationWarning, match="top_hat_box"):
        resolve("cle.top_hat_box").func(stack, radius_x=3, radius_y=3)
    proj = resolve("cle.maximum_z_projection").func(stack)
    np.testing.assert_allclose(cle.pull(proj), stack.max(axis=0, keepdims=True))
    assert "output_image" not in inspect.signature(res.func).parameters


def test_compile_checks_library_names_and_keyword_arguments(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import tifffile

    from hcsflow.errors import CompilationError
    from hcsflow.pipeline import FunctionStep, compile_pipeline, run_pipeline

    plate = tmp_path / "plate"
    plate.mkdir()
    rng = np.random.default_rng(3)
    for well in ("A01", "A02"):
        tifffile.imwrite(plate / f"{well}_s1_w1.tif", (rng.random((32, 32)) * 1000).astype("u2"))
    with pytest.raises(CompilationError) as info:
        compile_pipeline(
            [
                FunctionStep(func="skimage.filters.satto"),
                FunctionStep(func="skimage.filters.sato", sigmaz=[1]),
            ],
            str(plate),
            str(tmp_path / "out"),
        )
    text = str(info.value)
    assert "did you mean 'skimage.filters.sato'" in text
    assert "sigmaz" in text
    steps = [
        FunctionStep(func="ndi.gaussian_filter", sigma=1.0),
        FunctionStep(func="skimage.filters.sato", sigmas=[1, 2]),
    ]
    result = run_pipeline(steps, str(plate), str(tmp_path / "run"), config=_inprocess_config())
    assert not result.failed


def _inprocess_config():  # type: ignore[no-untyped-def]
    from hcsflow.pipeline import GlobalPipelineConfig

    return GlobalPipelineConfig(num_workers=1, executor="inprocess")


def test_list_functions_searches_names_and_summaries() -> None:
    found = {i["name"]: i for i in list_functions("tophat")}
    assert "skimage.morphology.white_tophat" in found
    assert found["skimage.morphology.white_tophat"]["memory_types"] == ["numpy"]
    builtin = {i["name"]: i for i in list_functions("segment_nuclei")}["segment_nuclei"]
    assert builtin["source"] == "hcsflow" and "diameter" in builtin["signature"]


def test_catalog_is_not_built_at_import() -> None:
    code = (
        "import sys, hcsflow, hcsflow.functions\n"
        "bad = [m for m in ('skimage', 'pyclesperanto', 'torch', 'cupy') if m in sys.modules]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
