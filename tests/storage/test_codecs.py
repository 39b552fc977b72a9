"""Every disk format: what goes in, what comes back, and what is refused."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import tifffile

from hcsflow.errors import (
    CorruptDataError,
    DataFormatError,
    HcsflowError,
    InvalidPathError,
    NotFoundError,
    PickleRefusedError,
    UnsupportedFormatError,
)
from hcsflow.storage import DiskStorageBackend, default_codecs
from hcsflow.storage._codecs import Codec, CodecRefusal, CodecRegistry, to_host_array


@pytest.fixture
def disk(tmp_path) -> DiskStorageBackend:
    return DiskStorageBackend(tmp_path, fsync=False)


class Upper(Codec):
    """A tiny custom codec: stores text upper-cased."""

    name, extensions, loads_as = "upper", (".up",), "str"

    def prepare(self, data, **options):
        return data.upper().encode()

    def encode(self, prepared, fh, **options):
        fh.write(prepared)

    def decode(self, fh, *, limits, path=None, backend=None, **options):
        return fh.read().decode()


@pytest.mark.parametrize("ext", [".tif", ".tiff", ".TIF", ".npy"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32", "float64", "bool"])
@pytest.mark.parametrize("shape", [(5, 7), (3, 5, 7)])
def test_array_round_trip(disk, ext, dtype, shape) -> None:
    data = (np.arange(np.prod(shape)).reshape(shape) % 5).astype(dtype)
    disk.save(data, f"/x{ext}")
    out = disk.load(f"/x{ext}")
    assert out.dtype == data.dtype and out.shape == data.shape
    np.testing.assert_array_equal(out, data)


def test_tiff_stacks_are_imagej_hyperstacks(disk, tmp_path) -> None:
    disk.save(np.zeros((4, 6, 8), np.uint16), "/stack.tif")
    with tifffile.TiffFile(tmp_path / "stack.tif") as tif:
        assert tif.is_imagej
        assert tif.imagej_metadata["images"] == 4
        assert tif.series[0].axes == "ZYX"
    disk.save(np.zeros((4, 6, 8), np.float64), "/f64.tif")  # ImageJ cannot hold float64
    with tifffile.TiffFile(tmp_path / "f64.tif") as tif:
        assert not tif.is_imagej and tif.series[0].shape == (4, 6, 8)


def test_tiff_compression_passthrough(disk, tmp_path) -> None:
    data = np.zeros((64, 64), np.uint16)
    disk.save(data, "/c.tif", compression="zlib")
    with tifffile.TiffFile(tmp_path / "c.tif") as tif:
        assert tif.pages.first.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
    np.testing.assert_array_equal(disk.load("/c.tif"), data)
    assert os.path.getsize(tmp_path / "c.tif") < data.nbytes


def test_tiff_written_by_disk_reads_with_tifffile(disk, tmp_path) -> None:
    data = np.random.default_rng(0).integers(0, 4000, (2, 16, 16), dtype=np.uint16)
    disk.save(data, "/s.tif")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "s.tif"), data)


def test_tiff_single_plane_by_key(disk) -> None:
    data = np.arange(3 * 4 * 4, dtype=np.uint16).reshape(3, 4, 4)
    disk.save(data, "/s.tif")
    np.testing.assert_array_equal(disk.load("/s.tif", key=1), data[1])


@pytest.mark.parametrize(
    "data",
    [
        np.zeros((8, 9), np.uint8),
        np.arange(72, dtype=np.uint16).reshape(8, 9),
        np.ones((8, 9), bool),
        np.zeros((8, 9, 3), np.uint8),
        np.zeros((8, 9, 4), np.uint8),
    ],
)
def test_png_round_trip(disk, data) -> None:
    disk.save(data, "/p.png")
    out = disk.load("/p.png")
    assert out.dtype == data.dtype and out.shape == data.shape
    np.testing.assert_array_equal(out, data)


@pytest.mark.parametrize(
    "data",
    [
        np.zeros((2, 3, 4, 5), np.uint8),
        np.zeros((3, 8, 9), np.uint8),
        np.zeros((8, 9), np.float32),
        np.zeros(5, np.uint8),
        np.zeros((8, 9, 3), np.uint16),
    ],
)
def test_png_refuses_what_it_cannot_hold(disk, data, tmp_path) -> None:
    with pytest.raises(DataFormatError) as info:
        disk.save(data, "/p.png")
    assert "/p.png" in str(info.value) and "disk" in str(info.value)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("bad", [[1, 2, 3], "text", {"a": 1}, 3.5, b"bytes", None])
def test_image_extensions_refuse_non_arrays(disk, bad) -> None:
    for ext in (".tif", ".png", ".npy"):
        with pytest.raises(DataFormatError):
            disk.save(bad, f"/x{ext}")


def test_npz_round_trip(disk) -> None:
    arrays = {"a": np.arange(3), "mask": np.ones((2, 2), bool)}
    disk.save(arrays, "/d.npz")
    disk.save(arrays, "/c.npz", compressed=True)
    for path in ("/d.npz", "/c.npz"):
        out = disk.load(path)
        assert set(out) == {"a", "mask"}
        np.testing.assert_array_equal(out["mask"], arrays["mask"])
    with pytest.raises(DataFormatError):
        disk.save(np.arange(3), "/e.npz")


def test_json(disk, tmp_path) -> None:
    doc = {"count": np.int64(3), "mean": np.float32(1.5), "ids": np.arange(2), "ok": True}
    disk.save(doc, "/r.json")
    assert disk.load("/r.json") == {"count": 3, "mean": 1.5, "ids": [0, 1], "ok": True}
    text = json.dumps({"already": "serialised"}, indent=2)
    disk.save(text, "/t.json")
    assert (tmp_path / "t.json").read_text() == text
    assert disk.load("/t.json") == {"already": "serialised"}
    with pytest.raises(DataFormatError):
        disk.save("{not json", "/bad.json")
    with pytest.raises(DataFormatError):
        disk.save({"x": object()}, "/bad.json")


def test_csv(disk, tmp_path) -> None:
    rows = [{"well": "A01", "cells": 10}, {"well": "A02", "cells": 12}]
    disk.save(rows, "/rows.csv")
    frame = disk.load("/rows.csv")
    assert isinstance(frame, pd.DataFrame)
    assert frame.to_dict("records") == rows
    disk.save(frame, "/frame.csv")
    pd.testing.assert_frame_equal(disk.load("/frame.csv"), frame)
    disk.save(frame.to_csv(index=False), "/text.csv")
    pd.testing.assert_frame_equal(disk.load("/text.csv"), frame)
    disk.save([], "/empty.csv")
    assert disk.load("/empty.csv").empty
    with pytest.raises(DataFormatError):
        disk.save({"a": [1]}, "/dict.csv")


def test_text_and_bytes(disk) -> None:
    disk.save("héllo\n", "/t.txt")
    assert disk.load("/t.txt") == "héllo\n"
    disk.save(b"\x00\x01", "/b.bin")
    disk.save(bytearray(b"xy"), "/c.bin")
    assert disk.load("/b.bin") == b"\x00\x01" and disk.load("/c.bin") == b"xy"
    with pytest.raises(DataFormatError):
        disk.save(b"bytes", "/t.txt")
    with pytest.raises(DataFormatError):
        disk.save("text", "/b.bin")


def test_pickle_is_refused_unless_allowed(disk) -> None:
    disk.save({"any": [1, 2]}, "/o.pkl")
    with pytest.raises(PickleRefusedError) as info:
        disk.load("/o.pkl")
    assert isinstance(info.value, ValueError) and "/o.pkl" in str(info.value)
    assert disk.load("/o.pkl", allow_pickle=True) == {"any": [1, 2]}
    with pytest.raises(DataFormatError):
        disk.save(lambda x: x, "/f.pkl")


def test_npy_object_arrays_need_allow_pickle(disk) -> None:
    objects = np.array([{"a": 1}, None], dtype=object)
    with pytest.raises(DataFormatError):
        disk.save(objects, "/o.npy")
    disk.save(objects, "/o.npy", allow_pickle=True)
    with pytest.raises(PickleRefusedError):
        disk.load("/o.npy")
    assert disk.load("/o.npy", allow_pickle=True)[0] == {"a": 1}


def test_torch_files_need_allow_pickle(disk) -> None:
    torch = pytest.importorskip("torch")
    disk.save({"w": torch.ones(2)}, "/m.pt")
    with pytest.raises(PickleRefusedError):
        disk.load("/m.pt")
    assert disk.load("/m.pt", allow_pickle=True)["w"].sum().item() == 2


def test_unknown_extension(disk, tmp_path) -> None:
    for path in ("/x.foo", "/noext", "/x.tif.bak"):
        with pytest.raises(UnsupportedFormatError) as info:
            disk.save(np.zeros((2, 2)), path)
        assert path in str(info.value)
    (tmp_path / "data.foo").write_bytes(b"1")
    with pytest.raises(UnsupportedFormatError):
        disk.load("/data.foo")
    assert sorted(os.listdir(tmp_path)) == ["data.foo"]


def test_unknown_option_is_an_error(disk) -> None:
    with pytest.raises(DataFormatError, match="colour"):
        disk.save(np.zeros((2, 2), np.uint8), "/x.tif", colour="red")
    disk.save(np.zeros((2, 2), np.uint8), "/x.tif")
    with pytest.raises(DataFormatError, match="compression"):
        disk.load("/x.tif", compression="zlib")
    assert disk.load("/x.tif", allow_pickle=True).shape == (2, 2)  # accepted everywhere


@pytest.mark.parametrize("payload", [b"", b"II*\x00garbage-garbage", b"not a tiff at all"])
def test_corrupt_tiff(disk, tmp_path, payload) -> None:
    (tmp_path / "bad.tif").write_bytes(payload)
    with pytest.raises(CorruptDataError) as info:
        disk.load("/bad.tif")
    assert "/bad.tif" in str(info.value) and "disk" in str(info.value)


@pytest.mark.parametrize(
    "shape,dtype",
    [
        ((256, 256), "uint16"),
        ((4, 64, 64), "uint16"),
        ((4, 64, 64), "float64"),
        ((2, 3, 32, 32), "uint8"),
    ],
)
def test_truncated_tiff(disk, tmp_path, shape, dtype) -> None:
    disk.save(np.ones(shape, dtype), "/t.tif")
    raw = (tmp_path / "t.tif").read_bytes()
    (tmp_path / "t.tif").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CorruptDataError):
        disk.load("/t.tif")


@pytest.mark.parametrize(
    "name,payload",
    [
        ("bad.png", b"\x89PNG\r\n"),
        ("bad.npy", b"\x93NUMPY"),
        ("bad.json", b"{"),
        ("bad.npz", b"PK"),
        ("bad.txt", b"\xff\xfe\xfa"),
    ],
)
def test_corrupt_other_formats(disk, tmp_path, name, payload) -> None:
    (tmp_path / name).write_bytes(payload)
    with pytest.raises(CorruptDataError):
        disk.load(f"/{name}")


class _FakeGpuArray:
    __cuda_array_interface__ = {"shape": (2, 2), "typestr": "<f4", "data": (0, False), "version": 3}

    def __array__(self, dtype=None, copy=None):
        raise AssertionError("must not be copied to the host implicitly")


def test_host_conversion_refuses_gpu_arrays(disk) -> None:
    with pytest.raises(DataFormatError, match="GPU") as info:
        disk.save(_FakeGpuArray(), "/g.tif")
    assert "_FakeGpuArray" in str(info.value)


def test_host_conversion_of_array_likes() -> None:
    class ArrayLike:
        def __array__(self, dtype=None, copy=None):
            return np.ones((2, 2), np.uint8)

    assert to_host_array(ArrayLike()).shape == (2, 2)
    assert to_host_array(memoryview(np.arange(4, dtype=np.uint8))).tolist() == [0, 1, 2, 3]
    with pytest.raises(CodecRefusal):
        to_host_array(np.array([object()]).tolist())


def test_torch_tensors(disk) -> None:
    torch = pytest.importorskip("torch")
    cpu = torch.arange(12, dtype=torch.int16).reshape(3, 4)
    disk.save(cpu, "/t.tif")
    np.testing.assert_array_equal(disk.load("/t.tif"), cpu.numpy())


def _pyclesperanto() -> object:
    cle = pytest.importorskip("pyclesperanto", reason="pyclesperanto is not installed")
    if not hasattr(cle, "push") or not cle.list_available_devices():
        pytest.skip("pyclesperanto sees no OpenCL device (install pocl-opencl-icd)")
    return cle


def _framework_array(framework: str, values: np.ndarray) -> tuple[object, object]:
    """(array of ``framework`` holding ``values``, the imported framework); skips if absent."""
    if framework == "torch-grad":
        torch = pytest.importorskip("torch")
        return torch.tensor(values.astype(np.float32), requires_grad=True), torch
    if framework == "jax":
        jax = pytest.importorskip("jax")
        return jax.numpy.asarray(values), jax
    if framework == "tensorflow":
        tf = pytest.importorskip("tensorflow")
        return tf.constant(values), tf
    cle = _pyclesperanto()
    return cle.push(values), cle


@pytest.mark.parametrize("ext", [".tif", ".npy"])
@pytest.mark.parametrize("framework", ["torch-grad", "jax", "tensorflow", "pyclesperanto"])
def test_any_memory_type_is_written_as_numpy(disk, tmp_path, framework, ext) -> None:
    values = (np.arange(3 * 5 * 7).reshape(3, 5, 7) % 251).astype(np.float32)
    array, fw = _framework_array(framework, values)
    disk.save(array, f"/x{ext}")
    # read back with the format's own library, not through the backend under test
    real = tmp_path / f"x{ext}"
    raw = tifffile.imread(real) if ext == ".tif" else np.load(real)
    assert raw.dtype == np.float32 and raw.shape == values.shape
    np.testing.assert_array_equal(raw, values)
    out = disk.load(f"/x{ext}")
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, values)
    if framework == "torch-grad":
        # the caller's tensor still takes part in autograd
        assert array.requires_grad and array.grad_fn is None
        (array * 2).sum().backward()
        assert array.grad is not None


def test_framework_arrays_in_npz(disk) -> None:
    torch = pytest.importorskip("torch")
    grad = torch.ones(2, 2, requires_grad=True)
    disk.save({"weights": grad, "plain": np.arange(3)}, "/w.npz")
    out = disk.load("/w.npz")
    np.testing.assert_array_equal(out["weights"], np.ones((2, 2), np.float32))
    np.testing.assert_array_equal(out["plain"], np.arange(3))


def test_registry_rules() -> None:
    registry = default_codecs()
    assert registry.for_name("A01.TIFF").name == "tiff"
    assert registry.for_name("x.ome.tif").name == "tiff"
    assert registry.for_name("noext") is None and registry.for_name(".tif") is None
    with pytest.raises(ValueError):
        registry.register(registry.for_name("x.tif"))

    custom = CodecRegistry([Upper()])
    assert custom.extensions() == [".up"]
    with pytest.raises(ValueError):
        custom.register(type("Bad", (Upper,), {"extensions": ("UP",)})())


def test_custom_codec_in_backend(tmp_path) -> None:
    registry = default_codecs()

    registry.register(Upper())
    backend = DiskStorageBackend(tmp_path, codecs=registry)
    backend.save("shout", "/a.up")
    assert backend.load("/a.up") == "SHOUT"


_TIFF = default_codecs().for_name("a.tif")


@pytest.mark.parametrize(
    ("raised", "becomes"),
    [
        (CodecRefusal("no"), "DataFormatError"),
        (MemoryError(), "ResourceLimitError"),
        (OSError("a bare OSError from a decoder"), "CorruptDataError"),
        (ValueError("bad bytes"), "CorruptDataError"),
        (KeyError("x"), "CorruptDataError"),
    ],
)
def test_decoding_maps_what_a_decoder_raises(raised: Exception, becomes: str) -> None:
    from hcsflow.storage._codecs import decoding

    with pytest.raises(HcsflowError) as info, decoding(_TIFF, "/a.tif", "disk"):
        raise raised
    assert type(info.value).__name__ == becomes
    assert info.value.__cause__ is raised
    assert "/a.tif" in str(info.value) and "disk" in str(info.value)


@pytest.mark.parametrize(
    "raised",
    [
        InvalidPathError("ours", path="/a.tif", backend="disk"),
        ImportError("an optional package"),
        FileNotFoundError(2, "gone"),
        KeyboardInterrupt(),
    ],
)
def test_decoding_lets_some_errors_pass_unchanged(raised: BaseException) -> None:
    from hcsflow.storage._codecs import decoding

    with pytest.raises(type(raised)) as info, decoding(_TIFF, "/a.tif", "disk"):
        raise raised
    assert info.value is raised


def test_decoding_maps_os_errors_through_the_callers_function() -> None:
    from hcsflow.storage._codecs import decoding
    from hcsflow.storage._decode import PickleNotAllowed

    mapped = NotFoundError("mapped", path="/a.tif", backend="disk")
    with (
        pytest.raises(NotFoundError) as info,
        decoding(_TIFF, "/a.tif", "disk", os_error=lambda e: mapped),
    ):
        raise FileNotFoundError(2, "gone")
    assert info.value is mapped
    with (
        pytest.raises(PickleRefusedError, match="allow_pickle=True"),
        decoding(_TIFF, "/a.npy", "disk"),
    ):
        raise PickleNotAllowed("the file holds pickled objects")
    with decoding(_TIFF, "/a.tif", "disk"):
        pass  # nothing raised: nothing to map
