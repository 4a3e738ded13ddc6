"""Per-chip operators: the calling convention, composable built-ins, configs and TTA.

Calling convention
------------------
A *plain* operator is any callable taking one chip ``(non-spatial dims…, h, w)`` and
returning ``(out dims…, h, w)``. A *batched* operator takes a stack of chips
``(n, non-spatial dims…, h, w)`` and returns ``(n, out dims…, h', w')``; the engine calls it
once per ``batch_size`` chips of a block, which is what makes vectorised numpy and ML models
fast. Mark one with :func:`batched`, ``apply(..., batched=True)``, or give the object a
``batched = True`` attribute.

Operators
---------
:class:`Operator` is the base class of patchflow's own operators. They are batched by
contract and declare what they can, so the engine can plan without a dry run:

* :meth:`Operator.output_spec` — the output's non-spatial shape and dtype for a given input
  (``None`` when unknown);
* :attr:`Operator.scale` — output pixels per input pixel along y and x (``2.0`` for ×2
  super-resolution, ``0.25`` for a stride-4 encoder; 1.0 for every built-in);
* :meth:`Operator.bind` — resolve bands given *by name* (``NDVI(red="red", nir="nir")``)
  to indices, from the input's band coordinate labels; the engine calls it when the input
  has a coordinate on its first non-spatial dim. Bands are always the first non-spatial
  axis of a chip (axis 1 of a batch). Band references are Python-style: 0-based positions
  (negative ones count from the end) or names. A name the input lacks, a name on an input
  without band labels, or a position out of range fails while ``patchflow.apply`` plans
  (in ``bind`` and ``output_spec``), not when the graph computes; a position equal to the
  band count is called out as a likely GDAL-style 1-based number.

Operators compose with ``|`` into a :class:`Sequential`, print their full configuration,
round-trip through :meth:`Operator.get_config` / :meth:`Operator.from_config` and JSON
(:func:`to_json` / :func:`from_json`), compare equal by configuration and pickle (pickle
and cloudpickle). Loading a config only ever instantiates classes registered with
:func:`register` by name: it never evaluates code or unpickles anything.

Examples
--------
>>> import numpy as np
>>> pipeline = DNToReflectance(scale=1e-4) | NDVI(red=0, nir=1)
>>> pipeline
DNToReflectance(scale=0.0001, offset=0.0) | NDVI(red=0, nir=1)
>>> chips = np.full((3, 2, 4, 4), 1000, np.uint16)
>>> chips[:, 1] = 3000
>>> out = pipeline(chips)
>>> out.shape, out.dtype.name, float(out[0, 0, 0, 0])
((3, 1, 4, 4), 'float32', 0.5)
>>> from_json(to_json(pipeline)) == pipeline
True
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar, TypeVar, overload

import numpy as np
import numpy.typing as npt

from patchflow.errors import ConfigError, InputTypeError, ParameterError

__all__ = [
    "COMPOSITE_STATS",
    "NBR",
    "NDVI",
    "NDWI",
    "TTA",
    "TTA_PRESETS",
    "TTA_TRANSFORMS",
    "Astype",
    "Batched",
    "Composite",
    "ConfigError",
    "DNToReflectance",
    "Lambda",
    "NormalizedDifference",
    "Operator",
    "PercentileClip",
    "Rescale",
    "SelectBands",
    "Sequential",
    "as_operator",
    "batched",
    "from_config",
    "from_json",
    "global_percentiles",
    "is_batched",
    "op_output_spec",
    "op_scale",
    "register",
    "registered_ops",
    "to_json",
]

Band = int | str
Spec = tuple[tuple[int, ...], np.dtype]
Config = dict[str, Any] | list[Any]
_T = TypeVar("_T", bound="Operator")
_O = TypeVar("_O", bound=type["Operator"])


class Batched:
    """A callable marked as batched (picklable when the wrapped callable is)."""

    batched = True

    def __init__(self, fn: Callable[..., Any]) -> None:
        if not callable(fn):
            raise InputTypeError(f"batched() needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)
        self.__doc__ = getattr(fn, "__doc__", None)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"batched({self.fn!r})"

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        from dask.base import tokenize

        return ("patchflow.batched", tokenize(self.fn))


def batched(fn: Callable[..., Any]) -> Batched:
    """Mark ``fn`` as a batched operator: it receives ``(n, …, h, w)`` stacks of chips.

    Examples
    --------
    >>> import numpy as np
    >>> @batched
    ... def ndvi(x):
    ...     red, nir = x[:, 0:1] * 1e-4, x[:, 1:2] * 1e-4
    ...     return (nir - red) / (nir + red)
    >>> ndvi(np.ones((3, 2, 4, 4))).shape
    (3, 1, 4, 4)
    """
    return Batched(fn)


def is_batched(op: Any) -> bool:
    """Whether ``op`` follows the batched calling convention."""
    return bool(getattr(op, "batched", False))


# --------------------------------------------------------------------------- registry


# ConfigError lives in patchflow.errors (one hierarchy); it stays importable from here.

_REGISTRY: dict[str, type[Operator]] = {}


@overload
def register(cls: _O, /) -> _O: ...
@overload
def register(name: str, /) -> Callable[[_O], _O]: ...
def register(arg: Any, /) -> Any:
    """Register an :class:`Operator` subclass so configs can name it.

    Use as ``@register`` (registered under the class name) or ``@register("name")``.
    Registering a different class under a taken name is an error. The class must be
    importable wherever a config is loaded (e.g. on dask workers).

    Examples
    --------
    >>> @register
    ... class Negate(Operator):
    ...     def __call__(self, chips):
    ...         return -chips
    >>> from_config({"op": "Negate"})
    Negate()
    >>> _ = _REGISTRY.pop("Negate")  # (keep the doctest registry clean)
    """

    def deco(cls: _O, name: str | None = None) -> _O:
        if not (isinstance(cls, type) and issubclass(cls, Operator)):
            raise InputTypeError(f"register() needs an Operator subclass, got {cls!r}")
        key = name or cls.__name__
        old = _REGISTRY.get(key)
        if old is not None and old is not cls:
            raise ConfigError(
                f"an operator named {key!r} is already registered ({old.__module__}."
                f"{old.__qualname__}); register {cls.__qualname__} under another name"
            )
        _REGISTRY[key] = cls
        cls._op_name = key
        return cls

    if isinstance(arg, str):
        return lambda cls: deco(cls, arg)
    return deco(arg)


def registered_ops() -> list[str]:
    """Sorted names of the operator classes configs may use.

    Examples
    --------
    >>> "NDVI" in registered_ops()
    True
    """
    return sorted(_REGISTRY)


def _jsonable(value: Any) -> Any:
    """``value`` with operators turned into configs, tuples into lists, numpy into Python."""
    if isinstance(value, Operator):
        return value.get_config()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.dtype):
        return value.name
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ConfigError(f"parameter value {value!r} ({type(value).__name__}) is not JSON-able")


def _frozen(value: Any) -> Any:
    """A hashable stand-in for a parameter value (lists → tuples, dicts → sorted items)."""
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), _frozen(v)) for k, v in value.items()))
    try:
        hash(value)
    except TypeError:
        return ("<id>", id(value))
    return value


def from_config(config: Config) -> Operator:
    """Build an operator from ``get_config()`` output (a dict, or a list for a pipeline).

    Only classes registered with :func:`register` can be named; nothing is evaluated or
    unpickled.

    Raises
    ------
    ConfigError
        Malformed config, unknown operator name (the message lists registered names), or
        parameters the operator rejects.

    Examples
    --------
    >>> from_config([{"op": "DNToReflectance", "params": {"scale": 1e-4}},
    ...              {"op": "NDVI", "params": {"red": 0, "nir": 1}}])
    DNToReflectance(scale=0.0001, offset=0.0) | NDVI(red=0, nir=1)
    """
    if isinstance(config, list):
        return Sequential([from_config(c) for c in config])
    if not isinstance(config, dict):
        raise ConfigError(
            f"an operator config is a dict {{'op': name, 'params': {{...}}}} or a list of "
            f"them, got {type(config).__name__}: {config!r}"
        )
    extra = set(config) - {"op", "params"}
    if "op" not in config or extra:
        raise ConfigError(
            f"an operator config has the keys 'op' and (optionally) 'params'; got "
            f"{sorted(map(str, config))}"
        )
    name = config["op"]
    params = config.get("params") or {}
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ConfigError(
            f"unknown operator {name!r} in config; registered operators: "
            f"{', '.join(registered_ops())} (register custom ones with "
            "@patchflow.ops.register)"
        )
    if not isinstance(params, dict):
        raise ConfigError(f"'params' of {name} must be a dict, got {params!r}")
    cls = _REGISTRY[name]
    try:
        return cls._from_params(params)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid params for {name}: {params!r}: {exc}") from exc


def to_json(op: Operator, **kwargs: Any) -> str:
    """The operator's config as a JSON string (``kwargs`` go to :func:`json.dumps`).

    Examples
    --------
    >>> to_json(NDVI(red=0, nir=1))
    '{"op": "NDVI", "params": {"red": 0, "nir": 1}}'
    """
    return json.dumps(op.get_config(), **kwargs)


def from_json(text: str) -> Operator:
    """Build an operator from a JSON config (see :func:`from_config`).

    Examples
    --------
    >>> from_json('{"op": "NDWI", "params": {"green": "green", "nir": "nir"}}')
    NDWI(green='green', nir='nir')
    """
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"operator config is not valid JSON: {exc}") from exc
    return from_config(config)


# --------------------------------------------------------------------------- base class


def _band(value: Any, what: str) -> Band:
    if isinstance(value, (bool, np.bool_)):
        raise ParameterError(f"{what} must be a band index (int) or name (str), got {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, str):
        return value
    raise ParameterError(f"{what} must be a band index (int) or name (str), got {value!r}")


def _out_of_range(op: Any, band: int, n: int, names: Sequence[str] | None = None) -> str:
    """Why ``band`` is not a position among ``n`` bands (0-based), spotting 1-based numbers.

    Examples
    --------
    >>> print(_out_of_range("NDVI(red=2, nir=4)", 4, 4))
    NDVI(red=2, nir=4): band index 4 is out of range: the input has 4 bands, at 0-based \
positions 0..3 (or -4..-1 from the end); band 4 looks like a GDAL-style 1-based number; \
Python positions are 0-based: use 3 (if you counted every band from 1, subtract 1 from each)
    """
    listed = f" {list(names)}" if names else ""
    plural = "band" if n == 1 else "bands"
    text = (
        f"{op}: band index {band} is out of range: the input has {n} {plural}{listed}, "
        f"at 0-based positions 0..{n - 1} (or -{n}..-1 from the end)"
    )
    if band == n:
        text += (
            f"; band {band} looks like a GDAL-style 1-based number; Python positions are "
            f"0-based: use {n - 1} (if you counted every band from 1, subtract 1 from each)"
        )
    elif names:
        text += "; or give band names"
    return text


def _resolve(band: Band, names: Sequence[str], op: Operator) -> int:
    names = list(names)
    if isinstance(band, str):
        if band in names:
            return names.index(band)
        text = f"{op!r}: band {band!r} not found among the input's bands {names}"
        folded = [n for n in names if n.casefold() == band.casefold()]
        close = folded or difflib.get_close_matches(band, names, n=1, cutoff=0.6)
        if close:
            text += f"; did you mean {close[0]!r}?"
        raise ParameterError(text)
    if not -len(names) <= band < len(names):
        raise ParameterError(_out_of_range(repr(op), band, len(names), names))
    return band


def _float_dtype(dtype: npt.DTypeLike) -> np.dtype:
    """The float dtype computations on ``dtype`` use: at least float32."""
    return np.result_type(np.dtype(dtype), np.float32)


class Operator:
    """Base class of patchflow operators: batched, declarative, composable, serialisable.

    ``op(chips)`` receives ``(n, *lead, h, w)`` numpy chips and returns
    ``(n, *out_lead, h', w')`` with ``h' = h·scale``, ``w' = w·scale``.

    Writing one: subclass, implement ``__call__``, store the constructor arguments and
    return them from ``_params()`` (a dict of JSON-able values or nested operators), and
    optionally ``output_spec``. Decorate with :func:`register` to make configs naming it
    loadable.

    Examples
    --------
    >>> import numpy as np
    >>> class Offset(Operator):
    ...     def __init__(self, value: float = 1.0):
    ...         self.value = float(value)
    ...     def _params(self):
    ...         return {"value": self.value}
    ...     def __call__(self, chips):
    ...         return chips + self.value
    ...     def output_spec(self, lead, dtype):
    ...         return lead, np.result_type(dtype, float)
    >>> op = Offset(2) | SelectBands([1])
    >>> op, op(np.zeros((1, 3, 2, 2)))[0, 0, 0, 0]
    (Offset(value=2.0) | SelectBands(indices=[1]), np.float64(2.0))
    """

    #: the engine calls the operator with ``(n, …, h, w)`` stacks of chips
    batched: ClassVar[bool] = True
    #: registry name (set by :func:`register`)
    _op_name: ClassVar[str | None] = None
    #: attributes holding band references (int index or str name), resolved by :meth:`bind`
    _band_params: ClassVar[tuple[str, ...]] = ()
    _scale: float = 1.0

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} does not implement __call__")

    # ---- declarations

    @property
    def scale(self) -> float:
        """Output pixels per input pixel along y and x (1.0: same grid as the input)."""
        return self._scale

    def output_spec(self, lead: tuple[int, ...], dtype: np.dtype) -> Spec | None:
        """Output non-spatial shape and dtype for input chips ``(*lead, h, w)`` of ``dtype``.

        ``None`` means unknown (the engine then makes a dry run).
        """
        return None

    def output_band_names(self, names: Sequence[str]) -> list[str] | None:
        """Labels of the output bands given the input's, or ``None`` if unknown."""
        return None

    # ---- band names

    def _needs_names(self) -> bool:
        return any(
            isinstance(b, str) for attr in self._band_params for b in _as_list(getattr(self, attr))
        )

    def bind(self: _T, band_names: Sequence[str]) -> _T:
        """A copy with bands given by name resolved to indices into ``band_names``.

        ``band_names`` are the labels of the input's first non-spatial dim (e.g. the
        ``band`` coordinate of a ``(band, y, x)`` scene). Integer indices are checked
        against their number. Operators without band parameters return themselves.

        Examples
        --------
        >>> NDVI(red="red", nir="nir").bind(["blue", "red", "nir"])
        NDVI(red=1, nir=2)
        """
        if not self._band_params:
            return self
        names = [str(n) for n in band_names]
        new = copy.copy(self)
        for attr in self._band_params:
            value = getattr(self, attr)
            if isinstance(value, list):
                setattr(new, attr, [_resolve(v, names, self) for v in value])
            else:
                setattr(new, attr, _resolve(value, names, self))
        return new

    def _check_bound(self) -> None:
        if self._needs_names():
            raise ParameterError(
                f"{self!r} names bands; resolve them with op.bind(band_names) first "
                "(patchflow.apply does it when the input has band coordinate labels)"
            )

    def _check_bands(self, lead: tuple[int, ...]) -> None:
        """Plan-time check of the band references against chips ``(*lead, h, w)``.

        Called from :meth:`output_spec`, which ``patchflow.apply`` calls while planning,
        so a band that cannot exist fails at call time, not when the graph computes.
        Names left unresolved here mean the input had no band labels to bind them to.
        """
        if not lead:
            raise ParameterError(f"{self!r} needs input with a band dim; the chips have none")
        names = [b for a in self._band_params for b in _as_list(getattr(self, a))]
        unbound = [b for b in names if isinstance(b, str)]
        if unbound:
            raise ParameterError(
                f"{self!r} addresses bands by name, but the input's {lead[0]} bands have no "
                "names (no string coordinate on the band dim); use 0-based positions, or "
                "label the bands, e.g. obj.assign_coords(band=['red', 'nir', ...]) (for a "
                "GeoTIFF read with rioxarray: band=list(obj.attrs['long_name']))"
            )
        for band in names:
            if not -lead[0] <= band < lead[0]:
                raise ParameterError(_out_of_range(repr(self), band, lead[0]))

    # ---- config

    def _params(self) -> dict[str, Any]:
        """Constructor arguments (JSON-able values or nested operators)."""
        return {}

    @classmethod
    def _from_params(cls: type[_T], params: dict[str, Any]) -> _T:
        return cls(**params)

    def get_config(self) -> Config:
        """JSON-able ``{"op": name, "params": {...}}`` (a list for a :class:`Sequential`).

        Raises
        ------
        ConfigError
            For operators wrapping arbitrary Python objects (:class:`Lambda`, ``ModelOp``)
            or classes never registered.
        """
        name = type(self)._op_name
        if name is None or _REGISTRY.get(name) is not type(self):
            raise ConfigError(
                f"{type(self).__qualname__} is not a registered operator, so it has no "
                "loadable config; decorate the class with @patchflow.ops.register"
            )
        return {"op": name, "params": _jsonable(self._params())}

    @classmethod
    def from_config(cls, config: Config) -> Operator:
        """Build an operator from a config (see :func:`from_config`)."""
        op = from_config(config)
        if not isinstance(op, cls):
            raise ConfigError(f"the config describes a {type(op).__name__}, not a {cls.__name__}")
        return op

    # ---- composition, comparison, display

    def __or__(self, other: Any) -> Sequential:
        if not callable(other):
            return NotImplemented
        return Sequential([self, other])

    def __ror__(self, other: Any) -> Sequential:
        if not callable(other):
            return NotImplemented
        return Sequential([other, self])

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Operator)
        return self._params() == other._params()

    def __hash__(self) -> int:
        return hash((type(self).__qualname__, _frozen(self._params())))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={_short(v)}" for k, v in self._params().items() if v is not None)
        return f"{type(self).__name__}({args})"

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        from dask.base import tokenize

        cls = type(self)
        return ("patchflow.op", cls.__module__, cls.__qualname__, tokenize(self._params()))


def _short(value: Any) -> str:
    if isinstance(value, Sequential) and len(value) != 1:
        return f"({value!r})"
    return repr(value)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def as_operator(op: Any) -> Operator:
    """``op`` itself if it is an :class:`Operator`, else a :class:`Lambda` wrapping it.

    Plain callables become ``Lambda(fn)`` (one chip per call); callables marked batched
    (:func:`batched`, ``batched = True``) become ``Lambda(fn, batched=True)``.
    """
    if isinstance(op, Operator):
        return op
    if not callable(op):
        raise ParameterError(f"an operator must be callable, got {type(op).__name__}")
    return Lambda(op, batched=is_batched(op))


def op_output_spec(op: Any, lead: tuple[int, ...], dtype: npt.DTypeLike) -> Spec | None:
    """``op.output_spec(lead, dtype)`` for an :class:`Operator`, ``None`` for anything else.

    Examples
    --------
    >>> op_output_spec(NDVI(red=0, nir=1), (2,), np.dtype("uint16"))
    ((1,), dtype('float32'))
    >>> op_output_spec(lambda c: c, (2,), np.dtype("uint16")) is None
    True
    """
    if isinstance(op, Operator):
        spec = op.output_spec(tuple(int(v) for v in lead), np.dtype(dtype))
        if spec is not None:
            return tuple(int(v) for v in spec[0]), np.dtype(spec[1])
    return None


def op_scale(op: Any) -> float:
    """Output pixels per input pixel of ``op`` (1.0 for anything but an :class:`Operator`).

    Only :class:`Operator` instances are asked: an arbitrary object's ``scale`` attribute
    may mean something else entirely (e.g. a radiometric gain).
    """
    return float(op.scale) if isinstance(op, Operator) else 1.0


# --------------------------------------------------------------------------- composition


@register
class Sequential(Operator):
    """Operators applied one after the other; ``a | b`` builds one (flattened).

    Indexable (``pipe[0]``, ``pipe[1:]``), sized and iterable. Its config is the list of
    its operators' configs; its scale is the product of theirs; its output spec chains
    theirs.

    Examples
    --------
    >>> pipe = DNToReflectance() | NDVI(red=0, nir=1) | Rescale((-1, 1), (0, 255))
    >>> len(pipe), pipe[1]
    (3, NDVI(red=0, nir=1))
    >>> pipe.output_spec((2,), np.dtype("uint16"))
    ((1,), dtype('float32'))
    """

    def __init__(self, ops: Iterable[Any] = ()) -> None:
        flat: list[Operator] = []
        for op in ops:
            op = as_operator(op)
            flat.extend(op.ops if isinstance(op, Sequential) else [op])
        self.ops: tuple[Operator, ...] = tuple(flat)

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        for op in self.ops:
            chips = np.asarray(op(chips))
        return chips

    @overload
    def __getitem__(self, index: int) -> Operator: ...
    @overload
    def __getitem__(self, index: slice) -> Sequential: ...
    def __getitem__(self, index: int | slice) -> Operator | Sequential:
        if isinstance(index, slice):
            return Sequential(self.ops[index])
        return self.ops[index]

    def __len__(self) -> int:
        return len(self.ops)

    def __iter__(self) -> Iterator[Operator]:
        return iter(self.ops)

    @property
    def scale(self) -> float:
        return math.prod(op.scale for op in self.ops)

    def output_spec(self, lead: tuple[int, ...], dtype: np.dtype) -> Spec | None:
        spec: Spec | None = (lead, dtype)
        for op in self.ops:
            assert spec is not None
            spec = op.output_spec(*spec)
            if spec is None:
                return None
        return spec

    def output_band_names(self, names: Sequence[str]) -> list[str] | None:
        current: list[str] | None = list(names)
        for op in self.ops:
            if current is None:
                return None
            current = op.output_band_names(current)
        return current

    def _needs_names(self) -> bool:
        return any(op._needs_names() for op in self.ops)

    def bind(self, band_names: Sequence[str]) -> Sequential:
        """Bind each operator to the band names its input has (as far as they are known)."""
        current: list[str] | None = [str(n) for n in band_names]
        out = []
        for k, op in enumerate(self.ops):
            if current is None:
                if op._needs_names():
                    raise ParameterError(
                        f"{op!r} (step {k} of the pipeline) names bands, but the band names "
                        f"after {self.ops[k - 1]!r} are unknown; use band indices"
                    )
                out.append(op)
                continue
            op = op.bind(current)
            out.append(op)
            current = op.output_band_names(current)
        return Sequential(out)

    def _params(self) -> dict[str, Any]:
        return {"ops": list(self.ops)}

    @classmethod
    def _from_params(cls, params: dict[str, Any]) -> Sequential:
        unknown = set(params) - {"ops"}
        if unknown:
            raise ConfigError(f"Sequential takes only 'ops', got {sorted(unknown)}")
        ops = params.get("ops", [])
        if not isinstance(ops, list):
            raise ConfigError(f"Sequential 'ops' must be a list of configs, got {ops!r}")
        return cls(from_config(c) for c in ops)

    def get_config(self) -> Config:
        return [op.get_config() for op in self.ops]

    def __repr__(self) -> str:
        if len(self.ops) == 1:
            return f"Sequential([{self.ops[0]!r}])"
        if not self.ops:
            return "Sequential([])"
        return " | ".join(repr(op) for op in self.ops)


class Lambda(Operator):
    """Wrap a plain function as an :class:`Operator` (not serialisable to a config).

    Parameters
    ----------
    fn
        ``batched=False``: called on one chip ``(*lead, h, w)`` at a time (Lambda loops
        over the batch). ``batched=True``: called on the whole ``(n, *lead, h, w)`` stack.
        Default: ``True`` if ``fn`` is marked batched (:func:`batched`).
    output_bands, output_dtype
        Declare the output (``output_bands`` is the number of output bands, or a tuple for
        the full non-spatial shape); both needed for :meth:`output_spec` to answer.
    scale
        Output pixels per input pixel.

    Examples
    --------
    >>> import numpy as np
    >>> op = Lambda(lambda chip: chip[:1] * 2, output_bands=1, output_dtype="float64")
    >>> op(np.ones((5, 3, 4, 4))).shape, op.output_spec((3,), np.dtype(float))
    ((5, 1, 4, 4), ((1,), dtype('float64')))
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        batched: bool | None = None,
        output_bands: int | Sequence[int] | None = None,
        output_dtype: npt.DTypeLike | None = None,
        scale: float = 1.0,
    ) -> None:
        if not callable(fn):
            raise ParameterError(f"Lambda needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self.fn_batched = is_batched(fn) if batched is None else bool(batched)
        self.output_bands: tuple[int, ...] | None = (
            None if output_bands is None else tuple(int(v) for v in _as_list(output_bands))
        )
        self.output_dtype = None if output_dtype is None else np.dtype(output_dtype)
        self._scale = _positive(scale, "scale")

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        if self.fn_batched:
            return np.asarray(self.fn(chips))
        return np.stack([np.asarray(self.fn(chip)) for chip in chips])

    def output_spec(self, lead: tuple[int, ...], dtype: np.dtype) -> Spec | None:
        if self.output_bands is None or self.output_dtype is None:
            return None
        return self.output_bands, self.output_dtype

    def _params(self) -> dict[str, Any]:
        return {
            "fn": self.fn,
            "batched": self.fn_batched,
            "output_bands": self.output_bands,
            "output_dtype": self.output_dtype,
            "scale": self._scale,
        }

    def get_config(self) -> Config:
        raise ConfigError(
            f"{self!r} wraps an arbitrary Python function and cannot be written to a config; "
            "write a registered Operator subclass (@patchflow.ops.register) instead"
        )

    def __repr__(self) -> str:
        name = getattr(self.fn, "__qualname__", None) or repr(self.fn)
        args = [name, f"batched={self.fn_batched}"]
        if self.output_bands is not None:
            args.append(f"output_bands={self.output_bands}")
        if self.output_dtype is not None:
            args.append(f"output_dtype={self.output_dtype.name!r}")
        if self._scale != 1.0:
            args.append(f"scale={self._scale}")
        return f"Lambda({', '.join(args)})"


def _positive(value: Any, what: str) -> float:
    out = float(value)
    if not (math.isfinite(out) and out > 0):
        raise ParameterError(f"{what} must be a positive finite number, got {value!r}")
    return out


def _indices(op: Operator, bands: Sequence[Band], n_bands: int) -> list[int]:
    """Integer band indices, checked against ``n_bands`` (names must be bound first)."""
    out = []
    for band in bands:
        if isinstance(band, str):
            op._check_bound()
        assert isinstance(band, int)
        if not -n_bands <= band < n_bands:
            raise ParameterError(_out_of_range(repr(op), band, n_bands))
        out.append(band)
    return out


def _need_bands(chips: np.ndarray, op: Operator) -> None:
    if chips.ndim < 4:
        raise ParameterError(
            f"{op!r} needs chips with a band axis (n, bands, …, h, w), got shape {chips.shape}"
        )


# --------------------------------------------------------------------------- built-ins


@register
class DNToReflectance(Operator):
    """Digital numbers to reflectance: ``DN × scale + offset``, as float32.

    ``scale`` here is the radiometric gain (the seed walkthrough's name); the operator's
    *spatial* :attr:`~Operator.scale` stays 1.0 — the gain is available as ``gain``.
    With ``nodata`` set, DNs equal to it become NaN; NaN inputs stay NaN.

    Examples
    --------
    >>> import numpy as np
    >>> op = DNToReflectance(scale=1e-4, offset=-0.1, nodata=0)
    >>> op(np.array([[[[0, 2500]]]], np.uint16)).astype(float).round(4).tolist(), op.scale, op.gain
    ([[[[nan, 0.15]]]], 1.0, 0.0001)
    """

    def __init__(self, scale: float = 1e-4, offset: float = 0.0, nodata: float | None = None):
        self.gain = float(scale)
        self.offset = float(offset)
        self.nodata = None if nodata is None else float(nodata)
        if not (math.isfinite(self.gain) and math.isfinite(self.offset)):
            raise ParameterError(f"scale and offset must be finite, got {scale!r}, {offset!r}")

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        chips = np.asarray(chips)
        out = chips.astype(np.float32)  # a fresh array: scale it in place
        out *= np.float32(self.gain)
        if self.offset:
            out += np.float32(self.offset)
        if self.nodata is not None:
            out[chips == self.nodata] = np.nan
        return out

    def output_spec(self, lead: tuple[int, ...], dtype: np.dtype) -> Spec:
        return lead, np.dtype(np.float32)

    def output_band_names(self, names: Sequence[str]) -> list[str]:
        return list(names)

    def _params(self) -> dict[str, Any]:
        return {"scale": self.gain, "offset": self.offset, "nodata": self.nodata}


@register
class NormalizedDifference(Operator):
    """``(a - b) / (a + b)`` of two bands → one band (float32, or float64 for float64 input).

    Bands are indices into, or names of (see :meth:`~Operator.bind`), the chip's first
    non-spatial axis. Where ``a + b == 0`` the result is NaN (an undefined index — 0/0 is
    not 0), and NaN inputs give NaN; the engine gives non-finite outputs zero weight.

    Examples
    --------
    >>> import numpy as np
    >>> chips = np.array([[[[3.0, 0.0]], [[1.0, 0.0]]]])  # (1, 2, 1, 2)
    >>> NormalizedDifference(0, 1)(chips).tolist()
    [[[[0.5, nan]]]]
    """

    _band_params = ("a", "b")
    _label = "normalized_difference"

    def __init__(self, a: Band, b: Band) -> None:
        self.a = _band(a, "a")
        self.b = _band(b, "b")

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        self._check_bound()
        chips = np.asarray(chips)
        _need_bands(chips, self)
        n = chips.shape[1]
        ia, ib = (i % n for i in _indices(self, [self.a, self.b], n))
        ft = _float_dtype(chips.dtype)
        # basic slices (views) and astype without a copy when already float: this is the
        # hot path of every NDVI job
        a = chips[:, ia : ia + 1].astype(ft, copy=False)
        b = chips[:, ib : ib + 1].astype(ft, copy=False)
        den = a + b
        out = a - b
        with np.errstate(invalid="ignore", divide="ignore"):
            out /= den
        # 0/0 is already NaN; x/0 (only with negative inputs) is undefined too, not ±inf
        out[den == 0] = np.nan
        return out

    def output_spec(self, lead: tuple[int, ...], dtype: np.dtype) -> Spec:
        self._check_bands(lead)
        return (1, *lead[1:]), _float_dtype(dtype)

    def output_band_names(self, names: Sequence[str]) -> list[str]:
        return [self._label]

    def _params(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b}


@register
class NDVI(NormalizedDifference):
    """Normalised difference vegetation index ``(nir - red) / (nir + red)``.

    Examples
    --------
    >>> import numpy as np
    >>> NDVI(red=0, nir=1)(np.array([[[[1.0]], [[3.0]]]])).item()
    0.5
    """

    _label = "ndvi"

    def __init__(self, red: Band, nir: Band) -> None:
        super().__init__(a=nir, b=red)

    def _params(self) -> dict[str, Any]:
        return {"red": self.b, "nir": self.a}


@register
class NDWI(NormalizedDifference):
    """Normalised difference water index (McFeeters) ``(green - nir) / (green + nir)``.

    Examples
    --------
    >>> import numpy as np
    >>> NDWI(green=0, nir=1)(np.array([[[[3.0]], [[1.0]]]])).item()
    0.5
    """

    _label = "ndwi"

    def __init__(self, green: Band, nir: Band) -> None:
        super().__init__(a=green, b=nir)

    def _params(self) -> dict[str, Any]:
        return {"green": self.a, "nir": self.b}


@register
class NBR(NormalizedDifference):
    """Normalised burn ratio ``(nir - swir2) / (nir + swir2)``.

    Examples
    --------
    >>> import numpy as np
    >>> NBR(nir=0, swir2=1)(np.array([[[[3.0]], [[1.0]]]])).item()
    0.5
    """

    _label = "nbr"

    def __init__(self, nir: Band, swir2: Band) -> None:
        super().__init__(a=nir, b=swir2)

    def _params(self) -> dict[str, Any]:
        return {"nir": self.a, "swir2": self.b}


@register
class SelectBands(Operator):
    """Keep the given bands (indices or names), in that order.

    Examples
    --------
    >>> import numpy as np
    >>> SelectBands([2, 0])(np.arange(3)[None, :, None, None]).ravel().tolist()
    [2, 0]
    """

    _band_params = ("indices",)

    def __init__(self, indices: Band | Sequence[Band]) -> None:
        self.indices: list[Band] = [_band(v, "indices") for v in _as_list(indices)]
        if not self.indices:
            raise ParameterError("SelectBands needs at least one band")

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        self._check_bound()
        chips = np.asarray(chips)
        _need_bands(chips, self)
        return chips[:, _indices(self, self.indices, chips.shape[1])]

    def output_spec(self, lead: tuple[int, ...], dtype: np.dtype) -> Spec:
        self._check_bands(lead)
        return (len(self.indices), *lead[1:]), dtype

    def output_band_names(self, names: Sequence[str]) -> list[str]:
        out = []
        for v in self.indices:
            out.append(v if isinstance(v, str) else str(list(names)[v]))
        return out

    def _params(self) -> dict[str, Any]:
        return {"indices": list(self.indices)}


@register
class Astype(Operator):
    """Cast to ``dtype``.

    Float → integer casts clip to the integer range and truncate toward zero (numpy
    semantics); NaN/±inf become ``nodata`` (default: the type's maximum for unsigned,
    minimum for signed integers — the engine's own nodata convention).

    Examples
    --------
    >>> import numpy as np
    >>> Astype("uint8")(np.array([[[[-3.0, 7.9, 300.0, np.nan]]]])).ravel().tolist()
    [0, 7, 255, 255]
    """

    def __init__(self, dtype: npt.DTypeLike, nodata: float | None = None) -> None:
        self.dtype = np.dtype(dtype)
        self.nodata = nodata
        if nodata is not None and self.dtype.kind in "iu":
            info = np.iinfo(self.dtype)
            if not (float(nodata).is_integer() and info.min <= nodata <= info.max):
                raise ParameterError(f"nodata {nodata!r} is not a valid {self.dtype.name} value")

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        chips = np.asarray(chips)
        if self.dtype.kind in "iu" and chips.dtype.kind in "fc":
            info = np.iinfo(self.dtype)
            fill = self.nodata
            if fill is None:
                fill = info.max if self.dtype.kind == "u" else info.min
            bad = ~np.isfinite(chips)
            real = np.where(bad, 0, chips.real)
            out = np.clip(real, info.min, info.max).astype(self.dtype)
            out[bad] = fill
            return out
        return chips.astype(self.dtype)

    def output_spec(self, lead: tuple[int, ...], dtype: np.dtype) -> Spec:
        return lead, self.dtype

    def output_band_names(self, names: Sequence[str]) -> list[str]:
        return list(names)

    def _params(self) -> dict[str, Any]:
        return {"dtype": self.dtype.name, "nodata": self.nodata}


def _pair(value: Any, what: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ParameterError(f"{what} must be a (low, high) pair, got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ParameterError(f"{what} must be finite, got {value!r}")
    return lo, hi


@register
class Rescale(Operator):
    """Linear map of ``in_range`` onto ``out_range`` (float32, or float64 for float64 input).

    With ``clip`` the result is clipped to ``out_range``. NaN stays NaN.

    Examples
    --------
    >>> import numpy as np
    >>> Rescale((0, 10_000), (0, 1))(np.array([[[[-5, 2500, 20_000]]]])).ravel().tolist()
    [0.0, 0.25, 1.0]
    """

    def __init__(
        self,
        in_range: Sequence[float],
        out_range: Sequence[float] = (0.0, 1.0),
        clip: bool = True,
    ) -> None:
        self.in_range = _pair(in_range, "in_range")
        self.out_range = _pair(out_range, "out_range")
        if self.in_range[0] == self.in_range[1]:
            raise ParameterError(f"in_range must have distinct ends, got {in_range!r}")
        self.clip = bool(clip)

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        chips = np.asarray(chips)
        ft = _float_dtype(chips.dtype)
        (a, b), (c, d) = self.in_range, self.out_range
        gain = ft.type((d - c) / (b - a))
        out = (chips.astype(ft) - ft.type(a)) * gain + ft.type(c)
        if self.clip:
            np.clip(out, min(c, d), max(c, d), out=out)
        return out

    def output_spec(self, lead: tuple[int, ...], dtype: np.dtype) -> Spec:
        return lead, _float_dtype(dtype)

    def output_band_names(self, names: Sequence[str]) -> list[str]:
        return list(names)

    def _params(self) -> dict[str, Any]:
        return {
            "in_range": list(self.in_range),
            "out_range": list(self.out_range),
            "clip": self.clip,
        }


def _limits(value: Any) -> tuple[float | tuple[float, ...], float | tuple[float, ...]]:
    try:
        lo, hi = value
    except (TypeError, ValueError):
        raise ParameterError(f"limits must be a (low, high) pair, got {value!r}") from None

    def norm(v: Any) -> float | tuple[float, ...]:
        arr = np.asarray(v, dtype=np.float64)
        if arr.ndim > 1:
            raise ParameterError(f"limits must be numbers or 1-D per-band lists, got {v!r}")
        return float(arr) if arr.ndim == 0 else tuple(float(x) for x in arr)

    return norm(lo), norm(hi)


@register
class PercentileClip(Operator):
    """Clip each band to its ``[p_min, p_max]`` percentiles (optionally stretch to [0, 1]).

    Percentiles are taken per band (the first non-spatial axis), ignoring NaN.

    ``per="chip"``
        Percentiles of each chip on its own. Cheap and needs no pass over the scene, but
        it is *not* a pointwise operator: overlapping chips stretch the same pixel
        differently, the stitched result blends those (smoothly, thanks to the window),
        it depends on the chip grid and differs from clipping the whole scene.
    ``per="global"``
        Clip to fixed scene-wide ``limits=(lo, hi)`` (numbers, or per-band lists)
        computed beforehand, e.g. with :func:`global_percentiles`. Pointwise: the
        stitched result equals the whole-scene result exactly.

    ``normalize=True`` maps ``[lo, hi]`` onto ``[0, 1]`` (0 where ``lo == hi``). Output is
    float32 (float64 for float64 input); NaN stays NaN.

    Examples
    --------
    >>> import numpy as np
    >>> chips = np.arange(101.0).reshape(1, 1, 1, 101)
    >>> out = PercentileClip(5, 95)(chips)
    >>> float(out.min()), float(out.max())
    (5.0, 95.0)
    >>> PercentileClip(per="global", limits=(0, 10), normalize=True)(chips).max().item()
    1.0
    """

    def __init__(
        self,
        p_min: float = 2.0,
        p_max: float = 98.0,
        per: str = "chip",
        limits: Sequence[Any] | None = None,
        normalize: bool = False,
    ) -> None:
        self.p_min, self.p_max = float(p_min), float(p_max)
        if not 0.0 <= self.p_min < self.p_max <= 100.0:
            raise ParameterError(f"need 0 <= p_min < p_max <= 100, got {p_min!r}, {p_max!r}")
        if per not in ("chip", "global"):
            raise ParameterError(f"per must be 'chip' or 'global', got {per!r}")
        self.per = per
        if per == "global" and limits is None:
            raise ParameterError(
                "PercentileClip(per='global') needs limits=(lo, hi); compute them with "
                "patchflow.ops.global_percentiles(data, p_min, p_max)"
            )
        if per == "chip" and limits is not None:
            raise ParameterError("limits= only applies to per='global'")
        self.limits = None if limits is None else _limits(limits)
        self.normalize = bool(normalize)

    def _chip_limits(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = x.shape[0]
        nb = x.shape[1] if x.ndim > 3 else 1
        flat = x.reshape(n, nb, -1)
        q = [self.p_min, self.p_max]
        with np.errstate(all="ignore"):
            if np.isnan(flat).any():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    lo, hi = np.nanpercentile(flat, q, axis=-1)
            else:
                lo, hi = np.percentile(flat, q, axis=-1)
        shape = (n, nb, *([1] * (x.ndim - 2))) if x.ndim > 3 else (n, 1, 1)
        return lo.reshape(shape).astype(x.dtype), hi.reshape(shape).astype(x.dtype)

    def _global_limits(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert self.limits is not None
        out = []
        for v in self.limits:
            arr = np.asarray(v, x.dtype)
            if arr.ndim == 1:
                if x.ndim < 4 or x.shape[1] != arr.size:
                    raise ParameterError(
                        f"{self!r}: {arr.size} per-band limits for chips of shape {x.shape}"
                    )
                arr = arr.reshape(1, arr.size, *([1] * (x.ndim - 2)))
            out.append(arr)
        return out[0], out[1]

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        chips = np.asarray(chips)
        x = chips.astype(_float_dtype(chips.dtype))
        lo, hi = self._chip_limits(x) if self.per == "chip" else self._global_limits(x)
        out = np.clip(x, lo, hi)
        if self.normalize:
            span = hi - lo
            out -= lo
            np.divide(out, span, out=out, where=np.broadcast_to(span != 0, out.shape))
            out[np.broadcast_to(span == 0, out.shape) & ~np.isnan(out)] = 0
        return out

    def output_spec(self, lead: tuple[int, ...], dtype: np.dtype) -> Spec:
        for v in self.limits or ():
            if isinstance(v, tuple) and (not lead or lead[0] != len(v)):
                bands = f"{lead[0]} bands" if lead else "no band dim"
                raise ParameterError(
                    f"{self!r}: {len(v)} per-band limits but the input chips have {bands} "
                    f"(non-spatial shape {lead}); give one limit per band, or plain numbers"
                )
        return lead, _float_dtype(dtype)

    def output_band_names(self, names: Sequence[str]) -> list[str]:
        return list(names)

    def _params(self) -> dict[str, Any]:
        return {
            "p_min": self.p_min,
            "p_max": self.p_max,
            "per": self.per,
            "limits": None if self.limits is None else list(self.limits),
            "normalize": self.normalize,
        }


def global_percentiles(
    data: Any,
    p_min: float = 2.0,
    p_max: float = 98.0,
    *,
    per_band: bool = True,
    max_samples: int = 1_000_000,
    nodata: Any = None,
) -> tuple[Any, Any]:
    """Scene-wide percentiles for ``PercentileClip(per="global", limits=...)``.

    Method: *exact* percentiles (``numpy.nanpercentile``) of a regular strided sample —
    every ``step``-th row and column, with ``step`` the smallest making at most
    ``max_samples`` pixels per band. Scenes up to ``max_samples`` pixels are used whole
    (exact); larger ones are approximate (sampling error only: a 10⁶-pixel sample puts a
    percentile within about ±0.1 percentile point). The sample is read lazily through dask,
    chunk by chunk, so the scene is never loaded whole.

    Parameters
    ----------
    data
        DataArray (spatial dims found via rioxarray, others moved first) or array
        ``(*lead, y, x)``, dask or numpy.
    p_min, p_max
        Percentiles in [0, 100].
    per_band
        ``True``: one value per element of the first non-spatial dim (lists);
        ``False`` (or no non-spatial dim): one value over everything (floats).
    max_samples
        Pixels per band in the sample.
    nodata
        Value to ignore besides NaN (default: a DataArray's ``rio.nodata``).

    Returns
    -------
    (lo, hi)
        Floats, or per-band lists of floats.

    Examples
    --------
    >>> from patchflow.synthetic import make_scene
    >>> lo, hi = global_percentiles(make_scene((300, 300)), 2, 98)
    >>> len(lo), all(a < b for a, b in zip(lo, hi))
    (2, True)
    """
    if not 0.0 <= p_min < p_max <= 100.0:
        raise ParameterError(f"need 0 <= p_min < p_max <= 100, got {p_min!r}, {p_max!r}")
    arr = data
    if hasattr(data, "dims") and hasattr(data, "rio"):
        from patchflow._xr import spatial_dims

        y, x = spatial_dims(data)
        others = [d for d in data.dims if d not in (y, x)]
        arr = data.transpose(*others, y, x).data
        if nodata is None:
            nodata = data.rio.nodata
    if arr.ndim < 2:
        raise ParameterError(f"global_percentiles needs (…, y, x) data, got shape {arr.shape}")
    h, w = arr.shape[-2:]
    step = max(1, math.ceil(math.sqrt(h * w / max(int(max_samples), 1))))
    sample = arr[..., ::step, ::step]
    if hasattr(sample, "compute"):
        sample = sample.compute()
    sample = np.asarray(sample, dtype=np.float64)
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        sample = np.where(sample == nodata, np.nan, sample)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if per_band and sample.ndim > 2:
            flat = sample.reshape(sample.shape[0], -1)
            lo, hi = np.nanpercentile(flat, [p_min, p_max], axis=1)
            return [float(v) for v in lo], [float(v) for v in hi]
        lo, hi = np.nanpercentile(sample, [p_min, p_max])
    return float(lo), float(hi)


# --------------------------------------------------------------------------- composites

#: statistics :class:`Composite` can reduce a time stack with
COMPOSITE_STATS: tuple[str, ...] = ("median", "mean", "min", "max")


def _nan_median(x: np.ndarray, axis: int) -> np.ndarray:
    """``numpy.nanmedian`` along ``axis`` by one sort (NaN sorts last), without warnings.

    All-NaN slices give NaN silently; odd counts return the middle value exactly.
    """
    s = np.sort(x, axis=axis)
    k = np.sum(~np.isnan(x), axis=axis, keepdims=True)
    lo = np.take_along_axis(s, np.maximum(k - 1, 0) // 2, axis=axis)
    hi = np.take_along_axis(s, np.minimum(k // 2, x.shape[axis] - 1), axis=axis)
    with np.errstate(invalid="ignore", over="ignore"):
        mid = np.where(lo == hi, lo, (lo + hi) / 2)
    mid[k == 0] = np.nan
    return np.squeeze(mid, axis=axis)


def _nan_mean(x: np.ndarray, axis: int) -> np.ndarray:
    valid = ~np.isnan(x)
    count = np.sum(valid, axis=axis).astype(x.dtype)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # inf - inf, 0/0
        total = np.sum(np.where(valid, x, 0), axis=axis, dtype=x.dtype)
        return np.asarray(total / count)  # NaN where no date is valid


_REDUCERS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "median": _nan_median,
    "mean": _nan_mean,
    # fmin/fmax skip NaN and give NaN only for all-NaN slices, without a warning
    "min": lambda x, axis: np.fmin.reduce(x, axis=axis),
    "max": lambda x, axis: np.fmax.reduce(x, axis=axis),
}


@register
class Composite(Operator):
    """Per-pixel temporal composite of a time stack (median, mean, min or max), NaN-skipping.

    For ``apply(stack, Composite(), over="time")`` on a ``(time, band, y, x)`` stack (the
    order stackstac gives): each chip is ``(time, band, h, w)``, batched
    ``(n, time, band, h, w)``, and the output ``(band, h, w)`` (``(n, band, h, w)``), float32
    (float64 for float64 input). Each band of each pixel is reduced over the dates where it
    is not NaN, exactly like ``numpy.nanmedian``/``nanmean``/``nanmin``/``nanmax``; a band
    NaN on every date gives NaN, without a RuntimeWarning.

    Parameters
    ----------
    stat
        ``"median"`` (default), ``"mean"``, ``"min"`` or ``"max"``.
    count
        Add one last band, ``"count"``: the number of valid observations of the pixel —
        the dates on which every band is finite — as float.

    Examples
    --------
    >>> import numpy as np
    >>> stack = np.array([1.0, np.nan, 3.0, 10.0]).reshape(1, 4, 1, 1, 1)  # n, time, band, h, w
    >>> Composite("median", count=True)(stack).ravel().tolist()
    [3.0, 3.0]
    >>> Composite("max").output_spec((4, 3), np.dtype("uint16"))
    ((3,), dtype('float32'))
    """

    def __init__(self, stat: str = "median", count: bool = False) -> None:
        if stat not in COMPOSITE_STATS:
            close = difflib.get_close_matches(str(stat), COMPOSITE_STATS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ParameterError(
                f"unknown Composite stat {stat!r}; valid: {', '.join(COMPOSITE_STATS)}{hint}"
            )
        if not isinstance(count, bool | np.bool_):
            raise ParameterError(f"Composite count must be True or False, got {count!r}")
        self.stat = stat
        self.count = bool(count)

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        chips = np.asarray(chips)
        if chips.ndim != 5:
            raise ParameterError(
                f"{self!r} needs chips (n, time, band, h, w), got shape {chips.shape}: run it "
                "with apply(..., over='time') on a (time, band, y, x) stack (for one chip "
                "(time, band, h, w), call it on chip[None])"
            )
        x = chips.astype(_float_dtype(chips.dtype), copy=False)
        out = _REDUCERS[self.stat](x, 1)
        if self.count:
            valid = np.isfinite(x).all(axis=2).sum(axis=1)  # (n, h, w)
            out = np.concatenate([out, valid[:, None].astype(out.dtype)], axis=1)
        return out

    def output_spec(self, lead: tuple[int, ...], dtype: np.dtype) -> Spec:
        if len(lead) != 2:
            raise ParameterError(
                f"{self!r} reduces over time: its chips must be (time, band, h, w), but "
                f"these have the non-spatial shape {lead}. Pass over='time' (without it the "
                "operator runs per date on (band, h, w)); for a (time, y, x) stack add a "
                "band dim first: stack.expand_dims('band', axis=1)"
            )
        return (lead[1] + int(self.count),), _float_dtype(dtype)

    def output_band_names(self, names: Sequence[str]) -> list[str]:
        return [*names, "count"] if self.count else list(names)

    def _params(self) -> dict[str, Any]:
        return {"stat": self.stat, "count": self.count}


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
