"""The operator contract: calling convention, :class:`Operator`, registry, configs, ``|``.

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
  has a coordinate on its band dim. Bands are always the *last* non-spatial axis of a chip
  (axis -3 of a batch; axis 1 when the chips are ``(n, band, h, w)``): with
  ``apply(..., over="time")`` a chip is ``(time, band, h, w)``, and a band op then works on
  every date. Band references are Python-style: 0-based positions
  (negative ones count from the end) or names. A name the input lacks, a name on an input
  without band labels, or a position out of range fails while ``patchflow.apply`` plans
  (in ``bind`` and ``output_spec``), not when the graph computes; a position equal to the
  band count is called out as a likely GDAL-style 1-based number.

Operators compose with ``|`` into a :class:`Sequential`, print their full configuration,
round-trip through :meth:`Operator.get_config` / :meth:`Operator.from_config` and JSON
(:func:`to_json` / :func:`from_json`), compare equal by configuration and pickle (pickle
and cloudpickle). Loading a config only ever instantiates classes registered with
:func:`register` by name: it never evaluates code or unpickles anything.

Your own code as data
---------------------
:class:`Imported` names a function, factory, operator class or operator instance of your
own module by its import path (``"mypkg.ops:cloud_mask"``) plus JSON parameters, so a
pipeline holding it still has a config (``patchflow resume`` rebuilds it from the store).
Building one from a config *runs the code it names*, as ``python -m`` would; so do configs
naming a model file (:class:`~patchflow.ops.models.TorchScript`). Such configs load only
with ``from_config(config, trusted=True)``: give it for configs you wrote or trust, never
for configs from elsewhere (a web request, a downloaded file).

Examples
--------
>>> import numpy as np
>>> from patchflow.ops import NDVI, DNToReflectance
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

import contextvars
import copy
import difflib
import functools
import importlib
import inspect
import json
import math
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, TypeVar, overload

import numpy as np
import numpy.typing as npt

from patchflow.errors import (
    ConfigError,
    ImportTargetError,
    InputTypeError,
    ParameterError,
    PatchflowError,
    UserCodeError,
    _w,
)

__all__ = [
    "IMPORT_TARGET",
    "Batched",
    "ConfigError",
    "Imported",
    "Lambda",
    "Operator",
    "Sequential",
    "as_operator",
    "batched",
    "from_config",
    "from_json",
    "is_batched",
    "op_output_spec",
    "op_pointwise",
    "op_scale",
    "register",
    "registered_op",
    "registered_ops",
    "resolve_import",
    "signature_text",
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


def _folded(name: str) -> str:
    return name.replace("-", "").replace("_", "").casefold()


def registered_op(name: str) -> type[Operator] | None:
    """The operator class registered as ``name``, or ``None``.

    An exact name wins; otherwise case, ``-`` and ``_`` are ignored (``ndvi``,
    ``dn-to-reflectance``), which is how command lines and hand-written configs spell them.

    Raises
    ------
    ConfigError
        If ``name`` matches several registered names once case is ignored.

    Examples
    --------
    >>> registered_op("rescale").__name__, registered_op("dn_to_reflectance").__name__
    ('Rescale', 'DNToReflectance')
    >>> registered_op("median") is None
    True
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    key = _folded(name)
    matches = sorted(k for k in _REGISTRY if _folded(k) == key)
    if len(matches) > 1:
        raise ConfigError(
            f"operator name {name!r} is ambiguous: it matches the registered operators "
            f"{', '.join(matches)}; spell one exactly"
        )
    return _REGISTRY[matches[0]] if matches else None


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


#: set while a ``trusted=True`` config is being built: operators that run code they name
#: (:class:`Imported`, TorchScript files) load only then
_TRUSTED: contextvars.ContextVar[bool] = contextvars.ContextVar("patchflow_trusted", default=False)


def from_config(config: Config, *, trusted: bool = False) -> Operator:
    """Build an operator from ``get_config()`` output (a dict, or a list for a pipeline).

    Only classes registered with :func:`register` can be named; nothing is evaluated or
    unpickled.

    Parameters
    ----------
    config
        ``{"op": name, "params": {...}}`` or a list of them.
    trusted
        Also build operators that run code the config names: :class:`Imported` (imports
        a module, may call a factory in it) and TorchScript model files. Pass it only for
        configs you wrote or trust, as you would only ``python -m`` a module you trust.

    Raises
    ------
    ConfigError
        Malformed config, unknown operator name (the message lists registered names),
        parameters the operator rejects, or code-naming operators without ``trusted``.

    Examples
    --------
    >>> from_config([{"op": "DNToReflectance", "params": {"scale": 1e-4}},
    ...              {"op": "NDVI", "params": {"red": 0, "nir": 1}}])
    DNToReflectance(scale=0.0001, offset=0.0) | NDVI(red=0, nir=1)
    >>> from_config({"op": "Imported", "params": {"target": "numpy:negative"}})
    Traceback (most recent call last):
    ...
    patchflow.errors.ConfigError: the config names code to run (Imported \
'numpy:negative'); load it with from_config(config, trusted=True) (or from_json(text, \
trusted=True)) if you trust where it comes from: building it imports and runs that code
    >>> from_config({"op": "Imported", "params": {"target": "numpy:negative"}}, trusted=True)
    Imported('numpy:negative')
    """
    if trusted and not _TRUSTED.get():
        token = _TRUSTED.set(True)
        try:
            return from_config(config)
        finally:
            _TRUSTED.reset(token)
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
    if cls._runs_code and not _TRUSTED.get():
        shown = params.get("target", params.get("path", ""))
        raise ConfigError(
            f"the config names code to run ({name} {shown!r}); load it with "
            "from_config(config, trusted=True) (or from_json(text, trusted=True)) if you "
            "trust where it comes from: building it imports and runs that code"
        )
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
    >>> from patchflow.ops import NDVI
    >>> to_json(NDVI(red=0, nir=1))
    '{"op": "NDVI", "params": {"red": 0, "nir": 1}}'
    """
    return json.dumps(op.get_config(), **kwargs)


def from_json(text: str, *, trusted: bool = False) -> Operator:
    """Build an operator from a JSON config (see :func:`from_config`, and its ``trusted``).

    Examples
    --------
    >>> from_json('{"op": "NDWI", "params": {"green": "green", "nir": "nir"}}')
    NDWI(green='green', nir='nir')
    """
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"operator config is not valid JSON: {exc}") from exc
    return from_config(config, trusted=trusted)


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
    >>> from patchflow.ops import SelectBands
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
    #: each output pixel depends only on the same input pixel (all its bands), whatever
    #: the chip: the engine then runs the op once per block instead of on overlapping
    #: chips, which gives the same stitched result (see :func:`op_pointwise`)
    pointwise: ClassVar[bool] = False
    #: the output values are input values (a band subset, a cast that keeps them): what
    #: the input's attrs say of its values (units, long_name) stays true; how they were
    #: packed (scale_factor, add_offset) does not carry over: results are never packed
    _keeps_values: ClassVar[bool] = False
    #: registry name (set by :func:`register`)
    _op_name: ClassVar[str | None] = None
    #: building it from a config runs code the config names (imports a module, loads a
    #: TorchScript file): :func:`from_config` then needs ``trusted=True``
    _runs_code: ClassVar[bool] = False
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

        ``band_names`` are the labels of the input's band dim (its last non-spatial dim, e.g. the
        ``band`` coordinate of a ``(band, y, x)`` scene). Integer indices are checked
        against their number. Operators without band parameters return themselves.

        Examples
        --------
        >>> from patchflow.ops import NDVI
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
                f"{self!r} addresses bands by name, but the input's {lead[-1]} bands have no "
                "names (no string coordinate on the band dim); use 0-based positions, or "
                "label the bands, e.g. obj.assign_coords(band=['red', 'nir', ...]) (a GeoTIFF's "
                "band descriptions are used when every band has a distinct one)"
            )
        for band in names:
            if not -lead[-1] <= band < lead[-1]:
                raise ParameterError(_out_of_range(repr(self), band, lead[-1]))

    # ---- config

    def is_pointwise(self) -> bool:
        """See :attr:`pointwise` (instances may depend on their parameters)."""
        return bool(self.pointwise)

    def keeps_values(self) -> bool:
        """Whether every output value is an input value, unchanged (e.g. a band subset):
        the input's value attrs then carry over to the result."""
        return bool(self._keeps_values)

    def keeps_units(self) -> bool:
        """Whether the output is in the input's units, its values changed (haze removed
        from reflectance): the ``units`` attr then carries over, the input's other claims
        about its values (name, range, encoding) do not. True whenever
        :meth:`keeps_values` is."""
        return self.keeps_values()

    def output_attrs(self) -> dict[str, Any]:
        """Attrs that describe the output values (``long_name``, ``units``); none here."""
        return {}

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
    def from_config(cls, config: Config, *, trusted: bool = False) -> Operator:
        """Build an operator from a config (see :func:`from_config`)."""
        op = from_config(config, trusted=trusted)
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
    >>> from patchflow.ops import NDVI
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


def op_pointwise(op: Any) -> bool:
    """Whether ``op`` is declared pointwise (output pixel = f(input pixel's bands)).

    Operators say so with ``pointwise = True`` (or :meth:`Operator.is_pointwise`), plain
    callables with a ``pointwise = True`` attribute, :class:`Lambda` with
    ``pointwise=True``; a :class:`Sequential` is pointwise when every step is. A wrong
    ``True`` gives wrong results near chip borders, so only declare what holds.

    Examples
    --------
    >>> from patchflow.ops import NDVI, DNToReflectance, Lambda
    >>> op_pointwise(DNToReflectance() | NDVI(red=0, nir=1)), op_pointwise(lambda c: c)
    (True, False)
    """
    if isinstance(op, Operator):
        return op.is_pointwise()
    if isinstance(op, Batched):
        return op_pointwise(op.fn)
    return getattr(op, "pointwise", False) is True


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
    >>> from patchflow.ops import NDVI, DNToReflectance, Rescale
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

    def is_pointwise(self) -> bool:
        return all(op_pointwise(op) for op in self.ops)

    def keeps_values(self) -> bool:
        return all(op.keeps_values() for op in self.ops)

    def keeps_units(self) -> bool:
        return all(op.keeps_units() for op in self.ops)

    def output_attrs(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {}
        for op in self.ops:  # what the last value-changing step says, kept by later steps
            if op.keeps_values():
                kept = attrs
            elif op.keeps_units():
                kept = {k: v for k, v in attrs.items() if k == "units"}
            else:
                kept = {}
            attrs = {**kept, **op.output_attrs()}
        return attrs

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
    pointwise
        ``fn`` computes each output pixel from the same input pixel only (band math):
        the engine may then run it once per block (see :func:`op_pointwise`).

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
        pointwise: bool = False,
    ) -> None:
        if not callable(fn):
            raise ParameterError(f"Lambda needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self.fn_pointwise = bool(pointwise)
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
            "pointwise": self.fn_pointwise,
        }

    def is_pointwise(self) -> bool:
        return self.fn_pointwise

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
        if self.fn_pointwise:
            args.append("pointwise=True")
        return f"Lambda({', '.join(args)})"


def _positive(value: Any, what: str) -> float:
    out = float(value)
    if not (math.isfinite(out) and out > 0):
        raise ParameterError(f"{what} must be a positive finite number, got {value!r}")
    return out


# --------------------------------------------------------------------------- your own code

#: ``MODULE:NAME``, dotted on both sides (``pkg.mod:Class.factory``)
IMPORT_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def _signature(target: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(target)
    except (TypeError, ValueError):  # builtins and C callables may have none
        return None


def _shown(value: Any) -> str:
    """A default as it would be written in JSON (``[0.0, 1.0]``, ``true``), else its repr."""
    try:
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    except (TypeError, ValueError):
        return repr(value)


def signature_text(sig: inspect.Signature, *, skip: Sequence[str] = ()) -> str:
    """The named parameters of ``sig`` as a user sets them: ``a (required), b=[0.0, 1.0]``.

    Examples
    --------
    >>> def f(chip, gain=1.0, *, clip=True): ...
    >>> signature_text(inspect.signature(f), skip=["chip"])
    'gain=1.0, clip=true'
    """
    parts = []
    for p in sig.parameters.values():
        if p.kind not in _NAMED or p.name in skip:
            continue
        required = p.default is inspect.Parameter.empty
        parts.append(f"{p.name} (required)" if required else f"{p.name}={_shown(p.default)}")
    return ", ".join(parts) or "none"


def param_problem(
    name: str,
    sig: inspect.Signature,
    params: Mapping[str, Any],
    *,
    skip: Sequence[str] = (),
    require: bool = True,
) -> str | None:
    """Why ``params`` do not fit ``sig`` (an unknown key, with the closest real one, or a
    missing required one), naming the real parameters; ``None`` when they fit."""
    real = [p.name for p in sig.parameters.values() if p.kind in _NAMED and p.name not in skip]
    listed = signature_text(sig, skip=skip)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    for key in params:
        if key in real or takes_any:
            continue
        close = difflib.get_close_matches(key, real, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{name} has no parameter {key!r}{hint}; its parameters: {listed}"
    if not require:
        return None
    missing = [
        p.name
        for p in sig.parameters.values()
        if p.kind in _NAMED
        and p.name not in skip
        and p.default is inspect.Parameter.empty
        and p.name not in params
    ]
    if missing:
        needs = ", ".join(f"{m}=VALUE" for m in missing)
        return f"{name} needs {needs}; its parameters: {listed}"
    return None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, PatchflowError) else f"{type(exc).__name__}: {text}"


def _target_error(target: str, detail: str) -> ImportTargetError:
    return ImportTargetError(f"{target}: {detail}", detail=detail, part="target")


def _params_error(detail: str) -> ImportTargetError:
    return ImportTargetError(detail, detail=detail, part="params")


def _import_module(module_name: str, target: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            top = module_name.split(".")[0]
            raise _target_error(
                target,
                f"no module named {missing!r} on the Python path; put the directory holding "
                f"{top}.py (or the {top} package) on {_w('pythonpath')}",
            ) from None
        raise UserCodeError(f"importing {module_name} ({target}) failed: {_one_line(exc)}") from exc
    except Exception as exc:  # the user's module raised while importing
        raise UserCodeError(f"importing {module_name} ({target}) failed: {_one_line(exc)}") from exc


def _attribute(module: Any, target: str) -> Any:
    obj = module
    for part in target.partition(":")[2].split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            names = [n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n))]
            close = difflib.get_close_matches(part, names, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise _target_error(
                target, f"{getattr(obj, '__name__', obj)!r} has no attribute {part!r}{hint}"
            ) from None
    return obj


def _per_chip(fn: Callable[..., Any], params: Mapping[str, Any], batched: bool) -> Operator:
    bound: Callable[..., Any] = functools.partial(fn, **params) if params else fn
    return Lambda(bound, batched=batched, pointwise=op_pointwise(fn))


def _call(target: str, factory: Callable[..., Any], params: Mapping[str, Any]) -> Operator:
    try:
        made = factory(**params)
    except (PatchflowError, TypeError, ValueError) as exc:
        shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
        raise _params_error(f"{target}({shown}) failed: {_one_line(exc)}") from exc
    if not callable(made):
        raise _target_error(
            target,
            f"calling it returned {type(made).__name__}, not an operator (a factory must "
            "return a callable or a patchflow.ops.Operator)",
        )
    return as_operator(made)


def import_callable(target: str) -> Callable[..., Any]:
    """The callable ``"MODULE:NAME"`` names (importing ``MODULE``, as ``python -m`` would):
    what :class:`~patchflow.ops.combinators.Tap`, predicates and masks given by import path
    call. A name that is not callable is a :class:`~patchflow.errors.ConfigError`."""
    fn = _attribute(_import_module(target.partition(":")[0], target), target)
    if not callable(fn):
        raise ConfigError(f"{target} is {type(fn).__name__}, not a callable")
    return fn


def resolve_import(target: str, params: Mapping[str, Any] | None = None) -> Operator:
    """The operator ``"MODULE:NAME"`` names, built with ``params``: :class:`Imported`'s rule.

    Imports ``MODULE`` (running it, as ``python -m`` would) and takes ``NAME`` in it. Then:
    an :class:`Operator` instance is used as is (it takes no ``params``); a class is called
    with ``params``; a function that still needs exactly one positional argument once
    ``params`` are bound is the per-chip function (a :class:`Lambda`, batched when marked
    with :func:`batched`, pointwise when it says so), its keyword parameters bound to
    ``params``; a function that needs none is a factory, called once with ``params``, which
    must return an operator or a callable.

    Raises
    ------
    ImportTargetError
        No such module on the Python path, no such name in it, not an operator, or
        ``params`` that do not fit (unknown or missing, with the real parameters listed;
        a factory or class rejecting them). ``part`` says which half is wrong.
    UserCodeError
        The module raised while being imported.

    Examples
    --------
    >>> import numpy as np
    >>> op = resolve_import("numpy:clip", {"a_min": 0, "a_max": 1})
    >>> op(np.array([[[[-1.0, 0.5, 2.0]]]])).ravel().tolist()
    [0.0, 0.5, 1.0]
    """
    params = dict(params or {})
    if not isinstance(target, str) or not IMPORT_TARGET.match(target):
        raise ImportTargetError(
            f"an imported operator is named 'MODULE:NAME' (a module path, a colon and a name "
            f"in it, e.g. 'mypkg.ops:cloud_mask'), got {target!r}",
            part="target",
        )
    obj = _attribute(_import_module(target.partition(":")[0], target), target)
    if isinstance(obj, Operator):
        if params:
            raise _params_error(
                f"{target} is an operator instance ({obj!r}); it takes no "
                f"{_w('op_args')} (name its class or a factory to pass parameters)"
            )
        return obj
    if not callable(obj):
        raise _target_error(target, f"{type(obj).__name__} is not callable")
    if isinstance(obj, Batched):
        sig = _signature(obj.fn)
        problem = None if sig is None else param_problem(target, sig, params, require=False)
        if problem:
            raise _params_error(problem)
        return _per_chip(obj.fn, params, batched=True)
    sig = _signature(obj)
    if isinstance(obj, type):
        problem = None if sig is None else param_problem(target, sig, params)
        if problem:
            raise _params_error(problem)
        return _call(target, obj, params)
    if sig is None:
        if params:
            raise _params_error(
                f"{target} has no inspectable signature, so parameters cannot be bound to "
                "it; wrap it in a Python function"
            )
        return _per_chip(obj, {}, batched=is_batched(obj))
    needed = [
        p
        for p in sig.parameters.values()
        if p.default is inspect.Parameter.empty
        and p.name not in params
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    per_chip = len(needed) == 1 and needed[0].kind is not inspect.Parameter.KEYWORD_ONLY
    # the chip is no parameter: leave it out of the parameters an error lists
    skip = (needed[0].name,) if per_chip else ()
    problem = param_problem(target, sig, params, skip=skip, require=False)
    if problem:
        raise _params_error(problem)
    if not needed:
        return _call(target, obj, params)
    if per_chip:
        return _per_chip(obj, params, batched=is_batched(obj))
    rest = ", ".join(f"{p.name}=VALUE" for p in needed[1:])
    raise _params_error(
        f"{target} needs {rest} (its first parameter, {needed[0].name}, receives the chip); "
        f"its parameters: {signature_text(sig)}"
    )


def _json_params(params: Mapping[str, Any] | None, target: str) -> dict[str, Any]:
    """``params`` as plain JSON values (tuples → lists, numpy scalars → Python), so the
    operator is called with exactly what its config records."""

    def plain(value: Any, where: str) -> Any:
        if isinstance(value, np.generic):
            value = value.item()
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, (list, tuple)):
            return [plain(v, where) for v in value]
        if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
            return {k: plain(v, f"{where}.{k}") for k, v in value.items()}
        raise ConfigError(
            f"Imported({target!r}) parameter {where} = {_short(value)} is not a JSON value "
            "(numbers, strings, booleans, null, lists and string-keyed mappings): the "
            "parameters are the operator's config, written to stores and pipeline files"
        )

    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise ConfigError(f"Imported({target!r}) params must be a mapping, got {params!r}")
    return {str(k): plain(v, str(k)) for k, v in params.items()}


@register
class Imported(Operator):
    """An operator from your own code, named by its import path: a config, not a pickle.

    ``Imported("mypkg.ops:cloud_mask", params={"threshold": 0.3})`` stands for what
    ``mypkg.ops.cloud_mask`` gives with those parameters (see :func:`resolve_import`): a
    per-chip function with the parameters bound to its keywords, a factory called with
    them, an :class:`Operator` class instantiated with them, or a module-level operator
    instance. Its config is the import path and the JSON parameters, so a pipeline holding
    it writes to JSON/YAML and into a store's job record, and ``patchflow resume`` rebuilds
    it. This is what ``patchflow apply --op MODULE:CALLABLE`` and pipeline steps naming
    ``MODULE:CALLABLE`` build.

    The module is imported lazily: on first use (the engine asks for the output spec while
    planning) and again in each process the operator is unpickled in (its pickle is the
    path and parameters, never the function), so dask workers need the module importable,
    as they would to unpickle the function itself.

    Building or resolving one **runs the code it names**, as ``python -m MODULE`` would:
    name only modules you trust. Loading it from a config therefore needs
    ``from_config(config, trusted=True)``.

    Parameters
    ----------
    target
        ``"MODULE:NAME"`` (``NAME`` may be dotted: ``"pkg.mod:Class.make"``).
    params
        Keyword arguments for ``NAME``: JSON values only (numbers, strings, booleans,
        null, lists, string-keyed mappings), as the config records them.

    Raises
    ------
    ConfigError
        ``target`` is not ``MODULE:NAME``, or ``params`` are not JSON values.
    ImportTargetError, UserCodeError
        On first use: see :func:`resolve_import`.

    Examples
    --------
    >>> import numpy as np
    >>> op = Imported("numpy:clip", params={"a_min": 0, "a_max": 1})
    >>> op
    Imported('numpy:clip', params={'a_min': 0, 'a_max': 1})
    >>> op(np.array([[[[-1.0, 0.5, 2.0]]]])).ravel().tolist()
    [0.0, 0.5, 1.0]
    >>> from_json(to_json(op), trusted=True) == op
    True
    """

    _runs_code = True

    def __init__(self, target: str, *, params: Mapping[str, Any] | None = None) -> None:
        if not isinstance(target, str) or not IMPORT_TARGET.match(target):
            raise ConfigError(
                "Imported needs 'MODULE:NAME' (a module path, a colon and a name in it, "
                f"e.g. 'mypkg.ops:cloud_mask'), got {target!r}"
            )
        self.target = target
        self.params = _json_params(params, target)
        #: band names the engine bound the operator to (re-applied after unpickling)
        self._band_names: list[str] | None = None
        self._op: Operator | None = None
        self._lock = threading.Lock()

    # ---- the operator it stands for, built once per process

    def resolve(self) -> Operator:
        """The operator :attr:`target` names with :attr:`params` (imported on first call).

        Raises
        ------
        ImportTargetError, UserCodeError
            See :func:`resolve_import`.
        """
        op = self._op
        if op is not None:
            return op
        with self._lock:
            if self._op is None:
                op = resolve_import(self.target, self.params)
                if self._band_names is not None:
                    op = op.bind(self._band_names)
                self._op = op
            return self._op

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_op"] = None  # the path and parameters travel, never the user's objects
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        return np.asarray(self.resolve()(chips))

    # ---- declarations: those of the operator it stands for

    @property
    def scale(self) -> float:
        return self.resolve().scale

    def output_spec(self, lead: tuple[int, ...], dtype: np.dtype) -> Spec | None:
        return self.resolve().output_spec(lead, dtype)

    def output_band_names(self, names: Sequence[str]) -> list[str] | None:
        return self.resolve().output_band_names(names)

    def is_pointwise(self) -> bool:
        return self.resolve().is_pointwise()

    def keeps_values(self) -> bool:
        return self.resolve().keeps_values()

    def keeps_units(self) -> bool:
        return self.resolve().keeps_units()

    def output_attrs(self) -> dict[str, Any]:
        return self.resolve().output_attrs()

    def _needs_names(self) -> bool:
        return self.resolve()._needs_names()

    def bind(self, band_names: Sequence[str]) -> Imported:
        if not self.resolve()._needs_names():
            return self
        new = Imported(self.target, params=self.params)
        new._band_names = [str(n) for n in band_names]
        return new

    def _params(self) -> dict[str, Any]:
        return {"target": self.target, "params": self.params}

    @classmethod
    def _from_params(cls, params: dict[str, Any]) -> Imported:
        unknown = set(params) - {"target", "params"}
        if unknown:
            raise ConfigError(f"Imported takes 'target' and 'params', got {sorted(unknown)}")
        return cls(params.get("target"), params=params.get("params"))  # type: ignore[arg-type]

    def __repr__(self) -> str:
        if not self.params:
            return f"Imported({self.target!r})"
        return f"Imported({self.target!r}, params={self.params!r})"
