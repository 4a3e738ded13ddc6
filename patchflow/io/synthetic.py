"""Deterministic synthetic scenes with realistic structure (no network, any size, lazy).

A two-band (red, NIR) uint16 scene in UTM zone 10N (EPSG:32610, 10 m pixels, near Lake
Tahoe): rectangular crop fields of varying vigour, bare soil, a lake with a wavy shore,
and per-pixel sensor noise. Every pixel is a pure function of its (row, col) and the seed,
so the scene is identical whatever the chunking, and huge scenes are generated lazily
block by block. :func:`make_stac_items` writes a few dates of that scene as local STAC
items with Cloud-Optimized GeoTIFF assets, for offline examples of STAC input.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import rioxarray  # noqa: F401  (registers .rio, used to write the CRS and nodata)
import xarray as xr

__all__ = ["CRS", "make_scene", "make_stac_items", "scene_block"]

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


def make_stac_items(
    directory: str | os.PathLike[str],
    *,
    shape: tuple[int, int] = (512, 512),
    dates: int = 3,
    cloudy: float = 0.2,
    seed: int = 0,
) -> Path:
    """Write ``dates`` Sentinel-2-like STAC items with local COG assets; return the JSON path.

    Each date has ``B04`` (red) and ``B08`` (NIR) uint16 assets (nodata 0) of
    :func:`make_scene`'s ground with a few percent of seasonal change, and a ``cloudy``
    fraction of pixels (a band of rows that moves from date to date) set to 0, so a
    composite over the dates has something to fill. The items are plain JSON with the
    projection extension, collected in ``items.json`` (a FeatureCollection) in
    ``directory``; asset paths are relative to it.

    Examples
    --------
    >>> import tempfile
    >>> path = make_stac_items(tempfile.mkdtemp(), shape=(64, 64), dates=2)
    >>> path.name, len(json.loads(path.read_text())["features"])
    ('items.json', 2)
    """
    from rasterio.warp import transform_bounds

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    ground = make_scene(shape, seed=seed, chunks=None)
    h = int(shape[0])
    band_rows = max(1, round(cloudy * h))
    transform = list(ground.rio.transform())[:6]
    west, south, east, north = transform_bounds(CRS, "EPSG:4326", *ground.rio.bounds())
    footprint = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    features = []
    for k in range(int(dates)):
        values = np.rint(ground.values * (1.0 + 0.03 * k)).astype(np.uint16)
        top = (k * h // max(int(dates), 1)) % h
        values[:, top : top + band_rows, :] = 0  # this date's "cloud": nodata
        assets = {}
        for b, name in enumerate(("B04", "B08")):
            href = f"{name}_{k}.tif"
            band = ground.isel(band=b).copy(data=values[b]).rio.write_nodata(0)
            band.rio.to_raster(root / href, driver="COG")
            assets[name] = {
                "href": href,
                "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                "roles": ["data"],
                "proj:epsg": int(CRS.split(":")[1]),
                "proj:shape": [h, int(shape[1])],
                "proj:transform": transform,
            }
        features.append(
            {
                "type": "Feature",
                "stac_version": "1.0.0",
                "stac_extensions": [
                    "https://stac-extensions.github.io/projection/v1.1.0/schema.json"
                ],
                "id": f"synthetic-{k}",
                "geometry": {"type": "Polygon", "coordinates": [footprint]},
                "bbox": [west, south, east, north],
                "properties": {"datetime": f"2024-06-{1 + 5 * k:02d}T18:40:00Z"},
                "assets": assets,
                "links": [],
            }
        )
    path = root / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}, indent=1))
    return path
