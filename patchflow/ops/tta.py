"""Test-time augmentation: run an operator on flipped/rotated chips and average the
results mapped back to the original orientation.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from patchflow.errors import ConfigError, ParameterError
from patchflow.ops.base import (
    Operator,
    Spec,
    _float_dtype,
    as_operator,
    from_config,
    register,
)

# --------------------------------------------------------------------------- TTA


def _rot(k: int) -> Callable[[np.ndarray], np.ndarray]:
    def f(x: np.ndarray) -> np.ndarray:
        return np.rot90(x, k, axes=(-2, -1))

    return f


def _identity(x: np.ndarray) -> np.ndarray:
    return x


def _flip_y(x: np.ndarray) -> np.ndarray:
    return x[..., ::-1, :]


def _flip_x(x: np.ndarray) -> np.ndarray:
    return x[..., :, ::-1]


def _rot180(x: np.ndarray) -> np.ndarray:
    return x[..., ::-1, ::-1]


def _transpose(x: np.ndarray) -> np.ndarray:
    return np.swapaxes(x, -2, -1)


def _transverse(x: np.ndarray) -> np.ndarray:
    return np.swapaxes(x[..., ::-1, ::-1], -2, -1)


#: name → (forward, inverse), both acting on the last two (spatial) axes
TTA_TRANSFORMS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], ...]] = {
    "identity": (_identity, _identity),
    "rot90": (_rot(1), _rot(-1)),
    "rot180": (_rot180, _rot180),
    "rot270": (_rot(-1), _rot(1)),
    "flip_y": (_flip_y, _flip_y),
    "flip_x": (_flip_x, _flip_x),
    "transpose": (_transpose, _transpose),
    "transverse": (_transverse, _transverse),
}
_SQUARE = frozenset({"rot90", "rot270", "transpose", "transverse"})
#: named subsets of :data:`TTA_TRANSFORMS`
TTA_PRESETS: dict[str, tuple[str, ...]] = {
    "d4": tuple(TTA_TRANSFORMS),
    "flips": ("identity", "flip_y", "flip_x", "rot180"),
    "rot90": ("identity", "rot90", "rot180", "rot270"),
}


@register
class TTA(Operator):
    """Test-time augmentation: the mean of ``op`` over flips/rotations of each chip.

    Each transform is applied to the chips' two spatial axes, ``op`` runs on the
    transformed batch, the transform is inverted on its output, and the results are
    averaged (in float64, returned as float32 or wider). Non-spatial dims are untouched.

    Parameters
    ----------
    op
        Operator (or callable, wrapped with :func:`as_operator`).
    transforms
        ``"d4"`` (all 8 symmetries of the square), ``"flips"`` (identity, flip_y, flip_x,
        rot180), ``"rot90"`` (the 4 rotations), or a list of names from
        :data:`TTA_TRANSFORMS`. Rotations and transposes need square chips.

    Examples
    --------
    >>> import numpy as np
    >>> from patchflow.ops import Lambda
    >>> tta = TTA(Lambda(lambda c: c[..., :1, :] + 0 * c, batched=True), "flips")
    >>> tta(np.arange(4.0).reshape(1, 1, 2, 2))[0, 0].tolist()  # rows 0 and 1 averaged
    [[1.0, 2.0], [1.0, 2.0]]
    """

    def __init__(self, op: Any, transforms: str | Sequence[str] = "d4") -> None:
        self.op = as_operator(op)
        if isinstance(transforms, str):
            if transforms not in TTA_PRESETS:
                raise ParameterError(
                    f"unknown TTA preset {transforms!r}; presets: {', '.join(TTA_PRESETS)} "
                    f"(or a list of transform names: {', '.join(TTA_TRANSFORMS)})"
                )
            names = TTA_PRESETS[transforms]
            self.transforms: str | list[str] = transforms
        else:
            names = tuple(transforms)
            bad = [t for t in names if t not in TTA_TRANSFORMS]
            if bad or not names:
                raise ParameterError(
                    f"unknown TTA transforms {bad}; valid: {', '.join(TTA_TRANSFORMS)}"
                    if bad
                    else "TTA needs at least one transform"
                )
            self.transforms = list(names)
        self.names: tuple[str, ...] = names

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        chips = np.asarray(chips)
        h, w = chips.shape[-2:]
        if h != w:
            square = [t for t in self.names if t in _SQUARE]
            if square:
                raise ParameterError(
                    f"TTA transforms {square} need square chips, got {h}×{w}; use "
                    "transforms='flips' or square chips"
                )
        total: np.ndarray | None = None
        dtype: np.dtype | None = None
        for name in self.names:
            fwd, inv = TTA_TRANSFORMS[name]
            out = np.asarray(self.op(np.ascontiguousarray(fwd(chips))))
            back = inv(out)
            if total is None:
                dtype = _float_dtype(out.dtype)
                total = back.astype(np.float64)
            else:
                if back.shape != total.shape:
                    raise ParameterError(
                        f"{self.op!r} returned {back.shape} under {name!r} but "
                        f"{total.shape} untransformed; TTA needs consistent output shapes"
                    )
                total += back
        assert total is not None and dtype is not None
        total /= len(self.names)
        return total.astype(dtype, copy=False)

    @property
    def scale(self) -> float:
        return self.op.scale

    def output_spec(self, lead: tuple[int, ...], dtype: np.dtype) -> Spec | None:
        spec = self.op.output_spec(lead, dtype)
        return None if spec is None else (spec[0], _float_dtype(spec[1]))

    def output_band_names(self, names: Sequence[str]) -> list[str] | None:
        return self.op.output_band_names(names)

    def _needs_names(self) -> bool:
        return self.op._needs_names()

    def bind(self, band_names: Sequence[str]) -> TTA:
        new = copy.copy(self)
        new.op = self.op.bind(band_names)
        return new

    def _params(self) -> dict[str, Any]:
        return {"op": self.op, "transforms": self.transforms}

    @classmethod
    def _from_params(cls, params: dict[str, Any]) -> TTA:
        params = dict(params)
        if "op" not in params:
            raise ConfigError("TTA config needs 'op' (the wrapped operator's config)")
        params["op"] = from_config(params["op"])
        return cls(**params)
