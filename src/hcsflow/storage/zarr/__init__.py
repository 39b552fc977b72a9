"""The zarr backend and OME-Zarr HCS plates.

One module per concern: ``_backend`` (:class:`ZarrStorageBackend`: queries and
structure operations), built on ``_nodes`` (virtual paths to zarr nodes: kinds, links,
containment), ``_files`` (file nodes: encoding, atomic publishing, reading back) and
``_plate_images`` (``save_batch(..., chunk_name=...)`` plate images); ``_plates``
(OME-Zarr plate, well and image groups), ``_io`` (store locations and error mapping),
``_config`` (:class:`ZarrConfig`), ``_ome`` (NGFF metadata documents) and
:mod:`~hcsflow.storage.zarr.validate` (plate validation).
"""

from hcsflow.storage.zarr._backend import ZarrStorageBackend
from hcsflow.storage.zarr._config import ZarrConfig
from hcsflow.storage.zarr._plates import (
    PlateInfo,
    WellInfo,
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
    "PlateInfo",
    "WellInfo",
    "ZarrConfig",
    "ZarrStorageBackend",
    "finalize_plate",
    "image_metadata",
    "list_wells",
    "open_image",
    "open_plate",
    "open_well",
    "read_labels",
    "read_well",
    "write_labels",
    "write_well",
]
