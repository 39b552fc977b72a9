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

__all__ = ["gaussian_filter", "median_filter", "max_projection", "mean_projection"]


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
    return cle.median_box(x, radius_x=r, radius_y=r, radius_z=0 if slice_by_slice else r)


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
