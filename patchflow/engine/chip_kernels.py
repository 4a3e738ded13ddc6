"""Per-task kernels of the sampler-side graphs (pure numpy; they run on the workers).

The task functions and their per-task specs behind :func:`patchflow.sampling.sample`
(chip assembly), the samplers' block scans of masks and label rasters,
:func:`patchflow.sampling.stitch` (one output block from the chips touching it),
:func:`patchflow.sampling.zonal_stats` (per-block partial statistics, per polygon or per
h3 cell, and their exact merge) and ``sample_points`` (:func:`gather_points`: values at points).
:mod:`patchflow.engine.graph` builds the graphs that call them; nothing here imports dask,
xarray or zarr, and every spec is a frozen, picklable dataclass.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from patchflow.engine.aggregate import Aggregator, ChipBatch
from patchflow.engine.nodata import invalid_elements
from patchflow.errors import optional_import
from patchflow.plan.grid import north_up
from patchflow.plan.windows import Window

__all__ = [
    "GroupSpec",
    "H3Spec",
    "Partial",
    "StitchSpec",
    "ZoneSpec",
    "assemble",
    "chip_weights",
    "gather_points",
    "h3_block",
    "h3_merge",
    "h3_pixel_cells",
    "lonlat_transformer",
    "merge_partials",
    "polygon_mask",
    "require_geo",
    "require_h3",
    "scan_block",
    "stitch_anchor_block",
    "sum_block",
    "weighted_median",
    "zonal_block",
    "zonal_merge",
    "zone_block",
]

# --------------------------------------------------------------------------- block scans


def _origin(block_info: Any) -> tuple[int, int, tuple[int, int]]:
    (r0, _), (c0, _) = block_info[0]["array-location"]
    loc = block_info[0]["chunk-location"]
    return int(r0), int(c0), (int(loc[0]), int(loc[1]))


def scan_block(block: np.ndarray, fn: Any, block_info: Any = None) -> np.ndarray:
    """``fn(block, row0, col0, key)`` as a ``(1, 1)`` object array (one cell per block)."""
    r0, c0, key = _origin(block_info)
    out = np.empty((1, 1), dtype=object)
    out[0, 0] = fn(np.asarray(block), r0, c0, key)
    return out


def sum_block(block: np.ndarray, fn: Any, block_info: Any = None) -> np.ndarray:
    """``fn(block, row0, col0, key)`` (a vector) as ``(1, 1, n)``, to be summed over blocks."""
    r0, c0, key = _origin(block_info)
    return np.asarray(fn(np.asarray(block), r0, c0, key))[None, None, :]


# --------------------------------------------------------------------------- chip assembly


@dataclass(frozen=True)
class GroupSpec:
    """How one task assembles its chips from source pieces (travels through dask as is)."""

    shape: tuple[int, ...]  # (n_chips, *lead, h, w)
    dtype: np.dtype
    #: per piece: (chip, (dst_y0, dst_y1), (dst_x0, dst_x1), src window or None if pre-cut)
    pieces: tuple[tuple[int, tuple[int, int], tuple[int, int], Any], ...]


def assemble(spec: GroupSpec, sources: list[np.ndarray]) -> np.ndarray:
    out = np.empty(spec.shape, dtype=spec.dtype)
    for (k, (y0, y1), (x0, x1), window), src in zip(spec.pieces, sources, strict=True):
        if window is not None:
            (a, b), (c, d) = window
            src = src[..., a:b, c:d]
        out[k, ..., y0:y1, x0:x1] = src
    return out


# --------------------------------------------------------------------------- anchor stitching


@dataclass(frozen=True)
class StitchSpec:
    """One output block of :func:`patchflow.sampling.stitch_anchors` (travels through dask as is).

    The block task feeds its chips to ``agg`` exactly as :func:`patchflow.apply` does
    (:class:`~patchflow.engine.aggregate.ChipBatch` → ``add`` into a partial state over the
    chips' bounding region → ``merge`` of the block's window into a block state →
    ``finalize``), so every aggregation and validity rule is the engine's own.
    """

    origin: tuple[int, int]
    shape: tuple[int, int]
    scene: tuple[int, int]
    agg: Aggregator
    #: blending window (``None``: the aggregation ignores windows, every weight is 1)
    window: Window | None
    #: chips per ``add`` call (bounds the copy of chip outputs a batch holds)
    batch: int
    #: per source chunk in ``sources``: (local chip indices, anchors, global chip ids)
    chips: tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]
    #: the chip outputs' nodata: chip values equal to it are invalid, per element, as
    #: input nodata is in apply (``None``: only non-finite values are invalid)
    nodata: Any = None

    def __dask_tokenize__(self) -> Any:
        return (
            self.origin,
            self.shape,
            self.scene,
            self.agg.__dask_tokenize__(),
            None if self.window is None else self.window.__dask_tokenize__(),
            self.batch,
            [(a.tobytes(), b.tobytes(), c.tobytes()) for a, b, c in self.chips],
            repr(self.nodata),
        )


def chip_weights(
    window: Window | None, anchors: np.ndarray, size: tuple[int, int], scene: tuple[int, int]
) -> list[np.ndarray]:
    """Per chip, the border-aware window weights (as the engine computes them)."""
    h, w = size
    if window is None:
        ones = np.ones(size, np.float32)
        ones.setflags(write=False)
        return [ones] * len(anchors)
    return [
        window.weights(r <= 0, r + h >= scene[0], c <= 0, c + w >= scene[1])
        for r, c in ((int(r), int(c)) for r, c in anchors)
    ]


def stitch_anchor_block(spec: StitchSpec, sources: list[np.ndarray]) -> np.ndarray:
    """Aggregate the chips touching one output block and finalise the block."""
    agg = spec.agg
    y0, x0 = spec.origin
    bh, bw = spec.shape
    anchors = [a for _, a, _ in spec.chips]
    if not sources or not sum(len(a) for a in anchors):
        return agg.finalize(agg.new(spec.shape))
    h, w = sources[0].shape[-2:]
    every = np.concatenate(anchors)
    # the partial state spans the block and every chip touching it, so whole chips are
    # added (the centre score and the window need the whole chip) and then cropped by merge
    ry0, rx0 = min(y0, int(every[:, 0].min())), min(x0, int(every[:, 1].min()))
    ry1 = max(y0 + bh, int(every[:, 0].max()) + h)
    rx1 = max(x0 + bw, int(every[:, 1].max()) + w)
    # the accumulator (float32/float64 sums) from every chip here, not just the first batch
    accs = [
        agg.accumulator_for(src[int(k)])
        for (local, _, _), src in zip(spec.chips, sources, strict=True)
        for k in local
    ]
    wanted = [a for a in accs if a is not None]
    state = agg.new((ry1 - ry0, rx1 - rx0), np.result_type(*wanted) if wanted else None)
    origin = np.array([ry0, rx0], np.int64)
    for (local, anc, ids), src in zip(spec.chips, sources, strict=True):
        for lo in range(0, len(local), spec.batch):
            sel = slice(lo, lo + spec.batch)
            out = np.asarray(src[local[sel]])
            # chip outputs mark their own invalid values: non-finite ones and, per element
            # (per band), the chips' nodata; with no nodata hit the aggregators keep their
            # all-valid fast paths (valid=None)
            bad = invalid_elements(out, spec.nodata)
            batch = ChipBatch(
                out=out,
                pos=anc[sel] - origin,
                weights=chip_weights(spec.window, anc[sel], (h, w), spec.scene),
                valid=None if bad is None else ~bad,
                chip_ids=ids[sel],
                # nan_marks would let a float output's NaNs overrule ``valid``; ``valid``
                # already holds them, plus the nodata values NaN does not mark
                nan_marks=bad is None,
            )
            agg.add(state, batch)
    state = agg.seal(state, None, None)
    block = agg.new(spec.shape, agg.merged_accumulator([state]))
    agg.merge(
        block,
        state,
        (slice(0, bh), slice(0, bw)),
        (slice(y0 - ry0, y0 - ry0 + bh), slice(x0 - rx0, x0 - rx0 + bw)),
    )
    return agg.finalize(block)


# --------------------------------------------------------------------------- zonal statistics


def require_geo() -> Any:
    """``rasterio.features`` (with shapely), or :class:`MissingExtraError`."""
    return optional_import(
        "rasterio.features",
        "shapely",
        message="polygon support needs shapely (and geopandas for GeoDataFrames): "
        "pip install 'patchflow[vector]' (or: pip install geopandas shapely)",
    )


#: a polygon whose window of the scene is larger than this (pixels: 64 MiB of mask) is
#: drawn per block (see :func:`polygon_mask`)
MASK_PIXELS = 8192 * 8192
#: pixels drawn past each side of a block when a polygon is drawn per block
MASK_MARGIN = 8


def polygon_mask(
    geom: Any,
    transform: Any,
    window: tuple[int, int, int, int],
    all_touched: bool,
    shape: tuple[int, int],
) -> np.ndarray:
    """Boolean interior mask of ``geom`` on the pixels ``rows r0:r1, cols c0:c1`` of a
    scene of ``shape`` pixels.

    The same pixels whichever ``window`` asks: the polygon is rasterized once on its own
    window of the scene (its pixel bounds plus one pixel, clipped to the scene) and
    ``window`` is cut out of that, so the blocks of any chunking see one rasterization.
    GDAL's decisions for outlines through pixel centres (and, with ``all_touched``, pixel
    corners) depend on the floating point of the frame it draws in: a window of its own
    per block, or a window transform per block, gave each block slightly different
    coordinates and a polygon's pixel count changed with the chunking. Memory: one
    ``uint8`` mask of the polygon's window (its bounding box in pixels, within the scene)
    up to :data:`MASK_PIXELS`; a larger polygon is drawn on ``window`` plus
    :data:`MASK_MARGIN` pixels each side (memory and time of the block, not of the
    polygon), where only an outline running exactly through pixel corners (or centres)
    can give other pixels than on another chunking.

    Drawn on the north-up grid and flipped back, so a pixel centre on the outline is in or
    out as GDAL decides for the north-up raster whichever way the array's y and x run
    (GDAL's tie rules are not symmetric under a flip). The geometry is taken to scene
    pixel coordinates as GDAL does for the whole scene (its inverse geotransform) and
    shifted by whole pixels, which is exact, so the polygon's window sees the coordinates
    GDAL would see on the whole north-up scene. The mask is GDAL's on the whole scene
    where the polygon's window starts at the scene's first row and column; elsewhere GDAL's
    own answer for an outline exactly through pixel corners (or centres) can change with
    where the raster it draws on starts (a cropped scene gives other pixels), and this is
    GDAL's answer on the scene cropped to the polygon's window. Cost: every block a polygon
    touches rasterizes the polygon's window (up to the bound above).
    """
    from affine import Affine

    features = require_geo()
    h, w = shape
    frame, flip_rows, flip_cols = north_up(transform, shape)
    # the requested window on the north-up grid
    r0, r1, c0, c1 = window
    if flip_rows:
        r0, r1 = h - r1, h - r0
    if flip_cols:
        c0, c1 = w - c1, w - c0
    pixel_geom = _to_scene_pixels(geom, frame)
    minx, miny, maxx, maxy = pixel_geom.bounds
    pr0 = min(max(math.floor(miny) - 1, 0), h)
    pr1 = min(max(math.ceil(maxy) + 1, pr0), h)
    pc0 = min(max(math.floor(minx) - 1, 0), w)
    pc1 = min(max(math.ceil(maxx) + 1, pc0), w)
    if (pr1 - pr0) * (pc1 - pc0) > MASK_PIXELS:
        # a polygon larger than the bound (an AOI over the scene): every block drawing
        # all of it would cost memory and time in the polygon's size, per block. Draw
        # the block's window with a margin instead (the clipped outline stays clear of
        # the pixels kept); only outlines exactly through pixel corners or centres can
        # then come out as on another chunking
        pr0, pr1 = max(pr0, r0 - MASK_MARGIN), max(min(pr1, r1 + MASK_MARGIN), pr0)
        pc0, pc1 = max(pc0, c0 - MASK_MARGIN), max(min(pc1, c1 + MASK_MARGIN), pc0)
    out = np.zeros((r1 - r0, c1 - c0), bool)
    lo_r, hi_r, lo_c, hi_c = max(r0, pr0), min(r1, pr1), max(c0, pc0), min(c1, pc1)
    if hi_r > lo_r and hi_c > lo_c:
        import shapely

        # a whole-pixel shift, then a scale by 2 that GDAL's inverse (x 0.5) undoes: both
        # exact in floating point (the identity or its flip would be an unset transform)
        shift = np.array([pc0, pr0], np.float64)
        local = shapely.transform(pixel_geom, lambda xy: (xy - shift) * np.array([2.0, -2.0]))
        drawn = features.rasterize(
            [(local, 1)],
            out_shape=(pr1 - pr0, pc1 - pc0),
            transform=Affine(2.0, 0.0, 0.0, 0.0, -2.0, 0.0),
            fill=0,
            all_touched=all_touched,
            dtype="uint8",
        )
        out[lo_r - r0 : hi_r - r0, lo_c - c0 : hi_c - c0] = drawn[
            lo_r - pr0 : hi_r - pr0, lo_c - pc0 : hi_c - pc0
        ].astype(bool)
    return out[:: -1 if flip_rows else 1, :: -1 if flip_cols else 1]


def _to_scene_pixels(geom: Any, transform: Any) -> Any:
    """``geom`` in fractional pixel coordinates ``(col, row)`` of the scene's ``transform``,
    computed as GDAL maps them when it rasterizes on that transform (for a grid without
    rotation ``-c/a + x * (1/a)``, which reproduced GDAL's whole-scene masks bit for bit
    where ``(x - c) / a`` or ``~transform`` did not), so that rasterizing the result in the
    scene's own frame reproduces GDAL's rasterization on the scene."""
    import shapely
    from affine import Affine

    a, b, c, d, e, f = (float(v) for v in tuple(transform)[:6])
    if b == 0 and d == 0:
        x0, xs, y0, ys = -c / a, 1.0 / a, -f / e, 1.0 / e
        return shapely.transform(
            geom, lambda xy: np.column_stack([x0 + xy[:, 0] * xs, y0 + xy[:, 1] * ys])
        )
    inv = ~Affine(a, b, c, d, e, f)  # rotated or sheared: no exactness to preserve
    return shapely.transform(
        geom,
        lambda xy: np.column_stack(
            [
                inv.c + inv.a * xy[:, 0] + inv.b * xy[:, 1],
                inv.f + inv.d * xy[:, 0] + inv.e * xy[:, 1],
            ]
        ),
    )


@dataclass(frozen=True)
class ZoneSpec:
    """One block of :func:`patchflow.sampling.zonal_stats` (travels through dask as is)."""

    origin: tuple[int, int]
    transform: tuple[float, ...]
    all_touched: bool
    nodata: Any
    keep_values: bool
    #: (polygon position, geometry, window r0, r1, c0, c1 in scene pixels)
    items: tuple[tuple[int, Any, tuple[int, int, int, int]], ...]
    #: the scene's (rows, cols): each polygon is rasterized on its window of the scene
    scene: tuple[int, int]

    def __dask_tokenize__(self) -> Any:
        return (
            self.origin,
            self.transform,
            self.all_touched,
            self.keep_values,
            len(self.items),
            self.scene,
        )


Partial = dict[str, np.ndarray | list[np.ndarray]]


def zonal_block(spec: ZoneSpec, block: np.ndarray) -> dict[int, Partial]:
    """Per polygon touching the block: count, mean, M2, min, max (and values) per band."""
    r_0, c_0 = spec.origin
    out: dict[int, Partial] = {}
    data = block.reshape(-1, *block.shape[-2:])
    for pos, geom, (r0, r1, c0, c1) in spec.items:
        mask = polygon_mask(geom, spec.transform, (r0, r1, c0, c1), spec.all_touched, spec.scene)
        if not mask.any():
            continue
        sub = data[:, r0 - r_0 : r1 - r_0, c0 - c_0 : c1 - c_0][:, mask]  # (bands, pixels)
        good = _valid(sub, spec.nodata)
        vals = sub.astype(np.float64)
        count = good.sum(axis=1).astype(np.int64)
        safe = np.maximum(count, 1)
        total = np.where(good, vals, 0.0).sum(axis=1)
        mean = total / safe
        m2 = np.where(good, (vals - mean[:, None]) ** 2, 0.0).sum(axis=1)
        part: Partial = {
            "count": count,
            "mean": mean,
            "m2": m2,
            "sum": total,
            "min": np.where(good, vals, np.inf).min(axis=1, initial=np.inf),
            "max": np.where(good, vals, -np.inf).max(axis=1, initial=-np.inf),
        }
        if spec.keep_values:
            part["values"] = [vals[b][good[b]] for b in range(vals.shape[0])]
        out[pos] = part
    return out


def merge_partials(a: Partial, b: Partial) -> Partial:
    """Chan et al.'s parallel update of count/mean/M2, plus min/max/sum/values."""
    na, nb = np.asarray(a["count"]), np.asarray(b["count"])
    n = na + nb
    ma, mb = np.asarray(a["mean"]), np.asarray(b["mean"])
    delta = mb - ma
    frac = np.where(n > 0, nb / np.maximum(n, 1), 0.0)
    out: Partial = {
        "count": n,
        "mean": ma + delta * frac,
        "m2": np.asarray(a["m2"]) + np.asarray(b["m2"]) + delta**2 * na * frac,
        "sum": np.asarray(a["sum"]) + np.asarray(b["sum"]),
        "min": np.minimum(a["min"], b["min"]),
        "max": np.maximum(a["max"], b["max"]),
    }
    if "values" in a:
        out["values"] = [
            np.concatenate([x, y]) for x, y in zip(a["values"], b["values"], strict=True)
        ]
    return out


def zonal_merge(n: int, bands: int, stats: tuple[str, ...], parts: list[Any]) -> dict[str, Any]:
    merged: dict[int, Partial] = {}
    for block in parts:
        for pos, part in block.items():
            merged[pos] = merge_partials(merged[pos], part) if pos in merged else part
    table = {s: np.full((n, bands), np.nan) for s in stats if s != "count"}
    counts = np.zeros((n, bands), np.int64)
    for pos, part in merged.items():
        cnt = np.asarray(part["count"])
        counts[pos] = cnt
        has = cnt > 0
        for s in stats:
            if s == "count":
                continue
            if s == "std":
                val = np.sqrt(np.asarray(part["m2"]) / np.maximum(cnt, 1))
            elif s == "median":
                val = np.array(
                    [np.median(v) if v.size else np.nan for v in part["values"]], np.float64
                )
            elif s == "sum":
                val = np.asarray(part["sum"], np.float64)
                table[s][pos] = val  # an empty sum is 0
                continue
            else:
                val = np.asarray(part[s], np.float64)
            table[s][pos] = np.where(has, val, np.nan)
    if "sum" in table:
        table["sum"][np.isnan(table["sum"])] = 0.0
    if "count" in stats:
        table["count"] = counts
    return table


# --------------------------------------------------------------------------- h3 zonal statistics


def require_h3() -> Any:
    """The h3 module, or :class:`MissingExtraError`."""
    return optional_import(
        "h3",
        message="zonal statistics by h3 cell need h3 (4.x): "
        "pip install 'patchflow[vector]' (or: pip install h3)",
    )


@functools.lru_cache(maxsize=16)
def lonlat_transformer(crs_wkt: str) -> Any:
    """A pyproj ``Transformer`` from ``crs_wkt`` to EPSG:4326 ``(lon, lat)``.

    Built in the task (specs carry the WKT string, so they pickle) and cached per CRS: a
    ``Transformer`` takes milliseconds to build and pyproj's are thread-safe (>= 3.1).
    """
    from pyproj import CRS, Transformer

    return Transformer.from_crs(CRS.from_wkt(crs_wkt), "EPSG:4326", always_xy=True)


@dataclass(frozen=True)
class H3Spec:
    """One block of h3 zonal statistics (travels through dask as is)."""

    #: scene row and column of the block's first pixel
    origin: tuple[int, int]
    #: the raster's affine transform ``a, b, c, d, e, f``
    transform: tuple[float, ...]
    crs_wkt: str
    resolution: int
    nodata: Any
    #: also return the per-block median of each (cell, band)
    keep_median: bool


def _valid(sub: np.ndarray, nodata: Any) -> np.ndarray:
    """Per-value validity: finite (for floats) and not ``nodata``."""
    good = np.ones(sub.shape, bool)
    if sub.dtype.kind in "fc":
        good &= np.isfinite(sub)
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        good &= sub != nodata
    return good


def h3_pixel_cells(spec: H3Spec, shape: tuple[int, int]) -> np.ndarray:
    """int64 h3 cell of each pixel centre of a ``shape`` block (row-major, flat); -1 where
    the centre has no geographic coordinates (outside the CRS's domain)."""
    h3 = require_h3()
    h, w = shape
    r_0, c_0 = spec.origin
    a, b, c, d, e, f = spec.transform[:6]
    rows, cols = np.meshgrid(
        r_0 + np.arange(h, dtype=np.float64) + 0.5,
        c_0 + np.arange(w, dtype=np.float64) + 0.5,
        indexing="ij",
    )
    x = (a * cols + b * rows + c).ravel()
    y = (d * cols + e * rows + f).ravel()
    lon, lat = lonlat_transformer(spec.crs_wkt).transform(x, y)
    lon, lat = np.asarray(lon, np.float64), np.asarray(lat, np.float64)
    ok = np.isfinite(lon) & np.isfinite(lat) & (np.abs(lat) <= 90.0)
    cells = np.full(x.size, -1, np.int64)
    # h3 has no vectorised API: one call per pixel (~1 us)
    to_cell = h3.api.basic_int.latlng_to_cell
    res = spec.resolution
    cells[ok] = np.fromiter(
        (to_cell(la, lo, res) for la, lo in zip(lat[ok].tolist(), lon[ok].tolist(), strict=True)),
        np.int64,
        count=int(ok.sum()),
    )
    return cells


def h3_block(spec: H3Spec, block: np.ndarray) -> dict[str, np.ndarray]:
    """Per h3 cell with a pixel centre in the block: ``cells`` (sorted int64 ids) and
    count, mean, M2, sum, min, max (and the block median) per band, each ``(k, bands)``."""
    data = block.reshape(-1, block.shape[-2] * block.shape[-1])  # (bands, pixels)
    bands = data.shape[0]
    cells = h3_pixel_cells(spec, (int(block.shape[-2]), int(block.shape[-1])))
    located = cells >= 0
    uniq, inv = np.unique(cells[located], return_inverse=True)
    sub = data[:, located]
    good = _valid(sub, spec.nodata)
    vals = sub.astype(np.float64)
    k = uniq.size
    out: dict[str, np.ndarray] = {
        "cells": uniq,
        "count": np.zeros((k, bands), np.int64),
        "mean": np.zeros((k, bands)),
        "m2": np.zeros((k, bands)),
        "sum": np.zeros((k, bands)),
        "min": np.full((k, bands), np.inf),
        "max": np.full((k, bands), -np.inf),
    }
    if spec.keep_median:
        out["median"] = np.full((k, bands), np.nan)
    for band in range(bands):
        g = good[band]
        idx, v = inv[g], vals[band][g]
        cnt = np.bincount(idx, minlength=k)
        total = np.bincount(idx, weights=v, minlength=k)
        mean = total / np.maximum(cnt, 1)
        out["count"][:, band] = cnt
        out["sum"][:, band] = total
        out["mean"][:, band] = mean
        out["m2"][:, band] = np.bincount(idx, weights=(v - mean[idx]) ** 2, minlength=k)
        # one sort per band gives min, max and median of every cell
        sv = v[np.lexsort((v, idx))]
        start = np.cumsum(cnt) - cnt
        has = cnt > 0
        s, n = start[has], cnt[has]
        out["min"][has, band] = sv[s]
        out["max"][has, band] = sv[s + n - 1]
        if spec.keep_median:
            out["median"][has, band] = (sv[s + (n - 1) // 2] + sv[s + n // 2]) / 2
    return out


def weighted_median(k: int, idx: np.ndarray, values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``(k,)`` weighted median of ``values`` grouped by ``idx`` (``0 … k-1``): the value
    where the cumulative weight (values sorted) reaches half the total, the mean of the
    two values when it lands exactly on half (as ``np.median`` does); NaN for groups
    without positive weight."""
    out = np.full(k, np.nan)
    keep = weights > 0
    i, v, w = idx[keep], values[keep], weights[keep].astype(np.int64)
    if i.size == 0:
        return out
    order = np.lexsort((v, i))
    i, v, w = i[order], v[order], w[order]
    starts = np.flatnonzero(np.r_[True, i[1:] != i[:-1]])
    ends = np.r_[starts[1:], i.size]
    lens = ends - starts
    cw = np.cumsum(w)
    cw_in = cw - np.repeat(cw[starts] - w[starts], lens)
    tot = np.repeat(np.add.reduceat(w, starts), lens)
    pos = np.arange(i.size)
    first = np.minimum.reduceat(np.where(2 * cw_in >= tot, pos, i.size), starts)
    val = v[first]
    tie = (2 * cw_in[first] == tot[first]) & (first + 1 < ends)
    val[tie] = (v[first[tie]] + v[first[tie] + 1]) / 2
    out[i[starts]] = val
    return out


def h3_merge(bands: int, stats: tuple[str, ...], parts: list[Any]) -> dict[str, Any]:
    """Merge :func:`h3_block` partials exactly (Chan's update, :func:`merge_partials`):
    ``{"cells": (k,) sorted ids, stat: (k, bands)}``. The median is the count-weighted
    median of the per-block medians (:func:`weighted_median`): exact for a cell inside
    one block, an approximation otherwise."""
    parts = [p for p in parts if p["cells"].size]
    cells = (
        np.unique(np.concatenate([p["cells"] for p in parts])) if parts else np.zeros(0, np.int64)
    )
    k = cells.size
    acc: dict[str, np.ndarray] = {
        "count": np.zeros((k, bands), np.int64),
        "mean": np.zeros((k, bands)),
        "m2": np.zeros((k, bands)),
        "sum": np.zeros((k, bands)),
        "min": np.full((k, bands), np.inf),
        "max": np.full((k, bands), -np.inf),
    }
    where, medians, weights = [], [], []
    for part in parts:
        idx = np.searchsorted(cells, part["cells"])  # unique within a block
        merged = merge_partials(
            {key: arr[idx] for key, arr in acc.items()}, {key: part[key] for key in acc}
        )
        for key, arr in acc.items():
            arr[idx] = np.asarray(merged[key])
        if "median" in part:
            where.append(idx)
            medians.append(part["median"])
            weights.append(part["count"])
    counts = acc["count"]
    has = counts > 0
    table: dict[str, Any] = {"cells": cells}
    for s in stats:
        if s == "count":
            table[s] = counts
        elif s == "sum":
            table[s] = acc["sum"]  # an empty sum is 0
        elif s == "std":
            table[s] = np.where(has, np.sqrt(acc["m2"] / np.maximum(counts, 1)), np.nan)
        elif s == "median":
            med = np.full((k, bands), np.nan)
            if where:
                idx_all, med_all = np.concatenate(where), np.concatenate(medians)
                w_all = np.concatenate(weights)
                for band in range(bands):
                    med[:, band] = weighted_median(k, idx_all, med_all[:, band], w_all[:, band])
            table[s] = med
        else:
            table[s] = np.where(has, acc[s], np.nan)
    return table


def zone_block(spec: ZoneSpec | H3Spec, block: np.ndarray) -> Any:
    """The block task of a zonal-statistics graph, by spec: polygons or h3 cells."""
    if isinstance(spec, H3Spec):
        return h3_block(spec, block)
    return zonal_block(spec, block)


def gather_points(
    window: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    weights: np.ndarray,
    nodata: Any,
) -> np.ndarray:
    """``(bands, n)`` values at ``rows/cols`` (``(k, n)``: k neighbours) of ``window``
    ``(bands, h, w)``, weighted; NaN where a neighbour with weight > 0 is invalid."""
    vals = np.asarray(window)[:, rows, cols].astype(np.float64)  # (bands, k, n)
    invalid = np.isnan(vals)
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        invalid |= np.asarray(window)[:, rows, cols] == nodata
    needed = weights > 0
    bad = (invalid & needed[None]).any(axis=1)
    out = np.where(needed[None], np.where(invalid, 0.0, vals), 0.0)
    out = (out * weights[None]).sum(axis=1)
    out[bad] = np.nan
    return out
