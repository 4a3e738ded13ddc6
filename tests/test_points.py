"""patchflow.points: kNN and radius graphs, checked against scikit-learn's NearestNeighbors."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from patchflow.errors import ParameterError
from patchflow.points import knn_graph, radius_graph


def _scene(seed: int = 0, n: int = 300) -> np.ndarray:
    """Projected-looking x/y with exact duplicates and equidistant ties (integer grid)."""
    rng = np.random.default_rng(seed)
    xy = rng.integers(0, 40, size=(n, 2)).astype(np.float64) + np.array([500_000.0, 4_100_000.0])
    xy[10] = xy[11] = xy[12]  # coincident points
    return xy


def _float_scene(seed: int = 1, n: int = 250) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1000, size=(n, 2)) + np.array([300_000.0, 5_000_000.0])


def _expected(
    xy: np.ndarray, lists: list[np.ndarray], *, loop: bool, keep: int | None
) -> np.ndarray:
    """Edge index in the documented order from per-point neighbour sets (sklearn's)."""
    src, dst = [], []
    for i, found in enumerate(lists):
        nb = np.asarray([j for j in found if j != i], np.int64)
        d = np.hypot(*(xy[nb] - xy[i]).T) if nb.size else np.empty(0)
        if loop:
            nb, d = np.r_[nb, i], np.r_[d, 0.0]
        order = np.lexsort((nb, d))
        nb = nb[order]
        if keep is not None:
            others = nb[nb != i][: keep - int(loop)]
            nb = nb[np.isin(nb, others) | (nb == i)] if loop else others
        src += nb.tolist()
        dst += [i] * len(nb)
    return np.array([src, dst], np.int64).reshape(2, -1)


def _sklearn_knn_sets(xy: np.ndarray, k: int) -> list[set[int]]:
    """sklearn's k nearest other points per point, tie at the k-th distance settled by
    the lower position (sklearn's own choice among ties is arbitrary)."""
    neighbors = pytest.importorskip("sklearn.neighbors")
    nn = neighbors.NearestNeighbors(n_neighbors=k).fit(xy)
    dist, _ = nn.kneighbors()  # X=None: a point is not its own neighbour
    kth = dist[:, -1] * (1 + 1e-9)  # sklearn and numpy may round a distance apart
    within = nn.radius_neighbors(xy, radius=float(kth.max()), sort_results=True)[1]
    out = []
    for i, cand in enumerate(within):
        cand = cand[cand != i]
        d = np.hypot(*(xy[cand] - xy[i]).T)
        cand = cand[d <= kth[i]]
        d = d[d <= kth[i]]
        out.append(set(cand[np.lexsort((cand, d))][:k].tolist()))
    return out


# --------------------------------------------------------------------------- kNN


@pytest.mark.parametrize("make", [_scene, _float_scene])
@pytest.mark.parametrize("k", [1, 4, 9])
def test_knn_matches_sklearn(make, k) -> None:
    xy = make()
    got = knn_graph(xy, k)
    sets = _sklearn_knn_sets(xy, k)
    assert got.shape == (2, len(xy) * k) and got.dtype == np.int64
    assert not np.any(got[0] == got[1])
    for i in range(len(xy)):
        assert set(got[0, got[1] == i].tolist()) == sets[i]
    np.testing.assert_array_equal(got, _expected(xy, [list(s) for s in sets], loop=False, keep=k))


def test_knn_sklearn_distances_agree() -> None:
    neighbors = pytest.importorskip("sklearn.neighbors")
    xy = _float_scene(seed=5)
    dist, idx = neighbors.NearestNeighbors(n_neighbors=6).fit(xy).kneighbors()
    got = knn_graph(xy, 6)
    # no ties among random floats: neighbour order is sklearn's, exactly
    np.testing.assert_array_equal(got[0].reshape(-1, 6), idx)
    d = np.hypot(*(xy[got[0]] - xy[got[1]]).T).reshape(-1, 6)
    np.testing.assert_allclose(d, dist, rtol=1e-12)


def test_knn_loop_keeps_self_and_k_minus_one_nearest() -> None:
    xy = _scene(seed=3)
    with_loop = knn_graph(xy, 5, loop=True)
    without = knn_graph(xy, 4)
    assert with_loop.shape == (2, len(xy) * 5)
    for i in range(len(xy)):
        nb = with_loop[0, with_loop[1] == i]
        assert (nb == i).sum() == 1
        assert set(nb[nb != i].tolist()) == set(without[0, without[1] == i].tolist())
    # duplicates: 10, 11, 12 coincide; with k=1 and loop each gets only itself
    only_self = knn_graph(xy, 1, loop=True)
    np.testing.assert_array_equal(only_self, np.tile(np.arange(len(xy)), (2, 1)))
    # without loop, a duplicate is the nearest neighbour, the lowest other position wins
    nearest = knn_graph(xy, 1)
    assert nearest[0, 10] == 11 and nearest[0, 11] == 10 and nearest[0, 12] == 10


def test_knn_tie_goes_to_lower_position() -> None:
    xy = np.array([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [5.0, 5.0]])
    got = knn_graph(xy, 2)
    np.testing.assert_array_equal(got[:, :2], [[1, 2], [0, 0]])
    # reversed, the origin is position 5 and its four equidistant points are 1..4:
    # again the two lowest positions, now (0, -1) and (0, 1) rather than (±1, 0)
    np.testing.assert_array_equal(knn_graph(xy[::-1], 2)[:, -2:], [[1, 2], [5, 5]])


def test_knn_flow_swaps_rows() -> None:
    xy = _float_scene()
    a = knn_graph(xy, 3)
    b = knn_graph(xy, 3, flow="target_to_source")
    np.testing.assert_array_equal(a[::-1], b)
    # source_to_target: each point is the target of exactly k edges (PyG's layout)
    np.testing.assert_array_equal(a[1], np.repeat(np.arange(len(xy)), 3))


def test_knn_k_too_large_is_refused() -> None:
    xy = _float_scene(n=4)
    assert knn_graph(xy, 3).shape == (2, 12)
    with pytest.raises(ParameterError, match=r"k=4 but there are 4 points.*k=min\(k, 3\)"):
        knn_graph(xy, 4)
    assert knn_graph(xy, 4, loop=True).shape == (2, 16)
    with pytest.raises(ParameterError, match="at most 4"):
        knn_graph(xy, 5, loop=True)
    for bad in (0, -1, 2.5, True, None):
        with pytest.raises(ParameterError, match="whole number"):
            knn_graph(xy, bad)  # type: ignore[arg-type]


def test_empty_and_one_point() -> None:
    for empty in (np.empty((0, 2)), [], np.empty(0)):
        for got in (knn_graph(empty, 3), radius_graph(empty, 1.0, loop=True)):
            assert got.shape == (2, 0) and got.dtype == np.int64
    one = np.array([[1.0, 2.0]])
    with pytest.raises(ParameterError, match="at most 0"):
        knn_graph(one, 1)
    np.testing.assert_array_equal(knn_graph(one, 1, loop=True), [[0], [0]])
    assert radius_graph(one, 10.0).shape == (2, 0)
    np.testing.assert_array_equal(radius_graph(one, 10.0, loop=True), [[0], [0]])


# --------------------------------------------------------------------------- radius


@pytest.mark.parametrize("loop", [False, True])
@pytest.mark.parametrize(("make", "r"), [(_scene, 3.0), (_scene, 5.0), (_float_scene, 60.0)])
def test_radius_matches_sklearn(make, r, loop) -> None:
    neighbors = pytest.importorskip("sklearn.neighbors")
    xy = make()
    # sklearn's radius is inclusive (distance <= r), like ours; integer grids put
    # points at exactly r (3-4-5 triangles, axis neighbours)
    lists = neighbors.NearestNeighbors().fit(xy).radius_neighbors(xy, radius=r)[1]
    got = radius_graph(xy, r, loop=loop)
    assert got.dtype == np.int64 and got.shape[0] == 2
    np.testing.assert_array_equal(got, _expected(xy, list(lists), loop=loop, keep=None))
    if not loop:  # symmetric: every edge in both directions
        pairs = set(map(tuple, got.T.tolist()))
        assert pairs == {(b, a) for a, b in pairs}
    d = np.hypot(*(xy[got[0]] - xy[got[1]]).T)
    assert np.all(d <= r)


@pytest.mark.parametrize("loop", [False, True])
def test_radius_max_neighbours(loop) -> None:
    neighbors = pytest.importorskip("sklearn.neighbors")
    xy = _scene(seed=7)
    lists = neighbors.NearestNeighbors().fit(xy).radius_neighbors(xy, radius=4.0)[1]
    got = radius_graph(xy, 4.0, loop=loop, max_neighbours=3)
    np.testing.assert_array_equal(got, _expected(xy, list(lists), loop=loop, keep=3))
    assert np.bincount(got[1], minlength=len(xy)).max() <= 3
    # with an unbounded radius, max_neighbours=k is exactly the kNN graph
    np.testing.assert_array_equal(
        radius_graph(xy, math.inf, loop=loop, max_neighbours=5), knn_graph(xy, 5, loop=loop)
    )


def test_radius_zero_joins_only_coincident_points() -> None:
    xy = _scene()
    got = radius_graph(xy, 0.0)
    assert {tuple(e) for e in got.T.tolist()} >= {(11, 10), (12, 10), (10, 11)}
    assert np.all(np.hypot(*(xy[got[0]] - xy[got[1]]).T) == 0)


def test_radius_bad_values() -> None:
    xy = _float_scene(n=5)
    for bad in (-1.0, math.nan, "1", None):
        with pytest.raises(ParameterError, match="r to be a number"):
            radius_graph(xy, bad)  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="max_neighbours"):
        radius_graph(xy, 1.0, max_neighbours=0)
    with pytest.raises(ParameterError, match="flow="):
        radius_graph(xy, 1.0, flow="both")  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match=r"\(n, 2\)"):
        knn_graph(np.zeros((5, 3)), 1)
    with pytest.raises(ParameterError, match="finite"):
        knn_graph(np.array([[0.0, 0.0], [np.nan, 1.0]]), 1)


# --------------------------------------------------------------------------- GeoDataFrames


def _gdf(xy: np.ndarray, crs: str | None = "EPSG:32610"):
    gpd = pytest.importorskip("geopandas")
    # a shuffled, non-default index: edges use positions, never the index
    return gpd.GeoDataFrame(
        {"v": np.arange(len(xy))},
        geometry=gpd.points_from_xy(xy[:, 0], xy[:, 1]),
        crs=crs,
        index=np.random.default_rng(0).permutation(len(xy)) * 10 + 7,
    )


def test_geodataframe_equals_array() -> None:
    xy = _scene()
    gdf = _gdf(xy)
    np.testing.assert_array_equal(knn_graph(gdf, 6), knn_graph(xy, 6))
    np.testing.assert_array_equal(
        knn_graph(gdf.geometry, 6, loop=True), knn_graph(xy, 6, loop=True)
    )
    np.testing.assert_array_equal(radius_graph(gdf, 4.0), radius_graph(xy, 4.0))
    assert knn_graph(gdf, 6).max() == len(xy) - 1
    assert knn_graph(gdf.iloc[:0], 2).shape == (2, 0)


def test_geographic_crs_is_refused() -> None:
    gdf = _gdf(np.array([[-122.4, 37.8], [-122.5, 37.7], [-122.3, 37.9]]), crs="EPSG:4326")
    with pytest.raises(ParameterError, match=r"geographic.*to_crs\(gdf.estimate_utm_crs\(\)\)"):
        knn_graph(gdf, 1)
    with pytest.raises(ParameterError, match="geographic"):
        radius_graph(gdf, 1000.0)
    utm = gdf.to_crs(gdf.estimate_utm_crs())
    assert knn_graph(utm, 2).shape == (2, 6)


def test_geodataframe_without_crs_is_refused() -> None:
    xy = _float_scene(n=5)
    with pytest.raises(ParameterError, match=r"no CRS.*np.column_stack"):
        knn_graph(_gdf(xy, crs=None), 1)


def test_non_point_geometries_are_refused() -> None:
    gpd = pytest.importorskip("geopandas")
    from shapely.geometry import LineString, Point, box

    gdf = gpd.GeoDataFrame(
        geometry=[Point(0, 0), box(0, 0, 1, 1), LineString([(0, 0), (1, 1)])], crs="EPSG:32610"
    )
    with pytest.raises(ParameterError, match=r"LineString, Polygon.*\.centroid"):
        knn_graph(gdf, 1)
    fixed = gdf.set_geometry(gdf.centroid)
    assert knn_graph(fixed, 2).shape == (2, 6)
    with_empty = gpd.GeoDataFrame(geometry=[Point(0, 0), None, Point()], crs="EPSG:32610")
    with pytest.raises(ParameterError, match=r"positions \[1, 2\].*missing or empty"):
        radius_graph(with_empty, 1.0)


def test_import_does_not_load_geopandas() -> None:
    code = (
        "import sys, numpy as np, patchflow.points as p; "
        "p.knn_graph(np.zeros((3, 2)), 2); "
        "assert 'geopandas' not in sys.modules and 'shapely' not in sys.modules, 'loaded'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
