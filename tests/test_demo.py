"""The demo job and the plotting helpers behind its preview (issue 6).

matplotlib is the optional ``[plot]`` extra: the demo itself and the numpy-only helpers
(:func:`decimation`, :func:`thumbnail`, :func:`scene_image`) are tested without it; the
tests that draw ask for the ``matplotlib`` fixture, which skips when it is missing. The
demo on an install without matplotlib is tested in ``tests/test_packaging.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
import xarray as xr

import patchflow
from patchflow.demo import DemoResult, dn_ndvi, reference_ndvi, run_demo
from patchflow.plotting import (
    decimation,
    demo_figure,
    grid_figure,
    image_axes,
    save_figure,
    scene_image,
    thumbnail,
)


@pytest.fixture
def matplotlib() -> Any:
    """matplotlib, or skip: the test draws (``pip install 'patchflow[plot]'``)."""
    return pytest.importorskip("matplotlib")


def test_run_demo_in_a_temporary_directory() -> None:
    result = run_demo(520, chunks=256)
    assert isinstance(result, DemoResult)
    assert result.ok and result.max_error < 1e-6
    assert result.shape == (520, 520)
    assert result.chips == 9 and result.blocks == 9
    assert result.store is None and result.preview is None
    assert result.peak_mib > 0
    text = result.summary()
    assert "chips: 9" in text and "peak memory" in text and "OK" in text


def test_run_demo_writes_store_and_preview(tmp_path: Path, matplotlib: Any) -> None:
    result = run_demo(600, tmp_path / "out", chunks=300)
    assert result.ok
    assert result.store is not None and result.preview is not None
    assert Path(result.preview).stat().st_size > 0
    assert patchflow.open_result(result.store).shape == (1, 600, 600)
    again = run_demo(600, tmp_path / "out", chunks=300, preview=False)  # overwrites
    assert again.ok and again.preview is None


def test_reference_ndvi_is_the_full_scene_op(scene_factory: Callable[..., xr.DataArray]) -> None:
    scene = scene_factory((300, 280), chunks=128)
    ref = reference_ndvi(scene)
    assert ref.shape == (1, 300, 280)
    np.testing.assert_array_equal(ref.values, dn_ndvi(scene.values[None])[0])


def test_demo_detects_a_wrong_result(scene_factory: Callable[..., xr.DataArray]) -> None:
    from patchflow.demo import _max_error

    scene = scene_factory((300, 300), chunks=150)
    ref = reference_ndvi(scene)
    assert _max_error(ref, ref) == 0.0
    assert _max_error(ref + 0.5, ref) == pytest.approx(0.5)
    holed = ref.where(ref.x > ref.x[3])
    assert _max_error(holed, ref) == float("inf")  # NaN where the reference has a value


def test_thumbnail_reads_a_decimated_view(scene_factory: Callable[..., xr.DataArray]) -> None:
    scene = scene_factory((2100, 1000), chunks=512)
    assert decimation(scene.shape) == 3
    thumb = thumbnail(scene)
    assert thumb.shape == (2, 700, 334)
    assert not isinstance(thumb.data, dask.array.Array)
    full = scene.values
    np.testing.assert_array_equal(thumb.values, full[:, ::3, ::3])


def test_scene_image_modes() -> None:
    two = xr.DataArray(np.random.default_rng(0).random((2, 8, 9)), dims=("band", "y", "x"))
    assert scene_image(two).shape == (8, 9, 3)
    assert scene_image(two[0]).shape == (8, 9)
    assert scene_image(two[:1]).shape == (8, 9)
    rgb = scene_image(xr.concat([two, two[:1]], "band"))
    assert rgb.shape == (8, 9, 3) and 0 <= np.nanmin(rgb) and np.nanmax(rgb) <= 1


def test_demo_figure_has_four_panels(
    scene_factory: Callable[..., xr.DataArray], tmp_path: Path, matplotlib: Any
) -> None:
    scene = scene_factory((640, 600), chunks=320)
    layout = scene.patch.grid(size=256, stride=192)
    stitched = scene.patch.apply(dn_ndvi)
    fig = demo_figure(scene, stitched, reference_ndvi(scene), layout, max_error=1e-7, title="t")
    assert len(image_axes(fig)) == 4
    png = save_figure(fig, tmp_path / "p.png")
    assert Path(png).read_bytes()[:4] == b"\x89PNG"


def test_grid_figure_without_georeferencing(tmp_path: Path, matplotlib: Any) -> None:
    plain = xr.DataArray(np.ones((300, 500)), dims=("y", "x"))
    planned = patchflow.plan_grid(plain, size=128, stride=96)  # identity transform, y down
    for layout in (planned, patchflow.plan.ChipLayout(planned.grid, None, None)):
        fig = grid_figure(plain, layout)
        (ax,) = image_axes(fig)
        assert ax.get_xlim() == (0.0, 500.0)
        assert ax.get_ylim() == (300.0, 0.0)  # row 0 at the top
        assert len(ax.collections[0].get_paths()) == layout.grid.n_chips
        save_figure(fig, tmp_path / "g.png")
