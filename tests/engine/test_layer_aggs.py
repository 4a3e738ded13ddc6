"""``agg="median"``, ``"mode"`` and ``"inverse_variance"`` against numpy references built
pixel by pixel from the same chip grid (``patchflow.plan_grid`` anchors, windows from
``patchflow.make_window``), through ``patchflow.apply`` at several chunkings (blocks smaller
than, equal to and larger than a chip) and through ``patchflow.run``; the layer bound
(``layers=``, :data:`~patchflow.engine.aggregate.MAX_LAYERS`) and its errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

import patchflow
from patchflow.engine.aggregate import MAX_LAYERS, ChipBatch, Median, make_aggregator
from patchflow.engine.prepare import POINTWISE_AGGS, _most_chips
from patchflow.errors import (
    CoverageError,
    LayerOverflowError,
    OperatorError,
    ParameterError,
    PatchflowError,
)
from patchflow.ops import Lambda
from patchflow.options import Boundary
from patchflow.plan.grid import ChipGrid

SIZE, STRIDE = 16, 6
# blocks smaller than a chip, equal to it, larger, and the whole scene
CHUNKINGS = [(9, 11), (16, 16), (17, 23), (31, 40), (-1, -1)]
SHAPE = (2, 45, 52)


def _scene(values: np.ndarray, chunks: tuple[int, int], nodata: Any = None) -> xr.DataArray:
    arr = xr.DataArray(values, dims=("band", "y", "x"))
    ys, xs = np.arange(values.shape[1]) * -10.0, np.arange(values.shape[2]) * 10.0
    arr = arr.assign_coords(y=ys, x=xs).rio.write_crs("EPSG:32633")
    if nodata is not None:
        arr = arr.rio.write_nodata(nodata)
    return arr.chunk({"band": -1, "y": chunks[0], "x": chunks[1]})


def _engine(
    values: np.ndarray,
    op: Callable[..., np.ndarray],
    chunks: tuple[int, int],
    *,
    size: int = SIZE,
    stride: int = STRIDE,
    nodata: Any = None,
    **kw: Any,
) -> xr.DataArray:
    scene = _scene(values, chunks, nodata)
    with dask.config.set(scheduler="synchronous"):
        return patchflow.apply(scene, op, size=size, stride=stride, **kw).compute()


def _chips(
    values: np.ndarray,
    fn: Callable[[np.ndarray], np.ndarray],
    *,
    size: int = SIZE,
    stride: int = STRIDE,
    window: str = "hann",
    nodata: Any = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every chip's output placed on the full scene, whether each element is a valid
    contribution, and the chip's window weight: ``(n, *lead, H, W)`` twice, ``(n, H, W)``.

    The op sees what patchflow hands it: integer input with nodata as float32 with NaN.
    A float output is valid where finite; a non-float one where the input under it is.
    """
    _, height, width = values.shape
    seen = values
    if nodata is not None:
        seen = np.where(values == nodata, np.nan, values).astype(np.float32)
    in_ok = np.isfinite(seen).all(axis=0)
    layout = patchflow.plan_grid(_scene(values, (-1, -1)), size=size, stride=stride)
    win = patchflow.make_window(window, (size, size))
    outs, oks, wts = [], [], []
    for ay, ax in layout.anchors.tolist():
        ys, xs = slice(ay, ay + size), slice(ax, ax + size)
        out = np.asarray(fn(seen[:, ys, xs]))
        placed = np.zeros((*out.shape[:-2], height, width), out.dtype)
        placed[..., ys, xs] = out
        ok = np.zeros(placed.shape, bool)
        ok[..., ys, xs] = np.isfinite(out) if out.dtype.kind == "f" else in_ok[ys, xs]
        weight = np.zeros((height, width))
        weight[ys, xs] = win.weights(ay == 0, ay + size >= height, ax == 0, ax + size >= width)
        outs.append(placed)
        oks.append(ok)
        wts.append(weight)
    return np.stack(outs), np.stack(oks), np.stack(wts)


def _per_pixel(
    outs: np.ndarray, oks: np.ndarray, reduce: Callable[[np.ndarray], Any], dtype: Any, fill: Any
) -> np.ndarray:
    """``reduce`` over the valid chip values of every element (``fill`` where none)."""
    result = np.full(outs.shape[1:], fill, dtype)
    for idx in np.ndindex(*outs.shape[1:]):
        vals = outs[(slice(None), *idx)][oks[(slice(None), *idx)]]
        if vals.size:
            result[idx] = reduce(vals)
    return result


def _mode(vals: np.ndarray) -> Any:
    """Most frequent value; ties → the smallest (``np.unique`` sorts, argmax takes the first)."""
    uniq, counts = np.unique(vals, return_counts=True)
    return uniq[np.argmax(counts)]


def _values(seed: int = 0, shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def _holes(values: np.ndarray) -> np.ndarray:
    """NaN holes: a block every covering chip sees as NaN, and scattered single pixels."""
    values = values.copy()
    values[:, 20:24, 30:33] = np.nan
    rng = np.random.default_rng(99)
    values[0, rng.integers(0, values.shape[1], 40), rng.integers(0, values.shape[2], 40)] = np.nan
    return values


def _wiggle(chip: np.ndarray) -> np.ndarray:
    """Not pointwise, two output bands: each chip shifts its pixels by its own mean."""
    return (chip + np.nanmean(chip)).astype(np.float32)


def _labels(chip: np.ndarray) -> np.ndarray:
    """int16 labels 0..4 with a per-chip shift, so chips disagree and ties happen."""
    base = np.floor(np.nan_to_num(chip[:1], nan=0.0) / 250.0)
    return (base + int(np.nanmean(chip) * 7) % 2).astype(np.int16)


# ---------------------------------------------------------------------------------------
# median / mode
# ---------------------------------------------------------------------------------------


def test_median_and_mode_are_pointwise_safe_inverse_variance_is_not() -> None:
    assert "median" in POINTWISE_AGGS and "mode" in POINTWISE_AGGS
    assert "inverse_variance" not in POINTWISE_AGGS


@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_median_matches_numpy_with_nan_holes(chunks: tuple[int, int]) -> None:
    values = _holes(_values(1))
    got = _engine(values, Lambda(_wiggle), chunks, agg="median")
    outs, oks, _ = _chips(values, _wiggle)
    expected = _per_pixel(outs, oks, np.median, np.float32, np.nan)
    assert got.dtype == np.float32 and got.shape == SHAPE
    assert np.isnan(got.values[:, 20:24, 30:33]).all()
    assert oks.sum(axis=0).max() > 4  # many chips over a pixel: the median is not trivial
    np.testing.assert_array_equal(got.values, expected)


@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_mode_matches_numpy_with_nan_holes(chunks: tuple[int, int]) -> None:
    values = _holes(_values(2))

    def op(chip: np.ndarray) -> np.ndarray:  # few distinct float values: real repeats
        return (np.floor(chip * 3) + int(np.nanmean(chip) * 10) % 2).astype(np.float32)

    got = _engine(values, Lambda(op), chunks, agg="mode")
    outs, oks, _ = _chips(values, op)
    expected = _per_pixel(outs, oks, _mode, np.float32, np.nan)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.values, expected)


def test_mode_ties_go_to_the_smallest_value() -> None:
    agg = make_aggregator("mode", out_dtype=np.dtype("int16"), lead=(), layers=4)
    state = agg.new((1, 3))
    ones = [np.ones((1, 3), np.float32)]
    for row in ([7, 3, 5], [3, 7, 5], [7, 3, 1], [3, 9, 1]):
        out = np.array([[row]], np.int16)
        agg.add(state, ChipBatch(out, np.array([[0, 0]]), ones, None, np.array([0])))
    # 7/3 tie 2-2 → 3; 3,7,3,9 → 3; 5/1 tie → 1
    np.testing.assert_array_equal(agg.finalize(state), [[3, 3, 1]])


@pytest.mark.parametrize("chunks", [(9, 11), (17, 23), (-1, -1)])
@pytest.mark.parametrize("agg", ["median", "mode"])
def test_int16_output_with_nodata(chunks: tuple[int, int], agg: str) -> None:
    rng = np.random.default_rng(3)
    values = rng.integers(0, 1000, (1, 45, 52)).astype(np.int16)
    values[:, 10:14, 5:9] = -9999  # invalid input under every chip there
    values[:, rng.integers(0, 45, 30), rng.integers(0, 52, 30)] = -9999
    got = _engine(values, Lambda(_labels), chunks, agg=agg, nodata=-9999)
    outs, oks, _ = _chips(values, _labels, nodata=-9999)
    if agg == "median":
        expected = _per_pixel(outs, oks, np.median, np.float32, np.nan)
        assert got.dtype == np.float32
        assert np.isnan(got.values[:, 10:14, 5:9]).all()
        assert (expected % 1 == 0.5).any()  # even counts: mean of the middle two
    else:
        expected = _per_pixel(outs, oks, _mode, np.int16, -9999)
        assert got.dtype == np.int16 and got.rio.nodata == -9999
        assert (got.values[:, 10:14, 5:9] == -9999).all()
    np.testing.assert_array_equal(got.values, expected)


@pytest.mark.parametrize("agg", ["median", "mode"])
def test_bool_output(agg: str) -> None:
    values = _values(4)

    def op(chip: np.ndarray) -> np.ndarray:
        return chip[:1] > np.float32(np.mean(chip))

    got = _engine(values, Lambda(op), (17, 23), agg=agg)
    outs, oks, _ = _chips(values, op)
    as_int = outs.astype(np.uint8)
    if agg == "median":
        expected = _per_pixel(as_int, oks, np.median, np.float32, np.nan)
        assert got.dtype == np.float32 and (got.values == 0.5).any()
    else:
        expected = _per_pixel(as_int, oks, _mode, np.uint8, 255)
        assert got.dtype == np.uint8
    np.testing.assert_array_equal(got.values, expected)


@pytest.mark.parametrize("agg", ["median", "mode"])
def test_results_identical_across_chunkings(agg: str) -> None:
    values = _holes(_values(5))
    results = [_engine(values, Lambda(_wiggle), c, agg=agg).values for c in CHUNKINGS]
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])


@pytest.mark.parametrize("boundary", ["shift", "pad"])
def test_median_boundaries(boundary: Boundary) -> None:
    """The shifted last chip and the padded one add coverage the layers must hold."""
    values = _values(6, (1, 41, 37))
    op = Lambda(lambda c: (c + np.float32(np.mean(c))).astype(np.float32))
    got = _engine(values, op, (17, 23), size=12, stride=5, agg="median", boundary=boundary)
    scene = _scene(values, (-1, -1))
    layout = patchflow.plan_grid(scene, size=12, stride=5, boundary=boundary)
    padded = np.pad(values, ((0, 0), (0, 12), (0, 12)), constant_values=0)
    outs = []
    for ay, ax in layout.anchors.tolist():
        placed = np.full((1, 41 + 12, 37 + 12), np.nan, np.float32)
        placed[:, ay : ay + 12, ax : ax + 12] = op(padded[:, ay : ay + 12, ax : ax + 12])
        outs.append(placed[:, :41, :37])
    stack = np.stack(outs)
    expected = _per_pixel(stack, np.isfinite(stack), np.median, np.float32, np.nan)
    np.testing.assert_array_equal(got.values, expected)


def test_pointwise_median_is_the_op_itself() -> None:
    values = _values(7)
    op = Lambda(lambda c: c * np.float32(3), pointwise=True)
    for agg in ("median", "mode"):
        got = _engine(values, op, (17, 23), agg=agg)
        np.testing.assert_array_equal(got.values, values * np.float32(3))


@pytest.mark.parametrize("agg", ["median", "mode"])
def test_layered_aggs_run_to_a_store_and_cannot_accumulate(agg: str, tmp_path: Path) -> None:
    values = _holes(_values(8))
    scene = _scene(values, (17, 23))
    kw: dict[str, Any] = {"size": SIZE, "stride": STRIDE, "agg": agg}
    with dask.config.set(scheduler="synchronous"):
        report = patchflow.run(scene, Lambda(_wiggle), store=tmp_path / "m.zarr", **kw)
        stored = report.open(verify=True).values
    np.testing.assert_array_equal(stored, _engine(values, Lambda(_wiggle), (17, 23), **kw).values)
    with pytest.raises(ParameterError, match="cannot accumulate"):
        patchflow.run(scene, Lambda(_wiggle), store=tmp_path / "k.zarr", keep_sums=True, **kw)


# ---------------------------------------------------------------------------------------
# the layer bound
# ---------------------------------------------------------------------------------------


def _batch(value: int, pos: tuple[int, int] = (0, 0)) -> ChipBatch:
    out = np.full((1, 1, 2, 2), value, np.int16)
    return ChipBatch(out, np.array([pos]), [np.ones((2, 2), np.float32)], None, np.array([0]))


@pytest.mark.parametrize("agg", ["median", "mode"])
def test_more_values_than_layers_is_an_error_never_an_overwrite(agg: str) -> None:
    aggregator = make_aggregator(agg, out_dtype=np.dtype("int16"), lead=(1,), layers=2)
    state = aggregator.new((2, 2))
    aggregator.add(state, _batch(1))
    aggregator.add(state, _batch(2))
    with pytest.raises(LayerOverflowError, match=r"layers=2.*received 3 values"):
        aggregator.add(state, _batch(3))
    # merging two partials that together exceed the bound is refused the same way
    dst, src = aggregator.new((2, 2)), aggregator.new((2, 2))
    aggregator.add(dst, _batch(1))
    aggregator.add(src, _batch(2))
    aggregator.add(src, _batch(3))
    with pytest.raises(LayerOverflowError, match="received 3 values"):
        aggregator.merge(dst, src, (slice(0, 2), slice(0, 2)), (slice(0, 2), slice(0, 2)))
    assert issubclass(LayerOverflowError, CoverageError)


def test_layers_is_required_and_bounded() -> None:
    kw: dict[str, Any] = {"out_dtype": np.dtype("float32"), "lead": (1,)}
    with pytest.raises(ParameterError, match="needs layers="):
        make_aggregator("median", **kw)
    with pytest.raises(ParameterError, match="layers >= 1"):
        make_aggregator("mode", layers=0, **kw)
    most = make_aggregator("median", layers=MAX_LAYERS, **kw)
    assert isinstance(most, Median) and most.layers == MAX_LAYERS
    with pytest.raises(CoverageError, match=f"up to 65 chips.*limit of {MAX_LAYERS}"):
        make_aggregator("median", layers=MAX_LAYERS + 1, **kw)
    # the others ignore it
    assert make_aggregator("max", layers=3, **kw).result_dtype() == np.float32


def test_too_many_overlapping_chips_is_refused_before_running() -> None:
    """size 16, stride 2: 8 × 8 = 64 chips over a pixel is fine, stride 1 (256) is not."""
    values = _values(9, (1, 40, 40))
    scene = _scene(values, (-1, -1))
    op = Lambda(lambda c: c + np.float32(np.mean(c)))
    ok = patchflow.apply(scene, op, size=16, stride=2, agg="median")
    assert ok.shape == values.shape
    with pytest.raises(CoverageError) as info:
        patchflow.apply(scene, op, size=16, stride=1, agg="mode")
    message = str(info.value)
    assert "256 chips" in message and f"limit of {MAX_LAYERS}" in message
    assert "larger stride" in message and "overlap_add" in message
    assert isinstance(info.value, PatchflowError)


@settings(max_examples=150, deadline=None)
@given(
    height=st.integers(1, 120),
    width=st.integers(1, 120),
    size=st.integers(1, 40),
    stride=st.integers(1, 40),
    boundary=st.sampled_from(["shift", "pad", "drop"]),
)
def test_layers_are_the_exact_most_chips_over_a_pixel(
    height: int, width: int, size: int, stride: int, boundary: Boundary
) -> None:
    stride = min(stride, size)
    if size > min(height, width) and boundary != "pad":
        return
    grid = ChipGrid((height, width), size, stride, boundary)
    assert _most_chips(grid, (1, 1)) == int(grid.coverage().max())


@settings(max_examples=25, deadline=None)
@given(
    height=st.integers(8, 30),
    width=st.integers(8, 30),
    size=st.integers(3, 8),
    stride_frac=st.integers(1, 4),
    cy=st.integers(3, 31),
    cx=st.integers(3, 31),
    seed=st.integers(0, 2**16),
)
def test_median_matches_numpy_on_random_grids(
    height: int, width: int, size: int, stride_frac: int, cy: int, cx: int, seed: int
) -> None:
    stride = max(1, size * stride_frac // 4)
    values = _values(seed, (1, height, width))
    values[0, seed % height, : width // 2] = np.nan
    op = Lambda(lambda c: c + np.float32(np.nanmean(c)) if np.isfinite(c).any() else c)
    got = _engine(values, op, (cy, cx), size=size, stride=stride, agg="median")
    outs, oks, _ = _chips(values, op, size=size, stride=stride)
    expected = _per_pixel(outs, oks, np.median, np.float32, np.nan)
    np.testing.assert_array_equal(got.values, expected)


# ---------------------------------------------------------------------------------------
# inverse_variance
# ---------------------------------------------------------------------------------------


def _mean_var(chip: np.ndarray) -> np.ndarray:
    """(mean, variance) per pixel, both chip-dependent; NaN input gives a NaN mean."""
    mean = chip[0] * np.float32(2) + np.float32(np.nanmean(chip))
    var = np.abs(chip[1] - np.float32(np.nanmean(chip[1]))) + np.float32(0.05)
    return np.stack([mean, var]).astype(np.float32)


def _iv_reference(outs: np.ndarray, oks: np.ndarray, wts: np.ndarray) -> np.ndarray:
    """Per pixel: ``np.average`` with weights ``w / var`` and the estimator's variance."""
    x, v = outs[:, 0].astype(np.float64), outs[:, 1].astype(np.float64)
    ok = oks[:, 0] & oks[:, 1] & (wts > 0)
    mean = np.full(x.shape[1:], np.nan)
    var = np.full(x.shape[1:], np.nan)
    for idx in np.ndindex(*x.shape[1:]):
        sel = (slice(None), *idx)
        keep = ok[sel]
        if keep.any():
            w, xv, vv = wts[sel][keep], x[sel][keep], v[sel][keep]
            mean[idx] = np.average(xv, weights=w / vv)
            var[idx] = np.sum(w * w / vv) / np.sum(w / vv) ** 2
    return np.stack([mean, var])


@pytest.mark.parametrize("chunks", CHUNKINGS)
@pytest.mark.parametrize("window", ["hann", "boxcar"])
def test_inverse_variance_matches_numpy(chunks: tuple[int, int], window: str) -> None:
    values = _holes(_values(10))
    got = _engine(values, Lambda(_mean_var), chunks, agg="inverse_variance", window=window)
    outs, oks, wts = _chips(values, _mean_var, window=window)
    expected = _iv_reference(outs, oks, wts)
    assert got.dims == ("stat", "y", "x") and got.stat.values.tolist() == ["mean", "variance"]
    assert got.dtype == np.float32
    assert np.isnan(got.values[:, 20:24, 30:33]).all()
    np.testing.assert_allclose(got.values, expected, rtol=2e-7, atol=0, equal_nan=True)
    if window == "boxcar":  # unit weights: the classic 1 / sum(1 / var)
        ok = oks[:, 0] & oks[:, 1]
        inv = np.where(ok, 1.0 / np.where(ok, outs[:, 1].astype(np.float64), 1.0), 0.0).sum(0)
        with np.errstate(divide="ignore"):
            np.testing.assert_allclose(
                got.values[1], np.where(inv > 0, 1.0 / inv, np.nan), rtol=2e-7, equal_nan=True
            )


def test_inverse_variance_with_constant_variance_is_overlap_add() -> None:
    values = _values(11)

    def both(chip: np.ndarray) -> np.ndarray:
        mean = (chip[0] + np.float32(chip.mean())).astype(np.float32)
        return np.stack([mean, np.full_like(mean, 0.3)])

    got = _engine(values, Lambda(both), (17, 23), agg="inverse_variance", window="hann")
    plain = _engine(values, Lambda(lambda c: both(c)[:1]), (17, 23), window="hann")
    np.testing.assert_allclose(got.values[0], plain.values[0], rtol=1e-6)


def test_inverse_variance_on_a_large_offset() -> None:
    values = _values(12)

    def op(chip: np.ndarray) -> np.ndarray:
        mean = np.float32(1e4) + (chip[0] + chip.mean()) * np.float32(0.1)
        var = (chip[1] + np.float32(0.5)) * np.float32(1e-3)
        return np.stack([mean, var]).astype(np.float32)

    got = _engine(values, Lambda(op), (17, 23), agg="inverse_variance")
    outs, oks, wts = _chips(values, op)
    expected = _iv_reference(outs, oks, wts)
    np.testing.assert_allclose(got.values[0], expected[0], rtol=1e-7)
    np.testing.assert_allclose(got.values[1], expected[1], rtol=2e-7)
    assert float(np.ptp(expected[0])) > 0.05  # the signal on top of 1e4 is kept


def test_inverse_variance_refuses_non_positive_variance() -> None:
    values = _values(13)

    def op(chip: np.ndarray) -> np.ndarray:
        return np.stack([chip[0], chip[1] - np.float32(0.5)])  # negative in places

    with pytest.raises(OperatorError, match=r"variance must be > 0.*np\.maximum\(var, 1e-12\)"):
        _engine(values, Lambda(op), (17, 23), agg="inverse_variance")
    # where the mean is invalid the variance is not used, so it is not checked either
    nan_mean = Lambda(lambda c: np.stack([np.full_like(c[0], np.nan), np.zeros_like(c[0])]))
    got = _engine(values, nan_mean, (17, 23), agg="inverse_variance", nodata=None)
    assert np.isnan(got.values).all()


def test_inverse_variance_needs_a_mean_variance_axis() -> None:
    scene = _scene(_values(14), (-1, -1))
    with pytest.raises(ParameterError, match=r"\(mean, variance\).*got shape \(3, 'h', 'w'\)"):
        patchflow.apply(
            scene,
            Lambda(lambda c: np.concatenate([c, c[:1]])),
            agg="inverse_variance",
            size=SIZE,
            stride=STRIDE,
        )
    with pytest.raises(ParameterError, match=r"got shape \('h', 'w'\)"):
        patchflow.apply(
            scene, Lambda(lambda c: c[0]), agg="inverse_variance", size=SIZE, stride=STRIDE
        )


def test_inverse_variance_dims_with_bands_and_time() -> None:
    """The op's first axis becomes ``stat``; other op dims and looped dims keep theirs."""
    values = _values(15)
    scene = _scene(values, (-1, -1)).assign_coords(band=["red", "nir"])

    def per_band(chip: np.ndarray) -> np.ndarray:  # (2, band, h, w)
        return np.stack([chip * 2, np.ones_like(chip) * np.float32(0.5)])

    out = patchflow.apply(scene, Lambda(per_band), agg="inverse_variance", size=SIZE, stride=STRIDE)
    assert out.dims == ("stat", "band", "y", "x")
    assert out.band.values.tolist() == ["red", "nir"]
    assert out.stat.values.tolist() == ["mean", "variance"]
    stack = xr.concat([scene, scene + 1], dim="time")
    per_date = patchflow.apply(
        stack, Lambda(per_band), agg="inverse_variance", size=SIZE, stride=STRIDE
    ).compute()
    assert per_date.dims == ("stat", "time", "band", "y", "x")
    np.testing.assert_allclose(per_date.sel(stat="mean").values, stack.values * 2, rtol=1e-6)
    single = Lambda(lambda c: np.stack([c[0] + c[1], np.full_like(c[0], 2.0)]))
    per_date = patchflow.apply(stack, single, agg="inverse_variance", size=SIZE, stride=STRIDE)
    assert per_date.dims == ("stat", "time", "y", "x")
    np.testing.assert_allclose(
        per_date.sel(stat="mean").values, (stack[:, 0] + stack[:, 1]).values, rtol=1e-6
    )


def test_inverse_variance_accumulates_across_passes(tmp_path: Path) -> None:
    values = _holes(_values(16))
    scene = _scene(values, (17, 23))
    store = tmp_path / "iv.zarr"
    kw: dict[str, Any] = {"size": SIZE, "stride": STRIDE, "agg": "inverse_variance"}
    with dask.config.set(scheduler="synchronous"):
        first = patchflow.run(scene, Lambda(_mean_var), store=store, keep_sums=True, **kw)
        once = first.open(verify=True).values
        report = patchflow.run(scene, Lambda(_mean_var), store=store, mode="accumulate", **kw)
        twice = report.open(verify=True).values
    outs, oks, wts = _chips(values, _mean_var)
    expected = _iv_reference(outs, oks, wts)
    np.testing.assert_allclose(once, expected, rtol=2e-7, equal_nan=True)
    # every sum doubled: the mean stays, the estimator's variance halves
    np.testing.assert_allclose(twice[0], expected[0], rtol=2e-7, equal_nan=True)
    np.testing.assert_allclose(twice[1], expected[1] / 2, rtol=2e-7, equal_nan=True)


@pytest.mark.parametrize("holes", [False, True])
def test_inverse_variance_finalize_rounds_the_float64_quotients_once(holes: bool) -> None:
    """The result is ``[sax / sa, sb / sa²]`` taken in float64 and rounded once to the
    result's dtype (bit for bit), NaN where nothing valid reached; a block taller than
    the rows finished at a time."""
    agg = make_aggregator("inverse_variance", out_dtype=np.dtype("float32"), lead=(2,))
    rng = np.random.default_rng(4)
    shape = (75, 31)
    sa = rng.uniform(1e-3, 1e4, shape)
    if holes:
        sa[rng.random(shape) < 0.2] = 0
    state = {
        "sa": sa,
        "sax": sa * rng.normal(1e4, 3, shape),
        "sb": sa * rng.uniform(0, 2, shape),
    }
    got = agg.finalize({k: v.copy() for k, v in state.items()})
    ok = sa > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = np.stack([state["sax"] / sa, state["sb"] / (sa * sa)]).astype(np.float32)
    expected[:, ~ok] = np.nan
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("chunks", [(17, 23), (9, 40)])
def test_inverse_variance_stitches_in_place_bit_for_bit(
    chunks: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every output block is finished from cells that read the partials in place (its
    own or a neighbour's, where only one reaches) and sum the strips several reach: the
    same bits as summing everything into a fresh whole-block state (holes included, so
    some pixels are invalid)."""
    from patchflow.engine.aggregate import InverseVariance

    values = _holes(_values(17))
    seen = {"cells": 0, "blocks": 0}
    stitched = InverseVariance.stitched

    def spy(self: Any, shape: Any, pieces: Any, acc: Any) -> Any:
        state = stitched(self, shape, pieces, acc)
        seen["blocks"] += 1
        seen["cells"] += "_cells" in state
        return state

    monkeypatch.setattr(InverseVariance, "stitched", spy)
    got = _engine(values, Lambda(_mean_var), chunks, agg="inverse_variance")
    assert seen["cells"] == seen["blocks"] > 0
    monkeypatch.setattr(InverseVariance, "stitched", stitched)
    monkeypatch.setattr(InverseVariance, "in_place_cells", False)  # one whole-block merge
    plain = _engine(values, Lambda(_mean_var), chunks, agg="inverse_variance")
    assert np.isnan(plain.values).any()
    np.testing.assert_array_equal(got.values, plain.values)
