"""zonal_stats by h3 cell (issue 18): exact per-cell statistics block by block, checked
against a pandas groupby of every pixel's own h3 cell; and ``output="xvec"`` for cells and
polygons."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from dask.utils import key_split

from patchflow.engine import graph
from patchflow.engine.chip_kernels import weighted_median
from patchflow.errors import ParameterError
from patchflow.sampling import zonal_stats

gpd = pytest.importorskip("geopandas")
h3 = pytest.importorskip("h3")
pd = pytest.importorskip("pandas")

STATS = ("count", "sum", "mean", "std", "min", "max")


def pixel_cells(raster: xr.DataArray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """``(h3 string cell, (rows, cols))`` of every pixel centre, computed independently:
    rasterio's affine, pyproj, and h3's string API one pixel at a time."""
    from pyproj import Transformer

    t = raster.rio.transform()
    h, w = raster.shape[-2:]
    rows, cols = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    xs = t.c + t.a * cols.ravel() + t.b * rows.ravel()
    ys = t.f + t.d * cols.ravel() + t.e * rows.ravel()
    lon, lat = Transformer.from_crs(raster.rio.crs, "EPSG:4326", always_xy=True).transform(xs, ys)
    cells = np.array(
        [h3.latlng_to_cell(la, lo, resolution) for la, lo in zip(lat, lon, strict=True)]
    )
    return cells, np.stack([rows.ravel() - 0.5, cols.ravel() - 0.5]).astype(int)


def brute_h3(values: np.ndarray, cells: np.ndarray, nodata: float | None) -> pd.DataFrame:
    """Per (cell, band) statistics with pandas: invalid pixels become NaN, which
    ``groupby().agg`` skips (all-invalid cells: count 0, sum 0, NaN otherwise)."""
    frames = []
    for band in values.reshape(-1, values.shape[-2] * values.shape[-1]).astype(np.float64):
        v = band.copy()
        if nodata is not None:
            v[v == nodata] = np.nan
        df = pd.DataFrame({"cell": cells, "v": v})
        frames.append(
            df.groupby("cell")["v"].agg(
                count="count",
                sum="sum",
                mean="mean",
                std=lambda x: x.std(ddof=0),
                min="min",
                max="max",
                median="median",
            )
        )
    return pd.concat(frames, axis=1, keys=range(len(frames)))


def check_against(got: Any, ref: pd.DataFrame, labels: list[str] | None, stats=STATS) -> None:
    assert isinstance(got, gpd.GeoDataFrame) and got.crs.to_epsg() == 4326
    expect_cells = sorted(ref.index, key=h3.str_to_int)
    assert got["h3_cell"].tolist() == expect_cells  # sorted by cell id, one row per cell
    ref = ref.loc[expect_cells]
    for b in range(len(labels) if labels else 1):
        for s in stats:
            col = s if labels is None else f"{labels[b]}_{s}"
            want = ref[(b, s)].to_numpy()
            if s == "count":
                assert np.array_equal(got[col].to_numpy(), want.astype(np.int64)), col
            else:
                np.testing.assert_allclose(got[col].to_numpy(), want, rtol=1e-9, atol=1e-9)


@pytest.fixture(scope="module")
def utm_scene(scene_factory: Callable[..., xr.DataArray]) -> xr.DataArray:
    """float32 UTM scene in 64-px blocks, a NaN stripe and nodata 0 in the red band only."""
    scene = scene_factory((230, 210), seed=3)
    values = scene.values.astype(np.float32)
    values[:, 100:112, 20:150] = np.nan
    values[0, 150:190, 150:200] = 0
    return scene.copy(data=da.from_array(values, chunks=(2, 64, 64))).rio.write_nodata(0)


@pytest.fixture(scope="module")
def utm_cells(utm_scene: xr.DataArray) -> tuple[np.ndarray, np.ndarray]:
    return pixel_cells(utm_scene, 9)


def test_h3_stats_equal_a_pandas_groupby_across_blocks(utm_scene, utm_cells) -> None:
    cells, (rows, cols) = utm_cells
    blocks = pd.DataFrame({"cell": cells, "block": (rows // 64) * 10 + cols // 64})
    spans = blocks.groupby("cell")["block"].nunique()
    assert (spans > 1).sum() >= 10  # many cells span several blocks
    values = utm_scene.values
    got = zonal_stats(utm_scene, h3_resolution=9, stats=STATS)
    assert list(got.columns) == [
        "h3_cell", *(f"{b}_{s}" for b in ("red", "nir") for s in STATS), "geometry"
    ]  # fmt: skip
    assert isinstance(got.index, pd.RangeIndex)
    check_against(got, brute_h3(values, cells, nodata=0), ["red", "nir"])
    # nodata is per band: the red band lost pixels the nir band kept
    assert got["red_count"].sum() < got["nir_count"].sum() == np.isfinite(values[1]).sum()


def test_h3_hexagons_are_the_cells_in_lon_lat(utm_scene) -> None:
    got = zonal_stats(utm_scene, h3_resolution=8, stats=["count"])
    for cell, hexagon in zip(got["h3_cell"], got.geometry, strict=True):
        lat, lng = h3.cell_to_latlng(cell)
        assert hexagon.is_valid and len(hexagon.exterior.coords) == 7
        assert abs(hexagon.centroid.x - lng) < 1e-4 and abs(hexagon.centroid.y - lat) < 1e-4
        corners = [(round(x, 9), round(y, 9)) for x, y in hexagon.exterior.coords[:-1]]
        assert corners == [(round(b, 9), round(a, 9)) for a, b in h3.cell_to_boundary(cell)]


def test_h3_single_band_and_nodata_argument(utm_scene, utm_cells) -> None:
    cells, _ = utm_cells
    nir = utm_scene.sel(band="nir", drop=True)
    got = zonal_stats(nir, h3_resolution=9, stats=["count", "mean"], nodata=None)
    assert list(got.columns) == ["h3_cell", "count", "mean", "geometry"]
    check_against(got, brute_h3(nir.values, cells, nodata=None), None, ("count", "mean"))
    # an explicit nodata wins over the raster's
    red = utm_scene.sel(band="red", drop=True)
    explicit = zonal_stats(red, h3_resolution=9, stats=["count", "max"], nodata=4000)
    check_against(explicit, brute_h3(red.values, cells, nodata=4000), None, ("count", "max"))


def test_h3_cells_without_valid_pixels_are_kept(scene_factory) -> None:
    scene = scene_factory((120, 100), seed=1).astype(np.float64)
    values = scene.values.copy()
    values[:, :60, :] = np.nan  # the northern half: many cells with no valid pixel
    raster = scene.copy(data=da.from_array(values, chunks=(2, 40, 40)))
    got = zonal_stats(raster, h3_resolution=10, stats=["count", "sum", "mean", "std", "median"])
    cells, _ = pixel_cells(raster, 10)
    assert got["h3_cell"].tolist() == sorted(set(cells), key=h3.str_to_int)
    empty = got[got["red_count"] == 0]
    assert len(empty) >= 3
    assert (empty["red_sum"] == 0).all()
    assert empty[["red_mean", "red_std", "red_median"]].isna().all().all()


def test_h3_on_a_geographic_raster(scene_factory) -> None:
    rng = np.random.default_rng(5)
    values = rng.normal(100, 20, (3, 150, 170)).astype(np.float32)
    values[2, 10:30, 40:90] = -9999
    raster = (
        xr.DataArray(
            da.from_array(values, chunks=(3, 50, 60)),
            dims=("band", "y", "x"),
            coords={
                "band": [1, 2, 3],
                "y": 50.3 - 0.002 * (np.arange(150) + 0.5),
                "x": 10.1 + 0.002 * (np.arange(170) + 0.5),
            },
        )
        .rio.write_crs("EPSG:4326")
        .rio.write_nodata(-9999)
    )
    cells, _ = pixel_cells(raster, 7)
    got = zonal_stats(raster, h3_resolution=7, stats=STATS)
    assert len(got) >= 5
    check_against(got, brute_h3(values, cells, nodata=-9999), ["band_1", "band_2", "band_3"])


def test_h3_median_exact_in_one_block_and_weighted_across_blocks(utm_scene, utm_cells) -> None:
    cells, (rows, cols) = utm_cells
    one_block = utm_scene.chunk({"y": -1, "x": -1})
    exact = zonal_stats(one_block, h3_resolution=9, stats=["median"])
    check_against(exact, brute_h3(utm_scene.values, cells, 0), ["red", "nir"], ("median",))

    got = zonal_stats(utm_scene, h3_resolution=9, stats=["median", "count"]).set_index("h3_cell")
    red = utm_scene.values[0].ravel().astype(np.float64)
    red[(red == 0) | ~np.isfinite(red)] = np.nan
    per_block = (
        pd.DataFrame({"cell": cells, "block": (rows // 64) * 10 + cols // 64, "v": red})
        .dropna()
        .groupby(["cell", "block"])["v"]
        .agg(["median", "count"])
    )
    spans = 0
    for cell, part in per_block.groupby(level="cell"):
        median = got.loc[cell, "red_median"]
        assert part["median"].min() <= median <= part["median"].max()
        # the documented approximation: count-weighted median of the block medians
        assert median == np.median(np.repeat(part["median"], part["count"]))
        spans += len(part) > 1
        if len(part) == 1:
            assert median == part["median"].iloc[0]
    assert spans >= 10


def test_weighted_median_equals_the_median_of_repeated_values() -> None:
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 40, 300)
    values = rng.integers(0, 20, 300).astype(np.float64)  # ties on purpose
    weights = rng.integers(0, 5, 300)
    got = weighted_median(42, idx, values, weights)
    for k in range(42):
        sel = (idx == k) & (weights > 0)
        want = np.median(np.repeat(values[sel], weights[sel])) if sel.any() else np.nan
        np.testing.assert_equal(got[k], want)


def test_h3_lazy_graph_computes_nothing_and_has_readable_keys(dask_computes, utm_scene) -> None:
    with dask_computes(max_computes=0):
        pending = zonal_stats(utm_scene, h3_resolution=9, stats=["mean"], compute=False)
        again = zonal_stats(utm_scene, h3_resolution=9, stats=["mean"], compute=False)
    assert pending.key == again.key
    assert key_split(pending.key) == graph.H3_ZONAL_TABLE_PREFIX
    layers = {key_split(k) for k in pending.__dask_graph__().keys()}
    assert {graph.H3_ZONAL_PREFIX, graph.H3_ZONAL_MERGE_PREFIX} <= layers
    blocks = [k for k in pending.__dask_graph__() if key_split(k) == graph.H3_ZONAL_PREFIX]
    assert len(blocks) == 4 * 4  # one task per chunk
    other = zonal_stats(utm_scene, h3_resolution=8, stats=["mean"], compute=False)
    assert other.key != pending.key
    got = pending.compute()
    assert got.equals(zonal_stats(utm_scene, h3_resolution=9, stats=["mean"]))


def test_h3_parameter_errors(utm_scene, scene_factory) -> None:
    from shapely.geometry import box

    poly = [box(0, 0, 1, 1)]
    with pytest.raises(ParameterError, match=r"exactly one of gdf .* and h3_resolution"):
        zonal_stats(utm_scene, poly, h3_resolution=9)
    with pytest.raises(ParameterError, match=r"exactly one of gdf .* and h3_resolution"):
        zonal_stats(utm_scene)
    for bad in (-1, 16, 2.5, True, "9"):
        with pytest.raises(ParameterError, match="h3_resolution must be an integer 0 … 15"):
            zonal_stats(utm_scene, h3_resolution=bad)  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="all_touched"):
        zonal_stats(utm_scene, h3_resolution=9, all_touched=True)
    with pytest.raises(ParameterError, match="unknown output"):
        zonal_stats(utm_scene, h3_resolution=9, output="xarray")  # type: ignore[arg-type]
    scene = scene_factory((64, 64))
    no_crs = xr.DataArray(
        scene.values, dims=scene.dims, coords={d: scene[d].values for d in scene.dims}
    )
    assert no_crs.rio.crs is None and no_crs.rio.transform() == scene.rio.transform()
    with pytest.raises(ParameterError, match="needs the raster's CRS"):
        zonal_stats(no_crs, h3_resolution=9)


# --------------------------------------------------------------------------- xvec output

xvec = pytest.importorskip("xvec")


def test_h3_xvec_output_matches_the_geodataframe(utm_scene) -> None:
    stats = ("count", "mean", "std", "median")
    frame = zonal_stats(utm_scene, h3_resolution=9, stats=stats)
    ds = zonal_stats(utm_scene, h3_resolution=9, stats=stats, output="xvec")
    assert isinstance(ds, xr.Dataset)
    assert list(ds.xvec.geom_coords) == ["geometry"]
    assert ds.xindexes["geometry"].crs.to_epsg() == 4326
    assert ds["h3_cell"].dims == ("geometry",)
    assert ds["h3_cell"].values.tolist() == frame["h3_cell"].tolist()
    assert list(ds["band"].values) == ["red", "nir"]
    for s in stats:
        assert ds[s].dims == ("geometry", "band")
        for band in ("red", "nir"):
            np.testing.assert_array_equal(
                ds[s].sel(band=band).values, frame[f"{band}_{s}"].to_numpy()
            )
    assert all(a.equals(b) for a, b in zip(ds["geometry"].values, frame.geometry, strict=True))


def test_h3_xvec_output_of_a_2d_raster_is_lazy_too(dask_computes, utm_scene) -> None:
    red = utm_scene.sel(band="red", drop=True)
    with dask_computes(max_computes=0):
        pending = zonal_stats(red, h3_resolution=9, stats=["max"], output="xvec", compute=False)
    ds = pending.compute()
    frame = zonal_stats(red, h3_resolution=9, stats=["max"])
    assert ds["max"].dims == ("geometry",)
    np.testing.assert_array_equal(ds["max"].values, frame["max"].to_numpy())
    assert pending.key != zonal_stats(red, h3_resolution=9, stats=["max"], compute=False).key


def test_polygon_xvec_output_keeps_columns_and_crs(utm_scene) -> None:
    from shapely.geometry import box

    t = utm_scene.rio.transform()
    geoms = [box(t.c + 100 * k, t.f - 900, t.c + 100 * k + 700, t.f - 100 * k) for k in range(6)]
    gdf = gpd.GeoDataFrame(
        {"name": [f"f{k}" for k in range(6)], "area": [g.area for g in geoms]},
        geometry=geoms,
        crs=utm_scene.rio.crs,
        index=[5, 3, 1, 4, 2, 0],
    ).to_crs("EPSG:3857")
    stats = ("count", "mean", "median")
    frame = zonal_stats(utm_scene, gdf, stats=stats)
    ds = zonal_stats(utm_scene, gdf, stats=stats, output="xvec")
    assert list(ds.xvec.geom_coords) == ["geometry"]
    assert ds.xindexes["geometry"].crs.to_epsg() == 3857  # the polygons' own CRS
    assert ds["name"].values.tolist() == gdf["name"].tolist()
    assert ds["area"].dims == ("geometry",)
    for s in stats:
        for band in ("red", "nir"):
            np.testing.assert_array_equal(
                ds[s].sel(band=band).values, frame[f"{band}_{s}"].to_numpy()
            )
    assert all(a.equals(b) for a, b in zip(ds["geometry"].values, gdf.geometry, strict=True))
    red = utm_scene.sel(band="red", drop=True)
    one = zonal_stats(red, gdf, stats=["sum"], output="xvec")
    assert one["sum"].dims == ("geometry",)
    np.testing.assert_array_equal(one["sum"].values, zonal_stats(red, gdf, stats=["sum"])["sum"])


def test_polygon_xvec_output_refuses_clashing_columns(utm_scene) -> None:
    from shapely.geometry import box

    t = utm_scene.rio.transform()
    gdf = gpd.GeoDataFrame(
        {"band": [1]}, geometry=[box(t.c, t.f - 500, t.c + 500, t.f)], crs=utm_scene.rio.crs
    )
    with pytest.raises(ParameterError, match=r"column\(s\) \['band'\] would clash"):
        zonal_stats(utm_scene, gdf, stats=["mean"], output="xvec")
    # the GeoDataFrame output has no such clash
    assert "red_mean" in zonal_stats(utm_scene, gdf, stats=["mean"]).columns


def test_hexagons_across_the_antimeridian_are_split_not_wrapped() -> None:
    """A UTM zone 60 raster straddling 180°: hexagons crossing it come out as east and west
    parts (GeoJSON's rule), never as a polygon spanning the globe the other way round."""
    import shapely

    from patchflow.sampling.zonal import _lonlat_polygon

    # easting 833 km on the equator in zone 60 (central meridian 177°E) is about 180°
    x = 783_000 + 1000 * (np.arange(100) + 0.5)
    y = 50_000 - 1000 * (np.arange(100) + 0.5)
    raster = (
        xr.DataArray(
            np.random.default_rng(2).random((100, 100)).astype(np.float32),
            dims=("y", "x"),
            coords={"y": y, "x": x},
        )
        .rio.write_crs("EPSG:32660")
        .chunk(50)
    )
    got = zonal_stats(raster, h3_resolution=4, stats=["count"])
    widths = got.geometry.bounds.eval("maxx - minx").to_numpy()
    split = got.geometry.geom_type == "MultiPolygon"
    assert split.any() and (widths[~split.to_numpy()] < 5).all()
    for cell, geom in zip(got["h3_cell"], got.geometry, strict=True):
        lat, lng = h3.cell_to_latlng(cell)
        assert geom.intersects(shapely.Point(lng, lat).buffer(1e-6)), cell
        if geom.geom_type == "MultiPolygon":
            assert all((p.bounds[2] - p.bounds[0]) < 5 for p in geom.geoms)
            # the same area as the cell drawn in unwrapped longitudes
            ring = [(lo + 360 if lo < 0 else lo, la) for la, lo in h3.cell_to_boundary(cell)]
            assert geom.area == pytest.approx(shapely.Polygon(ring).area, rel=1e-9)
    # a cell far from 180° keeps its plain polygon
    ring = [(lo, la) for la, lo in h3.cell_to_boundary(h3.latlng_to_cell(10, 20, 4))]
    assert _lonlat_polygon(ring).equals(shapely.Polygon(ring))
