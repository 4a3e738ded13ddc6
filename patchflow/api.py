"""The free functions users call: ``apply``, ``run``, ``resume``, ``sample`` and friends.

:func:`apply` and :func:`plan_grid` live here; the rest are defined next to the machinery
they drive and gathered here so that one module lists the whole job-level API:

==================  ======================================================================
function            home
==================  ======================================================================
apply               here: prepare (:mod:`patchflow.engine.prepare`) → graph → DataArray
plan_grid           here: the chips ``apply`` would use, as a :class:`ChipLayout`
run, resume         :mod:`patchflow.io.store` (streamed, resumable Zarr output)
open_result         :mod:`patchflow.io.store`
check_store         :mod:`patchflow.io.store`
sample              :mod:`patchflow.sampling.chips`
stitch              :mod:`patchflow.sampling.stitch` (``stitch_anchors``: former name)
write_chips         :mod:`patchflow.io.chips`
open_chips          :mod:`patchflow.io.chips`
zonal_stats         :mod:`patchflow.sampling.zonal`
sample_points       :mod:`patchflow.sampling.point_values`
points_in_chips     :mod:`patchflow.sampling.point_values` (point layers cut by a sampler)
apply_vector        :mod:`patchflow.sampling.vectors` (geometries from chips, de-duplicated)
polygon_chips       :mod:`patchflow.sampling.zonal`
global_percentiles  here: scene percentiles for ``PercentileClip(per="global")``
dos1                here: per-band dark objects (streamed) → a ``DOS1`` operator
==================  ======================================================================

Examples
--------
>>> import numpy as np, xarray as xr
>>> out = apply(xr.DataArray(np.ones((2, 300, 300)), dims=("band", "y", "x")),
...             lambda c: c[:1] * 2, size=128, stride=96)
>>> float(out.max())
2.0
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np
import xarray as xr

from patchflow._xr import grid_mappings_as_coords, spatial_dims, transform_of
from patchflow.engine.prepare import prepare, prepare_from
from patchflow.errors import ParameterError
from patchflow.io.chips import open_chips, write_chips
from patchflow.io.sources import check_band_nodata
from patchflow.io.store import check_store, open_result, resume, run
from patchflow.options import (
    DEFAULT_SIZE,
    Agg,
    Boundary,
    OnError,
    PadMode,
    SizeSpec,
    given_keywords,
)
from patchflow.plan.grid import ChipGrid, size_pair
from patchflow.plan.layout import ChipLayout
from patchflow.plan.windows import WindowSpec
from patchflow.sampling.chips import sample
from patchflow.sampling.point_values import points_in_chips, sample_points
from patchflow.sampling.stitch import stitch, stitch_anchors
from patchflow.sampling.vectors import apply_vector
from patchflow.sampling.zonal import polygon_chips, zonal_stats

if TYPE_CHECKING:
    from dask.delayed import Delayed

    from patchflow.ops.radiometry import DOS1

__all__ = [
    "ChipLayout",
    "apply",
    "apply_vector",
    "check_store",
    "dos1",
    "global_percentiles",
    "open_chips",
    "open_result",
    "plan_grid",
    "points_in_chips",
    "polygon_chips",
    "resume",
    "run",
    "sample",
    "sample_points",
    "stitch",
    "stitch_anchors",
    "write_chips",
    "zonal_stats",
]


def apply(
    obj: xr.DataArray | xr.Dataset,
    op: Callable[..., Any],
    *,
    size: SizeSpec = DEFAULT_SIZE,
    stride: SizeSpec = 192,
    window: WindowSpec = "hann",
    window_params: Mapping[str, Any] | None = None,
    boundary: Boundary = "shift",
    pad_mode: PadMode = "constant",
    agg: Agg = "overlap_add",
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
    on_error: OnError = "raise",
    retries: int = 3,
    retry_on: Sequence[type[BaseException]] = (OSError,),
    per_variable: bool = False,
    name: Hashable | None = None,
    **unknown: Any,
) -> xr.DataArray:
    """Run ``op`` on overlapping chips of ``obj`` and stitch the results, lazily.

    Parameters
    ----------
    obj
        A DataArray with spatial dims (``y``/``x`` or what rioxarray recognises), lazy
        (dask) or in memory, or a Dataset whose data variables are stacked, in
        ``data_vars`` order, along a leading ``variable`` dim.
    op
        Per-chip operator. Plain: ``(non-spatial…, h, w) -> (out…, h, w)``. Batched
        (``batched=True``, :func:`patchflow.batched`, or ``op.batched``):
        ``(n, non-spatial…, h, w) -> (n, out…, h, w)``.
    size, stride
        Chip size and stride in pixels, an int or a ``(y, x)`` pair.
    window, window_params
        Blending window (name, 2-D array, callable ``(h, w)``) and its parameters
        (``sigma``, ``alpha``, ``power``).
    boundary, pad_mode
        Boundary policy (``"shift"``, ``"pad"``, ``"drop"``, ``"raise"``) and, for
        ``"pad"``, how chips past the edge are filled (numpy pad modes).
    agg, n_classes
        Aggregation: ``"overlap_add"``, ``"mean"``, ``"max"``, ``"min"``, ``"vote"``,
        ``"soft_vote"``, ``"centre"``, ``"sum"``, ``"weighted_sum"``, the uncertainty
        merges ``"mean_std"`` (result gains a leading ``stat`` dim: mean, std) and
        ``"inverse_variance"`` (the op returns mean and variance along its first output
        axis, which becomes ``stat``: mean, variance), and the exact ``"median"`` and
        ``"mode"`` (one value layer per chip over a pixel; see
        :mod:`patchflow.engine.aggregate`); ``n_classes`` for ``"vote"``.
    batched
        Whether ``op`` takes a batch of chips (see ``op`` above). Default: ``op.batched``
        (set by :func:`patchflow.batched`), else plain.
    batch_size
        Chips per operator call (batched ops) and per weighting step. Default: as many
        chips as hold ~8 MB of input (1 to 64), which bounds the op's working memory.
    chunks
        Spatial block size override (int, ``(y, x)`` or ``{dim: size}``).
    output_dtype, output_shape, output_bands, output_dims
        What ``op`` returns per chip (non-spatial shape; ``output_bands=n`` means
        ``(n,)``). With dtype and shape given the dry run is skipped. ``output_dims`` names
        the output's non-spatial dims.
    nodata
        Nodata of the *result* (see :mod:`patchflow.engine.nodata` for the rules): integer results
        use it for invalid pixels, float results hold NaN in memory and get it as their
        encoded (on-disk) nodata. Default: NaN for floats; for integers the input's nodata,
        else the dtype's max/min, else none when no pixel can be invalid. A valid result
        equal to it raises :class:`~patchflow.errors.NodataCollisionError`.
    input_nodata
        Override the input's nodata (default: rioxarray's ``nodata``/``encoded_nodata``).
        Validity is per element: one band's nodata leaves the pixel's other bands valid.
    fill_value, pass_mask
        ``None`` (default): invalid input values reach ``op`` as NaN (integer input with
        nodata is promoted to float64 for the op), and NaN/inf outputs carry zero weight.
        A number: invalid values are replaced by it (for models that cannot take NaN) and
        the output pixel is invalid wherever any input element under it was. With
        ``pass_mask`` the op is called as ``op(chips, valid_mask)`` (pixel validity).
    allow_gaps
        Allow ``stride > size``.
    scale
        Output pixels per input pixel (e.g. 2 for ×2 super-resolution, 0.25 for a stride-4
        encoder). Default: ``op.scale`` if the op declares it, else found by the dry run.
    over
        Non-spatial dims the op sees besides the band (last non-spatial) dim. Default: none,
        so for ``(time, band, y, x)`` the op runs per time step on ``(band, h, w)``;
        ``over="time"`` hands it ``(time, band, h, w)`` (e.g. a temporal composite).
    on_error, retries, retry_on
        What a chip whose operator call raises does. ``"raise"`` (default): an
        :class:`~patchflow.errors.OperatorError` naming the chip, its pixel window and CRS
        bounds. ``"skip"``: every result pixel the chip covers is nodata (NaN for floats),
        even where other chips cover it, so no pixel silently gets a different blend; every
        other pixel is exactly what the run without the failure gives; an integer result
        without a nodata value gets one. ``"mask"``: the chip gets zero weight, so the
        other chips covering its pixels fill them (a blend of fewer chips there) and pixels
        no other chip reaches are nodata. ``"retry"``: ``retries`` more attempts on
        ``retry_on`` exceptions, then as ``"raise"``. With ``"skip"``/``"mask"`` each
        failed chip is reported as a :class:`~patchflow.errors.ChipFailedWarning` naming
        its index, bounds and exception (raised where the stitch task runs: in the caller
        under the threaded/synchronous schedulers); :func:`patchflow.run` records them in
        the store instead (``RunReport.chip_errors``, ``check_store(store).chip_errors``,
        ``patchflow inspect STORE``).
    per_variable
        Dataset input only: apply ``op`` to each data variable separately and return a
        Dataset (default: variables stacked along ``variable`` into one DataArray).
    name
        Name of the output DataArray.
    **unknown
        Not options: a catch-all so that keywords ``apply`` does not take raise
        :class:`~patchflow.errors.ParameterError` with the fix instead of Python's
        ``TypeError`` (other libraries' names get patchflow's equivalent, ``overlap=0.25``
        → ``stride=192``; typos the closest valid name). Any keyword here is an error.

    Returns
    -------
    xarray.DataArray
        Lazy, dims ``(out dims…, y, x)``, same y/x coords, CRS and transform as the input,
        nodata in ``rio.nodata`` (NaN for float outputs).

    Raises
    ------
    ParameterError
        An unknown keyword, or an option with a value patchflow cannot use.

    Examples
    --------
    >>> import numpy as np, xarray as xr, patchflow
    >>> scene = xr.DataArray(np.random.rand(2, 600, 500), dims=("band", "y", "x"))
    >>> out = patchflow.apply(scene, lambda c: c[1:] - c[:1], size=128, stride=96)
    >>> out.shape
    (1, 600, 500)
    >>> bool(abs(out - (scene[1:] - scene[:1].values)).max() < 1e-9)
    True
    """
    # prepare's keywords this call sets (unknown ones fail in prepare_from)
    params = {**given_keywords(apply, locals(), prepare), **unknown}
    check_band_nodata(obj, input_nodata)
    also = ("per_variable",)  # handled here: named as valid in the unknown-keyword message
    if isinstance(obj, xr.Dataset) and per_variable:
        # each variable on its own (its own bands/dtype), results gathered in a Dataset;
        # a CF grid-mapping variable (spatial_ref) is the variables' CRS, not data
        obj = grid_mappings_as_coords(obj)
        results = {
            name: prepare_from(var, op, params, also=also).result()
            for name, var in obj.data_vars.items()
        }
        return _gather(results, obj.attrs)  # type: ignore[return-value]
    return prepare_from(obj, op, params, also=also).result()


def _gather(results: dict[Hashable, xr.DataArray], attrs: Mapping[Any, Any]) -> xr.Dataset:
    """Per-variable results in one Dataset, never outer-joined.

    A Dataset aligns its variables, so two results with different band labels (or band
    counts) would be padded with NaN where the other has a band. Non-spatial dims that do
    not line up get the variable's name as a suffix instead (``band_dn``, ``band_refl``).
    """
    arrays = list(results.values())
    try:
        xr.align(*arrays, join="exact")
    except ValueError:
        renamed = {}
        for name, arr in results.items():
            y, x = arr.dims[-2:]
            lead = {d: f"{d}_{name}" for d in arr.dims if d not in (y, x)}
            renamed[name] = arr.rename(lead)
        results = renamed
    return xr.Dataset(results, attrs=dict(attrs))


def plan_grid(
    obj: xr.DataArray | xr.Dataset,
    *,
    size: SizeSpec = 256,
    stride: SizeSpec = 192,
    boundary: Boundary = "shift",
    allow_gaps: bool = False,
) -> ChipLayout:
    """Plan the chips ``apply`` would use on ``obj``, without building anything.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> layout = plan_grid(xr.DataArray(np.zeros((1000, 700)), dims=("y", "x")))
    >>> layout.grid.counts
    (5, 4)
    """
    y, x = spatial_dims(obj)
    shape = (obj.sizes[y], obj.sizes[x])
    grid = ChipGrid(
        shape,
        size_pair(size, "size", dims=(y, x)),
        size_pair(stride, "stride", dims=(y, x)),
        boundary,
        allow_gaps,
    )
    return ChipLayout(grid, transform_of(obj), obj.rio.crs)


def global_percentiles(
    data: Any,
    p_min: float = 2.0,
    p_max: float = 98.0,
    *,
    per_band: bool = True,
    max_samples: int = 1_000_000,
    nodata: Any = None,
) -> tuple[Any, Any]:
    """Scene-wide percentiles for ``PercentileClip(per="global", limits=...)``.

    Method: *exact* percentiles (``numpy.nanpercentile``) of a regular strided sample —
    every ``step``-th row and column, with ``step`` the smallest making at most
    ``max_samples`` pixels per band. Scenes up to ``max_samples`` pixels are used whole
    (exact); larger ones are approximate (sampling error only: a 10⁶-pixel sample puts a
    percentile within about ±0.1 percentile point). The sample is read lazily through dask,
    chunk by chunk, so the scene is never loaded whole.

    Parameters
    ----------
    data
        DataArray (spatial dims found via rioxarray, others moved first) or array
        ``(*lead, y, x)``, dask or numpy.
    p_min, p_max
        Percentiles in [0, 100].
    per_band
        ``True``: one value per element of the first non-spatial dim (lists);
        ``False`` (or no non-spatial dim): one value over everything (floats).
    max_samples
        Pixels per band in the sample.
    nodata
        Value to ignore besides NaN (default: a DataArray's ``rio.nodata``).

    Returns
    -------
    (lo, hi)
        Floats, or per-band lists of floats.

    Examples
    --------
    >>> from patchflow.io.synthetic import make_scene
    >>> lo, hi = global_percentiles(make_scene((300, 300)), 2, 98)
    >>> len(lo), all(a < b for a, b in zip(lo, hi))
    (2, True)
    """
    if not 0.0 <= p_min < p_max <= 100.0:
        raise ParameterError(f"need 0 <= p_min < p_max <= 100, got {p_min!r}, {p_max!r}")
    arr = data
    if hasattr(data, "dims") and hasattr(data, "rio"):
        from patchflow._xr import spatial_dims

        check_band_nodata(data, nodata, keyword="nodata")
        y, x = spatial_dims(data)
        others = [d for d in data.dims if d not in (y, x)]
        arr = data.transpose(*others, y, x).data
        if nodata is None:
            nodata = data.rio.nodata
    if arr.ndim < 2:
        raise ParameterError(f"global_percentiles needs (…, y, x) data, got shape {arr.shape}")
    h, w = arr.shape[-2:]
    step = max(1, math.ceil(math.sqrt(h * w / max(int(max_samples), 1))))
    sample = arr[..., ::step, ::step]
    if hasattr(sample, "compute"):
        sample = sample.compute()
    sample = np.asarray(sample, dtype=np.float64)
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        sample = np.where(sample == nodata, np.nan, sample)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if per_band and sample.ndim > 2:
            flat = sample.reshape(sample.shape[0], -1)
            lo, hi = np.nanpercentile(flat, [p_min, p_max], axis=1)
            return [float(v) for v in lo], [float(v) for v in hi]
        lo, hi = np.nanpercentile(sample, [p_min, p_max])
    return float(lo), float(hi)


@overload
def dos1(
    data: Any,
    *,
    percentile: float | Literal["min"] = ...,
    bands: Sequence[int | str] | None = ...,
    haze_fraction: float = ...,
    nodata: Any = ...,
    compute: Literal[True] = ...,
) -> DOS1: ...
@overload
def dos1(
    data: Any,
    *,
    percentile: float | Literal["min"] = ...,
    bands: Sequence[int | str] | None = ...,
    haze_fraction: float = ...,
    nodata: Any = ...,
    compute: Literal[False],
) -> Delayed: ...
def dos1(
    data: Any,
    *,
    percentile: float | Literal["min"] = 0.01,
    bands: Sequence[int | str] | None = None,
    haze_fraction: float = 0.01,
    nodata: Any = None,
    compute: bool = True,
) -> DOS1 | Delayed:
    """DOS1 dark-object subtraction, pass one: the scene's per-band dark objects.

    Returns a :class:`~patchflow.ops.radiometry.DOS1` operator holding the dark values in
    its config, so pass two is just that operator (``patchflow.apply``/``run``, alone or
    after :class:`~patchflow.ops.radiometry.Radiometric`) and ``patchflow.resume``
    rebuilds it from the store without recomputing anything.

    Method: *exact*. Each chunk contributes its valid-pixel count and its ``k`` smallest
    valid values (``k`` from :func:`~patchflow.ops.radiometry.dark_k`, enough for the
    percentile of the whole scene); a tree of merges keeps ``k`` per band, and the result
    equals ``numpy.percentile(valid_values, percentile)`` (linear method) — or their
    minimum — to the last bit. One streamed dask pass, chunk by chunk: the scene is never
    in memory whole: each task holds one chunk, or the ``k`` smallest values of up to 8
    chunks (``k`` ≈ pixels × percentile / 100: 0.01 % of a 10980² band is 12 058
    values). Dark objects use small percentiles; a large one (say 30) would hold that
    share of the scene per merge, as float64.

    Parameters
    ----------
    data
        The scene in the units DOS1 will run on (usually reflectance: e.g.
        ``patchflow.apply(dn, Radiometric.sentinel2(dn))``, lazy): a DataArray with
        spatial dims (others first: the first non-spatial dim is the band) or an array
        ``(band, …, y, x)`` / ``(y, x)``, dask or numpy.
    percentile
        The dark object: ``"min"``, or a percentile in percent (0.01: the value below which
        1 pixel in 10 000 lies — robust to a few dead pixels), per band, over valid pixels.
    bands
        Bands (0-based positions, or names of the band coordinate) to compute and correct;
        the operator passes the others through. Default: every band.
    haze_fraction
        See :class:`~patchflow.ops.radiometry.DOS1` (0.01: the 1 % dark object).
    nodata
        Value marking invalid pixels besides NaN (default: the DataArray's nodata, as
        :func:`patchflow.engine.nodata.input_nodata` finds it).
    compute
        ``False``: return a ``dask.delayed`` object computing to the operator (nothing
        is read until you compute it).

    Raises
    ------
    NoValidPixelsError
        A band has no valid pixel (when computed).
    ParameterError
        A bad percentile, band or input shape.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> scene = xr.DataArray(np.arange(2 * 100.0).reshape(2, 10, 10) / 1000,
    ...                      dims=("band", "y", "x"))
    >>> dos1(scene, percentile="min")
    DOS1(dark=[0.0, 0.1], haze_fraction=0.01)
    """
    import dask
    import dask.array as da

    from patchflow.engine.nodata import input_nodata, is_value
    from patchflow.ops.radiometry import (
        band_position,
        dark_k,
        dark_partial,
        dos1_from_partials,
        merge_dark_partials,
    )

    dark_k(percentile, 1)  # checks percentile now, not when computed
    names: list[str] | None = None
    arr = data
    if isinstance(data, xr.DataArray):
        check_band_nodata(data, nodata, keyword="nodata")
        y, x = spatial_dims(data)
        others = [d for d in data.dims if d not in (y, x)]
        data = data.transpose(*others, y, x)
        nodata = input_nodata(data, nodata)
        if others and data[others[0]].dtype.kind in "UO":
            names = [str(v) for v in data[others[0]].values.tolist()]
        arr = data.data
    if not hasattr(arr, "ndim") or arr.ndim < 2:
        raise ParameterError(f"dos1 needs (band, …, y, x) or (y, x) data, got {type(arr).__name__}")
    arr = da.asarray(arr)
    if arr.ndim == 2:
        arr = arr[None]
    positions = list(range(arr.shape[0]))
    if bands is not None:
        positions = [band_position(b, names, arr.shape[0]) for b in bands]
    nd = float(nodata) if is_value(nodata) else None
    picked = arr[positions].rechunk({0: 1})  # one band per chunk: partials are per band
    k = dark_k(percentile, math.prod(picked.shape[1:]))
    partial = dask.delayed(dark_partial, pure=True)
    merge = dask.delayed(merge_dark_partials, pure=True)
    blocks = picked.to_delayed()
    per_band = []
    for b in range(len(positions)):
        parts = [partial(block, k=k, nodata=nd) for block in blocks[b].ravel()]
        while len(parts) > 1:  # a tree: never every chunk's values in one task
            parts = [merge(parts[i : i + 8], k=k) for i in range(0, len(parts), 8)]
        per_band.append(parts[0])
    labels = [names[p] if names is not None else str(p) for p in positions]
    made = dask.delayed(dos1_from_partials, pure=True)(
        per_band,
        percentile=percentile,
        haze_fraction=haze_fraction,
        bands=None if bands is None else list(bands),
        labels=labels,
    )
    return made.compute() if compute else made
