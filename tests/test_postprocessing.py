import numpy as np
import pytest
from scipy import ndimage

from legseg_tf.postprocessing import (
    largest_component,
    largest_component_per_label,
    largest_components,
    clear_other_side,
    largest_own_side_component_per_label,
)


def test_largest_component_per_label_keeps_biggest_piece_of_each_label():
    labels = np.zeros((6, 8, 8), dtype=np.uint16)
    labels[1:4, 1:4, 1:4] = 3          # 27 voxels
    labels[5, 6, 6] = 3                # stray voxel of label 3
    labels[0, 6:8, 0:2] = 7            # 4 voxels
    labels[3:6, 6:8, 3:5] = 7          # 12 voxels -> kept
    out = largest_component_per_label(labels)
    assert out.dtype == labels.dtype
    assert out[5, 6, 6] == 0
    assert (out[1:4, 1:4, 1:4] == 3).all()
    assert (out[0, 6:8, 0:2] == 0).all()
    assert (out[3:6, 6:8, 3:5] == 7).all()
    assert np.count_nonzero(out) == 27 + 12


def test_diagonal_neighbours_are_separate_components():
    # two voxels touching only at an edge/corner are NOT 6-connected
    labels = np.zeros((3, 3, 3), dtype=np.int32)
    labels[0, 0, 0] = 1
    labels[1, 1, 0] = 1  # edge neighbour
    labels[1, 1, 1] = 1  # face neighbour of (1,1,0)
    out = largest_component_per_label(labels)
    assert out[0, 0, 0] == 0
    assert out[1, 1, 0] == 1 and out[1, 1, 1] == 1


def test_matches_brute_force_on_random_volumes():
    rng = np.random.default_rng(3)
    structure = ndimage.generate_binary_structure(3, 1)
    for _ in range(20):
        labels = rng.integers(0, 4, size=(5, 6, 7)).astype(np.uint8)
        out = largest_component_per_label(labels)
        expected = np.zeros_like(labels)
        for value in range(1, 4):
            comp, n = ndimage.label(labels == value, structure=structure)
            if n == 0:
                continue
            sizes = np.bincount(comp.ravel())
            sizes[0] = 0
            expected[comp == np.argmax(sizes)] = value
        np.testing.assert_array_equal(out, expected)


def test_does_not_modify_input_and_handles_empty():
    labels = np.zeros((2, 2, 2), dtype=np.uint16)
    out = largest_component_per_label(labels)
    assert out is not labels and not out.any()


def test_rejects_float_and_negative():
    with pytest.raises(ValueError):
        largest_component_per_label(np.zeros((2, 2, 2), dtype=np.float32))
    with pytest.raises(ValueError):
        largest_component_per_label(-np.ones((2, 2, 2), dtype=np.int16))


def test_largest_component_and_largest_components():
    mask = np.zeros((1, 10, 10), dtype=bool)
    mask[0, 0:2, 0:2] = True   # 4
    mask[0, 5:8, 5:8] = True   # 9
    mask[0, 0, 8:10] = True    # 2
    assert largest_component(mask).sum() == 9
    two = largest_components(mask, 2)
    assert two.sum() == 13 and not two[0, 0, 9]
    with pytest.raises(ValueError):
        largest_components(mask, 0)


def test_largest_own_side_component_prefers_own_side_piece():
    labels = np.zeros((2, 10, 20), dtype=np.uint8)
    labels[:, 2:8, 1:5] = 4      # own leg's piece: 48 voxels, columns 1-4
    labels[:, 0:10, 12:18] = 4   # other leg's piece in the overlap: 120 voxels
    labels[:, 0:3, 14:16] = 0
    labels[:, 0:3, 14:16] = 6    # a label seen only on the other side
    own = np.arange(20) < 10
    out = largest_own_side_component_per_label(labels, own)
    assert (out[:, 2:8, 1:5] == 4).all()
    assert not (out[:, :, 10:] == 4).any()
    assert not (out == 6).any()
    # plain largest-component selection would have kept the other leg's piece
    assert (largest_component_per_label(labels)[:, 5, 12:18] == 4).all()


def test_largest_own_side_component_straddling_piece_and_validation():
    labels = np.zeros((1, 4, 10), dtype=np.int32)
    labels[0, 1:3, 3:9] = 2      # 6 columns, 3 on each side of the cut at 6 -> 50 % own
    own = np.arange(10) < 6
    np.testing.assert_array_equal(largest_own_side_component_per_label(labels, own), labels)
    assert not largest_own_side_component_per_label(labels, own, 0.6).any()
    with pytest.raises(ValueError):
        largest_own_side_component_per_label(labels, own[:5])
    with pytest.raises(ValueError):
        largest_own_side_component_per_label(labels.astype(float), own)


def test_sideless_labels_keep_their_largest_component_anywhere():
    labels = np.zeros((1, 6, 10), dtype=np.int32)
    labels[0, 1:5, 5:10] = 14     # e.g. the sacrum, mostly beyond the cut
    own = np.arange(10) < 6
    assert not largest_own_side_component_per_label(labels, own).any()
    kept = largest_own_side_component_per_label(labels, own, sideless={14})
    np.testing.assert_array_equal(kept, labels)


def test_clear_other_side_keeps_sided_labels_on_the_own_side_only():
    labels = np.zeros((1, 4, 10), dtype=np.int32)
    labels[0, 1:3, 3:9] = 2      # a straddling muscle: kept by the component rule ...
    labels[0, 0, 7:10] = 14      # a midline structure beyond the cut
    own = np.arange(10) < 6
    out = clear_other_side(labels, own, sideless={14})
    assert (out[0, 1:3, 3:6] == 2).all()
    assert not (out[:, :, 6:] == 2).any()   # ... but never past the cut
    assert (out[0, 0, 7:10] == 14).all()
    assert not clear_other_side(labels, own)[:, :, 6:].any()
    np.testing.assert_array_equal(labels[0, 1, 3:9], 2)  # input untouched
    with pytest.raises(ValueError):
        clear_other_side(labels, own[:5])


def _own_side_brute_force(labels, own_columns, min_own_fraction=0.5, sideless=()):
    """The own-side rule on the whole volume, every component counted voxel by voxel."""
    structure = ndimage.generate_binary_structure(3, 1)
    out = np.zeros_like(labels)
    own = np.broadcast_to(own_columns[None, None, :], labels.shape)
    for value in np.unique(labels[labels > 0]):
        comp, n = ndimage.label(labels == value, structure=structure)
        best, best_size = None, -1
        for k in range(1, n + 1):
            piece = comp == k
            size = int(piece.sum())
            eligible = value in sideless or (piece & own).sum() >= min_own_fraction * size
            if eligible and size > best_size:
                best, best_size = piece, size
        if best is not None:
            out[best] = value
    return out


@pytest.mark.parametrize("own_kind", ["prefix", "suffix", "scattered", "none", "all"])
def test_own_side_components_match_brute_force(own_kind):
    """One run of own columns (a cut) or scattered ones: the same as counting every
    component's own-side voxels one by one."""
    rng = np.random.default_rng(11)
    nx = 9
    own_columns = {"prefix": np.arange(nx) < 4, "suffix": np.arange(nx) >= 6,
                   "scattered": np.isin(np.arange(nx), [0, 3, 4, 8]),
                   "none": np.zeros(nx, bool), "all": np.ones(nx, bool)}[own_kind]
    for _ in range(15):
        labels = rng.integers(0, 4, size=(4, 6, nx)).astype(np.int16)
        expected = _own_side_brute_force(labels, own_columns, sideless=(2,))
        out = largest_own_side_component_per_label(labels, own_columns, sideless={2})
        np.testing.assert_array_equal(out, expected)
