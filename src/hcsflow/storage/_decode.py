"""Bounded, aligned decoding of array files: NPY, NPZ, TIFF and PNG.

Two guarantees for every array hcsflow loads from a file:

* **Sizes are checked before allocation.**  The shape and dtype a file *declares*
  (the NPY header, each NPZ member's zip header and NPY header, the TIFF series,
  the PNG header) are checked against :class:`~hcsflow.storage.StorageLimits` and
  against the bytes the file really holds, so an 800 TB header or a deflate bomb
  is refused at once with :class:`~hcsflow.errors.ResourceLimitError` or
  :class:`~hcsflow.errors.CorruptDataError`.
* **Arrays are 64-byte aligned.**  Data is decoded straight into a buffer from
  :func:`aligned_empty` (tifffile's and zarr's ``out=``, ``readinto`` for NPY), so a
  later zero-copy hand-over to a framework that wants aligned memory (XLA, DLPack
  consumers) never depends on the allocator's luck, and the common case makes no
  extra copy.  Memory-mapped NPY arrays are aligned when the file's header is
  (numpy pads headers to 64 bytes).
"""

from __future__ import annotations

import contextlib
import contextvars
import html
import io
import os
import re
import struct
import zipfile
from collections.abc import Iterator
from typing import IO, Any, cast

import numpy as np

from hcsflow.errors import CodecRefusal, PickleRefusedError
from hcsflow.storage._limits import StorageLimits, declared_nbytes

__all__ = [
    "ALIGNMENT",
    "aligned_empty",
    "is_aligned",
    "open_tiff",
    "tiff_siblings_by_path",
    "read_npy",
    "read_npz",
    "read_tiff",
    "read_png",
    "remaining_bytes",
]

#: byte alignment of every array hcsflow decodes from a file
ALIGNMENT = 64


class PickleNotAllowed(PickleRefusedError):
    """Decoding would unpickle and the caller did not pass ``allow_pickle=True``."""


def aligned_empty(shape: tuple[int, ...], dtype: Any, *, order: str = "C") -> np.ndarray:
    """An uninitialised array whose data starts on a :data:`ALIGNMENT`-byte boundary."""
    dt = np.dtype(dtype)
    count = 1
    for d in shape:
        count *= int(d)
    nbytes = count * dt.itemsize
    if nbytes == 0:
        return np.empty(shape, dtype=dt, order=order)  # type: ignore[call-overload]
    raw = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
    offset = (-raw.ctypes.data) % ALIGNMENT
    return raw[offset : offset + nbytes].view(dt).reshape(shape, order=order)


def is_aligned(arr: np.ndarray, alignment: int = ALIGNMENT) -> bool:
    """Whether ``arr``'s data pointer is a multiple of ``alignment`` (empty arrays: yes)."""
    return arr.size == 0 or arr.ctypes.data % alignment == 0


def remaining_bytes(fh: IO[bytes]) -> int | None:
    """Bytes from the current position to the end of ``fh`` (``None``: cannot tell)."""
    try:
        pos = fh.tell()
        try:
            size = os.fstat(fh.fileno()).st_size
        except (OSError, AttributeError, io.UnsupportedOperation):
            end = fh.seek(0, io.SEEK_END)
            fh.seek(pos)
            size = end
    except (OSError, io.UnsupportedOperation):
        return None
    return max(0, size - pos)


# --------------------------------------------------------------------------- NPY


def _npy_header(fh: IO[bytes], what: str) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(fh)
        else:
            shape, fortran, dtype = fmt._read_array_header(fh, version)  # type: ignore[attr-defined]
    except (ValueError, TypeError, SyntaxError, struct.error, EOFError) as exc:
        raise ValueError(f"{what} has no valid NPY header: {exc}") from exc
    return tuple(int(s) for s in shape), bool(fortran), np.dtype(dtype)


def _read_into(fh: IO[bytes], out: np.ndarray, what: str) -> None:
    view = memoryview(cast(Any, out.reshape(-1, order="A").view(np.uint8)))
    done = 0
    total = len(view)
    readinto = getattr(fh, "readinto", None)
    while done < total:
        if readinto is not None:
            n = readinto(view[done:])
        else:
            chunk = fh.read(min(total - done, 1 << 24))
            n = len(chunk)
            view[done : done + n] = chunk
        if not n:
            raise ValueError(f"{what} is truncated: {done} of {total} data bytes present")
        done += n


def read_npy(
    fh: IO[bytes],
    *,
    limits: StorageLimits,
    path: str | None,
    backend: str | None,
    allow_pickle: bool = False,
    mmap_mode: str | None = None,
    declared_size: int | None = None,
    what: str = "NPY array",
) -> np.ndarray:
    """One NPY array from ``fh`` (positioned at its magic string), checked and aligned.

    ``declared_size``: bytes the container says this member holds (NPZ), else the
    bytes left in the file are used to catch truncated or lying headers.
    """
    start = fh.tell()
    shape, fortran, dtype = _npy_header(fh, what)
    if dtype.hasobject:
        if not allow_pickle:
            raise PickleNotAllowed("the file holds an object array (pickled)")
        fh.seek(start)
        return np.asarray(np.lib.format.read_array(fh, allow_pickle=True))
    nbytes = declared_nbytes(shape, dtype, what=what, path=path, backend=backend)
    limits.check_bytes(nbytes, what=what, path=path, backend=backend)
    available = (
        declared_size - (fh.tell() - start) if declared_size is not None else remaining_bytes(fh)
    )
    if available is not None and available < nbytes:
        raise ValueError(
            f"{what} declares shape {shape} {dtype} ({nbytes} bytes) but only "
            f"{available} bytes follow the header (truncated or corrupt)"
        )
    order = "F" if fortran else "C"
    if mmap_mode is not None:
        return cast(Any, np.memmap)(
            cast(Any, fh),
            dtype=dtype,
            mode=mmap_mode,
            offset=fh.tell(),
            shape=shape,
            order=cast(Any, order),
        )
    out = aligned_empty(shape, dtype, order=order)
    _read_into(fh, out, what)
    return out


# --------------------------------------------------------------------------- NPZ


def read_npz(
    fh: IO[bytes], *, limits: StorageLimits, path: str | None, backend: str | None
) -> dict[str, Any]:
    """Every member of an NPZ archive; sizes from the zip directory are checked first.

    The zip reader stops at each member's declared uncompressed size and checks its
    CRC, so a member cannot inflate past what was checked.  Members that are not NPY
    files come back as ``bytes`` (like ``numpy.load``).
    """
    try:
        zf = zipfile.ZipFile(fh)
    except (zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise ValueError(f"not an NPZ (zip) archive: {exc}") from exc
    with zf:
        infos = zf.infolist()
        total = 0
        for info in infos:
            what = f"NPZ member {info.filename!r}"
            limits.check_bytes(info.file_size, what=what, path=path, backend=backend)
            total += info.file_size
        limits.check_bytes(total, what="NPZ archive (all members)", path=path, backend=backend)
        out: dict[str, Any] = {}
        for info in infos:
            name = info.filename
            key = name[: -len(".npy")] if name.endswith(".npy") else name
            what = f"NPZ member {name!r}"
            try:
                with zf.open(info) as member:
                    magic = member.read(len(np.lib.format.MAGIC_PREFIX))
                    if magic != np.lib.format.MAGIC_PREFIX:
                        out[key] = magic + member.read()
                        continue
                    stream = _Prefixed(magic, member)
                    out[key] = read_npy(
                        cast(IO[bytes], stream),
                        limits=limits,
                        path=path,
                        backend=backend,
                        declared_size=info.file_size,
                        what=what,
                    )
            except (zipfile.BadZipFile, EOFError) as exc:
                raise ValueError(f"{what} is corrupt: {exc}") from exc
        return out


class _Prefixed(io.RawIOBase):
    """A zip member stream with bytes already read put back in front (for NPY headers)."""

    def __init__(self, prefix: bytes, stream: IO[bytes]):
        self._prefix = prefix
        self._stream = stream
        self._pos = 0

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        if self._prefix:
            n = min(len(view), len(self._prefix))
            view[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
        else:
            n = self._stream.readinto(view)  # type: ignore[attr-defined]
        self._pos += n
        return n


# --------------------------------------------------------------------------- TIFF


#: whether tifffile may open the other files of a multi-file series by their paths
#: (see :func:`tiff_siblings_by_path`)
_SIBLINGS_BY_PATH: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "hcsflow_tiff_siblings_by_path", default=False
)


@contextlib.contextmanager
def tiff_siblings_by_path() -> Iterator[None]:
    """Within the block, a TIFF whose series continues in other files (multi-file
    OME-TIFF, Micro-Manager stacks) is read whole, tifffile opening the other files by
    the directory of the file object's name, as ``tifffile.imread`` does.

    Only for file objects named by their real path on a backend without a root (the
    disk backend over the whole file system): there is no store to leave.
    """
    token = _SIBLINGS_BY_PATH.set(True)
    try:
        yield
    finally:
        _SIBLINGS_BY_PATH.reset(token)


class _Unlocated:
    """A binary file object as tifffile sees it in a store: readable and seekable, but
    without a descriptor or a path, so tifffile opens, globs or checks nothing by path
    (the other files of multi-file OME-TIFF, Micro-Manager and NDTiff series)."""

    __slots__ = ("read", "readinto", "seek", "tell")

    def __init__(self, fh: IO[bytes]) -> None:
        # bound methods of the real object: reading costs what it costs on ``fh``
        self.read = fh.read
        self.seek = fh.seek
        self.tell = fh.tell
        readinto = getattr(fh, "readinto", None)
        self.readinto = readinto if readinto is not None else self._readinto_by_read

    def _readinto_by_read(self, buffer: Any) -> int:
        """``readinto`` for a file object that only has ``read``."""
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)


def open_tiff(fh: IO[bytes], name: str | None = None) -> Any:
    """A ``tifffile.TiffFile`` over ``fh`` that never opens another file by itself.

    The OME-XML of a multi-file OME-TIFF names the other files of its series
    (``TiffData/UUID/@FileName``), Micro-Manager and NDTiff stacks find theirs by
    pattern and index file, and tifffile opens them by joining those names to the
    directory of the name ``fh`` carries.  In a store that name is a virtual path, so
    the other files were looked for outside the store (``/B.ome.tif`` for
    ``/A.ome.tif`` of a store under ``/data``), a name like ``../../x`` led anywhere,
    and a file not found was replaced by zeros with only a log message.  Here tifffile
    reads ``fh`` alone (unless :func:`tiff_siblings_by_path` allows more), and
    :func:`read_tiff` refuses an OME series that continues in other files.  ``name``:
    the file's own name (tifffile matches it against the names in the OME-XML).
    """
    import tifffile

    if _SIBLINGS_BY_PATH.get():
        return tifffile.TiffFile(fh)
    # _Unlocated has what tifffile reads a binary stream with (read, readinto, seek, tell)
    return tifffile.TiffFile(cast(IO[bytes], _Unlocated(fh)), name=name, _multifile=False)


#: a ``UUID`` element of OME-XML naming the file that holds some planes
_OME_UUID_FILE = re.compile(rb"<(?:[\w.-]+:)?UUID\b[^>]*?\bFileName\s*=\s*(\"[^\"]*\"|'[^']*')")


def _other_ome_files(tif: Any) -> list[str]:
    """Files other than this one that an OME-TIFF's metadata places planes in.

    A pattern over the raw document rather than the plate readers' OME-XML parser
    (``hcsflow.readers._omexml``): this runs when tifffile could not build an OME series,
    often because the document is odd, where that parser refuses what it does not
    know; and the storage layer does not import the readers built on it."""
    raw = (tif.ome_metadata or "").encode("utf-8", "replace")
    own = str(tif.filename).lower()
    names: list[str] = []
    for match in _OME_UUID_FILE.finditer(raw):
        name = html.unescape(match.group(1)[1:-1].decode("utf-8", "replace"))
        if name.lower() != own and name not in names:
            names.append(name)
    return names


def read_tiff(
    fh: IO[bytes],
    *,
    limits: StorageLimits,
    path: str | None,
    backend: str | None,
    key: Any = None,
) -> np.ndarray:
    """The first series of a TIFF (or the pages ``key`` selects), checked and aligned."""
    # the file's own name, as the OME-XML of an OME-TIFF may spell it (a file object
    # over a bare descriptor is "named" by its number)
    name = getattr(fh, "name", None)
    own = os.path.basename(name if isinstance(name, str) and name else path or "") or None
    with open_tiff(fh, own) as tif:
        # pages.first, not len(pages): counting would parse every IFD of a stack
        try:
            tif.pages.first  # noqa: B018
        except IndexError as exc:
            raise ValueError("no image in the file (not a TIFF, or truncated)") from exc
        if key is not None:
            pages = tif.pages[key]
            selected = pages if isinstance(pages, list) else [pages]
            nbytes = sum(
                declared_nbytes(p.shape, p.dtype, what="TIFF page", path=path, backend=backend)
                for p in selected
            )
            limits.check_bytes(nbytes, what="the TIFF pages selected", path=path, backend=backend)
            return np.asarray(tif.asarray(key=key))
        series = tif.series[0]
        if tif.is_ome and series.kind != "ome":
            # tifffile built no OME series: one that continues in other files (it is
            # told not to open them), a BinaryOnly file or unreadable OME-XML; only the
            # first is refused, the others keep the file's own pages as before
            others = _other_ome_files(tif)
            if others:
                shown = ", ".join(repr(n) for n in others[:3])
                more = f" and {len(others) - 3} more" if len(others) > 3 else ""
                raise CodecRefusal(
                    f"the file is part of a multi-file OME-TIFF: its OME-XML places planes "
                    f"of its images in {shown}{more}, which a single load does not open; "
                    "read the folder as a plate with hcsflow.readers.read_plate (it opens "
                    "the other files through the backend), or load this file's own pages "
                    "with key="
                )
        shape = tuple(int(s) for s in series.shape)
        limits.check_array(shape, series.dtype, what="TIFF series 0", path=path, backend=backend)
        out = aligned_empty(shape, series.dtype)
        data = tif.asarray(out=out)
        if _metadata_unused(tif):
            # tifffile recovers from a broken page chain by returning fewer planes
            # (with only a log message); the declared shape catches that
            expected = _declared_size(tif)
            if expected is not None and expected != data.size:
                raise ValueError(
                    f"the file declares {expected} samples but holds {data.size} (truncated?)"
                )
        return np.asarray(data)


def _metadata_unused(tif: Any) -> bool:
    """Whether tifffile did not build the series it read from the file's own shape metadata.

    An ImageJ or shaped series takes its shape from that metadata (and ``asarray``
    reshapes to it), so its size is the declared size by construction; parsing the
    metadata a second time is needed only when tifffile fell back to another kind of
    series, which is what it does when the declared data runs past the end of the file.
    """
    kind = tif.series[0].kind
    return not (kind == "imagej" or kind == "shaped")


def _declared_size(tif: Any) -> int | None:
    """Number of samples a TIFF's own metadata (shaped or ImageJ) says it holds."""
    if tif.is_shaped and tif.shaped_metadata:
        shape = tif.shaped_metadata[0].get("shape")
        if shape:
            return int(np.prod(shape))
    if tif.is_imagej:
        meta = tif.imagej_metadata or {}
        images = int(meta.get("images", 1))
        return images * int(np.prod(tif.pages.first.shape))
    return None


# --------------------------------------------------------------------------- PNG

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# samples per pixel by PNG colour type (0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA)
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def png_header(head: bytes) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from the first 26 bytes of a PNG."""
    if len(head) < 26 or head[:8] != _PNG_MAGIC or head[12:16] != b"IHDR":
        raise ValueError("not a PNG file (no PNG signature and IHDR header)")
    width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
    if colour not in _PNG_SAMPLES or depth not in (1, 2, 4, 8, 16):
        raise ValueError(f"PNG header has an invalid colour type {colour} or bit depth {depth}")
    return width, height, depth, colour


def read_png(
    fh: IO[bytes], *, limits: StorageLimits, path: str | None, backend: str | None
) -> np.ndarray:
    """A PNG image through Pillow; its header is checked before any pixel is decoded."""
    from PIL import Image

    start = fh.tell()
    width, height, depth, colour = png_header(fh.read(26))
    fh.seek(start)
    # numpy gives each sample at least one byte, 16-bit samples two
    itemsize = 2 if depth == 16 else 1
    samples = 3 if colour == 3 else _PNG_SAMPLES[colour]  # palette images may expand to RGB
    limits.check_bytes(
        width * height * samples * itemsize,
        what=f"PNG image of {width} x {height}",
        path=path,
        backend=backend,
    )
    try:
        image = Image.open(fh, formats=["PNG"])
    except Image.DecompressionBombError as exc:
        limits.check_bytes(limits.max_decoded_bytes + 1, what=str(exc), path=path, backend=backend)
        raise
    with image:
        image.load()
        iface: dict[str, Any] = image.__array_interface__
        shape = tuple(int(s) for s in iface["shape"])
        out = aligned_empty(shape, np.dtype(iface["typestr"]))
        raw = iface["data"]
        flat = out.reshape(-1).view(np.uint8)
        if len(raw) != flat.size:
            raise ValueError(f"decoded PNG holds {len(raw)} bytes, expected {flat.size}")
        flat[:] = np.frombuffer(raw, dtype=np.uint8)
        return out
