"""Training data of the side/position classifier: slice examples, sides, augmentation, run."""
from __future__ import annotations

import json

import keras
import nibabel as nib
import numpy as np
import pytest

from legseg_tf.body_position import POSITION_CLASSES, SIDE_CLASSES, slice_image
from legseg_tf.masking import apply_mask, body_mask
from legseg_tf.networks.classifier import build_classifier
from legseg_tf.networks.config import ClassifierConfig, config_from_json
from legseg_tf.training.classifier import (
    SIDE_SWAP,
    ClassifierTrainConfig,
    SliceAugment,
    SliceStack,
    accuracy_report,
    augment_slice,
    balanced_order,
    coarser_resolution,
    positions_from_ranges,
    stack_examples,
    train_classifier,
)
from legseg_tf.training.data import load_volume
from tests.helpers import save_as

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


def world_legs(shape=(80, 48, 3)):
    """Canonical RAS (x, y, z) phantom and affine, world x = 2 i - 79 (x = 0 between the legs).

    The patient's right leg (world x > 0) is a disc, the left leg (world x < 0) a square of
    the same width, so a classifier image shows which leg it holds.
    """
    rng = np.random.default_rng(4)
    x, y, _ = np.indices(shape)
    volume = np.zeros(shape, np.float32)
    volume[(x - 60) ** 2 + (y - 24) ** 2 <= 10 ** 2] = 100.0          # right: disc
    volume[(abs(x - 18) <= 10) & (abs(y - 24) <= 10)] = 100.0          # left: square
    volume += rng.normal(0, 1, shape).astype(np.float32) * (volume > 0)
    affine = np.diag([2.0, 2.0, 5.0, 1.0])
    affine[:3, 3] = (-79.0, -47.0, -5.0)
    return volume, affine


def corner_brightness(image: np.ndarray) -> float:
    """Mean of the four corner patches of the tissue in a classifier image (the crop keeps 5
    pixels of padding around the tissue): about 1 for a square, 0 for a disc."""
    rows, cols = image.shape
    r, c = int(rows * 7 / 31), int(cols * 7 / 31)     # 2 pixels inside the tissue box corner
    patches = [image[r:r + 2, c:c + 2], image[r:r + 2, -c - 2:-c],
               image[-r - 2:-r, c:c + 2], image[-r - 2:-r, -c - 2:-c]]
    return float(np.mean(patches))


@pytest.mark.parametrize("axcodes", [("R", "A", "S"), ("L", "A", "S"), ("L", "P", "S"),
                                     ("P", "R", "I")])
def test_halves_are_named_from_the_affine_in_every_storage_orientation(tmp_path, axcodes):
    """Stored in any orientation, the half holding the disc (world x > 0, the patient's right)
    is the "Right" example and the square the "Left" one; a mirrored header swaps them."""
    volume, affine = world_legs()
    path = save_as(volume, affine, axcodes, tmp_path / "legs.nii.gz")
    stack = SliceStack("legs", load_volume(path)[0], ("Upper",) * volume.shape[2])
    images, sides, _ = stack_examples(stack, (64, 64), np.random.default_rng(0))
    by_side = {name: images[sides == i] for i, name in enumerate(SIDE_CLASSES)}
    assert [len(by_side[s]) for s in ("Right", "Left", "Both")] == [3, 3, 3]
    for right, left in zip(by_side["Right"], by_side["Left"]):
        assert corner_brightness(right) < 0.1 < 0.9 < corner_brightness(left)
    # the same array with the x axis declared the other way round: the disc is now at world
    # x < 0, the patient's left
    mirrored = affine.copy()
    mirrored[0, 0], mirrored[0, 3] = -2.0, 79.0
    nib.save(nib.Nifti1Image(volume, mirrored), str(tmp_path / "mirrored.nii.gz"))
    stack = SliceStack("mirrored", load_volume(tmp_path / "mirrored.nii.gz")[0],
                       ("Upper",) * volume.shape[2])
    images, sides, _ = stack_examples(stack, (64, 64), np.random.default_rng(0))
    for image in images[sides == SIDE_CLASSES.index("Right")]:
        assert corner_brightness(image) > 0.9
    for image in images[sides == SIDE_CLASSES.index("Left")]:
        assert corner_brightness(image) < 0.1


def test_empty_slices_and_halves_give_no_example():
    volume = _two_legs(nz=5)
    volume[0] = 0.0                       # an empty end slice (inside the padded box)
    volume[4][:, :46] = 0.0               # only the patient's left leg on the last slice
    stack = SliceStack("gaps", volume, ("Lower",) * 5)
    _, sides, _ = stack_examples(stack, (32, 32), np.random.default_rng(0))
    names = [SIDE_CLASSES[s] for s in sides]
    assert names == ["Both", "Right", "Left"] * 3 + ["Both", "Left"]
    with pytest.raises(ValueError, match="no body voxel"):
        stack_examples(SliceStack("air", np.zeros((2, 16, 16)), ("Lower",) * 2), (32, 32),
                       np.random.default_rng(0))


def test_every_augmentation_is_seeded_and_keeps_the_side_without_a_mirror():
    part = _two_legs(nz=1)[0]
    every = SliceAugment(rotate_deg=10.0, scale_range=(0.8, 0.9), p_flip=0.0, p_curve=1.0,
                         p_gamma=1.0, p_noise=1.0, p_lowres=1.0, lowres_range=(2.0, 2.5))
    first, side = augment_slice(part, "Right", np.random.default_rng(7), every)
    again, _ = augment_slice(part, "Right", np.random.default_rng(7), every)
    other, _ = augment_slice(part, "Right", np.random.default_rng(8), every)
    assert side == "Right"
    np.testing.assert_array_equal(first, again)
    assert first.shape != other.shape or not np.allclose(first, other)
    # rotated with reshape, then zoomed by 0.8-0.9: never larger than the rotated slice
    assert first.shape[0] < part.shape[0] * 1.2 and first.shape[1] < part.shape[1] * 1.2
    assert np.isfinite(first).all() and first.min() >= 0.0
    # Rician noise reaches the background
    assert np.count_nonzero(first) > np.count_nonzero(part)


def _weights(model) -> list[np.ndarray]:
    return [np.asarray(w) for w in model.get_weights()]


@pytest.mark.slow
def test_train_classifier_writes_a_loadable_model_and_report(tmp_path):
    stacks = [SliceStack("a", _two_legs(nz=3, seed=1), ("Lower", "Lower", "Upper")),
              SliceStack("b", _two_legs(nz=2, seed=2), ("Upper", "Upper"))]
    config = ClassifierTrainConfig(image_size=(64, 64), head="linear", copies=1, epochs=1,
                                   batch_size=8, seed=5)
    report = train_classifier(config, stacks[:1], stacks[1:], tmp_path, progress=False)
    assert report["n_train_examples"] == 9
    assert report["train_stacks"] == ["a"] and report["validation_stacks"] == ["b"]
    assert report["validation"]["b"]["n"] == 6
    assert report["training"]["a"]["n"] == 9
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["n_balanced_per_epoch"] == report["n_balanced_per_epoch"] == 12
    assert saved["config"]["seed"] == 5 and saved["config"]["head"] == "linear"
    net = config_from_json((tmp_path / "classifier.json").read_text())
    assert net == ClassifierConfig(image_size=(64, 64), head="linear")
    model = build_classifier(net)
    model.load_weights(tmp_path / "classifier.weights.h5")
    assert model.input_shape[1:3] == (64, 64)


@pytest.mark.slow
def test_a_seeded_training_run_is_reproducible_and_moves_the_weights(tmp_path):
    """Tiny run (linear head, 2 epochs of 3 steps, augmented copies): the same seed gives the
    same weights bit for bit; the weights are no longer the seeded initial ones."""
    stacks = [SliceStack("a", _two_legs(nz=2, seed=1), ("Lower", "Upper"))]
    config = ClassifierTrainConfig(image_size=(64, 64), head="linear", copies=2, epochs=2,
                                   batch_size=8, seed=11, augment=SliceAugment(p_lowres=0.5))
    reports, weights = [], []
    for run in ("one", "two"):
        reports.append(train_classifier(config, stacks, [], tmp_path / run, progress=False))
        model = build_classifier(ClassifierConfig(image_size=(64, 64), head="linear"))
        model.load_weights(tmp_path / run / "classifier.weights.h5")
        weights.append(_weights(model))
    assert reports[0]["validation"] == {} and reports[0]["n_train_examples"] == 12
    for report in reports:
        report.pop("wall_seconds")
    assert reports[0] == reports[1]
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)
    keras.utils.set_random_seed(11)
    initial = _weights(build_classifier(ClassifierConfig(image_size=(64, 64), head="linear")))
    moved = [not np.array_equal(a, b) for a, b in zip(weights[0], initial)]
    assert sum(moved) >= len(moved) // 2
