"""A zarr-python store over :class:`~hcsflow.storage.zarr._localfs.LocalFS` (contained I/O).

zarr-python reads and writes chunks and metadata itself; giving it this store instead
of ``zarr.storage.LocalStore`` keeps those operations inside the root as well.
Metadata documents are checked against the size and nesting limits before zarr-python
parses them.
"""

from __future__ import annotations

import asyncio
import builtins
import os
from collections.abc import AsyncIterator, Iterable
from typing import Any

from zarr.abc.store import OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer.core import default_buffer_prototype

from hcsflow import paths as vpaths
from hcsflow.errors import PathEscapeError
from hcsflow.storage.zarr._io import BACKEND, META_FILES
from hcsflow.storage.zarr._localfs import LocalFS, read_fd

__all__ = ["ContainedStore"]


class ContainedStore(Store):
    """A zarr-python store of the keys below ``base`` in a :class:`LocalFS`."""

    supports_writes = True
    supports_deletes = True
    supports_listing = True

    def __init__(self, fs: LocalFS, base: str, *, read_only: bool = False):
        super().__init__(read_only=read_only)
        self.fs = fs
        self.base = base

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ContainedStore)
            and other.fs.tree.root == self.fs.tree.root
            and other.base == self.base
        )

    def __hash__(self) -> int:
        return hash((self.fs.tree.root, self.base))

    def __repr__(self) -> str:
        return f"ContainedStore({self.fs.tree.real(self.base)!r})"

    def with_read_only(self, read_only: bool = False) -> ContainedStore:
        return ContainedStore(self.fs, self.base, read_only=read_only)

    # ------------------------------------------------------------------ keys

    def _vp(self, key: str) -> str:
        parts = key.split("/") if key else []
        for part in parts:
            if part in ("", ".", ".."):
                raise PathEscapeError(
                    f"zarr key {key!r} is not a relative path below the store",
                    path=self.fs.tree.real(self.base),
                    backend=BACKEND,
                )
        return self.base if not parts else vpaths.join(self.base, *parts)

    def _real(self, key: str) -> str:
        return self.fs.tree.real(self._vp(key))

    # ------------------------------------------------------------------ sync core

    def get_sync(self, key: str, *, prototype: Any = None, byte_range: Any = None) -> Any:
        prototype = prototype or default_buffer_prototype()
        opened = self.fs.open_regular(self._vp(key))
        if opened is None:
            return None
        fd, st = opened
        try:
            if byte_range is None:
                if key.rsplit("/", 1)[-1] in META_FILES:
                    limits = self.fs.limits
                    data = read_fd(fd, limits.max_metadata_bytes, st.st_size)
                    limits.check_json(data, path=self._real(key), backend=BACKEND, metadata=True)
                else:
                    data = read_fd(fd, None, st.st_size)
            else:
                size = st.st_size
                if isinstance(byte_range, RangeByteRequest):
                    start, end = byte_range.start, byte_range.end
                elif isinstance(byte_range, OffsetByteRequest):
                    start, end = byte_range.offset, size
                elif isinstance(byte_range, SuffixByteRequest):
                    start, end = max(0, size - byte_range.suffix), size
                else:
                    raise TypeError(f"unexpected byte range {byte_range!r}")
                data = os.pread(fd, max(0, min(end, size) - start), start)
        finally:
            os.close(fd)
        return prototype.buffer.from_bytes(data)

    def set_sync(self, key: str, value: Any) -> None:
        self._check_writable()
        self.fs.write_atomic(self._real(key), value.as_buffer_like())

    def delete_sync(self, key: str) -> None:
        self._check_writable()
        self.fs.remove_tree(self._real(key))

    # ------------------------------------------------------------------ async API

    async def get(self, key: str, prototype: Any = None, byte_range: Any = None) -> Any:
        return await asyncio.to_thread(
            self.get_sync, key, prototype=prototype, byte_range=byte_range
        )

    async def get_partial_values(
        self, prototype: Any, key_ranges: Iterable[tuple[str, Any]]
    ) -> builtins.list[Any]:
        return list(
            await asyncio.gather(
                *(self.get(key, prototype, byte_range) for key, byte_range in key_ranges)
            )
        )

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.fs.is_file, self._real(key))

    async def set(self, key: str, value: Any) -> None:
        await asyncio.to_thread(self.set_sync, key, value)

    async def set_if_not_exists(self, key: str, value: Any) -> None:
        self._check_writable()
        await asyncio.to_thread(self.fs.write_exclusive, self._real(key), value.as_buffer_like())

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self.delete_sync, key)

    async def delete_dir(self, prefix: str) -> None:
        self._check_writable()
        await asyncio.to_thread(self.fs.remove_tree, self._real(prefix.rstrip("/")))

    async def list(self) -> AsyncIterator[str]:
        for key in await asyncio.to_thread(self._walk, ""):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        for key in await asyncio.to_thread(self._walk, prefix.rstrip("/")):
            yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        for name in await asyncio.to_thread(self.fs.list, self._real(prefix.rstrip("/"))):
            yield name

    def _walk(self, prefix: str) -> builtins.list[str]:
        """Keys of every file below ``prefix`` (relative to the store)."""
        out: builtins.list[str] = []
        stack = [prefix]
        while stack:
            key = stack.pop()
            real = self._real(key)
            for name in self.fs.list(real):
                child = f"{key}/{name}" if key else name
                if self.fs.kind(self._real(child)) == "directory":
                    stack.append(child)
                else:
                    out.append(child)
        return out
