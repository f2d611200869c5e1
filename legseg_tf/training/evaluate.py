"""Evaluation: a trained network's prediction through the app's inference path, scored.

The prediction is the participant level's own network step (one tiler for the app and the
model cards: :mod:`legseg_tf.sliding_window` via :func:`legseg_tf.inference.
apply_segmentation_network`), with the training patch size as the tile size. Reference voxels
marked ignore (:data:`~legseg_tf.training.data.IGNORE_LABEL`, e.g. the incompletely labelled
end slices of an automatic reference) are left out of the scores. Scores follow the
QMRITools definitions (:mod:`legseg_tf.training.metrics`).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from legseg_tf.config import InferenceConfig
from legseg_tf.labels import BY_INDEX, TRAIN_TABLES
from legseg_tf.training.data import IGNORE_LABEL, TrainingCase, load_volume
from legseg_tf.training.metrics import per_label_scores

logger = logging.getLogger(__name__)


def predict_volume(model, volume: np.ndarray, n_classes: int,
                   stride: tuple[int, int, int], patch_size: tuple[int, int, int] | None = None,
                   config: InferenceConfig | None = None) -> np.ndarray:
    """Arg-max labels (z, y, x) of ``model`` on ``volume`` through the app's own path.

    This is the participant level's network step (:func:`legseg_tf.inference.
    apply_segmentation_network`: crop to the non-zero box, per-tile "Uniform" normalisation,
    :mod:`legseg_tf.sliding_window` tiling and merging), without the per-label largest
    component, so that a model card's figures are what the app produces.
    """
    from legseg_tf.inference import apply_segmentation_network

    output = apply_segmentation_network(np.asarray(volume, dtype=np.float32), model, n_classes,
                                        config or InferenceConfig(), tuple(stride),
                                        largest_component=False, patch=patch_size)
    return np.asarray(output.labels, dtype=np.int32)


def class_names(table: str) -> dict[int, str]:
    """Training class -> structure name of a training table."""
    return {i + 1: name for i, name in enumerate(TRAIN_TABLES[table])}


def summarise(scores: Mapping[int, Mapping[str, float]], names: Mapping[int, str]) -> dict:
    """Named per-label Dice/HD95 and the mean Dice over labels present in the reference."""
    present = {k: v for k, v in scores.items() if v["n_reference"] > 0}
    return {
        "mean_dice_reference_labels": (float(np.mean([v["dice"] for v in present.values()]))
                                       if present else float("nan")),
        "per_label": {names.get(k, str(k)): {"label": k, "dice": round(v["dice"], 4),
                                             "hd95_mm": (round(v["hd95_mm"], 2)
                                                         if np.isfinite(v["hd95_mm"]) else None),
                                             "n_reference": v["n_reference"],
                                             "n_prediction": v["n_prediction"]}
                      for k, v in scores.items()},
    }


def evaluate_case(config, weights: str | Path, case: TrainingCase, table: str,
                  patch_size: tuple[int, int, int] | None = None) -> dict:
    """Predict ``case`` with a UNET config + weights file and score every training class.

    Ignored reference voxels are removed from both maps before scoring.

    Returns:
        ``{"case", "weights", "summary": {...}, "scores": {class: {...}}}``.
    """
    from legseg_tf.networks.config import total_stride
    from legseg_tf.networks.unet import build_unet

    patch = tuple(patch_size or config.patch_size or (32, 112, 112))
    model = build_unet(config, None)
    model.load_weights(weights)
    prediction = predict_volume(model, case.image, config.n_classes, total_stride(config),
                                patch)
    ignored = case.labels == IGNORE_LABEL
    reference = np.where(ignored, 0, case.labels)
    prediction = np.where(ignored, 0, prediction)
    labels = [c for c in range(1, config.n_classes)
              if (reference == c).any() or (prediction == c).any()]
    scores = per_label_scores(reference, prediction, case.spacing, labels)
    return {"case": case.name, "weights": str(weights), "patch_size": list(patch),
            "ignored_voxels": int(ignored.sum()), "inference": "legseg_tf.sliding_window",
            "summary": summarise(scores, class_names(table)),
            "scores": {str(k): {m: (x if np.isfinite(x) else None) for m, x in v.items()}
                       for k, v in scores.items()}}


def compare_label_files(reference: str | Path, prediction: str | Path,
                        labels: list[int] | None = None) -> dict:
    """Dice and HD95 per label between two label NIfTI files on the same grid.

    Names come from the Muscles_leg table where the label is known there.
    """
    ref, spacing = load_volume(reference)
    pred, spacing_pred = load_volume(prediction)
    if ref.shape != pred.shape or not np.allclose(spacing, spacing_pred, atol=1e-4):
        raise ValueError(f"{reference} {ref.shape} and {prediction} {pred.shape} are not on "
                         "the same grid")
    scores = per_label_scores(np.rint(ref).astype(np.int32), np.rint(pred).astype(np.int32),
                              spacing, labels)
    names = {k: BY_INDEX[k].full_name if k in BY_INDEX else str(k) for k in scores}
    return {"reference": str(reference), "prediction": str(prediction),
            "summary": summarise(scores, names)}
