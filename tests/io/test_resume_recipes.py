"""``patchflow resume STORE`` needs nothing else: every job the command line can start
records a recipe the store alone finishes (issue 15).

Each case runs the real ``patchflow apply`` in a subprocess on real GeoTIFFs (or STAC items
pointing at GeoTIFFs), SIGKILLs it part-way through writing its blocks (the
``PATCHFLOW_CRASH_AT=block-N`` hook of :mod:`patchflow.io.store`), then runs ``patchflow
resume OUT.zarr`` with no other argument, and compares the finished store with an
uninterrupted run of the same command, bit for bit. The kills are real processes; the
``--model`` and ``--op MODULE:CALLABLE`` resumes run the installed command too (a fresh
process, the module found through ``PYTHONPATH``), the other resumes and the uninterrupted
references run the same entry point in-process (``patchflow.cli.main``), one process
start-up fewer each. A killed store shared by two tests is copied by each before use:

* ``--op MODULE:CALLABLE`` (the user's per-chip function, as :class:`patchflow.ops.Imported`),
* ``--pipeline`` with a ``MODULE:CALLABLE`` step,
* ``--model`` (a TorchScript file, as :class:`patchflow.ops.TorchScript`),
* ``--bands`` (a ``SelectBands`` step; the input reopens unchanged),
* ``--stac`` (``open_stac``'s call recorded in the stack's encoding).

Also: what resume refuses (a changed model file, a module no longer importable, STAC items
given as Python objects) and the Python API's side of the same recipes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from affine import Affine
from conftest import stac_item, write_band_tif

import patchflow
from patchflow.errors import ConfigError, ModelChangedError, ResumeRecipeError
from patchflow.io.stac import STAC_CALL, open_stac
from patchflow.io.store import CRASH_AT, _input_identity, _open_input, _read_meta
from patchflow.io.synthetic import ORIGIN
from patchflow.ops import Imported, from_config, from_json, to_json

pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")

SHAPE = (300, 260)
#: chips 128/96 on 128-pixel blocks: 3 x 3 blocks per date
CHIPS = ["--size", "128", "--stride", "96", "--chunks", "128"]
BANDS = ("B02", "B04", "B08", "B11")
SCRIPT = Path(sys.executable).parent / "patchflow"

USER_MODULE = '''
"""The user's own operators, imported by `patchflow apply --op pfrecipe:NAME`."""
import numpy as np

import patchflow.ops as ops


def scaled_diff(chip, gain=1.0):
    """Per-chip function: (band 1 - band 0) * gain, one band."""
    chip = chip.astype("float32")
    return (chip[1:2] - chip[0:1]) * gain


class Offset(ops.Operator):
    """An Operator class: instantiated with the step's params."""

    def __init__(self, value=0.0):
        self.value = float(value)

    def _params(self):
        return {"value": self.value}

    def __call__(self, chips):
        return chips.astype("float32") + self.value
'''


# --------------------------------------------------------------------------- helpers


def patchflow_cmd(
    *args: str, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """The installed ``patchflow`` command in a fresh process."""
    argv = [str(SCRIPT), *args] if SCRIPT.exists() else [sys.executable, "-m", "patchflow", *args]
    full = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run(argv, capture_output=True, text=True, env=full, timeout=timeout)


def patchflow_call(*args: str) -> subprocess.CompletedProcess[str]:
    """The same entry point, ``patchflow.cli.main(args)``, in this process."""
    from patchflow.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(args))
    return subprocess.CompletedProcess(list(args), status, out.getvalue(), err.getvalue())


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout


def error_line(proc: subprocess.CompletedProcess[str], status: int) -> str:
    assert proc.returncode == status, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("patchflow: error: "), proc.stderr
    return lines[0]


def done_blocks(store: Path) -> tuple[int, int]:
    """``(done, total)`` blocks of a store, from its done markers."""
    done = np.asarray(zarr.open_group(str(store), mode="r")["_patchflow/done"][...])
    return int(done.sum()), int(done.size)


def killed_run(args: list[str], out: Path, env: dict[str, str] | None = None) -> None:
    """``patchflow apply ARGS OUT`` SIGKILLed while writing its 4th block (one at a time)."""
    crash = {**(env or {}), CRASH_AT: "block-4"}
    proc = patchflow_cmd(
        "apply", *args, str(out), *CHIPS, "--scheduler", "synchronous", "-q", env=crash
    )
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr)
    done, total = done_blocks(out)
    assert done == 3 and total > done, (done, total)


def resumed_equals_uninterrupted(
    args: list[str],
    tmp_path: Path,
    env: dict[str, str] | None = None,
    *,
    killed: Path | None = None,
    fresh: bool = False,
) -> xr.DataArray:
    """Kill ``apply ARGS`` (or take a copy of ``killed``, a store of that killed command),
    finish it with ``patchflow resume OUT.zarr`` alone (the installed command with ``env``
    if ``fresh``, else in-process), and check it equals the same command run without
    interruption in-process (values, dtype, attrs, coords)."""
    out, ref = tmp_path / "out.zarr", tmp_path / "ref.zarr"
    if killed is None:
        killed_run(args, out, env)
    else:
        shutil.copytree(killed, out)
    with pytest.raises(patchflow.errors.IncompleteStoreError):
        patchflow.open_result(out)
    resumed = (
        patchflow_cmd("resume", str(out), env=env) if fresh else patchflow_call("resume", str(out))
    )
    text = ok(resumed)
    done, total = done_blocks(out)
    assert f"{total - 3} computed, 3 already done" in text, text
    assert done == total
    ok(patchflow_call("apply", *args, str(ref), *CHIPS, "-q"))
    got, want = patchflow.open_result(out), patchflow.open_result(ref)
    assert got.dtype == want.dtype and got.dims == want.dims
    np.testing.assert_array_equal(got.values, want.values)
    assert got.attrs == want.attrs
    xr.testing.assert_identical(got.coords.to_dataset(), want.coords.to_dataset())
    return got


def on_path(root: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tif(
    scene_factory: Callable[..., xr.DataArray], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A 2-band uint16 GeoTIFF (red, nir) with a CRS, written by rioxarray."""
    path = tmp_path_factory.mktemp("input") / "scene.tif"
    scene_factory(SHAPE, seed=7).rio.to_raster(path, tiled=True, blockxsize=128, blockysize=128)
    return path


@pytest.fixture(scope="module")
def tif4(
    scene_factory: Callable[..., xr.DataArray], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A 4-band uint16 GeoTIFF whose bands are described B02, B04, B08, B11."""
    a, b = scene_factory(SHAPE, seed=11), scene_factory(SHAPE, seed=12)
    data = np.stack([b.values[0], a.values[0], a.values[1], b.values[1]])
    four = xr.DataArray(
        data,
        dims=("band", "y", "x"),
        coords={"band": [1, 2, 3, 4], "y": a.y, "x": a.x},
        attrs={"long_name": BANDS},
    )
    four = four.rio.write_crs(a.rio.crs).rio.write_transform(a.rio.transform())
    path = tmp_path_factory.mktemp("four") / "s2.tif"
    four.rio.to_raster(path, tiled=True, blockxsize=128, blockysize=128)
    return path


@pytest.fixture(scope="module")
def user_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the user's module ``pfrecipe.py`` (for PYTHONPATH)."""
    root = tmp_path_factory.mktemp("user")
    (root / "pfrecipe.py").write_text(textwrap.dedent(USER_MODULE))
    return root


@pytest.fixture
def importable(user_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``pfrecipe`` importable in this process, as ``PYTHONPATH`` makes it for the command;
    forgotten again afterwards (a resume must find it unimportable without the path)."""
    sys.modules.pop("pfrecipe", None)
    monkeypatch.syspath_prepend(str(user_path))
    yield
    sys.modules.pop("pfrecipe", None)


#: ``apply`` of the user's function (both tests of that recipe resume a copy of its store)
MODULE_OP = ["--op", "pfrecipe:scaled_diff", "--op-arg", "gain=0.5"]


@pytest.fixture(scope="module")
def killed_module_op(tif: Path, user_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``apply TIF --op pfrecipe:scaled_diff`` killed after 3 blocks (not to be resumed in
    place: tests copy it)."""
    out = tmp_path_factory.mktemp("killed_op") / "out.zarr"
    killed_run([str(tif), *MODULE_OP], out, on_path(user_path))
    return out


def _torchscript(path: Path, seed: int) -> Path:
    torch = pytest.importorskip("torch")
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export
        torch.jit.trace(net.eval(), torch.zeros(1, 2, 16, 16)).save(str(path))
    return path


@pytest.fixture(scope="module")
def torchscript(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny conv net (2 bands in, 2 out) saved as TorchScript (a test replacing the file
    puts it back)."""
    return _torchscript(tmp_path_factory.mktemp("model") / "net.pt", seed=0)


#: ``apply``'s model flags (both tests of that recipe resume a copy of its store)
MODEL_OP = ["--batch-size", "4"]


@pytest.fixture(scope="module")
def killed_model(tif: Path, torchscript: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``apply TIF --model net.pt`` killed after 3 blocks (tests copy it)."""
    out = tmp_path_factory.mktemp("killed_model") / "out.zarr"
    killed_run([str(tif), "--model", str(torchscript), *MODEL_OP], out)
    return out


@pytest.fixture(scope="module")
def stac_items(
    scene_factory: Callable[..., xr.DataArray], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """``items.json``: 2 dates x (B04, B08) GeoTIFFs, relative hrefs, projection v2."""
    root = tmp_path_factory.mktemp("stac")
    transform = Affine(10.0, 0.0, ORIGIN[0], 0.0, -10.0, ORIGIN[1])
    features = []
    for k in range(2):
        red, nir = scene_factory(SHAPE, seed=20 + k).values
        assets = {}
        for name, band in (("B04", red), ("B08", nir)):
            href = f"d{k}_{name}.tif"
            write_band_tif(root / href, band, transform, "EPSG:32610")
            assets[name] = {
                "href": href,
                "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                "proj:code": "EPSG:32610",
                "proj:shape": list(band.shape),
                "proj:transform": list(transform)[:6],
            }
        features.append(stac_item(f"scene_{k}", assets, f"2024-06-0{1 + 5 * k}T10:00:00Z"))
    path = root / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


# --------------------------------------------------------------------------- the five recipes


@pytest.mark.slow
def test_module_callable(
    tif: Path, user_path: Path, importable: None, killed_module_op: Path, tmp_path: Path
) -> None:
    args = [str(tif), *MODULE_OP]
    got = resumed_equals_uninterrupted(
        args, tmp_path, on_path(user_path), killed=killed_module_op, fresh=True
    )
    assert got.shape == (1, *SHAPE)
    recipe = _read_meta(str(tmp_path / "out.zarr"))["recipe"]
    assert recipe["op"] == {
        "op": "Imported",
        "params": {"target": "pfrecipe:scaled_diff", "params": {"gain": 0.5}},
    }
    # where the module came from, for the error when it cannot be imported
    assert recipe["imports"] == {"pfrecipe": str(user_path.resolve())}


@pytest.mark.slow
def test_pipeline_with_a_module_step(
    tif: Path, user_path: Path, importable: None, tmp_path: Path
) -> None:
    pipe = tmp_path / "pipe.yaml"
    pipe.write_text(
        "- op: dn_to_reflectance\n  params: {scale: 0.0001}\n"
        "- op: pfrecipe:Offset\n  params: {value: 1.5}\n"
    )
    got = resumed_equals_uninterrupted(
        [str(tif), "--pipeline", str(pipe)], tmp_path, on_path(user_path)
    )
    assert got.shape == (2, *SHAPE)
    recipe = _read_meta(str(tmp_path / "out.zarr"))["recipe"]
    assert recipe["op"][1] == {
        "op": "Imported",
        "params": {"target": "pfrecipe:Offset", "params": {"value": 1.5}},
    }


@pytest.mark.slow
def test_pipeline_with_combinators(tif: Path, tmp_path: Path) -> None:
    """Branch and Switch steps (nested steps spelled like top-level ones) resume from the
    job record alone."""
    pipe = tmp_path / "pipe.yaml"
    pipe.write_text(
        "- op: branch\n  params:\n    ops:\n"
        "      - {op: ndvi, params: {red: 0, nir: 1}}\n"
        "      - op: switch\n        params:\n"
        "          predicate: {kind: fraction, band: 1, where: '>', value: 3000}\n"
        "          cases:\n"
        "            'true': {op: ndwi, params: {green: 0, nir: 1}}\n"
        "            'false': {op: NDVI, params: {red: 1, nir: 0}}\n"
    )
    got = resumed_equals_uninterrupted([str(tif), "--pipeline", str(pipe)], tmp_path)
    assert got.shape == (2, *SHAPE)
    recipe = _read_meta(str(tmp_path / "out.zarr"))["recipe"]
    (step,) = recipe["op"]  # a one-step pipeline
    assert step["op"] == "Branch" and step["params"]["ops"][1]["op"] == "Switch"


@pytest.mark.slow
def test_model(tif: Path, torchscript: Path, killed_model: Path, tmp_path: Path) -> None:
    args = [str(tif), "--model", str(torchscript), *MODEL_OP]
    got = resumed_equals_uninterrupted(args, tmp_path, killed=killed_model, fresh=True)
    assert got.shape == (2, *SHAPE) and got.dtype == np.float32
    config = _read_meta(str(tmp_path / "out.zarr"))["recipe"]["op"]
    assert config["op"] == "TorchScript"
    assert config["params"]["path"] == str(torchscript.resolve())
    assert len(config["params"]["sha256"]) == 64


@pytest.mark.slow
def test_bands(tif4: Path, tmp_path: Path) -> None:
    # --red/--nir name bands of the selection; the input reopens with all 4 bands
    args = [str(tif4), "--bands", "B08,B04", "--red", "B04", "--nir", "B08"]
    got = resumed_equals_uninterrupted(args, tmp_path)
    recipe = _read_meta(str(tmp_path / "out.zarr"))["recipe"]
    assert recipe["op"][0] == {"op": "SelectBands", "params": {"indices": [2, 1]}}
    assert recipe["input"]["format"] == "raster"
    four = _open_input(recipe["input"])
    assert four.sizes["band"] == 4
    red, nir = (four.values[i].astype(np.float64) * 1e-4 for i in (1, 2))
    np.testing.assert_allclose(got.values[0], (nir - red) / (nir + red), atol=1e-6)


@pytest.mark.slow
def test_stac(stac_items: Path, tmp_path: Path) -> None:
    args = ["--stac", str(stac_items), "--assets", "B04,B08", "--red", "B04", "--nir", "B08"]
    got = resumed_equals_uninterrupted(args, tmp_path)
    assert got.dims == ("time", "band", "y", "x") and got.shape == (2, 1, *SHAPE)
    source = _read_meta(str(tmp_path / "out.zarr"))["recipe"]["input"]
    assert source["format"] == "stac"
    assert source["stac"]["items"] == [str(stac_items.resolve())]
    assert source["stac"]["assets"] == ["B04", "B08"]
    # the reopened stack is the same input: same identity (dask name, coords, grid)
    stack = open_stac(stac_items, assets=["B04", "B08"], chunks=128)
    assert _input_identity(_open_input(source)) == _input_identity(stack)


# --------------------------------------------------------------------------- what resume refuses


@pytest.mark.slow
def test_changed_model_is_refused(torchscript: Path, killed_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.zarr"
    shutil.copytree(killed_model, out)
    original = torchscript.read_bytes()
    try:
        _torchscript(torchscript, seed=1)  # another model at the same path
        assert torchscript.read_bytes() != original
        line = error_line(patchflow_call("resume", str(out)), 1)
        assert "model file" in line and "changed since the job ran" in line and "SHA-256" in line
        assert "--overwrite" in line and "overwrite=True" not in line
        assert done_blocks(out)[0] == 3  # nothing was written with the other model
        with pytest.raises(ModelChangedError, match="overwrite=True") as info:
            patchflow.resume(out)
        assert info.value.path == str(torchscript.resolve())
        # the file gone: named, with the way out
        torchscript.unlink()
        line = error_line(patchflow_call("resume", str(out)), 1)
        assert "model not found" in line and "--resume" in line
    finally:  # the shared model file as the killed job saw it
        torchscript.write_bytes(original)


@pytest.mark.slow
def test_module_no_longer_importable(
    user_path: Path, killed_module_op: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out.zarr"
    shutil.copytree(killed_module_op, out)
    sys.modules.pop("pfrecipe", None)  # (in-process: as a fresh process without PYTHONPATH)
    assert str(user_path) not in sys.path
    line = error_line(patchflow_call("resume", str(out)), 1)  # no PYTHONPATH now
    assert "imports your module pfrecipe (pfrecipe:scaled_diff)" in line
    assert f"not on the Python path here (the job imported it from {user_path.resolve()})" in line
    assert f"PYTHONPATH={user_path.resolve()} patchflow resume {out}" in line
    with pytest.raises(
        ResumeRecipeError, match=r"add that directory to sys\.path \(or PYTHONPATH\)"
    ):
        patchflow.resume(out)
    # with the module on the path again, the store alone finishes it
    monkeypatch.syspath_prepend(str(user_path))
    try:
        ok(patchflow_call("resume", str(out)))
    finally:
        sys.modules.pop("pfrecipe", None)
    assert done_blocks(out)[0] == done_blocks(out)[1]


def test_stac_items_in_memory_have_no_recipe(stac_items: Path, tmp_path: Path) -> None:
    items = json.loads(stac_items.read_text())
    for feature in items["features"]:  # hrefs absolute: the dicts have no file to resolve on
        for asset in feature["assets"].values():
            asset["href"] = str(stac_items.parent / asset["href"])
    stack = open_stac(items, assets=["B04", "B08"], chunks=128)
    assert "Python objects" in stack.encoding[STAC_CALL]["reason"]
    store = tmp_path / "mem.zarr"
    patchflow.run(stack, patchflow.ops.NDVI(red=0, nir=1), store=store, size=128, stride=96)
    meta = _read_meta(str(store))
    assert meta["recipe"] is None and "Python objects" in meta["recipe_missing"]


def test_stac_selected_after_opening_has_no_recipe(stac_items: Path, tmp_path: Path) -> None:
    stack = open_stac(stac_items, assets=["B04", "B08"], chunks=128).isel(time=[1])
    assert STAC_CALL in stack.encoding  # it travels with the array...
    store = tmp_path / "sel.zarr"
    patchflow.run(stack, patchflow.ops.NDVI(red=0, nir=1), store=store, size=128, stride=96)
    meta = _read_meta(str(store))  # ...but the reopened stack is not this input
    assert meta["recipe"] is None and "selected or modified" in meta["recipe_missing"]


# --------------------------------------------------------------------------- the Python API


CRASH_SCRIPT = """
import sys
import patchflow
from patchflow.io.stac import open_stac
from patchflow.ops import Imported

stack = open_stac(sys.argv[1], assets=["B04", "B08"], chunks=128)
patchflow.run(stack, Imported("pfrecipe:scaled_diff", params={"gain": 2}), store=sys.argv[2],
              size=128, stride=96, scheduler="synchronous")
"""


@pytest.mark.slow
def test_python_open_stac_and_imported_resume_in_process(
    stac_items: Path, user_path: Path, tmp_path: Path, importable: None
) -> None:
    out = tmp_path / "py.zarr"
    env = {**os.environ, **on_path(user_path), CRASH_AT: "block-4", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, str(stac_items), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert done_blocks(out)[0] == 3
    report = patchflow.resume(out)
    assert (report.computed, report.skipped) == (done_blocks(out)[1] - 3, 3)
    stack = open_stac(stac_items, assets=["B04", "B08"], chunks=128)
    op = Imported("pfrecipe:scaled_diff", params={"gain": 2})
    want = patchflow.apply(stack, op, size=128, stride=96, chunks=128)
    np.testing.assert_array_equal(patchflow.open_result(out).values, want.values)


def test_imported_configs_load_only_when_trusted() -> None:
    op = Imported("pf_never_imported.ops:fn", params={"gain": 2})
    text = to_json(op)
    assert json.loads(text) == {
        "op": "Imported",
        "params": {"target": "pf_never_imported.ops:fn", "params": {"gain": 2}},
    }
    with pytest.raises(ConfigError, match="trusted=True"):
        from_json(text)
    with pytest.raises(ConfigError, match="trusted=True"):
        from_config([{"op": "NDVI", "params": {"red": 0, "nir": 1}}, json.loads(text)])
    back = from_json(text, trusted=True)
    assert back == op and hash(back) == hash(op)
    assert repr(back) == "Imported('pf_never_imported.ops:fn', params={'gain': 2})"
    # nothing is imported until the operator is used; then the error names the fix
    assert "pf_never_imported" not in sys.modules
    with pytest.raises(patchflow.errors.ImportTargetError, match="no module named") as info:
        back.output_spec((2,), np.dtype("uint16"))
    assert info.value.part == "target" and "sys.path" in str(info.value)


def test_imported_needs_json_params() -> None:
    with pytest.raises(ConfigError, match="not a JSON value"):
        Imported("pkg.mod:fn", params={"values": np.arange(3)})
    with pytest.raises(ConfigError, match="MODULE:NAME"):
        Imported("pkg.mod.fn")
    # tuples and numpy scalars become their JSON forms: what runs is what is recorded
    op = Imported("pkg.mod:fn", params={"range": (0, np.int64(3))})
    assert op.params == {"range": [0, 3]}


def test_resume_reuses_the_recipe_of_a_finished_store(tif: Path, tmp_path: Path) -> None:
    """A complete store whose chunk file was deleted: resume repairs it from the recipe
    (in-process: the installed command resumes in the tests above)."""
    out = tmp_path / "done.zarr"
    ok(patchflow_call("apply", str(tif), str(out), "--bands", "2,1", *CHIPS, "-q"))
    before = patchflow.open_result(out).values
    var = out / _read_meta(str(out))["job"]["var"]
    meta = ("zarr.json", ".zarray", ".zattrs")
    chunks = sorted(p for p in var.rglob("*") if p.is_file() and p.name not in meta)
    assert len(chunks) == 9
    chunks[4].unlink()
    text = ok(patchflow_call("resume", str(out)))
    assert "1 damaged block recomputed" in text, text
    np.testing.assert_array_equal(patchflow.open_result(out).values, before)
