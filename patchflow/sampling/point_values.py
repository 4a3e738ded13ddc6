"""Raster values at point locations: ``sample_points``.

What it owns: turning a GeoDataFrame of points into pixel positions of a georeferenced
raster (reprojecting the points to the raster's CRS), reading only the chunks that hold
points (one task per batch of points sharing a chunk, computed together once), and the
nearest / bilinear rules, nodata and out-of-raster handling of the values returned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import dask
import dask.array as dsa
import numpy as np
import xarray as xr

from patchflow._xr import as_dataarray, band_labels, georef, spatial_last
from patchflow.engine.chip_kernels import gather_points
from patchflow.engine.graph import point_read_tasks
from patchflow.errors import MissingExtraError, ParameterError

__all__ = ["SAMPLE_METHODS", "sample_points"]

#: the interpolation rules ``sample_points`` knows
SAMPLE_METHODS = ("nearest", "bilinear")


def _require_geopandas() -> Any:
    try:
        import geopandas as gpd
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtraError(
            "sample_points takes and returns a GeoDataFrame and needs geopandas: "
            "pip install 'patchflow[geo]' (or: pip install geopandas)"
        ) from exc
    return gpd


def _column_names(arr: xr.DataArray, n: int, given: Sequence[str] | None) -> list[str]:
    """One name per band: ``given``, the band names (:func:`patchflow._xr.band_labels`:
    labels, or GeoTIFF descriptions by band number) when unique, or ``band_1 … band_N``."""
    if given is not None:
        names = [given] if isinstance(given, str) else list(given)
        if len(names) != n or not all(isinstance(c, str) for c in names):
            raise ParameterError(f"column_names must be {n} string(s), one per band, got {given!r}")
        if len(set(names)) != n:
            raise ParameterError(f"column_names must be unique, got {names!r}")
        return names
    lead = arr.dims[:-2]
    if not lead:
        return [arr.name] if isinstance(arr.name, str) and arr.name else ["band_1"]
    labels = band_labels(arr) if len(lead) == 1 else None
    if labels is not None and len(set(labels)) == n:
        return labels
    return [f"band_{k}" for k in range(1, n + 1)]


def _coordinates(points: Any, crs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Point ``x, y`` in the raster CRS (NaN for missing/empty geometries)."""
    gpd = _require_geopandas()
    if not isinstance(points, gpd.GeoDataFrame):
        raise ParameterError(
            f"points must be a geopandas GeoDataFrame of Point geometries, got "
            f"{type(points).__name__}; build one with "
            "geopandas.GeoDataFrame(geometry=geopandas.points_from_xy(x, y), crs=...)"
        )
    geo = points.geometry
    if geo.crs is None:
        raise ParameterError(
            "the points have no CRS, so they cannot be placed on the raster "
            f"(CRS {crs.to_string()}); declare the one their coordinates are in, e.g. "
            "points.set_crs('EPSG:4326') (or points.set_crs(da.rio.crs) if they are "
            "already in the raster's CRS)"
        )
    present = ~(geo.isna() | geo.is_empty)
    kinds = set(geo[present].geom_type)
    if kinds - {"Point"}:
        raise ParameterError(
            f"sample_points samples Point geometries, got {sorted(kinds)}; take e.g. "
            "points.geometry.representative_point() or zonal_stats for polygons"
        )
    if not geo.crs.equals(crs):
        geo = geo.to_crs(crs)
    xs = np.full(len(geo), np.nan)
    ys = np.full(len(geo), np.nan)
    mask = present.to_numpy()
    xs[mask] = geo[present].x.to_numpy()
    ys[mask] = geo[present].y.to_numpy()
    return xs, ys


def sample_points(
    da: xr.DataArray,
    points: Any,
    *,
    method: Literal["nearest", "bilinear"] = "nearest",
    column_names: Sequence[str] | None = None,
    batch: int = 4096,
) -> Any:
    """Raster values at the points of a GeoDataFrame, one column per band.

    The points are reprojected to the raster's CRS. ``"nearest"`` takes the pixel that
    contains the point (as ``rasterio``'s ``DatasetReader.sample`` does); ``"bilinear"``
    interpolates the four pixel centres around it. For a dask-backed raster only the
    chunks that hold points are read: points are grouped by the chunk they fall in, each
    group of up to ``batch`` points reads the smallest window covering its neighbourhoods
    (bilinear: one pixel more, which may reach into the next chunk), and all windows are
    computed together once.

    Parameters
    ----------
    da
        Georeferenced ``(band, y, x)`` or ``(y, x)`` DataArray (numpy or dask) with a CRS
        and regular y/x coordinates.
    points
        GeoDataFrame of Point geometries with a CRS. Missing or empty geometries give NaN.
    method
        ``"nearest"`` or ``"bilinear"``.
    column_names
        Names of the value columns, one per band. Default: the band labels when they are
        strings, else the GeoTIFF band descriptions (``da.attrs["long_name"]``) when they
        are unique, else ``band_1 … band_N`` (a 2-D raster: its ``name``, else
        ``band_1``).
    batch
        Most points one read task handles (bounds the memory of a task's index arrays).

    Returns
    -------
    geopandas.GeoDataFrame
        A copy of ``points`` (same rows, order, index, geometry and CRS) with the value
        columns appended. Values are NaN for points outside the raster and for nodata or
        NaN pixels. Columns are float: an integer raster's values are cast to float64
        (exact up to 2**53) so NaN fits; nearest samples of a float raster keep its
        dtype, bilinear ones are float64.

        Bilinear edge rule: a point whose interpolation needs a pixel centre outside the
        raster (within half a pixel of the edge) or a nodata/NaN pixel gets NaN, never a
        value renormalised from fewer pixels. Neighbours with zero weight (a point exactly
        on a pixel-centre row or column) are not needed.

    Raises
    ------
    ParameterError
        An unknown ``method``, a bad ``batch`` or ``column_names``, a raster without
        CRS or transform, points without a CRS or not Points, or a value column that
        ``points`` already has.
    MissingExtraError
        geopandas is not installed (``pip install 'patchflow[geo]'``).

    Examples
    --------
    >>> import pytest; gpd = pytest.importorskip("geopandas")  # the [geo] extra
    >>> from patchflow.io.synthetic import make_scene
    >>> scene = make_scene((256, 256), chunks=128)
    >>> x, y = float(scene.x[10]), float(scene.y[20])
    >>> pts = gpd.GeoDataFrame(geometry=gpd.points_from_xy([x], [y]), crs=scene.rio.crs)
    >>> out = sample_points(scene, pts)
    >>> list(out.columns)
    ['geometry', 'red', 'nir']
    >>> bool(out["red"].iloc[0] == scene.sel(band="red")[20, 10])
    True
    """
    gpd = _require_geopandas()
    if method not in SAMPLE_METHODS:
        raise ParameterError(f"unknown method {method!r}; valid: {', '.join(SAMPLE_METHODS)}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ParameterError(f"batch must be a positive integer, got {batch!r}")
    arr = spatial_last(as_dataarray(da))
    transform, crs = georef(arr)
    if transform is None:
        raise ParameterError(
            "sample_points needs a georeferenced raster (regular y/x coordinates); write "
            "them with da.rio.write_transform(...) or open the file with rioxarray"
        )
    if crs is None:
        raise ParameterError(
            "the raster has no CRS, so the points cannot be placed on it; declare it with "
            "da.rio.write_crs('EPSG:...')"
        )
    if not isinstance(points, gpd.GeoDataFrame):
        _coordinates(points, crs)  # raises the named error
    h, w = int(arr.shape[-2]), int(arr.shape[-1])
    nbands = math.prod(int(s) for s in arr.shape[:-2])
    names = _column_names(arr, nbands, column_names)
    taken = [c for c in names if c in points.columns]
    if taken:
        raise ParameterError(
            f"the points already have the column(s) {taken} that sample_points would "
            f"write; pass column_names=[...] or drop them (points.drop(columns={taken!r}))"
        )
    xs, ys = _coordinates(points, crs)
    n = len(xs)

    inv = ~transform
    colf = inv.a * xs + inv.b * ys + inv.c
    rowf = inv.d * xs + inv.e * ys + inv.f
    finite = np.isfinite(colf) & np.isfinite(rowf)
    if method == "nearest":
        with np.errstate(invalid="ignore"):
            r = np.floor(np.where(finite, rowf, -1)).astype(np.int64)
            c = np.floor(np.where(finite, colf, -1)).astype(np.int64)
        inside = finite & (r >= 0) & (r < h) & (c >= 0) & (c < w)
        rows, cols = r[None], c[None]
        weights = np.ones((1, n))
    else:
        u = np.where(finite, rowf - 0.5, -10.0)
        v = np.where(finite, colf - 0.5, -10.0)
        r0 = np.floor(u).astype(np.int64)
        c0 = np.floor(v).astype(np.int64)
        fy, fx = u - r0, v - c0
        rows = np.stack([r0, r0, r0 + 1, r0 + 1])
        cols = np.stack([c0, c0 + 1, c0, c0 + 1])
        weights = np.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx])
        needed = weights > 0
        ok = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
        inside = finite & (ok | ~needed).all(axis=0)
        # zero-weight neighbours past the edge are read clipped and contribute nothing
        rows, cols = np.clip(rows, 0, h - 1), np.clip(cols, 0, w - 1)

    nodata = arr.rio.nodata
    if isinstance(nodata, np.generic):
        nodata = nodata.item()
    data = arr.data.reshape((nbands, h, w)) if arr.ndim != 3 else arr.data
    values = np.full((nbands, n), np.nan)
    idx = np.flatnonzero(inside)
    if idx.size:
        if isinstance(data, dsa.Array):
            groups, tasks = point_read_tasks(data, idx, rows, cols, weights, nodata, batch)
            for g, got in zip(groups, dask.compute(*tasks), strict=True):
                values[:, g] = got
        else:
            values[:, idx] = gather_points(
                np.asarray(data), rows[:, idx], cols[:, idx], weights[:, idx], nodata
            )

    keep = method == "nearest" and np.issubdtype(arr.dtype, np.floating)
    out = points.copy()
    for k, name in enumerate(names):
        col = values[k].astype(arr.dtype) if keep else values[k]
        out[name] = col  # positional: the points' index may repeat labels
    return out
