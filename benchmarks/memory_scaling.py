"""Peak memory and wall time of patchflow Zarr → Zarr against scene size.

Scene: synthetic 2-band uint16 red/NIR (Zarr v3, 2048² chunks), op DN → NDVI (float32),
chips 256, stride 192, Hann, 2 threads. Each job runs in its own process so its peak RSS
(``getrusage``) is its own. The reference in the same run is the op-cost floor: the same op
as a no-overlap ``map_blocks`` pass over the same Zarr, written to Zarr.

"patchflow" runs ``dn_ndvi`` as declared (pointwise: once per block); "chips" runs the same
function as a ``Lambda`` that does not say so, so every overlapping chip is computed.

    python benchmarks/memory_scaling.py                  # 4096², 16384², 32768²
    python benchmarks/memory_scaling.py --sizes 4096 16384 --huge   # adds 65536²
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Timer, child, max_error_vs_full, peak_rss_mb, report, write_scene
from vs_peers import machine


def job(kind: str, scene: str, out: str, check: bool) -> None:
    import dask
    import numpy as np
    import xarray as xr

    import patchflow
    from patchflow.demo import dn_ndvi
    from patchflow.ops import Lambda

    shutil.rmtree(out, ignore_errors=True)
    dn = xr.open_zarr(scene, consolidated=False)["dn"]
    with dask.config.set(scheduler="threads", num_workers=2), Timer() as t:
        if kind == "floor":
            data = dn.data.map_blocks(
                lambda b: dn_ndvi(b[None])[0], dtype=np.float32, meta=np.empty((0, 0, 0), "f4")
            )
            res = xr.DataArray(data[:1], dims=dn.dims).to_dataset(name="ndvi")
            res.to_zarr(out, zarr_format=3, consolidated=False)
            var = "ndvi"
        else:
            # "chips": the same band math as a Lambda that does not declare itself
            # pointwise, so every overlapping chip is computed (what a spatial op costs)
            op = Lambda(dn_ndvi, batched=True) if kind == "chips" else dn_ndvi
            rep = patchflow.run(
                dn,
                op,
                store=out,
                size=256,
                stride=192,
                window="hann",
                keep_sums=kind == "sums",
            )
            var = rep.var
    result = {"seconds": t.seconds, "rss_mb": peak_rss_mb()}
    if check:
        result["max_error"] = max_error_vs_full(out, var, scene)
    report(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 32768])
    parser.add_argument("--huge", action="store_true", help="also 65536²")
    parser.add_argument("--workdir", default="/tmp/patchflow-bench")
    parser.add_argument("--check-max", type=int, default=16384, help="max size to verify")
    parser.add_argument(
        "--sums", action="store_true", help="also time keep_sums=True (num/den written)"
    )
    parser.add_argument("--child", nargs=4, metavar=("KIND", "SCENE", "OUT", "CHECK"))
    args = parser.parse_args()
    if args.child:
        kind, scene, out, check = args.child
        job(kind, scene, out, check == "1")
        return
    sizes = args.sizes + ([65536] if args.huge else [])
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    print(machine(), flush=True)
    print(
        f"{'size':>7} | {'floor s':>8} {'floor MB':>9} | {'patchflow s':>11} {'MB':>7} "
        f"| {'ratio':>6} | {'ns/px':>6} | {'chips s':>8} {'MB':>7} | {'ratio':>6} | "
        f"{'ns/px':>6} | max error"
    )
    import os

    for size in sizes:
        scene = work / f"scene-{size}.zarr"
        write_scene(scene, size)
        check = "1" if size <= args.check_max else "0"
        floor = child(Path(__file__), "floor", str(scene), str(work / "floor.zarr"), "0")
        ours = child(Path(__file__), "patchflow", str(scene), str(work / "pf.zarr"), check)
        shutil.rmtree(work / "pf.zarr", ignore_errors=True)
        chips = child(Path(__file__), "chips", str(scene), str(work / "pf.zarr"), "0")
        if "error" in floor or "error" in ours or "error" in chips:
            fail = floor.get("error") or ours.get("error") or chips.get("error")
            print(f"{size:>7} | failed: {fail}")
            continue
        px = float(size) ** 2
        err = f"{ours['max_error']:.2g}" if "max_error" in ours else "-"
        if args.sums:
            sums = child(Path(__file__), "sums", str(scene), str(work / "sums.zarr"), "0")
            shutil.rmtree(work / "sums.zarr", ignore_errors=True)
            err += (
                f" | with num/den stored: {sums['seconds']:.1f} s, {sums['rss_mb']:.0f} MB "
                f"({sums['seconds'] / ours['seconds']:.2f}× patchflow)"
            )
        print(
            f"{size:>7} | {floor['seconds']:8.1f} {floor['rss_mb']:9.0f} | "
            f"{ours['seconds']:11.1f} {ours['rss_mb']:7.0f} | "
            f"{ours['seconds'] / floor['seconds']:6.2f} | {ours['seconds'] / px * 1e9:6.1f} | "
            f"{chips['seconds']:8.1f} {chips['rss_mb']:7.0f} | "
            f"{chips['seconds'] / floor['seconds']:6.2f} | {chips['seconds'] / px * 1e9:6.1f} | "
            f"{err}",
            flush=True,
        )
        shutil.rmtree(work / "floor.zarr", ignore_errors=True)
        shutil.rmtree(work / "pf.zarr", ignore_errors=True)
    print(f"load average after the runs: {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
