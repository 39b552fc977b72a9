"""``FileManager``: the one API over every registered backend."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hcsflow.errors import BackendRegistrationError
from hcsflow.paths import PathLike
from hcsflow.storage._base import Backend, FileInfo, StorageBackend
from hcsflow.storage._registry import BackendRegistry, storage_registry

__all__ = ["FileManager"]

BackendLike = Backend | str


class FileManager:
    """Location-transparent file operations: every method names the backend to use.

    ``FileManager()`` uses the default :data:`~hcsflow.storage.storage_registry`; pass a
    :class:`~hcsflow.storage.BackendRegistry` to isolate a run (its own memory backend,
    a rooted disk backend...).  A plain ``{name: backend}`` dict, as the specification
    builds its registry, is copied into a :class:`BackendRegistry` (each value checked
    now), so an unknown name raises :class:`~hcsflow.errors.UnknownBackendError` naming
    the registered ones.  Backends are named by :class:`Backend` or its string value.
    """

    def __init__(
        self, registry: BackendRegistry | Mapping[str, StorageBackend] | None = None
    ) -> None:
        if registry is None:
            self.registry = storage_registry
        elif isinstance(registry, BackendRegistry):
            self.registry = registry
        elif isinstance(registry, Mapping):
            self.registry = BackendRegistry(dict(registry))
        else:
            raise BackendRegistrationError(
                "FileManager takes a BackendRegistry or a {name: StorageBackend} dict, "
                f"got {type(registry).__name__}"
            )

    def backend(self, backend: BackendLike) -> StorageBackend:
        """The :class:`StorageBackend` registered under ``backend``."""
        try:
            # a Backend member hashes and compares as its value, so one lookup serves
            # both spellings; factories, unknown names and unhashable values go through
            # the registry's own checks
            return self.registry._backends[backend]
        except (KeyError, TypeError):
            return self.registry.get(backend)

    # -- data
    def save(
        self,
        data: Any,
        path: PathLike,
        backend: BackendLike,
        *,
        overwrite: bool = False,
        **options: Any,
    ) -> None:
        """Save ``data`` to ``path``; refuses an existing target unless ``overwrite=True``."""
        # the lookup of backend() inlined, and no empty **options passed on: together
        # most of this layer's cost on the memory backend
        try:
            found = self.registry._backends[backend]
        except (KeyError, TypeError):
            found = self.registry.get(backend)
        if options:
            found.save(data, path, overwrite=overwrite, **options)
        else:
            found.save(data, path, overwrite=overwrite)

    def load(self, path: PathLike, backend: BackendLike, **options: Any) -> Any:
        """Load the data at ``path`` (through symlinks)."""
        try:
            found = self.registry._backends[backend]
        except (KeyError, TypeError):
            found = self.registry.get(backend)
        return found.load(path, **options) if options else found.load(path)

    def save_batch(
        self,
        data_list: Sequence[Any],
        paths: Sequence[PathLike],
        backend: BackendLike,
        *,
        overwrite: bool = False,
        **options: Any,
    ) -> None:
        """Save many items; targets are all checked before anything is written.

        The zarr backend takes ``chunk_name=`` (the well) and ``zarr_config=`` here.
        """
        self.backend(backend).save_batch(data_list, paths, overwrite=overwrite, **options)

    def load_batch(
        self, paths: Sequence[PathLike], backend: BackendLike, **options: Any
    ) -> list[Any]:
        """Load many paths, results in the order of ``paths``."""
        return self.backend(backend).load_batch(paths, **options)

    # -- queries
    def exists(self, path: PathLike, backend: BackendLike) -> bool:
        """Whether ``path`` exists (dangling symlinks do not)."""
        return self.backend(backend).exists(path)

    def is_file(self, path: PathLike, backend: BackendLike) -> bool:
        """Whether ``path`` is (or links to) a file."""
        return self.backend(backend).is_file(path)

    def is_dir(self, path: PathLike, backend: BackendLike) -> bool:
        """Whether ``path`` is (or links to) a directory."""
        return self.backend(backend).is_dir(path)

    def is_symlink(self, path: PathLike, backend: BackendLike) -> bool:
        """Whether ``path`` itself is a symlink."""
        return self.backend(backend).is_symlink(path)

    def stat(self, path: PathLike, backend: BackendLike) -> FileInfo:
        """:class:`FileInfo` for ``path`` itself."""
        return self.backend(backend).stat(path)

    # -- listings (natural order)
    def list_dir(self, directory: PathLike, backend: BackendLike) -> list[str]:
        """Entry names directly in ``directory``."""
        return self.backend(backend).list_dir(directory)

    def list_files(
        self,
        directory: PathLike,
        backend: BackendLike,
        pattern: str | None = None,
        extensions: Iterable[str] | None = None,
        recursive: bool = False,
    ) -> list[str]:
        """Full paths of files in ``directory``, filtered by glob ``pattern`` and extensions."""
        return self.backend(backend).list_files(
            directory, pattern=pattern, extensions=extensions, recursive=recursive
        )

    def list_image_files(
        self,
        directory: PathLike,
        backend: BackendLike,
        extensions: Iterable[str] | None = None,
        recursive: bool = False,
    ) -> list[str]:
        """Full paths of image files (``.tif .tiff .png .npy`` unless ``extensions``)."""
        return self.backend(backend).list_image_files(
            directory, extensions=extensions, recursive=recursive
        )

    def find_file_recursive(self, directory: PathLike, filename: str, backend: BackendLike) -> str:
        """Path of the first file named ``filename`` below ``directory``."""
        return self.backend(backend).find_file_recursive(directory, filename)

    # -- mutations
    def ensure_directory(self, directory: PathLike, backend: BackendLike) -> str:
        """Create ``directory`` and its parents; return the normalised path."""
        return self.backend(backend).ensure_directory(directory)

    def delete(self, path: PathLike, backend: BackendLike) -> None:
        """Delete a file, a symlink or an empty directory."""
        try:
            found = self.registry._backends[backend]
        except (KeyError, TypeError):
            found = self.registry.get(backend)
        found.delete(path)

    def delete_all(self, path: PathLike, backend: BackendLike) -> None:
        """Delete ``path`` recursively."""
        self.backend(backend).delete_all(path)

    def copy(
        self, src: PathLike, dst: PathLike, backend: BackendLike, *, overwrite: bool = False
    ) -> None:
        """Copy a file or directory tree."""
        self.backend(backend).copy(src, dst, overwrite=overwrite)

    def move(
        self, src: PathLike, dst: PathLike, backend: BackendLike, *, replace_symlinks: bool = False
    ) -> None:
        """Move ``src`` to a new ``dst``; an existing symlink at ``dst`` is replaced only
        when ``replace_symlinks=True``."""
        self.backend(backend).move(src, dst, replace_symlinks=replace_symlinks)

    def create_symlink(
        self, target: PathLike, link: PathLike, backend: BackendLike, *, overwrite: bool = False
    ) -> None:
        """Create ``link`` pointing at ``target``."""
        self.backend(backend).create_symlink(target, link, overwrite=overwrite)

    def read_link(self, link: PathLike, backend: BackendLike) -> str:
        """The virtual path the symlink ``link`` points at."""
        return self.backend(backend).read_link(link)

    def mirror_directory(
        self,
        src: PathLike,
        dst: PathLike,
        backend: BackendLike,
        *,
        overwrite_symlinks_only: bool = False,
    ) -> int:
        """Mirror ``src`` into ``dst`` as symlinks; returns the number of links."""
        return self.backend(backend).mirror_directory(
            src, dst, overwrite_symlinks_only=overwrite_symlinks_only
        )
