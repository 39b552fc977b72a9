"""Realistic synthetic fluorescence nuclei with exact ground truth, and matched-F1 scoring.

The generator models what makes real nucleus images hard, so that segmentation quality
measured on it means something:

* nuclei of varied size (log-normal diameters), shape (ellipses with irregular outlines)
  and brightness (log-normal, plus a fraction of dim nuclei at a quarter of the typical
  intensity), with chromatin texture and a dome profile (brighter in the middle, as a
  thicker nucleus is);
* clusters of touching nuclei that press into each other (each pixel of an overlap
  belongs to the nucleus whose outline is nearer, so the ground truth stays a partition);
* small bright debris that is not a nucleus;
* uneven illumination (an off-centre vignetting flat field down to about half
  brightness in the corners) over a smooth autofluorescence background;
* optical blur (a Gaussian point-spread function, anisotropic in 3-D) and camera noise:
  Poisson photon noise, Gaussian read noise and a camera offset, stored as uint16.

:func:`nuclei_image` draws one 2-D image, :func:`nuclei_volume` one anisotropic 3-D stack,
:func:`nuclei_set` the fixed benchmark set, and :func:`match_labels` scores a label image
against the truth by matched F1 at an IoU threshold (as the cell-tracking and DSB-2018
challenges do).  No real annotated images ship with hcsflow; these images stand in for
them and numbers measured on them are numbers on synthetic data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "SyntheticNuclei",
    "MatchResult",
    "nuclei_image",
    "nuclei_volume",
    "nuclei_set",
    "match_labels",
]


@dataclass(frozen=True)
class SyntheticNuclei:
    """A synthetic image (uint16) with its exact ground-truth labels (int32, 0 = background).

    ``flatfield`` is the multiplicative illumination profile used, ``diameter`` the mean
    nucleus diameter in pixels (in-plane for volumes), ``anisotropy`` the ratio of the z
    step to the pixel size (1 for 2-D images).
    """

    image: np.ndarray
    labels: np.ndarray
    flatfield: np.ndarray
    diameter: float
    anisotropy: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def count(self) -> int:
        """Number of nuclei in the ground truth."""
        return int(self.labels.max())


@dataclass(frozen=True)
class MatchResult:
    """Matched-F1 score of a predicted label image against the truth."""

    tp: int
    fp: int
    fn: int
    iou_threshold: float
    mean_matched_iou: float

    @property
    def precision(self) -> float:
        """Matched predictions / predictions (1.0 when nothing was predicted or expected)."""
        n = self.tp + self.fp
        return self.tp / n if n else 1.0

    @property
    def recall(self) -> float:
        """Matched truth objects / truth objects (1.0 when there is no truth object)."""
        n = self.tp + self.fn
        return self.tp / n if n else 1.0

    @property
    def f1(self) -> float:
        """``2 TP / (2 TP + FP + FN)`` (1.0 when both images are empty)."""
        n = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / n if n else 1.0

    def __add__(self, other: MatchResult) -> MatchResult:
        if other.iou_threshold != self.iou_threshold:
            raise ValueError("cannot add match results at different IoU thresholds")
        tp = self.tp + other.tp
        iou = (
            (self.mean_matched_iou * self.tp + other.mean_matched_iou * other.tp) / tp
            if tp
            else 0.0
        )
        return MatchResult(
            tp, self.fp + other.fp, self.fn + other.fn, self.iou_threshold, float(iou)
        )


# --------------------------------------------------------------------------- scoring


def match_labels(
    predicted: np.ndarray, truth: np.ndarray, iou_threshold: float = 0.5, *, per_plane: bool = False
) -> MatchResult:
    """Score ``predicted`` labels against ``truth`` by one-to-one matching at an IoU threshold.

    A predicted object and a truth object match when their intersection over union is at
    least ``iou_threshold`` (for thresholds >= 0.5 such a match is unique, so no
    assignment problem arises; lower thresholds raise ``ValueError``).  With
    ``per_plane=True`` the first axis indexes independent label images (labels restart in
    every plane, as in a per-plane label stack) and the counts are summed.
    """
    pred = np.asarray(predicted)
    true = np.asarray(truth)
    if pred.shape != true.shape:
        raise ValueError(f"predicted shape {pred.shape} differs from truth shape {true.shape}")
    if not 0.5 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0.5, 1], got {iou_threshold}")
    if per_plane:
        total = MatchResult(0, 0, 0, iou_threshold, 0.0)
        for p, t in zip(pred, true, strict=True):
            total = total + match_labels(p, t, iou_threshold)
        return total
    if (pred < 0).any() or (true < 0).any():
        raise ValueError("label images must not hold negative labels")
    # relabel to consecutive ids so the contingency table stays small
    _, p = np.unique(pred, return_inverse=True)
    _, t = np.unique(true, return_inverse=True)
    p = p.reshape(pred.shape) if pred.min() == 0 else p.reshape(pred.shape) + 1
    t = t.reshape(true.shape) if true.min() == 0 else t.reshape(true.shape) + 1
    n_p, n_t = int(p.max()), int(t.max())
    if n_p == 0 or n_t == 0:
        return MatchResult(0, n_p, n_t, iou_threshold, 0.0)
    pairs = t.ravel().astype(np.int64) * (n_p + 1) + p.ravel()
    codes, inter = np.unique(pairs, return_counts=True)
    ti, pi = codes // (n_p + 1), codes % (n_p + 1)
    keep = (ti > 0) & (pi > 0)
    ti, pi, inter = ti[keep], pi[keep], inter[keep]
    area_t = np.bincount(t.ravel(), minlength=n_t + 1)
    area_p = np.bincount(p.ravel(), minlength=n_p + 1)
    iou = inter / (area_t[ti] + area_p[pi] - inter)
    good = iou >= iou_threshold
    if iou_threshold == 0.5:
        # IoU exactly 0.5 can in principle pair one object twice; keep the best per object
        good &= _best_only(ti, pi, iou)
    tp = int(good.sum())
    mean_iou = float(iou[good].mean()) if tp else 0.0
    return MatchResult(tp, n_p - tp, n_t - tp, iou_threshold, mean_iou)


def _best_only(ti: np.ndarray, pi: np.ndarray, iou: np.ndarray) -> np.ndarray:
    order = np.argsort(-iou, kind="stable")
    used_t: set[int] = set()
    used_p: set[int] = set()
    ok = np.zeros(len(iou), dtype=bool)
    for k in order:
        a, b = int(ti[k]), int(pi[k])
        if a not in used_t and b not in used_p:
            ok[k] = True
            used_t.add(a)
            used_p.add(b)
    return ok


# --------------------------------------------------------------------------- generation


def _flatfield(shape: tuple[int, ...], rng: np.random.Generator, strength: float) -> np.ndarray:
    """Off-centre vignetting: 1 at its brightest point, ``1 - strength`` at the far corner."""
    ny, nx = shape[-2:]
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    cy, cx = rng.uniform(0.3, 0.7) * ny, rng.uniform(0.3, 0.7) * nx
    r2 = ((yy - cy) / ny) ** 2 + ((xx - cx) / nx) ** 2
    r2 /= r2.max()
    return (1.0 - strength * r2).astype(np.float32)


def _place(
    rng: np.random.Generator,
    n: int,
    radii: np.ndarray,
    extent: tuple[float, float],
    touching: float,
    margin: float,
) -> list[tuple[float, float]]:
    """Centres for ``n`` nuclei: about ``touching`` of them pressed against a neighbour."""
    ny, nx = extent
    centres: list[tuple[float, float]] = []
    placed_r: list[float] = []
    tries = 0
    while len(centres) < n and tries < 400 * n:
        tries += 1
        r = float(radii[len(centres)])
        if centres and rng.random() < touching:
            j = int(rng.integers(len(centres)))
            angle = rng.uniform(0, 2 * np.pi)
            dist = (r + placed_r[j]) * rng.uniform(0.72, 0.92)
            y = centres[j][0] + dist * np.sin(angle)
            x = centres[j][1] + dist * np.cos(angle)
            min_gap = 0.72
        else:
            y, x = rng.uniform(margin, ny - margin), rng.uniform(margin, nx - margin)
            j, min_gap = -1, 1.15
        if not (-0.3 * r < y < ny + 0.3 * r and -0.3 * r < x < nx + 0.3 * r):
            continue
        ok = True
        for k, ((a, b), rk) in enumerate(zip(centres, placed_r, strict=True)):
            gap = 0.72 if k == j else min_gap
            if (y - a) ** 2 + (x - b) ** 2 < (gap * (r + rk)) ** 2:
                ok = False
                break
        if ok:
            centres.append((y, x))
            placed_r.append(r)
    return centres


def _texture(shape: tuple[int, ...], rng: np.random.Generator, scale: float) -> np.ndarray:
    """Chromatin-like multiplicative texture: mean 1, about 15 % variation."""
    noise = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), scale)
    noise /= noise.std() + 1e-12
    return (1.0 + 0.15 * noise).astype(np.float32)


def _camera(
    expected: np.ndarray, rng: np.random.Generator, read_noise: float, offset: float
) -> np.ndarray:
    counts = rng.poisson(np.clip(expected, 0, None)).astype(np.float32)
    counts += rng.normal(offset, read_noise, counts.shape).astype(np.float32)
    return np.clip(np.rint(counts), 0, 65535).astype(np.uint16)


def nuclei_image(
    shape: tuple[int, int] = (512, 512),
    *,
    n_nuclei: int | None = None,
    diameter: float = 18.0,
    size_spread: float = 0.2,
    touching: float = 0.35,
    dim_fraction: float = 0.2,
    brightness: float = 900.0,
    background: float = 120.0,
    illumination: float = 0.5,
    blur: float = 1.2,
    read_noise: float = 4.0,
    offset: float = 100.0,
    debris: int = 6,
    seed: int = 0,
) -> SyntheticNuclei:
    """One 2-D fluorescence nuclei image with exact ground truth.

    ``diameter`` is the median nucleus diameter in pixels (log-normal spread
    ``size_spread``); ``n_nuclei`` defaults to a typical confluence (about 22 % of the
    area covered); ``touching`` is the fraction of nuclei placed pressed against a
    neighbour; ``dim_fraction`` the fraction at a quarter of the usual brightness;
    ``brightness`` and ``background`` are mean photon counts at the brightest point of
    the illumination, which falls to ``1 - illumination`` in the far corner; ``blur`` is
    the PSF sigma in pixels.
    """
    ny, nx = (int(s) for s in shape)
    rng = np.random.default_rng(seed)
    if n_nuclei is None:
        n_nuclei = max(1, int(0.22 * ny * nx / (np.pi * (diameter / 2) ** 2)))
    radii = diameter / 2 * np.exp(rng.normal(0, size_spread, n_nuclei))
    centres = _place(rng, n_nuclei, radii, (ny, nx), touching, margin=0.0)
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    best = np.full((ny, nx), np.inf, dtype=np.float32)
    labels = np.zeros((ny, nx), dtype=np.int32)
    for i, (cy, cx) in enumerate(centres, start=1):
        r = float(radii[i - 1])
        ry, rx = r * rng.uniform(0.85, 1.15), r * rng.uniform(0.85, 1.15)
        theta = rng.uniform(0, np.pi)
        # irregular outline: two low harmonics of the radius
        a2, a3 = rng.uniform(0, 0.08), rng.uniform(0, 0.05)
        p2, p3 = rng.uniform(0, 2 * np.pi, 2)
        h = int(1.4 * max(ry, rx)) + 2
        y0, y1 = max(0, int(cy) - h), min(ny, int(cy) + h + 1)
        x0, x1 = max(0, int(cx) - h), min(nx, int(cx) + h + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        dy, dx = yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx
        u = (dy * np.cos(theta) + dx * np.sin(theta)) / ry
        v = (-dy * np.sin(theta) + dx * np.cos(theta)) / rx
        phi = np.arctan2(v, u)
        rim = 1.0 + a2 * np.cos(2 * phi + p2) + a3 * np.cos(3 * phi + p3)
        d = np.sqrt(u * u + v * v) / rim
        win_best, win_lab = best[y0:y1, x0:x1], labels[y0:y1, x0:x1]
        mine = (d <= 1.0) & (d < win_best)
        win_best[mine] = d[mine]
        win_lab[mine] = i
    # drop nuclei that lost all their pixels to neighbours, then number 1..n
    present = np.unique(labels)
    present = present[present > 0]
    lut = np.zeros(int(labels.max()) + 1, dtype=np.int32)
    lut[present] = np.arange(1, len(present) + 1, dtype=np.int32)
    labels = lut[labels]
    n = len(present)
    bright = brightness * np.exp(rng.normal(0, 0.3, n + 1)).astype(np.float32)
    dim = rng.random(n + 1) < dim_fraction
    bright[dim] *= 0.25
    bright[0] = 0.0
    dome = np.where(labels > 0, 1.0 - 0.35 * np.minimum(best, 1.0) ** 2, 0.0)
    signal = bright[labels] * dome * _texture((ny, nx), rng, 1.5)
    for _ in range(debris):
        y, x = rng.integers(0, ny), rng.integers(0, nx)
        signal[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2] += 1.5 * brightness
    signal = ndi.gaussian_filter(signal.astype(np.float32), blur)
    flat = _flatfield((ny, nx), rng, illumination)
    autofluor = background * (1.0 + 0.2 * ndi.gaussian_filter(rng.standard_normal((ny, nx)), 40))
    image = _camera(flat * (signal + autofluor.astype(np.float32)), rng, read_noise, offset)
    return SyntheticNuclei(
        image=image,
        labels=labels,
        flatfield=flat,
        diameter=float(diameter),
        params={"seed": seed, "touching": touching, "dim_fraction": dim_fraction, "blur": blur},
    )


def nuclei_volume(
    shape: tuple[int, int, int] = (24, 192, 192),
    *,
    anisotropy: float = 3.0,
    n_nuclei: int | None = None,
    diameter: float = 18.0,
    size_spread: float = 0.15,
    touching: float = 0.4,
    dim_fraction: float = 0.15,
    brightness: float = 900.0,
    background: float = 120.0,
    illumination: float = 0.4,
    blur: tuple[float, float] = (1.0, 1.2),
    read_noise: float = 4.0,
    offset: float = 100.0,
    seed: int = 0,
) -> SyntheticNuclei:
    """One anisotropic 3-D stack ``[Z, Y, X]`` of nuclei with exact ground truth.

    ``anisotropy`` is the z step divided by the pixel size (3: planes 3 pixels apart), so a
    nucleus of ``diameter`` pixels spans about ``0.8 * diameter / anisotropy`` planes
    (nuclei are flattened ellipsoids).  ``blur`` is the PSF sigma as ``(z planes,
    pixels)``.  Nuclei fill the volume in layers, many pressed against neighbours in x, y
    and z.
    """
    nz, ny, nx = (int(s) for s in shape)
    rng = np.random.default_rng(seed)
    depth = nz * anisotropy  # in pixel units
    if n_nuclei is None:
        vol = 4 / 3 * np.pi * (diameter / 2) ** 3 * 0.8
        n_nuclei = max(1, int(0.2 * depth * ny * nx / vol))
    radii = diameter / 2 * np.exp(rng.normal(0, size_spread, n_nuclei))
    centres: list[tuple[float, float, float]] = []
    placed: list[float] = []
    tries = 0
    while len(centres) < n_nuclei and tries < 400 * n_nuclei:
        tries += 1
        r = float(radii[len(centres)])
        if centres and rng.random() < touching:
            j = int(rng.integers(len(centres)))
            direction = rng.normal(size=3)
            direction[0] *= 0.6  # flattened nuclei touch mostly side by side
            direction /= np.linalg.norm(direction)
            dist = (r + placed[j]) * rng.uniform(0.75, 0.92)
            c = np.asarray(centres[j]) + dist * direction * np.array([0.8, 1.0, 1.0])
            z, y, x = (float(v) for v in c)
        else:
            z = rng.uniform(0.4 * r, depth - 0.4 * r)
            y, x = rng.uniform(0, ny), rng.uniform(0, nx)
            j = -1
        if not (0 < z < depth and 0 < y < ny and 0 < x < nx):
            continue
        ok = True
        for k, ((a, b, cc), rk) in enumerate(zip(centres, placed, strict=True)):
            gap = 0.75 if (k == j or j >= 0) else 1.1
            dz = (z - a) / 0.8
            if dz * dz + (y - b) ** 2 + (x - cc) ** 2 < (gap * (r + rk)) ** 2:
                ok = False
                break
        if ok:
            centres.append((z, y, x))
            placed.append(r)
    zz = (np.arange(nz, dtype=np.float32) * anisotropy)[:, None, None]
    yy = np.arange(ny, dtype=np.float32)[None, :, None]
    xx = np.arange(nx, dtype=np.float32)[None, None, :]
    best = np.full((nz, ny, nx), np.inf, dtype=np.float32)
    labels = np.zeros((nz, ny, nx), dtype=np.int32)
    for i, ((cz, cy, cx), r) in enumerate(zip(centres, placed, strict=True), start=1):
        rz = 0.8 * r * rng.uniform(0.85, 1.0)
        ry, rx = r * rng.uniform(0.9, 1.1), r * rng.uniform(0.9, 1.1)
        theta = rng.uniform(0, np.pi)
        hz, h = int(rz / anisotropy) + 2, int(1.2 * max(ry, rx)) + 2
        z0, z1 = max(0, int(cz / anisotropy) - hz), min(nz, int(cz / anisotropy) + hz + 1)
        y0, y1 = max(0, int(cy) - h), min(ny, int(cy) + h + 1)
        x0, x1 = max(0, int(cx) - h), min(nx, int(cx) + h + 1)
        if z0 >= z1 or y0 >= y1 or x0 >= x1:
            continue
        wz = (zz[z0:z1] - cz) / rz
        dy, dx = yy[:, y0:y1] - cy, xx[:, :, x0:x1] - cx
        u = (dy * np.cos(theta) + dx * np.sin(theta)) / ry
        v = (-dy * np.sin(theta) + dx * np.cos(theta)) / rx
        d = np.sqrt(wz * wz + u * u + v * v)
        wb, wl = best[z0:z1, y0:y1, x0:x1], labels[z0:z1, y0:y1, x0:x1]
        mine = (d <= 1.0) & (d < wb)
        wb[mine] = d[mine]
        wl[mine] = i
    present = np.unique(labels)
    present = present[present > 0]
    lut = np.zeros(int(labels.max()) + 1, dtype=np.int32)
    lut[present] = np.arange(1, len(present) + 1, dtype=np.int32)
    labels = lut[labels]
    n = len(present)
    bright = brightness * np.exp(rng.normal(0, 0.3, n + 1)).astype(np.float32)
    bright[rng.random(n + 1) < dim_fraction] *= 0.25
    bright[0] = 0.0
    dome = np.where(labels > 0, 1.0 - 0.35 * np.minimum(best, 1.0) ** 2, 0.0)
    signal = bright[labels] * dome * _texture((nz, ny, nx), rng, 1.2)
    signal = ndi.gaussian_filter(signal.astype(np.float32), (blur[0], blur[1], blur[1]))
    flat = _flatfield((ny, nx), rng, illumination)
    image = _camera(flat[None] * (signal + background), rng, read_noise, offset)
    return SyntheticNuclei(
        image=image,
        labels=labels,
        flatfield=flat,
        diameter=float(diameter),
        anisotropy=float(anisotropy),
        params={"seed": seed, "touching": touching, "blur": blur},
    )


def nuclei_set(seed: int = 0, size: int = 512) -> list[SyntheticNuclei]:
    """The benchmark set: six 2-D images covering small to large, sparse to dense nuclei.

    Diameters 12, 18 and 28 pixels, each at a sparse and a dense packing, with the default
    fractions of touching and dim nuclei, uneven illumination and noise.
    """
    out = []
    k = 0
    for diameter in (12.0, 18.0, 28.0):
        for touching, cover in ((0.25, 0.15), (0.5, 0.3)):
            n = max(1, int(cover * size * size / (np.pi * (diameter / 2) ** 2)))
            out.append(
                nuclei_image(
                    (size, size), n_nuclei=n, diameter=diameter, touching=touching, seed=seed + k
                )
            )
            k += 1
    return out
