"""``patchflow apply``'s input, output and execution flags (issue 15): ``--bands``, ``--co``,
``--zarr-format``, ``--stac``/``--assets``, ``--workers``/``--report``; every sub-command's
``--help`` has an example and stays light; errors speak flags.

Every flag runs through the real ``patchflow`` command in a subprocess at least once, on
GeoTIFFs (and STAC items pointing at GeoTIFFs) written with rioxarray; its other cases, and
the usage errors, run the same entry point in-process (``cli.call``), one process start-up
fewer each.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import xarray as xr
import zarr
from affine import Affine
from clirun import CLI
from conftest import write_band_tif

import patchflow
from patchflow.demo import dn_ndvi
from patchflow.errors import ResampledGridWarning
from patchflow.io.synthetic import ORIGIN


@pytest.fixture(scope="module")
def cli() -> CLI:
    """Run the ``patchflow`` command: ``cli.run`` (subprocess) or ``cli.call``."""
    return CLI()


SIZE, STRIDE = "128", "96"
SHAPE = (300, 260)
BANDS = ("B02", "B04", "B08", "B11")


# --------------------------------------------------------------------------- helpers


def chips(*args: str) -> list[str]:
    return [*args, "--size", SIZE, "--stride", STRIDE]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def four(
    scene_factory: Callable[..., xr.DataArray], tmp_path_factory: pytest.TempPathFactory
) -> xr.DataArray:
    """A 4-band uint16 scene whose bands are described B02, B04, B08, B11 in the file."""
    a = scene_factory(SHAPE, seed=11).values
    b = scene_factory(SHAPE, seed=12).values
    data = np.stack([b[0], a[0], a[1], b[1]])
    base = scene_factory(SHAPE, seed=11)
    da = xr.DataArray(
        data,
        dims=("band", "y", "x"),
        coords={"band": [1, 2, 3, 4], "y": base.y, "x": base.x},
        attrs={"long_name": BANDS},
    )
    return da.rio.write_crs(base.rio.crs).rio.write_transform(base.rio.transform())


@pytest.fixture(scope="module")
def tif4(four: xr.DataArray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("four") / "s2.tif"
    four.rio.to_raster(path, tiled=True, blockxsize=128, blockysize=128)
    with rasterio.open(path) as src:
        assert src.descriptions == BANDS
    return path


def ndvi_of(red: np.ndarray, nir: np.ndarray) -> np.ndarray:
    """NDVI on the whole scene: what any chip grid must reproduce."""
    return dn_ndvi(np.stack([red, nir])[None])[0]


# --------------------------------------------------------------------------- --bands


@pytest.mark.parametrize(
    ("bands", "fresh"),
    [("B04,B08", True), ("2,3", False), ("B08,B04", False), ("3,B04", False)],
)
def test_bands_by_name_or_gdal_number(
    cli: CLI, bands: str, fresh: bool, four: xr.DataArray, tif4: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ndvi.zarr"
    run = cli.run if fresh else cli.call  # the installed command once, then in-process
    # --red/--nir address the selected bands (by name, or number within the selection)
    cli.ok(
        run(
            *chips(
                "apply", str(tif4), str(out), "--bands", bands, "--red", "B04", "--nir", "B08", "-q"
            )
        )
    )
    expected = ndvi_of(four.values[1], four.values[2])
    np.testing.assert_allclose(patchflow.open_result(out).values, expected, atol=1e-6, rtol=0)


def test_bands_select_what_the_operator_sees(
    cli: CLI, four: xr.DataArray, tif4: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sel.zarr"
    args = chips("apply", str(tif4), str(out), "--bands", "B11,B02", "--op", "astype")
    cli.ok(cli.call(*args, "--op-arg", "dtype=float32", "-q"))
    result = patchflow.open_result(out)
    np.testing.assert_array_equal(result.values, four.values[[3, 0]].astype("float32"))
    # the band descriptions follow the selection, into a COG's band descriptions too
    assert list(result.attrs["long_name"]) == ["B11", "B02"]
    cog = tmp_path / "sel.tif"
    args = chips("apply", str(tif4), str(cog), "--bands", "4,1", "--op", "astype")
    cli.ok(cli.call(*args, "--op-arg", "dtype=float32", "-q"))
    with rasterio.open(cog) as src:
        assert src.descriptions == ("B11", "B02")
        np.testing.assert_array_equal(src.read(), four.values[[3, 0]].astype("float32"))


@pytest.mark.parametrize(
    ("bands", "words"),
    [
        ("0,1", ["argument --bands", "band 0 out of range", "1-based", "Python 0-based"]),
        ("5", ["argument --bands", "numbered 1..4", "1-based"]),
        ("B05", ["argument --bands", "no band named 'B05'", "B02, B04, B08, B11", "1..4"]),
        ("B04,", ["argument --bands", "empty band"]),
    ],
)
def test_bands_errors_say_the_convention(
    cli: CLI, bands: str, words: list[str], tif4: Path, tmp_path: Path
) -> None:
    line = cli.error(cli.call("apply", str(tif4), str(tmp_path / "o.zarr"), "--bands", bands), 2)
    for word in words:
        assert word in line, (word, line)


# --------------------------------------------------------------------------- --co, --zarr-format


def test_creation_options_reach_the_cog(
    cli: CLI, tif4: Path, four: xr.DataArray, tmp_path: Path
) -> None:
    out = tmp_path / "ndvi.tif"
    args = chips("apply", str(tif4), str(out), "--red", "2", "--nir", "3", "-q")
    cli.ok(cli.run(*args, "--co", "COMPRESS=ZSTD", "--co", "level=9", "--co", "BLOCKSIZE=128"))
    with rasterio.open(out) as src:
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.compression is not None and src.compression.name.upper() == "ZSTD"
        assert src.block_shapes[0] == (128, 128)
        got = src.read(1)
    np.testing.assert_allclose(got, ndvi_of(four.values[1], four.values[2])[0], atol=1e-6)


def test_bad_creation_option_speaks_the_flag(cli: CLI, tif4: Path, tmp_path: Path) -> None:
    out = tmp_path / "ndvi.tif"
    line = cli.error(
        cli.call("apply", str(tif4), str(out), "--co", "COMPRESS=NOPE", "--red", "2"), 2
    )
    assert "--co" in line and "COMPRESS" in line and "creation_options=" not in line
    assert not out.exists()
    line = cli.error(cli.call("apply", str(tif4), str(out), "--co", "COMPRESS"), 2)
    assert "argument --co" in line and "KEY=VALUE" in line


@pytest.mark.parametrize("fmt", [2, 3])
def test_zarr_format(cli: CLI, fmt: int, four: xr.DataArray, tif4: Path, tmp_path: Path) -> None:
    out = tmp_path / "ndvi.zarr"
    args = chips("apply", str(tif4), str(out), "--red", "2", "--nir", "3", "-q")
    run = cli.run if fmt == 2 else cli.call  # the installed command once, then in-process
    cli.ok(run(*args, "--zarr-format", str(fmt)))
    assert zarr.open_group(str(out), mode="r").metadata.zarr_format == fmt
    assert (out / (".zgroup" if fmt == 2 else "zarr.json")).is_file()
    expected = ndvi_of(four.values[1], four.values[2])
    np.testing.assert_allclose(patchflow.open_result(out).values, expected, atol=1e-6)


def test_resume_keeps_the_zarr_format(cli: CLI, tif4: Path, tmp_path: Path) -> None:
    out = tmp_path / "v2.zarr"
    args = chips("apply", str(tif4), str(out), "--red", "2", "--nir", "3", "-q")
    cli.ok(cli.call(*args, "--zarr-format", "2"))
    line = cli.error(cli.call(*args, "--resume", "--zarr-format", "3"), 2)
    assert "--zarr-format 3 does not match OUTPUT, a Zarr v2 store" in line
    assert "zarr_format=" not in line
    cli.ok(cli.call(*args, "--resume", "--zarr-format", "2"))
    assert (out / ".zgroup").is_file()


@pytest.mark.parametrize(
    ("output", "extra", "words"),
    [
        ("o.zarr", ["--co", "COMPRESS=ZSTD"], ["--co", ".tif OUTPUT"]),
        ("o.tif", ["--zarr-format", "2"], ["--zarr-format", ".zarr OUTPUT"]),
        ("o.zarr", ["--zarr-format", "4"], ["argument --zarr-format", "invalid choice"]),
    ],
)
def test_output_flags_need_their_output_kind(
    cli: CLI, output: str, extra: list[str], words: list[str], tif4: Path, tmp_path: Path
) -> None:
    line = cli.error(cli.call("apply", str(tif4), str(tmp_path / output), *extra), 2)
    for word in words:
        assert word in line, (word, line)
    assert not (tmp_path / output).exists()


# --------------------------------------------------------------------------- --stac


DATES = ["2024-06-01T10:00:00Z", "2024-06-06T10:00:00Z"]


def stac_item(
    root: Path, k: int, bands: dict[str, np.ndarray], epsg: int = 32610
) -> dict[str, Any]:
    """A STAC Item (plain JSON) whose assets are GeoTIFFs in ``root``, relative hrefs."""
    transform = Affine(10.0, 0.0, ORIGIN[0], 0.0, -10.0, ORIGIN[1])
    assets = {}
    for name, band in bands.items():
        href = f"d{k}_{name}_{epsg}.tif"
        write_band_tif(root / href, band, transform, f"EPSG:{epsg}")
        assets[name] = {
            "href": href,
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "proj:code": f"EPSG:{epsg}",
            "proj:shape": list(band.shape),
            "proj:transform": list(transform)[:6],
        }
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": ["https://stac-extensions.github.io/projection/v2.0.0/schema.json"],
        "id": f"scene_{k}_{epsg}",
        "geometry": None,
        "properties": {"datetime": DATES[k]},
        "links": [],
        "assets": assets,
    }


@pytest.fixture(scope="module")
def stac(
    scene_factory: Callable[..., xr.DataArray], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, np.ndarray]:
    """``items.json``: an ItemCollection of 2 dates x (B04, B08); and the (time, band, y, x)
    values of those GeoTIFFs."""
    root = tmp_path_factory.mktemp("stac")
    stack = np.stack([scene_factory(SHAPE, seed=20 + k).values for k in range(2)])
    items = [stac_item(root, k, {"B04": stack[k, 0], "B08": stack[k, 1]}) for k in range(2)]
    (root / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    (root / "one.json").write_text(json.dumps(items[0]))
    other = stac_item(root, 1, {"B04": stack[1, 0], "B08": stack[1, 1]}, epsg=32611)
    (root / "mixed.json").write_text(json.dumps([items[0], other]))
    return root, stack


def test_stac_ndvi_per_date(cli: CLI, stac: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    root, stack = stac
    out = tmp_path / "ndvi.zarr"
    args = chips("apply", "--stac", str(root / "items.json"), "--assets", "B04,B08", str(out))
    cli.ok(cli.run(*args, "--red", "B04", "--nir", "B08", "-q"))
    result = patchflow.open_result(out)
    assert result.dims == ("time", "band", "y", "x") and result.shape == (2, 1, *SHAPE)
    assert result.rio.crs == "EPSG:32610"
    for k in range(2):
        expected = ndvi_of(stack[k, 0].astype(np.float64), stack[k, 1].astype(np.float64))
        np.testing.assert_allclose(result.values[k], expected, atol=1e-6, rtol=0)


def test_stac_composite_over_time(cli: CLI, stac: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    root, stack = stac
    out = tmp_path / "max.zarr"
    args = chips("apply", "--stac", str(root / "items.json"), "--assets", "B08", str(out))
    cli.ok(cli.call(*args, "--over", "time", "--op", "composite", "--op-arg", "stat=max", "-q"))
    result = patchflow.open_result(out)
    assert result.shape == (1, *SHAPE)
    np.testing.assert_array_equal(result.values[0], stack[:, 1].max(axis=0).astype(np.float64))


def test_stac_single_item_with_resolution(
    cli: CLI, stac: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    root, stack = stac
    out = tmp_path / "coarse.zarr"
    args = chips("apply", "--stac", str(root / "one.json"), "--assets", "B04", str(out), "-q")
    cli.ok(cli.call(*args, "--resolution", "20", "--op", "astype", "--op-arg", "dtype=float64"))
    result = patchflow.open_result(out)
    assert result.shape == (1, 1, SHAPE[0] // 2, SHAPE[1] // 2)
    assert result.rio.resolution() == (20.0, -20.0)
    # nearest resampling onto the 20 m grid takes one of every 2 x 2 source pixels
    picked = result.values[0, 0]
    assert np.isin(picked, stack[0, 0]).all()


def test_stac_bounds_grow_to_the_assets_grid(
    cli: CLI, stac: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    """--bounds off the 10 m grid take the whole asset pixels they touch, read exactly."""
    root, stack = stac
    x0, y0 = ORIGIN
    box = f"{x0 + 1003},{y0 - 2307},{x0 + 2296},{y0 - 1004}"
    out = tmp_path / "box.zarr"
    args = chips("apply", "--stac", str(root / "one.json"), "--assets", "B04", str(out), "-q")
    cli.ok(cli.call(*args, "--bounds", box, "--op", "astype", "--op-arg", "dtype=float64"))
    result = patchflow.open_result(out)
    assert result.shape == (1, 1, 131, 130)
    assert result.rio.transform() == Affine(10.0, 0.0, x0 + 1000, 0.0, -10.0, y0 - 1000)
    np.testing.assert_array_equal(result.values[0, 0], stack[0, 0, 100:231, 100:230])


def test_stac_snap_bounds_off_the_grid_is_said_in_flags(
    cli: CLI, scene_factory: Callable[..., xr.DataArray], tmp_path: Path
) -> None:
    """Assets on a grid 5 m off multiples of 10 m: the default reads them on their own
    grid; --snap-bounds true moves the output off it, and the warning says so with the
    command's flags."""
    band = scene_factory((150, 140), seed=3).values[0]
    item = stac_item(tmp_path, 0, {"B04": band})
    transform = Affine(10.0, 0.0, ORIGIN[0] + 5, 0.0, -10.0, ORIGIN[1] + 5)
    write_band_tif(tmp_path / item["assets"]["B04"]["href"], band, transform, "EPSG:32610")
    item["assets"]["B04"]["proj:transform"] = list(transform)[:6]
    (tmp_path / "off.json").write_text(json.dumps(item))
    base = chips("apply", "--stac", str(tmp_path / "off.json"), "--assets", "B04")
    exact = tmp_path / "exact.zarr"
    as_float = ("--op", "astype", "--op-arg", "dtype=float64")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResampledGridWarning)  # exact: nothing to say
        cli.ok(cli.call(*base, str(exact), *as_float))
    np.testing.assert_array_equal(patchflow.open_result(exact).values[0, 0], band)
    with pytest.warns(ResampledGridWarning) as caught:
        cli.ok(cli.call(*base, str(tmp_path / "snap.zarr"), "--snap-bounds", "true", *as_float))
    said = " ".join(str(w.message) for w in caught)
    assert "--snap-bounds True snaps the output to multiples of the resolution" in said
    assert "leave --snap-bounds out" in said and "snap_bounds" not in said


@pytest.mark.parametrize(
    ("args", "status", "words"),
    [
        (["--stac", "{root}/items.json", "{out}"], 2, ["--stac needs --assets"]),
        (
            ["{root}/d0_B04_32610.tif", "--stac", "{root}/items.json", "--assets", "B04", "{out}"],
            2,
            ["INPUT or --stac", "not both"],
        ),
        (["{root}/d0_B04_32610.tif", "{out}", "--assets", "B04"], 2, ["--assets", "--stac"]),
        (["{root}/d0_B04_32610.tif", "{out}", "--epsg", "32610"], 2, ["--epsg", "--stac"]),
        (["{root}/d0_B04_32610.tif", "{out}", "--bounds", "0,0,1,1"], 2, ["--bounds", "--stac"]),
        (
            ["--stac", "{root}/items.json", "--assets", "B04", "{out}", "--bounds", "5,0,1,1"],
            2,
            ["argument --bounds", "MINX < MAXX"],
        ),
        (
            ["--stac", "{root}/items.json", "--assets", "B05", "{out}"],
            2,
            ["unknown asset 'B05'", "B04, B08"],
        ),
        (["--stac", "{root}/mixed.json", "--assets", "B04", "{out}"], 2, ["2 CRSs", "--epsg"]),
        (["--stac", "{root}/nope.json", "--assets", "B04", "{out}"], 1, ["not found"]),
        (["{out}"], 2, ["required: OUTPUT", "--stac"]),
    ],
)
def test_stac_errors(
    cli: CLI,
    args: list[str],
    status: int,
    words: list[str],
    stac: tuple[Path, np.ndarray],
    tmp_path: Path,
) -> None:
    root, _ = stac
    values = {"root": str(root), "out": str(tmp_path / "o.zarr")}
    line = cli.error(cli.call("apply", *(a.format(**values) for a in args)), status)
    for word in words:
        assert word in line, (word, line)
    assert "epsg=" not in line


# --------------------------------------------------------------------------- cluster


def has_bokeh() -> bool:
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None


@pytest.mark.slow
def test_workers_start_a_local_cluster_and_report(
    cli: CLI, four: xr.DataArray, tif4: Path, tmp_path: Path
) -> None:
    """``--workers`` and ``--report`` in one run: a LocalCluster costs seconds to start.
    (Without bokeh the cluster is still checked, then the report part is skipped.)"""
    out, report = tmp_path / "ndvi.zarr", tmp_path / "reports" / "perf.html"
    args = chips("apply", str(tif4), str(out), "--red", "B04", "--nir", "B08", "--chunks", "128")
    reporting = ["--report", str(report)] if has_bokeh() else []
    text = cli.ok(cli.run(*args, "--workers", "2", "--threads-per-worker", "1", *reporting))
    assert "dask LocalCluster: 2 workers x 1 thread, dashboard: http" in text
    assert "blocks: 9 (9 computed)" in text
    expected = ndvi_of(four.values[1], four.values[2])
    np.testing.assert_allclose(patchflow.open_result(out).values, expected, atol=1e-6, rtol=0)
    if not reporting:
        pytest.skip("bokeh is not installed: --report not tested")
    assert f"performance report: {report}" in text
    html = report.read_text()
    assert html.lstrip().lower().startswith("<!doctype html") or "<html" in html[:2000].lower()
    assert "Dask Performance Report" in html and len(html) > 10_000


@pytest.mark.parametrize(
    ("extra", "blocked", "status", "words"),
    [
        (
            ["--workers", "2", "--scheduler", "threads"],
            None,
            2,
            ["--workers", "--scheduler", "not both"],
        ),
        (["--workers", "0"], None, 2, ["argument --workers"]),
        (["--threads-per-worker", "2"], None, 2, ["--threads-per-worker needs --workers"]),
        (["--report", "r.html"], None, 2, ["--report needs", "--workers N"]),
        (
            ["--workers", "1", "--report", "r.html"],
            "bokeh",
            1,
            ["--report needs bokeh", "patchflow[dashboard]"],
        ),
    ],
)
def test_cluster_errors(
    cli: CLI,
    extra: list[str],
    blocked: str | None,
    status: int,
    words: list[str],
    tif4: Path,
    tmp_path: Path,
) -> None:
    args = ("apply", str(tif4), str(tmp_path / "o.zarr"), *extra)
    if blocked is None:
        proc = cli.call(*args)
    else:  # a fresh process where the module cannot be imported
        proc = cli.run(*args, pre=cli.blocker(blocked))
    line = cli.error(proc, status)
    for word in words:
        assert word in line, (word, line)
    assert not (tmp_path / "o.zarr").exists() and not (tmp_path / "r.html").exists()


# --------------------------------------------------------------------------- help and errors


@pytest.mark.parametrize("command", ["demo", "apply", "grid", "resume", "inspect"])
def test_every_help_has_an_example(cli: CLI, command: str) -> None:
    """In-process (the installed command prints ``apply --help`` in the next test)."""
    text = cli.ok(cli.call(command, "--help"))
    assert "\nexample:\n" in text
    example = text.split("\nexample:\n", 1)[1]
    assert f"patchflow {command}" in example


def test_apply_help_lists_operators_and_conventions(cli: CLI) -> None:
    text = cli.ok(cli.run("apply", "--help"))
    # Sequential, Imported and TorchScript are --pipeline, MODULE:CALLABLE and --model
    hidden = {
        "Sequential",
        "Imported",
        "TorchScript",
        "SklearnOp",
        "Flip",
        "Rot90",
        "BandDropout",
        "BrightnessJitter",
    }
    for name in patchflow.ops.registered_ops():
        if name not in hidden:
            assert f"\n  {name} " in text, name
        else:
            assert f"\n  {name} " not in text, name
    for word in (
        "--op-arg",
        "MODULE:CALLABLE",
        "python -m",
        "1-based",
        "0-based",
        "--bands",
        "--co",
        "--zarr-format",
        "--stac",
        "--assets",
        "--workers",
        "--report",
        "patchflow[dashboard]",
        "patchflow[torch]",
        "--model",
        "--device",
        "yaml",
    ):
        assert word in text, word


def test_help_imports_nothing_heavy() -> None:
    code = (
        "import sys\n"
        "from patchflow.cli import main\n"
        "for cmd in ([], ['apply'], ['demo'], ['grid'], ['resume'], ['inspect']):\n"
        "    main([*cmd, '--help'])\n"
        "heavy = ('torch', 'distributed', 'bokeh', 'stackstac', 'pystac', 'yaml', 'zarr',"
        " 'rasterio', 'dask')\n"
        "print('LOADED', sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "LOADED []"


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--size", "0"], "argument --size"),
        (["--stride", "-3"], "argument --stride"),
        (["--op", "rescale", "--op-arg", "in_range"], "argument --op-arg"),
        (["--op", "rescale", "--op-arg", "in_rnge=[0, 1]"], "argument --op-arg"),
        (["--resolution", "0"], "argument --resolution"),
        (["--epsg", "x"], "argument --epsg"),
        (["--chunks", "0"], "argument --chunks"),
    ],
)
def test_bad_values_name_the_flag(
    cli: CLI, args: list[str], flag: str, tif4: Path, tmp_path: Path
) -> None:
    line = cli.error(cli.call("apply", str(tif4), str(tmp_path / "o.zarr"), *args), 2)
    assert flag in line
    assert "=" not in line.split(flag, 1)[0], "a Python keyword (size=) before the flag"


@pytest.mark.parametrize(
    ("args", "flag", "fresh"),
    [
        (["--size", "0"], "argument --size: expected a positive integer, got '0'", False),
        (
            ["--op", "rescale", "--op-arg", "in_rnge=[0, 1]"],
            "argument --op-arg: Rescale has no",
            False,
        ),
        (["--bands", "0"], "argument --bands: band 0 out of range", True),
        (["--stac", "s.json", "--assets", "B04"], "INPUT or --stac", False),
    ],
)
def test_errors_of_the_real_command_name_the_flag(
    cli: CLI, args: list[str], flag: str, fresh: bool, tif4: Path, tmp_path: Path
) -> None:
    """The full messages, exit status 2; ``--bands 0`` (which reads the file first) from the
    installed command in a fresh process, the others in-process."""
    run = cli.run if fresh else cli.call
    line = cli.error(run("apply", str(tif4), str(tmp_path / "o.zarr"), *args), 2)
    assert flag in line


def test_unwritten_output_with_size_larger_than_scene(cli: CLI, tif4: Path, tmp_path: Path) -> None:
    """A library error reached through the command line says --size, not size=
    (in-process: test_wording runs it through the installed command)."""
    line = cli.error(cli.call("apply", str(tif4), str(tmp_path / "o.zarr"), "--size", "4096"), 1)
    assert "larger than the scene" in line and "size=" not in line
