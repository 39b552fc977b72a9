"""Who wrote an in-flight name, and whether that writer can still be at work.

Every temporary name hcsflow creates ends in a 32-hex-digit *writer tag*::

    HHHHHH BBBBBB PPPPPP SSSSSS RRRRRRRR
    host   boot   pid    start  random

``host`` hashes the host name and the PID namespace (two containers with one host
name do not share PIDs), ``boot`` hashes the kernel's boot id, ``pid`` is the
writer's process id and ``start`` the low 24 bits of its start time in clock ticks
(so a PID reused by a later process is told apart).  From a tag,
:func:`writer_state` says:

* ``"alive"``: same host, same boot, the process exists and started at that time;
* ``"dead"``: same host and the process is gone (or the machine rebooted since);
* ``"unknown"``: another host (or a name without a tag): nothing can be known.

Writers also hold an advisory lock (``flock``) on the temporary files and data
arrays they are building; :func:`lock_held` tells a finished writer (lock free)
from one still at work (lock held), which the process check alone cannot.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import os
import re
import secrets
import socket
import sys
import time
from typing import Literal

__all__ = [
    "TAG_HEX",
    "WINDOW_TAG",
    "writer_tag",
    "writer_state",
    "tag_of",
    "bounded_name",
    "lock_held",
    "lock",
    "NAME_MAX",
    "GRACE_SECONDS",
]

TAG_HEX = 32
#: the tag of a disk publish window: a finished file, named only between two system
#: calls (a hard link and a rename); such a name older than GRACE_SECONDS is debris
WINDOW_TAG = "0" * TAG_HEX
#: bytes in one file name on every common file system (ext4, xfs, btrfs, APFS, NTFS)
NAME_MAX = 255
#: age below which an entry whose writer cannot be identified is never removed
GRACE_SECONDS = 60.0

WriterState = Literal["alive", "dead", "unknown"]

_TAG_RE = re.compile(r"([0-9a-f]{32})")


def _hash6(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:6]


@functools.cache
def _host_id() -> str:
    try:
        pidns = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        pidns = ""
    return _hash6(f"{socket.gethostname()}|{pidns}")


@functools.cache
def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return _hash6(fh.read().strip())
    except OSError:
        return "000000"  # unknown: liveness falls back to the process check


def _start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (Linux), ``None`` if gone/unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return -1
    except OSError:
        return None
    try:
        return int(raw[raw.rindex(b")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


_OWN: dict[int, str] = {}


def _own_prefix() -> str:
    pid = os.getpid()  # recomputed after a fork: the child is another writer
    prefix = _OWN.get(pid)
    if prefix is None:
        start = _start_ticks(pid) if sys.platform.startswith("linux") else None
        start_hex = f"{(start or 0) & 0xFFFFFF:06x}"
        prefix = f"{_host_id()}{_boot_id()}{pid & 0xFFFFFF:06x}{start_hex}"
        _OWN.clear()
        _OWN[pid] = prefix
    return prefix


def writer_tag() -> str:
    """A fresh 32-hex-digit tag naming this process (and 32 random bits)."""
    return _own_prefix() + secrets.token_hex(4)


def tag_of(name: str) -> str | None:
    """The writer tag in an in-flight name (its last 32-hex-digit component), if any."""
    parts = name.split(".")
    for part in reversed(parts):
        if len(part) == TAG_HEX and _TAG_RE.fullmatch(part):
            return part
        tail = part[-TAG_HEX:]
        if len(part) > TAG_HEX and _TAG_RE.fullmatch(tail) and part[:-TAG_HEX] == "data":
            return tail
    return None


def writer_state(tag: str | None) -> WriterState:
    """Whether the writer named by ``tag`` may still be running (see the module doc)."""
    if tag is None or tag == WINDOW_TAG or not _TAG_RE.fullmatch(tag):
        return "unknown"
    if tag[:6] != _host_id():
        return "unknown"
    boot = tag[6:12]
    if boot != "000000" and _boot_id() != "000000" and boot != _boot_id():
        return "dead"
    pid = int(tag[12:18], 16)
    if pid == os.getpid() & 0xFFFFFF:
        return "alive"
    if sys.platform.startswith("linux"):
        start = _start_ticks(pid)
        if start == -1:
            return "dead"
        if start is None:
            return "unknown"
        return "alive" if (start & 0xFFFFFF) == int(tag[18:24], 16) else "dead"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "dead"
    except PermissionError:
        return "alive"
    return "alive"


def bounded_name(name: str, max_bytes: int) -> str:
    """``name`` itself if its encoded form fits ``max_bytes``, else a shortened unique form.

    Names are limited in *bytes* (UTF-8 here, or the raw bytes of an undecodable name),
    as the kernel limits them; a shortened name keeps a prefix cut on a character
    boundary and adds ``~`` and 16 hex digits of a hash of the whole name, so two long
    names never share a shortened form.
    """
    raw = os.fsencode(name)
    if len(raw) <= max_bytes:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:16]
    keep = raw[: max(0, max_bytes - 17)]
    prefix = os.fsdecode(keep)
    while len(os.fsencode(prefix)) > max_bytes - 17 or prefix.endswith("\udcff"):
        prefix = prefix[:-1]
    # cut back to a whole UTF-8 character (a cut one decodes to surrogate escapes)
    while prefix and "\udc80" <= prefix[-1] <= "\udcff":
        prefix = prefix[:-1]
    return f"{prefix}~{digest}"


def lock(fd: int) -> None:
    """Take the exclusive advisory lock of ``fd`` (held until the descriptor is closed)."""
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def lock_held(fd: int) -> bool:
    """Whether another open descriptor holds the advisory lock of ``fd``'s file.

    Taking and releasing the lock is the test; file systems without ``flock`` report
    ``True`` (assume a writer may be at work).
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return True
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def age_seconds(ctime: float) -> float:
    """Seconds since ``ctime`` (never negative)."""
    return max(0.0, time.time() - ctime)
