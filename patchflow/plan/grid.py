"""Chip grid geometry: where chips go on a scene. Pure numpy, no dask/xarray/zarr.

The grid is separable: a 2-D grid is the outer product of two 1-D :class:`AxisGrid`
objects (rows along ``y``, columns along ``x``), which keeps planning O(chips per axis)
instead of O(chips) and lets weight sums be computed per axis.

Boundary policies (what happens where ``(length - size)`` is not a multiple of ``stride``):

``"shift"`` (default)
    Regular anchors ``0, stride, 2*stride, ...``; if the last regular chip stops short of
    the scene edge, one more chip is added that ends exactly at the edge (its anchor is
    ``length - size``). Every pixel is covered and no chip reads outside the scene.
    A scene smaller than one chip is an error (use ``"pad"``), because a shifted chip
    would have to start before pixel 0.
``"pad"``
    Regular anchors until a chip reaches or passes the edge; that chip reads padded
    values past the edge. Padded pixels are outside the scene and carry zero weight.
    Works for scenes smaller than one chip.
``"drop"``
    Only chips that fit entirely inside the scene. The trailing margin
    ``[last_anchor + size, length)`` is left uncovered (it comes out as nodata/NaN).
``"raise"``
    Like ``"drop"`` but any uncovered margin is an error.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from patchflow.errors import GridError, ParameterError, _w
from patchflow.options import SizeSpec

__all__ = [
    "BOUNDARIES",
    "AxisGrid",
    "ChipGrid",
    "from_north_up",
    "north_up",
    "pair",
    "size_pair",
    "window_bounds",
    "world_to_pixels",
]

Boundary = Literal["shift", "pad", "drop", "raise"]
BOUNDARIES: tuple[str, ...] = ("shift", "pad", "drop", "raise")


def _forms(name: str, dims: tuple[Hashable, Hashable] | None) -> str:
    """The accepted spellings of a ``(y, x)`` parameter, for error messages."""
    own = ""
    if dims is not None and tuple(map(str, dims)) != ("y", "x"):
        own = f" (or {{{dims[0]!r}: …, {dims[1]!r}: …}}, the raster's own dim names)"
    return f"accepted: {name}=256, {name}=(256, 128) or {name}={{'y': 256, 'x': 128}}{own}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def pair(
    value: SizeSpec | list[int] | np.ndarray,
    name: str,
    *,
    dims: tuple[Hashable, Hashable] | None = None,
) -> tuple[int, int]:
    """Normalise an int, a ``(y, x)`` pair or a ``{"y": …, "x": …}`` mapping to two ints.

    Mapping keys are ``"y"`` and ``"x"``, or the raster's own spatial dim names when
    ``dims`` gives them (``{"lat": 256, "lon": 128}`` with ``dims=("lat", "lon")``); both
    axes must be given, each once.

    Parameters
    ----------
    value
        The parameter as the caller wrote it.
    name
        The parameter's name, for error messages.
    dims
        The ``(y, x)`` spatial dim names of the raster, if known.

    Raises
    ------
    ParameterError
        When ``value`` is none of these forms, or a mapping has unknown or missing keys
        (a plain parameter mistake; whether the values make a plannable grid is
        :class:`GridError`'s business, see :func:`size_pair`).

    Examples
    --------
    >>> pair(256, "size")
    (256, 256)
    >>> pair((256, 128), "size")
    (256, 128)
    >>> pair({"x": 128, "y": 256}, "size")
    (256, 128)
    >>> pair({"lat": 64, "lon": 32}, "stride", dims=("lat", "lon"))
    (64, 32)
    """
    wrong = f"{name} must be an int or a (y, x) pair of ints, got {value!r}; {_forms(name, dims)}"
    if isinstance(value, bool | np.bool_):
        raise ParameterError(wrong)
    if isinstance(value, int | np.integer):
        return int(value), int(value)
    if isinstance(value, Mapping):
        return _from_mapping(value, name, dims)
    if isinstance(value, str | bytes):
        raise ParameterError(wrong)
    try:
        items = tuple(value)
    except TypeError:
        raise ParameterError(wrong) from None
    if len(items) != 2 or not all(_is_int(v) for v in items):
        raise ParameterError(wrong)
    return int(items[0]), int(items[1])


def _from_mapping(
    value: Mapping[Any, Any], name: str, dims: tuple[Hashable, Hashable] | None
) -> tuple[int, int]:
    names: list[tuple[Hashable, ...]] = [("y",), ("x",)]
    if dims is not None:
        names = [
            tuple(dict.fromkeys((axis[0], dim))) for axis, dim in zip(names, dims, strict=True)
        ]
    found: list[int | None] = [None, None]
    for key, item in value.items():
        axis = next((k for k, keys in enumerate(names) if key in keys), None)
        if axis is None:
            valid = " and ".join("/".join(map(repr, keys)) for keys in names)
            raise ParameterError(
                f"{name}={dict(value)!r} has an unknown key {key!r}; the keys name the "
                f"spatial axes: {valid}; {_forms(name, dims)}"
            )
        if found[axis] is not None:
            raise ParameterError(
                f"{name}={dict(value)!r} gives the {names[axis][0]} axis twice "
                f"({' and '.join(map(repr, names[axis]))}); give it once; {_forms(name, dims)}"
            )
        if not _is_int(item):
            raise ParameterError(
                f"{name}={dict(value)!r}: {key!r} must be an int, got {item!r}; "
                f"{_forms(name, dims)}"
            )
        found[axis] = int(item)
    missing = [names[k][0] for k in (0, 1) if found[k] is None]
    if missing:
        raise ParameterError(
            f"{name}={dict(value)!r} does not give the {' and '.join(map(str, missing))} "
            f"axis; a mapping names both; {_forms(name, dims)}"
        )
    return found[0], found[1]  # type: ignore[return-value]


def size_pair(
    value: SizeSpec, name: str, *, dims: tuple[Hashable, Hashable] | None = None
) -> tuple[int, int]:
    """A chip ``size`` or ``stride`` as two positive ints: the one normaliser of a
    :data:`~patchflow.options.SizeSpec` (an int, a ``(y, x)`` pair or a mapping, see
    :func:`pair`).

    Raises
    ------
    ParameterError
        ``value`` is not one of the accepted forms.
    GridError
        A value is zero or negative (no chip grid has such chips).

    Examples
    --------
    >>> size_pair({"y": 256, "x": 128}, "size")
    (256, 128)
    >>> size_pair(0, "stride")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    patchflow.errors.GridError: stride must be positive, got 0; accepted: stride=256, ...
    """
    out = pair(value, name, dims=dims)
    bad = [v for v in out if v <= 0]
    if bad:
        raise GridError(f"{name} must be positive, got {bad[0]}; {_forms(name, dims)}")
    return out


@dataclass(frozen=True)
class AxisGrid:
    """Chip anchors along one axis.

    Parameters
    ----------
    length
        Number of pixels along the axis.
    size
        Chip length along the axis.
    stride
        Distance between consecutive regular anchors.
    boundary
        ``"shift"``, ``"pad"``, ``"drop"`` or ``"raise"`` (see module docstring).
    allow_gaps
        Permit ``stride > size`` (leaves uncovered gaps between chips).
    axis
        Name used in error messages.

    Raises
    ------
    ParameterError
        ``length``, ``size`` or ``stride`` is not an int.
    GridError
        The values make no plannable grid: not positive, ``stride > size`` without
        ``allow_gaps``, a chip larger than the scene (unless ``"pad"``), an unknown
        boundary, or (``"raise"``) an uncovered margin.

    Examples
    --------
    >>> AxisGrid(1000, 256, 192).anchors.tolist()
    [0, 192, 384, 576, 744]
    >>> AxisGrid(1000, 256, 192, boundary="pad").anchors.tolist()
    [0, 192, 384, 576, 768]
    """

    length: int
    size: int
    stride: int
    boundary: Boundary = "shift"
    allow_gaps: bool = False
    axis: str = "axis"
    anchors: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("length", "size", "stride"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or isinstance(value, bool):
                raise ParameterError(f"{name} along {self.axis} must be an int, got {value!r}")
        if self.length <= 0:
            raise GridError(f"the scene has no pixels along {self.axis} (length {self.length})")
        if self.size <= 0:
            raise GridError(f"size must be positive, got {self.size} along {self.axis}")
        if self.stride <= 0:
            raise GridError(f"stride must be positive, got {self.stride} along {self.axis}")
        if self.boundary not in BOUNDARIES:
            raise GridError(
                f"unknown boundary {self.boundary!r}; valid: {', '.join(map(repr, BOUNDARIES))}"
            )
        if self.stride > self.size and not self.allow_gaps:
            raise GridError(
                f"stride {self.stride} > size {self.size} along {self.axis} leaves "
                f"{self.stride - self.size}-pixel gaps between chips; use stride <= size, "
                "or pass allow_gaps=True if gaps (nodata) are intended"
            )
        object.__setattr__(self, "anchors", self._plan())
        self.anchors.setflags(write=False)

    def _plan(self) -> np.ndarray:
        length, size, stride = int(self.length), int(self.size), int(self.stride)
        if size > length and self.boundary != "pad":
            raise GridError(
                f"chip size {size} is larger than the scene ({length} pixels along "
                f"{self.axis}); use a smaller {_w('size')} or {_w('boundary_pad')} (chips "
                "read padded values)"
            )
        if self.boundary == "pad":
            # regular anchors until a chip reaches the edge; never one starting past it
            # (possible with allow_gaps, where the edge can fall into a gap)
            n = min(-(-max(length - size, 0) // stride) + 1, -(-length // stride))
            return np.arange(n, dtype=np.int64) * stride
        regular = np.arange(0, length - size + 1, stride, dtype=np.int64)
        end = int(regular[-1]) + size
        if end == length or self.boundary == "drop":
            return regular
        if self.boundary == "raise":
            raise GridError(
                f"chips of size {size} and stride {stride} end at {end}, not at the scene edge "
                f"({length} along {self.axis}); {length - end} pixels would be uncovered. "
                "Use boundary='shift', 'pad' or 'drop', or change size/stride"
            )
        return np.append(regular, np.int64(length - size))

    @property
    def n(self) -> int:
        """Number of chips along the axis."""
        return int(self.anchors.size)

    @property
    def pad(self) -> int:
        """Pixels the last chip reads past the scene edge (0 unless ``boundary='pad'``)."""
        return max(int(self.anchors[-1]) + self.size - self.length, 0)

    @property
    def leading(self) -> np.ndarray:
        """Boolean per chip: the chip starts at the scene's first pixel."""
        return np.asarray(self.anchors <= 0)

    @property
    def trailing(self) -> np.ndarray:
        """Boolean per chip: the chip reaches (or passes) the scene's last pixel."""
        return np.asarray(self.anchors + self.size >= self.length)

    def coverage(self) -> np.ndarray:
        """Number of chips covering each pixel (length ``length``), in-scene only."""
        count = np.zeros(max(self.length, int(self.anchors[-1])) + self.size + 1, dtype=np.int64)
        np.add.at(count, self.anchors, 1)
        np.add.at(count, self.anchors + self.size, -1)
        return np.cumsum(count)[: self.length]


@dataclass(frozen=True)
class ChipGrid:
    """A separable 2-D chip grid over a ``(height, width)`` scene.

    Parameters
    ----------
    shape
        ``(height, width)`` of the scene in pixels.
    size, stride
        Chip size and stride: an int, a ``(y, x)`` pair or a ``{"y": …, "x": …}``
        mapping (:data:`~patchflow.options.SizeSpec`); stored as ``(y, x)`` tuples.
    boundary
        Boundary policy, see the module docstring.
    allow_gaps
        Permit ``stride > size``.

    Raises
    ------
    ParameterError
        ``shape``, ``size`` or ``stride`` is not an int, a pair of ints or a y/x mapping.
    GridError
        As for :class:`AxisGrid`, naming the axis.

    Examples
    --------
    >>> g = ChipGrid((3935, 1599), size=256, stride=192)
    >>> g.counts, g.n_chips
    ((21, 8), 168)
    >>> bool((g.coverage() > 0).all())
    True
    """

    shape: tuple[int, int]
    size: SizeSpec = 256
    stride: SizeSpec = 192
    boundary: Boundary = "shift"
    allow_gaps: bool = False
    y: AxisGrid = field(init=False, repr=False, compare=False)
    x: AxisGrid = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        shape = pair(tuple(self.shape), "shape")  # type: ignore[arg-type]
        size = pair(self.size, "size")
        stride = pair(self.stride, "stride")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "stride", stride)
        for i, name in enumerate(("y", "x")):
            axis = AxisGrid(shape[i], size[i], stride[i], self.boundary, self.allow_gaps, axis=name)
            object.__setattr__(self, name, axis)

    @property
    def size_yx(self) -> tuple[int, int]:
        """Chip size as a ``(y, x)`` tuple."""
        return self.size  # type: ignore[return-value]

    @property
    def stride_yx(self) -> tuple[int, int]:
        """Chip stride as a ``(y, x)`` tuple."""
        return self.stride  # type: ignore[return-value]

    @property
    def counts(self) -> tuple[int, int]:
        """Chips along ``(y, x)``."""
        return self.y.n, self.x.n

    @property
    def n_chips(self) -> int:
        """Total number of chips."""
        return self.y.n * self.x.n

    @property
    def anchors(self) -> np.ndarray:
        """``(n_chips, 2)`` int array of chip ``(row, col)`` anchors, row-major."""
        rows, cols = np.meshgrid(self.y.anchors, self.x.anchors, indexing="ij")
        return np.stack([rows.ravel(), cols.ravel()], axis=1)

    def coverage(self) -> np.ndarray:
        """``(height, width)`` count of chips covering each pixel (small scenes only)."""
        return np.outer(self.y.coverage(), self.x.coverage())

    def covered(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-axis boolean coverage; pixel ``(i, j)`` is covered iff both are true."""
        return self.y.coverage() > 0, self.x.coverage() > 0


def window_bounds(transform: Any, anchors: Any, size: tuple[int, int]) -> np.ndarray:
    """``(n, 6)`` CRS ``xmin, ymin, xmax, ymax, x_center, y_center`` of pixel windows.

    ``anchors`` are ``(row, col)`` offsets, ``size`` the ``(h, w)`` of every window, and
    ``transform`` an affine ``(a, b, c, d, e, f)`` (an ``affine.Affine`` works). All four
    corners go through the transform, so rotated/sheared grids get true bounding boxes.
    The one home of pixel-window → CRS-bounds arithmetic.

    Examples
    --------
    >>> window_bounds((10.0, 0.0, 500.0, 0.0, -10.0, 900.0), [(0, 0), (2, 1)], (2, 3)).tolist()
    [[500.0, 880.0, 530.0, 900.0, 515.0, 890.0], [510.0, 860.0, 540.0, 880.0, 525.0, 870.0]]
    """
    a, b, c, d, e, f = (float(v) for v in tuple(transform)[:6])
    anc = np.asarray(anchors, dtype=np.float64).reshape(-1, 2)
    h, w = size
    r, col = anc[:, 0], anc[:, 1]
    cx = np.stack([col, col + w, col, col + w])
    cy = np.stack([r, r, r + h, r + h])
    xs = a * cx + b * cy + c
    ys = d * cx + e * cy + f
    mx, my = col + w / 2, r + h / 2
    return np.column_stack(
        [xs.min(0), ys.min(0), xs.max(0), ys.max(0), a * mx + b * my + c, d * mx + e * my + f]
    )


def world_to_pixels(
    xs: np.ndarray, ys: np.ndarray, transform: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Fractional ``(row, col)`` of world points (0 = top/left edge of the first pixel):
    the one home of CRS → pixel arithmetic (:func:`window_bounds` goes the other way).

    Examples
    --------
    >>> world_to_pixels(np.array([515.0]), np.array([885.0]), (10.0, 0.0, 500.0, 0.0, -10.0, 900.0))
    (array([1.5]), array([1.5]))
    """
    if hasattr(transform, "__invert__") and hasattr(transform, "a"):
        inv = ~transform
        a, b, c, d, e, f = inv.a, inv.b, inv.c, inv.d, inv.e, inv.f
    else:
        try:
            ta, tb, tc, td, te, tf = (float(v) for v in tuple(transform)[:6])
        except (TypeError, ValueError):
            raise ParameterError(
                f"transform must be an affine transform, got {transform!r}"
            ) from None
        det = ta * te - tb * td
        if det == 0:
            raise ParameterError("the transform is singular")
        a, b, d, e = te / det, -tb / det, -td / det, ta / det
        c, f = -(a * tc + b * tf), -(d * tc + e * tf)
    cols = a * xs + b * ys + c
    rows = d * xs + e * ys + f
    return rows, cols


def north_up(transform: Any, shape: tuple[int, int]) -> tuple[Any, bool, bool]:
    """``(transform, flip_rows, flip_cols)``: the transform of the same grid read north-up
    (rows running south, columns east) and whether the array runs the other way.

    Points are placed on pixels in this frame so that a point on a pixel edge lands in the
    pixel GDAL gives it (each pixel owns its top and left edges; ``floor`` of the north-up
    fractional row/col) whichever way the array's y and x coordinates run; map the
    resulting indices back with :func:`from_north_up`. A rotated or sheared transform is
    returned as it is (no flips).

    Examples
    --------
    >>> north_up((10.0, 0.0, 500.0, 0.0, 10.0, 800.0), (10, 20))
    ((10.0, 0.0, 500.0, 0.0, -10.0, 900.0), True, False)
    """
    a, b, c, d, e, f = (float(v) for v in tuple(transform)[:6])
    flip_rows = b == 0 and d == 0 and e > 0
    flip_cols = b == 0 and d == 0 and a < 0
    if not (flip_rows or flip_cols):
        return transform, False, False
    if flip_rows:  # the first row of the north-up grid is the array's last
        e, f = -e, f + e * shape[0]
    if flip_cols:
        a, c = -a, c + a * shape[1]
    if hasattr(transform, "a") and hasattr(transform, "__invert__"):
        # an Affine stays one: world_to_pixels then inverts it as rasterio does
        return type(transform)(a, b, c, d, e, f), flip_rows, flip_cols
    return (a, b, c, d, e, f), flip_rows, flip_cols


def from_north_up(index: Any, length: int, flip: bool, size: int = 1) -> Any:
    """Array index of the run of ``size`` pixels that starts at ``index`` along an axis of
    ``length`` pixels in the :func:`north_up` frame (unchanged unless ``flip``).

    Examples
    --------
    >>> from_north_up(np.array([0, 3]), 10, True).tolist(), from_north_up(2, 10, True, size=4)
    ([9, 6], 4)
    """
    return length - size - index if flip else index
