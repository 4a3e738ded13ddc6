"""patchflow against what people use today, on one scene, in one run.

Scene: synthetic 2-band uint16 red/NIR (Zarr v3, 2048² chunks), op DN → NDVI (float32,
:func:`patchflow.demo.dn_ndvi`), chips 256, stride 192 (overlap 64), Hann, 2 threads where
the contender can use them. Every contender reads the scene Zarr and writes its result to a
Zarr v3 store (2048² chunks, Zstd level 1 — patchflow's default codec) inside the timing:

* ``naive``: what users write by hand — load the whole scene into numpy, loop over the
  chips (stride 192, last chip shifted to the edge), ``num += w * op(chip)``, ``den += w``
  with a plain ``scipy.signal.windows.hann`` (symmetric, 0 at both ends, no border
  handling), ``num / den``. Scene-border pixels get zero weight, so they come out NaN.
* ``tiler``: ``tiler.Tiler`` (overlap 64, ``mode="reflect"`` pads the last tiles past the
  edge) + ``tiler.Merger(window="hann")`` on the in-memory scene, op per batch of 64
  tiles, ``merge()``. Zero-weight border pixels come out 0 (``nan_to_num``).
* ``monai``: ``sliding_window_inference(mode="gaussian", overlap=0.25)`` on the
  in-memory scene, if ``import monai`` works (otherwise reported as skipped).
* ``floor``: the op-cost floor — the same op as a no-overlap ``map_blocks`` pass over the
  same Zarr, written to Zarr (as in ``memory_scaling.py``, but with the codec above).
* ``patchflow``: ``patchflow.run(xr.open_zarr(scene)["dn"], dn_ndvi, store=…, size=256,
  stride=192, window="hann")`` under ``dask.config.set(scheduler="threads",
  num_workers=2)``. ``dn_ndvi`` is band math, declared pointwise, so the engine runs it
  once per block (the stitched result is the same, exactly).
* ``patchflow_chips``: the same with the op wrapped in a ``Lambda`` that does not declare
  itself pointwise: every overlapping chip is computed and blended, which is what any
  spatial operator (a filter, a CNN) costs.

Each contender runs in its own process, so its peak RSS (``getrusage``) is its own; imports
are done before the timing starts. The error against the full-scene op is computed after
the timing (and after the RSS reading), block by block from the written store.

    python benchmarks/vs_peers.py                 # 16384² (in-memory contenders: ~10 GB)
    python benchmarks/vs_peers.py --size 8192
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
import shutil
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Timer, child, error_stats, peak_rss_mb, report, write_scene

SIZE, STRIDE, BATCH = 256, 192, 64
CONTENDERS = ("naive", "tiler", "monai", "floor", "patchflow", "patchflow_chips")
LABELS = {
    "naive": "naive numpy loop (Hann)",
    "tiler": "tiler Tiler+Merger (hann)",
    "monai": "MONAI sliding_window (gaussian)",
    "floor": "op-cost floor (map_blocks)",
    "patchflow": "patchflow Zarr→Zarr",
    "patchflow_chips": "patchflow, op not pointwise",
}


class Skipped(Exception):
    """The contender cannot run here (e.g. not installed)."""


def _encoding(var: str) -> dict[str, Any]:
    import zarr

    return {var: {"chunks": (1, 2048, 2048), "compressors": [zarr.codecs.ZstdCodec(level=1)]}}


def _write(result: Any, out: str) -> None:
    """A ``(1, y, x)`` numpy or dask array → Zarr v3 variable ``ndvi``."""
    import xarray as xr

    ds = xr.DataArray(result, dims=("band", "y", "x")).to_dataset(name="ndvi")
    ds.to_zarr(out, zarr_format=3, consolidated=False, encoding=_encoding("ndvi"))


def _load_scene(scene: str) -> Any:
    """The whole scene as one in-memory numpy array ``(2, y, x)`` uint16."""
    import xarray as xr

    return xr.open_zarr(scene, consolidated=False, chunks=None)["dn"].values


def _starts(n: int) -> list[int]:
    """Chip origins every ``STRIDE`` px, plus a last chip shifted to end at the edge."""
    starts = list(range(0, n - SIZE + 1, STRIDE))
    if starts[-1] + SIZE < n:
        starts.append(n - SIZE)
    return starts


def naive(scene: str, out: str, threads: int) -> str:
    import numpy as np
    from scipy.signal.windows import hann

    from patchflow.demo import dn_ndvi

    dn = _load_scene(scene)
    _, h, w = dn.shape
    win = np.outer(hann(SIZE), hann(SIZE)).astype(np.float32)
    num = np.zeros((h, w), np.float32)
    den = np.zeros((h, w), np.float32)
    for r in _starts(h):
        for c in _starts(w):
            chip = dn[None, :, r : r + SIZE, c : c + SIZE]
            num[r : r + SIZE, c : c + SIZE] += win * dn_ndvi(chip)[0, 0]
            den[r : r + SIZE, c : c + SIZE] += win
    del dn
    with np.errstate(invalid="ignore", divide="ignore"):
        result = num / den
    del num, den
    _write(result[None], out)
    return "ndvi"


def tiler_(scene: str, out: str, threads: int) -> str:
    from tiler import Merger, Tiler

    from patchflow.demo import dn_ndvi

    dn = _load_scene(scene)
    bands, h, w = dn.shape
    common = {"overlap": SIZE - STRIDE, "channel_dimension": 0, "mode": "reflect"}
    tiles_in = Tiler(data_shape=dn.shape, tile_shape=(bands, SIZE, SIZE), **common)
    tiles_out = Tiler(data_shape=(1, h, w), tile_shape=(1, SIZE, SIZE), **common)
    merger = Merger(tiles_out, window="hann")
    for batch_id, batch in tiles_in(dn, batch_size=BATCH):
        merger.add_batch(batch_id, BATCH, dn_ndvi(batch))
    del dn
    result = merger.merge(unpad=True)
    del merger
    _write(result, out)
    return "ndvi"


def monai(scene: str, out: str, threads: int) -> str:
    try:
        import torch
        from monai.inferers import sliding_window_inference
    except ImportError as exc:
        raise Skipped("not installed") from exc
    import numpy as np

    from patchflow.demo import dn_ndvi

    torch.set_num_threads(threads)
    x = torch.from_numpy(_load_scene(scene).astype(np.float32)[None])  # (1, 2, y, x)

    def predictor(chips: Any) -> Any:
        return torch.from_numpy(np.ascontiguousarray(dn_ndvi(chips.numpy())))

    with torch.no_grad():
        y = sliding_window_inference(
            x,
            roi_size=(SIZE, SIZE),
            sw_batch_size=BATCH,
            predictor=predictor,
            overlap=1 - STRIDE / SIZE,
            mode="gaussian",
        )
    del x
    _write(y[0].numpy(), out)
    return "ndvi"


def floor(scene: str, out: str, threads: int) -> str:
    import dask
    import numpy as np
    import xarray as xr

    from patchflow.demo import dn_ndvi

    dn = xr.open_zarr(scene, consolidated=False)["dn"]
    with dask.config.set(scheduler="threads", num_workers=threads):
        data = dn.data.map_blocks(
            lambda b: dn_ndvi(b[None])[0], dtype=np.float32, meta=np.empty((0, 0, 0), "f4")
        )
        _write(data[:1], out)
    return "ndvi"


def patchflow_(scene: str, out: str, threads: int) -> str:
    import dask
    import xarray as xr

    import patchflow
    from patchflow.demo import dn_ndvi

    dn = xr.open_zarr(scene, consolidated=False)["dn"]
    with dask.config.set(scheduler="threads", num_workers=threads):
        rep = patchflow.run(dn, dn_ndvi, store=out, size=SIZE, stride=STRIDE, window="hann")
    return str(rep.var)


def patchflow_chips(scene: str, out: str, threads: int) -> str:
    import dask
    import xarray as xr

    import patchflow
    from patchflow.demo import dn_ndvi
    from patchflow.ops import Lambda

    # the same band math hidden in a Lambda that does not declare itself pointwise: the
    # engine then runs every overlapping chip (what any spatial op, e.g. a CNN, costs)
    op = Lambda(dn_ndvi, batched=True)
    dn = xr.open_zarr(scene, consolidated=False)["dn"]
    with dask.config.set(scheduler="threads", num_workers=threads):
        rep = patchflow.run(dn, op, store=out, size=SIZE, stride=STRIDE, window="hann")
    return str(rep.var)


JOBS = {
    "naive": naive,
    "tiler": tiler_,
    "monai": monai,
    "floor": floor,
    "patchflow": patchflow_,
    "patchflow_chips": patchflow_chips,
}
COMMON = ("numpy", "dask.array", "xarray", "zarr", "patchflow", "patchflow.demo")
IMPORTS = {"naive": ("scipy.signal.windows",), "tiler": ("tiler",), "monai": ("torch", "monai")}


def job(kind: str, scene: str, out: str, threads: int, check: bool) -> None:
    shutil.rmtree(out, ignore_errors=True)
    try:
        for module in (*COMMON, *IMPORTS.get(kind, ())):  # imports stay out of the timing
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise Skipped("not installed") from exc
        with Timer() as t:
            var = JOBS[kind](scene, out, threads)
    except Skipped as exc:
        report({"skipped": str(exc)})
        return
    result: dict[str, Any] = {"seconds": t.seconds, "rss_mb": peak_rss_mb()}
    if check:
        result.update(error_stats(out, var, scene))
    shutil.rmtree(out, ignore_errors=True)
    report(result)


def machine() -> str:
    """Date, CPU model and count, RAM (``/proc/meminfo``) and library versions."""
    model, ram = platform.processor() or platform.machine(), "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        with open("/proc/meminfo") as f:
            kib = next(int(ln.split()[1]) for ln in f if ln.startswith("MemTotal"))
        ram = f"{kib / 2**20:.1f} GiB"
    except (OSError, StopIteration):
        pass
    versions = []
    for pkg in ("numpy", "dask", "xarray", "zarr", "tiler", "monai", "patchflow"):
        try:
            versions.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{pkg} -")
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (
        f"{now} | {os.cpu_count()} CPUs ({model}) | RAM {ram} | "
        f"load average {os.getloadavg()[0]:.2f} (1 min) | Python "
        f"{platform.python_version()}\n{', '.join(versions)}"
    )


def _fmt_err(value: float) -> str:
    return "inf" if value == float("inf") else f"{value:.2g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16384, help="scene edge, px")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    parser.add_argument("--repeat", type=int, default=1, help="runs each; best wall is shown")
    parser.add_argument("--workdir", default="/tmp/patchflow-bench")
    parser.add_argument("--child", nargs=5, metavar=("KIND", "SCENE", "OUT", "THREADS", "CHECK"))
    args = parser.parse_args()
    if args.child:
        kind, scene, out, threads, check = args.child
        job(kind, scene, out, int(threads), check == "1")
        return

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    scene = work / f"scene-{args.size}.zarr"
    write_scene(scene, args.size)
    scene_mb = 2 * 2 * args.size**2 / 2**20
    print(machine())
    print(
        f"scene {args.size}² × 2 bands uint16 ({scene_mb:.0f} MiB in memory), DN → NDVI, "
        f"chips {SIZE}, stride {STRIDE}, Hann, {args.threads} threads where applicable; "
        f"wall: best of {args.repeat}, peak: max of {args.repeat}",
        flush=True,
    )
    results: dict[str, dict[str, Any]] = {}
    for i in range(args.repeat):
        for kind in [k for k in CONTENDERS if k in args.only]:
            out = work / f"vs-{kind}.zarr"
            run = [kind, str(scene), str(out), str(args.threads), "1" if i == 0 else "0"]
            res = child(Path(__file__), *run)
            shutil.rmtree(out, ignore_errors=True)
            best = results.setdefault(kind, res)
            if "seconds" in res and "seconds" in best:
                best["seconds"] = min(best["seconds"], res["seconds"])
                best["rss_mb"] = max(best["rss_mb"], res["rss_mb"])
    print(f"load average after the runs: {os.getloadavg()[0]:.2f} (1 min)")

    ours = results.get("patchflow", {}).get("seconds")
    head = (
        f"{'contender':<32} | {'wall s':>7} | {'peak MB':>8} | {'max error':>9} | "
        f"{'px > 1e-6':>9} | {'max err inside':>14} | {'wall / patchflow':>16}"
    )
    print(head)
    print("-" * len(head))
    for kind, res in results.items():
        label = LABELS[kind]
        if "skipped" in res:
            print(f"{label:<32} | skipped ({res['skipped']})")
            continue
        if "error" in res:
            print(f"{label:<32} | failed: {res['error']}")
            continue
        ratio = f"{res['seconds'] / ours:.2f}" if ours else "-"
        print(
            f"{label:<32} | {res['seconds']:7.1f} | {res['rss_mb']:8.0f} | "
            f"{_fmt_err(res['max_error']):>9} | {res['bad_pixels']:9.0f} | "
            f"{_fmt_err(res['inner_max_error']):>14} | {ratio:>16}"
        )
    flo = results.get("floor", {}).get("seconds")
    if ours and flo:
        print(f"patchflow wall / op-cost floor: {ours / flo:.2f}")
    chips = results.get("patchflow_chips", {}).get("seconds")
    if chips and flo:
        print(f"patchflow (op not pointwise) wall / op-cost floor: {chips / flo:.2f}")
    print(
        "max error: vs the op on the whole scene, every pixel (inf: NaN where the reference "
        "is finite); max err inside: without the outermost pixel ring"
    )


if __name__ == "__main__":
    main()
