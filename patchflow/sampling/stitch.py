"""Stitch chip outputs at arbitrary anchors (any sampler) into one lazily computed map.

:func:`stitch` runs every aggregation :func:`patchflow.apply` has, through the same
aggregators (:mod:`patchflow.engine.aggregate`) and the same nodata rules; pixels no chip
covers are invalid and counted. ``stitch_anchors`` is its former name.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize

from patchflow._xr import georef, write_georef
from patchflow.engine.aggregate import LAYERED_AGGS, check_vote_memory, make_aggregator
from patchflow.engine.chip_kernels import StitchSpec
from patchflow.engine.graph import (
    ANCHORS_STITCH_PREFIX,
    AnchorBlock,
    anchor_stitch_graph,
)
from patchflow.engine.graph import (
    ZONAL_PREFIX as ZONAL_PREFIX,
)
from patchflow.engine.nodata import input_nodata, is_value
from patchflow.engine.nodata import resolve as resolve_nodata
from patchflow.errors import DimensionError, ParameterError
from patchflow.io.chips import GROUP_BYTES
from patchflow.io.sources import check_band_nodata
from patchflow.options import Agg
from patchflow.plan.grid import pair
from patchflow.plan.windows import Window, make_window
from patchflow.sampling.chips import NUMPY_BLOCK, _as_dataarray

#: not ``patchflow-stitch-…``: that prefix is apply's stitch layer
STITCH_PREFIX = ANCHORS_STITCH_PREFIX


# --------------------------------------------------------------------------- stitching


def _block_hits(
    anchors: np.ndarray, size: tuple[int, int], ey: np.ndarray, ex: np.ndarray
) -> list[np.ndarray]:
    """Per output block (row-major), the indices (ascending) of the chips touching it.

    Each chip is assigned to the blocks its rows and columns span (``O(chips × blocks per
    chip)``, not ``O(chips × blocks)``).
    """
    nby, nbx = len(ey) - 1, len(ex) - 1
    n = len(anchors)
    if n == 0:
        return [np.zeros(0, np.int64) for _ in range(nby * nbx)]
    h, w = size
    i0 = np.searchsorted(ey, anchors[:, 0], side="right") - 1
    i1 = np.searchsorted(ey, anchors[:, 0] + h - 1, side="right") - 1
    j0 = np.searchsorted(ex, anchors[:, 1], side="right") - 1
    j1 = np.searchsorted(ex, anchors[:, 1] + w - 1, side="right") - 1
    nx = j1 - j0 + 1
    count = (i1 - i0 + 1) * nx
    chip = np.repeat(np.arange(n, dtype=np.int64), count)
    offset = np.arange(int(count.sum()), dtype=np.int64) - np.repeat(
        np.cumsum(count) - count, count
    )
    block = (i0[chip] + offset // nx[chip]) * nbx + (j0[chip] + offset % nx[chip])
    order = np.argsort(block, kind="stable")  # stable: chips stay in index order
    chip, block = chip[order], block[order]
    edges = np.searchsorted(block, np.arange(nby * nbx + 1))
    return [chip[edges[b] : edges[b + 1]] for b in range(nby * nbx)]


def _block_coverage(
    anchors: np.ndarray, size: tuple[int, int], box: tuple[int, int, int, int]
) -> tuple[int, int]:
    """``(uncovered pixels, most chips over one pixel)`` of ``box`` (``y0, y1, x0, x1``).

    Exact, on the grid of the chips' (clipped) edges: a 2-D difference array over at most
    ``(2k + 2)²`` cells for ``k`` chips, never a per-pixel mask.
    """
    y0, y1, x0, x1 = box
    if len(anchors) == 0:
        return (y1 - y0) * (x1 - x0), 0
    h, w = size
    rs, re = np.clip(anchors[:, 0], y0, y1), np.clip(anchors[:, 0] + h, y0, y1)
    cs, ce = np.clip(anchors[:, 1], x0, x1), np.clip(anchors[:, 1] + w, x0, x1)
    ys = np.unique(np.concatenate([[y0, y1], rs, re]))
    xs = np.unique(np.concatenate([[x0, x1], cs, ce]))
    a0, a1 = np.searchsorted(ys, rs), np.searchsorted(ys, re)
    b0, b1 = np.searchsorted(xs, cs), np.searchsorted(xs, ce)
    diff = np.zeros((len(ys), len(xs)), np.int64)
    np.add.at(diff, (a0, b0), 1)
    np.add.at(diff, (a1, b0), -1)
    np.add.at(diff, (a0, b1), -1)
    np.add.at(diff, (a1, b1), 1)
    cover = diff.cumsum(axis=0).cumsum(axis=1)[:-1, :-1]
    area = np.outer(np.diff(ys), np.diff(xs))
    return int(area[cover == 0].sum()), int(cover.max())


def stitch(
    obj_like: xr.DataArray | xr.Dataset,
    chip_outputs: Any,
    anchors: Any = None,
    *,
    window: str | np.ndarray | Any = "hann",
    window_params: Mapping[str, Any] | None = None,
    chunks: int | tuple[int, int] | None = None,
    name: Hashable | None = None,
    agg: Agg = "overlap_add",
    n_classes: int | None = None,
    nodata: Any = None,
    chip_nodata: Any = None,
) -> xr.DataArray:
    """Stitch chip outputs at arbitrary anchors into one map (lazy, block by block).

    Any sampler's chips (regular grid, random, jittered, Poisson-disk, stratified, explicit
    anchors) go through every aggregation :func:`patchflow.apply` has, with the same
    aggregators (the table in :mod:`patchflow.engine.aggregate`): ``agg="overlap_add"``
    (default) gives each pixel the window-weighted mean of the chips covering it
    (``sum(w * chip) / sum(w)``); ``mean``, ``max``, ``min``, ``vote`` (integer labels,
    ``n_classes``), ``soft_vote`` (class scores → argmax), ``centre`` (value of the chip
    whose centre is nearest; ties: the lower chip index), ``sum``, ``weighted_sum``, the
    uncertainty merges ``mean_std`` and ``inverse_variance`` (chip outputs ``(n, 2, …)``
    holding mean and variance) and the exact ``median`` and ``mode``, which keep one layer
    per chip over a pixel: as many layers as the most chips the anchors put over one
    pixel of a block (refused above ``patchflow.engine.aggregate.MAX_LAYERS``). Windows are
    border-aware as in ``apply``: a chip touching the scene edge has the outward half of
    its window flattened.

    Validity follows :mod:`patchflow.engine.nodata`, as in ``apply``: a chip value is invalid
    where it is non-finite or equals the chips' nodata (see ``chip_nodata``), per element,
    so one band's nodata leaves the pixel's other bands valid. Invalid values carry zero
    weight: a pixel gets the aggregation of its valid chip values only, and pixels no
    valid chip value reaches are NaN for float results and the
    result's nodata for integer results (``max``/``min``/``centre`` of integer outputs,
    votes). An integer result's nodata is ``nodata=`` if given, else ``obj_like``'s nodata
    (not for votes), else the chips' nodata, else the dtype's max (unsigned) / min
    (signed) — and none at all when no pixel can be invalid (integer outputs without
    nodata, an integer ``obj_like`` without nodata, every pixel covered). A valid value
    equal to that nodata raises :class:`~patchflow.errors.NodataCollisionError` when the
    block is computed. ``nodata=`` on a float result becomes its encoded (on-disk) nodata.

    One dask task per output block reads only the chip-output chunks holding chips that
    touch the block; building the result computes nothing.

    Parameters
    ----------
    obj_like
        The scene the chips came from (shape, coordinates, CRS, transform, nodata; its
        spatial chunks become the output blocks).
    chip_outputs
        ``(n, out…, h, w)`` chip outputs: numpy, dask, or a DataArray with a ``chip`` dim
        (e.g. the result of an operator applied to :func:`sample` chips, whose ``row`` and
        ``col`` coordinates then give the anchors). For ``soft_vote`` the first ``out``
        axis holds the classes.
    anchors
        ``(n, 2)`` ``(row, col)`` anchors (default: ``chip_outputs``' ``row``/``col``).
    window, window_params
        Blending window, as in :func:`patchflow.make_window` (used by ``overlap_add``,
        ``vote`` tie-breaks and ``soft_vote``; the other aggregations ignore it).
    chunks
        Output block size (default: ``obj_like``'s spatial chunks, or 2048).
    name
        Name of the result.
    agg, n_classes
        Aggregation (any name in ``patchflow.AGGREGATIONS``); ``n_classes`` for
        ``"vote"``.
    nodata
        Nodata of the result (see above).
    chip_nodata
        Nodata of the chip outputs: chip values equal to it are invalid, per element (as
        ``input_nodata=`` is for :func:`patchflow.apply`'s input). Default ``None``: the
        chip outputs' own (a DataArray's ``nodata`` attr, as :func:`sample` sets it,
        rioxarray's nodata or ``_FillValue``) while they keep the scene's integer dtype
        (the scene's values, e.g. chips of a uint8 image with nodata 255); otherwise only
        NaN marks invalid values — xarray carries the scene's attrs through arithmetic, so
        an NDVI's real 0.0 must not become nodata because the scene's nodata was 0. Float
        chip outputs holding a sentinel (-99999) need it declared. NaN: only non-finite
        values are invalid, whatever the attrs say.

    Returns
    -------
    xarray.DataArray
        Lazy, dims ``(out…, y, x)`` (``soft_vote``: the class axis is reduced;
        ``mean_std``: a leading ``stat`` dim ``["mean", "std"]``; ``inverse_variance``: the
        first output axis becomes ``stat`` ``["mean", "variance"]``) with ``obj_like``'s
        spatial coords and CRS; dtype and ``rio.nodata`` as ``apply``'s for the same
        aggregation. ``attrs["uncovered_pixels"]`` counts the pixels no chip covers
        (exact, from the anchors; they are invalid in the result).

    Examples
    --------
    >>> from patchflow import sample
    >>> from patchflow.plan.samplers import PoissonDisk
    >>> from patchflow.io.synthetic import make_scene
    >>> scene = make_scene((300, 300), chunks=128).astype("float32")
    >>> chips = sample(scene, PoissonDisk(20, seed=0), size=64)
    >>> out = stitch(scene, chips * 2)
    >>> bool(np.nanmax(np.abs(out.values - 2 * scene.values)) < 1e-3)
    True
    >>> out.attrs["uncovered_pixels"] > 0  # Poisson-disk chips leave gaps
    True
    >>> top = stitch(scene, chips.astype("int32"), agg="max", nodata=-1)
    >>> str(top.dtype), int(top.rio.nodata)
    ('int32', -1)

    Chip values equal to the chips' nodata are invalid (here declared for a numpy array,
    which has no attrs to carry it):

    >>> outs = np.full((2, 1, 64, 64), 7, np.uint8)
    >>> outs[0, 0, :8] = 255  # nodata in chip 0; chip 1 covers rows 0-3 as well
    >>> m = stitch(scene, outs, [[0, 0], [4, 0]], agg="mean", chip_nodata=255)
    >>> m.values[0, :4, 0].tolist(), m.values[0, 4:8, 0].tolist()
    ([nan, nan, nan, nan], [7.0, 7.0, 7.0, 7.0])
    """
    check_band_nodata(obj_like)
    arr = _as_dataarray(obj_like)
    ydim, xdim = arr.dims[-2:]
    scene = (int(arr.shape[-2]), int(arr.shape[-1]))
    if isinstance(chip_outputs, xr.DataArray):
        if "chip" not in chip_outputs.dims:
            raise DimensionError(f"chip_outputs needs a 'chip' dim, got {chip_outputs.dims}")
        co = chip_outputs.transpose("chip", ...)
        if anchors is None:
            if "row" not in co.coords or "col" not in co.coords:
                raise ParameterError("pass anchors= (chip_outputs has no row/col coordinates)")
            anchors = np.stack([co["row"].values, co["col"].values], axis=1)
        lead_dims = tuple(co.dims[1:-2])
        lead_coords = {
            d: co.coords[d] for d in lead_dims if d in co.coords and co.coords[d].ndim == 1
        }
        values = co.data
        # the chips' own nodata (sample() writes the scene's into attrs["nodata"]), read
        # only while the outputs keep the scene's integer dtype — values of the scene, as
        # sample() gives them. xarray carries attrs through arithmetic, so an NDVI of a
        # scene with nodata 0 still says nodata=0: its real 0.0s must stay valid
        same_values = co.dtype == arr.dtype and co.dtype.kind in "iub"
        chip_nd = chip_nodata if chip_nodata is not None or not same_values else input_nodata(co)
    else:
        if anchors is None:
            raise ParameterError("anchors= is required when chip_outputs is not a DataArray")
        values = chip_outputs
        nlead = getattr(values, "ndim", 0) - 3
        if nlead < 0:
            raise DimensionError(
                f"chip_outputs must be (n, …, h, w), got {getattr(values, 'shape', None)}"
            )
        lead_dims = ("band",) if nlead == 1 else tuple(f"dim_{k}" for k in range(nlead))
        lead_coords = {}
        chip_nd = chip_nodata
    if chip_nd is not None:
        try:
            float(chip_nd)
        except (TypeError, ValueError):
            raise ParameterError(f"chip_nodata must be a number, got {chip_nd!r}") from None
    # NaN (or none): only non-finite chip values are invalid
    chip_nd = chip_nd if is_value(chip_nd) else None
    anchors = np.asarray(anchors, dtype=np.int64).reshape(-1, 2)
    if not isinstance(values, da.Array):
        values = np.asarray(values)
        values = da.from_array(values, chunks=(min(64, max(len(values), 1)), *values.shape[1:]))
    if values.ndim < 3:
        raise DimensionError(f"chip_outputs must be (n, …, h, w), got {values.shape}")
    op_dtype = np.dtype(values.dtype)
    if op_dtype.kind not in "biuf":
        raise ParameterError(
            f"chip_outputs must hold numbers (bool, int or float), got dtype {op_dtype}"
        )
    n, h, w = values.shape[0], values.shape[-2], values.shape[-1]
    if h < 1 or w < 1:
        raise DimensionError(f"chip outputs must be at least 1x1 pixels, got {h}x{w}")
    if n != len(anchors):
        raise ParameterError(f"{n} chip outputs but {len(anchors)} anchors")
    if len(anchors) and (
        (anchors < 0).any()
        or (anchors[:, 0] + h > scene[0]).any()
        or (anchors[:, 1] + w > scene[1]).any()
    ):
        raise ParameterError(f"some {h}x{w} chips at these anchors are outside the scene {scene}")
    values = values.rechunk({i: -1 for i in range(1, values.ndim)})
    lead = tuple(int(v) for v in values.shape[1:-2])
    if agg == "soft_vote" and not lead:
        raise DimensionError(
            "agg='soft_vote' needs class scores: chip_outputs (n, classes, …, h, w)"
        )
    if chunks is not None:
        cy, cx = pair(chunks, "chunks")
        out_chunks = da.core.normalize_chunks((cy, cx), scene)
    elif isinstance(arr.data, da.Array):
        out_chunks = arr.data.chunks[-2:]
    else:
        out_chunks = da.core.normalize_chunks((NUMPY_BLOCK, NUMPY_BLOCK), scene)
    ey = np.concatenate([[0], np.cumsum(out_chunks[0])]).astype(np.int64)
    ex = np.concatenate([[0], np.cumsum(out_chunks[1])]).astype(np.int64)
    hits = _block_hits(anchors, (h, w), ey, ex)
    nbx = len(out_chunks[1])

    # exact coverage per block, from geometry: holes (pixels no chip covers) are counted
    # and make the result invalid there; the most chips over one pixel bounds the layers
    # median/mode keep
    coverage = [
        _block_coverage(
            anchors[hits[i * nbx + j]],
            (h, w),
            (int(ey[i]), int(ey[i + 1]), int(ex[j]), int(ex[j + 1])),
        )
        for i in range(len(out_chunks[0]))
        for j in range(nbx)
    ]
    holes = sum(c[0] for c in coverage)
    if agg == "vote" and n_classes is not None:
        check_vote_memory(int(n_classes), lead, (max(out_chunks[0]), max(out_chunks[1])), (h, w))
    aggregator = make_aggregator(
        agg,
        out_dtype=op_dtype,
        lead=lead,
        n_classes=n_classes,
        n_chips=max(n, 1),
        # median/mode keep one layer per chip: as many as the anchors put over one pixel
        layers=max(1, max(c[1] for c in coverage)) if agg in LAYERED_AGGS else None,
    )
    win: Window | None = None
    if aggregator.weighted:  # as in apply: mean/max/min/centre weigh every chip 1
        win = make_window(window, (h, w), **dict(window_params or {}))
    res_dtype = aggregator.result_dtype()
    in_nodata = input_nodata(arr)
    can_be_invalid = (
        op_dtype.kind in "fc"
        or np.dtype(arr.dtype).kind in "fc"
        or is_value(in_nodata)
        or chip_nd is not None
        or holes > 0
    )
    # GDAL semantics: the input's nodata stays nodata; obj_like's first (as before), then
    # the chips' own, for an obj_like that declares none
    from_scene = is_value(in_nodata)
    nd = resolve_nodata(
        res_dtype,
        explicit=nodata,
        source=in_nodata if from_scene else chip_nd,
        labels=agg in ("vote", "soft_vote"),
        can_be_invalid=can_be_invalid,
        source_name="obj_like's nodata" if from_scene else "the chips' nodata",
    )
    aggregator.set_nodata(nd)
    out_nodata, encoded = nd.value, nd.encoded

    cstarts = np.concatenate([[0], np.cumsum(values.chunks[0])]).astype(np.int64)
    chunk_of = np.searchsorted(cstarts, np.arange(n), side="right") - 1
    chip_bytes = max(1, math.prod(values.shape[1:]) * op_dtype.itemsize)
    batch = int(min(64, max(1, GROUP_BYTES // chip_bytes)))
    token = tokenize(
        values.name, anchors.tobytes(), win, aggregator, out_chunks, scene, batch, repr(chip_nd)
    )
    res_lead = aggregator.result_lead()
    blocks = []
    for i in range(len(out_chunks[0])):
        for j in range(nbx):
            y0, y1, x0, x1 = int(ey[i]), int(ey[i + 1]), int(ex[j]), int(ex[j + 1])
            hit = hits[i * nbx + j]
            parts, cks = [], []
            for ck in np.unique(chunk_of[hit]):
                sel = hit[chunk_of[hit] == ck]
                parts.append((sel - cstarts[ck], anchors[sel], sel))
                cks.append(int(ck))
            spec = StitchSpec(
                (y0, x0),
                (y1 - y0, x1 - x0),
                scene,
                aggregator,
                win,
                batch,
                tuple(parts),
                nodata=chip_nd,
            )
            blocks.append(AnchorBlock((i, j), spec, tuple(cks)))
    lazy = anchor_stitch_graph(
        values,
        blocks,
        token,
        lead=res_lead,
        out_chunks=(tuple(out_chunks[0]), tuple(out_chunks[1])),
        dtype=res_dtype,
    )
    stats = aggregator.stat_names
    # soft_vote reduces the class axis (the first output axis); mean_std adds a leading
    # ``stat`` axis, inverse_variance turns the first output axis (mean, variance) into one
    kept = res_lead[1:] if stats else res_lead
    out_dims: tuple[Hashable, ...] = lead_dims[len(lead) - len(kept) :]
    coords: dict[Hashable, Any] = {d: c for d, c in lead_coords.items() if d in out_dims}
    if stats:
        out_dims = ("stat", *out_dims)
        coords["stat"] = list(stats)
    for dim in (ydim, xdim):
        if dim in arr.coords:
            coords[dim] = arr.coords[dim]
    out = xr.DataArray(lazy, dims=(*out_dims, ydim, xdim), coords=coords, name=name)
    transform, crs = georef(arr)
    out = write_georef(out, crs=crs, transform=transform, nodata=out_nodata, encoded=encoded)
    out.attrs["uncovered_pixels"] = holes
    return out


#: the former name of :func:`stitch`
stitch_anchors = stitch
