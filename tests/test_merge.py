import numpy as np
import pytest
from scipy import ndimage

from legseg_tf.merge import merge_parts


def reference_merge(parts, shape):
    """Straightforward full-size implementation of QMRITools ``PatchesToData`` (union, largest CC, lowest wins)."""
    labels = sorted({int(v) for crop, _ in parts for v in np.unique(crop) if v})
    structure = ndimage.generate_binary_structure(len(shape), 1)
    masks = []
    for label in labels:
        union = np.zeros(shape, dtype=bool)
        for crop, box in parts:
            union[box] |= crop == label
        comp, n = ndimage.label(union, structure=structure)
        if n > 1:
            sizes = np.bincount(comp.ravel())
            sizes[0] = 0
            union = comp == np.argmax(sizes)
        masks.append(union)
    out = np.zeros(shape, dtype=np.uint16)
    for label, mask in zip(labels, masks):
        out[mask & (out == 0)] = label
    return out


def test_union_of_overlapping_parts_and_lowest_label_wins():
    shape = (4, 10, 20)
    right = np.zeros((4, 10, 12), dtype=np.uint16)   # columns 0..11
    left = np.zeros((4, 10, 12), dtype=np.uint16)    # columns 8..19
    right[:, 2:8, 2:12] = 32      # Right muscle reaching into the overlap (2..11)
    left[:, 2:8, 0:3] = 32        # the same label continued in the other part (8..10)
    left[:, 2:8, 3:10] = 31       # Left muscle overlapping columns 11..17
    out = merge_parts([(right, (slice(0, 4), slice(0, 10), slice(0, 12))),
                       (left, (slice(0, 4), slice(0, 10), slice(8, 20)))], shape)
    assert out.dtype == np.uint16
    assert (out[:, 2:8, 11:18] == 31).all()   # overlap column 11: 31 < 32 wins
    assert (out[:, 2:8, 2:11] == 32).all()    # union of both parts' 32
    assert not out[:, :2].any()


def test_stray_pieces_are_removed_per_label():
    shape = (5, 8, 8)
    crop = np.zeros(shape, dtype=np.uint8)
    crop[0:3, 0:3, 0:3] = 5
    crop[4, 7, 7] = 5
    out = merge_parts([(crop, (slice(0, 5), slice(0, 8), slice(0, 8)))], shape)
    assert out[4, 7, 7] == 0 and (out[0:3, 0:3, 0:3] == 5).all()


def test_matches_full_size_reference_on_random_parts():
    rng = np.random.default_rng(7)
    shape = (6, 12, 16)
    for _ in range(15):
        parts = []
        for _ in range(int(rng.integers(1, 4))):
            start = rng.integers(0, [3, 6, 8])
            stop = start + rng.integers(2, [4, 7, 9])
            box = tuple(slice(int(a), int(b)) for a, b in zip(start, stop))
            crop = rng.choice([0, 0, 3, 4, 7, 8], size=tuple(stop - start)).astype(np.uint16)
            parts.append((crop, box))
        np.testing.assert_array_equal(merge_parts(parts, shape), reference_merge(parts, shape))


def test_empty_and_invalid_parts():
    assert not merge_parts([], (2, 3, 4)).any()
    crop = np.ones((2, 2, 2), dtype=np.uint8)
    with pytest.raises(ValueError):
        merge_parts([(crop, (slice(0, 3), slice(0, 2), slice(0, 2)))], (4, 4, 4))
    with pytest.raises(ValueError):
        merge_parts([(crop, (slice(3, 5), slice(0, 2), slice(0, 2)))], (4, 4, 4))
    with pytest.raises(ValueError):
        merge_parts([(crop.astype(float), (slice(0, 2),) * 3)], (4, 4, 4))


def test_merge_probabilities_pastes_channels_under_final_labels():
    from legseg_tf.merge import merge_probabilities

    shape = (2, 4, 6)
    right = np.zeros((2, 4, 4, 3), dtype=np.float32)   # columns 0..3; channels bg, A, B
    right[..., 1] = 0.6
    left = np.zeros((2, 4, 4, 3), dtype=np.float32)    # columns 2..5
    left[..., 1] = 0.8
    left[..., 2] = 0.1
    out = merge_probabilities(
        [(right, (slice(0, 2), slice(0, 4), slice(0, 4)), [0, 32, 34]),
         (left, (slice(0, 2), slice(0, 4), slice(2, 6)), [0, 31, 33])],
        shape, label_map=[31, 32, 33],
    )
    assert out.shape == shape + (3,) and out.dtype == np.float32
    assert np.allclose(out[..., :2, 1], 0.6) and np.allclose(out[..., 4:, 1], 0)
    assert np.allclose(out[..., 2:, 0], 0.8) and np.allclose(out[..., :2, 0], 0)
    assert np.allclose(out[..., 2:, 2], 0.1)
    with pytest.raises(ValueError):
        merge_probabilities([(right, (slice(0, 2), slice(0, 4), slice(0, 3)), [0, 1, 2])],
                            shape, [1])
