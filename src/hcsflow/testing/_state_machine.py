"""A hypothesis state machine that runs random operations against a backend and the
memory backend (the reference model) and checks they behave identically.

Usage::

    from hcsflow.testing import backend_state_machine
    TestDiskMachine = backend_state_machine(make_disk, cleanup=remove_tmp).TestCase

Each operation is applied to both backends; either both succeed with equal results or
both raise the same error class.  After every step the whole tree (names, kinds, link
targets, file contents) is compared.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from hcsflow.errors import HcsflowError
from hcsflow.storage._base import StorageBackend
from hcsflow.storage._memory import MemoryStorageBackend

__all__ = ["backend_state_machine", "snapshot"]

# a small universe so that operations collide often: directory names never carry an
# extension, file names always do (serialising backends choose the format by it)
_DIRS = ["a", "b", "w10", "w2"]
_FILES = ["x.npy", "y.npy", "img_10.npy", "img_2.npy"]


def _paths(names: list[str]) -> st.SearchStrategy[str]:
    parent = st.lists(st.sampled_from(_DIRS), max_size=2).map(
        lambda parts: "/" + "/".join(parts) if parts else ""
    )
    return st.tuples(parent, st.sampled_from(names)).map(lambda t: f"{t[0]}/{t[1]}")


DIR_PATHS = _paths(_DIRS)
FILE_PATHS = _paths(_FILES)
ANY_PATHS = st.one_of(DIR_PATHS, FILE_PATHS)


def snapshot(backend: StorageBackend, directory: str = "/") -> dict[str, Any]:
    """Everything below ``directory``: kind, link target or file content per path."""
    out: dict[str, Any] = {}
    for name in backend.list_dir(directory):
        path = directory.rstrip("/") + "/" + name
        kind = backend.entry_kind(path, follow_symlinks=False)
        if kind == "symlink":
            out[path] = ("symlink", backend.read_link(path))
        elif kind == "directory":
            out[path] = ("directory",)
            out.update(snapshot(backend, path))
        elif name.endswith(".npy"):
            out[path] = ("file", tuple(np.asarray(backend.load(path)).tolist()))
        else:
            out[path] = ("file",)
    return out


def _outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", fn()
    except HcsflowError as exc:
        return "error", type(exc).__name__


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    return bool(a == b)


def backend_state_machine(
    factory: Callable[[], StorageBackend],
    *,
    cleanup: Callable[[StorageBackend], None] | None = None,
    max_examples: int = 40,
    stateful_step_count: int = 25,
) -> type[RuleBasedStateMachine]:
    """A state machine class comparing ``factory()`` backends against the memory model.

    ``cleanup`` is called on each backend after its example (remove temp dirs...).
    Use the returned class's ``TestCase`` attribute as a test class.
    """

    class BackendMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.model = MemoryStorageBackend()
            self.real = factory()
            self.counter = 0

        def teardown(self) -> None:
            if cleanup is not None:
                cleanup(self.real)

        def both(self, op: Callable[[StorageBackend], Any]) -> Any:
            expected = _outcome(lambda: op(self.model))
            actual = _outcome(lambda: op(self.real))
            assert expected[0] == actual[0] and _same(expected[1], actual[1]), (
                f"model gave {expected!r}, {self.real.name} gave {actual!r}"
            )
            return expected

        @rule(path=DIR_PATHS)
        def ensure_directory(self, path: str) -> None:
            self.both(lambda b: b.ensure_directory(path))

        @rule(path=FILE_PATHS, overwrite=st.booleans())
        def save(self, path: str, overwrite: bool) -> None:
            self.counter += 1
            data = np.array([self.counter, len(path)], dtype=np.int64)
            self.both(lambda b: b.save(data, path, overwrite=overwrite))

        @rule(path=FILE_PATHS)
        def load(self, path: str) -> None:
            self.both(lambda b: b.load(path))

        @rule(
            paths=st.lists(FILE_PATHS, min_size=1, max_size=3, unique=True), overwrite=st.booleans()
        )
        def save_batch(self, paths: list[str], overwrite: bool) -> None:
            self.counter += 1
            data = [np.array([self.counter, i], dtype=np.int64) for i in range(len(paths))]
            self.both(lambda b: b.save_batch(data, paths, overwrite=overwrite))

        @rule(path=ANY_PATHS)
        def delete(self, path: str) -> None:
            self.both(lambda b: b.delete(path))

        @rule(path=DIR_PATHS)
        def delete_all(self, path: str) -> None:
            self.both(lambda b: b.delete_all(path))

        @rule(to=ANY_PATHS, link=ANY_PATHS, overwrite=st.booleans())
        def create_symlink(self, to: str, link: str, overwrite: bool) -> None:
            self.both(lambda b: b.create_symlink(to, link, overwrite=overwrite))

        # files keep file names when moved (a serialising backend needs the extension)
        @rule(src=FILE_PATHS, dst=FILE_PATHS, replace=st.booleans())
        def move_file(self, src: str, dst: str, replace: bool) -> None:
            self.both(lambda b: b.move(src, dst, replace_symlinks=replace))

        @rule(src=DIR_PATHS, dst=DIR_PATHS, replace=st.booleans())
        def move_dir(self, src: str, dst: str, replace: bool) -> None:
            self.both(lambda b: b.move(src, dst, replace_symlinks=replace))

        @rule(src=ANY_PATHS, dst=FILE_PATHS, overwrite=st.booleans())
        def copy(self, src: str, dst: str, overwrite: bool) -> None:
            self.both(lambda b: b.copy(src, dst, overwrite=overwrite))

        @rule(src=DIR_PATHS, dst=DIR_PATHS, links_only=st.booleans())
        def mirror(self, src: str, dst: str, links_only: bool) -> None:
            self.both(lambda b: b.mirror_directory(src, dst, overwrite_symlinks_only=links_only))

        @rule(path=ANY_PATHS)
        def queries(self, path: str) -> None:
            self.both(
                lambda b: (b.exists(path), b.is_file(path), b.is_dir(path), b.is_symlink(path))
            )

        @rule(path=DIR_PATHS, recursive=st.booleans())
        def listings(self, path: str, recursive: bool) -> None:
            self.both(lambda b: (b.list_dir(path), b.list_files(path, recursive=recursive)))

        @invariant()
        def same_tree(self) -> None:
            expected, actual = snapshot(self.model), snapshot(self.real)
            assert expected == actual, f"trees differ:\nmodel {expected}\n{self.real.name} {actual}"

    BackendMachine.TestCase.settings = settings(
        max_examples=max_examples, stateful_step_count=stateful_step_count, deadline=None
    )
    return BackendMachine
