"""Memory-type decorators: conversion, validation, dtype policy, devices, pickling."""

from __future__ import annotations

import importlib
import inspect
import multiprocessing
import pickle
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from hcsflow.errors import DeviceError, DtypeError, MemoryTypeError, ShapeError
from hcsflow.memory import (
    MemoryType,
    aligned_empty,
    detect_memory_type,
    record_conversions,
    use_device,
)
from hcsflow.memory import decorators as deco
from hcsflow.memory.decorators import memory_types

M = MemoryType
CPU_TYPES = [M.NUMPY, M.TORCH, M.JAX, M.TENSORFLOW, M.PYCLESPERANTO]
DECORATOR = {
    M.NUMPY: deco.numpy,
    M.TORCH: deco.torch,
    M.JAX: deco.jax,
    M.TENSORFLOW: deco.tensorflow,
    M.PYCLESPERANTO: deco.pyclesperanto,
    M.CUPY: deco.cupy,
}


@pytest.fixture(scope="module")
def funcs(request):
    here = str(Path(__file__).parent)
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(here)
    request.addfinalizer(mp.undo)
    return importlib.import_module("_memory_pickle_funcs")


def _stack(dtype: str = "float32") -> np.ndarray:
    return np.arange(24, dtype=dtype).reshape(2, 3, 4)


def test_bare_decorator_keeps_identity(funcs) -> None:
    f = funcs.add_one
    assert f.__name__ == "add_one"
    assert f.__doc__ == "Add ``amount`` to every pixel."
    assert str(inspect.signature(f)) == str(inspect.signature(f.__wrapped__))
    assert f.input_memory_type is M.NUMPY and f.output_memory_type is M.NUMPY
    np.testing.assert_array_equal(f(_stack(), amount=2), _stack() + 2)


def test_pickle_by_qualified_name(funcs) -> None:
    assert pickle.loads(pickle.dumps(funcs.add_one)) is funcs.add_one


def test_runs_in_a_spawned_process_pool(funcs, monkeypatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        out = pool.submit(funcs.add_one, _stack("uint8"), 3).result(timeout=120)
        native = pool.submit(funcs.double_native, _stack("uint8")).result(timeout=120)
    np.testing.assert_array_equal(out, _stack("uint8") + 3)
    assert out.dtype == np.uint8
    assert native.dtype == np.float64


@pytest.mark.parametrize("declared", CPU_TYPES, ids=str)
@pytest.mark.parametrize("given", CPU_TYPES, ids=str)
def test_any_input_reaches_the_declared_type(mem, declared, given) -> None:
    mem.need(declared)
    seen = []

    @DECORATOR[declared]
    def double(image_stack):
        seen.append(detect_memory_type(image_stack))
        return image_stack * 2

    out = double(mem.make(given, _stack()))
    assert seen == [declared]
    assert detect_memory_type(out) is declared
    np.testing.assert_array_equal(mem.values_of(out, declared), _stack() * 2)


def test_numpy_to_torch_input_is_zero_copy(mem) -> None:
    torch = mem.need(M.TORCH)
    data = np.empty((2, 3, 4), np.float32)
    ptrs = []

    @deco.torch
    def ident(x):
        ptrs.append(x.data_ptr())
        return x

    with record_conversions() as rec:
        ident(data)
    assert ptrs == [data.ctypes.data]
    assert rec.bytes_copied == 0
    assert torch.is_tensor(ident(data))


def test_mixed_declaration(mem) -> None:
    torch = mem.need(M.TORCH)

    @memory_types(input_type="numpy", output_type="torch")
    def to_tensor(image_stack):
        assert isinstance(image_stack, np.ndarray)
        return torch.from_numpy(image_stack.copy())

    out = to_tensor(torch.ones(1, 2, 2))
    assert isinstance(out, torch.Tensor)
    assert to_tensor.input_memory_type is M.NUMPY
    assert to_tensor.output_memory_type is M.TORCH


def test_returning_the_wrong_type_raises(mem) -> None:
    mem.need(M.TORCH)

    @deco.torch
    def bad(image_stack):
        return image_stack.numpy()

    with pytest.raises(
        MemoryTypeError, match="returned a numpy array; declared output type is torch"
    ):
        bad(_stack())

    @deco.numpy
    def not_array(image_stack):
        return [1, 2]

    with pytest.raises(MemoryTypeError, match="returned list"):
        not_array(_stack())


def test_output_must_be_3d() -> None:
    @deco.numpy
    def project(image_stack):
        return image_stack.max(axis=0)

    with pytest.raises(ShapeError, match=r"returned shape \(3, 4\)"):
        project(_stack())


@pytest.mark.parametrize("shape", [(5,), (2, 3), (1, 2, 3, 4)])
def test_input_must_be_3d(shape) -> None:
    with pytest.raises(ShapeError, match=f"{len(shape)}-D"):
        deco.numpy(lambda x: x)(np.zeros(shape))


def test_non_array_input() -> None:
    with pytest.raises(MemoryTypeError, match="expects a 3-D.*builtins.list"):
        deco.numpy(lambda x: x)([[[1.0]]])
    with pytest.raises(TypeError, match="needs an image stack"):
        deco.numpy(lambda x: x)()


def test_image_by_keyword() -> None:
    @deco.numpy
    def f(image_stack, offset=0):
        return image_stack + offset

    np.testing.assert_array_equal(f(image_stack=_stack(), offset=1), _stack() + 1)


def test_decoration_time_validation() -> None:
    with pytest.raises(MemoryTypeError, match="unknown input_type 'pytorch'"):
        memory_types(input_type="pytorch", output_type="numpy")
    with pytest.raises(MemoryTypeError, match="unknown output_type"):
        deco.torch(output_type="nump")
    with pytest.raises(DtypeError, match="dtype_policy"):
        deco.numpy(dtype_policy="keep")
    with pytest.raises(DtypeError, match="not a numeric"):
        deco.numpy(dtype_policy="U3")
    with pytest.raises(TypeError, match="oom_recovery must be True or False"):
        deco.torch(oom_recovery="yes")
    with pytest.raises(TypeError, match="keyword arguments only"):
        deco.torch("numpy")
    with pytest.raises(TypeError, match="wrap functions"):
        memory_types(input_type="numpy", output_type="numpy")(42)


# ----------------------------------------------------------------------------- dtype policy


@pytest.mark.parametrize("mt", CPU_TYPES, ids=str)
def test_preserve_rounds_and_clips_into_uint16(mem, mt) -> None:
    mem.need(mt)

    @DECORATOR[mt]
    def shift(image_stack):
        return values

    values = mem.make(mt, np.array([[[-1.0, 2.5, 3.5, 70000.4]]], np.float32))
    data = np.zeros((1, 1, 4), np.uint16)
    out = mem.values_of(shift(data), mt)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, [[[0, 2, 4, 65535]]])


@pytest.mark.parametrize("mt", [M.NUMPY, M.TORCH, M.JAX, M.TENSORFLOW], ids=str)
def test_preserve_refuses_nan_to_integer(mem, mt) -> None:
    mem.need(mt)

    result = mem.make(mt, np.array([[[1.0, np.nan], [0.0, 2.0]]], np.float32))

    @DECORATOR[mt]
    def nan(image_stack):
        return result

    with pytest.raises(DtypeError, match="NaN"):
        nan(np.ones((1, 2, 2), np.uint8))


@pytest.mark.parametrize("mt", [M.NUMPY, M.TORCH, M.JAX, M.TENSORFLOW], ids=str)
def test_bool_mask_stays_bool(mem, mt) -> None:
    mem.need(mt)

    mask = np.array([[[True, False, True]]])
    inverted = mem.make(mt, 1.0 - mask.astype(np.float32))
    halved = mem.make(mt, mask * np.float32(0.5))

    @DECORATOR[mt]
    def invert(image_stack):
        return inverted

    @DECORATOR[mt]
    def halves(image_stack):
        return halved

    out = mem.values_of(invert(mask), mt)
    assert out.dtype == np.bool_
    np.testing.assert_array_equal(out, ~mask)
    with pytest.raises(DtypeError, match="values other than 0 and 1"):
        halves(mask)


def test_native_and_explicit_policies() -> None:
    @deco.numpy(dtype_policy="native")
    def native(image_stack):
        return image_stack / 2

    @deco.numpy(dtype_policy="uint8")
    def explicit(image_stack):
        return image_stack - 1.0

    assert native(np.ones((1, 1, 2), np.uint8)).dtype == np.float64
    out = explicit(np.zeros((1, 1, 2), np.float32))
    assert out.dtype == np.uint8 and out.max() == 0


def test_int_labels_beyond_float32_precision_refused() -> None:
    @deco.numpy
    def labels(image_stack):
        return np.full(image_stack.shape, 2**24 + 1, dtype=np.int64)

    with pytest.raises(DtypeError, match="not exact in float32"):
        labels(np.zeros((1, 1, 1), np.float32))


def test_float_overflow_to_float16_refused() -> None:
    @deco.numpy
    def big(image_stack):
        return image_stack.astype(np.float32) + 1e6

    with pytest.raises(DtypeError, match="overflow float16"):
        big(np.zeros((1, 1, 1), np.float16))


def test_complex_to_real_refused() -> None:
    @deco.numpy
    def fft(image_stack):
        return np.fft.fftn(image_stack)

    with pytest.raises(DtypeError, match="imaginary"):
        fft(np.ones((1, 2, 2), np.float32))


def test_int32_clip_does_not_wrap() -> None:
    @deco.numpy
    def huge(image_stack):
        return image_stack.astype(np.float32) + 3e9

    out = huge(np.zeros((1, 1, 1), np.int32))
    assert out.dtype == np.int32 and out[0, 0, 0] == 2147483520  # largest float32 <= int32 max


# ----------------------------------------------------------------------------- options


def test_slice_by_slice(mem) -> None:
    calls = []

    @deco.numpy(slice_by_slice=True)
    def per_plane(plane):
        calls.append(plane.shape)
        return plane * 2

    out = per_plane(_stack())
    assert calls == [(3, 4), (3, 4)]
    np.testing.assert_array_equal(out, _stack() * 2)

    @deco.numpy(slice_by_slice=True)
    def wrong(plane):
        return plane[None]

    with pytest.raises(ShapeError, match="plane 0"):
        wrong(_stack())


def test_special_outputs_pass_through() -> None:
    @deco.numpy
    def with_counts(image_stack):
        return image_stack * 1.5, {"count": 3}, [1, 2]

    main, counts, extra = with_counts(np.ones((1, 2, 2), np.uint8))
    assert main.dtype == np.uint8 and main[0, 0, 0] == 2
    assert counts == {"count": 3} and extra == [1, 2]


def test_read_only_input_to_jax_is_copied_and_recorded(mem) -> None:
    mem.need(M.JAX)
    data = aligned_empty((2, 3, 4), np.float32)
    data[...] = _stack()
    data.flags.writeable = False

    @deco.jax
    def ident(image_stack):
        return image_stack

    with record_conversions() as rec:
        out = ident(data)
    np.testing.assert_array_equal(np.asarray(out), data)
    assert rec.routes()[0] == "host_copy"
    assert "read-only" in rec.events[0].detail

    @deco.jax(allow_cpu_roundtrip=False)
    def strict(image_stack):
        return image_stack

    with pytest.raises(Exception, match="read-only"):
        strict(data)


def test_requires_grad_tensor_into_numpy_function(mem) -> None:
    torch = mem.need(M.TORCH)
    t = torch.ones(1, 2, 2, requires_grad=True)
    np.testing.assert_array_equal(deco.numpy(lambda x: x + 1)(t), np.full((1, 2, 2), 2.0))


def test_use_device(mem) -> None:
    torch = mem.need(M.TORCH)

    @deco.torch
    def where(image_stack):
        return image_stack

    with use_device(None):
        assert where(_stack()).device.type == "cpu"
    if torch.cuda.device_count() == 0:
        with use_device(0), pytest.raises(DeviceError, match="gpu_id 0 requested for torch"):
            where(_stack())
    with pytest.raises(DeviceError), use_device("0"):  # type: ignore[arg-type]
        pass


def test_use_device_is_per_thread() -> None:
    from hcsflow.memory import current_device

    seen = {}
    ready = threading.Event()

    def other() -> None:
        ready.wait()
        seen["other"] = current_device()

    t = threading.Thread(target=other)
    t.start()
    with use_device(3):
        ready.set()
        t.join()
        seen["main"] = current_device()
    assert seen == {"other": None, "main": 3}


def test_concurrent_calls(mem) -> None:
    mem.need(M.TORCH)

    @deco.torch
    def scale(image_stack, k):
        return image_stack * k

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda k: scale(_stack(), k), range(16)))
    for k, r in enumerate(results):
        np.testing.assert_array_equal(r.numpy(), _stack() * k)


@pytest.mark.parametrize("mt", [M.TORCH, M.JAX, M.TENSORFLOW], ids=str)
def test_negative_stride_and_non_contiguous_inputs(mem, mt) -> None:
    mem.need(mt)

    @DECORATOR[mt]
    def ident(image_stack):
        return image_stack

    base = np.arange(2 * 4 * 6, dtype=np.float32).reshape(2, 4, 6)
    for view in (base[:, ::-1, :], base[:, :, ::2]):
        with record_conversions() as rec:
            out = ident(view)
        np.testing.assert_array_equal(mem.values_of(out, mt), view)
        assert rec.events[0].route in ("dlpack", "host_copy")
        if rec.events[0].route == "host_copy":
            assert rec.events[0].bytes_copied == view.nbytes
