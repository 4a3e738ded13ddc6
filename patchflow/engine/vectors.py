"""Vector outputs of chips (``apply_vector``): per-chip kernel, dedup rules, their graph.

What it owns: running a user's chip function on groups of chips and turning its records
(shapely geometries in *chip pixel* coordinates) into world geometries
(:func:`vector_block`); deciding which chip keeps a geometry (ownership cores,
:func:`grid_cores` and :func:`nearest_candidates`, and border-touching partial objects);
greedy non-maximum suppression (:func:`nms`); and the merge into one GeoDataFrame
(:func:`vector_merge`). The graph that calls them is
:func:`patchflow.engine.graph.vector_graph`:

``patchflow-vector-chips-<token>``
    one task per group of chips (one chunk of the lazy chip array
    :func:`patchflow.sampling.chip_array` builds, so only the source chunks those chips
    touch are read): calls the chip function per chip, converts and filters its records;
``patchflow-vector-merge-<token>``
    one task: concatenates the groups' records in chip order, runs NMS if asked and builds
    the GeoDataFrame.

Planning (where the chips are, the cores) is plain numpy and happens in
:mod:`patchflow.sampling.vectors`; every spec here is a frozen, picklable dataclass. No
xarray: the raster's georeference arrives as a 6-tuple and a CRS WKT string. shapely and
geopandas are imported inside the functions that need them.

Examples
--------
>>> grid_cores(np.array([0, 48, 84]), 64).tolist()
[[-inf, 56.0], [56.0, 98.0], [98.0, inf]]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from patchflow.errors import (
    OperatorError,
    ParameterError,
    PatchflowError,
    optional_import,
)
from patchflow.options import DEDUPS, Dedup

__all__ = [
    "DEDUPS",
    "CoreRule",
    "Dedup",
    "MergeSpec",
    "NearestRule",
    "VectorPart",
    "VectorSpec",
    "chip_records",
    "grid_cores",
    "nearest_candidates",
    "nms",
    "require_vector",
    "vector_block",
    "vector_merge",
]


_INSTALL = "pip install 'patchflow[vector]' (or: pip install geopandas shapely)"


def require_vector(what: str = "apply_vector") -> Any:
    """geopandas, or :class:`MissingExtraError` naming the extra that brings it."""
    return optional_import(
        "geopandas",
        "shapely",
        message=f"{what} returns geometries in a GeoDataFrame and needs geopandas and "
        f"shapely: {_INSTALL}",
    )


# --------------------------------------------------------------------------- ownership


def grid_cores(anchors: np.ndarray, size: int) -> np.ndarray:
    """``(n, 2)`` half-open ``[lo, hi)`` core of each chip of a regular axis, in pixels.

    Neighbouring chips split their overlap at its midpoint; the first and last cores run
    to ``-inf``/``inf`` (the scene edge and beyond), so every coordinate has exactly one
    owner. ``anchors`` must be increasing (an :class:`~patchflow.plan.grid.AxisGrid`'s).

    Examples
    --------
    >>> grid_cores(np.array([0, 32]), 64).tolist()
    [[-inf, 48.0], [48.0, inf]]
    """
    a = np.asarray(anchors, dtype=np.float64)
    cuts = (a[1:] + a[:-1] + size) / 2.0
    lo = np.concatenate([[-np.inf], cuts])
    hi = np.concatenate([cuts, [np.inf]])
    return np.column_stack([lo, hi])


def nearest_candidates(anchors: np.ndarray, size: tuple[int, int]) -> list[np.ndarray]:
    """Per chip, the chips whose closed windows meet its own: the only chips that can own
    a record of it (:class:`NearestRule`).

    A point inside chip ``k`` is owned by the chip whose centre is nearest in the
    chip-size-normalised Chebyshev distance (or by one holding the record whole, which
    contains the point); any such chip contains the point, so it meets chip ``k``.

    Examples
    --------
    >>> cands = nearest_candidates(np.array([[0, 0], [0, 60], [200, 200]]), (64, 64))
    >>> [c.tolist() for c in cands]
    [[0, 1], [0, 1], [2]]
    """
    from scipy.spatial import cKDTree

    h, w = size
    anc = np.asarray(anchors, dtype=np.float64).reshape(-1, 2)
    centres = anc + np.array([h / 2.0, w / 2.0])
    if len(anc) == 0:
        return []
    scaled = centres / np.array([float(h), float(w)])
    tree = cKDTree(scaled)
    # a hair over 1: windows that just touch are candidates too
    found = tree.query_ball_point(scaled, r=1.0 + 1e-9, p=np.inf)
    return [np.asarray(sorted(f), dtype=np.int64) for f in found]


@dataclass(frozen=True, eq=False)
class CoreRule:
    """Ownership on a regular grid: each chip's core rectangle ``(y0, y1, x0, x1)`` in
    scene pixels, half-open (``-inf``/``inf`` at the scene edges)."""

    cores: np.ndarray

    def owns(self, k: int, point: tuple[float, float], box: tuple[float, ...], chip: int) -> bool:
        """Chip ``chip`` (``k``-th of its group) keeps a record centred at ``point``."""
        del box, chip
        y0, y1, x0, x1 = self.cores[k]
        return bool(y0 <= point[0] < y1 and x0 <= point[1] < x1)


@dataclass(frozen=True, eq=False)
class NearestRule:
    """Ownership among arbitrary chips (per chip of the group: the candidate chips'
    indices and ``(row, col)`` anchors).

    A record goes to the chip whose centre is nearest its centroid in Chebyshev distance
    normalised by the chip size (ties: Euclidean distance, then the lower chip index),
    among the chips that hold the record's bounding box *whole*: inside the chip and
    clear of its outermost pixel rows/columns except where those are the scene's edge.
    Every chip seeing an object whole computes the same owner from the same box, while a
    cut-off part always touches its chip's cut border, so that chip is never eligible;
    hence an object some chip holds whole comes out exactly once, whatever its shape.
    When no chip holds the box whole, the nearest chip (the Voronoi cell) owns it.
    """

    ids: tuple[np.ndarray, ...]
    anchors: tuple[np.ndarray, ...]
    size: tuple[int, int]
    scene: tuple[int, int]

    def owns(self, k: int, point: tuple[float, float], box: tuple[float, ...], chip: int) -> bool:
        """Chip ``chip`` (``k``-th of its group) keeps a record centred at ``point`` with
        scene-pixel bounds ``box = (row0, row1, col0, col1)``."""
        h, w = self.size
        ids, anc = self.ids[k], self.anchors[k].astype(np.float64)
        dr = (point[0] - anc[:, 0] - h / 2.0) / h
        dc = (point[1] - anc[:, 1] - w / 2.0) / w
        cheb = np.maximum(np.abs(dr), np.abs(dc))
        eucl = dr * dr + dc * dc
        r0, r1, c0, c1 = box
        top = anc[:, 0] + (anc[:, 0] > 0)
        bottom = anc[:, 0] + h - (anc[:, 0] + h < self.scene[0])
        left = anc[:, 1] + (anc[:, 1] > 0)
        right = anc[:, 1] + w - (anc[:, 1] + w < self.scene[1])
        whole = (top <= r0) & (r1 <= bottom) & (left <= c0) & (c1 <= right)
        pick = np.flatnonzero(whole) if whole.any() else np.arange(len(ids))
        best = pick[np.lexsort((ids[pick], eucl[pick], cheb[pick]))[0]]
        return bool(ids[best] == chip)


# --------------------------------------------------------------------------- chip kernel


@dataclass(frozen=True, eq=False)
class VectorSpec:
    """One task of ``apply_vector``: chips ``start … start + len(anchors) - 1``."""

    fn: Callable[[np.ndarray], Any]
    start: int
    #: ``(n_g, 2)`` row/col anchors of the group's chips
    anchors: np.ndarray
    size: tuple[int, int]
    scene: tuple[int, int]
    #: the scene's affine ``(a, b, c, d, e, f)`` (identity: results in scene pixels)
    transform: tuple[float, float, float, float, float, float]
    drop_edge: bool
    #: ``None``: every chip keeps everything (``"nms"``/``"none"``)
    owner: CoreRule | NearestRule | None
    #: the input's nodata value: such elements reach ``fn`` as NaN, in ``work_dtype``
    #: (``None``: only NaN is invalid, chips go as read)
    nodata: Any = None
    work_dtype: str | None = None


@dataclass(frozen=True, eq=False)
class VectorPart:
    """What one group task returns: kept records in chip, then record order."""

    chips: np.ndarray
    geometries: list[Any]
    props: list[dict[str, Any]]


def chip_records(result: Any, chip: int) -> list[tuple[Any, dict[str, Any]]]:
    """``(geometry, properties)`` of each record a chip function returned.

    Accepts ``None`` (no records), an iterable of mappings with a ``"geometry"`` key, or
    a (Geo)DataFrame (its geometry column, whatever its name, is the geometry).

    Examples
    --------
    >>> from shapely.geometry import box
    >>> chip_records([{"geometry": box(0, 0, 2, 2), "score": 0.9}], chip=3)
    [(<POLYGON ((2 0, 2 2, 0 2, 0 0, 2 0))>, {'score': 0.9})]
    """
    import shapely

    if result is None:
        return []
    geo_col = "geometry"
    if hasattr(result, "columns") and hasattr(result, "to_dict"):
        geo_col = getattr(result, "active_geometry_name", None) or "geometry"
        if geo_col not in result.columns:
            raise ParameterError(
                f"the chip function returned a DataFrame without a geometry column for chip "
                f"{chip} (columns {list(result.columns)}); add a 'geometry' column of "
                "shapely geometries in chip pixel coordinates"
            )
        result = result.to_dict("records")
    if isinstance(result, Mapping | str | bytes) or not isinstance(result, Iterable):
        raise ParameterError(
            f"the chip function must return an iterable of records (dicts with a 'geometry'), "
            f"a (Geo)DataFrame or None; for chip {chip} it returned {type(result).__name__}"
        )
    out = []
    for i, record in enumerate(result):
        geom = record.get(geo_col) if isinstance(record, Mapping) else None
        if not isinstance(geom, shapely.Geometry):
            shown = repr(record)
            shown = shown if len(shown) <= 200 else shown[:200] + "…"
            raise ParameterError(
                f"record {i} of chip {chip} has no shapely geometry under 'geometry': "
                f"{shown}; each record must be a dict like {{'geometry': box(c0, r0, c1, r1), "
                "'score': 0.9} in chip pixel coordinates (x = column, y = row)"
            )
        props = {str(k): v for k, v in record.items() if k != geo_col}
        out.append((geom, props))
    return out


def _touches_border(
    bounds: np.ndarray, anchor: tuple[int, int], size: tuple[int, int], scene: tuple[int, int]
) -> np.ndarray:
    """Per geometry: reaches into an outermost pixel row/column of the chip on a side that
    is not the scene's edge (the object is probably cut there)."""
    h, w = size
    r0, c0 = anchor
    minx, miny, maxx, maxy = bounds.T
    return (
        ((minx < 1) & (c0 > 0))
        | ((maxx > w - 1) & (c0 + w < scene[1]))
        | ((miny < 1) & (r0 > 0))
        | ((maxy > h - 1) & (r0 + h < scene[0]))
    )


def vector_block(spec: VectorSpec, chips: np.ndarray) -> VectorPart:
    """Run the chip function on each chip of the group; keep, convert and return records."""
    import shapely

    h, w = spec.size
    a, b, c, d, e, f = spec.transform
    matrix = np.array([[a, b], [d, e]], dtype=np.float64)
    offset = np.array([c, f], dtype=np.float64)
    ids: list[int] = []
    geoms: list[Any] = []
    props: list[dict[str, Any]] = []
    for k in range(len(spec.anchors)):
        chip = spec.start + k
        r0, c0 = (int(v) for v in spec.anchors[k])
        values = chips[k]
        if spec.nodata is not None and spec.work_dtype is not None:
            # as operators see it: invalid elements are NaN (GDAL's per-band nodata)
            values = np.where(values == spec.nodata, np.nan, values.astype(spec.work_dtype))
        try:
            result = spec.fn(values)
        except PatchflowError:
            raise
        except Exception as exc:
            # the user's function: say which chip, keep the original as the cause
            raise OperatorError(
                f"the chip function failed on chip {chip} (anchor row {r0}, col {c0}): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        records = [rec for rec in chip_records(result, chip) if not rec[0].is_empty]
        if not records:
            continue
        pixel = np.array([rec[0] for rec in records], dtype=object)
        keep = np.ones(len(records), dtype=bool)
        bounds = shapely.bounds(pixel)
        if spec.drop_edge:
            keep &= ~_touches_border(bounds, (r0, c0), spec.size, spec.scene)
        if spec.owner is not None:
            # what lies outside its chip counts at the chip's nearest point
            cents = shapely.get_coordinates(shapely.centroid(pixel))
            cols = np.clip(cents[:, 0], 0, w) + c0
            rows = np.clip(cents[:, 1], 0, h) + r0
            bx = np.clip(bounds[:, [0, 2]], 0, w) + c0
            by = np.clip(bounds[:, [1, 3]], 0, h) + r0
            for i in np.flatnonzero(keep):
                box = (by[i, 0], by[i, 1], bx[i, 0], bx[i, 1])
                keep[i] = spec.owner.owns(k, (rows[i], cols[i]), box, chip)
        kept = np.flatnonzero(keep)
        if kept.size == 0:
            continue
        shift = np.array([c0, r0], dtype=np.float64)
        world = shapely.transform(pixel[kept], lambda xy, s=shift: (xy + s) @ matrix.T + offset)
        ids.extend([chip] * kept.size)
        geoms.extend(world.tolist())
        props.extend(records[i][1] for i in kept)
    return VectorPart(np.asarray(ids, dtype=np.int64), geoms, props)


# --------------------------------------------------------------------------- merge


def nms(geometries: Sequence[Any], scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy non-maximum suppression: indices kept, ascending.

    Highest score first (ties: lower position first; NaN scores last); a geometry is
    suppressed when its intersection-over-union with an already kept one exceeds ``iou``.
    Candidates come from a shapely ``STRtree``. Geometries without area (points, lines)
    suppress only equal geometries.

    Examples
    --------
    >>> from shapely.geometry import box
    >>> nms([box(0, 0, 2, 2), box(0, 0, 2, 1.9), box(5, 5, 6, 6)], np.array([1.0, 2.0, 0.5]), 0.5)
    array([1, 2])
    """
    import shapely

    geoms = np.asarray(list(geometries), dtype=object)
    n = len(geoms)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    rank = np.where(np.isnan(s), -np.inf, s)
    order = np.lexsort((np.arange(n), np.isnan(s), -rank))
    tree = shapely.STRtree(geoms)
    areas = shapely.area(geoms)
    done = np.zeros(n, dtype=bool)
    kept = []
    for i in order:
        if done[i]:
            continue
        done[i] = True
        kept.append(int(i))
        cand = tree.query(geoms[i], predicate="intersects")
        cand = cand[~done[cand]]
        if cand.size == 0:
            continue
        inter = shapely.area(shapely.intersection(geoms[i], geoms[cand]))
        union = areas[i] + areas[cand] - inter
        same = shapely.equals(geoms[i], geoms[cand]).astype(np.float64)
        ratio = np.where(union > 0, inter / np.where(union > 0, union, 1.0), same)
        done[cand[ratio > iou]] = True
    return np.sort(np.asarray(kept, dtype=np.int64))


@dataclass(frozen=True)
class MergeSpec:
    """The merge task's settings."""

    dedup: Dedup
    iou: float
    #: the property NMS ranks by (``None``: record order)
    score: str | None
    #: the raster's CRS as WKT (``None``: none)
    crs: str | None
    #: the property whose equal values NMS compares (``None``: all records together)
    by: str | None = None


def _frame(chips: np.ndarray, geoms: list[Any], props: list[dict[str, Any]], crs: Any) -> Any:
    gpd = require_vector()
    import pandas as pd

    keys: dict[str, None] = {}
    for p in props:
        keys.update(dict.fromkeys(p))
    for name in ("chip", "geometry"):
        if name in keys:
            raise ParameterError(
                f"the chip function's records have a {name!r} property, a column apply_vector "
                f"writes itself; rename it (e.g. 'source_{name}')"
            )
    index = pd.RangeIndex(len(geoms))
    columns: dict[str, Any] = {k: [p.get(k) for p in props] for k in keys}
    columns["chip"] = np.asarray(chips, dtype=np.int64)
    frame = pd.DataFrame(columns, index=index)
    return gpd.GeoDataFrame(
        frame, geometry=gpd.GeoSeries(list(geoms), index=index, crs=crs), crs=crs
    )


def _require_property(props: list[dict[str, Any]], key: str, claim: str, fix: str) -> None:
    """Refuse (``claim``, the properties the records do have, ``fix``) when no record has
    the property ``key``."""
    if not any(key in p for p in props):
        have = sorted({k for p in props for k in p})
        raise ParameterError(f"{claim} (properties: {have}); {fix}")


def vector_merge(spec: MergeSpec, parts: list[VectorPart]) -> Any:
    """The groups' records as one GeoDataFrame (NMS applied for ``dedup="nms"``)."""
    chips = np.concatenate([p.chips for p in parts]) if parts else np.zeros(0, np.int64)
    geoms = [g for p in parts for g in p.geometries]
    props = [q for p in parts for q in p.props]
    if spec.dedup == "nms" and geoms:
        if spec.score is None:
            scores = np.zeros(len(geoms))
        else:
            _require_property(
                props,
                spec.score,
                f"dedup='nms' ranks by the {spec.score!r} property, which no record has",
                "pass score='<your column>', or score=None to rank by chip and record order",
            )
            scores = np.array(
                [np.nan if p.get(spec.score) is None else float(p[spec.score]) for p in props]
            )
        if spec.by is None:
            keep = nms(geoms, scores, spec.iou)
        else:
            _require_property(
                props,
                spec.by,
                f"dedup='nms' with by={spec.by!r} groups records by a property no record has",
                "pass by='<your class column>', or by=None to compare all records",
            )
            # one NMS per class: a detection never suppresses one of another class
            groups: dict[Any, list[int]] = {}
            for i, p in enumerate(props):
                groups.setdefault(p.get(spec.by), []).append(i)
            kept_parts = [
                np.asarray(idx)[nms([geoms[i] for i in idx], scores[idx], spec.iou)]
                for idx in groups.values()
            ]
            keep = np.sort(np.concatenate(kept_parts))
        chips = chips[keep]
        geoms = [geoms[i] for i in keep]
        props = [props[i] for i in keep]
    return _frame(chips, geoms, props, spec.crs)


# --------------------------------------------------------------------------- graph
