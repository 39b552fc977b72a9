"""The ``hcsflow`` command line: ``demo``, ``run``, ``info``, ``validate``.

See ``docs/cli.md``.
"""

from hcsflow.cli._main import build_parser, demo_pipeline, main

__all__ = ["main", "build_parser", "demo_pipeline"]
