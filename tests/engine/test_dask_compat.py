"""The private-dask shim (issue 13): direct reads where dask's tasks are understood, and an
exact fallback (cut from the whole chunk) where they are not."""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from dask.highlevelgraph import HighLevelGraph
from dask.utils import key_split

import patchflow
from patchflow import _dask_compat
from patchflow.engine import graph
from patchflow.sampling.chips import READ_PREFIX, chip_array

H, W = 300, 260
CHUNKS = (1, 100, 90)  # ragged last column chunk (80)
HALO_READ = graph.HALO_READ_PREFIX


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    """Every pixel encodes its position, so a misplaced read cannot go unnoticed."""
    return np.arange(H * W, dtype=np.int64).reshape(1, H, W)


@pytest.fixture(scope="module")
def zarr_path(tmp_path_factory: pytest.TempPathFactory, data: np.ndarray) -> Path:
    path = tmp_path_factory.mktemp("compat") / "scene.zarr"
    ds = xr.DataArray(data, dims=("band", "y", "x")).to_dataset(name="v")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr 3: consolidated metadata is not in the spec
        ds.to_zarr(path, mode="w", encoding={"v": {"chunks": CHUNKS}})
    return path


def _open_zarr(path: Path) -> xr.DataArray:
    return xr.open_zarr(path)["v"]


def _zarr_array(path: Path) -> Any:
    return zarr.open_group(str(path), mode="r")["v"]


# every flavour of dask getter the shim must recognise
SOURCES: dict[str, Callable[[Path], xr.DataArray]] = {
    "open_zarr": _open_zarr,
    "from_array": lambda p: xr.DataArray(
        da.from_array(_zarr_array(p), chunks=CHUNKS), dims=("band", "y", "x")
    ),
    "from_array-inline": lambda p: xr.DataArray(
        da.from_array(_zarr_array(p), chunks=CHUNKS, inline_array=True), dims=("band", "y", "x")
    ),
    "from_array-nofancy-lock": lambda p: xr.DataArray(
        da.from_array(_zarr_array(p), chunks=CHUNKS, fancy=False, lock=True),
        dims=("band", "y", "x"),
    ),
}


def identity(chip: np.ndarray) -> np.ndarray:
    return chip.astype(np.float64)


def local_contrast(chip: np.ndarray) -> np.ndarray:
    """Depends on every pixel of the chip, so wrong halo data changes the result."""
    c = chip.astype(np.float64)
    return (c - c.mean()) / (1.0 + c.std())


def prefixes(arr: xr.DataArray) -> dict[str, int]:
    counts: dict[str, int] = {}
    for key in dict(arr.data.__dask_graph__()):
        counts[key_split(key)] = counts.get(key_split(key), 0) + 1
    return counts


def run(arr: xr.DataArray, op: Callable[[np.ndarray], np.ndarray], **kw: Any) -> xr.DataArray:
    return patchflow.apply(
        arr, op, size=64, stride=48, output_dtype="float64", output_bands=1, **kw
    )


def no_getters(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend dask's task representation is unknown: the shim recognises nothing."""
    monkeypatch.setattr(_dask_compat, "AVAILABLE", False)


# -- the shim on its own ----------------------------------------------------------------


def test_shim_recognises_dask_getters(zarr_path: Path) -> None:
    for name, make in SOURCES.items():
        x = make(zarr_path).data
        task = graph.input_tasks(x)[(x.name, 0, 1, 2)]
        call = _dask_compat.chunk_getter_call(task)
        assert call is not None, name
        assert call.index[-2:] == (slice(100, 200), slice(180, 260)), name


@pytest.mark.parametrize(
    "task",
    [
        None,
        np.zeros(3),
        ("not-a-task", 1),
        (operator.add, 1, 2),  # legacy tuple task
    ],
)
def test_shim_rejects_other_tasks(task: Any) -> None:
    assert _dask_compat.chunk_getter_call(task) is None


def test_shim_rejects_non_getter_chunks() -> None:
    x = da.from_array(np.ones((2, 4, 4)), chunks=2) + 0
    for task in graph.input_tasks(x).values():
        assert _dask_compat.chunk_getter_call(task) is None


def test_shim_unknown_representation_reads_nothing_directly(
    zarr_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = _open_zarr(zarr_path).data
    source = graph.input_tasks(x)
    key = (x.name, 0, 1, 1)
    assert graph.direct_read(source, key, ("k", 0), (0, 10), (0, 10)) is not None
    no_getters(monkeypatch)
    assert _dask_compat.chunk_getter_call(source[key]) is None
    assert graph.direct_read(source, key, ("k", 0), (0, 10), (0, 10)) is None


def test_make_getter_task_reads_the_sub_window(zarr_path: Path, data: np.ndarray) -> None:
    for name, make in SOURCES.items():
        x = make(zarr_path).data
        source = graph.input_tasks(x)
        key = (x.name, 0, 1, 2)  # rows 100:200, cols 180:260
        task = graph.direct_read(source, key, ("sub", 0), (7, 31), (5, 66))
        assert task is not None, name
        layer = {("sub", 0): task}
        hlg = HighLevelGraph.from_collections("sub", layer, dependencies=[x])
        (got,) = dask.get(hlg, [("sub", 0)])
        np.testing.assert_array_equal(got, data[:, 107:131, 185:246], err_msg=name)


# -- end to end: direct read used, exact, and the fallback equal to it ------------------


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_direct_read_is_used_and_exact(
    zarr_path: Path, data: np.ndarray, source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    arr = SOURCES[source](zarr_path)
    assert arr.data.chunks == ((1,), (100, 100, 100), (90, 90, 80))

    out = run(arr, identity, agg="centre")
    assert prefixes(out).get(HALO_READ, 0) > 0  # halo strips read straight from storage
    direct = out.values
    np.testing.assert_array_equal(direct, data.astype(np.float64))  # every pixel in place

    blended = run(arr, local_contrast, window="hann", boundary="pad", pad_mode="reflect")
    assert prefixes(blended).get(HALO_READ, 0) > 0
    direct_blended = blended.values

    no_getters(monkeypatch)
    fb = run(arr, identity, agg="centre")
    assert HALO_READ not in prefixes(fb)
    np.testing.assert_array_equal(fb.values, direct)
    fb_blended = run(arr, local_contrast, window="hann", boundary="pad", pad_mode="reflect")
    assert HALO_READ not in prefixes(fb_blended)
    np.testing.assert_array_equal(fb_blended.values, direct_blended)


def test_non_getter_chunks_fall_back_exactly(zarr_path: Path, data: np.ndarray) -> None:
    arr = _open_zarr(zarr_path)
    direct = run(arr, local_contrast, window="hann").values
    shifted = arr + 0  # chunk tasks are additions, not getters: the shim must decline
    out = run(shifted, local_contrast, window="hann")
    assert HALO_READ not in prefixes(out)
    assert prefixes(out).get(f"{graph.HALO_PREFIX}", 0) > 0  # strips cut from whole chunks
    np.testing.assert_array_equal(out.values, direct)
    exact = run(shifted, identity, agg="centre").values
    np.testing.assert_array_equal(exact, data.astype(np.float64))


def test_sample_direct_and_fallback(
    zarr_path: Path, data: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = _open_zarr(zarr_path).data
    anchors = np.array([[0, 0], [80, 70], [95, 170], [236, 196], [150, 85]])
    size = (64, 64)
    expected = np.stack([data[:, r : r + 64, c : c + 64] for r, c in anchors])

    chips = chip_array(x, anchors, size, chips_per_task=2)
    assert any(key_split(k) == READ_PREFIX for k in dict(chips.__dask_graph__()))
    np.testing.assert_array_equal(chips.compute(), expected)

    no_getters(monkeypatch)
    fb = chip_array(x, anchors, size, chips_per_task=2)
    assert not any(key_split(k) == READ_PREFIX for k in dict(fb.__dask_graph__()))
    np.testing.assert_array_equal(fb.compute(), expected)
