"""``python -m patchflow``: the ``patchflow`` command (see :mod:`patchflow.cli`)."""

from __future__ import annotations

import sys

from patchflow.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
