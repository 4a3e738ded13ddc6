"""The ``.patch`` accessor on DataArray and Dataset: a thin veneer over the free functions.

Nothing is cached on the accessor: CRS and transform are re-read through rioxarray on each
call, so an object whose georeferencing changes is never processed with stale metadata.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import xarray as xr

from patchflow.core import ChipLayout, apply, plan_grid
from patchflow.errors import check_keywords
from patchflow.sampling import polygon_chips, sample, stitch_anchors, zonal_stats
from patchflow.store import RunReport, run

__all__ = ["PatchAccessor"]

T = TypeVar("T", xr.DataArray, xr.Dataset)


def _keywords(fn: Callable[..., Any]) -> list[str]:
    """The keyword-only parameter names of ``fn``."""
    params = inspect.signature(fn).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


class PatchAccessor(Generic[T]):
    """``obj.patch.apply(op, ...)`` and ``obj.patch.grid(...)``.

    Examples
    --------
    >>> import numpy as np, xarray as xr, patchflow
    >>> scene = xr.DataArray(np.ones((1, 300, 300)), dims=("band", "y", "x"))
    >>> scene.patch.grid(size=128, stride=96).grid.counts
    (3, 3)
    """

    def __init__(self, obj: T) -> None:
        self._obj: T = obj

    def apply(self, op: Any, **params: Any) -> xr.DataArray:
        """Same as :func:`patchflow.apply` on this object."""
        return apply(self._obj, op, **params)

    def run(self, op: Any, **params: Any) -> RunReport:
        """Same as :func:`patchflow.run` on this object (stream into a Zarr store)."""
        return run(self._obj, op, **params)

    def grid(self, **params: Any) -> ChipLayout:
        """Same as :func:`patchflow.plan_grid` on this object.

        Unknown keywords raise :class:`~patchflow.errors.ParameterError` with patchflow's
        equivalent of other libraries' names (``overlap=`` → ``stride=``) or the closest
        valid name.
        """
        check_keywords("grid", params, _keywords(plan_grid))
        return plan_grid(self._obj, **params)

    def sample(self, sampler: Any, **params: Any) -> xr.DataArray:
        """Same as :func:`patchflow.sample`: a lazy ``(chip, …, y, x)`` chip dataset."""
        return sample(self._obj, sampler, **params)

    def zonal_stats(
        self,
        gdf: Any,
        stats: Any = ("mean", "std", "min", "max", "count", "median"),
        **params: Any,
    ) -> Any:
        """Same as :func:`patchflow.zonal_stats`: per-polygon statistics (a DataFrame)."""
        return zonal_stats(self._obj, gdf, stats, **params)

    def stitch_anchors(self, chip_outputs: Any, anchors: Any = None, **params: Any) -> Any:
        """Same as :func:`patchflow.stitch_anchors`: blend chips at arbitrary anchors."""
        return stitch_anchors(self._obj, chip_outputs, anchors, **params)

    def polygon_chips(self, gdf: Any, **params: Any) -> Any:
        """Same as :func:`patchflow.polygon_chips`: one chip per polygon bounding box."""
        return polygon_chips(self._obj, gdf, **params)


xr.register_dataarray_accessor("patch")(PatchAccessor)
xr.register_dataset_accessor("patch")(PatchAccessor)
