"""numpy implementations of the built-in library (scipy.ndimage and scikit-image).

Every function takes a ``[Z, Y, X]`` stack and returns a ``[Z, Y, X]`` stack.  Operations
that are two-dimensional by nature run plane by plane (``slice_by_slice=True``, the
default), so sites or channels stacked along Z never bleed into each other; pass
``slice_by_slice=False`` for true 3-D processing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi

from hcsflow.errors import ShapeError
from hcsflow.memory import decorators as mem

__all__ = [
    "disk",
    "gaussian_filter",
    "median_filter",
    "subtract_background",
    "normalize_percentile",
    "threshold_otsu",
    "otsu_threshold_value",
    "binary_opening",
    "binary_closing",
    "fill_holes",
    "remove_small_objects",
    "label",
    "max_projection",
    "mean_projection",
    "astype",
]


def disk(radius: int, dtype: Any = np.uint8) -> np.ndarray:
    """A flat 2-D disk footprint of the given radius (like ``skimage.morphology.disk``)."""
    if int(radius) != radius or radius < 0:
        raise ValueError(f"disk radius must be a non-negative integer, got {radius!r}")
    r = int(radius)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (yy * yy + xx * xx <= r * r).astype(dtype)


def check_stack(image: Any, func: str) -> np.ndarray:
    """Return ``image`` as a numpy array, raising :class:`ShapeError` unless it is 3-D."""
    arr = np.asarray(image)
    if arr.ndim != 3:
        raise ShapeError(
            f"{func} expects a 3-D [Z, Y, X] stack, got shape {arr.shape} ({arr.ndim}-D)"
        )
    return arr


def _float(arr: np.ndarray) -> np.ndarray:
    return arr if arr.dtype in (np.float32, np.float64) else arr.astype(np.float32)


def _footprint(footprint: Any, slice_by_slice: bool, func: str) -> np.ndarray:
    fp = disk(1) if footprint is None else np.asarray(footprint)
    fp = fp.astype(bool)
    if slice_by_slice:
        if fp.ndim != 2:
            raise ShapeError(f"{func}: a plane-by-plane footprint must be 2-D, got {fp.shape}")
        return fp
    if fp.ndim == 2:
        return fp[np.newaxis]
    if fp.ndim != 3:
        raise ShapeError(f"{func}: a 3-D footprint must be 3-D, got {fp.shape}")
    return fp


# Undecorated array-level kernels shared by the decorated stack functions above/below and
# by count_cells, which calls them once per plane: going through the decorated functions
# there would pay memory-type detection, conversion and stacking on every plane.


def open_plane(mask: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Binary opening of a boolean array with a boolean footprint of the same rank."""
    return ndi.binary_opening(mask, structure=footprint)


def fill_plane(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of a boolean array (regions not connected to the border)."""
    return ndi.binary_fill_holes(mask)


def remove_small_plane(x: np.ndarray, min_size: int, connectivity: int) -> np.ndarray:
    """Drop objects smaller than ``min_size`` from a boolean mask or a label array."""
    if x.dtype == bool:
        lab, _ = ndi.label(x, structure=ndi.generate_binary_structure(x.ndim, connectivity))
    else:
        lab = x.astype(np.int64, copy=False)
    if lab.size == 0 or lab.max() == 0:
        return x.copy()
    sizes = np.bincount(lab.ravel())
    keep = sizes >= min_size
    keep[0] = False
    kept = keep[lab]
    return kept if x.dtype == bool else np.where(kept, x, 0).astype(x.dtype)


def check_connectivity(connectivity: int, func: str) -> None:
    """Raise ``ValueError`` unless ``connectivity`` is 1, 2 or 3."""
    if connectivity not in (1, 2, 3):
        raise ValueError(f"{func}: connectivity must be 1, 2 or 3, got {connectivity!r}")


@mem.numpy(dtype_policy="native")
def gaussian_filter(
    image: Any, sigma: float = 1.0, *, slice_by_slice: bool = True, truncate: float = 4.0
) -> np.ndarray:
    """Gaussian blur (float32 out; ``mode='reflect'`` borders); sigma in pixels."""
    arr = _float(check_stack(image, "gaussian_filter"))
    sig = (0.0, sigma, sigma) if slice_by_slice else sigma
    return ndi.gaussian_filter(arr, sigma=sig, truncate=truncate).astype(np.float32, copy=False)


@mem.numpy(dtype_policy="native")
def median_filter(image: Any, size: int = 3, *, slice_by_slice: bool = True) -> np.ndarray:
    """Median filter over a ``size`` x ``size`` window (dtype preserved)."""
    arr = check_stack(image, "median_filter")
    window = (1, size, size) if slice_by_slice else (size, size, size)
    return ndi.median_filter(arr, size=window, mode="reflect")


@mem.numpy(dtype_policy="native")
def subtract_background(
    image: Any, sigma: float = 25.0, *, slice_by_slice: bool = True
) -> np.ndarray:
    """Remove a smooth background: image minus its wide Gaussian blur, clipped at 0 (float32).

    ``sigma`` should be several times the object radius, so that objects do not
    contribute to the estimated background.
    """
    arr = _float(check_stack(image, "subtract_background"))
    sig = (0.0, sigma, sigma) if slice_by_slice else sigma
    background = ndi.gaussian_filter(arr, sigma=sig, mode="nearest")
    # the result takes the background's place: one stack-sized array, not two
    out = np.subtract(arr, background, out=background)
    np.maximum(out, 0, out=out)
    return out.astype(np.float32, copy=False)


@mem.numpy(dtype_policy="native")
def normalize_percentile(
    image: Any, low: float = 1.0, high: float = 99.8, *, slice_by_slice: bool = True
) -> np.ndarray:
    """Rescale so the ``low``/``high`` percentiles map to 0/1, clipped to [0, 1] (float32).

    A plane whose percentiles coincide (a constant plane) maps to zeros.
    """
    if not 0 <= low < high <= 100:
        raise ValueError(f"need 0 <= low < high <= 100, got low={low}, high={high}")
    arr = _float(check_stack(image, "normalize_percentile"))
    if slice_by_slice:
        lo, hi = np.percentile(arr, [low, high], axis=(1, 2), keepdims=True)
    else:
        lo, hi = np.percentile(arr, [low, high], keepdims=True)
    span = hi - lo
    safe = np.where(span > 0, span, 1.0)
    out = np.empty(arr.shape, np.float32)
    # plane by plane, so that the float64 temporaries are plane-sized (the same
    # arithmetic over the whole stack at once peaked at five float32 stacks)
    for z in range(arr.shape[0]):
        i = z if slice_by_slice else 0
        plane = np.where(span[i] > 0, (arr[z] - lo[i]) / safe[i], 0.0)
        np.clip(plane, 0.0, 1.0, out=plane)
        out[z] = plane
    return out


def otsu_threshold_value(values: np.ndarray, nbins: int = 256) -> float:
    """Otsu's threshold of ``values`` (as ``skimage.filters.threshold_otsu``)."""
    from skimage.filters import threshold_otsu as _otsu

    flat = np.asarray(values).ravel()
    if flat.size and flat.min() == flat.max():
        return float(flat.min())
    return float(_otsu(flat, nbins=nbins))


@mem.numpy(dtype_policy="native")
def threshold_otsu(image: Any, *, slice_by_slice: bool = True, nbins: int = 256) -> np.ndarray:
    """Boolean mask of pixels above Otsu's threshold (one threshold per plane by default).

    A constant plane gives an all-False mask.
    """
    arr = check_stack(image, "threshold_otsu")
    if not slice_by_slice:
        return arr > otsu_threshold_value(arr, nbins)
    out = np.empty(arr.shape, dtype=bool)
    for z in range(arr.shape[0]):
        out[z] = arr[z] > otsu_threshold_value(arr[z], nbins)
    return out


@mem.numpy(dtype_policy="native")
def binary_opening(image: Any, footprint: Any = None, *, slice_by_slice: bool = True) -> np.ndarray:
    """Binary opening (erosion then dilation) with ``footprint`` (default ``disk(1)``)."""
    arr = check_stack(image, "binary_opening").astype(bool, copy=False)
    fp = _footprint(footprint, slice_by_slice, "binary_opening")
    if slice_by_slice:
        return np.stack([open_plane(p, fp) for p in arr]) if len(arr) else arr
    return open_plane(arr, fp)


@mem.numpy(dtype_policy="native")
def binary_closing(image: Any, footprint: Any = None, *, slice_by_slice: bool = True) -> np.ndarray:
    """Binary closing (dilation then erosion) with ``footprint`` (default ``disk(1)``).

    The image is padded by the footprint radius first, so objects touching the border are
    not eroded by the implicit background outside the image.
    """
    arr = check_stack(image, "binary_closing").astype(bool, copy=False)
    fp = _footprint(footprint, slice_by_slice, "binary_closing")
    pads = [(s // 2, s // 2) for s in fp.shape]

    def close(x: np.ndarray) -> np.ndarray:
        padded = np.pad(x, pads, mode="edge")
        closed = ndi.binary_closing(padded, structure=fp)
        return closed[tuple(slice(p, p + n) for (p, _), n in zip(pads, x.shape, strict=True))]

    if slice_by_slice:
        return np.stack([close(p) for p in arr]) if len(arr) else arr
    return close(arr)


@mem.numpy(dtype_policy="native")
def fill_holes(image: Any, *, slice_by_slice: bool = True) -> np.ndarray:
    """Fill background regions not connected to the image border."""
    arr = check_stack(image, "fill_holes").astype(bool, copy=False)
    if slice_by_slice:
        return np.stack([fill_plane(p) for p in arr]) if len(arr) else arr
    return fill_plane(arr)


@mem.numpy(dtype_policy="native")
def remove_small_objects(
    image: Any, min_size: int = 64, *, connectivity: int = 1, slice_by_slice: bool = True
) -> np.ndarray:
    """Remove connected objects smaller than ``min_size`` pixels.

    A boolean mask stays a boolean mask; a label image keeps its labels, with small
    labels set to 0.
    """
    arr = check_stack(image, "remove_small_objects")
    if slice_by_slice:
        return (
            np.stack([remove_small_plane(p, min_size, connectivity) for p in arr])
            if len(arr)
            else arr.copy()
        )
    return remove_small_plane(arr, min_size, connectivity)


@mem.numpy(dtype_policy="native")
def label(image: Any, connectivity: int = 1, *, slice_by_slice: bool = True) -> np.ndarray:
    """Label connected foreground components (int32; labels restart at 1 in every plane).

    ``connectivity`` 1 uses edge neighbours, 2 adds diagonals (as scikit-image).
    """
    from skimage.measure import label as _label

    arr = check_stack(image, "label")
    check_connectivity(connectivity, "label")
    if slice_by_slice:
        conn = min(connectivity, 2)
        out = np.zeros(arr.shape, dtype=np.int32)
        for z in range(arr.shape[0]):
            out[z] = _label(arr[z], connectivity=conn)
        return out
    return _label(arr, connectivity=connectivity).astype(np.int32)


@mem.numpy(dtype_policy="native")
def max_projection(image: Any) -> np.ndarray:
    """Maximum over Z, returned as a ``[1, Y, X]`` stack (dtype preserved)."""
    arr = check_stack(image, "max_projection")
    return arr.max(axis=0, keepdims=True)


@mem.numpy(dtype_policy="native")
def mean_projection(image: Any) -> np.ndarray:
    """Mean over Z, returned as a ``[1, Y, X]`` float32 stack."""
    arr = check_stack(image, "mean_projection")
    return arr.mean(axis=0, keepdims=True, dtype=np.float64).astype(np.float32)


@mem.numpy(dtype_policy="native")
def astype(image: Any, dtype: str = "float32", *, clip: bool = True) -> np.ndarray:
    """The stack in another dtype (e.g. float64 results of scikit-image as float32 before a
    pyclesperanto step, which holds no float64).

    Converting to an integer dtype rounds, and with ``clip=True`` (the default) clips to
    the dtype's range instead of wrapping around.
    """
    arr = check_stack(image, "astype")
    target = np.dtype(dtype)
    if target.kind in "iu" and arr.dtype.kind == "f":
        values = np.rint(arr)
        if clip:
            info = np.iinfo(target)
            np.clip(values, info.min, info.max, out=values)  # in place: one temporary
        return values.astype(target)
    if target.kind in "iu" and clip and arr.dtype.kind in "iu":
        info = np.iinfo(target)
        return np.clip(arr, info.min, info.max).astype(target)
    return arr.astype(target)
