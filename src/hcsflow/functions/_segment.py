"""``segment_nuclei``: nucleus segmentation that needs no tuning on typical fluorescence images.

The algorithm (each step is explained in ``docs/functions.md``):

1. light Gaussian smoothing against shot noise;
2. a smooth background (autofluorescence times illumination) estimated by masked,
   iterated smoothing on a coarse grid, so nuclei and clusters do not raise it; the
   noise level is the robust spread (MAD) of the background pixels;
3. the nucleus diameter, when not given, measured on the image itself: each bright
   component is cut at half its own peak, and the median size of the compact ones (a
   single nucleus, not a cluster) is taken;
4. detection at a signal-to-noise threshold, then each pixel kept only if it reaches
   half of the local peak (a local, per-nucleus threshold: dim nuclei get outlines as
   accurate as bright ones, whatever the illumination);
5. touching nuclei split by a seeded watershed: seeds are maxima of the distance to the
   outline (shape) plus a scale-normalised Laplacian-of-Gaussian response of the
   log-intensity image at the nucleus scale (intensity: bright and dim neighbours, and the
   dips between them);
6. objects far smaller than a nucleus (debris) removed; labels numbered 1..n.

Works on a 2-D plane or, with an ``anisotropy`` (z step / pixel size), on a 3-D volume.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi

from hcsflow.functions import _numpy as npf
from hcsflow.memory import decorators as mem

__all__ = ["segment_nuclei", "estimate_diameter", "segment_nuclei_array"]

# the fraction of the local peak at which an outline is drawn (half maximum)
_OUTLINE_LEVEL = 0.5


# --------------------------------------------------------------------------- background


def _block_mean(x: np.ndarray, q: tuple[int, ...]) -> np.ndarray:
    """Mean over ``q``-sized blocks (edge-padded to a whole number of blocks)."""
    pads = [(0, (-n) % f) for n, f in zip(x.shape, q, strict=True)]
    if any(p for _, p in pads):
        x = np.pad(x, pads, mode="edge")
    shape: list[int] = []
    for n, f in zip(x.shape, q, strict=True):
        shape += [n // f, f]
    return x.reshape(shape).mean(axis=tuple(range(1, 2 * x.ndim, 2)))


def _upsample(coarse: np.ndarray, q: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    """Linear interpolation of block centres back to ``shape`` (separable, any rank)."""
    out = coarse
    for axis, (f, n) in enumerate(zip(q, shape, strict=True)):
        if f == 1:
            continue
        centres = (np.arange(out.shape[axis]) + 0.5) * f - 0.5
        pos = np.arange(n, dtype=np.float64)
        i = np.clip(np.searchsorted(centres, pos) - 1, 0, max(out.shape[axis] - 2, 0))
        if out.shape[axis] == 1:
            out = np.repeat(out, n, axis=axis)
            continue
        t = np.clip((pos - centres[i]) / f, 0.0, 1.0)
        a = np.take(out, i, axis=axis)
        b = np.take(out, i + 1, axis=axis)
        tshape = [1] * out.ndim
        tshape[axis] = n
        t = t.reshape(tshape).astype(np.float32)
        # a * (1 - t) + b * t, in the buffers np.take made
        a *= 1 - t
        b *= t
        a += b
        out = a
    return out.astype(np.float32, copy=False)


def _smooth_masked(
    x: np.ndarray, weight: np.ndarray, sigma: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted Gaussian smoothing of ``x`` on a coarse grid: ``(smoothed, support)``."""
    q = tuple(max(1, int(s / 3)) for s in sigma)
    xc = _block_mean(x * weight, q)
    wc = _block_mean(weight, q)
    sc = tuple(s / f for s, f in zip(sigma, q, strict=True))
    num = ndi.gaussian_filter(xc, sc, mode="nearest")
    den = ndi.gaussian_filter(wc, sc, mode="nearest")
    return _upsample(num, q, x.shape), _upsample(den, q, x.shape)


def _darkest_peak(hist: np.ndarray) -> int:
    """Index of the darkest histogram peak at least a tenth as high as the highest.

    The background is the darkest population; in a confluent field the nuclei may
    outnumber background pixels, so the highest peak is not always the background.
    """
    top = hist.max()
    inner = (hist[1:-1] >= hist[:-2]) & (hist[1:-1] >= hist[2:]) & (hist[1:-1] >= 0.1 * top)
    candidates = np.flatnonzero(inner) + 1
    if hist[0] >= hist[1] and hist[0] >= 0.1 * top:
        return 0
    return int(candidates[0]) if candidates.size else int(np.argmax(hist))


def _mode_and_noise(resid: np.ndarray) -> tuple[float, float]:
    """Mode of the background peak of ``resid`` and its standard deviation.

    The spread is read on the lower side of the mode only, which bright objects do not
    reach (for a normal peak the median distance below the mode is 0.674 sigma).
    """
    v = resid.ravel()
    if v.size > 262144:
        v = v[:: v.size // 262144]
    lo, hi = (float(t) for t in np.percentile(v, [0.5, 99.5]))
    if not hi > lo:
        return lo, 0.0
    # zoom in on the peak until a bin is much narrower than the peak
    for _ in range(4):
        hist, edges = np.histogram(v, bins=256, range=(lo, hi))
        hist = ndi.gaussian_filter1d(hist.astype(np.float64), 2.0)
        k = _darkest_peak(hist)
        width = (hi - lo) / 256
        mode = lo + (k + 0.5) * width
        half = hist[k] / 2
        left = k - int(np.argmax(hist[k::-1] < half)) if (hist[: k + 1] < half).any() else 0
        if k - left >= 8:
            break
        lo, hi = mode - 16 * width, mode + 16 * width
    below = mode - v[v < mode]
    if below.size == 0:
        return mode, 0.0
    return mode, 1.4826 * float(np.median(below))


def background_and_noise(
    x: np.ndarray, sigma: tuple[float, ...], iterations: int = 3
) -> tuple[np.ndarray, float]:
    """A smooth background under bright objects, and the noise level of the background.

    Starts from the smoothing of every pixel, then re-smooths only the pixels within two
    noise levels of the background peak, ``iterations`` times.
    """
    weight = np.ones(x.shape, dtype=np.float32)
    num, den = _smooth_masked(x, weight, sigma)
    del weight  # plane-sized intermediates go as soon as they are used (_segment_at)
    bg = num / np.maximum(den, 1e-6)
    del num, den
    noise = 0.0
    for _ in range(iterations):
        mode, noise = _mode_and_noise(x - bg)
        weight = (x - bg < mode + 2.0 * noise).astype(np.float32)
        num, den = _smooth_masked(x, weight, sigma)
        del weight
        bg = np.where(den > 1e-3, num / np.maximum(den, 1e-6), bg)
        del num, den
    mode, noise = _mode_and_noise(x - bg)
    return (bg + mode).astype(np.float32, copy=False), noise


# --------------------------------------------------------------------------- diameter


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    if mask.ndim == 3:
        return np.stack([ndi.binary_fill_holes(p) for p in mask])
    return ndi.binary_fill_holes(mask)


def estimate_diameter(image: np.ndarray, *, anisotropy: float = 1.0, snr: float = 5.0) -> float:
    """Median in-plane diameter (pixels) of single nuclei; ``nan`` if none is found.

    Works on a 2-D image or a 3-D volume (z step ``anisotropy`` pixels).  Bright
    components are cut at half their own peak; components whose widest plane has an area
    close to that of the disc inscribed in it (compact, so one nucleus rather than a
    cluster) give the size, as the diameter of a disc of that area.
    """
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim not in (2, 3):
        raise ValueError(f"estimate_diameter takes a 2-D or 3-D image, got shape {arr.shape}")
    axis_scale = (float(anisotropy), 1.0, 1.0) if arr.ndim == 3 else (1.0, 1.0)
    x = ndi.gaussian_filter(arr, tuple(1.0 / a for a in axis_scale))
    scale = max(arr.shape[-2:]) / 8.0
    bg, noise = background_and_noise(x, tuple(scale / a for a in axis_scale), iterations=2)
    s = x - bg
    del x, bg  # the working set of a plane is kept small (see _segment_at)
    if noise <= 0:
        return float("nan")
    fg = s > snr * noise
    lab, n = ndi.label(fg)
    if n == 0:
        return float("nan")
    peak = np.zeros(n + 1, dtype=np.float32)
    smooth = ndi.gaussian_filter(s, tuple(2.0 / a for a in axis_scale))
    # over the objects' pixels only: ndi.maximum sorts all it is given
    peak[1:] = ndi.maximum(smooth[fg], lab[fg], np.arange(1, n + 1))
    threshold = _OUTLINE_LEVEL * peak[lab]
    del lab
    estimate = float("nan")
    for _ in range(4):
        half = _fill_holes(ndi.binary_opening(fg & (s >= threshold)))
        new = _compact_diameter(half)
        if not np.isfinite(new) or (np.isfinite(estimate) and abs(new / estimate - 1) < 0.05):
            return new if np.isfinite(new) else estimate
        estimate = new
        # a cluster cut at its brightest member's half peak loses its dimmer members, which
        # biases the size low: redo with the peak within ~0.6 radius of each pixel
        window = tuple(2 * max(1, round(0.3 * estimate / a)) + 1 for a in axis_scale)
        threshold = _OUTLINE_LEVEL * ndi.maximum_filter(smooth, size=window, mode="nearest")
    return estimate


def _compact_diameter(half: np.ndarray) -> float:
    """Median size of the compact objects of a mask (see :func:`estimate_diameter`)."""
    lab, n = ndi.label(half)
    if n == 0:
        return float("nan")
    # per object and plane: area and inscribed radius (planes of a 2-D image: just one)
    lab3 = lab if lab.ndim == 3 else lab[None]
    half3 = half if half.ndim == 3 else half[None]
    nz = lab3.shape[0]
    if nz == 1:
        dist = ndi.distance_transform_edt(half3[0])[None]  # no copy through np.stack
    else:
        dist = np.stack([ndi.distance_transform_edt(p) for p in half3])
    # object * nz + plane, 0 outside objects (for one plane: the labels themselves)
    code = lab3
    if nz > 1:
        code = lab3.astype(np.int64)
        code *= nz
        code += np.arange(nz)[:, None, None]
        code[lab3 == 0] = 0
    inside = code > 0
    code_in = code[inside]
    del code
    codes, area = np.unique(code_in, return_counts=True)
    # over the objects' pixels only: ndi.maximum sorts all it is given
    inscribed = np.asarray(ndi.maximum(dist[inside], code_in, codes), dtype=np.float64)
    obj = codes // nz
    # the widest plane of each object
    order = np.lexsort((area, obj))
    last = np.r_[obj[order][1:] != obj[order][:-1], True]
    widest = order[last]
    area_w, insc_w = area[widest].astype(np.float64), inscribed[widest]
    compact = (area_w >= 9) & (area_w <= 1.6 * np.pi * insc_w**2)
    if not compact.any():
        compact = area_w >= 9
    if not compact.any():
        return float("nan")
    return float(np.median(2.0 * np.sqrt(area_w[compact] / np.pi)))


# --------------------------------------------------------------------------- segmentation


def _local_maxima(score: np.ndarray, mask: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """Marker image: one label per plateau of local maxima of ``score`` inside ``mask``."""
    peaks = (score == ndi.maximum_filter(score, size=size, mode="nearest")) & mask
    markers, _ = ndi.label(peaks, structure=np.ones((3,) * score.ndim, dtype=bool))
    return markers


def segment_nuclei_array(
    image: np.ndarray,
    diameter: float | None = None,
    *,
    anisotropy: float = 1.0,
    snr: float = 5.0,
    outline: float = _OUTLINE_LEVEL,
    split_touching: bool = True,
    min_size: float = 0.2,
    exclude_border: bool = False,
) -> np.ndarray:
    """Label the nuclei of one 2-D image or one 3-D volume (``[Z, Y, X]``); int32 labels.

    The undecorated kernel behind :func:`segment_nuclei` (see there for the arguments).
    """
    arr = np.asarray(image)
    if arr.ndim not in (2, 3):
        raise ValueError(f"segment_nuclei works on 2-D or 3-D arrays, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(arr.shape, dtype=np.int32)
    x = arr.astype(np.float32, copy=False)
    # per-axis scale: z planes are `anisotropy` pixels apart
    axis_scale = (float(anisotropy), 1.0, 1.0) if arr.ndim == 3 else (1.0, 1.0)
    options = (snr, outline, split_touching, min_size)
    if diameter is not None:
        labels = _segment_at(x, float(diameter), axis_scale, *options)
    else:
        first = estimate_diameter(x, anisotropy=axis_scale[0], snr=snr)
        if not np.isfinite(first):
            return np.zeros(arr.shape, dtype=np.int32)
        labels = _segment_at(x, first, axis_scale, *options)
        # the segmented nuclei measure the size better than the first estimate (which
        # sees clusters cut at their brightest member's half peak); refine once
        measured = _median_diameter(labels)
        if np.isfinite(measured) and abs(measured / first - 1.0) > 0.15:
            labels = _segment_at(x, measured, axis_scale, *options)
    if exclude_border:
        from skimage.segmentation import clear_border

        labels = _relabel(clear_border(labels))
    return labels


def _median_diameter(labels: np.ndarray) -> float:
    """Median diameter of the discs with the area of each object's widest plane."""
    lab3 = labels if labels.ndim == 3 else labels[None]
    nz = lab3.shape[0]
    code = lab3.astype(np.int64) * nz + np.arange(nz)[:, None, None]
    codes, area = np.unique(code[lab3 > 0], return_counts=True)
    if codes.size == 0:
        return float("nan")
    obj = codes // nz
    widest = np.zeros(int(obj.max()) + 1)
    np.maximum.at(widest, obj, area)
    widest = widest[np.unique(obj)]
    return float(np.median(2.0 * np.sqrt(widest / np.pi)))


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 1..n, keeping their order (int32)."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, dtype=np.int32)
    lut[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
    return lut[labels]


def _segment_at(
    x: np.ndarray,
    diameter: float,
    axis_scale: tuple[float, ...],
    snr: float,
    outline: float,
    split_touching: bool,
    min_size: float,
) -> np.ndarray:
    """Segmentation at a known diameter (see the module docstring for the steps)."""
    from skimage.segmentation import watershed

    arr = x
    r = float(diameter) / 2.0

    def sig(s: float, minimum: float = 0.0) -> tuple[float, ...]:
        return tuple(max(minimum, s / a) for a in axis_scale)

    # Intermediates are dropped (del) as soon as the next step no longer needs them and
    # combined in place where the result is the same bit for bit: the working set of a
    # plane is what limits how many workers fit in a machine's memory.
    x = ndi.gaussian_filter(x, sig(min(1.0, r / 4.0)))
    bg, noise = background_and_noise(x, sig(1.5 * diameter))
    s = x - bg
    del x, bg
    if noise <= 0:
        return np.zeros(arr.shape, dtype=np.int32)
    detected = s > snr * noise
    # local (per-nucleus) threshold: a fraction of the peak within ~0.6 radius
    smooth = ndi.gaussian_filter(s, sig(max(1.0, r / 4.0)))
    window = tuple(2 * max(1, round(0.6 * r / a)) + 1 for a in axis_scale)
    local_peak = ndi.maximum_filter(smooth, size=window, mode="nearest")
    del smooth
    mask = detected & (s >= outline * local_peak)
    del detected, local_peak
    mask = ndi.binary_opening(mask)
    mask = _fill_holes(mask)
    if not mask.any():
        return np.zeros(arr.shape, dtype=np.int32)
    if split_touching:
        dist = ndi.distance_transform_edt(mask, sampling=axis_scale)
        logimg = np.log(np.maximum(s, 0.0) + 3.0 * noise)
        del s
        ls = 0.7 * r / np.sqrt(2.0)
        blob = -(ls * ls) * ndi.gaussian_laplace(logimg, sig(ls))
        del logimg
        score = ndi.gaussian_filter(dist, sig(1.0))
        del dist
        score /= r
        score += 0.5 * blob
        del blob
        md = tuple(2 * max(1, int(0.5 * r / a)) + 1 for a in axis_scale)
        markers = _local_maxima(score, mask, md)
        labels = watershed(np.negative(score, out=score), markers, mask=mask)
        del score, markers
    else:
        labels, _ = ndi.label(mask)
    labels = np.asarray(labels, dtype=np.int32)
    n = int(labels.max())
    if n == 0:
        return labels
    expected = np.pi * r * r if arr.ndim == 2 else 4.0 / 3.0 * np.pi * r**3 / axis_scale[0]
    area = np.bincount(labels.ravel(), minlength=n + 1)
    keep = area >= min_size * expected
    keep[0] = False
    lut = np.zeros(n + 1, dtype=np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[labels]


@mem.numpy(dtype_policy="native")
def segment_nuclei(
    image: Any,
    diameter: float | None = None,
    *,
    slice_by_slice: bool = True,
    anisotropy: float | None = None,
    spacing: tuple[float, float, float] | None = None,
    snr: float = 5.0,
    outline: float = _OUTLINE_LEVEL,
    split_touching: bool = True,
    min_size: float = 0.2,
    exclude_border: bool = False,
) -> np.ndarray:
    """Segment fluorescent nuclei; returns an int32 label stack of the input's shape.

    ``diameter``: typical nucleus diameter in pixels; ``None`` measures it on each plane
    (on the whole volume with ``slice_by_slice=False``).  With ``slice_by_slice=True`` (the
    default) every plane is labelled on its own (labels restart at 1 per plane); with
    ``False`` the stack is one 3-D volume whose z step is ``anisotropy`` pixels (or give
    ``spacing=(z, y, x)`` in any unit; ``y`` and ``x`` must be equal).  ``snr``:
    detection threshold in noise standard deviations (lower finds dimmer nuclei, and more
    debris).  ``outline``: the fraction of each nucleus's own peak (above background) at
    which its outline is drawn.  ``split_touching``: separate touching nuclei by a seeded
    watershed.  ``min_size``: objects smaller than this fraction of a typical nucleus's
    area (volume) are dropped.  ``exclude_border``: drop nuclei touching the image edge.
    """
    arr = npf.check_stack(image, "segment_nuclei")
    if diameter is not None and not (np.isfinite(diameter) and diameter > 0):
        raise ValueError(f"segment_nuclei: diameter must be a positive number, got {diameter!r}")
    if not 0 < outline < 1:
        raise ValueError(f"segment_nuclei: outline must be between 0 and 1, got {outline!r}")
    if snr <= 0:
        raise ValueError(f"segment_nuclei: snr must be positive, got {snr!r}")
    aniso = _anisotropy(anisotropy, spacing)
    kwargs: dict[str, Any] = {
        "snr": snr,
        "outline": outline,
        "split_touching": split_touching,
        "min_size": min_size,
        "exclude_border": exclude_border,
    }
    if not slice_by_slice:
        return segment_nuclei_array(arr, diameter, anisotropy=aniso, **kwargs)
    if (anisotropy is not None and anisotropy != 1.0) or spacing is not None:
        raise ValueError(
            "segment_nuclei: anisotropy/spacing describe a 3-D volume; pass "
            "slice_by_slice=False to segment the stack in 3-D"
        )
    out = np.zeros(arr.shape, dtype=np.int32)
    for z in range(arr.shape[0]):
        out[z] = segment_nuclei_array(arr[z], diameter, **kwargs)
    return out


def _anisotropy(anisotropy: float | None, spacing: tuple[float, float, float] | None) -> float:
    if spacing is not None:
        if len(spacing) != 3 or min(spacing) <= 0:
            raise ValueError(
                f"segment_nuclei: spacing must be three positive numbers (z, y, x), got {spacing}"
            )
        z, y, x = (float(v) for v in spacing)
        if not np.isclose(y, x):
            raise ValueError(f"segment_nuclei: y and x spacing must be equal, got {spacing}")
        derived = z / y
        if anisotropy is not None and not np.isclose(anisotropy, derived):
            raise ValueError(
                f"segment_nuclei: anisotropy={anisotropy} contradicts spacing={spacing} "
                f"(z / y = {derived:g}); give one of them"
            )
        return derived
    if anisotropy is None:
        return 1.0
    if not anisotropy > 0:
        raise ValueError(f"segment_nuclei: anisotropy must be positive, got {anisotropy!r}")
    return float(anisotropy)
