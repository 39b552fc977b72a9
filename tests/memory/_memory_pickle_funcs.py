"""Module-level decorated functions for the pickle / process-pool tests (importable by name)."""

from __future__ import annotations

import numpy as np

from hcsflow.memory.decorators import memory_types, numpy


@numpy
def add_one(image_stack: np.ndarray, amount: int = 1) -> np.ndarray:
    """Add ``amount`` to every pixel."""
    return image_stack + amount


@memory_types(input_type="numpy", output_type="numpy", dtype_policy="native")
def double_native(image_stack: np.ndarray) -> np.ndarray:
    """Twice the input, as float64."""
    return image_stack * 2.0
