"""``hcsflow functions [--search WORD]``: the functions a step can name."""

from __future__ import annotations

import argparse
import json
from typing import Any

from hcsflow.cli._common import add_command

__all__ = ["register", "run_functions"]

DESCRIPTION = """\
List the functions a pipeline step can name (FunctionStep(func="NAME")): hcsflow's own
functions and the scipy.ndimage, scikit-image and pyclesperanto functions exposed by
name, each with the memory types it has implementations for and its signature.

exit status: 0 functions were listed, 1 nothing matched (as grep), 2 bad usage."""

EPILOG = """\
examples:
  hcsflow functions                             # everything, grouped by source
  hcsflow functions --search threshold          # names or summaries containing a word
  hcsflow functions --source skimage.filters    # one library module
  hcsflow functions --excluded                  # library helpers that are not steps, and why
  hcsflow functions --search top_hat --json     # machine-readable"""


def register(subparsers: Any) -> None:
    """Add ``hcsflow functions``."""
    p = add_command(
        subparsers,
        "functions",
        summary="list the functions a pipeline step can name, with memory types and signatures",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    p.add_argument("--search", metavar="WORD", help="only names or summaries containing WORD")
    p.add_argument(
        "--source",
        metavar="NAME",
        help="only functions from this source (hcsflow, scipy.ndimage, skimage.filters, "
        "pyclesperanto...; a prefix is enough)",
    )
    p.add_argument("--excluded", action="store_true", help="list the excluded library helpers")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=run_functions)


def run_functions(args: argparse.Namespace) -> int:
    """Print the function list; returns the exit status (1 when a search finds nothing)."""
    from hcsflow.functions import list_functions
    from hcsflow.functions._catalog import excluded_functions

    if args.excluded:
        excluded = excluded_functions()
        word = (args.search or "").lower()
        rows = {k: v for k, v in excluded.items() if word in k.lower()}
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for name, reason in rows.items():
                print(f"{name}: {reason}")
        return 0 if rows else 1
    items = list_functions(args.search)
    if args.source:
        items = [i for i in items if i["source"].startswith(args.source)]
    if args.json:
        print(json.dumps(items, indent=2))
        return 0 if items else 1
    if not items:
        print(f"no function matches {args.search!r}")
        return 1
    source = None
    for item in items:
        if item["source"] != source:
            source = item["source"]
            print(f"\n# {source}")
        types = ",".join(item["memory_types"])
        print(f"{item['name']}  [{types}]  {item['signature']}")
        if item["summary"]:
            print(f"    {item['summary'][:110]}")
    print(f"\n{len(items)} functions")
    return 0
