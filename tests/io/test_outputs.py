"""Outputs (issue 15): Zarr v2 stores that GDAL opens as georeferenced rasters, GDAL COG
creation options, and one progress bar per job.

Everything is real: stores and COGs on disk read back with GDAL (rasterio's bundled GDAL,
the ``ZARR:"store":/var`` syntax), rio-cogeo's validator when it is installed, child
Python processes SIGKILLed mid-job, a dask.distributed cluster, a Jupyter kernel.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import rioxarray
import xarray as xr
import zarr
from dask.callbacks import Callback
from rasterio.enums import Compression

import patchflow
from patchflow import ops
from patchflow.demo import dn_ndvi
from patchflow.engine.aggregate import make_aggregator
from patchflow.errors import CreationOptionError, ParameterError, PatchflowError
from patchflow.io.cog import COG_OPTIONS, cog_options, raster_metadata
from patchflow.io.store import (
    CRASH_AT,
    CorruptStoreError,
    IncompleteStoreError,
    ResumeMismatchError,
    StoreExistsError,
    StorePathError,
    check_store,
    open_result,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore:The data type .* does not have a Zarr V3 spec"),
    pytest.mark.filterwarnings("ignore:Consolidated metadata is currently not"),
]

#: 700 x 600 px in 256-px blocks: 3 x 3 = 9 blocks
KW: dict[str, Any] = {"size": 128, "stride": 96, "chunks": 256}
#: a patchflow.ops pipeline: the store records a recipe, so patchflow.resume works alone
OP = ops.DNToReflectance(scale=1e-4) | ops.NDVI(red=0, nir=1)
NEGATIVE = ops.DNToReflectance(scale=1e-4) | ops.NDVI(red=1, nir=0)
V2_FILES = (".zgroup", ".zattrs", ".zmetadata")


@pytest.fixture(scope="module")
def scene(scene_factory: Callable[..., xr.DataArray]) -> xr.DataArray:
    return scene_factory((700, 600), seed=3, chunks=256)


@pytest.fixture(scope="module")
def expected(scene: xr.DataArray) -> np.ndarray:
    """The job's result in memory (float32, NaN where invalid)."""
    return np.asarray(patchflow.apply(scene, dn_ndvi, **KW).values)


@pytest.fixture(scope="module")
def scene_tif(scene: xr.DataArray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scene as a tiled GeoTIFF: an input patchflow can reopen from the store alone."""
    path = tmp_path_factory.mktemp("input") / "scene.tif"
    scene.rio.to_raster(path, tiled=True, blockxsize=256, blockysize=256, compress="LZW")
    return path


def open_tif(path: Path) -> xr.DataArray:
    out = rioxarray.open_rasterio(path, chunks=256)
    assert isinstance(out, xr.DataArray)
    return out


def gdal_zarr(store: Path, var: str) -> str:
    return f'ZARR:"{store}":/{var}'


def zarr_format_of(store: Path) -> int:
    v3 = (store / "zarr.json").is_file()
    v2 = [name for name in V2_FILES if (store / name).exists()]
    assert v3 != bool(v2), f"{store}: zarr.json and {v2}"
    return 3 if v3 else 2


def identity(chips: np.ndarray) -> np.ndarray:
    return chips


# --------------------------------------------------------------------------- Zarr v2


def test_v2_store_is_a_georeferenced_raster_for_gdal(
    scene: xr.DataArray, expected: np.ndarray, tmp_path: Path
) -> None:
    store = tmp_path / "ndvi.zarr"
    report = patchflow.run(scene, dn_ndvi, store=store, zarr_format=2, **KW)
    assert zarr_format_of(store) == 2
    with rasterio.open(gdal_zarr(store, report.var)) as src:
        assert src.driver == "Zarr"
        assert src.crs == scene.rio.crs
        assert src.transform == scene.rio.transform()
        assert (src.count, src.height, src.width) == expected.shape
        assert src.dtypes == ("float32",)
        assert src.nodata is not None and math.isnan(src.nodata)
        np.testing.assert_array_equal(src.read(), expected)  # NaN where NaN
    # and patchflow's own reader (every block verified) sees the same
    np.testing.assert_array_equal(open_result(store).values, expected)
    assert check_store(store).ok


def test_v2_integer_result_keeps_dtype_and_nodata(cog_dem_int16: Any, tmp_path: Path) -> None:
    # a real int16 DEM with -32768 holes, passed through: GDAL must read the DEM itself
    dem = open_tif(cog_dem_int16.path).chunk({"y": 128, "x": 128})
    kw: dict[str, Any] = {"size": 64, "stride": 48, "agg": "centre", "output_dtype": "int16"}
    store = tmp_path / "dem.zarr"
    report = patchflow.run(dem, identity, store=store, zarr_format=2, **kw)
    with rasterio.open(gdal_zarr(store, report.var)) as src:
        assert src.crs == cog_dem_int16.crs
        assert src.transform.almost_equals(cog_dem_int16.transform, precision=1e-9)
        assert src.dtypes == ("int16",)
        assert src.nodata == -32768
        np.testing.assert_array_equal(src.read(), cog_dem_int16.data)


def test_v2_store_takes_numcodecs_compressors(
    scene: xr.DataArray, expected: np.ndarray, tmp_path: Path
) -> None:
    store = tmp_path / "zlib.zarr"
    report = patchflow.run(
        scene, dn_ndvi, store=store, zarr_format=2, compressors=[{"id": "zlib", "level": 6}], **KW
    )
    array_meta = json.loads((store / report.var / ".zarray").read_text())
    assert array_meta["compressor"] == {"id": "zlib", "level": 6}
    with rasterio.open(gdal_zarr(store, report.var)) as src:
        np.testing.assert_array_equal(src.read(), expected)


def test_default_is_zarr_v3_as_before(
    scene: xr.DataArray, expected: np.ndarray, tmp_path: Path
) -> None:
    store = tmp_path / "v3.zarr"
    report = patchflow.run(scene, dn_ndvi, store=store, **KW)
    assert zarr_format_of(store) == 3
    array_meta = json.loads((store / report.var / "zarr.json").read_text())
    assert array_meta["zarr_format"] == 3
    assert [c["name"] for c in array_meta["codecs"]] == ["bytes", "zstd"]
    np.testing.assert_array_equal(report.open(verify=True).values, expected)
    plain = xr.open_zarr(store)[report.var]  # plain xarray + rioxarray, as before
    assert plain.rio.crs == scene.rio.crs and plain.rio.transform() == scene.rio.transform()


def test_v2_accumulate_equals_v3(scene: xr.DataArray, tmp_path: Path) -> None:
    results = {}
    for fmt in (2, 3):
        store = tmp_path / f"v{fmt}.zarr"
        patchflow.run(scene, OP, store=store, keep_sums=True, zarr_format=fmt, **KW)
        # the second pass gives no zarr_format: the store keeps its own
        report = patchflow.run(scene, NEGATIVE, store=store, mode="accumulate", **KW)
        assert report.computed == report.blocks == 9
        assert zarr_format_of(store) == fmt
        health = check_store(store)
        assert health.ok and health.passes == 2
        results[fmt] = np.asarray(zarr.open_array(str(store), path=report.var, mode="r")[...])
    np.testing.assert_array_equal(results[2], results[3])  # bit-identical
    assert np.nanmax(np.abs(results[2])) < 1e-6  # NDVI + (-NDVI), halved: zero


def test_v2_damaged_block_is_found_and_repaired(
    scene_tif: Path, expected: np.ndarray, tmp_path: Path
) -> None:
    store = tmp_path / "ndvi.zarr"
    report = patchflow.run(open_tif(scene_tif), OP, store=store, zarr_format=2, **KW)
    (store / report.var / "0.1.1").unlink()  # Zarr v2 chunk key of block (1, 1)
    health = check_store(store)
    assert health.corrupt == ((1, 1),) and not health.ok
    with pytest.raises(CorruptStoreError, match=r"\(1, 1\)"):
        open_result(store, verify="now")
    with pytest.raises(CorruptStoreError, match=r"\(1, 1\)"):
        open_result(store).load()
    fixed = patchflow.resume(store)  # from the recipe the store records
    assert (fixed.repaired, fixed.computed, fixed.skipped) == (1, 1, 8)
    assert zarr_format_of(store) == 2
    # the status went incomplete and back, in .zattrs and in the consolidated copy
    assert xr.open_zarr(store, consolidated=True).attrs["patchflow"]["status"] == "complete"
    np.testing.assert_allclose(open_result(store).values, expected, atol=1e-6, rtol=0)
    with rasterio.open(gdal_zarr(store, report.var)) as src:
        np.testing.assert_array_equal(src.read(), open_result(store).values)


def test_resume_keeps_the_store_format(scene_tif: Path, tmp_path: Path) -> None:
    obj = open_tif(scene_tif)
    store = tmp_path / "ndvi.zarr"
    patchflow.run(obj, OP, store=store, zarr_format=2, **KW)
    with pytest.raises(ResumeMismatchError, match=r"Zarr v2 store.*zarr_format=3") as info:
        patchflow.run(obj, OP, store=store, resume=True, zarr_format=3, **KW)
    assert info.value.fields == (("zarr_format", 2, 3),)
    with pytest.raises(ResumeMismatchError, match="adding a pass"):
        patchflow.run(obj, OP, store=store, mode="accumulate", zarr_format=3, **KW)
    assert zarr_format_of(store) == 2 and check_store(store).ok  # untouched
    # the same format, or none, is the store's: nothing to do
    for fmt in (2, None):
        report = patchflow.run(obj, OP, store=store, resume=True, zarr_format=fmt, **KW)
        assert report.computed == 0 and report.skipped == 9


def test_overwrite_may_change_the_format(
    scene: xr.DataArray, expected: np.ndarray, tmp_path: Path
) -> None:
    store = tmp_path / "ndvi.zarr"
    patchflow.run(scene, dn_ndvi, store=store, zarr_format=2, **KW)
    patchflow.run(scene, dn_ndvi, store=store, overwrite=True, **KW)
    assert zarr_format_of(store) == 3  # no v2 metadata file left behind
    np.testing.assert_array_equal(open_result(store).values, expected)
    patchflow.run(scene, dn_ndvi, store=store, overwrite=True, zarr_format=2, **KW)
    assert zarr_format_of(store) == 2
    np.testing.assert_array_equal(open_result(store).values, expected)


CRASH = textwrap.dedent(
    """
    import sys
    import rioxarray
    import patchflow
    from patchflow import ops
    op = ops.DNToReflectance(scale=1e-4) | ops.NDVI(red=0, nir=1)
    obj = rioxarray.open_rasterio(sys.argv[1], chunks=256)
    patchflow.run(obj, op, store=sys.argv[2], zarr_format=2, size=128, stride=96, chunks=256,
                  scheduler="synchronous")
    """
)


@pytest.mark.parametrize("stage", ["create", "block-3"])
def test_v2_killed_run_is_resumed_as_v2(
    stage: str, scene_tif: Path, expected: np.ndarray, tmp_path: Path
) -> None:
    store = tmp_path / "killed.zarr"
    env = {**os.environ, CRASH_AT: stage}
    proc = subprocess.run(
        [sys.executable, "-c", CRASH, str(scene_tif), str(store)], env=env, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL
    with pytest.raises(IncompleteStoreError):
        open_result(store)
    report = patchflow.resume(store)
    assert report.computed > 0
    assert zarr_format_of(store) == 2
    np.testing.assert_allclose(open_result(store).values, expected, atol=1e-6, rtol=0)
    with rasterio.open(gdal_zarr(store, report.var)) as src:
        assert src.crs is not None and src.transform == open_tif(scene_tif).rio.transform()


def test_bad_zarr_format_or_codec_is_refused_before_writing(
    scene: xr.DataArray, tmp_path: Path
) -> None:
    store = tmp_path / "out.zarr"
    with pytest.raises(ParameterError, match=r"zarr_format=4 .*valid: 3 .* or 2"):
        patchflow.run(scene, dn_ndvi, store=store, zarr_format=4, **KW)  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match=r"Zarr v2 store: v2 takes numcodecs codecs"):
        patchflow.run(
            scene,
            dn_ndvi,
            store=store,
            zarr_format=2,
            compressors=[zarr.codecs.ZstdCodec(level=3)],
            **KW,
        )
    assert not store.exists()


# --------------------------------------------------------------------------- COG


def cog_structure(path: Path) -> dict[str, Any]:
    """What GDAL reports about a file's COG structure (and rio-cogeo's verdict if it is
    installed)."""
    with rasterio.open(path) as src:
        found = {
            "layout": src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT"),
            "predictor": src.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR"),
            "tiled": src.profile.get("tiled"),
            "blocks": set(src.block_shapes),
            "overviews": src.overviews(1),
            "compression": src.compression,
        }
    with contextlib.suppress(ImportError):
        from rio_cogeo.cogeo import cog_validate

        valid, errors, _ = cog_validate(str(path), strict=True)
        assert valid, errors
    return found


def test_cog_float32_with_floating_point_predictor(
    scene: xr.DataArray, expected: np.ndarray, tmp_path: Path
) -> None:
    path = tmp_path / "ndvi.tif"
    report = patchflow.run(scene, dn_ndvi, store=path, creation_options={"PREDICTOR": 3}, **KW)
    assert report.kind == "cog" and report.store == str(path)
    assert (report.blocks, report.computed) == (9, 9)
    assert sorted(os.listdir(tmp_path)) == ["ndvi.tif"]  # the staging store is gone
    found = cog_structure(path)
    assert found["layout"] == "COG" and found["tiled"]
    assert found["predictor"] == "3"
    assert found["compression"] == Compression.deflate  # the default, kept
    assert found["blocks"] == {(256, 256)}  # the default, kept
    assert found["overviews"]
    with rasterio.open(path) as src:
        assert src.crs == scene.rio.crs
        assert src.transform == scene.rio.transform()
        assert src.dtypes == ("float32",) and math.isnan(src.nodata)
        assert src.descriptions == ("normalized difference vegetation index",)  # the op's long_name
        # the op's attrs and no Zarr encoding attrs
        assert src.tags() == {
            "AREA_OR_POINT": "Area",
            "long_name": "normalized difference vegetation index",
            "units": "1",
        }
        np.testing.assert_array_equal(src.read(), expected)
    np.testing.assert_array_equal(report.open().values, expected)


def test_cog_zstd_level_and_blocksize_are_honoured(scene: xr.DataArray, tmp_path: Path) -> None:
    sizes = {}
    for level in (1, 19):
        path = tmp_path / f"level{level}.tif"
        # keys are case-insensitive, values strings or numbers
        options = {"compress": "zstd", "Level": level, "BLOCKSIZE": "512"}
        patchflow.run(scene, dn_ndvi, store=path, creation_options=options, **KW)
        found = cog_structure(path)
        assert found["compression"] == Compression.zstd
        assert found["blocks"] == {(512, 512)}
        sizes[level] = path.stat().st_size
    assert sizes[19] < sizes[1]  # the level reached GDAL (ignored, both would be equal)


def test_cog_integer_result_with_nodata(cog_dem_int16: Any, tmp_path: Path) -> None:
    dem = open_tif(cog_dem_int16.path).chunk({"y": 128, "x": 128})
    kw: dict[str, Any] = {"size": 64, "stride": 48, "agg": "centre", "output_dtype": "int16"}
    path = tmp_path / "dem.tif"
    options = {"predictor": "standard", "compress": "lzw", "overview_resampling": "nearest"}
    patchflow.run(dem, identity, store=path, creation_options=options, **kw)
    found = cog_structure(path)
    assert (found["layout"], found["predictor"]) == ("COG", "2")
    assert found["compression"] == Compression.lzw
    with rasterio.open(path) as src:
        assert src.dtypes == ("int16",) and src.nodata == -32768
        assert src.crs == cog_dem_int16.crs
        np.testing.assert_array_equal(src.read(), cog_dem_int16.data)


def labels_scene() -> xr.DataArray:
    """A uint8 class map (classes 0 and 5 in 3-px squares, a 255 nodata hole): averaging
    any two neighbouring classes gives a value that is no class."""
    yy, xx = np.mgrid[0:300, 0:280]
    labels = np.where((yy // 3 + xx // 3) % 2 == 0, 0, 5).astype(np.uint8)[None]
    labels[:, 50:60, 50:60] = 255
    da = xr.DataArray(
        labels,
        dims=("band", "y", "x"),
        coords={
            "band": [1],
            "y": 4_000_000 - 10.0 * np.arange(300) - 5,
            "x": 500_000 + 10.0 * np.arange(280) + 5,
        },
    )
    return da.rio.write_crs("EPSG:32633").rio.write_nodata(255)


def as_labels(chip: np.ndarray) -> np.ndarray:
    return np.nan_to_num(chip, nan=0).astype(np.uint8)


@pytest.mark.parametrize("agg", ["vote", "soft_vote", "mode", "centre", "max", "min"])
def test_cog_overviews_of_class_labels_hold_only_classes(agg: str, tmp_path: Path) -> None:
    # GDAL's COG driver builds overviews with CUBIC by default: on a class map that
    # invents classes (0 and 5 blend into 2 and 3); a labels result gets NEAREST. So does
    # an integer result of a merge that picks one chip's value (centre, max, min): its
    # pixels are values the op returned, which may be classes
    def scores(chip: np.ndarray) -> np.ndarray:  # one score band per class, for soft_vote
        lab = as_labels(chip)[0]
        return np.stack([(lab == k).astype(np.float32) for k in range(6)])

    op = scores if agg == "soft_vote" else as_labels
    kw: dict[str, Any] = {"size": 64, "stride": 48, "agg": agg}
    if agg == "vote":
        kw["n_classes"] = 6
    scene = labels_scene()
    path = tmp_path / "labels.tif"
    patchflow.run(scene, op, store=path, **kw)
    with rasterio.open(path) as src:
        assert src.overviews(1)
        full = src.read(1)
        assert set(np.unique(full[full != src.nodata]).tolist()) == {0, 5}
        for factor in src.overviews(1):
            shape = (src.height // factor, src.width // factor)
            seen = set(np.unique(src.read(1, out_shape=shape)).tolist())
            assert seen <= {0, 5, src.nodata}, (factor, seen)
    # a resampling the user asks for is theirs; a continuous result keeps GDAL's default
    assert cog_options({"resampling": "average"}, categorical=True)["RESAMPLING"] == "AVERAGE"
    assert "RESAMPLING" not in cog_options({"overview_resampling": "mode"}, categorical=True)
    assert "RESAMPLING" not in cog_options(dtype="float32", lead=(1,))


@pytest.mark.parametrize(
    ("agg", "dtype", "discrete"),
    [
        ("centre", "float32", False),  # NDVI picked from one chip: blends as GDAL does
        ("max", "float64", False),
        ("overlap_add", "uint8", False),  # an average of integers is no label
        ("median", "int16", False),
        ("centre", "int16", True),
        ("min", "bool", True),
        ("vote", "uint8", True),
    ],
)
def test_which_results_get_nearest_overviews(agg: str, dtype: str, discrete: bool) -> None:
    made = make_aggregator(agg, out_dtype=np.dtype(dtype), lead=(1,), n_classes=3, layers=4)
    assert made.discrete() is discrete


BAD_OPTIONS = [
    ({"FOO": 1}, r"unknown creation option 'FOO' for a COG; valid: .*BLOCKSIZE.*COMPRESS"),
    ({"compress": "FOO"}, r"COMPRESS='FOO' is not valid; valid: NONE\|LZW\|JPEG\|DEFLATE"),
    ({"predictor": 3}, r"PREDICTOR=3 \(FLOATING_POINT\) is for float32/float64.* uint16"),
    ({"level": 13}, r"LEVEL=13 is out of range for COMPRESS=DEFLATE \(1-12\)"),
    ({"compress": "lzw", "level": 5}, r"LEVEL=5 has no effect with COMPRESS=LZW"),
    ({"quality": 90}, r"QUALITY=90 has no effect with COMPRESS=DEFLATE"),
    ({"compress": "jpeg"}, r"COMPRESS=JPEG takes uint8 .* result is uint16"),
    ({"compress": "webp"}, r"COMPRESS=WEBP takes uint8 rasters with 3 or 4 bands"),
    ({"compress": "none", "predictor": 2}, r"PREDICTOR=STANDARD has no effect with"),
    ({"max_z_error": 0.5}, r"MAX_Z_ERROR=0.5 has no effect"),
    ({"blocksize": 200}, r"BLOCKSIZE='200' is not valid: TIFF tiles are multiples of 16"),
    ({"blocksize": 64}, r"BLOCKSIZE='64' is not valid: out of range"),
    ({"blocksize": "big"}, r"BLOCKSIZE='big' is not valid: not an integer"),
    ({"bigtiff": "maybe"}, r"BIGTIFF='maybe' is not valid; valid: YES\|NO\|IF_NEEDED\|IF_SAFER"),
    ({"resampling": "median"}, r"RESAMPLING='median' is not valid; valid: NEAREST\|AVERAGE"),
    ({"target_srs": "EPSG:4326"}, r"TARGET_SRS=.* would reproject or re-grid the result"),
    ({"tiling_scheme": "GoogleMapsCompatible"}, r"TILING_SCHEME=.* would reproject"),
    ({"nbits": 12}, r"NBITS=12 keeps only the low bits"),
    ({"compress": "zstd", "COMPRESS": "lzw"}, r"COMPRESS is given twice"),
    ({"level": [9]}, r"LEVEL=\[9\] \(list\): give a string or a number"),
]


@pytest.mark.parametrize(("options", "match"), BAD_OPTIONS, ids=[str(o) for o, _ in BAD_OPTIONS])
def test_bad_creation_options_are_refused_before_the_job(
    options: dict[str, Any], match: str, scene: xr.DataArray, tmp_path: Path
) -> None:
    calls: list[int] = []

    def op(chips: np.ndarray) -> np.ndarray:
        calls.append(1)
        return np.asarray(chips[:1])

    path = tmp_path / "out.tif"
    # dtype and bands given: no dry run, so any call of op would be the job running;
    # "centre" keeps the uint16 (blending would make floats)
    kw: dict[str, Any] = {**KW, "output_dtype": "uint16", "output_bands": 1, "agg": "centre"}
    with pytest.raises(CreationOptionError, match=match) as info:
        patchflow.run(scene, op, store=path, creation_options=options, **kw)
    assert isinstance(info.value, ParameterError) and isinstance(info.value, PatchflowError)
    assert calls == []
    assert os.listdir(tmp_path) == []  # no COG, no staging store


def test_cog_options_table() -> None:
    # the defaults, merged under what is given; canonical spellings for GDAL
    assert cog_options() == {"COMPRESS": "DEFLATE", "BLOCKSIZE": "256", "BIGTIFF": "IF_SAFER"}
    got = cog_options(
        {"predictor": True, "sparse_ok": False, "num_threads": "all_cpus"},
        dtype="float32",
    )
    assert got["PREDICTOR"] == "YES" and got["SPARSE_OK"] == "NO"
    assert got["NUM_THREADS"] == "ALL_CPUS"
    with pytest.raises(CreationOptionError, match="MAX_Z_ERROR=0 has no effect"):
        cog_options({"max_z_error": 0})  # with DEFLATE: GDAL would ignore it
    assert cog_options({"compress": "lerc_zstd", "max_z_error": 0.01, "level": 9})["LEVEL"] == "9"
    assert cog_options({"compress": "jpeg", "quality": 80}, dtype="uint8", lead=(3,))
    with pytest.raises(ParameterError, match=r"GeoTIFF holds \(band, y, x\)"):
        cog_options(dtype="float32", lead=(2, 3))
    assert {"COMPRESS", "PREDICTOR", "LEVEL", "BLOCKSIZE", "OVERVIEWS", "RESAMPLING"} <= set(
        COG_OPTIONS
    )


def test_cog_metadata_follows_rioxarray_rules() -> None:
    # what result.rio.to_raster writes: a long_name tuple names each band, else the
    # long_name or the name goes on every band; encoding attrs are no tags
    data = np.zeros((2, 4, 4), np.float32)
    named = xr.DataArray(data, dims=("band", "y", "x"), name="ndvi", attrs={"units": "1"})
    assert raster_metadata(named) == (["ndvi", "ndvi"], {"units": "1"})
    attrs = {"long_name": ("red", "nir"), "grid_mapping": "spatial_ref", "_FillValue": 0.0}
    labelled = xr.DataArray(data, dims=("band", "y", "x"), attrs=attrs)
    assert raster_metadata(labelled) == (["red", "nir"], {})
    wrong_count = xr.DataArray(data, dims=("band", "y", "x"), attrs={"long_name": ("a",)})
    assert raster_metadata(wrong_count) == (None, {})


def test_zarr_only_options_are_refused_for_a_cog(scene: xr.DataArray, tmp_path: Path) -> None:
    path = tmp_path / "out.tif"
    for extra in (
        {"resume": True},
        {"mode": "accumulate"},
        {"keep_sums": True},
        {"zarr_format": 2},
        {"compressors": [{"id": "zlib"}]},
    ):
        name = next(iter(extra))
        with pytest.raises(ParameterError, match=rf"{name}= only apply to a Zarr store"):
            patchflow.run(scene, dn_ndvi, store=path, **extra, **KW)
    with pytest.raises(ParameterError, match=r"creation_options= .* is a Zarr store"):
        patchflow.run(
            scene, dn_ndvi, store=tmp_path / "o.zarr", creation_options={"compress": "zstd"}, **KW
        )
    assert os.listdir(tmp_path) == []


def test_cog_exists_needs_overwrite(scene: xr.DataArray, tmp_path: Path) -> None:
    path = tmp_path / "out.TIF"  # the suffix is case-insensitive
    path.write_bytes(b"not yet a COG")
    with pytest.raises(StoreExistsError, match="overwrite=True"):
        patchflow.run(scene, dn_ndvi, store=path, **KW)
    assert path.read_bytes() == b"not yet a COG"
    patchflow.run(scene, dn_ndvi, store=path, overwrite=True, **KW)
    assert cog_structure(path)["layout"] == "COG"
    folder = tmp_path / "folder.tif"
    folder.mkdir()
    with pytest.raises(StorePathError, match="is a directory"):
        patchflow.run(scene, dn_ndvi, store=folder, overwrite=True, **KW)


def test_accessor_takes_the_new_keywords(scene: xr.DataArray, tmp_path: Path) -> None:
    report = scene.patch.run(dn_ndvi, store=tmp_path / "a.zarr", zarr_format=2, **KW)
    assert zarr_format_of(tmp_path / "a.zarr") == 2
    cog = scene.patch.run(
        dn_ndvi, store=tmp_path / "a.tif", creation_options={"compress": "zstd"}, **KW
    )
    np.testing.assert_array_equal(cog.open().values, report.open().values)


# --------------------------------------------------------------------------- progress

#: a progress-bar line (patchflow's and dask's: ``[####      ] | 45% ...``)
BAR = re.compile(r"^\[[# ]{40}\] \| +\d{1,3}% ")


def bars(text: str) -> list[str]:
    """The bars drawn on a text stream: one per newline, each the last of its redraws."""
    assert text.endswith("\n") or not text, repr(text[-200:])
    drawn = []
    for line in text.split("\n")[:-1]:
        redraws = [r for r in line.split("\r") if r.strip()]
        assert redraws and all(BAR.match(r) for r in redraws), repr(line[:300])
        drawn.append(redraws[-1].rstrip())
    return drawn


def drawn_by(job: Callable[[Any], Any]) -> tuple[list[str], int]:
    """The bars a job draws on a stream, and how many dask computes it ran locally."""

    class Computes(Callback):
        def __init__(self) -> None:
            super().__init__()
            self.count = 0

        def _start(self, dsk: Any) -> None:
            self.count += 1

    out = io.StringIO()
    with Computes() as computes:
        job(out)
    return bars(out.getvalue()), computes.count


def test_one_bar_per_job(scene: xr.DataArray, tmp_path: Path) -> None:
    z, acc, cog = tmp_path / "z.zarr", tmp_path / "acc.zarr", tmp_path / "c.tif"
    jobs: dict[str, Callable[[Any], Any]] = {
        "zarr": lambda out: patchflow.run(scene, OP, store=z, progress=out, **KW),
        "first pass": lambda out: patchflow.run(
            scene, OP, store=acc, keep_sums=True, progress=out, **KW
        ),
        "accumulate": lambda out: patchflow.run(
            scene, NEGATIVE, store=acc, mode="accumulate", progress=out, **KW
        ),
        "v2": lambda out: patchflow.run(
            scene, OP, store=tmp_path / "v2.zarr", zarr_format=2, progress=out, **KW
        ),
        "cog": lambda out: patchflow.run(scene, OP, store=cog, progress=out, **KW),
    }
    for label, job in jobs.items():
        drawn, computes = drawn_by(job)
        assert len(drawn) == 1, (label, drawn)
        assert "| 100% |" in drawn[0], (label, drawn)
        assert computes == 1, label  # one dask computation per job: nothing else to show
    assert "| COG |" in drawn[0]
    # a damaged block: the resume (re-reading every block, recomputing one) is one bar too
    var = check_store(z).var
    assert var is not None
    (z / var / "c" / "0" / "1" / "1").unlink()  # Zarr v3 chunk key of block (1, 1)

    def resume(out: Any) -> Any:
        return patchflow.run(scene, OP, store=z, resume=True, progress=out, **KW)

    drawn, computes = drawn_by(resume)
    assert len(drawn) == 1 and "| 100% |" in drawn[0] and computes == 1
    # nothing left to compute: no bar
    assert drawn_by(resume) == ([], 0)


def test_progress_true_draws_on_stdout(
    scene: xr.DataArray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    patchflow.run(scene, OP, store=tmp_path / "z.zarr", progress=True, **KW)
    captured = capsys.readouterr()
    assert len(bars(captured.out)) == 1 and captured.err == ""
    with pytest.raises(ParameterError, match="progress="):
        patchflow.run(scene, OP, store=tmp_path / "y.zarr", progress="yes", **KW)  # type: ignore[arg-type]


def test_a_failing_job_ends_its_bar(scene: xr.DataArray, tmp_path: Path) -> None:
    def broken(chips: np.ndarray) -> np.ndarray:
        raise RuntimeError("planned failure")

    out = io.StringIO()
    with pytest.raises(PatchflowError):
        patchflow.run(
            scene,
            broken,
            store=tmp_path / "z.zarr",
            progress=out,
            output_dtype="float32",
            output_bands=1,
            **KW,
        )
    (drawn,) = bars(out.getvalue())  # one bar, ended: the traceback starts on a new line
    assert "100%" not in drawn


def test_dask_progress_bar_around_a_cog_job_draws_one_bar(
    scene: xr.DataArray, tmp_path: Path
) -> None:
    # what `patchflow apply … OUT.tif` does: dask's ProgressBar around the whole job
    from dask.diagnostics import ProgressBar

    out = io.StringIO()
    with ProgressBar(minimum=0, out=out):
        report = patchflow.run(
            scene, OP, store=tmp_path / "c.tif", creation_options={"compress": "zstd"}, **KW
        )
    result = report.open()
    assert len([line for line in out.getvalue().split("\n") if "Completed" in line]) == 1
    assert report.kind == "cog" and result.rio.crs == scene.rio.crs


@pytest.mark.slow
def test_one_bar_on_a_distributed_cluster(scene: xr.DataArray, tmp_path: Path) -> None:
    from dask.distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster),
    ):
        for store in (tmp_path / "d.zarr", tmp_path / "d.tif"):
            out = io.StringIO()
            report = patchflow.run(scene, OP, store=store, progress=out, **KW)
            (drawn,) = bars(out.getvalue())
            assert "| 100% |" in drawn and report.computed == 9


@pytest.fixture
def python3_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A ``python3`` kernelspec that runs ipykernel on ``sys.executable`` (as in
    tests/test_notebooks.py)."""
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (patchflow tests)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return "python3"


NOTEBOOK_CELL = """
import patchflow
from patchflow.demo import dn_ndvi
from patchflow.io.synthetic import make_scene
scene = make_scene((700, 600), seed=3, chunks=256)
kw = dict(size=128, stride=96, chunks=256)
patchflow.run(scene, dn_ndvi, store={zarr!r}, progress=True, **kw)
patchflow.run(scene, dn_ndvi, store={tif!r}, progress=True, **kw)
print("done")
"""


@pytest.mark.slow
def test_one_bar_per_job_in_a_notebook(python3_kernel: str, tmp_path: Path) -> None:
    import nbclient
    import nbformat

    nb = nbformat.v4.new_notebook()
    cell = NOTEBOOK_CELL.format(zarr=str(tmp_path / "n.zarr"), tif=str(tmp_path / "n.tif"))
    nb.cells.append(nbformat.v4.new_code_cell(cell))
    nbclient.NotebookClient(nb, kernel_name=python3_kernel, timeout=120).execute()
    outputs = nb.cells[0].outputs
    assert not [o for o in outputs if o.get("output_type") == "error"], outputs
    stream = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert stream == "done\n"  # no \r redraws saved into the cell
    shown = [o["data"]["text/plain"] for o in outputs if o.get("output_type") == "display_data"]
    # one output per job, updated in place: only its final state is kept
    assert len(shown) == 2, shown
    assert all(BAR.match(s) and "| 100% |" in s for s in shown), shown
    assert "| COG |" in shown[1]
