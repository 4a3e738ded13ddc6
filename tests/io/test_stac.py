"""``patchflow.io.stac.open_stac`` (issue 15): local STAC items with real GeoTIFF assets →
a lazy, georeferenced ``(time, band, y, x)`` stack whose every value, coordinate, CRS and
transform equals reading the GeoTIFFs with rioxarray directly; named errors for bad input.

The items are written the way pystac ≥ 1.12 writes them: projection v2 ``proj:code`` only
(no ``proj:epsg``, the field stackstac 0.5.1 reads).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
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
from conftest import stac_item, write_band_tif

import patchflow
from patchflow.errors import (
    InputReadError,
    InputTypeError,
    ParameterError,
    PatchflowError,
    ResampledGridWarning,
)
from patchflow.io.stac import open_stac
from patchflow.io.synthetic import CRS, ORIGIN
from patchflow.ops import Composite

pystac = pytest.importorskip("pystac")
stackstac = pytest.importorskip("stackstac")
from pystac.extensions.projection import ProjectionExtension  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")

SHAPE = (300, 260)
X0, Y0 = ORIGIN
T10 = Affine(10.0, 0.0, X0, 0.0, -10.0, Y0)
T20 = Affine(20.0, 0.0, X0, 0.0, -20.0, Y0)
DATES = [datetime.datetime(2024, 6, 1 + 5 * k, tzinfo=datetime.UTC) for k in range(3)]
SIZE, STRIDE = 128, 96


def make_item(
    root: Path, date: datetime.datetime, bands: dict[str, tuple[np.ndarray, Affine]], epsg: int
) -> Any:
    """A pystac Item whose assets are GeoTIFFs written into ``root`` (proj:code only)."""
    item = pystac.Item(
        id=f"S2_{date:%Y%m%d}_{epsg}", geometry=None, bbox=None, datetime=date, properties={}
    )
    for name, (band, transform) in bands.items():
        path = root / f"{item.id}_{name}.tif"
        write_band_tif(path, band, transform, f"EPSG:{epsg}", nodata=0)
        asset = pystac.Asset(href=str(path), media_type=pystac.MediaType.COG)
        item.add_asset(name, asset)
        proj = ProjectionExtension.ext(asset, add_if_missing=True)
        proj.epsg = epsg  # pystac ≥ 1.12 stores this as proj:code "EPSG:…"
        proj.shape = list(band.shape)
        proj.transform = list(transform)[:6]
    return item


@pytest.fixture(scope="module")
def stac_dir(
    scene_factory: Callable[..., xr.DataArray], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """3 dates × (B04, B08 at 10 m; B11 at 20 m), uint16 GeoTIFFs with nodata 0 and holes
    (a "cloud" on date 1, a B04-only hole on every date). Written as: an ItemCollection
    file ``items.json``, one Item file per date ``item_k.json``, and a JSON list of Items
    ``list.json``."""
    root = tmp_path_factory.mktemp("stac")
    items = []
    for k, date in enumerate(DATES):
        red, nir = scene_factory(SHAPE, seed=30 + k).values
        b11 = scene_factory((SHAPE[0] // 2, SHAPE[1] // 2), seed=40 + k).values[0]
        if k == 1:
            red[50:90, 100:180] = nir[50:90, 100:180] = 0
        red[200:210, 20:40] = 0
        bands = {"B04": (red, T10), "B08": (nir, T10), "B11": (b11, T20)}
        items.append(make_item(root, date, bands, 32610))
    collection = pystac.ItemCollection(items)
    (root / "items.json").write_text(json.dumps(collection.to_dict()))
    for k, item in enumerate(items):
        (root / f"item_{k}.json").write_text(json.dumps(item.to_dict()))
    (root / "list.json").write_text(json.dumps([item.to_dict() for item in items]))
    return root


def tif(root: Path, k: int, name: str) -> Path:
    return root / f"S2_{DATES[k]:%Y%m%d}_32610_{name}.tif"


def read_tif(path: Path) -> xr.DataArray:
    """The GeoTIFF read directly with rioxarray, nodata masked to NaN (float64)."""
    da = rioxarray.open_rasterio(path, masked=True)
    assert isinstance(da, xr.DataArray)
    return da.isel(band=0).astype(np.float64)


def expected(root: Path, names: list[str]) -> np.ndarray:
    """(time, band, y, x) of rioxarray reads."""
    return np.stack(
        [np.stack([read_tif(tif(root, k, n)).values for n in names]) for k in range(len(DATES))]
    )


@pytest.fixture(scope="module")
def s2(stac_dir: Path) -> xr.DataArray:
    return open_stac(stac_dir / "items.json", assets=["B04", "B08"], chunks=128)


# --------------------------------------------------------------------------- values, geo


def test_items_use_projection_v2_only(stac_dir: Path) -> None:
    # what makes the proj:code normalisation necessary: no proj:epsg anywhere, and
    # stackstac on the raw items cannot find a CRS
    doc = json.loads((stac_dir / "items.json").read_text())
    asset = doc["features"][0]["assets"]["B04"]
    assert asset["proj:code"] == "EPSG:32610"
    assert "proj:epsg" not in asset
    with pytest.raises(ValueError, match="CRS"):
        stackstac.stack(doc["features"], assets=["B04"])


def test_values_equal_rioxarray_reads(s2: xr.DataArray, stac_dir: Path) -> None:
    assert s2.dims == ("time", "band", "y", "x")
    assert s2.shape == (3, 2, *SHAPE)
    assert list(s2.band.values) == ["B04", "B08"]
    assert s2.dtype == np.float64
    assert s2.chunks is not None and s2.chunks[2][0] == s2.chunks[3][0] == 128
    np.testing.assert_array_equal(
        s2.time.values, [np.datetime64(d.replace(tzinfo=None)) for d in DATES]
    )
    values = s2.values
    for k in range(len(DATES)):
        for b, name in enumerate(["B04", "B08"]):
            np.testing.assert_array_equal(values[k, b], read_tif(tif(stac_dir, k, name)).values)
    # nodata (GeoTIFF nodata 0) arrives as NaN and is declared as the array's nodata
    assert np.isnan(values[1, :, 50:90, 100:180]).all()
    assert np.isnan(values[:, 0, 200:210, 20:40]).all()
    assert not np.isnan(values[:, 1, 200:210, 20:40]).any()
    assert np.isnan(s2.rio.nodata)


def test_coords_crs_transform_match_rioxarray(s2: xr.DataArray, stac_dir: Path) -> None:
    ref = read_tif(tif(stac_dir, 0, "B04"))
    np.testing.assert_allclose(s2.x.values, ref.x.values, rtol=0, atol=1e-6)
    np.testing.assert_allclose(s2.y.values, ref.y.values, rtol=0, atol=1e-6)
    assert s2.rio.crs == ref.rio.crs == CRS
    assert s2.rio.transform() == s2.rio.transform(recalc=True) == ref.rio.transform() == T10


@pytest.mark.parametrize(
    "form",
    ["str", "path", "item_files", "list_file", "pystac_items", "item_collection", "dicts", "one"],
)
def test_every_input_form(form: str, stac_dir: Path, s2: xr.DataArray) -> None:
    collection = pystac.ItemCollection.from_file(str(stac_dir / "items.json"))
    given: Any = {
        "str": str(stac_dir / "items.json"),
        "path": stac_dir / "items.json",
        "item_files": [stac_dir / f"item_{k}.json" for k in range(3)],
        "list_file": stac_dir / "list.json",
        "pystac_items": list(collection),
        "item_collection": collection,
        "dicts": [item.to_dict() for item in collection],
        "one": stac_dir / "item_1.json",
    }[form]
    stack = open_stac(given, assets=["B04", "B08"], chunks=128)
    if form == "one":
        assert stack.sizes["time"] == 1
        np.testing.assert_array_equal(stack.values[0], s2.values[1])
        np.testing.assert_array_equal(stack.x.values, s2.x.values)
        return
    np.testing.assert_array_equal(stack.values, s2.values)
    assert stack.rio.transform() == T10


def test_item_level_projection(stac_dir: Path, s2: xr.DataArray) -> None:
    # proj:* on the item (shared by its assets) instead of on each asset
    items = json.loads((stac_dir / "list.json").read_text())
    for item in items:
        del item["assets"]["B11"]  # on its own 20 m grid
        for asset in item["assets"].values():
            fields = {k: asset.pop(k) for k in list(asset) if k.startswith("proj:")}
        item["properties"].update(fields)
        assert "proj:epsg" not in item["properties"]
    stack = open_stac(items, assets=["B04", "B08"])
    assert stack.rio.crs == CRS
    np.testing.assert_array_equal(stack.values, s2.values)


def test_items_are_not_modified(stac_dir: Path) -> None:
    dicts = json.loads((stac_dir / "list.json").read_text())
    before = json.dumps(dicts, sort_keys=True)
    open_stac(dicts, assets=["B04"])
    assert json.dumps(dicts, sort_keys=True) == before


def test_relative_hrefs_resolve_against_the_file(stac_dir: Path, tmp_path: Path) -> None:
    doc = json.loads((stac_dir / "item_0.json").read_text())
    for asset in doc["assets"].values():
        asset["href"] = "../" + stac_dir.name + "/" + Path(asset["href"]).name
    sub = stac_dir.parent / "relative"
    sub.mkdir(exist_ok=True)
    (sub / "item.json").write_text(json.dumps(doc))
    ref = read_tif(tif(stac_dir, 0, "B08")).values
    stack = open_stac(sub / "item.json", assets=["B08"])
    np.testing.assert_array_equal(stack.values[0, 0], ref)
    # a pystac Item read from the file resolves them against its self href
    item = pystac.Item.from_file(str(sub / "item.json"))
    assert not Path(item.assets["B08"].href).is_absolute()
    stack = open_stac([item], assets=["B08"])
    np.testing.assert_array_equal(stack.values[0, 0], ref)


def test_builds_without_computing(
    stac_dir: Path, dask_computes: Callable[..., contextlib.AbstractContextManager[Any]]
) -> None:
    with dask_computes(max_computes=0):
        stack = open_stac(stac_dir / "items.json", assets=["B04", "B08", "B11"], resolution=10)
        stack.rio.transform()
        out = patchflow.apply(stack, Composite("median"), over="time", size=SIZE, stride=STRIDE)
    assert out.shape == (3, *SHAPE)


# --------------------------------------------------------------------------- with patchflow


def ndvi(chip: np.ndarray) -> np.ndarray:
    red, nir = chip[..., 0:1, :, :], chip[..., 1:2, :, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (nir - red) / (nir + red)


def assert_same_nan_and_close(out: np.ndarray, ref: np.ndarray) -> None:
    assert out.shape == ref.shape
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    ok = ~np.isnan(ref)
    assert ok.any() and (~ok).any()
    np.testing.assert_allclose(out[ok], ref[ok], rtol=0, atol=1e-9)


def test_apply_per_date_equals_whole_array(s2: xr.DataArray) -> None:
    out = patchflow.apply(s2, ndvi, size=SIZE, stride=STRIDE)
    assert out.dims == ("time", "band", "y", "x") and out.shape == (3, 1, *SHAPE)
    assert out.rio.crs == CRS and out.rio.transform() == T10
    assert_same_nan_and_close(out.values, ndvi(s2.values))


def test_apply_over_time_composite_equals_whole_array(s2: xr.DataArray) -> None:
    out = patchflow.apply(s2, Composite("median"), over="time", size=SIZE, stride=STRIDE)
    assert out.dims == ("band", "y", "x") and out.shape == (2, *SHAPE)
    assert list(out.band.values) == ["B04", "B08"]
    assert out.rio.crs == CRS and out.rio.transform() == T10
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices
        ref = np.nanmedian(s2.values, axis=0)
    assert np.isnan(ref[0, 200:210, 20:40]).all()  # B04 hole on every date
    assert_same_nan_and_close(out.values, ref)


# --------------------------------------------------------------------------- resolution


def test_20m_asset_native_and_resampled_to_10m(stac_dir: Path) -> None:
    native = open_stac(stac_dir / "items.json", assets=["B11"])
    assert native.shape == (3, 1, SHAPE[0] // 2, SHAPE[1] // 2)
    assert native.rio.transform() == T20
    ref = expected(stac_dir, ["B11"])
    np.testing.assert_array_equal(native.values, ref)
    ten = open_stac(stac_dir / "items.json", assets=["B11"], resolution=10)
    assert ten.shape == (3, 1, *SHAPE)
    assert ten.rio.transform() == ten.rio.transform(recalc=True) == T10
    np.testing.assert_array_equal(ten.values, ref.repeat(2, axis=-2).repeat(2, axis=-1))
    # next to 10 m assets the default resolution is the finest
    mixed = open_stac(stac_dir / "items.json", assets=["B04", "B11"])
    assert mixed.rio.transform() == T10
    np.testing.assert_array_equal(mixed.values[:, 1], ten.values[:, 0])


def test_bounds_select_a_window(stac_dir: Path, s2: xr.DataArray) -> None:
    # 40 px down, 30 px across, 100 × 80 px, in the CRS
    bounds = (X0 + 300.0, Y0 - 1400.0, X0 + 1100.0, Y0 - 400.0)
    sub = open_stac(stac_dir / "items.json", assets=["B04", "B08"], bounds=bounds)
    assert sub.shape == (3, 2, 100, 80)
    assert sub.rio.transform() == T10 * Affine.translation(30, 40)
    np.testing.assert_array_equal(sub.values, s2.values[:, :, 40:140, 30:110])


def test_integer_dtype_with_fill_value(stac_dir: Path) -> None:
    raw = open_stac(stac_dir / "items.json", assets=["B04"], dtype="uint16", fill_value=0)
    assert raw.dtype == np.uint16 and raw.rio.nodata == 0
    with rasterio.open(tif(stac_dir, 1, "B04")) as src:
        np.testing.assert_array_equal(raw.values[1, 0], src.read(1))


# --------------------------------------------------------------------------- pixel grids

#: a 10 m grid whose pixel corners are half a pixel off multiples of 10 m (as Landsat's
#: 30 m pixels have corners at odd multiples of 15 m), and a 20 m one on the same lines
H10 = Affine(10.0, 0.0, X0 + 5.0, 0.0, -10.0, Y0 + 5.0)
H20 = Affine(20.0, 0.0, H10.c, 0.0, -20.0, H10.f)


def write_items(
    root: Path, scene_factory: Callable[..., xr.DataArray], grids: dict[str, Affine]
) -> Path:
    """One item file per date (two dates) with one uint16 GeoTIFF asset per entry of
    ``grids`` (asset name → transform; 20 m transforms get half-size rasters); returns the
    ItemCollection file."""
    features = []
    for k, date in enumerate(DATES[:2]):
        assets = {}
        for b, (name, transform) in enumerate(grids.items()):
            shape = SHAPE if transform.a == 10 else (SHAPE[0] // 2, SHAPE[1] // 2)
            band = scene_factory(shape, seed=60 + 10 * k + b).values[0]
            path = root / f"{k}_{name}.tif"
            write_band_tif(path, band, transform, CRS, nodata=0)
            assets[name] = {
                "href": path.name,
                "proj:code": CRS,
                "proj:shape": list(shape),
                "proj:transform": list(transform)[:6],
            }
        features.append(stac_item(f"d{k}", assets, date.isoformat()))
    path = root / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


@contextlib.contextmanager
def no_resampling_warning() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResampledGridWarning)
        yield


def test_assets_on_multiples_of_the_resolution_keep_the_same_stack(
    stac_dir: Path, s2: xr.DataArray
) -> None:
    # the grid stackstac always made for them (-tap): the same graph, so stores written
    # before keep resuming, and nothing to warn about
    with no_resampling_warning():
        tap = open_stac(
            stac_dir / "items.json", assets=["B04", "B08"], chunks=128, snap_bounds=True
        )
        default = open_stac(stac_dir / "items.json", assets=["B04", "B08"], chunks=128)
    assert default.data.name == tap.data.name == s2.data.name
    assert default.rio.transform() == T10


def test_an_offset_grid_is_read_as_it_is(
    scene_factory: Callable[..., xr.DataArray], tmp_path: Path
) -> None:
    items = write_items(tmp_path, scene_factory, {"B04": H10, "B08": H10, "B11": H20})

    def ref(k: int, name: str) -> xr.DataArray:
        return read_tif(tmp_path / f"{k}_{name}.tif")

    with no_resampling_warning():
        stack = open_stac(items, assets=["B04", "B08"])
        native20 = open_stac(items, assets=["B11"])
        mixed = open_stac(items, assets=["B04", "B11"])  # 20 m pixels, whole 10 m ones
    assert stack.shape == (2, 2, *SHAPE)
    assert stack.rio.transform() == stack.rio.transform(recalc=True) == H10
    first = ref(0, "B04")
    np.testing.assert_array_equal(stack.x.values, first.x.values)
    np.testing.assert_array_equal(stack.y.values, first.y.values)
    for k in range(2):
        for b, name in enumerate(["B04", "B08"]):
            np.testing.assert_array_equal(stack.values[k, b], ref(k, name).values)
    assert native20.rio.transform() == H20
    np.testing.assert_array_equal(native20.values[1, 0], ref(1, "B11").values)
    assert mixed.rio.transform() == H10
    np.testing.assert_array_equal(
        mixed.values[:, 1], native20.values[:, 0].repeat(2, axis=-2).repeat(2, axis=-1)
    )
    # bounds= off the grid: grown outward to the assets' grid, never shifted
    bounds = (X0 + 300.0, Y0 - 1400.0, X0 + 1100.0, Y0 - 400.0)
    with no_resampling_warning():
        sub = open_stac(items, assets=["B04", "B08"], bounds=bounds)
    assert sub.rio.transform() == H10 * Affine.translation(29, 40)
    assert sub.shape == (2, 2, 101, 81)
    np.testing.assert_array_equal(sub.values, stack.values[:, :, 40:141, 29:110])
    # bounds_latlon= too (stackstac reprojects their corners; snapped the same way)
    from pyproj import Transformer

    to_lonlat = Transformer.from_crs(CRS, 4326, always_xy=True)
    lon0, lat0 = to_lonlat.transform(X0 + 1000.0, Y0 - 1000.0)
    lon1, lat1 = to_lonlat.transform(X0 + 1500.0, Y0 - 500.0)
    with no_resampling_warning():
        ll = open_stac(items, assets=["B04"], bounds_latlon=(lon0, lat0, lon1, lat1))
    t = ll.rio.transform()
    assert (t.c - H10.c) % 10 == 0 and (t.f - H10.f) % 10 == 0
    col, row = ~H10 * (t.c, t.f)
    col, row = round(col), round(row)
    np.testing.assert_array_equal(
        ll.values[:, 0], stack.values[:, 0, row : row + ll.sizes["y"], col : col + ll.sizes["x"]]
    )


def test_an_explicit_grid_off_the_assets_is_kept_and_warned(
    scene_factory: Callable[..., xr.DataArray], tmp_path: Path
) -> None:
    items = write_items(tmp_path, scene_factory, {"B04": H10})
    exact = open_stac(items, assets=["B04"])
    # snap_bounds=True: GDAL's -tap, as asked, half a pixel off the assets' grid
    with pytest.warns(ResampledGridWarning, match=r"offset by \(5, -5\).*snap_bounds=True") as rec:
        tap = open_stac(items, assets=["B04"], snap_bounds=True)
    assert "leave snap_bounds unset" in str(rec.pop(ResampledGridWarning).message)
    assert tap.rio.transform() == T10 * Affine.translation(0, -1)
    assert tap.shape == (2, 1, SHAPE[0] + 1, SHAPE[1] + 1)
    # bounds= with snap_bounds=False: those bounds exactly, as asked
    bounds = (X0, Y0 - 1000.0, X0 + 1000.0, Y0)
    with pytest.warns(ResampledGridWarning, match="snap_bounds=False keeps bounds"):
        cut = open_stac(items, assets=["B04"], bounds=bounds, snap_bounds=False)
    assert cut.rio.transform() == T10 and cut.shape == (2, 1, 100, 100)
    # ... and bounds on the assets' grid with snap_bounds=False are read exactly
    on_grid = (X0 + 5.0, Y0 - 995.0, X0 + 1005.0, Y0 + 5.0)
    with no_resampling_warning():
        cut = open_stac(items, assets=["B04"], bounds=on_grid, snap_bounds=False)
    assert cut.rio.transform() == H10
    np.testing.assert_array_equal(cut.values, exact.values[:, :, :100, :100])


def test_assets_on_mutually_offset_grids_are_resampled_and_warned(
    scene_factory: Callable[..., xr.DataArray], tmp_path: Path
) -> None:
    # B04 on multiples of 10 m, B08 half a pixel off: no one grid is both of theirs
    items = write_items(tmp_path, scene_factory, {"B04": T10, "B08": H10})
    with pytest.warns(ResampledGridWarning, match="offset from one another") as rec:
        stack = open_stac(items, assets=["B04", "B08"])
    text = str(rec.pop(ResampledGridWarning).message)
    assert "'B08' of item 'd0'" in text and "(and 1 more like it)" in text
    assert "'B04'" not in text  # B04's pixels are the output's
    assert "resampling='nearest' (nearest moves each by up to half a pixel)" in text
    # the documented fallback: multiples of the resolution (stackstac's, GDAL's -tap)
    assert stack.rio.transform() == T10 * Affine.translation(0, -1)
    b04 = np.stack([read_tif(tmp_path / f"{k}_B04.tif").values for k in range(2)])
    np.testing.assert_array_equal(stack.values[:, 0, 1:, :-1], b04)


def test_a_coarser_resolution_is_warned_and_a_finer_one_is_not(
    scene_factory: Callable[..., xr.DataArray], tmp_path: Path
) -> None:
    items = write_items(tmp_path, scene_factory, {"B04": H10, "B11": H20})
    with pytest.warns(
        ResampledGridWarning, match=r"'B04' .* pixels of 10 .* resampled to 20"
    ) as rec:
        coarse = open_stac(items, assets=["B04", "B11"], resolution=20, resampling="average")
    text = str(rec.pop(ResampledGridWarning).message)
    assert "resolution=" in text and "'B11'" not in text
    # on the assets' grid: each 20 m pixel is the mean of 2 × 2 whole 10 m pixels (GDAL
    # averages in the files' uint16, so rounded to a whole number)
    assert coarse.rio.transform() == H20
    fine = open_stac(items, assets=["B04"]).values[:, 0]
    np.testing.assert_allclose(
        coarse.values[:, 0],
        fine.reshape(2, SHAPE[0] // 2, 2, SHAPE[1] // 2, 2).mean(axis=(2, 4)),
        rtol=0,
        atol=0.5,
    )
    with no_resampling_warning():
        five = open_stac(items, assets=["B11"], resolution=5)
    assert five.rio.transform() == Affine(5.0, 0.0, H10.c, 0.0, -5.0, H10.f)


def test_the_recipe_reopens_the_assets_grid(
    scene_factory: Callable[..., xr.DataArray], tmp_path: Path
) -> None:
    from patchflow.io.stac import STAC_CALL
    from patchflow.io.store import _input_identity, _open_input, _reopenable

    items = write_items(tmp_path, scene_factory, {"B04": H10, "B08": H10})
    stack = open_stac(items, assets=["B04", "B08"], chunks=128)
    assert stack.encoding[STAC_CALL]["snap_bounds"] is None
    source = _reopenable(stack)
    assert isinstance(source, dict)
    with no_resampling_warning():
        again = _open_input(source)
    assert again.rio.transform() == H10
    assert again.data.name == stack.data.name
    assert _input_identity(again) == _input_identity(stack)
    # a recipe recorded before (snap_bounds true) reopens the grid that run had
    old = dict(source, stac={**source["stac"], "snap_bounds": True})
    with pytest.warns(ResampledGridWarning):
        tap = _open_input(old)
    assert tap.rio.transform() == T10 * Affine.translation(0, -1)


def test_resolution_must_be_positive(stac_dir: Path) -> None:
    for bad in (0, -10, (10, 0), float("nan"), (10, 10, 10)):
        with pytest.raises(ParameterError, match="resolution must be a positive"):
            open_stac(stac_dir / "items.json", assets=["B04"], resolution=bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- errors


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputReadError, match="STAC file not found"):
        open_stac(tmp_path / "nope.json", assets=["B04"])


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("not json {", "not JSON"),
        ('{"type": "Feature", "geometry": null, "properties": {}}', "not a STAC Item"),
        ('{"type": "Collection", "id": "c"}', "Collection"),
        ("[1, 2]", "JSON int"),
    ],
)
def test_not_stac_json(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(InputReadError, match=match) as info:
        open_stac(path, assets=["B04"])
    assert "is not STAC JSON" in str(info.value) and isinstance(info.value, PatchflowError)


def test_not_stac_objects() -> None:
    with pytest.raises(InputTypeError, match="items must be"):
        open_stac(42, assets=["B04"])
    with pytest.raises(ParameterError, match="not STAC JSON"):
        open_stac({"type": "Polygon"}, assets=["B04"])
    with pytest.raises(ParameterError, match="no STAC items"):
        open_stac([], assets=["B04"])


def test_unknown_asset_lists_the_available_ones(stac_dir: Path) -> None:
    with pytest.raises(ParameterError, match="unknown asset 'B8A'") as info:
        open_stac(stac_dir / "items.json", assets=["B04", "B8A"])
    assert "B04, B08, B11" in str(info.value)
    assert "did you mean 'B08'" in str(info.value)


def test_missing_asset_file(stac_dir: Path) -> None:
    doc = json.loads((stac_dir / "item_0.json").read_text())
    doc["assets"]["B04"]["href"] = str(stac_dir / "gone.tif")
    with pytest.raises(InputReadError, match=r"asset 'B04' of item .* not found"):
        open_stac(doc, assets=["B04"])


def test_mixed_crs_needs_epsg(
    stac_dir: Path, scene_factory: Callable[..., xr.DataArray], tmp_path: Path
) -> None:
    red, nir = scene_factory(SHAPE, seed=50).values
    other = make_item(tmp_path, DATES[0], {"B04": (red, T10), "B08": (nir, T10)}, 32611)
    items = [*pystac.ItemCollection.from_file(str(stac_dir / "items.json")), other]
    with pytest.raises(ParameterError, match=r"2 CRSs: EPSG:32610 .* EPSG:32611") as info:
        open_stac(items, assets=["B04", "B08"])
    assert "epsg=" in str(info.value)
    with pytest.warns(ResampledGridWarning, match=r"'B04' of item .* reprojected from EPSG:3261"):
        stack = open_stac(items, assets=["B04", "B08"], epsg=32610, resolution=10)
    assert stack.rio.crs == CRS and stack.sizes["time"] == 4


def test_integer_dtype_needs_fill_value(stac_dir: Path) -> None:
    with pytest.raises(ParameterError, match="fill_value=0"):
        open_stac(stac_dir / "items.json", assets=["B04"], dtype="uint16")
    with pytest.raises(ParameterError, match="does not fit"):
        open_stac(stac_dir / "items.json", assets=["B04"], dtype="uint8", fill_value=-1)


def test_bad_parameters(stac_dir: Path) -> None:
    path = stac_dir / "items.json"
    with pytest.raises(ParameterError, match="more than once"):
        open_stac(path, assets=["B04", "B04"])
    with pytest.raises(ParameterError, match="unknown resampling 'bilinar'"):
        open_stac(path, assets=["B04"], resampling="bilinar")
    with pytest.raises(ParameterError, match="not both"):
        open_stac(path, assets=["B04"], bounds=(0, 0, 1, 1), bounds_latlon=(0, 0, 1, 1))


def test_rescale_with_integer_dtype(stac_dir: Path) -> None:
    doc = json.loads((stac_dir / "item_0.json").read_text())
    doc["assets"]["B04"]["raster:bands"] = [{"scale": 0.0001, "offset": -0.1}]
    with pytest.raises(ParameterError, match="'B04' carries a raster:bands scale/offset"):
        open_stac(doc, assets=["B04"], dtype="uint16", fill_value=0)
    with pytest.raises(ParameterError, match="dtype='float64' for scaled"):
        open_stac(doc, assets=["B04"], dtype="float32")
    raw = open_stac(doc, assets=["B04"], dtype="uint16", fill_value=0, rescale=False)
    scaled = open_stac(doc, assets=["B04"])
    np.testing.assert_allclose(scaled.values, np.where(raw.values == 0, np.nan, raw * 1e-4 - 0.1))


def test_float32(stac_dir: Path, s2: xr.DataArray) -> None:
    f32 = open_stac(stac_dir / "items.json", assets=["B04", "B08"], dtype="float32")
    assert f32.dtype == np.float32 and np.isnan(f32.rio.nodata)
    np.testing.assert_array_equal(f32.values, s2.values.astype(np.float32))


def test_unreadable_asset_fails_the_computation(stac_dir: Path, tmp_path: Path) -> None:
    # stackstac's default turns some read errors into nodata; open_stac never does
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"not a GeoTIFF")
    doc = json.loads((stac_dir / "item_0.json").read_text())
    doc["assets"]["B04"]["href"] = str(broken)
    stack = open_stac(doc, assets=["B04"])  # building reads nothing
    with pytest.raises(RuntimeError, match=r"Error opening .*broken.tif"):
        stack.values  # noqa: B018


# --------------------------------------------------------------------------- the recorded call


def test_the_call_is_recorded_to_open_the_same_stack_again(
    stac_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``encoding[STAC_CALL]``: every argument as JSON, the items as absolute paths; the
    store's recipe reopens the stack from it, identical (same dask name: same identity)."""
    from patchflow.io.stac import STAC_CALL
    from patchflow.io.store import _input_identity, _open_input, _reopenable

    monkeypatch.chdir(stac_dir)
    call_kw: dict[str, Any] = {
        "assets": ["B08", "B11"],
        "resolution": 20,
        "bounds": (X0, Y0 - 2000, X0 + 2000, Y0),
        "chunks": (64, 96),
        "dtype": "float32",
        "resampling": "average",
        "sortby_date": "desc",
    }
    # B08's 10 m pixels are averaged onto 20 m ones, and open_stac says so
    with pytest.warns(ResampledGridWarning, match=r"'B08' .* resampled to 20"):
        stack = open_stac(["item_0.json", "item_2.json"], **call_kw)
    call = stack.encoding[STAC_CALL]
    assert json.loads(json.dumps(call)) == call
    assert call["items"] == [str(stac_dir / "item_0.json"), str(stac_dir / "item_2.json")]
    assert call["assets"] == ["B08", "B11"] and call["resolution"] == 20
    assert call["chunks"] == [64, 96] and call["dtype"] == "float32"
    assert call["resampling"] == "average" and call["sortby_date"] == "desc"
    assert call["bounds"] == [X0, Y0 - 2000, X0 + 2000, Y0]
    assert call["snap_bounds"] is None  # the default: the assets' grid, again on reopening
    assert "spec" not in stack.attrs and STAC_CALL not in stack.attrs  # no result attr
    source = _reopenable(stack)
    assert isinstance(source, dict) and source["format"] == "stac"
    monkeypatch.chdir("/")  # the recipe does not depend on the working directory
    with pytest.warns(ResampledGridWarning):
        again = _open_input(source)
    assert again.data.name == stack.data.name
    assert _input_identity(again) == _input_identity(stack)
    np.testing.assert_array_equal(again.values, stack.values)
    # what cannot be reopened says why
    items = [json.loads((stac_dir / "item_0.json").read_text())]
    for asset in items[0]["assets"].values():
        asset["href"] = str(stac_dir / Path(asset["href"]).name)
    in_memory = open_stac(items, assets=["B08"])
    assert "Python objects" in str(_reopenable(in_memory))


# --------------------------------------------------------------------------- stores

#: chips the next ``_interrupted`` calls may still pass through before one raises
_CHIPS_LEFT: list[int] = []


def _interrupted(chip: np.ndarray) -> np.ndarray:
    """The identity, until ``_CHIPS_LEFT`` runs out: then a failure stops the run."""
    if _CHIPS_LEFT:
        _CHIPS_LEFT[0] -= 1
        if _CHIPS_LEFT[0] < 0:
            raise RuntimeError("interrupted")
    return chip


@pytest.mark.parametrize("mode", ["resume", "accumulate"])
def test_an_asset_rewritten_in_place_is_refused(
    scene_factory: Callable[..., xr.DataArray], tmp_path: Path, mode: str
) -> None:
    """stackstac names its graph after the hrefs, so a rewritten asset file (same path,
    grid and dtype, other values) gave the same input record: a resume (or an accumulate
    pass) blended the old and the new values in one store, without an error."""
    from patchflow.io.store import ResumeMismatchError

    red, nir = scene_factory((200, 170), seed=3).values
    files = {"B04": (red, tmp_path / "B04.tif"), "B08": (nir, tmp_path / "B08.tif")}
    assets = {}
    for name, (band, path) in files.items():
        write_band_tif(path, band, T10, "EPSG:32610", nodata=0)
        assets[name] = {
            "href": path.name,
            "proj:code": "EPSG:32610",
            "proj:shape": list(band.shape),
            "proj:transform": list(T10)[:6],
        }
    item = stac_item("one", assets, "2024-06-01T00:00:00Z")
    (tmp_path / "item.json").write_text(json.dumps(item))
    store = tmp_path / "out.zarr"
    kw: dict[str, Any] = {"size": 64, "stride": 48, "chunks": 64, "scheduler": "sync"}

    def stack() -> xr.DataArray:
        return open_stac(tmp_path / "item.json", assets=["B04", "B08"], chunks=64)

    if mode == "resume":
        _CHIPS_LEFT[:] = [10]
        try:
            with pytest.raises(PatchflowError, match="interrupted"):
                patchflow.run(stack(), _interrupted, store=store, **kw)
        finally:
            _CHIPS_LEFT.clear()
        again: dict[str, Any] = {"resume": True}
    else:
        patchflow.run(stack(), _interrupted, store=store, mode="accumulate", **kw)
        again = {"mode": "accumulate"}
    before = sorted(p.name for p in store.rglob("*"))
    # the same path, grid and dtype, other values (and a later mtime for sure)
    stat = files["B04"][1].stat()
    write_band_tif(files["B04"][1], nir, T10, "EPSG:32610", nodata=0)
    os.utime(files["B04"][1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    with pytest.raises(ResumeMismatchError, match=r"B04\.tif.*modified since"):
        patchflow.run(stack(), _interrupted, store=store, **again, **kw)
    assert sorted(p.name for p in store.rglob("*")) == before
