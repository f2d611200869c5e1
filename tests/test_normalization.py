"""The "Uniform" histogram normalisation, checked against QMRITools'
``NormDatC`` recipe written out by hand."""
from __future__ import annotations

import numpy as np
import pytest

from legseg_tf.normalization import uniform_normalise


def reference(patch):
    """Straight transcription of ``NormDatC`` with Python loops over voxels (1-based indices)."""
    flat = np.asarray(patch, dtype=np.float64).ravel()
    lo, hi = flat.min(), flat.max()
    width = (hi - lo) / 1024
    counts = [0] * 1024
    for v in flat:
        if v < hi:
            b = int((v - lo) // width)
            counts[min(b, 1023)] += 1
    counts[0] = 0
    total = sum(counts)
    cdf, running = [], 0
    for c in counts:
        running += c
        cdf.append(running / total)
    out = []
    for v in flat:
        k = int(np.floor(1023 * (v - lo) / (hi - lo) + 1))
        k = min(max(k, 1), 1024)
        out.append(cdf[k - 1])
    return np.array(out).reshape(np.shape(patch))


def test_matches_the_reference_on_random_patches():
    rng = np.random.default_rng(0)
    for shape in [(3, 5, 7), (2, 9, 4), (40,)]:
        patch = rng.gamma(2.0, 50.0, shape) * (rng.random(shape) > 0.3)
        np.testing.assert_allclose(uniform_normalise(patch), reference(patch), atol=1e-6)


def test_hand_computed_tiny_case():
    # lo 0, hi 4: bins of width 4/1024; values 1, 2, 3 fall in bins 256, 512, 768 (0-based);
    # 0 is in bin 0 (zeroed) and 4 == hi is outside every bin.
    patch = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    out = uniform_normalise(patch)
    # k-1 = floor(1023 * v/4): 0 -> 0, 1 -> 255, 2 -> 511, 3 -> 767, 4 -> 1023
    # cdf[255] = 0 (value 1 sits in bin 256), cdf[511] = 1/3, cdf[767] = 2/3, cdf[1023] = 1
    np.testing.assert_allclose(out, [0.0, 0.0, 1 / 3, 2 / 3, 1.0], atol=1e-7)


def test_background_maps_to_zero_and_range_is_unit():
    rng = np.random.default_rng(1)
    patch = np.zeros((4, 16, 16))
    patch[:, 4:12, 4:12] = rng.uniform(100, 900, (4, 8, 8))
    out = uniform_normalise(patch)
    assert out.dtype == np.float32 and out.shape == patch.shape
    assert np.all(out[patch == 0] == 0) and out.max() == pytest.approx(1.0)
    assert np.all(np.diff(out.ravel()[np.argsort(patch.ravel(), kind="stable")]) >= 0)


def test_constant_and_degenerate_patches_are_returned_unchanged():
    np.testing.assert_array_equal(uniform_normalise(np.full((2, 3), 7.0)), np.full((2, 3), 7.0))
    # only the minimum and the maximum: every count lands in bin 0 or outside -> sum 0
    np.testing.assert_array_equal(uniform_normalise(np.array([0.0, 0.0, 5.0])), [0.0, 0.0, 5.0])


def test_invariant_to_affine_intensity_changes():
    rng = np.random.default_rng(2)
    patch = rng.gamma(2.0, 50.0, (6, 10, 10))
    np.testing.assert_allclose(uniform_normalise(patch), uniform_normalise(3.5 * patch + 20.0), atol=1e-6)
