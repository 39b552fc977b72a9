"""Where things are in the fsspec backend: virtual paths to object keys, links, listings.

The read-only half of :class:`~hcsflow.storage.FsspecStorageBackend`: mapping virtual
paths to URLs and keys, the two conventions that object stores lack (directory markers
and link objects, see :mod:`hcsflow.storage._fsspec`), resolving links, and the queries
(``entry_kind``, ``list_dir``, ``walk``, ``stat``, ``read_link``).  Errors of the network
or of permissions become :class:`~hcsflow.errors.ObjectStoreError` naming the URL.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from hcsflow import paths as vpaths
from hcsflow.errors import (
    HcsflowError,
    InvalidPathError,
    NotADirectoryStorageError,
    NotFoundError,
    ObjectStoreError,
    SymlinkLoopError,
)
from hcsflow.storage._base import EntryKind, FileInfo, StorageBackend

__all__ = ["DIR_MARKER", "LINK_MAGIC", "is_url"]

DIR_MARKER = ".hcsflow-dir"
"""Name of the zero-byte object that keeps an empty directory in existence."""
LINK_MAGIC = b"hcsflow-symlink/1\n"
"""First bytes of a symlink object; the target's virtual path follows (UTF-8)."""
_LINK_MAX = len(LINK_MAGIC) + 4 * 4096
_MAX_LINK_HOPS = 64
_NETWORK_MODULES = ("botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "adlfs", "requests")

_Node = tuple[EntryKind | None, int | None, str | None, float | None]
"""(kind, size, link target, mtime) of the entry physically at a path."""


def is_url(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an fsspec URL (``scheme://...``) rather than a local path."""
    return "://" in os.fspath(path)


#: URL schemes naming a path of this machine (fsspec's local file system)
LOCAL_SCHEMES = ("file://", "local://")


def as_local_path(text: str) -> str:
    """``text`` without a ``file://`` or ``local://`` scheme, i.e. the local path such a
    URL names; any other text comes back unchanged."""
    for scheme in LOCAL_SCHEMES:
        if text.startswith(scheme):
            return text[len(scheme) :]
    return text


def _is_network_error(exc: BaseException) -> bool:
    mod = (type(exc).__module__ or "").split(".")[0]
    return isinstance(exc, (PermissionError, ConnectionError, TimeoutError)) or (
        mod in _NETWORK_MODULES and not isinstance(exc, (FileNotFoundError, FileExistsError))
    )


def _mtime(info: dict[str, Any]) -> float | None:
    value = info.get("LastModified", info.get("mtime", info.get("updated")))
    if value is None:
        return None
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class _FsspecPaths(StorageBackend):
    """Mapping, link resolution and queries of the fsspec backend (see the module)."""

    fs: Any
    """The fsspec file system."""
    _root_url: str
    _base: str

    # ------------------------------------------------------------------ mapping

    def norm(self, path: vpaths.PathLike) -> str:
        """Normalise ``path``; the directory marker's name is reserved."""
        vp = super().norm(path)
        if DIR_MARKER in vp.split("/"):
            raise InvalidPathError(
                f"{DIR_MARKER!r} is a name reserved by the fsspec backend",
                path=vp,
                backend=self.name,
            )
        return vp

    def _key(self, vp: str) -> str:
        return self._base if vp == "/" else self._base + vp

    def url_of(self, path: vpaths.PathLike) -> str:
        """The URL a virtual path maps to (no symlinks followed)."""
        return self._url(self.norm(path))

    def _url(self, vp: str) -> str:
        return self._root_url if vp == "/" else self._root_url + vp

    @contextlib.contextmanager
    def _errors(self, where: str) -> Iterator[None]:
        """Network, permission and missing-bucket errors become :class:`ObjectStoreError`."""
        try:
            yield
        except HcsflowError:
            raise
        except Exception as exc:
            text = str(exc).lower()
            missing_bucket = "bucket" in text and ("not exist" in text or "nosuchbucket" in text)
            if _is_network_error(exc) or missing_bucket:
                raise ObjectStoreError(
                    f"object store unreachable or access denied at {where!r}: "
                    f"{type(exc).__name__}: {exc}",
                    path=where,
                    backend=self.name,
                ) from exc
            raise

    def _cat(self, vp: str) -> bytes | None:
        try:
            with self._errors(self._url(vp)):
                data: bytes = self.fs.cat_file(self._key(vp))
        except (FileNotFoundError, IsADirectoryError):
            return None
        return data

    def _node(self, vp: str) -> _Node:
        """Kind, size, link target and mtime of the entry physically at ``vp``."""
        if vp == "/":
            return "directory", None, None, None
        try:
            with self._errors(self._url(vp)):
                info = self.fs.info(self._key(vp))
        except (FileNotFoundError, NotADirectoryError):
            return None, None, None, None
        mtime = _mtime(info)
        if info.get("type") == "directory":
            return "directory", None, None, mtime
        size = info.get("size")
        if size is not None and len(LINK_MAGIC) <= int(size) <= _LINK_MAX:
            raw = self._cat(vp)
            if raw is None:  # deleted since the look
                return None, None, None, None
            if raw.startswith(LINK_MAGIC):
                return "symlink", int(size), raw[len(LINK_MAGIC) :].decode("utf-8"), mtime
        return "file", None if size is None else int(size), None, mtime

    def _resolve(
        self, vp: str, follow_last: bool, seen: set[str] | None = None
    ) -> tuple[str, _Node]:
        """(physical path, node) of ``vp``; links before the last component always followed."""
        seen = set() if seen is None else seen
        node = self._node(vp)
        if node[0] is not None:
            if node[0] == "symlink" and follow_last:
                if vp in seen or len(seen) >= _MAX_LINK_HOPS:
                    raise SymlinkLoopError("symlink chain loops", path=vp, backend=self.name)
                seen.add(vp)
                assert node[2] is not None
                return self._resolve(node[2], True, seen)
            return vp, node
        parent = vpaths.parent(vp)
        if parent == vp:
            return vp, node
        preal, pnode = self._resolve(parent, True, seen)
        if pnode[0] == "file":
            raise NotADirectoryStorageError("not a directory", path=parent, backend=self.name)
        if pnode[0] != "directory" or preal == parent:
            return vp, (None, None, None, None)
        return self._resolve(vpaths.join(preal, vpaths.name(vp)), follow_last, seen)

    def _parent_dir(self, vp: str) -> str:
        parent = vpaths.parent(vp)
        try:
            preal, pnode = self._resolve(parent, True)
        except SymlinkLoopError as exc:
            raise NotFoundError(
                "parent directory does not exist", path=parent, backend=self.name
            ) from exc
        if pnode[0] is None:
            raise self._absent_error(parent, "parent directory does not exist")
        if pnode[0] != "directory":
            raise NotADirectoryStorageError(
                "parent is not a directory", path=parent, backend=self.name
            )
        return preal

    # ------------------------------------------------------------------ queries

    def entry_kind(
        self, path: vpaths.PathLike, *, follow_symlinks: bool = True
    ) -> EntryKind | None:
        """Kind of entry at ``path``; ``None`` when missing, dangling or looping."""
        vp = self.norm(path)
        try:
            _, node = self._resolve(vp, follow_symlinks)
        except (SymlinkLoopError, NotADirectoryStorageError):
            return None
        return node[0]

    def _listing(self, real: str) -> dict[str, dict[str, Any]]:
        """Entries directly in the physical directory ``real``: name -> fsspec info."""
        key = self._key(real)
        with self._errors(self._url(real)):
            try:
                entries = self.fs.ls(key, detail=True)
            except FileNotFoundError:
                return {}
        out: dict[str, dict[str, Any]] = {}
        base = key.rstrip("/")
        for info in entries:
            name = str(info["name"]).rstrip("/")
            if name == base or not name.startswith(base + "/"):
                continue
            leaf = name[len(base) + 1 :]
            if not leaf or "/" in leaf or leaf == DIR_MARKER:
                continue
            out[leaf] = info
        return out

    def _require_listable(self, vp: str) -> str:
        real, node = self._resolve(vp, True)
        if node[0] is None:
            raise self._absent_error(vp, "directory does not exist")
        if node[0] != "directory":
            raise NotADirectoryStorageError("not a directory", path=vp, backend=self.name)
        return real

    def list_dir(self, directory: vpaths.PathLike) -> list[str]:
        """Entry names in ``directory`` (markers hidden), naturally sorted."""
        real = self._require_listable(self.norm(directory))
        return vpaths.natural_sorted(self._listing(real))

    def walk(self, directory: vpaths.PathLike, *, recursive: bool = True) -> Iterator[str]:
        """Files below ``directory`` in natural, depth-first order (one listing per folder).

        Symlinked directories are not descended into; symlinked files are yielded.
        """
        root = self.norm(directory)
        real_root = self._require_listable(root)
        stack = [(root, real_root)]
        while stack:
            vdir, rdir = stack.pop()
            entries = self._listing(rdir)
            subdirs = []
            for name in vpaths.natural_sorted(entries):
                info = entries[name]
                full = vpaths.join(vdir, name)
                if info.get("type") == "directory":
                    subdirs.append((full, vpaths.join(rdir, name)))
                    continue
                size = info.get("size")
                if size is not None and len(LINK_MAGIC) <= int(size) <= _LINK_MAX:
                    kind = self.entry_kind(vpaths.join(rdir, name))
                    if kind == "file":
                        yield full
                    continue
                yield full
            if recursive:
                stack.extend(reversed(subdirs))

    def read_link(self, link: vpaths.PathLike) -> str:
        """The virtual path the symlink ``link`` points at."""
        vp = self.norm(link)
        _, node = self._resolve(vp, False)
        if node[0] is None:
            raise self._absent_error(vp, "no such symlink")
        if node[0] != "symlink":
            raise InvalidPathError("not a symlink", path=vp, backend=self.name)
        assert node[2] is not None
        return node[2]

    def stat(self, path: vpaths.PathLike) -> FileInfo:
        """:class:`FileInfo` for ``path`` itself (a symlink is reported as a symlink)."""
        vp = self.norm(path)
        _, (kind, size, target, mtime) = self._resolve(vp, False)
        if kind is None:
            raise self._absent_error(vp, "no such file or directory")
        if kind == "symlink":
            return FileInfo(vp, "symlink", target=target, mtime=mtime)
        if kind == "directory":
            return FileInfo(vp, "directory", mtime=mtime)
        return FileInfo(vp, "file", size=size, mtime=mtime)

    def _link_chain(self, vp: str) -> set[str]:
        """Physical paths visited while resolving ``vp`` (links included)."""
        visited: set[str] = set()
        current = vp
        for _ in range(_MAX_LINK_HOPS):
            real, node = self._resolve(current, False)
            visited.add(real)
            if node[0] != "symlink":
                return visited
            assert node[2] is not None
            current = node[2]
        raise SymlinkLoopError("symlink chain loops", path=vp, backend=self.name)
