"""Functions that run on dask workers: compute a block's chips, stitch an output block.

Everything here is top-level and picklable (threads, processes and dask.distributed run the
same code). Static configuration travels in frozen dataclasses, which dask passes through
untouched instead of scanning them for keys.

Failed chips (``on_error="mask"``/``"skip"``) travel as bookkeeping keys of a block's
partial state, next to the aggregation's arrays: ``_failed`` (their count), ``_errors``
(one plain-dict record per chip: index, scene and CRS bounds, exception type, message,
traceback) and, for ``"skip"``, ``_skip`` (each failed chip's footprint as an output-pixel
rectangle ``(y0, y1, x0, x1)`` in the partial's own coordinates). Count and records stay
with the block that owns the chip; footprints follow every spill-over slice and merge
(:func:`slice_state`, :func:`stitch_block`), so each output block knows which of its
pixels a skipped chip covered and sets them invalid after finalising
(:func:`mark_skipped`) — whatever the aggregation, including ones added later.
"""

from __future__ import annotations

import copy
import math
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any, overload

import numpy as np

from patchflow.engine.aggregate import Aggregator, ChipBatch, OverlapAdd, State
from patchflow.engine.nodata import check_collision, invalid_elements, is_value
from patchflow.engine.timing import phase
from patchflow.errors import ChipFailedWarning, OperatorError
from patchflow.plan.grid import window_bounds
from patchflow.plan.windows import Window

__all__ = [
    "BlockTask",
    "EngineSpec",
    "StitchTask",
    "describe_chip_error",
    "finalize_block",
    "mark_skipped",
    "process_block",
    "slice_array",
    "slice_state",
    "split_halo",
    "stitch_block",
]


#: characters of a failed chip's traceback kept in its record (the end: the raising frames)
TRACEBACK_CHARS = 2000


@dataclass(frozen=True)
class EngineSpec:
    """Everything every block task needs, shared by all tasks of one ``apply``."""

    op: Callable[..., Any]
    batched: bool
    batch_size: int
    pass_mask: bool
    window: Window | None
    agg: Aggregator
    size: tuple[int, int]
    scene: tuple[int, int]
    n_chips_x: int
    out_lead: tuple[int, ...]
    nodata: Any
    #: ``None``: invalid input values reach the op as NaN (in ``work_dtype``); a number:
    #: they are replaced by it and the op's output pixel is invalid wherever they were
    fill_value: Any
    pad_mode: str
    #: output pixels per input pixel as an exact ratio ``(num, den)``: (2, 1) = ×2, (1, 4) = ÷4
    scale: tuple[int, int] = (1, 1)
    #: ``"raise"``, ``"mask"`` (failed chips get zero weight), ``"skip"`` (zero weight, and
    #: every pixel they cover is invalid in the result) or ``"retry"``
    on_error: str = "raise"
    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = (OSError,)
    #: affine ``(a, b, c, d, e, f)`` and CRS text, only to name chips in error messages
    transform: tuple[float, ...] | None = None
    crs: str | None = None
    #: shape of the looped non-spatial dims (op called once per step, e.g. per time)
    loop: tuple[int, ...] = ()
    #: dtype the op sees (integer input with nodata is promoted to float so invalid
    #: values can be NaN); ``None``: the input's own dtype
    work_dtype: np.dtype | None = None

    @property
    def pad_value(self) -> Any:
        """Constant used by ``pad_mode="constant"`` past the scene edge."""
        return 0 if self.fill_value is None else self.fill_value

    def sc(self, value: int) -> int:
        """``value`` input pixels in output pixels (exact: the plan checks divisibility)."""
        num, den = self.scale
        return value * num // den

    @property
    def out_size(self) -> tuple[int, int]:
        """Chip size in output pixels."""
        return self.sc(self.size[0]), self.sc(self.size[1])

    def chip_record(self, chip_id: int, row: int, col: int, exc: BaseException) -> dict[str, Any]:
        """The JSON-able record of chip ``chip_id`` at scene ``(row, col)`` failing with
        ``exc``: bounds clipped to the scene (the pixels it covers), world bounds when the
        raster has a transform, and the traceback's last :data:`TRACEBACK_CHARS` characters.
        """
        h, w = self.size
        row1, col1 = min(row + h, self.scene[0]), min(col + w, self.scene[1])
        world = None
        if self.transform is not None:
            box = window_bounds(self.transform, [(row, col)], (row1 - row, col1 - col))[0, :4]
            world = [float(v) for v in box]
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return {
            "chip": int(chip_id),
            "bounds": [int(row), int(row1), int(col), int(col1)],
            "world_bounds": world,
            "crs": self.crs,
            "type": type(exc).__name__,
            "message": str(exc),
            "traceback": text[-TRACEBACK_CHARS:],
            "on_error": self.on_error,
        }

    def describe(self, chip_id: int, row: int, col: int) -> str:
        """``chip N (rows a:b, cols c:d[, x .. y .. in CRS])`` for error messages."""
        h, w = self.size
        text = f"chip {chip_id} (rows {row}:{row + h}, cols {col}:{col + w}"
        if self.transform is not None:
            x0, y0, x1, y1 = window_bounds(self.transform, [(row, col)], (h, w))[0, :4]
            text += f"; x {x0:.6g}..{x1:.6g}, y {y0:.6g}..{y1:.6g}"
            if self.crs:
                text += f" in {self.crs}"
        return text + ")"


@dataclass(frozen=True)
class BlockTask:
    """One block's chips: anchors (scene pixels) and where its data sit in its inputs."""

    index: tuple[int, int]
    ys: tuple[int, ...]
    xs: tuple[int, ...]
    first_chip: tuple[int, int]
    region: tuple[tuple[int, int], tuple[int, int]]
    #: per source chunk along y (resp. x): the ``(start, stop)`` rows (cols) the block reads
    y_parts: tuple[tuple[int, int], ...]
    x_parts: tuple[tuple[int, int], ...]
    #: the single part already holds the whole region, padding included (scene-level
    #: ``reflect``/``symmetric``/``wrap`` padding gathered by the graph)
    padded: bool = False


@dataclass(frozen=True)
class StitchTask:
    """One output block: its shape and, per source partial, ``(src, dst)`` slices."""

    index: tuple[int, int]
    shape: tuple[int, int]
    pieces: tuple[tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]], ...]
    #: input-pixel origin of the block and the anchors of every chip touching it (``None``:
    #: unknown), so a geometric denominator can be computed instead of merged
    origin: tuple[int, int] = (0, 0)
    chip_ys: tuple[int, ...] | None = None
    chip_xs: tuple[int, ...] | None = None


def slice_array(arr: np.ndarray, ys: tuple[int, int], xs: tuple[int, int]) -> np.ndarray:
    """A copied ``[..., ys, xs]`` window (a copy, so the source chunk can be freed)."""
    return np.array(arr[..., ys[0] : ys[1], xs[0] : xs[1]])


def split_halo(
    arr: np.ndarray,
    cuts: tuple[tuple[tuple[int, int], tuple[int, int], tuple[int, int]], ...],
) -> dict[tuple[int, int], np.ndarray]:
    """Copied halo strips of one chunk, keyed by the block that needs each."""
    return {index: slice_array(arr, ys, xs) for index, ys, xs in cuts}


def slice_state(state: State, ys: tuple[int, int], xs: tuple[int, int]) -> State:
    """A copied spatial window of a partial state (spill-over sent to a neighbour block)."""
    out: State = {}
    for key, value in state.items():
        if key == "_skip":
            # skipped chips' footprints follow the pixels they cover
            out[key] = _moved(value, ys, xs, (0, 0))
            continue
        if key.startswith("_"):
            continue  # bookkeeping (failed-chip count, records) stays with the owning block
        if value is None or isinstance(value, bool):  # (a flag, e.g. mean_std's "raw")
            out[key] = value
        elif key == "dy":
            out[key] = value[ys[0] : ys[1]].copy()
        elif key == "dx":
            out[key] = value[xs[0] : xs[1]].copy()
        else:
            out[key] = slice_array(value, ys, xs)
    return out


Rect = tuple[int, int, int, int]


def _moved(
    rects: Sequence[Rect], ys: tuple[int, int], xs: tuple[int, int], to: tuple[int, int]
) -> list[Rect]:
    """``rects`` (``(y0, y1, x0, x1)``) clipped to rows ``ys`` × cols ``xs`` and moved so
    that ``(ys[0], xs[0])`` lands on ``to``; empty intersections are dropped."""
    out = []
    for y0, y1, x0, x1 in rects:
        a, b = max(y0, ys[0]), min(y1, ys[1])
        c, d = max(x0, xs[0]), min(x1, xs[1])
        if a < b and c < d:
            dy, dx = to[0] - ys[0], to[1] - xs[0]
            out.append((a + dy, b + dy, c + dx, d + dx))
    return out


def mark_skipped(value: np.ndarray, rects: Sequence[Rect], agg: Aggregator) -> np.ndarray:
    """A finalised block with the pixels of skipped chips (``rects`` in its output pixels)
    set to the aggregation's invalid fill: NaN for a float result without a nodata value,
    else the nodata.

    Examples
    --------
    >>> from patchflow.engine.aggregate import make_aggregator
    >>> agg = make_aggregator("mean", out_dtype=np.dtype("float32"), lead=())
    >>> mark_skipped(np.ones((2, 3), np.float32), [(0, 1, 1, 3)], agg).tolist()
    [[1.0, nan, nan], [1.0, 1.0, 1.0]]
    """
    if not rects:
        return value
    fill = np.nan if value.dtype.kind in "fc" and agg.nodata is None else agg.nodata
    if fill is None:
        raise OperatorError(
            f"{len(rects)} chip footprint(s) must be invalid (on_error='skip') but the "
            f"{value.dtype} result has no nodata value; pass nodata=<value>"
        )
    value = np.array(value, copy=True)  # may share memory with a partial dask still holds
    for y0, y1, x0, x1 in rects:
        value[..., y0:y1, x0:x1] = fill
    return value


def finalize_block(agg: Aggregator, state: State, skip: Sequence[Rect] = ()) -> np.ndarray:
    """``agg.finalize(state)`` with the footprints ``skip`` of skipped chips invalid.

    Inside a footprint the merged state lacks the skipped chip, so its pixels may hold
    values no result would (0 where only that chip reached, under a geometric
    denominator); a float result's nodata collision check therefore runs after they
    are marked, on the pixels that stay valid.
    """
    if not skip:
        return agg.finalize(state)
    target = agg.encoded if agg.result_dtype().kind in "fc" else None
    if not is_value(target):
        return mark_skipped(agg.finalize(state), skip, agg)
    probe = copy.copy(agg)
    probe.encoded = None
    value = mark_skipped(probe.finalize(state), skip, agg)
    check_collision(value, ~np.isnan(value), target, agg.nodata_origin)
    return value


def describe_chip_error(record: dict[str, Any]) -> str:
    """One line naming a failed chip's record: index, scene (and CRS) bounds, exception.

    Examples
    --------
    >>> describe_chip_error({"chip": 3, "bounds": [0, 64, 128, 192], "type": "ValueError",
    ...                      "message": "bad chip", "world_bounds": None})
    'chip 3 (rows 0:64, cols 128:192): ValueError: bad chip'
    """
    r0, r1, c0, c1 = record["bounds"]
    text = f"chip {record['chip']} (rows {r0}:{r1}, cols {c0}:{c1}"
    world = record.get("world_bounds")
    if world:
        text += f"; x {world[0]:.6g}..{world[2]:.6g}, y {world[1]:.6g}..{world[3]:.6g}"
        if record.get("crs"):
            text += f" in {record['crs']}"
    return text + f"): {record['type']}: {record['message']}"


def _parts(chunks: list[list[np.ndarray]], task: BlockTask) -> list[list[np.ndarray]]:
    """The block's read window as a grid of parts: its own chunk (sliced, a view) and the
    pre-sliced halo strips of its neighbours."""
    (y0, y1), (x0, x1) = task.y_parts[0], task.x_parts[0]
    grid: list[list[Any]] = [
        [part[task.index] if isinstance(part, dict) else part for part in row] for row in chunks
    ]
    grid[0][0] = grid[0][0][..., y0:y1, x0:x1]
    return grid


def _window(
    parts: list[list[np.ndarray]], rows: tuple[int, int], cols: tuple[int, int]
) -> np.ndarray:
    """Rows/cols ``[a, b)`` of the read window, copied out of the parts that hold them."""
    out_rows, top = [], 0
    for row in parts:
        height = row[0].shape[-2]
        ra, rb = max(rows[0], top) - top, min(rows[1], top + height) - top
        top += height
        if ra >= rb:
            continue
        pieces, left = [], 0
        for part in row:
            width = part.shape[-1]
            ca, cb = max(cols[0], left) - left, min(cols[1], left + width) - left
            left += width
            if ca < cb:
                pieces.append(part[..., ra:rb, ca:cb])
        out_rows.append(np.concatenate(pieces, axis=-1) if len(pieces) > 1 else pieces[0])
    return np.concatenate(out_rows, axis=-2) if len(out_rows) > 1 else out_rows[0]


class _Reader:
    """Chip windows of a block without copying the whole block first.

    Chips inside the block's own chunk are views of it; only the bottom and right fringes,
    where chips reach into the halo, are assembled (a few chip heights, not the block).
    """

    def __init__(
        self, parts: list[list[np.ndarray]], size: tuple[int, int], positions: list[tuple[int, int]]
    ) -> None:
        self.own = parts[0][0]
        self.size = size
        h, w = size
        h0, w0 = self.own.shape[-2:]
        height = sum(row[0].shape[-2] for row in parts)
        width = sum(part.shape[-1] for part in parts[0])
        low = [r for r, _ in positions if r + h > h0]
        right = [c for r, c in positions if c + w > w0 and r + h <= h0]
        self.by = min(low) if low else height
        self.rx = min(right) if right else width
        self.bottom = _window(parts, (self.by, height), (0, width)) if low else None
        self.right = _window(parts, (0, h0), (self.rx, width)) if right else None
        self.h0, self.w0 = h0, w0

    def chip(self, r: int, c: int) -> np.ndarray:
        h, w = self.size
        if r + h <= self.h0 and c + w <= self.w0:
            return self.own[..., r : r + h, c : c + w]
        if r + h > self.h0:
            assert self.bottom is not None
            return self.bottom[..., r - self.by : r - self.by + h, c : c + w]
        assert self.right is not None
        return self.right[..., r : r + h, c - self.rx : c - self.rx + w]


@lru_cache(maxsize=16)
def _ones(shape: tuple[int, int]) -> np.ndarray:
    out = np.ones(shape, np.float32)
    out.setflags(write=False)
    return out


def _axis_sum(
    window: Window | None,
    axis: int,
    anchors: tuple[int, ...],
    start: int,
    length: int,
    scene: int,
    size: int,
) -> np.ndarray:
    """Per-axis window sum over ``[start, start + length)`` of chips at ``anchors`` (each
    ``size`` long, clipped to the range); ``window=None`` counts chips (boxcar)."""
    total = np.zeros(length, np.float64)
    for a in anchors:
        lo, hi = max(a, start), min(a + size, start + length)
        if lo >= hi:
            continue
        if window is None:
            total[lo - start : hi - start] += 1.0
        else:
            w = window.axis_weights(axis, a <= 0, a + size >= scene)
            total[lo - start : hi - start] += w[lo - a : hi - a]
    return total


def _call_once(spec: EngineSpec, chips: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    args: tuple[Any, ...] = (chips,) if not spec.pass_mask else (chips, mask)
    attempt = 0
    while True:
        try:
            return np.asarray(spec.op(*args))
        except OperatorError:
            raise
        except spec.retry_on:
            if spec.on_error != "retry" or attempt >= spec.retries:
                raise
            attempt += 1


def _failed(spec: EngineSpec, where: str, exc: Exception) -> OperatorError:
    err = OperatorError(f"the operator failed on {where}: {type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err


def _check(
    spec: EngineSpec,
    out: np.ndarray,
    expected: tuple[int, ...],
    where: str | _Lazy,
    given: tuple[int, ...],
) -> None:
    if out.shape != expected:
        raise OperatorError(
            f"the operator returned shape {out.shape} for {where} (input {given}); expected "
            f"{expected} — the batch length and non-spatial shape must match the dry run, "
            f"and the spatial shape must be the chip's × scale {spec.scale[0]}/{spec.scale[1]}"
        )
    if out.dtype.kind not in "biuf":
        raise OperatorError(
            f"the operator returned dtype {out.dtype} for {where}; it must return numbers "
            "(bool, int or float)"
        )
    declared = spec.agg.op_dtype
    if declared.kind in "iu" and not np.can_cast(out.dtype, declared, "safe") and out.size:
        # the outputs become the declared integer dtype: a value outside its range would
        # wrap around (70000 → 4464 in int16) without a word
        finite = out if out.dtype.kind in "iub" else out[np.isfinite(out)]
        if finite.size:
            lo, hi = finite.min(), finite.max()
            info = np.iinfo(declared)
            if lo < info.min or hi > info.max:
                raise OperatorError(
                    f"the operator returned values from {lo} to {hi} for {where}, outside "
                    f"the output dtype {declared} ({info.min}..{info.max}); declare a wider "
                    "output_dtype= (or none: the dry run then finds it), or return values "
                    "that fit"
                )


class _ChipNames(Sequence[str]):
    """Chip descriptions for error messages, built only when one is read.

    Describing a chip (CRS bounds through the transform) costs a few small numpy calls;
    doing it for every chip of every batch held the GIL for nothing on the happy path.
    """

    def __init__(self, describe: Callable[[int], str], n: int) -> None:
        self._describe, self._n = describe, n

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, k: int) -> str: ...
    @overload
    def __getitem__(self, k: slice) -> list[str]: ...
    def __getitem__(self, k: int | slice) -> str | list[str]:
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(self._n))]
        if not -self._n <= k < self._n:
            raise IndexError(k)
        return self._describe(k % self._n)


class _Lazy:
    """Text formatted only if an error message needs it."""

    def __init__(self, text: Callable[[], str]) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text()


def _batch_name(labels: Sequence[str]) -> _Lazy:
    """``chips A … B`` for a batch (lazily)."""
    return _Lazy(lambda: f"chips {labels[0]} … {labels[-1]}" if len(labels) > 1 else labels[0])


#: a batch's failed chips: their indices in the batch and, per index, the exception
Failures = tuple[list[int], dict[int, BaseException]]


def _run_looped(
    spec: EngineSpec, chips: np.ndarray, mask: np.ndarray | None, labels: Sequence[str]
) -> tuple[np.ndarray, Failures]:
    """Like :func:`_run_batch`, running the op once per step of the looped dims (e.g. time).

    A chip failing at any step fails as a whole (its first failing step's exception)."""
    if not spec.loop:
        return _run_batch(spec, chips, mask, labels)
    n, steps = len(chips), math.prod(spec.loop)
    flat = chips.reshape(n * steps, *chips.shape[1 + len(spec.loop) :])
    flat_mask = None if mask is None else mask.reshape(n * steps, *mask.shape[-2:])
    flat_labels = _ChipNames(lambda k: f"{labels[k // steps]}, step {k % steps}", n * steps)
    out, (failed, errors) = _run_batch(spec, flat, flat_mask, flat_labels)
    chip_errors: dict[int, BaseException] = {}
    for f in failed:
        chip_errors.setdefault(f // steps, errors[f])
    return out.reshape(n, *spec.loop, *out.shape[1:]), (sorted(chip_errors), chip_errors)


def _run_batch(
    spec: EngineSpec, chips: np.ndarray, mask: np.ndarray | None, labels: Sequence[str]
) -> tuple[np.ndarray, Failures]:
    """Op outputs ``(n, *out_lead, h', w')`` and the chips that failed (mask/skip)."""
    expected = (*spec.out_lead, *spec.out_size)
    if spec.batched:
        where = _batch_name(labels)
        try:
            out = _call_once(spec, chips, mask)
        except OperatorError:
            raise
        except Exception:
            # rerun chip by chip: names the failing chip (raise) or isolates it (mask/skip)
            return _per_chip(spec, chips, mask, labels)
        _check(spec, out, (len(chips), *expected), where, chips.shape)
        return out, ([], {})
    return _per_chip(spec, chips, mask, labels)


def _per_chip(
    spec: EngineSpec, chips: np.ndarray, mask: np.ndarray | None, labels: Sequence[str]
) -> tuple[np.ndarray, Failures]:
    """Call the op chip by chip: the plain convention, or a failed batch being isolated.

    A batched op gets ``(1, …)`` stacks; on failure the error names the chip (raise) or
    the chip is marked failed and gets zeros (mask: with zero weight; skip: left out of
    the state by :func:`process_block`).
    """
    lead = (1,) if spec.batched else ()
    expected = (*lead, *spec.out_lead, *spec.out_size)
    outs, failed = [], []
    errors: dict[int, BaseException] = {}
    for k in range(len(chips)):
        chip = chips[k : k + 1] if spec.batched else chips[k]
        sub = None if mask is None else (mask[k : k + 1] if spec.batched else mask[k])
        try:
            out = _call_once(spec, chip, sub)
        except OperatorError:
            raise
        except Exception as exc:
            if spec.on_error not in ("mask", "skip"):
                raise _failed(spec, labels[k], exc) from exc
            failed.append(k)
            errors[k] = exc
            out = np.zeros(expected, spec.agg.op_dtype)
        _check(spec, out, expected, _Lazy(partial(labels.__getitem__, k)), chip.shape)
        outs.append(out[0] if spec.batched else out)
    return np.stack(outs), (failed, errors)


def _rescale_mask(mask: np.ndarray, num: int, den: int) -> np.ndarray:
    """Validity at output resolution: repeat (upsampling) or all-valid blocks (downsampling)."""
    if num > 1:
        mask = mask.repeat(num, axis=-2).repeat(num, axis=-1)
    if den > 1:
        *lead, h, w = mask.shape
        blocks = mask.reshape(*lead, h // den, den, w // den, den)
        mask = np.asarray(blocks.all(axis=(-3, -1)))
    return mask


def _describe(spec: EngineSpec, ids: list[int], pos: np.ndarray, r0: int, c0: int, k: int) -> str:
    """Chip ``k`` of a batch, for error messages (its id and scene window)."""
    return spec.describe(ids[k], int(pos[k][0]) + r0, int(pos[k][1]) + c0)


def process_block(spec: EngineSpec, task: BlockTask, chunks: list[list[np.ndarray]]) -> State:
    """Compute every chip a block owns and return its partial state over its region.

    The state is in output pixels (input pixels × ``spec.scale``).
    """
    h, w = spec.size
    oh, ow = spec.out_size
    sc = spec.sc
    (r0, r1), (c0, c1) = task.region
    read_h, read_w = min(r1, spec.scene[0]) - r0, min(c1, spec.scene[1]) - c0
    in_h, in_w = read_h, read_w  # the part of the region inside the scene
    with phase("prepare"):
        parts = _parts(chunks, task)
        nloop = len(spec.loop)
        if task.padded:
            read_h, read_w = r1 - r0, c1 - c0
        pad_y, pad_x = (r1 - r0) - read_h, (c1 - c0) - read_w
        positions = [(y - r0, x - c0) for y in task.ys for x in task.xs]
        clean = all(invalid_elements(p, spec.nodata) is None for row in parts for p in row)
        reader = None
        if clean and not (pad_y or pad_x):
            # fast path: no filling or padding needed, so chips come straight from the parts
            reader = _Reader(parts, spec.size, positions)
            arr = reader.own
        else:
            arr = _window(parts, (0, read_h), (0, read_w))
        assert reader is not None or arr.shape[-2:] == (read_h, read_w)

        work = spec.work_dtype or arr.dtype
        bad = None if reader is not None else invalid_elements(arr, spec.nodata)
        valid = None
        # per-element validity, used when the op saw NaN for invalid inputs and keeps their
        # non-spatial shape (astype, rescale …): a non-float output then stays invalid per band,
        # as its input was. A fill value hides which bands the op mixed, so there the pixel
        # rule (any invalid element invalidates the pixel) stays, conservatively.
        per_element = (
            bad is not None
            and spec.fill_value is None
            and spec.out_lead == tuple(arr.shape[nloop:-2])
            and spec.scale == (1, 1)
        )
        elem_valid = None
        if bad is not None:
            if spec.fill_value is None:
                arr = arr.astype(work, copy=True)
                arr[bad] = np.nan
            else:
                arr = np.where(bad, np.asarray(spec.fill_value, arr.dtype), arr)
            # the pixel mask: where every op-visible element is valid (used with a fill value,
            # for integer op outputs, and as the op's ``pass_mask`` argument)
            lead_axes = tuple(range(nloop, bad.ndim - 2))
            valid = ~(np.asarray(bad.any(axis=lead_axes)) if lead_axes else bad)
            if per_element:
                elem_valid = ~bad
        if pad_y or pad_x:
            widths = [(0, 0)] * (arr.ndim - 2) + [(0, pad_y), (0, pad_x)]
            kw: dict[str, Any] = {}
            if spec.pad_mode == "constant":
                kw["constant_values"] = np.asarray(spec.pad_value, arr.dtype)
            arr = np.pad(arr, widths, mode=spec.pad_mode, **kw)  # type: ignore[call-overload]
            if valid is not None:
                valid = np.pad(valid, [(0, 0)] * nloop + widths[-2:], constant_values=True)
            if elem_valid is not None:
                elem_valid = np.pad(elem_valid, widths, constant_values=True)

    agg = spec.agg
    region_shape = (sc(r1 - r0), sc(c1 - c0))
    state: State | None = None  # created once the first outputs say which accumulator
    iy0, ix0 = task.first_chip
    ids = [
        (iy0 + a) * spec.n_chips_x + (ix0 + b)
        for a in range(len(task.ys))
        for b in range(len(task.xs))
    ]
    window = spec.window
    unit = window is None or window.unit
    n_failed = 0
    records: list[dict[str, Any]] = []
    skipped: list[Rect] = []
    pending: list[ChipBatch] = []  # batches of masked chips only, before the state exists
    for lo in range(0, len(positions), spec.batch_size):
        pos = np.asarray(positions[lo : lo + spec.batch_size], dtype=np.int64)
        with phase("chips"):
            if reader is not None:
                chips = np.stack([reader.chip(int(r), int(c)) for r, c in pos])
            else:
                chips = np.stack([arr[..., r : r + h, c : c + w] for r, c in pos])
            if chips.dtype != work:
                chips = chips.astype(work)
            vmask = (
                None
                if valid is None
                else np.stack([valid[..., r : r + h, c : c + w] for r, c in pos])
            )
        labels = _ChipNames(
            partial(_describe, spec, ids[lo : lo + len(pos)], pos, r0, c0), len(pos)
        )
        with phase("op"):
            out, (failed, errors) = _run_looped(spec, chips, vmask, labels)
        omask: np.ndarray | None
        if elem_valid is not None:
            omask = np.stack([elem_valid[..., r : r + h, c : c + w] for r, c in pos])
        else:
            omask = None if vmask is None else _rescale_mask(vmask, *spec.scale)
        n_failed += len(failed)  # their outputs are dropped through ``ChipBatch.failed``
        for k in failed:
            r, c = int(pos[k][0]), int(pos[k][1])
            records.append(spec.chip_record(ids[lo + k], r + r0, c + c0, errors[k]))
            if spec.on_error == "skip":
                skipped.append((sc(r), sc(r + h), sc(c), sc(c + w)))
        if omask is not None and spec.loop and elem_valid is None:
            # (n, *loop, h, w) → broadcastable against (n, *loop, *out_lead, h, w)
            omask = omask.reshape(*omask.shape[:-2], *(1,) * len(spec.out_lead), oh, ow)
        with phase("weights"):
            if unit or window is None:
                weights = [_ones((oh, ow))] * len(pos)
            else:
                weights = [
                    window.weights(
                        r + r0 <= 0,
                        r + r0 + h >= spec.scene[0],
                        c + c0 <= 0,
                        c + c0 + w >= spec.scene[1],
                    )
                    for r, c in pos
                ]
        opos = np.asarray([(sc(int(r)), sc(int(c))) for r, c in pos], dtype=np.int64)
        chip_ids = np.asarray(ids[lo : lo + len(pos)])
        dropped: list[int] = []
        if failed and spec.on_error == "skip":
            # "skip": failed chips are left out of the state altogether (no fake outputs
            # for the aggregation to check). They only ever reach their own footprint,
            # which becomes invalid; the geometric denominator (dy/dx, which still counts
            # them) is only used outside it. So every other pixel is exactly what a run
            # without the failure computes.
            keep = [k for k in range(len(pos)) if k not in set(failed)]
            if not keep:
                continue
            out, opos, chip_ids = out[keep], opos[keep], chip_ids[keep]
            weights = [weights[k] for k in keep]
            omask = None if omask is None else omask[keep]
        else:
            dropped = failed
        batch = ChipBatch(
            out,
            opos,
            weights,
            omask,
            chip_ids,
            nan_marks=spec.fill_value is None,
            failed=dropped,
            unit_weights=unit,
            # window.weights(...) is wy ⊗ wx with wy set by the chip's row, wx by its column
            separable=unit or window is None or window.separable,
        )
        with phase("accumulate"):
            if state is None:
                if len(dropped) == len(out):
                    # only masked chips' zeros so far: they must not pick the accumulator
                    pending.append(batch)
                    continue
                good = np.delete(out, dropped, axis=0) if dropped else out
                state = agg.new(region_shape, agg.accumulator_for(good))
                for early in pending:
                    agg.add(state, early)
                pending.clear()
            agg.add(state, batch)

    with phase("seal"):
        if state is None:  # a block that owns no chip, or whose chips all failed
            state = agg.new(region_shape)
            for early in pending:
                agg.add(state, early)
        dy = dx = None
        if isinstance(agg, OverlapAdd) and (window is None or window.separable):
            oys = tuple(sc(a) for a in task.ys)
            oxs = tuple(sc(a) for a in task.xs)
            dy = _axis_sum(window, 0, oys, sc(r0), sc(r1 - r0), sc(spec.scene[0]), oh)
            dx = _axis_sum(window, 1, oxs, sc(c0), sc(c1 - c0), sc(spec.scene[1]), ow)
        state = agg.seal(state, dy, dx)
        if (in_h, in_w) != (r1 - r0, c1 - c0):
            state = _crop(state, sc(in_h), sc(in_w))
    state["_failed"] = n_failed
    if records:
        state["_errors"] = records
    if skipped:
        state["_skip"] = skipped
    return state


def _crop(state: State, h: int, w: int) -> State:
    """Drop the padded (out-of-scene) part of a partial state."""
    out: State = {}
    for key, value in state.items():
        if value is None or isinstance(value, bool) or key.startswith("_"):
            out[key] = value
        elif key == "dy":
            out[key] = value[:h]
        elif key == "dx":
            out[key] = value[:w]
        else:
            out[key] = np.ascontiguousarray(value[..., :h, :w])
    return out


def _exactly(state: State, shape: tuple[int, int]) -> bool:
    """Whether every array of a partial state spans exactly ``shape`` (no spill-over)."""
    for key, value in state.items():
        if not isinstance(value, np.ndarray):
            continue
        if key == "dy":
            ok = value.shape == (shape[0],)
        elif key == "dx":
            ok = value.shape == (shape[1],)
        else:
            ok = value.ndim >= 2 and value.shape[-2:] == shape
        if not ok:
            return False
    return True


def stitch_block(
    spec: EngineSpec, task: StitchTask, partials: list[State], sink: Any = None
) -> np.ndarray:
    """Merge the pieces of every partial that overlaps an output block, then finalise.

    Pixels a skipped chip covered (``on_error="skip"``) are then set invalid
    (:func:`mark_skipped`); without a sink each failed chip whose record this block holds
    is reported as a :class:`~patchflow.errors.ChipFailedWarning` (in the process running
    the task: the caller's under the threaded and synchronous schedulers).

    With a ``sink`` (see :mod:`patchflow.io.store`) the merged state is handed to
    ``sink.write(index, state, agg, failed, skip=..., errors=...)`` instead, which
    finalises and persists it (records included) and returns a marker.
    """
    agg = spec.agg
    skip: list[Rect] = []
    for (ys, yd, xs, xd), part in zip(task.pieces, partials, strict=True):
        skip += _moved(part.get("_skip", ()), ys, xs, (yd[0], xd[0]))
    records = [r for part in partials for r in part.get("_errors", ())]
    with phase("merge"):
        whole = ((0, task.shape[0]), (0, task.shape[0]), (0, task.shape[1]), (0, task.shape[1]))
        if len(partials) == 1 and task.pieces[0] == whole and _exactly(partials[0], task.shape):
            # the block's own partial is all of it (no spill-over in or out): use it as is
            state = dict(partials[0])
        else:
            # the largest piece (the block's own partial) first, the spill-over strips of
            # its neighbours after: a merge into an empty state is a copy, which the
            # aggregations whose merge is more than a sum (mean_std) take as such
            pieces = sorted(
                zip(task.pieces, partials, strict=True),
                key=lambda piece: (
                    -(piece[0][0][1] - piece[0][0][0]) * (piece[0][2][1] - piece[0][2][0])
                ),
            )
            state = agg.stitched(
                task.shape,
                [
                    (
                        (slice(yd[0], yd[1]), slice(xd[0], xd[1])),
                        (slice(ys[0], ys[1]), slice(xs[0], xs[1])),
                        part,
                    )
                    for (ys, yd, xs, xd), part in pieces
                ],
                agg.merged_accumulator(partials),
            )
        window = spec.window
        if (
            isinstance(agg, OverlapAdd)
            and task.chip_ys is not None
            and task.chip_xs is not None
            and (window is None or window.separable)
            and all(p.get("den", 0) is None for p in partials)
        ):
            # every chip touching this block kept its full weight: the denominator is
            # the product of the per-axis window sums of those chips (regular grid)
            sc = spec.sc
            (oy, ox), (oh, ow) = (sc(task.origin[0]), sc(task.origin[1])), spec.out_size
            oys, oxs = tuple(sc(a) for a in task.chip_ys), tuple(sc(a) for a in task.chip_xs)
            dy = _axis_sum(window, 0, oys, oy, task.shape[0], sc(spec.scene[0]), oh)
            dx = _axis_sum(window, 1, oxs, ox, task.shape[1], sc(spec.scene[1]), ow)
            agg.set_geometry(state, dy, dx)
    if sink is not None:
        failed = sum(int(p.get("_failed", 0)) for p in partials)
        marker: np.ndarray = sink.write(
            task.index, state, agg, failed, skip=tuple(skip), errors=tuple(records)
        )
        return marker
    for record in records:
        what = (
            "its pixels are nodata"
            if record["on_error"] == "skip"
            else "it got zero weight: other chips fill the pixels they cover"
        )
        warnings.warn(
            f"{describe_chip_error(record)} — on_error={record['on_error']!r}: {what}",
            ChipFailedWarning,
            stacklevel=2,
        )
    with phase("normalise"):
        return finalize_block(agg, state, skip)
