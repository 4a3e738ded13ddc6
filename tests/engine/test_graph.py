"""The one graph builder: readable, distinct key prefixes and deterministic keys for every
graph it builds (apply's are checked in ``tests/test_api.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
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
