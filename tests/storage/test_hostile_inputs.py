"""Hostile files: size bombs and corrupt files fail fast with typed errors naming the file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hcsflow.errors import CorruptDataError, HcsflowError, ResourceLimitError
from hcsflow.storage import (
    ENV_MAX_DECODED_BYTES,
    DiskStorageBackend,
    StorageLimits,
    ZarrStorageBackend,
    aligned_empty,
)
from hcsflow.storage._decode import is_aligned
from hcsflow.storage._limits import parse_size
from hcsflow.testing import hostile_files

CAP = 16 << 20


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[str, list]:
    directory = tmp_path_factory.mktemp("hostile")
    return str(directory), hostile_files(directory, CAP)


def test_corpus_covers_every_reader(corpus) -> None:
    _, files = corpus
    extensions = {f.name.rsplit(".", 1)[1] for f in files}
    assert extensions >= {"npy", "npz", "tif", "png", "json"}
    assert {f.error for f in files} == {ResourceLimitError, CorruptDataError}


@pytest.mark.timeout(60)
def test_every_hostile_file_gives_its_typed_error_naming_the_file(corpus) -> None:
    directory, files = corpus
    backend = DiskStorageBackend(directory, limits=StorageLimits(max_decoded_bytes=CAP))
    for item in files:
        with pytest.raises(HcsflowError) as info:
            backend.load(f"/{item.name}")
        assert isinstance(info.value, item.error), (item.name, item.why, info.value)
        assert item.name in str(info.value), str(info.value)
        assert info.value.backend == "disk"


def test_limit_errors_carry_the_sizes(corpus) -> None:
    directory, _ = corpus
    backend = DiskStorageBackend(directory, limits=StorageLimits(max_decoded_bytes=CAP))
    with pytest.raises(ResourceLimitError) as info:
        backend.load("/npy_800tb.npy")
    assert info.value.limit == CAP and info.value.requested == 8 * 10**14
    assert isinstance(info.value, MemoryError)  # code catching MemoryError still works


def test_hostile_files_fail_through_load_batch_with_the_cause(corpus) -> None:
    directory, files = corpus
    backend = DiskStorageBackend(directory, limits=StorageLimits(max_decoded_bytes=CAP))
    names = [f"/{f.name}" for f in files if f.error is ResourceLimitError][:3]
    with pytest.raises(HcsflowError) as info:
        backend.load_batch(names)
    assert isinstance(info.value.__cause__, ResourceLimitError)
    assert "would decode" in str(info.value)


def test_the_cap_follows_the_environment_variable(tmp_path, monkeypatch) -> None:
    np.save(tmp_path / "a.npy", np.zeros(4096, np.uint8))
    monkeypatch.setenv(ENV_MAX_DECODED_BYTES, "1KiB")
    with pytest.raises(ResourceLimitError):
        DiskStorageBackend(tmp_path).load("/a.npy")
    monkeypatch.setenv(ENV_MAX_DECODED_BYTES, "1MiB")
    assert DiskStorageBackend(tmp_path).load("/a.npy").size == 4096
    assert DiskStorageBackend(tmp_path).limits.max_decoded_bytes == 1 << 20


def test_parse_size_units() -> None:
    assert parse_size("2GiB") == 2 << 30
    assert parse_size("500M") == 500 * 1000**2
    assert parse_size("1048576") == 1 << 20
    with pytest.raises(ValueError):
        parse_size("lots")


def test_default_cap_is_half_the_physical_memory(monkeypatch) -> None:
    monkeypatch.delenv(ENV_MAX_DECODED_BYTES, raising=False)
    phys = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert StorageLimits().max_decoded_bytes == phys // 2


def test_json_size_and_depth_limits(tmp_path) -> None:
    (tmp_path / "big.json").write_text(json.dumps(list(range(5000))))
    (tmp_path / "ok.json").write_text("[" * 100 + "]" * 100)
    small = DiskStorageBackend(tmp_path, limits=StorageLimits(max_decoded_bytes=1024))
    with pytest.raises(ResourceLimitError):
        small.load("/big.json")
    shallow = DiskStorageBackend(tmp_path, limits=StorageLimits(max_json_depth=50))
    with pytest.raises(ResourceLimitError):
        shallow.load("/ok.json")
    assert DiskStorageBackend(tmp_path).load("/ok.json") is not None


def test_zarr_codec_files_are_checked_too(tmp_path) -> None:
    backend = ZarrStorageBackend(tmp_path, limits=StorageLimits(max_json_depth=20))
    backend.save("[" * 30 + "]" * 30, "/deep.json")
    with pytest.raises(ResourceLimitError) as info:
        backend.load("/deep.json")
    assert "/deep.json" in str(info.value)


@pytest.mark.parametrize("ext", [".npy", ".tif", ".png", ".npz"])
def test_loaded_arrays_are_64_byte_aligned(tmp_path, ext) -> None:
    backend = DiskStorageBackend(tmp_path)
    # odd sizes, so that an aligned result is not the allocator's luck
    data = np.arange(37 * 29, dtype=np.uint16).reshape(37, 29)
    if ext == ".png":
        data = data.astype(np.uint8)
    backend.save({"a": data} if ext == ".npz" else data, f"/x{ext}")
    for _ in range(5):
        out = backend.load(f"/x{ext}")
        arr = out["a"] if ext == ".npz" else out
        np.testing.assert_array_equal(arr, data)
        assert is_aligned(arr), hex(arr.ctypes.data)


def test_zarr_reads_are_aligned(tmp_path) -> None:
    backend = ZarrStorageBackend(tmp_path)
    data = np.arange(3 * 37 * 29, dtype=np.float32).reshape(3, 37, 29)
    backend.save(data, "/x.npy")
    for _ in range(5):
        out = backend.load("/x.npy")
        np.testing.assert_array_equal(out, data)
        assert is_aligned(out)


def test_aligned_empty_shapes_and_orders() -> None:
    for shape, order in [((0,), "C"), ((7, 3), "F"), ((5, 1, 9), "C")]:
        arr = aligned_empty(shape, np.complex128, order=order)
        assert arr.shape == shape and is_aligned(arr)
        assert arr.flags.f_contiguous if order == "F" else arr.flags.c_contiguous


_UNDER_RLIMIT = textwrap.dedent("""
    import json, os, resource, sys
    from hcsflow.errors import HcsflowError, ResourceLimitError
    from hcsflow.storage import DiskStorageBackend
    import numpy, tifffile, PIL.Image, zarr  # everything a load may import, first

    directory, names, headroom = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    with open("/proc/self/status") as fh:
        vm = next(int(l.split()[1]) * 1024 for l in fh if l.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + headroom, vm + headroom))
    backend = DiskStorageBackend(directory)
    out = {}
    for name in names:
        try:
            backend.load("/" + name)
            out[name] = "loaded"
        except HcsflowError as exc:
            out[name] = [type(exc).__name__, name in str(exc)]
        except MemoryError as exc:
            out[name] = ["raw MemoryError", False]
    print(json.dumps(out))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc: Linux")
@pytest.mark.timeout(120)
@pytest.mark.parametrize(("cap", "headroom"), [("16MiB", 96 << 20), ("64GiB", 16 << 20)])
def test_size_bombs_under_a_memory_limit(corpus, tmp_path, cap, headroom) -> None:
    """Under RLIMIT_AS (the process size plus ``headroom``): with a cap below the
    headroom every bomb is refused by the cap before allocating; with a cap far above
    it, the bombs the cap lets through fail to allocate and still give a typed error
    naming the file (never a raw MemoryError)."""
    directory, files = corpus
    script = tmp_path / "under_rlimit.py"
    script.write_text(_UNDER_RLIMIT)
    names = [f.name for f in files]
    env = {**os.environ, ENV_MAX_DECODED_BYTES: cap}
    proc = subprocess.run(
        [sys.executable, str(script), directory, json.dumps(names), str(headroom)],
        capture_output=True,
        text=True,
        timeout=110,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = {f.name: f.error.__name__ for f in files}
    for name, outcome in results.items():
        assert outcome != "loaded", name
        kind, named = outcome
        assert named, (name, outcome)
        if cap == "16MiB":
            assert kind == expected[name], (name, outcome)
        else:
            assert kind in ("ResourceLimitError", "CorruptDataError"), (name, outcome)


@pytest.mark.timeout(60)
def test_hostile_files_through_the_fsspec_backend(corpus) -> None:
    import uuid

    import fsspec

    from hcsflow.storage import FsspecStorageBackend

    directory, files = corpus
    root = f"memory://hostile-{uuid.uuid4().hex[:8]}"
    fs = fsspec.filesystem("memory")
    for item in files:
        with open(os.path.join(directory, item.name), "rb") as fh:
            fs.pipe_file(f"{root[len('memory://') :]}/{item.name}", fh.read())
    backend = FsspecStorageBackend(root, limits=StorageLimits(max_decoded_bytes=CAP))
    for item in files:
        with pytest.raises(HcsflowError) as info:
            backend.load(f"/{item.name}")
        assert isinstance(info.value, item.error), (item.name, info.value)
        assert item.name in str(info.value)


# --------------------------------------------------------------------------- multi-file OME-TIFF

_UUID_A = "urn:uuid:11111111-1111-4111-8111-111111111111"
_UUID_B = "urn:uuid:22222222-2222-4222-8222-222222222222"


def _ome_xml(own_uuid: str | None, planes: list[tuple[int, str, str]]) -> str:
    """OME-XML of a Z stack whose plane z is page ``ifd`` of file ``name`` (``uuid``),
    for each ``(ifd, name, uuid)`` of ``planes``: how Bio-Formats and microscope software
    write OME-TIFF, a multi-file one when the names differ."""
    data = "".join(
        f'<TiffData FirstZ="{z}" IFD="{ifd}" PlaneCount="1">'
        f'<UUID FileName="{name}">{uuid}</UUID></TiffData>'
        for z, (ifd, name, uuid) in enumerate(planes)
    )
    root = f' UUID="{own_uuid}"' if own_uuid else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"{root}>'
        '<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYZCT" Type="uint16" '
        f'SizeX="8" SizeY="8" SizeZ="{len(planes)}" SizeC="1" SizeT="1">'
        f'<Channel ID="Channel:0:0" SamplesPerPixel="1"/>{data}</Pixels></Image></OME>'
    )


def _ome_pair_xml(own_uuid: str, file_a: str, file_b: str) -> str:
    """Plane 0 in ``file_a``, plane 1 in ``file_b``."""
    return _ome_xml(own_uuid, [(0, file_a, _UUID_A), (0, file_b, _UUID_B)])


def _write_ome_pair(folder, file_b: str = "B.ome.tif") -> None:
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(
        folder / "A.ome.tif",
        np.full((8, 8), 7, np.uint16),
        description=_ome_pair_xml(_UUID_A, "A.ome.tif", file_b),
        metadata=None,
    )
    tifffile.imwrite(
        folder / "B.ome.tif",
        np.full((8, 8), 9, np.uint16),
        description=_ome_pair_xml(_UUID_B, "A.ome.tif", file_b),
        metadata=None,
    )


def test_a_multi_file_ome_tiff_is_refused_and_nothing_outside_the_store_is_read(tmp_path):
    """The OME-XML of one file of a multi-file OME-TIFF names the others.  tifffile
    opened them by joining those names to the directory of the *virtual* path, outside
    the store: here a decoy beside the real path the virtual one spells was read into
    the result; with no such file the plane came back as zeros with only a log line."""
    from hcsflow.errors import DataFormatError

    store = tmp_path / "store"
    decoy_dir = tmp_path / "decoy"  # the real directory the virtual path below spells
    virtual_dir = str(decoy_dir)  # an absolute path, used as a virtual one in the store
    _write_ome_pair(store / virtual_dir.lstrip("/"))
    _write_ome_pair(decoy_dir)  # outside the store
    import tifffile

    tifffile.imwrite(  # the decoy's second file holds other data
        decoy_dir / "B.ome.tif",
        np.full((8, 8), 666, np.uint16),
        description=_ome_pair_xml(_UUID_B, "A.ome.tif", "B.ome.tif"),
        metadata=None,
    )
    backend = DiskStorageBackend(str(store))
    for vp in (f"{virtual_dir}/A.ome.tif", f"{virtual_dir}/B.ome.tif"):
        with pytest.raises(DataFormatError) as info:
            backend.load(vp)
        message = str(info.value)
        assert "multi-file OME-TIFF" in message and info.value.path == vp
        other = "B.ome.tif" if vp.endswith("A.ome.tif") else "A.ome.tif"
        assert repr(other) in message
    # each file's own pages still load, as the OME-TIFF plate reader reads them
    assert backend.load(f"{virtual_dir}/A.ome.tif", key=0).tolist() == [[7] * 8] * 8
    assert backend.load(f"{virtual_dir}/B.ome.tif", key=0).max() == 9


def test_a_multi_file_ome_tiff_naming_a_path_outside_is_refused_through_fsspec(tmp_path):
    import uuid

    import fsspec

    from hcsflow.errors import DataFormatError
    from hcsflow.storage import FsspecStorageBackend

    _write_ome_pair(tmp_path / "pair", file_b="../../../../etc/B.ome.tif")
    root = f"memory://ome-{uuid.uuid4().hex[:8]}"
    fs = fsspec.filesystem("memory")
    fs.pipe_file(
        f"{root[len('memory://') :]}/A.ome.tif", (tmp_path / "pair/A.ome.tif").read_bytes()
    )
    backend = FsspecStorageBackend(root)
    with pytest.raises(DataFormatError, match=r"multi-file OME-TIFF.*'\.\./\.\./\.\./\.\./etc/B"):
        backend.load("/A.ome.tif")


def test_single_file_ome_tiffs_naming_themselves_still_load(tmp_path):
    """UUID elements naming the file itself (as Bio-Formats writes single files too,
    with or without the document's own UUID), and tifffile's own OME-TIFF, are not
    mistaken for multi-file ones, on disk and through fsspec (where the file object
    has no name of its own)."""
    import uuid

    import fsspec
    import tifffile

    from hcsflow.storage import FsspecStorageBackend

    stack = np.stack([np.full((8, 8), 7, np.uint16), np.full((8, 8), 9, np.uint16)])
    planes = [(0, "one.ome.tif", _UUID_A), (1, "one.ome.tif", _UUID_A)]
    tifffile.imwrite(
        tmp_path / "one.ome.tif", stack, description=_ome_xml(_UUID_A, planes), metadata=None
    )
    planes = [(0, "two.ome.tif", _UUID_A), (1, "two.ome.tif", _UUID_A)]
    tifffile.imwrite(
        tmp_path / "two.ome.tif", stack, description=_ome_xml(None, planes), metadata=None
    )
    tifffile.imwrite(tmp_path / "own.ome.tif", stack, ome=True)
    root = f"memory://ome-{uuid.uuid4().hex[:8]}"
    fs = fsspec.filesystem("memory")
    names = ("one.ome.tif", "two.ome.tif", "own.ome.tif")
    for name in names:
        fs.pipe_file(f"{root[len('memory://') :]}/{name}", (tmp_path / name).read_bytes())
    for backend in (DiskStorageBackend(str(tmp_path)), FsspecStorageBackend(root)):
        for name in names:
            got = backend.load(f"/{name}")
            assert got.shape == (2, 8, 8) and got[:, 0, 0].tolist() == [7, 9], (backend, name)


def test_without_a_root_a_multi_file_ome_tiff_is_read_whole(tmp_path):
    """A disk backend without a root covers the whole file system: virtual paths are
    real ones, there is no store to leave, and the other files of the series are read
    as tifffile.imread reads them."""
    _write_ome_pair(tmp_path / "pair")
    got = DiskStorageBackend().load(str(tmp_path / "pair" / "A.ome.tif"))
    assert got.shape == (2, 8, 8) and got[:, 0, 0].tolist() == [7, 9]


def test_in_a_store_tifffile_gets_no_descriptor_and_no_path(tmp_path, monkeypatch):
    """What keeps tifffile from opening, globbing or checking files by path in a store
    (the other files of OME-TIFF, Micro-Manager and NDTiff series): it reads a stream
    with neither a descriptor nor a directory."""
    import tifffile

    seen = []
    original = tifffile.TiffFile.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen.append((self.filehandle.is_file, self.filehandle.dirname, self.filename))

    monkeypatch.setattr(tifffile.TiffFile, "__init__", spy)
    tifffile.imwrite(tmp_path / "plane.tif", np.ones((4, 4), np.uint16))
    assert DiskStorageBackend(str(tmp_path)).load("/plane.tif").sum() == 16
    assert seen == [(False, "", "plane.tif")]
    seen.clear()
    DiskStorageBackend().load(str(tmp_path / "plane.tif"))  # no root: the real file
    assert seen == [(True, str(tmp_path), "plane.tif")]


def test_a_tiff_reads_from_a_stream_with_only_read_seek_and_tell():
    """A third-party backend's file object may lack ``readinto``: the stream tifffile
    is given in a store then reads through ``read``."""
    import io

    import tifffile

    from hcsflow.storage._decode import read_tiff

    class Plain:
        def __init__(self, data: bytes) -> None:
            self._buf = io.BytesIO(data)

        def read(self, n: int = -1) -> bytes:
            return self._buf.read(n)

        def seek(self, offset: int, whence: int = 0) -> int:
            return self._buf.seek(offset, whence)

        def tell(self) -> int:
            return self._buf.tell()

    stack = np.arange(3 * 5 * 7, dtype=np.uint16).reshape(3, 5, 7)
    buf = io.BytesIO()
    tifffile.imwrite(buf, stack, imagej=True, metadata={"axes": "ZYX"})
    got = read_tiff(Plain(buf.getvalue()), limits=StorageLimits(), path="/s.tif", backend=None)
    assert np.array_equal(got, stack) and is_aligned(got)


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_refused_at_once_not_waited_on(tmp_path) -> None:
    """Opening a FIFO for reading waits for a writer that never comes: a load of one (a
    crafted store, a stray pipe in an export folder) must fail at once, not hang."""
    from hcsflow.errors import DataFormatError

    os.mkfifo(tmp_path / "pipe.tif")
    for backend, path in (
        (DiskStorageBackend(str(tmp_path)), "/pipe.tif"),
        (DiskStorageBackend(), str(tmp_path / "pipe.tif")),
    ):
        with pytest.raises(DataFormatError, match="is a FIFO, not a regular file") as info:
            backend.load(path)
        assert info.value.path == path
        with pytest.raises(DataFormatError, match="FIFO"):
            backend.copy(path, path.replace("pipe", "copy"))
