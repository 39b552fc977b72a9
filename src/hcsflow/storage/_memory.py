"""The memory backend: a tree of directory nodes in the process, holding objects as they are.

Layout: every directory is a :class:`_Dir` with three dicts (``files``, ``dirs``,
``links``) keyed by entry name, so a name is in exactly one of them and the kind of an
entry is known without wrapping the stored object.  A flat index maps the *real*
(symlink-free) path of every directory to its node, so the common case - saving to or
loading from a file whose parent directory is named without symlinks - costs two dict
lookups, and listing a directory reads one node rather than scanning every key.

Thread safety: one re-entrant lock guards every mutation and every slow-path lookup.
The fast ``load`` path takes no lock: it is two dict reads, each atomic, and whatever
it returns was the content of that path at some instant during the call.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from hcsflow import paths as vpaths
from hcsflow.errors import (
    AlreadyExistsError,
    DirectoryNotEmptyError,
    InvalidPathError,
    IsADirectoryStorageError,
    NotADirectoryStorageError,
    NotFoundError,
    SymlinkLoopError,
)
from hcsflow.storage._base import Backend, EntryKind, FileInfo, StorageBackend, _check_batch

__all__ = ["MemoryStorageBackend"]

_FAST_CACHE_MAX = 1 << 16
_MAX_LINK_HOPS = 64
# a module global is one lookup cheaper than np.ndarray on the hot path
_ndarray = np.ndarray


class _Dir:
    """One directory: files map names to stored objects, links map names to targets."""

    __slots__ = ("files", "dirs", "links")

    def __init__(self) -> None:
        self.files: dict[str, Any] = {}
        self.dirs: dict[str, _Dir] = {}
        self.links: dict[str, str] = {}

    def names(self) -> list[str]:
        return [*self.files, *self.dirs, *self.links]

    def is_empty(self) -> bool:
        return not (self.files or self.dirs or self.links)


def _size_of(data: Any) -> int | None:
    if isinstance(data, np.ndarray):
        return int(data.nbytes)
    if isinstance(data, (bytes, bytearray, memoryview)):
        return len(data)
    return None


class MemoryStorageBackend(StorageBackend):
    """Volatile storage of any Python object under virtual paths, in this process.

    Objects are stored by reference (never copied or serialised); numpy arrays are
    stored as read-only views so no later reader can mutate staged data through what
    ``load`` returns.  Format options (``compression=...``) are accepted and ignored,
    so code written for a serialising backend runs unchanged.
    """

    name = Backend.MEMORY.value

    def __init__(self) -> None:
        self._lock = threading.RLock()
        # bound once: the hot path calls them without two attribute lookups each
        self._acquire = self._lock.acquire
        self._release = self._lock.release
        self._root = _Dir()
        # real directory path -> node; lets the hot path skip walking the tree
        self._index: dict[str, _Dir] = {"/": self._root}
        # raw path as given -> (files dict of its symlink-free parent, name, parent node):
        # the hot path is one lookup.  Written and cleared only under the lock; cleared
        # whenever a directory node is detached (delete, move, clear), bounded in size.
        self._fast: dict[Any, tuple[dict[str, Any], str, _Dir]] = {}

    # ------------------------------------------------------------------ path helpers

    def _file_key(self, path: Any) -> tuple[str, str]:
        """(normalised parent, name) of a path that must name a file."""
        full = vpaths.normalize_path(path, backend=self.name)
        if full == "/":
            raise IsADirectoryStorageError("the root is a directory", path=full, backend=self.name)
        cut = full.rfind("/")
        return full[:cut] or "/", full[cut + 1 :]

    def _remember(self, path: Any, node: _Dir, name: str) -> None:
        """Cache the parent node of a raw path (caller holds the lock)."""
        if len(self._fast) >= _FAST_CACHE_MAX:
            self._fast.clear()
        # an unhashable path-like is still valid, just not cacheable
        with contextlib.suppress(TypeError):
            self._fast[path] = (node.files, name, node)

    def _forget_nodes(self) -> None:
        """Drop cached parent nodes after a directory node left the tree (lock held)."""
        self._fast.clear()

    def _resolve(
        self, path: str, follow_last: bool, seen: set[str]
    ) -> tuple[_Dir | None, str, str]:
        """Locate ``path``: (node of its real parent, name, real path).

        Intermediate symlinks are always followed, the last one only when
        ``follow_last``.  The parent node is ``None`` when the path resolves to the root.
        Raises ``NotFoundError``/``NotADirectoryStorageError`` for a missing or non
        directory parent and ``SymlinkLoopError`` when a chain revisits a link.
        """
        if path == "/":
            return None, "", "/"
        cut = path.rfind("/")
        ppath, name = path[:cut] or "/", path[cut + 1 :]
        pnode, preal = self._resolve_dir(ppath, seen)
        real = preal + "/" + name if preal != "/" else "/" + name
        if follow_last and name in pnode.links:
            if real in seen or len(seen) >= _MAX_LINK_HOPS:
                raise SymlinkLoopError("symlink chain loops", path=real, backend=self.name)
            seen.add(real)
            return self._resolve(pnode.links[name], True, seen)
        return pnode, name, real

    def _resolve_dir(self, path: str, seen: set[str]) -> tuple[_Dir, str]:
        """The directory node at ``path`` (following symlinks) and its real path."""
        node = self._index.get(path)
        if node is not None:
            return node, path
        pnode, name, real = self._resolve(path, True, seen)
        if pnode is None:
            return self._root, "/"
        child = pnode.dirs.get(name)
        if child is not None:
            return child, real
        if name in pnode.files:
            raise NotADirectoryStorageError("not a directory", path=path, backend=self.name)
        raise NotFoundError("directory does not exist", path=path, backend=self.name)

    def _kind_of(self, pnode: _Dir | None, name: str) -> EntryKind | None:
        if pnode is None:
            return "directory"
        if name in pnode.files:
            return "file"
        if name in pnode.dirs:
            return "directory"
        if name in pnode.links:
            return "symlink"
        return None

    def _subtree_dirs(self, node: _Dir, real: str) -> list[tuple[str, _Dir]]:
        """Every directory at or below ``node`` with its real path (for re-indexing)."""
        out = [(real, node)]
        stack = out[:]
        while stack:
            base, current = stack.pop()
            for name, child in current.dirs.items():
                item = (vpaths.join(base, name), child)
                out.append(item)
                stack.append(item)
        return out

    # ------------------------------------------------------------------ data

    def save(
        self, data: Any, path: vpaths.PathLike, overwrite: bool = False, **options: Any
    ) -> None:
        """Store ``data`` at ``path`` by reference (numpy arrays as read-only views).

        ``overwrite`` may also be passed positionally here (a cheaper call).
        """
        if isinstance(data, _ndarray) and data.flags.writeable:
            data = data.view()
            data.setflags(False)  # positional: much cheaper than write=False
        # the critical section is the cache lookup, the existence check and the store
        self._acquire()
        try:
            try:
                files, name, node = self._fast[path]
            except (KeyError, TypeError):
                self._save_slow(data, path, overwrite)
                return
            # a name lives in exactly one of files/dirs/links, so an existing file needs
            # no further check
            if name in files:
                if overwrite:
                    files[name] = data
                    return
            elif name not in node.dirs and name not in node.links:
                files[name] = data
                return
            self._save_slow(data, path, overwrite)
        finally:
            self._release()

    def _save_slow(self, data: Any, raw: Any, overwrite: bool) -> None:
        """Save with every check: symlinked parents, existing targets, missing parents."""
        parent, name = self._file_key(raw)
        pnode = self._writable_parent(parent)
        path = vpaths.join(parent, name)
        if name in pnode.dirs:
            raise IsADirectoryStorageError("target is a directory", path=path, backend=self.name)
        if name in pnode.files or name in pnode.links:
            if not overwrite:
                raise AlreadyExistsError(
                    "target exists; pass overwrite=True to replace it", path=path, backend=self.name
                )
            # like a rename onto a link, overwriting replaces the link, not its target
            pnode.links.pop(name, None)
        pnode.files[name] = data
        if self._index.get(parent) is pnode:
            self._remember(raw, pnode, name)

    def _writable_parent(self, parent: str) -> _Dir:
        try:
            return self._resolve_dir(parent, set())[0]
        except NotFoundError as exc:
            raise NotFoundError(
                "parent directory does not exist", path=parent, backend=self.name
            ) from exc
        except NotADirectoryStorageError as exc:
            raise NotADirectoryStorageError(
                "parent is not a directory", path=parent, backend=self.name
            ) from exc

    def load(self, path: vpaths.PathLike, **options: Any) -> Any:
        """The object stored at ``path`` (through symlinks), without copying."""
        try:
            files, name, _ = self._fast[path]
            return files[name]
        except (KeyError, TypeError):
            return self._load_slow(path)

    def _load_slow(self, raw: Any) -> Any:
        parent, name = self._file_key(raw)
        path = vpaths.join(parent, name)
        with self._lock:
            try:
                pnode, rname, _ = self._resolve(path, True, set())
            except NotFoundError as exc:
                raise NotFoundError("no such file", path=path, backend=self.name) from exc
            if pnode is None or rname in pnode.dirs:
                raise IsADirectoryStorageError("path is a directory", path=path, backend=self.name)
            try:
                found = pnode.files[rname]
            except KeyError:
                raise NotFoundError("no such file", path=path, backend=self.name) from None
            if rname == name and self._index.get(parent) is pnode:
                self._remember(raw, pnode, name)
            return found

    def save_batch(
        self,
        data_list: Sequence[Any],
        paths: Sequence[vpaths.PathLike],
        *,
        overwrite: bool = False,
        **options: Any,
    ) -> None:
        """Save each item; every target is checked first, so a refused batch writes nothing."""
        norm = _check_batch(self, data_list, paths)
        # one critical section: no other writer can slip in between checks and stores
        with self._lock:
            self._check_batch_targets(norm, overwrite)
            for item, path in zip(data_list, norm, strict=True):
                self.save(item, path, overwrite=True)

    def load_batch(self, paths: Sequence[vpaths.PathLike], **options: Any) -> list[Any]:
        """Load every path, in order, as one snapshot; a failing item raises BatchError."""
        with self._lock:
            return super().load_batch(paths, **options)

    # ------------------------------------------------------------------ queries

    def entry_kind(
        self, path: vpaths.PathLike, *, follow_symlinks: bool = True
    ) -> EntryKind | None:
        """Kind of entry at ``path``; ``None`` when missing, dangling or looping."""
        full = self.norm(path)
        with self._lock:
            try:
                pnode, name, _ = self._resolve(full, follow_symlinks, set())
            except (NotFoundError, NotADirectoryStorageError, SymlinkLoopError):
                return None
            return self._kind_of(pnode, name)

    def list_dir(self, directory: vpaths.PathLike) -> list[str]:
        """Entry names in ``directory`` (following symlinks to it), naturally sorted."""
        full = self.norm(directory)
        with self._lock:
            node, _ = self._resolve_dir(full, set())
            names = node.names()
        return vpaths.natural_sorted(names)

    def walk(self, directory: vpaths.PathLike, *, recursive: bool = True) -> Iterator[str]:
        """Files below ``directory`` (see :meth:`StorageBackend.walk`), read from the nodes.

        The listing is taken under the lock in one pass, so it is a consistent snapshot.
        """
        root = self.norm(directory)
        found: list[str] = []
        with self._lock:
            node, _ = self._resolve_dir(root, set())
            stack = [(root, node)]
            while stack:
                vdir, current = stack.pop()
                subdirs = []
                for name in vpaths.natural_sorted(current.names()):
                    full = vdir + "/" + name if vdir != "/" else "/" + name
                    if name in current.files:
                        found.append(full)
                    elif name in current.dirs:
                        subdirs.append((full, current.dirs[name]))
                    else:
                        try:
                            pnode, rname, _ = self._resolve(full, True, set())
                        except (NotFoundError, NotADirectoryStorageError, SymlinkLoopError):
                            continue  # dangling or looping links are not files
                        if pnode is not None and rname in pnode.files:
                            found.append(full)
                if recursive:
                    stack.extend(reversed(subdirs))
        yield from found

    def read_link(self, link: vpaths.PathLike) -> str:
        """The virtual path the symlink ``link`` points at."""
        full = self.norm(link)
        with self._lock:
            pnode, name, _ = self._resolve(full, False, set())
            if pnode is not None and name in pnode.links:
                return pnode.links[name]
            if self._kind_of(pnode, name) is None:
                raise NotFoundError("no such symlink", path=full, backend=self.name)
        raise InvalidPathError("not a symlink", path=full, backend=self.name)

    def stat(self, path: vpaths.PathLike) -> FileInfo:
        """:class:`FileInfo` for ``path`` itself (a symlink is reported as a symlink)."""
        full = self.norm(path)
        with self._lock:
            pnode, name, _ = self._resolve(full, False, set())
            kind = self._kind_of(pnode, name)
            if kind is None or pnode is None:
                if kind is None:
                    raise NotFoundError("no such file or directory", path=full, backend=self.name)
                return FileInfo(full, "directory")
            if kind == "file":
                return FileInfo(full, "file", size=_size_of(pnode.files[name]))
            if kind == "symlink":
                return FileInfo(full, "symlink", target=pnode.links[name])
            return FileInfo(full, "directory")

    # ------------------------------------------------------------------ mutations

    def ensure_directory(self, directory: vpaths.PathLike) -> str:
        """Create ``directory`` and its missing parents; return its normalised path."""
        full = self.norm(directory)
        with self._lock:
            if full in self._index:
                return full
            node, real = self._root, "/"
            for part in full.strip("/").split("/"):
                child_real = vpaths.join(real, part)
                if part in node.dirs:
                    node, real = node.dirs[part], child_real
                elif part in node.links:
                    node, real = self._resolve_dir(child_real, set())
                elif part in node.files:
                    raise NotADirectoryStorageError(
                        "a file is in the way", path=child_real, backend=self.name
                    )
                else:
                    child = _Dir()
                    node.dirs[part] = child
                    self._index[child_real] = child
                    node, real = child, child_real
        return full

    def _delete(self, full: str, recursive: bool) -> None:
        with self._lock:
            pnode, name, real = self._resolve(full, False, set())
            assert pnode is not None  # only "/" resolves to no parent
            if name in pnode.files:
                del pnode.files[name]
            elif name in pnode.links:
                del pnode.links[name]
            elif name in pnode.dirs:
                node = pnode.dirs[name]
                if not recursive and not node.is_empty():
                    raise DirectoryNotEmptyError(
                        "directory is not empty; use delete_all", path=full, backend=self.name
                    )
                for sub, _ in self._subtree_dirs(node, real):
                    self._index.pop(sub, None)
                del pnode.dirs[name]
                self._forget_nodes()
            else:
                raise NotFoundError("no such file or directory", path=full, backend=self.name)

    def _create_symlink(self, tfull: str, lfull: str, overwrite: bool) -> None:
        with self._lock:
            if self.entry_kind(tfull) is None:
                raise NotFoundError("symlink target does not exist", path=tfull, backend=self.name)
            self._check_can_write(lfull, overwrite)
            pnode, name, _ = self._resolve(lfull, False, set())
            assert pnode is not None
            old_file = pnode.files.pop(name, _MISSING)
            old_link = pnode.links.get(name)
            pnode.links[name] = tfull
            try:
                self._resolve(lfull, True, set())
            except SymlinkLoopError:
                # replacing a link can make the new target run through the link itself
                del pnode.links[name]
                if old_link is not None:
                    pnode.links[name] = old_link
                if old_file is not _MISSING:
                    pnode.files[name] = old_file
                raise

    def _move(self, sfull: str, dfull: str, replace_symlinks: bool) -> None:
        with self._lock:
            spnode, sname, sreal = self._resolve(sfull, False, set())
            assert spnode is not None
            kind = self._kind_of(spnode, sname)
            if kind is None:
                raise NotFoundError("no such file or directory", path=sfull, backend=self.name)
            dpnode, dname, dreal = self._resolve(dfull, False, set())
            if dpnode is None:
                raise AlreadyExistsError("destination exists", path=dfull, backend=self.name)
            dkind = self._kind_of(dpnode, dname)
            if dkind is not None and not (dkind == "symlink" and replace_symlinks):
                raise AlreadyExistsError("destination exists", path=dfull, backend=self.name)
            if kind == "directory" and vpaths.is_relative_to(dreal, sreal):
                raise InvalidPathError(
                    "cannot move a directory into itself", path=dfull, backend=self.name
                )
            if dkind is not None:
                del dpnode.links[dname]
            if kind == "file":
                dpnode.files[dname] = spnode.files.pop(sname)
            elif kind == "symlink":
                dpnode.links[dname] = spnode.links.pop(sname)
            else:
                node = spnode.dirs.pop(sname)
                for sub, _ in self._subtree_dirs(node, sreal):
                    del self._index[sub]
                dpnode.dirs[dname] = node
                for sub, child in self._subtree_dirs(node, dreal):
                    self._index[sub] = child
                self._forget_nodes()  # cached paths still name the old location

    def copy(self, src: vpaths.PathLike, dst: vpaths.PathLike, *, overwrite: bool = False) -> None:
        """Copy a file (the object, shared) or a directory tree (links kept as links).

        ``overwrite`` applies to files; a directory copy needs a new ``dst``.
        """
        sfull, dfull = self.norm(src), self.norm(dst)
        with self._lock:
            spnode, sname, sreal = self._resolve(sfull, True, set())
            kind = self._kind_of(spnode, sname)
            if kind is None:
                raise NotFoundError("no such file or directory", path=sfull, backend=self.name)
            if kind == "file":
                assert spnode is not None
                self._check_can_write(dfull, overwrite)
                dpnode, dname, _ = self._resolve(dfull, False, set())
                assert dpnode is not None
                dpnode.links.pop(dname, None)
                dpnode.files[dname] = spnode.files[sname]
                return
            snode = self._root if spnode is None else spnode.dirs[sname]
            if self.entry_kind(dfull, follow_symlinks=False) is not None:
                raise AlreadyExistsError("copy destination exists", path=dfull, backend=self.name)
            dpnode, dname, dreal = self._resolve(dfull, False, set())
            assert dpnode is not None
            if vpaths.is_relative_to(dreal, sreal):
                raise InvalidPathError(
                    "cannot copy a directory into itself", path=dfull, backend=self.name
                )
            clone = _clone(snode)
            dpnode.dirs[dname] = clone
            for sub, child in self._subtree_dirs(clone, dreal):
                self._index[sub] = child

    def clear(self) -> None:
        """Remove everything (the root directory stays)."""
        with self._lock:
            self._root = _Dir()
            self._index = {"/": self._root}
            self._forget_nodes()

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError(
            "a MemoryStorageBackend holds live objects of this process and cannot be "
            "pickled; give each worker process its own"
        )


_MISSING = object()


def _clone(node: _Dir) -> _Dir:
    out = _Dir()
    out.files = dict(node.files)
    out.links = dict(node.links)
    out.dirs = {name: _clone(child) for name, child in node.dirs.items()}
    return out
