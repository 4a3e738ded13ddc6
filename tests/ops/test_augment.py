"""Seeded training augmentations: numpy equivalence, determinism, chip identity, configs."""

from __future__ import annotations

import inspect
import pickle
from collections.abc import Callable
from typing import Any

import cloudpickle
import numpy as np
import pytest
import xarray as xr

import patchflow
import patchflow.engine.prepare
from patchflow.errors import AugmentationError, DimensionError, ParameterError
from patchflow.ops import TTA, Branch, DNToReflectance, Imported, from_json, to_json
from patchflow.ops.augment import (
    AugmentTransform,
    BandDropout,
    BrightnessJitter,
    Flip,
    Rot90,
    augment,
    check_stitchable,
    chip_keys,
)
from patchflow.plan.samplers import Random
from patchflow.sampling.torch_data import LazyChipDataset

N = 64


@pytest.fixture(scope="module")
def chips() -> np.ndarray:
    """``N`` distinct square 3-band float32 chips."""
    return np.random.default_rng(0).random((N, 3, 16, 16)).astype(np.float32)


def anchors(n: int) -> np.ndarray:
    return np.stack([np.arange(n) * 16, np.arange(n) % 5 * 32], axis=1)


def all_ops() -> list[Any]:
    return [
        Flip(axis="y", p=0.5, seed=1),
        Flip(axis="x", p=0.3, seed=2),
        Flip(axis="both", p=0.5, seed=3),
        Rot90(p=0.75, seed=4),
        BandDropout(p=0.4, seed=5, fill=-1.0),
        BrightnessJitter(0.2, seed=6),
        BrightnessJitter(0.1, p=0.5, seed=7),
    ]


def pipeline() -> Any:
    return Flip(axis="both", seed=11) | Rot90(seed=12) | BandDropout(0.3, seed=13)


# --------------------------------------------------------------------------- against numpy


@pytest.mark.parametrize(
    ("axis", "axes"), [("y", [(-2,)]), ("x", [(-1,)]), ("both", [(-2,), (-1,), (-2, -1)])]
)
def test_flip_is_np_flip_and_moves_labels_with_the_chip(
    chips: np.ndarray, axis: Any, axes: list[tuple[int, ...]]
) -> None:
    labels = (chips[:, 0] * 10).astype(np.int64)  # a label per pixel, tied to band 0
    always = Flip(axis=axis, p=1.0)(chips)
    want = np.flip(chips, (-2, -1)) if axis == "both" else np.flip(chips, axes[0])
    np.testing.assert_array_equal(always, want)
    np.testing.assert_array_equal(Flip(axis=axis, p=0.0)(chips), chips)

    out, lab = augment(Flip(axis=axis, p=0.5, seed=9), chips, labels=labels)
    assert lab is not None
    seen = set()
    for k in range(N):
        options = {(): chips[k], **{a: np.flip(chips[k], a) for a in axes}}
        hits = [a for a, v in options.items() if np.array_equal(out[k], v)]
        assert len(hits) == 1, k
        seen.add(hits[0])
        # the label went through the very same flip as the image
        np.testing.assert_array_equal(lab[k], (out[k, 0] * 10).astype(np.int64))
    assert seen == {(), *axes}  # every outcome occurs over 64 chips


def test_rot90_is_np_rot90_and_refuses_non_square_chips(chips: np.ndarray) -> None:
    op = Rot90(p=0.75, seed=4)
    labels = (chips[:, 1] * 100).astype(np.int16)
    out, lab = augment(op, chips, labels=labels)
    turns = op.turns(chips)
    assert lab is not None and set(turns) == {0, 1, 2, 3}
    for k, t in enumerate(turns):
        np.testing.assert_array_equal(out[k], np.rot90(chips[k], t, axes=(-2, -1)))
        np.testing.assert_array_equal(lab[k], np.rot90(labels[k], t))
    assert 0.5 < np.mean(np.array(turns) > 0) < 0.95
    with pytest.raises(AugmentationError, match="square chips only; these are 16×12"):
        Rot90(p=0.0)(chips[:, :, :, :12])


def test_band_dropout_fills_whole_bands(chips: np.ndarray) -> None:
    out = BandDropout(p=0.4, seed=5, fill=-1.0)(chips)
    dropped = 0
    for k in range(N):
        for b in range(3):
            if (out[k, b] == -1.0).all():
                dropped += 1
            else:
                np.testing.assert_array_equal(out[k, b], chips[k, b])
    assert 0.25 < dropped / (3 * N) < 0.55
    np.testing.assert_array_equal(BandDropout(p=1.0, fill=7)(chips), np.full_like(chips, 7))
    ints = (chips * 1000).astype(np.uint16)
    assert BandDropout(p=1.0)(ints).dtype == np.uint16
    for fill in (np.nan, 0.5, -1.0, 70000.0):
        with pytest.raises(ParameterError, match="is not a uint16 value"):
            BandDropout(p=0.5, fill=fill)(ints)
    with pytest.raises(DimensionError, match="band axis"):
        BandDropout()(chips[:, 0])


def test_brightness_jitter_scales_each_chip_by_one_factor(chips: np.ndarray) -> None:
    ints = (chips * 1000 + 1).astype(np.uint16)
    ints[0, 1, 2, 3] = 0
    out = BrightnessJitter(0.2, seed=6)(ints)
    assert out.dtype == np.float32
    factors = []
    for k in range(N):
        ratio = out[k][ints[k] > 0] / ints[k][ints[k] > 0].astype(np.float32)
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-6)
        factors.append(float(ratio[0]))
    assert 0.8 <= min(factors) < 0.9 and 1.1 < max(factors) <= 1.2
    holes = chips.copy()
    holes[3, 0, 0, 0] = np.nan
    assert np.isnan(BrightnessJitter(0.2)(holes)[3, 0, 0, 0])
    with pytest.raises(ParameterError, match=r"scale must be in \[0, 1\)"):
        BrightnessJitter(1.5)
    assert BrightnessJitter(0.2).scale == 1.0  # the spatial scale the engine reads


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("op", [*all_ops(), pipeline()], ids=repr)
@pytest.mark.parametrize("ids", [True, False], ids=["anchors", "content"])
def test_same_seed_same_chips_whatever_the_batches_and_order(
    chips: np.ndarray, op: Any, ids: bool
) -> None:
    chip_ids = anchors(N) if ids else None
    whole, _ = augment(op, chips, chip_ids=chip_ids)
    for size in (1, 5, 16):
        parts = [
            augment(
                op, chips[s : s + size], chip_ids=None if not ids else anchors(N)[s : s + size]
            )[0]
            for s in range(0, N, size)
        ]
        np.testing.assert_array_equal(np.concatenate(parts), whole)
    order = np.random.default_rng(1).permutation(N)
    shuffled, _ = augment(op, chips[order], chip_ids=None if not ids else anchors(N)[order])
    np.testing.assert_array_equal(shuffled, whole[order])
    # a fresh, equal operator (e.g. rebuilt in a worker) draws the same
    np.testing.assert_array_equal(
        augment(pickle.loads(pickle.dumps(op)), chips, chip_ids=chip_ids)[0], whole
    )


@pytest.mark.parametrize("op", all_ops(), ids=repr)
def test_seed_epoch_and_identity_change_the_draws(chips: np.ndarray, op: Any) -> None:
    base = augment(op, chips, chip_ids=anchors(N))[0]
    reseeded = from_json(to_json(op).replace(f'"seed": {op.seed}', f'"seed": {op.seed + 100}'))
    assert not np.array_equal(augment(reseeded, chips, chip_ids=anchors(N))[0], base)
    assert not np.array_equal(augment(op, chips, chip_ids=anchors(N), epoch=1)[0], base)
    assert not np.array_equal(augment(op, chips, chip_ids=anchors(N) + 1)[0], base)
    # the call form and augment() agree
    np.testing.assert_array_equal(op(chips, chip_ids=anchors(N)), base)


def test_chip_keys_validation(chips: np.ndarray) -> None:
    assert len(set(chip_keys(chips))) == N
    assert chip_keys(chips, ["a", "b"] * (N // 2))[0] == chip_keys(chips[:1], ["a"])[0]
    with pytest.raises(ParameterError, match="one id per chip"):
        chip_keys(chips, [1, 2])
    with pytest.raises(ParameterError, match="ints, rows of ints"):
        chip_keys(chips, np.linspace(0, 1, N))


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize("op", [*all_ops(), pipeline()], ids=repr)
def test_configs_round_trip(op: Any) -> None:
    back = from_json(to_json(op))  # no code in these configs: no trusted=True needed
    assert back == op and hash(back) == hash(op) and repr(back) == repr(op)
    assert cloudpickle.loads(cloudpickle.dumps(op)) == op


def test_composes_with_other_operators_and_declares_its_output() -> None:
    dn = np.full((2, 2, 4, 4), 1000, np.uint16)
    pipe = DNToReflectance(scale=1e-4) | Flip(p=1.0) | BrightnessJitter(0.0)
    assert pipe.output_spec((2,), np.dtype("uint16")) == ((2,), np.dtype("float32"))
    np.testing.assert_allclose(pipe(dn), 0.1)
    assert Flip().output_spec((3,), np.dtype("uint16")) == ((3,), np.dtype("uint16"))
    with pytest.raises(ParameterError, match="axis must be one of y, x, both"):
        Flip(axis="z")  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match=r"probability in \[0, 1\]"):
        Rot90(p=2)
    with pytest.raises(ParameterError, match="seed must be an int"):
        Flip(seed=1.5)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- training chips


@pytest.fixture(scope="module")
def scene(scene_factory: Callable[..., xr.DataArray]) -> xr.DataArray:
    return scene_factory((256, 256), seed=2, chunks=128)


def label_raster(scene: xr.DataArray) -> np.ndarray:
    return (np.asarray(scene.values[1]) > 3300).astype(np.uint8)


def test_sampled_chips_and_labels_augment_together_per_anchor(scene: xr.DataArray) -> None:
    labels = label_raster(scene)
    chips = patchflow.sample(scene, Random(24, seed=0), size=32, labels=labels)
    ids = np.stack([chips.row.values, chips.col.values], axis=1)
    pipe = Flip(axis="both", seed=1) | Rot90(seed=2)
    image, lab = augment(pipe, chips.values, labels=chips.label.values, chip_ids=ids)
    assert lab is not None and image.shape == chips.shape
    # labels still describe the pixels they sit under
    np.testing.assert_array_equal(lab, (image[:, 1] > 3300).astype(np.uint8))
    assert not np.array_equal(image, chips.values)
    # the same anchors drawn again (a subset, in another order) get the same chips
    again = patchflow.sample(scene, ids[::-3], size=32)
    sub, _ = augment(pipe, again.values, chip_ids=ids[::-3])
    np.testing.assert_array_equal(sub, image[::-3])


def test_torch_dataset_transform_is_deterministic(scene: xr.DataArray) -> None:
    anchors_ = Random(6, seed=3).anchors((256, 256), 32)
    pipe = Flip(axis="both", seed=1) | Rot90(seed=2) | BrightnessJitter(0.1, seed=3)
    transform = AugmentTransform(pipe)

    def dataset(t: Any) -> LazyChipDataset:
        return LazyChipDataset(
            scene,
            anchors_,
            size=32,
            labels=label_raster(scene),
            as_tensor=False,
            dtype="float32",
            transform=t,
        )

    plain, augmented = dataset(None), dataset(pickle.loads(pickle.dumps(transform)))
    for k in range(len(plain)):
        image, label = plain[k]
        got_image, got_label = augmented[k]
        want_image, want_label = augment(pipe, image[None], labels=label[None])
        assert want_label is not None
        np.testing.assert_array_equal(got_image, want_image[0])
        np.testing.assert_array_equal(got_label, want_label[0])
        np.testing.assert_array_equal(dataset(transform)[k][0], got_image)


# --------------------------------------------------------------------------- not for stitching


def test_check_stitchable_finds_augmentations_anywhere() -> None:
    from patchflow.ops import NDVI

    check_stitchable(DNToReflectance() | NDVI(red=0, nir=1))
    check_stitchable(TTA(NDVI(red=0, nir=1)))
    for op in (
        Flip(),
        DNToReflectance() | Rot90(),
        Branch(NDVI(red=0, nir=1), BrightnessJitter()),
        Imported("patchflow.ops.augment:BandDropout", params={"p": 0.2}),
    ):
        with pytest.raises(AugmentationError, match="is a training augmentation"):
            check_stitchable(op)


@pytest.mark.skipif(
    "check_stitchable" not in inspect.getsource(patchflow.engine.prepare),
    reason="patchflow.engine.prepare does not call check_stitchable yet (integration step)",
)
def test_apply_refuses_augmentations(scene: xr.DataArray) -> None:
    with pytest.raises(AugmentationError, match="training augmentation"):
        patchflow.apply(scene, DNToReflectance() | Flip(), size=64, stride=48)
