"""Figures for the demo, the CLI and the notebooks (matplotlib, no pyplot state).

Every function builds a :class:`matplotlib.figure.Figure` directly, attached to the Agg
canvas, so nothing here depends on (or changes) the interactive backend: the CLI writes
PNGs headless, and a notebook displays a returned figure inline as usual.

Scenes are never loaded whole for a plot: :func:`thumbnail` reads the coarsest overview of
a GeoTIFF/COG that still gives the full-resolution thumbnail's sharpness (through
:mod:`patchflow.io.sources`), else a decimated view (every ``k``-th row and column), so a
lazy dask- or Zarr-backed scene of any size costs at most one pass over its chunks and
``max_pixels``² pixels of memory. Colours are stretched over valid pixels only (nodata and
NaN excluded per band), and RGB comes from bands named red/green/blue, else bands 1/2/3.

matplotlib is an optional dependency (``pip install 'patchflow[plot]'``): this module
imports it only inside the functions that draw, and :func:`decimation`, :func:`thumbnail`
and :func:`scene_image` work without it. The drawing functions raise
:class:`~patchflow.errors.PatchflowError` naming the ``plot`` extra when it is missing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from patchflow._xr import spatial_dims
from patchflow.errors import DimensionError, ParameterError, optional_import
from patchflow.io.sources import open_overview, overview_shapes
from patchflow.plan.layout import ChipLayout

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "decimation",
    "demo_figure",
    "draw_chip_grid",
    "grid_figure",
    "image_axes",
    "require_matplotlib",
    "save_figure",
    "scene_image",
    "thumbnail",
]

#: Longest side, in pixels, of the decimated views drawn by default.
MAX_PIXELS = 1024
#: Above this many chips only a regular subset of the outlines is drawn.
MAX_OUTLINES = 20_000


def require_matplotlib(what: str = "plotting") -> None:
    """Import matplotlib, or raise :class:`~patchflow.errors.PatchflowError` if it is missing.

    The error names the ``patchflow[plot]`` extra and is chained to the ``ImportError``.

    Parameters
    ----------
    what
        What needs matplotlib, for the message (e.g. ``"patchflow grid --png"``).
    """
    optional_import(
        "matplotlib",
        message=f"{what} needs matplotlib, an optional dependency: "
        "install it with `pip install 'patchflow[plot]'` (or matplotlib)",
    )


def decimation(shape: Sequence[int], max_pixels: int = MAX_PIXELS) -> int:
    """The step ``k`` that brings the longest side of ``shape`` (y, x) to ``max_pixels``.

    Examples
    --------
    >>> decimation((4096, 3000)), decimation((500, 500))
    (4, 1)
    """
    return max(1, math.ceil(max(int(s) for s in shape[-2:]) / max(1, int(max_pixels))))


def thumbnail(obj: xr.DataArray, max_pixels: int = MAX_PIXELS) -> xr.DataArray:
    """A small in-memory view of ``obj``, at most ``max_pixels`` on its longest side.

    When ``obj`` is an unchanged read of a GeoTIFF/COG with overviews, the coarsest
    overview with at least as many pixels along its longest side as the decimated full
    resolution would give, itself decimated to ``max_pixels`` if needed (so at least half
    as sharp; an overview level ``f`` holds ``1/f²`` of the pixels, so far fewer are
    read); otherwise every ``k``-th row and column of ``obj``, ``k`` from
    :func:`decimation` (a lazy input is read chunk by chunk).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> thumbnail(xr.DataArray(np.zeros((3000, 10)), dims=("y", "x")), 1000).shape
    (1000, 4)
    """
    return _thumbnail(obj, max_pixels)[0]


def _thumbnail(obj: xr.DataArray, max_pixels: int) -> tuple[xr.DataArray, tuple[float, float]]:
    """:func:`thumbnail` and the ``(rows, cols)`` of scene pixels it spans (for extents)."""
    y, x = spatial_dims(obj)
    h, w = int(obj.sizes[y]), int(obj.sizes[x])
    k = decimation((h, w), max_pixels)
    sharp = max(math.ceil(h / k), math.ceil(w / k))
    if k > 1:
        shapes = overview_shapes(obj)
        # coarsest first: the fewest pixels that still hold the thumbnail's
        for level in reversed(range(len(shapes))):
            oh, ow = shapes[level]
            step = decimation((oh, ow), max_pixels)
            vh, vw = math.ceil(oh / step), math.ceil(ow / step)
            if max(oh, ow) >= sharp:
                ov = open_overview(obj, level)
                view = ov.isel({y: slice(None, None, step), x: slice(None, None, step)})
                # an overview pixel covers h/oh scene rows (GDAL scales the pixel size)
                return view.compute(), (vh * step * h / oh, vw * step * w / ow)
    view = obj.isel({y: slice(None, None, k), x: slice(None, None, k)})
    return view.compute(), (float(math.ceil(h / k) * k), float(math.ceil(w / k) * k))


def _extent(layout: ChipLayout, span: tuple[float, float]) -> tuple[float, float, float, float]:
    """imshow extent ``(left, right, bottom, top)`` of a view spanning ``span`` scene pixels.

    A view decimated by ``k`` spans ``ceil(n / k) k`` scene pixels (thumbnail pixel ``j``
    stands for scene pixels ``[j k, (j + 1) k)``, at most ``k - 1`` past the edge); an
    overview spans the scene exactly, times its own decimation.
    """
    hk, wk = span
    t = layout.transform
    if t is None:
        return (0.0, float(wk), float(hk), 0.0)
    return (t.c, t.c + t.a * wk, t.f + t.e * hk, t.f)


def _stretch(
    band: np.ndarray, lo: float = 2.0, hi: float = 98.0, *, nodata: float | None = None
) -> np.ndarray:
    """Percentile stretch of ``band`` to [0, 1] over its valid pixels.

    Valid: finite and not ``nodata``; the percentiles come from valid pixels only (so a
    nodata collar does not compress the stretch), and invalid pixels come out NaN.

    Examples
    --------
    >>> _stretch(np.array([0, 0, 0, 10, 20]), 0, 100, nodata=0).tolist()
    [nan, nan, nan, 0.0, 1.0]
    """
    band = np.asarray(band, dtype=np.float64)
    valid = np.isfinite(band)
    if nodata is not None and not np.isnan(nodata):
        valid &= band != nodata
    if not valid.any():
        return np.full_like(band, np.nan)
    a, b = np.percentile(band[valid], [lo, hi])
    if b <= a:
        b = a + 1.0
    return np.where(valid, np.clip((band - a) / (b - a), 0.0, 1.0), np.nan)


#: band names that put a band in the red, green and blue channel of a true-colour image
RGB_NAMES = ("red", "green", "blue")


def _band_labels(view: xr.DataArray) -> list[str] | None:
    """Names of the bands of a ``(band, y, x)`` view: its band coordinate's strings, else
    GDAL band descriptions (rioxarray's per-band ``long_name``)."""
    dim = view.dims[0]
    n = int(view.sizes[dim])
    if dim in view.coords and view.coords[dim].values.dtype.kind in "UO":
        return [str(v) for v in view.coords[dim].values]
    names = view.attrs.get("long_name")
    if isinstance(names, list | tuple) and len(names) == n and n > 1:
        return [str(v) for v in names]
    return None


def _rgb_bands(view: xr.DataArray | np.ndarray, n: int) -> tuple[int, int, int] | None:
    """Default channels: bands named red, green, blue; else bands 1, 2, 3; else none."""
    if isinstance(view, xr.DataArray):
        labels = _band_labels(view)
        if labels is not None:
            folded = [label.strip().casefold() for label in labels]
            if all(name in folded for name in RGB_NAMES):
                r, g, b = (folded.index(name) for name in RGB_NAMES)
                return r, g, b
    return (0, 1, 2) if n >= 3 else None


def scene_image(
    view: xr.DataArray | np.ndarray,
    rgb: Sequence[int | str] | None = None,
    *,
    nodata: float | str | None = "auto",
) -> np.ndarray:
    """An image for ``imshow`` from a (small, in-memory) scene view.

    Parameters
    ----------
    view
        ``(y, x)`` or ``(band, y, x)`` values (a DataArray's spatial dims go last).
    rgb
        Bands for the red, green and blue channels, as 0-based positions or band names;
        ``None``: the bands named red, green and blue (band coordinate or GDAL band
        descriptions) if there are, else bands 1/2/3 for 3 or more bands, false colour
        NIR/red/red for 2 bands (``band`` 0 = red, 1 = NIR), the first band in grey for 1.
    nodata
        Value left out of the stretch besides NaN (``"auto"``: a DataArray's
        ``rio.nodata``; ``None``: NaN only).

    Returns
    -------
    numpy.ndarray
        ``(h, w, 3)`` floats in [0, 1], or ``(h, w, 4)`` with alpha 0 where every channel
        is invalid (when any pixel is), or ``(h, w)`` for a grey image (NaN where invalid).
        Each channel is percentile-stretched over its valid pixels (2-98%).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> bands = xr.DataArray(np.zeros((3, 4, 4)), dims=("band", "y", "x"),
    ...                      coords={"band": ["blue", "green", "red"]})
    >>> bands[2] = 100.0
    >>> image = scene_image(bands)
    >>> image.shape, float(image[..., 0].mean()), float(image[..., 2].mean())
    ((4, 4, 3), 0.0, 0.0)
    """
    if isinstance(view, xr.DataArray):
        try:
            view = view.transpose(..., *spatial_dims(view))
        except DimensionError:  # unnamed axes: taken as (…, y, x)
            pass
        nd = view.rio.nodata if isinstance(nodata, str) and nodata == "auto" else nodata
        if view.ndim > 3:
            view = view.stack(_bands=view.dims[:-2]).transpose("_bands", ...)
        values = np.asarray(view.values)
    else:
        nd = None if isinstance(nodata, str) else nodata
        values = np.asarray(view)
    nd = None if nd is None else float(nd)
    if values.ndim == 2:
        return _stretch(values, nodata=nd)
    values = values.reshape(-1, *values.shape[-2:])
    n = values.shape[0]
    if rgb is None:
        rgb = _rgb_bands(view, n)
        if rgb is None:
            if n == 2:
                rgb = (1, 0, 0)  # NIR as red: vegetation shows bright red, water dark
            else:
                return _stretch(values[0], nodata=nd)
    channels = [_stretch(values[_position(view, band, n)], nodata=nd) for band in rgb]
    image = np.dstack(channels)
    invalid = np.isnan(image).all(axis=-1)
    image = np.nan_to_num(image, nan=0.0)
    if invalid.any():
        image = np.dstack([image, (~invalid).astype(np.float64)])
    return image


def _position(view: xr.DataArray | np.ndarray, band: int | str, n: int) -> int:
    """0-based position of ``band`` (a position or a band name) among ``n`` bands."""
    if isinstance(band, str):
        labels = _band_labels(view) if isinstance(view, xr.DataArray) else None
        if labels is None or band not in labels:
            raise ParameterError(
                f"rgb names band {band!r}, but the bands are "
                f"{'unnamed' if labels is None else 'named ' + ', '.join(labels)}; "
                "give 0-based band positions instead, e.g. rgb=(2, 1, 0)"
            )
        return labels.index(band)
    if isinstance(band, bool) or not isinstance(band, int | np.integer) or not 0 <= band < n:
        raise ParameterError(
            f"rgb band {band!r} is not a 0-based band position of a {n}-band scene "
            f"(0 … {n - 1}); e.g. rgb=(0, 1, 2)"
        )
    return int(band)


def _chip_rectangles(layout: ChipLayout) -> np.ndarray:
    """``(n, 4)`` chip rectangles ``(x0, y0, width, height)`` in plot coordinates."""
    bounds = layout.bounds
    if bounds is not None:
        return np.column_stack(
            [bounds[:, 0], bounds[:, 1], bounds[:, 2] - bounds[:, 0], bounds[:, 3] - bounds[:, 1]]
        ).astype(np.float64)
    win = layout.windows.astype(np.float64)  # pixel space, y down (extent top = 0)
    return np.column_stack([win[:, 1], win[:, 0], win[:, 3], win[:, 2]])


def draw_chip_grid(
    ax: Axes,
    layout: ChipLayout,
    *,
    color: str = "white",
    linewidth: float = 0.5,
    highlight: bool = True,
) -> int:
    """Outline the planned chips of ``layout`` on ``ax`` (CRS units when georeferenced).

    With ``highlight`` the first chip and its right-hand neighbour are filled, so the
    overlap (``size - stride``) is visible. Above :data:`MAX_OUTLINES` chips a regular
    subset is drawn.

    Returns
    -------
    int
        The number of chip outlines drawn.
    """
    require_matplotlib("draw_chip_grid")
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    rects = _chip_rectangles(layout)
    step = max(1, math.ceil(len(rects) / MAX_OUTLINES))
    shown = rects[::step]
    outlines = [Rectangle((r[0], r[1]), r[2], r[3]) for r in shown]
    ax.add_collection(
        PatchCollection(outlines, facecolor="none", edgecolor=color, linewidth=linewidth)
    )
    if highlight and len(rects):
        colours = ("yellow", "magenta")
        for r, c in zip(rects[: min(2, layout.grid.x.n)], colours, strict=False):
            ax.add_patch(Rectangle((r[0], r[1]), r[2], r[3], facecolor=c, alpha=0.35, lw=0))
            ax.add_patch(Rectangle((r[0], r[1]), r[2], r[3], fill=False, edgecolor=c, lw=2.0))
    return len(outlines)


def _new_figure(rows: int, cols: int, size: tuple[float, float]) -> tuple[Figure, list[Axes]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def _title_units(layout: ChipLayout) -> str:
    crs = layout.crs
    return f"x / y in {crs.to_string()}" if crs is not None else "pixels"


def grid_figure(
    scene: xr.DataArray,
    layout: ChipLayout,
    *,
    rgb: Sequence[int | str] | None = None,
    max_pixels: int = MAX_PIXELS,
    ax: Axes | None = None,
) -> Figure:
    """The planned chip grid drawn over a small view of ``scene`` (see :func:`thumbnail`).

    Parameters
    ----------
    scene
        The scene (lazy is fine: only an overview or a decimated view is read).
    layout
        From ``scene.patch.grid(...)`` / :func:`patchflow.plan_grid`.
    rgb, max_pixels
        See :func:`scene_image` and :func:`thumbnail`.
    ax
        Draw into this axes instead of a new figure.
    """
    require_matplotlib("grid_figure")  # before reading the scene
    view, span = _thumbnail(scene, max_pixels)
    image = scene_image(view, rgb, nodata=scene.rio.nodata)
    if ax is None:
        fig, (ax,) = _new_figure(1, 1, (7.5, 7.5))
    else:
        fig = ax.get_figure()  # type: ignore[assignment]
    ax.imshow(image, extent=_extent(layout, span), cmap="gray", interpolation="nearest")
    n = draw_chip_grid(ax, layout)
    g = layout.grid
    ny, nx = g.counts
    ax.set_title(
        f"{ny} x {nx} = {g.n_chips} chips {g.size_yx[0]}x{g.size_yx[1]}, "
        f"stride {g.stride_yx[0]}" + ("" if n == g.n_chips else f" ({n} drawn)"),
        fontsize=10,
    )
    ax.set_xlabel(_title_units(layout), fontsize=8)
    ax.tick_params(labelsize=7)
    ax.ticklabel_format(style="plain", useOffset=False)
    return fig


def demo_figure(
    scene: xr.DataArray,
    stitched: xr.DataArray,
    reference: xr.DataArray,
    layout: ChipLayout,
    *,
    max_error: float | None = None,
    title: str | None = None,
    max_pixels: int = MAX_PIXELS,
) -> Figure:
    """The four-panel demo preview.

    Panels: the scene in false colour (NIR/red/red), the chip grid over it, the stitched
    NDVI, and stitched − full-scene NDVI. All four are decimated views (see
    :func:`thumbnail`); ``reference`` may be lazy (e.g. the op mapped over the scene's
    chunks), only its decimated pixels are computed.

    Parameters
    ----------
    scene
        ``(band, y, x)`` red/NIR scene.
    stitched, reference
        ``(1, y, x)`` or ``(y, x)`` results: patchflow's and the op on the whole scene.
    layout
        The chip grid used.
    max_error
        The maximum absolute difference over *all* pixels, shown in the last panel's
        title (the panel itself shows the decimated pixels).
    title
        Figure title.
    """
    require_matplotlib("demo_figure")  # before reading the scene
    view, scene_span = _thumbnail(scene, max_pixels)
    ours_view, span = _thumbnail(stitched, max_pixels)
    ours = np.asarray(ours_view.values, dtype=np.float64)
    ref = np.asarray(thumbnail(reference, max_pixels).values, dtype=np.float64)
    ours = ours.reshape(ours.shape[-2:]) if ours.ndim > 2 else ours
    ref = ref.reshape(ref.shape[-2:]) if ref.ndim > 2 else ref
    # the scene may come from an overview: its own extent; results are decimated alike
    scene_extent, extent = _extent(layout, scene_span), _extent(layout, span)

    fig, axes = _new_figure(2, 2, (12.0, 10.8))
    a_scene, a_grid, a_ndvi, a_diff = axes
    img = scene_image(view)
    a_scene.imshow(img, extent=scene_extent, interpolation="nearest")
    a_scene.set_title("synthetic scene, false colour (NIR, red, red)", fontsize=10)

    a_grid.imshow(img, extent=scene_extent, interpolation="nearest")
    draw_chip_grid(a_grid, layout, linewidth=0.4)
    g = layout.grid
    a_grid.set_title(
        f"chip grid: {g.counts[0]} x {g.counts[1]} = {g.n_chips} chips "
        f"{g.size_yx[0]}², stride {g.stride_yx[0]} (2 highlighted)",
        fontsize=10,
    )

    im = a_ndvi.imshow(ours, extent=extent, cmap="RdYlGn", vmin=-1, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=a_ndvi, shrink=0.8, label="NDVI")
    a_ndvi.set_title("stitched NDVI (Hann overlap-add)", fontsize=10)

    diff = ours - ref
    finite = np.abs(diff[np.isfinite(diff)])
    lim = float(finite.max()) if finite.size and finite.max() > 0 else 1e-9
    im = a_diff.imshow(diff, extent=extent, cmap="RdBu_r", vmin=-lim, vmax=lim)
    fig.colorbar(im, ax=a_diff, shrink=0.8, label="Δ NDVI", format="%.1e")
    shown = max_error if max_error is not None else (float(finite.max()) if finite.size else 0.0)
    a_diff.set_title(f"stitched − full-scene NDVI (max |Δ| {shown:.2g})", fontsize=10)

    for ax in axes:
        ax.tick_params(labelsize=7)
        ax.ticklabel_format(style="plain", useOffset=False)
    axes[2].set_xlabel(_title_units(layout), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=12)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: int = 100) -> str:
    """Write ``fig`` as a PNG (Agg) and return the path."""
    require_matplotlib("save_figure")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    fig.savefig(os.fspath(path), dpi=dpi, format="png")
    return os.fspath(path)


def image_axes(fig: Figure) -> list[Axes]:
    """The axes of ``fig`` that show an image (colour bars excluded)."""
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>" and ax.images]
