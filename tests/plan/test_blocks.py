"""Block plan (chip ↔ block ownership): unit tests and property tests against naive loops;
the block size patchflow picks (``auto_block``)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

import patchflow
from patchflow.errors import GridError
from patchflow.plan.blocks import (
    BLOCKS_PER_THREAD,
    MIN_AUTO_BLOCK,
    TARGET_BLOCK,
    AxisPlan,
    BlockPlan,
    Piece,
    auto_block,
    default_block,
)
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


# ---------------------------------------------------------------------------------------
# block size patchflow picks (issue 15): enough blocks for every worker thread
# ---------------------------------------------------------------------------------------


def _working(length: int, edge: int, size: int, stride: int) -> int:
    """Blocks of ``edge`` along an axis that own at least one chip (the real plan)."""
    chunks = [edge] * (length // edge) + ([length % edge] if length % edge else [])
    plan = AxisPlan(AxisGrid(length, size, stride), tuple(chunks))
    return sum(1 for b in range(plan.n_blocks) if plan.owned(b).size)


def test_default_block_is_the_stride_multiple_above_2048() -> None:
    assert default_block(256, 192) == 2112
    assert default_block(64, 48) == 2064
    assert default_block(4096, 4096) == 4096  # never below one chip
    assert TARGET_BLOCK == 2048


@pytest.mark.parametrize(
    ("shape", "threads", "expected"),
    [
        ((10_000, 10_000), 2, (2112, 2112)),  # big scene: today's rule
        ((4_000, 4_000), 2, (2112, 2112)),  # 2 x 2 blocks already feed 2 threads twice
        ((4_000, 4_000), 8, (1152, 1152)),  # 4 x 4 = 16 blocks for 8 threads
        ((1_000, 1_000), 2, (576, 576)),  # one 2112 block before: now 2 x 2
        ((1_000, 1_000), 1, (1152, 576)),  # one thread: two blocks are enough
        ((1_000, 1_000), 64, (576, 576)),  # the floor: 2 x size, as many as it allows
        ((600, 600), 2, (2112, 2112)),  # a 576 block would leave a 24 px sliver: no gain
        ((300, 260), 8, (2112, 2112)),  # a few chips: one block
    ],
)
def test_auto_block_examples(
    shape: tuple[int, int], threads: int, expected: tuple[int, int]
) -> None:
    assert auto_block(shape, (256, 256), (192, 192), threads=threads) == expected


@settings(deadline=None, max_examples=300)
@given(
    st.integers(1, 12_000),
    st.integers(1, 12_000),
    st.integers(8, 700),
    st.data(),
    st.integers(1, 64),
)
def test_auto_block_rule(h: int, w: int, size: int, data: st.DataObject, threads: int) -> None:
    stride = data.draw(st.integers(max(1, size // 4), size))
    by, bx = auto_block((h, w), (size, size), (stride, stride), threads=threads)
    top = default_block(size, stride)
    floor = min(top, stride * -(-max(2 * size, MIN_AUTO_BLOCK) // stride))
    for edge in (by, bx):
        assert edge % stride == 0  # every block owns the same number of chips
        assert floor <= edge <= top  # never below the overhead floor, never above today's
    want = BLOCKS_PER_THREAD * threads
    if size > min(h, w):
        return  # no shift grid (pad only): nothing to compare against
    got = _working(h, by, size, stride) * _working(w, bx, size, stride)
    default = _working(h, top, size, stride) * _working(w, top, size, stride)
    best = _working(h, floor, size, stride) * _working(w, floor, size, stride)
    if default >= want:
        assert (by, bx) == (top, top)  # a scene with enough blocks keeps today's rule
    else:
        # as many working blocks as asked for, or as the floor allows
        assert got >= min(want, best)
        assert got >= default


def test_auto_block_counts_only_blocks_that_own_chips() -> None:
    # 1000 px at 576: blocks 576 + 424, both own chips (anchors 0, 192, 384 | 576, 744)
    assert _working(1000, 576, 256, 192) == 2
    # 600 px at 576: the 24 px tail owns none, so 576 gives one working block: keep 2112
    assert _working(600, 576, 256, 192) == 1
    assert auto_block((600, 600), (256, 256), (192, 192), threads=4) == (2112, 2112)


# ---------------------------------------------------------------------------------------
# ... through the engine: worker threads of the active scheduler, apply's blocks
# ---------------------------------------------------------------------------------------


def _ndvi_like(chips: np.ndarray) -> np.ndarray:
    red, nir = chips[:1].astype(np.float64), chips[1:2].astype(np.float64)
    return (nir - red) / (nir + red + 1.0)


def test_worker_threads_follows_the_dask_config() -> None:
    from concurrent.futures import ThreadPoolExecutor

    import dask
    from dask.system import CPU_COUNT

    from patchflow.engine.prepare import worker_threads

    assert worker_threads() == CPU_COUNT
    with dask.config.set(scheduler="sync"):
        assert worker_threads() == 1
    with dask.config.set(scheduler="threads", num_workers=5):
        assert worker_threads() == 5
    with dask.config.set(scheduler="processes"):
        assert worker_threads() == CPU_COUNT
    with ThreadPoolExecutor(7) as pool, dask.config.set(pool=pool):
        assert worker_threads() == 7
    with ThreadPoolExecutor(3) as pool, dask.config.set(scheduler=pool):
        assert worker_threads() == 3


def test_worker_threads_of_a_distributed_client() -> None:
    distributed = pytest.importorskip("distributed")
    from patchflow.engine.prepare import worker_threads

    with (
        distributed.LocalCluster(
            n_workers=3, threads_per_worker=4, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
    ):
        assert worker_threads() == 12
        scene = _scene((3000, 3000))
        out = patchflow.apply(scene, _ndvi_like, size=256, stride=192)
        # 12 threads want 24 blocks: 768 px gives 4 x 4 = 16, 576 px 5 x 5 = 25 working
        # blocks (and a 120 px tail each way, which owns no chip)
        assert out.data.chunksize[-2:] == (576, 576)
        assert out.data.numblocks[-2:] == (6, 6)
    from dask.system import CPU_COUNT

    assert worker_threads() == CPU_COUNT  # the client is gone


def _scene(shape: tuple[int, int], chunks: int | None = None) -> xr.DataArray:
    """A 2-band scene, numpy-backed (or in dask chunks): cheap, since only graphs are built
    from most of them (values matter in :func:`test_auto_blocks_do_not_change_results`)."""
    values = np.random.default_rng(2).integers(1, 4000, (2, *shape), dtype=np.uint16)
    scene = xr.DataArray(values, dims=("band", "y", "x"))
    return scene if chunks is None else scene.chunk({"y": chunks, "x": chunks})


@pytest.mark.parametrize(
    ("shape", "threads", "numblocks"),
    [
        ((1000, 1000), 2, (2, 2)),  # was one block: the dashboard showed one task
        ((1000, 1000), 1, (1, 2)),
        ((4000, 4000), 2, (2, 2)),  # today's 2112 px blocks
        ((4000, 4000), 8, (4, 4)),
        ((300, 260), 8, (1, 1)),  # a few chips: one block
    ],
)
def test_apply_blocks_for_numpy_input(
    shape: tuple[int, int], threads: int, numblocks: tuple[int, int]
) -> None:
    import dask

    scene = _scene(shape)
    with dask.config.set(scheduler="threads", num_workers=threads):
        out = patchflow.apply(scene, _ndvi_like, size=256, stride=192)
    assert out.data.numblocks[-2:] == numblocks
    for chunks in out.data.chunks[-2:]:
        assert all(c % 192 == 0 for c in chunks[:-1])  # stride multiples, as before


def test_apply_blocks_for_single_chunk_and_chunked_input() -> None:
    import dask

    with dask.config.set(scheduler="threads", num_workers=2):
        one_chunk = _scene((1000, 1000), chunks=1000)
        assert one_chunk.data.numblocks[-2:] == (1, 1)
        out = patchflow.apply(one_chunk, _ndvi_like, size=256, stride=192)
        assert out.data.numblocks[-2:] == (2, 2)
        # the input's own chunks (each holding a chip) are kept, as before
        chunked = _scene((1000, 1000), chunks=500)
        out = patchflow.apply(chunked, _ndvi_like, size=256, stride=192)
        assert out.data.chunks[-2:] == ((500, 500), (500, 500))
        # chunks= still overrides
        out = patchflow.apply(_scene((1000, 1000)), _ndvi_like, size=256, stride=192, chunks=1000)
        assert out.data.numblocks[-2:] == (1, 1)


def test_auto_blocks_do_not_change_results() -> None:
    import dask

    scene = _scene((1100, 900))
    whole = patchflow.apply(scene, _ndvi_like, size=256, stride=192, chunks=2112).values
    for threads in (1, 2, 4, 16):
        with dask.config.set(scheduler="threads", num_workers=threads):
            out = patchflow.apply(scene, _ndvi_like, size=256, stride=192)
            assert out.data.npartitions > 1
            # the same chips and weights; only the order of float sums may differ
            np.testing.assert_allclose(out.values, whole, rtol=1e-12, atol=1e-15)
    pointwise = patchflow.ops.NDVI(red=0, nir=1)
    ref = patchflow.apply(scene, pointwise, size=256, stride=192, chunks=2112).values
    with dask.config.set(scheduler="threads", num_workers=4):
        out = patchflow.apply(scene, pointwise, size=256, stride=192)
        assert out.data.npartitions > 1
        np.testing.assert_array_equal(out.values, ref)
