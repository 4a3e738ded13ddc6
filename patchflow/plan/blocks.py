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

When patchflow chooses the blocks itself (numpy-backed input, or one input chunk),
:func:`auto_block` picks their edge: about 2048 pixels, smaller on a small scene so every
worker thread gets blocks, never so small that per-block overhead dominates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from patchflow.errors import GridError
from patchflow.plan.grid import AxisGrid, ChipGrid

__all__ = [
    "BLOCKS_PER_THREAD",
    "MIN_AUTO_BLOCK",
    "TARGET_BLOCK",
    "AxisPlan",
    "BlockPlan",
    "Piece",
    "auto_block",
    "default_block",
]

#: target block edge (pixels) when patchflow picks chunks itself; rounded up to a stride
#: multiple so every block owns the same number of chips
TARGET_BLOCK = 2048
#: smallest block edge patchflow picks to give every worker thread work (with 2 × the chip
#: size, rounded up to a stride multiple): a block costs ~0.5 ms of fixed work (plan,
#: buffers, scheduling) and re-reads a ``size - stride`` halo, so a 512² block of the
#: cheapest op (band math, ~5 ms) pays ~10% overhead, a 256² one ~45% (measured)
MIN_AUTO_BLOCK = 512
#: blocks per worker thread patchflow aims for when it picks the blocks: two, so a slow
#: block does not leave the other threads idle at the end of the run
BLOCKS_PER_THREAD = 2


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


# --------------------------------------------------------------------------- block size


def default_block(size: int, stride: int) -> int:
    """The multiple of ``stride`` nearest above :data:`TARGET_BLOCK` (and ``size``).

    Examples
    --------
    >>> default_block(256, 192)
    2112
    """
    return stride * math.ceil(max(TARGET_BLOCK, size) / stride)


def _working(length: int, edge: int, chip: int) -> int:
    """Blocks of ``edge`` pixels along ``length`` that own chips: a last block shorter than
    a chip owns none on a shift/drop grid (the last chip starts before it)."""
    return max(1, length // edge + (length % edge >= chip))


def _axis_edges(length: int, size: int, stride: int, most: int) -> list[int]:
    """Block edges worth trying along one axis: today's default, then for each block count
    ``n`` the smallest stride multiple giving at most ``n`` blocks (the most even split),
    until one gives ``most`` blocks, never below ``max(2 × size, MIN_AUTO_BLOCK)``."""
    top = default_block(size, stride)
    floor = min(top, stride * math.ceil(max(2 * size, MIN_AUTO_BLOCK) / stride))
    edges = [top]
    n = 0
    while edges[-1] > floor and _working(length, edges[-1], size) < most:
        n += 1
        # rounding up to a stride multiple may give fewer than n blocks: keep counting
        edge = max(floor, stride * math.ceil(math.ceil(length / n) / stride))
        if edge < edges[-1]:
            edges.append(edge)
    return edges


def auto_block(
    shape: tuple[int, int],
    size: tuple[int, int],
    stride: tuple[int, int],
    *,
    threads: int,
) -> tuple[int, int]:
    """The ``(y, x)`` block edge patchflow picks for input whose blocks it chooses.

    Rule: :func:`default_block` (the stride multiple nearest above :data:`TARGET_BLOCK`,
    2048 pixels) as long as that gives every worker thread :data:`BLOCKS_PER_THREAD`
    blocks that own chips; on a smaller scene, the stride multiples giving that many with
    the fewest blocks (then the least ragged last blocks, then the squarest), but never
    below ``max(2 × size, MIN_AUTO_BLOCK)``: smaller blocks cost more in per-block
    overhead and halo re-reads than the parallelism gains. A scene too small for that
    many blocks gets as many as the floor allows, and one too small for two keeps the
    default (one block). Results never depend on the blocks.

    Parameters
    ----------
    shape
        Scene ``(height, width)``.
    size, stride
        Chip ``(y, x)`` size and stride.
    threads
        Worker threads that will run the blocks
        (:func:`patchflow.engine.prepare.worker_threads` for the active scheduler).

    Examples
    --------
    >>> auto_block((10_000, 10_000), (256, 256), (192, 192), threads=2)
    (2112, 2112)
    >>> auto_block((1_000, 1_000), (256, 256), (192, 192), threads=2)
    (576, 576)
    >>> auto_block((3_000, 3_000), (256, 256), (192, 192), threads=8)
    (768, 768)
    """
    want = BLOCKS_PER_THREAD * max(1, int(threads))
    ys = _axis_edges(shape[0], size[0], stride[0], want)
    xs = _axis_edges(shape[1], size[1], stride[1], want)

    def count(by: int, bx: int) -> int:
        return _working(shape[0], by, size[0]) * _working(shape[1], bx, size[1])

    default = count(ys[0], xs[0])
    pairs = [(by, bx) for by in ys for bx in xs]
    # a scene too small for ``want`` blocks gets as many as the floor allows
    target = min(want, max(count(*b) for b in pairs))
    if default >= target:
        return ys[0], xs[0]  # enough blocks already, or no smaller block adds any
    enough = [b for b in pairs if count(*b) >= target]

    def cost(block: tuple[int, int]) -> tuple[int, int, float]:
        by, bx = block
        # fewest blocks first; then the least work in the scene's last, partial blocks
        # (padding the parallel schedule); then the squarest (least halo per pixel)
        ragged = (-shape[0] % by) * shape[1] + (-shape[1] % bx) * shape[0]
        return count(by, bx), ragged, max(by, bx) / min(by, bx)

    return min(enough, key=cost)
