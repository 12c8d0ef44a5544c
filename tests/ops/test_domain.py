"""Tests of carbongeo.ops.domain: the aux domain and the hard zero-emission classes."""

from __future__ import annotations

import numpy as np

from carbongeo.ops.domain import allowed_pixels, aux_domain


def test_aux_domain_needs_one_band_with_data() -> None:
    aux = np.array([[[np.nan, 1.0]], [[np.nan, np.nan]]])
    np.testing.assert_array_equal(aux_domain(aux), [[False, True]])


def test_allowed_pixels_masks_every_declared_class_of_every_band() -> None:
    water = np.array([[1.0, 0.0, 0.0, np.nan]])
    landcover = np.array([[3.0, 4.0, 2.0, 2.0]])
    aux = np.stack([np.ones((1, 4)), water, landcover])
    bands = ("ntl", "water", "landcover")
    allowed = allowed_pixels(aux, bands, {"water": (1.0,), "landcover": (4.0, 5.0)})
    np.testing.assert_array_equal(allowed, [[False, False, True, True]])
    # The band axis may be elsewhere (a batch of windows).
    batched = allowed_pixels(aux[None], bands, {"water": (1.0,)}, channel_axis=1)
    np.testing.assert_array_equal(batched, [[[False, True, True, True]]])


def test_allowed_pixels_is_none_without_zero_classes() -> None:
    aux = np.zeros((2, 3, 3))
    assert allowed_pixels(aux, ("a", "b"), {}) is None
    assert allowed_pixels(aux, ("a", "b"), {"other": (1.0,)}) is None
