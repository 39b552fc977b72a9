"""The ``hcsflow`` command line: ``demo``, ``run``, ``info``, ``validate``, ``functions``.

See ``docs/cli.md``.
"""

from hcsflow.cli._demo import demo_pipeline
from hcsflow.cli._main import build_parser, main

__all__ = ["main", "build_parser", "demo_pipeline"]
