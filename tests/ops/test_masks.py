"""Cloud and shadow masks as validity (issue 17, part 2): ``SCL``, ``QABits``, ``Mask``.

The references are written out by hand from the product documents (the SCL class table,
the QA_PIXEL bit layout of the USGS Landsat 8-9 Collection 2 Level-2 Science Product
Guide) and plain numpy; jobs run through ``patchflow.apply`` on GeoTIFFs written with
rioxarray and read back with rioxarray.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rioxarray
import xarray as xr
from affine import Affine

import patchflow
import patchflow.masks
from patchflow.errors import (
    ConfigError,
    ImportTargetError,
    MaskValueError,
    OperatorError,
    ParameterError,
)
from patchflow.masks import QA_CONFIDENCE, QA_FLAGS, SCL, SCL_CLASSES, Mask, QABits
from patchflow.ops import (
    NDVI,
    Composite,
    Lambda,
    from_config,
    from_json,
    op_pointwise,
    registered_ops,
    to_json,
)

SHAPE = (300, 260)
BANDS = ("red", "nir", "scl")
DEFAULT_KEEP = (4, 5, 6, 11)


# --------------------------------------------------------------------------- helpers


def blobs(shape: tuple[int, int], values: int, cell: int, seed: int) -> np.ndarray:
    """Integer labels ``0..values-1`` in ``cell``-pixel squares: masked areas are
    contiguous and straddle chip and block edges."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, values, size=(-(-shape[0] // cell), -(-shape[1] // cell)))
    return np.kron(coarse, np.ones((cell, cell), int))[: shape[0], : shape[1]]


def scene_bands(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint16 red, nir (DN 1..5000) and an SCL layer holding all 12 classes."""
    rng = np.random.default_rng(seed)
    red = rng.integers(1, 3000, SHAPE).astype(np.uint16)
    nir = rng.integers(1, 5000, SHAPE).astype(np.uint16)
    scl = blobs(SHAPE, 12, 9, seed).astype(np.uint16)
    assert set(np.unique(scl)) == set(range(12))
    return red, nir, scl


TRANSFORM = Affine(20.0, 0.0, 600_000.0, 0.0, -20.0, 5_000_040.0)


def write_tif(path: Path, data: np.ndarray, bands: tuple[str, ...], nodata: Any) -> Path:
    """A tiled GeoTIFF written with rioxarray, band descriptions = ``bands``."""
    rows, cols = data.shape[-2:]
    da = xr.DataArray(
        data,
        dims=("band", "y", "x"),
        coords={
            "band": np.arange(1, len(bands) + 1),
            "y": TRANSFORM.f + TRANSFORM.e * (np.arange(rows) + 0.5),
            "x": TRANSFORM.c + TRANSFORM.a * (np.arange(cols) + 0.5),
        },
        attrs={"long_name": bands},
    )
    da = da.rio.write_crs("EPSG:32633").rio.write_transform(TRANSFORM)
    if nodata is not None:
        da = da.rio.write_nodata(nodata, encoded=False)
    da.rio.to_raster(path, tiled=True, blockxsize=128, blockysize=128)
    return path


def read_named(path: Path) -> xr.DataArray:
    """The GeoTIFF read with rioxarray, bands labelled by their descriptions."""
    da = rioxarray.open_rasterio(path, chunks={"y": 128, "x": 128})
    assert isinstance(da, xr.DataArray)
    return da.assign_coords(band=list(da.attrs["long_name"]))


def ndvi_reference(red: np.ndarray, nir: np.ndarray, valid: np.ndarray, dtype: Any) -> np.ndarray:
    """``(nir - red) / (nir + red)`` in ``dtype``, NaN where not ``valid`` or 0/0."""
    r, n = red.astype(dtype), nir.astype(dtype)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (n - r) / (n + r)
    out[(n + r) == 0] = np.nan
    out[~valid] = np.nan
    return out


# --------------------------------------------------------------------------- SCL: classes

#: the SCL table, by hand: value → (name, valid under the default keep)
SCL_TABLE = {
    0: ("no_data", False),
    1: ("saturated_or_defective", False),
    2: ("dark_area", False),
    3: ("cloud_shadow", False),
    4: ("vegetation", True),
    5: ("not_vegetated", True),
    6: ("water", True),
    7: ("unclassified", False),
    8: ("cloud_medium_probability", False),
    9: ("cloud_high_probability", False),
    10: ("thin_cirrus", False),
    11: ("snow", True),
}


def scl_chip(dtype: Any = np.uint16) -> np.ndarray:
    """One chip (1, 3, 2, 12): pixel column k has SCL class k in both rows."""
    scl = np.tile(np.arange(12), (2, 1))
    red = 100 + np.arange(24).reshape(2, 12)
    nir = 1000 + np.arange(24).reshape(2, 12)
    return np.stack([red, scl, nir])[None].astype(dtype)  # SCL in the middle


def test_scl_class_table() -> None:
    assert {k: v[0] for k, v in SCL_TABLE.items()} == SCL_CLASSES
    chips = scl_chip()
    out = SCL(band=1)(chips)
    assert out.shape == (1, 2, 2, 12) and out.dtype == np.float32
    for cls, (_name, valid) in SCL_TABLE.items():
        column = out[0, :, :, cls]
        if valid:
            expect = chips[0, [0, 2], :, cls].astype(np.float32)
            np.testing.assert_array_equal(column, expect, err_msg=f"class {cls}")
        else:
            assert np.isnan(column).all(), f"class {cls} must be masked"


@pytest.mark.parametrize(
    "keep",
    [[3], [1, 2, 3, 5, 7, 8, 9, 10], list(range(1, 12)), ["cloud_shadow", "water", 10]],
)
def test_scl_keep_any_classes(keep: list[Any]) -> None:
    codes = {
        c if isinstance(c, int) else {n: k for k, (n, _) in SCL_TABLE.items()}[c] for c in keep
    }
    out = SCL(band=1, keep=keep)(scl_chip())
    for cls in range(12):
        masked = bool(np.isnan(out[0, :, :, cls]).all())
        assert masked == (cls not in codes), cls
        assert masked or not np.isnan(out[0, :, :, cls]).any()


@pytest.mark.parametrize(
    ("dtype", "expect"),
    [
        (np.uint8, np.float32),
        (np.uint16, np.float32),
        (np.int16, np.float32),
        (np.float32, np.float32),
        (np.int32, np.float64),
        (np.float64, np.float64),
    ],
)
def test_scl_output_dtype(dtype: Any, expect: Any) -> None:
    out = SCL(band=1)(scl_chip(dtype))
    assert out.dtype == np.dtype(expect)
    assert SCL(band=1).output_spec((3,), np.dtype(dtype)) == ((2,), np.dtype(expect))


def test_scl_nan_is_nodata_and_values_pass_unchanged() -> None:
    chips = scl_chip(np.float64)
    chips[0, 1, 0, 4] = np.nan  # the input's nodata, as the engine hands it over
    chips[0, 0, 1, 5] = np.nan  # a NaN reflectance stays NaN, the other band stays
    out = SCL(band=1)(chips)
    assert np.isnan(out[0, :, 0, 4]).all()
    assert np.isnan(out[0, 0, 1, 5]) and out[0, 1, 1, 5] == chips[0, 2, 1, 5]
    assert out[0, 0, 1, 4] == chips[0, 0, 1, 4]
    assert not np.isnan(scl_chip(np.float64)).any()  # the input was not written to


def test_scl_band_by_name_and_output_names() -> None:
    op = SCL(band="scl")
    bound = op.bind(["blue", "scl", "red", "nir"])
    assert bound == SCL(band=1) and op.band == "scl"
    assert op.output_band_names(["blue", "scl", "red", "nir"]) == ["blue", "red", "nir"]
    assert bound.output_band_names(["blue", "scl", "red", "nir"]) == ["blue", "red", "nir"]
    assert SCL(band=-1).output_band_names(["red", "nir", "scl"]) == ["red", "nir"]
    # NDVI after SCL finds "red"/"nir" among the remaining bands
    pipe = (SCL() | NDVI(red="red", nir="nir")).bind(["nir", "scl", "red"])
    assert repr(pipe) == "SCL(band=1, keep=[4, 5, 6, 11]) | NDVI(red=1, nir=0)"
    assert pipe.output_spec((3,), np.dtype("uint16")) == ((1,), np.dtype("float32"))
    assert op_pointwise(pipe)


def test_scl_time_axis_layout() -> None:
    # (n, time, band, h, w): the band axis is the last non-spatial one
    chips = np.stack([scl_chip()[0], scl_chip()[0][:, :, ::-1]])[None]  # (1, 2, 3, 2, 12)
    out = SCL(band=1)(chips)
    assert out.shape == (1, 2, 2, 2, 12)
    np.testing.assert_array_equal(out[0, 0], SCL(band=1)(scl_chip())[0])
    assert SCL(band=2).output_spec((5, 3), np.dtype("uint16")) == ((5, 2), np.dtype("float32"))


# --------------------------------------------------------------------------- QA_PIXEL

#: the product guide's bit positions, written out here (not taken from patchflow)
BIT = {
    "fill": 0,
    "dilated_cloud": 1,
    "cirrus": 2,
    "cloud": 3,
    "cloud_shadow": 4,
    "snow": 5,
    "clear": 6,
    "water": 7,
}
CONF_BIT = {"cloud": 8, "cloud_shadow": 10, "snow": 12, "cirrus": 14}
NONE, LOW, MEDIUM, HIGH = 0b00, 0b01, 0b10, 0b11


def qa_word(flags: tuple[str, ...] = (), **conf: int) -> int:
    """A QA_PIXEL word from flag names and confidence pairs (default: all "low")."""
    word = sum(1 << BIT[f] for f in flags)
    for name, bit in CONF_BIT.items():
        word |= conf.get(name, LOW) << bit
    return word


def decode(word: int) -> dict[str, Any]:
    """A word back into its flags and confidences, by the guide's table."""
    flags = {name for name, bit in BIT.items() if word >> bit & 1}
    conf = {name: word >> bit & 0b11 for name, bit in CONF_BIT.items()}
    return {"flags": flags, **conf}


def test_qa_tables_match_the_product_guide() -> None:
    assert BIT == QA_FLAGS
    assert CONF_BIT == QA_CONFIDENCE


#: (word, valid by default, valid with reject=["fill"] and cloud confidence >= medium,
#:  valid with reject=["fill"] and every confidence at "high")
QA_CASES = [
    (qa_word(("clear",)), True, True, True),
    (qa_word(("clear", "water")), True, True, True),
    (
        qa_word(("fill",), cloud=NONE, cloud_shadow=NONE, snow=NONE, cirrus=NONE),
        False,
        False,
        False,
    ),
    (qa_word(("dilated_cloud",)), False, True, True),
    (qa_word(("cloud",), cloud=HIGH), False, False, False),
    (qa_word(("cloud",), cloud=MEDIUM), False, False, True),
    (qa_word(("clear",), cloud=MEDIUM), True, False, True),
    (qa_word(("cloud_shadow",), cloud_shadow=HIGH), False, True, False),
    (qa_word(("snow",), snow=HIGH), False, True, False),
    (qa_word(("clear", "cirrus"), cirrus=HIGH), False, True, False),
    (qa_word(("clear",), cirrus=HIGH), True, True, False),
    (qa_word(("clear",), cloud=NONE, cloud_shadow=NONE, snow=NONE, cirrus=NONE), True, True, True),
    (qa_word(("water",)), True, True, True),
]


def qa_chip(words: list[int], dtype: Any = np.uint16) -> np.ndarray:
    """(1, 2, 1, len(words)): band 0 = a value per pixel, band 1 = the QA words."""
    values = np.arange(10, 10 + len(words))
    return np.stack([values, words])[:, None][None].astype(dtype)


@pytest.mark.parametrize(
    ("op", "column"),
    [
        (QABits(band=1), 1),
        (QABits(band=1, reject=["fill"], confidence={"cloud": "medium"}), 2),
        (
            QABits(
                band=1,
                reject=("fill",),
                confidence={c: "high" for c in ("cloud", "cloud_shadow", "snow", "cirrus")},
            ),
            3,
        ),
    ],
)
def test_qa_hand_computed_table(op: QABits, column: int) -> None:
    words = [case[0] for case in QA_CASES]
    out = op(qa_chip(words))
    assert out.shape == (1, 1, 1, len(words)) and out.dtype == np.float32
    for k, case in enumerate(QA_CASES):
        value = out[0, 0, 0, k]
        if case[column]:
            assert value == 10 + k, (op, decode(case[0]))
        else:
            assert np.isnan(value), (op, decode(case[0]))


#: real QA_PIXEL values of Landsat 8-9 Collection 2 scenes, and what they decode to
REAL_WORLD = {
    1: ({"fill"}, NONE, NONE, NONE, NONE),  # fill
    21824: ({"clear"}, LOW, LOW, LOW, LOW),  # clear land
    21952: ({"clear", "water"}, LOW, LOW, LOW, LOW),  # clear water
    22080: ({"clear"}, MEDIUM, LOW, LOW, LOW),  # clear, medium cloud confidence
    22280: ({"cloud"}, HIGH, LOW, LOW, LOW),  # high-confidence cloud
    21762: ({"dilated_cloud"}, LOW, LOW, LOW, LOW),  # dilated cloud over land
    23888: ({"clear", "cloud_shadow"}, LOW, HIGH, LOW, LOW),  # cloud shadow
    30048: ({"clear", "snow"}, LOW, LOW, HIGH, LOW),  # snow
    54596: ({"clear", "cirrus"}, LOW, LOW, LOW, HIGH),  # high-confidence cirrus
    55052: ({"cloud", "cirrus"}, HIGH, LOW, LOW, HIGH),  # cloud with cirrus
}


def test_qa_real_world_words() -> None:
    for word, (flags, cloud, shadow, snow, cirrus) in REAL_WORLD.items():
        assert decode(word) == {
            "flags": flags,
            "cloud": cloud,
            "cloud_shadow": shadow,
            "snow": snow,
            "cirrus": cirrus,
        }, word
    words = list(REAL_WORLD)
    out = QABits(band=-1)(qa_chip(words))[0, 0, 0]
    valid = {w for w, v in zip(words, out, strict=True) if not np.isnan(v)}
    assert valid == {21824, 21952, 22080}  # clear pixels only (medium cloud conf passes)
    strict = QABits(band=-1, confidence={"cloud": "medium"})(qa_chip(words))[0, 0, 0]
    assert {w for w, v in zip(words, strict, strict=True) if not np.isnan(v)} == {21824, 21952}
    land = QABits(band=-1, reject=["fill", "cloud", "water", "dilated_cloud"])(qa_chip(words))
    assert np.isnan(land[0, 0, 0, words.index(21952)])
    assert land[0, 0, 0, words.index(21824)] == 10 + words.index(21824)


def test_qa_float_input_nan_and_exhaustive_words() -> None:
    # every 16-bit word, as float64 (integer input with nodata reaches the op as float64)
    words = np.arange(1 << 16)
    chips = np.stack([np.ones(words.size), words.astype(np.float64)])[:, None][None]
    chips[0, 1, 0, 7] = np.nan
    out = QABits(band=1, confidence={"cloud": "medium"})(chips)[0, 0, 0]
    assert out.dtype == np.float64
    reject = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 5)
    expect = ((words & reject) == 0) & (((words >> 8) & 3) < 2)
    expect[7] = False
    np.testing.assert_array_equal(~np.isnan(out), expect)


# --------------------------------------------------------------------------- Mask


def test_mask_callable_per_chip_and_batched() -> None:
    chips = np.arange(2 * 3 * 4 * 5, dtype=np.uint16).reshape(2, 3, 4, 5)
    calls: list[tuple[int, ...]] = []

    def bright(chip: np.ndarray) -> np.ndarray:
        calls.append(chip.shape)
        return np.asarray(chip[0] > 8)

    out = Mask(bright)(chips)
    assert calls == [(3, 4, 5), (3, 4, 5)] and out.dtype == np.float32
    expect = chips.astype(np.float32)
    expect[np.broadcast_to((chips[:, :1] > 8), chips.shape)] = np.nan
    np.testing.assert_array_equal(out, expect)
    batched = Mask(lambda c: c[:, :1] > 8, batched=True)(chips)
    np.testing.assert_array_equal(batched, expect)
    per_band = Mask(lambda c: c > 50)(chips)  # (band, h, w): band by band
    np.testing.assert_array_equal(np.isnan(per_band), chips > 50)
    assert Mask(bright).output_band_names(["a", "b", "c"]) == ["a", "b", "c"]
    assert not op_pointwise(Mask(bright)) and op_pointwise(Mask(bright, pointwise=True))


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An importable module of the user's own: ``usermask_mod:bright``."""
    name = "usermask_mod"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            import numpy as np

            def bright(chip, limit=2000):
                return np.asarray(chip[0] > limit)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def test_mask_import_path_config_and_trust(user_module: str) -> None:
    op = Mask(f"{user_module}:bright", params={"limit": 3}, pointwise=True)
    chips = np.arange(2 * 2 * 1 * 4, dtype=np.uint16).reshape(2, 2, 1, 4)
    out = op(chips)
    np.testing.assert_array_equal(np.isnan(out[:, 0]), chips[:, 0] > 3)
    config = op.get_config()
    assert config == {
        "op": "Mask",
        "params": {
            "where": "usermask_mod:bright",
            "params": {"limit": 3},
            "batched": None,
            "pointwise": True,
        },
    }
    with pytest.raises(ConfigError, match=r"names code to run.*trusted=True"):
        from_config(config)
    with pytest.raises(ConfigError, match=r"names code to run"):
        from_json(to_json(op))
    assert from_config(config, trusted=True) == op
    back = from_json(to_json(op), trusted=True)
    assert back == op and repr(back) == (
        "Mask('usermask_mod:bright', params={'limit': 3}, pointwise=True)"
    )
    np.testing.assert_array_equal(back(chips), out)
    assert pickle.loads(pickle.dumps(op)) == op


def test_mask_callable_has_no_config() -> None:
    def rule(chip: np.ndarray) -> np.ndarray:
        return np.asarray(chip[0] > 0)

    op = Mask(rule)
    assert repr(op).startswith("Mask(test_mask_callable_has_no_config.<locals>.rule")
    with pytest.raises(ConfigError, match=r"Python callable.*Mask\('MODULE:CALLABLE'\)"):
        op.get_config()
    with pytest.raises(ConfigError, match="Python callable"):
        to_json(SCL() | op)


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "op",
    [
        SCL(),
        SCL(band=2, keep=["water", 3]),
        QABits(),
        QABits(band="QA_PIXEL", reject=["fill", "cloud"], confidence={"cirrus": "high"}),
        SCL(band="scl") | NDVI(red="red", nir="nir") | Composite("median"),
    ],
)
def test_configs_round_trip(op: Any) -> None:
    assert from_json(to_json(op)) == op
    assert from_config(op.get_config()) == op
    assert pickle.loads(pickle.dumps(op)) == op
    assert type(op).from_config(op.get_config()) == op


def test_config_shapes_and_registry() -> None:
    assert to_json(SCL(band=2, keep=[11, "water"])) == (
        '{"op": "SCL", "params": {"band": 2, "keep": [6, 11]}}'
    )
    assert QABits().get_config() == {
        "op": "QABits",
        "params": {
            "band": "qa_pixel",
            "reject": ["fill", "dilated_cloud", "cirrus", "cloud", "cloud_shadow", "snow"],
            "confidence": None,
        },
    }
    assert {"SCL", "QABits", "Mask"} <= set(registered_ops())
    assert patchflow.masks.SCL is SCL


def test_cli_builds_the_operators_by_name() -> None:
    from patchflow.cli.opspec import OPTION, build_operator

    assert build_operator("scl", {"band": "scl"}, where=OPTION) == SCL(band="scl")
    assert build_operator("qa-bits", {"band": 3, "reject": ["cloud"]}, where=OPTION) == QABits(
        band=3, reject=["cloud"]
    )


# --------------------------------------------------------------------------- through apply


@pytest.fixture(scope="module")
def scl_tif(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    red, nir, scl = scene_bands(seed=17)
    red[5, 5] = nir[5, 5] = 0  # 0/0 on a kept class: NaN from NDVI, not from the mask
    scl[5, 5] = 4
    data = np.stack([red, nir, scl])
    path = write_tif(tmp_path_factory.mktemp("scl") / "s2_l2a.tif", data, BANDS, None)
    back = rioxarray.open_rasterio(path)
    assert isinstance(back, xr.DataArray)
    np.testing.assert_array_equal(back.values, data)
    assert tuple(back.attrs["long_name"]) == BANDS
    return path, data


@pytest.mark.parametrize("pointwise", [True, False])
def test_scl_ndvi_through_apply(scl_tif: tuple[Path, np.ndarray], pointwise: bool) -> None:
    path, (red, nir, scl) = scl_tif
    op: Any = SCL() | NDVI(red="red", nir="nir")
    if not pointwise:  # a non-pointwise last step: real overlapping, blended chips
        op = op | Lambda(lambda c: c, batched=True)
    result = patchflow.apply(read_named(path), op, size=64, stride=40).compute()
    assert result.shape == (1, *SHAPE) and result.dtype == np.float32
    if pointwise:  # (a Lambda does not name its output bands)
        assert list(result.band.values) == ["ndvi"]
    result = result.squeeze("band", drop=True)
    valid = np.isin(scl, DEFAULT_KEEP)
    expect = ndvi_reference(red, nir, valid, np.float32)
    np.testing.assert_array_equal(np.isnan(result.values), np.isnan(expect))
    assert np.isnan(result.values[~valid]).all() and np.isnan(result.values[5, 5])
    if pointwise:  # the op ran once per pixel: exactly the reference
        np.testing.assert_array_equal(result.values, expect)
    else:  # weighted blends of equal values
        np.testing.assert_allclose(result.values, expect, rtol=2e-6, atol=0)
    assert 0.2 < valid.mean() < 0.5  # both masked and valid pixels are a real share


def test_scl_keeps_the_other_bands_through_apply(scl_tif: tuple[Path, np.ndarray]) -> None:
    path, (red, nir, scl) = scl_tif
    result = patchflow.apply(read_named(path), SCL(keep=[4, 6]), size=64, stride=40)
    assert list(result.band.values) == ["red", "nir"]
    assert result.dtype == np.float32
    keep = np.isin(scl, [4, 6])
    for k, band in enumerate((red, nir)):
        expect = np.where(keep, band.astype(np.float32), np.float32(np.nan))
        np.testing.assert_array_equal(result.values[k], expect)


def test_scl_with_file_nodata_through_apply(tmp_path: Path) -> None:
    # the file declares nodata 0 (as Sentinel-2 L2A does): SCL 0 and 0 DN read as NaN
    red, nir, scl = scene_bands(seed=23)
    red[100:110, 20:30] = 0  # no data in red only: NDVI NaN there, whatever the class
    path = write_tif(tmp_path / "nodata.tif", np.stack([red, nir, scl]), BANDS, 0)
    result = patchflow.apply(
        read_named(path), SCL() | NDVI(red="red", nir="nir"), size=64, stride=40
    ).values[0]
    valid = np.isin(scl, DEFAULT_KEEP) & (red != 0) & (nir != 0)
    expect = ndvi_reference(red, nir, valid, np.float64)  # uint16 with nodata → float64
    assert result.dtype == np.float64
    np.testing.assert_array_equal(result, expect)


def test_qa_bits_through_apply(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    words = np.array(list(REAL_WORLD), np.uint16)
    qa = words[blobs(SHAPE, words.size, 11, seed=5)]
    sr = rng.integers(7000, 30000, (2, *SHAPE)).astype(np.uint16)
    path = write_tif(
        tmp_path / "lc09.tif", np.stack([sr[0], qa, sr[1]]), ("sr_b4", "qa_pixel", "sr_b5"), None
    )
    result = patchflow.apply(read_named(path), QABits(), size=64, stride=40).compute()
    assert list(result.band.values) == ["sr_b4", "sr_b5"]
    keep = np.isin(qa, [21824, 21952, 22080])
    for k in range(2):
        expect = np.where(keep, sr[k].astype(np.float32), np.float32(np.nan))
        np.testing.assert_array_equal(result.values[k], expect)


def test_mask_through_apply_on_overlapping_chips(
    scl_tif: tuple[Path, np.ndarray], user_module: str
) -> None:
    path, (red, nir, _scl) = scl_tif
    arr = read_named(path).sel(band=["red", "nir"])
    op = Mask(f"{user_module}:bright", params={"limit": 2000}) | NDVI(red=0, nir=1)
    assert not op_pointwise(op)
    result = patchflow.apply(arr, op, size=64, stride=40).values[0]
    expect = ndvi_reference(red, nir, red <= 2000, np.float32)
    np.testing.assert_array_equal(np.isnan(result), np.isnan(expect))
    np.testing.assert_allclose(result, expect, rtol=2e-6, atol=0)


def test_cli_op_scl(scl_tif: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, (red, nir, scl) = scl_tif
    out = tmp_path / "masked.zarr"
    # the real command in a fresh process; importing patchflow.masks first registers the
    # operators until patchflow.ops exports them. The SCL band by its 0-based position:
    # the command does not label a GeoTIFF's bands by their descriptions for --op-arg
    code = "import sys, patchflow.masks\nfrom patchflow.__main__ import main\nsys.exit(main())"
    args = ["apply", str(path), str(out), "--op", "scl", "--op-arg", "band=2"]
    args += ["--op-arg", "keep=[4, 5]", "--size", "64", "--stride", "40", "-q"]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    result = patchflow.open_result(out)
    assert list(result.attrs["long_name"]) == ["red", "nir"]  # descriptions follow
    keep = np.isin(scl, [4, 5])
    for k, band in enumerate((red, nir)):
        expect = np.where(keep, band.astype(np.float32), np.float32(np.nan))
        np.testing.assert_array_equal(result.values[k], expect)


# --------------------------------------------------------------------------- time stacks


def time_stack(t: int = 6, seed: int = 31) -> xr.DataArray:
    """stackstac-like ``(time, band, y, x)`` float64 (missing data NaN), bands
    red/nir/scl, one SCL layer per date."""
    rng = np.random.default_rng(seed)
    h, w = 150, 130
    data = np.empty((t, 3, h, w))
    data[:, :2] = rng.integers(1, 5000, (t, 2, h, w))
    for k in range(t):
        data[k, 2] = blobs((h, w), 12, 7, seed + k)
    data[1, :, :20, :20] = np.nan  # outside the footprint on one date
    data[:, 2, 60:64, 60:64] = 9  # clouded on every date: all-NaN composite
    return xr.DataArray(
        data,
        dims=("time", "band", "y", "x"),
        coords={"time": np.arange(t), "band": list(BANDS)},
    )


def composite_reference(data: np.ndarray) -> np.ndarray:
    keep = np.isin(data[:, 2], DEFAULT_KEEP)  # NaN SCL is not kept
    masked = np.where(keep[:, None], data[:, :2], np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.asarray(np.nanmedian(masked, axis=0))


def test_time_stack_scl_then_composite_in_one_job() -> None:
    cube = time_stack()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        out = patchflow.apply(
            cube, SCL() | Composite("median"), over="time", size=48, stride=32
        ).compute()
    assert out.dims == ("band", "y", "x") and list(out.band.values) == ["red", "nir"]
    expect = composite_reference(cube.values)
    np.testing.assert_array_equal(np.isnan(out.values), np.isnan(expect))
    np.testing.assert_array_equal(out.values, expect)
    assert np.isnan(out.values[:, 60:64, 60:64]).all()


def test_time_stack_masked_per_date_then_composited() -> None:
    cube = time_stack(t=5, seed=41)
    masked = patchflow.apply(cube, SCL(), size=48, stride=32)  # per date: (band, h, w)
    assert masked.dims == ("time", "band", "y", "x") and masked.shape[1] == 2
    out = patchflow.apply(
        masked, Composite("median", count=True), over="time", size=48, stride=32
    ).compute()
    expect = composite_reference(cube.values)
    np.testing.assert_array_equal(out.values[:2], expect)
    keep = np.isin(cube.values[:, 2], DEFAULT_KEEP) & np.isfinite(cube.values[:, :2]).all(1)
    np.testing.assert_array_equal(out.values[2], keep.sum(axis=0))


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: SCL(keep=[12]), ParameterError, r"keep= takes class values 0\.\.11.*11 snow"),
        (lambda: SCL(keep=["clouds"]), ParameterError, r"unknown SCL class 'clouds'.*valid"),
        (lambda: SCL(keep=["watr"]), ParameterError, r"did you mean 'water'"),
        (lambda: SCL(keep=[0, 4]), ParameterError, r"class 0 is the layer's no data"),
        (lambda: SCL(keep=[]), ParameterError, r"keep= is empty"),
        (lambda: SCL(keep=[True]), ParameterError, r"class values"),
        (lambda: SCL(band=1.5), ParameterError, r"band must be a band index"),
        (
            lambda: QABits(reject=["clouds"]),
            ParameterError,
            r"unknown QA_PIXEL flag 'clouds' \(did you mean 'cloud'\?\); valid flags: fill "
            r"\(bit 0\), dilated_cloud \(bit 1\), cirrus \(bit 2\), cloud \(bit 3\), "
            r"cloud_shadow \(bit 4\), snow \(bit 5\), clear \(bit 6\), water \(bit 7\)",
        ),
        (lambda: QABits(reject=[3]), ParameterError, r"unknown QA_PIXEL flag 3"),
        (
            lambda: QABits(confidence={"haze": "high"}),
            ParameterError,
            r"unknown QA_PIXEL confidence class 'haze'.*cloud \(bits 8-9\)",
        ),
        (
            lambda: QABits(confidence={"cloud": "low"}),
            ParameterError,
            r"'medium' or 'high'",
        ),
        (
            lambda: QABits(confidence={"snow": "medium"}),
            ParameterError,
            r"snow confidence has no 'medium'.*reserved",
        ),
        (lambda: QABits(confidence="high"), ParameterError, r"maps a class"),
        (lambda: QABits(reject=[]), ParameterError, r"rejects nothing"),
        (lambda: Mask("not a path"), ConfigError, r"MODULE:CALLABLE"),
        (lambda: Mask(3), ConfigError, r"or a callable"),
        (lambda: Mask(np.isnan, params={"a": 1}), ParameterError, r"params= are for"),
    ],
)
def test_bad_parameters(make: Callable[[], Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make()


def test_bad_bands() -> None:
    chips = scl_chip()
    with pytest.raises(ParameterError, match=r"band 'SCL' not found.*did you mean 'scl'"):
        SCL(band="SCL").bind(["red", "scl", "nir"])
    with pytest.raises(ParameterError, match=r"band 'scl' not found among.*\['red', 'nir'\]"):
        SCL().output_band_names(["red", "nir"])
    with pytest.raises(ParameterError, match=r"band index 3 is out of range.*GDAL-style"):
        SCL(band=3)(chips)
    with pytest.raises(ParameterError, match=r"band index 3 is out of range"):
        SCL(band=3).output_spec((3,), np.dtype("uint16"))
    with pytest.raises(ParameterError, match=r"names bands; resolve them with op.bind"):
        SCL()(chips)
    with pytest.raises(ParameterError, match=r"only the SCL band, so no band is left"):
        SCL(band=0).output_spec((1,), np.dtype("uint16"))
    with pytest.raises(ParameterError, match=r"needs chips \(n, band, h, w\)"):
        SCL(band=0)(np.zeros((1, 4, 4), np.uint16))
    with pytest.raises(ParameterError, match=r"needs chips with a band axis"):
        QABits(band=0).output_spec((), np.dtype("uint16"))


def test_band_name_on_unlabelled_input_fails_at_call_time(dask_computes: Any) -> None:
    cube = xr.DataArray(np.ones((3, 64, 64), np.uint16), dims=("band", "y", "x"))
    with (
        dask_computes(max_computes=0),
        pytest.raises(ParameterError, match=r"addresses the SCL band by name.*assign_coords"),
    ):
        patchflow.apply(cube, SCL(), size=32, stride=24)


@pytest.mark.parametrize(
    ("values", "dtype", "shown"),
    [
        ([4, 12], np.uint16, "12"),
        ([4, 4.5], np.float32, "4.5"),
        ([4, -1], np.int16, "-1"),
        ([4, np.inf], np.float64, "inf"),
    ],
)
def test_scl_values_that_are_no_classes(values: list[float], dtype: Any, shown: str) -> None:
    chips = np.array([[[[1, 2]], [values]]], dtype)
    with pytest.raises(MaskValueError, match=rf"holds {shown}, which are no scene classes"):
        SCL(band=1)(chips)


@pytest.mark.parametrize(
    ("values", "dtype", "shown"),
    [
        ([1, 70000], np.int32, "70000"),
        ([1, 21824.5], np.float64, "21824.5"),
        ([-3, 1], np.int32, "-3"),
    ],
)
def test_qa_values_that_are_no_words(values: list[float], dtype: Any, shown: str) -> None:
    chips = np.array([[[[1, 2]], [values]]], dtype)
    with pytest.raises(MaskValueError, match=rf"holds {shown}, which are no QA words"):
        QABits(band=1)(chips)


def test_bad_mask_values_through_apply_name_the_chip() -> None:
    data = np.ones((2, 64, 64), np.uint16)
    data[1] = 4
    data[1, 40, 40] = 200  # no SCL class
    cube = xr.DataArray(data, dims=("band", "y", "x"), coords={"band": ["red", "scl"]})
    with pytest.raises(OperatorError, match=r"chip .*MaskValueError.*holds 200") as info:
        patchflow.apply(
            cube, SCL() | Lambda(lambda c: c, batched=True), size=32, stride=24
        ).compute()
    assert isinstance(info.value.__cause__, MaskValueError)


def test_mask_bad_returns() -> None:
    chips = np.ones((1, 2, 3, 4))
    with pytest.raises(OperatorError, match=r"dtype float64.*must return a boolean array"):
        Mask(lambda c: c[0] * 0.5)(chips)
    with pytest.raises(OperatorError, match=r"shape \(3,\).*\(h, w\) \(3, 4\)"):
        Mask(lambda c: np.ones(3, bool))(chips)
    with pytest.raises(OperatorError, match=r"shape \(5, 3, 4\)"):
        Mask(lambda c: np.ones((5, 3, 4), bool))(chips)


def test_mask_missing_module_fails_while_planning(dask_computes: Any) -> None:
    cube = xr.DataArray(np.ones((2, 64, 64)), dims=("band", "y", "x"))
    with (
        dask_computes(max_computes=0),
        pytest.raises(ImportTargetError, match=r"no module named 'no_such_mask_module'"),
    ):
        patchflow.apply(cube, Mask("no_such_mask_module:rule"), size=32, stride=24)
