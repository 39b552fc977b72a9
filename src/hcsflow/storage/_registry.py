"""Backend registries: explicit instances plus one module-level default."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from hcsflow.errors import BackendRegistrationError, UnknownBackendError
from hcsflow.storage._base import Backend, StorageBackend

__all__ = ["BackendRegistry", "storage_registry", "register_backend", "backend_name"]

_INSTALL_HINTS = {
    "zarr": (
        "this registry was built without it: register one with "
        "registry.register_backend('zarr', hcsflow.storage.ZarrStorageBackend())"
    ),
}


def backend_name(backend: Backend | str) -> str:
    """The registry key for a :class:`Backend` member or its string value."""
    if isinstance(backend, Backend):
        return backend.value
    if isinstance(backend, str):
        return backend
    raise UnknownBackendError(
        f"a backend is named by a Backend member or a string, got {type(backend).__name__}"
    )


class BackendRegistry:
    """A thread-safe mapping from backend names to :class:`StorageBackend` instances."""

    def __init__(
        self,
        backends: dict[str, StorageBackend] | None = None,
        *,
        factories: dict[str, Callable[[], StorageBackend]] | None = None,
    ):
        self._lock = threading.RLock()
        self._backends: dict[str, StorageBackend] = {}
        # Factories are instantiated on first use, so that naming a backend never costs
        # importing every other backend's libraries.
        self._factories: dict[str, Callable[[], StorageBackend]] = dict(factories or {})
        for key, value in (backends or {}).items():
            self.register_backend(key, value)

    def register_backend(self, name: Backend | str, backend: StorageBackend) -> Callable[[], None]:
        """Register ``backend`` under ``name``; return a function that unregisters it.

        Raises :class:`BackendRegistrationError` when the name is taken or the object is
        not a :class:`StorageBackend`.
        """
        key = backend_name(name)
        if not isinstance(backend, StorageBackend):
            raise BackendRegistrationError(
                f"backend {key!r} must be a StorageBackend instance, got {type(backend).__name__}"
            )
        with self._lock:
            if key in self._backends or key in self._factories:
                raise BackendRegistrationError(f"a backend named {key!r} is already registered")
            self._backends[key] = backend

        def unregister() -> None:
            with self._lock:
                if self._backends.get(key) is backend:
                    del self._backends[key]

        return unregister

    def get(self, name: Backend | str) -> StorageBackend:
        """The backend registered under ``name``."""
        key = backend_name(name)
        found = self._backends.get(key)
        if found is not None:
            return found
        with self._lock:
            factory = self._factories.get(key)
            if factory is not None:
                instance = factory()
                self._backends[key] = instance
                del self._factories[key]
                return instance
            if key in self._backends:
                return self._backends[key]
            hint = _INSTALL_HINTS.get(key, "")
            known = ", ".join(sorted(self)) or "none"
            raise UnknownBackendError(
                f"unknown backend {key!r} (registered: {known}){'; ' + hint if hint else ''}"
            )

    __getitem__ = get

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, (str, Backend)):
            return False
        key = backend_name(name)
        return key in self._backends or key in self._factories

    def __iter__(self) -> Iterator[str]:
        return iter(sorted({*self._backends, *self._factories}))

    def __len__(self) -> int:
        return len({*self._backends, *self._factories})


def _memory() -> StorageBackend:
    from hcsflow.storage._memory import MemoryStorageBackend

    return MemoryStorageBackend()


def _disk() -> StorageBackend:
    from hcsflow.storage.disk import DiskStorageBackend

    return DiskStorageBackend()


def _zarr() -> StorageBackend:
    from hcsflow.storage.zarr import ZarrStorageBackend

    return ZarrStorageBackend()


def _create_storage_registry() -> BackendRegistry:
    """Factory for the default registry: memory, disk and zarr, each built on first use."""
    return BackendRegistry(
        factories={
            Backend.MEMORY.value: _memory,
            Backend.DISK.value: _disk,
            Backend.ZARR.value: _zarr,
        }
    )


storage_registry: BackendRegistry = _create_storage_registry()
"""The default registry used by ``FileManager()`` without an explicit registry."""


def register_backend(name: Backend | str, backend: StorageBackend) -> Callable[[], None]:
    """Register ``backend`` in the default :data:`storage_registry`."""
    return storage_registry.register_backend(name, backend)
