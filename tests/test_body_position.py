import itertools

import numpy as np
import pytest

from legseg_tf.body_position import (
    POSITION_LEVELS,
    ClassifierConfig,
    classifier_images,
    classify_body,
    fit_body_positions,
    majority_side,
    region_ranges,
    resize_image,
    slice_image,
    staircase_fit,
)


def brute_force_cost(values, min_gap):
    """Minimum L1 cost over every admissible staircase (enumerates the step positions)."""
    c = np.asarray(values)
    n, lo, hi = c.size, c.min(), c.max()
    steps = hi - lo
    best = None
    for landings in itertools.combinations(range(1, n), steps):
        if any(b - a < min_gap for a, b in zip(landings, landings[1:])):
            continue
        x = np.full(n, lo)
        for t in landings:
            x[t:] += 1
        cost = int(np.abs(x - c).sum())
        best = cost if best is None else min(best, cost)
    return best


def is_admissible(x, values, min_gap):
    d = np.diff(x)
    landings = np.flatnonzero(d) + 1
    return (
        x[0] == min(values) and x[-1] == max(values)
        and set(np.unique(d)) <= {0, 1}
        and all(np.diff(landings) >= min_gap)
    )


@pytest.mark.parametrize("seed", range(40))
def test_staircase_fit_equals_brute_force_optimum(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(6, 16))
    min_gap = int(rng.integers(1, 5))
    values = rng.integers(0, 4, size=n)
    steps = values.max() - values.min()
    if 1 + (steps - 1) * min_gap > n - 1 and steps > 0:
        with pytest.raises(ValueError):
            staircase_fit(values, min_gap)
        return
    fitted = staircase_fit(values, min_gap)
    assert is_admissible(fitted, values, min_gap)
    assert int(np.abs(fitted - values).sum()) == brute_force_cost(values, min_gap)


def test_staircase_fit_default_gap_against_brute_force():
    rng = np.random.default_rng(99)
    for _ in range(10):
        values = np.sort(rng.integers(1, 4, size=18)) + (rng.random(18) < 0.2)
        fitted = staircase_fit(values, 6)
        assert is_admissible(fitted, values, 6)
        assert int(np.abs(fitted - values).sum()) == brute_force_cost(values, 6)


def test_staircase_fit_constant_and_invalid():
    np.testing.assert_array_equal(staircase_fit([3, 3, 3]), [3, 3, 3])
    with pytest.raises(ValueError):
        staircase_fit([])
    with pytest.raises(ValueError):
        staircase_fit([1, 2], min_gap=0)


def test_fit_body_positions_recovers_noisy_staircase():
    truth = np.array([1] * 12 + [2] * 8 + [3] * 20)
    noisy = truth.copy()
    noisy[[3, 15, 30]] = [3, 1, 1]  # isolated misclassifications
    fitted = fit_body_positions(noisy)
    np.testing.assert_array_equal(fitted, truth)


def test_fit_body_positions_relaxes_gap_for_short_volumes():
    levels = [1, 2, 3, 4, 5, 6, 7, 8]  # 7 changes in 8 slices
    fitted = fit_body_positions(levels)
    assert fitted.shape == (8,)
    assert np.all(np.diff(fitted) >= 0)


def test_region_ranges_with_offsets_knee_shared_and_shifted():
    fitted = np.array([1] * 10 + [2] * 6 + [3] * 30 + [4] * 14)
    slices = np.arange(60) + 7  # classified slices start at volume slice 7
    ranges = region_ranges(fitted, slices, ("LowerLegs", "UpperLegs", "Hip"))
    assert ranges["LowerLegs"] == (7, 7 + 15)             # lower + knee
    assert ranges["UpperLegs"] == (7 + 10, 7 + 59)        # knee + upper + hip
    assert ranges["Hip"] == (7 + 46 - 20, 7 + 59)         # -20 / +10, clipped
    assert "Torso" not in region_ranges(fitted, slices, ("Torso",))
    with pytest.raises(ValueError):
        region_ranges(fitted, slices, ("Arm",))


def test_region_with_single_slice_is_dropped():
    fitted = np.array([1] * 10 + [2] + [3] * 10)
    ranges = region_ranges(fitted, np.arange(21), ("LowerLegs", "Hip"))
    assert ranges == {"LowerLegs": (0, 10)}


def test_majority_side():
    assert majority_side(["Left", "Left", "Both"]) == "Left"
    assert majority_side(["Left", "Both"]) == "Both"
    assert majority_side(["Right", "Left"]) == "Left"
    with pytest.raises(ValueError):
        majority_side([])


def test_resize_image_shape_and_constant():
    out = resize_image(np.full((7, 13), 0.5), (128, 64))
    assert out.shape == (128, 64) and np.allclose(out, 0.5)
    ramp = resize_image(np.tile(np.arange(10.0), (4, 1)), (4, 20))
    assert np.all(np.diff(ramp[0]) >= 0)


def test_slice_image_crops_rescales_and_blanks_empty_slices():
    image = np.zeros((60, 80), dtype=np.float32)
    image[20:30, 40:50] = np.linspace(10, 20, 100).reshape(10, 10)
    out = slice_image(image, (32, 32), padding=5)
    assert out.shape == (32, 32)
    assert out.min() == 0.0 and out.max() == pytest.approx(1.0, abs=0.05)
    # tissue (10x10 + 5 px padding each side) fills the whole image: the centre is bright
    assert out[16, 16] > 0.3
    assert not slice_image(np.full((5, 5), 0.1), (8, 8)).any()  # sum 2.5 < 10


def test_classifier_images_crop_and_slice_indices():
    volume = np.zeros((30, 40, 40), dtype=np.float32)
    volume[12:20, 10:20, 5:30] = 50.0
    inputs = classifier_images(volume, ClassifierConfig(image_size=(16, 16)))
    np.testing.assert_array_equal(inputs.slices, np.arange(7, 25))
    assert inputs.images.shape == (18, 16, 16)
    assert not inputs.images[0].any() and inputs.images[6].any()
    empty = classifier_images(np.zeros((3, 4, 4)))
    assert empty.images.shape[0] == 0


def test_classify_body_maps_ranges_to_uncropped_volume():
    volume = np.zeros((60, 20, 20), dtype=np.float32)
    volume[10:50] = 1.0  # tissue in slices 10..49; classified slices 5..54

    def classifier(images):
        n = images.shape[0]
        positions = ["Lower"] * 20 + ["Knee"] * 8 + ["Upper"] * (n - 28)
        return ["Both"] * (n - 2) + ["Left"] * 2, positions

    result = classify_body(volume, classifier, ("LowerLegs", "UpperLegs"),
                           ClassifierConfig(image_size=(8, 8)))
    assert result.side == "Both"
    assert result.slices[0] == 5
    assert result.ranges["LowerLegs"] == (5, 5 + 27)
    assert result.ranges["UpperLegs"] == (5 + 20, 54)
    report = result.to_report()
    assert report["fitted_positions"][0] == "Lower" and report["fitted_positions"][-1] == "Upper"
    assert set(POSITION_LEVELS) >= set(report["raw_positions"])


def test_classify_body_rejects_bad_classifier_output():
    volume = np.ones((10, 8, 8), dtype=np.float32) * 20
    with pytest.raises(ValueError):
        classify_body(volume, lambda im: (["Both"], ["Lower"]), ("LowerLegs",))
    with pytest.raises(ValueError):
        classify_body(
            volume, lambda im: (["Both"] * len(im), ["Arm"] * len(im)), ("LowerLegs",)
        )
    with pytest.raises(ValueError):
        classify_body(np.zeros((4, 4, 4)), lambda im: ([], []), ("LowerLegs",))


def test_single_outlier_slice_does_not_create_a_region():
    # a thigh stack whose classifier called one slice "Knee" and the top three "Hip"
    levels = [3] * 27 + [2] + [4] * 3
    slices = np.arange(31)
    fitted = fit_body_positions(levels)
    assert fitted.min() >= 3
    assert "LowerLegs" not in region_ranges(fitted, slices, ("LowerLegs", "UpperLegs"))
    # with the padding levels taken from the raw extremes the outlier forces a knee segment
    raw_extremes = fit_body_positions(levels, pad_from_filtered=False)
    assert region_ranges(raw_extremes, slices, ("LowerLegs",))["LowerLegs"][0] == 0
