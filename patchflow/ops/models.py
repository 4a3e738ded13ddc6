"""Machine-learning models as patchflow operators (PyTorch optional).

:class:`ModelOp` runs any model on the engine's batches of chips: a callable on numpy
batches, or — when PyTorch is installed — a ``torch.nn.Module``, run in eval mode under
``torch.inference_mode()`` on the chosen device (CUDA where available), optionally in half
precision. torch is imported lazily: this module imports and works without it.

:class:`TorchScript` (``ModelOp.from_torchscript(path)``) is a ModelOp on a TorchScript
file that is also *data*: its config is the file's absolute path and SHA-256 and the run
options, so a pipeline holding it writes to JSON and into a store's job record
(``patchflow apply --model``; ``patchflow resume`` reloads the file and refuses one that
changed), and it pickles to worker processes as the script's bytes.

Examples
--------
>>> import numpy as np
>>> op = ModelOp(lambda x: x.mean(axis=1, keepdims=True), batch_size=2)
>>> op(np.ones((5, 3, 8, 8), np.float32)).shape
(5, 1, 8, 8)
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from patchflow.errors import (
    InputReadError,
    InputTypeError,
    ModelChangedError,
    ParameterError,
    optional_import,
)
from patchflow.ops.base import Config, ConfigError, Operator, Spec, register

__all__ = ["ModelOp", "TorchScript", "file_sha256", "is_torch_module", "tiny_cnn"]

_TORCH_DTYPES = ("float16", "bfloat16", "float32", "float64")
#: chips per model call when ``batch_size`` is not given: a torch model on CPU runs one
#: chip at a time (its convolution workspace grows with the batch and falls out of cache:
#: ``benchmarks/ml_op.py`` measured 1 chip/call 2× faster than 16 and 100+ MB lighter);
#: on a GPU, and for other callables, batches amortise the call overhead
CPU_BATCH = 1
DEFAULT_BATCH = 64


def _torch() -> Any:
    return optional_import(
        "torch",
        message="this needs PyTorch: pip install 'patchflow[torch]' (for a CPU-only build, "
        "first pip install torch --index-url https://download.pytorch.org/whl/cpu)",
    )


def is_torch_module(model: Any) -> bool:
    """Whether ``model`` is a ``torch.nn.Module`` (without importing torch).

    Examples
    --------
    >>> is_torch_module(lambda x: x)
    False
    """
    module = getattr(getattr(sys.modules.get("torch"), "nn", None), "Module", None)
    return module is not None and isinstance(model, module)


def _dtype_name(dtype: Any) -> str | None:
    if dtype is None:
        return None
    if isinstance(dtype, str):
        name = dtype
    elif type(dtype).__module__ == "torch":  # torch.float16 → "float16"
        name = str(dtype).removeprefix("torch.")
    else:
        name = np.dtype(dtype).name
    name = {"half": "float16", "float": "float32", "double": "float64"}.get(name, name)
    if name not in _TORCH_DTYPES:
        raise ParameterError(f"dtype must be one of {', '.join(_TORCH_DTYPES)}, got {dtype!r}")
    return name


class ModelOp(Operator):
    """Run a model on batches of chips.

    Parameters
    ----------
    model
        A ``torch.nn.Module`` or any callable taking a numpy batch ``(n, *lead, h, w)``
        (``(n, h, w, *lead)`` with ``channels_last``) and returning ``(n, *out, h', w')``
        (resp. ``(n, h', w', *out)``).
    batch_size
        Most chips per model call: the engine's batches are split into pieces of this
        size (the last one smaller), bounding the model's memory. Default: 1 for a torch
        model on CPU (fastest there, and the lightest), 64 on a GPU and for other
        callables.
    device
        torch device; default ``"cuda"`` if available on the worker, else ``"cpu"``
        (resolved on first call, where the op runs). Ignored for non-torch models.
    dtype
        Compute dtype: ``"float16"``/``"bfloat16"`` for half precision, ``"float32"``
        (torch default) or ``"float64"`` (also torch dtypes). For a non-torch model the
        input batch is cast to it.
    channels_last
        The model takes and returns channels-last arrays (NHWC); chips are moved to that
        layout before the call and back after.
    output_bands, output_dtype
        Declared output bands (int, or tuple for the full non-spatial shape) and dtype so
        :meth:`output_spec` can answer without a dry run (torch outputs default to
        float32).
    scale
        Output pixels per input pixel (2.0 for ×2 super-resolution, 0.25 for a stride-4
        encoder).

    Notes
    -----
    For a torch module the model is switched to eval mode and moved to ``device`` (and
    ``dtype``) in place on first call. Inputs are converted to float32 tensors (then to
    ``dtype``); floating outputs come back as float32 numpy arrays, integer outputs keep
    their dtype. The op pickles with its model (torch modules pickle) for process and
    distributed schedulers; a factory such as :func:`tiny_cnn` defined in an importable
    module keeps that working for workers. ModelOp has no config (it wraps an arbitrary
    model): :meth:`get_config` raises :class:`~patchflow.ops.ConfigError`.

    Examples
    --------
    >>> import numpy as np
    >>> calls = []
    >>> def model(x):
    ...     calls.append(len(x))
    ...     return x[:, :1] * 2
    >>> ModelOp(model, batch_size=4)(np.ones((10, 2, 3, 3))).shape, calls
    ((10, 1, 3, 3), [4, 4, 2])
    """

    def __init__(
        self,
        model: Callable[..., Any],
        batch_size: int | None = None,
        device: str | None = None,
        dtype: Any = None,
        channels_last: bool = False,
        output_bands: int | tuple[int, ...] | None = None,
        output_dtype: npt.DTypeLike | None = None,
        scale: float = 1.0,
    ) -> None:
        if not callable(model):
            raise ParameterError(f"ModelOp needs a callable model, got {type(model).__name__}")
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise ParameterError(f"batch_size must be a positive int, got {batch_size!r}")
        scale = float(scale)
        if not (np.isfinite(scale) and scale > 0):
            raise ParameterError(f"scale must be a positive finite number, got {scale!r}")
        self.model = model
        self.batch_size = batch_size
        self.device = None if device is None else str(device)
        self.dtype = _dtype_name(dtype)
        self.channels_last = bool(channels_last)
        self.output_bands: tuple[int, ...] | None = None
        if output_bands is not None:
            bands = (output_bands,) if isinstance(output_bands, int) else output_bands
            self.output_bands = tuple(int(v) for v in bands)
        self.output_dtype = None if output_dtype is None else np.dtype(output_dtype)
        self._scale = scale
        self._lock = threading.Lock()
        self._ready: tuple[Any, Any] | None = None

    # ---- pickling: drop the lock and the per-process device state

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_lock"] = None
        state["_ready"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # ---- running

    def _prepare_torch(self) -> tuple[Any, Any]:
        """``(device, dtype)``; moves the model there and sets eval mode, once per process."""
        ready = self._ready
        if ready is not None:
            return ready
        with self._lock:
            if self._ready is None:
                torch = _torch()
                device = torch.device(
                    self.device or ("cuda" if torch.cuda.is_available() else "cpu")
                )
                dtype = getattr(torch, self.dtype or "float32")
                model: Any = self.model
                model.eval()
                model.to(device=device, dtype=dtype)
                self._ready = (device, dtype)
            return self._ready

    def _to_model_layout(self, x: np.ndarray) -> np.ndarray:
        return np.moveaxis(x, (-2, -1), (1, 2)) if self.channels_last else x

    def _from_model_layout(self, y: np.ndarray) -> np.ndarray:
        if not self.channels_last:
            return y
        if y.ndim < 3:
            raise ParameterError(
                f"a channels-last model must return (n, h, w, …), got shape {y.shape}"
            )
        return np.moveaxis(y, (1, 2), (-2, -1))

    def _run_torch(self, batch: np.ndarray) -> np.ndarray:
        torch = _torch()
        device, dtype = self._prepare_torch()
        x = np.ascontiguousarray(self._to_model_layout(batch), dtype=np.float32)
        tensor = torch.from_numpy(x).to(device=device, dtype=dtype, non_blocking=True)
        with torch.inference_mode():
            y = self.model(tensor)
        if not isinstance(y, torch.Tensor):
            raise InputTypeError(
                f"the model returned {type(y).__name__}; ModelOp needs a single tensor "
                "(wrap the model to pick one output)"
            )
        if y.is_floating_point():
            y = y.float()
        return self._from_model_layout(y.cpu().numpy())

    def _run_numpy(self, batch: np.ndarray) -> np.ndarray:
        x = batch if self.dtype is None else batch.astype(self.dtype)
        y = np.asarray(self.model(self._to_model_layout(x)))
        return self._from_model_layout(y)

    def _batch_size(self, torch_model: bool) -> int:
        if self.batch_size is not None:
            return self.batch_size
        if torch_model and self._prepare_torch()[0].type == "cpu":
            return CPU_BATCH
        return DEFAULT_BATCH

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        chips = np.asarray(chips)
        torch_model = is_torch_module(self.model)
        run = self._run_torch if torch_model else self._run_numpy
        n, bs = len(chips), self._batch_size(torch_model)
        outs = [run(chips[lo : lo + bs]) for lo in range(0, n, bs)] or [run(chips)]
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    # ---- declarations

    def output_spec(self, lead: tuple[int, ...], dtype: np.dtype) -> Spec | None:
        if self.output_bands is None:
            return None
        out_dtype = self.output_dtype
        if out_dtype is None:
            if not is_torch_module(self.model):
                return None
            out_dtype = np.dtype(np.float32)
        return self.output_bands, out_dtype

    def _params(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "batch_size": self.batch_size,
            "device": self.device,
            "dtype": self.dtype,
            "channels_last": self.channels_last,
            "output_bands": self.output_bands,
            "output_dtype": None if self.output_dtype is None else self.output_dtype.name,
            "scale": self._scale,
        }

    def get_config(self) -> Any:
        raise ConfigError(
            "ModelOp wraps an arbitrary model and has no config; save it as TorchScript "
            "(torch.jit.script(model).save(path)) and use ModelOp.from_torchscript(path), "
            "which has one"
        )

    @classmethod
    def from_torchscript(
        cls,
        path: str | os.PathLike[str],
        *,
        device: str | None = None,
        batch_size: int | None = None,
    ) -> TorchScript:
        """A ModelOp on the TorchScript file ``path`` that has a config (see
        :class:`TorchScript`, which takes the other ModelOp options too).

        Examples
        --------
        >>> op = ModelOp.from_torchscript("unet.pt", device="cpu")  # doctest: +SKIP
        >>> op.get_config()["params"]["path"]  # doctest: +SKIP
        '/home/me/models/unet.pt'
        """
        return TorchScript(path, device=device, batch_size=batch_size)

    def __repr__(self) -> str:
        params = self._params()
        model = params.pop("model")
        kind = "torch " if is_torch_module(model) else ""
        name = getattr(model, "__qualname__", None) or type(model).__name__
        args = [f"<{kind}{name}>"]
        args += [f"{k}={v!r}" for k, v in params.items() if v is not None and v is not False]
        return f"ModelOp({', '.join(args)})"

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        from dask.base import tokenize

        params = self._params()
        model = params.pop("model")
        if is_torch_module(model):
            digest = hashlib.sha256(repr(model).encode())
            for key, value in model.state_dict().items():
                digest.update(key.encode())
                raw = value.detach().cpu().contiguous().reshape(-1)
                digest.update(str(raw.dtype).encode())
                digest.update(raw.view(_torch().uint8).numpy().tobytes())
            model_token = digest.hexdigest()
        else:
            model_token = tokenize(model)
        return ("patchflow.ModelOp", model_token, tokenize(params))


def tiny_cnn(
    in_channels: int,
    out_channels: int,
    seed: int = 0,
    *,
    hidden: int = 8,
    kernel_size: int = 3,
    depth: int = 2,
) -> Any:
    """A small deterministic conv net (zero padding, "same" size) for tests and demos.

    ``depth`` conv layers of ``kernel_size`` with ReLU between them, so the receptive field
    is ``depth·(kernel_size − 1) + 1`` pixels. Weights are drawn from a private generator
    seeded with ``seed``. Built from torch's own layers, so it pickles anywhere torch is
    installed (process and distributed workers included).

    Examples
    --------
    >>> import pytest; torch = pytest.importorskip("torch")
    >>> net = tiny_cnn(2, 1, seed=0)
    >>> tuple(net(torch.zeros(1, 2, 16, 16)).shape)
    (1, 1, 16, 16)
    """
    torch = _torch()
    nn = torch.nn
    if depth < 1 or kernel_size < 1 or kernel_size % 2 == 0:
        raise ParameterError("tiny_cnn needs depth >= 1 and an odd kernel_size")
    layers: list[Any] = []
    chans = [in_channels] + [hidden] * (depth - 1) + [out_channels]
    for k in range(depth):
        layers.append(nn.Conv2d(chans[k], chans[k + 1], kernel_size, padding=kernel_size // 2))
        if k < depth - 1:
            layers.append(nn.ReLU())
    net = nn.Sequential(*layers)
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for param in net.parameters():
            fan_in = max(1, param[0].numel()) if param.ndim > 1 else chans[0]
            param.copy_(torch.randn(param.shape, generator=gen) / fan_in**0.5)
    return net.eval()


# --------------------------------------------------------------------------- TorchScript files


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB pieces (a model of any size).

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile(delete=False) as f:
    ...     _ = f.write(b"abc")
    >>> file_sha256(f.name)[:16]
    'ba7816bf8f01cfea'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        for piece in iter(lambda: src.read(2**20), b""):
            digest.update(piece)
    return digest.hexdigest()


def _load_script(path: str) -> Any:
    """``torch.jit.load(path)`` on the CPU (:meth:`ModelOp._prepare_torch` moves it), its
    failures named."""
    torch = _torch()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation in favour of export
            return torch.jit.load(path, map_location="cpu")
    except Exception as exc:
        text = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise InputReadError(
            f"cannot load {path} as a TorchScript model (torch.jit.load): "
            f"{type(exc).__name__}: {text}; save one with torch.jit.script(model).save(path) "
            "(or torch.jit.trace)"
        ) from exc


@register
class TorchScript(ModelOp):
    """A TorchScript model file as an operator whose config is the file, not the model.

    The config is ``{path, sha256, device, batch_size, …}``: the file's absolute path and
    the SHA-256 of its bytes, and the :class:`ModelOp` options. Loading the config reads
    the file again and refuses one whose bytes changed (:class:`ModelChangedError`), so a
    store's job record (``patchflow resume``) never finishes a result with another model.
    The operator pickles (to process and ``dask.distributed`` workers) as the script's
    bytes: workers need no access to the file.

    Loading a TorchScript file runs the model's code, so a config naming one loads only
    with ``from_config(config, trusted=True)`` (see :class:`~patchflow.ops.Imported`).

    Parameters
    ----------
    path
        The TorchScript file (``torch.jit.script(model).save(path)`` or
        ``torch.jit.trace``); recorded as an absolute path.
    sha256
        The SHA-256 the file must have (a config's); default: the file's own, now.
    device, batch_size, dtype, channels_last, output_bands, output_dtype, scale
        As for :class:`ModelOp`.

    Raises
    ------
    InputReadError
        The file is missing or is not a TorchScript model.
    ModelChangedError
        The file's SHA-256 is not ``sha256``.
    ParameterError
        ``device`` is not a torch device, or another option is invalid.
    ImportError
        PyTorch is not installed (``pip install patchflow[torch]``).

    Examples
    --------
    >>> import pytest, tempfile; torch = pytest.importorskip("torch")
    >>> path = tempfile.mkdtemp() + "/net.pt"
    >>> torch.jit.script(tiny_cnn(2, 1)).save(path)
    >>> op = ModelOp.from_torchscript(path, device="cpu", batch_size=4)
    >>> from patchflow.ops import from_json, to_json
    >>> from_json(to_json(op), trusted=True) == op
    True
    >>> op(np.zeros((3, 2, 16, 16), np.float32)).shape
    (3, 1, 16, 16)
    """

    _runs_code = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sha256: str | None = None,
        device: str | None = None,
        batch_size: int | None = None,
        dtype: Any = None,
        channels_last: bool = False,
        output_bands: int | tuple[int, ...] | None = None,
        output_dtype: npt.DTypeLike | None = None,
        scale: float = 1.0,
    ) -> None:
        torch = _torch()
        file = Path(os.path.abspath(os.fspath(path)))
        if not file.is_file():
            raise InputReadError(f"model not found: {file}")
        if device is not None:
            try:
                device = str(torch.device(device))
            except (RuntimeError, ValueError, TypeError):
                raise ParameterError(
                    f"device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)"
                ) from None
        found = file_sha256(file)
        if sha256 is not None and found != sha256:
            raise ModelChangedError(
                f"the model file {file} is not the one this operator was configured with: "
                f"its SHA-256 is {found[:16]}…, the config records {str(sha256)[:16]}… (the "
                "file was replaced or modified); restore that file, or configure the "
                "operator anew from the file now there (ModelOp.from_torchscript(path))",
                path=str(file),
                recorded=str(sha256),
                found=found,
            )
        super().__init__(
            _load_script(str(file)),
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            channels_last=channels_last,
            output_bands=output_bands,
            output_dtype=output_dtype,
            scale=scale,
        )
        self.path = str(file)
        self.sha256 = found

    # ---- pickling: the script's bytes (TorchScript modules refuse pickle)

    def __getstate__(self) -> dict[str, Any]:
        torch = _torch()
        state = super().__getstate__()
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation: nothing to act on
            torch.jit.save(self.model, buffer)
        state["model"] = buffer.getvalue()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        torch = _torch()
        state = dict(state)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state["model"] = torch.jit.load(io.BytesIO(state["model"]), map_location="cpu")
        super().__setstate__(state)

    # ---- config

    def _params(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "device": self.device,
            "batch_size": self.batch_size,
            "dtype": self.dtype,
            "channels_last": self.channels_last,
            "output_bands": None if self.output_bands is None else list(self.output_bands),
            "output_dtype": None if self.output_dtype is None else self.output_dtype.name,
            "scale": self._scale,
        }

    def get_config(self) -> Config:
        return Operator.get_config(self)

    def __repr__(self) -> str:
        params = self._params()
        args = [repr(Path(params.pop("path")).name), f"sha256={params.pop('sha256')[:12]}…"]
        defaults = {"channels_last": False, "scale": 1.0}
        args += [f"{k}={v!r}" for k, v in params.items() if v is not None and defaults.get(k) != v]
        return f"TorchScript({', '.join(args)})"

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        from dask.base import tokenize

        params = self._params()
        params.pop("path")  # the bytes (their hash) make the results, not where they live
        return ("patchflow.TorchScript", tokenize(params))
