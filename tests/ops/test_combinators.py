"""Operator combinators (issue 16): Branch, Switch, Tap, against numpy references."""

from __future__ import annotations

import pickle
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pytest
import xarray as xr

import patchflow
from patchflow.errors import ParameterError
from patchflow.ops import (
    NDVI,
    NDWI,
    BandFraction,
    BandMean,
    Branch,
    ConfigError,
    DNToReflectance,
    ImportedPredicate,
    Lambda,
    Operator,
    Rescale,
    SelectBands,
    Switch,
    Tap,
    TapRecord,
    clear_tap_records,
    from_json,
    op_pointwise,
    tap_records,
    to_json,
)


@pytest.fixture
def chips() -> np.ndarray:
    """Eight (red, nir) uint16 chips: the first half bright in nir, the rest dark."""
    rng = np.random.default_rng(16)
    out = rng.integers(100, 3000, size=(8, 2, 16, 16)).astype(np.uint16)
    out[:4, 1] += 5000
    return out


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real module on sys.path with a predicate and a Tap observer."""
    name = "pf_combinator_user_code"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            import numpy as np

            SEEN = []

            def brightest_band(chips, *, offset=0):
                means = chips.reshape(chips.shape[0], chips.shape[1], -1).mean(axis=2)
                return means.argmax(axis=1) + offset

            def log_shape(chips, *, tag="x"):
                SEEN.append((tag, chips.shape, chips.flags.writeable))
                chips.sum()  # reading is fine
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def roundtrip(op: Operator, *, trusted: bool = False) -> Operator:
    back = from_json(to_json(op), trusted=trusted)
    assert back == op
    assert type(back) is type(op)
    assert to_json(back) == to_json(op)
    return back


# --------------------------------------------------------------------------- Branch


def test_branch_equals_concatenated_outputs(chips: np.ndarray) -> None:
    parts = [NDVI(red=0, nir=1), NDWI(green=0, nir=1), SelectBands([1])]
    op = Branch(*parts)
    out = op(chips)
    ref = np.concatenate([np.asarray(p(chips), dtype=np.float32) for p in parts], axis=1)
    assert out.shape == (8, 3, 16, 16)
    assert out.dtype == np.float32 == np.result_type(np.float32, np.uint16)
    np.testing.assert_array_equal(out, ref)
    assert op.output_spec((2,), np.dtype("uint16")) == ((3,), np.dtype("float32"))
    assert op.output_band_names(["red", "nir"]) == ["ndvi", "ndwi", "nir"]
    assert op.is_pointwise() and op_pointwise(op)
    assert not op.keeps_values()
    assert op.output_attrs() == {}  # NDVI/NDWI agree on units, SelectBands states none
    assert Branch(NDVI(red=0, nir=1), NDWI(green=0, nir=1)).output_attrs() == {"units": "1"}


def test_branch_binds_every_branch(chips: np.ndarray) -> None:
    named = Branch(NDVI(red="red", nir="nir"), SelectBands(["nir"]))
    bound = named.bind(["red", "nir"])
    assert bound == Branch(NDVI(red=0, nir=1), SelectBands([1]))
    np.testing.assert_array_equal(bound(chips), Branch(NDVI(red=0, nir=1), SelectBands([1]))(chips))
    with pytest.raises(ParameterError, match="'nir' not found"):
        named.bind(["red", "green"])


def test_branch_mismatched_grids_named() -> None:
    zoom = Lambda(lambda c: c.repeat(2, -1).repeat(2, -2), batched=True, scale=2.0)
    op = Branch(NDVI(red=0, nir=1), zoom)
    with pytest.raises(ConfigError, match=r"branch 0 .*scale 1\.0.*branch 1 .*scale 2\.0"):
        op.output_spec((2,), np.dtype("float32"))
    with pytest.raises(ConfigError, match="same number of chips, non-band dims and h, w"):
        op(np.ones((2, 2, 4, 4)))
    flat = Lambda(lambda c: c[:, 0], batched=True, output_bands=(), output_dtype="f4")
    with pytest.raises(ConfigError, match=r"branch 1 .*no band axis"):
        Branch(NDVI(red=0, nir=1), flat).output_spec((2,), np.dtype("float32"))
    with pytest.raises(ConfigError, match="at least one"):
        Branch()


def test_branch_not_pointwise_if_any_branch_is_not() -> None:
    assert not Branch(NDVI(red=0, nir=1), Lambda(lambda c: c, batched=True)).is_pointwise()


# --------------------------------------------------------------------------- Switch


def test_switch_by_fraction_chooses_per_chip(chips: np.ndarray) -> None:
    a, b = NDVI(red=0, nir=1), NDWI(green=0, nir=1)
    op = Switch.by_fraction(band=1, where=">", value=5000, threshold=0.5, if_true=a, if_false=b)
    out = op(chips)
    # by hand: per chip, the fraction of nir pixels above 5000
    frac = (chips[:, 1] > 5000).reshape(8, -1).mean(axis=1)
    choose = frac > 0.5
    assert choose.tolist() == [True] * 4 + [False] * 4  # the batch mixes both cases
    perm = np.array([5, 0, 7, 2, 1, 6, 3, 4])  # interleave them, to test the scatter
    out = op(chips[perm])
    ref = np.stack([(a if choose[k] else b)(chips[k : k + 1])[0] for k in perm])
    assert out.dtype == ref.dtype == np.float32
    np.testing.assert_array_equal(out, ref)
    assert not op.is_pointwise() and not op_pointwise(op)
    assert op.output_spec((2,), np.dtype("uint16")) == ((1,), np.dtype("float32"))


def test_switch_by_mean_list_cases_and_default(chips: np.ndarray) -> None:
    x = DNToReflectance(scale=1e-4)
    chips = chips.astype(np.float32)
    chips[0, 1] = np.nan  # an all-NaN band: mean undefined -> False
    op = Switch.by_mean(
        band="nir", where=">=", value=4000, if_true=x, if_false=x | Rescale((0, 1), (0, 2))
    )
    op = op.bind(["red", "nir"])
    assert op.predicate == BandMean(band=1, where=">=", value=4000)
    nir = chips[:, 1].reshape(8, -1).astype(np.float64)
    counts = (~np.isnan(nir)).sum(axis=1)
    means = np.where(counts > 0, np.nansum(nir, axis=1) / np.maximum(counts, 1), np.nan)
    hand = (means >= 4000) & (counts > 0)
    assert hand.tolist() == [False, True, True, True, False, False, False, False]
    np.testing.assert_array_equal(op.predicate(chips), hand)
    ref = np.stack([(op.cases["true"] if hand[k] else op.cases["false"])(chips[k : k + 1])[0]
                    for k in range(8)])  # fmt: skip
    np.testing.assert_array_equal(op(chips), ref)

    # list cases are indexed by the key; a default covers keys without a case
    pred = BandFraction(band=1, where=">", value=5000, threshold=0.5)
    listed = Switch(pred, [SelectBands([0]), SelectBands([1])])
    keys = pred(chips).astype(int)
    ref = np.stack([chips[k, keys[k] : keys[k] + 1] for k in range(8)])
    np.testing.assert_array_equal(listed(chips), ref)
    only = Switch(pred, {True: SelectBands([1])}, default=SelectBands([0]))
    np.testing.assert_array_equal(only(chips), ref)
    with pytest.raises(ParameterError, match="gave key False, which has no case"):
        Switch(pred, {True: SelectBands([1])})(chips)


def test_switch_python_spelled_bool_keys(chips: np.ndarray) -> None:
    # "True"/"False" (str(True), quoted YAML, JSON written from Python) must select the
    # cases a boolean predicate gives, not send every chip to the default
    pred = BandFraction(band=1, where=">", value=5000, threshold=0.5)
    keys = pred(chips)
    assert keys.any() and not keys.all()
    spelled = Switch(
        pred, {"True": SelectBands([1]), "FALSE": SelectBands([0])}, default=Rescale((0, 1), (0, 0))
    )
    ref = np.stack([chips[k, int(keys[k]) : int(keys[k]) + 1] for k in range(len(chips))])
    np.testing.assert_array_equal(spelled(chips), ref)
    assert list(spelled.cases) == ["true", "false"]
    with pytest.raises(ParameterError, match="both name the case 'true'"):
        Switch(pred, {True: SelectBands([1]), "True": SelectBands([0])})


def test_switch_cases_must_agree() -> None:
    op = Switch.by_mean(band=0, value=1.0, if_true=NDVI(red=0, nir=1), if_false=SelectBands([0, 1]))
    with pytest.raises(ConfigError, match=r"case 'true' \(NDVI.*\(1,\) float32.*case 'false'"):
        op.output_spec((2,), np.dtype("float32"))
    chips = np.zeros((2, 2, 3, 3), np.float32)
    chips[0] = 2.0
    with pytest.raises(ConfigError, match="Switch cases disagree"):
        op(chips)
    zoom = Lambda(lambda c: c, batched=True, scale=2.0)
    with pytest.raises(ConfigError, match=r"case 'false' .*scale 2\.0"):
        _ = Switch.by_mean(band=0, value=1.0, if_true=NDVI(red=0, nir=1), if_false=zoom).scale
    with pytest.raises(ParameterError, match="out of range"):
        Switch.by_mean(
            band=2, value=1.0, if_true=NDVI(red=0, nir=1), if_false=NDVI(red=1, nir=0)
        ).output_spec((2,), np.dtype("float32"))


def test_switch_imported_predicate(chips: np.ndarray, user_module: str) -> None:
    pred = ImportedPredicate(f"{user_module}:brightest_band", params={"offset": 0})
    op = Switch(pred, {0: SelectBands([0]), 1: SelectBands([1])})
    means = chips.reshape(8, 2, -1).mean(axis=2)
    idx = means.argmax(axis=1)
    ref = np.stack([chips[k, idx[k] : idx[k] + 1] for k in range(8)])
    np.testing.assert_array_equal(op(chips), ref)
    with pytest.raises(ConfigError, match="trusted=True"):
        from_json(to_json(op))
    back = roundtrip(op, trusted=True)
    np.testing.assert_array_equal(back(chips), ref)
    for dump, load in ((pickle.dumps, pickle.loads), (cloudpickle.dumps, pickle.loads)):
        np.testing.assert_array_equal(load(dump(back))(chips), ref)


# --------------------------------------------------------------------------- Tap


def test_tap_stats_identity_and_records() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 3, 8, 8)).astype(np.float32)
    x[1, 0, :2] = np.nan
    x[4] = np.nan
    clear_tap_records("t_stats")
    op = Tap.stats(name="t_stats")
    out = op(x)
    assert out is x or np.array_equal(out, x, equal_nan=True)
    assert out.dtype == x.dtype and out.flags.writeable
    recs = tap_records("t_stats")
    assert len(recs) == 5
    for k, rec in enumerate(recs):
        chip = x[k].astype(np.float64)
        assert rec.nan_count == int(np.isnan(chip).sum()) and rec.size == chip.size
        if k == 4:
            assert np.isnan(rec.min) and np.isnan(rec.mean) and np.isnan(rec.max)
        else:
            assert rec == TapRecord(
                min=float(np.nanmin(chip)),
                mean=pytest.approx(float(np.nanmean(chip)), rel=1e-12),  # type: ignore[arg-type]
                max=float(np.nanmax(chip)),
                nan_count=int(np.isnan(chip).sum()),
                size=chip.size,
            )
    op(x[:2])
    assert len(tap_records("t_stats")) == 7
    clear_tap_records("t_stats")
    assert tap_records("t_stats") == []
    assert op.is_pointwise() and op.keeps_values()
    assert op.output_spec((3,), np.dtype("int16")) == ((3,), np.dtype("int16"))
    assert op.output_band_names(["a", "b"]) == ["a", "b"]
    assert repr(op) == "Tap.stats(name='t_stats')"


def test_tap_in_pipeline_records_intermediate(chips: np.ndarray) -> None:
    clear_tap_records("after_ndvi")
    pipe = NDVI(red=0, nir=1) | Tap.stats(name="after_ndvi") | Rescale((-1, 1), (0, 1))
    np.testing.assert_array_equal(
        pipe(chips), (NDVI(red=0, nir=1) | Rescale((-1, 1), (0, 1)))(chips)
    )
    ndvi = NDVI(red=0, nir=1)(chips)
    assert [r.max for r in tap_records("after_ndvi")] == [
        float(v) for v in ndvi.reshape(8, -1).max(axis=1)
    ]
    clear_tap_records("after_ndvi")


def test_tap_imported_and_callable_observers(chips: np.ndarray, user_module: str) -> None:
    op = Tap(f"{user_module}:log_shape", params={"tag": "t"})
    out = op(chips)
    assert out is chips
    seen = sys.modules[user_module].SEEN
    assert seen == [("t", chips.shape, False)]  # the observer got a read-only view
    with pytest.raises(ConfigError, match="trusted=True"):
        from_json(to_json(op))
    roundtrip(op, trusted=True)

    calls: list[float] = []
    local = Tap(lambda c: calls.append(float(c.sum())))
    assert local(chips) is chips and calls == [float(chips.sum())]
    with pytest.raises(ConfigError, match="cannot be written to a config"):
        to_json(local)

    def mutate(c: np.ndarray) -> None:
        c[...] = 0

    with pytest.raises(ValueError, match="read-only"):
        Tap(mutate)(chips.copy())
    with pytest.raises(ParameterError, match="name="):
        Tap("stats")
    with pytest.raises(ConfigError, match="MODULE:NAME"):
        Tap("not a target")


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "op",
    [
        Branch(NDVI(red=0, nir=1), NDWI(green="green", nir="nir")),
        Branch(DNToReflectance() | NDVI(red=0, nir=1), SelectBands([0, 1])),
        Switch.by_fraction(
            band="nir",
            where="<=",
            value=0.2,
            threshold=0.25,
            if_true=NDVI(red=0, nir=1),
            if_false=DNToReflectance() | NDVI(red=0, nir=1),
        ),
        Switch.by_mean(band=0, value=3.5, if_true=SelectBands([0]), if_false=SelectBands([1])),
        Switch(
            BandMean(band=-1, where="<", value=0.0),
            [SelectBands([0]), SelectBands([1])],
            default=SelectBands([0]),
        ),
        Switch(
            BandFraction(band=0, value=1.0), {"true": NDVI(red=0, nir=1), 7: NDVI(red=1, nir=0)}
        ),
        Tap.stats(name="x"),
        DNToReflectance() | Tap.stats(name="y") | Branch(NDVI(red=0, nir=1), Tap.stats(name="z")),
    ],
    ids=repr,
)
def test_configs_roundtrip(op: Operator) -> None:
    back = roundtrip(op)
    assert hash(back) == hash(op)
    assert pickle.loads(pickle.dumps(op)) == op


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="predicate config"):
        from_json('{"op": "Switch", "params": {"predicate": {"kind": "median"}, "cases": []}}')
    with pytest.raises(ConfigError, match="trusted=True"):
        from_json('{"op": "Tap", "params": {"observer": "os:system", "params": {}}}')
    with pytest.raises(ConfigError, match="trusted=True"):
        from_json(
            '{"op": "Switch", "params": {"predicate": {"kind": "imported", "target": "os:getpid"}, '
            '"cases": []}}'
        )
    with pytest.raises(ConfigError, match="invalid Switch predicate"):
        from_json(
            '{"op": "Switch", "params": {"predicate": {"kind": "mean", "band": 0, "where": "~", '
            '"value": 1}, "cases": [{"op": "NDVI", "params": {"red": 0, "nir": 1}}]}}'
        )
    with pytest.raises(ConfigError, match="Branch takes only 'ops'"):
        from_json('{"op": "Branch", "params": {"ops": {}}}')
    # an Imported branch needs trust like anywhere else
    text = to_json(Branch(NDVI(red=0, nir=1), patchflow.ops.Imported("numpy:negative")))
    with pytest.raises(ConfigError, match="trusted=True"):
        from_json(text)
    assert from_json(text, trusted=True) == from_json(text, trusted=True)


# --------------------------------------------------------------------------- end to end


def test_apply_branch_equals_separate_ops(scene_factory: Callable[..., xr.DataArray]) -> None:
    scene = scene_factory((200, 180), chunks=100)
    kwargs: dict[str, Any] = {"size": 64, "stride": 48}
    both = patchflow.apply(scene, Branch(NDVI(red=0, nir=1), NDWI(green=0, nir=1)), **kwargs)
    ndvi = patchflow.apply(scene, NDVI(red=0, nir=1), **kwargs)
    ndwi = patchflow.apply(scene, NDWI(green=0, nir=1), **kwargs)
    assert both.shape == (2, 200, 180)
    assert list(both.coords["band"].values) == ["ndvi", "ndwi"]
    got = both.values
    np.testing.assert_array_equal(got[0], ndvi.values[0])
    np.testing.assert_array_equal(got[1], ndwi.values[0])
    # and by name, bound through the scene's band coordinate
    named = patchflow.apply(
        scene, Branch(NDVI(red="red", nir="nir"), SelectBands(["nir"])), **kwargs
    )
    assert list(named.coords["band"].values) == ["ndvi", "nir"]
    np.testing.assert_array_equal(named.values[0], ndvi.values[0])
    np.testing.assert_array_equal(named.values[1], scene.values[1].astype(named.dtype))


def test_apply_switch_and_tap(scene_factory: Callable[..., xr.DataArray]) -> None:
    scene = scene_factory((200, 180))
    clear_tap_records("e2e")
    op = Tap.stats(name="e2e") | Switch.by_mean(
        band="nir", value=-1.0, if_true=NDVI(red=0, nir=1), if_false=NDWI(green=0, nir=1)
    )
    out = patchflow.apply(scene, op, size=64, stride=48)
    ref = patchflow.apply(scene, NDVI(red=0, nir=1), size=64, stride=48)  # every mean > -1
    np.testing.assert_allclose(out.values, ref.values, rtol=0, atol=1e-6)
    recs = tap_records("e2e")
    assert recs and all(r.min >= 0 and r.nan_count == 0 for r in recs)
    clear_tap_records("e2e")
