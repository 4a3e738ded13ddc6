"""Pure numpy geometry: chip grids, windows, block ownership, samplers and chip layouts.

=====================  ================================================================
module                 owns
=====================  ================================================================
:mod:`.grid`           :class:`ChipGrid` / :class:`AxisGrid`: where chips go, boundaries,
                       rotation-aware bounds
:mod:`.windows`        blending windows (fixed-point weights, scipy specs)
:mod:`.blocks`         :class:`BlockPlan`: which output block owns which chips and halo
:mod:`.samplers`       seeded chip samplers (regular, random, Poisson-disk, …)
:mod:`.rasters`        block-by-block reductions the samplers run on validity masks and
                       label rasters (numpy here; lazy ones registered by the engine)
:mod:`.layout`         :class:`ChipLayout` (a grid with its transform and CRS) and
                       :class:`PolygonChip`
=====================  ================================================================

Nothing here imports dask, xarray or zarr (checked by import-linter).
"""

from __future__ import annotations

from patchflow.plan.blocks import BlockPlan
from patchflow.plan.grid import BOUNDARIES, AxisGrid, ChipGrid
from patchflow.plan.layout import ChipLayout
from patchflow.plan.windows import WINDOWS, Window, make_window

__all__ = [
    "BOUNDARIES",
    "WINDOWS",
    "AxisGrid",
    "BlockPlan",
    "ChipGrid",
    "ChipLayout",
    "Window",
    "make_window",
]
