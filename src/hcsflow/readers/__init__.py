"""Plate readers: microscope exports in, one plate description out.

A :class:`PlateReader` recognises a plate directory and describes it as a
:class:`PlateDescription` (wells, fields, channels with names and wavelengths, z
planes and step, timepoints, pixel size in micrometres, the file of every image
plane, field positions, skipped and unplaced files).  Built-in readers, tried in
this order:

* ``ome-zarr``: an OME-Zarr HCS plate (NGFF 0.4/0.5);
* ``harmony``: Revvity/PerkinElmer Opera Phenix and Operetta CLS exports
  (``Index.idx.xml``, ``Index.xml``, ``Index.ref.xml``);
* ``cellvoyager``: Yokogawa CellVoyager CV7000/CV8000 (``MeasurementData.mlf``);
* ``imagexpress``: Molecular Devices ImageXpress/MetaXpress (``.HTD``);
* ``ome-tiff``: OME-TIFF files (``.ome.tif``);
* ``files``: plain folders of image files named by a layout (the fallback).

Third parties add a format with :func:`register_reader`.  See ``docs/readers.md``.
"""

from hcsflow.readers._base import (
    ChannelInfo,
    ImageMetadata,
    PlateBuilder,
    PlateDescription,
    PlateImage,
    PlateReader,
    SkippedFile,
    emission_color,
)
from hcsflow.readers._layouts import (
    LAYOUTS,
    FileLayoutReader,
    ImageXpressLayout,
    OperaPhenixLayout,
    RegexLayout,
    detect_layout,
    image_filename,
    is_thumbnail,
)
from hcsflow.readers._omezarr import OmeZarrReader, is_zarr_plate, read_zarr_plate
from hcsflow.readers._read import choose_reader, read_plate
from hcsflow.readers._registry import (
    DEFAULT_PRIORITY,
    ReaderRegistry,
    detect_reader,
    get_reader,
    reader_registry,
    register_reader,
)
from hcsflow.readers._source import URL_BACKEND, PlateSource

__all__ = [
    "ChannelInfo",
    "DEFAULT_PRIORITY",
    "FileLayoutReader",
    "ImageMetadata",
    "ImageXpressLayout",
    "LAYOUTS",
    "OmeZarrReader",
    "OperaPhenixLayout",
    "PlateBuilder",
    "PlateDescription",
    "PlateImage",
    "PlateReader",
    "PlateSource",
    "ReaderRegistry",
    "RegexLayout",
    "SkippedFile",
    "URL_BACKEND",
    "choose_reader",
    "detect_layout",
    "detect_reader",
    "emission_color",
    "get_reader",
    "image_filename",
    "is_thumbnail",
    "is_zarr_plate",
    "read_plate",
    "read_zarr_plate",
    "reader_registry",
    "register_reader",
]
