"""Real sources (issue 5, "Sources"): COG/GeoTIFF via rioxarray, Zarr cubes, stackstac time
stacks from local STAC items, Datasets, mixed dtypes and scale/offset — all offline, every
value checked against the operator on the whole array."""

from __future__ import annotations

import datetime
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import rioxarray
import xarray as xr
from affine import Affine
from rasterio.enums import Resampling

import patchflow
from patchflow.io.synthetic import CRS, ORIGIN

pystac = pytest.importorskip("pystac")
stackstac = pytest.importorskip("stackstac")
from pystac.extensions.projection import ProjectionExtension  # noqa: E402

pytestmark = [
    # zarr v3 warns about fixed-width string coords (band names) and consolidated metadata;
    # rioxarray about affine `*`
    pytest.mark.filterwarnings("ignore:The data type .* does not have a Zarr V3 specification"),
    pytest.mark.filterwarnings("ignore:Consolidated metadata is currently not part"),
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"),
]

SIZE, STRIDE = 256, 192
X0, Y0 = ORIGIN
T10 = Affine(10.0, 0.0, X0, 0.0, -10.0, Y0)
T20 = Affine(20.0, 0.0, X0, 0.0, -20.0, Y0)


def ndvi64(chip: np.ndarray) -> np.ndarray:
    """DN × 1e-4 → NDVI on one (2, h, w) chip (float64 for integer input)."""
    red, nir = chip[0:1] * 1e-4, chip[1:2] * 1e-4
    with np.errstate(invalid="ignore", divide="ignore"):
        return (nir - red) / (nir + red)


def ndvi_bands(chip: np.ndarray) -> np.ndarray:
    """NDVI of (..., band=2, h, w) along the band axis, keeping it (length 1)."""
    if chip.dtype.kind in "iu":  # no unsigned wrap-around in nir - red
        chip = chip.astype(np.float64)
    red, nir = chip[..., 0:1, :, :], chip[..., 1:2, :, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (nir - red) / (nir + red)


def assert_matches(out: np.ndarray, ref: np.ndarray, atol: float = 1e-6, rtol: float = 0) -> None:
    """Same NaN pattern (nodata neither lost nor leaking) and values within tolerance."""
    assert out.shape == ref.shape
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    ok = ~np.isnan(ref)
    assert ok.any()
    np.testing.assert_allclose(out[ok], ref[ok], atol=atol, rtol=rtol)


def no_attrs(arr: xr.DataArray) -> xr.DataArray:
    """``arr`` without its own attrs (coords, spatial_ref's CRS included, untouched)."""
    arr = arr.copy()
    arr.attrs = {}
    return arr


def assert_geo(out: xr.DataArray, crs: Any, transform: Affine) -> None:
    assert out.rio.crs == crs
    assert out.rio.transform() == transform


def open_tif(path: Path, mask_and_scale: bool) -> xr.DataArray:
    """The GeoTIFF as a lazy (band, y, x) DataArray in 512 px chunks, as a user opens it."""
    da = rioxarray.open_rasterio(path, chunks={"x": 512, "y": 512}, mask_and_scale=mask_and_scale)
    assert isinstance(da, xr.DataArray)
    return da


def cog_kwargs() -> dict[str, Any]:
    with rasterio.Env() as env:
        if "COG" in env.drivers():
            return {"driver": "COG", "blocksize": 256}
    return {"driver": "GTiff", "tiled": True, "blockxsize": 256, "blockysize": 256}


# --------------------------------------------------------------------------------------
# 1. rioxarray: tiled COG / GeoTIFF with nodata and band descriptions
# --------------------------------------------------------------------------------------

COG_SHAPE = (700, 600)


@pytest.fixture(scope="module")
def cog(
    scene_factory: Callable[..., xr.DataArray], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, np.ndarray]:
    """2-band uint16 COG, nodata 0 (a block in both bands + one NIR-only pixel), bands
    described "red"/"nir". Returns the path and the raw DN written."""
    scene = scene_factory(COG_SHAPE, seed=5)
    dn = scene.values.copy()  # values are >= 1: zeros only where put here
    dn[:, 100:140, 200:260] = 0
    dn[1, 400, 10] = 0
    arr = xr.DataArray(dn, dims=scene.dims, coords={"y": scene.y, "x": scene.x})
    arr = arr.rio.write_crs(CRS).rio.write_nodata(0, encoded=False)
    arr.attrs["long_name"] = ("red", "nir")  # rioxarray writes these as band descriptions
    path = tmp_path_factory.mktemp("cog") / "scene.tif"
    arr.rio.to_raster(path, **cog_kwargs())
    with rasterio.open(path) as src:
        assert src.descriptions == ("red", "nir")
        assert src.nodata == 0
        assert src.block_shapes[0] == (256, 256)
    return path, dn


@pytest.mark.parametrize("mask_and_scale", [False, True])
def test_cog_nodata_geo_and_values(cog: tuple[Path, np.ndarray], mask_and_scale: bool) -> None:
    path, dn = cog
    da = open_tif(path, mask_and_scale)
    # raw: uint16 with rio.nodata 0; decoded: float32 with NaN where the file says nodata
    assert da.dtype == (np.float32 if mask_and_scale else np.uint16)
    out = da.patch.apply(ndvi64, size=SIZE, stride=STRIDE, window="hann")
    assert out.dims == ("band", "y", "x") and out.shape == (1, *COG_SHAPE)
    with rasterio.open(path) as src:
        assert_geo(out, src.crs, src.transform)
    np.testing.assert_array_equal(out.x.values, da.x.values)
    np.testing.assert_array_equal(out.y.values, da.y.values)
    # the file's chunks (512) hold whole chips: kept, so each COG tile is read once
    assert out.data.chunks[1:] == da.data.chunks[1:]
    values = out.values
    # reference: the op on the whole decoded array, nodata (either band) → NaN
    ref = ndvi64(da.values.astype(np.float64))
    ref[:, (dn == 0).any(axis=0)] = np.nan
    assert_matches(values, ref)
    # exactly the nodata pixels are NaN: no dilation into neighbours, none lost
    np.testing.assert_array_equal(np.isnan(values[0]), (dn == 0).any(axis=0))
    assert np.isnan(out.rio.nodata)
    for key in ("scale_factor", "add_offset", "missing_value"):
        assert key not in out.attrs


@pytest.mark.parametrize("mask_and_scale", [False, True])
def test_cog_band_names_kept_when_band_count_unchanged(
    cog: tuple[Path, np.ndarray], mask_and_scale: bool, tmp_path: Path
) -> None:
    path, dn = cog
    da = open_tif(path, mask_and_scale)
    assert da.attrs["long_name"] == ("red", "nir")
    out = da.patch.apply(lambda c: c * 1e-4, size=SIZE, stride=STRIDE)  # 2 bands → 2 bands
    assert out.attrs["long_name"] == ("red", "nir")
    np.testing.assert_array_equal(out.band.values, [1, 2])
    # nodata is per band (GDAL): a 0 in one band leaves the other band of the pixel valid
    ref = np.where(dn == 0, np.nan, dn * 1e-4).astype(out.dtype)
    assert_matches(out.values, ref)
    # round trip: descriptions, georeference and values survive to_raster
    out.rio.to_raster(tmp_path / "out.tif")
    with rasterio.open(tmp_path / "out.tif") as src:
        assert src.descriptions == ("red", "nir")
        assert src.crs == da.rio.crs and src.transform == da.rio.transform()
        assert_matches(src.read(), ref)


def test_cog_band_count_change_writes_back(cog: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, _ = cog
    da = open_tif(path, mask_and_scale=False)
    out = da.patch.apply(ndvi64, size=SIZE, stride=STRIDE)  # 2 bands → 1
    out.rio.to_raster(tmp_path / "ndvi.tif")
    with rasterio.open(tmp_path / "ndvi.tif") as src:
        assert src.count == 1
        assert_matches(src.read(), out.values)


# --------------------------------------------------------------------------------------
# 2. Zarr cube
# --------------------------------------------------------------------------------------

ZARR_SHAPE = (900, 1300)


@pytest.fixture(scope="module")
def zarr_cube(
    scene_factory: Callable[..., xr.DataArray], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, np.ndarray]:
    """make_scene → Dataset → Zarr v3 (chunks 512, nodata 0 via _FillValue, CRS in the
    rioxarray ``spatial_ref`` grid mapping). Returns the path and the raw DN."""
    scene = scene_factory(ZARR_SHAPE, seed=4, chunks=512)
    hole = xr.DataArray(np.zeros(ZARR_SHAPE, bool), dims=("y", "x"))
    hole[600:650, 40:90] = True  # nodata block
    scene = scene.where(~hole, 0).astype(np.uint16).rio.write_nodata(0, encoded=False)
    path = tmp_path_factory.mktemp("zarr") / "cube.zarr"
    scene.to_dataset(name="dn").to_zarr(path, zarr_format=3)
    return path, scene.values


@pytest.mark.parametrize("mask_and_scale", [True, False])
def test_zarr_cube_ndvi(zarr_cube: tuple[Path, np.ndarray], mask_and_scale: bool) -> None:
    path, dn = zarr_cube
    # decode_coords="all" turns the grid-mapping variable spatial_ref back into a coord,
    # which is where rioxarray finds the CRS
    ds = xr.open_zarr(path, decode_coords="all", mask_and_scale=mask_and_scale)
    cube = ds["dn"]
    assert cube.rio.crs == CRS
    assert cube.rio.transform() == T10
    assert cube.dtype == (np.float32 if mask_and_scale else np.uint16)
    assert np.isnan(cube.rio.nodata) if mask_and_scale else cube.rio.nodata == 0
    out = cube.patch.apply(ndvi64, size=SIZE, stride=STRIDE)
    assert_geo(out, cube.rio.crs, T10)
    assert out.data.chunks[1:] == cube.data.chunks[1:]  # storage chunks kept
    ref = ndvi64(np.where(dn == 0, np.nan, dn.astype(np.float64)))
    assert_matches(out.values, ref)
    if mask_and_scale:
        # the whole Dataset works too (variables stacked along 'variable': here just 'dn');
        # (the raw case, with each variable's nodata masked, is tested further down)
        whole = ds.patch.apply(ndvi_bands, size=SIZE, stride=STRIDE)
        assert whole.dims == ("variable", "band", "y", "x")
        assert whole.rio.crs == CRS
        assert_matches(whole.values[0], ref)


def test_zarr_default_decode_coords_dataset(
    scene_factory: Callable[..., xr.DataArray], tmp_path: Path
) -> None:
    scene = scene_factory((300, 300), seed=4)
    scene.to_dataset(name="dn").to_zarr(tmp_path / "c.zarr", zarr_format=3)
    ds = xr.open_zarr(tmp_path / "c.zarr")  # decode_coords=True
    assert "spatial_ref" in ds.data_vars  # (dn's encoding had grid_mapping: spatial_ref)
    out = ds.patch.apply(ndvi_bands, size=SIZE, stride=STRIDE)
    assert out.rio.crs == CRS
    ref = ndvi_bands(scene.values)
    assert_matches(out.values.reshape(ref.shape), ref)


# --------------------------------------------------------------------------------------
# 3. stackstac time stacks from local STAC items
# --------------------------------------------------------------------------------------

STACK_SHAPE = (600, 500)
DATES = [datetime.datetime(2024, 6, 1 + 5 * k, tzinfo=datetime.UTC) for k in range(3)]


def write_band(path: Path, band: np.ndarray, transform: Affine) -> None:
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        tiled=True,
        blockxsize=256,
        blockysize=256,
        height=band.shape[0],
        width=band.shape[1],
        count=1,
        dtype=band.dtype,
        crs=CRS,
        transform=transform,
        nodata=0,
    ) as dst:
        dst.write(band, 1)


@pytest.fixture(scope="module")
def stac_items(
    scene_factory: Callable[..., xr.DataArray], tmp_path_factory: pytest.TempPathFactory
) -> tuple[list[Any], dict[str, np.ndarray]]:
    """3 dates × (B04, B08 at 10 m; B11 at 20 m), local GeoTIFFs with nodata 0:
    date 1 has a "cloud" (both 10 m bands 0), every date a B04-only hole, date 2 a B08 hole.
    Returns the items and the raw DN per asset, stacked over time."""
    root = tmp_path_factory.mktemp("stac")
    h, w = STACK_SHAPE
    raw: dict[str, list[np.ndarray]] = {"B04": [], "B08": [], "B11": []}
    items = []
    for k, date in enumerate(DATES):
        red, nir = scene_factory(STACK_SHAPE, seed=10 + k).values
        b11 = scene_factory((h // 2, w // 2), seed=20 + k).values[0]
        if k == 1:
            red[50:90, 100:180] = nir[50:90, 100:180] = 0
        if k == 2:
            nir[400:420, 300:330] = 0
        red[300:310, 20:40] = 0
        item = pystac.Item(
            id=f"S2_{date:%Y%m%d}",
            geometry=None,
            bbox=None,
            datetime=date,
            properties={},
        )
        for name, band, transform in (("B04", red, T10), ("B08", nir, T10), ("B11", b11, T20)):
            path = root / f"{item.id}_{name}.tif"
            write_band(path, band, transform)
            asset = pystac.Asset(href=str(path), media_type=pystac.MediaType.GEOTIFF)
            item.add_asset(name, asset)
            proj = ProjectionExtension.ext(asset, add_if_missing=True)
            proj.epsg = 32610
            proj.shape = list(band.shape)
            proj.transform = list(transform)[:6]
            # pystac ≥ 1.12 writes projection v2's proj:code; stackstac 0.5.1 reads only
            # proj:epsg (without it the asset bbox would come from the item's lon/lat bbox)
            asset.extra_fields["proj:epsg"] = 32610
            raw[name].append(band)
        items.append(item)
    return items, {k: np.stack(v) for k, v in raw.items()}


def stack(items: list[Any], assets: list[str], **kw: Any) -> xr.DataArray:
    params: dict[str, Any] = {
        "resolution": 10,
        "epsg": 32610,
        "chunksize": 512,
        "fill_value": np.nan,
        "rescale": False,
        "xy_coords": "center",  # pixel-centre coords: what rioxarray (and so patchflow) assume
    }
    return stackstac.stack(items, assets=assets, **{**params, **kw})


def masked(raw: np.ndarray) -> np.ndarray:
    return np.where(raw == 0, np.nan, raw.astype(np.float64))


@pytest.fixture(scope="module")
def s2(stac_items: tuple[list[Any], dict[str, np.ndarray]]) -> xr.DataArray:
    return stack(stac_items[0], ["B04", "B08"])


def test_stackstac_stack_is_what_was_written(
    s2: xr.DataArray, stac_items: tuple[list[Any], dict[str, np.ndarray]]
) -> None:
    _, raw = stac_items
    assert s2.dims == ("time", "band", "y", "x")
    assert s2.shape == (3, 2, *STACK_SHAPE)
    assert list(s2.band.values) == ["B04", "B08"]
    assert s2.rio.crs == CRS
    assert s2.rio.transform() == T10 == Affine(*s2.attrs["transform"][:6])
    expect = np.stack([masked(raw["B04"]), masked(raw["B08"])], axis=1)
    np.testing.assert_array_equal(s2.values, expect)


def test_stackstac_per_time_step_ndvi(s2: xr.DataArray) -> None:
    # default (over=None): chips are spatial only; the op sees (band, h, w) for each date
    seen: set[tuple[int, ...]] = set()

    def op(chip: np.ndarray) -> np.ndarray:
        seen.add(chip.shape)
        return ndvi_bands(chip)

    out = s2.patch.apply(op, size=SIZE, stride=STRIDE)
    assert out.dims == ("time", "band", "y", "x")
    assert out.shape == (3, 1, *STACK_SHAPE)
    np.testing.assert_array_equal(out.time.values, s2.time.values)
    assert_geo(out, s2.rio.crs, T10)
    values = out.values
    assert seen == {(2, SIZE, SIZE)}
    ref = ndvi_bands(s2.values)  # the op on the whole stack, every date at once
    # invalidity is per date: the date-1 cloud is NaN on date 1 only
    assert_matches(values, ref)
    assert np.isnan(values[1, 0, 50:90, 100:180]).all()
    assert not np.isnan(values[[0, 2], 0, 50:90, 100:180]).any()


def test_stackstac_over_time_median_composite(s2: xr.DataArray) -> None:
    # over="time": the op sees (time, band, h, w) and returns (band, h, w)
    def median(chip: np.ndarray) -> np.ndarray:
        assert chip.shape[:2] == (3, 2)
        return np.median(chip, axis=0)

    out = s2.patch.apply(median, over="time", size=SIZE, stride=STRIDE)
    assert out.dims == ("band", "y", "x")
    assert out.shape == (2, *STACK_SHAPE)
    assert list(out.band.values) == ["B04", "B08"]
    assert "time" not in out.coords
    assert_geo(out, s2.rio.crs, T10)
    v = s2.values
    # invalid values reach the op as NaN, per element: np.median (not NaN-aware) gives NaN
    # where a band is NaN on any date, in that band only; see below for gap filling
    assert_matches(out.values, np.median(v, axis=0), atol=1e-9)


def test_stackstac_over_time_nanmedian_gap_fills(s2: xr.DataArray) -> None:
    # Gap-filling composite: the op sees NaN on cloudy dates and skips them (nanmedian);
    # pixels NaN on every date give a NaN op output, which carries zero weight, so the
    # result is NaN exactly where np.nanmedian is.
    def nanmedian(chip: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices
            return np.nanmedian(chip, axis=0)

    out = s2.patch.apply(nanmedian, over="time", size=SIZE, stride=STRIDE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = np.nanmedian(s2.values, axis=0)
    assert np.isnan(ref[0, 300:310, 20:40]).all()  # B04 hole on every date
    assert_matches(out.values, ref, atol=1e-9)


def test_stackstac_mixed_resolution_b11(
    s2: xr.DataArray, stac_items: tuple[list[Any], dict[str, np.ndarray]]
) -> None:
    items, raw = stac_items
    # B11 (20 m) alone, resampled by stackstac (nearest) onto the 10 m grid
    b11 = stack(items, ["B11"], resampling=Resampling.nearest)
    assert b11.shape == (3, 1, *STACK_SHAPE)
    assert b11.rio.transform() == T10
    up = masked(raw["B11"]).repeat(2, axis=-2).repeat(2, axis=-1)
    np.testing.assert_array_equal(b11.values[:, 0], up)
    # all three in one stack: an op mixing 10 m and (resampled) 20 m bands, per date
    allb = stack(items, ["B04", "B08", "B11"], resampling=Resampling.nearest)
    assert list(allb.band.values) == ["B04", "B08", "B11"]

    def ndmi(chip: np.ndarray) -> np.ndarray:
        nir, swir = chip[..., 1:2, :, :], chip[..., 2:3, :, :]
        with np.errstate(invalid="ignore"):
            return (nir - swir) / (nir + swir)

    out = allb.patch.apply(ndmi, size=SIZE, stride=STRIDE)
    assert out.shape == (3, 1, *STACK_SHAPE)
    assert_geo(out, CRS, T10)
    # NaN reaches the op per element, so the index is NaN exactly where a band it uses is
    ref = ndmi(allb.values)
    assert_matches(out.values, ref)
    np.testing.assert_array_equal(allb.values[:, :2], s2.values)


def test_stackstac_topleft_coords_shift_the_transform(
    stac_items: tuple[list[Any], dict[str, np.ndarray]],
) -> None:
    # stackstac's default xy_coords="topleft" labels pixels by their corner; rioxarray (and
    # so patchflow, which re-derives the transform from the coords) assumes centres, so the
    # output is georeferenced half a pixel off. Use xy_coords="center" with patchflow.
    items, _ = stac_items
    topleft = stackstac.stack(
        items, assets=["B04", "B08"], resolution=10, epsg=32610, chunksize=512, rescale=False
    )
    out = topleft.patch.apply(ndvi_bands, size=SIZE, stride=STRIDE)
    assert Affine(*topleft.attrs["transform"][:6]) == T10
    assert out.rio.transform() == topleft.rio.transform() == T10 @ Affine.translation(-0.5, -0.5)


def sanitised(stack_: xr.DataArray) -> xr.DataArray:
    """A stackstac stack without what Zarr cannot store: object-dtype coords
    (proj:shape, proj:transform hold Python sets) and the RasterSpec in attrs['spec']."""
    objects = [name for name, coord in stack_.coords.items() if coord.dtype == object]
    out = stack_.drop_vars(objects)
    out.attrs = {k: v for k, v in stack_.attrs.items() if k != "spec"}
    return out


def test_stackstac_run_to_zarr_sanitised(s2: xr.DataArray, tmp_path: Path) -> None:
    report = patchflow.run(
        sanitised(s2), ndvi_bands, store=tmp_path / "ndvi.zarr", size=SIZE, stride=STRIDE
    )
    result = report.open()
    assert result.dims == ("time", "band", "y", "x")
    assert_geo(result, CRS, T10)
    assert_matches(result.values, ndvi_bands(s2.values))


def test_stackstac_run_to_zarr_raw(s2: xr.DataArray, tmp_path: Path) -> None:
    report = patchflow.run(s2, ndvi_bands, store=tmp_path / "ndvi.zarr", size=SIZE, stride=STRIDE)
    assert_matches(report.open().values, ndvi_bands(s2.values))


# --------------------------------------------------------------------------------------
# 4. xr.Dataset: stacked (default) and per_variable
# --------------------------------------------------------------------------------------

DS_SHAPE = (700, 600)


@pytest.fixture(scope="module")
def red_nir(scene_factory: Callable[..., xr.DataArray]) -> xr.Dataset:
    scene = scene_factory(DS_SHAPE, seed=1, chunks=256)
    # nir first: the op must see variables in data_vars order, not alphabetical
    ds = xr.Dataset(
        {"nir": scene.sel(band="nir", drop=True), "red": scene.sel(band="red", drop=True)},
        attrs={"title": "synthetic"},
    )
    for var in ds.data_vars.values():
        var.attrs = {}
    return ds


def test_dataset_stacked_in_data_vars_order(red_nir: xr.Dataset) -> None:
    def ndvi_nir_first(chip: np.ndarray) -> np.ndarray:
        assert chip.shape == (2, SIZE, SIZE)
        nir, red = chip[0:1] * 1e-4, chip[1:2] * 1e-4
        return (nir - red) / (nir + red)

    out = red_nir.patch.apply(ndvi_nir_first, size=SIZE, stride=STRIDE)
    assert isinstance(out, xr.DataArray)
    assert out.dims == ("variable", "y", "x") and out.shape == (1, *DS_SHAPE)
    np.testing.assert_array_equal(out.y.values, red_nir.y.values)
    np.testing.assert_array_equal(out.x.values, red_nir.x.values)
    assert_geo(out, CRS, T10)
    nir, red = (red_nir[v].values * 1e-4 for v in ("nir", "red"))
    assert_matches(out.values[0], (nir - red) / (nir + red))
    # a variable-preserving op keeps the variable labels: back to a Dataset in one call
    same = red_nir.patch.apply(lambda c: c * 2.0, size=SIZE, stride=STRIDE)
    assert list(same.coords["variable"].values) == ["nir", "red"]
    back = same.to_dataset(dim="variable")
    assert list(back.data_vars) == ["nir", "red"]
    for name in ("nir", "red"):
        assert_matches(back[name].values, red_nir[name].values * 2.0)


def test_dataset_per_variable(
    scene_factory: Callable[..., xr.DataArray], red_nir: xr.Dataset
) -> None:
    ds = red_nir.assign(
        dn=scene_factory(DS_SHAPE, seed=2, chunks=256).drop_vars("spatial_ref"),  # (band, y, x)
    )
    shapes: set[tuple[int, ...]] = set()

    def op(chip: np.ndarray) -> np.ndarray:
        shapes.add(chip.shape)
        return chip * 0.5

    out = ds.patch.apply(op, size=SIZE, stride=STRIDE, per_variable=True)
    assert isinstance(out, xr.Dataset)
    assert list(out.data_vars) == ["nir", "red", "dn"]
    assert out.attrs == {"title": "synthetic"}
    assert out["dn"].dims == ("band", "y", "x")
    assert list(out["dn"].band.values) == ["red", "nir"]
    for name in ("nir", "red"):
        assert out[name].dims == ("y", "x")
    assert out.rio.crs == CRS
    for name in ("nir", "red", "dn"):
        assert_geo(out[name], CRS, T10)
        np.testing.assert_array_equal(out[name].x.values, ds.x.values)
        assert_matches(out[name].values, ds[name].values * 0.5)
    # each variable on its own: 2-D chips for (y, x) vars, (band, h, w) for the cube
    assert shapes == {(SIZE, SIZE), (2, SIZE, SIZE)}


def test_dataset_per_variable_from_zarr_with_its_grid_mapping_variable(
    red_nir: xr.Dataset, tmp_path: Path
) -> None:
    """``xr.open_zarr`` (``decode_coords=True``, its default) keeps the CF grid mapping
    ``spatial_ref`` as a data variable: per_variable took it for data to process and
    failed on it; it is metadata (the variables' CRS), as in the stacked path."""
    red_nir.rio.write_crs(CRS).to_zarr(tmp_path / "in.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # consolidated-metadata chatter
        ds = xr.open_zarr(tmp_path / "in.zarr")
    assert "spatial_ref" in ds.data_vars
    out = patchflow.apply(ds, lambda c: c * 0.5, size=SIZE, stride=STRIDE, per_variable=True)
    assert list(out.data_vars) == ["nir", "red"]
    for name in ("nir", "red"):
        assert_geo(out[name], CRS, T10)
        assert_matches(out[name].values, red_nir[name].values * 0.5)


# --------------------------------------------------------------------------------------
# 5. mixed dtypes, scale/offset
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed(scene_factory: Callable[..., xr.DataArray]) -> xr.Dataset:
    scene = scene_factory((500, 400), seed=8)
    dn = no_attrs(scene.sel(band="red", drop=True))
    refl = no_attrs((scene.sel(band="nir", drop=True) * 1e-4).astype(np.float32))
    return xr.Dataset({"dn": dn, "refl": refl})


def test_mixed_dtypes_stacked_and_per_variable(mixed: xr.Dataset) -> None:
    dtypes: set[np.dtype] = set()

    def op(chip: np.ndarray) -> np.ndarray:
        dtypes.add(chip.dtype)
        return chip * 2

    stacked = mixed.patch.apply(op, size=128, stride=96)
    stacked.compute()
    # stacked: numpy promotion (uint16, float32) → float32, exact for uint16 values
    assert dtypes == {np.dtype(np.float32)}
    assert stacked.dtype == np.float32
    whole = mixed.to_dataarray(dim="variable").values
    assert_matches(stacked.values, whole * np.float32(2), atol=0, rtol=1e-6)

    dtypes.clear()
    per = mixed.patch.apply(op, size=128, stride=96, per_variable=True).compute()
    assert dtypes == {np.dtype(np.uint16), np.dtype(np.float32)}
    # overlap_add blends: the uint16 op output comes back as a float (weighted mean)
    assert per["dn"].dtype.kind == "f" and per["refl"].dtype == np.float32
    assert_matches(per["dn"].values, mixed["dn"].values * 2.0, atol=0, rtol=1e-6)
    assert_matches(per["refl"].values, mixed["refl"].values * np.float32(2), atol=0, rtol=1e-6)


def with_nodata_hole(mixed: xr.Dataset) -> xr.Dataset:
    dn = mixed["dn"].copy(data=mixed["dn"].values.copy())
    dn.values[100:120, 50:70] = 0
    return mixed.assign(dn=dn.rio.write_nodata(0, encoded=False))


def test_mixed_per_variable_honours_each_nodata(mixed: xr.Dataset) -> None:
    ds = with_nodata_hole(mixed)
    per = ds.patch.apply(lambda c: c * 1.0, size=128, stride=96, per_variable=True)
    ref = np.where(ds["dn"].values == 0, np.nan, ds["dn"].values * 1.0)
    assert_matches(per["dn"].values, ref)
    assert_matches(per["refl"].values, ds["refl"].values * 1.0)


def test_mixed_stacked_honours_variable_nodata(mixed: xr.Dataset) -> None:
    ds = with_nodata_hole(mixed)
    out = ds.patch.apply(lambda c: c * 1.0, size=128, stride=96).values
    k = list(ds.data_vars).index("dn")
    # per band (GDAL nodata): the hole is in "dn" only; the other variables stay valid
    assert np.isnan(out[k, 100:120, 50:70]).all()
    others = [i for i in range(out.shape[0]) if i != k]
    assert not np.isnan(out[others][:, 100:120, 50:70]).any()


@pytest.fixture(scope="module")
def scaled_tif(
    scene_factory: Callable[..., xr.DataArray], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, np.ndarray]:
    """2-band uint16 GeoTIFF, nodata 0, scale 1e-4 / offset -0.1 (both bands)."""
    dn = scene_factory((600, 520), seed=7).values
    dn[:, 10:30, 10:30] = 0
    path = tmp_path_factory.mktemp("scaled") / "scaled.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        tiled=True,
        blockxsize=256,
        blockysize=256,
        height=dn.shape[1],
        width=dn.shape[2],
        count=2,
        dtype="uint16",
        crs=CRS,
        transform=T10,
        nodata=0,
    ) as dst:
        dst.write(dn)
        dst.scales = (1e-4, 1e-4)
        dst.offsets = (-0.1, -0.1)
    return path, dn


def test_scale_offset_decoded(scaled_tif: tuple[Path, np.ndarray]) -> None:
    path, dn = scaled_tif
    da = open_tif(path, mask_and_scale=True)
    assert da.dtype == np.float32 and da.encoding["scale_factor"] == 1e-4
    seen: list[float] = []

    def op(chip: np.ndarray) -> np.ndarray:
        seen.append(float(chip.max()))
        return chip.astype(np.float64)

    out = da.patch.apply(op, size=SIZE, stride=STRIDE)
    values = out.values
    # the op saw decoded reflectance (≲ 1), not DN
    assert 0 < max(seen) < 1.5
    decoded = np.where(dn == 0, np.nan, dn * 1e-4 - 0.1)
    assert_matches(values, decoded, atol=1e-6)
    assert_matches(values, da.values.astype(np.float64), atol=1e-12)
    assert_geo(out, CRS, T10)
    assert "scale_factor" not in out.attrs and "add_offset" not in out.attrs
    # band math on decoded values equals the op on the whole decoded array
    ndvi = da.patch.apply(ndvi_bands, size=SIZE, stride=STRIDE)
    assert_matches(ndvi.values, ndvi_bands(decoded), atol=1e-6)


def test_scale_offset_raw(scaled_tif: tuple[Path, np.ndarray]) -> None:
    path, dn = scaled_tif
    da = open_tif(path, mask_and_scale=False)
    assert da.dtype == np.uint16
    assert (da.attrs["scale_factor"], da.attrs["add_offset"]) == (1e-4, -0.1)
    out = da.patch.apply(lambda c: c * 1.0, size=SIZE, stride=STRIDE)
    # the op sees raw DN; the output is not encoded, so the codec attrs are dropped
    assert "scale_factor" not in out.attrs and "add_offset" not in out.attrs
    ref = np.where(dn == 0, np.nan, dn * 1.0)
    ref[:, (dn == 0).any(axis=0)] = np.nan
    assert_matches(out.values, ref, atol=1e-9)


@pytest.mark.parametrize("mask_and_scale", [True, False])
def test_zarr_cf_scale_offset(
    scene_factory: Callable[..., xr.DataArray], tmp_path: Path, mask_and_scale: bool
) -> None:
    # CF packing in Zarr: xarray decodes scale_factor/add_offset/_FillValue on open
    scene = scene_factory((500, 450), seed=9)
    refl = no_attrs(scene) * 1e-4
    refl[:, 5:25, 30:60] = np.nan
    packed = refl.to_dataset(name="refl")
    encoding = {"dtype": "uint16", "scale_factor": 1e-4, "add_offset": 0.0, "_FillValue": 0}
    packed.to_zarr(tmp_path / "p.zarr", zarr_format=3, encoding={"refl": encoding})
    cube = xr.open_zarr(tmp_path / "p.zarr", decode_coords="all", mask_and_scale=mask_and_scale)
    cube = cube["refl"]
    assert cube.rio.crs == CRS
    out = cube.patch.apply(ndvi_bands, size=SIZE, stride=STRIDE)
    if mask_and_scale:
        assert cube.dtype.kind == "f"
        ref = ndvi_bands(cube.values)  # decoded, NaN where packed as _FillValue
    else:
        assert cube.dtype == np.uint16 and cube.rio.nodata == 0
        raw = cube.values
        ref = ndvi_bands(np.where(raw == 0, np.nan, raw.astype(np.float64)))
    assert np.isnan(ref[:, 5:25, 30:60]).all()
    assert_matches(out.values, ref, atol=1e-6)
    assert_matches(out.values, ndvi_bands(refl.values), atol=1e-3)


# --------------------------------------------------------------------------------------
# overviews for previews (issue 15): only for the file's own, unchanged values
# --------------------------------------------------------------------------------------


def test_overviews_of_the_cog(cog: tuple[Path, np.ndarray]) -> None:
    from patchflow.io.sources import open_overview, open_raster, overview_shapes

    path, _ = cog
    with rasterio.open(path) as src:
        factors = src.overviews(1)
    scene = open_raster(str(path))
    shapes = overview_shapes(scene)
    assert len(shapes) == len(factors)
    for level, (h, w) in enumerate(shapes):
        with rasterio.open(path, overview_level=level) as ov:
            assert (h, w) == (ov.height, ov.width)
    if not shapes:
        pytest.skip("this GDAL wrote the COG without overviews")
    ov = open_overview(scene, 0)
    assert ov.dims == scene.dims and ov.shape == (2, *shapes[0])
    assert ov.attrs["long_name"] == ("red", "nir") and ov.rio.nodata == 0
    assert ov.rio.crs == scene.rio.crs
    np.testing.assert_allclose(ov.rio.bounds(), scene.rio.bounds())
    # the one band of a selection, by its file number, in the selection's layout
    nir = open_overview(scene.sel(band=2), 0)
    assert nir.dims == ("y", "x")
    np.testing.assert_array_equal(nir.values, ov.values[1])
    # a lazy read without dask chunks counts too, a loaded one does not
    lazy = rioxarray.open_rasterio(path)
    assert overview_shapes(lazy) == shapes
    assert overview_shapes(lazy.load()) == []


def test_no_overviews_in_a_plain_geotiff_or_zarr(
    tmp_path: Path, zarr_cube: tuple[Path, np.ndarray], scene_factory: Callable[..., xr.DataArray]
) -> None:
    from patchflow.io.sources import open_raster, overview_shapes

    path = tmp_path / "plain.tif"
    scene_factory((300, 260)).rio.to_raster(path)  # striped, no overviews
    assert overview_shapes(open_raster(str(path))) == []
    zarr_path, _ = zarr_cube
    assert overview_shapes(open_raster(str(zarr_path))) == []
    assert overview_shapes(xr.DataArray(np.zeros((3, 4)), dims=("y", "x"))) == []


def test_overviews_added_to_a_geotiff_are_found(
    tmp_path: Path, scene_factory: Callable[..., xr.DataArray]
) -> None:
    from patchflow.io.sources import open_overview, open_raster, overview_shapes

    path = tmp_path / "tiled.tif"
    scene_factory((600, 520)).rio.to_raster(path, tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(path, "r+") as dst:
        dst.build_overviews([2, 4], Resampling.average)
    scene = open_raster(str(path))
    assert overview_shapes(scene) == [(300, 260), (150, 130)]
    with rasterio.open(path, overview_level=1) as src:
        np.testing.assert_array_equal(open_overview(scene, 1).values, src.read())


# --------------------------------------------------------------------------------------
# per-band nodata: a file whose bands each have their own nodata value
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "nodatas", "read_as"),
    [
        (np.uint8, (0, 255), np.float32),
        (np.int16, (-32768, 0), np.float32),
        (np.uint16, (0, None), np.float32),
        (np.int32, (0, -1), np.float64),
        (np.uint32, (0, 7), np.float64),
        (np.float32, (float("nan"), -9999.0), np.float32),
        (np.float64, (0.0, 1.5), np.float64),
    ],
)
def test_open_raster_masks_each_band_with_its_own_nodata(
    tmp_path: Path, dtype: Any, nodatas: Any, read_as: Any
) -> None:
    from conftest import band_nodata_reference, write_band_nodata_vrt

    from patchflow.io.sources import band_nodata, open_raster, reads_masked

    vrt, data = write_band_nodata_vrt(tmp_path, nodatas, dtype=dtype)
    assert band_nodata(vrt) is not None and reads_masked(vrt)
    scene = open_raster(vrt, chunks=32)
    assert scene.dtype == read_as  # holds every value of the file exactly
    assert scene.chunks is not None
    np.testing.assert_array_equal(scene.values, band_nodata_reference(data, nodatas))
    # written back, each band's nodata is NaN: no value of the file stands for all
    assert scene.rio.nodata is None or np.isnan(scene.rio.nodata)


@pytest.mark.parametrize("nodata", [0, None, float("nan")])
def test_open_raster_keeps_a_shared_nodata_as_it_is(tmp_path: Path, nodata: Any) -> None:
    from conftest import write_band_nodata_vrt

    from patchflow.io.sources import open_raster, reads_masked

    dtype = np.float32 if nodata is not None and np.isnan(nodata) else np.uint8
    vrt, data = write_band_nodata_vrt(tmp_path, (nodata, nodata), dtype=dtype)
    assert not reads_masked(vrt)
    scene = open_raster(vrt)
    assert scene.dtype == dtype
    np.testing.assert_array_equal(scene.values, data)
    plain = rioxarray.open_rasterio(vrt)
    assert scene.attrs.keys() == plain.attrs.keys()  # what rioxarray gives, unchanged
    np.testing.assert_array_equal(list(scene.attrs.values()), list(plain.attrs.values()))
    patchflow.apply(plain, lambda c: c * 2, size=32, stride=24)  # nothing to refuse


def test_open_raster_refuses_64_bit_integers_with_per_band_nodata(tmp_path: Path) -> None:
    from conftest import write_band_nodata_vrt

    from patchflow.errors import BandNodataError
    from patchflow.io.sources import open_raster

    try:
        vrt, _ = write_band_nodata_vrt(tmp_path, (0, 7), dtype=np.int64)
    except Exception as exc:  # GDAL before 3.5 has no Int64
        pytest.skip(f"no 64-bit integer rasters here: {exc}")
    with pytest.raises(BandNodataError, match=r"band 1: 0, band 2: 7.*int64.*2\*\*53"):
        open_raster(vrt)


def test_band_nodata_of_what_gdal_cannot_open(tmp_path: Path) -> None:
    from patchflow.io.sources import band_nodata, check_band_nodata

    (tmp_path / "notes.txt").write_text("not a raster")
    assert band_nodata(str(tmp_path / "notes.txt")) is None
    assert band_nodata(str(tmp_path / "missing.tif")) is None
    # an array claiming such a source is not refused: nothing to compare with
    arr = xr.DataArray(np.zeros((2, 4, 4), np.uint8), dims=("band", "y", "x"))
    arr = arr.rio.write_nodata(0)
    arr.encoding["source"] = str(tmp_path / "notes.txt")
    check_band_nodata(arr)


def test_every_entry_point_refuses_one_nodata_for_per_band_files(tmp_path: Path) -> None:
    gpd = pytest.importorskip("geopandas")
    from conftest import write_band_nodata_vrt
    from shapely.geometry import Point, box

    from patchflow.api import dos1, global_percentiles
    from patchflow.errors import BandNodataError

    vrt, _ = write_band_nodata_vrt(tmp_path, (0, 255))
    plain = rioxarray.open_rasterio(vrt)
    masked = rioxarray.open_rasterio(vrt, masked=True)
    x0, y0 = float(plain.x[5]), float(plain.y[5])
    polygons = gpd.GeoDataFrame(geometry=[box(x0, y0 - 200, x0 + 200, y0)], crs=plain.rio.crs)
    points = gpd.GeoDataFrame(geometry=[Point(x0, y0)], crs=plain.rio.crs)

    def detect(chip: np.ndarray) -> list[Any]:
        return []

    calls: dict[str, Callable[[xr.DataArray], Any]] = {
        "zonal_stats": lambda a: patchflow.zonal_stats(a, polygons),
        "sample_points": lambda a: patchflow.sample_points(a, points),
        "apply_vector": lambda a: patchflow.apply_vector(a, detect, size=32, stride=24),
        "dos1": lambda a: dos1(a, percentile="min"),
        "global_percentiles": lambda a: global_percentiles(a),
    }
    for call in calls.values():
        with pytest.raises(BandNodataError, match=r"bands\.vrt.*band 2: 255"):
            call(plain)
        call(masked)  # each band masked on read: fine
    # an explicit nodata is the caller's choice
    patchflow.zonal_stats(plain, polygons, nodata=0)
    dos1(plain, percentile="min", nodata=0)
    global_percentiles(plain, nodata=0)


def test_a_run_on_a_per_band_nodata_file_resumes_the_same_way(tmp_path: Path) -> None:
    from conftest import band_nodata_reference, write_band_nodata_vrt

    from patchflow.io.sources import open_raster
    from patchflow.io.store import _open_input, _read_meta
    from patchflow.ops import SelectBands

    nodatas = (0, 255)
    vrt, data = write_band_nodata_vrt(tmp_path, nodatas)
    store = tmp_path / "out.zarr"
    patchflow.run(open_raster(vrt, chunks=48), SelectBands([0, 1]), store=store, size=32, stride=24)
    meta = _read_meta(str(store))
    assert meta is not None and isinstance(meta.get("recipe"), dict), meta.get("recipe_missing")
    # reopened as it was read: masked, each band with its own nodata
    again = _open_input(meta["recipe"]["input"])
    np.testing.assert_array_equal(again.values, band_nodata_reference(data, nodatas))
    report = patchflow.resume(store)
    assert report.computed == 0
    np.testing.assert_array_equal(report.open().values, band_nodata_reference(data, nodatas))


@pytest.mark.parametrize(
    ("dtype", "nodatas", "held"),
    [
        (np.uint8, (None, 255), "no nodata value"),  # band 1 has none: rioxarray gives none
        (np.float32, (float("nan"), -9999.0), r"one nodata value \(nan\)"),
    ],
)
def test_band_1s_missing_or_nan_nodata_is_refused_too(
    tmp_path: Path, dtype: Any, nodatas: Any, held: str
) -> None:
    from conftest import band_nodata_reference, write_band_nodata_vrt

    from patchflow.errors import BandNodataError

    # band 2's nodata pixels would be read as data
    vrt, data = write_band_nodata_vrt(tmp_path, nodatas, dtype=dtype)
    plain = rioxarray.open_rasterio(vrt)
    with pytest.raises(BandNodataError, match=held):
        patchflow.apply(plain, lambda c: c * 2, size=32, stride=24)
    masked = rioxarray.open_rasterio(vrt, masked=True)
    got = patchflow.apply(masked, lambda c: c * 2, size=32, stride=24, agg="centre")
    np.testing.assert_array_equal(got.values, band_nodata_reference(data, nodatas) * 2)
