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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

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
    "import_pipeline_file",
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


# Imported once by the fork server; every worker forked from it starts with them loaded
# instead of importing them again (about a second per spawned worker).  A module that is
# not installed is skipped by the fork server and imported (or reported) by the worker
# that needs it, as under spawn.
WORKER_PRELOAD: tuple[str, ...] = (
    "numpy",
    "scipy.ndimage",
    "pandas",
    "tifffile",
    "zarr",
    "skimage.measure",
    "skimage.feature",
    "skimage.filters",
    "skimage.morphology",
    "skimage.segmentation",
    "cloudpickle",
    "hcsflow.functions",
    "hcsflow.pipeline._commit",
)


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
    os._exit(1)


def _worker_init(preload: Sequence[str], client_pid: int) -> None:
    # Ctrl-C reaches the whole process group; the parent shuts the workers down itself,
    # so a worker must not die half-way through a write with a traceback of its own
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(
        target=_watch_client, args=(client_pid,), daemon=True, name="hcsflow-watch-client"
    ).start()
    for f in preload:
        import_pipeline_file(Path(f))


def _call_payload(payload: bytes) -> Any:
    """Worker side of a Dask task: unpickle with cloudpickle and run."""
    import cloudpickle

    fn, args = cloudpickle.loads(payload)
    return fn(*args)


def _call_pickled(payload: bytes, pid_file: str) -> Any:
    """Worker side of a process task: note which process runs it, then run it."""
    import cloudpickle

    with open(pid_file, "w") as fh:
        fh.write(str(os.getpid()))
    fn, args = cloudpickle.loads(payload)
    try:
        return fn(*args)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pid_file)


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
        with _main_module_hidden():
            return mp_context.ForkServerProcess._Popen(process_obj)

    def start(self) -> None:
        super().start()
        if self.pid is not None:
            _STARTED[self.pid] = self


class _SpawnWorker(mp_context.SpawnProcess):
    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        with _main_module_hidden():
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
        ctx.set_forkserver_preload(list(WORKER_PRELOAD))
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

        forkserver.ensure_running()


def stop_fork_server() -> None:
    """Stop the fork server of this process, if one is running (a later run restarts it)."""
    if process_start_method() != "forkserver":
        return
    from multiprocessing import forkserver

    server = forkserver._forkserver
    stop = getattr(server, "_stop", None)
    if stop is not None and getattr(server, "_forkserver_pid", None) is not None:
        with contextlib.suppress(OSError, ChildProcessError):
            stop()


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

    def close(self) -> None:
        return None  # the caller owns it

    def kill(self) -> None:
        return None


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
        return self.executor.submit(_call_pickled, payload, self._pid_file(key))

    def lost(self, keys: Sequence[str]) -> dict[str, str]:
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

    def _processes(self) -> list[Any]:
        procs = getattr(self.executor, "_processes", None) or {}
        return list(procs.values())

    def restart(self) -> None:
        self.kill_workers()
        self.executor.shutdown(wait=False, cancel_futures=True)
        for name in os.listdir(self._pid_dir):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self._pid_dir, name))
        self.executor = self._new(self.workers)

    def kill_workers(self) -> None:
        """SIGKILL every worker of this pool and reap it."""
        procs = self._processes()
        for p in procs:
            with contextlib.suppress(OSError, AttributeError, ValueError):
                p.kill()
        for p in procs:
            with contextlib.suppress(OSError, AttributeError, ValueError, AssertionError):
                p.join(5)

    def close(self) -> None:
        try:
            self.executor.shutdown(wait=True)
        finally:
            _remove_tree(self._pid_dir)

    def kill(self) -> None:
        try:
            self.kill_workers()
            self.executor.shutdown(wait=False, cancel_futures=True)
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
        if scheduler is None:
            import dask

            # a worker lost mid-well: the scheduler runs the well again elsewhere
            with dask.config.set({"distributed.scheduler.allowed-failures": max(retries, 0)}):
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

    def kill(self) -> None:
        # cancels this run's tasks; a well already running on an existing cluster
        # finishes there and commits (its record stays valid for a resume)
        self.executor.shutdown(wait=False)
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

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
