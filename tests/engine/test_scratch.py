"""The per-thread result memory (:mod:`patchflow.engine.scratch`)."""

from __future__ import annotations

import pickle
import threading

import numpy as np
from dask.base import tokenize

from patchflow.engine.scratch import Scratch, empty


def test_views_share_one_buffer_per_thread_and_grow() -> None:
    scratch = Scratch()
    a = scratch.empty((4, 5), np.float32)
    b = scratch.empty((2, 3), np.float64)
    assert np.shares_memory(a, b)  # reused, whatever the shape and dtype
    assert a.flags.c_contiguous and b.flags.c_contiguous
    big = scratch.empty((100, 100), np.float64)  # larger: a new buffer
    assert big.shape == (100, 100) and big.dtype == np.float64
    assert not np.shares_memory(big, a)
    assert np.shares_memory(scratch.empty((3,), np.int8), big)
    assert scratch.empty((0, 7), np.float32).shape == (0, 7)


def test_threads_get_their_own_buffers() -> None:
    scratch = Scratch()
    seen: dict[str, np.ndarray] = {}

    def take(name: str) -> None:
        seen[name] = scratch.empty((64, 64), np.float32)

    threads = [threading.Thread(target=take, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not np.shares_memory(seen["a"], seen["b"])


def test_pickles_empty_and_tokenizes_as_a_constant() -> None:
    scratch = Scratch()
    scratch.empty((10,), np.float32)
    copy = pickle.loads(pickle.dumps(scratch))
    assert getattr(copy._local, "buf", None) is None
    assert tokenize(copy) == tokenize(scratch) == tokenize(Scratch())


def test_without_a_scratch_every_array_is_new() -> None:
    a, b = empty((3,), np.float32, None), empty((3,), np.float32, None)
    assert not np.shares_memory(a, b)
