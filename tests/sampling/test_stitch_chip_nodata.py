"""stitch() treats chip values equal to the chips' nodata as invalid, per element, as
apply treats input nodata (GDAL semantics: nodata stays nodata per band, a pixel whose
chip values are all nodata is nodata in the result, real values never become nodata).

The chips' nodata is ``chip_nodata=`` if given, else — for outputs that keep the scene's
integer dtype — the chip outputs' ``nodata`` attr (set by :func:`patchflow.sample`),
rioxarray's nodata or ``_FillValue``; NaN in float chips is always invalid.
"""

from __future__ import annotations

import warnings
from typing import Any

import dask.array as da
import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
from conftest import mode_of

import patchflow
from patchflow.errors import NodataCollisionError
from patchflow.plan.samplers import Explicit, PoissonDisk, Random, RegularStride, Sampler
from patchflow.sampling import sample, stitch

SHAPE = (96, 84)
SIZE = (24, 20)
#: a regular grid that tiles SHAPE exactly: the same chips as apply's grid
STRIDE = (18, 16)
U8_NODATA = 255
F32_NODATA = -99999.0
#: pixels that are nodata in every band, and pixels that are nodata in band 0 only
BOTH = (slice(30, 42), slice(25, 40))
BAND0 = (slice(60, 70), slice(50, 66))

AGGS = (
    "overlap_add",
    "mean",
    "max",
    "min",
    "centre",
    "median",
    "mode",
    "sum",
    "weighted_sum",
    "mean_std",
)
#: aggregations whose result keeps the chips' dtype (the others give a float result)
KEEPS_DTYPE = ("max", "min", "centre", "mode")
SAMPLERS = ("regular", "random", "poisson", "explicit")
SCENES = ("u8_nodata", "u8_real", "f32_nodata")


def make_scene(kind: str) -> xr.DataArray:
    """A 2-band dask-backed scene: nodata blocks (both bands, band 0 only) and scattered
    nodata elements; ``u8_real`` has the same values with no nodata declared, so its 255s
    are real data."""
    rng = np.random.default_rng(3)
    nodata_at = np.zeros((2, *SHAPE), bool)
    nodata_at[(slice(None), *BOTH)] = True
    nodata_at[(0, *BAND0)] = True
    nodata_at |= rng.random(nodata_at.shape) < 0.02
    nodata_at[(1, *BAND0)] = False  # band 1 all valid under band 0's nodata block
    if kind == "f32_nodata":
        values = rng.uniform(0.0, 1.0, (2, *SHAPE)).astype(np.float32)
        values[nodata_at] = F32_NODATA
        values[rng.random(values.shape) < 0.005] = np.nan  # NaN is always invalid
        nodata: Any = F32_NODATA
    else:
        values = rng.integers(0, 255, (2, *SHAPE)).astype(np.uint8)
        values[nodata_at] = U8_NODATA
        nodata = U8_NODATA if kind == "u8_nodata" else None
    arr = xr.DataArray(
        da.from_array(values, chunks=(2, 40, 36)),
        dims=("band", "y", "x"),
        coords={"band": ["a", "b"], "y": np.arange(SHAPE[0]), "x": np.arange(SHAPE[1])},
    )
    return arr.rio.write_nodata(nodata) if nodata is not None else arr


@pytest.fixture(scope="module", params=SCENES)
def scene(request: pytest.FixtureRequest) -> xr.DataArray:
    return make_scene(request.param)


def make_sampler(kind: str) -> Sampler:
    if kind == "regular":
        return RegularStride(stride=STRIDE)
    if kind == "random":
        return Random(14, seed=5)
    if kind == "poisson":
        return PoissonDisk(20.0, seed=3)
    assert kind == "explicit"
    top = (SHAPE[0] - SIZE[0], SHAPE[1] - SIZE[1])
    # overlapping chips (one twice) over both nodata blocks, and the corners
    return Explicit([[0, 0], [25, 18], [30, 30], [25, 18], [55, 45], [60, 50], list(top)])


def chip_nodata_of(scene: xr.DataArray) -> Any:
    nd = scene.rio.nodata
    return None if nd is None else nd


def declared(scene: xr.DataArray) -> dict[str, Any]:
    """``chip_nodata=`` for a float scene's sentinel: stitch reads the chips' nodata attr
    only for integer outputs of the scene's dtype (float outputs carry the scene's attrs
    through arithmetic, so their real values equal to it must stay valid)."""
    nodata = chip_nodata_of(scene)
    return {"chip_nodata": nodata} if scene.dtype.kind == "f" and nodata is not None else {}


def disagreeing_outputs(chips: xr.DataArray) -> np.ndarray:
    """Chip outputs that differ between overlapping chips, keep the scene's nodata where
    the chip had it, and add more nodata per chip and band, so a pixel gets the
    aggregation of *some* of its chips (band by band)."""
    vals = chips.values
    nodata = chips.attrs.get("nodata")
    rng = np.random.default_rng(len(vals))
    k = np.arange(len(vals))[:, None, None, None]
    extra = rng.random(vals.shape) < 0.08
    extra[len(vals) // 2, 0] = True  # one chip's band 0 is nodata everywhere
    if vals.dtype.kind == "f":
        ok = np.isfinite(vals) & (vals != F32_NODATA)
        out = np.where(ok, vals * (1.0 + 0.25 * k) + k, F32_NODATA).astype(np.float32)
        out[extra] = F32_NODATA
        out[1, 1, 3:6, 4:9] = np.nan  # NaN marks invalid values too
        return out
    if nodata is None:  # no nodata: 255 is a value like any other, and it occurs
        return ((vals.astype(np.int64) + 3 * k) % 256).astype(np.uint8)
    ok = vals != U8_NODATA
    out = np.where(ok, (vals.astype(np.int64) + 3 * k) % 255, U8_NODATA).astype(np.uint8)
    out[extra] = U8_NODATA
    return out


def reference(
    outs: np.ndarray, nodata: Any, anchors: np.ndarray, agg: str
) -> tuple[np.ndarray, np.ndarray]:
    """Plain numpy: ``(values, valid)`` of stitching ``outs`` with ``agg``, an element
    being valid where it is finite and not ``nodata``."""
    n, nb, h, w = outs.shape
    H, W = SHAPE
    v = outs.astype(np.float64)
    ok = np.isfinite(v)
    if nodata is not None:
        ok &= outs != nodata
    full = (nb, H, W)
    spot = [(slice(None), slice(r, r + h), slice(c, c + w)) for r, c in anchors]
    window = patchflow.make_window("hann", SIZE)
    weights = [
        window.weights(r == 0, r + h == H, c == 0, c + w == W).astype(np.float64)
        if patchflow.AGGREGATIONS[agg].weighted
        else np.ones(SIZE)
        for r, c in anchors
    ]
    if agg in ("overlap_add", "mean", "sum", "weighted_sum", "mean_std"):
        num, den, cnt = np.zeros(full), np.zeros(full), np.zeros(full)
        for k in range(n):
            wk = np.where(ok[k], weights[k], 0.0)
            num[spot[k]] += wk * np.where(ok[k], v[k], 0.0)
            den[spot[k]] += wk
            cnt[spot[k]] += ok[k]
        valid = cnt > 0
        if agg in ("sum", "weighted_sum"):
            return num, valid
        mean = np.where(valid, num / np.where(valid, den, 1.0), 0.0)
        if agg != "mean_std":
            return mean, valid
        m2 = np.zeros(full)
        for k in range(n):
            dev = np.where(ok[k], v[k], 0.0) - mean[spot[k]]
            m2[spot[k]] += np.where(ok[k], weights[k], 0.0) * dev**2
        std = np.sqrt(np.where(valid, m2 / np.where(valid, den, 1.0), 0.0))
        return np.stack([mean, std]), np.stack([valid, valid])
    if agg == "centre":
        dist, value = np.full(full, np.inf), np.zeros(full)
        py = np.arange(h)[:, None] + 0.5 - h / 2
        px = np.arange(w)[None, :] + 0.5 - w / 2
        d = np.broadcast_to(py**2 + px**2, (nb, h, w))
        for k in range(n):
            take = ok[k] & (d < dist[spot[k]])  # strict: a tie keeps the lower chip index
            dist[spot[k]] = np.where(take, d, dist[spot[k]])
            value[spot[k]] = np.where(take, v[k], value[spot[k]])
        return value, np.isfinite(dist)
    # the rest from every chip's value per element, NaN where it has no valid one
    stack = np.full((n, *full), np.nan)
    for k in range(n):
        stack[k][spot[k]] = np.where(ok[k], v[k], np.nan)
    valid = np.isfinite(stack).any(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels
        if agg == "max":
            return np.where(valid, np.nanmax(stack, axis=0), 0.0), valid
        if agg == "min":
            return np.where(valid, np.nanmin(stack, axis=0), 0.0), valid
        if agg == "median":
            return np.where(valid, np.nanmedian(stack, axis=0), 0.0), valid
    assert agg == "mode"
    return mode_of(stack), valid


def covered(anchors: np.ndarray) -> np.ndarray:
    out = np.zeros(SHAPE, bool)
    for r, c in anchors:
        out[r : r + SIZE[0], c : c + SIZE[1]] = True
    return out


def check_against(
    got: xr.DataArray,
    value: np.ndarray,
    valid: np.ndarray,
    agg: str,
    chip_dtype: np.dtype,
    expect_nodata: Any,
) -> None:
    """``got`` holds ``value`` where ``valid`` and nodata (NaN for floats) elsewhere."""
    want_dtype = chip_dtype if agg in KEEPS_DTYPE else np.dtype(np.float32)
    assert got.dtype == want_dtype
    res = got.values
    assert res.shape == value.shape
    if want_dtype.kind == "f":
        assert np.isnan(got.rio.nodata)
        assert np.array_equal(np.isnan(res), ~valid)
        np.testing.assert_allclose(res[valid], value[valid], rtol=1e-5, atol=1e-4)
    else:
        assert got.rio.nodata == expect_nodata
        assert np.array_equal(res[valid], value[valid].astype(want_dtype))
        if expect_nodata is None:
            assert valid.all()
        else:
            assert (res[~valid] == expect_nodata).all()
            # a real value never reads back as nodata (else NodataCollisionError)
            assert not (res[valid] == expect_nodata).any()


# --------------------------------------------------------------------------- numpy reference


@pytest.mark.parametrize("sampler_kind", SAMPLERS)
@pytest.mark.parametrize("agg", AGGS)
def test_chip_nodata_is_invalid_per_element(scene, agg, sampler_kind) -> None:
    chips = sample(scene, make_sampler(sampler_kind), size=SIZE)
    anchors = np.stack([chips.row.values, chips.col.values], axis=1)
    nodata = chip_nodata_of(scene)
    assert chips.attrs.get("nodata") == nodata  # where stitch finds the chips' nodata
    outs = disagreeing_outputs(chips)
    # several source chunks, irregular output blocks: validity must not depend on either
    lazy = chips.copy(data=da.from_array(outs, chunks=(3, *outs.shape[1:])))
    out = stitch(scene, lazy, agg=agg, chunks=(37, 29), **declared(scene))
    value, valid = reference(outs, nodata, anchors, agg)
    holes = ~covered(anchors)
    assert not valid[..., holes].any()
    # an integer result's nodata: the scene's, else the dtype's max where pixels can be
    # invalid (uncovered), else none
    expect_nodata = nodata if nodata is not None else (255 if holes.any() else None)
    if (
        agg in KEEPS_DTYPE
        and outs.dtype.kind == "u"
        and expect_nodata is not None
        and (value[valid] == expect_nodata).any()
    ):
        # 255 is real data here: refused rather than silently masked
        with pytest.raises(NodataCollisionError):
            out.compute()
        return
    check_against(out, value, valid, agg, outs.dtype, expect_nodata)


@pytest.mark.parametrize("agg", ["overlap_add", "max", "centre", "median"])
def test_all_nodata_pixels_are_nodata_and_the_rest_real(agg) -> None:
    """Where every chip value is nodata the result is nodata, per band; 255 declared as
    nodata never appears as a value and a band-0 hole leaves band 1 valid."""
    scene = make_scene("u8_nodata")
    chips = sample(scene, RegularStride(stride=STRIDE), size=SIZE)
    res = stitch(scene, chips, agg=agg).values
    src = scene.values
    if res.dtype.kind == "f":
        bad = np.isnan(res)
    else:
        assert res.dtype == np.uint8
        bad = res == U8_NODATA
    assert np.array_equal(bad, src == U8_NODATA)  # exactly the nodata elements, per band
    assert bad[(0, *BAND0)].all() and not bad[(1, *BAND0)].any()
    assert bad[(slice(None), *BOTH)].all()
    np.testing.assert_allclose(res[~bad], src[~bad])  # identity chips: the scene's values


def test_real_255_stays_a_value_without_nodata() -> None:
    scene = make_scene("u8_real")
    chips = sample(scene, RegularStride(stride=STRIDE), size=SIZE)
    assert "nodata" not in chips.attrs
    src = scene.values
    for agg in ("overlap_add", "mean", "median", "max", "centre"):
        out = stitch(scene, chips, agg=agg)
        assert np.array_equal(out.values, src.astype(out.dtype)), agg
        assert out.rio.nodata is None or np.isnan(out.rio.nodata)


def test_float_nodata_never_blends_into_values() -> None:
    scene = make_scene("f32_nodata")
    chips = sample(scene, RegularStride(stride=STRIDE), size=SIZE)
    src = scene.values
    bad = ~np.isfinite(src) | (src == F32_NODATA)
    assert np.isnan(stitch(scene, chips).values).sum() < bad.sum()  # not declared: a value
    out = stitch(scene, chips, chip_nodata=F32_NODATA).values  # overlap_add
    assert np.array_equal(np.isnan(out), bad)
    assert (out[~bad] > -1).all()  # nothing from -99999 leaked into a blend
    np.testing.assert_allclose(out[~bad], src[~bad], rtol=1e-6)


# --------------------------------------------------------------------------- against apply


@pytest.mark.parametrize("agg", ["overlap_add", "mean", "max", "centre", "median", "mean_std"])
def test_regular_grid_equals_apply(scene, agg) -> None:
    """On apply's grid, stitching the raw chips equals apply with an identity operator."""
    engine = patchflow.apply(scene, lambda c: c, size=SIZE, stride=STRIDE, agg=agg)
    chips = sample(scene, RegularStride(stride=STRIDE), size=SIZE)
    grid = scene.patch.grid(size=SIZE, stride=STRIDE)
    anchors = np.stack([chips.row.values, chips.col.values], axis=1)
    assert np.array_equal(anchors, grid.grid.anchors)  # the same chips, the same order
    got = stitch(scene, chips, agg=agg, **declared(scene))
    assert got.shape == engine.shape and got.dims == engine.dims
    want, res = engine.values, got.values
    # apply hands integer input with nodata to the op as float64, so its max/centre are
    # float64 with NaN where stitch keeps uint8 with the scene's nodata
    want_bad = np.isnan(want) if want.dtype.kind == "f" else np.zeros(want.shape, bool)
    if res.dtype.kind == "f":
        got_bad = np.isnan(res)
    elif got.rio.nodata is not None:
        got_bad = res == got.rio.nodata
    else:
        got_bad = np.zeros(res.shape, bool)
    assert np.array_equal(got_bad, want_bad)
    np.testing.assert_allclose(res[~got_bad], want[~want_bad], rtol=1e-5, atol=1e-4)


# --------------------------------------------------------------------------- chip_nodata=


def test_chip_nodata_declares_it_for_plain_arrays() -> None:
    scene = make_scene("u8_nodata")
    chips = sample(scene, Random(14, seed=5), size=SIZE)
    anchors = np.stack([chips.row.values, chips.col.values], axis=1)
    outs = disagreeing_outputs(chips)
    from_attrs = stitch(scene, chips.copy(data=outs), agg="mean").values
    # numpy chip outputs carry no attrs: chip_nodata= says what is nodata
    declared = stitch(scene, outs, anchors, agg="mean", chip_nodata=U8_NODATA).values
    np.testing.assert_array_equal(declared, from_attrs)
    lazy = da.from_array(outs, chunks=(4, *outs.shape[1:]))
    via_dask = stitch(scene, lazy, anchors, agg="mean", chip_nodata=U8_NODATA).values
    np.testing.assert_array_equal(via_dask, from_attrs)
    value, valid = reference(outs, U8_NODATA, anchors, "mean")
    assert np.array_equal(~np.isnan(declared), valid)
    np.testing.assert_allclose(declared[valid], value[valid], rtol=1e-6)
    # without it, 255 in a plain array is a value (as before)
    plain = stitch(scene, outs, anchors, agg="mean").values
    assert np.isnan(plain).sum() < np.isnan(declared).sum()


def test_chip_nodata_overrides_the_attrs() -> None:
    scene = make_scene("u8_nodata")
    chips = sample(scene, RegularStride(stride=STRIDE), size=SIZE)
    src = scene.values
    # NaN: only NaN marks invalid values, the attrs' 255 is data
    as_data = stitch(scene, chips, agg="mean", chip_nodata=np.nan).values
    np.testing.assert_array_equal(as_data, src.astype(np.float32))
    # another value: that one is nodata, 255 is data
    zero = stitch(scene, chips, agg="mean", chip_nodata=0).values
    assert np.array_equal(np.isnan(zero), src == 0)
    assert (zero[(slice(None), *BOTH)] == 255).all()
    # the token sees it: different chip nodata, different graph
    names = {stitch(scene, chips, chip_nodata=v).data.name for v in (None, 0, np.nan)}
    assert len(names) == 3


@pytest.mark.parametrize("how", ["_FillValue", "rio"])
def test_fill_value_and_rio_nodata_of_chips_are_read(how) -> None:
    scene = make_scene("u8_nodata").rio.write_nodata(None)  # only the chips declare it
    chips = sample(scene, RegularStride(stride=STRIDE), size=SIZE)
    assert "nodata" not in chips.attrs
    if how == "_FillValue":
        chips.attrs["_FillValue"] = U8_NODATA
    else:
        chips = chips.rio.write_nodata(U8_NODATA)
    src = scene.values
    out = stitch(scene, chips).values  # overlap_add: float, NaN where invalid
    assert np.array_equal(np.isnan(out), src == U8_NODATA)


def test_float_outputs_keep_real_values_equal_to_an_inherited_nodata() -> None:
    # a float32 scene with nodata 0: an NDVI computed with xarray arithmetic keeps the
    # chips' attrs (nodata=0), but its real 0.0s (red == nir) are values, not nodata
    data = np.random.default_rng(3).uniform(0.1, 0.5, (2, *SHAPE)).astype(np.float32)
    data[1, 10:20, 10:20] = data[0, 10:20, 10:20]  # NDVI exactly 0 there
    scene = xr.DataArray(data, dims=("band", "y", "x")).rio.write_nodata(0)
    chips = sample(scene, RegularStride(stride=STRIDE), size=SIZE)
    ndvi = (chips.isel(band=[1]) - chips.isel(band=[0])) / (
        chips.isel(band=[1]) + chips.isel(band=[0])
    )
    assert ndvi.attrs.get("nodata") == 0 and ndvi.dtype == np.float32
    out = stitch(scene, ndvi).values
    assert not np.isnan(out).any()
    assert (out[0, 10:20, 10:20] == 0).all()


def test_integer_result_takes_the_chips_nodata_when_obj_like_has_none() -> None:
    bare = xr.DataArray(np.zeros(SHAPE, np.float32), dims=("y", "x"))
    anchors = np.array([[0, 0], [10, 12], [60, 50]])
    outs = np.random.default_rng(0).integers(0, 100, (3, *SIZE)).astype(np.int16)
    outs[0, :5, :5] = -9999
    out = stitch(bare, outs, anchors, agg="max", chip_nodata=-9999)
    assert out.dtype == np.int16 and out.rio.nodata == -9999
    res = out.values
    assert (res[:5, :5] == -9999).all()  # only chip 0 covers it, and it is nodata there
    assert (res[~covered(anchors)] == -9999).all()
    assert (res[covered(anchors)][res[covered(anchors)] != -9999] >= 0).all()
    # an explicit nodata= still wins
    assert stitch(bare, outs, anchors, agg="max", chip_nodata=-9999, nodata=-1).rio.nodata == -1


def test_accessor_takes_chip_nodata() -> None:
    scene = make_scene("u8_nodata")
    chips = sample(scene, Random(14, seed=5), size=SIZE)
    anchors = np.stack([chips.row.values, chips.col.values], axis=1)
    outs = chips.values
    got = scene.patch.stitch(outs, anchors, agg="median", chip_nodata=U8_NODATA).values
    want = stitch(scene, chips, agg="median").values
    np.testing.assert_array_equal(got, want)
    assert not (got == U8_NODATA).any()


# --------------------------------------------------------------------------- inverse_variance


@pytest.mark.parametrize("sampler_kind", SAMPLERS)
@pytest.mark.parametrize("kind", ["f32_nodata", "u8_nodata"])
def test_inverse_variance_drops_a_chip_where_its_mean_or_variance_is_nodata(
    kind: str, sampler_kind: str
) -> None:
    """The op's (mean, variance) pair is one contribution: where either element is the
    chips' nodata, that chip adds nothing to the pixel (its weight is 0), per element;
    a pixel no chip gives a valid pair is NaN in both result bands."""
    scene = make_scene(kind)
    chips = sample(scene, make_sampler(sampler_kind), size=SIZE)
    anchors = np.stack([chips.row.values, chips.col.values], axis=1)
    nodata = chip_nodata_of(scene)
    vals = chips.values
    rng = np.random.default_rng(11)
    k = np.arange(len(vals))[:, None, None]
    mean = vals[:, 0].astype(np.float64) + k  # per-chip offsets: the chips disagree
    var = 1.0 + vals[:, 1].astype(np.float64) % 7 + k % 3
    outs = np.stack([mean, var], axis=1).astype(vals.dtype)
    # the scene's nodata where the chip had it, plus some more in either element
    was = (vals == nodata) if kind == "u8_nodata" else ~np.isfinite(vals) | (vals == nodata)
    outs[was] = nodata
    extra = rng.random(outs.shape) < 0.06
    outs[extra] = nodata
    lazy = chips.copy(data=da.from_array(outs, chunks=(4, *outs.shape[1:])))
    got = stitch(scene, lazy, agg="inverse_variance", chunks=(37, 29), **declared(scene))
    got = got.compute()

    # numpy reference: a = w / var over the chips whose pair is valid there
    H, W = SHAPE
    window = patchflow.make_window("hann", SIZE)
    sa, sax, sb = np.zeros(SHAPE), np.zeros(SHAPE), np.zeros(SHAPE)
    for j, (r, c) in enumerate(anchors):
        x, v = outs[j, 0].astype(np.float64), outs[j, 1].astype(np.float64)
        ok = (outs[j, 0] != nodata) & (outs[j, 1] != nodata) & np.isfinite(x) & np.isfinite(v)
        wk = window.weights(r == 0, r + SIZE[0] == H, c == 0, c + SIZE[1] == W)
        a = np.where(ok, wk / np.where(ok, v, 1.0), 0.0)
        spot = (slice(r, r + SIZE[0]), slice(c, c + SIZE[1]))
        sa[spot] += a
        sax[spot] += a * np.where(ok, x, 0.0)
        sb[spot] += a * wk
    valid = sa > 0
    assert (~valid).any() and valid.any()
    res = got.values
    assert res.shape == (2, *SHAPE) and res.dtype.kind == "f"
    assert np.array_equal(np.isnan(res[0]), ~valid)
    assert np.array_equal(np.isnan(res[1]), ~valid)
    np.testing.assert_allclose(res[0][valid], (sax / np.where(valid, sa, 1))[valid], rtol=1e-5)
    np.testing.assert_allclose(res[1][valid], (sb / np.where(valid, sa, 1) ** 2)[valid], rtol=1e-5)


# --------------------------------------------------------------------------- vote


@pytest.mark.parametrize("sampler_kind", SAMPLERS)
def test_vote_leaves_out_labels_equal_to_the_chips_nodata(sampler_kind: str) -> None:
    """uint8 label chips with 255 (the scene's nodata, carried in the chips' attrs) where
    the chip saw nodata, and more: a 255 is no vote, per element; the most frequent
    valid label wins (ties: the higher summed window weight, then the lower label) and
    a pixel without a valid label is the result's nodata."""
    scene = make_scene("u8_nodata")
    chips = sample(scene, make_sampler(sampler_kind), size=SIZE)
    anchors = np.stack([chips.row.values, chips.col.values], axis=1)
    vals = chips.values
    k = np.arange(len(vals))[:, None, None, None]
    labels = ((vals.astype(np.int64) // 64 + k) % 4).astype(np.uint8)  # chips disagree
    labels[vals == U8_NODATA] = U8_NODATA
    labels[np.random.default_rng(2).random(labels.shape) < 0.1] = U8_NODATA
    lazy = chips.copy(data=da.from_array(labels, chunks=(5, *labels.shape[1:])))
    got = stitch(scene, lazy, agg="vote", n_classes=4, chunks=(37, 29)).compute()

    H, W = SHAPE
    window = patchflow.make_window("hann", SIZE)
    counts = np.zeros((4, 2, *SHAPE))
    weight = np.zeros((4, 2, *SHAPE))
    for j, (r, c) in enumerate(anchors):
        wk = window.weights(r == 0, r + SIZE[0] == H, c == 0, c + SIZE[1] == W)
        spot = (slice(None), slice(r, r + SIZE[0]), slice(c, c + SIZE[1]))
        for label in range(4):
            hit = labels[j] == label
            counts[label][spot] += hit
            weight[label][spot] += hit * wk
    best = np.zeros((2, *SHAPE), np.int64)
    for label in range(1, 4):  # strictly better only: a tie keeps the lower label
        cb = np.take_along_axis(counts, best[None], 0)[0]
        wb = np.take_along_axis(weight, best[None], 0)[0]
        better = (counts[label] > cb) | ((counts[label] == cb) & (weight[label] > wb))
        best[better] = label
    valid = counts.sum(axis=0) > 0
    assert (~valid).any() and valid.any()
    res = got.values
    assert np.array_equal(res[valid], best[valid])
    nodata = got.rio.nodata
    assert nodata is not None and not (res[valid] == nodata).any()
    assert (res[~valid] == nodata).all()
