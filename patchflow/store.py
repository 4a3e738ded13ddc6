"""The only module that touches Zarr: streaming a job into a store, resume, accumulation.

Store layout (Zarr v3 group, readable with ``xr.open_zarr`` + rioxarray)::

    store.zarr/
      zarr.json              group attrs["patchflow"]: status, block grid, job signature,
                             CRS (WKT) and transform, pass count
      <var>/                 the normalised result, dims (out dims…, y, x), one Zarr chunk
                             per output block (chunk shape = block shape)
      y/, x/, spatial_ref/   coordinates and the CRS (CF grid mapping, as rioxarray writes)
      _patchflow/done        uint8 (n_blocks_y, n_blocks_x), chunk (1, 1): 1 once a block's
                             data are written; written *after* the data
      _patchflow/num, den    (``keep_sums=True`` or ``mode="accumulate"``) the overlap-add
                             numerator and denominator (``count``/``wsum`` for ``vote``),
                             float, same block chunks

Every output block is produced by exactly one task, and that task is the only writer of
that block's chunk in every array (output, sums, done marker), so no locks are needed under
threads, processes or dask.distributed.

The numerator/denominator of a block are summed in memory by the block's stitch task (from
the block's own chips and its neighbours' spill-over) and normalised there; writing them to
the store is only needed to add later passes. For a separable window on valid data the
denominator is geometry (outer product of per-axis weight sums), so by default neither is
written: one array of output bytes is the whole I/O cost.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np
import xarray as xr
import zarr
import zarr.codecs
from dask.delayed import Delayed

from patchflow.aggregate import Aggregator, State
from patchflow.core import Prepared, prepare
from patchflow.errors import ParameterError, PatchflowError, PatchflowWarning
from patchflow.graph import build_graph

__all__ = [
    "IncompleteStoreError",
    "RunReport",
    "StoreError",
    "StoreExistsError",
    "StoreMismatchError",
    "open_result",
    "run",
]

META = "patchflow"
BOOK = "_patchflow"
MODES = ("w", "accumulate")


class StoreError(PatchflowError, OSError):
    """The output store cannot be written."""


class StoreExistsError(PatchflowError, FileExistsError):
    """The output store exists and neither ``overwrite`` nor ``resume`` was given."""


class IncompleteStoreError(PatchflowError, RuntimeError):
    """The store's job did not finish: some blocks are missing."""


class StoreMismatchError(PatchflowError, ValueError):
    """``resume``/``accumulate`` on a store written by a different job layout."""


def default_compressors(dtype: np.dtype) -> Any:
    """Zstd level 1: on float rasters it gives most of level 3's (small) gain at ~2× speed."""
    return [zarr.codecs.ZstdCodec(level=1)]


@dataclass(frozen=True)
class BlockSink:
    """Writes one output block (result, optional sums, done marker). Picklable."""

    store: str
    var: str
    nlead: int
    block: tuple[int, int]
    sums: tuple[str, ...]
    accumulate: bool

    def _region(self, index: tuple[int, int], shape: tuple[int, ...]) -> tuple[slice, ...]:
        (i, j), (by, bx) = index, self.block
        lead = (slice(None),) * (len(shape) - 2)
        return (*lead, slice(i * by, i * by + shape[-2]), slice(j * bx, j * bx + shape[-1]))

    def write(
        self, index: tuple[int, int], state: State, agg: Aggregator, failed: int = 0
    ) -> np.ndarray:
        """Persist block ``index`` of a merged state; return a one-element marker."""
        if self.sums:
            sums = agg.to_sums(state)
            if self.accumulate:
                for key in self.sums:
                    base = zarr.open_array(self.store, path=f"{BOOK}/{key}", mode="r")
                    sums[key] = sums[key] + base[self._region(index, sums[key].shape)]
            for key in self.sums:
                target = f"{BOOK}/{key}_next" if self.accumulate else f"{BOOK}/{key}"
                arr = zarr.open_array(self.store, path=target, mode="r+")
                arr[self._region(index, sums[key].shape)] = sums[key]
            state = agg.from_sums(sums)
        out = agg.finalize(state)
        zarr.open_array(self.store, path=self.var, mode="r+")[self._region(index, out.shape)] = out
        zarr.open_array(self.store, path=f"{BOOK}/failed", mode="r+")[index] = failed
        good = np.isfinite(out) if out.dtype.kind == "f" else out != agg.nodata
        zarr.open_array(self.store, path=f"{BOOK}/valid", mode="r+")[index] = int(good.sum())
        # the marker goes last: a block is done only once all its data are on disk
        zarr.open_array(self.store, path=f"{BOOK}/done", mode="r+")[index] = 1
        return np.ones((1,) * (self.nlead + 2), np.int8)


@dataclass(frozen=True)
class RunReport:
    """What :func:`run` did."""

    store: str
    var: str
    blocks: int
    computed: int
    skipped: int
    seconds: float
    mode: str
    #: chips whose operator call failed and were masked (``on_error="mask"``)
    failed_chips: int = 0

    def open(self) -> xr.DataArray:
        """The result, lazily, from the store."""
        return open_result(self.store, var=self.var)


def _out_block(prep: Prepared) -> tuple[int, int]:
    """Output block (= Zarr chunk) shape: input block × scale."""
    sc = prep.spec.sc
    return sc(prep.plan.y.chunks[0]), sc(prep.plan.x.chunks[0])


def _regular(chunks: tuple[int, ...]) -> bool:
    return all(c == chunks[0] for c in chunks[:-1]) and chunks[-1] <= chunks[0]


def _signature(prep: Prepared, var: str) -> dict[str, Any]:
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


def _read_meta(store: str) -> dict[str, Any] | None:
    try:
        group = zarr.open_group(store, mode="r", use_consolidated=False)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError):
        return None
    meta = group.attrs.get(META)
    return dict(meta) if isinstance(meta, dict) else None


def _set_meta(store: str, **updates: Any) -> None:
    group = zarr.open_group(store, mode="r+", use_consolidated=False)
    current = group.attrs.get(META)
    meta: dict[str, Any] = dict(current) if isinstance(current, dict) else {}
    meta.update(updates)
    group.attrs[META] = meta


def _exists(store: str) -> bool:
    return Path(store).exists() and any(Path(store).iterdir())


def _done(store: str) -> np.ndarray:
    return np.asarray(zarr.open_array(store, path=f"{BOOK}/done", mode="r")[...])


def _create(prep: Prepared, store: str, var: str, sums: tuple[str, ...], compressors: Any) -> None:
    template = prep.result()
    block = _out_block(prep)
    ds = _storable(template.to_dataset(name=var))
    if "spatial_ref" in ds.coords:
        # CF grid mapping, so plain xr.open_zarr + rioxarray finds the CRS
        ds[var].attrs["grid_mapping"] = "spatial_ref"
        ds[var].encoding["coordinates"] = "spatial_ref"
    encoding = {
        var: {
            "chunks": (*template.shape[:-2], *block),
            "compressors": compressors or default_compressors(template.dtype),
        }
    }
    # metadata and coordinates only: the data variable is written block by block below
    with warnings.catch_warnings():
        # string band labels have no final Zarr v3 dtype spec yet; xarray reads them back
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification")
        ds.to_zarr(
            store, mode="w", compute=False, zarr_format=3, encoding=encoding, consolidated=False
        )
    agg = prep.spec.agg
    group = zarr.open_group(store, mode="r+", use_consolidated=False)
    book = group.require_group(BOOK)
    ny, nx = prep.plan.n_blocks
    book.create_array("done", shape=(ny, nx), chunks=(1, 1), dtype="uint8", fill_value=0)
    book.create_array("failed", shape=(ny, nx), chunks=(1, 1), dtype="int32", fill_value=0)
    book.create_array("valid", shape=(ny, nx), chunks=(1, 1), dtype="int64", fill_value=0)
    for key in sums:
        _create_sum(book, key, agg, template.shape, block, compressors)
    crs = template.rio.crs
    transform = template.rio.transform()
    group.attrs[META] = {
        "status": "incomplete",
        "signature": _signature(prep, var),
        "blocks": [ny, nx],
        "sums": list(sums),
        "passes": 0,
        "crs": None if crs is None else crs.to_wkt(),
        "transform": list(transform)[:6],
    }


def _storable(ds: xr.Dataset) -> xr.Dataset:
    """Drop what Zarr cannot hold: object-dtype non-index coords (stackstac's ``proj:*``
    metadata) and attrs that are not JSON values (stackstac's ``spec``)."""
    drop = [
        name for name, coord in ds.coords.items() if coord.dtype.kind == "O" and name not in ds.dims
    ]
    ds = ds.drop_vars(drop)
    ds.attrs = {k: v for k, v in ds.attrs.items() if _jsonable(v)}
    for variable in ds.variables.values():
        variable.attrs = {k: v for k, v in variable.attrs.items() if _jsonable(v)}
    return ds


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else v.tolist())
    except (TypeError, ValueError):
        return False
    return True


def _create_sum(
    book: Any,
    key: str,
    agg: Aggregator,
    shape: tuple[int, ...],
    block: tuple[int, int],
    compressors: Any,
) -> None:
    sshape, dtype = agg.sum_shape(key.removesuffix("_next"), block)
    full = (*sshape[:-2], *shape[-2:])
    book.create_array(
        key,
        shape=full,
        chunks=(*sshape[:-2], *block),
        dtype=dtype,
        fill_value=0,
        compressors=compressors or default_compressors(dtype),
        overwrite=True,
    )


def run(
    obj: xr.DataArray | xr.Dataset,
    op: Callable[..., Any],
    *,
    store: str | os.PathLike[str],
    mode: str = "w",
    resume: bool = False,
    overwrite: bool = False,
    keep_sums: bool = False,
    var: str | None = None,
    compressors: Any = None,
    scheduler: Any = None,
    progress: bool = False,
    **params: Any,
) -> RunReport:
    """Stream ``apply(obj, op, **params)`` into a Zarr v3 store, block by block.

    Parameters
    ----------
    obj, op, **params
        As for :func:`patchflow.apply` (``chunks=`` sets the block = Zarr chunk size).
    store
        Directory of the Zarr store.
    mode
        ``"w"``: write a new result. ``"accumulate"``: add this pass's numerator and
        denominator to those already in the store (same grid; e.g. a second model or a
        test-time augmentation) and re-normalise; creates the store if missing.
    resume
        Finish an interrupted run: only blocks without a done marker are computed.
    overwrite
        Replace an existing store (otherwise an existing store is an error).
    keep_sums
        Also store numerator/denominator so later ``mode="accumulate"`` passes can add.
    var
        Name of the result variable (default: the result's name, else ``"result"``).
    compressors
        Zarr v3 compressors for the result (default: Zstd level 1).
    scheduler
        Passed to ``dask.compute`` (default: the active scheduler or distributed client).
    progress
        Show a progress bar of blocks written (dask's ``ProgressBar`` locally,
        ``distributed.progress`` on a cluster).

    Returns
    -------
    RunReport
        Blocks computed/skipped and wall time; ``.open()`` gives the result.

    Examples
    --------
    >>> import tempfile, patchflow
    >>> from patchflow.synthetic import make_scene
    >>> from patchflow.demo import dn_ndvi
    >>> path = tempfile.mkdtemp() + "/ndvi.zarr"
    >>> report = run(make_scene((600, 500), chunks=300), dn_ndvi, store=path)
    >>> report.blocks, report.computed, report.open().shape
    (4, 4, (1, 600, 500))
    """
    if mode not in MODES:
        raise ParameterError(f"unknown mode {mode!r}; valid: {', '.join(map(repr, MODES))}")
    path = os.fspath(store)
    exists = _exists(path)
    meta = _read_meta(path) if exists else None
    accumulate = mode == "accumulate" and meta is not None
    if exists and meta is None:
        # never delete a directory patchflow did not write, even with overwrite=True
        raise StoreExistsError(
            f"{path!r} exists and is not a patchflow store; choose another path or remove it"
        )
    if exists and not (overwrite or resume or accumulate):
        raise StoreExistsError(
            f"the output store {path!r} already exists; pass overwrite=True to replace it, "
            "resume=True to finish an interrupted run, or mode='accumulate' to add a pass"
        )
    if resume and meta is None:
        raise IncompleteStoreError(f"nothing to resume: {path!r} is not a patchflow store")

    prep = _regular_prepare(obj, op, params)
    var = var or (str(prep.name) if prep.name is not None else "result")
    agg = prep.spec.agg
    want_sums = keep_sums or mode == "accumulate"
    if want_sums and not agg.sum_keys:
        raise ParameterError(
            f"agg={agg.name!r} cannot accumulate across passes; use overlap_add, mean, "
            "soft_vote or vote, or keep_sums=False"
        )
    sums = tuple(agg.sum_keys) if want_sums else ()

    if overwrite and exists and not resume:
        _remove(path)
        meta = None
        accumulate = False
    if meta is not None:
        _check_signature(path, meta, _signature(prep, var), accumulate=accumulate)
        sums = tuple(meta.get("sums", ()))
        if accumulate and not sums:
            raise StoreMismatchError(
                f"{path!r} was written without keep_sums=True, so there is nothing to add to; "
                "rerun its first pass with keep_sums=True"
            )
    if meta is None:
        try:
            _create(prep, path, var, sums, compressors)
        except OSError as exc:  # permission denied, read-only file system, not a directory
            reason = exc.strerror or type(exc).__name__
            raise StoreError(
                f"cannot create the output store {path!r}: {reason.lower()}; choose a "
                "writable location"
            ) from exc
        meta = _read_meta(path)
        assert meta is not None
    ny, nx = prep.plan.n_blocks

    if accumulate:
        resuming_pass = meta.get("status") == "accumulating"
        if not resuming_pass:
            if meta.get("status") != "complete":
                raise IncompleteStoreError(_missing_message(path, meta))
            book = zarr.open_group(path, mode="r+", use_consolidated=False)[BOOK]
            for key in sums:
                _create_sum(
                    book,
                    f"{key}_next",
                    agg,
                    zarr.open_array(path, path=var, mode="r").shape,
                    _out_block(prep),
                    compressors,
                )
            zarr.open_array(path, path=f"{BOOK}/done", mode="r+")[...] = 0
            zarr.open_array(path, path=f"{BOOK}/failed", mode="r+")[...] = 0
            _set_meta(path, status="accumulating")
    elif resume and meta.get("status") == "accumulating":
        accumulate = True

    todo = np.argwhere(_done(path) == 0)
    sink = BlockSink(
        store=path,
        var=var,
        nlead=len(agg.result_lead()),
        block=_out_block(prep),
        sums=sums,
        accumulate=accumulate,
    )
    markers = build_graph(prep.data, prep.spec, prep.plan, sink=sink)
    graph = markers.__dask_graph__()
    lead0 = (0,) * len(agg.result_lead())
    keys = [(markers.name, *lead0, int(i), int(j)) for i, j in todo]
    t0 = time.perf_counter()
    if keys:
        _compute([Delayed(k, graph, layer=markers.name) for k in keys], scheduler, progress)
    seconds = time.perf_counter() - t0

    missing = int((_done(path) == 0).sum())
    if missing:
        raise IncompleteStoreError(
            f"{missing} of {ny * nx} blocks of {path!r} were not written; "
            "run again with resume=True"
        )
    if accumulate:
        _promote_sums(path, sums)
    failed = int(np.asarray(zarr.open_array(path, path=f"{BOOK}/failed", mode="r")[...]).sum())
    valid = int(np.asarray(zarr.open_array(path, path=f"{BOOK}/valid", mode="r")[...]).sum())
    if valid == 0:
        warnings.warn(
            f"{path!r}: no valid output pixel — the input is all NaN/nodata, or the operator "
            "returned NaN/inf (or failed) everywhere; check the input's nodata and the op",
            PatchflowWarning,
            stacklevel=2,
        )
    _set_meta(path, status="complete", passes=int(meta.get("passes", 0)) + 1, failed_chips=failed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # "consolidated … not in v3 spec"
        zarr.consolidate_metadata(path)
    return RunReport(
        path, var, ny * nx, len(keys), ny * nx - len(keys), seconds, mode, failed_chips=failed
    )


def _compute(tasks: list[Delayed], scheduler: Any, progress: bool) -> None:
    client = None
    if scheduler is None:
        try:
            from distributed import default_client

            client = default_client()
        except (ImportError, ValueError):
            client = None
    if progress and client is not None:
        from distributed import progress as show_progress
        from distributed import wait

        futures = client.compute(tasks)
        show_progress(futures)
        wait(futures)
        client.gather(futures)  # re-raises a task's error here
        return
    if progress:
        from dask.diagnostics import ProgressBar

        with ProgressBar():
            dask.compute(*tasks, scheduler=scheduler)
        return
    dask.compute(*tasks, scheduler=scheduler)


def _regular_prepare(obj: Any, op: Any, params: dict[str, Any]) -> Prepared:
    """Prepare a job whose blocks form a regular grid (Zarr chunks must be regular)."""
    prep = prepare(obj, op, **params)
    cy, cx = prep.plan.y.chunks, prep.plan.x.chunks
    if _regular(cy) and _regular(cx):
        return prep
    return prepare(obj, op, **{**params, "chunks": (max(cy), max(cx))})


def _remove(path: str) -> None:
    if Path(path).is_dir():
        shutil.rmtree(path)
    else:
        Path(path).unlink()


def _check_signature(
    path: str, meta: dict[str, Any], sig: dict[str, Any], *, accumulate: bool
) -> None:
    old = dict(meta.get("signature", {}))
    new = json.loads(json.dumps(sig))
    if accumulate:  # a later pass may use another window or model, not another grid
        for key in ("window",):
            old.pop(key, None)
            new.pop(key, None)
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
        details = ", ".join(f"{k}: store {old.get(k)!r} vs now {new.get(k)!r}" for k in diff)
        raise StoreMismatchError(
            f"{path!r} was written by a job with a different layout ({details}); use the "
            "same parameters, or overwrite=True / another store"
        )


def _promote_sums(path: str, sums: tuple[str, ...]) -> None:
    """Make this pass's ``*_next`` sums current (local stores: directory renames)."""
    book = Path(path) / BOOK
    for key in sums:
        current, nxt = book / key, book / f"{key}_next"
        old = book / f"{key}_old"
        if old.exists():
            shutil.rmtree(old)
        os.replace(current, old)
        os.replace(nxt, current)
        shutil.rmtree(old)


def _missing_message(path: str, meta: dict[str, Any]) -> str:
    ny, nx = meta.get("blocks", [0, 0])
    try:
        missing = int((_done(path) == 0).sum())
    except Exception:  # bookkeeping unreadable: count everything as missing
        missing = ny * nx
    return (
        f"{path!r} is incomplete ({meta.get('status')}): {missing} of {ny * nx} blocks are "
        "missing. Finish it with patchflow.run(..., store=..., resume=True) using the same "
        "input and parameters, or overwrite it"
    )


def open_result(store: str | os.PathLike[str], *, var: Hashable | None = None) -> xr.DataArray:
    """Open a finished patchflow store as a lazy, georeferenced DataArray.

    Raises
    ------
    IncompleteStoreError
        If the job that writes the store has not finished (names the missing blocks).
    """
    path = os.fspath(store)
    meta = _read_meta(path)
    if meta is None:
        raise IncompleteStoreError(f"{path!r} is not a patchflow store (no '{META}' attrs)")
    if meta.get("status") != "complete":
        raise IncompleteStoreError(_missing_message(path, meta))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        ds = xr.open_zarr(path, consolidated=True, decode_coords="all")
    name = var if var is not None else meta["signature"]["var"]
    out = ds[name]
    if meta.get("crs"):
        out = out.rio.write_crs(meta["crs"])
    return out
