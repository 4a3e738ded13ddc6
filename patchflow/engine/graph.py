"""The engine's dask graph builder: the only module of patchflow that builds dask graphs.

Every graph patchflow writes by hand (layers of tasks, ``HighLevelGraph`` objects, and the
``dask.array`` or ``Delayed`` collections made from them) is assembled here; other modules
only use dask's collection API (``map_blocks``, ``rechunk``, ``dask.delayed``…) or refer to
keys of a graph built here. The task functions run on the workers and live below, in
:mod:`patchflow.engine.kernels` (``apply``/``run``) and
:mod:`patchflow.engine.chip_kernels` (the sampler side); callers plan the work and pass
the plan in as plain data.

The sampler-side graphs, each one task per planned group or block (planned by
:mod:`patchflow.sampling`): :func:`chip_array_graph` (``patchflow-sample-<token>``, plus
``patchflow-read-chips-<token>`` direct reads through :func:`direct_read`),
:func:`anchor_stitch_graph` (``patchflow-anchors-stitch-<token>``),
:func:`zonal_graph` (``patchflow-zonal-<token>`` and ``patchflow-merge-zonal-<token>``; for
h3 cells ``patchflow-hexagon-zonal-<token>`` and ``patchflow-merge-hexagon-zonal-<token>``) and
:func:`point_read_tasks` (``patchflow-point-values-<token>``: raster values at points, one
task per group of points in one chunk) and :func:`vector_graph`
(``patchflow-vector-chips-<token>`` and ``patchflow-vector-merge-<token>``: geometries from
chips, kernels in :mod:`patchflow.engine.vectors`).

The graph of ``apply``/``run`` (:func:`build_graph`) has two layers, each with one task
per block:

``patchflow-chips-<token>``
    per working block ``(i, j)``: gathers the input chunks its region touches (its own chunk
    plus the trailing halo from the next ones), runs all its chips in batched calls and
    returns a partial state (numerator/denominator or the aggregation's equivalent);
``patchflow-stitch-<token>``
    per output block ``(i, j)``: adds the pieces of every partial overlapping it (its own,
    plus spill-over from the blocks before it) and finalises — the reverse of
    ``map_overlap``'s halo exchange.

Between them, per source chunk and per block row that borrows from it, a
``patchflow-halo-<token>`` task cuts the halo strips that row's blocks need (from a
``patchflow-read-halo-<token>`` direct read of just their bounding box when the input is a
plain getter), and ``patchflow-piece-<token>`` tasks copy each partial's spill-over.

Keys are deterministic (``tokenize`` of the input's name, the plan and the engine spec),
so rebuilding the same computation yields the same graph.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from patchflow._dask_compat import chunk_getter_call, make_getter_task
from patchflow.engine.chip_kernels import (
    GroupSpec,
    H3Spec,
    StitchSpec,
    ZoneSpec,
    assemble,
    gather_points,
    h3_merge,
    scan_block,
    stitch_anchor_block,
    sum_block,
    zonal_merge,
    zone_block,
)
from patchflow.engine.kernels import (
    BlockTask,
    EngineSpec,
    StitchTask,
    process_block,
    slice_state,
    split_halo,
    stitch_block,
)
from patchflow.engine.vectors import MergeSpec, VectorSpec, vector_block, vector_merge
from patchflow.plan.blocks import BlockPlan

__all__ = [
    "ANCHORS_STITCH_PREFIX",
    "CHIPS_PREFIX",
    "H3_ZONAL_MERGE_PREFIX",
    "H3_ZONAL_PREFIX",
    "H3_ZONAL_TABLE_PREFIX",
    "HALO_READ_PREFIX",
    "POINTS_PREFIX",
    "SAMPLE_PREFIX",
    "SAMPLE_READ_PREFIX",
    "STITCH_PREFIX",
    "VECTOR_CHIPS_PREFIX",
    "VECTOR_MERGE_PREFIX",
    "WRITE_PREFIX",
    "ZONAL_MERGE_PREFIX",
    "ZONAL_PREFIX",
    "ZONAL_TABLE_PREFIX",
    "AnchorBlock",
    "ChipGroup",
    "ChipPiece",
    "ZoneBlock",
    "anchor_stitch_graph",
    "build_graph",
    "chip_array_graph",
    "direct_read",
    "input_tasks",
    "point_read_tasks",
    "vector_graph",
    "zonal_graph",
]

CHIPS_PREFIX = "patchflow-chips"
STITCH_PREFIX = "patchflow-stitch"
WRITE_PREFIX = "patchflow-write"
HALO_PREFIX = "patchflow-halo"
PIECE_PREFIX = "patchflow-piece"
#: halo strips read straight from storage (not ``patchflow-halo-…``: a prefix must never
#: extend another one, or the dashboard groups them together)
HALO_READ_PREFIX = "patchflow-read-halo"


def _parts(
    read: tuple[int, int], edges: np.ndarray, sources: list[int]
) -> tuple[tuple[int, int], ...]:
    """Per source chunk, the local ``(start, stop)`` of the read window inside it."""
    start, stop = read
    return tuple(
        (max(start, int(edges[a])) - int(edges[a]), min(stop, int(edges[a + 1])) - int(edges[a]))
        for a in sources
    )


def _scaled(span: tuple[int, int], sc: Any) -> tuple[int, int]:
    return sc(span[0]), sc(span[1])


def input_tasks(x: da.Array) -> Mapping[Any, Any]:
    """The input's own layer (chunk tasks), if it can be read without computing anything."""
    graph = x.__dask_graph__()
    layer = getattr(graph, "layers", {}).get(x.name)
    return layer if layer is not None else {}


def direct_read(
    source: Mapping[Any, Any],
    key: Any,
    new_key: Any,
    ys: tuple[int, int],
    xs: tuple[int, int],
) -> Any | None:
    """A task reading only ``[..., ys, xs]`` of chunk ``key`` from storage, if possible.

    Works when the chunk task is dask's ``getter(array, slices)`` (``xr.open_zarr``,
    ``rioxarray.open_rasterio``, ``da.from_array``); returns ``None`` otherwise, including
    on a dask whose task representation :mod:`patchflow._dask_compat` does not know.
    """
    try:
        task = source[key]
    except (KeyError, TypeError):
        return None
    call = chunk_getter_call(task)
    if call is None:
        return None
    index = call.index
    if len(index) < 2:
        return None
    if not all(isinstance(s, slice) and s.step in (None, 1) for s in index[-2:]):
        return None
    sy, sx = index[-2], index[-1]
    y0, x0 = sy.start or 0, sx.start or 0
    new = (*index[:-2], slice(y0 + ys[0], y0 + ys[1]), slice(x0 + xs[0], x0 + xs[1]))
    return make_getter_task(new_key, call, new)


def _scene_padding(spec: EngineSpec, plan: BlockPlan) -> tuple[np.ndarray, np.ndarray] | None:
    """Row/col source indices of the padded scene, for pad modes that read far pixels.

    ``np.pad(np.arange(n), (0, p), mode)`` says which scene row each padded row copies, so
    gathering those rows reproduces ``np.pad(scene, ..., mode)`` exactly, whatever the
    chunking. ``None`` when no gathering is needed (no padding, or a mode that only uses
    the block's own last row/col or a constant).
    """
    if spec.pad_mode not in ("reflect", "symmetric", "wrap"):
        return None
    ny, nx = plan.n_blocks
    end_y = max(plan.y.region(i)[1] for i in range(ny)) if ny else 0
    end_x = max(plan.x.region(j)[1] for j in range(nx)) if nx else 0
    h, w = spec.scene
    if end_y <= h and end_x <= w:
        return None
    mode = spec.pad_mode
    rows = np.pad(np.arange(h), (0, max(0, end_y - h)), mode=mode)  # type: ignore[call-overload]
    cols = np.pad(np.arange(w), (0, max(0, end_x - w)), mode=mode)  # type: ignore[call-overload]
    return rows, cols


def _runs(index: np.ndarray) -> list[slice]:
    """``index`` as maximal runs of step +1 or -1, each a slice (``x[s]`` == ``x[index]``)."""
    runs: list[slice] = []
    start = 0
    n = len(index)
    while start < n:
        end = start + 1
        step = int(index[end] - index[start]) if end < n else 1
        if step not in (1, -1):
            step = 1
        while end < n and int(index[end] - index[end - 1]) == step:
            end += 1
        first, last = int(index[start]), int(index[end - 1])
        stop = last + step if last + step >= 0 else None
        runs.append(slice(first, stop, step))
        start = end
    return runs


def _gather(x: da.Array, rows: np.ndarray, cols: np.ndarray) -> da.Array:
    """``x[..., rows, :][..., cols]`` as one chunk, from plain slices (no dask shuffle).

    The padded region of a block is a few contiguous runs of scene rows/cols (forward for
    the scene part and ``wrap``, backward for ``reflect``/``symmetric``), so slicing each
    run keeps the graph small and reads only what is needed.
    """
    pieces = [[x[..., ry, rx] for rx in _runs(cols)] for ry in _runs(rows)]
    return da.block(pieces).rechunk(-1)


def build_graph(
    x: da.Array,
    spec: EngineSpec,
    plan: BlockPlan,
    *,
    sink: Any = None,
) -> da.Array:
    """Lazy stitched output for ``x`` (``(*lead, y, x)``, lead dims in one chunk).

    ``plan.chunks`` must equal ``x``'s spatial chunks; the output has the same spatial
    chunks (× the op's scale), and the aggregation's result shape and dtype.

    With a ``sink`` each stitch task persists its block through ``sink.write`` and the
    returned array holds one marker element per block (``patchflow-write-…`` tasks).
    """
    out_lead = spec.agg.result_lead()
    out_dtype = spec.agg.result_dtype()
    if tuple(x.chunks[-2:]) != plan.chunks:
        raise AssertionError("the block plan does not match the input's chunks")
    token = tokenize(x.name, spec, plan.chunks, plan.grid)
    chips_name = f"{CHIPS_PREFIX}-{token}"
    stitch_name = f"{STITCH_PREFIX if sink is None else WRITE_PREFIX}-{tokenize(token, sink)}"
    halo_name = f"{HALO_PREFIX}-{token}"
    piece_name = f"{PIECE_PREFIX}-{tokenize(token, sink)}"
    lead_idx = (0,) * (x.ndim - 2)

    source = input_tasks(x)
    read_name = f"{HALO_READ_PREFIX}-{token}"
    requests: dict[tuple[int, int], list[Any]] = {}
    chips: dict[Any, Any] = {}
    extra: list[da.Array] = []
    scene_pad = _scene_padding(spec, plan)
    for i, j in plan.working_blocks:
        ry, rx = plan.y.region(i), plan.x.region(j)
        sy, sx = plan.y.sources(i), plan.x.sources(j)
        task = BlockTask(
            index=(i, j),
            ys=tuple(int(v) for v in plan.y.owned(i)),
            xs=tuple(int(v) for v in plan.x.owned(j)),
            first_chip=(plan.y.chip_range(i)[0], plan.x.chip_range(j)[0]),
            region=(ry, rx),
            y_parts=_parts(plan.y.read(i), plan.y.edges, sy),
            x_parts=_parts(plan.x.read(j), plan.x.edges, sx),
        )
        if scene_pad is not None and (ry[1] > spec.scene[0] or rx[1] > spec.scene[1]):
            # reflect/symmetric/wrap padding comes from the whole scene (the far edge for
            # wrap), not from this block: gather the padded region as one small array
            rows, cols = scene_pad[0][ry[0] : ry[1]], scene_pad[1][rx[0] : rx[1]]
            region = _gather(x, rows, cols)
            extra.append(region)
            whole_y, whole_x = ((0, ry[1] - ry[0]),), ((0, rx[1] - rx[0]),)
            task = replace(task, y_parts=whole_y, x_parts=whole_x, padded=True)
            key = (region.name, *((0,) * region.ndim))
            chips[(chips_name, i, j)] = (process_block, spec, task, [[key]])
            continue
        keys: list[list[Any]] = []
        for a, (y0, y1) in zip(sy, task.y_parts, strict=True):
            row: list[Any] = []
            for b, (x0, x1) in zip(sx, task.x_parts, strict=True):
                if (a, b) == (i, j):
                    row.append((x.name, *lead_idx, a, b))
                else:
                    requests.setdefault((a, b), []).append(((i, j), (y0, y1), (x0, x1)))
                    # the strips chunk (a, b) holds for block row i (see below)
                    row.append((halo_name, a, b, i))
            keys.append(row)
        chips[(chips_name, i, j)] = (process_block, spec, task, keys)

    # One halo task per source chunk and block row cuts the strips that row's blocks need
    # from the chunk. Blocks run row by row, so the strips a chunk lends to the row above
    # (bottom halo and corner) are used a whole block row before those it lends to its own
    # row (the right halo): served by one task, the first would wait for the second, and a
    # row of them — memory ∝ scene width — would be held at once. When the input is a
    # plain getter (Zarr, COG, from_array) each row's strips are read straight from
    # storage (their bounding box only), just before they are used, so no task waits on a
    # whole neighbour chunk either. Otherwise they are cut from the chunk itself, which is
    # then held from its first use as a halo until its own block has run.
    for (a, b), wanted in requests.items():
        key = (x.name, *lead_idx, a, b)
        by_row: dict[int, list[Any]] = {}
        for want in wanted:
            by_row.setdefault(want[0][0], []).append(want)
        for i, group in by_row.items():
            box_y = (min(w[1][0] for w in group), max(w[1][1] for w in group))
            box_x = (min(w[2][0] for w in group), max(w[2][1] for w in group))
            read = (read_name, a, b, i)
            direct = direct_read(source, key, read, box_y, box_x)
            strips, origin = key, (0, 0)
            if direct is not None:
                chips[read] = direct
                strips, origin = read, (box_y[0], box_x[0])
            cuts = tuple(
                (
                    idx,
                    (ys[0] - origin[0], ys[1] - origin[0]),
                    (xs[0] - origin[1], xs[1] - origin[1]),
                )
                for idx, ys, xs in group
            )
            chips[(halo_name, a, b, i)] = (split_halo, strips, cuts)

    stitch: dict[Any, Any] = {}
    sc = spec.sc
    out_idx = (0,) * len(out_lead)
    ny, nx = plan.n_blocks
    for i in range(ny):
        for j in range(nx):
            pieces = plan.pieces(i, j)
            specs, deps = [], []
            for py, px in pieces:
                src: Any = (chips_name, py.block, px.block)
                ys, xs = _scaled(py.src, sc), _scaled(px.src, sc)
                if (py.block, px.block) != (i, j):
                    # spill-over from a neighbour: a small copied slice of its partial
                    piece = (piece_name, py.block, px.block, i, j)
                    stitch[piece] = (slice_state, src, ys, xs)
                    src, ys, xs = piece, (0, ys[1] - ys[0]), (0, xs[1] - xs[0])
                specs.append((ys, _scaled(py.dst, sc), xs, _scaled(px.dst, sc)))
                deps.append(src)
            task_s = StitchTask(
                index=(i, j),
                shape=(sc(plan.y.chunks[i]), sc(plan.x.chunks[j])),
                pieces=tuple(specs),
                origin=(int(plan.y.edges[i]), int(plan.x.edges[j])),
                chip_ys=tuple(int(a) for a in plan.y.touching(i)),
                chip_xs=tuple(int(a) for a in plan.x.touching(j)),
            )
            stitch[(stitch_name, *out_idx, i, j)] = (stitch_block, spec, task_s, deps, sink)

    base = HighLevelGraph.from_collections(chips_name, chips, dependencies=[x, *extra])  # type: ignore[list-item]
    layers = {**base.layers, stitch_name: stitch}
    dependencies = {**base.dependencies, stitch_name: {chips_name}}
    graph = HighLevelGraph(layers, dependencies)
    if sink is None:
        chunks = (
            *((n,) for n in out_lead),
            tuple(sc(c) for c in plan.y.chunks),
            tuple(sc(c) for c in plan.x.chunks),
        )
    else:
        chunks = (*((1,) for _ in out_lead), (1,) * ny, (1,) * nx)
        out_dtype = np.dtype(np.int8)
    meta = np.empty((0,) * (len(out_lead) + 2), dtype=out_dtype)
    return da.Array(graph, stitch_name, chunks=chunks, meta=meta)


# --------------------------------------------------------------------------- sampler graphs
#
# The graphs behind :mod:`patchflow.sampling`: the caller plans which chips (or polygons) go
# to which task and hands the plan over as plain data; these functions only turn a plan into
# layers and a dask collection. The task functions are in :mod:`patchflow.engine.chip_kernels`.

SAMPLE_PREFIX = "patchflow-sample"
SAMPLE_READ_PREFIX = "patchflow-read-chips"
#: not ``patchflow-stitch-…``: that prefix is apply's stitch layer
ANCHORS_STITCH_PREFIX = "patchflow-anchors-stitch"
ZONAL_PREFIX = "patchflow-zonal"
ZONAL_MERGE_PREFIX = "patchflow-merge-zonal"
ZONAL_TABLE_PREFIX = "patchflow-table-zonal"
#: the same three layers when the zones are h3 cells (not "h3": key_split stops at digits)
H3_ZONAL_PREFIX = "patchflow-hexagon-zonal"
H3_ZONAL_MERGE_PREFIX = "patchflow-merge-hexagon-zonal"
H3_ZONAL_TABLE_PREFIX = "patchflow-table-hexagon-zonal"
#: samplers' scans of validity masks and label rasters (one task per chunk)
SCAN_PREFIX = "patchflow-block-scan"
SUMS_PREFIX = "patchflow-block-sums"

#: one piece of a chip inside one source chunk: ``(chip index, (chunk row, chunk col),
#: (rows, cols) inside the chunk, (rows, cols) inside the chip)``, spans as ``(start, stop)``
ChipPiece = tuple[
    int, tuple[int, int], tuple[tuple[int, int], tuple[int, int]], tuple[tuple[int, int], ...]
]


@dataclass(frozen=True)
class ChipGroup:
    """One task of a chip array: chips ``start:stop`` and their pieces (in chip order)."""

    start: int
    stop: int
    pieces: tuple[ChipPiece, ...]


@dataclass(frozen=True)
class AnchorBlock:
    """One output block ``(i, j)`` of an anchor stitch: its spec and the chip-output chunks
    (along the chip axis, in the order of ``spec.chips``) it reads."""

    index: tuple[int, int]
    spec: StitchSpec
    chunks: tuple[int, ...]


@dataclass(frozen=True)
class ZoneBlock:
    """One input block ``(i, j)`` of a zonal-statistics graph and its spec: the polygons
    touching it (:class:`ZoneSpec`) or its pixels' h3 cells (:class:`H3Spec`)."""

    index: tuple[int, int]
    spec: ZoneSpec | H3Spec


def chip_array_graph(
    data: da.Array, groups: Sequence[ChipGroup], size: tuple[int, int], token: str
) -> da.Array:
    """Lazy ``(n, *lead, h, w)`` chips of ``data`` (``(*lead, H, W)``, lead in one chunk).

    One task per group. A piece inside a source chunk is read straight from storage when
    the chunk task is a plain getter (:func:`direct_read`); otherwise the task receives the
    source chunk and copies the piece out of it. Keys: ``patchflow-sample-<token>`` (chips)
    and ``patchflow-read-chips-<token>`` (direct reads).
    """
    h, w = size
    lead = tuple(data.shape[:-2])
    lead_idx = (0,) * len(lead)
    name, read_name = f"{SAMPLE_PREFIX}-{token}", f"{SAMPLE_READ_PREFIX}-{token}"
    source = input_tasks(data)
    layer: dict[Any, Any] = {}
    for g, group in enumerate(groups):
        pieces: list[tuple[int, tuple[int, int], tuple[int, int], Any]] = []
        keys: list[Any] = []
        for k, (a, b), (sy, sx), (dy, dx) in group.pieces:
            key = (data.name, *lead_idx, a, b)
            read_key = (read_name, k, a, b)
            direct = direct_read(source, key, read_key, sy, sx)
            if direct is not None:
                layer[read_key] = direct
                keys.append(read_key)
                pieces.append((k - group.start, dy, dx, None))
            else:
                keys.append(key)
                pieces.append((k - group.start, dy, dx, (sy, sx)))
        spec = GroupSpec(
            (group.stop - group.start, *lead, h, w), np.dtype(data.dtype), tuple(pieces)
        )
        layer[(name, g, *lead_idx, 0, 0)] = (assemble, spec, keys)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[data])  # type: ignore[list-item]
    sizes = tuple(group.stop - group.start for group in groups) or (0,)
    chunks = (sizes, *((v,) for v in lead), (h,), (w,))
    return da.Array(graph, name, chunks=chunks, dtype=data.dtype)


def anchor_stitch_graph(
    values: da.Array,
    blocks: Sequence[AnchorBlock],
    token: str,
    *,
    lead: tuple[int, ...],
    out_chunks: tuple[tuple[int, ...], tuple[int, ...]],
    dtype: Any,
) -> da.Array:
    """Lazy ``(*lead, H, W)`` stitch of chip outputs ``values`` (``(n, …, h, w)``, one chunk
    along every axis but the first): one task per output block, reading only its chunks.

    Keys: ``patchflow-anchors-stitch-<token>``.
    """
    out_name = f"{ANCHORS_STITCH_PREFIX}-{token}"
    lead_idx = (0,) * len(lead)
    inner = (0,) * (values.ndim - 1)
    layer: dict[Any, Any] = {}
    for block in blocks:
        keys = [(values.name, int(ck), *inner) for ck in block.chunks]
        layer[(out_name, *lead_idx, *block.index)] = (stitch_anchor_block, block.spec, keys)
    graph = HighLevelGraph.from_collections(out_name, layer, dependencies=[values])  # type: ignore[list-item]
    return da.Array(graph, out_name, chunks=(*((v,) for v in lead), *out_chunks), dtype=dtype)


def zonal_graph(
    data: da.Array,
    blocks: Sequence[ZoneBlock],
    token: str,
    *,
    n: int | None,
    bands: int,
    stats: tuple[str, ...],
    finish: Callable[[dict[str, Any]], Any] | None = None,
) -> Delayed:
    """Zonal statistics tables (``{stat: (zones, bands)}``) of ``data``, as a ``Delayed``.

    One task per listed block (reading only that chunk) returns partial statistics
    (:func:`~patchflow.engine.chip_kernels.zone_block`, by spec type); one merge task
    combines them. ``n`` polygons: :func:`~patchflow.engine.chip_kernels.zonal_merge`,
    tables with one row per polygon; ``n=None`` (h3 blocks, zones found while reading):
    :func:`~patchflow.engine.chip_kernels.h3_merge`, tables with one row per cell and the
    sorted cell ids under ``"cells"``. Keys: ``(patchflow-zonal-<token>, "block", i, j)``
    and ``patchflow-merge-zonal-<token>`` (``patchflow-hexagon-zonal-…`` and
    ``patchflow-merge-hexagon-zonal-…`` for h3), then ``finish``'s ``patchflow-table-…``.
    """
    h3 = n is None
    prefix, merge_prefix, table_prefix = (
        (H3_ZONAL_PREFIX, H3_ZONAL_MERGE_PREFIX, H3_ZONAL_TABLE_PREFIX)
        if h3
        else (ZONAL_PREFIX, ZONAL_MERGE_PREFIX, ZONAL_TABLE_PREFIX)
    )
    name = f"{prefix}-{token}"
    merge_name = f"{merge_prefix}-{token}"
    lead_idx = (0,) * (data.ndim - 2)
    layer: dict[Any, Any] = {}
    block_keys = []
    for block in blocks:
        key = (name, "block", *block.index)
        layer[key] = (zone_block, block.spec, (data.name, *lead_idx, *block.index))
        block_keys.append(key)
    base = HighLevelGraph.from_collections(name, layer, dependencies=[data])  # type: ignore[list-item]
    merge_task = (
        (h3_merge, bands, stats, block_keys)
        if n is None
        else (zonal_merge, n, bands, stats, block_keys)
    )
    graph = HighLevelGraph(
        {**base.layers, merge_name: {merge_name: merge_task}},
        {**base.dependencies, merge_name: {name}},
    )
    merged = Delayed(merge_name, graph)
    if finish is None:
        return merged
    return dask.delayed(finish, pure=True)(merged, dask_key_name=f"{table_prefix}-{token}")


def block_reductions(arr: da.Array, fn: Any) -> da.Array:
    """A ``(n_block_rows, n_block_cols)`` object array: ``fn(block, row0, col0, key)`` per
    chunk of the 2-D ``arr`` (see :mod:`patchflow.plan.rasters`)."""
    nby, nbx = len(arr.chunks[0]), len(arr.chunks[1])
    return da.map_blocks(
        scan_block,
        arr,
        fn=fn,
        chunks=((1,) * nby, (1,) * nbx),
        dtype=object,
        meta=np.empty((0, 0), object),
        name=f"{SCAN_PREFIX}-{tokenize(arr, fn)}",
    )


def block_sums(arr: da.Array, fn: Any, length: int) -> da.Array:
    """The sum over the chunks of the 2-D ``arr`` of ``fn(block, row0, col0, key)``, a
    ``length`` int64 vector per chunk (a tree reduction: never one vector per chunk at once).
    """
    nby, nbx = len(arr.chunks[0]), len(arr.chunks[1])
    parts = da.map_blocks(
        sum_block,
        arr,
        fn=fn,
        new_axis=2,
        chunks=((1,) * nby, (1,) * nbx, (length,)),
        dtype=np.int64,
        meta=np.empty((0, 0, 0), np.int64),
        name=f"{SUMS_PREFIX}-{tokenize(arr, fn, length)}",
    )
    return parts.sum(axis=(0, 1))


#: reads of raster values at points (``sample_points``)
POINTS_PREFIX = "patchflow-point-values"


def point_read_tasks(
    data: da.Array,
    idx: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    weights: np.ndarray,
    nodata: Any,
    batch: int,
) -> tuple[list[np.ndarray], list[Delayed]]:
    """Point indices and one lazy ``(bands, n)`` values task per group of points
    (:func:`patchflow.sampling.point_values.sample_points`); builds, never computes.

    Points are grouped by the chunk of their first neighbour; each group of up
    to ``batch`` points slices the smallest window covering its neighbourhoods, which dask
    maps to the chunks it overlaps only (bilinear: at most the next chunk over).
    """
    ey = np.concatenate([[0], np.cumsum(data.chunks[-2])])
    ex = np.concatenate([[0], np.cumsum(data.chunks[-1])])
    bi = np.searchsorted(ey, rows[0, idx], side="right") - 1
    bj = np.searchsorted(ex, cols[0, idx], side="right") - 1
    order = np.lexsort((bj, bi))
    idx, bi, bj = idx[order], bi[order], bj[order]
    starts = np.flatnonzero(np.r_[True, (bi[1:] != bi[:-1]) | (bj[1:] != bj[:-1])])
    tasks, groups = [], []
    for s, e in itertools.pairwise([*starts.tolist(), int(idx.size)]):
        for b0 in range(s, e, batch):
            g = idx[b0 : min(b0 + batch, e)]
            rr, cc = rows[:, g], cols[:, g]
            y0, y1 = int(rr.min()), int(rr.max()) + 1
            x0, x1 = int(cc.min()), int(cc.max()) + 1
            window = data[:, y0:y1, x0:x1]
            args = (window, rr - y0, cc - x0, weights[:, g], nodata)
            key = f"{POINTS_PREFIX}-{tokenize(*args)}"
            tasks.append(dask.delayed(gather_points, pure=True)(*args, dask_key_name=key))
            groups.append(g)
    return groups, tasks


#: geometries from chips (``apply_vector``): one task per group of chips, one merge
#: (neither prefix extends the other, nor apply's ``patchflow-chips``)
VECTOR_CHIPS_PREFIX = "patchflow-vector-chips"
VECTOR_MERGE_PREFIX = "patchflow-vector-merge"


def vector_graph(chips: Any, specs: Sequence[VectorSpec], merge: MergeSpec, token: str) -> Delayed:
    """A ``Delayed`` GeoDataFrame: one ``patchflow-vector-chips`` task per chunk of the lazy
    chip array ``chips`` (``(n, …, h, w)``, one chunk along every axis but the first; chunk
    ``g`` holds the chips of ``specs[g]``) and one ``patchflow-vector-merge`` task."""
    name = f"{VECTOR_CHIPS_PREFIX}-{token}"
    merge_name = f"{VECTOR_MERGE_PREFIX}-{token}"
    inner = (0,) * (chips.ndim - 1)
    layer: dict[Any, Any] = {
        (name, g): (vector_block, spec, (chips.name, g, *inner)) for g, spec in enumerate(specs)
    }
    base = HighLevelGraph.from_collections(name, layer, dependencies=[chips])
    graph = HighLevelGraph(
        {**base.layers, merge_name: {merge_name: (vector_merge, merge, list(layer))}},
        {**base.dependencies, merge_name: {name}},
    )
    return Delayed(merge_name, graph)
