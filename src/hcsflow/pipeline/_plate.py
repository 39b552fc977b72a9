"""Reading a plate for a pipeline run: a plate reader's description is the plate index.

:func:`read_plate` picks the reader (detected, or forced with ``format=`` / a
``layout``) and returns its :class:`~hcsflow.readers.PlateDescription`, which the
pipeline calls :class:`PlateIndex`: the planes of every well, the plate's sites,
channels, planes and timepoints, and the metadata outputs carry (pixel size, channel
names, z step, time interval).  Every problem is reported before any processing.
"""

from hcsflow.readers import (
    PlateDescription,
    PlateImage,
    is_zarr_plate,
    read_plate,
    read_zarr_plate,
)

PlateIndex = PlateDescription
"""The description of the plate a pipeline runs over (see :class:`PlateDescription`)."""

__all__ = ["PlateImage", "PlateIndex", "read_plate", "read_zarr_plate", "is_zarr_plate"]
