"""A small CNN as a chip operator: patchflow against a hand-written chip loop, in one run.

Scene: synthetic 2-band uint16 red/NIR (Zarr v3, 2048² chunks), op DN × 1e-4 → a small
conv net (2 → 16 → 16 → 1, 3×3 convolutions, ReLU, :func:`patchflow.ops.tiny_cnn`) on CPU
torch, chips 256, stride 192, Hann, 2 threads. Both contenders read the scene Zarr and
write the float32 result to Zarr (2048² chunks, Zstd level 1) inside the timing:

* ``loop``: what users write by hand — read the scene into numpy, then for each row of
  chips stack the row into one batch, run the model on it (``torch.no_grad``), and
  overlap-add ``w · out`` and ``w`` into scene-sized numerator/denominator arrays; divide
  and write. The weights are patchflow's border-aware Hann weights, so both contenders
  compute the same map and their difference is a correctness check.
* ``patchflow``: ``patchflow.run(dn, DNToReflectance(1e-4) | ModelOp(net), store=…)``
  under ``dask.config.set(scheduler="threads", num_workers=2)``.

torch gets 2 intra-op threads in the loop (it has the whole machine) and 1 per dask thread
in patchflow (2 dask threads), so both use the 2 cores. Each contender runs in its own
process, so its peak RSS is its own; imports stay out of the timing.

    python benchmarks/ml_op.py                    # 4096²
    python benchmarks/ml_op.py --sizes 4096 8192  # memory flat with scene size?
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Timer, child, peak_rss_mb, report, write_scene
from vs_peers import _load_scene, _starts, _write, machine

SIZE, STRIDE, SCALE = 256, 192, 1e-4
#: chips per model call in patchflow (``None``: ModelOp's default, one chip on CPU)
BATCH = (
    int(os.environ["PATCHFLOW_BENCH_BATCH"]) if os.environ.get("PATCHFLOW_BENCH_BATCH") else None
)
CONTENDERS = ("loop", "patchflow")


def _net() -> Any:
    from patchflow.ops import tiny_cnn

    return tiny_cnn(2, 1, seed=0, hidden=16, depth=3)


def loop(scene: str, out: str) -> None:
    import numpy as np
    import torch

    from patchflow import make_window

    torch.set_num_threads(2)
    net = _net()
    dn = _load_scene(scene)
    img = dn.astype(np.float32) * np.float32(SCALE)
    del dn
    h, w = img.shape[-2:]
    win = make_window("hann", (SIZE, SIZE))
    num = np.zeros((h, w), np.float32)
    den = np.zeros((h, w), np.float32)
    ys, xs = _starts(h), _starts(w)
    with torch.no_grad():
        for r in ys:
            batch = np.stack([img[:, r : r + SIZE, c : c + SIZE] for c in xs])
            pred = net(torch.from_numpy(batch)).numpy()[:, 0]
            for k, c in enumerate(xs):
                wt = win.weights(r == 0, r + SIZE >= h, c == 0, c + SIZE >= w)
                num[r : r + SIZE, c : c + SIZE] += wt * pred[k]
                den[r : r + SIZE, c : c + SIZE] += wt
    _write((num / den)[None], out)


def patchflow_(scene: str, out: str) -> None:
    import dask
    import torch
    import xarray as xr

    import patchflow
    from patchflow.ops import DNToReflectance, ModelOp

    torch.set_num_threads(1)
    op = DNToReflectance(scale=SCALE) | ModelOp(_net(), batch_size=BATCH, device="cpu")
    dn = xr.open_zarr(scene, consolidated=False)["dn"]
    with dask.config.set(scheduler="threads", num_workers=2):
        patchflow.run(dn, op, store=out, size=SIZE, stride=STRIDE, window="hann")


JOBS = {"loop": loop, "patchflow": patchflow_}


def _difference(a: str, b: str) -> float:
    """Max |a - b| over the two stored maps, block by block."""
    import numpy as np
    import xarray as xr

    x = xr.open_zarr(a, consolidated=False)
    y = xr.open_zarr(b, consolidated=False)
    xa = next(iter(x.data_vars.values()))
    ya = next(iter(y.data_vars.values()))
    h, w = xa.shape[-2:]
    worst = 0.0
    for r in range(0, h, 2048):
        for c in range(0, w, 2048):
            p = np.asarray(xa[..., r : r + 2048, c : c + 2048].values, np.float64).squeeze()
            q = np.asarray(ya[..., r : r + 2048, c : c + 2048].values, np.float64).squeeze()
            worst = max(worst, float(np.nanmax(np.abs(p - q))))
    return worst


def job(kind: str, scene: str, out: str) -> None:
    import numpy  # noqa: F401  (imports stay out of the timing)
    import torch  # noqa: F401
    import xarray  # noqa: F401
    import zarr  # noqa: F401

    import patchflow  # noqa: F401

    shutil.rmtree(out, ignore_errors=True)
    with Timer() as t:
        JOBS[kind](scene, out)
    report({"seconds": t.seconds, "rss_mb": peak_rss_mb()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096], help="scene edges, px")
    parser.add_argument("--repeat", type=int, default=2, help="runs each; best wall is shown")
    parser.add_argument("--workdir", default="/tmp/patchflow-bench")
    parser.add_argument("--batch-size", type=int, default=None, help="ModelOp batch_size")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "SCENE", "OUT"))
    args = parser.parse_args()
    if args.child:
        job(*args.child)
        return
    if args.batch_size is not None:
        os.environ["PATCHFLOW_BENCH_BATCH"] = str(args.batch_size)  # read by the children
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    print(machine())
    print(
        "op: DN × 1e-4 → CNN 2→16→16→1 (3×3, ReLU), CPU torch; chips 256, stride 192, Hann; "
        f"patchflow ModelOp batch_size={args.batch_size or 'default'}; "
        f"wall: best of {args.repeat}, peak: max of {args.repeat}",
        flush=True,
    )
    head = (
        f"{'scene':>7} | {'loop s':>7} | {'loop MB':>8} | {'patchflow s':>11} | "
        f"{'patchflow MB':>12} | {'patchflow / loop':>16} | {'max |diff|':>10}"
    )
    rows = []
    for size in args.sizes:
        scene = work / f"scene-{size}.zarr"
        write_scene(scene, size)
        best: dict[str, dict[str, float]] = {}
        for _ in range(args.repeat):
            for kind in CONTENDERS:
                out = work / f"ml-{kind}-{size}.zarr"
                res = child(Path(__file__), kind, str(scene), str(out))
                if "error" in res:
                    raise SystemExit(f"{kind} failed: {res['error']}")
                b = best.setdefault(kind, res)
                b["seconds"] = min(b["seconds"], res["seconds"])
                b["rss_mb"] = max(b["rss_mb"], res["rss_mb"])
        diff = _difference(
            str(work / f"ml-loop-{size}.zarr"), str(work / f"ml-patchflow-{size}.zarr")
        )
        for kind in CONTENDERS:
            shutil.rmtree(work / f"ml-{kind}-{size}.zarr", ignore_errors=True)
        lo, pf = best["loop"], best["patchflow"]
        rows.append(
            f"{size:>6}² | {lo['seconds']:7.1f} | {lo['rss_mb']:8.0f} | {pf['seconds']:11.1f} | "
            f"{pf['rss_mb']:12.0f} | {pf['seconds'] / lo['seconds']:16.2f} | {diff:10.2g}"
        )
    print(f"load average after the runs: {os.getloadavg()[0]:.2f} (1 min)")
    print(head)
    print("-" * len(head))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
