"""Augmentation: determinism per seed, flip declarations, label safety."""
from __future__ import annotations

import numpy as np
import pytest

from legseg_tf.training.augmentation import (
    HEAVY_AUGMENTATION,
    NO_AUGMENTATION,
    AugmentConfig,
    apply_affine,
    augment,
    flip_left_right,
    rician_noise,
    salt_and_pepper,
)


def _volume():
    rng = np.random.default_rng(1)
    image = np.zeros((8, 32, 40), np.float32)
    labels = np.zeros((8, 32, 40), np.int32)
    image[1:7, 6:26, 4:20] = 50 + rng.random((6, 20, 16)) * 50
    labels[2:6, 8:20, 5:12] = 1
    labels[2:6, 8:20, 12:18] = 2
    return image, labels


def test_same_seed_same_output_different_seed_differs():
    image, labels = _volume()
    config = AugmentConfig(p_flip=0.5, p_geometric=1.0, p_noise=1.0, p_curve=1.0, p_bias=1.0)
    a = augment(image, labels, (6, 1.5, 1.5), np.random.default_rng(7), config, sideless=True)
    b = augment(image, labels, (6, 1.5, 1.5), np.random.default_rng(7), config, sideless=True)
    c = augment(image, labels, (6, 1.5, 1.5), np.random.default_rng(8), config, sideless=True)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_flip_needs_an_explicit_declaration():
    image, labels = _volume()
    with pytest.raises(ValueError):
        flip_left_right(image, labels)
    with pytest.raises(ValueError):
        flip_left_right(image, labels, sideless=True, side_swap={1: 2, 2: 1})
    with pytest.raises(ValueError):
        augment(image, labels, (6, 1.5, 1.5), np.random.default_rng(0), AugmentConfig())


def test_flip_with_side_swap_swaps_labels():
    image, labels = _volume()
    flipped_image, flipped = flip_left_right(image, labels, side_swap={1: 2, 2: 1})
    np.testing.assert_array_equal(flipped_image, image[..., ::-1])
    # label 1 sat at low x; after the mirror the region at high x carries the swapped label 2
    np.testing.assert_array_equal(flipped == 2, (labels == 1)[..., ::-1])
    with pytest.raises(ValueError):
        flip_left_right(image, labels, side_swap={1: 2})


def test_sideless_flip_mirrors_labels_unchanged():
    image, labels = _volume()
    _, flipped = flip_left_right(image, labels, sideless=True)
    np.testing.assert_array_equal(flipped, labels[..., ::-1])


def test_identity_affine_is_identity():
    image, labels = _volume()
    out_image, out_labels = apply_affine(image, labels, (6, 1.5, 1.5), np.eye(3), np.zeros(3))
    np.testing.assert_allclose(out_image, image, atol=1e-4)
    np.testing.assert_array_equal(out_labels, labels)


def test_heavy_augmentation_keeps_label_set_and_shape():
    image, labels = _volume()
    rng = np.random.default_rng(3)
    for _ in range(5):
        out_image, out_labels = augment(image, labels, (6, 1.5, 1.5), rng, HEAVY_AUGMENTATION,
                                        sideless=True)
        assert out_image.shape == image.shape and out_image.dtype == np.float32
        assert set(np.unique(out_labels)) <= {0, 1, 2}
        assert np.isfinite(out_image).all() and out_image.min() >= 0


def test_no_augmentation_returns_input():
    image, labels = _volume()
    out_image, out_labels = augment(image, labels, (6, 1.5, 1.5), np.random.default_rng(0),
                                    NO_AUGMENTATION)
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_labels, labels)


def test_rician_noise_leaves_background_zero_and_salt_pepper_fraction():
    image, _ = _volume()
    noisy = rician_noise(image, np.random.default_rng(0), (5, 5))
    assert (noisy[image == 0] == 0).all()
    assert not np.array_equal(noisy[image > 0], image[image > 0])
    salted = salt_and_pepper(image, np.random.default_rng(0), (0.01, 0.01))
    changed = np.count_nonzero(salted != image)
    assert abs(changed - round(0.01 * np.count_nonzero(image))) <= 1
