"""The ``patchflow`` command (issue 6): demo, apply (GeoTIFF/Zarr → COG/Zarr), resume,
grid, help, and one-line errors with the right exit codes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rioxarray
import xarray as xr
import zarr

import patchflow
from patchflow.cli import main
from patchflow.demo import dn_ndvi

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# writing test inputs: string band coords and consolidated metadata are not in the v3 spec
ZARR_DTYPE = pytest.mark.filterwarnings("ignore:The data type .* does not have a Zarr V3 spec")
ZARR_CONSOLIDATED = pytest.mark.filterwarnings("ignore:Consolidated metadata is currently not")


@pytest.fixture(scope="module")
def scene(scene_factory: Callable[..., xr.DataArray]) -> xr.DataArray:
    return scene_factory((1100, 900), seed=5)


@pytest.fixture(scope="module")
def expected(scene: xr.DataArray) -> np.ndarray:
    """NDVI on the whole scene: the reference every output must match."""
    return dn_ndvi(scene.values[None])[0]


@pytest.fixture(scope="module")
def tif(scene: xr.DataArray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiled GeoTIFF with a CRS, written by rioxarray."""
    path = tmp_path_factory.mktemp("input") / "scene.tif"
    scene.rio.to_raster(path, tiled=True, blockxsize=256, blockysize=256)
    return path


def error_line(err: str) -> str:
    """The single stderr line of a failed command (asserting it is one line)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got: {err!r}"
    assert lines[0].startswith("patchflow: error: ")
    assert "Traceback" not in err
    return lines[0]


# --------------------------------------------------------------------------- help


@pytest.mark.parametrize("command", [[], ["demo"], ["apply"], ["grid"]])
def test_help_is_complete(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: patchflow")
    expected = {
        (): ["demo", "apply", "grid", "--version", "--debug"],
        ("demo",): ["--size", "--out", "--scheduler", "--no-preview", "default: 4096"],
        ("apply",): [
            "INPUT",
            "OUTPUT",
            "--op",
            "--pipeline",
            "--red",
            "--nir",
            "--scale",
            "--size",
            "--stride",
            "--window",
            "--agg",
            "--chunks",
            "--scheduler",
            "--resume",
            "--overwrite",
            "--quiet",
            "--debug",
            "tcp://",
        ],
        ("grid",): ["INPUT", "--size", "--stride", "--boundary", "--png"],
    }[tuple(command)]
    for word in expected:
        assert word in out, word


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert patchflow.__version__ in capsys.readouterr().out


# --------------------------------------------------------------------------- demo


def test_demo_writes_png_and_zarr(
    scene_factory: Callable[..., xr.DataArray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")  # the [plot] extra draws the preview
    out = tmp_path / "demo"
    assert main(["demo", "--size", "700", "--chunks", "384", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for word in ("chips: 16", "blocks: 4", "wall time", "peak memory", "max |stitched", "OK"):
        assert word in text, word
    png = out / "preview.png"
    assert png.stat().st_size > 10_000
    assert png.read_bytes()[:8] == PNG_MAGIC
    from PIL import Image

    with Image.open(png) as image:
        assert image.size == (1200, 1080)
    result = patchflow.open_result(out / "ndvi.zarr")
    assert result.shape == (1, 700, 700)
    assert result.rio.crs == "EPSG:32610"
    full = dn_ndvi(scene_factory((700, 700), chunks=384).values[None])[0]
    np.testing.assert_allclose(result.values, full, atol=1e-6, rtol=0)


def test_demo_bad_size(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--size", "100"]) == 2
    assert "at least 256" in error_line(capsys.readouterr().err)


# --------------------------------------------------------------------------- apply


def test_apply_geotiff_to_cog(
    tif: Path, expected: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ndvi.tif"
    assert main(["apply", str(tif), str(out), "--op", "ndvi", "--red", "1", "--nir", "2"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    with rasterio.open(out) as src:
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.count == 1 and src.dtypes[0] == "float32"
    result = rioxarray.open_rasterio(out)
    source = rioxarray.open_rasterio(tif)
    assert result.rio.crs == source.rio.crs == "EPSG:32610"
    assert result.rio.transform() == source.rio.transform()
    np.testing.assert_allclose(result.values, expected, atol=1e-6, rtol=0)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging left behind"


def test_apply_geotiff_to_zarr(
    tif: Path, expected: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ndvi.zarr"
    args = ["apply", str(tif), str(out), "--chunks", "512", "--window", "boxcar", "--quiet"]
    assert main(args) == 0
    assert capsys.readouterr().out == ""
    plain = xr.open_zarr(out, decode_coords="all")["ndvi"]
    source = rioxarray.open_rasterio(tif)
    assert plain.rio.crs == source.rio.crs
    assert plain.rio.transform() == source.rio.transform()
    assert plain.data.chunksize[-2:] == (512, 512)
    np.testing.assert_allclose(patchflow.open_result(out).values, expected, atol=1e-6, rtol=0)


@ZARR_DTYPE
@ZARR_CONSOLIDATED
def test_apply_zarr_input_with_band_names(
    scene: xr.DataArray, expected: np.ndarray, tmp_path: Path
) -> None:
    source = tmp_path / "scene.zarr"
    scene.chunk({"y": 512, "x": 512}).to_dataset(name="dn").to_zarr(source, zarr_format=3)
    out = tmp_path / "ndvi.zarr"
    assert main(["apply", str(source), str(out), "--red", "red", "--nir", "nir", "-q"]) == 0
    result = patchflow.open_result(out)
    assert result.rio.crs == "EPSG:32610"
    np.testing.assert_allclose(result.values, expected, atol=1e-6, rtol=0)


@ZARR_DTYPE
@ZARR_CONSOLIDATED
def test_apply_zarr_input_needs_var(
    scene: xr.DataArray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "two.zarr"
    ds = xr.Dataset({"a": scene, "b": scene})
    ds.to_zarr(source, zarr_format=3)
    assert main(["apply", str(source), str(tmp_path / "o.zarr")]) == 2
    assert "choose one with --var" in error_line(capsys.readouterr().err)
    assert main(["apply", str(source), str(tmp_path / "o.zarr"), "--var", "b", "-q"]) == 0


def test_apply_names_the_result(
    tif: Path, expected: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--name names the stored variable (Zarr) and the result; a name the store cannot
    hold is refused in the command's words before anything is written."""
    out = tmp_path / "named.zarr"
    assert main(["apply", str(tif), str(out), "--name", "greenness", "-q"]) == 0
    assert "greenness" in zarr.open_group(out, mode="r")
    result = patchflow.open_result(out)
    assert result.name == "greenness"
    np.testing.assert_allclose(result.values, expected, atol=1e-6, rtol=0)
    assert main(["apply", str(tif), str(out), "--resume", "--name", "greenness", "-q"]) == 0

    bad = tmp_path / "bad.zarr"
    assert main(["apply", str(tif), str(bad), "--name", "_patchflow"]) == 2
    line = error_line(capsys.readouterr().err)
    assert "--name" in line and "var=" not in line and "name=" not in line
    assert not bad.exists()


def test_apply_pipeline_from_json(
    tif: Path, expected: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ops = pytest.importorskip("patchflow.ops")
    if not all(hasattr(ops, n) for n in ("to_json", "from_json", "DNToReflectance", "NDVI")):
        pytest.skip("patchflow.ops has no JSON pipelines")
    pipeline = tmp_path / "pipeline.json"
    pipeline.write_text(ops.to_json(ops.DNToReflectance(scale=1e-4) | ops.NDVI(red=0, nir=1)))
    out = tmp_path / "p.zarr"
    assert main(["apply", str(tif), str(out), "--pipeline", str(pipeline), "-q"]) == 0
    np.testing.assert_allclose(patchflow.open_result(out).values, expected, atol=1e-6, rtol=0)
    pipeline.write_text('{"op": "NoSuchOp"}')
    assert main(["apply", str(tif), str(out), "--pipeline", str(pipeline), "--overwrite"]) == 1
    assert "invalid pipeline" in error_line(capsys.readouterr().err)
    assert main(["apply", str(tif), str(out), "--pipeline", str(pipeline), "--op", "ndvi"]) == 2
    assert "not both" in error_line(capsys.readouterr().err)


def test_apply_overwrite(tif: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("o.zarr", "o.tif"):
        out = str(tmp_path / name)
        assert main(["apply", str(tif), out, "-q"]) == 0
        assert main(["apply", str(tif), out]) == 1
        line = error_line(capsys.readouterr().err)
        assert "already exists" in line and "--overwrite" in line
        assert main(["apply", str(tif), out, "--overwrite", "-q"]) == 0


def test_apply_on_a_dask_distributed_scheduler(
    tif: Path, expected: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0"
    ) as cluster:
        out = tmp_path / "ndvi.zarr"
        assert main(["apply", str(tif), str(out), "--scheduler", cluster.scheduler_address]) == 0
    assert "dashboard" in capsys.readouterr().out
    np.testing.assert_allclose(patchflow.open_result(out).values, expected, atol=1e-6, rtol=0)


# a slow op with the CLI's job layout (name, grid, dtype, blocks): the run is killed part-way
CRASH_SCRIPT = "import sys; from patchflow.cli import main; sys.exit(main(sys.argv[1:]))"


def done_blocks(path: Path) -> int:
    try:
        return int(np.asarray(zarr.open_array(str(path), path="_patchflow/done")[...]).sum())
    except Exception:  # being created: not yet
        return 0


@pytest.mark.slow
def test_apply_resume_after_interrupted_run(
    tif: Path, expected: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ndvi.zarr"
    # the same command a user runs, killed (SIGKILL) while writing its 4th block
    args = ["apply", str(tif), str(out), "--chunks", "256", "--scheduler", "synchronous"]
    env = {**os.environ, "PATCHFLOW_CRASH_AT": "block-4"}
    proc = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, *args], env=env, check=False)
    assert proc.returncode == -signal.SIGKILL
    written = done_blocks(out)
    assert written == 3, "the run should be killed part-way (5 x 4 blocks)"

    # without --resume the partial store is refused; with it, only missing blocks run
    assert main(["apply", str(tif), str(out), "--chunks", "256"]) == 1
    assert "--resume" in error_line(capsys.readouterr().err)
    assert main(["apply", str(tif), str(out), "--chunks", "256", "--resume"]) == 0
    text = capsys.readouterr().out
    assert f"{20 - written} computed, {written} already done" in text
    plain = xr.open_zarr(out, decode_coords="all")["ndvi"]
    assert plain.rio.crs == "EPSG:32610"
    assert plain.rio.transform() == rioxarray.open_rasterio(tif).rio.transform()
    np.testing.assert_allclose(patchflow.open_result(out).values, expected, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- grid


def test_grid_prints_and_plots(
    tif: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")  # the [plot] extra draws --png
    png = tmp_path / "grid.png"
    assert main(["grid", str(tif), "--size", "256", "--stride", "192", "--png", str(png)]) == 0
    text = capsys.readouterr().out
    assert "1100 x 900 px" in text and "EPSG:32610" in text
    assert "chips: 6 x 5 = 30" in text
    assert "xmin" in text and "740000.00" in text
    assert "... 20 more chips" in text
    assert png.read_bytes()[:8] == PNG_MAGIC


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["apply", "{missing}", "{out}.zarr"], 1, "input not found"),
        (["apply", "{tif}", "{out}.zarr", "--op", "median"], 2, "invalid choice: 'median'"),
        (["apply", "{tif}", "{out}.zarr", "--size", "0"], 2, "argument --size"),
        (["apply", "{tif}", "{out}.zarr", "--size", "big"], 2, "argument --size"),
        (["apply", "{tif}", "{out}.zarr", "--size", "128", "--stride", "200"], 2, "--stride"),
        (["apply", "{tif}", "{out}.zarr", "--size", "4096"], 1, "larger than the scene"),
        (["apply", "{tif}", "{out}.png"], 2, "OUTPUT must end in .zarr"),
        (["apply", "{tif}", "{out}.tif", "--resume"], 2, "--resume needs a .zarr"),
        (["apply", "{tif}", "{out}.zarr", "--resume", "--overwrite"], 2, "not allowed"),
        (["apply", "{tif}", "{out}.zarr", "--red", "7"], 2, "band 7 out of range: the input has 2"),
        (["apply", "{tif}", "{out}.zarr", "--scheduler", "gpu"], 2, "argument --scheduler"),
        (["apply", "{tif}", "{out}.zarr", "--agg", "vote"], 2, "--n-classes"),
        (["apply", "{tif}"], 2, "required: OUTPUT"),
        (["apply", "{tif}", "{out}.zarr", "--pipeline", "{missing}"], 1, "pipeline"),
        (["grid", "{missing}"], 1, "input not found"),
        (["frobnicate"], 2, "invalid choice"),
        ([], 2, "required: COMMAND"),
    ],
)
def test_errors_are_one_line(
    argv: list[str],
    status: int,
    message: str,
    tif: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    values = {"tif": str(tif), "missing": str(tmp_path / "nope.tif"), "out": str(tmp_path / "o")}
    assert main([a.format(**values) for a in argv]) == status
    captured = capsys.readouterr()
    assert message in error_line(captured.err)
    assert captured.out == ""


def test_debug_shows_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "nope.tif")
    assert main(["apply", missing, str(tmp_path / "o.zarr"), "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith(
        f"patchflow: error: input not found: {missing}"
    )


def test_python_dash_m_patchflow(tif: Path, tmp_path: Path) -> None:
    """The real command line: exit codes and a single stderr line from a fresh process."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    ok = subprocess.run(
        [sys.executable, "-m", "patchflow", "grid", str(tif), "--rows", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert "chips: 6 x 5 = 30" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "patchflow", "apply", str(tmp_path / "x.tif"), "o.zarr"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert bad.returncode == 1
    assert "input not found" in error_line(bad.stderr)
