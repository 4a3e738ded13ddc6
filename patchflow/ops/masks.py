"""Cloud and shadow masks as validity: pixels a mask rejects become NaN in every band.

This module owns the operators that turn a quality layer into patchflow's notion of an
invalid pixel (NaN; see :mod:`patchflow.engine.nodata`): :class:`SCL` (Sentinel-2 L2A
scene classification), :class:`QABits` (Landsat Collection 2 ``QA_PIXEL`` bits) and
:class:`Mask` (your own ``where(chip) -> bool`` function), plus the code tables they read
(:data:`SCL_CLASSES`, :data:`QA_FLAGS`, :data:`QA_CONFIDENCE`).

A NaN output pixel gets zero weight in every merge of ``patchflow.apply`` and is skipped
by :class:`~patchflow.ops.Composite` over time, so a mask in front of any operator that
keeps NaN (band maths, indices) is enough: ``SCL() | NDVI(red="red", nir="nir")``.

Layout: the band axis is the chip's *last* non-spatial axis, the one the engine binds
band names against: ``(n, band, h, w)``, or ``(n, time, band, h, w)`` under
``apply(..., over="time")``, so ``SCL() | Composite()`` runs as one job.

Examples
--------
>>> import numpy as np
>>> chips = np.array([[[[100, 200]], [[300, 400]], [[4, 9]]]], np.uint16)  # red, nir, scl
>>> SCL(band=2)(chips).tolist()
[[[[100.0, nan]], [[300.0, nan]]]]
>>> from patchflow.ops import NDVI
>>> (SCL(band="scl") | NDVI(red="red", nir="nir")).bind(["red", "nir", "scl"])
SCL(band=2, keep=[4, 5, 6, 11]) | NDVI(red=0, nir=1)
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from patchflow.errors import ConfigError, MaskValueError, OperatorError, ParameterError
from patchflow.ops.base import (
    _TRUSTED,
    IMPORT_TARGET,
    Band,
    Config,
    Operator,
    Spec,
    _band,
    _float_dtype,
    _json_params,
    _out_of_range,
    _resolve,
    import_callable,
    is_batched,
    register,
)
from patchflow.ops.combinators import _untrusted

__all__ = [
    "QA_CONFIDENCE",
    "QA_FLAGS",
    "SCL",
    "SCL_CLASSES",
    "Mask",
    "QABits",
    "qa_rejected",
]

#: Sentinel-2 L2A scene classification (SCL) values and the names ``keep=`` accepts
#: (ESA Sen2Cor product specification; 0 is the layer's no-data value)
SCL_CLASSES: dict[int, str] = {
    0: "no_data",
    1: "saturated_or_defective",
    2: "dark_area",
    3: "cloud_shadow",
    4: "vegetation",
    5: "not_vegetated",
    6: "water",
    7: "unclassified",
    8: "cloud_medium_probability",
    9: "cloud_high_probability",
    10: "thin_cirrus",
    11: "snow",
}

#: Landsat Collection 2 ``QA_PIXEL`` single-bit flags → bit index (USGS Landsat 8-9
#: Collection 2 Level-2 Science Product Guide, table "Pixel Quality Assessment")
QA_FLAGS: dict[str, int] = {
    "fill": 0,
    "dilated_cloud": 1,
    "cirrus": 2,
    "cloud": 3,
    "cloud_shadow": 4,
    "snow": 5,
    "clear": 6,
    "water": 7,
}

#: ``QA_PIXEL`` two-bit confidences → their lowest bit. Values: 0b00 none, 0b01 low,
#: 0b10 medium (cloud only; "reserved" for the others), 0b11 high
QA_CONFIDENCE: dict[str, int] = {"cloud": 8, "cloud_shadow": 10, "snow": 12, "cirrus": 14}

#: confidence levels ``QABits(confidence=...)`` rejects at (this level and above)
_LEVELS: dict[str, int] = {"medium": 2, "high": 3}

ConfidenceLevel = Literal["medium", "high"]


# --------------------------------------------------------------------------- helpers


def _band_axis_check(op: Operator, band: Band, lead: tuple[int, ...], what: str) -> int:
    """Plan-time check: ``band`` is a position among the chip's bands (the last
    non-spatial axis) and at least one other band is left; returns the band count."""
    if not lead:
        raise ParameterError(
            f"{op!r} needs chips with a band axis ({what} and the bands to mask); the chips "
            "have no non-spatial dim"
        )
    n = lead[-1]
    if isinstance(band, str):
        raise ParameterError(
            f"{op!r} addresses the {what} band by name, but the input's {n} bands have no "
            "names (no string coordinate on the band dim); give its 0-based position, or "
            "label the bands, e.g. obj.assign_coords(band=['red', 'nir', 'scl']) (a GeoTIFF's "
            "band descriptions are used when every band has a distinct one)"
        )
    if not -n <= band < n:
        raise ParameterError(_out_of_range(repr(op), band, n))
    if n < 2:
        raise ParameterError(
            f"{op!r}: the chips have only the {what} band, so no band is left to mask; "
            "stack the bands to mask with it (the mask band is dropped from the output)"
        )
    return n


def _need_band_axis(op: Operator, chips: np.ndarray) -> None:
    if chips.ndim < 4:
        raise ParameterError(
            f"{op!r} needs chips (n, band, h, w) or (n, time, band, h, w), got shape {chips.shape}"
        )


def _codes(
    values: np.ndarray, top: int, describe: Callable[[np.ndarray], str]
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(integer codes, missing)`` of a quality band: NaN is missing (0 in the codes).

    Anything but integers in ``0..top`` (a fraction from bilinear resampling, a
    reflectance band named by mistake, a fill value not declared as nodata) raises
    :class:`MaskValueError` with ``describe(bad values)``: masking by a misread code
    would be silently wrong data.
    """
    if values.dtype.kind in "iu":
        missing = None
        bad = (values < 0) | (values > top)
        codes = values  # once checked non-negative, it indexes the lookup tables as it is
    elif values.dtype.kind == "f":
        missing = np.isnan(values)
        codes = np.where(missing, 0, values)
        with np.errstate(invalid="ignore"):
            bad = (codes < 0) | (codes > top) | (codes != np.floor(codes))
    else:
        raise MaskValueError(describe(np.unique(values)[:5]))
    if bad.any():
        raise MaskValueError(describe(np.unique(values[bad])[:5]))
    return codes.astype(np.intp, copy=False) if missing is not None else codes, missing


def _masked(chips: np.ndarray, index: int, valid: np.ndarray) -> np.ndarray:
    """The bands but ``index`` as float, NaN where ``valid`` (``(n, …, h, w)``) is False."""
    n = chips.shape[-3]
    others = [k for k in range(n) if k != index]
    # fancy indexing copies: the cast needs no second copy, and NaN never reaches chips
    out = chips[..., others, :, :].astype(_float_dtype(chips.dtype), copy=False)
    np.copyto(out, np.nan, where=~valid[..., None, :, :])
    return out


def _shown(values: np.ndarray) -> str:
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values.tolist())


class _BandMask(Operator):
    """Shared by :class:`SCL` and :class:`QABits`: one quality band, dropped from the
    output, deciding the validity of every other band."""

    pointwise = True  # each output pixel depends on the same pixel's bands only
    _keeps_values = True  # unmasked values are the input's, only cast to float
    _band_params = ("band",)
    _what = "quality"

    band: Band

    def _valid(self, codes: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        self._check_bound()
        chips = np.asarray(chips)
        _need_band_axis(self, chips)
        _band_axis_check(self, self.band, chips.shape[1:-2], self._what)
        assert isinstance(self.band, int)
        index = self.band % chips.shape[-3]
        return _masked(chips, index, self._valid(chips[..., index, :, :]))

    def output_spec(self, lead: tuple[int, ...], dtype: np.dtype) -> Spec:
        n = _band_axis_check(self, self.band, lead, self._what)
        return (*lead[:-1], n - 1), _float_dtype(dtype)

    def output_band_names(self, names: Sequence[str]) -> list[str]:
        names = [str(v) for v in names]
        index = _resolve(self.band, names, self) % len(names) if names else 0
        return [v for k, v in enumerate(names) if k != index]


# --------------------------------------------------------------------------- SCL


def _scl_class(value: Any) -> int:
    if isinstance(value, str):
        by_name = {name: code for code, name in SCL_CLASSES.items()}
        if value in by_name:
            return by_name[value]
        close = difflib.get_close_matches(value, list(by_name), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ParameterError(
            f"unknown SCL class {value!r}{hint}; valid: "
            + ", ".join(f"{c} {n}" for c, n in SCL_CLASSES.items())
        )
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        if int(value) in SCL_CLASSES:
            return int(value)
    raise ParameterError(
        f"SCL keep= takes class values 0..11 or their names, got {value!r}; valid: "
        + ", ".join(f"{c} {n}" for c, n in SCL_CLASSES.items())
    )


@register
class SCL(_BandMask):
    """Mask by the Sentinel-2 L2A scene classification (SCL) layer.

    The SCL band is dropped; every other band comes out as float (float32 for integer
    input up to 16 bits and float32 input, float64 for float64 and wider integers), NaN
    where the pixel's class is not in ``keep``. SCL 0 (no data) and NaN (the input's
    nodata, as patchflow hands it over) are never kept.

    =====  ============================  =====================================
    value  name (for ``keep=``)          meaning
    =====  ============================  =====================================
    0      ``no_data``                   no data (always masked)
    1      ``saturated_or_defective``    saturated or defective pixel
    2      ``dark_area``                 dark area pixels (topographic shadow)
    3      ``cloud_shadow``              cloud shadow
    4      ``vegetation``                vegetation
    5      ``not_vegetated``             not vegetated (bare soil, built-up)
    6      ``water``                     water
    7      ``unclassified``              unclassified
    8      ``cloud_medium_probability``  cloud, medium probability
    9      ``cloud_high_probability``    cloud, high probability
    10     ``thin_cirrus``               thin cirrus
    11     ``snow``                      snow or ice
    =====  ============================  =====================================

    Parameters
    ----------
    band
        The SCL layer: its name among the input's band labels, or its 0-based position
        among the chip's bands (the last non-spatial axis).
    keep
        The classes that stay valid (values or names above). Default: vegetation, not
        vegetated, water and snow (4, 5, 6, 11).

    Output bands keep their order and names (the SCL one removed), so band references of
    later operators address the remaining bands: ``SCL() | NDVI(red="red", nir="nir")``
    by name, or by position *after* the SCL band is gone.

    Raises
    ------
    ParameterError
        Unknown classes (the valid ones listed), class 0 in ``keep``, a band that does not
        exist, or chips with no band besides the SCL one.
    MaskValueError
        The SCL band holds values that are no classes (a fraction, or outside 0..11).

    Examples
    --------
    >>> import numpy as np
    >>> chips = np.array([[[[10, 20, 30]], [[3, 4, 0]]]], np.uint16)  # (1, 2 bands, 1, 3)
    >>> SCL(band=1)(chips).tolist()
    [[[[nan, 20.0, nan]]]]
    >>> SCL(band=-1, keep=["vegetation", 3])
    SCL(band=-1, keep=[3, 4])
    """

    _what = "SCL"

    def __init__(self, band: Band = "scl", *, keep: Sequence[int | str] = (4, 5, 6, 11)) -> None:
        self.band = _band(band, "band")
        if isinstance(keep, (str, int, np.integer)):
            keep = [keep]
        try:
            values = list(keep)
        except TypeError:
            raise ParameterError(
                f"SCL keep= is a list of class values or names, got {keep!r}"
            ) from None
        codes = sorted({_scl_class(v) for v in values})
        if not codes:
            raise ParameterError("SCL keep= is empty: every pixel would be masked")
        if 0 in codes:
            raise ParameterError(
                "SCL class 0 is the layer's no data: it cannot be kept; drop it from keep="
            )
        self.keep: tuple[int, ...] = tuple(codes)
        self._lut = np.zeros(len(SCL_CLASSES), bool)
        self._lut[list(self.keep)] = True

    def _valid(self, codes: np.ndarray) -> np.ndarray:
        def describe(bad: np.ndarray) -> str:
            return (
                f"{self!r}: the SCL band (band {self.band}) holds {_shown(bad)}, which are "
                "no scene classes (integers 0..11); check that band= names the SCL layer, "
                "that it was resampled with nearest neighbour, and that a no-data value "
                "other than 0 is the input's nodata (input_nodata=) so it reads as NaN"
            )

        ints, missing = _codes(codes, len(SCL_CLASSES) - 1, describe)
        valid = self._lut[ints]
        if missing is not None:
            valid &= ~missing
        return valid

    def _params(self) -> dict[str, Any]:
        return {"band": self.band, "keep": list(self.keep)}


# --------------------------------------------------------------------------- QA bits


def _flag(name: Any) -> str:
    if isinstance(name, str) and name in QA_FLAGS:
        return name
    close = difflib.get_close_matches(str(name), list(QA_FLAGS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ParameterError(
        f"unknown QA_PIXEL flag {name!r}{hint}; valid flags: "
        + ", ".join(f"{n} (bit {b})" for n, b in QA_FLAGS.items())
    )


def _confidence(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ParameterError(
            "QABits confidence= maps a class to the lowest confidence rejected, e.g. "
            f"{{'cloud': 'medium', 'cirrus': 'high'}}; got {value!r}"
        )
    out: dict[str, str] = {}
    for name, level in value.items():
        if name not in QA_CONFIDENCE:
            close = difflib.get_close_matches(str(name), list(QA_CONFIDENCE), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ParameterError(
                f"unknown QA_PIXEL confidence class {name!r}{hint}; valid: "
                + ", ".join(f"{n} (bits {b}-{b + 1})" for n, b in QA_CONFIDENCE.items())
            )
        if level not in _LEVELS:
            raise ParameterError(
                f"QABits confidence level for {name!r} must be 'medium' or 'high' (that "
                f"level and above is rejected), got {level!r}; 'low' is set on almost every "
                "clear pixel, so it is not offered"
            )
        if level == "medium" and name != "cloud":
            raise ParameterError(
                f"{name} confidence has no 'medium' in Collection 2 QA_PIXEL (0b10 is "
                f"reserved for it: only low and high are used); use {{'{name}': 'high'}}"
            )
        out[str(name)] = str(level)
    return dict(sorted(out.items(), key=lambda kv: QA_CONFIDENCE[kv[0]]))


def qa_rejected(
    words: np.ndarray, reject: Sequence[str], confidence: Mapping[str, str] | None = None
) -> np.ndarray:
    """Whether each ``QA_PIXEL`` word is rejected: any ``reject`` flag set, or a class's
    confidence at or above ``confidence[class]``.

    Examples
    --------
    >>> qa_rejected(np.array([21824, 22280, 1]), ["fill", "cloud"]).tolist()
    [False, True, True]
    >>> qa_rejected(np.array([22080]), [], {"cloud": "medium"}).tolist()
    [True]
    """
    words = np.asarray(words).astype(np.int64)
    bits = sum(1 << QA_FLAGS[_flag(f)] for f in reject)
    out = (words & bits) != 0
    for name, level in _confidence(confidence).items():
        out |= ((words >> QA_CONFIDENCE[name]) & 0b11) >= _LEVELS[level]
    return np.asarray(out)


@register
class QABits(_BandMask):
    """Mask by a Landsat Collection 2 ``QA_PIXEL`` band (bit flags and confidences).

    The QA band is dropped; every other band comes out as float (float32 for integer
    input up to 16 bits, float64 for float64), NaN where the pixel's QA word sets a flag
    in ``reject`` or reaches a ``confidence`` level, and where the QA value is NaN (the
    input's nodata, as patchflow hands it over).

    ``QA_PIXEL`` bits (USGS Landsat 8-9 Collection 2 Level-2 Science Product Guide):

    =====  =====================  ===================================================
    bits   name                   meaning
    =====  =====================  ===================================================
    0      ``fill``               fill (no data)
    1      ``dilated_cloud``      dilated cloud
    2      ``cirrus``             cirrus, high confidence (Landsat 8-9 only)
    3      ``cloud``              cloud
    4      ``cloud_shadow``       cloud shadow
    5      ``snow``               snow
    6      ``clear``              clear (neither cloud nor dilated cloud set)
    7      ``water``              water
    8-9    ``cloud``              cloud confidence
    10-11  ``cloud_shadow``       cloud shadow confidence
    12-13  ``snow``               snow/ice confidence
    14-15  ``cirrus``             cirrus confidence
    =====  =====================  ===================================================

    Confidence pairs: 0b00 none, 0b01 low, 0b10 medium (cloud; reserved for the others),
    0b11 high. E.g. 21824 (``0b0101_0101_0100_0000``) is clear land, 21952 clear water,
    22280 high-confidence cloud.

    Parameters
    ----------
    band
        The QA_PIXEL layer: its name among the input's band labels, or its 0-based
        position among the chip's bands (the last non-spatial axis).
    reject
        Flags that make a pixel invalid (names above; ``"clear"`` and ``"water"`` may be
        rejected too). Default: fill, dilated cloud, cirrus, cloud, cloud shadow, snow.
    confidence
        ``{class: "medium" | "high"}``: also reject pixels whose confidence for that
        class (``cloud``, ``cloud_shadow``, ``snow``, ``cirrus``) is at least that level.
        ``"medium"`` exists for ``cloud`` only.

    Raises
    ------
    ParameterError
        Unknown flags or confidence classes (the valid ones listed), bad levels, a band
        that does not exist, or chips with no band besides the QA one.
    MaskValueError
        The QA band holds values that are no QA words (a fraction, negative, > 65535).

    Examples
    --------
    >>> import numpy as np
    >>> chips = np.array([[[[7, 8, 9]], [[21824, 22280, 1]]]], np.uint16)
    >>> QABits(band=1)(chips).tolist()
    [[[[7.0, nan, nan]]]]
    >>> QABits(band=1, reject=["fill"], confidence={"cloud": "high"})(chips).tolist()
    [[[[7.0, nan, nan]]]]
    """

    _what = "QA_PIXEL"

    def __init__(
        self,
        band: Band = "qa_pixel",
        *,
        reject: Sequence[str] = (
            "fill",
            "dilated_cloud",
            "cirrus",
            "cloud",
            "cloud_shadow",
            "snow",
        ),
        confidence: Mapping[str, ConfidenceLevel] | None = None,
    ) -> None:
        self.band = _band(band, "band")
        if isinstance(reject, str):
            reject = [reject]
        try:
            names = list(reject)
        except TypeError:
            raise ParameterError(
                f"QABits reject= is a list of flag names, got {reject!r}; valid flags: "
                + ", ".join(QA_FLAGS)
            ) from None
        flags = {_flag(f) for f in names}
        self.reject: tuple[str, ...] = tuple(sorted(flags, key=QA_FLAGS.__getitem__))
        self.confidence: dict[str, str] = _confidence(confidence)
        if not self.reject and not self.confidence:
            raise ParameterError(
                "QABits rejects nothing (reject= and confidence= are both empty): every "
                "pixel would stay valid; name the flags to reject"
            )
        self._lut: np.ndarray | None = None
        self._lock = threading.Lock()

    def _table(self) -> np.ndarray:
        """Validity of every 16-bit QA word (64 KiB, built once per process)."""
        lut = self._lut
        if lut is None:
            with self._lock:
                if self._lut is None:
                    words = np.arange(1 << 16)
                    self._lut = ~qa_rejected(words, self.reject, self.confidence)
                lut = self._lut
        return lut

    def _valid(self, codes: np.ndarray) -> np.ndarray:
        def describe(bad: np.ndarray) -> str:
            return (
                f"{self!r}: the QA_PIXEL band (band {self.band}) holds {_shown(bad)}, which "
                "are no QA words (integers 0..65535); check that band= names the QA_PIXEL "
                "layer (not a reflectance band) and that it was resampled with nearest "
                "neighbour"
            )

        ints, missing = _codes(codes, (1 << 16) - 1, describe)
        valid = self._table()[ints]
        if missing is not None:
            valid &= ~missing
        return valid

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_lut": None, "_lock": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _params(self) -> dict[str, Any]:
        return {
            "band": self.band,
            "reject": list(self.reject),
            "confidence": dict(self.confidence) or None,
        }


# --------------------------------------------------------------------------- Mask


@register
class Mask(Operator):
    """Mask by your own rule: ``where(chip)`` returns True where a pixel is **invalid**.

    Every band comes out as float (float32 for integer input up to 16 bits and float32
    input, float64 otherwise), NaN where ``where`` is True. ``where`` receives what the
    operator receives (the input's nodata already NaN) and returns a boolean array whose
    last two dims are the chip's ``(h, w)`` and which broadcasts to the chip: ``(h, w)``
    masks every band alike, ``(band, h, w)`` band by band.

    Parameters
    ----------
    where
        ``"MODULE:CALLABLE"``, a function of your own module named by import path (the
        config then holds the path, like :class:`~patchflow.ops.Imported`; loading it from
        a config runs that code, so it needs ``trusted=True``), or a Python callable
        (works in Python; its config cannot be written, like :class:`~patchflow.ops.Lambda`).
    params
        Keyword arguments for an imported ``where`` (JSON values), called as
        ``where(chip, **params)``.
    batched
        ``where`` takes the whole ``(n, …, h, w)`` batch instead of one chip
        (default: whether it is marked with :func:`~patchflow.ops.batched`).
    pointwise
        ``where`` decides each pixel from that pixel alone (a threshold, not a
        dilation): the engine may then run it once per block (see
        :func:`~patchflow.ops.op_pointwise`). Declare only what holds.

    Raises
    ------
    ConfigError
        ``where`` is neither ``MODULE:CALLABLE`` nor callable, its config is asked for
        while it is a Python callable, or a config naming it is loaded without ``trusted``.
    ImportTargetError, UserCodeError
        While planning (or on first use): the module or name is not found, or the module
        raised while importing.
    OperatorError
        ``where`` returned something that is no boolean mask of the chip.

    Examples
    --------
    >>> import numpy as np
    >>> op = Mask(lambda chip: chip[0] > 100)  # (h, w): invalid where band 0 > 100
    >>> op(np.array([[[[50, 150]], [[1, 2]]]], np.uint16)).tolist()
    [[[[50.0, nan]], [[1.0, nan]]]]
    >>> Mask("numpy:isnan", pointwise=True)
    Mask('numpy:isnan', pointwise=True)
    """

    _keeps_values = True

    def __init__(
        self,
        where: str | Callable[..., Any],
        *,
        params: Mapping[str, Any] | None = None,
        batched: bool | None = None,
        pointwise: bool = False,
    ) -> None:
        if isinstance(where, str):
            if not IMPORT_TARGET.match(where):
                raise ConfigError(
                    "Mask needs where='MODULE:CALLABLE' (a module path, a colon and a "
                    f"function in it, e.g. 'mypkg.clouds:thick'), or a callable; got {where!r}"
                )
            self.params: dict[str, Any] = _json_params(params, where)
        elif callable(where):
            if params:
                raise ParameterError(
                    "params= are for where='MODULE:CALLABLE'; bind them to your callable "
                    "yourself (functools.partial)"
                )
            self.params = {}
        else:
            raise ConfigError(
                "Mask needs where='MODULE:CALLABLE' or a callable returning True where a "
                f"pixel is invalid, got {type(where).__name__}"
            )
        if batched is not None and not isinstance(batched, (bool, np.bool_)):
            raise ParameterError(f"Mask batched= must be True, False or None, got {batched!r}")
        if not isinstance(pointwise, (bool, np.bool_)):
            raise ParameterError(f"Mask pointwise= must be True or False, got {pointwise!r}")
        self.where = where
        self.batched_where = None if batched is None else bool(batched)
        self.fn_pointwise = bool(pointwise)
        self._fn: Callable[..., Any] | None = None

    def _where_fn(self) -> Callable[..., Any]:
        if not isinstance(self.where, str):
            return self.where
        if self._fn is None:
            self._fn = import_callable(self.where)
        return self._fn

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fn": None}  # the path travels, never the function

    def _is_batched(self, fn: Callable[..., Any]) -> bool:
        return is_batched(fn) if self.batched_where is None else self.batched_where

    def _mask_of(self, fn: Callable[..., Any], chip: np.ndarray, where: str) -> np.ndarray:
        raw = fn(chip, **self.params)
        mask = np.asarray(raw)
        if mask.dtype != np.bool_:
            raise OperatorError(
                f"{self!r}: where returned dtype {mask.dtype} for {where} {chip.shape}; it "
                "must return a boolean array, True where the pixel is invalid (e.g. "
                "`return probability > 0.5`, or `mask != 0` for a 0/1 mask)"
            )
        fits = mask.ndim >= 2 and mask.shape[-2:] == chip.shape[-2:]
        if fits:
            try:
                fits = np.broadcast_shapes(mask.shape, chip.shape) == chip.shape
            except ValueError:
                fits = False
        if not fits:
            raise OperatorError(
                f"{self!r}: where returned shape {mask.shape} for {where} {chip.shape}; it "
                f"must end in the chip's (h, w) {chip.shape[-2:]} and broadcast to the "
                "chip: (h, w) for every band alike, (band, h, w) band by band"
            )
        return mask

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        chips = np.asarray(chips)
        if chips.ndim < 3:
            raise ParameterError(f"{self!r} needs chips (n, …, h, w), got shape {chips.shape}")
        fn = self._where_fn()
        seen = chips.view()
        seen.flags.writeable = False  # where decides; it must not change the data
        out = chips.astype(_float_dtype(chips.dtype), copy=True)
        if self._is_batched(fn):
            mask = self._mask_of(fn, seen, "the batch")
            np.copyto(out, np.nan, where=mask)
        else:
            for k in range(len(seen)):
                np.copyto(out[k], np.nan, where=self._mask_of(fn, seen[k], "a chip"))
        return out

    def output_spec(self, lead: tuple[int, ...], dtype: np.dtype) -> Spec:
        self._where_fn()  # a wrong MODULE:CALLABLE fails while planning
        return lead, _float_dtype(dtype)

    def output_band_names(self, names: Sequence[str]) -> list[str]:
        return list(names)

    def is_pointwise(self) -> bool:
        return self.fn_pointwise

    def _params(self) -> dict[str, Any]:
        return {
            "where": self.where,
            "params": self.params,
            "batched": self.batched_where,
            "pointwise": self.fn_pointwise,
        }

    def get_config(self) -> Config:
        if not isinstance(self.where, str):
            raise ConfigError(
                f"{self!r} masks with a Python callable and cannot be written to a config; "
                "put the function in a module and name it: Mask('MODULE:CALLABLE')"
            )
        return super().get_config()

    @classmethod
    def _from_params(cls, params: dict[str, Any]) -> Mask:
        unknown = set(params) - {"where", "params", "batched", "pointwise"}
        if unknown or "where" not in params:
            raise ConfigError(
                f"Mask takes 'where', 'params', 'batched' and 'pointwise'; got {sorted(params)}"
            )
        if not _TRUSTED.get():
            raise _untrusted(f"Mask {params['where']!r}")
        return cls(
            params["where"],
            params=params.get("params"),
            batched=params.get("batched"),
            pointwise=params.get("pointwise", False),
        )

    def __repr__(self) -> str:
        shown = (
            repr(self.where)
            if isinstance(self.where, str)
            else getattr(self.where, "__qualname__", None) or repr(self.where)
        )
        args = [shown]
        if self.params:
            args.append(f"params={self.params!r}")
        if self.batched_where is not None:
            args.append(f"batched={self.batched_where}")
        if self.fn_pointwise:
            args.append("pointwise=True")
        return f"Mask({', '.join(args)})"
