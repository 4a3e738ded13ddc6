"""Reusable per-thread memory for block results that never leave their task.

A store-writing job finalises each output block, compresses it into Zarr and drops it:
the block is never seen again. A fresh block-sized array costs page faults every time on
top of the arithmetic (measured here: 0.5–3.5 ms of system time per MB on a VM), and
arrays above the C allocator's mmap ceiling (32 MiB in glibc: a 2-band float32 2112²
block is 36 MB) are returned to the OS on every free. :class:`Scratch` hands each worker
thread one growing buffer instead, viewed at whatever shape and dtype a block asks for.

Only a caller that is done with a result before it asks for the next may pass a
:class:`Scratch` (:class:`patchflow.io.store.BlockSink` does; the in-memory path, whose
results are dask chunks, does not). It pickles as a new, empty one (each worker process
gets its own) and tokenizes as a constant (it holds no data of the job).

Examples
--------
>>> scratch = Scratch()
>>> a = scratch.empty((2, 3), np.float32)
>>> b = scratch.empty((3, 2), np.float32)
>>> np.shares_memory(a, b)
True
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

__all__ = ["Scratch", "empty"]


class Scratch:
    """One reusable buffer per thread: :meth:`empty` returns a view of it."""

    def __init__(self) -> None:
        self._local = threading.local()

    def empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """An uninitialised C-contiguous array of ``shape`` and ``dtype`` in this thread's
        buffer (grown when too small), valid until this thread's next call."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        buf: np.ndarray | None = getattr(self._local, "buf", None)
        if buf is None or buf.nbytes < nbytes:
            self._local.buf = None  # (free the old buffer before the new one is made)
            buf = self._local.buf = np.empty(max(nbytes, 1), np.uint8)
        return buf[:nbytes].view(dtype).reshape(shape)

    def __reduce__(self) -> tuple[type[Scratch], tuple[()]]:
        return (Scratch, ())

    def __dask_tokenize__(self) -> str:
        return "patchflow-scratch"

    def __repr__(self) -> str:
        return "Scratch()"


def empty(shape: tuple[int, ...], dtype: Any, scratch: Scratch | None) -> np.ndarray:
    """``scratch.empty(shape, dtype)``, or a new array without a scratch."""
    if scratch is None:
        return np.empty(shape, dtype)
    return scratch.empty(shape, dtype)
