"""Formats of the disk backend: codec choice by extension, decoding and batch loads."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Any

from hcsflow import paths as vpaths
from hcsflow.errors import (
    CodecRefusal,
    DataFormatError,
    HcsflowError,
)
from hcsflow.storage._base import batch_item_error
from hcsflow.storage._batch import batch_workers, mean_file_size, releases_gil, run_batch
from hcsflow.storage._codecs import (
    Codec,
    check_codec_options,
    codec_for,
    decoding,
)
from hcsflow.storage._decode import tiff_siblings_by_path
from hcsflow.storage.disk._paths import _DiskPaths, file_object

__all__: list[str] = []


class _DiskFormats(_DiskPaths):
    """Codec selection and decoding on top of the path mapping."""

    def _codec(self, vp: str) -> Codec:
        return codec_for(self.codecs, vp, self.name)

    def _check_options(self, codec: Codec, vp: str, options: dict[str, Any], loading: bool) -> None:
        check_codec_options(codec, options, loading=loading, path=vp, backend=self.name)

    def _prepare(self, data: Any, vp: str, options: dict[str, Any]) -> tuple[Codec, Any]:
        codec = self._codec(vp)
        self._check_options(codec, vp, options, loading=False)
        try:
            return codec, codec.prepare(data, **options)
        except CodecRefusal as exc:
            raise DataFormatError(
                f"cannot save as {codec.name}: {exc}", path=vp, backend=self.name
            ) from exc

    # ------------------------------------------------------------------ load

    def load(self, path: vpaths.PathLike, **options: Any) -> Any:
        """Decode the file at ``path`` (through symlinks) with its extension's format."""
        vp = self.norm(path)
        codec = self._codec(vp)
        self._check_options(codec, vp, options, loading=True)
        return self._decode(codec, vp, options)

    def _decode(self, codec: Codec, vp: str, options: dict[str, Any]) -> Any:
        # "r+" memory maps write back to the file, so it is opened for writing too
        flags = os.O_RDWR if options.get("mmap_mode") == "r+" else os.O_RDONLY
        fd, _ = self._open_file(vp, flags, "cannot load")
        fh = file_object(fd, "r+" if flags == os.O_RDWR else "r", vp, closefd=True)
        with (
            decoding(codec, vp, self.name, os_error=lambda e: self._os_error(e, vp, "cannot load")),
            fh,
            # without a root a virtual path is the real one, and there is no store to
            # leave: a multi-file TIFF series is read whole, as tifffile.imread does
            contextlib.nullcontext() if self._tree.contained else tiff_siblings_by_path(),
        ):
            return codec.decode(fh, limits=self.limits, path=vp, backend=self.name, **options)

    def load_batch(self, paths: Sequence[vpaths.PathLike], **options: Any) -> list[Any]:
        """Load every path on the thread pool; results in the order of ``paths``.

        A failing item raises :class:`BatchError` naming its path (cause chained).
        """
        jobs = []
        for index, path in enumerate(paths):
            try:
                vp = self.norm(path)
                codec = self._codec(vp)
                self._check_options(codec, vp, options, loading=True)
            except HcsflowError as exc:
                raise batch_item_error(
                    index, "cannot be loaded", exc, path=str(path), backend=self.name
                ) from exc
            jobs.append((codec, vp))
        workers = batch_workers(
            len(jobs),
            mean_file_size([vp for _, vp in jobs], size_of=self._size_for_batch),
            gil_free=all(releases_gil(codec) for codec in {job[0] for job in jobs}),
            max_workers=self.max_workers,
        )
        return run_batch(
            lambda i: self._batch_item(i, jobs[i], options),
            len(jobs),
            workers,
            self._executor() if workers > 1 else None,
        )

    def _size_for_batch(self, vp: str) -> int | None:
        """Bytes of the file at ``vp``, for choosing a batch's concurrency."""
        return self.stat(vp).size

    def _batch_item(self, index: int, job: tuple[Codec, str], options: dict[str, Any]) -> Any:
        codec, vp = job
        try:
            return self._decode(codec, vp, options)
        except HcsflowError as exc:
            raise batch_item_error(
                index, "could not be loaded", exc, path=vp, backend=self.name
            ) from exc
