"""apply_vector: vector outputs from chips, deduplicated across overlaps (issue 18).

References are independent of patchflow's chip machinery: ``scipy.ndimage.label`` on the
whole scene (converted with the scene transform by hand), ``rasterio.features.shapes`` on
the whole scene, and a brute-force numpy loop over the chips for ``dedup="none"``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import xarray as xr
from scipy import ndimage

from patchflow.errors import GridError, ParameterError
from patchflow.plan.grid import ChipGrid
from patchflow.plan.samplers import Random

gpd = pytest.importorskip("geopandas")
shapely = pytest.importorskip("shapely")
from shapely.geometry import box  # noqa: E402

from patchflow.sampling.vectors import Shapes, apply_vector  # noqa: E402

H, W = 200, 232
SIZE, STRIDE = 64, 48  # overlap 16 (24 before the last, shifted, row of chips)
PIXEL, X0, Y0 = 10.0, 500_000.0, 4_600_000.0  # exact in binary: world coords compare exactly
UTM = "EPSG:32633"


def detect(chip: np.ndarray) -> list[dict[str, Any]]:
    """A toy detector: one box per 4-connected component of band 0 > 0, score = its size."""
    img = chip.reshape(-1, *chip.shape[-2:])[0]
    lab, _ = ndimage.label(img > 0)
    out = []
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            continue
        r, c = sl
        area = int((lab[sl] == i).sum())
        out.append({"geometry": box(c.start, r.start, c.stop, r.stop), "score": float(area)})
    return out


def world_box(r0: int, r1: int, c0: int, c1: int) -> tuple[float, float, float, float]:
    """Pixel box → world ``(xmin, ymin, xmax, ymax)`` with the scene transform, by hand."""
    return (X0 + c0 * PIXEL, Y0 - r1 * PIXEL, X0 + c1 * PIXEL, Y0 - r0 * PIXEL)


def reference_boxes(img: np.ndarray) -> list[tuple[float, ...]]:
    """Whole-scene detection: the boxes a single chip covering everything would give."""
    lab, _ = ndimage.label(img > 0)
    return [
        world_box(sl[0].start, sl[0].stop, sl[1].start, sl[1].stop)
        for sl in ndimage.find_objects(lab)
    ]


def bounds_of(gdf: Any) -> list[tuple[float, ...]]:
    return [tuple(float(v) for v in b) for b in gdf.geometry.bounds.values]


def place_objects(
    seed: int, size: Any = SIZE, stride: Any = STRIDE
) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Small squares/rectangles (sides 1-7 < the 16-px overlap) straddling chip borders
    and corners, plus some at the scene edges and some in chip interiors; 2+ px apart."""
    grid = ChipGrid((H, W), size=size, stride=stride)
    sh, sw = grid.size_yx
    edges_y = sorted({*grid.y.anchors.tolist(), *(grid.y.anchors + sh).tolist()} - {0, H})
    edges_x = sorted({*grid.x.anchors.tolist(), *(grid.x.anchors + sw).tolist()} - {0, W})
    rng = np.random.default_rng(seed)
    img = np.zeros((H, W), np.uint8)
    taken = np.zeros((H, W), bool)
    objects = []

    def put(r0: int, c0: int, h: int, w: int) -> None:
        r0, c0 = int(np.clip(r0, 0, H - h)), int(np.clip(c0, 0, W - w))
        if taken[max(r0 - 2, 0) : r0 + h + 2, max(c0 - 2, 0) : c0 + w + 2].any():
            return
        img[r0 : r0 + h, c0 : c0 + w] = 1
        taken[r0 : r0 + h, c0 : c0 + w] = True
        objects.append((r0, r0 + h, c0, c0 + w))

    for ey in edges_y:  # chip corners: straddle a row edge and a column edge at once
        for ex in edges_x:
            h, w = (int(v) for v in rng.integers(2, 8, 2))
            put(ey - int(rng.integers(1, h)), ex - int(rng.integers(1, w)), h, w)
    for _ in range(60):  # straddling one edge
        h, w = (int(v) for v in rng.integers(1, 8, 2))
        if rng.random() < 0.5:
            ey = int(rng.choice(edges_y))
            put(ey - int(rng.integers(0, h)), int(rng.integers(0, W - w)), h, w)
        else:
            ex = int(rng.choice(edges_x))
            put(int(rng.integers(0, H - h)), ex - int(rng.integers(0, w)), h, w)
    for _ in range(20):  # anywhere, including the scene edges
        h, w = (int(v) for v in rng.integers(1, 8, 2))
        put(int(rng.integers(-3, H)), int(rng.integers(-3, W)), h, w)
    return img, objects


def make_raster(
    img: np.ndarray, *, bands: int = 3, chunks: int | tuple[int, int] | None = 50
) -> xr.DataArray:
    """A ``(band, y, x)`` UTM raster: band 0 holds ``img``, the others noise."""
    rng = np.random.default_rng(1)
    data = np.concatenate(
        [img[None].astype(np.float32), rng.normal(size=(bands - 1, H, W)).astype(np.float32)]
    )
    arr = xr.DataArray(
        data,
        dims=("band", "y", "x"),
        coords={
            "band": np.arange(1, bands + 1),
            "y": Y0 - PIXEL * (np.arange(H) + 0.5),
            "x": X0 + PIXEL * (np.arange(W) + 0.5),
        },
    ).rio.write_crs(UTM)
    if chunks is None:
        return arr
    cy, cx = (chunks, chunks) if isinstance(chunks, int) else chunks
    return arr.chunk({"y": cy, "x": cx})


def single_band(values: np.ndarray, nodata: Any = None) -> xr.DataArray:
    """A ``(y, x)`` UTM raster of ``values`` on the scene's grid (with ``nodata`` if given)."""
    arr = xr.DataArray(
        values,
        dims=("y", "x"),
        coords={"y": Y0 - PIXEL * (np.arange(H) + 0.5), "x": X0 + PIXEL * (np.arange(W) + 0.5)},
    ).rio.write_crs(UTM)
    return arr if nodata is None else arr.rio.write_nodata(nodata)


@pytest.fixture(scope="module", params=[0, 1, 2])
def scene(request: pytest.FixtureRequest) -> tuple[xr.DataArray, np.ndarray]:
    img, objects = place_objects(request.param)
    assert len(objects) > 40
    return make_raster(img), img


# --------------------------------------------------------------------------- dedup


@pytest.mark.parametrize("dedup", ["ownership", "nms"])
def test_each_object_exactly_once(scene: tuple[xr.DataArray, np.ndarray], dedup: str) -> None:
    raster, img = scene
    gdf = apply_vector(raster, detect, size=SIZE, stride=STRIDE, dedup=dedup, chips_per_task=3)
    expected = reference_boxes(img)
    got = bounds_of(gdf)
    assert len(got) == len(set(got)) == len(expected)
    assert set(got) == set(expected)
    assert gdf.crs.to_epsg() == 32633
    # boxes come out as boxes (not just their bounds)
    assert np.allclose(gdf.geometry.area, (gdf.geometry.envelope).area)
    # the scores are those of the whole objects
    ref_area = {b: (b[2] - b[0]) * (b[3] - b[1]) / PIXEL**2 for b in expected}
    assert [ref_area[b] for b in got] == gdf["score"].tolist()


def test_rectangular_chips_and_any_grouping() -> None:
    size, stride = (48, 80), (32, 64)  # overlap 16 along both axes
    img, _ = place_objects(4, size, stride)
    raster = make_raster(img, chunks=(37, 90))
    expected = set(reference_boxes(img))
    results = []
    for per_task in (1, 5, 1000):
        gdf = apply_vector(raster, detect, size=size, stride=stride, chips_per_task=per_task)
        assert len(gdf) == len(expected) and set(bounds_of(gdf)) == expected
        results.append(gdf)
    for other in results[1:]:  # the row order does not depend on the grouping
        assert bounds_of(other) == bounds_of(results[0])
        assert other["chip"].tolist() == results[0]["chip"].tolist()
    assert results[0]["chip"].is_monotonic_increasing


def test_graph_pickles_and_runs_elsewhere() -> None:
    """Kernels and specs are picklable (a distributed scheduler ships them)."""
    import pickle

    import dask

    labels = np.zeros((H, W), np.int32)
    labels[20:25, 40:47] = 3
    raster = make_raster(labels.astype(np.uint8), chunks=64)
    lazy = apply_vector(raster, Shapes(), size=SIZE, stride=STRIDE, compute=False)
    graph = pickle.loads(pickle.dumps(dict(lazy.dask)))
    gdf = dask.get(graph, lazy.key)
    # band 0 of make_raster is float32: the values come out as floats
    assert gdf["value"].tolist() == [3.0] and bounds_of(gdf) == [world_box(20, 25, 40, 47)]


def test_none_keeps_duplicates_and_matches_brute_force(
    scene: tuple[xr.DataArray, np.ndarray],
) -> None:
    raster, img = scene
    gdf = apply_vector(raster, detect, size=SIZE, stride=STRIDE, dedup="none")
    # brute force: every chip of the grid, in row-major order, records in fn's order
    rows = []
    values = raster.values
    for k, (r0, c0) in enumerate(ChipGrid((H, W), size=SIZE, stride=STRIDE).anchors):
        for rec in detect(values[:, r0 : r0 + SIZE, c0 : c0 + SIZE]):
            bx0, by0, bx1, by1 = rec["geometry"].bounds
            rows.append((k, world_box(r0 + by0, r0 + by1, c0 + bx0, c0 + bx1), rec["score"]))
    assert gdf["chip"].tolist() == [r[0] for r in rows]
    assert bounds_of(gdf) == [r[1] for r in rows]
    assert gdf["score"].tolist() == [r[2] for r in rows]
    # the duplicates and cut-off parts the dedup modes remove (the test can fail)
    expected = reference_boxes(img)
    assert len(gdf) > len(expected)
    assert not set(bounds_of(gdf)) <= set(expected)


def test_nms_without_drop_edge_keeps_cut_off_parts(
    scene: tuple[xr.DataArray, np.ndarray],
) -> None:
    raster, img = scene
    gdf = apply_vector(raster, detect, size=SIZE, stride=STRIDE, dedup="nms", drop_edge=False)
    assert len(gdf) > len(reference_boxes(img))


def test_nms_iou_against_brute_force() -> None:
    """Greedy NMS with STRtree candidates equals an all-pairs numpy reference."""
    from patchflow.engine.vectors import nms

    rng = np.random.default_rng(5)
    xy = rng.uniform(0, 40, (300, 2))
    wh = rng.uniform(1, 8, (300, 2))
    boxes = np.column_stack([xy, xy + wh])
    scores = rng.integers(0, 20, 300).astype(float)  # many ties: order by position
    keep = nms([box(*b) for b in boxes], scores, 0.3)
    ix0 = np.maximum(boxes[:, None, 0], boxes[None, :, 0])
    iy0 = np.maximum(boxes[:, None, 1], boxes[None, :, 1])
    ix1 = np.minimum(boxes[:, None, 2], boxes[None, :, 2])
    iy1 = np.minimum(boxes[:, None, 3], boxes[None, :, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area = wh[:, 0] * wh[:, 1]
    iou = inter / (area[:, None] + area[None, :] - inter)
    alive = np.ones(300, bool)
    ref = []
    for i in sorted(range(300), key=lambda i: (-scores[i], i)):
        if alive[i]:
            ref.append(i)
            alive &= ~(iou[i] > 0.3)
    assert keep.tolist() == sorted(ref)


def held_whole(anchors: np.ndarray, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """Per chip: the pixel box lies inside it, clear of its cut (non-scene) borders."""
    top = anchors[:, 0] + (anchors[:, 0] > 0)
    bottom = anchors[:, 0] + SIZE - (anchors[:, 0] + SIZE < H)
    left = anchors[:, 1] + (anchors[:, 1] > 0)
    right = anchors[:, 1] + SIZE - (anchors[:, 1] + SIZE < W)
    return (top <= r0) & (r1 <= bottom) & (left <= c0) & (c1 <= right)


def elongated_objects(seed: int) -> np.ndarray:
    """Thin bars 10-40 px long (longer than the grid's overlap), 2+ px apart."""
    rng = np.random.default_rng(seed)
    img = np.zeros((H, W), np.uint8)
    taken = np.zeros((H, W), bool)
    for _ in range(200):
        n = int(rng.integers(10, 40))
        h, w = (2, n) if rng.random() < 0.5 else (n, 2)
        r0, c0 = int(rng.integers(0, H - h)), int(rng.integers(0, W - w))
        if taken[max(r0 - 2, 0) : r0 + h + 2, max(c0 - 2, 0) : c0 + w + 2].any():
            continue
        img[r0 : r0 + h, c0 : c0 + w] = 1
        taken[r0 : r0 + h, c0 : c0 + w] = True
    return img


def test_random_anchors_ownership(scene: tuple[xr.DataArray, np.ndarray]) -> None:
    """Every object some chip holds whole comes out exactly once, and whole."""
    check_random_anchors(*scene)


@pytest.mark.parametrize("seed", [7, 8])
def test_random_anchors_ownership_elongated(seed: int) -> None:
    """Bars longer than a chip's margin: the nearest chip centre alone would keep some
    twice (a cut-off part whose centroid lies nearer another chip's centre)."""
    img = elongated_objects(seed)
    check_random_anchors(make_raster(img, chunks=64), img)


def check_random_anchors(raster: xr.DataArray, img: np.ndarray) -> None:
    lab, _ = ndimage.label(img > 0)
    slices = ndimage.find_objects(lab)
    checked = 0
    for seed in range(4):
        sampler = Random(45, seed=seed)
        anchors = sampler.anchors((H, W), SIZE)
        got = bounds_of(apply_vector(raster, detect, size=SIZE, anchors=sampler))
        for sl in slices:
            r0, r1, c0, c1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
            if not held_whole(anchors, r0, r1, c0, c1).any():
                continue
            checked += 1
            full = world_box(r0, r1, c0, c1)
            # rows meeting this object: exactly one, the whole object
            meeting = [
                b
                for b in got
                if b[0] < full[2] and b[2] > full[0] and b[1] < full[3] and b[3] > full[1]
            ]
            assert meeting == [full], (seed, sl)
    assert checked > 40


def test_explicit_anchor_array_and_chip_index() -> None:
    img = np.zeros((H, W), np.uint8)
    img[10:14, 100:105] = 1  # inside both chips below
    raster = make_raster(img, chunks=None)
    anchors = np.array([[0, 60], [0, 90]])
    gdf = apply_vector(raster, detect, size=SIZE, anchors=anchors)
    # centre col 102.5: nearer chip 1's centre (122) than chip 0's (92)? |102.5-92|=10.5
    # vs |102.5-122|=19.5, rows equal -> chip 0 owns it
    assert gdf["chip"].tolist() == [0]
    assert bounds_of(gdf) == [world_box(10, 14, 100, 105)]
    both = apply_vector(raster, detect, size=SIZE, anchors=anchors, dedup="none")
    assert both["chip"].tolist() == [0, 1]


# --------------------------------------------------------------------------- laziness, CRS


def test_compute_false_builds_without_computing(
    scene: tuple[xr.DataArray, np.ndarray], dask_computes: Callable[..., Any]
) -> None:
    raster, img = scene
    with dask_computes(max_computes=0):
        lazy = apply_vector(raster, detect, size=SIZE, stride=STRIDE, compute=False)
    assert lazy.key.startswith("patchflow-vector-merge-")
    layers = set(lazy.dask.layers)
    assert any(name.startswith("patchflow-vector-chips-") for name in layers)
    again = apply_vector(raster, detect, size=SIZE, stride=STRIDE, compute=False)
    assert again.key == lazy.key  # deterministic keys
    gdf = lazy.compute()
    assert set(bounds_of(gdf)) == set(reference_boxes(img))
    assert gdf.crs.to_epsg() == 32633


def test_groups_read_only_their_chunks() -> None:
    """Each group task depends on the chip task of its own chips only."""
    img, _ = place_objects(0)
    raster = make_raster(img, chunks=50)
    lazy = apply_vector(raster, detect, size=SIZE, stride=STRIDE, chips_per_task=1, compute=False)
    graph = dict(lazy.dask)
    vec = [k for k in graph if isinstance(k, tuple) and k[0].startswith("patchflow-vector-chips")]
    assert len(vec) == ChipGrid((H, W), size=SIZE, stride=STRIDE).n_chips
    sample_keys = [k for k in graph if isinstance(k, tuple) and "sample" in str(k[0])]
    # 64-px chips over 50-px chunks touch at most 3 x 3 chunks
    deps = lazy.dask.get_all_dependencies()
    for key in sample_keys:
        sources = {d for d in deps[key] if isinstance(d, tuple) and len(d) == 4}
        assert 1 <= len(sources) <= 9


def test_dataset_2d_and_no_crs() -> None:
    img, _ = place_objects(1)
    ref = set(reference_boxes(img))
    raster = make_raster(img, bands=1, chunks=None).isel(band=0, drop=True)
    ds = xr.Dataset({"a": raster})
    assert set(bounds_of(apply_vector(ds, detect, size=SIZE, stride=STRIDE))) == ref
    plain = xr.DataArray(img, dims=("y", "x"))  # no coords: scene pixel coordinates
    gdf = apply_vector(plain, detect, size=SIZE, stride=STRIDE)
    assert gdf.crs is None
    lab, _ = ndimage.label(img > 0)
    pixel = {
        (float(s[1].start), float(s[0].start), float(s[1].stop), float(s[0].stop))
        for s in ndimage.find_objects(lab)
    }
    assert set(bounds_of(gdf)) == pixel


def test_empty_result_has_columns_and_crs() -> None:
    raster = make_raster(np.zeros((H, W), np.uint8), chunks=None)
    for dedup in ("ownership", "nms", "none"):
        gdf = apply_vector(raster, detect, size=SIZE, dedup=dedup)  # type: ignore[arg-type]
        assert isinstance(gdf, gpd.GeoDataFrame)
        assert len(gdf) == 0 and list(gdf.columns) == ["chip", "geometry"]
        assert gdf.crs.to_epsg() == 32633
    none = apply_vector(raster, detect, size=SIZE, anchors=np.zeros((0, 2), np.int64))
    assert len(none) == 0 and none.crs.to_epsg() == 32633


def test_dataframe_records_and_properties() -> None:
    img = np.zeros((H, W), np.uint8)
    img[100:103, 100:103] = 1

    def as_frame(chip: np.ndarray) -> Any:
        recs = detect(chip)
        frame = gpd.GeoDataFrame(
            {"label": ["thing"] * len(recs)}, geometry=[r["geometry"] for r in recs]
        )
        return frame.rename_geometry("shape")

    gdf = apply_vector(make_raster(img, chunks=None), as_frame, size=SIZE)
    assert list(gdf.columns) == ["label", "chip", "geometry"]
    assert gdf["label"].tolist() == ["thing"]
    assert bounds_of(gdf) == [world_box(100, 103, 100, 103)]


# --------------------------------------------------------------------------- errors


def test_record_without_geometry_names_it() -> None:
    img = np.zeros((H, W), np.uint8)
    raster = make_raster(img, chunks=None)
    with pytest.raises(ParameterError, match=r"record 0 of chip \d+ .*'score': 1"):
        apply_vector(raster, lambda chip: [{"score": 1}], size=SIZE)
    with pytest.raises(ParameterError, match="'chip' property"):
        apply_vector(raster, lambda chip: [{"geometry": box(0, 0, 1, 1), "chip": 3}], size=SIZE)
    with pytest.raises(ParameterError, match="ranks by the 'confidence'"):
        apply_vector(
            raster,
            lambda c: [{"geometry": box(0, 0, 1, 1)}],
            size=SIZE,
            dedup="nms",
            score="confidence",
        )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"dedup": "first"}, ParameterError, "unknown dedup"),
        ({"iou": 1.5}, ParameterError, "iou"),
        ({"size": 300}, GridError, "larger than the scene"),
        ({"stride": 80}, GridError, "stride"),
        ({"anchors": [[0, 0]], "stride": 32}, ParameterError, "stride applies"),
        ({"anchors": "everywhere"}, ParameterError, "anchors must be"),
    ],
)
def test_bad_options(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    raster = make_raster(np.zeros((H, W), np.uint8), chunks=None)
    options = {"size": SIZE, **kwargs}
    with pytest.raises(error, match=match):
        apply_vector(raster, detect, **options)


def test_missing_geopandas_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from patchflow.errors import MissingExtraError

    monkeypatch.setitem(sys.modules, "geopandas", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'patchflow\[vector\]'"):
        apply_vector(make_raster(np.zeros((H, W), np.uint8), chunks=None), detect, size=SIZE)


# --------------------------------------------------------------------------- Shapes


def test_shapes_matches_whole_scene_rasterio() -> None:
    import rasterio.features
    from affine import Affine
    from shapely.geometry import shape

    rng = np.random.default_rng(3)
    labels = np.zeros((H, W), np.int32)
    # irregular regions (blobs of random pixels, each < the overlap), several values,
    # many straddling chip borders
    for k in range(120):
        r, c = int(rng.integers(0, H - 8)), int(rng.integers(0, W - 8))
        blob = ndimage.binary_dilation(rng.random((7, 7)) < 0.3) & (rng.random((7, 7)) < 0.9)
        window = labels[r : r + 7, c : c + 7]
        if (window != 0).any():
            continue
        window[blob] = 1 + k % 5
    raster = single_band(labels)
    transform = Affine(PIXEL, 0, X0, 0, -PIXEL, Y0)
    ref = [
        (int(v), shape(g))
        for g, v in rasterio.features.shapes(labels, mask=labels != 0, transform=transform)
    ]
    gdf = apply_vector(raster.chunk(64), Shapes(), size=SIZE, stride=STRIDE)
    assert len(gdf) == len(ref) > 100
    got = sorted(
        (int(v), round(g.area, 6), tuple(round(x, 6) for x in g.bounds))
        for v, g in zip(gdf["value"], gdf.geometry, strict=True)
    )
    want = sorted((v, round(g.area, 6), tuple(round(x, 6) for x in g.bounds)) for v, g in ref)
    assert got == want
    for value in range(1, 6):
        mine = shapely.union_all(gdf.geometry[gdf["value"] == value].values)
        theirs = shapely.union_all([g for v, g in ref if v == value])
        assert mine.symmetric_difference(theirs).area == 0


def test_shapes_options() -> None:
    chip = np.zeros((2, 5, 5), np.float32)
    chip[1, 0:2, 0:2] = 3.5
    chip[1, 4, 4] = np.nan
    recs = Shapes(band=1)(chip)
    assert [(r["value"], r["geometry"].area) for r in recs] == [(3.5, 4.0)]
    every = Shapes(band=1, background=None)(chip)
    assert sorted(r["value"] for r in every) == [0.0, 3.5]
    diag = np.zeros((4, 4), np.int64)
    diag[0, 0] = diag[1, 1] = 2
    assert len(Shapes(connectivity=8)(diag)) == 1 and len(Shapes()(diag)) == 2
    with pytest.raises(ParameterError, match="connectivity"):
        Shapes(connectivity=6)  # type: ignore[arg-type]


def test_shapes_keeps_every_value_exact_and_apart() -> None:
    """``rasterio.features.shapes`` reads float32 or int32 only: a float64 chip (what an
    integer raster with nodata reaches the chip function as) must not merge labels that
    float32 cannot tell apart (16777216 and 16777217), nor report 0.1 as 0.10000000149;
    an int64/uint32 chip with labels past int32 is labelled, not refused."""
    chip = np.zeros((6, 6))
    chip[1:3, 1:3] = 16777217
    chip[1:3, 3:5] = 16777216
    chip[4, 0:2] = 0.1
    chip[4, 3:5] = 0.1 + 1e-12
    chip[5, 5] = np.nan
    got = sorted((r["value"], r["geometry"].bounds) for r in Shapes()(chip))
    assert got == [
        (0.1, (0.0, 4.0, 2.0, 5.0)),
        (0.1 + 1e-12, (3.0, 4.0, 5.0, 5.0)),
        (16777216.0, (3.0, 1.0, 5.0, 3.0)),
        (16777217.0, (1.0, 1.0, 3.0, 3.0)),
    ]
    big = np.zeros((4, 4), np.int64)
    big[0:2, 0:2] = 2**40
    big[2:4, 2:4] = -(2**40)
    got_big = sorted((r["value"], r["geometry"].bounds) for r in Shapes()(big))
    assert got_big == [(-(2**40), (2.0, 2.0, 4.0, 4.0)), (2**40, (0.0, 0.0, 2.0, 2.0))]
    assert all(type(r["value"]) is int for r in Shapes()(big))


def test_shapes_of_int32_labels_with_nodata_through_apply_vector() -> None:
    """An int32 instance-label raster with a nodata value reaches ``fn`` as float64; the
    regions of neighbouring labels above 2**24 still come out apart, with their labels."""
    labels = np.zeros((H, W), np.int32)
    labels[:, :10] = -1  # the nodata collar
    labels[20:24, 30:33] = 2**24 + 1
    labels[20:24, 33:36] = 2**24
    raster = single_band(labels, -1)
    got = apply_vector(raster, Shapes(), size=SIZE, stride=STRIDE)
    assert sorted(got["value"].tolist()) == [2**24, 2**24 + 1]
    assert sorted(round(g.area / PIXEL**2) for g in got.geometry) == [12, 12]


def test_accessor_gives_the_same_table() -> None:
    from patchflow.io.synthetic import make_scene
    from patchflow.sampling.vectors import Shapes, apply_vector

    labels = (make_scene((256, 256), chunks=128).sel(band="nir") > 3000).astype("uint8")
    free = apply_vector(labels, Shapes(), size=64, stride=48)
    via = labels.patch.apply_vector(Shapes(), size=64, stride=48)
    assert len(free) > 0
    assert free.geometry.geom_equals_exact(via.geometry, tolerance=0).all()
    assert free.drop(columns="geometry").equals(via.drop(columns="geometry"))


def test_a_failing_chip_function_is_named_with_its_chip() -> None:
    from patchflow.errors import OperatorError

    raster = xr.DataArray(np.zeros((64, 64)), dims=("y", "x"))

    def broken(chip: np.ndarray) -> list[dict[str, Any]]:
        raise ZeroDivisionError("no objects today")

    with pytest.raises(OperatorError, match=r"chip 0 \(anchor row 0, col 0\).*ZeroDivisionError"):
        apply_vector(raster, broken, size=32, stride=32)


def test_nodata_reaches_the_chip_function_as_nan_and_never_becomes_a_region() -> None:
    """A uint8 class raster with a nodata collar (255): the chip function sees the collar
    as NaN, so ``Shapes`` returns the real classes only — never a polygon of nodata —
    and the same polygons as ``rasterio.features.shapes`` on the masked whole scene."""
    import rasterio.features

    rng = np.random.default_rng(1)
    classes = np.zeros((H, W), np.uint8)
    for _ in range(30):
        r, c = rng.integers(0, H - 6), rng.integers(0, W - 6)
        classes[r : r + 5, c : c + 4] = rng.integers(1, 4)
    classes[:, :20] = 255  # the collar
    raster = single_band(classes, 255)
    seen: list[np.dtype] = []

    def shapes(chip: np.ndarray) -> list[dict[str, Any]]:
        seen.append(chip.dtype)
        return Shapes()(chip)

    got = apply_vector(raster, shapes, size=SIZE, stride=STRIDE)
    assert seen and all(d == np.float64 for d in seen)
    assert 255 not in set(got["value"]) and len(got) > 0
    transform = raster.rio.transform()
    valid = (classes != 255) & (classes != 0)
    whole = [
        (shapely.geometry.shape(g), v)
        for g, v in rasterio.features.shapes(classes, mask=valid, transform=transform)
    ]
    # the regions lie within chips (5 x 4 < the overlap): the same set of polygons
    want = sorted((round(g.area), tuple(np.round(g.bounds, 3)), v) for g, v in whole)
    have = sorted(
        (round(g.area), tuple(np.round(g.bounds, 3)), v)
        for g, v in zip(got.geometry, got["value"], strict=True)
    )
    assert have == want


def test_nms_by_class_keeps_overlapping_objects_of_other_classes() -> None:
    """Two detections of different classes on the same box: class-blind NMS keeps one,
    ``by="label"`` keeps both (and still one per class across overlapping chips)."""
    raster = xr.DataArray(np.zeros((96, 96)), dims=("y", "x"))

    def two_labels(chip: np.ndarray) -> list[dict[str, Any]]:
        return [
            {"geometry": box(20, 20, 30, 30), "score": 0.9, "label": "car"},
            {"geometry": box(20, 20, 30, 30), "score": 0.8, "label": "truck"},
        ]

    blind = apply_vector(raster, two_labels, size=64, stride=32, dedup="nms", drop_edge=False)
    per_class = apply_vector(
        raster, two_labels, size=64, stride=32, dedup="nms", drop_edge=False, by="label"
    )
    # the chips' boxes sit at different places (20 px into each chip): no duplicates
    # across chips, so blind NMS keeps one detection per chip, per-class NMS two
    n_chips = len(ChipGrid((96, 96), size=64, stride=32).anchors)
    assert len(blind) == n_chips and set(blind["label"]) == {"car"}
    assert len(per_class) == 2 * n_chips
    assert sorted(per_class["label"].value_counts().tolist()) == [n_chips, n_chips]
    with pytest.raises(ParameterError, match="by='<your class column>'"):
        apply_vector(raster, two_labels, size=64, stride=32, dedup="nms", by="kind")
