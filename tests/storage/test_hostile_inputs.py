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
