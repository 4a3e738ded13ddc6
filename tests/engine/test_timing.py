"""Phase timers: off by default, filled by a real job when switched on."""

from __future__ import annotations

import numpy as np
import xarray as xr

import patchflow
from patchflow.engine.timing import PHASES, phase, record


def test_record_collects_every_kernel_phase_of_a_job() -> None:
    scene = xr.DataArray(np.random.default_rng(0).random((2, 200, 180)), dims=("band", "y", "x"))
    with record() as totals:
        patchflow.apply(scene, lambda c: c[:1] * 2, size=32, stride=24, chunks=64).compute(
            scheduler="threads"
        )
    assert {"prepare", "chips", "op", "accumulate", "merge", "normalise"} <= set(totals)
    assert set(totals) <= set(PHASES)
    assert all(v >= 0 for v in totals.values())


def test_timers_are_off_outside_record() -> None:
    with record() as totals:
        pass
    with phase("op"):
        pass
    assert totals == {}
