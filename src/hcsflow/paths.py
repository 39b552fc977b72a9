"""Virtual paths: normalisation and natural ordering.

A virtual path is a posix string, absolute after normalisation (``a/b`` becomes
``/a/b``), with ``.`` and ``..`` resolved lexically and no trailing slash.  A
``..`` that would climb above the root raises :class:`~hcsflow.errors.PathEscapeError`
instead of being clamped, because silently re-rooting a path writes data somewhere
the user did not ask for.

Natural order is natsort's ``ns.PATH`` order (:data:`natural_key`).
:func:`natural_sorted` returns exactly that order, but computes each item's key as one
plain string that compares like natsort's nested tuples (see :func:`_fast_key`), so a
listing of thousands of names costs little more than ``sorted``.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from natsort import natsort_keygen, ns

from hcsflow.errors import InvalidPathError, PathEscapeError

__all__ = [
    "PathLike",
    "normalize_path",
    "join",
    "parent",
    "name",
    "is_relative_to",
    "relative_to",
    "natural_key",
    "natural_sorted",
]

PathLike = str | os.PathLike[str]

# on Windows a backslash is a separator too, so a path holding one is never normal
_BACKSLASH_IS_SEP = os.sep == "\\"


def _is_normal(path: str) -> bool:
    """Whether the string ``path`` is already in the form :func:`normalize_path` returns.

    A few substring tests, much cheaper than normalising; it may say ``False`` for a
    normal path (a name starting with a dot), which then takes the full normaliser.
    """
    return (
        path[:1] == "/"
        and "//" not in path
        and "/." not in path
        and "\x00" not in path
        and (path[-1] != "/" or path == "/")
        and not (_BACKSLASH_IS_SEP and "\\" in path)
    )


def normalize_path(path: PathLike, *, backend: str | None = None) -> str:
    """Return the canonical absolute posix form of a virtual path.

    Raises :class:`InvalidPathError` for empty or non-string paths and paths with NUL
    bytes, and :class:`PathEscapeError` when ``..`` climbs above ``/``.
    """
    if (
        type(path) is str
        and path[:1] == "/"
        and "//" not in path
        and "/." not in path
        and "\x00" not in path
        and (path[-1] != "/" or path == "/")
        and not (_BACKSLASH_IS_SEP and "\\" in path)
    ):
        return path  # already normal (the test of _is_normal, inlined: the hot path)
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str):
        raise InvalidPathError(
            f"a virtual path must be a str or os.PathLike, got {type(path).__name__}",
            path=repr(path),
            backend=backend,
        )
    if path == "":
        raise InvalidPathError("empty path", path=path, backend=backend)
    if "\x00" in path:
        raise InvalidPathError("path contains a NUL byte", path=path, backend=backend)
    raw = path.replace("\\", "/") if _BACKSLASH_IS_SEP else path
    parts: list[str] = []
    for part in raw.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise PathEscapeError("path climbs above the root", path=path, backend=backend)
            parts.pop()
        else:
            parts.append(part)
    return "/" + "/".join(parts)


def join(*parts: PathLike) -> str:
    """Join path parts and normalise the result."""
    if len(parts) == 2:
        head, tail = parts
        if type(head) is str and type(tail) is str and tail:
            # posixpath.join's rule (an absolute part restarts the path) without its
            # generality
            if tail[0] == "/":
                return normalize_path(tail)
            return normalize_path(head + tail if head.endswith("/") else head + "/" + tail)
    return normalize_path(posixpath.join(*(os.fspath(p) for p in parts)))


def parent(path: str) -> str:
    """Parent of a normalised path (``/`` is its own parent)."""
    return path[: path.rfind("/")] or "/"


def name(path: str) -> str:
    """Last component of a normalised path."""
    return path[path.rfind("/") + 1 :]


def is_relative_to(path: str, root: str) -> bool:
    """Whether normalised ``path`` equals ``root`` or lies below it."""
    return root == "/" or path == root or path.startswith(root + "/")


def relative_to(path: str, root: str) -> str:
    """``path`` relative to ``root`` (both normalised); ``""`` for the root itself."""
    if not is_relative_to(path, root):
        raise PathEscapeError(f"path is not below {root!r}", path=path)
    if path == root:
        return ""
    return path[len(root) :].lstrip("/")


natural_key: Callable[[Any], Any] = natsort_keygen(alg=ns.PATH)
"""Sort key for natural order: ``img_2`` before ``img_10``, well ``A2`` before ``A10``.

This is natsort's ``ns.PATH`` key; :func:`natural_sorted` gives the same order faster.
"""


# ---------------------------------------------------------------------- fast natural keys
#
# natsort's PATH key of a string is a tuple of components (the path's parts, with up
# to two short extensions of the last part split off as parts of their own), and each
# component is a tuple alternating text and integers ("img_", 2).  Tuples of tuples
# compare slowly and natsort builds them slowly (about 25 us a name).  For strings of
# printable ASCII, _fast_key encodes the same key as one string that compares the same
# way: the text as it is, each integer as "\x01", a character for its number of digits
# and its digits without leading zeros (fewer digits sort first, then the digits), and
# "\x00" closing each component.  Both markers sort below every character a text part
# can hold, so a shorter component or number sorts first exactly as in the tuples.
# Anything else (other characters, paths that are not in normal form) makes
# natural_sorted use natsort itself for the whole list, so the order is always
# natsort's; tests compare the two on generated names.

# natsort splits with pathlib.PurePath, which parses Windows paths differently
_POSIX = os.name == "posix"
_split_digits = re.compile(r"([0-9]+)").split
_DIGITS = "0123456789"


class _NumberCodes(dict[str, str]):
    """Digit string -> its code; short strings are remembered (a bounded set)."""

    def __missing__(self, digits: str) -> str:
        value = digits.lstrip("0") or "0"
        code = "\x01" + chr(0x80 + len(value)) + value
        if len(digits) <= 4:
            self[digits] = code
        return code


_number_code = _NumberCodes().__getitem__


def _encode_regex(texts: list[str]) -> list[str]:
    """Keys of ``texts`` (components joined by ``"\\x00"``): numbers encoded, each text
    closed by ``"\\x00"``.  One pass over all of them: one regex split, the number codes
    mapped in C, one join and one split (per text, that is a few times cheaper)."""
    parts = _split_digits("\x00\x02".join(texts) + "\x00")
    parts[1::2] = map(_number_code, parts[1::2])
    return "".join(parts).split("\x02")


# below this many characters the regex's fixed cost is lower than numpy's
_VECTOR_MIN_CHARS = 4096
_ZERO, _NINE = ord("0"), ord("9")


def _encode_vector(texts: list[str]) -> list[str]:
    """The keys of :func:`_encode_regex`, built with array operations on the bytes.

    A listing of 10,000 names has some 80,000 numbers; creating a string object for
    each (as the regex split does) is most of a first listing's cost.  Here the digit
    runs are found on a byte array, their leading zeros dropped and the two marker
    characters inserted before each run in a few whole-array operations.
    """
    blob = "\x00\x02".join(texts) + "\x00"
    if len(blob) > 1 << 29:  # positions are int32 below
        return _encode_regex(texts)
    raw = np.frombuffer(blob.encode("ascii"), np.uint8)
    digit = (raw - np.uint8(_ZERO)) < 10  # wraps around below "0"
    edges = np.flatnonzero(np.diff(digit, prepend=False, append=False))
    if not edges.size:
        return blob.split("\x02")
    starts, ends = edges[0::2], edges[1::2]
    # each run's first significant digit (its last digit when all are zeros): the least
    # position of a non-zero digit from the run's start up to the next run
    significant = np.where(
        digit & (raw != _ZERO), np.arange(raw.size, dtype=np.int32), np.int32(raw.size)
    )
    first = np.minimum(np.minimum.reduceat(significant, starts), ends - 1)
    length = ends - first
    if int(length.max()) > 0x7F:  # the length code must stay one latin-1 character
        return _encode_regex(texts)
    lead = first - starts
    if not lead.any():
        # no leading zeros: every byte is kept, moved right by two markers per run
        # begun at or before it
        dest = np.ones(raw.size, np.int32)
        dest[starts] = 3
        np.cumsum(dest, out=dest)
        dest -= 1
        out = np.empty(raw.size + 2 * starts.size, np.uint8)
        out[dest] = raw
        out[starts + 2 * np.arange(starts.size)] = 1
        out[starts + 2 * np.arange(1, starts.size + 1) - 1] = 0x80 + length
        return out.tobytes().decode("latin-1").split("\x02")
    # every kept byte moves right by two markers per run begun at or before it and
    # left by the leading zeros dropped before it; one running sum gives both
    shift = np.zeros(raw.size + 1, np.int64)
    shift[starts] += 2
    shift[first] -= lead
    shift = np.cumsum(shift[:-1])
    dropped = np.zeros(raw.size + 1, np.int8)
    dropped[starts] += 1
    dropped[first] -= 1
    kept = np.cumsum(dropped[:-1], dtype=np.int8) == 0
    out = np.empty(raw.size - int(lead.sum()) + 2 * starts.size, np.uint8)
    out[np.flatnonzero(kept) + shift[kept]] = raw[kept]
    at_first = first + shift[first]
    out[at_first - 2] = 1
    out[at_first - 1] = 0x80 + length
    return out.tobytes().decode("latin-1").split("\x02")


def _encode_all(texts: list[str]) -> list[str]:
    """Keys of ``texts``: :func:`_encode_vector` for long lists, else :func:`_encode_regex`."""
    if sum(map(len, texts)) >= _VECTOR_MIN_CHARS:
        return _encode_vector(texts)
    return _encode_regex(texts)


def _suffix_ok(piece: str) -> bool:
    # natsort keeps an extension as its own component unless it starts with a digit
    # or is longer than four characters after the dot
    return not piece or (len(piece) <= 4 and piece[0] not in _DIGITS)


def _name_text(base: str) -> str:
    """The components of a last path part (natsort's ``path_splitter``), ``"\\x00"``-joined."""
    stem, dot, ext = base.rpartition(".")
    if not dot:
        return base
    if stem and "." not in stem and 0 < len(ext) <= 4 and ext[0] not in _DIGITS:
        return stem + "\x00." + ext  # the usual name.ext, decided without the general rules
    # PurePath.suffixes: none when the name ends with "."; leading dots never start one
    if base[-1] != ".":
        pieces = base.lstrip(".").split(".")
        count = len(pieces)
        if count > 1 and _suffix_ok(pieces[-1]):
            suffixes = "." + pieces[-1]
            if count > 2 and _suffix_ok(pieces[-2]):
                suffixes = "." + pieces[-2] + "\x00" + suffixes
            # natsort removes every occurrence of the joined suffixes, not only the last
            stem = base.replace(suffixes.replace("\x00", ""), "")
            return stem + "\x00" + suffixes if stem else suffixes
    return base


def _fast_text(item: str) -> str | None:
    """The components of ``item`` joined by ``"\\x00"``, or ``None`` where only natsort
    will do (other characters, paths not in normal form, other platforms)."""
    if (
        not _POSIX
        or not item
        or len(item) > 4096
        or not item.isascii()
        or "\x00" in item
        or "\x01" in item
        or "\x02" in item
    ):
        return None
    if "/" not in item:
        return _name_text(item)
    # PurePosixPath parts of a path without "//", "." parts or a trailing slash are
    # its "/"-separated pieces, plus "/" first when it is absolute
    if "//" in item or item[-1] == "/" or item.startswith("./") or item.endswith("/."):
        return None
    if "/./" in item:
        return None
    head, _, last = item.rpartition("/")
    text = "/\x00" if item[0] == "/" else ""
    head = head.strip("/")
    if head:
        text += head.replace("/", "\x00") + "\x00"
    return text + _name_text(last)


def _plain_blob(items: list[str]) -> str | None:
    """``items`` joined by NUL when every one is a plain name (a non-empty ASCII string
    of at most 4096 characters without ``/``, NUL or the key markers), else ``None``:
    the check the fast routes below need, made once for a whole listing."""
    if not _POSIX or set(map(type, items)) != {str} or "" in items:
        return None
    blob = "\x00".join(items)
    if (
        not blob.isascii()
        or "/" in blob
        or "\x01" in blob
        or "\x02" in blob
        or blob.count("\x00") != len(items) - 1  # a NUL inside a name
        or max(map(len, items)) > 4096
    ):
        return None
    return blob


def _names_text(items: list[str], blob: str | None = None) -> list[str] | None:
    """:func:`_fast_text` of many plain names (the usual listing), checked all at once;
    ``None`` when any item needs the checks one by one.  ``blob``: the items'
    :func:`_plain_blob`, when the caller has it."""
    blob = blob if blob is not None else _plain_blob(items)
    if blob is None:
        return None
    if len(items) > 64:
        joined = blob.replace("\x00", "\x02")
        if _all_name_dot_ext(joined, len(items)):
            # each name's one dot becomes a component boundary, all in one pass
            return joined.replace(".", "\x00.").split("\x02")
    return list(map(_name_text, items))


def _all_name_dot_ext(joined: str, count: int) -> bool:
    """Whether every one of ``count`` ASCII names, ``"\\x02"``-joined, is ``stem.ext``
    with one dot and an extension of one to four characters not starting with a digit:
    the names :func:`_name_text` splits into ``stem`` and ``.ext`` without its general
    rules."""
    raw = np.frombuffer(joined.encode("ascii"), np.uint8)
    dots = np.flatnonzero(raw == ord("."))
    if dots.size != count:
        return False
    # with as many dots as names, each name holds exactly one when each k-th dot lies
    # between the (k-1)-th and the k-th separator
    bounds = np.concatenate(([-1], np.flatnonzero(raw == 2), [raw.size]))
    stem = dots - bounds[:-1] - 1
    ext = bounds[1:] - dots - 1
    if not ((stem > 0).all() and (ext > 0).all() and (ext <= 4).all()):
        return False
    after = raw[dots + 1]
    return not ((after >= ord("0")) & (after <= ord("9"))).any()


def _fast_key(item: str) -> str | None:
    """Encoded natural key of ``item``, or ``None`` where only natsort will do."""
    text = _fast_text(item)
    return None if text is None else _encode_all([text])[0]


_KEY_CACHE_MAX = 1 << 17
_key_cache: dict[str, str] = {}


# The shape of a name: each ASCII digit as "0", "." "/" and NUL (our separator) kept,
# every other byte "a".
_SHAPE_TABLE = bytes(
    ord("0") if 0x30 <= c <= 0x39 else c if c in b"./\x00" else ord("a") for c in range(256)
)


def _one_shape(blob: str) -> bool:
    """Whether the plain names of ``blob`` (:func:`_plain_blob`) have one shape, so that
    their natural order is their plain string order.

    Two names of one shape have their numbers at the same places with the same number of
    digits (``s01`` and ``s12``, not ``s1`` and ``s12``) and split into the same
    components (one ``.ext`` of up to four characters, not starting with a digit, or no
    dot at all).  Comparing them character by character then compares equal-length
    texts as texts and equal-length digit runs as numbers, which is exactly what the
    natural key compares.  Plate exports that zero-pad their numbers are all like this.
    """
    shapes = set(blob.encode("ascii").translate(_SHAPE_TABLE).split(b"\x00"))
    if len(shapes) != 1:
        return False
    shape = shapes.pop()
    if shape.count(b".") > 1:
        return False
    stem, dot, ext = shape.rpartition(b".")
    return not dot or (bool(stem) and 0 < len(ext) <= 4 and ext[:1] != b"0")


def _one_plain_shape(items: list[str]) -> bool:
    """Whether ``items`` are plain names of one shape (:func:`_one_shape`)."""
    blob = _plain_blob(items)
    return blob is not None and _one_shape(blob)


def natural_sorted(items: Iterable[str]) -> list[str]:
    """Return ``items`` in natural order: ``sorted(items, key=natural_key)``, faster.

    Names of one shape (see :func:`_one_plain_shape`) are sorted as plain strings.
    Other keys are remembered per string (up to about 130,000 strings, then forgotten
    all at once), so listing the same names again costs little more than ``sorted``.
    """
    items = list(items)
    blob = _plain_blob(items)
    if blob is not None and len(items) > 1 and _one_shape(blob):
        return sorted(items)
    cache = _key_cache
    keys: list[Any] = list(map(cache.get, items))
    if None in keys:
        if len(cache) > _KEY_CACHE_MAX:
            cache.clear()
        missing = [i for i, key in enumerate(keys) if key is None]
        every = len(missing) == len(items)  # a first listing
        names = items if every else [items[i] for i in missing]
        texts = _names_text(names, blob if every else None)
        if texts is None:
            texts = []
            for item in names:
                text = _fast_text(item) if type(item) is str else None
                if text is None:
                    return sorted(items, key=natural_key)
                texts.append(text)
        fresh = _encode_all(texts)
        cache.update(zip(names, fresh, strict=True))
        if every:
            keys = fresh
        else:
            for index, key in zip(missing, fresh, strict=True):
                keys[index] = key
    # positions sorted by key: stable, so equal keys keep the order given, as natsort
    return [items[i] for i in sorted(range(len(items)), key=keys.__getitem__)]
