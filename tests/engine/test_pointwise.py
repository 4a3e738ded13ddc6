"""Pointwise operators run once per block: the same result as overlapping chips, exactly
the op on the whole scene, and no halo reads."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import xarray as xr
from dask.utils import key_split

import patchflow
from patchflow.demo import dn_ndvi
from patchflow.engine.prepare import POINTWISE_AGGS
from patchflow.ops import NDVI, Astype, DNToReflectance, Lambda, op_pointwise


def _prefixes(arr: xr.DataArray) -> dict[str, int]:
    out: dict[str, int] = {}
    for key in arr.data.__dask_graph__():
        p = str(key_split(key))
        out[p] = out.get(p, 0) + 1
    return out


def test_builtin_band_math_is_declared_pointwise() -> None:
    assert op_pointwise(dn_ndvi)
    assert op_pointwise(DNToReflectance() | NDVI(red=0, nir=1) | Astype("float64"))
    assert not op_pointwise(lambda c: c)
    assert not op_pointwise(Lambda(dn_ndvi, batched=True))
    assert op_pointwise(Lambda(dn_ndvi, batched=True, pointwise=True))


@pytest.mark.parametrize("chunks", [None, 700, (512, 900)])
def test_pointwise_equals_the_whole_scene_op_exactly(
    scene_factory: Callable[..., xr.DataArray], chunks: Any
) -> None:
    scene = scene_factory((1500, 1300), seed=5, chunks=chunks)
    fast = patchflow.apply(scene, dn_ndvi, size=128, stride=96)
    assert "patchflow-halo" not in _prefixes(fast)  # one chip per block: nothing to borrow
    np.testing.assert_array_equal(fast.values, dn_ndvi(scene.values[None])[0])
    chips = patchflow.apply(scene, Lambda(dn_ndvi, batched=True), size=128, stride=96)
    np.testing.assert_allclose(fast.values, chips.values, rtol=0, atol=3e-7)


@pytest.mark.parametrize("agg", POINTWISE_AGGS)
def test_every_pointwise_merge_gives_the_op(agg: str) -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(0, 5, (2, 300, 260)).astype(np.float32)
    data[0, 10:20, 30:40] = np.nan  # invalid input stays invalid
    scene = xr.DataArray(data, dims=("band", "y", "x"))
    if agg == "soft_vote":
        op = Lambda(lambda c: np.stack([c[:, 0], c[:, 1]], 1), batched=True, pointwise=True)
        kw: dict[str, Any] = {"n_classes": 2}
    elif agg == "vote":
        op = Lambda(
            lambda c: np.nan_to_num(c[:, :1], nan=0).astype(np.uint8), batched=True, pointwise=True
        )
        kw = {"n_classes": 5, "nodata": 255}
    else:
        op = Lambda(lambda c: c[:, :1] * 2, batched=True, pointwise=True)
        kw = {}
    fast = patchflow.apply(scene, op, size=32, stride=24, agg=agg, chunks=100, **kw)
    slow_op = Lambda(op.fn, batched=True)  # the same function, not declared pointwise
    slow = patchflow.apply(scene, slow_op, size=32, stride=24, agg=agg, chunks=100, **kw)
    assert "patchflow-halo" in _prefixes(slow)
    assert "patchflow-halo" not in _prefixes(fast)
    np.testing.assert_allclose(fast.values, slow.values, rtol=0, atol=1e-6)
    assert fast.dtype == slow.dtype
    assert str(fast.rio.nodata) == str(slow.rio.nodata)


@pytest.mark.parametrize(
    "kw",
    [{"allow_gaps": True, "stride": 40}, {"on_error": "mask"}, {"pass_mask": True}],
    ids=["gaps", "mask-errors", "pass-mask"],
)
def test_chip_path_kept_where_the_shortcut_would_change_the_result(kw: dict[str, Any]) -> None:
    scene = xr.DataArray(np.ones((2, 200, 180), np.float32), dims=("band", "y", "x"))

    def op(chips: np.ndarray, *mask: np.ndarray) -> np.ndarray:
        return chips[:, :1]

    op.pointwise = True  # type: ignore[attr-defined]
    assert op_pointwise(op)
    out = patchflow.apply(
        scene, patchflow.batched(op), **{"size": 32, "stride": 24, "chunks": 64, **kw}
    )
    assert "patchflow-halo" in _prefixes(out)
    control = patchflow.apply(scene, patchflow.batched(op), size=32, stride=24, chunks=64)
    assert "patchflow-halo" not in _prefixes(control)  # the same op does take the shortcut
