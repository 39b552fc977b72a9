"""The high-content-screening essentials (numpy): illumination correction, background
subtraction, projections, local and adaptive thresholds, watersheds, per-well aggregates.

torch and pyclesperanto versions of the operations those frameworks provide live in
``_torch.py`` and ``_cle.py`` and agree with these within the tolerances stated in
docs/functions.md.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from hcsflow.errors import DataFormatError, NotFoundError, ShapeError
from hcsflow.functions import _numpy as npf
from hcsflow.memory import decorators as mem

__all__ = [
    "IlluminationProfile",
    "estimate_illumination",
    "estimate_plate_illumination",
    "correct_illumination",
    "rolling_ball",
    "top_hat",
    "sum_projection",
    "std_projection",
    "min_projection",
    "threshold_local",
    "threshold_adaptive",
    "watershed_distance",
    "aggregate_wells",
]


# --------------------------------------------------------------------------- illumination


@dataclass(frozen=True, eq=False)
class IlluminationProfile:
    """A flat field (mean 1) and a dark field, both ``[Y, X]`` float32.

    Correction is ``(image - darkfield) / flatfield``.  Save it with :meth:`save` (an
    ``.npz`` file, written atomically) and pass the path, or the object, to
    :func:`correct_illumination`.
    """

    flatfield: np.ndarray
    darkfield: np.ndarray
    n_images: int = 0

    def __post_init__(self) -> None:
        flat = np.asarray(self.flatfield, dtype=np.float32)
        dark = np.asarray(self.darkfield, dtype=np.float32)
        if flat.ndim != 2:
            raise ShapeError(f"a flat field is a 2-D [Y, X] array, got shape {flat.shape}")
        if dark.ndim == 0:
            dark = np.full(flat.shape, float(dark), dtype=np.float32)
        if dark.shape != flat.shape:
            raise ShapeError(f"dark field shape {dark.shape} differs from flat field {flat.shape}")
        if not np.isfinite(flat).all() or flat.min() <= 0:
            raise ValueError("a flat field must be finite and positive everywhere")
        object.__setattr__(self, "flatfield", flat)
        object.__setattr__(self, "darkfield", dark)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the profile to ``path`` (``.npz``) atomically; returns the path."""
        target = Path(path)
        if target.suffix != ".npz":
            target = target.with_suffix(".npz")
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(
                    fh,
                    flatfield=self.flatfield,
                    darkfield=self.darkfield,
                    n_images=np.int64(self.n_images),
                )
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> IlluminationProfile:
        """Read a profile written by :meth:`save`."""
        p = Path(path)
        if not p.is_file():
            raise NotFoundError(f"illumination profile {str(p)!r} does not exist")
        try:
            with np.load(p, allow_pickle=False) as data:
                return cls(
                    flatfield=data["flatfield"],
                    darkfield=data["darkfield"],
                    n_images=int(data["n_images"]),
                )
        except (KeyError, ValueError, OSError) as exc:
            raise DataFormatError(
                f"{str(p)!r} is not an illumination profile: {exc}", path=str(p)
            ) from exc

    def apply(self, image: np.ndarray) -> np.ndarray:
        """``(image - darkfield) / flatfield`` for a ``[Y, X]`` or ``[Z, Y, X]`` array (float32)."""
        arr = np.asarray(image, dtype=np.float32)
        if arr.shape[-2:] != self.flatfield.shape:
            raise ShapeError(
                f"image planes {arr.shape[-2:]} differ from the flat field {self.flatfield.shape}"
            )
        return ((arr - self.darkfield) / self.flatfield).astype(np.float32, copy=False)


def estimate_illumination(
    images: Iterable[Any],
    *,
    smoothing: float | None = None,
    darkfield: float | np.ndarray = 0.0,
) -> IlluminationProfile:
    """Estimate a flat field from many images of one channel (a plate's sites).

    Each image (minus ``darkfield``, e.g. the camera offset or a dark image) is divided
    by its own median, so bright and dim wells weigh alike; the per-pixel median across
    images keeps the background and discards objects, which sit at different places in
    different images; a Gaussian of ``smoothing`` pixels (default: 1/16 of the image
    size) removes the remaining structure; the result is scaled to mean 1.  This is the
    "median of many images" estimator (simpler than BaSiC's low-rank and sparse
    decomposition, and like it it needs tens of images with objects at varied places).
    """
    planes = []
    dark = np.asarray(darkfield, dtype=np.float32)
    for img in images:
        arr = np.asarray(img, dtype=np.float32)
        if arr.ndim == 3:
            planes.extend(list(arr))
        elif arr.ndim == 2:
            planes.append(arr)
        else:
            raise ShapeError(f"estimate_illumination takes 2-D images, got shape {arr.shape}")
    if not planes:
        raise ValueError("estimate_illumination needs at least one image")
    shape = planes[0].shape
    normed = np.empty((len(planes), *shape), dtype=np.float32)
    for i, p in enumerate(planes):
        if p.shape != shape:
            raise ShapeError(f"image {i} has shape {p.shape}, the first {shape}")
        q = p - dark
        med = float(np.median(q))
        if not med > 0:
            raise ValueError(
                f"image {i} has a non-positive median after subtracting the dark field; "
                "check the darkfield value"
            )
        normed[i] = q / med
    flat = np.median(normed, axis=0)
    sigma = max(shape) / 16.0 if smoothing is None else float(smoothing)
    if sigma > 0:
        flat = ndi.gaussian_filter(flat, sigma, mode="nearest")
    flat = np.maximum(flat, 1e-6 * max(float(flat.max()), 1e-30))
    flat /= flat.mean()
    dark_field = np.broadcast_to(dark, shape) if dark.ndim else np.full(shape, float(dark))
    return IlluminationProfile(flat.astype(np.float32), dark_field, n_images=len(planes))


def estimate_plate_illumination(
    plate: str | os.PathLike[str],
    *,
    channels: Sequence[int] | None = None,
    max_images: int = 200,
    seed: int = 0,
    smoothing: float | None = None,
    darkfield: float | np.ndarray = 0.0,
    layout: Any = None,
) -> dict[int, IlluminationProfile]:
    """One :class:`IlluminationProfile` per channel (1-based, as in file names) of a plate.

    The first pass of a two-pass correction: run it on the plate directory, save the
    profiles, then name them in a ``correct_illumination`` step (per channel with
    ``group_by="channel"``).  Up to ``max_images`` images per channel are sampled at
    random (reproducibly, with ``seed``), all z-planes and timepoints included.
    """
    from hcsflow.pipeline import read_plate
    from hcsflow.storage import Backend, FileManager

    index = read_plate(str(Path(plate).absolute()), layout=layout)
    fm = FileManager()
    rng = np.random.default_rng(seed)
    wanted = [c + 1 for c in index.channels] if channels is None else list(channels)
    out: dict[int, IlluminationProfile] = {}
    for channel in wanted:
        paths = [
            img.path
            for images in index.wells.values()
            for img in images
            if img.coords.channel + 1 == channel
        ]
        if not paths:
            raise ValueError(f"the plate has no images of channel {channel}")
        if len(paths) > max_images:
            paths = [paths[i] for i in sorted(rng.choice(len(paths), max_images, replace=False))]
        arrays = fm.load_batch(paths, Backend.DISK.value)
        out[channel] = estimate_illumination(
            (np.squeeze(np.asarray(a)) for a in arrays), smoothing=smoothing, darkfield=darkfield
        )
    return out


def as_profile(profile: Any) -> IlluminationProfile:
    """An :class:`IlluminationProfile` from a profile, a path to one, or a flat-field array."""
    if isinstance(profile, IlluminationProfile):
        return profile
    if isinstance(profile, (str, os.PathLike)):
        return IlluminationProfile.load(profile)
    arr = np.asarray(profile, dtype=np.float32)
    if arr.ndim == 2:
        return IlluminationProfile(arr / arr.mean(), np.zeros_like(arr))
    raise TypeError(
        "profile must be an IlluminationProfile, the path of a saved one, or a 2-D flat "
        f"field, got {type(profile).__name__}"
    )


@mem.numpy(dtype_policy="native")
def correct_illumination(image: Any, profile: Any) -> np.ndarray:
    """Flat-field correction: ``(image - darkfield) / flatfield`` on every plane (float32).

    ``profile`` is an :class:`IlluminationProfile`, the path of one saved with
    :meth:`IlluminationProfile.save`, or a 2-D flat-field array (scaled to mean 1, no
    dark field).
    """
    arr = npf.check_stack(image, "correct_illumination")
    return as_profile(profile).apply(arr)


# --------------------------------------------------------------------------- background


def _shrink_factor(radius: float) -> int:
    # as ImageJ's "Subtract Background": shrink before rolling large balls
    if radius <= 10:
        return 1
    if radius <= 30:
        return 2
    if radius <= 100:
        return 4
    return 8


def rolling_ball_background(plane: np.ndarray, radius: float) -> np.ndarray:
    """Rolling-ball background of a 2-D plane (float32); large radii on a shrunken image.

    For ``radius > 10`` the plane is shrunk by 2, 4 or 8 (block minimum, as ImageJ does),
    the ball of ``radius / shrink`` rolled there, and the background interpolated back.
    """
    from skimage.restoration import rolling_ball as _rb

    from hcsflow.functions._segment import _upsample

    arr = np.asarray(plane, dtype=np.float32)
    f = _shrink_factor(radius)
    if f == 1 or min(arr.shape) < 4 * f:
        return np.asarray(_rb(arr, radius=radius), dtype=np.float32)
    pads = [(0, (-n) % f) for n in arr.shape]
    padded = np.pad(arr, pads, mode="edge")
    small = padded.reshape(padded.shape[0] // f, f, padded.shape[1] // f, f).min(axis=(1, 3))
    bg_small = np.asarray(_rb(small, radius=radius / f), dtype=np.float32)
    bg = _upsample(bg_small, (f, f), padded.shape)[: arr.shape[0], : arr.shape[1]]
    return np.minimum(bg, arr)


@mem.numpy(dtype_policy="native")
def rolling_ball(image: Any, radius: float = 50.0, *, slice_by_slice: bool = True) -> np.ndarray:
    """Subtract a rolling-ball background (ImageJ's "Subtract Background"); float32, >= 0.

    ``radius`` (pixels) should exceed the largest object's radius.  Runs plane by plane;
    ``slice_by_slice=False`` rolls a 3-D ball (no shrinking, slow for large radii).
    """
    arr = npf.check_stack(image, "rolling_ball").astype(np.float32, copy=False)
    if radius <= 0:
        raise ValueError(f"rolling_ball: radius must be positive, got {radius!r}")
    if not slice_by_slice:
        from skimage.restoration import rolling_ball as _rb

        return np.maximum(arr - np.asarray(_rb(arr, radius=radius), dtype=np.float32), 0.0)
    out = np.empty_like(arr)
    for z in range(arr.shape[0]):
        out[z] = arr[z] - rolling_ball_background(arr[z], radius)
    return np.maximum(out, 0.0)


def structuring_element(radius: int, shape: str) -> np.ndarray:
    """A 2-D ``"disk"`` or ``"square"`` footprint of the given radius (bool)."""
    if int(radius) != radius or radius < 0:
        raise ValueError(f"radius must be a non-negative integer, got {radius!r}")
    if shape == "disk":
        return npf.disk(int(radius), dtype=bool)
    if shape == "square":
        return np.ones((2 * int(radius) + 1,) * 2, dtype=bool)
    raise ValueError(f"shape must be 'disk' or 'square', got {shape!r}")


@mem.numpy(dtype_policy="native")
def top_hat(image: Any, radius: int = 15, *, shape: str = "disk") -> np.ndarray:
    """White top-hat: the image minus its grey opening (removes background wider than
    objects of ``radius``), plane by plane; dtype preserved.

    ``shape`` is ``"disk"`` or ``"square"`` (side ``2 * radius + 1``).
    """
    arr = npf.check_stack(image, "top_hat")
    fp = structuring_element(radius, shape)
    if shape == "square":
        size = (1, fp.shape[0], fp.shape[1])
        opened = ndi.maximum_filter(ndi.minimum_filter(arr, size=size), size=size)
    else:
        opened = ndi.grey_opening(arr, footprint=fp[None])
    return (arr - opened).astype(arr.dtype, copy=False)


# --------------------------------------------------------------------------- projections


@mem.numpy(dtype_policy="native")
def sum_projection(image: Any) -> np.ndarray:
    """Sum over Z, as a ``[1, Y, X]`` float32 stack (accumulated in float64)."""
    arr = npf.check_stack(image, "sum_projection")
    return arr.sum(axis=0, keepdims=True, dtype=np.float64).astype(np.float32)


@mem.numpy(dtype_policy="native")
def std_projection(image: Any) -> np.ndarray:
    """Standard deviation over Z (population, ``ddof=0``), as a ``[1, Y, X]`` float32 stack."""
    arr = npf.check_stack(image, "std_projection")
    return arr.std(axis=0, keepdims=True, dtype=np.float64).astype(np.float32)


@mem.numpy(dtype_policy="native")
def min_projection(image: Any) -> np.ndarray:
    """Minimum over Z, as a ``[1, Y, X]`` stack (dtype preserved)."""
    arr = npf.check_stack(image, "min_projection")
    return arr.min(axis=0, keepdims=True)


# --------------------------------------------------------------------------- thresholds


def _local_mean(plane: np.ndarray, block_size: int, method: str) -> np.ndarray:
    if method == "gaussian":
        return ndi.gaussian_filter(plane, (block_size - 1) / 6.0, mode="reflect")
    if method == "mean":
        return ndi.uniform_filter(plane, block_size, mode="reflect")
    if method == "median":
        return ndi.median_filter(plane, block_size, mode="reflect")
    raise ValueError(f"method must be 'gaussian', 'mean' or 'median', got {method!r}")


@mem.numpy(dtype_policy="native")
def threshold_local(
    image: Any,
    block_size: int = 51,
    *,
    method: str = "gaussian",
    offset: float = 0.0,
    slice_by_slice: bool = True,
) -> np.ndarray:
    """Mask of pixels brighter than their neighbourhood's weighted mean minus ``offset``.

    As ``skimage.filters.threshold_local``: ``method`` ``"gaussian"`` (sigma
    ``(block_size - 1) / 6``), ``"mean"`` (a ``block_size`` box) or ``"median"``;
    ``block_size`` is odd and should span a few objects.  Returns a bool stack.
    """
    arr = npf.check_stack(image, "threshold_local").astype(np.float32, copy=False)
    if block_size < 3 or block_size % 2 == 0:
        raise ValueError(f"threshold_local: block_size must be odd and >= 3, got {block_size}")
    if not slice_by_slice:
        if method == "gaussian":
            local = ndi.gaussian_filter(arr, (block_size - 1) / 6.0, mode="reflect")
        elif method == "mean":
            local = ndi.uniform_filter(arr, block_size, mode="reflect")
        else:
            local = _local_mean(arr, block_size, method)
        return arr > local - offset
    out = np.empty(arr.shape, dtype=bool)
    for z in range(arr.shape[0]):
        out[z] = arr[z] > _local_mean(arr[z], block_size, method) - offset
    return out


_GLOBAL_METHODS = ("otsu", "li", "triangle", "yen", "isodata", "mean")


def _global_threshold(values: np.ndarray, method: str) -> float:
    from skimage import filters

    if method not in _GLOBAL_METHODS:
        raise ValueError(f"method must be one of {_GLOBAL_METHODS}, got {method!r}")
    flat = values.ravel()
    if flat.size == 0 or flat.min() == flat.max():
        return float(flat.min()) if flat.size else 0.0
    return float(getattr(filters, f"threshold_{method}")(flat))


def adaptive_threshold_map(
    plane: np.ndarray, tile: int, method: str, bounds: tuple[float, float]
) -> np.ndarray:
    """Per-tile thresholds of a 2-D plane, bounded around the global one, interpolated."""
    from hcsflow.functions._segment import _upsample

    arr = np.asarray(plane, dtype=np.float32)
    glob = _global_threshold(arr, method)
    ny, nx = arr.shape
    ty, tx = max(1, -(-ny // tile)), max(1, -(-nx // tile))
    grid = np.empty((ty, tx), dtype=np.float32)
    for i in range(ty):
        for j in range(tx):
            block = arr[i * tile : (i + 1) * tile, j * tile : (j + 1) * tile]
            grid[i, j] = _global_threshold(block, method)
    lo, hi = sorted((bounds[0] * glob, bounds[1] * glob))
    grid = np.clip(grid, lo, hi)
    if grid.size == 1:
        return np.full(arr.shape, grid[0, 0], dtype=np.float32)
    grid = ndi.gaussian_filter(grid, 0.5, mode="nearest")
    return _upsample(grid, (tile, tile), (ty * tile, tx * tile))[:ny, :nx]


@mem.numpy(dtype_policy="native")
def threshold_adaptive(
    image: Any,
    tile_size: int = 128,
    *,
    method: str = "otsu",
    bounds: tuple[float, float] = (0.7, 1.5),
    correction: float = 1.0,
) -> np.ndarray:
    """Mask above an adaptive threshold: one threshold per tile, kept within ``bounds``
    times the plane's global threshold, smoothed and interpolated across the plane.

    This is CellProfiler's "adaptive" strategy: it follows slow changes of background and
    staining while a tile without objects cannot drop to a noise threshold.  ``method``
    is a global method of scikit-image (``otsu``, ``li``, ``triangle``, ``yen``,
    ``isodata``, ``mean``) applied per tile; ``correction`` multiplies the thresholds.
    Works plane by plane; returns a bool stack.
    """
    arr = npf.check_stack(image, "threshold_adaptive").astype(np.float32, copy=False)
    if tile_size < 8:
        raise ValueError(f"threshold_adaptive: tile_size must be >= 8, got {tile_size}")
    out = np.empty(arr.shape, dtype=bool)
    for z in range(arr.shape[0]):
        t = adaptive_threshold_map(arr[z], int(tile_size), method, bounds)
        out[z] = arr[z] > correction * t
    return out


# --------------------------------------------------------------------------- watersheds


def split_touching(lab_or_mask: np.ndarray, min_distance: float) -> np.ndarray:
    """Distance-transform watershed of one plane: touching objects separated (int32).

    Seeds are maxima of the distance to the background at least ``min_distance`` pixels
    apart (``skimage.feature.peak_local_max`` within each object); an object without
    such a maximum keeps one seed at its first pixel, so no object is lost.  Accepts a
    mask or a label image (nonzero is foreground).
    """
    from skimage.feature import peak_local_max
    from skimage.measure import label as _label
    from skimage.segmentation import watershed

    arr = np.asarray(lab_or_mask)
    lab = _label(arr > 0) if arr.dtype == bool else arr.astype(np.int64, copy=False)
    fg = lab > 0
    if not fg.any():
        return np.zeros(arr.shape, dtype=np.int32)
    distance = ndi.distance_transform_edt(fg)
    peaks = peak_local_max(
        distance, min_distance=max(1, int(min_distance)), labels=lab, exclude_border=False
    )
    markers = np.zeros(lab.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    seeded = np.zeros(int(lab.max()) + 1, dtype=bool)
    seeded[lab[markers > 0]] = True
    next_id = len(peaks) + 1
    for obj in np.flatnonzero(~seeded[1:]) + 1:
        first = np.argwhere(lab == obj)[0]
        markers[tuple(first)] = next_id
        next_id += 1
    return np.asarray(watershed(-distance, markers, mask=fg), dtype=np.int32)


@mem.numpy(dtype_policy="native")
def watershed_distance(
    image: Any, min_distance: float = 5.0, *, slice_by_slice: bool = True
) -> np.ndarray:
    """Split touching objects of a mask (or label image: nonzero is foreground) with a
    distance-transform watershed; int32 labels, restarting at 1 in every plane.

    Use ``min_distance`` of about the smallest object radius.
    """
    arr = npf.check_stack(image, "watershed_distance")
    if not slice_by_slice:
        return split_touching(arr if arr.dtype != bool else _label3d(arr), min_distance)
    out = np.zeros(arr.shape, dtype=np.int32)
    for z in range(arr.shape[0]):
        out[z] = split_touching(arr[z], min_distance)
    return out


def _label3d(mask: np.ndarray) -> np.ndarray:
    lab, _ = ndi.label(mask)
    return lab


def grow_seeds(
    plane: np.ndarray, seeds: np.ndarray, threshold: str | float, compactness: float
) -> np.ndarray:
    """Seeded watershed of one plane: each seed grows over the foreground of ``plane``."""
    from skimage.segmentation import watershed

    img = np.asarray(plane, dtype=np.float32)
    lab = np.asarray(seeds).astype(np.int32, copy=False)
    if isinstance(threshold, str):
        value = _global_threshold(img, threshold)
    elif isinstance(threshold, (int, float)) and not isinstance(threshold, bool):
        value = float(threshold)
    else:
        raise ValueError(f"threshold must be a method name or a number, got {threshold!r}")
    fg = (img > value) | (lab > 0)
    smooth = ndi.gaussian_filter(img, 1.0)
    return np.asarray(
        watershed(-smooth, lab, mask=fg, compactness=float(compactness)), dtype=np.int32
    )


# --------------------------------------------------------------------------- aggregates

_ID_COLUMNS = ("well", "site", "channel", "z", "t", "slice_index", "label")


def aggregate_wells(
    table: Any,
    *,
    by: Sequence[str] = ("well", "channel"),
    measures: Sequence[str] | None = None,
    stats: Sequence[str] = ("mean", "median", "std"),
) -> Any:
    """Per-well aggregates of a per-object table (``object_measurements``).

    One row per group of ``by`` columns that the table has (default well and channel),
    with ``object_count`` and, for every numeric measure (default: all numeric columns
    except identifiers), the requested ``stats`` as columns ``<measure>_<stat>``.
    """
    import pandas as pd

    if not isinstance(table, pd.DataFrame):
        table = pd.DataFrame(table)
    keys = [c for c in by if c in table.columns]
    if not keys:
        raise ValueError(f"aggregate_wells: the table has none of the columns {list(by)}")
    if measures is None:
        measures = [
            c
            for c in table.columns
            if c not in _ID_COLUMNS and c not in keys and pd.api.types.is_numeric_dtype(table[c])
        ]
    missing = [m for m in measures if m not in table.columns]
    if missing:
        raise ValueError(f"aggregate_wells: no columns {missing} in the table")
    grouped = table.groupby(keys, sort=True, dropna=False)
    out = grouped.size().rename("object_count").to_frame()
    if measures:
        agg = grouped[list(measures)].agg(list(stats))
        agg.columns = [f"{m}_{s}" for m, s in agg.columns]
        out = out.join(agg)
    return out.reset_index()
