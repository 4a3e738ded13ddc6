"""The one graph builder: readable, distinct key prefixes and deterministic keys for every
graph it builds (apply's are checked in ``tests/test_api.py``), and halo strips that are
held for one block row, not for as many blocks as the scene is wide (issue 14)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from dask.callbacks import Callback
from dask.core import get_deps
from dask.sizeof import sizeof
from dask.utils import key_split

import patchflow
from patchflow.engine import graph
from patchflow.plan.rasters import as_block_raster
from patchflow.plan.samplers import Random


def _prefixes() -> dict[str, str]:
    return {
        name: value
        for name, value in vars(graph).items()
        if name.endswith("_PREFIX") and isinstance(value, str)
    }


def test_every_prefix_is_readable_and_none_is_another_ones_prefix() -> None:
    values = sorted(set(_prefixes().values()))
    assert len(values) == len(_prefixes())  # no two constants share a prefix
    assert all(v.startswith("patchflow-") for v in values)
    # the dashboard groups by key_split: a prefix that extends another would merge with it
    assert all(not b.startswith(a + "-") for a in values for b in values if a != b), values
    for v in values:
        assert key_split(f"{v}-0123456789abcdef0123456789abcdef") == v


def test_sampler_graphs_have_deterministic_keys(
    dask_computes: Any, scene_factory: Callable[..., xr.DataArray]
) -> None:
    scene = scene_factory((512, 400), chunks=128)
    with dask_computes(max_computes=0):
        a = patchflow.sample(scene, Random(6, seed=1), size=64)
        b = patchflow.sample(scene, Random(6, seed=1), size=64)
    assert set(a.data.__dask_graph__().keys()) == set(b.data.__dask_graph__().keys())
    c = patchflow.sample(scene, Random(6, seed=2), size=64)
    assert a.data.name != c.data.name
    assert key_split(a.data.name) == graph.SAMPLE_PREFIX


def test_block_scans_are_one_task_per_chunk_with_stable_keys() -> None:
    mask = da.ones((300, 500), dtype=bool, chunks=(128, 200))
    mask[5, 7] = False
    fn = _count_invalid
    first = graph.block_reductions(mask, fn)
    assert first.name == graph.block_reductions(mask, fn).name
    assert key_split(first.name) == graph.SCAN_PREFIX
    assert first.shape == (3, 3)
    raster = as_block_raster(mask, "mask")
    assert sum(raster.reduce_blocks(fn)) == 1
    assert raster.sum_blocks(_count_vector, 2).tolist() == [1, 9]
    numpy_raster = as_block_raster(mask.compute(), "mask")
    assert numpy_raster.reduce_blocks(fn) == [1]  # one 2048² tile holds it all
    assert numpy_raster.sum_blocks(_count_vector, 2).tolist() == [1, 1]


def _count_invalid(block: np.ndarray, r0: int, c0: int, key: tuple[int, int]) -> int:
    return int((~block).sum())


def _count_vector(block: np.ndarray, r0: int, c0: int, key: tuple[int, int]) -> np.ndarray:
    return np.array([(~block).sum(), 1], np.int64)


# -- halo strips: one task per source chunk and block row (issue 14) ---------------------

CHUNK = 64


def _zarr_scene(
    path: Path, factory: Callable[..., xr.DataArray], *, cols: int, rows: int = 3
) -> xr.DataArray:
    """A ``rows`` × ``cols`` scene of 64² chunks in a real Zarr store, opened lazily."""
    scene = factory((rows * CHUNK, cols * CHUNK), seed=cols, chunks=CHUNK)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr 3: consolidated metadata is not in the spec
        scene.to_dataset(name="dn").to_zarr(path, zarr_format=3, consolidated=False)
    return xr.open_zarr(path, consolidated=False)["dn"]


def _chip_path(scene: xr.DataArray) -> xr.DataArray:
    op = patchflow.ops.Lambda(_double, batched=True)  # not pointwise: every chip is blended
    return patchflow.apply(
        scene, op, size=32, stride=24, window="hann", output_dtype="float32", output_bands=1
    )


def _double(chips: np.ndarray) -> np.ndarray:
    return (chips[:, :1] * 2.0).astype(np.float32)


class _Held(Callback):
    """The most ``patchflow-halo`` results the scheduler held at once, and their bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.nbytes = 0

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        held = [v for k, v in state["cache"].items() if key_split(k) == graph.HALO_PREFIX]
        self.count = max(self.count, len(held))
        self.nbytes = max(self.nbytes, sum(sizeof(v) for v in held))


def test_halo_tasks_serve_one_block_row_from_a_direct_read(
    tmp_path: Path, scene_factory: Callable[..., xr.DataArray], dask_computes: Any
) -> None:
    scene = _zarr_scene(tmp_path / "s.zarr", scene_factory, cols=6)
    with dask_computes(max_computes=0):  # building the graph computes nothing
        out = _chip_path(scene)
    dsk = dict(out.data.__dask_graph__())
    deps, dependents = get_deps(dsk)
    halos = [k for k in dsk if key_split(k) == graph.HALO_PREFIX]
    assert halos
    for key in halos:
        rows = {user[-2] for user in dependents[key] if isinstance(user, tuple)}
        # a chunk's strips for the row above and for its own row are separate tasks, so
        # neither waits for the other (the first used a block row before the second)
        assert len(rows) == 1, (key, sorted(dependents[key]))
        (src,) = deps[key]
        assert key_split(src) == graph.HALO_READ_PREFIX  # only the strips' box is read
    nblocks = 3 * 6
    counts: dict[str, int] = {}
    for key in dsk:
        counts[key_split(key)] = counts.get(key_split(key), 0) + 1
    assert counts[graph.CHIPS_PREFIX] == nblocks
    assert counts[graph.HALO_PREFIX] == counts[graph.HALO_READ_PREFIX] <= 2 * nblocks
    assert len(dsk) <= 9 * nblocks + len(dict(scene.data.__dask_graph__()))  # O(blocks)


def _run_to_zarr(scene: xr.DataArray, store: Path, scheduler: str) -> tuple[np.ndarray, _Held]:
    """The chip path Zarr → Zarr (``patchflow.run``), with the halo results it held."""
    op = patchflow.ops.Lambda(_double, batched=True)
    with dask.config.set(scheduler=scheduler, num_workers=2), _Held() as held:
        report = patchflow.run(scene, op, store=str(store), size=32, stride=24, window="hann")
    return xr.open_zarr(store, consolidated=False)[report.var].values, held


@pytest.mark.filterwarnings("ignore:Object at .patchflow-lock")  # the store's lock file
@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_held_halo_strips_do_not_grow_with_scene_width(
    tmp_path: Path, scene_factory: Callable[..., xr.DataArray], scheduler: str
) -> None:
    held = {}
    for cols in (3, 12):
        scene = _zarr_scene(tmp_path / f"s{cols}.zarr", scene_factory, cols=cols, rows=6)
        values, h = _run_to_zarr(scene, tmp_path / f"out{cols}.zarr", scheduler)
        held[cols] = (h.count, h.nbytes)
        # the strips cut from direct reads are exactly those cut from whole chunks (the
        # fallback for inputs that are not plain getters)
        fallback, _ = _run_to_zarr(scene + 0, tmp_path / f"fallback{cols}.zarr", scheduler)
        np.testing.assert_array_equal(values, fallback)
        whole = _chip_path(scene.chunk({"y": -1, "x": -1})).values  # one block: no halo
        np.testing.assert_allclose(values, whole, rtol=1e-6, atol=0)
    # a chunk's strips wait for a block or two, not for a block row: a scene four times
    # as wide holds about as many (before issue 14 it held one per block column, plus one:
    # 13 here). With threads, which block runs next varies with the machine's load: 5 or
    # 6 strips were seen for the same graph, so the bound leaves room for that, not for 13
    assert held[12][0] <= held[3][0] + 3 < 12, held
    assert held[12][1] <= 2 * held[3][1], held
