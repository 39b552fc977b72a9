"""The registry of plate readers: names, detection order, install hints.

Like the storage backend registry: :meth:`ReaderRegistry.register` returns a function
that unregisters, a taken name is refused, and built-in entries are created on first
use (naming a reader never imports another reader's libraries).  Detection tries the
readers in order of ``priority`` (lower first; registration order breaks ties): the
OME-Zarr, Harmony, CellVoyager, ImageXpress and OME-TIFF readers, then the fallback
reader of plain folders of named files.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from hcsflow.errors import ReaderRegistrationError, UnknownPlateFormatError
from hcsflow.readers._base import PlateReader
from hcsflow.readers._source import PlateSource

__all__ = [
    "ReaderRegistry",
    "reader_registry",
    "register_reader",
    "get_reader",
    "detect_reader",
    "DEFAULT_PRIORITY",
]

DEFAULT_PRIORITY = 50
"""Priority of a reader registered without one: after OME-Zarr, Harmony and CellVoyager
(recognised by files no other format has), before ImageXpress, OME-TIFF and the
fallback of named files."""


@dataclass
class _Entry:
    priority: int
    order: int
    reader: PlateReader | None
    factory: Callable[[], PlateReader] | None
    hint: str | None


class ReaderRegistry:
    """A thread-safe mapping from format names to :class:`PlateReader` instances."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._entries: dict[str, _Entry] = {}
        self._counter = 0

    def _add(
        self,
        name: str,
        reader: PlateReader | None,
        factory: Callable[[], PlateReader] | None,
        priority: int,
        hint: str | None,
    ) -> None:
        if not isinstance(name, str) or not name or name != name.strip().lower():
            raise ReaderRegistrationError(
                f"a reader name is a non-empty lower-case string, got {name!r}"
            )
        with self._lock:
            if name in self._entries:
                raise ReaderRegistrationError(
                    f"a plate reader named {name!r} is already registered"
                )
            self._counter += 1
            self._entries[name] = _Entry(priority, self._counter, reader, factory, hint)

    def register(
        self, reader: PlateReader, *, priority: int = DEFAULT_PRIORITY
    ) -> Callable[[], None]:
        """Register ``reader`` under ``reader.name``; return a function that unregisters it.

        Raises :class:`ReaderRegistrationError` when the name is taken or the object is
        not a :class:`PlateReader`.
        """
        if not isinstance(reader, PlateReader):
            raise ReaderRegistrationError(
                f"a plate reader must be a PlateReader instance, got {type(reader).__name__}"
            )
        name = getattr(reader, "name", None)
        if not isinstance(name, str):
            raise ReaderRegistrationError(f"{type(reader).__name__} has no str `name`")
        self._add(name, reader, None, priority, None)

        def unregister() -> None:
            with self._lock:
                entry = self._entries.get(name)
                if entry is not None and entry.reader is reader:
                    del self._entries[name]

        return unregister

    def register_factory(
        self,
        name: str,
        factory: Callable[[], PlateReader],
        *,
        priority: int = DEFAULT_PRIORITY,
        hint: str | None = None,
    ) -> None:
        """Register a reader created on first use; ``hint`` is shown when creating it
        fails for lack of a package (``"pip install ..."``)."""
        self._add(name, None, factory, priority, hint)

    def get(self, name: str) -> PlateReader:
        """The reader registered under ``name`` (:class:`UnknownPlateFormatError` if none)."""
        key = name.strip().lower() if isinstance(name, str) else name
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                known = ", ".join(self.names()) or "none"
                raise UnknownPlateFormatError(f"unknown plate format {name!r} (known: {known})")
            if entry.reader is None:
                assert entry.factory is not None
                try:
                    entry.reader = entry.factory()
                except ImportError as exc:
                    hint = f"; {entry.hint}" if entry.hint else ""
                    raise ImportError(
                        f"the {key!r} plate reader is not available: {exc}{hint}"
                    ) from exc
                entry.factory = None
            return entry.reader

    __getitem__ = get

    def names(self) -> list[str]:
        """Registered names in detection order."""
        with self._lock:
            items = sorted(self._entries.items(), key=lambda kv: (kv[1].priority, kv[1].order))
        return [k for k, _ in items]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.strip().lower() in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def detect(self, source: PlateSource) -> PlateReader:
        """The first reader (in detection order) that recognises ``source``.

        Raises :class:`UnknownPlateFormatError` listing what every reader looked for.
        """
        source.require_dir()
        tried = []
        for name in self.names():
            reader = self.get(name)
            if reader.detect(source):
                return reader
            tried.append((name, reader))
        reasons = "\n".join(f"  - {n} ({r.title}): {r.explain(source)}" for n, r in tried)
        raise UnknownPlateFormatError(
            f"no plate reader recognises the directory:\n{reasons}\n"
            f"Name the format (--format, one of {', '.join(self.names())}) or the file "
            "layout (--layout REGEX) to read it anyway",
            path=source.root,
            backend=source.backend,
        )


def _builtin_registry() -> ReaderRegistry:
    reg = ReaderRegistry()

    def zarr_reader() -> PlateReader:
        from hcsflow.readers._omezarr import OmeZarrReader

        return OmeZarrReader()

    def harmony() -> PlateReader:
        from hcsflow.readers._harmony import HarmonyReader

        return HarmonyReader()

    def cellvoyager() -> PlateReader:
        from hcsflow.readers._cellvoyager import CellVoyagerReader

        return CellVoyagerReader()

    def imagexpress() -> PlateReader:
        from hcsflow.readers._imagexpress import ImageXpressReader

        return ImageXpressReader()

    def ome_tiff() -> PlateReader:
        from hcsflow.readers._ometiff import OmeTiffReader

        return OmeTiffReader()

    def files() -> PlateReader:
        from hcsflow.readers._layouts import FileLayoutReader

        return FileLayoutReader()

    reg.register_factory("ome-zarr", zarr_reader, priority=10)
    reg.register_factory("harmony", harmony, priority=20)
    reg.register_factory("cellvoyager", cellvoyager, priority=30)
    reg.register_factory("imagexpress", imagexpress, priority=60)
    reg.register_factory("ome-tiff", ome_tiff, priority=70)
    reg.register_factory("files", files, priority=1000)
    return reg


reader_registry: ReaderRegistry = _builtin_registry()
"""The default registry :func:`~hcsflow.readers.read_plate` uses."""


def register_reader(reader: PlateReader, *, priority: int = DEFAULT_PRIORITY) -> Callable[[], None]:
    """Register ``reader`` in the default :data:`reader_registry`; returns an unregister."""
    return reader_registry.register(reader, priority=priority)


def get_reader(name: str) -> PlateReader:
    """The reader registered under ``name`` in the default registry."""
    return reader_registry.get(name)


def detect_reader(source: PlateSource) -> PlateReader:
    """The reader of the default registry that recognises ``source``."""
    return reader_registry.detect(source)
