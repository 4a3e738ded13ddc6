"""What nodata means in patchflow: the one home of the validity and nodata rules.

Input side (GDAL semantics, per element)
    An input value is *invalid* where it is NaN or equals the input's nodata
    (``input_nodata=``, else rioxarray's ``nodata`` / ``encoded_nodata`` / ``_FillValue``).
    Validity is per band and per date: one band's nodata never invalidates another band.
    By default the operator sees invalid values as NaN (as ``open_rasterio(masked=True)``
    gives them): float input keeps its dtype, integer input *with* a nodata value is
    promoted to float64 for the operator (so ``chip * 1e-4`` computes as it would on the
    integers: numpy's int × float is float64). With a numeric
    ``fill_value`` invalid values are replaced by it instead (for ML models that cannot
    take NaN), the op keeps the input dtype, and an output pixel is invalid wherever any
    input element under it was.

Output side
    An output value is invalid where the operator returned NaN/inf, where no chip covers it
    (``allow_gaps``/``boundary="drop"``), or where its chip failed (``on_error="mask"``).
    Float results hold NaN there (xarray's convention; ``rio.to_raster`` writes NaN as the
    nodata). An explicit ``nodata=`` on a float result becomes its *encoded* nodata: NaN
    in memory, that value on disk. The input's nodata is not carried onto float results:
    an op that changes the quantity (NDVI from reflectance with nodata 0) returns that
    value as a real result, and it must not read back as missing.
    Integer results (``agg="centre"``, ``"max"``, ``"min"``, votes) use, in order: an
    explicit ``nodata=``; the input's nodata (not for class labels); the dtype's max
    (unsigned) or min (signed) — and **no nodata at all** when nothing can be invalid
    (integer input without nodata, full coverage, failures raise). A valid output pixel
    equal to the chosen nodata raises :class:`~patchflow.errors.NodataCollisionError`:
    a real value is never masked silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from patchflow.errors import NodataCollisionError, ParameterError

if TYPE_CHECKING:
    import xarray as xr

__all__ = [
    "OutputNodata",
    "check_collision",
    "input_nodata",
    "invalid_elements",
    "is_value",
    "output_nodata",
    "resolve",
    "work_dtype",
]


def is_value(nodata: Any) -> bool:
    """``True`` for a usable nodata number (not ``None`` and not NaN)."""
    if nodata is None:
        return False
    try:
        return not math.isnan(float(nodata))
    except (TypeError, ValueError):
        return False


def input_nodata(arr: xr.DataArray, override: Any = None) -> Any:
    """The input's nodata value (a number), or ``None`` when only NaN marks invalid data.

    Examples
    --------
    >>> import numpy as np, xarray as xr, rioxarray
    >>> input_nodata(xr.DataArray(np.zeros((2, 2), "u1"), dims=("y", "x")).rio.write_nodata(0))
    np.uint8(0)
    """
    if override is not None:
        return override
    if is_value(arr.rio.nodata):
        return arr.rio.nodata
    # an encoded nodata describes the values on disk: once decoded to float (masked on
    # read) it is NaN in memory, and a real value equal to it must stay valid
    encoded = arr.rio.encoded_nodata
    if is_value(encoded) and arr.dtype.kind != "f":
        return encoded
    fill = arr.attrs.get("_FillValue")
    return fill if is_value(fill) else None


def invalid_elements(values: np.ndarray, nodata: Any) -> np.ndarray | None:
    """Per-element invalidity (non-finite, or equal to ``nodata``), or ``None`` if every
    element is valid.

    Validity is per element, as GDAL's nodata is per band: one band's nodata (or one date's
    cloud) never invalidates the other bands (dates) of the pixel. ``nodata`` ``None`` or
    NaN: only non-finite values are invalid.

    Examples
    --------
    >>> invalid_elements(np.array([[1, 255], [255, 3]], np.uint8), 255)
    array([[False,  True],
           [ True, False]])
    >>> invalid_elements(np.array([1.0, 2.0]), np.nan) is None
    True
    """
    bad: np.ndarray | None = None
    if values.dtype.kind in "fc":
        bad = ~np.isfinite(values)
    if is_value(nodata):
        eq = np.asarray(values == nodata)
        bad = eq if bad is None else (bad | eq)
    if bad is None or not bad.any():
        return None
    return bad


def work_dtype(dtype: np.dtype, nodata: Any, fill_value: Any) -> np.dtype:
    """The dtype the operator sees: integer input with nodata becomes float (NaN = invalid).

    Examples
    --------
    >>> work_dtype(np.dtype("uint8"), 0, None), work_dtype(np.dtype("float32"), -1, None)
    (dtype('float64'), dtype('float32'))
    >>> work_dtype(np.dtype("uint8"), 0, 0), work_dtype(np.dtype("uint8"), None, None)
    (dtype('uint8'), dtype('uint8'))
    """
    if dtype.kind in "fc" or fill_value is not None or not is_value(nodata):
        return dtype
    return np.dtype(np.float64)


def _representable(value: Any, dtype: np.dtype) -> bool:
    if not is_value(value):
        return False
    v = float(value)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return v.is_integer() and info.min <= v <= info.max
    if dtype.kind == "b":
        return v in (0.0, 1.0)
    return True


def output_nodata(
    dtype: np.dtype,
    *,
    explicit: Any,
    source: Any,
    labels: bool,
    can_be_invalid: bool,
) -> tuple[Any, Any]:
    """``(nodata in memory, encoded nodata)`` for a result of ``dtype``.

    ``explicit`` is the user's ``nodata=`` (``None``: not given), ``source`` the input's
    nodata, ``labels`` whether the result holds class labels (an input nodata such as 0
    would hide class 0), ``can_be_invalid`` whether any output pixel can be invalid.

    Examples
    --------
    >>> f4, u1 = np.dtype("float32"), np.dtype("uint8")
    >>> kw = dict(labels=False, can_be_invalid=False)
    >>> output_nodata(u1, explicit=None, source=None, **kw)
    (None, None)
    >>> output_nodata(u1, explicit=None, source=0, **{**kw, "can_be_invalid": True})
    (np.uint8(0), None)
    >>> output_nodata(f4, explicit=-99999.0, source=None, labels=False, can_be_invalid=True)
    (nan, -99999.0)
    """
    if explicit is not None:
        if dtype.kind == "f" and is_value(explicit):
            return np.nan, float(explicit)
        if dtype.kind == "f":
            return np.nan, None
        if not _representable(explicit, dtype):
            raise ParameterError(
                f"nodata={explicit!r} cannot be stored in the {dtype} result; choose a value "
                f"in the {dtype} range that the operator never returns"
            )
        return dtype.type(explicit), None
    if dtype.kind in "fc":
        return np.nan, None
    if not can_be_invalid:
        return None, None
    if not labels and _representable(source, dtype):
        return dtype.type(source), None
    if dtype.kind == "b":
        raise ParameterError(
            "a boolean result can have invalid pixels but has no spare value for nodata; "
            "return uint8 from the operator, or pass nodata="
        )
    info = np.iinfo(dtype)
    return dtype.type(info.max if dtype.kind == "u" else info.min), None


def check_collision(value: np.ndarray, valid: np.ndarray | None, nodata: Any, origin: str) -> None:
    """Raise if a valid output value equals ``nodata`` (it would read back as missing).

    ``origin`` says where the nodata came from, for the message.
    """
    if not is_value(nodata):
        return
    hits = value == nodata
    if valid is not None:
        hits &= valid
    if hits.any():
        raise NodataCollisionError(
            f"{int(hits.sum())} valid output value(s) equal the nodata value {nodata!r} "
            f"({origin}), so they would read back as missing data; pass nodata=<a value the "
            "operator never returns> (CLI: --nodata), or return a float dtype from the op"
        )


@dataclass(frozen=True)
class OutputNodata:
    """The result's nodata: in memory, encoded (on disk), and where it came from."""

    value: Any
    encoded: Any
    #: for :class:`~patchflow.errors.NodataCollisionError` messages
    origin: str


def resolve(
    dtype: np.dtype,
    *,
    explicit: Any,
    source: Any,
    labels: bool,
    can_be_invalid: bool,
    source_name: str = "the input's nodata",
) -> OutputNodata:
    """:func:`output_nodata` plus where the value came from (the one place that decides).

    Examples
    --------
    >>> resolve(np.dtype("uint8"), explicit=None, source=0, labels=False, can_be_invalid=True)
    OutputNodata(value=np.uint8(0), encoded=None, origin="the input's nodata")
    """
    value, encoded = output_nodata(
        dtype, explicit=explicit, source=source, labels=labels, can_be_invalid=can_be_invalid
    )
    chosen = value if encoded is None else encoded
    if explicit is not None:
        origin = "given as nodata="
    elif is_value(source) and is_value(chosen) and float(chosen) == float(source):
        origin = source_name
    else:
        origin = f"the {dtype} default"
    return OutputNodata(value, encoded, origin)
