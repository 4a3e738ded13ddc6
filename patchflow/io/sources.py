"""Opening inputs lazily: GeoTIFF/COG through rioxarray, Zarr through xarray.

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

__all__ = ["ZARR_SUFFIXES", "is_remote", "one_line", "open_raster"]

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
