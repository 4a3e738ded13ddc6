"""Graph construction at continental scale: build (never compute) the graph, time it.

For square synthetic scenes from 16k² to 200k² pixels (2048² blocks, chips 256 stride 192)
print the chip and block counts, the number of tasks, the time to build the lazy result
(planning + graph), and the size of the pickled graph. The op is the NDVI band math
wrapped in a ``Lambda`` that does not declare itself pointwise, so the graph is the chip
path's (overlapping chips, halos, spill-over pieces); a pointwise op would get the
two-tasks-per-block strip graph instead.

    python benchmarks/graph_scale.py
    python benchmarks/graph_scale.py --sizes 16384 65536
"""

from __future__ import annotations

import argparse
import time

import cloudpickle
import numpy as np

import patchflow
from patchflow.demo import dn_ndvi
from patchflow.io.synthetic import make_scene
from patchflow.ops import Lambda


def measure(size: int) -> dict[str, float]:
    scene = make_scene((size, size), chunks=2048)
    t0 = time.perf_counter()
    op = Lambda(dn_ndvi)  # undeclared: measure the overlapping-chip graph
    out = patchflow.apply(scene, op, size=256, stride=192, window="hann")
    graph = out.data.__dask_graph__()
    tasks = dict(graph)  # materialise every layer: what a scheduler receives
    build = time.perf_counter() - t0
    t1 = time.perf_counter()
    blob = cloudpickle.dumps(tasks)  # what dask.distributed ships
    pickle_s = time.perf_counter() - t1
    chips = patchflow.ChipGrid((size, size), 256, 192).n_chips
    ours = sum(1 for k in tasks if isinstance(k, tuple) and str(k[0]).startswith("patchflow-"))
    return {
        "size": size,
        "chips": chips,
        "blocks": int(np.prod(out.data.numblocks)),
        "tasks": len(tasks),
        "ours": ours,
        "build_s": build,
        "pickle_mb": len(blob) / 1e6,
        "pickle_s": pickle_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[16384, 32768, 65536, 131072, 200000]
    )
    args = parser.parse_args()
    print(
        f"{'scene':>8} | {'chips':>9} | {'blocks':>6} | {'tasks':>7} | {'patchflow':>9} | "
        f"{'build s':>7} | {'pickle MB':>9}"
    )
    for size in args.sizes:
        r = measure(size)
        print(
            f"{size:>7}² | {r['chips']:>9,} | {r['blocks']:>6,} | {r['tasks']:>7,} | "
            f"{r['ours']:>9,} | {r['build_s']:7.2f} | {r['pickle_mb']:9.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
