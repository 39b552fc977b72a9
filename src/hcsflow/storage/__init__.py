"""The virtual file system: backends, registries and :class:`FileManager`."""

from hcsflow.storage._base import IMAGE_EXTENSIONS, Backend, EntryKind, FileInfo, StorageBackend
from hcsflow.storage._codecs import (
    Codec,
    CodecRegistry,
    TiffConfig,
    default_codecs,
    to_host_array,
)
from hcsflow.storage._decode import ALIGNMENT, aligned_empty
from hcsflow.storage._filemanager import FileManager
from hcsflow.storage._fsck import Debris, find_debris, remove_debris
from hcsflow.storage._fsspec import FsspecStorageBackend
from hcsflow.storage._limits import ENV_MAX_DECODED_BYTES, StorageLimits
from hcsflow.storage._memory import MemoryStorageBackend
from hcsflow.storage._registry import (
    BackendRegistry,
    backend_name,
    register_backend,
    storage_registry,
)
from hcsflow.storage._tables import (
    neutralize_csv_text,
    neutralize_formula,
    neutralize_formulas,
)
from hcsflow.storage.disk import DiskStorageBackend
from hcsflow.storage.zarr import (
    PlateInfo,
    WellInfo,
    ZarrConfig,
    ZarrStorageBackend,
    finalize_plate,
    image_metadata,
    list_wells,
    open_image,
    open_plate,
    open_well,
    read_labels,
    read_well,
    write_labels,
    write_well,
)

__all__ = [
    "Backend",
    "BackendRegistry",
    "Codec",
    "CodecRegistry",
    "TiffConfig",
    "DiskStorageBackend",
    "FsspecStorageBackend",
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
    # limits, alignment, crash debris, CSV safety
    "StorageLimits",
    "ENV_MAX_DECODED_BYTES",
    "ALIGNMENT",
    "aligned_empty",
    "Debris",
    "find_debris",
    "remove_debris",
    "neutralize_formula",
    "neutralize_formulas",
    "neutralize_csv_text",
    # zarr backend and OME-Zarr plates
    "ZarrStorageBackend",
    "ZarrConfig",
    "PlateInfo",
    "WellInfo",
    "write_well",
    "read_well",
    "open_image",
    "open_well",
    "write_labels",
    "read_labels",
    "finalize_plate",
    "image_metadata",
    "open_plate",
    "list_wells",
]
