"""The ``.patch`` accessor on DataArray and Dataset: a thin veneer over the free functions.

Nothing is cached on the accessor: CRS and transform are re-read through rioxarray on each
call, so an object whose georeferencing changes is never processed with stale metadata.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import xarray as xr

from patchflow.core import ChipLayout, apply, plan_grid
from patchflow.store import RunReport, run

__all__ = ["PatchAccessor"]

T = TypeVar("T", xr.DataArray, xr.Dataset)


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
        """Same as :func:`patchflow.plan_grid` on this object."""
        return plan_grid(self._obj, **params)


xr.register_dataarray_accessor("patch")(PatchAccessor)
xr.register_dataset_accessor("patch")(PatchAccessor)
