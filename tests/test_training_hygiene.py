"""Reference hygiene: incompletely labelled end slices are ignored, stack ends are not learned."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from legseg_tf.training.data import (
    IGNORE_LABEL,
    TrainingCase,
    class_counts,
    ignore_incomplete_slices,
    incomplete_slices,
    labelled_fraction_per_slice,
)
from legseg_tf.training.sampling import (
    PatchConfig,
    cut_stack_end,
    foreground_index,
    make_patch,
    one_hot,
)


def _leg(nz=12, taper=(3, 3), seed=0) -> TrainingCase:
    """One leg (z, y, x): fat ring (bright), muscle (class 1, mid grey), bone (class 2, dark).

    The reference of the first ``taper[0]`` and last ``taper[1]`` slices labels only the
    bone, as an automatic segmentation that tapers off at the stack ends does.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    r = np.hypot(yy - 16, xx - 16)
    image = np.zeros((nz, 32, 32), np.float32)
    labels = np.zeros((nz, 32, 32), np.int32)
    image[:, r <= 13] = 200.0
    image[:, r <= 10] = 100.0
    image[:, r <= 3] = 30.0
    labels[:, (r <= 10) & (r > 3)] = 1
    labels[:, r <= 3] = 2
    image += rng.normal(0, 3, image.shape).astype(np.float32) * (image > 0)
    tapered = labels.copy()
    for z in list(range(taper[0])) + list(range(nz - taper[1], nz)):
        tapered[z][tapered[z] == 1] = 0
    return TrainingCase("leg", image, tapered, (6.0, 1.5, 1.5), side="R")


def test_tapered_end_slices_are_found_and_only_there():
    case = _leg(taper=(3, 2))
    assert np.flatnonzero(incomplete_slices(case)).tolist() == [0, 1, 2, 10, 11]
    complete = _leg(taper=(0, 0))
    assert not incomplete_slices(complete).any()
    # a gap inside the stack is anatomy, not a tapering reference
    inner = complete.labels.copy()
    inner[6][inner[6] == 1] = 0
    assert not incomplete_slices(replace(complete, labels=inner)).any()
    fraction, area = labelled_fraction_per_slice(case)
    assert fraction[5] > 0.9 and fraction[0] < 0.2 and (area > 0).all()
    with pytest.raises(ValueError, match="relative"):
        incomplete_slices(case, relative=0)


def test_ignoring_keeps_what_the_reference_names_and_the_background():
    case = _leg(taper=(3, 3))
    marked = ignore_incomplete_slices(case)
    ends = marked.labels[[0, 1, 2, 9, 10, 11]]
    assert (ends == IGNORE_LABEL).any()
    assert (marked.labels[case.labels == 2] == 2).all()             # bone kept
    assert (marked.labels[case.image == 0] == 0).all()              # outside the body kept
    assert (marked.labels[3:9] == case.labels[3:9]).all()           # complete slices untouched
    assert class_counts(marked.labels, 3).sum() == (marked.labels != IGNORE_LABEL).sum()
    fg = foreground_index(marked, PatchConfig(patch_size=(4, 16, 16)))
    assert not np.isin(marked.labels.ravel()[fg[0]], (0, IGNORE_LABEL)).any()
    with pytest.raises(ValueError, match="mask"):
        ignore_incomplete_slices(case, np.zeros(3, bool))


def test_one_hot_gives_ignored_voxels_an_empty_row():
    labels = np.array([[0, 1, IGNORE_LABEL, 2]])
    target = one_hot(labels, 3)
    assert target.shape == (1, 4, 3)
    assert target[0, 2].sum() == 0 and target[0, 3, 2] == 1 and target[0, 0, 0] == 1
    with pytest.raises(ValueError, match="outside"):
        one_hot(np.array([3]), 3)


def test_the_loss_does_not_see_ignored_voxels():
    import tensorflow as tf

    from legseg_tf.training.losses import combined_loss

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, (2, 4, 6, 6))
    labels[:, 0] = IGNORE_LABEL
    target = tf.constant(one_hot(labels, 3))
    logits = rng.normal(size=(2, 4, 6, 6, 3)).astype(np.float32)
    prob = tf.nn.softmax(logits)
    other = logits.copy()
    other[:, 0] = rng.normal(size=other[:, 0].shape) * 10   # change only ignored voxels
    base = float(combined_loss(target, prob))
    assert float(combined_loss(target, tf.nn.softmax(other))) == pytest.approx(base, rel=1e-5)
    # without ignored voxels the loss is the plain family: equal to the loss on the kept slices
    kept = float(combined_loss(target[:, 1:], prob[:, 1:]))
    assert kept == pytest.approx(base, rel=1e-5)


def test_an_artificial_stack_end_empties_and_ignores_one_side():
    rng = np.random.default_rng(0)
    image = np.ones((8, 4, 4), np.float32)
    labels = np.ones((8, 4, 4), np.int32)
    sides = set()
    for _ in range(40):
        cut_image, cut_labels = cut_stack_end(image, labels, rng, min_slices=2)
        kept = cut_image.reshape(8, -1).any(axis=1)
        assert 2 <= kept.sum() <= 7
        assert (cut_labels[~kept] == IGNORE_LABEL).all() and (cut_labels[kept] == 1).all()
        sides.add("top" if kept[0] else "bottom")
        assert kept[0] or kept[-1]
    assert sides == {"top", "bottom"}
    assert (image == 1).all() and (labels == 1).all()   # inputs unchanged
    config = PatchConfig(patch_size=(4, 16, 16), stack_end_probability=1.0)
    from legseg_tf.training.augmentation import NO_AUGMENTATION

    patch, patch_labels = make_patch(_leg(), config, NO_AUGMENTATION, rng, lambda p: p / 200)
    assert (patch_labels == IGNORE_LABEL).any()
    with pytest.raises(ValueError, match="stack_end_probability"):
        PatchConfig(stack_end_probability=1.5)


@pytest.mark.slow
def test_a_network_trained_on_a_tapered_reference_labels_the_end_slices(tmp_path):
    """Trained on a reference whose end slices miss the muscle, a network with hygiene
    (ignored incomplete slices + artificial stack ends) labels the muscle at both ends.

    The patch (16 slices) is taller than the stack (12), so training and inference both see
    the stack ends next to zero padding: without hygiene the same run learned the drop-out
    (muscle recall of the last slice 0.01 against 0.47-0.82 elsewhere, measured once)."""
    from legseg_tf.config import InferenceConfig
    from legseg_tf.networks.config import UNetConfig, total_stride
    from legseg_tf.networks.unet import build_unet
    from legseg_tf.training.augmentation import NO_AUGMENTATION
    from legseg_tf.training.evaluate import predict_volume
    from legseg_tf.training.train import BEST_WEIGHTS, TrainConfig, train

    case = _leg(nz=12, taper=(3, 3))
    truth = _leg(nz=12, taper=(0, 0)).labels
    clean = ignore_incomplete_slices(case)
    network = UNetConfig(n_classes=3, features=(4, 8), downsample=((1, 2, 2), (1, 1, 1)),
                         dropout_rate=0.0)
    config = TrainConfig(network=network,
                         patch=PatchConfig(patch_size=(16, 16, 16), foreground_fraction=0.5,
                                           stack_end_probability=0.3),
                         augmentation=NO_AUGMENTATION, batch_size=2, round_length=40,
                         rounds=6, validation_patches=4, seed=3, threads=1)
    result = train(config, [clean], [clean], tmp_path / "run", progress=False)
    model = build_unet(network, None)
    model.load_weights(result.run_dir / BEST_WEIGHTS)
    predicted = predict_volume(model, case.image, 3, total_stride(network), (16, 16, 16),
                               InferenceConfig())
    muscle = truth == 1
    recall = [(predicted[z][muscle[z]] == 1).mean() for z in range(12)]
    middle = float(np.mean(recall[4:8]))
    assert middle > 0.8, recall
    assert min(recall[:2] + recall[-2:]) >= 0.7 * middle, recall


def test_pseudolabel_cases_carry_their_ignore_mask(tmp_path):
    from legseg_tf.training.data import load_pseudolabel_case
    from tests.conftest import write_nifti

    affine = np.diag([1.5, 1.5, 6.0, 1.0])
    image = np.zeros((20, 16, 4), np.float32)
    image[2:18, 2:14] = 100.0
    labels = np.zeros(image.shape, np.uint16)
    labels[2:10, 2:14] = 55          # Vastus lateralis Left -> N5 class
    labels[10:18, 2:14] = 221        # a calf label: not in the thigh table -> background
    ignore = np.zeros(image.shape, np.uint8)
    ignore[:, :, 3] = 1
    paths = [write_nifti(tmp_path / f"{n}.nii.gz", a, affine)
             for n, a in (("image", image), ("labels", labels), ("ignore", ignore))]
    case = load_pseudolabel_case(*paths, table="N5_UpperLeg", name="pseudo")
    assert case.name == "pseudo" and case.labels.shape == (4, 16, 20)   # (z, y, x)
    assert (case.labels[3] == IGNORE_LABEL).all()
    kept = case.labels[:3]
    assert set(np.unique(kept)) == {0, 12}   # N5 class of Vastus lateralis; the calf label gone
    write_nifti(tmp_path / "small.nii.gz", ignore[:10], affine)
    with pytest.raises(ValueError, match="grid"):
        load_pseudolabel_case(paths[0], paths[1], tmp_path / "small.nii.gz", "N5_UpperLeg")
