"""The virtual file system: backends, registries and :class:`FileManager`."""

from hcsflow.storage._base import IMAGE_EXTENSIONS, Backend, EntryKind, FileInfo, StorageBackend
from hcsflow.storage._codecs import Codec, CodecRegistry, default_codecs, to_host_array
from hcsflow.storage._disk import DiskStorageBackend
from hcsflow.storage._filemanager import FileManager
from hcsflow.storage._memory import MemoryStorageBackend
from hcsflow.storage._registry import (
    BackendRegistry,
    backend_name,
    register_backend,
    storage_registry,
)

__all__ = [
    "Backend",
    "BackendRegistry",
    "Codec",
    "CodecRegistry",
    "DiskStorageBackend",
    "MemoryStorageBackend",
    "default_codecs",
    "to_host_array",
    "EntryKind",
    "FileInfo",
    "FileManager",
    "IMAGE_EXTENSIONS",
    "StorageBackend",
    "backend_name",
    "register_backend",
    "storage_registry",
]
