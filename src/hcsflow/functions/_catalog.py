"""Every image function of scipy.ndimage, scikit-image and pyclesperanto, by name.

``FunctionStep(func="skimage.filters.sato")``, ``"cle.top_hat_box"``,
``"ndi.gaussian_filter"`` (or ``"scipy.ndimage.gaussian_filter"``) and unambiguous short
names (``"sato"``) resolve here when no built-in function has the name.  The index is
built by introspecting the libraries the first time a name is looked up (never at
``import hcsflow``) and cached for the process; a qualified name imports only its own
module.

Each function is wrapped as a :class:`LibraryFunction`: it receives the step's
``[Z, Y, X]`` stack in the library's memory type (numpy, CuPy or pyclesperanto), runs on
each plane (``slice_by_slice=True``, the default, because a step's Z axis usually stacks
sites or channels) or on the whole stack (``slice_by_slice=False``), and returns a
``[Z, Y, X]`` stack.  Threshold functions that return a value (``threshold_otsu``...)
become masks ``image > threshold``; ``threshold_multiotsu`` gives class indices.  A
curated list (``EXCLUDED``) names the public helpers that are not image-to-image
functions (footprint constructors, measurements, coordinate lists, plotting), with the
reason; see docs/functions.md.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hcsflow.errors import ConfigurationError, ShapeError, UnknownFunctionError

__all__ = [
    "Library",
    "LIBRARIES",
    "EXCLUDED",
    "CatalogEntry",
    "LibraryFunction",
    "catalog",
    "lookup",
    "excluded_functions",
]


@dataclass(frozen=True)
class Library:
    """A module whose image functions are addressable as ``<key>.<name>``."""

    key: str
    module: str
    memory_type: str
    aliases: tuple[str, ...] = ()
    # the CuPy module offering the same functions (chosen by implementation_preference)
    gpu_twin: str | None = None
    # the name whose exclusion list applies (a GPU twin shares its CPU original's)
    excluded_as: str | None = None


_SKIMAGE: tuple[str, ...] = (
    "filters",
    "morphology",
    "segmentation",
    "measure",
    "feature",
    "exposure",
    "restoration",
    "transform",
)

LIBRARIES: tuple[Library, ...] = (
    Library("scipy.ndimage", "scipy.ndimage", "numpy", ("ndi",), "cupyx.scipy.ndimage"),
    *(Library(f"skimage.{m}", f"skimage.{m}", "numpy", (), f"cucim.skimage.{m}") for m in _SKIMAGE),
    Library("pyclesperanto", "pyclesperanto", "pyclesperanto", ("cle",)),
    Library("cupyx.scipy.ndimage", "cupyx.scipy.ndimage", "cupy", excluded_as="scipy.ndimage"),
    *(
        Library(f"cucim.skimage.{m}", f"cucim.skimage.{m}", "cupy", excluded_as=f"skimage.{m}")
        for m in _SKIMAGE
    ),
)

_MEASURE = "returns measurements, not an image"
_COORDS = "returns coordinates, shapes or lists, not an image"
_FOOTPRINT = "builds a footprint or kernel; pass its result as an argument"
_SEVERAL = "returns several arrays"
_SHAPE = "takes a shape or other arguments, not an image"
_STACK = "returns a stack per plane (features, channels or parameter space), not an image"

EXCLUDED: dict[str, dict[str, str]] = {
    "scipy.ndimage": {
        **dict.fromkeys(
            (
                "center_of_mass",
                "extrema",
                "histogram",
                "labeled_comprehension",
                "maximum",
                "maximum_position",
                "mean",
                "median",
                "minimum",
                "minimum_position",
                "standard_deviation",
                "sum",
                "sum_labels",
                "variance",
                "value_indices",
            ),
            _MEASURE,
        ),
        "find_objects": _COORDS,
        "generate_binary_structure": _FOOTPRINT,
        "iterate_structure": _FOOTPRINT,
        "map_coordinates": "samples an image at given coordinates; the output has their shape",
    },
    "skimage.filters": {
        "try_all_threshold": "plots a figure",
        "gabor_kernel": _FOOTPRINT,
        "window": _SHAPE,
        "gabor": _SEVERAL + " (real and imaginary responses)",
        "rank_order": _SEVERAL,
    },
    "skimage.morphology": {
        **dict.fromkeys(
            (
                "ball",
                "diamond",
                "disk",
                "ellipse",
                "footprint_from_sequence",
                "footprint_rectangle",
                "mirror_footprint",
                "octagon",
                "octahedron",
                "pad_footprint",
                "star",
            ),
            _FOOTPRINT,
        ),
        "max_tree": _SEVERAL + " (a parent image and a traversal order)",
    },
    "skimage.segmentation": {
        "active_contour": _COORDS,
        "checkerboard_level_set": _SHAPE,
        "disk_level_set": _SHAPE,
        "mark_boundaries": "returns an RGB image",
    },
    "skimage.measure": {
        **dict.fromkeys(
            (
                "blur_effect",
                "centroid",
                "euler_number",
                "inertia_tensor",
                "inertia_tensor_eigvals",
                "intersection_coeff",
                "manders_coloc_coeff",
                "manders_overlap_coeff",
                "mesh_surface_area",
                "moments",
                "moments_central",
                "moments_coords",
                "moments_coords_central",
                "moments_hu",
                "moments_normalized",
                "pearson_corr_coeff",
                "perimeter",
                "perimeter_crofton",
                "regionprops",
                "regionprops_table",
                "shannon_entropy",
            ),
            _MEASURE + " (use measure_objects for tables)",
        ),
        **dict.fromkeys(
            (
                "approximate_polygon",
                "find_contours",
                "grid_points_in_poly",
                "marching_cubes",
                "points_in_poly",
                "profile_line",
                "ransac",
                "subdivide_polygon",
            ),
            _COORDS,
        ),
    },
    "skimage.feature": {
        **dict.fromkeys(
            (
                "blob_dog",
                "blob_doh",
                "blob_log",
                "corner_orientations",
                "corner_peaks",
                "corner_subpix",
                "haar_like_feature_coord",
                "match_descriptors",
                "peak_local_max",
            ),
            _COORDS + " (use detect_spots for spot tables)",
        ),
        **dict.fromkeys(
            (
                "daisy",
                "fisher_vector",
                "graycomatrix",
                "graycoprops",
                "haar_like_feature",
                "hog",
                "learn_gmm",
                "multiblock_lbp",
            ),
            "returns descriptors or feature vectors, not an image",
        ),
        **dict.fromkeys(("hessian_matrix", "hessian_matrix_eigvals", "structure_tensor"), _SEVERAL),
        "structure_tensor_eigenvalues": "takes tensor components, not an image",
        "corner_foerstner": _SEVERAL,
        "multiscale_basic_features": _STACK,
        "draw_haar_like_feature": "draws on an RGB image",
        "draw_multiblock_lbp": "draws on an RGB image",
        "plot_matched_features": "plots a figure",
    },
    "skimage.exposure": {
        "cumulative_distribution": _MEASURE,
        "histogram": _MEASURE,
        "is_low_contrast": _MEASURE,
    },
    "skimage.restoration": {
        "ball_kernel": _FOOTPRINT,
        "ellipsoid_kernel": _FOOTPRINT,
        "calibrate_denoiser": "returns a denoising function",
        "estimate_sigma": _MEASURE,
        "unsupervised_wiener": _SEVERAL,
    },
    "skimage.transform": {
        **dict.fromkeys(
            (
                "estimate_transform",
                "hough_circle_peaks",
                "hough_ellipse",
                "hough_line",
                "hough_line_peaks",
                "matrix_transform",
                "order_angles_golden_ratio",
                "probabilistic_hough_line",
                "warp_coords",
            ),
            _COORDS,
        ),
        "hough_circle": _STACK,
        "integrate": _MEASURE,
        "pyramid_gaussian": "returns a generator of images of different sizes",
        "pyramid_laplacian": "returns a generator of images of different sizes",
    },
}
"""Public functions that are not image-to-image, per library, with the reason."""

# functions whose first output, of several, is the image
_FIRST_OF_TUPLE = {"scipy.ndimage.label", "skimage.segmentation.relabel_sequential"}
_THRESHOLD_IMAGE = {"threshold_local", "threshold_niblack", "threshold_sauvola"}
# pyclesperanto helpers with image annotations that are not per-image operations
_CLE_EXCLUDED = {"push", "pull", "create", "create_like"}


@dataclass(frozen=True)
class CatalogEntry:
    """One addressable library function."""

    name: str
    library: Library
    attr: str
    kind: str
    plane_default: bool

    @property
    def memory_type(self) -> str:
        """The memory type the function runs on."""
        return self.library.memory_type

    def function(self) -> LibraryFunction:
        """The pipeline-ready wrapper."""
        return LibraryFunction(self.name)


def _kind(library: Library, attr: str) -> str:
    base = library.excluded_as or library.key
    if f"{base}.{attr}" in _FIRST_OF_TUPLE:
        return "first"
    if base == "skimage.filters" and attr.startswith("threshold_"):
        if attr in _THRESHOLD_IMAGE:
            return "threshold_image"
        if attr == "threshold_multiotsu":
            return "classes"
        return "threshold"
    return "image"


def _plane_default(library: Library, attr: str) -> bool:
    # projections reduce the stack: they need all of it
    return not (library.memory_type == "pyclesperanto" and attr.endswith("_projection"))


def _available(library: Library) -> bool:
    top = library.module.split(".")[0]
    if importlib.util.find_spec(top) is None:
        return False
    if library.memory_type == "cupy":
        return importlib.util.find_spec("cupy") is not None
    return True


def _public_callables(module: Any) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in dir(module) if not n.startswith("_")]
    out = []
    for n in names:
        obj = getattr(module, n, None)
        if obj is None or not callable(obj) or inspect.isclass(obj) or inspect.ismodule(obj):
            continue
        out.append(str(n))
    return sorted(set(out))


def _cle_is_image_function(func: Any) -> bool:
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return False
    params = list(sig.parameters.values())
    return (
        bool(params)
        and "Array" in str(params[0].annotation)
        and ("Array" in str(sig.return_annotation))
    )


class _Index:
    """The lazily built, cached map of every addressable library function."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._modules: dict[str, tuple[dict[str, CatalogEntry], dict[str, str]]] = {}
        self._complete = False

    def library_entries(self, library: Library) -> tuple[dict[str, CatalogEntry], dict[str, str]]:
        """``({attr: entry}, {attr: reason excluded})`` for one library (imports it)."""
        with self._lock:
            cached = self._modules.get(library.key)
            if cached is not None:
                return cached
            module = importlib.import_module(library.module)
            entries: dict[str, CatalogEntry] = {}
            excluded: dict[str, str] = {}
            rules = EXCLUDED.get(library.excluded_as or library.key, {})
            for attr in _public_callables(module):
                if attr in rules:
                    excluded[attr] = rules[attr]
                    continue
                if library.memory_type == "pyclesperanto" and (
                    attr in _CLE_EXCLUDED or not _cle_is_image_function(getattr(module, attr))
                ):
                    excluded[attr] = "not an image-to-image function (by its signature)"
                    continue
                entries[attr] = CatalogEntry(
                    name=f"{library.key}.{attr}",
                    library=library,
                    attr=attr,
                    kind=_kind(library, attr),
                    plane_default=_plane_default(library, attr),
                )
            self._modules[library.key] = (entries, excluded)
            return entries, excluded

    def all_entries(self) -> list[CatalogEntry]:
        """Every entry of every installed library (imports them all once)."""
        out: list[CatalogEntry] = []
        for library in LIBRARIES:
            if _available(library):
                out.extend(self.library_entries(library)[0].values())
        return out

    def short_names(self) -> dict[str, list[CatalogEntry]]:
        """``{short name: entries}`` over every installed library."""
        table: dict[str, list[CatalogEntry]] = {}
        for entry in self.all_entries():
            table.setdefault(entry.attr, []).append(entry)
        return table


_INDEX = _Index()


def _split_qualified(name: str) -> tuple[Library, str] | None:
    """``(library, attr)`` of a qualified name such as ``cle.top_hat_box``, else ``None``."""
    if "." not in name:
        return None
    prefix, attr = name.rsplit(".", 1)
    for library in LIBRARIES:
        if prefix == library.key or prefix in library.aliases:
            return library, attr
    return None


def lookup(name: str, registered: Sequence[str] = ()) -> CatalogEntry:
    """The catalog entry for a qualified or unambiguous short name.

    Raises :class:`~hcsflow.errors.UnknownFunctionError` (a ``KeyError``, with close
    matches) for an unknown name, an excluded one (with
    the reason) or an ambiguous short name (listing the qualified names);
    ``registered`` names join the close-match suggestions.
    """
    split = _split_qualified(name)
    if split is not None:
        library, attr = split
        if not _available(library):
            hint = "pip install cupy-cuda12x cucim" if library.memory_type == "cupy" else ""
            raise UnknownFunctionError(
                f"{name!r} names a function of {library.module}, which is not installed"
                + (f" ({hint})" if hint else ""),
                name=name,
            )
        entries, excluded = _INDEX.library_entries(library)
        if attr in entries:
            return entries[attr]
        if attr in excluded:
            raise UnknownFunctionError(
                f"{name!r} is not available as a step function: it {excluded[attr]}", name=name
            )
        close = difflib.get_close_matches(attr, list(entries), n=3)
        hint = (
            f"; did you mean {', '.join(repr(f'{library.key}.{c}') for c in close)}?"
            if close
            else ""
        )
        raise UnknownFunctionError(
            f"{library.module} has no image function {attr!r}{hint}", name=name
        )
    table = _INDEX.short_names()
    found = table.get(name)
    if not found:
        excluded = {q: r for q, r in excluded_functions().items() if q.endswith(f".{name}")}
        if excluded:
            reasons = "; ".join(f"{q} {r}" for q, r in sorted(excluded.items()))
            raise UnknownFunctionError(
                f"{name!r} is not available as a step function: {reasons}", name=name
            )
        raise UnknownFunctionError(unknown_message(name, registered), name=name)
    distinct = {id(_target(e)): e for e in found if e.library.memory_type != "cupy"}
    if not distinct:
        distinct = {id(_target(e)): e for e in found}
    if len(distinct) > 1:
        options = ", ".join(repr(e.name) for e in found if e.library.memory_type != "cupy")
        raise UnknownFunctionError(
            f"the short name {name!r} is ambiguous: use one of {options}", name=name
        )
    return next(iter(distinct.values()))


def _target(entry: CatalogEntry) -> Any:
    return getattr(importlib.import_module(entry.library.module), entry.attr)


def unknown_message(name: str, registered: Sequence[str]) -> str:
    """``no function named ...`` with close matches among registered and library names."""
    table = _INDEX.short_names()
    qualified = [e.name for entries in table.values() for e in entries]
    pool = list(registered) + list(table) + qualified
    close = difflib.get_close_matches(name, pool, n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"no function named {name!r} is registered or found in the libraries{hint}"


def excluded_functions() -> dict[str, str]:
    """``{qualified name: reason}`` for the installed libraries' non-image functions."""
    out: dict[str, str] = {}
    for library in LIBRARIES:
        if _available(library):
            for attr, reason in _INDEX.library_entries(library)[1].items():
                out[f"{library.key}.{attr}"] = reason
    return out


def catalog() -> list[CatalogEntry]:
    """Every addressable library function of the installed libraries, by qualified name."""
    return sorted(_INDEX.all_entries(), key=lambda e: e.name)


def gpu_twin(entry: CatalogEntry) -> CatalogEntry | None:
    """The CuPy (cupyx / cuCIM) entry with the same name, where installed."""
    twin = entry.library.gpu_twin
    if twin is None:
        return None
    library = next(lib for lib in LIBRARIES if lib.key == twin)
    if not _available(library):
        return None
    return _INDEX.library_entries(library)[0].get(entry.attr)


# --------------------------------------------------------------------------- wrapper


def _stack(planes: list[Any], memory_type: str) -> Any:
    if memory_type == "numpy":
        return np.stack(planes)
    if memory_type == "cupy":
        import cupy

        return cupy.stack(planes)
    import pyclesperanto as cle

    first = planes[0]
    out = cle.create((len(planes), *first.shape), dtype=first.dtype)
    for z, plane in enumerate(planes):
        out[z] = plane
    return out


def _one_plane(result: Any, memory_type: str) -> Any:
    if memory_type == "pyclesperanto":
        import pyclesperanto as cle

        out = cle.create((1, *result.shape), dtype=result.dtype)
        out[0] = result
        return out
    return result[None]


class LibraryFunction:
    """A library function as a pipeline step: ``[Z, Y, X]`` in, ``[Z, Y, X]`` out.

    Pickles as its qualified name (workers re-import the library function).  The
    signature is the library function's without its image (and pyclesperanto's
    ``output_image``/``device``), plus the keyword-only ``slice_by_slice``.
    """

    def __init__(self, name: str):
        entry = _lookup_qualified(name)
        self.name = entry.name
        self.entry = entry
        self.input_memory_type = entry.memory_type
        self.output_memory_type = entry.memory_type
        self.__name__ = entry.attr
        self.__qualname__ = entry.attr
        self.__module__ = entry.library.module
        target = _target(entry)
        summary = (inspect.getdoc(target) or "").strip().split("\n\n")[0].replace("\n", " ")
        self.__doc__ = f"{summary}\n\n({entry.name}, {entry.memory_type}; wrapped by hcsflow)"
        self.__signature__ = _wrapper_signature(target, entry)
        self._decorated: Callable[..., Any] | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (LibraryFunction, (self.name,))

    def __repr__(self) -> str:
        return f"<{self.entry.memory_type} library function {self.name}>"

    def __call__(self, image: Any, *args: Any, **kwargs: Any) -> Any:
        if self._decorated is None:
            from hcsflow.memory.decorators import memory_types

            self._decorated = memory_types(
                input_type=self.input_memory_type,
                output_type=self.output_memory_type,
                dtype_policy="native",
            )(self._run)
        return self._decorated(image, *args, **kwargs)

    def _run(self, x: Any, *args: Any, slice_by_slice: bool | None = None, **kwargs: Any) -> Any:
        entry = self.entry
        fn = _target(entry)
        per_plane = entry.plane_default if slice_by_slice is None else bool(slice_by_slice)
        mt = entry.memory_type
        if not per_plane:
            out = self._adapt(fn(x, *args, **kwargs), x)
            ndim = len(out.shape)
            if ndim == 2:
                return _one_plane(out, mt)
            if ndim != 3:
                raise ShapeError(
                    f"{self.name} returned shape {tuple(out.shape)} for a 3-D stack; a step "
                    f"needs a 3-D result"
                )
            return out
        planes = []
        for z in range(int(x.shape[0])):
            plane = x[z]
            out = self._adapt(fn(plane, *args, **kwargs), plane)
            if len(out.shape) != 2:
                raise ShapeError(
                    f"{self.name} returned shape {tuple(out.shape)} for a 2-D plane; it does "
                    f"not map an image to an image of the same rank"
                )
            planes.append(out)
        if not planes:
            return x
        shapes = {tuple(p.shape) for p in planes}
        if len(shapes) > 1:
            raise ShapeError(f"{self.name} returned planes of different shapes {sorted(shapes)}")
        return _stack(planes, mt)

    def _adapt(self, result: Any, image: Any) -> Any:
        kind = self.entry.kind
        if kind == "first":
            result = result[0]
        elif kind in ("threshold", "threshold_image"):
            return image > result
        elif kind == "classes":
            if self.entry.memory_type == "cupy":
                import cupy

                return cupy.digitize(image, result).astype(cupy.uint8)
            return np.digitize(image, np.asarray(result)).astype(np.uint8)
        if isinstance(result, tuple):
            raise ShapeError(f"{self.name} returned a tuple of {len(result)}, not an image")
        if not hasattr(result, "shape"):
            raise ShapeError(
                f"{self.name} returned {type(result).__name__}, not an image; it is not "
                f"usable as a step function"
            )
        if self.entry.memory_type == "numpy":
            result = np.asarray(result)
        return result


def _lookup_qualified(name: str) -> CatalogEntry:
    split = _split_qualified(name)
    if split is None:
        raise ConfigurationError(f"{name!r} is not a qualified library function name")
    library, attr = split
    entries, _ = _INDEX.library_entries(library)
    if attr not in entries:
        raise ConfigurationError(f"{name!r} is not an image function of {library.module}")
    return entries[attr]


def _wrapper_signature(target: Any, entry: CatalogEntry) -> inspect.Signature:
    sbs = inspect.Parameter(
        "slice_by_slice", inspect.Parameter.KEYWORD_ONLY, default=entry.plane_default
    )
    try:
        params = list(inspect.signature(target).parameters.values())[1:]
    except (TypeError, ValueError):
        params = [
            inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL),
            inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD),
        ]
    if entry.memory_type == "pyclesperanto":
        params = [p for p in params if p.name not in ("output_image", "device")]
    params = [p for p in params if p.name != "slice_by_slice"]
    taken = {p.name for p in params}
    first = next(n for n in ("image", "stack", "input_stack") if n not in taken)
    image = inspect.Parameter(first, inspect.Parameter.POSITIONAL_ONLY)
    var_kw = [p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]
    rest = [p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD]
    return inspect.Signature([image, *rest, sbs, *var_kw])
