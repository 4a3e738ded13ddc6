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

from pathlib import Path
from typing import Any

from patchflow.errors import InputReadError, ParameterError, PatchflowError, _w

__all__ = [
    "ZARR_SUFFIXES",
    "is_remote",
    "one_line",
    "open_overview",
    "open_raster",
    "overview_shapes",
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
    """
    import warnings

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
            obj = rioxarray.open_rasterio(path, chunks={"band": -1, "y": size, "x": size})
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
