"""Operator library (issue 4): composition, configs, built-ins, band names, TTA, pickling."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle
import dask
import numpy as np
import pytest
import xarray as xr
from dask.base import tokenize

import patchflow
from patchflow.api import global_percentiles
from patchflow.errors import ParameterError
from patchflow.ops import (
    NBR,
    NDVI,
    NDWI,
    TTA,
    TTA_TRANSFORMS,
    Astype,
    ConfigError,
    DNToReflectance,
    Lambda,
    NormalizedDifference,
    Operator,
    PercentileClip,
    Rescale,
    SelectBands,
    Sequential,
    as_operator,
    batched,
    from_config,
    from_json,
    is_batched,
    op_output_spec,
    op_scale,
    register,
    registered_ops,
    to_json,
)


@pytest.fixture(scope="module")
def scene(scene_factory: Callable[..., xr.DataArray]) -> xr.DataArray:
    return scene_factory((700, 600), chunks=300)


@pytest.fixture(scope="module")
def dn(scene: xr.DataArray) -> np.ndarray:
    return scene.values


def seed_pipeline() -> Sequential:
    return DNToReflectance(scale=1e-4) | NDVI(red=0, nir=1)


def double_first(chip: np.ndarray) -> np.ndarray:
    """Plain (one chip) module-level function, picklable by reference."""
    return chip[:1] * 2.0


# --------------------------------------------------------------------------- acceptance 1


def test_seed_pipeline_through_apply_equals_whole_scene(
    scene: xr.DataArray, dn: np.ndarray
) -> None:
    pipeline = seed_pipeline()
    out = patchflow.apply(scene, pipeline, size=128, stride=96, window="hann")
    assert out.shape == (1, 700, 600)
    full = pipeline(dn[None])[0]
    values = out.values
    assert np.array_equal(np.isnan(values), np.isnan(full))
    assert np.nanmax(np.abs(values - full)) <= 1e-6
    # and against a float64 reference of the formula
    red, nir = dn[0:1] * 1e-4, dn[1:2] * 1e-4
    assert np.nanmax(np.abs(values - (nir - red) / (nir + red))) <= 1e-6


def test_seed_pipeline_accessor(scene: xr.DataArray, dn: np.ndarray) -> None:
    out = scene.patch.apply(seed_pipeline(), size=256, stride=192)
    assert np.nanmax(np.abs(out.values - seed_pipeline()(dn[None])[0])) <= 1e-6


def test_repr_shows_config(capsys: pytest.CaptureFixture[str]) -> None:
    pipeline = seed_pipeline()
    print(pipeline)
    assert capsys.readouterr().out.strip() == (
        "DNToReflectance(scale=0.0001, offset=0.0) | NDVI(red=0, nir=1)"
    )
    assert repr(TTA(pipeline, "flips")) == (
        "TTA(op=(DNToReflectance(scale=0.0001, offset=0.0) | NDVI(red=0, nir=1)), "
        "transforms='flips')"
    )
    assert repr(Sequential([NDVI(red=0, nir=1)])) == "Sequential([NDVI(red=0, nir=1)])"
    assert repr(PercentileClip(per="global", limits=([1, 2], [3, 4]))) == (
        "PercentileClip(p_min=2.0, p_max=98.0, per='global', limits=[(1.0, 2.0), (3.0, 4.0)], "
        "normalize=False)"
    )


def test_json_round_trip_equal() -> None:
    pipeline = seed_pipeline()
    config = pipeline.get_config()
    assert config == [
        {"op": "DNToReflectance", "params": {"scale": 0.0001, "offset": 0.0, "nodata": None}},
        {"op": "NDVI", "params": {"red": 0, "nir": 1}},
    ]
    text = to_json(pipeline)
    assert json.loads(text) == config
    back = from_json(text)
    assert back == pipeline and back is not pipeline
    assert Operator.from_config(config) == pipeline
    assert hash(back) == hash(pipeline)
    assert back != DNToReflectance(scale=2e-4) | NDVI(red=0, nir=1)
    assert NDVI(red=0, nir=1) != NormalizedDifference(1, 0)


ALL_BUILTINS: list[Operator] = [
    DNToReflectance(scale=2e-4, offset=-0.1, nodata=0),
    NormalizedDifference(0, "nir"),
    NDVI(red="red", nir=1),
    NDWI(green=0, nir=1),
    NBR(nir=1, swir2=0),
    PercentileClip(1, 99),
    PercentileClip(per="global", limits=(0.0, [1.0, 2.0]), normalize=True),
    SelectBands(["nir", 0]),
    Astype("uint8", nodata=0),
    Rescale((0, 10_000), (-1, 1), clip=False),
    TTA(NDVI(red=0, nir=1), ["identity", "rot90"]),
    TTA(DNToReflectance() | NDVI(red=0, nir=1), "d4"),
    Sequential([]),
]


@pytest.mark.parametrize("op", ALL_BUILTINS, ids=repr)
def test_every_builtin_round_trips(op: Operator) -> None:
    back = from_json(to_json(op))
    assert back == op and type(back) is type(op)
    assert repr(back) == repr(op)
    for loads, dumps in ((pickle.loads, pickle.dumps), (cloudpickle.loads, cloudpickle.dumps)):
        assert loads(dumps(op)) == op
    assert tokenize(op) == tokenize(back)
    assert is_batched(op)


def test_config_loading_is_strict() -> None:
    with pytest.raises(ConfigError, match=r"registered operators: .*NDVI") as info:
        from_config({"op": "os.system", "params": {"command": "true"}})
    assert "Sequential" in str(info.value)
    with pytest.raises(ConfigError, match="invalid params for NDVI"):
        from_config({"op": "NDVI", "params": {"red": 0}})
    with pytest.raises(ConfigError, match="invalid params for NDVI"):
        from_config({"op": "NDVI", "params": {"red": [0], "nir": 1}})
    with pytest.raises(ConfigError, match="keys"):
        from_config({"op": "NDVI", "params": {}, "code": "x"})
    with pytest.raises(ConfigError, match="dict"):
        from_config("NDVI")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not valid JSON"):
        from_json("{")
    with pytest.raises(ConfigError, match="not a NDVI"):
        NDVI.from_config({"op": "NDWI", "params": {"green": 0, "nir": 1}})
    assert {"NDVI", "TTA", "Sequential", "PercentileClip"} <= set(registered_ops())


def test_lambda_and_unregistered_are_not_serialisable() -> None:
    with pytest.raises(ConfigError, match="arbitrary Python function"):
        Lambda(double_first).get_config()
    with pytest.raises(ConfigError, match="arbitrary Python function"):
        to_json(DNToReflectance() | double_first)

    class Local(Operator):
        def __call__(self, chips: np.ndarray) -> np.ndarray:
            return chips

    with pytest.raises(ConfigError, match="not a registered operator"):
        Local().get_config()


def test_register_custom_and_conflicts() -> None:
    @register("test_ops.Square")
    class Square(Operator):
        def __init__(self, power: int = 2) -> None:
            self.power = int(power)

        def _params(self) -> dict[str, Any]:
            return {"power": self.power}

        def __call__(self, chips: np.ndarray) -> np.ndarray:
            return chips**self.power

    try:
        op = Square(3) | NDVI(red=0, nir=1)
        assert from_json(to_json(op)) == op
        with pytest.raises(ConfigError, match="already registered"):
            register("NDVI")(Square)
    finally:
        from patchflow.ops.base import _REGISTRY

        _REGISTRY.pop("test_ops.Square")


# --------------------------------------------------------------------------- composition


def test_sequential_flattening_indexing() -> None:
    a, b, c = DNToReflectance(), NDVI(red=0, nir=1), Rescale((-1, 1), (0, 1))
    pipe = (a | b) | (c | Astype("float64"))
    assert len(pipe) == 4 and pipe[0] is a and pipe[-1] == Astype("float64")
    assert isinstance(pipe[1:3], Sequential) and list(pipe[1:3]) == [b, c]
    assert [type(op).__name__ for op in pipe] == [
        "DNToReflectance",
        "NDVI",
        "Rescale",
        "Astype",
    ]
    assert Sequential([pipe, a]).ops[-1] is a and len(Sequential([pipe, a])) == 5
    chips = np.random.default_rng(0).integers(1, 10_000, (3, 2, 8, 8)).astype(np.uint16)
    np.testing.assert_array_equal(pipe(chips), Astype("float64")(c(b(a(chips)))))
    assert pipe.output_spec((2,), np.dtype("uint16")) == ((1,), np.dtype("float64"))
    assert Sequential([]).output_spec((2,), np.dtype("uint16")) == ((2,), np.dtype("uint16"))


def test_plain_callables_compose() -> None:
    pipe = DNToReflectance() | double_first
    assert isinstance(pipe[1], Lambda) and not pipe[1].fn_batched
    chips = np.ones((4, 2, 5, 5), np.uint16)
    assert pipe(chips).shape == (4, 1, 5, 5)
    assert pipe.output_spec((2,), np.dtype("uint16")) is None  # Lambda without declaration

    @batched
    def halve(x: np.ndarray) -> np.ndarray:
        return x / 2

    pipe2 = halve | NDVI(red=0, nir=1)
    assert isinstance(pipe2[0], Lambda) and pipe2[0].fn_batched
    np.testing.assert_allclose(pipe2(chips + 1), NDVI(red=0, nir=1)((chips + 1) / 2))
    assert as_operator(pipe2) is pipe2
    with pytest.raises(ParameterError, match="callable"):
        as_operator(3)


def test_lambda_declarations_and_scale() -> None:
    op = Lambda(lambda c: c.repeat(2, -1).repeat(2, -2), batched=True, scale=2.0)
    assert op.scale == 2.0 and op_scale(op) == 2.0
    assert op(np.ones((3, 1, 4, 4))).shape == (3, 1, 8, 8)
    declared = Lambda(double_first, output_bands=1, output_dtype="float32")
    assert declared.output_spec((2,), np.dtype("uint16")) == ((1,), np.dtype("float32"))
    assert op_output_spec(declared, (2,), "uint16") == ((1,), np.dtype("float32"))
    assert (op | NDVI(red=0, nir=1) | op).scale == 4.0
    assert TTA(op).scale == 2.0
    assert op_scale(lambda c: c) == 1.0

    class Gain:  # an arbitrary callable whose `scale` is not spatial: ignored
        scale = 1e-4

        def __call__(self, c: np.ndarray) -> np.ndarray:
            return c * self.scale

    assert op_scale(Gain()) == 1.0
    assert DNToReflectance(scale=1e-4).scale == 1.0  # radiometric gain is not spatial scale


def test_output_specs() -> None:
    u16 = np.dtype("uint16")
    assert DNToReflectance().output_spec((2,), u16) == ((2,), np.dtype("float32"))
    assert NDVI(red=0, nir=1).output_spec((2,), u16) == ((1,), np.dtype("float32"))
    # bands are the last non-spatial axis: (time, band) chips give (time, 1)
    assert NDVI(red=0, nir=1).output_spec((5, 2), np.dtype("float64")) == (
        (5, 1),
        np.dtype("float64"),
    )
    assert SelectBands([1, 1, 0]).output_spec((2,), u16) == ((3,), u16)
    assert Astype("int16").output_spec((2,), u16) == ((2,), np.dtype("int16"))
    assert Rescale((0, 1)).output_spec((2,), u16) == ((2,), np.dtype("float32"))
    assert PercentileClip().output_spec((2,), u16) == ((2,), np.dtype("float32"))
    assert TTA(Astype("int16")).output_spec((2,), u16) == ((2,), np.dtype("float32"))
    with pytest.raises(ParameterError, match="out of range"):
        NDVI(red=0, nir=2).output_spec((2,), u16)
    with pytest.raises(ParameterError, match="band dim"):
        NDVI(red=0, nir=1).output_spec((), u16)
    # declared specs match what the ops return
    chips = np.full((2, 2, 4, 4), 1000, np.uint16)
    for op in ALL_BUILTINS:
        if op._needs_names() or (isinstance(op, PercentileClip) and op.per == "global"):
            continue
        spec = op.output_spec((2,), u16)
        assert spec is not None
        out = op(chips)
        assert (out.shape[1:-2], out.dtype) == spec, op


# --------------------------------------------------------------------------- band names


def test_bind_band_names(scene: xr.DataArray, dn: np.ndarray) -> None:
    names = [str(b) for b in scene.band.values]
    assert names == ["red", "nir"]
    by_name = DNToReflectance() | NDVI(red="red", nir="nir")
    assert repr(by_name) == "DNToReflectance(scale=0.0001, offset=0.0) | NDVI(red='red', nir='nir')"
    assert from_json(to_json(by_name)) == by_name
    with pytest.raises(ParameterError, match=r"bind\(band_names\)"):
        by_name(dn[None])
    bound = by_name.bind(names)
    assert bound == seed_pipeline() and by_name[1].a == "nir"  # original untouched
    out = patchflow.apply(scene, bound, size=128, stride=96)
    np.testing.assert_allclose(out.values, seed_pipeline()(dn[None])[0], atol=1e-6)

    swapped = (SelectBands(["nir", "red"]) | NDVI(red="red", nir="nir")).bind(names)
    assert swapped[0] == SelectBands([1, 0]) and swapped[1] == NDVI(red=1, nir=0)
    np.testing.assert_array_equal(swapped(dn[None]), NDVI(red=0, nir=1)(dn[None]))
    assert swapped.output_band_names(names) == ["ndvi"]
    assert TTA(NDWI(green="red", nir="nir")).bind(names).op == NDWI(green=0, nir=1)

    with pytest.raises(ParameterError, match="'swir2' not found among"):
        NBR(nir="nir", swir2="swir2").bind(names)
    with pytest.raises(ParameterError, match="out of range"):
        NDVI(red=0, nir=5).bind(names)
    with pytest.raises(ParameterError, match="band names after"):
        (Lambda(double_first) | NDVI(red="red", nir="nir")).bind(names)
    assert DNToReflectance().bind(names) == DNToReflectance()


# --------------------------------------------------------------------------- NaN / nodata


def test_nan_stays_nan_and_zero_over_zero() -> None:
    chips = np.array([[[[0.0, 3.0, np.nan, 1.0]], [[0.0, 1.0, 2.0, -1.0]]]])  # (1, 2, 1, 4)
    nd = NormalizedDifference(0, 1)(chips)
    assert np.isnan(nd[0, 0, 0, 0])  # 0/0 → NaN, not 0
    assert nd[0, 0, 0, 1] == 0.5
    assert np.isnan(nd[0, 0, 0, 2])  # NaN in → NaN out
    assert np.isnan(nd[0, 0, 0, 3])  # x/0 is undefined too
    with np.errstate(all="raise"):
        NDVI(red=0, nir=1)(chips)  # no warnings
        NDVI(red=0, nir=1)(np.zeros((2, 2, 3, 3), np.uint16))
    dn = np.array([[[[0, 100, 65535]], [[0, 300, 1]]]], np.uint16)
    ndvi = (DNToReflectance(nodata=0) | NDVI(red=0, nir=1))(dn)
    assert np.isnan(ndvi[0, 0, 0, 0])
    assert ndvi[0, 0, 0, 1] == pytest.approx(0.5)
    assert ndvi[0, 0, 0, 2] == pytest.approx((1 - 65535) / 65536)  # no uint16 wrap-around
    chips[0, 1, 0, 2] = np.nan  # NaN in every band of pixel 2
    for op in (
        DNToReflectance(),
        Rescale((0, 1)),
        PercentileClip(),
        PercentileClip(normalize=True),
        PercentileClip(per="global", limits=(0, 1)),
        SelectBands([1, 0]),
        Astype("float64"),
        TTA(NDVI(red=0, nir=1), "flips"),
    ):
        out = op(chips)
        assert np.isnan(out[..., 0, 2]).all(), op
    assert Astype("int16")(chips)[0, 0, 0, 2] == np.iinfo(np.int16).min
    assert Astype("uint8", nodata=7)(chips)[0, 0, 0, 2] == 7


def test_astype_between_integers_clips_instead_of_wrapping() -> None:
    # numpy's integer casts wrap around (uint16 300 -> uint8 44, int16 -9999 -> 241): an
    # integer outside the target range becomes its nearest end, as a float's does
    u16 = np.array([[[[0, 255, 300, 65535]]]], np.uint16)
    np.testing.assert_array_equal(Astype("uint8")(u16).ravel(), [0, 255, 255, 255])
    np.testing.assert_array_equal(Astype("int16")(u16).ravel(), [0, 255, 300, 32767])
    i16 = np.array([[[[-9999, -1, 5, 32767]]]], np.int16)
    np.testing.assert_array_equal(Astype("uint8")(i16).ravel(), [0, 0, 5, 255])
    np.testing.assert_array_equal(Astype("uint16")(i16).ravel(), [0, 0, 5, 32767])
    big = np.array([[[[np.iinfo(np.uint64).max]]]], np.uint64)
    assert Astype("int64")(big).item() == np.iinfo(np.int64).max
    # casts that fit keep every value exactly
    np.testing.assert_array_equal(Astype("int32")(i16), i16.astype(np.int32))
    assert Astype("uint8")(u16).dtype == np.uint8


def test_scene_nodata_through_apply(scene: xr.DataArray, dn: np.ndarray) -> None:
    holes = scene.copy(data=scene.data.copy())
    holes[:, 100:140, 200:260] = 0  # DN 0 is the scene's nodata
    out = patchflow.apply(holes, seed_pipeline(), size=128, stride=96).values
    assert np.isnan(out[:, 100:140, 200:260]).all()
    mask = np.ones(out.shape, bool)
    mask[:, 100:140, 200:260] = False
    full = seed_pipeline()(dn[None])[0]
    assert np.abs(out[mask] - full[mask]).max() <= 1e-6


# --------------------------------------------------------------------------- built-ins


def test_builtin_values() -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(0.05, 1, (3, 4, 6, 6))
    np.testing.assert_allclose(
        NDWI(green=1, nir=3)(x), (x[:, 1:2] - x[:, 3:4]) / (x[:, 1:2] + x[:, 3:4])
    )
    np.testing.assert_allclose(
        NBR(nir=3, swir2=2)(x), (x[:, 3:4] - x[:, 2:3]) / (x[:, 3:4] + x[:, 2:3])
    )
    np.testing.assert_allclose(NDVI(red=-2, nir=-1)(x), NDVI(red=2, nir=3)(x))
    assert SelectBands(2)(x).shape == (3, 1, 6, 6)
    np.testing.assert_array_equal(SelectBands([3, 0])(x), x[:, [3, 0]])
    dn = rng.integers(0, 10_000, (2, 2, 4, 4)).astype(np.uint16)
    refl = DNToReflectance(scale=1e-4, offset=-0.1)(dn)
    assert refl.dtype == np.float32
    np.testing.assert_allclose(refl, dn * 1e-4 - 0.1, atol=1e-6)
    r = Rescale((0, 10_000), (255, 0))(dn)
    np.testing.assert_allclose(r, 255 - dn * 0.0255, rtol=1e-5, atol=1e-4)
    assert r.dtype == np.float32
    assert Rescale((0, 1), (0, 10), clip=True)(np.array([[[[2.0]]]])).item() == 10.0
    assert Rescale((0, 1), (0, 10), clip=False)(np.array([[[[2.0]]]])).item() == 20.0
    with pytest.raises(ParameterError):
        Rescale((1, 1))
    assert Astype("uint8")(np.array([[[[-3.0, 7.9, 300.0]]]])).ravel().tolist() == [0, 7, 255]
    with pytest.raises(ParameterError):
        Astype("uint8", nodata=300)
    # chips without a band axis
    with pytest.raises(ParameterError, match="band axis"):
        NDVI(red=0, nir=1)(np.ones((2, 4, 4)))
    assert DNToReflectance()(np.ones((2, 4, 4), np.uint16)).shape == (2, 4, 4)


def test_percentile_clip_per_chip() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 2, 16, 16))
    x[0, 1, 0, 0] = np.nan
    out = PercentileClip(10, 90)(x)
    for n in range(3):
        for b in range(2):
            lo, hi = np.nanpercentile(x[n, b], [10, 90])
            np.testing.assert_allclose(np.nanmin(out[n, b]), lo)
            np.testing.assert_allclose(np.nanmax(out[n, b]), hi)
    norm = PercentileClip(10, 90, normalize=True)(x)
    assert np.nanmin(norm) == 0.0 and np.nanmax(norm) == 1.0
    assert np.isnan(norm[0, 1, 0, 0])
    const = PercentileClip(normalize=True)(np.full((1, 1, 4, 4), 5.0))
    assert (const == 0).all()
    with np.errstate(all="raise"):
        allnan = PercentileClip()(np.full((1, 1, 4, 4), np.nan))
    assert np.isnan(allnan).all()
    with pytest.raises(ParameterError, match="limits"):
        PercentileClip(per="global")
    with pytest.raises(ParameterError):
        PercentileClip(50, 10)
    with pytest.raises(ParameterError, match="per-band"):
        PercentileClip(per="global", limits=([0, 1, 2], [3, 4, 5]))(x)


def test_global_percentiles_and_clip(scene: xr.DataArray, dn: np.ndarray) -> None:
    lo, hi = global_percentiles(scene, 2, 98)
    expect = np.percentile(dn.reshape(2, -1), [2, 98], axis=1)  # no nodata (0) in the scene
    np.testing.assert_allclose(lo, expect[0])  # 420 000 px ≤ max_samples: exact
    np.testing.assert_allclose(hi, expect[1])
    lo_s, hi_s = global_percentiles(scene, 2, 98, max_samples=20_000)  # strided: approximate
    np.testing.assert_allclose(lo_s, expect[0], rtol=0.02)
    np.testing.assert_allclose(hi_s, expect[1], rtol=0.02)
    lo1, _ = global_percentiles(scene.data, 2, 98, per_band=False)  # dask array, no labels
    assert isinstance(lo1, float) and lo1 == pytest.approx(np.percentile(dn, 2))

    clip = PercentileClip(per="global", limits=(lo, hi), normalize=True)
    assert from_json(to_json(clip)) == clip
    out = patchflow.apply(scene, clip, size=128, stride=96).values
    full = clip(dn[None])[0]
    assert np.abs(out - full).max() <= 1e-6  # pointwise: stitched == whole scene
    assert out.min() == pytest.approx(0.0, abs=1e-6) and out.max() == pytest.approx(1.0)

    per_chip = patchflow.apply(scene, PercentileClip(2, 98, normalize=True), size=128, stride=96)
    assert np.abs(per_chip.values - full).max() > 1e-3  # per chip: a different stretch


# --------------------------------------------------------------------------- TTA


def box_blur(chips: np.ndarray) -> np.ndarray:
    """3×3 mean with symmetric padding: rotation/flip-equivariant."""
    pad = [(0, 0)] * (chips.ndim - 2) + [(1, 1), (1, 1)]
    p = np.pad(chips.astype(np.float64), pad, mode="symmetric")
    h, w = chips.shape[-2:]
    return sum(p[..., i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9.0


def skewed(chips: np.ndarray) -> np.ndarray:
    """Not equivariant: x + 2·(right neighbour) + 3·(lower-right neighbour), edge padded."""
    pad = [(0, 0)] * (chips.ndim - 2) + [(0, 1), (0, 1)]
    p = np.pad(chips.astype(np.float64), pad, mode="edge")
    return p[..., :-1, :-1] + 2 * p[..., :-1, 1:] + 3 * p[..., 1:, 1:] + p[..., :-1, :-1] ** 2


def d4_reference(fn: Any, x: np.ndarray) -> np.ndarray:
    """Mean over the 8 symmetries, written independently with numpy primitives."""
    outs = []
    for flip in (False, True):
        for k in range(4):
            t = np.rot90(x, k, axes=(-2, -1))
            if flip:
                t = np.flip(t, axis=-1)
            y = fn(t)
            if flip:
                y = np.flip(y, axis=-1)
            outs.append(np.rot90(y, -k, axes=(-2, -1)))
    return np.mean(outs, axis=0)


def test_tta_equivariant_op_is_unchanged() -> None:
    x = np.random.default_rng(3).normal(size=(4, 2, 3, 9, 9))  # extra lead dim
    blur = Lambda(box_blur, batched=True)
    np.testing.assert_allclose(TTA(blur, "d4")(x), box_blur(x), atol=1e-12)
    for preset in ("flips", "rot90"):
        np.testing.assert_allclose(TTA(blur, preset)(x), box_blur(x), atol=1e-12)
    ndvi = NDVI(red=0, nir=1)
    y = np.abs(x[:, :, 0]) + 0.1
    np.testing.assert_allclose(TTA(ndvi)(y), ndvi(y), rtol=1e-6)


def test_tta_non_equivariant_is_mean_of_variants() -> None:
    x = np.random.default_rng(4).normal(size=(3, 2, 8, 8))
    out = TTA(Lambda(skewed, batched=True), "d4")(x)
    assert np.abs(out - skewed(x)).max() > 0.1  # TTA changes a non-equivariant op
    np.testing.assert_allclose(out, d4_reference(skewed, x), atol=1e-12)
    flips = TTA(skewed, "flips")(x)  # plain function: wrapped per chip
    ref = np.mean(
        [
            skewed(x),
            skewed(x[..., ::-1, :])[..., ::-1, :],
            skewed(x[..., ::-1])[..., ::-1],
            skewed(x[..., ::-1, ::-1])[..., ::-1, ::-1],
        ],
        axis=0,
    )
    np.testing.assert_allclose(flips, ref, atol=1e-12)
    # each named transform is inverted correctly: identity op through any subset = input
    ident = Lambda(lambda c: c, batched=True)
    for name in TTA_TRANSFORMS:
        np.testing.assert_array_equal(TTA(ident, [name])(x), x)


def test_tta_through_apply_and_errors(scene: xr.DataArray, dn: np.ndarray) -> None:
    tta = TTA(seed_pipeline(), "d4")
    out = patchflow.apply(scene, tta, size=128, stride=96).values
    assert np.abs(out - seed_pipeline()(dn[None])[0]).max() <= 1e-6
    x = np.ones((1, 1, 4, 6))
    with pytest.raises(ParameterError, match="square chips"):
        TTA(Lambda(box_blur, batched=True))(x)
    assert TTA(Lambda(box_blur, batched=True), "flips")(x).shape == (1, 1, 4, 6)
    with pytest.raises(ParameterError, match="unknown TTA preset"):
        TTA(box_blur, "d8")
    with pytest.raises(ParameterError, match="unknown TTA transforms"):
        TTA(box_blur, ["identity", "spin"])
    with pytest.raises(ConfigError):
        to_json(TTA(box_blur))


# --------------------------------------------------------------------------- pickling


def test_pickling_and_processes(scene: xr.DataArray, dn: np.ndarray) -> None:
    pipeline = seed_pipeline() | Lambda(double_first)
    for loads, dumps in ((pickle.loads, pickle.dumps), (cloudpickle.loads, cloudpickle.dumps)):
        back = loads(dumps(pipeline))
        assert repr(back) == repr(pipeline)
        np.testing.assert_array_equal(back(dn[None, :, :8, :8]), pipeline(dn[None, :, :8, :8]))
    lam = Lambda(lambda c: c * 3, batched=True)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        pickle.dumps(lam)
    assert cloudpickle.loads(cloudpickle.dumps(lam))(np.ones(2)).tolist() == [3.0, 3.0]
    # deterministic dask tokens → deterministic graph keys
    a = patchflow.apply(scene, seed_pipeline(), size=128, stride=96)
    b = patchflow.apply(scene, from_json(to_json(seed_pipeline())), size=128, stride=96)
    assert a.data.name == b.data.name
    with dask.config.set(scheduler="processes", num_workers=2):
        out = patchflow.apply(scene, TTA(seed_pipeline(), "flips"), size=256, stride=192)
        values = out.values
    assert np.abs(values - seed_pipeline()(dn[None])[0]).max() <= 1e-6


def test_normalized_difference_negative_band_index() -> None:
    c = np.random.default_rng(0).uniform(0.1, 1, (2, 3, 4, 4))
    out = NormalizedDifference(-1, 0)(c)
    assert out.shape == (2, 1, 4, 4)
    np.testing.assert_allclose(out, (c[:, -1:] - c[:, :1]) / (c[:, -1:] + c[:, :1]))


# --------------------------------------------------------------------------- Imported

USER_OPS = '''
import numpy as np
import patchflow.ops as ops


def gained(chip, gain=1.0):
    """Per-chip: band 1 minus band 0, times gain."""
    return (chip[1:2].astype("float32") - chip[0:1]) * gain


@ops.batched
def band_sum(chips):
    return chips.astype("float32").sum(axis=1, keepdims=True)


def make_ratio(eps=1.0):
    eps = float(eps)

    def ratio(chip):
        return chip[1:2].astype("float32") / (chip[0:1] + eps)
    return ratio


class Shift(ops.Operator):
    pointwise = True

    def __init__(self, value=0.0):
        self.value = float(value)

    def _params(self):
        return {"value": self.value}

    def __call__(self, chips):
        return chips.astype("float32") + self.value


PIPE = ops.DNToReflectance() | ops.NDVI(red=0, nir=1)
'''


@pytest.fixture(scope="module")
def user_ops(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The module ``pfops_user`` (in a temporary directory put on ``sys.path``)."""
    import importlib
    import sys

    root = tmp_path_factory.mktemp("user_ops")
    (root / "pfops_user.py").write_text(USER_OPS)
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module("pfops_user")
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("pfops_user", None)


def test_imported_stands_for_each_kind_of_target(
    user_ops: Any, scene: xr.DataArray, dn: np.ndarray
) -> None:
    from patchflow.ops import Imported

    chips = dn[None, :, :16, :16]
    cases = [
        (
            Imported("pfops_user:gained", params={"gain": 0.5}),
            Lambda(lambda c: user_ops.gained(c, 0.5)),
        ),
        (Imported("pfops_user:band_sum"), Lambda(user_ops.band_sum)),
        (Imported("pfops_user:make_ratio", params={"eps": 2}), Lambda(user_ops.make_ratio(eps=2))),
        (Imported("pfops_user:Shift", params={"value": -3}), user_ops.Shift(-3)),
        (Imported("pfops_user:PIPE"), user_ops.PIPE),
    ]
    for op, reference in cases:
        np.testing.assert_array_equal(op(chips), reference(chips))
        assert op.is_pointwise() == reference.is_pointwise(), op
        back = from_json(to_json(op), trusted=True)
        assert back == op and hash(back) == hash(op) and tokenize(back) == tokenize(op)
    # declarations are the target's: Shift is pointwise, PIPE's output spec is known
    assert Imported("pfops_user:PIPE").output_spec((2,), np.dtype("uint16")) == (
        (1,),
        np.dtype("float32"),
    )
    out = patchflow.apply(scene, Imported("pfops_user:PIPE"), size=128, stride=96)
    np.testing.assert_allclose(out.values, seed_pipeline()(dn[None])[0], atol=1e-6)


def test_imported_pickles_as_its_config_and_imports_in_workers(
    user_ops: Any, scene: xr.DataArray, dn: np.ndarray
) -> None:
    from patchflow.ops import Imported

    op = Imported("pfops_user:gained", params={"gain": 2})
    op.resolve()
    for loads, dumps in ((pickle.loads, pickle.dumps), (cloudpickle.loads, cloudpickle.dumps)):
        data = dumps(op)
        assert b"gained" in data and b"functools" not in data  # the path, not the function
        back = loads(data)
        assert back._op is None and back == op
    # names bound by the engine survive the trip to process workers (re-bound there)
    named = Imported("patchflow.ops:NDVI", params={"red": "red", "nir": "nir"})
    with dask.config.set(scheduler="processes", num_workers=2):
        got = patchflow.apply(scene, DNToReflectance() | named, size=256, stride=192).values
        user = patchflow.apply(scene, op, size=256, stride=192).values
    np.testing.assert_allclose(got, seed_pipeline()(dn[None])[0], atol=1e-6)
    np.testing.assert_allclose(user, user_ops.gained(dn, 2), atol=1e-3)


def test_imported_errors_name_the_fix(user_ops: Any) -> None:
    from patchflow.errors import ImportTargetError, UserCodeError
    from patchflow.ops import Imported

    cases = [
        ("pfops_user:gaind", {}, "target", "did you mean 'gained'"),
        ("pfops_user:gained", {"gian": 1}, "params", "no parameter 'gian' (did you mean 'gain'"),
        ("pfops_user:Shift", {"value": 1, "x": 2}, "params", "its parameters: value=0.0"),
        ("pfops_user:PIPE", {"x": 1}, "params", "operator instance"),
        ("pfops_user:make_ratio", {"eps": [1]}, "params", "make_ratio(eps=[1]) failed"),
        ("pf_no_such_module.sub:f", {}, "target", "no module named 'pf_no_such_module'"),
    ]
    for target, params, part, words in cases:
        op = Imported(target, params=params)  # lazy: nothing is imported yet
        with pytest.raises(ImportTargetError) as info:
            op.resolve()
        assert info.value.part == part and words in str(info.value), (target, info.value)
    # the user's module raising while it is imported
    import importlib

    (Path(user_ops.__file__).parent / "pfops_broken.py").write_text("1 / 0\n")
    importlib.invalidate_caches()
    with pytest.raises(UserCodeError, match=r"importing pfops_broken .* ZeroDivisionError"):
        Imported("pfops_broken:f").resolve()
