"""patchflow: grid → process → stitch for rasters larger than memory.

>>> import patchflow
>>> sorted(patchflow.AGGREGATIONS)[:3]
['centre', 'max', 'mean']
"""

from __future__ import annotations

import rioxarray  # noqa: F401  (registers the .rio accessor patchflow relies on)

from patchflow import accessor as _accessor  # noqa: F401  (registers .patch)
from patchflow.aggregate import AGGREGATIONS
from patchflow.core import ChipLayout, apply, plan_grid, spatial_dims
from patchflow.errors import (
    DimensionError,
    GridError,
    OperatorError,
    ParameterError,
    PatchflowError,
    PatchflowWarning,
    WindowError,
)
from patchflow.grid import BOUNDARIES, AxisGrid, ChipGrid
from patchflow.models import ModelOp
from patchflow.ops import (
    NBR,
    NDVI,
    NDWI,
    TTA,
    Astype,
    ConfigError,
    DNToReflectance,
    Lambda,
    NormalizedDifference,
    Operator,
    PercentileClip,
    Rescale,
    SelectBands,
    Sequential,
    batched,
    from_config,
    from_json,
    global_percentiles,
    register,
    to_json,
)
from patchflow.plan import BlockPlan
from patchflow.samplers import (
    SAMPLERS,
    Explicit,
    ExplicitCoords,
    JitteredStride,
    PoissonDisk,
    Random,
    RegularStride,
    Sampler,
    Stratified,
)
from patchflow.sampling import (
    ZONAL_STATS,
    open_chips,
    polygon_chips,
    sample,
    stitch_anchors,
    write_chips,
    zonal_stats,
)
from patchflow.store import (
    IncompleteStoreError,
    RunReport,
    StoreError,
    StoreExistsError,
    StoreMismatchError,
    open_result,
    run,
)
from patchflow.windows import WINDOWS, Window, make_window

__version__ = "0.1.0"

__all__ = [
    "AGGREGATIONS",
    "BOUNDARIES",
    "NBR",
    "NDVI",
    "NDWI",
    "SAMPLERS",
    "TTA",
    "WINDOWS",
    "ZONAL_STATS",
    "Astype",
    "AxisGrid",
    "BlockPlan",
    "ChipGrid",
    "ChipLayout",
    "ConfigError",
    "DNToReflectance",
    "DimensionError",
    "Explicit",
    "ExplicitCoords",
    "GridError",
    "IncompleteStoreError",
    "JitteredStride",
    "Lambda",
    "ModelOp",
    "NormalizedDifference",
    "Operator",
    "OperatorError",
    "ParameterError",
    "PatchflowError",
    "PatchflowWarning",
    "PercentileClip",
    "PoissonDisk",
    "Random",
    "RegularStride",
    "Rescale",
    "RunReport",
    "Sampler",
    "SelectBands",
    "Sequential",
    "StoreError",
    "StoreExistsError",
    "StoreMismatchError",
    "Stratified",
    "Window",
    "WindowError",
    "__version__",
    "apply",
    "batched",
    "from_config",
    "from_json",
    "global_percentiles",
    "make_window",
    "open_chips",
    "open_result",
    "plan_grid",
    "polygon_chips",
    "register",
    "run",
    "sample",
    "spatial_dims",
    "stitch_anchors",
    "to_json",
    "write_chips",
    "zonal_stats",
]
