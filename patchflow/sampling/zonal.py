"""Per-polygon statistics and polygon chips of a GeoDataFrame, computed block by block.

``zonal_stats`` merges the partial statistics of polygons spanning several blocks exactly
and returns them joined to the polygons (a GeoDataFrame); ``polygon_chips`` gives one chip
per polygon bounding box with the polygon's interior mask.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import xarray as xr
from dask.base import tokenize

from patchflow._xr import georef
from patchflow.engine.chip_kernels import ZoneSpec, polygon_mask, require_geo
from patchflow.engine.graph import (
    ZONAL_PREFIX as ZONAL_PREFIX,
)
from patchflow.engine.graph import (
    ZoneBlock,
    zonal_graph,
)
from patchflow.errors import MissingExtraError, ParameterError
from patchflow.options import DEFAULT_STATS, ZONAL_STATS
from patchflow.plan.layout import PolygonChip
from patchflow.sampling.chips import _as_dataarray, _dask_data

# --------------------------------------------------------------------------- polygons


def _geometries(gdf: Any, crs: Any) -> tuple[Any, list[Any]]:
    """``(index, geometries in the raster CRS)`` of a GeoDataFrame/GeoSeries/sequence."""
    if hasattr(gdf, "geometry") and hasattr(gdf, "index"):
        geo = gdf.geometry
        if crs is not None and getattr(geo, "crs", None) is not None and geo.crs != crs:
            geo = geo.to_crs(crs)
        return gdf.index, list(geo)
    if hasattr(gdf, "index") and hasattr(gdf, "to_crs"):  # GeoSeries without .geometry
        geo = gdf
        if crs is not None and geo.crs is not None and geo.crs != crs:
            geo = geo.to_crs(crs)
        return gdf.index, list(geo)
    geoms = list(gdf)
    import pandas as pd

    return pd.RangeIndex(len(geoms)), geoms


def _polygon_frame(gdf: Any, crs: Any) -> Any:
    """The GeoDataFrame the statistics are joined to: a copy of ``gdf``'s rows (geometry,
    columns, index, order and CRS as given), or, for plain geometries, one in ``crs``."""
    try:
        import geopandas as gpd
        import pandas as pd
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtraError(
            "zonal_stats returns a GeoDataFrame and needs geopandas: "
            "pip install 'patchflow[geo]' (or: pip install geopandas)"
        ) from exc
    if isinstance(gdf, gpd.GeoDataFrame):
        return gdf.copy()
    if isinstance(gdf, gpd.GeoSeries):
        return gpd.GeoDataFrame(geometry=gdf.copy())
    if isinstance(gdf, pd.DataFrame) and "geometry" in gdf.columns:
        return gpd.GeoDataFrame(gdf.copy(), geometry="geometry", crs=crs)
    return gpd.GeoDataFrame(geometry=list(gdf), crs=crs)


def _pixel_windows(geoms: list[Any], transform: Any, shape: tuple[int, int]) -> np.ndarray:
    """``(n, 4)`` ``row0, row1, col0, col1`` pixel windows of the geometries' bounds, clipped
    to the scene (one pixel of margin; empty where a geometry is missing or outside)."""
    out = np.zeros((len(geoms), 4), np.int64)
    inv = ~transform
    for k, geom in enumerate(geoms):
        if geom is None or geom.is_empty:
            continue
        minx, miny, maxx, maxy = geom.bounds
        xs = np.array([minx, maxx, minx, maxx])
        ys = np.array([miny, miny, maxy, maxy])
        cols = inv.a * xs + inv.b * ys + inv.c
        rows = inv.d * xs + inv.e * ys + inv.f
        r0 = int(np.clip(math.floor(rows.min()) - 1, 0, shape[0]))
        r1 = int(np.clip(math.ceil(rows.max()) + 1, 0, shape[0]))
        c0 = int(np.clip(math.floor(cols.min()) - 1, 0, shape[1]))
        c1 = int(np.clip(math.ceil(cols.max()) + 1, 0, shape[1]))
        out[k] = (r0, max(r1, r0), c0, max(c1, c0))
    return out


def _band_labels(arr: xr.DataArray) -> list[str] | None:
    lead = arr.dims[:-2]
    if not lead:
        return None
    labels: list[list[str]] = [[]]
    for d in lead:
        vals = (
            [str(v) for v in arr.coords[d].values]
            if d in arr.coords
            else [f"{d}{k}" for k in range(arr.sizes[d])]
        )
        labels = [[*p, v] for p in labels for v in vals]
    names = ["_".join(p) for p in labels]
    return None if len(names) == 1 and not any(d in arr.coords for d in lead) else names


def zonal_stats(
    obj: xr.DataArray | xr.Dataset,
    gdf: Any,
    stats: Sequence[str] = DEFAULT_STATS,
    *,
    all_touched: bool = False,
    nodata: Any = "auto",
    compute: bool = True,
) -> Any:
    """Per-polygon statistics of a raster, computed lazily block by block.

    Each polygon (reprojected to the raster CRS) is rasterised with
    ``rasterio.features.rasterize`` (pixel centres inside, or every pixel touched with
    ``all_touched``) within its bounding window, one block at a time: a block task reads
    only its own chunk and returns, per polygon touching it, count/mean/M2/min/max (and the
    pixel values when the median is wanted); partial results of polygons spanning several
    blocks are merged exactly (Chan's parallel variance update). Blocks no polygon touches
    are never read. NaN and nodata pixels are excluded, per band.

    Parameters
    ----------
    obj
        Georeferenced DataArray (or Dataset) with spatial dims and a transform.
    gdf
        GeoDataFrame or GeoSeries (reprojected to the raster CRS when both have one), or a
        sequence of shapely geometries in the raster CRS.
    stats
        Any of ``"mean"``, ``"std"`` (population, ddof=0), ``"min"``, ``"max"``,
        ``"count"`` (valid pixels), ``"median"`` (exact: gathers each polygon's pixels),
        ``"sum"``.
    all_touched
        Rasterisation rule (default: pixel centres).
    nodata
        Value excluded from the statistics (default ``"auto"``: the raster's
        ``rio.nodata``; ``None``: only NaN is excluded).
    compute
        ``False``: return a dask ``Delayed`` that computes the GeoDataFrame.

    Returns
    -------
    geopandas.GeoDataFrame
        The polygons with their statistics: a GeoDataFrame or GeoSeries keeps its
        geometry (in its own CRS), columns, index and row order, with one column added per
        statistic; plain geometries get a ``geometry`` column in the raster's CRS and a
        ``0 … n-1`` index. Stat columns are named by the stat for a 2-D raster, else
        ``"<band>_<stat>"`` (e.g. ``red_mean``). Polygons covering no valid pixel get
        ``count`` 0 and NaN statistics.

    Raises
    ------
    ParameterError
        Unknown ``stats``, a raster without georeference, or ``gdf`` already having a
        column a statistic would be written to.

    Examples
    --------
    >>> import pytest; _ = pytest.importorskip("geopandas")  # the [geo] extra
    >>> from shapely.geometry import box
    >>> from patchflow.io.synthetic import make_scene
    >>> scene = make_scene((256, 256), chunks=128)
    >>> x0, y0 = float(scene.x[0]) - 5, float(scene.y[0]) + 5
    >>> gdf = zonal_stats(scene, [box(x0, y0 - 100, x0 + 100, y0)], stats=["count", "mean"])
    >>> list(gdf.columns), gdf.crs.to_epsg()
    (['geometry', 'red_count', 'red_mean', 'nir_count', 'nir_mean'], 32610)
    >>> gdf["red_count"].tolist()
    [100]
    """
    import pandas as pd

    stats = tuple(stats)
    unknown = [s for s in stats if s not in ZONAL_STATS]
    if unknown or not stats:
        raise ParameterError(f"unknown stats {unknown}; valid: {', '.join(ZONAL_STATS)}")
    require_geo()
    arr = _as_dataarray(obj)
    transform, crs = georef(arr)
    if transform is None:
        raise ParameterError("zonal_stats needs a georeferenced raster (y/x coordinates)")
    shape = (int(arr.shape[-2]), int(arr.shape[-1]))
    base = _polygon_frame(gdf, crs)
    _, geoms = _geometries(base, crs)
    bands = math.prod(arr.shape[:-2])
    band_names = _band_labels(arr)
    columns = [
        s if band_names is None else f"{band_names[b]}_{s}" for b in range(bands) for s in stats
    ]
    taken = [c for c in columns if c in base.columns]
    if taken:
        raise ParameterError(
            f"the polygons already have the column(s) {taken} that zonal_stats would write; "
            f"rename or drop them first (e.g. gdf.drop(columns={taken!r}))"
        )
    windows = _pixel_windows(geoms, transform, shape)
    nd = arr.rio.nodata if isinstance(nodata, str) and nodata == "auto" else nodata
    if isinstance(nd, np.generic):
        nd = nd.item()
    data = _dask_data(arr)
    ey = np.concatenate([[0], np.cumsum(data.chunks[-2])])
    ex = np.concatenate([[0], np.cumsum(data.chunks[-1])])
    token = tokenize(
        data.name,
        windows.tobytes(),
        [g.wkb if g is not None else None for g in geoms],
        stats,
        all_touched,
        nd,
        # the table joins the polygons' other columns: they are part of the result's key
        base.drop(columns=base.geometry.name),
        str(base.crs),
    )
    nonempty = (windows[:, 1] > windows[:, 0]) & (windows[:, 3] > windows[:, 2])
    blocks = []
    tr = tuple(transform)[:6]
    for i in range(len(ey) - 1):
        for j in range(len(ex) - 1):
            y0, y1, x0, x1 = int(ey[i]), int(ey[i + 1]), int(ex[j]), int(ex[j + 1])
            hit = np.flatnonzero(
                nonempty
                & (windows[:, 0] < y1)
                & (windows[:, 1] > y0)
                & (windows[:, 2] < x1)
                & (windows[:, 3] > x0)
            )
            if hit.size == 0:
                continue
            items = tuple(
                (
                    int(k),
                    geoms[k],
                    (
                        max(int(windows[k, 0]), y0),
                        min(int(windows[k, 1]), y1),
                        max(int(windows[k, 2]), x0),
                        min(int(windows[k, 3]), x1),
                    ),
                )
                for k in hit
            )
            spec = ZoneSpec((y0, x0), tr, bool(all_touched), nd, "median" in stats, items)
            blocks.append(ZoneBlock((i, j), spec))

    def frame(table: dict[str, Any]) -> Any:
        values = {
            c: table[s][:, b] for c, (b, s) in zip(columns, _band_stats(bands, stats), strict=True)
        }
        # positional join: the polygons' index may repeat labels
        joined = pd.concat(
            [base.reset_index(drop=True), pd.DataFrame(values, index=pd.RangeIndex(len(base)))],
            axis=1,
        )
        joined.index = base.index
        return joined

    table = zonal_graph(data, blocks, token, n=len(geoms), bands=bands, stats=stats, finish=frame)
    return table if not compute else table.compute()


def _band_stats(bands: int, stats: tuple[str, ...]) -> list[tuple[int, str]]:
    """``(band, stat)`` of each stat column, in column order (band-major)."""
    return [(b, s) for b in range(bands) for s in stats]


def polygon_chips(
    obj: xr.DataArray | xr.Dataset,
    gdf: Any,
    *,
    all_touched: bool = False,
    skip_empty: bool = True,
) -> Iterator[PolygonChip]:
    """One chip per polygon bounding box (in the raster CRS), with its interior mask.

    Yields :class:`PolygonChip` objects in ``gdf`` order; ``data`` stays lazy. Polygons
    outside the scene are skipped (``skip_empty``) or yielded with an empty window.

    Examples
    --------
    >>> import pytest; _ = pytest.importorskip("shapely")  # the [geo] extra
    >>> from shapely.geometry import Point
    >>> from patchflow.io.synthetic import make_scene
    >>> scene = make_scene((256, 256), chunks=128)
    >>> centre = Point(float(scene.x[100]), float(scene.y[100])).buffer(50)
    >>> chip = next(polygon_chips(scene, [centre]))
    >>> chip.data.dims, int(chip.mask.sum()) > 0
    (('band', 'y', 'x'), True)
    """
    require_geo()
    arr = _as_dataarray(obj)
    transform, crs = georef(arr)
    if transform is None:
        raise ParameterError("polygon_chips needs a georeferenced raster (y/x coordinates)")
    shape = (int(arr.shape[-2]), int(arr.shape[-1]))
    index, geoms = _geometries(gdf, crs)
    windows = _pixel_windows(geoms, transform, shape)
    ydim, xdim = arr.dims[-2:]
    for k, geom in enumerate(geoms):
        r0, r1, c0, c1 = (int(v) for v in windows[k])
        empty = r1 <= r0 or c1 <= c0
        if empty and skip_empty:
            continue
        mask = (
            np.zeros((r1 - r0, c1 - c0), bool)
            if empty
            else polygon_mask(geom, transform, (r0, r1, c0, c1), all_touched)
        )
        data = arr.isel({ydim: slice(r0, r1), xdim: slice(c0, c1)})
        yield PolygonChip(index[k], (r0, r1, c0, c1), data, mask)
