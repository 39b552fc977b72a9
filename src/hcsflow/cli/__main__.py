"""``python -m hcsflow.cli``: the ``hcsflow`` command."""

import sys

from hcsflow.cli import main

sys.exit(main())
