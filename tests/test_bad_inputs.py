"""The bad-input catalogue (issue 5): every case gets a clear, asserted message."""

from __future__ import annotations

import os
import stat
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

import patchflow
from patchflow.demo import dn_ndvi


def ident(chip: np.ndarray) -> np.ndarray:
    return chip.astype(np.float64)


def test_missing_spatial_dims() -> None:
    arr = xr.DataArray(np.zeros((2, 50, 50)), dims=("band", "row", "col"))
    with pytest.raises(
        patchflow.errors.DimensionError, match=r"no spatial dimensions.*set_spatial_dims"
    ):
        arr.patch.apply(ident)


def test_non_monotonic_coords(small_scene: xr.DataArray) -> None:
    shuffled = small_scene.isel(x=np.r_[1, 0, 2 : small_scene.sizes["x"]])
    with pytest.raises(
        patchflow.errors.DimensionError, match=r"'x' coordinate is not monotonic.*sortby"
    ):
        shuffled.patch.apply(ident, size=64, stride=48)


def test_irregular_coords(small_scene: xr.DataArray) -> None:
    x = small_scene.x.values.copy()
    x[100:] += 3.0
    with pytest.raises(patchflow.errors.DimensionError, match="irregularly spaced"):
        small_scene.assign_coords(x=x).patch.apply(ident, size=64, stride=48)


def test_chunks_smaller_than_chip_warn_but_work(small_scene: xr.DataArray) -> None:
    with pytest.warns(patchflow.PatchflowWarning, match=r"smaller than the chip.*chunks >= 128"):
        out = small_scene.patch.apply(dn_ndvi, size=128, stride=96, chunks=(50, 40))
    np.testing.assert_allclose(out.values, dn_ndvi(small_scene.values[None])[0], atol=1e-6)


def test_chip_larger_than_scene_with_shift(scene_factory: Callable[..., xr.DataArray]) -> None:
    with pytest.raises(patchflow.errors.GridError, match=r"larger than the scene.*boundary='pad'"):
        scene_factory((100, 100)).patch.apply(ident, size=128, stride=96)


@pytest.mark.parametrize("stride", [0, -4])
def test_stride_not_positive(small_scene: xr.DataArray, stride: int) -> None:
    with pytest.raises(patchflow.errors.GridError, match="stride must be positive"):
        small_scene.patch.apply(ident, size=64, stride=stride)


def test_nan_only_scene(tmp_path: Path) -> None:
    arr = xr.DataArray(np.full((1, 200, 200), np.nan), dims=("band", "y", "x"))
    out = arr.patch.apply(ident, size=64, stride=48)
    assert np.isnan(out.values).all()
    with pytest.warns(patchflow.PatchflowWarning, match="no valid output pixel"):
        patchflow.run(arr, ident, store=tmp_path / "nan.zarr", size=64, stride=48)


def test_op_returning_nan_everywhere(small_scene: xr.DataArray, tmp_path: Path) -> None:
    def nan_op(chip: np.ndarray) -> np.ndarray:
        return np.full(chip.shape, np.nan)

    with pytest.warns(patchflow.PatchflowWarning, match="operator returned NaN/inf"):
        patchflow.run(small_scene, nan_op, store=tmp_path / "n.zarr", size=64, stride=48)


def test_op_wrong_dtype_kind(small_scene: xr.DataArray) -> None:
    def strings(chip: np.ndarray) -> np.ndarray:
        return chip.astype(str)

    with pytest.raises(patchflow.errors.OperatorError, match=r"dtype <U\d+.*must return numbers"):
        small_scene.patch.apply(strings, size=64, stride=48)


def test_op_changing_batch_length(small_scene: xr.DataArray) -> None:
    drop_one = patchflow.batched(lambda c: dn_ndvi(c)[:-1] if len(c) > 1 else dn_ndvi(c))
    out = small_scene.patch.apply(drop_one, size=64, stride=48)
    with pytest.raises(patchflow.errors.OperatorError, match="batch length"):
        out.compute()


def test_window_array_wrong_shape(small_scene: xr.DataArray) -> None:
    with pytest.raises(
        patchflow.errors.WindowError, match=r"shape \(10, 10\).*chips are \(64, 64\)"
    ):
        small_scene.patch.apply(ident, size=64, stride=48, window=np.ones((10, 10)))


@pytest.mark.parametrize("bad", [-1.0, np.nan])
def test_window_negative_or_nan(small_scene: xr.DataArray, bad: float) -> None:
    w = np.ones((64, 64))
    w[3, 3] = bad
    with pytest.raises(patchflow.errors.WindowError, match="finite and non-negative"):
        small_scene.patch.apply(ident, size=64, stride=48, window=w)


def test_output_store_exists(small_scene: xr.DataArray, tmp_path: Path) -> None:
    path = tmp_path / "out.zarr"
    patchflow.run(small_scene, dn_ndvi, store=path, size=64, stride=48)
    with pytest.raises(
        patchflow.errors.StoreExistsError, match="already exists; pass overwrite=True"
    ):
        patchflow.run(small_scene, dn_ndvi, store=path, size=64, stride=48)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_store_on_read_only_directory(small_scene: xr.DataArray, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(patchflow.errors.StoreError, match="permission denied"):
            patchflow.run(small_scene, dn_ndvi, store=ro / "out.zarr", size=64, stride=48)
    finally:
        ro.chmod(stat.S_IRWXU)


def test_store_on_read_only_path_as_root(small_scene: xr.DataArray, tmp_path: Path) -> None:
    # root bypasses permissions; a path under a *file* cannot be created by anyone
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(
        patchflow.errors.StoreError, match=r"cannot create the output store .*out\.zarr"
    ):
        patchflow.run(small_scene, dn_ndvi, store=blocker / "out.zarr", size=64, stride=48)


def test_dataset_variables_on_different_grids(small_scene: xr.DataArray) -> None:
    ds = xr.Dataset(
        {
            "red": small_scene.sel(band="red", drop=True),
            "swir": xr.DataArray(np.zeros((150, 130)), dims=("y20", "x20")),
        }
    )
    with pytest.raises(patchflow.errors.DimensionError, match=r"\['swir'\] are not on the .* grid"):
        ds.patch.apply(ident, size=64, stride=48)


def test_over_names_unknown_dim(small_scene: xr.DataArray) -> None:
    with pytest.raises(patchflow.errors.DimensionError, match=r"over='time'.*not non-spatial dims"):
        small_scene.patch.apply(ident, size=64, stride=48, over="time")


def test_messages_never_leak_dask_tracebacks() -> None:
    # an op failing inside a dask task surfaces as our OperatorError, chained to the cause
    def fails_late(chip: np.ndarray) -> np.ndarray:
        if chip.max() > 2:
            raise ValueError("bad weights file")
        return chip

    arr = xr.DataArray(np.zeros((1, 200, 200)), dims=("band", "y", "x"))
    arr[0, 150:, 150:] = 5.0
    out = arr.patch.apply(fails_late, size=64, stride=48)
    with pytest.raises(patchflow.errors.OperatorError, match="bad weights file") as info:
        out.compute()
    assert isinstance(info.value.__cause__, ValueError)


def test_no_warnings_on_the_happy_path(small_scene: xr.DataArray) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", patchflow.PatchflowWarning)
        out: Any = small_scene.patch.apply(dn_ndvi, size=64, stride=48)
        out.compute()


# --------------------------------------------------------------------------- issue 12


def test_one_error_hierarchy(small_scene: xr.DataArray) -> None:
    from patchflow import ops

    assert ops.ConfigError is patchflow.errors.ConfigError is patchflow.errors.ConfigError
    assert issubclass(patchflow.errors.ConfigError, patchflow.ParameterError)
    assert issubclass(patchflow.errors.UsageError, patchflow.PatchflowError)
    assert issubclass(patchflow.errors.CommandError, patchflow.PatchflowError)
    assert issubclass(patchflow.errors.InputReadError, patchflow.PatchflowError)
    assert issubclass(patchflow.errors.GridError, patchflow.ParameterError)
    # a wrong type for size/stride is a parameter mistake, not an unplannable grid
    with pytest.raises(patchflow.ParameterError, match="size must be an int") as info:
        small_scene.patch.apply(ident, size="64", stride=48)
    assert not isinstance(info.value, patchflow.errors.GridError)


def test_cli_exit_statuses_unchanged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from patchflow.cli import main

    assert main(["apply", str(tmp_path / "in.tif"), str(tmp_path / "o.png")]) == 2  # UsageError
    assert main(["apply", str(tmp_path / "in.tif"), str(tmp_path / "o.zarr")]) == 1  # Command…
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("patchflow: error: OUTPUT must end in")
    assert err[1].startswith("patchflow: error: input not found")


@pytest.mark.parametrize(
    ("given", "expect"),
    [
        ({"overlap": 0.25}, "overlap=0.25 with size=256 (the default) → stride=192"),
        ({"size": 512, "overlap": 64}, "overlap=64 with size=512 → stride=448"),
        ({"size": (256, 128), "overlap": (0.5, 0.25)}, "→ stride=(128, 96)"),
        ({"roi_size": (96, 96), "overlap": 0.5}, "with size=96 (from roi_size) → stride=48"),
        ({"size": 128, "overlap": 128}, "would leave no stride"),
        ({"depth": 32}, "depth=32 with size=256 (the default) → stride=192"),
        ({"input_dims": {"x": 256, "y": 128}}, "→ size=(128, 256)"),
        ({"padding_mode": "replicate"}, "boundary='pad', pad_mode='edge'"),
        ({"mode": "constant"}, "window='boxcar'"),
        ({"mode": "gaussian", "size": 128}, "window_params={'sigma': 16}"),
        ({"sigma_scale": 0.25, "size": 64}, "window_params={'sigma': 16}"),
        ({"device": "cuda"}, "ModelOp(model, device=...)"),
        ({"overlap": "lots"}, "stride = size - overlap)"),  # no worked example, no crash
    ],
)
def test_peer_keywords_get_a_worked_conversion(given: dict[str, Any], expect: str) -> None:
    with pytest.raises(patchflow.ParameterError, match="unknown keyword") as info:
        patchflow.errors.check_keywords("apply", given, ["size", "stride", "window"])
    assert expect in str(info.value)


def test_unknown_keywords_typos_and_lists() -> None:
    check = patchflow.errors.check_keywords
    check("run", {"size": 1, "mode": "accumulate"}, ["size", "mode"])  # known: silent
    with pytest.raises(patchflow.ParameterError, match=r"'n_class'; did you mean 'n_classes'"):
        check("apply", {"n_class": 3}, ["n_classes", "size"])
    with pytest.raises(patchflow.ParameterError, match=r"'zzz'; run\(\) takes: mode, size$"):
        check("run", {"zzz": 3}, ["size", "mode"])
    with pytest.raises(patchflow.ParameterError, match=r"2 unknown keywords: 'strid'.*'overlap'"):
        check("apply", {"strid": 3, "overlap": 0.5}, ["stride"])


def test_apply_and_accessors_reject_unknown_keywords(small_scene: xr.DataArray) -> None:
    with pytest.raises(patchflow.ParameterError, match=r"'per_variabel'; did you mean"):
        small_scene.patch.apply(ident, size=64, stride=48, per_variabel=True)
    with pytest.raises(patchflow.ParameterError, match=r"^grid\(\) got .*overlap=32.* stride=96"):
        small_scene.patch.grid(size=128, overlap=32)
    from patchflow.engine.prepare import prepare_from

    with pytest.raises(patchflow.ParameterError, match=r"^run\(\) got .*'storee'"):
        prepare_from(small_scene, ident, {"storee": "x"}, caller="run", also=("store",))
    prep = prepare_from(
        small_scene, ident, {"size": 64, "stride": 48, "store": "x"}, also=("store",)
    )
    assert prep.result().shape == small_scene.shape


def test_band_errors_come_at_call_time(small_scene: xr.DataArray) -> None:
    # a dask input whose compute would fail: nothing may be computed to find these errors
    from patchflow.ops import NDVI, PercentileClip, SelectBands

    def boom(block: np.ndarray) -> np.ndarray:
        raise AssertionError("computed")

    lazy = small_scene.chunk({"y": 128, "x": 128})
    lazy = lazy.copy(data=lazy.data.map_blocks(boom, dtype=lazy.dtype))
    cases: list[tuple[Any, str]] = [
        (NDVI(red="red", nir="swir"), r"'swir' not found among the input's bands"),
        (NDVI(red=1, nir=2), r"band 2 looks like a GDAL-style 1-based number.*use 1"),
        (SelectBands(["nir", 9]), r"band index 9 is out of range: the input has 2 bands"),
        (
            PercentileClip(per="global", limits=([0, 0, 0], [1, 1, 1])),
            r"3 per-band limits but the input chips have 2 bands",
        ),
    ]
    for op, match in cases:
        with pytest.raises(patchflow.ParameterError, match=match):
            lazy.patch.apply(op, size=64, stride=48)
    # rioxarray-style integer band coordinate: names cannot bind
    numbered = lazy.assign_coords(band=[1, 2])
    with pytest.raises(patchflow.ParameterError, match=r"no names.*band descriptions"):
        numbered.patch.apply(NDVI(red="red", nir="nir"), size=64, stride=48)


def test_out_of_range_message_without_gdal_hint(small_scene: xr.DataArray) -> None:
    from patchflow.ops import NDVI

    with pytest.raises(patchflow.ParameterError) as info:
        small_scene.patch.apply(NDVI(red=0, nir=-3), size=64, stride=48)
    text = str(info.value)
    assert "0-based positions 0..1 (or -2..-1 from the end)" in text
    assert "GDAL" not in text


def test_vote_with_very_many_classes_is_refused_not_killed(
    scene_factory: Callable[..., xr.DataArray],
) -> None:
    # vote keeps a count and a weight sum per class and pixel of a block: 4000 classes on
    # 2048² blocks would need ~200 GB per task; the job must be refused before it runs
    # (it used to be killed by the kernel's OOM killer), with the ways out named
    from patchflow.errors import MemoryBudgetError

    scene = scene_factory((512, 512), chunks=256)
    labels = lambda c: (c[:1] % 4000).astype(np.int16)  # noqa: E731
    with pytest.raises(MemoryBudgetError, match=r"n_classes=4000.*(chunks|mode)"):
        patchflow.apply(scene, labels, size=64, stride=48, agg="vote", n_classes=4000)
    # the same job on smaller blocks fits, and so does a realistic class count
    small = patchflow.apply(
        scene, labels, size=64, stride=48, agg="vote", n_classes=4000, chunks=64
    )
    assert small.data.chunksize[-1] == 64
    patchflow.apply(scene, labels, size=64, stride=48, agg="vote", n_classes=40)


def test_stitching_a_vote_with_very_many_classes_is_refused_too(
    scene_factory: Callable[..., xr.DataArray],
) -> None:
    from patchflow.errors import MemoryBudgetError
    from patchflow.plan.samplers import Random

    scene = scene_factory((512, 512), chunks=256)
    chips = patchflow.sample(scene, Random(6, seed=0), size=64)
    labels = (chips.isel(band=0) % 4000).astype("int16")
    anchors = np.c_[chips.row, chips.col]
    with pytest.raises(MemoryBudgetError, match="n_classes=4000"):
        patchflow.stitch(scene, labels, anchors, agg="vote", n_classes=4000)
    patchflow.stitch(scene, labels, anchors, agg="vote", n_classes=4000, chunks=64)


def test_vote_memory_error_speaks_cli_flags_in_the_cli(tmp_path: Path) -> None:
    import sys

    from patchflow.io.synthetic import make_scene

    tif = tmp_path / "labels.tif"
    make_scene((512, 512), chunks=None).rio.to_raster(tif)
    proc = __import__("subprocess").run(
        [
            sys.executable,
            "-m",
            "patchflow",
            "apply",
            str(tif),
            str(tmp_path / "v.tif"),
            "--red",
            "1",
            "--nir",
            "2",
            "--agg",
            "vote",
            "--n-classes",
            "100000",
            "--size",
            "64",
            "--stride",
            "48",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "--agg vote with --n-classes 100000" in proc.stderr, proc.stderr
    assert "--agg mode" in proc.stderr and "agg='mode'" not in proc.stderr
    assert "Traceback" not in proc.stderr


def test_vote_memory_bound_uses_the_chips_not_a_pointwise_plans_strips(
    scene_factory: Callable[..., xr.DataArray],
) -> None:
    # a declared-pointwise op runs on block-wide strips; the vote state still spans a
    # block plus at most a chip: 3000 classes on 256² blocks with 64-px chips need
    # 3.4 GiB (under the limit), though the strips' width would have doubled the bound
    from patchflow.ops import Lambda

    scene = scene_factory((512, 512), chunks=256)
    labels = Lambda(lambda c: (c[:1] % 3000).astype(np.int16), pointwise=True)
    out = patchflow.apply(scene, labels, size=64, stride=48, agg="vote", n_classes=3000)
    assert out.dtype == np.int16  # built (nothing computed: 3.4 GiB per block)


@pytest.mark.parametrize("agg", ["max", "centre", "overlap_add"])
def test_values_outside_a_declared_integer_dtype_are_refused_not_wrapped(agg: str) -> None:
    # output_dtype="int16" declared (no dry run), the op returns 70000: cast to int16 it
    # would wrap to 4464 without a word
    scene = xr.DataArray(np.full((1, 100, 100), 35000.0, np.float32), dims=("band", "y", "x"))

    def doubled(chip: np.ndarray) -> np.ndarray:
        return (chip * 2).astype(np.int32)

    kw: dict[str, Any] = {"size": 32, "stride": 24, "agg": agg, "output_shape": (1,)}
    with pytest.raises(patchflow.errors.OperatorError, match=r"70000.*int16.*output_dtype"):
        patchflow.apply(scene, doubled, output_dtype="int16", **kw).compute()
    # values that fit are fine (the op's int32 cast to the declared int16)
    fits = patchflow.apply(scene / 10, doubled, output_dtype="int16", **kw).values
    assert (fits == 7000).all()
