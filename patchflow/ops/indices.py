"""Spectral indices of the Awesome Spectral Indices catalogue: :class:`SpectralIndex`.

This module owns evaluating catalogue indices (EVI, SAVI, NDMI, … — every entry of
`Awesome Spectral Indices <https://github.com/awesome-spectral-indices>`_, read through
``spyndex``) per chip, the mapping of the catalogue's band symbols (``N``, ``R``, ``B``,
``S1``, ``RE1``…) to the chip's bands, and the catalogue constants (``L``, ``C1``, ``g``…).

``spyndex`` is an optional dependency (``pip install "patchflow[indices]"``), imported the
first time a :class:`SpectralIndex` is built, never by ``import patchflow.ops``. It is only
the catalogue: the formulas are evaluated here, on the chip's arrays, exactly as
``spyndex.computeIndex`` evaluates them (same expression, same dtypes), after checking that
each formula is plain arithmetic of symbols and numbers. The base install keeps
:class:`~patchflow.ops.NDVI`, :class:`~patchflow.ops.NDWI` and :class:`~patchflow.ops.NBR`.

Examples
--------
>>> import pytest; _ = pytest.importorskip("spyndex")  # the [indices] extra
>>> import numpy as np
>>> from patchflow.ops.indices import SpectralIndex
>>> op = SpectralIndex(["NDVI", "SAVI"], bands={"R": 0, "N": 1}, constants={"L": 0.5})
>>> chips = np.stack([np.full((1, 2, 2), 0.1), np.full((1, 2, 2), 0.3)], axis=1)
>>> op(chips)[0, :, 0, 0].round(4).tolist(), op.output_band_names(["red", "nir"])
([0.5, 0.3333], ['NDVI', 'SAVI'])
"""

from __future__ import annotations

import ast
import difflib
import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import CodeType
from typing import Any

import numpy as np

from patchflow.errors import ParameterError, optional_import
from patchflow.ops.bands import _indices, _need_bands
from patchflow.ops.base import Band, Operator, Spec, _band, _float_dtype, register

__all__ = ["SpectralIndex", "catalogue_indices", "missing_spyndex_message"]

#: the extra that brings the catalogue
INSTALL = 'pip install "patchflow[indices]"'
#: thermal band symbols: an index using one is not a pure reflectance ratio (no units "1")
_THERMAL = frozenset({"T", "T1", "T2"})
#: the syntax a catalogue formula may use: arithmetic of symbols and numbers, nothing else
_ALLOWED = (
    ast.Expression,
    ast.BinOp,
    ast.UnaryOp,
    ast.Name,
    ast.Load,
    ast.Constant,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.Pow,
    ast.USub,
    ast.UAdd,
)


def missing_spyndex_message(detail: str = "") -> str:
    """What to do when ``spyndex`` cannot be imported (the :class:`MissingExtraError` text).

    Examples
    --------
    >>> missing_spyndex_message()
    'SpectralIndex needs the Awesome Spectral Indices catalogue (spyndex), which is not \
installed: pip install "patchflow[indices]"'
    """
    why = f" ({detail})" if detail else ""
    return (
        "SpectralIndex needs the Awesome Spectral Indices catalogue (spyndex), which is not "
        f"installed{why}: {INSTALL}"
    )


def _spyndex() -> Any:
    return optional_import("spyndex", message=lambda exc: missing_spyndex_message(str(exc)))


@dataclass(frozen=True)
class _Entry:
    """One catalogue index, as this module needs it (plain data: pickles to workers)."""

    name: str
    long_name: str
    formula: str
    symbols: tuple[str, ...]


@dataclass(frozen=True)
class _Catalogue:
    indices: dict[str, _Entry]
    #: constant symbol → (catalogue default or None, description)
    constants: dict[str, tuple[float | None, str]]
    #: band symbol → description ("Near-Infrared (NIR)"); radar (VV…) and kernel (kNN…)
    #: symbols too: whatever a formula uses that is not a constant comes from the chip
    bands: dict[str, str]
    #: casefolded everyday band names ("nir", "swir1", "swir16", "b08", "red edge 1") →
    #: the catalogue's symbol, for the hint when ``bands=`` uses one as a key
    aliases: dict[str, str]


@functools.lru_cache(maxsize=1)
def _catalogue() -> _Catalogue:
    spyndex = _spyndex()
    constants: dict[str, tuple[float | None, str]] = {}
    for key in spyndex.constants:
        c = spyndex.constants[key]
        default = None if c.default is None else float(c.default)
        constants[str(key)] = (default, str(c.description))
    bands = {str(k): str(spyndex.bands[k].long_name) for k in spyndex.bands}
    aliases: dict[str, str] = {}
    for key in spyndex.bands:
        b = spyndex.bands[key]
        long_name = str(b.long_name)
        # "Short-wave Infrared (SWIR) 1" → "swir1", "Near-Infrared (NIR)" → "nir"
        short = "".join(re.findall(r"\((\w+)\)", long_name)) + long_name.rpartition(")")[2]
        names = [str(b.common_name), long_name, short.replace(" ", "")]
        s2 = getattr(b, "sentinel2a", None)
        if s2 is not None:
            number = str(s2.band)  # "B8", also written "B08"
            names += [number, re.sub(r"^B(\d)$", r"B0\1", number)]
        for name in names:
            if name and name.casefold() != str(key).casefold():
                aliases.setdefault(name.casefold(), str(key))
    indices = {}
    for key in spyndex.indices:
        ix = spyndex.indices[key]
        symbols = tuple(str(s) for s in ix.bands)
        indices[str(key)] = _Entry(str(key), str(ix.long_name), str(ix.formula), symbols)
        for s in symbols:
            if s not in constants:
                bands.setdefault(s, f"input of {key}")
    return _Catalogue(indices, constants, bands, aliases)


def catalogue_indices() -> list[str]:
    """Names of the catalogue's indices, as :class:`SpectralIndex` takes them.

    Raises
    ------
    MissingExtraError
        ``spyndex`` is not installed.

    Examples
    --------
    >>> import pytest; _ = pytest.importorskip("spyndex")  # the [indices] extra
    >>> {"NDVI", "EVI", "SAVI"} <= set(catalogue_indices())
    True
    """
    return sorted(_catalogue().indices)


@functools.cache
def _compiled(formula: str) -> CodeType:
    """The formula as code, after checking it is arithmetic of names and numbers only: the
    catalogue is data, and evaluating it must never run anything else."""
    tree = ast.parse(formula, mode="eval")
    for node in ast.walk(tree):
        ok = isinstance(node, _ALLOWED)
        if isinstance(node, ast.Constant):
            ok = isinstance(node.value, (int, float)) and not isinstance(node.value, bool)
        if not ok:
            raise ParameterError(
                f"the catalogue formula {formula!r} uses {type(node).__name__}, which "
                "SpectralIndex does not evaluate (only + - * / ** of bands, constants and "
                "numbers); compute this index with your own operator"
            )
    return compile(tree, f"<spectral index {formula}>", "eval")


def _close(word: str, choices: Sequence[str]) -> str:
    folded = [c for c in choices if c.casefold() == word.casefold()]
    close = list(dict.fromkeys(folded + difflib.get_close_matches(word, choices, n=3)))
    return f" (did you mean {' or '.join(repr(c) for c in close[:3])}?)" if close else ""


def _entries(index: str | Sequence[str], cat: _Catalogue) -> tuple[_Entry, ...]:
    names = [index] if isinstance(index, str) else list(index)
    if not names:
        raise ParameterError("SpectralIndex needs at least one index name, e.g. index='EVI'")
    out = []
    for name in names:
        if not isinstance(name, str):
            raise ParameterError(
                f"SpectralIndex: index names are strings (e.g. 'EVI'), got {name!r}"
            )
        if name not in cat.indices:
            raise ParameterError(
                f"SpectralIndex: {name!r} is not an index of the Awesome Spectral Indices "
                f"catalogue{_close(name, list(cat.indices))}; names are case-sensitive, "
                "patchflow.ops.indices.catalogue_indices() lists them all"
            )
        out.append(cat.indices[name])
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ParameterError(
            f"SpectralIndex: {', '.join(repeated)} given twice; each index is one output band"
        )
    return tuple(out)


def _band_map(bands: Any, cat: _Catalogue) -> dict[str, Band]:
    if not isinstance(bands, Mapping):
        raise ParameterError(
            "SpectralIndex bands= maps catalogue band symbols to the input's bands, e.g. "
            f"bands={{'N': 'nir', 'R': 'red'}} or {{'N': 3, 'R': 2}}; got {bands!r}"
        )
    out: dict[str, Band] = {}
    for key, value in bands.items():
        if key in cat.constants:
            raise ParameterError(
                f"SpectralIndex: {key!r} is a catalogue constant "
                f"({cat.constants[key][1]}), not a band: give it as constants={{{key!r}: VALUE}}"
            )
        if not isinstance(key, str) or key not in cat.bands:
            alias = cat.aliases.get(str(key).casefold())
            plain = [k for k in cat.bands if not k.startswith("k")]  # (kernel terms: kNN…)
            if alias and re.match(r"^b\d", str(key).casefold()):
                hint = f" (Sentinel-2's {key} is the catalogue's {alias!r})"
            elif alias:
                hint = f" (the catalogue's symbol for {key} is {alias!r})"
            else:
                hint = _close(str(key), plain)
            raise ParameterError(
                f"SpectralIndex: {key!r} is not a band symbol of the catalogue{hint}; its "
                f"band symbols: {', '.join(plain)}"
            )
        out[key] = _band(value, f"SpectralIndex bands[{key!r}]")
    return out


def _constant_map(constants: Any, cat: _Catalogue) -> dict[str, float]:
    if constants is None:
        return {}
    if not isinstance(constants, Mapping):
        raise ParameterError(
            f"SpectralIndex constants= maps catalogue constants to numbers, e.g. "
            f"constants={{'L': 0.5}}; got {constants!r}"
        )
    out: dict[str, float] = {}
    for key, value in constants.items():
        if key in cat.bands:
            raise ParameterError(
                f"SpectralIndex: {key!r} is a band symbol, not a constant: map it to a band "
                f"of the input with bands={{{key!r}: NAME_OR_POSITION}}"
            )
        if not isinstance(key, str) or key not in cat.constants:
            raise ParameterError(
                f"SpectralIndex: {key!r} is not a constant of the catalogue"
                f"{_close(str(key), list(cat.constants))}; its constants: "
                f"{', '.join(cat.constants)}"
            )
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if isinstance(value, bool) or not math.isfinite(number):
            raise ParameterError(
                f"SpectralIndex: constant {key} must be a finite number, got {value!r}"
            )
        out[key] = number
    return out


@register
class SpectralIndex(Operator):
    """Indices of the Awesome Spectral Indices catalogue → one output band per index.

    Each index is the catalogue's formula (``spyndex``: ``pip install
    "patchflow[indices]"``) evaluated per pixel on the chip's bands, in float32 (float64
    for float64 and 32/64-bit integer input, as :class:`~patchflow.ops.NDVI`). Where the
    formula is undefined (a zero denominator) the result is NaN, never ±inf; NaN inputs
    give NaN. The output bands are named after the indices, in the order given.

    Parameters
    ----------
    index
        A catalogue index name (``"EVI"``; case-sensitive) or a list of them.
    bands
        The catalogue's band symbols (``"N"`` NIR, ``"R"`` red, ``"G"`` green, ``"B"``
        blue, ``"S1"``/``"S2"`` SWIR, ``"RE1"``… red edge, ``"VV"``… radar) mapped to the
        input's bands, by name (the band coordinate's labels, as
        ``NDVI(red="red", nir="nir")``) or 0-based position. Symbols no index uses are
        allowed (one mapping for a sensor serves every index).
    constants
        Values for the catalogue constants (``L``, ``C1``, ``C2``, ``g``, ``alpha``…),
        replacing the catalogue defaults; constants without a default (``PAR``,
        ``lambdaN``…) must be given when an index uses them.

    Raises
    ------
    MissingExtraError
        ``spyndex`` is not installed.
    ParameterError
        An unknown index (with the closest names), a band an index needs missing from
        ``bands`` or a constant without default missing from ``constants`` (naming the
        index and the symbol), an unknown band symbol or constant.

    Examples
    --------
    >>> import pytest; _ = pytest.importorskip("spyndex")  # the [indices] extra
    >>> import numpy as np
    >>> op = SpectralIndex("EVI", bands={"B": 0, "R": 1, "N": 2})
    >>> op
    SpectralIndex(index='EVI', bands={'B': 0, 'R': 1, 'N': 2})
    >>> chips = np.array([0.05, 0.08, 0.4], np.float32).reshape(1, 3, 1, 1)
    >>> out = op(chips)
    >>> out.dtype.name, round(float(out[0, 0, 0, 0]), 4)
    ('float32', 0.5316)
    >>> SpectralIndex("EVI", bands={"B": "blue", "R": "red", "N": "nir"}).bind(
    ...     ["blue", "red", "nir"])
    SpectralIndex(index='EVI', bands={'B': 0, 'R': 1, 'N': 2})
    """

    pointwise = True
    _band_params = ("_refs",)

    def __init__(
        self,
        index: str | Sequence[str],
        *,
        bands: Mapping[str, Band],
        constants: Mapping[str, float] | None = None,
    ) -> None:
        cat = _catalogue()
        self._entries = _entries(index, cat)
        self.index: str | list[str] = index if isinstance(index, str) else list(index)
        self.bands = _band_map(bands, cat)
        self.constants = _constant_map(constants, cat)
        problems = []
        symbols: dict[str, None] = {}  # the band symbols the indices use, first use first
        values: dict[str, float] = {}
        for entry in self._entries:
            for s in entry.symbols:
                if s in cat.constants:
                    default, about = cat.constants[s]
                    value = self.constants.get(s, default)
                    if value is None:
                        problems.append(
                            f"{entry.name} needs the constant {s!r} ({about}), which has no "
                            f"catalogue default: give it, constants={{{s!r}: VALUE}}"
                        )
                    else:
                        values[s] = value
                elif s in self.bands:
                    symbols.setdefault(s)
                else:
                    problems.append(
                        f"{entry.name} needs the band {s!r} ({cat.bands.get(s, s)}): map it "
                        f"to a band of the input, bands={{..., {s!r}: NAME_OR_POSITION}}"
                    )
        if problems:
            raise ParameterError(f"SpectralIndex({self.index!r}): {'; '.join(problems)}")
        for entry in self._entries:
            code = _compiled(entry.formula)  # fails now, not on a worker
            unlisted = sorted(set(code.co_names) - set(entry.symbols))
            if unlisted:  # a catalogue entry whose formula and symbol list disagree
                raise ParameterError(
                    f"SpectralIndex: the catalogue's {entry.name} formula {entry.formula!r} "
                    f"uses {', '.join(unlisted)}, which its entry does not list; upgrade "
                    "spyndex, or compute this index with your own operator"
                )
        self._symbols = tuple(symbols)
        #: the input bands of ``_symbols`` (bound to positions by :meth:`bind`)
        self._refs: list[Band] = [self.bands[s] for s in self._symbols]
        self._values = values

    @property
    def names(self) -> list[str]:
        """The index names, one per output band."""
        return [e.name for e in self._entries]

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        self._check_bound()
        chips = np.asarray(chips)
        _need_bands(chips, self)
        positions = _indices(self, self._refs, chips.shape[-3])
        ft = _float_dtype(chips.dtype)
        # constants as Python floats: numpy keeps the arrays' float32 (NEP 50), as
        # spyndex.computeIndex does on the same arrays
        env: dict[str, Any] = dict(self._values)
        for s, p in zip(self._symbols, positions, strict=True):
            env[s] = chips[..., p, :, :].astype(ft, copy=False)
        out = np.empty((*chips.shape[:-3], len(self._entries), *chips.shape[-2:]), ft)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            for k, entry in enumerate(self._entries):
                out[..., k, :, :] = eval(_compiled(entry.formula), {"__builtins__": {}}, env)
        # x/0 is an undefined index, not a value: NaN (as NormalizedDifference)
        out[np.isinf(out)] = np.nan
        return out

    # ---- declarations

    def output_spec(self, lead: tuple[int, ...], dtype: np.dtype) -> Spec:
        self._check_bands(lead)
        return (*lead[:-1], len(self._entries)), _float_dtype(dtype)

    def output_band_names(self, names: Sequence[str]) -> list[str]:
        return self.names

    def output_attrs(self) -> dict[str, Any]:
        names = self.names
        attrs: dict[str, Any] = {"long_name": names[0] if len(names) == 1 else tuple(names)}
        if not any(s in _THERMAL for s in self._symbols):
            attrs["units"] = "1"  # reflectance ratios: dimensionless
        return attrs

    def _params(self) -> dict[str, Any]:
        # bound positions replace the names they were bound from
        bands = {**self.bands, **dict(zip(self._symbols, self._refs, strict=True))}
        return {
            "index": self.index,
            "bands": bands,
            "constants": dict(self.constants) or None,
        }
