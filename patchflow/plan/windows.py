"""Blending windows and their border-aware variants. Pure numpy/scipy.

A window gives each pixel of a chip a weight for the overlap-add blend. Built-in windows
are separable (outer product of two 1-D windows built with ``scipy.signal.windows``) and
are sampled at pixel centres, i.e. the 1-D window of length ``n`` is the interior of the
length ``n + 2`` window. That keeps every weight strictly positive: a plain symmetric Hann
is exactly 0 on the chip's first and last pixel, which is where naive stitchers divide by
zero at the scene border.

Border-aware weights
--------------------
On top of that, a chip that touches a scene edge has the *outward half* of its window
flattened to the window's peak: for a chip starting at row 0, rows above the window's
centre get the centre row's weight. A pixel near a scene edge is therefore dominated by
the chip that reaches that edge instead of getting a vanishing weight. Interior blending
is unchanged. Custom windows get the same treatment, plus a floor of ``1e-6 * max`` so a
window that contains zeros still gives positive weight to every pixel a chip covers.
Because every covered pixel has positive total weight, a pointwise operator is
reproduced exactly (up to float rounding) everywhere, edges included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from patchflow.errors import WindowError

# scipy.signal is imported only for windows given as scipy specs (_scipy_1d): importing
# it takes ~0.6 s (it pulls in scipy.stats, scipy.sparse and scipy.fft).

__all__ = ["WINDOWS", "Window", "WindowSpec", "make_window"]

FLOOR = 1e-6


def _interior(values: np.ndarray) -> np.ndarray:
    return np.asarray(values[1:-1], dtype=np.float64)


# The built-in windows are the textbook formulas of scipy.signal.windows (symmetric
# forms), written out in numpy: importing scipy.signal costs ~0.6 s per process, which the
# default (Hann) path should not pay. tests/plan/test_windows.py checks them against scipy;
# other scipy windows go through scipy.signal.get_window (see _scipy_1d).


def _hann_sym(m: int) -> np.ndarray:
    if m == 1:
        return np.ones(1)
    k = np.arange(m, dtype=np.float64)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * k / (m - 1))


def _triang_sym(m: int) -> np.ndarray:
    k = np.arange(1, (m + 1) // 2 + 1, dtype=np.float64)
    if m % 2 == 0:
        half = (2.0 * k - 1.0) / m
        return np.concatenate([half, half[::-1]])
    half = 2.0 * k / (m + 1.0)
    return np.concatenate([half, half[-2::-1]])


def _hann(n: int) -> np.ndarray:
    return _interior(_hann_sym(n + 2))


def _boxcar(n: int) -> np.ndarray:
    return np.ones(n, dtype=np.float64)


def _triangular(n: int) -> np.ndarray:
    return _interior(_triang_sym(n + 2))


def _gaussian(n: int, sigma: float | None = None) -> np.ndarray:
    # sigma in pixels; the default puts the chip edge at ~2.5 sigma, close to MONAI's 0.125*size
    std = n / 5.0 if sigma is None else float(sigma)
    if std <= 0:
        raise WindowError(f"gaussian sigma must be positive, got {sigma!r}")
    k = np.arange(n, dtype=np.float64) - (n - 1.0) / 2.0
    return np.exp(-(k**2) / (2.0 * std * std))


def _tukey(n: int, alpha: float = 0.5) -> np.ndarray:
    if not 0.0 <= float(alpha) <= 1.0:
        raise WindowError(f"tukey alpha must be within [0, 1], got {alpha!r}")
    a, m = float(alpha), n + 2
    if a <= 0:
        return np.ones(n, dtype=np.float64)
    if a >= 1:
        return _hann(n)
    k = np.arange(m, dtype=np.float64)
    width = int(np.floor(a * (m - 1) / 2.0))
    w = np.ones(m, dtype=np.float64)
    k1, k3 = k[: width + 1], k[m - width - 1 :]
    w[: width + 1] = 0.5 * (1.0 + np.cos(np.pi * (-1.0 + 2.0 * k1 / a / (m - 1))))
    w[m - width - 1 :] = 0.5 * (1.0 + np.cos(np.pi * (-2.0 / a + 1.0 + 2.0 * k3 / a / (m - 1))))
    return _interior(w)


def _spline(n: int, power: float = 2.0) -> np.ndarray:
    """Squared-spline window: piecewise polynomial in the distance to the nearest chip edge.

    With ``t`` in (0, 1] the normalised distance from the edge (1 at the centre), the outer
    quarter rises as ``(2t)**p / 2`` and the inner half approaches 1 as
    ``1 - (2(1-t))**p / 2``; both meet at 1/2 for ``t = 1/2``, so blending two chips that
    overlap by half gives a smooth, monotone hand-over.
    """
    t = _interior(_triang_sym(n + 2))
    outer = (2.0 * t) ** power / 2.0
    inner = 1.0 - (2.0 * (1.0 - t)) ** power / 2.0
    return np.where(t <= 0.5, outer, inner)


WINDOWS: dict[str, Callable[..., np.ndarray]] = {
    "hann": _hann,
    "boxcar": _boxcar,
    "triangular": _triangular,
    "gaussian": _gaussian,
    "tukey": _tukey,
    "spline": _spline,
}


def _quantise(w: np.ndarray, bits: int = 12) -> np.ndarray:
    """Round to multiples of ``2**-bits`` (fixed point), never below ``2**-bits``.

    1-D weights are at most 1, so each is ``k / 4096`` with ``1 <= k <= 4096``: the 2-D
    weights ``wy ⊗ wx`` are integers over ``2**24``, exact in float32, and the geometric
    denominator from the 1-D sums equals the sum of the 2-D weights bit for bit. Fixed
    point (rather than 12 *significant* bits) also bounds the span of every weight sum, so
    ``sum(w * v)`` is exact in float64 for integer values ``|v| < 2**29 / chips-per-pixel``
    and an integer input comes back exactly (933 stays 933, not 932.99994).
    """
    scale = float(1 << bits)
    return np.maximum(np.round(w * scale), 1.0) / scale


def _flatten_1d(w: np.ndarray, lead: bool, trail: bool) -> np.ndarray:
    """Flatten the outward half(s) of a 1-D window to its centre value."""
    if not (lead or trail):
        return w
    out = w.copy()
    n = w.size
    if lead:
        c = n // 2
        out[:c] = np.maximum(out[:c], w[c])
    if trail:
        c = (n - 1) // 2
        out[c + 1 :] = np.maximum(out[c + 1 :], w[c])
    return out


def _flatten_2d(w: np.ndarray, flags: tuple[bool, bool, bool, bool]) -> np.ndarray:
    """Flatten outward halves of a 2-D window along each edge flagged (lead/trail y, x)."""
    out = w.copy()
    ly, ty, lx, tx = flags
    h, wd = w.shape
    if ly:
        out[: h // 2] = np.maximum(out[: h // 2], out[h // 2])
    if ty:
        c = (h - 1) // 2
        out[c + 1 :] = np.maximum(out[c + 1 :], out[c])
    if lx:
        out[:, : wd // 2] = np.maximum(out[:, : wd // 2], out[:, wd // 2 : wd // 2 + 1])
    if tx:
        c = (wd - 1) // 2
        out[:, c + 1 :] = np.maximum(out[:, c + 1 :], out[:, c : c + 1])
    return out


@dataclass(frozen=True)
class Window:
    """A chip-sized blending window with border-aware variants.

    Build one with :func:`make_window`. A separable window stores its two 1-D factors
    (``wy``, ``wx``); a custom 2-D window stores ``w2d``.

    Examples
    --------
    >>> w = make_window("hann", (4, 6))
    >>> w.weights().shape
    (4, 6)
    >>> bool((w.weights() > 0).all())
    True
    """

    name: str
    shape: tuple[int, int]
    wy: np.ndarray | None = None
    wx: np.ndarray | None = None
    w2d: np.ndarray | None = field(default=None, repr=False)

    @property
    def separable(self) -> bool:
        """Whether the window is an outer product of per-axis 1-D windows."""
        return self.wy is not None and self.wx is not None

    @property
    def unit(self) -> bool:
        """Every weight is 1 (a boxcar): sums need no multiplication."""
        if self.wy is not None and self.wx is not None:
            return bool((self.wy == 1).all() and (self.wx == 1).all())
        return self.w2d is not None and bool((self.w2d == 1).all())

    def axis_weights(self, axis: int, lead: bool, trail: bool) -> np.ndarray:
        """1-D weights along ``axis`` (0 = y, 1 = x), flattened at scene edges."""
        base = self.wy if axis == 0 else self.wx
        if base is None:
            raise WindowError("a non-separable window has no per-axis weights")
        return _flatten_1d(base, lead, trail)

    def weights(
        self,
        lead_y: bool = False,
        trail_y: bool = False,
        lead_x: bool = False,
        trail_x: bool = False,
    ) -> np.ndarray:
        """2-D weights for a chip touching the flagged scene edges."""
        return _weights_cached(self, (lead_y, trail_y, lead_x, trail_x))

    def __hash__(self) -> int:
        return hash((self.name, self.shape))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Window):
            return NotImplemented
        return (
            self.name == other.name
            and self.shape == other.shape
            and all(
                (a is None and b is None)
                or (a is not None and b is not None and np.array_equal(a, b))
                for a, b in ((self.wy, other.wy), (self.wx, other.wx), (self.w2d, other.w2d))
            )
        )

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        parts: list[Any] = [self.name, self.shape]
        for a in (self.wy, self.wx, self.w2d):
            parts.append(None if a is None else a.tobytes())
        return tuple(parts)


@lru_cache(maxsize=256)
def _weights_cached(window: Window, flags: tuple[bool, bool, bool, bool]) -> np.ndarray:
    ly, ty, lx, tx = flags
    if window.separable:
        out = np.outer(window.axis_weights(0, ly, ty), window.axis_weights(1, lx, tx))
    else:
        assert window.w2d is not None
        out = _flatten_2d(window.w2d, flags)
    out = out.astype(np.float32)
    out.setflags(write=False)
    return out


def _check_1d(values: Any, n: int, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (n,):
        raise WindowError(f"{what} returned shape {arr.shape}, expected ({n},)")
    return arr


def _check_2d(values: Any, shape: tuple[int, int], what: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise WindowError(f"{what} is not a numeric array: {exc}") from None
    if arr.shape != shape:
        raise WindowError(
            f"{what} has shape {arr.shape}, but chips are {shape}; "
            "a window array must match the chip size"
        )
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise WindowError(f"{what} must be finite and non-negative")
    peak = float(arr.max())
    if peak <= 0:
        raise WindowError(f"{what} is zero everywhere; it must have a positive value")
    return np.maximum(arr, FLOOR * peak)


#: what ``window=`` accepts: a name, a scipy ``get_window`` spec, a 2-D array, a callable
#: ``(h, w) -> array`` or a :class:`Window`
WindowSpec = str | tuple[Any, ...] | np.ndarray | Callable[[int, int], Any] | Window


def _spec_name(spec: str | tuple[Any, ...]) -> str:
    return spec if isinstance(spec, str) else ":".join(str(v) for v in spec)


def _scipy_1d(spec: str | tuple[Any, ...], n: int) -> np.ndarray:
    """A ``scipy.signal.get_window`` spec sampled at pixel centres, peak 1.

    Like the built-ins, the length-``n`` window is the interior of the symmetric length
    ``n + 2`` one, so no weight is 0 at the chip's first and last pixel.
    """
    from scipy.signal import get_window

    try:
        values = np.asarray(get_window(spec, n + 2, fftbins=False), dtype=np.float64)[1:-1]
    except (ValueError, TypeError) as exc:
        raise WindowError(
            f"unknown window {spec!r}: not one of patchflow's ({', '.join(sorted(WINDOWS))}) "
            f"and scipy.signal.get_window says: {exc}. Pass a name, a scipy spec such as "
            "('kaiser', 8.0), a 2-D array or a callable (h, w) -> array"
        ) from None
    if not np.isfinite(values).all() or (values < 0).any() or values.max() <= 0:
        raise WindowError(f"window {spec!r} has negative or non-finite weights")
    return values / values.max()


def make_window(
    window: WindowSpec,
    shape: tuple[int, int],
    **params: Any,
) -> Window:
    """Build a :class:`Window` for chips of ``shape`` ``(h, w)``.

    Parameters
    ----------
    window
        A name (``"hann"``, ``"boxcar"``, ``"triangular"``, ``"gaussian"``, ``"tukey"``,
        ``"spline"``), any other ``scipy.signal.get_window`` spec (``"hamming"``,
        ``("kaiser", 8.0)``, ``("general_gaussian", 1.5, 30)``), a 2-D array of shape
        ``shape``, a callable ``(h, w) -> array``, or an existing :class:`Window`.
    shape
        Chip shape ``(h, w)``.
    **params
        Window parameters: ``sigma`` (gaussian, pixels), ``alpha`` (tukey), ``power``
        (spline).

    Examples
    --------
    >>> make_window("tukey", (8, 8), alpha=0.25).name
    'tukey'
    >>> make_window(("kaiser", 8.0), (8, 8)).name
    'kaiser:8.0'
    """
    h, w = int(shape[0]), int(shape[1])
    if isinstance(window, Window):
        if window.shape != (h, w):
            raise WindowError(f"window shape {window.shape} does not match chips {(h, w)}")
        return window
    if isinstance(window, tuple) or (isinstance(window, str) and window.lower() not in WINDOWS):
        if params:
            raise WindowError(
                f"window parameters {sorted(params)} only apply to patchflow's named windows; "
                f"give scipy windows their parameters in the spec, e.g. ('kaiser', 8.0)"
            )
        wy, wx = _scipy_1d(window, h), _scipy_1d(window, w)
        wy, wx = _quantise(np.maximum(wy, FLOOR)), _quantise(np.maximum(wx, FLOOR))
        return Window(_spec_name(window), (h, w), wy=wy, wx=wx)
    if isinstance(window, str):
        key = window.lower()
        fn = WINDOWS[key]
        try:
            wy = _check_1d(fn(h, **params), h, f"window {key!r}")
            wx = _check_1d(fn(w, **params), w, f"window {key!r}")
        except TypeError as exc:
            raise WindowError(f"bad parameters {params} for window {key!r}: {exc}") from None
        wy, wx = _quantise(np.maximum(wy, FLOOR)), _quantise(np.maximum(wx, FLOOR))
        return Window(key, (h, w), wy=wy, wx=wx)
    if params:
        raise WindowError(f"window parameters {sorted(params)} only apply to named windows")
    if callable(window):
        name = getattr(window, "__name__", "custom")
        return Window(name, (h, w), w2d=_check_2d(window(h, w), (h, w), f"window {name}"))
    return Window("array", (h, w), w2d=_check_2d(window, (h, w), "window array"))
