"""The xarray/rioxarray boundary: every way patchflow reads labelled input lives here.

What it owns: turning a DataArray or Dataset into the one DataArray layout the engine and
the samplers work on (:func:`as_dataarray`), finding the spatial dims
(:func:`spatial_dims`) and reading the georeference (:func:`transform_of`,
:func:`georef`). Nodata *rules* live in :mod:`patchflow.engine.nodata`; this module only applies
them where a Dataset's variables are stacked (each variable's own nodata becomes NaN first,
because stacking keeps one set of attrs).
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any

import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor everything here reads through)
import xarray as xr

from patchflow.errors import DimensionError, InputTypeError

__all__ = [
    "as_dataarray",
    "band_labels",
    "georef",
    "grid_mappings_as_coords",
    "spatial_dims",
    "spatial_last",
    "transform_of",
    "write_georef",
]


def spatial_dims(obj: xr.DataArray | xr.Dataset) -> tuple[Hashable, Hashable]:
    """The ``(y, x)`` dimension names rioxarray sees on ``obj``.

    Raises
    ------
    DimensionError
        When there are none, naming the dims found and how to declare them.

    Examples
    --------
    >>> import numpy as np, xarray as xr, rioxarray
    >>> spatial_dims(xr.DataArray(np.zeros((2, 3, 4)), dims=("band", "y", "x")))
    ('y', 'x')
    """
    try:
        return obj.rio.y_dim, obj.rio.x_dim
    except Exception as exc:  # rioxarray raises its own MissingSpatialDimensionError
        raise DimensionError(
            f"no spatial dimensions found among {tuple(obj.dims)}; patchflow needs y/x "
            "(or latitude/longitude) dims: rename yours, or declare them with "
            "obj.rio.set_spatial_dims(x_dim=..., y_dim=...)"
        ) from exc


def as_dataarray(obj: xr.DataArray | xr.Dataset) -> xr.DataArray:
    """``obj`` as one DataArray; a Dataset's variables stacked along a leading ``variable``.

    Each variable's own nodata is masked to NaN before stacking (stacking keeps one set of
    attrs, so a per-variable nodata would otherwise be lost), grid-mapping variables
    (``spatial_ref``) become coordinates, and the CRS is carried over.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> band = (("y", "x"), np.ones((3, 4)))
    >>> ds = xr.Dataset({"red": band, "nir": band})
    >>> as_dataarray(ds).dims
    ('variable', 'y', 'x')
    """
    if isinstance(obj, xr.DataArray):
        return obj
    if isinstance(obj, xr.Dataset):
        obj = grid_mappings_as_coords(obj)
        if not obj.data_vars:
            raise DimensionError("the Dataset has no data variables to process")
        y, x = spatial_dims(obj)
        missing = [str(n) for n, v in obj.data_vars.items() if y not in v.dims or x not in v.dims]
        if missing:
            raise DimensionError(
                f"data variables {missing} are not on the ({y!r}, {x!r}) grid the others use "
                "(different spatial dims); resample them onto it first (e.g. "
                "rio.reproject_match), or select the variables to process, e.g. ds[['red', 'nir']]"
            )
        masked = {name: _mask_nodata(var) for name, var in obj.data_vars.items()}
        out = obj.assign(masked).to_dataarray(dim="variable")
        crs = obj.rio.crs
        if crs is not None:
            out = out.rio.write_crs(crs)
        return out
    raise InputTypeError(
        f"patchflow needs an xarray DataArray or Dataset, got {type(obj).__name__}; wrap a "
        "numpy/dask array first, e.g. xr.DataArray(arr, dims=('band', 'y', 'x'))"
    )


def spatial_last(arr: xr.DataArray) -> xr.DataArray:
    """``arr`` transposed to ``(*others, y, x)`` (the order chips are cut in)."""
    y, x = spatial_dims(arr)
    others = [d for d in arr.dims if d not in (y, x)]
    return arr.transpose(*others, y, x)


def grid_mappings_as_coords(ds: xr.Dataset) -> xr.Dataset:
    """CF grid-mapping variables (``spatial_ref``) are metadata, not data to process."""
    names = {
        str(v.attrs.get("grid_mapping") or v.encoding.get("grid_mapping") or "")
        for v in ds.data_vars.values()
    }
    names.add("spatial_ref")
    found = [n for n in names if n in ds.data_vars and ds[n].ndim == 0]
    return ds.set_coords(found) if found else ds


def _mask_nodata(var: xr.DataArray) -> xr.DataArray:
    nodata = var.rio.nodata
    if nodata is None or (isinstance(nodata, float) and math.isnan(nodata)):
        return var
    dtype = np.float32 if var.dtype.itemsize <= 2 else np.float64
    masked = var.astype(dtype).where(var != nodata)
    return masked.rio.write_nodata(np.nan, encoded=False)


def band_labels(arr: xr.DataArray) -> list[str] | None:
    """Band names: the band dim's string labels, else a GeoTIFF's band descriptions.

    rioxarray labels a GeoTIFF's bands with their 1-based numbers and keeps their
    descriptions in ``attrs["long_name"]`` (one per band of the *file*: ``isel`` neither
    subsets nor reorders them), so each band's name is the description its number points
    to. Without band numbers the descriptions name the bands only if there is one per band.
    ``None``: the bands have no names (the band dim is ``arr``'s last non-spatial dim).

    Examples
    --------
    >>> arr = xr.DataArray(np.zeros((2, 1, 1)), dims=("band", "y", "x"), coords={"band": [2, 1]})
    >>> band_labels(arr.assign_attrs(long_name=("red", "nir")))
    ['nir', 'red']
    """
    if arr.ndim < 3:
        return None
    values = arr.coords[arr.dims[-3]].values if arr.dims[-3] in arr.coords else None
    if values is not None and values.dtype.kind in "UO":
        return [str(v) for v in values]
    described = arr.attrs.get("long_name")
    if not (
        isinstance(described, tuple | list)
        and all(isinstance(v, str) and v for v in described)
        and len(set(described)) == len(described)
    ):
        return None
    if values is None:
        return list(described) if len(described) == arr.shape[-3] else None
    if values.dtype.kind in "iu" and all(1 <= int(v) <= len(described) for v in values):
        return [described[int(v) - 1] for v in values]
    return None


def value_labels(arr: xr.DataArray) -> list[str] | None:
    """One name per band (per element of the non-spatial dims, row-major) for the columns
    of per-band tables (``zonal_stats``, ``sample_points``).

    The band dim (the last non-spatial one) is named by :func:`band_labels` (string
    labels, else GeoTIFF descriptions); otherwise, and for other dims, string coordinate
    values as they are, numeric ones as ``<dim>_<value>`` (rioxarray's 1-based band
    numbers: ``band_1``), and no coordinate as ``<dim>_<1-based position>``. Several dims
    join with ``_``. ``None``: a 2-D raster, or one band with no coordinate, needs no
    name; names that are not unique fall back to ``band_1 … band_N``.

    Examples
    --------
    >>> arr = xr.DataArray(np.zeros((2, 1, 1)), dims=("band", "y", "x"), coords={"band": [1, 2]})
    >>> value_labels(arr), value_labels(arr.assign_attrs(long_name=("red", "nir")))
    (['band_1', 'band_2'], ['red', 'nir'])
    """
    lead = arr.dims[:-2]
    if not lead:
        return None
    if len(lead) == 1 and arr.shape[0] == 1 and lead[0] not in arr.coords:
        return None
    labels: list[list[str]] = [[]]
    for i, d in enumerate(lead):
        named = band_labels(arr) if i == len(lead) - 1 else None
        if named is None:
            if d in arr.coords and arr.coords[d].ndim == 1:
                values = arr.coords[d].values
                named = [str(v) if values.dtype.kind in "UO" else f"{d}_{v}" for v in values]
            else:
                named = [f"{d}_{k}" for k in range(1, arr.sizes[d] + 1)]
        labels = [[*p, v] for p in labels for v in named]
    names = ["_".join(p) for p in labels]
    if len(set(names)) != len(names):
        return [f"band_{k}" for k in range(1, len(names) + 1)]
    return names


def transform_of(obj: xr.DataArray | xr.Dataset) -> Any:
    """The affine transform of the y/x grid, or ``None`` without regular coordinates.

    The recorded one (the file's GeoTransform, moved by whole pixels to where the array
    starts, as rasterio computes a window's transform) when it gives the array's
    pixel-centre coordinates; otherwise the one fitted to the coordinates (e.g. after
    ``coarsen``, which keeps a stale recorded transform). Fitting alone is off in the
    last bit (0.1 m pixels at 500 km: ``a = 0.10000000009``), so results would not carry
    their input's exact georeference.

    >>> import numpy as np, xarray as xr
    >>> from affine import Affine
    >>> t = Affine(0.1, 0, 523456.7, 0, -0.1, 4181234.3)
    >>> da = xr.DataArray(np.zeros((4, 5)), dims=("y", "x")).assign_coords(
    ...     y=t.f + t.e * (np.arange(4) + 0.5), x=t.c + t.a * (np.arange(5) + 0.5))
    >>> transform_of(da.rio.write_transform(t)) == t
    True
    """
    try:
        fitted = obj.rio.transform(recalc=True)
    except Exception:  # no regular y/x coordinates: nothing to carry
        return None
    recorded = _recorded_transform(obj)
    if recorded is None or recorded.b or recorded.d or not (recorded.a and recorded.e):
        return fitted  # (rotated: rioxarray returns the recorded one as it is)
    y, x = spatial_dims(obj)
    window = _window_giving(recorded, _coord(obj, x), _coord(obj, y))
    return fitted if window is None else window


def _coord(obj: xr.DataArray | xr.Dataset, dim: Hashable) -> np.ndarray:
    return np.asarray(obj[dim].values, np.float64) if dim in obj.coords else np.empty(0)


def _recorded_transform(obj: xr.DataArray | xr.Dataset) -> Any:
    """The transform recorded with ``obj`` (CF grid mapping's GeoTransform, else a
    ``transform`` attribute), or ``None``."""
    from affine import Affine

    mapping = obj.rio.grid_mapping
    text = obj.coords[mapping].attrs.get("GeoTransform") if mapping in obj.coords else None
    try:
        if text is not None:
            return Affine.from_gdal(*(float(v) for v in str(text).split()))
        attr = obj.attrs.get("transform")
        return None if attr is None else Affine(*(float(v) for v in list(attr)[:6]))
    except (TypeError, ValueError):  # a malformed record: the coordinates decide
        return None


def _window_giving(recorded: Any, xs: np.ndarray, ys: np.ndarray) -> Any:
    """``recorded`` moved by the whole pixels to where ``xs``/``ys`` (pixel centres)
    start, if it gives every one of them to rounding; else ``None``."""
    from affine import Affine

    if xs.size == 0 or ys.size == 0 or not (np.isfinite(xs).all() and np.isfinite(ys).all()):
        return None
    col = round((xs[0] - recorded.c) / recorded.a - 0.5)
    row = round((ys[0] - recorded.f) / recorded.e - 0.5)
    window = recorded @ Affine.translation(col, row)
    for coords, start, step in ((xs, window.c, window.a), (ys, window.f, window.e)):
        given = start + step * (np.arange(coords.size) + 0.5)
        # far below a pixel (a resampled grid drifts by n × its change of resolution),
        # far above the rounding of coordinates written from the transform
        tol = 1e-6 * abs(step) + 16 * float(np.spacing(np.abs(coords).max()))
        if not bool(np.all(np.abs(given - coords) <= tol)):
            return None
    return window


def georef(arr: xr.DataArray) -> tuple[Any, Any]:
    """``(transform, crs)``; the transform is ``None`` without y/x coordinates."""
    y, x = arr.dims[-2:]
    transform = transform_of(arr) if (y in arr.coords and x in arr.coords) else None
    return transform, arr.rio.crs


def write_georef(
    out: xr.DataArray, *, crs: Any, transform: Any, nodata: Any, encoded: Any = None
) -> xr.DataArray:
    """``out`` with CRS, transform and nodata written the rioxarray way (the one writer).

    ``encoded`` (a float result's on-disk nodata) wins: NaN in memory, that value on disk.
    ``nodata=None`` declares no nodata at all (nothing can be invalid).
    """
    if crs is not None:
        out = out.rio.write_crs(crs)
    if transform is not None:
        out = out.rio.write_transform(transform)
    if encoded is not None:
        return out.rio.write_nodata(encoded, encoded=True)
    if nodata is None:
        return out
    return out.rio.write_nodata(nodata, encoded=False)
