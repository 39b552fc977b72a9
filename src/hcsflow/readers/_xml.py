"""Reading exports' XML metadata files with typed errors that name the file.

The standard library's expat parser is used (ElementTree, streamed with
``iterparse``): it resolves no external entities, and expat 2.4+ bounds entity
expansion; documents declaring entities are refused outright, since no instrument
writes them.  A truncated or malformed document raises
:class:`~hcsflow.errors.ExportMetadataError` with the line and column expat stopped at.
"""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

from hcsflow.errors import ExportMetadataError

__all__ = ["split_tag", "iterparse", "iter_ends", "pull_parser", "parse", "number", "integer"]


def split_tag(tag: str) -> tuple[str, str]:
    """``"{ns}Name"`` -> ``("ns", "Name")``; ``("", tag)`` without a namespace."""
    if tag.startswith("{"):
        ns, _, local = tag[1:].partition("}")
        return ns, local
    return "", tag


def _refuse_entities(data: bytes, path: str, backend: str) -> None:
    if b"<!ENTITY" in data:
        raise ExportMetadataError(
            "the XML document declares entities; instrument metadata never does",
            path=path,
            backend=backend,
        )


def _parse_error(exc: ET.ParseError, path: str, backend: str) -> ExportMetadataError:
    line, col = getattr(exc, "position", (0, 0))
    what = (
        "truncated"
        if "no element found" in str(exc) or "unclosed token" in str(exc)
        else "malformed"
    )
    return ExportMetadataError(
        f"{what} XML at line {line}, column {col}: {exc}", path=path, backend=backend
    )


def iterparse(data: bytes, path: str, backend: str) -> Iterator[tuple[str, ET.Element]]:
    """Stream ``("start" | "end", element)`` pairs of the document ``data`` from ``path``."""
    _refuse_entities(data, path, backend)
    try:
        yield from ET.iterparse(io.BytesIO(data), events=("start", "end"))
    except ET.ParseError as exc:
        raise _parse_error(exc, path, backend) from None


def iter_ends(data: bytes, path: str, backend: str) -> Iterator[ET.Element]:
    """Stream the elements of ``data`` as each one ends (children complete)."""
    _refuse_entities(data, path, backend)
    try:
        for _, elem in ET.iterparse(io.BytesIO(data), events=("end",)):
            yield elem
    except ET.ParseError as exc:
        raise _parse_error(exc, path, backend) from None


class _Pull:
    """An ``XMLPullParser`` for "start" events whose parse errors name the file."""

    def __init__(self, path: str, backend: str):
        self.parser: Any = ET.XMLPullParser(events=("start",))
        self.path, self.backend = path, backend

    def feed(self, chunk: bytes) -> Iterator[ET.Element]:
        if b"<!ENTITY" in chunk:
            _refuse_entities(chunk, self.path, self.backend)
        try:
            self.parser.feed(chunk)
            for _, elem in self.parser.read_events():
                yield elem
        except ET.ParseError as exc:
            raise _parse_error(exc, self.path, self.backend) from None


def pull_parser(path: str, backend: str) -> _Pull:
    """An incremental parser yielding each element as its start tag is fed."""
    return _Pull(path, backend)


def parse(data: bytes, path: str, backend: str) -> ET.Element:
    """The root element of the document ``data`` read from ``path``."""
    _refuse_entities(data, path, backend)
    try:
        return ET.fromstring(data)
    except ET.ParseError as exc:
        raise _parse_error(exc, path, backend) from None


def number(text: str | None, what: str, path: str, backend: str) -> float:
    """``text`` as a float; :class:`ExportMetadataError` naming ``what`` otherwise."""
    try:
        value = float((text or "").strip())
    except ValueError:
        raise ExportMetadataError(
            f"{what} is {text!r}, not a number", path=path, backend=backend
        ) from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ExportMetadataError(
            f"{what} is {text!r}, not a finite number", path=path, backend=backend
        )
    return value


def integer(text: str | None, what: str, path: str, backend: str) -> int:
    """``text`` as an int; :class:`ExportMetadataError` naming ``what`` otherwise."""
    try:
        return int((text or "").strip())
    except ValueError:
        raise ExportMetadataError(
            f"{what} is {text!r}, not an integer", path=path, backend=backend
        ) from None
