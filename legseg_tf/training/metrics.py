"""Segmentation metrics with the QMRITools definitions (QMRITools ``DiceSimilarity``,
``SurfaceDistance``).

* Dice = (2 |A n B| + 1) / (|A| + |B| + 1) (``DiceSimilarity``; the +1 smoothing makes two
  empty sets score 1).
* Surface distances: the surface of a label is its 6-connected perimeter (voxels of the
  label with at least one 6-neighbour outside it); distances in mm between the two
  surfaces, both directions pooled; HD95 = 95th percentile, HD = maximum.

Arrays are (z, y, x) with spacing (dz, dy, dx) in mm.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage

SIX_CONNECTED = ndimage.generate_binary_structure(3, 1)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """QMRITools Dice of two boolean masks, (2|A n B| + 1) / (|A| + |B| + 1)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return (2.0 * np.count_nonzero(a & b) + 1.0) / (np.count_nonzero(a) + np.count_nonzero(b)
                                                     + 1.0)


def surface(mask: np.ndarray) -> np.ndarray:
    """6-connected perimeter voxels of a boolean (z, y, x) mask (outside the array = empty)."""
    mask = np.asarray(mask, dtype=bool)
    padded = np.pad(mask, 1)
    eroded = ndimage.binary_erosion(padded, SIX_CONNECTED)[1:-1, 1:-1, 1:-1]
    return mask & ~eroded


def surface_distances(a: np.ndarray, b: np.ndarray,
                      spacing: tuple[float, float, float]) -> np.ndarray:
    """Distances (mm) from each surface voxel of ``a`` to the surface of ``b`` and back.

    Returns:
        1-D array (empty when either mask is empty).
    """
    sa, sb = surface(a), surface(b)
    if not sa.any() or not sb.any():
        return np.zeros(0)
    to_b = ndimage.distance_transform_edt(~sb, sampling=spacing)
    to_a = ndimage.distance_transform_edt(~sa, sampling=spacing)
    return np.concatenate([to_b[sa], to_a[sb]])


def hausdorff95(a: np.ndarray, b: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """95th percentile of the pooled surface distances in mm; NaN when a mask is empty."""
    distances = surface_distances(a, b, spacing)
    return float(np.percentile(distances, 95)) if distances.size else float("nan")


def per_label_scores(reference: np.ndarray, prediction: np.ndarray,
                     spacing: tuple[float, float, float],
                     labels: Iterable[int] | None = None) -> dict[int, dict[str, float]]:
    """Dice, HD95 (mm) and voxel counts for each label of two label maps.

    Args:
        reference, prediction: integer (z, y, x) label maps of equal shape.
        spacing: (dz, dy, dx) in mm.
        labels: labels to score (default: every non-zero label in either map).

    Returns:
        ``{label: {"dice", "hd95_mm", "n_reference", "n_prediction"}}``.
    """
    reference, prediction = np.asarray(reference), np.asarray(prediction)
    if reference.shape != prediction.shape:
        raise ValueError(f"label maps differ in shape: {reference.shape} vs {prediction.shape}")
    if labels is None:
        labels = sorted(set(np.unique(reference).tolist()) | set(np.unique(prediction).tolist())
                        - {0})
    scores = {}
    for label in labels:
        a, b = reference == label, prediction == label
        scores[int(label)] = {
            "dice": dice(a, b),
            "hd95_mm": hausdorff95(a, b, spacing),
            "n_reference": int(a.sum()),
            "n_prediction": int(b.sum()),
        }
    return scores


def batch_dice_per_class(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """QMRITools Dice per class 0..n_classes-1 over a whole batch of label maps."""
    return np.array([dice(labels == c, predicted == c) for c in range(n_classes)])
