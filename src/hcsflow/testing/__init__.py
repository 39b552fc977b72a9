"""Test kits shipped with hcsflow, for our backends and third-party ones, and example data.

* :func:`make_plate` - a synthetic ImageXpress-named plate of nuclei with known counts
  (core install only; the documentation's examples use it).
* :class:`BackendTests` - the storage conformance suite (pytest); subclass it once.
* :func:`backend_state_machine` - a hypothesis state machine comparing a backend with
  the memory backend as reference model.

The last two need the ``test`` extra (pytest, hypothesis) and are imported on first use,
so ``from hcsflow.testing import make_plate`` works without it.  ``import hcsflow``
never loads this package.
"""

from __future__ import annotations

import importlib
from typing import Any

from hcsflow.testing._plates import SyntheticPlate, demo_wells, make_plate

__all__ = [
    "make_plate",
    "SyntheticPlate",
    "demo_wells",
    "BackendTests",
    "backend_state_machine",
    "snapshot",
]

_LAZY = {
    "BackendTests": "hcsflow.testing._backend_tests",
    "backend_state_machine": "hcsflow.testing._state_machine",
    "snapshot": "hcsflow.testing._state_machine",
}


def __getattr__(name: str) -> Any:
    # pytest and hypothesis are test-extra dependencies: import them only when asked for.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hcsflow.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
