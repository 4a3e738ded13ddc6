"""Where a job's time goes: optional per-phase timers inside the block kernels.

Off by default: each timer is then one attribute check. :func:`record` switches them on
for a ``with`` block and collects thread time per phase (summed over the threads of the
threaded scheduler; workers in other processes keep their own, unreported, totals):

========================  ==============================================================
phase                     what it covers
========================  ==============================================================
``prepare``               validity masks, NaN fill, padding of a block's input
``chips``                 cutting the chips of a batch out of the block (and casting)
``op``                    the operator on a batch
``weights``               the window weights of a batch
``accumulate``            adding ``w · out`` (and ``w``) into the block's partial
``seal``                  per-axis denominators, cropping the partial
``merge``                 adding the neighbours' spill-over into an output block
``normalise``             ``num / den`` and the result dtype/nodata
``write``                 compressing and writing the output chunk (and the checksum)
========================  ==============================================================

Reading and decompressing the input happens in dask's own tasks (``xr.open_zarr`` getters,
the ``patchflow-read-halo`` direct reads); ``benchmarks/profile_run.py`` gets those from
dask's task profiler and puts them beside these phases.

Examples
--------
>>> with record() as totals:
...     with phase("op"):
...         pass
>>> sorted(totals)
['op']
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

__all__ = ["PHASES", "phase", "record"]

PHASES = (
    "prepare",
    "chips",
    "op",
    "weights",
    "accumulate",
    "seal",
    "merge",
    "normalise",
    "write",
)


class _Recorder:
    def __init__(self) -> None:
        self.on = False
        self.lock = threading.Lock()
        self.totals: dict[str, float] = {}


_STATE = _Recorder()


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Time the ``with`` block under ``name`` while :func:`record` is active."""
    if not _STATE.on:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        spent = time.perf_counter() - start
        with _STATE.lock:
            _STATE.totals[name] = _STATE.totals.get(name, 0.0) + spent


@contextlib.contextmanager
def record() -> Iterator[dict[str, float]]:
    """Switch the timers on; yields the ``{phase: seconds}`` dict they fill."""
    with _STATE.lock:
        _STATE.totals = {}
        _STATE.on = True
    try:
        yield _STATE.totals
    finally:
        _STATE.on = False
