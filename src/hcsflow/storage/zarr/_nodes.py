"""Mapping of virtual paths to zarr nodes for :class:`ZarrStorageBackend`: kinds, links, targets."""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from hcsflow import paths as vpaths
from hcsflow.errors import (
    AlreadyExistsError,
    CorruptStoreError,
    InvalidPathError,
    IsADirectoryStorageError,
    NotADirectoryStorageError,
    NotFoundError,
    SymlinkLoopError,
)
from hcsflow.storage._base import Backend, EntryKind, StorageBackend
from hcsflow.storage._codecs import (
    CodecRegistry,
    default_codecs,
)
from hcsflow.storage._debris import NAME_MAX
from hcsflow.storage._limits import StorageLimits
from hcsflow.storage.zarr import _ome
from hcsflow.storage.zarr._config import ZarrConfig
from hcsflow.storage.zarr._io import META_FILES, Location, location
from hcsflow.storage.zarr._listing import ListingCache
from hcsflow.storage.zarr._localfs import LocalFS
from hcsflow.storage.zarr._locate import MARKERS

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
    return name in META_FILES or name == MARKERS[0] or _IN_FLIGHT.search(name) is not None


#: a file node's data array: "data" + a writer tag (older stores: 8 random hex digits)
_DATA_NAME = re.compile(r"^data(?:[0-9a-f]{32}|[0-9a-f]{8})$")


def _in_progress(loc: Location) -> bool:
    """Whether ``loc`` is a file node still being written (data array, no ``zarr.json``)."""
    if loc.fs.local:
        if loc.fs.kind(loc.path) != "directory" or loc.exists_file("zarr.json"):
            return False
    elif loc.exists_file("zarr.json"):
        return False
    names = loc.list()
    return bool(names) and all(_DATA_NAME.match(n) or _hidden(n) for n in names)


def _is_array_data(data: Any) -> bool:
    if isinstance(data, (np.ndarray, np.generic)):
        return True
    return type(data).__module__.partition(".")[0] in _FRAMEWORKS


class _ZarrNodes(StorageBackend):
    """Path mapping and node resolution of :class:`ZarrStorageBackend` (see there)."""

    name = Backend.ZARR.value

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        storage_options: dict[str, Any] | None = None,
        config: ZarrConfig | None = None,
        codecs: CodecRegistry | None = None,
        limits: StorageLimits | None = None,
    ):
        self._root_url = None if root is None else os.fspath(root)
        self.storage_options = dict(storage_options or {})
        self.config = config or ZarrConfig()
        self.codecs = codecs if codecs is not None else default_codecs()
        self.limits = limits if limits is not None else StorageLimits()
        self._listings = ListingCache()
        if root is None:
            self._base = Location(LocalFS(None, self.limits), "/", limits=self.limits)
        else:
            self._base = location(root, self.storage_options, self.limits)
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
            "limits": self.limits,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["root"],
            storage_options=state["storage_options"],
            config=state["config"],
            codecs=state["codecs"],
            limits=state.get("limits"),
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
            if len(part) > NAME_MAX // 4 and len(os.fsencode(part)) > NAME_MAX:
                raise InvalidPathError(
                    f"a name is {len(os.fsencode(part))} bytes long; file systems allow "
                    f"{NAME_MAX} bytes per name",
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
            return self._classify(vp, meta)
        if loc.fs.local:
            found = loc.fs.kind(loc.path)
            if found == "directory":
                if _in_progress(loc):
                    return None, None
                if loc.exists_file("zarr.json"):
                    return self._node(vp)  # a writer published since the first look
                return "directory", None
            if found is not None:
                return "file", {"kind": "raw"}
            return None, None
        if loc.is_dir():
            return ("directory", None) if not _in_progress(loc) else (None, None)
        if loc.exists_file():
            return "file", {"kind": "raw"}
        return None, None

    def _classify(self, vp: str, meta: _ome.NodeMeta) -> _Node:
        """Kind and hcsflow attributes of the node at ``vp`` whose metadata is ``meta``."""
        if meta.node_type == "array":
            return "file", {"kind": "zarr-array"}
        info = meta.attributes.get("hcsflow")
        if isinstance(info, dict):
            kind = info.get("kind")
            if kind == "file":
                self._check_data_name(vp, info)
                return "file", info
            if kind == "plate-image":
                return "file", info
            if kind == "symlink":
                self._check_target(vp, info)
                return "symlink", info
        return "directory", None

    def _check_target(self, vp: str, info: dict[str, Any]) -> None:
        """A stored link target must be a normalised absolute virtual path."""
        target = info.get("target")
        try:
            ok = isinstance(target, str) and vpaths.normalize_path(target) == target
        except InvalidPathError:
            ok = False
        if not ok:
            loc = self._loc(vp)
            raise CorruptStoreError(
                f"symlink target {target!r} is not a normalised virtual path inside the "
                f"store: store {self._base.url!r}, key {loc.path!r} ('zarr.json')",
                path=loc.url,
                backend=self.name,
            )

    def _check_data_name(self, vp: str, info: dict[str, Any]) -> None:
        """A file node's ``data`` must name a data array inside the node."""
        data = info.get("data")
        if (
            not isinstance(data, str)
            or data in ("", ".", "..")
            or "/" in data
            or "\x00" in data
            or data in META_FILES
        ):
            loc = self._loc(vp)
            raise CorruptStoreError(
                f"file node names data array {data!r}, not a data array of the node: "
                f"store {self._base.url!r}, key {loc.path!r} ('zarr.json')",
                path=loc.url,
                backend=self.name,
            )

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
