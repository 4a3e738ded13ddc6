"""Per-chip errors as records (issue 16): ``on_error="skip"`` / ``"mask"`` and their records.

The operator raises on every chip whose input holds a marker value, so which chips fail is
known in advance from the grid alone. ``skip`` must make exactly those chips' footprints
invalid and leave every other pixel bit-identical to a run of the same operator without the
failure; ``mask`` must fill footprint pixels other chips reach. Each failed chip is
recorded (index, bounds, exception, traceback): in the store (``check_store``,
``RunReport``, ``patchflow inspect``) for ``run``, as a warning per chip for ``apply``.
Inputs are real GeoTIFFs (rioxarray) and results real Zarr stores (v2 and v3).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import rasterio
import rioxarray
import xarray as xr
import zarr

import patchflow
from patchflow.engine.aggregate import AGGREGATIONS
from patchflow.errors import ChipFailedWarning, ParameterError
from patchflow.io.report import ChipError
from patchflow.io.store import check_store

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cli"))
from clirun import CLI

# rioxarray's own affine deprecation, re-emitted around pytest.warns blocks
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")

SHAPE = (300, 260)
SIZE, STRIDE, CHUNKS = 64, 48, 128
KW: dict[str, Any] = {"size": SIZE, "stride": STRIDE, "chunks": CHUNKS}
#: a DN the synthetic scene never holds (it is 1 … 10000)
MARK = 65000
#: marker pixels: one inside a single chip whose footprint crosses a block edge (rows
#: 96:160 across the block edge at 128), one at the far corner (4 chips, shifted ones)
MARKERS = ((130, 20), (250, 250))
#: switched off to show that recomputed blocks drop records that no longer hold
FAILING = {"on": True}


def value(x: np.ndarray) -> np.ndarray:
    """The operator's result on a chip (``(band, h, w)``) when it does not fail."""
    return (x[:1] * 0.5 + x[1:2] * 0.25).astype(np.float32)


def fails_on_marker(x: np.ndarray) -> np.ndarray:
    """:func:`value`, raising on a chip holding :data:`MARK` (while ``FAILING["on"]``)."""
    if FAILING["on"] and (x == MARK).any():
        raise ValueError(f"marker {MARK} in chip (pid {os.getpid()})")
    return value(x)


def labels_failing(x: np.ndarray) -> np.ndarray:
    if (x == MARK).any():
        raise ValueError("marker in chip")
    return (np.nan_to_num(x[0]) % 3).astype(np.uint8)[None]


def labels_clean(x: np.ndarray) -> np.ndarray:
    return (np.nan_to_num(x[0]) % 3).astype(np.uint8)[None]


def scores_failing(x: np.ndarray) -> np.ndarray:
    if (x == MARK).any():
        raise ValueError("marker in chip")
    return scores_clean(x)


def scores_clean(x: np.ndarray) -> np.ndarray:
    base = x[0] / 10000.0
    return np.stack([base, 1 - base, (x[1] / 10000.0) % 0.7]).astype(np.float32)


def mean_var_failing(x: np.ndarray) -> np.ndarray:
    if (x == MARK).any():
        raise ValueError("marker in chip")
    return mean_var_clean(x)


def mean_var_clean(x: np.ndarray) -> np.ndarray:
    return np.stack([x[0] * 0.5, 1.0 + x[1] * 1e-4]).astype(np.float32)


def int16_failing(x: np.ndarray) -> np.ndarray:
    if (x == MARK).any():
        raise ValueError("marker in chip")
    return int16_clean(x)


def int16_clean(x: np.ndarray) -> np.ndarray:
    return (x[:1] // 2).astype(np.int16)


def value_clean(x: np.ndarray) -> np.ndarray:
    return value(x)


# --------------------------------------------------------------------------- the grid


def anchors(length: int) -> list[int]:
    """Chip starts along one axis (boundary="shift": the last chip moved inside)."""
    out = list(range(0, length - SIZE + 1, STRIDE))
    if out[-1] + SIZE < length:
        out.append(length - SIZE)
    return out


AY, AX = anchors(SHAPE[0]), anchors(SHAPE[1])


def failing_chips(markers: tuple[tuple[int, int], ...] = MARKERS) -> dict[int, tuple[int, int]]:
    """``{chip index: (row, col)}`` of the chips holding a marker."""
    out = {}
    for iy, y in enumerate(AY):
        for ix, x in enumerate(AX):
            if any(y <= r < y + SIZE and x <= c < x + SIZE for r, c in markers):
                out[iy * len(AX) + ix] = (y, x)
    return out


FAILED = failing_chips()


def footprint(chips: dict[int, tuple[int, int]] = FAILED) -> np.ndarray:
    mask = np.zeros(SHAPE, bool)
    for y, x in chips.values():
        mask[y : y + SIZE, x : x + SIZE] = True
    return mask


def covered_by_others(chips: dict[int, tuple[int, int]] = FAILED) -> np.ndarray:
    """Pixels some chip that did not fail covers."""
    mask = np.zeros(SHAPE, bool)
    for iy, y in enumerate(AY):
        for ix, x in enumerate(AX):
            if iy * len(AX) + ix not in chips:
                mask[y : y + SIZE, x : x + SIZE] = True
    return mask


# --------------------------------------------------------------------------- inputs


def marked(scene: xr.DataArray) -> xr.DataArray:
    out = scene.copy(deep=True)
    for r, c in MARKERS:
        out.values[0, r, c] = MARK
    return out


@pytest.fixture(scope="module")
def tif(scene_factory: Callable[..., xr.DataArray], tmp_path_factory: Any) -> Path:
    """A tiled uint16 GeoTIFF (nodata 0) of the synthetic scene with the markers."""
    path = tmp_path_factory.mktemp("chip_errors") / "marked.tif"
    marked(scene_factory(SHAPE)).rio.to_raster(path, tiled=True, blockxsize=128, blockysize=128)
    with rasterio.open(path) as src:
        assert src.read(1)[MARKERS[0]] == MARK
    return path


def open_tif(path: Path) -> xr.DataArray:
    arr = rioxarray.open_rasterio(path, chunks={"x": CHUNKS, "y": CHUNKS})
    assert isinstance(arr, xr.DataArray)
    return arr


@pytest.fixture(scope="module")
def clean(tif: Path) -> np.ndarray:
    """The same operator without the failure (a run that never raises)."""
    return np.asarray(patchflow.apply(open_tif(tif), value_clean, **KW).values)


@pytest.fixture(autouse=True)
def _failing() -> Iterator[None]:
    FAILING["on"] = True
    yield
    FAILING["on"] = True


def check_records(errors: tuple[ChipError, ...], transform: Any, on_error: str) -> None:
    """Exactly the expected chips, each with its bounds, exception and traceback."""
    assert [e.chip for e in errors] == sorted(FAILED)
    for err in errors:
        y, x = FAILED[err.chip]
        assert err.bounds == (y, y + SIZE, x, x + SIZE)
        a, _, c, _, e, f = tuple(transform)[:6]
        expected = (c + x * a, f + (y + SIZE) * e, c + (x + SIZE) * a, f + y * e)
        assert err.world_bounds == pytest.approx(expected)
        assert err.crs == "EPSG:32610"
        assert err.error_type == "ValueError"
        assert err.message.startswith(f"marker {MARK} in chip")
        assert "in fails_on_marker" in err.traceback
        assert err.traceback.rstrip().endswith(f"ValueError: {err.message}")
        assert len(err.traceback) <= 2000
        assert err.on_error == on_error
        assert f"chip {err.chip} (rows {y}:{y + SIZE}, cols {x}:{x + SIZE}" in err.describe()


# --------------------------------------------------------------------------- skip


def test_grid_has_the_expected_failures() -> None:
    # one chip at the first marker, four at the corner one (two rows, two shifted cols)
    assert len(FAILED) == 5
    assert any(y < CHUNKS < y + SIZE for y, _ in FAILED.values())


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_skip_store_footprints_nodata_rest_identical(
    tif: Path, clean: np.ndarray, tmp_path: Path, zarr_format: Literal[2, 3]
) -> None:
    src = open_tif(tif)
    store = tmp_path / "skip.zarr"
    with pytest.warns(ChipFailedWarning) as caught:
        report = patchflow.run(
            src, fails_on_marker, store=store, on_error="skip", zarr_format=zarr_format, **KW
        )
    lines = [str(w.message) for w in caught if issubclass(w.category, ChipFailedWarning)]
    assert lines == [
        f"{len(FAILED)} chips failed (on_error='skip'): their pixels are nodata; see "
        f"patchflow inspect {store} / check_store({str(store)!r}).chip_errors"
    ]
    out = np.asarray(report.open(verify=True).values)
    bad = np.isnan(out[0])
    np.testing.assert_array_equal(bad, footprint())
    # every other pixel is bit for bit the run without the failure
    np.testing.assert_array_equal(out[0][~bad], clean[0][~bad])

    assert report.failed_chips == len(FAILED)
    check_records(report.chip_errors, src.rio.transform(), "skip")
    health = check_store(store)
    assert health.ok and health.status == "complete"
    assert health.failed_chips == len(FAILED)
    assert health.chip_errors == report.chip_errors
    files = sorted(p.name for p in (store / "_patchflow" / "chip_errors").iterdir())
    blocks = {e.block for e in report.chip_errors}
    assert files == sorted(f"{b[0]}.{b[1]}.json" for b in blocks if b is not None)
    assert None not in blocks


def apply_case(agg: str) -> tuple[Callable[..., Any], Callable[..., Any], dict[str, Any]]:
    """The failing op, its clean twin and extra keywords for ``agg``."""
    if agg == "vote":
        return labels_failing, labels_clean, {"n_classes": 3}
    if agg == "mode":
        # labels 0..2 next to the input's nodata 0: the result needs another nodata
        return labels_failing, labels_clean, {"n_classes": 3, "nodata": 255}
    if agg == "soft_vote":
        return scores_failing, scores_clean, {}
    if agg == "inverse_variance":
        return mean_var_failing, mean_var_clean, {}
    return fails_on_marker, value_clean, {}


@pytest.mark.parametrize("agg", sorted(AGGREGATIONS))
def test_skip_every_aggregation(
    scene_factory: Callable[..., xr.DataArray], agg: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    scene = marked(scene_factory(SHAPE))
    failing, ok, extra = apply_case(agg)
    kw = {**KW, "agg": agg, **extra}
    want = patchflow.apply(scene, ok, **kw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = patchflow.apply(scene, failing, on_error="skip", **kw)
        values = np.asarray(got.values)
    chip_warnings = [str(w.message) for w in caught if w.category is ChipFailedWarning]
    assert len(chip_warnings) == len(FAILED)
    for chip, (y, x) in FAILED.items():
        text = f"chip {chip} (rows {y}:{y + SIZE}, cols {x}:{x + SIZE};"
        assert sum(m.startswith(text) for m in chip_warnings) == 1, chip_warnings
    assert all("ValueError: marker" in m and "on_error='skip'" in m for m in chip_warnings)

    reference = np.asarray(want.values)
    fill = got.rio.nodata
    area = np.broadcast_to(footprint(), values.shape)
    if values.dtype.kind == "f":
        assert np.isnan(values[area]).all()
        invalid = np.isnan(values)
    else:
        assert fill is not None and (values[area] == fill).all()
        invalid = values == fill
    np.testing.assert_array_equal(invalid, area)
    # outside the footprints: exactly the run without the failure
    np.testing.assert_array_equal(values[~area], reference[~area])


def test_skip_int16_without_nodata_gets_one(
    scene_factory: Callable[..., xr.DataArray], tmp_path: Path
) -> None:
    scene = marked(scene_factory(SHAPE)).rio.write_nodata(None, encoded=False)
    path = tmp_path / "no_nodata.tif"
    scene.rio.to_raster(path, tiled=True, blockxsize=128, blockysize=128)
    with rasterio.open(path) as src:
        assert src.nodata is None
    arr = open_tif(path)
    plain = patchflow.apply(arr, int16_clean, agg="max", **KW)
    assert plain.dtype == np.int16 and plain.rio.nodata is None
    with pytest.warns(ChipFailedWarning):
        got = patchflow.apply(arr, int16_failing, agg="max", on_error="skip", **KW)
        values = np.asarray(got.values)
    assert got.dtype == np.int16
    nodata = got.rio.nodata
    assert nodata is not None
    area = footprint()
    assert (values[0][area] == nodata).all()
    assert not (values[0][~area] == nodata).any()
    np.testing.assert_array_equal(values[0][~area], np.asarray(plain.values)[0][~area])

    with pytest.warns(ChipFailedWarning):
        report = patchflow.run(
            arr, int16_failing, store=tmp_path / "i16.zarr", agg="max", on_error="skip", **KW
        )
    # the stored chunks as written (xarray would decode the nodata to NaN)
    stored = zarr.open_array(str(tmp_path / "i16.zarr"), path=report.var, mode="r")
    assert stored.dtype == np.int16
    np.testing.assert_array_equal(stored[...], values)
    # and read back as apply returns it: int16, the nodata as a value
    reopened = report.open()
    assert reopened.dtype == np.int16 and reopened.rio.nodata == nodata
    np.testing.assert_array_equal(reopened.values, values)


def test_skip_refuses_sums_for_later_passes(tif: Path, tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="on_error='skip' cannot be combined with keep_sums"):
        patchflow.run(
            open_tif(tif),
            fails_on_marker,
            store=tmp_path / "sums.zarr",
            on_error="skip",
            keep_sums=True,
            **KW,
        )
    assert not (tmp_path / "sums.zarr").exists()


# --------------------------------------------------------------------------- mask


def test_mask_fills_from_neighbours_and_records(
    tif: Path, clean: np.ndarray, tmp_path: Path
) -> None:
    src = open_tif(tif)
    with pytest.warns(ChipFailedWarning, match=r"5 chips failed \(on_error='mask'\)"):
        report = patchflow.run(
            src, fails_on_marker, store=tmp_path / "mask.zarr", on_error="mask", **KW
        )
    out = np.asarray(report.open().values)[0]
    area, others = footprint(), covered_by_others()
    assert np.isfinite(out[area & others]).all()
    assert np.isnan(out[area & ~others]).all()
    # outside the footprints the same chips blend, only through an explicit denominator
    np.testing.assert_allclose(out[~area], clean[0][~area], rtol=1e-6)
    check_records(report.chip_errors, src.rio.transform(), "mask")
    assert check_store(tmp_path / "mask.zarr").chip_errors == report.chip_errors


def test_apply_mask_warns_per_chip(tif: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        patchflow.apply(open_tif(tif), fails_on_marker, on_error="mask", **KW).compute()
    chip_warnings = [str(w.message) for w in caught if w.category is ChipFailedWarning]
    assert len(chip_warnings) == len(FAILED)
    assert all("on_error='mask': it got zero weight" in m for m in chip_warnings)


def test_raise_is_unchanged(tif: Path) -> None:
    with pytest.raises(patchflow.errors.OperatorError, match="marker 65000 in chip"):
        patchflow.apply(open_tif(tif), fails_on_marker, **KW).compute()


# --------------------------------------------------------------------------- resume


def owner(chip: int) -> tuple[int, int]:
    y, x = FAILED[chip]
    return y // CHUNKS, x // CHUNKS


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_resume_rewrites_records(tif: Path, tmp_path: Path, zarr_format: int) -> None:
    src = open_tif(tif)
    store = tmp_path / "resume.zarr"
    kw = {**KW, "on_error": "skip", "zarr_format": zarr_format}
    with pytest.warns(ChipFailedWarning):
        first = patchflow.run(src, fails_on_marker, store=store, **kw)
    single = min(FAILED)  # the chip at the first marker, alone in its block
    block = owner(single)
    assert [e.chip for e in first.chip_errors if e.block == block] == [single]
    done = zarr.open_array(store, path="_patchflow/done", mode="r+")

    # the block recomputed with the chip still failing: the same records, not twice
    done[block] = 0
    with pytest.warns(ChipFailedWarning):
        again = patchflow.run(src, fails_on_marker, store=store, resume=True, **kw)
    assert again.computed == 1
    assert again.chip_errors == first.chip_errors
    assert check_store(store).chip_errors == first.chip_errors

    # a deleted record file is damage: found by check_store, restored by resume
    record = store / "_patchflow" / "chip_errors" / f"{block[0]}.{block[1]}.json"
    record.unlink()
    health = check_store(store)
    assert not health.ok and health.corrupt == (block,)
    with pytest.warns(ChipFailedWarning):
        repaired = patchflow.run(src, fails_on_marker, store=store, resume=True, **kw)
    assert repaired.repaired == 1 and record.exists()
    assert check_store(store).ok and check_store(store).chip_errors == first.chip_errors

    # the block recomputed after the failure went away: its record goes with it
    FAILING["on"] = False
    done[block] = 0
    with pytest.warns(ChipFailedWarning, match=f"{len(FAILED) - 1} chips failed"):
        fixed = patchflow.run(src, fails_on_marker, store=store, resume=True, **kw)
    assert not record.exists()
    assert [e.chip for e in fixed.chip_errors] == sorted(set(FAILED) - {single})
    health = check_store(store)
    assert health.ok and health.failed_chips == len(FAILED) - 1
    assert health.chip_errors == fixed.chip_errors


def test_overwrite_drops_old_records(tif: Path, tmp_path: Path) -> None:
    store = tmp_path / "over.zarr"
    with pytest.warns(ChipFailedWarning):
        patchflow.run(open_tif(tif), fails_on_marker, store=store, on_error="skip", **KW)
    FAILING["on"] = False
    with warnings.catch_warnings():
        warnings.simplefilter("error", ChipFailedWarning)
        report = patchflow.run(
            open_tif(tif), fails_on_marker, store=store, on_error="skip", overwrite=True, **KW
        )
    assert report.failed_chips == 0 and report.chip_errors == ()
    assert check_store(store).chip_errors == ()
    assert not (store / "_patchflow" / "chip_errors").exists()


# --------------------------------------------------------------------------- CLI


def test_cli_on_error_skip_and_inspect(tif: Path, tmp_path: Path) -> None:
    (tmp_path / "failmod.py").write_text(
        "import numpy as np\n"
        f"MARK = {MARK}\n"
        "def fails(x):\n"
        "    if (x == MARK).any():\n"
        "        raise ValueError('marker in chip')\n"
        "    return (x[:1] * 0.5 + x[1:2] * 0.25).astype(np.float32)\n"
    )
    out = tmp_path / "cli.zarr"
    cli = CLI()
    proc = cli.run(
        "apply",
        str(tif),
        str(out),
        "--op",
        "failmod:fails",
        "--size",
        str(SIZE),
        "--stride",
        str(STRIDE),
        "--chunks",
        str(CHUNKS),
        "--on-error",
        "skip",
        env={"PYTHONPATH": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (
        f"patchflow: warning: {len(FAILED)} chips failed (on_error='skip'): their pixels are "
        f"nodata; see patchflow inspect {out} / check_store({str(out)!r}).chip_errors"
    )
    assert np.isnan(np.asarray(patchflow.open_result(out).values)[0]).sum() == footprint().sum()

    listed = cli.call("inspect", str(out))
    assert listed.returncode == 0, listed.stderr
    assert f"failed chips: {len(FAILED)} (on_error='skip'" in listed.stdout
    for chip, (y, x) in FAILED.items():
        line = f"chip {chip} (rows {y}:{y + SIZE}, cols {x}:{x + SIZE}; x "
        assert line in listed.stdout
    assert listed.stdout.count("ValueError: marker in chip") == len(FAILED)
    assert "Traceback" not in listed.stdout
    verbose = cli.call("inspect", str(out), "--verbose")
    assert verbose.returncode == 0
    assert verbose.stdout.count("Traceback (most recent call last)") == len(FAILED)
    assert "failmod.py" in verbose.stdout


# --------------------------------------------------------------------------- distributed


@pytest.mark.slow
def test_records_from_worker_processes(tif: Path, clean: np.ndarray, tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    cloudpickle = pytest.importorskip("cloudpickle")
    # the workers cannot import this test module: ship its functions by value
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        with (
            distributed.LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            distributed.Client(cluster),
        ):
            store = tmp_path / "dist.zarr"
            with pytest.warns(ChipFailedWarning):
                report = patchflow.run(
                    open_tif(tif), fails_on_marker, store=store, on_error="skip", **KW
                )
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    check_records(report.chip_errors, open_tif(tif).rio.transform(), "skip")
    pids = {e.message.rsplit("pid ", 1)[1].rstrip(")") for e in report.chip_errors}
    assert str(os.getpid()) not in pids
    out = np.asarray(report.open().values)[0]
    np.testing.assert_array_equal(np.isnan(out), footprint())
    np.testing.assert_array_equal(out[~footprint()], clean[0][~footprint()])
