"""Chip stores: ``write_chips`` / ``open_chips`` (Zarr, a few chips per chunk).

A chip store holds ``image`` (and ``label``) chips from :func:`patchflow.sample`, with the
per-chip coordinates (anchor, CRS bounds, centre); :func:`open_chip_group` is the raw Zarr
view the torch datasets read from worker processes.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Hashable
from pathlib import Path
from typing import Any, Literal

import xarray as xr

from patchflow.engine.graph import (
    ZONAL_PREFIX as ZONAL_PREFIX,
)
from patchflow.errors import ParameterError, StoreExistsError

GROUP_BYTES = 8 * 2**20
CHIP_COORDS: tuple[str, ...] = (
    "row",
    "col",
    "xmin",
    "ymin",
    "xmax",
    "ymax",
    "x_center",
    "y_center",
)


def group_size(chips_per_task: int | None, chip_bytes: int, name: str) -> int:
    if chips_per_task is None:
        return int(min(8, max(1, GROUP_BYTES // max(chip_bytes, 1))))
    if isinstance(chips_per_task, bool) or not isinstance(chips_per_task, int):
        raise ParameterError(f"{name} must be a positive int, got {chips_per_task!r}")
    if chips_per_task < 1:
        raise ParameterError(f"{name} must be a positive int, got {chips_per_task!r}")
    return chips_per_task


# --------------------------------------------------------------------------- chip store


def write_chips(
    chips: xr.DataArray,
    store: str | os.PathLike[str],
    *,
    labels: xr.DataArray | None = None,
    chips_per_chunk: int | None = None,
    overwrite: bool = False,
    compute: bool = True,
) -> Any:
    """Write a chip dataset to a Zarr store (``image`` and, if any, ``label`` chips).

    Parameters
    ----------
    chips
        Chips from :func:`sample` (lazy or not).
    store
        Path of the Zarr store.
    labels
        Label chips ``(chip, y, x)`` aligned with ``chips`` (default: ``chips``' ``label``
        coordinate, if it has one).
    chips_per_chunk
        Chips per Zarr chunk (default: ~8 MB of image chips, at most 8).
    overwrite
        Replace an existing store (otherwise an existing store is an error).
    compute
        ``False``: return the dask delayed write instead of writing now.

    Returns
    -------
    pathlib.Path or dask.delayed.Delayed
        The store path (``compute=True``), else the pending write.

    Examples
    --------
    >>> from patchflow import sample
    >>> import tempfile
    >>> from patchflow.plan.samplers import Random
    >>> from patchflow.io.synthetic import make_scene
    >>> chips = sample(make_scene((256, 256), chunks=128), Random(4), size=32)
    >>> path = write_chips(chips, tempfile.mkdtemp() + "/chips.zarr")
    >>> open_chips(path)["image"].shape
    (4, 2, 32, 32)
    """
    if not isinstance(chips, xr.DataArray) or "chip" not in chips.dims:
        raise ParameterError("chips must be a DataArray with a 'chip' dim (see sample())")
    path = Path(os.fspath(store))
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise StoreExistsError(
            f"chip store {str(path)!r} already exists; pass overwrite=True to replace it"
        )
    image = chips.transpose("chip", ...)
    lab: Any = labels
    if lab is None and "label" in image.coords:
        lab = image.coords["label"].variable
    image = image.drop_vars("label", errors="ignore")
    chip_bytes = math.prod(image.shape[1:]) * image.dtype.itemsize
    per_chunk = group_size(chips_per_chunk, chip_bytes, "chips_per_chunk")
    variables: dict[Hashable, Any] = {"image": image.variable}
    if lab is not None:
        lab_var = lab.variable if isinstance(lab, xr.DataArray) else lab
        if lab_var.sizes.get("chip") != image.sizes["chip"]:
            raise ParameterError(
                f"labels have {lab_var.sizes.get('chip')} chips, the images {image.sizes['chip']}"
            )
        variables["label"] = lab_var
    ds = xr.Dataset(variables, coords=image.coords)
    ds.attrs.update(
        {k: v for k, v in chips.attrs.items() if k not in ("_FillValue", "missing_value")}
    )
    ds = ds.chunk({"chip": per_chunk, **{d: -1 for d in ds.dims if d != "chip"}})
    for var in ds.data_vars.values():
        var.encoding = {}
    target = os.fspath(path)
    mode: Literal["w", "w-"] = "w" if overwrite else "w-"
    with warnings.catch_warnings():
        # string band names have no Zarr v3 dtype spec yet; xarray/zarr warn about it
        warnings.filterwarnings("ignore", message=".*Zarr V3 specification.*")
        warnings.simplefilter("ignore", category=UserWarning)
        if not compute:
            return ds.to_zarr(target, mode=mode, consolidated=False, compute=False)
        ds.to_zarr(target, mode=mode, consolidated=False)
    return path


def open_chips(store: str | os.PathLike[str]) -> xr.Dataset:
    """Open a chip store written by :func:`write_chips` (lazy ``image``/``label``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        return xr.open_zarr(os.fspath(store), consolidated=False)


def open_chip_group(store: str | os.PathLike[str]) -> Any:
    """The chip store's raw Zarr group, read-only (cheap to open in each worker process)."""
    import zarr

    return zarr.open_group(os.fspath(store), mode="r", use_consolidated=False)
