"""SklearnOp: scikit-learn estimators per pixel, through apply/run/resume, and from files."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pytest
import rioxarray
import xarray as xr

import patchflow
from patchflow.errors import (
    ConfigError,
    InputReadError,
    ModelChangedError,
    ModelNotFittedError,
    ParameterError,
)
from patchflow.ops import Lambda, from_config, from_json, to_json

pytest.importorskip("sklearn")
joblib = pytest.importorskip("joblib")

from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor  # noqa: E402
from sklearn.linear_model import LinearRegression, LogisticRegression  # noqa: E402

from patchflow.ops.sklearn import SklearnOp  # noqa: E402

SHAPE = (200, 180)
#: overlapping chips (stride < size) over a scene that is not a multiple of either
GRID: dict[str, Any] = {"size": 64, "stride": 48}


def labels_of(scene: np.ndarray) -> np.ndarray:
    """Thresholds on NIR: 0 bare soil and tracks, 1 dense crop, 2 sparse crop."""
    nir = scene[1].astype(np.float64)
    return np.where(nir < 2900, 0, np.where(nir > 3800, 1, 2)).astype(np.int64)


def table(scene: np.ndarray) -> np.ndarray:
    """``(bands, h, w)`` → ``(pixels, bands)``, row-major pixels."""
    return scene.reshape(scene.shape[0], -1).T


@pytest.fixture(scope="module")
def scene(scene_factory: Callable[..., xr.DataArray]) -> xr.DataArray:
    """A float32 red/NIR scene with a lake, fields and bare soil (numpy-backed)."""
    return scene_factory(SHAPE, seed=5, dtype="float32")


@pytest.fixture(scope="module")
def forest(scene_factory: Callable[..., xr.DataArray]) -> RandomForestClassifier:
    """A forest trained on labelled pixels of *another* scene (seed 1), so its answers on
    ``scene`` are predictions, not memorised labels."""
    train = scene_factory((400, 400), seed=1, dtype="float32").values
    x, y = table(train), labels_of(train).ravel()
    pick = np.random.default_rng(0).choice(len(x), 4000, replace=False)
    assert set(np.unique(y[pick])) == {0, 1, 2}  # all three classes are learnt
    return RandomForestClassifier(n_estimators=15, random_state=0, n_jobs=1).fit(x[pick], y[pick])


@pytest.fixture(scope="module")
def whole(scene: xr.DataArray, forest: RandomForestClassifier) -> np.ndarray:
    """``forest.predict`` on every pixel of the scene at once, as a ``(h, w)`` map."""
    return forest.predict(table(scene.values)).reshape(SHAPE)


def test_predict_chips_match_the_estimator_pixel_by_pixel(
    scene: xr.DataArray, forest: RandomForestClassifier, whole: np.ndarray
) -> None:
    chips = np.stack([scene.values[:, :64, :64], scene.values[:, 100:164, 50:114]])
    for batch_pixels in (1000, 2**18):  # pieces smaller than a chip, and one piece
        out = SklearnOp(forest, batch_pixels=batch_pixels)(chips)
        assert out.shape == (2, 1, 64, 64) and out.dtype == np.float32
        np.testing.assert_array_equal(out[0, 0], whole[:64, :64])
        np.testing.assert_array_equal(out[1, 0], whole[100:164, 50:114])
    proba = SklearnOp(forest, output="predict_proba")(chips)
    assert proba.shape == (2, 3, 64, 64) and proba.dtype == np.float32
    want = forest.predict_proba(table(chips[1])).T.reshape(3, 64, 64).astype(np.float32)
    np.testing.assert_array_equal(proba[1], want)


@pytest.mark.parametrize("overlapping", [False, True], ids=["pointwise-plan", "overlapping"])
def test_vote_on_predict_equals_whole_scene_predict(
    scene: xr.DataArray, forest: RandomForestClassifier, whole: np.ndarray, overlapping: bool
) -> None:
    op: Any = SklearnOp(forest)
    assert op.is_pointwise()
    if overlapping:  # hide the pointwise declaration: the engine then runs real chips
        op = Lambda(op, batched=True, output_bands=1, output_dtype="float32")
    out = patchflow.apply(scene, op, agg="vote", n_classes=3, **GRID)
    assert out.dtype.kind == "u" and out.shape == (1, *SHAPE)
    # a pointwise model gives every chip over a pixel the same label: exact equality
    np.testing.assert_array_equal(out.values[0], whole)
    assert len(np.unique(whole)) == 3


@pytest.mark.parametrize("overlapping", [False, True], ids=["pointwise-plan", "overlapping"])
def test_soft_vote_on_predict_proba_equals_whole_scene_predict(
    scene: xr.DataArray, forest: RandomForestClassifier, whole: np.ndarray, overlapping: bool
) -> None:
    op: Any = SklearnOp(forest, output="predict_proba")
    assert op.output_spec((2,), np.dtype("float32")) == ((3,), np.dtype("float32"))
    if overlapping:
        op = Lambda(op, batched=True, output_bands=3, output_dtype="float32")
    out = patchflow.apply(scene, op, agg="soft_vote", **GRID)
    assert out.shape == SHAPE
    # soft_vote gives the position in classes_, which is the label for classes 0..k-1
    np.testing.assert_array_equal(forest.classes_, [0, 1, 2])
    np.testing.assert_array_equal(out.values, whole)


def test_nan_pixels_never_reach_the_model_and_come_out_nodata(
    scene: xr.DataArray,
) -> None:
    values = scene.values
    x, y = table(values), labels_of(values).ravel()
    # logistic regression refuses NaN: any NaN row handed to it would raise
    model = LogisticRegression(max_iter=500).fit(x[::7] / 1000, y[::7])
    holes = scene.copy(data=values / 1000)
    holes.values[:, 40:70, 30:90] = np.nan  # every band
    holes.values[1, 150, 10] = np.nan  # one band of one pixel
    bad = np.isnan(holes.values).any(axis=0)
    want = model.predict(table(np.nan_to_num(holes.values))).reshape(SHAPE)

    chips = holes.values[None, :, 30:94, :64]
    direct = SklearnOp(model)(chips)
    assert np.isnan(direct[0, 0][bad[30:94, :64]]).all()
    np.testing.assert_array_equal(
        direct[0, 0][~bad[30:94, :64]], want[30:94, :64][~bad[30:94, :64]]
    )

    for output, agg in (("predict", "vote"), ("predict_proba", "soft_vote")):
        kw = {"n_classes": 3} if agg == "vote" else {}
        out = patchflow.apply(holes, SklearnOp(model, output=output), agg=agg, **GRID, **kw)
        res = np.squeeze(out.values)
        assert out.rio.nodata is not None
        assert (res[bad] == out.rio.nodata).all()
        np.testing.assert_array_equal(res[~bad], want[~bad])


def test_regressor_predict_is_float64_and_exact(scene: xr.DataArray) -> None:
    values = scene.values
    x = table(values)
    target = (x[:, 1] - x[:, 0]) / (x[:, 1] + x[:, 0])
    reg = RandomForestRegressor(n_estimators=5, random_state=0, n_jobs=1).fit(x[::11], target[::11])
    op = SklearnOp(reg)
    assert op.output_spec((2,), np.dtype("float32")) == ((1,), np.dtype("float64"))
    out = patchflow.apply(scene, op, agg="mean", **GRID)
    np.testing.assert_array_equal(out.values[0], reg.predict(x).reshape(SHAPE))
    # no n_outputs_ (LinearRegression): the engine's dry run finds the two targets
    two = LinearRegression().fit(x[::11], np.stack([target, 2 * target], axis=1)[::11])
    assert SklearnOp(two).output_spec((2,), np.dtype("float32")) is None
    out = patchflow.apply(scene, SklearnOp(two), agg="mean", **GRID)
    assert out.shape == (2, *SHAPE)
    np.testing.assert_array_equal(out.values, two.predict(x).T.reshape(2, *SHAPE))


def test_named_errors_for_models_that_cannot_run(
    scene: xr.DataArray, forest: RandomForestClassifier
) -> None:
    with pytest.raises(ModelNotFittedError, match=r"not fitted; call estimator.fit"):
        SklearnOp(RandomForestClassifier())
    with pytest.raises(ParameterError, match="predict method"):
        SklearnOp(object())
    linear = LinearRegression().fit([[0.0, 1.0], [1.0, 0.0]], [0.0, 1.0])
    with pytest.raises(ParameterError, match="has no predict_proba"):
        SklearnOp(linear, output="predict_proba")
    with pytest.raises(ParameterError, match="output must be one of predict, predict_proba"):
        SklearnOp(forest, output="decision_function")  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="batch_pixels"):
        SklearnOp(forest, batch_pixels=0)
    # a model trained on 2 bands, a 3-band scene: fails while apply plans
    three = xr.concat([scene, scene[:1]], dim="band")
    with pytest.raises(ParameterError, match="fitted on 2 features"):
        patchflow.apply(three, SklearnOp(forest), agg="vote", n_classes=3, **GRID)
    # string labels cannot be a raster's values, but their probabilities can
    named = LogisticRegression().fit([[0.0, 1.0], [1.0, 0.0]], ["water", "crop"])
    with pytest.raises(ParameterError, match=r"not numbers.*LabelEncoder"):
        SklearnOp(named)
    assert SklearnOp(named, output="predict_proba").output_attrs() == {"classes": ["crop", "water"]}


def test_in_memory_estimator_pickles_but_has_no_config(
    forest: RandomForestClassifier, scene: xr.DataArray
) -> None:
    op = SklearnOp(forest)
    with pytest.raises(ConfigError, match=r"in-memory estimator.*SklearnOp.from_file"):
        op.get_config()
    chips = scene.values[None, :, :32, :32]
    for dumps, loads in ((pickle.dumps, pickle.loads), (cloudpickle.dumps, cloudpickle.loads)):
        back = loads(dumps(op))
        np.testing.assert_array_equal(back(chips), op(chips))
    assert "RandomForestClassifier" in repr(op)


def test_from_file_config_round_trip_and_trusted_gate(
    forest: RandomForestClassifier, scene: xr.DataArray, tmp_path: Path
) -> None:
    path = tmp_path / "forest.joblib"
    joblib.dump(forest, path)
    op = SklearnOp.from_file(path, output="predict_proba", batch_pixels=5000)
    config = op.get_config()
    assert isinstance(config, dict) and config["op"] == "SklearnOp"
    assert set(config["params"]) == {"path", "sha256", "output", "batch_pixels"}
    assert config["params"]["path"] == str(path.resolve())
    assert json.loads(to_json(op)) == config
    # loading a pickle runs code: configs naming one load only when trusted
    with pytest.raises(ConfigError, match="trusted=True"):
        from_json(to_json(op))
    back = from_json(to_json(op), trusted=True)
    assert isinstance(back, SklearnOp) and back == op and hash(back) == hash(op)
    chips = scene.values[None, :, :48, :48]
    np.testing.assert_array_equal(back(chips), SklearnOp(forest, output="predict_proba")(chips))
    # in a pipeline, and pickled with its estimator (workers need no file)
    pipe = from_config([config], trusted=True)
    assert from_json(to_json(pipe), trusted=True) == pipe
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(back))(chips), back(chips))


def test_changed_missing_or_foreign_model_files(
    forest: RandomForestClassifier, tmp_path: Path
) -> None:
    path = tmp_path / "forest.joblib"
    joblib.dump(forest, path)
    config = SklearnOp.from_file(path).get_config()
    assert isinstance(config, dict)
    joblib.dump(RandomForestClassifier(n_estimators=2).fit([[0, 0], [1, 1]], [0, 1]), path)
    with pytest.raises(ModelChangedError, match="SHA-256") as info:
        from_config(config, trusted=True)
    assert info.value.path == str(path.resolve())
    assert info.value.recorded == config["params"]["sha256"] != info.value.found
    path.unlink()
    with pytest.raises(InputReadError, match="model not found"):
        from_config(config, trusted=True)
    junk = tmp_path / "junk.joblib"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(InputReadError, match=r"joblib\.load"):
        SklearnOp.from_file(junk)
    joblib.dump({"not": "a model"}, junk)
    with pytest.raises(InputReadError, match="not an estimator"):
        SklearnOp.from_file(junk)


def test_run_and_resume_rebuild_the_model_from_its_file(
    scene: xr.DataArray, forest: RandomForestClassifier, whole: np.ndarray, tmp_path: Path
) -> None:
    tif = tmp_path / "scene.tif"
    scene.rio.to_raster(tif, tiled=True, blockxsize=128, blockysize=128)
    model = tmp_path / "forest.joblib"
    joblib.dump(forest, model)
    opened = rioxarray.open_rasterio(tif, chunks=128)
    store = tmp_path / "classes.zarr"
    op = SklearnOp.from_file(model)
    report = patchflow.run(
        opened, op, store=store, agg="vote", n_classes=3, chunks=128, zarr_format=2, **GRID
    )
    result = patchflow.open_result(store)
    np.testing.assert_array_equal(result.values[0], whole)
    block = store / report.var / "0.1.1"
    assert block.exists()
    block.unlink()
    fixed = patchflow.resume(store)  # the recipe names the model file: reloaded, trusted
    assert fixed.computed == 1
    np.testing.assert_array_equal(patchflow.open_result(store).values[0], whole)
    # a different model under the same name must not finish the job
    joblib.dump(RandomForestClassifier(n_estimators=2).fit([[0, 0], [1, 1]], [0, 1]), model)
    (store / report.var / "0.1.1").unlink()
    with pytest.raises(ModelChangedError):
        patchflow.resume(store)


def test_importing_the_module_does_not_import_sklearn() -> None:
    code = (
        "import sys, patchflow.ops, patchflow.ops.sklearn, patchflow.ops.augment; "
        "print('sklearn' in sys.modules, 'joblib' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.split() == ["False", "False"]


def test_skops_files_load_like_joblib_ones(
    forest: RandomForestClassifier, scene: xr.DataArray, tmp_path: Path
) -> None:
    sio = pytest.importorskip("skops.io")
    path = tmp_path / "forest.skops"
    sio.dump(forest, path)
    op = SklearnOp.from_file(path, output="predict_proba")
    back = from_json(to_json(op), trusted=True)
    chips = scene.values[None, :, :40, :40]
    np.testing.assert_array_equal(back(chips), SklearnOp(forest, output="predict_proba")(chips))
    with pytest.raises(ConfigError, match="trusted=True"):
        from_json(to_json(op))
