"""Executors for well tasks: in-process, threads, local processes, any Dask cluster.

Every kind is a :class:`concurrent.futures.Executor` wrapped in a :class:`WellPool`,
which adds what a run needs around it: shutting down (politely at the end, at once on
a signal, so that no worker process outlives the run), and, for local processes,
naming the well whose worker died.

Local worker processes fork from a warm fork server (spawn where the platform has no
fork server).  They never import the caller's ``__main__`` module: work is shipped with
cloudpickle, which sends functions defined in a script by value, so a plain script
without an ``if __name__ == "__main__":`` guard runs with process workers.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import importlib.machinery
import importlib.util
import logging
import multiprocessing
import multiprocessing.context as mp_context
import os
import select
import signal
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from hcsflow._worker_imports import WORKER_PRELOAD
from hcsflow.errors import PipelineError

__all__ = [
    "InProcessExecutor",
    "WellPool",
    "make_pool",
    "make_executor",
    "WORKER_PRELOAD",
    "process_start_method",
    "warm_up_workers",
    "stop_fork_server",
    "stop_processes",
    "raise_interrupt",
    "interrupts_held",
    "import_pipeline_file",
    "well_allocations",
    "give_back_free_memory",
]


class InProcessExecutor(cf.Executor):
    """A :class:`concurrent.futures.Executor` that runs each task at submission, in order."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        """Run ``fn`` now and return a completed future."""
        fut: cf.Future[Any] = cf.Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # the future carries it to the caller
            fut.set_exception(exc)
        return fut


def process_start_method() -> str:
    """The start method of ``processes`` workers: ``forkserver`` where the platform has
    it (Linux, macOS), else ``spawn`` (Windows).  Both start workers from a fresh
    interpreter, never a copy of the calling process."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


# --------------------------------------------------------------------------- pipeline files


def import_pipeline_file(p: Path) -> Any:
    """Import a pipeline file as a module named after its absolute path (once)."""
    import hashlib

    name = f"hcsflow_pipeline_{hashlib.sha1(str(p.resolve()).encode()).hexdigest()[:12]}"
    existing = sys.modules.get(name)
    if existing is not None:
        return existing
    spec = importlib.util.spec_from_file_location(name, p)
    if spec is None or spec.loader is None:
        raise PipelineError(f"cannot import pipeline file {str(p)!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _watch_client(pid: int) -> None:
    """Exit this worker as soon as the process that started the run is gone.

    A pool worker blocks reading its task queue, whose write end every worker holds
    too, so it would never see the caller die (SIGKILL, a crash): it would wait, or run
    queued wells, forever.  An uncommitted well it leaves is run again on resume.
    """
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        select.select([fd], [], [])  # readable once the process has exited
    else:
        while True:
            time.sleep(0.5)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            except PermissionError:
                continue
    _run_exit_finalizers()
    os._exit(1)


def _run_exit_finalizers() -> None:
    """Run multiprocessing's exit-time finalizers of this process, as a clean exit does.

    Libraries create named POSIX semaphores in workers: numcodecs' Blosc codec makes a
    ``multiprocessing.Lock`` on its first use, which under the fork server (or spawn) is
    a named semaphore registered with the run's resource tracker.  Its finalizer unlinks
    it and unregisters it; a worker that dies without running it leaves the tracker to
    find it when the run is over and print a "leaked semaphore objects" warning on the
    run's stderr.
    """
    from multiprocessing import util

    with contextlib.suppress(Exception):
        util._run_finalizers(0)  # type: ignore[attr-defined]


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    """A worker told to stop (the run was interrupted, or the pool broke): release what
    this process holds, then die by the signal, so its exit status still says SIGTERM."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _run_exit_finalizers()
    os.kill(os.getpid(), signal.SIGTERM)


def _untracked_blosc_lock() -> None:
    """Give numcodecs' Blosc codec a process lock that the resource tracker never sees.

    Blosc makes a ``multiprocessing.Lock`` on its first use (in a zarr thread of the
    worker).  Under the fork server that is a named semaphore registered with the run's
    resource tracker, and a worker stopped while that thread or the lock's finalizer is
    half-way (or killed after the grace period) leaves the tracker to print a "leaked
    semaphore" warning under the run's one-line report.  A lock of the ``fork`` context
    is the same kind of lock, unlinked at once and never registered, as in any process
    started by fork.  Nothing changes where numcodecs does not keep its lock this way.
    """
    try:
        import multiprocessing

        import numcodecs.blosc as blosc
    except ImportError:
        return
    if "fork" not in multiprocessing.get_all_start_methods():
        return
    if getattr(blosc, "_MUTEX_IS_INIT", None) is False and hasattr(blosc, "_MUTEX"):
        blosc._MUTEX = multiprocessing.get_context("fork").Lock()
        blosc._MUTEX_IS_INIT = True


def _worker_init(preload: Sequence[str], client_pid: int) -> None:
    # Ctrl-C reaches the whole process group; the parent shuts the workers down itself,
    # so a worker must not die half-way through a write with a traceback of its own
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        # the fork server was started with SIGINT blocked (see _quiet_start); a worker
        # ignores it instead, and the programs a well starts get the usual mask
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    _untracked_blosc_lock()
    threading.Thread(
        target=_watch_client, args=(client_pid,), daemon=True, name="hcsflow-watch-client"
    ).start()
    for f in preload:
        import_pipeline_file(Path(f))


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: what glibc's dynamic thresholds grow to on 64-bit platforms (malloc.c:
#: DEFAULT_MMAP_THRESHOLD_MAX; the trim threshold follows at twice the mmap threshold)
_WELL_MMAP_THRESHOLD = 32 * 1024 * 1024
_WELL_TRIM_THRESHOLD = 2 * _WELL_MMAP_THRESHOLD
_ALLOC_LOCK = threading.Lock()
_ALLOC_WELLS = 0


@functools.cache
def _glibc() -> Any:
    """glibc through ctypes on Linux, else ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


@functools.cache
def _fixed_malloc_thresholds() -> tuple[Any, int, int] | None:
    """glibc, and the thresholds this process was started with, when they are fixed.

    Setting ``MALLOC_TRIM_THRESHOLD_`` or ``MALLOC_MMAP_THRESHOLD_`` turns off glibc's
    dynamic mmap threshold: every block above 128 KiB is then mapped fresh from the
    kernel and returned on ``free``, so each image-sized temporary of a step costs a
    page fault per 4 KiB page.  Dask's nanny starts every worker with
    ``MALLOC_TRIM_THRESHOLD_=65536`` (``distributed.nanny.pre-spawn-environ``) so that
    freed memory goes back to the operating system.  ``None`` elsewhere (not glibc, or
    the thresholds are glibc's dynamic ones).
    """
    trim = os.environ.get("MALLOC_TRIM_THRESHOLD_")
    mmap = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    if trim is None and mmap is None:
        return None
    libc = _glibc()
    if libc is None:
        return None
    try:
        trim_v = int(trim) if trim is not None else 128 * 1024
        mmap_v = int(mmap) if mmap is not None else 128 * 1024
    except ValueError:
        return None  # not a value glibc took either: nothing to restore
    return libc, trim_v, mmap_v


@functools.cache
def _raise_dynamic_thresholds() -> None:
    """Take glibc's dynamic malloc thresholds to their maximum now, once per process.

    glibc maps every block above its mmap threshold fresh from the kernel and returns
    it on ``free``, and gives the top of the heap back once more than the trim
    threshold is free there.  Both thresholds start low (128 KiB) and rise only when a
    mapped block is freed, to that block's size.  A process that has not yet freed a
    large block (as a fresh one that runs wells of small images) gives the heap back and
    page-faults it in again for every well: measured on the demo pipeline at 256 x 256
    pixels, about 1,475 page faults per well, nearly all in ``count_cells``, against
    about 25 and 3 ms less system time per well once the thresholds had risen.
    Allocating and freeing one block of just under 32 MiB (:data:`_WELL_MMAP_THRESHOLD`,
    the most the rule allows) puts the thresholds where glibc's own rule takes any
    process that has freed such a block: blocks up to 32 MiB are then reused from the
    heap, and up to 64 MiB of free memory may stay at its top.  Nothing is fixed
    (unlike ``mallopt``, the rule keeps working), the block is never touched (no page is
    faulted), and nothing happens where the thresholds are fixed
    (:func:`_fixed_malloc_thresholds`) or the C library is not glibc.
    """
    if _glibc() is None or _fixed_malloc_thresholds() is not None:
        return
    import numpy as np

    # 64 KiB under the limit: the block's size, rounded up to whole pages, must not
    # exceed it for the rule to apply
    block = np.empty(_WELL_MMAP_THRESHOLD - (64 << 10), dtype=np.uint8)
    del block


def give_back_free_memory() -> None:
    """Return the free memory at the top and inside glibc's heaps to the operating
    system (``malloc_trim(0)``): after an in-process run, whose wells ran with the
    thresholds of :func:`_raise_dynamic_thresholds`.  Nothing elsewhere."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@contextlib.contextmanager
def well_allocations() -> Iterator[None]:
    """While a well runs, allocate as glibc does by default; after it, give memory back.

    In a process started with fixed malloc thresholds (a Dask worker, see
    :func:`_fixed_malloc_thresholds`), a well's image-sized temporaries would each be
    mapped and page-faulted anew (measured: 15x the page faults and 12-20% more time
    per well of the demo pipeline).  For the well, the thresholds are those glibc's
    dynamic rule reaches (blocks up to 32 MiB are reused from the heap); when the last
    well running in the process ends, the process's own thresholds come back and
    ``malloc_trim(0)`` returns the freed memory to the operating system, which is what
    the fixed thresholds were set for.  Elsewhere the dynamic thresholds are taken to
    that same point once, before the process's first well
    (:func:`_raise_dynamic_thresholds`).
    """
    global _ALLOC_WELLS
    fixed = _fixed_malloc_thresholds()
    if fixed is None:
        _raise_dynamic_thresholds()
        yield
        return
    libc, trim, mmap = fixed
    with _ALLOC_LOCK:
        _ALLOC_WELLS += 1
        if _ALLOC_WELLS == 1:
            libc.mallopt(_M_MMAP_THRESHOLD, _WELL_MMAP_THRESHOLD)
            libc.mallopt(_M_TRIM_THRESHOLD, _WELL_TRIM_THRESHOLD)
    try:
        yield
    finally:
        with _ALLOC_LOCK:
            _ALLOC_WELLS -= 1
            if _ALLOC_WELLS == 0:
                libc.mallopt(_M_MMAP_THRESHOLD, mmap)
                libc.mallopt(_M_TRIM_THRESHOLD, trim)
                give_back_free_memory()


def _call_payload(payload: bytes) -> Any:
    """Worker side of a Dask task: unpickle with cloudpickle and run."""
    import cloudpickle

    # before the well's first zarr write: a Dask worker dies by the signal when the
    # process group is told to stop, so a tracked Blosc lock would be reported as leaked
    _untracked_blosc_lock()
    fn, args = cloudpickle.loads(payload)
    return fn(*args)


def _call_pickled(payload: bytes, pid_file: str) -> Any:
    """Worker side of a process task: note which process runs it, then run it.

    The note stays after the task returns: its result is still to be sent, and a worker
    can die while sending it.  The main process removes the note once the outcome has
    arrived (:meth:`WellPool.received`), so a well whose result was lost on the way is
    still known to have started.
    """
    import cloudpickle

    with open(pid_file, "w") as fh:
        fh.write(str(os.getpid()))
    fn, args = cloudpickle.loads(payload)
    return fn(*args)


# --------------------------------------------------------------------------- interrupts


class _Held:
    """An interruption that arrived while the main thread was starting a process."""

    depth = 0
    pending: BaseException | None = None


_HELD = _Held()


def raise_interrupt(exc: BaseException) -> None:
    """Raise ``exc`` (from a signal handler) now, or as soon as a process start ends.

    A run's signal handler raises its interruption in the main thread wherever that
    thread is.  Raised half-way through starting a worker, it would leave a process
    that the pool never recorded (it would outlive the run and keep the fork server
    waiting for it), or a fork server fed half a request.
    """
    if _HELD.depth and threading.current_thread() is threading.main_thread():
        _HELD.pending = exc
        return
    raise exc


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold :func:`raise_interrupt` until the block ends (main thread only): for steps
    that are short and must not be cut in two."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _HELD.depth += 1
    try:
        yield
    finally:
        _HELD.depth -= 1
        if _HELD.depth == 0 and _HELD.pending is not None:
            exc, _HELD.pending = _HELD.pending, None
            raise exc


@contextlib.contextmanager
def _quiet_start() -> Iterator[None]:
    """Start processes (the fork server, spawned workers) with SIGINT blocked.

    A terminal's Ctrl-C goes to the whole process group.  A fresh interpreter that gets
    it while still importing prints a ``KeyboardInterrupt`` traceback on the run's
    stderr; started with SIGINT blocked (the mask survives exec), the fork server
    ignores it once it is ready, and a worker ignores it from its initializer on.  In
    this process, an interruption waits until the start is over.
    """
    mask = hasattr(signal, "pthread_sigmask")
    if mask:
        from multiprocessing import resource_tracker

        # started now, not inside the block below: starting it unblocks SIGINT after
        resource_tracker.ensure_running()
    with interrupts_held():
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if mask else None
        try:
            yield
        finally:
            if old is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)


# --------------------------------------------------------------------------- processes

_MAIN_LOCK = threading.Lock()
#: worker processes this process started, by pid (exit codes name a dead well's cause)
_STARTED: dict[int, Any] = {}


@contextlib.contextmanager
def _main_module_hidden() -> Any:
    """Start a worker without it re-running the caller's ``__main__`` script.

    multiprocessing has each new worker import the main script again (as
    ``__mp_main__``), which runs an unguarded script's whole body in every worker.  A
    main module whose spec is named ``__main__`` is skipped by that step; work reaches
    the worker through cloudpickle instead, which sends ``__main__`` functions by value.
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    with _MAIN_LOCK:
        old = getattr(main, "__spec__", None)
        main.__spec__ = importlib.machinery.ModuleSpec("__main__", None)
        try:
            yield
        finally:
            main.__spec__ = old


class _ForkServerWorker(mp_context.ForkServerProcess):
    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        with _quiet_start(), _main_module_hidden():
            return mp_context.ForkServerProcess._Popen(process_obj)

    def start(self) -> None:
        super().start()
        if self.pid is not None:
            _STARTED[self.pid] = self


class _SpawnWorker(mp_context.SpawnProcess):
    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        with _quiet_start(), _main_module_hidden():
            return mp_context.SpawnProcess._Popen(process_obj)

    def start(self) -> None:
        super().start()
        if self.pid is not None:
            _STARTED[self.pid] = self


class _ForkServerContext(mp_context.ForkServerContext):
    Process = _ForkServerWorker


class _SpawnContext(mp_context.SpawnContext):
    Process = _SpawnWorker


def _process_context() -> Any:
    if process_start_method() == "forkserver":
        ctx: Any = _ForkServerContext()
        # no "__main__" here: the fork server must not run the caller's script either
        ctx.set_forkserver_preload(["hcsflow._forkserver_preload"])
        return ctx
    return _SpawnContext()


def warm_up_workers() -> None:
    """Start the fork server now (its imports run in the background); no-op under spawn.

    ``run_pipeline`` calls it before scanning the plate, so the workers' imports overlap
    with the plate scan and compilation.  The fork server lives as long as this process
    (or until a run is interrupted): later runs start their workers in milliseconds.
    """
    ctx = _process_context()
    if ctx.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        with _quiet_start():
            forkserver.ensure_running()


def stop_fork_server() -> None:
    """Stop the fork server of this process now, if one is running, and reap it.

    Closing its "alive" pipe only asks it to stop once every process holding that pipe
    has exited (workers hold it too) and once it has finished importing its preloaded
    modules: seconds, or never if a worker lingers.  It has nothing to save, so it gets
    SIGTERM first.  A later run starts a new one.
    """
    if process_start_method() != "forkserver":
        return
    from multiprocessing import forkserver

    server = forkserver._forkserver
    stop = getattr(server, "_stop", None)
    pid = getattr(server, "_forkserver_pid", None)
    if stop is None or pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    with contextlib.suppress(OSError, ChildProcessError):
        stop()


def _exited(pid: int, pidfd: int | None) -> bool:
    if pidfd is not None:  # readable once the process has exited (zombie or reaped)
        return bool(select.select([pidfd], [], [], 0)[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def stop_processes(procs: Sequence[Any], grace: float = 3.0) -> None:
    """Stop worker processes: SIGTERM, up to ``grace`` seconds, then SIGKILL; reap them.

    SIGTERM lets a worker release what it holds (see :func:`_exit_on_sigterm`); a
    worker stuck in native code that does not return within ``grace`` is killed.
    Exits are watched through pidfds where the platform has them: a worker is a child
    of the fork server, not of this process, and its sentinel also reports an exit
    when the fork server itself was killed (Ctrl-C's SIGTERM cousin: ``kill -TERM --
    -PGID``) while the worker still runs.
    """
    live: dict[int, int | None] = {}
    for p in procs:
        pid = getattr(p, "pid", None)
        if pid is None or getattr(p, "_popen", None) is None or p._popen.returncode is not None:
            continue
        try:
            live[pid] = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        except (AttributeError, OSError):
            live[pid] = None
    try:
        for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            for pid in live:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signum)
            deadline = time.monotonic() + wait
            while live and time.monotonic() < deadline:
                for pid in [pid for pid, fd in live.items() if _exited(pid, fd)]:
                    fd = live.pop(pid)
                    if fd is not None:
                        os.close(fd)
                if live:
                    time.sleep(0.01)
            if not live:
                break
    finally:
        for fd in live.values():
            if fd is not None:
                os.close(fd)
    for p in procs:  # collect exit codes (the fork server reports them)
        with contextlib.suppress(OSError, AttributeError, ValueError, AssertionError):
            p.join(1)


def _signal_name(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


# --------------------------------------------------------------------------- pools


class WellPool:
    """An executor plus how to stop it and how to find a dead worker's well."""

    kind = "inprocess"
    #: whether the workers run on this machine (so this process may commit their wells)
    local = True

    def __init__(self, executor: cf.Executor, workers: int):
        self.executor = executor
        self.workers = workers

    @property
    def window(self) -> int:
        """Wells submitted at a time (the queue never holds the whole plate)."""
        return 1 if isinstance(self.executor, InProcessExecutor) else 2 * self.workers

    def submit(self, fn: Callable[..., Any], arg: Any, key: str) -> cf.Future[Any]:
        """Run ``fn(arg)``; ``key`` names the task (a well) for diagnostics."""
        return self.executor.submit(fn, arg)

    def lost(self, keys: Sequence[str]) -> dict[str, str]:
        """After the pool broke: which of ``keys`` killed their worker, and how."""
        return {}

    def started(self, keys: Sequence[str]) -> set[str]:
        """After the pool broke: which of ``keys`` had started on a worker (finished
        ones whose outcome never arrived included)."""
        return set()

    def received(self, key: str) -> None:
        """The outcome (result or error) of task ``key`` has arrived."""
        return None

    def restart(self) -> None:
        """Replace a broken pool with a fresh one."""
        raise PipelineError(f"the {self.kind} executor cannot be restarted")

    def close(self) -> None:
        """Shut down after the run (waits for running tasks)."""
        self.executor.shutdown(wait=True)

    def kill(self) -> None:
        """Stop at once: cancel what has not started, stop every worker process."""
        self.executor.shutdown(wait=False, cancel_futures=True)

    def describe(self) -> dict[str, Any]:
        """How the wells ran, for the manifest."""
        return {"kind": self.kind, "workers": self.workers, "start_method": None}


class _ExternalPool(WellPool):
    kind = "external"
    local = False  # a caller's executor may run anywhere

    def __init__(self, executor: cf.Executor, workers: int):
        super().__init__(executor, workers)
        self.kind = type(executor).__name__
        self._futures: weakref.WeakSet[cf.Future[Any]] = weakref.WeakSet()

    def submit(self, fn: Callable[..., Any], arg: Any, key: str) -> cf.Future[Any]:
        fut = self.executor.submit(fn, arg)
        self._futures.add(fut)
        return fut

    def close(self) -> None:
        return None  # the caller owns it

    def kill(self) -> None:
        # the caller's executor keeps running: only this run's queued wells are dropped
        for fut in list(self._futures):
            fut.cancel()


class _ThreadPool(WellPool):
    kind = "threads"

    def __init__(self, workers: int):
        super().__init__(
            cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hcsflow-well"),
            workers,
        )

    def kill(self) -> None:
        # threads cannot be stopped: running wells finish, the others never start
        self.executor.shutdown(wait=True, cancel_futures=True)


class _ProcessPool(WellPool):
    kind = "processes"

    def __init__(self, workers: int, preload: Sequence[str]):
        self.preload = tuple(preload)
        self._pid_dir = tempfile.mkdtemp(prefix="hcsflow-workers-")
        super().__init__(self._new(workers), workers)

    def _new(self, workers: int) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(
            max_workers=workers,
            mp_context=_process_context(),
            initializer=_worker_init,
            initargs=(self.preload, os.getpid()),
        )

    def _pid_file(self, key: str) -> str:
        return os.path.join(self._pid_dir, key)

    def submit(self, fn: Callable[..., Any], arg: Any, key: str) -> cf.Future[Any]:
        import cloudpickle

        payload = cloudpickle.dumps((fn, (arg,)))
        # a submission may start a worker: the pool records it before an interrupt lands
        with interrupts_held():
            return self.executor.submit(_call_pickled, payload, self._pid_file(key))

    def lost(self, keys: Sequence[str]) -> dict[str, str]:
        # The pool's own thread fails the futures and then stops and joins the workers.
        # Reading an exit code while it joins races with it: with the forkserver, both
        # read the status the server sends, and the loser records 255 instead of the
        # signal.  So the exit codes are read once that thread is done.
        manager = getattr(self.executor, "_executor_manager_thread", None)
        if manager is not None and manager is not threading.current_thread():
            manager.join(10)
        out = {}
        for key in keys:
            try:
                with open(self._pid_file(key)) as fh:
                    pid = int(fh.read().strip() or 0)
            except (FileNotFoundError, ValueError):
                continue  # it had not started: an innocent bystander
            proc = _STARTED.get(pid)
            code = proc.exitcode if proc is not None else None
            # the pool terminates the other workers with SIGTERM once one died
            if code is not None and code != -signal.SIGTERM:
                out[key] = f"its worker process (pid {pid}) {_signal_name(code)}"
        if not out:
            # nothing told the dead one from the ones the pool stopped: suspect all
            for key in keys:
                if os.path.exists(self._pid_file(key)):
                    out[key] = "its worker process died"
        return out

    def started(self, keys: Sequence[str]) -> set[str]:
        # a worker records its pid for a well as it starts it (_call_pickled); the
        # record goes when the outcome arrives (received)
        return {key for key in keys if os.path.exists(self._pid_file(key))}

    def received(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._pid_file(key))

    def _processes(self) -> list[Any]:
        procs = getattr(self.executor, "_processes", None) or {}
        return list(procs.values())

    def restart(self) -> None:
        self._stop()
        for name in os.listdir(self._pid_dir):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self._pid_dir, name))
        self.executor = self._new(self.workers)

    def _stop(self) -> None:
        """Cancel what has not started, stop every worker, wait for the pool's thread."""
        executor = self.executor
        procs = self._processes()
        manager = getattr(executor, "_executor_manager_thread", None)
        # The pool's own thread cancels the queued wells: cancelling their futures from
        # here races with it (it then fails to mark them broken, with a traceback).
        executor.shutdown(wait=False, cancel_futures=True)
        stop_processes(procs)
        if manager is not None and manager is not threading.current_thread():
            manager.join(10)

    def close(self) -> None:
        try:
            self.executor.shutdown(wait=True)
        finally:
            _remove_tree(self._pid_dir)

    def kill(self) -> None:
        try:
            self._stop()
            stop_fork_server()
        finally:
            _remove_tree(self._pid_dir)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "processes",
            "workers": self.workers,
            "start_method": process_start_method(),
        }


class _DaskPool(WellPool):
    kind = "dask"
    local = False

    def __init__(self, workers: int, scheduler: str | None, retries: int):
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise PipelineError(
                "the dask executor needs dask.distributed: pip install 'hcsflow[dask]'"
            ) from None
        import cloudpickle

        # functions of pipeline files travel by value: a worker on another node does
        # not have the file at the same path (or at all)
        for name, module in list(sys.modules.items()):
            if name.startswith("hcsflow_pipeline_"):
                with contextlib.suppress(ValueError):
                    cloudpickle.register_pickle_by_value(module)
        self.scheduler = scheduler
        self.cluster: Any = None
        self._quiet = contextlib.ExitStack()
        if scheduler is None:
            import dask
            from distributed.utils import silence_logging_cmgr

            # this process's own distributed log lines stay quiet until the cluster is
            # closed and its event loop stopped: the cluster's own silencing ends when
            # its close begins to return, and a comm to a worker dying of the same
            # signal could still log its traceback under the run's one-line report
            self._quiet.enter_context(silence_logging_cmgr(logging.CRITICAL))

            # a worker lost mid-well: the scheduler runs the well again elsewhere; the
            # cluster's event-loop thread and the worker processes it spawns (also those
            # that replace a lost one) start with SIGINT blocked, so a Ctrl-C to the
            # process group stops the run here instead of printing a traceback from a
            # worker that is still importing
            with (
                dask.config.set({"distributed.scheduler.allowed-failures": max(retries, 0)}),
                _quiet_start(),
            ):
                # its workers' own log lines (a heartbeat lost while the run stops...)
                # are not the user's business: well errors come back in the results
                self.cluster = LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address="127.0.0.1:0",
                    silence_logs=logging.CRITICAL,
                )
            self.client = Client(self.cluster)
        else:
            try:
                self.client = Client(scheduler, timeout="30s")
            except OSError as exc:
                raise PipelineError(
                    f"cannot reach the Dask scheduler at {scheduler!r}: {exc}"
                ) from exc
            workers = max(1, len(self.client.scheduler_info().get("workers", {})))
        super().__init__(self.client.get_executor(pure=False, retries=retries), workers)

    def submit(self, fn: Callable[..., Any], arg: Any, key: str) -> cf.Future[Any]:
        import cloudpickle

        # pickled here with cloudpickle: distributed pickles by reference whatever plain
        # pickle can, and a worker that never saw the pipeline file cannot import it
        return self.executor.submit(_call_payload, cloudpickle.dumps((fn, (arg,))))

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        # not in a finally: a close cut short by a signal is followed by kill(), and
        # the cluster is still closing meanwhile
        self._quiet.close()

    def kill(self) -> None:
        # cancels this run's tasks; a well already running on an existing cluster
        # finishes there and commits (its record stays valid for a resume)
        self.executor.shutdown(wait=False)
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        self._quiet.close()

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "dask",
            "workers": self.workers,
            "start_method": None,
            "scheduler": self.scheduler or "LocalCluster",
        }


def _remove_tree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def make_pool(
    kind: str | cf.Executor,
    num_workers: int,
    *,
    preload: Sequence[str] = (),
    scheduler: str | None = None,
    retries: int = 0,
) -> WellPool:
    """A :class:`WellPool` of ``kind`` (or around a caller's executor instance)."""
    if isinstance(kind, cf.Executor):
        return _ExternalPool(kind, num_workers)
    # One worker runs in this process: a pool of one only adds start-up and pickling.
    if kind == "inprocess" or (kind in ("threads", "processes") and num_workers == 1):
        return WellPool(InProcessExecutor(), 1)
    if kind == "threads":
        return _ThreadPool(num_workers)
    if kind == "processes":
        return _ProcessPool(num_workers, preload)
    if kind == "dask":
        return _DaskPool(num_workers, scheduler, retries)
    raise PipelineError(f"unknown executor {kind!r} (inprocess, threads, processes, dask)")


def make_executor(
    kind: str,
    num_workers: int,
    *,
    preload: Sequence[str] = (),
    scheduler: str | None = None,
    retries: int = 0,
) -> tuple[cf.Executor, Callable[[], None]]:
    """An executor of ``kind`` and a function that shuts it down."""
    pool = make_pool(kind, num_workers, preload=preload, scheduler=scheduler, retries=retries)
    return pool.executor, pool.close
