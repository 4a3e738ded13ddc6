"""Training chips and statistics on top of the engine: chip datasets, stitching chips at any
sampler's anchors, zonal statistics and torch datasets.

=====================  ================================================================
module                 owns
=====================  ================================================================
:mod:`.chips`          ``sample``: chips at a sampler's anchors as a lazy DataArray
:mod:`.stitch`         ``stitch``: chip outputs at any anchors → one map (any agg)
:mod:`.zonal`          ``zonal_stats``, ``polygon_chips``
:mod:`.point_values`   ``sample_points`` (raster values at points), ``points_in_chips``
:mod:`.vectors`        ``apply_vector``: geometries from chips → one de-duplicated table
:mod:`.torch_data`     ``ChipStoreDataset``, ``LazyChipDataset`` (torch optional)
=====================  ================================================================

Graphs come from :mod:`patchflow.engine.graph`, chip stores from :mod:`patchflow.io.chips`.
"""

from __future__ import annotations

from patchflow.sampling.chips import chip_array, sample
from patchflow.sampling.point_values import SAMPLE_METHODS, points_in_chips, sample_points
from patchflow.sampling.stitch import stitch, stitch_anchors
from patchflow.sampling.vectors import Shapes, apply_vector
from patchflow.sampling.zonal import (
    DEFAULT_STATS,
    ZONAL_STATS,
    PolygonChip,
    polygon_chips,
    zonal_stats,
)

__all__ = [
    "DEFAULT_STATS",
    "SAMPLE_METHODS",
    "ZONAL_STATS",
    "PolygonChip",
    "Shapes",
    "apply_vector",
    "chip_array",
    "points_in_chips",
    "polygon_chips",
    "sample",
    "sample_points",
    "stitch",
    "stitch_anchors",
    "zonal_stats",
]
