"""``hcsflow fsck PATH``: list (and with ``--fix`` remove) debris of writers that died."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["register", "run_fsck"]


DESCRIPTION = """\
List what writers that died left behind under PATH (temporary files of atomic writes,
partial zarr nodes, unpublished well versions) and, with --fix, remove what is safe to
remove: never anything a live writer on this host may still own.

exit status: 0 nothing removable is left, 1 removable debris is left (run with --fix),
2 bad usage or PATH cannot be read."""

EPILOG = """\
examples:
  hcsflow fsck results/                     # list
  hcsflow fsck results/ --fix               # remove what is safe to remove
  hcsflow fsck screen.zarr --fix --older-than 3600
  hcsflow fsck results/ --json"""


def register(sub: Any) -> None:
    """Add the ``fsck`` subcommand to the ``hcsflow`` subparsers."""
    from hcsflow.cli._common import add_command, local_path

    p = add_command(
        sub,
        "fsck",
        summary="list (and with --fix remove) temporary files and partial zarr nodes "
        "left by writers that died",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    p.add_argument(
        "path",
        type=local_path,
        help="a local directory: a disk backend root, a zarr store or a run output",
    )
    p.add_argument(
        "--fix", action="store_true", help="remove what is safe to remove (never a live writer's)"
    )
    p.add_argument(
        "--older-than",
        type=float,
        default=None,
        metavar="SECONDS",
        help="also remove entries whose writer cannot be identified (another host, an "
        "older store) once unchanged for SECONDS",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=run_fsck)


def _human(nbytes: int) -> str:
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{nbytes} B"


def run_fsck(args: argparse.Namespace) -> int:
    """Run ``hcsflow fsck``; exit status 1 when removable debris is left in place."""
    from hcsflow.storage import find_debris, remove_debris

    found = find_debris(args.path, older_than=args.older_than)
    removable = [d for d in found if d.removable]
    removed = remove_debris(args.path, removable) if args.fix else 0
    if args.json:
        print(
            json.dumps(
                {
                    "path": args.path,
                    "entries": [
                        {
                            "path": d.path,
                            "what": d.what,
                            "reason": d.reason,
                            "bytes": d.size,
                            "removable": d.removable,
                        }
                        for d in found
                    ],
                    "removed": removed,
                },
                indent=2,
            )
        )
    else:
        for d in found:
            verdict = "removable" if d.removable else "kept"
            print(f"{d.path}\t{d.what}\t{_human(d.size)}\t{verdict}: {d.reason}")
        size = _human(sum(d.size for d in removable))
        kept = len(found) - len(removable)
        if not found:
            print(f"{args.path}: no debris")
        elif args.fix:
            print(f"removed {removed} of {len(removable)} removable entries ({size}); {kept} kept")
        else:
            print(
                f"{len(found)} entries, {len(removable)} removable ({size}), {kept} kept; "
                "run with --fix to remove them"
            )
    if args.fix:
        return 0 if removed == len(removable) else 1
    return 1 if removable else 0
