"""Kept sums (``keep_sums=True`` / ``mode="accumulate"``) are verified like the result: a
deleted or garbage sums chunk is found by ``check_store``, never read as zeros or as a
codec error by a later pass, repaired by resume where one pass can recompute it, and
refused with the way out where it cannot. Real Zarr stores, real child processes killed
with SIGKILL (the helpers of ``test_store_safety``)."""

from __future__ import annotations

import json
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from test_store_safety import KW, NEGATIVE, OP, open_input, result_bytes, run_child, write_source

import patchflow.io.store as store_module
from patchflow.cli import main
from patchflow.io.store import (
    CRASH_AT,
    CorruptStoreError,
    IncompleteStoreError,
    check_store,
    open_result,
    resume,
    run,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore:The data type .* does not have a Zarr V3 spec"),
    pytest.mark.filterwarnings("ignore:Consolidated metadata is currently not"),
]

SECOND = {"mode": "accumulate", "window": "boxcar"}


@pytest.fixture(scope="module")
def source(
    scene_factory: Callable[..., xr.DataArray], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The input (``test_store_safety.write_source``)."""
    return write_source(scene_factory, tmp_path_factory)


@pytest.fixture(scope="module")
def passes(source: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A one-pass ``keep_sums`` store and the same with a second pass added, undamaged."""
    root = tmp_path_factory.mktemp("sums")
    one, two = root / "one.zarr", root / "two.zarr"
    run(open_input(source), OP, store=one, keep_sums=True, **KW)
    shutil.copytree(one, two)
    run(open_input(source), NEGATIVE, store=two, **SECOND, **KW)
    assert check_store(one).ok and check_store(two).ok
    return one, two


def sums_chunk(store: Path, key: str, block: tuple[int, int]) -> Path:
    """The chunk file of ``block`` of the kept sums ``key`` (any leading chunk index)."""
    found = [
        p
        for p in (store / "_patchflow" / key / "c").rglob("*")
        if p.is_file() and p.parts[-2:] == tuple(map(str, block))
    ]
    assert len(found) == 1, found
    return found[0]


def sums(store: Path, key: str) -> np.ndarray:
    return np.asarray(zarr.open_array(str(store), path=f"_patchflow/{key}", mode="r")[...])


def damage(chunk: Path, how: str) -> None:
    if how == "delete":
        chunk.unlink()
    else:
        chunk.write_bytes(b"not a zstd frame" * 64)


@pytest.mark.parametrize(("key", "how"), [("num", "delete"), ("num", "garbage"), ("den", "delete")])
def test_damaged_sums_of_one_pass_are_found_refused_and_recomputed_by_resume(
    key: str, how: str, passes: tuple[Path, Path], source: Path, tmp_path: Path
) -> None:
    one, two = passes
    store = tmp_path / "one.zarr"
    shutil.copytree(one, store)
    damage(sums_chunk(store, key, (1, 1)), how)

    health = check_store(store)
    assert not health.ok and health.corrupt_sums == ((1, 1),) and health.corrupt == ()
    assert isinstance(health.error(), CorruptStoreError)
    assert "kept sums" in (health.problem or "") and "patchflow.resume(store)" in (
        health.problem or ""
    )
    assert any("damaged kept sums: (1, 1)" in line for line in health.lines())
    # the result is intact: it still opens, exactly
    assert result_bytes(store) == result_bytes(one)
    open_result(store)

    # a pass would read the lost block as zeros (or fail in the codec): refused, and the
    # store stays the complete one-pass store it was
    with pytest.raises(CorruptStoreError, match=r"kept sums.*\(1, 1\).*patchflow\.resume"):
        run(open_input(source), NEGATIVE, store=store, **SECOND, **KW)
    after = check_store(store, checksums=False)
    assert (after.status, after.passes) == ("complete", 1)

    report = resume(store)  # one pass: the job recorded recomputes the block's sums
    assert (report.computed, report.repaired) == (1, 1)
    assert check_store(store).ok
    np.testing.assert_array_equal(sums(store, key), sums(one, key))
    run(open_input(source), NEGATIVE, store=store, **SECOND, **KW)
    assert result_bytes(store) == result_bytes(two)
    assert check_store(store).ok


def test_damaged_sums_of_several_passes_say_how_to_rebuild(
    passes: tuple[Path, Path], source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, two = passes
    store = tmp_path / "two.zarr"
    shutil.copytree(two, store)
    damage(sums_chunk(store, "den", (0, 2)), "garbage")  # (num: NDVI - NDVI = 0, no chunks)
    health = check_store(store)
    assert health.corrupt_sums == ((0, 2),) and not health.ok
    assert "resume cannot recompute" in (health.problem or "")
    assert "keep_sums=True" in (health.problem or "") and "mode='accumulate'" in (
        health.problem or ""
    )
    assert main(["inspect", str(store)]) == 1
    captured = capsys.readouterr()
    assert "damaged kept sums: (0, 2)" in captured.out and "(0, 2)" in captured.err
    with pytest.raises(CorruptStoreError, match=r"overwrite=True and the same passes"):
        resume(store)
    with pytest.raises(CorruptStoreError, match=r"\(0, 2\).*resume cannot recompute"):
        run(open_input(source), OP, store=store, mode="accumulate", **KW)
    assert result_bytes(store) == result_bytes(two)  # refused: nothing was changed


def test_a_damaged_result_of_several_passes_says_how_to_rebuild(
    passes: tuple[Path, Path], tmp_path: Path
) -> None:
    # resume refuses a multi-pass store (one operator cannot recompute a sum of passes):
    # check_store must not tell the user to resume it
    _, two = passes
    store = tmp_path / "two.zarr"
    shutil.copytree(two, store)
    var = check_store(store).var
    chunk = next(p for p in (store / str(var) / "c").rglob("*") if p.is_file())
    chunk.unlink()
    health = check_store(store)
    assert health.corrupt and not health.ok
    problem = health.problem or ""
    assert "2 passes" in problem and "overwrite=True and the same passes" in problem
    assert "resume" not in problem
    with pytest.raises(CorruptStoreError, match=r"overwrite=True and the same passes"):
        resume(store)
    # open_result checks each block as it is read: the error read from the block says
    # the same
    with pytest.raises(CorruptStoreError, match=r"sum of 2 passes.*same passes") as info:
        open_result(store).load()
    assert "resume" not in str(info.value)


def test_sums_damaged_while_a_pass_runs_are_refused_by_the_pass(
    passes: tuple[Path, Path], source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check before a pass cannot see damage that happens after it: the block task
    verifies the sums it reads too."""
    one, _ = passes
    store = tmp_path / "one.zarr"
    shutil.copytree(one, store)
    damage(sums_chunk(store, "num", (2, 0)), "delete")
    monkeypatch.setattr(store_module, "_sums_damaged", lambda *a, **k: [])
    with pytest.raises(CorruptStoreError, match=r"kept sums.*\(2, 0\)"):
        run(open_input(source), NEGATIVE, store=store, scheduler="synchronous", **SECOND, **KW)
    with pytest.raises(IncompleteStoreError):
        open_result(store)


def test_stores_without_sums_checksums_still_accumulate(
    passes: tuple[Path, Path], source: Path, tmp_path: Path
) -> None:
    """A store from before sums had checksums: its sums are unverifiable, so a pass adds
    to them as before; only undecodable bytes are found (a named error, not the codec's)."""
    one, two = passes
    old = tmp_path / "old.zarr"
    shutil.copytree(one, old)
    for key in ("num", "den"):
        shutil.rmtree(old / "_patchflow" / f"{key}_checksum")
    doc = json.loads((old / "zarr.json").read_text())
    del doc["attributes"]["patchflow"]["sum_checksums"]
    (old / "zarr.json").write_text(json.dumps(doc))
    broken = tmp_path / "broken.zarr"
    shutil.copytree(old, broken)

    assert check_store(old).ok
    run(open_input(source), NEGATIVE, store=old, **SECOND, **KW)
    assert result_bytes(old) == result_bytes(two) and check_store(old).ok

    damage(sums_chunk(broken, "num", (1, 0)), "garbage")
    assert check_store(broken).ok  # nothing to verify against
    with pytest.raises(CorruptStoreError, match=r"kept sums.*\(1, 0\)"):
        run(open_input(source), NEGATIVE, store=broken, **SECOND, **KW)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["first", "second", "promote"])
def test_sigkill_while_writing_sums_then_resume_keeps_them_verified(
    stage: str, passes: tuple[Path, Path], source: Path, tmp_path: Path
) -> None:
    """Killed after a block's sums and their checksum are written but before its done
    marker (or half-way through swapping in a pass's sums): no sums are reported
    damaged, and resume ends with the sums of an uninterrupted run, verified."""
    one, two = passes
    store = tmp_path / "out.zarr"
    if stage == "first":
        job = {"store": str(store), "run": {"keep_sums": True}}
        proc = run_child(source, [job], env={CRASH_AT: "block-4"})
    else:
        shutil.copytree(one, store)
        job = {"store": str(store), "run": SECOND}
        crash = "block-4" if stage == "second" else "promote"
        proc = run_child(source, [job], op="negative", env={CRASH_AT: crash})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    health = check_store(store)
    assert health.corrupt_sums == () and health.corrupt == ()
    resume(store)
    clean = one if stage == "first" else two
    assert check_store(store).ok
    assert result_bytes(store) == result_bytes(clean)
    for key in ("num", "den", "num_checksum", "den_checksum"):
        np.testing.assert_array_equal(sums(store, key), sums(clean, key))
