"""What ``import patchflow`` costs, and patchflow without matplotlib (issues 13 and 14).

Every check runs in a fresh interpreter: ``sys.modules`` of the test process already holds
whatever other tests imported. matplotlib is an optional extra (``patchflow[plot]``); its
absence is simulated with ``sys.modules["matplotlib"] = None``, which makes every
``import matplotlib`` (and ``matplotlib.*``) raise ``ImportError``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import xarray as xr

#: Modules ``import patchflow`` must not load: optional (matplotlib, torch) or slow to
#: import and only needed for scipy window specs (scipy.signal, ~0.6 s).
HEAVY = ("matplotlib", "scipy.signal", "torch")

NO_MATPLOTLIB = 'import sys; sys.modules["matplotlib"] = None\n'


def python(code: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (warnings off, so stderr is only ours)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def loaded_after(statement: str) -> list[str]:
    """Which of :data:`HEAVY` are in ``sys.modules`` after ``statement``."""
    proc = python(
        f"import json, sys\n{statement}\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    assert proc.returncode == 0, proc.stderr
    loaded: list[str] = json.loads(proc.stdout.splitlines()[-1])
    return loaded


def test_import_patchflow_loads_no_heavy_modules() -> None:
    assert loaded_after("import patchflow") == []


def _modules_after(statement: str, names: tuple[str, ...]) -> list[str]:
    proc = python(
        f"import json, sys\n{statement}\n"
        f"print(json.dumps([m for m in {names!r} if m in sys.modules]))"
    )
    assert proc.returncode == 0, proc.stderr
    return list(json.loads(proc.stdout.splitlines()[-1]))


ENGINE_DEPS = ("dask", "zarr", "rioxarray", "patchflow.engine", "patchflow.io.store")


def test_import_patchflow_is_light_and_loads_the_engine_on_first_use() -> None:
    # the accessor is registered with xarray alone; the engine comes with the first name
    assert _modules_after("import patchflow", ENGINE_DEPS) == []
    statement = (
        "import numpy as np, xarray as xr, patchflow\n"
        "assert hasattr(xr.DataArray(np.ones((4, 4)), dims=('y', 'x')), 'patch')\n"
        "assert patchflow.apply.__module__ == 'patchflow.api'"
    )
    assert _modules_after(statement, ENGINE_DEPS) == list(ENGINE_DEPS)


def test_raster_jobs_load_no_vector_packages() -> None:
    # apply, sample and stitch run without the [vector] extra's packages ever loading
    vector = ("geopandas", "shapely", "h3", "xvec")
    job = (
        "import numpy as np, patchflow\n"
        "from patchflow.io.synthetic import make_scene\n"
        "from patchflow.plan.samplers import Random\n"
        "scene = make_scene((256, 256), chunks=128)\n"
        "patchflow.apply(scene, lambda c: c[:1] * 2, size=64, stride=48).compute()\n"
        "chips = patchflow.sample(scene, Random(4, seed=0), size=32)\n"
        "patchflow.stitch(scene, chips, np.c_[chips.row, chips.col], window='hann').compute()"
    )
    assert _modules_after(job, vector) == []


def test_cli_help_loads_no_engine() -> None:
    statement = (
        "from patchflow.cli import main\n"
        "import contextlib, io\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['--help']) == 0 and main(['apply', '--help']) == 0"
    )
    # (the option lists it prints come from pure-numpy modules: no dask, zarr or rasterio)
    assert _modules_after(statement, ("dask", "zarr", "rioxarray", "rasterio")) == []


def test_lazy_masks_reach_samplers_without_importing_the_engine_first() -> None:
    # a dask mask handed straight to a sampler is read block by block through the engine
    statement = (
        "import dask.array as da\n"
        "from patchflow.plan.samplers import Random\n"
        "mask = da.ones((300, 300), dtype=bool, chunks=100)\n"
        "assert len(Random(5, seed=0).anchors((300, 300), 32, valid=mask)) == 5"
    )
    assert "patchflow.engine.rasters" in _modules_after(statement, ("patchflow.engine.rasters",))


def test_plotting_demo_and_cli_modules_import_matplotlib_lazily() -> None:
    statement = (
        "import patchflow.plotting, patchflow.demo, patchflow.cli\npatchflow.cli.build_parser()"
    )
    assert "matplotlib" not in loaded_after(statement)


def test_builtin_windows_need_no_scipy_signal_but_scipy_specs_load_it() -> None:
    # the default (Hann) path must not pay scipy.signal's ~0.6 s import in every process
    builtin = "import patchflow\nassert patchflow.make_window('hann', (8, 8)).separable"
    assert loaded_after(builtin) == []
    spec = "import patchflow\nassert patchflow.make_window(('kaiser', 8.0), (8, 8)).separable"
    assert loaded_after(spec) == ["scipy.signal"]


# --------------------------------------------------------------------------- no matplotlib

PLOTTING_WITHOUT_MATPLOTLIB = (
    NO_MATPLOTLIB
    + """
import tempfile
from pathlib import Path

from patchflow import PatchflowError
from patchflow.demo import run_demo
from patchflow.plotting import (
    decimation, demo_figure, draw_chip_grid, grid_figure, require_matplotlib, save_figure,
    scene_image, thumbnail,
)
from patchflow.io.synthetic import make_scene

scene = make_scene((300, 300), seed=1)
layout = scene.patch.grid(size=128, stride=96)
# the numpy-only helpers work without matplotlib
assert decimation((300, 300), 100) == 3
assert scene_image(thumbnail(scene, 100)).shape == (100, 100, 3)

calls = {
    "require_matplotlib": lambda: require_matplotlib(),
    "grid_figure": lambda: grid_figure(scene, layout),
    "demo_figure": lambda: demo_figure(scene, scene[:1], scene[:1], layout),
    "draw_chip_grid": lambda: draw_chip_grid(None, layout),
    "save_figure": lambda: save_figure(None, "never.png"),
}
with tempfile.TemporaryDirectory() as tmp:
    out = Path(tmp) / "demo"
    calls["run_demo"] = lambda: run_demo(300, out, preview=True)
    for name, call in calls.items():
        try:
            call()
        except PatchflowError as exc:
            assert "patchflow[plot]" in str(exc), (name, str(exc))
            assert isinstance(exc.__cause__, ImportError), (name, exc.__cause__)
        else:
            raise AssertionError(f"{name} did not raise without matplotlib")
    assert not out.exists(), "run_demo(preview=True) started the job before failing"
    # ... and without a preview the demo runs
    assert run_demo(300, out, preview=False).ok
print("ok")
"""
)


def test_plotting_functions_name_the_plot_extra_without_matplotlib() -> None:
    proc = python(PLOTTING_WITHOUT_MATPLOTLIB)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("ok")


CLI_WITHOUT_MATPLOTLIB = (
    NO_MATPLOTLIB + "from patchflow.cli import main\nsys.exit(main(sys.argv[1:]))\n"
)


def test_cli_grid_png_names_the_plot_extra_without_matplotlib(
    scene_factory: Callable[..., xr.DataArray], tmp_path: Path
) -> None:
    tif = tmp_path / "scene.tif"
    scene_factory((600, 500), seed=3).rio.to_raster(tif)
    png = tmp_path / "grid.png"
    proc = python(CLI_WITHOUT_MATPLOTLIB, "grid", str(tif), "--size", "256", "--png", str(png))
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("patchflow: error: --png needs matplotlib")
    assert "patchflow[plot]" in lines[0]
    assert not png.exists()
    # without --png the command does not need matplotlib
    plain = python(CLI_WITHOUT_MATPLOTLIB, "grid", str(tif), "--size", "256")
    assert plain.returncode == 0, plain.stderr
    assert "chips: 3 x 3 = 9" in plain.stdout


@pytest.mark.slow
def test_cli_demo_skips_the_preview_without_matplotlib(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = python(CLI_WITHOUT_MATPLOTLIB, "demo", "--size", "512", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "matplotlib is not installed, skipping the PNG preview" in proc.stderr
    assert "patchflow[plot]" in proc.stderr
    assert "-> OK" in proc.stdout and "preview:" not in proc.stdout
    assert (out / "ndvi.zarr").is_dir()
    assert not (out / "preview.png").exists()


def test_every_public_name_resolves_and_stays_within_30() -> None:
    # the lazy table, the TYPE_CHECKING imports and __all__ are kept by hand: a name in
    # __all__ that the table misses would only fail when a user touches it
    import patchflow

    assert len(patchflow.__all__) <= 30
    for name in patchflow.__all__:
        assert getattr(patchflow, name) is not None, name
    assert set(patchflow.__all__) <= set(dir(patchflow))


EXTRAS_MISSING = """
import sys
for name in ("h3", "xvec", "torch", "joblib", "spyndex", "geopandas", "shapely"):
    sys.modules[name] = None
from pathlib import Path
from patchflow.engine.chip_kernels import require_geo, require_h3
from patchflow.engine.vectors import require_vector
from patchflow.errors import MissingExtraError
from patchflow.ops.indices import _spyndex
from patchflow.ops.models import _torch
from patchflow.ops.sklearn import _load_estimator
from patchflow.points import _geopandas
from patchflow.sampling.point_values import _require_geopandas
from patchflow.sampling.torch_data import _to_tensor
from patchflow.sampling.zonal import _polygon_frame, require_xvec
import numpy as np
calls = {
    "require_geo": (require_geo, "patchflow[vector]"),
    "require_h3": (require_h3, "h3"),
    "require_vector": (require_vector, "patchflow[vector]"),
    "spyndex": (_spyndex, "spyndex"),
    "torch": (_torch, "patchflow[torch]"),
    "sklearn": (lambda: _load_estimator(Path("m.joblib"), b""), "patchflow[ml]"),
    "points": (lambda: _geopandas("sample"), "patchflow[vector]"),
    "point_values": (_require_geopandas, "patchflow[vector]"),
    "tensor": (lambda: _to_tensor(np.zeros(2)), "patchflow[torch]"),
    "zonal": (lambda: _polygon_frame([], None), "patchflow[vector]"),
    "xvec": (require_xvec, "xvec"),
}
for what, (call, words) in calls.items():
    try:
        call()
    except MissingExtraError as exc:
        assert isinstance(exc, ImportError) and isinstance(exc.__cause__, ImportError), what
        assert words in str(exc), (what, str(exc))
    else:
        raise AssertionError(what + " did not raise")
print("ok")
"""


def test_every_optional_extra_is_named_when_missing() -> None:
    """Each helper that imports an optional package raises MissingExtraError (an
    ImportError, chained to the real one) naming what to install; ``as_tensor=True``
    without torch raised a plain PatchflowError before."""
    proc = python(EXTRAS_MISSING)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("ok")
