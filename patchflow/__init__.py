"""patchflow: grid → process → stitch for rasters larger than memory.

The names here are the job-level API; everything else lives in one subpackage each:

=====================  ================================================================
subpackage             owns
=====================  ================================================================
:mod:`patchflow.plan`      pure numpy geometry: grids, windows, blocks, samplers
:mod:`patchflow.ops`       the operator contract and the operator library
:mod:`patchflow.masks`     validity masks (SCL, QABits, Mask), from :mod:`patchflow.ops`
:mod:`patchflow.points`    kNN / radius edge indices of point sets (scipy cKDTree)
:mod:`patchflow.engine`    prepare → graph → kernels → aggregate (dask)
:mod:`patchflow.io`        stores, sources, COG writing (the only Zarr code)
:mod:`patchflow.sampling`  chip datasets, anchor stitching, zonal statistics, torch
:mod:`patchflow.api`       the free functions below
:mod:`patchflow.errors`    every exception (all derive from :class:`PatchflowError`)
=====================  ================================================================

``import patchflow`` is light: it registers the ``.patch`` accessor (which needs only
xarray) and loads the engine, dask, zarr and rioxarray the first time a name below is used
(PEP 562), so ``patchflow --help`` and ``import patchflow`` stay fast.

>>> import patchflow
>>> sorted(patchflow.AGGREGATIONS)[:3]
['centre', 'inverse_variance', 'max']
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import numpy as np

from patchflow import accessor as _accessor  # noqa: F401  (registers .patch)
from patchflow.errors import ParameterError, PatchflowError, PatchflowWarning
from patchflow.plan import rasters as _rasters

if TYPE_CHECKING:
    from patchflow.api import (
        apply,
        check_store,
        open_chips,
        open_result,
        plan_grid,
        polygon_chips,
        resume,
        run,
        sample,
        stitch,
        write_chips,
        zonal_stats,
    )
    from patchflow.api import (
        apply_vector as apply_vector,
    )
    from patchflow.api import (
        points_in_chips as points_in_chips,
    )
    from patchflow.api import (
        sample_points as sample_points,
    )
    from patchflow.api import (
        stitch_anchors as stitch_anchors,
    )
    from patchflow.engine.aggregate import AGGREGATIONS
    from patchflow.io.stac import open_stac
    from patchflow.ops import ModelOp, Operator, batched, from_json, to_json
    from patchflow.plan import WINDOWS, ChipGrid, make_window

from patchflow._version import __version__ as __version__  # set in one place

#: where each lazily loaded name lives
_HOMES: dict[str, str] = {
    **dict.fromkeys(
        (
            "apply",
            "apply_vector",
            "check_store",
            "open_chips",
            "open_result",
            "plan_grid",
            "points_in_chips",
            "polygon_chips",
            "resume",
            "run",
            "sample",
            "sample_points",
            "stitch",
            "stitch_anchors",
            "write_chips",
            "zonal_stats",
        ),
        "patchflow.api",
    ),
    "AGGREGATIONS": "patchflow.engine.aggregate",
    "open_stac": "patchflow.io.stac",
    **dict.fromkeys(("ModelOp", "Operator", "batched", "from_json", "to_json"), "patchflow.ops"),
    **dict.fromkeys(("WINDOWS", "ChipGrid", "make_window"), "patchflow.plan"),
}
_SUBPACKAGES = frozenset(
    {"api", "engine", "errors", "io", "masks", "ops", "plan", "points", "sampling"}
)

__all__ = [
    "AGGREGATIONS",
    "WINDOWS",
    "ChipGrid",
    "ModelOp",
    "Operator",
    "ParameterError",
    "PatchflowError",
    "PatchflowWarning",
    "apply",
    "batched",
    "check_store",
    "errors",
    "from_json",
    "io",
    "make_window",
    "open_chips",
    "open_result",
    "open_stac",
    "ops",
    "plan",
    "plan_grid",
    "polygon_chips",
    "resume",
    "run",
    "sample",
    "sampling",
    "stitch",
    "to_json",
    "write_chips",
    "zonal_stats",
]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        value = getattr(importlib.import_module(_HOMES[name]), name)
        globals()[name] = value  # once loaded, a plain attribute
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f"patchflow.{name}")
    raise AttributeError(f"module 'patchflow' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def _lazy_rasters(values: Any, what: str) -> Any:
    """Hand lazy masks and label rasters to the engine (loaded only when one shows up)."""
    if isinstance(values, np.ndarray):
        return None
    from patchflow.engine.rasters import lazy_raster

    return lazy_raster(values, what)


_rasters.register_adapter(_lazy_rasters)
