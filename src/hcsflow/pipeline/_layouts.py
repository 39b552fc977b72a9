"""Microscope file-name layouts (moved to :mod:`hcsflow.readers`; re-exported here)."""

from hcsflow.readers._layouts import (
    LAYOUTS,
    ImageXpressLayout,
    OperaPhenixLayout,
    RegexLayout,
    detect_layout,
    image_filename,
)

__all__ = [
    "ImageXpressLayout",
    "OperaPhenixLayout",
    "RegexLayout",
    "image_filename",
    "detect_layout",
    "LAYOUTS",
]
