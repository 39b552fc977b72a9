"""The storage extension point: :class:`Backend` names and the :class:`StorageBackend` ABC.

A backend implements a small abstract core over *normalised virtual paths*
(see :mod:`hcsflow.paths`); everything else (``exists``, ``is_file``, ``list_files``,
``mirror_directory``, batch I/O, ``find_file_recursive``...) is derived here once, so
every backend shares one set of semantics.  The rules (documented in
``docs/storage.md``) are:

* **Overwrite**: ``save``/``copy``/``create_symlink`` refuse an existing target
  (:class:`~hcsflow.errors.AlreadyExistsError`) unless ``overwrite=True``; a directory
  is never overwritten by a file.
* **Parents**: the parent directory must exist (:class:`~hcsflow.errors.NotFoundError`
  otherwise); ``ensure_directory`` creates a whole chain.
* **Symlinks**: links point at virtual paths of the same backend; reading follows
  them (a chain, with loop detection); ``delete`` on a link removes the link only;
  ``exists`` of a dangling link is ``False`` while ``is_symlink`` is ``True``.
* **Listing**: names in natural order (:func:`hcsflow.paths.natural_sorted`).
"""

from __future__ import annotations

import enum
import fnmatch
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from hcsflow import paths as vpaths
from hcsflow.errors import (
    AlreadyExistsError,
    BatchError,
    BatchLengthError,
    HcsflowError,
    InvalidPathError,
    IsADirectoryStorageError,
    NotADirectoryStorageError,
    NotFoundError,
    StorageError,
)

__all__ = ["Backend", "EntryKind", "FileInfo", "StorageBackend", "IMAGE_EXTENSIONS"]

EntryKind = Literal["file", "directory", "symlink"]

IMAGE_EXTENSIONS: tuple[str, ...] = (".tif", ".tiff", ".png", ".npy")
"""Extensions ``list_image_files`` uses when none are given."""


class Backend(enum.StrEnum):
    """Names of the built-in storage backends; ``Backend.MEMORY == "memory"``."""

    MEMORY = "memory"
    DISK = "disk"
    ZARR = "zarr"


@dataclass(frozen=True, slots=True)
class FileInfo:
    """What :meth:`StorageBackend.stat` reports about one entry (without following links)."""

    path: str
    kind: EntryKind
    size: int | None = None
    """Bytes on storage for files (``None`` where a backend cannot tell cheaply)."""
    target: str | None = None
    """For symlinks: the virtual path the link points at."""
    mtime: float | None = None
    """Modification time (POSIX seconds) where the backend keeps one."""


class StorageBackend(ABC):
    """Abstract storage backend over normalised virtual paths.

    Subclasses implement the abstract core; public methods accept any path-like and
    normalise it with :meth:`norm` first.  Implementations must be thread-safe.
    """

    #: registry name (``Backend`` value for built-ins)
    name: ClassVar[str] = "abstract"
    supports_symlinks: ClassVar[bool] = True
    supports_writes: ClassVar[bool] = True

    # ------------------------------------------------------------------ core (abstract)

    @abstractmethod
    def save(
        self, data: Any, path: vpaths.PathLike, *, overwrite: bool = False, **options: Any
    ) -> None:
        """Store ``data`` at ``path``; refuse an existing target unless ``overwrite``."""

    @abstractmethod
    def load(self, path: vpaths.PathLike, **options: Any) -> Any:
        """Return the data stored at ``path`` (following symlinks)."""

    @abstractmethod
    def entry_kind(
        self, path: vpaths.PathLike, *, follow_symlinks: bool = True
    ) -> EntryKind | None:
        """``"file"``, ``"directory"``, ``"symlink"`` (only when not following) or ``None``."""

    @abstractmethod
    def list_dir(self, directory: vpaths.PathLike) -> list[str]:
        """Names (not paths) of the entries directly in ``directory``, naturally sorted."""

    @abstractmethod
    def ensure_directory(self, directory: vpaths.PathLike) -> str:
        """Create ``directory`` and missing parents; return its normalised path."""

    @abstractmethod
    def _delete(self, path: str, recursive: bool) -> None:
        """Delete the entry at ``path`` itself (a symlink: the link, not its target).

        ``path`` is normalised and never ``/``.  A non-empty directory is deleted only
        when ``recursive``; otherwise it raises :class:`DirectoryNotEmptyError`.
        """

    @abstractmethod
    def _create_symlink(self, target: str, link: str, overwrite: bool) -> None:
        """Create ``link`` pointing at ``target`` (which must exist).

        Both paths are normalised and differ.  ``overwrite`` replaces an existing
        non-directory at ``link``, unless the new link would close a loop.
        """

    @abstractmethod
    def read_link(self, link: vpaths.PathLike) -> str:
        """The virtual path a symlink points at."""

    @abstractmethod
    def stat(self, path: vpaths.PathLike) -> FileInfo:
        """Information about ``path`` itself (a symlink is reported as a symlink)."""

    @abstractmethod
    def _move(self, src: str, dst: str, replace_symlinks: bool) -> None:
        """Rename ``src`` (itself, not a link's target) to ``dst``.

        Both paths are normalised and differ, and ``src`` is not ``/``.  ``dst`` must not
        exist, except that an existing *symlink* there is replaced when
        ``replace_symlinks``.
        """

    @abstractmethod
    def copy(self, src: vpaths.PathLike, dst: vpaths.PathLike, *, overwrite: bool = False) -> None:
        """Copy a file (its resolved content) or a directory tree to ``dst``."""

    # ------------------------------------------------------------------ helpers

    def norm(self, path: vpaths.PathLike) -> str:
        """Normalise a virtual path, naming this backend in errors."""
        return vpaths.normalize_path(path, backend=self.name)

    def _check_can_write(self, path: str, overwrite: bool) -> None:
        """Common target checks for writes: parent is a directory, no silent overwrite."""
        parent = vpaths.parent(path)
        pkind = self.entry_kind(parent)
        if pkind is None:
            raise self._absent_error(parent, "parent directory does not exist")
        if pkind != "directory":
            raise NotADirectoryStorageError(
                "parent is not a directory", path=parent, backend=self.name
            )
        kind = self.entry_kind(path, follow_symlinks=False)
        if kind == "directory":
            raise IsADirectoryStorageError("target is a directory", path=path, backend=self.name)
        if kind is not None and not overwrite:
            raise AlreadyExistsError(
                "target exists; pass overwrite=True to replace it", path=path, backend=self.name
            )

    # ------------------------------------------------------------------ derived API

    def exists(self, path: vpaths.PathLike) -> bool:
        """Whether ``path`` exists (a dangling symlink does not)."""
        return self.entry_kind(path) is not None

    def is_file(self, path: vpaths.PathLike) -> bool:
        """Whether ``path`` is (or links to) a file."""
        return self.entry_kind(path) == "file"

    def is_dir(self, path: vpaths.PathLike) -> bool:
        """Whether ``path`` is (or links to) a directory."""
        return self.entry_kind(path) == "directory"

    def is_symlink(self, path: vpaths.PathLike) -> bool:
        """Whether ``path`` itself is a symlink (dangling or not)."""
        return self.entry_kind(path, follow_symlinks=False) == "symlink"

    def delete(self, path: vpaths.PathLike) -> None:
        """Delete a file, a symlink (not its target) or an empty directory."""
        self._delete(self._deletable(path), recursive=False)

    def delete_all(self, path: vpaths.PathLike) -> None:
        """Delete ``path`` and everything below it (a symlink: the link only)."""
        self._delete(self._deletable(path), recursive=True)

    def _deletable(self, path: vpaths.PathLike) -> str:
        full = self.norm(path)
        if full == "/":
            raise InvalidPathError("refusing to delete the root", path=full, backend=self.name)
        return full

    def create_symlink(
        self, target: vpaths.PathLike, link: vpaths.PathLike, *, overwrite: bool = False
    ) -> None:
        """Create ``link`` pointing at the existing ``target`` (a virtual path)."""
        tfull, lfull = self.norm(target), self.norm(link)
        if tfull == lfull:
            raise InvalidPathError(
                "a symlink cannot point at itself", path=lfull, backend=self.name
            )
        self._create_symlink(tfull, lfull, overwrite)

    def move(
        self, src: vpaths.PathLike, dst: vpaths.PathLike, *, replace_symlinks: bool = False
    ) -> None:
        """Rename ``src`` (itself, not a link's target) to the new path ``dst``.

        ``dst`` must not exist, except that an existing *symlink* at ``dst`` is replaced
        when ``replace_symlinks=True``.  Atomic where the backend allows.
        """
        sfull, dfull = self.norm(src), self.norm(dst)
        if sfull == "/":
            raise InvalidPathError("cannot move the root", path=sfull, backend=self.name)
        if sfull == dfull:
            raise InvalidPathError(
                "source and destination are the same", path=sfull, backend=self.name
            )
        self._move(sfull, dfull, replace_symlinks)

    def _absent_error(self, path: str, message: str) -> StorageError:
        """Why ``path`` is absent: an ancestor is a file, or it is simply missing.

        Every backend reports a path below a file as :class:`NotADirectoryStorageError`
        and a path below a missing directory as :class:`NotFoundError`.
        """
        current = path
        while current != "/":
            current = vpaths.parent(current)
            kind = self.entry_kind(current)
            if kind == "file":
                return NotADirectoryStorageError("not a directory", path=current, backend=self.name)
            if kind == "directory":
                break
        return NotFoundError(message, path=path, backend=self.name)

    def _require_dir(self, directory: str) -> None:
        kind = self.entry_kind(directory)
        if kind is None:
            raise self._absent_error(directory, "directory does not exist")
        if kind != "directory":
            raise NotADirectoryStorageError("not a directory", path=directory, backend=self.name)

    def _scan_dir(self, directory: str) -> tuple[list[str], list[str]]:
        """Names of the files and of the subdirectories directly in ``directory``.

        ``directory`` is normalised and names an existing directory.  Files include
        symlinks to files; subdirectories are real directories only (a symlinked
        directory is neither, so walks never follow one).  Any order.  This default asks
        :meth:`list_dir` and :meth:`entry_kind` about every entry; backends override it
        with one pass over their own listing.
        """
        files: list[str] = []
        subdirs: list[str] = []
        for entry in self.list_dir(directory):
            full = _child(directory, entry)
            own = self.entry_kind(full, follow_symlinks=False)
            if own == "directory":
                subdirs.append(entry)
            elif own == "file" or (own == "symlink" and self.entry_kind(full) == "file"):
                files.append(entry)
        return files, subdirs

    def walk(self, directory: vpaths.PathLike, *, recursive: bool = True) -> Iterator[str]:
        """Yield the paths of files below ``directory`` in natural, depth-first order.

        Each directory's files come first, then its subdirectories' files.  Symlinked
        directories are not descended into (prevents cycles); symlinked files are
        yielded.
        """
        root = self.norm(directory)
        self._require_dir(root)
        stack = [root]
        while stack:
            current = stack.pop()
            files, subdirs = self._scan_dir(current)
            yield from _children(current, vpaths.natural_sorted(files))
            if recursive:
                stack.extend(reversed(_children(current, vpaths.natural_sorted(subdirs))))

    def list_files(
        self,
        directory: vpaths.PathLike,
        pattern: str | None = None,
        extensions: Iterable[str] | None = None,
        recursive: bool = False,
    ) -> list[str]:
        """Full virtual paths of files in ``directory`` filtered by glob and extension.

        ``pattern`` is an ``fnmatch`` glob matched against the file name; ``extensions``
        are matched case-insensitively (``".TIF"`` matches ``".tif"``).  Results are in
        natural order of their full path.
        """
        root = self.norm(directory)
        keep = _name_filter(pattern, extensions)
        cls = type(self)
        if cls._scan_dir is StorageBackend._scan_dir and cls.walk is not StorageBackend.walk:
            # a backend with its own walk and no _scan_dir lists best through that walk
            walked = list(self.walk(root, recursive=recursive))
            kept = set(keep(list({vpaths.name(full) for full in walked})))
            walked = [full for full in walked if vpaths.name(full) in kept]
            return vpaths.natural_sorted(walked) if recursive else walked
        self._require_dir(root)
        if not recursive:
            files, _ = self._scan_dir(root)
            # one directory: ordering the names orders the paths; only the kept names
            # are ordered
            return _children(root, vpaths.natural_sorted(keep(files)))
        found: list[str] = []
        stack = [root]
        while stack:
            current = stack.pop()
            files, subdirs = self._scan_dir(current)
            found += _children(current, keep(files))
            stack += _children(current, subdirs)
        return vpaths.natural_sorted(found)

    def list_image_files(
        self,
        directory: vpaths.PathLike,
        extensions: Iterable[str] | None = None,
        recursive: bool = False,
    ) -> list[str]:
        """``list_files`` restricted to image extensions (default :data:`IMAGE_EXTENSIONS`)."""
        return self.list_files(
            directory, extensions=extensions or IMAGE_EXTENSIONS, recursive=recursive
        )

    def find_file_recursive(self, directory: vpaths.PathLike, filename: str) -> str:
        """Path of the first file named ``filename`` below ``directory`` (natural order)."""
        root = self.norm(directory)
        for full in self.walk(root, recursive=True):
            if vpaths.name(full) == filename:
                return full
        raise NotFoundError(
            f"no file named {filename!r} below the directory", path=root, backend=self.name
        )

    def save_batch(
        self,
        data_list: Sequence[Any],
        paths: Sequence[vpaths.PathLike],
        *,
        overwrite: bool = False,
        **options: Any,
    ) -> None:
        """Save each item to its path; all targets are checked before anything is written.

        A failing item raises :class:`~hcsflow.errors.BatchError` naming its index and
        path, with the underlying error chained as ``__cause__``.
        """
        norm = _check_batch(self, data_list, paths)
        self._check_batch_targets(norm, overwrite)
        for index, (item, p) in enumerate(zip(data_list, norm, strict=True)):
            try:
                self.save(item, p, overwrite=overwrite, **options)
            except HcsflowError as exc:
                raise batch_item_error(
                    index, "could not be written", exc, path=p, backend=self.name
                ) from exc

    def _check_batch_targets(self, norm: Sequence[str], overwrite: bool) -> None:
        """:meth:`_check_can_write` for every path of a batch, naming the failing item."""
        for index, p in enumerate(norm):
            try:
                self._check_can_write(p, overwrite)
            except HcsflowError as exc:
                raise batch_item_error(
                    index, "cannot be written", exc, path=p, backend=self.name
                ) from exc

    def load_batch(self, paths: Sequence[vpaths.PathLike], **options: Any) -> list[Any]:
        """Load every path, in order; a failing item raises :class:`~hcsflow.errors.BatchError`."""
        out = []
        for index, p in enumerate(paths):
            try:
                out.append(self.load(p, **options))
            except HcsflowError as exc:
                raise batch_item_error(
                    index, "could not be loaded", exc, path=self._item_path(p), backend=self.name
                ) from exc
        return out

    def _item_path(self, path: vpaths.PathLike) -> str:
        """A batch item's path for an error: normalised when it can be, else as given."""
        try:
            return self.norm(path)
        except HcsflowError:
            return str(path)

    def mirror_directory(
        self, src: vpaths.PathLike, dst: vpaths.PathLike, *, overwrite_symlinks_only: bool = False
    ) -> int:
        """Recreate ``src``'s directory tree under ``dst`` with a symlink for every file.

        Existing entries at link locations raise :class:`AlreadyExistsError` (checked
        before anything is created), except existing symlinks when
        ``overwrite_symlinks_only=True``, which are replaced.  Returns the number of
        links created.
        """
        src_n, dst_n = self.norm(src), self.norm(dst)
        if vpaths.is_relative_to(dst_n, src_n):
            raise InvalidPathError(
                "cannot mirror a directory into itself", path=dst_n, backend=self.name
            )
        files = list(self.walk(src_n, recursive=True))
        plan = [(f, vpaths.join(dst_n, vpaths.relative_to(f, src_n))) for f in files]
        for _, link in plan:
            own = self.entry_kind(link, follow_symlinks=False)
            if own is None:
                continue
            if own == "symlink" and overwrite_symlinks_only:
                continue
            raise AlreadyExistsError("mirror target exists", path=link, backend=self.name)
        self.ensure_directory(dst_n)
        for target, link in plan:
            self.ensure_directory(vpaths.parent(link))
            self.create_symlink(target, link, overwrite=overwrite_symlinks_only)
        return len(plan)


def _normalize_extensions(extensions: Iterable[str] | None) -> tuple[str, ...] | None:
    if extensions is None:
        return None
    if isinstance(extensions, str):
        extensions = [extensions]
    return tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)


def _name_filter(
    pattern: str | None, extensions: Iterable[str] | None
) -> Callable[[list[str]], list[str]]:
    """The names of a list that match the glob ``pattern`` and ``extensions``."""
    exts = _normalize_extensions(extensions)
    # what fnmatch.fnmatchcase does per call, compiled once for the whole listing
    match = re.compile(fnmatch.translate(pattern)).match if pattern is not None else None

    def keep(names: list[str]) -> list[str]:
        if exts is not None:
            names = [n for n in names if n.lower().endswith(exts)]
        if match is not None:
            names = [n for n in names if match(n)]
        return names

    return keep


def _child(directory: str, name: str) -> str:
    """The path of ``name`` in the normalised ``directory``."""
    return directory + "/" + name if directory != "/" else "/" + name


def _children(directory: str, names: Iterable[str]) -> list[str]:
    """The paths of ``names`` in the normalised ``directory``."""
    prefix = directory + "/" if directory != "/" else "/"
    return [prefix + name for name in names]


def _check_batch(
    backend: StorageBackend, data_list: Sequence[Any], paths: Sequence[vpaths.PathLike]
) -> list[str]:
    if len(data_list) != len(paths):
        raise BatchLengthError(
            f"save_batch got {len(data_list)} items for {len(paths)} paths", backend=backend.name
        )
    if type(backend).norm is StorageBackend.norm:
        # the plain normaliser, called directly: one call per path, not two
        name = backend.name
        norm = [vpaths.normalize_path(p, backend=name) for p in paths]
    else:
        norm = [backend.norm(p) for p in paths]
    if len(set(norm)) != len(norm):
        dup = next(p for p in norm if norm.count(p) > 1)
        raise InvalidPathError("path appears twice in one batch", path=dup, backend=backend.name)
    return norm


def _reason(exc: BaseException) -> str:
    """What went wrong, without the location a storage error appends to its message."""
    return str(getattr(exc, "reason", exc))


def batch_item_error(
    index: int, what: str, exc: BaseException, *, path: str, backend: str
) -> BatchError:
    """``batch item <index> <what>: <reason of exc>`` naming the item's path and backend.

    Every backend reports a failing batch item this way; raise it ``from exc``.
    """
    return BatchError(
        f"batch item {index} {what}: {_reason(exc)}", index=index, path=path, backend=backend
    )
