"""CuPy implementations (NVIDIA GPUs) via ``cupyx.scipy.ndimage`` and, where installed, cuCIM.

Imported only when a run's implementation preference selects cupy.  Semantics follow the
numpy implementations exactly (cupyx.scipy.ndimage mirrors scipy.ndimage, including the
``reflect`` borders); results agree with numpy to float32 rounding, and thresholds to
within one histogram bin.  Tested by the ``gpu``-marked tests.
"""

from __future__ import annotations

from typing import Any

import cupy as cp
from cupyx.scipy import ndimage as cndi

from hcsflow.errors import ShapeError
from hcsflow.memory import decorators as mem

__all__ = [
    "gaussian_filter",
    "median_filter",
    "subtract_background",
    "normalize_percentile",
    "threshold_otsu",
    "binary_opening",
    "binary_closing",
    "fill_holes",
    "label",
    "max_projection",
    "mean_projection",
    "sum_projection",
    "std_projection",
    "min_projection",
    "correct_illumination",
    "top_hat",
    "threshold_local",
]


def _check(image: Any, func: str) -> Any:
    if not isinstance(image, cp.ndarray):
        raise TypeError(f"{func} (cupy) expects a cupy.ndarray, got {type(image).__name__}")
    if image.ndim != 3:
        raise ShapeError(f"{func} expects a 3-D [Z, Y, X] stack, got shape {image.shape}")
    return image


def _float(x: Any) -> Any:
    return x if x.dtype in (cp.float32, cp.float64) else x.astype(cp.float32)


def _fp(footprint: Any) -> Any:
    import numpy as np

    if footprint is None:
        fp = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)
    else:
        fp = np.asarray(footprint.get() if isinstance(footprint, cp.ndarray) else footprint)
    if fp.ndim != 2:
        raise ShapeError(f"cupy morphology takes a 2-D footprint, got shape {fp.shape}")
    return cp.asarray(fp.astype(bool))


@mem.cupy(dtype_policy="native")
def gaussian_filter(
    image: Any, sigma: float = 1.0, *, slice_by_slice: bool = True, truncate: float = 4.0
) -> Any:
    """Gaussian blur as the numpy version (float32 out)."""
    x = _float(_check(image, "gaussian_filter"))
    sig = (0.0, sigma, sigma) if slice_by_slice else sigma
    return cndi.gaussian_filter(x, sigma=sig, truncate=truncate).astype(cp.float32, copy=False)


@mem.cupy(dtype_policy="native")
def median_filter(image: Any, size: int = 3, *, slice_by_slice: bool = True) -> Any:
    """Median over a ``size`` x ``size`` window (dtype preserved)."""
    x = _check(image, "median_filter")
    window = (1, size, size) if slice_by_slice else (size, size, size)
    return cndi.median_filter(x, size=window, mode="reflect")


@mem.cupy(dtype_policy="native")
def subtract_background(image: Any, sigma: float = 25.0, *, slice_by_slice: bool = True) -> Any:
    """Image minus its wide Gaussian blur (``nearest`` borders), clipped at 0 (float32)."""
    x = _float(_check(image, "subtract_background"))
    sig = (0.0, sigma, sigma) if slice_by_slice else sigma
    out = x - cndi.gaussian_filter(x, sigma=sig, mode="nearest")
    return cp.maximum(out, 0).astype(cp.float32, copy=False)


@mem.cupy(dtype_policy="native")
def normalize_percentile(
    image: Any, low: float = 1.0, high: float = 99.8, *, slice_by_slice: bool = True
) -> Any:
    """Percentile normalisation to [0, 1] as the numpy version (float32)."""
    if not 0 <= low < high <= 100:
        raise ValueError(f"need 0 <= low < high <= 100, got low={low}, high={high}")
    x = _float(_check(image, "normalize_percentile"))
    axis = (1, 2) if slice_by_slice else None
    lo = cp.percentile(x, low, axis=axis, keepdims=True)
    hi = cp.percentile(x, high, axis=axis, keepdims=True)
    span = hi - lo
    out = cp.where(span > 0, (x - lo) / cp.where(span > 0, span, 1.0), 0.0)
    return cp.clip(out, 0.0, 1.0).astype(cp.float32)


def _otsu_value(values: Any, nbins: int = 256) -> float:
    v = values.ravel().astype(cp.float64)
    lo, hi = float(v.min()), float(v.max())
    if lo == hi:
        return lo
    hist, edges = cp.histogram(v, bins=nbins, range=(lo, hi))
    hist = hist.astype(cp.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    w1 = cp.cumsum(hist)
    w2 = cp.cumsum(hist[::-1])[::-1]
    m1 = cp.cumsum(hist * centers) / cp.maximum(w1, 1e-12)
    m2 = (cp.cumsum((hist * centers)[::-1]) / cp.maximum(w2[::-1], 1e-12))[::-1]
    var = w1[:-1] * w2[1:] * (m1[:-1] - m2[1:]) ** 2
    return float(centers[int(cp.argmax(var))])


@mem.cupy(dtype_policy="native")
def threshold_otsu(image: Any, *, slice_by_slice: bool = True, nbins: int = 256) -> Any:
    """Boolean mask above Otsu's threshold (per plane by default)."""
    x = _check(image, "threshold_otsu")
    if not slice_by_slice:
        return x > _otsu_value(x, nbins)
    return cp.stack([p > _otsu_value(p, nbins) for p in x]) if len(x) else x.astype(bool)


@mem.cupy(dtype_policy="native")
def binary_opening(image: Any, footprint: Any = None, *, slice_by_slice: bool = True) -> Any:
    """Binary opening with a 2-D footprint (default ``disk(1)``), plane by plane."""
    x = _check(image, "binary_opening").astype(bool)
    fp = _fp(footprint)
    if not slice_by_slice:
        return cndi.binary_opening(x, structure=fp[None])
    return cp.stack([cndi.binary_opening(p, structure=fp) for p in x]) if len(x) else x


@mem.cupy(dtype_policy="native")
def binary_closing(image: Any, footprint: Any = None, *, slice_by_slice: bool = True) -> Any:
    """Binary closing with edge padding (objects at the border are not eroded)."""
    x = _check(image, "binary_closing").astype(bool)
    fp = _fp(footprint)
    if not slice_by_slice:
        raise ShapeError("the cupy binary_closing works plane by plane only")
    ph, pw = fp.shape[0] // 2, fp.shape[1] // 2
    out = []
    for p in x:
        padded = cp.pad(p, ((ph, ph), (pw, pw)), mode="edge")
        closed = cndi.binary_closing(padded, structure=fp)
        out.append(closed[ph : ph + p.shape[0], pw : pw + p.shape[1]])
    return cp.stack(out) if out else x


@mem.cupy(dtype_policy="native")
def fill_holes(image: Any, *, slice_by_slice: bool = True) -> Any:
    """Fill background regions not connected to the image border."""
    x = _check(image, "fill_holes").astype(bool)
    if not slice_by_slice:
        return cndi.binary_fill_holes(x)
    return cp.stack([cndi.binary_fill_holes(p) for p in x]) if len(x) else x


@mem.cupy(dtype_policy="native")
def label(image: Any, connectivity: int = 1, *, slice_by_slice: bool = True) -> Any:
    """Connected components (int32), labels restarting at 1 in every plane."""
    x = _check(image, "label")
    if connectivity not in (1, 2, 3):
        raise ValueError(f"label: connectivity must be 1, 2 or 3, got {connectivity!r}")
    if not slice_by_slice:
        structure = cndi.generate_binary_structure(3, connectivity)
        return cndi.label(x, structure=structure)[0].astype(cp.int32)
    structure = cndi.generate_binary_structure(2, min(connectivity, 2))
    out = cp.zeros(x.shape, dtype=cp.int32)
    for z in range(x.shape[0]):
        out[z] = cndi.label(x[z], structure=structure)[0]
    return out


@mem.cupy(dtype_policy="native")
def max_projection(image: Any) -> Any:
    """Maximum over Z as a ``[1, Y, X]`` stack."""
    return _check(image, "max_projection").max(axis=0, keepdims=True)


@mem.cupy(dtype_policy="native")
def mean_projection(image: Any) -> Any:
    """Mean over Z as a ``[1, Y, X]`` float32 stack."""
    x = _check(image, "mean_projection")
    return x.mean(axis=0, keepdims=True, dtype=cp.float64).astype(cp.float32)


@mem.cupy(dtype_policy="native")
def sum_projection(image: Any) -> Any:
    """Sum over Z as a ``[1, Y, X]`` float32 stack (accumulated in float64)."""
    x = _check(image, "sum_projection")
    return x.sum(axis=0, keepdims=True, dtype=cp.float64).astype(cp.float32)


@mem.cupy(dtype_policy="native")
def std_projection(image: Any) -> Any:
    """Population standard deviation over Z as a ``[1, Y, X]`` float32 stack."""
    x = _check(image, "std_projection")
    return x.std(axis=0, keepdims=True, dtype=cp.float64).astype(cp.float32)


@mem.cupy(dtype_policy="native")
def min_projection(image: Any) -> Any:
    """Minimum over Z as a ``[1, Y, X]`` stack."""
    return _check(image, "min_projection").min(axis=0, keepdims=True)


@mem.cupy(dtype_policy="native")
def correct_illumination(image: Any, profile: Any) -> Any:
    """``(image - darkfield) / flatfield`` on every plane (float32)."""
    from hcsflow.functions._hcs import as_profile

    x = _check(image, "correct_illumination")
    p = as_profile(profile)
    if tuple(x.shape[1:]) != p.flatfield.shape:
        raise ShapeError(
            f"image planes {tuple(x.shape[1:])} differ from the flat field {p.flatfield.shape}"
        )
    flat = cp.asarray(p.flatfield)
    dark = cp.asarray(p.darkfield)
    return ((x.astype(cp.float32) - dark) / flat).astype(cp.float32)


@mem.cupy(dtype_policy="native")
def top_hat(image: Any, radius: int = 15, *, shape: str = "disk") -> Any:
    """White top-hat plane by plane, as the numpy version (disk or square element)."""
    import numpy as np

    from hcsflow.functions._hcs import structuring_element

    x = _check(image, "top_hat")
    fp = structuring_element(radius, shape)
    if shape == "square":
        size = (1, fp.shape[0], fp.shape[1])
        opened = cndi.maximum_filter(cndi.minimum_filter(x, size=size), size=size)
    else:
        opened = cndi.grey_opening(x, footprint=cp.asarray(fp[np.newaxis]))
    return (x - opened).astype(x.dtype, copy=False)


@mem.cupy(dtype_policy="native")
def threshold_local(
    image: Any,
    block_size: int = 51,
    *,
    method: str = "gaussian",
    offset: float = 0.0,
    slice_by_slice: bool = True,
) -> Any:
    """Mask above the local Gaussian or box mean minus ``offset`` (``reflect`` borders)."""
    x = _check(image, "threshold_local").astype(cp.float32)
    if block_size < 3 or block_size % 2 == 0:
        raise ValueError(f"threshold_local: block_size must be odd and >= 3, got {block_size}")
    if method == "gaussian":
        s = (block_size - 1) / 6.0
        sig = (0.0, s, s) if slice_by_slice else s
        local = cndi.gaussian_filter(x, sig, mode="reflect")
    elif method == "mean":
        size = (1, block_size, block_size) if slice_by_slice else block_size
        local = cndi.uniform_filter(x, size, mode="reflect")
    else:
        raise ValueError(f"the cupy threshold_local supports 'gaussian' and 'mean', got {method!r}")
    return x > local - offset
