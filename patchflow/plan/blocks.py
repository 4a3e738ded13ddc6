"""Chip ↔ block ownership: which block computes which chips, reads what, and feeds whom.

Pure numpy, no dask/xarray/zarr. The engine's dask blocks are the (spatial) chunks of the
input; the output uses the same chunk grid. Along each axis:

* a chip is **owned** by the block that contains its anchor (its first pixel), so every
  chip is computed by exactly one task;
* a block's **region** runs from its first owned anchor to its last owned anchor plus the
  chip size: the block reads that region (its own pixels plus a one-sided trailing halo
  of at most ``size - 1`` pixels) and returns partial sums over it. The part of the region
  past the scene edge (``boundary="pad"``) is padded on read and cropped on write;
* an output block is stitched from the **pieces** of every region that overlaps it
  (its own block and the preceding ones whose halos spill into it) — the reverse of a
  halo exchange.

The 2-D plan is the outer product of two :class:`AxisPlan` objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from patchflow.errors import GridError
from patchflow.plan.grid import AxisGrid, ChipGrid

__all__ = ["AxisPlan", "BlockPlan", "Piece"]


class Piece(NamedTuple):
    """A slice of source block ``block``'s region that lands in an output block.

    ``src`` indexes the source region, ``dst`` the output block (both half-open).
    """

    block: int
    src: tuple[int, int]
    dst: tuple[int, int]


def _edges(chunks: tuple[int, ...], length: int, axis: str) -> np.ndarray:
    sizes = np.asarray(chunks, dtype=np.int64)
    if sizes.ndim != 1 or sizes.size == 0 or (sizes <= 0).any():
        raise GridError(f"chunks along {axis} must be positive ints, got {chunks!r}")
    if int(sizes.sum()) != length:
        raise GridError(
            f"chunks along {axis} sum to {int(sizes.sum())}, but the scene has {length}"
        )
    return np.concatenate([[0], np.cumsum(sizes)])


@dataclass(frozen=True)
class AxisPlan:
    """Block ownership along one axis.

    Parameters
    ----------
    grid
        The chip anchors along this axis.
    chunks
        Block lengths along the axis (they must sum to the scene length).

    Examples
    --------
    >>> p = AxisPlan(AxisGrid(1000, 256, 192), (500, 500))
    >>> p.owned(0).tolist(), p.owned(1).tolist()
    ([0, 192, 384], [576, 744])
    >>> p.region(0)
    (0, 640)
    >>> p.pieces(1)
    [Piece(block=0, src=(500, 640), dst=(0, 140)), Piece(block=1, src=(0, 424), dst=(76, 500))]
    """

    grid: AxisGrid
    chunks: tuple[int, ...]
    edges: np.ndarray = field(init=False, repr=False, compare=False)
    owner: np.ndarray = field(init=False, repr=False, compare=False)
    bounds: np.ndarray = field(init=False, repr=False, compare=False)
    regions: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        chunks = tuple(int(c) for c in self.chunks)
        object.__setattr__(self, "chunks", chunks)
        edges = _edges(chunks, self.grid.length, self.grid.axis)
        owner = np.searchsorted(edges, self.grid.anchors, side="right") - 1
        # chip index range [lo, hi) owned by each block
        bounds = np.stack(
            [
                np.searchsorted(owner, np.arange(len(chunks)), side="left"),
                np.searchsorted(owner, np.arange(len(chunks)), side="right"),
            ],
            axis=1,
        )
        # per block region [start, stop) (empty blocks: start == stop == their first edge)
        lo, hi = bounds[:, 0], bounds[:, 1]
        anchors = self.grid.anchors
        has = hi > lo
        start = np.where(has, anchors[np.minimum(lo, anchors.size - 1)], edges[:-1])
        stop = np.where(has, anchors[np.maximum(hi - 1, 0)] + self.grid.size, start)
        regions = np.stack([start, stop], axis=1)
        for name, value in (
            ("edges", edges),
            ("owner", owner),
            ("bounds", bounds),
            ("regions", regions),
        ):
            value.setflags(write=False)
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_pieces", {})

    @property
    def n_blocks(self) -> int:
        """Number of blocks along the axis."""
        return len(self.chunks)

    def owned(self, block: int) -> np.ndarray:
        """Anchors (scene pixels) of the chips ``block`` computes."""
        lo, hi = self.bounds[block]
        return self.grid.anchors[lo:hi]

    def touching(self, block: int) -> np.ndarray:
        """Anchors of every chip with a pixel in ``block`` (owned or spilling into it)."""
        lo, hi = int(self.edges[block]), int(self.edges[block + 1])
        anchors = self.grid.anchors
        return anchors[(anchors < hi) & (anchors + self.grid.size > lo)]

    def chip_range(self, block: int) -> tuple[int, int]:
        """Half-open range of chip indices (along this axis) owned by ``block``."""
        lo, hi = self.bounds[block]
        return int(lo), int(hi)

    def region(self, block: int) -> tuple[int, int]:
        """Scene rows/cols ``[start, stop)`` of ``block``'s partial sums (may pass the edge).

        Empty (``start == stop``) when the block owns no chip.
        """
        start, stop = self.regions[block]
        return int(start), int(stop)

    def read(self, block: int) -> tuple[int, int]:
        """In-scene part of :meth:`region` (what the block reads from the input)."""
        start, stop = self.region(block)
        return start, min(stop, self.grid.length)

    def sources(self, block: int) -> list[int]:
        """Input blocks (chunks) that intersect what ``block`` reads."""
        start, stop = self.read(block)
        if stop <= start:
            return []
        first = int(np.searchsorted(self.edges, start, side="right")) - 1
        last = int(np.searchsorted(self.edges, stop, side="left")) - 1
        return list(range(first, last + 1))

    def pieces(self, block: int) -> list[Piece]:
        """Slices of source regions that land in output ``block``, in source order."""
        cache: dict[int, list[Piece]] = self._pieces  # type: ignore[attr-defined]
        if block in cache:
            return list(cache[block])
        lo, hi = int(self.edges[block]), int(self.edges[block + 1])
        starts = self.regions[: block + 1, 0]
        stops = np.minimum(self.regions[: block + 1, 1], self.grid.length)
        out = []
        # only blocks at or before this one can own chips whose pixels reach it
        for src in np.flatnonzero(np.maximum(starts, lo) < np.minimum(stops, hi)):
            start, stop = int(starts[src]), int(stops[src])
            a, b = max(start, lo), min(stop, hi)
            out.append(Piece(int(src), (a - start, b - start), (a - lo, b - lo)))
        cache[block] = out
        return list(out)


@dataclass(frozen=True)
class BlockPlan:
    """2-D block ownership: the outer product of the ``y`` and ``x`` :class:`AxisPlan`.

    Examples
    --------
    >>> plan = BlockPlan(ChipGrid((1000, 700), 256, 192), ((500, 500), (700,)))
    >>> plan.n_blocks, plan.working_blocks
    ((2, 1), [(0, 0), (1, 0)])
    """

    grid: ChipGrid
    chunks: tuple[tuple[int, ...], tuple[int, ...]]
    y: AxisPlan = field(init=False, repr=False, compare=False)
    x: AxisPlan = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "y", AxisPlan(self.grid.y, tuple(self.chunks[0])))
        object.__setattr__(self, "x", AxisPlan(self.grid.x, tuple(self.chunks[1])))
        object.__setattr__(self, "chunks", (self.y.chunks, self.x.chunks))

    @property
    def n_blocks(self) -> tuple[int, int]:
        """Blocks along ``(y, x)``."""
        return self.y.n_blocks, self.x.n_blocks

    @property
    def working_blocks(self) -> list[tuple[int, int]]:
        """Blocks that own at least one chip (the ones that get a compute task)."""
        ys = [i for i in range(self.y.n_blocks) if self.y.owned(i).size]
        xs = [j for j in range(self.x.n_blocks) if self.x.owned(j).size]
        return [(i, j) for i in ys for j in xs]

    def pieces(self, i: int, j: int) -> list[tuple[Piece, Piece]]:
        """``(y piece, x piece)`` pairs of source regions landing in output block ``(i, j)``."""
        return [(py, px) for py in self.y.pieces(i) for px in self.x.pieces(j)]

    def chips_per_block(self) -> np.ndarray:
        """``(n_blocks_y, n_blocks_x)`` count of chips each block computes."""
        ny = np.diff(self.y.bounds, axis=1)[:, 0]
        nx = np.diff(self.x.bounds, axis=1)[:, 0]
        return np.outer(ny, nx)
