"""hcsflow: a storage and memory layer for high-content-screening image pipelines.

``import hcsflow`` is cheap and imports no optional framework (torch, jax,
tensorflow, cupy, pyclesperanto).  Subpackages:

* :mod:`hcsflow.storage`  - the virtual file system (``FileManager``, ``Backend``)
* :mod:`hcsflow.memory`   - memory types, conversion, decorators, 3-D stacks
* :mod:`hcsflow.pipeline` - ``FunctionStep``, special I/O, configuration, execution
* :mod:`hcsflow.functions` - the built-in function library
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "FileManager": "hcsflow.storage",
    "Backend": "hcsflow.storage",
    "storage_registry": "hcsflow.storage",
    "MemoryType": "hcsflow.memory",
    "stack_slices": "hcsflow.memory",
    "unstack_slices": "hcsflow.memory",
    "FunctionStep": "hcsflow.pipeline",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hcsflow' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
