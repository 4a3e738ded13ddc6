"""How chip outputs merge into pixels: partial states, merging, finalising. Pure numpy.

Each aggregation keeps a *partial state* per block region: a dict of numpy arrays whose
trailing two axes are the region's rows/cols. Partials are built chip by chip
(:meth:`Aggregator.add`), merged piecewise into output blocks (:meth:`Aggregator.merge`),
and turned into pixels once (:meth:`Aggregator.finalize`). Merging is associative and
commutative up to float rounding, so the result does not depend on chunking or on the
order tasks finish in.

============== ===================================================================
``agg``        what a pixel gets
============== ===================================================================
overlap_add    ``sum(w * out) / sum(w)`` over the chips covering it (``w`` = window)
mean           same with a boxcar window (unweighted mean)
max / min      the maximum / minimum over chips
vote           the most frequent integer label; ties go to the label with the higher
               summed window weight, then to the lower label
soft_vote      ``argmax`` over classes of the overlap-added class scores
centre         the value from the chip whose centre is nearest (ties: lower chip index)
============== ===================================================================

Invalid contributions (input NaN/nodata under the pixel, or a non-finite op output) carry
zero weight. A pixel nothing valid reaches comes out as NaN (floats) or ``nodata`` (ints).

The overlap-add denominator of a separable window on a regular grid depends on geometry
only: it is the outer product of per-axis weight sums. A partial whose chips saw no invalid
pixel stores just those 1-D sums (``dy``, ``dx``) instead of a full denominator array.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from patchflow.errors import OperatorError, ParameterError

__all__ = ["AGGREGATIONS", "Aggregator", "ChipBatch", "make_aggregator"]

State = dict[str, Any]
Slices = tuple[slice, slice]


@dataclass
class ChipBatch:
    """Op outputs for a batch of chips, with what the aggregators need to place them.

    ``out`` is ``(n, *lead, h, w)``; ``pos`` holds each chip's ``(row, col)`` inside the
    region; ``weights`` the per-chip 2-D window; ``valid`` the per-chip input validity
    ``(n, h, w)`` or ``None`` when every pixel is valid; ``chip_ids`` global chip indices.
    """

    out: np.ndarray
    pos: np.ndarray
    weights: list[np.ndarray]
    valid: np.ndarray | None
    chip_ids: np.ndarray


def _acc_dtype(dtype: np.dtype) -> np.dtype:
    """Accumulator: float32 unless the values need float64 to stay exact enough."""
    if dtype.itemsize >= 8 or (dtype.kind in "iu" and dtype.itemsize >= 4):
        return np.dtype(np.float64)
    return np.dtype(np.float32)


def _fill(dtype: np.dtype, nodata: Any) -> Any:
    if dtype.kind in "fc":
        return np.nan if nodata is None else nodata
    if nodata is None:
        raise ParameterError(f"an integer output ({dtype}) needs a nodata value")
    return nodata


def _pixel_mask(batch: ChipBatch, k: int) -> np.ndarray | None:
    """Per-element validity of chip ``k``'s output (input validity × finite output)."""
    out = batch.out[k]
    mask = None
    if batch.valid is not None:
        mask = np.broadcast_to(batch.valid[k], out.shape)
    if out.dtype.kind in "fc":
        finite = np.isfinite(out)
        if not finite.all():
            mask = finite if mask is None else (mask & finite)
    return mask


class Aggregator:
    """Base class: subclasses define the partial state and how it merges."""

    name: ClassVar[str]
    #: whether the window shapes the result (False: window ignored, e.g. max)
    weighted: ClassVar[bool] = True
    #: state arrays that add up across passes (empty: the aggregation cannot accumulate)
    sum_keys: ClassVar[tuple[str, ...]] = ()

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
        self.nodata = nodata
        self.n_classes = n_classes

    def result_dtype(self) -> np.dtype:
        """Dtype of the finalised output."""
        return self.op_dtype

    def result_lead(self) -> tuple[int, ...]:
        """Non-spatial shape of the finalised output."""
        return self.lead

    def new(self, shape: tuple[int, int]) -> State:  # pragma: no cover - abstract
        raise NotImplementedError

    def seal(self, state: State, dy: np.ndarray | None, dx: np.ndarray | None) -> State:
        """Finish a block's partial before it leaves the worker (see :class:`OverlapAdd`)."""
        return state

    def add(self, state: State, batch: ChipBatch) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def merge(self, dst: State, src: State, dst_sl: Slices, src_sl: Slices) -> None:
        raise NotImplementedError  # pragma: no cover - abstract

    def finalize(self, state: State) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_sums(self, state: State) -> dict[str, np.ndarray]:
        """The additive arrays of a merged state (to persist or to add to another pass)."""
        return {k: state[k] for k in self.sum_keys}

    def from_sums(self, sums: dict[str, np.ndarray]) -> State:
        """A merged state rebuilt from :meth:`to_sums` arrays."""
        return dict(sums)

    def sum_shape(self, key: str, shape: tuple[int, int]) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype of sum array ``key`` for a ``shape`` block."""
        value = self.new(shape)[key]
        if value is None:  # OverlapAdd's deferred denominator: same layout as num
            value = self.new(shape)["num"]
        return tuple(value.shape), value.dtype

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lead={self.lead}, dtype={self.op_dtype})"

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return (
            type(self).__name__,
            str(self.op_dtype),
            self.lead,
            repr(self.nodata),
            self.n_classes,
            getattr(self, "n_chips", None),
        )


class OverlapAdd(Aggregator):
    """Window-weighted mean: ``num / den``."""

    name = "overlap_add"
    sum_keys = ("num", "den")

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.acc = _acc_dtype(self.op_dtype)

    def result_dtype(self) -> np.dtype:
        return self.op_dtype if self.op_dtype.kind == "f" else self.acc

    def new(self, shape: tuple[int, int]) -> State:
        return {
            "num": np.zeros((*self.lead, *shape), self.acc),
            "den": None,
            "dy": np.zeros(shape[0], np.float64),
            "dx": np.zeros(shape[1], np.float64),
        }

    def _full_den(self, state: State) -> np.ndarray:
        """The explicit denominator of a merged (stitch-side) state."""
        if state["den"] is None:
            den2d = np.outer(state["dy"], state["dx"]).astype(self.acc)
            state["den"] = np.broadcast_to(den2d, state["num"].shape).copy()
        den: np.ndarray = state["den"]
        return den

    def add(self, state: State, batch: ChipBatch) -> None:
        num = state["num"]
        h, w = batch.out.shape[-2:]
        for k, (r, c) in enumerate(batch.pos):
            sl = (..., slice(r, r + h), slice(c, c + w))
            wk = batch.weights[k]
            mask = _pixel_mask(batch, k)
            if mask is None:
                num[sl] += batch.out[k] * wk
                if state["den"] is None:
                    # defer: if every chip stays valid the denominator is pure geometry
                    state.setdefault("_pending", []).append((r, c, wk))
                else:
                    state["den"][sl] += wk
            else:
                self._materialise(state)
                wm = np.where(mask, wk, np.float32(0))
                num[sl] += np.where(mask, batch.out[k], 0) * wm
                state["den"][sl] += wm

    def _materialise(self, state: State) -> None:
        """Replace the deferred (geometric) denominator by an explicit array."""
        if state["den"] is not None:
            return
        den = np.zeros(state["num"].shape, self.acc)
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
        den = self._full_den(dst)
        if src["den"] is None:
            den[(..., *dst_sl)] += np.outer(src["dy"][src_sl[0]], src["dx"][src_sl[1]])
        else:
            den[(..., *dst_sl)] += src["den"][(..., *src_sl)]

    def to_sums(self, state: State) -> dict[str, np.ndarray]:
        return {"num": state["num"], "den": self._full_den(state)}

    def normalised(self, state: State) -> tuple[np.ndarray, np.ndarray]:
        """``(num / den, den > 0)`` with zeros where nothing valid reached."""
        den = self._full_den(state)
        ok = den > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            value = np.where(ok, state["num"] / np.where(ok, den, 1), 0)
        return value, ok

    def finalize(self, state: State) -> np.ndarray:
        value, ok = self.normalised(state)
        dtype = self.result_dtype()
        fill = _fill(dtype, self.nodata)
        if dtype.kind in "iu":
            value = np.rint(value)
        return np.where(ok, value, fill).astype(dtype, copy=False)


class Mean(OverlapAdd):
    """Unweighted mean (overlap-add with a boxcar window)."""

    name = "mean"
    weighted = False


class SoftVote(OverlapAdd):
    """Overlap-add class scores (first output axis = classes), then ``argmax``."""

    name = "soft_vote"

    def result_lead(self) -> tuple[int, ...]:
        return self.lead[1:]

    def result_dtype(self) -> np.dtype:
        return _label_dtype(self.lead[0] if self.lead else 1)

    def finalize(self, state: State) -> np.ndarray:
        value, ok = self.normalised(state)
        labels = np.argmax(value, axis=0)
        fill = _fill(self.result_dtype(), self.nodata)
        return np.where(ok.all(axis=0), labels, fill).astype(self.result_dtype())


def _label_dtype(n_classes: int) -> np.dtype:
    for dt in (np.uint8, np.uint16, np.int32):
        if n_classes < np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.int64)


class Extreme(Aggregator):
    """Running max (or min) over the chips covering each pixel."""

    weighted = False
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

    def new(self, shape: tuple[int, int]) -> State:
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
        dt = self.result_dtype()
        return np.where(state["hit"], state["val"], _fill(dt, self.nodata)).astype(dt)


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
    sum_keys = ("count", "wsum")

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        if self.n_classes is None or int(self.n_classes) < 1:
            raise ParameterError("agg='vote' needs n_classes=<number of classes> (>= 1)")
        self.k = int(self.n_classes)

    def result_dtype(self) -> np.dtype:
        return self.op_dtype if self.op_dtype.kind in "iu" else _label_dtype(self.k)

    def new(self, shape: tuple[int, int]) -> State:
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
        dt = self.result_dtype()
        return np.where(top > 0, labels, _fill(dt, self.nodata)).astype(dt)


class Centre(Aggregator):
    """Each pixel from the chip whose centre is nearest (crop-the-borders stitching)."""

    name = "centre"
    weighted = False
    MISSING: ClassVar[int] = np.iinfo(np.int64).min

    def __init__(self, *, n_chips: int = 1, **kw: Any) -> None:
        super().__init__(**kw)
        self.n_chips = int(n_chips)

    def new(self, shape: tuple[int, int]) -> State:
        return {
            "score": np.full(shape, self.MISSING, np.int64),
            "val": np.zeros((*self.lead, *shape), self.op_dtype),
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
            sl = (slice(r, r + h), slice(c, c + w))
            score = self._score(h, w, int(batch.chip_ids[k]))
            mask = _pixel_mask(batch, k)
            if mask is not None:
                pix = mask.reshape(-1, h, w).all(axis=0)
                score = np.where(pix, score, self.MISSING)
            better = score > state["score"][sl]
            state["score"][sl] = np.where(better, score, state["score"][sl])
            state["val"][(..., *sl)] = np.where(better, batch.out[k], state["val"][(..., *sl)])

    def merge(self, dst: State, src: State, dst_sl: Slices, src_sl: Slices) -> None:
        s_score = src["score"][src_sl]
        better = s_score > dst["score"][dst_sl]
        dst["score"][dst_sl] = np.where(better, s_score, dst["score"][dst_sl])
        dst["val"][(..., *dst_sl)] = np.where(
            better, src["val"][(..., *src_sl)], dst["val"][(..., *dst_sl)]
        )

    def finalize(self, state: State) -> np.ndarray:
        dt = self.result_dtype()
        hit = state["score"] > self.MISSING
        return np.where(hit, state["val"], _fill(dt, self.nodata)).astype(dt)


AGGREGATIONS: dict[str, type[Aggregator]] = {
    cls.name: cls for cls in (OverlapAdd, Mean, Max, Min, Vote, SoftVote, Centre)
}


def make_aggregator(agg: str, **kw: Any) -> Aggregator:
    """Build the aggregator named ``agg``.

    Examples
    --------
    >>> make_aggregator("max", out_dtype=np.dtype("float32"), lead=(1,)).result_dtype()
    dtype('float32')
    """
    if not isinstance(agg, str) or agg not in AGGREGATIONS:
        raise ParameterError(f"unknown agg {agg!r}; valid names: {', '.join(sorted(AGGREGATIONS))}")
    cls = AGGREGATIONS[agg]
    if cls is not Centre:
        kw.pop("n_chips", None)
    return cls(**kw)
