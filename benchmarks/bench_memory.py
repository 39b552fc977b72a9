"""Memory-type conversion benchmarks: every installed CPU pair vs the framework's own idiom.

A 100x1024x1024 float32 stack (400 MiB) is converted by ``convert_memory`` and by the idiom
a user would write; for zero-copy pairs also against the fastest zero-copy code (the idiom
itself, or DLPack where the idiom copies).  Every pair is also timed on a 10x smaller stack:
for zero-copy pairs a ``big/small`` ratio near 1 shows the cost does not grow with the array
(O(1)).  Microsecond calls are timed in loops of thousands of calls, best of 31 repeats, the
functions of a pair alternating (see ``_time_pair``).  ``stack_slices`` of 100 slices is timed
against ``np.stack``.  Results go to ``benchmarks/results/memory.json``.
"""

from __future__ import annotations

import importlib.util
import os
import time
import timeit
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks._common import print_table, write_results
from benchmarks._common import timeit as best_time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SHAPE = (100, 1024, 1024)
SMALL = (10, 1024, 1024)


def _frameworks() -> dict[str, Any]:
    found: dict[str, Any] = {"numpy": np}
    # pyclesperanto must be loaded before tensorflow (its OpenCL activation crashes after it).
    for name in ("pyclesperanto", "torch", "jax", "tensorflow"):
        if importlib.util.find_spec(name) is not None:
            found[name] = importlib.import_module(name)
    if "jax" in found:
        import jax.dlpack  # noqa: F401
    return found


def _idioms(fw: dict[str, Any]) -> dict[tuple[str, str], tuple[str, Callable[[Any], Any]]]:
    """The code a user would write for each pair without hcsflow."""
    out: dict[tuple[str, str], tuple[str, Callable[[Any], Any]]] = {}
    torch, jax, tf, cle = (fw.get(n) for n in ("torch", "jax", "tensorflow", "pyclesperanto"))
    if torch is not None:
        out["numpy", "torch"] = ("torch.from_numpy", torch.from_numpy)
        out["torch", "numpy"] = ("Tensor.numpy", lambda t: t.numpy())
    if jax is not None:
        out["numpy", "jax"] = ("jnp.asarray", jax.numpy.asarray)
        out["jax", "numpy"] = ("np.asarray", np.asarray)
    if tf is not None:
        out["numpy", "tensorflow"] = ("tf.convert_to_tensor", tf.convert_to_tensor)
        out["tensorflow", "numpy"] = ("Tensor.numpy", lambda t: t.numpy())
    if torch is not None and jax is not None:
        out["torch", "jax"] = ("jax.dlpack.from_dlpack", jax.dlpack.from_dlpack)
        out["jax", "torch"] = ("torch.from_dlpack", torch.from_dlpack)
    if torch is not None and tf is not None:
        out["torch", "tensorflow"] = (
            "tf dlpack(to_dlpack)",
            lambda t: tf.experimental.dlpack.from_dlpack(torch.utils.dlpack.to_dlpack(t)),
        )
        out["tensorflow", "torch"] = ("torch.from_dlpack", torch.from_dlpack)
    if jax is not None and tf is not None:
        out["jax", "tensorflow"] = (
            "tf dlpack(__dlpack__)",
            lambda j: tf.experimental.dlpack.from_dlpack(j.__dlpack__()),
        )
        out["tensorflow", "jax"] = ("jax.dlpack.from_dlpack", jax.dlpack.from_dlpack)
    if cle is not None:
        out["numpy", "pyclesperanto"] = ("cle.push", cle.push)
        out["pyclesperanto", "numpy"] = ("cle.pull", cle.pull)
        for other in ("torch", "jax", "tensorflow"):
            if other in fw:
                out[other, "pyclesperanto"] = (
                    "cle.push(np.asarray)",
                    lambda x: cle.push(np.asarray(x)),
                )
                out["pyclesperanto", other] = (
                    f"{other} from cle.pull",
                    _from_host(other, fw),
                )
    return out


def _from_host(name: str, fw: dict[str, Any]) -> Callable[[Any], Any]:
    cle = fw["pyclesperanto"]
    if name == "torch":
        return lambda x: fw["torch"].from_numpy(cle.pull(x))
    if name == "jax":
        return lambda x: fw["jax"].numpy.asarray(cle.pull(x))
    return lambda x: fw["tensorflow"].convert_to_tensor(cle.pull(x))


def _zero_copy_idioms(fw: dict[str, Any]) -> dict[tuple[str, str], Callable[[Any], Any]]:
    """The fastest zero-copy code for pairs whose everyday idiom copies."""
    out: dict[tuple[str, str], Callable[[Any], Any]] = {}
    jax, tf = fw.get("jax"), fw.get("tensorflow")
    if jax is not None:
        out["numpy", "jax"] = jax.dlpack.from_dlpack
    if tf is not None:
        out["numpy", "tensorflow"] = lambda a: tf.experimental.dlpack.from_dlpack(a.__dlpack__())
        out["tensorflow", "numpy"] = np.from_dlpack
    return out


def _time_pair(fns: list[Callable[[], Any]]) -> list[float]:
    """Best seconds per call of each of ``fns``, their repeats alternating.

    Sub-millisecond calls all run the same number of calls per repeat, enough for ~5 ms of
    the slowest of them, best of 31 repeats (many short repeats find the machine's quiet
    moments); slower calls (copies of the big stack) run once per repeat, best of 5.  Like
    :mod:`timeit`, the garbage collector is off while timing.  Alternating lets no function
    alone absorb a noisy spell of the machine or the deferred cost of what an earlier one
    allocated.
    """
    single = []
    for fn in fns:
        t0 = time.perf_counter()
        fn()
        t = time.perf_counter() - t0
        if t < 1e-3:  # the first call may have warmed a cache: size the loop on later ones
            t = min(timeit.Timer(fn).repeat(repeat=3, number=1))
        single.append(t)
    fast = [t for t in single if t < 1e-3]
    number = max(1, min(20_000, int(0.005 / max(fast)))) if fast else 1
    numbers = [number if t < 1e-3 else 1 for t in single]
    best = [float("inf")] * len(fns)
    for r in range(31 if fast else 5):
        for i, fn in enumerate(fns):
            if numbers[i] == 1 and r >= 5:
                continue
            best[i] = min(best[i], timeit.Timer(fn).timeit(numbers[i]) / numbers[i])
    return best


def _conversion_rows(fw: dict[str, Any]) -> list[dict[str, Any]]:
    from hcsflow.memory import aligned_empty, convert_memory, record_conversions

    names = list(fw)
    idioms = _idioms(fw)
    zero_copy_idioms = _zero_copy_idioms(fw)
    rows = []
    sources: dict[tuple[str, tuple[int, ...]], Any] = {}
    for shape in (SHAPE, SMALL):
        base = aligned_empty(shape, np.float32)
        base[...] = 1.0
        for name in names:
            sources[name, shape] = convert_memory(base, "numpy", name)
    for src in names:
        for dst in names:
            if src == dst:
                continue
            data, small = sources[src, SHAPE], sources[src, SMALL]
            with record_conversions() as rec:
                convert_memory(data, src, dst)
            route = rec.events[0].route
            idiom_name, idiom = idioms.get((src, dst), ("-", None))
            zero_copy = rec.bytes_copied == 0
            zc_idiom = zero_copy_idioms.get((src, dst), idiom) if zero_copy else None
            fns: list[Callable[[], Any]] = [
                lambda d=data, s=src, t=dst: convert_memory(d, s, t),
                lambda d=small, s=src, t=dst: convert_memory(d, s, t),
            ]
            if idiom is not None:
                fns.append(lambda d=data, f=idiom: f(d))
            if zc_idiom is not None:
                fns.append(lambda d=data, f=zc_idiom: f(d))
            times = _time_pair(fns) + [float("nan")] * 2
            t_ours, t_small = times[0], times[1]
            t_idiom = times[2] if idiom is not None else float("nan")
            t_zc = times[3] if idiom is not None else times[2]
            rows.append(
                {
                    "pair": f"{src}->{dst}",
                    "route": route,
                    "hcsflow_ms": t_ours * 1e3,
                    "idiom": idiom_name,
                    "idiom_ms": t_idiom * 1e3,
                    "vs_idiom": t_ours / t_idiom,
                    "zero_copy_idiom_ms": t_zc * 1e3,
                    "vs_zero_copy": t_ours / t_zc,
                    "small_ms": t_small * 1e3,
                    "big/small": t_ours / t_small,
                    "bytes_copied": rec.bytes_copied,
                }
            )
    return rows


def _stack_rows() -> list[dict[str, Any]]:
    from hcsflow.memory import stack_slices

    rng = np.random.default_rng(0)
    planes = [rng.random((1024, 1024), dtype=np.float32) for _ in range(100)]
    rows = []
    t_np = best_time(lambda: np.stack(planes), repeat=7)
    t_ours = best_time(lambda: stack_slices(planes, "numpy"), repeat=7)
    rows.append(
        {
            "case": "100 x 1024x1024 float32 -> numpy",
            "stack_slices_ms": t_ours * 1e3,
            "np.stack_ms": t_np * 1e3,
            "ratio": t_ours / t_np,
        }
    )
    if importlib.util.find_spec("torch") is not None:
        import torch

        t_torch = best_time(lambda: torch.from_numpy(np.stack(planes)), repeat=7)
        t_ours_t = best_time(lambda: stack_slices(planes, "torch"), repeat=7)
        rows.append(
            {
                "case": "100 x 1024x1024 float32 -> torch (vs from_numpy(np.stack))",
                "stack_slices_ms": t_ours_t * 1e3,
                "np.stack_ms": t_torch * 1e3,
                "ratio": t_ours_t / t_torch,
            }
        )
    return rows


def main() -> None:
    """Run the memory benchmarks, print tables and write ``results/memory.json``."""
    fw = _frameworks()
    versions = {n: getattr(m, "__version__", "?") for n, m in fw.items()}
    conversions = _conversion_rows(fw)
    print_table("convert_memory, 100x1024x1024 float32 (small = 10x1024x1024)", conversions)
    stacks = _stack_rows()
    print_table("stack_slices vs np.stack", stacks)
    path = write_results("memory", conversions, stack=stacks, versions=versions, shape=SHAPE)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
