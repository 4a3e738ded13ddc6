"""The result's name and attrs describe the result (issue 15).

An operator that changes the values (NDVI) leaves nothing behind that described the input's
values: no ``units: DN``, no ``long_name``/``description`` of reflectances, no
``scale_factor``/``add_offset`` (which would rescale the NDVI on the next read), neither in
memory nor in the GeoTIFF written from it; its own name (``ndvi``) and any attrs it declares
take their place. An operator that keeps the values keeps those attrs, since they are
still true — except the CF packing (``scale_factor``/``add_offset``): the result holds the
values as they are, and a store read back would apply it to them.

The scenes are a real GeoTIFF (written with rasterio: per-band units, scales, offsets,
descriptions and dataset tags, read back through :func:`patchflow.io.sources.open_raster`)
and the same attrs on an in-memory DataArray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import xarray as xr
from rasterio.transform import from_origin

import patchflow
from patchflow import ops
from patchflow.io.sources import open_raster

#: what the input says about its values: none of it is true of an NDVI
VALUE_ATTRS = {
    "units": "DN",
    "long_name": "reflectance",
    "scale_factor": 1e-4,
    "add_offset": -0.1,
    "description": "surface reflectance, Sentinel-2 L2A",
}
#: dataset tags that say nothing about the values: kept by every operator
NEUTRAL_ATTRS = {"AREA_OR_POINT": "Area", "platform": "sentinel-2b"}


@pytest.fixture(scope="module")
def dn_values() -> np.ndarray:
    return np.random.default_rng(8).integers(1, 4000, (2, 150, 130)).astype(np.uint16)


@pytest.fixture(scope="module")
def geotiff(tmp_path_factory: pytest.TempPathFactory, dn_values: np.ndarray) -> Path:
    path = tmp_path_factory.mktemp("attrs") / "dn.tif"
    profile = {
        "driver": "GTiff",
        "width": 130,
        "height": 150,
        "count": 2,
        "dtype": "uint16",
        "crs": "EPSG:32633",
        "transform": from_origin(500_000, 4_000_000, 10, 10),
        "nodata": 0,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(dn_values)
        dst.units = ("DN", "DN")
        dst.scales = (1e-4, 1e-4)
        dst.offsets = (-0.1, -0.1)
        dst.descriptions = ("red", "nir")
        dst.update_tags(description=VALUE_ATTRS["description"], platform="sentinel-2b")
    return path


@pytest.fixture(params=["geotiff", "memory"])
def scene(request: pytest.FixtureRequest, dn_values: np.ndarray) -> xr.DataArray:
    if request.param == "geotiff":
        arr = open_raster(str(request.getfixturevalue("geotiff")))
        # what rioxarray reads from the file: the test relies on it
        assert arr.attrs["units"] == ("DN", "DN")
        assert (arr.attrs["scale_factor"], arr.attrs["add_offset"]) == (1e-4, -0.1)
        assert arr.attrs["description"] == VALUE_ATTRS["description"]
        return arr
    transform = from_origin(500_000, 4_000_000, 10, 10)
    arr = xr.DataArray(
        dn_values,
        dims=("band", "y", "x"),
        coords={
            "band": ["red", "nir"],
            "y": transform.f + transform.e * (np.arange(150) + 0.5),
            "x": transform.c + transform.a * (np.arange(130) + 0.5),
        },
        attrs={**VALUE_ATTRS, **NEUTRAL_ATTRS, "_FillValue": 0},
    )
    return arr.rio.write_crs("EPSG:32633")


def _stale(out: xr.DataArray, scene: xr.DataArray) -> list[str]:
    """Value attrs of the input still on ``out`` (with the input's value)."""
    keys = ("units", "long_name", "description", "scale_factor", "add_offset")
    return [k for k in keys if k in out.attrs and _same(out.attrs[k], scene.attrs.get(k))]


def _same(a: Any, b: Any) -> bool:
    return bool(np.array_equal(np.asarray(a, dtype=object), np.asarray(b, dtype=object)))


def test_ndvi_is_named_and_keeps_no_stale_value_attrs(scene: xr.DataArray) -> None:
    op = ops.NDVI(red=0, nir=1)
    out = patchflow.apply(scene, op, size=64, stride=48)
    assert out.name == "ndvi"
    assert _stale(out, scene) == []
    assert "scale_factor" not in out.attrs and "add_offset" not in out.attrs
    declared = op.output_attrs() if callable(getattr(op, "output_attrs", None)) else {}
    for key, value in (declared or {}).items():  # what the op says of its values
        assert out.attrs[key] == value
    for key, value in NEUTRAL_ATTRS.items():
        if key in scene.attrs:
            assert out.attrs[key] == value
    # and the value is the NDVI of the raw DN (scale and offset are not applied for it)
    red, nir = scene.values.astype(np.float64)
    np.testing.assert_allclose(out.values[0], (nir - red) / (nir + red), rtol=1e-12)


def test_ndvi_geotiff_carries_no_scale_units_or_description(
    scene: xr.DataArray, tmp_path: Path
) -> None:
    out = patchflow.apply(scene, ops.NDVI(red=0, nir=1), size=64, stride=48)
    path = tmp_path / "ndvi.tif"
    out.rio.to_raster(path)
    with rasterio.open(path) as src:
        assert src.count == 1
        assert src.scales == (1.0,) and src.offsets == (0.0,)  # no rescaling on read
        assert src.units in ((None,), ("",))
        assert src.tags().get("description") != VALUE_ATTRS["description"]
        # the op's own long_name names the band; never the input's description
        assert src.descriptions[0] in (None, "", "ndvi", "normalized difference vegetation index")
    assert out.attrs["long_name"] == "normalized difference vegetation index"
    assert out.attrs["units"] == "1"


def test_ndvi_drops_the_input_image_description(geotiff: Path, tmp_path: Path) -> None:
    """GDAL's image description (``TIFFTAG_IMAGEDESCRIPTION``) describes the input image."""
    path = tmp_path / "described.tif"
    path.write_bytes(geotiff.read_bytes())
    with rasterio.open(path, "r+") as dst:
        dst.update_tags(TIFFTAG_IMAGEDESCRIPTION="Sentinel-2 L2A surface reflectance")
    scene = open_raster(str(path))
    assert scene.attrs["TIFFTAG_IMAGEDESCRIPTION"] == "Sentinel-2 L2A surface reflectance"
    out = patchflow.apply(scene, ops.NDVI(red=0, nir=1), size=64, stride=48)
    assert "TIFFTAG_IMAGEDESCRIPTION" not in out.attrs
    assert out.attrs["platform"] == "sentinel-2b"  # a neutral tag stays


def test_an_identity_op_keeps_the_value_attrs(scene: xr.DataArray) -> None:
    out = patchflow.apply(scene, ops.SelectBands([0, 1]), size=64, stride=48)
    np.testing.assert_array_equal(out.values, scene.values)
    for key in ("units", "long_name", "description"):
        assert _same(out.attrs.get(key), scene.attrs[key]), key
    # the values are raw DN, not packed: a reader must not rescale them
    assert "scale_factor" not in out.attrs and "add_offset" not in out.attrs
    for key, value in NEUTRAL_ATTRS.items():
        if key in scene.attrs:
            assert out.attrs[key] == value


def test_an_undeclared_callable_keeps_no_value_claims(scene: xr.DataArray) -> None:
    """A plain function may change the values in any way: only neutral attrs carry over
    (and GDAL band descriptions while the band count is kept: they name the bands)."""
    out = patchflow.apply(scene, lambda c: c * 2.0, size=64, stride=48)
    assert [k for k in _stale(out, scene) if k != "long_name"] == []
    if isinstance(scene.attrs["long_name"], tuple):  # band names, not a value claim
        assert out.attrs["long_name"] == scene.attrs["long_name"]
    else:
        assert "long_name" not in out.attrs
    for key, value in NEUTRAL_ATTRS.items():
        if key in scene.attrs:
            assert out.attrs[key] == value


def test_haze_removal_keeps_the_units_it_was_given(dn_values: np.ndarray) -> None:
    """DOS1 subtracts haze in the data's own units: ``units`` stays (from the input, or
    from the step before it in a pipeline), while other claims about the old values
    (their name, range or encoding) do not."""
    reflectance = xr.DataArray(
        dn_values.astype(np.float32) * np.float32(1e-4),
        dims=("band", "y", "x"),
        attrs={"units": "1", "long_name": "TOA reflectance", "valid_range": (0.0, 0.4)},
    )
    dos = ops.DOS1(dark=[0.01, 0.02])
    out = patchflow.apply(reflectance, dos, size=64, stride=48)
    assert out.attrs["units"] == "1"
    assert "valid_range" not in out.attrs and "long_name" not in out.attrs
    # in a pipeline: the unit the radiometric step declares survives DOS1
    radiometric = ops.Radiometric(gain=1e-4, offset=0.0, units="1", long_name="reflectance")
    pipe = radiometric | dos
    assert pipe.output_attrs() == {"units": "1"}
    dn = reflectance.copy(data=dn_values).assign_attrs(units="DN", long_name="digital number")
    out = patchflow.apply(dn, pipe, size=64, stride=48)
    assert out.attrs["units"] == "1" and "long_name" not in out.attrs
    # DOS1 on DN data keeps "DN" (the haze is subtracted in DN); a step that changes the
    # quantity after it says what its own output is
    assert patchflow.apply(dn, dos, size=64, stride=48).attrs["units"] == "DN"
    ndvi = ops.NDVI(red=0, nir=1)
    assert (dos | ndvi).output_attrs() == ndvi.output_attrs()
