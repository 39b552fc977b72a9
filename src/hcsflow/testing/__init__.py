"""Test kits shipped with hcsflow, for our backends and third-party ones.

* :class:`BackendTests` - the storage conformance suite (pytest); subclass it once.
* :func:`backend_state_machine` - a hypothesis state machine comparing a backend with
  the memory backend as reference model.
* :func:`hostile_files` - a generated corpus of size bombs and corrupt files, each with
  the typed error a backend (or codec) must raise for it.

These need the ``test`` extra (pytest, hypothesis); ``import hcsflow`` never loads them.
"""

from hcsflow.testing._backend_tests import BackendTests
from hcsflow.testing._hostile import HostileFile, hostile_files
from hcsflow.testing._state_machine import backend_state_machine, snapshot

__all__ = ["BackendTests", "HostileFile", "backend_state_machine", "hostile_files", "snapshot"]
