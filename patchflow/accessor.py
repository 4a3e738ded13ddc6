"""The ``.patch`` accessor on DataArray and Dataset: a thin veneer over the free functions.

Nothing is cached on the accessor: CRS and transform are re-read through rioxarray on each
call, so an object whose georeferencing changes is never processed with stale metadata.

Every method spells out the keywords of the free function it calls (same names, defaults
and annotations; ``tests/test_signatures.py`` checks they stay the same), so ``help()``
and editor completion show them: a shared ``**kwargs: Unpack[TypedDict]`` would hide them
from ``inspect.signature`` and IPython's keyword completion. Each passes on only what the
call sets (:func:`patchflow.options.given_keywords`), so the free function's defaults
apply.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from types import ModuleType
from typing import IO, Any, Generic, TypeVar

import numpy as np
import xarray as xr

from patchflow.errors import check_keywords
from patchflow.io.report import RunReport
from patchflow.options import (
    DEFAULT_SIZE,
    DEFAULT_STATS,
    Agg,
    Boundary,
    Dedup,
    OnError,
    PadMode,
    RunMode,
    SampleMethod,
    SizeSpec,
    VectorOutput,
    ZarrFormat,
    given_keywords,
)
from patchflow.plan.layout import ChipLayout, PolygonChip
from patchflow.plan.samplers import Sampler
from patchflow.plan.windows import WindowSpec

__all__ = ["PatchAccessor"]

T = TypeVar("T", xr.DataArray, xr.Dataset)


def _api() -> ModuleType:
    """The free functions, imported on first use: registering the accessor (at
    ``import patchflow``) costs no engine, dask or zarr import."""
    from patchflow import api

    return api


def _keywords(fn: Callable[..., Any]) -> list[str]:
    """The keyword-only parameter names of ``fn``."""
    params = inspect.signature(fn).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


class PatchAccessor(Generic[T]):
    """``obj.patch.apply(op, ...)`` and ``obj.patch.grid(...)``.

    Examples
    --------
    >>> import numpy as np, xarray as xr, patchflow
    >>> scene = xr.DataArray(np.ones((1, 300, 300)), dims=("band", "y", "x"))
    >>> scene.patch.grid(size=128, stride=96).grid.counts
    (3, 3)
    """

    def __init__(self, obj: T) -> None:
        self._obj: T = obj

    def apply(
        self,
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
        """Same as :func:`patchflow.apply` on this object.

        Every keyword is documented at :func:`patchflow.apply`. ``**unknown`` is no option:
        it lets keywords ``apply`` does not take raise
        :class:`~patchflow.errors.ParameterError` with the fix (``overlap=`` → ``stride=``,
        typos → the closest valid name) instead of Python's ``TypeError``.
        """
        apply = _api().apply
        return apply(
            self._obj, op, **given_keywords(PatchAccessor.apply, locals(), apply), **unknown
        )

    def run(
        self,
        op: Callable[..., Any],
        *,
        store: str | os.PathLike[str],
        mode: RunMode = "w",
        resume: bool = False,
        overwrite: bool = False,
        keep_sums: bool = False,
        var: str | None = None,
        compressors: Any = None,
        zarr_format: ZarrFormat | None = None,
        creation_options: Mapping[str, str | int | float] | None = None,
        scheduler: Any = None,
        progress: bool | IO[str] = False,
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
        name: Hashable | None = None,
        **unknown: Any,
    ) -> RunReport:
        """Same as :func:`patchflow.run` on this object: stream into a Zarr store (or a
        Cloud-Optimized GeoTIFF, for a ``.tif`` store).

        Every keyword is documented at :func:`patchflow.run`. ``**unknown`` is no option: it
        lets keywords ``run`` does not take raise :class:`~patchflow.errors.ParameterError`
        with the fix (``overlap=`` → ``stride=``...) instead of Python's ``TypeError``.
        """
        run = _api().run
        return run(
            self._obj,
            op,
            store=store,
            **given_keywords(PatchAccessor.run, locals(), run),
            **unknown,
        )

    def grid(
        self,
        *,
        size: SizeSpec = DEFAULT_SIZE,
        stride: SizeSpec = 192,
        boundary: Boundary = "shift",
        allow_gaps: bool = False,
        **unknown: Any,
    ) -> ChipLayout:
        """Same as :func:`patchflow.plan_grid` on this object.

        ``**unknown`` is no option: keywords ``grid`` does not take raise
        :class:`~patchflow.errors.ParameterError` with patchflow's equivalent of other
        libraries' names (``overlap=`` → ``stride=``) or the closest valid name.
        """
        plan_grid = _api().plan_grid
        chosen = given_keywords(PatchAccessor.grid, locals(), plan_grid)
        if unknown:
            check_keywords("grid", {**chosen, **unknown}, _keywords(plan_grid))
        return plan_grid(self._obj, **chosen)

    def sample(
        self,
        sampler: Sampler | np.ndarray | Sequence[Sequence[int]],
        *,
        size: int | tuple[int, int] = 256,
        labels: Any = None,
        valid: Any = None,
        max_invalid: float = 0.0,
        chips_per_task: int | None = None,
        name: Hashable | None = None,
    ) -> xr.DataArray:
        """Same as :func:`patchflow.sample`: a lazy ``(chip, …, y, x)`` chip dataset."""
        sample = _api().sample
        return sample(self._obj, sampler, **given_keywords(PatchAccessor.sample, locals(), sample))

    def zonal_stats(
        self,
        gdf: Any = None,
        stats: Sequence[str] = DEFAULT_STATS,
        *,
        h3_resolution: int | None = None,
        all_touched: bool = False,
        nodata: Any = "auto",
        output: VectorOutput = "geopandas",
        compute: bool = True,
    ) -> Any:
        """Same as :func:`patchflow.zonal_stats`: per-polygon or per-h3-cell statistics
        (a GeoDataFrame, or an xvec-indexed Dataset)."""
        zonal_stats = _api().zonal_stats
        return zonal_stats(
            self._obj,
            gdf,
            stats,
            **given_keywords(PatchAccessor.zonal_stats, locals(), zonal_stats),
        )

    def sample_points(
        self,
        points: Any,
        *,
        method: SampleMethod = "nearest",
        column_names: Sequence[str] | None = None,
        batch: int = 4096,
        output: VectorOutput = "geopandas",
    ) -> Any:
        """Same as :func:`patchflow.sample_points`: raster values at points (a GeoDataFrame)."""
        sample_points = _api().sample_points
        return sample_points(
            self._obj,
            points,
            **given_keywords(PatchAccessor.sample_points, locals(), sample_points),
        )

    def points_in_chips(
        self,
        points: Any,
        sampler: Sampler | np.ndarray | Sequence[Sequence[int]],
        *,
        size: int | tuple[int, int] = 256,
        min_points: int = 1,
    ) -> Any:
        """Same as :func:`patchflow.points_in_chips`: the points inside each chip."""
        points_in_chips = _api().points_in_chips
        return points_in_chips(
            self._obj,
            points,
            sampler,
            **given_keywords(PatchAccessor.points_in_chips, locals(), points_in_chips),
        )

    def apply_vector(
        self,
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
        """Same as :func:`patchflow.apply_vector`: geometries from chips, each object once."""
        apply_vector = _api().apply_vector
        return apply_vector(
            self._obj, fn, **given_keywords(PatchAccessor.apply_vector, locals(), apply_vector)
        )

    def stitch(
        self,
        chip_outputs: Any,
        anchors: Any = None,
        *,
        window: str | np.ndarray | Any = "hann",
        window_params: Mapping[str, Any] | None = None,
        chunks: int | tuple[int, int] | None = None,
        name: Hashable | None = None,
        agg: Agg = "overlap_add",
        n_classes: int | None = None,
        nodata: Any = None,
        chip_nodata: Any = None,
    ) -> xr.DataArray:
        """Same as :func:`patchflow.stitch`: merge chips at any sampler's anchors."""
        stitch = _api().stitch
        return stitch(
            self._obj,
            chip_outputs,
            anchors,
            **given_keywords(PatchAccessor.stitch, locals(), stitch),
        )

    #: the former name of :meth:`stitch`
    stitch_anchors = stitch

    def polygon_chips(
        self, gdf: Any, *, all_touched: bool = False, skip_empty: bool = True
    ) -> Iterator[PolygonChip]:
        """Same as :func:`patchflow.polygon_chips`: one chip per polygon bounding box."""
        polygon_chips = _api().polygon_chips
        return polygon_chips(
            self._obj, gdf, **given_keywords(PatchAccessor.polygon_chips, locals(), polygon_chips)
        )


xr.register_dataarray_accessor("patch")(PatchAccessor)
xr.register_dataset_accessor("patch")(PatchAccessor)
