"""``agg="sum"``, ``"weighted_sum"`` and ``"mean_std"`` through ``patchflow.apply`` against a
hand-written numpy loop over the same chip grid (``patchflow.plan_grid`` anchors, weights
from ``patchflow.make_window``), with non-pointwise operators so chip boundaries matter."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import patchflow
from patchflow.engine.prepare import POINTWISE_AGGS
from patchflow.errors import ParameterError
from patchflow.ops import Lambda

SIZE, STRIDE = 16, 6
CHUNKINGS = [(-1, -1), (17, 23), (9, 40), (31, 11)]


def _scene(values: np.ndarray, chunks: tuple[int, int]) -> xr.DataArray:
    arr = xr.DataArray(values, dims=("band", "y", "x"))
    ys, xs = np.arange(values.shape[1]) * -10.0, np.arange(values.shape[2]) * 10.0
    arr = arr.assign_coords(y=ys, x=xs)
    arr = arr.rio.write_crs("EPSG:32633")
    return arr.chunk({"band": -1, "y": chunks[0], "x": chunks[1]})


def _engine(
    values: np.ndarray, op: Callable[..., np.ndarray], chunks: tuple[int, int], **kw: Any
) -> xr.DataArray:
    with dask.config.set(scheduler="synchronous"):
        return patchflow.apply(_scene(values, chunks), op, size=SIZE, stride=STRIDE, **kw).compute()


def _chips(
    values: np.ndarray, fn: Callable[[np.ndarray], np.ndarray], window: str
) -> tuple[np.ndarray, np.ndarray]:
    """Every chip's output and window weights placed on the full scene (NaN / 0 elsewhere)."""
    _, height, width = values.shape
    layout = patchflow.plan_grid(_scene(values, (-1, -1)), size=SIZE, stride=STRIDE)
    win = patchflow.make_window(window, (SIZE, SIZE))
    outs, wts = [], []
    for ay, ax in layout.anchors.tolist():
        out = np.asarray(fn(values[:, ay : ay + SIZE, ax : ax + SIZE]))
        placed = np.full((out.shape[0], height, width), np.nan)
        placed[:, ay : ay + SIZE, ax : ax + SIZE] = out
        wk = win.weights(ay == 0, ay + SIZE >= height, ax == 0, ax + SIZE >= width)
        weight = np.zeros((height, width))
        weight[ay : ay + SIZE, ax : ax + SIZE] = wk
        outs.append(placed)
        wts.append(np.broadcast_to(weight, placed.shape))
    out_all, w_all = np.stack(outs), np.stack(wts)
    # a non-finite output (or no chip) contributes nothing
    w_all = np.where(np.isfinite(out_all), w_all, 0.0)
    return out_all, w_all


def _wiggle(chip: np.ndarray) -> np.ndarray:
    """Not pointwise: each chip shifts its pixels by its own mean."""
    return (chip[:1] + np.nanmean(chip)).astype(np.float32)


def _whole(chip: np.ndarray) -> np.ndarray:
    """Whole numbers, different per chip (exact sums expected)."""
    return (np.floor(chip[:1] * 100) + np.floor(np.nanmean(chip) * 1000)).astype(np.float32)


def _values(seed: int = 0, shape: tuple[int, int, int] = (2, 45, 52)) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32)


# ---------------------------------------------------------------------------------------
# sum / weighted_sum
# ---------------------------------------------------------------------------------------


def test_new_aggs_are_not_pointwise_shortcuts() -> None:
    for agg in ("sum", "weighted_sum", "mean_std"):
        assert agg not in POINTWISE_AGGS


@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_sum_of_whole_numbers_is_exact(chunks: tuple[int, int]) -> None:
    values = _values()
    got = _engine(values, Lambda(_whole), chunks, agg="sum")
    out_all, _ = _chips(values, _whole, "boxcar")
    hit = np.isfinite(out_all)
    expected = np.where(hit, out_all, 0).sum(axis=0)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_array_equal(got.values, expected.astype(np.float32))


def test_sum_counts_chips_and_pointwise_op_gives_k_times_value() -> None:
    values = _values(1)
    ones = _engine(values, Lambda(lambda c: np.ones_like(c[:1])), (17, 23), agg="sum")
    out_all, _ = _chips(values, lambda c: np.ones_like(c[:1]), "boxcar")
    count = np.isfinite(out_all).sum(axis=0)
    np.testing.assert_array_equal(ones.values, count)
    assert count.max() > 1  # the chips overlap
    # a pointwise op must not take the once-per-pixel shortcut: K chips sum to K * value
    twice = Lambda(lambda c: 2 * c[:1], pointwise=True)
    got = _engine(values, twice, (17, 23), agg="sum")
    np.testing.assert_allclose(got.values, count * 2 * values[:1], rtol=1e-6)


@pytest.mark.parametrize("chunks", CHUNKINGS)
@pytest.mark.parametrize("window", ["hann", "triangular"])
def test_weighted_sum_matches_numpy(chunks: tuple[int, int], window: str) -> None:
    values = _values(2)
    got = _engine(values, Lambda(_wiggle), chunks, agg="weighted_sum", window=window)
    out_all, w_all = _chips(values, _wiggle, window)
    expected = np.where(w_all > 0, out_all * w_all, 0).sum(axis=0)
    np.testing.assert_allclose(got.values, expected, rtol=1e-6, atol=1e-6)


def test_weighted_sum_of_whole_numbers_is_exact() -> None:
    values = _values(3)
    got = _engine(values, Lambda(_whole), (9, 40), agg="weighted_sum")
    out_all, w_all = _chips(values, _whole, "hann")
    expected = np.where(w_all > 0, out_all * w_all, 0).sum(axis=0)
    np.testing.assert_array_equal(got.values, expected.astype(np.float32))


@pytest.mark.parametrize("agg", ["sum", "weighted_sum", "mean_std"])
def test_pixels_no_valid_chip_reaches_are_nan(agg: str) -> None:
    values = _values(4)
    values[:, 20:24, 30:33] = np.nan  # every chip over these pixels outputs NaN there

    def op(chip: np.ndarray) -> np.ndarray:
        return (chip[:1] * 2 + np.nanmean(chip)).astype(np.float32)

    got = _engine(values, Lambda(op), (17, 23), agg=agg).values
    assert np.isnan(got[..., 20:24, 30:33]).all()
    assert np.isfinite(np.delete(got, np.s_[20:24], axis=-2)).all()
    out_all, w_all = _chips(values, op, "boxcar" if agg == "sum" else "hann")
    ok = np.isfinite(out_all).any(axis=0)
    if agg == "mean_std":
        expected = _mean_std_reference(out_all, np.where(ok, w_all, 1.0))
    else:
        expected = np.where(w_all > 0, out_all * w_all, 0).sum(axis=0)
    expected = np.where(ok, expected, np.nan)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6, equal_nan=True)


def test_sum_accumulates_across_passes(tmp_path: Path) -> None:
    values = _values(5)
    store = tmp_path / "sum.zarr"
    scene = _scene(values, (17, 23))
    kw: dict[str, Any] = {"size": SIZE, "stride": STRIDE, "agg": "sum"}
    with dask.config.set(scheduler="synchronous"):
        patchflow.run(scene, Lambda(_whole), store=store, keep_sums=True, **kw)
        report = patchflow.run(scene, Lambda(_whole), store=store, mode="accumulate", **kw)
        got = report.open(verify=True).values
    out_all, _ = _chips(values, _whole, "boxcar")
    expected = 2 * np.where(np.isfinite(out_all), out_all, 0).sum(axis=0)
    np.testing.assert_array_equal(got, expected.astype(np.float32))


def test_mean_std_cannot_accumulate(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="cannot accumulate"):
        patchflow.run(
            _scene(_values(6), (-1, -1)),
            Lambda(_wiggle),
            store=tmp_path / "ms.zarr",
            keep_sums=True,
            size=SIZE,
            stride=STRIDE,
            agg="mean_std",
        )


# ---------------------------------------------------------------------------------------
# mean_std
# ---------------------------------------------------------------------------------------


def _mean_std_reference(out_all: np.ndarray, w_all: np.ndarray) -> np.ndarray:
    """``np.average`` per pixel over the chips covering it (stacked, float64)."""
    x = np.where(w_all > 0, out_all, 0.0)
    mean = np.average(x, weights=w_all, axis=0)
    std = np.sqrt(np.average((x - mean) ** 2, weights=w_all, axis=0))
    return np.stack([mean, std])


@pytest.mark.parametrize("chunks", CHUNKINGS)
@pytest.mark.parametrize("window", ["hann", "boxcar"])
def test_mean_std_matches_numpy(chunks: tuple[int, int], window: str) -> None:
    values = _values(7)

    def op(chip: np.ndarray) -> np.ndarray:  # two bands, both chip-dependent
        return np.stack([chip[0] * chip.mean(), chip[1] - chip.std()]).astype(np.float64)

    got = _engine(values, Lambda(op), chunks, agg="mean_std", window=window)
    out_all, w_all = _chips(values, op, window)
    expected = _mean_std_reference(out_all, w_all)
    assert got.shape == (2, 2, *values.shape[1:]) and got.dtype == np.float64
    assert float(expected[1].max()) > 1e-3  # chips disagree: the std is not trivially 0
    np.testing.assert_allclose(got.values, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_mean_std_folds_in_steps_match_numpy(dtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A block whose chips are folded batch by batch (more kept outputs than the stash
    holds): each fold leaves raw sums, and a later one settles the state and merges the
    new raw part into it. Same numbers as the numpy reference, offset included."""
    from patchflow.engine import aggregate
    from patchflow.engine.aggregate import MeanStd

    values = _values(9)

    def op(chip: np.ndarray) -> np.ndarray:
        return (np.float32(1e4) + (chip[:1] + chip.mean()) * np.float32(0.1)).astype(dtype)

    settled = {"raw": 0}
    settle = MeanStd._settle

    def spy(self: Any, state: Any) -> None:
        settled["raw"] += bool(state.get("raw"))
        settle(self, state)

    monkeypatch.setattr(aggregate, "STASH_BYTES", 1)
    monkeypatch.setattr(MeanStd, "_settle", spy)
    got = _engine(values, Lambda(op), (17, 23), agg="mean_std", batch_size=2)
    assert settled["raw"] > 0  # later folds really merged into folded states
    out_all, w_all = _chips(values, op, "hann")
    expected = _mean_std_reference(out_all, w_all)
    assert float(expected[1].max()) > 1e-3
    rtol = 1e-7 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(got.values[0], expected[0], rtol=rtol)
    np.testing.assert_allclose(
        got.values[1], expected[1], rtol=100 * rtol, atol=1e-6 if dtype == "float32" else 1e-12
    )


@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_mean_std_large_offset_is_stable(chunks: tuple[int, int]) -> None:
    values = _values(8)

    def op(chip: np.ndarray) -> np.ndarray:
        # 1e4 + a small signal that differs per chip, as float32
        return (np.float32(1e4) + (chip[:1] + chip.mean()) * np.float32(0.1)).astype(np.float32)

    got = _engine(values, Lambda(op), chunks, agg="mean_std")
    out_all, w_all = _chips(values, op, "hann")
    expected = _mean_std_reference(out_all, w_all)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got.values[0], expected[0], rtol=1e-7)
    std = expected[1]
    assert float(std.max()) > 1e-3
    np.testing.assert_allclose(got.values[1], std, rtol=1e-5, atol=1e-6)
    # the naive one-pass formula in the op's float32 really fails here
    x, w = np.where(w_all > 0, out_all, 0).astype(np.float32), w_all.astype(np.float32)
    sw, sx, sxx = w.sum(0), (w * x).sum(0), (w * x * x).sum(0)
    naive = np.sqrt(np.maximum(sxx / sw - (sx / sw) ** 2, 0))
    assert np.max(np.abs(naive - std)) > 1e-2


@pytest.mark.parametrize("order", ["outlier first", "outlier last"])
def test_mean_std_outlier_chip_with_tiny_weight_costs_no_precision(order: str) -> None:
    """The first chip over a pixel often has a tiny window weight there (the pixel is at
    its far edge) and can be an outlier: a running shift taken from it would make float32
    sums round at the outlier's scale. The running mean does not care."""
    from patchflow.engine.aggregate import ChipBatch, make_aggregator

    rng = np.random.default_rng(3)
    shape = (1, 64)
    good = (5 + rng.normal(0, 0.01, (3, 1, *shape))).astype(np.float32)
    outlier = np.full((1, 1, *shape), 1000.0, np.float32)
    outs = np.concatenate([outlier, good] if order == "outlier first" else [good, outlier])
    tiny = np.full(shape, 2.0**-12, np.float32)
    ones = np.ones(shape, np.float32)
    weights = [tiny, ones, ones, ones] if order == "outlier first" else [ones] * 3 + [tiny]
    agg = make_aggregator("mean_std", out_dtype=np.dtype(np.float32), lead=(1,))
    state = agg.new(shape)
    pos = np.zeros((4, 2), np.int64)
    agg.add(state, ChipBatch(outs, pos, weights, None, np.arange(4)))
    got = agg.finalize(state)
    x, w = outs[:, 0].astype(np.float64), np.stack(weights).astype(np.float64)
    mean = np.average(x, weights=w, axis=0)
    std = np.sqrt(np.average((x - mean) ** 2, weights=w, axis=0))
    np.testing.assert_allclose(got[0, 0], mean, rtol=1e-6)
    np.testing.assert_allclose(got[1, 0], std, rtol=1e-5)


def test_mean_std_identical_chips_give_zero_std() -> None:
    values = _values(9)
    got = _engine(values, Lambda(lambda c: c[:1] * 3), (17, 23), agg="mean_std")
    np.testing.assert_allclose(got.values[0], values[:1] * 3, rtol=1e-6)
    np.testing.assert_array_equal(got.values[1], 0)


def test_mean_std_names_its_stat_dim_through_apply_and_run(tmp_path: Path) -> None:
    """The leading axis is a ``stat`` dim labelled mean/std; the op's dims keep their
    labels, also for a time stack processed date by date and through a Zarr store."""
    from patchflow.io.synthetic import make_scene

    scene = make_scene((200, 180), chunks=100).astype("float32")
    op = Lambda(lambda c: c * 1.0)
    out = patchflow.apply(scene, op, agg="mean_std", size=64, stride=48)
    assert out.dims == ("stat", "band", "y", "x")
    assert out.stat.values.tolist() == ["mean", "std"]
    assert out.band.values.tolist() == ["red", "nir"]
    stack = xr.concat([scene, scene + 1], dim="time")
    per_date = patchflow.apply(stack, op, agg="mean_std", size=64, stride=48)
    assert per_date.dims == ("stat", "time", "band", "y", "x")
    # a pointwise value: every chip agrees, so the std is 0 and the mean the value
    np.testing.assert_allclose(per_date.sel(stat="mean").values, stack.values, rtol=1e-6)
    assert float(abs(per_date.sel(stat="std")).max()) <= 1e-3
    stored = patchflow.run(
        scene, op, store=tmp_path / "ms.zarr", agg="mean_std", size=64, stride=48
    ).open()
    assert stored.dims == out.dims and stored.stat.values.tolist() == ["mean", "std"]
    np.testing.assert_allclose(stored.values, out.values, rtol=1e-6)


@pytest.fixture
def fold_paths(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts which way ``mean_std`` folded its chips (by cores or by weight)."""
    from patchflow.engine.aggregate import MeanStd

    calls = {"cores": 0, "weight": 0}
    by_cores, by_weight = MeanStd._deviations_by_cores, MeanStd._deviations_by_weight

    def count_cores(self: Any, *args: Any) -> Any:
        calls["cores"] += 1
        return by_cores(self, *args)

    def count_weight(self: Any, *args: Any) -> Any:
        calls["weight"] += 1
        return by_weight(self, *args)

    monkeypatch.setattr(MeanStd, "_deviations_by_cores", count_cores)
    monkeypatch.setattr(MeanStd, "_deviations_by_weight", count_weight)
    return calls


@pytest.mark.parametrize("window", sorted(patchflow.WINDOWS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("chunks", [(-1, -1), (17, 23)])
def test_mean_std_by_cores_equals_numpy(
    window: str, dtype: str, chunks: tuple[int, int], fold_paths: dict[str, int]
) -> None:
    """On a grid with a separable window (every built-in one), with every pixel valid,
    mean_std takes each element's shift from the chip whose core holds it (the heaviest
    there) and sums deviations outside the cores only: same result as numpy."""
    values = _values(11)

    def op(chip: np.ndarray) -> np.ndarray:
        return (np.float32(1e3) + chip[:1] * chip.mean() * 10).astype(dtype)

    got = _engine(values, Lambda(op), chunks, agg="mean_std", window=window)
    assert fold_paths["cores"] > 0 and fold_paths["weight"] == 0
    out_all, w_all = _chips(values, op, window)
    expected = _mean_std_reference(out_all, w_all)
    assert float(expected[1].max()) > 1e-2
    tight = dtype == "float64"
    np.testing.assert_allclose(got.values[0], expected[0], rtol=1e-12 if tight else 1e-6)
    np.testing.assert_allclose(
        got.values[1], expected[1], rtol=1e-9 if tight else 2e-4, atol=1e-9 if tight else 2e-4
    )


# the fold_paths counters are compared before/after each example, not reset
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    size=st.integers(2, 14),
    step=st.integers(1, 14),
    grid=st.tuples(st.integers(1, 4), st.integers(1, 5)),
    offset=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    per_batch=st.integers(1, 9),
    bands=st.integers(1, 2),
    window=st.sampled_from(["hann", "boxcar", "triangular"]),
    seed=st.integers(0, 2**16),
)
def test_mean_std_grid_fold_equals_numpy(
    size: int,
    step: int,
    grid: tuple[int, int],
    offset: tuple[int, int],
    per_batch: int,
    bands: int,
    window: str,
    seed: int,
    fold_paths: dict[str, int],
) -> None:
    """The grid fold sums each run of a grid row's chips at once (overlaps several steps
    wide, runs cut by batch boundaries, runs of one, several bands): the state it leaves
    gives numpy's weighted mean and std at every element."""
    from patchflow.engine.aggregate import ChipBatch, make_aggregator

    step = min(step, size)
    (rows, cols), (oy, ox) = grid, offset
    anchors = [(oy + i * step, ox + j * step) for i in range(rows) for j in range(cols)]
    shape = (oy + (rows - 1) * step + size + 2, ox + (cols - 1) * step + size + 1)
    weights = patchflow.make_window(window, (size, size)).weights()
    rng = np.random.default_rng(seed)
    outs = (5 + rng.standard_normal((len(anchors), bands, size, size))).astype(np.float32)
    agg = make_aggregator("mean_std", out_dtype=np.dtype(np.float32), lead=(bands,))
    state, folds = agg.new(shape), dict(fold_paths)
    for k in range(0, len(anchors), per_batch):
        part = slice(k, k + per_batch)
        pos = np.array(anchors[part])
        batch = ChipBatch(outs[part], pos, [weights] * len(pos), None, np.arange(k, k + len(pos)))
        agg.add(state, dataclasses.replace(batch, separable=True))
    got = agg.finalize(agg.seal(state, None, None))
    assert fold_paths == {"cores": folds["cores"] + 1, "weight": folds["weight"]}

    out_all = np.zeros((len(anchors), bands, *shape))
    w_all = np.zeros((len(anchors), bands, *shape))
    for k, (y, x) in enumerate(anchors):
        out_all[k, :, y : y + size, x : x + size] = outs[k]
        w_all[k, :, y : y + size, x : x + size] = weights
    covered = w_all.sum(axis=0) > 0
    expected = _mean_std_reference(out_all, np.where(covered, w_all, 1.0))
    assert np.isnan(got[:, ~covered]).all()
    np.testing.assert_allclose(got[0][covered], expected[0][covered], rtol=1e-6)
    np.testing.assert_allclose(got[1][covered], expected[1][covered], atol=2e-5)


def test_mean_std_falls_back_to_weights_where_cores_do_not_apply(
    fold_paths: dict[str, int],
) -> None:
    """Invalid pixels (NaN outputs) or a window whose heaviest chip is not one interval
    per chip take the general fold, with the same numpy result."""
    values = _values(12)

    def holes(chip: np.ndarray) -> np.ndarray:
        out = chip[:1] * chip.mean()
        out[:, :2, :3] = np.nan
        return out

    got = _engine(values, Lambda(holes), (-1, -1), agg="mean_std")
    assert fold_paths["weight"] > 0 and fold_paths["cores"] == 0
    out_all, w_all = _chips(values, holes, "hann")
    reached = w_all.sum(axis=0) > 0
    assert not reached.all()  # the scene's corner pixel is in one chip's hole only
    w_all = np.where(reached, w_all, 1.0)  # (any weight: those pixels are checked apart)
    expected = _mean_std_reference(np.where(np.isfinite(out_all), out_all, 0), w_all)
    np.testing.assert_allclose(got.values[:, reached], expected[:, reached], rtol=1e-5, atol=1e-6)
    assert np.isnan(got.values[:, ~reached]).all()
    # a two-humped separable window: the heaviest chip along an axis is not one interval
    hump = np.r_[np.linspace(0.1, 1, SIZE // 4), np.linspace(1, 0.2, SIZE // 4)]
    hump = np.r_[hump, hump, np.full(SIZE - 2 * len(hump), 0.2)][:SIZE]
    custom = np.outer(hump, hump)
    fold_paths.update(cores=0, weight=0)
    op = Lambda(lambda c: c[:1] * c.mean())
    got = _engine(values, op, (-1, -1), agg="mean_std", window=custom)
    assert fold_paths["weight"] > 0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("chunks", [(17, 23), (9, 40)])
def test_mean_std_stitch_reads_partials_in_place_bit_for_bit(
    dtype: str, chunks: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every output block is finished from cells that read the partials in place (no
    copy of a state; a cell one partial covers is a view of it, whether the block's own
    or a neighbour's: the chip grid need not start at the block's edge) and merge the
    strips several reach: the same bits as merging everything into a fresh whole-block
    state, and the partials are left as they were (a retried stitch task sees the same
    inputs). On a grid with float32 sums the chips' W travels as its two per-axis
    factors."""
    from patchflow.engine.aggregate import MeanStd

    values = _values(13)

    def op(chip: np.ndarray) -> np.ndarray:
        return (np.float32(1e3) + chip[:1] * chip.mean() * 10).astype(dtype)

    seen: dict[str, int] = {"cells": 0, "factors": 0, "blocks": 0}
    before: list[dict[str, np.ndarray]] = []
    after: list[dict[str, np.ndarray]] = []
    stitched = MeanStd.stitched

    def spy(self: Any, shape: Any, pieces: Any, acc: Any) -> Any:
        parts = [part for _, _, part in pieces]
        before.extend(
            {k: v.copy() for k, v in p.items() if isinstance(v, np.ndarray)} for p in parts
        )
        state = stitched(self, shape, pieces, acc)
        seen["blocks"] += 1
        seen["cells"] += "_cells" in state
        seen["factors"] += sum(p["w"] is None for p in parts)
        after.extend({k: v for k, v in p.items() if isinstance(v, np.ndarray)} for p in parts)
        return state

    monkeypatch.setattr(MeanStd, "stitched", spy)
    got = _engine(values, Lambda(op), chunks, agg="mean_std")
    assert seen["cells"] == seen["blocks"] > 0
    # float32 sums take W from geometry (as factors); float64 ones sum it, to the bit
    assert seen["factors"] > 0 if dtype == "float32" else seen["factors"] == 0
    for old, new in zip(before, after, strict=True):
        assert old.keys() == new.keys()
        for key in old:
            np.testing.assert_array_equal(new[key], old[key])
    monkeypatch.setattr(MeanStd, "stitched", stitched)
    monkeypatch.setattr(MeanStd, "in_place_cells", False)  # one whole-block merge
    plain = _engine(values, Lambda(op), chunks, agg="mean_std")
    np.testing.assert_array_equal(got.values, plain.values)
