"""Shared test fixtures: synthetic scenes, a counting scheduler, and real-world-shaped
raster files.

Synthetic scenes (:func:`patchflow.io.synthetic.make_scene`: 2-band red/NIR uint16 DN,
EPSG:32610, every pixel a pure function of its position and the seed):

``make_test_scene``     the factory: ``make_test_scene((h, w), seed=…, chunks=…, dtype=…,
                        persist=…)``; numpy-backed (``chunks=None``) unless chunks are given.
                        A plain function for module-level case lists (``from conftest
                        import make_test_scene``); tests and fixtures use ``scene_factory``.
``scene_factory``       the same factory as a (session-scoped) fixture, so module-scoped
                        fixtures can build their scene from it.
``mode_of``             the numpy reference of ``agg="mode"`` over a stack (a plain
                        function, like ``make_test_scene``).
``small_scene``         ``make_test_scene()``: the 300 × 260, seed 0, numpy-backed scene of
                        the error and bad-input tests, built fresh for each test.

``dask_computes``       a context manager factory: ``with dask_computes(max_computes=0):``
                        raises if building a graph inside it computes anything (as flox's
                        ``raise_if_dask_computes``) and counts the computes it allows.

Real-world raster fixtures: small files shaped like the ones users hand to patchflow.

Every fixture writes one file with rioxarray/rasterio (or xarray for NetCDF) into a
session temp dir and returns a :class:`RealRaster`: the path plus what a correct reader
must see — the raw values per band, the nodata value, the per-band validity mask (GDAL
semantics: nodata is per band), the CRS and the affine transform. Each fixture reads its
file back with plain rasterio/xarray (no patchflow) and checks it against that reference,
so a test failure downstream is about patchflow, not about the file.

Files (all small: a few hundred pixels a side, internally tiled 128 or 256):

``cog_uint8_4326``      4-band uint8 COG, EPSG:4326, no nodata, many saturated 255s
``cog_rgb_3857``        RGB uint8 COG, EPSG:3857, nodata 0: a rotated valid footprint in
                        a 0 collar, plus pixels where only ONE band is 0 inside it
``tif_float_2227``      float32 GeoTIFF, EPSG:2227 (California zone 3, US survey feet),
                        nodata -99999 in a block
``cog_dem_int16``       int16 DEM, EPSG:32636, -420 … 3000 m (Dead-Sea-like), nodata
                        -32768 in a few pixels
``nc_s2``               Sentinel-2-like NetCDF: B04, B08 uint16 DN, EPSG:32633, _FillValue
                        0 with a few 0 pixels (some in one band only)
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
from affine import Affine
from rasterio.crs import CRS

from patchflow.io.synthetic import make_scene


@pytest.fixture(autouse=True)
def _environment_restored() -> Iterator[None]:
    """Every test leaves ``os.environ`` as it found it.

    ``distributed.LocalCluster`` sets ``OMP_NUM_THREADS=1`` (and friends) in the calling
    process for good; every later subprocess (the CLI tests') then runs torch on one
    thread, whose conv kernels round differently from the two-thread run they are
    compared with.
    """
    saved = dict(os.environ)
    yield
    if dict(os.environ) != saved:
        os.environ.clear()
        os.environ.update(saved)


# --------------------------------------------------------------------------- synthetic scenes

#: the small scene of the error and bad-input tests: room for 64 px chips at stride 48
SMALL_SHAPE = (300, 260)


def make_test_scene(
    shape: tuple[int, int] = SMALL_SHAPE,
    *,
    seed: int = 0,
    chunks: int | tuple[int, int] | None = None,
    dtype: Any = None,
    persist: bool = False,
) -> xr.DataArray:
    """A synthetic ``(band: red/nir, y, x)`` scene with CRS, transform and band names.

    ``make_scene(shape, seed=seed, chunks=chunks)``, then ``astype(dtype)`` if a dtype is
    given and ``persist()`` if asked (dask-backed scenes only). ``chunks=None`` (the
    default here, unlike ``make_scene``'s) gives a numpy-backed scene, computed now; the
    values never depend on the chunks.
    """
    scene = make_scene(shape, seed=seed, chunks=chunks)
    if dtype is not None:
        scene = scene.astype(dtype)
    if persist:
        scene = scene.persist()
    return scene


def mode_of(stack: np.ndarray) -> np.ndarray:
    """The numpy reference of ``agg="mode"``: per element, the most frequent finite value
    along axis 0 of ``stack`` (NaN = no value; a tie goes to the smaller value), 0 where
    there is none. A plain function (``from conftest import mode_of``)."""
    best, best_n = np.zeros(stack.shape[1:]), np.zeros(stack.shape[1:])
    for k in range(len(stack)):
        here = np.isfinite(stack[k])
        times = (stack == stack[k]).sum(axis=0)
        better = here & ((times > best_n) | ((times == best_n) & (stack[k] < best)))
        best, best_n = np.where(better, stack[k], best), np.where(better, times, best_n)
    return best


@pytest.fixture(scope="session")
def scene_factory() -> Callable[..., xr.DataArray]:
    """:func:`make_test_scene`, for tests and fixtures (of any scope)."""
    return make_test_scene


@pytest.fixture
def small_scene() -> xr.DataArray:
    """``make_test_scene()``: 300 × 260, seed 0, numpy-backed; a fresh one per test."""
    return make_test_scene()


# --------------------------------------------------------------------------- dask computes


class DaskComputes:
    """Counts dask computes inside a ``with`` block, failing past ``max_computes``."""

    def __init__(self, max_computes: int) -> None:
        self.max_computes = max_computes
        self.calls: list[Any] = []

    def get(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        import dask

        self.calls.append(keys)
        if len(self.calls) > self.max_computes:
            raise AssertionError(
                f"dask computed {len(self.calls)} time(s), more than the {self.max_computes} "
                "allowed: building a graph must compute nothing"
            )
        return dask.local.get_sync(dsk, keys, **kwargs)


@pytest.fixture
def dask_computes() -> Callable[..., contextlib.AbstractContextManager[DaskComputes]]:
    """``with dask_computes(max_computes=0) as counter:`` — see :class:`DaskComputes`."""
    import dask

    @contextlib.contextmanager
    def check(max_computes: int = 0) -> Iterator[DaskComputes]:
        counter = DaskComputes(max_computes)
        with dask.config.set(scheduler=counter.get):
            yield counter

    return check


@dataclass(frozen=True)
class RealRaster:
    """A file on disk and what a faithful reader must get back from it."""

    path: Path
    #: raw values as written, ``(bands, rows, cols)`` (for NetCDF: variables stacked)
    data: np.ndarray
    #: the declared nodata (``None``: none declared, every pixel is valid)
    nodata: float | None
    crs: CRS
    transform: Affine
    #: band labels: GeoTIFF descriptions, or the NetCDF variable names
    bands: tuple[str, ...]
    #: how the file was written: "COG", "GTiff" or "netcdf:<engine>"
    driver: str
    #: per-variable attrs (NetCDF only), for the "no input-only attrs" checks
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def valid(self) -> np.ndarray:
        """Per-band validity ``(bands, rows, cols)``: GDAL nodata is per band."""
        if self.nodata is None:
            return np.ones(self.data.shape, bool)
        return self.data != self.nodata

    @property
    def reference(self) -> np.ndarray:
        """The data as float64 with NaN exactly where the band is nodata."""
        return np.where(self.valid, self.data.astype(np.float64), np.nan)

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape[-2], self.data.shape[-1]


def _coords(transform: Affine, rows: int, cols: int) -> dict[str, np.ndarray]:
    """Pixel-centre coordinates, as rioxarray builds them."""
    x = transform.c + transform.a * (np.arange(cols) + 0.5)
    y = transform.f + transform.e * (np.arange(rows) + 0.5)
    return {"y": y, "x": x}


def write_band_tif(
    path: Path | str, band: np.ndarray, transform: Affine, crs: str, *, nodata: Any = None
) -> None:
    """One 2-D band as a tiled GeoTIFF written with rioxarray (a STAC asset, say)."""
    h, w = band.shape
    da = xr.DataArray(
        band[None], dims=("band", "y", "x"), coords={"band": [1], **_coords(transform, h, w)}
    )
    da = da.rio.write_crs(crs).rio.write_transform(transform)
    if nodata is not None:
        da = da.rio.write_nodata(nodata)
    da.rio.to_raster(path, tiled=True, blockxsize=128, blockysize=128)


def stac_item(
    item_id: str, assets: dict[str, Any], datetime: str = "2024-06-01T00:00:00Z"
) -> dict[str, Any]:
    """A minimal STAC Item (no geometry) holding ``assets``, as stackstac reads it."""
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": item_id,
        "geometry": None,
        "properties": {"datetime": datetime},
        "links": [],
        "assets": assets,
    }


def write_band_nodata_vrt(
    directory: Path | str,
    nodatas: tuple[float | None, ...] = (0, 255),
    *,
    dtype: Any = np.uint8,
    shape: tuple[int, int] = (90, 110),
    seed: int = 0,
) -> tuple[str, np.ndarray]:
    """A GeoTIFF without nodata and a VRT over it giving band ``k`` the nodata
    ``nodatas[k]`` (``None``: none), as VRT/ENVI/HFA files have them; returns the VRT's
    path and the raw values ``(bands, rows, cols)``.

    Every band holds each band's nodata value, so a reader taking one value for all
    bands masks real pixels of some band and keeps nodata pixels of another. A plain
    function (``from conftest import write_band_nodata_vrt``).
    """
    import xml.etree.ElementTree as ET

    from rasterio.dtypes import _gdal_typename

    directory = Path(directory)
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    lo, hi = (np.iinfo(dt).min, np.iinfo(dt).max) if dt.kind in "iu" else (-50, 50)
    data = rng.integers(lo, hi, (len(nodatas), *shape), endpoint=True).astype(dt)
    values = [v for v in nodatas if v is not None]
    for k in range(len(nodatas)):
        for j, v in enumerate(values):  # a block of each band's nodata in every band
            data[k, 10 * j : 10 * j + 6, 5 + 17 * k : 40 + 17 * k] = v
        if values:
            data[k, rng.random(shape) < 0.05] = values[k % len(values)]
    transform = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_200_000.0)
    tif = directory / "bands.tif"
    profile = {"driver": "GTiff", "width": shape[1], "height": shape[0], "dtype": dt.name}
    with rasterio.open(
        tif, "w", count=len(nodatas), crs="EPSG:32633", transform=transform, **profile
    ) as dst:
        dst.write(data)
    root = ET.Element("VRTDataset", rasterXSize=str(shape[1]), rasterYSize=str(shape[0]))
    ET.SubElement(root, "SRS").text = CRS.from_epsg(32633).to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(v) for v in transform.to_gdal())
    for k, nodata in enumerate(nodatas, start=1):
        node = ET.SubElement(root, "VRTRasterBand", dataType=_gdal_typename(dt.name), band=str(k))
        if nodata is not None:
            ET.SubElement(node, "NoDataValue").text = repr(nodata)
        source = ET.SubElement(node, "SimpleSource")
        ET.SubElement(source, "SourceFilename", relativeToVRT="0").text = str(tif)
        ET.SubElement(source, "SourceBand").text = str(k)
    vrt = directory / "bands.vrt"
    vrt.write_text(ET.tostring(root, encoding="unicode"))
    with rasterio.open(vrt) as src:  # the file says what it should, before any patchflow
        got = [None if v is None else float(v) for v in src.nodatavals]
        want = [None if v is None else float(v) for v in nodatas]
        np.testing.assert_array_equal(np.array(got, float), np.array(want, float))
        assert [v is None for v in got] == [v is None for v in want]
        np.testing.assert_array_equal(src.read(), data)
    return str(vrt), data


def band_nodata_reference(data: np.ndarray, nodatas: tuple[float | None, ...]) -> np.ndarray:
    """``data`` as float64, NaN exactly where band ``k`` equals ``nodatas[k]``."""
    out = data.astype(np.float64)
    for k, nodata in enumerate(nodatas):
        if nodata is not None:
            out[k][data[k] == nodata] = np.nan
    return out


def _to_xarray(
    data: np.ndarray,
    transform: Affine,
    crs: CRS,
    nodata: float | None,
    bands: tuple[str, ...],
) -> xr.DataArray:
    rows, cols = data.shape[-2:]
    arr = xr.DataArray(
        data,
        dims=("band", "y", "x"),
        coords={"band": np.arange(1, data.shape[0] + 1), **_coords(transform, rows, cols)},
    )
    arr = arr.rio.write_crs(crs).rio.write_transform(transform)
    if nodata is not None:
        arr = arr.rio.write_nodata(nodata, encoded=False)
    arr.attrs["long_name"] = bands  # rioxarray writes these as GDAL band descriptions
    return arr


def _check_tif(raster: RealRaster, block: int) -> None:
    """The file read back with plain rasterio equals the reference."""
    with rasterio.open(raster.path) as src:
        assert src.count == raster.data.shape[0]
        assert src.dtypes[0] == raster.data.dtype.name
        assert src.crs == raster.crs, (src.crs, raster.crs)
        assert src.transform.almost_equals(raster.transform, precision=1e-9)
        assert src.nodata == raster.nodata, (src.nodata, raster.nodata)
        assert src.block_shapes[0] == (block, block), src.block_shapes
        assert src.descriptions == raster.bands
        if raster.driver == "COG":
            assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        np.testing.assert_array_equal(src.read(), raster.data)
        # GDAL's own per-band mask agrees with the reference validity
        masks = np.stack([src.read_masks(b) for b in range(1, src.count + 1)]) > 0
        np.testing.assert_array_equal(masks, raster.valid)


def _write_tif(
    path: Path,
    data: np.ndarray,
    *,
    transform: Affine,
    crs: CRS,
    nodata: float | None,
    bands: tuple[str, ...],
    driver: str,
    block: int,
) -> RealRaster:
    arr = _to_xarray(data, transform, crs, nodata, bands)
    if driver == "COG":
        arr.rio.to_raster(path, driver="COG", blocksize=block, compress="DEFLATE")
    else:
        arr.rio.to_raster(
            path, driver="GTiff", tiled=True, blockxsize=block, blockysize=block, compress="LZW"
        )
    raster = RealRaster(path, data, nodata, crs, transform, bands, driver)
    _check_tif(raster, block)
    return raster


# --------------------------------------------------------------------------- 1. uint8 4326


@pytest.fixture(scope="session")
def cog_uint8_4326(tmp_path_factory: pytest.TempPathFactory) -> RealRaster:
    """4-band uint8 COG in EPSG:4326, no nodata declared; 0 and 255 are real values.

    A saturated "cloud" (all bands 255), saturated pixels in single bands, and true zeros
    (deep shadow) — none of them nodata.
    """
    rng = np.random.default_rng(1)
    rows, cols = 520, 600
    data = rng.integers(0, 256, size=(4, rows, cols), dtype=np.uint8)
    yy, xx = np.mgrid[0:rows, 0:cols]
    cloud = (yy - 250) ** 2 / 90**2 + (xx - 300) ** 2 / 140**2 < 1  # spans chunk edges
    data[:, cloud] = 255
    data[2, rng.random((rows, cols)) < 0.08] = 255  # saturated red, 8 %
    data[3, 400:470, 20:590] = 255  # saturated NIR strip
    data[:, 0:12, 0:600] = 0  # a black (but valid) edge row block
    assert (data == 255).mean() > 0.15
    transform = Affine(1e-4, 0.0, 10.25, 0.0, -1e-4, 46.5)  # ≈ 11 m pixels in the Alps
    return _write_tif(
        tmp_path_factory.mktemp("uint8_4326") / "bands4.tif",
        data,
        transform=transform,
        crs=CRS.from_epsg(4326),
        nodata=None,
        bands=("blue", "green", "red", "nir"),
        driver="COG",
        block=256,
    )


# --------------------------------------------------------------------------- 2. RGB 3857


def _rotated_footprint(rows: int, cols: int) -> np.ndarray:
    """A rectangle rotated by 17° inside the frame: the valid area of a warped scene."""
    yy, xx = np.mgrid[0:rows, 0:cols] + 0.5
    cy, cx = rows / 2, cols / 2
    a = math.radians(17)
    u = (xx - cx) * math.cos(a) + (yy - cy) * math.sin(a)
    v = -(xx - cx) * math.sin(a) + (yy - cy) * math.cos(a)
    return (np.abs(u) < cols * 0.36) & (np.abs(v) < rows * 0.34)


@pytest.fixture(scope="session")
def cog_rgb_3857(tmp_path_factory: pytest.TempPathFactory) -> RealRaster:
    """RGB uint8 COG in EPSG:3857, nodata 0: a rotated valid footprint in a 0 collar.

    Inside the footprint values are 1…255 (many 255), except a few pixels where exactly
    one band is 0: GDAL nodata is per band, so those pixels stay valid in the other bands.
    """
    rng = np.random.default_rng(2)
    rows, cols = 480, 640
    inside = _rotated_footprint(rows, cols)
    data = rng.integers(1, 256, size=(3, rows, cols), dtype=np.uint8)
    data[:, 200:230, 250:290] = 255  # saturated roof, valid
    data[:, ~inside] = 0
    # one band 0 inside the footprint, at chunk/chip edges and in the interior
    single = {
        0: [(240, 320), (255, 256), (256, 255), (300, 400)],
        1: [(128, 330), (191, 192), (240, 321), (350, 200), (256, 256)],
        2: [(200, 300), (300, 383), (383, 300)],
    }
    for band, pixels in single.items():
        for r, c in pixels:
            assert inside[r, c]
            data[band, r, c] = 0
    partial = (data == 0).any(0) & ~(data == 0).all(0)
    assert partial.sum() == sum(len(p) for p in single.values())
    transform = Affine(30.0, 0.0, 1_113_194.9079327357, 0.0, -30.0, 6_106_854.834885074)
    return _write_tif(
        tmp_path_factory.mktemp("rgb_3857") / "rgb.tif",
        data,
        transform=transform,
        crs=CRS.from_epsg(3857),
        nodata=0,
        bands=("red", "green", "blue"),
        driver="COG",
        block=128,
    )


# --------------------------------------------------------------------------- 3. float32 2227


@pytest.fixture(scope="session")
def tif_float_2227(tmp_path_factory: pytest.TempPathFactory) -> RealRaster:
    """float32 GeoTIFF (tiled 128) in EPSG:2227, feet; nodata -99999 in a block."""
    rng = np.random.default_rng(3)
    rows, cols = 400, 500
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    surface = 420.0 + 180.0 * np.sin(yy / 37.0) * np.cos(xx / 53.0) + rng.normal(0, 3, (rows, cols))
    data = surface.astype(np.float32)[None]
    data[0, 150:210, 230:300] = -99999  # spans the 256 chunk edge in x
    data[0, 399, 499] = -99999  # the last pixel
    transform = Affine(3.0, 0.0, 6_010_001.5, 0.0, -3.0, 2_119_998.25)
    return _write_tif(
        tmp_path_factory.mktemp("float_2227") / "surface_ft.tif",
        data,
        transform=transform,
        crs=CRS.from_epsg(2227),
        nodata=-99999.0,
        bands=("elevation_ft",),
        driver="GTiff",
        block=128,
    )


# --------------------------------------------------------------------------- 4. int16 DEM


@pytest.fixture(scope="session")
def cog_dem_int16(tmp_path_factory: pytest.TempPathFactory) -> RealRaster:
    """int16 DEM COG in EPSG:32636: -420 m (a Dead-Sea basin) … 3000 m; -32768 holes."""
    rows, cols = 450, 350
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    basin = -420.0 + 3420.0 * np.clip(np.hypot(yy - 260, (xx - 150) * 1.3) / 300.0, 0, 1) ** 1.5
    ridge = 35.0 * np.sin(xx / 11.0) * np.cos(yy / 17.0)
    dem = np.clip(np.rint(basin + ridge), -420, 3000).astype(np.int16)
    dem[260, 150] = -420  # the lowest point
    dem[0, 0] = 3000
    holes = [(10, 10), (128, 128), (255, 256), (256, 255), (260, 151), (449, 349)]
    for r, c in holes:
        dem[r, c] = -32768
    dem[300:304, 90:95] = -32768  # a small void
    assert dem[dem != -32768].min() == -420 and dem.max() == 3000
    assert (dem[dem != -32768] < 0).sum() > 1000
    transform = Affine(30.0, 0.0, 735_015.0, 0.0, -30.0, 3_520_005.0)
    return _write_tif(
        tmp_path_factory.mktemp("dem_int16") / "dem.tif",
        dem[None],
        transform=transform,
        crs=CRS.from_epsg(32636),
        nodata=-32768,
        bands=("elevation",),
        driver="COG",
        block=128,
    )


# --------------------------------------------------------------------------- 5. S2 NetCDF


@functools.cache
def netcdf_engine() -> str:
    """The best NetCDF writer that works here: NetCDF4 (netCDF4 or h5netcdf + h5py: uint16
    on disk) if one does, else scipy (NetCDF3, where xarray stores uint16 as a signed int)."""
    probe = xr.Dataset({"a": (("y", "x"), np.zeros((2, 2), np.uint16))})
    for engine in ("netcdf4", "h5netcdf"):
        try:
            probe.to_netcdf(engine=engine)  # in memory: raises if the engine is unusable
        except Exception:  # not installed, or installed without its HDF5 binding
            continue
        return engine
    return "scipy"


@pytest.fixture(scope="session")
def nc_s2(tmp_path_factory: pytest.TempPathFactory) -> RealRaster:
    """Sentinel-2-like NetCDF: B04 (red) and B08 (NIR) uint16 DN, 10 m, EPSG:32633.

    Written as a user would: ``rio.write_crs`` then ``to_netcdf``, ``_FillValue`` 0 and
    rioxarray nodata 0 on each band; a few 0 pixels, some in one band only.
    """
    rng = np.random.default_rng(5)
    rows, cols = 384, 416
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    field_ = (np.sin(yy / 23.0) * np.cos(xx / 31.0) > 0).astype(np.float64)
    red = np.rint(900 + 600 * (1 - field_) + rng.normal(0, 40, (rows, cols)))
    nir = np.rint(1800 + 2600 * field_ + rng.normal(0, 60, (rows, cols)))
    b04 = np.clip(red, 1, 10000).astype(np.uint16)
    b08 = np.clip(nir, 1, 10000).astype(np.uint16)
    b04[0, 0] = b08[0, 0] = 0  # both
    b04[100:104, 250:262] = b08[100:104, 250:262] = 0  # a small no-data patch in both
    for r, c in [(50, 60), (191, 192), (256, 130)]:
        b04[r, c] = 0  # red only
    for r, c in [(70, 300), (192, 191), (383, 415)]:
        b08[r, c] = 0  # NIR only
    b08[17, 17] = 10000  # saturated, valid
    transform = Affine(10.0, 0.0, 399_960.0, 0.0, -10.0, 5_300_040.0)
    crs = CRS.from_epsg(32633)
    attrs = {
        "B04": {"long_name": "B04 red, 665 nm", "units": "DN"},
        "B08": {"long_name": "B08 NIR, 842 nm", "units": "DN"},
    }
    ds = xr.Dataset(
        {
            "B04": (("y", "x"), b04, attrs["B04"]),
            "B08": (("y", "x"), b08, attrs["B08"]),
        },
        coords=_coords(transform, rows, cols),
        attrs={"title": "S2 L1C-like subset", "processing_baseline": "05.10"},
    )
    ds = ds.rio.write_crs(crs).rio.write_transform(transform)
    for name in ("B04", "B08"):
        ds[name] = ds[name].rio.write_nodata(0, encoded=True)
        ds[name].encoding["_FillValue"] = np.uint16(0)
    engine = netcdf_engine()
    path = tmp_path_factory.mktemp("s2_nc") / "s2_l1c.nc"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy: uint16 stored as int32 (NetCDF3)
        ds.to_netcdf(path, engine=engine)
    data = np.stack([b04, b08])
    raster = RealRaster(
        path, data, 0, crs, transform, ("B04", "B08"), f"netcdf:{engine}", attrs=attrs
    )
    # read back with plain xarray + rioxarray, no patchflow
    with xr.open_dataset(path, decode_coords="all", mask_and_scale=False) as back:
        for k, name in enumerate(raster.bands):
            var = back[name]
            np.testing.assert_array_equal(var.values, data[k])
            assert var.rio.nodata == 0
            assert var.rio.crs == crs
            assert np.allclose(tuple(var.rio.transform()), tuple(transform), rtol=1e-12)
    with xr.open_dataset(path, decode_coords="all") as back:
        for k, name in enumerate(raster.bands):
            np.testing.assert_array_equal(back[name].values, raster.reference[k])
    return raster
