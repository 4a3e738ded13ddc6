"""``Composite``: NaN-skipping temporal composites for ``over="time"`` jobs (issue 12, bug 5)."""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import xarray as xr

import patchflow
from patchflow.errors import ParameterError
from patchflow.ops import COMPOSITE_STATS, Composite, DNToReflectance, from_json, to_json

REFERENCE: dict[str, Callable[..., np.ndarray]] = {
    "median": np.nanmedian,
    "mean": np.nanmean,
    "min": np.nanmin,
    "max": np.nanmax,
}


def reference(stack: np.ndarray, stat: str, axis: int) -> np.ndarray:
    """numpy's nan-reduction (all-NaN slices give NaN, with numpy's warning silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.asarray(REFERENCE[stat](stack, axis=axis))


def cloudy(
    shape: tuple[int, ...], seed: int = 0, dtype: type = np.float32, p: float = 0.4
) -> np.ndarray:
    """``(…, time, band, h, w)`` with whole dates clouded (NaN in every band) per pixel,
    a few single-band gaps, and a corner NaN on every date."""
    rng = np.random.default_rng(seed)
    x: np.ndarray = rng.normal(100, 30, shape).astype(dtype)
    t_axis = len(shape) - 4
    cloud_shape = list(shape)
    cloud_shape[t_axis + 1] = 1  # one draw per (date, pixel), all bands together
    x[np.broadcast_to(rng.random(cloud_shape) < p, shape)] = np.nan
    x[rng.random(shape) < 0.03] = np.nan  # single-band gaps
    x[..., :3, :3] = np.nan  # never observed
    return x


@pytest.mark.parametrize("stat", COMPOSITE_STATS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_numpy_nan_reductions(stat: str, dtype: type) -> None:
    chips = cloudy((3, 7, 4, 16, 12), seed=1, dtype=dtype)  # (n, time, band, h, w)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # all-NaN pixels must not warn
        out = Composite(stat)(chips)
    expect = reference(chips, stat, axis=1)
    assert out.shape == (3, 4, 16, 12)
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expect))
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, expect, rtol=rtol, equal_nan=True)
    assert np.isnan(out[..., :3, :3]).all()


@pytest.mark.parametrize("t", [1, 2, 3, 4, 9])
def test_median_every_valid_count(t: int) -> None:
    # odd and even numbers of valid dates, from 0 to t, in one batch
    rng = np.random.default_rng(t)
    chips = rng.normal(size=(2, t, 1, 1, t + 1)).astype(np.float64)
    for k in range(t + 1):
        chips[:, k:, 0, 0, k] = np.nan  # pixel k has k valid dates
    out = Composite("median")(chips)
    np.testing.assert_array_equal(out, reference(chips, "median", axis=1))


def test_integer_input_and_infinities() -> None:
    dn = np.arange(2 * 5 * 2 * 3 * 3, dtype=np.uint16).reshape(2, 5, 2, 3, 3)
    out = Composite("mean")(dn)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, dn.astype(np.float64).mean(axis=1), rtol=1e-6)
    x = np.array([np.inf, 1.0, np.nan, -np.inf, 5.0]).reshape(1, 5, 1, 1, 1)
    for stat in COMPOSITE_STATS:
        np.testing.assert_array_equal(Composite(stat)(x), reference(x, stat, axis=1), stat)


def test_count_band() -> None:
    chips = cloudy((2, 6, 3, 10, 10), seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = Composite("median", count=True)(chips)
    assert out.shape == (2, 4, 10, 10) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, :3], reference(chips, "median", axis=1), rtol=1e-6)
    expect = np.isfinite(chips).all(axis=2).sum(axis=1)  # dates with every band valid
    np.testing.assert_array_equal(out[:, 3], expect.astype(np.float32))
    assert (out[:, 3, :3, :3] == 0).all()


def test_declarations_config_and_pickle() -> None:
    op = Composite("max", count=True)
    assert op.output_spec((6, 3), np.dtype("uint16")) == ((4,), np.dtype("float32"))
    assert Composite().output_spec((6, 3), np.dtype("float64")) == ((3,), np.dtype("float64"))
    assert op.output_band_names(["b", "g", "r"]) == ["b", "g", "r", "count"]
    assert Composite().output_band_names(["b"]) == ["b"]
    assert op.bind(["b", "g", "r"]) is op
    assert repr(op) == "Composite(stat='max', count=True)"
    assert to_json(op) == '{"op": "Composite", "params": {"stat": "max", "count": true}}'
    assert from_json(to_json(op)) == op
    assert pickle.loads(pickle.dumps(op)) == op
    assert (DNToReflectance() | op).output_spec((5, 2), np.dtype("uint16")) == (
        (3,),
        np.dtype("float32"),
    )


def test_bad_parameters_and_shapes() -> None:
    with pytest.raises(ParameterError, match=r"unknown Composite stat 'medain'.*'median'"):
        Composite("medain")
    with pytest.raises(ParameterError, match="count must be True or False"):
        Composite(count="yes")  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match=r"\(n, time, band, h, w\).*chip\[None\]"):
        Composite()(np.ones((6, 3, 4, 4)))
    # forgetting over="time": the op would see (band, h, w) per date
    with pytest.raises(ParameterError, match=r"over='time'"):
        Composite().output_spec((3,), np.dtype("float32"))


def test_forgetting_over_time_fails_at_call_time() -> None:
    cube = xr.DataArray(np.ones((4, 2, 64, 64)), dims=("time", "band", "y", "x"))
    with pytest.raises(ParameterError, match=r"Pass over='time'"):
        patchflow.apply(cube, Composite(), size=32, stride=24)  # nothing computed


def test_through_apply_on_a_cloudy_cube() -> None:
    t, b, h, w = 6, 3, 150, 130
    data = cloudy((t, b, h, w), seed=7)
    cube = xr.DataArray(
        data,
        dims=("time", "band", "y", "x"),
        coords={"time": np.arange(t), "band": ["blue", "green", "red"]},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        out = patchflow.apply(
            cube, Composite("median", count=True), over="time", size=48, stride=32
        ).compute()
    assert out.dims == ("band", "y", "x")
    assert out.shape == (b + 1, h, w) and out.dtype == np.float32
    assert list(out.band.values) == ["blue", "green", "red", "count"]
    expect = reference(data, "median", axis=0)
    np.testing.assert_array_equal(np.isnan(out.values[:b]), np.isnan(expect))
    np.testing.assert_allclose(out.values[:b], expect, rtol=1e-5, atol=1e-4, equal_nan=True)
    count = np.isfinite(data).all(axis=1).sum(axis=0)
    np.testing.assert_allclose(out.values[b], count, atol=1e-4)


@pytest.mark.parametrize("stat", ["mean", "min", "max"])
def test_other_stats_through_apply(stat: str) -> None:
    data = cloudy((5, 2, 100, 90), seed=11)
    cube = xr.DataArray(data, dims=("time", "band", "y", "x"))
    out = patchflow.apply(cube, Composite(stat), over="time", size=40, stride=30).values
    np.testing.assert_allclose(
        out, reference(data, stat, axis=0), rtol=1e-5, atol=1e-4, equal_nan=True
    )
