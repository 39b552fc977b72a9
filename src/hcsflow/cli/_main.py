"""The ``hcsflow`` command: the parser, the subcommands, exit codes and error messages.

Each subcommand lives in its own module with a ``register(subparsers)`` function that
adds its parser and sets ``handler``; adding a command is one module and one entry in
:data:`COMMANDS`.  :func:`main` turns every error into one line on stderr and an exit
code (the table in docs/cli.md); ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hcsflow
from hcsflow.cli import _demo, _fsck, _functions, _info, _interrupt, _run, _validate
from hcsflow.cli._common import (
    EXIT_INTERNAL,
    EXIT_SIGINT,
    EXIT_SIGPIPE,
    EXIT_USAGE,
    EXIT_WELLS_FAILED,
    HelpFormatter,
)
from hcsflow.errors import HcsflowError, StepExecutionError, describe_error

__all__ = ["main", "build_parser", "COMMANDS", "exit_code_for"]

#: Each subcommand's registration function, in the order ``hcsflow --help`` lists them.
COMMANDS: tuple[Callable[[Any], None], ...] = (
    _demo.register,
    _run.register,
    _info.register,
    _validate.register,
    _fsck.register,
    _functions.register,
)

DESCRIPTION = """\
Run per-well image-processing pipelines over high-content-screening plates and write
the results as OME-Zarr or TIFF, with tables and a run manifest."""

EPILOG = """\
examples:
  hcsflow demo                                  # count nuclei on a generated plate
  hcsflow run count.py plate/ --out results/    # run a pipeline file over a plate
  hcsflow info plate/                           # what is in a plate folder or a run
  hcsflow validate results/                     # check the run's OME-Zarr plate

'hcsflow COMMAND --help' describes each command. Documentation: docs/cli.md."""


def _version() -> str:
    location = Path(hcsflow.__file__).parent
    return f"hcsflow {hcsflow.__version__} from {location} (Python {platform.python_version()})"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``hcsflow`` command."""
    parser = argparse.ArgumentParser(
        prog="hcsflow",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMANDS:
        register(sub)
    return parser


def exit_code_for(exc: BaseException) -> int:
    """The exit status for an error that ended a command (see docs/cli.md).

    A failing well under ``--fail-fast`` is 1, like any failed well; errors about what the
    user gave (hcsflow's typed errors, files that cannot be read or written, a missing
    optional framework) are 2; an interruption carries its own code (130 for Ctrl-C); any
    other exception is a bug in hcsflow: 3.
    """
    if isinstance(exc, KeyboardInterrupt):
        code = getattr(exc, "exit_code", EXIT_SIGINT)
        return code if isinstance(code, int) else EXIT_SIGINT
    if isinstance(exc, StepExecutionError):
        return EXIT_WELLS_FAILED
    if isinstance(exc, HcsflowError | OSError | ImportError):
        return EXIT_USAGE
    return EXIT_INTERNAL


def _quiet_broken_pipe() -> None:
    # `hcsflow info x | head`: the reader left; say nothing more (Python's advice).
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``hcsflow`` command; returns the exit status.

    :func:`hcsflow.cli.main` calls it with SIGINT and SIGTERM handled already.
    """
    args = build_parser().parse_args(argv)
    command = f"hcsflow {args.command}"
    _interrupt.note("")  # each command says more where it can
    try:
        _interrupt.checkpoint()
        status = int(args.handler(args))
        sys.stdout.flush()  # a closed pipe shows up here, not at interpreter exit
        return status
    except BrokenPipeError:
        _quiet_broken_pipe()
        return EXIT_SIGPIPE
    except KeyboardInterrupt as exc:  # Ctrl-C, or the run's own interruption error
        _interrupt.stopping()  # a second Ctrl-C must not cut this line short
        message = describe_error(exc) if str(exc) else "interrupted"
        print(f"{command}: {message}", file=sys.stderr)
        if args.debug:
            traceback.print_exc()
        return exit_code_for(exc)
    except Exception as exc:
        interrupted = _interrupt.raised()
        if interrupted is not None:  # turned into this error by the code it landed in
            _interrupt.stopping()
            print(f"{command}: {interrupted}", file=sys.stderr)
            return exit_code_for(interrupted)
        code = exit_code_for(exc)
        reason = describe_error(exc)
        if code == EXIT_INTERNAL:
            reason = f"{type(exc).__name__}: {reason} (an unexpected error"
            reason += "; the traceback follows)" if args.debug else "; --debug shows where)"
        print(f"{command}: error: {reason}", file=sys.stderr)
        if args.debug:
            traceback.print_exc()
        return code
