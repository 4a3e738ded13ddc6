"""The one place patchflow touches dask's private task representation.

``engine.graph.direct_read`` (and ``sampling.chip_array`` through it) reads a sub-window of an
input chunk straight from storage instead of computing the whole chunk and slicing it. To
do that it must look *inside* a chunk task — is it dask's ``getter(array, index, ...)``? —
and build a new getter task with a smaller index. Dask has no public API for either, so
both live here, behind two functions:

:func:`chunk_getter_call`
    ``task`` → :class:`GetterCall` (the getter, its storage argument, the index as a plain
    tuple, the remaining arguments) when ``task`` is a getter on a literal index, else
    ``None``;
:func:`make_getter_task`
    ``(key, call, index)`` → a task under ``key`` that makes the same getter call with
    ``index`` instead.

Both are conservative: anything they do not recognise — a dask without
``dask._task_spec``, graphs still made of legacy tuples (dask < 2024.12), a fused or
wrapped getter, an index that depends on other tasks — gives ``None``, and patchflow falls
back to cutting the window from the whole chunk (correct, just slower and with more memory
in flight). They never guess.

Known representations (``from_array``/``xr.open_zarr``/``rioxarray.open_rasterio`` chunk
tasks):

* dask >= 2024.12.1: ``Task(key, getter, <ref or DataNode(array)>, DataNode(index), ...)``;
* dask 2024.12.0: the same, with the index as a ``Tuple`` container of plain slices;
* dask < 2024.12: ``(subgraph_callable, ...)`` tuples — not recognised (fallback).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["AVAILABLE", "GetterCall", "chunk_getter_call", "make_getter_task"]

try:  # private dask API: everything that can move between releases is imported here only
    from dask import _task_spec
    from dask._task_spec import DataNode, GraphNode, Task
    from dask.array.core import getter, getter_inline, getter_nofancy
except ImportError:  # pragma: no cover - depends on the installed dask
    AVAILABLE = False
    _GETTERS: tuple[Callable[..., Any], ...] = ()
    _TUPLE_NODE: Any = None
else:
    AVAILABLE = True
    _GETTERS = (getter, getter_nofancy, getter_inline)
    # dask 2024.12.0 wrapped a literal tuple argument in this container (later: a DataNode)
    _TUPLE_NODE = getattr(_task_spec, "Tuple", None)


@dataclass(frozen=True)
class GetterCall:
    """A recognised ``func(array, index, *args, **kwargs)`` chunk read.

    ``array``, ``args`` and ``kwargs`` are opaque (references into the graph, locks, …)
    and only meant to be handed back to :func:`make_getter_task`; ``index`` is a plain
    tuple (of slices, for the chunks of ``da.from_array``/``xr.open_zarr``).
    """

    func: Callable[..., Any]
    array: Any
    index: tuple[Any, ...]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def _literal_index(node: Any) -> tuple[Any, ...] | None:
    """The index argument as a plain tuple, if it is a literal (depends on no task)."""
    if isinstance(node, DataNode):
        value = node.value
    elif _TUPLE_NODE is not None and isinstance(node, _TUPLE_NODE):
        if node.dependencies or any(isinstance(a, GraphNode) for a in node.args):
            return None
        value = tuple(node.args)
    else:
        value = node
    if not isinstance(value, tuple) or any(isinstance(v, GraphNode) for v in value):
        return None
    return value


def chunk_getter_call(task: Any) -> GetterCall | None:
    """Decompose a chunk task ``getter(array, index, *args, **kwargs)``, else ``None``.

    Recognises dask's own ``getter``, ``getter_nofancy`` and ``getter_inline`` (as made by
    ``da.from_array``, ``xr.open_zarr``, ``rioxarray.open_rasterio``) with a literal index.
    Returns ``None`` for any other task, and for every task on a dask whose task
    representation this module does not know.
    """
    if not AVAILABLE or type(task) is not Task:  # subclasses (containers, …) are not getters
        return None
    if task.func not in _GETTERS or len(task.args) < 2:
        return None
    index = _literal_index(task.args[1])
    if index is None:
        return None
    return GetterCall(task.func, task.args[0], index, tuple(task.args[2:]), dict(task.kwargs))


def make_getter_task(key: Any, call: GetterCall, index: tuple[Any, ...]) -> Any:
    """A task under ``key`` running ``call`` with ``index`` instead of its own index.

    ``call`` must come from :func:`chunk_getter_call` (so this dask's representation is
    known); the result goes into a graph layer like any other task.
    """
    if not AVAILABLE:  # pragma: no cover - chunk_getter_call never returns a call then
        raise RuntimeError("dask's task representation is not supported")
    return Task(key, call.func, call.array, DataNode(None, index), *call.args, **call.kwargs)
