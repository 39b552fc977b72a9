"""Plate readers: describing a 384-well x 9-field x 4-channel export (13,824 planes).

Target (issue #10): <= 2 s per format, without decoding any image.  The baseline is the
least any reader must do, measured in the same run with the raw libraries: list the
folder (``os.walk``) and parse the metadata file (``xml.etree.ElementTree`` for the
Harmony index and the CellVoyager MLF, the HTD's lines for ImageXpress, one
``ome_types.from_xml`` of the companion file for OME-TIFF, zarr-python's
``open_group`` of every well and field for OME-Zarr).
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import print_table, write_results
from hcsflow.readers import read_plate
from hcsflow.storage.plate import WellPosition

WELLS = [WellPosition(r, c).name for r in range(16) for c in range(24)]
FIELDS, CHANNELS = 9, 4


def _walk(root: Path) -> int:
    n = 0
    for _, _, files in os.walk(root):
        n += len(files)
    return n


def _timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall, CPU) seconds of one call: CPU time is what other jobs on a shared machine
    disturb least."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def _raw_harmony(root: Path) -> None:
    _walk(root)
    tree = ET.parse(root / "Images" / "Index.xml")
    ns = {"h": tree.getroot().tag[1:].split("}")[0]}
    for img in tree.getroot().iterfind("h:Images/h:Image", ns):
        img.findtext("h:URL", namespaces=ns)


def _raw_cellvoyager(root: Path) -> None:
    _walk(root)
    for rec in ET.parse(root / "MeasurementData.mlf").getroot():
        rec.attrib.get("{http://www.yokogawa.co.jp/BTS/BTSSchema/1.0}Row")


def _raw_imagexpress(root: Path) -> None:
    _walk(root)
    for line in (root / "PLATE.HTD").read_text(encoding="cp1252").splitlines():
        line.split(",")


def _raw_ome_tiff(root: Path) -> None:
    import ome_types

    _walk(root)
    ome_types.from_xml(next(root.glob("*.companion.ome")).read_text())


def _raw_ome_zarr(root: Path) -> None:
    import zarr

    plate = zarr.open_group(str(root), mode="r")
    for well in plate.attrs["ome"]["plate"]["wells"]:
        w = zarr.open_group(str(root / well["path"]), mode="r")
        for img in w.attrs["ome"]["well"]["images"]:
            zarr.open_array(str(root / well["path"] / img["path"] / "0"), mode="r")


def _write_ome_zarr(root: Path) -> None:
    from hcsflow.storage import ZarrConfig, finalize_plate, write_well

    data = {f: np.zeros((CHANNELS, 1, 8, 8), np.uint16) for f in range(FIELDS)}
    for well in WELLS:
        write_well(str(root), well, data, ZarrConfig(), update_plate=False)
    finalize_plate(str(root))


def main() -> None:
    """Write one export per format, then time describing it against the raw baseline."""
    from hcsflow.testing import (
        write_cellvoyager_export,
        write_harmony_export,
        write_imagexpress_export,
        write_ome_tiff_plate,
    )

    common = {"wells": WELLS, "channels": CHANNELS, "size": (8, 8)}
    cases: list[tuple[str, Callable[[Path], Any], Callable[[Path], None]]] = [
        (
            "imagexpress",
            lambda p: write_imagexpress_export(
                p, site_grid=(3, 3), thumbnails=False, plate_format=(16, 24), **common
            ),
            _raw_imagexpress,
        ),
        (
            "harmony",
            lambda p: write_harmony_export(p, fields=FIELDS, plate_format=(16, 24), **common),
            _raw_harmony,
        ),
        (
            "cellvoyager",
            lambda p: write_cellvoyager_export(p, fields=FIELDS, **common),
            _raw_cellvoyager,
        ),
        (
            "ome-tiff",
            lambda p: write_ome_tiff_plate(
                p, fields=FIELDS, plate_format=(16, 24), companion=True, **common
            ),
            _raw_ome_tiff,
        ),
        ("ome-zarr", _write_ome_zarr, _raw_ome_zarr),
    ]
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="hcsflow-bench-readers-"))
    try:
        for name, write, raw in cases:
            root = tmp / name
            t0 = time.perf_counter()
            write(root)
            t_write = time.perf_counter() - t0
            desc = read_plate(root)  # warm: imports, page cache
            assert desc.n_images == len(WELLS) * FIELDS * CHANNELS, desc.n_images
            hcs, base = [], []
            for _ in range(5):  # alternate, so both see the same machine state
                hcs.append(_timed(lambda r=root: read_plate(r)))
                base.append(_timed(lambda r=root, f=raw: f(r)))
            t_h, t_b = (statistics.median(s[0] for s in x) for x in (hcs, base))
            c_h, c_b = (statistics.median(s[1] for s in x) for x in (hcs, base))
            rows.append(
                {
                    "format": name,
                    "planes": desc.n_images,
                    "files": _walk(root),
                    "describe_s": t_h,
                    "describe_cpu_s": c_h,
                    "raw_s": t_b,
                    "raw_cpu_s": c_b,
                    "ratio": t_h / t_b,
                    "cpu_ratio": c_h / c_b,
                    "target_s": 2.0,
                    "met": t_h <= 2.0,
                    "load_avg_1min": os.getloadavg()[0],
                    "export_written_s": t_write,
                }
            )
            shutil.rmtree(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_table("describe a 384-well x 9-field x 4-channel plate (medians of 5)", rows)
    write_results("readers", rows)


if __name__ == "__main__":
    main()
