"""The result store: streaming a job into Zarr, resume, accumulation, verification.

(The other Zarr code is in :mod:`patchflow.io` too: chip stores in :mod:`patchflow.io.chips`,
Zarr inputs in :mod:`patchflow.io.sources`; nothing outside ``patchflow.io`` imports zarr,
which ``lint-imports`` enforces.)

Store layout (a Zarr v3 group by default, or v2 with ``zarr_format=2``; readable with
``xr.open_zarr`` + rioxarray)::

    store.zarr/
      zarr.json              group attrs["patchflow"]: status, block grid, the job record
                             (operator, input identity, every grid/stitch parameter), the
                             resume recipe, CRS (WKT) and transform, pass count, Zarr
                             format, and the names of the entries patchflow wrote
                             (v2: ``.zattrs``, with ``.zgroup`` and ``.zmetadata``)
      <var>/                 the normalised result, dims (out dims…, y, x), one Zarr chunk
                             per output block (chunk shape = block shape)
      y/, x/, spatial_ref/   coordinates and the CRS (CF grid mapping, as rioxarray writes)
      _patchflow/done        uint8 (n_blocks_y, n_blocks_x), chunk (1, 1): 1 once a block's
                             data are written; written *after* the data
      _patchflow/checksum    uint32, same grid: CRC-32 of the block's result bytes (the
                             array the task already holds), written before ``done``
      _patchflow/failed, valid  per block: chips left out by ``on_error``, valid pixels
      _patchflow/chip_errors/<i>.<j>.json
                             (only where chips failed) the records of the chips block
                             (i, j) owns that failed under ``on_error="mask"``/``"skip"``:
                             index, scene and CRS bounds, exception, traceback; with the
                             block's checksum, written before its done marker and rewritten
                             (or removed) whenever the block is recomputed
      _patchflow/num, den    (``keep_sums=True`` or ``mode="accumulate"``) the overlap-add
                             numerator and denominator (``count``/``wsum`` for ``vote``),
                             float, same block chunks
      _patchflow/<sum>_checksum
                             uint32 per block: CRC-32 of each kept sums array's block,
                             written after that block's sums and before ``done``; verified
                             before a pass adds to them and by ``check_store`` (stores
                             written before these existed have none: their sums are
                             unverifiable)
      .patchflow-lock        ``flock``-ed by the run writing the store (dies with it)
      .patchflow-creating    exists only while the store is being created or replaced:
                             marks a half-created store as patchflow's (with its job)

Every output block is produced by exactly one task, and that task is the only writer of
that block's chunk in every array (output, checksum, sums, done marker), so no locks are
needed between tasks under threads, processes or dask.distributed. One *run* per store is
enforced by the lock file: a second run (or ``overwrite``) is refused with
:class:`StoreLockedError` while the first holds it; a killed run's lock goes with it.

Crash safety: Zarr's local store writes each file atomically (temporary file + rename),
the done marker follows the block's data and checksum, metadata updates are atomic renames,
an accumulate pass's sums are promoted by idempotent renames, and the status only becomes
``"complete"`` after the last block and the consolidated metadata. A process killed at any
point (not a power loss: nothing is fsync'ed) leaves a store that ``resume=True`` (or
:func:`resume`, which reopens the input and operator from the recorded recipe) finishes
bit-identically, and that :func:`open_result` refuses until then. Resuming checks the job:
a different operator, input or parameter is a :class:`ResumeMismatchError` naming each
difference (``mode="accumulate"`` may change the operator and window, not the input or
grid). Resuming also re-reads the blocks already marked done and recomputes any whose
checksum no longer matches (a deleted or damaged chunk file) — except in a store summing
several passes, where that is a :class:`CorruptStoreError` (one operator cannot recompute
it). :func:`check_store` (``patchflow inspect``) and ``open_result(verify="now")`` run the
same verification, which also checks that each done block's failed-chip records match
its failed-chip count and checksum (a deleted or foreign record file is damage that
``resume`` recomputes); by default ``open_result`` checks each block's checksum as a
computation reads it instead (no second read of the result). Kept sums carry their
own per-block checksums: ``check_store`` verifies them (``open_result`` does not need
them), and a pass refuses to add to damaged sums (:class:`CorruptStoreError`) rather
than reading a lost chunk as zeros; ``resume`` recomputes them only in a one-pass store
(the sum of several passes must be rebuilt).

The numerator/denominator of a block are summed in memory by the block's stitch task (from
the block's own chips and its neighbours' spill-over) and normalised there; writing them to
the store is only needed to add later passes. For a separable window on valid data the
denominator is geometry (outer product of per-axis weight sums), so by default neither is
written: one array of output bytes is the whole I/O cost.

Zarr v2 is the GIS-interoperable format: GDAL (3.10, the one rasterio wheels bundle) opens
``ZARR:"store.zarr":/<var>`` as a georeferenced raster (CRS from the CF grid mapping, the
transform from the x/y coordinates, nodata from the fill value, Zstd-compressed chunks),
whereas it cannot decode the v3 store ("Unsupported codec: bytes"). Everything else
(resume, checksums, accumulate, inspection) works the same in both formats; a store keeps
the format it was created with.

Only local directories are supported as stores; an output path that is, contains or lies
inside one of the inputs is refused (:class:`OutputOverlapsInputError`) before anything is
written or deleted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import inspect
import itertools
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import types
import warnings
import zlib
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr
import zarr.codecs
from dask.base import tokenize
from dask.callbacks import Callback
from dask.delayed import Delayed

from patchflow._xr import spatial_dims, transform_of
from patchflow.engine.aggregate import AGGREGATIONS, Aggregator, State
from patchflow.engine.graph import build_graph
from patchflow.engine.kernels import finalize_block
from patchflow.engine.nodata import is_value
from patchflow.engine.prepare import Prepared, prepare, prepare_from
from patchflow.engine.timing import phase
from patchflow.errors import (
    _CLI,
    ChipFailedWarning,
    CorruptStoreError,
    ForeignFilesError,
    ImportTargetError,
    IncompleteStoreError,
    InputReadError,
    ModelChangedError,
    OutputOverlapsInputError,
    ParameterError,
    PatchflowError,
    PatchflowWarning,
    ResumeMismatchError,
    ResumeRecipeError,
    StoreError,
    StoreExistsError,
    StoreLockedError,
    StoreMismatchError,
    StorePathError,
    StoreWriteError,
    _w,
    cli_wording,
)
from patchflow.io.cog import (
    check_cog_path,
    cog_options,
    is_cog_path,
    raster_metadata,
    zarr_to_cog,
)
from patchflow.io.report import ChipError, RunReport
from patchflow.io.sources import check_band_nodata, is_remote, reads_masked
from patchflow.io.stac import STAC_ASSET_FILES
from patchflow.options import (
    DEFAULT_SIZE,
    Agg,
    Boundary,
    OnError,
    PadMode,
    RunMode,
    SizeSpec,
    ZarrFormat,
    given_keywords,
)
from patchflow.plan.grid import size_pair
from patchflow.plan.windows import WindowSpec

if sys.platform != "win32":
    import fcntl

__all__ = [
    "ChipError",
    "CorruptStoreError",
    "ForeignFilesError",
    "IncompleteStoreError",
    "OutputOverlapsInputError",
    "ResumeMismatchError",
    "ResumeRecipeError",
    "RunReport",
    "StoreError",
    "StoreExistsError",
    "StoreHealth",
    "StoreLockedError",
    "StoreMismatchError",
    "StorePathError",
    "StoreWriteError",
    "check_output_path",
    "check_store",
    "check_var_name",
    "cli_wording",
    "open_result",
    "resume",
    "run",
]

META = "patchflow"
BOOK = "_patchflow"
#: directory (inside ``BOOK``) of the per-block failed-chip records, ``<i>.<j>.json``
CHIP_ERRORS = "chip_errors"
#: failed chips :meth:`StoreHealth.lines` lists without ``verbose``
LISTED_CHIPS = 100
MODES = ("w", "accumulate")
LOCK = ".patchflow-lock"
CREATING = ".patchflow-creating"
#: version of the job record in ``attrs["patchflow"]``
RECORD = 2
#: Zarr formats a store can be written in (v3 by default; v2 is what GDAL reads)
ZARR_FORMATS: tuple[int, ...] = (2, 3)
DEFAULT_ZARR_FORMAT = 3
#: the group metadata files of a store in each format (patchflow's attrs are in
#: ``zarr.json`` or ``.zattrs``)
_GROUP_FILES: dict[int, tuple[str, ...]] = {
    3: ("zarr.json",),
    2: (".zattrs", ".zmetadata", ".zgroup"),
}
#: all of them, in the order a store is deleted (first: readers stop seeing a store at once)
_META_FILES = ("zarr.json", ".zmetadata", ".zattrs", ".zgroup")
#: testing hook: ``PATCHFLOW_CRASH_AT=<stage>`` SIGKILLs the writing process at that point so
#: tests can kill a run at exact moments. Stages: ``create`` (marker written, arrays being
#: created), ``replace`` (overwrite: old entries partly deleted), ``block-N`` (the N-th block
#: this process writes: data and checksum on disk, done marker not yet), ``accumulate`` (a
#: new pass declared, its arrays not yet ready), ``promote`` (a pass's sums half renamed into
#: place), ``finalise`` (all blocks done, status not yet complete).
CRASH_AT = "PATCHFLOW_CRASH_AT"
#: temporary files of atomic writes (Zarr's and ours) that a killed run may leave behind
_TEMPORARY = re.compile(r"^(zarr\.[0-9a-f]{32}\.partial|\.patchflow-.+\.tmp)$")
_BLOCKS_WRITTEN = itertools.count(1)
#: the checksum array of a kept sums array (``num`` → ``num_checksum``)
SUM_CHECKSUM = "{}_checksum"


def _crc(values: np.ndarray) -> int:
    """CRC-32 of a C-contiguous array's bytes (no copy)."""
    return zlib.crc32(values.data.cast("B")) if values.size else 0


def _checkpoint(stage: str) -> None:
    if os.environ.get(CRASH_AT) == stage:
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


# --------------------------------------------------------------------------- wording

#: ``prepare`` keywords that ``patchflow apply`` exposes as ``--flags``
_CLI_FLAGS = frozenset(
    {
        "size",
        "stride",
        "window",
        "agg",
        "n_classes",
        "boundary",
        "batch_size",
        "chunks",
        "on_error",
    }
)


def _field_label(key: str) -> str:
    """A job-record field in the caller's words (``stride`` / ``--stride``)."""
    cli = _CLI.get()
    if key.startswith("params."):
        name = key.removeprefix("params.")
        return f"--{name.replace('_', '-')}" if cli and name in _CLI_FLAGS else name
    if key == "op" or key.startswith(("op.", "op[")):
        rest = key.removeprefix("op").removeprefix(".config").removeprefix(".callable")
        rest = " (its state)" if rest == ".token" else rest
        return ("operator" if cli else "op") + rest
    if key == "input.derived" or key.startswith("input.derived."):
        # a token of the lazy operations (da + 1, where, ...) applied after reading
        var = key.removeprefix("input.derived").removeprefix(".")
        return f"{'INPUT' if cli else 'input'}{f' {var}' if var else ''} computed as"
    if key.startswith("input."):
        return f"{'INPUT' if cli else 'input'} {key.removeprefix('input.')}"
    if key == "var":
        return "result variable" if cli else "var"
    return key.replace(".", " ")


# --------------------------------------------------------------------------- compressors


def default_compressors(dtype: np.dtype, zarr_format: int = DEFAULT_ZARR_FORMAT) -> Any:
    """Zstd level 1: on float rasters it gives most of level 3's (small) gain at ~2× speed.

    Zarr v2 takes numcodecs' Zstd (given as its JSON form, which zarr accepts), a codec
    GDAL's Zarr driver decodes.
    """
    if zarr_format == 2:
        return [{"id": "zstd", "level": 1}]
    return [zarr.codecs.ZstdCodec(level=1)]


def _check_compressors(compressors: Any, zarr_format: int) -> None:
    """Refuse v3 codecs for a v2 store before anything is written (zarr would only fail
    while the store is being created)."""
    if compressors is None or zarr_format != 2:
        return
    items = compressors if isinstance(compressors, (list, tuple)) else [compressors]
    for codec in items:
        if not ((isinstance(codec, dict) and "id" in codec) or hasattr(codec, "codec_id")):
            raise ParameterError(
                f"compressors={compressors!r} cannot compress a Zarr v2 store: v2 takes "
                "numcodecs codecs (e.g. numcodecs.Zstd(level=1), or {'id': 'zstd', "
                "'level': 1}); zarr.codecs.* are for zarr_format=3"
            )


# --------------------------------------------------------------------------- I/O errors


def _reason(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):  # zarr's NodeNotFoundError is one too
        return "part of the store is gone (removed or replaced by someone else while writing)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return " ".join(str(exc).split()) or type(exc).__name__


def _fix(exc: BaseException) -> str:
    code = exc.errno if isinstance(exc, OSError) else None
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "make it writable or choose a writable location"
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return "free disk space (or choose another location)"
    if code == errno.EFBIG:
        return "raise the file-size limit ('ulimit -f') or choose another location"
    return "check the store's location"


def _write_error(path: str, what: str, exc: BaseException, cli: bool | None = None) -> StoreError:
    return StoreWriteError(
        f"cannot write {what} of the output store {path!r}: {_reason(exc)}; {_fix(exc)}, then "
        f"finish the job with {_w('finish', cli)} (the store stays incomplete until then)"
    )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence Zarr's remarks on what patchflow writes on purpose."""
    with warnings.catch_warnings():
        # our lock file and creation marker are not Zarr nodes (Zarr notes it when listing)
        warnings.filterwarnings("ignore", message=r"Object at \.patchflow-")
        # nor is the folder of failed-chip records (plain JSON files) inside the bookkeeping
        warnings.filterwarnings("ignore", message=rf"Object at {CHIP_ERRORS} ")
        # string band labels have no final Zarr v3 dtype spec yet; xarray reads them back
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification")
        # consolidated metadata is not in the v3 spec yet; xarray and zarr read it
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not")
        yield


@contextlib.contextmanager
def _writing(path: str, what: str) -> Iterator[None]:
    """Turn OS/Zarr write failures into :class:`StoreWriteError` naming the fix."""
    try:
        yield
    except PatchflowError:
        raise
    except OSError as exc:  # includes zarr's NodeNotFoundError (a FileNotFoundError)
        raise _write_error(path, what, exc) from exc


# --------------------------------------------------------------------------- block sink


@dataclass(frozen=True)
class BlockSink:
    """Writes one output block (result, checksum, optional sums, done marker). Picklable."""

    store: str
    var: str
    nlead: int
    block: tuple[int, int]
    sums: tuple[str, ...]
    accumulate: bool
    #: word errors for the command line (the context of the caller does not reach workers)
    cli: bool = False
    #: the store records a checksum per sums block (stores from before they existed do not)
    sum_checksums: bool = False
    #: passes summed in the store's sums so far, and whether resume can recompute them
    #: (for the message when the sums a pass reads are damaged)
    passes: int = 0

    def _region(self, index: tuple[int, int], shape: tuple[int, ...]) -> tuple[slice, ...]:
        (i, j), (by, bx) = index, self.block
        lead = (slice(None),) * (len(shape) - 2)
        return (*lead, slice(i * by, i * by + shape[-2]), slice(j * bx, j * bx + shape[-1]))

    def write(
        self,
        index: tuple[int, int],
        state: State,
        agg: Aggregator,
        failed: int = 0,
        *,
        skip: Sequence[tuple[int, int, int, int]] = (),
        errors: Sequence[Mapping[str, Any]] = (),
    ) -> np.ndarray:
        """Persist block ``index`` of a merged state; return a one-element marker.

        ``failed`` chips of this block failed; ``errors`` are their records (written to
        ``_patchflow/chip_errors/<i>.<j>.json``, or that file removed when there are
        none) and ``skip`` the output-pixel rectangles of skipped chips, set invalid.
        """
        try:
            self._write(index, state, agg, failed, skip, errors)
        except PatchflowError:
            raise
        except OSError as exc:  # disk full, file too large, read-only, store removed
            raise _write_error(self.store, f"block {tuple(index)}", exc, self.cli) from exc
        return np.ones((1,) * (self.nlead + 2), np.int8)

    def _write(
        self,
        index: tuple[int, int],
        state: State,
        agg: Aggregator,
        failed: int,
        skip: Sequence[tuple[int, int, int, int]],
        errors: Sequence[Mapping[str, Any]],
    ) -> None:
        if self.sums:
            sums = agg.to_sums(state)
            if self.accumulate:
                for key in self.sums:
                    sums[key] = sums[key] + self._base(index, key, sums[key].shape)
            suffix = "_next" if self.accumulate else ""
            for key in self.sums:
                arr = zarr.open_array(self.store, path=f"{BOOK}/{key}{suffix}", mode="r+")
                # the checksum is of the bytes as stored (the array's dtype), as read back
                values = np.ascontiguousarray(sums[key], dtype=arr.dtype)
                arr[self._region(index, values.shape)] = values
                if self.sum_checksums:
                    # after the sums it describes (and before ``done``): a kill in between
                    # leaves a block that is not done, so it is recomputed
                    crcs = SUM_CHECKSUM.format(key) + suffix
                    zarr.open_array(self.store, path=f"{BOOK}/{crcs}", mode="r+")[index] = _crc(
                        values
                    )
            state = agg.from_sums(sums)
        with phase("normalise"):
            out = finalize_block(agg, state, skip)
        # every chunk is written, even all-nodata ones, so the bytes read back are exactly
        # the bytes checksummed here (Zarr would otherwise drop it and return its fill value)
        with phase("write"):
            result = zarr.open_array(
                self.store, path=self.var, mode="r+", config={"write_empty_chunks": True}
            )
            out = np.ascontiguousarray(out, dtype=result.dtype)
            good = np.isfinite(out) if out.dtype.kind == "f" else out != agg.nodata
            if out.dtype.kind == "f" and is_value(agg.encoded):
                # an explicit float nodata= is the on-disk value of invalid pixels (the
                # variable's _FillValue, NaN again once read), as rio.to_raster writes it.
                # A new array: ``out`` may be a partial's own memory
                out = np.where(good, out, out.dtype.type(agg.encoded))
            result[self._region(index, out.shape)] = out
            checksum = _crc(out)  # the array in hand: no re-read
            # the records before the count and checksum they must match: a kill in
            # between leaves a block that is not done, so it is recomputed
            _write_records(self.store, index, checksum, errors)
            zarr.open_array(self.store, path=f"{BOOK}/failed", mode="r+")[index] = failed
            valid = int(np.count_nonzero(good))  # (a bool sum casts to int64 first)
            zarr.open_array(self.store, path=f"{BOOK}/valid", mode="r+")[index] = valid
            zarr.open_array(self.store, path=f"{BOOK}/checksum", mode="r+")[index] = checksum
        if CRASH_AT in os.environ:
            _checkpoint(f"block-{next(_BLOCKS_WRITTEN)}")
        # the marker goes last: a block is done only once all its data are on disk
        zarr.open_array(self.store, path=f"{BOOK}/done", mode="r+")[index] = 1

    def _base(self, index: tuple[int, int], key: str, shape: tuple[int, ...]) -> np.ndarray:
        """Block ``index`` of the earlier passes' sums ``key``, verified against its checksum.

        A lost chunk reads as Zarr's fill value (zeros), which would silently drop the
        earlier passes from this block, and garbage bytes fail in the codec: both are a
        :class:`CorruptStoreError` instead.
        """
        region = self._region(index, shape)
        try:
            values = np.ascontiguousarray(
                zarr.open_array(self.store, path=f"{BOOK}/{key}", mode="r")[region]
            )
            recorded = None
            if self.sum_checksums:
                crcs = zarr.open_array(
                    self.store, path=f"{BOOK}/{SUM_CHECKSUM.format(key)}", mode="r"
                )
                recorded = int(np.asarray(crcs[index]))
        except OSError:  # the store itself is unreadable: a write error, not damage
            raise
        except Exception as exc:  # garbage bytes: the codec's own error, whatever it is
            raise CorruptStoreError(
                _sums_damage_message(
                    self.store, [index], self.passes, recomputable=False, cli=self.cli
                )
            ) from exc
        if recorded is not None and _crc(values) != recorded:
            raise CorruptStoreError(
                _sums_damage_message(
                    self.store, [index], self.passes, recomputable=False, cli=self.cli
                )
            )
        return values


def _sums_damage_message(
    path: str,
    blocks: Sequence[tuple[int, int]],
    passes: int,
    *,
    recomputable: bool,
    cli: bool | None = None,
) -> str:
    """The problem with damaged kept sums, and what the user can do about it."""
    what = (
        f"{path!r} is damaged: the kept sums (keep_sums=True, what later mode='accumulate' "
        f"passes add to) of {len(blocks)} block(s) fail their checksum or cannot be decoded "
        f"(a file under {BOOK}/ was deleted or overwritten): {_blocks_text(blocks)}; adding "
        "a pass to them would silently drop the earlier passes there. The result itself is "
        "intact (open_result still opens it)"
    )
    if recomputable:
        return f"{what}. Recompute them with {_w('finish', cli)}, then add the pass"
    held = f"the sum of {passes} passes" if passes > 1 else "the earlier passes"
    return (
        f"{what}. They hold {held}, which resume cannot recompute: rerun every pass into "
        "a new store (or into this one with overwrite=True): the first with "
        "keep_sums=True, the others with mode='accumulate'"
    )


def _records_file(store: str, index: tuple[int, int]) -> Path:
    return Path(store) / BOOK / CHIP_ERRORS / f"{int(index[0])}.{int(index[1])}.json"


def _write_records(
    store: str, index: tuple[int, int], checksum: int, errors: Sequence[Mapping[str, Any]]
) -> None:
    """Block ``index``'s failed-chip records (atomically), or no file when none failed:
    a recomputed block never keeps an earlier run's records."""
    file = _records_file(store, index)
    if not errors:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(file)
        return
    file.parent.mkdir(exist_ok=True)
    doc = {"block": [int(index[0]), int(index[1])], "checksum": int(checksum)}
    _write_json(file, {**doc, "errors": [dict(e) for e in errors]})


def _read_records(
    path: str, index: tuple[int, int], checksum: int, failed: int
) -> list[ChipError] | None:
    """Block ``index``'s records, or ``None`` if they do not belong to its current result
    (a missing, unreadable or foreign file, another checksum, another count)."""
    file = _records_file(path, index)
    if not file.exists():
        return [] if failed == 0 else None
    doc = _read_json(file)
    if not isinstance(doc, dict) or doc.get("checksum") != checksum:
        return None
    errors = doc.get("errors")
    if not isinstance(errors, list) or len(errors) != failed:
        return None
    try:
        return [ChipError.from_record(e, block=index) for e in errors]
    except (KeyError, TypeError, ValueError):
        return None


def _chip_errors(path: str, meta: Mapping[str, Any]) -> tuple[ChipError, ...]:
    """The failed-chip records of every done block whose records match it, by chip."""
    if not meta.get("chip_records"):
        return ()  # a store written before records existed
    folder = Path(path) / BOOK / CHIP_ERRORS
    if not folder.is_dir():
        return ()
    done, sums, failed = _done(path, meta), _book(path, "checksum"), _book(path, "failed")
    if sums is None or failed is None:
        return ()
    found: list[ChipError] = []
    for file in folder.iterdir():
        match = re.fullmatch(r"(\d+)\.(\d+)\.json", file.name)
        if match is None:
            continue
        i, j = int(match[1]), int(match[2])
        if i >= done.shape[0] or j >= done.shape[1] or done[i, j] != 1:
            continue
        found += _read_records(path, (i, j), int(sums[i, j]), int(failed[i, j])) or []
    return tuple(sorted(found, key=lambda e: e.chip))


def chips_failed_message(report: RunReport) -> str | None:
    """The end-of-run line when chips failed (``None`` when none did)."""
    n = report.failed_chips
    if not n:
        return None
    how = report.chip_errors[0].on_error if report.chip_errors else "mask"
    what = (
        "their pixels are nodata"
        if how == "skip"
        else "they got zero weight (other chips fill the pixels they cover; pixels no other "
        "chip reaches are nodata)"
    )
    where = (
        "see RunReport.chip_errors (a COG keeps no records)"
        if report.kind == "cog"
        else f"see patchflow inspect {report.store} / check_store({report.store!r}).chip_errors"
    )
    return f"{n} chip{'s' if n > 1 else ''} failed (on_error={how!r}): {what}; {where}"


# --------------------------------------------------------------------------- reports


@dataclass(frozen=True)
class StoreHealth:
    """What :func:`check_store` found."""

    store: str
    #: ``"complete"``, ``"incomplete"``, ``"accumulating"``, ``"creating"`` (creation or
    #: replacement interrupted) or ``"not a patchflow store"``
    status: str
    blocks: tuple[int, int] = (0, 0)
    done: int = 0
    missing: tuple[tuple[int, int], ...] = ()
    corrupt: tuple[tuple[int, int], ...] = ()
    #: whether the checksums of the done blocks were verified (``checksums=True``)
    checked: bool = False
    #: a run is writing the store right now
    locked: bool = False
    passes: int = 0
    var: str | None = None
    #: ``resume`` can finish the job from the store alone (a recipe is recorded)
    resumable: bool = False
    job: Mapping[str, Any] | None = None
    #: the problem and its fix, in the caller's words (``None`` when healthy)
    problem: str | None = None
    #: chips whose operator call failed and were left out (``on_error="mask"``/``"skip"``):
    #: not damage (the store is still ``ok``), the job's own outcome
    failed_chips: int = 0
    #: the record of each of them (index, bounds, exception, traceback), by chip index
    chip_errors: tuple[ChipError, ...] = ()
    #: blocks whose kept sums (``keep_sums``/``mode="accumulate"``) fail their checksum:
    #: the result is intact, but no pass can be added until they are rebuilt
    corrupt_sums: tuple[tuple[int, int], ...] = ()

    @property
    def ok(self) -> bool:
        """Complete, nothing missing, nothing corrupt."""
        return self.problem is None

    def error(self) -> IncompleteStoreError:
        """The named error for :attr:`problem` (:class:`CorruptStoreError` for bad chunks)."""
        cls = CorruptStoreError if self.corrupt or self.corrupt_sums else IncompleteStoreError
        return cls(self.problem or f"{self.store!r} is healthy")

    def lines(self, *, verbose: bool = False) -> list[str]:
        """A human-readable summary (``patchflow inspect``); ``verbose`` adds each failed
        chip's traceback."""
        ny, nx = self.blocks
        out = [f"{self.store}: {self.status}" + (" (being written now)" if self.locked else "")]
        if self.status == "not a patchflow store":
            return out
        if self.var is not None:
            out.append(f"  result: {self.var!r}, passes: {self.passes}")
        check = "checksums verified" if self.checked else "checksums not verified (--quick)"
        out.append(
            f"  blocks: {ny} x {nx} = {ny * nx}: {self.done} done, {len(self.missing)} missing, "
            f"{len(self.corrupt)} corrupt ({check})"
        )
        if self.corrupt:
            out.append(f"  corrupt blocks: {_blocks_text(self.corrupt)}")
        if self.corrupt_sums:
            out.append(f"  blocks with damaged kept sums: {_blocks_text(self.corrupt_sums)}")
        if self.missing and self.status != "creating":
            out.append(f"  missing blocks: {_blocks_text(self.missing)}")
        job = self.job or {}
        op = job.get("op") or {}
        if op:
            shown = op.get("config", op.get("callable"))
            out.append(f"  operator: {_short(json.dumps(shown), 200)}")
        source = (job.get("input") or {}).get("source")
        if source:
            out.append(f"  input: {', '.join(source)}")
        params = job.get("params") or {}
        if params:
            keys = ("size", "stride", "window", "agg", "boundary", "chunks")
            out.append("  " + ", ".join(f"{k} {params[k]}" for k in keys if k in params))
        out.append(
            "  resumable from the store alone: " + ("yes" if self.resumable else "no (no recipe)")
        )
        if self.failed_chips or self.chip_errors:
            how = self.chip_errors[0].on_error if self.chip_errors else "mask"
            what = "their pixels are nodata" if how == "skip" else "zero weight"
            out.append(f"  failed chips: {self.failed_chips} (on_error={how!r}: {what})")
            shown = self.chip_errors if verbose else self.chip_errors[:LISTED_CHIPS]
            for err in shown:
                out.append(f"    {err.describe()}")
                if verbose and err.traceback:
                    out.extend(f"      {line}" for line in err.traceback.rstrip().splitlines())
            if len(shown) < len(self.chip_errors):
                more = len(self.chip_errors) - len(shown)
                out.append(
                    f"    … and {more} more (--verbose / lines(verbose=True) lists them all, "
                    "with tracebacks)"
                )
            if len(self.chip_errors) < self.failed_chips:
                out.append(
                    f"    ({self.failed_chips - len(self.chip_errors)} without a record: "
                    "the store predates failed-chip records)"
                )
        return out


def _blocks_text(blocks: Sequence[tuple[int, int]], limit: int = 10) -> str:
    text = ", ".join(f"({i}, {j})" for i, j in blocks[:limit])
    return text + (f" and {len(blocks) - limit} more" if len(blocks) > limit else "")


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- JSON values


def _qualname(obj: Any) -> str:
    named = isinstance(obj, type) or (callable(obj) and hasattr(obj, "__qualname__"))
    target = obj if named else type(obj)
    module = getattr(target, "__module__", None) or "?"
    return f"{module}:{getattr(target, '__qualname__', type(target).__name__)}"


def _jsonify(value: Any, depth: int = 0) -> Any:
    """A JSON value for the job record: numpy scalars → Python, tuples → lists, dtypes →
    str, NaN/inf → ``"nan"``/``"inf"``, arrays and objects → a type name and a token."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, np.bool_):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else str(v)  # "nan", "inf", "-inf"
    if isinstance(value, np.dtype):
        return str(value)
    if isinstance(value, type):
        if issubclass(value, np.generic):
            return str(np.dtype(value))
        return _qualname(value)
    if depth > 8:
        return {"object": _qualname(value), "token": _token(value)}
    if isinstance(value, (list, tuple)):
        return [_jsonify(v, depth + 1) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonify(v, depth + 1) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return {"array": list(value.shape), "dtype": str(value.dtype), "token": tokenize(value)}
    if callable(value):
        return _op_identity(value)
    return {"object": _qualname(value), "token": _token(value)}


def _deterministic(value: Any) -> bool:
    try:
        return bool(tokenize(value) == tokenize(value))
    except Exception:
        return False


def _stable(value: Any, depth: int = 0) -> Any:
    """A stand-in for ``value`` that tokenizes the same in every process.

    ``tokenize`` pickles objects it does not know; cloudpickle pickles classes defined in
    ``__main__`` (scripts, notebooks) by value with a random class id, so their instances
    would never match across processes. Those are described by their state instead.
    """
    if depth > 6:
        return _qualname(value)
    if value is None or isinstance(value, (bool, int, float, str, bytes, np.generic, np.ndarray)):
        return value
    if isinstance(value, (list, tuple)):
        return [type(value).__name__, *(_stable(v, depth + 1) for v in value)]
    if isinstance(value, dict):
        return ["dict", *((str(k), _stable(v, depth + 1)) for k, v in value.items())]
    if isinstance(value, types.MethodType):
        return ["method", value.__func__.__qualname__, _stable(value.__self__, depth + 1)]
    if isinstance(value, (type, types.FunctionType, types.BuiltinFunctionType, types.ModuleType)):
        return value  # by reference, or (``__main__`` functions) by code: deterministic
    cls = type(value)
    if cls.__module__ != "__main__" and _deterministic(value):
        return value
    state: Any
    if dataclasses.is_dataclass(value):
        state = {f.name: getattr(value, f.name, None) for f in dataclasses.fields(value)}
    elif hasattr(value, "__dict__"):
        state = dict(vars(value))
    else:
        slots = [s for c in cls.__mro__ for s in getattr(c, "__slots__", ())]
        state = {s: getattr(value, s, None) for s in slots}
    return ["object", _qualname(cls), _stable(state, depth + 1)]


def _token(value: Any) -> str | None:
    """A token for ``value`` that is the same in every process (``None`` when impossible)."""
    stand_in = _stable(value)
    return str(tokenize(stand_in)) if _deterministic(stand_in) else None


def _op_identity(op: Any) -> dict[str, Any]:
    """The operator's full config (patchflow operators) or its qualified name + token."""
    config = _op_config(op)
    if config is not None:
        return {"config": config}
    inner = getattr(op, "fn", None)  # patchflow.batched(fn): name the function
    name = f"batched({_qualname(inner)})" if callable(inner) else _qualname(op)
    return {"callable": name, "token": _token(op)}


def _op_config(op: Any) -> Any:
    from patchflow.ops import Operator, to_json

    if not isinstance(op, Operator):
        return None
    try:
        return json.loads(to_json(op))
    except (PatchflowError, TypeError, ValueError):  # Lambda, ModelOp, unregistered class
        return None


# --------------------------------------------------------------------------- the job


def _prepare_defaults() -> dict[str, Any]:
    sig = inspect.signature(prepare)
    return {
        name: p.default
        for name, p in sig.parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
    }


def _params_identity(
    params: Mapping[str, Any], dims: tuple[Hashable, Hashable] = ("y", "x")
) -> dict[str, Any]:
    """Every grid/stitch parameter: ``params`` over :func:`prepare`'s defaults, as JSON.

    ``size``/``stride`` are recorded as ``[y, x]`` pairs whatever form the call used (an
    int, a pair, a mapping keyed by the spatial ``dims``), so equal grids resume.
    """
    full = {**_prepare_defaults(), **params}
    for key in ("size", "stride"):
        full[key] = list(size_pair(full[key], key, dims=dims))
    value = full.get("chunks")
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        full["chunks"] = [int(value), int(value)]
    if full.get("output_dtype") is not None:
        with contextlib.suppress(TypeError):
            full["output_dtype"] = np.dtype(full["output_dtype"])
    return {key: _jsonify(full[key]) for key in sorted(full)}


def _real(path: Any) -> str:
    text = os.fspath(path)
    return text if is_remote(text) else os.path.realpath(text)


def _walk_source(value: Any, found: list[tuple[str, str | None]], depth: int = 0) -> None:
    """Find the file or Zarr array behind an xarray/rioxarray lazy-array wrapper."""
    if value is None or depth > 12:
        return
    if isinstance(value, zarr.Array):
        root = getattr(value.store, "root", None)
        if root is not None:
            found.append((_real(root), value.path or None))
        return
    manager = getattr(value, "manager", None)  # rioxarray: CachingFileManager(open, path)
    args = getattr(manager, "_args", None)
    if isinstance(args, tuple) and args and isinstance(args[0], (str, os.PathLike)):
        found.append((_real(args[0]), None))
        return
    for attr in ("_array", "array"):
        inner = getattr(value, attr, None)
        if inner is not None and inner is not value:
            _walk_source(inner, found, depth + 1)
            return


def _sources(obj: Any, *, coords: bool = True) -> list[tuple[str, str | None]]:
    """``(path, array path)`` of every file/store ``obj`` reads: ``encoding["source"]`` of
    the object and its variables, and the storage behind every lazy variable (``coords``:
    also behind the coordinates)."""
    found: list[tuple[str, str | None]] = []
    if isinstance(obj, xr.DataArray):
        variables = [obj.variable]
        if coords:
            variables += [c.variable for c in obj.coords.values()]
    elif isinstance(obj, xr.Dataset):
        variables = list((obj if coords else obj.data_vars).variables.values())
    else:
        return found
    encodings = [obj.encoding, *(v.encoding for v in variables)]
    for encoding in encodings:
        source = encoding.get("source")
        if isinstance(source, (str, os.PathLike)) and os.fspath(source):
            found.append((_real(source), None))
        # a STAC stack's asset files: its dask graph names the hrefs, not their contents
        assets = encoding.get(STAC_ASSET_FILES)
        if isinstance(assets, list):
            found.extend((_real(p), None) for p in assets if isinstance(p, str) and p)
    for variable in variables:
        data = variable.data
        if isinstance(data, da.Array):
            layers = getattr(data.__dask_graph__(), "layers", {})
            for name, layer in layers.items():
                if str(name).startswith("original-"):
                    for value in layer.values():
                        _walk_source(value, found)
        else:
            _walk_source(getattr(variable, "_data", None), found)
    unique: dict[tuple[str, str | None], None] = dict.fromkeys(found)
    return list(unique)


def _coord_identity(coord: xr.DataArray) -> Any:
    values = np.asarray(coord.values)
    if values.size <= 64:
        return _jsonify(values.tolist() if values.dtype.kind != "O" else [str(v) for v in values])
    return {"token": tokenize(values)}


def _variable_identity(var: xr.DataArray) -> dict[str, Any]:
    try:
        y, x = spatial_dims(var)
    except PatchflowError:
        y, x = var.dims[-2:] if var.ndim >= 2 else (None, None)
    try:
        nodata = var.rio.nodata
    except Exception:  # not georeferenced
        nodata = None
    return {
        "dims": [str(d) for d in var.dims],
        "shape": list(var.shape),
        "dtype": str(var.dtype),
        "chunks": None if var.chunks is None else [list(c) for c in var.chunks],
        "nodata": _jsonify(nodata),
        "coords": {
            str(d): _coord_identity(var[d]) for d in var.dims if d not in (y, x) and d in var.coords
        },
    }


def _data_name(var: xr.DataArray) -> str:
    data = var.data
    return str(data.name) if isinstance(data, da.Array) else str(tokenize(np.asarray(data)))


def _derivation(var: xr.DataArray) -> str | None:
    """What ``var``'s values are computed as beyond reading their source: ``None`` for a
    plain read, else a token that is the same in every process building them the same way.

    The source path alone would identify ``da + 1000``, ``da.where(...)`` or
    ``da.copy(data=da.data[::-1])`` as the file itself. A dask read is an ``original-<name>``
    layer holding the file, the ``<name>`` getter layer over it and (values unchanged) any
    rechunking; any other layer is a computation, named by dask as a ``tokenize`` of its
    function, arguments and input names. Those input names are deterministic for file
    reads (rioxarray and xarray tokenize the path as given, its mtime and the chunks), so
    the array's own name is the derivation's token. Values held in memory may have been
    edited in place: their token hashes the values.
    """
    data = var.variable._data
    if isinstance(data, da.Array):
        layers = getattr(data.__dask_graph__(), "layers", None)
        if not isinstance(layers, Mapping):
            return str(data.name)
        names = [str(name) for name in layers]
        reads = {name.removeprefix("original-") for name in names if name.startswith("original-")}
        plain = all(name.startswith(("original-", "rechunk-")) or name in reads for name in names)
        return None if plain else str(data.name)
    if isinstance(data, np.ndarray):
        return str(tokenize(data))
    return None  # a lazy backend array: its indexing shows in the shape and coordinates


def _files_identity(found: Sequence[tuple[str, str | None]]) -> dict[str, Any]:
    """``{source: {"bytes": ..., "mtime_ns": ...}}`` of every local source, to notice a file
    rewritten in place (same path, shape and dtype, other values) before a resume blends it.

    A Zarr source is its array's directory (the whole store when the array is unknown):
    file count, total size and newest mtime of the files in it. Stat-ing every chunk file
    costs far less than the run, which reads each of them. Remote sources are left out.
    """
    arrays: dict[str, set[str]] = {}
    for root, arr in found:
        arrays.setdefault(root, set())
        if arr is not None:
            arrays[root].add(arr)
    out: dict[str, Any] = {}
    for root in sorted(arrays):
        if is_remote(root):
            continue
        targets = [f"{root}/{arr}" for arr in sorted(arrays[root])] or [root]
        for target in targets:
            with contextlib.suppress(OSError):  # gone: the source or shape tells
                out[target] = _fingerprint(Path(target))
    return out


def _fingerprint(path: Path) -> dict[str, int]:
    if not path.is_dir():
        st = path.stat()
        return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    files = size = newest = 0
    for folder, _, names in os.walk(path):
        for name in names:
            st = os.stat(os.path.join(folder, name))
            files, size, newest = files + 1, size + st.st_size, max(newest, st.st_mtime_ns)
    return {"files": files, "bytes": size, "mtime_ns": newest}


def _input_identity(obj: xr.DataArray | xr.Dataset, *, files: bool = True) -> dict[str, Any]:
    """Source files (or, without one, the dask name / data token), shape, dtype, chunks,
    band coordinates, nodata, CRS and transform of the input; with source files also their
    size and mtime (``files``; ``files=False`` leaves them out, for a caller comparing
    against a record just made of the same paths) and, for values computed from them, a
    token of the computation (``derived``; ``None`` for a plain read)."""
    found = _sources(obj, coords=False)
    sources = sorted({root if arr is None else f"{root}/{arr}" for root, arr in found})
    ident: dict[str, Any] = {"source": sources or None}
    if isinstance(obj, xr.DataArray):
        ident.update(_variable_identity(obj))
        items = [obj]
    else:
        items = [obj[name] for name in obj.data_vars]
        ident["vars"] = {str(v.name): _variable_identity(v) for v in items}
    try:
        crs = obj.rio.crs
    except Exception:
        crs = None
    ident["crs"] = None if crs is None else crs.to_wkt()
    try:
        transform: Any = list(obj.rio.transform(recalc=True))[:6]
    except Exception:  # no regular y/x coordinates
        transform = None
    ident["transform"] = transform
    if not sources:
        ident["name"] = str(tokenize(*(_data_name(v) for v in items)))
    else:
        if files:
            ident["files"] = _files_identity(found)
        derived = {str(v.name): _derivation(v) for v in items}
        if isinstance(obj, xr.DataArray):
            ident["derived"] = derived.popitem()[1]
        else:
            ident["derived"] = {k: v for k, v in derived.items() if v is not None} or None
    result: dict[str, Any] = _jsonify(ident)
    return result


def _result_identity(prep: Prepared) -> dict[str, Any]:
    sc = prep.spec.sc
    return {
        "shape": [sc(n) for n in prep.arr.shape[-2:]],
        "block": list(_out_block(prep)),
        "dtype": str(prep.spec.agg.result_dtype()),
        "lead": list(prep.spec.agg.result_lead()),
    }


def _job_record(
    obj: Any, op: Any, prep: Prepared, params: Mapping[str, Any], var: str
) -> dict[str, Any]:
    return {
        "op": _op_identity(op),
        "input": _input_identity(obj),
        "params": _params_identity(params, dims=(prep.arr.dims[-2], prep.arr.dims[-1])),
        "var": var,
        "result": _result_identity(prep),
    }


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        if any(isinstance(v, dict) for v in value):
            for k, item in enumerate(value):
                _flatten(item, f"{prefix}[{k}]", out)
        else:
            out[prefix] = value
    else:
        out[prefix] = value
    return out


#: fields a ``mode="accumulate"`` pass may change: the operator and how chips are weighted
_PASS_FIELDS = frozenset(
    f"params.{name}"
    for name in (
        "window",
        "window_params",
        "batched",
        "batch_size",
        "pass_mask",
        "fill_value",
        "on_error",
        "retries",
        "retry_on",
        "output_dtype",
        "output_shape",
        "output_bands",
        "output_dims",
        "name",
    )
)
_ABSENT = "(not recorded)"
#: input fields added to the job record after stores were first written: a store without
#: them resumes as before (nothing to compare), one with them is checked
_LATER_FIELDS = ("input.files", "input.derived")


def _differences(
    old: Mapping[str, Any], new: Mapping[str, Any], *, accumulate: bool
) -> list[tuple[str, Any, Any]]:
    old, new = dict(old), dict(new)
    was, now = old.get("op"), new.get("op")
    if isinstance(was, dict) and isinstance(now, dict) and ("config" in was) != ("config" in now):
        # a config against a plain callable: one field, not every key of the config
        old["op"], new["op"] = _op_summary(was), _op_summary(now)
    before, after = _flatten(old, "", {}), _flatten(new, "", {})
    keys = list(after) + [k for k in before if k not in after]
    diffs = [
        (k, before.get(k, _ABSENT), after.get(k, _ABSENT))
        for k in keys
        if before.get(k, _ABSENT) != after.get(k, _ABSENT)
    ]
    for field in _LATER_FIELDS:
        if not any(k == field or k.startswith(f"{field}.") for k in before):
            # a store from before patchflow recorded this: unknown, not a difference
            diffs = [d for d in diffs if not (d[0] == field or d[0].startswith(f"{field}."))]
    if accumulate:
        diffs = [
            d
            for d in diffs
            if not (d[0] == "op" or d[0].startswith(("op.", "op[")) or d[0] in _PASS_FIELDS)
        ]
    return diffs


def _changed_files(diffs: Sequence[tuple[str, Any, Any]]) -> list[str]:
    """The sources recorded on both sides whose size or mtime differs (a file rewritten in
    place; a source only on one side is another input, which ``input.source`` names)."""
    prefix = "input.files."
    changed = [
        k.removeprefix(prefix).rpartition(".")[0]
        for k, a, b in diffs
        if k.startswith(prefix) and a != _ABSENT and b != _ABSENT
    ]
    return list(dict.fromkeys(changed))


def _op_summary(op: Mapping[str, Any]) -> str:
    if "config" in op:
        return json.dumps(op["config"])
    return str(op.get("callable"))


def _show_value(value: Any, key: str = "") -> str:
    if value == _ABSENT:
        return value
    if value is None and key.startswith("input.derived"):
        return "the file as read"  # not "null": a plain read has no computation
    return _short(json.dumps(value) if not isinstance(value, str) else repr(value), 100)


#: what an ``input.derived`` difference means (the tokens themselves say nothing to a user)
_DERIVED_HINT = (
    " — the values are computed from the same files by other lazy operations (arithmetic, "
    "where, clip, indexing, astype...); the same operations on the same open call, the path "
    "given the same way, match"
)


def _check_job(
    path: str, meta: Mapping[str, Any], job: Mapping[str, Any], *, accumulate: bool
) -> None:
    old = meta.get("job")
    if not isinstance(old, dict):
        raise ResumeMismatchError(
            f"{path!r} was written by an older patchflow that did not record its job, so "
            f"there is no way to check this is the same job; pass {_w('overwrite')} to "
            f"rewrite it, or {_w('another')}"
        )
    diffs = _differences(old, job, accumulate=accumulate)
    if not diffs:
        return
    changed = _changed_files(diffs)
    if changed:
        # the same path with other contents: say so, not "input files./x.tif.mtime_ns"
        others = [d for d in diffs if not d[0].startswith("input.files.")]
        also = "; ".join(
            f"{_field_label(k)}: store {_show_value(a, k)}, now {_show_value(b, k)}"
            for k, a, b in others
        )
        raise ResumeMismatchError(
            f"{path!r} was written from {_w('input')} {', '.join(changed)}, which has been "
            "modified since (its size or modification time differs"
            + (f"; also {also}" if also else "")
            + "), so "
            + ("adding a pass" if accumulate else "resuming")
            + " would blend results of its old and new contents. Restore the file to "
            f"finish the job, or pass {_w('overwrite')} to recompute the whole store from "
            f"it (or {_w('another')})",
            tuple(diffs),
        )
    details = "; ".join(
        f"{_field_label(k)}: store {_show_value(a, k)}, now {_show_value(b, k)}"
        + (_DERIVED_HINT if k.startswith("input.derived") else "")
        for k, a, b in diffs
    )
    if accumulate:
        message = (
            f"{path!r} holds another grid or input: mode='accumulate' may add a pass of "
            f"another operator or window, but the input and the grid must stay the same "
            f"({details}). Use the store's input and grid parameters, or {_w('another')}"
        )
    else:
        message = (
            f"{path!r} was written by a different job, so resuming it would blend two "
            f"results ({details}). Give {_w('same')} to finish it, or pass "
            f"{_w('overwrite')} to replace it (or {_w('another')})"
        )
    raise ResumeMismatchError(message, tuple(diffs))


# --------------------------------------------------------------------------- the recipe


class _Unstorable(Exception):
    def __init__(self, name: str, value: Any) -> None:
        super().__init__(name)
        self.name, self.value = name, value


def _encode(value: Any, name: str) -> Any:
    """A JSON form of a parameter that decodes to an equivalent value (or _Unstorable)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else {"$float": str(v)}
    if isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic)):
        return {"$dtype": str(np.dtype(value))}
    if isinstance(value, (list, tuple)):
        return [_encode(v, name) for v in value]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        if any(k.startswith("$") for k in value):
            raise _Unstorable(name, value)
        return {k: _encode(v, name) for k, v in value.items()}
    raise _Unstorable(name, value)


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"$float"}:
            return float(value["$float"])
        if set(value) == {"$dtype"}:
            return np.dtype(value["$dtype"])
        return {k: _decode(v) for k, v in value.items()}
    return value


def _is_zarr_path(path: str) -> bool:
    return Path(path).is_dir() or path.rstrip("/").lower().endswith(".zarr")


def _chunks_of(obj: xr.DataArray | xr.Dataset) -> dict[str, list[int]] | None:
    sizes = obj.chunksizes if isinstance(obj, xr.DataArray) else obj.chunks
    return {str(d): [int(c) for c in v] for d, v in sizes.items()} or None


def _reopenable(obj: Any) -> dict[str, Any] | str:
    """How to open ``obj`` again from its file (or STAC items), or why that is impossible.

    A stack from :func:`patchflow.io.stac.open_stac` carries its call in
    ``encoding[STAC_CALL]``: reopening it is calling ``open_stac`` again (whether that
    gives the same input, :func:`_recipe` checks).
    """
    from patchflow.io.stac import STAC_CALL

    call = obj.encoding.get(STAC_CALL) if isinstance(obj, xr.DataArray) else None
    if isinstance(call, dict):
        items = call.get("items")
        if not isinstance(items, list) or not items:
            return f"the input is a STAC stack: {call.get('reason') or 'its items are unknown'}"
        return {"path": items[0], "format": "stac", "stac": call}
    if isinstance(obj, xr.Dataset):
        source = obj.encoding.get("source")
        if not isinstance(source, str) or not _is_zarr_path(source):
            return "the input Dataset has no Zarr store behind it (encoding['source'])"
        return {"path": _real(source), "format": "zarr", "var": None, "chunks": _chunks_of(obj)}
    sources = _sources(obj, coords=False)
    if not sources:
        return "the input is in memory or computed (no file behind it to open again)"
    roots = {root for root, _ in sources}
    if len(roots) != 1:
        return f"the input combines several sources ({', '.join(sorted(roots))})"
    root = roots.pop()
    if _is_zarr_path(root):
        arrays = {arr for _, arr in sources if arr is not None}
        var = arrays.pop() if len(arrays) == 1 else (str(obj.name) if obj.name else None)
        if var is None:
            return f"cannot tell which variable of {root} the input is"
        return {"path": root, "format": "zarr", "var": var, "chunks": _chunks_of(obj)}
    return {"path": root, "format": "raster", "var": None, "chunks": _chunks_of(obj)}


def _open_input(source: Mapping[str, Any]) -> xr.DataArray | xr.Dataset:
    """Open a recipe's input the way the original run had it (same chunks)."""
    import rioxarray

    path = str(source["path"])
    if source.get("format") == "stac":
        return _open_stac(source["stac"])
    chunks = source.get("chunks")
    spec: Any = None if chunks is None else {k: tuple(v) for k, v in chunks.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unconsolidated / v3-spec chatter
        if source.get("format") == "zarr":
            ds = xr.open_zarr(path, decode_coords="all", chunks=spec)
            var = source.get("var")
            return ds if var is None else ds[str(var)]
        # as open_raster reads it: a file whose bands have different nodata values masked
        out = rioxarray.open_rasterio(path, chunks=spec, masked=reads_masked(path))
    if not isinstance(out, xr.DataArray):
        raise ResumeRecipeError(f"{path} now holds several rasters; it cannot be reopened")
    return out


def _open_stac(call: Mapping[str, Any]) -> xr.DataArray:
    """``open_stac`` called as recorded in ``encoding[STAC_CALL]`` (JSON lists → tuples)."""
    from patchflow.io.stac import open_stac

    def pair(value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value

    snap = call.get("snap_bounds", True)
    return open_stac(
        list(call["items"]),
        assets=list(call["assets"]),
        resolution=pair(call.get("resolution")),
        epsg=call.get("epsg"),
        bounds=pair(call.get("bounds")),
        bounds_latlon=pair(call.get("bounds_latlon")),
        # null: open_stac's default (the assets' own grid); a recipe without the key
        # predates it and had stackstac's snapping to multiples of the resolution
        snap_bounds=None if snap is None else bool(snap),
        resampling=call.get("resampling") or "nearest",
        chunks=pair(call.get("chunks")) or 2048,
        dtype=call.get("dtype"),
        fill_value=call.get("fill_value"),
        rescale=bool(call.get("rescale", True)),
        sortby_date=call.get("sortby_date", "asc"),
        properties=call.get("properties", True),
        band_coords=bool(call.get("band_coords", True)),
    )


def _import_dirs(config: Any) -> dict[str, str]:
    """``{module: directory on the Python path it was imported from}`` for every
    :class:`~patchflow.ops.Imported` step of an operator config, to tell a resume where
    the modules were (a module not imported, or without a file, is left out)."""
    found: dict[str, str] = {}

    def walk(value: Any) -> None:
        if isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            params = value.get("params")
            if value.get("op") == "Imported" and isinstance(params, dict):
                module = str(params.get("target", "")).partition(":")[0]
                file = getattr(sys.modules.get(module), "__file__", None)
                if module and isinstance(file, str):
                    root = Path(file).resolve().parent
                    depth = module.count(".") + (Path(file).name == "__init__.py")
                    for _ in range(depth):
                        root = root.parent
                    found[module] = str(root)
            for item in value.values():
                walk(item)

    walk(config)
    return found


def _shapes(obj: xr.DataArray | xr.Dataset) -> dict[str, Any]:
    if isinstance(obj, xr.DataArray):
        return {"": obj.shape}
    return {str(name): v.shape for name, v in obj.data_vars.items()}


def _recipe(
    obj: Any, job: Mapping[str, Any], params: Mapping[str, Any], var: str
) -> tuple[dict[str, Any] | None, str | None]:
    """What :func:`resume` needs to finish the job alone, or why it cannot be recorded."""
    config = job["op"].get("config")
    if config is None:
        return None, (
            f"its operator ({job['op'].get('callable')}) is not a patchflow.ops operator with "
            "a JSON config (your own function or class has one as "
            "patchflow.ops.Imported('module:name', params={...}); a TorchScript model as "
            "patchflow.ModelOp.from_torchscript(path))"
        )
    try:
        encoded = {k: _encode(v, k) for k, v in params.items()}
    except _Unstorable as exc:
        return None, f"the parameter {exc.name}={_short(repr(exc.value), 60)} is not JSON"
    source = _reopenable(obj)
    if isinstance(source, str):
        return None, source
    what = "the STAC items" if source["format"] == "stac" else source["path"]
    selected = (
        f"opening {what} again does not give the same input (it was selected "
        "or modified after opening, or loaded into memory)"
    )
    try:
        if source["format"] != "stac":
            # shapes first (the recorded chunks only fit the same shape), then everything
            plain = _open_input({**source, "chunks": None})
            if _shapes(plain) != _shapes(obj):
                return None, selected
        # the same paths were just fingerprinted for the job record: no second walk
        recorded = {k: v for k, v in job["input"].items() if k != "files"}
        same = _input_identity(_open_input(source), files=False) == recorded
    except Exception as exc:  # any failure just means: no recipe
        return None, f"opening {what} again failed ({_reason(exc)})"
    if not same:
        return None, selected
    recipe = {"input": source, "op": config, "params": encoded, "var": var}
    imports = _import_dirs(config)
    if imports:
        recipe["imports"] = imports
    return recipe, None


# --------------------------------------------------------------------------- layout


def _out_block(prep: Prepared) -> tuple[int, int]:
    """Output block (= Zarr chunk) shape: input block × scale."""
    sc = prep.spec.sc
    return sc(prep.plan.y.chunks[0]), sc(prep.plan.x.chunks[0])


def _regular(chunks: tuple[int, ...]) -> bool:
    return all(c == chunks[0] for c in chunks[:-1]) and chunks[-1] <= chunks[0]


def _signature(prep: Prepared, var: str) -> dict[str, Any]:
    """The result layout (kept for readers of older stores; the job record is richer)."""
    spec, plan = prep.spec, prep.plan
    win = spec.window
    return {
        "var": var,
        "shape": list(prep.arr.shape[-2:]),
        "block": [plan.y.chunks[0], plan.x.chunks[0]],
        "size": list(spec.size),
        "stride": list(plan.grid.stride_yx),
        "boundary": plan.grid.boundary,
        "agg": spec.agg.name,
        "dtype": str(spec.agg.result_dtype()),
        "lead": list(spec.agg.result_lead()),
        "window": None if win is None else win.name,
    }


# --------------------------------------------------------------------------- store state


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError):
        return None


def _write_json(file: Path, value: Any) -> None:
    """Atomically (temporary file + rename): a kill leaves the old or the new file."""
    tmp = file.with_name(f".patchflow-{file.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2))
    os.replace(tmp, file)


def _zarr_format(store: str) -> int | None:
    """The Zarr format of the group at ``store`` (from its metadata files), or ``None``."""
    root = Path(store)
    if (root / "zarr.json").is_file():
        return 3
    if (root / ".zgroup").is_file() or (root / ".zattrs").is_file():
        return 2
    return None


def _read_meta(store: str) -> dict[str, Any] | None:
    root = Path(store)
    doc = _read_json(root / "zarr.json")
    meta = doc.get("attributes", {}).get(META) if isinstance(doc, dict) else None
    if not isinstance(meta, dict):
        attrs = _read_json(root / ".zattrs")  # a v2 store
        meta = attrs.get(META) if isinstance(attrs, dict) else None
    return dict(meta) if isinstance(meta, dict) else None


def _set_meta(store: str, **updates: Any) -> None:
    """Update ``attrs["patchflow"]`` atomically, keeping the consolidated metadata."""
    root = Path(store)
    if _zarr_format(store) == 2:
        # v2 keeps the group attrs in .zattrs and a copy in the consolidated .zmetadata
        # (what xr.open_zarr reads): both are updated, each atomically
        file = root / ".zattrs"
        attrs = _read_json(file)
        attrs = attrs if isinstance(attrs, dict) else {}  # none yet: xarray wrote no attrs
        attrs[META] = {**(attrs.get(META) or {}), **updates}
        _write_json(file, attrs)
        consolidated = root / ".zmetadata"
        if consolidated.exists():
            doc = json.loads(consolidated.read_text())
            doc.setdefault("metadata", {})[".zattrs"] = attrs
            _write_json(consolidated, doc)
        return
    file = root / "zarr.json"
    doc = json.loads(file.read_text())
    attrs = doc.setdefault("attributes", {})
    meta = dict(attrs.get(META) or {})
    meta.update(updates)
    attrs[META] = meta
    _write_json(file, doc)


def _state(path: str) -> tuple[str, dict[str, Any] | None]:
    """``("absent" | "foreign" | "creating" | "store", meta)``."""
    root = Path(path)
    if not root.is_dir():
        return ("absent" if not root.exists() else "foreign"), None
    if (root / CREATING).exists():
        marker = _read_json(root / CREATING)
        return "creating", marker if isinstance(marker, dict) else {}
    meta = _read_meta(path)
    if meta is not None:
        return "store", meta
    names = [n for n in os.listdir(root) if n != LOCK and not _TEMPORARY.match(n)]
    return ("foreign" if names else "absent"), None


def _ours(path: str, meta: Mapping[str, Any] | None) -> set[str]:
    """Top-level names patchflow wrote in the store directory."""
    names = {*_META_FILES, BOOK, LOCK, CREATING}
    entries = (meta or {}).get("entries")
    if isinstance(entries, list):
        names |= {e for e in entries if _plain_name(e)}
    else:  # a store from before entries were recorded: its Zarr nodes
        nodes = ("zarr.json", ".zarray", ".zgroup")
        names |= {p.name for p in Path(path).iterdir() if any((p / n).is_file() for n in nodes)}
    return names


def _plain_name(name: Any) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name


def _foreign(path: str, meta: Mapping[str, Any] | None) -> list[str]:
    """Files and folders in the store patchflow did not write: top-level names, and
    anything inside patchflow's own entry folders that Zarr or patchflow do not write
    there (overwrite deletes those folders whole)."""
    ours = _ours(path, meta)
    names = os.listdir(path)
    top = [n for n in names if n not in ours and not _TEMPORARY.match(n)]
    inside = [f for n in names if n in ours for f in _foreign_inside(Path(path), n)]
    return sorted(top + inside)


#: the metadata files of a Zarr node (v3, v2)
_NODE_FILES = frozenset({"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"})
#: a chunk file of a Zarr v2 array (``0.1.1``; nested keys are folders of numbers)
_V2_CHUNK = re.compile(r"^\d+(\.\d+)*$")
#: a failed-chip record file (in ``_patchflow/chip_errors``)
_RECORD = re.compile(r"^\d+\.\d+\.json$")


def _foreign_inside(root: Path, entry: str) -> list[str]:
    """What the entry folder ``entry`` of the store holds that Zarr and patchflow do not
    write there, as store-relative paths (a foreign folder is named once, not walked).

    Links are never followed: a link inside is foreign (patchflow writes none).
    """
    top = root / entry
    if top.is_symlink() or not top.is_dir():
        return []
    found: list[str] = []

    def walk(folder: Path, parts: tuple[str, ...]) -> None:
        for item in sorted(os.scandir(folder), key=lambda e: e.name):
            here = (*parts, item.name)
            name = "/".join((entry, *here))
            if item.is_symlink():
                found.append(name)
            elif item.is_dir(follow_symlinks=False):
                if _our_folder(here, Path(item.path)):
                    walk(Path(item.path), here)
                else:
                    found.append(name)
            elif not _our_file(entry, here):
                found.append(name)

    walk(top, ())
    return found


def _our_folder(parts: tuple[str, ...], folder: Path) -> bool:
    """A folder Zarr or patchflow makes inside an entry: a Zarr node (an array or group of
    the bookkeeping), the chunk folders of v3 (``c/0/1``) or nested v2 keys, the
    failed-chip records."""
    name = parts[-1]
    if any((folder / meta).is_file() for meta in _NODE_FILES):
        return True
    if parts == (CHIP_ERRORS,):
        return True
    return name == "c" or name.isdigit()


def _our_file(entry: str, parts: tuple[str, ...]) -> bool:
    """A file Zarr or patchflow writes inside an entry folder: node metadata, a chunk, a
    failed-chip record, or a temporary file of an atomic write a killed run left."""
    name = parts[-1]
    if name in _NODE_FILES or _TEMPORARY.match(name):
        return True
    if entry == BOOK and parts[:-1] == (CHIP_ERRORS,) and _RECORD.match(name):
        return True
    chunk = "c" in parts[:-1] and all(p.isdigit() for p in parts[parts.index("c") + 1 :])
    # v3: ``c/<i>/<j>…`` (a 0-d array's one chunk is the file ``c``); v2: ``0.1.1``
    return chunk or name == "c" or bool(_V2_CHUNK.match(name))


def _foreign_error(path: str, foreign: Sequence[str]) -> ForeignFilesError:
    shown = ", ".join(foreign[:10]) + (
        f" and {len(foreign) - 10} more" if len(foreign) > 10 else ""
    )
    return ForeignFilesError(
        f"{path!r} holds files patchflow did not write ({shown}); "
        f"{_w('overwrite')} deletes only patchflow's own entries and will not remove "
        f"them: move them out of the store, or {_w('another')}"
    )


def _remove_entries(path: str, names: Iterable[str]) -> None:
    """Delete patchflow's entries (the group metadata first: readers stop seeing a store at
    once).

    Raises
    ------
    ForeignFilesError
        An entry folder holds something Zarr and patchflow do not write (checked before
        anything is deleted: such a folder is not deleted whole).
    """
    root = Path(path)
    wanted = {n for n in names if _plain_name(n) and n not in (LOCK, CREATING)}
    wanted |= {n for n in os.listdir(root) if _TEMPORARY.match(n)}
    foreign = [f for n in sorted(wanted) for f in _foreign_inside(root, n)]
    if foreign:
        raise _foreign_error(path, foreign)

    def order(name: str) -> tuple[int, str]:
        return (_META_FILES.index(name) if name in _META_FILES else len(_META_FILES), name)

    for name in sorted(wanted, key=order):
        target = root / name
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
        if name in ("zarr.json", ".zattrs"):
            _checkpoint("replace")


def _book(path: str, name: str) -> np.ndarray | None:
    """A bookkeeping array; unreadable chunks read as 0 (not done / no checksum)."""
    try:
        arr = zarr.open_array(path, path=f"{BOOK}/{name}", mode="r")
    except (OSError, ValueError):  # missing (old store) or damaged metadata
        return None
    try:
        return np.asarray(arr[...])
    except Exception:  # a damaged chunk: keep what can be read
        out = np.zeros(arr.shape, dtype=arr.dtype)
        for index in np.ndindex(*arr.shape):
            with contextlib.suppress(Exception):
                out[index] = arr[index]
        return out


def _done(path: str, meta: Mapping[str, Any] | None = None) -> np.ndarray:
    done = _book(path, "done")
    if done is None:
        ny, nx = (meta or {}).get("blocks", [0, 0])
        return np.zeros((int(ny), int(nx)), np.uint8)
    return done


def _damaged(path: str, meta: Mapping[str, Any], candidates: np.ndarray) -> list[tuple[int, int]]:
    """Blocks among ``candidates`` whose result bytes do not match their checksum, or
    whose failed-chip records (a store that keeps them) do not match the block.

    Reads each candidate block once (in parallel threads): about the cost of reading the
    result. A chunk that cannot be read (missing metadata, garbage bytes) counts as damaged.
    """
    blocks = [(int(i), int(j)) for i, j in np.argwhere(candidates)]
    if not blocks:
        return []
    sums = _book(path, "checksum")
    if sums is None:  # written before checksums existed: nothing to compare against
        return []
    verdicts = _intact(path, _result_var(meta), blocks, sums)
    if meta.get("chip_records"):
        # a block's failed-chip records are part of its result: missing or foreign
        # records (another checksum or count) are damage too
        failed = _book(path, "failed")
        counts = np.zeros(sums.shape, np.int64) if failed is None else failed
        verdicts = [
            good and _read_records(path, (i, j), int(sums[i, j]), int(counts[i, j])) is not None
            for (i, j), good in zip(blocks, verdicts, strict=True)
        ]
    return [block for block, good in zip(blocks, verdicts, strict=True) if not good]


def _intact(path: str, name: str, blocks: list[tuple[int, int]], crcs: np.ndarray) -> list[bool]:
    """Whether each of ``blocks`` of the array ``name`` matches its CRC-32 in ``crcs``.

    Reads each block once (in parallel threads). A block that cannot be read (missing
    metadata, garbage bytes) does not match.
    """
    try:
        arr = zarr.open_array(path, path=name, mode="r")
    except (OSError, ValueError):
        return [False] * len(blocks)

    def intact(block: tuple[int, int]) -> bool:
        try:
            return _verified_block(arr, block, crcs) is not None
        except OSError:  # unreadable counts as damaged here
            return False

    workers = max(1, min(8, os.cpu_count() or 1, len(blocks)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(intact, blocks))


def _verified_block(arr: Any, block: tuple[int, int], crcs: np.ndarray) -> np.ndarray | None:
    """Block ``(i, j)`` of the opened result array ``arr``, all leading dims, as stored;
    ``None`` when it cannot be decoded or does not match its CRC-32 in ``crcs`` (an
    ``OSError``, the store itself unreadable, propagates)."""
    i, j = block
    by, bx = arr.chunks[-2:]
    lead = (slice(None),) * (arr.ndim - 2)
    region = (*lead, slice(i * by, (i + 1) * by), slice(j * bx, (j + 1) * bx))
    try:
        data = np.ascontiguousarray(arr[region])
    except OSError:
        raise
    except Exception:  # garbage bytes: the codec's own error, whatever it is
        return None
    return data if _crc(data) == int(crcs[i, j]) else None


def _sums_damaged(
    path: str, meta: Mapping[str, Any], candidates: np.ndarray, *, suffix: str = ""
) -> list[tuple[int, int]]:
    """Blocks among ``candidates`` whose kept sums (``suffix="_next"``: those of the pass
    under way) do not match their checksums; none in a store without sums checksums (one
    written before they existed: its sums cannot be verified)."""
    blocks = [(int(i), int(j)) for i, j in np.argwhere(candidates)]
    if not blocks or not meta.get("sum_checksums"):
        return []
    bad: set[tuple[int, int]] = set()
    for key in meta.get("sums") or ():
        crcs = _book(path, SUM_CHECKSUM.format(key) + suffix)
        if crcs is None or crcs.shape != candidates.shape:  # its checksums are gone
            bad.update(blocks)
            continue
        verdicts = _intact(path, f"{BOOK}/{key}{suffix}", blocks, crcs)
        bad.update(b for b, good in zip(blocks, verdicts, strict=True) if not good)
    return sorted(bad)


def _create_sum_checksums(book: Any, sums: Iterable[str], blocks: tuple[int, int]) -> None:
    """The per-block checksum array of each kept sums array (``*_next``: of a new pass)."""
    for key in sums:
        base, suffix = key.removesuffix("_next"), "_next" if key.endswith("_next") else ""
        book.create_array(
            SUM_CHECKSUM.format(base) + suffix,
            shape=blocks,
            chunks=(1, 1),
            dtype="uint32",
            fill_value=0,
            overwrite=True,
        )


# --------------------------------------------------------------------------- paths and lock


def check_output_path(output: str | os.PathLike[str], inputs: Iterable[Any]) -> None:
    """Refuse an output path that is, contains, or lies inside one of ``inputs``.

    Paths are compared after resolving symbolic links; remote URLs are skipped.

    Raises
    ------
    OutputOverlapsInputError
        Naming the input and how they overlap.
    """
    out_text = os.fspath(output)
    out = Path(_real(out_text))
    for source in inputs:
        text = os.fspath(source)
        if is_remote(text):
            continue
        real = Path(_real(text))
        if out == real:
            how = "is"
        elif out.is_relative_to(real):
            how = "lies inside"
        elif real.is_relative_to(out):
            how = "contains"
        else:
            continue
        linked = any(_real(p) != os.path.abspath(p) for p in (out_text, text))
        links = " (after resolving links)" if linked else ""
        raise OutputOverlapsInputError(
            f"{_w('store')} {out_text!r} {how} {_w('input')} {text!r}{links}: writing there "
            f"(let alone replacing it) would destroy the input before it is read; "
            f"{_w('another')} outside the input"
        )


def _check_store_path(path: str) -> None:
    root = Path(path)
    if root.is_symlink():
        raise StorePathError(
            f"the store path {path!r} is a symbolic link (to {os.readlink(root)!r}); patchflow "
            f"does not write or delete through links: give the real path "
            f"{os.path.realpath(path)!r}, or {_w('another')}"
        )
    if root.exists() and not root.is_dir():
        raise StorePathError(
            f"the store path {path!r} is a file, not a directory (a Zarr store is a "
            f"directory); {_w('another')}, or remove the file"
        )


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """Hold the store's lock file for the run (``flock``: released when the process dies)."""
    root = Path(path)
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root / LOCK, os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreError(
            f"cannot create {_w('store')} {path!r}: {_reason(exc)}; {_fix(exc)}"
        ) from exc
    try:
        if sys.platform != "win32" and not _flock(fd):
            raise StoreLockedError(
                f"{path!r} is being written by another run (this or another process "
                f"holds its lock {LOCK}); wait for that run to finish, or stop it (its "
                f"lock goes with it) and then finish the job with {_w('finish')}"
            )
        yield
    finally:
        os.close(fd)  # releases the lock


def _flock(fd: int, patience: float = 0.5) -> bool:
    """Take the exclusive lock; a brief holder (``check_store`` probing) gets ``patience``."""
    deadline = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)


def _is_locked(path: str) -> bool:
    if sys.platform == "win32":
        return False
    try:
        fd = os.open(Path(path) / LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


# --------------------------------------------------------------------------- creation


def _storable(ds: xr.Dataset) -> xr.Dataset:
    """Drop what Zarr cannot hold: object-dtype non-index coords (stackstac's ``proj:*``
    metadata), attrs that are not JSON values (stackstac's ``spec``) and the input's
    storage encodings the coordinates carry (a Zarr v3 input's ``serializer`` has no
    meaning in a v2 store; the result's own encoding is given when writing)."""
    drop = [
        name for name, coord in ds.coords.items() if coord.dtype.kind == "O" and name not in ds.dims
    ]
    ds = ds.drop_vars(drop).drop_encoding()
    ds.attrs = {k: v for k, v in ds.attrs.items() if _jsonable(v)}
    for variable in ds.variables.values():
        variable.attrs = {k: v for k, v in variable.attrs.items() if _jsonable(v)}
    return ds


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as JSON values; anything else is not JSON."""
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value, default=_plain)
    except (TypeError, ValueError):
        return False
    return True


def _create(
    prep: Prepared,
    store: str,
    var: str,
    sums: tuple[str, ...],
    compressors: Any,
    record: dict[str, Any],
    old_entries: Iterable[str] = (),
    *,
    zarr_format: int = DEFAULT_ZARR_FORMAT,
) -> None:
    """Create the store (replacing patchflow's old entries), marked as ours from the start."""
    template = prep.result()
    block = _out_block(prep)
    ds = _storable(template.to_dataset(name=var))
    if "spatial_ref" in ds.coords:
        # CF grid mapping, so plain xr.open_zarr + rioxarray finds the CRS
        ds[var].attrs["grid_mapping"] = "spatial_ref"
        ds[var].encoding["coordinates"] = "spatial_ref"
    entries = sorted({*_GROUP_FILES[zarr_format], BOOK, *(str(n) for n in ds.variables)})
    old = sorted(set(old_entries))
    # the marker first: until it is removed, whatever is here is a half-made patchflow store
    marker = {**record, "zarr_format": zarr_format, "entries": sorted({*entries, *old})}
    _write_json(Path(store) / CREATING, marker)
    _remove_entries(store, old)
    _checkpoint("create")
    encoding: dict[str, dict[str, Any]] = {
        var: {
            "chunks": (*template.shape[:-2], *block),
            "compressors": compressors or default_compressors(template.dtype, zarr_format),
        }
    }
    if template.dtype.kind == "f" and is_value(prep.spec.agg.encoded):
        # the blocks hold it where invalid (BlockSink); GDAL reads it as the nodata
        encoding[var]["_FillValue"] = template.dtype.type(prep.spec.agg.encoded)
    # metadata and coordinates only: the data variable is written block by block; mode "a"
    # keeps the lock file and the marker (mode "w" would delete the whole directory)
    agg = prep.spec.agg
    ny, nx = prep.plan.n_blocks
    with _quiet():
        ds.to_zarr(
            store,
            mode="a",
            compute=False,
            zarr_format=zarr_format,
            encoding=encoding,
            consolidated=False,
        )
        group = zarr.open_group(store, mode="r+", use_consolidated=False)
        book = group.require_group(BOOK)
        for name, dtype in (("done", "uint8"), ("failed", "int32"), ("valid", "int64")):
            book.create_array(name, shape=(ny, nx), chunks=(1, 1), dtype=dtype, fill_value=0)
        book.create_array("checksum", shape=(ny, nx), chunks=(1, 1), dtype="uint32", fill_value=0)
        for key in sums:
            _create_sum(book, key, agg, template.shape, block, compressors, zarr_format)
        _create_sum_checksums(book, sums, (ny, nx))
    crs = template.rio.crs
    transform = template.rio.transform()
    _set_meta(
        store,
        **record,
        status="incomplete",
        blocks=[ny, nx],
        sums=list(sums),
        passes=0,
        zarr_format=zarr_format,
        crs=None if crs is None else crs.to_wkt(),
        transform=list(transform)[:6],
        entries=entries,
        # failed chips are recorded per block (``_patchflow/chip_errors``), and verified
        chip_records=1,
        # kept sums have a checksum per block (``_patchflow/<sum>_checksum``)
        sum_checksums=1 if sums else None,
    )
    os.unlink(Path(store) / CREATING)


def _create_sum(
    book: Any,
    key: str,
    agg: Aggregator,
    shape: tuple[int, ...],
    block: tuple[int, int],
    compressors: Any,
    zarr_format: int,
) -> None:
    sshape, dtype = agg.sum_shape(key.removesuffix("_next"), block)
    full = (*sshape[:-2], *shape[-2:])
    book.create_array(
        key,
        shape=full,
        chunks=(*sshape[:-2], *block),
        dtype=dtype,
        fill_value=0,
        compressors=compressors or default_compressors(dtype, zarr_format),
        overwrite=True,
    )


# --------------------------------------------------------------------------- run


def run(
    obj: xr.DataArray | xr.Dataset,
    op: Callable[..., Any],
    *,
    store: str | os.PathLike[str],
    mode: RunMode = "w",
    resume: bool = False,
    overwrite: bool = False,
    keep_sums: bool = False,
    var: str | None = None,
    compressors: Any = None,
    zarr_format: ZarrFormat | None = None,
    creation_options: Mapping[str, str | int | float] | None = None,
    scheduler: Any = None,
    progress: bool | IO[str] = False,
    size: SizeSpec = DEFAULT_SIZE,
    stride: SizeSpec = 192,
    window: WindowSpec = "hann",
    window_params: Mapping[str, Any] | None = None,
    boundary: Boundary = "shift",
    pad_mode: PadMode = "constant",
    agg: Agg = "overlap_add",
    n_classes: int | None = None,
    batched: bool | None = None,
    batch_size: int | None = None,
    chunks: Any = None,
    output_dtype: Any = None,
    output_shape: Sequence[int] | None = None,
    output_bands: int | None = None,
    output_dims: Sequence[Hashable] | None = None,
    nodata: Any = None,
    input_nodata: Any = None,
    fill_value: Any = None,
    pass_mask: bool = False,
    allow_gaps: bool = False,
    scale: float | None = None,
    over: Hashable | Sequence[Hashable] | None = None,
    on_error: OnError = "raise",
    retries: int = 3,
    retry_on: Sequence[type[BaseException]] = (OSError,),
    name: Hashable | None = None,
    **unknown: Any,
) -> RunReport:
    """Stream ``apply(obj, op, ...)`` into a Zarr store (or a COG), block by block.

    Parameters
    ----------
    obj, op
        As for :func:`patchflow.apply`.
    size, stride, window, window_params, boundary, pad_mode, agg, n_classes, batched, \
batch_size, chunks, output_dtype, output_shape, output_bands, output_dims, nodata, \
input_nodata, fill_value, pass_mask, allow_gaps, scale, over, retries, retry_on, name
        As for :func:`patchflow.apply` (``chunks=`` sets the block = Zarr chunk size).
    on_error
        What a chip whose operator call raises does. ``"raise"`` (default): the run stops
        with an :class:`~patchflow.errors.OperatorError` naming the chip (the blocks
        already written stay; finish with ``resume=True``). ``"skip"``: every result pixel
        the chip covers is nodata (NaN for floats), even where other chips cover it, so no
        pixel silently gets a different blend; an integer result without a nodata value
        gets one. ``"mask"``: the chip gets zero weight, so the other chips covering its
        pixels fill them (a blend of fewer chips there: approximate next to the failed
        chip), and pixels no other chip reaches are nodata. ``"retry"``: call it again up
        to ``retries`` times on a ``retry_on`` exception, then as ``"raise"``. With
        ``"skip"`` and ``"mask"`` each failed chip is recorded in the store
        (``_patchflow/chip_errors``: index, bounds in scene pixels and in the CRS,
        exception type, message and traceback), read back as ``RunReport.chip_errors``
        and ``check_store(store).chip_errors`` (``patchflow inspect STORE``), and the run
        ends with a :class:`~patchflow.errors.ChipFailedWarning` giving their count;
        failed chips are not damage (the store is complete). ``"skip"`` cannot be
        combined with ``keep_sums``/``mode="accumulate"`` (a later pass would blend the
        skipped pixels again).
    store
        Directory of the Zarr store. It may not be, contain or lie inside an input file or
        store, nor be a symbolic link. A path ending in ``.tif``/``.tiff`` writes a
        Cloud-Optimized GeoTIFF instead (see ``creation_options``): the blocks stream into
        a staging Zarr store next to it, which GDAL's COG driver then copies (memory
        stays bounded); a COG is written in one go, so ``mode``, ``resume``,
        ``keep_sums``, ``compressors`` and ``zarr_format`` do not apply to it.
    mode
        ``"w"``: write a new result. ``"accumulate"``: add this pass's numerator and
        denominator to those already in the store (same input and grid; the operator and
        window may differ, e.g. a second model or a test-time augmentation) and
        re-normalise; creates the store if missing.
    resume
        Finish an interrupted run: only blocks without a done marker are computed, after
        re-reading the blocks already done and recomputing any whose checksum fails (so
        this also repairs a store with deleted or damaged chunks). The job (operator,
        input, every parameter) must be the one recorded in the store. Without the
        original objects at hand, use :func:`resume`.
    overwrite
        Replace an existing store (otherwise an existing store is an error). Only the
        entries patchflow wrote are deleted; a store directory holding other files, also
        inside patchflow's own folders (``<var>/``, ``_patchflow/``), is refused
        (:class:`ForeignFilesError`, naming them; links are never followed).
    keep_sums
        Also store numerator/denominator so later ``mode="accumulate"`` passes can add.
    var
        Name of the result variable (default: the result's name, else ``"result"``).
    compressors
        Compressors for the result (default: Zstd level 1): ``zarr.codecs`` for Zarr v3,
        numcodecs codecs (or their JSON dicts) for v2.
    zarr_format
        ``3`` or ``2``. Default: 3 for a new store; resuming or accumulating keeps the
        store's own format (giving another one is a :class:`ResumeMismatchError`). Choose
        2 for GIS software: GDAL (3.10, as bundled with rasterio) opens a v2 store as a
        georeferenced raster, ``rasterio.open('ZARR:"out.zarr":/<var>')`` with CRS,
        transform, nodata and the values, but cannot decode patchflow's v3 store
        ("Unsupported codec: bytes").
    creation_options
        GDAL COG driver options for a ``.tif`` store, e.g. ``{"COMPRESS": "ZSTD",
        "LEVEL": 9, "PREDICTOR": 3, "BLOCKSIZE": 512}``; keys are case-insensitive and
        override the defaults (``COMPRESS=DEFLATE``, ``BLOCKSIZE=256``,
        ``BIGTIFF=IF_SAFER``). Checked before the job runs: an unknown key, a bad value, an
        option that does not fit the result (``PREDICTOR=3`` on integers, ``JPEG`` on
        floats) or one that would change the grid (``TARGET_SRS``) is a
        :class:`~patchflow.errors.CreationOptionError` listing the valid ones (see
        :data:`patchflow.io.cog.COG_OPTIONS`).
    scheduler
        Passed to ``dask.compute`` (default: the active scheduler or distributed client).
    progress
        Show one progress bar for the whole job (blocks written, then for a COG the
        conversion), under any scheduler, local or distributed: ``True`` draws it on
        stdout, redrawn in place (in a Jupyter notebook: one output, updated in place); a
        text stream (e.g. ``sys.stderr``) draws it there.
    **unknown
        Not options: a catch-all so that keywords ``run`` does not take raise
        :class:`ParameterError` with the fix instead of Python's ``TypeError`` (other
        libraries' names get patchflow's equivalent, typos the closest valid name).

    Returns
    -------
    RunReport
        Blocks computed/skipped/repaired and wall time, failed chips and their records
        (``failed_chips``, ``chip_errors``); ``.open()`` gives the result.

    Raises
    ------
    ParameterError
        An unknown keyword, an option with a value patchflow cannot use, or a Zarr-only
        option for a ``.tif`` store (or ``creation_options`` for a Zarr store).
    CreationOptionError
        ``creation_options`` that GDAL's COG driver would refuse or silently ignore.
    StoreExistsError, ForeignFilesError
        The store exists (pass ``overwrite``/``resume``), or is not patchflow's to delete.
    ResumeMismatchError
        ``resume``/``accumulate`` with another job than the store's (each field named).
    StoreLockedError
        Another run is writing the store.
    OutputOverlapsInputError, StorePathError
        The store path is (inside) an input, a file or a symbolic link.
    StoreError, StoreWriteError
        The store cannot be created or written (permissions, disk full, file too large);
        it is left incomplete, never marked complete.

    Examples
    --------
    >>> import tempfile, patchflow
    >>> from patchflow.io.synthetic import make_scene
    >>> from patchflow.demo import dn_ndvi
    >>> path = tempfile.mkdtemp() + "/ndvi.zarr"
    >>> report = run(make_scene((600, 500), chunks=300), dn_ndvi, store=path)
    >>> report.blocks, report.computed, report.open().shape
    (4, 4, (1, 600, 500))
    >>> cog = run(make_scene((600, 500), chunks=300), dn_ndvi, store=path[:-5] + ".tif",
    ...           creation_options={"compress": "zstd", "predictor": 3})
    >>> cog.open().rio.crs.to_epsg()
    32610
    """
    # prepare's keywords this call sets (unknown ones fail in _regular_prepare)
    params = {**given_keywords(run, locals(), prepare), **unknown}
    if mode not in MODES:
        raise ParameterError(f"unknown mode {mode!r}; valid: {', '.join(map(repr, MODES))}")
    if zarr_format is not None and zarr_format not in ZARR_FORMATS:
        raise ParameterError(
            f"{_w('zarr_format', value=repr(zarr_format))} is not a Zarr format patchflow "
            "writes; valid: 3 (the default) or 2 (readable by GDAL and GIS software)"
        )
    if var is not None:
        check_var_name(var)
    check_band_nodata(obj, input_nodata)
    path = os.fspath(store)
    cog = is_cog_path(path)
    if cog:
        _check_cog_call(
            path,
            mode=mode,
            resume=resume,
            keep_sums=keep_sums,
            compressors=compressors,
            zarr_format=zarr_format,
        )
    elif creation_options is not None:
        raise ParameterError(
            f"creation_options= are GDAL options of a Cloud-Optimized GeoTIFF, but the store "
            f"{path!r} is a Zarr store: give a .tif/.tiff store path for a COG, or set the "
            "Zarr store's compression with compressors= instead"
        )
    # before anything else looks at (let alone deletes) the path
    check_output_path(path, [root for root, _ in _sources(obj)])
    if cog:
        check_cog_path(path, overwrite=overwrite)
        # before the job runs: a bad option must not cost the whole computation
        options = cog_options(creation_options)
    else:
        _check_store_path(path)

    prep = _regular_prepare(obj, op, params)
    if not cog and (resume or mode == "accumulate") and params.get("chunks") is None:
        prep = _recorded_blocks(obj, op, prep, params, path)
    if var is None:
        var = str(prep.name) if prep.name is not None else "result"
        check_var_name(var, named=True)
    if cog:  # and against the result's dtype and bands, known now
        result = prep.spec.agg
        options = cog_options(
            creation_options,
            dtype=result.result_dtype(),
            lead=result.result_lead(),
            categorical=result.discrete(),
        )
    bar = _bar(progress, ("blocks", "COG") if cog else ("blocks",))
    try:
        if cog:
            report = _run_cog(
                obj,
                op,
                prep,
                params,
                path,
                var=var,
                options=options,
                overwrite=overwrite,
                scheduler=scheduler,
                bar=bar,
            )
        else:
            report = _run_store(
                obj,
                op,
                prep,
                params,
                path,
                var=var,
                mode=mode,
                resume=resume,
                overwrite=overwrite,
                keep_sums=keep_sums,
                compressors=compressors,
                zarr_format=zarr_format,
                scheduler=scheduler,
                bar=bar,
            )
    except BaseException:
        if bar is not None:
            bar.close(done=False)
        raise
    if bar is not None:
        bar.close(done=True)
    line = chips_failed_message(report)
    if line is not None:
        warnings.warn(line, ChipFailedWarning, stacklevel=2)
    return report


def check_var_name(var: Any, *, named: bool = False) -> None:
    """Refuse a result name that is not one plain folder of the store (before anything is
    written): a ``/`` or ``\\`` would make a nested Zarr path the store cannot be opened
    or replaced by, ``.``/``..`` leave the store, and ``_patchflow``/``.`` names are
    patchflow's bookkeeping and hidden files."""
    rule = (
        "a result variable name must be one plain name: no '/' or '\\', not '.' or '..', "
        "and not starting with '_patchflow' or '.'"
    )
    good = (
        isinstance(var, str)
        and var not in ("", ".", "..")
        and not any(c in var for c in "/\\")
        and not var.startswith((BOOK, "."))
    )
    if good:
        return
    if named:
        raise ParameterError(
            f"the result would be stored as {var!r}, the name of the input (or of "
            f"{_w('name')}), but {rule}; give the stored variable a plain name, e.g. "
            f"{_w('result_var', value=repr('result'))}"
        )
    raise ParameterError(f"var={var!r}: {rule}; e.g. var='result'")


def _run_store(
    obj: Any,
    op: Any,
    prep: Prepared,
    params: dict[str, Any],
    path: str,
    *,
    var: str,
    mode: str,
    resume: bool,
    overwrite: bool,
    keep_sums: bool,
    compressors: Any,
    zarr_format: int | None,
    scheduler: Any,
    bar: _Progress | None,
    recipe: bool = True,
) -> RunReport:
    """The Zarr job of :func:`run`, once prepared: record, lock, create or check, compute."""
    aggregator = prep.spec.agg
    want_sums = keep_sums or mode == "accumulate"
    if want_sums and not aggregator.sum_keys:
        raise ParameterError(
            f"agg={aggregator.name!r} cannot accumulate across passes; use one of "
            f"{', '.join(n for n, a in AGGREGATIONS.items() if a.sum_keys)}, or keep_sums=False"
        )
    if want_sums and prep.spec.on_error == "skip":
        raise ParameterError(
            "on_error='skip' cannot be combined with keep_sums=True or mode='accumulate': "
            "the stored sums leave the skipped chips out, so a later pass would blend "
            "their pixels again instead of keeping them nodata; use on_error='mask' (zero "
            "weight) or 'raise'"
        )
    job = _job_record(obj, op, prep, params, var)
    state, meta = _state(path)
    _refuse(path, state, meta, mode=mode, resume=resume, overwrite=overwrite)
    fmt = _format_for(path, state, meta, zarr_format, mode=mode, resume=resume, overwrite=overwrite)
    _check_compressors(compressors, fmt)
    if recipe:
        how, missing_recipe = _recipe(obj, job, params, var)
    else:
        how, missing_recipe = None, "it is a staging store, deleted once the COG is written"
    record = {
        "record": RECORD,
        "signature": _signature(prep, var),
        "job": job,
        "recipe": how,
        "recipe_missing": missing_recipe,
    }
    with _locked(path):
        # the store may have changed while we were not holding the lock
        state, meta = _state(path)
        _refuse(path, state, meta, mode=mode, resume=resume, overwrite=overwrite)
        fmt = _format_for(
            path, state, meta, zarr_format, mode=mode, resume=resume, overwrite=overwrite
        )
        return _run_locked(
            prep,
            path,
            state,
            meta,
            record,
            var=var,
            mode=mode,
            resume=resume,
            overwrite=overwrite,
            sums=tuple(aggregator.sum_keys) if want_sums else (),
            compressors=compressors,
            zarr_format=fmt,
            scheduler=scheduler,
            bar=bar,
        )


def _format_for(
    path: str,
    state: str,
    meta: Mapping[str, Any] | None,
    wanted: int | None,
    *,
    mode: str,
    resume: bool,
    overwrite: bool,
) -> int:
    """The Zarr format to write: ``wanted`` (default 3) for a new store, else the store's."""
    if state == "absent" or (overwrite and not resume):
        return wanted or DEFAULT_ZARR_FORMAT
    # a half-created store's marker records its job's format; a store has its files
    found = (meta or {}).get("zarr_format") if state == "creating" else _zarr_format(path)
    existing = found if found in ZARR_FORMATS else DEFAULT_ZARR_FORMAT
    if wanted is not None and wanted != existing:
        doing = "adding a pass to it" if mode == "accumulate" and not resume else "resuming it"
        raise ResumeMismatchError(
            f"{path!r} is a Zarr v{existing} store, and {doing} keeps its format: leave out "
            f"{_w('zarr_format', value=wanted)} (or give {existing}), or pass "
            f"{_w('overwrite')} to rewrite it as v{wanted} (or {_w('another')})",
            (("zarr_format", existing, wanted),),
        )
    return int(existing)


def _check_cog_call(
    path: str,
    *,
    mode: str,
    resume: bool,
    keep_sums: bool,
    compressors: Any,
    zarr_format: int | None,
) -> None:
    """Refuse the Zarr-only options for a COG (written in one go, by GDAL)."""
    given = {
        "mode": mode != "w",
        "resume": resume,
        "keep_sums": keep_sums,
        "compressors": compressors is not None,
        "zarr_format": zarr_format is not None,
    }
    bad = [name for name, set_ in given.items() if set_]
    if bad:
        names = ", ".join(f"{n}=" for n in bad)
        raise ParameterError(
            f"{names} only apply to a Zarr store, but {path!r} is a Cloud-Optimized GeoTIFF, "
            "written in one go (it cannot be resumed or added to): drop them, or give a "
            ".zarr store path (a COG's compression is set with creation_options=)"
        )


def _run_cog(
    obj: Any,
    op: Any,
    prep: Prepared,
    params: dict[str, Any],
    path: str,
    *,
    var: str,
    options: Mapping[str, str],
    overwrite: bool,
    scheduler: Any,
    bar: _Progress | None,
) -> RunReport:
    """The blocks into a staging Zarr v2 store next to ``path``, then GDAL's COG driver
    copies it (reading the store through GDAL's Zarr driver: no intermediate GeoTIFF)."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as exc:
        raise StoreError(
            f"cannot write {_w('store')} {path!r}: {_reason(exc)}; {_fix(exc)}"
        ) from exc
    try:
        report = _run_store(
            obj,
            op,
            prep,
            params,
            str(staging / "result.zarr"),
            var=var,
            mode="w",
            resume=False,
            overwrite=False,
            keep_sums=False,
            compressors=None,
            zarr_format=2,
            scheduler=scheduler,
            bar=bar,
            recipe=False,
        )
        if bar is not None:
            bar.begin("COG")
        t0 = time.perf_counter()
        staged = staging / "cog.tif"
        try:
            result = report.open()
            descriptions, tags = raster_metadata(result)
            zarr_to_cog(
                staging / "result.zarr",
                var,
                staged,
                options,
                descriptions=descriptions,
                tags=tags,
                transform=transform_of(result),
            )
            if target.exists() and not overwrite:  # created while the job ran
                raise StoreExistsError(
                    f"{path!r} was created while the job ran; pass {_w('overwrite')} to "
                    f"replace it, or {_w('another')}"
                )
            os.replace(staged, target)
        except PatchflowError:
            raise
        except OSError as exc:
            raise StoreError(
                f"cannot write {_w('store')} {path!r}: {_reason(exc)}; {_fix(exc)}"
            ) from exc
        seconds = report.seconds + time.perf_counter() - t0
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dataclasses.replace(report, store=path, seconds=seconds, kind="cog")


def _refuse(
    path: str,
    state: str,
    meta: Mapping[str, Any] | None,
    *,
    mode: str,
    resume: bool,
    overwrite: bool,
) -> None:
    if state == "foreign":
        # never delete a directory patchflow did not write, even with overwrite=True
        raise StoreExistsError(
            f"{path!r} exists and is not a patchflow store; choose another path or remove it"
        )
    if state == "absent" and resume:
        raise IncompleteStoreError(f"nothing to resume: {path!r} is not a patchflow store")
    if state == "creating" and not (resume or overwrite):
        raise StoreExistsError(
            f"{path!r} is a patchflow store whose creation was interrupted; pass "
            f"{_w('overwrite')} or {_w('resume')} to create it again"
        )
    if state == "store" and not (overwrite or resume or mode == "accumulate"):
        raise StoreExistsError(
            f"the output store {path!r} already exists; pass {_w('overwrite')} to replace it, "
            f"{_w('resume')} to finish an interrupted run, or mode='accumulate' to add a pass"
        )
    if state in ("store", "creating") and overwrite and not resume:
        foreign = _foreign(path, meta)
        if foreign:
            raise _foreign_error(path, foreign)


def _run_locked(
    prep: Prepared,
    path: str,
    state: str,
    meta: dict[str, Any] | None,
    record: dict[str, Any],
    *,
    var: str,
    mode: str,
    resume: bool,
    overwrite: bool,
    sums: tuple[str, ...],
    compressors: Any,
    zarr_format: int,
    scheduler: Any,
    bar: _Progress | None,
) -> RunReport:
    job = record["job"]
    agg = prep.spec.agg
    accumulate = mode == "accumulate" and state == "store"
    if state == "creating" and resume and isinstance((meta or {}).get("job"), dict):
        _check_job(path, meta or {}, job, accumulate=False)
    if state == "absent" or state == "creating" or (overwrite and not resume):
        old = _ours(path, meta) if state != "absent" else set()
        try:
            _create(prep, path, var, sums, compressors, record, old, zarr_format=zarr_format)
        except PatchflowError:
            raise
        except OSError as exc:  # permission denied, read-only, disk full, file too large
            raise StoreError(
                f"cannot create {_w('store')} {path!r}: {_reason(exc)}; {_fix(exc)}, then "
                f"run again with {_w('overwrite')}"
            ) from exc
        meta = _read_meta(path)
        assert meta is not None
        accumulate = False
    else:
        assert meta is not None
        status = meta.get("status")
        # a pass already under way must be finished by the same job
        _check_job(path, meta, job, accumulate=accumulate and status != "accumulating")
        sums = tuple(meta.get("sums", ()))
        if accumulate and not sums:
            raise StoreMismatchError(
                f"{path!r} was written without keep_sums=True, so there is nothing to add to; "
                "rerun its first pass with keep_sums=True"
            )
        if accumulate and status == "incomplete":
            raise IncompleteStoreError(_missing_message(path, meta))
        if accumulate or status == "accumulating":
            accumulate = True
            if not meta.get("promoting"):
                # before the pass declares itself (a refused pass leaves a complete store
                # as it was): the earlier passes' sums it will add to must be intact
                _refuse_damaged_sums(path, meta)
            with _writing(path, "the next pass's bookkeeping"):
                meta = _start_pass(prep, path, meta, record, var, sums, compressors, zarr_format)

    repaired = 0
    # once a pass's sums are being promoted its blocks are all done and must not be
    # recomputed (the base sums may already include the pass): only the renames remain
    if resume and state == "store" and not meta.get("promoting"):
        repaired = _repair(path, meta)
        meta = _read_meta(path) or meta

    ny, nx = prep.plan.n_blocks
    todo = np.argwhere(_done(path, meta) == 0)
    sink = BlockSink(
        store=path,
        var=var,
        nlead=len(agg.result_lead()),
        block=_out_block(prep),
        sums=sums,
        accumulate=accumulate,
        cli=_CLI.get(),
        sum_checksums=bool(meta.get("sum_checksums")),
        passes=int(meta.get("passes", 0)),
    )
    markers = build_graph(prep.data, prep.spec, prep.plan, sink=sink)
    graph = markers.__dask_graph__()
    lead0 = (0,) * len(agg.result_lead())
    keys = [(markers.name, *lead0, int(i), int(j)) for i, j in todo]
    t0 = time.perf_counter()
    if keys:
        _compute([Delayed(k, graph, layer=markers.name) for k in keys], scheduler, bar)
    seconds = time.perf_counter() - t0

    if not keys and not accumulate and meta.get("status") == "complete":
        # resuming a finished, intact store: nothing to write (it may be read-only)
        failed = int(meta.get("failed_chips", 0))
        return RunReport(
            path,
            var,
            ny * nx,
            0,
            ny * nx,
            seconds,
            mode,
            failed_chips=failed,
            chip_errors=_chip_errors(path, meta),
        )
    missing = int((_done(path, meta) == 0).sum())
    if missing:
        raise IncompleteStoreError(
            f"{missing} of {ny * nx} blocks of {path!r} were not written; "
            f"run again with {_w('resume')}"
        )
    with _writing(path, "the final metadata"):
        if accumulate:
            _set_meta(path, promoting=True)
            # each sums array with its checksums (until both are swapped in, ``promoting``
            # tells readers the two may not match)
            crcs = [SUM_CHECKSUM.format(key) for key in sums] if meta.get("sum_checksums") else []
            _promote_sums(path, (*sums, *crcs))
        failed = int(np.asarray(_book(path, "failed")).sum())
        valid = int(np.asarray(_book(path, "valid")).sum())
        if valid == 0:
            warnings.warn(
                f"{path!r}: no valid output pixel — the input is all NaN/nodata, or the "
                "operator returned NaN/inf (or failed) everywhere; check the input's nodata "
                "and the op",
                PatchflowWarning,
                stacklevel=3,
            )
        _checkpoint("finalise")
        with _quiet():
            zarr.consolidate_metadata(path)
        passes = int(meta.get("passes", 0))
        passes = passes + 1 if accumulate or passes == 0 else passes
        _set_meta(
            path,
            status="complete",
            passes=passes,
            failed_chips=failed,
            pass_ready=None,
            promoting=None,
        )
    return RunReport(
        path,
        var,
        ny * nx,
        len(keys),
        ny * nx - len(keys),
        seconds,
        mode,
        failed_chips=failed,
        repaired=repaired,
        chip_errors=_chip_errors(path, meta),
    )


def _start_pass(
    prep: Prepared,
    path: str,
    meta: dict[str, Any],
    record: Mapping[str, Any],
    var: str,
    sums: tuple[str, ...],
    compressors: Any,
    zarr_format: int,
) -> dict[str, Any]:
    """Declare a new accumulate pass (its job first), then make its arrays (idempotent)."""
    if meta.get("status") == "complete":
        history = [*meta.get("history", []), (meta.get("job") or {}).get("op")]
        _set_meta(
            path,
            status="accumulating",
            pass_ready=False,
            history=history,
            job=record["job"],
            recipe=record["recipe"],
            recipe_missing=record["recipe_missing"],
        )
        _checkpoint("accumulate")
        meta = _read_meta(path) or meta
    if not meta.get("pass_ready"):
        with _quiet():
            book = zarr.open_group(path, mode="r+", use_consolidated=False)[BOOK]
        shape = zarr.open_array(path, path=var, mode="r").shape
        block = _out_block(prep)
        for key in sums:
            _create_sum(book, f"{key}_next", prep.spec.agg, shape, block, compressors, zarr_format)
        if meta.get("sum_checksums"):
            _create_sum_checksums(book, [f"{key}_next" for key in sums], prep.plan.n_blocks)
        zarr.open_array(path, path=f"{BOOK}/done", mode="r+")[...] = 0
        zarr.open_array(path, path=f"{BOOK}/failed", mode="r+")[...] = 0
        # the records of the previous pass go with its counts
        shutil.rmtree(Path(path) / BOOK / CHIP_ERRORS, ignore_errors=True)
        _set_meta(path, pass_ready=True)
        meta = _read_meta(path) or meta
    return meta


def _refuse_damaged_sums(path: str, meta: Mapping[str, Any]) -> None:
    """Refuse an accumulate pass (new or resumed) whose earlier passes' sums are damaged
    where it still has to add to them."""
    done = _done(path, meta)
    if meta.get("status") == "accumulating" and meta.get("pass_ready"):
        todo = done == 0  # the blocks this pass has done no longer read them
    else:
        todo = np.ones(done.shape, bool)
    bad = _sums_damaged(path, meta, todo)
    if bad:
        # one complete pass: resume recomputes its sums before the pass is added
        alone = meta.get("status") == "complete" and int(meta.get("passes", 0)) <= 1
        passes = int(meta.get("passes", 0))
        raise CorruptStoreError(_sums_damage_message(path, bad, passes, recomputable=alone))


def _repair(path: str, meta: Mapping[str, Any]) -> int:
    """Re-read the done blocks; clear the done marker of every block failing its checksum
    (its result, or the kept sums it wrote)."""
    done = _done(path, meta)
    status = meta.get("status")
    suffix = "_next" if status == "accumulating" else ""
    bad = sorted(
        {*_damaged(path, meta, done == 1), *_sums_damaged(path, meta, done == 1, suffix=suffix)}
    )
    unmarked = [(int(i), int(j)) for i, j in np.argwhere(done == 0)] if status == "complete" else []
    if not bad and not unmarked:
        return 0
    if status == "complete" and int(meta.get("passes", 0)) > 1:
        raise CorruptStoreError(
            f"blocks {_blocks_text(sorted(bad + unmarked))} of {path!r} are damaged (their "
            "result or their kept sums), and the store holds the sum "
            f"of {meta.get('passes')} passes (mode='accumulate'), which one operator cannot "
            f"recompute; rebuild it with {_w('overwrite')} and the same passes"
        )
    with _writing(path, "the repair markers"):
        if status == "complete":
            _set_meta(path, status="incomplete")
        marks = zarr.open_array(path, path=f"{BOOK}/done", mode="r+")
        for index in bad:
            marks[index] = 0
    return len(bad)


def _compute(tasks: list[Delayed], scheduler: Any, bar: _Progress | None) -> None:
    """Compute the block tasks in one go (one ``dask.compute``, or one set of futures on a
    distributed client), feeding ``bar``."""
    client = None
    if scheduler is None:
        try:
            from distributed import default_client

            client = default_client()
        except (ImportError, ValueError):
            client = None
    if bar is not None:
        bar.begin("blocks")
    if bar is not None and client is not None:
        from distributed import as_completed

        futures = client.compute(tasks)
        for finished, _ in enumerate(as_completed(futures), start=1):
            bar.update(finished / len(futures))
        client.gather(futures)  # re-raises a task's error here
        return
    if bar is not None:
        with _TaskProgress(bar):
            dask.compute(*tasks, scheduler=scheduler)
        return
    dask.compute(*tasks, scheduler=scheduler)


# --------------------------------------------------------------------------- progress


class _Progress:
    """One progress bar for a whole job, however many steps and computes it takes.

    ``[#########                               ] |  23% | blocks | 4.1 s``, redrawn every
    0.1 s from a timer thread (so the time runs on during a long block). On a text stream
    (a terminal) it is redrawn in place with ``\\r`` and ended with one newline; in a
    notebook (``out=None``) it is one display output updated in place (a ``\\r`` redraw
    would add a line to the cell's saved output at every update). Each step
    (``"blocks"``, then ``"COG"`` for a GeoTIFF) has a share of the bar; nothing is drawn
    until the first step begins (a job with nothing to compute shows no bar).
    """

    WIDTH = 40
    #: share of the bar of each step (steps not listed share the rest equally)
    SHARES: Mapping[str, float] = types.MappingProxyType({"blocks": 0.9, "COG": 0.1})

    def __init__(self, out: IO[str] | None, steps: Sequence[str]) -> None:
        self._out = out
        self._display: Any = None  # the notebook's display handle, once drawn
        self._steps = tuple(steps)
        shares = [self.SHARES.get(step, 1.0) for step in self._steps]
        total = sum(shares)
        self._shares = [share / total for share in shares]
        self._step = -1
        self._fraction = 0.0
        self._t0 = 0.0
        self._width = 0  # of the last line drawn (a shorter one must blank it out)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def begin(self, step: str) -> None:
        """Start ``step`` (the first call starts the bar)."""
        with self._lock:
            self._step = max(self._step, self._steps.index(step))
            self._fraction = 0.0
        if self._thread is None:
            self._t0 = time.perf_counter()
            self._thread = threading.Thread(target=self._tick, name="patchflow-progress")
            self._thread.daemon = True
            self._thread.start()
        self._draw()

    def update(self, fraction: float) -> None:
        """The current step is ``fraction`` done (never goes back)."""
        self._fraction = min(1.0, max(self._fraction, fraction))

    def close(self, *, done: bool) -> None:
        """End the bar (at 100 % if the job is ``done``)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        if done:
            self._step, self._fraction = len(self._steps) - 1, 1.0
        self._draw()
        if self._out is not None:
            self._out.write("\n")
            self._out.flush()

    def _tick(self) -> None:
        while not self._stop.wait(0.1):
            self._draw()

    def _draw(self) -> None:
        with self._lock:
            step = max(self._step, 0)
            share = sum(self._shares[:step]) + self._shares[step] * self._fraction
            filled = round(self.WIDTH * share)
            line = (
                f"[{'#' * filled:<{self.WIDTH}}] | {100 * share:3.0f}% | "
                f"{self._steps[step]} | {time.perf_counter() - self._t0:.1f} s"
            )
            if self._out is None:
                self._show(line)
                return
            self._out.write("\r" + line.ljust(self._width))
            self._out.flush()
            self._width = len(line)

    def _show(self, line: str) -> None:
        from IPython.display import display

        shown = {"text/plain": line}
        if self._display is None:
            self._display = display(shown, raw=True, display_id=True)
        else:
            self._display.update(shown, raw=True)


class _TaskProgress(Callback):
    """Feeds a :class:`_Progress` from a local dask scheduler: the fraction of tasks done."""

    def __init__(self, bar: _Progress) -> None:
        super().__init__()
        self._bar = bar

    def _posttask(
        self, key: Any, result: Any, dsk: Any, state: dict[str, Any], worker_id: Any
    ) -> None:
        done = len(state["finished"])
        left = len(state["ready"]) + len(state["waiting"]) + len(state["running"])
        self._bar.update(done / max(1, done + left))


def _bar(progress: bool | IO[str], steps: Sequence[str]) -> _Progress | None:
    """The job's bar: ``True`` draws in the notebook, else on stdout; a text stream on
    that stream."""
    if progress is False or progress is None:
        return None
    if progress is True:
        return _Progress(None if _in_notebook() else sys.stdout, steps)
    if not callable(getattr(progress, "write", None)):
        raise ParameterError(
            f"progress={progress!r}: give True (a bar on stdout, or in the notebook), False, "
            "or a text stream such as sys.stderr"
        )
    return _Progress(progress, steps)


def _in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (which can update a display in place)."""
    ipython = sys.modules.get("IPython")
    shell = getattr(ipython, "get_ipython", lambda: None)()
    return getattr(shell, "kernel", None) is not None


def _regular_prepare(obj: Any, op: Any, params: dict[str, Any]) -> Prepared:
    """Prepare a job whose blocks form a regular grid (Zarr chunks must be regular)."""
    own = (
        "store",
        "mode",
        "resume",
        "overwrite",
        "keep_sums",
        "var",
        "compressors",
        "zarr_format",
        "creation_options",
    )
    prep = prepare_from(obj, op, params, caller="run", also=(*own, "scheduler", "progress"))
    cy, cx = prep.plan.y.chunks, prep.plan.x.chunks
    if _regular(cy) and _regular(cx):
        return prep
    return prepare(obj, op, **{**params, "chunks": (max(cy), max(cx))})


def _recorded_blocks(
    obj: Any, op: Any, prep: Prepared, params: dict[str, Any], path: str
) -> Prepared:
    """Resume or accumulate on the blocks the store was written with.

    Where the caller gave no ``chunks=``, patchflow picks the blocks from the scene and
    the worker threads, so another machine (or a cluster) may pick others; the result does
    not depend on them, so the store's own blocks win instead of a mismatch error.
    """
    meta = _read_meta(path) or {}
    block = ((meta.get("job") or {}).get("result") or {}).get("block")
    out = _out_block(prep)
    if not (isinstance(block, list) and len(block) == 2) or tuple(block) == out:
        return prep
    here = (prep.plan.y.chunks[0], prep.plan.x.chunks[0])  # input pixels per output block
    chunks = tuple(int(h * b // o) for h, b, o in zip(here, block, out, strict=True))
    return _regular_prepare(obj, op, {**params, "chunks": chunks})


def _promote_sums(path: str, sums: tuple[str, ...]) -> None:
    """Make this pass's ``*_next`` sums current (directory renames; safe to repeat after a
    kill at any point: ``*_next`` exists until it has become current)."""
    book = Path(path) / BOOK
    for key in sums:
        current, nxt, old = book / key, book / f"{key}_next", book / f"{key}_old"
        if nxt.exists():
            if current.exists():
                if old.exists():
                    shutil.rmtree(old)
                os.replace(current, old)
                _checkpoint("promote")
            os.replace(nxt, current)
        if old.exists():
            shutil.rmtree(old)


def _missing_message(path: str, meta: Mapping[str, Any]) -> str:
    ny, nx = meta.get("blocks", [0, 0])
    try:
        missing = int((_done(path, meta) == 0).sum())
    except Exception:  # bookkeeping unreadable: count everything as missing
        missing = ny * nx
    what = (
        f"{missing} of {ny * nx} blocks are missing"
        if missing
        else f"all {ny * nx} blocks are written but the run stopped before finishing"
    )
    return (
        f"{path!r} is incomplete ({meta.get('status')}): {what}. Finish it with "
        f"{_w('finish')}, or replace it with {_w('overwrite')}"
    )


# --------------------------------------------------------------------------- resume


def resume(
    store: str | os.PathLike[str], *, scheduler: Any = None, progress: bool | IO[str] = False
) -> RunReport:
    """Finish (or repair) the job of ``store`` from what the store records.

    Reopens the input file, Zarr store or STAC items the job read (same chunks), rebuilds
    the operator from its JSON config and reruns with the recorded parameters and
    ``resume=True``: only missing blocks and blocks failing their checksum are computed.

    The operator is rebuilt as a *trusted* config (:func:`patchflow.ops.from_config`):
    an :class:`~patchflow.ops.Imported` step imports the module it names and a
    :class:`~patchflow.ops.TorchScript` step loads its model file, so resume only stores
    you (or someone you trust) wrote, as you would only run their script.

    Raises
    ------
    ResumeRecipeError
        The store records no recipe (the input was in memory, or the operator is not a
        :mod:`patchflow.ops` operator with a JSON config), the input cannot be opened, or
        a module an :class:`~patchflow.ops.Imported` step names cannot be imported here:
        the message says how to finish the job instead.
    ModelChangedError
        A TorchScript model file is not the one the job ran (its SHA-256 differs).
    IncompleteStoreError
        ``store`` is not a patchflow store.
    """
    from patchflow.ops import from_config

    path = os.fspath(store)
    state, meta = _state(path)
    if state not in ("store", "creating") or meta is None:
        raise IncompleteStoreError(f"nothing to resume: {path!r} is not a patchflow store")
    recipe = meta.get("recipe")
    if not isinstance(recipe, dict):
        why = meta.get("recipe_missing") or "it was written by an older patchflow"
        raise ResumeRecipeError(
            f"{path!r} cannot be resumed from the store alone: {why}. Instead, {_w('rerun')}"
        )
    try:
        obj = _open_input(recipe["input"])
    except PatchflowError:
        raise
    except Exception as exc:
        raise ResumeRecipeError(
            f"the input of {path!r}, {recipe['input'].get('path')}, cannot be opened "
            f"({_reason(exc)}); restore it, or {_w('rerun')}"
        ) from exc
    op = _recipe_operator(path, recipe, from_config)
    params = _decode(recipe.get("params") or {})
    return run(
        obj,
        op,
        store=path,
        resume=True,
        var=recipe.get("var"),
        scheduler=scheduler,
        progress=progress,
        **params,
    )


def _recipe_operator(path: str, recipe: Mapping[str, Any], build: Callable[..., Any]) -> Any:
    """The recipe's operator, with its own code imported and model files checked now, so
    a module missing here or a changed model fails before anything runs, in the store's
    words."""
    from patchflow.ops import Imported, Sequential

    try:
        op = build(recipe["op"], trusted=True)
        for step in op if isinstance(op, Sequential) else [op]:
            if isinstance(step, Imported):
                step.resolve()
    except ImportTargetError as exc:
        module = str(exc).partition(":")[0]
        where = (recipe.get("imports") or {}).get(module)
        if where is None or not exc.detail.startswith("no module named"):
            raise ResumeRecipeError(f"{path!r} cannot be resumed here: its operator {exc}") from exc
        fix = (
            f"put that directory on PYTHONPATH, e.g. PYTHONPATH={where} patchflow resume {path}"
            if _CLI.get()
            else "add that directory to sys.path (or PYTHONPATH) and resume again"
        )
        raise ResumeRecipeError(
            f"{path!r} cannot be resumed here: its operator imports your module {module} "
            f"({str(exc).partition(': ')[0]}), which is not on the Python path here (the "
            f"job imported it from {where}): {fix}"
        ) from exc
    except ModelChangedError as exc:
        raise ModelChangedError(
            f"{path!r} cannot be resumed: its model file {exc.path} changed since the job "
            f"ran (SHA-256 {exc.recorded[:16]}… then, {exc.found[:16]}… now), and finishing "
            "with another model would blend two models' results; restore the original "
            f"file, or rerun the job with the new model and {_w('overwrite')}",
            path=exc.path,
            recorded=exc.recorded,
            found=exc.found,
        ) from exc
    except InputReadError as exc:  # a model file that is gone
        raise ResumeRecipeError(
            f"{path!r} cannot be resumed: {exc}; restore it, or {_w('rerun')}"
        ) from exc
    return op


# --------------------------------------------------------------------------- reading


def check_store(store: str | os.PathLike[str], *, checksums: bool = True) -> StoreHealth:
    """Status of a patchflow store: blocks done, missing and corrupt.

    With ``checksums`` every block marked done is read once and its CRC-32 compared with
    the one recorded when it was written (the cost of reading the whole result, in
    parallel threads), and so are the kept sums of a ``keep_sums``/``mode="accumulate"``
    store (:attr:`StoreHealth.corrupt_sums`); without, only the done markers are read.
    """
    return _check(os.fspath(store), checksums=checksums, sums=checksums)


def _check(path: str, *, checksums: bool, sums: bool) -> StoreHealth:
    """:func:`check_store`; ``sums``: also verify the kept sums (reading the result does not
    need them, so :func:`open_result` leaves them out)."""
    state, meta = _state(path)
    if state in ("absent", "foreign") or meta is None:
        missing_store = not Path(path).exists()
        return StoreHealth(
            path,
            "not a patchflow store",
            problem=(
                f"no store at {path!r}"
                if missing_store
                else f"{path!r} is not a patchflow store (no '{META}' attrs)"
            ),
        )
    job = meta.get("job") if isinstance(meta.get("job"), dict) else None
    locked = _is_locked(path)
    resumable = isinstance(meta.get("recipe"), dict)
    if state == "creating":
        return StoreHealth(
            path,
            "creating",
            locked=locked,
            job=job,
            resumable=resumable,
            problem=(
                f"{path!r} is being created right now; wait for the run to finish"
                if locked
                else f"{path!r} is incomplete: its creation was interrupted (nothing computed "
                f"yet); finish it with {_w('finish')}, or replace it with {_w('overwrite')}"
            ),
        )
    done = _done(path, meta)
    missing = tuple((int(i), int(j)) for i, j in np.argwhere(done == 0))
    corrupt = tuple(_damaged(path, meta, done == 1)) if checksums else ()
    bad_sums, recomputable = _kept_sums_damage(path, meta, done) if sums else ([], True)
    status = str(meta.get("status"))
    problem = None
    if corrupt:
        fix = _damage_fix(meta, "them")
        problem = (
            f"{path!r} is damaged: {len(corrupt)} block(s) fail their checksum or their "
            "failed-chip records (a result chunk or record file was deleted or overwritten): "
            f"{_blocks_text(corrupt)}; {fix}"
        )
    elif bad_sums:
        passes = int(meta.get("passes", 0))
        problem = _sums_damage_message(path, bad_sums, passes, recomputable=recomputable)
    elif locked and status != "complete":
        problem = f"{path!r} is being written right now ({status}); wait for the run to finish"
    elif status != "complete" or missing:
        problem = _missing_message(path, meta)
    return StoreHealth(
        path,
        status,
        blocks=(int(done.shape[0]), int(done.shape[1])),
        done=int((done == 1).sum()),
        missing=missing,
        corrupt=corrupt,
        checked=checksums,
        locked=locked,
        passes=int(meta.get("passes", 0)),
        var=(meta.get("signature") or {}).get("var"),
        resumable=resumable,
        job=job,
        problem=problem,
        failed_chips=_failed_count(path, done),
        chip_errors=_chip_errors(path, meta),
        corrupt_sums=tuple(bad_sums),
    )


def _kept_sums_damage(
    path: str, meta: Mapping[str, Any], done: np.ndarray
) -> tuple[list[tuple[int, int]], bool]:
    """Blocks whose kept sums fail their checksum where they matter, and whether
    ``resume`` can recompute them.

    Outside a pass, the sums of the done blocks (one pass: resume recomputes them). During
    an accumulate pass, the new sums of the blocks it has done (resume recomputes them from
    the earlier passes' sums) and the earlier passes' sums of the blocks it has still to
    do (nothing can). While a pass's sums are being swapped in, old and new are mixed by
    design, so nothing is checked.
    """
    if meta.get("promoting") or not meta.get("sums"):
        return [], True
    if meta.get("status") == "accumulating" and meta.get("pass_ready"):
        base = _sums_damaged(path, meta, done == 0)
        if base:
            return base, False
        return _sums_damaged(path, meta, done == 1, suffix="_next"), True
    if meta.get("status") == "accumulating":  # the pass's arrays are not made yet
        return _sums_damaged(path, meta, np.ones_like(done, bool)), False
    bad = _sums_damaged(path, meta, done == 1)
    return bad, int(meta.get("passes", 0)) <= 1


def _failed_count(path: str, done: np.ndarray) -> int:
    """Failed chips of the done blocks (their count array; 0 if it is unreadable)."""
    failed = _book(path, "failed")
    if failed is None or failed.shape != done.shape:
        return 0
    return int(failed[done == 1].sum())


#: ``open_result``'s checks: each block as it is read, every block now, or none
Verify = Literal["on_read", "now", "off"]


def open_result(
    store: str | os.PathLike[str],
    *,
    var: Hashable | None = None,
    verify: Verify | bool = "on_read",
) -> xr.DataArray:
    """Open a finished patchflow store as a lazy, georeferenced DataArray.

    Parameters
    ----------
    store
        The store's directory.
    var
        The variable (default: the job's result).
    verify
        How blocks are checked against the CRC-32 recorded when they were written, so a
        deleted or damaged chunk file is never read as data (a deleted chunk would read
        as nodata, silently): ``"on_read"`` (default) checks each block when a
        computation reads it, from the bytes it reads anyway, and raises
        :class:`CorruptStoreError` naming the block — opening costs nothing and a
        scene-sized result is not read twice; ``"now"`` (or ``True``) reads and checks
        every block, and its failed-chip records, before returning (one full read, in
        parallel threads); ``"off"`` (or ``False``) checks only the done markers. The
        ``"on_read"`` array is chunked by the store's blocks (every band of a block in
        one chunk: the checksum covers them together).

    Raises
    ------
    IncompleteStoreError
        If the job that writes the store has not finished (names the missing blocks), or
        ``store`` is not a patchflow store.
    CorruptStoreError
        If a block fails verification (names the blocks; ``resume`` recomputes them):
        when opening with ``verify="now"``, when computing with ``"on_read"``.

    Note that plain ``xr.open_zarr`` does none of these checks.

    Examples
    --------
    >>> from patchflow.io.synthetic import make_scene
    >>> import patchflow, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "ndvi.zarr")
    >>> _ = patchflow.run(make_scene((64, 64)), lambda c: c[:1] * 2, store=path,
    ...                   size=32, stride=24, chunks=32)
    >>> out = open_result(path)  # no read yet; each block is checked as it is read
    >>> out.chunks[-2:], float(out.max()) > 0
    (((32, 32), (32, 32)), True)
    """
    mode = _verify_mode(verify)
    path = os.fspath(store)
    # the kept sums are not part of the result: damage there is for check_store to report
    health = _check(path, checksums=mode == "now", sums=False)
    if not health.ok:
        raise health.error()
    meta = _read_meta(path)
    assert meta is not None
    name = var if var is not None else meta["signature"]["var"]
    try:
        kind = zarr.open_array(path, path=str(name), mode="r").dtype.kind
    except (OSError, KeyError, ValueError):  # not an array of this store: xarray names it
        kind = "f"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        # integers stay integers with their nodata as a value (as apply returns them);
        # xarray's CF masking would make them float with NaN. Floats are masked: an
        # explicit nodata= is their on-disk value, NaN in memory
        ds = xr.open_zarr(path, consolidated=True, decode_coords="all", mask_and_scale=kind == "f")
    out = ds[name]
    crcs = _book(path, "checksum") if mode == "on_read" else None
    if crcs is not None and str(name) == _result_var(meta):
        fill = out.encoding.get("_FillValue") if kind == "f" else None
        fix = _damage_fix(meta, "it")
        out = out.copy(data=_checked_read(path, str(name), crcs, out.dtype, fill, fix))
    if meta.get("crs"):
        out = out.rio.write_crs(meta["crs"])
    return out


def _damage_fix(meta: Mapping[str, Any], what: str) -> str:
    """How to mend damaged result blocks (``what``: "them" or "it") of a store."""
    passes = int(meta.get("passes", 0))
    if passes <= 1 or meta.get("status") != "complete":
        return f"recompute {what} with {_w('finish')}"
    # as _repair refuses it: one operator cannot recompute a sum of passes
    return (
        f"the store holds the sum of {passes} passes (mode='accumulate'), which one "
        f"operator cannot recompute; rebuild it with {_w('overwrite')} and the same passes"
    )


def _verify_mode(verify: Verify | bool) -> Verify:
    """``open_result``'s ``verify`` as one of :data:`Verify` (``True``/``False``: aliases
    of ``"now"``/``"off"``, what they meant before ``"on_read"`` existed)."""
    if verify is True or verify is False:
        return "now" if verify else "off"
    if verify not in ("on_read", "now", "off"):
        raise ParameterError(
            f"verify must be 'on_read' (check each block as it is read), 'now' (check "
            f"every block before returning) or 'off', got {verify!r}"
        )
    return verify


def _result_var(meta: Mapping[str, Any]) -> str:
    """The name of the store's result array (the one its block checksums describe)."""
    return str((meta.get("signature") or {}).get("var") or (meta.get("job") or {}).get("var"))


@dataclass(frozen=True)
class _CheckedBlock:
    """Reads one block of a store's result and checks it against its recorded CRC-32
    (the bytes as stored), then masks a float result's fill value to NaN as xarray's
    decoding does. Picklable: a ``map_blocks`` function."""

    store: str
    var: str
    crcs: np.ndarray
    dtype: np.dtype
    fill: Any
    #: how to mend a damaged block (:func:`_damage_fix`)
    fix: str

    def __call__(self, block_id: tuple[int, ...]) -> np.ndarray:
        i, j = block_id[-2:]
        arr = zarr.open_array(self.store, path=self.var, mode="r")
        raw = _verified_block(arr, (i, j), self.crcs)
        if raw is None:
            raise CorruptStoreError(
                f"{self.store!r} is damaged: block ({i}, {j}) of {self.var!r} does not match "
                "the checksum recorded when it was written (its chunk file was deleted or "
                f"overwritten), so it was not read as data; {self.fix}"
            )
        out = raw.astype(self.dtype, copy=False)
        if self.fill is not None and not np.isnan(self.fill):  # (a NaN fill is NaN already)
            out = np.where(raw == self.fill, self.dtype.type(np.nan), out)
        return out


def _checked_read(
    path: str, name: str, crcs: np.ndarray, dtype: np.dtype, fill: Any, fix: str
) -> da.Array:
    """The result array ``name`` as a dask array of its store blocks, each checked against
    its checksum as it is read (:class:`_CheckedBlock`)."""
    arr = zarr.open_array(path, path=name, mode="r")
    by, bx = arr.chunks[-2:]
    height, width = arr.shape[-2:]

    def cuts(extent: int, step: int) -> tuple[int, ...]:
        return tuple(min(step, extent - start) for start in range(0, extent, step))

    chunks = (*((int(n),) for n in arr.shape[:-2]), cuts(height, by), cuts(width, bx))
    reader = _CheckedBlock(path, name, crcs, np.dtype(dtype), fill, fix)
    # the checksums name this store's contents: a resumed or rewritten store gets new keys
    token = tokenize(os.path.abspath(path), name, crcs.tobytes(), str(dtype), repr(fill))
    return da.map_blocks(
        reader,
        dtype=dtype,
        chunks=chunks,
        name=f"patchflow-open-result-{token}",
        meta=np.empty((0,) * arr.ndim, dtype),
    )
