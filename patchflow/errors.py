"""patchflow's exception hierarchy, the wording of fixes (Python or command line), and
:func:`optional_import`, the one way an optional package is imported (its absence is a
:class:`MissingExtraError` naming the extra).

Every error patchflow raises on purpose derives from :class:`PatchflowError`, so callers
can catch ours without catching everything. Errors about bad arguments also derive from
:class:`ValueError` (or :class:`TypeError`), so generic handlers keep working.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import importlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

__all__ = [
    "PEER_KEYWORDS",
    "AugmentationError",
    "BandNodataError",
    "ChipFailedWarning",
    "CommandError",
    "ConfigError",
    "CorruptStoreError",
    "CoverageError",
    "DimensionError",
    "ForeignFilesError",
    "GridError",
    "ImportTargetError",
    "IncompleteStoreError",
    "InputReadError",
    "InputTypeError",
    "LayerOverflowError",
    "MaskValueError",
    "MemoryBudgetError",
    "MissingExtraError",
    "ModelChangedError",
    "ModelNotFittedError",
    "NoValidPixelsError",
    "NodataCollisionError",
    "OperatorError",
    "OutputOverlapsInputError",
    "ParameterError",
    "PatchflowError",
    "PatchflowWarning",
    "RadiometryMetadataError",
    "ResampledGridWarning",
    "ResumeMismatchError",
    "ResumeRecipeError",
    "StoreError",
    "StoreExistsError",
    "StoreLockedError",
    "StoreMismatchError",
    "StorePathError",
    "StoreWriteError",
    "UsageError",
    "UserCodeError",
    "WindowError",
    "check_keywords",
    "cli_wording",
    "optional_import",
]


class PatchflowError(Exception):
    """Base class of every error patchflow raises on purpose."""


class ParameterError(PatchflowError, ValueError):
    """An option has a value patchflow cannot use (unknown name, wrong type, out of range)."""


class GridError(ParameterError):
    """The chip grid cannot be planned: bad size/stride, chip larger than scene, gaps..."""


class WindowError(ParameterError):
    """The blending window is unknown or malformed."""


class ConfigError(ParameterError):
    """An operator config cannot be written or read (unknown name, bad params, Lambda…)."""


class InputTypeError(PatchflowError, TypeError):
    """An argument has the wrong type (not an xarray object, not callable, not a tensor…)."""


class MissingExtraError(PatchflowError, ImportError):
    """An optional dependency is not installed; the message names the ``patchflow[...]``
    extra that brings it (still an ``ImportError`` for code that catches those)."""


def optional_import(*names: str, message: str | Callable[[ImportError], str]) -> Any:
    """Import the modules ``names`` in order and return the first, or raise
    :class:`MissingExtraError` with ``message`` (the install line for the extra that brings
    them; a callable gets the ``ImportError``), chained to the ``ImportError``.

    Examples
    --------
    >>> optional_import("json", message="cannot happen").__name__
    'json'
    >>> optional_import("no_such_module_here", message="pip install 'patchflow[plot]'")
    Traceback (most recent call last):
    ...
    patchflow.errors.MissingExtraError: pip install 'patchflow[plot]'
    """
    try:
        modules = [importlib.import_module(name) for name in names]
    except ImportError as exc:
        text = message(exc) if callable(message) else message
        raise MissingExtraError(text) from exc
    return modules[0]


class DimensionError(PatchflowError, ValueError):
    """The input lacks the dimensions patchflow needs (spatial y/x)."""


class OperatorError(PatchflowError, RuntimeError):
    """A per-chip operator failed or returned something that breaks its contract."""


class PatchflowWarning(UserWarning):
    """Something works but is probably not what you want (slow chunking, empty output...)."""


class ChipFailedWarning(PatchflowWarning):
    """Chips whose operator call failed were left out (``on_error="mask"``/``"skip"``).

    ``apply`` warns once per failed chip (its index, scene bounds and exception); ``run``
    warns once at the end with the count, the records being in the store
    (``check_store(STORE).chip_errors``, ``patchflow inspect STORE``)."""


class ResampledGridWarning(PatchflowWarning):
    """``open_stac``'s output grid is not the assets' own pixel grid (assets offset from it
    or from one another by a fraction of a pixel, coarser than it, or reprojected onto
    it): their values are resampled, not read as they are; ``resampling="nearest"`` moves
    them by up to half a pixel. The message names the assets, why, and how to read them
    exactly."""


class NodataCollisionError(PatchflowError, ValueError):
    """A valid output value equals the chosen nodata value (it would read back as missing)."""


# --------------------------------------------------------------------------- keywords

#: chip size used in worked examples when the call gives none (prepare's default)
_DEFAULT_SIZE = 256

#: keywords that other tiling libraries use → (where they come from, patchflow's equivalent)
PEER_KEYWORDS: dict[str, tuple[str, str]] = {
    "overlap": ("tiler/MONAI", "stride= (pixels between chip starts: stride = size - overlap)"),
    "input_overlap": ("xbatcher", "stride= (stride = size - overlap, per axis)"),
    "depth": ("dask map_overlap", "stride= (neighbouring chips overlap by 2*depth)"),
    "roi_size": ("MONAI", "size="),
    "tile_shape": ("tiler", "size= (the chip's (y, x); bands are not part of it)"),
    "input_dims": ("xbatcher", "size= (a (y, x) pair)"),
    "patch_size": ("patchify/torch", "size="),
    "window_shape": ("skimage view_as_windows", "size="),
    "window_size": ("other tiling tools", "size="),
    "chip_size": ("other tiling tools", "size="),
    "tile_size": ("other tiling tools", "size="),
    "step": ("patchify/skimage", "stride="),
    "steps": ("other tiling tools", "stride="),
    "sw_batch_size": ("MONAI", "batch_size= (chips per operator call)"),
    "mode": ("MONAI (its blend mode)", "window= (the blending window)"),
    "sigma_scale": ("MONAI", "window_params={'sigma': pixels} with window='gaussian'"),
    "padding_mode": ("MONAI", "boundary='pad' with pad_mode="),
    "device": ("MONAI", "patchflow.ModelOp(model, device=...) as the operator"),
    "progress": ("MONAI", "patchflow.run(..., progress=True), or a dask ProgressBar"),
}

_SIZE_KEYS = (
    "size",
    "roi_size",
    "patch_size",
    "tile_shape",
    "window_shape",
    "input_dims",
    "chip_size",
    "tile_size",
    "window_size",
)
_MONAI_PAD = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _yx(value: Any) -> tuple[float, float] | None:
    """``(y, x)`` from a number, a sequence (its last two entries) or a ``{dim: n}`` mapping."""
    if _is_number(value):
        return float(value), float(value)
    if isinstance(value, Mapping):
        named = {str(k).lower(): v for k, v in value.items()}
        y = next((named[k] for k in ("y", "lat", "latitude", "row", "rows") if k in named), None)
        x = next((named[k] for k in ("x", "lon", "longitude", "col", "cols") if k in named), None)
        items = [y, x] if y is not None and x is not None else list(named.values())
    elif isinstance(value, str):
        return None
    else:
        try:
            items = list(value)
        except TypeError:
            return None
    if len(items) == 1:
        items = items * 2
    if len(items) < 2 or not all(_is_number(v) for v in items[-2:]):
        return None
    return float(items[-2]), float(items[-1])


def _show(pair: tuple[float, float]) -> str:
    """``256`` for an equal pair, ``(256, 128)`` otherwise (ints shown without ``.0``)."""
    a, b = (int(v) if float(v).is_integer() else v for v in pair)
    return f"{a}" if a == b else f"({a}, {b})"


def _chip_size(given: Mapping[str, Any]) -> tuple[tuple[float, float], str]:
    """The chip size the call gives (or names via a peer keyword), and how to say it."""
    for key in _SIZE_KEYS:
        if key in given:
            yx = _yx(given[key])
            if yx is not None and min(yx) > 0 and all(float(v).is_integer() for v in yx):
                said = f"size={_show(yx)}"
                return yx, said if key == "size" else f"{said} (from {key})"
    size = float(_DEFAULT_SIZE)
    return (size, size), f"size={_DEFAULT_SIZE} (the default)"


def _overlap(key: str, value: Any, given: Mapping[str, Any]) -> str | None:
    size, said = _chip_size(given)
    ov = _yx(value)
    if ov is None:
        return None
    stride = []
    for o, s in zip(ov, size, strict=True):
        if key == "depth":
            px = 2 * o
        elif 0 <= o < 1:  # a fraction of the chip (MONAI; tiler for floats)
            px = round(o * s)
        elif o >= 1 and float(o).is_integer():  # pixels (tiler ints, xbatcher)
            px = o
        else:
            return None
        stride.append(s - px)
    if min(stride) <= 0:
        return f"{key}={value!r} with {said} would leave no stride: overlap must be < size"
    return f"{key}={value!r} with {said} → stride={_show((stride[0], stride[1]))}"


def _size(key: str, value: Any, given: Mapping[str, Any]) -> str | None:
    yx = _yx(value)
    if yx is None:
        return None
    return f"{key}={value!r} → size={_show(yx)}"


def _stride(key: str, value: Any, given: Mapping[str, Any]) -> str | None:
    yx = _yx(value)
    return None if yx is None else f"{key}={value!r} → stride={_show(yx)}"


def _batch(key: str, value: Any, given: Mapping[str, Any]) -> str | None:
    return f"{key}={value!r} → batch_size={value!r}"


def _mode(key: str, value: Any, given: Mapping[str, Any]) -> str | None:
    size, _ = _chip_size(given)
    if value == "constant":
        return "mode='constant' → window='boxcar' (equal weights)"
    if value == "gaussian":
        sigma = _show((0.125 * size[0], 0.125 * size[1]))
        return (
            f"mode='gaussian' → window='gaussian', window_params={{'sigma': {sigma}}} "
            "(MONAI's default sigma_scale=0.125 of the chip, in pixels)"
        )
    return "e.g. mode='gaussian' → window='gaussian'; mode='constant' → window='boxcar'"


def _sigma(key: str, value: Any, given: Mapping[str, Any]) -> str | None:
    size, said = _chip_size(given)
    if not _is_number(value):
        return None
    sigma = _show((float(value) * size[0], float(value) * size[1]))
    return (
        f"sigma_scale={value!r} with {said} → window='gaussian', window_params={{'sigma': {sigma}}}"
    )


def _padding(key: str, value: Any, given: Mapping[str, Any]) -> str | None:
    mode = _MONAI_PAD.get(str(value))
    if mode is None:
        return "pad_mode is one of numpy's pad modes: constant, reflect, edge, symmetric, wrap"
    return f"padding_mode={value!r} → boundary='pad', pad_mode={mode!r}"


def _nothing(key: str, value: Any, given: Mapping[str, Any]) -> str | None:
    return None


_CONVERT: dict[str, Callable[[str, Any, Mapping[str, Any]], str | None]] = {
    "overlap": _overlap,
    "input_overlap": _overlap,
    "depth": _overlap,
    "step": _stride,
    "steps": _stride,
    "sw_batch_size": _batch,
    "mode": _mode,
    "sigma_scale": _sigma,
    "padding_mode": _padding,
    **{k: _size for k in _SIZE_KEYS[1:]},
}


def _explain(func_name: str, key: str, value: Any, given: Mapping[str, Any]) -> str:
    origin, equivalent = PEER_KEYWORDS[key]
    text = f"{key!r} comes from {origin}; patchflow's equivalent is {equivalent}"
    try:
        example = _CONVERT.get(key, _nothing)(key, value, given)
    except Exception:  # a worked example is a courtesy: never let it mask the real error
        example = None
    return f"{text}: {example}" if example else text


def check_keywords(func_name: str, given: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Reject keywords ``func_name`` does not take, with the fix for each.

    Keywords other tiling libraries use (tiler's ``overlap``/``tile_shape``, MONAI's
    ``roi_size``/``sw_batch_size``/``mode``, xbatcher's ``input_dims``/``input_overlap``,
    ``patch_size``, ``step``...) get patchflow's equivalent with a worked conversion
    computed from the call's own values; other unknown names get the closest valid name.

    Parameters
    ----------
    func_name
        The public function being called, for the message (``"apply"``, ``"run"``...).
    given
        The keyword arguments of the call.
    allowed
        The keyword names the function accepts.

    Raises
    ------
    ParameterError
        Naming every unknown keyword (a :class:`ValueError`, not Python's usual
        :class:`TypeError`, like every patchflow bad-argument error).

    Examples
    --------
    >>> check_keywords("apply", {"size": 256, "stride": 192}, ["size", "stride"])
    >>> check_keywords("apply", {"size": 256, "overlap": 0.25}, ["size", "stride"])
    Traceback (most recent call last):
    ...
    patchflow.errors.ParameterError: apply() got an unknown keyword: 'overlap' comes from \
tiler/MONAI; patchflow's equivalent is stride= (pixels between chip starts: \
stride = size - overlap): overlap=0.25 with size=256 → stride=192
    >>> check_keywords("apply", {"strid": 96}, ["size", "stride"])
    Traceback (most recent call last):
    ...
    patchflow.errors.ParameterError: apply() got an unknown keyword: 'strid'; did you mean \
'stride'?
    """
    valid = sorted(set(allowed))
    unknown = [str(k) for k in given if k not in valid]
    if not unknown:
        return
    parts = []
    for key in unknown:
        if key in PEER_KEYWORDS:
            parts.append(_explain(func_name, key, given[key], given))
            continue
        close = difflib.get_close_matches(key, valid, n=2, cutoff=0.6)
        if close:
            parts.append(f"{key!r}; did you mean {' or '.join(map(repr, close))}?")
        else:
            parts.append(f"{key!r}; {func_name}() takes: {', '.join(valid)}")
    head = "an unknown keyword" if len(parts) == 1 else f"{len(parts)} unknown keywords"
    raise ParameterError(f"{func_name}() got {head}: " + "; ".join(parts))


# --------------------------------------------------------------------------- stores
# (patchflow.io.store re-exports these; they live here so the hierarchy is in one place)


class StoreError(PatchflowError, OSError):
    """The output store cannot be written (permissions, disk full, file too large...)."""


class StoreWriteError(StoreError):
    """Writing the store failed part-way; it is left incomplete (never marked complete)."""


class StorePathError(StoreError):
    """The store path cannot hold a store: it is a file, or a symbolic link."""


class StoreLockedError(StoreError):
    """Another run (in this or another process) is writing the store right now."""


class StoreExistsError(PatchflowError, FileExistsError):
    """The output store exists and neither ``overwrite`` nor ``resume`` was given."""


class ForeignFilesError(StoreExistsError):
    """``overwrite`` refused: the store directory holds files patchflow did not write."""


class IncompleteStoreError(PatchflowError, RuntimeError):
    """The store's job did not finish: some blocks are missing."""


class CorruptStoreError(IncompleteStoreError):
    """Blocks of a store fail verification (a result chunk is missing or damaged)."""


class StoreMismatchError(PatchflowError, ValueError):
    """``resume``/``accumulate`` on a store written by a different job layout."""


class ResumeMismatchError(StoreMismatchError):
    """``resume``/``accumulate`` on a store written by a different job.

    ``fields`` holds ``(field, value in the store, value now)`` for every difference.
    """

    def __init__(self, message: str, fields: tuple[tuple[str, Any, Any], ...] = ()) -> None:
        super().__init__(message)
        self.fields = tuple(fields)

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (str(self), self.fields)


class ResumeRecipeError(PatchflowError, RuntimeError):
    """A store cannot be resumed on its own: it records no usable input/operator recipe."""


class OutputOverlapsInputError(ParameterError):
    """The output path is, contains, or lies inside an input: writing would destroy it."""


class CreationOptionError(ParameterError):
    """A GDAL COG creation option is unknown, has a bad value, does not fit the result
    (``PREDICTOR=3`` on integers) or would be ignored; refused before the job runs."""


class ImportTargetError(ConfigError):
    """An imported operator (:class:`patchflow.ops.Imported`, ``--op MODULE:CALLABLE``)
    cannot be built: its module or name is not found, it is not an operator, or its
    parameters do not fit it.

    ``part`` says which half of the spec is wrong (``"target"``: ``MODULE:CALLABLE``;
    ``"params"``: the parameters) and ``detail`` is the message without the target, so
    the command line can put each under its own flag.
    """

    def __init__(self, message: str, *, detail: str = "", part: str = "target") -> None:
        super().__init__(message)
        self.detail = detail or message
        self.part = part

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (type(self), str(self), {"detail": self.detail, "part": self.part})


class UserCodeError(OperatorError):
    """The user's own module, named by an imported operator, raised while being imported."""


class ModelChangedError(ConfigError):
    """A model file is not the one an operator was configured with (its SHA-256 differs):
    resuming with it would blend two models' results.

    ``path`` is the file, ``recorded`` and ``found`` the SHA-256 configured and now.
    """

    def __init__(self, message: str, *, path: str = "", recorded: str = "", found: str = ""):
        super().__init__(message)
        self.path, self.recorded, self.found = path, recorded, found

    def __reduce__(self) -> tuple[Any, ...]:
        kwargs = {"path": self.path, "recorded": self.recorded, "found": self.found}
        return _rebuild, (type(self), str(self), kwargs)


def _rebuild(cls: type[Exception], message: str, kwargs: dict[str, Any]) -> Exception:
    return cls(message, **kwargs)


class InputReadError(PatchflowError, OSError):
    """An input raster is missing or cannot be read."""


class BandNodataError(ParameterError):
    """An input carries one nodata value, but the bands of the file it was read from each
    have their own (a VRT, ENVI, HFA or netCDF file can): that one value would mask real
    pixels of some bands and keep the nodata of others as data. The message names the file,
    its per-band values, and how to read it so that each band keeps its own."""


class UsageError(PatchflowError):
    """The ``patchflow`` command line is wrong (exit status 2)."""


class CommandError(PatchflowError):
    """The ``patchflow`` command could not do its job (exit status 1)."""


class CoverageError(ParameterError):
    """Too many chips cover one pixel for an aggregation that keeps every chip's value
    (``agg="median"``/``"mode"``: one layer per chip, at most
    :data:`patchflow.engine.aggregate.MAX_LAYERS`); use a larger stride, fewer
    overlapping chips, or ``agg="overlap_add"``."""


class MemoryBudgetError(ParameterError):
    """A job's per-block merge state would not fit in memory (e.g. ``agg="vote"`` with
    thousands of classes keeps a count and a weight sum per class and pixel); refused
    before anything runs, with the ways out: smaller ``chunks=`` or another ``agg``."""


class LayerOverflowError(CoverageError):
    """A pixel received more chip values than the ``layers=`` an aggregation was built
    with (the bound was computed wrongly: it must be the most chips over one pixel)."""


class MaskValueError(PatchflowError, ValueError):
    """A mask band holds values that are no codes of its product: an SCL value outside
    0..11, a QA_PIXEL word outside 0..65535, or a fraction (a resampled or wrong band).
    The message names the values, the band, and how to fix the input."""


class ModelNotFittedError(ParameterError):
    """A model was handed to an operator before it was trained (a scikit-learn
    estimator never ``fit``): fit it on training pixels first."""


class AugmentationError(ParameterError):
    """A training augmentation (flips, rotations, band dropout, brightness jitter) was
    used where geometry or values must be kept (``patchflow.apply``/``run`` stitching),
    or on chips it cannot transform (``Rot90`` on non-square chips)."""


class RadiometryMetadataError(ParameterError):
    """A radiometric conversion cannot be set up from what the source and the arguments
    say: the processing baseline / offsets are missing or contradict each other, or the
    data was already scaled on read. The message names the keys read and what to pass."""


class NoValidPixelsError(ParameterError):
    """A scene statistic (e.g. DOS1's dark object) was asked of a band with no valid
    pixel: every value is NaN or nodata. The message names the band."""


# --------------------------------------------------------------------------- wording

_CLI: contextvars.ContextVar[bool] = contextvars.ContextVar("patchflow_cli_wording", default=False)

#: the fixes errors offer, in the caller's words: (Python, command line)
_WORDS = {
    "overwrite": ("overwrite=True", "--overwrite"),
    "resume": ("resume=True", "--resume"),
    "finish": (
        "patchflow.resume(store), or patchflow.run(..., resume=True) with the same "
        "input, operator and parameters",
        "'patchflow resume STORE', or 'patchflow apply INPUT OUTPUT --resume' with the same "
        "INPUT and options",
    ),
    "same": (
        "the same input, operator and parameters",
        "the same INPUT (or --stac/--assets) and options (--op/--op-arg, --pipeline or "
        "--model, --bands, --red/--nir/--scale, chips)",
    ),
    "rerun": (
        "call patchflow.run(obj, op, store=..., resume=True) with the same input, operator "
        "and parameters",
        "run 'patchflow apply INPUT OUTPUT --resume' again with the same INPUT and options",
    ),
    "another": ("write to another store", "choose another OUTPUT"),
    "store": ("the output store", "OUTPUT"),
    "input": ("the input", "INPUT"),
    "var": ("var=", "--var"),
    "name": ("name=", "--name"),
    "result_var": ("var=", "--name"),
    # keyword → flag: ``_w("epsg", value=32610)`` is ``epsg=32610`` / ``--epsg 32610``
    "epsg": ("epsg=", "--epsg"),
    "resolution": ("resolution=", "--resolution"),
    "bounds": ("bounds=", "--bounds"),
    "snap_bounds": ("snap_bounds=", "--snap-bounds"),
    "snap_bounds_unset": ("leave snap_bounds unset", "leave --snap-bounds out"),
    "creation_options": ("creation_options=", "--co"),
    "zarr_format": ("zarr_format=", "--zarr-format"),
    "size": ("size", "--size"),
    "chunks": ("chunks=", "--chunks"),
    "input_nodata": ("input_nodata=", "--input-nodata"),
    "agg_mode": ("agg='mode'", "--agg mode"),
    "vote_classes": ("agg='vote' with n_classes=", "--agg vote with --n-classes"),
    "boundary_pad": ("boundary='pad'", "--boundary pad"),
    "op_args": ("parameters", "--op-arg"),
    "pythonpath": (
        "the Python path (sys.path, or the PYTHONPATH environment variable)",
        "PYTHONPATH, e.g. PYTHONPATH=/path/to/dir patchflow ...",
    ),
}


@contextlib.contextmanager
def cli_wording() -> Iterator[None]:
    """Word patchflow's errors for the ``patchflow`` command (``--overwrite``, not
    ``overwrite=True``) inside the ``with`` block."""
    token = _CLI.set(True)
    try:
        yield
    finally:
        _CLI.reset(token)


def _w(key: str, cli: bool | None = None, *, value: Any = None) -> str:
    """The fix ``key`` in the caller's words; with ``value``, a keyword or flag set to it
    (``epsg=32610`` for Python, ``--epsg 32610`` on the command line)."""
    python, command = _WORDS[key]
    if _CLI.get() if cli is None else cli:
        return command if value is None else f"{command} {value}"
    return python if value is None else f"{python}{value}"
