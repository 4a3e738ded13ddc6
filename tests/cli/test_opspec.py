"""``patchflow apply``'s operator specs (issue 15): ``--op NAME --op-arg KEY=VALUE`` for
registered operators, ``--op MODULE:CALLABLE`` for the user's own code, ``--pipeline`` JSON
and YAML files, and ``--model`` TorchScript files.

Every spec kind runs through the real ``patchflow`` command in a subprocess at least once
(a registered op, ``MODULE:CALLABLE`` on worker processes, a YAML ``--pipeline`` with a module
step, ``--model`` on worker processes, a missing PyTorch); the other cases run the same entry
point in-process (``cli.call``: one process start-up fewer each, and no second ``import
torch``), with ``sys.path`` and ``os.environ`` standing in for the subprocess's
``PYTHONPATH`` and environment. Each result is compared with the same operator run in Python
through ``patchflow.apply``, on GeoTIFFs written with rioxarray. The parser's pieces
(``parse_op_arg``, ``op_spec``, ``build_operator``) also get unit tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import textwrap
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rioxarray
import xarray as xr
from clirun import CLI

import patchflow
from patchflow.cli.opspec import OPTION, build_operator, op_spec, parse_op_arg, parse_op_args
from patchflow.errors import UsageError
from patchflow.io.sources import open_raster
from patchflow.ops import NDVI, NDWI, DNToReflectance, ModelOp, Rescale


@pytest.fixture(scope="module")
def cli() -> CLI:
    """Run the ``patchflow`` command: ``cli.run`` (subprocess) or ``cli.call``."""
    return CLI()


SIZE, STRIDE = "128", "96"


# --------------------------------------------------------------------------- helpers


def result(path: Path) -> np.ndarray:
    out = patchflow.open_result(path) if path.suffix == ".zarr" else rioxarray.open_rasterio(path)
    return np.asarray(out.values)


def python_apply(obj: xr.DataArray, op: Any, **kwargs: Any) -> np.ndarray:
    """The same operator through the Python API, with the command's chip grid."""
    out = patchflow.apply(obj, op, size=int(SIZE), stride=int(STRIDE), **kwargs)
    return np.asarray(out.values)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tif(
    scene_factory: Callable[..., xr.DataArray], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A 2-band uint16 GeoTIFF (red, nir) with a CRS, written by rioxarray."""
    path = tmp_path_factory.mktemp("input") / "scene.tif"
    scene_factory((300, 260), seed=7).rio.to_raster(
        path, tiled=True, blockxsize=128, blockysize=128
    )
    return path


@pytest.fixture(scope="module")
def source(tif: Path) -> xr.DataArray:
    """The GeoTIFF as the command reads it."""
    return open_raster(str(tif)).load()


USER_MODULE = '''
"""A user's own operators, imported by `patchflow apply --op pfuser:NAME`."""
import numpy as np

import patchflow.ops as ops


def scaled_diff(chip, gain=1.0):
    """Per-chip function: (nir - red) * gain, one band."""
    chip = chip.astype("float32")
    return (chip[1:2] - chip[0:1]) * gain


@ops.batched
def stack_sum(chips):
    """Batched function: sum of the bands of a stack of chips."""
    return chips.astype("float32").sum(axis=1, keepdims=True)


def make_ratio(eps=1.0):
    """Factory: returns the per-chip operator."""
    eps = float(eps)

    def ratio(chip):
        chip = chip.astype("float32")
        return chip[1:2] / (chip[0:1] + eps)
    return ratio


class Offset(ops.Operator):
    """An Operator class: instantiated with the --op-arg values."""

    def __init__(self, value=0.0):
        self.value = float(value)

    def _params(self):
        return {"value": self.value}

    def __call__(self, chips):
        return chips.astype("float32") + self.value


PIPELINE = ops.DNToReflectance(scale=1e-4) | ops.NDVI(red=0, nir=1)

import os
if os.environ.get("PFUSER_FAIL"):
    raise RuntimeError("pfuser is broken on purpose")
'''


@pytest.fixture(scope="module")
def user_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the user's module ``pfuser.py`` (for PYTHONPATH)."""
    root = tmp_path_factory.mktemp("user")
    (root / "pfuser.py").write_text(textwrap.dedent(USER_MODULE))
    return root


def on_path(root: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture
def importable(user_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``pfuser`` importable in this process, as ``PYTHONPATH`` makes it for the command,
    and imported afresh by the test (an earlier import must not hide an import error)."""
    sys.modules.pop("pfuser", None)
    monkeypatch.syspath_prepend(str(user_path))
    yield
    sys.modules.pop("pfuser", None)


def user_ops(root: Path) -> Any:
    """The user's module imported here too, for the Python reference."""
    sys.path.insert(0, str(root))
    try:
        import pfuser

        return pfuser
    finally:
        sys.path.remove(str(root))


# --------------------------------------------------------------------------- unit: parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("scale=0.0001", ("scale", 0.0001)),
        ("in_range=[0, 10000]", ("in_range", [0, 10000])),
        ("clip=false", ("clip", False)),
        ("nodata=null", ("nodata", None)),
        ("stat=median", ("stat", "median")),
        ('name="12"', ("name", "12")),
        ("red=B04", ("red", "B04")),
        ("expr=a=b", ("expr", "a=b")),
        (
            'op={"op": "NDVI", "params": {"red": 0, "nir": 1}}',
            ("op", {"op": "NDVI", "params": {"red": 0, "nir": 1}}),
        ),
    ],
)
def test_op_arg_values_are_json_else_text(text: str, expected: tuple[str, Any]) -> None:
    assert parse_op_arg(text) == expected


@pytest.mark.parametrize("text", ["scale", "=3", "2x=1", "a b=1"])
def test_op_arg_needs_key_equals_value(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="expected KEY=VALUE"):
        parse_op_arg(text)


def test_op_arg_given_twice() -> None:
    with pytest.raises(UsageError, match="--op-arg: gain is given twice"):
        parse_op_args([("gain", 1), ("gain", 2)])


def test_op_spec_names() -> None:
    for text in ("ndvi", "NDVI", "rescale", "dn-to-reflectance", "pkg.mod:Class.make"):
        assert op_spec(text) == text
    with pytest.raises(argparse.ArgumentTypeError, match="invalid choice: 'rescal'") as info:
        op_spec("rescal")
    assert "did you mean 'Rescale'" in str(info.value) and "MODULE:CALLABLE" in str(info.value)


def test_build_registered_operator_by_any_case() -> None:
    op = build_operator("dn_to_reflectance", {"scale": 2e-4}, where=OPTION)
    assert op == DNToReflectance(scale=2e-4)
    assert build_operator("ndvi", {"red": 0, "nir": "nir"}, where=OPTION) == NDVI(red=0, nir="nir")


def test_build_operator_names_the_real_parameters() -> None:
    with pytest.raises(UsageError) as info:
        build_operator("Rescale", {"in_rnge": [0, 1]}, where=OPTION)
    text = str(info.value)
    assert text.startswith("argument --op-arg: Rescale has no parameter 'in_rnge'")
    assert "did you mean 'in_range'" in text
    assert "in_range (required), out_range=[0.0, 1.0], clip=true" in text
    with pytest.raises(UsageError, match=r"--op-arg: NDVI needs red=VALUE, nir=VALUE"):
        build_operator("NDVI", {}, where=OPTION)
    # a value the operator rejects: its own reason, under the flag
    with pytest.raises(UsageError, match=r"^argument --op-arg: Composite: .*stat"):
        build_operator("composite", {"stat": "mode"}, where=OPTION)


# --------------------------------------------------------------------------- registered ops


def test_registered_op_with_op_args(
    cli: CLI, tif: Path, source: xr.DataArray, tmp_path: Path
) -> None:
    out = tmp_path / "rescaled.zarr"
    args = ["apply", str(tif), str(out), "--size", SIZE, "--stride", STRIDE, "-q"]
    cli.ok(
        cli.run(
            *args, "--op", "rescale", "--op-arg", "in_range=[0, 10000]", "--op-arg", "clip=false"
        )
    )
    expected = python_apply(source, Rescale(in_range=(0, 10000), clip=False))
    np.testing.assert_array_equal(result(out), expected)
    assert result(out).shape == (2, 300, 260)


def test_registered_band_op_uses_python_band_positions(
    cli: CLI, tif: Path, source: xr.DataArray, tmp_path: Path
) -> None:
    out = tmp_path / "ndvi.tif"
    args = ["apply", str(tif), str(out), "--size", SIZE, "--stride", STRIDE, "-q"]
    cli.ok(cli.call(*args, "--op", "NDVI", "--op-arg", "red=0", "--op-arg", "nir=1"))
    np.testing.assert_allclose(result(out), python_apply(source, NDVI(red=0, nir=1)), atol=1e-6)
    # 2 on a 2-band input: the operator's own error, spotting a 1-based number
    bad = cli.error(
        cli.call(*args, "--overwrite", "--op", "NDVI", "--op-arg", "red=1", "--op-arg", "nir=2"), 1
    )
    assert "0-based" in bad and "1-based" in bad


@pytest.mark.parametrize(
    ("extra", "status", "words"),
    [
        (["--op", "rescale", "--op-arg", "inrange=[0,1]"], 2, ["--op-arg", "in_range (required)"]),
        (["--op", "rescale"], 2, ["--op-arg", "Rescale needs in_range=VALUE"]),
        (["--op", "rescale", "--op-arg", "in_range"], 2, ["argument --op-arg", "KEY=VALUE"]),
        (["--op", "median"], 2, ["argument --op", "invalid choice: 'median'", "Composite"]),
        (["--op", "ndvi", "--op-arg", "red=0"], 2, ["--op ndvi takes no --op-arg", "--op NDVI"]),
        (
            ["--op", "NDVI", "--op-arg", "red=0", "--op-arg", "nir=1", "--red", "1"],
            2,
            ["--red is for --op ndvi"],
        ),
        (["--op-arg", "gain=2"], 2, ["--op-arg", "give --op"]),
        (["--device", "cpu"], 2, ["--device", "--model"]),
        (["--op", "rescale", "--model", "m.pt"], 2, ["--op or --model, not both"]),
    ],
)
def test_bad_op_specs_name_the_flag(
    cli: CLI, extra: list[str], status: int, words: list[str], tif: Path, tmp_path: Path
) -> None:
    line = cli.error(cli.call("apply", str(tif), str(tmp_path / "o.zarr"), *extra), status)
    for word in words:
        assert word in line, (word, line)
    assert not (tmp_path / "o.zarr").exists()


# --------------------------------------------------------------------------- MODULE:CALLABLE


@pytest.mark.parametrize(
    ("spec", "op_args", "reference"),
    [
        # a per-chip function, its keyword parameter bound from --op-arg
        (
            "pfuser:scaled_diff",
            ["gain=0.5"],
            lambda m: patchflow.ops.Lambda(lambda chip: m.scaled_diff(chip, gain=0.5)),
        ),
        # a function marked batched: called on stacks of chips
        ("pfuser:stack_sum", [], lambda m: m.stack_sum),
        # a factory: called once with the --op-arg values, returns the per-chip function
        ("pfuser:make_ratio", ["eps=2"], lambda m: m.make_ratio(eps=2)),
        # an Operator class: instantiated with the --op-arg values
        ("pfuser:Offset", ["value=-100"], lambda m: m.Offset(value=-100)),
        # an operator instance defined in the module
        ("pfuser:PIPELINE", [], lambda m: m.PIPELINE),
    ],
)
def test_module_callable(
    cli: CLI,
    spec: str,
    op_args: list[str],
    reference: Callable[[Any], Any],
    tif: Path,
    source: xr.DataArray,
    user_path: Path,
    importable: None,
    tmp_path: Path,
) -> None:
    """In-process; the installed command imports the module in the next test."""
    out = tmp_path / "user.zarr"
    flags = [x for arg in op_args for x in ("--op-arg", arg)]
    cli.ok(
        cli.call(
            "apply",
            str(tif),
            str(out),
            "--op",
            spec,
            *flags,
            "--size",
            SIZE,
            "--stride",
            STRIDE,
            "-q",
        )
    )
    expected = python_apply(source, reference(user_ops(user_path)))
    np.testing.assert_allclose(result(out), expected, rtol=1e-6, atol=1e-6)


def test_module_callable_on_worker_processes(
    cli: CLI, tif: Path, source: xr.DataArray, user_path: Path, tmp_path: Path
) -> None:
    """The function pickles by reference: process workers import the module themselves
    (found through the command's ``PYTHONPATH``)."""
    out = tmp_path / "user.zarr"
    cli.ok(
        cli.run(
            "apply",
            str(tif),
            str(out),
            "--op",
            "pfuser:scaled_diff",
            "--op-arg",
            "gain=3",
            "--scheduler",
            "processes",
            "--size",
            SIZE,
            "--stride",
            STRIDE,
            "-q",
            env=on_path(user_path),
        )
    )
    module = user_ops(user_path)
    expected = python_apply(source, patchflow.ops.Lambda(lambda c: module.scaled_diff(c, gain=3)))
    np.testing.assert_allclose(result(out), expected, rtol=1e-6)


@pytest.mark.parametrize(
    ("spec", "extra", "env", "status", "words"),
    [
        (
            "pfuser:scaled_diff",
            ["--op-arg", "gian=2"],
            {},
            2,
            [
                "argument --op-arg",
                "no parameter 'gian'",
                "did you mean 'gain'",
                "parameters: gain=1.0",
            ],
        ),
        ("pfuser:scaled_dif", [], {}, 2, ["no attribute 'scaled_dif'", "'scaled_diff'"]),
        (
            "pfuser:make_ratio",
            ["--op-arg", "eps=[1, 2]"],
            {},
            2,
            ["argument --op-arg", "pfuser:make_ratio(eps=[1, 2]) failed: TypeError"],
        ),
        ("pfuser:PIPELINE", ["--op-arg", "x=1"], {}, 2, ["operator instance", "no --op-arg"]),
        ("nosuchmodule:fn", [], {}, 2, ["no module named 'nosuchmodule'", "PYTHONPATH"]),
        (
            "pfuser:scaled_diff",
            [],
            {"PFUSER_FAIL": "1"},
            1,
            ["importing pfuser", "RuntimeError: pfuser is broken on purpose"],
        ),
    ],
)
def test_module_callable_errors(
    cli: CLI,
    spec: str,
    extra: list[str],
    env: dict[str, str],
    status: int,
    words: list[str],
    tif: Path,
    importable: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in env.items():  # (PFUSER_FAIL: the module raises while imported)
        monkeypatch.setenv(key, value)
    proc = cli.call("apply", str(tif), str(tmp_path / "o.zarr"), "--op", spec, *extra)
    line = cli.error(proc, status)
    for word in words:
        assert word in line, (word, line)


def test_op_args_name_bands_by_the_files_band_descriptions(
    cli: CLI, scene_factory: Callable[..., xr.DataArray], tmp_path: Path
) -> None:
    """A GeoTIFF's band descriptions are its band names for --op-arg, as for --bands."""
    scene = scene_factory((120, 100), seed=3)
    scl = xr.full_like(scene.isel(band=[0]), 4).where(scene.isel(band=[0]) % 7 != 0, 9)
    stack = xr.concat([scene, scl], "band").assign_coords(band=[1, 2, 3])
    stack.attrs["long_name"] = ("red", "nir", "scl")
    path = tmp_path / "described.tif"
    stack.rio.to_raster(path)
    out = tmp_path / "masked.zarr"
    args = ["--op", "scl", "--op-arg", "band=scl", "--size", "64", "--stride", "48", "-q"]
    cli.ok(cli.call("apply", str(path), str(out), *args))
    got = result(out)
    red, nir, cls = (stack.values[k].astype(np.float64) for k in range(3))
    keep = np.isin(cls, [4, 5, 6, 11])
    np.testing.assert_array_equal(np.isnan(got[0]), ~keep)
    np.testing.assert_allclose(got[1][keep], nir[keep])
    diff = tmp_path / "nd.zarr"
    nd = ["--op", "normalized_difference", "--op-arg", "a=nir", "--op-arg", "b=red"]
    cli.ok(cli.call("apply", str(path), str(diff), *nd, "--size", "64", "--stride", "48", "-q"))
    np.testing.assert_allclose(result(diff)[0], (nir - red) / (nir + red), rtol=1e-6)


# --------------------------------------------------------------------------- --pipeline


PIPELINE_YAML = """\
# DN -> reflectance -> NDVI, then the user's own step
- op: dn_to_reflectance
  params: {scale: 0.0001}
- op: NDVI
  params: {red: 0, nir: 1}
- op: pfuser:Offset
  params:
    value: 1.5
"""


def test_pipeline_yaml_with_a_module_step(
    cli: CLI, tif: Path, source: xr.DataArray, user_path: Path, tmp_path: Path
) -> None:
    spec = tmp_path / "pipe.yaml"
    spec.write_text(PIPELINE_YAML)
    out = tmp_path / "p.zarr"
    args = [
        "apply",
        str(tif),
        str(out),
        "--pipeline",
        str(spec),
        "--size",
        SIZE,
        "--stride",
        STRIDE,
    ]
    cli.ok(cli.run(*args, "-q", env=on_path(user_path)))
    module = user_ops(user_path)
    reference = DNToReflectance(scale=1e-4) | NDVI(red=0, nir=1) | module.Offset(1.5)
    np.testing.assert_allclose(result(out), python_apply(source, reference), atol=1e-6)


def test_pipeline_json_steps_and_errors(
    cli: CLI, tif: Path, source: xr.DataArray, user_path: Path, importable: None, tmp_path: Path
) -> None:
    """In-process (the YAML test above runs the installed command)."""
    spec = tmp_path / "pipe.json"
    steps = [
        {"op": "pfuser:scaled_diff", "params": {"gain": 2}},
        {"op": "rescale", "params": {"in_range": [-2000, 2000]}},
    ]
    spec.write_text(json.dumps(steps))
    out = tmp_path / "p.zarr"
    args = [
        "apply",
        str(tif),
        str(out),
        "--pipeline",
        str(spec),
        "--size",
        SIZE,
        "--stride",
        STRIDE,
    ]
    cli.ok(cli.call(*args, "-q"))
    module = user_ops(user_path)
    reference = patchflow.ops.Lambda(lambda c: module.scaled_diff(c, gain=2)) | Rescale(
        (-2000, 2000)
    )
    np.testing.assert_allclose(result(out), python_apply(source, reference), atol=1e-6)

    # a bad step is named by its number, with the operator's real parameters
    spec.write_text(json.dumps([steps[0], {"op": "rescale", "params": {"range": [0, 1]}}]))
    line = cli.error(cli.call(*args, "--overwrite"), 1)
    assert f"invalid pipeline {spec}: step 2:" in line and "in_range (required)" in line
    spec.write_text("- op: NDVI\n")
    line = cli.error(cli.call(*args, "--overwrite"), 1)
    assert "not valid JSON" in line and ".yaml" in line
    bad_yaml = tmp_path / "pipe.yml"
    bad_yaml.write_text("- op: [NDVI\n")
    line = cli.error(
        cli.call("apply", str(tif), str(tmp_path / "y.zarr"), "--pipeline", str(bad_yaml)), 1
    )
    assert f"invalid pipeline {bad_yaml}: not valid YAML" in line


PIPELINE_COMBINATORS = """\
# two outputs per chip (Branch), one of them chosen by the chip's content (Switch)
- op: branch
  params:
    ops:
      - op: ndvi
        params: {red: 0, nir: 1}
      - op: switch
        params:
          predicate: {kind: fraction, band: 1, where: ">", value: 3000, threshold: 0.5}
          cases:
            "true": {op: pfuser:scaled_diff, params: {gain: 2}}
            "false": {op: NDWI, params: {green: 0, nir: 1}}
- op: tap
  params: {observer: pfuser:stack_sum}
"""


def test_pipeline_branch_switch_tap(
    cli: CLI, tif: Path, source: xr.DataArray, user_path: Path, importable: None, tmp_path: Path
) -> None:
    """Combinators in a --pipeline: nested steps are spelled like top-level ones (any case,
    MODULE:CALLABLE) and the result equals the same operator built in Python (resuming
    such a store: tests/io/test_resume_recipes.py)."""
    from patchflow.ops import Branch, Switch, Tap
    from patchflow.ops.combinators import BandFraction

    spec = tmp_path / "combine.yaml"
    spec.write_text(PIPELINE_COMBINATORS)
    out = tmp_path / "c.zarr"
    args = ["apply", str(tif), str(out), "--pipeline", str(spec), "--size", SIZE]
    cli.ok(cli.call(*args, "--stride", STRIDE, "-q"))
    module = user_ops(user_path)
    reference = Branch(
        NDVI(red=0, nir=1),
        Switch(
            BandFraction(band=1, where=">", value=3000, threshold=0.5),
            {
                "true": patchflow.ops.Lambda(lambda c: module.scaled_diff(c, gain=2)),
                "false": NDWI(green=0, nir=1),
            },
        ),
    ) | Tap(module.stack_sum)
    want = python_apply(source, reference)
    got = result(out)
    assert got.shape == want.shape and got.shape[0] == 2
    np.testing.assert_allclose(got, want, atol=1e-5)
    # both cases of the Switch happened on this scene (else the test proves little)
    fraction = (source.values[1] > 3000).mean()
    assert 0.05 < fraction < 0.95, fraction


def test_pipeline_yaml_switch_cases_unquoted_true_false(tmp_path: Path) -> None:
    # YAML reads the keys true/false (and yes/no) as booleans: they must select the same
    # cases as "true"/"false", not fall through to the default for every chip
    from patchflow.cli.opspec import load_pipeline
    from patchflow.ops import Switch, from_config

    spec = tmp_path / "switch.yaml"
    spec.write_text(
        textwrap.dedent(
            """\
            - op: switch
              params:
                predicate: {kind: mean, band: 0, where: ">", value: 0.5}
                cases:
                  true: {op: rescale, params: {in_range: [0, 1], out_range: [0, 10]}}
                  no: {op: rescale, params: {in_range: [0, 1], out_range: [0, 1]}}
                default: {op: rescale, params: {in_range: [0, 1], out_range: [0, -1]}}
            """
        )
    )
    op = load_pipeline(str(spec))
    chips = np.stack([np.full((1, 2, 2), 0.2), np.full((1, 2, 2), 0.8)])
    np.testing.assert_allclose(op(chips)[:, 0, 0, 0], [0.2, 8.0])
    switch = op[0]
    assert isinstance(switch, Switch) and switch.cases == {
        "true": Rescale((0, 1), (0, 10)),
        "false": Rescale((0, 1), (0, 1)),
    }
    # the same through from_config, given the mapping yaml.safe_load makes
    cases = {1: {"op": "Rescale", "params": {"in_range": [0, 1]}}}
    config = {"predicate": {"kind": "mean", "band": 0, "value": 0.5}, "cases": cases}
    assert list(from_config({"op": "Switch", "params": config}).cases) == ["1"]


# --------------------------------------------------------------------------- --model


@pytest.fixture(scope="module")
def torchscript(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny conv net (2 bands in, 3 out) saved as TorchScript."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 3, 1)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export
        scripted = torch.jit.trace(net.eval(), torch.zeros(1, 2, 16, 16))
    path = tmp_path_factory.mktemp("model") / "net.pt"
    scripted.save(str(path))
    return path


def python_model(path: Path) -> ModelOp:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ModelOp(torch.jit.load(str(path)), device="cpu", batch_size=4)


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_model_torchscript(
    cli: CLI, scheduler: str, torchscript: Path, tif: Path, source: xr.DataArray, tmp_path: Path
) -> None:
    """``processes`` runs the installed command (the model travels to worker processes);
    ``threads`` the same entry point in-process, where torch is already imported."""
    out = tmp_path / "model.zarr"
    args = ["apply", str(tif), str(out), "--model", str(torchscript), "--batch-size", "4"]
    run = cli.run if scheduler == "processes" else cli.call
    cli.ok(run(*args, "--scheduler", scheduler, "--size", SIZE, "--stride", STRIDE, "-q"))
    expected = python_apply(source, python_model(torchscript), batch_size=4)
    got = result(out)
    assert got.shape == (3, 300, 260) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.slow
def test_model_errors(cli: CLI, torchscript: Path, tif: Path, tmp_path: Path) -> None:
    """In-process, but for a missing PyTorch: a fresh process where torch cannot be imported
    (the blocker stops ``import torch`` itself, so that process stays light)."""
    out = str(tmp_path / "m.zarr")
    line = cli.error(cli.call("apply", str(tif), out, "--model", str(tmp_path / "none.pt")), 1)
    assert "model not found" in line
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    line = cli.error(cli.call("apply", str(tif), out, "--model", str(tmp_path / "junk.pt")), 1)
    assert "TorchScript" in line
    line = cli.error(
        cli.call("apply", str(tif), out, "--model", str(torchscript), "--device", "gpu0"), 2
    )
    assert "argument --device" in line
    # without PyTorch: the error names the extra to install
    block = cli.blocker("torch")
    line = cli.error(cli.run("apply", str(tif), out, "--model", str(torchscript), pre=block), 1)
    assert "--model needs PyTorch" in line and "patchflow[torch]" in line
    assert not Path(out).exists()


# --------------------------------------------------------------------------- sklearn --model


@pytest.fixture(scope="module")
def forest(source: xr.DataArray, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A RandomForest (2 classes: NIR > red) fitted on labelled pixels of the scene, saved
    with joblib and with skops."""
    pytest.importorskip("sklearn")
    import joblib
    from sklearn.ensemble import RandomForestClassifier

    pixels = source.values.reshape(2, -1).T.astype(np.float64)
    rng = np.random.default_rng(0)
    pick = rng.choice(len(pixels), 2000, replace=False)
    labels = (pixels[pick, 1] > pixels[pick, 0] * 1.2).astype(np.int64)
    model = RandomForestClassifier(n_estimators=8, max_depth=5, random_state=0)
    model.fit(pixels[pick], labels)
    root = tmp_path_factory.mktemp("forest")
    paths = {"joblib": root / "rf.joblib"}
    joblib.dump(model, paths["joblib"])
    try:
        import skops.io

        paths["skops"] = root / "rf.skops"
        skops.io.dump(model, paths["skops"])
    except ImportError:  # pragma: no cover - depends on the environment
        pass
    return paths


def _whole_scene_predict(source: xr.DataArray, path: Path, proba: bool = False) -> np.ndarray:
    """The estimator on every pixel of the whole scene, loaded independently."""
    import joblib

    model = joblib.load(path)
    pixels = source.values.reshape(2, -1).T.astype(np.float64)
    if proba:
        return model.predict_proba(pixels).T.reshape(-1, *source.shape[-2:])
    return model.predict(pixels).reshape(source.shape[-2:])


@pytest.mark.parametrize("fmt", ["joblib", "skops"])
def test_model_sklearn_file_equals_whole_scene_predict(
    cli: CLI, fmt: str, forest: dict[str, Path], tif: Path, source: xr.DataArray, tmp_path: Path
) -> None:
    if fmt not in forest:
        pytest.skip("skops is not installed")
    out = tmp_path / "classes.tif"
    args = ["apply", str(tif), str(out), "--model", str(forest[fmt])]
    cli.ok(cli.run(*args, "--agg", "vote", "--n-classes", "2", "--size", SIZE, "--stride", STRIDE))
    got = result(out)
    assert got.shape == (1, *source.shape[-2:])
    expected = _whole_scene_predict(source, forest["joblib"])
    assert len(np.unique(expected)) == 2  # both classes occur: the test can fail
    np.testing.assert_array_equal(got[0], expected)


def test_model_sklearn_probabilities_and_resume(
    cli: CLI, forest: dict[str, Path], tif: Path, source: xr.DataArray, tmp_path: Path
) -> None:
    out = tmp_path / "proba.zarr"
    args = ["apply", str(tif), str(out), "--model", str(forest["joblib"])]
    cli.ok(cli.call(*args, "--model-output", "predict_proba", "--size", SIZE, "--stride", STRIDE))
    expected = _whole_scene_predict(source, forest["joblib"], proba=True)
    np.testing.assert_allclose(result(out), expected, rtol=1e-6, atol=1e-6)
    # the job record holds the model as its file's path and SHA-256: resume needs nothing else
    cli.ok(cli.call("resume", str(out)))
    np.testing.assert_allclose(result(out), expected, rtol=1e-6, atol=1e-6)


def test_model_sklearn_errors(cli: CLI, forest: dict[str, Path], tif: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "m.tif")
    line = cli.error(cli.call("apply", str(tif), out, "--model", str(tmp_path / "none.joblib")), 1)
    assert "model not found" in line
    (tmp_path / "junk.joblib").write_bytes(b"not a model")
    line = cli.error(cli.call("apply", str(tif), out, "--model", str(tmp_path / "junk.joblib")), 1)
    assert "junk.joblib" in line
    rf = str(forest["joblib"])
    line = cli.error(cli.call("apply", str(tif), out, "--model", rf, "--device", "cuda"), 2)
    assert "--device is the torch device of a TorchScript --model" in line
    line = cli.error(cli.call("apply", str(tif), out, "--model-output", "predict_proba"), 2)
    assert "--model-output is for a scikit-learn --model" in line
    assert not Path(out).exists()


def test_subprocess_uses_the_console_script() -> None:
    """The subprocess tests above run the installed entry point, not only ``python -m``."""
    assert shutil.which("patchflow", path=str(Path(sys.executable).parent)) is not None


def test_pipeline_yaml_exponent_floats_are_numbers(importable: None, tmp_path: Path) -> None:
    # PyYAML (YAML 1.1) reads 5e-1 as the string "5e-1": the user's function would get
    # text for its gain and fail inside the graph
    from patchflow.cli.opspec import load_pipeline

    spec = tmp_path / "gain.yaml"
    spec.write_text("- op: pfuser:scaled_diff\n  params: {gain: 5e-1}\n")
    op = load_pipeline(str(spec))
    chips = np.stack([np.stack([np.full((2, 2), 1.0), np.full((2, 2), 5.0)])])
    np.testing.assert_allclose(op(chips), np.full((1, 1, 2, 2), 2.0))
    # in a list, upper case, signed exponent
    spec.write_text("- op: rescale\n  params: {in_range: [0, 1E+4], out_range: [0, 1]}\n")
    np.testing.assert_allclose(load_pipeline(str(spec))(np.full((1, 1, 1, 1), 5e3)), 0.5)
