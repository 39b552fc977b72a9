"""File nodes of the zarr backend: encoding, atomic publishing and reading back."""

from __future__ import annotations

import io
import os
from abc import abstractmethod
from collections.abc import Generator
from typing import Any

import numpy as np

from hcsflow import paths as vpaths
from hcsflow.errors import (
    AlreadyExistsError,
    CorruptStoreError,
    DataFormatError,
    HcsflowError,
    IsADirectoryStorageError,
    NotFoundError,
    UnsupportedFormatError,
    ZarrError,
)
from hcsflow.storage._base import EntryKind
from hcsflow.storage._codecs import (
    CodecRefusal,
    check_codec_options,
    decoding,
    to_host_array,
)
from hcsflow.storage._debris import writer_tag
from hcsflow.storage.zarr import _arrays as arrays
from hcsflow.storage.zarr import _ome
from hcsflow.storage.zarr._config import ZarrConfig
from hcsflow.storage.zarr._debris import building, clean_node
from hcsflow.storage.zarr._io import Location, store_errors
from hcsflow.storage.zarr._listing import touched
from hcsflow.storage.zarr._localfs import LocalFS
from hcsflow.storage.zarr._nodes import (
    _ARRAY_CODECS,
    _MAX_READ_RETRIES,
    _SAVE_OPTIONS,
    _is_array_data,
    _ZarrNodes,
)


class _ZarrFiles(_ZarrNodes):
    """Writing and reading file nodes (arrays and encoded objects)."""

    @abstractmethod
    def _read_plate_images(self, items: list[tuple[str, dict[str, Any]]]) -> list[np.ndarray]:
        """Planes for plate-image pointers (see :mod:`hcsflow.storage.zarr._plate_images`)."""

    # ------------------------------------------------------------------ save

    def _encode(
        self, data: Any, vp: str, options: dict[str, Any]
    ) -> tuple[np.ndarray, str, ZarrConfig]:
        """(array to store, format tag, config) for ``data`` at ``vp``."""
        cfg = options.get("zarr_config") or self.config
        if not isinstance(cfg, ZarrConfig):
            raise DataFormatError(
                f"zarr_config must be a ZarrConfig, got {type(cfg).__name__}",
                path=vp,
                backend=self.name,
            )
        codec = self.codecs.for_name(vpaths.name(vp))
        if _is_array_data(data) and (codec is None or codec.name in _ARRAY_CODECS):
            try:
                arr = to_host_array(data)
            except CodecRefusal as exc:
                raise DataFormatError(str(exc), path=vp, backend=self.name) from exc
            extra = set(options) - _SAVE_OPTIONS
            if extra:
                raise DataFormatError(
                    f"arrays take no save option(s) {sorted(extra)} besides zarr_config",
                    path=vp,
                    backend=self.name,
                )
            if arr.dtype.kind not in "biufc":
                raise DataFormatError(
                    f"arrays of dtype {arr.dtype} cannot be stored as zarr arrays",
                    path=vp,
                    backend=self.name,
                )
            return arr, "array", cfg
        if codec is None:
            known = " ".join(self.codecs.extensions())
            raise UnsupportedFormatError(
                f"no file format for this extension and the data is not an array (known: {known})",
                path=vp,
                backend=self.name,
            )
        codec_opts = {k: v for k, v in options.items() if k not in _SAVE_OPTIONS}
        check_codec_options(codec, codec_opts, loading=False, path=vp, backend=self.name)
        try:
            prepared = codec.prepare(data, **codec_opts)
            buf = io.BytesIO()
            codec.encode(prepared, buf, **codec_opts)
        except CodecRefusal as exc:
            raise DataFormatError(str(exc), path=vp, backend=self.name) from exc
        raw = np.frombuffer(buf.getvalue(), dtype=np.uint8)
        return raw, f"codec:{codec.name}", cfg

    def save(
        self, data: Any, path: vpaths.PathLike, *, overwrite: bool = False, **options: Any
    ) -> None:
        """Store ``data`` at ``path`` (arrays as zarr arrays, other objects by extension)."""
        vp = self.norm(path)
        arr, fmt, cfg = self._encode(data, vp, options)
        real, kind = self._write_target(vp, overwrite)
        self._write_file(
            real,
            arr,
            fmt,
            cfg,
            size=_size_of(data, arr),
            exclusive=kind is None and not overwrite,
            existed=kind is not None,
            vp=vp,
        )

    def _write_file(
        self,
        real: str,
        arr: np.ndarray,
        fmt: str,
        cfg: ZarrConfig,
        size: int | None,
        *,
        exclusive: bool = False,
        existed: bool = True,
        vp: str | None = None,
    ) -> None:
        """Write a file node: data under a fresh name, then switch ``zarr.json`` to it.

        A new node (``existed=False``) on a local disk is built in a hidden sibling and
        renamed into place (:meth:`_node_steps`).  Otherwise the data array is written
        inside the node's directory under a name carrying this writer's tag, and
        ``zarr.json`` is switched to it.  ``exclusive`` publishes with an atomic create,
        so of concurrent writers of a new path exactly one wins and the others get
        :class:`AlreadyExistsError`; without it a node that appeared meanwhile is
        overwritten, never refused.  Afterwards the node's debris (replaced arrays,
        arrays and temporary files of writers that died or finished) is removed.
        """
        steps = self._file_steps(real, arr, fmt, cfg, size, exclusive, existed, vp)
        drive(steps, next(steps, None))

    def _file_steps(
        self,
        real: str,
        arr: np.ndarray,
        fmt: str,
        cfg: ZarrConfig,
        size: int | None,
        exclusive: bool,
        existed: bool,
        vp: str | None,
    ) -> Generator[arrays.ArrayRequest, None, None]:
        """The write of :meth:`_write_file` as steps around its one array write.

        The generator prepares the node, yields the
        :class:`~hcsflow.storage.zarr._arrays.ArrayRequest` of its data array, and, sent
        ``None`` once the array is written, publishes the node; an error thrown in (the
        array write failed, or the batch stops) removes what it built.  Batches drive
        many of these to write their arrays together.
        """
        loc = self._loc(real)
        # a name per write: concurrent writers never share a data array
        name = f"data{writer_tag()}"
        file_cfg = (
            cfg
            if cfg.zarr_format == 3
            else ZarrConfig(compressor=cfg.compressor, level=cfg.level, chunks=cfg.chunks)
        )
        info = {"kind": "file", "format": fmt, "data": name, "size": size}
        doc = _ome.group_document({"hcsflow": info})
        fs = loc.fs
        if isinstance(fs, LocalFS):
            fs.clean_siblings(loc.path)
            if not existed:
                if (yield from self._node_steps(fs, loc, name, arr, file_cfg, doc)):
                    return
                if exclusive:
                    raise AlreadyExistsError(
                        "target exists; pass overwrite=True to replace it",
                        path=vp or real,
                        backend=self.name,
                    )
        old = self._data_children(real)
        data_loc = loc.child(name)
        with building(data_loc):
            try:
                yield arrays.ArrayRequest(data_loc, arr, file_cfg)
            except BaseException:
                # never named by zarr.json: remove it now rather than leave debris
                data_loc.remove()
                raise
            if exclusive:
                if not loc.write_once("zarr.json", doc):
                    data_loc.remove()
                    raise AlreadyExistsError(
                        "target exists; pass overwrite=True to replace it",
                        path=vp or real,
                        backend=self.name,
                    )
            else:
                # the switch: readers follow zarr.json to the data array
                loc.write("zarr.json", doc)
                # the node may have been a symlink or plate image: listings must look again
                touched(fs, loc.path)
        for child in old:
            if child != name:
                loc.child(child).remove()
        clean_node(loc, lambda: self._node_data(real))

    def _node_steps(
        self,
        fs: LocalFS,
        loc: Location,
        name: str,
        arr: np.ndarray,
        cfg: ZarrConfig,
        doc: bytes,
    ) -> Generator[arrays.ArrayRequest, None, bool]:
        """Build a new file node in a hidden sibling and rename it into place.

        ``False`` (and nothing left behind) when a node appeared at ``loc`` meanwhile:
        the rename never replaces anything, so of concurrent creators exactly one wins
        and no reader ever sees a half-built node.
        """
        fd, built = fs.birth_dir(loc.path)
        build = Location(fs, built, limits=loc.limits)
        try:
            yield arrays.ArrayRequest(build.child(name), arr, cfg)
            build.write_unpublished("zarr.json", doc)
            if fs.publish_dir(built, loc.path):
                return True
        except BaseException:
            build.remove()
            fs.release_claim(built, loc.path)
            raise
        finally:
            os.close(fd)
        build.remove()
        return False

    def _node_data(self, real: str) -> str | None:
        """The data array the file node at ``real`` names now (``None``: not a file node)."""
        children = self._data_children(real)
        return children[0] if children else None

    def _data_children(self, real: str) -> list[str]:
        kind, info = self._node(real)
        if kind == "file" and info is not None and isinstance(info.get("data"), str):
            return [info["data"]]
        return []

    # ------------------------------------------------------------------ load

    def load(self, path: vpaths.PathLike, **options: Any) -> Any:
        """The data at ``path`` (through symlinks): an array, or the object it encodes."""
        vp = self.norm(path)
        return self._load_file(vp, options)

    def _load_file(
        self,
        vp: str,
        options: dict[str, Any],
        resolved: tuple[str, EntryKind, dict[str, Any] | None] | None = None,
    ) -> Any:
        """Read the file at ``vp`` so that a concurrent overwrite yields old or new content.

        An overwrite switches ``zarr.json`` to a new data array, then deletes the old one,
        so a read of the old array can find it gone, or lose chunks mid-read (which zarr
        would fill with zeros).  The node is read again afterwards: if it no longer names
        the array that was read, the read is repeated on the current one.
        """
        for _attempt in range(_MAX_READ_RETRIES):
            real, _, info = resolved or self._resolve_file(vp)
            resolved = None
            info = info or {}
            try:
                data = self._read_file(vp, real, info, options)
            except HcsflowError:
                if info.get("kind") != "file" or self._node(real)[1] == info:
                    raise
                continue
            if info.get("kind") != "file" or self._node(real)[1] == info:
                return data
        raise ZarrError(
            "the file kept being replaced while it was read; try again",
            path=vp,
            backend=self.name,
        )

    def _resolve_file(self, vp: str) -> tuple[str, EntryKind, dict[str, Any] | None]:
        real, kind, info = self._resolve(vp, True)
        if kind is None:
            raise NotFoundError("no such file", path=vp, backend=self.name)
        if kind == "directory":
            raise IsADirectoryStorageError("path is a directory", path=vp, backend=self.name)
        return real, kind, info

    def _read_file(self, vp: str, real: str, info: dict[str, Any], options: dict[str, Any]) -> Any:
        kind = info.get("kind")
        loc = self._loc(real)
        if kind == "zarr-array":
            return self._read_array(loc, None)
        if kind == "plate-image":
            return self._read_plate_images([(real, info)])[0]
        if kind != "file":
            raise ZarrError(
                f"not a zarr node: store {self._base.url!r}, key {real.lstrip('/')!r}",
                path=vp,
                backend=self.name,
            )
        fmt = str(info.get("format", ""))
        data = self._read_array(loc, str(info.get("data")))
        if fmt == "array":
            if options:
                raise DataFormatError(
                    f"array files take no load options, got {sorted(options)}",
                    path=vp,
                    backend=self.name,
                )
            return data
        if not fmt.startswith("codec:"):
            raise ZarrError(
                f"unknown file format {fmt!r}: store {self._base.url!r}, key {real.lstrip('/')!r}",
                path=vp,
                backend=self.name,
            )
        cname = fmt[len("codec:") :]
        codec = next((c for c in self.codecs.codecs() if c.name == cname), None)
        if codec is None:
            raise UnsupportedFormatError(
                f"no codec named {cname!r} is registered", path=vp, backend=self.name
            )
        check_codec_options(codec, options, loading=True, path=vp, backend=self.name)
        with decoding(codec, vp, self.name):
            fh = io.BytesIO(np.ascontiguousarray(data).tobytes())
            return codec.decode(fh, limits=self.limits, path=vp, backend=self.name, **options)

    def _read_array(self, loc: Location, child: str | None) -> np.ndarray:
        import zarr

        target = loc if child is None else loc.child(child)
        meta = _ome.read_node(target)
        if meta is None or meta.node_type != "array":
            raise ZarrError(
                f"missing data array: store {self._base.url!r}, key {target.path!r}",
                path=target.url,
                backend=self.name,
            )
        with store_errors(target.url):
            try:
                arr = zarr.open_array(
                    store=target.zarr_store(),
                    mode="r",
                    zarr_format=3 if meta.zarr_format == 3 else 2,
                )
            except FileNotFoundError as exc:
                # zarr's ArrayNotFoundError is one: the array went between the metadata
                # read above and the open (an overwrite removed it); the caller reads
                # the node again and retries on the array it names now
                raise ZarrError(
                    f"missing data array: store {self._base.url!r}, key {target.path!r}",
                    path=target.url,
                    backend=self.name,
                ) from exc
            except (HcsflowError, OSError):
                raise
            except Exception as exc:
                raise CorruptStoreError(
                    f"unreadable array metadata: store {self._base.url!r}, key "
                    f"{target.path!r}: {type(exc).__name__}: {exc}",
                    path=target.url,
                    backend=self.name,
                ) from exc
        return arrays.read_array(arr, Ellipsis, target)


def advance(
    steps: Generator[arrays.ArrayRequest, None, Any], error: BaseException | None
) -> arrays.ArrayRequest | None:
    """Resume write ``steps`` after its array was written (``error``: or failed); its
    next array request, ``None`` when it is done.  Raises what the steps raise (a
    failed array's error once the steps have cleaned up after it)."""
    try:
        return steps.send(None) if error is None else steps.throw(error)
    except StopIteration:
        return None


def drive(
    steps: Generator[arrays.ArrayRequest, None, Any], request: arrays.ArrayRequest | None
) -> None:
    """Run write ``steps`` to the end from its pending ``request``, one array at a time.

    A write usually has one array; one whose new node lost a race to another writer
    goes on to overwrite it, with a second array.
    """
    while request is not None:
        try:
            arrays.create_array(request.loc, request.data, request.config, None)
        except BaseException as exc:
            advance(steps, exc)
            raise
        request = advance(steps, None)


def _size_of(data: Any, arr: np.ndarray) -> int | None:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return len(data)
    if _is_array_data(data):
        return int(arr.nbytes)
    return None
