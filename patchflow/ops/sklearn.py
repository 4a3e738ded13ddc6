"""scikit-learn estimators as patchflow operators, pixel by pixel (scikit-learn optional).

:class:`SklearnOp` runs any fitted estimator with ``predict`` (and ``predict_proba``) on
the engine's batches of chips: each pixel is one sample whose features are its bands, so
the operator is *pointwise* (the engine runs it once per pixel, whatever the chip grid).
``SklearnOp.from_file(path)`` is the same operator on a model saved with ``joblib.dump``
(or ``skops.io.dump``): its config is the file's absolute path, its SHA-256 and the run
options, so a pipeline holding it writes to JSON and into a store's job record
(``patchflow resume`` reloads the file and refuses one that changed), exactly as
:class:`~patchflow.ops.models.TorchScript` does for torch models.

Nothing here imports scikit-learn: estimators come from the caller, and the helpers this
module needs from scikit-learn (its fitted check, joblib) are imported when used.

Examples
--------
>>> import numpy as np
>>> from sklearn.tree import DecisionTreeClassifier
>>> X = np.array([[0.0, 1.0], [1.0, 0.0], [0.1, 0.9], [0.9, 0.2]])
>>> tree = DecisionTreeClassifier(random_state=0).fit(X, [0, 1, 0, 1])
>>> chips = np.stack([np.zeros((4, 4)), np.ones((4, 4))])[None]  # 1 chip, 2 bands
>>> out = SklearnOp(tree)(chips)
>>> out.shape, out.dtype.name, float(out[0, 0, 0, 0])
((1, 1, 4, 4), 'float32', 0.0)
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from patchflow.errors import (
    DimensionError,
    InputReadError,
    ModelChangedError,
    ModelNotFittedError,
    OperatorError,
    ParameterError,
    optional_import,
)
from patchflow.ops.base import Config, ConfigError, Operator, Spec, register

__all__ = ["SKLEARN_OUTPUTS", "SklearnOp"]

SklearnOutput = Literal["predict", "predict_proba"]
#: what :class:`SklearnOp` can return per pixel
SKLEARN_OUTPUTS: tuple[str, ...] = get_args(SklearnOutput)
#: rows per estimator call: bounds the estimator's temporaries (a random forest's
#: ``predict_proba`` holds ``rows × classes`` float64 per tree job) whatever the batch
DEFAULT_BATCH_PIXELS = 2**18
#: integer class labels float32 holds exactly (beyond: float64)
_FLOAT32_EXACT = 2**24


def _class_dtype(classes: Any) -> np.dtype:
    """The float dtype holding every class label exactly (labels must be numbers)."""
    arrays = classes if isinstance(classes, list) else [classes]
    dtypes = []
    for values in arrays:
        values = np.asarray(values)
        if values.dtype.kind == "O":  # e.g. labels that came from a pandas column
            try:
                values = np.asarray(values.tolist())
            except (TypeError, ValueError):
                pass
        if values.dtype.kind not in "biuf":
            shown = ", ".join(repr(v) for v in values.tolist()[:5])
            raise ParameterError(
                f"the estimator predicts class labels that are not numbers ({shown}); a "
                "raster holds numbers: fit it on integer labels (e.g. encode them with "
                "sklearn.preprocessing.LabelEncoder), or use output='predict_proba'"
            )
        if values.dtype.kind == "f":
            dtypes.append(np.result_type(values.dtype, np.float32))
        elif values.size and float(np.abs(values.astype(np.float64)).max()) >= _FLOAT32_EXACT:
            dtypes.append(np.dtype(np.float64))
        else:
            dtypes.append(np.dtype(np.float32))
    return np.dtype(np.result_type(*dtypes))


def _check_fitted(estimator: Any) -> None:
    """Raise :class:`ModelNotFittedError` for a scikit-learn estimator that was never fit."""
    if not hasattr(estimator, "fit"):
        return  # not a scikit-learn estimator: nothing to ask (it has predict)
    try:
        from sklearn.exceptions import NotFittedError
        from sklearn.utils.validation import check_is_fitted
    except ImportError:  # pragma: no cover - a fit/predict object without scikit-learn
        return
    try:
        check_is_fitted(estimator)
    except NotFittedError:
        raise ModelNotFittedError(
            f"the estimator {type(estimator).__name__} is not fitted; call "
            f"estimator.fit(X, y) on training pixels (rows = pixels, columns = bands) "
            "before wrapping it in SklearnOp"
        ) from None
    except TypeError:  # check_is_fitted refuses objects it does not see as estimators
        return


def _load_estimator(file: Path, data: bytes) -> Any:
    """The estimator saved in ``data`` (the bytes of ``file``): skops for ``.skops``
    files, joblib (which also reads plain pickles) for anything else."""
    if file.suffix == ".skops":
        sio = optional_import(
            "skops.io", message=f"{file} is a skops file; reading it needs skops: pip install skops"
        )
        try:
            # the caller trusts the file (from_config(..., trusted=True) or a direct
            # call): accept the types it names, as unpickling it would
            return sio.loads(data, trusted=sio.get_untrusted_types(data=data))
        except Exception as exc:
            raise _unreadable(file, "skops.io.load", exc) from exc
    joblib = optional_import(
        "joblib",
        message="loading a saved scikit-learn model needs scikit-learn (and joblib): "
        "pip install 'patchflow[ml]'",
    )
    try:
        return joblib.load(io.BytesIO(data))
    except Exception as exc:
        raise _unreadable(file, "joblib.load", exc) from exc


def _unreadable(file: Path, how: str, exc: BaseException) -> InputReadError:
    text = " ".join(str(exc).split())[:300] or type(exc).__name__
    return InputReadError(
        f"cannot load {file} as a saved scikit-learn model ({how}): {type(exc).__name__}: "
        f"{text}; save one with joblib.dump(estimator, path) (or skops.io.dump)"
    )


@register
class SklearnOp(Operator):
    """A fitted scikit-learn estimator (or any object with ``predict``) run per pixel.

    A batch of chips ``(n, *lead, h, w)`` becomes a table of ``n·h·w`` rows (pixels) and
    ``prod(lead)`` columns (the bands, flattened in C order when there are several
    non-spatial dims), which the estimator sees in pieces of ``batch_pixels`` rows; its
    answers are put back in place as ``(n, k, h, w)``. Every output pixel depends only on
    the same input pixel, so the operator is pointwise: ``patchflow.apply`` runs it once per
    pixel (no overlapping chips) and the stitched map is the estimator on the whole scene.

    Pixels with any non-finite band (NaN, which is how ``patchflow.apply`` hands over
    nodata, or ±inf) never reach the estimator: they come out NaN, which the engine
    treats as invalid (zero weight in every aggregation; nodata in the result if no chip
    gives the pixel a value).

    Parameters
    ----------
    estimator
        A fitted estimator: scikit-learn's (a classifier, regressor or ``Pipeline``) or any
        object with ``predict(X)`` (and ``predict_proba(X)``) on ``(pixels, bands)``.
    output
        ``"predict"``: ``(n, 1, h, w)`` (``(n, n_outputs, h, w)`` for multi-output
        estimators) holding the estimator's own predictions, as **floats** so that NaN can
        mark pixels it did not see: class labels as float32 (float64 for labels beyond
        2²⁴, which float32 cannot hold exactly), regression values as float64. Use it with
        ``agg="vote", n_classes=k`` when the classes are ``0 … k-1`` (vote's result is
        then an integer class map, the labels themselves). ``"predict_proba"``:
        ``(n, n_classes, h, w)`` float32 class probabilities, in the order of
        ``estimator.classes_`` (:attr:`classes`): use it with ``agg="soft_vote"``, whose
        result is the *position* of the winning class in :attr:`classes` (the label itself
        when the classes are ``0 … k-1``).
    batch_pixels
        Most rows per estimator call: bounds the estimator's working memory.

    Raises
    ------
    ModelNotFittedError
        A scikit-learn estimator that was never fit.
    ParameterError
        No ``predict`` (or no ``predict_proba`` / ``classes_`` for
        ``output="predict_proba"``), non-numeric class labels for ``output="predict"``, or
        an invalid option; when planning (``output_spec``), chips whose band count is not
        the estimator's ``n_features_in_``.

    Notes
    -----
    The operator pickles with its estimator (process and ``dask.distributed`` workers get
    a copy). An in-memory estimator has no config (:meth:`get_config` raises
    :class:`~patchflow.ops.ConfigError`, as for :class:`~patchflow.ops.Lambda`); save it
    with ``joblib.dump`` and use :meth:`from_file` for one that writes to JSON, store job
    records and ``patchflow resume``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.ensemble import RandomForestClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.random((200, 2))
    >>> forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(X, X[:, 0] > 0.5)
    >>> chips = rng.random((3, 2, 8, 8))
    >>> chips[0, 1, 0, 0] = np.nan
    >>> proba = SklearnOp(forest, output="predict_proba")(chips)
    >>> proba.shape, proba.dtype.name, bool(np.isnan(proba[0, :, 0, 0]).all())
    ((3, 2, 8, 8), 'float32', True)
    """

    pointwise = True
    #: its config names a pickle to load, which runs code: from_config needs trusted=True
    _runs_code = True

    def __init__(
        self,
        estimator: Any,
        *,
        output: SklearnOutput = "predict",
        batch_pixels: int = DEFAULT_BATCH_PIXELS,
    ) -> None:
        if output not in SKLEARN_OUTPUTS:
            raise ParameterError(
                f"output must be one of {', '.join(SKLEARN_OUTPUTS)}, got {output!r}"
            )
        if isinstance(batch_pixels, bool) or not isinstance(batch_pixels, int | np.integer):
            raise ParameterError(f"batch_pixels must be a positive int, got {batch_pixels!r}")
        if batch_pixels < 1:
            raise ParameterError(f"batch_pixels must be a positive int, got {batch_pixels!r}")
        if not callable(getattr(estimator, "predict", None)):
            raise ParameterError(
                f"SklearnOp needs a fitted estimator with a predict method, got "
                f"{type(estimator).__name__}"
            )
        _check_fitted(estimator)
        if output == "predict_proba":
            if not callable(getattr(estimator, "predict_proba", None)):
                raise ParameterError(
                    f"{type(estimator).__name__} has no predict_proba (e.g. SVC needs "
                    "probability=True); use output='predict', or a probabilistic classifier"
                )
            if getattr(estimator, "classes_", None) is None or isinstance(estimator.classes_, list):
                raise ParameterError(
                    f"output='predict_proba' needs a single-output classifier with classes_; "
                    f"{type(estimator).__name__} has none (or several outputs)"
                )
        self.estimator = estimator
        self.output: SklearnOutput = output
        self.batch_pixels = int(batch_pixels)
        #: the model file and its SHA-256 (:meth:`from_file`), else ``None``
        self.path: str | None = None
        self.sha256: str | None = None
        self._dtype = self._out_dtype()
        #: values per pixel an estimator without n_outputs_/classes_ gave (after a call)
        self._seen_out: int | None = None

    # ---- what the estimator answers

    @property
    def classes(self) -> np.ndarray | None:
        """The estimator's ``classes_`` (the order of ``predict_proba``'s bands), if any."""
        classes = getattr(self.estimator, "classes_", None)
        return None if classes is None or isinstance(classes, list) else np.asarray(classes)

    def _out_dtype(self) -> np.dtype:
        if self.output == "predict_proba":
            return np.dtype(np.float32)
        classes = getattr(self.estimator, "classes_", None)
        if classes is None:  # a regressor: scikit-learn's are float64
            return np.dtype(np.float64)
        return _class_dtype(classes)

    def _n_out(self) -> int | None:
        if self.output == "predict_proba":
            classes = self.classes
            return None if classes is None else len(classes)
        n = getattr(self.estimator, "n_outputs_", None)
        if n is not None:
            return int(n)
        if getattr(self.estimator, "classes_", None) is not None:
            return 1
        return self._seen_out  # e.g. LinearRegression: known once it has answered

    def _n_features(self) -> int | None:
        n = getattr(self.estimator, "n_features_in_", None)
        return None if n is None else int(n)

    def _check_features(self, features: int) -> None:
        expected = self._n_features()
        if expected is not None and expected != features:
            raise ParameterError(
                f"{self!r}: the estimator was fitted on {expected} features (bands) per "
                f"pixel, the chips have {features}; select the bands it was trained on, in "
                "the same order (e.g. SelectBands([...]) | op)"
            )

    # ---- running

    def _predict(self, rows: np.ndarray) -> np.ndarray:
        method = self.estimator.predict_proba if self.output == "predict_proba" else None
        raw = (method or self.estimator.predict)(rows)
        if isinstance(raw, list):  # multi-output predict_proba: one array per output
            raise OperatorError(
                f"{type(self.estimator).__name__}.{self.output} returned a list (several "
                "outputs); SklearnOp needs one array"
            )
        pred = np.asarray(raw)
        if pred.ndim == 1:
            pred = pred[:, None]
        if pred.ndim != 2 or pred.shape[0] != len(rows):
            raise OperatorError(
                f"{type(self.estimator).__name__}.{self.output} returned shape {pred.shape} "
                f"for {len(rows)} pixels; expected ({len(rows)},) or ({len(rows)}, k)"
            )
        if pred.dtype.kind not in "biuf":
            raise OperatorError(
                f"{type(self.estimator).__name__}.{self.output} returned {pred.dtype} "
                "values; a raster holds numbers (fit it on integer labels)"
            )
        return pred

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        x = np.asarray(chips)
        if x.ndim < 3:
            raise DimensionError(
                f"SklearnOp takes a batch of chips (n, bands, h, w), got shape {x.shape}"
            )
        n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
        features = math.prod(x.shape[1:-2])
        self._check_features(features)
        # (n, features, h, w) → one row per pixel, chip after chip, row-major
        table = np.moveaxis(x.reshape(n, features, h * w), 1, 2).reshape(-1, features)
        valid = np.isfinite(table).all(axis=1) if table.dtype.kind in "fc" else None
        k = self._n_out()
        out: np.ndarray | None = None
        if k is not None:
            out = np.full((len(table), k), np.nan, self._dtype)
        rows = np.arange(len(table)) if valid is None else np.flatnonzero(valid)
        for lo in range(0, len(rows), self.batch_pixels):
            take = rows[lo : lo + self.batch_pixels]
            # a contiguous run of rows (all valid) is a view, not a gathered copy
            span = take[0] + len(take) - 1 == take[-1]
            piece = table[take[0] : take[-1] + 1] if span else table[take]
            pred = self._predict(piece)
            if out is None:  # unknown count (no n_outputs_): the first answer tells
                out = np.full((len(table), pred.shape[1]), np.nan, self._dtype)
                self._seen_out = int(pred.shape[1])
            if pred.shape[1] != out.shape[1]:
                raise OperatorError(
                    f"{type(self.estimator).__name__}.{self.output} returned {pred.shape[1]} "
                    f"values per pixel, expected {out.shape[1]}"
                )
            out[take] = pred
        if out is None:  # no valid pixel and no declared count
            out = np.full((len(table), 1), np.nan, self._dtype)
        return np.ascontiguousarray(np.moveaxis(out.reshape(n, h * w, -1), 2, 1)).reshape(
            n, -1, h, w
        )

    # ---- declarations

    def output_spec(self, lead: tuple[int, ...], dtype: np.dtype) -> Spec | None:
        self._check_features(math.prod(lead))
        k = self._n_out()
        return None if k is None else ((k,), self._dtype)

    def output_attrs(self) -> dict[str, Any]:
        if self.output == "predict_proba" and self.classes is not None:
            return {"classes": [c.item() if hasattr(c, "item") else c for c in self.classes]}
        return {}

    # ---- config: the file, never the estimator

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        output: SklearnOutput = "predict",
        batch_pixels: int = DEFAULT_BATCH_PIXELS,
        sha256: str | None = None,
    ) -> SklearnOp:
        """A SklearnOp on the estimator saved at ``path``, with a config.

        ``path`` is a ``joblib.dump`` file (any pickle joblib reads) or, with the
        ``.skops`` suffix, a ``skops.io.dump`` file (needs ``skops``). The config records
        its absolute path and the SHA-256 of its bytes; building the operator from that
        config (``from_config(config, trusted=True)``, ``patchflow resume``) reads the file
        again and refuses one whose bytes changed. Loading a pickle runs code the file
        names: load only files you trust (hence ``trusted=True`` for configs).

        Parameters
        ----------
        path
            The saved estimator; recorded as an absolute path.
        output, batch_pixels
            As for :class:`SklearnOp`.
        sha256
            The SHA-256 the file must have (a config's); default: the file's own, now.

        Raises
        ------
        InputReadError
            The file is missing or holds no loadable estimator.
        ModelChangedError
            The file's SHA-256 is not ``sha256``.
        MissingExtraError
            scikit-learn (or, for ``.skops``, skops) is not installed.

        Examples
        --------
        >>> import joblib, tempfile
        >>> from sklearn.dummy import DummyClassifier
        >>> path = tempfile.mkdtemp() + "/model.joblib"
        >>> _ = joblib.dump(DummyClassifier().fit([[0.0], [1.0]], [0, 1]), path)
        >>> op = SklearnOp.from_file(path, output="predict_proba")
        >>> from patchflow.ops import from_json, to_json
        >>> from_json(to_json(op), trusted=True) == op
        True
        """
        file = Path(os.path.abspath(os.fspath(path)))
        if not file.is_file():
            raise InputReadError(f"model not found: {file}")
        data = file.read_bytes()  # hashed and loaded from the same bytes
        found = hashlib.sha256(data).hexdigest()
        if sha256 is not None and found != sha256:
            raise ModelChangedError(
                f"the model file {file} is not the one this operator was configured with: "
                f"its SHA-256 is {found[:16]}…, the config records {str(sha256)[:16]}… (the "
                "file was replaced or modified); restore that file, or configure the "
                "operator anew from the file now there (SklearnOp.from_file(path))",
                path=str(file),
                recorded=str(sha256),
                found=found,
            )
        estimator = _load_estimator(file, data)
        if not callable(getattr(estimator, "predict", None)):
            raise InputReadError(
                f"{file} holds a {type(estimator).__name__}, not an estimator with a predict "
                "method; save the fitted estimator itself (joblib.dump(estimator, path))"
            )
        op = cls(estimator, output=output, batch_pixels=batch_pixels)
        op.path, op.sha256 = str(file), found
        return op

    def _params(self) -> dict[str, Any]:
        if self.path is None:
            return {
                "estimator": self.estimator,
                "output": self.output,
                "batch_pixels": self.batch_pixels,
            }
        return {
            "path": self.path,
            "sha256": self.sha256,
            "output": self.output,
            "batch_pixels": self.batch_pixels,
        }

    def get_config(self) -> Config:
        if self.path is None:
            raise ConfigError(
                f"{self!r} wraps an in-memory estimator and has no config; save it with "
                "joblib.dump(estimator, path) and use SklearnOp.from_file(path), which has one"
            )
        return Operator.get_config(self)

    @classmethod
    def _from_params(cls, params: dict[str, Any]) -> SklearnOp:
        unknown = set(params) - {"path", "sha256", "output", "batch_pixels"}
        if unknown or "path" not in params:
            raise ConfigError(
                "a SklearnOp config takes 'path' (required), 'sha256', 'output' and "
                f"'batch_pixels'; got {sorted(params)}"
            )
        return cls.from_file(
            params["path"],
            sha256=params.get("sha256"),
            output=params.get("output", "predict"),
            batch_pixels=params.get("batch_pixels", DEFAULT_BATCH_PIXELS),
        )

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, SklearnOp)
        if self.path is None or other.path is None:
            return self.estimator is other.estimator and self._params() == other._params()
        return self._params() == other._params()

    def __hash__(self) -> int:
        if self.path is None:
            return hash(("SklearnOp", id(self.estimator), self.output, self.batch_pixels))
        return hash(("SklearnOp", self.sha256, self.output, self.batch_pixels))

    def __repr__(self) -> str:
        args = []
        if self.path is None:
            args.append(f"<{type(self.estimator).__name__}>")
        else:
            args += [repr(Path(self.path).name), f"sha256={str(self.sha256)[:12]}…"]
        args.append(f"output={self.output!r}")
        if self.batch_pixels != DEFAULT_BATCH_PIXELS:
            args.append(f"batch_pixels={self.batch_pixels}")
        return f"SklearnOp({', '.join(args)})"

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        from dask.base import tokenize

        # batch_pixels changes how rows are grouped, never a prediction: not in the token
        if self.path is not None:  # the bytes (their hash) make the results
            return ("patchflow.SklearnOp", self.sha256, self.output)
        return ("patchflow.SklearnOp", tokenize(self.estimator), self.output)
