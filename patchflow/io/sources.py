"""Opening inputs lazily: GeoTIFF/COG through rioxarray, Zarr through xarray; and reading
a GeoTIFF/COG's overviews for previews (:func:`overview_shapes`, :func:`open_overview`).

Examples
--------
>>> import tempfile
>>> from patchflow.io.synthetic import make_scene
>>> path = tempfile.mkdtemp() + "/scene.tif"
>>> make_scene((64, 64)).rio.to_raster(path)
>>> open_raster(path).shape
(2, 64, 64)
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from patchflow.errors import (
    BandNodataError,
    InputReadError,
    ParameterError,
    PatchflowError,
    _w,
)

__all__ = [
    "ZARR_SUFFIXES",
    "band_nodata",
    "check_band_nodata",
    "is_remote",
    "one_line",
    "open_overview",
    "open_raster",
    "overview_shapes",
    "reads_masked",
]

ZARR_SUFFIXES = (".zarr",)


def is_remote(path: str) -> bool:
    """``path`` is a URL or a GDAL virtual file system path (``/vsis3/…``)."""
    return "://" in path or path.startswith("/vsi")


def one_line(exc: BaseException) -> str:
    """A one-line message for ``exc`` (type name added for unexpected errors)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, PatchflowError | OSError):
        return text
    if isinstance(exc, KeyError):
        return f"missing key {text}"
    return f"{type(exc).__name__}: {text}"


def open_raster(path: str, *, var: str | None = None, chunks: int | None = None) -> Any:
    """Open a raster lazily: a GeoTIFF/COG via rioxarray, or a Zarr store via xarray.

    A file whose bands share one nodata value (or have none) is read as it is stored: its
    dtype, with that value as ``rio.nodata``. A file whose bands have *different* nodata
    values (a VRT, ENVI, HFA or netCDF file can; see :func:`band_nodata`) is read masked
    (``rioxarray.open_rasterio(path, masked=True)``): each band's own nodata becomes NaN
    and the result is float — float32 for 8- and 16-bit bands, float64 for 32-bit integer
    bands, the file's type for float bands, all of which hold every value exactly. One
    nodata value for all bands (what an unmasked read carries: band 1's) would mask real
    pixels of the other bands and keep their nodata as data.

    Parameters
    ----------
    path
        File, Zarr directory, or URL (anything GDAL opens).
    var
        Data variable to use when the source holds several.
    chunks
        Spatial dask chunk edge for GeoTIFFs (default 2048); Zarr keeps its own chunks.

    Returns
    -------
    xarray.DataArray
        Lazy, with CRS and transform when the source has them.

    Raises
    ------
    InputReadError
        If the input does not exist or cannot be read.
    ParameterError
        If ``var`` is missing or unknown for a multi-variable source.
    BandNodataError
        If the bands have different nodata values and 64-bit integer values, which no
        float type holds exactly (float64 rounds integers beyond 2**53).
    """
    import rioxarray
    import xarray as xr

    if not is_remote(path) and not Path(path).exists():
        raise InputReadError(f"input not found: {path}")
    is_zarr = Path(path).is_dir() or path.rstrip("/").lower().endswith(ZARR_SUFFIXES)
    obj: Any
    try:
        if is_zarr:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # unconsolidated / v3-spec chatter
                obj = xr.open_zarr(path, decode_coords="all", chunks={})
        else:
            size = chunks or 2048
            obj = rioxarray.open_rasterio(
                path, chunks={"band": -1, "y": size, "x": size}, masked=reads_masked(path)
            )
    except PatchflowError:
        raise
    except Exception as exc:
        raise InputReadError(f"cannot read {path}: {one_line(exc)}") from exc
    if isinstance(obj, list):
        raise InputReadError(f"{path} holds several rasters of different grids; pick one")
    if isinstance(obj, xr.Dataset):
        names = [str(n) for n in obj.data_vars]
        if var is None:
            if len(names) != 1:
                raise ParameterError(
                    f"{path} has {len(names)} data variables ({', '.join(names) or 'none'}); "
                    f"choose one with {_w('var')}"
                )
            var = names[0]
        if var not in obj.data_vars:
            raise ParameterError(f"{_w('var')} {var!r} is not in {path} (has: {', '.join(names)})")
        obj = obj[var]
    elif var is not None:
        raise ParameterError(f"{_w('var')} is only for Zarr inputs with several variables ({path})")
    return obj


# --------------------------------------------------------------------------- per-band nodata


def band_nodata(path: str) -> tuple[float | None, ...] | None:
    """Each band's nodata value in the header of the raster file ``path`` (GDAL's, as
    ``rasterio``'s ``nodatavals``: ``None`` for a band without one), or ``None`` when GDAL
    cannot open ``path`` as a raster. Reads the header only.

    Examples
    --------
    >>> import tempfile
    >>> from patchflow.io.synthetic import make_scene
    >>> path = tempfile.mkdtemp() + "/scene.tif"
    >>> make_scene((64, 64)).rio.write_nodata(0).rio.to_raster(path)
    >>> band_nodata(path)
    (0.0, 0.0)
    """
    header = _header(path)
    return None if header is None else header[0]


def _header(path: str) -> tuple[tuple[float | None, ...], tuple[str, ...]] | None:
    """``(nodata per band, dtype per band)`` of the raster file ``path``, or ``None``."""
    import rasterio

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NotGeoreferencedWarning and the like
            with rasterio.open(path) as src:
                return tuple(src.nodatavals), tuple(src.dtypes)
    except Exception:  # not a raster GDAL opens: the caller's own read says why
        return None


def _same_nodata(a: Any, b: Any) -> bool:
    """Two nodata values (``None``, NaN or numbers) mark the same pixels."""
    if a is None or b is None:
        return a is None and b is None
    a, b = float(a), float(b)
    return a == b or (math.isnan(a) and math.isnan(b))


def _differ(values: Sequence[Any]) -> bool:
    return any(not _same_nodata(v, values[0]) for v in values[1:])


def _show(value: Any) -> str:
    if value is None:
        return "none"
    v = float(value)
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)


def _per_band(values: Sequence[Any]) -> str:
    """``band 1: 0, band 2: 255`` (1-based, as GDAL numbers bands; long lists cut)."""
    shown = [f"band {k}: {_show(v)}" for k, v in enumerate(values[:8], start=1)]
    if len(values) > 8:
        distinct: list[Any] = []
        for v in values:
            if not any(_same_nodata(v, d) for d in distinct):
                distinct.append(v)
        listed = ", ".join(_show(v) for v in distinct[:8]) + (", …" if len(distinct) > 8 else "")
        shown.append(f"… ({len(values)} bands, nodata values {listed})")
    return ", ".join(shown)


def reads_masked(path: str) -> bool:
    """Whether :func:`open_raster` reads ``path`` masked: its bands' nodata values differ.

    Raises :class:`BandNodataError` when they do but the values are 64-bit integers,
    which no float type holds exactly.
    """
    import numpy as np

    header = _header(path)
    if header is None or not _differ(header[0]):
        return False
    nodatas, dtypes = header
    if any(np.dtype(d).kind in "iu" and np.dtype(d).itemsize == 8 for d in dtypes):
        raise BandNodataError(
            f"the bands of {path} have different nodata values ({_per_band(nodatas)}) and "
            f"64-bit integer values ({', '.join(sorted(set(dtypes)))}): patchflow reads such "
            "bands with NaN for each band's nodata, and float64 rounds integers beyond "
            "2**53. Open it with rioxarray.open_rasterio(path, masked=True) if its values "
            "stay within ±2**53, or write the bands with different nodata to files of "
            "their own"
        )
    return True


#: how rioxarray's ``open_rasterio(..., band_as_variable=True)`` names file band ``k``
_BAND_VARIABLE = re.compile(r"band_(\d+)")


def _file_bands(arr: Any, count: int) -> list[int]:
    """The 1-based file bands ``arr`` holds, as far as its labels tell (else all)."""
    import numpy as np

    every = list(range(1, count + 1))
    try:
        y, x = arr.rio.y_dim, arr.rio.x_dim
    except Exception:
        return every
    lead = [d for d in arr.dims if d not in (y, x)]
    if len(lead) > 1:
        return every
    if lead:
        coord = arr.coords.get(lead[0])
        labels = None if coord is None else np.atleast_1d(coord.values)
    elif "band" in arr.coords and arr.coords["band"].ndim == 0:
        labels = np.atleast_1d(arr.coords["band"].values)
    else:
        match = _BAND_VARIABLE.fullmatch(str(arr.name))
        labels = np.array([int(match.group(1))]) if match else None
    if labels is None or labels.dtype.kind not in "iu":
        return every
    bands = [int(b) for b in labels]
    return bands if all(1 <= b <= count for b in bands) else every


def _carried(arr: Any) -> tuple[bool, Any]:
    """``(checked, value)``: the nodata value patchflow reads ``arr``'s every band with
    (``None``: none, NaN: only NaN), or ``checked`` False for an array decoded on read
    (``masked=True``: each band's own nodata is NaN already)."""
    from patchflow.engine.nodata import input_nodata, is_value

    # a masked (decoded) read records the file's dtype in its encoding and holds NaN at
    # each band's own nodata, with no nodata value of its own left in memory
    decoded = "dtype" in arr.encoding and "_FillValue" not in arr.attrs
    if arr.dtype.kind == "f" and decoded and not is_value(arr.rio.nodata):
        return False, None
    value = input_nodata(arr)
    if value is None:  # NaN as the declared nodata, or none at all
        declared = arr.attrs.get("_FillValue", arr.rio.nodata)
        value = None if declared is None else float("nan")
    return True, value


def check_band_nodata(obj: Any, override: Any = None, *, keyword: str = "input_nodata") -> None:
    """Refuse an input whose one nodata value stands for file bands with different ones.

    ``rioxarray.open_rasterio(path)`` (not masked) gives the whole array band 1's nodata;
    for a file whose bands each have their own (VRT, ENVI, HFA, netCDF), that value would
    mask real pixels of the other bands and keep their nodata as data. Checked for arrays
    still carrying ``encoding["source"]`` (a local file GDAL opens), with a header read;
    skipped when ``override`` (the caller's explicit ``keyword``) is given, for
    arrays decoded on read (``masked=True``), and for bands whose labels (``band`` 1..n,
    or ``band_as_variable``'s ``band_k`` names) show that the carried value is their own.

    Raises
    ------
    BandNodataError
        Naming the file, each band's nodata and the ways to read it correctly.
    """
    import xarray as xr

    if override is not None:
        return
    if isinstance(obj, xr.DataArray):
        arrays = [obj]
    elif isinstance(obj, xr.Dataset):
        arrays = list(obj.data_vars.values())
    else:
        return
    for arr in arrays:
        source = arr.encoding.get("source")
        if not isinstance(source, str) or not source or is_remote(source):
            continue
        if not Path(source).is_file():
            continue
        header = _header(source)
        if header is None or not _differ(header[0]):
            continue
        checked, value = _carried(arr)
        if not checked:
            continue
        nodatas = header[0]
        bands = _file_bands(arr, len(nodatas))
        if all(_same_nodata(value, nodatas[b - 1]) for b in bands):
            continue
        held = "no nodata value" if value is None else f"one nodata value ({_show(value)})"
        if value is None or math.isnan(float(value)):  # only NaN marks invalid pixels
            harm = "the other bands' nodata pixels would be read as data"
        else:
            held += " for all its bands"
            harm = (
                f"real {_show(value)}s of the other bands would become nodata and their own "
                "nodata pixels data"
            )
        fix = _w(keyword) if keyword == "input_nodata" else f"{keyword}="
        raise BandNodataError(
            f"the input carries {held}, but the bands of its file {source} each have their "
            f"own ({_per_band(nodatas)}): {harm}. Open it with "
            "rioxarray.open_rasterio(path, masked=True) or "
            "patchflow.io.sources.open_raster(path) (each band's nodata becomes NaN), or "
            f"pass {fix}VALUE if one value really marks nodata in every band"
        )


# --------------------------------------------------------------------------- overviews

#: dask layers a read of a raster file may go through and still hold the file's values
_READ_LAYERS = ("open_rasterio-", "original-open_rasterio-", "getitem-", "rechunk-")


def _file_behind(obj: Any) -> tuple[str, list[int]] | None:
    """``(path, 1-based bands)`` when ``obj`` holds exactly the values of a raster file's
    full-resolution bands (a lazy rioxarray read, band selection at most), else ``None``.

    Anything that could make the file disagree with ``obj`` gives ``None``: no
    ``encoding["source"]`` (arithmetic, ``astype`` and ``where`` drop it), values already
    in memory (they may have been edited in place), dask layers other than reading,
    indexing and rechunking, another grid, CRS or dtype than the file's, or bands not
    addressed by their file numbers.
    """
    import numpy as np
    import rasterio

    source = getattr(obj, "encoding", {}).get("source")
    if not isinstance(source, str) or not source:
        return None
    chunks = getattr(obj, "chunks", None)
    if chunks is not None:
        layers = getattr(getattr(obj.data, "dask", None), "layers", {})
        if not all(str(name).startswith(_READ_LAYERS) for name in layers):
            return None
    elif getattr(obj.variable, "_in_memory", True):
        return None
    try:
        y, x = obj.rio.y_dim, obj.rio.x_dim
        with rasterio.open(source) as src:
            if (obj.sizes[y], obj.sizes[x]) != (src.height, src.width):
                return None
            if np.dtype(obj.dtype) != np.dtype(src.dtypes[0]) or len(set(src.dtypes)) != 1:
                return None
            if obj.rio.crs != src.crs or not obj.rio.transform(recalc=True).almost_equals(
                src.transform
            ):
                return None
            count = src.count
    except Exception:  # not a raster GDAL opens (a Zarr store...), or no georeference
        return None
    lead = [d for d in obj.dims if d not in (y, x)]
    if len(lead) > 1:
        return None
    band = lead[0] if lead else "band"
    if band in obj.coords:
        labels = np.atleast_1d(obj.coords[band].values)
    elif not lead and count == 1:
        labels = np.array([1])
    else:
        return None
    if labels.dtype.kind not in "iu" or not all(1 <= int(b) <= count for b in labels):
        return None
    return source, [int(b) for b in labels]


def overview_shapes(obj: Any) -> list[tuple[int, int]]:
    """``(height, width)`` of each overview of the GeoTIFF/COG ``obj`` was read from.

    Finest first, as GDAL numbers them (``overview_level=0`` is the first). Empty when the
    file has no overviews, or when ``obj`` is not an unchanged lazy read of the file's
    full-resolution bands (see :func:`open_overview`): then only ``obj`` itself shows
    its values.

    Examples
    --------
    >>> import tempfile
    >>> from patchflow.io.synthetic import make_scene
    >>> path = tempfile.mkdtemp() + "/cog.tif"
    >>> make_scene((1024, 1024)).rio.to_raster(path, driver="COG", blocksize=256)
    >>> overview_shapes(open_raster(path))
    [(512, 512), (256, 256)]
    >>> overview_shapes(open_raster(path) * 2)  # not the file's values any more
    []
    """
    import rasterio

    found = _file_behind(obj)
    if found is None:
        return []
    path, bands = found
    shapes = []
    with rasterio.open(path) as src:
        levels = len(src.overviews(bands[0]))
    for level in range(levels):
        with rasterio.open(path, overview_level=level) as ov:
            shapes.append((int(ov.height), int(ov.width)))
    return shapes


def open_overview(obj: Any, level: int) -> Any:
    """Overview ``level`` of the file behind ``obj``, lazily, laid out like ``obj``.

    The overview's own grid (coarser pixels over the same extent), ``obj``'s bands in
    ``obj``'s order and dims, and ``obj``'s attrs (nodata, band descriptions), so a
    preview treats it as ``obj`` at a lower resolution. Nothing is read until the result
    (or a slice of it) is computed.

    Parameters
    ----------
    obj
        A DataArray :func:`overview_shapes` lists overviews for.
    level
        Index into :func:`overview_shapes` (GDAL's ``overview_level``).

    Raises
    ------
    ParameterError
        When ``obj`` has no overview ``level``.
    """
    import rioxarray

    found = _file_behind(obj)
    levels = overview_shapes(obj)
    if found is None or not 0 <= level < len(levels):
        raise ParameterError(
            f"overview level {level} does not exist for this input "
            f"({len(levels)} usable overview level(s)); use overview_shapes(obj) to list them"
        )
    path, bands = found
    try:
        ov: Any = rioxarray.open_rasterio(path, overview_level=level)
    except Exception as exc:
        raise InputReadError(f"cannot read overview {level} of {path}: {one_line(exc)}") from exc
    y, x = obj.rio.y_dim, obj.rio.x_dim
    lead = [d for d in obj.dims if d not in (y, x)]
    if lead:
        ov = ov.sel(band=bands).rename({"band": lead[0], "y": y, "x": x})
        ov = ov.assign_coords({lead[0]: obj.coords[lead[0]].values})
    else:
        ov = ov.sel(band=bands[0], drop=True).rename({"y": y, "x": x})
    ov = ov.transpose(*obj.dims)
    ov.attrs = dict(obj.attrs)
    return ov
