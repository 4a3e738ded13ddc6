"""Seeded training augmentations of chips: flips, 90° rotations, band dropout, brightness.

Each augmentation is an :class:`~patchflow.ops.Operator` (batched, composable with ``|``,
with a config that round-trips through JSON) whose random draw for a chip depends only on
``(seed, the augmentation's kind, epoch, the chip's identity)`` — never on the chip's
position in a batch — so the same seed gives the same augmented chips whatever the batch
size, the order of the chips, the number of workers or the process they run in.

Chip identity
-------------
``chip_ids=`` (keyword of every call, and of :func:`augment`): one id per chip — an int,
a row of ints (the ``(row, col)`` anchor of a :func:`patchflow.sample` chip is the natural
one), or a string. Without it, a chip's identity is a hash of its content (its bytes,
shape and dtype): stable wherever the chip is read, but identical chips (a blank chip
twice) get identical draws, and in a pipeline each step sees the content the step before
left. Use anchors for training chips; the content hash is what a torch dataset's
``transform`` (which sees one chip and no id) gets through :class:`AugmentTransform`.
``epoch=`` changes every draw, so each epoch sees other augmentations of the same chips.

Two augmentations of the same kind and seed in one pipeline draw the same numbers (two
``Flip(seed=0)`` undo each other): give each its own seed.

Not for stitching
-----------------
Flips and rotations move pixels, and dropout and jitter change values chip by chip, so
stitching augmented chips into a map gives wrong pixels. These operators are for training
chips (:func:`patchflow.sample`, torch datasets); :func:`check_stitchable` raises
:class:`~patchflow.errors.AugmentationError` for an operator holding one, and is what
``patchflow.apply``/``run`` call while planning.

Examples
--------
>>> import numpy as np
>>> chips = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
>>> aug = Flip(axis="both", seed=1) | Rot90(p=0.5, seed=2) | BrightnessJitter(0.1, seed=3)
>>> out, _ = augment(aug, chips, chip_ids=[[0, 0], [0, 64]])  # ids: (row, col) anchors
>>> out.shape, out.dtype.name
((2, 3, 4, 4), 'float32')
>>> one, _ = augment(aug, chips[1:], chip_ids=[[0, 64]])  # same chip, other batch
>>> bool((one[0] == out[1]).all())
True
>>> bool((aug(chips)[1] == aug(chips[::-1])[0]).all())  # no ids: content is the identity
True
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, Literal, get_args

import numpy as np

from patchflow.errors import AugmentationError, DimensionError, ParameterError
from patchflow.ops.base import Imported, Operator, Sequential, Spec, _float_dtype, register

__all__ = [
    "AUGMENT_AXES",
    "AugmentTransform",
    "Augmentation",
    "BandDropout",
    "BrightnessJitter",
    "Flip",
    "Rot90",
    "augment",
    "check_stitchable",
    "chip_keys",
]

AugmentAxis = Literal["y", "x", "both"]
#: the axes :class:`Flip` can flip
AUGMENT_AXES: tuple[str, ...] = get_args(AugmentAxis)
ChipIds = Sequence[Any] | np.ndarray | None

# --------------------------------------------------------------------------- draws


def chip_keys(chips: np.ndarray, chip_ids: ChipIds = None) -> list[bytes]:
    """One identity key per chip: from ``chip_ids`` if given, else from the chip's bytes.

    ``chip_ids`` holds one entry per chip: ints, rows of ints (anchors) or strings.

    Raises
    ------
    ParameterError
        ``chip_ids`` does not have one entry per chip, or holds other values.

    Examples
    --------
    >>> chips = np.zeros((2, 1, 4, 4))
    >>> a, b = chip_keys(chips)
    >>> a == b, chip_keys(chips, [[0, 0], [0, 4]])[0] != chip_keys(chips, [[0, 4], [0, 0]])[0]
    (True, True)
    """
    n = len(chips)
    if chip_ids is None:
        keys = []
        for chip in chips:
            chip = np.ascontiguousarray(chip)
            digest = hashlib.blake2b(digest_size=32)
            digest.update(f"content|{chip.dtype.str}|{chip.shape}|".encode())
            digest.update(chip.tobytes())
            keys.append(digest.digest())
        return keys
    ids = np.asarray(chip_ids)
    if ids.ndim == 0 or len(ids) != n:
        raise ParameterError(
            f"chip_ids needs one id per chip ({n} chips), got {np.shape(chip_ids)}; give ints, "
            "(row, col) anchors or strings"
        )
    if ids.dtype.kind in "iu":
        rows = ids.astype(np.int64).reshape(n, -1)
        return [b"ids|" + row.astype("<i8").tobytes() for row in rows]
    if ids.dtype.kind in "UO" and ids.ndim == 1 and all(isinstance(v, str) for v in ids.tolist()):
        return [b"str|" + str(v).encode() for v in ids.tolist()]
    raise ParameterError(
        f"chip_ids must be ints, rows of ints (e.g. (row, col) anchors) or strings, got "
        f"{ids.dtype} values of shape {ids.shape}"
    )


def _uniforms(seed: int, kind: str, epoch: int, key: bytes, count: int) -> np.ndarray:
    """``count`` uniforms in [0, 1) that are a pure function of the arguments (BLAKE2b,
    so they are the same on every platform and numpy version)."""
    head = struct.pack("<qq", seed, epoch) + kind.encode() + b"|" + key
    words: list[int] = []
    block = 0
    while len(words) < count:
        digest = hashlib.blake2b(head + struct.pack("<q", block), digest_size=64).digest()
        words.extend(struct.unpack("<8Q", digest))
        block += 1
    # the top 53 bits of each word: exactly representable doubles in [0, 1)
    return np.array([(w >> 11) / float(1 << 53) for w in words[:count]])


def _probability(p: Any) -> float:
    value = float(p)
    if not 0.0 <= value <= 1.0:
        raise ParameterError(f"p must be a probability in [0, 1], got {p!r}")
    return value


def _seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ParameterError(f"seed must be an int, got {seed!r}")
    if not -(2**63) <= int(seed) < 2**63:
        raise ParameterError(f"seed must fit in 64 bits, got {seed!r}")
    return int(seed)


# --------------------------------------------------------------------------- operators


class Augmentation(Operator):
    """Base of the seeded augmentations: per-chip draws keyed by chip identity.

    Subclasses say how many uniforms a chip needs (:meth:`_draws`) and transform one chip
    (and its label) with them (:meth:`_one`).
    """

    #: moves pixels or changes values chip by chip: refused where chips are stitched
    stitchable: ClassVar[bool] = False
    #: the draw moves label pixels too (flips, rotations); value changes leave labels
    _geometric: ClassVar[bool] = False

    p: float
    seed: int

    def _draws(self, chips: np.ndarray) -> int:
        raise NotImplementedError

    def _one(
        self, chip: np.ndarray, label: np.ndarray | None, u: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    def _check(self, chips: np.ndarray) -> None:
        """Refuse chips this augmentation cannot transform (before any draw)."""

    def augment(
        self,
        chips: np.ndarray,
        *,
        labels: np.ndarray | None = None,
        chip_ids: ChipIds = None,
        epoch: int = 0,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Augmented ``(chips, labels)``: labels get the same flips and rotations.

        Parameters
        ----------
        chips
            ``(n, *lead, h, w)``.
        labels
            ``(n, h, w)`` or ``(n, *label_lead, h, w)``, or ``None``.
        chip_ids
            One identity per chip (see the module docs); default: the chip's content.
        epoch
            Changes every draw (a new augmentation of the same chips per epoch).

        Raises
        ------
        DimensionError
            ``chips`` is not a batch ``(n, …, h, w)``, or ``labels`` do not match it.
        AugmentationError
            Chips this augmentation cannot transform (``Rot90`` on non-square chips).
        """
        x = np.asarray(chips)
        if x.ndim < 3:
            raise DimensionError(
                f"{self!r} takes a batch of chips (n, bands, h, w), got shape {x.shape}"
            )
        lab = None if labels is None else np.asarray(labels)
        if lab is not None and (
            lab.ndim < 3 or lab.shape[0] != x.shape[0] or lab.shape[-2:] != x.shape[-2:]
        ):
            raise DimensionError(
                f"labels {lab.shape} do not match the chips {x.shape}: need (n, …, h, w) "
                "with the chips' n, h and w"
            )
        self._check(x)
        keys = chip_keys(x, chip_ids)
        count = self._draws(x)
        kind = type(self).__name__
        outs, labs = [], []
        for k, key in enumerate(keys):
            u = _uniforms(self.seed, kind, int(epoch), key, count)
            out, out_lab = self._one(x[k], None if lab is None else lab[k], u)
            outs.append(out)
            labs.append(out_lab)
        if not outs:
            empty = x.astype(self._out_dtype(x.dtype), copy=True)
            return empty, lab
        stacked = np.stack(outs)
        return stacked, (None if lab is None else np.stack(labs))  # type: ignore[arg-type]

    def __call__(
        self, chips: np.ndarray, *, chip_ids: ChipIds = None, epoch: int = 0
    ) -> np.ndarray:
        return self.augment(chips, chip_ids=chip_ids, epoch=epoch)[0]

    def _out_dtype(self, dtype: np.dtype) -> np.dtype:
        return np.dtype(dtype)

    def output_spec(self, lead: tuple[int, ...], dtype: np.dtype) -> Spec | None:
        return lead, self._out_dtype(dtype)

    def output_band_names(self, names: Sequence[str]) -> list[str] | None:
        return list(names)


@register
class Flip(Augmentation):
    """Flip chips (and labels) along y, x or each of both, each with probability ``p``.

    Parameters
    ----------
    axis
        ``"y"`` (up–down, ``np.flip(chip, -2)``), ``"x"`` (left–right,
        ``np.flip(chip, -1)``) or ``"both"``: y and x each flipped independently with
        probability ``p`` (so all four of none, y, x, both occur).
    p
        Probability of each flip.
    seed
        Seeds the draws (see the module docs for chip identity).

    Examples
    --------
    >>> chips = np.arange(4.0).reshape(1, 1, 2, 2)
    >>> Flip(axis="x", p=1.0)(chips)[0, 0].tolist()
    [[1.0, 0.0], [3.0, 2.0]]
    """

    _geometric = True
    _keeps_values = True

    def __init__(self, axis: AugmentAxis = "y", *, p: float = 0.5, seed: int = 0) -> None:
        if axis not in AUGMENT_AXES:
            raise ParameterError(f"axis must be one of {', '.join(AUGMENT_AXES)}, got {axis!r}")
        self.axis: AugmentAxis = axis
        self.p = _probability(p)
        self.seed = _seed(seed)

    def _draws(self, chips: np.ndarray) -> int:
        return 2  # [0] decides y, [1] decides x: "both" flips y exactly as "y" does

    def flips(self, u: np.ndarray) -> tuple[bool, bool]:
        """``(flip y, flip x)`` for a chip's draws."""
        return (
            self.axis in ("y", "both") and bool(u[0] < self.p),
            self.axis in ("x", "both") and bool(u[1] < self.p),
        )

    def _one(
        self, chip: np.ndarray, label: np.ndarray | None, u: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None]:
        fy, fx = self.flips(u)
        axes = tuple(a for a, on in ((-2, fy), (-1, fx)) if on)
        if not axes:
            return chip, label
        return np.flip(chip, axes), None if label is None else np.flip(label, axes)

    def _params(self) -> dict[str, Any]:
        return {"axis": self.axis, "p": self.p, "seed": self.seed}


@register
class Rot90(Augmentation):
    """Rotate square chips (and labels) by 90°, 180° or 270°, with probability ``p``.

    With probability ``p`` a chip is rotated ``k`` quarter turns, ``k`` drawn uniformly
    from 1, 2, 3, as ``np.rot90(chip, k, axes=(-2, -1))`` (from y towards x).

    Parameters
    ----------
    p
        Probability of a rotation.
    seed
        Seeds the draws.

    Raises
    ------
    AugmentationError
        On non-square chips (a quarter turn would change their shape), whatever the draw.

    Examples
    --------
    >>> chips = np.arange(4.0).reshape(1, 1, 2, 2)
    >>> op = Rot90(p=1.0, seed=0)
    >>> bool((op(chips)[0] == np.rot90(chips[0], op.turns(chips)[0], axes=(-2, -1))).all())
    True
    """

    _geometric = True
    _keeps_values = True

    def __init__(self, p: float = 0.5, *, seed: int = 0) -> None:
        self.p = _probability(p)
        self.seed = _seed(seed)

    def _check(self, chips: np.ndarray) -> None:
        h, w = chips.shape[-2:]
        if h != w:
            raise AugmentationError(
                f"{self!r} rotates square chips only; these are {h}×{w} (a quarter turn "
                f"would make them {w}×{h}); sample square chips, or use Flip"
            )

    def _draws(self, chips: np.ndarray) -> int:
        return 2

    def _k(self, u: np.ndarray) -> int:
        return 1 + min(2, int(u[1] * 3)) if u[0] < self.p else 0

    def turns(self, chips: np.ndarray, *, chip_ids: ChipIds = None, epoch: int = 0) -> list[int]:
        """The quarter turns each chip gets (0 = none), without rotating anything."""
        x = np.asarray(chips)
        return [
            self._k(_uniforms(self.seed, type(self).__name__, int(epoch), key, 2))
            for key in chip_keys(x, chip_ids)
        ]

    def _one(
        self, chip: np.ndarray, label: np.ndarray | None, u: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None]:
        k = self._k(u)
        if k == 0:
            return chip, label
        rotated = np.rot90(chip, k, axes=(-2, -1))
        return rotated, None if label is None else np.rot90(label, k, axes=(-2, -1))

    def _params(self) -> dict[str, Any]:
        return {"p": self.p, "seed": self.seed}


@register
class BandDropout(Augmentation):
    """Replace whole bands of a chip by ``fill``, each band with probability ``p``.

    Bands are the first non-spatial axis of a chip (axis 1 of a batch). Each band is
    dropped independently, so with ``p`` near 1 every band of a chip may be dropped.
    Labels are left as they are.

    Parameters
    ----------
    p
        Probability that a band is dropped.
    seed
        Seeds the draws.
    fill
        The dropped band's value, cast to the chips' dtype (it must be representable:
        NaN or a fraction on integer chips raises :class:`ParameterError`).

    Examples
    --------
    >>> chips = np.ones((1, 3, 2, 2), np.float32)
    >>> BandDropout(p=1.0, fill=-1.0)(chips)[0, :, 0, 0].tolist()
    [-1.0, -1.0, -1.0]
    """

    def __init__(self, p: float = 0.1, *, seed: int = 0, fill: float = 0.0) -> None:
        self.p = _probability(p)
        self.seed = _seed(seed)
        self.fill = float(fill)

    def _check(self, chips: np.ndarray) -> None:
        if chips.ndim < 4:
            raise DimensionError(
                f"{self!r} needs chips with a band axis (n, bands, h, w), got {chips.shape}"
            )
        self._fill_value(chips.dtype)

    def _fill_value(self, dtype: np.dtype) -> Any:
        if dtype.kind in "fc":
            return dtype.type(self.fill)
        if dtype.kind == "b":
            if self.fill not in (0.0, 1.0):
                raise ParameterError(f"{self!r}: fill must be 0 or 1 for boolean chips")
            return bool(self.fill)
        info = np.iinfo(dtype)
        if not (math.isfinite(self.fill) and self.fill.is_integer()) or not (
            info.min <= self.fill <= info.max
        ):
            raise ParameterError(
                f"{self!r}: fill={self.fill!r} is not a {dtype} value (a whole number in "
                f"[{info.min}, {info.max}]); pick one, or cast the chips to float first"
            )
        return dtype.type(int(self.fill))

    def _draws(self, chips: np.ndarray) -> int:
        return int(chips.shape[1])

    def dropped(self, u: np.ndarray) -> np.ndarray:
        """The bands a chip's draws drop (a boolean per band)."""
        return np.asarray(u < self.p)

    def _one(
        self, chip: np.ndarray, label: np.ndarray | None, u: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None]:
        drop = self.dropped(u)
        if not drop.any():
            return chip, label
        out = chip.copy()
        out[drop] = self._fill_value(chip.dtype)
        return out, label

    def _params(self) -> dict[str, Any]:
        return {"p": self.p, "seed": self.seed, "fill": self.fill}


@register
class BrightnessJitter(Augmentation):
    """Multiply each chip by a random factor in ``[1 - scale, 1 + scale]``.

    One factor per chip (all bands and pixels), drawn uniformly; with probability
    ``1 - p`` the factor is 1. The result is floating (at least float32: integer chips are
    not rounded back). NaN stays NaN. Labels are left as they are.

    Parameters
    ----------
    scale
        Half-width of the factor's range, in ``[0, 1)``.
    p
        Probability that a chip is jittered at all.
    seed
        Seeds the draws.

    Examples
    --------
    >>> chips = np.full((2, 1, 2, 2), 100, np.uint16)
    >>> out = BrightnessJitter(0.2, seed=4)(chips, chip_ids=[0, 1])
    >>> out.dtype.name, bool(((out >= 80) & (out <= 120)).all())
    ('float32', True)
    """

    def __init__(self, scale: float = 0.1, *, p: float = 1.0, seed: int = 0) -> None:
        value = float(scale)
        if not 0.0 <= value < 1.0:
            raise ParameterError(f"scale must be in [0, 1) (a factor 1 ± scale), got {scale!r}")
        # stored apart: Operator.scale is the spatial scale the engine reads (1.0 here)
        self.jitter = value
        self.p = _probability(p)
        self.seed = _seed(seed)

    def _draws(self, chips: np.ndarray) -> int:
        return 2

    def factor(self, u: np.ndarray) -> float:
        """The factor a chip's draws give."""
        return 1.0 + self.jitter * (2.0 * float(u[1]) - 1.0) if u[0] < self.p else 1.0

    def _out_dtype(self, dtype: np.dtype) -> np.dtype:
        return _float_dtype(dtype)

    def _one(
        self, chip: np.ndarray, label: np.ndarray | None, u: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None]:
        dtype = self._out_dtype(chip.dtype)
        return chip.astype(dtype) * dtype.type(self.factor(u)), label

    def _params(self) -> dict[str, Any]:
        return {"scale": self.jitter, "p": self.p, "seed": self.seed}


# --------------------------------------------------------------------------- pipelines


def _steps(op: Any) -> list[Any]:
    return list(op.ops) if isinstance(op, Sequential) else [op]


def augment(
    op: Any,
    chips: np.ndarray,
    *,
    labels: np.ndarray | None = None,
    chip_ids: ChipIds = None,
    epoch: int = 0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Run ``op`` (an augmentation, or a pipeline holding some) on chips and their labels.

    Augmentations get ``labels``, ``chip_ids`` and ``epoch`` (flips and rotations move
    label pixels with the chip's); other steps (e.g. ``DNToReflectance``) see the chips
    only. With ``chip_ids`` every step draws from the same chip identity, whatever the
    steps before did to the chip.

    Examples
    --------
    >>> from patchflow.ops import DNToReflectance
    >>> chips = np.arange(8, dtype=np.uint16).reshape(2, 1, 2, 2)
    >>> labels = np.arange(8).reshape(2, 2, 2)
    >>> pipe = DNToReflectance(scale=1.0) | Flip(axis="x", p=1.0)
    >>> x, y = augment(pipe, chips, labels=labels, chip_ids=[7, 8])
    >>> x[0, 0].tolist(), y[0].tolist()
    ([[1.0, 0.0], [3.0, 2.0]], [[1, 0], [3, 2]])
    """
    x = np.asarray(chips)
    lab = None if labels is None else np.asarray(labels)
    for step in _steps(op):
        if isinstance(step, Augmentation):
            x, lab = step.augment(x, labels=lab, chip_ids=chip_ids, epoch=epoch)
        else:
            x = np.asarray(step(x))
    return x, lab


class AugmentTransform:
    """``f(image, label) -> (image, label)`` for a torch dataset's ``transform=``.

    Wraps an augmentation (or a pipeline, see :func:`augment`) for
    :class:`~patchflow.sampling.torch_data.ChipStoreDataset` and
    :class:`~patchflow.sampling.torch_data.LazyChipDataset`, which hand it one numpy chip
    ``(bands, h, w)`` and its label ``(h, w)`` (or ``None``). The dataset gives no chip id,
    so the chip's content is its identity (see the module docs). Picklable, for
    ``DataLoader(num_workers>0)``.

    Examples
    --------
    >>> t = AugmentTransform(Flip(axis="x", p=1.0))
    >>> image, label = t(np.arange(4.0).reshape(1, 2, 2), np.arange(4).reshape(2, 2))
    >>> image[0].tolist(), label.tolist()
    ([[1.0, 0.0], [3.0, 2.0]], [[1, 0], [3, 2]])
    """

    def __init__(self, op: Any, *, epoch: int = 0) -> None:
        if not isinstance(op, Operator):
            raise ParameterError(f"AugmentTransform needs an operator, got {type(op).__name__}")
        self.op = op
        self.epoch = int(epoch)

    def __call__(
        self, image: np.ndarray, label: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        lab = None if label is None else np.asarray(label)[None]
        x, out_lab = augment(self.op, np.asarray(image)[None], labels=lab, epoch=self.epoch)
        return np.ascontiguousarray(x[0]), (
            None if out_lab is None else np.ascontiguousarray(out_lab[0])
        )

    def __repr__(self) -> str:
        return f"AugmentTransform({self.op!r}, epoch={self.epoch})"


def _held(op: Any) -> Iterable[Any]:
    """The operators ``op`` holds (pipeline steps, branches, what an import names)."""
    if isinstance(op, Imported):
        yield op.resolve()
        return
    if isinstance(op, Operator):
        params = op._params()
        stack: list[Any] = list(params.values())
        while stack:
            value = stack.pop()
            if isinstance(value, Operator):
                yield value
            elif isinstance(value, list | tuple):
                stack.extend(value)
            elif isinstance(value, dict):
                stack.extend(value.values())


def check_stitchable(op: Any) -> None:
    """Raise :class:`AugmentationError` if ``op`` is or holds a training augmentation.

    ``patchflow.apply``/``run`` stitch chip outputs back into the scene's grid: a flipped
    or rotated chip puts its pixels in the wrong place, dropout and jitter give each chip
    of a pixel another value. Augment training chips (:func:`patchflow.sample`, torch
    datasets) instead; for test-time augmentation that undoes itself, use
    :class:`~patchflow.ops.TTA`.

    Examples
    --------
    >>> from patchflow.ops import NDVI
    >>> check_stitchable(NDVI(red=0, nir=1))
    >>> check_stitchable(NDVI(red=0, nir=1) | Flip())
    Traceback (most recent call last):
    ...
    patchflow.errors.AugmentationError: Flip(axis='y', p=0.5, seed=0) is a training \
augmentation: it moves pixels or changes values chip by chip, so stitching its chips into a \
map gives wrong pixels; augment training chips (patchflow.sample, torch datasets) instead, \
and for test-time augmentation use patchflow.ops.TTA
    """
    seen: set[int] = set()
    todo = [op]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if getattr(current, "stitchable", True) is False:
            raise AugmentationError(
                f"{current!r} is a training augmentation: it moves pixels or changes values "
                "chip by chip, so stitching its chips into a map gives wrong pixels; augment "
                "training chips (patchflow.sample, torch datasets) instead, and for "
                "test-time augmentation use patchflow.ops.TTA"
            )
        todo.extend(_held(current))
