"""Built-in materialization functions and the plate-level table consolidation.

A materializer has the spec's signature ``fn(data, path, filemanager) -> str``.  ``path``
is the special output's planned virtual path (ending in ``.pkl``, the name it is staged
under in the well's memory backend); the materializer derives its file names from it
and writes through the ``filemanager`` on ``filemanager.materialization_backend``.

Tables (CSV + JSON summary) and positions (CSV) are always written to disk, since
neither is an array; label images follow the materialization backend: a TIFF on disk,
or an NGFF ``labels/`` image inside the well's OME-Zarr image on zarr.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from hcsflow import paths as vpaths
from hcsflow.errors import DataFormatError, MaterializationError
from hcsflow.storage import Backend, FileManager, neutralize_formulas

if TYPE_CHECKING:
    from hcsflow.pipeline._zarr_out import WellLabels

__all__ = [
    "IDENTIFIER_COLUMNS",
    "MaterializationFileManager",
    "materialize_table",
    "materialize_labels",
    "materialize_positions",
    "label_tiff_options",
    "to_dataframe",
    "base_path",
]


IDENTIFIER_COLUMNS: frozenset[str] = frozenset(
    {
        # plate coordinates (the columns hcsflow adds to tidy tables, and their aliases)
        "plate",
        "well",
        "row",
        "column",
        "site",
        "field",
        "channel",
        "wavelength",
        "z",
        "z_index",
        "t",
        "timepoint",
        "slice_index",
        # object identifiers
        "label",
        "id",
    }
)
"""Columns a table's JSON summary does not describe: a sum or mean of coordinates or of
object ids means nothing.  Matched ignoring case; any column ending in ``_id``
(``object_id``, ``tile_id``...) is an identifier too."""


def is_identifier_column(name: object) -> bool:
    """Whether the JSON summary of a table skips column ``name`` (see IDENTIFIER_COLUMNS)."""
    low = str(name).lower()
    return low in IDENTIFIER_COLUMNS or low.endswith("_id")


class MaterializationFileManager(FileManager):
    """The :class:`FileManager` handed to materializers: it also says where to write.

    ``materialization_backend`` is the backend ``VFSConfig.materialization_backend``
    selected for this step; ``well``, ``slice_coords`` (the plate coordinates of each
    plane of the stack the function received), ``zarr_store`` (the run's OME-Zarr plate)
    and ``zarr_config`` let materializers place files beside the well's images;
    ``storage_options`` are the fsspec options of that store when it is a URL.
    ``special_output`` is the key of the special output being materialized (``masks``;
    the planned ``path`` also names the well and group).  ``image_coords`` are the
    plate coordinates of the well's images in ``zarr_store``
    (what NGFF labels must fit), and ``labels`` the well's
    :class:`~hcsflow.pipeline._zarr_out.WellLabels`, which assembles the label planes of
    all groups and writes each label image once, after the well's materializers ran.
    ``tiff_config`` (a :class:`~hcsflow.storage.TiffConfig`) and ``metadata`` (the
    plate's :class:`~hcsflow.readers.ImageMetadata`: pixel size, channels) are what the
    run's image TIFFs are written with, so that TIFFs a materializer writes match them.
    """

    def __init__(
        self,
        registry: Any,
        *,
        materialization_backend: str,
        well: str,
        zarr_store: str | None = None,
        zarr_config: Any = None,
        slice_coords: tuple[Any, ...] = (),
        storage_options: dict[str, Any] | None = None,
        tiff_config: Any = None,
        metadata: Any = None,
        special_output: str | None = None,
        image_coords: tuple[Any, ...] = (),
        labels: WellLabels | None = None,
    ):
        super().__init__(registry)
        self.storage_options = storage_options
        self.materialization_backend = materialization_backend
        self.well = well
        self.zarr_store = zarr_store
        self.zarr_config = zarr_config
        self.slice_coords = slice_coords
        self.tiff_config = tiff_config
        self.metadata = metadata
        self.special_output = special_output
        self.image_coords = image_coords
        self.labels = labels


def base_path(path: str) -> str:
    """``path`` without a trailing ``.pkl`` (the staging suffix)."""
    return path[: -len(".pkl")] if path.endswith(".pkl") else path


def to_dataframe(data: Any, *, what: str = "table") -> Any:
    """Turn a DataFrame, a list of dicts or a dict of columns into a DataFrame."""
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        return data
    if isinstance(data, Mapping):
        return pd.DataFrame(dict(data))
    if (
        isinstance(data, Sequence)
        and not isinstance(data, str)
        and all(isinstance(r, Mapping) for r in data)
    ):
        return pd.DataFrame(list(data))
    raise DataFormatError(
        f"a {what} must be a pandas DataFrame, a list of dicts or a dict of columns, "
        f"got {type(data).__name__}"
    )


def _json_safe(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        f = float(value)
        return None if math.isnan(f) else f
    return value


def _ensure_parent(filemanager: FileManager, path: str, backend: str) -> None:
    filemanager.ensure_directory(vpaths.parent(vpaths.normalize_path(path)), backend)


def materialize_table(data: Any, path: str, filemanager: FileManager) -> str:
    """Write a table as ``<base>.csv`` (one tidy row per object or slice) and a JSON summary.

    The summary (``<base>.json``) holds the row count, the columns and, for every numeric
    column that is not a coordinate or an identifier (:data:`IDENTIFIER_COLUMNS`), its
    sum, mean, min and max; ``identifier_columns`` lists the columns left out.  Returns
    the CSV path.
    """
    df = to_dataframe(data)
    base = base_path(path)
    csv_path, json_path = f"{base}.csv", f"{base}.json"
    backend = Backend.DISK.value
    _ensure_parent(filemanager, csv_path, backend)
    skipped = [str(c) for c in df.columns if is_identifier_column(c)]
    num = df.select_dtypes(include="number")
    keep = [not is_identifier_column(c) for c in num.columns]
    names = [str(c) for c, k in zip(num.columns, keep, strict=True) if k]
    stats: dict[str, dict[str, Any]] = {}
    if names:
        # all columns at once, each reduced over contiguous memory (Fortran order) as
        # np.nansum/np.nanmean/np.nanmin/np.nanmax would reduce it alone: same values
        # (columns are dropped from the array, not the frame: .loc costs more than the
        # rest of the summary)
        values = np.array(num.to_numpy(dtype=np.float64)[:, keep], order="F")
        missing = np.isnan(values)
        counts = values.shape[0] - missing.sum(axis=0)
        values[missing] = 0.0
        sums = values.sum(axis=0)
        if values.shape[0]:
            values[missing] = np.nan  # fmin/fmax skip NaN; an all-NaN column stays NaN
            mins, maxs = np.fmin.reduce(values, axis=0), np.fmax.reduce(values, axis=0)
        for i, name in enumerate(names):
            has = bool(counts[i])
            stats[name] = {
                "sum": _json_safe(sums[i]),
                "mean": _json_safe(sums[i] / counts[i]) if has else None,
                "min": _json_safe(mins[i]) if has else None,
                "max": _json_safe(maxs[i]) if has else None,
            }
    summary = {
        "rows": len(df),
        "columns": [str(c) for c in df.columns],
        "identifier_columns": skipped,
        "numeric": stats,
    }
    filemanager.save(neutralize_formulas(df), csv_path, backend, overwrite=True)
    filemanager.save(json.dumps(summary, indent=2), json_path, backend, overwrite=True)
    return csv_path


#: materializers whose CSV cells are already neutralised (the plate table need not
#: scan them again)
NEUTRALIZED_CSV: frozenset[Any] = frozenset({materialize_table})


def materialize_positions(data: Any, path: str, filemanager: FileManager) -> str:
    """Write object positions as ``<base>_positions.csv`` (columns ``y``, ``x``[, ``z``]).

    ``data`` is an ``(N, 2)`` / ``(N, 3)`` array or list of ``(y, x[, z])`` tuples, or a
    list with one such array per slice (a ``slice_index`` column is added).
    """
    import pandas as pd

    frames = []
    if isinstance(data, pd.DataFrame):
        frames.append(data)
    elif isinstance(data, list) and data and all(np.ndim(d) == 2 for d in data):
        for i, pts in enumerate(data):
            frames.append(_points_frame(np.asarray(pts)).assign(slice_index=i))
    else:
        frames.append(_points_frame(np.asarray(data)))
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["y", "x"])
    csv_path = f"{base_path(path)}_positions.csv"
    backend = Backend.DISK.value
    _ensure_parent(filemanager, csv_path, backend)
    filemanager.save(df, csv_path, backend, overwrite=True)
    return csv_path


def _points_frame(points: np.ndarray) -> Any:
    import pandas as pd

    if points.size == 0:
        return pd.DataFrame({"y": np.zeros(0), "x": np.zeros(0)})
    if points.ndim != 2 or points.shape[1] not in (2, 3):
        raise DataFormatError(f"positions must have shape (N, 2) or (N, 3), got {points.shape}")
    cols = ["y", "x"] if points.shape[1] == 2 else ["y", "x", "z"]
    return pd.DataFrame(points, columns=cols)


def materialize_labels(data: Any, path: str, filemanager: FileManager) -> str:
    """Write a label / mask stack ``[Z, Y, X]`` (one plane per image of the group, or one).

    On disk: ``<base>.tif`` (uint8 for masks, uint16/uint32 for labels), encoded like
    the run's image TIFFs (the file manager's ``tiff_config``: lossless compression by
    default; an OME-TIFF carrying the plate's pixel size, so the labels overlay their
    images in Fiji or napari).  On zarr: NGFF label images in the ``labels/`` group of
    each field image of the well, one per channel the labels were computed from, named
    after the special output key (``masks``, or ``masks_w1``, ``masks_w2``... when the
    image has several channels) and shaped like the image with one channel: each plane
    goes to its timepoint and z plane, the planes of all of the well's groups in one
    label image (assembled by the file manager's ``labels``, written once per well).
    Returns the TIFF's path, or the path of the label image of the first plane.
    """
    from hcsflow.memory import to_numpy

    arr = np.asarray(to_numpy(data))
    if arr.ndim == 2:
        arr = arr[np.newaxis]
    if arr.ndim != 3:
        raise DataFormatError(f"labels must be a [Z, Y, X] stack, got shape {arr.shape}", path=path)
    arr = _label_dtype(arr)
    backend = getattr(filemanager, "materialization_backend", Backend.DISK.value)
    if backend == Backend.ZARR.value:
        return _labels_to_zarr(arr, path, filemanager)
    tif_path = f"{base_path(path)}.tif"
    _ensure_parent(filemanager, tif_path, Backend.DISK.value)
    options = label_tiff_options(
        arr,
        vpaths.name(base_path(path)),
        tiff_config=getattr(filemanager, "tiff_config", None),
        metadata=getattr(filemanager, "metadata", None),
        slice_coords=getattr(filemanager, "slice_coords", ()),
        well=getattr(filemanager, "well", None),
    )
    filemanager.save(arr, tif_path, Backend.DISK.value, overwrite=True, **options)
    return tif_path


def label_tiff_options(
    labels: np.ndarray,
    name: str,
    *,
    tiff_config: Any = None,
    metadata: Any = None,
    slice_coords: Sequence[Any] = (),
    well: str | None = None,
) -> dict[str, Any]:
    """TIFF save options for the ``[N, Y, X]`` label stack ``labels`` named ``name``.

    Compression follows ``tiff_config`` (every ``TiffConfig`` compression is lossless,
    so labels stay exact integers).  With ``tiff_config.ome`` the file is an OME-TIFF
    with the pixel size of ``metadata`` and one channel named after the labels; its
    stack axis is ``Z`` (with the z step) when the planes differ only in z, ``T`` when
    only in time, and tifffile's ``Q`` (stored as an OME modulo along T of type "other")
    when they are sites or mix components, which OME has no axis for.
    """
    from hcsflow.readers import ImageMetadata
    from hcsflow.storage import TiffConfig

    cfg = tiff_config if isinstance(tiff_config, TiffConfig) else TiffConfig()
    options = cfg.save_options(labels.dtype)
    if not cfg.ome:
        return options
    meta = metadata if isinstance(metadata, ImageMetadata) else ImageMetadata()
    axes = _label_axes(labels.shape[0], slice_coords)
    # the stack's planes are the label image's own, not one of the plate's channels
    ome = meta.ome_tiff(None, axes, name=name)
    label = name[len(well) + 1 :] if well and name.startswith(f"{well}_") else name
    ome["Channel"] = {"Name": [label]}
    options["ome"] = ome
    return options


def _label_axes(n: int, slice_coords: Sequence[Any]) -> str:
    """``ZYX``, ``TYX`` or ``QYX``: what the first axis of an ``n``-plane stack is."""
    if n == 1:
        return "ZYX"
    if len(slice_coords) != n:
        return "QYX"  # planes not described: no claim about what they are
    varying = {
        attr
        for attr in ("well", "field", "channel", "z", "t")
        if len({getattr(c, attr) for c in slice_coords}) > 1
    }
    if varying == {"z"}:
        return "ZYX"
    if varying == {"t"}:
        return "TYX"
    return "QYX"


def _label_dtype(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataFormatError(f"labels must be integer or boolean, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise DataFormatError("labels must be non-negative")
    top = int(arr.max()) if arr.size else 0
    return arr.astype(np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32)


def _labels_to_zarr(arr: np.ndarray, path: str, filemanager: FileManager) -> str:
    from hcsflow.pipeline._zarr_out import WellLabels

    store = getattr(filemanager, "zarr_store", None)
    well = getattr(filemanager, "well", None)
    coords = getattr(filemanager, "slice_coords", ())
    if store is None or well is None or not coords:
        raise MaterializationError(
            f"cannot write labels for {path!r} to zarr: the file manager does not name the "
            f"well's plate store, well and plane coordinates"
        )
    key = getattr(filemanager, "special_output", None) or _output_key(path, well)
    collector = getattr(filemanager, "labels", None)
    # without the well's collector (a direct call), this group's labels are the whole
    # label image: written now, the planes of other groups left as background
    own = not isinstance(collector, WellLabels)
    labels = collector if isinstance(collector, WellLabels) else WellLabels()
    keys = labels.add(
        store,
        well,
        key,
        arr,
        coords,
        getattr(filemanager, "zarr_config", None),
        image_coords=getattr(filemanager, "image_coords", ()),
        storage_options=getattr(filemanager, "storage_options", None),
        source=vpaths.parent(base_path(path)),
    )
    if own:
        labels.write()
    # a store on object storage is a URL, which virtual-path joining would mangle
    return f"{store.rstrip('/')}/{keys[0]}" if "://" in store else vpaths.join(store, keys[0])


def _output_key(path: str, well: str) -> str:
    """The label name a path gives when no special output key is known: its file name
    without the ``<well>_`` prefix."""
    fname = vpaths.name(base_path(path))
    return fname[len(well) + 1 :] if fname.startswith(f"{well}_") else fname
