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


def _encode_all(texts: list[str]) -> list[str]:
    """Keys of ``texts`` (components joined by ``"\\x00"``): numbers encoded, each text
    closed by ``"\\x00"``.  One pass over all of them: one regex split, the number codes
    mapped in C, one join and one split (per text, that is a few times cheaper)."""
    parts = _split_digits("\x00\x02".join(texts) + "\x00")
    parts[1::2] = map(_number_code, parts[1::2])
    return "".join(parts).split("\x02")


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


def _names_text(items: list[str]) -> list[str] | None:
    """:func:`_fast_text` of many plain names (the usual listing), checked all at once;
    ``None`` when any item needs the checks one by one."""
    if not _POSIX or not all(type(item) is str and item for item in items):
        return None
    blob = "".join(items)
    if (
        not blob.isascii()
        or "/" in blob
        or "\x00" in blob
        or "\x01" in blob
        or "\x02" in blob
        or max(map(len, items), default=0) > 4096
    ):
        return None
    return list(map(_name_text, items))


def _fast_key(item: str) -> str | None:
    """Encoded natural key of ``item``, or ``None`` where only natsort will do."""
    text = _fast_text(item)
    return None if text is None else _encode_all([text])[0]


_KEY_CACHE_MAX = 1 << 17
_key_cache: dict[str, str] = {}


def natural_sorted(items: Iterable[str]) -> list[str]:
    """Return ``items`` in natural order: ``sorted(items, key=natural_key)``, faster.

    Keys are remembered per string (up to about 130,000 strings, then forgotten all at
    once), so listing the same names again costs little more than ``sorted``.
    """
    items = list(items)
    cache = _key_cache
    keys = list(map(cache.get, items))
    if None in keys:
        if len(cache) > _KEY_CACHE_MAX:
            cache.clear()
        missing = [i for i, key in enumerate(keys) if key is None]
        texts = _names_text([items[i] for i in missing])
        if texts is None:
            texts = []
            for index in missing:
                item = items[index]
                text = _fast_text(item) if type(item) is str else None
                if text is None:
                    return sorted(items, key=natural_key)
                texts.append(text)
        for index, key in zip(missing, _encode_all(texts), strict=True):
            keys[index] = cache[items[index]] = key
    lookup: dict[str, str] = dict(zip(items, keys, strict=True))  # type: ignore[arg-type]
    return sorted(items, key=lookup.__getitem__)
