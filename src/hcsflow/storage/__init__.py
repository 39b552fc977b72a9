"""The virtual file system: backends, registries and :class:`FileManager`."""

from hcsflow.storage._base import IMAGE_EXTENSIONS, Backend, EntryKind, FileInfo, StorageBackend
from hcsflow.storage._registry import (
    BackendRegistry,
    backend_name,
    register_backend,
    storage_registry,
)
from hcsflow.storage._filemanager import FileManager  # noqa: I001  (after the registry)

__all__ = [
    "Backend",
    "BackendRegistry",
    "EntryKind",
    "FileInfo",
    "FileManager",
    "IMAGE_EXTENSIONS",
    "StorageBackend",
    "backend_name",
    "register_backend",
    "storage_registry",
]
