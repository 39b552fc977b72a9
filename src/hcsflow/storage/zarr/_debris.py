"""Crash debris of the zarr backend: what it is, and removing it without hurting a writer.

A writer killed part-way leaves, inside a file node or a well:

* **data arrays** ``data<tag>`` that ``zarr.json`` does not name (a write that never
  switched, or an array replaced while its remover died);
* **temporary files** ``<name>.<tag>.partial`` (metadata being replaced atomically);
* **trees being removed** ``<name>.<hash>.deleting`` (renamed first, then deleted).

Every write of a node removes its node's debris (:func:`clean_node`).  Data arrays
are *born locked*: created under a ``.partial`` name, locked (``flock``) and only then
renamed to ``data<tag>``, and the writer keeps the lock until it has switched
``zarr.json`` and cleaned up.  So an unnamed array whose lock can be taken belongs to
a writer that finished or died and is removed; a locked one belongs to a writer at
work and is left alone.  ``.partial`` names go when their writer is dead; ``.deleting``
trees can always be finished by anyone.  On object stores (no locks, no renames)
only arrays and temporaries of dead writers of this host are removed.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator

from hcsflow.storage._debris import tag_of, writer_state
from hcsflow.storage.zarr._io import META_FILES, Location
from hcsflow.storage.zarr._localfs import LocalFS, partial_name

__all__ = ["building", "clean_node", "clean_in_flight", "debris_kind", "DATA_NAME", "IN_FLIGHT"]

#: a file node's data array: "data" + a writer tag (older stores: 8 random hex digits)
DATA_NAME = re.compile(r"^data(?:[0-9a-f]{32}|[0-9a-f]{8})$")
#: names of in-flight work: "<name>.<32 hex>.partial" / ".deleting"
IN_FLIGHT = re.compile(r"\.[0-9a-f]{32}\.(?:partial|deleting)$")


@contextlib.contextmanager
def building(loc: Location) -> Iterator[None]:
    """Hold a new data array's lock from before it has its name until the block ends."""
    fs = loc.fs
    if not isinstance(fs, LocalFS):
        yield
        return
    fd = fs.born_locked_dir(loc.path, partial_name(loc.name))
    try:
        yield
    finally:
        os.close(fd)


def debris_kind(
    loc: Location, name: str, current: str | None | Callable[[], str | None]
) -> str | None:
    """Why the entry ``name`` in the node ``loc`` is debris, or ``None`` if it is not.

    ``current``: the data array the node's ``zarr.json`` names (never debris), or a
    function reading it.  A function is called only *after* the array was found
    unlocked (or its writer dead): from then on no writer can switch ``zarr.json`` to
    it any more, so the answer read then cannot go stale.
    """
    if name in META_FILES:
        return None
    if DATA_NAME.match(name):
        tag = name[4:]
        if len(tag) != 32:
            return None  # an older store's array: whose it is cannot be told
        state = writer_state(tag)
        if state == "dead":
            why = "data array of a writer that died"
        else:
            fs = loc.fs
            if not isinstance(fs, LocalFS) or fs.locked(loc.child(name).path):
                return None
            why = "data array no zarr.json names, its writer finished"
        named = current() if callable(current) else current
        return None if name == named else why
    match = IN_FLIGHT.search(name)
    if match is None:
        return None
    if name.endswith(".deleting"):
        return "tree whose removal was interrupted" if isinstance(loc.fs, LocalFS) else None
    if writer_state(tag_of(name)) == "dead":
        return "temporary file of a writer that died"
    return None


def clean_node(loc: Location, current: Callable[[], str | None]) -> int:
    """Remove the debris inside the node ``loc`` (see the module doc); how many entries.

    ``current`` reads the data array the node's ``zarr.json`` names now.
    """
    removed = 0
    for name in loc.list():
        if debris_kind(loc, name, current) is not None:
            loc.child(name).remove()
            removed += 1
    return removed


def clean_in_flight(loc: Location) -> int:
    """Remove in-flight debris (``.partial``/``.deleting`` of dead writers) in a local group.

    Object stores have neither (their writes are single PUTs), so nothing is listed there.
    """
    if not isinstance(loc.fs, LocalFS):
        return 0
    removed = 0
    for name in loc.list():
        if IN_FLIGHT.search(name) and debris_kind(loc, name, None) is not None:
            loc.child(name).remove()
            removed += 1
    return removed
