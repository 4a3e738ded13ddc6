"""Shared helpers for the benchmarks: scene on disk, one job per subprocess, peak RSS."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent


def write_scene(path: Path, size: int, chunks: int = 2048) -> None:
    """Synthetic 2-band uint16 red/NIR scene → Zarr v3 (in a child process: RSS stays out)."""
    if path.exists():
        return
    code = (
        "import sys, warnings; warnings.simplefilter('ignore');"
        "from patchflow.io.synthetic import make_scene;"
        f"make_scene(({size}, {size}), chunks={chunks}).to_dataset(name='dn')"
        ".to_zarr(sys.argv[1], zarr_format=3, consolidated=False)"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child(script: Path, *args: str) -> dict[str, Any]:
    """Run ``script --child args…`` and parse the JSON line it prints last."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(script), "--child", *args], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def report(result: dict[str, Any]) -> None:
    """Print a child's result as the JSON line :func:`child` reads."""
    print(json.dumps(result))


class Timer:
    """Wall-clock timer (``with Timer() as t: ...; t.seconds``)."""

    def __enter__(self) -> Timer:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0


def max_error_vs_full(result_path: str, var: str, scene_path: str, block: int = 2048) -> float:
    """Max |result - NDVI(scene)| over every pixel, block by block (never whole arrays)."""
    return error_stats(result_path, var, scene_path, block)["max_error"]


def error_stats(
    result_path: str, var: str, scene_path: str, block: int = 2048, tol: float = 1e-6
) -> dict[str, float]:
    """Errors of a stored result vs NDVI(scene), block by block (never whole arrays).

    ``max_error``: max |result - reference| over every pixel (``inf`` where exactly one of
    the two is NaN); ``bad_pixels``: pixels off by more than ``tol`` (NaN mismatches
    included); ``inner_max_error``: ``max_error`` without the outermost pixel ring.
    """
    import xarray as xr

    from patchflow.demo import dn_ndvi

    out = xr.open_zarr(result_path, consolidated=False)[var]
    dn = xr.open_zarr(scene_path, consolidated=False)["dn"]
    h, w = dn.shape[-2:]
    worst = inner = 0.0
    bad = 0
    for r in range(0, h, block):
        for c in range(0, w, block):
            ref = dn_ndvi(dn[:, r : r + block, c : c + block].values[None])[0]
            got = np.asarray(out[..., r : r + block, c : c + block].values).reshape(ref.shape)
            diff = np.abs(got.astype(np.float64) - ref)
            both_nan = np.isnan(got) & np.isnan(ref)
            diff = np.where(both_nan, 0.0, diff)
            diff = np.where(np.isnan(diff), np.inf, diff)
            worst = max(worst, float(diff.max()))
            bad += int(np.count_nonzero(diff > tol))
            rows = np.arange(r, r + diff.shape[-2])
            cols = np.arange(c, c + diff.shape[-1])
            ring = ((rows == 0) | (rows == h - 1))[:, None] | ((cols == 0) | (cols == w - 1))
            inner = max(inner, float(np.where(ring, 0.0, diff).max()))
    return {"max_error": worst, "bad_pixels": float(bad), "inner_max_error": inner}
