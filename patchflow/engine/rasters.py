"""Lazy rasters for the samplers: dask arrays and xarray objects reduced block by block.

``patchflow`` registers :func:`lazy_raster` with
:func:`patchflow.plan.rasters.as_block_raster` (loading this module only when a
non-numpy raster shows up), so that a sampler given a lazy validity mask or label raster
reads it chunk by chunk through a dask graph (built in :mod:`patchflow.engine.graph`),
never whole.

Examples
--------
>>> import dask.array as da
>>> from patchflow.plan.rasters import as_block_raster
>>> r = as_block_raster(da.ones((4, 6), chunks=2), "mask")
>>> r.reduce_blocks(lambda block, r0, c0, key: key)[:2]
[(0, 0), (0, 1)]
"""

from __future__ import annotations

from typing import Any, TypeVar

import dask.array as da
import numpy as np
import xarray as xr

from patchflow.engine.graph import block_reductions, block_sums
from patchflow.plan.rasters import BlockFunction, BlockRaster, squeeze_2d

__all__ = ["DaskRaster", "lazy_raster"]

T = TypeVar("T")


class DaskRaster:
    """A 2-D dask array: one task per chunk runs the block function."""

    def __init__(self, values: da.Array) -> None:
        self.values = values

    @property
    def shape(self) -> tuple[int, int]:
        h, w = self.values.shape
        return int(h), int(w)

    def reduce_blocks(self, fn: BlockFunction[T]) -> list[T]:
        parts = block_reductions(self.values, fn).compute()
        return [parts[i, j] for i in range(parts.shape[0]) for j in range(parts.shape[1])]

    def sum_blocks(self, fn: BlockFunction[np.ndarray], length: int) -> np.ndarray:
        return np.asarray(block_sums(self.values, fn, length).compute(), dtype=np.int64)


def lazy_raster(values: Any, what: str) -> BlockRaster | None:
    """A dask array or xarray DataArray (with dask data) as a :class:`DaskRaster`."""
    if isinstance(values, xr.DataArray):
        values = values.data
    if isinstance(values, da.Array):
        return DaskRaster(squeeze_2d(values, what))
    return None
