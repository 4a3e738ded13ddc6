"""Real files round-trip: the rasters users have, through every way patchflow hands data back.

Each fixture of ``conftest.py`` is a small file shaped like a real one (uint8 COG without
nodata but full of 255s, RGB COG with a no-data collar and per-band zeros, float32 State
Plane raster with -99999, int16 DEM below sea level, Sentinel-2-like NetCDF). Every test
opens it the way a user would, runs an operator whose result is known exactly (identity,
``2·x + 1``, NDVI) on overlapping 128 px chips (stride 96) across several 256 px blocks, and
checks what comes back — lazily, from ``patchflow.run``'s store, from the CLI's Zarr and
COG, and after the user's own writers (``rio.to_raster``, ``to_zarr``, ``to_netcdf``):

* values: an identity on integer-valued data gives exactly the input back (compared as
  float64: 933 must not come back as 932.99994, nor 1869 as 1868.9999999999998, which
  ``astype(int16)`` turns into 1868); float results (``2·x + 1`` in float, NDVI, float
  input) within 1e-6 relative (1e-6 absolute near 0);
* nodata: per band (GDAL semantics) — an output element is nodata exactly where the input
  band is nodata (for band-combining ops: where any input band it uses is), and no real
  value is ever marked nodata (a valid 255 stays 255 and valid);
* georeferencing: ``rio.crs`` equal, ``rio.transform()`` equal to 1e-9 relative;
* metadata: the name is never a dask token, and a band-count-changing op drops the
  input's value attrs (``units: DN``, ``long_name``).

The reference comes from the file's raw values (checked against plain rasterio/xarray in
``conftest.py``), never from patchflow.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import rasterio
import rioxarray
import xarray as xr
from conftest import RealRaster, netcdf_engine

import patchflow
from patchflow.cli import main
from patchflow.ops import NDVI, Lambda, Rescale, SelectBands, to_json

pytestmark = [
    pytest.mark.filterwarnings("ignore:The data type .* does not have a Zarr V3 specification"),
    pytest.mark.filterwarnings("ignore:Consolidated metadata is currently not part"),
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"),
    pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning"),
]

SIZE, STRIDE, CHUNK = 128, 96, 256  # chips overlap and straddle the 256 px blocks
CHIPS = {"size": SIZE, "stride": STRIDE}
RASTERS = ["cog_uint8_4326", "cog_rgb_3857", "tif_float_2227", "cog_dem_int16", "nc_s2"]
#: a name patchflow or dask made up (``patchflow-stitch-<md5>``), not one a user gave
TOKEN = re.compile(r"^(patchflow|open_rasterio|open_dataset|from-zarr)-|[0-9a-f]{32}")


@pytest.fixture(params=RASTERS)
def raster(request: pytest.FixtureRequest) -> RealRaster:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


def is_netcdf(raster: RealRaster) -> bool:
    return raster.driver.startswith("netcdf")


def open_user(raster: RealRaster, *, masked: bool = False) -> xr.DataArray | xr.Dataset:
    """The file opened lazily, as the README tells users to (chunks < scene)."""
    if is_netcdf(raster):
        ds = xr.open_dataset(raster.path, decode_coords="all", chunks={"y": CHUNK, "x": CHUNK})
        return ds[list(raster.bands)]  # the bands, stacked along `variable` by patchflow
    da = rioxarray.open_rasterio(raster.path, chunks={"y": CHUNK, "x": CHUNK}, masked=masked)
    assert isinstance(da, xr.DataArray)
    assert len(da.chunks[-1]) > 1 and len(da.chunks[-2]) > 1  # several blocks
    return da


# --------------------------------------------------------------------------- operators


@dataclass(frozen=True)
class Op:
    """An operator and the result it must give on a raster (from the raw values)."""

    name: str
    make: Callable[[RealRaster], Any]
    #: reference: (bands, h, w) float64, NaN where the input band is nodata → expected
    expect: Callable[[np.ndarray], np.ndarray]
    #: identity: integer input must come back exactly (compared as float64); ops with
    #: float outputs are compared to 1e-6 (relative, and absolute near 0)
    exact_on_integers: bool = True


def _affine(c: Any) -> Any:
    return c * 2.0 + 1.0


OPS = {
    "identity": Op("identity", lambda r: lambda c: c, lambda ref: ref),
    "identity_lambda": Op("identity_lambda", lambda r: Lambda(lambda c: c), lambda ref: ref),
    "affine": Op("affine", lambda r: _affine, lambda ref: ref * 2.0 + 1.0, False),
}
#: the same operators as registered, JSON-serialisable ops for ``--pipeline``
PIPELINES = {
    "identity": (lambda n: SelectBands(list(range(n))), lambda ref: ref),
    "affine": (lambda n: Rescale((0.0, 1.0), (1.0, 3.0), clip=False), lambda ref: ref * 2 + 1),
}


def ndvi_reference(red: np.ndarray, nir: np.ndarray) -> np.ndarray:
    """NDVI in float64; NaN where either band is nodata or nir + red == 0 (0/0)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (nir - red) / (nir + red)
    return np.where(np.isfinite(out), out, np.nan)[None]


# --------------------------------------------------------------------------- checks


def spatial_values(out: xr.DataArray) -> tuple[np.ndarray, np.ndarray]:
    """``(values, invalid)`` as ``(k, rows, cols)``: float64 values and where the result
    says "no data" (NaN, or equal to its declared ``rio.nodata``)."""
    y, x = out.rio.y_dim, out.rio.x_dim
    arr = out.transpose(..., y, x)
    values = np.asarray(arr.values).astype(np.float64)
    values = values.reshape(-1, *values.shape[-2:])
    invalid = np.isnan(values)
    nodata = out.rio.nodata
    if nodata is not None and not np.isnan(float(nodata)):
        invalid |= values == float(nodata)
    return values, invalid


def _where(mask: np.ndarray, limit: int = 4) -> str:
    return ", ".join(f"(row {r}, col {c})" for r, c in np.argwhere(mask)[:limit])


def check_data(
    out: xr.DataArray,
    expected: np.ndarray,
    *,
    exact: bool,
    what: str,
    rtol: float = 1e-6,
    atol: float = 1e-6,
) -> None:
    """Values and per-band nodata of ``out`` against ``expected`` (NaN = must be nodata)."""
    __tracebackhide__ = True
    got, invalid = spatial_values(out)
    assert got.shape == expected.shape, f"{what}: shape {got.shape} != {expected.shape}"
    want_invalid = np.isnan(expected)
    problems = []
    for b in range(expected.shape[0]):
        lost = invalid[b] & ~want_invalid[b]
        leaked = ~invalid[b] & want_invalid[b]
        if lost.any():
            r, c = np.argwhere(lost)[0]
            if np.isnan(got[b, r, c]):
                why = "NaN"
            elif got[b, r, c] == expected[b, r, c]:
                why = "a real value equal to the declared nodata"
            else:
                why = "filled with the nodata value"
            problems.append(
                f"band {b}: {int(lost.sum())} valid input pixels came out as nodata "
                f"(rio.nodata={out.rio.nodata!r}), e.g. {_where(lost)}; "
                f"expected {float(expected[b, r, c])!r}, got {float(got[b, r, c])!r} ({why})"
            )
        if leaked.any():
            r, c = np.argwhere(leaked)[0]
            problems.append(
                f"band {b}: {int(leaked.sum())} nodata input pixels came out as values, "
                f"e.g. {_where(leaked)} = {float(got[b, r, c])!r}"
            )
    assert not problems, f"{what}: nodata mask differs from the input's (per band):\n  " + (
        "\n  ".join(problems)
    )
    ok = ~want_invalid
    assert ok.any()
    diff = np.abs(got[ok] - expected[ok])
    if exact:
        bad = diff > 0
        if bad.any():
            k = int(np.argmax(diff))
            raise AssertionError(
                f"{what}: {int(bad.sum())} of {int(ok.sum())} integer-valued pixels are not "
                f"exact; worst: expected {float(expected[ok][k])!r}, got {float(got[ok][k])!r} "
                f"(|diff| {diff[k]:.3g}); e.g. {expected[ok][bad][:3].tolist()} -> "
                f"{got[ok][bad][:3].tolist()}"
            )
    else:
        np.testing.assert_allclose(got[ok], expected[ok], rtol=rtol, atol=atol, err_msg=what)


def check_geo(out: xr.DataArray, raster: RealRaster, what: str) -> None:
    __tracebackhide__ = True
    assert out.rio.crs == raster.crs, f"{what}: CRS {out.rio.crs} != {raster.crs}"
    got = np.array(tuple(out.rio.transform())[:6])
    want = np.array(tuple(raster.transform)[:6])
    pixel = abs(raster.transform.a)
    assert np.allclose(got, want, rtol=1e-9, atol=1e-9 * pixel), (
        f"{what}: transform {tuple(got)} != {tuple(want)}"
    )


def check_name(name: Hashable | None, allowed: Iterable[Hashable] | None, what: str) -> None:
    """Never a dask token; one of ``allowed`` when given."""
    __tracebackhide__ = True
    assert not (isinstance(name, str) and TOKEN.search(name)), (
        f"{what}: the result is named after a dask task ({name!r}), not the input or the op"
    )
    if allowed is not None:
        allowed = list(allowed)
        assert name in allowed, f"{what}: name {name!r}, expected one of {allowed}"


def check(
    out: xr.DataArray,
    raster: RealRaster,
    expected: np.ndarray,
    *,
    exact: bool,
    what: str,
    names: Iterable[Hashable] | None = None,
) -> None:
    """All of data, geo and name, every problem reported (not just the first)."""
    __tracebackhide__ = True
    soft = Soft()
    soft(check_data, out, expected, exact=exact, what=what)
    soft(check_geo, out, raster, what)
    soft(check_name, out.name, names, what)
    soft.done()


class Soft:
    """Run several checks, then fail once listing every problem found."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def __call__(self, fn: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except AssertionError as exc:
            self.errors.append(str(exc).split("\nassert ")[0])

    def done(self) -> None:
        __tracebackhide__ = True
        if self.errors:
            raise AssertionError("\n".join(self.errors))


def only_var(ds: xr.Dataset, what: str) -> xr.DataArray:
    names = list(ds.data_vars)
    assert len(names) == 1, f"{what}: expected one data variable, got {names}"
    return ds[names[0]]  # its name (the variable's) is checked with the data


def exact_for(raster: RealRaster, op: Op) -> bool:
    return op.exact_on_integers and raster.data.dtype.kind in "iu"


def input_names(obj: xr.DataArray | xr.Dataset) -> list[Hashable] | None:
    """Names an identity/pointwise result may carry: the input's, or (unnamed input)
    any non-token name (``None`` → not constrained beyond :data:`TOKEN`)."""
    name = obj.name if isinstance(obj, xr.DataArray) else None
    return [name] if name is not None else None


# --------------------------------------------------------------------------- the lazy result


@pytest.mark.parametrize("op_name", ["identity", "identity_lambda", "affine"])
def test_accessor(raster: RealRaster, op_name: str) -> None:
    """``obj.patch.apply(op)``: values, per-band nodata, CRS/transform, name."""
    op = OPS[op_name]
    obj = open_user(raster)
    out = obj.patch.apply(op.make(raster), **CHIPS)
    check(
        out,
        raster,
        op.expect(raster.reference),
        exact=exact_for(raster, op),
        what=f"{raster.path.name} {op_name} via .patch.apply",
        names=input_names(obj),
    )


@pytest.mark.parametrize("op_name", ["identity", "affine"])
def test_run_and_open_result(raster: RealRaster, op_name: str, tmp_path: Path) -> None:
    """``patchflow.run(store=)`` then ``report.open()``, ``open_result`` and plain
    ``xr.open_zarr(decode_coords="all")``."""
    op = OPS[op_name]
    obj = open_user(raster)
    store = tmp_path / "out.zarr"
    report = patchflow.run(obj, op.make(raster), store=store, **CHIPS)
    assert report.blocks > 1
    expected = op.expect(raster.reference)
    exact = exact_for(raster, op)
    what = f"{raster.path.name} {op_name} via run"
    check(report.open(), raster, expected, exact=exact, what=f"{what} → report.open()")
    check(patchflow.open_result(store), raster, expected, exact=exact, what=f"{what} → open_result")
    plain = xr.open_zarr(store, decode_coords="all")[report.var]
    check(plain, raster, expected, exact=exact, what=f"{what} → xr.open_zarr")


@pytest.mark.parametrize("kind", ["zarr", "tif"])
@pytest.mark.parametrize("op_name", ["identity", "affine"])
def test_cli(raster: RealRaster, op_name: str, kind: str, tmp_path: Path) -> None:
    """``patchflow apply IN OUT --pipeline pipeline.json`` to a Zarr store and to a COG.

    NetCDF: the CLI reads it with rioxarray (GDAL's netCDF driver), one variable via
    ``--var``; the expected result is that band alone.
    """
    make, expect = PIPELINES[op_name]
    n_bands = 1 if is_netcdf(raster) else raster.data.shape[0]
    pipeline = tmp_path / "pipeline.json"
    pipeline.write_text(to_json(make(n_bands)))
    out_path = tmp_path / f"out.{kind}"
    argv = ["apply", str(raster.path), str(out_path), "--pipeline", str(pipeline)]
    argv += ["--size", str(SIZE), "--stride", str(STRIDE), "--chunks", str(CHUNK), "-q"]
    reference = raster.reference
    if is_netcdf(raster):
        argv += ["--var", raster.bands[0]]
        reference = reference[:1]
    assert main(argv) == 0
    expected = expect(reference)
    exact = op_name == "identity" and raster.data.dtype.kind in "iu"
    what = f"{raster.path.name} {op_name} via CLI → {kind}"
    if kind == "zarr":
        check(patchflow.open_result(out_path), raster, expected, exact=exact, what=what)
        plain = xr.open_zarr(out_path, decode_coords="all")
        check(only_var(plain, what), raster, expected, exact=exact, what=f"{what} (open_zarr)")
        return
    cog = rioxarray.open_rasterio(out_path)
    assert isinstance(cog, xr.DataArray)
    check(cog, raster, expected, exact=exact, what=what)
    # and GDAL's own per-band validity masks agree (what QGIS/gdalwarp will see)
    with rasterio.open(out_path) as src:
        masks = np.stack([src.read_masks(b) for b in range(1, src.count + 1)]) > 0
    lost = ~masks & ~np.isnan(expected)
    leaked = masks & np.isnan(expected)
    assert not lost.any() and not leaked.any(), (
        f"{what}: GDAL masks: {int(lost.sum())} valid pixels masked (e.g. {_where(lost)}), "
        f"{int(leaked.sum())} nodata pixels unmasked (e.g. {_where(leaked)})"
    )


# --------------------------------------------------------------------------- users' writers


def write_and_reopen(out: xr.DataArray, writer: str, path: Path) -> xr.DataArray:
    """The result written with the user's own writer and read back the standard way."""
    if writer == "rio.to_raster":
        out.rio.to_raster(path / "w.tif")
        back = rioxarray.open_rasterio(path / "w.tif")
        assert isinstance(back, xr.DataArray)
        return back
    if writer == "to_zarr":
        out.to_zarr(path / "w.zarr")
        return only_var(xr.open_zarr(path / "w.zarr", decode_coords="all"), writer)
    assert writer == "to_netcdf"
    engine = netcdf_engine()
    if engine == "scipy":
        # NetCDF3 cannot hold string-array attributes (rioxarray's per-band ``long_name``
        # tuple): the user's *input* fails to_netcdf the same way, so it is no patchflow
        # matter. NetCDF4 (netCDF4/h5netcdf installed) writes them; drop them only here.
        out = out.copy()
        out.attrs = {
            k: v
            for k, v in out.attrs.items()
            if not (isinstance(v, (list, tuple)) and any(isinstance(e, str) for e in v))
        }
    out.to_netcdf(path / "w.nc", engine=engine)
    return only_var(xr.open_dataset(path / "w.nc", decode_coords="all"), writer)


WRITERS = ["rio.to_raster", "to_zarr", "to_netcdf"]


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("op_name", ["identity", "affine"])
def test_user_writers(raster: RealRaster, op_name: str, writer: str, tmp_path: Path) -> None:
    op = OPS[op_name]
    out = open_user(raster).patch.apply(op.make(raster), **CHIPS)
    back = write_and_reopen(out, writer, tmp_path)
    check(
        back,
        raster,
        op.expect(raster.reference),
        exact=exact_for(raster, op),
        what=f"{raster.path.name} {op_name} → {writer} → reopened",
    )


# --------------------------------------------------------------------------- more identities


@pytest.mark.parametrize("agg", ["mean", "centre", "max", "min"])
def test_identity_every_aggregation(raster: RealRaster, agg: str) -> None:
    """Every merge of identical chip values is the value: identity holds for each ``agg``
    (``centre``/``max``/``min`` keep integer dtypes, so integer nodata is in play)."""
    obj = open_user(raster)
    out = obj.patch.apply(lambda c: c, agg=agg, **CHIPS)
    check(
        out,
        raster,
        raster.reference,
        exact=raster.data.dtype.kind in "iu",
        what=f"{raster.path.name} identity agg={agg}",
        names=input_names(obj),
    )


@pytest.mark.parametrize("chunks", [(200, 176), (384, 320)])
def test_identity_other_chunks(raster: RealRaster, chunks: tuple[int, int]) -> None:
    """Blocks that are not multiples of the stride nor of the file's tiles."""
    obj = open_user(raster)
    out = obj.patch.apply(lambda c: c, chunks=chunks, **CHIPS)
    check(
        out,
        raster,
        raster.reference,
        exact=raster.data.dtype.kind in "iu",
        what=f"{raster.path.name} identity chunks={chunks}",
    )


@pytest.mark.parametrize("name", RASTERS)
def test_identity_other_open_modes(request: pytest.FixtureRequest, name: str) -> None:
    """The other way users open the same file: GeoTIFFs with ``masked=True`` (nodata
    already NaN in float32), NetCDF raw with ``mask_and_scale=False`` (integer DN, nodata in
    ``_FillValue``): the same result."""
    raster: RealRaster = request.getfixturevalue(name)
    if is_netcdf(raster):
        ds = xr.open_dataset(
            raster.path, decode_coords="all", mask_and_scale=False, chunks={"y": CHUNK, "x": CHUNK}
        )
        obj: Any = ds[list(raster.bands)]
        assert obj["B04"].dtype.kind in "iu" and obj["B04"].rio.nodata == 0
        mode = "mask_and_scale=False"
    else:
        obj = open_user(raster, masked=True)
        mode = "masked=True"
    out = obj.patch.apply(lambda c: c, **CHIPS)
    check(
        out,
        raster,
        raster.reference,
        exact=raster.data.dtype.kind in "iu",
        what=f"{raster.path.name} ({mode}) identity",
    )


def test_cli_centre_keeps_real_values(raster: RealRaster, tmp_path: Path) -> None:
    """``--agg centre`` keeps an integer dtype: the COG it writes must not mask real values
    (a valid 255 in a uint8 file without nodata) nor unmask nodata."""
    pipeline = tmp_path / "pipeline.json"
    n_bands = 1 if is_netcdf(raster) else raster.data.shape[0]
    pipeline.write_text(to_json(SelectBands(list(range(n_bands)))))
    out_path = tmp_path / "out.tif"
    argv = ["apply", str(raster.path), str(out_path), "--pipeline", str(pipeline), "-q"]
    argv += ["--agg", "centre", "--size", str(SIZE), "--stride", str(STRIDE)]
    argv += ["--chunks", str(CHUNK)]
    reference = raster.reference
    if is_netcdf(raster):
        argv += ["--var", raster.bands[0]]
        reference = reference[:1]
    assert main(argv) == 0
    cog = rioxarray.open_rasterio(out_path)
    assert isinstance(cog, xr.DataArray)
    check(
        cog,
        raster,
        reference,
        exact=raster.data.dtype.kind in "iu",
        what=f"{raster.path.name} identity --agg centre via CLI → tif",
    )


# --------------------------------------------------------------------------- NDVI


def ndvi_inputs(raster: RealRaster, how: str) -> tuple[Any, Any, np.ndarray, list[dict[str, Any]]]:
    """``(input, op, expected, input attrs)`` for a band-count-changing NDVI."""
    ref = raster.reference
    if how == "bands4":  # blue, green, red, nir COG; band coord is 1..4: by index
        da = rioxarray.open_rasterio(raster.path, chunks={"y": CHUNK, "x": CHUNK})
        assert isinstance(da, xr.DataArray)
        return da, NDVI(red=2, nir=3), ndvi_reference(ref[2], ref[3]), [dict(da.attrs)]
    ds = xr.open_dataset(raster.path, decode_coords="all", chunks={"y": CHUNK, "x": CHUNK})
    attrs = [dict(ds[b].attrs) for b in raster.bands]
    expected = ndvi_reference(ref[0], ref[1])
    op = NDVI(red="B04", nir="B08")
    if how == "dataset":  # the README's Dataset path: variables stacked along `variable`
        return ds[["B04", "B08"]], op, expected, attrs
    assert how == "concat"  # what many users write: keeps B04's attrs and name
    stacked = xr.concat([ds.B04, ds.B08], dim=pd.Index(["B04", "B08"], name="band"))
    assert stacked.attrs.get("units") == "DN"
    return stacked, op, expected, attrs


NDVI_CASES = [("nc_s2", "dataset"), ("nc_s2", "concat"), ("cog_uint8_4326", "bands4")]


def check_no_input_attrs(out: xr.DataArray, attrs: list[dict[str, Any]], what: str) -> None:
    """After 2 → 1 or 4 → 1 bands nothing may still describe the input's values."""
    __tracebackhide__ = True
    claims = []
    for a in attrs:
        for key in ("units", "long_name", "description", "standard_name"):
            if key in a and key in out.attrs and out.attrs[key] == a[key]:
                claims.append(f"{key}={out.attrs[key]!r}")
    n_out = out.shape[0] if out.ndim == 3 else 1
    for key, value in out.attrs.items():
        if isinstance(value, (list, tuple)) and len(value) > 1 and len(value) != n_out:
            claims.append(f"{key}={value!r} (per-band, {len(value)} entries for {n_out} band)")
    assert not claims, f"{what}: attrs still describe the input: {', '.join(sorted(set(claims)))}"


@pytest.mark.parametrize(("fixture", "how"), NDVI_CASES)
@pytest.mark.parametrize("via", ["accessor", "run", *WRITERS])
def test_ndvi(
    request: pytest.FixtureRequest, fixture: str, how: str, via: str, tmp_path: Path
) -> None:
    """A band-count-changing op: NDVI values (1e-6), nodata where either band is nodata,
    geo kept, named ``ndvi``, no input value attrs left."""
    raster: RealRaster = request.getfixturevalue(fixture)
    obj, op, expected, attrs = ndvi_inputs(raster, how)
    what = f"{raster.path.name} ({how}) NDVI via {via}"
    soft = Soft()
    if via == "run":
        report = patchflow.run(obj, op, store=tmp_path / "ndvi.zarr", **CHIPS)
        out = report.open()
    else:
        out = obj.patch.apply(op, **CHIPS)
        soft(check_no_input_attrs, out, attrs, f"{what} (lazy result)")
        if via != "accessor":
            out = write_and_reopen(out, via, tmp_path)
    # an op that names its output ("ndvi") names the result; xr.concat's "B04" is no name
    # for an NDVI. Reopened GeoTIFFs carry no name at all.
    names = ["ndvi"] if via in ("accessor", "run") else None
    soft(check, out, raster, expected, exact=False, what=what, names=names)
    soft(check_no_input_attrs, out, attrs, what)
    soft.done()


def test_cli_ndvi_band_names_from_descriptions(cog_uint8_4326: RealRaster, tmp_path: Path) -> None:
    """``--op ndvi --red red --nir nir``: bands found by their GeoTIFF descriptions."""
    raster = cog_uint8_4326
    out_path = tmp_path / "ndvi.tif"
    argv = ["apply", str(raster.path), str(out_path), "--op", "ndvi", "--red", "red"]
    argv += ["--nir", "nir", "--size", str(SIZE), "--stride", str(STRIDE), "--chunks", "256"]
    assert main([*argv, "-q"]) == 0
    ref = raster.reference
    cog = rioxarray.open_rasterio(out_path)
    assert isinstance(cog, xr.DataArray)
    check(cog, raster, ndvi_reference(ref[2], ref[3]), exact=False, what="CLI --op ndvi → COG")
    with rasterio.open(out_path) as src:
        # the op's own long_name, never the input's red/NIR descriptions
        assert src.descriptions[0] == "normalized difference vegetation index", src.descriptions


def test_pipeline_json_is_plain(tmp_path: Path) -> None:
    """The pipelines the CLI tests use are the registered ops (sanity for the tests)."""
    for make, _ in PIPELINES.values():
        config = json.loads(to_json(make(3)))
        assert config["op"] in ("SelectBands", "Rescale")
    chips = np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(2, 3, 4, 4)
    np.testing.assert_array_equal(PIPELINES["identity"][0](3)(chips), chips)
    np.testing.assert_array_equal(PIPELINES["affine"][0](3)(chips), chips * 2.0 + 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _affine(np.uint8(255)) == 511.0  # no uint8 wrap-around in the test op


# --------------------------------------------------------------------------- the references


def test_references_match_plain_readers(raster: RealRaster) -> None:
    """The references the tests use are what rasterio/xarray read without patchflow
    (per-band masks from GDAL; NetCDF decoded by xarray), and NDVI on the whole scene."""
    if is_netcdf(raster):
        with xr.open_dataset(raster.path, decode_coords="all") as ds:
            plain = np.stack([ds[b].values.astype(np.float64) for b in raster.bands])
            full = ((ds.B08 - ds.B04) / (ds.B08 + ds.B04)).values.astype(np.float64)
        np.testing.assert_array_equal(plain, raster.reference)
        np.testing.assert_allclose(
            ndvi_reference(raster.reference[0], raster.reference[1])[0], full, rtol=1e-6, atol=1e-7
        )
        return
    with rasterio.open(raster.path) as src:
        masked = src.read(masked=True)
    plain = np.where(np.ma.getmaskarray(masked), np.nan, masked.data.astype(np.float64))
    np.testing.assert_array_equal(plain, raster.reference)
