"""Find and remove the debris of writers that died, never the files of a live writer.

:func:`find_debris` walks a directory tree (disk backend roots, zarr stores, OME-Zarr
plates, any mix) without following symlinks and reports every in-flight name hcsflow
writers make, with the reason it is or is not safe to remove:

===============================================  ==========================================
entry                                            removable when
===============================================  ==========================================
``.hcsflow-<name>.<tag>.tmp`` (disk temporary)   its writer is dead (writer tag, see below)
``.hcsflow-<name>.<zeros>.tmp`` (publish window) no writer holds its lock (it is named
                                                 for microseconds)
``<name>.<hash>.deleting`` (zarr removal)        always (any process may finish a removal)
``<name>.<tag>.partial`` (zarr temporary, build) its writer is dead
``.<name>.<hash>.partial`` (zarr build claim)    the builder it names is dead
``data<tag>`` no ``zarr.json`` names (zarr file) its writer is dead, or finished (lock free)
===============================================  ==========================================

A writer tag (:mod:`hcsflow.storage._debris`) names the host, boot, process and its
start time, so "dead" is a fact for writers of this machine.  Entries whose writer
cannot be identified (another host, a store written by an older hcsflow, unreferenced
OME-Zarr field groups) are listed but kept, unless ``older_than`` seconds have passed
since they last changed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat as stat_mod
from collections.abc import Iterable
from dataclasses import dataclass

from hcsflow import paths as vpaths
from hcsflow.errors import NotADirectoryStorageError, NotFoundError
from hcsflow.storage._contain import EscapeError, Tree
from hcsflow.storage._debris import (
    WINDOW_TAG,
    age_seconds,
    lock_held,
    tag_of,
    writer_state,
)
from hcsflow.storage.disk._publish import is_temp_name, window_left_behind

__all__ = ["Debris", "find_debris", "remove_debris"]

_IN_FLIGHT = re.compile(r"\.([0-9a-f]{32})\.(partial|deleting)$")
_DATA = re.compile(r"^data([0-9a-f]{32}|[0-9a-f]{8})$")
_FIELD = re.compile(r"^\d+(v[0-9a-f]{8})?$")
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


@dataclass(frozen=True)
class Debris:
    """One entry left by an interrupted write."""

    path: str
    """Real path of the entry."""
    what: str
    """What it is (``"disk temporary file"``, ``"zarr data array"``...)."""
    reason: str
    """Why it is (or is not) safe to remove."""
    size: int
    """Bytes it holds (a directory: everything below it)."""
    removable: bool
    """Whether :func:`remove_debris` removes it (its writer cannot be at work)."""


def _size(dir_fd: int, name: str) -> int:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return 0
    if not stat_mod.S_ISDIR(st.st_mode):
        return st.st_size
    total = 0
    try:
        fd = os.open(name, _DIR, dir_fd=dir_fd)
    except OSError:
        return 0
    try:
        for _, _, files, sub_fd in os.fwalk(".", dir_fd=fd, follow_symlinks=False):
            for f in files:
                with contextlib.suppress(OSError):
                    total += os.stat(f, dir_fd=sub_fd, follow_symlinks=False).st_size
    finally:
        os.close(fd)
    return total


def _ctime(dir_fd: int, name: str) -> float:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_ctime
    except FileNotFoundError:
        return 0.0


def _locked(dir_fd: int, name: str) -> bool:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        return lock_held(fd)
    finally:
        os.close(fd)


def _by_tag(tag: str | None, age: float, older_than: float | None) -> tuple[bool, str]:
    state = writer_state(tag)
    if state == "dead":
        return True, "its writer process is gone"
    if state == "alive":
        pid = int(tag[12:18], 16) if tag else 0
        return False, f"its writer (pid {pid}) is still running"
    if older_than is not None and age > older_than:
        return True, f"writer unknown (another host or an older store), unchanged for {age:.0f} s"
    return False, "writer unknown (another host or an older store); kept"


def _node_data(dir_fd: int) -> tuple[bool, str | None, list[str] | None]:
    """(is a zarr node, data array its zarr.json names, well field paths) of a directory."""
    try:
        fd = os.open("zarr.json", os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError:
        return False, None, None
    try:
        if os.fstat(fd).st_size > 64 << 20:
            return True, None, None
        raw = os.read(fd, 64 << 20)
    finally:
        os.close(fd)
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return True, None, None
    attrs = doc.get("attributes") if isinstance(doc, dict) else None
    if not isinstance(attrs, dict):
        return True, None, None
    info = attrs.get("hcsflow")
    data = info.get("data") if isinstance(info, dict) else None
    ome = attrs.get("ome") if isinstance(attrs.get("ome"), dict) else attrs
    well = ome.get("well") if isinstance(ome, dict) else None
    images = well.get("images") if isinstance(well, dict) else None
    fields = (
        [str(i.get("path")) for i in images if isinstance(i, dict)]
        if isinstance(images, list)
        else None
    )
    return True, data if isinstance(data, str) else None, fields


def _classify(
    dir_fd: int,
    name: str,
    node: tuple[bool, str | None, list[str] | None],
    in_progress: bool,
    older_than: float | None,
) -> tuple[str, bool, str] | None:
    """(what, removable, reason) for debris, ``None`` for an ordinary entry.

    ``node``: what the directory's ``zarr.json`` says; ``in_progress``: the directory has
    no ``zarr.json`` and holds only data arrays and in-flight names (a file node whose
    writer never published it).
    """
    _, data, fields = node
    age = age_seconds(_ctime(dir_fd, name))
    if is_temp_name(name):
        tag = tag_of(name)
        if tag == WINDOW_TAG:
            ok = window_left_behind(dir_fd, name)
            why = "its writer died between link and rename" if ok else "a writer is using it"
            return "disk publish window", ok, why
        ok, why = _by_tag(tag, age, older_than)
        return "disk temporary file", ok, why
    match = _IN_FLIGHT.search(name)
    if match is not None:
        if match.group(2) == "deleting":
            return "zarr tree being removed", True, "any process may finish a removal"
        if name.startswith(".") and writer_state(match.group(1)) == "unknown":
            # a build claim: a symlink naming its builder's tagged build directory
            try:
                target = os.readlink(name, dir_fd=dir_fd)
            except OSError:
                return None
            ok, why = _by_tag(tag_of(target), age, older_than)
            return "zarr node build claim", ok, why
        ok, why = _by_tag(match.group(1), age, older_than)
        return "zarr temporary file", ok, why
    data_match = _DATA.match(name)
    if data_match is not None and (data is not None or in_progress) and name != data:
        tag = data_match.group(1)
        if len(tag) == 32:
            state = writer_state(tag)
            if state == "dead":
                return "zarr data array", True, "no zarr.json names it; its writer is gone"
            if not _locked(dir_fd, name) and state == "alive":
                return "zarr data array", True, "no zarr.json names it; its writer finished"
            if state == "alive":
                return "zarr data array", False, "its writer is still writing it"
        ok, why = _by_tag(None, age, older_than)
        return "zarr data array", ok, "no zarr.json names it; " + why
    if fields is not None and _FIELD.match(name) and name not in fields:
        ok, why = _by_tag(None, age, older_than)
        return "OME-Zarr field group", ok, "the well does not list it; " + why
    return None


def find_debris(path: str | os.PathLike[str], *, older_than: float | None = None) -> list[Debris]:
    """Every piece of debris below the directory ``path`` (symlinks are not followed).

    ``older_than``: also mark as removable entries whose writer cannot be identified
    once they have not changed for that many seconds.
    """
    root = os.path.abspath(os.fspath(path))
    if not os.path.isdir(root):
        if os.path.exists(root):
            raise NotADirectoryStorageError("not a directory", path=root, backend="disk")
        raise NotFoundError("no such directory", path=root, backend="disk")
    found: list[Debris] = []
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for dirpath, dirnames, filenames, dir_fd in os.fwalk(
            ".", dir_fd=root_fd, follow_symlinks=False
        ):
            node = _node_data(dir_fd)
            names = sorted(dirnames + filenames)
            in_progress = (
                not node[0]
                and bool(names)
                and all(_DATA.match(n) or _IN_FLIGHT.search(n) for n in names)
            )
            skip = []
            for name in names:
                verdict = _classify(dir_fd, name, node, in_progress, older_than)
                if verdict is None:
                    continue
                what, removable, reason = verdict
                real = os.path.normpath(os.path.join(root, dirpath, name))
                found.append(Debris(real, what, reason, _size(dir_fd, name), removable))
                skip.append(name)
            # debris is reported whole; nothing below it is listed again
            dirnames[:] = [d for d in dirnames if d not in skip]
    finally:
        os.close(root_fd)
    return found


def remove_debris(path: str | os.PathLike[str], items: Iterable[Debris]) -> int:
    """Remove the removable ``items`` (from :func:`find_debris` on ``path``); how many.

    Every removal is resolved below ``path`` through directory descriptors, so an entry
    swapped for a symlink meanwhile is never followed out of it.
    """
    root = os.path.abspath(os.fspath(path))
    tree = Tree(root)
    removed = 0
    for item in items:
        if not item.removable:
            continue
        rel = os.path.relpath(item.path, root)
        if rel.startswith(".."):
            continue
        vp = vpaths.normalize_path(rel)
        try:
            with tree.parent(vp) as (dir_fd, name, _):
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if stat_mod.S_ISDIR(st.st_mode):
                    Tree.rmtree(dir_fd, name)
                else:
                    os.unlink(name, dir_fd=dir_fd)
                removed += 1
        except (FileNotFoundError, NotADirectoryError, EscapeError):
            continue
    return removed
