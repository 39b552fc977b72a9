"""Executed documentation: every ```python block of README.md and docs/*.md is a test.

pytest-markdown-docs finds the blocks (``testpaths`` in pyproject.toml names README.md and
docs/, so a new page is collected without being listed).  Each block runs the way a user
runs what they paste: as a script of its own, ``python -W error script.py``, in a fresh
interpreter whose working directory is an empty temporary folder.  Nothing is shared
between blocks, so a block that forgets an import, uses a name defined elsewhere on the
page or reads a file it did not make fails.  A block that cannot run here (a cluster, a
GPU, credentials) is marked ```python notest, and its page says why.

A block whose first line is a comment naming a test module (``# test_name.py: ...``) is
saved under that name and run with ``python -m pytest``, as its reader would run it.

A ```text block that directly follows a ```python block (nothing but blank lines between)
is that block's output: what the script prints must match it line by line, where ``...``
in a line stands for any text (as doctest's ELLIPSIS), for figures such as timings.

The script keeps the block's line numbers (blank lines stand in for the page above it),
so a traceback's line number is the line in the Markdown file.
"""

from __future__ import annotations

import os
import re
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
    """A documentation block exited with a non-zero status or printed other output."""

    def __init__(self, source_path: Path, line: int, problem: str, output: str):
        self.source_path = source_path
        self.line = line
        self.problem = problem
        self.output = output
        super().__init__(f"{source_path}:{line}: {problem}")


def expected_output(source_path: Path, start_line: int) -> str | None:
    """The ```text block right after the python block whose code starts at ``start_line``."""
    from markdown_it import MarkdownIt

    text = source_path.read_text(encoding="utf-8")
    lines = text.splitlines()
    tokens = [t for t in MarkdownIt("commonmark").parse(text) if t.map and t.level == 0]
    for here, after in zip(tokens, [*tokens[1:], None], strict=True):
        if here.type != "fence" or here.map is None or here.map[0] + 1 != start_line:
            continue
        if after is None or after.type != "fence" or after.map is None:
            return None
        between = lines[here.map[1] : after.map[0]]
        if after.info.split()[:1] != ["text"] or any(line.strip() for line in between):
            return None
        return after.content
    return None


def output_matches(expected: str, actual: str) -> bool:
    """Line-by-line equality (trailing spaces ignored); ``...`` in a line matches any text."""
    want = expected.rstrip("\n").split("\n")
    got = [line.rstrip() for line in actual.rstrip("\n").split("\n")]
    if len(want) != len(got):
        return False
    for pattern, line in zip(want, got, strict=True):
        regex = ".*".join(re.escape(part) for part in pattern.rstrip().split("..."))
        if re.fullmatch(regex, line) is None:
            return False
    return True


_TEST_MODULE = re.compile(r"# (test_\w+\.py)\b")


@register_runner(default=True)
class ScriptRunner(DefaultRunner):
    """Run a block as a pasted script: a fresh interpreter, warnings are errors."""

    def runtest(self, test: Any, args: dict[str, Any], *, asyncio_runner: Any = None) -> None:
        source_path = Path(test.source_path)
        test_module = _TEST_MODULE.match(test.source.lstrip())
        with tempfile.TemporaryDirectory(prefix="hcsflow-doc-") as scripts:
            if test_module is not None:
                script = Path(scripts) / test_module.group(1)
                command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
            else:
                stem = re.sub(r"\W", "_", source_path.stem)
                script = Path(scripts) / f"{stem}_md_line_{test.start_line}.py"
                command = [sys.executable]
            script.write_text(test.source, encoding="utf-8")
            proc = subprocess.run(
                [*command[:1], "-W", "error", *command[1:], str(script)],
                cwd=os.getcwd(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=BLOCK_TIMEOUT_S,
                check=False,
            )
        if proc.returncode != 0:
            problem = f"exit status {proc.returncode}"
            raise DocBlockFailed(source_path, test.start_line, problem, proc.stdout + proc.stderr)
        expected = expected_output(source_path, test.start_line)
        if expected is not None and not output_matches(expected, proc.stdout):
            problem = f"printed other output than the text block after it:\n{expected}"
            raise DocBlockFailed(source_path, test.start_line, problem, proc.stdout + proc.stderr)

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
            f"{exc.source_path}, block at line {exc.line}: {exc.problem}\n{block}\n"
            f"--- output (line numbers are lines of the Markdown file) ---\n{exc.output}"
        )
