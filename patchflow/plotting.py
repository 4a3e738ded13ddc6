"""Figures for the demo, the CLI and the notebooks (matplotlib, no pyplot state).

Every function builds a :class:`matplotlib.figure.Figure` directly, attached to the Agg
canvas, so nothing here depends on (or changes) the interactive backend: the CLI writes
PNGs headless, and a notebook displays a returned figure inline as usual.

Scenes are never loaded whole for a plot: :func:`thumbnail` reads a decimated view
(every ``k``-th row and column), so a lazy dask- or Zarr-backed scene of any size costs one
pass over its chunks and ``max_pixels``² pixels of memory.

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
from patchflow.errors import PatchflowError
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
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise PatchflowError(
            f"{what} needs matplotlib, an optional dependency: "
            "install it with `pip install 'patchflow[plot]'` (or matplotlib)"
        ) from exc


def decimation(shape: Sequence[int], max_pixels: int = MAX_PIXELS) -> int:
    """The step ``k`` that brings the longest side of ``shape`` (y, x) to ``max_pixels``.

    Examples
    --------
    >>> decimation((4096, 3000)), decimation((500, 500))
    (4, 1)
    """
    return max(1, math.ceil(max(int(s) for s in shape[-2:]) / max(1, int(max_pixels))))


def thumbnail(obj: xr.DataArray, max_pixels: int = MAX_PIXELS) -> xr.DataArray:
    """Every ``k``-th row and column of ``obj`` (in memory), ``k`` from :func:`decimation`.

    Only the decimated pixels are kept: a lazy input is read chunk by chunk.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> thumbnail(xr.DataArray(np.zeros((3000, 10)), dims=("y", "x")), 1000).shape
    (1000, 4)
    """
    y, x = spatial_dims(obj)
    k = decimation((obj.sizes[y], obj.sizes[x]), max_pixels)
    view = obj.isel({y: slice(None, None, k), x: slice(None, None, k)})
    return view.compute()


def _extent(layout: ChipLayout, step: int) -> tuple[float, float, float, float]:
    """imshow extent ``(left, right, bottom, top)`` of a view decimated by ``step``.

    Thumbnail pixel ``j`` stands for source pixels ``[j k, (j + 1) k)``, so the drawn
    image spans ``ceil(n / k) k`` source pixels (at most ``k - 1`` past the edge).
    """
    h, w = layout.grid.shape
    hk, wk = math.ceil(h / step) * step, math.ceil(w / step) * step
    t = layout.transform
    if t is None:
        return (0.0, float(wk), float(hk), 0.0)
    return (t.c, t.c + t.a * wk, t.f + t.e * hk, t.f)


def _stretch(band: np.ndarray, lo: float = 2.0, hi: float = 98.0) -> np.ndarray:
    """Percentile stretch of ``band`` to [0, 1] (NaN stays NaN)."""
    band = np.asarray(band, dtype=np.float64)
    finite = band[np.isfinite(band)]
    if finite.size == 0:
        return np.full_like(band, np.nan)
    a, b = np.percentile(finite, [lo, hi])
    if b <= a:
        b = a + 1.0
    return np.clip((band - a) / (b - a), 0.0, 1.0)


def scene_image(view: xr.DataArray, rgb: Sequence[int] | None = None) -> np.ndarray:
    """An image for ``imshow`` from a (small, in-memory) scene view.

    Parameters
    ----------
    view
        ``(y, x)`` or ``(band, y, x)`` values.
    rgb
        Band indices for the red, green and blue channels (each percentile-stretched);
        ``None``: false colour NIR/red/red for 2 bands (``band`` 0 = red, 1 = NIR), the
        first band in grey otherwise.

    Returns
    -------
    numpy.ndarray
        ``(h, w, 3)`` floats in [0, 1], or ``(h, w)`` for a grey image.
    """
    values = np.asarray(view.values if isinstance(view, xr.DataArray) else view)
    if values.ndim == 2:
        return _stretch(values)
    values = values.reshape(-1, *values.shape[-2:])
    if rgb is None:
        if values.shape[0] == 2:
            rgb = (1, 0, 0)  # NIR as red: vegetation shows bright red, water dark
        elif values.shape[0] >= 3:
            rgb = (0, 1, 2)
        else:
            return _stretch(values[0])
    return np.dstack([_stretch(values[i]) for i in rgb])


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
    rgb: Sequence[int] | None = None,
    max_pixels: int = MAX_PIXELS,
    ax: Axes | None = None,
) -> Figure:
    """The planned chip grid drawn over a decimated view of ``scene``.

    Parameters
    ----------
    scene
        The scene (lazy is fine: only a decimated view is read).
    layout
        From ``scene.patch.grid(...)`` / :func:`patchflow.plan_grid`.
    rgb, max_pixels
        See :func:`scene_image` and :func:`thumbnail`.
    ax
        Draw into this axes instead of a new figure.
    """
    require_matplotlib("grid_figure")  # before reading the scene
    view = thumbnail(scene, max_pixels)
    k = decimation(layout.grid.shape, max_pixels)
    if ax is None:
        fig, (ax,) = _new_figure(1, 1, (7.5, 7.5))
    else:
        fig = ax.get_figure()  # type: ignore[assignment]
    ax.imshow(
        scene_image(view, rgb), extent=_extent(layout, k), cmap="gray", interpolation="nearest"
    )
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
    view = thumbnail(scene, max_pixels)
    ours = np.asarray(thumbnail(stitched, max_pixels).values, dtype=np.float64)
    ref = np.asarray(thumbnail(reference, max_pixels).values, dtype=np.float64)
    ours = ours.reshape(ours.shape[-2:]) if ours.ndim > 2 else ours
    ref = ref.reshape(ref.shape[-2:]) if ref.ndim > 2 else ref
    k = decimation(layout.grid.shape, max_pixels)
    extent = _extent(layout, k)

    fig, axes = _new_figure(2, 2, (12.0, 10.8))
    a_scene, a_grid, a_ndvi, a_diff = axes
    img = scene_image(view)
    a_scene.imshow(img, extent=extent, interpolation="nearest")
    a_scene.set_title("synthetic scene, false colour (NIR, red, red)", fontsize=10)

    a_grid.imshow(img, extent=extent, interpolation="nearest")
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
