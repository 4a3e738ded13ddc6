"""Radiometry: ``Radiometric`` (DN → reflectance/temperature, Sentinel-2 and Landsat C2
constructors) and DOS1 dark-object subtraction (``patchflow.api.dos1`` + ``DOS1``).

Every reference is plain numpy on the same values; files are real GeoTIFFs written with
rasterio and read back with rioxarray.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest
import rasterio
import rioxarray
import xarray as xr
from dask.callbacks import Callback
from rasterio.transform import from_origin

import patchflow
from patchflow.api import dos1
from patchflow.errors import NoValidPixelsError, ParameterError, RadiometryMetadataError
from patchflow.io.store import check_store, open_result
from patchflow.ops import NDVI, DNToReflectance, from_config, from_json, to_json
from patchflow.ops.radiometry import DOS1, Radiometric, dark_k

H, W = 300, 260
CHUNK = 64
NAMES = ("B04", "B08")


def scene_dn(seed: int = 0) -> np.ndarray:
    """Two uint16 DN bands with a nodata (0) collar, a 0 in one band only, dark pixels."""
    rng = np.random.default_rng(seed)
    dn = rng.integers(1100, 9000, size=(2, H, W)).astype(np.uint16)
    dn[:, :, :20] = 0  # collar
    dn[:, -15:, :] = 0
    dn[0, 100, 100] = 0  # one band only
    dn[0, 50:53, 60:62] = [[1001, 1003], [1002, 1010], [1005, 1004]]  # the darkest
    dn[1, 200, 200] = 1000  # exactly the 04.00 offset: reflectance 0
    return dn


def write_tif(
    path: Path,
    dn: np.ndarray,
    *,
    tags: dict[str, str] | None = None,
    scales: tuple[float, ...] | None = None,
    offsets: tuple[float, ...] | None = None,
    nodata: float | None = 0,
) -> Path:
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=dn.shape[-1],
        height=dn.shape[-2],
        count=dn.shape[0],
        dtype=dn.dtype,
        crs="EPSG:32633",
        transform=from_origin(500_000, 4_200_000, 10, 10),
        nodata=nodata,
        tiled=True,
        blockxsize=64,
        blockysize=64,
    ) as dst:
        dst.write(dn)
        dst.descriptions = NAMES[: dn.shape[0]]
        if tags:
            dst.update_tags(**tags)
        if scales is not None:
            dst.scales = scales
        if offsets is not None:
            dst.offsets = offsets
    return path


def s2_reference(dn: np.ndarray, add: float) -> np.ndarray:
    ref = (dn.astype(np.float64) + add) / 10000.0
    ref[dn == 0] = np.nan
    return ref.astype(np.float32)


def chips(dn: np.ndarray) -> np.ndarray:
    return dn[None]  # one chip (1, band, h, w)


# --------------------------------------------------------------------------- Radiometric


@pytest.mark.parametrize(
    ("baseline", "add"),
    [("05.09", -1000.0), ("04.00", -1000.0), ("N0400", -1000.0), (4.0, -1000.0),
     ("03.01", 0.0), ("N0213", 0.0), (2.09, 0.0)],
)  # fmt: skip
def test_sentinel2_baseline_offsets(baseline: Any, add: float) -> None:
    dn = scene_dn()
    op = Radiometric.sentinel2(processing_baseline=baseline)
    out = op(chips(dn))[0]
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, s2_reference(dn, add))
    # DN 1000 is reflectance 0 exactly after the 04.00 offset, 0.1 before
    assert out[1, 200, 200] == (0.0 if add else np.float32(0.1))
    assert np.isnan(out[:, :, :20]).all() and np.isnan(out[0, 100, 100])
    assert not np.isnan(out[1, 100, 100])  # the other band's nodata is not this band's


def test_landsat_c2_known_values() -> None:
    sr = Radiometric.landsat_c2(kind="sr")
    dn = np.array([[[[0, 7273, 43636, 10000]]]], np.uint16)
    out = sr(dn).ravel()
    assert out.dtype == np.float32 and np.isnan(out[0])
    ref = dn.ravel()[1:] * 2.75e-5 - 0.2
    np.testing.assert_allclose(out[1:], ref, rtol=1e-6)
    assert abs(out[1] - 0.0000075) < 1e-7 and abs(out[1]) < 1e-5  # ≈ 0.0
    assert abs(out[2] - 1.0) < 2e-5  # ≈ 1.0
    st = Radiometric.landsat_c2(kind="st")
    np.testing.assert_allclose(st(dn).ravel()[1:], dn.ravel()[1:] * 0.00341802 + 149.0, rtol=1e-7)
    assert st.output_attrs() == {"units": "K", "long_name": "surface temperature"}
    with pytest.raises(ParameterError, match="'sr'"):
        Radiometric.landsat_c2(kind="toa")  # type: ignore[arg-type]


def test_per_band_values_by_name_and_position() -> None:
    dn = scene_dn()
    op = Radiometric(gain=[1e-4, 2e-4], offset=[-0.1, 0.05], nodata=0)
    ref = dn.astype(np.float64) * np.array([1e-4, 2e-4])[:, None, None]
    ref += np.array([-0.1, 0.05])[:, None, None]
    ref[dn == 0] = np.nan
    np.testing.assert_array_equal(op(chips(dn))[0], ref.astype(np.float32))
    # values for one band, by name: the other band passes through (as float32)
    one = Radiometric(gain=[1e-4], bands=["B08"], nodata=0).bind(list(NAMES))
    assert one.bands == [1]
    out = one(chips(dn))[0]
    np.testing.assert_array_equal(out[1], (np.where(dn[1] == 0, np.nan, dn[1] * 1e-4)).astype("f4"))
    np.testing.assert_array_equal(out[0], np.where(dn[0] == 0, np.nan, dn[0]).astype("f4"))
    # the same by position; a scalar equals DNToReflectance's
    np.testing.assert_array_equal(Radiometric(gain=1e-4, bands=-1, nodata=0)(chips(dn))[0], out)
    np.testing.assert_allclose(
        Radiometric(gain=1e-4, offset=-0.1, nodata=0)(chips(dn)),
        DNToReflectance(scale=1e-4, offset=-0.1, nodata=0)(chips(dn)),
        rtol=0,
        atol=1e-7,
    )


def test_per_band_counts_are_checked_at_plan_time() -> None:
    with pytest.raises(ParameterError, match="different lengths"):
        Radiometric(gain=[1, 2], offset=[0, 0, 0])
    with pytest.raises(ParameterError, match="2 per-band values for 1 bands"):
        Radiometric(gain=[1, 2], bands=[0])
    scene = xr.DataArray(np.ones((3, 40, 40), "u2"), dims=("band", "y", "x"))
    with pytest.raises(ParameterError, match="2 per-band values but the input chips have 3"):
        patchflow.apply(scene, Radiometric(gain=[1, 2]), size=32, stride=24)
    with pytest.raises(ParameterError, match="no names"):
        patchflow.apply(scene, Radiometric(gain=2, bands=["nir"]), size=32, stride=24)
    with pytest.raises(ParameterError, match="out of range"):
        patchflow.apply(scene, Radiometric(gain=2, bands=[3]), size=32, stride=24)


@pytest.mark.parametrize(
    "op",
    [
        Radiometric(gain=[1e-4, 2e-4], offset=-0.1, dn_offset=[-1000, 0], nodata=0, units="1"),
        Radiometric(gain=2.0, bands=["B08"]),
        Radiometric.sentinel2(processing_baseline="04.00"),
        Radiometric.landsat_c2(kind="st"),
        DOS1(dark=[0.05, 0.02], haze_fraction=0.01, bands=["B04", 1]),
        DOS1(dark=0.03),
        Radiometric.sentinel2(processing_baseline="05.09") | DOS1(dark=[0.0123456789, 0.2]),
    ],
    ids=repr,
)
def test_config_round_trip(op: Any) -> None:
    text = to_json(op)
    assert from_json(text) == op and from_config(json.loads(text)) == op
    assert repr(from_json(text)) == repr(op)
    dn = scene_dn()
    named = op.bind(list(NAMES))
    np.testing.assert_array_equal(from_json(text).bind(list(NAMES))(chips(dn)), named(chips(dn)))


# --------------------------------------------------------------------------- from attrs


def test_sentinel2_from_geotiff_tags(tmp_path: Path) -> None:
    dn = scene_dn()
    tags = {
        "PROCESSING_BASELINE": "05.09",
        "BOA_ADD_OFFSET_B04": "-1000",
        "BOA_ADD_OFFSET_B08": "-1000",
        "BOA_QUANTIFICATION_VALUE": "10000",
    }
    path = write_tif(tmp_path / "s2.tif", dn, tags=tags)
    src = rioxarray.open_rasterio(path, chunks=CHUNK)
    assert src.attrs["long_name"] == NAMES  # band descriptions, as rioxarray reads them
    op = Radiometric.sentinel2(src)
    assert (op.gain, op.offset, op.dn_offset) == (1e-4, 0.0, -1000.0)
    np.testing.assert_array_equal(op(chips(dn))[0], s2_reference(dn, -1000.0))
    # an old product: the baseline alone says "no offset"
    old = rioxarray.open_rasterio(
        write_tif(tmp_path / "old.tif", dn, tags={"PROCESSING_BASELINE": "03.01"})
    )
    op = Radiometric.sentinel2(old)
    assert op.dn_offset == 0.0
    np.testing.assert_array_equal(op(chips(dn))[0], s2_reference(dn, 0.0))
    # the arguments and the attrs disagree: refused, never guessed
    with pytest.raises(RadiometryMetadataError, match="disagrees"):
        Radiometric.sentinel2(src, processing_baseline="03.01")
    with pytest.raises(RadiometryMetadataError, match="baseline"):
        Radiometric.sentinel2({"PROCESSING_BASELINE": "03.01", "BOA_ADD_OFFSET": -1000})


def test_sentinel2_per_band_offsets_and_band_spelling(tmp_path: Path) -> None:
    dn = scene_dn()
    tags = {"BOA_ADD_OFFSET_B4": "-1000", "BOA_ADD_OFFSET_B8": "-500"}
    src = rioxarray.open_rasterio(write_tif(tmp_path / "s2.tif", dn, tags=tags))
    op = Radiometric.sentinel2(src)
    assert op.dn_offset == (-1000.0, -500.0)
    ref = np.stack([s2_reference(dn[0], -1000.0), s2_reference(dn[1], -500.0)])
    np.testing.assert_array_equal(op(chips(dn))[0], ref)
    # only some bands say: refused
    partial = rioxarray.open_rasterio(
        write_tif(tmp_path / "half.tif", dn, tags={"BOA_ADD_OFFSET_B04": "-1000"})
    )
    with pytest.raises(RadiometryMetadataError, match=r"not for \['B08'\]"):
        Radiometric.sentinel2(partial)


def test_sentinel2_from_band_scales_and_stac(tmp_path: Path) -> None:
    dn = scene_dn()
    path = write_tif(
        tmp_path / "scaled.tif",
        dn,
        tags={"PROCESSING_BASELINE": "04.00"},
        scales=(1e-4, 1e-4),
        offsets=(-0.1, -0.1),
    )
    src = rioxarray.open_rasterio(path, chunks=CHUNK)
    op = Radiometric.sentinel2(src)
    assert (op.gain, op.offset, op.dn_offset) == (1e-4, -0.1, 0.0)
    np.testing.assert_allclose(op(chips(dn))[0], s2_reference(dn, -1000.0), rtol=0, atol=1e-7)
    # scaled on read: the values are reflectance already, converting again is refused
    scaled = rioxarray.open_rasterio(path, mask_and_scale=True)
    with pytest.raises(RadiometryMetadataError, match="already scaled"):
        Radiometric.sentinel2(scaled)
    # a STAC asset's raster:bands
    asset = {"raster:bands": [{"scale": 0.0001, "offset": -0.1}], "s2:processing_baseline": "05.09"}
    assert Radiometric.sentinel2(asset) == Radiometric(1e-4, -0.1, nodata=0, units="1",
                                                       long_name="reflectance")  # fmt: skip
    with pytest.raises(RadiometryMetadataError, match="disagree"):
        Radiometric.sentinel2({**asset, "s2:processing_baseline": "03.00"})


def test_sentinel2_without_metadata_is_a_named_error(tmp_path: Path) -> None:
    src = rioxarray.open_rasterio(write_tif(tmp_path / "bare.tif", scene_dn()))
    with pytest.raises(RadiometryMetadataError, match=r"processing_baseline='04\.00'"):
        Radiometric.sentinel2(src)
    with pytest.raises(RadiometryMetadataError, match="not a Sentinel-2 baseline"):
        Radiometric.sentinel2(processing_baseline="latest")
    assert Radiometric.sentinel2(src, add_offset=-1000).dn_offset == -1000.0


def test_nodata_stays_invalid_through_apply(tmp_path: Path) -> None:
    dn = scene_dn()
    path = write_tif(tmp_path / "s2.tif", dn, tags={"PROCESSING_BASELINE": "05.09"})
    src = rioxarray.open_rasterio(path, chunks=CHUNK)
    src = src.assign_coords(band=list(src.attrs["long_name"]))
    op = Radiometric.sentinel2(src) | NDVI(red="B04", nir="B08")
    refl = patchflow.apply(src, op[0], size=64, stride=48)
    assert isinstance(refl.data, da.Array) and refl.dtype == np.float32
    got = refl.values
    ref = s2_reference(dn, -1000.0)
    np.testing.assert_array_equal(got, ref)
    assert np.isnan(got[:, :, :20]).all() and np.isnan(got[0, 100, 100])
    assert refl.attrs.get("units") == "1" and list(refl.band.values) == list(NAMES)
    # written and read back, the collar is still nodata
    refl.rio.to_raster(tmp_path / "refl.tif")
    back = rioxarray.open_rasterio(tmp_path / "refl.tif", masked=True).values
    np.testing.assert_array_equal(np.isnan(back), np.isnan(ref))
    # the same bound to names inside a pipeline
    ndvi = patchflow.apply(src, op, size=64, stride=48).values[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        ref_ndvi = (ref[1] - ref[0]) / (ref[1] + ref[0])
    np.testing.assert_allclose(ndvi, ref_ndvi, rtol=1e-6, atol=1e-6)


def test_cli_op_radiometric(tmp_path: Path) -> None:
    dn = scene_dn()
    src = write_tif(tmp_path / "in.tif", dn)
    out = tmp_path / "out.tif"
    # runs the patchflow command as `python -m patchflow` does, with the radiometry module
    # imported first (drop the import once patchflow.ops exports it)
    code = (
        "import runpy, sys; import patchflow.ops.radiometry; "
        "sys.argv[0] = 'patchflow'; runpy.run_module('patchflow', run_name='__main__')"
    )
    args = ["apply", str(src), str(out), "--op", "radiometric"]
    args += ["--op-arg", "gain=[0.0001, 0.0002]", "--op-arg", "dn_offset=-1000"]
    args += ["--op-arg", "nodata=0"]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ},
    )
    assert proc.returncode == 0, proc.stderr
    got = rioxarray.open_rasterio(out, masked=True).values
    ref = (dn.astype(np.float64) - 1000) * np.array([1e-4, 2e-4])[:, None, None]
    ref[dn == 0] = np.nan
    np.testing.assert_array_equal(got, ref.astype(np.float32))


# --------------------------------------------------------------------------- DOS1


def valid_values(values: np.ndarray, band: int) -> np.ndarray:
    v = values[band].astype(np.float64).ravel()
    return v[~np.isnan(v) & (v != 0)]


class PeakMemory(Callback):
    """Largest total size of the arrays dask holds at once while computing."""

    def __init__(self) -> None:
        super().__init__()
        self.peak = 0

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        held = 0
        for value in state["cache"].values():
            if isinstance(value, np.ndarray):
                held += value.nbytes
            elif isinstance(value, tuple):
                held += sum(v.nbytes for v in value if isinstance(v, np.ndarray))
        self.peak = max(self.peak, held)


@pytest.fixture
def collar_tif(tmp_path: Path) -> Path:
    return write_tif(tmp_path / "collar.tif", scene_dn(), tags={"PROCESSING_BASELINE": "05.09"})


@pytest.mark.parametrize("percentile", [0.01, 1.0, 37.5, "min"])
def test_dos1_dark_values_are_numpys_exactly_and_streamed(
    collar_tif: Path, percentile: Any, dask_computes: Any
) -> None:
    src = rioxarray.open_rasterio(collar_tif, chunks=CHUNK)
    assert src.data.npartitions > 20
    with dask_computes(max_computes=0):  # building the statistics pass reads nothing
        lazy = dos1(src, percentile=percentile, compute=False)
    with PeakMemory() as peak, dask.config.set(scheduler="synchronous"):
        op = lazy.compute()
    dn = scene_dn()
    stat = np.min if percentile == "min" else (lambda v: np.percentile(v, percentile))
    expected = [float(stat(valid_values(dn, b))) for b in range(2)]
    assert isinstance(op, DOS1) and op.dark == tuple(expected)  # exact, bit for bit
    if percentile == "min":
        assert op.dark == (1001.0, 1000.0)
    # chunk by chunk: what is held is each chunk's k smallest values (k ≈ percentile % of
    # the scene), never the scene; a dark object's small percentiles hold little
    if percentile in (0.01, "min"):  # a few 8 kB chunks of the 312 kB scene
        assert 0 < peak.peak < dn.nbytes / 8
    elif percentile == 1.0:
        assert 0 < peak.peak < dn.astype(np.float64).nbytes / 4
    with dask_computes(max_computes=1):  # compute=True: one streamed pass
        assert dos1(src, percentile=percentile) == op


def test_dos1_on_lazy_reflectance_and_bands(collar_tif: Path) -> None:
    src = rioxarray.open_rasterio(collar_tif, chunks=CHUNK)
    src = src.assign_coords(band=list(src.attrs["long_name"]))
    refl = patchflow.apply(src, Radiometric.sentinel2(src))
    op = dos1(refl, percentile=0.01, bands=["B08"])
    ref = s2_reference(scene_dn(), -1000.0)
    v = ref[1].astype(np.float64).ravel()
    assert op.dark == (float(np.percentile(v[~np.isnan(v)], 0.01)),)
    assert op.bands == ["B08"] and op.haze_fraction == 0.01
    # numpy input, positions, dark values over NaN-free data
    plain = dos1(np.where(np.isnan(ref), 0, ref), percentile="min", nodata=0)
    assert plain.dark == tuple(float(ref[b][ref[b] > 0].min()) for b in range(2))
    # a band with no valid pixel has no dark object
    empty = scene_dn()
    empty[1] = 0
    arr = xr.DataArray(da.from_array(empty, chunks=(1, 64, 64)), dims=("band", "y", "x"))
    with pytest.raises(NoValidPixelsError, match=r"\['1'\]"):
        dos1(arr, nodata=0)
    with pytest.raises(ParameterError, match="percentile"):
        dos1(arr, percentile=101)
    with pytest.raises(ParameterError, match="not found"):
        dos1(arr, bands=["nir"])


def test_dos1_operator_matches_numpy() -> None:
    rng = np.random.default_rng(3)
    x = rng.random((2, 3, 16, 16)) * 0.4
    x[0, 1, 0, :4] = np.nan
    op = DOS1(dark=[0.05, 0.005, 0.2], haze_fraction=0.01)
    haze = np.maximum(np.array([0.05, 0.005, 0.2]) - 0.01, 0)[None, :, None, None]
    ref = np.maximum(x - haze, 0)
    got = op(x)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, ref)
    assert np.isnan(got[0, 1, 0, :4]).all() and (got[~np.isnan(got)] >= 0).all()
    assert op.haze() == (0.04, 0.0, 0.19)
    got32 = op(x.astype(np.float32))
    assert got32.dtype == np.float32
    # some bands only: the others pass through
    part = DOS1(dark=[0.2], bands=[2])
    out = part(x)
    np.testing.assert_array_equal(out[:, :2], x[:, :2])
    np.testing.assert_array_equal(out[:, 2], np.maximum(x[:, 2] - 0.19, 0))
    with pytest.raises(ParameterError, match="haze_fraction"):
        DOS1(dark=0.1, haze_fraction=-1)


def test_dos1_run_and_resume(collar_tif: Path, tmp_path: Path) -> None:
    src = rioxarray.open_rasterio(collar_tif, chunks=CHUNK)
    radiometric = Radiometric.sentinel2(src)
    dos = dos1(patchflow.apply(src, radiometric), percentile=0.01)  # pass one
    pipeline = radiometric | dos
    store = tmp_path / "dos1.zarr"
    kw: dict[str, Any] = {"size": 64, "stride": 48, "chunks": 128}
    report = patchflow.run(src, pipeline, store=store, zarr_format=2, **kw)  # pass two
    refl = s2_reference(scene_dn(), -1000.0).astype(np.float64)
    haze = np.maximum(np.asarray(dos.dark) - 0.01, 0)[:, None, None]
    expected = np.maximum(refl - haze, 0)
    np.testing.assert_allclose(open_result(store).values, expected, rtol=0, atol=1e-6)
    # the store's recipe holds the computed dark values: resume rebuilds the operator
    (store / report.var / "0.1.1").unlink()
    assert check_store(store).corrupt == ((1, 1),)
    fixed = patchflow.resume(store)
    assert fixed.repaired == 1 and fixed.computed == 1
    np.testing.assert_allclose(open_result(store).values, expected, rtol=0, atol=1e-6)
    recipe = xr.open_zarr(store).attrs["patchflow"]["recipe"]["op"]
    assert from_config(recipe) == pipeline


def test_dark_k_bounds() -> None:
    assert dark_k(0, 10) == 2 and dark_k(100, 10) == 10 and dark_k(50, 1) == 1
    with pytest.raises(ParameterError, match="percent"):
        dark_k("median", 10)  # type: ignore[arg-type]
