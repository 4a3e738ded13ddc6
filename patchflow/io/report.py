"""What a streamed run did: :class:`RunReport` (light: importable without dask or zarr)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["RunReport"]


@dataclass(frozen=True)
class RunReport:
    """What :func:`run` did."""

    store: str
    var: str
    blocks: int
    computed: int
    skipped: int
    seconds: float
    mode: str
    #: chips whose operator call failed and were masked (``on_error="mask"``)
    failed_chips: int = 0
    #: blocks that were marked done but failed verification and were recomputed
    repaired: int = 0

    def open(self, *, verify: bool = False) -> xr.DataArray:
        """The result, lazily, from the store (``verify``: see :func:`open_result`; off by
        default because the run has just written and checked every block)."""
        from patchflow.io.store import open_result

        return open_result(self.store, var=self.var, verify=verify)
