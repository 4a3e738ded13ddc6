from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import xarray as xr
from dask.base import tokenize
from scipy.signal import windows as sw

from patchflow.errors import ParameterError, WindowError
from patchflow.plan.windows import FLOOR, WINDOWS, Window, make_window

#: the step of the fixed-point 1-D weights
Q = 2.0**-12

NAMES = sorted(WINDOWS)
SHAPES = [(1, 1), (1, 7), (1, 8), (7, 1), (3, 3), (5, 8), (8, 8), (9, 16), (31, 32), (64, 64)]
ALL_FLAGS = (True, True, True, True)


def hann_reference(n: int) -> np.ndarray:
    """Hann sampled at pixel centres: interior of the (n + 2)-point symmetric Hann."""
    k = np.arange(1, n + 1)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * k / (n + 1))


# ---------------------------------------------------------------------------------------
# named windows
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", NAMES)
def test_named_window_basic_properties(name: str, shape: tuple[int, int]) -> None:
    win = make_window(name, shape)
    assert isinstance(win, Window)
    assert win.name == name
    assert win.shape == shape
    assert win.separable
    assert win.w2d is None
    w = win.weights()
    assert w.shape == shape
    assert w.dtype == np.float32
    assert np.isfinite(w).all()
    assert (w > 0).all()
    assert w.max() <= 1.0 + 1e-6
    # symmetric under flips of either axis
    np.testing.assert_allclose(w, w[::-1, :], rtol=1e-6, atol=0)
    np.testing.assert_allclose(w, w[:, ::-1], rtol=1e-6, atol=0)
    # separable: the outer product of the 1-D factors
    assert win.wy is not None
    assert win.wx is not None
    assert win.wy.shape == (shape[0],)
    assert win.wx.shape == (shape[1],)
    np.testing.assert_allclose(w, np.outer(win.wy, win.wx), rtol=3e-4)


@pytest.mark.parametrize("n", [1, 3, 5, 7, 9, 31, 63, 255])
@pytest.mark.parametrize("name", NAMES)
def test_named_window_peaks_at_one_for_odd_sizes(name: str, n: int) -> None:
    # with an odd number of pixels the centre pixel sits on the window's peak
    w = make_window(name, (n, n)).weights()
    assert w.max() == pytest.approx(1.0, abs=1e-6)
    assert w[n // 2, n // 2] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("n", [2, 4, 8, 16, 64, 256])
@pytest.mark.parametrize("name", NAMES)
def test_named_window_max_near_one_for_even_sizes(name: str, n: int) -> None:
    # even sizes straddle the peak; the two centre pixels share the maximum
    w = make_window(name, (1, n)).weights()[0]
    assert w[n // 2 - 1] == pytest.approx(w[n // 2], rel=1e-6)
    assert w.max() == pytest.approx(w[n // 2], rel=1e-6)
    assert 0.4 < w.max() <= 1.0 + 1e-6  # gaussian n=2 (sigma 0.4 px) peaks at ~0.46
    if n >= 64:
        assert w.max() == pytest.approx(1.0, abs=0.02)  # triangular(64) peaks at 65/66


@pytest.mark.parametrize("shape", SHAPES)
def test_hann_matches_scipy_interior(shape: tuple[int, int]) -> None:
    h, w = shape
    ref_y = sw.hann(h + 2, sym=True)[1:-1]
    ref_x = sw.hann(w + 2, sym=True)[1:-1]
    np.testing.assert_allclose(ref_y, hann_reference(h), atol=1e-12)
    win = make_window("hann", shape)
    assert win.wy is not None
    assert win.wx is not None
    # fixed point: every 1-D weight within half a step (2**-13) of the exact value
    np.testing.assert_allclose(win.wy, ref_y, rtol=0, atol=Q / 2)
    np.testing.assert_allclose(win.wx, ref_x, rtol=0, atol=Q / 2)
    np.testing.assert_allclose(win.weights(), np.outer(ref_y, ref_x), rtol=0, atol=Q)


def test_hann_first_pixel_not_zero() -> None:
    # a plain symmetric Hann would be exactly 0 here
    w = make_window("hann", (256, 256)).weights()
    assert w[0, 0] > 0
    # the smallest fixed-point weight, 2**-12 per axis (the exact value is below it)
    assert w[0, 0] == Q * Q
    assert hann_reference(256)[0] < Q


def test_boxcar_is_all_ones() -> None:
    np.testing.assert_array_equal(make_window("boxcar", (5, 8)).weights(), np.ones((5, 8)))


def test_name_is_case_insensitive() -> None:
    win = make_window("HaNN", (8, 8))
    assert win.name == "hann"
    assert win == make_window("hann", (8, 8))


def test_existing_window_passes_through() -> None:
    win = make_window("tukey", (8, 16), alpha=0.25)
    assert make_window(win, (8, 16)) is win
    with pytest.raises(WindowError, match="does not match"):
        make_window(win, (16, 8))


# ---------------------------------------------------------------------------------------
# window parameters
# ---------------------------------------------------------------------------------------


def test_gaussian_sigma() -> None:
    n = 33
    narrow = make_window("gaussian", (1, n), sigma=2.0)
    wide = make_window("gaussian", (1, n), sigma=20.0)
    default = make_window("gaussian", (1, n))
    assert narrow.wx is not None
    assert wide.wx is not None
    assert default.wx is not None
    x = np.arange(n) - (n - 1) / 2
    expected = np.maximum(np.exp(-0.5 * (x / 2.0) ** 2), FLOOR)
    # weights are fixed point, multiples of 2**-12 and at least 2**-12
    q = 2.0**-12
    np.testing.assert_allclose(narrow.wx, np.maximum(expected, q), rtol=0, atol=q / 2)
    np.testing.assert_allclose(default.wx, np.exp(-0.5 * (x / (n / 5.0)) ** 2), rtol=0, atol=q / 2)
    assert (narrow.wx * 4096 == np.round(narrow.wx * 4096)).all()
    assert narrow.wx[0] < default.wx[0] < wide.wx[0]
    assert narrow != wide


def test_gaussian_tiny_sigma_floors_at_positive() -> None:
    w = make_window("gaussian", (1, 64), sigma=0.5).weights()
    assert (w > 0).all()
    assert w.min() == Q  # the fixed-point floor (one step), never 0


@pytest.mark.parametrize("sigma", [0, 0.0, -1.0])
def test_gaussian_bad_sigma(sigma: float) -> None:
    with pytest.raises(WindowError, match="sigma"):
        make_window("gaussian", (8, 8), sigma=sigma)


def test_tukey_alpha() -> None:
    n = 31
    flat = make_window("tukey", (1, n), alpha=0.0).weights()[0]
    half = make_window("tukey", (1, n), alpha=0.5).weights()[0]
    full = make_window("tukey", (1, n), alpha=1.0).weights()[0]
    np.testing.assert_allclose(flat, 1.0)  # alpha=0: rectangular
    np.testing.assert_allclose(full, make_window("hann", (1, n)).weights()[0], atol=Q)
    np.testing.assert_allclose(half, sw.tukey(n + 2, 0.5)[1:-1], rtol=0, atol=Q / 2)
    assert (half >= full - 1e-7).all()
    assert half[0] > full[0]
    assert make_window("tukey", (8, 8)) == make_window("tukey", (8, 8), alpha=0.5)


@pytest.mark.parametrize("alpha", [-0.1, 1.01, 2.0, -5])
def test_tukey_alpha_out_of_range(alpha: float) -> None:
    with pytest.raises(WindowError, match="alpha") as info:
        make_window("tukey", (8, 8), alpha=alpha)
    assert isinstance(info.value, ValueError)


def test_spline_power() -> None:
    n = 41
    p2 = make_window("spline", (1, n)).weights()[0]
    p3 = make_window("spline", (1, n), power=3.0).weights()[0]
    assert make_window("spline", (1, n), power=2.0).weights()[0] == pytest.approx(p2, rel=3e-4)
    assert not np.allclose(p2, p3)
    # near the edge (outer quarter) a higher power gives smaller weights...
    assert p3[0] < p2[0]
    # ...and near the centre (inner half) it gets closer to 1
    assert p3[n // 2 - 3] > p2[n // 2 - 3]
    for w in (p2, p3):
        assert (w > 0).all()
        assert w.max() == pytest.approx(1.0)
        left = w[: n // 2 + 1]
        assert (np.diff(left) >= 0).all()  # monotone rise towards the centre


def test_spline_matches_formula() -> None:
    n = 15
    t = sw.triang(n + 2)[1:-1]
    expected = np.where(t <= 0.5, (2 * t) ** 2 / 2, 1 - (2 * (1 - t)) ** 2 / 2)
    win = make_window("spline", (1, n))
    assert win.wx is not None
    np.testing.assert_allclose(win.wx, expected, rtol=0, atol=Q / 2)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(WindowError, match="unknown window") as info:
        make_window("hamming-ish", (8, 8))
    message = str(info.value)
    assert "hann" in message
    assert "boxcar" in message
    for name in WINDOWS:
        assert name in message
    assert isinstance(info.value, ParameterError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("name", "params"),
    [("hann", {"sigma": 2.0}), ("boxcar", {"alpha": 0.5}), ("tukey", {"power": 2}),
     ("gaussian", {"std": 3.0})],
)  # fmt: skip
def test_wrong_parameters_for_named_window(name: str, params: dict[str, float]) -> None:
    with pytest.raises(WindowError, match="parameters"):
        make_window(name, (8, 8), **params)


def test_parameters_rejected_for_array_and_callable() -> None:
    with pytest.raises(WindowError, match="named windows"):
        make_window(np.ones((8, 8)), (8, 8), alpha=0.5)
    with pytest.raises(WindowError, match="named windows"):
        make_window(lambda h, w: np.ones((h, w)), (8, 8), sigma=1.0)


def test_named_window_with_bad_output_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(WINDOWS, "broken", lambda n: np.ones(n + 1))
    with pytest.raises(WindowError, match="shape"):
        make_window("broken", (8, 8))


# ---------------------------------------------------------------------------------------
# border-aware weights
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(7, 9), (8, 8), (16, 10), (1, 5), (2, 2)])
def test_hann_lead_y_flattens_rows_above_centre(shape: tuple[int, int]) -> None:
    h, _ = shape
    win = make_window("hann", shape)
    base = win.weights()
    w = win.weights(lead_y=True)
    c = h // 2
    for r in range(c):
        np.testing.assert_array_equal(w[r], w[c])
    np.testing.assert_array_equal(w[c:], base[c:])  # the inward half is untouched


@pytest.mark.parametrize("shape", [(7, 9), (8, 8), (16, 10)])
def test_hann_trail_and_x_flags(shape: tuple[int, int]) -> None:
    h, wd = shape
    win = make_window("hann", shape)
    base = win.weights()
    ty = win.weights(trail_y=True)
    cy = (h - 1) // 2
    for r in range(cy + 1, h):
        np.testing.assert_array_equal(ty[r], ty[cy])
    np.testing.assert_array_equal(ty[: cy + 1], base[: cy + 1])
    lx = win.weights(lead_x=True)
    cx = wd // 2
    for c in range(cx):
        np.testing.assert_array_equal(lx[:, c], lx[:, cx])
    np.testing.assert_array_equal(lx[:, cx:], base[:, cx:])
    tx = win.weights(trail_x=True)
    cx = (wd - 1) // 2
    for c in range(cx + 1, wd):
        np.testing.assert_array_equal(tx[:, c], tx[:, cx])
    np.testing.assert_array_equal(tx[:, : cx + 1], base[:, : cx + 1])


@pytest.mark.parametrize("shape", [(1, 1), (1, 8), (7, 9), (8, 8), (64, 32)])
@pytest.mark.parametrize("name", NAMES)
def test_all_flags_positive(name: str, shape: tuple[int, int]) -> None:
    win = make_window(name, shape)
    base = win.weights()
    w = win.weights(*ALL_FLAGS)
    assert w.shape == shape
    assert np.isfinite(w).all()
    assert (w > 0).all()
    assert (w >= base).all()  # flattening only raises weights
    assert w.max() == pytest.approx(base.max())
    # a chip covering the whole scene is flat for every separable window (max at centre)
    if shape[0] % 2 == 1 and shape[1] % 2 == 1:
        np.testing.assert_allclose(w, base.max(), rtol=3e-4)


@pytest.mark.parametrize("name", NAMES)
def test_no_flags_leaves_interior_unchanged(name: str) -> None:
    win = make_window(name, (16, 12))
    assert win.wy is not None
    assert win.wx is not None
    np.testing.assert_allclose(
        win.weights(False, False, False, False), np.outer(win.wy, win.wx), rtol=1e-6
    )
    np.testing.assert_array_equal(win.axis_weights(0, False, False), win.wy)
    np.testing.assert_array_equal(win.axis_weights(1, False, False), win.wx)


def test_weights_read_only_and_cached() -> None:
    win = make_window("hann", (8, 8))
    w = win.weights(lead_y=True)
    assert not w.flags.writeable
    with pytest.raises(ValueError):
        w[0, 0] = 0.0
    assert win.weights(lead_y=True) is w
    # an equal window shares the cache entry
    assert make_window("hann", (8, 8)).weights(lead_y=True) is w
    # flattening must not have mutated the factors
    np.testing.assert_allclose(win.wy, hann_reference(8), rtol=3e-4)


def test_axis_weights_flatten() -> None:
    win = make_window("hann", (9, 9))
    lead = win.axis_weights(0, True, False)
    assert (lead[:4] == lead[4]).all()
    np.testing.assert_array_equal(lead[4:], win.wy[4:])  # type: ignore[index]
    both = win.axis_weights(1, True, True)
    np.testing.assert_allclose(both, 1.0)


# ---------------------------------------------------------------------------------------
# custom 2-D windows
# ---------------------------------------------------------------------------------------


def test_array_window() -> None:
    arr = np.arange(1.0, 13.0).reshape(3, 4)
    win = make_window(arr, (3, 4))
    assert win.name == "array"
    assert not win.separable
    assert win.wy is None
    assert win.wx is None
    np.testing.assert_allclose(win.weights(), arr)
    assert win.weights().dtype == np.float32
    with pytest.raises(WindowError, match="non-separable"):
        win.axis_weights(0, False, False)


def test_array_window_wrong_shape() -> None:
    with pytest.raises(WindowError, match="shape") as info:
        make_window(np.ones((4, 4)), (8, 6))
    message = str(info.value)
    assert "(4, 4)" in message
    assert "(8, 6)" in message
    with pytest.raises(WindowError, match="shape"):
        make_window(np.ones(8), (8, 8))


@pytest.mark.parametrize(
    "bad",
    [
        -np.ones((4, 4)),
        np.where(np.eye(4) > 0, -1.0, 1.0),
        np.full((4, 4), np.nan),
        np.where(np.eye(4) > 0, np.inf, 1.0),
        np.zeros((4, 4)),
    ],
)
def test_array_window_bad_values(bad: np.ndarray) -> None:
    with pytest.raises(WindowError):
        make_window(bad, (4, 4))


def test_array_window_not_numeric() -> None:
    with pytest.raises(WindowError, match="numeric"):
        make_window(np.array([["a", "b"], ["c", "d"]]), (2, 2))


def test_array_window_zeros_get_positive_floor() -> None:
    arr = np.zeros((8, 8))
    arr[2:6, 2:6] = 4.0
    win = make_window(arr, (8, 8))
    w = win.weights()
    assert (w > 0).all()
    assert w.max() == pytest.approx(4.0)
    assert w[0, 0] == pytest.approx(FLOOR * 4.0, rel=3e-4)
    w_all = win.weights(*ALL_FLAGS)
    assert (w_all > 0).all()


def test_array_window_border_flatten_matches_separable() -> None:
    shape = (9, 12)
    named = make_window("hann", shape)
    assert named.wy is not None
    assert named.wx is not None
    custom = make_window(np.outer(named.wy, named.wx), shape)
    for flags in [
        (True, False, False, False),
        (False, True, False, False),
        (False, False, True, False),
        (False, False, False, True),
        (True, False, True, False),
        ALL_FLAGS,
    ]:
        np.testing.assert_allclose(custom.weights(*flags), named.weights(*flags), rtol=3e-4)


def test_callable_window() -> None:
    calls: list[tuple[int, int]] = []

    def pyramid(h: int, w: int) -> np.ndarray:
        calls.append((h, w))
        return np.outer(np.minimum(np.arange(h), np.arange(h)[::-1]) + 1.0, np.ones(w))

    win = make_window(pyramid, (5, 3))
    assert calls == [(5, 3)]
    assert win.name == "pyramid"
    assert win.shape == (5, 3)
    np.testing.assert_allclose(win.weights()[:, 0], [1, 2, 3, 2, 1])
    lam = make_window(lambda h, w: np.ones((h, w)), (4, 4))
    np.testing.assert_array_equal(lam.weights(), np.ones((4, 4)))


def test_callable_window_wrong_shape() -> None:
    with pytest.raises(WindowError, match="shape"):
        make_window(lambda h, w: np.ones((w, h)), (4, 6))


# ---------------------------------------------------------------------------------------
# equality, hashing, tokenizing
# ---------------------------------------------------------------------------------------


def test_equality_and_hash() -> None:
    a = make_window("hann", (8, 8))
    b = make_window("hann", (8, 8))
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert a != make_window("boxcar", (8, 8))
    assert a != make_window("hann", (8, 16))
    assert a != "hann"
    assert make_window("tukey", (8, 8), alpha=0.2) != make_window("tukey", (8, 8), alpha=0.8)
    x = make_window(np.ones((4, 4)), (4, 4))
    y = make_window(np.ones((4, 4)), (4, 4))
    z = make_window(np.full((4, 4), 2.0), (4, 4))
    assert x == y
    assert hash(x) == hash(y)
    assert x != z


def test_distinct_array_windows_do_not_share_cached_weights() -> None:
    x = make_window(np.ones((4, 4)), (4, 4))
    z = make_window(np.full((4, 4), 2.0), (4, 4))
    assert hash(x) == hash(z)  # same name and shape, different values
    np.testing.assert_array_equal(x.weights(), 1.0)
    np.testing.assert_array_equal(z.weights(), 2.0)


def test_dask_tokenize() -> None:
    t1 = tokenize(make_window("hann", (8, 8)))
    t2 = tokenize(make_window("hann", (8, 8)))
    assert t1 == t2
    assert t1 != tokenize(make_window("boxcar", (8, 8)))
    assert t1 != tokenize(make_window("hann", (8, 9)))
    assert tokenize(make_window("tukey", (8, 8), alpha=0.2)) != tokenize(
        make_window("tukey", (8, 8), alpha=0.8)
    )
    arr = np.random.default_rng(0).random((8, 8))
    assert tokenize(make_window(arr, (8, 8))) == tokenize(make_window(arr.copy(), (8, 8)))
    assert tokenize(make_window(arr, (8, 8))) != tokenize(make_window(arr + 1, (8, 8)))


@pytest.mark.parametrize("name", sorted(WINDOWS))
def test_2d_weights_exact_products_of_1d(name: str) -> None:
    # 1-D weights carry 12 significant bits, so float32 2-D weights are exact products and
    # the geometric denominator (outer product of 1-D sums) matches summed 2-D weights
    win = make_window(name, (37, 64))
    assert win.wy is not None and win.wx is not None
    exact = np.outer(win.wy, win.wx)
    np.testing.assert_array_equal(win.weights().astype(np.float64), exact)


@pytest.mark.parametrize("spec", ["hamming", ("kaiser", 8.0), ("general_gaussian", 1.5, 7)])
def test_any_scipy_window_spec(spec: Any) -> None:
    import patchflow

    win = make_window(spec, (24, 20))
    ref = sw.get_window(spec, 26, fftbins=False)[1:-1]
    assert win.wy is not None
    np.testing.assert_allclose(win.wy, ref / ref.max(), rtol=0, atol=Q / 2)
    # and it stitches a pointwise op exactly, edges included
    scene = np.random.default_rng(0).uniform(1, 2, (1, 90, 70))
    arr = xr.DataArray(scene, dims=("band", "y", "x"))
    out = patchflow.apply(arr, lambda c: c * 3.0, size=24, stride=16, window=spec).values
    np.testing.assert_allclose(out, scene * 3.0, rtol=1e-12)


def test_scipy_spec_errors_are_window_errors() -> None:
    with pytest.raises(WindowError, match="get_window"):
        make_window(("kaiser",), (8, 8))
    with pytest.raises(WindowError, match="only apply to patchflow's named windows"):
        make_window("hamming", (8, 8), alpha=0.5)
