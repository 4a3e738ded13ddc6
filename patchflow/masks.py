"""Cloud and shadow masks, the public face: ``patchflow.masks.SCL(...)``.

This module owns nothing but the names: the operators live in
:mod:`patchflow.ops.masks` (see there for the code tables and the validity rules).

==================  ==================================================================
name                masks by
==================  ==================================================================
:class:`SCL`        the Sentinel-2 L2A scene classification layer (:data:`SCL_CLASSES`)
:class:`QABits`     Landsat Collection 2 ``QA_PIXEL`` flags and confidences
                    (:data:`QA_FLAGS`, :data:`QA_CONFIDENCE`, :func:`qa_rejected`)
:class:`Mask`       your own ``where(chip) -> bool`` (True = invalid)
==================  ==================================================================

Masked pixels become NaN, which ``patchflow.apply`` gives zero weight in every merge and
:class:`~patchflow.ops.Composite` skips over time.

Examples
--------
>>> import numpy as np
>>> import patchflow.masks
>>> from patchflow.ops import NDVI
>>> op = patchflow.masks.SCL(band=2) | NDVI(red=0, nir=1)
>>> chips = np.array([[[[100, 100]], [[300, 300]], [[4, 9]]]], np.uint16)  # red, nir, scl
>>> op(chips).tolist()
[[[[0.5, nan]]]]
"""

from __future__ import annotations

from patchflow.ops.masks import (
    QA_CONFIDENCE,
    QA_FLAGS,
    SCL,
    SCL_CLASSES,
    Mask,
    QABits,
    qa_rejected,
)

__all__ = [
    "QA_CONFIDENCE",
    "QA_FLAGS",
    "SCL",
    "SCL_CLASSES",
    "Mask",
    "QABits",
    "qa_rejected",
]
