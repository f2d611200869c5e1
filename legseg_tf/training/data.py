"""Training cases: image/label pairs in the QMRITools layout (QMRITools ``PrepareTrainingData``).

A :class:`TrainingCase` holds one image and its training labels as ``(z, y, x)`` arrays in
the QMRITools layout (slice 0 inferior, row 0 anterior, column 0 = the patient's right; see
``docs/architecture.md``) with the voxel size ``(dz, dy, dx)`` in mm. Everything here is
pure numpy apart from :func:`load_case`.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from legseg_tf.labels import TRAIN_TABLES, train_label_map
from legseg_tf.masking import bounding_box, normalize_data

logger = logging.getLogger(__name__)

#: Crop rule of ``PrepareTrainingData``: NormalizeData(data) >= 5, box + 5 voxels.
BODY_THRESHOLD = 5.0
BODY_PADDING = 5
#: Training-label value of voxels whose reference is unknown ("ignore"): no loss, no score.
IGNORE_LABEL = 255


@dataclass(frozen=True)
class TrainingCase:
    """One training volume.

    Attributes:
        name: identifier used in logs and reports.
        image: (z, y, x) float32 intensities.
        labels: (z, y, x) int32 training classes (0 = background), same shape as ``image``.
        spacing: voxel size (dz, dy, dx) in mm.
        side: "R", "L" or "" - the patient side of a single-leg case (from geometry).
    """

    name: str
    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    side: str = ""

    def __post_init__(self) -> None:
        image = np.asarray(self.image)
        labels = np.asarray(self.labels)
        if image.ndim != 3 or image.shape != labels.shape:
            raise ValueError(f"case {self.name!r}: image {image.shape} and labels "
                             f"{labels.shape} must be equal 3-D (z, y, x) shapes")
        if len(self.spacing) != 3 or any(float(s) <= 0 for s in self.spacing):
            raise ValueError(f"case {self.name!r}: spacing must be 3 positive mm values, "
                             f"got {self.spacing}")
        if self.side not in ("R", "L", ""):
            raise ValueError(f"case {self.name!r}: side must be 'R', 'L' or '', got {self.side!r}")
        object.__setattr__(self, "image", image.astype(np.float32, copy=False))
        object.__setattr__(self, "labels", labels.astype(np.int32, copy=False))
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))


def load_volume(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Load a NIfTI file into the QMRITools layout.

    Returns:
        ``(array (z, y, x) float32, spacing (dz, dy, dx) mm)``, oriented from the affine.
    """
    from legseg_tf.nifti_io import load_canonical, qmri_spacing, ras_to_qmri

    ras, geometry = load_canonical(path)
    return ras_to_qmri(ras), tuple(float(s) for s in qmri_spacing(geometry))


def load_case(image_path: str | Path, label_path: str | Path, name: str | None = None,
              label_map: Mapping[int, int] | None = None) -> TrainingCase:
    """Load an image/label NIfTI pair (equal grids required) into a :class:`TrainingCase`.

    Args:
        image_path, label_path: NIfTI files on the same grid.
        name: case name (default: the image file name).
        label_map: optional remapping of label values (see :func:`remap_labels`); unmapped
            values become background.
    """
    image, spacing = load_volume(image_path)
    labels, label_spacing = load_volume(label_path)
    if image.shape != labels.shape or not np.allclose(spacing, label_spacing, atol=1e-4):
        raise ValueError(f"{image_path} {image.shape} {spacing} and {label_path} "
                         f"{labels.shape} {label_spacing} are not on the same grid")
    labels = np.rint(labels).astype(np.int32)
    if label_map is not None:
        labels = remap_labels(labels, label_map)
    return TrainingCase(name or Path(image_path).name.split(".")[0], image, labels, spacing)


def load_pseudolabel_case(image_path: str | Path, label_path: str | Path,
                          ignore_path: str | Path, table: str,
                          name: str | None = None) -> TrainingCase:
    """A case from fused atlas labels (``tools/make_pseudolabels.py``): final Muscles_leg labels
    mapped to ``table``'s training classes, and the voxels of the ignore mask (atlases
    disagree, outside the atlas slab) marked :data:`IGNORE_LABEL`.

    Labels of other tables (e.g. calf labels on a thigh stack) become background; the image,
    label and ignore files must share one grid.
    """
    case = load_case(image_path, label_path, name=name,
                     label_map=final_to_training_map(table))
    ignore, spacing = load_volume(ignore_path)
    if ignore.shape != case.labels.shape or not np.allclose(spacing, case.spacing, atol=1e-4):
        raise ValueError(f"{ignore_path} {ignore.shape} is not on the grid of {image_path}")
    labels = case.labels.copy()
    labels[ignore > 0.5] = IGNORE_LABEL
    return replace(case, labels=labels)


def remap_labels(labels: np.ndarray, mapping: Mapping[int, int]) -> np.ndarray:
    """Replace label values through ``mapping``; values not in the mapping become 0.

    Args:
        labels: integer array, any shape, non-negative values.
        mapping: old value -> new value.
    """
    labels = np.asarray(labels)
    if labels.size and labels.min() < 0:
        raise ValueError("labels must be non-negative")
    size = max(int(labels.max(initial=0)), max(mapping, default=0)) + 1
    lookup = np.zeros(size, dtype=np.int32)
    for old, new in mapping.items():
        if old < 0 or new < 0:
            raise ValueError(f"label mapping needs non-negative values, got {old} -> {new}")
        lookup[int(old)] = int(new)
    return lookup[labels.astype(np.intp)]


def final_to_training_map(table: str) -> dict[int, int]:
    """Final Muscles_leg labels (both sides) -> side-less training classes of ``table``.

    The inverse of :func:`legseg_tf.labels.train_label_map` for "L" and "R" together; e.g.
    for N5_UpperLeg both 31 (Biceps femoris long Left) and 32 (Right) map to class 1.
    """
    if table not in TRAIN_TABLES:
        raise ValueError(f"unknown training table {table!r}; known: {sorted(TRAIN_TABLES)}")
    mapping: dict[int, int] = {}
    for side in ("L", "R"):
        for train_class, final in enumerate(train_label_map(table, side)):
            if train_class:
                mapping[int(final)] = train_class
    return mapping


def crop_to_body(case: TrainingCase, threshold: float = BODY_THRESHOLD,
                 padding: int = BODY_PADDING) -> TrainingCase:
    """Crop to the box of ``NormalizeData(image) >= threshold`` plus ``padding`` voxels."""
    box = bounding_box(normalize_data(case.image) >= threshold, padding)
    if box is None:
        raise ValueError(f"case {case.name!r} has no voxel above the body threshold")
    return replace(case, image=case.image[box], labels=case.labels[box])


def resample_case(case: TrainingCase, target_spacing: tuple[float, float, float]) -> TrainingCase:
    """Resample image (cubic spline) and labels (per-label linear, arg-max) to a voxel size.

    Per-label linear interpolation followed by picking the label with the largest value
    (background included) is QMRITools' "per-label linear + round" without overlaps.
    """
    target = tuple(float(t) for t in target_spacing)
    if len(target) != 3 or any(t <= 0 for t in target):
        raise ValueError(f"target spacing must be 3 positive mm values, got {target_spacing}")
    if np.allclose(target, case.spacing, rtol=1e-4):
        return case
    shape = tuple(max(1, int(round(n * s / t)))
                  for n, s, t in zip(case.image.shape, case.spacing, target))
    zoom = [n_out / n_in for n_out, n_in in zip(shape, case.image.shape)]
    image = ndimage.zoom(case.image, zoom, order=3, mode="nearest", grid_mode=True)
    image = np.clip(image, 0.0, None).astype(np.float32)
    values = np.unique(case.labels)
    best = np.full(shape, -1.0, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.int32)
    for value in values:
        channel = ndimage.zoom((case.labels == value).astype(np.float32), zoom, order=1,
                               mode="nearest", grid_mode=True)
        better = channel > best
        best[better] = channel[better]
        labels[better] = int(value)
    return replace(case, image=image, labels=labels, spacing=target)


def split_legs(case: TrainingCase, cut: int | None = None) -> tuple[TrainingCase, TrainingCase]:
    """Split a two-leg case at the inter-leg valley into (right leg, left leg).

    The cut comes from the image (:func:`legseg_tf.split.find_middle`), and the side names
    from the QMRITools layout, which is derived from the affine: columns ``< cut`` are the
    patient's right. Each part is cropped to its body box again.

    Args:
        case: a case holding both legs.
        cut: override of the cut column.
    """
    from legseg_tf.split import find_middle

    if cut is None:
        cut = find_middle(case.image)
    nx = case.image.shape[2]
    if not 1 <= cut <= nx - 1:
        raise ValueError(f"cut {cut} outside 1..{nx - 1}")
    right = replace(case, name=f"{case.name}_right", image=case.image[:, :, :cut],
                    labels=case.labels[:, :, :cut], side="R")
    left = replace(case, name=f"{case.name}_left", image=case.image[:, :, cut:],
                   labels=case.labels[:, :, cut:], side="L")
    return crop_to_body(right), crop_to_body(left)


def _body(image: np.ndarray, threshold: float) -> np.ndarray:
    body = normalize_data(image) >= threshold
    return np.stack([ndimage.binary_fill_holes(s) for s in body])


def labelled_fraction_per_slice(case: TrainingCase, threshold: float = BODY_THRESHOLD,
                                tissue_percentiles: tuple[float, float] = (10.0, 90.0),
                                ) -> tuple[np.ndarray, np.ndarray]:
    """Per slice: the share of muscle-like tissue that carries a label, and that tissue's area.

    Muscle-like tissue is the body (``NormalizeData(image) >= threshold``, holes filled per
    slice) within the intensity range of the labelled voxels (``tissue_percentiles`` of their
    intensities), so that subcutaneous fat, which varies along the leg, does not count.
    Ignored voxels count as unlabelled.

    Returns:
        ``(fraction (z,) float64 in [0, 1] (0 where a slice has no such tissue),
        area (z,) int voxels)``.
    """
    labelled = (case.labels > 0) & (case.labels != IGNORE_LABEL)
    nz = case.labels.shape[0]
    if not labelled.any():
        return np.zeros(nz), np.zeros(nz, dtype=np.int64)
    low, high = np.percentile(case.image[labelled], tissue_percentiles)
    tissue = _body(case.image, threshold) & (case.image >= low) & (case.image <= high)
    area = tissue.reshape(nz, -1).sum(axis=1)
    counts = (labelled & tissue).reshape(nz, -1).sum(axis=1)
    fraction = np.divide(counts, area, out=np.zeros(nz, dtype=np.float64), where=area > 0)
    return fraction, area


def incomplete_slices(case: TrainingCase, relative: float = 0.8, min_area: int = 50,
                      threshold: float = BODY_THRESHOLD) -> np.ndarray:
    """End slices whose reference labels cover far less muscle-like tissue than usual.

    A reference that tapers off at the stack ends (QMRITools' automatic ``out.nii.gz``: whole
    muscles missing in the first and last slices) would teach a network that a stack end holds
    no muscle. Starting at each stack end, slices are incomplete while their labelled share of
    muscle-like tissue (:func:`labelled_fraction_per_slice`) is below ``relative`` times the
    median share of the slices with tissue; the run stops at the first slice that reaches it
    (a gap inside the stack is anatomy, not a tapering reference). Slices with less than
    ``min_area`` tissue voxels are passed over at the ends.

    Returns:
        (z,) bool, True for incomplete slices.
    """
    if not 0 < relative <= 1:
        raise ValueError(f"relative must be in (0, 1], got {relative}")
    fraction, area = labelled_fraction_per_slice(case, threshold)
    nz = fraction.size
    flagged = np.zeros(nz, dtype=bool)
    with_tissue = area >= min_area
    if not with_tissue.any():
        return flagged
    typical = float(np.median(fraction[with_tissue]))
    for order in (range(nz), range(nz - 1, -1, -1)):
        for z in order:
            if not with_tissue[z]:
                continue
            if fraction[z] >= relative * typical:
                break
            flagged[z] = True
    return flagged


def ignore_incomplete_slices(case: TrainingCase, slices: np.ndarray | None = None,
                             **kwargs) -> TrainingCase:
    """Mark the unlabelled body voxels of incomplete slices as :data:`IGNORE_LABEL`.

    Labelled voxels stay (what the reference names is kept) and so does the background
    outside the body; only "no label here" inside the body is no longer trusted.

    Args:
        slices: (z,) bool slices to treat; default :func:`incomplete_slices` (``kwargs``).
    """
    if slices is None:
        slices = incomplete_slices(case, **kwargs)
    slices = np.asarray(slices, dtype=bool)
    if slices.shape != (case.labels.shape[0],):
        raise ValueError(f"slices must be a ({case.labels.shape[0]},) mask, got {slices.shape}")
    if not slices.any():
        return case
    body = _body(case.image, kwargs.get("threshold", BODY_THRESHOLD))
    labels = case.labels.copy()
    unknown = body & (labels == 0) & slices[:, None, None]
    labels[unknown] = IGNORE_LABEL
    logger.info("%s: %d of %d slices incompletely labelled (%s); %d voxels ignored", case.name,
                int(slices.sum()), slices.size, np.flatnonzero(slices).tolist(),
                int(unknown.sum()))
    return replace(case, labels=labels)


def class_counts(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Voxel count per class 0..n_classes-1 (:data:`IGNORE_LABEL` voxels not counted)."""
    labels = np.asarray(labels)
    labels = labels[labels != IGNORE_LABEL]
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels outside 0..{n_classes - 1}")
    return np.bincount(labels.ravel().astype(np.intp), minlength=n_classes)
