"""zonal_stats: exact per-polygon statistics block by block (issue 7), returned joined to
the polygons as a GeoDataFrame (issue 15)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import patchflow
from patchflow.errors import ParameterError
from patchflow.sampling import zonal_stats

gpd = pytest.importorskip("geopandas")


@pytest.fixture(scope="module")
def scene(scene_factory: Callable[..., xr.DataArray]) -> xr.DataArray:
    return scene_factory((700, 600), seed=4, chunks=128)


def random_polygons(scene: xr.DataArray, n: int, seed: int) -> list:
    from shapely.geometry import Polygon, box

    rng = np.random.default_rng(seed)
    t = scene.rio.transform()
    width, height = scene.sizes["x"] * t.a, scene.sizes["y"] * -t.e
    polys = []
    for k in range(n):
        # centres spread slightly beyond the scene so some polygons cross its edge
        cx = t.c + rng.uniform(-0.05, 1.05) * width
        cy = t.f - rng.uniform(-0.05, 1.05) * height
        if k % 10 == 0:  # axis-aligned boxes exactly on block boundaries
            polys.append(box(cx - 1280, cy - 640, cx + 1280, cy + 640))
            continue
        m = int(rng.integers(3, 10))
        ang = np.sort(rng.uniform(0, 2 * np.pi, m))
        rad = rng.uniform(30, 1800, m)
        polys.append(Polygon(np.c_[cx + rad * np.cos(ang), cy + rad * np.sin(ang)]))
    polys.append(box(0, 0, 10, 10))  # far outside the scene
    return polys


def brute_zonal(values: np.ndarray, transform, geoms: list, nodata=None) -> dict:
    import rasterio.features

    out: dict = {s: [] for s in ("count", "mean", "std", "min", "max", "median", "sum")}
    for geom in geoms:
        mask = rasterio.features.rasterize(
            [(geom, 1)], out_shape=values.shape[-2:], transform=transform, fill=0, dtype="uint8"
        ).astype(bool)
        rows = {s: [] for s in out}
        for band in values.reshape(-1, *values.shape[-2:]):
            v = band[mask].astype(np.float64)
            v = v[np.isfinite(v)]
            if nodata is not None:
                v = v[v != nodata]
            rows["count"].append(v.size)
            rows["sum"].append(v.sum())
            for s, f in [("mean", np.mean), ("std", np.std), ("min", np.min), ("max", np.max),
                         ("median", np.median)]:  # fmt: skip
                rows[s].append(f(v) if v.size else np.nan)
        for s in out:
            out[s].append(rows[s])
    return {s: np.array(v) for s, v in out.items()}


def test_zonal_stats_equal_brute_force(scene) -> None:
    values = scene.values.astype(np.float32)
    values[:, 300:360, 50:400] = np.nan  # a nodata stripe crossing blocks
    values[0, 500:520, 500:520] = 0  # nodata value in one band only
    raster = scene.copy(data=da.from_array(values, chunks=(2, 128, 128))).rio.write_nodata(0)
    geoms = random_polygons(scene, 70, seed=11)
    gdf = gpd.GeoDataFrame({"name": range(len(geoms))}, geometry=geoms, crs=scene.rio.crs)
    gdf.index = gdf.index * 10 + 5
    df = zonal_stats(raster, gdf, stats=("mean", "std", "min", "max", "count", "median", "sum"))
    assert df.index.equals(gdf.index)
    ref = brute_zonal(values, scene.rio.transform(), geoms, nodata=0)
    assert (ref["count"][:, 0] > 0).sum() >= 50
    # several polygons span more than one 128-px block, some cross the scene edge
    t = scene.rio.transform()
    bounds = np.array([g.bounds for g in geoms])
    cols = (bounds[:, [0, 2]] - t.c) / t.a
    assert ((cols[:, 0] // 128) != (cols[:, 1] // 128)).sum() >= 20
    assert ((cols[:, 0] < 0) | (cols[:, 1] > 600)).sum() >= 3
    for b, band in enumerate(["red", "nir"]):
        assert np.array_equal(df[f"{band}_count"].values, ref["count"][:, b])
        for s in ("mean", "std", "min", "max", "median", "sum"):
            np.testing.assert_allclose(df[f"{band}_{s}"].values, ref[s][:, b], rtol=1e-9, atol=1e-9)
    assert df.loc[gdf.index[-1], "red_count"] == 0 and np.isnan(df.loc[gdf.index[-1], "red_mean"])


def test_zonal_stats_reprojects_and_is_lazy(scene) -> None:
    geoms = random_polygons(scene, 12, seed=2)[:-1]
    gdf = gpd.GeoDataFrame(geometry=geoms, crs=scene.rio.crs)
    red = scene.sel(band="red", drop=True)
    expect = zonal_stats(red, gdf, stats=["count", "mean"])
    # 2-D raster: plain stat names, after the polygons' own columns
    assert list(expect.columns) == ["geometry", "count", "mean"]
    ref = brute_zonal(red.values, scene.rio.transform(), geoms)
    assert np.array_equal(expect["count"].values, ref["count"][:, 0])
    pending = zonal_stats(red, gdf.to_crs("EPSG:4326"), stats=["count", "mean"], compute=False)
    got = pending.compute()
    # reprojected polygons are no longer exactly the same shapes: counts agree closely
    assert (
        np.abs(got["count"].values - expect["count"].values).max() <= 0.02 * expect["count"].max()
    )
    with pytest.raises(ParameterError, match="unknown stats"):
        zonal_stats(red, gdf, stats=["mode"])


def test_polygons_with_a_crs_on_a_raster_without_one_are_refused(scene) -> None:
    """Polygons declared in EPSG:4326 cannot be placed on a raster without a CRS: taking
    their degrees as the raster's metres gave count 0 (or another place's pixels) with
    no error. Refused, as sample_points refuses points on such a raster; polygons
    without a CRS stay in the raster's coordinates."""
    from shapely.geometry import box

    from patchflow.sampling import polygon_chips

    red = scene.sel(band="red", drop=True)
    t = scene.rio.transform()
    square = box(t.c, t.f - 100 * -t.e, t.c + 100 * t.a, t.f)
    bare = red.drop_vars("spatial_ref")
    bare.attrs.pop("crs", None)
    assert bare.rio.crs is None
    gdf = gpd.GeoDataFrame(geometry=[square], crs=scene.rio.crs).to_crs("EPSG:4326")
    with pytest.raises(ParameterError, match="raster has no CRS"):
        zonal_stats(bare, gdf, stats=["count"])
    with pytest.raises(ParameterError, match="raster has no CRS"):
        zonal_stats(bare, gdf.geometry, stats=["count"])
    with pytest.raises(ParameterError, match="raster has no CRS"):
        list(polygon_chips(bare, gdf))
    # no CRS on either side: the polygons are taken in the raster's coordinates
    same = zonal_stats(bare, [square], stats=["count"])
    assert same["count"].tolist() == [100 * 100]


# --------------------------------------------------------------------------- GeoDataFrame out


def test_zonal_stats_joins_the_input_geodataframe(scene) -> None:
    geoms = random_polygons(scene, 8, seed=5)
    gdf = gpd.GeoDataFrame(
        {"name": [f"field-{k}" for k in range(len(geoms))], "crop": [*"abcabcab", "x"]},
        geometry=geoms,
        crs=scene.rio.crs,
        index=[90, 10, 50, 30, 70, 20, 80, 60, 40],  # not sorted: order must be kept
    )
    out = zonal_stats(scene, gdf, stats=["count", "mean"])
    assert isinstance(out, gpd.GeoDataFrame)
    assert list(out.columns) == [
        "name", "crop", "geometry", "red_count", "red_mean", "nir_count", "nir_mean"
    ]  # fmt: skip
    assert out.index.equals(gdf.index)
    assert out.geometry.name == "geometry" and out.crs == gdf.crs
    assert out.geometry.geom_equals(gdf.geometry).all()
    assert out["name"].tolist() == gdf["name"].tolist()
    ref = brute_zonal(scene.values, scene.rio.transform(), geoms)
    assert np.array_equal(out["nir_count"].to_numpy(), ref["count"][:, 1])
    np.testing.assert_allclose(out["red_mean"].to_numpy(), ref["mean"][:, 0], rtol=1e-12)
    assert "red_count" not in gdf.columns  # the input is not modified


def test_zonal_stats_keeps_the_input_crs_and_geometry_column(scene) -> None:
    geoms = random_polygons(scene, 5, seed=8)[:-1]
    local = gpd.GeoDataFrame({"id": range(5)}, geometry=geoms, crs=scene.rio.crs)
    wgs84 = local.to_crs("EPSG:4326").rename_geometry("outline")
    red = scene.sel(band="red", drop=True)
    out = zonal_stats(red, wgs84, stats=["count"])
    # statistics in the raster's CRS, rows as given: geometry still in EPSG:4326
    assert out.crs.to_epsg() == 4326 and out.geometry.name == "outline"
    assert out.geometry.geom_equals(wgs84.geometry).all()
    assert list(out.columns) == ["id", "outline", "count"]
    direct = zonal_stats(red, local, stats=["count"])
    assert np.abs(out["count"] - direct["count"]).max() <= 0.02 * direct["count"].max()


def test_zonal_stats_of_plain_geometries_is_in_the_raster_crs(scene) -> None:
    geoms = random_polygons(scene, 5, seed=3)
    out = zonal_stats(scene, geoms, stats=["count"])
    assert isinstance(out, gpd.GeoDataFrame)
    assert list(out.columns) == ["geometry", "red_count", "nir_count"]
    assert out.crs == scene.rio.crs
    assert out.index.equals(gpd.pd.RangeIndex(len(geoms)))
    assert [g.wkb for g in out.geometry] == [g.wkb for g in geoms]


def test_polygons_that_miss_the_raster_altogether_are_said(scene) -> None:
    """Longitude/latitude polygons without a CRS on a UTM raster land on no pixel at all:
    every row would be count 0 and NaN without a word; a warning says so and how to fix
    it. Polygons of which only some miss the raster say nothing (that is the data)."""
    import warnings

    from shapely.geometry import box

    lonlat = [box(-122.5, 37.7, -122.4, 37.8), box(-122.3, 37.6, -122.2, 37.7)]
    with pytest.warns(patchflow.PatchflowWarning, match="none of the 2 polygons") as caught:
        out = zonal_stats(scene, lonlat, stats=["count"], compute=True)
    said = [str(w.message) for w in caught if issubclass(w.category, patchflow.PatchflowWarning)]
    assert len(said) == 1 and "set_crs" in said[0]
    assert (out["red_count"] == 0).all()
    with pytest.warns(patchflow.PatchflowWarning, match="none of the 2 polygons"):
        assert list(patchflow.sampling.polygon_chips(scene, lonlat)) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error", patchflow.PatchflowWarning)
        zonal_stats(scene, random_polygons(scene, 5, seed=3), stats=["count"])


def test_zonal_stats_of_a_geoseries_keeps_its_index(scene) -> None:
    geoms = random_polygons(scene, 4, seed=6)
    series = gpd.GeoSeries(geoms, index=list("pqrst"), crs=scene.rio.crs)
    out = zonal_stats(scene, series, stats=["max"])
    assert list(out.index) == list("pqrst")
    assert list(out.columns) == ["geometry", "red_max", "nir_max"]
    assert out.crs == series.crs


def test_zonal_stats_with_repeated_index_labels(scene) -> None:
    geoms = random_polygons(scene, 4, seed=9)[:3]
    gdf = gpd.GeoDataFrame({"k": [1, 2, 3]}, geometry=geoms, crs=scene.rio.crs, index=[7, 7, 7])
    out = zonal_stats(scene, gdf, stats=["count"])
    ref = brute_zonal(scene.values, scene.rio.transform(), geoms)
    assert list(out.index) == [7, 7, 7] and out["k"].tolist() == [1, 2, 3]
    assert np.array_equal(out["red_count"].to_numpy(), ref["count"][:, 0])


def test_zonal_stats_refuses_to_overwrite_a_column(scene) -> None:
    geoms = random_polygons(scene, 3, seed=1)
    gdf = gpd.GeoDataFrame({"red_mean": [1.0] * len(geoms)}, geometry=geoms, crs=scene.rio.crs)
    with pytest.raises(ParameterError, match=r"already have the column\(s\) \['red_mean'\]"):
        zonal_stats(scene, gdf, stats=["mean"])


def test_zonal_stats_lazy_result_and_key_depend_on_the_columns(scene) -> None:
    geoms = random_polygons(scene, 4, seed=12)
    one = gpd.GeoDataFrame({"tag": [*"abcd", "e"]}, geometry=geoms, crs=scene.rio.crs)
    two = one.assign(tag=list("vwxyz"))
    lazy_one = zonal_stats(scene, one, stats=["count"], compute=False)
    lazy_two = zonal_stats(scene, two, stats=["count"], compute=False)
    # same polygons, other columns: another table, so another key (no stale cache hit)
    assert lazy_one.key != lazy_two.key
    got = lazy_two.compute()
    assert isinstance(got, gpd.GeoDataFrame) and got["tag"].tolist() == list("vwxyz")
    assert got.drop(columns="tag").equals(lazy_one.compute().drop(columns="tag"))


def test_accessor_zonal_stats_is_a_geodataframe(scene) -> None:
    geoms = random_polygons(scene, 3, seed=4)
    gdf = gpd.GeoDataFrame({"id": [1, 2, 3, 4]}, geometry=geoms, crs=scene.rio.crs)
    out = scene.patch.zonal_stats(gdf, ["mean"])
    expect = patchflow.zonal_stats(scene, gdf, ["mean"])
    assert isinstance(out, gpd.GeoDataFrame) and out.equals(expect)


def _numbered_tif(path: Any, t: Any, h: int, w: int) -> np.ndarray:
    """A north-up int32 GeoTIFF (EPSG:32610, transform ``t``) whose pixels are 1, 2, …"""
    data = np.arange(1, h * w + 1, dtype=np.int32).reshape(h, w)
    ys, xs = t.f + t.e * (np.arange(h) + 0.5), t.c + t.a * (np.arange(w) + 0.5)
    xr.DataArray(data, dims=("y", "x"), coords={"y": ys, "x": xs}).rio.write_crs(
        "EPSG:32610"
    ).rio.write_transform(t).rio.to_raster(path)
    return data


@pytest.mark.parametrize("all_touched", [False, True])
@pytest.mark.parametrize("chunks", [None, 1, 2, 3, 4, 5, 7, {"y": 3, "x": 5}])
@pytest.mark.parametrize("orientation", ["north_up", "y_ascending", "x_descending", "both"])
def test_pixel_centres_on_polygon_outlines_whatever_the_orientation(
    tmp_path, orientation: str, all_touched: bool, chunks: int | dict[str, int] | None
) -> None:
    """A pixel centre exactly on a polygon's outline (with ``all_touched``: an outline
    through pixel corners) is in or out as GDAL's rasterizer decides on the whole north-up
    raster, whichever way the array's y and x coordinates run and however it is chunked
    (rasterized block by block, all_touched counted 32 or 33 pixels instead of 34)."""
    import rasterio
    import rasterio.features
    import rioxarray
    from affine import Affine
    from shapely.geometry import Polygon, box

    t, (h, w) = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_200_000.0), (8, 9)
    path = tmp_path / "zones.tif"
    data = _numbered_tif(path, t, h, w)
    polys = [
        box(500_015, 4_199_925, 500_055, 4_199_965),  # outline through pixel centres
        box(500_010, 4_199_920, 500_050, 4_199_970),  # outline along pixel edges
        Polygon([(500_015, 4_199_985), (500_075, 4_199_985), (500_015, 4_199_925)]),
    ]
    gdf = gpd.GeoDataFrame(geometry=polys, crs="EPSG:32610")
    with rasterio.open(path) as src:  # GDAL on the north-up file: the reference
        want = []
        for poly in polys:
            mask = rasterio.features.geometry_mask(
                [poly], (h, w), src.transform, all_touched=all_touched, invert=True
            )
            want.append([float(mask.sum()), float(data[mask].sum())])
    da = rioxarray.open_rasterio(path, chunks=chunks).squeeze("band", drop=True)
    if orientation in ("y_ascending", "both"):
        da = da.isel(y=slice(None, None, -1))
    if orientation in ("x_descending", "both"):
        da = da.isel(x=slice(None, None, -1))
    got = zonal_stats(da, gdf, stats=["count", "sum"], all_touched=all_touched)
    assert got[["count", "sum"]].to_numpy().tolist() == want
    # polygon_chips masks the same pixels
    from patchflow.sampling.zonal import polygon_chips

    counts = [float(chip.mask.sum()) for chip in polygon_chips(da, gdf, all_touched=all_touched)]
    assert counts == [c for c, _ in want]


def _lattice_polygon(data: Any, h: int, w: int) -> Any:
    """A polygon (box, triangle or quadrilateral, possibly reaching past the scene) whose
    vertices lie on the quarter-pixel lattice: outlines through pixel corners, along pixel
    edges and through pixel centres, in pixel units of the north-up grid (col, row)."""
    from shapely.geometry import Polygon, box

    coord = st.integers(-4, 4 * max(h, w) + 4).map(lambda v: v / 4)
    if data.draw(st.booleans(), label="box"):
        xs = sorted(data.draw(st.lists(coord, min_size=2, max_size=2, unique=True), label="xs"))
        ys = sorted(data.draw(st.lists(coord, min_size=2, max_size=2, unique=True), label="ys"))
        return box(xs[0], ys[0], xs[1], ys[1])
    points = data.draw(
        st.lists(st.tuples(coord, coord), min_size=3, max_size=4, unique=True), label="ring"
    )
    poly = Polygon(points)
    assume(poly.is_valid and poly.area > 0)
    return poly


@settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_polygon_pixels_do_not_depend_on_the_chunking(data: Any) -> None:
    """The pixels of a polygon whose outline runs through pixel corners, edges or centres
    are the same for every chunking, every orientation and both rasterization rules; where
    the polygon's window starts at the scene's top-left pixel (GDAL then draws it in the
    whole raster's own frame) they are GDAL's on the whole north-up raster, pixel for
    pixel."""
    import rasterio.features
    import shapely
    from affine import Affine

    from patchflow._xr import georef
    from patchflow.plan.grid import north_up
    from patchflow.sampling.zonal import polygon_chips

    h, w = data.draw(st.integers(3, 14), label="h"), data.draw(st.integers(3, 14), label="w")
    size = data.draw(st.sampled_from([10.0, 30.0, 0.1, 0.25, 0.0002695]), label="pixel size")
    x0 = data.draw(st.sampled_from([500_000.0, 0.0, 123_456.7, -180.0]), label="x0")
    y0 = data.draw(st.sampled_from([4_200_000.0, 5_000_000.0, 47.1, 90.0]), label="y0")
    t = Affine(size, 0.0, x0, 0.0, -size, y0)
    in_pixels = _lattice_polygon(data, h, w)
    poly = shapely.transform(
        in_pixels, lambda xy: np.column_stack([t.c + t.a * xy[:, 0], t.f + t.e * xy[:, 1]])
    )
    all_touched = data.draw(st.booleans(), label="all_touched")
    values = np.arange(1, h * w + 1, dtype=np.float64).reshape(h, w)
    ys, xs = t.f + t.e * (np.arange(h) + 0.5), t.c + t.a * (np.arange(w) + 0.5)
    north = xr.DataArray(values, dims=("y", "x"), coords={"y": ys, "x": xs})
    north = north.rio.write_crs("EPSG:32610").rio.write_transform(t)
    orientation = data.draw(st.sampled_from(["north_up", "y_ascending", "x_descending", "both"]))
    arr = north
    if orientation in ("y_ascending", "both"):
        arr = arr.isel(y=slice(None, None, -1))
    if orientation in ("x_descending", "both"):
        arr = arr.isel(x=slice(None, None, -1))

    def pixels(chunks: Any) -> list[float]:
        got = zonal_stats(
            arr if chunks is None else arr.chunk(chunks),
            [poly],
            stats=["count", "sum"],
            all_touched=all_touched,
        )
        return got[["count", "sum"]].to_numpy()[0].tolist()

    whole = pixels(None)
    cy, cx = data.draw(st.integers(1, h), label="chunk y"), data.draw(st.integers(1, w), label="x")
    assert pixels({"y": cy, "x": cx}) == whole
    assert pixels({"y": 1, "x": 1}) == whole
    chips = list(polygon_chips(arr, [poly], all_touched=all_touched, skip_empty=False))
    assert float(chips[0].mask.sum()) == whole[0]
    minx, miny = in_pixels.bounds[:2]
    if math.floor(minx) - 1 <= 0 and math.floor(miny) - 1 <= 0:  # the whole raster's frame
        # the array's own georeference read north-up (a flipped array's, from its
        # coordinates, can differ from t in the last bit)
        frame = north_up(georef(arr)[0], (h, w))[0]
        mask = rasterio.features.geometry_mask(
            [poly], (h, w), frame, all_touched=all_touched, invert=True
        )
        assert whole == [float(mask.sum()), float(values[mask].sum())]


@pytest.mark.parametrize("all_touched", [False, True])
def test_polygons_larger_than_the_mask_bound_are_drawn_per_block(
    tmp_path, monkeypatch: pytest.MonkeyPatch, all_touched: bool
) -> None:
    """A polygon whose window exceeds ``MASK_PIXELS`` (an AOI over a large scene) is drawn
    on each block's window plus a margin, so memory follows the block; with outlines off
    the pixel lattice the pixels are GDAL's on the whole raster, for every chunking."""
    import rasterio.features
    import rioxarray
    from affine import Affine
    from shapely.geometry import Polygon

    from patchflow.engine import chip_kernels

    t, (h, w) = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_200_000.0), (40, 45)
    path = tmp_path / "aoi.tif"
    data = _numbered_tif(path, t, h, w)
    rng = np.random.default_rng(5)
    polys = []
    for _ in range(4):  # star-ish polygons over most of the scene, vertices off-lattice
        angles = np.sort(rng.uniform(0, 2 * np.pi, 9))
        radii = rng.uniform(60, 230, 9)
        polys.append(
            Polygon(
                zip(
                    500_225 + radii * np.cos(angles),
                    4_199_800 + radii * np.sin(angles),
                    strict=True,
                )
            )
        )
    gdf = gpd.GeoDataFrame(geometry=polys, crs="EPSG:32610")
    want = []
    for poly in polys:
        mask = rasterio.features.geometry_mask(
            [poly], (h, w), t, all_touched=all_touched, invert=True
        )
        want.append([float(mask.sum()), float(data[mask].sum())])
    drawn: list[tuple[int, ...]] = []
    rasterize = chip_kernels.require_geo().rasterize

    def recording(shapes: Any, out_shape: Any, **kw: Any) -> Any:
        drawn.append(tuple(out_shape))
        return rasterize(shapes, out_shape=out_shape, **kw)

    monkeypatch.setattr(chip_kernels, "MASK_PIXELS", 100)
    monkeypatch.setattr(chip_kernels.require_geo(), "rasterize", recording)
    for chunks in (None, 7, {"y": 9, "x": 16}):
        da = rioxarray.open_rasterio(path, chunks=chunks).squeeze("band", drop=True)
        drawn.clear()
        got = zonal_stats(da, gdf, stats=["count", "sum"], all_touched=all_touched)
        assert got[["count", "sum"]].to_numpy().tolist() == want
        if chunks == 7:  # no mask beyond a block and its margins (the polygons span ~40)
            edge = 7 + 2 * chip_kernels.MASK_MARGIN
            assert drawn and max(max(shape) for shape in drawn) <= edge
