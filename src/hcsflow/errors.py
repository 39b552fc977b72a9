"""One exception hierarchy for hcsflow, rooted at :class:`HcsflowError`.

Every error also inherits the builtin a Python user would reach for, so
``except FileNotFoundError`` catches :class:`NotFoundError` and
``except ValueError`` catches :class:`InvalidPathError`.  Storage errors carry
the virtual ``path`` and the ``backend`` name and mention both in the message.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "HcsflowError",
    "StorageError",
    "NotFoundError",
    "AlreadyExistsError",
    "IsADirectoryStorageError",
    "NotADirectoryStorageError",
    "DirectoryNotEmptyError",
    "InvalidPathError",
    "PathEscapeError",
    "SymlinkLoopError",
    "UnknownBackendError",
    "BackendRegistrationError",
    "UnsupportedFormatError",
    "DataFormatError",
    "CorruptDataError",
    "PickleRefusedError",
    "CodecRefusal",
    "ResourceLimitError",
    "BatchError",
    "BatchLengthError",
    "MemoryTypeError",
    "MemoryConversionError",
    "DeviceError",
    "DtypeError",
    "ShapeError",
    "OutOfMemoryRecoveryError",
    "ZarrError",
    "PlateLayoutError",
    "PlateMetadataError",
    "ObjectStoreError",
    "PlateReaderError",
    "ExportMetadataError",
    "MissingPlaneError",
    "UnknownPlateFormatError",
    "ReaderRegistrationError",
    "UnknownFunctionError",
    "CorruptStoreError",
    "PipelineError",
    "ConfigurationError",
    "CompilationError",
    "SpecialIOError",
    "StepExecutionError",
    "MaterializationError",
    "RunDirectoryError",
    "UsageError",
    "describe_error",
    "RunInterrupted",
]


class HcsflowError(Exception):
    """Root of every error hcsflow raises on purpose."""


# --------------------------------------------------------------------------- storage


class StorageError(HcsflowError):
    """An error about one virtual path on one backend."""

    def __init__(self, message: str, *, path: str | None = None, backend: str | None = None):
        self.path = path
        self.backend = backend
        #: the message without the location (what went wrong)
        self.reason = message
        where = []
        if path is not None:
            where.append(f"path {path!r}")
        if backend is not None:
            where.append(f"backend {backend!r}")
        full = f"{message} ({', '.join(where)})" if where else message
        super().__init__(full)

    def __reduce__(self) -> tuple[Any, ...]:
        # an error raised in a worker process travels back pickled: keep its location
        # and every attribute a subclass adds (``index`` of a BatchError...)
        return (
            _rebuild_storage_error,
            (type(self), self.reason, self.path, self.backend, dict(self.__dict__)),
        )


def _rebuild_storage_error(
    cls: type[StorageError],
    reason: str,
    path: str | None,
    backend: str | None,
    state: dict[str, Any],
) -> StorageError:
    # MemoryError allocates from a free list of its own and refuses to allocate a
    # subclass that way (ResourceLimitError); BaseException's allocator is the one its
    # constructor uses for subclasses too
    err = BaseException.__new__(cls) if issubclass(cls, MemoryError) else cls.__new__(cls)
    StorageError.__init__(err, reason, path=path, backend=backend)
    err.__dict__.update(state)
    return err


class NotFoundError(StorageError, FileNotFoundError):
    """The path (or its parent directory) does not exist."""


class AlreadyExistsError(StorageError, FileExistsError):
    """The target exists and the call did not ask to overwrite it."""


class IsADirectoryStorageError(StorageError, IsADirectoryError):
    """A file was expected but the path is a directory."""


class NotADirectoryStorageError(StorageError, NotADirectoryError):
    """A directory was expected but the path (or a parent) is a file."""


class DirectoryNotEmptyError(StorageError, OSError):
    """A plain delete was asked of a non-empty directory (use ``delete_all``)."""


class InvalidPathError(StorageError, ValueError):
    """The path is not a valid virtual path (empty, NUL byte, wrong type...)."""


class PathEscapeError(InvalidPathError):
    """The path resolves outside the backend's root."""


class SymlinkLoopError(StorageError, OSError):
    """Resolving a symlink chain came back to a link already visited."""


class UnknownBackendError(HcsflowError, ValueError):
    """No backend is registered under that name."""


class BackendRegistrationError(HcsflowError, ValueError):
    """A backend name is already registered (or the object is not a backend)."""


class UnsupportedFormatError(StorageError, ValueError):
    """No codec is registered for the path's extension."""


class DataFormatError(StorageError, TypeError):
    """The data cannot be written in the format the extension selects."""


class CorruptDataError(StorageError, ValueError):
    """Stored bytes could not be decoded (truncated or corrupt file)."""


class PickleRefusedError(StorageError, ValueError):
    """Loading a pickle-based format needs an explicit ``allow_pickle=True``."""


class CodecRefusal(DataFormatError):
    """A format refuses the data (raised by codecs and :func:`~hcsflow.storage.to_host_array`).

    Backends re-raise it as :class:`DataFormatError` naming the path; raised directly
    (outside a backend) it names no path.
    """


class ResourceLimitError(StorageError, MemoryError):
    """Reading would exceed a configured limit (decoded bytes, chunks, nesting depth).

    Raised before anything is allocated, from the sizes a file or store *declares*;
    ``limit`` and ``requested`` are in the unit the message names (bytes unless it says
    otherwise).
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        backend: str | None = None,
        limit: int | None = None,
        requested: int | None = None,
    ):
        self.limit = limit
        self.requested = requested
        super().__init__(message, path=path, backend=backend)


class BatchError(StorageError):
    """One item of a batch failed; ``index`` and ``path`` name it, ``__cause__`` says why."""

    def __init__(
        self, message: str, *, index: int, path: str | None = None, backend: str | None = None
    ):
        self.index = index
        super().__init__(message, path=path, backend=backend)


class BatchLengthError(StorageError, ValueError):
    """A batch call got a different number of data items and paths."""


# --------------------------------------------------------------------------- memory types


class MemoryTypeError(HcsflowError, TypeError):
    """An array is of an unsupported or unexpected memory type."""


class MemoryConversionError(HcsflowError, TypeError):
    """A conversion between two memory types failed or would need a forbidden copy.

    The attributes follow the specification exactly.
    """

    def __init__(self, source_type: str, target_type: str, method: str, reason: str):
        self.source_type = str(source_type)
        self.target_type = str(target_type)
        self.method = method
        self.reason = reason
        super().__init__(
            f"Failed to convert {self.source_type} → {self.target_type} via {method}: {reason}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.source_type, self.target_type, self.method, self.reason))


class DeviceError(HcsflowError, RuntimeError):
    """A device was asked for that does not exist or is not usable."""


class DtypeError(HcsflowError, ValueError):
    """A dtype conversion would lose information."""


class ShapeError(HcsflowError, ValueError):
    """An array has the wrong number of dimensions or mismatched shapes."""


class OutOfMemoryRecoveryError(HcsflowError, MemoryError):
    """Every out-of-memory recovery strategy failed; ``attempts`` tells the story."""

    def __init__(self, message: str, attempts: list[str] | None = None):
        self.attempts = list(attempts or [])
        story = "; ".join(self.attempts)
        super().__init__(f"{message}. Attempts: {story}" if story else message)


# --------------------------------------------------------------------------- zarr / plates


class ZarrError(StorageError):
    """An error from the zarr backend naming the store and key."""


class PlateLayoutError(ZarrError, ValueError):
    """Images cannot be placed on the plate (bad well name, collision, hole, mixed shapes)."""


class PlateMetadataError(ZarrError, ValueError):
    """OME-Zarr plate/well/image metadata is missing or malformed."""


class ObjectStoreError(ZarrError, OSError):
    """An object store could not be reached or denied access."""


class CorruptStoreError(ZarrError, ValueError):
    """A store's own metadata is malformed or unsafe.

    For example a path in NGFF metadata that is not a relative child path (``..``, an
    absolute path), a symlink target above the root, or an hcsflow node record that
    names no valid data array.  The message names the store, the key and the value.
    """


# --------------------------------------------------------------------------- plate readers


class PlateReaderError(StorageError):
    """A microscope export cannot be read; the message names the file concerned."""


class ExportMetadataError(PlateReaderError, ValueError):
    """A metadata file of an export (HTD, Harmony index, CellVoyager MLF/MRF/MES,
    OME-XML) is malformed, truncated, in an unknown XML namespace, or describes one
    plane twice."""


class MissingPlaneError(PlateReaderError, FileNotFoundError):
    """An export's metadata names image files (or wells) that are not there."""


class UnknownPlateFormatError(PlateLayoutError):
    """No plate reader recognises the directory (or an unknown format was named)."""


class ReaderRegistrationError(HcsflowError, ValueError):
    """A plate reader name is already registered (or the object is not a reader)."""


class UnknownFunctionError(HcsflowError, KeyError):
    """No registered or library function answers to ``name`` (the message says why:
    unknown, not installed, not an image function, ambiguous; with close matches)."""

    def __init__(self, message: str, *, name: str) -> None:
        super().__init__(message)
        self.name = name

    def __str__(self) -> str:
        # KeyError's own str() is the repr of its argument: quotes around a sentence
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:
        # raised in a worker process, it travels back to the caller pickled
        return (_unknown_function, (str(self.args[0]), self.name))


def _unknown_function(message: str, name: str) -> UnknownFunctionError:
    return UnknownFunctionError(message, name=name)


# --------------------------------------------------------------------------- pipelines


class PipelineError(HcsflowError):
    """Base for pipeline definition, compilation and execution errors."""


class ConfigurationError(PipelineError, ValueError):
    """A configuration value is invalid."""


class CompilationError(PipelineError, ValueError):
    """The pipeline cannot be compiled; ``problems`` lists every problem found."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"pipeline compilation found {len(self.problems)} problem(s):\n{lines}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.problems,))


class SpecialIOError(PipelineError, ValueError):
    """A special input/output contract was broken (wrong count, missing key...)."""


class StepExecutionError(PipelineError, RuntimeError):
    """A step failed while processing one well."""


class MaterializationError(PipelineError, RuntimeError):
    """A materialization function failed or returned something other than a path."""


class RunDirectoryError(PipelineError, FileExistsError):
    """The output directory already holds a previous run and overwrite was not asked for."""


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by SIGINT or SIGTERM after shutting its workers down.

    A ``KeyboardInterrupt`` (not an :class:`HcsflowError`), so code that catches errors
    never swallows it.  ``exit_code`` is the conventional status (130 for SIGINT, 143
    for SIGTERM); the message is one line saying whether the partial output was kept
    (resumable) or removed.
    """

    def __init__(self, message: str, *, signal_name: str, exit_code: int, kept: bool | None = None):
        super().__init__(message)
        self.signal_name = signal_name
        self.exit_code = exit_code
        self.kept = kept

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------- command line


class UsageError(HcsflowError, ValueError):
    """The ``hcsflow`` command was given an option, path or pipeline file it cannot use."""


# --------------------------------------------------------------------------- reporting

_LOCATION = re.compile(r"\s*\([^()]*\)$")


def _one_line(text: str) -> str:
    """A message on one line: a heading with a list of items below it becomes ``x: a; b``."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else ""
    items = "; ".join(line.removeprefix("- ") for line in lines[1:])
    return f"{lines[0]} {items}"


def describe_error(exc: BaseException) -> str:
    """One line saying what went wrong and why: ``exc``'s message, then its causes.

    Follows the ``__cause__`` chain (``raise ... from ...``) and appends each cause that
    adds something: a cause whose message the line already holds is left out, and so is a
    ``(path ..., backend ...)`` location the line already names.  Causes that are not
    hcsflow errors keep their type name (``ValueError: failed to read 131072 bytes``).
    A truncated TIFF in a batch reads: ``batch item 1 could not be loaded (path
    '/plate/A01_s2_w1.tif', backend 'disk'): cannot decode the file as tiff: failed to
    read 131072 bytes, got 65408``.
    """
    parts = [_one_line(str(exc)) or type(exc).__name__]
    seen = {id(exc)}
    cause = exc.__cause__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        text = _one_line(str(cause))
        line = ": ".join(parts)
        where = _LOCATION.search(text)
        # a "(path ..., backend ...)" or "(file.py, line 2)" the line already has, or that
        # is all a cause would add to a message the line already holds
        if where is not None and (where.group(0).strip() in line or text[: where.start()] in line):
            text = text[: where.start()]
        if text and text not in line:
            parts.append(
                text if isinstance(cause, HcsflowError) else f"{type(cause).__name__}: {text}"
            )
        cause = cause.__cause__
    return ": ".join(parts)
