"""The zarr backend and OME-Zarr HCS plates.

One module per concern: ``_backend`` (:class:`ZarrStorageBackend`: queries and
structure operations), built on ``_nodes`` (virtual paths to zarr nodes: kinds, links,
containment), ``_files`` (file nodes: encoding, atomic publishing, reading back) and
``_plate_images`` (``save_batch(..., chunk_name=...)`` plate images).  OME-Zarr
plates: ``_wells`` (write, replace and read a well), ``_plate_meta`` (plate metadata:
lock-free updates, :func:`finalize_plate`, :func:`open_plate`), ``_labels`` (NGFF
label images), ``_images`` (multiscale image groups and their metadata), ``_arrays``
(creating and reading arrays within the storage limits) and ``_locate`` (where wells,
fields and their metadata are in a store).  Underneath: ``_io`` (store locations and
error mapping), ``_config`` (:class:`ZarrConfig`), ``_ome`` (NGFF metadata documents)
and :mod:`~hcsflow.storage.zarr.validate` (plate validation).
"""

from hcsflow.storage.zarr._backend import ZarrStorageBackend
from hcsflow.storage.zarr._config import ZarrConfig
from hcsflow.storage.zarr._images import image_metadata
from hcsflow.storage.zarr._labels import read_labels, write_labels
from hcsflow.storage.zarr._plate_meta import PlateInfo, finalize_plate, list_wells, open_plate
from hcsflow.storage.zarr._wells import WellInfo, open_image, open_well, read_well, write_well

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
