"""Chip datasets, chip stores, torch adapter, stitching arbitrary anchors, polygon chips
(issue 7; zonal statistics: test_zonal.py); stitching arbitrary anchors through apply's
aggregators (issue 13)."""

from __future__ import annotations

import pickle
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from conftest import mode_of
from dask.callbacks import Callback

import patchflow
from patchflow.engine.graph import STITCH_PREFIX as APPLY_STITCH_PREFIX
from patchflow.errors import DimensionError, NodataCollisionError, OperatorError, ParameterError
from patchflow.io.chips import open_chips, write_chips
from patchflow.plan.samplers import (
    Explicit,
    JitteredStride,
    PoissonDisk,
    Random,
    RegularStride,
    Sampler,
    Stratified,
)
from patchflow.sampling import polygon_chips, sample, stitch
from patchflow.sampling.chips import READ_PREFIX
from patchflow.sampling.stitch import STITCH_PREFIX
from patchflow.sampling.torch_data import ChipStoreDataset, LazyChipDataset


@pytest.fixture(scope="module")
def scene(scene_factory: Callable[..., xr.DataArray]) -> xr.DataArray:
    return scene_factory((700, 600), seed=4, chunks=128)


@pytest.fixture(scope="module")
def scene_values(scene: xr.DataArray) -> np.ndarray:
    return scene.values


def direct(values: np.ndarray, anchors: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    return np.stack([values[..., r : r + h, c : c + w] for r, c in anchors])


# --------------------------------------------------------------------------- sample


@pytest.mark.parametrize("size", [(64, 64), (37, 100), (128, 128)])
def test_sample_matches_direct_slicing(scene, scene_values, size) -> None:
    chips = sample(scene, PoissonDisk(30, seed=1), size=size)
    anchors = np.stack([chips.row.values, chips.col.values], axis=1)
    assert chips.dims == ("chip", "band", "y", "x")
    assert chips.shape[1:] == (2, *size)
    assert isinstance(chips.data, da.Array)  # lazy
    assert np.array_equal(chips.values, direct(scene_values, anchors, size))
    assert list(chips.band.values) == ["red", "nir"]
    assert chips.y.values.tolist() == list(range(size[0]))  # chip-local pixel offsets


def test_sample_coords_are_crs_bounds(scene) -> None:
    chips = sample(scene, Random(20, seed=3), size=(50, 80))
    t = scene.rio.transform()
    r, c = chips.row.values, chips.col.values
    assert np.allclose(chips.xmin, t.c + t.a * c)
    assert np.allclose(chips.xmax, t.c + t.a * (c + 80))
    assert np.allclose(chips.ymax, t.f + t.e * r)
    assert np.allclose(chips.ymin, t.f + t.e * (r + 50))
    assert np.allclose(chips.x_center, (chips.xmin + chips.xmax) / 2)
    assert np.allclose(chips.y_center, (chips.ymin + chips.ymax) / 2)
    # the centre coordinate falls inside the chip, equal to the scene's coords there
    k = 7
    sub = scene.isel(y=slice(int(r[k]), int(r[k]) + 50), x=slice(int(c[k]), int(c[k]) + 80))
    assert float(sub.x.min()) - 5 == pytest.approx(float(chips.xmin[k]))
    assert chips.attrs["scene_shape"] == [700, 600]
    assert "32610" in chips.attrs["scene_crs"] or "UTM zone 10N" in chips.attrs["scene_crs"]


def test_sample_numpy_and_zarr_inputs(tmp_path: Path) -> None:
    values = np.arange(3 * 500 * 400, dtype=np.float32).reshape(3, 500, 400)
    arr = xr.DataArray(values, dims=("band", "y", "x"))
    anchors = np.array([[0, 0], [100, 390 - 64], [436, 300]])
    chips = sample(arr, anchors, size=64)
    assert np.array_equal(chips.values, direct(values, anchors, (64, 64)))
    assert chips.point.values.tolist() == [0, 1, 2]
    # a Dataset is stacked along 'variable'
    ds = xr.Dataset({"a": arr[0], "b": arr[1]})
    chips_ds = sample(ds, anchors, size=64)
    assert chips_ds.dims == ("chip", "variable", "y", "x")
    assert np.array_equal(chips_ds.values, direct(values[:2], anchors, (64, 64)))
    # storage-backed input (Zarr getter tasks): chips read their windows, not whole chunks
    arr.chunk({"y": 128, "x": 128}).to_dataset(name="v").to_zarr(
        tmp_path / "s.zarr", consolidated=False
    )
    stored = xr.open_zarr(tmp_path / "s.zarr", consolidated=False)["v"]
    chips = sample(stored, anchors, size=64)
    graph = dict(chips.data.__dask_graph__())
    assert any(isinstance(k, tuple) and str(k[0]).startswith(READ_PREFIX) for k in graph)
    assert np.array_equal(chips.values, direct(values, anchors, (64, 64)))


def test_sample_nodata_validity_and_errors(scene) -> None:
    values = scene.values.astype(np.float32)
    values[:, 200:400, 100:500] = np.nan
    holed = scene.copy(data=da.from_array(values, chunks=(2, 128, 128)))
    chips = sample(holed, Random(60, seed=0), size=64, valid="nodata", max_invalid=0.05)
    assert len(chips) == 60
    frac = np.isnan(chips.values).any(axis=1).mean(axis=(1, 2))
    assert (frac <= 0.05).all()
    with pytest.raises(ParameterError, match="'nodata'"):
        sample(scene, Random(3), size=32, valid="bogus")
    with pytest.raises(ParameterError, match=r"array of \(row, col\) pixel anchors"):
        sample(scene, "random", size=32)  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="outside the scene"):
        sample(scene, np.array([[690, 0]]), size=32)


def test_thousand_poisson_chips_from_a_16k_scene_bounded_memory(
    scene_factory: Callable[..., xr.DataArray],
) -> None:
    big = scene_factory((16384, 16384), chunks=1024)  # 1 GiB of uint16 if read whole
    sampler = PoissonDisk(400, seed=0, n=1000)
    chips = sample(big, sampler, size=256)
    assert chips.shape == (1000, 2, 256, 256)
    anchors = np.stack([chips.row.values, chips.col.values], axis=1)
    assert np.array_equal(anchors, sampler.anchors((16384, 16384), 256))
    # compute 48 consecutive chips (8 tasks) with 2 threads, tracing memory and counting
    # how many of the scene's 256 source chunks get generated
    pick = slice(400, 448)
    counter = ChunkCounter(big.data.name)
    tracemalloc.start()
    try:
        with dask.config.set(scheduler="threads", num_workers=2), counter:
            got = chips.isel(chip=pick).values
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    full_bytes = 2 * 16384 * 16384 * 2
    # the synthetic generator alone needs ~110 MB per chunk per thread
    assert peak < 0.4 * full_bytes, f"peak {peak / 2**20:.0f} MiB"
    assert counter.n <= 64, counter.n
    # equal to direct slicing of the lazy scene
    for k in range(0, 48, 6):
        r, c = anchors[400 + k]
        assert np.array_equal(got[k], big[:, r : r + 256, c : c + 256].values)


class ChunkCounter(Callback):
    """Counts finished tasks of one dask layer (the source scene's chunks)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name, self.n = name, 0

    def _posttask(self, key, result, dsk, state, id) -> None:
        if isinstance(key, tuple) and key[0] == self.name:
            self.n += 1


# --------------------------------------------------------------------------- chip store


def label_raster(scene: xr.DataArray) -> xr.DataArray:
    red = scene.sel(band="red")
    labels = xr.where(red < 800, 2, xr.where(red < 1500, 1, 0)).astype(np.uint8)
    return labels.rio.write_crs(scene.rio.crs)


def test_chip_store_round_trip(scene, scene_values, tmp_path: Path) -> None:
    labels = label_raster(scene)
    lab_values = labels.values
    sampler = Stratified(labels, 12, seed=0)
    chips = sample(scene, sampler, size=48, labels=labels)
    assert chips.coords["label"].dims == ("chip", "y", "x")
    assert isinstance(chips.coords["label"].data, da.Array)  # lazy too
    path = write_chips(chips, tmp_path / "chips.zarr", chips_per_chunk=5)
    ds = open_chips(path)
    assert set(ds.data_vars) == {"image", "label"}
    assert ds["image"].encoding["chunks"][0] == 5
    anchors = np.stack([ds.row.values, ds.col.values], axis=1)
    assert np.array_equal(anchors, np.stack([chips.row.values, chips.col.values], axis=1))
    assert np.array_equal(ds["image"].values, direct(scene_values, anchors, (48, 48)))
    assert np.array_equal(ds["label"].values, direct(lab_values, anchors, (48, 48)))
    # the stratified class is the label at the chip centre, and each class has 12 chips
    assert np.array_equal(ds["class"].values, ds["label"].values[:, 24, 24])
    assert np.bincount(ds["class"].values).tolist() == [12, 12, 12]
    for key in ("xmin", "ymax", "x_center", "band"):
        assert np.array_equal(ds[key].values, chips[key].values)
    assert ds.attrs["scene_shape"] == [700, 600]
    # a PatchflowError (and still a FileExistsError for generic handlers)
    with pytest.raises(patchflow.errors.StoreExistsError, match="overwrite=True"):
        write_chips(chips, path)
    write_chips(chips.isel(chip=slice(0, 4)), path, overwrite=True)
    assert open_chips(path).sizes["chip"] == 4


def test_labels_must_align(scene) -> None:
    with pytest.raises(ParameterError, match="shape"):
        sample(scene, Random(2), size=16, labels=np.zeros((10, 10)))
    shifted = label_raster(scene).assign_coords(x=scene.x + 10)
    with pytest.raises(ParameterError, match="transform"):
        sample(scene, Random(2), size=16, labels=shifted)


# --------------------------------------------------------------------------- torch


@pytest.fixture(scope="module")
def store(scene, tmp_path_factory) -> Path:
    chips = sample(scene, Random(24, seed=2), size=32, labels=label_raster(scene))
    return write_chips(chips, tmp_path_factory.mktemp("chips") / "train.zarr")


def test_store_dataset_numpy_and_pickle(store: Path) -> None:
    ds = ChipStoreDataset(store, as_tensor=False, dtype="float32")
    assert len(ds) == 24
    image, label = ds[-1]
    ref = open_chips(store)
    assert image.dtype == np.float32 and np.array_equal(image, ref["image"].values[23])
    assert np.array_equal(label, ref["label"].values[23])
    ds[0]  # opens the store in this process
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._group is None and np.array_equal(clone[3][0], ds[3][0])
    with pytest.raises(IndexError):
        ds[24]
    images_only = ChipStoreDataset(store, label=None, as_tensor=False)
    assert images_only[0].shape == (2, 32, 32)


def test_torch_dataloader_two_workers(store: Path, scene) -> None:
    torch = pytest.importorskip("torch")
    ref = open_chips(store)
    ds = ChipStoreDataset(store, dtype="float32", label_dtype="int64")
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2, shuffle=False)
    images, labels = zip(*loader, strict=True)
    images, labels = torch.cat(images), torch.cat(labels)
    assert images.shape == (24, 2, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64
    assert np.array_equal(images.numpy(), ref["image"].values.astype(np.float32))
    assert np.array_equal(labels.numpy(), ref["label"].values)
    # lazily from the source: same chips, read on demand inside the workers
    anchors = np.stack([ref.row.values, ref.col.values], axis=1)
    lazy = LazyChipDataset(scene, anchors, size=32, labels=label_raster(scene), dtype="float32")
    loader = torch.utils.data.DataLoader(lazy, batch_size=6, num_workers=2)
    got = torch.cat([batch[0] for batch in loader])
    assert np.array_equal(got.numpy(), images.numpy())


# --------------------------------------------------------------------------- stitching


def brute_stitch(
    shape: tuple[int, int],
    chips: np.ndarray,
    anchors: np.ndarray,
    window: patchflow.plan.Window,
) -> np.ndarray:
    h, w = window.shape
    num = np.zeros((*chips.shape[1:-2], *shape))
    den = np.zeros_like(num)
    for chip, (r, c) in zip(chips, anchors, strict=True):
        flags = (r == 0, r + h == shape[0], c == 0, c + w == shape[1])
        wgt = window.weights(*flags).astype(np.float64)
        num[..., r : r + h, c : c + w] += wgt * chip
        den[..., r : r + h, c : c + w] += wgt
    with np.errstate(invalid="ignore"):
        return np.where(den > 0, num / den, np.nan)


def test_stitch_poisson_predictions(scene, scene_values) -> None:
    chips = sample(scene, PoissonDisk(45, seed=3), size=64)
    # a non-pointwise "model": each chip predicts its mean NDVI minus a ramp
    values = chips.values.astype(np.float64)
    ndvi = (values[:, 1] - values[:, 0]) / (values[:, 1] + values[:, 0])
    ramp = np.linspace(0, 1, 64)[None, None, :, None]
    pred = np.broadcast_to(
        ndvi.mean(axis=(1, 2))[:, None, None, None] - ramp, (len(ndvi), 1, 64, 64)
    )
    anchors = np.stack([chips.row.values, chips.col.values], axis=1)
    preds = xr.DataArray(pred, dims=("chip", "band", "y", "x")).assign_coords(
        row=("chip", chips.row.values), col=("chip", chips.col.values)
    )
    out = stitch(scene, preds)
    assert out.dims == ("band", "y", "x") and out.shape == (1, 700, 600)
    assert out.rio.crs == scene.rio.crs and out.rio.transform() == scene.rio.transform()
    window = patchflow.make_window("hann", (64, 64))
    expect = brute_stitch((700, 600), pred, anchors, window)
    got = out.values
    assert np.array_equal(np.isnan(got), np.isnan(expect))
    assert np.nanmax(np.abs(got - expect)) < 1e-6
    # uncovered pixels are NaN, covered ones are finite
    covered = np.zeros((700, 600), bool)
    for r, c in anchors:
        covered[r : r + 64, c : c + 64] = True
    assert np.array_equal(np.isfinite(got[0]), covered)
    assert not covered.all()


def test_stitch_regular_anchors_equals_apply(scene) -> None:
    """On the regular grid, stitching chip outputs equals the engine's overlap-add."""

    def chip_mean(chip: np.ndarray) -> np.ndarray:
        return np.broadcast_to(
            chip.astype(np.float32).mean(axis=(-2, -1), keepdims=True), chip.shape
        )

    size, stride = 128, 96
    engine = scene.patch.apply(chip_mean, size=size, stride=stride, window="hann").values
    chips = sample(scene, RegularStride(stride=stride), size=size)
    outs = xr.apply_ufunc(chip_mean, chips, dask="allowed")
    got = stitch(scene, outs, window="hann").values
    np.testing.assert_allclose(got, engine, rtol=1e-5)


def test_stitch_numpy_outputs_and_errors(scene) -> None:
    anchors = np.array([[0, 0], [100, 100]])
    ones = np.ones((2, 32, 32), np.float32)
    out = stitch(scene, ones, anchors, window="boxcar", chunks=256)
    assert out.dims == ("y", "x") and out.data.chunksize == (256, 256)
    values = out.values
    assert np.nansum(values) == 2 * 32 * 32 and np.isnan(values).sum() == 700 * 600 - 2048
    with pytest.raises(ParameterError, match="anchors"):
        stitch(scene, ones)
    with pytest.raises(ParameterError, match="outside"):
        stitch(scene, ones, np.array([[0, 0], [690, 0]]))
    with pytest.raises(ParameterError, match="2 chip outputs but 1"):
        stitch(scene, ones, anchors[:1])


# --------------------------------------------------------------------------- polygons


def test_polygon_chips(scene, scene_values) -> None:
    pytest.importorskip("shapely")
    import rasterio.features
    from shapely.geometry import Point

    t = scene.rio.transform()
    geoms = [
        Point(t.c + 1000, t.f - 2000).buffer(400),
        Point(t.c - 10_000, t.f).buffer(10),  # outside
        Point(t.c + 5990, t.f - 6990).buffer(300),  # crosses the bottom-right corner
    ]
    chips = list(polygon_chips(scene, geoms))
    assert [c.index for c in chips] == [0, 2]
    for chip, geom in zip(chips, [geoms[0], geoms[2]], strict=True):
        r0, r1, c0, c1 = chip.window
        full = rasterio.features.rasterize(
            [(geom, 1)], out_shape=(700, 600), transform=t, fill=0, dtype="uint8"
        ).astype(bool)
        assert full.sum() == chip.mask.sum() > 0
        assert np.array_equal(full[r0:r1, c0:c1], chip.mask)
        assert np.array_equal(chip.data.values, scene_values[:, r0:r1, c0:c1])


def test_explicit_and_stitch_with_lazy_operator(scene) -> None:
    """End to end: Explicit anchors → lazy op on chips → stitched map, never computed early."""
    anchors = np.array([[10, 20], [40, 60], [300, 500]])
    chips = sample(scene, Explicit(anchors), size=(64, 80))
    pred = chips.astype(np.float32) * 2
    out = stitch(scene, pred, window="boxcar")
    assert isinstance(out.data, da.Array)
    got = out.values
    ref = scene.values.astype(np.float32) * 2
    assert np.allclose(got[:, 10:74, 20:100], ref[:, 10:74, 20:100])
    assert np.isnan(got[:, 200, 200]).all()


def test_no_chips(scene) -> None:
    chips = sample(scene, Random(0), size=32, labels=label_raster(scene))
    assert chips.shape == (0, 2, 32, 32) and chips.values.shape == (0, 2, 32, 32)
    assert chips.label.values.shape == (0, 32, 32)
    assert np.isnan(stitch(scene, chips.astype(np.float32)).values).all()


# --------------------------------------------------------------------------- stitching
# through the aggregators: every agg x every sampler against a plain numpy reference

AGGS = tuple(patchflow.AGGREGATIONS)
#: aggregations whose result is shaped by the window (the others weigh every chip 1)
WEIGHTED = {name for name, cls in patchflow.AGGREGATIONS.items() if cls.weighted}
#: chip outputs are (mean, variance) along the first output axis
PAIRED = {"inverse_variance"}
N_CLASSES = 4
SMALL = (150, 130)
CHIP = (24, 20)


@pytest.fixture(scope="module")
def stitch_scene(scene_factory: Callable[..., xr.DataArray]) -> xr.DataArray:
    return scene_factory(SMALL, seed=7, chunks=(48, 40))


def small_sampler(kind: str, scene: xr.DataArray) -> Sampler:
    """The samplers of :mod:`patchflow.plan.samplers`, sized so most leave holes."""
    h, w = CHIP
    if kind == "regular":
        return RegularStride(stride=(17, 15))  # full cover
    if kind == "regular_gaps":
        return RegularStride(stride=(30, 27), boundary="drop")  # strips left uncovered
    if kind == "random":
        return Random(14, seed=5)
    if kind == "jittered":
        return JitteredStride(step=(26, 23), jitter=(6, 5), seed=2)
    if kind == "poisson":
        return PoissonDisk(28.0, seed=3)
    if kind == "explicit":
        top = (SMALL[0] - h, SMALL[1] - w)
        return Explicit(
            [[0, 0], [0, 0], [top[0], top[1]], [50, 3], [61, 90], [5, top[1]], [100, 47], [61, 91]]
        )
    assert kind == "stratified"
    red = scene.sel(band="red").values.astype(np.float64)
    labels = np.digitize(red, np.quantile(red, [1 / 3, 2 / 3])).astype(np.uint8)
    return Stratified(labels, 3, seed=1)


SAMPLERS = ("regular", "regular_gaps", "random", "jittered", "poisson", "explicit", "stratified")
#: (agg, kind of chip outputs): float outputs carry NaNs, int outputs are never 0 (the
#: scene's nodata, which integer max/min/centre results inherit)
CASES = (
    ("overlap_add", "float"),
    ("overlap_add", "int"),
    ("mean", "float"),
    ("max", "float"),
    ("max", "int"),
    ("min", "float"),
    ("min", "int"),
    ("vote", "int"),
    ("vote", "float"),
    ("soft_vote", "float"),
    ("centre", "float"),
    ("centre", "int"),
    ("sum", "float"),
    ("sum", "int"),
    ("weighted_sum", "float"),
    ("weighted_sum", "int"),
    ("mean_std", "float"),
    ("mean_std", "int"),
    ("inverse_variance", "float"),
    ("median", "float"),
    ("median", "int"),
    ("mode", "float"),
    ("mode", "int"),
)


def test_cases_cover_every_aggregation() -> None:
    assert {agg for agg, _ in CASES} == set(patchflow.AGGREGATIONS)


def make_outputs(chips: np.ndarray, agg: str, kind: str, seed: int = 0) -> np.ndarray:
    """Chip outputs that disagree between overlapping chips, with NaN holes for floats."""
    rng = np.random.default_rng(seed)
    n = len(chips)
    x = chips.astype(np.float64)
    idx = np.arange(n, dtype=np.float64)[:, None, None, None]
    if agg == "vote":
        out = (np.floor(x[:, :1] / 3) + idx) % N_CLASSES
    elif agg == "soft_vote":
        # whole-number scores: ties between classes are exact ties in both implementations
        out = np.concatenate(
            [np.floor(x[:, :1] / (5 + k)) % 9 + (idx + k) % 4 for k in range(N_CLASSES)], axis=1
        )
    elif kind == "int":
        out = (np.floor(x / 2) + 37 * idx) % 997 + 1
        if agg == "mode":  # few distinct values, so chips agree and tie
            out = np.floor(x / 300) % 4 + 1 + idx % 2
    elif agg == "mode":
        out = (np.floor(x / 400) % 3 + idx % 2) / 4
    elif agg in PAIRED:
        mean = x[:, :1] / 1000 + rng.normal(0, 1, (n, 1, 1, 1))
        out = np.concatenate([mean, rng.uniform(0.25, 4.0, mean.shape)], axis=1)
    else:
        scale = rng.uniform(0.5, 2.0, (n, 1, 1, 1))
        out = x * scale / 1000 + rng.normal(0, 1, (n, 1, 1, 1))
    if kind == "int":
        return out.astype(np.uint8 if agg == "vote" else np.int16)
    out = out.astype(np.float32)
    if n:
        out[rng.random(out.shape) < 0.03] = np.nan  # scattered, per band
        out[0, ..., 2:9, 3:12] = np.nan  # a hole in the first chip
        out[n // 2] = np.nan  # a chip that is NaN everywhere
        if n > 2:
            out[1, :1, :, :] = np.inf  # one band of a chip non-finite
    return out


def reference_stitch(
    shape: tuple[int, int],
    outs: np.ndarray,
    anchors: np.ndarray,
    agg: str,
    window: patchflow.plan.Window,
) -> tuple[np.ndarray, np.ndarray]:
    """Plain numpy: loop over chips, per-pixel merge. Returns ``(values, valid)``."""
    n, *lead, h, w = outs.shape
    H, W = shape
    is_float = outs.dtype.kind == "f"
    weights = []
    for r, c in anchors:
        if agg in WEIGHTED:
            flags = (r == 0, r + h == H, c == 0, c + w == W)
            weights.append(window.weights(*flags).astype(np.float64))
        else:
            weights.append(np.ones((h, w)))
    ok = np.isfinite(outs) if is_float else np.ones(outs.shape, bool)
    spot = [(..., slice(r, r + h), slice(c, c + w)) for r, c in anchors]
    full = (*lead, H, W)
    if agg in ("overlap_add", "mean", "soft_vote"):
        num, den = np.zeros(full), np.zeros(full)
        for k in range(n):
            num[spot[k]] += np.where(ok[k], outs[k].astype(np.float64), 0) * weights[k]
            den[spot[k]] += np.where(ok[k], weights[k], 0)
        valid = den > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            value = np.where(valid, num / np.where(valid, den, 1), 0)
        if agg == "soft_vote":
            return np.argmax(value, axis=0), valid.all(axis=0)
        return value, valid
    if agg in ("max", "min"):
        best = np.zeros(full)
        valid = np.zeros(full, bool)
        for k in range(n):
            cur, seen = best[spot[k]], valid[spot[k]]
            new = outs[k].astype(np.float64)
            better = new > cur if agg == "max" else new < cur
            take = ok[k] & (~seen | better)
            best[spot[k]] = np.where(take, new, cur)
            valid[spot[k]] = seen | ok[k]
        return best, valid
    if agg == "vote":
        count = np.zeros((N_CLASSES, *full))
        wsum = np.zeros((N_CLASSES, *full))
        for k in range(n):
            for cls in range(N_CLASSES):
                eq = ok[k] & (outs[k] == cls)
                count[cls][spot[k]] += eq
                wsum[cls][spot[k]] += eq * weights[k]
        label = np.zeros(full, np.int64)
        top_n, top_w = np.zeros(full), np.zeros(full)
        for cls in range(N_CLASSES):  # ascending: an exact tie keeps the lower label
            better = (count[cls] > top_n) | ((count[cls] == top_n) & (wsum[cls] > top_w))
            label = np.where(better, cls, label)
            top_n = np.where(better, count[cls], top_n)
            top_w = np.where(better, wsum[cls], top_w)
        return label, top_n > 0
    if agg in ("sum", "weighted_sum", "mean_std"):
        wsum, num, count = np.zeros(full), np.zeros(full), np.zeros(full)
        for k in range(n):
            wk = np.where(ok[k], weights[k], 0)
            wsum[spot[k]] += wk
            num[spot[k]] += wk * np.where(ok[k], outs[k].astype(np.float64), 0)
            count[spot[k]] += ok[k]
        if agg != "mean_std":
            return num, count > 0
        valid = wsum > 0
        mean = np.where(valid, num / np.where(valid, wsum, 1), 0)
        m2 = np.zeros(full)  # second pass: the textbook two-pass variance
        for k in range(n):
            dev = np.where(ok[k], outs[k].astype(np.float64), 0) - mean[spot[k]]
            m2[spot[k]] += np.where(ok[k], weights[k], 0) * dev**2
        std = np.sqrt(np.where(valid, m2 / np.where(valid, wsum, 1), 0))
        return np.stack([mean, std]), np.stack([valid, valid])
    if agg in PAIRED:
        pair_ok = ok[:, 0] & ok[:, 1]
        s_a, s_ax, s_b = (np.zeros((H, W)) for _ in range(3))
        for k in range(n):
            mean_k, var_k = outs[k].astype(np.float64)
            a = np.where(pair_ok[k], weights[k] / np.where(pair_ok[k], var_k, 1), 0)
            s_a[spot[k]] += a
            s_ax[spot[k]] += a * np.where(pair_ok[k], mean_k, 0)
            s_b[spot[k]] += a * weights[k]
        valid = s_a > 0
        safe = np.where(valid, s_a, 1)
        value = np.stack([s_ax / safe, s_b / safe**2])
        return np.where(valid, value, 0), np.stack([valid, valid])
    if agg in ("median", "mode"):
        stack = np.full((n, *full), np.nan)  # every chip's value, NaN where it has none
        for k in range(n):
            stack[k][spot[k]] = np.where(ok[k], outs[k].astype(np.float64), np.nan)
        valid = np.isfinite(stack).any(axis=0)
        if agg == "median":
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels
                return np.where(valid, np.nanmedian(stack, axis=0), 0), valid
        return mode_of(stack), valid
    assert agg == "centre"
    dist = np.full(full, np.inf)
    value = np.zeros(full)
    for k in range(n):
        py = np.arange(h)[:, None] + 0.5 - h / 2  # pixel centre minus chip centre
        px = np.arange(w)[None, :] + 0.5 - w / 2
        d = np.broadcast_to(py**2 + px**2, outs[k].shape)
        take = ok[k] & (d < dist[spot[k]])  # strict: ties keep the lower chip index
        dist[spot[k]] = np.where(take, d, dist[spot[k]])
        value[spot[k]] = np.where(take, outs[k], value[spot[k]])
    return value, np.isfinite(dist)


def result_dtype(agg: str, outs: np.ndarray) -> np.dtype:
    if agg in ("overlap_add", "mean", "sum", "weighted_sum", "mean_std", "median", *PAIRED):
        return outs.dtype if outs.dtype.kind == "f" else np.dtype(np.float32)
    if agg == "soft_vote" or (agg == "vote" and outs.dtype.kind == "f"):
        return np.dtype(np.uint8)
    return outs.dtype


def covered(shape: tuple[int, int], anchors: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, bool)
    for r, c in anchors:
        out[r : r + size[0], c : c + size[1]] = True
    return out


@pytest.mark.parametrize("sampler_kind", SAMPLERS)
@pytest.mark.parametrize(("agg", "kind"), CASES)
def test_stitch_every_agg_every_sampler_matches_numpy(
    stitch_scene, agg, kind, sampler_kind
) -> None:
    chips = sample(stitch_scene, small_sampler(sampler_kind, stitch_scene), size=CHIP)
    anchors = np.stack([chips.row.values, chips.col.values], axis=1)
    assert len(anchors) >= 5
    outs = make_outputs(chips.values, agg, kind, seed=len(anchors))
    lazy_outs = da.from_array(outs, chunks=(3, *outs.shape[1:]))  # several source chunks
    with dask.config.set(scheduler=refuse):  # building the graph computes nothing
        out = stitch(
            stitch_scene,
            lazy_outs,
            anchors,
            agg=agg,
            n_classes=N_CLASSES if agg == "vote" else None,
            window="hann",
            chunks=(37, 29),  # irregular blocks, unrelated to the scene's chunks
        )
    got = out.values
    window = patchflow.make_window("hann", CHIP)
    value, valid = reference_stitch(SMALL, outs, anchors, agg, window)
    dtype = result_dtype(agg, outs)
    assert got.dtype == dtype and out.dtype == dtype
    assert out.dims[-2:] == ("y", "x") and got.shape == value.shape
    holes = ~covered(SMALL, anchors, CHIP)
    if sampler_kind != "regular":
        assert holes.any()  # uncovered pixels are part of every case but the full grid
    assert not valid[..., holes].any()
    assert out.attrs["uncovered_pixels"] == int(holes.sum())  # counted, from geometry
    stats = patchflow.AGGREGATIONS[agg].stat_names
    assert (out.dims[0] == "stat") == bool(stats)
    if stats:
        assert list(out["stat"].values) == list(stats)
    if dtype.kind == "f":
        assert np.isnan(out.rio.nodata)
        assert np.array_equal(np.isnan(got), ~valid)
        np.testing.assert_allclose(got[valid], value[valid], rtol=2e-6, atol=1e-6)
    else:
        # integer results: the scene's nodata 0 for values, the dtype's max for labels
        expect_nodata = np.iinfo(dtype).max if agg in ("vote", "soft_vote") else 0
        assert out.rio.nodata == expect_nodata
        assert np.array_equal(got, np.where(valid, value, expect_nodata).astype(dtype))


def refuse(*args, **kwargs):
    raise AssertionError("something was computed while building the graph")


@pytest.mark.parametrize("agg", AGGS)
def test_stitch_graph_is_lazy_blockwise_and_named(stitch_scene, agg) -> None:
    chips = sample(stitch_scene, Random(9, seed=2), size=CHIP, chips_per_task=2)
    op = chips.astype(np.float32)
    if agg == "soft_vote":
        op = xr.concat([op, op / 2], dim="band")
        op = op.copy(data=op.data.rechunk({1: -1}))  # the classes in one chunk
    elif agg == "vote":
        op = op % N_CLASSES
    kw = {"agg": agg, "n_classes": N_CLASSES if agg == "vote" else None, "chunks": 50}
    with dask.config.set(scheduler=refuse):
        out = stitch(stitch_scene, op, **kw)
        again = stitch(stitch_scene, op, **kw)
    assert isinstance(out.data, da.Array)
    name = out.data.name
    assert name == again.data.name  # deterministic keys
    assert name.startswith(STITCH_PREFIX + "-") and STITCH_PREFIX == "patchflow-anchors-stitch"
    assert not name.startswith(APPLY_STITCH_PREFIX + "-")
    other = "max" if agg != "max" else "min"
    if agg not in ("vote", "soft_vote"):
        assert stitch(stitch_scene, op, **{**kw, "agg": other}).data.name != name
    # one task per output block, depending only on the chip chunks that touch it
    graph = out.data.__dask_graph__()
    layer = graph.layers[name]
    anchors = np.stack([chips.row.values, chips.col.values], axis=1)
    source = op.data.name
    starts = np.concatenate([[0], np.cumsum(op.data.chunks[0])])
    assert len(layer) == 3 * 3  # 150x130 in 50-px blocks
    for key in layer:
        i, j = key[-2:]
        y0, x0 = 50 * i, 50 * j
        touching = (
            (anchors[:, 0] < y0 + 50)
            & (anchors[:, 0] + CHIP[0] > y0)
            & (anchors[:, 1] < x0 + 50)
            & (anchors[:, 1] + CHIP[1] > x0)
        )
        want = {int(np.searchsorted(starts, k, side="right") - 1) for k in np.flatnonzero(touching)}
        deps = {d[1] for d in graph.get_all_dependencies()[key] if d[0] == source}
        assert deps == want, (key, deps, want)


@pytest.fixture(scope="module")
def apply_scene(scene_factory: Callable[..., xr.DataArray]) -> xr.DataArray:
    return scene_factory((230, 210), seed=2, chunks=(96, 80))


def _apply_op(agg: str, kind: str):
    def op(chips: np.ndarray) -> np.ndarray:
        x = chips.astype(np.float64)  # apply hands uint16 with nodata over as float64
        m = np.floor(x.mean(axis=(-2, -1), keepdims=True))
        if agg == "vote":
            return ((np.floor(x[:, :1] / 5) + np.floor(m[:, :1] / 3)) % N_CLASSES).astype(np.uint8)
        if agg == "soft_vote":
            scores = [np.floor(x[:, :1] / (7 + k)) % 11 + m[:, 1:2] % (k + 2) for k in range(3)]
            return np.concatenate(scores, axis=1).astype(np.float32)
        if kind == "int":
            return (np.floor(x[:, :1] / 10) + m[:, 1:2]).astype(np.int32)
        mean = x[:, :1] * 0.01 + m[:, 1:2]
        if agg in PAIRED:  # (mean, variance), variance > 0
            var = np.broadcast_to(1 + m[:, :1] % 3, mean.shape)
            return np.concatenate([mean, var], axis=1).astype(np.float32)
        return mean.astype(np.float32)

    return op


@pytest.mark.parametrize(
    ("agg", "kind"),
    [(a, "float") for a in AGGS] + [("max", "int"), ("min", "int"), ("centre", "int")],
)
def test_stitch_regular_anchors_equals_apply_every_agg(apply_scene, agg, kind) -> None:
    """On the regular grid, stitching chip outputs equals apply, for every aggregation."""
    size, stride = (40, 36), (30, 28)
    op = _apply_op(agg, kind)
    n_classes = N_CLASSES if agg == "vote" else None
    engine = patchflow.apply(
        apply_scene,
        op,
        size=size,
        stride=stride,
        window="hann",
        agg=agg,
        n_classes=n_classes,
        batched=True,
    )
    chips = sample(apply_scene, RegularStride(stride=stride), size=size)
    grid = apply_scene.patch.grid(size=size, stride=stride)
    anchors = np.stack([chips.row.values, chips.col.values], axis=1)
    assert np.array_equal(anchors, grid.grid.anchors)  # same chips, same order (chip ids)
    probe = op(np.ones((1, 2, *size), np.uint16))
    outs = chips.data.map_blocks(
        op,
        dtype=probe.dtype,
        chunks=(chips.data.chunks[0], (probe.shape[1],), (size[0],), (size[1],)),
        meta=np.empty((0,) * 4, probe.dtype),
    )
    got = stitch(apply_scene, outs, anchors, agg=agg, n_classes=n_classes)
    assert got.dtype == engine.dtype and got.shape == engine.shape
    assert got.dims == engine.dims or agg != "soft_vote"
    assert (got.rio.nodata is None) == (engine.rio.nodata is None)
    if engine.rio.nodata is not None and not np.isnan(engine.rio.nodata):
        assert got.rio.nodata == engine.rio.nodata
    if engine.dtype.kind == "f":
        np.testing.assert_allclose(got.values, engine.values, rtol=1e-6)
    else:
        np.testing.assert_array_equal(got.values, engine.values)


def test_stitch_integer_nodata_rules(stitch_scene) -> None:
    anchors = np.array([[0, 0], [10, 15], [100, 90]])
    size = (30, 40)
    rng = np.random.default_rng(0)
    outs = rng.integers(1, 100, (3, *size)).astype(np.int16)
    # the scene's nodata (0) marks the uncovered pixels of an integer result
    out = stitch(stitch_scene, outs, anchors, agg="max")
    assert out.rio.nodata == 0 and out.dtype == np.int16
    hole = ~covered(SMALL, anchors, size)
    assert (out.values[hole] == 0).all() and (out.values[~hole] > 0).all()
    # nodata= wins; a valid value equal to it is refused (never silently masked)
    out = stitch(stitch_scene, outs, anchors, agg="centre", nodata=-5)
    assert out.rio.nodata == -5 and (out.values[hole] == -5).all()
    clash = outs.copy()
    clash[1, 15, 20] = -5  # chip 1's centre pixel: chip 1 wins it
    with pytest.raises(NodataCollisionError, match="-5"):
        stitch(stitch_scene, clash, anchors, agg="centre", nodata=-5).compute()
    with pytest.raises(ParameterError, match="cannot be stored"):
        stitch(stitch_scene, outs, anchors, agg="min", nodata=1e6)
    # no input nodata: the dtype's default when pixels can be invalid, none at full cover
    bare = xr.DataArray(np.zeros(SMALL, np.uint16), dims=("y", "x"))
    out = stitch(bare, outs, anchors, agg="min")
    assert out.rio.nodata == np.iinfo(np.int16).min
    assert (out.values[hole] == np.iinfo(np.int16).min).all()
    grid = RegularStride(stride=(25, 30)).anchors(SMALL, size)
    full = rng.integers(0, 100, (len(grid), *size)).astype(np.uint8)
    out = stitch(bare, full, grid, agg="centre")
    assert out.rio.nodata is None and out.dtype == np.uint8
    ref, valid = reference_stitch(SMALL, full, grid, "centre", patchflow.make_window("hann", size))
    assert valid.all() and np.array_equal(out.values, ref)
    # a float result: NaN in memory, nodata= as the encoded (on-disk) value
    out = stitch(stitch_scene, outs.astype(np.float32), anchors, nodata=-9999.0)
    assert out.rio.encoded_nodata == -9999.0 and np.isnan(out.values[hole]).all()


def test_stitch_median_layers_bounded_by_observed_coverage(stitch_scene) -> None:
    """median/mode keep as many layers as the anchors put chips over one pixel (exact,
    from geometry); beyond MAX_LAYERS the job is refused when the graph is built."""
    from patchflow.engine.aggregate import MAX_LAYERS
    from patchflow.errors import CoverageError

    size = (16, 16)
    rng = np.random.default_rng(1)
    stacked = np.array([[5, 7]] * MAX_LAYERS + [[100, 90]])  # 64 chips on one spot
    outs = rng.normal(size=(len(stacked), 1, *size)).astype(np.float32)
    got = stitch(stitch_scene, outs, stacked, agg="median", chunks=64)
    want = np.median(outs[:MAX_LAYERS, 0], axis=0)
    np.testing.assert_allclose(got.values[0, 5:21, 7:23], want, rtol=1e-6)
    assert got.attrs["uncovered_pixels"] == SMALL[0] * SMALL[1] - 2 * 16 * 16
    with pytest.raises(CoverageError, match=str(MAX_LAYERS + 1)):
        stitch(stitch_scene, np.concatenate([outs, outs[:1]]), [*stacked, [5, 7]], agg="mode")


def test_stitch_agg_errors(stitch_scene) -> None:
    anchors = np.array([[0, 0], [10, 15]])
    outs = np.ones((2, 3, 16, 16), np.float32)
    with pytest.raises(ParameterError, match="unknown agg"):
        stitch(stitch_scene, outs, anchors, agg="medium")
    with pytest.raises(ParameterError, match="n_classes"):
        stitch(stitch_scene, outs, anchors, agg="vote")
    with pytest.raises(DimensionError, match="class"):
        stitch(stitch_scene, outs[:, 0], anchors, agg="soft_vote")
    with pytest.raises(ParameterError, match="numbers"):
        stitch(stitch_scene, outs.astype(np.complex64), anchors)
    # labels outside [0, n_classes) are refused when the block is computed
    with pytest.raises(OperatorError, match="n_classes"):
        stitch(stitch_scene, outs * 7, anchors, agg="vote", n_classes=3).compute()
    # soft_vote reduces the class axis; the chip-dim coordinates do not leak
    lab = stitch(stitch_scene, outs, anchors, agg="soft_vote")
    assert lab.dims == ("y", "x") and lab.dtype == np.uint8 and lab.rio.nodata == 255
