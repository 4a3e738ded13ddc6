"""Radiometry: digital numbers to physical values, and DOS1 dark-object subtraction.

This module owns

* :class:`Radiometric` — ``(DN + dn_offset) × gain + offset`` with per-band values, as
  float32, and the constructors reading a product's metadata:
  :meth:`Radiometric.sentinel2` (processing baseline 04.00 offsets) and
  :meth:`Radiometric.landsat_c2` (Collection 2 Level-2 SR/ST scaling);
* :class:`DOS1` — Chavez's (1996) dark-object subtraction with dark values fixed in its
  config;
* the numpy kernels of the streamed dark-object statistic (:func:`dark_partial`,
  :func:`merge_dark_partials`, :func:`dark_value`), which :func:`patchflow.api.dos1` runs
  over a scene chunk by chunk (the graph itself is built there: operators build none).

:class:`~patchflow.ops.DNToReflectance` stays the one-gain special case
(``DNToReflectance(scale=g, offset=o, nodata=n)`` is ``Radiometric(gain=g, offset=o,
nodata=n)`` up to float32 rounding: ``Radiometric`` computes in float64 and rounds once).

Examples
--------
>>> import numpy as np
>>> op = Radiometric.sentinel2(processing_baseline="05.09")
>>> op
Radiometric(gain=0.0001, offset=0.0, dn_offset=-1000.0, nodata=0.0, units='1', \
long_name='reflectance')
>>> op(np.array([[[[0, 1000, 3500]]]], np.uint16)).tolist()
[[[[nan, 0.0, 0.25]]]]
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from patchflow.errors import NoValidPixelsError, ParameterError, RadiometryMetadataError
from patchflow.ops.bands import _indices, _need_bands
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

__all__ = [
    "DOS1",
    "LANDSAT_C2",
    "S2_BASELINE_OFFSET",
    "DarkPartial",
    "Radiometric",
    "band_position",
    "dark_k",
    "dark_partial",
    "dark_value",
    "dos1_from_partials",
    "merge_dark_partials",
]

PerBand = float | tuple[float, ...]

#: Landsat Collection 2 Level-2 scaling (USGS LSDS-1619/1618): kind → (gain, offset, units)
LANDSAT_C2: dict[str, tuple[float, float, str, str]] = {
    "sr": (2.75e-5, -0.2, "1", "surface reflectance"),
    "st": (0.00341802, 149.0, "K", "surface temperature"),
}
#: the DN offset ESA adds from processing baseline 04.00 on (BOA_ADD_OFFSET/RADIO_ADD_OFFSET)
S2_BASELINE_OFFSET = -1000.0
_S2_QUANTIFICATION = 10000.0


def _per_band(value: Any, what: str) -> PerBand:
    """A finite number, or a non-empty tuple of finite numbers (one per band)."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ParameterError(
            f"{what} must be a number or a list of numbers, got {value!r}"
        ) from None
    if arr.ndim > 1 or arr.size == 0:
        raise ParameterError(
            f"{what} must be a number or a non-empty list of numbers, got {value!r}"
        )
    if not np.isfinite(arr).all():
        raise ParameterError(f"{what} must be finite, got {value!r}")
    return float(arr) if arr.ndim == 0 else tuple(float(v) for v in arr)


def _collapsed(values: Sequence[float]) -> PerBand:
    """One number when every band has the same value (the op then fits any band count)."""
    return float(values[0]) if len(set(values)) == 1 else tuple(float(v) for v in values)


def _shaped(value: PerBand, ndim: int) -> np.ndarray:
    """``value`` broadcastable against ``(n, …, bands, h, w)`` chips of ``ndim`` dims."""
    arr = np.asarray(value, dtype=np.float64)
    return arr.reshape(arr.size, 1, 1) if arr.ndim else arr


def _band_list(bands: Band | Sequence[Band] | None) -> list[Band] | None:
    if bands is None:
        return None
    out = [_band(b, "bands") for b in _as_list(bands)]
    if not out:
        raise ParameterError("bands must name at least one band (or be None: every band)")
    return out


class _PerBandOp(Operator):
    """Shared plumbing of operators with per-band values over all or some bands.

    ``bands=None``: per-band values align with the input's bands (their number must
    match). ``bands=[…]``: they align with those bands; the other bands pass through
    unchanged (as floats), so band count and names are kept.
    """

    pointwise = True
    _band_params = ("bands",)
    bands: list[Band] | None

    def _values(self) -> dict[str, PerBand]:
        raise NotImplementedError

    def _count(self) -> int | None:
        """How many per-band values the parameters hold (``None``: all scalars)."""
        sizes = {len(v) for v in self._values().values() if isinstance(v, tuple)}
        if len(sizes) > 1:
            shown = ", ".join(f"{k}={v!r}" for k, v in self._values().items())
            raise ParameterError(
                f"{type(self).__name__}: per-band lists of different lengths ({shown}); "
                "give one value per band in each, or a single number"
            )
        n = sizes.pop() if sizes else None
        if self.bands is not None and n is not None and n != len(self.bands):
            raise ParameterError(
                f"{type(self).__name__}: {n} per-band values for {len(self.bands)} bands "
                f"{self.bands}; give one value per listed band"
            )
        return n

    def _needs_names(self) -> bool:
        return self.bands is not None and super()._needs_names()

    def bind(self, band_names: Sequence[str]) -> Any:
        return self if self.bands is None else super().bind(band_names)

    def _check_count(self, lead: tuple[int, ...]) -> None:
        n = self._count()
        if self.bands is not None:
            self._check_bands(lead)
        elif n is not None and (not lead or lead[-1] != n):
            bands = f"{lead[-1]} bands" if lead else "no band dim"
            raise ParameterError(
                f"{self!r}: {n} per-band values but the input chips have {bands}; give one "
                "value per band, a single number, or bands=[...] naming the bands they are for"
            )

    def _selection(self, chips: np.ndarray) -> list[int] | None:
        """0-based positions of the bands the values apply to (``None``: all of them)."""
        self._check_bound()
        if self.bands is None:
            if self._count() is not None:
                _need_bands(chips, self)
                self._check_count((chips.shape[-3],))
            return None
        _need_bands(chips, self)
        n = chips.shape[-3]
        idx = [i % n for i in _indices(self, self.bands, n)]
        if len(set(idx)) != len(idx):
            raise ParameterError(f"{self!r}: a band is listed twice in bands={self.bands}")
        return idx

    def output_band_names(self, names: Sequence[str]) -> list[str]:
        return list(names)


@register
class Radiometric(_PerBandOp):
    """Digital numbers to physical values: ``(DN + dn_offset) × gain + offset``, as float32.

    Gains and offsets are numbers or per-band lists. The arithmetic is done in float64 and
    rounded to float32 once, so ``(1000 - 1000) × 1e-4`` is exactly 0. DNs equal to
    ``nodata`` and NaN inputs give NaN (through :func:`patchflow.apply` the input's nodata
    already reaches the operator as NaN).

    Parameters
    ----------
    gain, offset
        Multiplicative and additive terms (radiance/reflectance units), a number or one
        per band.
    dn_offset
        Added to the DN before ``gain`` (Sentinel-2's ``BOA_ADD_OFFSET``, in DN), a number
        or one per band.
    bands
        The bands (0-based positions or names) the per-band values are for; the others
        pass through unchanged, as float32. ``None``: every band, in order.
    nodata
        DN marking invalid pixels (``None``: only NaN is invalid).
    units, long_name
        What the output holds, for the result's attrs (e.g. ``"1"``, ``"reflectance"``).

    Examples
    --------
    >>> import numpy as np
    >>> op = Radiometric(gain=[1e-4, 2e-4], offset=-0.1, nodata=0)
    >>> op(np.array([[[[0, 3000]], [[3000, 3000]]]], np.uint16)).astype(float).round(4).tolist()
    [[[[nan, 0.2]], [[0.5, 0.5]]]]
    >>> Radiometric.landsat_c2(kind="sr")(np.array([[[[43636]]]], np.uint16)).round(4).item()
    1.0
    """

    def __init__(
        self,
        gain: float | Sequence[float] = 1.0,
        offset: float | Sequence[float] = 0.0,
        *,
        dn_offset: float | Sequence[float] = 0.0,
        bands: Band | Sequence[Band] | None = None,
        nodata: float | None = None,
        units: str | None = None,
        long_name: str | None = None,
    ) -> None:
        self.gain = _per_band(gain, "gain")
        self.offset = _per_band(offset, "offset")
        self.dn_offset = _per_band(dn_offset, "dn_offset")
        self.bands = _band_list(bands)
        self.nodata = None if nodata is None else float(nodata)
        self.units = None if units is None else str(units)
        self.long_name = None if long_name is None else str(long_name)
        self._count()

    def _values(self) -> dict[str, PerBand]:
        return {"gain": self.gain, "offset": self.offset, "dn_offset": self.dn_offset}

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        chips = np.asarray(chips)
        idx = self._selection(chips)
        x = chips.astype(np.float64)
        sub = x if idx is None else x[..., idx, :, :]
        sub += _shaped(self.dn_offset, x.ndim)
        sub *= _shaped(self.gain, x.ndim)
        sub += _shaped(self.offset, x.ndim)
        if idx is not None:
            x[..., idx, :, :] = sub
        if self.nodata is not None:
            x[chips == self.nodata] = np.nan
        return x.astype(np.float32)

    def output_spec(self, lead: tuple[int, ...], dtype: np.dtype) -> Spec:
        self._check_count(lead)
        return lead, np.dtype(np.float32)

    def output_attrs(self) -> dict[str, Any]:
        attrs = {"units": self.units, "long_name": self.long_name}
        return {k: v for k, v in attrs.items() if v is not None}

    def _params(self) -> dict[str, Any]:
        def plain(v: PerBand) -> float | list[float]:
            return list(v) if isinstance(v, tuple) else v

        return {
            "gain": plain(self.gain),
            "offset": plain(self.offset),
            "dn_offset": plain(self.dn_offset),
            "bands": None if self.bands is None else list(self.bands),
            "nodata": self.nodata,
            "units": self.units,
            "long_name": self.long_name,
        }

    # ---- product constructors

    @classmethod
    def landsat_c2(
        cls,
        kind: Literal["sr", "st"] = "sr",
        *,
        bands: Band | Sequence[Band] | None = None,
        nodata: float | None = 0.0,
    ) -> Radiometric:
        """Landsat Collection 2 Level-2 products (USGS scaling, the same for every band).

        ``kind="sr"``: surface reflectance ``DN × 2.75e-5 − 0.2`` (unitless);
        ``kind="st"``: surface temperature ``DN × 0.00341802 + 149.0`` (kelvin). DN 0 is
        the products' fill value (``nodata``).

        Examples
        --------
        >>> import numpy as np
        >>> op = Radiometric.landsat_c2(kind="st")
        >>> round(float(op(np.array([[[[44000]]]], np.uint16)).item()), 3)
        299.393
        """
        if kind not in LANDSAT_C2:
            raise ParameterError(f"kind must be 'sr' (surface reflectance) or 'st', got {kind!r}")
        gain, offset, units, name = LANDSAT_C2[kind]
        return cls(gain, offset, bands=bands, nodata=nodata, units=units, long_name=name)

    @classmethod
    def sentinel2(
        cls,
        source: Any = None,
        *,
        processing_baseline: str | float | None = None,
        add_offset: float | Sequence[float] | None = None,
        quantification: float | None = None,
        bands: Band | Sequence[Band] | None = None,
        nodata: float | None = 0.0,
    ) -> Radiometric:
        """Sentinel-2 L1C (TOA) or L2A (BOA) DN → reflectance: ``(DN + add_offset) / Q``.

        ESA adds ``RADIO_ADD_OFFSET`` (L1C) / ``BOA_ADD_OFFSET`` (L2A) = −1000 DN from
        processing baseline 04.00 on, and none before; the quantification value ``Q`` is
        10000. Each is taken from ``source``'s attrs where present, else from the
        arguments; arguments and attrs that disagree raise rather than guess.

        Keys read from ``source`` (a DataArray, whose ``attrs`` are read, or a mapping
        such as a GeoTIFF's tags or a STAC asset):

        * ``scale_factor`` / ``add_offset`` (rioxarray's reading of a GeoTIFF's band
          scales and offsets, in reflectance units) or ``raster:bands`` (a STAC asset's
          list of ``{"scale", "offset"}``): used as ``gain``/``offset`` directly;
        * ``BOA_ADD_OFFSET_<band>`` / ``RADIO_ADD_OFFSET_<band>`` per band (band names
          from the ``band`` coordinate if it holds strings, else the ``long_name``
          attr — GeoTIFF band descriptions; ``B4`` and ``B04`` match), else a plain
          ``BOA_ADD_OFFSET`` / ``RADIO_ADD_OFFSET`` for all bands;
        * ``BOA_QUANTIFICATION_VALUE`` / ``QUANTIFICATION_VALUE``;
        * ``processing_baseline`` / ``PROCESSING_BASELINE`` / ``s2:processing_baseline``
          (``"05.09"``, ``5.09``, ``"N0509"``): the offset is −1000 from 04.00 on, 0 before.

        Keys are matched ignoring case. A DataArray already scaled on read
        (``mask_and_scale=True``: float data with ``scale_factor`` in its encoding) is
        refused: converting it again would be wrong.

        Raises
        ------
        RadiometryMetadataError
            Neither the attrs nor the arguments give the offset or the baseline, or they
            disagree, or the data is already scaled.

        Examples
        --------
        >>> op = Radiometric.sentinel2({"PROCESSING_BASELINE": "03.01"})
        >>> op.dn_offset, op.gain
        (0.0, 0.0001)
        >>> Radiometric.sentinel2({})
        Traceback (most recent call last):
        ...
        patchflow.errors.RadiometryMetadataError: Sentinel-2 DN → reflectance needs the \
processing baseline or the add offset, and neither the source's attrs (no \
BOA_ADD_OFFSET/RADIO_ADD_OFFSET, processing_baseline, scale_factor/add_offset or \
raster:bands key) nor the arguments give it; pass processing_baseline='04.00' (or the \
product's) or add_offset=-1000 (0 before baseline 04.00)
        """
        attrs, names = _source_attrs(source)
        band_names = _band_names_for(bands, names)
        found_q = _lookup(attrs, "BOA_QUANTIFICATION_VALUE", "QUANTIFICATION_VALUE")
        q = _agree("quantification", quantification, found_q, default=_S2_QUANTIFICATION)
        baseline = _agree_baseline(processing_baseline, _lookup(attrs, *_BASELINE_KEYS))
        by_baseline = None if baseline is None else _baseline_offset(baseline)
        direct = _direct_scaling(attrs, band_names)
        found_add = _add_offsets(attrs, band_names)
        given_add = None if add_offset is None else _per_band(add_offset, "add_offset")
        add = found_add if given_add is None else given_add
        if given_add is not None and found_add is not None and given_add != found_add:
            raise RadiometryMetadataError(
                f"add_offset={add_offset!r} disagrees with the source's attrs ({found_add!r}); "
                "leave add_offset out to use the attrs"
            )
        if add is not None and by_baseline is not None and not _all_equal(add, by_baseline):
            raise RadiometryMetadataError(
                f"processing baseline {baseline} implies an add offset of {by_baseline:g} DN "
                f"but the offsets are {add!r}; check processing_baseline / add_offset"
            )
        if add is None:
            add = by_baseline
        if direct is not None:
            gain, offset = direct
            # the direct scaling must say what the offsets and baseline say
            if add is not None:
                implied = _times(add, 1.0 / q)
                if not (_close(gain, 1.0 / q) and _close(offset, implied)):
                    raise RadiometryMetadataError(
                        f"the source's scale/offset ({gain!r}, {offset!r}) disagree with "
                        f"add offset {add!r} / quantification {q:g}; check the metadata"
                    )
            return cls(gain, offset, bands=bands, nodata=nodata, units="1", long_name="reflectance")
        if add is None:
            raise RadiometryMetadataError(
                "Sentinel-2 DN → reflectance needs the processing baseline or the add offset, "
                "and neither the source's attrs (no BOA_ADD_OFFSET/RADIO_ADD_OFFSET, "
                "processing_baseline, scale_factor/add_offset or raster:bands key) nor the "
                "arguments give it; pass processing_baseline='04.00' (or the product's) or "
                "add_offset=-1000 (0 before baseline 04.00)"
            )
        return cls(
            1.0 / q,
            0.0,
            dn_offset=add,
            bands=bands,
            nodata=nodata,
            units="1",
            long_name="reflectance",
        )


# --------------------------------------------------------------------------- metadata

_BASELINE_KEYS = ("processing_baseline", "s2:processing_baseline")


def _source_attrs(source: Any) -> tuple[dict[str, Any], list[str] | None]:
    """``(attrs, band names)`` of a DataArray (duck-typed: ops import no xarray) or mapping."""
    if source is None:
        return {}, None
    if isinstance(source, Mapping):
        return dict(source), None
    attrs = getattr(source, "attrs", None)
    if not isinstance(attrs, Mapping):
        raise ParameterError(
            "source must be a DataArray (its attrs are read) or a mapping of attrs/tags, got "
            f"{type(source).__name__}"
        )
    encoding = getattr(source, "encoding", {}) or {}
    dtype = getattr(source, "dtype", None)
    if dtype is not None and np.dtype(dtype).kind == "f" and "scale_factor" in encoding:
        raise RadiometryMetadataError(
            "the data was already scaled on read (float values with scale_factor "
            f"{encoding['scale_factor']!r} in their encoding, as open_rasterio(..., "
            "mask_and_scale=True) gives): it holds reflectance, not DN; open it without "
            "mask_and_scale to convert it here, or skip the conversion"
        )
    names: list[str] | None = None
    dims: tuple[Any, ...] = tuple(getattr(source, "dims", ()))
    coords = getattr(source, "coords", {})
    if len(dims) > 2 and dims[0] in coords:
        labels = np.asarray(coords[dims[0]].values)
        if labels.dtype.kind in "UO" and all(isinstance(v, str) for v in labels.tolist()):
            names = [str(v) for v in labels.tolist()]
    long_name = attrs.get("long_name")
    if names is None and isinstance(long_name, (list, tuple)):
        names = [str(v) for v in long_name]
    return dict(attrs), names


def _lookup(attrs: Mapping[str, Any], *keys: str) -> Any:
    folded = {str(k).casefold(): v for k, v in attrs.items()}
    for key in keys:
        if key.casefold() in folded:
            return folded[key.casefold()]
    return None


def _agree(what: str, given: Any, found: Any, *, default: float) -> float:
    if given is not None and found is not None and float(given) != float(found):
        raise RadiometryMetadataError(
            f"{what}={given!r} disagrees with the source's attrs ({found!r}); leave it out "
            "to use the attrs"
        )
    value = given if given is not None else found
    out = default if value is None else float(value)
    if not (math.isfinite(out) and out > 0):
        raise ParameterError(f"{what} must be a positive number, got {value!r}")
    return out


def _parse_baseline(value: Any) -> tuple[int, int]:
    """``"05.09"``, ``5.09``, ``"N0509"``, ``"0509"`` → ``(5, 9)``."""
    text = str(value).strip().upper().removeprefix("N")
    match = re.fullmatch(r"(\d{2})(\d{2})", text)
    if match is None:
        try:
            text = f"{float(text):.2f}"
        except ValueError:
            raise RadiometryMetadataError(
                f"processing baseline {value!r} is not a Sentinel-2 baseline such as '04.00', "
                "'N0400' or 5.09"
            ) from None
        major, _, minor = text.partition(".")
        return int(major), int(minor)
    return int(match.group(1)), int(match.group(2))


def _agree_baseline(given: Any, found: Any) -> tuple[int, int] | None:
    parsed = [None if v is None else _parse_baseline(v) for v in (given, found)]
    if parsed[0] is not None and parsed[1] is not None and parsed[0] != parsed[1]:
        raise RadiometryMetadataError(
            f"processing_baseline={given!r} disagrees with the source's attrs ({found!r}); "
            "leave it out to use the attrs"
        )
    return parsed[0] or parsed[1]


def _baseline_offset(baseline: tuple[int, int]) -> float:
    return S2_BASELINE_OFFSET if baseline >= (4, 0) else 0.0


def _band_names_for(bands: Any, names: list[str] | None) -> list[str] | None:
    """Names of the bands the values are for: ``bands`` if named, else the source's."""
    if bands is not None:
        listed = _as_list(bands)
        if all(isinstance(b, str) for b in listed):
            return [str(b) for b in listed]
        if names is not None and all(isinstance(b, int) for b in listed):
            return [names[b] for b in listed]
        return None
    return names


def _band_keys(name: str) -> list[str]:
    """``B4`` and ``B04`` (and ``B8A``) spellings of a band name."""
    keys = [name]
    match = re.fullmatch(r"[Bb]0?(\d{1,2}[Aa]?)", name)
    if match:
        digits = match.group(1).upper()
        keys += [f"B{digits}", f"B{digits.zfill(3 if digits.endswith('A') else 2)}"]
    return keys


def _add_offsets(attrs: Mapping[str, Any], names: list[str] | None) -> PerBand | None:
    """Per-band ``*_ADD_OFFSET_<band>`` values, else a plain ``*_ADD_OFFSET``."""
    prefixes = ("BOA_ADD_OFFSET", "RADIO_ADD_OFFSET")
    if names:
        per = [
            _lookup(attrs, *(f"{p}_{k}" for p in prefixes for k in _band_keys(n))) for n in names
        ]
        if all(v is not None for v in per):
            return _collapsed([float(v) for v in per])
        if any(v is not None for v in per):
            missing = [n for n, v in zip(names, per, strict=True) if v is None]
            raise RadiometryMetadataError(
                f"the source's attrs give add offsets for some bands but not for {missing}; "
                "pass add_offset= for every band"
            )
    plain = _lookup(attrs, *prefixes)
    return None if plain is None else float(plain)


def _direct_scaling(
    attrs: Mapping[str, Any], names: list[str] | None
) -> tuple[PerBand, PerBand] | None:
    """``(gain, offset)`` from ``scale_factor``/``add_offset`` or STAC ``raster:bands``."""
    stac = attrs.get("raster:bands")
    if isinstance(stac, Sequence) and stac and all(isinstance(b, Mapping) for b in stac):
        gains = [float(b.get("scale", 1.0)) for b in stac]
        offsets = [float(b.get("offset", 0.0)) for b in stac]
        return _collapsed(gains), _collapsed(offsets)
    scale, offset = attrs.get("scale_factor"), attrs.get("add_offset")
    # rioxarray reports a GeoTIFF without band scales as scale 1, offset 0: DN as is,
    # which says nothing about Sentinel-2's conversion
    if scale in (None, 1, 1.0) and offset in (None, 0, 0.0):
        return None
    return (
        _per_band(1.0 if scale is None else scale, "scale_factor"),
        _per_band(0.0 if offset is None else offset, "add_offset"),
    )


def _all_equal(values: PerBand, target: float) -> bool:
    return all(v == target for v in (values if isinstance(values, tuple) else (values,)))


def _times(values: PerBand, factor: float) -> PerBand:
    return tuple(v * factor for v in values) if isinstance(values, tuple) else values * factor


def _close(a: PerBand, b: PerBand) -> bool:
    return bool(np.allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-6, atol=1e-9))


# --------------------------------------------------------------------------- DOS1


@register
class DOS1(_PerBandOp):
    """Dark-object subtraction, DOS1 (Chavez 1996), with per-band dark values in its config.

    Chavez's DOS1 assumes the darkest objects of a scene (deep shadow, clear deep water)
    would reflect 1 % if there were no atmosphere; whatever they show above that is path
    radiance (haze), the same over the whole scene, subtracted from every pixel. In the
    data's (reflectance) units, per band::

        haze = max(dark − haze_fraction, 0)
        out  = max(x − haze, 0)

    where ``dark`` is the band's dark-object value (its minimum, or a low percentile, over
    the valid pixels: computed by :func:`patchflow.api.dos1`). The haze term is never
    negative (a scene darker than the assumed 1 % gets nothing added) and the result is
    clipped at 0. NaN stays NaN. Output: float32 (float64 for float64 input).

    Parameters
    ----------
    dark
        Dark-object value(s), a number or one per band, in the data's units.
    haze_fraction
        Reflectance assumed for the dark object (0.01: Chavez's 1 %), in the data's units
        (for DN data scaled by 10000 that is 100).
    bands
        The bands (positions or names) ``dark`` is for; the others pass through.

    Examples
    --------
    >>> import numpy as np
    >>> op = DOS1(dark=[0.05, 0.02])
    >>> op(np.array([[[[0.05, 0.30]], [[0.0, 0.2]]]])).round(4).tolist()
    [[[[0.01, 0.26]], [[0.0, 0.19]]]]
    """

    def __init__(
        self,
        dark: float | Sequence[float],
        haze_fraction: float = 0.01,
        *,
        bands: Band | Sequence[Band] | None = None,
    ) -> None:
        self.dark = _per_band(dark, "dark")
        self.haze_fraction = float(haze_fraction)
        if not (math.isfinite(self.haze_fraction) and self.haze_fraction >= 0):
            raise ParameterError(
                f"haze_fraction must be a finite number >= 0, got {haze_fraction!r}"
            )
        self.bands = _band_list(bands)
        self._count()

    def _values(self) -> dict[str, PerBand]:
        return {"dark": self.dark}

    def haze(self) -> PerBand:
        """The per-band haze term subtracted: ``max(dark − haze_fraction, 0)``."""
        if isinstance(self.dark, tuple):
            return tuple(max(d - self.haze_fraction, 0.0) for d in self.dark)
        return max(self.dark - self.haze_fraction, 0.0)

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        chips = np.asarray(chips)
        idx = self._selection(chips)
        ft = _float_dtype(chips.dtype)
        x = chips.astype(ft)
        sub = x if idx is None else x[..., idx, :, :]
        sub -= _shaped(self.haze(), x.ndim).astype(ft)
        np.maximum(sub, ft.type(0), out=sub)  # NaN propagates through maximum
        if idx is not None:
            x[..., idx, :, :] = sub
        return x

    def output_spec(self, lead: tuple[int, ...], dtype: np.dtype) -> Spec:
        self._check_count(lead)
        return lead, _float_dtype(dtype)

    def keeps_values(self) -> bool:
        return False

    def keeps_units(self) -> bool:
        return True  # the haze is subtracted in the data's own units

    def _params(self) -> dict[str, Any]:
        return {
            "dark": list(self.dark) if isinstance(self.dark, tuple) else self.dark,
            "haze_fraction": self.haze_fraction,
            "bands": None if self.bands is None else list(self.bands),
        }


# --------------------------------------------------------------------------- dark objects

#: a band's streamed dark-object statistic so far: (valid pixel count, the smallest valid
#: values seen, unsorted, at most ``k`` of them)
DarkPartial = tuple[int, np.ndarray]


def dark_k(percentile: float | Literal["min"], total: int) -> int:
    """How many smallest values per chunk make the percentile of ≤ ``total`` values exact.

    numpy's (linear) percentile of ``n`` values reads the sorted values at ``floor(i)`` and
    ``floor(i) + 1`` with ``i = (n − 1)·p/100``; ``i`` grows with ``n``, so the ``k`` below
    (for ``n = total``, the pixel count: valid ones are fewer) covers any valid count, and
    the smallest ``k`` values of the scene are among the smallest ``k`` of each chunk.

    Examples
    --------
    >>> dark_k("min", 10**8), dark_k(0.01, 10**8), dark_k(100, 5)
    (1, 10001, 5)
    """
    if percentile == "min":
        return 1
    q = _quantile(percentile)
    return int(min(math.floor((total - 1) * q) + 2, max(total, 1)))


def _quantile(percentile: Any) -> float:
    try:
        p = float(percentile)
    except (TypeError, ValueError):
        p = math.nan
    if not 0.0 <= p <= 100.0:
        raise ParameterError(
            f"percentile must be 'min' or a number in [0, 100] (percent: 0.01 is one pixel "
            f"in 10 000), got {percentile!r}"
        )
    return p / 100.0


def dark_partial(block: np.ndarray, *, k: int, nodata: float | None = None) -> DarkPartial:
    """The valid-pixel count and the ``k`` smallest valid values of ``block`` (one band).

    Valid: not NaN and not ``nodata``. Values are float64.

    Examples
    --------
    >>> n, low = dark_partial(np.array([[5, 0, 3, 9, 1]]), k=2, nodata=0)
    >>> n, sorted(low.tolist())
    (4, [1.0, 3.0])
    """
    values = np.asarray(block, dtype=np.float64).ravel()
    valid = ~np.isnan(values)
    if nodata is not None and not math.isnan(nodata):
        valid &= values != nodata
    values = values[valid]
    if values.size > k:
        values = np.partition(values, k - 1)[:k]
    return int(valid.sum()), values


def merge_dark_partials(parts: Sequence[DarkPartial], *, k: int) -> DarkPartial:
    """Several chunks' :func:`dark_partial` as one (still at most ``k`` values).

    Examples
    --------
    >>> n, low = merge_dark_partials([(3, np.array([4.0, 2.0])), (2, np.array([3.0]))], k=2)
    >>> n, sorted(low.tolist())
    (5, [2.0, 3.0])
    """
    count = sum(int(c) for c, _ in parts)
    values = np.concatenate([np.asarray(v, np.float64) for _, v in parts])
    if values.size > k:
        values = np.partition(values, k - 1)[:k]
    return count, values


def dark_value(part: DarkPartial, percentile: float | Literal["min"]) -> float:
    """The band's dark-object value from its merged partial: exactly
    ``numpy.percentile(valid, percentile)`` (linear method), or the minimum.

    NaN when the band has no valid pixel.

    Examples
    --------
    >>> values = np.arange(1.0, 11.0)
    >>> part = merge_dark_partials([dark_partial(values, k=dark_k(25, 10))], k=dark_k(25, 10))
    >>> dark_value(part, 25), float(np.percentile(values, 25))
    (3.25, 3.25)
    """
    count, values = part
    if count == 0:
        return math.nan
    if percentile == "min":
        return float(values.min())
    q = np.float64(_quantile(percentile))
    # numpy's linear method, step by step (virtual index, floor, gamma, _lerp), so the
    # result is numpy's to the last bit
    vi = (count - 1) * q
    below = math.floor(vi)
    ordered = np.sort(values)
    if vi >= count - 1:
        return float(ordered[count - 1])
    if below + 1 >= ordered.size:  # cannot happen with k from dark_k
        raise AssertionError(f"dark-object sample too small: {ordered.size} for index {vi}")
    a, b = ordered[below], ordered[below + 1]
    gamma = np.float64(vi - below)
    diff = b - a
    return float(b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma)


def band_position(band: Band, names: Sequence[str] | None, n: int) -> int:
    """The 0-based position of ``band`` (a position or a name in ``names``) among ``n``.

    Examples
    --------
    >>> band_position("nir", ["red", "nir"], 2), band_position(-1, None, 3)
    (1, 2)
    """
    band = _band(band, "bands")
    if isinstance(band, str):
        if names is None or band not in names:
            listed = list(names) if names is not None else "none (use 0-based positions)"
            raise ParameterError(f"band {band!r} not found among the input's bands: {listed}")
        return list(names).index(band)
    if not -n <= band < n:
        raise ParameterError(_out_of_range("bands", band, n, names))
    return band % n


def dos1_from_partials(
    parts: Sequence[DarkPartial],
    *,
    percentile: float | Literal["min"],
    haze_fraction: float,
    bands: Sequence[Band] | None,
    labels: Sequence[str],
) -> DOS1:
    """The :class:`DOS1` operator from each band's merged :func:`dark_partial`.

    Raises
    ------
    NoValidPixelsError
        A band (named by ``labels``) has no valid pixel.

    Examples
    --------
    >>> part = dark_partial(np.array([0.2, 0.05, np.nan]), k=1)
    >>> dos1_from_partials([part], percentile="min", haze_fraction=0.01, bands=None,
    ...                    labels=["red"])
    DOS1(dark=[0.05], haze_fraction=0.01)
    """
    dark = [dark_value(part, percentile) for part in parts]
    empty = [label for label, value in zip(labels, dark, strict=True) if math.isnan(value)]
    if empty:
        raise NoValidPixelsError(
            f"dos1: band(s) {empty} have no valid pixel (every value is NaN or nodata), so "
            "no dark object; leave them out with bands=[...], or check the input's nodata"
        )
    return DOS1(dark=dark, haze_fraction=haze_fraction, bands=bands)
