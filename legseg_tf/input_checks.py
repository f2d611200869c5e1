"""Checks that an input is leg anatomy at all, before and after segmentation.

Before segmentation (:func:`check_input`) an image is refused (that image fails, exit 1) when
it cannot hold anatomy: every voxel has the same value, or neighbouring voxels are
uncorrelated (white noise). MR images of the body are smooth at the voxel scale: the in-plane
correlation of neighbouring voxels is 0.7-0.99 for magnitude, water, fat and opposed-phase
images (0.55 even for phase images, which are never inputs), and about 0 for noise.

After segmentation (:func:`not_anatomy_flags`) the result gets the QC flag ``not_anatomy``
(severity "fail", which keeps the image out of the group statistics by default) when the
body mask is empty, or when most labelled voxels lie outside the body mask.

Arrays are in the QMRITools layout (z, y, x).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from legseg_tf.nifti_io import ImageError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnatomyLimits:
    """Thresholds of the anatomy checks."""

    #: Below this in-plane neighbour correlation an image is noise, not anatomy.
    min_neighbour_correlation: float = 0.2
    #: Share of labelled voxels allowed outside the body mask before ``not_anatomy``.
    max_labels_outside_body: float = 0.5


LIMITS = AnatomyLimits()


class NotAnatomyError(ImageError):
    """The input cannot be leg anatomy (constant, or noise)."""


def neighbour_correlation(volume: np.ndarray) -> float:
    """Mean Pearson correlation of in-plane neighbouring voxels (along y and along x), on at
    most about 4 million voxels (evenly spaced slices)."""
    volume = np.asarray(volume, dtype=np.float32)
    per_slice = max(1, volume.shape[1] * volume.shape[2])
    if volume.size > 4_000_000:
        keep = max(1, 4_000_000 // per_slice)
        volume = volume[np.unique(np.linspace(0, volume.shape[0] - 1, keep).astype(int))]
    values = []
    for axis in (1, 2):
        if volume.shape[axis] < 2:
            continue
        a = np.take(volume, range(volume.shape[axis] - 1), axis=axis).astype(np.float64).ravel()
        b = np.take(volume, range(1, volume.shape[axis]), axis=axis).astype(np.float64).ravel()
        a -= a.mean()
        b -= b.mean()
        denominator = np.sqrt(float(a @ a) * float(b @ b))
        if denominator > 0:
            values.append(float(a @ b) / denominator)
    return float(np.mean(values)) if values else 0.0


def check_input(volume: np.ndarray, name: str, limits: AnatomyLimits = LIMITS) -> float:
    """Refuse an input that cannot be anatomy; return its neighbour correlation.

    Raises:
        NotAnatomyError: constant image, or neighbour correlation below the limit.
    """
    volume = np.asarray(volume)
    low, high = float(volume.min()), float(volume.max())
    if high == low:
        raise NotAnatomyError(f"{name} is constant (every voxel {low:g}): no anatomy to segment")
    correlation = neighbour_correlation(volume)
    if correlation < limits.min_neighbour_correlation:
        raise NotAnatomyError(
            f"{name} does not look like anatomy: neighbouring voxels are uncorrelated "
            f"(correlation {correlation:.2f} < {limits.min_neighbour_correlation}; MR images of "
            "the legs: > 0.5), as in noise"
        )
    return correlation


def not_anatomy_flags(labels: np.ndarray, body: np.ndarray | None,
                      limits: AnatomyLimits = LIMITS) -> tuple[list[dict], str]:
    """``not_anatomy`` QC flags (as dicts of :class:`legseg_tf.qc_flags.QCFlag` fields) of a
    segmentation, and the state of the check ("passed", "flagged", "not available: ...")."""
    if body is None:
        return [], "not available: no body mask"
    body = np.asarray(body, dtype=bool)
    labelled = np.asarray(labels) > 0
    n_labelled = int(np.count_nonzero(labelled))
    if not body.any():
        message = "no body found in the image (empty body mask)"
        if n_labelled:
            message += f", yet {n_labelled} voxels were labelled"
        return [{"code": "not_anatomy", "severity": "fail", "message": message,
                 "structures": [], "details": {"labelled_voxels": n_labelled}}], "flagged"
    if n_labelled:
        outside = float(np.count_nonzero(labelled & ~body)) / n_labelled
        if outside > limits.max_labels_outside_body:
            return [{"code": "not_anatomy", "severity": "fail",
                     "message": f"{100 * outside:.0f} % of the labelled voxels lie outside the body "
                                "mask: the labels do not follow the anatomy",
                     "structures": [], "details": {"outside_fraction": round(outside, 4)}}], "flagged"
    return [], "passed"
