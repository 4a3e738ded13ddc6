"""Where the chip path's memory goes: task results held by the scheduler, per key prefix.

Runs the "chips" job of ``memory_scaling.py`` (``dn_ndvi`` as an undeclared
``patchflow.ops.Lambda``: every overlapping 256/192 Hann chip is computed and blended,
Zarr → Zarr through ``patchflow.run``) on the threaded scheduler with 2 workers, one size
per child process (so each peak RSS is its own), and records:

* peak RSS (``getrusage``) and the RSS seen after every task (``/proc/self/statm``);
* the task results the scheduler holds (``state["cache"]``) after every task, grouped by
  key prefix (``dask.utils.key_split``): the most held at once per prefix (count and MB),
  the largest total and its breakdown, and how long each prefix's results stay held
  (in tasks finished between a result's creation and its release);
* ``dask.order`` diagnostics of the same graph: the most results a one-at-a-time run in
  ``order`` would hold at once, and the mean/max ``age`` (tasks between a result's
  creation and its last dependent) per prefix.

RSS minus held bytes is what the allocator, the interpreter and the in-flight tasks'
temporaries account for: if held bytes stay flat while RSS grows, the growth is not
the graph's.

    python benchmarks/memory_trace.py --sizes 8192 16384 32768
    python benchmarks/memory_trace.py --sizes 16384 --scenes /tmp/pf-ab --json out.json
    python benchmarks/memory_trace.py --sizes 32768 524288x2048 --scenes /tmp/pf-trace

A size is ``N`` (an ``N``×``N`` scene, ``scene-N.zarr``) or ``HxW`` (``scene-HxW.zarr``);
missing scenes are written first. A one-block-column scene with as many blocks as a square
one separates what grows with the scene's width (results held for a block row) from what
grows with the run's length (allocator retention). Scenes only two or three blocks high
do not: ``dask.order`` then sweeps along the short axis.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import child, peak_rss_mb, report, write_scene

MB = 1024.0 * 1024.0
_PAGE = 4096


def _rss_bytes() -> int:
    """Current resident set size of this process (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def _cpu_seconds() -> float:
    """User + system CPU time of this process so far (less load-sensitive than wall)."""
    import resource

    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def _tracer() -> Any:
    """A dask ``Callback`` that tracks held results per key prefix (built lazily: the
    parent process never imports dask)."""
    from dask.callbacks import Callback
    from dask.order import diagnostics, order
    from dask.sizeof import sizeof
    from dask.utils import key_split

    class Tracer(Callback):
        def __init__(self) -> None:
            super().__init__()
            self.sizes: dict[Any, int] = {}
            self.born: dict[Any, int] = {}
            self.max_count: dict[str, int] = defaultdict(int)
            self.max_bytes: dict[str, int] = defaultdict(int)
            self.ages: dict[str, list[int]] = defaultdict(list)
            self.peak_total = 0
            self.peak_breakdown: dict[str, tuple[int, int]] = {}
            self.peak_gap = 0  # max(RSS - held) seen after a task
            self.peak_rss_seen = 0
            self.held_at_rss_peak = 0
            self.done = 0
            self.graphs: list[dict[str, Any]] = []
            self.execution: list[str] = []

        def _start_state(self, dsk: Any, state: dict[str, Any]) -> None:
            t0 = time.perf_counter()
            o = order(dsk)
            info, pressure = diagnostics(dsk, o)
            ages: dict[str, list[int]] = defaultdict(list)
            counts: dict[str, int] = defaultdict(int)
            for key, item in info.items():
                ages[key_split(key)].append(item.age)
                counts[key_split(key)] += 1
            self.graphs.append(
                {
                    "rss_start_mb": _rss_bytes() / MB,
                    "tasks": len(dsk),
                    "tasks_by_prefix": dict(counts),
                    "order_max_pressure": max(pressure) if pressure else 0,
                    "order_age": {
                        p: {"mean": sum(a) / len(a), "max": max(a)} for p, a in ages.items()
                    },
                    "order_seconds": time.perf_counter() - t0,
                }
            )
            for key in state["cache"]:
                self.born[key] = 0

        def _posttask(
            self, key: Any, result: Any, dsk: Any, state: dict[str, Any], worker_id: Any
        ) -> None:
            self.done += 1
            self.execution.append(key_split(key))
            cache = state["cache"]
            self.born.setdefault(key, self.done)
            for gone in [k for k in self.born if k not in cache]:
                self.ages[key_split(gone)].append(self.done - self.born.pop(gone))
                self.sizes.pop(gone, None)
            count: dict[str, int] = defaultdict(int)
            nbytes: dict[str, int] = defaultdict(int)
            for k, v in cache.items():
                size = self.sizes.get(k)
                if size is None:
                    size = self.sizes[k] = int(sizeof(v))
                p = key_split(k)
                count[p] += 1
                nbytes[p] += size
            for p in count:
                self.max_count[p] = max(self.max_count[p], count[p])
                self.max_bytes[p] = max(self.max_bytes[p], nbytes[p])
            total = sum(nbytes.values())
            if total > self.peak_total:
                self.peak_total = total
                self.peak_breakdown = {p: (count[p], nbytes[p]) for p in count}
            rss = _rss_bytes()
            self.peak_gap = max(self.peak_gap, rss - total)
            if rss > self.peak_rss_seen:
                self.peak_rss_seen, self.held_at_rss_peak = rss, total

        def summary(self) -> dict[str, Any]:
            prefixes = sorted(set(self.max_count) | set(self.ages))
            return {
                "held_peak_mb": self.peak_total / MB,
                "held_peak_breakdown": {
                    p: {"n": n, "mb": b / MB} for p, (n, b) in self.peak_breakdown.items()
                },
                "held_max_by_prefix": {
                    p: {
                        "n": self.max_count.get(p, 0),
                        "mb": self.max_bytes.get(p, 0) / MB,
                        "age_mean": (sum(a) / len(a)) if (a := self.ages.get(p)) else 0.0,
                        "age_max": max(a) if a else 0,
                    }
                    for p in prefixes
                },
                "rss_seen_peak_mb": self.peak_rss_seen / MB,
                "held_at_rss_peak_mb": self.held_at_rss_peak / MB,
                "max_rss_minus_held_mb": self.peak_gap / MB,
                "graphs": self.graphs,
                "tasks_run": self.done,
            }

    return Tracer()


def job(scene: str, out: str, arena: str) -> None:
    """One traced chips-path run (in a child process)."""
    import dask
    import xarray as xr

    import patchflow
    from patchflow.demo import dn_ndvi
    from patchflow.ops import Lambda

    shutil.rmtree(out, ignore_errors=True)
    dn = xr.open_zarr(scene, consolidated=False)["dn"]
    tracer = _tracer()
    c0 = _cpu_seconds()
    t0 = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=2), tracer:
        patchflow.run(
            dn, Lambda(dn_ndvi, batched=True), store=out, size=256, stride=192, window="hann"
        )
    seconds = time.perf_counter() - t0
    cpu = _cpu_seconds() - c0
    result = {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "rss_mb": peak_rss_mb(),
        "arena_max": arena,
        **tracer.summary(),
    }
    shutil.rmtree(out, ignore_errors=True)
    report(result)


def _shape(size: str) -> tuple[int, int]:
    """``"N"`` → ``(N, N)``; ``"HxW"`` → ``(H, W)``."""
    h, _, w = size.partition("x")
    return int(h), int(w or h)


def _write_shaped(path: Path, shape: tuple[int, int]) -> None:
    """Like ``_common.write_scene`` for a non-square scene (in a child process)."""
    if path.exists():
        return
    code = (
        "import sys, warnings; warnings.simplefilter('ignore');"
        "from patchflow.io.synthetic import make_scene;"
        f"make_scene({shape!r}, chunks=2048).to_dataset(name='dn')"
        ".to_zarr(sys.argv[1], zarr_format=3, consolidated=False)"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)


def _table(size: str, r: dict[str, Any]) -> str:
    h, w = _shape(size)
    lines = [
        f"{h}x{w}: peak RSS {r['rss_mb']:.0f} MB (seen after a task {r['rss_seen_peak_mb']:.0f}, "
        f"held then {r['held_at_rss_peak_mb']:.0f}); held peak {r['held_peak_mb']:.0f} MB; "
        f"max RSS-held {r['max_rss_minus_held_mb']:.0f} MB; {r['seconds']:.1f} s wall, "
        f"{r['cpu_seconds']:.1f} s CPU (one run, noisy)",
        f"  {'prefix':<28} {'max n':>6} {'max MB':>8} {'at peak n':>9} {'MB':>7} "
        f"{'age mean':>9} {'age max':>8}",
    ]
    at_peak = r["held_peak_breakdown"]
    for p, v in sorted(r["held_max_by_prefix"].items(), key=lambda kv: -kv[1]["mb"]):
        pk = at_peak.get(p, {"n": 0, "mb": 0.0})
        lines.append(
            f"  {p:<28} {v['n']:>6} {v['mb']:>8.1f} {pk['n']:>9} {pk['mb']:>7.1f} "
            f"{v['age_mean']:>9.1f} {v['age_max']:>8}"
        )
    for g in r["graphs"]:
        if g["tasks"] < 10:
            continue
        ages = ", ".join(
            f"{p} {a['mean']:.0f}/{a['max']}" for p, a in sorted(g["order_age"].items())
        )
        lines.append(
            f"  RSS at start {g['rss_start_mb']:.0f} MB; dask.order: {g['tasks']} tasks, max "
            f"held (one at a time in order) {g['order_max_pressure']}; age mean/max: {ages}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["8192", "16384", "32768"])
    parser.add_argument("--scenes", default="/tmp/pf-ab", help="where scene-<size>.zarr live")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--child", nargs=3, metavar=("SCENE", "OUT", "ARENA"))
    args = parser.parse_args()
    if args.child:
        job(*args.child)
        return
    import os

    scenes = Path(args.scenes)
    scenes.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    work = Path(tempfile.mkdtemp(prefix="pf-trace-"))
    try:
        for size in args.sizes:
            scene = scenes / f"scene-{size}.zarr"
            h, w = _shape(size)
            if h == w:
                write_scene(scene, h)
            else:
                _write_shaped(scene, (h, w))
            arena = os.environ.get("MALLOC_ARENA_MAX", "")
            r = child(Path(__file__), str(scene), str(work / "out.zarr"), arena)
            results[size] = r
            print(_table(size, r) if "error" not in r else f"{size}: {r['error']}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
