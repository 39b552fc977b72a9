"""Resource limits for reading: sizes are checked against what a file *declares*.

A hostile or corrupt file can declare an array of 800 TB in a 100-byte header, or hold
a deflate stream that inflates a thousandfold.  Every reader in hcsflow asks
:class:`StorageLimits` before it allocates: NPY/NPZ headers, TIFF pages, PNG headers,
zarr array metadata (shape x dtype, and the number of chunks a read would visit), and
JSON documents (bytes and nesting depth).  A refusal is a
:class:`~hcsflow.errors.ResourceLimitError` (also a ``MemoryError``) naming the path,
the backend, the size asked for and the limit.

The default for decoded bytes is half of the machine's physical memory
(``os.sysconf``); the environment variable ``HCSFLOW_MAX_DECODED_BYTES`` overrides it
for every backend created afterwards (``"2GiB"``, ``"500M"`` or a plain number of
bytes), and ``limits=StorageLimits(...)`` overrides it per backend or per call.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hcsflow.errors import ConfigurationError, CorruptDataError, ResourceLimitError

__all__ = ["StorageLimits", "ENV_MAX_DECODED_BYTES", "parse_size"]

ENV_MAX_DECODED_BYTES = "HCSFLOW_MAX_DECODED_BYTES"
#: used where the platform cannot tell its physical memory (documented)
_FALLBACK_DECODED_BYTES = 8 << 30

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1 << 10,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1 << 20,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1 << 30,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1 << 40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str, *, what: str = ENV_MAX_DECODED_BYTES) -> int:
    """Bytes from ``"2GiB"``, ``"500M"``, ``"1.5GB"`` or ``"1048576"``."""
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ConfigurationError(
            f"{what}={text!r} is not a size (a number of bytes, optionally with a unit "
            "such as K, M, G, T, KiB, MiB, GiB, TiB)"
        )
    value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ConfigurationError(f"{what}={text!r} must be a positive size")
    return value


def _physical_memory() -> int | None:
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        page = os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    if pages <= 0 or page <= 0:
        return None
    return int(pages) * int(page)


def default_max_decoded_bytes() -> int:
    """``HCSFLOW_MAX_DECODED_BYTES`` if set, else half the physical memory (8 GiB if unknown)."""
    env = os.environ.get(ENV_MAX_DECODED_BYTES)
    if env:
        return parse_size(env)
    phys = _physical_memory()
    return phys // 2 if phys is not None else _FALLBACK_DECODED_BYTES


@dataclass(frozen=True)
class StorageLimits:
    """Limits every read checks before it allocates.

    ``max_decoded_bytes``: one decoded array (a TIFF series, an NPY array, one NPZ
    member and all of them together, a PNG image, a zarr array or selection) or one
    document.  ``max_metadata_bytes``: one zarr metadata document (``zarr.json``,
    ``.zattrs``...).  ``max_json_depth``: nesting of any JSON document read (the NGFF
    documents hcsflow writes nest about 6 deep).  ``max_chunks``: zarr chunks one read
    or one ``validate_plate(deep=True)`` array may visit.
    """

    max_decoded_bytes: int = field(default_factory=default_max_decoded_bytes)
    max_metadata_bytes: int = 64 << 20
    max_json_depth: int = 256
    max_chunks: int = 10_000_000

    def __post_init__(self) -> None:
        for name in ("max_decoded_bytes", "max_metadata_bytes", "max_json_depth", "max_chunks"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigurationError(
                    f"StorageLimits.{name} must be a positive int, got {value!r}"
                )

    # ------------------------------------------------------------------ checks

    def check_bytes(self, nbytes: int, *, what: str, path: str | None, backend: str | None) -> None:
        """Refuse ``nbytes`` of decoded data above :attr:`max_decoded_bytes`."""
        if nbytes > self.max_decoded_bytes:
            raise ResourceLimitError(
                f"{what} would decode to {_human(nbytes)}, more than the limit of "
                f"{_human(self.max_decoded_bytes)} (StorageLimits.max_decoded_bytes, "
                f"{ENV_MAX_DECODED_BYTES})",
                path=path,
                backend=backend,
                limit=self.max_decoded_bytes,
                requested=nbytes,
            )

    def check_array(
        self,
        shape: tuple[int, ...],
        dtype: Any,
        *,
        what: str,
        path: str | None,
        backend: str | None,
    ) -> int:
        """Bytes of a declared ``shape`` x ``dtype`` after :meth:`check_bytes`; returns them."""
        nbytes = declared_nbytes(shape, dtype, what=what, path=path, backend=backend)
        self.check_bytes(nbytes, what=what, path=path, backend=backend)
        return nbytes

    def check_chunks(self, count: int, *, what: str, path: str | None, backend: str | None) -> None:
        """Refuse a read that would visit more than :attr:`max_chunks` chunks."""
        if count > self.max_chunks:
            raise ResourceLimitError(
                f"{what} would visit {count:,} chunks, more than the limit of "
                f"{self.max_chunks:,} (StorageLimits.max_chunks)",
                path=path,
                backend=backend,
                limit=self.max_chunks,
                requested=count,
            )

    def check_json(
        self,
        raw: bytes,
        *,
        path: str | None,
        backend: str | None,
        metadata: bool = False,
    ) -> None:
        """Refuse a JSON document above the size limit or nesting deeper than allowed.

        ``metadata``: the document is store metadata (checked against
        :attr:`max_metadata_bytes` instead of :attr:`max_decoded_bytes`).
        """
        cap = self.max_metadata_bytes if metadata else self.max_decoded_bytes
        if len(raw) > cap:
            name = "max_metadata_bytes" if metadata else "max_decoded_bytes"
            raise ResourceLimitError(
                f"JSON document of {_human(len(raw))} is larger than the limit of "
                f"{_human(cap)} (StorageLimits.{name})",
                path=path,
                backend=backend,
                limit=cap,
                requested=len(raw),
            )
        depth = json_depth(raw, self.max_json_depth)
        if depth > self.max_json_depth:
            raise ResourceLimitError(
                f"JSON document nests {depth} levels deep, more than the limit of "
                f"{self.max_json_depth} (StorageLimits.max_json_depth)",
                path=path,
                backend=backend,
                limit=self.max_json_depth,
                requested=depth,
            )

    def parse_json(
        self,
        raw: bytes,
        *,
        path: str | None,
        backend: str | None,
        metadata: bool = False,
    ) -> Any:
        """``json.loads(raw)`` after :meth:`check_json`.

        Decoding errors are left to the caller (``ValueError``/``UnicodeDecodeError``).
        """
        self.check_json(raw, path=path, backend=backend, metadata=metadata)
        try:
            return json.loads(raw)
        except RecursionError as exc:
            # only reachable with a max_json_depth above the interpreter's recursion limit
            raise ResourceLimitError(
                "JSON document nests deeper than the interpreter can parse",
                path=path,
                backend=backend,
                limit=self.max_json_depth,
            ) from exc


def declared_nbytes(
    shape: Any, dtype: Any, *, what: str, path: str | None, backend: str | None
) -> int:
    """``prod(shape) * itemsize`` in Python integers (no overflow), refusing bad shapes."""
    try:
        dims = [int(s) for s in shape]
        # every decoded file passes here: a dtype object needs no np.dtype() call
        itemsize = dtype.itemsize if isinstance(dtype, np.dtype) else np.dtype(dtype).itemsize
    except (TypeError, ValueError, OverflowError) as exc:
        raise CorruptDataError(
            f"{what} declares an unusable shape {shape!r} or dtype {dtype!r}",
            path=path,
            backend=backend,
        ) from exc
    total = itemsize
    for d in dims:
        if d < 0:
            raise CorruptDataError(
                f"{what} declares a negative dimension in shape {tuple(dims)}",
                path=path,
                backend=backend,
            )
        total *= d
    return total


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def json_depth(raw: bytes, bound: int) -> int:
    """Nesting depth of a JSON document, exact whenever it may exceed ``bound``.

    Counting brackets is enough to know a document nests at most ``bound`` deep (the
    usual case costs two ``bytes.count`` calls); only otherwise are strings removed and
    the depth computed, with numpy, without parsing.
    """
    if raw.count(b"[") + raw.count(b"{") <= bound:
        return min(bound, raw.count(b"[") + raw.count(b"{"))
    stripped = _STRING.sub(b"", raw)
    data = np.frombuffer(stripped, dtype=np.uint8)
    steps = (
        (data == ord("[")).astype(np.int64)
        + (data == ord("{"))
        - (data == ord("]"))
        - (data == ord("}"))
    )
    return int(np.cumsum(steps).max(initial=0))


def _human(nbytes: int) -> str:
    value = float(nbytes)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{nbytes} bytes"
