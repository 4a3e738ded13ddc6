"""The ``patchflow`` sub-commands: their argument parser and what each one runs.

``patchflow demo``
    Synthetic red/NIR scene → DN → NDVI on 256/192 Hann chips → Zarr store + PNG preview,
    verified against NDVI on the whole scene.
``patchflow apply INPUT OUTPUT`` (or ``--stac ITEMS --assets A,B OUTPUT``)
    Run an operator (``--op`` with ``--op-arg``, a JSON/YAML ``--pipeline`` or a
    TorchScript ``--model``; see :mod:`.opspec`) over a GeoTIFF/COG, a Zarr store or STAC
    items, optionally on chosen ``--bands``, and write a Zarr store (streamed block by
    block, resumable; ``--zarr-format``) or a COG (``--co`` creation options), on the local
    scheduler, a ``--workers N`` LocalCluster or a ``--scheduler`` address (``--report``).
``patchflow resume STORE``
    Finish an interrupted ``.zarr`` run (or recompute its damaged blocks) from the job the
    store records: no need to retype INPUT and the options.
``patchflow inspect STORE``
    Status of a ``.zarr`` OUTPUT: blocks done, missing and corrupt (checksums verified),
    and the chips that failed under ``--on-error skip|mask`` (``--verbose``: with their
    tracebacks); exit status 1 if it is incomplete or damaged (failed chips are not).
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
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from patchflow.cli.opspec import (
    OPTION,
    RECIPES,
    build_operator,
    is_sklearn_model,
    load_pipeline,
    load_sklearn,
    load_torchscript,
    op_spec,
    operator_table,
    parse_op_arg,
    parse_op_args,
)
from patchflow.errors import CommandError, ParameterError, UsageError, cli_wording
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

BAND_NUMBER = "GDAL-style 1-based number (1 = the first band)"

MAIN_EPILOG = """\
example:
  patchflow demo --size 2048                     # NDVI of a synthetic scene, verified
  patchflow apply scene.tif ndvi.zarr --red 3 --nir 4
  patchflow apply --help                         # every operator and option

Run 'patchflow COMMAND --help' for the options of each command."""

DEMO_EPILOG = """\
example:
  patchflow demo                                 # 4096 x 4096 scene into ./patchflow-demo
  patchflow demo --size 1024 --out /tmp/demo --no-preview"""

APPLY_EXAMPLES = """\
example:
  # NDVI (DN x 1e-4) of bands 3 and 4 of a GeoTIFF into a resumable Zarr store
  patchflow apply scene.tif ndvi.zarr --red 3 --nir 4
  # a registered operator with its parameters, written as a ZSTD-compressed COG
  patchflow apply dem.tif dem01.tif --op rescale --op-arg in_range='[0, 4000]' --co COMPRESS=ZSTD
  # two bands chosen by name, then your own per-chip function (mymod.py on PYTHONPATH)
  PYTHONPATH=. patchflow apply s2.tif out.zarr --bands B04,B08 --op mymod:cloud_mask
  # a TorchScript model on 4 dask worker processes, with a performance report
  patchflow apply s2.tif seg.zarr --model unet.pt --batch-size 8 --workers 4 --report perf.html
  # a fitted scikit-learn classifier (joblib.dump) per pixel, labels merged by vote
  patchflow apply s2.tif landcover.tif --model rf.joblib --agg vote --n-classes 6
  # a median composite of STAC items (time stack) at 10 m
  patchflow apply --stac items.json --assets B04,B08 --resolution 10 --over time \\
      --op composite --op-arg stat=median composite.zarr"""

GRID_EPILOG = """\
example:
  patchflow grid scene.tif --size 512 --stride 384 --png grid.png"""

RESUME_EPILOG = """\
example:
  patchflow apply scene.tif ndvi.zarr            # interrupted (Ctrl-C, a crash, a kill)
  patchflow resume ndvi.zarr                     # computes only the missing blocks
  patchflow resume ndvi.zarr --workers 4"""

INSPECT_EPILOG = """\
example:
  patchflow inspect ndvi.zarr                    # exit status 1 if incomplete or damaged
  patchflow inspect ndvi.zarr --quick            # done markers only, no checksums
  patchflow inspect ndvi.zarr --verbose          # failed chips with their tracebacks"""


def _apply_epilog() -> str:
    """The ``apply`` examples and the table of ``--op`` operators with their parameters."""
    rows = operator_table()
    width = max(len(name) for name, _ in rows) + 2
    table = "\n".join(f"  {name:<{width}}{params}" for name, params in rows)
    return (
        f"{APPLY_EXAMPLES}\n\noperators of --op NAME, with their --op-arg KEY=VALUE "
        "parameters (names ignore case,\n'-' and '_', except that ndvi in lower case is the "
        f"built-in recipe):\n{table}"
    )


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are exceptions (so ``main`` prints one line)."""

    def error(self, message: str) -> NoReturn:
        hint = f" (see '{self.prog} --help')"
        raise UsageError(message + hint)


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: …)`` only for options whose default says something, and keeps the
    line breaks of multi-line texts (the ``example:`` epilogs) while filling the others."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action) or ""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "\n".join(indent + line for line in text.splitlines())
        return super()._fill_text(text, width, indent)


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


def _bounds(text: str) -> tuple[float, float, float, float]:
    """``MINX,MINY,MAXX,MAXY``: four finite numbers, each minimum below its maximum."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MINX,MINY,MAXX,MAXY, got {text!r}") from None
    if len(values) != 4 or not all(np.isfinite(values)):
        raise argparse.ArgumentTypeError(f"expected four numbers MINX,MINY,MAXX,MAXY, got {text!r}")
    if not (values[0] < values[2] and values[1] < values[3]):
        raise argparse.ArgumentTypeError(
            f"expected MINX < MAXX and MINY < MAXY, got {text!r} (the order is MINX,MINY,MAXX,MAXY)"
        )
    return values[0], values[1], values[2], values[3]


def _yes_no(text: str) -> bool:
    word = text.strip().lower()
    if word in ("true", "yes", "1"):
        return True
    if word in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _scheduler(text: str) -> str:
    if text in LOCAL_SCHEDULERS or REMOTE.match(text):
        return text
    raise argparse.ArgumentTypeError(
        f"expected {', '.join(LOCAL_SCHEDULERS)} or a dask scheduler address "
        f"(tcp://HOST:PORT), got {text!r}"
    )


def _creation_option(text: str) -> tuple[str, str | int]:
    """``--co KEY=VALUE`` → ``(KEY, VALUE)``; an integer VALUE becomes an int."""
    key, sep, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE (a GDAL creation option, e.g. COMPRESS=ZSTD), got {text!r}"
        )
    try:
        return key.upper(), int(value)
    except ValueError:
        return key.upper(), value


def _add_execution_args(group: Any) -> None:
    """``--scheduler``, ``--workers``, ``--threads-per-worker`` and ``--report``."""
    group.add_argument(
        "--scheduler", metavar="SCHEDULER", type=_scheduler, default=None, help=SCHEDULER_HELP
    )
    group.add_argument(
        "--workers",
        metavar="N",
        type=_positive_int,
        default=None,
        help="start a dask.distributed LocalCluster of N worker processes for this job "
        "(its dashboard link is printed); instead of --scheduler",
    )
    group.add_argument(
        "--threads-per-worker",
        metavar="N",
        type=_positive_int,
        default=None,
        help="threads of each --workers process (default: CPU count / N, at least 1)",
    )
    group.add_argument(
        "--report",
        metavar="HTML",
        default=None,
        help="write a dask performance report (task stream, worker profiles) to HTML; "
        "needs --workers or --scheduler tcp://... and bokeh (pip install "
        "'patchflow[dashboard]')",
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
        epilog=MAIN_EPILOG,
        formatter_class=_Help,
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
        epilog=DEMO_EPILOG,
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
        help="run an operator over a GeoTIFF/COG, Zarr or STAC items; write Zarr or a COG",
        usage=(
            "%(prog)s [options] INPUT OUTPUT\n"
            "       %(prog)s [options] --stac ITEMS --assets A1,A2,... OUTPUT"
        ),
        description=(
            "Run an operator on overlapping chips of INPUT (a GeoTIFF/COG or a Zarr store; "
            "or STAC items with --stac instead of INPUT) and write the stitched result to "
            "OUTPUT: a .zarr store (written block by block, resumable with --resume) or a "
            ".tif/.tiff Cloud Optimized GeoTIFF. CRS and transform are kept. The operator "
            "is --op (default: ndvi), a --pipeline file, or a TorchScript --model."
        ),
        epilog=_apply_epilog(),
    )
    app.add_argument(
        "input",
        metavar="INPUT",
        nargs="?",
        help="GeoTIFF/COG file or Zarr store (omit it with --stac)",
    )
    # both optional to argparse: main() places them wherever they stand (_positionals)
    app.add_argument("output", metavar="OUTPUT", nargs="?", help="OUTPUT.zarr or OUTPUT.tif")
    what = app.add_argument_group(
        "operator",
        "One of --op, --pipeline, --model. MODULE:CALLABLE steps (in --op or a pipeline) "
        "import and run your own Python code, as 'python -m' would: only name modules you "
        "trust. Configs are data: nothing is evaluated or unpickled.",
    )
    what.add_argument(
        "--op",
        metavar="SPEC",
        type=op_spec,
        default=None,
        help="ndvi (the default: DN x --scale -> NDVI of bands --red and --nir); or a "
        "registered operator, by name (case ignored; listed below) with its parameters as "
        "--op-arg; or MODULE:CALLABLE, a function of your own importable module (on "
        "PYTHONPATH): a function still needing one argument after the --op-arg values is "
        "run on each chip (like patchflow.ops.Lambda; decorate it with @patchflow.ops.batched "
        "to get stacks of chips), one needing none is a factory called once with them, and "
        "an Operator class is instantiated with them",
    )
    what.add_argument(
        "--op-arg",
        metavar="KEY=VALUE",
        action="append",
        type=parse_op_arg,
        default=None,
        help="a parameter of --op (repeat for several); VALUE is read as JSON when it "
        "parses (0, 1e-4, [0, 10000], true, null), else as text. Band parameters are the "
        "Python API's: 0-based positions or band names (unlike --bands/--red/--nir)",
    )
    what.add_argument(
        "--pipeline",
        metavar="FILE",
        help="operator pipeline from a JSON file (patchflow.ops.to_json) or a YAML file "
        "(.yaml/.yml): a step {op: NAME or MODULE:CALLABLE, params: {...}} or a list of them",
    )
    what.add_argument(
        "--model",
        metavar="FILE",
        help="a TorchScript model (torch.jit.load; needs 'pip install patchflow[torch]') run "
        "on batches of chips as patchflow.ops.ModelOp, chips going in as float32 "
        "(N, bands, h, w) tensors; or a fitted scikit-learn estimator saved with joblib "
        "(.joblib, .pkl, .pickle: loading runs code the file names, so only files you "
        "trust) or skops (.skops), run on every pixel's band values (needs "
        "'pip install patchflow[ml]')",
    )
    what.add_argument(
        "--model-output",
        choices=("predict", "predict_proba"),
        default=None,
        help="what a scikit-learn --model returns per pixel: predict (default: one band, "
        "e.g. class labels: --agg vote --n-classes N, or centre) or predict_proba (one "
        "band per class: --agg soft_vote)",
    )
    what.add_argument(
        "--device",
        metavar="DEVICE",
        default=None,
        help="torch device of --model: cpu (default), cuda, cuda:1, mps",
    )
    what.add_argument(
        "--bands",
        metavar="B1,B2,...",
        default=None,
        help="select (and order) input bands before the operator, by name (band "
        "coordinate or band description) or " + BAND_NUMBER + "; --red/--nir and the "
        "operator then see only these (run as a SelectBands step, so 'patchflow resume' "
        "reopens INPUT as it is; with --over the input itself is narrowed, and an "
        "interrupted run is finished with 'apply ... --resume')",
    )
    what.add_argument(
        "--red",
        metavar="BAND",
        default=None,
        help="red band of --op ndvi (default: 1): " + BAND_HELP,
    )
    what.add_argument(
        "--nir",
        metavar="BAND",
        default=None,
        help="NIR band of --op ndvi (default: 2): " + BAND_HELP,
    )
    what.add_argument(
        "--scale",
        metavar="FACTOR",
        type=_positive_float,
        default=None,
        help="reflectance = DN x FACTOR, for --op ndvi (default: 0.0001)",
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
        "--batch-size",
        metavar="N",
        type=_positive_int,
        default=None,
        help="chips per operator call (and per model call with --model)",
    )
    chips.add_argument(
        "--on-error",
        choices=["raise", "mask", "retry", "skip"],
        default="raise",
        help="a chip whose operator call fails: raise stops the job; skip makes every "
        "pixel it covers nodata; mask gives it zero weight (the chips around it fill its "
        "pixels); retry calls it again on I/O errors, then raises. skip and mask record "
        "each failed chip in OUTPUT ('patchflow inspect OUTPUT' lists them)",
    )
    chips.add_argument(
        "--over",
        metavar="DIM[,DIM]",
        default=None,
        help="non-spatial dims the operator sees besides the band dim; default none, so a "
        "(time, band, y, x) input (e.g. --stac) is processed date by date; --over time "
        "hands the operator the time stack (e.g. --op composite)",
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
    stac = app.add_argument_group(
        "STAC input (instead of INPUT)",
        "Stack local STAC items lazily into a (time, band, y, x) array with stackstac "
        "(patchflow.open_stac): one band per asset, in --assets order.",
    )
    stac.add_argument(
        "--stac",
        metavar="ITEMS",
        default=None,
        help="a local STAC JSON file: an Item, an ItemCollection/FeatureCollection or a "
        "list of Items (relative asset hrefs resolve against the file)",
    )
    stac.add_argument(
        "--assets", metavar="A1,A2,...", default=None, help="asset keys to stack (required)"
    )
    stac.add_argument(
        "--resolution",
        metavar="R",
        type=_positive_float,
        default=None,
        help="output pixel size in CRS units (default: the finest of the assets)",
    )
    stac.add_argument(
        "--epsg",
        metavar="N",
        type=_positive_int,
        default=None,
        help="output CRS as an EPSG code (needed when the assets are in several CRSs)",
    )
    extent = stac.add_mutually_exclusive_group()
    extent.add_argument(
        "--bounds",
        metavar="MINX,MINY,MAXX,MAXY",
        type=_bounds,
        default=None,
        help="output extent in the output CRS (default: all the items'), grown outward to "
        "the assets' pixel grid",
    )
    extent.add_argument(
        "--bounds-latlon",
        metavar="W,S,E,N",
        type=_bounds,
        default=None,
        help="output extent in longitude/latitude degrees, as --bounds",
    )
    stac.add_argument(
        "--snap-bounds",
        metavar="{true,false}",
        type=_yes_no,
        default=None,
        help="true: snap the extent to multiples of --resolution (GDAL's -tap); false: keep "
        "--bounds as given; default: the assets' own pixel grid when they share one "
        "(values read exactly)",
    )
    io = app.add_argument_group("input, output, execution")
    io.add_argument(
        "--chunks",
        metavar="N",
        type=_positive_int,
        default=None,
        help="block edge in pixels (also the Zarr chunk); default: patchflow's rule "
        "(the input's chunks, or a multiple of the stride just above 2048, smaller on a "
        "small scene so that every worker thread gets two blocks)",
    )
    io.add_argument("--var", metavar="NAME", help="data variable of a Zarr INPUT with several")
    io.add_argument(
        "--name",
        metavar="NAME",
        help="name of the result: the variable of a .zarr OUTPUT (default: ndvi for the "
        "built-in NDVI, else the input's name, or 'result')",
    )
    io.add_argument(
        "--co",
        metavar="KEY=VALUE",
        action="append",
        type=_creation_option,
        default=None,
        help="GDAL creation option of a .tif OUTPUT (repeat for several), e.g. "
        "--co COMPRESS=ZSTD --co LEVEL=9 --co BLOCKSIZE=512 (see GDAL's COG driver)",
    )
    io.add_argument(
        "--zarr-format",
        metavar="{2,3}",
        type=int,
        choices=(2, 3),
        default=None,
        help="Zarr format of a .zarr OUTPUT (default: 3; 2 for readers without v3)",
    )
    _add_execution_args(io)
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
        epilog=GRID_EPILOG,
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
            "was interrupted, reading INPUT (a file, a Zarr store or --stac items), the "
            "operator (--op, MODULE:CALLABLE, --pipeline, --model, --bands) and every "
            "option from the store: only blocks not yet written, or failing their checksum, "
            "are computed. Your own modules must still be importable (PYTHONPATH) and a "
            "--model file must still be there, unchanged; a Python-only job (an in-memory "
            "input, a lambda) needs 'patchflow apply ... --resume' or patchflow.run(..., "
            "resume=True) instead."
        ),
        epilog=RESUME_EPILOG,
    )
    finish.add_argument("store", metavar="STORE", help="the .zarr OUTPUT to finish")
    _add_execution_args(finish)
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
            "Chips that failed under --on-error skip/mask are listed (index, pixel and CRS "
            "bounds, exception; --verbose adds tracebacks): they are the job's outcome, not "
            "damage. Exit status 1 if the store is incomplete or damaged ('patchflow resume "
            "STORE' repairs it)."
        ),
        epilog=INSPECT_EPILOG,
    )
    inspect_.add_argument("store", metavar="STORE", help="the .zarr store to check")
    inspect_.add_argument(
        "--quick", action="store_true", help="only read the done markers (no checksums)"
    )
    inspect_.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="with each failed chip (--on-error skip/mask), the traceback of its exception",
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


def _band_dim(obj: Any, option: str) -> Hashable:
    """The band dim (the last non-spatial one, as the engine counts) of ``obj``."""
    from patchflow._xr import spatial_dims

    y, x = spatial_dims(obj)
    lead = [d for d in obj.dims if d not in (y, x)]
    if not lead:
        raise UsageError(f"argument {option}: the input has no band dimension (dims {obj.dims})")
    return lead[-1]


def _band_labels(obj: Any, dim: Hashable) -> list[str]:
    """The names a band can be given by: band coordinate values, then band descriptions."""
    n = obj.sizes[dim]
    labels = [str(v) for v in np.asarray(obj[dim].values)] if dim in obj.coords else []
    names = obj.attrs.get("long_name")
    if isinstance(names, (list, tuple)) and len(names) == n:
        labels = [*labels, *map(str, names)]
    return labels


def _band_index(obj: Any, value: str, option: str) -> int:
    """Resolve ``--red``/``--nir``/``--bands`` entries to a 0-based position for the ops.

    A number is a GDAL-style 1-based band number (``1`` is the first band, as in
    ``gdal_translate -b`` or rasterio); anything else is a band name: a value of the band
    coordinate, or a band description (rioxarray's ``long_name``). The band dim is the
    last non-spatial one (``band`` of a ``(time, band, y, x)`` stack), as for operators.

    Raises
    ------
    UsageError
        Unknown name (with the input's band names and the closest match), or a number
        outside ``1..N`` (saying the CLI counts from 1; ``0`` gets its own hint).
    """
    import difflib

    if not value:
        raise UsageError(f"argument {option}: empty band (give a band name or number)")
    dim = _band_dim(obj, option)
    n = int(obj.sizes[dim])
    labels = _band_labels(obj, dim)
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


def _band_positions(obj: Any, text: str) -> list[int]:
    """``--bands B1,B2``: the 0-based positions of those bands (names or 1-based numbers)."""
    return [_band_index(obj, item.strip(), "--bands") for item in text.split(",")]


def _select_bands(obj: Any, text: str) -> Any:
    """``--bands B1,B2``: the input restricted to (and ordered as) those bands: what the
    operator sees (lazy; ``apply`` runs a :class:`~patchflow.ops.SelectBands` step on the
    whole input instead, unless ``--over`` is given).

    Per-band attrs (band descriptions in ``long_name`` and any list with one entry per
    band) are selected alongside, so names keep matching the bands.
    """
    dim = _band_dim(obj, "--bands")
    n = int(obj.sizes[dim])
    positions = _band_positions(obj, text)
    out = obj.isel({dim: positions})
    out.attrs = {
        key: type(value)(value[p] for p in positions)
        if isinstance(value, (list, tuple)) and len(value) == n and n > 1
        else value
        for key, value in obj.attrs.items()
    }
    return out


def _ndvi_op(red: int, nir: int, scale: float) -> Any:
    """``--op ndvi``: the library's ``DNToReflectance(scale) | NDVI(red, nir)``."""
    from patchflow.ops import NDVI, DNToReflectance

    return DNToReflectance(scale=scale) | NDVI(red=red, nir=nir)


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


def _check_execution(args: argparse.Namespace) -> None:
    """Usage errors of ``--workers``/``--report``, before anything is read or started."""
    workers = getattr(args, "workers", None)
    remote = args.scheduler is not None and REMOTE.match(args.scheduler)
    if workers is not None and args.scheduler is not None:
        raise UsageError(
            "give --workers (start a local cluster) or --scheduler (use that scheduler), not both"
        )
    if getattr(args, "threads_per_worker", None) is not None and workers is None:
        raise UsageError("--threads-per-worker needs --workers N")
    if getattr(args, "report", None) is None:
        return
    if workers is None and not remote:
        raise UsageError(
            "--report needs a dask.distributed cluster: add --workers N (a local one) or "
            "--scheduler tcp://HOST:PORT"
        )
    try:
        import bokeh  # noqa: F401
    except ImportError:
        raise CommandError(
            "--report needs bokeh, which is not installed: pip install 'patchflow[dashboard]'"
        ) from None


def _local_cluster(args: argparse.Namespace, stack: contextlib.ExitStack) -> Any:
    """``--workers N``: a LocalCluster of N processes for this job, and its Client."""
    import os
    import warnings

    from distributed import Client, LocalCluster

    workers = int(args.workers)
    threads = args.threads_per_worker or max(1, (os.cpu_count() or 1) // workers)
    with warnings.catch_warnings():
        # the default dashboard port may be taken (another cluster): a free one is used
        # and its link printed below, so the warning tells the user nothing
        warnings.filterwarnings("ignore", message=".*[Pp]ort .* is already in use")
        cluster = stack.enter_context(
            LocalCluster(n_workers=workers, threads_per_worker=threads, dashboard_address=":8787")
        )
    client = stack.enter_context(Client(cluster))
    _say(
        args,
        f"dask LocalCluster: {workers} worker{'s' if workers > 1 else ''} x {threads} "
        f"thread{'s' if threads > 1 else ''}, dashboard: {client.dashboard_link}",
    )
    return client


@contextlib.contextmanager
def _execution(args: argparse.Namespace) -> Iterator[_Execution]:
    """Start (``--workers``) or connect to (``--scheduler tcp://…``) a dask.distributed
    cluster, record a ``--report``, set up progress."""
    address = args.scheduler
    quiet = getattr(args, "quiet", False)
    report = getattr(args, "report", None)
    _check_execution(args)
    with contextlib.ExitStack() as stack:
        client = None
        if getattr(args, "workers", None) is not None:
            client = _local_cluster(args, stack)
        elif address is not None and REMOTE.match(address):
            from distributed import Client

            try:
                client = stack.enter_context(Client(address, timeout="10s"))
            except Exception as exc:
                raise CommandError(
                    f"cannot connect to the dask scheduler at {address}: {one_line(exc)}"
                ) from exc
            _say(args, f"dask scheduler {address}, dashboard: {client.dashboard_link}")
        if report is not None:
            from distributed import performance_report

            Path(report).parent.mkdir(parents=True, exist_ok=True)
            stack.enter_context(performance_report(filename=report))
        if client is not None:
            yield _Execution(None)  # the client is the default scheduler now
        else:
            yield _Execution(address, show_progress=not quiet and sys.stderr.isatty())
    if report is not None:
        _say(args, f"performance report: {report}")


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


def _check_apply(args: argparse.Namespace, kind: str) -> None:
    """Every usage error of ``apply`` that needs no input read: flags that do not fit."""
    if args.input is None and args.stac is None:
        raise UsageError(
            "the following arguments are required: OUTPUT (usage: 'patchflow apply INPUT "
            "OUTPUT' or 'patchflow apply --stac ITEMS --assets A,B OUTPUT')"
        )
    if args.input is not None and args.stac is not None:
        raise UsageError("give INPUT or --stac ITEMS, not both")
    if args.stac is None:
        for flag, value in (
            ("--assets", args.assets),
            ("--resolution", args.resolution),
            ("--epsg", args.epsg),
            ("--bounds", args.bounds),
            ("--bounds-latlon", args.bounds_latlon),
            ("--snap-bounds", args.snap_bounds),
        ):
            if value is not None:
                raise UsageError(f"{flag} is for STAC input: it needs --stac ITEMS")
    else:
        if not args.assets or not args.assets.strip(","):
            raise UsageError("--stac needs --assets A1,A2,... (the asset keys to stack)")
        if args.var is not None:
            raise UsageError("--var is for a Zarr INPUT, not --stac")
    if args.resume and kind != "zarr":
        raise UsageError("--resume needs a .zarr OUTPUT (a COG is written in one go)")
    if args.co and kind != "tif":
        raise UsageError("--co sets GDAL creation options of a .tif OUTPUT, not of a .zarr store")
    if args.co:
        _check_creation_options(args.co)
    if args.zarr_format is not None and kind != "zarr":
        raise UsageError("--zarr-format is for a .zarr OUTPUT, not a .tif")
    given = [
        f
        for f, v in (("--op", args.op), ("--pipeline", args.pipeline), ("--model", args.model))
        if v is not None
    ]
    if len(given) > 1:
        raise UsageError(f"give {' or '.join(given)}, not both")
    op = args.op if args.op is not None else ("ndvi" if not given else None)
    if args.op_arg and args.op is None:
        raise UsageError("--op-arg sets parameters of --op NAME: give --op")
    if args.op_arg and op in RECIPES:
        raise UsageError(
            f"--op {op} takes no --op-arg (set it with --red, --nir and --scale); for the "
            f"registered operator {op.upper()} give its name in capitals, e.g. --op "
            f"{op.upper()} --op-arg red=0 --op-arg nir=1"
        )
    if op not in RECIPES:
        here = f"--op {op}" if op is not None else given[0]
        for flag, value in (("--red", args.red), ("--nir", args.nir), ("--scale", args.scale)):
            if value is not None:
                raise UsageError(
                    f"{flag} is for --op ndvi; the operator here is {here} (its parameters "
                    "are --op-arg KEY=VALUE, or the pipeline file's steps)"
                )
    if args.device is not None and (args.model is None or is_sklearn_model(args.model)):
        raise UsageError(
            "--device is the torch device of a TorchScript --model: give --model FILE.pt"
        )
    if args.model_output is not None and (args.model is None or not is_sklearn_model(args.model)):
        raise UsageError(
            "--model-output is for a scikit-learn --model (.joblib, .pkl, .pickle, .skops)"
        )
    if args.stride > args.size:
        raise UsageError(f"--stride {args.stride} is larger than --size {args.size}")
    if args.agg == "vote" and args.n_classes is None:
        raise UsageError("--agg vote needs --n-classes")
    _check_execution(args)


def _operator(args: argparse.Namespace) -> Any:
    """The operator of ``--op``/``--pipeline``/``--model`` (``None`` for a recipe)."""
    if args.pipeline is not None:
        return load_pipeline(args.pipeline)
    if args.model is not None and is_sklearn_model(args.model):
        return load_sklearn(args.model, output=args.model_output or "predict")
    if args.model is not None:
        return load_torchscript(args.model, device=args.device or "cpu", batch_size=args.batch_size)
    if args.op is None or args.op in RECIPES:
        return None
    return build_operator(args.op, parse_op_args(args.op_arg), where=OPTION)


def _check_resumed_format(store: Path, fmt: int) -> None:
    """``--resume --zarr-format N`` on a store of the other format (its marker files say
    which: ``zarr.json`` for v3, ``.zgroup`` for v2): resuming keeps the store's format."""
    found = 3 if (store / "zarr.json").is_file() else 2 if (store / ".zgroup").is_file() else None
    if found is not None and found != fmt:
        raise UsageError(
            f"--zarr-format {fmt} does not match OUTPUT, a Zarr v{found} store: resuming keeps "
            f"its format; leave out --zarr-format (or give {found}), or pass --overwrite "
            f"instead of --resume to rewrite it as v{fmt}"
        )


def _open_stac(args: argparse.Namespace) -> Any:
    """``--stac ITEMS --assets A,B``: the lazy ``(time, band, y, x)`` stack."""
    from patchflow.io.stac import open_stac

    assets = [a.strip() for a in args.assets.split(",") if a.strip()]
    try:
        with cli_wording():  # open_stac's fixes say --epsg, not epsg=
            return open_stac(
                args.stac,
                assets=assets,
                resolution=args.resolution,
                epsg=args.epsg,
                bounds=args.bounds,
                bounds_latlon=args.bounds_latlon,
                snap_bounds=args.snap_bounds,
                chunks=args.chunks or 2048,
            )
    except ParameterError as exc:
        raise UsageError(str(exc)) from exc


def _over(obj: Any, text: str | None) -> str | list[str] | None:
    """``--over DIM[,DIM]`` checked against the input's non-spatial dims."""
    if text is None:
        return None
    from patchflow._xr import spatial_dims

    y, x = spatial_dims(obj)
    others = [str(d) for d in obj.dims if d not in (y, x)]
    dims = [d.strip() for d in text.split(",") if d.strip()]
    unknown = [d for d in dims if d not in others[:-1]]
    if not dims or unknown:
        band = f" ({others[-1]} is the band dim, which the operator always sees)" if others else ""
        dims_text = ", ".join(map(str, obj.dims))
        raise UsageError(
            f"argument --over: {', '.join(unknown) or repr(text)} is not a non-spatial dim "
            f"of the input besides its band dim; the input's dims are {dims_text}{band}"
        )
    return dims[0] if len(dims) == 1 else dims


def cmd_apply(args: argparse.Namespace) -> int:
    """``patchflow apply``."""
    import patchflow
    from patchflow.ops import SelectBands

    kind = _output_kind(args.output)
    _check_apply(args, kind)
    from patchflow.io.store import check_output_path

    source = args.input if args.stac is None else args.stac
    # before anything is read, let alone replaced: OUTPUT may not be (or be inside) INPUT
    with cli_wording():
        check_output_path(args.output, [source])

    out_path = Path(args.output)
    exists = out_path.exists()
    if exists and not (args.overwrite or args.resume):
        hint = " or --resume to finish an interrupted run" if kind == "zarr" else ""
        raise CommandError(f"{args.output} already exists; pass --overwrite to replace it{hint}")

    if exists and args.resume and args.zarr_format is not None:
        _check_resumed_format(out_path, args.zarr_format)
    op = _operator(args)  # before reading INPUT: a bad spec fails fast
    if args.stac is not None:
        obj = _open_stac(args)
    else:
        obj = _open_input(args.input, var=args.var, chunks=args.chunks)
    # what the operator sees: --red/--nir and --over address the selected bands
    seen = obj
    select = None
    if args.bands is not None:
        seen = _select_bands(obj, args.bands)
        if args.over is None:
            # a SelectBands step, not a selected input: INPUT reopens as it is, so the
            # store's recipe can finish the job ('patchflow resume STORE')
            select = SelectBands(_band_positions(obj, args.bands))
        else:
            # with --over the operator's chips are (over dims..., band, h, w), and
            # SelectBands picks along the first of them: select the input instead
            obj = seen
    name = None
    if op is None:
        red = _band_index(seen, args.red or "1", "--red")
        nir = _band_index(seen, args.nir or "2", "--nir")
        op = _ndvi_op(red, nir, 1e-4 if args.scale is None else args.scale)
        name = "ndvi"
    if args.name is not None:
        from patchflow.io.store import check_var_name

        with cli_wording():
            try:
                check_var_name(args.name, named=True)
            except ParameterError as exc:  # before anything is read or written
                raise UsageError(str(exc)) from exc
        name = args.name
    if select is not None:
        op = select | op
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
    if args.on_error != "raise":
        params["on_error"] = args.on_error
    over = _over(obj, args.over)
    if over is not None:
        params["over"] = over
    if name is not None:
        params["name"] = name
    layout = patchflow.plan_grid(obj, size=args.size, stride=args.stride, boundary=args.boundary)

    with _execution(args) as where, cli_wording(), _failed_chips() as said:
        if kind == "zarr":
            extra: dict[str, Any] = {}
            if args.zarr_format is not None:
                extra["zarr_format"] = args.zarr_format
            with where.progress():
                report = patchflow.run(
                    obj,
                    op,
                    store=args.output,
                    resume=args.resume and exists,
                    overwrite=args.overwrite,
                    scheduler=where.scheduler,
                    **extra,
                    **params,
                )
            result = report.open()
        else:
            cog: dict[str, Any] = {}
            if args.co:
                cog["creation_options"] = _creation_options(args.co)
            # the CLI has checked OUTPUT itself (it may replace it); the job computes
            # once, so dask's bar around it draws one bar
            with _co_errors(), where.progress():
                report = patchflow.run(
                    obj,
                    op,
                    store=args.output,
                    overwrite=True,
                    scheduler=where.scheduler,
                    **cog,
                    **params,
                )
            result = report.open()
    _say(
        args,
        f"wrote {args.output}: {_describe(result)}",
        f"  chips: {layout.grid.n_chips} ({args.size}x{args.size}, stride {args.stride}, "
        f"{args.window}, {args.agg}), blocks: {report.blocks} ({_blocks_done(report)})",
        f"  wall time: {report.seconds:.2f} s",
    )
    said(report)
    return 0


@contextlib.contextmanager
def _failed_chips() -> Iterator[Any]:
    """Hold back ``run``'s :class:`~patchflow.errors.ChipFailedWarning`; the command prints
    its line on stderr as the last thing it says (the callable yielded, given the report).
    """
    import warnings

    from patchflow.errors import ChipFailedWarning
    from patchflow.io.store import chips_failed_message

    def say(report: Any) -> None:
        line = chips_failed_message(report)
        if line is not None:
            print(f"{PROG}: warning: {line}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ChipFailedWarning)
        yield say


@contextlib.contextmanager
def _co_errors() -> Iterator[None]:
    """A creation option GDAL would misread is a usage error of ``--co``."""
    from patchflow.io.cog import CreationOptionError

    try:
        yield
    except CreationOptionError as exc:
        raise UsageError(f"argument --co: {exc}") from exc


def _check_creation_options(pairs: Sequence[tuple[str, str | int]]) -> None:
    """Names and values of ``--co``, checked before anything is read (the result's dtype
    and bands are checked again when it is planned)."""
    from patchflow.io.cog import cog_options

    with _co_errors():
        cog_options(_creation_options(pairs))


def _creation_options(pairs: Sequence[tuple[str, str | int]]) -> dict[str, str | int]:
    out: dict[str, str | int] = {}
    for key, value in pairs:
        if key in out and out[key] != value:
            raise UsageError(f"argument --co: {key} is given twice ({out[key]} and {value})")
        out[key] = value
    return out


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

    with _execution(args) as where, cli_wording(), _failed_chips() as said:
        with where.progress():
            report = resume(args.store, scheduler=where.scheduler)
    _say(
        args,
        f"resumed {args.store}: blocks: {report.blocks} ({_blocks_done(report)})",
        f"  wall time: {report.seconds:.2f} s",
    )
    said(report)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """``patchflow inspect``: exit status 1 (a named error) if the store is not healthy
    (failed chips are the job's outcome, not damage: listed, exit status 0)."""
    from patchflow.io.store import check_store

    with cli_wording():
        health = check_store(args.store, checksums=not args.quick)
    _say(args, *health.lines(verbose=args.verbose))
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


def _positionals(args: argparse.Namespace, extras: list[str]) -> None:
    """Place ``apply``'s INPUT/OUTPUT wherever they stand among the options.

    Both are optional to argparse (``--stac`` replaces INPUT), and argparse fills optional
    positionals from the first run of bare words only: ``apply IN --red 3 OUT`` would leave
    OUT unrecognised. The bare words left over are placed here instead; anything else
    unrecognised is the usual usage error.
    """
    loose = [e for e in extras if not e.startswith("-") or e == "-"]
    if getattr(args, "command", None) == "apply" and len(loose) == len(extras):
        paths = [p for p in (args.input, args.output) if p is not None] + loose
        if len(paths) > 2:
            extras = paths[2:]
        else:
            extras = []
            # a single path is OUTPUT: INPUT is the one --stac replaces
            args.input, args.output = [None] * (2 - len(paths)) + paths
    if extras:
        raise UsageError(f"unrecognized arguments: {' '.join(extras)} (see '{PROG} --help')")


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
        args, extras = build_parser().parse_known_args(argv)
        _positionals(args, extras)
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
