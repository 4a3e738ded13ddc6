"""Chip datasets: cut chips at a sampler's anchors into a lazy ``(chip, band…, y, x)`` array.

``sample`` gives the chips per-chip coordinates (anchor, CRS bounds, centre). Each task
reads only the source chunks its chips touch — or, for storage-backed inputs (Zarr, COG,
``from_array``), only the chip windows themselves — so the scene is never read whole.

Examples
--------
>>> from patchflow.plan.samplers import Random
>>> from patchflow.io.synthetic import make_scene
>>> scene = make_scene((512, 512), chunks=256)
>>> chips = sample(scene, Random(5, seed=0), size=64)
>>> chips.dims, chips.shape
(('chip', 'band', 'y', 'x'), (5, 2, 64, 64))
>>> r, c = int(chips.row[0]), int(chips.col[0])
>>> bool((chips[0].values == scene.values[:, r : r + 64, c : c + 64]).all())
True
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize

from patchflow._xr import as_dataarray, georef, spatial_last
from patchflow.engine.graph import (
    SAMPLE_PREFIX,
    SAMPLE_READ_PREFIX,
    ChipGroup,
    ChipPiece,
    chip_array_graph,
)
from patchflow.engine.graph import (
    ZONAL_PREFIX as ZONAL_PREFIX,
)
from patchflow.errors import DimensionError, ParameterError
from patchflow.io.chips import group_size
from patchflow.io.sources import check_band_nodata
from patchflow.plan.grid import pair, window_bounds
from patchflow.plan.samplers import Draw, Explicit, Sampler

#: graph key prefixes (defined with the graphs, in :mod:`patchflow.engine.graph`)
CHIP_PREFIX = SAMPLE_PREFIX
READ_PREFIX = SAMPLE_READ_PREFIX
#: spatial block edge used when numpy input is wrapped into dask
NUMPY_BLOCK = 2048


# --------------------------------------------------------------------------- inputs


def _as_dataarray(obj: xr.DataArray | xr.Dataset) -> xr.DataArray:
    """DataArray ``(*lead, y, x)`` through the one xarray boundary (:mod:`patchflow._xr`)."""
    return spatial_last(as_dataarray(obj))


def _dask_data(arr: xr.DataArray, block: int = NUMPY_BLOCK) -> da.Array:
    """The data as dask, non-spatial dims in one chunk (numpy: ``block``-sized tiles)."""
    data = arr.data
    nlead = arr.ndim - 2
    if not isinstance(data, da.Array):
        return da.from_array(np.asarray(data), chunks=(*(-1,) * nlead, block, block))
    if any(len(c) > 1 for c in data.chunks[:nlead]):
        data = data.rechunk({i: -1 for i in range(nlead)})
    return data


def _label_array(labels: Any, shape: tuple[int, int], transform: Any) -> xr.DataArray:
    """A 2-D ``(y, x)`` label DataArray aligned with the scene."""
    if isinstance(labels, xr.DataArray):
        lab = _as_dataarray(labels)
        for dim in lab.dims[:-2]:
            if lab.sizes[dim] != 1:
                raise DimensionError(
                    f"labels must be 2-D (y, x) (or have length-1 extra dims); dim {dim!r} "
                    f"has length {lab.sizes[dim]}"
                )
        lab = lab.isel({d: 0 for d in lab.dims[:-2]}, drop=True)
        ltr, _ = georef(lab)
        if transform is not None and ltr is not None and not ltr.almost_equals(transform):
            raise ParameterError(
                f"the label raster's transform {tuple(ltr)[:6]} differs from the scene's "
                f"{tuple(transform)[:6]}; reproject/align the labels first"
            )
    else:
        values = labels
        while getattr(values, "ndim", 0) > 2 and values.shape[0] == 1:
            values = values[0]
        if getattr(values, "ndim", 0) != 2:
            raise DimensionError(f"labels must be 2-D (y, x), got {getattr(values, 'shape', None)}")
        lab = xr.DataArray(values, dims=("y", "x"))
    if tuple(lab.shape) != tuple(shape):
        raise ParameterError(f"labels have shape {tuple(lab.shape)}, the scene {tuple(shape)}")
    return lab


def _nodata_mask(arr: xr.DataArray, data: da.Array) -> da.Array:
    """Lazy ``(y, x)`` mask: valid where every band is finite and not the nodata value."""
    nodata = arr.rio.nodata
    ok = da.ones(data.shape[-2:], dtype=bool, chunks=data.chunks[-2:])
    lead = tuple(range(data.ndim - 2))
    if data.dtype.kind in "fc":
        ok = ok & da.isfinite(data).all(axis=lead) if lead else ok & da.isfinite(data)
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        ne = data != nodata
        ok = ok & (ne.all(axis=lead) if lead else ne)
    return ok


# --------------------------------------------------------------------------- chip graph


def _pieces(
    start: int, size: int, edges: np.ndarray
) -> list[tuple[int, tuple[int, int], tuple[int, int]]]:
    """Per source chunk along one axis: (chunk, local window, destination window)."""
    stop = start + size
    first = int(np.searchsorted(edges, start, side="right")) - 1
    last = int(np.searchsorted(edges, stop, side="left"))
    out = []
    for a in range(first, last):
        lo, hi = max(start, int(edges[a])), min(stop, int(edges[a + 1]))
        out.append((a, (lo - int(edges[a]), hi - int(edges[a])), (lo - start, hi - start)))
    return out


def chip_array(
    data: da.Array,
    anchors: np.ndarray,
    size: tuple[int, int],
    *,
    chips_per_task: int,
) -> da.Array:
    """Lazy ``(n, *lead, h, w)`` chips of ``data`` (``(*lead, H, W)``, lead in one chunk).

    One task per ``chips_per_task`` consecutive chips. A piece of a chip inside a source
    chunk is read straight from storage when the chunk task is a plain getter; otherwise the
    task receives the source chunk and copies the piece out of it.
    """
    h, w = size
    n = len(anchors)
    lead = tuple(data.shape[:-2])
    if n == 0:
        return da.zeros((0, *lead, h, w), dtype=data.dtype, chunks=(1, *lead, h, w))
    ey = np.concatenate([[0], np.cumsum(data.chunks[-2])])
    ex = np.concatenate([[0], np.cumsum(data.chunks[-1])])
    token = tokenize(data.name, np.asarray(anchors).tobytes(), size, chips_per_task)
    groups = []
    for s in range(0, n, chips_per_task):
        e = min(s + chips_per_task, n)
        pieces: list[ChipPiece] = []
        for k in range(s, e):
            r, c = int(anchors[k, 0]), int(anchors[k, 1])
            for a, sy, dy in _pieces(r, h, ey):
                for b, sx, dx in _pieces(c, w, ex):
                    pieces.append((k, (a, b), (sy, sx), (dy, dx)))
        groups.append(ChipGroup(s, e, tuple(pieces)))
    return chip_array_graph(data, groups, size, token)


def _chip_coords(
    anchors: np.ndarray, size: tuple[int, int], transform: Any
) -> dict[str, np.ndarray]:
    h, w = size
    out = {"row": anchors[:, 0].astype(np.int64), "col": anchors[:, 1].astype(np.int64)}
    if transform is None:
        return out
    bounds = window_bounds(transform, anchors, (h, w))
    for k, name in enumerate(("xmin", "ymin", "xmax", "ymax", "x_center", "y_center")):
        out[name] = bounds[:, k]
    return out


def draw_anchors(
    sampler: Sampler | np.ndarray | Sequence[Sequence[int]],
    shape: tuple[int, int],
    size: tuple[int, int],
    *,
    transform: Any,
    crs: Any,
    valid: Any = None,
    max_invalid: float = 0.0,
    param: str = "sampler",
) -> Draw:
    """The anchors (and metadata) ``sampler`` draws on a scene of ``shape``; an ``(n, 2)``
    array of pixel anchors is taken as :class:`~patchflow.plan.samplers.Explicit`
    (``param``: the caller's name for it, in errors)."""
    if not isinstance(sampler, Sampler):
        try:
            sampler = Explicit(sampler)
        except ParameterError as exc:
            raise ParameterError(
                f"{param} must be a patchflow Sampler or an (n, 2) array of (row, col) "
                f"pixel anchors: {exc}"
            ) from None
    return sampler.draw(
        shape, size, transform=transform, crs=crs, valid=valid, max_invalid=max_invalid
    )


def sample(
    obj: xr.DataArray | xr.Dataset,
    sampler: Sampler | np.ndarray | Sequence[Sequence[int]],
    *,
    size: int | tuple[int, int] = 256,
    labels: Any = None,
    valid: Any = None,
    max_invalid: float = 0.0,
    chips_per_task: int | None = None,
    name: Hashable | None = None,
) -> xr.DataArray:
    """Lazy chips of ``obj`` at the anchors a sampler draws.

    Parameters
    ----------
    obj
        Lazy (dask) or in-memory DataArray with spatial dims, or a Dataset (variables
        stacked along ``variable``).
    sampler
        A :class:`patchflow.plan.samplers.Sampler`, or an ``(n, 2)`` array of pixel anchors.
    size
        Chip size, int or ``(h, w)``.
    labels
        Optional label raster aligned with ``obj`` (same shape and transform; 2-D, or with
        length-1 extra dims). Its chips at the same anchors become the lazy ``label``
        coordinate ``(chip, y, x)``.
    valid, max_invalid
        Validity mask (``True`` = valid; numpy, dask or xarray) or ``"nodata"`` (invalid
        where any band is NaN or the input's nodata — computing this reads the scene once,
        block by block) and the largest invalid fraction a chip may have.
    chips_per_task
        Chips assembled per dask task (default: ~8 MB of chips, at most 8).
    name
        Name of the result (default: the input's).

    Returns
    -------
    xarray.DataArray
        Lazy, dims ``(chip, *lead, y, x)``; chip-local ``y``/``x`` coordinates are pixel
        offsets. Per-chip coordinates: ``row``, ``col`` (anchor) and, with a transform,
        ``xmin``, ``ymin``, ``xmax``, ``ymax`` (CRS bounds) and ``x_center``, ``y_center``;
        plus the sampler's metadata (``class`` for stratified sampling, ``point`` for
        explicit points). ``attrs`` carry the scene's CRS (WKT), transform and shape.

    Examples
    --------
    >>> from patchflow.plan.samplers import PoissonDisk
    >>> from patchflow.io.synthetic import make_scene
    >>> chips = sample(make_scene((1024, 1024), chunks=256), PoissonDisk(200, seed=1), size=128)
    >>> chips.dims, int(chips.sizes["band"]), sorted(chips.coords)[:4]
    (('chip', 'band', 'y', 'x'), 2, ['band', 'col', 'row', 'x'])
    """
    check_band_nodata(obj)
    arr = _as_dataarray(obj)
    y, x = arr.dims[-2:]
    shape = (int(arr.shape[-2]), int(arr.shape[-1]))
    size_yx = pair(size, "size")
    transform, crs = georef(arr)
    data = _dask_data(arr)
    if isinstance(valid, str):
        if valid != "nodata":
            raise ParameterError(f"valid must be a mask or 'nodata', got {valid!r}")
        valid = _nodata_mask(arr, data)
    drawn = draw_anchors(
        sampler, shape, size_yx, transform=transform, crs=crs, valid=valid, max_invalid=max_invalid
    )
    anchors = np.asarray(drawn.anchors, dtype=np.int64).reshape(-1, 2)
    chip_bytes = math.prod(arr.shape[:-2]) * size_yx[0] * size_yx[1] * arr.dtype.itemsize
    group = group_size(chips_per_task, chip_bytes, "chips_per_task")
    lazy = chip_array(data, anchors, size_yx, chips_per_task=group)
    dims = ("chip", *arr.dims[:-2], y, x)
    coords: dict[Hashable, Any] = {
        d: arr.coords[d] for d in arr.dims[:-2] if d in arr.coords and arr.coords[d].ndim == 1
    }
    coords[y] = np.arange(size_yx[0])
    coords[x] = np.arange(size_yx[1])
    for key, values in _chip_coords(anchors, size_yx, transform).items():
        coords[key] = ("chip", values)
    for key, values in drawn.meta.items():
        coords[key] = ("chip", np.asarray(values))
    if labels is not None:
        lab = _label_array(labels, shape, transform)
        lab_data = _dask_data(lab)
        lab_chips = chip_array(lab_data, anchors, size_yx, chips_per_task=group)
        coords["label"] = (("chip", y, x), lab_chips)
    out = xr.DataArray(lazy, dims=dims, coords=coords, name=name if name is not None else arr.name)
    out.attrs.update(
        {
            "scene_shape": list(shape),
            "chip_size": list(size_yx),
            "scene_transform": None if transform is None else list(transform)[:6],
            "scene_crs": None if crs is None else crs.to_wkt(),
        }
    )
    nodata = arr.rio.nodata
    if nodata is not None:
        out.attrs["nodata"] = nodata.item() if isinstance(nodata, np.generic) else nodata
    return out
