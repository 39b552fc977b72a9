"""What every ``hcsflow`` subcommand shares: exit codes, the help format, option groups."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = [
    "EXIT_OK",
    "EXIT_WELLS_FAILED",
    "EXIT_USAGE",
    "EXIT_INTERNAL",
    "EXIT_SIGINT",
    "EXIT_SIGTERM",
    "EXIT_SIGPIPE",
    "EXECUTORS",
    "HelpFormatter",
    "add_command",
    "add_parallel_options",
    "layout_from",
    "add_storage_options",
    "parse_storage_options",
    "path_or_url",
    "local_path",
    "RUN_PLATE_NAME",
]

EXIT_OK = 0
#: Some wells failed (``run``, ``demo``) or the plate has problems (``validate``).
EXIT_WELLS_FAILED = 1
#: Bad usage or input: an option, a path, a pipeline file, a plate hcsflow cannot read.
EXIT_USAGE = 2
#: An error hcsflow did not expect (a bug): the message asks for ``--debug``.
EXIT_INTERNAL = 3
#: Interrupted by Ctrl-C (SIGINT) or SIGTERM: 128 + the signal number, as shells report it.
EXIT_SIGINT = 130
EXIT_SIGTERM = 143
#: The reader of the output went away (``hcsflow info x | head``), as git and coreutils do.
EXIT_SIGPIPE = 141

EXECUTORS = ("inprocess", "threads", "processes", "dask")

#: The OME-Zarr plate inside a run directory written with the zarr backend.
RUN_PLATE_NAME = "images.zarr"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples keep their line breaks; options show their defaults.

    Defaults are shown as ``(default: X)`` unless the help already says it, or the default
    is ``None``/``False`` (an option that is off, or whose default the help explains).
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"


def _debug_parent() -> argparse.ArgumentParser:
    # SUPPRESS: a subcommand's --debug must not reset one given before the subcommand.
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the full traceback of an error",
    )
    return parent


def add_command(
    subparsers: Any, name: str, *, summary: str, description: str, epilog: str
) -> argparse.ArgumentParser:
    """Add subcommand ``name``: one-line ``summary`` for ``hcsflow --help``, ``description``
    and ``epilog`` (examples) for ``hcsflow NAME --help``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help=summary,
        description=description,
        epilog=epilog,
        formatter_class=HelpFormatter,
        parents=[_debug_parent()],
    )
    return parser


def add_parallel_options(
    parser: argparse.ArgumentParser,
    *,
    workers: int | None,
    executor: str | None,
    inherited: str = "",
) -> None:
    """``--workers`` and ``--executor``; ``inherited`` explains a ``None`` default."""
    parser.add_argument(
        "--workers",
        type=int,
        default=workers,
        metavar="N",
        help="wells processed in parallel"
        + (f" (default: {inherited}, else 1)" if inherited else ""),
    )
    parser.add_argument(
        "--executor",
        choices=EXECUTORS,
        default=executor,
        help="how wells run in parallel: in this process, in threads, in worker processes "
        "or on a local Dask cluster"
        + (f" (default: {inherited}, else processes)" if inherited else ""),
    )


def layout_from(spec: str | None) -> Any:
    """The plate layout named on the command line (``None``: detected from the file names)."""
    from hcsflow.pipeline import ImageXpressLayout, OperaPhenixLayout, RegexLayout

    if spec is None:
        return None
    named = {"imagexpress": ImageXpressLayout, "operaphenix": OperaPhenixLayout}
    if spec.lower() in named:
        return named[spec.lower()]()
    return RegexLayout(spec)


def add_storage_options(parser: argparse.ArgumentParser, what: str) -> None:
    """``--storage-options JSON``: fsspec options for the URLs of ``what``."""
    parser.add_argument(
        "--storage-options",
        default=None,
        metavar="JSON",
        help=f'fsspec options for {what}, e.g. \'{{"endpoint_url": '
        f'"http://minio:9000"}}\' (credentials: the environment, as usual)',
    )


def parse_storage_options(text: str | None) -> dict[str, Any] | None:
    """The ``--storage-options`` JSON object (``None`` when not given)."""
    from hcsflow.errors import UsageError

    if text is None:
        return None
    try:
        options = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--storage-options is not JSON: {exc}") from exc
    if not isinstance(options, dict):
        raise UsageError("--storage-options must be a JSON object")
    return options


def path_or_url(text: str) -> str:
    """A path or fsspec URL argument; a ``file://`` (or ``local://``) URL is the local
    path it names."""
    from hcsflow.storage._fsspec_paths import as_local_path

    return as_local_path(text)


def local_path(text: str) -> str:
    """A local path argument (``file://`` and ``local://`` URLs too); any other URL is
    refused as usage."""
    text = path_or_url(text)
    if "://" in text:
        raise argparse.ArgumentTypeError(f"{text!r} is a URL; this command needs a local path")
    return text


def is_zarr_group(path: Path) -> bool:
    """Whether ``path`` is a zarr group (format 3 or 2) on the local disk."""
    return (path / "zarr.json").is_file() or (path / ".zattrs").is_file()
