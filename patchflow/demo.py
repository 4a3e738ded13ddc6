"""The demo job: synthetic scene → DN → NDVI on 256/192 Hann chips → Zarr store → preview.

It checks itself: the stitched NDVI (read back from the store) is compared with NDVI
computed on the whole scene, chunk by chunk, so the check is exact and memory-bounded at
any size. ``patchflow demo`` (see :mod:`patchflow.cli`) is the command-line front end.

Only the PNG preview needs matplotlib (the ``patchflow[plot]`` extra): the job, the Zarr
store and the check run on the base install, where ``patchflow demo`` skips the preview
with a note and :func:`run_demo` asked for one raises a :class:`~patchflow.errors.PatchflowError`
naming the extra before anything runs.
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from patchflow.io.store import run
from patchflow.io.synthetic import make_scene
from patchflow.ops import NDVI, DNToReflectance, Lambda

__all__ = ["DemoResult", "dn_ndvi", "peak_memory_mib", "reference_ndvi", "run_demo"]

SIZE, STRIDE, WINDOW = 256, 192, "hann"
TOLERANCE = 1e-6


#: the demo's (and benchmarks') operator: DN × 1e-4 → reflectance → NDVI of bands 0 (red)
#: and 1 (NIR), ``(n, 2, h, w)`` → ``(n, 1, h, w)`` float32 — the library's own NDVI
dn_ndvi = DNToReflectance(scale=1e-4) | NDVI(red=0, nir=1)


def _ndvi_block(block: np.ndarray) -> np.ndarray:
    return np.asarray(dn_ndvi(block[None])[0])


def reference_ndvi(scene: xr.DataArray) -> xr.DataArray:
    """:func:`dn_ndvi` on the whole scene, lazily, one input chunk at a time.

    NDVI is pointwise, so mapping it over the scene's chunks *is* the full-scene op.
    """
    data = scene.data if isinstance(scene.data, da.Array) else da.from_array(scene.data)
    data = data.rechunk({0: -1})
    out = da.map_blocks(
        _ndvi_block, data, dtype=np.float32, chunks=((1,), *data.chunks[1:]), name="ndvi-ref"
    )
    return xr.DataArray(out, dims=scene.dims, coords={d: scene[d] for d in scene.dims[1:]})


def peak_memory_mib() -> float:
    """Peak resident memory of this process so far, in MiB (``getrusage``)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes vs KiB


@dataclass(frozen=True)
class DemoResult:
    """What the demo did.

    ``store`` and ``preview`` are the written paths (``None`` when the demo ran in a
    temporary directory or without a preview).
    """

    shape: tuple[int, int]
    chips: int
    blocks: int
    seconds: float
    max_error: float
    peak_mib: float = float("nan")
    check_seconds: float = float("nan")
    store: str | None = None
    preview: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the stitched result matches the full-scene NDVI (≤ 1e-6, same NaNs)."""
        return self.max_error <= TOLERANCE

    def summary(self) -> str:
        """Human-readable report."""
        h, w = self.shape
        lines = [
            f"patchflow demo: {h}x{w} red/NIR uint16 scene (EPSG:32610, 10 m), DN -> NDVI",
            f"  chips: {self.chips} ({SIZE}x{SIZE}, stride {STRIDE}, Hann), blocks: {self.blocks}",
            f"  wall time: {self.seconds:.2f} s (grid -> process -> stitch -> Zarr)",
            f"  peak memory: {self.peak_mib:.0f} MiB (scene: {2 * 2 * h * w / 2**20:.0f} MiB)",
            f"  max |stitched - full-scene NDVI|: {self.max_error:.3g} "
            f"(all pixels, edges included) -> {'OK' if self.ok else 'FAILED'}",
        ]
        if self.store:
            lines.append(f"  result: {self.store}")
        if self.preview:
            lines.append(f"  preview: {self.preview}")
        return "\n".join(lines)


def _max_error(stitched: xr.DataArray, reference: xr.DataArray) -> float:
    """Max |a - b| over all pixels, block by block; ``inf`` if the NaN masks differ."""
    a, b = stitched.data, reference.data
    if not isinstance(a, da.Array):
        a = da.from_array(np.asarray(a), chunks=b.chunks)
    with np.errstate(invalid="ignore"):
        err, nan_mismatch = dask.compute(
            da.nanmax(da.abs(a.astype(np.float64) - b.astype(np.float64))),
            (da.isnan(a) != da.isnan(b)).any(),
        )
    return float("inf") if bool(nan_mismatch) else float(err)


def run_demo(
    size: int = 4096,
    out: str | os.PathLike[str] | None = None,
    *,
    preview: bool = True,
    seed: int = 0,
    chunks: int = 1024,
    scheduler: Any = None,
    progress: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> DemoResult:
    """Run the demo on a ``size`` × ``size`` synthetic scene and verify it.

    Parameters
    ----------
    size
        Scene edge in pixels (at least 256, the chip size).
    out
        Directory for ``ndvi.zarr`` and ``preview.png`` (created; the store is
        overwritten). ``None``: a temporary directory, removed afterwards (no preview).
    preview
        Write the four-panel PNG preview. It needs matplotlib (``pip install
        'patchflow[plot]'``); without it a :class:`~patchflow.errors.PatchflowError` naming
        the extra is raised before the run. ``preview=False`` needs only the base install.
    seed, chunks
        Synthetic scene seed and block size (= Zarr chunk size).
    scheduler
        Passed to :func:`patchflow.run`.
    progress
        Context manager factory wrapped around the run (e.g. a dask ``ProgressBar``).

    Examples
    --------
    >>> run_demo(300).max_error < 1e-6
    True
    """
    if out is None:
        with tempfile.TemporaryDirectory(prefix="patchflow-demo-") as tmp:
            result = run_demo(
                size, tmp, preview=False, seed=seed, chunks=chunks, scheduler=scheduler
            )
        return DemoResult(**{**result.__dict__, "store": None, "preview": None})

    if preview:  # fail before the run, not after it, when matplotlib is missing
        from patchflow.plotting import demo_figure, require_matplotlib, save_figure

        require_matplotlib("the demo preview (preview=True)")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    scene = make_scene((size, size), seed=seed, chunks=chunks)
    layout = scene.patch.grid(size=SIZE, stride=STRIDE)
    store = folder / "ndvi.zarr"
    with progress():
        report = run(
            scene,
            # the band math hidden in a Lambda that does not declare itself pointwise, so
            # the demo shows what it is about: overlapping chips blended by the stitcher
            # (declared, as dn_ndvi is, it would run once per block with the same result)
            Lambda(dn_ndvi, batched=True),
            store=store,
            overwrite=True,
            scheduler=scheduler,
            size=SIZE,
            stride=STRIDE,
            window=WINDOW,
            name="ndvi",
            output_dtype=np.float32,
            output_bands=1,
        )
    stitched = report.open()
    reference = reference_ndvi(scene)
    t0 = time.perf_counter()
    err = _max_error(stitched, reference)
    check_seconds = time.perf_counter() - t0

    png = None
    if preview:
        fig = demo_figure(
            scene,
            stitched,
            reference,
            layout,
            max_error=err,
            title=f"patchflow demo: {size}x{size} scene, {layout.grid.n_chips} chips, "
            f"{report.blocks} blocks, {report.seconds:.1f} s",
        )
        png = save_figure(fig, folder / "preview.png")
    return DemoResult(
        shape=(size, size),
        chips=layout.grid.n_chips,
        blocks=report.blocks,
        seconds=report.seconds,
        max_error=err,
        peak_mib=peak_memory_mib(),
        check_seconds=check_seconds,
        store=str(store),
        preview=png,
    )
