"""A plate heatmap (PNG) drawn with Pillow: one coloured disc per well, value written in it."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from hcsflow.storage.plate import PLATE_FORMATS, parse_well, row_name

__all__ = ["plate_heatmap"]

# viridis, sampled at 9 points
_VIRIDIS = np.array(
    [
        (68, 1, 84),
        (72, 40, 120),
        (62, 74, 137),
        (49, 104, 142),
        (38, 130, 142),
        (31, 158, 137),
        (53, 183, 121),
        (109, 205, 89),
        (180, 222, 44),
        (253, 231, 37),
    ],
    dtype=np.float64,
)


def _colour(t: float) -> tuple[int, int, int]:
    t = min(max(t, 0.0), 1.0) * (len(_VIRIDIS) - 1)
    i = min(int(t), len(_VIRIDIS) - 2)
    c = _VIRIDIS[i] + (_VIRIDIS[i + 1] - _VIRIDIS[i]) * (t - i)
    r, g, b = (int(round(v)) for v in c)
    return r, g, b


def _plate_shape(values: Mapping[str, float]) -> tuple[int, int]:
    rows = max(parse_well(w).row for w in values) + 1
    cols = max(parse_well(w).column for w in values) + 1
    for _, (r, c) in sorted(PLATE_FORMATS.items()):
        if rows <= r and cols <= c:
            return r, c
    return rows, cols


def plate_heatmap(
    values: Mapping[str, float], path: str | os.PathLike[str], *, title: str = "", cell: int = 56
) -> Path:
    """Draw ``{well: value}`` on the smallest standard plate holding every well; write PNG.

    Wells without a value are drawn empty (grey outline).  The file is written under a
    temporary name and renamed into place.
    """
    from PIL import Image, ImageDraw, ImageFont

    if not values:
        raise ValueError("plate_heatmap needs at least one well value")
    rows, cols = _plate_shape(values)
    finite = [float(v) for v in values.values() if math.isfinite(float(v))]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    span = hi - lo if hi > lo else 1.0
    margin_l, margin_t, bar_w = 40, 56 if title else 32, 70
    width = margin_l + cols * cell + bar_w + 20
    height = margin_t + rows * cell + 20
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=max(10, cell // 4))
    small = ImageFont.load_default(size=12)
    if title:
        draw.text((margin_l, 10), title, fill="black", font=ImageFont.load_default(size=16))
    for c in range(cols):
        x = margin_l + c * cell + cell // 2
        draw.text((x, margin_t - 16), str(c + 1), fill="black", font=small, anchor="mm")
    for r in range(rows):
        y = margin_t + r * cell + cell // 2
        draw.text((margin_l - 16, y), row_name(r), fill="black", font=small, anchor="mm")
    for r in range(rows):
        for c in range(cols):
            x0, y0 = margin_l + c * cell + 3, margin_t + r * cell + 3
            box = (x0, y0, x0 + cell - 6, y0 + cell - 6)
            name = f"{row_name(r)}{c + 1:02d}"
            v = values.get(name)
            if v is None or not math.isfinite(float(v)):
                draw.ellipse(box, outline=(190, 190, 190), width=1)
                continue
            t = (float(v) - lo) / span
            fill = _colour(t)
            draw.ellipse(box, fill=fill, outline=(60, 60, 60))
            text_fill = "black" if t > 0.6 else "white"
            label = f"{v:.0f}" if float(v).is_integer() else f"{v:.1f}"
            draw.text(
                ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2),
                label,
                fill=text_fill,
                font=font,
                anchor="mm",
            )
    # colour bar
    bx0 = margin_l + cols * cell + 20
    by0, by1 = margin_t, margin_t + rows * cell
    for y in range(by0, by1):
        t = 1.0 - (y - by0) / max(by1 - by0 - 1, 1)
        draw.line([(bx0, y), (bx0 + 14, y)], fill=_colour(t))
    draw.text((bx0 + 18, by0), f"{hi:.0f}", fill="black", font=small, anchor="lt")
    draw.text((bx0 + 18, by1), f"{lo:.0f}", fill="black", font=small, anchor="lb")
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp.png")
    img.save(tmp, format="PNG")
    os.replace(tmp, target)
    return target
