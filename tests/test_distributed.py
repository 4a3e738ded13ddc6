"""dask.distributed (issue 5): same result as local, survives a killed worker, bounded memory."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr

import patchflow
from patchflow.demo import dn_ndvi

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


def values(path: Path) -> np.ndarray:
    return np.asarray(patchflow.open_result(path).values)


def test_distributed_equals_local(
    scene_factory: Callable[..., xr.DataArray], client: Any, tmp_path: Path
) -> None:
    scene = scene_factory((1500, 1300), chunks=512)
    local = patchflow.run(scene, dn_ndvi, store=tmp_path / "local.zarr", scheduler="sync")
    remote = patchflow.run(scene, dn_ndvi, store=tmp_path / "dist.zarr")  # default client
    np.testing.assert_array_equal(values(tmp_path / "dist.zarr"), values(tmp_path / "local.zarr"))
    assert remote.computed == local.computed == remote.blocks
    # task names group on the dashboard under readable prefixes
    prefixes = set(client.run_on_scheduler(_task_prefixes))
    assert {"patchflow-chips", "patchflow-write"} <= prefixes


def _task_prefixes(dask_scheduler: Any) -> list[str]:
    return list(dask_scheduler.task_prefixes)


def test_worker_killed_mid_run(
    scene_factory: Callable[..., xr.DataArray], client: Any, tmp_path: Path
) -> None:
    scene = scene_factory((3072, 3072), seed=7, chunks=384)
    kw: dict[str, Any] = {"size": 128, "stride": 96}
    path = tmp_path / "killed.zarr"
    errors: list[BaseException] = []

    def job() -> None:
        try:
            patchflow.run(scene, dn_ndvi, store=path, **kw)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=job)
    thread.start()
    killed = False
    deadline = time.monotonic() + 120
    while thread.is_alive() and time.monotonic() < deadline:
        done = path / "_patchflow" / "done"
        if done.exists():
            try:
                n = int(np.asarray(zarr.open_array(str(path), path="_patchflow/done")[...]).sum())
            except Exception:  # being created
                n = 0
            if n >= 4 and not killed:
                pids = client.run(os.getpid)
                os.kill(next(iter(pids.values())), signal.SIGKILL)
                killed = True
        time.sleep(0.02)
    thread.join(timeout=180)
    assert killed, "the job finished before a worker could be killed"
    assert not errors, errors
    clean = patchflow.run(scene, dn_ndvi, store=tmp_path / "clean.zarr", scheduler="sync", **kw)
    assert clean.blocks == 64
    np.testing.assert_allclose(values(path), values(tmp_path / "clean.zarr"), atol=1e-6, rtol=0)
    done = np.asarray(zarr.open_array(str(path), path="_patchflow/done")[...])
    assert done.all()  # every block complete, none left half-written


def _rss_mb() -> float:
    import psutil

    return float(psutil.Process().memory_info().rss) / 1e6


@pytest.mark.timeout(300)
def test_memory_bounded_on_small_workers(
    scene_factory: Callable[..., xr.DataArray], tmp_path: Path
) -> None:
    # a 12288² scene on disk, decoded to float32 on read (1.2 GB) plus a float32 result
    # (0.6 GB), on two workers capped at 400 MB each: 2.25× the cluster's total memory limit
    limit = 400e6
    scene_factory((12288, 12288), chunks=1024).to_dataset(name="dn").to_zarr(
        tmp_path / "scene.zarr", zarr_format=3
    )
    scene = xr.open_zarr(tmp_path / "scene.zarr")["dn"]
    assert scene.nbytes + scene.nbytes // 2 > 2 * 2 * limit
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            memory_limit=limit,
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        before = c.run(os.getpid)
        peaks: dict[str, float] = {}
        result: list[Any] = []
        job = threading.Thread(
            target=lambda: result.append(patchflow.run(scene, dn_ndvi, store=tmp_path / "big.zarr"))
        )
        job.start()
        while job.is_alive():
            # workers are forked from this process, so ru_maxrss would start at our own
            # peak: sample their current RSS instead
            for worker, rss in c.run(_rss_mb).items():
                peaks[worker] = max(peaks.get(worker, 0.0), rss)
            time.sleep(0.1)
        job.join()
        assert c.run(os.getpid) == before, "a worker was restarted (ran out of memory)"
    assert result, "the job failed"
    report = result[0]
    assert report.computed == report.blocks == 12 * 12
    for worker, peak in peaks.items():
        assert peak * 1e6 < limit, f"{worker} peaked at {peak:.0f} MB"
    corner = patchflow.open_result(tmp_path / "big.zarr").isel(
        y=slice(12000, None), x=slice(12000, None)
    )
    ref = dn_ndvi(scene.isel(y=slice(12000, None), x=slice(12000, None)).values[None])[0]
    assert np.abs(corner.values - ref).max() <= 1e-6
