"""Operator helpers: the calling convention for per-chip operators.

A *plain* operator is any callable taking one chip ``(non-spatial dims…, h, w)`` and
returning ``(out dims…, h, w)``. A *batched* operator takes a stack of chips
``(n, non-spatial dims…, h, w)`` and returns ``(n, out dims…, h, w)``; the engine calls it
once per ``batch_size`` chips of a block, which is what makes vectorised numpy and ML models
fast. Mark one with :func:`batched`, ``apply(..., batched=True)``, or give the object a
``batched = True`` attribute.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Batched", "batched", "is_batched"]


class Batched:
    """A callable marked as batched (picklable when the wrapped callable is)."""

    batched = True

    def __init__(self, fn: Callable[..., Any]) -> None:
        if not callable(fn):
            raise TypeError(f"batched() needs a callable, got {type(fn).__name__}")
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
