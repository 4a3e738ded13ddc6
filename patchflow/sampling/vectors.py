"""Vector outputs from chips: ``apply_vector`` runs a detector/vectoriser on every chip and
returns one GeoDataFrame in the raster's CRS, each object once; ``Shapes`` vectorises
label chips.

This module owns the public function and its planning (which chips, which chip owns which
part of the scene); the per-chip kernel, NMS and the graph live in
:mod:`patchflow.engine.vectors`, the lazy chips come from :func:`~patchflow.sampling.chip_array`.

The chip-function contract
--------------------------
``fn(chip)`` gets one chip, a numpy array ``(*lead, h, w)`` (``(band, h, w)`` for a
usual raster, ``(h, w)`` for a 2-D one) — where the input has a nodata value, as
operators see it: those elements NaN (per band), an integer raster then as float64 —
and returns its objects: an iterable of records,
each a dict with a ``"geometry"`` (a shapely geometry in **chip pixel coordinates**: x =
column, y = row, origin at the chip's top-left corner, so pixel ``(r, c)`` is the square
``box(c, r, c + 1, r + 1)`` — what ``rasterio.features.shapes`` gives with the identity
transform) and any properties (``"score"``, ``"label"``…); a (Geo)DataFrame with a
geometry column; or ``None``. ``fn`` runs on the dask workers: it must be picklable for a
distributed scheduler (a module-level function or a dataclass like :class:`Shapes`).

Examples
--------
>>> import pytest; _ = pytest.importorskip("geopandas")  # the [vector] extra
>>> import numpy as np, xarray as xr
>>> from shapely.geometry import box
>>> raster = xr.DataArray(np.zeros((100, 100)), dims=("y", "x"),
...                       coords={"y": 99.5 - np.arange(100), "x": 0.5 + np.arange(100)})
>>> raster[40:44, 10:13] = 1  # one 4 x 3 object
>>> def bright(chip):  # a toy detector: the bounding box of the bright pixels
...     rows, cols = np.nonzero(chip > 0)
...     if rows.size == 0:
...         return []
...     return [{"geometry": box(cols.min(), rows.min(), cols.max() + 1, rows.max() + 1),
...              "score": float(rows.size)}]
>>> gdf = apply_vector(raster, bright, size=32, stride=24)
>>> gdf.geometry.bounds.values.tolist(), gdf["score"].tolist()
([[10.0, 56.0, 13.0, 60.0]], [12.0])
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import xarray as xr
from dask.base import tokenize

from patchflow._xr import georef
from patchflow.engine.graph import VECTOR_CHIPS_PREFIX, VECTOR_MERGE_PREFIX, vector_graph
from patchflow.engine.nodata import input_nodata, work_dtype
from patchflow.engine.vectors import (
    DEDUPS,
    CoreRule,
    Dedup,
    MergeSpec,
    NearestRule,
    VectorSpec,
    grid_cores,
    nearest_candidates,
    require_vector,
)
from patchflow.errors import GridError, ParameterError
from patchflow.io.chips import group_size
from patchflow.io.sources import check_band_nodata
from patchflow.options import SizeSpec
from patchflow.plan.grid import ChipGrid, size_pair
from patchflow.plan.samplers import Sampler
from patchflow.sampling.chips import _as_dataarray, _dask_data, chip_array, draw_anchors

__all__ = [
    "DEDUPS",
    "VECTOR_CHIPS_PREFIX",
    "VECTOR_MERGE_PREFIX",
    "Shapes",
    "apply_vector",
]

_IDENTITY: tuple[float, float, float, float, float, float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _grid_rules(grid: ChipGrid, groups: list[tuple[int, int]]) -> list[CoreRule]:
    """Per group, the core rectangles of its chips (row-major grid order)."""
    cy = grid_cores(grid.y.anchors, grid.size_yx[0])
    cx = grid_cores(grid.x.anchors, grid.size_yx[1])
    cores = np.column_stack([np.repeat(cy, len(cx), axis=0), np.tile(cx, (len(cy), 1))])
    return [CoreRule(cores[s:e].copy()) for s, e in groups]


def _nearest_rules(
    anchors: np.ndarray,
    size: tuple[int, int],
    scene: tuple[int, int],
    groups: list[tuple[int, int]],
) -> list[NearestRule]:
    cands = nearest_candidates(anchors, size)
    return [
        NearestRule(
            tuple(cands[k] for k in range(s, e)),
            tuple(anchors[cands[k]] for k in range(s, e)),
            size,
            scene,
        )
        for s, e in groups
    ]


def apply_vector(
    obj: xr.DataArray | xr.Dataset,
    fn: Callable[[np.ndarray], Any],
    *,
    size: SizeSpec = 256,
    stride: SizeSpec | None = None,
    anchors: Sampler | np.ndarray | Sequence[Sequence[int]] | None = None,
    dedup: Dedup = "ownership",
    iou: float = 0.5,
    score: str | None = "score",
    by: str | None = None,
    drop_edge: bool | None = None,
    chips_per_task: int | None = None,
    compute: bool = True,
) -> Any:
    """Run a detector/vectoriser ``fn`` on overlapping chips; one GeoDataFrame of its objects.

    Each group of chips is one dask task reading only the source chunks its chips touch;
    it calls ``fn`` per chip, drops the records this chip does not keep (see ``dedup``)
    and converts the rest to the raster's CRS (the chip's affine transform: the scene's
    transform after a shift by the chip's anchor). One merge task gathers them.

    Parameters
    ----------
    obj
        DataArray with spatial dims (lazy or in memory), or a Dataset (variables stacked
        along ``variable``). Without y/x coordinates the geometries stay in scene pixels.
    fn
        ``fn(chip) -> records``: ``chip`` is a ``(*lead, h, w)`` numpy array; records are
        dicts with a ``"geometry"`` (shapely, in chip pixel coordinates: x = column, y =
        row, origin at the chip's top-left corner) plus any properties, a (Geo)DataFrame,
        or ``None``. See the module docstring and :class:`Shapes`.
    size, stride
        Chip size and stride, an int or a ``(y, x)`` pair: the regular grid ``apply``
        uses (covering the whole scene, the last chip flush with its edge). ``stride``
        defaults to three quarters of ``size`` (a quarter overlap). Objects are kept whole
        when they are smaller than the overlap ``size - stride``.
    anchors
        Instead of the grid: a :class:`~patchflow.plan.samplers.Sampler` or an ``(n, 2)``
        array of ``(row, col)`` chip anchors (chips of ``size``; ``stride`` not allowed).
    dedup
        How overlapping chips' duplicates are removed:

        ``"ownership"`` (default)
            A record is kept only by the chip whose *core* contains its centroid (in
            pixels, clamped to the chip). On the grid the cores partition the scene, one
            chip per point: they split each overlap at its midpoint (the outer cores reach
            the scene edge). An object smaller than the overlap comes out once and whole:
            the chip owning its centre sees it whole, and its cut-off parts in other chips
            have centroids outside those chips' cores.

            With ``anchors`` the core is the chip's cell of the Voronoi partition by
            Chebyshev distance to the chip centres (normalised by the chip size; ties:
            Euclidean distance, then the lower chip index), taken among the chips that
            hold the record's bounding box *whole* (inside, and clear of the chip's
            outermost pixel rows/columns except at the scene's edge); among all chips
            when none does. So any object some chip holds whole comes out exactly once
            and whole, whatever its size or shape; an object no chip holds whole may come
            out in pieces.
        ``"nms"``
            Greedy non-maximum suppression over all chips: highest ``score`` first, a
            record is dropped when its intersection over union with a kept one exceeds
            ``iou``. With ``drop_edge`` (its default here) the cut-off parts of objects are
            dropped first, so a partial box never outranks the whole one.
        ``"none"``
            Every record of every chip (duplicates included).
    iou
        NMS threshold, in ``[0, 1)``.
    score
        The property NMS ranks by (``None``: chip, then record order; records missing it
        rank last).
    by
        NMS per value of this property (e.g. ``"label"``): a record only suppresses
        records of its own class (``None``: every record competes with every other).
    drop_edge
        Drop records that reach into a chip's outermost pixel row or column on a side that
        is not the scene's edge (probably cut off). Default: ``True`` for ``"nms"``,
        ``False`` otherwise.
    chips_per_task
        Chips per dask task (default: ~8 MB of chips, at most 8).
    compute
        ``False``: return a dask ``Delayed`` of the GeoDataFrame (building it computes
        nothing).

    Returns
    -------
    geopandas.GeoDataFrame
        The records' properties (columns in order of first appearance, missing values as
        ``None``/NaN), ``chip`` (the chip's index: row-major on the grid, the anchors'
        order otherwise) and ``geometry`` in the raster's CRS; rows sorted by chip then
        by the order ``fn`` returned them; index ``0 … n-1``. Empty: no rows, same
        columns ``chip``, ``geometry`` and CRS.

    Raises
    ------
    ParameterError
        A record without a shapely geometry (naming it and its chip), a property named
        ``chip`` or ``geometry``, bad options, or NMS by a ``score`` no record has.
    GridError
        ``size``/``stride`` make no grid (a chip larger than the scene, ``stride > size``).
    OperatorError
        ``fn`` raised on a chip (the message names the chip and its anchor; the original
        exception is the cause).
    MissingExtraError
        geopandas/shapely missing: ``pip install 'patchflow[vector]'``.

    Examples
    --------
    >>> import pytest; _ = pytest.importorskip("geopandas")
    >>> from patchflow.io.synthetic import make_scene
    >>> scene = make_scene((256, 256), chunks=128)
    >>> lazy = apply_vector(scene, Shapes(band=0), size=128, compute=False)
    >>> lazy.key.startswith("patchflow-vector-merge-")
    True
    """
    require_vector()
    if not callable(fn):
        raise ParameterError(
            f"fn must be a callable chip -> records, got {type(fn).__name__}; e.g. "
            "patchflow.sampling.vectors.Shapes() or def fn(chip): return [{'geometry': ...}]"
        )
    if dedup not in DEDUPS:
        raise ParameterError(f"unknown dedup {dedup!r}; valid: {', '.join(map(repr, DEDUPS))}")
    if isinstance(iou, bool) or not isinstance(iou, int | float) or not 0.0 <= iou < 1.0:
        raise ParameterError(f"iou must be a number in [0, 1), got {iou!r}")
    if score is not None and not isinstance(score, str):
        raise ParameterError(f"score must be a property name or None, got {score!r}")
    if by is not None and not isinstance(by, str):
        raise ParameterError(f"by must be a property name or None, got {by!r}")
    if drop_edge is None:
        drop_edge = dedup == "nms"
    check_band_nodata(obj)
    arr = _as_dataarray(obj)
    shape = (int(arr.shape[-2]), int(arr.shape[-1]))
    size_yx = size_pair(size, "size")
    transform, crs = georef(arr)
    if anchors is None:
        stride_yx = (
            (max(1, size_yx[0] - size_yx[0] // 4), max(1, size_yx[1] - size_yx[1] // 4))
            if stride is None
            else size_pair(stride, "stride")
        )
        big = [ax for ax, s, n in zip("yx", size_yx, shape, strict=True) if s > n]
        if big:
            raise GridError(
                f"chip size {size_yx} is larger than the scene {shape} along {'/'.join(big)}; "
                "use a size no larger than the scene"
            )
        grid = ChipGrid(shape, size=size_yx, stride=stride_yx)
        anchor_arr = grid.anchors
    else:
        if stride is not None:
            raise ParameterError(
                "stride applies to the regular grid only; with anchors= the chips are where "
                "the anchors put them: drop stride"
            )
        drawn = draw_anchors(anchors, shape, size_yx, transform=transform, crs=crs, param="anchors")
        anchor_arr = np.asarray(drawn.anchors, dtype=np.int64).reshape(-1, 2)
        grid = None
    data = _dask_data(arr)
    chip_bytes = math.prod(arr.shape[:-2]) * size_yx[0] * size_yx[1] * arr.dtype.itemsize
    group = group_size(chips_per_task, chip_bytes, "chips_per_task")
    chips = chip_array(data, anchor_arr, size_yx, chips_per_task=group)
    n = len(anchor_arr)
    groups = [(s, min(s + group, n)) for s in range(0, n, group)]
    rules: list[Any]
    if dedup != "ownership":
        rules = [None] * len(groups)
    elif grid is not None:
        rules = _grid_rules(grid, groups)
    else:
        rules = _nearest_rules(anchor_arr, size_yx, shape, groups)
    nd = input_nodata(arr)
    nd = nd.item() if isinstance(nd, np.generic) else nd  # (a value, or None)
    work = None if nd is None else str(work_dtype(arr.dtype, nd, None))
    tr = _IDENTITY
    if transform is not None:
        a, b, c, d, e, f = (float(v) for v in tuple(transform)[:6])
        tr = (a, b, c, d, e, f)
    specs = [
        VectorSpec(
            fn,
            s,
            anchor_arr[s:e].copy(),
            size_yx,
            shape,
            tr,
            bool(drop_edge),
            rule,
            nodata=nd,
            work_dtype=work,
        )
        for (s, e), rule in zip(groups, rules, strict=True)
    ]
    crs_wkt = None if crs is None else crs.to_wkt()
    merge = MergeSpec(dedup, float(iou), score, crs_wkt, by)
    token = tokenize(
        chips.name, fn, dedup, float(iou), score, by, bool(drop_edge), tr, crs_wkt, grid is None, nd
    )
    result = vector_graph(chips, specs, merge, token)
    return result.compute() if compute else result


# --------------------------------------------------------------------------- Shapes


@dataclass(frozen=True)
class Shapes:
    """A chip function: the regions of equal value of one band, as polygons with their
    ``"value"`` (``rasterio.features.shapes`` with the identity transform).

    Parameters
    ----------
    band
        Which band of the chip (an index into its flattened leading dims; ignored for 2-D
        chips).
    background
        Regions of this value are not returned (default 0; ``None``: every region). NaN
        pixels are never part of a region.
    connectivity
        4 or 8: how pixels of a region connect.

    Regions are cut at chip borders: with ``apply_vector``'s ownership each region
    smaller than the overlap comes out once and whole; larger ones come out as pieces.

    Examples
    --------
    >>> import pytest; _ = pytest.importorskip("shapely")
    >>> labels = np.zeros((1, 6, 6), np.uint8)
    >>> labels[0, 1:3, 2:5] = 7
    >>> [(r["value"], r["geometry"].bounds) for r in Shapes()(labels)]
    [(7, (2.0, 1.0, 5.0, 3.0))]
    """

    band: int = 0
    background: float | None = 0
    connectivity: Literal[4, 8] = 4

    def __post_init__(self) -> None:
        if self.connectivity not in (4, 8):
            raise ParameterError(f"connectivity must be 4 or 8, got {self.connectivity!r}")
        if isinstance(self.band, bool) or not isinstance(self.band, int | np.integer):
            raise ParameterError(f"band must be an int, got {self.band!r}")

    def __call__(self, chip: np.ndarray) -> list[dict[str, Any]]:
        import rasterio.features
        from rasterio.errors import NotGeoreferencedWarning
        from shapely.geometry import shape as to_shape

        values = np.asarray(chip)
        if values.ndim > 2:
            flat = values.reshape(-1, *values.shape[-2:])
            if not -len(flat) <= self.band < len(flat):
                raise ParameterError(
                    f"Shapes(band={self.band}) but the chip has {len(flat)} band(s)"
                )
            values = flat[self.band]
        integer = values.dtype.kind in "iub"
        source, mask, table = _shapes_source(values)
        if self.background is not None:
            # compared on the chip's own values: a cast could make others equal to it
            mask &= values != self.background
        with warnings.catch_warnings():
            # chip pixel coordinates are the point: the identity transform is intended
            # (rasterio may still warn from another dask thread: catch_warnings is global)
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            found = list(
                rasterio.features.shapes(source, mask=mask, connectivity=self.connectivity)
            )
        out = []
        for geom, value in found:
            v = value if table is None else table[int(value)]
            out.append({"geometry": to_shape(geom), "value": int(v) if integer else float(v)})
        return out


#: the dtypes ``rasterio.features.shapes`` reads as they are (every value exact)
_SHAPES_DTYPES = (np.uint8, np.uint16, np.int16, np.int32, np.float32)


def _shapes_source(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``values`` in a dtype ``rasterio.features.shapes`` accepts, the valid mask, and
    the table from the source's values back to the chip's (``None``: the same values).

    Other dtypes (float64, as an integer raster with nodata reaches a chip function,
    int64, uint32 …) are not cast: a cast to float32/int32 would merge distinct values
    (16777216 and 16777217 in float32) and report rounded ones (0.1 as 0.10000000149).
    Each distinct value gets an int32 code instead, and the regions get the value back.
    """
    kind = values.dtype.kind
    if kind == "b":
        return values.astype(np.uint8), np.ones(values.shape, bool), None
    if kind not in "iuf":
        raise ParameterError(f"Shapes needs a numeric or boolean chip, got dtype {values.dtype}")
    valid = np.isfinite(values) if kind == "f" else np.ones(values.shape, bool)
    if values.dtype in _SHAPES_DTYPES:
        source = np.where(valid, values, 0).astype(values.dtype) if kind == "f" else values
        return source, valid, None
    table, codes = np.unique(values[valid], return_inverse=True)
    source = np.zeros(values.shape, np.int32)
    source[valid] = codes.reshape(-1)
    return source, valid, table
