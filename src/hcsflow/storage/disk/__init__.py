"""The disk backend: real files and directories, formats chosen by extension.

One module per concern: ``_paths`` (root mapping, containment, OS-error translation),
``_formats`` (codec choice by extension and decoding), ``_publish`` (atomic writes
through temporary names) and ``_backend`` (:class:`DiskStorageBackend`: queries,
structure operations and copies).
"""

from hcsflow.storage.disk._backend import DiskStorageBackend
from hcsflow.storage.disk._publish import TEMP_PREFIX, TEMP_SUFFIX, is_temp_name

__all__ = ["DiskStorageBackend", "TEMP_PREFIX", "TEMP_SUFFIX", "is_temp_name"]
