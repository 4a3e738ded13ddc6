"""How chip outputs merge into pixels: partial states, merging, finalising. Pure numpy.

Each aggregation keeps a *partial state* per block region: a dict of numpy arrays whose
trailing two axes are the region's rows/cols. Partials are built chip by chip
(:meth:`Aggregator.add`), merged piecewise into output blocks (:meth:`Aggregator.merge`),
and turned into pixels once (:meth:`Aggregator.finalize`). Merging is associative and
commutative up to float rounding, so the result does not depend on chunking or on the
order tasks finish in.

================ ===================================================================
``agg``          what a pixel gets
================ ===================================================================
overlap_add      ``sum(w * out) / sum(w)`` over the chips covering it (``w`` = window)
mean             same with a boxcar window (unweighted mean)
max / min        the maximum / minimum over chips
vote             the most frequent integer label; ties go to the label with the higher
                 summed window weight, then to the lower label
soft_vote        ``argmax`` over classes of the overlap-added class scores
centre           the value from the chip whose centre is nearest, per band (ties: lower
                 chip index; a band invalid in that chip takes the next nearest chip's)
sum              ``sum(out)`` over the chips covering it (window ignored; e.g. counts)
weighted_sum     ``sum(w * out)``
mean_std         ``[mean, std]`` along a new leading axis: the overlap-add mean and the
                 weighted population std ``sqrt(sum(w (out - mean)^2) / sum(w))``
inverse_variance the op returns ``(mean, variance)`` on its first output axis; with
                 ``a = w / var``: ``[sum(a mean) / sum(a), sum(w a) / sum(a)^2]`` on that
                 axis (the variance of the estimator; ``1 / sum(1 / var)`` if ``w = 1``)
median           the exact median of the chip values (even count: mean of the middle two)
mode             the most frequent chip value; ties go to the smallest value
================ ===================================================================

Invalid contributions (a non-finite op output, a failed chip, or — for non-float outputs
and with a ``fill_value`` — invalid input under the pixel; see :mod:`patchflow.engine.nodata`)
carry zero weight. A pixel nothing valid reaches comes out as NaN (floats) or ``nodata``
(ints); sums are float32, or float64 where the outputs are whole numbers (exact).

``median`` and ``mode`` are exact, so they keep every chip value: ``K`` value layers per
block region plus a per-element count, where ``K`` (``layers=``) is the most chips covering
one pixel — computed by the caller from the chip positions. Memory is ``K × region pixels ×
lead × itemsize`` per block (e.g. 4 layers of float32 for 256/192 chips), so ``K`` is
capped at :data:`MAX_LAYERS` (:class:`~patchflow.errors.CoverageError` above it).

The overlap-add denominator of a separable window on a regular grid depends on geometry
only: it is the outer product of per-axis weight sums. A partial whose chips saw no invalid
pixel stores just those 1-D sums (``dy``, ``dx``) instead of a full denominator array.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from patchflow.engine.nodata import OutputNodata, check_collision
from patchflow.errors import (
    CoverageError,
    LayerOverflowError,
    MemoryBudgetError,
    OperatorError,
    ParameterError,
    _w,
)

__all__ = [
    "AGGREGATIONS",
    "LAYERED_AGGS",
    "MAX_LAYERS",
    "Aggregator",
    "ChipBatch",
    "check_vote_memory",
    "make_aggregator",
]

#: most value layers ``agg="median"``/``"mode"`` keep per pixel (the most chips that may
#: cover one pixel): a block then holds ``MAX_LAYERS × pixels × itemsize`` bytes of values
#: (64 float32 layers of a 2048² block: 1 GiB), which is where bounded memory ends
MAX_LAYERS = 64
#: chip outputs ``mean_std`` keeps before folding them into its state (two passes)
STASH_BYTES = 64 * 2**20
#: rows of a block ``mean_std`` finishes at a time (its per-element steps stay in cache)
_ROWS = 32
#: the most bytes ``agg="vote"``'s per-block state may take (a float32 count and a float64
#: weight sum per class and pixel): above it a job is refused before it runs, instead of
#: being killed for memory halfway through
VOTE_STATE_BYTES = 4 * 2**30

State = dict[str, Any]
Slices = tuple[slice, slice]
_ALL = slice(None)


@dataclass
class ChipBatch:
    """Op outputs for a batch of chips, with what the aggregators need to place them.

    ``out`` is ``(n, *lead, h, w)``; ``pos`` holds each chip's ``(row, col)`` inside the
    region; ``weights`` the per-chip 2-D window; ``valid`` the per-chip pixel validity
    (every input element under the pixel valid, broadcastable against ``out``) or ``None``
    when every pixel is valid; ``chip_ids`` global chip indices. With ``nan_marks`` the op
    saw invalid inputs as NaN, so a float output's own NaNs say what is invalid (per
    band) and ``valid`` only matters for non-float outputs. ``failed`` lists chips whose
    op call failed (``on_error="mask"``): they contribute nothing. ``unit_weights``: every
    weight is 1 (no window), so sums need no multiplication. ``separable``: see below.
    """

    out: np.ndarray
    pos: np.ndarray
    weights: list[np.ndarray]
    valid: np.ndarray | None
    chip_ids: np.ndarray
    nan_marks: bool = False
    failed: list[int] = field(default_factory=list)
    unit_weights: bool = False
    #: every ``weights[k]`` is an outer product ``wy ⊗ wx`` whose factors depend only on
    #: the chip's grid row (``wy``) and column (``wx``): a separable window on a grid
    separable: bool = False


def _float_dtype(dtype: np.dtype) -> np.dtype:
    """The float dtype that holds every value of ``dtype`` exactly (float32 up to 16 bits)."""
    if dtype.itemsize >= 8 or (dtype.kind in "iu" and dtype.itemsize >= 4):
        return np.dtype(np.float64)
    return np.dtype(np.float32)


def _pixel_mask(batch: ChipBatch, k: int) -> np.ndarray | None:
    """Per-element validity of chip ``k``'s output (input validity × finite output)."""
    out = batch.out[k]
    if k in batch.failed:
        return np.zeros(out.shape, bool)
    mask = None
    if batch.valid is not None and not (batch.nan_marks and out.dtype.kind in "fc"):
        mask = np.broadcast_to(batch.valid[k], out.shape)
    if out.dtype.kind in "fc":
        finite = np.isfinite(out)
        if not finite.all():
            mask = finite if mask is None else (mask & finite)
    return mask


def _batch_masks(batch: ChipBatch) -> list[np.ndarray | None]:
    """:func:`_pixel_mask` of every chip of ``batch``; one check of the whole batch when
    nothing but a non-finite output could make an element invalid (the usual case)."""
    out = batch.out
    floats = out.dtype.kind in "fc"
    if not batch.failed and (batch.valid is None or (batch.nan_marks and floats)):
        if not floats or bool(np.isfinite(out).all()):
            return [None] * len(batch.pos)
    return [_pixel_mask(batch, k) for k in range(len(batch.pos))]


def _whole_accumulator(default: np.dtype, out: np.ndarray) -> np.dtype:
    """float64 when a sparse sample of ``out`` is all whole numbers, else ``default``."""
    if default == np.float64:
        return default
    sample = out[..., ::7, ::7]
    with np.errstate(invalid="ignore"):
        whole = bool(np.all((sample == np.rint(sample)) | ~np.isfinite(sample)))
    return np.dtype(np.float64) if whole else default


class Aggregator:
    """Base class: subclasses define the partial state and how it merges."""

    name: ClassVar[str]
    #: whether the window shapes the result (False: window ignored, e.g. max)
    weighted: ClassVar[bool] = True
    #: state arrays that add up across passes (empty: the aggregation cannot accumulate)
    sum_keys: ClassVar[tuple[str, ...]] = ()
    #: labels of a leading ``stat`` dim the result gains (empty: none; mean_std: mean, std)
    stat_names: ClassVar[tuple[str, ...]] = ()
    #: whether :meth:`stitched` returns cells that read the partials in place (the
    #: aggregation defines :meth:`_view` and finalises cells)
    in_place_cells: ClassVar[bool] = False
    #: whether the result holds class labels (or other discrete values) that must never be
    #: averaged with their neighbours, e.g. in a COG's overviews
    categorical: ClassVar[bool] = False
    #: whether every result pixel is one of the values the op returned there (one chip's
    #: value is picked, nothing is blended): integer results then may be labels too
    picks: ClassVar[bool] = False

    def __init__(
        self,
        *,
        out_dtype: np.dtype,
        lead: tuple[int, ...],
        nodata: Any = None,
        n_classes: int | None = None,
    ) -> None:
        self.op_dtype = np.dtype(out_dtype)
        self.lead = tuple(int(v) for v in lead)
        #: fill for invalid pixels (NaN for floats; ``None``: no pixel can be invalid)
        self.nodata = nodata
        #: a float result's on-disk nodata (an explicit ``nodata=``), checked like ``nodata``
        self.encoded: Any = None
        #: where ``nodata`` came from, for the collision error
        self.nodata_origin = "the default"
        self.n_classes = n_classes

    def set_nodata(self, nd: OutputNodata) -> None:
        """Use ``nd`` (see :func:`patchflow.engine.nodata.resolve`) for invalid pixels."""
        self.nodata, self.encoded, self.nodata_origin = nd.value, nd.encoded, nd.origin

    def _finish(self, value: np.ndarray, ok: np.ndarray | None) -> np.ndarray:
        """Result pixels: ``value`` where ``ok``, nodata elsewhere; never a valid value that
        equals the nodata (:class:`~patchflow.errors.NodataCollisionError`)."""
        dtype = self.result_dtype()
        value = value.astype(dtype, copy=False)
        check_collision(
            value, ok, self.encoded if dtype.kind in "fc" else self.nodata, self.nodata_origin
        )
        if ok is None or bool(ok.all()):
            return value
        fill = np.nan if dtype.kind in "fc" and self.nodata is None else self.nodata
        if fill is None:
            raise OperatorError(
                f"{int((~ok).sum())} output pixels are invalid (NaN input, failed chip or no "
                f"chip) but the {dtype} result has no nodata value; pass nodata=<value>"
            )
        return np.where(ok, value, np.asarray(fill).astype(dtype))

    def result_dtype(self) -> np.dtype:
        """Dtype of the finalised output."""
        return self.op_dtype

    def discrete(self) -> bool:
        """Whether the result must never be blended with its neighbours (a COG's overviews
        then pick pixels): class labels, or an integer result of a merge that picks one
        chip's value (``centre``, ``max``, ``min`` of a classifier's labels: a blend of
        classes 0 and 5 would be a class 2 that no chip returned)."""
        return self.categorical or (self.picks and self.result_dtype().kind in "iub")

    def result_lead(self) -> tuple[int, ...]:
        """Non-spatial shape of the finalised output."""
        return self.lead

    def new(self, shape: tuple[int, int], acc: np.dtype | None = None) -> State:
        """An empty partial state over ``shape`` pixels (``acc``: accumulator dtype, for
        aggregations that sum)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def accumulator_for(self, out: np.ndarray) -> np.dtype | None:
        """The accumulator a block needs, given its first op outputs (``None``: n/a)."""
        return None

    def merged_accumulator(self, partials: list[State]) -> np.dtype | None:
        """The accumulator a stitched block needs to hold all of ``partials`` exactly."""
        return None

    def seal(self, state: State, dy: np.ndarray | None, dx: np.ndarray | None) -> State:
        """Finish a block's partial before it leaves the worker (see :class:`OverlapAdd`)."""
        return state

    def add(self, state: State, batch: ChipBatch) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def merge(self, dst: State, src: State, dst_sl: Slices, src_sl: Slices) -> None:
        raise NotImplementedError  # pragma: no cover - abstract

    def finalize(self, state: State) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def stitched(
        self, shape: tuple[int, int], pieces: list[tuple[Slices, Slices, State]], acc: Any
    ) -> State:
        """The state of an output block of ``shape`` from ``pieces`` ``(dst, src,
        partial)``: each ``partial[src]`` merged into ``dst`` in order (the block's own
        partial first). ``acc``: the accumulator the merged state needs. The partials are
        only read. Aggregations with ``in_place_cells`` get ``{"_cells", "_shape"}``
        instead (:meth:`_cells`), which their :meth:`finalize` reads cell by cell."""
        if self.in_place_cells:
            cells = self._cells(shape, pieces, acc)
            if cells is not None:
                return {"_cells": cells, "_shape": shape}
        state = self.new(shape, acc)
        for dst_sl, src_sl, part in pieces:
            self.merge(state, part, dst_sl, src_sl)
        return state

    def _view(self, state: State, rows: slice, cols: slice) -> State:
        """``rows`` × ``cols`` of a state, as views (for :meth:`_cells`)."""
        raise NotImplementedError  # pragma: no cover - only aggregations that cut cells

    def _cells(
        self, shape: tuple[int, int], pieces: list[tuple[Slices, Slices, State]], acc: Any
    ) -> list[tuple[tuple[int, int, int, int], State]] | None:
        """An output block's state as *cells* ``((y0, y1, x0, x1), state)``, without
        copying any partial; ``None`` when no piece reaches the block at all.

        Cut at every piece's edges, the block falls into cells each covered by a fixed
        set of pieces. A cell one piece covers is a view of that partial (:meth:`_view`):
        mostly the block's own, but where the chip grid does not start at the block's
        edge, the block's first rows or columns are a neighbour's spill-over alone. A cell
        several pieces cover is merged from them in the order a whole-block merge uses,
        and one no piece covers (gaps between sampled chips) is an empty state, so every
        element sees the same arithmetic as a whole-block merge (bit for bit). The
        partials are only read, so a retried task finds them as they were.
        """
        if not pieces:  # a block no chip reaches (boundary="drop", gaps): all invalid
            return None
        ys = sorted({0, shape[0], *(b for d, _, _ in pieces for b in (d[0].start, d[0].stop))})
        xs = sorted({0, shape[1], *(b for d, _, _ in pieces for b in (d[1].start, d[1].stop))})
        cells = []
        for y0, y1 in itertools.pairwise(ys):
            for x0, x1 in itertools.pairwise(xs):
                here = [
                    (
                        slice(src[0].start + y0 - dst[0].start, src[0].start + y1 - dst[0].start),
                        slice(src[1].start + x0 - dst[1].start, src[1].start + x1 - dst[1].start),
                        part,
                    )
                    for dst, src, part in pieces
                    if dst[0].start <= y0
                    and y1 <= dst[0].stop
                    and dst[1].start <= x0
                    and x1 <= dst[1].stop
                ]
                if len(here) == 1:
                    sy, sx, part = here[0]
                    cell = self._view(part, sy, sx)
                else:
                    cell = self.new((y1 - y0, x1 - x0), acc)
                    for sy, sx, part in here:
                        self.merge(cell, part, (_ALL, _ALL), (sy, sx))
                cells.append(((y0, y1, x0, x1), cell))
        return cells

    @staticmethod
    def _cells_of(
        state: State, key: str
    ) -> tuple[list[tuple[tuple[int, int, int, int], State]], tuple[int, int]]:
        """``(cells, shape)`` of a state :meth:`stitched` cut into cells, or of any other
        state as one cell (``key`` names one of its block-shaped arrays)."""
        if "_cells" in state:
            return state["_cells"], state["_shape"]
        h, w = state[key].shape[-2:]
        return [((0, h, 0, w), state)], (h, w)

    def to_sums(self, state: State) -> dict[str, np.ndarray]:
        """The additive arrays of a merged state (to persist or to add to another pass)."""
        return {k: state[k] for k in self.sum_keys}

    def from_sums(self, sums: dict[str, np.ndarray]) -> State:
        """A merged state rebuilt from :meth:`to_sums` arrays."""
        return dict(sums)

    def sum_shape(self, key: str, shape: tuple[int, int]) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype of sum array ``key`` for a ``shape`` block."""
        value = self.new(shape, np.dtype(np.float64))[key]
        if value is None:  # OverlapAdd's deferred denominator: same layout as num
            value = self.new(shape, np.dtype(np.float64))["num"]
        return tuple(value.shape), value.dtype

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lead={self.lead}, dtype={self.op_dtype})"

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return (
            type(self).__name__,
            str(self.op_dtype),
            self.lead,
            repr(self.nodata),
            repr(self.encoded),
            self.n_classes,
            getattr(self, "n_chips", None),
        )


class _FloatResult(Aggregator):
    """Aggregations whose result is a float: the op's float dtype, or the float that holds
    every value of its integer/bool dtype exactly."""

    def result_dtype(self) -> np.dtype:
        return self.op_dtype if self.op_dtype.kind == "f" else _float_dtype(self.op_dtype)


class _Summing(_FloatResult):
    """Aggregations that add op outputs up: a float result and the accumulator choice."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        # float64 sums where float32 ones would drift: integer outputs, float64 outputs,
        # and (decided per block, see accumulator_for) float outputs holding whole numbers
        wide = self.op_dtype.kind in "biu" or self.op_dtype.itemsize >= 8
        self.acc = np.dtype(np.float64) if wide else np.dtype(np.float32)

    def accumulator_for(self, out: np.ndarray) -> np.dtype:
        """float64 when the outputs look like whole numbers, else the default.

        float32 sums of whole numbers drift (933 → 932.99994); with fixed-point window
        weights float64 sums of integer values are exact, so an identity op on integer data
        (even read as float32, ``masked=True``) returns its input bit for bit. The choice is
        made on a sparse sample of the block's first outputs: a wrong "whole" guess only
        costs speed (float64 is never less exact), a wrong "fractional" guess only hits
        outputs that are not all whole numbers, which float32 sums to ~1e-7 anyway.
        """
        return _whole_accumulator(self.acc, out)

    def merged_accumulator(self, partials: list[State]) -> np.dtype:
        dtypes = [p["num"].dtype for p in partials if p.get("num") is not None]
        return np.result_type(self.acc, *dtypes)


class OverlapAdd(_Summing):
    """Window-weighted mean: ``num / den``."""

    name = "overlap_add"
    sum_keys = ("num", "den")

    def new(self, shape: tuple[int, int], acc: np.dtype | None = None) -> State:
        return {
            "num": np.zeros((*self.lead, *shape), acc or self.acc),
            "den": None,
            "dy": np.zeros(shape[0], np.float64),
            "dx": np.zeros(shape[1], np.float64),
        }

    def _full_den(self, state: State) -> np.ndarray:
        """The explicit denominator of a merged (stitch-side) state."""
        if state["den"] is None:
            num = state["num"]
            if "_geo" in state:  # deferred geometric pieces of a stitched block
                pieces = np.zeros(num.shape, num.dtype)
                for (ys, xs), dy, dx in state.pop("_geo"):
                    pieces[..., ys, xs] += np.outer(dy, dx)
                state["den"] = pieces
            else:
                den2d = np.outer(state["dy"], state["dx"]).astype(num.dtype)
                state["den"] = np.broadcast_to(den2d, num.shape).copy()
        den: np.ndarray = state["den"]
        return den

    def set_geometry(self, state: State, dy: np.ndarray, dx: np.ndarray) -> None:
        """Declare a stitched block's denominator ``outer(dy, dx)``, known from geometry.

        Only used when every partial merged into the block was geometric (no chip saw an
        invalid pixel, separable window): the block's denominator is then the product of
        the per-axis window sums over *all* chips touching it, which the caller computes
        in O(h + w) instead of merging 2-D pieces.
        """
        if state["den"] is None:
            state.pop("_geo", None)
            state["dy"], state["dx"] = dy, dx
            state["_separable"] = True

    def add(self, state: State, batch: ChipBatch) -> None:
        num = state["num"]
        acc = num.dtype
        h, w = batch.out.shape[-2:]
        scratch: np.ndarray | None = None  # one w·out buffer for the batch
        for k, (r, c) in enumerate(batch.pos):
            sl = (..., slice(r, r + h), slice(c, c + w))
            wk = batch.weights[k]
            mask = _pixel_mask(batch, k)
            if mask is None:
                if batch.unit_weights:
                    num[sl] += batch.out[k]  # exact: w = 1 (float32 into float64 too)
                else:
                    if scratch is None:
                        scratch = np.empty(batch.out.shape[1:], acc)
                    np.multiply(batch.out[k], wk, out=scratch, dtype=acc)
                    num[sl] += scratch
                if state["den"] is None:
                    # defer: if every chip stays valid the denominator is pure geometry
                    state.setdefault("_pending", []).append((r, c, wk))
                else:
                    state["den"][sl] += wk
            else:
                self._materialise(state)
                wm = np.where(mask, wk, np.float32(0))
                num[sl] += np.multiply(np.where(mask, batch.out[k], 0), wm, dtype=acc)
                state["den"][sl] += wm

    def _materialise(self, state: State) -> None:
        """Replace the deferred (geometric) denominator by an explicit array."""
        if state["den"] is not None:
            return
        den = np.zeros(state["num"].shape, state["num"].dtype)
        for r, c, wk in state.pop("_pending", []):
            h, w = wk.shape
            den[..., r : r + h, c : c + w] += wk
        state["den"] = den

    def seal(self, state: State, dy: np.ndarray | None, dx: np.ndarray | None) -> State:
        """Finish a block's partial.

        ``dy``/``dx`` are the per-axis window sums over the block's chips (``None`` for a
        non-separable window). When no chip saw an invalid pixel the denominator is their
        outer product, so only the two vectors travel to the stitch step.
        """
        if state["den"] is None and dy is not None and dx is not None:
            state.pop("_pending", None)
            state["dy"], state["dx"] = dy, dx
        else:
            self._materialise(state)
        return state

    def merge(self, dst: State, src: State, dst_sl: Slices, src_sl: Slices) -> None:
        dst["num"][(..., *dst_sl)] += src["num"][(..., *src_sl)]
        if src["den"] is None and dst["den"] is None:
            # keep it deferred: if every piece is geometric the stitch step knows the
            # whole denominator from geometry (set_geometry) and never builds it
            piece = (src["dy"][src_sl[0]], src["dx"][src_sl[1]])
            dst.setdefault("_geo", []).append((dst_sl, *piece))
            return
        den = self._full_den(dst)
        if src["den"] is None:
            den[(..., *dst_sl)] += np.outer(src["dy"][src_sl[0]], src["dx"][src_sl[1]])
        else:
            den[(..., *dst_sl)] += src["den"][(..., *src_sl)]

    def to_sums(self, state: State) -> dict[str, np.ndarray]:
        return {"num": state["num"], "den": self._full_den(state)}

    def normalised(self, state: State) -> tuple[np.ndarray, np.ndarray | None]:
        """``(num / den, den > 0)`` with zeros where nothing valid reached (``None``: all)."""
        num = state["num"]
        if state["den"] is None and state.get("_separable"):
            dy, dx = state["dy"].astype(num.dtype), state["dx"].astype(num.dtype)
            if bool((dy == 1).all() and (dx == 1).all()):
                return num, None  # one unit-weight chip per pixel (pointwise ops)
            if bool((dy > 0).all() and (dx > 0).all()):
                # two exact-as-possible divisions, no 2-D denominator: where the true
                # quotient is representable (whole numbers summed in float64) it is exact
                value = np.divide(num, dy[:, None])
                np.divide(value, dx, out=value)
                return value, None
        den = self._full_den(state)
        ok = den > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            value = np.where(ok, state["num"] / np.where(ok, den, 1), 0)
        return value, ok

    def finalize(self, state: State) -> np.ndarray:
        value, ok = self.normalised(state)
        return self._finish(value, ok)


class Mean(OverlapAdd):
    """Unweighted mean (overlap-add with a boxcar window)."""

    name = "mean"
    weighted = False


class SoftVote(OverlapAdd):
    """Overlap-add class scores (first output axis = classes), then ``argmax``."""

    name = "soft_vote"
    categorical = True

    def result_lead(self) -> tuple[int, ...]:
        return self.lead[1:]

    def result_dtype(self) -> np.dtype:
        return _label_dtype(self.lead[0] if self.lead else 1)

    def finalize(self, state: State) -> np.ndarray:
        value, ok = self.normalised(state)
        labels = np.argmax(value, axis=0)
        return self._finish(labels, None if ok is None else np.asarray(ok.all(axis=0)))


def _label_dtype(n_classes: int) -> np.dtype:
    for dt in (np.uint8, np.uint16, np.int32):
        if n_classes < np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.int64)


class Extreme(Aggregator):
    """Running max (or min) over the chips covering each pixel."""

    weighted = False
    picks = True
    sign: ClassVar[int] = 1

    def _dtype(self) -> np.dtype:
        return np.dtype(np.uint8) if self.op_dtype.kind == "b" else self.op_dtype

    def result_dtype(self) -> np.dtype:
        return self._dtype()

    def _identity(self) -> Any:
        dt = self._dtype()
        if dt.kind == "f":
            return -np.inf if self.sign > 0 else np.inf
        info = np.iinfo(dt)
        return info.min if self.sign > 0 else info.max

    def _pick(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.maximum(a, b) if self.sign > 0 else np.minimum(a, b)

    def new(self, shape: tuple[int, int], acc: np.dtype | None = None) -> State:
        full = (*self.lead, *shape)
        return {"val": np.full(full, self._identity(), self._dtype()), "hit": np.zeros(full, bool)}

    def add(self, state: State, batch: ChipBatch) -> None:
        h, w = batch.out.shape[-2:]
        for k, (r, c) in enumerate(batch.pos):
            sl = (..., slice(r, r + h), slice(c, c + w))
            out = batch.out[k].astype(self._dtype(), copy=False)
            mask = _pixel_mask(batch, k)
            if mask is not None:
                out = np.where(mask, out, self._identity())
                state["hit"][sl] |= mask
            else:
                state["hit"][sl] = True
            state["val"][sl] = self._pick(state["val"][sl], out)

    def merge(self, dst: State, src: State, dst_sl: Slices, src_sl: Slices) -> None:
        d, s = (..., *dst_sl), (..., *src_sl)
        dst["val"][d] = self._pick(dst["val"][d], src["val"][s])
        dst["hit"][d] |= src["hit"][s]

    def finalize(self, state: State) -> np.ndarray:
        return self._finish(state["val"], state["hit"])


class Max(Extreme):
    """Maximum over chips."""

    name = "max"
    sign = 1


class Min(Extreme):
    """Minimum over chips."""

    name = "min"
    sign = -1


class Vote(Aggregator):
    """Hard majority vote over integer labels in ``[0, n_classes)``."""

    name = "vote"
    categorical = True
    sum_keys = ("count", "wsum")

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        if self.n_classes is None or int(self.n_classes) < 1:
            raise ParameterError("agg='vote' needs n_classes=<number of classes> (>= 1)")
        self.k = int(self.n_classes)

    def result_dtype(self) -> np.dtype:
        return self.op_dtype if self.op_dtype.kind in "iu" else _label_dtype(self.k)

    def new(self, shape: tuple[int, int], acc: np.dtype | None = None) -> State:
        full = (self.k, *self.lead, *shape)
        # float64 weight sums of 12-bit window weights are exact: ties stay exact ties,
        # whatever the chunking (float32 rounding would break them differently per block)
        return {"count": np.zeros(full, np.float32), "wsum": np.zeros(full, np.float64)}

    def add(self, state: State, batch: ChipBatch) -> None:
        h, w = batch.out.shape[-2:]
        for k, (r, c) in enumerate(batch.pos):
            sl = (..., slice(r, r + h), slice(c, c + w))
            lab = batch.out[k]
            mask = _pixel_mask(batch, k)
            check = lab if mask is None else lab[mask]
            if check.size and (check.min() < 0 or check.max() >= self.k):
                raise OperatorError(
                    f"agg='vote' got label values in [{check.min()}, {check.max()}] "
                    f"outside [0, n_classes={self.k}); raise n_classes or fix the operator"
                )
            wk = batch.weights[k]
            for cls in range(self.k):
                eq = lab == cls
                if mask is not None:
                    eq &= mask
                state["count"][cls][sl] += eq
                state["wsum"][cls][sl] += eq * wk

    def merge(self, dst: State, src: State, dst_sl: Slices, src_sl: Slices) -> None:
        for key in ("count", "wsum"):
            dst[key][(..., *dst_sl)] += src[key][(..., *src_sl)]

    def finalize(self, state: State) -> np.ndarray:
        count, wsum = state["count"], state["wsum"]
        top = count.max(axis=0)
        tie_break = np.where(count == top, wsum, -1.0)
        labels = np.argmax(tie_break, axis=0)
        return self._finish(labels, top > 0)


class Centre(Aggregator):
    """Each pixel from the chip whose centre is nearest (crop-the-borders stitching)."""

    name = "centre"
    weighted = False
    picks = True
    MISSING: ClassVar[int] = np.iinfo(np.int64).min

    def __init__(self, *, n_chips: int = 1, **kw: Any) -> None:
        super().__init__(**kw)
        self.n_chips = int(n_chips)

    def new(self, shape: tuple[int, int], acc: np.dtype | None = None) -> State:
        # one score per element: validity is per band, so each band picks its own chip
        full = (*self.lead, *shape)
        return {
            "score": np.full(full, self.MISSING, np.int64),
            "val": np.zeros(full, self.op_dtype),
        }

    def _score(self, h: int, w: int, chip_id: int) -> np.ndarray:
        # doubled offsets keep the half-pixel centre of even chips integral
        dy = 2 * np.arange(h, dtype=np.int64) - (h - 1)
        dx = 2 * np.arange(w, dtype=np.int64) - (w - 1)
        dist = dy[:, None] ** 2 + dx[None, :] ** 2
        return -(dist * self.n_chips) - chip_id

    def add(self, state: State, batch: ChipBatch) -> None:
        h, w = batch.out.shape[-2:]
        for k, (r, c) in enumerate(batch.pos):
            sl = (..., slice(r, r + h), slice(c, c + w))
            score = np.broadcast_to(self._score(h, w, int(batch.chip_ids[k])), batch.out[k].shape)
            mask = _pixel_mask(batch, k)
            if mask is not None:
                score = np.where(mask, score, self.MISSING)
            better = score > state["score"][sl]
            state["score"][sl] = np.where(better, score, state["score"][sl])
            state["val"][sl] = np.where(better, batch.out[k], state["val"][sl])

    def merge(self, dst: State, src: State, dst_sl: Slices, src_sl: Slices) -> None:
        d, s = (..., *dst_sl), (..., *src_sl)
        better = src["score"][s] > dst["score"][d]
        dst["score"][d] = np.where(better, src["score"][s], dst["score"][d])
        dst["val"][d] = np.where(better, src["val"][s], dst["val"][d])

    def finalize(self, state: State) -> np.ndarray:
        return self._finish(state["val"], state["score"] > self.MISSING)


class Sum(_Summing):
    """Plain per-pixel sum of the op outputs of every chip covering it (e.g. counts).

    ``num`` holds the sums, ``cnt`` how many valid chip outputs reached each element (a
    pixel none reached is invalid). Like :class:`OverlapAdd` the sums are float64 where
    the outputs are whole numbers, so counts come out exact.
    """

    name = "sum"
    weighted = False
    sum_keys = ("num", "cnt")

    def new(self, shape: tuple[int, int], acc: np.dtype | None = None) -> State:
        full = (*self.lead, *shape)
        # float64 counts: exact far beyond any realistic overlap, and sum_shape's dtype
        return {"num": np.zeros(full, acc or self.acc), "cnt": np.zeros(full, np.float64)}

    def _term(self, batch: ChipBatch, k: int, acc: np.dtype) -> np.ndarray:
        """Chip ``k``'s contribution (its output; window-weighted in :class:`WeightedSum`)."""
        return batch.out[k]

    def add(self, state: State, batch: ChipBatch) -> None:
        num, cnt = state["num"], state["cnt"]
        h, w = batch.out.shape[-2:]
        for k, (r, c) in enumerate(batch.pos):
            sl = (..., slice(r, r + h), slice(c, c + w))
            term = self._term(batch, k, num.dtype)
            mask = _pixel_mask(batch, k)
            if mask is None:
                num[sl] += term
                cnt[sl] += 1
            else:
                num[sl] += np.where(mask, term, 0)
                cnt[sl] += mask

    def merge(self, dst: State, src: State, dst_sl: Slices, src_sl: Slices) -> None:
        for key in ("num", "cnt"):
            dst[key][(..., *dst_sl)] += src[key][(..., *src_sl)]

    def finalize(self, state: State) -> np.ndarray:
        ok = state["cnt"] > 0
        return self._finish(np.where(ok, state["num"], 0), ok)


class WeightedSum(Sum):
    """Per-pixel ``sum(w * out)`` over the chips covering it (``w`` = window)."""

    name = "weighted_sum"
    weighted = True

    def _term(self, batch: ChipBatch, k: int, acc: np.dtype) -> np.ndarray:
        if batch.unit_weights:
            return batch.out[k]
        # float64 products of whole numbers and the fixed-point window weights are exact
        return np.multiply(batch.out[k], batch.weights[k], dtype=acc)


def _axis_cores(
    starts: np.ndarray, profiles: list[np.ndarray], extent: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Along one axis of a chip grid: the per-coordinate sum of the chips' weight profiles
    and each chip's core ``[lo, hi)``, the coordinates where it weighs most (ties: the
    first chip). ``None`` when a core is not one interval inside its chip."""
    size = len(profiles[0])
    weight = np.full((len(starts), extent), -np.inf)
    for i, (start, profile) in enumerate(zip(starts, profiles, strict=True)):
        weight[i, start : start + size] = profile
    owner = np.argmax(weight, axis=0)
    covered = np.isfinite(weight.max(axis=0))
    cores = np.zeros((len(starts), 2), np.int64)
    for i, start in enumerate(starts):
        where = np.flatnonzero(covered & (owner == i))
        if where.size == 0:
            cores[i] = (start, start)
            continue
        lo, hi = int(where[0]), int(where[-1]) + 1
        if hi - lo != where.size or lo < start or hi > start + size:
            return None
        cores[i] = (lo, hi)
    total = np.where(np.isfinite(weight), weight, 0.0).sum(axis=0)
    return total, cores


@dataclass(frozen=True)
class _GridCores:
    """The chips of one fold as a grid with a separable window: every chip's *core* (the
    elements where it is the heaviest chip) and the per-axis weight sums.

    With ``weights[k] = wy_i ⊗ wx_j`` (grid row ``i``, column ``j``), the heaviest chip at
    ``(y, x)`` is the one heaviest along y times the one heaviest along x, so cores are
    products of 1-D intervals, found from per-axis profiles in ``O(chips × extent)``.
    """

    rows: dict[int, tuple[int, int]]
    cols: dict[int, tuple[int, int]]
    sum_y: np.ndarray
    sum_x: np.ndarray
    scale: float

    @classmethod
    def find(
        cls, stash: list[ChipBatch], masks: list[list[np.ndarray | None]]
    ) -> _GridCores | None:
        """The cores of the stashed chips, or ``None`` when they are not a full grid of
        distinct positions with a separable window, every element valid."""
        if not all((b.separable or b.unit_weights) and not b.failed for b in stash):
            return None
        if any(m is not None for batch_masks in masks for m in batch_masks):
            return None
        shapes = {b.out.shape[1:] for b in stash}
        if len(shapes) != 1:
            return None
        h, w = next(iter(shapes))[-2:]
        weight_of: dict[tuple[int, int], np.ndarray] = {}
        for batch in stash:
            for k, (r, c) in enumerate(batch.pos):
                weight_of[(int(r), int(c))] = batch.weights[k]
        n = sum(len(b.pos) for b in stash)
        ys = np.unique([rc[0] for rc in weight_of])
        xs = np.unique([rc[1] for rc in weight_of])
        if len(weight_of) != n or n != len(ys) * len(xs):
            return None
        corner = weight_of[(int(ys[0]), int(xs[0]))]
        scale = float(corner.max())
        if not scale > 0:
            return None
        # w_ij = wy_i ⊗ wx_j: row maxima of w_i0 are wy_i · max(wx_0), column maxima of
        # w_0j are wx_j · max(wy_0), and max(w_00) = max(wy_0) · max(wx_0)
        py = [np.asarray(weight_of[(int(y), int(xs[0]))], np.float64).max(axis=1) for y in ys]
        px = [np.asarray(weight_of[(int(ys[0]), int(x))], np.float64).max(axis=0) for x in xs]
        along_y = _axis_cores(ys, py, int(ys[-1]) + h)
        along_x = _axis_cores(xs, px, int(xs[-1]) + w)
        if along_y is None or along_x is None:
            return None
        rows = {int(y): (int(a), int(b)) for y, (a, b) in zip(ys, along_y[1], strict=True)}
        cols = {int(x): (int(a), int(b)) for x, (a, b) in zip(xs, along_x[1], strict=True)}
        return cls(rows, cols, along_y[0], along_x[0], scale)

    def core(self, r: int, c: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """The core of the chip at ``(r, c)``: ``((y0, y1), (x0, x1))``, maybe empty."""
        return self.rows[r], self.cols[c]

    def axes(self, shape: tuple[int, ...], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        """``W = Σ w`` over the chips as per-axis factors ``(wy, wx)``, ``W = wy ⊗ wx`` (the
        window's geometry, like ``overlap_add``'s denominator); 0 past the chips' extent."""
        wy, wx = np.zeros(shape[-2], dtype), np.zeros(shape[-1], dtype)
        hy, hx = min(len(self.sum_y), len(wy)), min(len(self.sum_x), len(wx))
        wy[:hy] = self.sum_y[:hy]
        wx[:hx] = self.sum_x[:hx] / self.scale
        return wy, wx


def _row_runs(batch: ChipBatch) -> Iterator[tuple[int, int, int]]:
    """Runs ``[k0, k1)`` of a batch's consecutive chips in one grid row, sharing one
    window, at a constant column ``step > 0`` (``step`` is the chips' width for a run of
    one): their overlaps are the same rectangles shifted by ``step`` (:func:`_run_frame`)."""
    pos, n = batch.pos, len(batch.pos)
    w = int(batch.out.shape[-1])
    k = 0
    while k < n:
        end, step = k + 1, 0
        while end < n and pos[end][0] == pos[k][0] and batch.weights[end] is batch.weights[k]:
            gap = int(pos[end][1] - pos[end - 1][1])
            if gap <= 0 or (step and gap != step):
                break
            step, end = gap, end + 1
        yield k, end, step or w
        k = end


def _run_frame(
    batch: ChipBatch, k0: int, k1: int, step: int, cores: _GridCores
) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Chip-relative rectangles covering every run chip's overlaps (its chip minus its
    core), each at most ``step`` wide, so one rectangle's copies in the run's chips never
    meet. They are the frame around the intersection of the run's cores: where that is
    larger than a chip's own frame it lies in the chip's own core, whose deviations from
    the shift (the chip's own values) are exactly 0."""
    h, w = (int(v) for v in batch.out.shape[-2:])
    r = int(batch.pos[k0][0])
    y0, y1 = (v - r for v in cores.rows[r])
    x0 = max(cores.cols[int(c)][0] - int(c) for c in batch.pos[k0:k1, 1])
    x1 = min(cores.cols[int(c)][1] - int(c) for c in batch.pos[k0:k1, 1])
    if y0 >= y1:  # no core: the whole chip is frame
        y0 = y1 = h
    if x0 >= x1:
        x0 = x1 = w

    def split(a: int, b: int) -> list[tuple[int, int]]:
        return [(x, min(b, x + step)) for x in range(a, b, step)]

    bands = [((0, y0), split(0, w)), ((y1, h), split(0, w))]
    bands.append(((y0, y1), split(0, x0) + split(x1, w)))
    return [(ys, xs) for ys, parts in bands if ys[0] < ys[1] for xs in parts]


def _run_view(
    plane: np.ndarray, y: int, x: int, rows: int, n: int, step: int, width: int
) -> np.ndarray:
    """``(..., rows, n, width)`` view of ``plane``: ``n`` rectangles of ``rows × width``
    at ``(y, x + i step)`` (disjoint: ``width <= step``), the layout of a run's chips."""
    base = plane[..., y:, x:]
    *lead, row, col = base.strides
    return np.lib.stride_tricks.as_strided(
        base,
        shape=(*plane.shape[:-2], rows, n, width),
        strides=(*lead, row, step * col, col),
        writeable=True,
    )


class MeanStd(_FloatResult):
    """Window-weighted mean and standard deviation over the chips covering each pixel.

    The std is the weighted population one, ``sqrt(sum(w (x - mean)^2) / sum(w))``. A
    block's chips are kept (up to :data:`STASH_BYTES` of outputs at a time) and folded in
    two passes: pass 1 sums ``W = sum(w)`` and takes as shift ``a`` the value of the chip
    with the largest window weight at each element; pass 2 sums the deviations
    ``S1 = sum(w (x - a))`` and ``S2 = sum(w (x - a)^2)``; then ``mean = a + S1/W`` and
    ``M2 = S2 - S1^2/W``. The shift is a value of the data near the mean, so nothing
    cancels: a small signal on a large offset (1e4 + 1e-2 noise) keeps its spread, an
    outlier chip with a tiny window weight costs no precision, and identical chips give a
    std of exactly 0. The passes run in the outputs' float32 (float64 for integer and
    float64 outputs). The folded state is ``(W, shift, dev, M2)`` with the mean held as
    ``shift + dev`` (``dev = S1/W``): the shift is a value of the data and ``dev`` a
    small deviation, so the pair carries the mean as precisely as a float64 would, at
    the sums' width; states merge with Chan's pairwise formula, the means' difference
    taken as ``(shift_b - shift_a) + (dev_b - dev_a)`` (nearby values subtract exactly).

    On a grid with a separable window and every element valid (``apply``'s usual case)
    the heaviest chip is known from geometry: each chip is heaviest on its *core*, a
    rectangle found from the per-axis window profiles (:class:`_GridCores`). Pass 1 then
    only copies each core into the shift, and pass 2 skips the cores, where the
    deviations are exactly 0 — it sums the overlaps only (for 256/192 chips, 44 % of each
    chip), for a run of a grid row's chips at once (:func:`_row_runs`: a few large array
    operations per run, where small ones per chip would hold the GIL) — and float32
    ``W`` comes from the per-axis sums like ``overlap_add``'s denominator, kept as its
    two factors (``w`` is ``None``, ``W = dy ⊗ dx``) until a merge needs it whole.
    Chips that are not such a grid, or see invalid elements, take the general two
    passes; both give the same shift. An output block is finished from the partials in
    place (:meth:`Aggregator._cells`): only the strips two or more of them reach are
    merged into small new states.

    A fold leaves its state *raw* (``raw`` is True): ``dev`` and ``m2`` still hold
    ``S1`` and ``S2``. The result is read from raw sums directly, in the pass that writes
    the pixels (:meth:`_moments`), and a merge reads a raw source's strip as ``(dev,
    M2)`` without changing it (:meth:`_parts`); only a state merged into is settled in
    place first (:meth:`_settle`) — a later fold's. So a block's sums are not rewritten
    once more between the fold and the result. Raw and settled states give the same bits.

    The result gets a leading axis of size 2: ``[mean, std]``. The merge is not a plain
    sum, so this aggregation cannot accumulate across passes.
    """

    name = "mean_std"
    stat_names = ("mean", "std")
    in_place_cells = True
    KEYS: ClassVar[tuple[str, ...]] = ("w", "shift", "dev", "m2")

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        narrow = self.op_dtype.kind == "f" and self.op_dtype.itemsize <= 4
        #: the dtype of the two passes and of ``W`` (float32 sums of float32 outputs round
        #: at the outputs' own resolution)
        self.acc = np.dtype(np.float32) if narrow else np.dtype(np.float64)

    def result_lead(self) -> tuple[int, ...]:
        return (2, *self.lead)

    def new(self, shape: tuple[int, int], acc: np.dtype | None = None) -> State:
        full = (*self.lead, *shape)
        # the mean is kept as shift + dev, two arrays of the sums' dtype: the shift is a
        # value of the data, dev = S1/W is small, so their sum carries the mean to the
        # precision of a float64 one without a block-sized float64 array
        state = {key: np.zeros(full, self.acc) for key in self.KEYS if key != "w"}
        return state | {"w": self._no_weight(full), "_stash": []}

    def _no_weight(self, shape: tuple[int, ...]) -> np.ndarray:
        """``W = 0`` everywhere as a read-only view of one zero: a grid's fold replaces
        it by ``W``'s per-axis factors, so a block-sized zeroed array would be fresh
        memory touched for nothing (:meth:`_explicit` makes a real one before a write)."""
        return np.broadcast_to(np.zeros((), self.acc), shape)

    def add(self, state: State, batch: ChipBatch) -> None:
        stash = state.setdefault("_stash", [])
        stash.append(batch)
        if sum(b.out.nbytes for b in stash) >= STASH_BYTES:
            self._fold(state)

    def seal(self, state: State, dy: np.ndarray | None, dx: np.ndarray | None) -> State:
        self._fold(state)
        return state

    def _fold(self, state: State) -> None:
        """Fold the kept chips into ``(W, shift, dev, M2)`` with the two passes (above)."""
        stash: list[ChipBatch] = state.pop("_stash", [])
        state["_stash"] = []
        if not stash:
            return
        shape = state["shift"].shape
        first = not state.get("_folded")
        # the first fold writes into the state's own (zeroed) arrays; later ones into
        # new zeroed arrays (W as read-only zeros until written), merged into the state
        # below
        part: State = {
            key: state[key] if first else np.zeros(shape, self.acc)
            for key in self.KEYS
            if key != "w"
        }
        part["w"] = state["w"] if first else self._no_weight(shape)
        masks = [_batch_masks(batch) for batch in stash]
        cores = _GridCores.find(stash, masks)
        if cores is not None:
            self._deviations_by_cores(stash, cores, part)
        else:
            self._deviations_by_weight(stash, masks, part)
        if first:  # the state's own arrays were filled (W maybe as its factors)
            state.update(part)
            state["_folded"] = True
            state["raw"] = True
            return
        part["raw"] = True  # (merge settles the state it merges into)
        whole = (slice(None), slice(None))
        self.merge(state, part, whole, whole)

    def _settle(self, state: State) -> None:
        """Turn a raw state's sums (``dev`` = S1, ``m2`` = S2) into ``dev = S1/W`` and
        ``M2 = S2 - W dev^2`` in place, a few rows at a time (the five steps run on rows
        still in cache). Only a state about to be merged into needs it: the result reads
        raw sums directly (:meth:`_moments`), and merges read raw sources (:meth:`_parts`)."""
        if not state.pop("raw", False):
            return
        masked = not self._weighted_everywhere(state)  # (a masked divide is much slower)
        scratch: np.ndarray | None = None
        for y in range(0, state["dev"].shape[-2], _ROWS):
            rows = slice(y, y + _ROWS)
            dev, m2 = state["dev"][..., rows, :], state["m2"][..., rows, :]
            if scratch is None or scratch.shape != dev.shape:
                scratch = np.empty(dev.shape, dev.dtype)
            w = self._weights(state, rows)
            self._resolve(dev, m2, w, dev, m2, masked=masked, scratch=scratch)

    @staticmethod
    def _resolve(
        s1: np.ndarray,
        s2: np.ndarray,
        w: np.ndarray,
        dev: np.ndarray,
        m2: np.ndarray,
        *,
        masked: bool,
        scratch: np.ndarray | None = None,
    ) -> None:
        """``dev = S1/W`` and ``M2 = max(S2 - W dev^2, 0)`` into ``dev`` and ``m2`` (which
        may be ``s1`` and ``s2`` themselves): the one formula every reader of raw sums
        uses, so they agree to the bit. ``masked``: W may be 0 somewhere, where dev and M2
        become 0 (unmasked, such elements are left for the caller to set). ``scratch``:
        memory of ``dev``'s shape for ``W dev^2`` (else allocated)."""
        if masked:
            ok = np.broadcast_to(w > 0, dev.shape)
            np.divide(s1, w, out=dev, where=ok)
            dev[~ok] = 0
        else:
            np.divide(s1, w, out=dev)
        square = np.multiply(dev, dev, out=scratch)
        square *= w
        np.subtract(s2, square, out=m2)
        np.maximum(m2, 0, out=m2)

    @staticmethod
    def _weights(state: State, rows: slice = _ALL, cols: slice = _ALL) -> np.ndarray:
        """``W`` over ``rows`` × ``cols``: the state's array, or the outer product of its
        per-axis factors ``dy ⊗ dx`` when ``W`` is a grid's geometry (see ``_fold``)."""
        w = state["w"]
        if w is not None:
            out: np.ndarray = w[..., rows, cols]
            return out
        return np.multiply.outer(state["dy"][rows], state["dx"][cols])

    @staticmethod
    def _weighted_everywhere(state: State) -> bool:
        """Whether ``W > 0`` at every element."""
        if state["w"] is None:
            return bool((state["dy"] > 0).all() and (state["dx"] > 0).all())
        return bool(state["w"].min(initial=1) > 0)

    def _explicit(self, state: State) -> None:
        """Give a state whose ``W`` is a product of factors, or the read-only zeros of
        :meth:`_no_weight`, an explicit ``W`` array it can write to."""
        if state["w"] is None:
            w = np.broadcast_to(self._weights(state), state["shift"].shape)
            state["w"] = w.astype(state["shift"].dtype, copy=True)
            del state["dy"], state["dx"]
        elif not state["w"].flags.writeable:
            state["w"] = np.zeros(state["shift"].shape, state["shift"].dtype)

    def _deviations_by_cores(self, stash: list[ChipBatch], cores: _GridCores, part: State) -> None:
        """``W``, the shift and the deviation sums into ``part`` (zeroed) when the chips
        tile a grid (see :class:`_GridCores`): the shift is the value of the chip whose
        core holds the element — the heaviest chip there — so deviations inside a chip's
        own core are exactly 0 and only the rest of each chip (its overlaps) is summed."""
        acc = self.acc
        # float32 sums: W from the window's geometry (as overlap_add's denominator), as
        # exact as summing the chips' float32 weights, kept as its two per-axis factors
        # (no block-sized array); float64 sums: summed, to the bit
        exact = acc == np.float64
        if exact:
            self._explicit(part)
        total, shift, s1, s2 = (part[key] for key in self.KEYS)
        if not exact:
            part["w"] = None
            part["dy"], part["dx"] = cores.axes(shift.shape, acc)
        for batch in stash:
            h, w = batch.out.shape[-2:]
            for k, (r, c) in enumerate(batch.pos):
                (y0, y1), (x0, x1) = cores.core(int(r), int(c))
                shift[..., y0:y1, x0:x1] = batch.out[k][..., y0 - r : y1 - r, x0 - c : x1 - c]
                if exact:
                    total[..., r : r + h, c : c + w] += batch.weights[k]
        # the overlaps, a run of a grid row's chips at a time (see _row_runs): a few
        # large ufunc calls per run instead of four rectangles per chip, because calls on
        # small strips hold the GIL for most of their time and stall the other threads
        for batch in stash:
            for k0, k1, step in _row_runs(batch):
                r, c0 = (int(v) for v in batch.pos[k0])
                wk = batch.weights[k0]
                for (ya, yb), (xa, xb) in _run_frame(batch, k0, k1, step, cores):
                    rows, n, width = yb - ya, k1 - k0, xb - xa
                    src = np.moveaxis(batch.out[k0:k1, ..., ya:yb, xa:xb], 0, -2)
                    at = (r + ya, c0 + xa, rows, n, step, width)
                    dev = np.subtract(src, _run_view(shift, *at), dtype=acc, casting="unsafe")
                    term = dev * wk[ya:yb, xa:xb][:, None, :]
                    sum1, sum2 = _run_view(s1, *at), _run_view(s2, *at)
                    sum1 += term
                    term *= dev
                    sum2 += term

    def _deviations_by_weight(
        self, stash: list[ChipBatch], masks: list[list[np.ndarray | None]], part: State
    ) -> None:
        """``W``, the shift and the deviation sums into ``part`` (zeroed) for any chips:
        the shift is, per element, the value of the chip with the largest weight there (a
        first pass over every chip finds it; a value of the data, so identical chips give
        exactly 0)."""
        acc = self.acc
        self._explicit(part)
        total, shift, s1, s2 = (part[key] for key in self.KEYS)
        heaviest = np.zeros(total.shape, np.float32)
        chips = []
        for batch, batch_masks in zip(stash, masks, strict=True):
            h, w = batch.out.shape[-2:]
            for k, (r, c) in enumerate(batch.pos):
                sl = (..., slice(r, r + h), slice(c, c + w))
                out, wk = batch.out[k], batch.weights[k]
                mask = batch_masks[k]
                if mask is not None:
                    wk = np.where(mask, wk, np.float32(0))
                    out = np.where(mask, out, 0)
                chips.append((sl, out, wk))
                total[sl] += wk
                better = np.broadcast_to(wk, out.shape) > heaviest[sl]
                np.copyto(shift[sl], out, where=better, casting="unsafe")
                np.copyto(heaviest[sl], np.broadcast_to(wk, out.shape), where=better)
        # pass 2: deviations from the shift. The heaviest chip has at least 1/K of the
        # weight, so the shift is within sqrt(K) standard deviations of the mean and the
        # correction in _fold loses at most ~K ulps (a first-come shift could be an outlier
        # with a tiny weight, far outside)
        dev: np.ndarray | None = None
        term: np.ndarray | None = None
        for sl, out, wk in chips:
            if dev is None or term is None or dev.shape != out.shape:
                dev, term = np.empty(out.shape, acc), np.empty(out.shape, acc)
            np.subtract(out, shift[sl], out=dev, dtype=acc, casting="unsafe")
            np.multiply(dev, wk, out=term)
            s1[sl] += term
            term *= dev
            s2[sl] += term

    def _parts(self, state: State, sl: Slices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(shift, dev, M2)`` over ``sl`` of a state: views, or for a raw state new
        arrays computed from its sums (the state is only read)."""
        s = (..., *sl)
        shift, dev, m2 = (state[key][s] for key in ("shift", "dev", "m2"))
        if not state.get("raw"):
            return shift, dev, m2
        s1, s2 = dev, m2
        dev, m2 = np.empty(s1.shape, s1.dtype), np.empty(s2.shape, s2.dtype)
        self._resolve(s1, s2, self._weights(state, *sl), dev, m2, masked=True)
        return shift, dev, m2

    def merge(self, dst: State, src: State, dst_sl: Slices, src_sl: Slices) -> None:
        d = (..., *dst_sl)
        self._settle(dst)  # (only a fold's own state is ever raw and merged into)
        self._explicit(dst)
        wa = dst["w"][d]
        wb = self._weights(src, *src_sl)
        shift_b, dev_b, m2_b = self._parts(src, src_sl)
        if not wa.any():  # nothing here yet (e.g. the block's own partial): take src
            dst["w"][d] = wb
            for key, value in zip(("shift", "dev", "m2"), (shift_b, dev_b, m2_b), strict=True):
                dst[key][d] = value
            return
        total = wa + wb
        # where nothing is here yet take src's shift (dev and M2 are 0 there), so dev stays
        # a small deviation instead of becoming the whole mean
        if not bool(wa.min() > 0):
            np.copyto(dst["shift"][d], shift_b, where=wa == 0)
        # the means' difference from the shifts' (exact for nearby values: Sterbenz)
        # and the devs' (small): no rounding at the data's magnitude
        delta = shift_b - dst["shift"][d]
        delta += dev_b
        delta -= dst["dev"][d]
        if bool(total.min() > 0):  # (a masked divide is much slower)
            frac = np.divide(wb, total)
        else:
            frac = np.divide(wb, total, out=np.zeros(total.shape, total.dtype), where=total > 0)
        # Chan et al.: M2 += M2_src + delta² wa frac, evaluated in place in that order
        term = delta * delta
        term *= wa
        term *= frac
        term += m2_b
        dst["m2"][d] += term
        delta *= frac
        dst["dev"][d] += delta
        dst["w"][d] = total

    def _view(self, state: State, rows: slice, cols: slice) -> State:
        cell: State = {k: state[k][..., rows, cols] for k in ("shift", "dev", "m2")}
        cell["raw"] = state.get("raw", False)
        if state["w"] is None:  # W as factors stays factors
            cell.update(w=None, dy=state["dy"][rows], dx=state["dx"][cols])
        else:
            cell["w"] = state["w"][..., rows, cols]
        return cell

    def finalize(self, state: State) -> np.ndarray:
        if "_cells" not in state:
            self._fold(state)  # (a state used without seal: chips still kept)
        cells, shape = self._cells_of(state, "shift")
        full = (*self.lead, *shape)
        value = np.empty((2, *full), self.result_dtype())
        every = all(self._weighted_everywhere(cell) for _, cell in cells)
        ok = None if every else np.empty(full, bool)
        for (y0, y1, x0, x1), cell in cells:
            self._moments(cell, value[..., y0:y1, x0:x1])
            if ok is not None:
                ok[..., y0:y1, x0:x1] = self._weights(cell) > 0
        if ok is None:
            return self._finish(value, None)
        value[:, ~ok] = 0
        return self._finish(value, np.broadcast_to(ok, value.shape))

    def _moments(self, state: State, out: np.ndarray) -> None:
        """``out[0] = shift + dev`` (the mean) and ``out[1] = sqrt(M2 / W)`` (the std) of
        a folded state, a few rows at a time (no block-sized temporary; the state is only
        read). A raw state (``dev`` = S1, ``m2`` = S2, see :meth:`_fold`) gives ``dev =
        S1/W`` and ``M2 = S2 - W dev^2`` here, clamped at 0, as :meth:`_settle` would; a
        settled one has ``M2 >= 0`` (each fold clamps, merges add non-negative terms).
        Where W is 0 the caller sets the result."""
        m2 = state["m2"]
        raw = bool(state.get("raw"))
        direct = out.dtype == m2.dtype
        dev: np.ndarray | None = None
        square: np.ndarray | None = None
        tmp: np.ndarray | None = None
        with np.errstate(invalid="ignore", divide="ignore"):
            for y in range(0, m2.shape[-2], _ROWS):
                rows = (..., slice(y, y + _ROWS), slice(None))
                w = self._weights(state, rows[1])
                here = m2[rows].shape
                if direct:
                    std = out[1][rows]
                else:  # the sums' precision up to the square root, then the result's
                    if tmp is None or tmp.shape != here:
                        tmp = np.empty(here, m2.dtype)
                    std = tmp
                if raw:  # (W = 0 elements: set by the caller)
                    if dev is None or square is None or dev.shape != here:
                        dev, square = np.empty(here, m2.dtype), np.empty(here, m2.dtype)
                    s1 = state["dev"][rows]
                    self._resolve(s1, m2[rows], w, dev, std, masked=False, scratch=square)
                    np.add(state["shift"][rows], dev, out=out[0][rows], casting="unsafe")
                    std /= w
                else:
                    np.add(
                        state["shift"][rows], state["dev"][rows], out=out[0][rows], casting="unsafe"
                    )
                    np.divide(m2[rows], w, out=std)
                np.sqrt(std, out=std)
                if not direct:
                    out[1][rows] = std


class InverseVariance(_FloatResult):
    """Inverse-variance weighted merge of ``(mean, variance)`` chip outputs.

    The op returns the per-pixel mean and variance along its first output axis (size 2;
    e.g. MC dropout or an ensemble). Each chip's estimate ``x`` with variance ``v`` gets
    the weight ``a = w / v``, where ``w`` is the window weight (the window acts as a prior
    weight on the chip). The result replaces that axis by ``[mean, variance]``:

    * ``mean = sum(a x) / sum(a)``
    * ``variance = sum(w^2 / v) / sum(w / v)^2``, the variance of that weighted estimator
      when the chips' estimates are independent; with unit weights (boxcar window, or
      ``w = 1``) it is the classic ``1 / sum(1 / v)``.

    The state is three float64 sums (``sa = sum(w / v)``, ``sax = sum(w x / v)``,
    ``sb = sum(w^2 / v)``), so the merge is a plain sum and the aggregation can accumulate
    across passes (:func:`patchflow.run` ``mode="accumulate"``). A non-finite mean or
    variance makes that chip's contribution invalid (zero weight); a variance ``<= 0``
    where the mean is valid is an :class:`~patchflow.errors.OperatorError` (dividing by it
    would be silently wrong). Constant variance gives the overlap-add mean.

    ``n_loop`` leading axes of ``lead`` are looped dims (``over=``), not op outputs: the
    ``(mean, variance)`` axis is ``lead[n_loop]``.

    Examples
    --------
    >>> agg = make_aggregator("inverse_variance", out_dtype=np.dtype("float32"), lead=(2,))
    >>> agg.result_lead(), agg.stat_names
    ((2,), ('mean', 'variance'))
    """

    name = "inverse_variance"
    sum_keys = ("sa", "sax", "sb")
    stat_names = ("mean", "variance")
    in_place_cells = True

    def __init__(
        self,
        *,
        out_dtype: np.dtype,
        lead: tuple[int, ...],
        nodata: Any = None,
        n_classes: int | None = None,
        n_loop: int = 0,
    ) -> None:
        super().__init__(out_dtype=out_dtype, lead=lead, nodata=nodata, n_classes=n_classes)
        self.n_loop = int(n_loop)
        op_lead = self.lead[self.n_loop :]
        if not op_lead or op_lead[0] != 2:
            raise ParameterError(
                "agg='inverse_variance' needs the operator to return (mean, variance) along "
                f"its first output axis, got shape {(*op_lead, 'h', 'w')}; return "
                "np.stack([mean, variance]) per chip, or use agg='mean_std' to get the "
                "spread between chips instead"
            )
        #: the state's non-spatial shape: ``lead`` without the (mean, variance) axis
        self.rest = self.lead[: self.n_loop] + self.lead[self.n_loop + 1 :]

    def result_lead(self) -> tuple[int, ...]:
        # the (mean, variance) axis becomes the leading ``stat`` axis (before looped dims)
        return (2, *self.rest)

    def new(self, shape: tuple[int, int], acc: np.dtype | None = None) -> State:
        full = (*self.rest, *shape)
        return {key: np.zeros(full, np.float64) for key in self.sum_keys}

    def add(self, state: State, batch: ChipBatch) -> None:
        h, w = batch.out.shape[-2:]
        axis = self.n_loop
        for k, (r, c) in enumerate(batch.pos):
            sl = (..., slice(r, r + h), slice(c, c + w))
            out = batch.out[k]
            x = np.take(out, 0, axis=axis).astype(np.float64)
            v = np.take(out, 1, axis=axis).astype(np.float64)
            mask = _pixel_mask(batch, k)
            ok = None if mask is None else np.take(mask, 0, axis=axis) & np.take(mask, 1, axis)
            bad = v <= 0 if ok is None else (v <= 0) & ok
            if bad.any():
                where = tuple(int(i[0]) for i in np.nonzero(bad))
                raise OperatorError(
                    f"agg='inverse_variance': the operator returned a variance "
                    f"{float(v[where])!r} <= 0 at chip {int(batch.chip_ids[k])}, element {where}; "
                    "variance must be > 0 (it divides the weight); floor it, e.g. "
                    "np.maximum(var, 1e-12), or return NaN where it is unknown"
                )
            wk = batch.weights[k].astype(np.float64)
            if ok is None:
                a = wk / v
                state["sa"][sl] += a
                state["sax"][sl] += a * x
                state["sb"][sl] += a * wk
            else:
                with np.errstate(invalid="ignore", divide="ignore"):
                    a = np.where(ok, wk / np.where(ok, v, 1.0), 0.0)
                state["sa"][sl] += a
                state["sax"][sl] += a * np.where(ok, x, 0.0)
                state["sb"][sl] += a * wk

    def merge(self, dst: State, src: State, dst_sl: Slices, src_sl: Slices) -> None:
        for key in self.sum_keys:
            dst[key][(..., *dst_sl)] += src[key][(..., *src_sl)]

    def _view(self, state: State, rows: slice, cols: slice) -> State:
        return {k: state[k][..., rows, cols] for k in self.sum_keys}

    def to_sums(self, state: State) -> dict[str, np.ndarray]:
        if "_cells" not in state:
            return super().to_sums(state)
        sums = {k: np.empty((*self.rest, *state["_shape"]), np.float64) for k in self.sum_keys}
        for (y0, y1, x0, x1), cell in state["_cells"]:
            for key in self.sum_keys:
                sums[key][..., y0:y1, x0:x1] = cell[key]
        return sums

    def finalize(self, state: State) -> np.ndarray:
        cells, shape = self._cells_of(state, "sa")
        value = np.empty((2, *self.rest, *shape), self.result_dtype())
        ok: np.ndarray | None = None
        for (y0, y1, x0, x1), cell in cells:
            hit = self._quotients(cell, value[..., y0:y1, x0:x1])
            if hit is not None:
                if ok is None:
                    ok = np.ones(value.shape[1:], bool)
                ok[..., y0:y1, x0:x1] = hit
        if ok is None:
            return self._finish(value, None)
        value[:, ~ok] = 0
        return self._finish(value, np.broadcast_to(ok, value.shape))

    @staticmethod
    def _quotients(state: State, out: np.ndarray) -> np.ndarray | None:
        """``out[0] = sax / sa`` and ``out[1] = sb / sa²``, taken in float64 and rounded
        once to ``out``'s dtype, a few rows at a time (no block-sized float64 temporary);
        returns where ``sa > 0`` (``None``: everywhere; elsewhere ``out`` is arbitrary)."""
        sa, sax, sb = state["sa"], state["sax"], state["sb"]
        ok = None if bool(sa.min(initial=1) > 0) else sa > 0
        safe = sa if ok is None else np.where(ok, sa, 1.0)
        square: np.ndarray | None = None
        for y in range(0, sa.shape[-2], _ROWS):
            rows = (..., slice(y, y + _ROWS), slice(None))
            np.divide(sax[rows], safe[rows], out=out[0][rows], casting="unsafe")
            if square is None or square.shape != safe[rows].shape:
                square = np.empty(safe[rows].shape, np.float64)
            np.multiply(safe[rows], safe[rows], out=square)
            np.divide(sb[rows], square, out=out[1][rows], casting="unsafe")
        return ok

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return (*super().__dask_tokenize__(), self.n_loop)


class _Layered(Aggregator):
    """Exact order statistics: every valid chip value is kept, one layer per chip.

    The state is ``values`` — ``layers`` (``K``) layers ``(K, *lead, h, w)`` in the op's
    dtype (uint8 for bool) — and ``count``, how many layers of each element hold a value.
    :meth:`add` writes each chip's valid values into the next free layer of their
    elements; :meth:`merge` appends the source's layers after the destination's, element by
    element; :meth:`finalize` sorts the filled layers. ``K`` must be the most chips that
    cover one pixel (the caller computes it from the chip positions): a pixel receiving
    more values raises :class:`~patchflow.errors.LayerOverflowError` (nothing is ever
    overwritten), and ``K > MAX_LAYERS`` raises :class:`~patchflow.errors.CoverageError`.
    Memory per block: ``K × region pixels × prod(lead) × itemsize`` (+1 byte per element).
    Merging is exact (no arithmetic), so the result does not depend on chunking.
    """

    weighted = False

    def __init__(
        self,
        *,
        out_dtype: np.dtype,
        lead: tuple[int, ...],
        nodata: Any = None,
        n_classes: int | None = None,
        layers: int | None = None,
    ) -> None:
        super().__init__(out_dtype=out_dtype, lead=lead, nodata=nodata, n_classes=n_classes)
        if layers is None or isinstance(layers, bool) or not isinstance(layers, int | np.integer):
            raise ParameterError(
                f"agg={self.name!r} keeps one value per chip over a pixel and needs "
                f"layers=<the most chips covering one pixel> (an int), got {layers!r}"
            )
        if layers < 1:
            raise ParameterError(f"agg={self.name!r} needs layers >= 1, got {layers}")
        if layers > MAX_LAYERS:
            raise CoverageError(
                f"agg={self.name!r} keeps one value per chip over a pixel: up to {int(layers)} "
                f"chips cover one pixel here, more than the limit of {MAX_LAYERS} layers "
                f"(memory grows as layers × block pixels × itemsize); use a larger stride "
                f"(or fewer overlapping chips) so at most {MAX_LAYERS} chips cover a pixel, "
                f"or agg='overlap_add'"
            )
        self.layers = int(layers)

    def _dtype(self) -> np.dtype:
        return np.dtype(np.uint8) if self.op_dtype.kind == "b" else self.op_dtype

    def new(self, shape: tuple[int, int], acc: np.dtype | None = None) -> State:
        full = (*self.lead, *shape)
        # uint8 counts: MAX_LAYERS < 255
        return {
            "values": np.zeros((self.layers, *full), self._dtype()),
            "count": np.zeros(full, np.uint8),
        }

    def _overflow(self, got: int) -> LayerOverflowError:
        return LayerOverflowError(
            f"agg={self.name!r} was built with layers={self.layers} (the most chips over one "
            f"pixel) but a pixel received {got} values; the layers= bound passed to "
            "make_aggregator is wrong: compute it as the most chips covering one pixel"
        )

    def _append(
        self, values: np.ndarray, count: np.ndarray, new: np.ndarray, sel: np.ndarray | None
    ) -> None:
        """Write ``new`` into the next free layer of ``values`` where ``sel`` (all: None)."""
        if sel is None:
            top = int(count.max()) if count.size else 0
            if top >= self.layers:
                raise self._overflow(top + 1)
            np.put_along_axis(values, count[None].astype(np.intp), new[None], axis=0)
            count += np.uint8(1)
            return
        idx = count[sel].astype(np.intp)
        if idx.size and int(idx.max()) >= self.layers:
            raise self._overflow(int(idx.max()) + 1)
        values[(idx, *np.nonzero(sel))] = new[sel]
        count += sel

    def add(self, state: State, batch: ChipBatch) -> None:
        h, w = batch.out.shape[-2:]
        for k, (r, c) in enumerate(batch.pos):
            ys, xs = slice(r, r + h), slice(c, c + w)
            mask = _pixel_mask(batch, k)
            if mask is not None and not mask.any():
                continue
            sel = None if mask is None or bool(mask.all()) else np.asarray(mask)
            self._append(
                state["values"][:, ..., ys, xs], state["count"][..., ys, xs], batch.out[k], sel
            )

    def merge(self, dst: State, src: State, dst_sl: Slices, src_sl: Slices) -> None:
        dv, dc = dst["values"][(slice(None), ..., *dst_sl)], dst["count"][(..., *dst_sl)]
        sv, sc = src["values"][(slice(None), ..., *src_sl)], src["count"][(..., *src_sl)]
        top = int(sc.max()) if sc.size else 0
        if top == 0:
            return
        total = dc.astype(np.int64) + sc
        if int(total.max()) > self.layers:
            raise self._overflow(int(total.max()))
        for j in range(top):  # at most K passes, each vectorised over the region
            sel = sc > j
            self._append(dv, dc, sv[j], None if bool(sel.all()) else sel)

    def _sorted(self, state: State) -> tuple[np.ndarray, np.ndarray]:
        """The filled layers sorted ascending per element (free layers last), and counts."""
        count = state["count"]
        top = int(count.max()) if count.size else 0
        part = state["values"][:top]
        dt = part.dtype
        # free layers get a value no valid one exceeds (valid floats are finite)
        fill = np.inf if dt.kind == "f" else np.iinfo(dt).max
        free = np.arange(top).reshape(top, *(1,) * count.ndim) >= count[None]
        part = np.where(free, dt.type(fill), part)
        part.sort(axis=0)
        return part, count

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return (*super().__dask_tokenize__(), self.layers)


class Median(_FloatResult, _Layered):
    """Exact median of the valid chip values over each pixel (see :class:`_Layered`).

    An even count gives the mean of the two middle values, as :func:`numpy.median`; the
    result is a float: the op's dtype if float, else the float that holds its values.

    Examples
    --------
    >>> agg = make_aggregator("median", out_dtype=np.dtype("int16"), lead=(), layers=3)
    >>> state = agg.new((1, 1))
    >>> for v in (5, 1, 4):
    ...     agg.add(state, ChipBatch(np.array([[[v]]], np.int16), np.array([[0, 0]]),
    ...                              [np.ones((1, 1), np.float32)], None, np.array([0])))
    >>> agg.finalize(state)
    array([[4.]], dtype=float32)
    """

    name = "median"

    def finalize(self, state: State) -> np.ndarray:
        part, count = self._sorted(state)
        ok = count > 0
        dtype = self.result_dtype()
        if not part.shape[0]:
            return self._finish(np.zeros(count.shape, dtype), ok)
        n = np.maximum(count, 1).astype(np.intp)[None]
        lo = np.take_along_axis(part, (n - 1) // 2, axis=0)[0].astype(dtype)
        hi = np.take_along_axis(part, n // 2, axis=0)[0].astype(dtype)
        # as numpy.median: the two middle values added in the result dtype, halved
        with np.errstate(over="ignore", invalid="ignore"):
            value = (lo + hi) / 2
            huge = ~np.isfinite(value) & ok
            if huge.any():  # lo + hi overflowed: halve first
                value = np.where(huge, lo / 2 + hi / 2, value)
        return self._finish(np.where(ok, value, 0), ok)


class Mode(_Layered):
    """Most frequent valid chip value over each pixel (see :class:`_Layered`).

    Ties go to the smallest of the tied values. The result keeps the op's dtype (uint8
    for bool, so a pixel no chip reaches can hold a nodata value).

    Examples
    --------
    >>> agg = make_aggregator("mode", out_dtype=np.dtype("int16"), lead=(), layers=4)
    >>> state = agg.new((1, 1))
    >>> for v in (7, 3, 7, 3):
    ...     agg.add(state, ChipBatch(np.array([[[v]]], np.int16), np.array([[0, 0]]),
    ...                              [np.ones((1, 1), np.float32)], None, np.array([0])))
    >>> agg.finalize(state)
    array([[3]], dtype=int16)
    """

    name = "mode"
    categorical = True

    def result_dtype(self) -> np.dtype:
        return self._dtype()

    def finalize(self, state: State) -> np.ndarray:
        part, count = self._sorted(state)
        ok = count > 0
        best = np.zeros(count.shape, np.int64)
        run = np.zeros(count.shape, np.int64)
        value = np.zeros(count.shape, part.dtype)
        for j in range(part.shape[0]):
            run = run + 1 if j == 0 else np.where(part[j] == part[j - 1], run + 1, 1)
            # strictly longer only: on a tie the earlier (smaller, sorted) value stays
            better = (run > best) & (j < count)
            best = np.where(better, run, best)
            value = np.where(better, part[j], value)
        return self._finish(value, ok)


AGGREGATIONS: dict[str, type[Aggregator]] = {
    cls.name: cls
    for cls in (
        OverlapAdd,
        Mean,
        Max,
        Min,
        Vote,
        SoftVote,
        Centre,
        Sum,
        WeightedSum,
        MeanStd,
        InverseVariance,
        Median,
        Mode,
    )
}

#: aggregations that keep one value layer per chip and need ``layers=``
LAYERED_AGGS: tuple[str, ...] = ("median", "mode")


def check_vote_memory(
    n_classes: int, lead: tuple[int, ...], block: tuple[int, int], chip: tuple[int, int]
) -> None:
    """Refuse (:class:`~patchflow.errors.MemoryBudgetError`) a vote whose state for one
    ``block`` plus a chip's margin (12 bytes per class, band and pixel) would exceed
    :data:`VOTE_STATE_BYTES`; the message names the ``chunks=`` that would fit.

    Examples
    --------
    >>> check_vote_memory(20, (1,), (2048, 2048), (256, 256))  # 1.2 GiB: fine
    """
    by, bx = block
    need = 12 * n_classes * math.prod(lead) * (by + chip[0]) * (bx + chip[1])
    if need <= VOTE_STATE_BYTES:
        return
    fit = math.isqrt(VOTE_STATE_BYTES // (12 * n_classes * math.prod(lead))) - max(chip)
    hint = (
        f"pass {_w('chunks', value=max(fit // 2, 1) * 2)} (or smaller) to work on smaller blocks, "
        if fit >= max(chip)
        else ""
    )
    raise MemoryBudgetError(
        f"{_w('vote_classes', value=n_classes)} keeps a count and a weight sum per class "
        f"and pixel: {need / 2**30:.1f} GiB per {by}x{bx} block, over the "
        f"{VOTE_STATE_BYTES / 2**30:.0f} GiB limit; {hint}use {_w('agg_mode')} (the most "
        "frequent label, one layer per overlapping chip, whatever the number of classes), "
        "or relabel to fewer classes"
    )


def make_aggregator(
    agg: str,
    *,
    out_dtype: np.dtype,
    lead: tuple[int, ...],
    nodata: Any = None,
    n_classes: int | None = None,
    n_chips: int | None = None,
    layers: int | None = None,
    n_loop: int = 0,
) -> Aggregator:
    """Build the aggregator named ``agg`` (the one entry point; see the module table).

    Parameters
    ----------
    agg
        A name from :data:`AGGREGATIONS`.
    out_dtype, lead
        The op's output dtype and non-spatial output shape (looped dims first).
    nodata
        Fill for invalid pixels (usually set later with :meth:`Aggregator.set_nodata`).
    n_classes
        ``vote``: the number of classes.
    n_chips
        ``centre``: the number of chips (tie-break scores); ignored by the others.
    layers
        ``median``/``mode``: the most chips covering one pixel (at most
        :data:`MAX_LAYERS`); ignored by the others.
    n_loop
        ``inverse_variance``: how many leading ``lead`` axes are looped dims (``over=``),
        so the ``(mean, variance)`` axis is ``lead[n_loop]``; ignored by the others.

    Examples
    --------
    >>> make_aggregator("max", out_dtype=np.dtype("float32"), lead=(1,)).result_dtype()
    dtype('float32')
    >>> make_aggregator("median", out_dtype=np.dtype("uint8"), lead=(1,), layers=4).layers
    4
    """
    if not isinstance(agg, str) or agg not in AGGREGATIONS:
        raise ParameterError(f"unknown agg {agg!r}; valid names: {', '.join(sorted(AGGREGATIONS))}")
    cls = AGGREGATIONS[agg]
    common: dict[str, Any] = {
        "out_dtype": out_dtype,
        "lead": lead,
        "nodata": nodata,
        "n_classes": n_classes,
    }
    if issubclass(cls, Centre):
        return cls(n_chips=1 if n_chips is None else n_chips, **common)
    if issubclass(cls, _Layered):
        return cls(layers=layers, **common)
    if issubclass(cls, InverseVariance):
        return cls(n_loop=n_loop, **common)
    return cls(**common)
