"""Writing a Cloud-Optimized GeoTIFF: stream into a staged Zarr store, then Zarr → tiled
GeoTIFF (window by window) → GDAL's COG driver. Memory stays bounded at any scene size.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

__all__ = ["write_cog"]


def write_cog(
    obj: Any,
    op: Any,
    output: str | os.PathLike[str],
    *,
    run_params: Mapping[str, Any],
    scheduler: Any = None,
    progress: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
) -> tuple[Any, Any]:
    """Stream the result into a staging Zarr store, then Zarr → tiled GTiff → COG.

    Every block is computed once, under any scheduler, and memory stays bounded: the
    tiled GeoTIFF is written window by window and GDAL's COG driver copies from it.
    """
    import dask
    import rasterio.shutil

    from patchflow.io.store import run

    target = Path(output).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with progress():
            report = run(obj, op, store=staging / "result.zarr", scheduler=scheduler, **run_params)
        result = report.open()
        tiled = staging / "tiled.tif"
        with dask.config.set(scheduler="threads"):
            result.rio.to_raster(
                tiled,
                tiled=True,
                blockxsize=256,
                blockysize=256,
                windowed=True,
                lock=threading.Lock(),
            )
        cog = staging / "cog.tif"
        rasterio.shutil.copy(
            tiled, cog, driver="COG", compress="DEFLATE", blocksize=256, bigtiff="IF_SAFER"
        )
        os.replace(cog, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    import rioxarray

    return report, rioxarray.open_rasterio(target)
