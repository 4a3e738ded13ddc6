"""What a streamed run did: :class:`RunReport`, and the record of each chip whose
operator call failed, :class:`ChipError` (light: importable without dask or zarr)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["ChipError", "RunReport"]


@dataclass(frozen=True)
class ChipError:
    """One chip whose operator call failed and was left out (``on_error="mask"``/``"skip"``).

    Examples
    --------
    >>> err = ChipError.from_record({"chip": 3, "bounds": [0, 64, 128, 192],
    ...     "type": "ValueError", "message": "bad chip", "traceback": "..."}, block=(0, 1))
    >>> err.describe()
    'chip 3 (rows 0:64, cols 128:192): ValueError: bad chip'
    """

    #: the chip's index in the grid (row-major: ``row * chips_per_row + col``)
    chip: int
    #: ``(row0, row1, col0, col1)``: the scene (input) pixels the chip covers, clipped to
    #: the scene; rows ``row0:row1``, cols ``col0:col1``
    bounds: tuple[int, int, int, int]
    #: the exception's type name (``"ValueError"``)
    error_type: str
    message: str
    #: the formatted traceback (its last 2000 characters: the raising frames)
    traceback: str
    #: ``"mask"`` (zero weight: other chips fill what they cover) or ``"skip"`` (every pixel
    #: it covers is nodata)
    on_error: str = "mask"
    #: ``(xmin, ymin, xmax, ymax)`` in the raster's CRS (``None``: no transform)
    world_bounds: tuple[float, float, float, float] | None = None
    crs: str | None = None
    #: the output block whose records hold it (a store's ``_patchflow/chip_errors/i.j.json``)
    block: tuple[int, int] | None = None

    @classmethod
    def from_record(
        cls, record: Mapping[str, Any], *, block: tuple[int, int] | None = None
    ) -> ChipError:
        """A record as the engine writes it (a JSON object) → :class:`ChipError`."""
        world = record.get("world_bounds")
        box = None
        if world:
            x0, y0, x1, y1 = (float(v) for v in world)
            box = (x0, y0, x1, y1)
        r0, r1, c0, c1 = (int(v) for v in record["bounds"])
        return cls(
            chip=int(record["chip"]),
            bounds=(r0, r1, c0, c1),
            error_type=str(record["type"]),
            message=str(record["message"]),
            traceback=str(record.get("traceback", "")),
            on_error=str(record.get("on_error", "mask")),
            world_bounds=box,
            crs=record.get("crs"),
            block=None if block is None else (int(block[0]), int(block[1])),
        )

    def describe(self) -> str:
        """One line: index, scene (and CRS) bounds, exception type and message."""
        r0, r1, c0, c1 = self.bounds
        text = f"chip {self.chip} (rows {r0}:{r1}, cols {c0}:{c1}"
        if self.world_bounds is not None:
            x0, y0, x1, y1 = self.world_bounds
            text += f"; x {x0:.6g}..{x1:.6g}, y {y0:.6g}..{y1:.6g}"
            if self.crs:
                text += f" in {self.crs}"
        return text + f"): {self.error_type}: {self.message}"


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
    #: chips whose operator call failed and were left out (``on_error="mask"``/``"skip"``)
    failed_chips: int = 0
    #: blocks that were marked done but failed verification and were recomputed
    repaired: int = 0
    #: ``"zarr"`` (a result store) or ``"cog"`` (a Cloud-Optimized GeoTIFF)
    kind: str = "zarr"
    #: the record of each failed chip (index, bounds, exception, traceback), by chip index
    chip_errors: tuple[ChipError, ...] = ()

    def open(self, *, verify: Literal["on_read", "now", "off"] | bool = "on_read") -> xr.DataArray:
        """The result, lazily, from the store (``verify``: see :func:`open_result`; by
        default each block is checked against its checksum as it is read). A COG opens
        with rioxarray (``verify`` does not apply: it has no block checksums), as ``apply``
        returns the result: a float result's nodata masked to NaN (the value stays its
        encoded nodata), an integer result's kept as a value."""
        if self.kind == "cog":
            import rioxarray

            out = rioxarray.open_rasterio(self.store)
            assert not isinstance(out, list)  # one raster, no subdatasets
            if out.dtype.kind == "f" and out.rio.nodata is not None:
                out = rioxarray.open_rasterio(self.store, masked=True)
                assert not isinstance(out, list)
            return out  # type: ignore[return-value]
        from patchflow.io.store import open_result

        return open_result(self.store, var=self.var, verify=verify)
