"""What each aggregation costs, against overlap-add and the op-cost floor, in one run.

Same job as ``vs_peers.py``'s ``patchflow_chips`` (2-band uint16 scene in Zarr v3, 2048²
chunks, DN → NDVI hidden in a ``Lambda`` that does not declare itself pointwise, so every
overlapping chip runs and is merged; chips 256, stride 192, Hann, 2 threads, Zarr → Zarr),
once per aggregation, each in its own process (its own peak RSS), interleaved over
``--repeat`` rounds (each starting one kind later) so machine noise hits every
aggregation alike. Two ratios to ``overlap_add``: of the best walls, and the median (and
range) of the ratios within each round, which holds when the machine's speed drifts
between rounds. ``inverse_variance``
gets an op returning ``(ndvi, variance)`` (two bands out: the same op plus one cheap
band). The floor is ``vs_peers.py``'s: a no-overlap ``map_blocks`` of the op, same codec.
``--again`` runs ``overlap_add`` a second time in every round (row ``overlap_add again``):
the same job twice, so the range of its paired ratios is what machine noise alone does to
one round's ratio (on a shared VM it is far from 1.00-1.00). ``CPU s`` is the job's own
CPU time (user + system, every thread of its process, best of the rounds) with its paired
ratio: what the aggregation costs without the waits that move wall time on a shared
machine (other tenants, the kernel's writeback threads, which are not the process's time).

The target of issue 16: ``mean_std`` ≤ 1.3 × ``overlap_add`` at 16384².

    python benchmarks/aggs.py --size 16384 --repeat 2
    python benchmarks/aggs.py --size 4096 --only overlap_add mean_std
    python benchmarks/aggs.py --size 16384 --repeat 9 --only mean_std --again
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Timer, child, peak_rss_mb, report, write_scene
from vs_peers import floor as floor_job
from vs_peers import machine

SIZE, STRIDE = 256, 192
AGGS = (
    "overlap_add",
    "mean",
    "sum",
    "weighted_sum",
    "mean_std",
    "inverse_variance",
    "max",
    "centre",
    "median",
    "mode",
)
AGAIN = "overlap_add again"  # --again: the same job as overlap_add, a noise reference


def ndvi_with_variance(dn: Any) -> Any:
    """``(ndvi, variance)`` per chip: the variance grows with |NDVI| (strictly positive)."""
    import numpy as np

    from patchflow.demo import dn_ndvi

    ndvi = dn_ndvi(dn)
    return np.concatenate([ndvi, np.float32(1e-3) + np.abs(ndvi) * np.float32(0.1)], axis=1)


def job(agg: str, scene: str, out: str, threads: int) -> None:
    shutil.rmtree(out, ignore_errors=True)
    for module in ("dask", "xarray", "zarr", "patchflow"):  # imports stay out of the timing
        importlib.import_module(module)
    import dask
    import xarray as xr

    import patchflow
    from patchflow.demo import dn_ndvi
    from patchflow.ops import Lambda

    dn = xr.open_zarr(scene, consolidated=False)["dn"]
    cpu0 = time.process_time()
    with Timer() as t:
        if agg == "floor":
            floor_job(scene, out, threads)
        else:
            fn = ndvi_with_variance if agg == "inverse_variance" else dn_ndvi
            with dask.config.set(scheduler="threads", num_workers=threads):
                patchflow.run(
                    dn,
                    Lambda(fn, batched=True),
                    store=out,
                    size=SIZE,
                    stride=STRIDE,
                    window="hann",
                    agg=agg,  # type: ignore[arg-type]
                )
    # this process's CPU time (every thread, user + system) during the job: what the
    # aggregation itself costs, without the waits on the machine (other tenants, the
    # kernel's own writeback threads) that move the wall time between runs
    cpu = time.process_time() - cpu0
    result: dict[str, Any] = {"seconds": t.seconds, "cpu": cpu, "rss_mb": peak_rss_mb()}
    shutil.rmtree(out, ignore_errors=True)
    report(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16384, help="scene edge, px")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="+", choices=AGGS, default=list(AGGS))
    parser.add_argument("--repeat", type=int, default=1, help="rounds; best wall is shown")
    parser.add_argument("--workdir", default="/tmp/patchflow-bench")
    parser.add_argument(
        "--again",
        action="store_true",
        help="run overlap_add twice per round: the spread of its paired ratio is the noise",
    )
    parser.add_argument("--child", nargs=4, metavar=("AGG", "SCENE", "OUT", "THREADS"))
    args = parser.parse_args()
    if args.child:
        agg, scene, out, threads = args.child
        job(agg, scene, out, int(threads))
        return

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    scene = work / f"scene-{args.size}.zarr"
    write_scene(scene, args.size)
    print(machine())
    print(
        f"scene {args.size}² × 2 bands uint16, DN → NDVI (not declared pointwise), chips "
        f"{SIZE}, stride {STRIDE}, Hann, {args.threads} threads, Zarr → Zarr; wall: best "
        f"of {args.repeat} interleaved rounds, peak: max",
        flush=True,
    )
    kinds = ["floor", *(a for a in AGGS if a in args.only)]
    if "overlap_add" not in kinds:
        kinds.insert(1, "overlap_add")
    if args.again:
        kinds.append(AGAIN)
    best: dict[str, dict[str, Any]] = {}
    rounds: list[dict[str, float]] = []  # each round's seconds, for paired ratios
    cpus: list[dict[str, float]] = []  # each round's CPU seconds
    for turn in range(args.repeat):
        rounds.append({})
        cpus.append({})
        # each round starts one kind later, so no kind always runs right after another
        for kind in kinds[turn % len(kinds) :] + kinds[: turn % len(kinds)]:
            out = work / f"aggs-{kind.replace(' ', '-')}.zarr"
            agg = "overlap_add" if kind == AGAIN else kind
            res = child(Path(__file__), agg, str(scene), str(out), str(args.threads))
            shutil.rmtree(out, ignore_errors=True)
            seen = best.setdefault(kind, res)
            if "seconds" in res:
                rounds[-1][kind] = res["seconds"]
                cpus[-1][kind] = res["cpu"]
            if "seconds" in res and "seconds" in seen:
                seen["seconds"] = min(seen["seconds"], res["seconds"])
                seen["cpu"] = min(seen["cpu"], res["cpu"])
                seen["rss_mb"] = max(seen["rss_mb"], res["rss_mb"])
    print(f"load average after the runs: {os.getloadavg()[0]:.2f} (1 min)")
    base = best["overlap_add"].get("seconds")
    flo = best["floor"].get("seconds")
    head = (
        f"{'agg':<18} | {'wall s':>7} | {'peak MB':>8} | {'/ overlap_add':>13} | {'/ floor':>7} "
        f"| {'paired / overlap_add: median (min-max)':>38} | {'CPU s':>6} "
        f"| {'CPU / overlap_add: paired median (min-max)':>42}"
    )
    print(head)
    print("-" * len(head))
    for kind, res in best.items():
        if "seconds" not in res:
            print(f"{kind:<18} | failed: {res.get('error')}")
            continue
        to_base = f"{res['seconds'] / base:.2f}" if base else "-"
        to_floor = f"{res['seconds'] / flo:.2f}" if flo else "-"
        # the ratio within each round, where both ran minutes apart at most: robust to the
        # machine's speed drifting between rounds, unlike the ratio of two best walls
        paired = _paired(rounds, kind)
        cpu_paired = _paired(cpus, kind)
        print(
            f"{kind:<18} | {res['seconds']:7.1f} | {res['rss_mb']:8.0f} | {to_base:>13} | "
            f"{to_floor:>7} | {paired:>38} | {res['cpu']:6.1f} | {cpu_paired:>42}"
        )


def _paired(rounds: list[dict[str, float]], kind: str) -> str:
    """Median (range) of ``kind``'s ratio to ``overlap_add`` within each round."""
    pairs = [r[kind] / r["overlap_add"] for r in rounds if kind in r and "overlap_add" in r]
    if not pairs:
        return "-"
    return f"{statistics.median(pairs):.2f} ({min(pairs):.2f}-{max(pairs):.2f})"


if __name__ == "__main__":
    main()
