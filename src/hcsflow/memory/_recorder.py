"""Observing conversions and OOM fallbacks: an opt-in, per-context recorder."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

__all__ = ["ConversionEvent", "ConversionRecorder", "record_conversions", "emit"]


@dataclass(frozen=True)
class ConversionEvent:
    """One observed step.

    ``route`` is ``"noop"``, ``"dlpack"``, ``"cuda_array_interface"``, ``"transfer"``
    (the host/device move the target needs), ``"host_copy"`` (a copy taken because memory
    could not be shared, allowed by ``allow_cpu_roundtrip``), ``"device_copy"``, a stacking
    step (``"stack"``) or an out-of-memory fallback (``"oom:<strategy>"``).
    """

    route: str
    source: str
    target: str
    bytes_copied: int
    seconds: float
    detail: str = ""


@dataclass
class ConversionRecorder:
    """Collects :class:`ConversionEvent` objects emitted in its context."""

    events: list[ConversionEvent] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def bytes_copied(self) -> int:
        """Total bytes copied by every recorded event."""
        with self._lock:
            return sum(e.bytes_copied for e in self.events)

    def routes(self) -> list[str]:
        """The route of each event, in order."""
        with self._lock:
            return [e.route for e in self.events]

    def _add(self, event: ConversionEvent) -> None:
        with self._lock:
            self.events.append(event)


# A tuple, not a list, so a nested context never mutates what an outer context sees.
_ACTIVE: ContextVar[tuple[ConversionRecorder, ...]] = ContextVar(
    "hcsflow_memory_recorders", default=()
)


@contextmanager
def record_conversions() -> Iterator[ConversionRecorder]:
    """Record every conversion made in this context (this thread / task) into the yielded object.

    Context variables do not leak into threads started elsewhere, so wells processed in
    parallel each see only their own conversions.  Nested recorders all receive the events.
    """
    recorder = ConversionRecorder()
    token = _ACTIVE.set((*_ACTIVE.get(), recorder))
    try:
        yield recorder
    finally:
        _ACTIVE.reset(token)


def active() -> tuple[ConversionRecorder, ...]:
    """The recorders of this context (empty when nothing records)."""
    return _ACTIVE.get()


def recording() -> bool:
    """Whether any recorder is active in this context."""
    return bool(_ACTIVE.get())


def emit(
    route: str, source: str, target: str, bytes_copied: int, seconds: float, detail: str = ""
) -> None:
    """Send one event to every active recorder of this context."""
    recorders = _ACTIVE.get()
    if not recorders:
        return
    event = ConversionEvent(route, str(source), str(target), int(bytes_copied), seconds, detail)
    for recorder in recorders:
        recorder._add(event)
