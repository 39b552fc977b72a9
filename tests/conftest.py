"""Suite-wide fixtures and the ``gpu`` marker: gpu tests skip cleanly without an NVIDIA GPU."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import warnings

import pytest


def _has_nvidia_gpu() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


HAS_GPU = _has_nvidia_gpu()

# pyclesperanto's OpenCL backend crashes the interpreter (segfault) when it is first activated
# after tensorflow has loaded its libraries (seen with the pocl CPU driver).  Any test module
# may import tensorflow, so load pyclesperanto first in every test process.
if importlib.util.find_spec("pyclesperanto") is not None:
    with warnings.catch_warnings():
        # Without an OpenCL driver it warns here; the tests that need it then skip.
        warnings.simplefilter("ignore")
        import pyclesperanto  # noqa: F401


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (none found by nvidia-smi)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
