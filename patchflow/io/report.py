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

    #: the output: a Zarr store's directory, or a COG file (``kind="cog"``)
    store: str
    var: str
    blocks: int
    computed: int
    skipped: int
    #: wall time of the computation (for a COG, including GDAL's copy into it)
    seconds: float
    mode: str
    #: chips whose operator call failed and were masked (``on_error="mask"``)
    failed_chips: int = 0
    #: blocks that were marked done but failed verification and were recomputed
    repaired: int = 0
    #: ``"zarr"`` (a result store) or ``"cog"`` (a Cloud-Optimized GeoTIFF)
    kind: str = "zarr"

    def open(self, *, verify: bool = False) -> xr.DataArray:
        """The result, lazily, from the store (``verify``: see :func:`open_result`; off by
        default because the run has just written and checked every block). A COG opens
        with rioxarray (``verify`` does not apply: it has no block checksums)."""
        if self.kind == "cog":
            import rioxarray

            out = rioxarray.open_rasterio(self.store)
            assert not isinstance(out, list)  # one raster, no subdatasets
            return out  # type: ignore[return-value]
        from patchflow.io.store import open_result

        return open_result(self.store, var=self.var, verify=verify)
