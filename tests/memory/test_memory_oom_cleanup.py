"""OOM recovery with each framework's real exception type, and GPU cache cleanup."""

from __future__ import annotations

import numpy as np
import pytest

from hcsflow.errors import MemoryTypeError, OutOfMemoryRecoveryError
from hcsflow.memory import (
    MemoryType,
    cleanup_all_gpu_frameworks,
    cleanup_gpu_memory_by_framework,
    oom_framework,
    record_conversions,
)
from hcsflow.memory import decorators as deco

M = MemoryType


def _real_oom(mt: MemoryType, mem) -> BaseException:
    """An instance of the framework's own out-of-memory exception."""
    if mt is M.NUMPY:
        return MemoryError("Unable to allocate 1.00 TiB")
    fw = mem.need(mt)
    if mt is M.TORCH:
        return fw.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    if mt is M.JAX:
        from jax.errors import JaxRuntimeError

        return JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")
    if mt is M.TENSORFLOW:
        return fw.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
    if mt is M.PYCLESPERANTO:
        try:
            fw.create((64, 65536, 65536), dtype=np.float32)
        except RuntimeError as exc:  # pyclesperanto's real allocation failure
            return exc
        pytest.skip("the OpenCL device accepted a 1 TiB buffer")
    raise AssertionError(mt)


FRAMEWORKS = [M.NUMPY, M.TORCH, M.JAX, M.TENSORFLOW, M.PYCLESPERANTO]


@pytest.mark.parametrize("mt", FRAMEWORKS, ids=str)
def test_oom_framework_recognises_real_errors(mem, mt) -> None:
    assert oom_framework(_real_oom(mt, mem)) is mt


def test_oom_framework_ignores_other_errors() -> None:
    assert oom_framework(RuntimeError("boom")) is None
    assert oom_framework(ValueError("RESOURCE_EXHAUSTED")) is None
    assert oom_framework(OutOfMemoryRecoveryError("x", ["a"])) is None


def _decorated(mt, mem, fail_when, **options):
    """A decorated identity that raises the real OOM while ``fail_when(z_depth, call)``."""
    error = _real_oom(mt, mem)
    calls: list[int] = []

    @deco.memory_types(input_type=mt, output_type=mt, **options)
    def work(image_stack):
        calls.append(int(image_stack.shape[0]))
        if fail_when(int(image_stack.shape[0]), len(calls)):
            raise error
        return image_stack

    return work, calls, error


def _stack() -> np.ndarray:
    return np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)


@pytest.mark.parametrize("mt", FRAMEWORKS, ids=str)
def test_free_cache_and_retry(mem, mt) -> None:
    work, calls, _ = _decorated(mt, mem, lambda z, n: n == 1, oom_recovery=True)
    with record_conversions() as rec:
        out = work(_stack())
    np.testing.assert_array_equal(mem.values_of(out, mt), _stack())
    assert calls == [3, 3]
    assert [r for r in rec.routes() if r.startswith("oom:")] == ["oom:free_cache_retry"]


@pytest.mark.parametrize("mt", FRAMEWORKS, ids=str)
def test_slice_by_slice_fallback(mem, mt) -> None:
    work, calls, _ = _decorated(mt, mem, lambda z, n: z > 1, oom_recovery=True)
    with record_conversions() as rec:
        out = work(_stack())
    np.testing.assert_array_equal(mem.values_of(out, mt), _stack())
    assert calls == [3, 3, 1, 1, 1]
    oom = [r for r in rec.routes() if r.startswith("oom:")]
    assert oom == ["oom:free_cache_retry", "oom:slice_by_slice"]


@pytest.mark.parametrize("mt", FRAMEWORKS, ids=str)
def test_everything_fails_tells_the_whole_story(mem, mt) -> None:
    work, calls, error = _decorated(mt, mem, lambda z, n: True, oom_recovery=True)
    with pytest.raises(OutOfMemoryRecoveryError) as info:
        work(_stack())
    err = info.value
    assert isinstance(err, MemoryError)
    assert err.__cause__ is error
    assert len(err.attempts) == 4
    assert err.attempts[0].startswith("full stack")
    assert err.attempts[1].startswith("retry after freeing caches")
    assert err.attempts[2].startswith("slice by slice")
    assert "CPU fallback: disabled" in err.attempts[3]
    assert "work" in str(err)
    assert calls == [3, 3, 3] or calls[:3] == [3, 3, 1]


def test_no_recovery_propagates_the_original(mem) -> None:
    work, calls, error = _decorated(M.NUMPY, mem, lambda z, n: True)
    with pytest.raises(MemoryError) as info:
        work(_stack())
    assert info.value is error and calls == [3]


def test_non_oom_errors_are_not_retried() -> None:
    calls = []

    @deco.numpy(oom_recovery=True)
    def broken(image_stack):
        calls.append(1)
        raise ValueError("bad parameter")

    with pytest.raises(ValueError, match="bad parameter"):
        broken(_stack())
    assert calls == [1]


def test_slice_fallback_can_be_disabled_and_cpu_fallback_needs_a_gpu(mem) -> None:
    work, calls, _ = _decorated(
        M.NUMPY,
        mem,
        lambda z, n: True,
        oom_recovery=True,
        oom_slice_fallback=False,
        cpu_fallback=True,
    )
    with pytest.raises(OutOfMemoryRecoveryError) as info:
        work(_stack())
    assert calls == [3, 3]
    assert "disabled (oom_slice_fallback=False)" in info.value.attempts[2]
    assert "CPU fallback: not possible" in info.value.attempts[3]


def test_slice_fallback_refuses_special_outputs(mem) -> None:
    error = MemoryError("no memory")

    @deco.numpy(oom_recovery=True)
    def with_extra(image_stack):
        if image_stack.shape[0] > 1:
            raise error
        return image_stack, {"n": 1}

    with pytest.raises(OutOfMemoryRecoveryError, match="special outputs"):
        with_extra(_stack())


@pytest.mark.parametrize("mt", [M.TORCH, M.JAX, M.TENSORFLOW, M.PYCLESPERANTO], ids=str)
def test_cleanup_of_a_loaded_framework(mem, mt) -> None:
    mem.need(mt)
    assert cleanup_gpu_memory_by_framework(mt) is True
    assert cleanup_gpu_memory_by_framework(mt.value, device_id=0) is True


def test_cleanup_numpy_and_unknown() -> None:
    assert cleanup_gpu_memory_by_framework("numpy") is False
    with pytest.raises(MemoryTypeError):
        cleanup_gpu_memory_by_framework("opencl")


def test_cleanup_all_reports_each_framework(mem) -> None:
    report = cleanup_all_gpu_frameworks()
    assert set(report) == {"torch", "cupy", "jax", "tensorflow", "pyclesperanto"}
    import sys

    for name, ran in report.items():
        assert ran == (name in sys.modules)


SPEC_CLEANERS = {
    "cleanup_pytorch_gpu": M.TORCH,
    "cleanup_cupy_gpu": M.CUPY,
    "cleanup_tensorflow_gpu": M.TENSORFLOW,
    "cleanup_jax_gpu": M.JAX,
    "cleanup_pyclesperanto_gpu": M.PYCLESPERANTO,
}


def test_per_framework_cleanup_functions_import_nothing() -> None:
    """The specification's cleanup_<framework>_gpu functions, in a fresh interpreter."""
    import subprocess
    import sys

    code = (
        "import sys, hcsflow.memory as m\n"
        f"names = {sorted(SPEC_CLEANERS)!r}\n"
        "ran = [getattr(m, n)() for n in names] + [getattr(m, n)(device_id=0) for n in names]\n"
        "loaded = [f for f in ('torch', 'cupy', 'jax', 'tensorflow', 'pyclesperanto')"
        " if f in sys.modules]\n"
        "assert all(n in m.__all__ for n in names), names\n"
        "print(ran, loaded)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == f"{[False] * 10} []"


@pytest.mark.parametrize("name", sorted(SPEC_CLEANERS))
def test_per_framework_cleanup_of_a_loaded_framework(mem, name) -> None:
    import hcsflow.memory

    mt = SPEC_CLEANERS[name]
    if mt is M.CUPY:
        pytest.importorskip("cupy", reason="cupy is not installed")
    else:
        mem.need(mt)
    assert getattr(hcsflow.memory, name)() is True
