"""A well's commit on a Dask worker gives the worker's thread slot to the next well."""

from __future__ import annotations

import threading
import types

import pytest

from hcsflow.pipeline import _commit

distributed = pytest.importorskip("distributed")


#: set by task ``_b``; the worker runs in this process (``processes=False``)
STARTED = threading.Event()


def _a() -> bool:
    _commit._leave_dask_slot()
    return STARTED.wait(20)


def _b() -> None:
    STARTED.set()


def test_a_seceded_commit_lets_the_next_well_start_on_a_one_thread_worker() -> None:
    """Task ``_a`` leaves its slot, then waits for task ``_b``: on a worker of one
    thread ``_b`` can only run beside ``_a`` if ``_a`` really gave the slot up."""
    STARTED.clear()
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        fa = client.submit(_a, pure=False)
        fb = client.submit(_b, pure=False)
        assert fa.result(timeout=30) is True
        fb.result(timeout=30)


def test_outside_a_worker_or_on_a_closing_one_nothing_secedes(monkeypatch) -> None:
    from distributed.core import Status

    seceded: list[bool] = []
    monkeypatch.setattr(distributed, "secede", lambda: seceded.append(True))
    _commit._leave_dask_slot()  # this thread is no Dask worker's
    assert seceded == []
    worker = types.SimpleNamespace(status=Status.closing)
    monkeypatch.setattr(distributed, "get_worker", lambda: worker)
    _commit._leave_dask_slot()  # a closing worker joins its threads: seceding would hang
    assert seceded == []
    worker.status = Status.running
    _commit._leave_dask_slot()
    assert seceded == [True]
