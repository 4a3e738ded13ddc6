"""Discoverable interfaces (issue #13): real keyword-only signatures, no forged ones.

``apply``, ``run`` and the ``.patch`` accessor spell out every keyword of
:func:`patchflow.engine.prepare.prepare` (the source of truth), so ``help()``, ``inspect.signature``
and editor completion show them; unknown keywords still get patchflow's helpful
:class:`~patchflow.errors.ParameterError` rather than Python's ``TypeError``.
"""

from __future__ import annotations

import functools
import inspect
import tempfile
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

import patchflow
import patchflow.engine.prepare
from patchflow import options
from patchflow.accessor import PatchAccessor
from patchflow.engine.aggregate import AGGREGATIONS
from patchflow.errors import ParameterError
from patchflow.io.store import MODES, ZARR_FORMATS
from patchflow.options import DEFAULT_SIZE, given_keywords
from patchflow.plan.grid import BOUNDARIES

KW = inspect.Parameter.KEYWORD_ONLY
PREPARE = patchflow.engine.prepare.prepare
#: prepare's options whose annotation is a Literal of the valid strings in the wrappers
LITERALS = {
    "boundary": BOUNDARIES,
    "pad_mode": patchflow.engine.prepare.PAD_MODES,
    "agg": tuple(AGGREGATIONS),
    "on_error": patchflow.engine.prepare.ON_ERROR,
}
RUN_OWN = (
    "store",
    "mode",
    "resume",
    "overwrite",
    "keep_sums",
    "var",
    "compressors",
    "zarr_format",
    "creation_options",
    "scheduler",
    "progress",
)
#: (name, function) of every public entry point that takes all of prepare's keywords
WRAPPERS = [
    ("apply", patchflow.apply),
    ("run", patchflow.run),
    ("DataArray.patch.apply", xr.DataArray.patch.apply),
    ("DataArray.patch.run", xr.DataArray.patch.run),
    ("Dataset.patch.apply", xr.Dataset.patch.apply),
    ("Dataset.patch.run", xr.Dataset.patch.run),
]
WRAPPER_IDS = [w[0] for w in WRAPPERS]


def _keyword_params(fn: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    params = inspect.signature(fn).parameters.values()
    return {p.name: p for p in params if p.kind is KW}


def _scene() -> xr.DataArray:
    return xr.DataArray(np.random.default_rng(0).random((2, 64, 64)), dims=("band", "y", "x"))


def _first_band(chips: np.ndarray) -> np.ndarray:
    return chips[:1]


def _store() -> str:
    return str(Path(tempfile.mkdtemp()) / "out.zarr")


# --------------------------------------------------------------------------- signatures


@pytest.mark.parametrize(("label", "fn"), WRAPPERS, ids=WRAPPER_IDS)
def test_every_prepare_keyword_is_spelled_out(label: str, fn: Callable[..., Any]) -> None:
    expected = _keyword_params(PREPARE)
    got = _keyword_params(fn)
    missing = [n for n in expected if n not in got]
    assert not missing, f"{label} lacks prepare's keywords {missing}"
    # same order as prepare (the wrapper's own keywords may sit around them)
    assert [n for n in got if n in expected] == list(expected)
    for name, param in expected.items():
        assert got[name].kind is KW, f"{label}({name}=) must be keyword-only"
        assert got[name].default == param.default, f"{label}({name}=) default differs"


@pytest.mark.parametrize(("label", "fn"), WRAPPERS, ids=WRAPPER_IDS)
def test_annotations_match_prepare(label: str, fn: Callable[..., Any]) -> None:
    want = typing.get_type_hints(PREPARE)
    hints = typing.get_type_hints(fn)
    for name in _keyword_params(PREPARE):
        if name in LITERALS:
            # a fixed set of strings: a Literal of exactly the values the runtime accepts
            assert typing.get_origin(hints[name]) is typing.Literal, (label, name)
            assert set(typing.get_args(hints[name])) == set(LITERALS[name]), (label, name)
            assert want[name] in (str, hints[name]), (label, name)
        else:
            assert hints[name] == want[name], f"{label}({name}=) annotation differs"


@pytest.mark.parametrize(("label", "fn"), WRAPPERS, ids=WRAPPER_IDS)
def test_everything_after_op_is_keyword_only(label: str, fn: Callable[..., Any]) -> None:
    params = list(inspect.signature(fn).parameters.values())
    positional = [p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert positional in (["obj", "op"], ["self", "op"]), label
    var_kw = [p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]
    # the one catch-all is only there to turn unknown keywords into ParameterError
    assert [p.name for p in var_kw] == ["unknown"], label
    assert not [p for p in params if p.kind is inspect.Parameter.VAR_POSITIONAL], label


@pytest.mark.parametrize("fn", [patchflow.apply, xr.DataArray.patch.apply])
def test_apply_own_keywords(fn: Callable[..., Any]) -> None:
    own = _keyword_params(fn)
    assert own["per_variable"].default is False
    assert set(own) == {*_keyword_params(PREPARE), "per_variable"}


@pytest.mark.parametrize("fn", [patchflow.run, xr.DataArray.patch.run])
def test_run_own_keywords(fn: Callable[..., Any]) -> None:
    own = _keyword_params(fn)
    assert set(own) == {*_keyword_params(PREPARE), *RUN_OWN}
    assert own["store"].default is inspect.Parameter.empty  # required
    mode = typing.get_type_hints(fn)["mode"]
    assert typing.get_origin(mode) is typing.Literal
    assert set(typing.get_args(mode)) == set(MODES)
    assert own["mode"].default == "w"
    # None: 3 for a new store, the store's own format when resuming
    formats = typing.get_args(typing.get_type_hints(fn)["zarr_format"])
    assert typing.get_origin(formats[0]) is typing.Literal and formats[1] is type(None)
    assert set(typing.get_args(formats[0])) == set(ZARR_FORMATS)
    assert own["zarr_format"].default is None


@pytest.mark.parametrize(
    "fn",
    [
        patchflow.apply,
        patchflow.run,
        PatchAccessor.apply,
        PatchAccessor.run,
        PatchAccessor.grid,
        PatchAccessor.sample,
        PatchAccessor.zonal_stats,
        PatchAccessor.stitch,
        PatchAccessor.polygon_chips,
    ],
)
def test_no_forged_signature(fn: Callable[..., Any]) -> None:
    assert not hasattr(fn, "__signature__")
    assert not hasattr(fn, "__wrapped__")


def test_accessor_on_the_class_is_the_accessor() -> None:
    # what Jupyter inspects for ``scene.patch.apply(`` and ``help(xr.DataArray.patch)``
    assert xr.DataArray.patch is PatchAccessor
    assert xr.Dataset.patch is PatchAccessor


@pytest.mark.parametrize(
    ("method", "free"),
    [
        ("apply", patchflow.apply),
        ("run", patchflow.run),
        ("grid", patchflow.plan_grid),
        ("sample", patchflow.sample),
        ("zonal_stats", patchflow.zonal_stats),
        ("stitch", patchflow.stitch),
        ("polygon_chips", patchflow.polygon_chips),
        ("sample_points", patchflow.sample_points),
        ("points_in_chips", patchflow.points_in_chips),
        ("apply_vector", patchflow.apply_vector),
    ],
)
def test_accessor_mirrors_the_free_function(method: str, free: Callable[..., Any]) -> None:
    mine = list(inspect.signature(getattr(PatchAccessor, method)).parameters.values())[1:]
    theirs = list(inspect.signature(free).parameters.values())[1:]  # without obj
    catch_all = [p for p in mine if p.kind is inspect.Parameter.VAR_KEYWORD]
    assert [p.name for p in catch_all] in ([], ["unknown"])
    if method == "grid":  # plan_grid takes no catch-all; grid adds one for ParameterError
        mine = [p for p in mine if p not in catch_all]
    shown = [(p.name, p.kind, p.default) for p in mine]
    assert shown == [(p.name, p.kind, p.default) for p in theirs]
    for mine_p, their_p in zip(mine, theirs, strict=True):
        if mine_p.name not in LITERALS:
            assert mine_p.annotation == their_p.annotation, (method, mine_p.name)


@pytest.mark.parametrize("fn", [patchflow.stitch, PatchAccessor.stitch])
def test_stitch_spells_out_chip_nodata(fn: Callable[..., Any]) -> None:
    # the chips' nodata, as apply's input_nodata= is its input's: keyword-only, None =
    # read from the chip outputs' attrs
    param = inspect.signature(fn).parameters["chip_nodata"]
    assert param.kind is KW and param.default is None
    assert (
        typing.get_type_hints(fn)["chip_nodata"] == typing.get_type_hints(PREPARE)["input_nodata"]
    )


@pytest.mark.parametrize(
    ("alias", "values"),
    [
        (options.Boundary, BOUNDARIES),
        (options.PadMode, patchflow.engine.prepare.PAD_MODES),
        (options.Agg, tuple(AGGREGATIONS)),
        (options.OnError, patchflow.engine.prepare.ON_ERROR),
        (options.RunMode, MODES),
    ],
)
def test_literal_aliases_match_runtime_checks(alias: Any, values: tuple[str, ...]) -> None:
    assert set(typing.get_args(alias)) == set(values)


@pytest.mark.parametrize("fn", [patchflow.apply, patchflow.run, patchflow.stitch])
def test_every_keyword_is_documented(fn: Callable[..., Any]) -> None:
    doc = inspect.getdoc(fn) or ""
    section = doc.split("Parameters\n----------", 1)[1].split("Returns\n-------", 1)[0]
    for name in inspect.signature(fn).parameters:
        assert name in section, f"{fn.__name__}: {name} is not documented"


# --------------------------------------------------------------------------- forwarding


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replace prepare (signature kept) by a recorder that stops the call."""
    got: dict[str, Any] = {}

    class Stop(Exception):
        pass

    @functools.wraps(PREPARE)
    def recorder(obj: Any, op: Any, **kw: Any) -> Any:
        got.update(kw)
        raise Stop

    monkeypatch.setattr(patchflow.engine.prepare, "prepare", recorder)
    got["__stop__"] = Stop
    return got


def _call(fn: Callable[..., Any], kwargs: dict[str, Any], seen: dict[str, Any]) -> dict[str, Any]:
    stop = seen.pop("__stop__")
    scene = _scene()
    if fn in (patchflow.run, PatchAccessor.run):
        kwargs = {"store": _store(), **kwargs}
    with pytest.raises(stop):
        if fn in (PatchAccessor.apply, PatchAccessor.run):
            getattr(scene.patch, fn.__name__)(_first_band, **kwargs)
        else:
            fn(scene, _first_band, **kwargs)
    return seen


FORWARDERS = [patchflow.apply, patchflow.run, PatchAccessor.apply, PatchAccessor.run]


@pytest.mark.parametrize("fn", FORWARDERS, ids=lambda f: f.__qualname__)
def test_every_keyword_reaches_prepare(fn: Callable[..., Any], seen: dict[str, Any]) -> None:
    chosen = {name: object() for name in _keyword_params(PREPARE)}  # none is a default
    got = _call(fn, dict(chosen), seen)
    assert got.keys() == chosen.keys()
    assert all(got[k] is chosen[k] for k in chosen)


@pytest.mark.parametrize("fn", FORWARDERS, ids=lambda f: f.__qualname__)
def test_only_what_the_call_gives_reaches_prepare(
    fn: Callable[..., Any], seen: dict[str, Any]
) -> None:
    # as with **params before: prepare's defaults apply, and what the call wrote is passed
    # on even when it equals a default (a store's recipe and error messages rely on this)
    got = _call(fn, {"size": 256, "stride": 96}, seen)
    assert got == {"size": 256, "stride": 96}
    assert type(got["size"]) is int


@pytest.mark.parametrize("fn", FORWARDERS, ids=lambda f: f.__qualname__)
def test_nothing_given_nothing_passed(fn: Callable[..., Any], seen: dict[str, Any]) -> None:
    assert _call(fn, {}, seen) == {}


def test_given_keywords() -> None:
    def wrapper(
        *, a: Any = 1, b: Any = (OSError,), c: Any = "hann", own: Any = 0, req: Any
    ) -> None:
        return None

    def target(*, a: Any = 1, b: Any = (OSError,), c: Any = "hann", req: Any = 0) -> None:
        return None

    defaults = inspect.signature(wrapper).parameters
    scope = {"a": 1, "b": defaults["b"].default, "c": np.ones(3), "own": 5, "req": 5}
    assert list(given_keywords(wrapper, scope, target)) == ["c"]  # own/required left out
    assert list(given_keywords(wrapper, {"b": (OSError,)}, target)) == ["b"]  # a new tuple
    assert list(given_keywords(wrapper, {"own": 5})) == ["own"]  # target defaults to fn


def test_default_size_is_its_own_object() -> None:
    assert DEFAULT_SIZE == 256 and DEFAULT_SIZE is not 256  # noqa: F632
    assert repr(DEFAULT_SIZE) == "256"  # how help() and the signature show it


# --------------------------------------------------------------------------- unknown keywords


def _call_real(where: str, **kwargs: Any) -> Any:
    scene = _scene()
    if where == "apply":
        return patchflow.apply(scene, _first_band, **kwargs)
    if where == "run":
        return patchflow.run(scene, _first_band, store=_store(), **kwargs)
    if where == "accessor.apply":
        return scene.patch.apply(_first_band, **kwargs)
    if where == "accessor.run":
        return scene.patch.run(_first_band, store=_store(), **kwargs)
    if where == "accessor.grid":
        return scene.patch.grid(**kwargs)
    if where == "dataset.apply":
        return scene.to_dataset(dim="band").patch.apply(_first_band, **kwargs)
    raise AssertionError(where)


PLACES = ["apply", "run", "accessor.apply", "accessor.run", "accessor.grid", "dataset.apply"]


@pytest.mark.parametrize("where", PLACES)
def test_peer_keyword_gets_patchflow_equivalent(where: str) -> None:
    with pytest.raises(ParameterError, match=r"'overlap' comes from .*stride=") as info:
        _call_real(where, overlap=0.25)
    assert "stride=192" in str(info.value)  # worked out from the default size=256
    assert not isinstance(info.value, TypeError)


@pytest.mark.parametrize("where", PLACES)
def test_explicit_size_is_not_called_the_default(where: str) -> None:
    with pytest.raises(ParameterError, match=r"overlap=0\.25 with size=256 → stride=192"):
        _call_real(where, size=256, overlap=0.25)
    with pytest.raises(ParameterError, match=r"with size=256 \(the default\) → stride=192"):
        _call_real(where, overlap=0.25)


def test_peer_keyword_uses_the_call_s_values() -> None:
    with pytest.raises(ParameterError, match=r"roi_size=\(32, 32\) → size=32"):
        patchflow.apply(_scene(), _first_band, roi_size=(32, 32))
    with pytest.raises(ParameterError, match=r"overlap=16 with size=64 → stride=48"):
        patchflow.apply(_scene(), _first_band, size=64, overlap=16)


@pytest.mark.parametrize("where", PLACES)
def test_typo_gets_closest_name(where: str) -> None:
    with pytest.raises(ParameterError, match=r"'strid'; did you mean 'stride'"):
        _call_real(where, size=32, strid=16)


def test_unknown_keyword_lists_valid_names() -> None:
    with pytest.raises(ParameterError, match=r"apply\(\) takes: .*per_variable"):
        patchflow.apply(_scene(), _first_band, zzzzzz=1)


def test_named_keywords_still_work() -> None:
    scene = _scene()
    out = patchflow.apply(scene, _first_band, size=32, stride=16, boundary="pad", pad_mode="edge")
    np.testing.assert_allclose(out.values, scene.values[:1])
    via = scene.patch.apply(_first_band, size=32, stride=16, agg="mean", window="boxcar")
    np.testing.assert_allclose(via.values, scene.values[:1])
    report = scene.patch.run(_first_band, store=_store(), size=32, stride=16, retry_on=(OSError,))
    np.testing.assert_allclose(report.open().values, scene.values[:1])
    assert scene.patch.grid(size=32, stride=16).grid.counts == (3, 3)
