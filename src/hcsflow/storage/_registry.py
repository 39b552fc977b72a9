"""Backend registries: explicit instances plus one module-level default."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from hcsflow.errors import BackendRegistrationError, UnknownBackendError
from hcsflow.storage._base import Backend, StorageBackend

__all__ = ["BackendRegistry", "storage_registry", "register_backend", "backend_name"]

_INSTALL_HINTS = {
    "zarr": "the zarr backend is registered by hcsflow.storage; reinstall hcsflow",
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

    def __init__(self, backends: dict[str, StorageBackend] | None = None):
        self._lock = threading.Lock()
        self._backends: dict[str, StorageBackend] = {}
        for key, value in (backends or {}).items():
            self.register_backend(key, value)

    def register_backend(self, name: Backend | str, backend: StorageBackend
                         ) -> Callable[[], None]:
        """Register ``backend`` under ``name``; return a function that unregisters it.

        Raises :class:`BackendRegistrationError` when the name is taken or the object is
        not a :class:`StorageBackend`.
        """
        key = backend_name(name)
        if not isinstance(backend, StorageBackend):
            raise BackendRegistrationError(
                f"backend {key!r} must be a StorageBackend instance, got "
                f"{type(backend).__name__}"
            )
        with self._lock:
            if key in self._backends:
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
        try:
            return self._backends[key]
        except KeyError:
            hint = _INSTALL_HINTS.get(key, "")
            known = ", ".join(sorted(self._backends)) or "none"
            raise UnknownBackendError(
                f"unknown backend {key!r} (registered: {known}){'; ' + hint if hint else ''}"
            ) from None

    __getitem__ = get

    def __contains__(self, name: object) -> bool:
        return isinstance(name, (str, Backend)) and backend_name(name) in self._backends

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._backends))

    def __len__(self) -> int:
        return len(self._backends)


def _create_storage_registry() -> BackendRegistry:
    from hcsflow.storage._disk import DiskStorageBackend
    from hcsflow.storage._memory import MemoryStorageBackend
    from hcsflow.storage._zarr import ZarrStorageBackend

    return BackendRegistry(
        {
            Backend.MEMORY.value: MemoryStorageBackend(),
            Backend.DISK.value: DiskStorageBackend(),
            Backend.ZARR.value: ZarrStorageBackend(),
        }
    )


storage_registry: BackendRegistry = _create_storage_registry()
"""The default registry used by ``FileManager()`` without an explicit registry."""


def register_backend(name: Backend | str, backend: StorageBackend) -> Callable[[], None]:
    """Register ``backend`` in the default :data:`storage_registry`."""
    return storage_registry.register_backend(name, backend)
