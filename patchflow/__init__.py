"""patchflow: grid → process → stitch for rasters larger than memory.

The names here are the job-level API; everything else lives in one subpackage each:

=====================  ================================================================
subpackage             owns
=====================  ================================================================
:mod:`patchflow.plan`      pure numpy geometry: grids, windows, blocks, samplers
:mod:`patchflow.ops`       the operator contract and the operator library
:mod:`patchflow.engine`    prepare → graph → kernels → aggregate (dask)
:mod:`patchflow.io`        stores, sources, COG writing (the only Zarr code)
:mod:`patchflow.sampling`  chip datasets, anchor stitching, zonal statistics, torch
:mod:`patchflow.api`       the free functions below
:mod:`patchflow.errors`    every exception (all derive from :class:`PatchflowError`)
=====================  ================================================================

>>> import patchflow
>>> sorted(patchflow.AGGREGATIONS)[:3]
['centre', 'max', 'mean']
"""

from __future__ import annotations

import rioxarray  # noqa: F401  (registers the .rio accessor patchflow relies on)

from patchflow import accessor as _accessor  # noqa: F401  (registers .patch)
from patchflow import engine, errors, io, ops, plan, sampling
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
    stitch_anchors,
    write_chips,
    zonal_stats,
)
from patchflow.engine import rasters as _rasters  # noqa: F401  (lazy masks for samplers)
from patchflow.engine.aggregate import AGGREGATIONS
from patchflow.errors import ParameterError, PatchflowError, PatchflowWarning
from patchflow.ops import ModelOp, Operator, batched, from_json, to_json
from patchflow.plan import WINDOWS, ChipGrid, make_window

__version__ = "0.1.0"

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
    "engine",
    "errors",
    "from_json",
    "io",
    "make_window",
    "open_chips",
    "open_result",
    "ops",
    "plan",
    "plan_grid",
    "polygon_chips",
    "resume",
    "run",
    "sample",
    "sampling",
    "stitch_anchors",
    "to_json",
    "write_chips",
    "zonal_stats",
]
