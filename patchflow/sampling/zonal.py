"""Zonal statistics (per polygon or per h3 cell) and polygon chips, computed block by block.

``zonal_stats`` merges the partial statistics of zones spanning several blocks exactly and
returns them joined to the polygons, or one row per h3 hexagon (a GeoDataFrame, or an
xvec-indexed Dataset with ``output="xvec"``); ``polygon_chips`` gives one chip per polygon
bounding box with the polygon's interior mask. The block kernels live in
:mod:`patchflow.engine.chip_kernels`, the graph in :func:`patchflow.engine.graph.zonal_graph`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import xarray as xr
from dask.base import tokenize

from patchflow._xr import georef, value_labels
from patchflow.engine.chip_kernels import (
    H3Spec,
    ZoneSpec,
    polygon_mask,
    require_geo,
    require_h3,
)
from patchflow.engine.graph import (
    ZONAL_PREFIX as ZONAL_PREFIX,
)
from patchflow.engine.graph import (
    ZoneBlock,
    zonal_graph,
)
from patchflow.errors import ParameterError, PatchflowWarning, optional_import
from patchflow.io.sources import check_band_nodata
from patchflow.options import DEFAULT_STATS, VECTOR_OUTPUTS, ZONAL_STATS, VectorOutput
from patchflow.plan.grid import world_to_pixels
from patchflow.plan.layout import PolygonChip
from patchflow.sampling.chips import _as_dataarray, _dask_data

# --------------------------------------------------------------------------- polygons


def _geometries(gdf: Any, crs: Any) -> tuple[Any, list[Any]]:
    """``(index, geometries in the raster CRS)`` of a GeoDataFrame/GeoSeries/sequence."""
    if hasattr(gdf, "geometry") and hasattr(gdf, "index"):
        return gdf.index, list(_in_raster_crs(gdf.geometry, crs))
    if hasattr(gdf, "index") and hasattr(gdf, "to_crs"):  # GeoSeries without .geometry
        return gdf.index, list(_in_raster_crs(gdf, crs))
    geoms = list(gdf)
    import pandas as pd

    return pd.RangeIndex(len(geoms)), geoms


def _in_raster_crs(geo: Any, crs: Any) -> Any:
    """``geo`` (a GeoSeries) reprojected to the raster's ``crs``; as given without a CRS.

    Polygons that declare a CRS on a raster without one are refused: their coordinates
    (degrees, another zone's metres) would be read as the raster's and fall on the
    wrong pixels, or on none, with no error.
    """
    own = getattr(geo, "crs", None)
    if own is None:
        return geo
    if crs is None:
        raise ParameterError(
            f"the polygons are in {own.to_string()} but the raster has no CRS, so they "
            "cannot be placed on it; declare the raster's CRS, e.g. "
            "da.rio.write_crs('EPSG:...') (da.rio.write_crs(gdf.crs) if it is the same), or "
            "pass the geometries without a CRS (list(gdf.geometry)) if they are already in "
            "the raster's coordinates"
        )
    return geo.to_crs(crs) if own != crs else geo


def _polygon_frame(gdf: Any, crs: Any) -> Any:
    """The GeoDataFrame the statistics are joined to: a copy of ``gdf``'s rows (geometry,
    columns, index, order and CRS as given), or, for plain geometries, one in ``crs``."""
    gpd = optional_import(
        "geopandas",
        message="zonal_stats returns a GeoDataFrame and needs geopandas: "
        "pip install 'patchflow[vector]' (or: pip install geopandas)",
    )
    import pandas as pd  # (a dependency of xarray)

    if isinstance(gdf, gpd.GeoDataFrame):
        return gdf.copy()
    if isinstance(gdf, gpd.GeoSeries):
        return gpd.GeoDataFrame(geometry=gdf.copy())
    if isinstance(gdf, pd.DataFrame) and "geometry" in gdf.columns:
        return gpd.GeoDataFrame(gdf.copy(), geometry="geometry", crs=crs)
    return gpd.GeoDataFrame(geometry=list(gdf), crs=crs)


def _say_if_all_outside(geoms: list[Any], windows: np.ndarray, crs: Any) -> None:
    """Warn when not one polygon reaches the raster: every row would be empty (count 0,
    NaN statistics) with no error, the mark of polygons in another CRS than assumed."""
    present = [k for k, g in enumerate(geoms) if g is not None and not g.is_empty]
    if not present:
        return
    w = windows[present]
    if bool(np.any((w[:, 1] > w[:, 0]) & (w[:, 3] > w[:, 2]))):
        return
    where = "" if crs is None else f" (CRS {crs.to_string()})"
    warnings.warn(
        f"none of the {len(present)} polygons overlaps the raster{where}: each gets no "
        "pixel (count 0, its other statistics NaN). Polygons without a CRS are taken as in "
        "the raster's CRS; if theirs is another (e.g. longitude/latitude), declare it — "
        "gdf = gdf.set_crs('EPSG:4326'), or geopandas.GeoSeries(geoms, crs='EPSG:4326') — "
        "and they are reprojected",
        PatchflowWarning,
        stacklevel=4,
    )


def _pixel_windows(geoms: list[Any], transform: Any, shape: tuple[int, int]) -> np.ndarray:
    """``(n, 4)`` ``row0, row1, col0, col1`` pixel windows of the geometries' bounds, clipped
    to the scene (one pixel of margin; empty where a geometry is missing or outside)."""
    out = np.zeros((len(geoms), 4), np.int64)
    for k, geom in enumerate(geoms):
        if geom is None or geom.is_empty:
            continue
        minx, miny, maxx, maxy = geom.bounds
        xs = np.array([minx, maxx, minx, maxx])
        ys = np.array([miny, miny, maxy, maxy])
        rows, cols = world_to_pixels(xs, ys, transform)
        r0 = int(np.clip(math.floor(rows.min()) - 1, 0, shape[0]))
        r1 = int(np.clip(math.ceil(rows.max()) + 1, 0, shape[0]))
        c0 = int(np.clip(math.floor(cols.min()) - 1, 0, shape[1]))
        c1 = int(np.clip(math.ceil(cols.max()) + 1, 0, shape[1]))
        out[k] = (r0, max(r1, r0), c0, max(c1, c0))
    return out


#: the finest h3 resolution (cells of about 1 m²)
H3_MAX_RESOLUTION = 15


def zonal_stats(
    obj: xr.DataArray | xr.Dataset,
    gdf: Any = None,
    stats: Sequence[str] = DEFAULT_STATS,
    *,
    h3_resolution: int | None = None,
    all_touched: bool = False,
    nodata: Any = "auto",
    output: VectorOutput = "geopandas",
    compute: bool = True,
) -> Any:
    """Per-polygon or per-h3-cell statistics of a raster, computed lazily block by block.

    **Polygons** (``gdf``): each polygon (reprojected to the raster CRS) is rasterised
    with ``rasterio.features.rasterize`` (pixel centres inside, or every pixel touched
    with ``all_touched``) on its bounding window of the scene, the same for every block,
    so a polygon's pixels (and so its statistics) do not depend on the chunking (a polygon
    whose window exceeds 8192² pixels is drawn per block, with a margin, so memory stays
    that of a block; only an outline exactly through pixel corners or centres can then
    depend on it: see :func:`patchflow.engine.chip_kernels.polygon_mask`). One block at a
    time: a block task
    reads only its own chunk and returns, per polygon touching it, count/mean/M2/min/max
    (and the pixel values when the median is wanted); partial results of polygons spanning
    several blocks are merged exactly (Chan's parallel variance update). Blocks no polygon
    touches are never read.

    **h3 cells** (``h3_resolution``): every pixel is binned by the h3 cell containing its
    pixel centre (centres transformed from the raster CRS to EPSG:4326 with pyproj; pixels
    whose centre has no geographic coordinates are skipped). One task per raster chunk
    returns per (cell, band) count/sum/mean/M2/min/max, merged exactly across chunks like
    the polygons'. The h3 **median is an approximation**: the count-weighted median of
    the cell's per-block medians, exact when the cell lies inside one block (use chunks
    aligned with the cells, or larger ones, when exactness matters).

    NaN and nodata pixels are excluded, per band.

    Parameters
    ----------
    obj
        Georeferenced DataArray (or Dataset) with spatial dims and a transform.
    gdf
        GeoDataFrame or GeoSeries (reprojected to the raster CRS when both have one;
        refused when it has a CRS and the raster has none; taken in the raster's
        coordinates when it has none), or a sequence of shapely geometries in the raster
        CRS. Give either this or ``h3_resolution``.
    stats
        Any of ``"mean"``, ``"std"`` (population, ddof=0), ``"min"``, ``"max"``,
        ``"count"`` (valid pixels), ``"median"`` (polygons: exact, gathers each polygon's
        pixels; h3: see above), ``"sum"``.
    h3_resolution
        h3 resolution ``0 … 15``: statistics per h3 cell instead of per polygon (the
        raster needs a CRS).
    all_touched
        Polygon rasterisation rule (default: pixel centres); not for h3 cells.
    nodata
        Value excluded from the statistics (default ``"auto"``: the raster's
        ``rio.nodata``; ``None``: only NaN is excluded).
    output
        ``"geopandas"``: a GeoDataFrame; ``"xvec"``: an ``xarray.Dataset`` on a
        ``geometry`` dimension indexed by xvec, one variable per statistic, dims
        ``("geometry",)`` for a 2-D raster or ``("geometry", *band dims)`` (with the
        raster's band coordinates) otherwise. Polygons' other columns become coordinates
        on ``geometry`` (their index is dropped; rows stay in ``gdf`` order); h3 cells get
        an ``h3_cell`` coordinate.
    compute
        ``False``: return a dask ``Delayed`` that computes the result.

    Returns
    -------
    geopandas.GeoDataFrame or xarray.Dataset
        Polygons: a GeoDataFrame or GeoSeries keeps its geometry (in its own CRS), columns,
        index and row order, with one column added per statistic; plain geometries get a
        ``geometry`` column in the raster's CRS and a ``0 … n-1`` index. h3: one row per
        cell holding at least one pixel centre, sorted by cell id, with columns ``h3_cell``
        (the h3 string id), the statistics and ``geometry`` (the hexagon, EPSG:4326; one
        crossing the antimeridian split there into a MultiPolygon).
        Stat columns are named by the stat for a 2-D raster, else ``"<band>_<stat>"``
        (e.g. ``red_mean``). Zones with no valid pixel get ``count`` 0, ``sum`` 0 and NaN
        for the other statistics.

    Raises
    ------
    ParameterError
        Unknown ``stats`` or ``output``, both or neither of ``gdf`` and ``h3_resolution``,
        an ``h3_resolution`` outside ``0 … 15``, a raster without georeference (or, for
        h3 or polygons that declare a CRS, without CRS), or ``gdf`` already having a
        column a statistic would be written to.
    MissingExtraError
        geopandas/shapely, h3 or xvec missing: ``pip install 'patchflow[vector]'``.

    Examples
    --------
    >>> import pytest; _ = pytest.importorskip("geopandas")  # the [vector] extra
    >>> from shapely.geometry import box
    >>> from patchflow.io.synthetic import make_scene
    >>> scene = make_scene((256, 256), chunks=128)
    >>> x0, y0 = float(scene.x[0]) - 5, float(scene.y[0]) + 5
    >>> gdf = zonal_stats(scene, [box(x0, y0 - 100, x0 + 100, y0)], stats=["count", "mean"])
    >>> list(gdf.columns), gdf.crs.to_epsg()
    (['geometry', 'red_count', 'red_mean', 'nir_count', 'nir_mean'], 32610)
    >>> gdf["red_count"].tolist()
    [100]

    Per h3 cell (resolution 9: about 0.1 km²), as an xvec-indexed Dataset:

    >>> _ = pytest.importorskip("h3"); _ = pytest.importorskip("xvec")
    >>> cells = zonal_stats(scene, h3_resolution=9, stats=["count", "mean"])
    >>> list(cells.columns), int(cells["red_count"].sum()) == 256 * 256
    (['h3_cell', 'red_count', 'red_mean', 'nir_count', 'nir_mean', 'geometry'], True)
    >>> ds = zonal_stats(scene, h3_resolution=9, stats=["mean"], output="xvec")
    >>> ds["mean"].dims, ds.xindexes["geometry"].crs.to_epsg()
    (('geometry', 'band'), 4326)
    """
    stats = tuple(stats)
    unknown = [s for s in stats if s not in ZONAL_STATS]
    if unknown or not stats:
        raise ParameterError(f"unknown stats {unknown}; valid: {', '.join(ZONAL_STATS)}")
    if (gdf is None) == (h3_resolution is None):
        raise ParameterError(
            "zonal_stats takes exactly one of gdf (polygons) and h3_resolution (h3 cells); "
            + ("both were given" if gdf is not None else "neither was given")
        )
    if output not in VECTOR_OUTPUTS:
        raise ParameterError(
            f"unknown output {output!r}; valid: {', '.join(repr(o) for o in VECTOR_OUTPUTS)}"
        )
    if h3_resolution is not None:
        if (
            isinstance(h3_resolution, bool)
            or not isinstance(h3_resolution, int | np.integer)
            or not 0 <= h3_resolution <= H3_MAX_RESOLUTION
        ):
            raise ParameterError(
                f"h3_resolution must be an integer 0 … {H3_MAX_RESOLUTION}, got {h3_resolution!r}"
            )
        if all_touched:
            raise ParameterError(
                "all_touched applies to polygons; h3 cells bin pixel centres: drop all_touched"
            )
    require_geo()
    if output == "xvec":
        require_xvec()
    if isinstance(nodata, str) and nodata == "auto":  # any other value is the caller's
        check_band_nodata(obj, keyword="nodata")
    arr = _as_dataarray(obj)
    transform, crs = georef(arr)
    if transform is None:
        raise ParameterError("zonal_stats needs a georeferenced raster (y/x coordinates)")
    nd = arr.rio.nodata if isinstance(nodata, str) and nodata == "auto" else nodata
    if isinstance(nd, np.generic):
        nd = nd.item()
    if h3_resolution is not None:
        table = _h3_zonal(arr, transform, crs, int(h3_resolution), stats, nd, output)
    else:
        table = _polygon_zonal(arr, gdf, transform, crs, stats, all_touched, nd, output)
    return table if not compute else table.compute()


def _stat_columns(arr: xr.DataArray, stats: tuple[str, ...]) -> list[tuple[str, int, str]]:
    """``(column name, band, stat)`` of each stat column, in column order (band-major)."""
    bands = math.prod(arr.shape[:-2])
    names = value_labels(arr)
    return [(s if names is None else f"{names[b]}_{s}", b, s) for b in range(bands) for s in stats]


def _polygon_zonal(
    arr: xr.DataArray,
    gdf: Any,
    transform: Any,
    crs: Any,
    stats: tuple[str, ...],
    all_touched: bool,
    nd: Any,
    output: str,
) -> Any:
    """The lazy per-polygon table (a ``Delayed``), see :func:`zonal_stats`."""
    import pandas as pd

    shape = (int(arr.shape[-2]), int(arr.shape[-1]))
    base = _polygon_frame(gdf, crs)
    _, geoms = _geometries(base, crs)
    bands = math.prod(arr.shape[:-2])
    columns = _stat_columns(arr, stats)
    taken = [c for c, _, _ in columns if c in base.columns]
    if taken:
        raise ParameterError(
            f"the polygons already have the column(s) {taken} that zonal_stats would write; "
            f"rename or drop them first (e.g. gdf.drop(columns={taken!r}))"
        )
    extra = [c for c in base.columns if c != base.geometry.name]
    if output == "xvec":
        clash = [c for c in extra if c in (*stats, *arr.dims[:-2], "geometry")]
        if clash:
            raise ParameterError(
                f"the polygons' column(s) {clash} would clash with the Dataset's variables "
                f"or dims; rename or drop them first (e.g. gdf.drop(columns={clash!r}))"
            )
    windows = _pixel_windows(geoms, transform, shape)
    _say_if_all_outside(geoms, windows, crs)
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
        output,
    )
    layout = _band_layout(arr)
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
            spec = ZoneSpec((y0, x0), tr, bool(all_touched), nd, "median" in stats, items, shape)
            blocks.append(ZoneBlock((i, j), spec))

    def frame(table: dict[str, Any]) -> Any:
        if output == "xvec":
            coords = {c: base[c].to_numpy() for c in extra}
            return _xvec_dataset(table, layout, stats, list(base.geometry), base.crs, coords)
        values = {c: table[s][:, b] for c, b, s in columns}
        # positional join: the polygons' index may repeat labels
        joined = pd.concat(
            [base.reset_index(drop=True), pd.DataFrame(values, index=pd.RangeIndex(len(base)))],
            axis=1,
        )
        joined.index = base.index
        return joined

    return zonal_graph(data, blocks, token, n=len(geoms), bands=bands, stats=stats, finish=frame)


def _h3_zonal(
    arr: xr.DataArray,
    transform: Any,
    crs: Any,
    resolution: int,
    stats: tuple[str, ...],
    nd: Any,
    output: str,
) -> Any:
    """The lazy per-h3-cell table (a ``Delayed``), see :func:`zonal_stats`."""
    require_h3()
    if crs is None:
        raise ParameterError(
            "zonal_stats by h3 cell needs the raster's CRS (h3 cells are in geographic "
            "coordinates): set it first, e.g. obj.rio.write_crs('EPSG:32633')"
        )
    wkt = crs.to_wkt()
    tr = tuple(float(v) for v in tuple(transform)[:6])
    data = _dask_data(arr)
    ey = np.concatenate([[0], np.cumsum(data.chunks[-2])])
    ex = np.concatenate([[0], np.cumsum(data.chunks[-1])])
    keep_median = "median" in stats
    blocks = [
        ZoneBlock((i, j), H3Spec((int(ey[i]), int(ex[j])), tr, wkt, resolution, nd, keep_median))
        for i in range(len(ey) - 1)
        for j in range(len(ex) - 1)
    ]
    token = tokenize(data.name, tr, wkt, resolution, stats, nd, output)
    columns = _stat_columns(arr, stats)
    bands = math.prod(arr.shape[:-2])
    layout = _band_layout(arr)

    def frame(table: dict[str, Any]) -> Any:
        ids, hexagons = _h3_cells(table["cells"])
        if output == "xvec":
            coords = {"h3_cell": np.asarray(ids, dtype=object)}
            return _xvec_dataset(table, layout, stats, hexagons, "EPSG:4326", coords)
        import geopandas as gpd

        values = {c: table[s][:, b] for c, b, s in columns}
        return gpd.GeoDataFrame({"h3_cell": ids, **values}, geometry=hexagons, crs="EPSG:4326")

    return zonal_graph(data, blocks, token, n=None, bands=bands, stats=stats, finish=frame)


def _h3_cells(cells: np.ndarray) -> tuple[list[str], list[Any]]:
    """h3 string ids and hexagons (shapely, lon/lat) of int64 cell ids."""
    h3 = require_h3()
    ids = [h3.int_to_str(int(c)) for c in cells]
    # cell_to_boundary gives (lat, lng) pairs; shapely wants (x=lng, y=lat)
    hexagons = [
        _lonlat_polygon([(lng, lat) for lat, lng in h3.api.basic_int.cell_to_boundary(int(c))])
        for c in cells
    ]
    return ids, hexagons


def _lonlat_polygon(ring: list[tuple[float, float]]) -> Any:
    """A lon/lat polygon; one crossing the antimeridian (its longitudes jump by more than
    180°) is split there into a MultiPolygon of its east and west parts, as GeoJSON
    (RFC 7946) asks, instead of a band wrapping the other way round the globe."""
    import shapely
    from shapely.geometry import Polygon, box

    lons = [lon for lon, _ in ring]
    if max(lons) - min(lons) <= 180:
        return Polygon(ring)
    # unwrap to 0..360, then cut at 180 and move the part past it back to -180..
    unwrapped = Polygon([(lon + 360 if lon < 0 else lon, lat) for lon, lat in ring])
    west = unwrapped.intersection(box(0, -90, 180, 90))
    east = shapely.affinity.translate(unwrapped.intersection(box(180, -90, 360, 90)), -360)
    return shapely.MultiPolygon([*_polygons(west), *_polygons(east)])


def _polygons(geom: Any) -> list[Any]:
    return [
        g for g in getattr(geom, "geoms", [geom]) if g.geom_type == "Polygon" and not g.is_empty
    ]


def require_xvec() -> Any:
    """The xvec module (which registers the ``.xvec`` accessor), or a MissingExtraError."""
    return optional_import(
        "xvec",
        message="output='xvec' needs xvec: pip install 'patchflow[vector]' (or: pip install "
        "xvec); output='geopandas' needs only geopandas",
    )


def _band_layout(arr: xr.DataArray) -> tuple[tuple[str, ...], tuple[int, ...], dict[str, Any]]:
    """``(band dims, their sizes, their coordinates)``; no dims for a 2-D raster (plain
    data: the finishing task must not carry the raster's graph)."""
    if value_labels(arr) is None:
        return (), (), {}
    lead = tuple(str(d) for d in arr.dims[:-2])
    coords = {
        d: arr.coords[d].to_numpy() for d in lead if d in arr.coords and arr.coords[d].dims == (d,)
    }
    return lead, tuple(int(v) for v in arr.shape[:-2]), coords


def geometry_coord(geoms: Any) -> np.ndarray:
    """The geometries as an object array for an xvec ``geometry`` index: a missing one
    (``None``) becomes an empty geometry, which xvec indexes and GIS tools read as empty."""
    import shapely

    out = np.empty(len(geoms), dtype=object)
    out[:] = [shapely.GeometryCollection() if g is None else g for g in geoms]
    return out


def _xvec_dataset(
    table: dict[str, Any],
    layout: tuple[tuple[str, ...], tuple[int, ...], dict[str, Any]],
    stats: tuple[str, ...],
    geoms: list[Any],
    crs: Any,
    coords: dict[str, np.ndarray],
) -> xr.Dataset:
    """The statistics as a Dataset on an xvec-indexed ``geometry`` dim: one variable per
    stat, ``("geometry",)`` for a 2-D raster, ``("geometry", *band dims)`` otherwise."""
    require_xvec()
    lead, sizes, band_coords = layout
    n = len(geoms)
    geometry = geometry_coord(geoms)
    variables = {s: (("geometry", *lead), np.asarray(table[s]).reshape(n, *sizes)) for s in stats}
    all_coords: dict[str, Any] = {"geometry": geometry, **band_coords}
    all_coords.update({name: ("geometry", values) for name, values in coords.items()})
    ds = xr.Dataset(variables, coords=all_coords)
    return ds.xvec.set_geom_indexes("geometry", crs=crs)


def polygon_chips(
    obj: xr.DataArray | xr.Dataset,
    gdf: Any,
    *,
    all_touched: bool = False,
    skip_empty: bool = True,
) -> Iterator[PolygonChip]:
    """One chip per polygon bounding box (in the raster CRS), with its interior mask.

    Yields :class:`PolygonChip` objects in ``gdf`` order; ``data`` stays lazy. Polygons
    outside the scene are skipped (``skip_empty``) or yielded with an empty window. The mask
    holds the pixels :func:`zonal_stats` counts, whatever the raster's chunking.

    Examples
    --------
    >>> import pytest; _ = pytest.importorskip("shapely")  # the [vector] extra
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
    _say_if_all_outside(geoms, windows, crs)
    ydim, xdim = arr.dims[-2:]
    for k, geom in enumerate(geoms):
        r0, r1, c0, c1 = (int(v) for v in windows[k])
        empty = r1 <= r0 or c1 <= c0
        if empty and skip_empty:
            continue
        mask = (
            np.zeros((r1 - r0, c1 - c0), bool)
            if empty
            else polygon_mask(geom, transform, (r0, r1, c0, c1), all_touched, shape)
        )
        data = arr.isel({ydim: slice(r0, r1), xdim: slice(c0, c1)})
        yield PolygonChip(index[k], (r0, r1, c0, c1), data, mask)
