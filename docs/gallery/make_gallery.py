"""Draw docs/gallery/*.png: each essential function on a realistic synthetic image.

Run from the repository root: ``python docs/gallery/make_gallery.py``.  The images come
from ``hcsflow.functions.synthetic`` (fixed seeds), so the pictures are reproducible;
each PNG shows the input and the result side by side (256 x 256 crops), drawn with
Pillow only.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage as ndi

from hcsflow.functions import (
    IlluminationProfile,
    correct_illumination,
    count_cells,
    detect_spots,
    estimate_illumination,
    max_projection,
    measure_objects,
    rolling_ball,
    segment_nuclei,
    std_projection,
    threshold_adaptive,
    threshold_local,
    threshold_otsu,
    top_hat,
    watershed_distance,
    watershed_seeded,
)
from hcsflow.functions.synthetic import nuclei_image, nuclei_volume

OUT = Path(__file__).parent
SIZE = 256


def _gray(a: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    lo = float(np.percentile(a, 0.5)) if lo is None else lo
    hi = float(np.percentile(a, 99.7)) if hi is None else hi
    g = np.clip((a - lo) / max(hi - lo, 1e-9), 0, 1)
    return np.stack([g, g, g], axis=-1)


def _labels(lab: np.ndarray, under: np.ndarray | None = None) -> np.ndarray:
    rng = np.random.default_rng(1)
    colours = rng.uniform(0.25, 1.0, (int(lab.max()) + 1, 3))
    colours[0] = 0
    rgb = colours[lab]
    if under is not None:
        base = _gray(under)
        rgb = np.where(lab[..., None] > 0, 0.45 * base + 0.55 * rgb, base)
    edges = lab != ndi.grey_erosion(lab, size=3)
    rgb[edges & (lab > 0)] = (1.0, 1.0, 0.2)
    return rgb


def _mask(m: np.ndarray, under: np.ndarray) -> np.ndarray:
    base = _gray(under)
    return np.where(m[..., None], 0.5 * base + 0.5 * np.array([0.1, 0.9, 0.3]), base)


def _save(name: str, panels: list[tuple[str, np.ndarray]]) -> None:
    tiles = []
    for title, rgb in panels:
        img = Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8)[:SIZE, :SIZE])
        canvas = Image.new("RGB", (SIZE, SIZE + 18), (255, 255, 255))
        canvas.paste(img, (0, 18))
        ImageDraw.Draw(canvas).text((4, 3), title, fill=(0, 0, 0))
        tiles.append(canvas)
    sheet = Image.new("RGB", (len(tiles) * (SIZE + 6) - 6, SIZE + 18), (255, 255, 255))
    for i, t in enumerate(tiles):
        sheet.paste(t, (i * (SIZE + 6), 0))
    sheet.save(OUT / f"{name}.png", optimize=True)
    print(f"wrote {OUT / (name + '.png')}")


def main() -> int:
    """Write every gallery picture."""
    s = nuclei_image((SIZE, SIZE), diameter=16.0, illumination=0.7, seed=21)
    img = s.image.astype(np.float32)
    stack = img[None]

    # illumination: the same vignetting on 30 plates' worth of sites
    shared = s.flatfield
    sites = [
        (nuclei_image((SIZE, SIZE), diameter=16.0, seed=100 + i).labels > 0) for i in range(30)
    ]
    rng = np.random.default_rng(0)
    images = [rng.poisson(shared * (150 + 700 * m)).astype(np.float32) + 100 for m in sites]
    profile = estimate_illumination(images, darkfield=100.0)
    corrected = correct_illumination(images[0][None], profile)[0]
    _save(
        "correct_illumination",
        [
            ("input (vignetted)", _gray(images[0])),
            ("estimated flat field", _gray(profile.flatfield, 0.4, 1.2)),
            ("corrected", _gray(corrected)),
        ],
    )
    assert isinstance(profile, IlluminationProfile)

    _save(
        "rolling_ball",
        [("input", _gray(img)), ("rolling_ball(radius=25)", _gray(rolling_ball(stack, 25)[0]))],
    )
    _save("top_hat", [("input", _gray(img)), ("top_hat(radius=12)", _gray(top_hat(stack, 12)[0]))])

    vol = nuclei_volume((16, SIZE, SIZE), anisotropy=3.0, diameter=18.0, seed=4).image
    _save(
        "projections",
        [
            ("one plane (z=8)", _gray(vol[8])),
            ("max_projection", _gray(max_projection(vol)[0])),
            ("std_projection", _gray(std_projection(vol)[0])),
        ],
    )

    _save(
        "thresholds",
        [
            ("threshold_otsu (global)", _mask(threshold_otsu(stack)[0], img)),
            ("threshold_local(51)", _mask(threshold_local(stack, 51, offset=-20)[0], img)),
            ("threshold_adaptive(64)", _mask(threshold_adaptive(stack, 64)[0], img)),
        ],
    )

    labels = segment_nuclei(stack)
    _save(
        "segment_nuclei",
        [
            ("input", _gray(img)),
            ("segment_nuclei()", _labels(labels[0], img)),
            ("ground truth", _labels(s.labels, img)),
        ],
    )

    otsu = threshold_otsu(ndi.gaussian_filter(stack, (0, 1, 1)))
    _save(
        "watershed_distance",
        [
            ("Otsu mask", _mask(otsu[0], img)),
            ("watershed_distance(min_distance=5)", _labels(watershed_distance(otsu, 5)[0], img)),
        ],
    )

    # a cytoplasm channel around each nucleus
    cyto = ndi.grey_dilation(s.labels, size=9) > 0
    cyto_img = ndi.gaussian_filter(cyto * 400.0 + 80.0, 2) + rng.normal(0, 10, cyto.shape)
    _, cells = watershed_seeded(cyto_img[None].astype(np.float32), labels)
    _save(
        "watershed_seeded",
        [
            ("cytoplasm channel", _gray(cyto_img)),
            ("seeds (nuclei)", _labels(labels[0], cyto_img)),
            ("watershed_seeded: cells", _labels(cells[0], cyto_img)),
        ],
    )

    foci = np.zeros((SIZE, SIZE), np.float32)
    pos = rng.integers(0, SIZE, (60, 2))
    keep = s.labels[pos[:, 0], pos[:, 1]] > 0
    foci[pos[keep, 0], pos[keep, 1]] = 3000.0
    spot_img = img + ndi.gaussian_filter(foci, 1.3)
    _, spots = detect_spots(spot_img[None], 1.0, 2.5, threshold=0.1)
    marked = _gray(spot_img)
    for y, x in zip(spots["y"].astype(int), spots["x"].astype(int), strict=True):
        marked[max(0, y - 3) : y + 4, max(0, x - 3)] = (1, 0.2, 0.2)
        marked[max(0, y - 3) : y + 4, min(SIZE - 1, x + 3)] = (1, 0.2, 0.2)
    _save("detect_spots", [("input", _gray(spot_img)), (f"{len(spots)} spots", marked)])

    _, _, masks = count_cells(stack, method="segment_nuclei")
    _, table = measure_objects(stack, masks)
    lut = np.zeros(int(masks.max()) + 1, np.float32)
    lut[table["label"].to_numpy()] = table["intensity_mean"].to_numpy()
    heat = lut[masks[0]]
    colour = np.stack([heat, 0.3 * heat, 1.0 - heat / max(heat.max(), 1)], -1) / max(heat.max(), 1)
    colour[masks[0] == 0] = 0
    _save(
        "measure_objects",
        [("input", _gray(img)), ("objects coloured by intensity_mean", np.clip(colour, 0, 1))],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
