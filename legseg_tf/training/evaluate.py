"""Evaluation: sliding-window prediction of a trained network and per-label scores.

The prediction tiles the (z, y, x) volume with patches of the training size (overlap 50 %,
zero padding where the volume is smaller), normalises each tile with the "Uniform"
histogram normalisation as in training, averages the softmax outputs and takes the arg-max.
Scores follow the QMRITools definitions (:mod:`legseg_tf.training.metrics`).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from legseg_tf.labels import BY_INDEX, TRAIN_TABLES
from legseg_tf.training.data import TrainingCase, load_volume
from legseg_tf.training.metrics import per_label_scores

logger = logging.getLogger(__name__)


def tile_starts(size: int, patch: int, overlap: float = 0.5) -> list[int]:
    """Tile starts along one axis covering ``size`` with at least ``overlap`` overlap."""
    if size <= patch:
        return [0]
    step = max(1, int(patch * (1 - overlap)))
    count = int(np.ceil((size - patch) / step)) + 1
    return sorted({int(round(s)) for s in np.linspace(0, size - patch, count)})


def predict_volume(model, volume: np.ndarray, patch_size: tuple[int, int, int], n_classes: int,
                   normalise: Callable[[np.ndarray], np.ndarray] | None = None,
                   overlap: float = 0.5, batch_size: int = 4) -> np.ndarray:
    """Arg-max labels (z, y, x) of ``model`` on ``volume`` by averaged overlapping tiles."""
    if normalise is None:
        from legseg_tf.normalization import uniform_normalise as normalise
    volume = np.asarray(volume, dtype=np.float32)
    padded_shape = tuple(max(n, p) for n, p in zip(volume.shape, patch_size))
    padded = np.zeros(padded_shape, dtype=np.float32)
    padded[tuple(slice(0, n) for n in volume.shape)] = volume
    probability = np.zeros((*padded_shape, n_classes), dtype=np.float32)
    counts = np.zeros(padded_shape, dtype=np.float32)
    boxes = [tuple(slice(s, s + p) for s, p in zip((z, y, x), patch_size))
             for z in tile_starts(padded_shape[0], patch_size[0], overlap)
             for y in tile_starts(padded_shape[1], patch_size[1], overlap)
             for x in tile_starts(padded_shape[2], patch_size[2], overlap)]
    for first in range(0, len(boxes), batch_size):
        chunk = boxes[first:first + batch_size]
        tiles = np.stack([np.asarray(normalise(padded[b]), dtype=np.float32) for b in chunk])
        output = np.asarray(model(tiles[..., None], training=False))
        for box, prob in zip(chunk, output):
            probability[box] += prob
            counts[box] += 1
    labels = np.argmax(probability / counts[..., None], axis=-1)
    return labels[tuple(slice(0, n) for n in volume.shape)].astype(np.int32)


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
                  patch_size: tuple[int, int, int] | None = None,
                  normalise: Callable | None = None) -> dict:
    """Predict ``case`` with a UNET config + weights file and score every training class.

    Returns:
        ``{"case", "weights", "summary": {...}, "scores": {class: {...}}}``.
    """
    from legseg_tf.networks.unet import build_unet

    patch = tuple(patch_size or config.patch_size or (32, 112, 112))
    model = build_unet(config, patch)
    model.load_weights(weights)
    prediction = predict_volume(model, case.image, patch, config.n_classes, normalise)
    labels = [c for c in range(1, config.n_classes)
              if (case.labels == c).any() or (prediction == c).any()]
    scores = per_label_scores(case.labels, prediction, case.spacing, labels)
    return {"case": case.name, "weights": str(weights), "patch_size": list(patch),
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
