"""Previews of large scenes (issue 15): thumbnails from COG overviews instead of decimated
full-resolution reads, a stretch over valid pixels only, and true-colour band order.

Every raster here is a real GeoTIFF/COG written with rioxarray and read back through
patchflow's own :func:`patchflow.io.sources.open_raster`, as ``patchflow grid --png`` does.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
import rasterio
import rioxarray
import xarray as xr
from affine import Affine

from patchflow.errors import ParameterError
from patchflow.io.sources import open_overview, open_raster, overview_shapes
from patchflow.plotting import _stretch, scene_image, thumbnail

SHAPE = (2048, 1536)
TRANSFORM = Affine(10.0, 0.0, 600_000.0, 0.0, -10.0, 5_000_000.0)


def _georef(values: np.ndarray, bands: list[str] | None = None) -> xr.DataArray:
    h, w = values.shape[-2:]
    arr = xr.DataArray(
        values,
        dims=("band", "y", "x"),
        coords={
            "band": np.arange(1, values.shape[0] + 1),
            "y": TRANSFORM.f + TRANSFORM.e * (np.arange(h) + 0.5),
            "x": TRANSFORM.c + TRANSFORM.a * (np.arange(w) + 0.5),
        },
    )
    if bands is not None:
        arr.attrs["long_name"] = tuple(bands)  # GDAL band descriptions
    return arr.rio.write_crs("EPSG:32633").rio.write_transform(TRANSFORM)


@pytest.fixture(scope="module")
def cog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-band uint16 COG (red, green, blue) with overviews and a nodata (0) collar."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    base = 1000 + 800 * np.sin(yy / 97.0) * np.cos(xx / 61.0)
    values = np.stack([base + rng.normal(0, 40, SHAPE) + 300 * k for k in range(3)])
    values = np.clip(values, 1, 60_000).astype(np.uint16)
    values[:, :, :400] = 0  # nodata collar
    path = tmp_path_factory.mktemp("cog") / "scene.tif"
    arr = _georef(values, ["red", "green", "blue"]).rio.write_nodata(0)
    arr.rio.to_raster(path, driver="COG", blocksize=256, overview_resampling="average")
    with rasterio.open(path) as src:  # the file is what the tests assume
        assert src.overviews(1) == [2, 4, 8]
        assert src.nodata == 0 and src.descriptions == ("red", "green", "blue")
    return path


#: run in a fresh process (no GDAL block cache): bytes the process read around thumbnail()
READ_BYTES = """
import sys
from patchflow.io.sources import open_raster
from patchflow.plotting import thumbnail


def read_bytes():
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("rchar"))


scene = open_raster(sys.argv[1])
if sys.argv[2] == "changed":
    scene = scene + 0  # not the file's values any more: decimated full resolution
before = read_bytes()
thumb = thumbnail(scene, int(sys.argv[3]))
print(read_bytes() - before, *thumb.shape)
"""


def _thumbnail_read(path: Path, how: str, max_pixels: int) -> tuple[int, tuple[int, ...]]:
    run = subprocess.run(
        [sys.executable, "-c", READ_BYTES, str(path), how, str(max_pixels)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    nbytes, *shape = (int(v) for v in run.stdout.split())
    return nbytes, tuple(shape)


# --------------------------------------------------------------------------- overviews


def test_overview_shapes_of_a_cog(cog: Path) -> None:
    scene = open_raster(str(cog))
    assert overview_shapes(scene) == [(1024, 768), (512, 384), (256, 192)]
    # band selections still hold the file's values: same overviews
    assert overview_shapes(scene.isel(band=[2, 0])) == overview_shapes(scene)
    assert overview_shapes(scene.sel(band=2)) == overview_shapes(scene)


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s * 1,  # arithmetic: other values
        lambda s: s.astype("float32"),
        lambda s: s.where(s > 0),
        lambda s: s.load(),  # in memory: may be edited in place, and is cheap to decimate
        lambda s: s.isel(x=slice(0, 1000)),  # another grid
        lambda s: s.assign_coords(band=["r", "g", "b"]),  # bands not addressed by number
        lambda s: s.rio.write_crs("EPSG:4326"),
    ],
)
def test_no_overviews_for_anything_but_the_files_values(cog: Path, change: Any) -> None:
    assert overview_shapes(change(open_raster(str(cog)))) == []


def test_no_overviews_without_a_file(scene_factory: Any) -> None:
    assert overview_shapes(scene_factory((300, 260))) == []
    assert overview_shapes(scene_factory((300, 260), chunks=100)) == []


def test_open_overview_keeps_bands_dims_and_attrs(cog: Path) -> None:
    scene = open_raster(str(cog)).isel(band=[2, 0])
    ov = open_overview(scene, 1)
    assert ov.dims == scene.dims and ov.shape == (2, 512, 384)
    assert ov.band.values.tolist() == [3, 1]
    assert ov.attrs["long_name"] == scene.attrs["long_name"]
    assert ov.rio.nodata == 0
    direct = rioxarray.open_rasterio(cog, overview_level=1)
    np.testing.assert_array_equal(ov.values, direct.values[[2, 0]])
    # an overview covers the scene's extent with coarser pixels
    np.testing.assert_allclose(ov.rio.bounds(), scene.rio.bounds())
    with pytest.raises(ParameterError, match=r"overview level 3 does not exist.*3 usable"):
        open_overview(scene, 3)
    with pytest.raises(ParameterError, match="0 usable"):
        open_overview(scene * 2, 0)


def test_thumbnail_reads_the_overview_not_the_full_resolution(cog: Path) -> None:
    scene = open_raster(str(cog))  # dask chunks of 2048 pixels, as the CLI opens it
    thumb = thumbnail(scene, 512)
    # full resolution decimated by 4 would be 512 x 384: overview 1 holds exactly that
    overview = rioxarray.open_rasterio(cog, overview_level=1)
    assert thumb.shape == overview.shape == (3, 512, 384)
    np.testing.assert_array_equal(thumb.values, overview.values)  # averaged, not decimated
    decimated = thumbnail(scene + 0, 512)
    np.testing.assert_array_equal(decimated.values, scene.values[:, ::4, ::4])
    assert not np.array_equal(decimated.values, thumb.values)


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io")
def test_thumbnail_of_a_cog_reads_far_fewer_bytes(cog: Path) -> None:
    from_overview, shape = _thumbnail_read(cog, "file", 512)
    from_full, full_shape = _thumbnail_read(cog, "changed", 512)
    assert shape == full_shape == (3, 512, 384)
    # overview 1 holds 1/16 of the pixels; the full resolution is read whole
    assert from_full >= 0.9 * cog.stat().st_size
    assert from_overview * 8 < from_full


@pytest.mark.parametrize(
    ("max_pixels", "shape"),
    [
        (256, (256, 192)),  # full resolution by 8: 256 px, overview 2 holds exactly that
        (300, (256, 192)),  # by 7: 293 px; overview 2 (256) is short, overview 1 by 2
        (512, (512, 384)),  # overview 1
        (1024, (1024, 768)),  # overview 0
        (4096, SHAPE),  # small enough: full resolution
    ],
)
def test_thumbnail_picks_the_coarsest_overview_holding_the_thumbnail(
    cog: Path, max_pixels: int, shape: tuple[int, int]
) -> None:
    thumb = thumbnail(open_raster(str(cog)), max_pixels)
    assert thumb.shape == (3, *shape)
    assert max(shape) <= max_pixels


def test_grid_figure_extent_from_an_overview_is_the_scene(cog: Path) -> None:
    pytest.importorskip("matplotlib")
    import patchflow
    from patchflow.plotting import grid_figure

    scene = open_raster(str(cog))
    layout = patchflow.plan_grid(scene, size=256, stride=192)
    fig = grid_figure(scene, layout, max_pixels=512)
    (image,) = fig.axes[0].images
    left, bottom, right, top = scene.rio.bounds()
    np.testing.assert_allclose(image.get_extent(), (left, right, bottom, top))
    assert image.get_array().shape[:2] == (512, 384)


# --------------------------------------------------------------------------- stretch


def test_stretch_ignores_a_nodata_collar() -> None:
    rng = np.random.default_rng(3)
    band = rng.uniform(1000, 2000, (200, 300))
    band[:, :150] = 0  # half the scene is collar
    band[5, 200] = np.nan
    out = _stretch(band, nodata=0)
    valid = out[:, 150:][np.isfinite(out[:, 150:])]
    # valid pixels use the whole range: 2 % at 0, 98 % at 1, the median near 0.5
    assert np.isclose(np.percentile(valid, 1), 0.0) and np.isclose(np.percentile(valid, 99), 1)
    assert 0.4 < np.median(valid) < 0.6
    assert np.isnan(out[:, :150]).all() and np.isnan(out[5, 200])
    # with the collar counted, the 2nd percentile would be 0 and the valid pixels squeezed
    squeezed = _stretch(band)
    assert np.median(squeezed[:, 150:][np.isfinite(squeezed[:, 150:])]) > 0.7


def test_scene_image_of_a_collared_cog(cog: Path) -> None:
    scene = open_raster(str(cog))
    view = thumbnail(scene, 512)
    image = scene_image(view)
    assert image.shape == (512, 384, 4)  # RGBA: the collar is transparent
    collar, inside = image[:, :100], image[:, 100:]  # 400 px collar → 100 overview px
    assert (collar[..., 3] == 0).all() and (inside[..., 3] == 1).all()
    for c in range(3):
        channel = inside[..., c]
        assert np.percentile(channel, 1) < 0.05 and np.percentile(channel, 99) > 0.95


def test_nodata_is_per_band() -> None:
    values = np.random.default_rng(4).uniform(10, 20, (3, 40, 50))
    values[1, :, :10] = 0  # green alone is nodata here: the pixels stay (alpha 1)
    values[:, :5, :] = 0  # every band nodata: transparent
    image = scene_image(_georef(values).rio.write_nodata(0))
    assert image.shape == (40, 50, 4)
    assert (image[:5, :, 3] == 0).all()
    assert (image[5:, :, 3] == 1).all()
    assert (image[5:, :10, 1] == 0).all()  # no green there
    assert image[5:, 10:, 1].max() == 1.0


# --------------------------------------------------------------------------- band order


def _red_left(order: list[str]) -> np.ndarray:
    """Bands in ``order``: red bright on the left half, green and blue on the right."""
    planes = {
        "red": np.where(np.arange(60) < 30, 200.0, 10.0),
        "green": np.where(np.arange(60) < 30, 10.0, 200.0),
        "blue": np.where(np.arange(60) < 30, 10.0, 200.0),
    }
    return np.stack([np.tile(planes[name], (40, 1)) for name in order])


@pytest.mark.parametrize("order", [["red", "green", "blue"], ["blue", "green", "red"]])
def test_bands_named_red_green_blue_show_in_that_order(order: list[str]) -> None:
    named = xr.DataArray(_red_left(order), dims=("band", "y", "x"), coords={"band": order})
    image = scene_image(named)
    np.testing.assert_array_equal(image[:, :30], np.broadcast_to([1.0, 0.0, 0.0], (40, 30, 3)))
    np.testing.assert_array_equal(image[:, 30:], np.broadcast_to([0.0, 1.0, 1.0], (40, 30, 3)))


def test_band_descriptions_name_the_channels(tmp_path: Path) -> None:
    order = ["nir", "blue", "green", "red"]
    path = tmp_path / "bgr.tif"
    # nir like green (bright on the right): bands 1/2/3 as RGB would show black | white
    _georef(_red_left(["green", "blue", "green", "red"]), order).rio.to_raster(path)
    scene = open_raster(str(path))
    assert scene.attrs["long_name"] == tuple(order)
    # from the descriptions: red = band 4, green = band 3, blue = band 2
    image = scene_image(thumbnail(scene))
    assert image[0, 0].tolist() == [1.0, 0.0, 0.0]  # left: red
    assert image[0, -1].tolist() == [0.0, 1.0, 1.0]  # right: cyan


def test_unnamed_bands_one_two_three_are_red_green_blue() -> None:
    unnamed = xr.DataArray(_red_left(["red", "green", "blue"]), dims=("band", "y", "x"))
    image = scene_image(unnamed)
    assert image[0, 0].tolist() == [1.0, 0.0, 0.0]
    reversed_ = scene_image(unnamed[::-1])  # blue, green, red as bands 1/2/3: shows blue
    assert reversed_[0, 0].tolist() == [0.0, 0.0, 1.0]
    assert scene_image(unnamed[::-1], rgb=(2, 1, 0))[0, 0].tolist() == [1.0, 0.0, 0.0]


def test_rgb_by_name_and_bad_rgb() -> None:
    named = xr.DataArray(
        _red_left(["blue", "green", "red"]),
        dims=("band", "y", "x"),
        coords={"band": ["blue", "green", "red"]},
    )
    assert scene_image(named, rgb=("red", "green", "blue"))[0, 0].tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(ParameterError, match=r"rgb names band 'nir'.*named blue, green, red"):
        scene_image(named, rgb=("nir", "green", "blue"))
    with pytest.raises(ParameterError, match=r"rgb band 3 is not a 0-based band position"):
        scene_image(named, rgb=(3, 1, 0))


# --------------------------------------------------------------------------- the CLI


def test_cli_grid_png_shows_true_colour_without_the_collar(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.image

    # blue, green, red (band descriptions): red bright on the left, green/blue on the right
    h, w = 2048, 2048
    left = np.arange(w) < w // 2
    planes = {"red": np.where(left, 3000, 200), "green": np.where(left, 200, 3000)}
    planes["blue"] = planes["green"]
    values = np.stack([np.tile(planes[b], (h, 1)) for b in ("blue", "green", "red")])
    values = values.astype(np.uint16)
    values[:, :, :256] = 0  # nodata collar: would squeeze the stretch if counted
    cog = tmp_path / "bgr.tif"
    arr = _georef(values, ["blue", "green", "red"]).rio.write_nodata(0)
    arr.rio.to_raster(cog, driver="COG", blocksize=256, overview_resampling="nearest")
    png = tmp_path / "grid.png"
    run = subprocess.run(
        [sys.executable, "-m", "patchflow", "grid", str(cog), "--png", str(png), "--size", "512",
         "--stride", "512"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    rgb = matplotlib.image.imread(png)[..., :3]
    red = (rgb[..., 0] > 0.9) & (rgb[..., 1] < 0.1) & (rgb[..., 2] < 0.1)
    cyan = (rgb[..., 0] < 0.1) & (rgb[..., 1] > 0.9) & (rgb[..., 2] > 0.9)
    blue = (rgb[..., 0] < 0.1) & (rgb[..., 1] < 0.1) & (rgb[..., 2] > 0.9)
    # the two halves fill most of the plot: about a fifth of the figure each
    assert red.mean() > 0.15 and cyan.mean() > 0.15
    assert blue.mean() < 0.01  # bands 1/2/3 as RGB would paint the left half blue


def test_dask_config_does_not_matter_for_thumbnails(cog: Path) -> None:
    scene = open_raster(str(cog))
    with dask.config.set(scheduler="sync"):
        assert thumbnail(scene, 512).shape == (3, 512, 384)
