"""Preparing a job: xarray input → plain arrays, a block plan and an engine spec.

:func:`prepare` validates every option of ``apply``/``run`` and returns a :class:`Prepared`
job; :meth:`Prepared.result` builds the graph (:mod:`patchflow.engine.graph`) and wraps the
lazy result in a georeferenced DataArray. It never computes anything: building the graph is
free, and the only data it touches is one dry call of the operator on a chip of ones
(skipped when ``output_dtype`` and ``output_shape``/``output_bands`` are given).

A pointwise operator (:func:`patchflow.ops.op_pointwise`) gets a different plan: one chip
per strip of a block, no overlap, unit weights — every merge of identical chip values is
the value itself, so the result is the op on the whole scene, computed once per pixel.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from affine import Affine

from patchflow._xr import as_dataarray, band_labels, spatial_dims, transform_of, write_georef
from patchflow.engine.aggregate import LAYERED_AGGS, check_vote_memory, make_aggregator
from patchflow.engine.graph import build_graph
from patchflow.engine.kernels import EngineSpec
from patchflow.engine.nodata import input_nodata as input_nodata_of
from patchflow.engine.nodata import is_value as is_nodata_value
from patchflow.engine.nodata import resolve as resolve_nodata
from patchflow.engine.nodata import work_dtype
from patchflow.errors import DimensionError, OperatorError, ParameterError, PatchflowWarning
from patchflow.ops import check_stitchable, is_batched, op_output_spec, op_pointwise, op_scale
from patchflow.options import SizeSpec
from patchflow.plan.blocks import TARGET_BLOCK as TARGET_BLOCK
from patchflow.plan.blocks import BlockPlan, auto_block, default_block
from patchflow.plan.grid import ChipGrid, size_pair
from patchflow.plan.windows import WindowSpec, make_window

__all__ = ["Prepared", "prepare", "prepare_from", "worker_threads"]

BATCH_BYTES = 8 * 2**20
ON_ERROR = ("raise", "mask", "retry", "skip")
PAD_MODES = ("constant", "reflect", "edge", "symmetric", "wrap")
#: input bytes per op call when a pointwise op runs on strips of a block
POINTWISE_TILE_BYTES = 2**20
#: merges whose result is the op's own value when every covering chip agrees on it
#: (median/mode of identical values is that value; inverse_variance is not: the merged
#: variance shrinks with the number of chips)
POINTWISE_AGGS = (
    "overlap_add",
    "mean",
    "max",
    "min",
    "centre",
    "vote",
    "soft_vote",
    "median",
    "mode",
)


def _spatial_chunks(chunks: Any, y: Hashable, x: Hashable) -> tuple[Any, Any] | None:
    if chunks is None:
        return None
    pair_: tuple[Any, Any]
    if isinstance(chunks, Mapping):
        pair_ = chunks.get(y, -1), chunks.get(x, -1)
    elif isinstance(chunks, int):
        pair_ = chunks, chunks
    elif isinstance(chunks, Sequence) and len(chunks) == 2:
        pair_ = chunks[0], chunks[1]
    else:
        raise ParameterError(
            f"chunks must be an int, a (y, x) pair or a {{dim: size}} mapping, got {chunks!r}"
        )
    for value in pair_:
        # -1 (dask's "whole axis") is fine; 0 and other negatives would divide by zero
        if isinstance(value, bool) or (
            isinstance(value, int | np.integer) and value != -1 and value <= 0
        ):
            raise ParameterError(
                f"chunks={chunks!r}: block sizes must be positive pixel counts (or -1 for the "
                f"whole axis); use e.g. chunks=2048, or leave chunks=None for the default"
            )
    return pair_


def worker_threads() -> int:
    """Threads the active dask scheduler runs tasks on (at least 1).

    A ``dask.config`` scheduler wins (``"sync"``: 1; a thread/process pool: its size; the
    threaded and process schedulers: ``num_workers`` or ``dask.system.CPU_COUNT``), then an
    active ``distributed`` client (its workers' total threads), else the threaded
    scheduler's ``CPU_COUNT``. Nothing is computed; a scheduler patchflow cannot size (a
    plain callable) counts as ``CPU_COUNT``.

    Examples
    --------
    >>> import dask
    >>> with dask.config.set(scheduler="sync"):
    ...     worker_threads()
    1
    """
    import sys
    from concurrent.futures import Executor

    from dask.system import CPU_COUNT

    default = int(dask.config.get("num_workers", None) or CPU_COUNT)
    scheduler = dask.config.get("scheduler", None)
    if isinstance(scheduler, str):
        name = scheduler.lower()
        if name in ("sync", "synchronous", "single-threaded"):
            return 1
        if name in ("threads", "threading"):
            pool = dask.config.get("pool", None)
            return max(1, int(getattr(pool, "_max_workers", None) or default))
        if name in ("processes", "multiprocessing"):
            return max(1, default)
    elif isinstance(scheduler, Executor):
        return max(1, int(getattr(scheduler, "_max_workers", None) or default))
    elif scheduler is not None and "Client" not in type(scheduler).__name__:
        return max(1, default)
    # only a process that imported distributed can have a client: never import it here
    if "distributed" in sys.modules:
        # a Client object as the scheduler, else the current one ("dask.distributed")
        client = None if isinstance(scheduler, str) else scheduler
        if client is None:
            try:
                client = sys.modules["distributed"].Client.current(allow_global=True)
            except (ValueError, AttributeError):
                client = None
        if client is not None and not getattr(client, "asynchronous", False):
            try:
                threads = sum(int(n) for n in client.nthreads().values())
            except Exception:  # a closed or unreachable client: size as if it were absent
                threads = 0
            if threads > 0:
                return threads
    pool = dask.config.get("pool", None)
    return max(1, int(getattr(pool, "_max_workers", None) or default))


def _auto_block(
    shape: tuple[int, int], size: tuple[int, int], stride: tuple[int, int]
) -> tuple[int, int]:
    """:func:`patchflow.plan.blocks.auto_block` for the active scheduler's threads."""
    return auto_block(shape, size, stride, threads=worker_threads())


def _prepare_data(
    arr: xr.DataArray,
    size: tuple[int, int],
    stride: tuple[int, int],
    chunks: Any,
    y: Hashable,
    x: Hashable,
    den: int = 1,
) -> da.Array:
    """Dask array ``(*lead, y, x)`` with lead dims in one chunk and usable spatial chunks.

    Rule: non-spatial dims always become one chunk (the op sees all bands/times of a chip).
    Numpy-backed input, and dask input in one spatial chunk, gets
    :func:`~patchflow.plan.blocks.auto_block`'s blocks (about 2048 pixels, smaller on a
    small scene so every worker thread has work). Other spatial chunks are kept if every
    chunk but the last holds at least one chip (so input chunks read from Zarr/COG storage
    stay aligned and are read once); otherwise they become the multiple of the stride
    nearest above 2048 pixels. ``chunks=`` overrides the rule. For an op that downsamples
    by ``den``, chunks must be multiples of ``den`` so every block maps onto whole output
    pixels (stride multiples are).
    """
    data = arr.data
    lead = {i: -1 for i in range(arr.ndim - 2)}
    target = tuple(default_block(s, t) for s, t in zip(size, stride, strict=True))
    shape = (int(arr.shape[-2]), int(arr.shape[-1]))
    override = _spatial_chunks(chunks, y, x)
    if override is not None:
        small = [c for c, s in zip(override, size, strict=True) if isinstance(c, int) and 0 < c < s]
        if small:
            warnings.warn(
                f"chunks={override} are smaller than the chip {size}: every block then reads "
                f"several chunks and many blocks own no chip; it works but is slow — use "
                f"chunks >= {max(size)} (the default picks a multiple of the stride >= 2048)",
                PatchflowWarning,
                stacklevel=4,
            )
        if any(isinstance(c, int) and c > 0 and c % den for c in override):
            raise ParameterError(
                f"chunks {override} must be multiples of {den} for an operator that "
                f"downsamples by {den}"
            )
    if not isinstance(data, da.Array):
        spatial = override or _auto_block(shape, size, stride)
        return da.from_array(data, chunks=(*(-1 for _ in lead), *spatial))
    if override is not None:
        return data.rechunk({**lead, arr.ndim - 2: override[0], arr.ndim - 1: override[1]})
    if len(data.chunks[-2]) == 1 and len(data.chunks[-1]) == 1:
        # one spatial chunk is no block layout to keep: pick blocks as for numpy input
        by, bx = _auto_block(shape, size, stride)
        if by < shape[0] or bx < shape[1]:
            return data.rechunk({**lead, arr.ndim - 2: by, arr.ndim - 1: bx})
    new: dict[int, Any] = dict(lead)
    for k, axis in enumerate((arr.ndim - 2, arr.ndim - 1)):
        c = data.chunks[axis]
        if len(c) > 1 and (min(c[:-1]) < size[k] or any(v % den for v in c[:-1])):
            new[axis] = target[k]
    if all(len(data.chunks[i]) == 1 for i in lead) and len(new) == len(lead):
        return data
    return data.rechunk(new)


def _dry_run(
    op: Callable[..., Any],
    *,
    batched: bool,
    pass_mask: bool,
    lead: tuple[int, ...],
    size: tuple[int, int],
    dtype: np.dtype,
) -> np.ndarray:
    chip = np.ones((*lead, *size), dtype=dtype)
    mask = np.ones(size, bool)
    if batched:
        chip, mask = chip[None], mask[None]
    args = (chip, mask) if pass_mask else (chip,)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            out = np.asarray(op(*args))
    except Exception as exc:
        raise OperatorError(
            f"the operator failed on a test chip of ones {chip.shape} ({dtype}): "
            f"{type(exc).__name__}: {exc}. Pass output_dtype= and output_shape= to skip "
            "this dry run"
        ) from exc
    spatial = tuple(out.shape[-2:]) if out.ndim >= 2 else tuple(out.shape)
    ratios = {Fraction(int(o), s) for o, s in zip(spatial, size, strict=False)}
    if (
        (batched and (out.ndim < 3 or out.shape[0] != 1))
        or len(spatial) != 2
        or len(ratios) != 1
        or 0 in ratios
    ):
        expect = "(1, …, h', w')" if batched else "(…, h', w')"
        raise OperatorError(
            f"the operator returned shape {out.shape} for a test chip {chip.shape}; expected "
            f"{expect} where (h', w') is the chip's (h, w) = {size}, or that scaled by one "
            "factor for a resolution-changing op"
        )
    return out[0] if batched else out


def _covers(grid: ChipGrid) -> bool:
    """Whether the chips cover every scene pixel (no gaps, nothing dropped)."""
    for axis in (grid.y, grid.x):
        anchors = np.asarray(axis.anchors, dtype=np.int64)
        if anchors.size == 0 or anchors[0] > 0:
            return False
        ends = anchors + axis.size
        if np.any(anchors[1:] > ends[:-1]) or ends[-1] < axis.length:
            return False
    return True


def _most_chips(grid: ChipGrid, ratio: tuple[int, int]) -> int:
    """The most chips covering one output pixel (median/mode's ``layers``), exactly.

    Coverage is separable — pixel ``(i, j)`` is under ``count_y(i) * count_x(j)`` chips —
    so its maximum is the product of the per-axis maxima, each counted from the actual
    chip starts (``boundary="shift"`` moves the last one; padded pixels included), in
    output pixels (``ratio``: the op's ``num/den`` scale).
    """
    num, den = ratio
    most = 1
    for axis in (grid.y, grid.x):
        starts = np.asarray(axis.anchors, dtype=np.int64) * num // den
        size = axis.size * num // den
        count = np.zeros(int(starts.max()) + size + 1, dtype=np.int64)
        np.add.at(count, starts, 1)
        np.add.at(count, starts + size, -1)
        most *= int(np.cumsum(count).max())
    return most


def _out_dims(
    arr: xr.DataArray,
    lead: tuple[int, ...],
    output_dims: Sequence[Hashable] | None,
    n_loop: int = 0,
) -> tuple[Hashable, ...]:
    """Output dims: the looped dims (e.g. time), then the op's output dims."""
    loop_dims = tuple(arr.dims[:n_loop])
    in_lead = arr.dims[n_loop:-2]
    lead = lead[n_loop:]
    if output_dims is not None:
        dims = tuple(output_dims)
        if len(dims) != len(lead):
            raise ParameterError(
                f"output_dims {dims} has {len(dims)} names but the operator's output has "
                f"{len(lead)} non-spatial dims of shape {lead}"
            )
        return loop_dims + dims
    if len(lead) == len(in_lead):
        return loop_dims + tuple(in_lead)
    if len(lead) == 1:
        return (*loop_dims, "band")
    return loop_dims + tuple(f"dim_{k}" for k in range(len(lead)))


#: CF packing/encoding attrs (and rioxarray's names for them): they say how stored values
#: map to real ones, or which stored values to mask. The result holds the op's values as
#: they are (never packed), so a reader that applied these (``open_result`` decoding a
#: store, netCDF's valid-range masking) would change them: they never carry over, not
#: even through an op that keeps the values. The result's own nodata is written afresh.
DROPPED_ATTRS = frozenset(
    {
        "_FillValue",
        "nodata",
        "scale_factor",
        "add_offset",
        "missing_value",
        "scales",
        "offsets",
        "valid_range",
        "valid_min",
        "valid_max",
        "_Unsigned",
        "dtype",
    }
)


def _wrap(
    arr: xr.DataArray,
    data: da.Array,
    dims: tuple[Hashable, ...],
    nodata: Any,
    name: Hashable | None,
    ratio: tuple[int, int] = (1, 1),
    *,
    encoded: Any,
    attrs: Mapping[Hashable, Any],
) -> xr.DataArray:
    y, x = arr.dims[-2:]
    all_dims = (*dims, y, x)
    sizes = dict(zip(all_dims, data.shape, strict=True))
    transform = transform_of(arr)
    coords = {}
    for cname, coord in arr.coords.items():
        if all(d in sizes and arr.sizes[d] == sizes[d] for d in coord.dims):
            coords[cname] = coord
    if ratio != (1, 1):
        for cname in list(coords):
            if {y, x} & set(coords[cname].dims):
                del coords[cname]
        if transform is not None:
            # output pixels are input pixels × den/num; coords at the new pixel centres
            transform = transform * Affine.scale(ratio[1] / ratio[0])
            coords[x] = transform.c + transform.a * (np.arange(sizes[x]) + 0.5)
            coords[y] = transform.f + transform.e * (np.arange(sizes[y]) + 0.5)
    out = xr.DataArray(data, dims=all_dims, coords=coords, name=name)
    out.attrs = dict(attrs)
    return write_georef(out, crs=arr.rio.crs, transform=transform, nodata=nodata, encoded=encoded)


def prepare(
    obj: xr.DataArray | xr.Dataset,
    op: Callable[..., Any],
    *,
    size: SizeSpec = 256,
    stride: SizeSpec = 192,
    window: WindowSpec = "hann",
    window_params: Mapping[str, Any] | None = None,
    boundary: str = "shift",
    pad_mode: str = "constant",
    agg: str = "overlap_add",
    n_classes: int | None = None,
    batched: bool | None = None,
    batch_size: int | None = None,
    chunks: Any = None,
    output_dtype: Any = None,
    output_shape: Sequence[int] | None = None,
    output_bands: int | None = None,
    output_dims: Sequence[Hashable] | None = None,
    nodata: Any = None,
    input_nodata: Any = None,
    fill_value: Any = None,
    pass_mask: bool = False,
    allow_gaps: bool = False,
    scale: float | None = None,
    over: Hashable | Sequence[Hashable] | None = None,
    on_error: str = "raise",
    retries: int = 3,
    retry_on: Sequence[type[BaseException]] = (OSError,),
    name: Hashable | None = None,
) -> Prepared:
    """Plan a job: validate everything and build the engine spec (see :func:`apply`).

    Only the operator's dry run touches data; no dask graph is built yet.
    """

    if not callable(op):
        raise ParameterError(f"op must be callable, got {type(op).__name__}")
    arr = as_dataarray(obj)
    y, x = spatial_dims(arr)
    _check_coords(arr, y, x)
    loop_dims, op_dims = _split_over(arr, over, y, x)
    arr = arr.transpose(*loop_dims, *op_dims, y, x)
    n_loop = len(loop_dims)
    loop_shape = tuple(arr.shape[:n_loop])
    op_lead = tuple(arr.shape[n_loop:-2])
    size_yx = size_pair(size, "size", dims=(y, x))
    stride_yx = size_pair(stride, "stride", dims=(y, x))
    grid = ChipGrid(arr.shape[-2:], size_yx, stride_yx, boundary, allow_gaps)  # type: ignore[arg-type]
    if pad_mode not in PAD_MODES:
        raise ParameterError(f"unknown pad_mode {pad_mode!r}; valid: {', '.join(PAD_MODES)}")
    if batch_size is None:
        # bound the op's working set: chips of ~8 MB of input per call, 1 to 64 chips
        chip_bytes = math.prod(arr.shape[:-2]) * size_yx[0] * size_yx[1] * arr.dtype.itemsize
        batch_size = int(min(64, max(1, BATCH_BYTES // max(chip_bytes, 1))))
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ParameterError(f"batch_size must be a positive int, got {batch_size!r}")
    is_b = is_batched(op) if batched is None else bool(batched)
    in_nodata = input_nodata_of(arr, input_nodata)
    src_dtype = np.dtype(arr.dtype)
    # the op sees invalid inputs as NaN: integer input with nodata becomes float for it
    in_dtype = work_dtype(src_dtype, in_nodata, fill_value)
    if on_error not in ON_ERROR:
        raise ParameterError(f"unknown on_error {on_error!r}; valid: {', '.join(ON_ERROR)}")
    op = _bind_bands(op, arr)
    check_stitchable(op)  # flips/rotations of training augmentations cannot be stitched

    if output_bands is not None:
        output_shape = (int(output_bands),)
    declared = op_output_spec(op, op_lead, in_dtype)
    ratio = _ratio(scale if scale is not None else op_scale(op))
    if output_dtype is not None and output_shape is not None:
        out_lead, op_dtype = tuple(int(v) for v in output_shape), np.dtype(output_dtype)
    elif declared is not None and output_shape is None and output_dtype is None:
        out_lead, op_dtype = tuple(int(v) for v in declared[0]), np.dtype(declared[1])
    else:
        sample = _dry_run(
            op, batched=is_b, pass_mask=pass_mask, lead=op_lead, size=size_yx, dtype=in_dtype
        )
        out_lead = tuple(output_shape) if output_shape is not None else sample.shape[:-2]
        op_dtype = np.dtype(output_dtype) if output_dtype is not None else sample.dtype
        measured = _sample_ratio(sample.shape[-2:], size_yx)
        # a declared scale (scale=, or the op's own) must be what the op does: replacing
        # it silently would hide a wrong declaration (or a wrong op)
        _check_declared_scale(op, scale, ratio, measured, size_yx, sample.shape[-2:])
        ratio = measured
        if scale is None and ratio != (1, 1) and (op_scale(op) == 1 or not _whole_ratio(ratio)):
            # 64 -> 60 px is a crop as often as a 15/16 scale, and 128 -> 64 px a centre
            # crop (a 'valid' U-Net) as often as a ½ downsampling: only a scale keeps the
            # ratio on a chip twice the size (a crop removes the same pixels again)
            _confirm_scale(
                op,
                sample.shape[-2:],
                ratio,
                batched=is_b,
                pass_mask=pass_mask,
                lead=op_lead,
                size=size_yx,
                dtype=in_dtype,
            )
    _check_scalable_georef(arr, ratio, y, x)
    if op_dtype.kind not in "biuf":
        raise OperatorError(
            f"the operator returns dtype {op_dtype}; it must return numbers (bool, int, float)"
        )
    _check_ratio(
        ratio,
        {
            "scene height": arr.shape[-2],
            "scene width": arr.shape[-1],
            "chip height": size_yx[0],
            "chip width": size_yx[1],
            "stride y": stride_yx[0],
            "stride x": stride_yx[1],
        },
    )

    agg_lead = loop_shape + out_lead
    full_cover = _covers(grid)
    num, den = ratio
    data = _prepare_data(arr, size_yx, stride_yx, chunks, y, x, den=den)
    if agg == "vote" and n_classes is not None:
        # with the chips' own size (before a pointwise plan turns chips into block-wide
        # strips, which overhang no block)
        check_vote_memory(
            int(n_classes), agg_lead, (max(data.chunks[-2]), max(data.chunks[-1])), size_yx
        )
    if (
        op_pointwise(op)
        and ratio == (1, 1)
        and not pass_mask
        and on_error == "raise"
        and full_cover
        and agg in POINTWISE_AGGS
    ):
        # a pointwise op gives every chip covering a pixel the same value there, so each
        # of these merges returns op(pixel) whatever the grid: run the op once per pixel
        # (chips are strips of a block: no overlap, no halo reads) — the same result
        by, bx = int(data.chunks[-2][0]), int(data.chunks[-1][0])
        # in strips of whole block rows, ~1 MB of input each: the op's temporaries then
        # stay in cache (measured faster than one op call on the whole block)
        px_bytes = max(1, math.prod(arr.shape[:-2]) * arr.dtype.itemsize)
        rows = max(1, min(by, POINTWISE_TILE_BYTES // (bx * px_bytes)))
        while by % rows:
            rows -= 1
        size_yx = (rows, bx)
        grid = ChipGrid(grid.shape, size_yx, size_yx, "pad", False)
        batch_size, pad_mode, window, window_params = 1, "constant", "boxcar", None
    aggregator = make_aggregator(
        agg,
        out_dtype=op_dtype,
        lead=agg_lead,
        n_classes=n_classes,
        n_chips=grid.n_chips,
        # median/mode keep one value layer per chip over a pixel (from the final grid:
        # the pointwise plan's strips need one)
        layers=_most_chips(grid, ratio) if agg in LAYERED_AGGS else None,
        n_loop=n_loop,
    )
    res_dtype = aggregator.result_dtype()
    can_be_invalid = (
        not full_cover
        or on_error in ("mask", "skip")
        or src_dtype.kind in "fc"
        or is_nodata_value(in_nodata)
        or op_dtype.kind in "fc"
    )
    nd = resolve_nodata(
        res_dtype,
        explicit=nodata,
        source=in_nodata,
        labels=agg in ("vote", "soft_vote"),
        can_be_invalid=can_be_invalid,
    )
    # the fill for pixels nothing valid reaches depends on the result dtype found above
    aggregator.set_nodata(nd)
    out_nodata, encoded = nd.value, nd.encoded
    out_size = (size_yx[0] * num // den, size_yx[1] * num // den)
    win = None
    if aggregator.weighted:
        win = make_window(window, out_size, **dict(window_params or {}))

    plan = BlockPlan(grid, (data.chunks[-2], data.chunks[-1]))
    transform = transform_of(arr)
    crs = arr.rio.crs
    spec = EngineSpec(
        op=op,
        batched=is_b,
        batch_size=batch_size,
        pass_mask=pass_mask,
        window=win,
        agg=aggregator,
        size=size_yx,
        scene=grid.shape,
        n_chips_x=grid.x.n,
        out_lead=out_lead,
        nodata=in_nodata,
        fill_value=fill_value,
        pad_mode=pad_mode,
        work_dtype=None if in_dtype == src_dtype else in_dtype,
        scale=ratio,
        on_error=on_error,
        retries=int(retries) if on_error == "retry" else 0,
        retry_on=tuple(retry_on),
        transform=None if transform is None else tuple(transform)[:6],
        crs=None if crs is None else str(crs),
        loop=loop_shape,
    )
    lead = aggregator.result_lead()
    stats = aggregator.stat_names  # mean_std: a leading ("mean", "std") dim before the op's
    op_lead = lead[len(stats) > 0 :]
    dims = _out_dims(arr, op_lead, output_dims, n_loop)
    return Prepared(
        arr=arr,
        data=data,
        plan=plan,
        spec=spec,
        dims=("stat", *dims) if stats else dims,
        nodata=out_nodata,
        name=name if name is not None else _result_name(op, arr),
        band_names=_band_names(op, arr),
        encoded_nodata=encoded,
        attrs=_output_attrs(op, arr, op_lead),
    )


def prepare_from(
    obj: xr.DataArray | xr.Dataset,
    op: Callable[..., Any],
    params: Mapping[str, Any],
    *,
    caller: str = "apply",
    also: Sequence[str] = (),
) -> Prepared:
    """:func:`prepare` with its keywords in a mapping, unknown keywords rejected helpfully.

    Parameters
    ----------
    obj, op
        As for :func:`apply`.
    params
        Keyword arguments of :func:`prepare`. Any it does not take raise a
        :class:`~patchflow.errors.ParameterError` naming them: other tiling libraries'
        names get patchflow's equivalent with a worked conversion (``overlap=0.25`` with
        ``size=256`` → ``stride=192``), typos the closest valid name
        (:func:`patchflow.errors.check_keywords`).
    caller
        The public function named in that message (``"apply"``, ``"run"``...).
    also
        Keywords the caller handles itself: accepted by the check, not passed on.

    Returns
    -------
    Prepared
        The planned job.
    """
    from patchflow.errors import check_keywords

    skip = set(also)
    names = [
        p.name
        for p in inspect.signature(prepare).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    check_keywords(caller, params, [*names, *skip])
    return prepare(obj, op, **{k: v for k, v in params.items() if k not in skip})


def _split_over(
    arr: xr.DataArray, over: Any, y: Hashable, x: Hashable
) -> tuple[list[Hashable], list[Hashable]]:
    """``(looped dims, op dims)``: the op sees the last non-spatial dim plus ``over``."""
    others = [d for d in arr.dims if d not in (y, x)]
    if over is None:
        wanted: set[Hashable] = set()
    elif isinstance(over, str) or not isinstance(over, Sequence):
        wanted = {over}
    else:
        wanted = set(over)
    unknown = [d for d in wanted if d not in others]
    if unknown:
        raise DimensionError(
            f"over={over!r} names {unknown}, which are not non-spatial dims of the input "
            f"{tuple(arr.dims)}; over lists the dims the operator sees besides the band dim"
        )
    op_dims = [d for d in others if d in wanted or d == (others[-1] if others else None)]
    return [d for d in others if d not in op_dims], op_dims


def _check_coords(arr: xr.DataArray, y: Hashable, x: Hashable) -> None:
    """Spatial coords (if any) must be monotonic and evenly spaced: chips assume a grid."""
    for dim in (y, x):
        if dim not in arr.coords or arr.sizes[dim] < 3:
            continue
        values = np.asarray(arr.coords[dim].values, dtype=np.float64)
        step = np.diff(values)
        if not (np.all(step > 0) or np.all(step < 0)):
            raise DimensionError(
                f"the {dim!r} coordinate is not monotonic; sort it first "
                f"(obj.sortby({dim!r})) — chips need a regular pixel grid"
            )
        if not np.allclose(step, step[0], rtol=1e-6, atol=0):
            raise DimensionError(
                f"the {dim!r} coordinate is irregularly spaced (steps {step.min():g} to "
                f"{step.max():g}); resample onto a regular grid first (e.g. rio.reproject)"
            )


#: attrs that describe the *values*; an operator changes the values, so they are dropped
#: unless the operator states its own (``op.output_attrs()``)
VALUE_ATTRS = frozenset(
    {
        "units",
        "long_name",
        "standard_name",
        "description",
        "valid_range",
        "valid_min",
        "valid_max",
        "actual_range",
        "flag_values",
        "flag_meanings",
        "flag_masks",
        "comment",
        "TIFFTAG_IMAGEDESCRIPTION",  # GDAL's description of the input image
    }
)


def _output_attrs(op: Any, arr: xr.DataArray, lead: tuple[int, ...]) -> dict[Hashable, Any]:
    """Attrs of the result: the input's that are not about values, plus the op's own.

    Encoding attrs (:data:`DROPPED_ATTRS`: ``_FillValue``, ``scale_factor``, ``add_offset``,
    ``valid_range`` …) never carry over, whatever the op; ``long_name``,
    ``units`` and the like only come from the operator (``output_attrs()``), because what
    was true of the input's values (``units: DN``) is rarely true of the result's — unless
    the operator only passes values through (``keeps_values()``, e.g. ``SelectBands``).
    """
    n_in = arr.shape[-3] if arr.ndim >= 3 else 1
    n_out = lead[-1] if lead else 1

    def band_names(key: Hashable, value: Any) -> bool:
        # rioxarray keeps GDAL band descriptions as a per-band ``long_name`` tuple: they
        # name the bands, so they stay while the op keeps the band count
        per_band = isinstance(value, list | tuple) and len(value) == n_in and n_in > 1
        return key == "long_name" and per_band and n_out == n_in

    keeps = getattr(op, "keeps_values", None)
    same = getattr(op, "keeps_units", None)
    # values changed in the same units (haze removed from reflectance): "units" stays true
    unit = {"units"} if callable(same) and same() else set()
    if callable(keeps) and keeps():  # a band subset: what was true of the values still is
        # (but not how they were packed: the result is never packed)
        kept = {k: v for k, v in arr.attrs.items() if k not in DROPPED_ATTRS}
    else:
        kept = {
            k: v
            for k, v in arr.attrs.items()
            if k not in DROPPED_ATTRS
            and (k not in VALUE_ATTRS or k in unit or band_names(k, v))
            and not str(k).startswith("STATISTICS_")
        }
    if n_out != n_in:
        # per-band lists (one entry per input band) no longer line up with the bands
        kept = {
            k: v
            for k, v in kept.items()
            if not (isinstance(v, list | tuple) and len(v) == n_in and n_in > 1)
        }
    described = _described_bands(op, arr.attrs.get("long_name"), n_in, n_out)
    if described is not None:
        kept["long_name"] = described
    declared = getattr(op, "output_attrs", None)
    if callable(declared):
        extra = declared()
        if extra:
            kept.update(extra)
    return kept


def _described_bands(op: Any, names: Any, n_in: int, n_out: int) -> tuple[str, ...] | None:
    """GDAL band descriptions (rioxarray's per-band ``long_name``) through the op's
    ``output_band_names``, so they follow a band selection or reordering
    (``SelectBands([3, 0])``: the 4th and the 1st description); ``None`` when the op does
    not name its bands, or names a single band it computed (NDVI names its own)."""
    if not (isinstance(names, list | tuple) and len(names) == n_in and n_in > 1):
        return None
    keeps = getattr(op, "keeps_values", None)
    if n_out < 2 and not (callable(keeps) and keeps()):
        return None
    namer = getattr(op, "output_band_names", None)
    if namer is None:
        return None
    try:
        out = namer([str(v) for v in names])
    except Exception:  # a namer that needs real band labels
        return None
    if out is None or len(out) != n_out:
        return None
    return tuple(str(v) for v in out)


def _result_name(op: Any, arr: xr.DataArray) -> Hashable:
    """The op's output name (``"ndvi"``) if it has one, else the input's, else ``"result"``."""
    namer = getattr(op, "output_band_names", None)
    if namer is not None:
        labels = band_labels(arr) or [
            f"band_{k}" for k in range(arr.shape[-3] if arr.ndim > 2 else 1)
        ]
        try:
            names = namer(labels)
        except Exception:  # a namer that needs real labels: fall back to the input's name
            names = None
        if names is not None and len(names) == 1 and not str(names[0]).startswith("band_"):
            return str(names[0])
    if arr.name is not None and not str(arr.name).startswith("patchflow-"):
        return arr.name
    return "result"


def _band_names(op: Any, arr: xr.DataArray) -> tuple[Hashable, ...] | None:
    """Output band labels an operator derives from the input's (e.g. ``("ndvi",)``).

    ``None``: the operator does not name its bands (the input's labels then stay if the
    band count does). ``()``: it names them but patchflow cannot label them (the result
    then has no band coordinate rather than stale labels).

    Bands without string labels (rioxarray's numbers ``1, 2, 3``) go through the namer as
    position marks, so an op that passes bands through (``SelectBands([2, 0])``) carries
    their labels along (``3, 1``) and one that computes new bands names them (``ndvi``);
    a mix of both is unlabelled.
    """
    namer = getattr(op, "output_band_names", None)
    if namer is None:
        return None
    labels = band_labels(arr)
    if labels is not None:
        names = namer(labels)
        return None if names is None else tuple(str(n) for n in names)
    if arr.ndim < 3:
        return None
    band = arr.dims[-3]
    marks = [f"\x00patchflow-band-{k}" for k in range(arr.shape[-3])]
    try:
        names = namer(marks)
    except Exception:  # a namer that needs real labels: its bands are unknown
        return ()
    if names is None:
        return None
    names = [str(n) for n in names]
    taken = [marks.index(n) for n in names if n in marks]
    if len(taken) == len(names):
        # passed-through bands: the input's labels, if it has any
        if band not in arr.coords:
            return None
        values = arr.coords[band].values
        return tuple(values[k].item() for k in taken)
    return tuple(names) if not taken else ()


def _bind_bands(op: Any, arr: xr.DataArray) -> Any:
    """Let ops that address bands by name resolve them against the band coordinate."""
    bind = getattr(op, "bind", None)
    labels = band_labels(arr)
    return op if bind is None or labels is None else bind(labels)


def _ratio(value: Any) -> tuple[int, int]:
    try:
        frac = Fraction(value).limit_denominator(1024)
    except (TypeError, ValueError):
        raise ParameterError(f"scale must be a positive number, got {value!r}") from None
    if frac <= 0:
        raise ParameterError(f"scale must be positive, got {value!r}")
    return frac.numerator, frac.denominator


def _sample_ratio(out: tuple[int, ...], size: tuple[int, int]) -> tuple[int, int]:
    ry, rx = Fraction(int(out[0]), size[0]), Fraction(int(out[1]), size[1])
    if ry != rx:
        raise OperatorError(
            f"the operator maps {size} chips to {tuple(out)}: the output must be the chip "
            "scaled by the same factor along y and x"
        )
    return ry.numerator, ry.denominator


def _check_declared_scale(
    op: Any,
    scale: Any,
    declared: tuple[int, int],
    measured: tuple[int, int],
    size: tuple[int, int],
    out: tuple[int, ...],
) -> None:
    """Refuse a declared scale the dry run contradicts.

    ``scale=`` declares ``declared``; without it an :class:`~patchflow.ops.Operator`'s own
    ``scale`` does when it is not 1 (1 is every op's default, so it declares nothing).

    Raises
    ------
    OperatorError
        Naming the declared and the measured scale.
    """
    if declared == measured:
        return
    shown = tuple(int(v) for v in out)
    did = f"maps a {size} chip to {shown}, a scale of {measured[0]}/{measured[1]}"
    if scale is not None:
        raise OperatorError(
            f"scale={scale!r} declares {declared[0]}/{declared[1]} output pixels per input "
            f"pixel, but the operator {did}; declare scale={measured[0]}/{measured[1]} (or "
            "leave scale= out), or fix the operator's output size"
        )
    if op_scale(op) != 1:
        raise OperatorError(
            f"the operator declares scale {declared[0]}/{declared[1]} ({type(op).__name__}"
            f".scale) but {did}; correct its scale, or pass scale={measured[0]}/"
            f"{measured[1]} if that is the resolution change it makes"
        )


def _check_scalable_georef(
    arr: xr.DataArray, ratio: tuple[int, int], y: Hashable, x: Hashable
) -> None:
    """Refuse to rescale coords whose pixel size patchflow cannot know.

    The output's coords at a new resolution come from the input's transform. Along an
    axis 1 pixel long, its one coordinate gives no pixel size: only a transform recorded
    on the input does (rioxarray otherwise falls back to the identity transform, which
    would put the result at 0.25, 0.75, … in place of its real coordinates).

    Raises
    ------
    DimensionError
        Naming the 1-pixel axis and the fix (``rio.write_transform``).
    """
    if ratio == (1, 1) or (y not in arr.coords and x not in arr.coords):
        return
    short = [str(d) for d in (y, x) if arr.sizes[d] == 1]
    if not short:
        return
    from rioxarray.exceptions import OneDimensionalRaster

    try:
        arr.rio.resolution(recalc=True)  # only a recorded transform gives it here
    except OneDimensionalRaster:
        raise DimensionError(
            f"the scene is 1 pixel along {', '.join(repr(d) for d in short)}, so its pixel "
            f"size cannot be read from the coordinates, and the operator changes the "
            f"resolution (scale {ratio[0]}/{ratio[1]}): record the scene's transform first, "
            f"e.g. scene.rio.write_transform(Affine(res_x, 0, left, 0, -res_y, top))"
        ) from None


def _whole_ratio(ratio: tuple[int, int]) -> bool:
    """Whether ``num/den`` is a whole factor ``k`` or its inverse ``1/k``."""
    return ratio[0] == 1 or ratio[1] == 1


def _confirm_scale(
    op: Callable[..., Any],
    out: tuple[int, ...],
    ratio: tuple[int, int],
    *,
    batched: bool,
    pass_mask: bool,
    lead: tuple[int, ...],
    size: tuple[int, int],
    dtype: np.dtype,
) -> None:
    """Refuse an undeclared ratio unless a second dry run shows it is a scale.

    The first dry run mapped ``size`` to ``out`` (``ratio`` = ``num/den``). A resolution
    change maps a chip twice the size to twice ``out``; an op that crops (a 'valid'
    convolution, a centre crop: a fixed number of pixels lost) does not — taken as a
    scale, its output would be resampled onto the wrong pixels. An op that fails on the
    larger chip (a model built for one input size) cannot show which it is, even at a
    whole ``k`` or ``1/k``: a 128 → 64 px centre crop has a ½ downsampling's shapes. It
    is refused too, until ``scale=`` declares the change.

    Raises
    ------
    OperatorError
        Naming the chip sizes in and out and the fixes: pad the output back to the chip
        size, or declare ``scale=`` for a resolution change.
    """
    num, den = ratio
    twice = (2 * size[0], 2 * size[1])
    fix = (
        f"if the operator crops its chip (e.g. a 'valid' convolution), pad its output back "
        f"to the chip size {size}; if it changes the resolution by {num}/{den}, declare "
        f"scale={num}/{den}"
    )
    try:
        again = _dry_run(
            op, batched=batched, pass_mask=pass_mask, lead=lead, size=twice, dtype=dtype
        )
    except OperatorError as exc:
        raise OperatorError(
            f"the operator maps a {size} chip to {tuple(int(v) for v in out)}, a ratio of "
            f"{num}/{den}, and fails on a {twice} chip, so patchflow cannot tell a "
            f"resolution change from a crop ({exc}); {fix}"
        ) from exc
    got = tuple(int(v) for v in again.shape[-2:])
    if got != (2 * int(out[0]), 2 * int(out[1])):
        raise OperatorError(
            f"the operator maps a {size} chip to {tuple(int(v) for v in out)} but a "
            f"{twice} chip to {got}: it removes pixels instead of changing the resolution "
            f"(chip size in and out must keep one ratio); {fix}"
        )


def _check_ratio(ratio: tuple[int, int], lengths: dict[str, int]) -> None:
    num, den = ratio
    if den == 1:
        return
    bad = {k: v for k, v in lengths.items() if (v * num) % den}
    if bad:
        listed = ", ".join(f"{k} {v}" for k, v in bad.items())
        raise ParameterError(
            f"the operator scales by {num}/{den}, so every length must be a multiple of {den} "
            f"(not: {listed}); crop the scene or choose sizes/strides divisible by {den}"
        )


@dataclass(frozen=True)
class Prepared:
    """A planned job: input as a dask array, block plan and engine spec."""

    arr: xr.DataArray
    data: da.Array
    plan: BlockPlan
    spec: EngineSpec
    dims: tuple[Hashable, ...]
    nodata: Any
    name: Hashable | None
    #: output band labels (see :func:`_band_names`; ``()``: drop the input's)
    band_names: tuple[Hashable, ...] | None = None
    #: a float result's on-disk nodata (an explicit ``nodata=``), for ``rio.to_raster``
    encoded_nodata: Any = None
    #: attrs that still describe the output (see :func:`_output_attrs`)
    attrs: Mapping[Hashable, Any] = field(default_factory=dict)

    def result(self) -> xr.DataArray:
        """The lazy stitched DataArray."""
        lazy = build_graph(self.data, self.spec, self.plan)
        out = _wrap(
            self.arr,
            lazy,
            self.dims,
            self.nodata,
            self.name,
            self.spec.scale,
            encoded=self.encoded_nodata,
            attrs=self.attrs,
        )
        band = self.dims[-1] if self.dims else None
        if self.band_names is not None and band is not None:
            if out.sizes[band] == len(self.band_names):
                out = out.assign_coords({band: list(self.band_names)})
            elif band in out.coords:
                # the op names its bands but not these: no labels rather than stale ones
                out = out.drop_vars([band])
        if self.spec.agg.stat_names:
            out = out.assign_coords(stat=list(self.spec.agg.stat_names))
        return out
