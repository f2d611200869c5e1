"""The sliding-window merger with identity and linear predictors (exact reconstruction)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from legseg_tf import sliding_window as sw


def identity(batch):
    return batch.astype(np.float32)


def linear(batch):
    """Two 'classes': 2v + 1 and -v, a per-voxel linear map."""
    v = batch[..., 0]
    return np.stack([2 * v + 1, -v], axis=-1).astype(np.float32)


SHAPES = [(7, 33, 29), (16, 16, 16), (3, 10, 41), (9, 64, 48)]
PATCHES = [(4, 16, 16), (8, 32, 16), (16, 16, 32)]
OVERLAPS = [0.0, 0.25, 0.5, 0.9]


@pytest.mark.parametrize("shape,patch,overlap", list(itertools.product(SHAPES, PATCHES, OVERLAPS)))
def test_identity_and_linear_predictors_reconstruct_exactly(shape, patch, overlap):
    rng = np.random.default_rng(sum(shape) + sum(patch))
    volume = rng.normal(size=shape).astype(np.float32)
    blended, n_tiles = sw.predict_probabilities(volume, identity, patch, overlap=overlap, batch_size=3)
    assert blended.shape == (*shape, 1) and n_tiles >= 1
    np.testing.assert_allclose(blended[..., 0], volume, rtol=1e-5, atol=1e-5)
    blended, _ = sw.predict_probabilities(volume, linear, patch, overlap=overlap, gaussian=False)
    np.testing.assert_allclose(blended[..., 0], 2 * volume + 1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(blended[..., 1], -volume, rtol=1e-5, atol=1e-5)


def test_tiles_are_evenly_spaced_and_flush_with_the_border():
    assert sw.tile_starts(200, 96, 0.5) == [0, 35, 69, 104]
    assert sw.tile_starts(96, 96, 0.5) == [0]
    assert sw.tile_starts(97, 96, 0.0) == [0, 1]
    for size, patch, overlap in itertools.product([17, 50, 123], [8, 16], [0.0, 0.3, 0.75]):
        starts = sw.tile_starts(size, patch, overlap)
        assert starts[0] == 0 and starts[-1] == size - patch
        gaps = np.diff(starts)
        assert np.all(gaps <= patch * (1 - overlap) + 1) and gaps.max() - gaps.min() <= 1


def test_volume_smaller_than_patch_is_padded_and_cropped_back():
    volume = np.arange(3 * 5 * 7, dtype=np.float32).reshape(3, 5, 7)
    seen = []

    def spy(batch):
        seen.append(batch.shape)
        return identity(batch)

    blended, n_tiles = sw.predict_probabilities(volume, spy, (4, 16, 16))
    assert seen == [(1, 4, 16, 16, 1)] and n_tiles == 1
    np.testing.assert_allclose(blended[..., 0], volume, rtol=1e-6)


def test_patch_must_be_a_multiple_of_the_stride():
    with pytest.raises(ValueError, match="multiple of the network stride"):
        sw.predict_probabilities(np.zeros((8, 32, 32)), identity, (6, 32, 32), stride=(4, 16, 16))
    with pytest.raises(ValueError, match="multiple of the network stride"):
        sw.validate_patch((4, 8, 16), (4, 16, 16))
    assert sw.validate_patch((8, 32, 48), (4, 16, 16)) == (8, 32, 48)


def test_bad_predictor_outputs_are_caught():
    with pytest.raises(ValueError, match="returned shape"):
        sw.predict_probabilities(np.zeros((4, 8, 8)), lambda b: b[:, :2], (4, 8, 8))
    with pytest.raises(FloatingPointError):
        sw.predict_probabilities(np.zeros((4, 8, 8)), lambda b: b / 0.0, (4, 8, 8))


def test_gaussian_map_peaks_in_the_centre_and_has_no_zeros():
    weights = sw.gaussian_importance_map((8, 32, 32))
    assert weights.shape == (8, 32, 32) and weights.min() > 0
    assert weights.max() == pytest.approx(1.0)
    centre = weights[3:5, 15:17, 15:17]
    assert np.all(centre == weights.max())
    # sigma = patch / 8 = 4 voxels along x, centred at 15.5
    profile = weights[3, 15, :] / weights[3, 15, 15]
    expected = np.exp(-((19 - 15.5) ** 2 - (15 - 15.5) ** 2) / (2 * 4.0**2))
    assert profile[19] == pytest.approx(expected, rel=1e-5)
    assert np.all(np.diff(profile[16:]) < 0)


def test_gaussian_blending_prefers_tile_centres():
    """Two tiles disagree in their overlap: the blend follows the tile whose centre is nearer."""
    volume = np.zeros((4, 16, 24), dtype=np.float32)

    def by_position(batch):
        out = np.zeros((*batch.shape[:-1], 2), dtype=np.float32)
        for i in range(batch.shape[0]):
            out[i, ..., i % 2] = 1.0
        return out

    blended, n_tiles = sw.predict_probabilities(volume, by_position, (4, 16, 16), overlap=0.5, batch_size=2)
    assert n_tiles == 2
    assert blended[0, 8, 9, 0] > blended[0, 8, 9, 1]  # nearer the first tile's centre
    assert blended[0, 8, 14, 1] > blended[0, 8, 14, 0]


def test_qmritools_layout_and_hard_label_union():
    assert sw.qmritools_tile_starts(200, 96) == [0, 52, 104]
    assert sw.qmritools_tile_starts(50, 96) == [0]
    volume = np.zeros((4, 16, 40), dtype=np.float32)
    volume[..., 10:30] = 1.0

    def classes(batch):
        v = batch[..., 0]
        return np.stack([1 - v, v, 0.5 * v], axis=-1)

    labels, n_tiles = sw.predict_hard_labels(volume, classes, (4, 16, 16))
    assert n_tiles == 3
    np.testing.assert_array_equal(labels, (volume > 0).astype(np.int16))


def test_lowest_label_wins_overlaps_in_the_hard_merge():
    volume = np.zeros((4, 8, 24), dtype=np.float32)
    calls = []

    def tile_dependent(batch):
        out = np.zeros((*batch.shape[:-1], 4), dtype=np.float32)
        out[..., 3 if not calls else 2] = 1.0
        calls.append(1)
        return out

    labels, n_tiles = sw.predict_hard_labels(volume, tile_dependent, (4, 8, 16))
    assert n_tiles == 2
    # tile 1 covers x 0..15 with label 3, tile 2 covers x 8..23 with label 2: overlap -> 2
    assert set(np.unique(labels[..., :8])) == {3}
    assert set(np.unique(labels[..., 8:])) == {2}
