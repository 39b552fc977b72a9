"""Memory types: detect, convert (zero-copy where possible), stack, decorate, recover from OOM.

Importing this package imports no optional framework (torch, jax, tensorflow, cupy,
pyclesperanto); each is imported only when a conversion to it is asked for.
See docs/memory.md.
"""

from __future__ import annotations

from hcsflow.errors import (
    DeviceError,
    DtypeError,
    MemoryConversionError,
    MemoryTypeError,
    OutOfMemoryRecoveryError,
    ShapeError,
)
from hcsflow.memory._align import ALIGNMENT, aligned_empty, ensure_aligned, is_aligned
from hcsflow.memory._cleanup import (
    cleanup_all_gpu_frameworks,
    cleanup_cupy_gpu,
    cleanup_gpu_memory_by_framework,
    cleanup_jax_gpu,
    cleanup_pyclesperanto_gpu,
    cleanup_pytorch_gpu,
    cleanup_tensorflow_gpu,
)
from hcsflow.memory._convert import convert_memory, to_memory_type, to_numpy
from hcsflow.memory._detect import detect_memory_type, is_supported_array
from hcsflow.memory._devices import current_device, use_device
from hcsflow.memory._oom import oom_framework
from hcsflow.memory._recorder import ConversionEvent, ConversionRecorder, record_conversions
from hcsflow.memory._stack import stack_slices, unstack_slices
from hcsflow.memory._types import MemoryType

__all__ = [
    "MemoryType",
    "detect_memory_type",
    "is_supported_array",
    "convert_memory",
    "to_memory_type",
    "to_numpy",
    "stack_slices",
    "unstack_slices",
    "aligned_empty",
    "ensure_aligned",
    "is_aligned",
    "ALIGNMENT",
    "use_device",
    "current_device",
    "cleanup_gpu_memory_by_framework",
    "cleanup_all_gpu_frameworks",
    "cleanup_pytorch_gpu",
    "cleanup_cupy_gpu",
    "cleanup_tensorflow_gpu",
    "cleanup_jax_gpu",
    "cleanup_pyclesperanto_gpu",
    "oom_framework",
    "record_conversions",
    "ConversionEvent",
    "ConversionRecorder",
    "MemoryTypeError",
    "MemoryConversionError",
    "DeviceError",
    "DtypeError",
    "ShapeError",
    "OutOfMemoryRecoveryError",
]
