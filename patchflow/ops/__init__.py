"""Per-chip operators: the contract the engine calls, and patchflow's operator library.

========================  ============================================================
module                    owns
========================  ============================================================
:mod:`.base`              the operator contract (:class:`Operator`, :func:`batched`,
                          output spec, scale, band binding), the registry, configs and
                          JSON, ``|`` composition (:class:`Sequential`), :class:`Lambda`,
                          and :class:`Imported` (your own code, named by import path)
:mod:`.bands`             band arithmetic: DN → reflectance, normalised differences
                          (NDVI, NDWI, NBR), band selection, casts, rescaling, clipping
:mod:`.combinators`       :class:`Branch` (bands side by side), :class:`Switch` (an
                          operator per chip, by a predicate that is data), :class:`Tap`
                          (observe chips: statistics, your own logger)
:mod:`.composite`         NaN-skipping time composites
:mod:`.indices`           :class:`SpectralIndex`: any index of the Awesome Spectral
                          Indices catalogue (``spyndex``, the ``[indices]`` extra)
:mod:`.masks`             validity masks: :class:`SCL` (Sentinel-2), :class:`QABits`
                          (Landsat QA_PIXEL), :class:`Mask` (your predicate); masked
                          pixels become NaN, so every merge and composite skips them
:mod:`.radiometry`        DN → reflectance/radiance (:class:`Radiometric`, from the
                          source's attrs for Sentinel-2 and Landsat C2) and :class:`DOS1`
:mod:`.sklearn`           fitted scikit-learn estimators as operators (:class:`SklearnOp`)
:mod:`.augment`           seeded training-chip augmentations (flips, rotations, band
                          dropout, brightness); never for stitching
:mod:`.tta`               test-time augmentation
:mod:`.models`            ML models (PyTorch modules, any batched callable) and
                          :class:`TorchScript` files (a model with a config)
========================  ============================================================

Nothing here builds a dask graph or touches storage: operators are plain functions of numpy
chips, which is what lets the engine run them anywhere (threads, processes, a cluster).

Examples
--------
>>> from patchflow.ops import NDVI, DNToReflectance, from_json, to_json
>>> pipeline = DNToReflectance(scale=1e-4) | NDVI(red=0, nir=1)
>>> from_json(to_json(pipeline)) == pipeline
True
"""

from __future__ import annotations

from patchflow.ops.augment import (
    AUGMENT_AXES,
    Augmentation,
    AugmentTransform,
    BandDropout,
    BrightnessJitter,
    Flip,
    Rot90,
    augment,
    check_stitchable,
)
from patchflow.ops.bands import (
    NBR,
    NDVI,
    NDWI,
    Astype,
    DNToReflectance,
    NormalizedDifference,
    PercentileClip,
    Rescale,
    SelectBands,
)
from patchflow.ops.base import (
    Batched,
    ConfigError,
    Imported,
    Lambda,
    Operator,
    Sequential,
    as_operator,
    batched,
    from_config,
    from_json,
    is_batched,
    op_output_spec,
    op_pointwise,
    op_scale,
    register,
    registered_ops,
    to_json,
)
from patchflow.ops.combinators import (
    BandFraction,
    BandMean,
    Branch,
    ImportedPredicate,
    Predicate,
    Switch,
    Tap,
    TapRecord,
    clear_tap_records,
    predicate_from_config,
    tap_records,
)
from patchflow.ops.composite import COMPOSITE_STATS, Composite
from patchflow.ops.indices import SpectralIndex, catalogue_indices
from patchflow.ops.masks import QA_CONFIDENCE, QA_FLAGS, SCL, SCL_CLASSES, Mask, QABits, qa_rejected
from patchflow.ops.models import ModelOp, TorchScript, tiny_cnn
from patchflow.ops.radiometry import DOS1, Radiometric
from patchflow.ops.sklearn import SKLEARN_OUTPUTS, SklearnOp
from patchflow.ops.tta import TTA, TTA_PRESETS, TTA_TRANSFORMS

__all__ = [
    "AUGMENT_AXES",
    "COMPOSITE_STATS",
    "DOS1",
    "NBR",
    "NDVI",
    "NDWI",
    "QA_CONFIDENCE",
    "QA_FLAGS",
    "SCL",
    "SCL_CLASSES",
    "SKLEARN_OUTPUTS",
    "TTA",
    "TTA_PRESETS",
    "TTA_TRANSFORMS",
    "Astype",
    "AugmentTransform",
    "Augmentation",
    "BandDropout",
    "BandFraction",
    "BandMean",
    "Batched",
    "Branch",
    "BrightnessJitter",
    "Composite",
    "ConfigError",
    "DNToReflectance",
    "Flip",
    "Imported",
    "ImportedPredicate",
    "Lambda",
    "Mask",
    "ModelOp",
    "NormalizedDifference",
    "Operator",
    "PercentileClip",
    "Predicate",
    "QABits",
    "Radiometric",
    "Rescale",
    "Rot90",
    "SelectBands",
    "Sequential",
    "SklearnOp",
    "SpectralIndex",
    "Switch",
    "Tap",
    "TapRecord",
    "TorchScript",
    "as_operator",
    "augment",
    "batched",
    "catalogue_indices",
    "check_stitchable",
    "clear_tap_records",
    "from_config",
    "from_json",
    "is_batched",
    "op_output_spec",
    "op_pointwise",
    "op_scale",
    "predicate_from_config",
    "qa_rejected",
    "register",
    "registered_ops",
    "tap_records",
    "tiny_cnn",
    "to_json",
]
