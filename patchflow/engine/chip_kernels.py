"""Per-task kernels of the sampler-side graphs (pure numpy; they run on the workers).

The task functions and their per-task specs behind :func:`patchflow.sampling.sample`
(chip assembly), the samplers' block scans of masks and label rasters,
:func:`patchflow.sampling.stitch` (one output block from the chips touching it),
:func:`patchflow.sampling.zonal_stats` (per-block partial statistics and their exact
merge) and ``sample_points`` (:func:`gather_points`: values at points).
:mod:`patchflow.engine.graph` builds the graphs that call them; nothing here imports dask,
xarray or zarr, and every spec is a frozen, picklable dataclass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from patchflow.engine.aggregate import Aggregator, ChipBatch
from patchflow.errors import MissingExtraError
from patchflow.plan.windows import Window

__all__ = [
    "GroupSpec",
    "Partial",
    "StitchSpec",
    "ZoneSpec",
    "assemble",
    "chip_weights",
    "gather_points",
    "merge_partials",
    "polygon_mask",
    "require_geo",
    "scan_block",
    "stitch_anchor_block",
    "sum_block",
    "zonal_block",
    "zonal_merge",
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

    def __dask_tokenize__(self) -> Any:
        return (
            self.origin,
            self.shape,
            self.scene,
            self.agg.__dask_tokenize__(),
            None if self.window is None else self.window.__dask_tokenize__(),
            self.batch,
            [(a.tobytes(), b.tobytes(), c.tobytes()) for a, b, c in self.chips],
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
            batch = ChipBatch(
                out=np.asarray(src[local[sel]]),
                pos=anc[sel] - origin,
                weights=chip_weights(spec.window, anc[sel], (h, w), spec.scene),
                valid=None,
                chip_ids=ids[sel],
                # chip outputs mark their own invalid pixels: non-finite values
                nan_marks=True,
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
    try:
        import rasterio.features
        import shapely  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtraError(
            "polygon support needs shapely (and geopandas for GeoDataFrames): "
            "pip install 'patchflow[geo]' (or: pip install geopandas shapely)"
        ) from exc
    return rasterio.features


def polygon_mask(
    geom: Any, transform: Any, window: tuple[int, int, int, int], all_touched: bool
) -> np.ndarray:
    """Boolean interior mask of ``geom`` on the pixels ``rows r0:r1, cols c0:c1``."""
    from affine import Affine

    features = require_geo()
    r0, r1, c0, c1 = window
    t = Affine(*tuple(transform)[:6]) @ Affine.translation(c0, r0)
    return np.asarray(
        features.rasterize(
            [(geom, 1)],
            out_shape=(r1 - r0, c1 - c0),
            transform=t,
            fill=0,
            all_touched=all_touched,
            dtype="uint8",
        ),
        dtype=bool,
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

    def __dask_tokenize__(self) -> Any:
        return (self.origin, self.transform, self.all_touched, self.keep_values, len(self.items))


Partial = dict[str, np.ndarray | list[np.ndarray]]


def zonal_block(spec: ZoneSpec, block: np.ndarray) -> dict[int, Partial]:
    """Per polygon touching the block: count, mean, M2, min, max (and values) per band."""
    r_0, c_0 = spec.origin
    out: dict[int, Partial] = {}
    data = block.reshape(-1, *block.shape[-2:])
    for pos, geom, (r0, r1, c0, c1) in spec.items:
        mask = polygon_mask(geom, spec.transform, (r0, r1, c0, c1), spec.all_touched)
        if not mask.any():
            continue
        sub = data[:, r0 - r_0 : r1 - r_0, c0 - c_0 : c1 - c_0][:, mask]  # (bands, pixels)
        good = np.ones(sub.shape, bool)
        if sub.dtype.kind in "fc":
            good &= np.isfinite(sub)
        if spec.nodata is not None and not (
            isinstance(spec.nodata, float) and math.isnan(spec.nodata)
        ):
            good &= sub != spec.nodata
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
