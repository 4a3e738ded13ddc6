"""Neighbour graphs of point sets: ``patchflow.points.knn_graph(...)``, ``radius_graph(...)``.

This module owns turning points (a GeoDataFrame of Point geometries in a projected CRS,
or an ``(n, 2)`` array of projected x/y) into a ``(2, E)`` int64 edge index for graph
neural networks, in PyTorch Geometric's default ``flow="source_to_target"`` convention:

* ``edge_index[0]`` is the **source**: the neighbour;
* ``edge_index[1]`` is the **target**: the point whose neighbours were searched, so a
  message passes from each neighbour into the point (``torch_cluster.knn_graph`` layout;
  ``flow="target_to_source"`` swaps the rows).

Node numbers are positions ``0..n-1`` in the input (never a GeoDataFrame's index). Edges
are sorted by target, then by distance, then by neighbour number, so the same points
always give the same array, and ties at the k-th distance go to the lower number.
Distances are Euclidean in the coordinates' own units (the CRS's, e.g. metres): a
GeoDataFrame in a geographic CRS (degrees) is refused, as is one without a CRS (pass its
coordinates as an array if you know they are projected). Built with
:class:`scipy.spatial.cKDTree`; geopandas is needed only for GeoDataFrame input.

Examples
--------
>>> import numpy as np
>>> from patchflow.points import knn_graph
>>> knn_graph(np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]]), k=1)
array([[1, 0, 1],
       [0, 1, 2]])
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Literal

import numpy as np
from scipy.spatial import cKDTree

from patchflow.errors import InputTypeError, ParameterError, optional_import

__all__ = ["Flow", "knn_graph", "radius_graph"]

#: which row of the edge index holds the neighbour (PyTorch Geometric's ``flow``)
Flow = Literal["source_to_target", "target_to_source"]

_FLOWS = ("source_to_target", "target_to_source")
# a kd-tree and numpy may round one distance differently in the last bits: search a hair
# wider and decide with numpy's distances, so the tree never drops a boundary point
_SLACK = 1e-9


def _geopandas(func: str) -> Any:
    return optional_import(
        "geopandas",
        message=f"{func}() was given geometries and needs geopandas to read them: "
        'pip install "patchflow[vector]"; or pass an (n, 2) array of projected x/y',
    )


def _geo_coordinates(points: Any, func: str) -> np.ndarray:
    """``(n, 2)`` x/y of a GeoDataFrame/GeoSeries of points in a projected CRS."""
    gpd = _geopandas(func)
    if isinstance(points, gpd.GeoDataFrame):
        geo = points.geometry
    elif isinstance(points, gpd.GeoSeries):
        geo = points
    else:
        raise InputTypeError(
            f"{func}() needs a GeoDataFrame, a GeoSeries or an (n, 2) array of projected x/y, "
            f"not {type(points).__name__}: make it one, e.g. "
            "geopandas.GeoDataFrame(df, geometry='geometry', crs=...)"
        )
    if geo.crs is None:
        raise ParameterError(
            f"{func}() cannot tell the points' units: the GeoDataFrame has no CRS. Set it "
            "(gdf = gdf.set_crs(...), then gdf.to_crs(gdf.estimate_utm_crs()) if it is "
            "longitude/latitude), or, if the coordinates are projected, pass them as an "
            "array: np.column_stack([gdf.geometry.x, gdf.geometry.y])"
        )
    if geo.crs.is_geographic:
        raise ParameterError(
            f"{func}() measures distances in the CRS's units and {geo.crs.name!r} is "
            "geographic (degrees): reproject first, e.g. gdf = gdf.to_crs(gdf.estimate_utm_crs())"
        )
    missing = np.flatnonzero((geo.isna() | geo.is_empty).to_numpy())
    if missing.size:
        raise ParameterError(
            f"{func}() needs one point per row; rows at positions {missing[:5].tolist()} "
            f"({missing.size} in all) have a missing or empty geometry: drop them first, "
            "e.g. gdf = gdf[~(gdf.geometry.isna() | gdf.geometry.is_empty)]"
        )
    types = geo.geom_type.to_numpy()
    other = sorted(set(types[types != "Point"].tolist()))
    if other:
        raise ParameterError(
            f"{func}() connects points, and the geometries include {', '.join(other)}: "
            "use a point per geometry, e.g. gdf = gdf.set_geometry(gdf.centroid) "
            "(or gdf.representative_point() for a point inside each polygon)"
        )
    xy = np.column_stack([geo.x.to_numpy(np.float64), geo.y.to_numpy(np.float64)])
    return _check_finite(xy, func)


def _check_finite(xy: np.ndarray, func: str) -> np.ndarray:
    bad = np.flatnonzero(~np.isfinite(xy).all(axis=1))
    if bad.size:
        raise ParameterError(
            f"{func}() needs finite coordinates; points at positions {bad[:5].tolist()} "
            f"({bad.size} in all) have NaN or infinite x/y: drop or fix them first"
        )
    return xy


def _coordinates(points: Any, func: str) -> np.ndarray:
    """``(n, 2)`` float64 projected x/y of ``points`` (GeoDataFrame, GeoSeries or array)."""
    if hasattr(points, "geometry") or hasattr(points, "geom_type"):
        return _geo_coordinates(points, func)
    try:
        xy = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputTypeError(
            f"{func}() needs a GeoDataFrame of points or an (n, 2) array of projected x/y; "
            f"{type(points).__name__} cannot be read as numbers ({exc}): for shapely "
            "points pass shapely.get_coordinates(points)"
        ) from exc
    if xy.ndim != 2 or xy.shape[1] != 2:
        if xy.size == 0:  # [] or np.empty((0,)) : no points at all
            return np.empty((0, 2), np.float64)
        raise ParameterError(
            f"{func}() needs an (n, 2) array of x/y, got shape {xy.shape}: "
            "one row per point, columns x then y"
        )
    return _check_finite(xy, func)


def _count(value: Any, name: str, func: str, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ParameterError(f"{func}() needs {name} to be a whole number >= 1, got {value!r}")
    return int(value)


def _check_flow(flow: str, func: str) -> None:
    if flow not in _FLOWS:
        raise ParameterError(
            f"{func}() got flow={flow!r}: use 'source_to_target' (row 0 the neighbour, "
            "PyTorch Geometric's default) or 'target_to_source' (row 0 the point)"
        )


def _edges(
    xy: np.ndarray,
    centre: np.ndarray,
    nb: np.ndarray,
    *,
    keep: int | None,
    radius: float | None,
    loop: bool,
    flow: str,
) -> np.ndarray:
    """Sort candidate pairs by (centre, distance, neighbour), drop self pairs, keep those
    within ``radius`` and the first ``keep`` per centre, add self loops, orient by flow."""
    n = len(xy)
    other = nb != centre
    centre, nb = centre[other], nb[other]
    d = np.hypot(*(xy[nb] - xy[centre]).T)
    if radius is not None:
        inside = d <= radius
        centre, nb, d = centre[inside], nb[inside], d[inside]
    if loop:  # a self loop is the point's own nearest neighbour (distance 0)
        self_ = np.arange(n, dtype=np.int64)
        centre = np.concatenate([centre, self_])
        nb = np.concatenate([nb, self_])
        d = np.concatenate([d, np.zeros(n)])
    order = np.lexsort((nb, d, centre))
    centre, nb = centre[order], nb[order]
    if keep is not None:
        # the self loop always stays and counts as one of ``keep``; others go by rank
        is_self = nb == centre
        rank = np.zeros(len(centre), np.int64)
        rank[~is_self] = _rank_in_group(centre[~is_self])
        chosen = is_self | (rank < keep - int(loop))
        centre, nb = centre[chosen], nb[chosen]
    rows = (nb, centre) if flow == "source_to_target" else (centre, nb)
    return np.stack(rows).astype(np.int64, copy=False).reshape(2, -1)


def _rank_in_group(sorted_keys: np.ndarray) -> np.ndarray:
    """Position of each entry within its run of equal ``sorted_keys`` (0, 1, 2...)."""
    idx = np.arange(len(sorted_keys))
    starts = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]
    return idx - np.maximum.accumulate(np.where(starts, idx, 0))


def _flatten(lists: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(x) for x in lists), np.int64, count=n)
    centre = np.repeat(np.arange(n, dtype=np.int64), lengths)
    nb = np.fromiter((j for x in lists for j in x), np.int64, count=int(lengths.sum()))
    return centre, nb


def _knn_candidates(xy: np.ndarray, others: int) -> tuple[np.ndarray, np.ndarray]:
    """(point, candidate) pairs holding every point's ``others`` nearest other points and
    every point tied with the last of them, so ties are settled by position, not by the
    tree's traversal order."""
    n = len(xy)
    tree = cKDTree(xy)
    # the (others+1)-th nearest of all points (self included, at distance 0) is the
    # others-th nearest other point; one more tells whether a tie may be cut off
    kq = min(others + 2, n)
    dist, idx = tree.query(xy, k=kq)
    kth = dist[:, others]
    if kq > others + 1:
        tied = dist[:, others + 1] <= kth * (1 + _SLACK)
    else:  # the tree returned every point: nothing was cut off
        tied = np.zeros(n, bool)
    clear = np.flatnonzero(~tied)
    centre = np.repeat(clear.astype(np.int64), others + 1)
    nb = idx[clear, : others + 1].astype(np.int64).ravel()
    if tied.any():  # enumerate every point within the tied distance
        where = np.flatnonzero(tied)
        lists = tree.query_ball_point(xy[where], kth[where] * (1 + _SLACK))
        c, b = _flatten(lists, len(where))
        centre = np.concatenate([centre, where[c].astype(np.int64)])
        nb = np.concatenate([nb, b])
    return centre, nb


def knn_graph(
    points: Any,
    k: int,
    *,
    loop: bool = False,
    flow: Flow = "source_to_target",
) -> np.ndarray:
    """The k-nearest-neighbour graph of ``points`` as a ``(2, E)`` int64 edge index.

    Each point gets exactly ``k`` incoming edges (``E = n * k``) from its ``k`` nearest
    other points; with ``loop=True`` one of the ``k`` is a self loop (as in
    ``torch_cluster.knn_graph``), so it gets the self loop and its ``k - 1`` nearest
    others. Coincident points are ordinary neighbours at distance 0.

    Parameters
    ----------
    points
        A GeoDataFrame (or GeoSeries) of Point geometries in a projected CRS, or an
        ``(n, 2)`` array-like of projected x/y (taken as projected: arrays carry no CRS).
    k
        Neighbours per point, ``1 <= k <= n - 1`` (``n`` with ``loop=True``).
    loop
        Count each point as its own nearest neighbour (a self loop).
    flow
        ``"source_to_target"`` (PyTorch Geometric's default): row 0 the neighbour, row 1
        the point; ``"target_to_source"``: row 0 the point, row 1 the neighbour.

    Returns
    -------
    numpy.ndarray
        ``(2, n * k)`` int64 node positions ``0..n-1``, sorted by point, then distance,
        then neighbour position (the lower position wins a tie at the k-th distance);
        ``(2, 0)`` for no points.

    Raises
    ------
    ParameterError
        ``k`` more than the other points there are (pass ``k=min(k, len(points) - 1)``),
        ``k < 1``, a geographic or missing CRS, non-point or missing geometries,
        non-finite coordinates, an array not of shape ``(n, 2)``.

    Examples
    --------
    >>> import numpy as np
    >>> xy = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [3.0, 1.0]])
    >>> knn_graph(xy, k=2)  # row 0: neighbour (source), row 1: point (target)
    array([[1, 2, 0, 2, 3, 1, 2, 1],
           [0, 0, 1, 1, 2, 2, 3, 3]])
    >>> knn_graph(xy, k=1, loop=True)[:, :2]
    array([[0, 1],
           [0, 1]])
    """
    func = "knn_graph"
    count = _count(k, "k", func)
    assert count is not None
    _check_flow(flow, func)
    xy = _coordinates(points, func)
    n = len(xy)
    if n == 0:
        return np.empty((2, 0), np.int64)
    others = count - 1 if loop else count
    if others > n - 1:
        most = n if loop else n - 1
        raise ParameterError(
            f"knn_graph() got k={count} but there are {n} points, so at most {most} "
            f"neighbours per point{' (self loop included)' if loop else ''}: pass "
            f"k=min(k, {most}) if fewer neighbours are acceptable"
        )
    if others == 0:
        centre = nb = np.empty(0, np.int64)
    else:
        centre, nb = _knn_candidates(xy, others)
    return _edges(xy, centre, nb, keep=others + int(loop), radius=None, loop=loop, flow=flow)


def radius_graph(
    points: Any,
    r: float,
    *,
    loop: bool = False,
    max_neighbours: int | None = None,
    flow: Flow = "source_to_target",
) -> np.ndarray:
    """The graph joining every pair of ``points`` at most ``r`` apart, as a ``(2, E)``
    int64 edge index (both directions of each pair; distance ``<= r``, inclusive).

    Parameters
    ----------
    points
        A GeoDataFrame (or GeoSeries) of Point geometries in a projected CRS, or an
        ``(n, 2)`` array-like of projected x/y (taken as projected: arrays carry no CRS).
    r
        The radius, in the coordinates' units (the CRS's: metres for UTM), ``>= 0``;
        ``math.inf`` joins every pair.
    loop
        Add a self loop at each point.
    max_neighbours
        Keep only the nearest this many incoming edges per point (the self loop, with
        ``loop=True``, counts as one and is always kept); ties go to the lower position.
        ``None`` (the default) keeps all: unlike PyTorch Geometric's
        ``max_num_neighbors=32``, nothing is dropped unless asked.
    flow
        ``"source_to_target"`` (PyTorch Geometric's default): row 0 the neighbour, row 1
        the point; ``"target_to_source"``: row 0 the point, row 1 the neighbour.

    Returns
    -------
    numpy.ndarray
        ``(2, E)`` int64 node positions ``0..n-1``, sorted by point, then distance, then
        neighbour position; ``(2, 0)`` when no pair is close enough or there are no points.

    Raises
    ------
    ParameterError
        A negative or NaN ``r``, ``max_neighbours < 1``, a geographic or missing CRS,
        non-point or missing geometries, non-finite coordinates, an array not ``(n, 2)``.

    Examples
    --------
    >>> import numpy as np
    >>> xy = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    >>> radius_graph(xy, r=2.0)
    array([[1, 0, 2, 1],
           [0, 1, 1, 2]])
    >>> radius_graph(xy, r=0.5, loop=True)
    array([[0, 1, 2],
           [0, 1, 2]])
    """
    func = "radius_graph"
    if isinstance(r, bool) or not isinstance(r, numbers.Real) or math.isnan(r) or r < 0:
        raise ParameterError(f"radius_graph() needs r to be a number >= 0, got {r!r}")
    keep = _count(max_neighbours, "max_neighbours", func, allow_none=True)
    _check_flow(flow, func)
    xy = _coordinates(points, func)
    n = len(xy)
    if n == 0:
        return np.empty((2, 0), np.int64)
    radius = float(r)
    if math.isinf(radius):
        centre = np.repeat(np.arange(n, dtype=np.int64), n)
        nb = np.tile(np.arange(n, dtype=np.int64), n)
    else:
        tree = cKDTree(xy)
        centre, nb = _flatten(tree.query_ball_point(xy, radius * (1 + _SLACK)), n)
    return _edges(xy, centre, nb, keep=keep, radius=radius, loop=loop, flow=flow)
