"""SIGINT and SIGTERM during a command: one line on stderr and the shell's exit status.

Left to Python, SIGTERM kills a command silently and Ctrl-C prints a traceback
wherever it lands (an import, the parser).  :func:`hcsflow.cli.main` installs
:class:`CommandInterrupts` before it imports the commands, so a signal at any moment
ends the command with :class:`~hcsflow.errors.RunInterrupted`: one line, exit 130 or
143.  ``hcsflow run`` says in that line what the interruption left behind;
:func:`~hcsflow.pipeline.run_pipeline` installs its own handlers while it runs (they
stop the workers first) and puts these back when it returns.

An exception raised by a signal handler lands wherever the main thread is, and some
code does not pass it on: an extension module importing another turns it into an
``ImportError``, which a ``try: import x / except ImportError`` fallback then swallows.
So imports run with the interruption held (:meth:`CommandInterrupts.held`, it is
raised when they are done), and an interruption that was swallowed or turned into
another error is still the one reported (:func:`raised`, :func:`checkpoint`).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType, TracebackType

from hcsflow.errors import RunInterrupted

__all__ = ["CommandInterrupts", "note", "stopping", "raised", "checkpoint", "held"]

_ACTIVE: list[CommandInterrupts] = []


class CommandInterrupts:
    """Turns the first SIGINT or SIGTERM into :class:`RunInterrupted` (a context manager).

    Later signals are ignored: they arrive while the command is already stopping and
    reporting.  ``note`` completes the message (``"; nothing was written"``).  Outside
    the main thread (where Python cannot install handlers) it does nothing.

    ``keep=True`` (the process is the command, about to exit) ignores both signals
    when the block ends instead of putting the old handlers back: the command has
    reported, and a signal landing in Python's teardown (joining the pools' threads,
    multiprocessing's exit handlers, and at last the default handlers Python puts back)
    would print a traceback after the report, or end the process silently.
    """

    def __init__(self, *, keep: bool = False) -> None:
        self.note = ""
        self.keep = keep
        #: the signal that interrupts the command, once one came
        self.signum: int | None = None
        self.reported = False
        self._holding = 0
        self._old: dict[int, object] = {}

    def __enter__(self) -> CommandInterrupts:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._old[signum] = signal.signal(signum, self)
        _ACTIVE.append(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _ACTIVE.remove(self)
        self.reported = self.reported or self.keep
        for signum, handler in self._old.items():
            signal.signal(signum, signal.SIG_IGN if self.keep else handler)  # type: ignore[arg-type]

    @property
    def raised(self) -> RunInterrupted | None:
        """The interruption, once a signal came (its message says what ``note`` says now)."""
        if self.signum is None:
            return None
        name = signal.Signals(self.signum).name
        return RunInterrupted(
            f"interrupted by {name}{self.note}", signal_name=name, exit_code=128 + self.signum
        )

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None or self.reported:
            return
        self.signum = signum
        if not self._holding:
            raise self._raise()

    def _raise(self) -> RunInterrupted:
        exc = self.raised
        assert exc is not None
        return exc

    @contextlib.contextmanager
    def held(self, *, check: bool = True) -> Iterator[None]:
        """Hold an interruption until the block ends, then raise it (for imports, and
        while a run's own handlers are in charge); ``check=False`` leaves raising it to
        the caller's :meth:`checkpoint` (after it said what the block left behind)."""
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1
        if check:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Raise the interruption again if one came and the command went on regardless."""
        if self.signum is not None and not self.reported and not self._holding:
            raise self._raise()

    def report(self, command: str, exc: BaseException) -> int:
        """Print the interruption's line; the exit status."""
        self.reported = True
        print(f"{command}: {exc or 'interrupted'}", file=sys.stderr)
        code = getattr(exc, "exit_code", 130)
        return code if isinstance(code, int) else 130


def _active() -> CommandInterrupts | None:
    return _ACTIVE[-1] if _ACTIVE else None


def note(text: str) -> None:
    """What an interruption of the running command leaves behind, from now on."""
    active = _active()
    if active is not None:
        active.note = text


def stopping() -> None:
    """The command is reporting its end: a signal from now on is ignored."""
    active = _active()
    if active is not None:
        active.reported = True


def raised() -> RunInterrupted | None:
    """The interruption of the running command, if a signal came (even one swallowed)."""
    active = _active()
    return None if active is None else active.raised


def checkpoint() -> None:
    """Raise the running command's interruption again if code swallowed it."""
    active = _active()
    if active is not None:
        active.checkpoint()


@contextlib.contextmanager
def held(*, check: bool = True) -> Iterator[None]:
    """Hold the running command's interruption during the block (see the module)."""
    active = _active()
    if active is None:
        yield
        return
    with active.held(check=check):
        yield
