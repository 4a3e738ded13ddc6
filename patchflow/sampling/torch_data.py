"""PyTorch ``Dataset`` adapters for chip stores and lazy chip sources (torch optional).

Both datasets are map-style (``len`` + ``__getitem__``), picklable and open nothing until
the first item is read, so they work with ``DataLoader(num_workers>0)`` under fork, spawn
or forkserver: each worker process opens the store (or builds its own dask slices) itself.

:class:`ChipStoreDataset`
    Reads ``image`` (and ``label``) chips from a Zarr store written by
    :func:`patchflow.io.chips.write_chips`, one chip per item straight from Zarr.
:class:`LazyChipDataset`
    Reads chips on demand from a lazy source (any dask/xarray raster, e.g. a COG opened
    with rioxarray) at given anchors, with the synchronous dask scheduler inside workers.

Items are ``(image, label)`` pairs, or ``image`` alone when there are no labels; numpy
arrays, or torch tensors with ``as_tensor=True`` (the default when torch is installed).

Examples
--------
>>> from patchflow.plan.samplers import Random
>>> from patchflow.io.synthetic import make_scene
>>> scene = make_scene((256, 256), chunks=128)
>>> ds = LazyChipDataset(scene, Random(3, seed=0).anchors((256, 256), 32), size=32,
...                      as_tensor=False, dtype="float32")
>>> len(ds), ds[0].shape, ds[0].dtype.name
(3, (2, 32, 32), 'float32')
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from patchflow.errors import ParameterError, optional_import
from patchflow.io.chips import open_chip_group
from patchflow.plan.grid import pair

__all__ = ["ChipStoreDataset", "LazyChipDataset", "torch_available"]

Transform = Callable[[np.ndarray, np.ndarray | None], tuple[np.ndarray, np.ndarray | None]]


def torch_available() -> bool:
    """Whether PyTorch can be imported."""
    return importlib.util.find_spec("torch") is not None


def _to_tensor(values: np.ndarray) -> Any:
    torch = optional_import(
        "torch", message="as_tensor=True needs PyTorch: pip install 'patchflow[torch]' (or torch)"
    )
    arr = np.ascontiguousarray(values)
    if arr.dtype == np.uint16:  # limited uint16 support in torch ops: widen losslessly
        arr = arr.astype(np.int32)
    return torch.from_numpy(arr)


class _Base:
    """Shared item logic: dtype casts, user transform, tensor conversion."""

    def __init__(
        self,
        *,
        as_tensor: bool | None,
        dtype: Any,
        label_dtype: Any,
        transform: Transform | None,
    ) -> None:
        self.as_tensor = torch_available() if as_tensor is None else bool(as_tensor)
        self.dtype = None if dtype is None else np.dtype(dtype)
        self.label_dtype = None if label_dtype is None else np.dtype(label_dtype)
        if transform is not None and not callable(transform):
            raise ParameterError(f"transform must be callable, got {type(transform).__name__}")
        self.transform = transform

    def _finish(self, image: np.ndarray, label: np.ndarray | None) -> Any:
        if self.dtype is not None:
            image = image.astype(self.dtype, copy=False)
        if label is not None and self.label_dtype is not None:
            label = label.astype(self.label_dtype, copy=False)
        if self.transform is not None:
            image, label = self.transform(image, label)
        if self.as_tensor:
            image = _to_tensor(image)
            label = None if label is None else _to_tensor(label)
        return image if label is None else (image, label)


class ChipStoreDataset(_Base):
    """Chips of a Zarr chip store (:func:`patchflow.io.chips.write_chips`) as a dataset.

    Parameters
    ----------
    store
        Path of the store (the dataset keeps the path, never an open handle, so it pickles).
    image, label
        Names of the image and label arrays (``label=None``: images only; the default
        ``"label"`` is used if the store has it).
    as_tensor
        Return torch tensors (default: if torch is installed) or numpy arrays.
    dtype, label_dtype
        Cast images/labels to these dtypes (e.g. ``"float32"``, ``"int64"``).
    transform
        ``f(image, label) -> (image, label)`` on numpy arrays, before tensor conversion.

    Examples
    --------
    >>> import tempfile
    >>> from patchflow.plan.samplers import Random
    >>> from patchflow import sample, write_chips
    >>> from patchflow.io.synthetic import make_scene
    >>> path = write_chips(sample(make_scene((128, 128)), Random(4), size=16),
    ...                    tempfile.mkdtemp() + "/c.zarr")
    >>> ds = ChipStoreDataset(path, as_tensor=False)
    >>> len(ds), ds[3].shape
    (4, (2, 16, 16))
    """

    def __init__(
        self,
        store: str | os.PathLike[str],
        *,
        image: str = "image",
        label: str | None = "label",
        as_tensor: bool | None = None,
        dtype: Any = None,
        label_dtype: Any = None,
        transform: Transform | None = None,
    ) -> None:
        super().__init__(
            as_tensor=as_tensor, dtype=dtype, label_dtype=label_dtype, transform=transform
        )
        self.store = os.fspath(store)
        self.image = image
        group = self._open()
        names = set(group.array_keys())
        if image not in names:
            raise ParameterError(f"{self.store!r} has no {image!r} array (found {sorted(names)})")
        self.label = label if label is not None and label in names else None
        self._length = int(group[image].shape[0])
        self._group: Any = None  # opened lazily in each process

    def _open(self) -> Any:
        return open_chip_group(self.store)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_group"] = None  # never ship an open store to a worker
        return state

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> Any:
        i = int(index)
        if i < 0:
            i += self._length
        if not 0 <= i < self._length:
            raise IndexError(f"chip {index} out of range for {self._length} chips")
        if self._group is None:
            self._group = self._open()
        image = np.asarray(self._group[self.image][i])
        label = None if self.label is None else np.asarray(self._group[self.label][i])
        return self._finish(image, label)


class LazyChipDataset(_Base):
    """Chips read on demand from a lazy raster at given anchors.

    Each item slices ``source[..., r:r+h, c:c+w]`` (and the same window of ``labels``) and
    computes it with the synchronous scheduler: only the source chunks under the chip are
    read (for Zarr/COG sources only the chip window).

    Parameters
    ----------
    source
        DataArray (or Dataset) with spatial dims, lazy or not.
    anchors
        ``(n, 2)`` chip ``(row, col)`` anchors, e.g. ``sampler.anchors(...)`` or the
        ``row``/``col`` coordinates of :func:`patchflow.sampling.sample` chips.
    size
        Chip size, int or ``(h, w)``.
    labels
        Optional label raster aligned with ``source``.
    as_tensor, dtype, label_dtype, transform
        As in :class:`ChipStoreDataset`.
    """

    def __init__(
        self,
        source: Any,
        anchors: Any,
        *,
        size: int | tuple[int, int] = 256,
        labels: Any = None,
        as_tensor: bool | None = None,
        dtype: Any = None,
        label_dtype: Any = None,
        transform: Transform | None = None,
    ) -> None:
        from patchflow._xr import georef
        from patchflow.sampling.chips import _as_dataarray, _label_array

        super().__init__(
            as_tensor=as_tensor, dtype=dtype, label_dtype=label_dtype, transform=transform
        )
        arr = _as_dataarray(source)
        self.size = pair(size, "size")
        anc = np.asarray(anchors, dtype=np.int64).reshape(-1, 2)
        h, w = self.size
        shape = arr.shape[-2:]
        if len(anc) and (
            (anc < 0).any() or (anc[:, 0] + h > shape[0]).any() or (anc[:, 1] + w > shape[1]).any()
        ):
            raise ParameterError(f"some {h}x{w} chips at these anchors leave the scene {shape}")
        self.anchors = anc
        self.anchors.setflags(write=False)
        self.source = arr.data
        self.labels = None
        if labels is not None:
            transform, _ = georef(arr)
            self.labels = _label_array(labels, (int(shape[0]), int(shape[1])), transform).data

    def __len__(self) -> int:
        return len(self.anchors)

    @staticmethod
    def _read(values: Any, r: int, c: int, h: int, w: int) -> np.ndarray:
        window = values[..., r : r + h, c : c + w]
        if hasattr(window, "compute"):
            window = window.compute(scheduler="synchronous")
        return np.asarray(window)

    def __getitem__(self, index: int) -> Any:
        r, c = (int(v) for v in self.anchors[int(index)])
        h, w = self.size
        image = self._read(self.source, r, c, h, w)
        label = None if self.labels is None else self._read(self.labels, r, c, h, w)
        return self._finish(image, label)
