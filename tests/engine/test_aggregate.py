"""The whole lazy engine (``patchflow.apply``) against a naive per-chip numpy reference.

The reference below loops over chips in plain python on an in-memory (padded) scene and
accumulates every aggregation per pixel the way the README describes it. Chip geometry
comes from :class:`patchflow.plan.grid.ChipGrid` and weights from
:func:`patchflow.plan.windows.make_window` (both tested on their own elsewhere); everything the
engine adds on top — block ownership, halos, partial states, piecewise stitching, dask
chunking, batching, NaN handling — is checked here, with operators that are *not*
pointwise so that chip boundaries matter.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import dask
import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

import patchflow
from patchflow.plan.grid import ChipGrid
from patchflow.plan.windows import WINDOWS, make_window

# ---------------------------------------------------------------------------------------
# operators (plain: (bands, h, w) -> (out, h, w); batched: (n, bands, h, w) -> (n, out, h, w))
# ---------------------------------------------------------------------------------------


def blur(chip: np.ndarray) -> np.ndarray:
    """3×3 box blur of the trailing two axes, edge-padded *inside the chip*."""
    widths = [(0, 0)] * (chip.ndim - 2) + [(1, 1), (1, 1)]
    p = np.pad(chip, widths, mode="edge")
    h, w = chip.shape[-2:]
    total = np.zeros(chip.shape, dtype=np.float64)
    for dy in range(3):
        for dx in range(3):
            total += p[..., dy : dy + h, dx : dx + w]
    return total / 9.0


def local_mean(chip: np.ndarray) -> np.ndarray:
    """Each band scaled by (1 + its mean over the chip)."""
    return chip * (1.0 + chip.mean(axis=(-2, -1), keepdims=True))


def mix(chip: np.ndarray) -> np.ndarray:
    """Two output bands: the band sum of the blur, and the last band minus the chip mean."""
    return np.stack([blur(chip).sum(axis=-3), chip[..., -1, :, :] - chip.mean()], axis=-3)


def blur_batched(chips: np.ndarray) -> np.ndarray:
    return blur(chips)


def local_mean_batched(chips: np.ndarray) -> np.ndarray:
    return chips * (1.0 + chips.mean(axis=(-2, -1), keepdims=True))


def mix_batched(chips: np.ndarray) -> np.ndarray:
    means = chips.mean(axis=(-3, -2, -1), keepdims=True)[:, 0]
    return np.stack([blur(chips).sum(axis=-3), chips[:, -1] - means], axis=1)


OPS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "blur": blur,
    "local_mean": local_mean,
    "mix": mix,
}
BATCHED_OPS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "blur": blur_batched,
    "local_mean": local_mean_batched,
    "mix": mix_batched,
}


def labels(chip: np.ndarray, k: int) -> np.ndarray:
    """Integer labels in [0, k) from the blurred first band plus a chip-wide offset."""
    offset = int(chip.mean() * 10)
    return (((blur(chip[:1]) * k).astype(np.int64) + offset) % k).astype(np.int64)


def holes(chip: np.ndarray) -> np.ndarray:
    """Like :func:`mix`, with non-finite outputs at value- and chip-dependent places."""
    out = mix(chip)
    out[0][chip[0] > 0.85] = np.nan
    if chip[0, 0, 0] > 0.5:
        out[1, 0, :] = np.inf  # the chip's first row: depends on where the chip sits
    return out


def pointwise(chip: np.ndarray) -> np.ndarray:
    return 2.0 * chip + chip**2 - 0.5


def identity(chip: np.ndarray) -> np.ndarray:
    return chip


def ramp(h: int, w: int) -> np.ndarray:
    """A custom (non-separable) window with a zero corner, exercising the floor."""
    values = np.add.outer(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64) ** 2)
    return values if values.any() else np.ones((h, w))


WINDOW_CHOICES: list[Any] = [*sorted(WINDOWS), ramp]


# ---------------------------------------------------------------------------------------
# naive reference
# ---------------------------------------------------------------------------------------


def naive_apply(
    scene: np.ndarray,
    op: Callable[[np.ndarray], np.ndarray],
    *,
    size: int,
    stride: int,
    boundary: str,
    window: Any,
    agg: str,
    n_classes: int | None = None,
    nodata: Any = np.nan,
    fill: float | None = None,
) -> np.ndarray:
    """Per-chip loop over the whole (padded) scene, merging per pixel.

    ``fill=None``: the op sees NaN inputs as they are and a float output is invalid only
    where it is not finite (per element); a non-float output is invalid where any input
    element under the pixel is NaN. ``fill=v``: NaN inputs are replaced by ``v`` and the
    output pixel is invalid wherever any input element under it was NaN.

    For ``agg="vote"`` the summed weights are float64, which is exact for these weights
    (float32 products of 12-bit quantised factors), so exact ties are seen as ties.
    """
    height, width = scene.shape[-2:]
    grid = ChipGrid((height, width), size, stride, boundary)  # type: ignore[arg-type]
    h = w = size
    anchors = grid.anchors.tolist()
    ph = max(height, max(a for a, _ in anchors) + h)
    pw = max(width, max(b for _, b in anchors) + w)

    bad = ~np.isfinite(scene).all(axis=0)
    filled = scene if fill is None else np.where(np.isfinite(scene), scene, fill)
    # pad_mode="constant" pads with the fill value (0 without one)
    padded = np.pad(
        filled,
        ((0, 0), (0, ph - height), (0, pw - width)),
        mode="constant",
        constant_values=0.0 if fill is None else fill,
    )
    valid = np.pad(~bad, ((0, ph - height), (0, pw - width)), mode="constant")
    win = make_window(window, (h, w))

    acc: dict[str, np.ndarray] = {}
    for ay, ax in anchors:  # row-major chip order
        chip = np.ascontiguousarray(padded[:, ay : ay + h, ax : ax + w])
        out = np.asarray(op(chip))
        ok = np.broadcast_to(valid[ay : ay + h, ax : ax + w], out.shape)
        if out.dtype.kind == "f":
            ok = (ok if fill is not None else True) & np.isfinite(out)
        sl = (slice(None), slice(ay, ay + h), slice(ax, ax + w))
        if not acc:
            full = (out.shape[0], ph, pw)
            acc = {
                "num": np.zeros(full),
                "den": np.zeros(full),
                "val": np.full(full, -np.inf if agg == "max" else np.inf),
                "hit": np.zeros(full, bool),
                "dist": np.full(full, np.inf),
                "pick": np.zeros(full),
                "count": np.zeros((n_classes or 1, *full), np.int64),
                "wsum": np.zeros((n_classes or 1, *full)),
            }
        wts = win.weights(ay == 0, ay + h >= height, ax == 0, ax + w >= width)
        if agg in ("overlap_add", "mean"):
            wk = np.where(ok, 1.0 if agg == "mean" else wts, 0.0)
            acc["num"][sl] += np.where(ok, out, 0.0) * wk
            acc["den"][sl] += wk
        elif agg in ("max", "min"):
            pick = np.maximum if agg == "max" else np.minimum
            cand = np.where(ok, out, acc["val"][sl])
            acc["val"][sl] = pick(acc["val"][sl], cand)
            acc["hit"][sl] |= ok
        elif agg == "centre":
            iy, ix = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
            dist = (2 * iy - (h - 1)) ** 2 + (2 * ix - (w - 1)) ** 2
            # per element (band): each band takes its nearest valid chip; chips come in
            # row-major index order: strict '<' keeps the lower index on ties
            better = ok & (dist < acc["dist"][sl])
            acc["dist"][sl] = np.where(better, dist, acc["dist"][sl])
            acc["pick"][sl] = np.where(better, out, acc["pick"][sl])
        elif agg == "vote":
            assert n_classes is not None
            for cls in range(n_classes):
                eq = (out == cls) & ok
                acc["count"][cls][sl] += eq
                acc["wsum"][cls][sl] += eq * wts
        else:  # pragma: no cover
            raise AssertionError(agg)

    crop = (slice(None), slice(0, height), slice(0, width))
    if agg in ("overlap_add", "mean"):
        num, den = acc["num"][crop], acc["den"][crop]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    if agg in ("max", "min"):
        return np.where(acc["hit"][crop], acc["val"][crop], np.nan)
    if agg == "centre":
        hit = np.isfinite(acc["dist"][crop])
        return np.where(hit, acc["pick"][crop], np.nan)
    # vote: most votes, then the higher summed weight, then the lower label
    count, wsum = acc["count"][(slice(None), *crop)], acc["wsum"][(slice(None), *crop)]
    top = count.max(axis=0)
    best = np.full(top.shape, -1, np.int64)
    best_w = np.full(top.shape, -np.inf)
    for cls in range(count.shape[0]):
        better = (count[cls] == top) & (wsum[cls] > best_w)
        best = np.where(better, cls, best)
        best_w = np.where(better, wsum[cls], best_w)
    return np.where(top > 0, best, nodata)


# ---------------------------------------------------------------------------------------
# engine driver and strategies
# ---------------------------------------------------------------------------------------


def engine_apply(
    scene: np.ndarray,
    op: Callable[..., Any],
    chunks: tuple[tuple[int, ...], tuple[int, ...]],
    override: bool,
    **kw: Any,
) -> xr.DataArray:
    arr = xr.DataArray(scene, dims=("band", "y", "x")).chunk(
        {"band": -1, "y": chunks[0], "x": chunks[1]}
    )
    with dask.config.set(scheduler="synchronous"):
        out = patchflow.apply(arr, op, chunks=chunks if override else None, **kw)
        return out.compute()


def _chunking(draw: st.DrawFn, length: int) -> tuple[int, ...]:
    cuts = draw(
        st.lists(st.integers(1, max(length - 1, 1)), max_size=min(length - 1, 6), unique=True)
    )
    edges = [0, *sorted(cuts), length]
    return tuple(int(v) for v in np.diff(edges))


@st.composite
def cases(draw: st.DrawFn, boundaries: tuple[str, ...] = ("shift", "pad", "drop")) -> dict:
    """Geometry, data and chunking of one engine run (≤ 13 chips per axis)."""
    boundary = draw(st.sampled_from(boundaries))
    size = draw(st.integers(1, 64))
    stride = draw(st.integers(1, size))
    lo = 1 if boundary == "pad" else size
    cap = max(lo, min(300, size + 12 * stride))
    height, width = draw(st.integers(lo, cap)), draw(st.integers(lo, cap))
    bands = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    scene = np.random.default_rng(seed).random((bands, height, width))
    chunks = (_chunking(draw, height), _chunking(draw, width))
    return {
        "scene": scene,
        "size": size,
        "stride": stride,
        "boundary": boundary,
        "chunks": chunks,
        "override": draw(st.booleans()),
        "window": draw(st.sampled_from(WINDOW_CHOICES)),
    }


def add_nans(draw: st.DrawFn, scene: np.ndarray) -> np.ndarray:
    frac = draw(st.sampled_from([0.01, 0.1, 0.5, 1.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    out = scene.copy()
    out[rng.random(scene.shape) < frac / scene.shape[0]] = np.nan
    if draw(st.booleans()):  # a rectangular hole through every band
        h, w = scene.shape[-2:]
        y0, x0 = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
        out[:, y0 : y0 + draw(st.integers(1, h)), x0 : x0 + draw(st.integers(1, w))] = np.nan
    return out


def geometry(case: dict) -> dict:
    return {k: case[k] for k in ("size", "stride", "boundary", "window")}


ENGINE = settings(deadline=None, max_examples=40)
FLOAT_AGGS = ["overlap_add", "mean", "max", "min", "centre"]


# ---------------------------------------------------------------------------------------
# the engine equals the naive reference
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("agg", FLOAT_AGGS)
@ENGINE
@given(case=cases(), op_name=st.sampled_from(sorted(OPS)))
def test_engine_matches_naive(agg: str, case: dict, op_name: str) -> None:
    op = OPS[op_name]
    geo = geometry(case)
    expected = naive_apply(case["scene"], op, agg=agg, **geo)
    out = engine_apply(case["scene"], op, case["chunks"], case["override"], agg=agg, **geo)
    assert out.shape == expected.shape
    assert out.dtype == np.float64
    np.testing.assert_allclose(out.values, expected, rtol=1e-9, atol=1e-9, equal_nan=True)
    if case["boundary"] != "drop":
        assert not np.isnan(out.values).any()


@ENGINE
@given(data=st.data(), k=st.integers(2, 5), nans=st.booleans())
def test_vote_matches_naive(data: st.DataObject, k: int, nans: bool) -> None:
    case = data.draw(cases())
    scene = add_nans(data.draw, case["scene"]) if nans else case["scene"]
    op = partial(labels, k=k)
    geo = geometry(case)
    # the labeller is not NaN-safe (int(NaN) fails), so it gets filled chips, as a model
    # would: fill_value=0 and the pixel mask say which pixels count
    out = engine_apply(
        scene, op, case["chunks"], case["override"], agg="vote", n_classes=k, fill_value=0.0, **geo
    )
    assert out.dtype == np.int64
    nodata = out.rio.nodata
    assert nodata == np.iinfo(np.int64).min
    # exact ties in (count, summed weight) are common here (mirror-symmetric chips); the
    # engine's float64 weight sums are exact, so they must go to the lower label too
    expected = naive_apply(scene, op, agg="vote", n_classes=k, nodata=nodata, fill=0.0, **geo)
    np.testing.assert_array_equal(out.values, expected)


# regression: float32 weight sums used to break exact ties differently per chunking
def test_vote_exact_tie_goes_to_lower_label() -> None:
    scene = np.broadcast_to(np.arange(13.0)[:, None], (1, 13, 9)).copy()
    arr = xr.DataArray(scene, dims=("band", "y", "x"))

    def op(chip: np.ndarray) -> np.ndarray:
        # chips at rows 0, 2 vote 0; chips at rows 4, 6 vote 1: row 6 is their mirror axis
        return np.full((1, 7, 7), int(chip[0, 0, 0] >= 4), np.int64)

    kw: dict[str, Any] = {"size": 7, "stride": 2, "window": "triangular", "agg": "vote"}
    rows = []
    with dask.config.set(scheduler="synchronous"):
        for chunks in [(13, 9), ((2, 11), (9,))]:
            out = patchflow.apply(arr, op, n_classes=2, chunks=chunks, **kw).values
            rows.append(out[0, 6].tolist())
    assert rows == [[0] * 9, [0] * 9]


@pytest.mark.parametrize("agg", FLOAT_AGGS)
@settings(deadline=None, max_examples=25)
@given(data=st.data(), op_name=st.sampled_from([*sorted(OPS), "holes"]))
def test_engine_matches_naive_with_nans(agg: str, data: st.DataObject, op_name: str) -> None:
    case = data.draw(cases())
    scene = add_nans(data.draw, case["scene"])
    op = holes if op_name == "holes" else OPS[op_name]
    geo = geometry(case)
    fill = data.draw(st.sampled_from([None, 0.0, -1.5]))
    expected = naive_apply(scene, op, agg=agg, fill=fill, **geo)
    out = engine_apply(scene, op, case["chunks"], case["override"], agg=agg, fill_value=fill, **geo)
    np.testing.assert_allclose(out.values, expected, rtol=1e-9, atol=1e-9, equal_nan=True)


@settings(deadline=None, max_examples=40)
@given(data=st.data())
def test_nan_pixels_pointwise(data: st.DataObject) -> None:
    case = data.draw(cases())
    scene = add_nans(data.draw, case["scene"])
    out = engine_apply(
        scene, pointwise, case["chunks"], case["override"], agg="overlap_add", **geometry(case)
    ).values
    grid = ChipGrid(scene.shape[1:], case["size"], case["stride"], case["boundary"])  # type: ignore[arg-type]
    cy, cx = grid.covered()
    covered = np.outer(cy, cx)
    # per band: a NaN in one band leaves the other bands of the pixel valid (GDAL nodata)
    expected = np.where(~covered, np.nan, pointwise(scene))
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12, equal_nan=True)


# ---------------------------------------------------------------------------------------
# identity, positivity of the denominator
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("boundary", ["shift", "pad", "drop"])
@pytest.mark.parametrize("window", WINDOW_CHOICES, ids=lambda w: getattr(w, "__name__", w))
@settings(deadline=None, max_examples=8)
@given(data=st.data())
def test_identity_reproduces_input(boundary: str, window: Any, data: st.DataObject) -> None:
    case = data.draw(cases(boundaries=(boundary,)))
    scene = case["scene"]
    geo = {**geometry(case), "window": window}
    grid = ChipGrid(scene.shape[1:], case["size"], case["stride"], boundary)  # type: ignore[arg-type]
    cy, cx = grid.covered()
    covered = np.outer(cy, cx)
    out = engine_apply(scene, identity, case["chunks"], case["override"], **geo).values
    expected = np.where(covered, scene, np.nan)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12, equal_nan=True)
    # a scene of ones: the denominator is positive wherever a chip reaches
    ones = engine_apply(
        np.ones_like(scene), identity, case["chunks"], case["override"], **geo
    ).values
    np.testing.assert_array_equal(np.isnan(ones[0]), ~covered)
    np.testing.assert_allclose(ones[:, covered], 1.0, rtol=0, atol=1e-12)
    if boundary != "drop":
        assert covered.all()


# ---------------------------------------------------------------------------------------
# batched operators
# ---------------------------------------------------------------------------------------


@settings(deadline=None, max_examples=20)
@given(
    case=cases(),
    op_name=st.sampled_from(sorted(OPS)),
    agg=st.sampled_from(FLOAT_AGGS),
    batch_size=st.integers(2, 20),
)
def test_batched_equals_plain(case: dict, op_name: str, agg: str, batch_size: int) -> None:
    geo = geometry(case)
    run = partial(engine_apply, case["scene"], chunks=case["chunks"], override=case["override"])
    plain = run(OPS[op_name], agg=agg, **geo).values
    bop = patchflow.batched(BATCHED_OPS[op_name])
    results = [run(bop, agg=agg, batch_size=bs, **geo).values for bs in (1, batch_size, 1000)]
    results.append(run(BATCHED_OPS[op_name], agg=agg, batched=True, **geo).values)
    for res in results:
        np.testing.assert_allclose(res, plain, rtol=1e-12, atol=1e-12, equal_nan=True)
    # batch size only changes how chips are grouped, not what they compute
    np.testing.assert_array_equal(results[0], results[2])


def test_batched_op_sees_batches() -> None:
    sizes: list[int] = []

    @patchflow.batched
    def op(chips: np.ndarray) -> np.ndarray:
        sizes.append(len(chips))
        return local_mean_batched(chips)

    scene = np.random.default_rng(0).random((2, 50, 40))
    grid = ChipGrid((50, 40), 10, 5)
    for bs, expected in ((1, {1}), (1000, {grid.n_chips})):
        sizes.clear()
        engine_apply(
            scene,
            op,
            ((50,), (40,)),
            True,
            size=10,
            stride=5,
            batch_size=bs,
            output_dtype="float64",
            output_bands=2,
        )
        assert set(sizes) == expected
        assert sum(sizes) == grid.n_chips


@pytest.mark.parametrize("boundary", ["shift", "pad"])
@pytest.mark.parametrize("window", ["hann", "boxcar", "triangular"])
def test_geometric_denominator_equals_the_merged_one(
    boundary: str, window: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # identity on float64 data sums in float64: the stitched value must be the input to
    # rounding, whether the block denominators come from geometry or from merged pieces
    import xarray as xr

    import patchflow
    from patchflow.engine.aggregate import OverlapAdd

    used: list[bool] = []
    original = OverlapAdd.set_geometry

    def counting(self: OverlapAdd, state: Any, dy: Any, dx: Any) -> None:
        used.append(state["den"] is None)
        original(self, state, dy, dx)

    monkeypatch.setattr(OverlapAdd, "set_geometry", counting)

    data = np.random.default_rng(3).random((1, 203, 187))
    scene = xr.DataArray(data, dims=("band", "y", "x"))
    kw = {"size": 32, "stride": 20, "window": window, "boundary": boundary, "chunks": 50}
    geometric = patchflow.apply(scene, lambda c: c, **kw).values
    assert used and all(used)  # every output block took its denominator from geometry
    # one invalid pixel makes every partial that sees it carry an explicit denominator
    holes = data.copy()
    holes[0, 100, 90] = np.nan
    explicit = patchflow.apply(xr.DataArray(holes, dims=scene.dims), lambda c: c, **kw).values
    np.testing.assert_allclose(geometric, data, rtol=0, atol=1e-12)
    ok = ~np.isnan(explicit)
    assert ok.sum() == data.size - 1
    np.testing.assert_allclose(explicit[ok], data[ok], rtol=0, atol=1e-12)
