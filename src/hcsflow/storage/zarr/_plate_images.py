"""Plate images of the zarr backend: ``save_batch(..., chunk_name=, layout=)`` and their reads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hcsflow import paths as vpaths
from hcsflow.errors import (
    AlreadyExistsError,
    BatchError,
    CorruptStoreError,
    DataFormatError,
    HcsflowError,
    InvalidPathError,
    PlateLayoutError,
    StorageError,
    ZarrError,
)
from hcsflow.storage._base import Backend, _check_batch, batch_item_error
from hcsflow.storage._batch import WINDOW_ITEMS, batch_window
from hcsflow.storage._codecs import (
    CodecRefusal,
    to_host_array,
)
from hcsflow.storage.plate import ImageCoordinates, PlateLayout, parse_well
from hcsflow.storage.zarr import _arrays, _locate, _ome, _wells
from hcsflow.storage.zarr._config import ZarrConfig
from hcsflow.storage.zarr._files import _size_of, _ZarrFiles, advance, drive
from hcsflow.storage.zarr._io import Location
from hcsflow.storage.zarr._listing import touched
from hcsflow.storage.zarr._localfs import LocalFS
from hcsflow.storage.zarr._nodes import _BATCH_OPTIONS


class _ZarrPlateImages(_ZarrFiles):
    """Batches, and plate images pointing into OME-Zarr wells."""

    # ------------------------------------------------------------------ plates

    def _plate_store(self, real: str) -> str:
        """The plate store of a plate-image path: nearest ``*.zarr`` ancestor, else parent."""
        parts = real.strip("/").split("/")[:-1]
        for i in range(len(parts), 0, -1):
            if parts[i - 1].endswith(".zarr"):
                return "/" + "/".join(parts[:i])
        return vpaths.parent(real)

    def _plate_pointer(
        self, real: str, info: dict[str, Any]
    ) -> tuple[int, str, int, tuple[int, ...]]:
        """(levels up to the store, well ``"B/3"``, field, index) of a plate image, checked."""
        up, well, field, index = (info.get(k) for k in ("up", "well", "field", "index"))
        depth = real.strip("/").count("/")
        ok = (
            isinstance(up, int)
            and 0 <= up <= depth
            and isinstance(field, int)
            and field >= 0
            and isinstance(well, str)
            and _ome.unsafe_path(well, parts=2) is None
            and well.split("/")[1].isdigit()
            and isinstance(index, list)
            and all(isinstance(x, int) and x >= 0 for x in index)
        )
        if not ok:
            raise CorruptStoreError(
                f"malformed plate-image record {info!r}: store {self._base.url!r}, key "
                f"{real.lstrip('/')!r} ('zarr.json')",
                path=self._loc(real).url,
                backend=self.name,
            )
        assert isinstance(up, int) and isinstance(well, str) and isinstance(field, int)
        assert isinstance(index, list)
        return up, well, field, tuple(index)

    def _read_plate_images(self, items: list[tuple[str, dict[str, Any]]]) -> list[np.ndarray]:
        """Planes for plate-image pointers; each chunk is decoded at most once."""
        groups: dict[tuple[str, str, int], list[int]] = {}
        coords: list[tuple[int, ...]] = []
        for i, (real, info) in enumerate(items):
            up, well, field, index = self._plate_pointer(real, info)
            store = vpaths.parent(real)
            for _ in range(up):
                store = vpaths.parent(store)
            key = (store, well, field)
            groups.setdefault(key, []).append(i)
            coords.append(index)
        out: list[np.ndarray | None] = [None] * len(items)
        for (store, well, field), idxs in groups.items():
            plate_loc = self._loc(store)
            row, col = well.split("/")
            wname = f"{row}{int(col):02d}"
            img, _, _ = _locate.image_loc(plate_loc, wname, field)
            arr, img = _arrays.open_array_at(img, 0)
            lead = arr.ndim - 2
            for i in idxs:
                if len(coords[i]) != lead:
                    raise ZarrError(
                        f"plate image index {coords[i]} does not fit the array of "
                        f"shape {arr.shape}: store {plate_loc.url!r}, key "
                        f"{well}",
                        path=items[i][0],
                        backend=self.name,
                    )
            chunk_lead = tuple(arr.chunks[:lead])
            if all(c == 1 for c in chunk_lead):
                for i in idxs:
                    out[i] = _arrays.read_array(arr, coords[i], img)
            else:
                lo = [min(coords[i][d] for i in idxs) for d in range(lead)]
                hi = [max(coords[i][d] for i in idxs) + 1 for d in range(lead)]
                box = _arrays.read_array(
                    arr, tuple(slice(a, b) for a, b in zip(lo, hi, strict=True)), img
                )
                for i in idxs:
                    out[i] = box[tuple(c - a for c, a in zip(coords[i], lo, strict=True))]
        return [o for o in out if o is not None]

    def _save_plate(
        self,
        data_list: Sequence[Any],
        norm: list[str],
        overwrite: bool,
        chunk_name: str | None,
        cfg: ZarrConfig,
        layout: Any,
    ) -> None:
        if layout is None:
            raise PlateLayoutError(
                "writing a plate needs layout= (a PlateLayout or a mapping "
                "from path to ImageCoordinates)",
                path=norm[0],
                backend=self.name,
            )
        coords: list[ImageCoordinates] = []
        for p in norm:
            c = self._coords_of(layout, p)
            coords.append(c)
        stores = {self._plate_store(p) for p in norm}
        if len(stores) != 1:
            raise PlateLayoutError(
                f"one batch writes one plate store, got {sorted(stores)}",
                path=norm[0],
                backend=self.name,
            )
        store = stores.pop()
        plate_loc = self._loc(store)
        want = None
        if chunk_name is not None:
            want = _chunk_well(chunk_name, plate_loc.url)
        by_well: dict[str, list[int]] = {}
        for i, c in enumerate(coords):
            if want is not None and c.well != want:
                raise PlateLayoutError(
                    f"image is in well {c.well} but chunk_name names well {want}: store "
                    f"{plate_loc.url!r}, key {norm[i]!r}",
                    path=norm[i],
                    backend=self.name,
                )
            by_well.setdefault(c.well, []).append(i)
        # plan everything (and refuse bad input) before the first byte is written
        plans = {}
        for well, idxs in by_well.items():
            plans[well] = _assemble_well(
                plate_loc,
                well,
                [data_list[i] for i in idxs],
                [coords[i] for i in idxs],
                [norm[i] for i in idxs],
            )
        # plate mode creates the store and the directories of the image entries in it
        for parent in sorted({vpaths.parent(p) for p in norm}):
            self.ensure_directory(parent)
        targets = []
        for p in norm:
            real, _ = self._write_target(p, overwrite)
            rel = real[len(store) :].lstrip("/")
            first = rel.split("/", 1)[0]
            if len(rel.split("/")) == 1 and _is_row_name(first):
                raise PlateLayoutError(
                    f"image path collides with a plate row group: store {plate_loc.url!r}, "
                    f"key {rel!r}",
                    path=p,
                    backend=self.name,
                )
            targets.append(real)
        for well in plans:
            if not overwrite and _locate.read_well_meta(plate_loc, parse_well(well)) is not None:
                raise AlreadyExistsError(
                    f"well {well} already exists; pass overwrite=True to replace it: store "
                    f"{plate_loc.url!r}",
                    path=plate_loc.url,
                    backend=self.name,
                )
        for well, fields in plans.items():
            _wells.write_well(plate_loc, well, fields, cfg, overwrite=overwrite)
        for i, real in enumerate(targets):
            c = coords[i]
            pos = parse_well(c.well)
            has_t = plans[c.well][0].ndim == 5
            index = [c.t, c.channel, c.z] if has_t else [c.channel, c.z]
            up = real[len(store) :].strip("/").count("/")
            info = {
                "kind": "plate-image",
                "up": up,
                "well": f"{pos.row_name}/{pos.column + 1}",
                "field": c.field,
                "index": index,
            }
            loc = self._loc(real)
            old = self._data_children(real)
            loc.write("zarr.json", _ome.group_document({"hcsflow": info}))
            touched(loc.fs, loc.path)
            for child in old:
                loc.child(child).remove()

    def _coords_of(self, layout: Any, vp: str) -> ImageCoordinates:
        if isinstance(layout, Mapping):
            c = layout.get(vp)
            if c is None:
                for key, value in layout.items():
                    try:
                        if self.norm(key) == vp:
                            c = value
                            break
                    except InvalidPathError:
                        continue
        elif isinstance(layout, PlateLayout):
            c = layout.parse(vp)
        else:
            raise PlateLayoutError(
                f"layout must be a PlateLayout or a mapping, got {type(layout).__name__}",
                path=vp,
                backend=self.name,
            )
        if not isinstance(c, ImageCoordinates):
            raise PlateLayoutError(
                f"the layout gave no ImageCoordinates for this path (got {c!r})",
                path=vp,
                backend=self.name,
            )
        return c

    # ------------------------------------------------------------------ batches

    def save_batch(
        self,
        data_list: Sequence[Any],
        paths: Sequence[vpaths.PathLike],
        *,
        overwrite: bool = False,
        **options: Any,
    ) -> None:
        """Save many items; with ``chunk_name=``/``layout=`` write them as OME-Zarr wells.

        Plain batches check every target before writing anything.  Plate batches
        (``chunk_name=<well>``, ``layout=<PlateLayout or {path: ImageCoordinates}>``,
        ``zarr_config=``) place each 2-D image by its coordinates, write each well of
        the batch as one OME-Zarr well of the plate store the paths live in (their
        nearest ``*.zarr`` ancestor, else their parent directory), and leave a small
        plate-image entry at each path so ``load``/``load_batch`` of the same paths
        return the same planes.
        """
        bad = set(options) - _BATCH_OPTIONS
        if bad:
            raise DataFormatError(
                f"save_batch does not take option(s) {sorted(bad)}",
                path=str(paths[0]) if paths else None,
                backend=self.name,
            )
        norm = _check_batch(self, data_list, paths)
        if not norm:
            return
        cfg = options.get("zarr_config") or self.config
        if options.get("chunk_name") is not None or options.get("layout") is not None:
            self._save_plate(
                data_list, norm, overwrite, options.get("chunk_name"), cfg, options.get("layout")
            )
            return
        encoded = []
        for index, (item, p) in enumerate(zip(data_list, norm, strict=True)):
            try:
                arr, fmt, c = self._encode(item, p, {"zarr_config": cfg})
                real, kind = self._write_target(p, overwrite)
            except HcsflowError as exc:
                raise batch_item_error(
                    index, "cannot be written", exc, path=p, backend=self.name
                ) from exc
            encoded.append((p, real, kind is None, arr, fmt, c, _size_of(item, arr)))
        self._write_files(encoded, overwrite)

    def _write_files(
        self,
        encoded: list[tuple[str, str, bool, np.ndarray, str, ZarrConfig, int | None]],
        overwrite: bool,
    ) -> None:
        """Write checked batch items (path, real path, new, array, format, config, size).

        The items are written window by window (:func:`batch_window`): each item of a
        window is prepared in order, the window's data arrays are written together in
        one call to zarr's event loop (:func:`~hcsflow.storage.zarr._arrays.create_arrays`),
        then the items are published in order.  As with a loop of ``save``, the items
        before a failing one are written and none after it: the lowest failing index
        is raised, and what the later items of its window built is removed.
        """
        start = 0
        while start < len(encoded):
            count = batch_window([item[3] for item in encoded[start:]])
            window = encoded[start : start + count]
            steps: list[tuple[int, Any, Any]] = []  # (index, steps, array request)
            failure: tuple[int, BaseException] | None = None
            try:
                for offset, (p, real, new, arr, fmt, c, size) in enumerate(window):
                    index = start + offset
                    gen = self._file_steps(
                        real, arr, fmt, c, size, new and not overwrite, not new, p
                    )
                    try:
                        request = next(gen, None)
                    except BaseException as exc:
                        failure = (index, exc)
                        break
                    if request is not None:
                        steps.append((index, gen, request))
                errors = _arrays.create_arrays([r for _, _, r in steps]) if steps else []
                while steps:
                    index, gen, _ = steps.pop(0)
                    error = errors.pop(0)
                    try:
                        if error is not None:
                            advance(gen, error)  # cleans up, then raises the error
                            raise error
                        drive(gen, advance(gen, None))
                    except BaseException as exc:
                        failure = (index, exc)
                        break
            finally:
                for _, gen, _ in steps:
                    gen.close()  # items after a failure: remove what they built
            if failure is not None:
                index, cause = failure
                if isinstance(cause, HcsflowError):
                    raise batch_item_error(
                        index,
                        "could not be written",
                        cause,
                        path=encoded[index][0],
                        backend=self.name,
                    ) from cause
                raise cause
            start += count

    def load_batch(self, paths: Sequence[vpaths.PathLike], **options: Any) -> list[Any]:
        """Load every path in order; plate planes of one field decode each chunk once.

        Array files of a local store are read window by window, each window's arrays
        together in one call to zarr's event loop (as :meth:`save_batch` writes them).
        As with a loop of ``load``, the lowest failing index is raised.
        """
        out: list[Any] = [None] * len(paths)
        pointers: list[tuple[int, str, dict[str, Any]]] = []
        arrays: list[tuple[int, str, str, dict[str, Any]]] = []  # read together
        failure: tuple[int, BaseException] | None = None
        for index, path in enumerate(paths):
            try:
                vp = self.norm(path)
                real, kind, info = self._resolve_file(vp)
                if info is not None and info.get("kind") == "plate-image":
                    pointers.append((index, real, info))
                elif (
                    not options
                    and info is not None
                    and info.get("kind") == "file"
                    and info.get("format") == "array"
                    and isinstance(self._base.fs, LocalFS)
                ):
                    arrays.append((index, vp, real, info))
                else:
                    out[index] = self._load_file(vp, options, (real, kind, info))
            except StorageError as exc:
                failure = (index, exc)
                break
        for start in range(0, len(arrays), WINDOW_ITEMS):
            window = arrays[start : start + WINDOW_ITEMS]
            if failure is not None and window[0][0] > failure[0]:
                break
            read = _arrays.read_arrays(
                [(self._loc(real).child(str(info["data"])), 3) for _, _, real, info in window]
            )
            for (index, vp, real, info), got in zip(window, read, strict=True):
                if failure is not None and index > failure[0]:
                    break
                try:
                    if isinstance(got, BaseException) or self._node(real)[1] != info:
                        # failed, or replaced meanwhile: read alone (which retries on
                        # a replacement and names what is wrong)
                        got = self._load_file(vp, options)
                except StorageError as exc:
                    failure = (index, exc)
                    break
                out[index] = got
        if failure is not None:
            index, cause = failure
            where = getattr(cause, "path", None) or str(paths[index])
            raise batch_item_error(
                index, "could not be loaded", cause, path=where, backend=self.name
            ) from cause
        if pointers:
            try:
                planes = self._read_plate_images([(real, info) for _, real, info in pointers])
            except StorageError as exc:
                raise BatchError(
                    "a plate image of the batch could not be loaded",
                    index=pointers[0][0],
                    path=str(paths[pointers[0][0]]),
                    backend=self.name,
                ) from exc
            for (index, _, _), plane in zip(pointers, planes, strict=True):
                out[index] = plane
        return out


def _is_row_name(name: str) -> bool:
    return name.isalpha() and 1 <= len(name) <= 2 and name.isupper()


def _chunk_well(chunk_name: str, url: str) -> str:
    """The well a ``chunk_name`` names: ``"A01"``, ``"A1"`` or ``"well_A01"``."""
    for candidate in (chunk_name, chunk_name.rsplit("_", 1)[-1]):
        try:
            return parse_well(candidate).name
        except PlateLayoutError:
            continue
    raise PlateLayoutError(
        f"chunk_name {chunk_name!r} does not name a plate position: store {url!r}",
        path=url,
        backend=Backend.ZARR.value,
    )


def _assemble_well(
    plate: Location, well: str, images: list[Any], coords: list[ImageCoordinates], paths: list[str]
) -> dict[int, np.ndarray]:
    """Stack one well's 2-D planes into ``{field: (t?, c, z, y, x)}`` or refuse the input."""
    key = f"{parse_well(well).row_name}/{parse_well(well).column + 1}"

    def err(problem: str, path: str | None = None) -> PlateLayoutError:
        where = f", image {path!r}" if path else ""
        return PlateLayoutError(
            f"{problem}: store {plate.url!r}, key {key!r}{where}",
            path=path or plate.url,
            backend=Backend.ZARR.value,
        )

    arrays = []
    for img, p in zip(images, paths, strict=True):
        try:
            arr = to_host_array(img)
        except CodecRefusal as exc:
            raise err(str(exc), p) from exc
        if arr.ndim != 2:
            raise err(f"plate images are 2-D planes, got shape {arr.shape}", p)
        arrays.append(arr)
    first = arrays[0]
    for arr, p in zip(arrays, paths, strict=True):
        if arr.shape != first.shape or arr.dtype != first.dtype:
            raise err(
                f"mixed shapes in one well: {arr.shape} {arr.dtype} vs "
                f"{first.shape} {first.dtype} of {paths[0]!r}",
                p,
            )
    seen: dict[tuple[int, int, int, int], str] = {}
    for c, p in zip(coords, paths, strict=True):
        k = (c.field, c.t, c.channel, c.z)
        if k in seen:
            raise err(
                f"coordinates collide: field {c.field}, t {c.t}, channel {c.channel}, "
                f"z {c.z} given by both {seen[k]!r} and {p!r}",
                p,
            )
        seen[k] = p
    n_f = max(c.field for c in coords) + 1
    n_t = max(c.t for c in coords) + 1
    n_c = max(c.channel for c in coords) + 1
    n_z = max(c.z for c in coords) + 1
    missing = [
        (f, t, ch, z)
        for f in range(n_f)
        for t in range(n_t)
        for ch in range(n_c)
        for z in range(n_z)
        if (f, t, ch, z) not in seen
    ]
    if missing:
        shown = ", ".join(f"(field {f}, t {t}, channel {ch}, z {z})" for f, t, ch, z in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise err(
            f"coordinates leave holes: {shown}{more} missing from a "
            f"{n_f} field x {n_t} t x {n_c} channel x {n_z} z well"
        )
    fields = {}
    for f in range(n_f):
        stack = np.empty((n_t, n_c, n_z) + first.shape, dtype=first.dtype)
        fields[f] = stack
    for c, arr in zip(coords, arrays, strict=True):
        fields[c.field][c.t, c.channel, c.z] = arr
    if n_t == 1:
        return {f: a[0] for f, a in fields.items()}
    return fields
