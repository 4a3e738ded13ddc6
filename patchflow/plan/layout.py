"""Chip layouts: the chips of a planned grid (and of polygons) in pixels and world units.

:class:`ChipLayout` pairs a :class:`~patchflow.plan.grid.ChipGrid` with the scene's affine
transform and CRS; :func:`patchflow.plan_grid` builds one from an xarray object.

Examples
--------
>>> from affine import Affine
>>> from patchflow.plan.grid import ChipGrid
>>> grid = ChipGrid((512, 512), (256, 256), (192, 192))
>>> layout = ChipLayout(grid, Affine(10, 0, 0, 0, -10, 0), None)
>>> layout.bounds[0].tolist()
[0.0, -2560.0, 2560.0, 0.0]
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from patchflow.plan.grid import ChipGrid, window_bounds

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["ChipLayout", "PolygonChip"]


@dataclass(frozen=True)
class ChipLayout:
    """The planned chips of a scene, for inspection and plotting.

    ``anchors`` are ``(row, col)`` pixel offsets; ``bounds`` are ``(xmin, ymin, xmax,
    ymax)`` in CRS units (``None`` without a transform).
    """

    grid: ChipGrid
    transform: Any
    crs: Any

    @property
    def anchors(self) -> np.ndarray:
        """``(n_chips, 2)`` chip ``(row, col)`` offsets."""
        return self.grid.anchors

    @property
    def windows(self) -> np.ndarray:
        """``(n_chips, 4)`` pixel windows ``(row_off, col_off, height, width)``."""
        h, w = self.grid.size_yx
        a = self.anchors
        return np.column_stack([a, np.full(len(a), h), np.full(len(a), w)])

    @property
    def bounds(self) -> np.ndarray | None:
        """``(n_chips, 4)`` chip bounds ``(xmin, ymin, xmax, ymax)`` in CRS units."""
        if self.transform is None:
            return None
        # all four corners through the transform: true boxes on rotated grids too
        return window_bounds(self.transform, self.anchors, self.grid.size_yx)[:, :4]

    def to_dataframe(self) -> Any:
        """One row per chip: ``row, col, height, width`` and CRS bounds."""
        import pandas as pd

        win = self.windows
        frame = pd.DataFrame(win, columns=["row", "col", "height", "width"])
        bounds = self.bounds
        if bounds is not None:
            for k, col in enumerate(("xmin", "ymin", "xmax", "ymax")):
                frame[col] = bounds[:, k]
        return frame


@dataclass(frozen=True)
class PolygonChip:
    """One polygon's chip: its bounding window, lazy pixels and interior mask.

    ``window`` is ``(row0, row1, col0, col1)`` in scene pixels (clipped to the scene);
    ``data`` the lazy ``(band…, y, x)`` DataArray of that window; ``mask`` the boolean
    interior mask (``True`` inside the polygon), usable as chip weights.
    """

    index: Hashable
    window: tuple[int, int, int, int]
    data: xr.DataArray  # lazy
    mask: np.ndarray
