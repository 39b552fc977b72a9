"""Test kits shipped with hcsflow, for our backends and third-party ones, and example data.

* :func:`make_plate` - a synthetic ImageXpress-named plate of nuclei with known counts
  (core install only; the documentation's examples and ``hcsflow demo`` use it).
* :func:`write_imagexpress_export`, :func:`write_harmony_export`,
  :func:`write_cellvoyager_export`, :func:`write_ome_tiff_plate` - microscope exports
  written as the instruments write them, with known content (:class:`Export`); core
  install only (the documentation's examples use them).
* :class:`BackendTests` - the storage conformance suite (pytest); subclass it once.
* :func:`backend_state_machine` - a hypothesis state machine comparing a backend with
  the memory backend as reference model.
* :func:`hostile_files` - a generated corpus of size bombs and corrupt files, each with
  the typed error a backend (or codec) must raise for it.

The conformance suite and the state machine need the ``test`` extra (pytest,
hypothesis); they and the hostile corpus are imported on first use, so
``from hcsflow.testing import make_plate`` works without it.  ``import hcsflow``
never loads this package.
"""

from __future__ import annotations

import importlib
from typing import Any

from hcsflow.testing._exports import (
    Export,
    plane_data,
    write_cellvoyager_export,
    write_harmony_export,
    write_imagexpress_export,
    write_ome_tiff_plate,
)
from hcsflow.testing._plates import SyntheticPlate, demo_wells, make_plate

__all__ = [
    "make_plate",
    "SyntheticPlate",
    "demo_wells",
    "Export",
    "plane_data",
    "write_imagexpress_export",
    "write_harmony_export",
    "write_cellvoyager_export",
    "write_ome_tiff_plate",
    "BackendTests",
    "HostileFile",
    "backend_state_machine",
    "hostile_files",
    "snapshot",
]

_LAZY = {
    "BackendTests": "hcsflow.testing._backend_tests",
    "HostileFile": "hcsflow.testing._hostile",
    "hostile_files": "hcsflow.testing._hostile",
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
