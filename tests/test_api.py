"""Acceptance tests of the core engine (issue 2): fidelity, invariance, errors, geo I/O."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import rioxarray
import xarray as xr
from dask.utils import key_split

import patchflow
from patchflow.demo import dn_ndvi


def ndvi64(chip: np.ndarray) -> np.ndarray:
    """DN × 1e-4 → NDVI on one (2, h, w) chip, float64 (the reference op)."""
    red, nir = chip[0:1] * 1e-4, chip[1:2] * 1e-4
    with np.errstate(invalid="ignore", divide="ignore"):
        return (nir - red) / (nir + red)


@pytest.fixture(scope="module")
def scene(scene_factory: Callable[..., xr.DataArray]) -> xr.DataArray:
    return scene_factory((3935, 1599), seed=3, chunks=1024, persist=True)


@pytest.fixture(scope="module")
def full_ndvi(scene: xr.DataArray) -> np.ndarray:
    return ndvi64(scene.values)


def assert_same_geo(out: xr.DataArray, ref: xr.DataArray) -> None:
    np.testing.assert_array_equal(out.y.values, ref.y.values)
    np.testing.assert_array_equal(out.x.values, ref.x.values)
    assert out.rio.crs == ref.rio.crs
    assert out.rio.transform() == ref.rio.transform()


def test_fidelity_hann_shift(scene: xr.DataArray, full_ndvi: np.ndarray) -> None:
    out = scene.patch.apply(ndvi64, size=256, stride=192, window="hann", boundary="shift")
    assert out.shape == (1, 3935, 1599)
    assert out.dims == ("band", "y", "x")
    values = out.values
    assert np.abs(values - full_ndvi).max() <= 1e-6
    assert not np.isnan(values).any()
    assert_same_geo(out, scene)
    assert np.isnan(out.rio.nodata)


@pytest.mark.parametrize("window", ["boxcar", "triangular", "gaussian", "tukey", "spline"])
def test_fidelity_other_windows_pad(
    scene: xr.DataArray, full_ndvi: np.ndarray, window: str
) -> None:
    out = patchflow.apply(scene, ndvi64, size=256, stride=192, window=window, boundary="pad")
    assert np.abs(out.values - full_ndvi).max() <= 1e-6


def test_fidelity_float32_batched_op(scene: xr.DataArray, full_ndvi: np.ndarray) -> None:
    out = scene.patch.apply(dn_ndvi, size=256, stride=192)
    assert out.dtype == np.float32
    assert np.abs(out.values - full_ndvi).max() <= 1e-6


def test_chunk_invariance(scene: xr.DataArray) -> None:
    small = scene.isel(y=slice(0, 1500), x=slice(0, 1100))
    results = [
        small.chunk({"y": c[0], "x": c[1]}).patch.apply(ndvi64, window="hann").values
        for c in [(1500, 1100), (700, 300), (256, 999)]
    ]
    results.append(small.patch.apply(ndvi64, window="hann", chunks=(333, 517)).values)
    for other in results[1:]:
        np.testing.assert_allclose(other, results[0], atol=1e-6, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["synchronous", "threads", "processes"])
def test_scheduler_invariance(scene: xr.DataArray, scheduler: str) -> None:
    small = scene.isel(y=slice(0, 1200), x=slice(0, 900)).chunk({"y": 500, "x": 400})
    ref = dn_ndvi(small.values[None])[0]
    out = small.patch.apply(dn_ndvi, window="hann").compute(scheduler=scheduler)
    np.testing.assert_allclose(out.values, ref, atol=1e-6, rtol=0)


def grid_chips(h: int, w: int) -> int:
    return patchflow.ChipGrid((h, w), 128, 96).n_chips


class ChipRecorder:
    """Plain op recording the anchor of every chip it sees (pixel values encode position)."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.lock = threading.Lock()
        self.seen: list[tuple[int, int]] = []

    def __call__(self, chip: np.ndarray) -> np.ndarray:
        first = int(chip[0, 0, 0])
        with self.lock:
            self.seen.append(divmod(first, self.width))
        return chip.astype(np.float64)


def test_each_chip_once_and_task_count() -> None:
    h, w = 1700, 1300
    data = np.arange(h * w, dtype=np.int64).reshape(1, h, w)
    arr = xr.DataArray(data, dims=("band", "y", "x")).chunk({"y": 400, "x": 500})
    rec = ChipRecorder(w)
    out = arr.patch.apply(rec, size=128, stride=96, output_dtype="float64", output_bands=1)
    graph = dict(out.data.__dask_graph__())
    nblocks = int(np.prod(out.data.numblocks))
    by_prefix: dict[str, int] = {}
    for key in graph:
        prefix = key_split(key)
        by_prefix[prefix] = by_prefix.get(prefix, 0) + 1
    assert by_prefix["patchflow-chips"] <= nblocks  # one task per working block
    assert by_prefix["patchflow-stitch"] == nblocks  # one writer per output block
    assert by_prefix["patchflow-halo"] <= 3 * nblocks  # halo strips from 3 neighbours
    assert by_prefix["patchflow-piece"] <= 3 * nblocks  # spill-over to 3 neighbours
    input_tasks = len(arr.data.__dask_graph__())
    assert len(graph) <= 8 * nblocks + input_tasks
    assert grid_chips(h, w) > 10 * nblocks  # so O(blocks) is not O(chips)
    assert not rec.seen  # output_dtype + output_bands: no dry run, nothing computed yet

    result = out.compute(scheduler="threads")
    grid = patchflow.ChipGrid((h, w), 128, 96)
    assert len(rec.seen) == grid.n_chips
    assert sorted(rec.seen) == sorted(map(tuple, grid.anchors.tolist()))
    np.testing.assert_allclose(result.values, data.astype(np.float64), rtol=1e-14)


def test_graph_build_computes_nothing(
    dask_computes: Any, scene_factory: Callable[..., xr.DataArray]
) -> None:
    lazy = scene_factory((900, 700), chunks=300)
    with dask_computes(max_computes=1) as counter:
        out = lazy.patch.apply(ndvi64, size=128, stride=96)
        again = lazy.patch.apply(ndvi64, size=128, stride=96)
        assert counter.calls == []
        assert out.data.name == again.data.name  # deterministic keys
        assert out.data.name.startswith("patchflow-stitch-")
        out.compute()
    assert len(counter.calls) == 1


@pytest.mark.parametrize("pad_mode", ["constant", "wrap"])
def test_graph_keys_deterministic_and_prefixes_distinct(
    dask_computes: Any, scene_factory: Callable[..., xr.DataArray], pad_mode: str
) -> None:
    from dask.utils import key_split

    lazy = scene_factory((900, 700), chunks=300)
    kw: dict[str, Any] = {"size": 128, "stride": 96, "boundary": "pad", "pad_mode": pad_mode}
    with dask_computes(max_computes=0):
        a = lazy.patch.apply(ndvi64, **kw).data
        b = lazy.patch.apply(ndvi64, **kw).data
        c = lazy.patch.apply(ndvi64, **{**kw, "stride": 64}).data
    keys_a = set(a.__dask_graph__().keys())
    assert keys_a == set(b.__dask_graph__().keys())  # the same job: the same graph
    assert a.name != c.name  # another job: other keys
    ours = {key_split(k) for k in keys_a if str(key_split(k)).startswith("patchflow-")}
    assert {"patchflow-chips", "patchflow-stitch"} <= ours
    # readable, and no prefix is another one's prefix (they group apart on the dashboard)
    names = sorted(ours)
    assert all(not n2.startswith(n1 + "-") for n1 in names for n2 in names if n1 != n2), names


def test_vote_pointwise_labels_exact(scene: xr.DataArray) -> None:
    def classes(chip: np.ndarray) -> np.ndarray:
        return ((chip[1:2].astype(np.int64) // 700) % 5).astype(np.uint8)

    sub = scene.isel(y=slice(0, 2000), x=slice(0, 1599))
    out = sub.patch.apply(classes, agg="vote", n_classes=5, boundary="shift")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out.values, classes(sub.values))


def test_vote_tie_goes_to_higher_window_weight() -> None:
    # two chips overlap in the middle: the left chip says 1, the right chip says 2;
    # overlap pixels left of centre are closer to the left chip's centre (higher Hann).
    arr = xr.DataArray(np.zeros((1, 8, 12)), dims=("band", "y", "x"))

    def side(chip: np.ndarray) -> np.ndarray:
        return np.full((1, *chip.shape[-2:]), 1 if chip[0, 0, 0] == 0 else 2, np.uint8)

    marked = arr.copy()
    marked[0, :, 4:] = 1.0
    out = marked.patch.apply(side, size=8, stride=4, agg="vote", n_classes=3).values[0, 0]
    # chips at x = 0, 4; the second chip only covers 4..11, overlap 4..7
    assert out[:4].tolist() == [1, 1, 1, 1]
    assert out[8:].tolist() == [2, 2, 2, 2]
    # in the overlap each pixel goes to the chip whose window is larger there
    w = patchflow.make_window("hann", (8, 8))
    left = w.weights(True, True, True, False)[4, 4:8]
    right = w.weights(True, True, False, True)[4, 0:4]
    expected = np.where(left > right, 1, 2)
    expected = np.where(left == right, 1, expected)
    assert out[4:8].tolist() == expected.tolist()


@pytest.mark.parametrize("agg", ["max", "min", "mean", "centre"])
def test_other_aggs_pointwise_exact(scene: xr.DataArray, agg: str) -> None:
    sub = scene.isel(y=slice(0, 900), x=slice(0, 700))
    out = sub.patch.apply(ndvi64, agg=agg, size=128, stride=96)
    np.testing.assert_allclose(out.values, ndvi64(sub.values), atol=1e-12, rtol=0)


def test_soft_vote_pointwise() -> None:
    rng = np.random.default_rng(0)
    data = rng.random((3, 500, 420))
    arr = xr.DataArray(data, dims=("band", "y", "x"))
    out = arr.patch.apply(lambda c: c, agg="soft_vote", size=100, stride=64)
    assert out.dims == ("y", "x")
    np.testing.assert_array_equal(out.values, data.argmax(axis=0))


def test_nan_and_nodata() -> None:
    rng = np.random.default_rng(1)
    h, w = 700, 600
    data = rng.uniform(100, 5000, (2, h, w))
    data[:, 300:340, 200:260] = np.nan  # a hole
    data[0, :, :37] = -9999.0  # nodata strip on one band (scene edge)
    arr = xr.DataArray(data, dims=("band", "y", "x")).rio.write_nodata(-9999.0)
    out = arr.patch.apply(ndvi64, size=128, stride=96).values[0]
    invalid = np.zeros((h, w), bool)
    invalid[300:340, 200:260] = True
    invalid[:, :37] = True
    assert np.isnan(out[invalid]).all()
    assert not np.isnan(out[~invalid]).any()
    np.testing.assert_allclose(out[~invalid], ndvi64(data)[0][~invalid], atol=1e-9, rtol=0)


def test_op_sees_filled_chips_and_mask() -> None:
    data = np.full((1, 300, 300), 5.0)
    data[0, 100:120, 100:120] = np.nan
    arr = xr.DataArray(data, dims=("band", "y", "x"))
    seen_nan = []

    def op(chip: np.ndarray, valid: np.ndarray) -> np.ndarray:
        seen_nan.append(bool(np.isnan(chip).any()))
        assert valid.shape == chip.shape[-2:]
        assert (chip[0][~valid] == -1.0).all()
        return chip * 2

    out = arr.patch.apply(op, size=64, stride=48, pass_mask=True, fill_value=-1.0).values
    assert not any(seen_nan)
    assert np.isnan(out[0, 100:120, 100:120]).all()
    assert (out[0][~np.isnan(data[0])] == 10.0).all()


def test_drop_boundary_leaves_nan_margin() -> None:
    arr = xr.DataArray(np.ones((1, 300, 250)), dims=("band", "y", "x"))
    out = arr.patch.apply(lambda c: c, size=100, stride=100, boundary="drop").values[0]
    assert np.isnan(out[:, 200:]).all()
    assert (out[:, :200] == 1).all()


def test_integer_output_nodata() -> None:
    arr = xr.DataArray(np.ones((1, 300, 250), np.uint8), dims=("band", "y", "x"))
    out = arr.patch.apply(lambda c: c, size=100, stride=100, boundary="drop", agg="max")
    assert out.dtype == np.uint8
    assert out.rio.nodata == 255
    assert (out.values[0, :, 200:] == 255).all()


def test_geotiff_roundtrip(scene_factory: Callable[..., xr.DataArray], tmp_path: Any) -> None:
    src = scene_factory((1100, 900), seed=5)
    path = tmp_path / "scene.tif"
    src.rio.to_raster(path, tiled=True, blockxsize=256, blockysize=256)
    lazy = rioxarray.open_rasterio(path, chunks={"x": 512, "y": 512})
    assert lazy.chunks is not None
    out = lazy.patch.apply(ndvi64, size=256, stride=192)
    dst = tmp_path / "ndvi.tif"
    out.rio.to_raster(dst)
    back = rioxarray.open_rasterio(dst)
    assert back.rio.crs == src.rio.crs
    assert back.rio.transform() == src.rio.transform()
    np.testing.assert_allclose(back.values, ndvi64(src.values), atol=1e-6, rtol=0)


def test_dataset_variables_stacked_in_order(scene_factory: Callable[..., xr.DataArray]) -> None:
    scene = scene_factory((400, 300))
    ds = xr.Dataset(
        {"red": scene.sel(band="red", drop=True), "nir": scene.sel(band="nir", drop=True)}
    )
    seen = []

    def op(chip: np.ndarray) -> np.ndarray:
        seen.append(chip.shape)
        return ndvi64(chip)

    out = ds.patch.apply(op, size=128, stride=96)
    assert seen[0] == (2, 128, 128)  # variables stacked as bands, data_vars order
    assert out.dims == ("variable", "y", "x")
    assert out.rio.crs == scene.rio.crs
    # each variable's nodata (0) is masked before stacking, so uint16 became float32
    np.testing.assert_allclose(out.values, ndvi64(scene.values), atol=1e-6)


def test_time_band_stack_per_step_and_over_time(small_scene: xr.DataArray) -> None:
    scene = small_scene.values.astype(np.float64)
    cube = xr.DataArray(
        np.stack([scene, scene * 2, scene * 3]),
        dims=("time", "band", "y", "x"),
        coords={"time": np.array(["2024-06-01", "2024-07-01", "2024-08-01"], "datetime64[ns]")},
    )
    cube[1, :, 50:80, 60:90] = np.nan  # a cloud on one date only
    seen = []

    def per_step(chip: np.ndarray) -> np.ndarray:
        seen.append(chip.shape)
        return chip[1:] - chip[:1]

    out = cube.patch.apply(per_step, size=128, stride=96)
    assert seen[-1] == (2, 128, 128)  # default: the op sees (band, h, w) for each time
    assert out.dims == ("time", "band", "y", "x")
    assert out.shape == (3, 1, 300, 260)
    np.testing.assert_array_equal(out.time.values, cube.time.values)
    ref = cube.values[:, 1:] - cube.values[:, :1]
    np.testing.assert_allclose(out.values, ref, equal_nan=True)
    # the cloud invalidates that date only
    assert np.isnan(out.values[1, 0, 50:80, 60:90]).all()
    assert not np.isnan(out.values[[0, 2]]).any()

    def median_composite(chip: np.ndarray) -> np.ndarray:
        return np.median(chip, axis=0)  # (time, band, h, w) -> (band, h, w)

    comp = cube.fillna(0).patch.apply(median_composite, over="time", size=128, stride=96)
    assert comp.dims == ("band", "y", "x")
    np.testing.assert_allclose(comp.values, np.median(cube.fillna(0).values, axis=0))
    with pytest.raises(patchflow.errors.DimensionError, match="over="):
        cube.patch.apply(median_composite, over="season")


def test_grid_accessor_bounds(scene_factory: Callable[..., xr.DataArray]) -> None:
    scene = scene_factory((1000, 700))
    layout = scene.patch.grid(size=256, stride=192)
    frame = layout.to_dataframe()
    assert len(frame) == layout.grid.n_chips == 5 * 4
    x0, y0 = 740_000.0, 4_340_000.0
    first = frame.iloc[0]
    assert (first.xmin, first.ymax, first.xmax, first.ymin) == (x0, y0, x0 + 2560.0, y0 - 2560.0)
    assert frame.xmax.max() == x0 + 7000.0 and frame.ymin.min() == y0 - 10000.0


# ---------------------------------------------------------------- clear errors
def test_error_no_spatial_dims() -> None:
    arr = xr.DataArray(np.zeros((3, 100, 100)), dims=("band", "a", "b"))
    with pytest.raises(patchflow.errors.DimensionError, match="set_spatial_dims"):
        arr.patch.apply(lambda c: c)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": 0}, "size must be positive"),
        ({"size": -3}, "size must be positive"),
        ({"stride": 0}, "stride must be positive"),
        ({"size": 64, "stride": 80}, "allow_gaps"),
        ({"size": 512}, "larger than the scene"),
        ({"window": "hamming-ish"}, "not one of patchflow.s .boxcar, gaussian, hann"),
        ({"agg": "medain"}, "valid names: centre, inverse_variance, max, mean, mean_std, median"),
        ({"agg": "vote"}, "n_classes"),
        ({"boundary": "wrap"}, "valid: 'shift', 'pad'"),
    ],
)
def test_errors_bad_parameters(kwargs: dict[str, Any], match: str) -> None:
    arr = xr.DataArray(np.zeros((1, 300, 300)), dims=("band", "y", "x"))
    with pytest.raises(patchflow.ParameterError, match=match):
        arr.patch.apply(lambda c: c, **kwargs)


def test_error_wrong_shape_at_dry_run() -> None:
    arr = xr.DataArray(np.zeros((1, 300, 300)), dims=("band", "y", "x"))
    with pytest.raises(patchflow.errors.OperatorError, match=r"returned shape \(1, 32, 64\)"):
        arr.patch.apply(lambda c: c[..., :32, :], size=64, stride=48)
    with pytest.raises(patchflow.errors.OperatorError, match=r"returned shape \(64,\)"):
        arr.patch.apply(lambda c: c[0, 0], size=64, stride=48)


def test_error_wrong_shape_on_one_chip_names_it() -> None:
    data = np.zeros((1, 300, 300))
    data[0, 250:, 250:] = 7.0

    def flaky(chip: np.ndarray) -> np.ndarray:
        return chip[..., :-1, :] if (chip == 7.0).any() else chip

    arr = xr.DataArray(data, dims=("band", "y", "x"))
    out = arr.patch.apply(flaky, size=64, stride=48)
    with pytest.raises(
        patchflow.errors.OperatorError, match=r"chip \d+ \(rows \d+:\d+, cols \d+:\d+"
    ):
        out.compute()


def test_error_batched_wrong_count() -> None:
    arr = xr.DataArray(np.zeros((1, 300, 300)), dims=("band", "y", "x"))
    op = patchflow.batched(lambda c: c[:1])
    out = arr.patch.apply(op, size=64, stride=48, output_dtype="float64", output_bands=1)
    with pytest.raises(
        patchflow.errors.OperatorError,
        match=r"operator returned shape \(1, 1, 64, 64\).*expected \(36, 1, 64, 64\)",
    ):
        out.compute()


def test_operator_exception_is_chained() -> None:
    def boom(chip: np.ndarray) -> np.ndarray:
        raise KeyError("model missing")

    arr = xr.DataArray(np.zeros((1, 200, 200)), dims=("band", "y", "x"))
    with pytest.raises(patchflow.errors.OperatorError, match="test chip") as info:
        arr.patch.apply(boom, size=64, stride=48)
    assert isinstance(info.value.__cause__, KeyError)


# ---------------------------------------------------------------- resolution change
def up2(chips: np.ndarray) -> np.ndarray:
    """×2 nearest-neighbour super-resolution of NDVI."""
    return dn_ndvi(chips).repeat(2, axis=-2).repeat(2, axis=-1)


def down4(chips: np.ndarray) -> np.ndarray:
    """÷4 encoder: 4×4 mean pooling of NDVI."""
    v = dn_ndvi(chips)
    n, c, h, w = v.shape
    return v.reshape(n, c, h // 4, 4, w // 4, 4).mean(axis=(3, 5))


@pytest.mark.parametrize(("op", "factor"), [(up2, 2.0), (down4, 0.25)])
def test_resolution_change(
    scene_factory: Callable[..., xr.DataArray], op: Any, factor: float
) -> None:
    from affine import Affine

    scene = scene_factory((1000, 804), chunks=400)
    out = scene.patch.apply(patchflow.batched(op), size=128, stride=96)
    full = op(scene.values[None])[0]
    assert out.shape == full.shape == (1, int(1000 * factor), int(804 * factor))
    assert np.abs(out.values - full).max() <= 1e-6
    expected = scene.rio.transform() * Affine.scale(1 / factor)
    assert out.rio.transform() == expected
    assert out.rio.crs == scene.rio.crs
    # coordinates are the new pixel centres, in CRS units
    np.testing.assert_allclose(out.x.values[:2], expected.c + expected.a * np.array([0.5, 1.5]))
    np.testing.assert_allclose(out.y.values[-1], expected.f + expected.e * (out.sizes["y"] - 0.5))


def test_resolution_change_needs_divisible_sizes(
    scene_factory: Callable[..., xr.DataArray],
) -> None:
    scene = scene_factory((1001, 804))
    with pytest.raises(patchflow.ParameterError, match=r"multiple of 4.*scene height 1001"):
        scene.patch.apply(patchflow.batched(down4), size=128, stride=96)


# ---------------------------------------------------------------- per-chip error policy
class FailsOnMarkedChip:
    """Fails (KeyError, or OSError `transient` times) on chips containing the marker value."""

    def __init__(self, exc: type[Exception] = KeyError, transient: int | None = None) -> None:
        self.exc = exc
        self.transient = transient
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, chip: np.ndarray) -> np.ndarray:
        if (chip == 7777).any():
            with self.lock:
                self.calls += 1
                if self.transient is None or self.calls <= self.transient:
                    raise self.exc("model exploded")
        return ndvi64(chip)


@pytest.fixture
def marked_scene(scene_factory: Callable[..., xr.DataArray]) -> xr.DataArray:
    """700 × 600 float64, a fresh copy per test (it is marked in place)."""
    scene = scene_factory((700, 600), dtype=np.float64)
    scene[0, 450, 500] = 7777.0  # only chips covering (450, 500) fail
    return scene


def test_on_error_raise_names_chip_window_and_bounds(marked_scene: xr.DataArray) -> None:
    out = marked_scene.patch.apply(
        FailsOnMarkedChip(), size=128, stride=96, output_dtype="float64", output_bands=1
    )
    with pytest.raises(
        patchflow.errors.OperatorError, match=r"chip \d+ \(rows \d+:\d+, cols"
    ) as info:
        out.compute()
    assert "EPSG:32610" in str(info.value)
    assert isinstance(info.value.__cause__, KeyError)


def test_on_error_mask_continues_and_counts(marked_scene: xr.DataArray, tmp_path: Any) -> None:
    scene = marked_scene
    kw: dict[str, Any] = {"size": 128, "stride": 96, "output_dtype": "float64", "output_bands": 1}
    out = scene.patch.apply(FailsOnMarkedChip(), on_error="mask", **kw).values[0]
    ref = ndvi64(scene.values)[0]
    grid = patchflow.ChipGrid((700, 600), 128, 96)
    bad = [(r, c) for r, c in grid.anchors if r <= 450 < r + 128 and c <= 500 < c + 128]
    assert bad
    only_bad = np.zeros((700, 600), bool)
    cover = np.zeros((700, 600), int)
    for r, c in grid.anchors:
        cover[r : r + 128, c : c + 128] += 1
    bad_cover = np.zeros((700, 600), int)
    for r, c in bad:
        bad_cover[r : r + 128, c : c + 128] += 1
    only_bad = cover == bad_cover
    assert np.isnan(out[only_bad]).all()
    np.testing.assert_allclose(out[~only_bad], ref[~only_bad], atol=1e-9)
    report = patchflow.run(
        scene, FailsOnMarkedChip(), store=tmp_path / "m.zarr", on_error="mask", **kw
    )
    assert report.failed_chips == len(bad)


def test_on_error_retry_transient(marked_scene: xr.DataArray) -> None:
    kw: dict[str, Any] = {"size": 128, "stride": 96, "output_dtype": "float64", "output_bands": 1}
    op = FailsOnMarkedChip(OSError, transient=2)
    scene = marked_scene
    out = scene.patch.apply(op, on_error="retry", retries=3, **kw)
    np.testing.assert_allclose(out.values, ndvi64(scene.values), atol=1e-9)
    flaky = FailsOnMarkedChip(OSError, transient=5)
    with pytest.raises(patchflow.errors.OperatorError, match="OSError"):
        scene.patch.apply(flaky, on_error="retry", retries=1, **kw).compute()
    with pytest.raises(patchflow.ParameterError, match="valid: raise, mask, retry"):
        scene.patch.apply(op, on_error="ignore", **kw)
