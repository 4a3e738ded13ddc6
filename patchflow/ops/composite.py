"""Time composites: reduce a ``(time, band, y, x)`` chip stack over time, ignoring NaN."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from patchflow.errors import ParameterError
from patchflow.ops.base import (
    Operator,
    Spec,
    _float_dtype,
    register,
)

# --------------------------------------------------------------------------- composites

#: statistics :class:`Composite` can reduce a time stack with
COMPOSITE_STATS: tuple[str, ...] = ("median", "mean", "min", "max")


def _nan_median(x: np.ndarray, axis: int) -> np.ndarray:
    """``numpy.nanmedian`` along ``axis`` by one sort (NaN sorts last), without warnings.

    All-NaN slices give NaN silently; odd counts return the middle value exactly.
    """
    s = np.sort(x, axis=axis)
    k = np.sum(~np.isnan(x), axis=axis, keepdims=True)
    lo = np.take_along_axis(s, np.maximum(k - 1, 0) // 2, axis=axis)
    hi = np.take_along_axis(s, np.minimum(k // 2, x.shape[axis] - 1), axis=axis)
    with np.errstate(invalid="ignore", over="ignore"):
        mid = np.where(lo == hi, lo, (lo + hi) / 2)
    mid[k == 0] = np.nan
    return np.squeeze(mid, axis=axis)


def _nan_mean(x: np.ndarray, axis: int) -> np.ndarray:
    valid = ~np.isnan(x)
    count = np.sum(valid, axis=axis).astype(x.dtype)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # inf - inf, 0/0
        total = np.sum(np.where(valid, x, 0), axis=axis, dtype=x.dtype)
        return np.asarray(total / count)  # NaN where no date is valid


_REDUCERS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "median": _nan_median,
    "mean": _nan_mean,
    # fmin/fmax skip NaN and give NaN only for all-NaN slices, without a warning
    "min": lambda x, axis: np.fmin.reduce(x, axis=axis),
    "max": lambda x, axis: np.fmax.reduce(x, axis=axis),
}


@register
class Composite(Operator):
    """Per-pixel temporal composite of a time stack (median, mean, min or max), NaN-skipping.

    For ``apply(stack, Composite(), over="time")`` on a ``(time, band, y, x)`` stack (the
    order stackstac gives): each chip is ``(time, band, h, w)``, batched
    ``(n, time, band, h, w)``, and the output ``(band, h, w)`` (``(n, band, h, w)``), float32
    (float64 for float64 input). Each band of each pixel is reduced over the dates where it
    is not NaN, exactly like ``numpy.nanmedian``/``nanmean``/``nanmin``/``nanmax``; a band
    NaN on every date gives NaN, without a RuntimeWarning.

    Parameters
    ----------
    stat
        ``"median"`` (default), ``"mean"``, ``"min"`` or ``"max"``.
    count
        Add one last band, ``"count"``: the number of valid observations of the pixel —
        the dates on which every band is finite — as float.

    Examples
    --------
    >>> import numpy as np
    >>> stack = np.array([1.0, np.nan, 3.0, 10.0]).reshape(1, 4, 1, 1, 1)  # n, time, band, h, w
    >>> Composite("median", count=True)(stack).ravel().tolist()
    [3.0, 3.0]
    >>> Composite("max").output_spec((4, 3), np.dtype("uint16"))
    ((3,), dtype('float32'))
    """

    pointwise = True  # reduces over time, pixel by pixel

    def __init__(self, stat: str = "median", count: bool = False) -> None:
        if stat not in COMPOSITE_STATS:
            close = difflib.get_close_matches(str(stat), COMPOSITE_STATS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ParameterError(
                f"unknown Composite stat {stat!r}; valid: {', '.join(COMPOSITE_STATS)}{hint}"
            )
        if not isinstance(count, bool | np.bool_):
            raise ParameterError(f"Composite count must be True or False, got {count!r}")
        self.stat = stat
        self.count = bool(count)

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        chips = np.asarray(chips)
        if chips.ndim != 5:
            raise ParameterError(
                f"{self!r} needs chips (n, time, band, h, w), got shape {chips.shape}: run it "
                "with apply(..., over='time') on a (time, band, y, x) stack (for one chip "
                "(time, band, h, w), call it on chip[None])"
            )
        x = chips.astype(_float_dtype(chips.dtype), copy=False)
        out = _REDUCERS[self.stat](x, 1)
        if self.count:
            valid = np.isfinite(x).all(axis=2).sum(axis=1)  # (n, h, w)
            out = np.concatenate([out, valid[:, None].astype(out.dtype)], axis=1)
        return out

    def output_spec(self, lead: tuple[int, ...], dtype: np.dtype) -> Spec:
        if len(lead) != 2:
            raise ParameterError(
                f"{self!r} reduces over time: its chips must be (time, band, h, w), but "
                f"these have the non-spatial shape {lead}. Pass over='time' (without it the "
                "operator runs per date on (band, h, w)); for a (time, y, x) stack add a "
                "band dim first: stack.expand_dims('band', axis=1)"
            )
        return (lead[1] + int(self.count),), _float_dtype(dtype)

    def output_band_names(self, names: Sequence[str]) -> list[str]:
        return [*names, "count"] if self.count else list(names)

    def _params(self) -> dict[str, Any]:
        return {"stat": self.stat, "count": self.count}
