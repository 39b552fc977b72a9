"""Function-library benchmarks: ``segment_nuclei`` quality and throughput.

1. Quality: ``segment_nuclei`` with default arguments on the synthetic benchmark set
   (``hcsflow.functions.synthetic.nuclei_set``: six 512x512 images, nuclei of 12, 18 and
   28 px at two densities, touching clusters, dim nuclei, uneven illumination, noise,
   blur), scored by matched F1 at IoU >= 0.5; next to it, the classic scikit-image
   recipe (Gaussian, Otsu, distance-transform watershed) on the same images.  Also two
   anisotropic 3-D volumes.  Target: F1 >= 0.85 on the set.
2. Throughput on the same images: ``segment_nuclei`` (decorated, as a step calls it)
   against the same algorithm written directly with scipy.ndimage and scikit-image
   (``_hand_written`` below, checked to give identical labels).  Target: within 1.5x.
   The classic recipe's time is shown for scale (it does less, and worse).

Results go to ``benchmarks/results/functions.json``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks._common import print_table, write_results

REPEATS = 7


# --------------------------------------------------------------------------- references


def _classic(img: np.ndarray) -> np.ndarray:
    """The usual scikit-image recipe: smooth, Otsu, fill, distance-transform watershed."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.measure import label
    from skimage.segmentation import watershed

    g = gaussian(img.astype(np.float32), 1, preserve_range=True)
    mask = ndi.binary_fill_holes(g > threshold_otsu(g))
    dist = ndi.distance_transform_edt(mask)
    lab = label(mask)
    peaks = peak_local_max(dist, min_distance=4, labels=lab, exclude_border=False)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return np.asarray(watershed(-dist, markers, mask=mask), dtype=np.int32)


def _hand_written(img: np.ndarray) -> np.ndarray:
    """segment_nuclei's algorithm (2-D, default arguments) written directly with
    scipy.ndimage, scikit-image and numpy, as a user would without hcsflow."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    def block_mean(a: np.ndarray, f: int) -> np.ndarray:
        a = np.pad(a, [(0, (-n) % f) for n in a.shape], mode="edge")
        return a.reshape(a.shape[0] // f, f, a.shape[1] // f, f).mean(axis=(1, 3))

    def upsample(c: np.ndarray, f: int, shape: tuple[int, ...]) -> np.ndarray:
        if f == 1:
            return c.astype(np.float32)
        for axis, n in enumerate(shape):
            centres = (np.arange(c.shape[axis]) + 0.5) * f - 0.5
            pos = np.arange(n, dtype=np.float64)
            i = np.clip(np.searchsorted(centres, pos) - 1, 0, c.shape[axis] - 2)
            t = np.clip((pos - centres[i]) / f, 0, 1).astype(np.float32)
            t = t.reshape((n, 1) if axis == 0 else (1, n))
            c = np.take(c, i, axis=axis) * (1 - t) + np.take(c, i + 1, axis=axis) * t
        return c.astype(np.float32)

    def smooth_masked(x: np.ndarray, w: np.ndarray, s: float) -> tuple[np.ndarray, np.ndarray]:
        f = max(1, int(s / 3))
        num = ndi.gaussian_filter(block_mean(x * w, f), s / f, mode="nearest")
        den = ndi.gaussian_filter(block_mean(w, f), s / f, mode="nearest")
        return upsample(num, f, x.shape), upsample(den, f, x.shape)

    def darkest_peak(h: np.ndarray) -> int:
        inner = (h[1:-1] >= h[:-2]) & (h[1:-1] >= h[2:]) & (h[1:-1] >= 0.1 * h.max())
        if h[0] >= h[1] and h[0] >= 0.1 * h.max():
            return 0
        c = np.flatnonzero(inner) + 1
        return int(c[0]) if c.size else int(np.argmax(h))

    def mode_noise(r: np.ndarray) -> tuple[float, float]:
        v = r.ravel()
        if v.size > 262144:
            v = v[:: v.size // 262144]
        lo, hi = (float(t) for t in np.percentile(v, [0.5, 99.5]))
        for _ in range(4):
            h, _ = np.histogram(v, bins=256, range=(lo, hi))
            h = ndi.gaussian_filter1d(h.astype(np.float64), 2.0)
            k = darkest_peak(h)
            width = (hi - lo) / 256
            mode = lo + (k + 0.5) * width
            left = k - int(np.argmax(h[k::-1] < h[k] / 2)) if (h[: k + 1] < h[k] / 2).any() else 0
            if k - left >= 8:
                break
            lo, hi = mode - 16 * width, mode + 16 * width
        return mode, 1.4826 * float(np.median(mode - v[v < mode]))

    def background(x: np.ndarray, s: float, iterations: int) -> tuple[np.ndarray, float]:
        num, den = smooth_masked(x, np.ones(x.shape, np.float32), s)
        bg = num / np.maximum(den, 1e-6)
        for _ in range(iterations):
            mode, noise = mode_noise(x - bg)
            num, den = smooth_masked(x, (x - bg < mode + 2 * noise).astype(np.float32), s)
            bg = np.where(den > 1e-3, num / np.maximum(den, 1e-6), bg)
        mode, noise = mode_noise(x - bg)
        return (bg + mode).astype(np.float32), noise

    def compact_diameter(half: np.ndarray) -> float:
        lab, n = ndi.label(half)
        area = np.bincount(lab.ravel())[1:].astype(np.float64)
        insc = np.asarray(
            ndi.maximum(ndi.distance_transform_edt(half), lab, np.arange(1, n + 1)), float
        )
        compact = (area >= 9) & (area <= 1.6 * np.pi * insc**2)
        compact = compact if compact.any() else area >= 9
        return float(np.median(2 * np.sqrt(area[compact] / np.pi)))

    def estimate(arr: np.ndarray) -> float:
        x = ndi.gaussian_filter(arr, 1.0)
        bg, noise = background(x, max(arr.shape) / 8.0, 2)
        s = x - bg
        fg = s > 5 * noise
        lab, n = ndi.label(fg)
        smooth = ndi.gaussian_filter(s, 2.0)
        peak = np.zeros(n + 1, np.float32)
        peak[1:] = ndi.maximum(smooth, lab, np.arange(1, n + 1))
        threshold = 0.5 * peak[lab]
        est = float("nan")
        for _ in range(4):
            half = ndi.binary_fill_holes(ndi.binary_opening(fg & (s >= threshold)))
            new = compact_diameter(half)
            if np.isfinite(est) and abs(new / est - 1) < 0.05:
                return new
            est = new
            w = 2 * max(1, round(0.3 * est)) + 1
            threshold = 0.5 * ndi.maximum_filter(smooth, size=w, mode="nearest")
        return est

    def segment(arr: np.ndarray, d: float) -> np.ndarray:
        r = d / 2
        x = ndi.gaussian_filter(arr, min(1.0, r / 4))
        bg, noise = background(x, 1.5 * d, 3)
        s = x - bg
        smooth = ndi.gaussian_filter(s, max(1.0, r / 4))
        w = 2 * max(1, round(0.6 * r)) + 1
        mask = (s > 5 * noise) & (s >= 0.5 * ndi.maximum_filter(smooth, size=w, mode="nearest"))
        mask = ndi.binary_fill_holes(ndi.binary_opening(mask))
        dist = ndi.distance_transform_edt(mask)
        ls = 0.7 * r / np.sqrt(2)
        blob = -(ls * ls) * ndi.gaussian_laplace(np.log(np.maximum(s, 0) + 3 * noise), ls)
        score = ndi.gaussian_filter(dist, 1.0) / r + 0.5 * blob
        md = 2 * max(1, int(0.5 * r)) + 1
        peaks = (score == ndi.maximum_filter(score, size=md, mode="nearest")) & mask
        markers, _ = ndi.label(peaks, structure=np.ones((3, 3), bool))
        lab = np.asarray(watershed(-score, markers, mask=mask), np.int32)
        area = np.bincount(lab.ravel())
        keep = area >= 0.2 * (np.pi * r * r)
        keep[0] = False
        lut = np.zeros(lab.max() + 1, np.int32)
        lut[keep] = np.arange(1, keep.sum() + 1)
        return lut[lab]

    arr = img.astype(np.float32)
    first = estimate(arr)
    labels = segment(arr, first)
    widest = np.bincount(labels.ravel())[1:]
    widest = widest[widest > 0]
    measured = float(np.median(2 * np.sqrt(widest / np.pi))) if widest.size else float("nan")
    if np.isfinite(measured) and abs(measured / first - 1) > 0.15:
        labels = segment(arr, measured)
    return labels


# --------------------------------------------------------------------------- timing


def _alternate(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each function, the functions alternating in every round."""
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return samples


def main() -> None:
    """Score and time segment_nuclei; write ``benchmarks/results/functions.json``."""
    from hcsflow.functions import segment_nuclei
    from hcsflow.functions.synthetic import match_labels, nuclei_set, nuclei_volume

    images = nuclei_set()
    quality = []
    total = classic_total = None
    for s in images:
        ours = segment_nuclei(s.image[None])[0]
        hand = _hand_written(s.image)
        if not np.array_equal(ours, hand):
            raise AssertionError("the hand-written reference does not reproduce segment_nuclei")
        r = match_labels(ours, s.labels)
        c = match_labels(_classic(s.image), s.labels)
        total = r if total is None else total + r
        classic_total = c if classic_total is None else classic_total + c
        quality.append(
            {
                "image": f"d={s.diameter:g}px n={s.count}",
                "f1": round(r.f1, 3),
                "precision": round(r.precision, 3),
                "recall": round(r.recall, 3),
                "mean_iou": round(r.mean_matched_iou, 3),
                "classic_f1": round(c.f1, 3),
            }
        )
    assert total is not None and classic_total is not None
    quality.append(
        {
            "image": "all (pooled)",
            "f1": round(total.f1, 3),
            "precision": round(total.precision, 3),
            "recall": round(total.recall, 3),
            "mean_iou": round(total.mean_matched_iou, 3),
            "classic_f1": round(classic_total.f1, 3),
        }
    )
    print_table("segment_nuclei, default arguments: matched F1 at IoU 0.5", quality)

    volumes = []
    for seed in (0, 1):
        v = nuclei_volume(seed=seed)
        lab = segment_nuclei(v.image, slice_by_slice=False, anisotropy=v.anisotropy)
        r = match_labels(lab, v.labels)
        volumes.append(
            {
                "volume": f"{v.image.shape} anisotropy {v.anisotropy:g}, n={v.count}",
                "f1": round(r.f1, 3),
                "precision": round(r.precision, 3),
                "recall": round(r.recall, 3),
            }
        )
    print_table("segment_nuclei in 3-D (anisotropy given, diameter estimated)", volumes)

    speed = []
    for s in images:
        stack = s.image[None]
        img = s.image
        t = _alternate(
            {
                "segment_nuclei": lambda stack=stack: segment_nuclei(stack),
                "hand_written": lambda img=img: _hand_written(img),
                "classic": lambda img=img: _classic(img),
            },
            REPEATS,
        )
        best = {k: min(v) for k, v in t.items()}
        med = {k: statistics.median(v) for k, v in t.items()}
        speed.append(
            {
                "image": f"d={s.diameter:g}px n={s.count}",
                "segment_nuclei_s": round(best["segment_nuclei"], 4),
                "hand_written_s": round(best["hand_written"], 4),
                "ratio": round(best["segment_nuclei"] / best["hand_written"], 3),
                "median_ratio": round(med["segment_nuclei"] / med["hand_written"], 3),
                "classic_s": round(best["classic"], 4),
            }
        )
    pooled = sum(r["segment_nuclei_s"] for r in speed) / sum(r["hand_written_s"] for r in speed)
    print_table(
        f"throughput, 512x512 uint16, best of {REPEATS} alternated runs "
        "(ratio = segment_nuclei / the same algorithm hand-written)",
        speed,
    )
    f1 = quality[-1]["f1"]
    worst = max(row["ratio"] for row in speed)
    print(
        f"\nF1 {f1} (target >= 0.85: {'met' if f1 >= 0.85 else 'NOT met'}); "
        f"pooled time ratio {pooled:.3f}, slowest image {worst} "
        f"(target <= 1.5: {'met' if pooled <= 1.5 else 'NOT met'})"
    )
    write_results(
        "functions",
        quality + volumes + speed,
        targets={"f1_at_iou_0.5": 0.85, "max_ratio_vs_hand_written": 1.5},
        f1=f1,
        pooled_ratio=round(pooled, 3),
        max_ratio=worst,
    )


if __name__ == "__main__":
    main()
