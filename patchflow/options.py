"""Names of patchflow's fixed-choice options, for annotations (editors, ``help()``, mypy).

Each alias lists exactly the strings the option accepts at run time; the runtime checks
(and their error messages) stay with the code that validates each option:
:data:`SizeSpec` (chip ``size``/``stride``) with :func:`patchflow.plan.grid.size_pair`,
``patchflow.plan.grid.BOUNDARIES``, ``patchflow.engine.prepare.PAD_MODES``,
``patchflow.AGGREGATIONS``, ``patchflow.engine.prepare.ON_ERROR`` and
``patchflow.io.store.MODES``.

>>> from typing import get_args
>>> get_args(Boundary)
('shift', 'pad', 'drop', 'raise')
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, TypeAlias

__all__ = [
    "DEFAULT_SIZE",
    "DEFAULT_STATS",
    "ZONAL_STATS",
    "Agg",
    "Boundary",
    "OnError",
    "PadMode",
    "RunMode",
    "SizeSpec",
    "ZarrFormat",
    "given_keywords",
]

#: how chips meet the scene edge (``patchflow.plan.grid.BOUNDARIES``)
Boundary: TypeAlias = Literal["shift", "pad", "drop", "raise"]
#: how ``boundary="pad"`` fills chips past the edge (numpy pad modes; ``core.PAD_MODES``)
PadMode: TypeAlias = Literal["constant", "reflect", "edge", "symmetric", "wrap"]
#: how overlapping chip outputs combine (``patchflow.AGGREGATIONS``)
Agg: TypeAlias = Literal[
    "overlap_add",
    "mean",
    "max",
    "min",
    "vote",
    "soft_vote",
    "centre",
    "sum",
    "weighted_sum",
    "mean_std",
    "inverse_variance",
    "median",
    "mode",
]
#: what a failing chip does (``core.ON_ERROR``)
OnError: TypeAlias = Literal["raise", "mask", "retry", "skip"]
#: what :func:`patchflow.run` does with the store (``store.MODES``)
RunMode: TypeAlias = Literal["w", "accumulate"]
#: the Zarr format of :func:`patchflow.run`'s store (2: readable by GDAL and so QGIS)
ZarrFormat: TypeAlias = Literal[2, 3]
#: what per-geometry results come back as (``zonal_stats``, ``sample_points``)
VectorOutput: TypeAlias = Literal["geopandas", "xvec"]
VECTOR_OUTPUTS: Final = ("geopandas", "xvec")
#: how ``apply_vector`` removes the duplicates of overlapping chips
Dedup: TypeAlias = Literal["ownership", "nms", "none"]
DEDUPS: Final = ("ownership", "nms", "none")
#: how ``sample_points`` reads a value at a point
SampleMethod: TypeAlias = Literal["nearest", "bilinear"]
#: a chip ``size`` or ``stride`` (pixels): one int for both axes, a ``(y, x)`` pair, or a
#: mapping keyed by spatial axis, ``{"y": 256, "x": 128}`` (or the raster's own dim names,
#: ``{"lat": 256, "lon": 128}``); normalised in one place,
#: :func:`patchflow.plan.grid.size_pair`
SizeSpec: TypeAlias = int | tuple[int, int] | Mapping[str, int]


class _Default(int):
    """An int default: equal to the number, but not the object a call passes explicitly."""

    __slots__ = ()


#: the ``size=`` default of :func:`patchflow.apply`, :func:`patchflow.run` and the accessor:
#: ``256`` like :func:`patchflow.engine.prepare.prepare`'s, but its own object, since Python shares
#: small ints: so ``size=256`` given explicitly is told from no ``size`` at all (an unknown
#: keyword's worked example says "size=256 (the default)" only for the latter)
DEFAULT_SIZE: Final[int] = _Default(256)


def given_keywords(
    fn: Callable[..., Any], scope: Mapping[str, Any], target: Callable[..., Any] | None = None
) -> dict[str, Any]:
    """The optional keyword-only parameters a call of ``fn`` set, from its ``locals()``.

    A wrapper that spells out the keywords of the function it calls passes them on with
    ``target(..., **given_keywords(fn, locals(), target))``, as ``**params`` once did:
    the names come from the signatures, so none is forgotten, and a parameter counts as
    given unless its value *is* ``fn``'s default object, so ``target``'s own defaults
    apply and anything recording the call (a store's resume recipe, an unknown keyword's
    worked example) sees what the caller wrote. Only names ``target`` (default: ``fn``)
    takes as keywords are returned; required keywords (no default) are left to the caller
    to pass by name, as type checkers expect.

    Examples
    --------
    >>> def wrapper(*, size=256, stride=192, own=False): ...
    >>> def target(*, size=256, stride=192): ...
    >>> given_keywords(wrapper, {"size": 256, "stride": 96, "own": True}, target)
    {'stride': 96}
    """
    wanted = {
        p.name
        for p in inspect.signature(target or fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    return {
        p.name: scope[p.name]
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
        and p.default is not inspect.Parameter.empty
        and p.name in wanted
        and p.name in scope
        and scope[p.name] is not p.default
    }


#: statistics :func:`patchflow.zonal_stats` computes, and its default selection
ZONAL_STATS: tuple[str, ...] = ("mean", "std", "min", "max", "count", "median", "sum")
DEFAULT_STATS: tuple[str, ...] = ("mean", "std", "min", "max", "count", "median")
