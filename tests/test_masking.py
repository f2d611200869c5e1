import numpy as np
import pytest

from legseg_tf.masking import (
    MaskConfig,
    apply_mask,
    body_mask,
    bounding_box,
    clean_mask,
    fill_holes,
    normalize_data,
    otsu_threshold,
    smooth_mask,
)


def cylinder(shape, centre_yx, radius):
    _, y, x = np.indices(shape)
    return (y - centre_yx[0]) ** 2 + (x - centre_yx[1]) ** 2 <= radius**2


def two_leg_phantom(rng, shape=(12, 40, 60)):
    """Two bright cylinders (legs) with a dark 'bone' core in one, plus background noise."""
    volume = rng.normal(2.0, 0.5, size=shape).clip(0).astype(np.float32)
    right = cylinder(shape, (20, 15), 10)
    left = cylinder(shape, (20, 44), 8)
    volume[right | left] = rng.normal(100.0, 5.0, size=int((right | left).sum()))
    return volume, right, left


def test_otsu_threshold_separates_two_modes():
    rng = np.random.default_rng(0)
    low, high = rng.normal(10, 1, 1000), rng.normal(50, 2, 500)
    t = otsu_threshold(np.concatenate([low, high]))
    assert low.max() <= t < high.min()
    assert otsu_threshold(np.full(5, 3.0)) == 3.0
    with pytest.raises(ValueError):
        otsu_threshold(np.array([]))


def test_normalize_data_scales_foreground_median_to_100():
    rng = np.random.default_rng(1)
    volume, right, left = two_leg_phantom(rng)
    volume = volume * 7.0 + 30.0  # arbitrary scale and offset
    out = normalize_data(volume)
    assert out.dtype == np.float32
    assert out.min() == pytest.approx(0.0)
    assert np.median(out[right | left]) == pytest.approx(100.0, rel=0.02)
    assert not normalize_data(np.full((2, 2, 2), 5.0)).any()


def test_body_mask_covers_both_legs_and_drops_noise():
    rng = np.random.default_rng(2)
    volume, right, left = two_leg_phantom(rng)
    volume[5, 2, 2] = 100.0  # isolated bright speck: a third, tiny component
    mask = body_mask(volume)
    assert mask.dtype == bool
    assert mask[right].mean() > 0.97 and mask[left].mean() > 0.97
    assert not mask[5, 2, 2]
    outside = ~(cylinder(volume.shape, (20, 15), 12) | cylinder(volume.shape, (20, 44), 10))
    assert not mask[outside].any()


def test_only_two_largest_components_kept():
    raw = np.zeros((10, 30, 40), dtype=bool)
    raw[2:8, 3:12, 3:12] = True     # big
    raw[2:8, 3:12, 20:27] = True    # medium
    raw[4:6, 20:23, 33:36] = True   # small: dropped
    mask = clean_mask(raw, MaskConfig(smoothing_iterations=0))
    assert mask[5, 7, 7] and mask[5, 7, 23] and not mask[5, 21, 34]


def test_enclosed_holes_are_filled_but_open_cavities_are_not():
    mask = np.zeros((9, 9, 9), dtype=bool)
    mask[1:8, 1:8, 1:8] = True
    mask[3:6, 3:6, 3:6] = False              # enclosed cavity
    filled = fill_holes(mask)
    assert filled[4, 4, 4]
    tube = np.zeros((9, 9, 9), dtype=bool)
    tube[:, 1:8, 1:8] = True
    tube[:, 3:6, 3:6] = False                # open through the first and last slice
    assert not fill_holes(tube)[4, 4, 4]


@pytest.mark.parametrize("shape,fraction,holes", [
    ((12, 40, 44), 0.35, True), ((6, 30, 20), 0.55, False), ((1, 25, 25), 0.3, False),
    ((9, 9, 9), 0.0, False)])
def test_fill_holes_equals_scipys_propagation_from_a_zero_shell(shape, fraction, holes):
    """Random masks full of cavities, diagonal leaks and pockets open to the border: the
    labelling gives exactly SciPy's hole filling (face structure) of the zero-padded mask
    (one slice has none: every pocket touches the shell above or below)."""
    from scipy import ndimage

    from legseg_tf.postprocessing import face_structure

    rng = np.random.default_rng(int(fraction * 100) + shape[0])
    mask = ndimage.binary_opening(rng.random(shape) > fraction, np.ones((1, 2, 2), bool))
    expected = ndimage.binary_fill_holes(np.pad(mask, 1), structure=face_structure(3))
    filled = fill_holes(mask)
    assert filled.dtype == bool and filled.shape == mask.shape
    np.testing.assert_array_equal(filled, expected[1:-1, 1:-1, 1:-1])
    assert (filled & ~mask).any() == holes


def test_smooth_mask_removes_single_voxel_spike_and_keeps_block():
    mask = np.zeros((20, 20, 20), dtype=bool)
    mask[5:15, 5:15, 5:15] = True
    mask[10, 10, 15] = True  # one-voxel bump on a face
    out = smooth_mask(np.pad(mask, 5))[5:-5, 5:-5, 5:-5]
    assert out[6:14, 6:14, 6:14].all()
    assert not out[10, 10, 16]
    assert not out[0].any()


def test_body_mask_of_empty_volume_is_empty_and_rejects_2d():
    assert not body_mask(np.zeros((4, 5, 6))).any()
    with pytest.raises(ValueError):
        body_mask(np.zeros((5, 6)))


def test_bounding_box_and_apply_mask():
    mask = np.zeros((5, 6, 7), dtype=bool)
    mask[1:3, 2:4, 3:6] = True
    assert bounding_box(mask) == (slice(1, 3), slice(2, 4), slice(3, 6))
    assert bounding_box(mask, 2) == (slice(0, 5), slice(0, 6), slice(1, 7))
    assert bounding_box(np.zeros((2, 2))) is None
    volume = np.arange(mask.size, dtype=np.float32).reshape(mask.shape) + 1
    out = apply_mask(volume, mask)
    assert (out[mask] == volume[mask]).all() and not out[~mask].any()
    with pytest.raises(ValueError):
        apply_mask(volume, mask[:, :, :3])


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 1), (5, 7, 9), (12, 1, 6), (6, 8), (9,)])
@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_box_morphology_equals_scipy_with_the_full_box(shape, fraction):
    """The line-by-line box dilation and erosion give SciPy's result with the 3**ndim box,
    the array border background, at the array edges too."""
    from scipy import ndimage

    from legseg_tf.masking import box_dilate, box_erode

    mask = np.random.default_rng(len(shape) * 10 + int(fraction * 10)).random(shape) < fraction
    box = np.ones((3,) * mask.ndim, dtype=bool)
    assert np.array_equal(box_dilate(mask), ndimage.binary_dilation(mask, box))
    assert np.array_equal(box_erode(mask), ndimage.binary_erosion(mask, box, border_value=0))


def test_otsu_of_float32_equals_otsu_of_its_float64_copy():
    values = (np.random.default_rng(3).gamma(2.0, 50.0, size=200_000)).astype(np.float32)
    assert otsu_threshold(values) == otsu_threshold(values.astype(np.float64))


def test_normalize_data_needs_few_full_size_copies():
    """Normalising a float32 volume holds at most 3.5 volume-sized float32 arrays at once
    (tracemalloc peak; a float64 copy alone would be 2, the earlier code held 6.7)."""
    import tracemalloc

    volume = (np.random.default_rng(4).random((60, 256, 256), dtype=np.float32) * 1000)
    tracemalloc.start()
    try:
        normalize_data(volume)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= 3.5 * volume.nbytes, peak / volume.nbytes
