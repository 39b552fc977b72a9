"""The zarr backend: the virtual file system as a zarr hierarchy, and OME-Zarr plates.

**Path mapping.**  ``ZarrStorageBackend(root=None)`` maps a virtual path to the same
absolute local path; ``root="/data/x"``, ``"s3://bucket/x"`` or any fsspec URL maps
virtual ``/a/b`` to ``<root>/a/b``.  Every entry is a zarr node:

* a **directory** is a zarr group (``zarr.json`` with no hcsflow marker), or a plain
  directory that already exists on a local disk (``/tmp``...);
* a **file** is a zarr group whose ``hcsflow`` attribute says ``kind: "file"`` and
  names its data array child: arrays are stored as native zarr arrays (any
  extension), other objects are encoded by the disk backend's format for the path's
  extension (``.json``, ``.csv``, ``.txt``, ``.pkl``...) and kept as a ``uint8`` zarr
  array, so every byte in a store is readable by any zarr tool;
* a **symlink** is a group with ``kind: "symlink"`` and the target's virtual path;
* a **plate image** is a group with ``kind: "plate-image"`` written by
  ``save_batch(..., chunk_name=...)``: it points at one plane of a well of the plate
  store it lives in (the nearest ``*.zarr`` ancestor);
* a bare zarr array written by another tool reads as a file (its whole array).

A path segment ending in ``.zarr`` therefore names a store in the usual sense, and
everything below it is a key within it; the backend does not need the segment for
generic files, only to find the plate store of plate images.

**Nothing lost.**  A file's data array has a fresh name on every write; the group's
``zarr.json`` is switched to it in one atomic write (``os.replace`` or one PUT) and the
old array is deleted afterwards, so readers see the old or the new content and a crash
leaves the old one.  Wells use the same scheme (see :mod:`hcsflow.storage.zarr._wells`).
Moves are atomic renames on local disks and copy-then-delete on object stores.
"""

from __future__ import annotations

import uuid

import numpy as np

from hcsflow import paths as vpaths
from hcsflow.errors import (
    AlreadyExistsError,
    DirectoryNotEmptyError,
    InvalidPathError,
    NotADirectoryStorageError,
    NotFoundError,
    SymlinkLoopError,
)
from hcsflow.storage._base import EntryKind, FileInfo
from hcsflow.storage.zarr import _ome
from hcsflow.storage.zarr._listing import scan_local, touched
from hcsflow.storage.zarr._localfs import LocalFS

__all__ = ["ZarrStorageBackend"]
from hcsflow.storage.zarr._nodes import _hidden, _in_progress
from hcsflow.storage.zarr._plate_images import _ZarrPlateImages


class ZarrStorageBackend(_ZarrPlateImages):
    """Storage of arrays and objects in zarr (v3) hierarchies, locally or on any fsspec URL.

    ``root``: store root URL or local directory (``None``: virtual paths are local
    absolute paths).  ``storage_options``: passed to fsspec (``endpoint_url``...);
    credentials come from the environment.  ``config``: the default
    :class:`~hcsflow.storage.ZarrConfig` for arrays and plates.  ``codecs``: formats for
    non-array objects, by extension (default: the disk backend's).
    """

    # ------------------------------------------------------------------ queries

    def entry_kind(
        self, path: vpaths.PathLike, *, follow_symlinks: bool = True
    ) -> EntryKind | None:
        """Kind of entry at ``path``; ``None`` when missing, dangling or looping."""
        vp = self.norm(path)
        try:
            return self._resolve(vp, follow_symlinks)[1]
        except (SymlinkLoopError, NotADirectoryStorageError):
            return None

    def list_dir(self, directory: vpaths.PathLike) -> list[str]:
        """Entry names in ``directory`` (following symlinks to it), naturally sorted."""
        vp = self.norm(directory)
        real, kind, _ = self._resolve(vp, True)
        if kind is None:
            raise NotFoundError("directory does not exist", path=vp, backend=self.name)
        if kind != "directory":
            raise NotADirectoryStorageError("not a directory", path=vp, backend=self.name)
        loc = self._loc(real)
        if isinstance(loc.fs, LocalFS):
            entries = scan_local(self, loc.fs, real, loc.path, self._listings, self._listed)
            return vpaths.natural_sorted([name for name, kind, _ in entries if kind is not None])
        names = [n for n in loc.list() if not _hidden(n) and not _in_progress(loc.child(n))]
        return vpaths.natural_sorted(names)

    def _listed(self, vp: str) -> tuple[EntryKind | None, None]:
        """Whether ``list_dir`` names the entry at ``vp`` (kind ``None``: it does not).

        Only nodes still being written are left out; the kind given otherwise is not
        the entry's (a name is listed even when reading its node would fail).
        """
        return (None, None) if _in_progress(self._loc(vp)) else ("file", None)

    def _scan_dir(self, directory: str) -> tuple[list[str], list[str]]:
        """Files and subdirectories of ``directory``: one pass over a local directory
        (see :mod:`hcsflow.storage.zarr._listing`), entry by entry on object stores."""
        real, kind, _ = self._resolve(directory, True)
        loc = self._loc(real) if kind == "directory" else None
        if loc is None or not isinstance(loc.fs, LocalFS):
            return super()._scan_dir(directory)
        files: list[str] = []
        subdirs: list[str] = []
        prefix = "/" if real == "/" else real + "/"
        for name, own, _ in scan_local(self, loc.fs, real, loc.path, self._listings, self._node):
            if own == "file":
                files.append(name)
            elif own == "directory":
                subdirs.append(name)
            elif own == "symlink" and self.entry_kind(prefix + name) == "file":
                files.append(name)
        return files, subdirs

    def read_link(self, link: vpaths.PathLike) -> str:
        """The virtual path the symlink ``link`` points at."""
        vp = self.norm(link)
        _, kind, info = self._resolve(vp, False)
        if kind == "symlink":
            assert info is not None
            return str(info["target"])
        if kind is None:
            raise NotFoundError("no such symlink", path=vp, backend=self.name)
        raise InvalidPathError("not a symlink", path=vp, backend=self.name)

    def stat(self, path: vpaths.PathLike) -> FileInfo:
        """:class:`FileInfo` for ``path`` itself (a symlink is reported as a symlink)."""
        vp = self.norm(path)
        _, kind, info = self._resolve(vp, False)
        if kind is None:
            raise NotFoundError("no such file or directory", path=vp, backend=self.name)
        if kind == "symlink":
            assert info is not None
            return FileInfo(vp, "symlink", target=str(info["target"]))
        if kind == "file":
            size = (info or {}).get("size")
            return FileInfo(vp, "file", size=int(size) if isinstance(size, int) else None)
        return FileInfo(vp, "directory")

    # ------------------------------------------------------------------ mutations

    def ensure_directory(self, directory: vpaths.PathLike) -> str:
        """Create ``directory`` (as zarr groups) and missing parents; return its path."""
        vp = self.norm(directory)
        real = "/"
        for part in vp.strip("/").split("/") if vp != "/" else []:
            child = vpaths.join(real, part)
            creal, kind, _ = self._resolve(child, True)
            if kind is None and creal != child:
                # a dangling link: creating its target would make a directory elsewhere
                raise NotFoundError("symlink target does not exist", path=child, backend=self.name)
            if kind is None:
                loc = self._loc(creal)
                loc.write_once("zarr.json", _ome.group_document({}))
                real = creal
            elif kind == "directory":
                real = creal
            else:
                raise NotADirectoryStorageError(
                    "a file is in the way", path=child, backend=self.name
                )
        return vp

    def _delete(self, vp: str, recursive: bool) -> None:
        real, kind, _ = self._resolve(vp, False)
        if kind is None:
            raise NotFoundError("no such file or directory", path=vp, backend=self.name)
        if kind == "directory" and not recursive and self.list_dir(real):
            raise DirectoryNotEmptyError(
                "directory is not empty; use delete_all", path=vp, backend=self.name
            )
        self._loc(real).remove()

    def _create_symlink(self, tvp: str, lvp: str, overwrite: bool) -> None:
        seen: set[str] = set()
        try:
            treal, tkind, _ = self._resolve(tvp, True, seen)
        except (SymlinkLoopError, NotADirectoryStorageError):
            treal, tkind = tvp, None
        if tkind is None:
            raise NotFoundError("symlink target does not exist", path=tvp, backend=self.name)
        real, kind = self._write_target(lvp, overwrite)
        if real in seen or vpaths.is_relative_to(treal, real):
            # the target's chain runs through the link being replaced: it would loop
            raise SymlinkLoopError(
                "the new link would make a symlink loop", path=lvp, backend=self.name
            )
        loc = self._loc(real)
        doc = _ome.group_document({"hcsflow": {"kind": "symlink", "target": tvp}})
        if kind is None:
            if not loc.write_once("zarr.json", doc):
                raise AlreadyExistsError(
                    "target appeared meanwhile; not overwritten", path=lvp, backend=self.name
                )
            return
        old = self._data_children(real)
        loc.write("zarr.json", doc)
        touched(loc.fs, loc.path)
        for child in old:
            loc.child(child).remove()

    def _move(self, svp: str, dvp: str, replace_symlinks: bool) -> None:
        sreal, skind, sinfo = self._resolve(svp, False)
        if skind is None:
            raise NotFoundError("no such file or directory", path=svp, backend=self.name)
        if dvp == "/":
            raise AlreadyExistsError("destination exists", path=dvp, backend=self.name)
        preal = self._parent_dir(dvp)
        dreal = vpaths.join(preal, vpaths.name(dvp))
        dkind, _ = self._node(dreal)
        if dkind is not None and not (dkind == "symlink" and replace_symlinks):
            raise AlreadyExistsError("destination exists", path=dvp, backend=self.name)
        if skind == "directory" and vpaths.is_relative_to(dreal, sreal):
            raise InvalidPathError(
                "cannot move a directory into itself", path=dvp, backend=self.name
            )
        if sinfo is not None and sinfo.get("kind") == "plate-image":
            # a plate image points into its store by relative position: moving it means
            # writing its plane as an ordinary file
            plane = self._read_plate_images([(sreal, sinfo)])[0]
            if dkind is not None:
                self._loc(dreal).remove()
            self._write_file(
                dreal, plane, "array", self.config, int(plane.nbytes), existed=False, vp=dvp
            )
            self._loc(sreal).remove()
            return
        if dkind is not None:
            self._loc(dreal).remove()
        self._loc(sreal).rename_to(self._loc(dreal))

    def copy(self, src: vpaths.PathLike, dst: vpaths.PathLike, *, overwrite: bool = False) -> None:
        """Copy a file (its resolved content) or a directory tree (links kept as links).

        ``overwrite`` applies to files; a directory copy needs a new ``dst``.
        """
        svp, dvp = self.norm(src), self.norm(dst)
        sreal, skind, sinfo = self._resolve(svp, True)
        if skind is None:
            raise NotFoundError("no such file or directory", path=svp, backend=self.name)
        if skind == "file":
            info = sinfo or {}
            dreal, dkind = self._write_target(dvp, overwrite)
            if dreal == sreal:
                return
            if info.get("kind") == "file":
                sloc, dloc = self._loc(sreal), self._loc(dreal)
                old = self._data_children(dreal)
                name = f"data{uuid.uuid4().hex[:8]}"
                sloc.child(str(info["data"])).copy_to(dloc.child(name))
                doc = _ome.group_document({"hcsflow": {**info, "data": name}})
                if dkind is None:
                    if not dloc.write_once("zarr.json", doc):
                        dloc.child(name).remove()
                        raise AlreadyExistsError(
                            "target appeared meanwhile; not overwritten",
                            path=dvp,
                            backend=self.name,
                        )
                    return
                dloc.write("zarr.json", doc)
                touched(dloc.fs, dloc.path)
                for child in old:
                    dloc.child(child).remove()
                return
            data = np.asarray(self._read_file(svp, sreal, info, {}))
            self._write_file(
                dreal,
                data,
                "array",
                self.config,
                int(data.nbytes),
                exclusive=dkind is None and not overwrite,
                existed=dkind is not None,
                vp=dvp,
            )
            return
        if self.entry_kind(dvp, follow_symlinks=False) is not None:
            raise AlreadyExistsError("copy destination exists", path=dvp, backend=self.name)
        preal = self._parent_dir(dvp)
        dreal = vpaths.join(preal, vpaths.name(dvp))
        if vpaths.is_relative_to(dreal, sreal):
            raise InvalidPathError(
                "cannot copy a directory into itself", path=dvp, backend=self.name
            )
        if sreal == "/" or not _ome.read_node(self._loc(sreal)):
            # a plain directory: copy entry by entry so the copy is a zarr group
            self.ensure_directory(dreal)
            for name in self.list_dir(sreal):
                self._copy_entry(vpaths.join(sreal, name), vpaths.join(dreal, name))
            return
        self._loc(sreal).copy_to(self._loc(dreal))

    def _copy_entry(self, src: str, dst: str) -> None:
        kind, _ = self._node(src)
        if kind == "symlink":
            self._loc(src).copy_to(self._loc(dst))
        else:
            self.copy(src, dst)
