"""Writing a Cloud-Optimized GeoTIFF: GDAL COG creation options, checked before a job runs,
and the copy of a finished staging Zarr v2 store into a COG by GDAL.

``patchflow.run(obj, op, store="out.tif", creation_options=...)`` streams the blocks into a
staging Zarr v2 store next to the output (memory stays bounded at any scene size), then
GDAL's COG driver copies it, reading the store through GDAL's Zarr driver: no intermediate
GeoTIFF, no second dask computation. This module owns the options (:data:`COG_OPTIONS`,
:func:`cog_options`) and the copy (:func:`zarr_to_cog`); :mod:`patchflow.io.store` owns
the job.

GDAL ignores an unknown creation option or a bad value with a log message (``COMPRESS=FOO``
writes an uncompressed file, ``LEVEL=13`` the default level) and refuses some combinations
only once it writes (``PREDICTOR=3`` on integers), after the whole job has run; so every
option is checked here first, against the GDAL COG driver's option list (GDAL 3.10) and the
result's dtype and band count, and refused with a :class:`CreationOptionError` naming the
valid ones.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from patchflow.errors import (
    CreationOptionError,
    ParameterError,
    StoreError,
    StoreExistsError,
    StorePathError,
    _w,
)

if TYPE_CHECKING:
    import xarray as xr


__all__ = [
    "COG_DEFAULTS",
    "COG_OPTIONS",
    "TIFF_SUFFIXES",
    "CreationOptionError",
    "check_cog_path",
    "cog_options",
    "is_cog_path",
    "raster_metadata",
    "zarr_to_cog",
]

TIFF_SUFFIXES = (".tif", ".tiff")

#: what patchflow asks GDAL for unless ``creation_options`` says otherwise
COG_DEFAULTS: Mapping[str, str] = MappingProxyType(
    {"COMPRESS": "DEFLATE", "BLOCKSIZE": "256", "BIGTIFF": "IF_SAFER"}
)

_COMPRESSIONS = (
    "NONE",
    "LZW",
    "JPEG",
    "DEFLATE",
    "LZMA",
    "ZSTD",
    "WEBP",
    "LERC",
    "LERC_DEFLATE",
    "LERC_ZSTD",
)
#: the overview resampling methods GDAL's COG driver accepts for real rasters
_RESAMPLINGS = (
    "NEAREST",
    "AVERAGE",
    "BILINEAR",
    "CUBIC",
    "CUBICSPLINE",
    "LANCZOS",
    "MODE",
    "RMS",
    "GAUSS",
)
_BOOLEANS = {"YES": "YES", "TRUE": "YES", "ON": "YES", "NO": "NO", "FALSE": "NO", "OFF": "NO"}
#: PREDICTOR spellings → GDAL's names (2 and 3 are the TIFF predictor numbers)
_PREDICTORS = {
    **_BOOLEANS,
    "1": "NO",
    "STANDARD": "STANDARD",
    "2": "STANDARD",
    "FLOATING_POINT": "FLOATING_POINT",
    "3": "FLOATING_POINT",
}
#: fixed choices (canonical value for each accepted spelling)
_CHOICES: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {
        "COMPRESS": {v: v for v in _COMPRESSIONS},
        "OVERVIEW_COMPRESS": {v: v for v in _COMPRESSIONS},
        "PREDICTOR": _PREDICTORS,
        "OVERVIEW_PREDICTOR": _PREDICTORS,
        "BIGTIFF": {v: v for v in ("YES", "NO", "IF_NEEDED", "IF_SAFER")},
        "RESAMPLING": {v: v for v in _RESAMPLINGS},
        "OVERVIEW_RESAMPLING": {v: v for v in _RESAMPLINGS},
        "OVERVIEWS": {v: v for v in ("AUTO", "IGNORE_EXISTING", "FORCE_USE_EXISTING", "NONE")},
        "GEOTIFF_VERSION": {v: v for v in ("AUTO", "1.0", "1.1")},
        "STATISTICS": {v: v for v in ("AUTO", "YES", "NO")},
        "SPARSE_OK": _BOOLEANS,
        # the only scheme that keeps the result's grid (the others reproject)
        "TILING_SCHEME": {"CUSTOM": "CUSTOM"},
    }
)
#: integer options: (minimum, maximum or None)
_INTEGERS: Mapping[str, tuple[int, int | None]] = MappingProxyType(
    {
        "LEVEL": (0, 22),
        "QUALITY": (1, 100),
        "OVERVIEW_QUALITY": (1, 100),
        "BLOCKSIZE": (128, None),
        "OVERVIEW_COUNT": (0, None),
    }
)
_FLOATS = ("MAX_Z_ERROR", "MAX_Z_ERROR_OVERVIEW")
#: COG options that reproject or re-grid the raster: patchflow's result keeps its grid
_REGRID = (
    "TARGET_SRS",
    "RES",
    "EXTENT",
    "ZOOM_LEVEL",
    "ZOOM_LEVEL_STRATEGY",
    "ALIGNED_LEVELS",
    "ADD_ALPHA",
    "WARP_RESAMPLING",
)
#: LEVEL range per compression (GDAL passes it on as ZLEVEL, ZSTD_LEVEL or LZMA_PRESET)
_LEVELS = {
    "DEFLATE": (1, 12),
    "LERC_DEFLATE": (1, 12),
    "ZSTD": (1, 22),
    "LERC_ZSTD": (1, 22),
    "LZMA": (0, 9),
}
#: compressions a TIFF predictor works with
_PREDICTED = ("LZW", "DEFLATE", "ZSTD", "LZMA")


def _describe_choices(key: str) -> str:
    names = dict.fromkeys(_CHOICES[key].values())
    return "|".join(names)


#: every creation option patchflow passes to GDAL's COG driver → its valid values
COG_OPTIONS: Mapping[str, str] = MappingProxyType(
    {
        **{key: _describe_choices(key) for key in _CHOICES},
        "LEVEL": "an integer: DEFLATE 1-12, ZSTD 1-22, LZMA 0-9",
        "QUALITY": "1-100 (JPEG/WEBP)",
        "OVERVIEW_QUALITY": "1-100 (JPEG/WEBP overviews)",
        "BLOCKSIZE": "a multiple of 16, at least 128 (tile size in pixels)",
        "OVERVIEW_COUNT": "an integer >= 0",
        "MAX_Z_ERROR": "a number >= 0 (LERC; 0 = lossless)",
        "MAX_Z_ERROR_OVERVIEW": "a number >= 0 (LERC overviews)",
        "NUM_THREADS": "a positive integer or ALL_CPUS",
    }
)


def is_cog_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a GeoTIFF (``.tif``/``.tiff``): :func:`patchflow.run`
    writes a COG there."""
    return os.fspath(path).rstrip("/").lower().endswith(TIFF_SUFFIXES)


def check_cog_path(path: str | os.PathLike[str], *, overwrite: bool) -> None:
    """Refuse a COG path that exists (without ``overwrite``) or is a directory.

    Raises
    ------
    StoreExistsError, StorePathError
    """
    text = os.fspath(path)
    target = Path(text)
    if target.is_dir():
        raise StorePathError(
            f"the output path {text!r} is a directory, not a GeoTIFF file; {_w('another')}"
        )
    if target.exists() and not overwrite:
        raise StoreExistsError(
            f"the output {text!r} already exists; pass {_w('overwrite')} to replace it, or "
            f"{_w('another')}"
        )


# --------------------------------------------------------------------------- options


def _text(key: str, value: Any) -> str:
    """An option value as GDAL's text (``True`` → ``YES``, ``9`` → ``9``)."""
    if isinstance(value, (bool, np.bool_)):
        return "YES" if value else "NO"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(float(value)):
            raise CreationOptionError(f"creation option {key}={value!r} is not a number GDAL takes")
        return repr(float(value)) if not float(value).is_integer() else str(int(value))
    if isinstance(value, str):
        return value.strip()
    raise CreationOptionError(
        f"creation option {key}={value!r} ({type(value).__name__}): give a string or a number"
    )


def _bad(key: str, value: str, why: str = "") -> CreationOptionError:
    reason = f": {why}" if why else ""
    return CreationOptionError(
        f"creation option {key}={value!r} is not valid{reason}; valid: {COG_OPTIONS[key]}"
    )


def _parse(key: str, text: str) -> str:
    """The canonical value of one option, or :class:`CreationOptionError`."""
    if key in _CHOICES:
        canonical = _CHOICES[key].get(text.upper())
        if canonical is None:
            raise _bad(key, text)
        return canonical
    if key in _INTEGERS:
        try:
            number = int(text)
        except ValueError:
            raise _bad(key, text, "not an integer") from None
        low, high = _INTEGERS[key]
        if number < low or (high is not None and number > high):
            raise _bad(key, text, "out of range")
        if key == "BLOCKSIZE" and number % 16:
            raise _bad(key, text, "TIFF tiles are multiples of 16 pixels")
        return str(number)
    if key in _FLOATS:
        try:
            number_f = float(text)
        except ValueError:
            raise _bad(key, text, "not a number") from None
        if not (math.isfinite(number_f) and number_f >= 0):
            raise _bad(key, text, "out of range")
        return text
    if key == "NUM_THREADS":
        if text.upper() == "ALL_CPUS":
            return "ALL_CPUS"
        if text.isdigit() and int(text) > 0:
            return str(int(text))
        raise _bad(key, text)
    raise AssertionError(key)  # every key of COG_OPTIONS is handled above


def cog_options(
    creation_options: Mapping[str, str | int | float] | None = None,
    *,
    dtype: Any = None,
    lead: Sequence[int] | None = None,
    categorical: bool = False,
) -> dict[str, str]:
    """Check GDAL COG creation options and merge them over :data:`COG_DEFAULTS`.

    Keys are case-insensitive; values may be strings or numbers (``True`` → ``YES``). With
    the result's ``dtype`` and non-spatial shape ``lead`` the options are also checked
    against the result (``PREDICTOR=3`` needs floats, ``JPEG``/``WEBP`` need uint8 and
    1-4 / 3-4 bands); without, only names and values are. A ``categorical`` result (class
    labels: ``agg="vote"``, ``"soft_vote"``, ``"mode"``; an integer ``"centre"``, ``"max"``
    or ``"min"``, see :meth:`patchflow.engine.aggregate.Aggregator.discrete`) gets
    ``RESAMPLING=NEAREST`` unless ``RESAMPLING`` or ``OVERVIEW_RESAMPLING`` is given:
    GDAL's default (CUBIC) would blend neighbouring classes into values that are no class
    in the overviews.

    Returns
    -------
    dict
        Upper-case keys → GDAL's value text, defaults included, ready for GDAL.

    Raises
    ------
    CreationOptionError
        An unknown key (the valid ones are listed), a bad value (the valid ones are
        listed), an option with no effect under the chosen compression (``LEVEL`` with
        ``LZW``), an option that does not fit the result, or one that would reproject
        the result (``TARGET_SRS``, ``TILING_SCHEME=GoogleMapsCompatible``...).
    ParameterError
        ``lead`` has more than one dim: a GeoTIFF holds ``(band, y, x)``.

    Examples
    --------
    >>> cog_options({"compress": "zstd", "level": 9, "predictor": 3}, dtype="float32")
    {'COMPRESS': 'ZSTD', 'BLOCKSIZE': '256', 'BIGTIFF': 'IF_SAFER', 'LEVEL': '9', \
'PREDICTOR': 'FLOATING_POINT'}
    """
    given: dict[str, str] = {}
    for raw_key, value in (creation_options or {}).items():
        if not isinstance(raw_key, str):
            raise CreationOptionError(f"creation option names are strings, got {raw_key!r}")
        key = raw_key.strip().upper()
        if key in given:
            raise CreationOptionError(
                f"creation option {key} is given twice (keys are case-insensitive): keep one"
            )
        if key in _REGRID or (key == "TILING_SCHEME" and str(value).upper() != "CUSTOM"):
            raise CreationOptionError(
                f"creation option {key}={value!r} would reproject or re-grid the result, "
                "which patchflow writes on its input's grid (the CRS and transform it "
                "reports); write the COG, then reproject it (gdalwarp -of COG, "
                "rioxarray's rio.reproject)"
            )
        if key == "NBITS":
            raise CreationOptionError(
                f"creation option NBITS={value!r} keeps only the low bits of every value, "
                "so a value outside the range would be stored wrong, and patchflow cannot "
                "check the range before the job runs; cast the result instead "
                "(output_dtype=, e.g. uint8)"
            )
        if key not in COG_OPTIONS:
            raise CreationOptionError(
                f"unknown creation option {raw_key!r} for a COG; valid: "
                f"{', '.join(sorted(COG_OPTIONS))} (see GDAL's COG driver documentation)"
            )
        given[key] = _parse(key, _text(key, value))
    options = {**COG_DEFAULTS, **given}
    if categorical and not {"RESAMPLING", "OVERVIEW_RESAMPLING"} & set(given):
        # an overview pixel of a class map must be one of its pixels' classes
        options["RESAMPLING"] = "NEAREST"
    _check_combinations(options, given)
    if dtype is not None or lead is not None:
        _check_result(options, None if dtype is None else np.dtype(dtype), lead)
    return options


def _check_combinations(options: Mapping[str, str], given: Mapping[str, str]) -> None:
    """Refuse options GDAL would silently ignore under the chosen compression."""
    for prefix in ("", "OVERVIEW_"):
        compress = options.get(f"{prefix}COMPRESS", options["COMPRESS"])
        where = f"{prefix}COMPRESS={compress}"
        predictor = options.get(f"{prefix}PREDICTOR", "NO")
        if predictor != "NO" and compress not in _PREDICTED:
            raise CreationOptionError(
                f"{prefix}PREDICTOR={predictor} has no effect with {where}: a predictor "
                f"works with {', '.join(_PREDICTED)}; drop it or choose one of those"
            )
        quality = f"{prefix}QUALITY"
        if quality in given and compress not in ("JPEG", "WEBP"):
            raise CreationOptionError(
                f"{quality}={given[quality]} has no effect with {where}: it sets the JPEG or "
                "WEBP quality; drop it or choose one of those"
            )
        error = "MAX_Z_ERROR" + ("_OVERVIEW" if prefix else "")
        if error in given and not compress.startswith("LERC"):
            raise CreationOptionError(
                f"{error}={given[error]} has no effect with {where}: it sets LERC's "
                "error bound; drop it or choose LERC, LERC_DEFLATE or LERC_ZSTD"
            )
    if "LEVEL" in given:
        compress = options["COMPRESS"]
        level = int(given["LEVEL"])
        if compress not in _LEVELS:
            raise CreationOptionError(
                f"LEVEL={level} has no effect with COMPRESS={compress}: it sets the level of "
                "DEFLATE (1-12), ZSTD (1-22) or LZMA (0-9); drop it or choose one of those"
            )
        low, high = _LEVELS[compress]
        if not low <= level <= high:
            raise CreationOptionError(
                f"LEVEL={level} is out of range for COMPRESS={compress} ({low}-{high}); "
                "GDAL would ignore it and use its default level"
            )


def _check_result(
    options: Mapping[str, str], dtype: np.dtype | None, lead: Sequence[int] | None
) -> None:
    """Refuse options that do not fit the result's dtype or band count."""
    bands = None
    if lead is not None:
        if len(lead) > 1:
            raise ParameterError(
                f"a GeoTIFF holds (band, y, x) rasters, but the result has {len(lead)} "
                f"non-spatial dims (shape {tuple(lead)}); write a Zarr store (.zarr), or "
                "make the operator return one non-spatial dim"
            )
        bands = int(lead[0]) if lead else 1
    for prefix in ("", "OVERVIEW_"):
        if dtype is not None and options.get(f"{prefix}PREDICTOR") == "FLOATING_POINT":
            if dtype not in (np.dtype("float32"), np.dtype("float64")):
                raise CreationOptionError(
                    f"{prefix}PREDICTOR=3 (FLOATING_POINT) is for float32/float64 results, "
                    f"but this job's result is {dtype}; use {prefix}PREDICTOR=2 (STANDARD) "
                    "for integers (GDAL would fail after the job has run)"
                )
        compress = options.get(f"{prefix}COMPRESS", options["COMPRESS"])
        if compress in ("JPEG", "WEBP"):
            counts = (1, 2, 3, 4) if compress == "JPEG" else (3, 4)
            if (dtype is not None and dtype != np.dtype("uint8")) or (
                bands is not None and bands not in counts
            ):
                shown = f"{dtype if dtype is not None else '?'} with {bands or '?'} band(s)"
                raise CreationOptionError(
                    f"{prefix}COMPRESS={compress} takes uint8 rasters with "
                    f"{'1-4' if compress == 'JPEG' else '3 or 4'} bands, but this job's "
                    f"result is {shown}; choose DEFLATE, ZSTD, LZW or LERC (lossless)"
                )


# --------------------------------------------------------------------------- conversion


def zarr_to_cog(
    store: str | os.PathLike[str],
    var: str,
    target: str | os.PathLike[str],
    options: Mapping[str, str],
    *,
    descriptions: Sequence[str] | None = None,
    tags: Mapping[str, str] | None = None,
    transform: Any = None,
) -> None:
    """Copy array ``var`` of a finished Zarr v2 store into a COG at ``target`` (GDAL).

    GDAL's Zarr driver reads the georeferencing from the store (the CF grid mapping and
    the x/y coordinates) and the nodata from the fill value; a VRT written next to
    ``target`` (and removed after) hands them on with ``tags`` and band ``descriptions``
    (see :func:`raster_metadata`) instead of the store's own attributes (its CF encoding:
    ``grid_mapping``, ``coordinates``, ``DIM_band_*``); GDAL's COG driver then tiles,
    compresses and adds overviews, reading the store chunk by chunk. GDAL fits the
    geotransform to the x/y coordinates, off in the last bit from the input's; the
    result's own ``transform`` (:func:`patchflow._xr.transform_of`) replaces it when the
    two agree to well below a pixel.

    Raises
    ------
    StoreError
        GDAL cannot read the store or write the COG (the message is GDAL's).
    """
    import rasterio
    import rasterio.shutil

    source = f'ZARR:"{os.path.abspath(os.fspath(store))}":/{var}'
    vrt = Path(f"{os.fspath(target)}.vrt")
    try:
        with rasterio.Env():
            with rasterio.open(source) as src:
                vrt.write_text(_vrt(src, source, descriptions, tags or {}, transform))
            rasterio.shutil.copy(str(vrt), os.fspath(target), driver="COG", **options)
    except OSError:
        raise
    except Exception as exc:  # GDAL's own errors (rasterio's CPLE_* classes)
        raise StoreError(
            f"GDAL could not write the COG {os.fspath(target)!r}: {exc}; check "
            f"{_w('creation_options')} (or choose another location)"
        ) from exc
    finally:
        vrt.unlink(missing_ok=True)


#: attributes that are not GeoTIFF tags: their encoding or GDAL's own (as rioxarray skips)
_NOT_TAGS = (
    "_FillValue",
    "missing_value",
    "fill_value",
    "nodata",
    "nodatavals",
    "is_tiled",
    "res",
    "crs",
    "transform",
    "scales",
    "scale_factor",
    "add_offset",
    "offsets",
    "grid_mapping",
    "coordinates",
)


def raster_metadata(result: xr.DataArray) -> tuple[list[str] | None, dict[str, str]]:
    """Band descriptions and dataset tags of a result written as a GeoTIFF, by
    rioxarray's rules (as ``result.rio.to_raster`` would write them).

    Descriptions: a ``long_name`` tuple (one name per band), else a ``long_name`` string
    or the result's name on every band. Tags: the other attrs as text, without the
    encoding ones (fill value, CRS, scale/offset, grid mapping) and a non-text
    ``long_name``.
    """
    bands = int(np.prod(result.shape[:-2], dtype=np.int64))
    long_name = result.attrs.get("long_name")
    descriptions: list[str] | None = None
    if isinstance(long_name, (tuple, list)):
        descriptions = [str(v) for v in long_name] if len(long_name) == bands else None
    elif long_name or result.name is not None:
        descriptions = [str(long_name or result.name)] * bands
    tags = {
        str(key): str(value)
        for key, value in result.attrs.items()
        if key not in _NOT_TAGS and not (key == "long_name" and not isinstance(value, str))
    }
    return descriptions, tags


def _vrt(
    src: Any,
    source: str,
    descriptions: Sequence[str] | None,
    tags: Mapping[str, str],
    transform: Any = None,
) -> str:
    """A VRT of the opened Zarr raster ``src``: its grid, CRS and nodata, with ``tags``
    and band ``descriptions``; ``transform`` instead of GDAL's when they agree."""
    import xml.etree.ElementTree as ET

    from rasterio.dtypes import _gdal_typename

    width, height = str(src.width), str(src.height)
    root = ET.Element("VRTDataset", rasterXSize=width, rasterYSize=height)
    if src.crs is not None:
        ET.SubElement(root, "SRS").text = src.crs.to_wkt()
    geo = src.transform
    if transform is not None and transform.almost_equals(geo, precision=1e-6 * abs(geo.a)):
        geo = transform
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(v) for v in geo.to_gdal())
    _metadata(root, {"AREA_OR_POINT": "Area", **tags})
    by, bx = src.block_shapes[0]
    for band in range(1, src.count + 1):
        dtype = _gdal_typename(src.dtypes[band - 1])
        node = ET.SubElement(root, "VRTRasterBand", dataType=dtype, band=str(band))
        if descriptions is not None and band <= len(descriptions):
            ET.SubElement(node, "Description").text = str(descriptions[band - 1])
        nodata = src.nodatavals[band - 1]
        if nodata is not None:
            ET.SubElement(node, "NoDataValue").text = "nan" if math.isnan(nodata) else repr(nodata)
        simple = ET.SubElement(node, "SimpleSource")
        ET.SubElement(simple, "SourceFilename", relativeToVRT="0").text = source
        ET.SubElement(simple, "SourceBand").text = str(band)
        ET.SubElement(
            simple,
            "SourceProperties",
            RasterXSize=width,
            RasterYSize=height,
            DataType=dtype,
            BlockXSize=str(bx),
            BlockYSize=str(by),
        )
        window = {"xOff": "0", "yOff": "0", "xSize": width, "ySize": height}
        ET.SubElement(simple, "SrcRect", window)
        ET.SubElement(simple, "DstRect", window)
    return ET.tostring(root, encoding="unicode")


def _metadata(parent: Any, tags: Mapping[str, str]) -> None:
    import xml.etree.ElementTree as ET

    if tags:
        block = ET.SubElement(parent, "Metadata")
        for key, value in tags.items():
            ET.SubElement(block, "MDI", key=key).text = value
