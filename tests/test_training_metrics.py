"""QMRITools metric definitions, the learning-rate schedule and the loss family."""
from __future__ import annotations

import numpy as np
import pytest

from legseg_tf.training.metrics import dice, hausdorff95, per_label_scores, surface
from legseg_tf.training.schedule import lr_multiplier


def test_dice_has_plus_one_smoothing():
    a = np.zeros((3, 4, 4), bool)
    b = np.zeros((3, 4, 4), bool)
    assert dice(a, b) == 1.0
    a[0, 0, :2] = True
    b[0, 0, 1:3] = True
    assert dice(a, b) == pytest.approx((2 * 1 + 1) / (2 + 2 + 1))


def test_surface_is_six_connected_perimeter():
    cube = np.zeros((5, 5, 5), bool)
    cube[1:4, 1:4, 1:4] = True
    shell = surface(cube)
    assert shell.sum() == 26 and not shell[2, 2, 2]


def test_hd95_of_shifted_cube_in_mm():
    a = np.zeros((10, 20, 20), bool)
    a[3:7, 5:15, 5:15] = True
    b = np.roll(a, 2, axis=2)  # 2 voxels along x
    assert hausdorff95(a, b, (6.0, 1.5, 1.5)) == pytest.approx(3.0)
    assert hausdorff95(a, a, (6.0, 1.5, 1.5)) == 0.0
    assert np.isnan(hausdorff95(a, np.zeros_like(a), (1, 1, 1)))


def test_per_label_scores():
    ref = np.zeros((4, 8, 8), np.int32)
    ref[1:3, 1:4, 1:4] = 1
    ref[1:3, 4:7, 4:7] = 2
    pred = ref.copy()
    pred[pred == 2] = 0
    scores = per_label_scores(ref, pred, (1, 1, 1))
    assert scores[1]["dice"] == 1.0
    assert scores[2]["dice"] == pytest.approx(1 / 19)
    assert scores[2]["n_prediction"] == 0


def test_schedule_landmarks():
    total = 1000
    assert lr_multiplier(0, total) == pytest.approx(0.2)
    assert lr_multiplier(125, total) == pytest.approx(0.6)
    assert lr_multiplier(250, total) == 1.0 and lr_multiplier(399, total) == 1.0
    assert lr_multiplier(675, total) == pytest.approx(0.55)
    assert lr_multiplier(950, total) == pytest.approx(0.1) and lr_multiplier(999, total) == 0.1
    values = [lr_multiplier(t, total) for t in range(total)]
    assert max(values) == 1.0 and min(values) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        lr_multiplier(0, 0)


def test_losses_match_formulas():
    import tensorflow as tf

    from legseg_tf.training.losses import LOSS_WEIGHTS, combined_loss, loss_terms

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(2, 4, 6, 6))
    target = np.eye(3, dtype=np.float32)[labels]
    logits = rng.normal(size=target.shape).astype(np.float32)
    prob = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    terms = {k: float(v) for k, v in loss_terms(tf.constant(target), tf.constant(prob)).items()}
    axes = (1, 2, 3)
    dice_ref = np.mean(1 - (2 * (target * prob).sum(axes) + 2)
                       / ((prob ** 2).sum(axes) + target.sum(axes) + 2))
    assert terms["dice"] == pytest.approx(dice_ref, rel=1e-5)
    q = (target * prob).sum(-1)
    assert terms["ce"] == pytest.approx(np.mean(-np.log(q + 1e-15)), rel=1e-5)
    assert terms["focal"] == pytest.approx(2 * np.mean(-np.log(q + 1e-15) * (1 - q) ** 2),
                                           rel=1e-5)
    assert terms["msd"] == pytest.approx(np.mean((prob - target) ** 2), rel=1e-5)
    total = float(combined_loss(tf.constant(target), tf.constant(prob)))
    assert total == pytest.approx(sum(LOSS_WEIGHTS[k] * terms[k] for k in LOSS_WEIGHTS), rel=1e-5)
    perfect = {k: float(v) for k, v in loss_terms(tf.constant(target),
                                                   tf.constant(target)).items()}
    assert all(abs(v) < 1e-6 for v in perfect.values())
    with pytest.raises(ValueError):
        combined_loss(tf.constant(target), tf.constant(prob), {"nope": 1.0})
