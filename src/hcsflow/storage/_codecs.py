"""File formats of the disk backend, chosen by the path's lower-cased extension.

A :class:`Codec` works in two steps so that bad data is refused before any file is
touched: :meth:`Codec.prepare` checks and converts the data (raising
:class:`~hcsflow.errors.CodecRefusal`), and :meth:`Codec.encode` writes the prepared
value into an open binary file.  :meth:`Codec.decode` reads an open binary file back:
codecs never open paths themselves, so the backend's containment (see
:mod:`hcsflow.storage.disk`) covers every byte they read.  Decoders check the sizes a
file declares against :class:`~hcsflow.storage.StorageLimits` before allocating, and
return 64-byte aligned arrays (see :mod:`hcsflow.storage._decode`).  The backend turns a
refusal into :class:`~hcsflow.errors.DataFormatError` and a decoding failure into
:class:`~hcsflow.errors.CorruptDataError`, both naming the path and backend.

Arrays of every memory type are written as numpy: whatever
:func:`hcsflow.memory.detect_memory_type` recognises goes through
:func:`hcsflow.memory.to_numpy` (zero-copy for host arrays, one download for device
arrays, torch tensors detached from autograd).  Optional frameworks are recognised by
module name, never imported.
"""

from __future__ import annotations

import io
import json
import pickle
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import IO, Any, ClassVar, Literal

import numpy as np

from hcsflow.errors import (
    CodecRefusal,
    CorruptDataError,
    DataFormatError,
    HcsflowError,
    MemoryConversionError,
    MemoryTypeError,
    PickleRefusedError,
    ResourceLimitError,
    UnsupportedFormatError,
)
from hcsflow.storage._decode import (
    PickleNotAllowed,
    read_npy,
    read_npz,
    read_png,
    read_tiff,
    remaining_bytes,
)
from hcsflow.storage._limits import StorageLimits

__all__ = [
    "Codec",
    "CodecRefusal",
    "CodecRegistry",
    "PickleNotAllowed",
    "TiffConfig",
    "default_codecs",
    "to_host_array",
    "codec_for",
    "check_codec_options",
    "decoding",
]

#: load options every codec accepts (and non-pickle codecs ignore), so generic code can
#: pass ``allow_pickle`` to a batch of mixed formats
_UNIVERSAL_LOAD_OPTIONS = frozenset({"allow_pickle"})


class Codec(ABC):
    """One file format: which extensions select it, how data goes in and comes back."""

    #: short name used in messages and docs
    name: ClassVar[str]
    #: lower-case extensions with the leading dot
    extensions: ClassVar[tuple[str, ...]]
    #: what ``load`` returns, for docs and error messages
    loads_as: ClassVar[str]
    save_options: ClassVar[frozenset[str]] = frozenset()
    load_options: ClassVar[frozenset[str]] = frozenset()

    def check_options(self, options: Mapping[str, Any], *, loading: bool) -> str | None:
        """The first option this codec does not understand, or ``None``."""
        allowed = (self.load_options | _UNIVERSAL_LOAD_OPTIONS) if loading else self.save_options
        for key in options:
            if key not in allowed:
                return key
        return None

    @abstractmethod
    def prepare(self, data: Any, **options: Any) -> Any:
        """Validate and convert ``data``; raise :class:`CodecRefusal` if unsuitable."""

    @abstractmethod
    def encode(self, prepared: Any, fh: IO[bytes], **options: Any) -> None:
        """Write a value returned by :meth:`prepare` into the binary file ``fh``."""

    @abstractmethod
    def decode(
        self,
        fh: IO[bytes],
        *,
        limits: StorageLimits,
        path: str | None = None,
        backend: str | None = None,
        **options: Any,
    ) -> Any:
        """Decode the open binary file ``fh`` (positioned at its start).

        Check every size the file declares against ``limits`` before allocating
        (:meth:`StorageLimits.check_bytes` raises naming ``path`` and ``backend``).
        """


def _read_all(
    fh: IO[bytes], limits: StorageLimits, path: str | None, backend: str | None, what: str
) -> bytes:
    """The rest of ``fh`` after checking its size against the decoded-bytes limit."""
    size = remaining_bytes(fh)
    if size is not None:
        limits.check_bytes(size, what=what, path=path, backend=backend)
        return fh.read()
    data = fh.read(limits.max_decoded_bytes + 1)
    limits.check_bytes(len(data), what=what, path=path, backend=backend)
    return data


# --------------------------------------------------------------------------- host arrays


def _type_name(obj: Any) -> str:
    cls = type(obj)
    return (
        f"{cls.__module__}.{cls.__qualname__}" if cls.__module__ != "builtins" else cls.__qualname__
    )


def to_host_array(data: Any) -> np.ndarray:
    """``data`` as a numpy array on the host, for writing; else :class:`CodecRefusal`.

    numpy arrays are returned as they are.  Arrays of a supported memory type (torch,
    jax, tensorflow, cupy, pyclesperanto) go through :func:`hcsflow.memory.to_numpy`:
    host arrays are shared, device arrays are downloaded once, and a torch tensor that
    requires grad is detached (its values are written, the caller's tensor is not
    touched).  Other objects exposing ``__array__`` or the buffer protocol go through
    ``np.asarray``; an unknown type living on a GPU (``__cuda_array_interface__``) is
    refused rather than guessed at.
    """
    if isinstance(data, np.ndarray):
        return data
    # imported here: hcsflow.memory sits above storage in the layering, and plain numpy
    # saves never need it
    from hcsflow.memory import is_supported_array, to_numpy

    tname = _type_name(data)
    if is_supported_array(data):
        try:
            return to_numpy(data)
        except (MemoryConversionError, MemoryTypeError) as exc:
            raise CodecRefusal(f"{tname} could not be converted to numpy: {exc}") from exc
    if hasattr(data, "__cuda_array_interface__"):
        raise CodecRefusal(
            f"{tname} lives on a GPU and is not a supported array type; convert it to "
            "numpy (or to a type hcsflow.memory supports) before saving it to a file"
        )
    if not hasattr(data, "__array__") and not _has_buffer(data):
        raise CodecRefusal(f"{tname} is not array data")
    try:
        arr = np.asarray(data)
    except Exception as exc:
        raise CodecRefusal(f"{tname} could not be viewed as a numpy array: {exc}") from exc
    if arr.dtype == object:
        raise CodecRefusal(f"{tname} converts to an object array, which is not image data")
    return arr


def _has_buffer(data: Any) -> bool:
    if isinstance(data, (str, bytes, bytearray)):
        return False
    try:
        memoryview(data)
    except TypeError:
        return False
    return True


def _image_array(data: Any, fmt: str) -> np.ndarray:
    arr = to_host_array(data)
    if arr.dtype.hasobject:
        raise CodecRefusal(
            f"a {fmt} image holds numbers; got an array of Python objects (dtype {arr.dtype}, "
            f"shape {arr.shape}), which often means a function returned a list of arrays of "
            "different shapes"
        )
    if arr.ndim < 2:
        raise CodecRefusal(f"a {fmt} image needs at least 2 dimensions, got shape {arr.shape}")
    return arr


# --------------------------------------------------------------------------- codecs

# ImageJ hyperstacks can hold only these sample types
_IMAGEJ_DTYPES = frozenset(np.dtype(t) for t in ("uint8", "uint16", "int16", "float32"))


_TIFF_COMPRESSIONS = ("zlib", "zstd", "lzw", "lzma")


@dataclass(frozen=True)
class TiffConfig:
    """How TIFF images are encoded: lossless compression and OME metadata.

    The default, ``zlib`` at level 1 with horizontal differencing (integer images),
    is readable by every TIFF reader that handles compression (Fiji, Bio-Formats,
    napari, tifffile) and typically halves a microscope image; level 1 because higher
    levels cost 2-3x the time for a few percent.  ``compression=None`` writes
    uncompressed TIFFs; ``"zstd"`` compresses as well, faster to write but less widely
    readable.  ``ome=True`` writes OME-XML (physical sizes, channel names) when the
    writer knows them.
    """

    compression: str | None = "zlib"
    level: int | None = 1
    predictor: bool = True
    ome: bool = True

    def __post_init__(self) -> None:
        if self.compression is not None and self.compression not in _TIFF_COMPRESSIONS:
            raise ValueError(
                f"TiffConfig.compression must be one of {_TIFF_COMPRESSIONS} or None, "
                f"got {self.compression!r}"
            )
        if self.level is not None and (
            not isinstance(self.level, int) or isinstance(self.level, bool) or self.level < 0
        ):
            raise ValueError(f"TiffConfig.level must be a non-negative int, got {self.level!r}")

    def save_options(self, dtype: Any) -> dict[str, Any]:
        """``TiffCodec`` save options (``compression``, ``compressionargs``, ``predictor``)
        for images of ``dtype``."""
        if self.compression is None:
            return {}
        opts: dict[str, Any] = {"compression": self.compression}
        if self.level is not None and self.compression != "lzw":
            opts["compressionargs"] = {"level": self.level}
        # the floating-point predictor is not read by every TIFF reader: integers only
        if self.predictor and np.dtype(dtype).kind in "iu":
            opts["predictor"] = True
        return opts


class TiffCodec(Codec):
    """TIFF through tifffile; 3-D stacks become ImageJ hyperstacks (axes ZYX).

    Save options: tifffile's ``compression``, ``compressionargs`` and ``predictor``,
    and ``ome``: a mapping of OME metadata (tifffile's ``metadata=`` for an OME-TIFF:
    ``axes``, ``PhysicalSizeX``..., ``Channel``) that makes the file an OME-TIFF.
    """

    name = "tiff"
    extensions = (".tif", ".tiff")
    loads_as = "numpy.ndarray (same dtype and shape)"
    save_options = frozenset({"compression", "compressionargs", "predictor", "ome"})
    load_options = frozenset({"key"})

    def prepare(self, data: Any, **options: Any) -> np.ndarray:
        ome = options.get("ome")
        if ome is not None and not isinstance(ome, Mapping):
            raise CodecRefusal(
                f"the ome option is a mapping of OME metadata, got {_type_name(ome)}"
            )
        return _image_array(data, "TIFF")

    def encode(self, prepared: np.ndarray, fh: IO[bytes], **options: Any) -> None:
        import tifffile

        ome = options.pop("ome", None)
        if ome is not None:
            meta = dict(ome)
            meta.setdefault("axes", "ZYX"[-prepared.ndim :] if prepared.ndim <= 3 else None)
            if meta["axes"] is None:
                del meta["axes"]
            tifffile.imwrite(
                fh, prepared, ome=True, photometric="minisblack", metadata=meta, **options
            )
        elif prepared.ndim == 3 and prepared.dtype in _IMAGEJ_DTYPES:
            tifffile.imwrite(fh, prepared, imagej=True, metadata={"axes": "ZYX"}, **options)
        elif prepared.ndim >= 3:
            # grey planes, never guessed RGB from a length-3 or 4 axis
            axes = {"axes": "ZYX"} if prepared.ndim == 3 else {}
            tifffile.imwrite(fh, prepared, photometric="minisblack", metadata=axes, **options)
        else:
            tifffile.imwrite(fh, prepared, **options)

    def decode(
        self,
        fh: IO[bytes],
        *,
        limits: StorageLimits,
        path: str | None = None,
        backend: str | None = None,
        **options: Any,
    ) -> np.ndarray:
        options.pop("allow_pickle", None)
        return read_tiff(fh, limits=limits, path=path, backend=backend, key=options.get("key"))


class PngCodec(Codec):
    """PNG through Pillow: 2-D uint8/uint16/bool, or uint8 RGB/RGBA (``Y, X, 3|4``)."""

    name = "png"
    extensions = (".png",)
    loads_as = "numpy.ndarray (same dtype and shape)"
    save_options = frozenset({"compress_level"})

    def prepare(self, data: Any, **options: Any) -> np.ndarray:
        arr = _image_array(data, "PNG")
        if arr.ndim == 2 and arr.dtype in (np.uint8, np.uint16, np.bool_):
            return arr
        if arr.ndim == 3 and arr.shape[2] in (3, 4) and arr.dtype == np.uint8:
            return arr
        raise CodecRefusal(
            f"PNG holds 2-D uint8/uint16/bool images or uint8 RGB/RGBA (Y, X, 3|4); got "
            f"shape {arr.shape} dtype {arr.dtype} (save stacks and other types as .tif)"
        )

    def encode(self, prepared: np.ndarray, fh: IO[bytes], **options: Any) -> None:
        from PIL import Image

        Image.fromarray(np.ascontiguousarray(prepared)).save(fh, format="PNG", **options)

    def decode(
        self,
        fh: IO[bytes],
        *,
        limits: StorageLimits,
        path: str | None = None,
        backend: str | None = None,
        **options: Any,
    ) -> np.ndarray:
        return read_png(fh, limits=limits, path=path, backend=backend)


class NpyCodec(Codec):
    """One numpy array in ``.npy`` format (object arrays only with ``allow_pickle``)."""

    name = "npy"
    extensions = (".npy",)
    loads_as = "numpy.ndarray (same dtype and shape)"
    save_options = frozenset({"allow_pickle"})
    load_options = frozenset({"mmap_mode"})

    def prepare(self, data: Any, **options: Any) -> np.ndarray:
        if isinstance(data, np.ndarray) and data.dtype == object:
            if not options.get("allow_pickle", False):
                raise CodecRefusal("an object array needs allow_pickle=True (it is pickled)")
            return data
        return to_host_array(data)

    def encode(self, prepared: np.ndarray, fh: IO[bytes], **options: Any) -> None:
        np.save(fh, prepared, allow_pickle=bool(options.get("allow_pickle", False)))

    def decode(
        self,
        fh: IO[bytes],
        *,
        limits: StorageLimits,
        path: str | None = None,
        backend: str | None = None,
        **options: Any,
    ) -> np.ndarray:
        mode = options.get("mmap_mode")
        if mode not in (None, "r", "r+", "c"):
            raise CodecRefusal(f"mmap_mode must be None, 'r', 'r+' or 'c' for a load, got {mode!r}")
        return read_npy(
            fh,
            limits=limits,
            path=path,
            backend=backend,
            allow_pickle=bool(options.get("allow_pickle", False)),
            mmap_mode=mode,
        )


class NpzCodec(Codec):
    """Several named arrays (a ``dict[str, array]``) in ``.npz`` format."""

    name = "npz"
    extensions = (".npz",)
    loads_as = "dict[str, numpy.ndarray]"
    save_options = frozenset({"compressed"})

    def prepare(self, data: Any, **options: Any) -> dict[str, np.ndarray]:
        if not isinstance(data, Mapping):
            raise CodecRefusal(f".npz holds a dict of named arrays, got {_type_name(data)}")
        out = {}
        for key, value in data.items():
            if not isinstance(key, str):
                raise CodecRefusal(f".npz array names must be str, got {key!r}")
            out[key] = to_host_array(value)
        return out

    def encode(self, prepared: dict[str, np.ndarray], fh: IO[bytes], **options: Any) -> None:
        if options.get("compressed", False):
            np.savez_compressed(fh, allow_pickle=False, **prepared)
        else:
            np.savez(fh, allow_pickle=False, **prepared)

    def decode(
        self,
        fh: IO[bytes],
        *,
        limits: StorageLimits,
        path: str | None = None,
        backend: str | None = None,
        **options: Any,
    ) -> dict[str, np.ndarray]:
        return read_npz(fh, limits=limits, path=path, backend=backend)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{_type_name(obj)} is not JSON serialisable")


class JsonCodec(Codec):
    """JSON: any JSON-serialisable object (numpy scalars and arrays become numbers/lists).

    A ``str`` is taken to be a JSON document already and written verbatim after checking
    that it parses.
    """

    name = "json"
    extensions = (".json",)
    loads_as = "the parsed object (dict, list, str, int, float, bool or None)"
    save_options = frozenset({"indent", "sort_keys"})

    def prepare(self, data: Any, **options: Any) -> bytes:
        if isinstance(data, str):
            try:
                json.loads(data)
            except json.JSONDecodeError as exc:
                raise CodecRefusal(f"the str given is not a JSON document: {exc}") from exc
            return data.encode("utf-8")
        try:
            text = json.dumps(
                data,
                default=_json_default,
                indent=options.get("indent", 2),
                sort_keys=bool(options.get("sort_keys", False)),
            )
        except (TypeError, ValueError) as exc:
            raise CodecRefusal(str(exc)) from exc
        return text.encode("utf-8")

    def encode(self, prepared: bytes, fh: IO[bytes], **options: Any) -> None:
        fh.write(prepared)

    def decode(
        self,
        fh: IO[bytes],
        *,
        limits: StorageLimits,
        path: str | None = None,
        backend: str | None = None,
        **options: Any,
    ) -> Any:
        raw = _read_all(fh, limits, path, backend, "JSON document")
        return limits.parse_json(raw, path=path, backend=backend)


class CsvCodec(Codec):
    """CSV: a pandas DataFrame, a list of dicts (one per row) or CSV text in; a DataFrame out."""

    name = "csv"
    extensions = (".csv",)
    loads_as = "pandas.DataFrame (an empty file loads as an empty DataFrame)"
    save_options = frozenset({"index"})

    def prepare(self, data: Any, **options: Any) -> bytes:
        if isinstance(data, str):
            return data.encode("utf-8")
        import pandas as pd

        if isinstance(data, pd.DataFrame):
            frame = data
        elif isinstance(data, list) and all(isinstance(row, Mapping) for row in data):
            frame = pd.DataFrame(data)
        else:
            raise CodecRefusal(
                f".csv takes a pandas DataFrame, a list of dicts or CSV text, got "
                f"{_type_name(data)}"
            )
        if frame.shape[1] == 0:
            return b""
        return frame.to_csv(index=bool(options.get("index", False))).encode("utf-8")

    def encode(self, prepared: bytes, fh: IO[bytes], **options: Any) -> None:
        fh.write(prepared)

    def decode(
        self,
        fh: IO[bytes],
        *,
        limits: StorageLimits,
        path: str | None = None,
        backend: str | None = None,
        **options: Any,
    ) -> Any:
        import pandas as pd

        raw = _read_all(fh, limits, path, backend, "CSV table")
        if not raw.strip():
            return pd.DataFrame()
        return pd.read_csv(io.BytesIO(raw))


class TextCodec(Codec):
    """Plain UTF-8 text: ``str`` in, ``str`` out."""

    name = "text"
    extensions = (".txt",)
    loads_as = "str"

    def prepare(self, data: Any, **options: Any) -> bytes:
        if not isinstance(data, str):
            raise CodecRefusal(f".txt holds str, got {_type_name(data)}")
        return data.encode("utf-8")

    def encode(self, prepared: bytes, fh: IO[bytes], **options: Any) -> None:
        fh.write(prepared)

    def decode(
        self,
        fh: IO[bytes],
        *,
        limits: StorageLimits,
        path: str | None = None,
        backend: str | None = None,
        **options: Any,
    ) -> str:
        return _read_all(fh, limits, path, backend, "text file").decode("utf-8")


class BytesCodec(Codec):
    """Raw bytes: ``bytes``, ``bytearray`` or ``memoryview`` in, ``bytes`` out."""

    name = "bytes"
    extensions = (".bin",)
    loads_as = "bytes"

    def prepare(self, data: Any, **options: Any) -> bytes | bytearray | memoryview:
        if isinstance(data, (bytes, bytearray, memoryview)):
            return data
        raise CodecRefusal(f".bin holds bytes, bytearray or memoryview, got {_type_name(data)}")

    def encode(self, prepared: bytes, fh: IO[bytes], **options: Any) -> None:
        fh.write(prepared)

    def decode(
        self,
        fh: IO[bytes],
        *,
        limits: StorageLimits,
        path: str | None = None,
        backend: str | None = None,
        **options: Any,
    ) -> bytes:
        return _read_all(fh, limits, path, backend, "file")


class PickleCodec(Codec):
    """Any picklable object; loading runs the pickle and needs ``allow_pickle=True``."""

    name = "pickle"
    extensions = (".pkl", ".pickle")
    loads_as = "the unpickled object (only with allow_pickle=True)"

    def prepare(self, data: Any, **options: Any) -> bytes:
        try:
            return pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise CodecRefusal(f"{_type_name(data)} cannot be pickled: {exc}") from exc

    def encode(self, prepared: bytes, fh: IO[bytes], **options: Any) -> None:
        fh.write(prepared)

    def decode(
        self,
        fh: IO[bytes],
        *,
        limits: StorageLimits,
        path: str | None = None,
        backend: str | None = None,
        **options: Any,
    ) -> Any:
        if not options.get("allow_pickle", False):
            raise PickleNotAllowed("loading a pickle can run arbitrary code")
        return pickle.loads(_read_all(fh, limits, path, backend, "pickle"))


class TorchCodec(Codec):
    """``torch.save`` files; loading unpickles and needs ``allow_pickle=True``."""

    name = "torch"
    extensions = (".pt", ".pth")
    loads_as = "the object torch.load returns (only with allow_pickle=True)"

    @staticmethod
    def _torch() -> Any:
        try:
            import torch
        except ImportError as exc:
            raise ImportError(".pt files need PyTorch: pip install 'hcsflow[torch]'") from exc
        return torch

    def prepare(self, data: Any, **options: Any) -> Any:
        self._torch()
        return data

    def encode(self, prepared: Any, fh: IO[bytes], **options: Any) -> None:
        self._torch().save(prepared, fh)

    def decode(
        self,
        fh: IO[bytes],
        *,
        limits: StorageLimits,
        path: str | None = None,
        backend: str | None = None,
        **options: Any,
    ) -> Any:
        if not options.get("allow_pickle", False):
            raise PickleNotAllowed("loading a .pt file can run arbitrary code")
        raw = _read_all(fh, limits, path, backend, "torch file")
        return self._torch().load(io.BytesIO(raw), weights_only=False)


class CodecRegistry:
    """Extension (lower-case, with dot) to :class:`Codec`."""

    def __init__(self, codecs: Iterable[Codec] = ()):
        self._by_ext: dict[str, Codec] = {}
        for codec in codecs:
            self.register(codec)

    def register(self, codec: Codec, *, replace: bool = False) -> None:
        """Make ``codec`` handle its extensions; refuses a taken extension unless ``replace``."""
        for ext in codec.extensions:
            if not ext.startswith(".") or ext != ext.lower():
                raise ValueError(f"codec extensions are lower-case with a dot, got {ext!r}")
            if ext in self._by_ext and not replace:
                raise ValueError(f"extension {ext!r} already has codec {self._by_ext[ext].name!r}")
        for ext in codec.extensions:
            self._by_ext[ext] = codec

    def for_name(self, filename: str) -> Codec | None:
        """The codec for a file name (longest matching extension wins), or ``None``."""
        lower = filename.lower()
        dot = lower.rfind(".")
        if dot <= 0:
            return None
        return self._by_ext.get(lower[dot:])

    def extensions(self) -> list[str]:
        """Every registered extension, sorted."""
        return sorted(self._by_ext)

    def codecs(self) -> list[Codec]:
        """Registered codecs, each once, in registration order."""
        return list(dict.fromkeys(self._by_ext.values()))


def default_codecs() -> CodecRegistry:
    """A fresh registry with every built-in codec."""
    return CodecRegistry(
        [
            TiffCodec(),
            PngCodec(),
            NpyCodec(),
            NpzCodec(),
            JsonCodec(),
            CsvCodec(),
            TextCodec(),
            BytesCodec(),
            PickleCodec(),
            TorchCodec(),
        ]
    )


# --------------------------------------------------------------------------- for backends
# The file backends (disk, zarr, fsspec) select codecs and report their failures alike.


def codec_for(codecs: CodecRegistry, path: str, backend: str) -> Codec:
    """The codec ``path``'s extension selects; :class:`UnsupportedFormatError` if none."""
    codec = codecs.for_name(path.rsplit("/", 1)[-1])
    if codec is None:
        known = " ".join(codecs.extensions())
        raise UnsupportedFormatError(
            f"no file format for this extension (known: {known})", path=path, backend=backend
        )
    return codec


def check_codec_options(
    codec: Codec, options: Mapping[str, Any], *, loading: bool, path: str, backend: str
) -> None:
    """Refuse an option ``codec`` does not take (:class:`DataFormatError` naming it)."""
    bad = codec.check_options(options, loading=loading)
    if bad is not None:
        raise DataFormatError(
            f"the {codec.name} format does not take option {bad!r}", path=path, backend=backend
        )


class decoding:  # noqa: N801 - used as ``with decoding(...)``, like a function
    """Turn what ``codec.decode`` raises inside the block into typed errors naming ``path``.

    A refused pickle is :class:`PickleRefusedError`, a refusal :class:`DataFormatError`,
    running out of memory (within the limits) :class:`ResourceLimitError`, anything
    else the decoder raises :class:`CorruptDataError`.  hcsflow's own errors and a
    missing optional package pass unchanged, and so does an ``OSError`` with an errno
    (a real I/O failure, not a decoding one) unless ``os_error`` maps it.

    A class rather than a generator context manager: it is entered once per file
    loaded, and a generator costs several times more to set up.
    """

    __slots__ = ("codec", "path", "backend", "os_error")

    def __init__(
        self,
        codec: Codec,
        path: str,
        backend: str,
        *,
        os_error: Callable[[OSError], BaseException | None] | None = None,
    ) -> None:
        self.codec = codec
        self.path = path
        self.backend = backend
        self.os_error = os_error

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        if exc is None:
            return False
        mapped = self._mapped(exc)
        if mapped is None:
            return False  # raised on unchanged
        raise mapped from exc

    def _mapped(self, exc: BaseException) -> BaseException | None:
        """The typed error ``exc`` becomes; ``None``: it passes unchanged."""
        name, path, backend = self.codec.name, self.path, self.backend
        if isinstance(exc, PickleNotAllowed):
            return PickleRefusedError(
                f"{exc}; pass allow_pickle=True only for files you trust",
                path=path,
                backend=backend,
            )
        if isinstance(exc, CodecRefusal):
            return DataFormatError(f"cannot load as {name}: {exc}", path=path, backend=backend)
        if isinstance(exc, (HcsflowError, ImportError)):
            return None
        if isinstance(exc, MemoryError):
            return ResourceLimitError(
                f"not enough memory to decode the file as {name} (it is within "
                "StorageLimits; lower HCSFLOW_MAX_DECODED_BYTES to refuse such files early)",
                path=path,
                backend=backend,
            )
        if isinstance(exc, OSError):
            mapped = self.os_error(exc) if self.os_error is not None else None
            if mapped is not None:
                return mapped
            if exc.errno is not None:
                return None
            return CorruptDataError(
                f"cannot decode the file as {name}: {exc}", path=path, backend=backend
            )
        if isinstance(exc, Exception):
            return CorruptDataError(
                f"cannot decode the file as {name}: {type(exc).__name__}: {exc}",
                path=path,
                backend=backend,
            )
        return None  # KeyboardInterrupt, SystemExit...
