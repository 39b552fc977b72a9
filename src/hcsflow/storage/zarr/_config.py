"""``ZarrConfig``: how the zarr backend encodes, chunks, shards and pyramids arrays."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from hcsflow.errors import ConfigurationError
from hcsflow.storage.plate import PLATE_FORMATS

__all__ = ["ZarrConfig", "COMPRESSORS"]

Compressor = Literal["zstd", "lz4", "blosc-zstd", "blosc-lz4", "zlib", "none"]

COMPRESSORS: dict[str, tuple[int, int, int]] = {
    # name: (default level, lowest, highest)
    "zstd": (1, 1, 9),
    "lz4": (5, 1, 9),
    "blosc-zstd": (3, 1, 9),
    "blosc-lz4": (5, 1, 9),
    "zlib": (6, 1, 9),
    "none": (0, 0, 0),
}


@dataclass(frozen=True, slots=True)
class ZarrConfig:
    """Encoding of the arrays the zarr backend writes (frozen, hashable, picklable).

    * ``compressor``: ``"zstd"`` (default) and ``"lz4"`` compress after a byte shuffle
      (the high and low bytes of each pixel are grouped, which is what makes noisy
      16-bit images compress); ``"blosc-zstd"`` and ``"blosc-lz4"`` use a bit shuffle
      instead; all four are stored with the zarr v3 core ``blosc`` codec so every
      zarr reader decodes them.  ``"zlib"`` is deflate (stored as the core ``gzip``
      codec in zarr v3, as ``zlib`` in zarr v2); ``"none"`` stores raw bytes.
    * ``level``: compression level, ``None`` for the codec's default (zstd 1, lz4 5,
      zlib 6).  Blosc-based codecs take blosc's 1-9 scale, zlib its own 1-9.
    * ``chunks``: ``"plane"`` (default: one Y x X plane per chunk, so reading a plane
      decodes one chunk), ``"well"`` (one chunk per field image) or an explicit chunk
      shape - either ``(y, x)`` tiles of each plane or one entry per array dimension.
    * ``shards``: ``None`` (default, one object per chunk), ``"field"`` (one shard per
      field image) or an explicit shard shape (a multiple of the chunk shape); sharding
      packs many chunks into one object so object stores are not flooded.
    * ``pyramid_levels``: number of resolution levels, >= 1; each level halves y and x
      (block mean for images, nearest sample for labels).
    * ``ngff_version``: ``"0.5"`` (default, zarr format 3) or ``"0.4"`` (zarr format 2
      for older readers).
    * ``plate_format``: number of wells of the physical plate (6, 12, 24, 48, 96, 384 or
      1536); ``None`` infers the smallest standard plate that holds every written well.
    """

    compressor: Compressor = "zstd"
    level: int | None = None
    chunks: Literal["plane", "well"] | tuple[int, ...] = "plane"
    shards: Literal["field"] | tuple[int, ...] | None = None
    pyramid_levels: int = 1
    ngff_version: Literal["0.5", "0.4"] = "0.5"
    plate_format: int | None = None

    def __post_init__(self) -> None:
        if self.compressor not in COMPRESSORS:
            raise ConfigurationError(
                f"ZarrConfig.compressor must be one of {sorted(COMPRESSORS)}, "
                f"got {self.compressor!r}"
            )
        _, lo, hi = COMPRESSORS[self.compressor]
        if self.level is not None:
            if not isinstance(self.level, int) or isinstance(self.level, bool):
                raise ConfigurationError(f"ZarrConfig.level must be an int, got {self.level!r}")
            if self.compressor != "none" and not lo <= self.level <= hi:
                raise ConfigurationError(
                    f"ZarrConfig.level {self.level} is outside {lo}..{hi} for "
                    f"compressor {self.compressor!r}"
                )
        if isinstance(self.chunks, (tuple, list)):
            chunks = tuple(self.chunks)
            if not chunks or not all(isinstance(c, int) and c > 0 for c in chunks):
                raise ConfigurationError(
                    f"ZarrConfig.chunks must be positive ints, got {self.chunks!r}"
                )
            object.__setattr__(self, "chunks", chunks)
        elif self.chunks not in ("plane", "well"):
            raise ConfigurationError(
                f"ZarrConfig.chunks must be 'plane', 'well' or a shape, got {self.chunks!r}"
            )
        if isinstance(self.shards, (tuple, list)):
            shards = tuple(self.shards)
            if not shards or not all(isinstance(c, int) and c > 0 for c in shards):
                raise ConfigurationError(
                    f"ZarrConfig.shards must be positive ints, got {self.shards!r}"
                )
            object.__setattr__(self, "shards", shards)
        elif self.shards not in (None, "field"):
            raise ConfigurationError(
                f"ZarrConfig.shards must be None, 'field' or a shape, got {self.shards!r}"
            )
        if self.shards is not None and self.ngff_version == "0.4":
            raise ConfigurationError("sharding needs zarr format 3 (ngff_version '0.5')")
        if (
            not isinstance(self.pyramid_levels, int)
            or isinstance(self.pyramid_levels, bool)
            or not 1 <= self.pyramid_levels <= 16
        ):
            raise ConfigurationError(
                f"ZarrConfig.pyramid_levels must be an int in 1..16, got {self.pyramid_levels!r}"
            )
        if self.ngff_version not in ("0.5", "0.4"):
            raise ConfigurationError(
                f"ZarrConfig.ngff_version must be '0.5' or '0.4', got {self.ngff_version!r}"
            )
        if self.plate_format is not None and self.plate_format not in PLATE_FORMATS:
            raise ConfigurationError(
                f"ZarrConfig.plate_format must be one of {sorted(PLATE_FORMATS)}, "
                f"got {self.plate_format!r}"
            )

    # ------------------------------------------------------------------ derived

    @property
    def zarr_format(self) -> int:
        """3 for NGFF 0.5, 2 for NGFF 0.4."""
        return 3 if self.ngff_version == "0.5" else 2

    @property
    def effective_level(self) -> int:
        """The level actually used (the codec default when ``level`` is ``None``)."""
        return COMPRESSORS[self.compressor][0] if self.level is None else self.level

    def chunk_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Chunk shape for an array of ``shape`` (planes are the last two dimensions)."""
        nd = len(shape)
        if nd == 0:
            return ()
        if self.chunks == "well":
            out = tuple(max(1, s) for s in shape)
        elif self.chunks == "plane":
            out = tuple(1 for _ in shape[:-2]) + tuple(max(1, s) for s in shape[-2:])
        else:
            chunks = tuple(self.chunks)
            if len(chunks) == 2 and nd >= 2:
                chunks = (1,) * (nd - 2) + chunks
            if len(chunks) != nd:
                raise ConfigurationError(
                    f"ZarrConfig.chunks {self.chunks!r} does not fit an array of shape {shape}"
                )
            out = chunks
        return tuple(min(c, max(1, s)) for c, s in zip(out, shape, strict=True))

    def shard_shape(
        self, shape: tuple[int, ...], chunks: tuple[int, ...]
    ) -> tuple[int, ...] | None:
        """Shard shape (a multiple of ``chunks``) or ``None`` without sharding."""
        if self.shards is None or not shape:
            return None
        if self.shards == "field":
            target = tuple(max(1, s) for s in shape)
        else:
            target = tuple(self.shards)
            if len(target) == 2 and len(shape) >= 2:
                target = (1,) * (len(shape) - 2) + target
            if len(target) != len(shape):
                raise ConfigurationError(
                    f"ZarrConfig.shards {self.shards!r} does not fit an array of shape {shape}"
                )
        # round up so every shard holds a whole number of chunks
        return tuple(max(c, math.ceil(t / c) * c) for t, c in zip(target, chunks, strict=True))

    def codecs(self, itemsize: int) -> dict[str, Any]:
        """Keyword arguments for ``zarr.create_array`` (``compressors=`` and friends)."""
        level = self.effective_level
        name = self.compressor
        if self.zarr_format == 3:
            from zarr.codecs import BloscCodec, GzipCodec

            if name == "none":
                return {"compressors": None}
            if name == "zlib":
                return {"compressors": [GzipCodec(level=level)]}
            cname: Literal["zstd", "lz4"] = "zstd" if name.endswith("zstd") else "lz4"
            shuffle: Literal["shuffle", "bitshuffle"] = (
                "bitshuffle" if name.startswith("blosc-") else "shuffle"
            )
            return {
                "compressors": [
                    BloscCodec(cname=cname, clevel=level, shuffle=shuffle, typesize=itemsize)
                ]
            }
        import numcodecs

        if name == "none":
            return {"compressors": None}
        if name == "zlib":
            return {"compressors": numcodecs.Zlib(level=level)}
        cname = "zstd" if name.endswith("zstd") else "lz4"
        shuffle = (
            numcodecs.Blosc.BITSHUFFLE if name.startswith("blosc-") else (numcodecs.Blosc.SHUFFLE)
        )
        return {"compressors": numcodecs.Blosc(cname=cname, clevel=level, shuffle=shuffle)}
