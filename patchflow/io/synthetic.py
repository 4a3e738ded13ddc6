"""Deterministic synthetic scenes with realistic structure (no network, any size, lazy).

A two-band (red, NIR) uint16 scene in UTM zone 10N (EPSG:32610, 10 m pixels, near Lake
Tahoe): rectangular crop fields of varying vigour, bare soil, a lake with a wavy shore,
and per-pixel sensor noise. Every pixel is a pure function of its (row, col) and the seed,
so the scene is identical whatever the chunking, and huge scenes are generated lazily
block by block.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import rioxarray  # noqa: F401  (registers .rio, used to write the CRS and nodata)
import xarray as xr

__all__ = ["CRS", "make_scene", "scene_block"]

CRS = "EPSG:32610"
ORIGIN = (740_000.0, 4_340_000.0)  # upper-left corner (x, y), metres
RESOLUTION = 10.0
FIELD = 160  # pixels per field cell


def _hash(values: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64 of ``values`` → uniform floats in [0, 1)."""
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def scene_block(rows: np.ndarray, cols: np.ndarray, seed: int = 0) -> np.ndarray:
    """The ``(2, len(rows), len(cols))`` uint16 DN values of the scene at those pixels."""
    r = rows.astype(np.int64)[:, None]
    c = cols.astype(np.int64)[None, :]
    cell = (r // FIELD) * 1_000_003 + (c // FIELD)
    vigour = _hash(cell, seed)  # 0 bare soil … 1 dense crop
    # field margins: 6-pixel tracks between fields are bare
    track = ((r % FIELD) < 6) | ((c % FIELD) < 6)
    vigour = np.where(track, 0.05, vigour)
    red = 2200.0 - 1700.0 * vigour
    nir = 2300.0 + 2200.0 * vigour
    shore = 0.35 * np.sin(r / 310.0 + seed) + 0.25 * np.cos(c / 170.0)
    lake = (((r - 1400.0) / 1100.0) ** 2 + ((c - 2300.0) / 1500.0) ** 2) < 1.0 + shore
    red = np.where(lake, 450.0, red)
    nir = np.where(lake, 180.0, nir)
    pixel = r * 2_147_483_647 + c
    red_noise = _hash(pixel, seed + 1) - 0.5
    nir_noise = _hash(pixel, seed + 2) - 0.5
    out = np.stack([red + 160.0 * red_noise, nir + 240.0 * nir_noise])
    return np.clip(np.rint(out), 1, 10_000).astype(np.uint16)


def _block(block: np.ndarray | None = None, *, seed: int, block_info: Any = None) -> np.ndarray:
    (_, _), (r0, r1), (c0, c1) = block_info[None]["array-location"]
    return scene_block(np.arange(r0, r1), np.arange(c0, c1), seed)


def make_scene(
    shape: tuple[int, int] = (2048, 2048),
    *,
    seed: int = 0,
    chunks: int | tuple[int, int] | None = 2048,
) -> xr.DataArray:
    """A lazy georeferenced ``(band, y, x)`` uint16 red/NIR scene.

    Parameters
    ----------
    shape
        ``(height, width)`` in pixels.
    seed
        Changes field vigour, shore and noise.
    chunks
        Spatial chunk size of the dask array (``None``: numpy-backed, computed now).

    Examples
    --------
    >>> scene = make_scene((512, 300))
    >>> scene.dims, str(scene.rio.crs), scene.dtype.name
    (('band', 'y', 'x'), 'EPSG:32610', 'uint16')
    """
    h, w = int(shape[0]), int(shape[1])
    if chunks is None:
        data: Any = scene_block(np.arange(h), np.arange(w), seed)
    else:
        cy, cx = (chunks, chunks) if isinstance(chunks, int) else chunks
        data = da.map_blocks(
            _block,
            seed=seed,
            chunks=((2,), *da.core.normalize_chunks((cy, cx), (h, w))),
            dtype=np.uint16,
            meta=np.empty((0, 0, 0), np.uint16),
        )
    x0, y0 = ORIGIN
    coords = {
        "band": ["red", "nir"],
        "y": y0 - RESOLUTION * (np.arange(h) + 0.5),
        "x": x0 + RESOLUTION * (np.arange(w) + 0.5),
    }
    scene = xr.DataArray(data, dims=("band", "y", "x"), coords=coords, name="dn")
    scene.attrs["long_name"] = "top-of-atmosphere DN (red, NIR)"
    return scene.rio.write_crs(CRS).rio.write_nodata(0, encoded=False)
