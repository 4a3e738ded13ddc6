"""The synthetic scene is a pure function of pixel position: chunking never changes it."""

from __future__ import annotations

import numpy as np

from patchflow.io.synthetic import make_scene


def test_scene_independent_of_chunking() -> None:
    whole = make_scene((700, 530), chunks=None).values
    for chunks in (384, (100, 530), (700, 77)):
        np.testing.assert_array_equal(make_scene((700, 530), chunks=chunks).values, whole)


def test_scene_structure_and_georeference() -> None:
    scene = make_scene((2048, 2048), chunks=1024)
    red, nir = scene.values.astype(np.float64)
    ndvi = (nir - red) / (nir + red)
    assert scene.rio.crs.to_epsg() == 32610
    assert scene.rio.resolution() == (10.0, -10.0)
    assert (ndvi < 0).mean() > 0.05  # a lake
    assert (ndvi > 0.5).mean() > 0.1  # vigorous fields
    assert len(np.unique(scene.values)) > 1000  # noise, not flat patches
    assert not np.array_equal(make_scene((64, 64), seed=1).values, make_scene((64, 64)).values)
