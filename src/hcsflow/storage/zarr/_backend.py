"""The zarr backend: the virtual file system as a zarr hierarchy, and OME-Zarr plates.

**Path mapping.**  ``ZarrStorageBackend(root=None)`` maps a virtual path to the same
absolute local path; ``root="/data/x"``, ``"s3://bucket/x"`` or any fsspec URL maps
virtual ``/a/b`` to ``<root>/a/b``.  Every entry is a zarr node:

* a **directory** is a zarr group (``zarr.json`` with no hcsflow marker), or a plain
  directory that already exists on a local disk (``/tmp``...);
* a **file** is a zarr group whose ``hcsflow`` attribute says ``kind: "file"`` and
  names its data array child: arrays are stored as native zarr arrays (any
  extension), other objects are encoded by the disk backend's format for the path's
  extension (``.json``, ``.csv``, ``.txt``, ``.pkl``...) and kept as a ``uint8`` zarr
  array, so every byte in a store is readable by any zarr tool;
* a **symlink** is a group with ``kind: "symlink"`` and the target's virtual path;
* a **plate image** is a group with ``kind: "plate-image"`` written by
  ``save_batch(..., chunk_name=...)``: it points at one plane of a well of the plate
  store it lives in (the nearest ``*.zarr`` ancestor);
* a bare zarr array written by another tool reads as a file (its whole array).

A path segment ending in ``.zarr`` therefore names a store in the usual sense, and
everything below it is a key within it; the backend does not need the segment for
generic files, only to find the plate store of plate images.

**Nothing lost.**  A file's data array has a fresh name on every write; the group's
``zarr.json`` is switched to it in one atomic write (``os.replace`` or one PUT) and the
old array is deleted afterwards, so readers see the old or the new content and a crash
leaves the old one.  Wells use the same scheme (see :mod:`hcsflow.storage.zarr._plates`).
Moves are atomic renames on local disks and copy-then-delete on object stores.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hcsflow import paths as vpaths
from hcsflow.errors import (
    AlreadyExistsError,
    BatchError,
    CorruptDataError,
    DataFormatError,
    DirectoryNotEmptyError,
    HcsflowError,
    InvalidPathError,
    IsADirectoryStorageError,
    NotADirectoryStorageError,
    NotFoundError,
    PickleRefusedError,
    PlateLayoutError,
    StorageError,
    SymlinkLoopError,
    UnsupportedFormatError,
    ZarrError,
)
from hcsflow.storage._base import Backend, EntryKind, FileInfo, StorageBackend, _check_batch
from hcsflow.storage._codecs import (
    CodecRefusal,
    CodecRegistry,
    PickleNotAllowed,
    default_codecs,
    to_host_array,
)
from hcsflow.storage.plate import ImageCoordinates, PlateLayout, parse_well
from hcsflow.storage.zarr import _ome
from hcsflow.storage.zarr import _plates as plates
from hcsflow.storage.zarr._config import ZarrConfig
from hcsflow.storage.zarr._io import _LOCAL, META_FILES, Location, location

__all__ = ["ZarrStorageBackend"]

_MAX_LINK_HOPS = 64
#: reads of a file repeated when overwrites keep replacing its data array meanwhile
_MAX_READ_RETRIES = 16
_ARRAY_CODECS = frozenset({"tiff", "png", "npy"})
_FRAMEWORKS = ("torch", "jax", "jaxlib", "tensorflow", "cupy", "pyclesperanto")
_SAVE_OPTIONS = frozenset({"zarr_config"})
_BATCH_OPTIONS = frozenset({"zarr_config", "chunk_name", "layout"})

_Node = tuple[EntryKind | None, dict[str, Any] | None]


# the in-flight names this package's writers make ("<name>.<uuid4 hex>.partial" while
# writing, ".deleting" while removing); matched exactly, so that a user's own entry
# that merely ends in ".partial" is listed and keeps its directory from looking empty
_IN_FLIGHT = re.compile(r"\.[0-9a-f]{32}\.(?:partial|deleting)$")


def _hidden(name: str) -> bool:
    return name in META_FILES or name == plates.MARKERS[0] or _IN_FLIGHT.search(name) is not None


_DATA_NAME = re.compile(r"^data[0-9a-f]{8}$")


def _in_progress(loc: Location) -> bool:
    """Whether ``loc`` is a file node still being written (data array, no ``zarr.json``)."""
    if loc.fs.local:
        if os.path.exists(os.path.join(loc.path, "zarr.json")) or not os.path.isdir(loc.path):
            return False
    elif loc.exists_file("zarr.json"):
        return False
    names = loc.list()
    return bool(names) and all(_DATA_NAME.match(n) or _hidden(n) for n in names)


def _is_array_data(data: Any) -> bool:
    if isinstance(data, (np.ndarray, np.generic)):
        return True
    return type(data).__module__.partition(".")[0] in _FRAMEWORKS


class ZarrStorageBackend(StorageBackend):
    """Storage of arrays and objects in zarr (v3) hierarchies, locally or on any fsspec URL.

    ``root``: store root URL or local directory (``None``: virtual paths are local
    absolute paths).  ``storage_options``: passed to fsspec (``endpoint_url``...);
    credentials come from the environment.  ``config``: the default
    :class:`~hcsflow.storage.ZarrConfig` for arrays and plates.  ``codecs``: formats for
    non-array objects, by extension (default: the disk backend's).
    """

    name = Backend.ZARR.value

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        storage_options: dict[str, Any] | None = None,
        config: ZarrConfig | None = None,
        codecs: CodecRegistry | None = None,
    ):
        self._root_url = None if root is None else os.fspath(root)
        self.storage_options = dict(storage_options or {})
        self.config = config or ZarrConfig()
        self.codecs = codecs if codecs is not None else default_codecs()
        if root is None:
            self._base = Location(_LOCAL, "/")
        else:
            self._base = location(root, self.storage_options)
            if self._base.fs.local and not os.path.isdir(self._base.path):
                raise NotFoundError(
                    "the zarr backend root is not an existing directory",
                    path=self._base.path,
                    backend=self.name,
                )

    def __repr__(self) -> str:
        return f"ZarrStorageBackend(root={self._root_url!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {
            "root": self._root_url,
            "storage_options": self.storage_options,
            "config": self.config,
            "codecs": self.codecs,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["root"],
            storage_options=state["storage_options"],
            config=state["config"],
            codecs=state["codecs"],
        )

    # ------------------------------------------------------------------ mapping

    def norm(self, path: vpaths.PathLike) -> str:
        """Normalise ``path`` and refuse names the zarr format or this backend reserve."""
        vp = super().norm(path)
        for part in vp.split("/"):
            if part and _hidden(part):
                raise InvalidPathError(
                    f"{part!r} is a name reserved by the zarr format or the zarr backend",
                    path=vp,
                    backend=self.name,
                )
        return vp

    def _loc(self, vp: str) -> Location:
        return self._base if vp == "/" else self._base.child(vp.lstrip("/"))

    def url_of(self, path: vpaths.PathLike) -> str:
        """The store URL (or local path) a virtual path maps to (no symlinks followed)."""
        return self._loc(self.norm(path)).url

    def _node(self, vp: str) -> _Node:
        """Kind and hcsflow attributes of the entry physically at ``vp``."""
        if vp == "/":
            return "directory", None
        loc = self._loc(vp)
        meta = _ome.read_node(loc)
        if meta is not None:
            if meta.node_type == "array":
                return "file", {"kind": "zarr-array"}
            info = meta.attributes.get("hcsflow")
            if isinstance(info, dict):
                kind = info.get("kind")
                if kind in ("file", "plate-image"):
                    return "file", info
                if kind == "symlink":
                    return "symlink", info
            return "directory", None
        if loc.fs.local:
            if os.path.isdir(loc.path):
                if _in_progress(loc):
                    return None, None
                if os.path.exists(os.path.join(loc.path, "zarr.json")):
                    return self._node(vp)  # a writer published since the first look
                return "directory", None
            if os.path.lexists(loc.path):
                return "file", {"kind": "raw"}
            return None, None
        if loc.is_dir():
            return ("directory", None) if not _in_progress(loc) else (None, None)
        if loc.exists_file():
            return "file", {"kind": "raw"}
        return None, None

    def _resolve(
        self, vp: str, follow_last: bool, seen: set[str] | None = None
    ) -> tuple[str, EntryKind | None, dict[str, Any] | None]:
        """(real virtual path, kind, info) of ``vp``; intermediate links always followed.

        Raises :class:`SymlinkLoopError` for a looping chain.
        """
        seen = set() if seen is None else seen
        kind, info = self._node(vp)
        if kind is not None:
            if kind == "symlink" and follow_last:
                assert info is not None
                if vp in seen or len(seen) >= _MAX_LINK_HOPS:
                    raise SymlinkLoopError("symlink chain loops", path=vp, backend=self.name)
                seen.add(vp)
                return self._resolve(str(info["target"]), True, seen)
            return vp, kind, info
        parent = vpaths.parent(vp)
        if parent == vp:
            return vp, None, None
        preal, pkind, _ = self._resolve(parent, True, seen)
        if pkind == "file":
            raise NotADirectoryStorageError("not a directory", path=parent, backend=self.name)
        if pkind != "directory" or preal == parent:
            return vp, None, None
        return self._resolve(vpaths.join(preal, vpaths.name(vp)), follow_last, seen)

    def _parent_dir(self, vp: str) -> str:
        """Real path of ``vp``'s parent, which must be an existing directory."""
        parent = vpaths.parent(vp)
        try:
            preal, pkind, _ = self._resolve(parent, True)
        except SymlinkLoopError as exc:
            raise NotFoundError(
                "parent directory does not exist", path=parent, backend=self.name
            ) from exc
        if pkind is None:
            raise NotFoundError("parent directory does not exist", path=parent, backend=self.name)
        if pkind != "directory":
            raise NotADirectoryStorageError(
                "parent is not a directory", path=parent, backend=self.name
            )
        return preal

    def _write_target(self, vp: str, overwrite: bool) -> tuple[str, EntryKind | None]:
        """Where a write of ``vp`` goes (its real path) after the overwrite checks."""
        if vp == "/":
            raise IsADirectoryStorageError("the root is a directory", path=vp, backend=self.name)
        preal = self._parent_dir(vp)
        real = vpaths.join(preal, vpaths.name(vp))
        kind, _ = self._node(real)
        if kind == "directory":
            raise IsADirectoryStorageError("target is a directory", path=vp, backend=self.name)
        if kind is not None and not overwrite:
            raise AlreadyExistsError(
                "target exists; pass overwrite=True to replace it", path=vp, backend=self.name
            )
        return real, kind

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
        bad = codec.check_options(codec_opts, loading=False)
        if bad is not None:
            raise DataFormatError(
                f"the {codec.name} format does not take option {bad!r}", path=vp, backend=self.name
            )
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
            real, arr, fmt, cfg, size=_size_of(data, arr), exclusive=kind is None, vp=vp
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
        vp: str | None = None,
    ) -> None:
        """Write a file node: data under a fresh name, then switch ``zarr.json`` to it.

        ``exclusive`` publishes with an atomic create, so of concurrent writers of a new
        path exactly one wins and the others get :class:`AlreadyExistsError`.
        """
        loc = self._loc(real)
        old = self._data_children(real)
        # a random name per write: concurrent writers never share a data array
        name = f"data{uuid.uuid4().hex[:8]}"
        file_cfg = (
            cfg
            if cfg.zarr_format == 3
            else ZarrConfig(compressor=cfg.compressor, level=cfg.level, chunks=cfg.chunks)
        )
        info = {"kind": "file", "format": fmt, "data": name, "size": size}
        doc = _ome.group_document({"hcsflow": info})
        if exclusive and loc.fs.local:
            # build the whole node in a hidden sibling, then rename it into place: a
            # directory rename onto an existing node fails, so exactly one writer wins
            # and no reader ever sees a half-built node under the real name
            tmp = Location(loc.fs, f"{loc.parent.path}/.{loc.name}.{uuid.uuid4().hex}.partial")
            try:
                plates.create_array(tmp.child(name), arr, file_cfg, None)
                tmp.write("zarr.json", doc)
                os.rename(tmp.path, loc.path)
            except OSError as exc:
                tmp.remove()
                if os.path.exists(loc.path):
                    raise AlreadyExistsError(
                        "target exists; pass overwrite=True to replace it",
                        path=vp or real,
                        backend=self.name,
                    ) from exc
                raise
            return
        plates.create_array(loc.child(name), arr, file_cfg, None)
        if exclusive:
            if not loc.write_once("zarr.json", doc):
                loc.child(name).remove()
                raise AlreadyExistsError(
                    "target exists; pass overwrite=True to replace it",
                    path=vp or real,
                    backend=self.name,
                )
        else:
            # the switch: readers follow zarr.json to the data array
            loc.write("zarr.json", doc)
        for child in old:
            if child != name:
                loc.child(child).remove()

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
        bad = codec.check_options(options, loading=True)
        if bad is not None:
            raise DataFormatError(
                f"the {codec.name} format does not take option {bad!r}", path=vp, backend=self.name
            )
        suffix = codec.extensions[0] if codec.extensions else ""
        fd, tmp = tempfile.mkstemp(suffix=suffix)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(np.ascontiguousarray(data).tobytes())
            return codec.decode(tmp, **options)
        except PickleNotAllowed as exc:
            raise PickleRefusedError(
                f"{exc}; pass allow_pickle=True only for files you trust",
                path=vp,
                backend=self.name,
            ) from exc
        except (MemoryError, ImportError, HcsflowError):
            raise
        except Exception as exc:
            raise CorruptDataError(
                f"cannot decode the file as {codec.name}: {exc}", path=vp, backend=self.name
            ) from exc
        finally:
            os.unlink(tmp)

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
        from hcsflow.storage.zarr._io import store_errors

        with store_errors(target.url):
            arr = zarr.open_array(
                store=target.zarr_store(), mode="r", zarr_format=3 if meta.zarr_format == 3 else 2
            )
        return plates.read_array(arr, Ellipsis, target)

    # ------------------------------------------------------------------ plates

    def _plate_store(self, real: str) -> str:
        """The plate store of a plate-image path: nearest ``*.zarr`` ancestor, else parent."""
        parts = real.strip("/").split("/")[:-1]
        for i in range(len(parts), 0, -1):
            if parts[i - 1].endswith(".zarr"):
                return "/" + "/".join(parts[:i])
        return vpaths.parent(real)

    def _read_plate_images(self, items: list[tuple[str, dict[str, Any]]]) -> list[np.ndarray]:
        """Planes for plate-image pointers; each chunk is decoded at most once."""
        groups: dict[tuple[str, str, int], list[int]] = {}
        coords: list[tuple[int, ...]] = []
        for i, (real, info) in enumerate(items):
            up = int(info.get("up", 0))
            store = vpaths.parent(real)
            for _ in range(up):
                store = vpaths.parent(store)
            key = (store, str(info["well"]), int(info["field"]))
            groups.setdefault(key, []).append(i)
            coords.append(tuple(int(x) for x in info["index"]))
        out: list[np.ndarray | None] = [None] * len(items)
        for (store, well, field), idxs in groups.items():
            plate_loc = self._loc(store)
            row, col = well.split("/")
            wname = f"{row}{int(col):02d}"
            img, _, _ = plates._image_loc(plate_loc, wname, field)
            arr, img = plates._open_array_at(img, 0)
            lead = arr.ndim - 2
            for i in idxs:
                if len(coords[i]) != lead:
                    raise ZarrError(
                        f"plate image index {coords[i]} does not fit the array of "
                        f"shape {arr.shape}: store {plate_loc.url!r}, key "
                        f"{well}",
                        path=items[i][0],
                        backend=self.name,
                    )
            chunk_lead = tuple(arr.chunks[:lead])
            if all(c == 1 for c in chunk_lead):
                for i in idxs:
                    out[i] = plates.read_array(arr, coords[i], img)
            else:
                lo = [min(coords[i][d] for i in idxs) for d in range(lead)]
                hi = [max(coords[i][d] for i in idxs) + 1 for d in range(lead)]
                box = plates.read_array(
                    arr, tuple(slice(a, b) for a, b in zip(lo, hi, strict=True)), img
                )
                for i in idxs:
                    out[i] = box[tuple(c - a for c, a in zip(coords[i], lo, strict=True))]
        return [o for o in out if o is not None]

    def _save_plate(
        self,
        data_list: Sequence[Any],
        norm: list[str],
        overwrite: bool,
        chunk_name: str | None,
        cfg: ZarrConfig,
        layout: Any,
    ) -> None:
        if layout is None:
            raise PlateLayoutError(
                "writing a plate needs layout= (a PlateLayout or a mapping "
                "from path to ImageCoordinates)",
                path=norm[0],
                backend=self.name,
            )
        coords: list[ImageCoordinates] = []
        for p in norm:
            c = self._coords_of(layout, p)
            coords.append(c)
        stores = {self._plate_store(p) for p in norm}
        if len(stores) != 1:
            raise PlateLayoutError(
                f"one batch writes one plate store, got {sorted(stores)}",
                path=norm[0],
                backend=self.name,
            )
        store = stores.pop()
        plate_loc = self._loc(store)
        want = None
        if chunk_name is not None:
            want = _chunk_well(chunk_name, plate_loc.url)
        by_well: dict[str, list[int]] = {}
        for i, c in enumerate(coords):
            if want is not None and c.well != want:
                raise PlateLayoutError(
                    f"image is in well {c.well} but chunk_name names well {want}: store "
                    f"{plate_loc.url!r}, key {norm[i]!r}",
                    path=norm[i],
                    backend=self.name,
                )
            by_well.setdefault(c.well, []).append(i)
        # plan everything (and refuse bad input) before the first byte is written
        plans = {}
        for well, idxs in by_well.items():
            plans[well] = _assemble_well(
                plate_loc,
                well,
                [data_list[i] for i in idxs],
                [coords[i] for i in idxs],
                [norm[i] for i in idxs],
            )
        # plate mode creates the store and the directories of the image entries in it
        for parent in sorted({vpaths.parent(p) for p in norm}):
            self.ensure_directory(parent)
        targets = []
        for p in norm:
            real, _ = self._write_target(p, overwrite)
            rel = real[len(store) :].lstrip("/")
            first = rel.split("/", 1)[0]
            if len(rel.split("/")) == 1 and _is_row_name(first):
                raise PlateLayoutError(
                    f"image path collides with a plate row group: store {plate_loc.url!r}, "
                    f"key {rel!r}",
                    path=p,
                    backend=self.name,
                )
            targets.append(real)
        for well in plans:
            if not overwrite and plates._read_well_meta(plate_loc, parse_well(well)) is not None:
                raise AlreadyExistsError(
                    f"well {well} already exists; pass overwrite=True to replace it: store "
                    f"{plate_loc.url!r}",
                    path=plate_loc.url,
                    backend=self.name,
                )
        for well, fields in plans.items():
            plates.write_well(plate_loc, well, fields, cfg, overwrite=overwrite)
        for i, real in enumerate(targets):
            c = coords[i]
            pos = parse_well(c.well)
            has_t = plans[c.well][0].ndim == 5
            index = [c.t, c.channel, c.z] if has_t else [c.channel, c.z]
            up = real[len(store) :].strip("/").count("/")
            info = {
                "kind": "plate-image",
                "up": up,
                "well": f"{pos.row_name}/{pos.column + 1}",
                "field": c.field,
                "index": index,
            }
            loc = self._loc(real)
            old = self._data_children(real)
            loc.write("zarr.json", _ome.group_document({"hcsflow": info}))
            for child in old:
                loc.child(child).remove()

    def _coords_of(self, layout: Any, vp: str) -> ImageCoordinates:
        if isinstance(layout, Mapping):
            c = layout.get(vp)
            if c is None:
                for key, value in layout.items():
                    try:
                        if self.norm(key) == vp:
                            c = value
                            break
                    except InvalidPathError:
                        continue
        elif isinstance(layout, PlateLayout):
            c = layout.parse(vp)
        else:
            raise PlateLayoutError(
                f"layout must be a PlateLayout or a mapping, got {type(layout).__name__}",
                path=vp,
                backend=self.name,
            )
        if not isinstance(c, ImageCoordinates):
            raise PlateLayoutError(
                f"the layout gave no ImageCoordinates for this path (got {c!r})",
                path=vp,
                backend=self.name,
            )
        return c

    # ------------------------------------------------------------------ batches

    def save_batch(
        self,
        data_list: Sequence[Any],
        paths: Sequence[vpaths.PathLike],
        *,
        overwrite: bool = False,
        **options: Any,
    ) -> None:
        """Save many items; with ``chunk_name=``/``layout=`` write them as OME-Zarr wells.

        Plain batches check every target before writing anything.  Plate batches
        (``chunk_name=<well>``, ``layout=<PlateLayout or {path: ImageCoordinates}>``,
        ``zarr_config=``) place each 2-D image by its coordinates, write each well of
        the batch as one OME-Zarr well of the plate store the paths live in (their
        nearest ``*.zarr`` ancestor, else their parent directory), and leave a small
        plate-image entry at each path so ``load``/``load_batch`` of the same paths
        return the same planes.
        """
        bad = set(options) - _BATCH_OPTIONS
        if bad:
            raise DataFormatError(
                f"save_batch does not take option(s) {sorted(bad)}",
                path=str(paths[0]) if paths else None,
                backend=self.name,
            )
        norm = _check_batch(self, data_list, paths)
        if not norm:
            return
        cfg = options.get("zarr_config") or self.config
        if options.get("chunk_name") is not None or options.get("layout") is not None:
            self._save_plate(
                data_list, norm, overwrite, options.get("chunk_name"), cfg, options.get("layout")
            )
            return
        encoded = []
        for index, (item, p) in enumerate(zip(data_list, norm, strict=True)):
            try:
                arr, fmt, c = self._encode(item, p, {"zarr_config": cfg})
                real, kind = self._write_target(p, overwrite)
            except HcsflowError as exc:
                raise BatchError(
                    f"batch item {index} cannot be written", index=index, path=p, backend=self.name
                ) from exc
            encoded.append((p, real, kind is None, arr, fmt, c, _size_of(item, arr)))
        for index, (p, real, new, arr, fmt, c, size) in enumerate(encoded):
            try:
                # a new target is created exclusively: one that appeared since the check
                # is refused, not clobbered
                self._write_file(real, arr, fmt, c, size, exclusive=new, vp=p)
            except HcsflowError as exc:
                raise BatchError(
                    f"batch item {index} could not be written",
                    index=index,
                    path=p,
                    backend=self.name,
                ) from exc

    def load_batch(self, paths: Sequence[vpaths.PathLike], **options: Any) -> list[Any]:
        """Load every path in order; plate planes of one field decode each chunk once."""
        out: list[Any] = [None] * len(paths)
        pointers: list[tuple[int, str, dict[str, Any]]] = []
        for index, path in enumerate(paths):
            try:
                vp = self.norm(path)
                real, kind, info = self._resolve_file(vp)
                if info is not None and info.get("kind") == "plate-image":
                    pointers.append((index, real, info))
                else:
                    out[index] = self._load_file(vp, options, (real, kind, info))
            except StorageError as exc:
                raise BatchError(
                    f"batch item {index} could not be loaded",
                    index=index,
                    path=getattr(exc, "path", None) or str(path),
                    backend=self.name,
                ) from exc
        if pointers:
            try:
                planes = self._read_plate_images([(real, info) for _, real, info in pointers])
            except StorageError as exc:
                raise BatchError(
                    "a plate image of the batch could not be loaded",
                    index=pointers[0][0],
                    path=str(paths[pointers[0][0]]),
                    backend=self.name,
                ) from exc
            for (index, _, _), plane in zip(pointers, planes, strict=True):
                out[index] = plane
        return out

    # ------------------------------------------------------------------ queries

    def entry_kind(
        self, path: vpaths.PathLike, *, follow_symlinks: bool = True
    ) -> EntryKind | None:
        """Kind of entry at ``path``; ``None`` when missing, dangling or looping."""
        vp = self.norm(path)
        try:
            return self._resolve(vp, follow_symlinks)[1]
        except (SymlinkLoopError, NotADirectoryStorageError):
            return None

    def list_dir(self, directory: vpaths.PathLike) -> list[str]:
        """Entry names in ``directory`` (following symlinks to it), naturally sorted."""
        vp = self.norm(directory)
        real, kind, _ = self._resolve(vp, True)
        if kind is None:
            raise NotFoundError("directory does not exist", path=vp, backend=self.name)
        if kind != "directory":
            raise NotADirectoryStorageError("not a directory", path=vp, backend=self.name)
        loc = self._loc(real)
        names = [n for n in loc.list() if not _hidden(n) and not _in_progress(loc.child(n))]
        return vpaths.natural_sorted(names)

    def read_link(self, link: vpaths.PathLike) -> str:
        """The virtual path the symlink ``link`` points at."""
        vp = self.norm(link)
        _, kind, info = self._resolve(vp, False)
        if kind == "symlink":
            assert info is not None
            return str(info["target"])
        if kind is None:
            raise NotFoundError("no such symlink", path=vp, backend=self.name)
        raise InvalidPathError("not a symlink", path=vp, backend=self.name)

    def stat(self, path: vpaths.PathLike) -> FileInfo:
        """:class:`FileInfo` for ``path`` itself (a symlink is reported as a symlink)."""
        vp = self.norm(path)
        _, kind, info = self._resolve(vp, False)
        if kind is None:
            raise NotFoundError("no such file or directory", path=vp, backend=self.name)
        if kind == "symlink":
            assert info is not None
            return FileInfo(vp, "symlink", target=str(info["target"]))
        if kind == "file":
            size = (info or {}).get("size")
            return FileInfo(vp, "file", size=int(size) if isinstance(size, int) else None)
        return FileInfo(vp, "directory")

    # ------------------------------------------------------------------ mutations

    def ensure_directory(self, directory: vpaths.PathLike) -> str:
        """Create ``directory`` (as zarr groups) and missing parents; return its path."""
        vp = self.norm(directory)
        real = "/"
        for part in vp.strip("/").split("/") if vp != "/" else []:
            child = vpaths.join(real, part)
            creal, kind, _ = self._resolve(child, True)
            if kind is None and creal != child:
                # a dangling link: creating its target would make a directory elsewhere
                raise NotFoundError("symlink target does not exist", path=child, backend=self.name)
            if kind is None:
                loc = self._loc(creal)
                loc.write_once("zarr.json", _ome.group_document({}))
                real = creal
            elif kind == "directory":
                real = creal
            else:
                raise NotADirectoryStorageError(
                    "a file is in the way", path=child, backend=self.name
                )
        return vp

    def _delete(self, vp: str, recursive: bool) -> None:
        real, kind, _ = self._resolve(vp, False)
        if kind is None:
            raise NotFoundError("no such file or directory", path=vp, backend=self.name)
        if kind == "directory" and not recursive and self.list_dir(real):
            raise DirectoryNotEmptyError(
                "directory is not empty; use delete_all", path=vp, backend=self.name
            )
        self._loc(real).remove()

    def _create_symlink(self, tvp: str, lvp: str, overwrite: bool) -> None:
        seen: set[str] = set()
        try:
            treal, tkind, _ = self._resolve(tvp, True, seen)
        except (SymlinkLoopError, NotADirectoryStorageError):
            treal, tkind = tvp, None
        if tkind is None:
            raise NotFoundError("symlink target does not exist", path=tvp, backend=self.name)
        real, kind = self._write_target(lvp, overwrite)
        if real in seen or vpaths.is_relative_to(treal, real):
            # the target's chain runs through the link being replaced: it would loop
            raise SymlinkLoopError(
                "the new link would make a symlink loop", path=lvp, backend=self.name
            )
        loc = self._loc(real)
        doc = _ome.group_document({"hcsflow": {"kind": "symlink", "target": tvp}})
        if kind is None:
            if not loc.write_once("zarr.json", doc):
                raise AlreadyExistsError(
                    "target appeared meanwhile; not overwritten", path=lvp, backend=self.name
                )
            return
        old = self._data_children(real)
        loc.write("zarr.json", doc)
        for child in old:
            loc.child(child).remove()

    def _move(self, svp: str, dvp: str, replace_symlinks: bool) -> None:
        sreal, skind, sinfo = self._resolve(svp, False)
        if skind is None:
            raise NotFoundError("no such file or directory", path=svp, backend=self.name)
        if dvp == "/":
            raise AlreadyExistsError("destination exists", path=dvp, backend=self.name)
        preal = self._parent_dir(dvp)
        dreal = vpaths.join(preal, vpaths.name(dvp))
        dkind, _ = self._node(dreal)
        if dkind is not None and not (dkind == "symlink" and replace_symlinks):
            raise AlreadyExistsError("destination exists", path=dvp, backend=self.name)
        if skind == "directory" and vpaths.is_relative_to(dreal, sreal):
            raise InvalidPathError(
                "cannot move a directory into itself", path=dvp, backend=self.name
            )
        if sinfo is not None and sinfo.get("kind") == "plate-image":
            # a plate image points into its store by relative position: moving it means
            # writing its plane as an ordinary file
            plane = self._read_plate_images([(sreal, sinfo)])[0]
            if dkind is not None:
                self._loc(dreal).remove()
            self._write_file(dreal, plane, "array", self.config, int(plane.nbytes))
            self._loc(sreal).remove()
            return
        if dkind is not None:
            self._loc(dreal).remove()
        self._loc(sreal).rename_to(self._loc(dreal))

    def copy(self, src: vpaths.PathLike, dst: vpaths.PathLike, *, overwrite: bool = False) -> None:
        """Copy a file (its resolved content) or a directory tree (links kept as links).

        ``overwrite`` applies to files; a directory copy needs a new ``dst``.
        """
        svp, dvp = self.norm(src), self.norm(dst)
        sreal, skind, sinfo = self._resolve(svp, True)
        if skind is None:
            raise NotFoundError("no such file or directory", path=svp, backend=self.name)
        if skind == "file":
            info = sinfo or {}
            dreal, dkind = self._write_target(dvp, overwrite)
            if dreal == sreal:
                return
            if info.get("kind") == "file":
                sloc, dloc = self._loc(sreal), self._loc(dreal)
                old = self._data_children(dreal)
                name = f"data{uuid.uuid4().hex[:8]}"
                sloc.child(str(info["data"])).copy_to(dloc.child(name))
                doc = _ome.group_document({"hcsflow": {**info, "data": name}})
                if dkind is None:
                    if not dloc.write_once("zarr.json", doc):
                        dloc.child(name).remove()
                        raise AlreadyExistsError(
                            "target appeared meanwhile; not overwritten",
                            path=dvp,
                            backend=self.name,
                        )
                    return
                dloc.write("zarr.json", doc)
                for child in old:
                    dloc.child(child).remove()
                return
            data = np.asarray(self._read_file(svp, sreal, info, {}))
            self._write_file(
                dreal,
                data,
                "array",
                self.config,
                int(data.nbytes),
                exclusive=dkind is None,
                vp=dvp,
            )
            return
        if self.entry_kind(dvp, follow_symlinks=False) is not None:
            raise AlreadyExistsError("copy destination exists", path=dvp, backend=self.name)
        preal = self._parent_dir(dvp)
        dreal = vpaths.join(preal, vpaths.name(dvp))
        if vpaths.is_relative_to(dreal, sreal):
            raise InvalidPathError(
                "cannot copy a directory into itself", path=dvp, backend=self.name
            )
        if sreal == "/" or not _ome.read_node(self._loc(sreal)):
            # a plain directory: copy entry by entry so the copy is a zarr group
            self.ensure_directory(dreal)
            for name in self.list_dir(sreal):
                self._copy_entry(vpaths.join(sreal, name), vpaths.join(dreal, name))
            return
        self._loc(sreal).copy_to(self._loc(dreal))

    def _copy_entry(self, src: str, dst: str) -> None:
        kind, _ = self._node(src)
        if kind == "symlink":
            self._loc(src).copy_to(self._loc(dst))
        else:
            self.copy(src, dst)


def _size_of(data: Any, arr: np.ndarray) -> int | None:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return len(data)
    if _is_array_data(data):
        return int(arr.nbytes)
    return None


def _is_row_name(name: str) -> bool:
    return name.isalpha() and 1 <= len(name) <= 2 and name.isupper()


def _chunk_well(chunk_name: str, url: str) -> str:
    """The well a ``chunk_name`` names: ``"A01"``, ``"A1"`` or ``"well_A01"``."""
    for candidate in (chunk_name, chunk_name.rsplit("_", 1)[-1]):
        try:
            return parse_well(candidate).name
        except PlateLayoutError:
            continue
    raise PlateLayoutError(
        f"chunk_name {chunk_name!r} does not name a plate position: store {url!r}",
        path=url,
        backend=Backend.ZARR.value,
    )


def _assemble_well(
    plate: Location, well: str, images: list[Any], coords: list[ImageCoordinates], paths: list[str]
) -> dict[int, np.ndarray]:
    """Stack one well's 2-D planes into ``{field: (t?, c, z, y, x)}`` or refuse the input."""
    key = f"{parse_well(well).row_name}/{parse_well(well).column + 1}"

    def err(problem: str, path: str | None = None) -> PlateLayoutError:
        where = f", image {path!r}" if path else ""
        return PlateLayoutError(
            f"{problem}: store {plate.url!r}, key {key!r}{where}",
            path=path or plate.url,
            backend=Backend.ZARR.value,
        )

    arrays = []
    for img, p in zip(images, paths, strict=True):
        try:
            arr = to_host_array(img)
        except CodecRefusal as exc:
            raise err(str(exc), p) from exc
        if arr.ndim != 2:
            raise err(f"plate images are 2-D planes, got shape {arr.shape}", p)
        arrays.append(arr)
    first = arrays[0]
    for arr, p in zip(arrays, paths, strict=True):
        if arr.shape != first.shape or arr.dtype != first.dtype:
            raise err(
                f"mixed shapes in one well: {arr.shape} {arr.dtype} vs "
                f"{first.shape} {first.dtype} of {paths[0]!r}",
                p,
            )
    seen: dict[tuple[int, int, int, int], str] = {}
    for c, p in zip(coords, paths, strict=True):
        k = (c.field, c.t, c.channel, c.z)
        if k in seen:
            raise err(
                f"coordinates collide: field {c.field}, t {c.t}, channel {c.channel}, "
                f"z {c.z} given by both {seen[k]!r} and {p!r}",
                p,
            )
        seen[k] = p
    n_f = max(c.field for c in coords) + 1
    n_t = max(c.t for c in coords) + 1
    n_c = max(c.channel for c in coords) + 1
    n_z = max(c.z for c in coords) + 1
    missing = [
        (f, t, ch, z)
        for f in range(n_f)
        for t in range(n_t)
        for ch in range(n_c)
        for z in range(n_z)
        if (f, t, ch, z) not in seen
    ]
    if missing:
        shown = ", ".join(f"(field {f}, t {t}, channel {ch}, z {z})" for f, t, ch, z in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise err(
            f"coordinates leave holes: {shown}{more} missing from a "
            f"{n_f} field x {n_t} t x {n_c} channel x {n_z} z well"
        )
    fields = {}
    for f in range(n_f):
        stack = np.empty((n_t, n_c, n_z) + first.shape, dtype=first.dtype)
        fields[f] = stack
    for c, arr in zip(coords, arrays, strict=True):
        fields[c.field][c.t, c.channel, c.z] = arr
    if n_t == 1:
        return {f: a[0] for f, a in fields.items()}
    return fields
