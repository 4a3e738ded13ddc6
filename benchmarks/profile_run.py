"""Where patchflow's time goes: a per-phase profile of one Zarr → Zarr run.

Same job as ``vs_peers.py`` (2-band uint16 scene in Zarr v3, 2048² chunks, DN → NDVI,
chips 256, stride 192, Hann, 2 threads), run once with dask's task profiler and
patchflow's phase timers (:mod:`patchflow.engine.timing`) switched on, and once more as
the op-cost floor (a no-overlap ``map_blocks`` of the same op, same codec). Prints:

* thread-seconds per task group (dask's profiler, grouped by key prefix): input chunk
  reads (decompression), direct halo reads, chip tasks, spill-over pieces, write tasks;
* thread-seconds per phase inside patchflow's kernels (prepare, chips, op, weights,
  accumulate, seal, merge, normalise, write);
* scheduler overhead: ``threads × wall − Σ task time``;
* chunks decompressed: how many times each input chunk is decompressed on average.

    python benchmarks/profile_run.py --size 8192
    python benchmarks/profile_run.py --size 16384 --agg mean_std
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Timer, write_scene
from vs_peers import floor as floor_job
from vs_peers import machine


def _groups(results: list[Any], input_name: str) -> dict[str, float]:
    from dask.utils import key_split

    out: dict[str, float] = {}
    for r in results:
        key = r.key[0] if isinstance(r.key, tuple) else r.key
        group = "input chunk reads" if key == input_name else key_split(key)
        out[group] = out.get(group, 0.0) + (r.end_time - r.start_time)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", default="/tmp/patchflow-bench")
    parser.add_argument(
        "--pointwise",
        action="store_true",
        help="profile dn_ndvi as declared (pointwise: one chip per block); default: the "
        "same op as a Lambda that does not say so, so every overlapping chip runs",
    )
    parser.add_argument(
        "--agg",
        default="overlap_add",
        help="aggregation to profile (default overlap_add); e.g. mean_std",
    )
    args = parser.parse_args()

    import dask
    import xarray as xr
    from dask.diagnostics import Profiler

    import patchflow
    from patchflow.demo import dn_ndvi
    from patchflow.engine.timing import PHASES, record
    from patchflow.ops import Lambda

    op = dn_ndvi if args.pointwise else Lambda(dn_ndvi, batched=True)

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    scene = work / f"scene-{args.size}.zarr"
    write_scene(scene, args.size)
    out = work / "profile.zarr"
    shutil.rmtree(out, ignore_errors=True)
    dn = xr.open_zarr(scene, consolidated=False)["dn"]
    n_chunks = dn.data.npartitions

    print(machine())
    floor_out = work / "profile-floor.zarr"
    shutil.rmtree(floor_out, ignore_errors=True)
    with Timer() as timer:  # the op-cost floor of vs_peers.py, same codec
        floor_job(str(scene), str(floor_out), args.threads)
    floor = timer.seconds
    shutil.rmtree(floor_out, ignore_errors=True)

    t0 = time.perf_counter()
    with (
        dask.config.set(scheduler="threads", num_workers=args.threads),
        Profiler() as prof,
        record() as phases,
    ):
        patchflow.run(dn, op, store=out, size=256, stride=192, window="hann", agg=args.agg)
    wall = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    print(f"load average after the runs: {os.getloadavg()[0]:.2f} (1 min)")

    groups = _groups(prof.results, dn.data.name)
    busy = sum(groups.values())
    print(
        f"\nscene {args.size}² × 2 bands uint16, {n_chunks} input chunks of 2048²; "
        f"{args.threads} threads"
    )
    print(f"patchflow wall {wall:.2f} s, floor {floor:.2f} s, ratio {wall / floor:.2f}")
    print(f"\n{'task group (dask profiler)':<32} | {'thread s':>8} | {'share':>6}")
    print("-" * 52)
    for name, sec in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"{name:<32} | {sec:8.2f} | {sec / (wall * args.threads):6.1%}")
    overhead = wall * args.threads - busy
    print(f"{'idle / scheduler':<32} | {overhead:8.2f} | {overhead / (wall * args.threads):6.1%}")
    print(f"\n{'phase (patchflow kernels)':<32} | {'thread s':>8} | {'share':>6}")
    print("-" * 52)
    for name in PHASES:
        sec = phases.get(name, 0.0)
        print(f"{name:<32} | {sec:8.2f} | {sec / (wall * args.threads):6.1%}")
    reads = sum(
        1
        for r in prof.results
        if (r.key[0] if isinstance(r.key, tuple) else r.key) == dn.data.name
        or str(r.key[0] if isinstance(r.key, tuple) else r.key).startswith("patchflow-read-")
    )
    print(f"\nchunk decompressions: {reads} for {n_chunks} chunks ({reads / n_chunks:.2f}×)")


if __name__ == "__main__":
    main()
