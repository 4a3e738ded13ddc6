"""The package version, in one place.

``pyproject.toml`` reads it at build time (``[tool.setuptools.dynamic]``, parsed without
importing patchflow), ``patchflow.__version__`` re-exports it, and ``patchflow --version``
prints it, so the three cannot disagree.

>>> from patchflow._version import __version__
>>> __version__.count(".") >= 2
True
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
