"""patchflow's exception hierarchy.

Every error patchflow raises on purpose derives from :class:`PatchflowError`, so callers
can catch ours without catching everything. Errors about bad arguments also derive from
:class:`ValueError` (or :class:`TypeError`), so generic handlers keep working.
"""

from __future__ import annotations

__all__ = [
    "DimensionError",
    "GridError",
    "OperatorError",
    "ParameterError",
    "PatchflowError",
    "PatchflowWarning",
    "WindowError",
]


class PatchflowError(Exception):
    """Base class of every error patchflow raises on purpose."""


class ParameterError(PatchflowError, ValueError):
    """An option has a value patchflow cannot use (unknown name, wrong type, out of range)."""


class GridError(ParameterError):
    """The chip grid cannot be planned: bad size/stride, chip larger than scene, gaps..."""


class WindowError(ParameterError):
    """The blending window is unknown or malformed."""


class DimensionError(PatchflowError, ValueError):
    """The input lacks the dimensions patchflow needs (spatial y/x)."""


class OperatorError(PatchflowError, RuntimeError):
    """A per-chip operator failed or returned something that breaks its contract."""


class PatchflowWarning(UserWarning):
    """Something works but is probably not what you want (slow chunking, empty output...)."""
