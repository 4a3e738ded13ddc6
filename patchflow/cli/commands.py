"""The ``patchflow`` sub-commands: their argument parser and what each one runs.

``patchflow demo``
    Synthetic red/NIR scene → DN → NDVI on 256/192 Hann chips → Zarr store + PNG preview,
    verified against NDVI on the whole scene.
``patchflow apply INPUT OUTPUT``
    Run an operator (``--op ndvi`` or a JSON ``--pipeline``) over a GeoTIFF/COG or Zarr
    and write a Zarr store (streamed block by block, resumable) or a COG.
``patchflow resume STORE``
    Finish an interrupted ``.zarr`` run (or recompute its damaged blocks) from the job the
    store records: no need to retype INPUT and the options.
``patchflow inspect STORE``
    Status of a ``.zarr`` OUTPUT: blocks done, missing and corrupt (checksums verified);
    exit status 1 if it is incomplete or damaged.
``patchflow grid INPUT``
    Print (and optionally plot) the chips ``apply`` would use.

Errors are one line on stderr, ``patchflow: error: …``, with exit status 2 for bad usage
and 1 for failures while running; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from patchflow.errors import CommandError, ParameterError, UsageError, cli_wording
from patchflow.io.cog import write_cog
from patchflow.io.sources import ZARR_SUFFIXES, one_line, open_raster

__all__ = ["build_parser", "main"]

PROG = "patchflow"
LOCAL_SCHEDULERS = ("threads", "processes", "synchronous")
REMOTE = re.compile(r"^(tcp|tls|ucx|inproc)://\S+$")
TIFF_SUFFIXES = (".tif", ".tiff")

SCHEDULER_HELP = (
    "dask scheduler: threads, processes, synchronous, or tcp://HOST:PORT of a running "
    "dask.distributed scheduler (default: threads, or the active dask config)"
)


#: how ``--red``/``--nir`` address bands (the CLI counts like GDAL; Python APIs are 0-based)
BAND_CONVENTION = "band numbers are 1-based like GDAL's (gdal_translate -b): 1 is the first band"
BAND_HELP = (
    "a GDAL-style 1-based band number (1 = the first band; the Python API's positions are "
    "0-based) or a band name"
)

#: Built-in operators of ``patchflow apply --op``.
OPS = {"ndvi": "DN -> reflectance (x --scale) -> NDVI of bands --red and --nir (1 band out)"}


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are exceptions (so ``main`` prints one line)."""

    def error(self, message: str) -> NoReturn:
        hint = f" (see '{self.prog} --help')"
        raise UsageError(message + hint)


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: …)`` only for options whose default says something."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action) or ""


# --------------------------------------------------------------------------- argument types


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _demo_size(text: str) -> int:
    value = _positive_int(text)
    if value < 256:
        raise argparse.ArgumentTypeError(f"must be at least 256 (the chip size), got {value}")
    return value


def _number(text: str) -> float | int:
    """An int when the text is one (integer nodata stays exact), else a float."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (np.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _scheduler(text: str) -> str:
    if text in LOCAL_SCHEDULERS or REMOTE.match(text):
        return text
    raise argparse.ArgumentTypeError(
        f"expected {', '.join(LOCAL_SCHEDULERS)} or a dask scheduler address "
        f"(tcp://HOST:PORT), got {text!r}"
    )


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The ``patchflow`` parser (``demo``, ``apply``, ``grid``, ``resume``, ``inspect``)."""
    from patchflow import __version__
    from patchflow.engine.aggregate import AGGREGATIONS
    from patchflow.plan import BOUNDARIES, WINDOWS

    common = _Parser(add_help=False)
    common.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="print nothing"
    )
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the full traceback on errors",
    )

    parser = _Parser(
        prog=PROG,
        description=(
            "grid -> process -> stitch for rasters larger than memory: cut a raster into "
            "overlapping chips, run an operator on each, blend the chips back seamlessly."
        ),
        epilog="Run 'patchflow COMMAND --help' for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    fmt = _Help
    demo = sub.add_parser(
        "demo",
        parents=[common],
        formatter_class=fmt,
        help="NDVI of a synthetic scene through the out-of-core path, with a PNG preview",
        description=(
            "Build a deterministic synthetic red/NIR uint16 scene (UTM 10N, 10 m pixels: "
            "fields, a lake, sensor noise), compute DN -> reflectance -> NDVI on 256x256 "
            "chips with stride 192 and a Hann window, stream the result into DIR/ndvi.zarr, "
            "write a four-panel DIR/preview.png (scene, chip grid, NDVI, stitched minus "
            "full-scene NDVI) and print chips, blocks, wall time, peak memory and the "
            "maximum error against NDVI computed on the whole scene. Exit status 1 if that "
            "error exceeds 1e-6."
        ),
    )
    demo.add_argument(
        "--size", metavar="N", type=_demo_size, default=4096, help="scene edge in pixels"
    )
    demo.add_argument("--out", default="patchflow-demo", metavar="DIR", help="output directory")
    demo.add_argument("--seed", metavar="N", type=int, default=0, help="synthetic scene seed")
    demo.add_argument(
        "--chunks",
        metavar="N",
        type=_positive_int,
        default=1024,
        help="block (Zarr chunk) edge in pixels",
    )
    demo.add_argument(
        "--scheduler", metavar="SCHEDULER", type=_scheduler, default=None, help=SCHEDULER_HELP
    )
    demo.add_argument("--no-preview", action="store_true", help="skip the PNG preview")
    demo.set_defaults(func=cmd_demo)

    app = sub.add_parser(
        "apply",
        parents=[common],
        formatter_class=fmt,
        help="run an operator over a GeoTIFF/COG or Zarr and write Zarr or a COG",
        description=(
            "Run an operator on overlapping chips of INPUT (a GeoTIFF/COG, or a Zarr store) "
            "and write the stitched result to OUTPUT: a .zarr store (written block by block, "
            "resumable with --resume) or a .tif/.tiff Cloud Optimized GeoTIFF. CRS and "
            "transform are kept."
        ),
    )
    app.add_argument("input", metavar="INPUT", help="GeoTIFF/COG file or Zarr store")
    app.add_argument("output", metavar="OUTPUT", help="OUTPUT.zarr or OUTPUT.tif")
    what = app.add_argument_group("operator")
    what.add_argument(
        "--op",
        choices=sorted(OPS),
        default=None,
        help="built-in operator (default: ndvi unless --pipeline): "
        + "; ".join(f"{k}: {v}" for k, v in OPS.items()),
    )
    what.add_argument(
        "--pipeline",
        metavar="JSON",
        help="operator pipeline from a JSON file (patchflow.ops.from_json) instead of --op",
    )
    what.add_argument("--red", metavar="BAND", default="1", help="red band: " + BAND_HELP)
    what.add_argument("--nir", metavar="BAND", default="2", help="NIR band: " + BAND_HELP)
    what.add_argument(
        "--scale",
        metavar="FACTOR",
        type=_positive_float,
        default=1e-4,
        help="reflectance = DN x scale",
    )
    chips = app.add_argument_group("chips and stitching")
    chips.add_argument(
        "--size", metavar="N", type=_positive_int, default=256, help="chip size in pixels"
    )
    chips.add_argument(
        "--stride", metavar="N", type=_positive_int, default=192, help="chip stride in pixels"
    )
    chips.add_argument("--window", choices=list(WINDOWS), default="hann", help="blending window")
    chips.add_argument(
        "--agg",
        choices=list(AGGREGATIONS),
        default="overlap_add",
        help="how overlapping chips merge",
    )
    chips.add_argument(
        "--n-classes", metavar="N", type=_positive_int, default=None, help="for --agg vote"
    )
    chips.add_argument(
        "--boundary", choices=list(BOUNDARIES), default="shift", help="chips at the scene edge"
    )
    chips.add_argument(
        "--batch-size", metavar="N", type=_positive_int, default=None, help="chips per op call"
    )
    chips.add_argument(
        "--nodata",
        metavar="VALUE",
        type=_number,
        default=None,
        help="nodata of OUTPUT (wins over the input's); default: NaN for float results, the "
        "input's nodata (else the dtype's max/min, else none) for integer results. A real "
        "result equal to it is an error, never masked",
    )
    chips.add_argument(
        "--input-nodata",
        metavar="VALUE",
        type=_number,
        default=None,
        help="treat VALUE as the input's nodata (default: the file's own, per band)",
    )
    io = app.add_argument_group("input, output, execution")
    io.add_argument(
        "--chunks",
        metavar="N",
        type=_positive_int,
        default=None,
        help="block edge in pixels (also the Zarr chunk); default: patchflow's rule "
        "(the input's chunks, or a multiple of the stride just above 2048)",
    )
    io.add_argument("--var", metavar="NAME", help="data variable of a Zarr INPUT with several")
    io.add_argument(
        "--scheduler", metavar="SCHEDULER", type=_scheduler, default=None, help=SCHEDULER_HELP
    )
    again = io.add_mutually_exclusive_group()
    again.add_argument(
        "--resume",
        action="store_true",
        help="finish an interrupted .zarr run: only blocks not yet written are computed",
    )
    again.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    app.set_defaults(func=cmd_apply)

    grid = sub.add_parser(
        "grid",
        parents=[common],
        formatter_class=fmt,
        help="print (and plot) the chips apply would use on INPUT",
        description=(
            "Plan the chip grid over INPUT without processing anything: print the chip "
            "counts and the first rows of the chip table (pixel window and CRS bounds), "
            "and optionally draw the grid over a decimated view of the scene."
        ),
    )
    grid.add_argument("input", metavar="INPUT", help="GeoTIFF/COG file or Zarr store")
    grid.add_argument(
        "--size", metavar="N", type=_positive_int, default=256, help="chip size in pixels"
    )
    grid.add_argument(
        "--stride", metavar="N", type=_positive_int, default=192, help="chip stride in pixels"
    )
    grid.add_argument(
        "--boundary", choices=list(BOUNDARIES), default="shift", help="chips at the scene edge"
    )
    grid.add_argument("--allow-gaps", action="store_true", help="allow stride > size")
    grid.add_argument("--var", metavar="NAME", help="data variable of a Zarr INPUT with several")
    grid.add_argument("--rows", metavar="N", type=int, default=10, help="chip table rows to print")
    grid.add_argument("--png", metavar="FILE", help="also draw the grid over the scene")
    grid.set_defaults(func=cmd_grid)

    finish = sub.add_parser(
        "resume",
        parents=[common],
        formatter_class=fmt,
        help="finish an interrupted .zarr OUTPUT (or repair it) from the job it records",
        description=(
            "Finish the job of a .zarr OUTPUT of 'patchflow apply' (or patchflow.run) that "
            "was interrupted, reading INPUT, the operator and every option from the store: "
            "only blocks not yet written, or failing their checksum, are computed. Works "
            "when the input is a file or Zarr store and the operator is --op or a "
            "--pipeline; otherwise rerun 'patchflow apply ... --resume'."
        ),
    )
    finish.add_argument("store", metavar="STORE", help="the .zarr OUTPUT to finish")
    finish.add_argument(
        "--scheduler", metavar="SCHEDULER", type=_scheduler, default=None, help=SCHEDULER_HELP
    )
    finish.set_defaults(func=cmd_resume)

    inspect_ = sub.add_parser(
        "inspect",
        parents=[common],
        formatter_class=fmt,
        help="check a .zarr OUTPUT: status, blocks done/missing/corrupt (exit 1 if damaged)",
        description=(
            "Print the status of a .zarr store written by patchflow (complete, incomplete, "
            "being written), its job, and how many blocks are done, missing or corrupt. "
            "Every done block is read once and its checksum compared with the one recorded "
            "when it was written (the cost of reading the whole result; --quick skips it). "
            "Exit status 1 if the store is incomplete or damaged ('patchflow resume STORE' "
            "repairs it)."
        ),
    )
    inspect_.add_argument("store", metavar="STORE", help="the .zarr store to check")
    inspect_.add_argument(
        "--quick", action="store_true", help="only read the done markers (no checksums)"
    )
    inspect_.set_defaults(func=cmd_inspect)
    return parser


# --------------------------------------------------------------------------- helpers


def _say(args: argparse.Namespace, *lines: str) -> None:
    if not getattr(args, "quiet", False):
        for line in lines:
            print(line, flush=True)


def _open_input(path: str, *, var: str | None = None, chunks: int | None = None) -> Any:
    """:func:`patchflow.io.sources.open_raster`, a bad ``--var`` being a usage error."""
    try:
        return open_raster(path, var=var, chunks=chunks)
    except ParameterError as exc:
        raise UsageError(str(exc)) from exc


def _band_index(obj: Any, value: str, option: str) -> int:
    """Resolve ``--red``/``--nir`` to a 0-based position for the operators.

    A number is a GDAL-style 1-based band number (``1`` is the first band, as in
    ``gdal_translate -b`` or rasterio); anything else is a band name: a value of the band
    coordinate, or a band description (rioxarray's ``long_name``).

    Raises
    ------
    UsageError
        Unknown name (with the input's band names and the closest match), or a number
        outside ``1..N`` (saying the CLI counts from 1; ``0`` gets its own hint).
    """
    import difflib

    from patchflow._xr import spatial_dims

    y, x = spatial_dims(obj)
    lead = [d for d in obj.dims if d not in (y, x)]
    n = int(np.prod([obj.sizes[d] for d in lead])) if lead else 1
    labels: list[str] = []
    if len(lead) == 1:
        labels = [str(v) for v in np.asarray(obj[lead[0]].values)]
        names = obj.attrs.get("long_name")
        if isinstance(names, (list, tuple)) and len(names) == n:
            labels = [*labels, *map(str, names)]
    plural = "band" if n == 1 else "bands"
    try:
        number = int(value)
    except ValueError:
        found = [i % n for i, label in enumerate(labels) if label == value]
        if found:
            return found[0]
        folded = [label for label in labels if label.casefold() == value.casefold()]
        close = folded or difflib.get_close_matches(value, labels, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        words = [label for label in dict.fromkeys(labels) if not label.lstrip("-").isdigit()]
        listed = f" named {', '.join(words)}" if words else " without names"
        raise UsageError(
            f"argument {option}: no band named {value!r}: the input has {n} {plural}{listed} "
            f"(or give a band number 1..{n}; {BAND_CONVENTION}){hint}"
        ) from None
    if not 1 <= number <= n:
        hint = " (0 looks like a Python 0-based position)" if number == 0 else ""
        raise UsageError(
            f"argument {option}: band {number} out of range: the input has {n} {plural}, "
            f"numbered 1..{n}; {BAND_CONVENTION}{hint}"
        )
    return number - 1


def _ndvi_op(red: int, nir: int, scale: float) -> Any:
    """``--op ndvi``: the library's ``DNToReflectance(scale) | NDVI(red, nir)``."""
    from patchflow.ops import NDVI, DNToReflectance

    return DNToReflectance(scale=scale) | NDVI(red=red, nir=nir)


def _pipeline_op(path: str) -> Callable[..., Any]:
    from patchflow.ops import from_json

    file = Path(path)
    if not file.is_file():
        raise CommandError(f"pipeline not found: {path}")
    try:
        op = from_json(file.read_text())
    except Exception as exc:
        raise CommandError(f"invalid pipeline {path}: {one_line(exc)}") from exc
    if not callable(op):
        raise CommandError(f"invalid pipeline {path}: it does not describe an operator")
    return op


@dataclass
class _Execution:
    """Where dask runs (``scheduler`` for :func:`patchflow.run`) and how progress shows."""

    scheduler: Any = None
    show_progress: bool = False

    def progress(self) -> contextlib.AbstractContextManager[Any]:
        """A dask progress bar on stderr (TTY, local schedulers, not ``--quiet``)."""
        if not self.show_progress:
            return contextlib.nullcontext()
        from dask.diagnostics import ProgressBar

        return ProgressBar(minimum=1.0, out=sys.stderr)


@contextlib.contextmanager
def _execution(args: argparse.Namespace) -> Iterator[_Execution]:
    """Connect a dask.distributed Client for ``--scheduler tcp://…``; set up progress."""
    address = args.scheduler
    quiet = getattr(args, "quiet", False)
    with contextlib.ExitStack() as stack:
        if address is not None and REMOTE.match(address):
            try:
                from distributed import Client
            except ImportError as exc:  # pragma: no cover - distributed is a dependency
                raise CommandError("--scheduler ADDRESS needs dask.distributed") from exc
            try:
                client = stack.enter_context(Client(address, timeout="10s"))
            except Exception as exc:
                raise CommandError(
                    f"cannot connect to the dask scheduler at {address}: {one_line(exc)}"
                ) from exc
            _say(args, f"dask scheduler {address}, dashboard: {client.dashboard_link}")
            yield _Execution(None)  # the client is the default scheduler now
        else:
            yield _Execution(address, show_progress=not quiet and sys.stderr.isatty())


def _describe(out: Any) -> str:
    crs = out.rio.crs
    return (
        f"{' x '.join(map(str, out.shape))} {out.dtype}, "
        f"{crs.to_string() if crs is not None else 'no CRS'}"
    )


# --------------------------------------------------------------------------- commands


def cmd_demo(args: argparse.Namespace) -> int:
    """``patchflow demo``."""
    from patchflow.demo import run_demo

    preview = not args.no_preview
    if preview:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                "patchflow: note: matplotlib is not installed, skipping the PNG preview "
                "(pip install 'patchflow[plot]')",
                file=sys.stderr,
            )
            preview = False
    with _execution(args) as where:
        result = run_demo(
            args.size,
            args.out,
            preview=preview,
            seed=args.seed,
            chunks=args.chunks,
            scheduler=where.scheduler,
            progress=where.progress,
        )
    _say(args, result.summary())
    if not result.ok:
        raise CommandError(f"verification failed: max error {result.max_error:.3g} exceeds 1e-6")
    return 0


def _output_kind(path: str) -> str:
    lower = path.rstrip("/").lower()
    if lower.endswith(ZARR_SUFFIXES):
        return "zarr"
    if lower.endswith(TIFF_SUFFIXES):
        return "tif"
    raise UsageError(f"OUTPUT must end in .zarr, .tif or .tiff, got {path!r}")


def cmd_apply(args: argparse.Namespace) -> int:
    """``patchflow apply``."""
    import patchflow

    kind = _output_kind(args.output)
    if args.resume and kind != "zarr":
        raise UsageError("--resume needs a .zarr OUTPUT (a COG is written in one go)")
    if args.pipeline is not None and args.op is not None:
        raise UsageError("give --op or --pipeline, not both")
    if args.stride > args.size:
        raise UsageError(f"--stride {args.stride} is larger than --size {args.size}")
    if args.agg == "vote" and args.n_classes is None:
        raise UsageError("--agg vote needs --n-classes")
    from patchflow.io.store import check_output_path

    # before anything is read, let alone replaced: OUTPUT may not be (or be inside) INPUT
    with cli_wording():
        check_output_path(args.output, [args.input])

    obj = _open_input(args.input, var=args.var, chunks=args.chunks)
    out_path = Path(args.output)
    exists = out_path.exists()
    if exists and not (args.overwrite or args.resume):
        hint = " or --resume to finish an interrupted run" if kind == "zarr" else ""
        raise CommandError(f"{args.output} already exists; pass --overwrite to replace it{hint}")

    if args.pipeline is not None:
        op, name = _pipeline_op(args.pipeline), None
    else:
        red = _band_index(obj, args.red, "--red")
        nir = _band_index(obj, args.nir, "--nir")
        op = _ndvi_op(red, nir, args.scale)
        name = "ndvi"
    params: dict[str, Any] = {
        "size": args.size,
        "stride": args.stride,
        "window": args.window,
        "agg": args.agg,
        "boundary": args.boundary,
    }
    for key in ("n_classes", "batch_size", "chunks", "nodata", "input_nodata"):
        if getattr(args, key) is not None:
            params[key] = getattr(args, key)
    if name is not None:
        params["name"] = name
    layout = patchflow.plan_grid(obj, size=args.size, stride=args.stride, boundary=args.boundary)

    with _execution(args) as where, cli_wording():
        if kind == "zarr":
            with where.progress():
                report = patchflow.run(
                    obj,
                    op,
                    store=args.output,
                    resume=args.resume and exists,
                    overwrite=args.overwrite,
                    scheduler=where.scheduler,
                    **params,
                )
            result = report.open()
        else:
            report, result = write_cog(
                obj,
                op,
                args.output,
                run_params=params,
                scheduler=where.scheduler,
                progress=where.progress,
            )
    _say(
        args,
        f"wrote {args.output}: {_describe(result)}",
        f"  chips: {layout.grid.n_chips} ({args.size}x{args.size}, stride {args.stride}, "
        f"{args.window}, {args.agg}), blocks: {report.blocks} ({_blocks_done(report)})",
        f"  wall time: {report.seconds:.2f} s",
    )
    return 0


def _blocks_done(report: Any) -> str:
    done = f"{report.computed} computed"
    if report.skipped:
        done += f", {report.skipped} already done"
    repaired = getattr(report, "repaired", 0)
    if repaired:
        done += f" ({repaired} damaged block{'s' if repaired > 1 else ''} recomputed)"
    return done


def cmd_resume(args: argparse.Namespace) -> int:
    """``patchflow resume``."""
    from patchflow.io.store import resume

    with _execution(args) as where, cli_wording():
        with where.progress():
            report = resume(args.store, scheduler=where.scheduler)
    _say(
        args,
        f"resumed {args.store}: blocks: {report.blocks} ({_blocks_done(report)})",
        f"  wall time: {report.seconds:.2f} s",
    )
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """``patchflow inspect``: exit status 1 (a named error) if the store is not healthy."""
    from patchflow.io.store import check_store

    with cli_wording():
        health = check_store(args.store, checksums=not args.quick)
    _say(args, *health.lines())
    if not health.ok:
        raise health.error()
    return 0


def cmd_grid(args: argparse.Namespace) -> int:
    """``patchflow grid``."""
    import pandas as pd

    import patchflow
    from patchflow._xr import spatial_dims

    obj = _open_input(args.input, var=args.var)
    layout = patchflow.plan_grid(
        obj,
        size=args.size,
        stride=args.stride,
        boundary=args.boundary,
        allow_gaps=args.allow_gaps,
    )
    y, x = spatial_dims(obj)
    lead = [f"{d}: {obj.sizes[d]}" for d in obj.dims if d not in (y, x)]
    crs = obj.rio.crs
    g = layout.grid
    ny, nx = g.counts
    res = ""
    if layout.transform is not None:
        res = f", pixel {abs(layout.transform.a):g} x {abs(layout.transform.e):g}"
    lines = [
        f"{args.input}: {obj.sizes[y]} x {obj.sizes[x]} px"
        + (f" ({', '.join(lead)})" if lead else "")
        + f", {crs.to_string() if crs is not None else 'no CRS'}{res}",
        f"chips: {ny} x {nx} = {g.n_chips} ({g.size_yx[0]}x{g.size_yx[1]}, stride "
        f"{g.stride_yx[0]}x{g.stride_yx[1]}, boundary {args.boundary})",
    ]
    rows = max(0, args.rows)
    if rows:
        with pd.option_context("display.width", 120, "display.float_format", "{:.2f}".format):
            lines.append(layout.to_dataframe().head(rows).to_string())
        if g.n_chips > rows:
            lines.append(f"... {g.n_chips - rows} more chips")
    if args.png:
        from patchflow.plotting import grid_figure, require_matplotlib, save_figure

        require_matplotlib("--png")  # PatchflowError naming patchflow[plot] when missing
        save_figure(grid_figure(obj, layout), args.png)
        lines.append(f"plot: {args.png}")
    _say(args, *lines)
    return 0


# --------------------------------------------------------------------------- entry point


def _fail(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``patchflow`` command with ``argv`` (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0 success, 1 the command failed, 2 bad usage, 130 interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        with cli_wording():
            status: int = args.func(args)
        return status
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 0
    except UsageError as exc:
        if debug:
            traceback.print_exc()
        _fail(str(exc))
        return 2
    except KeyboardInterrupt:
        _fail("interrupted (a .zarr OUTPUT can be finished with --resume)")
        return 130
    except Exception as exc:
        if debug:
            traceback.print_exc()
        _fail(one_line(exc))
        return 1
