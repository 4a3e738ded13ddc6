"""SpectralIndex: catalogue indices (spyndex) per chip, checked against spyndex itself.

Scenes are Sentinel-2 L2A-like (uint16 DN, reflectance = DN × 1e-4 - 0.1, nodata 0) and
Landsat Collection 2 L2-like (DN × 2.75e-5 - 0.2, nodata 0) six-band stacks with
vegetation, water, bare soil and burned land, nodata pixels (some in one band only) and
NaN; the reference is ``spyndex.computeIndex`` on the same numpy arrays.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import rioxarray
import xarray as xr
from affine import Affine

import patchflow
from patchflow.errors import ConfigError, MissingExtraError, ParameterError, PatchflowError
from patchflow.ops import (
    NBR,
    NDVI,
    NDWI,
    DNToReflectance,
    Operator,
    from_config,
    from_json,
    op_pointwise,
    to_json,
)
from patchflow.ops.base import registered_op

spyndex = pytest.importorskip("spyndex")

from patchflow.ops.indices import (  # noqa: E402  (after the importorskip)
    INSTALL,
    SpectralIndex,
    catalogue_indices,
    missing_spyndex_message,
)

#: band order of the test stacks, and the catalogue symbol of each
BANDS = ("blue", "green", "red", "nir", "swir1", "swir2")
SYMBOLS = {"B": 0, "G": 1, "R": 2, "N": 3, "S1": 4, "S2": 5}
BY_NAME = {"B": "blue", "G": "green", "R": "red", "N": "nir", "S1": "swir1", "S2": "swir2"}
#: surface reflectance of each cover, per band (typical library spectra)
COVERS = {
    "vegetation": (0.03, 0.07, 0.04, 0.45, 0.22, 0.10),
    "water": (0.06, 0.05, 0.03, 0.02, 0.01, 0.005),
    "soil": (0.10, 0.14, 0.19, 0.26, 0.33, 0.27),
    "burned": (0.04, 0.05, 0.07, 0.10, 0.18, 0.21),
}
S2 = {"scale": 1e-4, "offset": -0.1, "nodata": 0}
LANDSAT = {"scale": 2.75e-5, "offset": -0.2, "nodata": 0}
#: (index, constants overriding the catalogue defaults)
CASES = [
    ("NDVI", None),
    ("EVI", None),
    ("SAVI", None),
    ("NDWI", None),
    ("NBR", None),
    ("EVI", {"g": 2.4, "L": 0.9}),
    ("SAVI", {"L": 0.25}),
    ("WDRVI", {"alpha": 0.2}),
]


def reflectance_stack(shape: tuple[int, int], *, seed: int) -> np.ndarray:
    """``(6, h, w)`` float64 surface reflectance: cover patches plus noise."""
    rng = np.random.default_rng(seed)
    h, w = shape
    rows, cols = np.mgrid[0:h, 0:w]
    cover = ((rows // 24) + 2 * (cols // 32)) % len(COVERS)
    spectra = np.array(list(COVERS.values()))  # (covers, 6)
    refl = spectra[cover].transpose(2, 0, 1)
    refl = refl * rng.uniform(0.8, 1.2, size=(1, h, w)) + rng.normal(0, 0.004, (6, h, w))
    return np.clip(refl, -0.05, 1.0)


def dn_stack(shape: tuple[int, int], *, seed: int, scale: float, offset: float) -> np.ndarray:
    """uint16 DN of :func:`reflectance_stack` for a product with that scale/offset, with
    nodata 0: a collar, scattered pixels in every band, and pixels in one band only."""
    refl = reflectance_stack(shape, seed=seed)
    dn = np.clip(np.rint((refl - offset) / scale), 1, 65535).astype(np.uint16)
    dn[:, :3, :] = 0  # a nodata collar
    rng = np.random.default_rng(seed + 1)
    dn[:, rng.random(shape) < 0.01] = 0
    dn[3, rng.random(shape) < 0.01] = 0  # NIR only
    return dn


def reference(
    index: str, refl: np.ndarray, constants: dict[str, float] | None = None
) -> np.ndarray:
    """``spyndex.computeIndex`` on bands ``refl[k]`` (``(6, …)``), ±inf as NaN (an undefined
    index: SpectralIndex's contract)."""
    entry = spyndex.indices[index]
    params: dict[str, Any] = {s: refl[SYMBOLS[s]] for s in entry.bands if s in SYMBOLS}
    for s in entry.bands:
        if s not in SYMBOLS:
            params[s] = (constants or {}).get(s, spyndex.constants[s].default)
    with np.errstate(all="ignore"):
        out = np.asarray(spyndex.computeIndex(index, params=params))
    return np.where(np.isinf(out), np.nan, out)


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(("index", "constants"), CASES)
def test_sentinel2_equals_spyndex(index: str, constants: dict[str, float] | None) -> None:
    dn = dn_stack((96, 128), seed=1, **{k: S2[k] for k in ("scale", "offset")})
    refl = DNToReflectance(**S2)(dn[None])[0]  # float32, NaN where nodata
    assert refl.dtype == np.float32 and np.isnan(refl).any()
    op = SpectralIndex(index, bands=SYMBOLS, constants=constants)
    out = op(refl[None])
    assert out.shape == (1, 1, 96, 128) and out.dtype == np.float32
    want = reference(index, refl, constants)
    assert want.dtype == np.float32
    # the same formula on the same float32 arrays: identical, NaN where spyndex has NaN
    np.testing.assert_array_equal(out[0, 0], want)
    assert np.isnan(out[0, 0][np.isnan(refl).any(axis=0)]).all()
    # and the float32 result is the float64 formula to float32 precision
    exact = reference(index, refl.astype(np.float64), constants)
    np.testing.assert_allclose(out[0, 0], exact, rtol=2e-5, atol=2e-6, equal_nan=True)
    # the same on the DN directly, in one pipeline
    piped = (DNToReflectance(**S2) | op)(dn[None])
    np.testing.assert_array_equal(piped, out)


@pytest.mark.parametrize(("index", "constants"), CASES)
def test_landsat_float64_equals_spyndex(index: str, constants: dict[str, float] | None) -> None:
    dn = dn_stack((80, 72), seed=2, **{k: LANDSAT[k] for k in ("scale", "offset")})
    refl = np.where(dn == 0, np.nan, dn * LANDSAT["scale"] + LANDSAT["offset"])
    op = SpectralIndex(index, bands=SYMBOLS, constants=constants)
    out = op(refl[None])
    assert out.dtype == np.float64  # float64 in, float64 out
    np.testing.assert_array_equal(out[0, 0], reference(index, refl, constants))
    assert not np.isinf(out).any()


def test_constant_override_changes_the_result() -> None:
    refl = reflectance_stack((16, 16), seed=3)[None]
    default = SpectralIndex("SAVI", bands=SYMBOLS)(refl)
    assert np.allclose(
        default, SpectralIndex("SAVI", bands=SYMBOLS, constants={"L": 1.0})(refl)
    )  # the catalogue's default L is 1.0
    quarter = SpectralIndex("SAVI", bands=SYMBOLS, constants={"L": 0.25})(refl)
    assert not np.allclose(default, quarter)
    n, r = refl[:, 3], refl[:, 2]
    np.testing.assert_allclose(quarter[:, 0], 1.25 * (n - r) / (n + r + 0.25), rtol=1e-12)


def test_every_catalogue_index_equals_spyndex() -> None:
    """Each of the catalogue's indices (all bands and constants given) evaluates to
    spyndex's value: the formulas pass the arithmetic-only check and mean the same."""
    symbols = sorted({s for k in spyndex.indices for s in spyndex.indices[k].bands})
    band_symbols = [s for s in symbols if s not in spyndex.constants]
    rng = np.random.default_rng(4)
    stack = rng.uniform(0.01, 0.6, size=(len(band_symbols), 4, 5))
    positions = {s: k for k, s in enumerate(band_symbols)}
    given = {"PAR": 1.7, **{f"lambda{b}": 500.0 + 50 * k for k, b in enumerate("GNRS")}}
    given |= {"lambdaN2": 865.0, "lambdaS1": 1610.0, "lambdaS2": 2190.0}
    assert len(catalogue_indices()) == len(spyndex.indices) > 200
    for name in catalogue_indices():
        entry = spyndex.indices[name]
        consts = {s: v for s, v in given.items() if s in entry.bands}
        op = SpectralIndex(name, bands=positions, constants=consts or None)
        params = {s: stack[positions[s]] for s in entry.bands if s in positions}
        params |= {
            s: consts.get(s, spyndex.constants[s].default)
            for s in entry.bands
            if s in spyndex.constants
        }
        with np.errstate(all="ignore"):
            want = np.broadcast_to(spyndex.computeIndex(name, params=params), (4, 5))
        want = np.where(np.isinf(want), np.nan, want)
        np.testing.assert_array_equal(op(stack[None])[0, 0], want, err_msg=name)


@pytest.mark.parametrize(
    ("ours", "builtin"),
    [
        (SpectralIndex("NDVI", bands={"R": 0, "N": 1}), NDVI(red=0, nir=1)),
        (SpectralIndex("NDWI", bands={"G": 0, "N": 1}), NDWI(green=0, nir=1)),
        (SpectralIndex("NBR", bands={"N": 0, "S2": 1}), NBR(nir=0, swir2=1)),
    ],
)
@pytest.mark.parametrize("dtype", ["uint16", "int16", "float32", "float64"])
def test_equals_builtin_normalized_differences(
    ours: SpectralIndex, builtin: Operator, dtype: str
) -> None:
    rng = np.random.default_rng(5)
    chips = rng.integers(-50, 3000, size=(3, 2, 20, 20)).astype(dtype)
    chips[:, :, :2] = 0  # 0/0
    if dtype.startswith("int"):
        chips[0, 1, 5, 5] = -chips[0, 0, 5, 5] - 1  # a - b over a zero sum
        chips[0, 0, 5, 5] += 1
    elif dtype.startswith("uint"):
        chips[chips > 60000] = 0
    else:
        chips[1, 0, 7, 7] = np.nan
        chips[2, 1, 3, :] = -chips[2, 0, 3, :]  # x / 0 with negative inputs
    out, want = ours(chips), builtin(chips)
    assert out.dtype == want.dtype
    np.testing.assert_array_equal(out, want)
    assert ours.output_spec((2,), np.dtype(dtype)) == builtin.output_spec((2,), np.dtype(dtype))


def test_dtypes_nan_and_zero_denominators() -> None:
    op = SpectralIndex("NDVI", bands={"R": 0, "N": 1})
    for dtype, want in [
        ("uint8", "float32"),
        ("uint16", "float32"),
        ("int32", "float64"),  # as NDVI: int32 needs float64 to be exact
        ("float16", "float32"),
        ("float32", "float32"),
        ("float64", "float64"),
    ]:
        assert op.output_spec((2,), np.dtype(dtype)) == ((1,), np.dtype(want)), dtype
        assert op(np.ones((1, 2, 2, 2), dtype)).dtype == np.dtype(want), dtype
    chips = np.array([[[[0.0, np.nan, 0.2, -0.1]], [[0.0, 0.3, np.nan, 0.1]]]])
    out = op(chips)[0, 0, 0]
    assert np.isnan(out).all()  # 0/0, NaN in, NaN in, x/0: undefined, never ±inf
    # other non-spatial axes before the band axis (e.g. dates) are carried through
    stack = np.ones((2, 3, 2, 4, 5), np.float32)
    assert op(stack).shape == (2, 3, 1, 4, 5)
    assert op.output_spec((3, 2), np.dtype("float32")) == ((3, 1), np.dtype("float32"))


def test_several_indices_one_band_each_in_order() -> None:
    refl = reflectance_stack((12, 10), seed=6)[None].astype(np.float32)
    names = ["NBR", "NDVI", "EVI", "SAVI"]
    op = SpectralIndex(names, bands=SYMBOLS, constants={"L": 0.5})
    out = op(refl)
    assert out.shape == (1, 4, 12, 10) and out.dtype == np.float32
    for k, name in enumerate(names):
        single = SpectralIndex(name, bands=SYMBOLS, constants={"L": 0.5})(refl)
        np.testing.assert_array_equal(out[:, k], single[:, 0], err_msg=name)
    assert op.names == names
    assert op.output_band_names(list(BANDS)) == names
    assert op.output_spec((6,), np.dtype("uint16")) == ((4,), np.dtype("float32"))
    assert op.output_attrs() == {"long_name": tuple(names), "units": "1"}
    assert SpectralIndex("EVI", bands=SYMBOLS).output_attrs() == {
        "long_name": "EVI",
        "units": "1",
    }
    assert op_pointwise(op) and op_pointwise(DNToReflectance() | op)


# --------------------------------------------------------------------------- through apply


def write_stack_tif(path: Path, dn: np.ndarray, *, nodata: int | None) -> None:
    """A six-band uint16 GeoTIFF written with rioxarray, band descriptions = BANDS."""
    _, h, w = dn.shape
    transform = Affine(10.0, 0.0, 600_000.0, 0.0, -10.0, 5_000_000.0)
    da = xr.DataArray(
        dn,
        dims=("band", "y", "x"),
        coords={
            "band": np.arange(1, dn.shape[0] + 1),
            "y": transform.f + transform.e * (np.arange(h) + 0.5),
            "x": transform.c + transform.a * (np.arange(w) + 0.5),
        },
    )
    da = da.rio.write_crs("EPSG:32633").rio.write_transform(transform)
    if nodata is not None:
        da = da.rio.write_nodata(nodata)
    da.attrs["long_name"] = BANDS  # written as the GDAL band descriptions
    da.rio.to_raster(path, tiled=True, blockxsize=128, blockysize=128)
    with rasterio.open(path) as src:
        assert src.descriptions == BANDS


@pytest.fixture(scope="module")
def s2_tif(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    dn = dn_stack((300, 260), seed=7, scale=S2["scale"], offset=S2["offset"])
    path = tmp_path_factory.mktemp("indices") / "s2.tif"
    write_stack_tif(path, dn, nodata=0)
    return path, dn


def open_named(path: Path) -> xr.DataArray:
    """The file as a user opens it: lazily, bands labelled by their descriptions."""
    da = rioxarray.open_rasterio(path, chunks={"y": 128, "x": 128})
    assert isinstance(da, xr.DataArray)
    return da.assign_coords(band=list(da.attrs["long_name"]))


def test_apply_on_geotiff_by_band_name(s2_tif: tuple[Path, np.ndarray]) -> None:
    path, dn = s2_tif
    scene = open_named(path)
    names = ["NDVI", "EVI", "NBR"]
    pipeline = DNToReflectance(**S2) | SpectralIndex(names, bands=BY_NAME)
    out = patchflow.apply(scene, pipeline, size=96, stride=64)
    assert out.dims == ("band", "y", "x") and out.shape == (3, 300, 260)
    assert out.dtype == np.float32
    assert list(out["band"].values) == names
    assert out.attrs["long_name"] == tuple(names)
    assert out.attrs["units"] == "1"
    assert out.rio.crs == scene.rio.crs
    values = out.values
    refl = DNToReflectance(**S2)(dn[None])[0]
    for k, name in enumerate(names):
        want = reference(name, refl)
        # pointwise: the stitched result is the whole-scene result, bit for bit
        np.testing.assert_array_equal(values[k], want, err_msg=name)
    invalid = (dn == 0).any(axis=0)
    assert np.isnan(values[:, invalid]).all() and not np.isnan(values[:, ~invalid]).any()


def test_apply_single_index_names_the_result(s2_tif: tuple[Path, np.ndarray]) -> None:
    path, dn = s2_tif
    scene = open_named(path)
    op = DNToReflectance(**S2) | SpectralIndex("EVI", bands=BY_NAME)
    out = patchflow.apply(scene, op, size=128, stride=128)
    assert out.name == "EVI" and list(out["band"].values) == ["EVI"]
    assert out.attrs["long_name"] == "EVI"
    refl = DNToReflectance(**S2)(dn[None])[0]
    np.testing.assert_array_equal(out.values[0], reference("EVI", refl))


def test_apply_plan_time_band_errors(s2_tif: tuple[Path, np.ndarray]) -> None:
    path, _ = s2_tif
    named = open_named(path)
    wrong = SpectralIndex("NDVI", bands={"N": "nir08", "R": "red"})
    with pytest.raises(ParameterError, match=r"'nir08' not found.*did you mean 'nir'"):
        patchflow.apply(named, wrong, size=128, stride=128)
    described = rioxarray.open_rasterio(path, chunks={"y": 128, "x": 128})
    assert isinstance(described, xr.DataArray)
    # the file's band descriptions name its bands (rioxarray numbers them 1..N)
    by_name = SpectralIndex("NDVI", bands=BY_NAME)
    np.testing.assert_array_equal(
        patchflow.apply(described, by_name, size=128, stride=128).values,
        patchflow.apply(named, by_name, size=128, stride=128).values,
    )
    unnamed = described.copy()
    del unnamed.attrs["long_name"]
    with pytest.raises(ParameterError, match="no names"):
        patchflow.apply(unnamed, SpectralIndex("NDVI", bands=BY_NAME), size=128, stride=128)
    with pytest.raises(ParameterError, match="1-based"):
        patchflow.apply(
            unnamed, SpectralIndex("NDVI", bands={"N": 6, "R": 2}), size=128, stride=128
        )


# --------------------------------------------------------------------------- config


def test_config_round_trips() -> None:
    op = SpectralIndex(["EVI", "NDVI"], bands=BY_NAME, constants={"L": 0.5})
    config = op.get_config()
    assert config == {
        "op": "SpectralIndex",
        "params": {"index": ["EVI", "NDVI"], "bands": BY_NAME, "constants": {"L": 0.5}},
    }
    assert from_config(config) == op
    assert SpectralIndex.from_config(config) == op
    assert from_json(to_json(op)) == op
    assert json.loads(to_json(op)) == config
    assert hash(from_json(to_json(op))) == hash(op)
    assert pickle.loads(pickle.dumps(op)) == op
    single = SpectralIndex("EVI", bands={"N": 3, "R": 2, "B": 0})
    assert repr(single) == "SpectralIndex(index='EVI', bands={'N': 3, 'R': 2, 'B': 0})"
    assert to_json(single) == (
        '{"op": "SpectralIndex", "params": {"index": "EVI", "bands": {"N": 3, "R": 2, '
        '"B": 0}, "constants": null}}'
    )
    assert from_json(to_json(single)) == single
    # a bound copy records the positions it resolved; unused symbols stay as given
    bound = SpectralIndex("NDVI", bands=BY_NAME).bind(list(BANDS))
    bound_config = bound.get_config()
    assert isinstance(bound_config, dict)
    assert bound_config["params"]["bands"] == {**BY_NAME, "N": 3, "R": 2}
    refl = reflectance_stack((8, 8), seed=8)[None]
    np.testing.assert_array_equal(
        from_json(to_json(bound))(refl), SpectralIndex("NDVI", bands=SYMBOLS)(refl)
    )
    # command-line spelling of the name
    assert registered_op("spectral_index") is SpectralIndex
    assert registered_op("spectral-index") is SpectralIndex


def test_config_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"SpectralIndex.*'EVII'.*did you mean 'EVI'"):
        from_config({"op": "SpectralIndex", "params": {"index": "EVII", "bands": {}}})
    with pytest.raises(ConfigError, match="bands"):
        from_config({"op": "SpectralIndex", "params": {"index": "EVI"}})


# --------------------------------------------------------------------------- errors


def test_unknown_index_suggests_close_names() -> None:
    with pytest.raises(ParameterError, match=r"'EVII' is not an index.*did you mean 'EVI'"):
        SpectralIndex("EVII", bands=SYMBOLS)
    with pytest.raises(ParameterError, match=r"'ndvi'.*did you mean 'NDVI'.*case-sensitive"):
        SpectralIndex(["EVI", "ndvi"], bands=SYMBOLS)
    with pytest.raises(ParameterError, match="at least one index"):
        SpectralIndex([], bands=SYMBOLS)
    with pytest.raises(ParameterError, match="NDVI given twice"):
        SpectralIndex(["NDVI", "EVI", "NDVI"], bands=SYMBOLS)


def test_missing_band_or_constant_names_index_symbol_and_fix() -> None:
    with pytest.raises(
        ParameterError,
        match=r"EVI needs the band 'B' \(Blue\): map it to a band of the input, "
        r"bands=\{\.\.\., 'B': NAME_OR_POSITION\}",
    ):
        SpectralIndex(["NDVI", "EVI"], bands={"N": "nir", "R": "red"})
    with pytest.raises(
        ParameterError,
        match=r"NIRvP needs the constant 'PAR' .*no catalogue default: give it, "
        r"constants=\{'PAR': VALUE\}",
    ):
        SpectralIndex("NIRvP", bands=SYMBOLS)
    assert isinstance(SpectralIndex("NIRvP", bands=SYMBOLS, constants={"PAR": 1.2}), SpectralIndex)


def test_bad_symbols_and_constants_say_what_to_write() -> None:
    with pytest.raises(ParameterError, match=r"'NIR' is not a band symbol.*symbol for NIR is 'N'"):
        SpectralIndex("NDVI", bands={"NIR": 3, "R": 2})
    with pytest.raises(ParameterError, match=r"Sentinel-2's B08 is the catalogue's 'N'"):
        SpectralIndex("NDVI", bands={"B08": 3, "R": 2})
    with pytest.raises(ParameterError, match=r"'swir2'.*'S2'"):
        SpectralIndex("NBR", bands={"N": 3, "swir2": 5})
    with pytest.raises(ParameterError, match=r"'L' is a catalogue constant.*constants=\{'L'"):
        SpectralIndex("SAVI", bands={"N": 3, "R": 2, "L": 0.5})  # type: ignore[dict-item]
    with pytest.raises(ParameterError, match=r"'N' is a band symbol.*bands=\{'N'"):
        SpectralIndex("SAVI", bands={"R": 2}, constants={"N": 0.3})
    with pytest.raises(ParameterError, match=r"'l' is not a constant.*did you mean 'L'"):
        SpectralIndex("SAVI", bands=SYMBOLS, constants={"l": 0.5})
    with pytest.raises(ParameterError, match="finite number"):
        SpectralIndex("SAVI", bands=SYMBOLS, constants={"L": float("nan")})
    with pytest.raises(ParameterError, match=r"bands\['N'\] must be a band index"):
        SpectralIndex("NDVI", bands={"N": 3.0, "R": 2})  # type: ignore[dict-item]
    with pytest.raises(ParameterError, match="maps catalogue band symbols"):
        SpectralIndex("NDVI", bands=[3, 2])  # type: ignore[arg-type]
    for err in (ParameterError, PatchflowError):
        assert issubclass(err, PatchflowError)
    # names must be bound before computing
    with pytest.raises(ParameterError, match="bind"):
        SpectralIndex("NDVI", bands=BY_NAME)(np.ones((1, 6, 2, 2)))


def test_formulas_are_arithmetic_only() -> None:
    from patchflow.ops.indices import _compiled

    assert eval(_compiled("(N-R)/(N+R)"), {"__builtins__": {}}, {"N": 3.0, "R": 1.0}) == 0.5
    for formula in ("__import__('os').getcwd()", "N.real", "[N][0]", "N if R else 0", "'x'"):
        with pytest.raises(ParameterError, match="only \\+ - \\* / \\*\\*"):
            _compiled(formula)


def test_missing_extra_message() -> None:
    text = missing_spyndex_message()
    assert INSTALL == 'pip install "patchflow[indices]"' and text.endswith(INSTALL)
    assert "spyndex" in text and "SpectralIndex" in text
    assert "No module named" in missing_spyndex_message("No module named 'spyndex'")


def _python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )


#: makes ``spyndex`` unimportable in a fresh interpreter, as if the extra were not installed
BLOCK_SPYNDEX = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "spyndex" or name.startswith("spyndex."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
"""


def test_spyndex_is_imported_lazily_and_its_absence_named() -> None:
    lazy = _python(
        "import sys, patchflow.ops, patchflow.ops.indices\n"
        "assert 'spyndex' not in sys.modules, 'spyndex imported'\n"
        "patchflow.ops.indices.SpectralIndex('NDVI', bands={'N': 1, 'R': 0})\n"
        "assert 'spyndex' in sys.modules\n"
    )
    assert lazy.returncode == 0, lazy.stderr
    absent = _python(
        BLOCK_SPYNDEX
        + "from patchflow.errors import MissingExtraError\n"
        + "from patchflow.ops.indices import SpectralIndex\n"
        + "try:\n"
        + "    SpectralIndex('NDVI', bands={'N': 1, 'R': 0})\n"
        + "except MissingExtraError as exc:\n"
        + "    assert isinstance(exc, ImportError)\n"
        + "    print(exc)\n"
    )
    assert absent.returncode == 0, absent.stderr
    assert absent.stdout.strip().endswith('pip install "patchflow[indices]"'), absent.stdout
    assert issubclass(MissingExtraError, PatchflowError)


# --------------------------------------------------------------------------- CLI


def test_cli_apply_spectral_index(tmp_path: Path) -> None:
    refl = reflectance_stack((140, 150), seed=9).astype(np.float32)
    src = tmp_path / "refl.tif"
    write_float = xr.DataArray(refl, dims=("band", "y", "x"))
    write_float = write_float.rio.write_crs("EPSG:32633").rio.write_transform(
        Affine(10.0, 0.0, 600_000.0, 0.0, -10.0, 5_000_000.0)
    )
    write_float.rio.to_raster(src, tiled=True, blockxsize=64, blockysize=64)
    out_path = tmp_path / "evi.tif"
    args = [
        "apply",
        str(src),
        str(out_path),
        "--op",
        "spectral_index",
        "--op-arg",
        "index=EVI",
        "--op-arg",
        'bands={"N": 3, "R": 2, "B": 0}',
        "--size",
        "64",
        "--stride",
        "48",
    ]
    # (until patchflow.ops imports patchflow.ops.indices, import it to register the op)
    code = (
        "import sys, patchflow.ops.indices\nfrom patchflow.__main__ import main\n"
        f"sys.exit(main({args!r}))"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    with rasterio.open(out_path) as dst:
        assert dst.count == 1 and dst.dtypes[0] == "float32"
        assert dst.descriptions == ("EVI",)
        got = dst.read(1)
    np.testing.assert_array_equal(got, reference("EVI", refl))
    bad = _python(code.replace("index=EVI", "index=EVII").replace("evi.tif", "bad.tif"))
    assert bad.returncode == 2, bad.stderr
    assert "did you mean 'EVI'" in bad.stderr and "Traceback" not in bad.stderr
