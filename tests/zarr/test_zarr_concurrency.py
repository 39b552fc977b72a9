"""Wells written concurrently (threads, processes) lose nothing; a killed writer loses nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np

from hcsflow.storage import finalize_plate, open_plate, read_well, write_well
from hcsflow.storage.zarr.validate import validate_plate

WELLS = ["A01", "A02", "B01", "B07", "C12", "H01", "D05", "E06"]


def _data(i: int) -> np.ndarray:
    return np.full((1, 2, 16, 16), i, np.uint16) + np.arange(16, dtype=np.uint16)


def test_threads_writing_wells_lose_nothing(tmp_path) -> None:
    url = str(tmp_path / "p.zarr")
    barrier = threading.Barrier(len(WELLS))
    errors: list[BaseException] = []

    def writer(i: int, well: str) -> None:
        barrier.wait()
        try:
            write_well(url, well, {0: _data(i), 1: _data(i + 100)})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i, w)) for i, w in enumerate(WELLS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    # without finalize_plate: the per-well updates already list every well
    assert sorted(open_plate(url).wells) == sorted(WELLS)
    for i, w in enumerate(WELLS):
        np.testing.assert_array_equal(read_well(url, w, 1), _data(i + 100))
    assert validate_plate(url, deep=True).ok


_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from hcsflow.storage import write_well
    url, well, value = sys.argv[1], sys.argv[2], int(sys.argv[3])
    data = np.full((1, 2, 16, 16), value, np.uint16) + np.arange(16, dtype=np.uint16)
    write_well(url, well, data)
    """
)


def test_processes_writing_wells_lose_nothing(tmp_path) -> None:
    url = str(tmp_path / "p.zarr")
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, url, w, str(i)])
        for i, w in enumerate(WELLS)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0] * len(WELLS)
    assert sorted(open_plate(url).wells) == sorted(WELLS)
    for i, w in enumerate(WELLS):
        np.testing.assert_array_equal(read_well(url, w), _data(i))
    assert finalize_plate(url).wells == tuple(sorted(WELLS, key=lambda w: (w[0], int(w[1:]))))


_CRASHER = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from hcsflow.storage import write_well
    from hcsflow.storage.zarr import _arrays
    url = sys.argv[1]
    real = _arrays.create_array
    calls = []
    def dying(loc, data, config, names):
        calls.append(loc)
        if len(calls) == 2:  # field 0 of the new version is on storage, field 1 half-way
            os.kill(os.getpid(), signal.SIGKILL)
        real(loc, data, config, names)
    _arrays.create_array = dying
    new = {f: np.full((1, 2, 16, 16), 7, np.uint16) for f in range(2)}
    write_well(url, "B02", new, overwrite=True)
    """
)


def test_killed_writer_leaves_previous_well_readable(tmp_path) -> None:
    url = str(tmp_path / "p.zarr")
    old = {0: _data(1), 1: _data(2)}
    write_well(url, "B02", old)
    proc = subprocess.run([sys.executable, "-c", _CRASHER, url], timeout=120)
    assert proc.returncode == -9
    for f, arr in old.items():
        np.testing.assert_array_equal(read_well(url, "B02", f), arr)
    assert open_plate(url).wells == ("B02",)
    assert validate_plate(url, deep=True).ok
    leftovers = set(os.listdir(tmp_path / "p.zarr/B/2")) - {"zarr.json", "0", "1"}
    assert leftovers  # the dead writer's partial version is there, unreferenced
    # the next write of the well publishes and clears the debris
    info = write_well(url, "B02", _data(9), overwrite=True)
    assert set(os.listdir(tmp_path / "p.zarr/B/2")) == {"zarr.json", *info.field_paths}
    np.testing.assert_array_equal(read_well(url, "B02"), _data(9))


def test_well_published_during_a_plate_write_is_not_dropped(tmp_path, monkeypatch) -> None:
    # a deterministic interleaving: while A01's writer rewrites the plate metadata from
    # its marker listing, another writer publishes and marks B02 (its own plate update
    # already overwritten); A01's writer must notice the new marker and write again
    from hcsflow.storage.zarr import _plate_meta

    url = str(tmp_path / "p.zarr")
    real = _plate_meta._write_plate_meta
    rounds: list[tuple[tuple[int, int], ...]] = []

    def interleaved(plate, wells, *args, **kwargs):
        rounds.append(tuple(sorted(wells)))
        real(plate, wells, *args, **kwargs)
        if len(rounds) == 1:
            write_well(url, "B02", _data(2), update_plate=False)

    monkeypatch.setattr(_plate_meta, "_write_plate_meta", interleaved)
    write_well(url, "A01", _data(1))
    assert rounds == [((0, 0),), ((0, 0), (1, 1))]
    assert open_plate(url).wells == ("A01", "B02")
    np.testing.assert_array_equal(read_well(url, "B02"), _data(2))
