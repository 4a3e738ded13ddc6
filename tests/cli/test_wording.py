"""Errors raised inside the library speak the caller's language (issue 15): through the
``patchflow`` command they name flags (``--epsg``, ``--co``, ``--zarr-format``, ``--size``
and ``--boundary pad``, ``--op-arg``, ``PYTHONPATH=…``), from Python the keywords
(``epsg=``, ``creation_options=``, ``zarr_format=``, ``boundary='pad'``).

Each error is raised for real, on GeoTIFFs and STAC items written with rioxarray: by the
installed command in a subprocess (at least once per kind of error; the other cases run the
same entry point in-process, ``cli.call``, one process start-up fewer each), and by the
Python API on the same files.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from affine import Affine
from clirun import CLI
from conftest import stac_item, write_band_tif

import patchflow
from patchflow.errors import (
    GridError,
    ImportTargetError,
    ParameterError,
    ResumeMismatchError,
    StoreError,
    cli_wording,
)
from patchflow.io.store import CRASH_AT
from patchflow.io.synthetic import ORIGIN

SHAPE = (300, 260)


@pytest.fixture(scope="module")
def cli() -> CLI:
    return CLI()


@pytest.fixture(scope="module")
def tif(
    scene_factory: Callable[..., xr.DataArray], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    path = tmp_path_factory.mktemp("input") / "scene.tif"
    scene_factory(SHAPE, seed=3).rio.to_raster(path, tiled=True, blockxsize=128, blockysize=128)
    return path


def _item(root: Path, k: int, epsg: int | None, band: np.ndarray) -> dict[str, Any]:
    """A STAC Item with one GeoTIFF asset B04 (``proj:code`` only when ``epsg`` is given)."""
    transform = Affine(10.0, 0.0, ORIGIN[0], 0.0, -10.0, ORIGIN[1])
    h, w = band.shape
    path = root / f"b{k}_{epsg}.tif"
    write_band_tif(path, band, transform, f"EPSG:{epsg or 32610}")
    asset: dict[str, Any] = {"href": path.name, "proj:shape": [h, w]}
    if epsg is not None:
        asset["proj:code"] = f"EPSG:{epsg}"
    return stac_item(f"item_{k}_{epsg}", {"B04": asset}, f"2024-06-0{k + 1}T10:00:00Z")


@pytest.fixture(scope="module")
def stac(
    scene_factory: Callable[..., xr.DataArray], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """``mixed.json`` (items in EPSG:32610 and 32611) and ``nocrs.json`` (no proj fields)."""
    root = tmp_path_factory.mktemp("stac")
    band = scene_factory((64, 64), seed=5).values[0]
    mixed = [_item(root, 0, 32610, band), _item(root, 1, 32611, band)]
    (root / "mixed.json").write_text(json.dumps(mixed))
    (root / "nocrs.json").write_text(json.dumps([_item(root, 2, None, band)]))
    return root


# --------------------------------------------------------------------------- --epsg


@pytest.mark.parametrize(
    ("name", "cli_words", "py_words", "fresh"),
    [
        (
            "mixed.json",
            ["2 CRSs", "--epsg (e.g. --epsg 32610)"],
            ["epsg= (e.g. epsg=32610)"],
            True,
        ),
        (
            "nocrs.json",
            ["no EPSG CRS", "--epsg, e.g. --epsg 32610"],
            ["epsg=, e.g. epsg=32610"],
            False,
        ),
    ],
)
def test_epsg(
    cli: CLI,
    name: str,
    cli_words: list[str],
    py_words: list[str],
    fresh: bool,
    stac: Path,
    tmp_path: Path,
) -> None:
    out = tmp_path / "o.zarr"
    run = cli.run if fresh else cli.call  # the installed command once, then in-process
    line = cli.error(run("apply", "--stac", str(stac / name), "--assets", "B04", str(out)), 2)
    for word in cli_words:
        assert word in line, (word, line)
    assert "epsg=" not in line
    with pytest.raises(ParameterError) as info:
        patchflow.open_stac(stac / name, assets=["B04"])
    for word in py_words:
        assert word in str(info.value), (word, str(info.value))
    assert "--epsg" not in str(info.value)


# --------------------------------------------------------------------------- --co


#: the Python API's side, run first in the command's process (``cli.run(pre=...)``)
GDAL_FAILS = """
import patchflow
from patchflow.io.sources import open_raster
from patchflow.ops import NDVI
try:
    patchflow.run(open_raster({tif!r}), NDVI(red=0, nir=1), store={out!r}, size=128, stride=96)
except patchflow.errors.StoreError as exc:
    print(exc)
"""


def test_gdal_write_failure_says_co(cli: CLI, tif: Path, tmp_path: Path) -> None:
    """GDAL failing to write the COG (here: its COG driver switched off, which GDAL only
    reads at start-up: a fresh process) names the options. One process runs both sides: the
    Python API first (its message on stdout), then the command's entry point (stderr)."""
    no_cog = {"GDAL_SKIP": "COG"}
    out = tmp_path / "o.tif"
    python = GDAL_FAILS.format(tif=str(tif), out=str(tmp_path / "p.tif"))
    proc = cli.run("apply", str(tif), str(out), "--red", "1", env=no_cog, pre=python)
    line = cli.error(proc, 1)
    assert "GDAL could not write the COG" in line and "check --co" in line
    assert "creation_options=" not in line
    assert "GDAL could not write the COG" in proc.stdout, proc.stderr
    assert "check creation_options=" in proc.stdout and "--co" not in proc.stdout
    assert issubclass(StoreError, OSError)


# --------------------------------------------------------------------------- --zarr-format


def test_zarr_format_of_a_half_created_store(cli: CLI, tif: Path, tmp_path: Path) -> None:
    """A store killed while being created has no Zarr files yet, so only the library knows
    (from its creation marker) which format it is: its error names the flag."""
    out = tmp_path / "o.zarr"
    args = ["apply", str(tif), str(out), "--size", "128", "--stride", "96"]
    proc = cli.run(*args, "--zarr-format", "2", env={CRASH_AT: "create"})
    assert proc.returncode < 0  # killed
    assert not (out / ".zgroup").exists() and not (out / "zarr.json").exists()
    line = cli.error(cli.call(*args, "--resume", "--zarr-format", "3"), 1)
    assert "leave out --zarr-format 3 (or give 2)" in line and "--overwrite" in line
    assert "zarr_format=" not in line
    from patchflow.io.sources import open_raster

    with pytest.raises(ResumeMismatchError) as info:
        patchflow.run(
            open_raster(str(tif)),
            patchflow.ops.NDVI(red=0, nir=1),
            store=out,
            resume=True,
            zarr_format=3,
            size=128,
            stride=96,
        )
    assert "leave out zarr_format=3 (or give 2)" in str(info.value)
    assert "--zarr-format" not in str(info.value)


def test_unknown_zarr_format(tmp_path: Path, small_scene: xr.DataArray) -> None:
    """(argparse's choices stop a bad --zarr-format first; the library's words still fit.)"""
    op = patchflow.ops.NDVI(red=0, nir=1)
    with pytest.raises(ParameterError, match=r"^zarr_format=4 is not a Zarr format"):
        patchflow.run(small_scene, op, store=tmp_path / "a.zarr", zarr_format=4)  # type: ignore[arg-type]
    with cli_wording(), pytest.raises(ParameterError, match=r"^--zarr-format 4 is not a Zarr"):
        patchflow.run(small_scene, op, store=tmp_path / "a.zarr", zarr_format=4)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- --size, --boundary


def test_chip_larger_than_the_scene(cli: CLI, tif: Path, tmp_path: Path) -> None:
    line = cli.error(cli.run("apply", str(tif), str(tmp_path / "o.zarr"), "--size", "4096"), 1)
    assert "larger than the scene" in line
    assert "use a smaller --size or --boundary pad" in line
    assert "boundary='pad'" not in line and "size=" not in line
    line = cli.error(cli.call("grid", str(tif), "--size", "4096"), 1)
    assert "--boundary pad" in line and "boundary='pad'" not in line
    scene = patchflow.io.sources.open_raster(str(tif))
    with pytest.raises(GridError) as info:
        patchflow.apply(scene, patchflow.ops.NDVI(red=0, nir=1), size=4096)
    assert "use a smaller size or boundary='pad'" in str(info.value)
    assert "--" not in str(info.value)


# --------------------------------------------------------------------------- resume hints


def test_resume_mismatch_names_the_flags_to_repeat(cli: CLI, tif: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.zarr"
    args = ["apply", str(tif), str(out), "--size", "128", "--stride", "96", "-q"]
    cli.ok(cli.call(*args, "--op", "rescale", "--op-arg", "in_range=[0, 10000]"))
    line = cli.error(
        cli.call(*args, "--resume", "--op", "rescale", "--op-arg", "in_range=[0, 5000]"), 1
    )
    assert "different job" in line and "in_range" in line
    for flag in ("--op/--op-arg", "--pipeline or --model", "--bands", "--stac"):
        assert flag in line, (flag, line)


def test_imported_operator_errors_in_each_language(
    cli: CLI, tif: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--op MODULE:CALLABLE`` errors under their flags; the same errors from Python. The
    module not found runs the installed command (its fix is the process's PYTHONPATH); the
    others run in-process, the module on ``sys.path`` as PYTHONPATH would put it."""
    (tmp_path / "pfwording.py").write_text(
        "import patchflow.ops as ops\nPIPE = ops.NDVI(red=0, nir=1)\nVALUE = 3.5\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = str(tmp_path / "o.zarr")

    line = cli.error(cli.call("apply", str(tif), out, "--op", "pfwording:VALUE"), 2)
    assert "argument --op pfwording:VALUE: float is not callable" in line
    with pytest.raises(ImportTargetError, match="float is not callable") as info:
        patchflow.ops.Imported("pfwording:VALUE").resolve()
    assert info.value.part == "target"

    # an operator instance takes no parameters: --op-arg on the command line
    args = ["apply", str(tif), out, "--op", "pfwording:PIPE", "--op-arg", "x=1"]
    line = cli.error(cli.call(*args), 2)
    assert "argument --op-arg: pfwording:PIPE is an operator instance" in line
    assert "takes no --op-arg" in line
    with pytest.raises(ImportTargetError, match="takes no parameters") as info:
        patchflow.ops.Imported("pfwording:PIPE", params={"x": 1}).resolve()
    assert info.value.part == "params"

    # a module not on the path: PYTHONPATH for the command, sys.path too for Python
    line = cli.error(cli.run("apply", str(tif), out, "--op", "pf_no_such_mod:f"), 2)
    assert "no module named 'pf_no_such_mod'" in line
    assert "PYTHONPATH=/path/to/dir patchflow" in line and "sys.path" not in line
    with pytest.raises(ImportTargetError, match=r"sys\.path, or the PYTHONPATH"):
        patchflow.ops.Imported("pf_no_such_mod:f").resolve()
