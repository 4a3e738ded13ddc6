"""Every notebook in ``notebooks/`` executes top to bottom (issues 6 and 15), on small
synthetic data, and stays clean: committed without outputs, no commented-out code cells,
stackstac only with pixel-centre coordinates, and no progress-bar spam in the executed
outputs (a text progress bar writes one output line per update into a notebook).

The notebooks run in a fresh ``python3`` kernel started with *this* interpreter: a
throw-away kernelspec named ``python3`` is put first on ``JUPYTER_PATH`` for the test, so a
``python3`` kernel registered elsewhere on the machine (another Python) is never used and
nothing is installed. Notebooks with an optional torch path are also run with torch
hidden from the kernel, so the path without torch is executed too.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

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
#: Notebooks that use torch when it is there and must also run without it → what they
#: print when they took the path without torch.
TORCH_OPTIONAL = {"04_stac_composite_model_cog.ipynb": "model: numpy"}
CELL_TIMEOUT = 120
#: progress-bar lines an executed notebook may print (a final "100 %" line is fine; a bar
#: redrawn at every update is not)
MAX_PROGRESS_LINES = 2


# --------------------------------------------------------------------------- checks


def _is_code(text: str) -> bool:
    """``text`` parses as Python that does something: not a bare name, number, string or
    tuple (``# done``, ``# (n, band, h, w)``), nor a bare annotation (``# Note: nodata``)."""
    if not text.strip():
        return False
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return False
    for node in tree.body:
        if isinstance(node, ast.Expr) and not isinstance(node.value, ast.Call | ast.Await):
            continue
        if isinstance(node, ast.AnnAssign) and node.value is None:
            continue
        return True
    return False


def commented_out_code(source: str) -> list[str]:
    """The commented-out code in a code cell: each run of whole-line comments that parses as
    code as a whole, or has a line that does."""
    runs: list[list[str]] = [[]]
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") and not stripped.startswith("#!"):
            runs[-1].append(stripped[1:].removeprefix(" "))
        elif runs[-1]:
            runs.append([])
    found = []
    for run in runs:
        for lines in (run, *([line] for line in run)):
            text = textwrap.dedent("\n".join(lines))
            if _is_code(text):
                found.append(text)
                break
    return found


_BAR = re.compile(
    r"\[[#=>\-. ]{5,}\]"  # [#####      ] (dask, distributed text bars)
    r"|\d{1,3}%\|"  # 42%|████      | (tqdm)
    r"|\b\d{1,3}(\.\d+)? ?% (Completed|done)"
)


def progress_lines(nb: Any) -> list[str]:
    """Lines of progress bars in the executed outputs (each ``\\r`` redraw counts)."""
    found = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                text = out.get("text", "")
            else:
                text = out.get("data", {}).get("text/plain", "")
            found += [line for line in re.split(r"[\r\n]+", text) if _BAR.search(line)]
    return found


def stackstac_calls(source: str) -> list[str]:
    """Every ``stackstac.stack(...)`` call in ``source``, arguments included."""
    calls = []
    for match in re.finditer(r"stackstac\.stack\(", source):
        depth, end = 0, match.end() - 1
        for end in range(match.end() - 1, len(source)):
            depth += {"(": 1, ")": -1}.get(source[end], 0)
            if depth == 0:
                break
        calls.append(source[match.start() : end + 1])
    return calls


def test_checks_can_fail() -> None:
    # the checks below catch what they are for: the commented-out real-data cell
    # notebook 01 once had, the text bar notebook 03 once printed, stackstac's corner coords
    cell = (
        "# import pystac_client\n"
        "#\n"
        "# stack = stackstac.stack(\n"
        "#     items,\n"
        '#     assets=["B04", "B08"],\n'
        "# )\n"
    )
    assert commented_out_code(cell)
    assert commented_out_code("x = 1\n# print(x)")
    for comment in (
        "# dask already runs one task per core",
        "# (n, band, h, w)",
        "# Note: nodata",
        "# done",
        "x = 1  # print(x) inline is fine",
    ):
        assert not commented_out_code(comment), comment
    nb = nbformat.v4.new_notebook()
    cell_out = nbformat.v4.new_code_cell("progress(x)")
    cell_out.outputs = [
        nbformat.v4.new_output(
            "stream", name="stdout", text=f"\r[{'#' * k:<40}] | {k * 5 // 2}% Completed |  0.5s"
        )
        for k in range(0, 41, 8)
    ]
    nb.cells.append(cell_out)
    assert len(progress_lines(nb)) > MAX_PROGRESS_LINES
    assert len(progress_lines(nb)) == 6
    nb.cells[0].outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="median 42% of 7 dates\n")
    ]
    assert progress_lines(nb) == []
    call = 'stackstac.stack(items, assets=["B04"], epsg=f(1))'
    assert stackstac_calls(f"s = {call}\nprint(s)") == [call]


# --------------------------------------------------------------------------- notebooks


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
        "04_stac_composite_model_cog.ipynb",
    } <= names
    assert set(TORCH_OPTIONAL) <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs, f"{path.name}: outputs are committed"
            assert cell.execution_count is None, f"{path.name}: execution counts are committed"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_has_no_commented_out_code(path: Path) -> None:
    # optional code (real data, other hardware) goes in a markdown code block, or behind
    # a runtime check, so every code cell runs as committed
    nb = nbformat.read(path, as_version=4)
    found = {
        i: commented_out_code(cell.source)
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code"
    }
    assert not {i: code for i, code in found.items() if code}, f"{path.name}: {found}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_stackstac_uses_pixel_centres(path: Path) -> None:
    # stackstac's default xy_coords="topleft" labels pixel corners: rioxarray (and so
    # patchflow) would georeference everything half a pixel off
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        for call in stackstac_calls(cell.source):
            assert re.search(r"xy_coords\s*=\s*[\"']center[\"']", call), f"{path.name}: {call}"


def execute(path: Path, kernel: str, cwd: Path, prelude: str | None = None) -> Any:
    """Run the notebook (``prelude`` first, as an extra cell); fail on any error output or
    progress-bar spam."""
    nb = nbformat.read(path, as_version=4)
    if prelude is not None:
        nb.cells.insert(0, nbformat.v4.new_code_cell(prelude))
    client = nbclient.NotebookClient(
        nb,
        kernel_name=kernel,
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(cwd)}},  # the kernel's working directory
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
    bars = progress_lines(nb)
    assert len(bars) <= MAX_PROGRESS_LINES, f"{path.name} prints progress bars: {bars[:5]}"
    return nb


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path: Path, python3_kernel: str, tmp_path: Path) -> None:
    for module in NEEDS.get(path.name, ()):
        pytest.importorskip(module, reason=f"{path.name} needs {module}")
    execute(path, python3_kernel, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", TORCH_OPTIONAL)
def test_notebook_executes_without_torch(name: str, python3_kernel: str, tmp_path: Path) -> None:
    # `import torch` raises ImportError in the kernel, as where torch is not installed
    path = next(p for p in NOTEBOOKS if p.name == name)
    nb = execute(path, python3_kernel, tmp_path, prelude="import sys\nsys.modules['torch'] = None")
    printed = "".join(
        out.get("text", "")
        for cell in nb.cells
        for out in cell.get("outputs", [])
        if out.get("output_type") == "stream"
    )
    assert TORCH_OPTIONAL[name] in printed
