"""The README's cookbook runs: every ```python block under "## Cookbook", in order, in one
namespace, in a scratch directory — so each example a user copies is known to work."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def cookbook_blocks(text: str) -> list[str]:
    """The python code blocks of the README's "## Cookbook" section, in order."""
    start = text.index("\n## Cookbook\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else len(text)]
    return BLOCK.findall(section)


def test_cookbook_has_an_example_per_capability() -> None:
    code = "\n".join(cookbook_blocks(README.read_text()))
    for needle in (
        ".patch.apply(",
        "patchflow.run(",
        "patchflow.resume(",
        'mode="accumulate"',
        "creation_options=",
        "zarr_format=2",
        "patchflow.open_stac(",
        "ModelOp(",
        "TTA(",
        "patchflow.sample(",
        "patchflow.write_chips(",
        "ChipStoreDataset(",
        "patchflow.zonal_stats(",
        "LocalCluster(",
    ):
        assert needle in code, f"the README cookbook has no example of {needle}"


@pytest.mark.slow
def test_cookbook_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("geopandas")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "readme_cookbook"}
    for i, block in enumerate(cookbook_blocks(README.read_text())):
        try:
            exec(compile(block, f"README.md cookbook block {i + 1}", "exec"), namespace)
        except Exception as exc:  # name the block, keep the cause
            raise AssertionError(f"README cookbook block {i + 1} failed:\n{block}") from exc
