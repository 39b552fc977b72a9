"""Zarr arrays of a plate: create one, open a resolution level of an image group, read a
selection within the storage limits.

:func:`create_array` is the one place arrays are written (wells, labels and the zarr
backend's file nodes all go through it, looked up at call time so a test can make it
fail); :func:`read_array` the one place they are read, checking the declared size, the
chunk size and the number of chunks a selection touches before decoding into an
aligned buffer, and naming the corrupt chunk when one does not decode.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hcsflow.errors import HcsflowError, NotFoundError, ZarrError
from hcsflow.storage._decode import aligned_empty
from hcsflow.storage.zarr import _ome
from hcsflow.storage.zarr._config import ZarrConfig
from hcsflow.storage.zarr._io import BACKEND, Location, corrupt, store_errors
from hcsflow.storage.zarr._localfs import LocalFS
from hcsflow.storage.zarr._locate import meta_error

__all__ = [
    "ArrayRequest",
    "create_array",
    "create_array_async",
    "create_arrays",
    "dataset_paths",
    "open_array_at",
    "open_array",
    "read_array",
    "read_arrays",
]


def _array_kwargs(
    data: np.ndarray, config: ZarrConfig, dimension_names: Sequence[str] | None
) -> dict[str, Any]:
    chunks = config.chunk_shape(data.shape)
    kwargs: dict[str, Any] = dict(
        shape=data.shape,
        dtype=data.dtype,
        chunks=chunks,
        shards=config.shard_shape(data.shape, chunks),
        zarr_format=config.zarr_format,
        fill_value=0,
        # always a fresh name: never let zarr delete whatever is there (a writer's
        # locked, half-built array under a reused name would be lost)
        overwrite=False,
        **config.codecs(data.dtype.itemsize),
    )
    if config.zarr_format == 3:
        kwargs["dimension_names"] = list(dimension_names) if dimension_names else None
    else:
        kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
    return kwargs


def create_array(
    loc: Location, data: np.ndarray, config: ZarrConfig, dimension_names: Sequence[str] | None
) -> None:
    """Write ``data`` as a new zarr array at ``loc`` encoded per ``config``."""
    import zarr

    with store_errors(loc.url):
        arr = zarr.create_array(
            store=loc.zarr_store(), **_array_kwargs(data, config, dimension_names)
        )
        arr[...] = data


@dataclass(frozen=True)
class ArrayRequest:
    """One array of a batch for :func:`create_arrays`: where, what, how encoded."""

    loc: Location
    data: np.ndarray
    config: ZarrConfig


async def create_array_async(request: ArrayRequest) -> None:
    """:func:`create_array` on zarr's event loop (for :func:`create_arrays`)."""
    from zarr.api.asynchronous import create_array as create

    with store_errors(request.loc.url):
        arr = await create(
            store=request.loc.zarr_store(), **_array_kwargs(request.data, request.config, None)
        )
        await arr.setitem(Ellipsis, request.data)


def create_arrays(requests: Sequence[ArrayRequest]) -> list[BaseException | None]:
    """Write many new arrays together in one call to zarr's event loop.

    Returns each array's error (``None``: written).  Done one by one, every array costs
    two round trips to zarr-python's event loop thread and waits for each of its store
    operations in turn; together, one round trip serves the batch and the store
    operations and codecs of different arrays overlap (measured: docs/zarr.md).
    """
    from zarr.core.sync import sync

    async def every() -> list[Any]:
        return await asyncio.gather(
            *(create_array_async(r) for r in requests), return_exceptions=True
        )

    return [r if isinstance(r, BaseException) else None for r in sync(every())]


def dataset_paths(img: Location) -> tuple[list[str], list[str], int]:
    node = _ome.read_node(img)
    if node is None:
        raise NotFoundError(
            f"missing image group: store {img.url!r}", path=img.url, backend=BACKEND
        )
    _, block = _ome.unwrap(node.attributes)
    meta_key = "zarr.json" if node.zarr_format == 3 else ".zattrs"
    try:
        ms = block["multiscales"][0]
        paths = [
            _ome.child_path(d["path"], img, meta_key, "multiscales dataset path")
            for d in ms["datasets"]
        ]
        axes = [str(a["name"]) if isinstance(a, dict) else str(a) for a in ms["axes"]]
    except (KeyError, TypeError, IndexError) as exc:
        raise meta_error(
            img,
            meta_key,
            f"malformed multiscales metadata ({type(exc).__name__}: {exc})",
        ) from exc
    return paths, axes, node.zarr_format


def open_array_at(img: Location, level: int) -> tuple[Any, Location]:
    """The zarr array of resolution ``level`` of an image group, and its location."""
    import zarr

    paths, _, fmt = dataset_paths(img)
    if not isinstance(level, int) or not 0 <= level < len(paths):
        raise NotFoundError(
            f"resolution level {level!r} not in 0..{len(paths) - 1}: store {img.url!r}",
            path=img.url,
            backend=BACKEND,
        )
    loc = img.child(paths[level])
    if not isinstance(loc.fs, LocalFS):
        # the local store checks metadata sizes itself; here read it once through ours
        _ome.read_node(loc)
    with store_errors(loc.url):
        try:
            return zarr.open_array(
                store=loc.zarr_store(), mode="r", zarr_format=3 if fmt == 3 else 2
            ), loc
        except HcsflowError:
            raise
        except (FileNotFoundError, KeyError) as exc:
            raise NotFoundError(
                f"missing array: store {img.url!r}, key {paths[level]!r}",
                path=loc.url,
                backend=BACKEND,
            ) from exc
        except (ValueError, TypeError) as exc:
            raise meta_error(
                img, paths[level], f"malformed array metadata: {type(exc).__name__}: {exc}"
            ) from exc


def open_array(img: Location, level: int) -> Any:
    """The zarr array of resolution ``level`` of an image group."""
    return open_array_at(img, level)[0]


def read_array(arr: Any, selection: Any, loc: Location) -> np.ndarray:
    """``arr[selection]`` checked against ``loc.limits``, decoded into an aligned array.

    The bytes the selection decodes to, the bytes of one chunk and the number of chunks
    it touches are checked before anything is read (:class:`ResourceLimitError`);
    decode failures are reported as corrupt chunks by key.
    """
    out_shape, dtype = _check_read(arr, selection, loc)
    with store_errors(loc.url):
        try:
            if out_shape is not None and not dtype.hasobject:
                from zarr.core.buffer.cpu import NDBuffer

                out = aligned_empty(out_shape, dtype)
                arr.get_basic_selection(selection, out=NDBuffer.from_numpy_array(out))
                return out
            return np.asarray(arr[selection])
        except (ZarrError, NotFoundError):
            raise
        except OSError:
            raise
        except Exception as exc:
            if type(exc).__module__.split(".")[0] in ("botocore", "aiobotocore", "aiohttp"):
                raise
            raise corrupt(loc, _bad_chunk_key(arr, selection), exc) from exc


def read_arrays(locs: Sequence[tuple[Location, int]]) -> list[np.ndarray | BaseException]:
    """Whole arrays at local ``locs`` ((location, zarr format) pairs), read together in
    one call to zarr's event loop; each item is the array or the error reading it.

    The same checks as :func:`read_array` come first; an item that fails here is best
    read again alone with :func:`read_array`, which names a corrupt chunk.
    """
    from zarr.api.asynchronous import open_array
    from zarr.core.sync import sync

    async def one(loc: Location, zarr_format: int) -> np.ndarray:
        with store_errors(loc.url):
            arr = await open_array(
                store=loc.zarr_store(), mode="r", zarr_format=3 if zarr_format == 3 else 2
            )
            out_shape, dtype = _check_read(arr, Ellipsis, loc)
            data = await arr.getitem(Ellipsis)
        if out_shape is None or dtype.hasobject:
            return np.asarray(data)
        out = aligned_empty(out_shape, dtype)
        out[...] = data
        return out

    async def every() -> list[Any]:
        return await asyncio.gather(*(one(loc, f) for loc, f in locs), return_exceptions=True)

    return list(sync(every()))


def _check_read(arr: Any, selection: Any, loc: Location) -> tuple[tuple[int, ...] | None, Any]:
    """(result shape or ``None``, dtype) of ``arr[selection]`` after the limit checks."""
    shape = tuple(int(s) for s in arr.shape)
    box = _selection_box(shape, selection)
    limits = loc.limits
    what = f"array {loc.url!r} selection"
    dtype = np.dtype(arr.dtype)
    limits.check_array(
        tuple(hi - lo for lo, hi in box), dtype, what=what, path=loc.url, backend=BACKEND
    )
    chunks = tuple(int(c) for c in arr.chunks)
    limits.check_array(
        chunks, dtype, what=f"one chunk of {loc.url!r}", path=loc.url, backend=BACKEND
    )
    touched = 1
    for (lo, hi), c in zip(box, chunks, strict=True):
        touched *= 0 if hi <= lo else (hi - 1) // c - lo // c + 1
    limits.check_chunks(touched, what=what, path=loc.url, backend=BACKEND)
    return _basic_shape(shape, selection), dtype


def _basic_shape(shape: tuple[int, ...], selection: Any) -> tuple[int, ...] | None:
    """Result shape of a selection of ints and unit-step slices (``None``: other kinds)."""
    if selection is Ellipsis:
        return shape
    sel = selection if isinstance(selection, tuple) else (selection,)
    if len(sel) > len(shape):
        return None
    out = []
    for i, size in enumerate(shape):
        item = sel[i] if i < len(sel) else slice(None)
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            if not -size <= int(item) < size:
                return None
            continue
        if isinstance(item, slice) and item.step in (None, 1):
            start, stop, _ = item.indices(size)
            out.append(max(0, stop - start))
            continue
        return None
    return tuple(out)


def _bad_chunk_key(arr: Any, selection: Any) -> str:
    """Find the first chunk in ``selection`` that fails to decode (error path only)."""
    import itertools

    chunks = arr.chunks
    idx = (
        np.ndindex(*arr.cdata_shape)
        if hasattr(arr, "cdata_shape")
        else itertools.product(*(range(-(-s // c)) for s, c in zip(arr.shape, chunks, strict=True)))
    )
    sel_box = _selection_box(arr.shape, selection)
    for coords in idx:
        box = tuple(
            slice(i * c, min((i + 1) * c, s))
            for i, c, s in zip(coords, chunks, arr.shape, strict=True)
        )
        if not all(b.start < hi and lo < b.stop for b, (lo, hi) in zip(box, sel_box, strict=True)):
            continue
        try:
            arr[box]
        except Exception:
            try:
                return str(arr.metadata.encode_chunk_key(coords))
            except AttributeError:
                return "/".join(str(c) for c in coords)
    return "?"


def _selection_box(shape: tuple[int, ...], selection: Any) -> list[tuple[int, int]]:
    sel = selection if isinstance(selection, tuple) else (selection,)
    out = []
    for i, s in enumerate(shape):
        item = sel[i] if i < len(sel) else slice(None)
        if isinstance(item, (int, np.integer)):
            index = int(item) + s if int(item) < 0 else int(item)
            out.append((index, index + 1))
        elif isinstance(item, slice):
            start, stop, _ = item.indices(s)
            out.append((start, stop))
        else:
            out.append((0, s))
    return out
