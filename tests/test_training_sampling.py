"""Patch grid and batches: shapes, foreground-aware choice, same seed -> same batch."""
from __future__ import annotations

import numpy as np
import pytest

from legseg_tf.training.augmentation import HEAVY_AUGMENTATION, NO_AUGMENTATION
from legseg_tf.training.data import TrainingCase
from legseg_tf.training.sampling import (
    PatchConfig,
    crop_centered,
    grid_starts,
    make_batch,
    patch_stream,
)


def minmax(patch):
    top = patch.max()
    return patch / top if top > 0 else patch


def _case():
    rng = np.random.default_rng(0)
    image = np.zeros((10, 40, 40), np.float32)
    labels = np.zeros((10, 40, 40), np.int32)
    image[2:8, 5:35, 5:35] = 10 + rng.random((6, 30, 30)) * 90
    labels[3:7, 10:20, 10:20] = 1
    labels[3:7, 22:30, 22:30] = 2
    return TrainingCase("c", image, labels, (6.0, 1.5, 1.5))


def test_grid_starts_cover_axis_evenly():
    starts = grid_starts(100, 32, 2)
    assert starts[0] == 0 and starts[-1] == 68 and len(starts) == 6
    assert list(grid_starts(20, 32)) == [0]


def test_crop_centered_pads_with_zero():
    array = np.arange(27).reshape(3, 3, 3) + 1
    out = crop_centered(array, (0, 0, 0), (3, 3, 3))
    assert out[0, 0, 0] == 0 and out[1, 1, 1] == array[0, 0, 0]


def test_same_seed_same_batch_and_shapes():
    config = PatchConfig(patch_size=(4, 16, 16), foreground_fraction=1.0)
    batches = []
    for _ in range(2):
        stream = patch_stream([_case()], config, HEAVY_AUGMENTATION, np.random.default_rng(5),
                              minmax)
        batches.append(make_batch(stream, 3, 3))
    (x1, y1), (x2, y2) = batches
    assert x1.shape == (3, 4, 16, 16, 1) and y1.shape == (3, 4, 16, 16, 3)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(y1.sum(-1), 1.0)
    assert 0 <= x1.min() and x1.max() <= 1


def test_foreground_patches_contain_labels():
    config = PatchConfig(patch_size=(4, 8, 8), foreground_fraction=1.0, context=(1, 1, 1))
    stream = patch_stream([_case()], config, NO_AUGMENTATION,
                          np.random.default_rng(1), minmax)
    for _ in range(10):
        _, labels = next(stream)
        assert labels.any()


def test_make_batch_rejects_labels_beyond_classes():
    patch = (np.zeros((2, 4, 4), np.float32), np.full((2, 4, 4), 2, np.int32))
    with pytest.raises(ValueError):
        make_batch(iter([patch, patch]), 2, 2)
    images, onehot = make_batch(iter([patch, patch]), 2, 3)
    assert images.shape == (2, 2, 4, 4, 1) and onehot[..., 2].all()


def test_class_balanced_centres_reach_small_classes():
    from legseg_tf.training.sampling import choose_centre, foreground_index

    labels = np.zeros((8, 64, 64), np.int32)
    labels[:, 4:60, 4:60] = 1          # a large muscle: 25,088 voxels
    labels[2:4, 30:32, 30:32] = 2      # a small one inside it: 8 voxels
    case = TrainingCase("c", np.ones(labels.shape, np.float32), labels, (1.0, 1.0, 1.0))

    def share_of_small(config):
        rng = np.random.default_rng(0)
        index = foreground_index(case, config)
        centres = [choose_centre(case, config, rng, index) for _ in range(400)]
        return np.mean([labels[c] == 2 for c in centres])

    plain = PatchConfig(patch_size=(4, 16, 16), foreground_fraction=1.0)
    balanced = PatchConfig(patch_size=(4, 16, 16), foreground_fraction=1.0, class_balanced=True)
    assert share_of_small(plain) < 0.02
    assert 0.4 < share_of_small(balanced) < 0.6
    assert [a.size for a in foreground_index(case, balanced)] == [25088 - 8, 8]
