"""Listing a directory of a local zarr store in one pass, with a cache of entry kinds.

What a listing must know of each entry is its kind: a file (a file node, a plate image,
a bare zarr array, a plain file), a directory (a group, a plain directory) or a
symlink, and whether it is a node still being written (then it is not listed).  The
generic way asks for each entry's node through the path resolution of
:meth:`~hcsflow.storage.zarr.ZarrStorageBackend.entry_kind`: about 60 µs an entry.
On a local store this module does it in one pass instead:

* the directory is opened once through the contained :class:`~hcsflow.storage._contain.Tree`
  and read with ``scandir`` on that descriptor (names and entry types without a
  system call per entry);
* an entry that is a directory is classified by reading its ``zarr.json``, opened
  relative to that descriptor by one ``openat2`` refusing a symlink anywhere on the
  way (or, without ``openat2``, two ``openat`` calls each refusing one with
  ``O_NOFOLLOW``), so nothing outside the directory is reached.  The documents
  hcsflow itself writes for files and directories are recognised by one exact byte
  pattern (:data:`_PLAIN`) without parsing, which is what most of an entry's time
  went to; any other document is parsed and classified by the node rules.  A real
  symlink, a directory without ``zarr.json`` (zarr format 2, a plain directory, a
  node being written) and anything unexpected go through the generic per-entry
  resolution;
* the entries found so, with the kinds of files and directories, are cached per
  directory, keyed by the directory's identity and change time (``st_dev``,
  ``st_ino``, ``st_ctime_ns``).  Creating, removing or renaming an entry changes the
  directory's change time, so a cached listing is used only while no entry was
  created, removed or renamed there, by any thread, process or tool: a listing never
  misses an entry another writer created, nor lists one it removed.  The backend's own
  writes that change the kind of an existing node in place (a file overwritten by a
  symlink, a symlink by a file...) touch the parent directory afterwards
  (:func:`touched`), so every process sees that change too.  Symlinks and entries
  without a plain ``zarr.json`` are never cached: they are looked at on every listing.

A change time is only trusted once it is older than :data:`TRUST_AFTER_NS` at the
time the directory is read (longer for file systems that keep whole seconds): two
changes within one tick of the file system's clock can leave the same change time,
and the cache must not take the second for the first.  Directories changed more
recently are classified afresh on every listing.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hcsflow.errors import HcsflowError
from hcsflow.storage._contain import _Openat2
from hcsflow.storage.zarr import _ome
from hcsflow.storage.zarr._localfs import LocalFS

if TYPE_CHECKING:
    from hcsflow.storage._base import EntryKind

__all__ = ["ListingCache", "TRUST_AFTER_NS", "scan_local", "touched"]

#: a directory's change time is trusted once it is this old (covers the coarse clock
#: file systems stamp times with, a few milliseconds, with a wide margin)
TRUST_AFTER_NS = 1_000_000_000
#: the same for file systems whose change times are whole seconds (FAT, old ext)
TRUST_AFTER_COARSE_NS = 3_000_000_000
#: directories whose listings a backend keeps
CACHED_DIRECTORIES = 64

#: bytes of a child's zarr.json read in one pass (hcsflow's own are ~200 bytes;
#: larger documents go the generic way)
_FIRST_READ = 1 << 12

#: the two ``zarr.json`` documents hcsflow writes for most entries, byte for byte as
#: its writer lays them out: a directory (a group without attributes) and a file node
#: whose data array has hcsflow's own name.  A document matching this whole is
#: classified without parsing; any other goes through the JSON parser and the node
#: rules (same kinds, but ~10 µs an entry instead of ~0.5 µs).
_PLAIN = re.compile(
    rb'\{"zarr_format":3,"node_type":"group","attributes":\{'
    rb'(?P<file>"hcsflow":\{"kind":"file","format":"[a-z0-9_:.-]{1,64}",'
    rb'"data":"data[0-9a-f]{32}","size":(?:null|0|[1-9][0-9]{0,19})\})?'
    rb"\}\}"
)
#: nesting depth of the documents :data:`_PLAIN` matches
_PLAIN_DEPTH = 3

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
# O_NONBLOCK: a FIFO named zarr.json opens and reads (nothing) at once; the generic
# lookup then refuses it
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK


#: (kind, info) of the entry at a virtual path
_Look = Callable[[str], "tuple[EntryKind | None, dict[str, Any] | None]"]
#: an entry of a cached listing: its name and kind; ``None``: look again every time
_Entry = tuple[str, "EntryKind | None"]


@dataclass(frozen=True)
class _Snapshot:
    stamp: tuple[int, int, int]
    entries: list[_Entry]
    recheck: bool  # whether some entry is to be looked at again


class ListingCache:
    """Entries and kinds of recently listed directories (see the module doc)."""

    def __init__(self) -> None:
        self._dirs: dict[str, _Snapshot] = {}
        self._lock = threading.Lock()

    def get(self, key: str, stamp: tuple[int, int, int]) -> _Snapshot | None:
        """The cached listing of directory ``key`` if it is unchanged since."""
        snap = self._dirs.get(key)
        return snap if snap is not None and snap.stamp == stamp else None

    def put(self, key: str, snap: _Snapshot) -> None:
        with self._lock:
            self._dirs.pop(key, None)
            self._dirs[key] = snap
            while len(self._dirs) > CACHED_DIRECTORIES:
                del self._dirs[next(iter(self._dirs))]

    def clear(self) -> None:
        """Forget every directory (the next listings read every ``zarr.json`` again)."""
        with self._lock:
            self._dirs.clear()


def _trusted(ctime_ns: int, started_ns: int) -> bool:
    coarse = ctime_ns % 1_000_000_000 == 0
    return started_ns - ctime_ns > (TRUST_AFTER_COARSE_NS if coarse else TRUST_AFTER_NS)


def _read_meta(dir_fd: int, name: str, cap: int) -> bytes | None:
    """The bytes of ``name/zarr.json`` below ``dir_fd``, neither a symlink; ``None``
    when there is no such plain file, or it is larger than ``cap`` (at most
    :data:`_FIRST_READ`; the generic path then looks, and reports what is wrong)."""
    try:
        # one openat2 refusing any symlink on the way (two system calls fewer than
        # opening the node, then its document); None: no openat2 here, or a race
        fd = _Openat2.call(dir_fd, name + "/zarr.json", _FILE)
    except OSError:
        return None
    if fd is None:
        try:
            node_fd = os.open(name, _DIR, dir_fd=dir_fd)
        except OSError:
            return None
        try:
            fd = os.open("zarr.json", _FILE, dir_fd=node_fd)
        except OSError:
            return None
        finally:
            os.close(node_fd)
    try:
        # one small read: a regular file reads whole in one call unless it is larger
        # than asked (asking for the whole limit would allocate that much each time)
        data = os.read(fd, cap + 1)
        if len(data) > cap:
            return None  # a large document: the generic path reads it, or refuses it
        return data or None
    finally:
        os.close(fd)


def scan_local(
    backend: Any, fs: LocalFS, real: str, path: str, cache: ListingCache, look: _Look
) -> list[tuple[str, EntryKind | None, dict[str, Any] | None]]:
    """(name, kind, info) of every visible entry of the directory ``real`` (a virtual
    path of ``backend``, whose local path on ``fs`` is ``path``); kind ``None``: a node
    being written (not to be listed).  Symlinks are reported as symlinks.

    ``look(virtual path)`` gives (kind, info) of an entry this pass cannot classify
    itself: a symlink, a directory without ``zarr.json``, an odd ``zarr.json``.
    """
    from hcsflow.storage.zarr._nodes import _hidden

    fd = fs.open_listed_dir(path)
    if fd is None:
        return []
    try:
        started = time.time_ns()
        st = os.fstat(fd)
        stamp = (st.st_dev, st.st_ino, st.st_ctime_ns)
        prefix = "/" if real == "/" else real + "/"
        snap = cache.get(real, stamp)
        if snap is not None:
            # the directory is unchanged: no entry was created, removed or renamed
            if not snap.recheck:
                return [(name, kind, None) for name, kind in snap.entries]
            return [
                (name, kind, None) if kind is not None else (name, *look(prefix + name))
                for name, kind in snap.entries
            ]
        limits = fs.limits
        # a limit below the plain documents' own depth must refuse them as the parser does
        fast = limits.max_json_depth >= _PLAIN_DEPTH
        cap = min(limits.max_metadata_bytes, _FIRST_READ)
        out: list[tuple[str, EntryKind | None, dict[str, Any] | None]] = []
        keep: list[_Entry] = []
        recheck = False
        with os.scandir(fd) as found:
            for entry in found:
                name = entry.name
                if _hidden(name):
                    continue
                kind: EntryKind | None
                info: dict[str, Any] | None = None
                cached: EntryKind | None = None
                if entry.is_dir(follow_symlinks=False):
                    raw = _read_meta(fd, name, cap)
                    kind, info, cached = _dir_kind(backend, prefix + name, raw, limits, fast, look)
                elif entry.is_symlink():
                    kind, info = look(prefix + name)
                else:
                    kind = cached = "file"  # a plain file, as the generic look finds it
                out.append((name, kind, info))
                keep.append((name, cached))
                recheck = recheck or cached is None
        if _trusted(st.st_ctime_ns, started):
            cache.put(real, _Snapshot(stamp, keep, recheck))
        return out
    finally:
        os.close(fd)


def _dir_kind(
    backend: Any, vp: str, raw: bytes | None, limits: Any, fast: bool, look: _Look
) -> tuple[EntryKind | None, dict[str, Any] | None, EntryKind | None]:
    """(kind, info, kind to cache or ``None``) of the directory entry ``vp`` whose
    ``zarr.json`` holds ``raw`` (``None``: no plain one within the first read)."""
    plain = _PLAIN.fullmatch(raw) if raw is not None and fast else None
    if plain is not None:
        kind: EntryKind = "file" if plain.start("file") >= 0 else "directory"
        return kind, None, kind
    node = _parse(raw, limits) if raw is not None else None
    if node is not None:
        try:
            found, info = backend._classify(vp, node)
        except HcsflowError:
            pass  # a corrupt node: the caller's look says what to do
        else:
            # a link's target may change anywhere: resolved every time
            return found, info, found if found != "symlink" else None
    # no zarr.json (a plain directory, zarr format 2, a node being written...) or an
    # odd one: the caller's look, every time
    return (*look(vp), None)


def _parse(raw: bytes, limits: Any) -> _ome.NodeMeta | None:
    """The node ``raw`` (a ``zarr.json``) describes, ``None`` when it is not plainly one
    (the generic path reads it again and reports the problem)."""
    try:
        doc = limits.parse_json(raw, path=None, backend=None, metadata=True)
    except (HcsflowError, ValueError, UnicodeDecodeError, OverflowError):
        return None
    return _ome.v3_node(doc) if isinstance(doc, dict) else None


def touched(fs: Any, node_path: str) -> None:
    """Tell listings in every process that the node at ``node_path`` changed in place.

    Updates the change time of its parent directory (local stores; object stores keep
    no listing cache).  Called after the change, so a listing that read the old kind
    before it sees a different change time afterwards.
    """
    if isinstance(fs, LocalFS):
        fs.touch_parent(node_path)
