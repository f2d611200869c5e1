"""Per-label shape measures of a label map: volume, slice extent, cross-section, centroid.

All functions take a label map in canonical RAS, axes (x, y, z), with its 4x4 affine. The
"axial" slices used for the slice count and the maximum cross-sectional area are the z
slices of that grid, i.e. the slices of the acquired grid along the axis closest to
superior-inferior. They are perpendicular to the muscle's long axis only as far as the
acquisition was; no reslicing along the muscle's line of action is attempted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from legseg_tf.labels import BY_INDEX

logger = logging.getLogger(__name__)

#: Column order of the morphometry table (FF columns are appended by :mod:`legseg_tf.fatfraction`).
MORPH_COLUMNS = (
    "label",
    "name",
    "abbreviation",
    "muscle",
    "side",
    "region",
    "voxels",
    "volume_ml",
    "slices",
    "first_slice",
    "last_slice",
    "max_csa_cm2",
    "max_csa_slice",
    "centroid_x_mm",
    "centroid_y_mm",
    "centroid_z_mm",
    "components",
    "largest_component_fraction",
)

#: 3-D connectivity used to count the pieces of a label (26-neighbourhood).
COMPONENT_STRUCTURE = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class LabelIdentity:
    """Names of one label value, from the Muscles_leg table or a placeholder if unknown."""

    label: int
    name: str
    abbreviation: str
    muscle: str
    side: str
    region: str


def identify(value: int) -> LabelIdentity:
    """Table names of a label value (English spelling, ``Label.display_name``); values outside
    the table get "unknown_<value>"."""
    entry = BY_INDEX.get(int(value))
    if entry is None:
        return LabelIdentity(
            int(value), f"unknown_{value}", f"UNK{value}", f"unknown_{value}", "n/a", "unknown"
        )
    return LabelIdentity(
        entry.index,
        entry.display_full_name,
        entry.abbreviation,
        entry.display_name,
        entry.side or "n/a",
        entry.region,
    )


def voxel_volume_ml(affine: np.ndarray) -> float:
    """Volume of one voxel in ml (1 ml = 1000 mm^3) from a 4x4 affine in mm."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got {affine.shape}")
    return abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0


def in_plane_area_cm2(affine: np.ndarray) -> float:
    """Area in cm^2 of one voxel face in an axial (x, y) slice: |column_x x column_y| / 100."""
    affine = np.asarray(affine, dtype=np.float64)
    return float(np.linalg.norm(np.cross(affine[:3, 0], affine[:3, 1]))) / 100.0


def label_morphometry(labels_ras: np.ndarray, affine: np.ndarray) -> list[dict]:
    """Shape measures of every non-zero label of a canonical RAS label map.

    Args:
        labels_ras: integer label map, axes (x, y, z) in canonical RAS.
        affine: 4x4 voxel-to-world affine of ``labels_ras`` (mm).

    Returns:
        One dict per label present, ascending label value, with the keys of
        :data:`MORPH_COLUMNS`: ``voxels``; ``volume_ml``; ``slices`` (number of z slices
        containing the label), ``first_slice``/``last_slice`` (z indices); ``max_csa_cm2``, the
        largest in-plane area over z slices, and the slice where it occurs; the centroid in
        RAS world mm; ``components``, the number of 26-connected pieces, and the fraction of
        the voxels in the largest piece.
    """
    labels = np.asarray(labels_ras)
    if labels.ndim != 3:
        raise ValueError(f"expected an (x, y, z) label map, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        rounded = np.rint(labels)
        if not np.array_equal(rounded, labels):
            raise ValueError("label map holds non-integer values")
        labels = rounded.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise ValueError("label map holds negative values")
    affine = np.asarray(affine, dtype=np.float64)
    voxel_ml = voxel_volume_ml(affine)
    face_cm2 = in_plane_area_cm2(affine)
    rows = []
    boxes = (
        ndimage.find_objects(labels.astype(np.int64, copy=False)) if labels.max(initial=0) else []
    )
    for index, box in enumerate(boxes, start=1):
        if box is None:
            continue
        mask = labels[box] == index
        voxels = int(mask.sum())
        if voxels == 0:
            continue
        per_slice = mask.sum(axis=(0, 1))
        occupied = np.flatnonzero(per_slice)
        z0 = box[2].start
        peak = int(np.argmax(per_slice))
        coords = np.argwhere(mask).astype(np.float64) + [s.start for s in box]
        centroid = affine[:3, :3] @ coords.mean(axis=0) + affine[:3, 3]
        pieces, count = ndimage.label(mask, structure=COMPONENT_STRUCTURE)
        sizes = np.bincount(pieces.ravel())[1:]
        identity = identify(index)
        rows.append(
            {
                "label": identity.label,
                "name": identity.name,
                "abbreviation": identity.abbreviation,
                "muscle": identity.muscle,
                "side": identity.side,
                "region": identity.region,
                "voxels": voxels,
                "volume_ml": voxels * voxel_ml,
                "slices": int(occupied.size),
                "first_slice": int(z0 + occupied[0]),
                "last_slice": int(z0 + occupied[-1]),
                "max_csa_cm2": float(per_slice[peak]) * face_cm2,
                "max_csa_slice": int(z0 + peak),
                "centroid_x_mm": float(centroid[0]),
                "centroid_y_mm": float(centroid[1]),
                "centroid_z_mm": float(centroid[2]),
                "components": int(count),
                "largest_component_fraction": float(sizes.max() / voxels),
            }
        )
        if identity.region == "unknown":
            logger.warning("label value %d is not in the Muscles_leg table", index)
    return rows
