"""Store safety (issue 12): the job signature and ResumeMismatchError, resuming from the
store's own recipe, never destroying the input, SIGKILL at every moment, one writer per
store, write failures, checksums, half-created stores, overwrite hygiene, named errors.

Everything is real: Zarr stores on disk, child Python processes killed with SIGKILL,
a file-size limit, a read-only directory, a full tmpfs (when the machine allows a private
mount namespace), a second process racing for the lock.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import xarray as xr
import zarr

import patchflow
from patchflow import ops
from patchflow.cli import main
from patchflow.errors import PatchflowError
from patchflow.io.store import (
    CRASH_AT,
    CorruptStoreError,
    ForeignFilesError,
    IncompleteStoreError,
    OutputOverlapsInputError,
    ResumeMismatchError,
    ResumeRecipeError,
    StoreError,
    StoreExistsError,
    StoreLockedError,
    StoreMismatchError,
    StorePathError,
    check_store,
    open_result,
    resume,
    run,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore:The data type .* does not have a Zarr V3 spec"),
    pytest.mark.filterwarnings("ignore:Consolidated metadata is currently not"),
]

TESTS = Path(__file__).resolve().parent
#: 700 x 600 px in 256-px blocks: 3 x 3 = 9 blocks
KW: dict[str, Any] = {"size": 128, "stride": 96, "chunks": 256}
#: a patchflow.ops pipeline: JSON-serialisable, so the store records a full recipe
OP = ops.DNToReflectance(scale=1e-4) | ops.NDVI(red=0, nir=1)
#: a second model for accumulate passes (-NDVI)
NEGATIVE = ops.DNToReflectance(scale=1e-4) | ops.NDVI(red=1, nir=0)
DELAY = "PATCHFLOW_TEST_DELAY"
#: a file path: while that file exists, every call waits (the test holds a writer mid-run)
GATE = "PATCHFLOW_TEST_GATE"


class ControlledNDVI:
    """``OP`` as a plain batched callable that sleeps ``$PATCHFLOW_TEST_DELAY`` s per call,
    waits while the file ``$PATCHFLOW_TEST_GATE`` exists and, in this process, fails after
    ``fail_after`` calls. Its state is empty, so it is the same operator (same job) in
    every process whatever the delay."""

    batched = True
    fail_after: ClassVar[int | None] = None
    calls: ClassVar[int] = 0

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        time.sleep(float(os.environ.get(DELAY, "0")))
        gate = os.environ.get(GATE)
        while gate and os.path.exists(gate):
            time.sleep(0.02)
        type(self).calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("planned failure")
        return np.asarray(OP(chips))


def open_input(path: Path) -> xr.DataArray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return xr.open_zarr(path, decode_coords="all")["dn"]


def result_bytes(store: Path) -> bytes:
    var = check_store(store, checksums=False).var
    assert var is not None
    return np.asarray(zarr.open_array(str(store), path=var, mode="r")[...]).tobytes()


def done_blocks(store: Path) -> int:
    return int(np.asarray(zarr.open_array(str(store), path="_patchflow/done")[...]).sum())


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("patchflow: error: "), err
    return lines[0]


def write_source(
    scene_factory: Callable[..., xr.DataArray], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The store tests' input: a 2-band uint16 700 × 600 scene in a Zarr v3 store on disk
    (256-px chunks); each test module's ``source`` fixture writes it once."""
    path = tmp_path_factory.mktemp("input") / "scene.zarr"
    scene = scene_factory((700, 600), seed=7).chunk({"y": 256, "x": 256})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scene.to_dataset(name="dn").to_zarr(path, zarr_format=3)
    return path


@pytest.fixture(scope="module")
def source(
    scene_factory: Callable[..., xr.DataArray], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The input (:func:`write_source`)."""
    return write_source(scene_factory, tmp_path_factory)


@dataclass(frozen=True)
class Reference:
    store: Path
    data: bytes


@pytest.fixture(scope="module")
def reference(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """An uninterrupted run: what every interrupted or repaired run must equal, bit for bit."""
    store = tmp_path_factory.mktemp("reference") / "clean.zarr"
    report = run(open_input(source), OP, store=store, **KW)
    assert (report.blocks, report.computed) == (9, 9)
    return Reference(store, result_bytes(store))


# --------------------------------------------------------------------------- child processes

CHILD = textwrap.dedent(
    """
    import json, os, shutil, sys, warnings
    warnings.simplefilter("ignore")
    args = json.loads(sys.argv[1])
    sys.path.insert(0, args["tests"])
    import xarray as xr
    import patchflow.io.store as store
    from test_store_safety import NEGATIVE, OP, ControlledNDVI

    def job_input():
        return xr.open_zarr(args["input"], decode_coords="all")["dn"]

    op = {"controlled": ControlledNDVI(), "negative": NEGATIVE}.get(args.get("op"), OP)
    if args.get("warm"):  # import every lazy module while we still can read them
        store.run(job_input(), op, store=args["warm"], scheduler="synchronous", **args["kw"])
        store.run(job_input(), op, store=args["warm"], resume=True, **args["kw"])
        store.open_result(args["warm"])
        shutil.rmtree(os.path.dirname(args["warm"]))
    if args.get("user") is not None and os.geteuid() == 0:
        os.setgroups([])
        os.setgid(args["user"])
        os.setuid(args["user"])
    if args.get("fsize"):
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG, not a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (args["fsize"], args["fsize"]))
    results = []
    for job in args["jobs"]:
        out = {}
        try:
            report = store.run(
                job_input(), op, store=job["store"], scheduler="synchronous",
                **job.get("run", {}), **args["kw"]
            )
            out["computed"] = report.computed
        except Exception as exc:
            out.update(
                error=type(exc).__name__,
                bases=[c.__name__ for c in type(exc).__mro__],
                message=str(exc),
            )
        if args.get("report"):  # what the store looks like from in here (private mounts)
            out["status"] = store.check_store(job["store"], checksums=False).status
            out["listing"] = sorted(os.listdir(os.path.dirname(job["store"])))
        results.append(out)
    print(json.dumps(results))
    """
)


def child_args(source: Path, jobs: list[dict[str, Any]], **extra: Any) -> list[str]:
    args = {"tests": str(TESTS), "input": str(source), "kw": KW, "jobs": jobs, **extra}
    return [sys.executable, "-c", CHILD, json.dumps(args)]


def run_child(
    source: Path, jobs: list[dict[str, Any]], env: dict[str, str] | None = None, **extra: Any
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        child_args(source, jobs, **extra),
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def child_results(proc: subprocess.CompletedProcess[str] | tuple[str, str]) -> list[Any]:
    out, err = (proc.stdout, proc.stderr) if not isinstance(proc, tuple) else proc
    lines = [line for line in out.splitlines() if line.startswith("[")]
    assert lines, f"no result from the child: {out!r} {err!r}"
    results: list[Any] = json.loads(lines[-1])
    return results


# --------------------------------------------------------------------------- job signature


def test_resume_with_another_job_names_every_difference(
    scene_factory: Callable[..., xr.DataArray], source: Path, reference: Reference, tmp_path: Path
) -> None:
    store = tmp_path / "job.zarr"
    shutil.copytree(reference.store, store)
    obj = open_input(source)
    other = tmp_path / "other.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scene = scene_factory((700, 600), seed=8).chunk({"y": 256, "x": 256})
        scene.to_dataset(name="dn").to_zarr(other, zarr_format=3)
    swapped = ops.DNToReflectance(scale=1e-4) | ops.NDVI(red=1, nir=0)

    def refused(obj: Any, op: Any, **kw: Any) -> ResumeMismatchError:
        with pytest.raises(ResumeMismatchError) as info:
            run(obj, op, store=store, resume=True, **{**KW, **kw})
        assert "overwrite=True" in str(info.value)
        return info.value

    exc = refused(obj, OP, stride=64)
    assert isinstance(exc, StoreMismatchError) and isinstance(exc, ValueError)
    assert isinstance(exc, PatchflowError)
    assert ("params.stride", [96, 96], [64, 64]) in exc.fields
    assert "stride: store [96, 96], now [64, 64]" in str(exc)

    exc = refused(obj, swapped, window="boxcar")
    assert "op[1].params.red: store 0, now 1" in str(exc)
    assert "op[1].params.nir: store 1, now 0" in str(exc)
    assert "window: store 'hann', now 'boxcar'" in str(exc)

    exc = refused(open_input(other), OP)  # same shape, dtype, chunks, CRS: another file
    assert "input source" in str(exc) and "other.zarr" in str(exc)

    exc = refused(obj, patchflow.batched(lambda chips: np.asarray(OP(chips))))
    assert "op" in {k.split(".")[0].split("[")[0] for k, _, _ in exc.fields}

    exc = refused(obj, OP, agg="mean")
    assert "agg: store 'overlap_add', now 'mean'" in str(exc)
    # refusals leave the finished store as it was
    assert check_store(store).ok
    assert result_bytes(store) == reference.data


def test_accumulate_may_change_the_operator_not_the_input_or_grid(
    source: Path, tmp_path: Path
) -> None:
    store = tmp_path / "tta.zarr"
    obj = open_input(source)
    run(obj, OP, store=store, keep_sums=True, **KW)
    report = run(obj, NEGATIVE, store=store, mode="accumulate", window="boxcar", **KW)
    assert report.computed == 9 and check_store(store).passes == 2
    with pytest.raises(ResumeMismatchError, match=r"mode='accumulate'.*stride") as info:
        run(obj, OP, store=store, mode="accumulate", **{**KW, "stride": 64})
    assert [k for k, _, _ in info.value.fields] == ["params.stride"]
    with pytest.raises(ResumeMismatchError, match="input shape"):
        run(obj.isel(x=slice(0, 500)), OP, store=store, mode="accumulate", **KW)
    assert check_store(store).ok


# --------------------------------------------------------------------------- recipe


def test_resume_without_a_recipe_says_what_to_do(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    in_memory = tmp_path / "memory.zarr"
    run(open_input(source).load(), OP, store=in_memory, **KW)
    with pytest.raises(ResumeRecipeError, match=r"in memory.*resume=True.*same input"):
        resume(in_memory)
    plain_op = tmp_path / "function.zarr"
    run(open_input(source), ControlledNDVI(), store=plain_op, **KW)
    with pytest.raises(ResumeRecipeError, match=r"ControlledNDVI.*not a patchflow.ops operator"):
        resume(plain_op)
    assert main(["resume", str(plain_op)]) == 1
    line = error_line(capsys.readouterr().err)
    assert "'patchflow apply INPUT OUTPUT --resume'" in line and "resume=True" not in line
    # a recipe whose input has gone
    moved = tmp_path / "moved.zarr"
    shutil.copytree(source, tmp_path / "copy.zarr")
    run(open_input(tmp_path / "copy.zarr"), OP, store=moved, **KW)
    shutil.rmtree(tmp_path / "copy.zarr")
    with pytest.raises(ResumeRecipeError, match=r"copy.zarr, cannot be opened.*restore it"):
        resume(moved)


# --------------------------------------------------------------------------- the input is sacred


def test_output_that_is_or_holds_the_input_is_refused_before_anything_is_deleted(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "data"
    home.mkdir()
    scene = home / "scene.zarr"
    shutil.copytree(source, scene)
    before = sorted(p.relative_to(home) for p in home.rglob("*"))
    (tmp_path / "link").symlink_to(home)
    obj = open_input(scene)
    cases = [
        (scene, "is"),
        (scene / "inner.zarr", "lies inside"),
        (home, "contains"),
        (tmp_path / "link" / "scene.zarr", "is"),  # the same directory through a link
    ]
    for target, how in cases:
        with pytest.raises(OutputOverlapsInputError, match=how):
            run(obj, OP, store=target, overwrite=True, **KW)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = xr.open_zarr(scene, decode_coords="all")
    with pytest.raises(OutputOverlapsInputError, match="is the input"):
        run(whole, OP, store=scene, overwrite=True, **KW)  # a Dataset input too
    assert main(["apply", str(scene), str(scene), "--overwrite"]) == 1
    line = error_line(capsys.readouterr().err)
    assert "OUTPUT" in line and "is INPUT" in line and "choose another OUTPUT" in line
    assert sorted(p.relative_to(home) for p in home.rglob("*")) == before
    np.testing.assert_array_equal(open_input(scene).values, open_input(source).values)


# --------------------------------------------------------------------------- crash safety

CRASHES = [
    pytest.param("create", "resume", id="kill-while-creating-then-resume"),
    pytest.param("replace", "overwrite", id="kill-while-replacing-then-overwrite"),
    pytest.param("block-4", "recipe", id="kill-mid-blocks-then-resume-from-the-store"),
    pytest.param("finalise", "cli", id="kill-while-finalising-then-patchflow-resume"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "finish"), CRASHES)
def test_sigkill_at_each_moment_then_resume_is_bit_identical(
    stage: str,
    finish: str,
    source: Path,
    reference: Reference,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = tmp_path / "out.zarr"
    if stage == "replace":
        shutil.copytree(reference.store, store)  # a finished store being replaced
    job = {"store": str(store), "run": {"overwrite": stage == "replace"}}
    proc = run_child(source, [job], env={CRASH_AT: stage})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (store / ".patchflow-lock").exists()  # the dead run's lock file, not its lock

    for opener in (open_result, patchflow.open_result):
        with pytest.raises(IncompleteStoreError):
            opener(store)
    assert main(["inspect", str(store)]) == 1
    capsys.readouterr()
    health = check_store(store)
    if stage in ("create", "replace"):
        assert health.status == "creating"
        with pytest.raises(StoreExistsError, match=r"interrupted.*overwrite=True.*resume=True"):
            run(open_input(source), OP, store=store, **KW)
    elif stage == "block-4":
        # blocks 1-3 marked done; block 4's data and checksum are on disk, its marker is not
        assert (health.status, health.done, len(health.missing)) == ("incomplete", 3, 6)
    else:
        assert (health.status, health.done, health.missing) == ("incomplete", 9, ())

    if finish == "resume":
        report = run(open_input(source), OP, store=store, resume=True, **KW)
        assert report.computed == 9
    elif finish == "overwrite":
        run(open_input(source), OP, store=store, overwrite=True, **KW)
    elif finish == "recipe":
        report = resume(store)
        assert (report.computed, report.skipped) == (6, 3)
    else:
        assert main(["resume", str(store)]) == 0
        assert "0 computed, 9 already done" in capsys.readouterr().out
    assert result_bytes(store) == reference.data
    assert check_store(store).ok
    np.testing.assert_array_equal(open_result(store).values, open_result(reference.store).values)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["accumulate", "promote"])
def test_sigkill_during_an_accumulate_pass_then_resume(
    stage: str, source: Path, tmp_path: Path
) -> None:
    store, clean = tmp_path / "tta.zarr", tmp_path / "clean.zarr"
    run(open_input(source), OP, store=store, keep_sums=True, **KW)
    shutil.copytree(store, clean)
    second = {"mode": "accumulate", "window": "boxcar"}
    run(open_input(source), NEGATIVE, store=clean, **second, **KW)
    job = {"store": str(store), "run": second}
    proc = run_child(source, [job], op="negative", env={CRASH_AT: stage})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with pytest.raises(IncompleteStoreError):
        open_result(store)
    assert check_store(store, checksums=False).status == "accumulating"
    report = resume(store)  # the recipe of the interrupted pass: NEGATIVE, boxcar
    assert report.computed == (9 if stage == "accumulate" else 0)
    assert check_store(store).passes == 2
    assert result_bytes(store) == result_bytes(clean)  # each pass added exactly once
    for key in ("num", "den"):
        np.testing.assert_array_equal(
            zarr.open_array(str(store), path=f"_patchflow/{key}")[...],
            zarr.open_array(str(clean), path=f"_patchflow/{key}")[...],
        )


# --------------------------------------------------------------------------- one writer


@pytest.mark.slow
def test_a_second_writer_is_refused_and_a_vanished_store_is_a_named_error(
    source: Path, tmp_path: Path
) -> None:
    store = tmp_path / "busy.zarr"
    gate = tmp_path / "hold-the-writer"
    job = {"store": str(store)}
    writer = subprocess.Popen(
        child_args(source, [job], op="controlled"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, DELAY: "1", GATE: str(gate)},
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and writer.poll() is None:
            health = check_store(store, checksums=False) if (store / "zarr.json").exists() else None
            if health is not None and health.locked and health.done >= 1:
                # hold it there (its next op call waits), however slow the checks below
                gate.touch()
                break
            time.sleep(0.05)
        assert writer.poll() is None, writer.communicate()
        # another process, and this one, are refused while the writer runs
        second = run_child(source, [{**job, "run": {"resume": True}}], op="controlled")
        [refused] = child_results(second)
        assert refused["error"] == "StoreLockedError" and "StoreError" in refused["bases"]
        for how in ({"overwrite": True}, {"resume": True}):
            with pytest.raises(StoreLockedError, match="being written by another run"):
                run(open_input(source), ControlledNDVI(), store=store, **how, **KW)
        health = check_store(store, checksums=False)
        assert health.status == "incomplete" and health.locked
        # the store disappears under the writer: a named error, not zarr's ArrayNotFoundError
        shutil.rmtree(store, ignore_errors=True)
        gate.unlink()
        [failed] = child_results(writer.communicate(timeout=60))
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert failed["error"] == "StoreWriteError" and "StoreError" in failed["bases"]
    assert "gone" in failed["message"] and "resume" in failed["message"]


# --------------------------------------------------------------------------- write failures


@pytest.mark.slow
def test_file_size_limit_is_a_named_error_and_touches_nothing_else(
    source: Path, reference: Reference, tmp_path: Path
) -> None:
    home = tmp_path / "fsize"
    home.mkdir()
    store = home / "out.zarr"
    proc = run_child(source, [{"store": str(store)}], fsize=64 * 1024)
    [result] = child_results(proc)
    assert result["error"] == "StoreWriteError", result
    assert "file too large" in result["message"] and "ulimit -f" in result["message"]
    assert sorted(os.listdir(home)) == ["out.zarr"]
    assert check_store(store, checksums=False).status == "incomplete"
    with pytest.raises(IncompleteStoreError):
        open_result(store)
    resume(store)
    assert result_bytes(store) == reference.data


def _can_mount_tmpfs(where: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", "mount -t tmpfs none $0", where],
        capture_output=True,
        timeout=30,
    )
    return probe.returncode == 0


@pytest.mark.slow
def test_full_disk_is_a_named_error(source: Path, tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _can_mount_tmpfs(disk):
        pytest.skip("no private mount namespace for a small tmpfs (needs CAP_SYS_ADMIN)")
    store = disk / "out.zarr"
    # a 400 kB tmpfs in a private mount namespace: it vanishes with the child
    shell = 'mount -t tmpfs -o size=400k none "$0" && exec "$@"'
    argv = child_args(source, [{"store": str(store)}], report=True)
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", shell, str(disk), *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )
    [result] = child_results(proc)
    assert result["error"] == "StoreWriteError", result
    assert "no space left on device" in result["message"]
    assert result["status"] == "incomplete" and result["listing"] == ["out.zarr"]
    assert os.listdir(disk) == []  # nothing reached the real disk


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A directory another user can traverse (pytest's own tmp dirs are private)."""
    base = Path(tempfile.mkdtemp(prefix="patchflow-store-safety-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        for path in [base, *base.rglob("*")]:
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | stat.S_IWUSR | stat.S_IRUSR | stat.S_IXUSR)
        shutil.rmtree(base)


@pytest.mark.slow
def test_read_only_locations_are_named_errors(source: Path, world_dir: Path) -> None:
    scene = world_dir / "scene.zarr"
    shutil.copytree(source, scene)
    incomplete = world_dir / "incomplete.zarr"
    ControlledNDVI.fail_after, ControlledNDVI.calls = 4, 0
    try:
        with pytest.raises(Exception, match="planned failure"):
            run(open_input(scene), ControlledNDVI(), store=incomplete, scheduler="sync", **KW)
    finally:
        ControlledNDVI.fail_after = None
    assert check_store(incomplete, checksums=False).status == "incomplete"
    locked_out = world_dir / "read-only"
    locked_out.mkdir()
    for path in [world_dir, *world_dir.rglob("*")]:  # readable by all, writable by none
        path.chmod(0o555 if path.is_dir() else 0o444)
    world_dir.chmod(0o755)
    meta_before = (incomplete / "zarr.json").read_bytes()
    listing = sorted(str(p.relative_to(world_dir)) for p in world_dir.rglob("*"))
    jobs = [
        {"store": str(locked_out / "out.zarr")},
        {"store": str(incomplete), "run": {"resume": True}},
    ]
    warm = tempfile.mkdtemp(prefix="patchflow-warm-")
    # as root, permissions bind only once privileges are dropped (to nobody)
    proc = run_child(scene, jobs, op="controlled", warm=str(Path(warm) / "w.zarr"), user=65534)
    created, resumed = child_results(proc)
    assert created["error"] == "StoreError" and "permission denied" in created["message"]
    assert "writable" in created["message"]
    assert resumed["error"] == "StoreWriteError" and "permission denied" in resumed["message"]
    assert sorted(str(p.relative_to(world_dir)) for p in world_dir.rglob("*")) == listing
    assert (incomplete / "zarr.json").read_bytes() == meta_before
    assert check_store(incomplete, checksums=False).status == "incomplete"


# --------------------------------------------------------------------------- checksums


def test_deleted_or_garbage_chunks_are_detected_and_resume_repairs_them(
    reference: Reference, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "damaged.zarr"
    shutil.copytree(reference.store, store)
    assert main(["inspect", str(store)]) == 0
    text = capsys.readouterr().out
    assert "complete" in text and "9 done, 0 missing, 0 corrupt (checksums verified)" in text
    var = check_store(store).var
    assert var is not None
    chunk = store / var / "c" / "0" / "1" / "1"  # (band chunk, block row, block col)
    assert chunk.is_file()

    chunk.unlink()
    health = check_store(store)
    assert health.corrupt == ((1, 1),) and not health.ok
    with pytest.raises(CorruptStoreError, match=r"1 block\(s\) fail their checksum.*\(1, 1\)"):
        open_result(store, verify="now")
    # by default each block is checked as it is read: the intact ones read, the deleted
    # one (which Zarr would hand out as nodata) is refused, named
    lazy = open_result(store)
    np.testing.assert_array_equal(
        lazy[..., :256, :].values, open_result(reference.store)[..., :256, :].values
    )
    with pytest.raises(CorruptStoreError, match=r"block \(1, 1\) of .*patchflow\.resume"):
        lazy.load()
    assert np.isnan(open_result(store, verify="off")[0, 256:512, 256:512].values).all()
    assert main(["inspect", str(store)]) == 1
    captured = capsys.readouterr()
    assert "1 corrupt" in captured.out and "patchflow resume STORE" in captured.err
    report = resume(store)
    assert (report.computed, report.repaired) == (1, 1)
    assert result_bytes(store) == reference.data

    (store / var / "c" / "0" / "0" / "2").write_bytes(b"not a zstd frame" * 64)
    with pytest.raises(CorruptStoreError, match=r"\(0, 2\)"):
        patchflow.open_result(store, verify=True)
    with pytest.raises(CorruptStoreError, match=r"\(0, 2\)"):
        patchflow.open_result(store).compute()
    assert main(["resume", str(store)]) == 0
    assert "1 computed, 8 already done (1 damaged block recomputed)" in capsys.readouterr().out
    assert result_bytes(store) == reference.data
    assert check_store(store).ok


# --------------------------------------------------------------------------- paths, overwrite


def test_overwrite_deletes_only_what_patchflow_wrote(source: Path, tmp_path: Path) -> None:
    store = tmp_path / "mine.zarr"
    obj = open_input(source)
    run(obj, OP, store=store, name="first", **KW)
    (store / "notes.txt").write_text("keep me")
    (store / "extra").mkdir()
    with pytest.raises(ForeignFilesError, match=r"\(extra, notes.txt\).*move them out") as info:
        run(obj, OP, store=store, overwrite=True, **KW)
    assert isinstance(info.value, StoreExistsError)
    assert (store / "notes.txt").read_text() == "keep me" and check_store(store).ok
    (store / "notes.txt").unlink()
    (store / "extra").rmdir()
    run(obj, OP, store=store, overwrite=True, name="second", **KW)
    names = set(os.listdir(store))
    assert "second" in names and "first" not in names
    assert check_store(store).var == "second"


@pytest.mark.parametrize("fmt", [3, 2])
def test_overwrite_keeps_foreign_files_inside_patchflows_folders(
    fmt: int, source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Overwrite deletes whole entry folders only when all they hold is what Zarr and
    patchflow write there (metadata, chunks, sums, failed-chip records); a file of the
    user's inside one is named and kept, and a link inside is never followed."""
    store = tmp_path / "mine.zarr"
    # (without the Zarr v3 input's encoding, which xarray would carry into a v2 store)
    obj = open_input(source).drop_encoding()
    run(obj, OP, store=store, zarr_format=fmt, keep_sums=True, **KW)
    var = check_store(store).var
    assert var is not None
    monkeypatch.setattr(ControlledNDVI, "calls", 0)
    monkeypatch.setattr(ControlledNDVI, "fail_after", 2)  # failed-chip records too
    with pytest.warns(patchflow.errors.ChipFailedWarning):
        run(obj, ControlledNDVI(), store=store, var=var, mode="accumulate", on_error="mask", **KW)
    assert (store / "_patchflow" / "chip_errors").is_dir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    mine = [
        store / var / "NOTES.txt",
        store / "_patchflow" / "notes" / "a.txt",
        store / "_patchflow" / "num" / "README",
    ]
    for file in mine:
        file.parent.mkdir(exist_ok=True)
        file.write_text("user notes")
    (store / "_patchflow" / "link").symlink_to(outside)
    before = result_bytes(store)
    with pytest.raises(ForeignFilesError) as info:
        run(obj, OP, store=store, overwrite=True, **KW)
    for name in (
        f"{var}/NOTES.txt",
        "_patchflow/notes",
        "_patchflow/num/README",
        "_patchflow/link",
    ):
        assert name in str(info.value)
    assert "move them out" in str(info.value)
    assert all(file.read_text() == "user notes" for file in mine)
    assert (outside / "precious.txt").read_text() == "keep me"
    assert result_bytes(store) == before and check_store(store).ok  # nothing was deleted

    for file in mine:
        file.unlink()
    (store / "_patchflow" / "notes").rmdir()
    (store / "_patchflow" / "link").unlink()
    run(obj, OP, store=store, overwrite=True, **KW)  # only patchflow's files: replaced
    assert check_store(store).ok and check_store(store).passes == 1
    assert (outside / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "var",
    ["a/b", "/abs", "../escaped", "..", ".", "", "a\\b", "_patchflow", "_patchflow2", ".x", 3],
)
def test_a_result_name_that_is_not_one_folder_is_refused_before_anything_is_written(
    var: Any, source: Path, tmp_path: Path
) -> None:
    store = tmp_path / "out" / "s.zarr"
    with pytest.raises(patchflow.errors.ParameterError, match="var=") as info:
        run(open_input(source), OP, store=store, var=var, **KW)
    assert repr(var) in str(info.value) and "'/'" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_a_result_named_after_the_input_is_checked_too(source: Path, tmp_path: Path) -> None:
    store = tmp_path / "out" / "s.zarr"
    with pytest.raises(patchflow.errors.ParameterError, match=r"'x/y'.*var=") as info:
        run(open_input(source).rename("x/y"), ops.DNToReflectance(scale=1e-4), store=store, **KW)
    assert "name" in str(info.value)
    assert not (tmp_path / "out").exists()
    report = run(open_input(source).rename("x/y"), OP, store=store, var="ndvi", **KW)
    assert report.var == "ndvi" and check_store(store).ok


def test_store_path_that_is_a_link_or_a_file_is_a_named_error(
    reference: Reference, source: Path, tmp_path: Path
) -> None:
    link = tmp_path / "link.zarr"
    link.symlink_to(reference.store)
    with pytest.raises(StorePathError, match="symbolic link"):
        run(open_input(source), OP, store=link, overwrite=True, **KW)
    assert check_store(reference.store).ok
    file = tmp_path / "file.zarr"
    file.write_text("not a directory")
    with pytest.raises(StorePathError, match="is a file") as info:
        run(open_input(source), OP, store=file, overwrite=True, **KW)
    assert isinstance(info.value, StoreError) and not isinstance(info.value, NotADirectoryError)
    assert file.read_text() == "not a directory"


def test_cli_resume_mismatch_uses_flags(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ndvi.zarr"
    args = ["apply", str(source), str(out), "--size", "128", "--stride", "96", "--chunks", "256"]
    assert main([*args, "-q"]) == 0
    assert main([*args[:-4], "--stride", "64", "--chunks", "256", "--resume"]) == 1
    line = error_line(capsys.readouterr().err)
    assert "--stride: store [96, 96], now [64, 64]" in line
    assert "--overwrite" in line and "overwrite=True" not in line
    assert main(["inspect", str(out), "--quick"]) == 0
    assert "checksums not verified" in capsys.readouterr().out
    assert main(["inspect", str(tmp_path / "nothing.zarr")]) == 1
    assert "no store at" in error_line(capsys.readouterr().err)
