"""``sample_points``: raster values at points, checked against rasterio and numpy."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import dask.array as dsa
import numpy as np
import pytest
import rasterio
import rioxarray
import xarray as xr
from affine import Affine

from patchflow.errors import ParameterError, PatchflowError
from patchflow.sampling.point_values import sample_points

gpd = pytest.importorskip("geopandas")

NODATA = -9999
SHAPE = (256, 192)
TRANSFORM = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_200_000.0)
CRS = "EPSG:32610"
BANDS = ("blue", "green", "red")


@pytest.fixture(scope="module")
def tif(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A 3-band int16 GeoTIFF (64 px tiles) with nodata -9999 and a few nodata pixels."""
    rng = np.random.default_rng(7)
    data = rng.integers(-500, 3000, size=(3, *SHAPE)).astype(np.int16)
    data[:, 40:44, 50:53] = NODATA
    data[1, 100, 100] = NODATA  # nodata in one band only
    data[:, 0, :] = NODATA
    rows, cols = SHAPE
    arr = xr.DataArray(
        data,
        dims=("band", "y", "x"),
        coords={
            "band": [1, 2, 3],
            "y": TRANSFORM.f + TRANSFORM.e * (np.arange(rows) + 0.5),
            "x": TRANSFORM.c + TRANSFORM.a * (np.arange(cols) + 0.5),
        },
    )
    arr = arr.rio.write_crs(CRS).rio.write_transform(TRANSFORM).rio.write_nodata(NODATA)
    arr.attrs["long_name"] = BANDS  # GeoTIFF band descriptions
    path = tmp_path_factory.mktemp("points") / "scene.tif"
    arr.rio.to_raster(path, tiled=True, blockxsize=64, blockysize=64)
    return path, data


def _points(n: int, seed: int, *, outside: int = 0, nodata_hits: bool = True) -> Any:
    """Random points in UTM, kept >= 0.2 px from pixel edges (reprojection round trips
    must not move them to a neighbouring pixel), some outside, some on nodata pixels."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, SHAPE[0], n) + rng.uniform(0.2, 0.8, n)
    cols = rng.integers(0, SHAPE[1], n) + rng.uniform(0.2, 0.8, n)
    if nodata_hits:
        rows[:3], cols[:3] = [41.5, 100.5, 0.5], [51.5, 100.5, 7.5]
    if outside:
        rows[-outside:] = rng.choice([-5.5, SHAPE[0] + 3.5], outside)
    xs, ys = TRANSFORM @ (cols, rows)
    return gpd.GeoDataFrame({"id": np.arange(n)}, geometry=gpd.points_from_xy(xs, ys), crs=CRS)


def _rasterio_nearest(path: Path, pts: Any) -> np.ndarray:
    """``(n, bands)`` float values via rasterio's own sampler; NaN outside / nodata."""
    with rasterio.open(path) as src:
        coords = list(zip(pts.geometry.x, pts.geometry.y, strict=True))
        got = np.array([v for v in src.sample(coords)], dtype=np.float64)
        inside = np.array(
            [
                src.bounds.left <= x < src.bounds.right and src.bounds.bottom < y <= src.bounds.top
                for x, y in coords
            ]
        )
    got[got == NODATA] = np.nan
    got[~inside] = np.nan
    return got


def _bilinear_reference(
    data: np.ndarray, pts: Any, transform: Any = None, nodata: Any = NODATA
) -> np.ndarray:
    """Per point, plain bilinear of the 4 surrounding pixel centres; NaN when a needed
    one (weight > 0) is outside the raster or ``nodata`` (default grid: ``TRANSFORM``)."""
    inv = ~(TRANSFORM if transform is None else transform)
    out = np.full((len(pts), data.shape[0]), np.nan)
    h, w = data.shape[-2:]
    for k, (x, y) in enumerate(zip(pts.geometry.x, pts.geometry.y, strict=True)):
        col, row = inv @ (x, y)
        u, v = row - 0.5, col - 0.5
        r0, c0 = math.floor(u), math.floor(v)
        fy, fx = u - r0, v - c0
        for b in range(data.shape[0]):
            acc, ok = 0.0, True
            for dr, dc, wt in (
                (0, 0, (1 - fy) * (1 - fx)),
                (0, 1, (1 - fy) * fx),
                (1, 0, fy * (1 - fx)),
                (1, 1, fy * fx),
            ):
                if wt == 0:
                    continue
                r, c = r0 + dr, c0 + dc
                if not (0 <= r < h and 0 <= c < w) or data[b, r, c] == nodata:
                    ok = False
                    break
                acc += wt * float(data[b, r, c])
            if ok:
                out[k, b] = acc
    return out


@pytest.mark.parametrize("chunks", [None, 64, 100])
def test_nearest_equals_rasterio_sample(tif: tuple[Path, np.ndarray], chunks: Any) -> None:
    path, _ = tif
    raster = rioxarray.open_rasterio(path, chunks=chunks)
    pts = _points(300, seed=1, outside=20)
    got = sample_points(raster, pts)
    assert list(got.columns) == ["id", "geometry", *BANDS]  # GeoTIFF descriptions
    values = got[list(BANDS)].to_numpy()
    assert values.dtype == np.float64  # int16 raster: float so NaN fits
    expected = _rasterio_nearest(path, pts)
    np.testing.assert_array_equal(values, expected)
    assert np.isnan(values[-20:]).all()  # outside
    assert np.isnan(values[:3]).any(axis=1).all()  # nodata pixels
    assert np.isnan(values[1, 1]) and not np.isnan(values[1, 0])  # per-band nodata


def test_nearest_masked_float_keeps_dtype(tif: tuple[Path, np.ndarray]) -> None:
    path, _ = tif
    raster = rioxarray.open_rasterio(path, masked=True, chunks=64)
    pts = _points(200, seed=2, outside=5)
    got = sample_points(raster, pts)
    assert got["red"].dtype == raster.dtype
    np.testing.assert_array_equal(got[list(BANDS)].to_numpy(), _rasterio_nearest(path, pts))


@pytest.mark.parametrize("chunks", [None, 64])
def test_bilinear_matches_numpy_reference(tif: tuple[Path, np.ndarray], chunks: Any) -> None:
    path, data = tif
    raster = rioxarray.open_rasterio(path, chunks=chunks)
    pts = _points(300, seed=3, outside=10)
    rng = np.random.default_rng(4)
    # exact edges, pixel centres, near-edge and chunk-straddling positions
    extra_rc = [(0.5, 0.5), (255.5, 191.5), (255.9, 100.0), (128.0, 64.0), (63.7, 127.9)]
    extra_rc += [(r, c) for r, c in rng.uniform([0, 0], SHAPE, size=(50, 2))]
    xs, ys = TRANSFORM @ (np.array([c for _, c in extra_rc]), np.array([r for r, _ in extra_rc]))
    more = gpd.GeoDataFrame(
        {"id": np.arange(len(extra_rc)) + 1000}, geometry=gpd.points_from_xy(xs, ys), crs=CRS
    )
    pts = gpd.pd.concat([pts, more], ignore_index=True)
    got = sample_points(raster, pts, method="bilinear")
    expected = _bilinear_reference(data, pts)
    np.testing.assert_allclose(got[list(BANDS)].to_numpy(), expected, rtol=1e-12, atol=1e-9)
    assert np.isnan(expected).any() and (~np.isnan(expected)).sum() > 500
    # the last pixel centre needs no neighbour beyond the edge: a value, not NaN
    corner = got.loc[got["id"] == 1001, list(BANDS)].to_numpy()[0]
    np.testing.assert_array_equal(corner, data[:, 255, 191].astype(float))
    # half a pixel inside the edge: the interpolation needs a centre outside -> NaN
    assert got.loc[got["id"] == 1002, list(BANDS)].isna().all(axis=None)


@pytest.mark.parametrize("method", ["nearest", "bilinear"])
def test_points_in_other_crs_are_reprojected(tif: tuple[Path, np.ndarray], method: Any) -> None:
    path, _ = tif
    raster = rioxarray.open_rasterio(path, chunks=64)
    pts = _points(200, seed=5, outside=10)
    utm = sample_points(raster, pts, method=method)
    wgs = sample_points(raster, pts.to_crs("EPSG:4326"), method=method)
    assert wgs.crs.to_epsg() == 4326  # the points keep their own CRS
    a, b = utm[list(BANDS)].to_numpy(), wgs[list(BANDS)].to_numpy()
    if method == "nearest":
        np.testing.assert_array_equal(a, b)
    else:
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)


def test_missing_crs_is_refused(tif: tuple[Path, np.ndarray]) -> None:
    path, _ = tif
    raster = rioxarray.open_rasterio(path)
    pts = _points(5, seed=6).set_crs(None, allow_override=True)
    with pytest.raises(ParameterError, match=r"points\.set_crs"):
        sample_points(raster, pts)
    bare = xr.DataArray(raster.values, dims=raster.dims, coords={d: raster[d] for d in raster.dims})
    assert bare.rio.crs is None
    with pytest.raises(ParameterError, match=r"rio\.write_crs"):
        sample_points(bare, _points(5, seed=6))


def test_bad_arguments_are_named(tif: tuple[Path, np.ndarray]) -> None:
    path, _ = tif
    raster = rioxarray.open_rasterio(path)
    pts = _points(5, seed=8)
    with pytest.raises(ParameterError, match="unknown method"):
        sample_points(raster, pts, method="cubic")  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="batch"):
        sample_points(raster, pts, batch=0)
    with pytest.raises(ParameterError, match="3 string"):
        sample_points(raster, pts, column_names=["a", "b"])
    with pytest.raises(ParameterError, match="already have"):
        sample_points(raster, pts, column_names=["id", "b", "c"])
    with pytest.raises(ParameterError, match="Point"):
        sample_points(raster, gpd.GeoDataFrame(geometry=pts.buffer(5), crs=CRS))
    with pytest.raises(PatchflowError, match="GeoDataFrame"):
        sample_points(raster, list(pts.geometry))


def test_column_names(tif: tuple[Path, np.ndarray]) -> None:
    path, _ = tif
    raster = rioxarray.open_rasterio(path)
    pts = _points(10, seed=9)
    named = raster.assign_coords(band=["b", "g", "r"])
    assert list(sample_points(named, pts).columns[-3:]) == ["b", "g", "r"]
    plain = raster.copy()
    plain.attrs.pop("long_name")
    assert list(sample_points(plain, pts).columns[-3:]) == ["band_1", "band_2", "band_3"]
    over = sample_points(raster, pts, column_names=["x1", "x2", "x3"])
    assert list(over.columns[-3:]) == ["x1", "x2", "x3"]
    two_d = raster.isel(band=0, drop=True).rename("elevation")
    got = sample_points(two_d, pts)
    assert list(got.columns) == ["id", "geometry", "elevation"]
    np.testing.assert_array_equal(got["elevation"], sample_points(raster, pts)["blue"])


def test_row_order_and_index_preserved(tif: tuple[Path, np.ndarray]) -> None:
    path, _ = tif
    raster = rioxarray.open_rasterio(path, chunks=64)
    pts = _points(120, seed=10, outside=5)
    ref = sample_points(raster, pts)
    perm = np.random.default_rng(11).permutation(len(pts))
    shuffled = pts.iloc[perm].copy()
    shuffled.index = [f"p{k % 40}" for k in perm]  # non-default, repeated labels
    got = sample_points(raster, shuffled, batch=7)
    assert list(got.index) == list(shuffled.index)
    assert got.geometry.equals(shuffled.geometry)
    np.testing.assert_array_equal(got["id"].to_numpy(), pts["id"].to_numpy()[perm])
    np.testing.assert_array_equal(got[list(BANDS)].to_numpy(), ref[list(BANDS)].to_numpy()[perm])
    assert list(shuffled.columns) == ["id", "geometry"]  # the input is untouched


class _ReadLog:
    """A numpy array that logs the windows dask reads from it (the 'file')."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim
        self.reads: list[tuple[slice, ...]] = []

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        self.reads.append(key)
        return self.data[key]


def _blocks_read(log: _ReadLog, chunk: int) -> set[tuple[int, int]]:
    blocks = set()
    for key in log.reads:
        ys, xs = key[-2], key[-1]
        for i in range(ys.start // chunk, (ys.stop - 1) // chunk + 1):
            for j in range(xs.start // chunk, (xs.stop - 1) // chunk + 1):
                blocks.add((i, j))
    return blocks


@pytest.mark.parametrize("method", ["nearest", "bilinear"])
def test_reads_only_chunks_with_points(
    tif: tuple[Path, np.ndarray], method: Any, dask_computes: Any
) -> None:
    path, data = tif
    template = rioxarray.open_rasterio(path)
    log = _ReadLog(data)
    lazy = template.copy(data=dsa.from_array(log, chunks=(3, 64, 64), asarray=False))
    # 12 chunks; points in chunk (0, 0) and chunk (2, 1) centres only
    rows = np.array([10.3, 20.6, 30.5, 150.2, 160.4])
    cols = np.array([10.4, 40.5, 50.1, 70.3, 100.7])
    xs, ys = TRANSFORM @ (cols, rows)
    pts = gpd.GeoDataFrame(geometry=gpd.points_from_xy(xs, ys), crs=CRS)
    with dask_computes(max_computes=1):
        got = sample_points(lazy, pts, method=method)
    assert log.reads, "nothing was read"
    assert _blocks_read(log, 64) == {(0, 0), (2, 1)}
    full = sample_points(template, pts, method=method)
    np.testing.assert_array_equal(got[list(BANDS)].to_numpy(), full[list(BANDS)].to_numpy())


def test_bilinear_neighbourhood_straddling_chunks(tif: tuple[Path, np.ndarray]) -> None:
    path, data = tif
    template = rioxarray.open_rasterio(path)
    log = _ReadLog(data)
    lazy = template.copy(data=dsa.from_array(log, chunks=(3, 64, 64), asarray=False))
    # pixel-space (63.9, 63.9): its 4 centres are in chunks (0,0), (0,1), (1,0), (1,1)
    xs, ys = TRANSFORM @ (np.array([63.9]), np.array([63.9]))
    pts = gpd.GeoDataFrame(geometry=gpd.points_from_xy(xs, ys), crs=CRS)
    got = sample_points(lazy, pts, method="bilinear")
    assert _blocks_read(log, 64) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    np.testing.assert_allclose(
        got[list(BANDS)].to_numpy(), _bilinear_reference(data, pts), rtol=1e-12
    )


# --------------------------------------------------------------------------- xvec output


def test_xvec_output_holds_the_same_values(tif: tuple[Path, np.ndarray]) -> None:
    xvec = pytest.importorskip("xvec")
    path, _ = tif
    da = rioxarray.open_rasterio(path, chunks={"x": 64, "y": 64})
    pts = _points(40, seed=11, outside=2).to_crs("EPSG:4326")
    table = sample_points(da, pts)
    cube = sample_points(da, pts, output="xvec")
    assert cube.dims == ("geometry", "band")
    assert list(cube["band"].values) == list(BANDS)
    np.testing.assert_array_equal(cube.values, table[list(BANDS)].to_numpy())
    # xvec's index, in the points' own CRS, the geometries in row order
    assert cube.xvec.geom_coords_indexed.keys() == {"geometry"}
    assert cube.xindexes["geometry"].crs.equals(pts.crs)
    assert list(cube["geometry"].values) == list(pts.geometry)
    np.testing.assert_array_equal(cube["id"].values, pts["id"].to_numpy())
    assert isinstance(cube.xindexes["geometry"], xvec.GeometryIndex)
    # a 2-D raster gives a (geometry,) array named after it
    flat = sample_points(da.isel(band=0, drop=True).rename("dem"), pts, output="xvec")
    assert flat.dims == ("geometry",) and flat.name == "dem"
    np.testing.assert_array_equal(flat.values, table["blue"].to_numpy())
    with pytest.raises(ParameterError, match="output"):
        sample_points(da, pts, output="xarray")  # type: ignore[arg-type]


def test_xvec_output_keeps_every_column_or_refuses(tif: tuple[Path, np.ndarray]) -> None:
    """A points column that would clash with the DataArray's dims is refused by name
    instead of silently left out; every other column (any name) comes along."""
    pytest.importorskip("xvec")
    path, _ = tif
    da = rioxarray.open_rasterio(path, chunks={"x": 64, "y": 64})
    pts = _points(10, seed=3).to_crs("EPSG:4326")
    for clash in ("band", "geometry"):
        bad = pts.assign(**{"geom_col" if clash == "geometry" else clash: 1})
        if clash == "geometry":  # a plain column named geometry beside the active one
            bad = bad.rename_geometry("pts").rename(columns={"geom_col": "geometry"})
        with pytest.raises(ParameterError, match=rf"'{clash}'.*rename"):
            sample_points(da, bad, output="xvec")
    # a 2-D raster has no band dim: a "band" column is kept; so is a non-string name
    odd = pts.assign(band=np.arange(len(pts)), **{"7": 7}).rename(columns={"7": 7})
    flat = sample_points(da.isel(band=0, drop=True).rename("dem"), odd, output="xvec")
    np.testing.assert_array_equal(flat["band"].values, np.arange(len(pts)))
    np.testing.assert_array_equal(flat.coords[7].values, np.full(len(pts), 7))


# --------------------------------------------------------------------------- point chips


def _brute_point_chips(pts: Any, anchors: np.ndarray, size: tuple[int, int]) -> set:
    """Every (chip, point) pair by testing each point against each chip window, with the
    pixel the point lies in (from the inverse transform)."""
    inv = ~TRANSFORM
    pairs = set()
    for p, geom in enumerate(pts.to_crs(CRS).geometry):
        if geom is None or geom.is_empty:
            continue
        col, row = inv @ (geom.x, geom.y)
        for k, (r, c) in enumerate(anchors):
            if r <= math.floor(row) < r + size[0] and c <= math.floor(col) < c + size[1]:
                pairs.add((k, p))
    return pairs


@pytest.mark.parametrize("sampler_kind", ["explicit", "random", "regular"])
def test_points_in_chips_equals_brute_force(
    tif: tuple[Path, np.ndarray], sampler_kind: str
) -> None:
    from patchflow.plan.samplers import Random, RegularStride
    from patchflow.sampling.point_values import points_in_chips

    path, _ = tif
    da = rioxarray.open_rasterio(path, chunks={"x": 64, "y": 64})
    pts = _points(300, seed=5, outside=10).to_crs("EPSG:4326")  # reprojected back inside
    size = (64, 48)
    sampler: Any = {
        "explicit": np.array([[0, 0], [10, 20], [192, 144], [100, 100]]),
        "random": Random(25, seed=3),
        "regular": RegularStride(stride=40),
    }[sampler_kind]
    out = points_in_chips(da, pts, sampler, size=size)
    anchors = out.attrs["anchors"]
    assert anchors.shape[1] == 2 and len(anchors) > 1
    want = _brute_point_chips(pts, anchors, size)
    got = list(zip(out["chip"].tolist(), out["point"].tolist(), strict=True))
    assert len(got) == len(set(got)) and set(got) == want
    # overlapping chips: some point is in more than one chip
    assert sampler_kind == "explicit" or out["point"].duplicated().any()
    assert got == sorted(got)  # by chip, then by point position
    # the point's own columns and geometry travel along; chip-local positions are exact
    np.testing.assert_array_equal(out["id"].to_numpy(), pts["id"].to_numpy()[out["point"]])
    assert out.crs.equals(pts.crs)
    assert ((out["chip_row"] >= 0) & (out["chip_row"] < size[0])).all()
    assert ((out["chip_col"] >= 0) & (out["chip_col"] < size[1])).all()
    inv = ~TRANSFORM
    utm = out.to_crs(CRS).geometry
    col, row = inv @ (utm.x.to_numpy(), utm.y.to_numpy())
    np.testing.assert_allclose(out["chip_row"], row - anchors[out["chip"], 0], atol=1e-6)
    np.testing.assert_allclose(out["chip_col"], col - anchors[out["chip"], 1], atol=1e-6)


def test_points_in_chips_min_points_and_errors(tif: tuple[Path, np.ndarray]) -> None:
    from patchflow.sampling.point_values import points_in_chips

    path, _ = tif
    da = rioxarray.open_rasterio(path)
    pts = _points(50, seed=2)
    anchors = np.array([[0, 0], [192, 128], [100, 0]])
    counts = points_in_chips(da, pts, anchors, size=64)["chip"].value_counts()
    some = int(counts.min())
    kept = points_in_chips(da, pts, anchors, size=64, min_points=some + 1)
    assert set(kept["chip"]) == set(counts[counts > some].index)
    with pytest.raises(ParameterError, match="min_points"):
        points_in_chips(da, pts, anchors, size=64, min_points=-1)
    with pytest.raises(ParameterError, match="already have"):
        points_in_chips(da, pts.assign(chip=1), anchors, size=64)
    with pytest.raises(ParameterError, match="no CRS"):
        points_in_chips(da, pts.set_crs(None, allow_override=True), anchors, size=64)


def test_accessor_methods_match_the_free_functions(tif: tuple[Path, np.ndarray]) -> None:
    from patchflow.sampling.point_values import points_in_chips

    path, _ = tif
    da = rioxarray.open_rasterio(path, chunks=64)
    pts = _points(30, seed=9)
    assert da.patch.sample_points(pts, method="bilinear").equals(
        sample_points(da, pts, method="bilinear")
    )
    anchors = np.array([[0, 0], [64, 64]])
    assert da.patch.points_in_chips(pts, anchors, size=100).equals(
        points_in_chips(da, pts, anchors, size=100)
    )


def test_xvec_output_keeps_rows_with_missing_geometries(tif: tuple[Path, np.ndarray]) -> None:
    pytest.importorskip("xvec")
    path, _ = tif
    da = rioxarray.open_rasterio(path)
    pts = _points(5, seed=4)
    pts.loc[2, "geometry"] = None
    cube = sample_points(da, pts, output="xvec")
    assert cube.sizes["geometry"] == 5
    assert cube["geometry"].values[2].is_empty
    assert np.isnan(cube.values[2]).all()
    np.testing.assert_array_equal(cube.values, sample_points(da, pts)[list(BANDS)].to_numpy())


# ------------------------------------------------------- points exactly on pixel edges
#
# GDAL (and rasterio's ``index`` / ``sample``) puts a point on a pixel edge in the pixel
# that owns it in the north-up frame: each pixel owns its top and left edges, so on the
# raster's outline the top and left edges are inside and the bottom and right ones are
# outside. The same geographic point must get the same pixel whatever way the array runs.

EDGE_SHAPE = (5, 6)
EDGE_RES = 10.0
EDGE_TRANSFORM = Affine(EDGE_RES, 0.0, 500_000.0, 0.0, -EDGE_RES, 4_200_000.0)
#: a grid whose edges are not exact in binary: the y coordinates' spacing is not even
#: 0.1 in float64, so points on its edges sit a rounding error off them
AWKWARD_TRANSFORM = Affine(0.1, 0.0, 500_000.3, 0.0, -0.1, 4_200_000.7)


@pytest.fixture(scope="module", params=["exact", "awkward"])
def edge_tif(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A north-up int32 GeoTIFF whose pixels are all distinct (1 … 30), no nodata."""
    rows, cols = EDGE_SHAPE
    data = np.arange(1, rows * cols + 1, dtype=np.int32).reshape(EDGE_SHAPE)
    t = EDGE_TRANSFORM if request.param == "exact" else AWKWARD_TRANSFORM
    arr = xr.DataArray(
        data,
        dims=("y", "x"),
        coords={"y": t.f + t.e * (np.arange(rows) + 0.5), "x": t.c + t.a * (np.arange(cols) + 0.5)},
    )
    path = tmp_path_factory.mktemp("edges") / f"edges_{request.param}.tif"
    arr.rio.write_crs(CRS).rio.write_transform(t).rio.to_raster(path)
    return path


def _edge_points(path: Path) -> Any:
    """Every pixel corner (outline included), the middle of every pixel edge, and every
    pixel centre of the GeoTIFF: points on the lines between pixels, in grid order."""
    rows, cols = EDGE_SHAPE
    half = np.arange(0.0, 2 * max(rows, cols) + 1) / 2
    r, c = np.meshgrid(half[half <= rows], half[half <= cols], indexing="ij")
    with rasterio.open(path) as src:
        xs, ys = src.transform @ (c.ravel(), r.ravel())
    return gpd.GeoDataFrame(geometry=gpd.points_from_xy(xs, ys), crs=CRS)


def _oriented(da: xr.DataArray, orientation: str) -> xr.DataArray:
    if orientation in ("y_ascending", "both"):
        da = da.isel(y=slice(None, None, -1))
    if orientation in ("x_descending", "both"):
        da = da.isel(x=slice(None, None, -1))
    return da


ORIENTATIONS = ["north_up", "y_ascending", "x_descending", "both"]


def test_gdal_edge_convention(tmp_path: Path) -> None:
    """The reference itself: what rasterio (GDAL's convention) says on the outline."""
    t, (h, w) = EDGE_TRANSFORM, EDGE_SHAPE
    path = tmp_path / "one.tif"
    xr.DataArray(np.ones(EDGE_SHAPE, np.int32), dims=("y", "x")).rio.write_crs(
        CRS
    ).rio.write_transform(t).rio.to_raster(path)
    with rasterio.open(path) as src:
        assert src.index(t.c, t.f) == (0, 0)  # top-left corner: inside
        assert src.index(t.c + EDGE_RES, t.f - EDGE_RES) == (1, 1)  # interior corner: SE pixel
        assert src.index(t.c + 5, t.f - h * EDGE_RES) == (h, 0)  # bottom edge: outside
        assert src.index(t.c + w * EDGE_RES, t.f - 5) == (0, w)  # right edge: outside
        assert [int(v[0]) for v in src.sample([(t.c, t.f), (t.c + 5, t.f - h * EDGE_RES)])] == [
            1,
            0,  # (outside: rasterio fills 0, patchflow NaN)
        ]


@pytest.mark.parametrize("chunks", [None, 2])
@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_nearest_on_pixel_edges_is_gdal_whatever_the_orientation(
    edge_tif: Path, orientation: str, chunks: Any
) -> None:
    pts = _edge_points(edge_tif)
    h, w = EDGE_SHAPE
    with rasterio.open(edge_tif) as src:
        coords = list(zip(pts.geometry.x, pts.geometry.y, strict=True))
        expected = np.array([v[0] for v in src.sample(coords)], dtype=np.float64)
        index = np.array([src.index(x, y) for x, y in coords])
    inside = (index[:, 0] >= 0) & (index[:, 0] < h) & (index[:, 1] >= 0) & (index[:, 1] < w)
    expected[~inside] = np.nan  # rasterio's sample fills outside points with 0
    if "exact" in edge_tif.name:
        assert inside.sum() == h * w * 4  # the bottom and right outline are outside
    da = rioxarray.open_rasterio(edge_tif, chunks=chunks).squeeze("band", drop=True)
    got = sample_points(_oriented(da, orientation), pts)["band_1"].to_numpy()
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("chunks", [None, 2])
@pytest.mark.parametrize("orientation", ORIENTATIONS[1:])
def test_bilinear_on_pixel_edges_is_the_same_whatever_the_orientation(
    edge_tif: Path, orientation: str, chunks: Any
) -> None:
    pts = _edge_points(edge_tif)
    da = rioxarray.open_rasterio(edge_tif, chunks=chunks).squeeze("band", drop=True)
    north_up = sample_points(da, pts, method="bilinear")["band_1"].to_numpy()
    got = sample_points(_oriented(da, orientation), pts, method="bilinear")["band_1"]
    np.testing.assert_array_equal(got.to_numpy(), north_up)  # bit for bit
    if "exact" in edge_tif.name:
        data = np.asarray(da, np.float64)
        np.testing.assert_array_equal(north_up, _bilinear_on_grid(data, pts))


def _bilinear_on_grid(data: np.ndarray, pts: Any) -> np.ndarray:
    """:func:`_bilinear_reference` on the edge raster (one band, no nodata)."""
    return _bilinear_reference(data[None], pts, EDGE_TRANSFORM, nodata=None)[:, 0]


@pytest.mark.parametrize("orientation", ORIENTATIONS[1:])
def test_points_in_chips_on_pixel_edges_whatever_the_orientation(
    edge_tif: Path, orientation: str
) -> None:
    from patchflow.sampling.point_values import points_in_chips

    pts = _edge_points(edge_tif)
    h, w = EDGE_SHAPE
    size = (2, 3)
    anchors = np.array([[r, c] for r in range(h - size[0] + 1) for c in (0, 3)])
    da = rioxarray.open_rasterio(edge_tif).squeeze("band", drop=True)
    north_up = points_in_chips(da, pts, anchors, size=size)
    # the same chips, as windows of the flipped array
    flipped = anchors.copy()
    if orientation in ("y_ascending", "both"):
        flipped[:, 0] = h - size[0] - anchors[:, 0]
    if orientation in ("x_descending", "both"):
        flipped[:, 1] = w - size[1] - anchors[:, 1]
    got = points_in_chips(_oriented(da, orientation), pts, flipped, size=size)
    pairs = list(zip(north_up["chip"], north_up["point"], strict=True))
    assert pairs == list(zip(got["chip"], got["point"], strict=True))
    # every point GDAL puts inside the raster is in exactly as many chips as it should
    assert len(pairs) > 0
    for name, n in (("chip_row", size[0]), ("chip_col", size[1])):
        assert ((got[name] >= 0) & (got[name] <= n)).all()
