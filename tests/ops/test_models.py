"""ModelOp (issue 4 ML): batching, torch modules, processes scheduler, CNN seam test."""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable
from typing import Any

import cloudpickle
import numpy as np
import pytest
import xarray as xr
from dask.base import tokenize
from scipy.signal import correlate2d

import patchflow
from patchflow.errors import ParameterError
from patchflow.ops import TTA, ConfigError, DNToReflectance, to_json
from patchflow.ops.models import ModelOp, is_torch_module, tiny_cnn


@pytest.fixture(scope="module")
def torch() -> Any:
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def scene(scene_factory: Callable[..., xr.DataArray]) -> xr.DataArray:
    return scene_factory((256, 320), chunks=128, persist=True)


def reflectance(scene: xr.DataArray) -> np.ndarray:
    return DNToReflectance()(scene.values[None])  # (1, 2, h, w) float32


# --------------------------------------------------------------------------- any callable


def test_numpy_callable_batches_and_layout() -> None:
    sizes: list[int] = []

    def model(x: np.ndarray) -> np.ndarray:
        sizes.append(len(x))
        assert x.shape[1:] == (5, 6, 2)  # channels last
        return x.sum(axis=-1, keepdims=True)

    op = ModelOp(model, batch_size=4, channels_last=True, dtype="float64")
    chips = np.arange(11 * 2 * 5 * 6, dtype=np.uint16).reshape(11, 2, 5, 6)
    out = op(chips)
    assert sizes == [4, 4, 3]
    np.testing.assert_array_equal(out, chips.sum(axis=1, keepdims=True))
    assert out.dtype == np.float64
    assert op.output_spec((2,), np.dtype("uint16")) is None
    declared = ModelOp(model, output_bands=1, output_dtype="float32")
    assert declared.output_spec((2,), np.dtype("uint16")) == ((1,), np.dtype("float32"))
    assert ModelOp(model, output_bands=1).output_spec((2,), np.dtype("uint16")) is None
    assert not is_torch_module(model)
    with pytest.raises(ConfigError, match="no config"):
        to_json(DNToReflectance() | op)
    with pytest.raises(ParameterError):
        ModelOp(model, batch_size=0)
    with pytest.raises(ParameterError):
        ModelOp(model, dtype="int8")
    with pytest.raises(ParameterError):
        ModelOp(3)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- torch


def numpy_cnn(net: Any, chip: np.ndarray) -> np.ndarray:
    """The tiny_cnn forward pass on one (c, h, w) chip in float64 numpy (zero padding)."""
    x = chip.astype(np.float64)
    convs = [m for m in net if hasattr(m, "weight")]
    for k, conv in enumerate(convs):
        w = conv.weight.detach().double().numpy()
        b = conv.bias.detach().double().numpy()
        x = np.stack(
            [
                sum(correlate2d(x[i], w[o, i], mode="same") for i in range(w.shape[1])) + b[o]
                for o in range(w.shape[0])
            ]
        )
        if k < len(convs) - 1:
            x = np.maximum(x, 0)
    return x


class Counting:
    """Wraps a torch module and records the batch sizes reaching it."""

    def __new__(cls, net: Any) -> Any:
        import torch

        class CountingModule(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = net
                self.sizes: list[int] = []

            def forward(self, x: Any) -> Any:
                self.sizes.append(int(x.shape[0]))
                assert self.training is False and torch.is_inference_mode_enabled()
                return self.net(x)

        return CountingModule()


def test_torch_batches_and_per_chip_reference(torch: Any) -> None:
    net = tiny_cnn(2, 3, seed=1)
    model = Counting(net)
    model.train()
    op = ModelOp(model, batch_size=4, device="cpu")
    chips = np.random.default_rng(0).uniform(0, 1, (10, 2, 12, 12)).astype(np.float32)
    out = op(chips)
    assert model.sizes == [4, 4, 2]
    assert not model.training  # switched to eval mode
    assert out.shape == (10, 3, 12, 12) and out.dtype == np.float32
    ref = np.stack([numpy_cnn(net, c) for c in chips])
    np.testing.assert_allclose(out, ref, atol=1e-5)
    assert is_torch_module(model)
    assert op.output_spec((2,), np.dtype("float32")) is None
    op3 = ModelOp(net, output_bands=3)
    assert op3.output_spec((2,), np.dtype("uint16")) == ((3,), np.dtype("float32"))
    assert repr(op3) == "ModelOp(<torch Sequential>, output_bands=(3,), scale=1.0)"


def test_default_batch_is_one_chip_on_cpu_and_64_for_callables(torch: Any) -> None:
    model = Counting(tiny_cnn(2, 1, seed=1))
    chips = np.zeros((5, 2, 8, 8), np.float32)
    ModelOp(model, device="cpu")(chips)
    assert model.sizes == [1, 1, 1, 1, 1]
    calls: list[int] = []

    def plain(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        return x[:, :1]

    ModelOp(plain)(np.zeros((70, 2, 4, 4)))
    assert calls == [64, 6]


def test_torch_batches_through_apply(torch: Any, scene: xr.DataArray) -> None:
    model = Counting(tiny_cnn(2, 1, seed=2))
    pipeline = DNToReflectance() | ModelOp(model, batch_size=5)
    # one block (chunks=512): the engine calls the op with 16, 16, … chips
    out = patchflow.apply(scene, pipeline, size=64, stride=48, batch_size=16, chunks=512)
    model.sizes.clear()  # drop the dry run, if any
    out.compute(scheduler="sync")
    n_chips = len(patchflow.plan_grid(scene, size=64, stride=48).anchors)
    expected = []
    for lo in range(0, n_chips, 16):
        k = min(16, n_chips - lo)
        expected += [5] * (k // 5) + ([k % 5] if k % 5 else [])
    assert model.sizes == expected
    assert sum(model.sizes) == n_chips and max(model.sizes) == 5


def test_torch_pointwise_model_equals_whole_scene(torch: Any, scene: xr.DataArray) -> None:
    net = tiny_cnn(2, 2, seed=3, kernel_size=1)  # 1×1 convs: a per-pixel MLP
    pipeline = DNToReflectance() | ModelOp(net, batch_size=8)
    out = patchflow.apply(scene, pipeline, size=64, stride=48, window="hann")
    full = ModelOp(net)(reflectance(scene))[0]
    assert out.shape == (2, 256, 320)
    assert np.abs(out.values - full).max() <= 1e-5


def test_processes_scheduler(torch: Any, scene: xr.DataArray) -> None:
    pipeline = DNToReflectance() | ModelOp(tiny_cnn(2, 1, seed=4, kernel_size=1), batch_size=16)
    out = patchflow.apply(scene, pipeline, size=128, stride=96)
    values = out.compute(scheduler="processes", num_workers=2).values
    assert np.abs(values - out.compute(scheduler="threads").values).max() <= 1e-6
    assert np.abs(values - pipeline(scene.values[None])[0]).max() <= 1e-5


def test_pickle_tokenize_dtype_layout_scale(torch: Any) -> None:
    net = tiny_cnn(2, 1, seed=5)
    op = ModelOp(net, batch_size=3, device="cpu")
    chips = np.random.default_rng(1).uniform(0, 1, (4, 2, 8, 8)).astype(np.float32)
    ref = op(chips)
    for loads, dumps in ((pickle.loads, pickle.dumps), (cloudpickle.loads, cloudpickle.dumps)):
        back = loads(dumps(op))
        np.testing.assert_array_equal(back(chips), ref)
        assert tokenize(back) == tokenize(op)  # weights hash, not object identity
    assert tokenize(ModelOp(tiny_cnn(2, 1, seed=6))) != tokenize(op)

    half = ModelOp(tiny_cnn(2, 1, seed=5), dtype=torch.bfloat16, device="cpu")
    assert half.dtype == "bfloat16"
    out = half(chips)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=0.05)

    class NHWC(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            assert x.shape[-1] == 2
            return x.mean(dim=-1, keepdim=True)

    nhwc = ModelOp(NHWC(), channels_last=True)(chips)
    np.testing.assert_allclose(nhwc, chips.mean(axis=1, keepdims=True), rtol=1e-6)

    up = ModelOp(torch.nn.Upsample(scale_factor=2), scale=2.0)
    assert up.scale == 2.0 and (DNToReflectance() | up).scale == 2.0
    assert up(chips).shape == (4, 2, 16, 16)

    class Pair(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            return x, x

    with pytest.raises(TypeError, match="single tensor"):
        ModelOp(Pair())(chips)


def test_tta_with_model(torch: Any) -> None:
    net = tiny_cnn(2, 1, seed=7)
    chips = np.random.default_rng(2).uniform(0, 1, (3, 2, 10, 10)).astype(np.float32)
    out = TTA(ModelOp(net), "d4")(chips)
    variants = []
    for k in range(4):
        for flip in (False, True):
            t = np.rot90(chips, k, axes=(-2, -1))
            t = t[..., ::-1] if flip else t
            y = np.stack([numpy_cnn(net, c) for c in t])
            y = y[..., ::-1] if flip else y
            variants.append(np.rot90(y, -k, axes=(-2, -1)))
    np.testing.assert_allclose(out, np.mean(variants, axis=0), atol=1e-5)


# --------------------------------------------------------------------------- seam test


def test_cnn_seam_error_hann_below_boxcar(torch: Any, scene: xr.DataArray) -> None:
    """A 3-layer zero-padded CNN (receptive field 7): chip-edge pixels are wrong.

    Blending with a Hann window down-weights them, so the stitched result is closer to the
    whole-scene output than with a boxcar (flat) window.
    """
    pipeline = DNToReflectance() | ModelOp(tiny_cnn(2, 1, seed=0, depth=3), batch_size=32)
    full = pipeline(scene.values[None])[0]
    errors = {}
    for window in ("boxcar", "hann"):
        out = patchflow.apply(scene, pipeline, size=64, stride=48, window=window).values
        diff = np.abs(out - full)
        errors[window] = (float(diff.max()), float(diff.mean()))
    (box_max, box_mean), (hann_max, hann_mean) = errors["boxcar"], errors["hann"]
    print(
        f"seam error vs whole scene (max, mean): boxcar {errors['boxcar']}, hann {errors['hann']}"
    )
    assert box_max > 1e-3  # the seam is real
    assert hann_max < box_max
    assert hann_mean < 0.5 * box_mean


# --------------------------------------------------------------------------- TorchScript files


def save_script(torch: Any, path: Any, seed: int) -> Any:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation in favour of torch.export
        torch.jit.script(tiny_cnn(2, 1, seed=seed)).save(str(path))
    return path


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_is_a_model_op_with_a_config(
    torch: Any, scene: xr.DataArray, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from patchflow.ops import TorchScript, from_config, from_json

    path = save_script(torch, tmp_path / "net.pt", seed=3)
    monkeypatch.chdir(tmp_path)
    op = ModelOp.from_torchscript("net.pt", device="cpu", batch_size=4)
    assert isinstance(op, TorchScript) and isinstance(op, ModelOp)
    config = op.get_config()
    assert config["op"] == "TorchScript"
    assert config["params"]["path"] == str(path.resolve())  # absolute, whatever the cwd
    assert config["params"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (config["params"]["device"], config["params"]["batch_size"]) == ("cpu", 4)
    with pytest.raises(ConfigError, match="trusted=True"):
        from_config(config)
    back = from_json(to_json(op), trusted=True)
    assert back == op and tokenize(back) == tokenize(op) and repr(back) == repr(op)
    assert repr(op).startswith("TorchScript('net.pt', sha256=")

    chips = reflectance(scene)[:, :, :32, :32].repeat(3, axis=0)
    reference = ModelOp(torch.jit.load(str(path)), device="cpu", batch_size=4)(chips)
    np.testing.assert_array_equal(op(chips), reference)
    for loads, dumps in ((pickle.loads, pickle.dumps), (cloudpickle.loads, cloudpickle.dumps)):
        back = loads(dumps(op))  # the script's bytes travel: no access to the file needed
        np.testing.assert_array_equal(back(chips), reference)
        assert back == op and tokenize(back) == tokenize(op)

    # through the engine on process workers, and in a pipeline that has a config
    pipeline = DNToReflectance() | op
    assert from_json(to_json(pipeline), trusted=True) == pipeline
    out = patchflow.apply(scene, pipeline, size=128, stride=96)
    values = out.compute(scheduler="processes", num_workers=2).values
    np.testing.assert_array_equal(values, out.compute(scheduler="threads").values)


def test_torchscript_refuses_a_changed_or_missing_file(torch: Any, tmp_path: Any) -> None:
    from patchflow.errors import InputReadError, ModelChangedError
    from patchflow.ops import TorchScript, from_config

    path = save_script(torch, tmp_path / "net.pt", seed=1)
    config = TorchScript(path).get_config()
    save_script(torch, path, seed=2)  # another model at the same path
    with pytest.raises(ModelChangedError, match="SHA-256") as info:
        from_config(config, trusted=True)
    assert info.value.path == str(path) and info.value.recorded != info.value.found
    # without a recorded hash, the file now there is taken (and its hash recorded)
    fresh = TorchScript(path)
    assert fresh.sha256 == info.value.found
    with pytest.raises(InputReadError, match="model not found"):
        TorchScript(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(InputReadError, match="TorchScript model"):
        TorchScript(tmp_path / "junk.pt")
    with pytest.raises(ParameterError, match="not a torch device"):
        TorchScript(path, device="gpu0")
    # a model that is not a file has no config, and says how to get one
    with pytest.raises(ConfigError, match="from_torchscript"):
        ModelOp(tiny_cnn(2, 1)).get_config()
