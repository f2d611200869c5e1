"""The QMRITools loss family (QMRITools ``AddLossLayer``).

With t the one-hot target and p the softmax output, sums run over all voxels per sample and
class, then the mean over classes (background included) and over the batch:

* overlap losses ``1 - (S tp + 1) / (S tp^n + a S (1-t) p^n + b S t (1 - p^n) + 1)``:
  squared Dice (a = b = 0.5, n = 2), Jaccard (a = b = 1, n = 2), Tversky (a 0.3, b 0.7, n 1);
* pixel losses with q = S_c t p: mean of ``-log(q + 1e-15) (1 - q)^g``, times g for g >= 2:
  cross-entropy (g = 0), focal (g = 2);
* MSD: mean squared difference of p and t.

:data:`LOSS_WEIGHTS` holds the weight set of QMRITools commit ``c146c1b4`` (2026-03-23, the
current code): Dice, Jaccard, Tversky 1 each, CE x1, Focal x2 (the focal term's own x2 from
g = 2, on top of which no extra factor is applied), MSD x75. Which weights the shipped
QMRITools networks used is not known.

Ignored voxels: a target row that is all zero (an "ignore" voxel of an incomplete reference,
see :func:`legseg_tf.training.sampling.one_hot`) contributes nothing: every voxel term is
weighted by ``m = S_c t`` (1 for a labelled voxel, 0 for an ignored one) and voxel means
become ``S m x / S m``. With no ignored voxel this is exactly the unweighted family.
"""
from __future__ import annotations

from collections.abc import Mapping

import tensorflow as tf

#: Loss name -> weight (QMRITools HEAD, c146c1b4).
LOSS_WEIGHTS: dict[str, float] = {
    "dice": 1.0, "jaccard": 1.0, "tversky": 1.0, "ce": 1.0, "focal": 1.0, "msd": 75.0,
}
OVERLAP_PARAMETERS = {"dice": (0.5, 0.5, 2), "jaccard": (1.0, 1.0, 2), "tversky": (0.3, 0.7, 1)}
FOCAL_GAMMA = 2.0


def _spatial_axes(tensor: tf.Tensor) -> list[int]:
    return list(range(1, len(tensor.shape) - 1))


def voxel_mask(target: tf.Tensor) -> tf.Tensor:
    """(b, ..., 1) weight per voxel: 1 where the target names a class, 0 where ignored."""
    return tf.reduce_sum(target, axis=-1, keepdims=True)


def overlap_loss(target: tf.Tensor, prob: tf.Tensor, alpha: float, beta: float,
                 power: int) -> tf.Tensor:
    """QMRITools overlap loss, mean over classes and batch (tensors (b, ..., C))."""
    axes = _spatial_axes(target)
    prob_n = prob ** power if power != 1 else prob
    tp = tf.reduce_sum(target * prob, axis=axes)
    tpn = tf.reduce_sum(target * prob_n, axis=axes)
    fp = tf.reduce_sum(voxel_mask(target) * (1.0 - target) * prob_n, axis=axes)
    fn = tf.reduce_sum(target * (1.0 - prob_n), axis=axes)
    score = (tp + 1.0) / (tpn + alpha * fp + beta * fn + 1.0)
    return tf.reduce_mean(1.0 - score)


def pixel_loss(target: tf.Tensor, prob: tf.Tensor, gamma: float) -> tf.Tensor:
    """Cross-entropy (gamma 0) or focal loss (gamma >= 2 is multiplied by gamma)."""
    q = tf.reduce_sum(target * prob, axis=-1)
    mask = tf.reduce_sum(target, axis=-1)
    loss = -tf.math.log(q + 1e-15)
    if gamma:
        loss = loss * (1.0 - q) ** gamma
    factor = gamma if gamma >= 2 else 1.0
    return factor * _masked_mean(loss, mask)


def _masked_mean(values: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """``S m x / S m`` (0 when nothing is unmasked)."""
    return tf.math.divide_no_nan(tf.reduce_sum(values * mask), tf.reduce_sum(mask))


def msd_loss(target: tf.Tensor, prob: tf.Tensor) -> tf.Tensor:
    """Mean squared difference of probabilities and one-hot targets (labelled voxels)."""
    mask = tf.reduce_sum(target, axis=-1)
    return _masked_mean(tf.reduce_mean(tf.square(prob - target), axis=-1), mask)


def loss_terms(target: tf.Tensor, prob: tf.Tensor) -> dict[str, tf.Tensor]:
    """Every loss of the family, unweighted."""
    terms = {name: overlap_loss(target, prob, *params)
             for name, params in OVERLAP_PARAMETERS.items()}
    terms["ce"] = pixel_loss(target, prob, 0.0)
    terms["focal"] = pixel_loss(target, prob, FOCAL_GAMMA)
    terms["msd"] = msd_loss(target, prob)
    return terms


def combined_loss(target: tf.Tensor, prob: tf.Tensor,
                  weights: Mapping[str, float] = LOSS_WEIGHTS) -> tf.Tensor:
    """Weighted sum of the selected losses (QMRITools ``LossFunction -> All``)."""
    unknown = set(weights) - set(LOSS_WEIGHTS)
    if unknown:
        raise ValueError(f"unknown loss(es) {sorted(unknown)}; known: {sorted(LOSS_WEIGHTS)}")
    target = tf.cast(target, prob.dtype)
    terms = loss_terms(target, prob)
    return tf.add_n([float(w) * terms[name] for name, w in weights.items() if w])
