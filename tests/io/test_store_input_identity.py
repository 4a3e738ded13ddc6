"""A store's job record identifies its input by what was computed, not only by its path.

An input derived lazily from a file (``da + 1000``, ``da.where(...)``, ``da.clip(...)``,
reversed bands) reads the same file as the plain read, so a record of the path alone let
``resume=True`` and ``mode="accumulate"`` blend two inputs into one store. A file rewritten
in place between a crash and ``patchflow.resume(store)`` did the same. These tests use real
GeoTIFFs written with rioxarray, real Zarr stores and real child processes SIGKILLed part-way
through their blocks (``PATCHFLOW_CRASH_AT=block-3``, as in ``test_store_safety.py``), and
check that:

* a lazily modified input is refused on resume and on accumulate (and the store is left
  as it was);
* the same derived expression, built again in a new process, resumes bit-identically;
* a source GeoTIFF or Zarr array rewritten in place is refused, naming the file and
  ``overwrite=True`` / ``--overwrite``;
* an untouched file resumes, also through ``patchflow.resume`` in a new process and with
  other open chunks;
* a store recorded before these fields existed still resumes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rioxarray
import xarray as xr
import zarr
from test_store_safety import KW, OP, error_line, result_bytes

from patchflow.cli import main
from patchflow.io.store import (
    CRASH_AT,
    ResumeMismatchError,
    ResumeRecipeError,
    _input_identity,
    _read_meta,
    _set_meta,
    check_store,
    resume,
    run,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore:The data type .* does not have a Zarr V3 spec"),
    pytest.mark.filterwarnings("ignore:Consolidated metadata is currently not"),
]

TESTS = Path(__file__).resolve().parent
SHAPE = (700, 600)  # 256-px blocks (KW): 3 x 3 = 9 blocks
#: the open call of every test (and child): GeoTIFF blocks = patchflow blocks
CHUNKS = {"band": -1, "y": 256, "x": 256}
#: lazily derived inputs: each reads only the file, yet holds other values
DERIVED = [
    "da + 1000",
    "da.clip(0, 1000)",
    "da.where(da > 100, 0)",
    "da.copy(data=da.data[::-1])",
]


def open_tif(path: Path, chunks: Any = None) -> xr.DataArray:
    """``open_rasterio`` as the child processes call it: rioxarray's dask name tokenizes the
    path *object*, so a derived input built on ``Path(p)`` is another than on ``str(p)``."""
    out = rioxarray.open_rasterio(str(path), chunks=CHUNKS if chunks is None else chunks)
    assert isinstance(out, xr.DataArray)
    return out


def build(expression: str, da: xr.DataArray) -> xr.DataArray:
    """The input ``expression`` makes of ``da`` (a plain read for ``"da"``)."""
    out = eval(expression, {"da": da, "np": np})
    assert isinstance(out, xr.DataArray)
    return out


def write_tif(path: Path, scene: xr.DataArray) -> None:
    scene.rio.to_raster(path, tiled=True, blockxsize=256, blockysize=256)


@pytest.fixture(scope="module")
def tif(
    scene_factory: Callable[..., xr.DataArray], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A 2-band uint16 GeoTIFF (tests that rewrite it copy it first)."""
    path = tmp_path_factory.mktemp("input") / "scene.tif"
    write_tif(path, scene_factory(SHAPE, seed=7))
    return path


# --------------------------------------------------------------------------- child processes

CHILD = textwrap.dedent(
    """
    import json, sys, warnings
    warnings.simplefilter("ignore")
    args = json.loads(sys.argv[1])
    sys.path.insert(0, args["tests"])
    import numpy as np
    import rioxarray
    import patchflow.io.store as store
    from test_store_safety import OP

    if args.get("recipe"):  # patchflow.resume: the store alone
        report = store.resume(args["store"])
    else:
        da = rioxarray.open_rasterio(args["input"], chunks=args["chunks"])
        obj = eval(args["expression"], {"da": da, "np": np})
        report = store.run(
            obj, OP, store=args["store"], scheduler="synchronous", **args["kw"], **args["run"]
        )
    print(json.dumps([report.computed, report.skipped]))
    """
)


def child(
    tif: Path,
    store: Path,
    expression: str = "da",
    *,
    crash: bool = False,
    recipe: bool = False,
    **run_kw: Any,
) -> subprocess.CompletedProcess[str]:
    """Run (or with ``recipe``, ``patchflow.resume``) the job in a new process; ``crash``
    SIGKILLs it writing its third block."""
    args = {
        "tests": str(TESTS),
        "input": str(tif),
        "chunks": CHUNKS,
        "expression": expression,
        "store": str(store),
        "kw": KW,
        "run": run_kw,
        "recipe": recipe,
    }
    return subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(args)],
        capture_output=True,
        text=True,
        env={**os.environ, **({CRASH_AT: "block-3"} if crash else {})},
        timeout=180,
    )


def killed(tif: Path, store: Path, expression: str = "da") -> Path:
    """A store whose writer (``expression`` of the GeoTIFF) was killed writing its third
    block (two marked done)."""
    proc = child(tif, store, expression, crash=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    health = check_store(store, checksums=False)
    assert (health.status, health.done) == ("incomplete", 2)  # the third: no done marker
    return store


def finished(proc: subprocess.CompletedProcess[str]) -> list[int]:
    assert proc.returncode == 0, proc.stderr
    counts: list[int] = json.loads(proc.stdout.strip().splitlines()[-1])
    return counts


def reference(obj: xr.DataArray, store: Path) -> bytes:
    """The result of an uninterrupted run of ``obj``."""
    run(obj, OP, store=store, **KW)
    return result_bytes(store)


def refused_unchanged(store: Path, call: Callable[[], Any]) -> ResumeMismatchError:
    """``call`` raises ResumeMismatchError and leaves the store's blocks as they were."""
    before = check_store(store, checksums=False)
    with pytest.raises(ResumeMismatchError) as info:
        call()
    after = check_store(store, checksums=False)
    assert (after.status, after.done) == (before.status, before.done)
    return info.value


# --------------------------------------------------------------------------- derived inputs


@pytest.mark.slow
@pytest.mark.parametrize("expression", DERIVED)
def test_a_lazily_modified_input_is_refused_on_resume(
    expression: str, tif: Path, tmp_path: Path
) -> None:
    store = killed(tif, tmp_path / "out.zarr")
    other = build(expression, open_tif(tif))
    exc = refused_unchanged(store, lambda: run(other, OP, store=store, resume=True, **KW))
    assert [k for k, _, _ in exc.fields if k.startswith("input.")] == ["input.derived"]
    assert "input computed as: store the file as read, now" in str(exc)
    assert "overwrite=True" in str(exc)
    # the plain read still finishes it, and gives what an uninterrupted run gives
    report = run(open_tif(tif), OP, store=store, resume=True, **KW)
    assert (report.computed, report.skipped) == (7, 2)
    assert result_bytes(store) == reference(open_tif(tif), tmp_path / "clean.zarr")


def test_a_derived_store_refuses_the_plain_file(tif: Path, tmp_path: Path) -> None:
    store = killed(tif, tmp_path / "out.zarr", "da + 1000")
    exc = refused_unchanged(store, lambda: run(open_tif(tif), OP, store=store, resume=True, **KW))
    assert "now the file as read" in str(exc)
    # another derivation of the same file is refused too
    refused_unchanged(store, lambda: run(open_tif(tif) + 999, OP, store=store, resume=True, **KW))


def test_a_lazily_modified_input_is_refused_on_accumulate(tif: Path, tmp_path: Path) -> None:
    store = tmp_path / "tta.zarr"
    run(open_tif(tif), OP, store=store, keep_sums=True, **KW)
    data = result_bytes(store)
    da = open_tif(tif)
    for other in (da * 0 + 7, build("da.where(da > 100, 0)", da)):
        with pytest.raises(ResumeMismatchError, match=r"mode='accumulate'.*input computed as"):
            run(other, OP, store=store, mode="accumulate", **KW)
    health = check_store(store)
    assert health.ok and health.passes == 1 and result_bytes(store) == data
    # the same input may add a pass
    run(open_tif(tif), OP, store=store, mode="accumulate", **KW)
    assert check_store(store).passes == 2


@pytest.mark.slow
def test_the_same_derived_expression_resumes_in_a_new_process(tif: Path, tmp_path: Path) -> None:
    expression = "da.where(da > 100, 0) + 1000"
    store = killed(tif, tmp_path / "out.zarr", expression)
    assert finished(child(tif, store, expression, resume=True)) == [7, 2]
    clean = reference(build(expression, open_tif(tif)), tmp_path / "clean.zarr")
    assert result_bytes(store) == clean and check_store(store).ok
    # and in this process, built again here
    assert run(build(expression, open_tif(tif)), OP, store=store, resume=True, **KW).computed == 0


def test_a_derived_input_records_no_recipe(tif: Path, tmp_path: Path) -> None:
    """Reopening the file would give the plain read, not the derived input: ``resume``
    must not finish the job with it."""
    store = killed(tif, tmp_path / "out.zarr", "da + 1000")
    meta = _read_meta(str(store))
    assert meta is not None and meta["recipe"] is None
    assert "selected or modified" in meta["recipe_missing"]
    with pytest.raises(ResumeRecipeError, match="selected or modified"):
        resume(store)


def test_identity_of_a_plain_read_does_not_depend_on_how_it_was_opened(tif: Path) -> None:
    plain = _input_identity(open_tif(tif))
    assert plain["derived"] is None and list(plain["files"]) == [os.path.realpath(tif)]
    # the same blocks asked for in other words: another dask name, the same input
    assert _input_identity(open_tif(tif, chunks={"y": 256, "x": 256})) == plain
    rechunked = open_tif(tif).chunk({"x": 128}).chunk({"x": 256})  # the same values
    assert _input_identity(rechunked) == plain
    da = open_tif(tif)
    tokens = {_input_identity(build(e, da))["derived"] for e in DERIVED}
    assert None not in tokens and len(tokens) == len(DERIVED)
    # deterministic: the same expression built again gives the same token
    assert _input_identity(build(DERIVED[0], open_tif(tif))) == _input_identity(
        build(DERIVED[0], da)
    )
    # values in memory are identified by their values, not by the file they came from
    loaded = open_tif(tif).load()
    assert _input_identity(loaded)["derived"] is not None
    edited = loaded.copy(deep=True)
    edited.values[0, 0, 0] += 1
    assert _input_identity(edited)["derived"] != _input_identity(loaded)["derived"]


# --------------------------------------------------------------------------- rewritten files


def rewrite_tif(path: Path, scene_factory: Callable[..., xr.DataArray]) -> None:
    """The same path, grid, dtype and bands, other values; and a later mtime for sure."""
    stat = path.stat()
    write_tif(path, scene_factory(SHAPE, seed=8))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


@pytest.mark.slow
def test_a_source_file_rewritten_in_place_is_refused(
    scene_factory: Callable[..., xr.DataArray],
    tif: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = tmp_path / "scene.tif"
    shutil.copy2(tif, source)
    store = killed(source, tmp_path / "out.zarr")
    rewrite_tif(source, scene_factory)

    exc = refused_unchanged(store, lambda: resume(store))
    message = str(exc)
    assert os.path.realpath(source) in message and "modified since" in message
    assert "overwrite=True" in message
    assert any(k.startswith("input.files.") for k, _, _ in exc.fields)
    refused_unchanged(store, lambda: run(open_tif(source), OP, store=store, resume=True, **KW))
    assert main(["resume", str(store)]) == 1
    line = error_line(capsys.readouterr().err)
    assert "modified since" in line and "--overwrite" in line and "overwrite=True" not in line

    # the way out the message gives
    run(open_tif(source), OP, store=store, overwrite=True, **KW)
    assert result_bytes(store) == reference(open_tif(source), tmp_path / "clean.zarr")


@pytest.mark.slow
def test_a_zarr_source_rewritten_in_place_is_refused(
    scene_factory: Callable[..., xr.DataArray], tmp_path: Path
) -> None:
    source = tmp_path / "scene.zarr"
    scene = scene_factory(SHAPE, seed=7).chunk({"y": 256, "x": 256})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scene.to_dataset(name="dn").to_zarr(source, zarr_format=3)

    def open_input() -> xr.DataArray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return xr.open_zarr(source, decode_coords="all")["dn"]

    store = tmp_path / "out.zarr"
    run(open_input(), OP, store=store, **KW)
    os.remove(store / "_patchflow" / "done" / "c" / "0" / "0")  # a block to redo
    assert run(open_input(), OP, store=store, resume=True, **KW).computed == 1  # untouched

    time.sleep(0.01)  # a later mtime_ns than the chunks written above
    other = scene_factory(SHAPE, seed=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # only the data chunks change: the metadata files stay as they were
        zarr.open_array(str(source), path="dn", mode="r+")[...] = other.values
    os.remove(store / "_patchflow" / "done" / "c" / "0" / "0")
    exc = refused_unchanged(store, lambda: run(open_input(), OP, store=store, resume=True, **KW))
    assert f"{os.path.realpath(source)}/dn" in str(exc) and "overwrite=True" in str(exc)


# --------------------------------------------------------------------------- untouched files


@pytest.mark.slow
def test_an_untouched_file_resumes_from_the_store_alone_in_a_new_process(
    tif: Path, tmp_path: Path
) -> None:
    store = killed(tif, tmp_path / "out.zarr")
    assert finished(child(tif, store, recipe=True)) == [7, 2]
    assert result_bytes(store) == reference(open_tif(tif), tmp_path / "clean.zarr")
    assert check_store(store).ok


def test_an_untouched_file_resumes_opened_with_other_chunks(tif: Path, tmp_path: Path) -> None:
    store = killed(tif, tmp_path / "out.zarr")
    other = open_tif(tif, chunks={"y": 256, "x": 256})  # another dask name, the same input
    assert run(other, OP, store=store, resume=True, **KW).computed == 7
    assert result_bytes(store) == reference(open_tif(tif), tmp_path / "clean.zarr")


def test_a_store_recorded_without_the_new_fields_still_resumes(tif: Path, tmp_path: Path) -> None:
    """Stores written before ``files``/``derived`` were recorded: unknown, not refused."""
    store = killed(tif, tmp_path / "out.zarr")
    meta = _read_meta(str(store))
    assert meta is not None
    job = meta["job"]
    assert set(job["input"]) >= {"files", "derived"}
    del job["input"]["files"], job["input"]["derived"]
    _set_meta(str(store), job=job)
    assert run(open_tif(tif), OP, store=store, resume=True, **KW).computed == 7
    # ... and the finished store's record is the old one, still accepted
    assert run(open_tif(tif), OP, store=store, resume=True, **KW).computed == 0
