"""Install and packaging (issue 15): extras, dependencies, version, ``py.typed``, the
console script, and the demo on an install without matplotlib.

Everything runs against the real installed distribution and real subprocesses: the
``patchflow`` console script, ``python -m patchflow`` and, for the missing-matplotlib case,
an interpreter whose import system refuses matplotlib (a ``sitecustomize`` meta-path
finder, as if the ``[plot]`` extra were not installed).
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest

import patchflow

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "patchflow"
PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT: dict[str, Any] = PYPROJECT["project"]
EXTRAS: dict[str, list[str]] = PROJECT["optional-dependencies"]

#: ``patchflow[plot]``, ``'patchflow[torch]'``, ``patchflow[plot,geo]`` in messages and docs
EXTRA_MENTION = re.compile(r"patchflow\[([A-Za-z0-9_,\- ]+)\]")


def _canonical(name: str) -> str:
    """PEP 503 name: ``import_linter`` and ``Import-Linter`` are one distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match, requirement
    return _canonical(match.group(0))


#: imported only where the host process already has them (not ours to declare)
HOST_PROVIDED = {"IPython": "imported only inside a running Jupyter kernel, which brings it"}

BASE = {_requirement_name(r) for r in PROJECT["dependencies"]}
OPTIONAL = {_requirement_name(r) for name, reqs in EXTRAS.items() if name != "test" for r in reqs}


def _python(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def _console_script() -> Path:
    """The installed ``patchflow`` command of this interpreter's environment."""
    script = Path(sys.executable).parent / "patchflow"
    assert script.is_file(), f"no console script at {script}: is patchflow installed (pip -e .)?"
    return script


# --------------------------------------------------------------------------- extras


def _mentions() -> dict[str, set[str]]:
    """Every extra named as ``patchflow[...]`` in the package, the README and notebooks."""
    found: dict[str, set[str]] = {}
    files = [*PACKAGE.rglob("*.py"), ROOT / "README.md", *ROOT.glob("notebooks/*.ipynb")]
    for path in files:
        for match in EXTRA_MENTION.finditer(path.read_text(encoding="utf-8")):
            for extra in match.group(1).split(","):
                found.setdefault(extra.strip(), set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_extra_named_in_messages_and_docs_exists() -> None:
    mentions = _mentions()
    # the errors for missing optional packages name these (patchflow.plotting, ops.models,
    # engine.chip_kernels): if none were found, the scan itself is broken
    assert {"plot", "torch", "vector"} <= set(mentions), mentions
    unknown = {extra: sorted(where) for extra, where in mentions.items() if extra not in EXTRAS}
    assert not unknown, f"extras named but not in pyproject.toml: {unknown}"


def test_extras_hold_what_their_names_promise() -> None:
    names = {extra: {_requirement_name(r) for r in reqs} for extra, reqs in EXTRAS.items()}
    assert {"matplotlib"} <= names["plot"]
    assert {"torch"} <= names["torch"]
    assert {"bokeh"} <= names["dashboard"]
    assert {"geopandas", "shapely", "h3", "xvec"} <= names["vector"]
    assert EXTRAS["geo"] == ["patchflow[vector]"]  # the extra's former name still installs it
    assert {"pytest", "hypothesis", "nbclient", "ruff", "mypy", "import-linter"} <= names["test"]
    # the test tools install without torch (CPU-only torch is installed separately)
    assert "torch" not in names["test"]


def _third_party_imports() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Top-level package names patchflow imports: (at module level, inside functions).

    ``if TYPE_CHECKING:`` blocks are skipped (annotations only); so are the standard
    library and patchflow itself.
    """
    eager: dict[str, set[str]] = {}
    lazy: dict[str, set[str]] = {}

    def visit(node: ast.AST, where: str, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for orelse in child.orelse:
                    visit(orelse, where, in_function)
                continue
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names = [child.module]
            for name in names:
                top = name.split(".")[0]
                if top != "patchflow" and top not in sys.stdlib_module_names:
                    (lazy if in_function else eager).setdefault(top, set()).add(where)
            inner = in_function or isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
            )
            visit(child, where, inner)

    for path in sorted(PACKAGE.rglob("*.py")):
        visit(ast.parse(path.read_text(encoding="utf-8")), str(path.relative_to(ROOT)), False)
    return eager, lazy


@functools.cache
def _providers() -> dict[str, list[str]]:
    return dict(importlib.metadata.packages_distributions())  # scans every installed dist


def _distributions(module: str) -> set[str]:
    """The distributions that provide import name ``module`` (itself if none installed)."""
    provided = _providers().get(module, [module])
    return {_canonical(d) for d in provided}


def test_every_import_is_a_dependency_or_a_lazily_imported_extra() -> None:
    eager, lazy = _third_party_imports()
    assert {"numpy", "xarray", "dask"} <= set(eager)  # the scan sees the package
    # imported when a module loads: must come with the base install
    missing = {
        module: sorted(where)
        for module, where in eager.items()
        if not _distributions(module) & BASE
    }
    assert not missing, f"imported at module level but not a base dependency: {missing}"
    # imported inside functions: base, or an extra whose absence the caller is told about
    undeclared = {
        module: sorted(where)
        for module, where in lazy.items()
        if not _distributions(module) & (BASE | OPTIONAL) and module not in HOST_PROVIDED
    }
    assert not undeclared, f"imported but neither a dependency nor an extra: {undeclared}"


def test_the_vector_side_is_imported_only_where_it_is_used() -> None:
    # the raster core must not need geopandas/shapely/h3/xvec: none at module level
    eager, _ = _third_party_imports()
    assert not {"geopandas", "shapely", "h3", "xvec", "pyogrio"} & set(eager), eager


def test_base_dependencies_are_not_optional_too() -> None:
    assert not BASE & OPTIONAL, BASE & OPTIONAL


# --------------------------------------------------------------------------- version


def test_version_has_one_source() -> None:
    assert "version" not in PROJECT and "version" in PROJECT["dynamic"]
    dynamic = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "patchflow._version.__version__"}
    from patchflow._version import __version__

    assert patchflow.__version__ == __version__


def test_version_agrees_everywhere() -> None:
    installed = importlib.metadata.version("patchflow")
    module = _python("-m", "patchflow", "--version")
    assert module.returncode == 0, module.stderr
    script = subprocess.run(
        [str(_console_script()), "--version"], capture_output=True, text=True, timeout=300
    )
    assert script.returncode == 0, script.stderr
    expected = f"patchflow {patchflow.__version__}"
    assert module.stdout.strip() == script.stdout.strip() == expected
    assert installed == patchflow.__version__


def test_python_dash_m_patchflow_help() -> None:
    proc = _python("-m", "patchflow", "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: patchflow")
    for command in ("demo", "apply", "grid", "resume", "inspect"):
        assert command in proc.stdout


# --------------------------------------------------------------------------- py.typed


def test_py_typed_is_in_the_installed_package() -> None:
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["patchflow"]
    installed = Path(patchflow.__file__).parent
    assert (installed / "py.typed").is_file()
    assert (installed / "__init__.py").read_text().startswith('"""')  # the package, not a stub


@pytest.mark.slow
def test_wheel_ships_py_typed_and_the_declared_metadata(tmp_path: Path) -> None:
    pytest.importorskip("setuptools", minversion="77")  # the build backend ([test] has it)
    # build from a copy: setuptools writes build/ and *.egg-info/ next to the sources
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(PACKAGE, src / "patchflow", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "dist"
    # the PEP 517 backend itself, as pip or build would call it (no pip, no network)
    proc = _python(
        "-c",
        "import sys, setuptools.build_meta as backend; backend.build_wheel(sys.argv[1])",
        str(out),
        cwd=src,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = out.glob("patchflow-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        files = set(zf.namelist())
        metadata, entry_points = (
            zf.read(next(f for f in files if f.endswith(f".dist-info/{name}"))).decode()
            for name in ("METADATA", "entry_points.txt")
        )
    assert {"patchflow/py.typed", "patchflow/_version.py", "patchflow/__main__.py"} <= files
    assert not any(f.startswith(("tests/", "benchmarks/", "notebooks/")) for f in files)
    assert f"\nVersion: {patchflow.__version__}\n" in metadata
    assert "Classifier: Typing :: Typed" in metadata
    for extra in EXTRAS:
        assert f"Provides-Extra: {extra}\n" in metadata
    assert "patchflow = patchflow.__main__:main" in entry_points


# --------------------------------------------------------------------------- no matplotlib

#: a ``sitecustomize`` that makes matplotlib unimportable, as on a base install
NO_MATPLOTLIB_SITE = """
import sys
from importlib.abc import MetaPathFinder


class _NoMatplotlib(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NoMatplotlib())
"""


@pytest.fixture
def no_matplotlib_env(tmp_path: Path) -> dict[str, str]:
    """Environment variables for subprocesses in which ``import matplotlib`` fails."""
    site = tmp_path / "no_matplotlib"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_MATPLOTLIB_SITE)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "PYTHONWARNINGS": "ignore", "MPLBACKEND": "Agg"}
    # the blocker works: otherwise the tests below would pass for the wrong reason
    proc = _python("-c", "import matplotlib", env=env)
    assert proc.returncode != 0 and "No module named 'matplotlib'" in proc.stderr
    return env


def test_demo_command_runs_without_matplotlib(
    no_matplotlib_env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run(
        [str(_console_script()), "demo", "--size", "512", "--chunks", "256", "--out", str(out)],
        capture_output=True,
        text=True,
        env=no_matplotlib_env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    note = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(note) == 1 and note[0].startswith("patchflow: note:"), proc.stderr
    assert "patchflow[plot]" in note[0] and "preview" in note[0]
    assert "chips: 9" in proc.stdout and "-> OK" in proc.stdout
    assert f"result: {out / 'ndvi.zarr'}" in proc.stdout and "preview:" not in proc.stdout
    assert (out / "ndvi.zarr" / "zarr.json").is_file()
    assert not (out / "preview.png").exists()
    # what was written is the verified NDVI, readable without matplotlib
    check = _python(
        "-c",
        "import sys, numpy as np, patchflow\n"
        "r = patchflow.open_result(sys.argv[1])\n"
        "assert r.shape == (1, 512, 512) and np.isfinite(r.values).all()\n"
        "print('matplotlib' in sys.modules)",
        str(out / "ndvi.zarr"),
        env=no_matplotlib_env,
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip() == "False"


def test_demo_api_with_preview_names_the_plot_extra_without_matplotlib(
    no_matplotlib_env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "demo"
    proc = _python(
        "-c",
        "import sys\n"
        "from patchflow.demo import run_demo\n"
        "from patchflow.errors import PatchflowError\n"
        "try:\n"
        "    run_demo(512, sys.argv[1], chunks=256)\n"
        "except PatchflowError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    sys.exit('no error')\n",
        str(out),
        env=no_matplotlib_env,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "needs matplotlib" in proc.stdout and "patchflow[plot]" in proc.stdout
    assert not out.exists()  # refused before anything was written
