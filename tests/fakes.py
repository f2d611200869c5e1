"""Test-only segmenters. The application never uses these: without a real model it exits 3."""
from __future__ import annotations

import numpy as np

from legseg_tf.segmentation_report import SegmentationReport
from legseg_tf.segmenter import SegmentationResult

VL_LEFT, VL_RIGHT = 55, 56


class ThresholdPlaceholderSegmenter:
    """Labels bright voxels as vastus lateralis, side by column of the QMRITools layout.

    In the (z, y, x) layout that the pipeline hands over, column 0 is the patient's right, so
    columns left of the middle get the Right label and the others the Left label.
    """

    def __init__(self, fail_for_shape: tuple | None = None):
        self.calls = 0
        self.fail_for_shape = fail_for_shape

    def segment(self, volume: np.ndarray, spacing_zyx, *, midline_column=None) -> SegmentationResult:
        self.calls += 1
        if self.fail_for_shape is not None and volume.shape == self.fail_for_shape:
            raise RuntimeError("simulated network failure")
        labels = np.zeros(volume.shape, dtype=np.uint16)
        middle = volume.shape[2] // 2
        bright = volume > 50
        labels[:, :, :middle][bright[:, :, :middle]] = VL_RIGHT
        labels[:, :, middle:][bright[:, :, middle:]] = VL_LEFT
        return SegmentationResult(
            labels=labels,
            report=SegmentationReport(device="cpu", timings_s={"network": 0.0}),
            models=[{"id": "placeholder", "role": "upper_leg", "sha256": "0" * 64}],
        )


class FailingSegmenter:
    """Raises for every image."""

    def segment(self, volume, spacing_zyx, *, midline_column=None):
        raise RuntimeError("simulated failure")
