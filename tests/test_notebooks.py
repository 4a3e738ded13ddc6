"""Every notebook in ``notebooks/`` executes top to bottom (issue 6), on small synthetic data.

The notebooks run in a fresh ``python3`` kernel started with *this* interpreter: a
throw-away kernelspec named ``python3`` is put first on ``JUPYTER_PATH`` for the test, so a
``python3`` kernel registered elsewhere on the machine (another Python) is never used and
nothing is installed.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip(
    "nbformat", reason="notebook tests need nbformat (pip install nbclient nbformat ipykernel)"
)
nbclient = pytest.importorskip(
    "nbclient", reason="notebook tests need nbclient (pip install nbclient nbformat ipykernel)"
)
if importlib.util.find_spec("ipykernel") is None:
    pytest.skip(
        "notebook tests need ipykernel (pip install nbclient nbformat ipykernel)",
        allow_module_level=True,
    )

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
#: Modules a notebook needs beyond patchflow's own dependencies.
NEEDS = {"02_ml_inference.ipynb": ("torch", "patchflow.ops.models")}
CELL_TIMEOUT = 120


@pytest.fixture
def python3_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A ``python3`` kernelspec that runs ipykernel on ``sys.executable``."""
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (patchflow tests)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    from jupyter_client.kernelspec import KernelSpecManager

    found = KernelSpecManager().get_kernel_spec("python3")
    assert found.argv[0] == sys.executable
    return "python3"


def test_there_are_notebooks() -> None:
    names = {p.name for p in NOTEBOOKS}
    assert {
        "01_patching_grid_process_stitch.ipynb",
        "02_ml_inference.ipynb",
        "03_distributed.ipynb",
    } <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs, f"{path.name}: outputs are committed"
            assert cell.execution_count is None, f"{path.name}: execution counts are committed"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path: Path, python3_kernel: str, tmp_path: Path) -> None:
    for module in NEEDS.get(path.name, ()):
        pytest.importorskip(module, reason=f"{path.name} needs {module}")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        kernel_name=python3_kernel,
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(tmp_path)}},  # the kernel's working directory
    )
    client.execute()
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.get("output_type") == "error"
    ]
    assert not errors
