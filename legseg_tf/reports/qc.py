"""Quality-control checks of one segmentation: warnings a reader should look at.

The checks are heuristics on the label map and its measures, meant to direct the eye, not to
accept or reject a segmentation:

* **missing muscles**: a segmented region (from the classifier's region ranges) lacks one
  of its core muscles (:data:`CORE_MUSCLES`, muscles that span most of that region) on a
  side that was segmented -- except the labels the region's model is known never to produce
  (its model card or manifest, :mod:`legseg_tf.reports.model_cards`): the report lists those
  once, in the model's box, instead of warning on every image;
* **very small labels**: a muscle label below :data:`SMALL_LABEL_ML` ml or on a single slice;
* **fragmented labels**: less than :data:`FRAGMENT_FRACTION` of a label's voxels lie in its
  largest 26-connected piece;
* **low confidence** (when a probability map was written): the mean probability of the
  assigned label over a slice's labelled voxels, or over a label, below
  :data:`LOW_CONFIDENCE`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from legseg_tf import nifti_io
from legseg_tf.derivatives import sidecar_path
from legseg_tf.labels import LABELS

logger = logging.getLogger(__name__)

#: Muscles (abbreviation stems) expected in every scan of a region, by segmenter region name.
CORE_MUSCLES: dict[str, tuple[str, ...]] = {
    "UpperLegs": ("VL", "VI", "VM", "RF", "SA", "GR", "ST", "SM", "BFL", "AM"),
    "LowerLegs": ("GL", "GM", "SOL", "TA", "EDL", "TP", "FDL"),
    "Hip": ("GMAX", "GMED"),
}
#: Muscle labels smaller than this (ml) are reported.
SMALL_LABEL_ML = 1.0
#: Labels whose largest piece holds less than this fraction of the voxels are reported.
FRAGMENT_FRACTION = 0.9
#: Mean probability below which a slice or label is reported as low-confidence.
LOW_CONFIDENCE = 0.5

_SIDE_CODES = {"Both": ("L", "R"), "Left": ("L",), "Right": ("R",)}


def expected_labels(region_ranges: dict, side_decision: str | None) -> dict[int, str]:
    """Core muscle labels expected from the segmented regions and sides: label -> region."""
    sides = _SIDE_CODES.get(side_decision or "", ())
    expected = {}
    for region, extent in region_ranges.items():
        stems = CORE_MUSCLES.get(region)
        if not stems or extent is None or len(extent) != 2 or extent[1] < extent[0]:
            continue
        for label in LABELS:
            if label.side in sides and label.abbreviation.split("_")[0] in stems:
                expected[label.index] = region
    return expected


def morphometry_warnings(
    rows: list[dict], report: dict, known_absent: dict[str, frozenset[int]] | None = None
) -> list[str]:
    """Missing, very small and fragmented labels (see the module docstring).

    ``known_absent``: segmenter region -> labels its model never produces (not warned of).
    """
    warnings = []
    present = {row["label"] for row in rows}
    side = (report.get("side") or {}).get("decision")
    expected = expected_labels(report.get("region_ranges") or {}, side)
    known_absent = known_absent or {}
    by_region: dict[str, list[str]] = {}
    for index, region in sorted(expected.items()):
        if index not in present and index not in known_absent.get(region, ()):
            label = next(entry for entry in LABELS if entry.index == index)
            by_region.setdefault(region, []).append(label.abbreviation)
    for region, names in sorted(by_region.items()):
        warnings.append(f"missing expected muscles for region {region}: {', '.join(names)}")
    for row in rows:
        if row["region"] in ("bone", "other", "unknown"):
            continue
        if row["volume_ml"] < SMALL_LABEL_ML or row["slices"] < 2:
            warnings.append(
                f"very small label {row['abbreviation']}: {row['volume_ml']:.2f} ml "
                f"on {row['slices']} slice(s)"
            )
        if row["largest_component_fraction"] < FRAGMENT_FRACTION:
            warnings.append(
                f"fragmented label {row['abbreviation']}: {row['components']} pieces, the largest "
                f"holds {100 * row['largest_component_fraction']:.0f} % of the voxels"
            )
    return warnings


def label_confidence(
    dseg_path: Path, probseg_path: Path
) -> tuple[dict[int, float], dict[int, float]]:
    """Mean probability of the assigned label per label and per axial (canonical z) slice.

    The probability map is 4-D on the label map's grid; its sidecar's ``LabelIndices`` gives
    the label index of each volume (channel), ``LabelMap`` its abbreviation (sidecars of
    earlier versions hold the indices as strings in ``LabelMap``). Labels without a channel
    are left out.

    Returns:
        ``(per_label, per_slice)``: label -> mean probability, z index -> mean probability.
    """
    dseg_image = nib.load(str(dseg_path))
    prob_image = nib.load(str(probseg_path))
    labels = np.asarray(dseg_image.dataobj).astype(np.int64)
    if prob_image.ndim != 4 or prob_image.shape[:3] != labels.shape:
        raise ValueError(
            f"probability map {prob_image.shape} does not match labels {labels.shape}"
        )
    sidecar = sidecar_path(Path(probseg_path))
    meta = json.loads(sidecar.read_text(encoding="utf-8"))
    label_map = meta.get("LabelIndices", meta.get("LabelMap", []))
    if len(label_map) != prob_image.shape[3]:
        raise ValueError(
            f"LabelIndices/LabelMap has {len(label_map)} entries for {prob_image.shape[3]} volumes"
        )
    probabilities = np.asarray(prob_image.dataobj, dtype=np.float32)  # one read of the file
    confidence = np.full(labels.shape, np.nan, dtype=np.float32)
    for channel, value in enumerate(label_map):
        value = int(value)
        if value == 0:
            continue
        inside = labels == value
        if inside.any():
            confidence[inside] = probabilities[..., channel][inside]
    del probabilities
    confidence = nifti_io.to_ras(confidence, dseg_image.affine)
    labels = nifti_io.to_ras(labels, dseg_image.affine)
    per_label = {}
    for value in np.unique(labels[np.isfinite(confidence)]):
        if value:
            per_label[int(value)] = float(np.nanmean(confidence[labels == value]))
    per_slice = {}
    for k in range(labels.shape[2]):
        values = confidence[:, :, k]
        values = values[np.isfinite(values)]
        if values.size:
            per_slice[k] = float(values.mean())
    return per_label, per_slice


def confidence_warnings(
    per_label: dict[int, float], per_slice: dict[int, float], names: dict[int, str]
) -> list[str]:
    """Low-confidence labels and slices (mean probability below :data:`LOW_CONFIDENCE`)."""
    warnings = [
        f"low-confidence label {names.get(v, v)}: mean probability {p:.2f}"
        for v, p in sorted(per_label.items())
        if p < LOW_CONFIDENCE
    ]
    low = [k for k, p in sorted(per_slice.items()) if p < LOW_CONFIDENCE]
    if low:
        warnings.append(
            f"low-confidence slices (mean probability < {LOW_CONFIDENCE}): "
            + ", ".join(str(k) for k in low)
        )
    return warnings
