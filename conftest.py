"""Executed documentation: every ```python block of README.md and docs/*.md is a test.

pytest-markdown-docs finds the blocks (``testpaths`` in pyproject.toml names README.md and
docs/, so a new page is collected without being listed).  Each block runs the way a user
runs what they paste: as a script of its own, ``python -W error script.py``, in a fresh
interpreter whose working directory is an empty temporary folder.  Nothing is shared
between blocks, so a block that forgets an import, uses a name defined elsewhere on the
page or reads a file it did not make fails.  A block that cannot run here (a cluster, a
GPU, credentials) is marked ```python notest, and its page says why.

The script keeps the block's line numbers (blank lines stand in for the page above it),
so a traceback's line number is the line in the Markdown file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from pytest_markdown_docs._runners import DefaultRunner, register_runner
from pytest_markdown_docs.plugin import MarkdownTextFile

#: Seconds one documentation block may run (each is meant to take a few seconds).
BLOCK_TIMEOUT_S = 180


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """Collect the Python blocks of every Markdown file on the test paths."""
    # With --markdown-docs the plugin collects Markdown itself (and docstrings of .py files).
    if file_path.suffix == ".md" and not parent.config.option.markdowndocs:
        return MarkdownTextFile.from_parent(parent, path=file_path)
    return None


@pytest.fixture(autouse=True)
def _docs_block_workdir(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Documentation blocks start in an empty working directory of their own."""
    if request.node.get_closest_marker("markdown-docs") is not None:
        monkeypatch.chdir(tmp_path)


class DocBlockFailed(Exception):
    """A documentation block exited with a non-zero status."""

    def __init__(self, source_path: Path, line: int, returncode: int, output: str):
        self.source_path = source_path
        self.line = line
        self.returncode = returncode
        self.output = output
        super().__init__(f"{source_path}:{line}: the block exited with status {returncode}")


@register_runner(default=True)
class ScriptRunner(DefaultRunner):
    """Run a block as a pasted script: a fresh interpreter, warnings are errors."""

    def runtest(self, test: Any, args: dict[str, Any], *, asyncio_runner: Any = None) -> None:
        source_path = Path(test.source_path)
        with tempfile.TemporaryDirectory(prefix="hcsflow-doc-") as scripts:
            script = Path(scripts) / f"{source_path.name}.py"
            script.write_text(test.source, encoding="utf-8")
            proc = subprocess.run(
                [sys.executable, "-W", "error", str(script)],
                cwd=os.getcwd(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=BLOCK_TIMEOUT_S,
                check=False,
            )
        if proc.returncode != 0:
            raise DocBlockFailed(source_path, test.start_line, proc.returncode, proc.stdout)

    def repr_failure(self, test: Any, excinfo: pytest.ExceptionInfo[BaseException], style=None):  # type: ignore[no-untyped-def]
        exc = excinfo.value
        if not isinstance(exc, DocBlockFailed):
            return super().repr_failure(test, excinfo, style)
        lines = test.source.rstrip("\n").split("\n")
        width = len(str(len(lines)))
        block = "\n".join(
            f"{n:>{width}}   {text}"
            for n, text in enumerate(lines[test.start_line :], test.start_line + 1)
        )
        return (
            f"{exc.source_path}, block at line {exc.line}: exit status {exc.returncode}\n"
            f"{block}\n--- output (line numbers are lines of the Markdown file) ---\n{exc.output}"
        )
