"""Chip samplers (issue 7): property tests for counts, bounds, minimum distance,
reproducibility by seed, stratified class proportions, validity masks."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from affine import Affine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.spatial import cKDTree

from patchflow.errors import GridError, ParameterError
from patchflow.plan.grid import ChipGrid
from patchflow.plan.samplers import (
    Explicit,
    ExplicitCoords,
    JitteredStride,
    PoissonDisk,
    Random,
    RegularStride,
    Sampler,
    Stratified,
    invalid_counts,
)

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

shapes = st.tuples(st.integers(16, 400), st.integers(16, 400))
sizes = st.tuples(st.integers(1, 16), st.integers(1, 16))
seeds = st.integers(0, 2**32 - 1)


def in_bounds(anchors: np.ndarray, shape: tuple[int, int], size: tuple[int, int]) -> bool:
    return bool(
        (anchors >= 0).all()
        and (anchors[:, 0] + size[0] <= shape[0]).all()
        and (anchors[:, 1] + size[1] <= shape[1]).all()
    )


def check_common(anchors: np.ndarray, shape: tuple[int, int], size: tuple[int, int]) -> None:
    assert anchors.dtype == np.int64
    assert anchors.ndim == 2 and anchors.shape[1] == 2
    assert in_bounds(anchors, shape, size)


# --------------------------------------------------------------------------- regular


@SETTINGS
@given(shape=shapes, size=sizes, stride=st.tuples(st.integers(1, 20), st.integers(1, 20)))
def test_regular_stride_matches_chip_grid(shape, size, stride) -> None:
    anchors = RegularStride(stride=stride).anchors(shape, size)
    check_common(anchors, shape, size)
    grid = ChipGrid(shape, size, stride, "shift", allow_gaps=True)
    assert np.array_equal(anchors, grid.anchors)
    assert len(anchors) == grid.n_chips
    if stride[0] <= size[0] and stride[1] <= size[1]:
        assert (grid.coverage() > 0).all()  # the default grid covers every pixel


def test_regular_stride_defaults_and_errors() -> None:
    # stride defaults to the chip size (no overlap); "drop" keeps only regular anchors
    assert RegularStride().anchors((100, 100), 30)[:, 0].max() == 70
    assert RegularStride(boundary="drop").anchors((100, 100), 30)[:, 0].max() == 60
    with pytest.raises(ParameterError, match="built for size"):
        RegularStride(size=32).anchors((100, 100), 30)
    with pytest.raises(ParameterError, match="'shift' or 'drop'"):
        RegularStride(boundary="pad")  # type: ignore[arg-type]
    with pytest.raises(GridError, match="does not fit"):
        RegularStride().anchors((10, 100), 30)


# --------------------------------------------------------------------------- jittered


@SETTINGS
@given(
    shape=shapes,
    size=sizes,
    step=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    jitter=st.tuples(st.integers(0, 30), st.integers(0, 30)),
    seed=seeds,
)
def test_jittered_stride_properties(shape, size, step, jitter, seed) -> None:
    sampler = JitteredStride(step, jitter, seed)
    anchors = sampler.anchors(shape, size)
    check_common(anchors, shape, size)
    top = (shape[0] - size[0], shape[1] - size[1])
    n_rows, n_cols = top[0] // step[0] + 1, top[1] // step[1] + 1
    assert len(anchors) == n_rows * n_cols
    # reproducible; each anchor within `jitter` of a base grid point
    assert np.array_equal(anchors, JitteredStride(step, jitter, seed).anchors(shape, size))
    base_r = np.round(anchors[:, 0] / step[0]) * step[0]
    assert (np.abs(anchors[:, 0] - base_r) <= max(jitter[0], step[0] // 2)).all()
    if jitter == (0, 0):
        assert np.array_equal(np.unique(anchors[:, 0]), np.arange(n_rows) * step[0])


def test_jittered_seed_changes_pattern() -> None:
    a = JitteredStride(50, 20, seed=1).anchors((1000, 1000), 32)
    b = JitteredStride(50, 20, seed=2).anchors((1000, 1000), 32)
    assert a.shape == b.shape and not np.array_equal(a, b)


# --------------------------------------------------------------------------- random


@SETTINGS
@given(shape=shapes, size=sizes, n=st.integers(0, 300), seed=seeds)
def test_random_properties(shape, size, n, seed) -> None:
    positions = (shape[0] - size[0] + 1) * (shape[1] - size[1] + 1)
    if n > positions:
        with pytest.raises(ParameterError, match="distinct"):
            Random(n, seed).anchors(shape, size)
        return
    anchors = Random(n, seed).anchors(shape, size)
    check_common(anchors, shape, size)
    assert len(anchors) == n
    assert len(np.unique(anchors, axis=0)) == n  # distinct
    assert np.array_equal(anchors, Random(n, seed).anchors(shape, size))


def test_random_is_uniform() -> None:
    anchors = Random(20_000, seed=0).anchors((1000, 1000), 100)  # anchors in [0, 900]
    hist = np.histogram(anchors[:, 0], bins=9, range=(0, 901))[0]
    assert np.abs(hist / hist.mean() - 1).max() < 0.1
    assert not np.array_equal(anchors, Random(20_000, seed=1).anchors((1000, 1000), 100))


# --------------------------------------------------------------------------- poisson


@SETTINGS
@given(
    shape=st.tuples(st.integers(16, 500), st.integers(16, 500)),
    size=sizes,
    min_dist=st.floats(3.0, 120.0),
    seed=seeds,
)
def test_poisson_disk_min_distance(shape, size, min_dist, seed) -> None:
    anchors = PoissonDisk(min_dist, seed).anchors(shape, size)
    check_common(anchors, shape, size)
    assert len(anchors) >= 1
    if len(anchors) > 1:
        dist, _ = cKDTree(anchors.astype(np.float64)).query(anchors, k=2)
        assert dist[:, 1].min() >= min_dist  # exact: distances are checked after rounding
    assert np.array_equal(anchors, PoissonDisk(min_dist, seed).anchors(shape, size))


def test_poisson_disk_is_dense_and_capped() -> None:
    shape, size, r = (1000, 1000), (64, 64), 40.0
    anchors = PoissonDisk(r, seed=5).anchors(shape, size)
    # Bridson packs densely: no point of the anchor domain is far from an anchor
    probe = np.stack(np.meshgrid(np.arange(0, 937, 7), np.arange(0, 937, 7)), -1).reshape(-1, 2)
    dist = np.sqrt(((probe[:, None, :] - anchors[None, :, :]) ** 2).sum(-1)).min(1)
    assert dist.max() < 2 * r
    capped = PoissonDisk(r, seed=5, n=100).anchors(shape, size)
    assert len(capped) == 100
    assert {tuple(v) for v in capped} <= {tuple(v) for v in anchors}
    other = PoissonDisk(r, seed=6).anchors(shape, size)
    assert not np.array_equal(anchors, other)


def test_poisson_disk_errors() -> None:
    for bad in (0, -1.0, float("nan"), "5"):
        with pytest.raises(ParameterError, match="min_dist"):
            PoissonDisk(bad)  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="too small"):
        PoissonDisk(0.5).anchors((20_000, 20_000), 16)
    with pytest.raises(ParameterError, match="seed"):
        PoissonDisk(5, seed=-1)


# --------------------------------------------------------------------------- explicit


def test_explicit_keeps_order_and_policies() -> None:
    pts = [[50, 10], [0, 0], [90, 95], [-3, 4]]
    with pytest.raises(ParameterError, match="outside the scene"):
        Explicit(pts).anchors((100, 100), 10)
    drop = Explicit(pts, outside="drop").draw((100, 100), 10)
    assert drop.anchors.tolist() == [[50, 10], [0, 0]]
    assert drop.meta["point"].tolist() == [0, 1]
    clip = Explicit(pts, outside="clip").anchors((100, 100), 10)
    assert clip.tolist() == [[50, 10], [0, 0], [90, 90], [0, 4]]
    with pytest.raises(ParameterError, match=r"\(n, 2\)"):
        Explicit([1, 2, 3])
    with pytest.raises(ParameterError, match="integer"):
        Explicit([[0.5, 1]])


@SETTINGS
@given(
    size=sizes,
    fr=st.lists(st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 1.0)), min_size=1, max_size=20),
)
def test_explicit_coords_centres_chips(size, fr) -> None:
    shape = (300, 200)
    transform = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_000_000.0)
    h, w = size
    # points whose centred chips fit
    rows = np.array([h / 2 + f[0] * (shape[0] - h) for f in fr])
    cols = np.array([w / 2 + f[1] * (shape[1] - w) for f in fr])
    xs, ys = transform.c + transform.a * cols, transform.f + transform.e * rows
    anchors = ExplicitCoords(xs, ys).anchors(shape, size, transform=transform)
    check_common(anchors, shape, size)
    # the chip centre is the pixel corner nearest the point
    assert (np.abs(anchors[:, 0] + h / 2 - rows) <= 0.5 + 1e-9).all()
    assert (np.abs(anchors[:, 1] + w / 2 - cols) <= 0.5 + 1e-9).all()


def test_explicit_coords_reprojects() -> None:
    from pyproj import Transformer

    transform = Affine(10.0, 0.0, 740_000.0, 0.0, -10.0, 4_340_000.0)
    xs = 740_000.0 + np.array([1003.0, 5004.0, 12_347.0])
    ys = 4_340_000.0 - np.array([2006.0, 803.0, 9002.0])
    direct = ExplicitCoords(xs, ys, crs="EPSG:32610").anchors(
        (2000, 2000), 64, transform=transform, crs="EPSG:32610"
    )
    lon, lat = Transformer.from_crs("EPSG:32610", "EPSG:4326", always_xy=True).transform(xs, ys)
    via_wgs84 = ExplicitCoords(lon, lat, crs="EPSG:4326").anchors(
        (2000, 2000), 64, transform=transform, crs="EPSG:32610"
    )
    assert np.array_equal(direct, via_wgs84)
    assert direct.tolist() == [[169, 68], [48, 468], [868, 1203]]
    with pytest.raises(ParameterError, match="transform"):
        ExplicitCoords(xs, ys).anchors((2000, 2000), 64)
    with pytest.raises(ParameterError, match="no CRS"):
        ExplicitCoords(lon, lat, crs="EPSG:4326").anchors((2000, 2000), 64, transform=transform)
    with pytest.raises(ParameterError, match="differ in length"):
        ExplicitCoords([1.0, 2.0], [1.0])


@pytest.mark.parametrize("size", [(4, 6), (5, 7)])
def test_explicit_coords_on_pixel_edges_whatever_the_orientation(size) -> None:
    """A point on a pixel edge (odd sizes) or a pixel centre (even sizes: a tie between
    corners) gets the same geographic chip whether the scene runs north-up or flipped."""
    shape = (40, 30)
    north_up = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_000_000.0)
    grid = np.arange(8.0, 22.0, 0.5)  # corners, edge middles and centres, all fitting
    r, c = (g.ravel() for g in np.meshgrid(grid, grid, indexing="ij"))
    xs, ys = north_up @ (c, r)
    want = ExplicitCoords(xs, ys).anchors(shape, size, transform=north_up)
    # odd sizes: the chip centres on the pixel GDAL puts the point in (it owns its top
    # and left edges); even sizes: on the nearest corner, ties to the south-east one
    half = (np.array(size) - 1) // 2 if size[0] % 2 else np.array(size) / 2
    near = np.floor(np.stack([r, c], axis=1) + (0.0 if size[0] % 2 else 0.5))
    assert np.array_equal(want, near - half)
    y_up = Affine(10.0, 0.0, 500_000.0, 0.0, 10.0, 4_000_000.0 - 10.0 * shape[0])
    x_west = Affine(-10.0, 0.0, 500_000.0 + 10.0 * shape[1], 0.0, -10.0, 4_000_000.0)
    both = Affine(-10.0, 0.0, 500_000.0 + 10.0 * shape[1], 0.0, 10.0, y_up.f)
    for transform, flip in ((y_up, (1, 0)), (x_west, (0, 1)), (both, (1, 1))):
        got = ExplicitCoords(xs, ys).anchors(shape, size, transform=transform)
        back = got.copy()
        for axis in (0, 1):
            if flip[axis]:
                back[:, axis] = shape[axis] - size[axis] - got[:, axis]
        assert np.array_equal(back, want), transform


# --------------------------------------------------------------------------- stratified


def _label_raster(shape: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int16)
    labels[: shape[0] // 2] = 1
    labels[:, : shape[1] // 3] = 2
    labels[rng.random(shape) < 0.002] = 7  # a rare class
    labels[rng.random(shape) < 0.05] = -1  # nodata
    return labels


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(1, 60),
    seed=seeds,
    chunks=st.sampled_from([None, 64, (50, 130)]),
    size=st.tuples(st.integers(1, 20), st.integers(1, 20)),
)
def test_stratified_class_proportions(n, seed, chunks, size) -> None:
    shape = (200, 260)
    labels = _label_raster(shape, 3)
    src = labels if chunks is None else da.from_array(labels, chunks=chunks)
    drawn = Stratified(src, n, seed=seed, ignore=[-1]).draw(shape, size)
    anchors, classes = drawn.anchors, drawn.meta["class"]
    check_common(anchors, shape, size)
    h, w = size
    # the class of a chip is the label at its centre pixel
    centre = labels[anchors[:, 0] + h // 2, anchors[:, 1] + w // 2]
    assert np.array_equal(centre, classes)
    eligible = labels[h // 2 : shape[0] - h + h // 2 + 1, w // 2 : shape[1] - w + w // 2 + 1]
    for cls in (0, 1, 2, 7):
        assert (classes == cls).sum() == min(n, int((eligible == cls).sum()))
    assert -1 not in classes
    assert len(np.unique(anchors, axis=0)) == len(anchors)  # without replacement
    again = Stratified(src, n, seed=seed, ignore=[-1]).draw(shape, size)
    assert np.array_equal(again.anchors, anchors)


def test_stratified_mapping_xarray_and_uniformity() -> None:
    shape = (256, 256)
    labels = np.zeros(shape, np.uint8)
    labels[:, 128:] = 1
    labels[100:110, 50:60] = 2  # 100 pixels of class 2
    lazy = xr.DataArray(da.from_array(labels[None], chunks=(1, 64, 64)), dims=("band", "y", "x"))
    drawn = Stratified(lazy, {2: 100, 1: 10}, seed=0).draw(shape, 1)
    counts = {int(c): int((drawn.meta["class"] == c).sum()) for c in np.unique(drawn.meta["class"])}
    assert counts == {1: 10, 2: 100}  # class 0 not requested; all 100 pixels of class 2
    # uniform within a class: the column of class-1 draws spreads over all blocks
    cols = Stratified(labels, 4000, seed=1).draw(shape, 1)
    c1 = cols.anchors[cols.meta["class"] == 1, 1]
    hist = np.histogram(c1, bins=4, range=(128, 256))[0]
    assert np.abs(hist / hist.mean() - 1).max() < 0.15
    with pytest.raises(ParameterError, match="labels have shape"):
        Stratified(labels, 3).draw((100, 100), 4)
    with pytest.raises(ParameterError, match="n_per_class"):
        Stratified(labels, 0)


# --------------------------------------------------------------------------- validity


def brute_invalid(mask: np.ndarray, anchors: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.array([(~mask[r : r + size[0], c : c + size[1]]).sum() for r, c in anchors])


@SETTINGS
@given(
    size=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    chunks=st.sampled_from([17, 64, (33, 100)]),
    seed=seeds,
)
def test_invalid_counts_numpy_and_lazy(size, chunks, seed) -> None:
    rng = np.random.default_rng(seed)
    mask = rng.random((150, 170)) > 0.3
    anchors = Random(30, seed=seed).anchors(mask.shape, size)
    expect = brute_invalid(mask, anchors, size)
    assert np.array_equal(invalid_counts(mask, anchors, size), expect)
    lazy = xr.DataArray(da.from_array(mask, chunks=chunks), dims=("y", "x"))
    assert np.array_equal(invalid_counts(lazy, anchors, size), expect)


SAMPLER_FACTORIES = {
    "regular": lambda: RegularStride(stride=8),
    "jittered": lambda: JitteredStride(10, 4, seed=1),
    "random": lambda: Random(40, seed=1),
    "poisson": lambda: PoissonDisk(9, seed=1),
    "explicit": lambda: Explicit(
        np.stack(np.meshgrid(range(0, 180, 15), range(0, 180, 15)), -1).reshape(-1, 2)
    ),
    "stratified": lambda: Stratified(np.arange(200 * 200).reshape(200, 200) % 3, 15, seed=1),
}


@pytest.mark.parametrize("name", sorted(SAMPLER_FACTORIES))
@pytest.mark.parametrize("max_invalid", [0.0, 0.1])
@pytest.mark.parametrize("lazy", [False, True])
def test_every_sampler_skips_invalid_chips(name: str, max_invalid: float, lazy: bool) -> None:
    shape, size = (200, 200), (16, 16)
    rng = np.random.default_rng(0)
    mask = np.ones(shape, bool)
    mask[60:140, 60:140] = False  # a nodata hole
    mask[rng.random(shape) < 0.002] = False  # and speckle
    sampler: Sampler = SAMPLER_FACTORIES[name]()
    valid = da.from_array(mask, chunks=64) if lazy else mask
    everything = sampler.anchors(shape, size)
    kept = sampler.anchors(shape, size, valid=valid, max_invalid=max_invalid)
    check_common(kept, shape, size)
    bad = brute_invalid(mask, kept, size) > max_invalid * 256
    assert not bad.any()
    assert len(kept) > 0
    if name in ("regular", "jittered", "poisson", "explicit"):
        # deterministic candidates: exactly those that pass the test are kept
        ok = brute_invalid(mask, everything, size) <= max_invalid * 256
        assert {tuple(v) for v in kept} == {tuple(v) for v in everything[ok]}
    if name == "random":
        assert len(kept) == 40  # rejected chips are redrawn
    if name == "stratified":
        assert len(kept) == 45


def test_validity_argument_errors() -> None:
    with pytest.raises(ParameterError, match="max_invalid"):
        Random(3).anchors((50, 50), 4, valid=np.ones((50, 50), bool), max_invalid=1.5)
    with pytest.raises(ParameterError, match="mask has shape"):
        Random(3).anchors((50, 50), 4, valid=np.ones((40, 50), bool))
    with pytest.raises(ParameterError):
        Random(-1)
    with pytest.raises(ParameterError):
        JitteredStride(0)
    with pytest.raises(ParameterError, match="outside"):
        Explicit([[0, 0]], outside="wrap")  # type: ignore[arg-type]
