"""The operator of ``patchflow apply``: ``--op``/``--op-arg``, ``--pipeline`` files, ``--model``.

This module owns turning command-line text into an operator, and only ever as data:

* ``--op NAME`` names a registered operator (:func:`patchflow.ops.registered_ops`; case,
  ``-`` and ``_`` ignored) built with the ``--op-arg KEY=VALUE`` values (JSON literals when
  they parse, else strings), through :func:`patchflow.ops.from_config`, or the built-in
  recipe ``ndvi`` (configured by ``--red``/``--nir``/``--scale``);
* ``--op MODULE:CALLABLE`` imports the user's own code, as ``python -m`` would, as a
  :class:`patchflow.ops.Imported` operator: a function is the per-chip operator (like
  :class:`patchflow.ops.Lambda`), a factory / operator class is called with the
  ``--op-arg`` values (see :func:`patchflow.ops.base.resolve_import`);
* ``--pipeline FILE`` reads steps ``{"op": NAME or MODULE:CALLABLE, "params": {...}}`` from
  JSON or YAML (PyYAML's safe loader, with ``1e-4`` read as a number as in YAML 1.2);
* ``--model FILE`` loads a TorchScript model as a :class:`patchflow.ops.TorchScript`
  (a ModelOp that pickles to dask workers as the script's bytes), or — by its suffix,
  ``.joblib``/``.pkl``/``.pickle``/``.skops`` — a fitted scikit-learn estimator as a
  :class:`patchflow.ops.SklearnOp` (``--model-output predict|predict_proba``).

Every operator built here has a config (``MODULE:CALLABLE`` steps as :class:`Imported`,
the model as its file's path and SHA-256), so the store's job record holds it and
``patchflow resume STORE`` rebuilds it. Nothing is evaluated, and nothing is unpickled
but a joblib/pickle ``--model`` file the user names: the only code that runs is code the
user names.

Examples
--------
>>> build_operator("rescale", {"in_range": [0, 10000]}, where=OPTION)
Rescale(in_range=[0.0, 10000.0], out_range=[0.0, 1.0], clip=True)
>>> build_operator("rescale", {"in_rnage": [0, 10000]}, where=OPTION)
Traceback (most recent call last):
...
patchflow.errors.UsageError: argument --op-arg: Rescale has no parameter 'in_rnage' \
(did you mean 'in_range'?); its parameters: in_range (required), out_range=[0.0, 1.0], \
clip=true
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from patchflow.errors import (
    CommandError,
    ConfigError,
    ImportTargetError,
    InputReadError,
    MissingExtraError,
    ParameterError,
    PatchflowError,
    UsageError,
    UserCodeError,
)
from patchflow.ops.base import (
    IMPORT_TARGET,
    Imported,
    Operator,
    Sequential,
    from_config,
    param_problem,
    registered_op,
    registered_ops,
    signature_text,
)

__all__ = [
    "OPTION",
    "RECIPES",
    "Where",
    "build_operator",
    "load_pipeline",
    "load_torchscript",
    "op_spec",
    "operator_table",
    "parse_op_arg",
    "parse_op_args",
]

#: Operators of ``--op`` configured by their own flags rather than ``--op-arg``.
RECIPES = {"ndvi": "DN x --scale -> NDVI of bands --red and --nir (1 band out)"}

#: ``MODULE:CALLABLE`` (dotted on both sides: ``pkg.mod:Class.factory``)
_CALLABLE = IMPORT_TARGET
_YAML_SUFFIXES = (".yaml", ".yml")
#: registered, but said better by other flags: a pipeline (--pipeline), your own code
#: (--op MODULE:CALLABLE), a TorchScript file (--model)
_HIDDEN = {
    "Sequential",
    "Imported",
    "TorchScript",
    # a fitted model is a file (--model rf.joblib; Python: SklearnOp.from_file), not
    # --op-arg values
    "SklearnOp",
    # training-chip augmentations cannot be stitched (apply refuses them)
    "Flip",
    "Rot90",
    "BandDropout",
    "BrightnessJitter",
}


@dataclass(frozen=True)
class Where:
    """How errors name the place an operator spec came from, and which error they raise."""

    spec: str
    params: str
    error: type[PatchflowError]


#: ``--op SPEC --op-arg KEY=VALUE``: errors are usage errors (exit status 2)
OPTION = Where(spec="argument --op", params="argument --op-arg", error=UsageError)


# --------------------------------------------------------------------------- --op-arg


def _literal(text: str) -> Any:
    """A JSON literal when ``text`` is one (``0``, ``[0, 1]``, ``true``, ``null``), else text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_op_arg(text: str) -> tuple[str, Any]:
    """``--op-arg KEY=VALUE`` → ``(KEY, value)`` (argparse ``type=``).

    Examples
    --------
    >>> parse_op_arg("in_range=[0, 10000]"), parse_op_arg("stat=median")
    (('in_range', [0, 10000]), ('stat', 'median'))
    >>> parse_op_arg('name="0"'), parse_op_arg("nodata=null")
    (('name', '0'), ('nodata', None))
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE (e.g. --op-arg scale=0.0001), got {text!r}"
        )
    return key, _literal(raw.strip())


def parse_op_args(pairs: Sequence[tuple[str, Any]] | None) -> dict[str, Any]:
    """The ``--op-arg`` pairs as keyword arguments (a key given twice is an error)."""
    out: dict[str, Any] = {}
    for key, value in pairs or ():
        if key in out:
            raise UsageError(
                f"argument --op-arg: {key} is given twice ({out[key]!r} and {value!r})"
            )
        out[key] = value
    return out


def op_spec(text: str) -> str:
    """Check an ``--op`` value while parsing (argparse ``type=``); nothing is imported.

    Examples
    --------
    >>> op_spec("ndvi"), op_spec("Rescale"), op_spec("mypkg.ops:cloud_mask")
    ('ndvi', 'Rescale', 'mypkg.ops:cloud_mask')
    """
    if text in RECIPES or _CALLABLE.match(text):
        return text
    try:
        if registered_op(text) is not None:
            return text
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    names = [*RECIPES, *_listed()]
    close = difflib.get_close_matches(text, names, n=1, cutoff=0.6)
    close += [n for n in names if n.casefold() == text.casefold() and n not in close]
    hint = f"; did you mean {close[0]!r}?" if close else ""
    if ":" in text:
        hint = " (MODULE:CALLABLE is a Python module path, a colon and a name in it)"
    raise argparse.ArgumentTypeError(
        f"invalid choice: {text!r} (choose from {', '.join(names)}, or give MODULE:CALLABLE){hint}"
    )


def _listed() -> list[str]:
    return [name for name in registered_ops() if name not in _HIDDEN]


# --------------------------------------------------------------------------- parameters


def _signature(target: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(target)
    except (TypeError, ValueError):  # builtins and C callables may have none
        return None


def _check_params(
    name: str, sig: inspect.Signature, params: Mapping[str, Any], where: Where
) -> None:
    """Unknown keys and missing required parameters, named with the real parameters."""
    problem = param_problem(name, sig, params)
    if problem:
        raise where.error(f"{where.params}: {problem}")


def operator_table() -> list[tuple[str, str]]:
    """``(name, parameters)`` of every ``--op NAME`` (the recipes first), for ``--help``."""
    rows = [(name, f"built-in: {text}") for name, text in RECIPES.items()]
    for name in _listed():
        cls = registered_op(name)
        sig = None if cls is None else _signature(cls)
        rows.append((name, "?" if sig is None else signature_text(sig)))
    return rows


# --------------------------------------------------------------------------- building


def build_operator(spec: str, params: Mapping[str, Any], *, where: Where) -> Operator:
    """The operator ``spec`` names (registered name or ``MODULE:CALLABLE``) with ``params``.

    Parameters
    ----------
    spec
        A registered operator name (case, ``-`` and ``_`` ignored) or ``MODULE:CALLABLE``.
    params
        Keyword arguments (``--op-arg`` values, or a pipeline step's ``params``).
    where
        How errors name the source (:data:`OPTION` for the command line).

    Raises
    ------
    UsageError, CommandError
        (``where.error``) an unknown name, unknown or missing parameters (naming the real
        ones), values the operator rejects; :class:`CommandError` when the user's module
        fails while importing.
    """
    if _CALLABLE.match(spec):
        return _callable_operator(spec, params, where)
    try:
        cls = registered_op(spec)
    except ConfigError as exc:
        raise where.error(f"{where.spec}: {exc}") from None
    if cls is None:
        raise where.error(
            f"{where.spec}: unknown operator {spec!r}; registered operators: "
            f"{', '.join(_listed())} (or MODULE:CALLABLE for your own code)"
        )
    sig = _signature(cls)
    if sig is not None and not any(
        p.kind is inspect.Parameter.VAR_POSITIONAL for p in sig.parameters.values()
    ):
        # (an operator taking ``*ops``, e.g. Branch, has a config of its own: ``{"ops":
        # [...]}``, checked by its from_config)
        _check_params(cls.__name__, sig, params, where)
    try:
        # the user named the operator: a code-naming one (Imported, TorchScript) is theirs
        return from_config({"op": cls._op_name, "params": dict(params)}, trusted=True)
    except PatchflowError as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, PatchflowError | ValueError) else exc
        raise where.error(f"{where.params}: {cls.__name__}: {cause}") from exc


def _one_line(exc: BaseException) -> str:
    from patchflow.io.sources import one_line

    return one_line(exc)


def _callable_operator(spec: str, params: Mapping[str, Any], where: Where) -> Operator:
    """``MODULE:CALLABLE``: the :class:`~patchflow.ops.Imported` operator it names, imported
    now so a bad spec fails before INPUT is read (the rule: :func:`resolve_import`)."""
    try:
        op = Imported(spec, params=params)
    except ConfigError as exc:  # parameters that are no JSON values (e.g. a YAML date)
        raise where.error(f"{where.params}: {exc}") from exc
    try:
        op.resolve()
    except ImportTargetError as exc:
        if exc.part == "params":
            raise where.error(f"{where.params}: {exc.detail}") from exc
        raise where.error(f"{where.spec} {spec}: {exc.detail}") from exc
    except UserCodeError as exc:  # the user's module raised while importing
        raise CommandError(str(exc)) from exc
    return op


# --------------------------------------------------------------------------- --pipeline


def _yaml_loader() -> Any:
    """PyYAML's safe loader, reading exponent floats without a dot as numbers.

    PyYAML follows YAML 1.1, where ``1e-4`` and ``1E+5`` are strings (a float needs a
    dot); YAML 1.2, JSON and anyone writing a pipeline mean numbers. Without this an
    operator would get the text ``"1e-4"`` as its scale factor.
    """
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return Loader


def load_pipeline(path: str) -> Operator:
    """The operator a ``--pipeline`` file describes (JSON, or YAML for ``.yaml``/``.yml``).

    The file holds one step ``{"op": NAME or "MODULE:CALLABLE", "params": {...}}`` or a list
    of them (the format of :func:`patchflow.ops.to_json`, plus ``MODULE:CALLABLE`` steps).

    Raises
    ------
    CommandError
        The file is missing, not JSON/YAML, or a step is invalid (named by its number).
    """
    file = Path(path)
    if not file.is_file():
        raise CommandError(f"pipeline not found: {path}")
    text = file.read_text()
    if file.suffix.lower() in _YAML_SUFFIXES:
        import yaml

        try:
            data = yaml.load(text, Loader=_yaml_loader())  # a SafeLoader: no object tags
        except yaml.YAMLError as exc:
            raise CommandError(
                f"invalid pipeline {path}: not valid YAML: {_one_line(exc)}"
            ) from exc
    else:
        try:
            data = json.loads(text)
        except ValueError as exc:
            hint = " (name YAML files .yaml or .yml)" if text.lstrip()[:1] not in "[{" else ""
            raise CommandError(f"invalid pipeline {path}: not valid JSON: {exc}{hint}") from exc
    where = Where(spec="'op'", params="'params'", error=ConfigError)
    try:
        if isinstance(data, list):
            if not data:
                raise ConfigError("the pipeline has no steps")
            steps = []
            for k, step in enumerate(data, 1):
                try:
                    steps.append(_step(step, where))
                except ConfigError as exc:
                    raise ConfigError(f"step {k}: {exc}") from exc
            return Sequential(steps)
        return _step(data, where)
    except (ConfigError, UsageError) as exc:
        raise CommandError(f"invalid pipeline {path}: {exc}") from exc


def _step(step: Any, where: Where) -> Operator:
    if not isinstance(step, dict) or "op" not in step or set(step) - {"op", "params"}:
        raise ConfigError(
            'a step is {"op": NAME or "MODULE:CALLABLE", "params": {...}}, got '
            f"{json.dumps(step, default=repr)[:120]}"
        )
    name, params = step["op"], step.get("params") or {}
    if not isinstance(name, str):
        raise ConfigError(f"'op' must be an operator name, got {name!r}")
    if not isinstance(params, dict):
        raise ConfigError(f"'params' of {name} must be a mapping, got {params!r}")
    return build_operator(name, _nested(params), where=where)


def _nested(value: Any) -> Any:
    """A step's params with the steps inside combinators (Branch ``ops``, Switch ``cases``)
    spelled like top-level steps: registered names in any case, ``MODULE:CALLABLE``."""
    if isinstance(value, list):
        return [_nested(v) for v in value]
    if not isinstance(value, dict):
        return value
    if isinstance(value.get("op"), str) and not set(value) - {"op", "params"}:
        name, params = value["op"], _nested(value.get("params") or {})
        if _CALLABLE.match(name):
            return {"op": Imported._op_name, "params": {"target": name, "params": params}}
        try:
            cls = registered_op(name)
        except ConfigError:
            cls = None
        return {"op": name if cls is None else cls._op_name, "params": params}
    return {k: _nested(v) for k, v in value.items()}


# --------------------------------------------------------------------------- --model


#: ``--model`` files read as fitted scikit-learn estimators (else: TorchScript)
SKLEARN_SUFFIXES = (".joblib", ".pkl", ".pickle", ".skops")


def is_sklearn_model(path: str) -> bool:
    """Whether ``--model FILE`` names a saved scikit-learn estimator (by its suffix)."""
    return Path(path).suffix.lower() in SKLEARN_SUFFIXES


def load_sklearn(path: str, *, output: Literal["predict", "predict_proba"]) -> Operator:
    """``--model FILE.joblib|.pkl|.pickle|.skops``: the fitted estimator as a
    :class:`~patchflow.ops.SklearnOp` (its config: the file's absolute path and SHA-256).

    A joblib/pickle file runs code it names when loaded, like ``--op MODULE:CALLABLE``
    runs yours: give only files you made or trust (``.skops`` files load without that).

    Raises
    ------
    CommandError
        scikit-learn (or, for ``.skops``, skops) is not installed (naming the
        ``patchflow[ml]`` extra), or the file is missing or holds no fitted estimator.
    """
    if not Path(path).is_file():
        raise CommandError(f"model not found: {path}")
    from patchflow.ops.sklearn import SklearnOp

    try:
        return SklearnOp.from_file(path, output=output)
    except (MissingExtraError, InputReadError, ParameterError) as exc:
        raise CommandError(f"--model {Path(path).name}: {exc}") from exc


def load_torchscript(path: str, *, device: str, batch_size: int | None) -> Operator:
    """``--model FILE``: the TorchScript model as a :class:`~patchflow.ops.TorchScript` on
    ``device`` (its config: the file's absolute path and SHA-256).

    Raises
    ------
    CommandError
        PyTorch is not installed (naming the ``patchflow[torch]`` extra), the file is
        missing or is not a TorchScript model.
    UsageError
        ``device`` is not a torch device, or CUDA is asked for and not available.
    """
    try:
        import torch
    except ImportError:
        raise CommandError(
            "--model needs PyTorch, which is not installed: pip install 'patchflow[torch]'"
        ) from None
    from patchflow.ops.models import TorchScript

    if not Path(path).is_file():
        raise CommandError(f"model not found: {path}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(
            f"argument --device: {device!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            f"argument --device: {device} is not available here (no CUDA device); use --device cpu"
        )
    try:
        return TorchScript(path, device=str(dev), batch_size=batch_size)
    except InputReadError as exc:
        raise CommandError(str(exc)) from exc
