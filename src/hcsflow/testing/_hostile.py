"""A generated corpus of hostile and broken files, each with the typed error it must raise.

``hostile_files(directory, cap)`` writes the corpus into ``directory`` and returns one
:class:`HostileFile` per file.  Every file declares (or inflates to) more than ``cap``
bytes, or is corrupt; a backend with ``StorageLimits(max_decoded_bytes=cap)`` must
refuse each one with the listed :mod:`hcsflow.errors` type, naming the file, before
allocating anything near the declared size.  The files are small: the largest is a
few hundred kilobytes, whatever they claim.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hcsflow.errors import CorruptDataError, HcsflowError, ResourceLimitError

__all__ = ["HostileFile", "hostile_files"]


@dataclass(frozen=True)
class HostileFile:
    """One file of the corpus."""

    name: str
    error: type[HcsflowError]
    why: str


def _npy_header(shape: tuple[int, ...], descr: str = "<f8") -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode("latin1")
    total = 10 + len(header) + 1
    pad = (-total) % 64
    header += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def _tiff_header(width: int, height: int, bits: int = 16) -> bytes:
    """A classic little-endian TIFF with one IFD declaring ``width`` x ``height`` pixels."""
    entries = [
        (256, 4, 1, width),  # ImageWidth (LONG)
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, bits),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: min-is-black
        (273, 4, 1, 8 + 2 + 12 * 9 + 4),  # StripOffsets: right after the IFD
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, 16),  # StripByteCounts: 16 bytes present
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        packed = struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, typ, count) + packed
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00" * 16


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _png(width: int, height: int, colour: int = 6, depth: int = 8, idat: bytes = b"") -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat or zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def _deflate_zeros(nbytes: int) -> bytes:
    """``nbytes`` zeros deflated, built from 1 MiB pieces (fast, small)."""
    comp = zlib.compressobj(1, zlib.DEFLATED, -15)
    block = b"\x00" * (1 << 20)
    parts = []
    left = nbytes
    while left > 0:
        take = min(left, len(block))
        parts.append(comp.compress(block[:take]))
        left -= take
    parts.append(comp.flush())
    return b"".join(parts)


def _npz_bomb(member_bytes: int) -> bytes:
    """An NPZ whose one member inflates to ``member_bytes`` (a valid NPY of zeros)."""
    header = _npy_header(((member_bytes - 128) // 8,))
    header = header[:128] if len(header) >= 128 else header
    payload_size = len(header) + (member_bytes - 128) // 8 * 8
    comp = zlib.compressobj(1, zlib.DEFLATED, -15)
    data = comp.compress(header)
    block = b"\x00" * (1 << 20)
    left = payload_size - len(header)
    crc = zlib.crc32(header)
    while left > 0:
        take = min(left, len(block))
        data += comp.compress(block[:take])
        crc = zlib.crc32(block[:take], crc)
        left -= take
    data += comp.flush()
    return _zip_one("a.npy", data, payload_size, crc & 0xFFFFFFFF, method=8)


def _zip_one(name: str, data: bytes, size: int, crc: int, method: int) -> bytes:
    """A zip archive with one member written by hand (sizes as given, zip64 when large)."""
    fname = name.encode()
    zip64 = size >= 0xFFFFFFFF or len(data) >= 0xFFFFFFFF
    extra = struct.pack("<HHQQ", 1, 16, size, len(data)) if zip64 else b""
    csize = 0xFFFFFFFF if zip64 else len(data)
    usize = 0xFFFFFFFF if zip64 else size
    version = 45 if zip64 else 20
    local = struct.pack(
        "<IHHHHHIIIHH",
        0x04034B50,
        version,
        0,
        method,
        0,
        0,
        crc,
        csize,
        usize,
        len(fname),
        len(extra),
    )
    local += fname + extra
    central = struct.pack(
        "<IHHHHHHIIIHHHHHII",
        0x02014B50,
        version,
        version,
        0,
        method,
        0,
        0,
        crc,
        csize,
        usize,
        len(fname),
        len(extra),
        0,
        0,
        0,
        0,
        0,
    )
    central += fname + extra
    body = local + data
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), len(body), 0)
    return body + central + end


def _stored_npz(member: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a.npy", member)
    return buf.getvalue()


def hostile_files(directory: str | Path, cap: int) -> list[HostileFile]:
    """Write the corpus into ``directory`` (which must exist); see the module docstring.

    ``cap`` (bytes, at least 1 MiB) is the decoded-size limit the backend under test is
    given; the bombs are sized from it (their compressed size is about ``cap / 500``).
    """
    if cap < 1 << 20:
        raise ValueError(f"cap must be at least 1 MiB, got {cap}")
    out = Path(directory)
    files: list[HostileFile] = []

    def add(name: str, data: bytes, error: type[HcsflowError], why: str) -> None:
        (out / name).write_bytes(data)
        files.append(HostileFile(name, error, why))

    # NPY
    add(
        "npy_800tb.npy",
        _npy_header((100_000_000, 1_000_000)),
        ResourceLimitError,
        "NPY header declares 800 TB",
    )
    add(
        "npy_negative.npy",
        _npy_header((-5, 3)),
        CorruptDataError,
        "NPY header declares a negative dimension",
    )
    add(
        "npy_truncated.npy",
        _npy_header((1000, 1000)) + b"\x00" * 100,
        CorruptDataError,
        "NPY data shorter than its header declares",
    )
    add(
        "npy_garbage.npy",
        b"\x93NUMPY\x01\x00\xff\xff" + b"{" * 50,
        CorruptDataError,
        "NPY header is garbage",
    )
    # NPZ
    add(
        "npz_bomb.npz",
        _npz_bomb(2 * cap),
        ResourceLimitError,
        "NPZ member inflates to twice the cap",
    )
    add(
        "npz_lying_header.npz",
        _stored_npz(_npy_header((100_000_000, 1_000_000))),
        ResourceLimitError,
        "NPZ member's NPY header declares 800 TB",
    )
    add(
        "npz_short_member.npz",
        _stored_npz(_npy_header((4096,)) + b"\x00" * 64),
        CorruptDataError,
        "NPZ member shorter than its NPY header declares",
    )
    add(
        "npz_4gib_claim.npz",
        _zip_one("a.npy", b"\x00" * 16, 4 << 30, 0, method=0),
        ResourceLimitError,
        "zip directory claims a 4 GiB member",
    )
    add("npz_garbage.npz", b"PK\x03\x04" + b"\x00" * 200, CorruptDataError, "not a zip archive")
    # TIFF
    add(
        "tiff_20gb.tif",
        _tiff_header(100_000, 100_000),
        ResourceLimitError,
        "TIFF page declares 20 GB",
    )
    add("tiff_garbage.tif", b"II*\x00" + b"\xff" * 64, CorruptDataError, "TIFF IFD is garbage")
    bomb_side = int(np.sqrt(2 * cap // 2)) + 1
    import tifffile

    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as tif:
        tif.write(
            shape=(bomb_side, bomb_side),
            dtype=np.uint16,
            compression="zlib",
            compressionargs={"level": 1},
            data=iter([np.zeros((bomb_side, bomb_side), np.uint16)]),
        )
    add(
        "tiff_deflate_bomb.tif",
        buf.getvalue(),
        ResourceLimitError,
        "deflate TIFF inflating to twice the cap",
    )
    # PNG
    add(
        "png_huge.png",
        _png(100_000, 100_000),
        ResourceLimitError,
        "PNG header declares 40 GB of RGBA",
    )
    add("png_truncated.png", _png(64, 64)[:40], CorruptDataError, "PNG cut after its header")
    add(
        "png_garbage.png",
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
        CorruptDataError,
        "PNG without an IHDR header",
    )
    # JSON
    add(
        "json_deep.json",
        b"[" * 100_000 + b"]" * 100_000,
        ResourceLimitError,
        "JSON nested 100,000 deep",
    )
    add("json_garbage.json", b'{"a": [1, 2', CorruptDataError, "JSON cut in the middle")
    return files
