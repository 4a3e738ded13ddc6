"""The README's "Guarantees", one test (or more) per line, on the engine's in-memory path.

Each test here failed on the code before the guarantee was introduced: they are the
regression tests of the silent-wrong-data bugs (integer outputs losing real pixels to
nodata, per-band nodata, float32 drift of whole numbers, chunk-dependent padding, time
composites dropping valid dates, names/attrs that lie).
"""

from __future__ import annotations

import warnings
from typing import Any, get_args

import dask
import numpy as np
import pytest
import rioxarray
import xarray as xr
from conftest import band_nodata_reference, stac_item, write_band_nodata_vrt
from hypothesis import given, settings
from hypothesis import strategies as st

import patchflow
from patchflow import ops
from patchflow.errors import NodataCollisionError, OperatorError
from patchflow.options import Agg


def identity(chip: np.ndarray) -> np.ndarray:
    return chip


def chip_mean(chip: np.ndarray) -> np.ndarray:
    """Every pixel gets its chip's mean: any padding value shows up in the result."""
    return np.broadcast_to(chip.mean(axis=(-2, -1), keepdims=True), chip.shape).copy()


def aerial(seed: int = 0) -> xr.DataArray:
    """4-band uint8 scene with many real 255s and 0s, no nodata declared."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (4, 150, 170)).astype(np.uint8)
    data[:, :20, :] = 255
    return xr.DataArray(data, dims=("band", "y", "x"), name="aerial")


# --------------------------------------------------------------------------- integers, nodata


@pytest.mark.parametrize("agg", ["overlap_add", "mean", "max", "min", "centre"])
def test_integer_identity_keeps_every_real_pixel(agg: str) -> None:
    scene = aerial()
    out = patchflow.apply(scene, identity, size=32, stride=24, agg=agg, chunks=64).compute()
    np.testing.assert_array_equal(out.values, scene.values)
    if agg in ("max", "min", "centre"):
        assert out.dtype == np.uint8
        # full coverage, integer input without nodata: nothing can be invalid, so no nodata
        assert out.rio.nodata is None
    else:
        assert out.dtype == np.float32
        assert not np.isnan(out.values).any()


def test_integer_output_uses_input_nodata_per_band() -> None:
    a = np.full((3, 64, 64), 100, np.uint8)
    a[2, 10, 10] = 0
    a[0, 40:44, 50:60] = 0
    scene = xr.DataArray(a, dims=("band", "y", "x")).rio.write_nodata(0)

    def to_uint8(chip: np.ndarray) -> np.ndarray:  # the op sees NaN where the input is 0
        return np.nan_to_num(chip, nan=0).astype(np.uint8)

    kw: dict[str, Any] = {"size": 32, "stride": 24, "agg": "centre", "chunks": 40}
    out = patchflow.apply(scene, to_uint8, **kw).compute()
    assert out.dtype == np.uint8
    assert out.rio.nodata == 0
    np.testing.assert_array_equal(out.values, a)  # nodata 0 exactly where each band had 0
    # with a fill value the op's band mixing is unknown: a pixel with any invalid band is
    # invalid in every output band (conservative, documented)
    filled = patchflow.apply(scene, identity, fill_value=0, **kw).compute()
    assert filled.dtype == np.uint8
    assert (filled.values[:, 10, 10] == 0).all()
    assert (filled.values[:, 40:44, 50:60] == 0).all()


def test_explicit_nodata_wins_and_collisions_are_refused() -> None:
    scene = aerial()
    scene = scene.where(scene != 7, 8).astype(np.uint8)  # 7 never occurs
    kw: dict[str, Any] = {"size": 32, "stride": 24, "agg": "max", "boundary": "drop"}
    out = patchflow.apply(scene, identity, nodata=7, **kw).compute()
    assert out.rio.nodata == 7
    covered = np.zeros(scene.shape[1:], bool)
    covered[: (150 - 32) // 24 * 24 + 32, : (170 - 32) // 24 * 24 + 32] = True
    assert (out.values[:, ~covered] == 7).all()
    np.testing.assert_array_equal(out.values[:, covered], scene.values[:, covered])
    # 8 is a real value: a covered 8 must not silently read back as missing
    with pytest.raises(NodataCollisionError, match=r"nodata=.*never returns"):
        patchflow.apply(scene, identity, nodata=8, **kw).compute()


def test_default_integer_nodata_collision_is_refused() -> None:
    # boundary="drop" leaves pixels uncovered; uint8 then defaults to nodata 255, which is
    # a real value of this scene: refuse instead of masking the real 255s
    with pytest.raises(NodataCollisionError, match="255"):
        patchflow.apply(
            aerial(), identity, size=32, stride=24, agg="max", boundary="drop"
        ).compute()


# --------------------------------------------------------------------------- per-band nodata


def test_one_band_nodata_does_not_wipe_the_pixel() -> None:
    a = np.full((3, 64, 64), 100, np.uint8)
    a[2, 10, 10] = 0
    scene = xr.DataArray(a, dims=("band", "y", "x")).rio.write_nodata(0)
    nd = patchflow.apply(scene, ops.NormalizedDifference(1, 0), size=32, stride=24)
    assert float(nd[0, 10, 10]) == 0.0
    same = patchflow.apply(scene, identity, size=32, stride=24).compute()
    assert same[:2, 10, 10].values.tolist() == [100, 100]
    assert np.isnan(same[2, 10, 10].item())
    assert int(np.isnan(same.values).sum()) == 1


def test_nodata_band_makes_dependent_outputs_invalid() -> None:
    a = np.full((2, 64, 64), 50, np.int16)
    a[0, 5, 5] = -9999
    scene = xr.DataArray(a, dims=("band", "y", "x")).rio.write_nodata(-9999)
    nd = patchflow.apply(scene, ops.NormalizedDifference(1, 0), size=32, stride=24).values
    assert np.isnan(nd[0, 5, 5])
    assert np.isnan(nd).sum() == 1


# --------------------------------------------------------------------------- whole numbers


def test_int16_dem_identity_roundtrips_exactly() -> None:
    rng = np.random.default_rng(3)
    dem = rng.integers(-420, 3000, (1, 300, 280)).astype(np.int16)
    dem[0, 7, 7] = -32768
    scene = xr.DataArray(dem, dims=("band", "y", "x")).rio.write_nodata(-32768)
    for agg in ("overlap_add", "mean"):
        out = patchflow.apply(scene, identity, size=64, stride=40, agg=agg, chunks=100).values
        valid = dem != -32768
        np.testing.assert_array_equal(out[valid], dem[valid])
        assert np.isnan(out[~valid]).all()


def test_apply_and_store_give_the_same_dtype(tmp_path: Any) -> None:
    scene = aerial()
    for agg in ("centre", "overlap_add", "max"):
        mem = patchflow.apply(scene, identity, size=32, stride=24, agg=agg, chunks=64)
        report = patchflow.run(
            scene, identity, store=tmp_path / f"{agg}.zarr", size=32, stride=24, agg=agg, chunks=64
        )
        stored = report.open()
        assert stored.dtype == mem.dtype, agg
        np.testing.assert_array_equal(stored.values, mem.values)


# --------------------------------------------------------------------------- padding


@settings(deadline=None, max_examples=30)
@given(
    mode=st.sampled_from(["wrap", "reflect", "symmetric", "edge", "constant"]),
    width=st.integers(31, 100),
    cy=st.integers(4, 20),
    cx=st.integers(5, 100),
)
def test_pad_values_are_the_scenes_not_the_blocks(mode: str, width: int, cy: int, cx: int) -> None:
    ramp = np.tile(np.arange(width, dtype=np.float64), (20, 1))[None]
    ramp += np.arange(20.0)[None, :, None] * 1000
    scene = xr.DataArray(ramp, dims=("band", "y", "x"))
    size = (8, 30)
    with dask.config.set(scheduler="synchronous"):
        out = patchflow.apply(
            scene,
            chip_mean,
            size=size,
            stride=size,
            boundary="pad",
            pad_mode=mode,
            window="boxcar",
            chunks=(cy, cx),
        ).values
    grid = patchflow.ChipGrid((20, width), size, size, "pad")
    ph = max(r for r, _ in grid.anchors) + size[0] - 20
    pw = max(c for _, c in grid.anchors) + size[1] - width
    padded = np.pad(ramp, ((0, 0), (0, ph), (0, pw)), mode=mode)
    expected = np.zeros_like(ramp)
    for r, c in grid.anchors:
        block = padded[:, r : r + size[0], c : c + size[1]]
        sl = (slice(None), slice(r, min(r + size[0], 20)), slice(c, min(c + size[1], width)))
        expected[sl] = block.mean()
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-9)


# --------------------------------------------------------------------------- time composites


def test_time_composite_skips_cloudy_dates_per_pixel() -> None:
    rng = np.random.default_rng(5)
    cube = rng.uniform(0.0, 1.0, (6, 2, 80, 90))
    cloudy = rng.random((6, 1, 80, 90)) < 0.4  # 40 % clouds per date, both bands
    cube = np.where(cloudy, np.nan, cube)
    arr = xr.DataArray(cube, dims=("time", "band", "y", "x"))

    def nanmedian(chip: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels
            return np.nanmedian(chip, axis=0)

    out = patchflow.apply(arr, nanmedian, over="time", size=32, stride=24, chunks=40).values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = np.nanmedian(cube, axis=0)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12, equal_nan=True)
    # only pixels cloudy on every date are invalid
    assert np.isnan(out).sum() == 2 * cloudy.all(axis=0).sum()


# --------------------------------------------------------------------------- names, attrs


def _nd(a: int, b: int) -> Any:
    return lambda x: (x[:, a : a + 1] - x[:, b : b + 1]) / (x[:, a : a + 1] + x[:, b : b + 1])


@pytest.mark.parametrize(
    ("op", "reference"),
    [
        (ops.NDVI(red="red", nir="nir"), _nd(1, 0)),
        (ops.NDVI(red=0, nir=1), _nd(1, 0)),
        (ops.NormalizedDifference(0, 1), _nd(0, 1)),
        (ops.SelectBands(["nir"]), lambda x: x[:, 1:2]),
    ],
    ids=["ndvi-names", "ndvi-positions", "normalized-difference", "select-bands"],
)
def test_band_ops_never_pick_bands_along_another_axis(op: Any, reference: Any) -> None:
    """With ``over="time"`` the op sees ``(time, band, h, w)`` chips, and band names bind
    to the band dim (the last non-spatial one): an op that picked "bands" on the first
    axis would silently pick dates there. Looped per date or seeing every date, the
    result is the op on each date."""
    rng = np.random.default_rng(0)
    data = rng.integers(1, 1000, (3, 2, 40, 40)).astype("float32")
    stack = xr.DataArray(data, dims=("time", "band", "y", "x"), coords={"band": ["red", "nir"]})
    for over in (None, "time"):
        out = patchflow.apply(stack, op, size=16, stride=12, window="boxcar", over=over)
        assert out.dims == ("time", "band", "y", "x")
        np.testing.assert_allclose(out.values, reference(data), rtol=1e-6)
    bound = op.bind(["red", "nir"])  # a batch (n, time, band, h, w) directly
    np.testing.assert_allclose(bound(data[None])[0], reference(data), rtol=1e-6)


def test_band_descriptions_follow_a_band_selection(tmp_path: Any) -> None:
    """rioxarray keeps a GeoTIFF's band descriptions in ``attrs["long_name"]`` unchanged
    through ``isel``: names must follow the band numbers the coordinate still holds, so
    a reordered or subset array binds ``red``/``nir`` to the right bands."""
    scene = patchflow.io.synthetic.make_scene((64, 64), chunks=None)
    scene = scene.assign_coords(band=[1, 2])
    scene.attrs["long_name"] = ("red", "nir")
    path = tmp_path / "described.tif"
    scene.rio.to_raster(path)
    opened = rioxarray.open_rasterio(path)
    op = ops.NDVI(red="red", nir="nir")
    want = patchflow.apply(opened, op, size=32, stride=32).values
    swapped = opened.isel(band=[1, 0])
    assert swapped.attrs["long_name"] == ("red", "nir")  # rioxarray does not reorder them
    np.testing.assert_array_equal(patchflow.apply(swapped, op, size=32, stride=32).values, want)
    red_only = opened.isel(band=[0])
    with pytest.raises(patchflow.ParameterError, match="'nir'"):
        patchflow.apply(red_only, op, size=32, stride=32)
    # sample_points names its value columns the same way
    gpd = pytest.importorskip("geopandas")
    x, y = float(opened.x[5]), float(opened.y[9])
    pts = gpd.GeoDataFrame(geometry=gpd.points_from_xy([x], [y]), crs=opened.rio.crs)
    got = patchflow.sample_points(swapped, pts)
    assert list(got.columns) == ["geometry", "nir", "red"]
    assert got["red"].iloc[0] == opened.values[0, 9, 5]
    assert got["nir"].iloc[0] == opened.values[1, 9, 5]


def test_result_is_named_and_describes_itself() -> None:
    data = np.random.default_rng(1).integers(1, 4000, (2, 60, 70)).astype(np.uint16)
    scene = xr.DataArray(
        data,
        dims=("band", "y", "x"),
        attrs={"units": "DN", "long_name": "digital numbers", "AREA_OR_POINT": "Area"},
    )
    ndvi = patchflow.apply(scene, ops.NDVI(red=0, nir=1), size=32, stride=24)
    assert ndvi.name == "ndvi"
    # the input's value attrs are not true of NDVI; the op's own are
    assert ndvi.attrs["units"] == "1" and ndvi.attrs["long_name"].startswith("normalized diff")
    assert ndvi.attrs.get("AREA_OR_POINT") == "Area"
    plain = patchflow.apply(scene, lambda c: c[:1] * 2.0, size=32, stride=24)
    assert plain.name == "result"
    named = patchflow.apply(scene.rename("dn"), lambda c: c * 2.0, size=32, stride=24)
    assert named.name == "dn"
    assert not str(named.name).startswith("patchflow-")


@pytest.mark.parametrize("writer", ["zarr", "netcdf", "geotiff"])
def test_lazy_result_roundtrips_crs_and_transform(tmp_path: Any, writer: str) -> None:
    from affine import Affine

    data = np.random.default_rng(2).uniform(0, 1, (2, 90, 80)).astype(np.float32)
    transform = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4200000.0)
    scene = (
        xr.DataArray(data, dims=("band", "y", "x"), name="refl")
        .assign_coords(
            y=transform.f + transform.e * (np.arange(90) + 0.5),
            x=transform.c + transform.a * (np.arange(80) + 0.5),
        )
        .rio.write_crs("EPSG:32633")
        .rio.write_transform(transform)
    )
    out = patchflow.apply(scene, lambda c: c * 2.0, size=32, stride=24)
    if writer == "zarr":
        out.to_dataset().to_zarr(tmp_path / "o.zarr", mode="w", consolidated=False)
        back = xr.open_zarr(tmp_path / "o.zarr", decode_coords="all", consolidated=False)[out.name]
    elif writer == "netcdf":
        out.to_netcdf(tmp_path / "o.nc")
        back = xr.open_dataarray(tmp_path / "o.nc", decode_coords="all")
    else:
        out.rio.to_raster(tmp_path / "o.tif")
        back = rioxarray.open_rasterio(tmp_path / "o.tif")
    assert back.rio.crs == scene.rio.crs
    assert back.rio.transform().almost_equals(transform)
    np.testing.assert_allclose(back.values, data * 2.0, rtol=1e-6)


def test_per_variable_results_are_never_outer_joined() -> None:
    from patchflow.api import _gather

    a = xr.DataArray(np.ones((1, 4, 5)), dims=("band", "y", "x"), coords={"band": ["ndvi"]})
    b = xr.DataArray(np.full((2, 4, 5), 2.0), dims=("band", "y", "x"), coords={"band": [1, 2]})
    ds = _gather({"a": a, "b": b}, {})
    # no NaN padding: each variable keeps exactly its own bands
    assert ds["a"].dims == ("band_a", "y", "x") and ds["b"].dims == ("band_b", "y", "x")
    assert not np.isnan(ds["a"].values).any() and not np.isnan(ds["b"].values).any()
    same = _gather({"a": a, "c": a * 3}, {})
    assert same["c"].dims == ("band", "y", "x")


def test_cli_nodata_wins_and_collisions_fail(tmp_path: Any, capsys: Any) -> None:
    import rasterio

    from patchflow.cli import main

    scene = aerial().where(aerial() != 7, 8).astype(np.uint8)
    src = tmp_path / "aerial.tif"
    scene.rio.write_crs("EPSG:4326").rio.to_raster(src)
    pipeline = tmp_path / "identity.json"
    pipeline.write_text(patchflow.to_json(ops.SelectBands([0, 1, 2, 3])))
    base = ["apply", str(src), "--pipeline", str(pipeline), "--size", "32", "--stride", "24"]
    base += ["--agg", "max", "--boundary", "drop", "--quiet"]
    # 255 is a real value of this scene: refused, never masked
    assert main([*base[:2], str(tmp_path / "bad.tif"), *base[2:], "--nodata", "255"]) == 1
    assert "--nodata" in capsys.readouterr().err
    assert main([*base[:2], str(tmp_path / "ok.tif"), *base[2:], "--nodata", "7"]) == 0
    with rasterio.open(tmp_path / "ok.tif") as f:
        assert f.nodata == 7
        data = f.read()
    covered = np.zeros(scene.shape[1:], bool)
    covered[: (150 - 32) // 24 * 24 + 32, : (170 - 32) // 24 * 24 + 32] = True
    np.testing.assert_array_equal(data[:, covered], scene.values[:, covered])
    assert (data[:, ~covered] == 7).all()


def test_decoded_input_keeps_real_values_equal_to_its_encoded_nodata() -> None:
    # read with masked=True: nodata already NaN in memory, encoded_nodata 0 describes the
    # file; a decoded real 0.0 (e.g. after scale/offset) must stay a valid value
    data = np.full((1, 60, 60), 0.5, np.float32)
    data[0, 5, 5] = 0.0
    data[0, 9, 9] = np.nan
    scene = xr.DataArray(data, dims=("band", "y", "x")).rio.write_nodata(0, encoded=True)
    assert scene.rio.encoded_nodata == 0
    out = patchflow.apply(scene, identity, size=32, stride=24).values
    assert out[0, 5, 5] == 0.0
    assert np.isnan(out[0, 9, 9]) and int(np.isnan(out).sum()) == 1


# --------------------------------------------------------------------------- pointwise path


@pytest.mark.parametrize("chunks", [None, 64, (50, 90)])
@pytest.mark.parametrize("agg", ["overlap_add", "centre"])
def test_pointwise_shortcut_keeps_nodata_dtype_and_values(chunks: Any, agg: str) -> None:
    # an int16 DEM with -32768 nodata: a declared-pointwise op (run once per block) must give
    # exactly what the same op gives as overlapping chips — values, dtype, nodata, validity —
    # whatever the chunking
    rng = np.random.default_rng(7)
    dem = rng.integers(-420, 3000, (1, 211, 197)).astype(np.int16)
    dem[0, 20:30, 40:60] = -32768
    dem[0, 150, 3] = -32768
    scene = xr.DataArray(dem, dims=("band", "y", "x")).rio.write_nodata(-32768)

    def offset(c: np.ndarray) -> np.ndarray:
        return np.where(np.isnan(c), c, c + 100)

    kw: dict[str, Any] = {"size": 32, "stride": 24, "agg": agg, "chunks": chunks}
    fast = patchflow.apply(scene, ops.Lambda(offset, batched=True, pointwise=True), **kw)
    slow = patchflow.apply(scene, ops.Lambda(offset, batched=True), **kw)
    halo = [k for k in fast.data.__dask_graph__() if "patchflow-halo" in str(k)]
    assert not halo  # the shortcut was taken: one chip strip per block, no halo
    assert fast.dtype == slow.dtype
    assert str(fast.rio.nodata) == str(slow.rio.nodata)
    np.testing.assert_allclose(fast.values, slow.values, rtol=0, atol=1e-9, equal_nan=True)
    invalid = dem[0] == -32768
    assert np.isnan(fast.values[0][invalid]).all()
    np.testing.assert_array_equal(fast.values[0][~invalid], dem[0][~invalid] + 100)


# --------------------------------------------------------------------------- stores and gaps


def _int16_dem(seed: int = 0) -> xr.DataArray:
    """An int16 DEM with a -32768 nodata collar (rioxarray-declared)."""
    dem = np.random.default_rng(seed).integers(-400, 3000, (1, 200, 190)).astype(np.int16)
    dem[0, :, :13] = -32768
    return xr.DataArray(dem, dims=("band", "y", "x")).rio.write_nodata(-32768)


def _to_int16(chip: np.ndarray) -> np.ndarray:
    return np.nan_to_num(chip, nan=0).astype(np.int16)


@pytest.mark.parametrize("agg", ["max", "centre", "mode"])
def test_store_keeps_an_integer_result_with_nodata_an_integer(tmp_path: Any, agg: str) -> None:
    # xarray's default decoding turns an int + _FillValue variable into float32 with NaN:
    # the stored result must read back as what apply returns (dtype, nodata, values)
    scene = _int16_dem()
    kw: dict[str, Any] = {"size": 64, "stride": 48, "agg": agg, "chunks": 128}
    mem = patchflow.apply(scene, _to_int16, **kw)
    report = patchflow.run(scene, _to_int16, store=tmp_path / "dem.zarr", **kw)
    for stored in (report.open(), patchflow.open_result(tmp_path / "dem.zarr")):
        assert stored.dtype == mem.dtype == np.int16
        assert stored.rio.nodata == mem.rio.nodata == -32768
        np.testing.assert_array_equal(stored.values, mem.values)


@pytest.mark.parametrize("output", ["zarr", "zarr2", "tif"])
def test_an_explicit_float_nodata_is_the_stored_nodata(tmp_path: Any, output: str) -> None:
    # nodata=-5 on a float result: NaN in memory, -5 on disk (as apply + rio.to_raster
    # writes it) — in a store, in a Zarr v2 store and in a COG alike
    data = np.random.default_rng(0).uniform(0, 200, (1, 200, 200)).astype(np.float32)
    data[0, :7] = np.nan
    scene = xr.DataArray(data, dims=("band", "y", "x"))
    kw: dict[str, Any] = {"size": 64, "stride": 48, "chunks": 128, "nodata": -5}
    mem = patchflow.apply(scene, identity, **kw)
    assert mem.rio.encoded_nodata == -5
    path = tmp_path / ("out.tif" if output == "tif" else "out.zarr")
    extra = {"zarr_format": 2} if output == "zarr2" else {}
    report = patchflow.run(scene, identity, store=path, **kw, **extra)
    if output == "tif":
        import rasterio

        with rasterio.open(path) as src:
            raw = src.read()
            assert src.nodata == -5
        stored = report.open()
        assert stored.rio.encoded_nodata == -5
        np.testing.assert_array_equal(stored.values, mem.values)  # NaN where invalid
    else:
        import zarr

        raw = np.asarray(zarr.open_array(str(path), path=report.var, mode="r")[...])
        stored = patchflow.open_result(path)
        assert stored.rio.encoded_nodata == -5
        np.testing.assert_array_equal(stored.values, mem.values)  # NaN where invalid
    invalid = np.isnan(mem.values)
    assert invalid.any()
    assert (raw[invalid] == -5).all()
    np.testing.assert_array_equal(raw[~invalid], mem.values[~invalid])


def _mean_and_variance(chip: np.ndarray) -> np.ndarray:
    return np.concatenate([chip, np.abs(chip) + np.float32(0.1)], axis=-3)


# every aggregation but the votes (they need class labels, not these float values)
@pytest.mark.parametrize("agg", [a for a in get_args(Agg) if a not in ("vote", "soft_vote")])
def test_a_block_without_chips_is_nodata_for_every_aggregation(agg: str) -> None:
    # boundary="drop" with 128-px blocks: the last block row owns no chip and no chip
    # reaches it; its pixels are nodata and the rest equals the one-block result
    data = np.random.default_rng(0).uniform(0, 1, (1, 300, 280)).astype(np.float32)
    scene = xr.DataArray(data, dims=("band", "y", "x"))
    op = _mean_and_variance if agg == "inverse_variance" else identity
    kw: dict[str, Any] = {"size": 64, "stride": 48, "agg": agg, "boundary": "drop"}
    blocks = patchflow.apply(scene, op, chunks=128, **kw).values
    whole = patchflow.apply(scene, op, **kw).values
    np.testing.assert_allclose(blocks, whole, rtol=1e-6, atol=1e-6, equal_nan=True)
    assert np.isnan(blocks[..., 256:, :]).all()  # rows 256+ (3 x 48 + 64 = 208 covered)


# --------------------------------------------------------------------------- encoding, band labels


def _packed_geotiff(tmp_path: Any) -> xr.DataArray:
    """A Landsat-like uint16 GeoTIFF with CF packing (scales/offsets) and band descriptions,
    opened as rioxarray does by default: raw DN, ``scale_factor``/``add_offset`` in attrs."""
    import rasterio

    data = np.random.default_rng(0).integers(7000, 20000, (2, 40, 40)).astype(np.uint16)
    src = xr.DataArray(
        data,
        dims=("band", "y", "x"),
        coords={"y": np.arange(40)[::-1] * 30.0 + 15, "x": np.arange(40) * 30.0 + 15},
    ).rio.write_crs("EPSG:32633")
    path = tmp_path / "packed.tif"
    src.rio.to_raster(path)
    with rasterio.open(path, "r+") as dst:
        dst.scales, dst.offsets = (2.75e-5, 2.75e-5), (-0.2, -0.2)
        dst.descriptions = ("red", "nir")
    opened = rioxarray.open_rasterio(path)
    assert (opened.attrs["scale_factor"], opened.attrs["add_offset"]) == (2.75e-5, -0.2)
    return opened


@pytest.mark.parametrize("agg", ["overlap_add", "centre", "mean_std"])
def test_a_value_keeping_op_carries_no_cf_packing_attrs(tmp_path: Any, agg: str) -> None:
    # the result holds the op's values (raw DN here), never packed ones: a scale_factor /
    # add_offset on it would be applied by every CF reader of the store (open_result
    # returned DN x 2.75e-5 - 0.2, and a negative std)
    scene = _packed_geotiff(tmp_path)
    for op in (ops.SelectBands(["nir"]), ops.SelectBands([0, 1])):
        kw: dict[str, Any] = {"size": 16, "stride": 12, "agg": agg}
        mem = patchflow.apply(scene, op, **kw)
        for key in ("scale_factor", "add_offset", "scales", "offsets"):
            assert key not in mem.attrs, key
        store = tmp_path / f"{agg}-{len(op.output_band_names(['red', 'nir']))}.zarr"
        patchflow.run(scene, op, store=store, **kw)
        back = patchflow.open_result(store)
        assert back.dtype == mem.dtype
        np.testing.assert_array_equal(back.values, mem.values)
        if agg == "mean_std":
            assert (back.sel(stat="std").values >= 0).all()


def test_cf_encoding_attrs_never_reach_the_result() -> None:
    encoding = {
        "scale_factor": 0.01,
        "add_offset": 5.0,
        "missing_value": 0,
        "valid_range": (1, 1000),
        "valid_min": 1,
        "valid_max": 1000,
        "_Unsigned": "true",
    }
    scene = xr.DataArray(
        np.arange(2 * 32 * 32, dtype=np.int16).reshape(2, 32, 32) % 999 + 1,
        dims=("band", "y", "x"),
        attrs={**encoding, "units": "DN"},
    )
    for op in (ops.SelectBands([1]), identity):
        out = patchflow.apply(scene, op, size=16, stride=12)
        assert not set(encoding) & set(out.attrs), op
    assert patchflow.apply(scene, ops.SelectBands([1]), size=16, stride=12).attrs["units"] == "DN"


def test_band_labels_follow_a_selection_of_numbered_bands() -> None:
    # open_rasterio numbers bands 1, 2, 3 (no descriptions): a reordering or subset must
    # carry the numbers with the bands, so out.sel(band=k) is the input's band k
    values = (10.0, 20.0, 30.0)
    data = np.stack([np.full((32, 32), v, "float32") for v in values])
    scene = xr.DataArray(data, dims=("band", "y", "x"), coords={"band": [1, 2, 3]})
    for indices in ([2, 1, 0], [2, 0], [1], [0, 0, 2]):
        out = patchflow.apply(scene, ops.SelectBands(indices), size=16, stride=16)
        assert out.band.values.tolist() == [[1, 2, 3][i] for i in indices]
        for k in set(out.band.values.tolist()):
            picked = out.sel(band=k).values.reshape(-1, 32, 32)[0]
            np.testing.assert_array_equal(picked, data[k - 1])
    # a pipeline whose output labels patchflow cannot work out keeps no stale labels
    mixed = ops.Branch(ops.SelectBands([1]), ops.NDVI(red=0, nir=1))
    out = patchflow.apply(scene.isel(band=[0, 1]), mixed, size=16, stride=16)
    assert out.sizes["band"] == 2
    assert "band" not in out.coords or out.band.values.tolist() != [1, 2]


# --------------------------------------------------------------------------- resolution changes


def _column_scene(size: int = 256) -> xr.DataArray:
    """One band whose value is the pixel's column: a misplaced output pixel shows."""
    from affine import Affine

    t = Affine(10, 0, 500000, 0, -10, 4200000)
    cols = np.arange(size, dtype="float32")[None, None, :].repeat(size, 1)
    coords = {"y": t.f + t.e * (np.arange(size) + 0.5), "x": t.c + t.a * (np.arange(size) + 0.5)}
    return xr.DataArray(cols, dims=("band", "y", "x"), coords=coords).rio.write_crs("EPSG:32633")


def _valid_conv(chip: np.ndarray) -> np.ndarray:
    """A 5x5 'valid' convolution's footprint: 2 px lost on every side."""
    return chip[..., 2:-2, 2:-2]


def _up_three_halves(chip: np.ndarray) -> np.ndarray:
    """Nearest-neighbour x1.5 (a true resolution change by a non-integer factor): output
    pixel ``i`` (centre at input ``(i + 0.5) * 2/3``) takes input pixel ``(2i + 1) // 3``."""
    h, w = chip.shape[-2:]
    rows, cols = (2 * np.arange(h * 3 // 2) + 1) // 3, (2 * np.arange(w * 3 // 2) + 1) // 3
    return chip[..., rows, :][..., cols]


def test_a_cropping_op_is_refused_not_taken_as_a_resolution_change() -> None:
    # 64 -> 60 px is a 15/16 "scale" only in its numbers: taking it as one resampled the
    # raster and put output pixels up to 2 px away from where their values came from
    scene = _column_scene()
    with pytest.raises(OperatorError, match=r"\(64, 64\).*\(60, 60\).*pad") as err:
        patchflow.apply(scene, _valid_conv, size=64, stride=48, window="boxcar")
    assert "scale=" in str(err.value)
    # a true x1.5 is a resolution change: its output pixels sit where their values are from
    out = patchflow.apply(scene, _up_three_halves, size=64, stride=48, window="boxcar")
    assert out.shape == (1, 384, 384)
    assert out.rio.transform().a == pytest.approx(10 / 1.5)
    centres = (out.x.values - 500000) / 10  # in input columns
    np.testing.assert_array_equal(out.values[0, 0], np.floor(centres))


def test_a_declared_scale_that_the_op_does_not_keep_is_refused() -> None:
    # scale=0.25 with an op that halves was silently replaced by the dry run's 1/2
    scene = xr.DataArray(
        np.random.default_rng(0).uniform(size=(1, 48, 48)), dims=("band", "y", "x")
    )
    halve = lambda c: c[..., ::2, ::2]  # noqa: E731
    with pytest.raises(OperatorError, match=r"scale=0\.25.*1/4.*1/2"):
        patchflow.apply(scene, halve, size=16, stride=8, scale=0.25)
    with pytest.raises(OperatorError, match=r"scale=2.*2/1.*1/1"):
        patchflow.apply(scene, identity, size=16, stride=8, scale=2)
    # an operator's own declaration is held to the same test
    lying = ops.Lambda(identity, scale=2.0)
    with pytest.raises(OperatorError, match=r"declares scale 2/1.*1/1"):
        patchflow.apply(scene, lying, size=16, stride=8)
    # a true declaration passes, a crop declared as a scale is taken at its word
    assert patchflow.apply(scene, halve, size=16, stride=8, scale=0.5).shape == (1, 24, 24)
    crop = patchflow.apply(scene, _valid_conv, size=16, stride=8, scale=12 / 16)
    assert crop.shape == (1, 36, 36)


def test_a_one_pixel_axis_needs_a_recorded_transform_to_change_resolution() -> None:
    # one row: its pixel height cannot be read from one y coordinate, and rioxarray's
    # fallback is the identity transform (output x coords became 0.25, 0.75, ...)
    from affine import Affine

    from patchflow.errors import DimensionError

    x = 500 + 10 * (np.arange(29) + 0.5)
    row = xr.DataArray(
        np.random.default_rng(0).uniform(size=(1, 1, 29)),
        dims=("band", "y", "x"),
        coords={"y": [8990.0], "x": x},
    ).rio.write_crs("EPSG:32633")
    up2 = lambda c: np.repeat(np.repeat(c, 2, -2), 2, -1)  # noqa: E731
    with pytest.raises(DimensionError, match=r"1 pixel.*'y'.*rio\.write_transform"):
        patchflow.apply(row, up2, size=8, stride=6, boundary="pad")
    georef = row.rio.write_transform(Affine(10, 0, 500, 0, -10, 8995))
    out = patchflow.apply(georef, up2, size=8, stride=6, boundary="pad")
    np.testing.assert_allclose(out.x.values[:3], [502.5, 507.5, 512.5])
    np.testing.assert_allclose(out.y.values, [8992.5, 8987.5])
    assert tuple(out.rio.transform())[:6] == (5.0, 0.0, 500.0, 0.0, -5.0, 8995.0)


def test_a_centre_crop_to_half_the_chip_is_not_taken_for_a_downsampling() -> None:
    # a model that drops a fixed 32-px margin ('valid' convolutions: 128 px in, 64 out)
    # gives the ratio 1/2, which a block-mean downsampling gives too: taken as one, every
    # output pixel would sit up to 32 px from where its value came from. (A crop that keeps
    # the same *fraction* at every chip size cannot be told from a scale by its shapes.)
    scene = xr.DataArray(
        np.random.default_rng(0).uniform(0, 1, (1, 256, 256)).astype(np.float32),
        dims=("band", "y", "x"),
    )

    def centre_half(chip: np.ndarray) -> np.ndarray:
        return chip[..., 32:-32, 32:-32]

    def block_mean(chip: np.ndarray) -> np.ndarray:
        *lead, h, w = chip.shape
        return chip.reshape(*lead, h // 2, 2, w // 2, 2).mean(axis=(-3, -1))

    def fixed_size_block_mean(chip: np.ndarray) -> np.ndarray:
        if chip.shape[-2:] != (128, 128):  # a model built for one input size
            raise ValueError("this model takes 128 x 128 chips only")
        return block_mean(chip)

    def fixed_size_centre_half(chip: np.ndarray) -> np.ndarray:
        if chip.shape[-2:] != (128, 128):
            raise ValueError("this model takes 128 x 128 chips only")
        return centre_half(chip)

    kw: dict[str, Any] = {"size": 128, "stride": 96}
    with pytest.raises(patchflow.errors.OperatorError, match=r"removes pixels.*scale="):
        patchflow.apply(scene, centre_half, **kw)
    # declared, the user takes responsibility (as for any declared scale)
    assert patchflow.apply(scene, centre_half, scale=0.5, **kw).shape == (1, 128, 128)
    # a real downsampling is accepted
    want = block_mean(scene.values)
    got = patchflow.apply(scene, block_mean, window="boxcar", **kw).values
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # an op that takes one chip size only cannot show which of the two it is: the crop
    # would pass as a ½ downsampling, so both are refused until scale= says it scales
    for op in (fixed_size_centre_half, fixed_size_block_mean):
        with pytest.raises(
            patchflow.errors.OperatorError, match=r"fails on a \(256, 256\) chip.*scale=1/2"
        ):
            patchflow.apply(scene, op, window="boxcar", **kw)
    got = patchflow.apply(scene, fixed_size_block_mean, window="boxcar", scale=0.5, **kw)
    np.testing.assert_allclose(got.values, want, rtol=1e-5)


# --------------------------------------------------------------------------- per-band nodata

#: (dtype, each band's nodata): VRT, ENVI, HFA and netCDF files keep one per band
BAND_NODATA = [
    (np.uint8, (0, 255)),
    (np.int16, (-32768, 0, 7)),
    (np.int32, (0, -1)),
    (np.float32, (-9999.0, 0.0)),
    (np.uint16, (0, None)),  # band 2 declares none: its 0s are real
]


def double(chip: np.ndarray) -> np.ndarray:
    return chip * 2


@pytest.mark.parametrize(("dtype", "nodatas"), BAND_NODATA)
def test_each_band_of_a_file_keeps_its_own_nodata(tmp_path: Any, dtype: Any, nodatas: Any) -> None:
    from patchflow.io.sources import open_raster

    # a file whose bands have different nodata values, read as one value (band 1's) for
    # all bands, masked band 2's real values equal to it and kept its nodata as data
    vrt, data = write_band_nodata_vrt(tmp_path, nodatas, dtype=dtype)
    want = band_nodata_reference(data, nodatas) * 2
    scene = open_raster(vrt, chunks=40)
    # centre: each pixel from one chip, so the values are exact whatever their size
    kw: dict[str, Any] = {"size": 32, "stride": 24, "agg": "centre"}
    for out in (patchflow.apply(scene, double, **kw), scene.patch.apply(double, **kw)):
        got = out.values
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(got.astype(np.float64), want)


def test_cli_keeps_each_bands_own_nodata(tmp_path: Any) -> None:
    import rasterio

    from patchflow.cli import main

    nodatas = (0, 255)
    vrt, data = write_band_nodata_vrt(tmp_path, nodatas)
    pipeline = tmp_path / "identity.json"
    pipeline.write_text(patchflow.to_json(ops.SelectBands([0, 1])))
    out = tmp_path / "out.tif"
    argv = ["apply", vrt, str(out), "--pipeline", str(pipeline), "--size", "32", "--stride", "24"]
    assert main([*argv, "--quiet"]) == 0
    with rasterio.open(out) as f:
        got = f.read().astype(np.float64)
        nodata = f.nodata
    if nodata is not None and not np.isnan(nodata):
        got[got == nodata] = np.nan
    want = band_nodata_reference(data, nodatas)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(got, want)


def test_one_nodata_for_bands_with_their_own_is_refused(tmp_path: Any) -> None:
    from patchflow.errors import BandNodataError
    from patchflow.plan.samplers import RegularStride

    nodatas = (0, 255)
    vrt, data = write_band_nodata_vrt(tmp_path, nodatas)
    want = band_nodata_reference(data, nodatas) * 2
    kw: dict[str, Any] = {"size": 32, "stride": 24}
    # rioxarray reads band 1's nodata (0) as the whole array's: band 2's real 0s would
    # become invalid and its nodata 255s data
    plain = rioxarray.open_rasterio(vrt, chunks={"x": 40, "y": 40})
    assert plain.attrs["_FillValue"] == 0
    match = r"bands\.vrt.*band 1: 0, band 2: 255.*masked=True.*open_raster.*input_nodata="
    calls = {
        "apply": lambda: patchflow.apply(plain, double, **kw),
        "accessor": lambda: plain.patch.apply(double, **kw),
        "run": lambda: patchflow.run(plain, double, store=tmp_path / "o.zarr", **kw),
        "sample": lambda: patchflow.sample(plain, RegularStride(stride=32), size=32),
        "stitch": lambda: patchflow.stitch(plain, np.zeros((1, 2, 32, 32)), [[0, 0]]),
        "dataset": lambda: patchflow.apply(plain.to_dataset(name="v"), double, **kw),
        "one band": lambda: patchflow.apply(plain.sel(band=[2]), double, **kw),
    }
    for what, call in calls.items():
        with pytest.raises(BandNodataError, match=match):
            call()
        assert not (tmp_path / "o.zarr").exists(), what
    # the fixes: each band masked with its own nodata...
    masked = rioxarray.open_rasterio(vrt, masked=True, chunks={"x": 40, "y": 40})
    np.testing.assert_array_equal(patchflow.apply(masked, double, **kw).values, want)
    # ... or one value on purpose, for every band
    explicit = patchflow.apply(plain, double, input_nodata=0, **kw).values
    assert np.isnan(explicit[1][data[1] == 0]).all()
    # band 1 alone really has nodata 0: nothing to refuse
    first = patchflow.apply(plain.sel(band=[1]), double, **kw).values
    np.testing.assert_array_equal(first, want[:1])
    # rioxarray's band_as_variable gives each band its own nodata (a Dataset is masked
    # variable by variable)
    per_band = rioxarray.open_rasterio(vrt, band_as_variable=True)
    np.testing.assert_array_equal(patchflow.apply(per_band, double, **kw).values, want)


# --------------------------------------------------------------------------- STAC grids


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_stac_asset_on_an_offset_grid_comes_back_on_its_own_grid(tmp_path: Any) -> None:
    """An asset whose pixel corners are not on multiples of its resolution (Landsat-style:
    corners at odd multiples of 15 m with 30 m pixels; here 10 m pixels offset by half a
    pixel): open_stac's default snapped the bounds to multiples of 10 m (GDAL's -tap), so
    the output grid sat half a pixel off the asset's, and "nearest" put every value half a
    pixel away from where the file has it, one row and column larger, without a word."""
    import json

    from affine import Affine

    from patchflow.io.stac import open_stac

    transform = Affine(10.0, 0.0, 740_005.0, 0.0, -10.0, 4_340_005.0)
    data = np.arange(1, 1 + 40 * 30, dtype=np.uint16).reshape(1, 40, 30)
    band = xr.DataArray(data, dims=("band", "y", "x"), coords={"band": [1]})
    band = band.rio.write_crs("EPSG:32610").rio.write_transform(transform)
    band = band.assign_coords(
        x=740_005.0 + 10.0 * (np.arange(30) + 0.5), y=4_340_005.0 - 10.0 * (np.arange(40) + 0.5)
    )
    band.rio.to_raster(tmp_path / "B04.tif")
    asset = {
        "href": "B04.tif",
        "proj:code": "EPSG:32610",
        "proj:shape": [40, 30],
        "proj:transform": list(transform)[:6],
    }
    item = stac_item("offset", {"B04": asset})
    (tmp_path / "item.json").write_text(json.dumps(item))
    ref = rioxarray.open_rasterio(tmp_path / "B04.tif")
    assert isinstance(ref, xr.DataArray) and ref.rio.transform() == transform
    with warnings.catch_warnings():
        warnings.simplefilter("error", patchflow.PatchflowWarning)  # exact: nothing to say
        stack = open_stac(tmp_path / "item.json", assets=["B04"])
    assert stack.rio.transform() == stack.rio.transform(recalc=True) == transform
    assert stack.shape == (1, 1, 40, 30)
    np.testing.assert_array_equal(stack.x.values, ref.x.values)
    np.testing.assert_array_equal(stack.y.values, ref.y.values)
    np.testing.assert_array_equal(stack.values[0], ref.values)


# --------------------------------------------------------------------------- georeference


def _fine_geotiff(path: Any) -> Any:
    """A 2-band GeoTIFF on 0.1 m pixels far from the origin, where coordinates rounded to
    float64 no longer give the transform back to the bit; returns its transform."""
    import rasterio
    from rasterio.transform import from_origin

    transform = from_origin(523_456.7, 4_181_234.3, 0.1, 0.1)
    data = np.random.default_rng(7).integers(0, 255, (2, 120, 150), dtype=np.uint8)
    profile = {"driver": "GTiff", "width": 150, "height": 120, "count": 2, "dtype": "uint8"}
    with rasterio.open(path, "w", crs="EPSG:32633", transform=transform, **profile) as dst:
        dst.write(data)
    return transform


def test_results_carry_the_files_own_transform(tmp_path: Any) -> None:
    """The result, the Zarr store and the COG written from it have the input file's
    geotransform exactly (not one refitted from the pixel-centre coordinates, off in the
    last bit), a window of the file has rasterio's window transform, and a resampled
    array (whose recorded transform is stale) keeps the one its coordinates give."""
    import rasterio
    from rasterio.windows import Window

    transform = _fine_geotiff(tmp_path / "in.tif")
    scene = rioxarray.open_rasterio(tmp_path / "in.tif", chunks={"y": 64, "x": 64})
    assert isinstance(scene, xr.DataArray)
    assert scene.rio.transform(recalc=True) != transform  # what refitting would give

    def double(chip: np.ndarray) -> np.ndarray:
        return chip.astype(np.float32) * 2

    out = patchflow.apply(scene, double, size=32, stride=24)
    assert out.rio.transform() == transform
    patchflow.run(scene, double, store=tmp_path / "out.zarr", size=32, stride=24)
    assert patchflow.open_result(tmp_path / "out.zarr").rio.transform() == transform
    patchflow.run(scene, double, store=tmp_path / "out.tif", size=32, stride=24)
    with rasterio.open(tmp_path / "out.tif") as src:
        assert src.transform == transform

    window = scene.isel(y=slice(30, 100), x=slice(41, 140))
    with rasterio.open(tmp_path / "in.tif") as src:
        expected = src.window_transform(Window(41, 30, 99, 70))
    cut = patchflow.apply(window, lambda c: c.astype(np.float32), size=32, stride=24)
    assert cut.rio.transform() == expected

    coarse = scene.coarsen(y=2, x=2).mean()  # keeps the file's (now stale) GeoTransform
    half = patchflow.apply(coarse, lambda c: c * 1, size=16, stride=12)
    assert half.rio.transform().almost_equals(transform @ transform.scale(2), precision=1e-9)
    np.testing.assert_array_equal(half.x.values, coarse.x.values)


@pytest.mark.parametrize(
    ("agg", "nodata", "op"),
    [
        ("overlap_add", None, lambda c: c[:1] * 1e-4),  # float, NaN where invalid
        ("overlap_add", -9999.0, lambda c: c[:1] * 1e-4),  # float, -9999 on disk
        ("mean_std", None, lambda c: c[:1] * 1e-4),  # a leading stat dim
        ("centre", 250, lambda c: (c[:1] % 200).astype("uint8")),  # integer with nodata
    ],
    ids=["float-nan", "float-9999", "mean-std", "uint8-250"],
)
def test_a_deleted_result_chunk_never_reads_as_nodata(
    agg: str, nodata: Any, op: Any, tmp_path: Any, dask_computes: Any
) -> None:
    """Zarr hands out a deleted chunk as its fill value: plain ``xr.open_zarr`` reads a
    lost block as a block of nodata, silently. ``open_result`` checks each block against
    the checksum written with it as it is read (no second read of the result): the
    intact blocks read exactly as a fully verified open gives them, the lost one is a
    ``CorruptStoreError`` naming it; opening computes and reads nothing."""
    from patchflow.io.store import CorruptStoreError

    scene = patchflow.io.synthetic.make_scene((300, 280), chunks=128)
    store = tmp_path / "out.zarr"
    kw: dict[str, Any] = {"size": 64, "stride": 48, "chunks": 128, "boundary": "drop"}
    patchflow.run(scene, op, store=store, agg=agg, nodata=nodata, **kw)
    checked = patchflow.open_result(store, verify="now").load()
    invalid = checked == nodata if checked.dtype.kind in "iu" else checked.isnull()
    assert invalid.any()  # uncovered margin (boundary="drop")
    with dask_computes(max_computes=0):
        lazy = patchflow.open_result(store)
    for key in ("dtype", "dims", "shape", "attrs", "name"):
        assert getattr(lazy, key) == getattr(checked, key), key
    np.testing.assert_array_equal(lazy.values, checked.values)
    assert repr(lazy.encoding.get("_FillValue")) == repr(checked.encoding.get("_FillValue"))
    name = str(lazy.name)
    for chunk in (store / name / "c").rglob("*"):
        if chunk.is_file() and chunk.parts[-2:] == ("1", "1"):
            chunk.unlink()
    plain = xr.open_zarr(store)[name].values
    assert not np.array_equal(plain, checked.values, equal_nan=True)  # silently lost
    lazy = patchflow.open_result(store)
    np.testing.assert_array_equal(lazy[..., :128, :].values, checked[..., :128, :].values)
    with pytest.raises(CorruptStoreError, match=r"block \(1, 1\)"):
        lazy.load()
    with pytest.raises(CorruptStoreError, match=r"\(1, 1\)"):
        patchflow.open_result(store, verify="now")
