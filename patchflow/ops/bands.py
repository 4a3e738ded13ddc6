"""Band arithmetic operators: radiometric scaling, normalised differences, band selection,
casting, rescaling and percentile clipping.

Every operator here is batched (``(n, band, h, w)`` in and out), declares its output spec,
and takes bands as 0-based positions or names (see :mod:`patchflow.ops.base`).

Examples
--------
>>> from patchflow.ops import NDVI
>>> import numpy as np
>>> chips = np.stack([np.full((1, 4, 4), 0.1), np.full((1, 4, 4), 0.3)], axis=1)
>>> round(float(NDVI(red=0, nir=1)(chips)[0, 0, 0, 0]), 6)
0.5
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from patchflow.errors import ParameterError
from patchflow.ops.base import (
    Band,
    Operator,
    Spec,
    _as_list,
    _band,
    _float_dtype,
    _out_of_range,
    register,
)


def _indices(op: Operator, bands: Sequence[Band], n_bands: int) -> list[int]:
    """Integer band indices, checked against ``n_bands`` (names must be bound first)."""
    out = []
    for band in bands:
        if isinstance(band, str):
            op._check_bound()
        assert isinstance(band, int)
        if not -n_bands <= band < n_bands:
            raise ParameterError(_out_of_range(repr(op), band, n_bands))
        out.append(band)
    return out


def _need_bands(chips: np.ndarray, op: Operator) -> None:
    if chips.ndim < 4:
        raise ParameterError(
            f"{op!r} needs chips with a band axis (n, bands, …, h, w), got shape {chips.shape}"
        )


# --------------------------------------------------------------------------- built-ins


@register
class DNToReflectance(Operator):
    """Digital numbers to reflectance: ``DN × scale + offset``, as float32.

    ``scale`` here is the radiometric gain (the seed walkthrough's name); the operator's
    *spatial* :attr:`~Operator.scale` stays 1.0 — the gain is available as ``gain``.
    With ``nodata`` set, DNs equal to it become NaN; NaN inputs stay NaN.

    Examples
    --------
    >>> import numpy as np
    >>> op = DNToReflectance(scale=1e-4, offset=-0.1, nodata=0)
    >>> op(np.array([[[[0, 2500]]]], np.uint16)).astype(float).round(4).tolist(), op.scale, op.gain
    ([[[[nan, 0.15]]]], 1.0, 0.0001)
    """

    pointwise = True

    def __init__(self, scale: float = 1e-4, offset: float = 0.0, nodata: float | None = None):
        self.gain = float(scale)
        self.offset = float(offset)
        self.nodata = None if nodata is None else float(nodata)
        if not (math.isfinite(self.gain) and math.isfinite(self.offset)):
            raise ParameterError(f"scale and offset must be finite, got {scale!r}, {offset!r}")

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        chips = np.asarray(chips)
        out = chips.astype(np.float32)  # a fresh array: scale it in place
        out *= np.float32(self.gain)
        if self.offset:
            out += np.float32(self.offset)
        if self.nodata is not None:
            out[chips == self.nodata] = np.nan
        return out

    def output_spec(self, lead: tuple[int, ...], dtype: np.dtype) -> Spec:
        return lead, np.dtype(np.float32)

    def output_band_names(self, names: Sequence[str]) -> list[str]:
        return list(names)

    def _params(self) -> dict[str, Any]:
        return {"scale": self.gain, "offset": self.offset, "nodata": self.nodata}


@register
class NormalizedDifference(Operator):
    """``(a - b) / (a + b)`` of two bands → one band (float32, or float64 for float64 input).

    Bands are indices into, or names of (see :meth:`~Operator.bind`), the chip's first
    non-spatial axis. Where ``a + b == 0`` the result is NaN (an undefined index — 0/0 is
    not 0), and NaN inputs give NaN; the engine gives non-finite outputs zero weight.

    Examples
    --------
    >>> import numpy as np
    >>> chips = np.array([[[[3.0, 0.0]], [[1.0, 0.0]]]])  # (1, 2, 1, 2)
    >>> NormalizedDifference(0, 1)(chips).tolist()
    [[[[0.5, nan]]]]
    """

    pointwise = True

    _band_params = ("a", "b")
    _label = "normalized_difference"
    _long_name = "normalized difference"

    def __init__(self, a: Band, b: Band) -> None:
        self.a = _band(a, "a")
        self.b = _band(b, "b")

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        self._check_bound()
        chips = np.asarray(chips)
        _need_bands(chips, self)
        n = chips.shape[-3]
        ia, ib = (i % n for i in _indices(self, [self.a, self.b], n))
        ft = _float_dtype(chips.dtype)
        # basic slices (views) and astype without a copy when already float: this is the
        # hot path of every NDVI job
        a = chips[..., ia : ia + 1, :, :].astype(ft, copy=False)
        b = chips[..., ib : ib + 1, :, :].astype(ft, copy=False)
        den = a + b
        out = a - b
        with np.errstate(invalid="ignore", divide="ignore"):
            out /= den
        # 0/0 is already NaN; x/0 (only with negative inputs) is undefined too, not ±inf
        out[den == 0] = np.nan
        return out

    def output_spec(self, lead: tuple[int, ...], dtype: np.dtype) -> Spec:
        self._check_bands(lead)
        return (*lead[:-1], 1), _float_dtype(dtype)

    def output_band_names(self, names: Sequence[str]) -> list[str]:
        return [self._label]

    def output_attrs(self) -> dict[str, Any]:
        return {"long_name": self._long_name, "units": "1"}  # a ratio: dimensionless

    def _params(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b}


@register
class NDVI(NormalizedDifference):
    """Normalised difference vegetation index ``(nir - red) / (nir + red)``.

    Examples
    --------
    >>> import numpy as np
    >>> NDVI(red=0, nir=1)(np.array([[[[1.0]], [[3.0]]]])).item()
    0.5
    """

    _label = "ndvi"
    _long_name = "normalized difference vegetation index"

    def __init__(self, red: Band, nir: Band) -> None:
        super().__init__(a=nir, b=red)

    def _params(self) -> dict[str, Any]:
        return {"red": self.b, "nir": self.a}


@register
class NDWI(NormalizedDifference):
    """Normalised difference water index (McFeeters) ``(green - nir) / (green + nir)``.

    Examples
    --------
    >>> import numpy as np
    >>> NDWI(green=0, nir=1)(np.array([[[[3.0]], [[1.0]]]])).item()
    0.5
    """

    _label = "ndwi"
    _long_name = "normalized difference water index"

    def __init__(self, green: Band, nir: Band) -> None:
        super().__init__(a=green, b=nir)

    def _params(self) -> dict[str, Any]:
        return {"green": self.a, "nir": self.b}


@register
class NBR(NormalizedDifference):
    """Normalised burn ratio ``(nir - swir2) / (nir + swir2)``.

    Examples
    --------
    >>> import numpy as np
    >>> NBR(nir=0, swir2=1)(np.array([[[[3.0]], [[1.0]]]])).item()
    0.5
    """

    _label = "nbr"
    _long_name = "normalized burn ratio"

    def __init__(self, nir: Band, swir2: Band) -> None:
        super().__init__(a=nir, b=swir2)

    def _params(self) -> dict[str, Any]:
        return {"nir": self.a, "swir2": self.b}


@register
class SelectBands(Operator):
    """Keep the given bands (indices or names), in that order.

    Examples
    --------
    >>> import numpy as np
    >>> SelectBands([2, 0])(np.arange(3)[None, :, None, None]).ravel().tolist()
    [2, 0]
    """

    pointwise = True
    _keeps_values = True

    _band_params = ("indices",)

    def __init__(self, indices: Band | Sequence[Band]) -> None:
        self.indices: list[Band] = [_band(v, "indices") for v in _as_list(indices)]
        if not self.indices:
            raise ParameterError("SelectBands needs at least one band")

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        self._check_bound()
        chips = np.asarray(chips)
        _need_bands(chips, self)
        return np.take(chips, _indices(self, self.indices, chips.shape[-3]), axis=-3)

    def output_spec(self, lead: tuple[int, ...], dtype: np.dtype) -> Spec:
        self._check_bands(lead)
        return (*lead[:-1], len(self.indices)), dtype

    def output_band_names(self, names: Sequence[str]) -> list[str]:
        out = []
        for v in self.indices:
            out.append(v if isinstance(v, str) else str(list(names)[v]))
        return out

    def _params(self) -> dict[str, Any]:
        return {"indices": list(self.indices)}


@register
class Astype(Operator):
    """Cast to ``dtype``.

    Float → integer casts clip to the integer range and truncate toward zero (numpy
    semantics), integer → integer casts clip to the range too (numpy would wrap around);
    NaN/±inf become ``nodata`` (default: the type's maximum for unsigned,
    minimum for signed integers — the engine's own nodata convention).

    Examples
    --------
    >>> import numpy as np
    >>> Astype("uint8")(np.array([[[[-3.0, 7.9, 300.0, np.nan]]]])).ravel().tolist()
    [0, 7, 255, 255]
    """

    pointwise = True

    def __init__(self, dtype: npt.DTypeLike, nodata: float | None = None) -> None:
        self.dtype = np.dtype(dtype)
        self.nodata = nodata
        if nodata is not None and self.dtype.kind in "iu":
            info = np.iinfo(self.dtype)
            if not (float(nodata).is_integer() and info.min <= nodata <= info.max):
                raise ParameterError(f"nodata {nodata!r} is not a valid {self.dtype.name} value")

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        chips = np.asarray(chips)
        if self.dtype.kind in "iu" and chips.dtype.kind in "fc":
            info = np.iinfo(self.dtype)
            fill = self.nodata
            if fill is None:
                fill = info.max if self.dtype.kind == "u" else info.min
            bad = ~np.isfinite(chips)
            real = np.where(bad, 0, chips.real)
            out = np.clip(real, info.min, info.max).astype(self.dtype)
            out[bad] = fill
            return out
        if self.dtype.kind in "iu" and chips.dtype.kind in "iu":
            # numpy wraps integers around (uint16 300 -> uint8 44): clip like floats are
            src, dst = np.iinfo(chips.dtype), np.iinfo(self.dtype)
            lo, hi = max(src.min, dst.min), min(src.max, dst.max)
            if (lo, hi) != (src.min, src.max):  # (bounds in the input's own dtype)
                chips = np.clip(chips, chips.dtype.type(lo), chips.dtype.type(hi))
        return chips.astype(self.dtype)

    def output_spec(self, lead: tuple[int, ...], dtype: np.dtype) -> Spec:
        return lead, self.dtype

    def output_band_names(self, names: Sequence[str]) -> list[str]:
        return list(names)

    def _params(self) -> dict[str, Any]:
        return {"dtype": self.dtype.name, "nodata": self.nodata}


def _pair(value: Any, what: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ParameterError(f"{what} must be a (low, high) pair, got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ParameterError(f"{what} must be finite, got {value!r}")
    return lo, hi


@register
class Rescale(Operator):
    """Linear map of ``in_range`` onto ``out_range`` (float32, or float64 for float64 input).

    With ``clip`` the result is clipped to ``out_range``. NaN stays NaN.

    Examples
    --------
    >>> import numpy as np
    >>> Rescale((0, 10_000), (0, 1))(np.array([[[[-5, 2500, 20_000]]]])).ravel().tolist()
    [0.0, 0.25, 1.0]
    """

    pointwise = True

    def __init__(
        self,
        in_range: Sequence[float],
        out_range: Sequence[float] = (0.0, 1.0),
        clip: bool = True,
    ) -> None:
        self.in_range = _pair(in_range, "in_range")
        self.out_range = _pair(out_range, "out_range")
        if self.in_range[0] == self.in_range[1]:
            raise ParameterError(f"in_range must have distinct ends, got {in_range!r}")
        self.clip = bool(clip)

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        chips = np.asarray(chips)
        ft = _float_dtype(chips.dtype)
        (a, b), (c, d) = self.in_range, self.out_range
        gain = ft.type((d - c) / (b - a))
        out = (chips.astype(ft) - ft.type(a)) * gain + ft.type(c)
        if self.clip:
            np.clip(out, min(c, d), max(c, d), out=out)
        return out

    def output_spec(self, lead: tuple[int, ...], dtype: np.dtype) -> Spec:
        return lead, _float_dtype(dtype)

    def output_band_names(self, names: Sequence[str]) -> list[str]:
        return list(names)

    def _params(self) -> dict[str, Any]:
        return {
            "in_range": list(self.in_range),
            "out_range": list(self.out_range),
            "clip": self.clip,
        }


def _limits(value: Any) -> tuple[float | tuple[float, ...], float | tuple[float, ...]]:
    try:
        lo, hi = value
    except (TypeError, ValueError):
        raise ParameterError(f"limits must be a (low, high) pair, got {value!r}") from None

    def norm(v: Any) -> float | tuple[float, ...]:
        arr = np.asarray(v, dtype=np.float64)
        if arr.ndim > 1:
            raise ParameterError(f"limits must be numbers or 1-D per-band lists, got {v!r}")
        return float(arr) if arr.ndim == 0 else tuple(float(x) for x in arr)

    return norm(lo), norm(hi)


@register
class PercentileClip(Operator):
    """Clip each band to its ``[p_min, p_max]`` percentiles (optionally stretch to [0, 1]).

    Percentiles are taken per band (the last non-spatial axis: other non-spatial axes,
    e.g. dates, are pooled with the pixels), ignoring NaN.

    ``per="chip"``
        Percentiles of each chip on its own. Cheap and needs no pass over the scene, but
        it is *not* a pointwise operator: overlapping chips stretch the same pixel
        differently, the stitched result blends those (smoothly, thanks to the window),
        it depends on the chip grid and differs from clipping the whole scene.
    ``per="global"``
        Clip to fixed scene-wide ``limits=(lo, hi)`` (numbers, or per-band lists)
        computed beforehand, e.g. with :func:`global_percentiles`. Pointwise: the
        stitched result equals the whole-scene result exactly.

    ``normalize=True`` maps ``[lo, hi]`` onto ``[0, 1]`` (0 where ``lo == hi``). Output is
    float32 (float64 for float64 input); NaN stays NaN.

    Examples
    --------
    >>> import numpy as np
    >>> chips = np.arange(101.0).reshape(1, 1, 1, 101)
    >>> out = PercentileClip(5, 95)(chips)
    >>> float(out.min()), float(out.max())
    (5.0, 95.0)
    >>> PercentileClip(per="global", limits=(0, 10), normalize=True)(chips).max().item()
    1.0
    """

    def __init__(
        self,
        p_min: float = 2.0,
        p_max: float = 98.0,
        per: str = "chip",
        limits: Sequence[Any] | None = None,
        normalize: bool = False,
    ) -> None:
        self.p_min, self.p_max = float(p_min), float(p_max)
        if not 0.0 <= self.p_min < self.p_max <= 100.0:
            raise ParameterError(f"need 0 <= p_min < p_max <= 100, got {p_min!r}, {p_max!r}")
        if per not in ("chip", "global"):
            raise ParameterError(f"per must be 'chip' or 'global', got {per!r}")
        self.per = per
        if per == "global" and limits is None:
            raise ParameterError(
                "PercentileClip(per='global') needs limits=(lo, hi); compute them with "
                "patchflow.api.global_percentiles(data, p_min, p_max)"
            )
        if per == "chip" and limits is not None:
            raise ParameterError("limits= only applies to per='global'")
        self.limits = None if limits is None else _limits(limits)
        self.normalize = bool(normalize)

    def _chip_limits(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = x.shape[0]
        nb = x.shape[-3] if x.ndim > 3 else 1
        flat = (np.moveaxis(x, -3, 1) if x.ndim > 3 else x).reshape(n, nb, -1)
        q = [self.p_min, self.p_max]
        with np.errstate(all="ignore"):
            if np.isnan(flat).any():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    lo, hi = np.nanpercentile(flat, q, axis=-1)
            else:
                lo, hi = np.percentile(flat, q, axis=-1)
        shape = (n, *([1] * (x.ndim - 4)), nb, 1, 1) if x.ndim > 3 else (n, 1, 1)
        return lo.reshape(shape).astype(x.dtype), hi.reshape(shape).astype(x.dtype)

    def _global_limits(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert self.limits is not None
        out = []
        for v in self.limits:
            arr = np.asarray(v, x.dtype)
            if arr.ndim == 1:
                if x.ndim < 4 or x.shape[-3] != arr.size:
                    raise ParameterError(
                        f"{self!r}: {arr.size} per-band limits for chips of shape {x.shape}"
                    )
                arr = arr.reshape(arr.size, 1, 1)
            out.append(arr)
        return out[0], out[1]

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        chips = np.asarray(chips)
        x = chips.astype(_float_dtype(chips.dtype))
        lo, hi = self._chip_limits(x) if self.per == "chip" else self._global_limits(x)
        out = np.clip(x, lo, hi)
        if self.normalize:
            span = hi - lo
            out -= lo
            np.divide(out, span, out=out, where=np.broadcast_to(span != 0, out.shape))
            out[np.broadcast_to(span == 0, out.shape) & ~np.isnan(out)] = 0
        return out

    def output_spec(self, lead: tuple[int, ...], dtype: np.dtype) -> Spec:
        for v in self.limits or ():
            if isinstance(v, tuple) and (not lead or lead[-1] != len(v)):
                bands = f"{lead[-1]} bands" if lead else "no band dim"
                raise ParameterError(
                    f"{self!r}: {len(v)} per-band limits but the input chips have {bands} "
                    f"(non-spatial shape {lead}); give one limit per band, or plain numbers"
                )
        return lead, _float_dtype(dtype)

    def output_band_names(self, names: Sequence[str]) -> list[str]:
        return list(names)

    def is_pointwise(self) -> bool:
        return self.per == "global"  # per-chip limits depend on the chip

    def _params(self) -> dict[str, Any]:
        return {
            "p_min": self.p_min,
            "p_max": self.p_max,
            "per": self.per,
            "limits": None if self.limits is None else list(self.limits),
            "normalize": self.normalize,
        }
