"""Operator combinators: :class:`Branch` (several operators side by side, bands
concatenated), :class:`Switch` (one operator per chip, chosen by a predicate that is data),
:class:`Tap` (observe chips without changing them) and the chip predicates
(:class:`BandFraction`, :class:`BandMean`, :class:`ImportedPredicate`).

Every combinator here is registered, so a pipeline holding one still has a config:
``from_json(to_json(op)) == op``. Combinators naming code to run (an
:class:`ImportedPredicate`, a ``Tap("MODULE:NAME")``, an :class:`~patchflow.ops.Imported`
branch) load only with ``from_json(text, trusted=True)``.

Examples
--------
>>> import numpy as np
>>> from patchflow.ops import NDVI, NDWI, Branch, from_json, to_json
>>> op = Branch(NDVI(red=0, nir=1), NDWI(green=0, nir=1))
>>> op(np.ones((3, 2, 4, 4))).shape, op.output_spec((2,), np.dtype("uint16"))
((3, 2, 4, 4), ((2,), dtype('float32')))
>>> from_json(to_json(op)) == op
True
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from patchflow.errors import ConfigError, ParameterError
from patchflow.ops.base import (
    _TRUSTED,
    IMPORT_TARGET,
    Band,
    Config,
    Operator,
    Spec,
    _band,
    _json_params,
    _out_of_range,
    _resolve,
    as_operator,
    from_config,
    import_callable,
    op_pointwise,
    register,
)

__all__ = [
    "BandFraction",
    "BandMean",
    "Branch",
    "ImportedPredicate",
    "Predicate",
    "Switch",
    "Tap",
    "TapRecord",
    "clear_tap_records",
    "predicate_from_config",
    "tap_records",
]

Comparison = Literal[">", ">=", "<", "<="]
_COMPARE: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    ">": np.greater,
    ">=": np.greater_equal,
    "<": np.less,
    "<=": np.less_equal,
}


def _untrusted(what: str) -> ConfigError:
    return ConfigError(
        f"the config names code to run ({what}); load it with from_config(config, "
        "trusted=True) (or from_json(text, trusted=True)) if you trust where it comes "
        "from: building it imports and runs that code"
    )


def _common_attrs(ops: Sequence[Operator]) -> dict[str, Any]:
    """The attrs every operator states alike: only what is true of all output bands."""
    attrs = [op.output_attrs() for op in ops]
    first = attrs[0] if attrs else {}
    return {k: v for k, v in first.items() if all(k in a and a[k] == v for a in attrs[1:])}


def _same_scale(ops: Mapping[str, Operator], what: str) -> float:
    scales = {label: float(op.scale) for label, op in ops.items()}
    if len(set(scales.values())) > 1:
        shown = ", ".join(f"{label} ({ops[label]!r}) scale {s}" for label, s in scales.items())
        raise ConfigError(
            f"{what} need the same output grid, but the scales differ: {shown}; give every "
            "one the same scale (resample inside the one that differs)"
        )
    return next(iter(scales.values()), 1.0)


# --------------------------------------------------------------------------- Branch


@register
class Branch(Operator):
    """Several operators on the same chips, their outputs concatenated along the bands.

    Each branch receives the same ``(n, bands, h, w)`` chips; the result is their outputs
    stacked along axis 1 in branch order, as the common dtype (``np.result_type`` of the
    branches'). All branches must give the same spatial output (same :attr:`scale`, same
    ``h', w'``) and the same non-band dims. Pointwise when every branch is; the output
    band names are the branches' in order.

    Parameters
    ----------
    *ops
        The branches (operators or callables, wrapped with :func:`as_operator`).

    Raises
    ------
    ConfigError
        No branch, or branches whose output grids or non-band dims differ (named).

    Examples
    --------
    >>> import numpy as np
    >>> from patchflow.ops import NDVI, SelectBands
    >>> op = Branch(SelectBands([1]), NDVI(red=0, nir=1))
    >>> op
    Branch(SelectBands(indices=[1]), NDVI(red=0, nir=1))
    >>> op(np.array([[[[1]], [[3]]]], np.uint16)).ravel().tolist()
    [3.0, 0.5]
    >>> op.output_band_names(["red", "nir"])
    ['nir', 'ndvi']
    """

    def __init__(self, *ops: Any) -> None:
        if not ops:
            raise ConfigError("Branch needs at least one operator, e.g. Branch(op_a, op_b)")
        self.ops: tuple[Operator, ...] = tuple(as_operator(op) for op in ops)

    def _labelled(self) -> dict[str, Operator]:
        return {f"branch {k}": op for k, op in enumerate(self.ops)}

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        chips = np.asarray(chips)
        outs = [np.asarray(op(chips)) for op in self.ops]
        shapes = {
            f"branch {k} ({op!r})": o.shape
            for k, (op, o) in enumerate(zip(self.ops, outs, strict=True))
        }
        flat = [label for label, shape in shapes.items() if len(shape) < 4]
        if flat:
            raise ConfigError(
                f"Branch concatenates along the band axis, but {', '.join(flat)} returned "
                f"no band axis (shapes {shapes}); make each branch return (n, bands, h, w)"
            )
        if len({(s[:-3], *s[-2:]) for s in shapes.values()}) > 1:
            raise ConfigError(
                f"Branch outputs differ in more than their band counts: {shapes}; every "
                "branch must give the same number of chips, non-band dims and h, w"
            )
        dtype = np.result_type(*(o.dtype for o in outs))
        return np.concatenate([o.astype(dtype, copy=False) for o in outs], axis=-3)

    @property
    def scale(self) -> float:
        return _same_scale(self._labelled(), "Branch's operators")

    def output_spec(self, lead: tuple[int, ...], dtype: np.dtype) -> Spec | None:
        self.scale  # noqa: B018  (raises on branches with different grids)
        specs = [op.output_spec(lead, dtype) for op in self.ops]
        if any(s is None for s in specs):
            return None
        known = [s for s in specs if s is not None]
        leads = {
            f"branch {k} ({op!r})": s[0]
            for k, (op, s) in enumerate(zip(self.ops, known, strict=True))
        }
        flat = [label for label, out in leads.items() if not out]
        if flat:
            raise ConfigError(
                f"Branch concatenates along the band axis, but {', '.join(flat)} gives no "
                "band axis; make each branch return (n, bands, h, w)"
            )
        if len({out[:-1] for out in leads.values()}) > 1:
            raise ConfigError(
                f"Branch outputs differ in their non-band dims: {leads}; every branch must "
                "give the same dims before the band axis"
            )
        bands = sum(s[0][-1] for s in known)
        first = known[0][0]
        return (*first[:-1], bands), np.result_type(*(s[1] for s in known))

    def is_pointwise(self) -> bool:
        return all(op_pointwise(op) for op in self.ops)

    def keeps_values(self) -> bool:
        return all(op.keeps_values() for op in self.ops)

    def keeps_units(self) -> bool:
        return all(op.keeps_units() for op in self.ops)

    def output_attrs(self) -> dict[str, Any]:
        return _common_attrs(self.ops)

    def output_band_names(self, names: Sequence[str]) -> list[str] | None:
        out: list[str] = []
        for op in self.ops:
            part = op.output_band_names(names)
            if part is None:
                return None
            out.extend(part)
        return out

    def _needs_names(self) -> bool:
        return any(op._needs_names() for op in self.ops)

    def bind(self, band_names: Sequence[str]) -> Branch:
        return Branch(*(op.bind(band_names) for op in self.ops))

    def _params(self) -> dict[str, Any]:
        return {"ops": list(self.ops)}

    @classmethod
    def _from_params(cls, params: dict[str, Any]) -> Branch:
        unknown = set(params) - {"ops"}
        ops = params.get("ops")
        if unknown or not isinstance(ops, list):
            raise ConfigError(
                f"Branch takes only 'ops', a list of operator configs; got {params!r}"
            )
        return cls(*(from_config(c) for c in ops))

    def __repr__(self) -> str:
        return f"Branch({', '.join(repr(op) for op in self.ops)})"


# --------------------------------------------------------------------------- predicates


class Predicate:
    """A per-chip property that :class:`Switch` chooses by: data, not code.

    ``predicate(chips)`` returns one key per chip (a 1-D array of length ``n``): booleans
    for the built-ins. Subclasses hold JSON values only and round-trip through
    :meth:`get_config` / :func:`predicate_from_config`.
    """

    kind: ClassVar[str] = ""
    _band_params: ClassVar[tuple[str, ...]] = ()

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _params(self) -> dict[str, Any]:
        return {}

    def get_config(self) -> dict[str, Any]:
        """``{"kind": ..., **parameters}`` (JSON values only)."""
        return {"kind": self.kind, **self._params()}

    def _needs_names(self) -> bool:
        return any(isinstance(getattr(self, a), str) for a in self._band_params)

    def bind(self, band_names: Sequence[str]) -> Predicate:
        """A copy with bands given by name resolved to positions in ``band_names``."""
        if not self._band_params:
            return self
        new = copy.copy(self)
        names = [str(n) for n in band_names]
        for attr in self._band_params:
            setattr(new, attr, _resolve(getattr(self, attr), names, self))  # type: ignore[arg-type]
        return new

    def check(self, lead: tuple[int, ...]) -> None:
        """Plan-time check of the band reference against chips ``(*lead, h, w)``."""
        for attr in self._band_params:
            band = getattr(self, attr)
            if not lead:
                raise ParameterError(f"{self!r} needs chips with a band axis; they have none")
            if isinstance(band, str):
                raise ParameterError(
                    f"{self!r} addresses band {band!r} by name, but the input's bands have no "
                    "names; use a 0-based position or label the bands"
                )
            if not -lead[-1] <= band < lead[-1]:
                raise ParameterError(_out_of_range(repr(self), band, lead[-1]))

    def _band_values(self, chips: np.ndarray, band: Band) -> np.ndarray:
        if isinstance(band, str):
            raise ParameterError(
                f"{self!r} names band {band!r}; bind it to band names first "
                "(patchflow.apply does when the input has band labels)"
            )
        if chips.ndim < 4:
            raise ParameterError(
                f"{self!r} needs chips (n, bands, …, h, w), got shape {chips.shape}"
            )
        n = chips.shape[-3]
        if not -n <= band < n:
            raise ParameterError(_out_of_range(repr(self), band, n))
        return np.take(chips, band, axis=-3).reshape(chips.shape[0], -1)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Predicate)
        return self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash(repr(self))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({args})"


def _where(where: Any) -> str:
    if where not in _COMPARE:
        raise ParameterError(f"where must be one of {list(_COMPARE)}, got {where!r}")
    return str(where)


def _finite(value: Any, what: str) -> float:
    out = float(value)
    if not np.isfinite(out):
        raise ParameterError(f"{what} must be a finite number, got {value!r}")
    return out


class BandFraction(Predicate):
    """True for chips where more than ``threshold`` of the pixels of ``band`` satisfy
    ``band <where> value``.

    The fraction is over all the band's pixels in the chip; NaN pixels never satisfy the
    comparison (so a cloud-free test ``where="<"`` counts them as not clear).

    Examples
    --------
    >>> import numpy as np
    >>> chips = np.zeros((2, 1, 2, 2)); chips[0, 0, 0] = 1.0  # chip 0: half its pixels are 1
    >>> BandFraction(band=0, where=">", value=0.5, threshold=0.25)(chips).tolist()
    [True, False]
    """

    kind = "fraction"
    _band_params = ("band",)

    def __init__(
        self, *, band: Band, where: Comparison = ">", value: float, threshold: float = 0.5
    ) -> None:
        self.band = _band(band, "band")
        self.where = _where(where)
        self.value = _finite(value, "value")
        self.threshold = _finite(threshold, "threshold")
        if not 0.0 <= self.threshold <= 1.0:
            raise ParameterError(f"threshold is a fraction in [0, 1], got {threshold!r}")

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        values = self._band_values(np.asarray(chips), self.band)
        with np.errstate(invalid="ignore"):
            hits = _COMPARE[self.where](values, self.value)
        if values.shape[1] == 0:
            return np.zeros(values.shape[0], bool)
        return np.asarray(hits.mean(axis=1) > self.threshold)

    def _params(self) -> dict[str, Any]:
        return {
            "band": self.band,
            "where": self.where,
            "value": self.value,
            "threshold": self.threshold,
        }


class BandMean(Predicate):
    """True for chips whose mean of ``band`` (NaN pixels skipped) satisfies
    ``mean <where> value``; an all-NaN band gives False.

    Examples
    --------
    >>> import numpy as np
    >>> chips = np.stack([np.full((1, 2, 2), 0.2), np.full((1, 2, 2), 0.8)])
    >>> BandMean(band=0, where=">", value=0.5)(chips).tolist()
    [False, True]
    """

    kind = "mean"
    _band_params = ("band",)

    def __init__(self, *, band: Band, where: Comparison = ">", value: float) -> None:
        self.band = _band(band, "band")
        self.where = _where(where)
        self.value = _finite(value, "value")

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        values = self._band_values(np.asarray(chips), self.band).astype(np.float64)
        valid = ~np.isnan(values)
        count = valid.sum(axis=1)
        total = np.where(valid, values, 0.0).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = total / count
            return np.asarray(_COMPARE[self.where](mean, self.value) & (count > 0))

    def _params(self) -> dict[str, Any]:
        return {"band": self.band, "where": self.where, "value": self.value}


class ImportedPredicate(Predicate):
    """A predicate from your own code: ``MODULE:NAME``, called as ``fn(chips, **params)``.

    The function receives the ``(n, bands, …, h, w)`` batch and returns one key per chip
    (a 1-D sequence of length ``n`` of booleans, integers or strings). It is imported on
    first use in each process. Loading it from a config runs that code, so it needs
    ``trusted=True`` (as :class:`~patchflow.ops.Imported` does).

    Examples
    --------
    >>> ImportedPredicate("mypkg.rules:is_cloudy", params={"limit": 0.3}).get_config()
    {'kind': 'imported', 'target': 'mypkg.rules:is_cloudy', 'params': {'limit': 0.3}}
    """

    kind = "imported"

    def __init__(self, target: str, *, params: Mapping[str, Any] | None = None) -> None:
        if not isinstance(target, str) or not IMPORT_TARGET.match(target):
            raise ConfigError(
                "ImportedPredicate needs 'MODULE:NAME' (e.g. 'mypkg.rules:is_cloudy'), got "
                f"{target!r}"
            )
        self.target = target
        self.params = _json_params(params, target)
        self._fn: Callable[..., Any] | None = None

    def _resolve_fn(self) -> Callable[..., Any]:
        if self._fn is None:
            self._fn = import_callable(self.target)
        return self._fn

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fn": None}  # the path travels, never the function

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        return np.asarray(self._resolve_fn()(chips, **self.params))

    def _params(self) -> dict[str, Any]:
        return {"target": self.target, "params": self.params}


_PREDICATES: dict[str, type[Predicate]] = {
    p.kind: p for p in (BandFraction, BandMean, ImportedPredicate)
}


def predicate_from_config(config: Mapping[str, Any]) -> Predicate:
    """Build a predicate from :meth:`Predicate.get_config` output.

    An ``"imported"`` predicate loads only inside ``from_config(..., trusted=True)``.

    Raises
    ------
    ConfigError
        Not a dict with a known ``kind``, bad parameters, or untrusted imported code.

    Examples
    --------
    >>> predicate_from_config({"kind": "mean", "band": 0, "where": ">", "value": 0.3})
    BandMean(band=0, where='>', value=0.3)
    """
    if not isinstance(config, Mapping) or config.get("kind") not in _PREDICATES:
        raise ConfigError(
            f"a Switch predicate config is {{'kind': one of {sorted(_PREDICATES)}, ...}}, "
            f"got {config!r}"
        )
    params = {k: v for k, v in config.items() if k != "kind"}
    cls = _PREDICATES[config["kind"]]
    if cls is ImportedPredicate:
        if not _TRUSTED.get():
            raise _untrusted(f"Switch predicate {params.get('target', '')!r}")
        if set(params) - {"target", "params"}:
            raise ConfigError(
                f"an imported Switch predicate takes 'target' and 'params', got {sorted(params)}"
            )
        return ImportedPredicate(params.get("target"), params=params.get("params"))  # type: ignore[arg-type]
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid Switch predicate {dict(config)!r}: {exc}") from exc


# --------------------------------------------------------------------------- Switch


def _case_key(key: Any) -> str:
    """A case name as configs store it: ``True`` → ``"true"``, ``3`` → ``"3"``; the
    strings ``"True"``/``"FALSE"`` (Python's spelling, quoted YAML) name the same cases as
    the booleans, so a boolean predicate finds them instead of falling to the default."""
    if isinstance(key, (bool, np.bool_)):
        return "true" if key else "false"
    if isinstance(key, (int, np.integer)):
        return str(int(key))
    if isinstance(key, str):
        return key.lower() if key.lower() in ("true", "false") else key
    raise ParameterError(f"a Switch case key is a str, int or bool, got {key!r}")


@register
class Switch(Operator):
    """Per chip, the operator a :class:`Predicate` of the chip selects.

    The predicate gives one key per chip of a batch; the batch is split by key, each case
    runs on its sub-batch, and the results are put back in chip order. Keys select
    ``cases[key]``: in a mapping, booleans are ``"true"``/``"false"`` (as are the strings
    ``"True"``/``"False"``) and integers their decimal string (so ``{0: a, 1: b}`` works,
    and configs stay JSON); in a sequence, the key is the position (``False``/``True`` →
    0/1). A key without a case uses ``default``, and is an error without one. Every case
    (and ``default``) must declare the same output spec and scale, so the result does not
    depend on which chip took which path. Not pointwise: the choice depends on the whole
    chip.

    Parameters
    ----------
    predicate
        :class:`BandFraction`, :class:`BandMean` or :class:`ImportedPredicate`.
    cases
        ``{key: operator}`` or ``[operator, ...]``.
    default
        Operator for chips whose key has no case.

    Raises
    ------
    ConfigError
        Cases (or default) with different output specs or scales (named).
    ParameterError
        A chip's key with no case and no default.

    Examples
    --------
    >>> import numpy as np
    >>> from patchflow.ops import Rescale
    >>> op = Switch.by_mean(band=0, where=">", value=0.5,
    ...                     if_true=Rescale((0, 1), (0, 10)), if_false=Rescale((0, 1), (0, 1)))
    >>> chips = np.stack([np.full((1, 1, 1), 0.2), np.full((1, 1, 1), 0.8)])
    >>> op(chips).ravel().round(6).tolist()
    [0.2, 8.0]
    """

    def __init__(
        self,
        predicate: Predicate,
        cases: Mapping[str | int, Any] | Sequence[Any],
        *,
        default: Any = None,
    ) -> None:
        if not isinstance(predicate, Predicate):
            raise ParameterError(
                "Switch needs a predicate (BandFraction, BandMean or ImportedPredicate; data, "
                f"not code), got {type(predicate).__name__}"
            )
        self.predicate = predicate
        self.cases: dict[str, Operator] | tuple[Operator, ...]
        if isinstance(cases, Mapping):
            self.cases = {}
            for k, v in cases.items():
                name = _case_key(k)
                if name in self.cases:
                    raise ParameterError(
                        f"Switch cases {k!r} and an earlier key both name the case {name!r}; "
                        "keep one of them"
                    )
                self.cases[name] = as_operator(v)
        elif isinstance(cases, Sequence) and not isinstance(cases, str):
            self.cases = tuple(as_operator(v) for v in cases)
        else:
            raise ParameterError(
                f"Switch cases are a mapping {{key: op}} or a list of ops, got {cases!r}"
            )
        if not self.cases:
            raise ParameterError("Switch needs at least one case")
        self.default = None if default is None else as_operator(default)

    @classmethod
    def by_fraction(
        cls,
        *,
        band: Band,
        where: Comparison = ">",
        value: float,
        threshold: float = 0.5,
        if_true: Any,
        if_false: Any,
    ) -> Switch:
        """``if_true`` on chips where more than ``threshold`` of ``band``'s pixels are
        ``<where> value`` (see :class:`BandFraction`), ``if_false`` elsewhere.

        Examples
        --------
        >>> from patchflow.ops import NDVI, NDWI
        >>> Switch.by_fraction(band=1, value=0.3, if_true=NDVI(red=0, nir=1),
        ...                    if_false=NDWI(green=0, nir=1)).predicate
        BandFraction(band=1, where='>', value=0.3, threshold=0.5)
        """
        pred = BandFraction(band=band, where=where, value=value, threshold=threshold)
        return cls(pred, {True: if_true, False: if_false})

    @classmethod
    def by_mean(
        cls,
        *,
        band: Band,
        where: Comparison = ">",
        value: float,
        if_true: Any,
        if_false: Any,
    ) -> Switch:
        """``if_true`` on chips whose NaN-skipping mean of ``band`` is ``<where> value``
        (see :class:`BandMean`), ``if_false`` elsewhere."""
        pred = BandMean(band=band, where=where, value=value)
        return cls(pred, {True: if_true, False: if_false})

    def _all(self) -> dict[str, Operator]:
        items = self.cases.items() if isinstance(self.cases, dict) else enumerate(self.cases)
        out = {f"case {k!r}": op for k, op in items}
        if self.default is not None:
            out["default"] = self.default
        return out

    def _case(self, key: Any) -> Operator:
        op: Operator | None
        if isinstance(self.cases, dict):
            op = self.cases.get(_case_key(key))
        elif isinstance(key, (int, np.integer, bool, np.bool_)):
            op = self.cases[int(key)] if 0 <= int(key) < len(self.cases) else None
        else:
            raise ParameterError(
                f"Switch cases are a list, so {self.predicate!r} must give positions; it "
                f"gave {key!r}"
            )
        if op is None:
            op = self.default
        if op is None:
            known = (
                list(self.cases) if isinstance(self.cases, dict) else list(range(len(self.cases)))
            )
            raise ParameterError(
                f"{self.predicate!r} gave key {key!r}, which has no case (cases: {known}) and "
                "Switch has no default; add that case or a default=operator"
            )
        return op

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        chips = np.asarray(chips)
        n = chips.shape[0]
        keys = np.asarray(self.predicate(chips))
        if keys.shape != (n,):
            raise ParameterError(
                f"{self.predicate!r} must give one key per chip, shape ({n},); got shape "
                f"{keys.shape}"
            )
        if n == 0:
            return np.asarray(next(iter(self._all().values()))(chips))
        out: np.ndarray | None = None
        first: Operator | None = None
        for key in dict.fromkeys(keys.tolist()):  # distinct keys in chip order
            idx = np.flatnonzero(keys == key)
            op = self._case(key)
            part = np.asarray(op(chips[idx]))
            if out is None:
                out = np.empty((n, *part.shape[1:]), part.dtype)
                first = op
            elif part.shape[1:] != out.shape[1:] or part.dtype != out.dtype:
                raise ConfigError(
                    f"Switch cases disagree: {first!r} gave chips {out.shape[1:]} "
                    f"{out.dtype}, {op!r} gave {part.shape[1:]} {part.dtype}; every case "
                    "must give the same output shape and dtype"
                )
            out[idx] = part
        assert out is not None
        return out

    @property
    def scale(self) -> float:
        return _same_scale(self._all(), "Switch's cases")

    def output_spec(self, lead: tuple[int, ...], dtype: np.dtype) -> Spec | None:
        self.predicate.check(lead)
        self.scale  # noqa: B018  (raises on cases with different grids)
        specs = {label: op.output_spec(lead, dtype) for label, op in self._all().items()}
        known = {label: s for label, s in specs.items() if s is not None}
        distinct = {(tuple(s[0]), np.dtype(s[1])) for s in known.values()}
        if len(distinct) > 1:
            shown = ", ".join(
                f"{label} ({self._all()[label]!r}) gives {s[0]} {np.dtype(s[1]).name}"
                for label, s in known.items()
            )
            raise ConfigError(
                f"Switch's cases must give the same output, but they differ: {shown}; make "
                "them agree (e.g. add an Astype or SelectBands step to a case)"
            )
        if len(known) < len(specs):
            return None
        return next(iter(distinct))

    def is_pointwise(self) -> bool:
        return False

    def keeps_values(self) -> bool:
        return all(op.keeps_values() for op in self._all().values())

    def keeps_units(self) -> bool:
        return all(op.keeps_units() for op in self._all().values())

    def output_attrs(self) -> dict[str, Any]:
        return _common_attrs(list(self._all().values()))

    def output_band_names(self, names: Sequence[str]) -> list[str] | None:
        outs = [op.output_band_names(names) for op in self._all().values()]
        if any(o is None for o in outs) or any(o != outs[0] for o in outs):
            return None
        return outs[0]

    def _needs_names(self) -> bool:
        return self.predicate._needs_names() or any(
            op._needs_names() for op in self._all().values()
        )

    def bind(self, band_names: Sequence[str]) -> Switch:
        cases: dict[str, Operator] | list[Operator]
        if isinstance(self.cases, dict):
            cases = {k: op.bind(band_names) for k, op in self.cases.items()}
        else:
            cases = [op.bind(band_names) for op in self.cases]
        return Switch(
            self.predicate.bind(band_names),
            cases,  # type: ignore[arg-type]
            default=None if self.default is None else self.default.bind(band_names),
        )

    def _params(self) -> dict[str, Any]:
        return {
            "predicate": self.predicate.get_config(),
            "cases": dict(self.cases) if isinstance(self.cases, dict) else list(self.cases),
            "default": self.default,
        }

    @classmethod
    def _from_params(cls, params: dict[str, Any]) -> Switch:
        unknown = set(params) - {"predicate", "cases", "default"}
        if unknown or "predicate" not in params or "cases" not in params:
            raise ConfigError(
                "Switch takes 'predicate', 'cases' and (optionally) 'default'; got "
                f"{sorted(params)}"
            )
        raw = params["cases"]
        cases: dict[str, Operator] | list[Operator]
        if isinstance(raw, dict):
            # keys as Switch spells them: a YAML file's unquoted true/false/yes/no are
            # booleans ("true"/"false", as the predicates give), not "True"/"False"
            cases = {_case_key(k): from_config(c) for k, c in raw.items()}
        elif isinstance(raw, list):
            cases = [from_config(c) for c in raw]
        else:
            raise ConfigError(f"Switch 'cases' must be a dict or list of configs, got {raw!r}")
        default = params.get("default")
        return cls(
            predicate_from_config(params["predicate"]),
            cases,  # type: ignore[arg-type]
            default=None if default is None else from_config(default),
        )

    def __repr__(self) -> str:
        text = f"Switch({self.predicate!r}, {self._params()['cases']!r}"
        return text + (")" if self.default is None else f", default={self.default!r})")


# --------------------------------------------------------------------------- Tap


@dataclass(frozen=True)
class TapRecord:
    """Statistics of one chip seen by ``Tap.stats``: over all its bands and pixels, NaN
    skipped (``nan`` when every value is NaN); ``size`` counts every value."""

    min: float
    mean: float
    max: float
    nan_count: int
    size: int


_RECORDS: dict[str, list[TapRecord]] = {}
_RECORDS_LOCK = threading.Lock()


def tap_records(name: str) -> list[TapRecord]:
    """The records ``Tap.stats(name=name)`` made *in this process*, in arrival order.

    Records are process-local: with a process pool or a distributed cluster each worker
    keeps its own, and this returns only the calling process's (an empty list when the
    chips ran elsewhere). A recomputed dask graph records its chips again.

    Examples
    --------
    >>> import numpy as np
    >>> _ = Tap.stats(name="doc")(np.array([[[[1.0, np.nan, 3.0]]]]))
    >>> tap_records("doc")
    [TapRecord(min=1.0, mean=2.0, max=3.0, nan_count=1, size=3)]
    >>> clear_tap_records("doc")
    """
    with _RECORDS_LOCK:
        return list(_RECORDS.get(name, []))


def clear_tap_records(name: str | None = None) -> None:
    """Forget this process's records for ``name`` (all names when ``None``)."""
    with _RECORDS_LOCK:
        if name is None:
            _RECORDS.clear()
        else:
            _RECORDS.pop(name, None)


def _chip_stats(chip: np.ndarray) -> TapRecord:
    values = np.asarray(chip, dtype=np.float64).ravel()
    nan = np.isnan(values)
    valid = values[~nan]
    if valid.size == 0:
        lo = mean = hi = float("nan")
    else:
        lo, mean, hi = float(valid.min()), float(valid.mean()), float(valid.max())
    return TapRecord(min=lo, mean=mean, max=hi, nan_count=int(nan.sum()), size=int(values.size))


@register
class Tap(Operator):
    """Observe chips without changing them: returns its input, unchanged.

    The observer sees each batch (read-only) the engine passes:

    * ``Tap.stats(name=...)`` (``observer="stats"``) records every chip's NaN-skipping
      min/mean/max and NaN count as a :class:`TapRecord`, readable with
      :func:`tap_records`. Records are process-local (each worker of a process pool or a
      cluster keeps its own).
    * ``Tap("MODULE:NAME", params={...})`` calls your function ``fn(chips, **params)``
      (imported on first use; loading it from a config needs ``trusted=True``).
    * ``Tap(callable)`` calls it with the chips (not serialisable to a config).

    Tap is pointwise, so ``patchflow.apply`` may pass whole blocks or strips of blocks
    instead of overlapping chips: a "chip" is whatever array the engine hands over.

    Examples
    --------
    >>> import numpy as np
    >>> from patchflow.ops import NDVI
    >>> op = NDVI(red=0, nir=1) | Tap.stats(name="after_ndvi")
    >>> out = op(np.array([[[[1.0]], [[3.0]]]]))
    >>> [r.mean for r in tap_records("after_ndvi")]
    [0.5]
    >>> clear_tap_records("after_ndvi")
    """

    pointwise = True
    _keeps_values = True

    def __init__(
        self,
        observer: str | Callable[[np.ndarray], object],
        *,
        name: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        self.observer = observer
        self.name = name
        if observer == "stats":
            if not isinstance(name, str) or not name:
                raise ParameterError(
                    "Tap.stats needs name=..., the key to read its records with tap_records"
                )
            if params:
                raise ParameterError("Tap.stats takes no params")
            self.params: dict[str, Any] = {}
        elif isinstance(observer, str):
            if not IMPORT_TARGET.match(observer):
                raise ConfigError(
                    "Tap observes with 'stats' or a function named 'MODULE:NAME' (e.g. "
                    f"'mypkg.log:chip_summary'), got {observer!r}"
                )
            self.params = _json_params(params, observer)
        elif callable(observer):
            if params:
                raise ParameterError("params are for a 'MODULE:NAME' observer; bind them yourself")
            self.params = {}
        else:
            raise ParameterError(
                f"Tap needs 'stats', 'MODULE:NAME' or a callable, got {type(observer).__name__}"
            )
        self._fn: Callable[..., Any] | None = None

    @classmethod
    def stats(cls, *, name: str) -> Tap:
        """A Tap recording per-chip min/mean/max/NaN count under ``name``
        (see :func:`tap_records`)."""
        return cls("stats", name=name)

    def _observer(self) -> Callable[..., Any]:
        if callable(self.observer):
            return self.observer
        if self._fn is None:
            self._fn = import_callable(self.observer)
        return self._fn

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fn": None}

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        chips = np.asarray(chips)
        seen = chips.view()
        seen.flags.writeable = False  # an observer must not change what flows on
        if self.observer == "stats":
            assert self.name is not None
            records = [_chip_stats(chip) for chip in seen]
            with _RECORDS_LOCK:
                _RECORDS.setdefault(self.name, []).extend(records)
        else:
            self._observer()(seen, **self.params)
        return chips

    def output_spec(self, lead: tuple[int, ...], dtype: np.dtype) -> Spec:
        return lead, dtype

    def output_band_names(self, names: Sequence[str]) -> list[str]:
        return list(names)

    def _params(self) -> dict[str, Any]:
        return {"observer": self.observer, "name": self.name, "params": self.params}

    def get_config(self) -> Config:
        if callable(self.observer):
            raise ConfigError(
                f"{self!r} observes with a Python function and cannot be written to a "
                "config; name it as Tap('MODULE:NAME') instead"
            )
        return super().get_config()

    @classmethod
    def _from_params(cls, params: dict[str, Any]) -> Tap:
        unknown = set(params) - {"observer", "name", "params"}
        if unknown or "observer" not in params:
            raise ConfigError(f"Tap takes 'observer', 'name' and 'params'; got {sorted(params)}")
        observer = params["observer"]
        if observer != "stats" and not _TRUSTED.get():
            raise _untrusted(f"Tap {observer!r}")
        return cls(observer, name=params.get("name"), params=params.get("params"))

    def __repr__(self) -> str:
        if self.observer == "stats":
            return f"Tap.stats(name={self.name!r})"
        shown = (
            self.observer
            if isinstance(self.observer, str)
            else getattr(self.observer, "__qualname__", repr(self.observer))
        )
        extra = f", params={self.params!r}" if self.params else ""
        return f"Tap({shown!r}{extra})"
