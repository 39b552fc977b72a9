"""Synthetic plates with known ground truth, for ``hcsflow demo``, examples, tests and benchmarks.

Each site is a smooth uneven background (a tilted plane plus a broad bump, as uneven
illumination gives) with nuclei drawn as soft-edged ellipses of random size and
brightness, a few pixels apart (some touching, if asked), then photon (Poisson) noise and
a camera offset.
The number of nuclei per well is known exactly, so counting accuracy can be measured.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hcsflow.storage.plate import WellPosition

__all__ = ["SyntheticPlate", "make_plate", "demo_wells"]


@dataclass(frozen=True)
class SyntheticPlate:
    """Where the plate was written and how many nuclei each well truly holds."""

    root: str
    true_counts: dict[str, int]
    site_counts: dict[str, list[int]]
    sites: int
    size: int


def demo_wells(n: int, columns: int = 12) -> list[str]:
    """The first ``n`` wells of a plate, row by row (``A01``, ``A02``, ...)."""
    if n < 1:
        raise ValueError(f"need at least one well, got {n}")
    return [WellPosition(i // columns, i % columns).name for i in range(n)]


def _site_image(
    rng: np.random.Generator, size: int, n_cells: int, radius: float, touching: float = 0.0
) -> tuple[np.ndarray, int]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    gy, gx = rng.uniform(-1, 1, 2)
    cy, cx = rng.uniform(0.2 * size, 0.8 * size, 2)
    background = (
        100
        + 30 * (gy * yy + gx * xx) / size
        + 60 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.45 * size) ** 2))
    )
    signal = np.zeros((size, size), dtype=np.float32)
    centers: list[tuple[float, float, float]] = []
    margin = radius * 1.6
    tries = 0
    while len(centers) < n_cells and tries < n_cells * 200:
        tries += 1
        r = radius * rng.uniform(0.75, 1.25)
        y, x = rng.uniform(margin, size - margin, 2)
        # most nuclei keep a gap; about one in ten is allowed to touch a neighbour
        gap = -0.3 * r if rng.random() < touching else 3.0
        if any((y - a) ** 2 + (x - b) ** 2 < (r + c + gap) ** 2 for a, b, c in centers):
            continue
        centers.append((y, x, r))
        ry, rx = r * rng.uniform(0.85, 1.15), r * rng.uniform(0.85, 1.15)
        theta = rng.uniform(0, np.pi)
        y0, y1 = int(max(0, y - 2 * r)), int(min(size, y + 2 * r + 1))
        x0, x1 = int(max(0, x - 2 * r)), int(min(size, x + 2 * r + 1))
        dy, dx = yy[y0:y1, x0:x1] - y, xx[y0:y1, x0:x1] - x
        u = (dy * np.cos(theta) + dx * np.sin(theta)) / ry
        v = (-dy * np.sin(theta) + dx * np.cos(theta)) / rx
        dist = np.sqrt(u * u + v * v)
        profile = 1.0 / (1.0 + np.exp((dist - 1.0) * 8.0))  # soft edge
        signal[y0:y1, x0:x1] += rng.uniform(250, 600) * profile
    photons = rng.poisson(np.clip(background + signal, 0, None)).astype(np.float32)
    image = np.clip(photons + 90 + rng.normal(0, 3, photons.shape), 0, 65535)
    return image.astype(np.uint16), len(centers)


def make_plate(
    directory: str | os.PathLike[str],
    wells: int | list[str] = 8,
    *,
    sites: int = 2,
    size: int = 256,
    min_cells: int = 10,
    max_cells: int = 60,
    radius: float = 6.0,
    seed: int = 0,
    touching: float = 0.0,
) -> SyntheticPlate:
    """Write an ImageXpress-named plate (``A01_s1_w1.tif``...) and return its ground truth.

    ``wells`` is a number of wells (filled row by row: ``A01``, ``A02``...) or a list of
    well names; every site is one ``size`` x ``size`` uint16 TIFF of channel 1.  The same
    ``seed`` gives the same plate.  The number of nuclei per site is drawn between
    ``min_cells`` and ``max_cells``; ``radius`` is the mean nucleus radius in pixels.
    Nuclei keep a gap of a few pixels, except that each is allowed, with probability
    ``touching``, to touch or slightly overlap a neighbour (as in dense cultures).
    """
    import tifffile

    if sites < 1 or size < 16 or not 0 <= min_cells <= max_cells or radius <= 0:
        raise ValueError(
            f"make_plate needs sites >= 1, size >= 16, 0 <= min_cells <= max_cells and "
            f"radius > 0; got sites={sites}, size={size}, min_cells={min_cells}, "
            f"max_cells={max_cells}, radius={radius}"
        )
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    names = demo_wells(wells) if isinstance(wells, int) else list(wells)
    rng = np.random.default_rng(seed)
    truth: dict[str, int] = {}
    per_site: dict[str, list[int]] = {}
    for well in names:
        counts = []
        for s in range(sites):
            wanted = int(rng.integers(min_cells, max_cells + 1))
            image, placed = _site_image(rng, size, wanted, radius, touching)
            tifffile.imwrite(root / f"{well}_s{s + 1}_w1.tif", image)
            counts.append(placed)
        truth[well] = sum(counts)
        per_site[well] = counts
    return SyntheticPlate(
        root=str(root.absolute()), true_counts=truth, site_counts=per_site, sites=sites, size=size
    )
