"""The memory backend: a tree of directory nodes plus one flat table of files.

Layout: every directory is a :class:`_Dir` holding the names of its files (a set), its
subdirectories and its symlinks (dicts), so a name is in exactly one of them and the
kind of an entry is known without wrapping the stored object.  Two flat tables sit
beside the tree: ``_index`` maps the *real* (symlink-free) path of every directory to
its node, and ``_files`` maps the real path of every file to the stored object itself
(no wrapper: a save allocates nothing the garbage collector has to track).  So the
common operations cost a fixed number of dict operations whatever the size of the
store: ``load`` of a real path is one lookup, ``save`` of a new file one lookup of its
parent plus two inserts, ``delete`` one pop, one lookup of the parent and one set
removal, and listing a directory reads its node only.  Nothing is cached by the path as given, so
there is no cache to overflow: a path that is not already in normal form (``a/b``,
``/a/./b``) or that runs through a symlink takes the full resolver instead.

Thread safety: one re-entrant lock guards every mutation and every slow-path lookup.
The fast ``load`` path takes no lock: it is one dict read, atomic, and whatever it
returns was the content of that path at some instant during the call.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
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
from hcsflow.storage._base import (
    Backend,
    EntryKind,
    FileInfo,
    StorageBackend,
    _check_batch,
    _child,
)

__all__ = ["MemoryStorageBackend"]

_MAX_LINK_HOPS = 64
# module globals are one lookup cheaper than attributes on the hot paths
_ndarray = np.ndarray
_BACKSLASH_IS_SEP = vpaths._BACKSLASH_IS_SEP


class _Dir:
    """One directory: names of its files, its subdirectory nodes, its links' targets."""

    __slots__ = ("files", "dirs", "links")

    def __init__(self) -> None:
        self.files: set[str] = set()
        self.dirs: dict[str, _Dir] = {}
        self.links: dict[str, str] = {}

    def names(self) -> list[str]:
        return [*self.files, *self.dirs, *self.links]

    def is_empty(self) -> bool:
        return not (self.files or self.dirs or self.links)


_MISSING: Any = object()


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
        # real directory path -> node; lets the hot paths skip walking the tree
        self._index: dict[str, _Dir] = {"/": self._root}
        # real file path -> the stored object
        self._files: dict[str, Any] = {}

    # ------------------------------------------------------------------ path helpers

    def _file_key(self, path: Any) -> tuple[str, str]:
        """(normalised parent, name) of a path that must name a file."""
        full = vpaths.normalize_path(path, backend=self.name)
        if full == "/":
            raise IsADirectoryStorageError("the root is a directory", path=full, backend=self.name)
        cut = full.rfind("/")
        return full[:cut] or "/", full[cut + 1 :]

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
        real = _child(preal, name)
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
                item = (_child(base, name), child)
                out.append(item)
                stack.append(item)
        return out

    def _drop_subtree(self, node: _Dir, real: str) -> None:
        """Remove the index and file entries of everything at or below ``node`` (lock held)."""
        files = self._files
        for sub, current in self._subtree_dirs(node, real):
            self._index.pop(sub, None)
            for name in current.files:
                files.pop(_child(sub, name), None)

    # ------------------------------------------------------------------ data

    def save(
        self, data: Any, path: vpaths.PathLike, overwrite: bool = False, **options: Any
    ) -> None:
        """Store ``data`` at ``path`` by reference (numpy arrays as read-only views).

        ``overwrite`` may also be passed positionally here (a cheaper call).
        """
        if isinstance(data, _ndarray):
            # a view of every array, read-only ones too: asking first costs the writable
            # arrays steps return more than the view costs a read-only one
            data = data.view()
            data.setflags(False)  # positional: much cheaper than write=False
        if type(path) is str:
            files = self._files
            # the critical section: the existence checks and the stores
            self._acquire()
            try:
                if path in files:
                    # the real, normal path of an existing file
                    if overwrite:
                        files[path] = data
                        return
                else:
                    # a new file under an indexed (real, normal) directory with a plain
                    # name that no directory or link holds; anything else takes the slow
                    # path, which normalises and resolves.  (One rpartition costs about
                    # a third of an rfind and two slices.)  _plain_targets makes the same
                    # test for batches; it is inlined here, where a call would cost a
                    # tenth of a save: change both together.
                    parent, slash, name = path.rpartition("/")
                    if parent:
                        node = self._index.get(parent) if parent != "/" else None  # "//x"
                    else:
                        node = self._root if slash else None  # "/x", or relative "x"
                    if not (
                        node is None
                        or not name
                        or name[0] == "."  # ".", ".." (and hidden names)
                        or "\x00" in name
                        or (_BACKSLASH_IS_SEP and "\\" in name)
                        or name in node.dirs
                        or name in node.links
                    ):
                        files[path] = data
                        node.files.add(name)
                        return
            finally:
                self._release()
        self._save_slow(data, path, overwrite)

    def _save_slow(self, data: Any, raw: Any, overwrite: bool) -> None:
        """Save with every check: symlinked parents, existing targets, missing parents."""
        parent, name = self._file_key(raw)
        with self._lock:
            pnode, preal = self._writable_parent(parent)
            path = _child(parent, name)
            if name in pnode.dirs:
                raise IsADirectoryStorageError(
                    "target is a directory", path=path, backend=self.name
                )
            if name in pnode.files or name in pnode.links:
                if not overwrite:
                    raise AlreadyExistsError(
                        "target exists; pass overwrite=True to replace it",
                        path=path,
                        backend=self.name,
                    )
                # like a rename onto a link, overwriting replaces the link, not its target
                pnode.links.pop(name, None)
            self._files[_child(preal, name)] = data
            pnode.files.add(name)

    def _writable_parent(self, parent: str) -> tuple[_Dir, str]:
        try:
            return self._resolve_dir(parent, set())
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
            return self._files[path]  # type: ignore[index]
        except (KeyError, TypeError):
            return self._load_slow(path)

    def _load_slow(self, raw: Any) -> Any:
        parent, name = self._file_key(raw)
        path = _child(parent, name)
        with self._lock:
            try:
                pnode, rname, real = self._resolve(path, True, set())
            except NotFoundError as exc:
                raise NotFoundError("no such file", path=path, backend=self.name) from exc
            if pnode is None or rname in pnode.dirs:
                raise IsADirectoryStorageError("path is a directory", path=path, backend=self.name)
            if rname not in pnode.files:
                raise NotFoundError("no such file", path=path, backend=self.name)
            return self._files[real]

    def delete(self, path: vpaths.PathLike) -> None:
        """Delete a file, a symlink (not its target) or an empty directory."""
        key: Any = path  # any hashable is looked up as it is
        self._acquire()
        try:
            if self._files.pop(key, _MISSING) is not _MISSING:
                # a key of the table: a real, normal path whose parent is indexed
                parent, _, name = key.rpartition("/")
                self._index[parent or "/"].files.remove(name)
                return
        except TypeError:
            pass  # unhashable: not a key, and the general route reports what it is
        finally:
            self._release()
        super().delete(path)

    def save_batch(
        self,
        data_list: Sequence[Any],
        paths: Sequence[vpaths.PathLike],
        *,
        overwrite: bool = False,
        **options: Any,
    ) -> None:
        """Save each item; every target is checked first, so a refused batch writes nothing."""
        if len(data_list) != len(paths):
            _check_batch(self, data_list, paths)  # raises BatchLengthError
        # one critical section: no other writer can slip in between checks and stores
        with self._lock:
            targets = self._plain_targets(paths, overwrite)
            if targets is None:
                norm = _check_batch(self, data_list, paths)
                targets = self._plain_targets(norm, overwrite)
                if targets is None:
                    # the full checks, which also say which item fails and why
                    self._check_batch_targets(norm, overwrite)
                    for item, target in zip(data_list, norm, strict=True):
                        self.save(item, target, True)
                    return
                paths = norm
            files: dict[Any, Any] = self._files  # every path is a plain str by now
            for item, path, (node, name) in zip(data_list, paths, targets, strict=True):
                if isinstance(item, _ndarray):  # as in save
                    view: Any = item.view()
                    view.setflags(False)
                    item = view
                files[path] = item
                node.files.add(name)

    def _plain_targets(
        self, paths: Sequence[Any], overwrite: bool
    ) -> list[tuple[_Dir, str]] | None:
        """(parent node, name) of each path when every one takes the fast route of
        :meth:`save` (lock held): distinct real paths in normal form naming an existing
        file (with ``overwrite``) or a new plain name in an indexed directory.  ``None``
        when any path needs the normalising, resolving route; nothing is checked twice
        and nothing is normalised on the way, as in ``save``."""
        try:
            if len(set(paths)) != len(paths):
                return None
        except TypeError:  # unhashable items: the full route says which
            return None
        files, index, root = self._files, self._index, self._root
        targets: list[tuple[_Dir, str]] = []
        for path in paths:
            if type(path) is not str:
                return None
            parent, slash, name = path.rpartition("/")
            if parent:
                node = index.get(parent) if parent != "/" else None
            else:
                node = root if slash else None
            if (
                node is None
                or not name
                or name[0] == "."
                or "\x00" in name
                or (_BACKSLASH_IS_SEP and "\\" in name)
                or (not overwrite if path in files else name in node.dirs or name in node.links)
            ):
                return None
            targets.append((node, name))
        return targets

    def load_batch(self, paths: Sequence[vpaths.PathLike], **options: Any) -> list[Any]:
        """Load every path, in order, as one snapshot; a failing item raises BatchError."""
        files: dict[Any, Any] = self._files
        with self._lock:
            try:
                return [files[path] for path in paths]
            except (KeyError, TypeError):
                # not all real, normal file paths: item by item, errors naming the item
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
        """Files below ``directory`` (see :meth:`StorageBackend.walk`), as one snapshot.

        The whole listing is taken under the lock before the first path is yielded.
        """
        with self._lock:
            found = list(super().walk(directory, recursive=recursive))
        yield from found

    def list_files(
        self,
        directory: vpaths.PathLike,
        pattern: str | None = None,
        extensions: Iterable[str] | None = None,
        recursive: bool = False,
    ) -> list[str]:
        """:meth:`StorageBackend.list_files`, as one snapshot taken under the lock."""
        with self._lock:
            return super().list_files(directory, pattern, extensions, recursive)

    def _scan_dir(self, directory: str) -> tuple[list[str], list[str]]:
        """Files (links to files included) and real subdirectories of one node."""
        with self._lock:
            node, _ = self._resolve_dir(directory, set())
            files = list(node.files)
            for name in node.links:
                try:
                    pnode, rname, _ = self._resolve(_child(directory, name), True, set())
                except (NotFoundError, NotADirectoryStorageError, SymlinkLoopError):
                    continue  # dangling or looping links are not files
                if pnode is not None and rname in pnode.files:
                    files.append(name)
            return files, list(node.dirs)

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
            pnode, name, real = self._resolve(full, False, set())
            kind = self._kind_of(pnode, name)
            if kind is None or pnode is None:
                if kind is None:
                    raise NotFoundError("no such file or directory", path=full, backend=self.name)
                return FileInfo(full, "directory")
            if kind == "file":
                return FileInfo(full, "file", size=_size_of(self._files[real]))
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
                child_real = _child(real, part)
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
                pnode.files.remove(name)
                del self._files[real]
            elif name in pnode.links:
                del pnode.links[name]
            elif name in pnode.dirs:
                node = pnode.dirs[name]
                if not recursive and not node.is_empty():
                    raise DirectoryNotEmptyError(
                        "directory is not empty; use delete_all", path=full, backend=self.name
                    )
                self._drop_subtree(node, real)
                del pnode.dirs[name]
            else:
                raise NotFoundError("no such file or directory", path=full, backend=self.name)

    def _create_symlink(self, tfull: str, lfull: str, overwrite: bool) -> None:
        with self._lock:
            if self.entry_kind(tfull) is None:
                raise NotFoundError("symlink target does not exist", path=tfull, backend=self.name)
            self._check_can_write(lfull, overwrite)
            pnode, name, real = self._resolve(lfull, False, set())
            assert pnode is not None
            old_file = self._files.pop(real, _MISSING)
            pnode.files.discard(name)
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
                    self._files[real] = old_file
                    pnode.files.add(name)
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
                spnode.files.remove(sname)
                self._files[dreal] = self._files.pop(sreal)
                dpnode.files.add(dname)
            elif kind == "symlink":
                dpnode.links[dname] = spnode.links.pop(sname)
            else:
                node = spnode.dirs.pop(sname)
                files = self._files
                for sub, current in self._subtree_dirs(node, sreal):
                    moved = dreal + sub[len(sreal) :]
                    del self._index[sub]
                    self._index[moved] = current
                    for name in current.files:
                        files[_child(moved, name)] = files.pop(_child(sub, name))
                dpnode.dirs[dname] = node

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
                dpnode, dname, dreal = self._resolve(dfull, False, set())
                assert dpnode is not None
                dpnode.links.pop(dname, None)
                self._files[dreal] = self._files[sreal]
                dpnode.files.add(dname)
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
            dpnode.dirs[dname] = self._clone(snode, sreal, dreal)

    def _clone(self, node: _Dir, real: str, new_real: str) -> _Dir:
        """A copy of the tree at ``node`` placed at ``new_real``: nodes, index and files."""
        out = _Dir()
        out.files = set(node.files)
        out.links = dict(node.links)
        self._index[new_real] = out
        for name in node.files:
            self._files[_child(new_real, name)] = self._files[_child(real, name)]
        for name, child in node.dirs.items():
            out.dirs[name] = self._clone(child, _child(real, name), _child(new_real, name))
        return out

    def clear(self) -> None:
        """Remove everything (the root directory stays)."""
        with self._lock:
            self._root = _Dir()
            self._index = {"/": self._root}
            self._files = {}

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError(
            "a MemoryStorageBackend holds live objects of this process and cannot be "
            "pickled; give each worker process its own"
        )
