"""Chip datasets, chip stores, stitching arbitrary anchors and zonal statistics, lazily.

``sample``
    Cut chips at a sampler's anchors into a lazy ``(chip, band…, y, x)`` DataArray with
    per-chip coordinates (anchor, CRS bounds, centre). Each task reads only the source
    chunks its chips touch — or, for storage-backed inputs (Zarr, COG, ``from_array``),
    only the chip windows themselves — so the scene is never read whole.
``write_chips`` / ``open_chips``
    A Zarr chip store: ``image`` (and ``label``) chips, a few chips per Zarr chunk.
``stitch_anchors``
    Chip outputs at arbitrary anchors (Poisson-disk predictions, …) stitched into one lazily
    computed map through :func:`patchflow.apply`'s aggregators (overlap-add, mean, max, min,
    vote, soft vote, centre) and nodata rules; uncovered pixels are invalid (NaN).
``zonal_stats`` / ``polygon_chips``
    Per-polygon statistics of a GeoDataFrame, computed block by block (polygons spanning
    several blocks are merged exactly), and one chip per polygon bounding box with the
    polygon's interior mask.

Examples
--------
>>> from patchflow.samplers import Random
>>> from patchflow.synthetic import make_scene
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
import os
import warnings
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize

from patchflow._xr import as_dataarray, georef, spatial_last, write_georef
from patchflow.aggregate import make_aggregator
from patchflow.chip_kernels import StitchSpec, ZoneSpec, polygon_mask, require_geo
from patchflow.errors import DimensionError, ParameterError
from patchflow.graph import (
    ANCHORS_STITCH_PREFIX,
    SAMPLE_PREFIX,
    SAMPLE_READ_PREFIX,
    AnchorBlock,
    ChipGroup,
    ChipPiece,
    ZoneBlock,
    anchor_stitch_graph,
    chip_array_graph,
    zonal_graph,
)
from patchflow.graph import (
    ZONAL_PREFIX as ZONAL_PREFIX,
)
from patchflow.grid import pair, window_bounds
from patchflow.nodata import input_nodata, is_value
from patchflow.nodata import resolve as resolve_nodata
from patchflow.samplers import Draw, Explicit, Sampler
from patchflow.windows import Window, make_window

__all__ = [
    "ZONAL_STATS",
    "PolygonChip",
    "open_chips",
    "polygon_chips",
    "sample",
    "stitch_anchors",
    "write_chips",
    "zonal_stats",
]

#: graph key prefixes (defined with the graphs, in :mod:`patchflow.graph`)
CHIP_PREFIX = SAMPLE_PREFIX
READ_PREFIX = SAMPLE_READ_PREFIX
#: not ``patchflow-stitch-…``: that prefix is apply's stitch layer
STITCH_PREFIX = ANCHORS_STITCH_PREFIX
#: spatial block edge used when numpy input is wrapped into dask
NUMPY_BLOCK = 2048
#: bytes of chips per task / per Zarr chunk when the caller does not say
GROUP_BYTES = 8 * 2**20
ZONAL_STATS: tuple[str, ...] = ("mean", "std", "min", "max", "count", "median", "sum")
DEFAULT_STATS: tuple[str, ...] = ("mean", "std", "min", "max", "count", "median")
CHIP_COORDS: tuple[str, ...] = (
    "row",
    "col",
    "xmin",
    "ymin",
    "xmax",
    "ymax",
    "x_center",
    "y_center",
)


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


def _group_size(chips_per_task: int | None, chip_bytes: int, name: str) -> int:
    if chips_per_task is None:
        return int(min(8, max(1, GROUP_BYTES // max(chip_bytes, 1))))
    if isinstance(chips_per_task, bool) or not isinstance(chips_per_task, int):
        raise ParameterError(f"{name} must be a positive int, got {chips_per_task!r}")
    if chips_per_task < 1:
        raise ParameterError(f"{name} must be a positive int, got {chips_per_task!r}")
    return chips_per_task


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
        A :class:`patchflow.samplers.Sampler`, or an ``(n, 2)`` array of pixel anchors.
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
    >>> from patchflow.samplers import PoissonDisk
    >>> from patchflow.synthetic import make_scene
    >>> chips = sample(make_scene((1024, 1024), chunks=256), PoissonDisk(200, seed=1), size=128)
    >>> chips.dims, int(chips.sizes["band"]), sorted(chips.coords)[:4]
    (('chip', 'band', 'y', 'x'), 2, ['band', 'col', 'row', 'x'])
    """
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
    if not isinstance(sampler, Sampler):
        try:
            sampler = Explicit(sampler)
        except ParameterError as exc:
            raise ParameterError(
                f"sampler must be a patchflow Sampler or an (n, 2) anchor array: {exc}"
            ) from None
    drawn: Draw = sampler.draw(
        shape, size_yx, transform=transform, crs=crs, valid=valid, max_invalid=max_invalid
    )
    anchors = np.asarray(drawn.anchors, dtype=np.int64).reshape(-1, 2)
    chip_bytes = math.prod(arr.shape[:-2]) * size_yx[0] * size_yx[1] * arr.dtype.itemsize
    group = _group_size(chips_per_task, chip_bytes, "chips_per_task")
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


# --------------------------------------------------------------------------- chip store


def write_chips(
    chips: xr.DataArray,
    store: str | os.PathLike[str],
    *,
    labels: xr.DataArray | None = None,
    chips_per_chunk: int | None = None,
    overwrite: bool = False,
    compute: bool = True,
) -> Any:
    """Write a chip dataset to a Zarr store (``image`` and, if any, ``label`` chips).

    Parameters
    ----------
    chips
        Chips from :func:`sample` (lazy or not).
    store
        Path of the Zarr store.
    labels
        Label chips ``(chip, y, x)`` aligned with ``chips`` (default: ``chips``' ``label``
        coordinate, if it has one).
    chips_per_chunk
        Chips per Zarr chunk (default: ~8 MB of image chips, at most 8).
    overwrite
        Replace an existing store (otherwise an existing store is an error).
    compute
        ``False``: return the dask delayed write instead of writing now.

    Returns
    -------
    pathlib.Path or dask.delayed.Delayed
        The store path (``compute=True``), else the pending write.

    Examples
    --------
    >>> import tempfile
    >>> from patchflow.samplers import Random
    >>> from patchflow.synthetic import make_scene
    >>> chips = sample(make_scene((256, 256), chunks=128), Random(4), size=32)
    >>> path = write_chips(chips, tempfile.mkdtemp() + "/chips.zarr")
    >>> open_chips(path)["image"].shape
    (4, 2, 32, 32)
    """
    if not isinstance(chips, xr.DataArray) or "chip" not in chips.dims:
        raise ParameterError("chips must be a DataArray with a 'chip' dim (see sample())")
    path = Path(os.fspath(store))
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{str(path)!r} exists; pass overwrite=True to replace it")
    image = chips.transpose("chip", ...)
    lab: Any = labels
    if lab is None and "label" in image.coords:
        lab = image.coords["label"].variable
    image = image.drop_vars("label", errors="ignore")
    chip_bytes = math.prod(image.shape[1:]) * image.dtype.itemsize
    per_chunk = _group_size(chips_per_chunk, chip_bytes, "chips_per_chunk")
    variables: dict[Hashable, Any] = {"image": image.variable}
    if lab is not None:
        lab_var = lab.variable if isinstance(lab, xr.DataArray) else lab
        if lab_var.sizes.get("chip") != image.sizes["chip"]:
            raise ParameterError(
                f"labels have {lab_var.sizes.get('chip')} chips, the images {image.sizes['chip']}"
            )
        variables["label"] = lab_var
    ds = xr.Dataset(variables, coords=image.coords)
    ds.attrs.update(
        {k: v for k, v in chips.attrs.items() if k not in ("_FillValue", "missing_value")}
    )
    ds = ds.chunk({"chip": per_chunk, **{d: -1 for d in ds.dims if d != "chip"}})
    for var in ds.data_vars.values():
        var.encoding = {}
    target = os.fspath(path)
    mode: Literal["w", "w-"] = "w" if overwrite else "w-"
    with warnings.catch_warnings():
        # string band names have no Zarr v3 dtype spec yet; xarray/zarr warn about it
        warnings.filterwarnings("ignore", message=".*Zarr V3 specification.*")
        warnings.simplefilter("ignore", category=UserWarning)
        if not compute:
            return ds.to_zarr(target, mode=mode, consolidated=False, compute=False)
        ds.to_zarr(target, mode=mode, consolidated=False)
    return path


def open_chips(store: str | os.PathLike[str]) -> xr.Dataset:
    """Open a chip store written by :func:`write_chips` (lazy ``image``/``label``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        return xr.open_zarr(os.fspath(store), consolidated=False)


# --------------------------------------------------------------------------- stitching


def _block_hits(
    anchors: np.ndarray, size: tuple[int, int], ey: np.ndarray, ex: np.ndarray
) -> list[np.ndarray]:
    """Per output block (row-major), the indices (ascending) of the chips touching it.

    Each chip is assigned to the blocks its rows and columns span (``O(chips × blocks per
    chip)``, not ``O(chips × blocks)``).
    """
    nby, nbx = len(ey) - 1, len(ex) - 1
    n = len(anchors)
    if n == 0:
        return [np.zeros(0, np.int64) for _ in range(nby * nbx)]
    h, w = size
    i0 = np.searchsorted(ey, anchors[:, 0], side="right") - 1
    i1 = np.searchsorted(ey, anchors[:, 0] + h - 1, side="right") - 1
    j0 = np.searchsorted(ex, anchors[:, 1], side="right") - 1
    j1 = np.searchsorted(ex, anchors[:, 1] + w - 1, side="right") - 1
    nx = j1 - j0 + 1
    count = (i1 - i0 + 1) * nx
    chip = np.repeat(np.arange(n, dtype=np.int64), count)
    offset = np.arange(int(count.sum()), dtype=np.int64) - np.repeat(
        np.cumsum(count) - count, count
    )
    block = (i0[chip] + offset // nx[chip]) * nbx + (j0[chip] + offset % nx[chip])
    order = np.argsort(block, kind="stable")  # stable: chips stay in index order
    chip, block = chip[order], block[order]
    edges = np.searchsorted(block, np.arange(nby * nbx + 1))
    return [chip[edges[b] : edges[b + 1]] for b in range(nby * nbx)]


def _block_covered(
    anchors: np.ndarray, size: tuple[int, int], box: tuple[int, int, int, int]
) -> bool:
    """Whether the chips at ``anchors`` cover every pixel of ``box`` (``y0, y1, x0, x1``).

    Exact, on the grid of the chips' (clipped) edges: a 2-D difference array over at most
    ``(2k + 2)²`` cells for ``k`` chips, never a per-pixel mask.
    """
    if len(anchors) == 0:
        return False
    y0, y1, x0, x1 = box
    h, w = size
    rs, re = np.clip(anchors[:, 0], y0, y1), np.clip(anchors[:, 0] + h, y0, y1)
    cs, ce = np.clip(anchors[:, 1], x0, x1), np.clip(anchors[:, 1] + w, x0, x1)
    ys = np.unique(np.concatenate([[y0, y1], rs, re]))
    xs = np.unique(np.concatenate([[x0, x1], cs, ce]))
    a0, a1 = np.searchsorted(ys, rs), np.searchsorted(ys, re)
    b0, b1 = np.searchsorted(xs, cs), np.searchsorted(xs, ce)
    diff = np.zeros((len(ys), len(xs)), np.int64)
    np.add.at(diff, (a0, b0), 1)
    np.add.at(diff, (a1, b0), -1)
    np.add.at(diff, (a0, b1), -1)
    np.add.at(diff, (a1, b1), 1)
    return bool((diff.cumsum(axis=0).cumsum(axis=1)[:-1, :-1] > 0).all())


def stitch_anchors(
    obj_like: xr.DataArray | xr.Dataset,
    chip_outputs: Any,
    anchors: Any = None,
    *,
    window: str | np.ndarray | Any = "hann",
    window_params: Mapping[str, Any] | None = None,
    chunks: int | tuple[int, int] | None = None,
    name: Hashable | None = None,
    agg: str = "overlap_add",
    n_classes: int | None = None,
    nodata: Any = None,
) -> xr.DataArray:
    """Stitch chip outputs at arbitrary anchors into one map (lazy, block by block).

    The chips go through the same aggregators as :func:`patchflow.apply` (see
    :mod:`patchflow.aggregate`): ``agg="overlap_add"`` (default) gives each pixel the
    window-weighted mean of the chips covering it (``sum(w * chip) / sum(w)``); ``mean``,
    ``max``, ``min``, ``vote`` (integer labels, ``n_classes``), ``soft_vote`` (class scores
    → argmax) and ``centre`` (value of the chip whose centre is nearest; ties: the lower
    chip index) work for any anchors. Windows are border-aware as in ``apply``: a chip
    touching the scene edge has the outward half of its window flattened.

    Validity follows :mod:`patchflow.nodata`, as in ``apply``: non-finite chip values carry
    zero weight; pixels no valid chip value reaches are NaN for float results and the
    result's nodata for integer results (``max``/``min``/``centre`` of integer outputs,
    votes). An integer result's nodata is ``nodata=`` if given, else ``obj_like``'s nodata
    (not for votes), else the dtype's max (unsigned) / min (signed) — and none at all when
    no pixel can be invalid (integer outputs, an integer ``obj_like`` without nodata, every
    pixel covered). A valid value equal to that nodata raises
    :class:`~patchflow.errors.NodataCollisionError` when the block is computed. ``nodata=``
    on a float result becomes its encoded (on-disk) nodata.

    One dask task per output block reads only the chip-output chunks holding chips that
    touch the block; building the result computes nothing.

    Parameters
    ----------
    obj_like
        The scene the chips came from (shape, coordinates, CRS, transform, nodata; its
        spatial chunks become the output blocks).
    chip_outputs
        ``(n, out…, h, w)`` chip outputs: numpy, dask, or a DataArray with a ``chip`` dim
        (e.g. the result of an operator applied to :func:`sample` chips, whose ``row`` and
        ``col`` coordinates then give the anchors). For ``soft_vote`` the first ``out``
        axis holds the classes.
    anchors
        ``(n, 2)`` ``(row, col)`` anchors (default: ``chip_outputs``' ``row``/``col``).
    window, window_params
        Blending window, as in :func:`patchflow.make_window` (used by ``overlap_add``,
        ``vote`` tie-breaks and ``soft_vote``; the other aggregations ignore it).
    chunks
        Output block size (default: ``obj_like``'s spatial chunks, or 2048).
    name
        Name of the result.
    agg, n_classes
        Aggregation (``"overlap_add"``, ``"mean"``, ``"max"``, ``"min"``, ``"vote"``,
        ``"soft_vote"``, ``"centre"``); ``n_classes`` for ``"vote"``.
    nodata
        Nodata of the result (see above).

    Returns
    -------
    xarray.DataArray
        Lazy, dims ``(out…, y, x)`` (``soft_vote``: the class axis is reduced) with
        ``obj_like``'s spatial coords and CRS; dtype and ``rio.nodata`` as ``apply``'s for
        the same aggregation.

    Examples
    --------
    >>> from patchflow.samplers import PoissonDisk
    >>> from patchflow.synthetic import make_scene
    >>> scene = make_scene((300, 300), chunks=128).astype("float32")
    >>> chips = sample(scene, PoissonDisk(20, seed=0), size=64)
    >>> out = stitch_anchors(scene, chips * 2)
    >>> bool(np.nanmax(np.abs(out.values - 2 * scene.values)) < 1e-3)
    True
    >>> top = stitch_anchors(scene, chips.astype("int32"), agg="max", nodata=-1)
    >>> str(top.dtype), int(top.rio.nodata)
    ('int32', -1)
    """
    arr = _as_dataarray(obj_like)
    ydim, xdim = arr.dims[-2:]
    scene = (int(arr.shape[-2]), int(arr.shape[-1]))
    if isinstance(chip_outputs, xr.DataArray):
        if "chip" not in chip_outputs.dims:
            raise DimensionError(f"chip_outputs needs a 'chip' dim, got {chip_outputs.dims}")
        co = chip_outputs.transpose("chip", ...)
        if anchors is None:
            if "row" not in co.coords or "col" not in co.coords:
                raise ParameterError("pass anchors= (chip_outputs has no row/col coordinates)")
            anchors = np.stack([co["row"].values, co["col"].values], axis=1)
        lead_dims = tuple(co.dims[1:-2])
        lead_coords = {
            d: co.coords[d] for d in lead_dims if d in co.coords and co.coords[d].ndim == 1
        }
        values = co.data
    else:
        if anchors is None:
            raise ParameterError("anchors= is required when chip_outputs is not a DataArray")
        values = chip_outputs
        nlead = getattr(values, "ndim", 0) - 3
        if nlead < 0:
            raise DimensionError(
                f"chip_outputs must be (n, …, h, w), got {getattr(values, 'shape', None)}"
            )
        lead_dims = ("band",) if nlead == 1 else tuple(f"dim_{k}" for k in range(nlead))
        lead_coords = {}
    anchors = np.asarray(anchors, dtype=np.int64).reshape(-1, 2)
    if not isinstance(values, da.Array):
        values = np.asarray(values)
        values = da.from_array(values, chunks=(min(64, max(len(values), 1)), *values.shape[1:]))
    if values.ndim < 3:
        raise DimensionError(f"chip_outputs must be (n, …, h, w), got {values.shape}")
    op_dtype = np.dtype(values.dtype)
    if op_dtype.kind not in "biuf":
        raise ParameterError(
            f"chip_outputs must hold numbers (bool, int or float), got dtype {op_dtype}"
        )
    n, h, w = values.shape[0], values.shape[-2], values.shape[-1]
    if h < 1 or w < 1:
        raise DimensionError(f"chip outputs must be at least 1x1 pixels, got {h}x{w}")
    if n != len(anchors):
        raise ParameterError(f"{n} chip outputs but {len(anchors)} anchors")
    if len(anchors) and (
        (anchors < 0).any()
        or (anchors[:, 0] + h > scene[0]).any()
        or (anchors[:, 1] + w > scene[1]).any()
    ):
        raise ParameterError(f"some {h}x{w} chips at these anchors are outside the scene {scene}")
    values = values.rechunk({i: -1 for i in range(1, values.ndim)})
    lead = tuple(int(v) for v in values.shape[1:-2])
    if agg == "soft_vote" and not lead:
        raise DimensionError(
            "agg='soft_vote' needs class scores: chip_outputs (n, classes, …, h, w)"
        )
    aggregator = make_aggregator(
        agg, out_dtype=op_dtype, lead=lead, n_classes=n_classes, n_chips=max(n, 1)
    )
    win: Window | None = None
    if aggregator.weighted:  # as in apply: mean/max/min/centre weigh every chip 1
        win = make_window(window, (h, w), **dict(window_params or {}))

    if chunks is not None:
        cy, cx = pair(chunks, "chunks")
        out_chunks = da.core.normalize_chunks((cy, cx), scene)
    elif isinstance(arr.data, da.Array):
        out_chunks = arr.data.chunks[-2:]
    else:
        out_chunks = da.core.normalize_chunks((NUMPY_BLOCK, NUMPY_BLOCK), scene)
    ey = np.concatenate([[0], np.cumsum(out_chunks[0])]).astype(np.int64)
    ex = np.concatenate([[0], np.cumsum(out_chunks[1])]).astype(np.int64)
    hits = _block_hits(anchors, (h, w), ey, ex)
    nbx = len(out_chunks[1])

    # the result's nodata: the rules of patchflow.nodata, with apply's "can be invalid"
    res_dtype = aggregator.result_dtype()
    in_nodata = input_nodata(arr)
    can_be_invalid = (
        op_dtype.kind in "fc"
        or np.dtype(arr.dtype).kind in "fc"
        or is_value(in_nodata)
        or not all(
            _block_covered(
                anchors[hits[i * nbx + j]],
                (h, w),
                (int(ey[i]), int(ey[i + 1]), int(ex[j]), int(ex[j + 1])),
            )
            for i in range(len(out_chunks[0]))
            for j in range(nbx)
        )
    )
    nd = resolve_nodata(
        res_dtype,
        explicit=nodata,
        source=in_nodata,
        labels=agg in ("vote", "soft_vote"),
        can_be_invalid=can_be_invalid,
        source_name="obj_like's nodata",
    )
    aggregator.set_nodata(nd)
    out_nodata, encoded = nd.value, nd.encoded

    cstarts = np.concatenate([[0], np.cumsum(values.chunks[0])]).astype(np.int64)
    chunk_of = np.searchsorted(cstarts, np.arange(n), side="right") - 1
    chip_bytes = max(1, math.prod(values.shape[1:]) * op_dtype.itemsize)
    batch = int(min(64, max(1, GROUP_BYTES // chip_bytes)))
    token = tokenize(values.name, anchors.tobytes(), win, aggregator, out_chunks, scene, batch)
    res_lead = aggregator.result_lead()
    blocks = []
    for i in range(len(out_chunks[0])):
        for j in range(nbx):
            y0, y1, x0, x1 = int(ey[i]), int(ey[i + 1]), int(ex[j]), int(ex[j + 1])
            hit = hits[i * nbx + j]
            parts, cks = [], []
            for ck in np.unique(chunk_of[hit]):
                sel = hit[chunk_of[hit] == ck]
                parts.append((sel - cstarts[ck], anchors[sel], sel))
                cks.append(int(ck))
            spec = StitchSpec(
                (y0, x0), (y1 - y0, x1 - x0), scene, aggregator, win, batch, tuple(parts)
            )
            blocks.append(AnchorBlock((i, j), spec, tuple(cks)))
    lazy = anchor_stitch_graph(
        values,
        blocks,
        token,
        lead=res_lead,
        out_chunks=(tuple(out_chunks[0]), tuple(out_chunks[1])),
        dtype=res_dtype,
    )
    # soft_vote reduces the class axis (the first output axis)
    out_dims = lead_dims[len(lead) - len(res_lead) :]
    coords: dict[Hashable, Any] = {d: c for d, c in lead_coords.items() if d in out_dims}
    for dim in (ydim, xdim):
        if dim in arr.coords:
            coords[dim] = arr.coords[dim]
    out = xr.DataArray(lazy, dims=(*out_dims, ydim, xdim), coords=coords, name=name)
    transform, crs = georef(arr)
    return write_georef(out, crs=crs, transform=transform, nodata=out_nodata, encoded=encoded)


# --------------------------------------------------------------------------- polygons


def _geometries(gdf: Any, crs: Any) -> tuple[Any, list[Any]]:
    """``(index, geometries in the raster CRS)`` of a GeoDataFrame/GeoSeries/sequence."""
    if hasattr(gdf, "geometry") and hasattr(gdf, "index"):
        geo = gdf.geometry
        if crs is not None and getattr(geo, "crs", None) is not None and geo.crs != crs:
            geo = geo.to_crs(crs)
        return gdf.index, list(geo)
    if hasattr(gdf, "index") and hasattr(gdf, "to_crs"):  # GeoSeries without .geometry
        geo = gdf
        if crs is not None and geo.crs is not None and geo.crs != crs:
            geo = geo.to_crs(crs)
        return gdf.index, list(geo)
    geoms = list(gdf)
    import pandas as pd

    return pd.RangeIndex(len(geoms)), geoms


def _pixel_windows(geoms: list[Any], transform: Any, shape: tuple[int, int]) -> np.ndarray:
    """``(n, 4)`` ``row0, row1, col0, col1`` pixel windows of the geometries' bounds, clipped
    to the scene (one pixel of margin; empty where a geometry is missing or outside)."""
    out = np.zeros((len(geoms), 4), np.int64)
    inv = ~transform
    for k, geom in enumerate(geoms):
        if geom is None or geom.is_empty:
            continue
        minx, miny, maxx, maxy = geom.bounds
        xs = np.array([minx, maxx, minx, maxx])
        ys = np.array([miny, miny, maxy, maxy])
        cols = inv.a * xs + inv.b * ys + inv.c
        rows = inv.d * xs + inv.e * ys + inv.f
        r0 = int(np.clip(math.floor(rows.min()) - 1, 0, shape[0]))
        r1 = int(np.clip(math.ceil(rows.max()) + 1, 0, shape[0]))
        c0 = int(np.clip(math.floor(cols.min()) - 1, 0, shape[1]))
        c1 = int(np.clip(math.ceil(cols.max()) + 1, 0, shape[1]))
        out[k] = (r0, max(r1, r0), c0, max(c1, c0))
    return out


def _band_labels(arr: xr.DataArray) -> list[str] | None:
    lead = arr.dims[:-2]
    if not lead:
        return None
    labels: list[list[str]] = [[]]
    for d in lead:
        vals = (
            [str(v) for v in arr.coords[d].values]
            if d in arr.coords
            else [f"{d}{k}" for k in range(arr.sizes[d])]
        )
        labels = [[*p, v] for p in labels for v in vals]
    names = ["_".join(p) for p in labels]
    return None if len(names) == 1 and not any(d in arr.coords for d in lead) else names


def zonal_stats(
    obj: xr.DataArray | xr.Dataset,
    gdf: Any,
    stats: Sequence[str] = DEFAULT_STATS,
    *,
    all_touched: bool = False,
    nodata: Any = "auto",
    compute: bool = True,
) -> Any:
    """Per-polygon statistics of a raster, computed lazily block by block.

    Each polygon (reprojected to the raster CRS) is rasterised with
    ``rasterio.features.rasterize`` (pixel centres inside, or every pixel touched with
    ``all_touched``) within its bounding window, one block at a time: a block task reads
    only its own chunk and returns, per polygon touching it, count/mean/M2/min/max (and the
    pixel values when the median is wanted); partial results of polygons spanning several
    blocks are merged exactly (Chan's parallel variance update). Blocks no polygon touches
    are never read. NaN and nodata pixels are excluded, per band.

    Parameters
    ----------
    obj
        Georeferenced DataArray (or Dataset) with spatial dims and a transform.
    gdf
        GeoDataFrame or GeoSeries (reprojected to the raster CRS when both have one), or a
        sequence of shapely geometries in the raster CRS.
    stats
        Any of ``"mean"``, ``"std"`` (population, ddof=0), ``"min"``, ``"max"``,
        ``"count"`` (valid pixels), ``"median"`` (exact: gathers each polygon's pixels),
        ``"sum"``.
    all_touched
        Rasterisation rule (default: pixel centres).
    nodata
        Value excluded from the statistics (default ``"auto"``: the raster's
        ``rio.nodata``; ``None``: only NaN is excluded).
    compute
        ``False``: return a dask ``Delayed`` that computes the DataFrame.

    Returns
    -------
    pandas.DataFrame
        One row per polygon, aligned with ``gdf``'s index. Columns are the stat names for a
        2-D raster, else ``"<band>_<stat>"`` (e.g. ``red_mean``). Polygons covering no
        valid pixel get ``count`` 0 and NaN statistics.

    Examples
    --------
    >>> from shapely.geometry import box
    >>> from patchflow.synthetic import make_scene
    >>> scene = make_scene((256, 256), chunks=128)
    >>> x0, y0 = float(scene.x[0]) - 5, float(scene.y[0]) + 5
    >>> df = zonal_stats(scene, [box(x0, y0 - 100, x0 + 100, y0)], stats=["count", "mean"])
    >>> df["red_count"].tolist()
    [100]
    """
    import pandas as pd

    stats = tuple(stats)
    unknown = [s for s in stats if s not in ZONAL_STATS]
    if unknown or not stats:
        raise ParameterError(f"unknown stats {unknown}; valid: {', '.join(ZONAL_STATS)}")
    require_geo()
    arr = _as_dataarray(obj)
    transform, crs = georef(arr)
    if transform is None:
        raise ParameterError("zonal_stats needs a georeferenced raster (y/x coordinates)")
    shape = (int(arr.shape[-2]), int(arr.shape[-1]))
    index, geoms = _geometries(gdf, crs)
    windows = _pixel_windows(geoms, transform, shape)
    nd = arr.rio.nodata if isinstance(nodata, str) and nodata == "auto" else nodata
    if isinstance(nd, np.generic):
        nd = nd.item()
    data = _dask_data(arr)
    bands = math.prod(arr.shape[:-2])
    ey = np.concatenate([[0], np.cumsum(data.chunks[-2])])
    ex = np.concatenate([[0], np.cumsum(data.chunks[-1])])
    token = tokenize(
        data.name,
        windows.tobytes(),
        [g.wkb if g is not None else None for g in geoms],
        stats,
        all_touched,
        nd,
    )
    nonempty = (windows[:, 1] > windows[:, 0]) & (windows[:, 3] > windows[:, 2])
    blocks = []
    tr = tuple(transform)[:6]
    for i in range(len(ey) - 1):
        for j in range(len(ex) - 1):
            y0, y1, x0, x1 = int(ey[i]), int(ey[i + 1]), int(ex[j]), int(ex[j + 1])
            hit = np.flatnonzero(
                nonempty
                & (windows[:, 0] < y1)
                & (windows[:, 1] > y0)
                & (windows[:, 2] < x1)
                & (windows[:, 3] > x0)
            )
            if hit.size == 0:
                continue
            items = tuple(
                (
                    int(k),
                    geoms[k],
                    (
                        max(int(windows[k, 0]), y0),
                        min(int(windows[k, 1]), y1),
                        max(int(windows[k, 2]), x0),
                        min(int(windows[k, 3]), x1),
                    ),
                )
                for k in hit
            )
            spec = ZoneSpec((y0, x0), tr, bool(all_touched), nd, "median" in stats, items)
            blocks.append(ZoneBlock((i, j), spec))
    pending = zonal_graph(data, blocks, token, n=len(geoms), bands=bands, stats=stats)
    band_names = _band_labels(arr)

    def frame(table: dict[str, Any]) -> pd.DataFrame:
        cols: dict[str, Any] = {}
        for b in range(bands):
            for s in stats:
                key = s if band_names is None else f"{band_names[b]}_{s}"
                cols[key] = table[s][:, b]
        return pd.DataFrame(cols, index=index)

    if not compute:
        return dask.delayed(frame)(pending)
    return frame(pending.compute())


@dataclass(frozen=True)
class PolygonChip:
    """One polygon's chip: its bounding window, lazy pixels and interior mask.

    ``window`` is ``(row0, row1, col0, col1)`` in scene pixels (clipped to the scene);
    ``data`` the lazy ``(band…, y, x)`` DataArray of that window; ``mask`` the boolean
    interior mask (``True`` inside the polygon), usable as chip weights.
    """

    index: Hashable
    window: tuple[int, int, int, int]
    data: xr.DataArray
    mask: np.ndarray


def polygon_chips(
    obj: xr.DataArray | xr.Dataset,
    gdf: Any,
    *,
    all_touched: bool = False,
    skip_empty: bool = True,
) -> Iterator[PolygonChip]:
    """One chip per polygon bounding box (in the raster CRS), with its interior mask.

    Yields :class:`PolygonChip` objects in ``gdf`` order; ``data`` stays lazy. Polygons
    outside the scene are skipped (``skip_empty``) or yielded with an empty window.

    Examples
    --------
    >>> from shapely.geometry import Point
    >>> from patchflow.synthetic import make_scene
    >>> scene = make_scene((256, 256), chunks=128)
    >>> centre = Point(float(scene.x[100]), float(scene.y[100])).buffer(50)
    >>> chip = next(polygon_chips(scene, [centre]))
    >>> chip.data.dims, int(chip.mask.sum()) > 0
    (('band', 'y', 'x'), True)
    """
    require_geo()
    arr = _as_dataarray(obj)
    transform, crs = georef(arr)
    if transform is None:
        raise ParameterError("polygon_chips needs a georeferenced raster (y/x coordinates)")
    shape = (int(arr.shape[-2]), int(arr.shape[-1]))
    index, geoms = _geometries(gdf, crs)
    windows = _pixel_windows(geoms, transform, shape)
    ydim, xdim = arr.dims[-2:]
    for k, geom in enumerate(geoms):
        r0, r1, c0, c1 = (int(v) for v in windows[k])
        empty = r1 <= r0 or c1 <= c0
        if empty and skip_empty:
            continue
        mask = (
            np.zeros((r1 - r0, c1 - c0), bool)
            if empty
            else polygon_mask(geom, transform, (r0, r1, c0, c1), all_touched)
        )
        data = arr.isel({ydim: slice(r0, r1), xdim: slice(c0, c1)})
        yield PolygonChip(index[k], (r0, r1, c0, c1), data, mask)
