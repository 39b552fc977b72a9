"""torch implementations (CPU or CUDA, wherever the input tensor lives).

Imported only when a run's implementation preference selects torch.  Semantics follow
the numpy implementations: ``mode='reflect'`` borders for the Gaussian, zero borders
for erosion, thresholds on a 256-bin histogram.  Results match numpy to float32
rounding (filters) or within one histogram bin (thresholds).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hcsflow.errors import ShapeError
from hcsflow.memory import decorators as mem

__all__ = [
    "gaussian_filter",
    "threshold_otsu",
    "binary_opening",
    "binary_closing",
    "max_projection",
    "mean_projection",
    "normalize_percentile",
    "correct_illumination",
    "top_hat",
    "sum_projection",
    "std_projection",
    "min_projection",
    "threshold_local",
]


def _check(image: Any, func: str) -> torch.Tensor:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{func} (torch) expects a torch.Tensor, got {type(image).__name__}")
    if image.ndim != 3:
        raise ShapeError(f"{func} expects a 3-D [Z, Y, X] stack, got shape {tuple(image.shape)}")
    return image


def _reflect_index(n: int, r: int, device: torch.device) -> torch.Tensor:
    # scipy's 'reflect' (d c b a | a b c d | d c b a), valid for any radius.
    idx = np.arange(-r, n + r)
    period = 2 * n
    idx = np.mod(idx, period)
    idx = np.where(idx >= n, period - 1 - idx, idx)
    return torch.as_tensor(idx, device=device)


def _kernel(
    sigma: float, truncate: float, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    radius = int(truncate * float(sigma) + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (x / float(sigma)) ** 2)
    return (w / w.sum()).to(dtype=dtype, device=device)


def _blur_axis(x: torch.Tensor, k: torch.Tensor, axis: int) -> torch.Tensor:
    r = (k.numel() - 1) // 2
    idx = _reflect_index(x.shape[axis], r, x.device)
    padded = x.index_select(axis, idx)
    moved = padded.movedim(axis, -1)
    shape = moved.shape
    flat = moved.reshape(-1, 1, shape[-1])
    out = F.conv1d(flat, k.view(1, 1, -1)).reshape(*shape[:-1], shape[-1] - 2 * r)
    return out.movedim(-1, axis)


@mem.torch(dtype_policy="native")
def gaussian_filter(
    image: Any, sigma: float = 1.0, *, slice_by_slice: bool = True, truncate: float = 4.0
) -> torch.Tensor:
    """Gaussian blur as the numpy version (float32 out)."""
    x = _check(image, "gaussian_filter")
    x = x.to(torch.float32) if not x.is_floating_point() else x
    if sigma <= 0:
        return x.clone()
    k = _kernel(sigma, truncate, x.dtype, x.device)
    axes = (1, 2) if slice_by_slice else (0, 1, 2)
    for axis in axes:
        x = _blur_axis(x, k, axis)
    return x.to(torch.float32)


def _otsu_value(values: torch.Tensor, nbins: int = 256) -> float:
    v = values.reshape(-1).to(torch.float64)
    lo, hi = float(v.min()), float(v.max())
    if lo == hi:
        return lo
    hist = torch.histc(v, bins=nbins, min=lo, max=hi)
    edges = torch.linspace(lo, hi, nbins + 1, dtype=torch.float64, device=v.device)
    centers = (edges[:-1] + edges[1:]) / 2
    w1 = torch.cumsum(hist, 0)
    w2 = torch.flip(torch.cumsum(torch.flip(hist, [0]), 0), [0])
    m1 = torch.cumsum(hist * centers, 0) / w1.clamp(min=1e-12)
    m2 = torch.flip(
        torch.cumsum(torch.flip(hist * centers, [0]), 0) / torch.flip(w2, [0]).clamp(min=1e-12),
        [0],
    )
    var = w1[:-1] * w2[1:] * (m1[:-1] - m2[1:]) ** 2
    return float(centers[int(torch.argmax(var))])


@mem.torch(dtype_policy="native")
def threshold_otsu(image: Any, *, slice_by_slice: bool = True, nbins: int = 256) -> torch.Tensor:
    """Boolean mask above Otsu's threshold (per plane by default)."""
    x = _check(image, "threshold_otsu")
    if not slice_by_slice:
        return x > _otsu_value(x, nbins)
    return torch.stack([p > _otsu_value(p, nbins) for p in x]) if len(x) else x.bool()


def _fp(footprint: Any, device: torch.device) -> torch.Tensor:
    if footprint is None:
        fp = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=np.float32)
    else:
        fp = np.asarray(footprint.cpu() if isinstance(footprint, torch.Tensor) else footprint)
    if fp.ndim != 2:
        raise ShapeError(f"torch morphology takes a 2-D footprint, got shape {fp.shape}")
    return torch.as_tensor(fp.astype(bool).astype(np.float32), device=device)


def _dilate(x: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    ph, pw = fp.shape[0] // 2, fp.shape[1] // 2
    out = F.conv2d(x.unsqueeze(1), torch.flip(fp, [0, 1])[None, None], padding=(ph, pw))
    return out.squeeze(1) > 0.5


def _erode(x: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    ph, pw = fp.shape[0] // 2, fp.shape[1] // 2
    out = F.conv2d(x.unsqueeze(1), fp[None, None], padding=(ph, pw))
    return out.squeeze(1) > float(fp.sum()) - 0.5


@mem.torch(dtype_policy="native")
def binary_opening(
    image: Any, footprint: Any = None, *, slice_by_slice: bool = True
) -> torch.Tensor:
    """Binary opening plane by plane (``slice_by_slice=False`` is not offered on torch)."""
    x = _check(image, "binary_opening")
    if not slice_by_slice:
        raise ShapeError("the torch binary_opening works plane by plane only")
    fp = _fp(footprint, x.device)
    eroded = _erode(x.to(torch.float32), fp)
    return _dilate(eroded.to(torch.float32), fp)


@mem.torch(dtype_policy="native")
def binary_closing(
    image: Any, footprint: Any = None, *, slice_by_slice: bool = True
) -> torch.Tensor:
    """Binary closing plane by plane with edge padding, as the numpy version."""
    x = _check(image, "binary_closing")
    if not slice_by_slice:
        raise ShapeError("the torch binary_closing works plane by plane only")
    fp = _fp(footprint, x.device)
    ph, pw = fp.shape[0] // 2, fp.shape[1] // 2
    padded = F.pad(x.to(torch.float32).unsqueeze(1), (pw, pw, ph, ph), mode="replicate")
    padded = padded.squeeze(1)
    closed = _erode(_dilate(padded, fp).to(torch.float32), fp)
    return closed[:, ph : ph + x.shape[1], pw : pw + x.shape[2]]


@mem.torch(dtype_policy="native")
def max_projection(image: Any) -> torch.Tensor:
    """Maximum over Z as a ``[1, Y, X]`` stack."""
    x = _check(image, "max_projection")
    return x.amax(dim=0, keepdim=True)


@mem.torch(dtype_policy="native")
def mean_projection(image: Any) -> torch.Tensor:
    """Mean over Z as a ``[1, Y, X]`` float32 stack."""
    x = _check(image, "mean_projection")
    return x.to(torch.float64).mean(dim=0, keepdim=True).to(torch.float32)


@mem.torch(dtype_policy="native")
def normalize_percentile(
    image: Any, low: float = 1.0, high: float = 99.8, *, slice_by_slice: bool = True
) -> torch.Tensor:
    """Percentile normalisation to [0, 1] as the numpy version (float32)."""
    if not 0 <= low < high <= 100:
        raise ValueError(f"need 0 <= low < high <= 100, got low={low}, high={high}")
    x = _check(image, "normalize_percentile").to(torch.float64)
    q = torch.tensor([low / 100, high / 100], dtype=torch.float64, device=x.device)
    if slice_by_slice:
        qs = torch.stack([torch.quantile(p.reshape(-1), q) for p in x])  # [Z, 2]
        lo, hi = qs[:, 0].view(-1, 1, 1), qs[:, 1].view(-1, 1, 1)
    else:
        lo, hi = torch.quantile(x.reshape(-1), q)
    span = hi - lo
    out = torch.where(span > 0, (x - lo) / torch.where(span > 0, span, 1.0), 0.0)
    return out.clamp(0.0, 1.0).to(torch.float32)


# --------------------------------------------------------------------------- HCS essentials


def _profile_tensors(profile: Any, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from hcsflow.functions._hcs import as_profile

    p = as_profile(profile)
    flat = torch.as_tensor(p.flatfield, dtype=torch.float32, device=like.device)
    dark = torch.as_tensor(p.darkfield, dtype=torch.float32, device=like.device)
    return flat, dark


@mem.torch(dtype_policy="native")
def correct_illumination(image: Any, profile: Any) -> torch.Tensor:
    """``(image - darkfield) / flatfield`` on every plane (float32), as the numpy version."""
    x = _check(image, "correct_illumination")
    flat, dark = _profile_tensors(profile, x)
    if tuple(x.shape[1:]) != tuple(flat.shape):
        raise ShapeError(
            f"image planes {tuple(x.shape[1:])} differ from the flat field {tuple(flat.shape)}"
        )
    return (x.to(torch.float32) - dark) / flat


def _min_max_filter(x: torch.Tensor, size: int, kind: str) -> torch.Tensor:
    # max_pool2d pads with -inf, which never wins: the result equals scipy's edge modes
    pad = size // 2
    y = x.unsqueeze(1)
    if kind == "max":
        out = F.max_pool2d(y, size, stride=1, padding=pad)
    else:
        out = -F.max_pool2d(-y, size, stride=1, padding=pad)
    return out.squeeze(1)


@mem.torch(dtype_policy="native")
def top_hat(image: Any, radius: int = 15, *, shape: str = "disk") -> torch.Tensor:
    """White top-hat with a square element (``shape="square"``), as the numpy version.

    The disk element has no torch implementation (use numpy or pyclesperanto).
    """
    x = _check(image, "top_hat")
    if shape != "square":
        raise ValueError(
            f"the torch top_hat supports shape='square' only, got {shape!r} "
            "(numpy and pyclesperanto implement 'disk')"
        )
    if int(radius) != radius or radius < 0:
        raise ValueError(f"radius must be a non-negative integer, got {radius!r}")
    size = 2 * int(radius) + 1
    work = x if x.is_floating_point() else x.to(torch.float32)
    opened = _min_max_filter(_min_max_filter(work, size, "min"), size, "max")
    return (work - opened).to(x.dtype)


@mem.torch(dtype_policy="native")
def sum_projection(image: Any) -> torch.Tensor:
    """Sum over Z as a ``[1, Y, X]`` float32 stack (accumulated in float64)."""
    x = _check(image, "sum_projection")
    return x.to(torch.float64).sum(dim=0, keepdim=True).to(torch.float32)


@mem.torch(dtype_policy="native")
def std_projection(image: Any) -> torch.Tensor:
    """Population standard deviation over Z as a ``[1, Y, X]`` float32 stack."""
    x = _check(image, "std_projection")
    return x.to(torch.float64).std(dim=0, keepdim=True, correction=0).to(torch.float32)


@mem.torch(dtype_policy="native")
def min_projection(image: Any) -> torch.Tensor:
    """Minimum over Z as a ``[1, Y, X]`` stack."""
    x = _check(image, "min_projection")
    return x.amin(dim=0, keepdim=True)


def _box_mean(x: torch.Tensor, size: int) -> torch.Tensor:
    k = torch.full((size,), 1.0 / size, dtype=x.dtype, device=x.device)
    for axis in (1, 2):
        x = _blur_axis(x, k, axis)
    return x


@mem.torch(dtype_policy="native")
def threshold_local(
    image: Any,
    block_size: int = 51,
    *,
    method: str = "gaussian",
    offset: float = 0.0,
    slice_by_slice: bool = True,
) -> torch.Tensor:
    """Mask above the local Gaussian or box mean minus ``offset``, as the numpy version
    (``reflect`` borders; plane by plane only)."""
    x = _check(image, "threshold_local").to(torch.float32)
    if block_size < 3 or block_size % 2 == 0:
        raise ValueError(f"threshold_local: block_size must be odd and >= 3, got {block_size}")
    if not slice_by_slice:
        raise ShapeError("the torch threshold_local works plane by plane only")
    if method == "gaussian":
        k = _kernel((block_size - 1) / 6.0, 4.0, x.dtype, x.device)
        local = _blur_axis(_blur_axis(x, k, 1), k, 2)
    elif method == "mean":
        local = _box_mean(x, int(block_size))
    else:
        raise ValueError(
            f"the torch threshold_local supports 'gaussian' and 'mean', got {method!r}"
        )
    return x > local - offset
