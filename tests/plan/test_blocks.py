"""Block plan (chip ↔ block ownership): unit tests and property tests against naive loops."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patchflow.errors import GridError
from patchflow.plan.blocks import AxisPlan, BlockPlan, Piece
from patchflow.plan.grid import AxisGrid, ChipGrid

# ---------------------------------------------------------------------------------------
# unit tests
# ---------------------------------------------------------------------------------------


def test_axis_plan_docstring_example() -> None:
    p = AxisPlan(AxisGrid(1000, 256, 192), (500, 500))
    assert p.n_blocks == 2
    assert p.edges.tolist() == [0, 500, 1000]
    assert p.owner.tolist() == [0, 0, 0, 1, 1]
    assert p.owned(0).tolist() == [0, 192, 384]
    assert p.owned(1).tolist() == [576, 744]
    assert p.chip_range(0) == (0, 3)
    assert p.chip_range(1) == (3, 5)
    assert p.region(0) == (0, 640)
    assert p.region(1) == (576, 1000)
    assert p.read(0) == (0, 640)
    assert p.read(1) == (576, 1000)
    assert p.sources(0) == [0, 1]
    assert p.sources(1) == [1]
    assert p.pieces(0) == [Piece(0, (0, 500), (0, 500))]
    assert p.pieces(1) == [Piece(0, (500, 640), (0, 140)), Piece(1, (0, 424), (76, 500))]


def test_axis_plan_single_chunk() -> None:
    p = AxisPlan(AxisGrid(1000, 256, 192), (1000,))
    assert p.owned(0).tolist() == [0, 192, 384, 576, 744]
    assert p.region(0) == p.read(0) == (0, 1000)
    assert p.sources(0) == [0]
    assert p.pieces(0) == [Piece(0, (0, 1000), (0, 1000))]


def test_axis_plan_region_spans_several_chunks() -> None:
    # chunks much smaller than the chip: the one owning block reads 4 chunks
    p = AxisPlan(AxisGrid(40, 40, 10), (10, 10, 10, 10))
    assert [p.owned(b).tolist() for b in range(4)] == [[0], [], [], []]
    assert p.region(0) == (0, 40)
    assert p.sources(0) == [0, 1, 2, 3]
    for b in range(4):
        assert p.pieces(b) == [Piece(0, (10 * b, 10 * b + 10), (0, 10))]


def test_blocks_owning_no_chips_when_chunks_smaller_than_stride() -> None:
    # anchors 0, 10, ..., 90; chunks of 5: odd blocks hold no anchor
    p = AxisPlan(AxisGrid(100, 10, 10), (5,) * 20)
    for b in range(20):
        owned = p.owned(b).tolist()
        if b % 2:
            assert owned == []
            start = int(p.edges[b])
            assert p.region(b) == (start, start)
            assert p.read(b) == (start, start)
            assert p.sources(b) == []
            lo, hi = p.chip_range(b)
            assert lo == hi
        else:
            assert owned == [5 * b]
            assert p.region(b) == (5 * b, 5 * b + 10)
            assert p.sources(b) == [b, b + 1]
    # an empty block's pixels come entirely from the previous block's halo
    assert p.pieces(1) == [Piece(0, (5, 10), (0, 5))]
    assert p.pieces(2) == [Piece(2, (0, 5), (0, 5))]
    assert p.pieces(19) == [Piece(18, (5, 10), (0, 5))]


def test_empty_blocks_in_block_plan() -> None:
    plan = BlockPlan(ChipGrid((100, 30), 10, 10), ((5,) * 20, (30,)))
    assert plan.n_blocks == (20, 1)
    assert plan.working_blocks == [(i, 0) for i in range(0, 20, 2)]
    counts = plan.chips_per_block()
    assert counts.shape == (20, 1)
    assert counts[::2, 0].tolist() == [3] * 10
    assert counts[1::2, 0].tolist() == [0] * 10
    assert int(counts.sum()) == plan.grid.n_chips


def test_pad_region_passes_the_edge() -> None:
    grid = AxisGrid(100, 32, 24, boundary="pad")
    assert grid.anchors.tolist() == [0, 24, 48, 72]
    p = AxisPlan(grid, (50, 50))
    assert p.owned(0).tolist() == [0, 24, 48]
    assert p.owned(1).tolist() == [72]
    assert p.region(0) == (0, 80)
    assert p.region(1) == (72, 104)  # past the scene edge
    assert p.read(1) == (72, 100)  # clipped to the scene
    assert p.sources(0) == [0, 1]
    assert p.sources(1) == [1]
    assert p.pieces(0) == [Piece(0, (0, 50), (0, 50))]
    assert p.pieces(1) == [Piece(0, (50, 80), (0, 30)), Piece(1, (0, 28), (22, 50))]


def test_pad_scene_smaller_than_chip() -> None:
    p = AxisPlan(AxisGrid(7, 16, 8, boundary="pad"), (3, 4))
    assert p.owned(0).tolist() == [0]
    assert p.owned(1).tolist() == []
    assert p.region(0) == (0, 16)
    assert p.read(0) == (0, 7)
    assert p.sources(0) == [0, 1]
    assert p.pieces(0) == [Piece(0, (0, 3), (0, 3))]
    assert p.pieces(1) == [Piece(0, (3, 7), (0, 4))]


def test_block_plan_product() -> None:
    plan = BlockPlan(ChipGrid((1000, 700), 256, 192), ((500, 500), (300, 400)))
    assert plan.n_blocks == (2, 2)
    assert plan.chunks == ((500, 500), (300, 400))
    # x anchors 0, 192, 384, 444: block 0 owns 0, 192; block 1 owns 384, 444
    assert plan.x.owned(0).tolist() == [0, 192]
    assert plan.x.owned(1).tolist() == [384, 444]
    assert plan.working_blocks == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert plan.chips_per_block().tolist() == [[6, 6], [4, 4]]
    assert int(plan.chips_per_block().sum()) == plan.grid.n_chips
    pieces = plan.pieces(1, 1)
    assert pieces == [(py, px) for py in plan.y.pieces(1) for px in plan.x.pieces(1)]
    assert len(pieces) == 4


def test_block_plan_accepts_lists() -> None:
    plan = BlockPlan(ChipGrid((10, 10), 4, 2), ([5, 5], [10]))  # type: ignore[arg-type]
    assert plan.chunks == ((5, 5), (10,))


@pytest.mark.parametrize(
    ("chunks", "match"),
    [
        ((500, 400), "sum to 900"),
        ((1000, 0), "positive"),
        ((1100, -100), "positive"),
        ((), "positive"),
    ],
)
def test_bad_chunks(chunks: tuple[int, ...], match: str) -> None:
    with pytest.raises(GridError, match=match):
        AxisPlan(AxisGrid(1000, 256, 192), chunks)


# ---------------------------------------------------------------------------------------
# property tests against naive per-pixel loops
# ---------------------------------------------------------------------------------------


def _chunking(draw: st.DrawFn, length: int) -> tuple[int, ...]:
    """A random chunking of ``length``: sorted distinct cut points."""
    cuts = draw(
        st.lists(st.integers(1, max(length - 1, 1)), max_size=min(length - 1, 30), unique=True)
    )
    edges = [0, *sorted(cuts), length]
    return tuple(int(v) for v in np.diff(edges))


def _axis(draw: st.DrawFn, boundary: str) -> AxisPlan:
    length = draw(st.integers(1, 2000))
    max_size = 400 if boundary == "pad" else min(length, 400)
    size = draw(st.integers(1, max_size))
    stride = draw(st.integers(1, size))
    grid = AxisGrid(length, size, stride, boundary)  # type: ignore[arg-type]
    return AxisPlan(grid, _chunking(draw, length))


BOUNDARY = st.sampled_from(["shift", "pad", "drop"])


@st.composite
def axis_plans(draw: st.DrawFn) -> AxisPlan:
    return _axis(draw, draw(BOUNDARY))


@st.composite
def block_plans(draw: st.DrawFn) -> BlockPlan:
    boundary = draw(BOUNDARY)
    py, px = _axis(draw, boundary), _axis(draw, boundary)
    gy, gx = py.grid, px.grid
    grid = ChipGrid(
        (gy.length, gx.length),
        (gy.size, gx.size),
        (gy.stride, gx.stride),
        boundary,  # type: ignore[arg-type]
    )
    return BlockPlan(grid, (py.chunks, px.chunks))


PROPS = settings(deadline=None, max_examples=100)


@PROPS
@given(axis_plans())
def test_every_chip_owned_by_exactly_one_block(p: AxisPlan) -> None:
    assert sum(p.chunks) == p.grid.length
    owners = []
    for b in range(p.n_blocks):
        lo, hi = p.chip_range(b)
        owned = p.owned(b)
        assert owned.tolist() == p.grid.anchors[lo:hi].tolist()
        for a in owned.tolist():
            assert p.edges[b] <= a < p.edges[b + 1]
            owners.append((a, b))
    # concatenating owned chips in block order gives every anchor exactly once
    assert [a for a, _ in owners] == p.grid.anchors.tolist()
    # naive owner: the block whose edges contain the anchor
    for a, b in owners:
        naive = [c for c in range(p.n_blocks) if p.edges[c] <= a < p.edges[c + 1]]
        assert naive == [b]


@PROPS
@given(axis_plans())
def test_regions_cover_owned_chips(p: AxisPlan) -> None:
    for b in range(p.n_blocks):
        start, stop = p.region(b)
        owned = p.owned(b)
        if owned.size == 0:
            assert start == stop == p.edges[b]
        else:
            assert start == owned.min()
            assert stop == owned.max() + p.grid.size
            assert stop - start >= p.grid.size
        rs, re = p.read(b)
        assert rs == start
        assert re == min(stop, p.grid.length)
        assert 0 <= rs <= re <= p.grid.length


@PROPS
@given(axis_plans())
def test_sources_are_chunks_intersecting_read(p: AxisPlan) -> None:
    for b in range(p.n_blocks):
        start, stop = p.read(b)
        naive = [c for c in range(p.n_blocks) if p.edges[c] < stop and p.edges[c + 1] > start]
        assert p.sources(b) == naive
        if p.owned(b).size:
            assert naive and naive[0] == b  # a working block always reads its own chunk


@PROPS
@given(axis_plans())
def test_pieces_tile_covered_pixels_exactly(p: AxisPlan) -> None:
    length = p.grid.length
    for b in range(p.n_blocks):
        lo, hi = int(p.edges[b]), int(p.edges[b + 1])
        # naive: per pixel, the number of (scene-clipped) block regions covering it
        expected = np.zeros(hi - lo, dtype=np.int64)
        for src in range(p.n_blocks):
            start, stop = p.region(src)
            stop = min(stop, length)
            for pix in range(lo, hi):
                if start <= pix < stop:
                    expected[pix - lo] += 1
        got = np.zeros(hi - lo, dtype=np.int64)
        pieces = p.pieces(b)
        assert [pc.block for pc in pieces] == sorted({pc.block for pc in pieces})
        for pc in pieces:
            (s0, s1), (d0, d1) = pc.src, pc.dst
            assert s1 - s0 == d1 - d0 > 0
            assert 0 <= d0 < d1 <= hi - lo
            start, stop = p.read(pc.block)
            assert 0 <= s0 < s1 <= stop - start
            # src and dst index the same scene pixels
            assert start + s0 == lo + d0
            got[d0:d1] += 1
        np.testing.assert_array_equal(got, expected)
        # stride <= size: regions cover exactly the pixels some chip covers
        coverage = p.grid.coverage()[lo:hi]
        np.testing.assert_array_equal(got > 0, coverage > 0)


@settings(deadline=None, max_examples=50)
@given(block_plans())
def test_block_plan_is_outer_product(plan: BlockPlan) -> None:
    grid = plan.grid
    assert plan.y.grid == grid.y and plan.x.grid == grid.x
    counts = plan.chips_per_block()
    assert int(counts.sum()) == grid.n_chips
    working = set(plan.working_blocks)
    for i in range(plan.n_blocks[0]):
        for j in range(plan.n_blocks[1]):
            assert ((i, j) in working) == bool(counts[i, j])
            assert counts[i, j] == plan.y.owned(i).size * plan.x.owned(j).size
            pairs = plan.pieces(i, j)
            assert pairs == [(a, b) for a in plan.y.pieces(i) for b in plan.x.pieces(j)]
            for pyc, pxc in pairs:
                assert (pyc.block, pxc.block) in working
