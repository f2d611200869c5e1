"""Training data of the side/position classifier: slice examples, sides, augmentation, run."""
from __future__ import annotations

import json

import numpy as np
import pytest

from legseg_tf.body_position import POSITION_CLASSES, SIDE_CLASSES, slice_image
from legseg_tf.masking import apply_mask, body_mask
from legseg_tf.training.classifier import (
    SIDE_SWAP,
    ClassifierTrainConfig,
    SliceAugment,
    SliceStack,
    accuracy_report,
    augment_slice,
    balanced_order,
    positions_from_ranges,
    stack_examples,
    train_classifier,
)

NO_AUGMENT = SliceAugment(rotate_deg=0.0, scale_range=(1.0, 1.0), p_flip=0.0, p_curve=0.0,
                          p_gamma=0.0, p_noise=0.0, p_lowres=0.0)


def _two_legs(nz=4, seed=0) -> np.ndarray:
    """(z, y, x) in the QMRITools layout: column 0 = patient's right. The right leg (low
    columns) is a small disc, the left leg a large one, so the halves are told apart."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :96]
    volume = np.zeros((nz, 64, 96), np.float32)
    right = (yy - 32) ** 2 + (xx - 24) ** 2 <= 9 ** 2
    left = (yy - 32) ** 2 + (xx - 68) ** 2 <= 17 ** 2
    volume[:, right | left] = 100.0
    volume += rng.normal(0, 1, volume.shape).astype(np.float32) * (volume > 0)
    return volume


def test_positions_from_ranges_and_stack_checks():
    assert positions_from_ranges(4, [(0, 1, "Lower"), (2, 3, "Knee")]) == \
        ("Lower", "Lower", "Knee", "Knee")
    with pytest.raises(ValueError, match="do not cover"):
        positions_from_ranges(4, [(0, 2, "Lower")])
    with pytest.raises(ValueError, match="positions"):
        SliceStack("s", np.zeros((3, 8, 8)), ("Lower",) * 2)
    with pytest.raises(ValueError, match="unknown positions"):
        SliceStack("s", np.zeros((1, 8, 8)), ("Ankle",))
    with pytest.raises(ValueError, match="volume"):
        SliceStack("s", np.zeros((8, 8)), ("Lower",) * 8)


def test_the_right_half_is_the_patients_right_leg():
    """"Right" examples hold exactly the low-column leg (the patient's right in the QMRITools
    layout, decided from the affine upstream); "Left" the other; "Both" the whole slice."""
    volume = _two_legs()
    stack = SliceStack("legs", volume, ("Upper",) * volume.shape[0])
    images, sides, positions = stack_examples(stack, (32, 32), np.random.default_rng(0))
    assert images.shape == (3 * volume.shape[0], 32, 32)
    assert (positions == POSITION_CLASSES.index("Upper")).all()
    masked = apply_mask(volume, body_mask(volume))
    for z in range(volume.shape[0]):
        right, left = masked[z].copy(), masked[z].copy()
        right[:, 46:] = 0      # anywhere in the gap between the discs (columns 34..50)
        left[:, :46] = 0
        expected = {"Both": slice_image(masked[z], (32, 32)),
                    "Right": slice_image(right, (32, 32)),
                    "Left": slice_image(left, (32, 32))}
        got = {SIDE_CLASSES[s]: img for s, img in zip(sides[3 * z:3 * z + 3],
                                                        images[3 * z:3 * z + 3])}
        assert set(got) == {"Both", "Right", "Left"}
        for name in expected:
            np.testing.assert_allclose(got[name], expected[name], atol=1e-6, err_msg=name)
    # one-leg stacks give only "Both" examples
    single = SliceStack("one", volume, ("Upper",) * volume.shape[0], two_legs=False)
    _, single_sides, _ = stack_examples(single, (32, 32), np.random.default_rng(0))
    assert set(single_sides.tolist()) == {SIDE_CLASSES.index("Both")}


def test_a_mirror_swaps_the_side_name():
    rng = np.random.default_rng(0)
    part = np.zeros((16, 16), np.float32)
    part[4:8, 2:5] = 1.0
    flip = SliceAugment(rotate_deg=0.0, scale_range=(1.0, 1.0), p_flip=1.0, p_curve=0.0,
                        p_gamma=0.0, p_noise=0.0, p_lowres=0.0)
    for side in ("Left", "Right", "Both"):
        image, name = augment_slice(part, side, rng, flip)
        assert name == SIDE_SWAP[side]
        np.testing.assert_allclose(image, part[:, ::-1], atol=1e-6)
        image, name = augment_slice(part, side, rng, NO_AUGMENT)
        assert name == side
        np.testing.assert_allclose(image, part, atol=1e-6)
    # augmented copies of a stack keep side and image consistent: a flipped "Right" half is
    # named "Left"
    volume = _two_legs(nz=2)
    stack = SliceStack("legs", volume, ("Upper", "Upper"))
    images, sides, _ = stack_examples(stack, (32, 32), np.random.default_rng(1), copies=2,
                                      augment=flip)
    plain = images[0::2]
    mirrored = images[1::2]
    assert [SIDE_SWAP[SIDE_CLASSES[s]] for s in sides[0::2]] == \
        [SIDE_CLASSES[s] for s in sides[1::2]]
    assert not np.allclose(plain, mirrored)


def test_coarser_resolution_blurs_but_keeps_the_grid():
    from legseg_tf.training.classifier import coarser_resolution

    image = np.zeros((40, 60), np.float32)
    image[::2] = 1.0                                    # finest stripes
    coarse = coarser_resolution(image, 3.0)
    assert coarse.shape == image.shape
    assert coarse[5:35, 5:55].std() < 0.5 * image[5:35, 5:55].std()
    assert coarse.mean() == pytest.approx(image.mean(), abs=0.1)
    assert coarser_resolution(image, 1.0) is image


def test_balanced_order_and_accuracy_report():
    positions = np.array([0, 0, 0, 0, 2])
    order = balanced_order(positions, np.random.default_rng(0))
    assert sorted(np.bincount(positions[order]).tolist()) == [0, 4, 4]
    report = accuracy_report(np.array([0, 1, 1]), np.array([2, 2, 0]),
                             np.array([0, 1, 0]), np.array([2, 2, 2]))
    assert report["n"] == 3
    assert report["side_accuracy"] == pytest.approx(2 / 3)
    assert report["position_accuracy"] == pytest.approx(2 / 3)
    assert report["side_per_class"] == {"Left": [0.5, 2], "Right": [1.0, 1]}
    assert report["position_per_class"] == {"Upper": [pytest.approx(2 / 3), 3]}


@pytest.mark.slow
def test_train_classifier_writes_a_loadable_model_and_report(tmp_path):
    pytest.importorskip("tensorflow")
    from legseg_tf.networks.classifier import build_classifier
    from legseg_tf.networks.config import config_from_json

    stacks = [SliceStack("a", _two_legs(nz=3, seed=1), ("Lower", "Lower", "Upper")),
              SliceStack("b", _two_legs(nz=2, seed=2), ("Upper", "Upper"))]
    config = ClassifierTrainConfig(image_size=(64, 64), copies=1, epochs=1, batch_size=8)
    report = train_classifier(config, stacks[:1], stacks[1:], tmp_path, progress=False)
    assert report["n_train_examples"] == 9
    assert report["train_stacks"] == ["a"] and report["validation_stacks"] == ["b"]
    assert report["validation"]["b"]["n"] == 6
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["n_balanced_per_epoch"] == report["n_balanced_per_epoch"] == 12
    net = config_from_json((tmp_path / "classifier.json").read_text())
    model = build_classifier(net)
    model.load_weights(tmp_path / "classifier.weights.h5")
    assert model.input_shape[1:3] == (64, 64)
