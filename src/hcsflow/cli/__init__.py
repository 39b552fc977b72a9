"""The ``hcsflow`` command line: ``demo``, ``run``, ``info``, ``validate``, ``functions``.

See ``docs/cli.md``.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from hcsflow.cli._interrupt import CommandInterrupts

__all__ = ["main", "build_parser", "demo_pipeline"]

_LAZY = {"build_parser": "hcsflow.cli._main", "demo_pipeline": "hcsflow.cli._demo"}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hcsflow`` command; returns the exit status.

    SIGINT and SIGTERM are handled from the first moment: the commands are imported
    after the handlers are in place (see :mod:`hcsflow.cli._interrupt`).  Called without
    ``argv`` (as the ``hcsflow`` command), the handlers stay until the process exits;
    with ``argv`` (from Python), the previous handlers are put back.
    """
    with CommandInterrupts(keep=argv is None) as interrupts:
        interrupts.note = "; the command had not started, nothing was written"
        try:
            with interrupts.held():
                from hcsflow.cli._main import main as command
            return command(argv)
        except KeyboardInterrupt as exc:  # before the command could report it
            return interrupts.report("hcsflow", exc)
        except Exception:
            if interrupts.raised is None:
                raise
            # the interruption, turned into another error by the code it landed in
            return interrupts.report("hcsflow", interrupts.raised)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hcsflow.cli' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
