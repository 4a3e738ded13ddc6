"""Opening STAC items as a lazy ``(time, band, y, x)`` stack: :func:`open_stac`.

This module owns turning STAC Items — local JSON files, item dicts, pystac objects — into
the plain item dicts stackstac reads (relative asset hrefs resolved, projection v2
``proj:code`` normalised to the ``proj:epsg`` stackstac 0.5 reads), checking them before
anything is read (named errors for missing files, non-STAC JSON, unknown assets, mixed
CRSs), choosing the output grid (the assets' own pixel grid when they share one, even off
multiples of the resolution, where stackstac's ``-tap`` snapping would shift it by a
fraction of a pixel; a warning whenever values are resampled instead), and georeferencing
stackstac's result the rioxarray way (pixel-centre coordinates, CRS, transform and nodata
written with ``.rio``), so patchflow's grid lands exactly on the assets' pixels. It also
records how the stack was opened (:data:`STAC_CALL`), which a result store's resume recipe
uses to open the same stack again (``patchflow resume STORE``).

Examples
--------
>>> import json, tempfile
>>> from pathlib import Path
>>> from patchflow.io.synthetic import make_scene
>>> root = Path(tempfile.mkdtemp())
>>> scene = make_scene((64, 64), chunks=None)
>>> scene.sel(band="red").rio.to_raster(root / "B04.tif")
>>> item = {
...     "type": "Feature", "stac_version": "1.1.0", "id": "one", "geometry": None,
...     "properties": {"datetime": "2024-06-01T00:00:00Z"}, "links": [],
...     "assets": {"B04": {"href": "B04.tif", "type": "image/tiff; application=geotiff",
...                        "proj:code": "EPSG:32610", "proj:shape": [64, 64],
...                        "proj:transform": list(scene.rio.transform())[:6]}},
... }
>>> _ = (root / "item.json").write_text(json.dumps(item))
>>> stack = open_stac(root / "item.json", assets=["B04"])
>>> stack.dims, stack.shape, str(stack.rio.crs)
(('time', 'band', 'y', 'x'), (1, 1, 64, 64), 'EPSG:32610')
>>> stack.rio.transform() == scene.rio.transform()
True
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urljoin

from patchflow.errors import (
    InputReadError,
    InputTypeError,
    ParameterError,
    ResampledGridWarning,
    _w,
)

if TYPE_CHECKING:
    import xarray as xr
    from affine import Affine
    from rasterio.enums import Resampling

__all__ = ["STAC_ASSET_FILES", "STAC_CALL", "open_stac"]

#: the ``encoding`` key where :func:`open_stac` records its call: ``{"items": [absolute
#: paths], "assets": [...], "resolution": ..., ...}`` (every argument, as JSON), or
#: ``{"reason": ...}`` when the items were Python objects, not files. In ``encoding``, like
#: rioxarray's ``encoding["source"]``: it travels with the array through indexing and
#: ``.rio`` calls, never into a result's attrs, and stays JSON for a store's recipe.
STAC_CALL = "patchflow_stac"

#: the ``encoding`` key where :func:`open_stac` lists the local asset files it stacks
#: (absolute paths). stackstac names its dask graph after the hrefs, not the files' contents,
#: so only these files tell a result store that an asset was rewritten in place between a
#: run and its resume (or accumulate pass), which would otherwise blend old and new values.
STAC_ASSET_FILES = "patchflow_stac_assets"

#: rasterio resampling methods by name (what ``resampling=`` accepts besides the enum)
ResamplingName = Literal[
    "nearest",
    "bilinear",
    "cubic",
    "cubic_spline",
    "lanczos",
    "average",
    "mode",
    "max",
    "min",
    "med",
    "q1",
    "q3",
    "sum",
    "rms",
]

_EPSG_CODE = re.compile(r"^\s*EPSG:(\d+)\s*$", re.IGNORECASE)
_STAC_KINDS = "an Item (a GeoJSON Feature with assets), an ItemCollection or a list of Items"


# --------------------------------------------------------------------------- items


def _is_remote(href: str) -> bool:
    return "://" in href or href.startswith("/vsi")


def _not_stac(source: str, detail: str, from_file: bool) -> Exception:
    """The error for ``source`` not being STAC: a read error for a file, else a bad value."""
    text = f"{source} is not STAC JSON: {detail}; expected {_STAC_KINDS}"
    return InputReadError(text) if from_file else ParameterError(text)


def _read_json(path: Path) -> Any:
    if not path.exists():
        raise InputReadError(f"STAC file not found: {path}")
    if path.is_dir():
        raise InputReadError(
            f"{path} is a directory; pass the STAC JSON file(s) in it (an Item or an "
            "ItemCollection .json)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputReadError(f"cannot read the STAC file {path}: {exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _not_stac(str(path), f"not JSON ({exc})", from_file=True) from exc


def _features(
    doc: Any, source: str, base: str | None, from_file: bool
) -> list[tuple[dict[str, Any], str | None]]:
    """The Items in a parsed JSON document, each with the base its relative hrefs resolve on."""
    if isinstance(doc, list):
        return [pair for entry in doc for pair in _features(entry, source, base, from_file)]
    if not isinstance(doc, Mapping):
        raise _not_stac(source, f"found a JSON {type(doc).__name__}", from_file)
    kind = doc.get("type")
    if kind == "FeatureCollection":
        members = doc.get("features")
        if not isinstance(members, list):
            raise _not_stac(source, "a FeatureCollection without a 'features' list", from_file)
        return [pair for entry in members for pair in _features(entry, source, base, from_file)]
    if kind != "Feature":
        what = f"'type': {kind!r}" if kind is not None else "no 'type'"
        hint = (
            " (a Collection or Catalog: pass its Items)"
            if kind in ("Collection", "Catalog")
            else ""
        )
        raise _not_stac(source, f"a JSON object with {what}{hint}", from_file)
    for key in ("id", "properties", "assets"):
        if key not in doc:
            raise _not_stac(
                source, f"a Feature without {key!r} (GeoJSON, not a STAC Item)", from_file
            )
    if not isinstance(doc["assets"], Mapping) or not isinstance(doc["properties"], Mapping):
        raise _not_stac(
            source, f"Item {doc['id']!r} has malformed 'assets'/'properties'", from_file
        )
    return [(dict(doc), base)]


def _collect(items: Any) -> list[tuple[dict[str, Any], str | None]]:
    """Every Item in ``items`` as ``(item dict, base for relative hrefs)``, in order."""
    if isinstance(items, str | os.PathLike):
        text = os.fspath(items)
        if _is_remote(text):
            raise ParameterError(
                f"open_stac reads local STAC files; for {text!r} load the items first "
                "(pystac.ItemCollection.from_file(url) or a pystac_client search's "
                "item_collection()) and pass them"
            )
        path = Path(text).resolve()
        return _features(_read_json(path), str(path), str(path.parent), from_file=True)
    if isinstance(items, Mapping):
        return _features(items, "the item dict", None, from_file=False)
    members = getattr(items, "items", None)
    if isinstance(members, list) and callable(getattr(items, "to_dict", None)):
        return [pair for member in members for pair in _collect(member)]  # pystac ItemCollection
    to_dict = getattr(items, "to_dict", None)
    if callable(to_dict):  # a pystac Item (pystac stays an optional import)
        self_href = getattr(items, "get_self_href", lambda: None)()
        base = os.path.dirname(self_href) if isinstance(self_href, str) else None
        source = f"{type(items).__name__} {getattr(items, 'id', '')}".strip()
        return _features(to_dict(), source, base, from_file=False)
    if isinstance(items, Sequence) and not isinstance(items, bytes):
        return [pair for entry in items for pair in _collect(entry)]
    raise InputTypeError(
        f"open_stac items must be a STAC JSON file path, a list of paths, a pystac Item or "
        f"ItemCollection, an item dict or a list of them; got {type(items).__name__}"
    )


def _epsg_of(fields: Mapping[str, Any]) -> int | None:
    """``proj:epsg``, or the EPSG number of projection v2's ``proj:code``."""
    epsg = fields.get("proj:epsg")
    if isinstance(epsg, int) and not isinstance(epsg, bool):
        return epsg
    code = fields.get("proj:code")
    match = _EPSG_CODE.match(code) if isinstance(code, str) else None
    return int(match.group(1)) if match else None


def _normalise(item: dict[str, Any], base: str | None) -> dict[str, Any]:
    """A deep copy of ``item`` with ``proj:epsg`` filled from ``proj:code`` (stackstac 0.5.1
    reads only ``proj:epsg``; pystac ≥ 1.12 writes only ``proj:code``) and relative asset
    hrefs made absolute (stackstac would open them relative to the working directory)."""
    item = copy.deepcopy(item)
    props = item["properties"] = dict(item["properties"])
    epsg = _epsg_of(props)
    if epsg is not None:
        props["proj:epsg"] = epsg
    assets = {}
    for key, asset in item["assets"].items():
        asset = dict(asset)
        epsg = _epsg_of(asset)
        if epsg is not None:
            asset["proj:epsg"] = epsg
        href = asset.get("href")
        if not isinstance(href, str) or not href:
            raise ParameterError(f"asset {key!r} of item {item['id']!r} has no href")
        if href.startswith("file://"):
            href = href.removeprefix("file://")
        if not _is_remote(href) and not os.path.isabs(href) and base is not None:
            if _is_remote(base):
                href = urljoin(base.rstrip("/") + "/", href)
            else:
                href = os.path.normpath(os.path.join(base, href))
        asset["href"] = href
        assets[key] = asset
    item["assets"] = assets
    return item


def _check_assets(items: list[dict[str, Any]], assets: list[str]) -> None:
    available = list(dict.fromkeys(key for item in items for key in item["assets"]))
    unknown = [name for name in assets if name not in available]
    if unknown:
        import difflib

        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, available, n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ParameterError(
            f"unknown asset{'s' if len(unknown) > 1 else ''} {', '.join(hints)}: no item has "
            f"{'them' if len(unknown) > 1 else 'it'}; the items' assets are: "
            f"{', '.join(available) or '(none)'}"
        )
    for item in items:
        for name in assets:
            asset = item["assets"].get(name)
            if asset is None or _is_remote(asset["href"]):
                continue  # an item without the asset reads as fill_value, as in STAC
            if not os.path.exists(asset["href"]):
                raise InputReadError(
                    f"asset {name!r} of item {item['id']!r} not found: {asset['href']}"
                )


def _check_crs(items: list[dict[str, Any]], assets: list[str]) -> None:
    """Without ``epsg=``, every asset used must be in one known CRS (named error, not
    stackstac's ValueError from deep inside)."""
    seen: dict[int, str] = {}
    for item in items:
        item_epsg = item["properties"].get("proj:epsg")
        for name in assets:
            asset = item["assets"].get(name)
            if asset is None:
                continue
            epsg = asset.get("proj:epsg", item_epsg)
            where = f"asset {name!r} of item {item['id']!r}"
            if epsg is None:
                raise ParameterError(
                    f"{where} has no EPSG CRS (no proj:epsg, nor an EPSG proj:code): pass "
                    f"the output CRS with {_w('epsg')}, e.g. {_w('epsg', value=32610)}"
                )
            seen.setdefault(int(epsg), where)
    if len(seen) > 1:
        listed = "; ".join(f"EPSG:{code} (first: {where})" for code, where in seen.items())
        raise ParameterError(
            f"the assets are in {len(seen)} CRSs: {listed}. Pass the output CRS with "
            f"{_w('epsg')} (e.g. {_w('epsg', value=next(iter(seen)))}); the other assets are "
            "then reprojected"
        )


def _scaled_assets(items: list[dict[str, Any]], assets: list[str]) -> list[str]:
    """The assets whose ``raster:bands`` declare a scale or offset other than 1 and 0."""
    scaled = []
    for name in assets:
        for item in items:
            bands = item["assets"].get(name, {}).get("raster:bands") or [{}]
            if any(b.get("scale", 1) != 1 or b.get("offset", 0) != 0 for b in bands):
                scaled.append(name)
                break
    return scaled


def _asset_files(items: list[dict[str, Any]], assets: list[str]) -> list[str]:
    """Absolute paths of the local files behind ``assets`` of ``items`` (remote ones left
    out: nothing on this machine can tell whether they changed)."""
    found = {
        os.path.abspath(item["assets"][name]["href"])
        for item in items
        for name in assets
        if name in item["assets"] and not _is_remote(item["assets"][name]["href"])
    }
    return sorted(found)


# --------------------------------------------------------------------------- pixel grids

#: two grid lines closer than this fraction of a pixel are the same line (float noise in
#: ``proj:transform`` origins and in bounds arithmetic, never a real offset)
_GRID_TOL = 1e-6


class _AssetGrid:
    """One asset of one item as STAC describes its pixels: CRS, transform and shape (each
    ``None`` when the metadata does not say)."""

    __slots__ = ("epsg", "shape", "transform", "where")

    def __init__(
        self,
        where: str,
        epsg: int | None,
        transform: Affine | None,
        shape: tuple[int, int] | None,
    ) -> None:
        self.where = where
        self.epsg = epsg
        self.transform = transform
        self.shape = shape

    def rectilinear(self) -> bool:
        t = self.transform
        return t is not None and t.b == 0 and t.d == 0 and t.a != 0 and t.e != 0

    def footprint(self) -> tuple[float, float, float, float] | None:
        """``(minx, miny, maxx, maxy)`` in the asset's CRS, from its transform and shape."""
        if self.transform is None or self.shape is None:
            return None
        h, w = self.shape
        a, b, c, d, e, f = self.transform[:6]
        xs = [c + a * col + b * row for col in (0, w) for row in (0, h)]
        ys = [f + d * col + e * row for col in (0, w) for row in (0, h)]
        return min(xs), min(ys), max(xs), max(ys)


def _asset_grids(items: list[dict[str, Any]], assets: list[str]) -> list[_AssetGrid]:
    """The pixel grid of every asset read, as stackstac finds it (asset fields first, then
    the item's)."""
    from affine import Affine

    grids = []
    for item in items:
        props = item["properties"]
        for name in assets:
            asset = item["assets"].get(name)
            if asset is None:
                continue
            epsg = asset.get("proj:epsg", props.get("proj:epsg"))
            coeffs = asset.get("proj:transform", props.get("proj:transform"))
            shape = asset.get("proj:shape", props.get("proj:shape"))
            transform = None
            if isinstance(coeffs, Sequence) and len(coeffs) >= 6:
                transform = Affine(*(float(v) for v in coeffs[:6]))
            grids.append(
                _AssetGrid(
                    f"asset {name!r} of item {item['id']!r}",
                    None if epsg is None else int(epsg),
                    transform,
                    (int(shape[0]), int(shape[1]))
                    if isinstance(shape, Sequence) and len(shape) == 2
                    else None,
                )
            )
    return grids


def _steps(offset: float, step: float) -> float:
    """``offset / step``, rounded to the whole number it is within :data:`_GRID_TOL` of."""
    q = offset / step
    return float(round(q)) if abs(q - round(q)) < _GRID_TOL else q


def _whole(value: float) -> bool:
    return abs(value - round(value)) < _GRID_TOL


def _nests(origin: float, res: float, out_origin: float, out_res: float) -> bool:
    """Along one axis, every asset pixel edge is an output pixel edge: the asset's pixels
    are whole output pixels (``res`` a whole multiple of ``out_res``, origins on one
    lattice), so each output pixel lies inside one asset pixel and nearest copies it."""
    ratio = res / out_res
    return round(ratio) >= 1 and _whole(ratio) and _whole((origin - out_origin) / out_res)


def _edges_fit(origin: float, res: float, out_origin: float, out_res: float) -> bool:
    """Along one axis, one grid's pixel edges are all edges of the other (nested either
    way: the output refines the asset's pixels, or groups whole ones)."""
    ratio = out_res / res
    return _nests(origin, res, out_origin, out_res) or (
        round(ratio) >= 1 and _whole(ratio) and _whole((out_origin - origin) / res)
    )


def _shared_origin(
    grids: list[_AssetGrid], epsg: int, res_xy: tuple[float, float]
) -> tuple[float, float] | None:
    """A point on the assets' common pixel grid at resolution ``res_xy``: an output grid
    through it has every asset's pixel edges on its own (or groups whole asset pixels),
    so no asset is shifted. ``None`` when the assets have no such grid: a CRS other than
    ``epsg``, no transform, a rotated grid, or grids offset from one another by a fraction
    of a pixel."""
    if not grids or not all(g.epsg == epsg and g.rectilinear() for g in grids):
        return None
    rx, ry = res_xy
    tried: set[tuple[float, float]] = set()
    for grid in grids:
        t = grid.transform
        assert t is not None  # rectilinear() checked it
        key = (round(t.c % rx / rx, 6) % 1.0, round(t.f % ry / ry, 6) % 1.0)
        if key in tried:
            continue
        if len(tried) >= 8:  # the assets share no grid; trying each of thousands is no use
            return None
        tried.add(key)
        if all(
            _edges_fit(g.transform.c, abs(g.transform.a), t.c, rx)
            and _edges_fit(g.transform.f, abs(g.transform.e), t.f, ry)
            for g in grids
            if g.transform is not None
        ):
            return t.c, t.f
    return None


def _snap_to(
    bounds: tuple[float, float, float, float],
    origin: tuple[float, float],
    res_xy: tuple[float, float],
) -> tuple[float, float, float, float]:
    """``bounds`` grown outward to the grid of pixels ``res_xy`` through ``origin`` (GDAL's
    ``-tap``, on that grid instead of on multiples of the resolution)."""
    (minx, miny, maxx, maxy), (x0, y0), (rx, ry) = bounds, origin, res_xy
    return (
        x0 + math.floor(_steps(minx - x0, rx)) * rx,
        y0 + math.floor(_steps(miny - y0, ry)) * ry,
        x0 + math.ceil(_steps(maxx - x0, rx)) * rx,
        y0 + math.ceil(_steps(maxy - y0, ry)) * ry,
    )


def _latlon_bounds(
    bounds: tuple[float, float, float, float], epsg: int
) -> tuple[float, float, float, float]:
    """Lon/lat bounds in ``epsg``, the way stackstac reprojects ``bounds_latlon`` (its four
    corners), so snapping them here gives the extent stackstac would have snapped."""
    from pyproj import Transformer

    minx, miny, maxx, maxy = bounds
    transformer = Transformer.from_crs(4326, epsg, always_xy=True)
    xs, ys = transformer.transform(
        [minx, minx, maxx, maxx], [maxy, miny, miny, maxy], errcheck=True
    )
    return min(xs), min(ys), max(xs), max(ys)


def _output_res(
    grids: list[_AssetGrid], resolution: float | tuple[float, float] | None
) -> tuple[float, float] | None:
    """The output resolution ``(x, y)``: ``resolution=``, or (stackstac's rule) the finest
    of the assets' own; ``None`` when an asset does not say."""
    if resolution is not None:
        rx, ry = resolution if isinstance(resolution, Sequence) else (resolution, resolution)
        return float(rx), float(ry)
    if not grids or not all(g.transform is not None for g in grids):
        return None
    return (
        min(abs(g.transform.a) for g in grids if g.transform is not None),
        min(abs(g.transform.e) for g in grids if g.transform is not None),
    )


def _grid_args(
    grids: list[_AssetGrid],
    *,
    epsg: int | None,
    resolution: float | tuple[float, float] | None,
    bounds: tuple[float, float, float, float] | None,
    bounds_latlon: tuple[float, float, float, float] | None,
    snap_bounds: bool | None,
) -> dict[str, Any]:
    """stackstac's ``bounds``/``bounds_latlon``/``snap_bounds`` for the output grid.

    ``snap_bounds=None`` (open_stac's default) puts the output grid on the assets' own
    pixel grid when they share one at the output resolution, by snapping the bounds (or
    the union of the assets' footprints) outward to it and turning stackstac's snapping
    off; otherwise, and when that grid is on multiples of the resolution anyway, stackstac
    snaps to multiples (GDAL's ``-tap``) as it always did. ``True``/``False`` are passed on.
    """
    given = {"bounds": bounds, "bounds_latlon": bounds_latlon}
    if snap_bounds is not None:
        return {**given, "snap_bounds": snap_bounds}
    out_epsg = epsg if epsg is not None else next((g.epsg for g in grids if g.epsg), None)
    res_xy = _output_res(grids, resolution)
    if out_epsg is None or res_xy is None:
        return {**given, "snap_bounds": True}
    origin = _shared_origin(grids, out_epsg, res_xy)
    if origin is None or (_whole(origin[0] / res_xy[0]) and _whole(origin[1] / res_xy[1])):
        # no grid of their own, or theirs is on multiples of the resolution: -tap is it
        # (and stackstac's very call, so stacks opened before keep their graph's name)
        return {**given, "snap_bounds": True}
    extent: tuple[float, float, float, float]
    if bounds is not None or bounds_latlon is not None:
        try:
            if bounds is not None:
                minx, miny, maxx, maxy = (float(v) for v in bounds)
                extent = (minx, miny, maxx, maxy)
            else:
                assert bounds_latlon is not None
                extent = _latlon_bounds(bounds_latlon, out_epsg)
        except (TypeError, ValueError, RuntimeError):  # pyproj's ProjError is a RuntimeError
            return {**given, "snap_bounds": True}  # stackstac's own error says what is wrong
    else:
        footprints = [fp for g in grids if (fp := g.footprint()) is not None]
        if len(footprints) != len(grids):
            return {**given, "snap_bounds": True}  # stackstac finds the extent elsewhere
        extent = (
            min(fp[0] for fp in footprints),
            min(fp[1] for fp in footprints),
            max(fp[2] for fp in footprints),
            max(fp[3] for fp in footprints),
        )
    snapped = _snap_to(extent, origin, res_xy)
    return {"bounds": snapped, "bounds_latlon": None, "snap_bounds": False}


def _fmt(value: float) -> str:
    return f"{value:g}"


def _misfit(grid: _AssetGrid, epsg: int, out: Affine) -> tuple[str, str] | None:
    """``(kind, why)`` when ``grid``'s pixels are not read as they are onto the output
    grid ``out`` (in ``epsg``), ``None`` when each output pixel lies inside one asset pixel
    or the metadata cannot tell."""
    t = grid.transform
    if t is None or grid.epsg is None:
        return None
    if grid.epsg != epsg:
        return "reprojected", f"is reprojected from EPSG:{grid.epsg} to EPSG:{epsg}"
    if not grid.rectilinear():
        return "rotated", "has a rotated or sheared pixel grid"
    rx, ry, ox, oy = abs(t.a), abs(t.e), out.a, abs(out.e)
    if not (_whole(rx / ox) and round(rx / ox) >= 1 and _whole(ry / oy) and round(ry / oy) >= 1):
        own = _fmt(rx) if rx == ry else f"{_fmt(rx)} × {_fmt(ry)}"
        new = _fmt(ox) if ox == oy else f"{_fmt(ox)} × {_fmt(oy)}"
        return "resolution", f"has pixels of {own} (CRS units), resampled to {new}"
    if _nests(t.c, rx, out.c, ox) and _nests(t.f, ry, out.f, oy):
        return None

    def off(origin: float, out_origin: float, step: float) -> float:
        q = (origin - out_origin) / step
        return (q - round(q)) * step

    dx, dy = off(t.c, out.c, ox), off(t.f, out.f, oy)
    return "offset", (
        f"has its pixel grid offset by ({_fmt(dx)}, {_fmt(dy)}) in CRS units from the "
        "output grid's, a fraction of a pixel"
    )


def _warn_resampled(
    grids: list[_AssetGrid],
    *,
    epsg: int,
    out: Affine,
    out_bounds: tuple[float, float, float, float],
    method: Resampling,
    snap_bounds: bool | None,
) -> None:
    """Warn (:class:`ResampledGridWarning`) when some asset's values are resampled instead
    of read as they are, naming the assets, why, and how to read them exactly."""
    found: dict[str, list[str]] = {}
    minx, miny, maxx, maxy = out_bounds
    for grid in grids:
        fp = grid.footprint() if grid.epsg == epsg else None
        if fp is not None and not (fp[0] < maxx and minx < fp[2] and fp[1] < maxy and miny < fp[3]):
            continue  # outside the output bounds: stackstac does not read it
        misfit = _misfit(grid, epsg, out)
        if misfit is not None:
            found.setdefault(misfit[0], []).append(f"{grid.where} {misfit[1]}")
    if not found:
        return
    count = sum(len(v) for v in found.values())
    examples = "; ".join(
        texts[0] + (f" (and {len(texts) - 1} more like it)" if len(texts) > 1 else "")
        for texts in found.values()
    )
    fixes = []
    if "offset" in found:
        shared = _shared_origin(grids, epsg, (out.a, abs(out.e)))
        if shared is not None:
            if snap_bounds is None:
                # open_stac's default snaps to their grid, unless it cannot tell their extent
                fixes.append(
                    "the assets share one pixel grid, but without proj:shape open_stac cannot "
                    f"tell their extent to snap to it: pass {_w('bounds')}, which it then "
                    "snaps to the assets' grid"
                )
            else:
                given = _w("snap_bounds", value=str(bool(snap_bounds)))
                chosen = (
                    f"{given} snaps the output to multiples of the resolution, off it"
                    if snap_bounds
                    else f"{given} keeps bounds that are off it"
                )
                fixes.append(
                    f"the assets share one pixel grid but {chosen}: {_w('snap_bounds_unset')}, "
                    "which snaps the bounds to the assets' own grid"
                )
        else:
            fixes.append(
                "the assets' pixel grids are offset from one another by fractions of a "
                "pixel, so no output grid is all of theirs: open each grid with its own "
                "open_stac call (its assets and items) to read it exactly"
            )
    if "resolution" in found:
        fixes.append(f"pass {_w('resolution')} their own pixel size, or a whole fraction of it")
    kind = method.name
    moved = " (nearest moves each by up to half a pixel)" if kind == "nearest" else ""
    warnings.warn(
        f"open_stac resamples {count} of the {len(grids)} item assets it stacks with "
        f"resampling={kind!r}{moved}, instead of reading their pixels as they are: "
        f"{examples}" + (f". To read them exactly: {'; '.join(fixes)}" if fixes else ""),
        ResampledGridWarning,
        stacklevel=3,
    )


# --------------------------------------------------------------------------- the call


def _item_paths(items: Any) -> list[str] | None:
    """Absolute paths of ``items`` when they are STAC JSON file path(s), else ``None``."""
    if isinstance(items, str | os.PathLike):
        entries = [items]
    elif (
        isinstance(items, Sequence)
        and not isinstance(items, bytes)
        and items
        and all(isinstance(entry, str | os.PathLike) for entry in items)
    ):
        entries = list(items)
    else:
        return None
    return [str(Path(os.fspath(entry)).resolve()) for entry in entries]


def _number(value: Any) -> Any:
    """A JSON number for a Python/numpy scalar (``None`` stays)."""
    if value is None:
        return None
    as_float = float(value)
    return int(value) if as_float.is_integer() and not isinstance(value, float) else as_float


def _call_record(
    items: Any,
    *,
    assets: list[str],
    resolution: Any,
    epsg: Any,
    bounds: Any,
    bounds_latlon: Any,
    snap_bounds: bool | None,
    resampling: Any,
    chunks: Any,
    dtype: Any,
    fill_value: Any,
    rescale: bool,
    sortby_date: Any,
    properties: Any,
    band_coords: bool,
) -> dict[str, Any]:
    """What :data:`STAC_CALL` holds: every argument as JSON, the items as absolute paths."""
    paths = _item_paths(items)
    if paths is None:
        return {
            "reason": "its STAC items were Python objects (pystac Items or item dicts), not "
            "STAC JSON files; open_stac(path, ...) on the files records what to open again"
        }

    def numbers(value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            return _number(value)
        return [_number(v) for v in value]

    fill = None
    if fill_value is not None and not (isinstance(fill_value, float) and math.isnan(fill_value)):
        fill = _number(fill_value)
    return {
        "items": paths,
        "assets": list(assets),
        "resolution": numbers(resolution),
        "epsg": None if epsg is None else int(epsg),
        "bounds": numbers(bounds),
        "bounds_latlon": numbers(bounds_latlon),
        # None (the default) is recorded as such: reopening snaps to the assets' grid again
        "snap_bounds": None if snap_bounds is None else bool(snap_bounds),
        "resampling": resampling if isinstance(resampling, str) else resampling.name,
        "chunks": numbers(chunks),
        "dtype": None if dtype is None else str(dtype),
        "fill_value": fill,
        "rescale": bool(rescale),
        "sortby_date": sortby_date,
        "properties": properties if isinstance(properties, bool | str) else list(properties),
        "band_coords": bool(band_coords),
    }


# --------------------------------------------------------------------------- stack


def open_stac(
    items: Any,
    *,
    assets: str | Sequence[str],
    resolution: float | tuple[float, float] | None = None,
    epsg: int | None = None,
    bounds: tuple[float, float, float, float] | None = None,
    bounds_latlon: tuple[float, float, float, float] | None = None,
    snap_bounds: bool | None = None,
    resampling: ResamplingName | Resampling = "nearest",
    chunks: int | tuple[int, int] = 2048,
    dtype: Any = None,
    fill_value: float | None = None,
    rescale: bool = True,
    sortby_date: Literal["asc", "desc", False] = "asc",
    properties: bool | str | Sequence[str] = True,
    band_coords: bool = True,
) -> xr.DataArray:
    """Stack STAC items lazily into a georeferenced ``(time, band, y, x)`` DataArray.

    A checked front end to ``stackstac.stack``: the items are read and validated here
    (nothing else is read and nothing is computed), stackstac builds the lazy array with
    pixel-centre coordinates (``xy_coords="center"``, what rioxarray and patchflow assume:
    stackstac's default labels corners, half a pixel off), and the result gets its CRS,
    transform and nodata written with rioxarray, so ``patchflow.apply`` and
    ``rio.transform()`` land on the assets' pixel grid.

    The output grid is the assets' own pixel grid whenever they share one at the output
    resolution (one CRS, and origins that differ by whole pixels), wherever its corners
    are: on multiples of the resolution or not (Landsat's 30 m pixels have corners at odd
    multiples of 15 m). Each output pixel is then one asset pixel (or, at a finer
    ``resolution=`` that divides theirs, lies inside one), so ``"nearest"`` reads values
    exactly; ``bounds=`` grow outward to that grid. Otherwise — assets offset from one
    another by a fraction of a pixel, a coarser or non-dividing ``resolution=``, another
    ``epsg=``, or an explicit ``snap_bounds=True`` (or ``snap_bounds=False`` with
    ``bounds=``) off theirs, honoured as given — values are resampled (``"nearest"`` moves
    them by up to half a pixel), and a :class:`~patchflow.errors.ResampledGridWarning`
    names the assets, why, and how to read them exactly.

    Parameters
    ----------
    items
        A local STAC JSON file (an Item, an ItemCollection/FeatureCollection or a list of
        Items; relative asset hrefs resolve against the file), a list of such paths, a
        pystac Item or ItemCollection, an item dict, or a list of Items/dicts.
    assets
        Asset keys to stack, in band order; they become the ``band`` coordinate.
    resolution
        Output pixel size in CRS units (one number, or ``(x, y)``). Default: the finest
        among the assets (a 20 m asset next to 10 m ones is resampled to 10 m).
    epsg
        Output CRS as an EPSG number. Needed when the assets are in several CRSs.
    bounds, bounds_latlon
        Output extent ``(minx, miny, maxx, maxy)`` in the output CRS, or in lon/lat.
        Default: the union of the assets' footprints.
    snap_bounds
        Default (``None``): grow the bounds outward to the assets' own pixel grid when they
        share one (see above), else to whole multiples of the resolution (GDAL's
        ``-tap``, stackstac's default). ``True``: always multiples of the resolution,
        as stackstac does, even when that is off the assets' grid (warned). ``False``:
        the bounds as given (warned when they are off the assets' grid).
    resampling
        How assets are resampled onto the output grid (a rasterio ``Resampling`` or its
        name). On the assets' own grid nothing is resampled and every method reads the
        values as they are; on a finer grid dividing theirs, ``"nearest"`` repeats each
        asset pixel exactly while the others interpolate; on any other grid (warned) every
        method resamples, ``"nearest"`` by moving values up to half a pixel.
    chunks
        Spatial dask chunk edge (or ``(y, x)``); each chunk is one date of one asset.
    dtype
        Output dtype; default float64. An integer dtype needs an integer ``fill_value``.
    fill_value
        Value of pixels with no data (GeoTIFF nodata, outside an asset, an item without
        the asset). Default NaN, which needs a float dtype. Written as the array's nodata.
    rescale
        Apply the assets' ``raster:bands`` scale/offset.
    sortby_date
        Order of the ``time`` axis: ``"asc"``, ``"desc"`` or ``False`` (items' order).
    properties
        Item properties to add as ``time`` coordinates (``True``: all; ``False``: none).
    band_coords
        Add asset metadata shared by all items as ``band`` coordinates.

    Returns
    -------
    xarray.DataArray
        Lazy (dask) ``(time, band, y, x)``, ``x``/``y`` at pixel centres, with CRS,
        transform and nodata (``fill_value``) written by rioxarray. Unreadable assets
        raise when computed (never silently read as nodata). ``encoding[STAC_CALL]``
        records this call (the items as absolute paths), so a result store written from
        the stack can open it again to resume (``patchflow.resume(store)``); items given
        as Python objects record why they cannot be reopened instead.
        ``encoding[STAC_ASSET_FILES]`` lists the local asset files, so that store notices
        an asset rewritten in place before a resume blends its old and new values.

    Raises
    ------
    InputReadError
        A STAC file or a local asset file does not exist, or a file is not STAC JSON.
    ParameterError
        Unknown asset (the available ones are listed), assets in several CRSs without
        ``epsg=``, a fill value the dtype cannot hold, a resolution that is not a positive
        size, or arguments stackstac rejects.
    InputTypeError
        ``items`` is none of the accepted kinds.

    Warns
    -----
    ResampledGridWarning
        Some asset is resampled, not read as it is: its grid is offset from the output
        grid by a fraction of a pixel (assets on mutually offset grids, or
        ``snap_bounds``/``bounds`` chosen off their shared grid), its pixels are finer
        than the output's or do not divide them, or it is reprojected (``epsg=``). Assets
        without ``proj:transform`` cannot be checked.

    Examples
    --------
    >>> stack = open_stac("items.json", assets=["B04", "B08", "SCL"])  # doctest: +SKIP
    >>> composite = patchflow.apply(stack, Composite("median"), over="time")  # doctest: +SKIP
    """
    import numpy as np
    import rioxarray  # noqa: F401  (registers the .rio accessor used below)
    import stackstac

    names = [assets] if isinstance(assets, str) else list(assets)
    # before fill_value and rescale are resolved below: what the caller asked for
    call = {"fill_value": fill_value, "rescale": rescale, "dtype": dtype}
    if not names or not all(isinstance(name, str) for name in names):
        raise ParameterError(f"assets must be a non-empty list of asset keys, got {assets!r}")
    if len(set(names)) != len(names):
        raise ParameterError(f"assets lists a key more than once: {names}")
    if bounds is not None and bounds_latlon is not None:
        raise ParameterError("give bounds= (output CRS) or bounds_latlon=, not both")
    if resolution is not None:
        sizes = resolution if isinstance(resolution, Sequence) else (resolution, resolution)
        if (
            len(sizes) != 2
            or not all(isinstance(v, int | float | np.number) for v in sizes)
            or not all(math.isfinite(v) and v > 0 for v in sizes)
        ):
            raise ParameterError(
                f"resolution must be a positive pixel size in CRS units, or an (x, y) pair of "
                f"them; got {resolution!r}"
            )

    out_dtype = np.dtype("float64" if dtype is None else dtype)
    if fill_value is None:
        if out_dtype.kind != "f":
            raise ParameterError(
                f"dtype={out_dtype.name} cannot hold NaN, the default fill_value: pass the "
                "integer to fill missing pixels with, e.g. fill_value=0 (often the assets' "
                "nodata)"
            )
        fill_value = float("nan")
    elif out_dtype.kind != "f" and (
        (isinstance(fill_value, float) and not float(fill_value).is_integer())
        or not np.can_cast(np.min_scalar_type(fill_value), out_dtype)
    ):
        raise ParameterError(
            f"fill_value={fill_value!r} does not fit dtype={out_dtype.name}: pick a value "
            "in its range (or a float dtype)"
        )

    method: Any = resampling
    if isinstance(resampling, str):
        from rasterio.enums import Resampling as _Resampling

        try:
            method = _Resampling[resampling]
        except KeyError:
            valid = ", ".join(m.name for m in _Resampling)
            raise ParameterError(f"unknown resampling {resampling!r}; valid: {valid}") from None

    collected = _collect(items)
    if not collected:
        raise ParameterError("open_stac got no STAC items (an empty collection or list)")
    plain = [_normalise(item, base) for item, base in collected]
    _check_assets(plain, names)
    if epsg is None:
        _check_crs(plain, names)

    if rescale:
        scaled = _scaled_assets(plain, names)
        if scaled and out_dtype != np.float64:
            # stackstac casts the scale and offset (Python floats) safely into the dtype
            raise ParameterError(
                f"asset{'s' if len(scaled) > 1 else ''} {', '.join(map(repr, scaled))} "
                f"carr{'y' if len(scaled) > 1 else 'ies'} a raster:bands scale/offset, which "
                f"rescale=True cannot apply in dtype={out_dtype.name}: pass rescale=False for "
                "the raw values, or dtype='float64' for scaled ones"
            )
        # with nothing to rescale, rescale=False is the same result, and spares stackstac's
        # scale-1 casting check, which numpy 2 fails for every dtype but float64
        rescale = bool(scaled)

    grids = _asset_grids(plain, names)
    grid = _grid_args(
        grids,
        epsg=epsg,
        resolution=resolution,
        bounds=bounds,
        bounds_latlon=bounds_latlon,
        snap_bounds=snap_bounds,
    )

    spatial = (chunks, chunks) if isinstance(chunks, int) else tuple(chunks)
    try:
        with warnings.catch_warnings():
            # stackstac 0.5.1 multiplies affines with `*`, which affine ≥ 2.4 deprecates:
            # noise the caller can neither act on nor silence per call
            warnings.filterwarnings(
                "ignore", category=PendingDeprecationWarning, module=r"stackstac\."
            )
            stack = stackstac.stack(
                plain,
                assets=names,
                epsg=epsg,
                resolution=resolution,
                resampling=method,
                **grid,
                chunksize=spatial,
                dtype=out_dtype,
                # a numpy scalar of the dtype: stackstac checks can_cast(type(fill_value)),
                # which numpy 2 refuses for a Python int/float into a narrower dtype
                fill_value=out_dtype.type(fill_value),
                rescale=rescale,
                sortby_date=sortby_date,
                xy_coords="center",
                properties=properties,
                band_coords=band_coords,
                # an unreadable asset must fail the computation, not read as nodata
                errors_as_nodata=(),
            )
    except ValueError as exc:
        raise ParameterError(f"stackstac cannot stack these items: {exc}") from exc

    from affine import Affine

    spec = stack.attrs["spec"]
    crs_epsg = spec.epsg
    transform = Affine(*stack.attrs["transform"][:6])
    _warn_resampled(
        grids,
        epsg=crs_epsg,
        out=transform,
        out_bounds=tuple(spec.bounds),
        method=method,
        snap_bounds=snap_bounds,
    )
    # the CRS and transform live in rioxarray's spatial_ref from here on; stackstac's
    # RasterSpec object says the same and is no JSON, which no store could keep
    stack.attrs = {k: v for k, v in stack.attrs.items() if k not in ("crs", "transform", "spec")}
    stack = stack.rio.write_crs(f"EPSG:{crs_epsg}")
    stack = stack.rio.write_transform(transform)
    nodata = np.nan if math.isnan(float(fill_value)) else out_dtype.type(fill_value)
    out = stack.rio.write_nodata(nodata, encoded=False)
    out.encoding[STAC_ASSET_FILES] = _asset_files(plain, names)
    out.encoding[STAC_CALL] = _call_record(
        items,
        assets=names,
        resolution=resolution,
        epsg=epsg,
        bounds=bounds,
        bounds_latlon=bounds_latlon,
        snap_bounds=snap_bounds,
        resampling=resampling,
        chunks=chunks,
        dtype=None if call["dtype"] is None else out_dtype.name,
        fill_value=call["fill_value"],
        rescale=call["rescale"],
        sortby_date=sortby_date,
        properties=properties,
        band_coords=band_coords,
    )
    return out
