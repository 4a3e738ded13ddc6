"""Block-by-block reductions over a 2-D raster: what samplers read from masks and labels.

A sampler never loads a validity mask or a label raster whole: it hands a small per-block
function to a :class:`BlockRaster` and merges the per-block answers (invalid-pixel counts
per chip, class candidates). :class:`NumpyRaster` runs the function over 2048² tiles of an
in-memory array. Lazy rasters (dask arrays, xarray objects) are turned into block rasters
by adapters that the engine registers (:mod:`patchflow.engine.rasters`), so this module
stays pure numpy and the engine stays the only code that builds dask graphs.

Examples
--------
>>> import numpy as np
>>> r = as_block_raster(np.arange(12).reshape(3, 4), "labels")
>>> r.reduce_blocks(lambda block, r0, c0, key: int(block.sum()))
[66]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from patchflow.errors import DimensionError

__all__ = [
    "NUMPY_TILE",
    "BlockFunction",
    "BlockRaster",
    "NumpyRaster",
    "as_block_raster",
    "register_adapter",
]

#: tile edge used when a numpy raster is processed block by block
NUMPY_TILE = 2048

T = TypeVar("T")
#: ``fn(block, row0, col0, block_key)``: ``block`` is a 2-D numpy array whose top-left
#: pixel is ``(row0, col0)`` in the raster, ``block_key`` its ``(i, j)`` block index
BlockFunction = Callable[[np.ndarray, int, int, tuple[int, int]], T]


@runtime_checkable
class BlockRaster(Protocol):
    """A 2-D raster that can run a function on each of its blocks."""

    @property
    def shape(self) -> tuple[int, int]: ...

    def reduce_blocks(self, fn: BlockFunction[T]) -> list[T]:
        """``fn`` on every block, results in row-major block order."""
        ...

    def sum_blocks(self, fn: BlockFunction[np.ndarray], length: int) -> np.ndarray:
        """The sum over blocks of ``fn``, a ``length`` int64 vector per block."""
        ...


def squeeze_2d(arr: Any, what: str) -> Any:
    """Drop leading length-1 axes; the result must be 2-D."""
    while getattr(arr, "ndim", 0) > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if getattr(arr, "ndim", 0) != 2:
        raise DimensionError(f"{what} must be 2-D (y, x), got shape {getattr(arr, 'shape', None)}")
    return arr


def _tiles(length: int, tile: int) -> list[tuple[int, int]]:
    return [(s, min(s + tile, length)) for s in range(0, length, tile)]


class NumpyRaster:
    """An in-memory 2-D array, reduced tile by tile (``tile``² pixels at a time)."""

    def __init__(self, values: np.ndarray, tile: int = NUMPY_TILE) -> None:
        self.values = values
        self.tile = tile

    @property
    def shape(self) -> tuple[int, int]:
        h, w = self.values.shape
        return int(h), int(w)

    def _blocks(self) -> list[tuple[int, int, int, int, tuple[int, int]]]:
        rows, cols = _tiles(self.shape[0], self.tile), _tiles(self.shape[1], self.tile)
        return [
            (r0, r1, c0, c1, (bi, bj))
            for bi, (r0, r1) in enumerate(rows)
            for bj, (c0, c1) in enumerate(cols)
        ]

    def reduce_blocks(self, fn: BlockFunction[T]) -> list[T]:
        v = self.values
        return [fn(v[r0:r1, c0:c1], r0, c0, key) for r0, r1, c0, c1, key in self._blocks()]

    def sum_blocks(self, fn: BlockFunction[np.ndarray], length: int) -> np.ndarray:
        total = np.zeros(length, np.int64)
        v = self.values
        for r0, r1, c0, c1, key in self._blocks():
            total += fn(v[r0:r1, c0:c1], r0, c0, key)
        return total


#: adapters tried in order by :func:`as_block_raster`; each returns a raster or ``None``
_ADAPTERS: list[Callable[[Any, str], BlockRaster | None]] = []


def register_adapter(
    adapter: Callable[[Any, str], BlockRaster | None],
) -> Callable[[Any, str], BlockRaster | None]:
    """Teach :func:`as_block_raster` a new raster type (the engine registers dask/xarray)."""
    if adapter not in _ADAPTERS:
        _ADAPTERS.append(adapter)
    return adapter


def as_block_raster(values: Any, what: str) -> BlockRaster:
    """``values`` as a 2-D :class:`BlockRaster` (leading length-1 axes dropped).

    Parameters
    ----------
    values
        numpy array, a registered lazy type (dask array, xarray DataArray), or a
        :class:`BlockRaster`.
    what
        How error messages name the raster (``"labels"``, ``"the validity mask"``).
    """
    if isinstance(values, BlockRaster):
        return values
    for adapter in _ADAPTERS:
        raster = adapter(values, what)
        if raster is not None:
            return raster
    return NumpyRaster(np.asarray(squeeze_2d(np.asarray(values), what)))
