"""Random operation sequences: memory and disk must both match the memory model."""

from __future__ import annotations

import shutil
import tempfile

from hcsflow.storage import DiskStorageBackend, MemoryStorageBackend
from hcsflow.testing import backend_state_machine


def _make_disk() -> DiskStorageBackend:
    # hypothesis builds many machines per test, so each gets its own directory
    return DiskStorageBackend(tempfile.mkdtemp(prefix="hcsflow-machine-"), fsync=False)


def _remove_disk(backend) -> None:
    shutil.rmtree(backend.root)


TestMemoryAgainstModel = backend_state_machine(MemoryStorageBackend, max_examples=30).TestCase
TestDiskAgainstModel = backend_state_machine(
    _make_disk, cleanup=_remove_disk, max_examples=60
).TestCase
