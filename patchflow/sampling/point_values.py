"""Points on a raster's grid: ``sample_points`` (raster values at points) and
``points_in_chips`` (the points each chip of a sampler holds, for point-cloud models).

What it owns: turning a GeoDataFrame of points into pixel positions of a georeferenced
raster (reprojecting the points to the raster's CRS), reading only the chunks that hold
points (one task per batch of points sharing a chunk, computed together once), the
nearest / bilinear rules, nodata and out-of-raster handling of the values returned, and
the assignment of points to chip windows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import dask
import dask.array as dsa
import numpy as np
import xarray as xr

from patchflow._xr import as_dataarray, georef, spatial_last, transform_of, value_labels
from patchflow.engine.chip_kernels import gather_points
from patchflow.engine.graph import point_read_tasks
from patchflow.errors import ParameterError, optional_import
from patchflow.io.sources import check_band_nodata
from patchflow.options import VECTOR_OUTPUTS, SampleMethod, VectorOutput
from patchflow.plan.grid import from_north_up, north_up, pair, world_to_pixels
from patchflow.plan.samplers import Sampler
from patchflow.sampling.chips import draw_anchors
from patchflow.sampling.zonal import geometry_coord, require_xvec

__all__ = ["SAMPLE_METHODS", "points_in_chips", "sample_points"]

#: the interpolation rules ``sample_points`` knows
SAMPLE_METHODS = ("nearest", "bilinear")


def _require_geopandas() -> Any:
    return optional_import(
        "geopandas",
        message="sample_points takes and returns a GeoDataFrame and needs geopandas: "
        "pip install 'patchflow[vector]' (or: pip install geopandas)",
    )


def _as_xvec(arr: xr.DataArray, points: Any, values: np.ndarray, names: list[str]) -> Any:
    """``values`` ``(bands, n)`` as a DataArray on an xvec-indexed ``geometry`` dim."""
    geo = points.geometry
    coords: dict[Any, Any] = {"geometry": geometry_coord(list(geo))}
    for col in points.columns:
        if col != geo.name:  # (sample_points refused names that clash with the dims)
            coords[col] = ("geometry", points[col].to_numpy())
    if arr.ndim == 2:
        dims: tuple[str, ...] = ("geometry",)
        data = values[0]
    else:
        dims = ("geometry", "band")
        data = values.T
        coords["band"] = names
    name = arr.name if arr.name is not None else (names[0] if arr.ndim == 2 else None)
    out = xr.DataArray(data, dims=dims, coords=coords, name=name)
    return out.xvec.set_geom_indexes("geometry", crs=geo.crs)


def _column_names(arr: xr.DataArray, n: int, given: Sequence[str] | None) -> list[str]:
    """One name per band: ``given``, else :func:`patchflow._xr.value_labels` (band
    labels, GeoTIFF descriptions by band number, ``band_<number>``: the names
    ``zonal_stats`` prefixes its columns with)."""
    if given is not None:
        names = [given] if isinstance(given, str) else list(given)
        if len(names) != n or not all(isinstance(c, str) for c in names):
            raise ParameterError(f"column_names must be {n} string(s), one per band, got {given!r}")
        if len(set(names)) != n:
            raise ParameterError(f"column_names must be unique, got {names!r}")
        return names
    if arr.ndim == 2:
        return [arr.name] if isinstance(arr.name, str) and arr.name else ["band_1"]
    return value_labels(arr) or ["band_1"]


def _north_up_frame(arr: xr.DataArray, transform: Any) -> tuple[Any, bool, bool]:
    """:func:`patchflow.plan.grid.north_up` for ``arr``: the transform of its north-up
    view and whether its rows / columns run the other way.

    The flipped view's transform comes from :func:`~patchflow._xr.transform_of`, as
    ``arr``'s own does, so it is the transform the north-up array gets bit for bit: a
    point lands on the same pixel in either orientation even where float rounding puts it
    a hair off a pixel edge.
    """
    h, w = int(arr.shape[-2]), int(arr.shape[-1])
    frame, flip_rows, flip_cols = north_up(transform, (h, w))
    if flip_rows or flip_cols:
        y, x = arr.dims[-2:]
        flips = {d: slice(None, None, -1) for d, f in ((y, flip_rows), (x, flip_cols)) if f}
        view = transform_of(arr.isel(flips))
        # (a single row or column has no spacing to recompute: keep the arithmetic frame)
        if view is not None and view.b == 0 and view.d == 0 and view.a > 0 and view.e < 0:
            frame = view
    return frame, flip_rows, flip_cols


def _pixel_of(rowf: np.ndarray, colf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pixel holding each point, from its fractional row/col on the north-up grid:
    ``floor``, GDAL's rule (each pixel owns its top and left edges); ``(-1, -1)`` for a
    point without finite coordinates."""
    finite = np.isfinite(rowf) & np.isfinite(colf)
    with np.errstate(invalid="ignore"):
        rows = np.floor(np.where(finite, rowf, -1.0)).astype(np.int64)
        cols = np.floor(np.where(finite, colf, -1.0)).astype(np.int64)
    return rows, cols


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
    method: SampleMethod = "nearest",
    column_names: Sequence[str] | None = None,
    batch: int = 4096,
    output: VectorOutput = "geopandas",
) -> Any:
    """Raster values at the points of a GeoDataFrame, one column per band.

    The points are reprojected to the raster's CRS. ``"nearest"`` takes the pixel that
    contains the point (as ``rasterio``'s ``DatasetReader.sample`` does); ``"bilinear"``
    interpolates the four pixel centres around it. A point exactly on a pixel edge gets
    GDAL's pixel whichever way the array's y and x run (north-up or flipped): each pixel
    owns its north and west edges, so the raster's north and west outline is inside and
    its south and east outline outside. For a dask-backed raster only the
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
    output
        ``"geopandas"`` (default) or ``"xvec"``: the values as an xarray object indexed
        by :mod:`xvec` (below), for users who stay in xarray.

    Returns
    -------
    geopandas.GeoDataFrame or xarray.DataArray
        ``"geopandas"``: a copy of ``points`` (same rows, order, index, geometry and CRS)
        with the value columns appended. Values are NaN for points outside the raster and
        for nodata or NaN pixels. Columns are float: an integer raster's values are cast
        to float64 (exact up to 2**53) so NaN fits; nearest samples of a float raster
        keep its dtype, bilinear ones are float64.

        Bilinear edge rule: a point whose interpolation needs a pixel centre outside the
        raster (within half a pixel of the edge) or a nodata/NaN pixel gets NaN, never a
        value renormalised from fewer pixels. Neighbours with zero weight (a point exactly
        on a pixel-centre row or column) are not needed.

        ``"xvec"``: a DataArray ``(geometry, band)`` (``(geometry,)`` for a 2-D raster) of
        the same values, its ``geometry`` dimension indexed by xvec's ``GeometryIndex`` in
        the points' CRS (the input geometries, in row order; a missing one as an empty
        geometry), ``band`` labelled with the column names, and the points' other
        columns as coordinates along ``geometry`` (the shape of ``xvec.extract_points``'
        result).

    Raises
    ------
    ParameterError
        An unknown ``method``, a bad ``batch`` or ``column_names``, a raster without
        CRS or transform, points without a CRS or not Points, a value column that
        ``points`` already has, or (``output="xvec"``) a column named like one of the
        result's dims (``band``, or ``geometry`` beside the active geometry).
    MissingExtraError
        geopandas (or, for ``output="xvec"``, xvec) is not installed
        (``pip install 'patchflow[vector]'``).

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
    >>> _ = pytest.importorskip("xvec")
    >>> sample_points(scene, pts, output="xvec").dims
    ('geometry', 'band')
    """
    gpd = _require_geopandas()
    if method not in SAMPLE_METHODS:
        raise ParameterError(f"unknown method {method!r}; valid: {', '.join(SAMPLE_METHODS)}")
    if output not in VECTOR_OUTPUTS:
        raise ParameterError(f"output must be 'geopandas' or 'xvec', got {output!r}")
    if output == "xvec":
        require_xvec()
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ParameterError(f"batch must be a positive integer, got {batch!r}")
    check_band_nodata(da)
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
    if output == "xvec":
        dims = ("geometry", "band") if arr.ndim > 2 else ("geometry",)
        clash = [c for c in points.columns if c in dims and c != points.geometry.name]
        if clash:
            raise ParameterError(
                f"the points' column(s) {clash} would clash with the DataArray's dims "
                f"{dims}; rename or drop them first (e.g. points.drop(columns={clash!r}))"
            )
    xs, ys = _coordinates(points, crs)
    n = len(xs)

    # pixels are found on the north-up grid, so a point on a pixel edge gets GDAL's pixel
    # (each owns its top and left edges) whichever way the array's y and x run
    frame, flip_rows, flip_cols = _north_up_frame(arr, transform)
    rowf, colf = world_to_pixels(xs, ys, frame)
    finite = np.isfinite(colf) & np.isfinite(rowf)
    if method == "nearest":
        r, c = _pixel_of(rowf, colf)
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
    rows, cols = from_north_up(rows, h, flip_rows), from_north_up(cols, w, flip_cols)

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
    if output == "xvec":
        return _as_xvec(arr, points, values.astype(arr.dtype) if keep else values, names)
    out = points.copy()
    for k, name in enumerate(names):
        col = values[k].astype(arr.dtype) if keep else values[k]
        out[name] = col  # positional: the points' index may repeat labels
    return out


def _pixel_positions(
    points: Any, arr: xr.DataArray, func: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fractional ``row, col`` of each point on ``arr``'s grid (NaN for missing points)
    and the pixel ``row, col`` holding it (:func:`_pixel_of`, ``sample_points``' nearest
    rule: a point on a pixel edge in the pixel owning it on the north-up grid; missing
    points get a pixel too, to be masked by the caller)."""
    transform, crs = georef(arr)
    if transform is None or crs is None:
        raise ParameterError(
            f"{func} needs a georeferenced raster with a CRS; write them with "
            "da.rio.write_transform(...) / da.rio.write_crs('EPSG:...')"
        )
    xs, ys = _coordinates(points, crs)
    h, w = int(arr.shape[-2]), int(arr.shape[-1])
    frame, flip_rows, flip_cols = _north_up_frame(arr, transform)
    rowf, colf = world_to_pixels(xs, ys, frame)
    prow, pcol = _pixel_of(rowf, colf)
    # fractional positions in the array's own frame (flipped: measured from its first row)
    rowf = h - rowf if flip_rows else rowf
    colf = w - colf if flip_cols else colf
    return rowf, colf, from_north_up(prow, h, flip_rows), from_north_up(pcol, w, flip_cols)


def points_in_chips(
    obj: xr.DataArray | xr.Dataset,
    points: Any,
    sampler: Sampler | np.ndarray | Sequence[Sequence[int]],
    *,
    size: int | tuple[int, int] = 256,
    min_points: int = 1,
) -> Any:
    """The points inside each chip a sampler places on a raster: chips of a point layer.

    Point-cloud and graph models take the points of one chip at a time; this cuts a point
    layer with the same anchors (and the same sampler objects) that :func:`sample` cuts a
    raster with, so raster chips and point chips line up. A point belongs to a chip when
    the pixel holding it lies in the chip window (rows ``row … row + h - 1``, columns
    ``col … col + w - 1``): the rule of ``sample_points(method="nearest")``, GDAL's for
    points on pixel edges whatever the array's orientation. Chips
    overlap, so a point can belong to several chips; it then has one row per chip.

    Parameters
    ----------
    obj
        Georeferenced raster (DataArray or Dataset, with a CRS) that defines the grid the
        anchors live on; its values are never read.
    points
        GeoDataFrame of Point geometries with a CRS (reprojected to the raster's CRS).
    sampler
        A :class:`patchflow.plan.samplers.Sampler` (drawn on the raster's grid, without a
        validity mask) or an ``(n, 2)`` array of pixel anchors.
    size
        Chip size, int or ``(h, w)``.
    min_points
        Chips holding fewer points get no rows (every chip keeps its number: the anchors
        are all in ``attrs["anchors"]``).

    Returns
    -------
    geopandas.GeoDataFrame
        One row per (chip, point in it), sorted by chip then by the point's position in
        ``points``: the point's columns and geometry (in the points' CRS) plus ``chip``
        (the anchor's number), ``point`` (the point's position in ``points``), and
        ``chip_row`` / ``chip_col``: its fractional pixel position inside the chip
        (``0 … h`` / ``0 … w``, pixel centres at ``.5``). ``attrs`` hold ``anchors``
        (``(n, 2)`` pixel anchors) and ``chip_size``. Feed one chip to a model with
        ``out[out.chip == k]`` (or ``groupby("chip")``), and its neighbour graph with
        ``patchflow.points.knn_graph``.

    Examples
    --------
    >>> import pytest; gpd = pytest.importorskip("geopandas")  # the [vector] extra
    >>> from patchflow.io.synthetic import make_scene
    >>> scene = make_scene((256, 256), chunks=128)
    >>> x, y = float(scene.x[10]), float(scene.y[100])  # pixel (row 100, col 10)
    >>> pts = gpd.GeoDataFrame(geometry=gpd.points_from_xy([x], [y]), crs=scene.rio.crs)
    >>> out = points_in_chips(scene, pts, [[0, 0], [64, 0], [128, 0]], size=128)
    >>> out["chip"].tolist(), out["chip_row"].tolist(), out["chip_col"].tolist()
    ([0, 1], [100.5, 36.5], [10.5, 10.5])
    """
    gpd = _require_geopandas()
    if isinstance(min_points, bool) or not isinstance(min_points, int) or min_points < 0:
        raise ParameterError(f"min_points must be a whole number >= 0, got {min_points!r}")
    arr = spatial_last(as_dataarray(obj))
    if not isinstance(points, gpd.GeoDataFrame):
        _coordinates(points, None)  # raises the named error
    rowf, colf, prow, pcol = _pixel_positions(points, arr, "points_in_chips")
    transform, crs = georef(arr)
    shape = (int(arr.shape[-2]), int(arr.shape[-1]))
    h, w = pair(size, "size")
    anchors = np.asarray(
        draw_anchors(sampler, shape, (h, w), transform=transform, crs=crs).anchors, np.int64
    ).reshape(-1, 2)
    placed = np.flatnonzero(np.isfinite(rowf) & np.isfinite(colf))
    # points sorted by pixel row: each chip's rows are one searchsorted range
    by_row = placed[np.argsort(prow[placed], kind="stable")]
    sorted_rows = prow[by_row]
    chips, members = [], []
    for k, (r, c) in enumerate(anchors):
        lo, hi = np.searchsorted(sorted_rows, [r, r + h], side="left")
        cand = by_row[lo:hi]
        inside = np.sort(cand[(pcol[cand] >= c) & (pcol[cand] < c + w)])
        if inside.size and inside.size >= min_points:
            chips.append(np.full(inside.size, k, np.int64))
            members.append(inside)
    chip = np.concatenate(chips) if chips else np.empty(0, np.int64)
    point = np.concatenate(members) if members else np.empty(0, np.int64)
    out = points.iloc[point].reset_index(drop=True)
    taken = [c for c in ("chip", "point", "chip_row", "chip_col") if c in out.columns]
    if taken:
        raise ParameterError(
            f"the points already have the column(s) {taken} that points_in_chips writes; "
            f"rename or drop them first (points.drop(columns={taken!r}))"
        )
    out["chip"] = chip
    out["point"] = point
    out["chip_row"] = rowf[point] - anchors[chip, 0]
    out["chip_col"] = colf[point] - anchors[chip, 1]
    out.attrs["anchors"] = anchors
    out.attrs["chip_size"] = (h, w)
    return out
