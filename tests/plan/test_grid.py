from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from patchflow.errors import GridError, ParameterError, PatchflowError
from patchflow.plan.grid import BOUNDARIES, AxisGrid, ChipGrid, pair, size_pair

# ---------------------------------------------------------------------------------------
# naive reference implementation (plain python loops)
# ---------------------------------------------------------------------------------------


def ref_anchors(length: int, size: int, stride: int, boundary: str) -> list[int] | None:
    """Anchors the module docstring describes; ``None`` where the grid must raise."""
    if boundary == "pad":
        anchors = [0]
        while anchors[-1] + size < length:
            anchors.append(anchors[-1] + stride)
        return anchors
    if size > length:
        return None
    anchors = []
    a = 0
    while a + size <= length:
        anchors.append(a)
        a += stride
    if anchors[-1] + size < length:
        if boundary == "shift":
            anchors.append(length - size)
        elif boundary == "raise":
            return None
    return anchors


def ref_coverage(length: int, size: int, anchors: list[int]) -> np.ndarray:
    cov = np.zeros(length, dtype=np.int64)
    for a in anchors:
        cov[a : a + size] += 1  # slicing clips at the scene edge
    return cov


@st.composite
def axis_params(draw: st.DrawFn) -> tuple[int, int, int]:
    length = draw(st.integers(1, 3000))
    size = draw(st.integers(1, 512))
    stride = draw(st.integers(1, size))
    return length, size, stride


PROPS = settings(max_examples=200, deadline=None)


# ---------------------------------------------------------------------------------------
# property tests
# ---------------------------------------------------------------------------------------


@PROPS
@given(axis_params())
def test_shift_covers_everything(params: tuple[int, int, int]) -> None:
    length, size, stride = params
    assume(size <= length)
    g = AxisGrid(length, size, stride, boundary="shift")
    anchors = g.anchors.tolist()
    assert anchors == ref_anchors(length, size, stride, "shift")
    assert np.all(np.diff(g.anchors) > 0)
    assert all(0 <= a <= length - size for a in anchors)
    assert anchors[0] == 0
    assert anchors[-1] == length - size  # last chip ends exactly at the edge
    cov = g.coverage()
    assert cov.shape == (length,)
    assert (cov > 0).all()
    np.testing.assert_array_equal(cov, ref_coverage(length, size, anchors))
    assert g.pad == 0
    assert g.n == len(anchors)


@PROPS
@given(axis_params())
def test_pad_covers_everything(params: tuple[int, int, int]) -> None:
    length, size, stride = params
    g = AxisGrid(length, size, stride, boundary="pad")
    anchors = g.anchors.tolist()
    assert anchors == ref_anchors(length, size, stride, "pad")
    assert np.all(np.diff(g.anchors) > 0)
    assert all(a % stride == 0 for a in anchors)
    assert anchors[0] == 0
    assert all(a < length for a in anchors)  # no chip lies entirely outside the scene
    assert g.pad == anchors[-1] + size - length
    assert g.pad >= 0
    assert g.pad < stride or anchors == [0]  # the last chip is the first to reach the edge
    cov = g.coverage()
    assert cov.shape == (length,)
    assert (cov > 0).all()
    np.testing.assert_array_equal(cov, ref_coverage(length, size, anchors))


@PROPS
@given(axis_params())
def test_drop_leaves_only_trailing_margin(params: tuple[int, int, int]) -> None:
    length, size, stride = params
    assume(size <= length)
    g = AxisGrid(length, size, stride, boundary="drop")
    anchors = g.anchors.tolist()
    assert anchors == ref_anchors(length, size, stride, "drop")
    assert np.all(np.diff(g.anchors) > 0)
    assert all(a % stride == 0 for a in anchors)
    assert all(a + size <= length for a in anchors)
    end = anchors[-1] + size
    assert length - end < stride  # no further regular chip would fit
    uncovered = np.flatnonzero(g.coverage() == 0)
    np.testing.assert_array_equal(uncovered, np.arange(end, length))
    assert g.pad == 0


@PROPS
@given(axis_params())
def test_raise_exactly_when_drop_leaves_margin(params: tuple[int, int, int]) -> None:
    length, size, stride = params
    assume(size <= length)
    drop = AxisGrid(length, size, stride, boundary="drop")
    margin = length - (int(drop.anchors[-1]) + size)
    if margin > 0:
        with pytest.raises(GridError, match="uncovered"):
            AxisGrid(length, size, stride, boundary="raise")
    else:
        g = AxisGrid(length, size, stride, boundary="raise")
        np.testing.assert_array_equal(g.anchors, drop.anchors)
        np.testing.assert_array_equal(g.anchors, AxisGrid(length, size, stride).anchors)
        assert (g.coverage() > 0).all()


@PROPS
@given(
    st.integers(1, 60),
    st.integers(1, 60),
    st.integers(1, 24),
    st.integers(1, 24),
    st.data(),
    st.sampled_from(["shift", "pad"]),
)
def test_chipgrid_coverage_2d(
    h: int, w: int, sy: int, sx: int, data: st.DataObject, boundary: str
) -> None:
    if boundary == "shift":
        assume(sy <= h and sx <= w)
    ty = data.draw(st.integers(1, sy))
    tx = data.draw(st.integers(1, sx))
    g = ChipGrid((h, w), size=(sy, sx), stride=(ty, tx), boundary=boundary)
    cov = g.coverage()
    assert cov.shape == (h, w)
    assert (cov > 0).all()
    # naive 2-D reference: paint every chip
    ref = np.zeros((h, w), dtype=np.int64)
    for r, c in g.anchors:
        ref[r : r + sy, c : c + sx] += 1
    np.testing.assert_array_equal(cov, ref)
    cy, cx = g.covered()
    assert cy.all()
    assert cx.all()
    assert g.n_chips == len({(int(r), int(c)) for r, c in g.anchors})  # no duplicates


# ---------------------------------------------------------------------------------------
# fixed examples
# ---------------------------------------------------------------------------------------


def test_docstring_examples() -> None:
    assert AxisGrid(1000, 256, 192).anchors.tolist() == [0, 192, 384, 576, 744]
    assert AxisGrid(1000, 256, 192, boundary="pad").anchors.tolist() == [0, 192, 384, 576, 768]
    assert AxisGrid(1000, 256, 192, boundary="pad").pad == 24
    assert AxisGrid(1000, 256, 192, boundary="drop").anchors.tolist() == [0, 192, 384, 576]


def test_exact_fit_adds_no_extra_chip() -> None:
    for boundary in BOUNDARIES:
        g = AxisGrid(1024, 256, 256, boundary=boundary)
        assert g.anchors.tolist() == [0, 256, 512, 768]
        assert g.pad == 0


def test_size_equals_length() -> None:
    for boundary in BOUNDARIES:
        g = AxisGrid(64, 64, 7, boundary=boundary)
        assert g.anchors.tolist() == [0]
        assert g.leading.tolist() == [True]
        assert g.trailing.tolist() == [True]


def test_anchors_read_only() -> None:
    g = AxisGrid(100, 10, 5)
    with pytest.raises(ValueError):
        g.anchors[0] = 3


def test_leading_trailing_flags() -> None:
    g = AxisGrid(1000, 256, 192)
    assert g.leading.tolist() == [True, False, False, False, False]
    assert g.trailing.tolist() == [False, False, False, False, True]
    p = AxisGrid(1000, 256, 192, boundary="pad")
    assert p.trailing.tolist() == [False, False, False, False, True]


def test_numpy_integer_arguments() -> None:
    g = AxisGrid(np.int64(1000), np.int32(256), np.int16(192))
    assert g.anchors.tolist() == [0, 192, 384, 576, 744]


def test_axisgrid_equality_ignores_anchors() -> None:
    assert AxisGrid(100, 10, 5) == AxisGrid(100, 10, 5)
    assert AxisGrid(100, 10, 5) != AxisGrid(100, 10, 5, boundary="pad")


# ---------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------


def test_error_hierarchy() -> None:
    assert issubclass(GridError, ParameterError)
    assert issubclass(GridError, PatchflowError)
    assert issubclass(GridError, ValueError)


@pytest.mark.parametrize("stride", [11, 20, 100])
def test_stride_larger_than_size_needs_allow_gaps(stride: int) -> None:
    with pytest.raises(GridError, match="allow_gaps") as info:
        AxisGrid(1000, 10, stride)
    assert isinstance(info.value, ValueError)
    with pytest.raises(GridError, match="allow_gaps"):
        ChipGrid((1000, 1000), size=10, stride=(5, stride))


@pytest.mark.parametrize(
    ("boundary", "expected"),
    [("shift", [0, 25, 50, 75, 90]), ("drop", [0, 25, 50, 75])],
)
def test_allow_gaps_leaves_gaps_uncovered(boundary: str, expected: list[int]) -> None:
    g = AxisGrid(100, 10, 25, boundary=boundary, allow_gaps=True)
    assert g.anchors.tolist() == expected
    cov = g.coverage()
    np.testing.assert_array_equal(cov, ref_coverage(100, 10, expected))
    assert (cov[10:25] == 0).all()  # the gap between chip 0 and chip 1
    assert (cov[35:50] == 0).all()
    assert (cov == 0).any()


def test_allow_gaps_raise_only_checks_trailing_margin() -> None:
    with pytest.raises(GridError, match="uncovered"):
        AxisGrid(100, 10, 25, boundary="raise", allow_gaps=True)
    g = AxisGrid(85, 10, 25, boundary="raise", allow_gaps=True)  # last chip ends at the edge
    assert g.anchors.tolist() == [0, 25, 50, 75]
    assert (g.coverage()[10:25] == 0).all()


def test_allow_gaps_pad_fine_when_last_chip_starts_inside() -> None:
    g = AxisGrid(85, 10, 25, boundary="pad", allow_gaps=True)
    assert g.anchors.tolist() == [0, 25, 50, 75]
    assert g.pad == 0
    np.testing.assert_array_equal(g.coverage(), ref_coverage(85, 10, [0, 25, 50, 75]))
    g = AxisGrid(80, 10, 25, boundary="pad", allow_gaps=True)
    assert g.anchors.tolist() == [0, 25, 50, 75]
    assert g.pad == 5
    np.testing.assert_array_equal(g.coverage(), ref_coverage(80, 10, [0, 25, 50, 75]))


@pytest.mark.parametrize(("length", "size", "stride"), [(11, 4, 6), (100, 10, 25), (10, 2, 20)])
def test_allow_gaps_pad_no_chip_outside_scene(length: int, size: int, stride: int) -> None:
    # regression: (100, 10, 25) used to plan a chip at 100, entirely past the edge
    g = AxisGrid(length, size, stride, boundary="pad", allow_gaps=True)
    assert all(int(a) < length for a in g.anchors)
    cov = g.coverage()
    np.testing.assert_array_equal(cov, ref_coverage(length, size, g.anchors.tolist()))


@pytest.mark.parametrize("size", [0, -1, -256])
def test_nonpositive_size(size: int) -> None:
    with pytest.raises(GridError, match="size") as info:
        AxisGrid(100, size, 1)
    assert isinstance(info.value, ValueError)
    with pytest.raises(GridError):
        ChipGrid((100, 100), size=(10, size), stride=1)


@pytest.mark.parametrize("stride", [0, -1, -5])
def test_nonpositive_stride(stride: int) -> None:
    with pytest.raises(GridError, match="stride") as info:
        AxisGrid(100, 10, stride)
    assert isinstance(info.value, ValueError)
    with pytest.raises(GridError):
        ChipGrid((100, 100), size=10, stride=(stride, 5))


@pytest.mark.parametrize("length", [0, -3])
def test_empty_scene(length: int) -> None:
    with pytest.raises(GridError, match="no pixels"):
        AxisGrid(length, 10, 5)
    with pytest.raises(GridError):
        ChipGrid((length, 100), size=10, stride=5)


@pytest.mark.parametrize("bad", [1.5, "10", None, True])
def test_non_int_arguments(bad: object) -> None:
    # a wrong type is a plain parameter mistake, not an unplannable grid
    for args in ((bad, 10, 5), (100, bad, 5), (100, 10, bad)):
        with pytest.raises(ParameterError, match="must be an int") as info:
            AxisGrid(*args)  # type: ignore[arg-type]
        assert not isinstance(info.value, GridError)


@pytest.mark.parametrize("boundary", ["shift", "drop", "raise"])
def test_chip_larger_than_scene(boundary: str) -> None:
    with pytest.raises(GridError, match="pad") as info:
        AxisGrid(100, 256, 192, boundary=boundary)
    assert isinstance(info.value, ValueError)
    with pytest.raises(GridError, match="pad"):
        ChipGrid((1000, 100), size=256, stride=192, boundary=boundary)


def test_pad_scene_smaller_than_chip() -> None:
    g = AxisGrid(100, 256, 192, boundary="pad")
    assert g.anchors.tolist() == [0]
    assert g.pad == 156
    assert (g.coverage() == 1).all()
    cg = ChipGrid((100, 37), size=256, stride=192, boundary="pad")
    assert cg.counts == (1, 1)
    assert cg.n_chips == 1
    assert cg.y.pad == 156
    assert cg.x.pad == 219
    assert (cg.coverage() == 1).all()


def test_unknown_boundary_lists_valid_names() -> None:
    with pytest.raises(GridError, match="unknown boundary") as info:
        AxisGrid(100, 10, 5, boundary="wrap")  # type: ignore[arg-type]
    message = str(info.value)
    for name in BOUNDARIES:
        assert name in message
    with pytest.raises(GridError, match="unknown boundary"):
        ChipGrid((100, 100), size=10, stride=5, boundary="reflect")  # type: ignore[arg-type]


def test_error_messages_name_the_axis() -> None:
    with pytest.raises(GridError, match="along x"):
        ChipGrid((1000, 100), size=256, stride=192)
    with pytest.raises(GridError, match="along y"):
        ChipGrid((1000, 1000), size=(10, 20), stride=(15, 5))


# ---------------------------------------------------------------------------------------
# ChipGrid
# ---------------------------------------------------------------------------------------


def test_chipgrid_docstring_example() -> None:
    g = ChipGrid((3935, 1599), 256, 192)
    assert g.counts == (21, 8)
    assert g.n_chips == 168
    assert bool((g.coverage() > 0).all())
    assert g.shape == (3935, 1599)
    assert g.size == (256, 256)
    assert g.stride == (192, 192)
    assert g.size_yx == (256, 256)
    assert g.stride_yx == (192, 192)


def test_chipgrid_per_axis_pairs() -> None:
    g = ChipGrid((1000, 600), size=(256, 128), stride=(192, 100))
    assert g.size_yx == (256, 128)
    assert g.stride_yx == (192, 100)
    assert g.y.size == 256
    assert g.x.size == 128
    assert g.y.axis == "y"
    assert g.x.axis == "x"
    assert g.y.anchors.tolist() == ref_anchors(1000, 256, 192, "shift")
    assert g.x.anchors.tolist() == ref_anchors(600, 128, 100, "shift")
    assert g.counts == (g.y.n, g.x.n) == (5, 6)
    assert g.n_chips == 30


def test_chipgrid_anchors_row_major() -> None:
    g = ChipGrid((1000, 600), size=(256, 128), stride=(192, 100))
    anchors = g.anchors
    assert anchors.shape == (g.n_chips, 2)
    assert np.issubdtype(anchors.dtype, np.integer)
    expected = [(r, c) for r in g.y.anchors.tolist() for c in g.x.anchors.tolist()]
    assert [tuple(row) for row in anchors.tolist()] == expected
    # row-major: the column index varies fastest
    assert anchors[0].tolist() == [0, 0]
    assert anchors[1].tolist() == [0, 100]
    assert anchors[g.x.n].tolist() == [192, 0]
    assert anchors[-1].tolist() == [1000 - 256, 600 - 128]


def test_chipgrid_accepts_list_and_numpy_shape() -> None:
    a = ChipGrid([300, 200], size=64, stride=32)  # type: ignore[arg-type]
    b = ChipGrid(np.array([300, 200]), size=np.int64(64), stride=[32, 32])  # type: ignore[arg-type]
    assert a.shape == b.shape == (300, 200)
    assert isinstance(a.shape[0], int)
    assert a.counts == b.counts
    assert a == b


def test_chipgrid_covered_drop() -> None:
    g = ChipGrid((100, 90), size=(30, 40), stride=(30, 40), boundary="drop")
    cy, cx = g.covered()
    assert cy.tolist() == [True] * 90 + [False] * 10
    assert cx.tolist() == [True] * 80 + [False] * 10
    cov = g.coverage()
    assert (cov[:90, :80] == 1).all()
    assert (cov[90:] == 0).all()
    assert (cov[:, 80:] == 0).all()


def test_chipgrid_bad_shape() -> None:
    with pytest.raises(ParameterError, match="shape"):
        ChipGrid((100, 100, 3), size=10, stride=5)  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="shape"):
        ChipGrid((100,), size=10, stride=5)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# pair()
# ---------------------------------------------------------------------------------------


def test_pair_normalises() -> None:
    assert pair(256, "size") == (256, 256)
    assert pair((256, 128), "size") == (256, 128)
    assert pair([3, 4], "size") == (3, 4)
    assert pair(np.int64(7), "size") == (7, 7)
    out = pair(np.array([5, 6]), "size")
    assert out == (5, 6)
    assert all(type(v) is int for v in out)


@pytest.mark.parametrize(
    "value",
    [True, False, (True, 3), (3, False), [np.bool_(True), 2]],
)
def test_pair_rejects_bools(value: object) -> None:
    with pytest.raises(ParameterError, match="size"):
        pair(value, "size")  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [(), (1,), (1, 2, 3), [4, 5, 6, 7]])
def test_pair_rejects_wrong_length(value: object) -> None:
    with pytest.raises(ParameterError, match="stride") as info:
        pair(value, "stride")  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    assert not isinstance(info.value, GridError)


@pytest.mark.parametrize("value", [1.5, None, "ab", (1.0, 2), ("1", "2"), object()])
def test_pair_rejects_non_ints(value: object) -> None:
    with pytest.raises(ParameterError, match="pair of ints") as info:
        pair(value, "size")  # type: ignore[arg-type]
    assert not isinstance(info.value, GridError)


# ---------------------------------------------------------------------------------------
# size / stride specs: int, (y, x) pair or {"y": …, "x": …} mapping (issue 15)
# ---------------------------------------------------------------------------------------

FORMS = "accepted: size=256, size=(256, 128) or size={'y': 256, 'x': 128}"


@pytest.mark.parametrize(
    ("value", "dims", "expected"),
    [
        ({"y": 256, "x": 128}, None, (256, 128)),
        ({"x": 128, "y": 256}, None, (256, 128)),  # key order does not matter
        ({"y": np.int32(7), "x": np.int64(9)}, None, (7, 9)),
        ({"lat": 64, "lon": 32}, ("lat", "lon"), (64, 32)),
        ({"lat": 64, "x": 32}, ("lat", "lon"), (64, 32)),  # y/x always work too
        ({"y": 5, "x": 6}, ("row", "col"), (5, 6)),
    ],
)
def test_pair_accepts_mappings(
    value: object, dims: tuple[str, str] | None, expected: object
) -> None:
    out = pair(value, "size", dims=dims)  # type: ignore[arg-type]
    assert out == expected
    assert all(type(v) is int for v in out)


@pytest.mark.parametrize(
    ("value", "dims", "match"),
    [
        ({"y": 1, "z": 2}, None, r"unknown key 'z'; the keys name the spatial axes: 'y' and 'x'"),
        ({"lat": 1, "lon": 2}, None, r"unknown key 'lat'"),  # dims unknown: only y/x
        ({"row": 1, "col": 2}, ("lat", "lon"), r"unknown key 'row'.*'y'/'lat' and 'x'/'lon'"),
        ({"y": 4}, None, r"does not give the x axis"),
        ({}, None, r"does not give the y and x axis"),
        ({"y": 4, "lat": 4, "x": 1}, ("lat", "lon"), r"gives the y axis twice"),
        ({"y": 4.0, "x": 4}, None, r"'y' must be an int, got 4.0"),
        ({"y": True, "x": 4}, None, r"'y' must be an int, got True"),
        ({"y": "4", "x": 4}, None, r"'y' must be an int"),
    ],
)
def test_pair_rejects_bad_mappings(value: object, dims: object, match: str) -> None:
    with pytest.raises(ParameterError, match=match) as info:
        pair(value, "size", dims=dims)  # type: ignore[arg-type]
    assert not isinstance(info.value, GridError)
    assert FORMS in str(info.value)  # every mistake shows what is accepted


def test_pair_error_names_the_raster_dims() -> None:
    with pytest.raises(ParameterError, match=r"or \{'lat': …, 'lon': …\}, the raster's own"):
        pair(1.5, "stride", dims=("lat", "lon"))  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0, -3, (4, 0), {"y": 4, "x": -1}])
def test_size_pair_rejects_non_positive(value: object) -> None:
    with pytest.raises(GridError, match=r"stride must be positive") as info:
        size_pair(value, "stride")  # type: ignore[arg-type]
    assert isinstance(info.value, ParameterError)
    assert "accepted: stride=256" in str(info.value)


def test_chipgrid_takes_every_form() -> None:
    forms = [((256, 128), (192, 100)), ({"y": 256, "x": 128}, {"x": 100, "y": 192})]
    grids = [ChipGrid((1000, 600), size=s, stride=t) for s, t in forms]
    assert grids[0] == grids[1]
    assert grids[1].size == (256, 128) and grids[1].stride == (192, 100)
    square = [ChipGrid((1000, 600), size=v, stride=w) for v, w in [
        (256, 192), ((256, 256), (192, 192)), ({"y": 256, "x": 256}, {"y": 192, "x": 192})
    ]]  # fmt: skip
    assert square[0] == square[1] == square[2]


def _scene_with_dims(y: str, x: str) -> object:
    from patchflow.io.synthetic import make_scene

    scene = make_scene((300, 260), seed=3, chunks=None)
    return scene.rename({"y": y, "x": x}).rio.set_spatial_dims(y_dim=y, x_dim=x)


SPEC_FORMS = [
    ((64, 48), (48, 40)),
    ({"y": 64, "x": 48}, {"y": 48, "x": 40}),
    ({"x": 48, "y": 64}, (48, 40)),
]


def test_apply_gives_identical_results_for_every_size_form() -> None:
    import patchflow

    scene = _scene_with_dims("y", "x")
    outs = [
        patchflow.apply(scene, lambda c: c[1:] - c[:1] * 0.5, size=s, stride=t)
        for s, t in SPEC_FORMS
    ]
    first = outs[0].values
    for out in outs[1:]:
        np.testing.assert_array_equal(out.values, first)
    square = [
        patchflow.apply(scene, lambda c: c * 2.0, size=s, stride=t).values
        for s, t in [(64, 48), ((64, 64), (48, 48)), ({"y": 64, "x": 64}, {"y": 48, "x": 48})]
    ]
    np.testing.assert_array_equal(square[0], square[1])
    np.testing.assert_array_equal(square[0], square[2])


def test_apply_takes_the_rasters_own_dim_names() -> None:
    import patchflow

    scene = _scene_with_dims("latitude", "longitude")
    own = patchflow.apply(
        scene, lambda c: c * 2.0, size={"latitude": 64, "longitude": 48}, stride=(48, 40)
    )
    plain = patchflow.apply(scene, lambda c: c * 2.0, size=(64, 48), stride=(48, 40))
    np.testing.assert_array_equal(own.values, plain.values)
    with pytest.raises(ParameterError, match=r"unknown key 'lat'.*'y'/'latitude'"):
        patchflow.apply(scene, lambda c: c, size={"lat": 64, "longitude": 48})


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"size": {"y": 64}}, ParameterError, r"size=\{'y': 64\} does not give the x axis"),
        ({"stride": {"y": 48, "z": 2}}, ParameterError, r"stride=.*unknown key 'z'"),
        ({"size": {"y": 64, "x": 0}}, GridError, r"size must be positive, got 0; accepted"),
        ({"stride": {"y": -1, "x": 8}}, GridError, r"stride must be positive, got -1"),
        ({"size": 64.0}, ParameterError, r"size must be an int or a \(y, x\) pair of ints"),
    ],
)
def test_apply_names_bad_size_specs(kwargs: dict[str, object], error: type, match: str) -> None:
    import patchflow

    with pytest.raises(error, match=match):
        patchflow.apply(_scene_with_dims("y", "x"), lambda c: c, **kwargs)  # type: ignore[arg-type]


def test_plan_grid_gives_identical_grids_for_every_size_form() -> None:
    import patchflow

    scene = _scene_with_dims("y", "x")
    layouts = [patchflow.plan_grid(scene, size=s, stride=t) for s, t in SPEC_FORMS]
    for layout in layouts[1:]:
        assert layout.grid == layouts[0].grid
        np.testing.assert_array_equal(layout.bounds, layouts[0].bounds)


def test_plan_grid_takes_the_rasters_own_dim_names() -> None:
    import patchflow

    scene = _scene_with_dims("latitude", "longitude")
    own = patchflow.plan_grid(scene, size={"latitude": 64, "longitude": 48}, stride=(48, 40))
    assert own.grid == patchflow.plan_grid(scene, size=(64, 48), stride=(48, 40)).grid


def test_window_bounds_rotated_grid_uses_all_corners() -> None:
    from affine import Affine

    from patchflow.plan.grid import window_bounds

    # 30° rotation: the true box of a chip is not spanned by two opposite corners
    t = Affine.translation(1000, 2000) * Affine.rotation(30) * Affine.scale(10, -10)
    b = window_bounds(t, [(0, 0)], (4, 6))[0]
    corners = np.array([t * (c, r) for c, r in [(0, 0), (6, 0), (0, 4), (6, 4)]])
    np.testing.assert_allclose(b[:4], [*corners.min(0), *corners.max(0)])
    np.testing.assert_allclose(b[4:], t * (3, 2))
