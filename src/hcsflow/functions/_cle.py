"""pyclesperanto implementations (OpenCL: GPUs, or CPUs through an OpenCL CPU driver).

Imported only when a run's implementation preference selects pyclesperanto.
pyclesperanto filters treat borders as ``nearest`` (edge pixels repeated), so results
differ from the numpy versions within a kernel radius of the image edge.
"""

from __future__ import annotations

from typing import Any

import pyclesperanto as cle

from hcsflow.errors import ShapeError
from hcsflow.memory import decorators as mem

__all__ = [
    "gaussian_filter",
    "median_filter",
    "max_projection",
    "mean_projection",
    "correct_illumination",
    "top_hat",
    "sum_projection",
    "std_projection",
    "min_projection",
    "threshold_local",
]


def _check(image: Any, func: str) -> Any:
    shape = tuple(getattr(image, "shape", ()))
    if len(shape) != 3:
        raise ShapeError(f"{func} expects a 3-D [Z, Y, X] stack, got shape {shape}")
    return image


@mem.pyclesperanto(dtype_policy="native")
def gaussian_filter(
    image: Any, sigma: float = 1.0, *, slice_by_slice: bool = True, truncate: float = 4.0
) -> Any:
    """Gaussian blur (float32); ``truncate`` is fixed by pyclesperanto and must stay 4."""
    x = _check(image, "gaussian_filter")
    if truncate != 4.0:
        raise ValueError("the pyclesperanto gaussian_filter supports only truncate=4.0")
    sz = 0 if slice_by_slice else sigma
    return cle.gaussian_blur(x, sigma_x=sigma, sigma_y=sigma, sigma_z=sz)


@mem.pyclesperanto(dtype_policy="native")
def median_filter(image: Any, size: int = 3, *, slice_by_slice: bool = True) -> Any:
    """Median over a box of odd ``size`` (``size // 2`` radius)."""
    x = _check(image, "median_filter")
    if size % 2 != 1:
        raise ValueError(f"the pyclesperanto median_filter needs an odd size, got {size}")
    r = size // 2
    return cle.median(
        x, radius_x=r, radius_y=r, radius_z=0 if slice_by_slice else r, connectivity="box"
    )


@mem.pyclesperanto(dtype_policy="native")
def max_projection(image: Any) -> Any:
    """Maximum over Z as a ``[1, Y, X]`` stack."""
    x = _check(image, "max_projection")
    return cle.maximum_z_projection(x, keep_dims=True)


@mem.pyclesperanto(dtype_policy="native")
def mean_projection(image: Any) -> Any:
    """Mean over Z as a ``[1, Y, X]`` float32 stack."""
    x = _check(image, "mean_projection")
    return cle.mean_z_projection(x, keep_dims=True)


# --------------------------------------------------------------------------- HCS essentials


@mem.pyclesperanto(dtype_policy="native")
def correct_illumination(image: Any, profile: Any) -> Any:
    """``(image - darkfield) / flatfield`` on every plane (float32), as the numpy version."""
    import numpy as np

    from hcsflow.functions._hcs import as_profile

    x = _check(image, "correct_illumination")
    p = as_profile(profile)
    if tuple(x.shape[1:]) != p.flatfield.shape:
        raise ShapeError(
            f"image planes {tuple(x.shape[1:])} differ from the flat field {p.flatfield.shape}"
        )
    z = int(x.shape[0])
    flat = cle.push(np.broadcast_to(p.flatfield, (z, *p.flatfield.shape)).copy())
    dark = cle.push(np.broadcast_to(p.darkfield, (z, *p.darkfield.shape)).copy())
    work = cle.create(x.shape, dtype=np.float32)
    cle.copy(x, work)
    return cle.divide_images(cle.subtract_images(work, dark), flat)


@mem.pyclesperanto(dtype_policy="native")
def top_hat(image: Any, radius: int = 15, *, shape: str = "disk") -> Any:
    """White top-hat plane by plane: a box element for ``"square"`` (identical to numpy),
    pyclesperanto's sphere for ``"disk"`` (its own disk, which differs from
    scikit-image's at some rim pixels)."""
    x = _check(image, "top_hat")
    if int(radius) != radius or radius < 0:
        raise ValueError(f"radius must be a non-negative integer, got {radius!r}")
    if shape in ("square", "disk"):
        connectivity = "box" if shape == "square" else "sphere"
        return cle.top_hat(
            x, radius_x=radius, radius_y=radius, radius_z=0, connectivity=connectivity
        )
    raise ValueError(f"shape must be 'disk' or 'square', got {shape!r}")


@mem.pyclesperanto(dtype_policy="native")
def sum_projection(image: Any) -> Any:
    """Sum over Z as a ``[1, Y, X]`` float32 stack (accumulated in float32)."""
    x = _check(image, "sum_projection")
    return _one(cle.sum_z_projection(x))


@mem.pyclesperanto(dtype_policy="native")
def std_projection(image: Any) -> Any:
    """Population standard deviation over Z as a ``[1, Y, X]`` float32 stack."""
    x = _check(image, "std_projection")
    return _one(cle.std_z_projection(x))


@mem.pyclesperanto(dtype_policy="native")
def min_projection(image: Any) -> Any:
    """Minimum over Z as a ``[1, Y, X]`` stack."""
    x = _check(image, "min_projection")
    return _one(cle.minimum_z_projection(x))


@mem.pyclesperanto(dtype_policy="native")
def threshold_local(
    image: Any,
    block_size: int = 51,
    *,
    method: str = "gaussian",
    offset: float = 0.0,
    slice_by_slice: bool = True,
) -> Any:
    """Mask above the local Gaussian or box mean minus ``offset`` (``nearest`` borders)."""
    x = _check(image, "threshold_local")
    if block_size < 3 or block_size % 2 == 0:
        raise ValueError(f"threshold_local: block_size must be odd and >= 3, got {block_size}")
    sz = 0 if slice_by_slice else 1
    if method == "gaussian":
        s = (block_size - 1) / 6.0
        local = cle.gaussian_blur(x, sigma_x=s, sigma_y=s, sigma_z=s * sz)
    elif method == "mean":
        r = block_size // 2
        local = cle.mean_filter(x, radius_x=r, radius_y=r, radius_z=r * sz, connectivity="box")
    else:
        raise ValueError(
            f"the pyclesperanto threshold_local supports 'gaussian' and 'mean', got {method!r}"
        )
    return cle.greater(x, cle.add_image_and_scalar(local, scalar=-float(offset)))


def _one(plane: Any) -> Any:
    """A 2-D result as a ``[1, Y, X]`` stack."""
    if len(plane.shape) == 3:
        return plane
    out = cle.create((1, *plane.shape), dtype=plane.dtype)
    out[0] = plane
    return out
