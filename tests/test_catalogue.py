"""The bad-input catalogue (issue 12): one list of cases, walked by one test.

``CASES`` is the single source of README's "Troubleshooting (the bad-input catalogue)"
table: its ``did``/``get`` texts are the table's two columns, and
:func:`test_readme_table_is_the_case_list` keeps them identical.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from conftest import (  # module-level case list: no fixtures here
    make_test_scene,
    stac_item,
    write_band_nodata_vrt,
)

import patchflow
from patchflow.cli import build_parser
from patchflow.demo import dn_ndvi
from patchflow.errors import (
    BandNodataError,
    CommandError,
    ConfigError,
    DimensionError,
    GridError,
    InputReadError,
    InputTypeError,
    OperatorError,
    ParameterError,
    PatchflowError,
    PatchflowWarning,
    ResampledGridWarning,
    UsageError,
    WindowError,
)
from patchflow.io.store import StoreError, StoreExistsError
from patchflow.ops import NDVI, Composite, SelectBands, from_config, from_json

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Troubleshooting (the bad-input catalogue)"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass(frozen=True)
class Case:
    """One bad input: what the user did, what they get, and how to reproduce it."""

    id: str
    did: str  # README column "you did"
    get: str  # README column "you get"
    call: Callable[[Path], Any]  # gets a fresh tmp_path
    error: type[BaseException]  # an error class, or a PatchflowWarning for warn-only cases
    match: str  # regex the message must match
    skip: str | None = None  # reason to skip here (e.g. root ignores permissions)


# --------------------------------------------------------------------------- inputs


def ident(chip: np.ndarray) -> np.ndarray:
    return chip.astype(np.float64)


def apply(obj: Any = None, op: Any = ident, **params: Any) -> Any:
    """``patchflow.apply`` on the small scene, 64/48 chips unless overridden."""
    params = {"size": 64, "stride": 48, **params}
    return patchflow.apply(make_test_scene() if obj is None else obj, op, **params)


def computed(**params: Any) -> Callable[[Path], Any]:
    """A call that plans with ``params`` and computes (for errors raised by the graph)."""
    return lambda tmp: apply(**params).compute()


def planned(**params: Any) -> Callable[[Path], Any]:
    """A call that only plans (``apply`` without compute): the error must come at once."""
    return lambda tmp: apply(**params)


def keywords(**params: Any) -> Callable[[Path], Any]:
    """``patchflow.apply`` with exactly these keywords (no default size/stride added)."""
    return lambda tmp: patchflow.apply(make_test_scene(), ident, **params)


def _one_size_half(chip: np.ndarray) -> np.ndarray:
    """A model built for 64 × 64 chips that returns 32 × 32 (a crop or a downsampling?)."""
    if chip.shape[-2:] != (64, 64):
        raise ValueError("this model takes 64 x 64 chips only")
    return chip[..., ::2, ::2]


def window(bad: float) -> np.ndarray:
    w = np.ones((64, 64))
    w[3, 3] = bad
    return w


def band_nodata(tmp: Path) -> Any:
    import rioxarray

    vrt, _ = write_band_nodata_vrt(tmp, (0, 255))
    return apply(rioxarray.open_rasterio(vrt), size=32, stride=24)


def unsorted(tmp: Path) -> Any:
    arr = make_test_scene()
    return apply(arr.isel(x=np.r_[1, 0, 2 : arr.sizes["x"]]))


def irregular(tmp: Path) -> Any:
    arr = make_test_scene()
    x = arr.x.values.copy()
    x[100:] += 3.0
    return apply(arr.assign_coords(x=x))


def two_grids(tmp: Path) -> Any:
    base = make_test_scene()
    swir = xr.DataArray(np.zeros((150, 130)), dims=("y20", "x20"))
    return apply(xr.Dataset({"red": base.sel(band="red", drop=True), "swir": swir}))


def strings(chip: np.ndarray) -> np.ndarray:
    return chip.astype(str)


def fails_late(chip: np.ndarray) -> np.ndarray:
    if chip.max() > 2:
        raise ValueError("bad weights file")
    return chip


def op_raising(tmp: Path) -> Any:
    arr = xr.DataArray(np.zeros((1, 200, 200)), dims=("band", "y", "x"))
    arr[0, 150:, 150:] = 5.0  # the dry run (a chip of ones) passes; the corner chip fails
    return apply(arr, fails_late).compute()


def nan_only(tmp: Path) -> Any:
    arr = xr.DataArray(np.full((1, 200, 200), np.nan), dims=("band", "y", "x"))
    return patchflow.run(arr, ident, store=tmp / "nan.zarr", size=64, stride=48)


def stac_offset_grids(tmp: Path) -> Any:
    """One STAC item whose two 10 m assets sit half a pixel apart: no grid is both of theirs."""
    import json

    import rasterio
    from affine import Affine

    assets = {}
    for name, x0 in (("B04", 740_000.0), ("B08", 740_005.0)):
        transform = Affine(10.0, 0.0, x0, 0.0, -10.0, 4_340_000.0)
        profile = {"driver": "GTiff", "height": 20, "width": 20, "count": 1, "dtype": "uint16"}
        with rasterio.open(
            tmp / f"{name}.tif", "w", crs="EPSG:32610", transform=transform, **profile
        ) as dst:
            dst.write(np.ones((1, 20, 20), np.uint16))
        assets[name] = {
            "href": f"{name}.tif",
            "proj:code": "EPSG:32610",
            "proj:shape": [20, 20],
            "proj:transform": list(transform)[:6],
        }
    item = stac_item("one", assets, "2024-06-01T00:00:00Z")
    (tmp / "item.json").write_text(json.dumps(item))
    return patchflow.open_stac(tmp / "item.json", assets=["B04", "B08"])


def labels(value: int) -> Callable[..., np.ndarray]:
    return lambda chip: np.full(chip[:1].shape, value, np.uint8)


def run(store: Path) -> Any:
    return patchflow.run(make_test_scene(), dn_ndvi, store=store, size=64, stride=48)


def store_exists(tmp: Path) -> Any:
    run(tmp / "out.zarr")
    return run(tmp / "out.zarr")


def store_is_a_file(tmp: Path) -> Any:
    (tmp / "out.zarr").write_text("a file, not a store")
    return run(tmp / "out.zarr")


def store_under_a_file(tmp: Path) -> Any:
    (tmp / "file").write_text("not a directory")
    return run(tmp / "file" / "out.zarr")


def store_read_only(tmp: Path) -> Any:
    ro = tmp / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        return run(ro / "out.zarr")
    finally:
        ro.chmod(stat.S_IRWXU)


def tif(tmp: Path) -> str:
    path = tmp / "scene.tif"
    if not path.exists():
        # band descriptions, as GDAL writes them: the CLI accepts them as band names
        make_test_scene().assign_attrs(long_name=("red", "nir")).rio.to_raster(path)
    return str(path)


def cli(*argv: str) -> Callable[[Path], Any]:
    """Run ``patchflow apply`` in-process (``{tif}``, ``{tmp}`` filled in), letting the
    command's own exception out (``main`` turns it into exit status 2 or 1)."""

    def call(tmp: Path) -> Any:
        values = {"tmp": str(tmp)}
        if any("{tif}" in a for a in argv):
            values["tif"] = tif(tmp)
        if any("{pipeline}" in a for a in argv):
            (tmp / "p.json").write_text('{"op": "NDVI", "params": {"red": 0,')
            values["pipeline"] = str(tmp / "p.json")
        args = build_parser().parse_args(["apply", *(a.format(**values) for a in argv), "-q"])
        return args.func(args)

    return call


# --------------------------------------------------------------------------- the catalogue

CASES: list[Case] = [
    # ---- input geometry
    Case(
        "not-xarray",
        "a bare numpy array instead of an xarray object",
        "`InputTypeError` (a `TypeError`): shows how to wrap it in `xr.DataArray`",
        lambda tmp: patchflow.apply(np.zeros((2, 50, 50)), ident),
        InputTypeError,
        r"needs an xarray DataArray or Dataset, got ndarray.*xr\.DataArray\(arr",
    ),
    Case(
        "no-spatial-dims",
        "no y/x (or lat/lon) dims",
        "`DimensionError`: names the dims found, suggests `rio.set_spatial_dims`",
        planned(obj=xr.DataArray(np.zeros((2, 50, 50)), dims=("band", "row", "col"))),
        DimensionError,
        r"no spatial dimensions.*\('band', 'row', 'col'\).*set_spatial_dims",
    ),
    Case(
        "unsorted-coords",
        "unsorted y or x coords",
        "`DimensionError`: sort first (`obj.sortby('x')`)",
        unsorted,
        DimensionError,
        r"'x' coordinate is not monotonic.*sortby",
    ),
    Case(
        "irregular-coords",
        "irregularly spaced y or x coords",
        "`DimensionError`: resample onto a regular grid (`rio.reproject`)",
        irregular,
        DimensionError,
        "irregularly spaced",
    ),
    Case(
        "dataset-grids",
        "Dataset variables on different grids",
        "`DimensionError`: resample (`rio.reproject_match`) or select variables",
        two_grids,
        DimensionError,
        r"\['swir'\] are not on the .* grid.*reproject_match",
    ),
    Case(
        "over-unknown-dim",
        '`over="time"` on an input without that dim',
        "`DimensionError` listing the input's dims",
        planned(over="time"),
        DimensionError,
        r"over='time'.*not non-spatial dims",
    ),
    Case(
        "band-nodata",
        "`rioxarray.open_rasterio(path)` of a file whose bands have different nodata values "
        "(VRT, ENVI, HFA)",
        "`BandNodataError` naming the file and each band's nodata: open it with `masked=True` "
        "(or `patchflow.io.sources.open_raster`), or pass `input_nodata=` if one value is meant",
        band_nodata,
        BandNodataError,
        r"bands\.vrt each have their own \(band 1: 0, band 2: 255\).*masked=True.*input_nodata=",
    ),
    # ---- grid
    Case(
        "size-wrong-type",
        "`size=(256,)` or `size=25.6`",
        "`ParameterError`: size must be an int or a (y, x) pair",
        planned(size=(64,)),
        ParameterError,
        r"size must be an int or a \(y, x\) pair of ints, got \(64,\)",
    ),
    Case(
        "size-not-positive",
        "`size=0`",
        "`GridError`: size must be positive",
        planned(size=0),
        GridError,
        "size must be positive",
    ),
    Case(
        "stride-not-positive",
        "`stride=-4`",
        "`GridError`: stride must be positive",
        planned(stride=-4),
        GridError,
        "stride must be positive",
    ),
    Case(
        "stride-over-size",
        "`stride > size`",
        "`GridError` naming the gap; `allow_gaps=True` if gaps (nodata) are intended",
        planned(stride=80),
        GridError,
        r"stride 80 > size 64 .* 16-pixel gaps.*allow_gaps=True",
    ),
    Case(
        "chip-over-scene",
        'chip larger than the scene with `boundary="shift"`',
        '`GridError`: smaller chips or `boundary="pad"`',
        planned(obj=make_test_scene((100, 100)), size=128, stride=96),
        GridError,
        r"larger than the scene.*boundary='pad'",
    ),
    Case(
        "unknown-boundary",
        '`boundary="reflect"`',
        "`GridError` listing shift, pad, drop, raise",
        planned(boundary="reflect"),
        GridError,
        r"unknown boundary 'reflect'; valid: 'shift', 'pad', 'drop', 'raise'",
    ),
    Case(
        "chunks-small",
        "`chunks=` smaller than a chip",
        "`PatchflowWarning` (works, slowly): use chunks ≥ the chip",
        planned(size=128, stride=96, chunks=(50, 40)),
        PatchflowWarning,
        r"smaller than the chip.*chunks >= 128",
    ),
    Case(
        "chunks-zero",
        "`chunks=0`",
        "`ParameterError`: block sizes must be positive (or -1 for the whole axis)",
        planned(chunks=0),
        ParameterError,
        r"chunks=0: block sizes must be positive",
    ),
    Case(
        "chunks-negative",
        "`chunks=-5`",
        "`ParameterError`: block sizes must be positive (or -1 for the whole axis)",
        planned(chunks=-5),
        ParameterError,
        r"chunks=-5: block sizes must be positive",
    ),
    Case(
        "scale-not-positive",
        "`scale=0` or negative",
        "`ParameterError`: scale must be positive",
        planned(scale=0),
        ParameterError,
        "scale must be positive, got 0",
    ),
    # ---- windows, merges, policies
    Case(
        "unknown-window",
        '`window="hamming-ish"` (neither ours nor scipy\'s)',
        "`WindowError` listing patchflow's names and scipy's complaint",
        planned(window="hamming-ish"),
        WindowError,
        r"unknown window 'hamming-ish': not one of patchflow's \(boxcar, gaussian, hann",
    ),
    Case(
        "window-shape",
        "window array of the wrong shape",
        "`WindowError` naming both shapes",
        planned(window=np.ones((10, 10))),
        WindowError,
        r"shape \(10, 10\).*chips are \(64, 64\)",
    ),
    Case(
        "window-negative",
        "window array with a negative weight",
        "`WindowError`: weights must be finite and non-negative",
        planned(window=window(-1.0)),
        WindowError,
        "finite and non-negative",
    ),
    Case(
        "window-nan",
        "window array with a NaN weight",
        "`WindowError`: weights must be finite and non-negative",
        planned(window=window(np.nan)),
        WindowError,
        "finite and non-negative",
    ),
    Case(
        "unknown-agg",
        '`agg="medain"`',
        "`ParameterError` listing the aggregations",
        planned(agg="medain"),
        ParameterError,
        r"unknown agg 'medain'; valid names: centre, inverse_variance, max, mean",
    ),
    Case(
        "unknown-pad-mode",
        '`pad_mode="mirror"`',
        "`ParameterError` listing numpy's pad modes",
        planned(boundary="pad", pad_mode="mirror"),
        ParameterError,
        r"unknown pad_mode 'mirror'; valid: constant, reflect, edge",
    ),
    Case(
        "unknown-on-error",
        '`on_error="ignore"`',
        "`ParameterError` listing raise, mask, retry, skip",
        planned(on_error="ignore"),
        ParameterError,
        r"unknown on_error 'ignore'; valid: raise, mask, retry, skip",
    ),
    Case(
        "vote-no-n-classes",
        '`agg="vote"` without `n_classes`',
        "`ParameterError`: vote needs `n_classes=`",
        planned(op=labels(1), agg="vote"),
        ParameterError,
        r"agg='vote' needs n_classes=",
    ),
    # ---- operators
    Case(
        "op-returns-strings",
        "op returning strings/objects",
        "`OperatorError`: ops must return numbers",
        planned(op=strings),
        OperatorError,
        r"dtype <U\d+.*must return numbers",
    ),
    Case(
        "op-changes-shape",
        "op changing the chip's spatial shape",
        "`OperatorError` naming the test chip's shape and what came back",
        planned(op=lambda c: c[..., :-1, :]),
        OperatorError,
        r"returned shape \(2, 63, 64\) for a test chip \(2, 64, 64\)",
    ),
    Case(
        "op-crops-chip",
        "op cropping its chip (a 'valid' convolution: 64 → 60 px)",
        "`OperatorError` naming the chip sizes in and out: pad the output back to the chip "
        "size, or declare `scale=` for a resolution change",
        planned(op=lambda c: c[..., 2:-2, 2:-2]),
        OperatorError,
        r"\(64, 64\) chip to \(60, 60\).*pad its output back.*declare scale=15/16",
    ),
    Case(
        "one-size-op-halves",
        "op built for one chip size returning half of it, no `scale=`",
        "`OperatorError`: a centre crop and a ½ downsampling look the same at one size; "
        "declare `scale=1/2` if it downsamples, pad its output back if it crops",
        planned(op=_one_size_half),
        OperatorError,
        r"fails on a \(128, 128\) chip.*pad its output back.*declare scale=1/2",
    ),
    Case(
        "declared-scale-differs",
        "`scale=0.25` with an op that halves its chip",
        "`OperatorError` naming the declared scale (1/4) and the op's (1/2)",
        planned(op=lambda c: c[..., ::2, ::2], scale=0.25),
        OperatorError,
        r"scale=0\.25 declares 1/4 .*a scale of 1/2",
    ),
    Case(
        "one-pixel-rescaled",
        "a 1-pixel-high scene without a recorded transform, op changing the resolution",
        "`DimensionError`: the pixel size is unknown; record it with `rio.write_transform`",
        planned(
            obj=make_test_scene().isel(y=[0]).rio.write_crs("EPSG:32633"),
            op=lambda c: c.repeat(2, -2).repeat(2, -1),
            size=8,
            stride=6,
            boundary="pad",
        ),
        DimensionError,
        r"1 pixel along 'y'.*rio\.write_transform",
    ),
    Case(
        "op-changes-batch",
        "batched op returning fewer chips than it got",
        "`OperatorError` at compute time naming the chip and the batch length",
        computed(op=patchflow.batched(lambda c: dn_ndvi(c)[:-1] if len(c) > 1 else dn_ndvi(c))),
        OperatorError,
        "batch length",
    ),
    Case(
        "op-overflows-declared-dtype",
        "op returning values outside the `output_dtype=` you declared (70000 for `int16`)",
        "`OperatorError` at compute time naming the values, the dtype's range and "
        "`output_dtype=` (they would wrap around)",
        computed(
            op=lambda c: np.full(c.shape, 70000, np.int32),
            output_dtype="int16",
            output_shape=(2,),
        ),
        OperatorError,
        r"70000.*int16.*output_dtype",
    ),
    Case(
        "op-raises",
        "op raising inside a dask task",
        "`OperatorError` naming chip, pixel window and CRS bounds, chained to the cause",
        op_raising,
        OperatorError,
        r"chip .*bad weights file",
    ),
    Case(
        "vote-labels-range",
        '`agg="vote"` with labels ≥ `n_classes`',
        "`OperatorError` at compute time: labels outside [0, n_classes)",
        computed(op=labels(7), agg="vote", n_classes=3),
        OperatorError,
        r"label values in \[7, 7\] outside \[0, n_classes=3\)",
    ),
    Case(
        "nan-only",
        "NaN-only scene, or an op returning NaN everywhere",
        "`PatchflowWarning` from `run`: no valid output pixel (the result is all NaN)",
        nan_only,
        PatchflowWarning,
        "no valid output pixel",
    ),
    Case(
        "composite-no-over",
        '`Composite()` on a time stack without `over="time"`',
        '`ParameterError` at call time: pass `over="time"`',
        planned(
            obj=xr.DataArray(np.ones((3, 2, 64, 64)), dims=("time", "band", "y", "x")),
            op=Composite(),
            size=32,
            stride=24,
        ),
        ParameterError,
        r"reduces over time.*Pass over='time'",
    ),
    Case(
        "stac-offset-grids",
        "`open_stac` on assets whose pixel grids are offset from each other by a fraction of "
        "a pixel (or `snap_bounds=True` off their shared grid)",
        "`ResampledGridWarning`: their values are resampled, not read as they are (nearest "
        "moves them by up to half a pixel); names the assets and how to read them exactly",
        stac_offset_grids,
        ResampledGridWarning,
        r"'B08' of item 'one' has its pixel grid offset by \(5, 0\).*offset from one another",
    ),
    # ---- bands (Python: 0-based positions or names)
    Case(
        "band-name-missing",
        '`NDVI(red="red", nir="swir")`, no band "swir"',
        "`ParameterError` at call time listing the input's bands",
        planned(op=NDVI(red="red", nir="swir")),
        ParameterError,
        r"band 'swir' not found among the input's bands \['red', 'nir'\]",
    ),
    Case(
        "band-name-typo",
        '`NDVI(red="Red", nir="nir")`',
        "`ParameterError`: did you mean 'red'?",
        planned(op=NDVI(red="Red", nir="nir")),
        ParameterError,
        r"band 'Red' not found.*did you mean 'red'\?",
    ),
    Case(
        "band-names-unlabelled",
        "band names on an input without band labels",
        "`ParameterError` at call time: use 0-based positions or `assign_coords(band=...)`",
        planned(obj=make_test_scene().drop_vars("band"), op=NDVI(red="red", nir="nir")),
        ParameterError,
        r"addresses bands by name, but the input's 2 bands have no names.*assign_coords",
    ),
    Case(
        "band-index-range",
        "`NDVI(red=0, nir=5)` on 2 bands",
        "`ParameterError`: the input has 2 bands, at 0-based positions 0..1",
        planned(op=NDVI(red=0, nir=5)),
        ParameterError,
        r"band index 5 is out of range: the input has 2 bands .* 0-based positions 0\.\.1",
    ),
    Case(
        "band-index-1-based",
        "`SelectBands([2])` on 2 bands (GDAL-style counting)",
        "`ParameterError`: band 2 looks like a GDAL-style 1-based number; use 1",
        planned(obj=make_test_scene().drop_vars("band"), op=SelectBands([2])),
        ParameterError,
        r"band 2 looks like a GDAL-style 1-based number; Python positions are 0-based: use 1",
    ),
    # ---- keywords from other libraries, typos
    Case(
        "kw-overlap",
        "`overlap=0.25` (tiler/MONAI)",
        "`ParameterError`: `stride=192` (overlap=0.25 with size=256)",
        keywords(size=256, overlap=0.25),
        ParameterError,
        r"'overlap' comes from tiler/MONAI.*overlap=0\.25 with size=256 → stride=192",
    ),
    Case(
        "kw-roi-size",
        '`roi_size=(128, 128)`, `mode="gaussian"` (MONAI)',
        '`ParameterError`: `size=128`, `window="gaussian"` with its sigma',
        keywords(roi_size=(128, 128), mode="gaussian"),
        ParameterError,
        r"2 unknown keywords.*roi_size=\(128, 128\) → size=128.*window='gaussian'",
    ),
    Case(
        "kw-sw-batch-size",
        "`sw_batch_size=4` (MONAI)",
        "`ParameterError`: `batch_size=4`",
        keywords(sw_batch_size=4),
        ParameterError,
        r"sw_batch_size=4 → batch_size=4",
    ),
    Case(
        "kw-tile-shape",
        "`tile_shape=(2, 128, 128)` (tiler)",
        "`ParameterError`: `size=128` (bands are not part of the chip size)",
        keywords(tile_shape=(2, 128, 128)),
        ParameterError,
        r"tile_shape=\(2, 128, 128\) → size=128",
    ),
    Case(
        "kw-xbatcher",
        "`input_dims={'x': 256, 'y': 256}`, `input_overlap={'x': 64, 'y': 64}` (xbatcher)",
        "`ParameterError`: `size=256`, `stride=192`",
        keywords(input_dims={"x": 256, "y": 256}, input_overlap={"x": 64, "y": 64}),
        ParameterError,
        r"→ size=256.*with size=256 \(from input_dims\) → stride=192",
    ),
    Case(
        "kw-patch-size",
        "`patch_size=128`, `step=96` (patchify)",
        "`ParameterError`: `size=128`, `stride=96`",
        keywords(patch_size=128, step=96),
        ParameterError,
        r"patch_size=128 → size=128.*step=96 → stride=96",
    ),
    Case(
        "kw-window-shape",
        "`window_shape=(64, 64)` (skimage)",
        "`ParameterError`: `size=64`",
        keywords(window_shape=(64, 64)),
        ParameterError,
        r"window_shape=\(64, 64\) → size=64",
    ),
    Case(
        "kw-typo",
        "`strid=96` (a typo)",
        "`ParameterError`: did you mean 'stride'?",
        keywords(strid=96),
        ParameterError,
        r"unknown keyword: 'strid'; did you mean 'stride'\?",
    ),
    # ---- stores
    Case(
        "store-exists",
        "output store exists",
        '`StoreExistsError`: `overwrite=True`, `resume=True` or `mode="accumulate"`',
        store_exists,
        StoreExistsError,
        "already exists; pass overwrite=True",
    ),
    Case(
        "store-var-not-a-name",
        '`var="a/b"` (or `..`, or a name starting `_patchflow`) for a store\'s result',
        "`ParameterError` naming the name and the rule, before anything is written",
        lambda tmp: patchflow.run(
            make_test_scene(), ident, store=tmp / "out.zarr", var="a/b", size=64, stride=48
        ),
        ParameterError,
        r"var='a/b': a result variable name must be one plain name",
    ),
    Case(
        "store-is-a-file",
        "`store=` names an existing file",
        "`StoreError`: the path is a file, not a directory; write elsewhere or remove it",
        store_is_a_file,
        StoreError,
        r"out\.zarr' is a file, not a directory",
    ),
    Case(
        "store-under-a-file",
        "`store=` path below a file (impossible path)",
        "`StoreError`: cannot create the output store; choose a writable location",
        store_under_a_file,
        StoreError,
        r"cannot create the output store .*out\.zarr",
    ),
    Case(
        "store-read-only",
        "`store=` in a read-only directory",
        "`StoreError`: permission denied",
        store_read_only,
        StoreError,
        "permission denied",
        skip="root ignores directory permissions" if IS_ROOT else None,
    ),
    # ---- operator configs
    Case(
        "config-bad-json",
        "pipeline JSON that does not parse",
        "`ConfigError`: not valid JSON (with the position)",
        lambda tmp: from_json('{"op": "NDVI", "params": {"red": 0,'),
        ConfigError,
        r"not valid JSON: .*line 1 column",
    ),
    Case(
        "config-unknown-op",
        "config naming an unregistered operator",
        "`ConfigError` listing the registered operators",
        lambda tmp: from_config({"op": "NoSuchOp"}),
        ConfigError,
        r"unknown operator 'NoSuchOp'.*registered operators: .*NDVI",
    ),
    Case(
        "config-bad-params",
        "config with parameters the operator rejects",
        "`ConfigError`: invalid params, with the operator's reason",
        lambda tmp: from_config({"op": "NDVI", "params": {"red": 0}}),
        ConfigError,
        r"invalid params for NDVI: .*nir",
    ),
    # ---- command line (GDAL-style 1-based band numbers)
    Case(
        "cli-output-suffix",
        "`patchflow apply in.tif out.png`",
        "`UsageError` (exit 2): OUTPUT must end in .zarr, .tif or .tiff",
        cli("{tmp}/in.tif", "{tmp}/out.png"),
        UsageError,
        "OUTPUT must end in .zarr",
    ),
    Case(
        "cli-stride-over-size",
        "`--stride` larger than `--size`",
        "`UsageError` (exit 2)",
        cli("{tmp}/in.tif", "{tmp}/o.zarr", "--size", "128", "--stride", "200"),
        UsageError,
        "--stride 200 is larger than --size 128",
    ),
    Case(
        "cli-vote",
        "`--agg vote` without `--n-classes`",
        "`UsageError` (exit 2)",
        cli("{tmp}/in.tif", "{tmp}/o.zarr", "--agg", "vote"),
        UsageError,
        "--agg vote needs --n-classes",
    ),
    Case(
        "cli-missing-input",
        "INPUT file that does not exist",
        "`InputReadError` (exit 1): input not found",
        cli("{tmp}/nope.tif", "{tmp}/o.zarr"),
        InputReadError,
        "input not found",
    ),
    Case(
        "cli-band-zero",
        "`--red 0` (a Python position)",
        "`UsageError` (exit 2): CLI band numbers are 1-based like GDAL's",
        cli("{tif}", "{tmp}/o.zarr", "--red", "0"),
        UsageError,
        r"band 0 out of range: .* numbered 1\.\.2; band numbers are 1-based like GDAL's",
    ),
    Case(
        "cli-band-range",
        "`--nir 3` on a 2-band input",
        "`UsageError` (exit 2): the input has 2 bands, numbered 1..2",
        cli("{tif}", "{tmp}/o.zarr", "--nir", "3"),
        UsageError,
        r"argument --nir: band 3 out of range: the input has 2 bands, numbered 1\.\.2",
    ),
    Case(
        "cli-band-name",
        "`--nir NIR` (no such band name)",
        "`UsageError` (exit 2) listing the band names, with the closest",
        cli("{tif}", "{tmp}/o.zarr", "--nir", "NIR"),
        UsageError,
        r"no band named 'NIR'.*did you mean 'nir'\?",
    ),
    Case(
        "cli-bad-pipeline",
        "`--pipeline` file with bad JSON",
        "`CommandError` (exit 1): invalid pipeline, with the reason",
        cli("{tif}", "{tmp}/o.zarr", "--pipeline", "{pipeline}"),
        CommandError,
        r"invalid pipeline .*not valid JSON",
    ),
]


def _param(case: Case) -> Any:
    marks: list[Any] = []
    if case.skip:
        marks.append(pytest.mark.skip(reason=case.skip))
    return pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_catalogue(case: Case, tmp_path: Path) -> None:
    if issubclass(case.error, Warning):
        with pytest.warns(case.error, match=case.match):
            case.call(tmp_path)
        return
    with pytest.raises(case.error, match=case.match) as info:
        case.call(tmp_path)
    assert isinstance(info.value, PatchflowError), "every bad input gets a PatchflowError"


def test_the_list_itself() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 30
    for case in CASES:
        assert issubclass(case.error, PatchflowError | PatchflowWarning), case.id
        assert f"`{case.error.__name__}`" in case.get, case.id  # the table names the class


def readme_rows() -> list[tuple[str, str]]:
    text = README.read_text(encoding="utf-8")
    assert SECTION in text
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    cells = [tuple(c.strip() for c in row.strip().strip("|").split(" | ")) for row in rows]
    assert cells and cells[0] == ("you did", "you get")
    assert all(len(c) == 2 for c in cells), [c for c in cells if len(c) != 2]
    return [(c[0], c[1]) for c in cells[1:]]


def test_readme_table_is_the_case_list() -> None:
    assert readme_rows() == [(c.did, c.get) for c in CASES]


def readme_table() -> str:
    """The README table for ``CASES`` (paste it into the troubleshooting section)."""
    lines = ["| you did | you get |", "|---|---|"]
    return "\n".join(lines + [f"| {c.did} | {c.get} |" for c in CASES])
