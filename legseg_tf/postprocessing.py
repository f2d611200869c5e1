"""Connected-component clean-up of label volumes (QMRITools ``SegmentData``,
``ApplySegmentationNetwork`` and ``PatchesToData``).

QMRITools reduces every label to its largest connected component with face connectivity
(6-connected in 3D, ``CornerNeighbors -> False``), both inside the network application and
in the final merge. The functions here work per label on that label's bounding box, so the
cost scales with the size of the structures, not with the number of labels times the volume.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Collection

import numpy as np
from scipy import ndimage

from legseg_tf import array_threads


def face_structure(ndim: int) -> np.ndarray:
    """Face-connectivity structuring element (6-connected in 3D, 4-connected in 2D)."""
    return ndimage.generate_binary_structure(ndim, 1)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep only the largest face-connected component of a binary mask.

    Args:
        mask: boolean (or 0/1) array of any dimensionality.

    Returns:
        Boolean array of the same shape. Ties between equally large components go to the one
        whose first voxel comes first in C (row-major) order. An empty mask stays empty.
    """
    mask = np.asarray(mask, dtype=bool)
    components, count = ndimage.label(mask, structure=face_structure(mask.ndim))
    if count <= 1:
        return mask.copy()
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def largest_components(mask: np.ndarray, keep: int) -> np.ndarray:
    """Keep the ``keep`` largest face-connected components of a binary mask.

    Args:
        mask: boolean array of any dimensionality.
        keep: number of components to keep (>= 1).

    Returns:
        Boolean array of the same shape. Among equally large components the one labelled first
        (C order of its first voxel) is preferred.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    mask = np.asarray(mask, dtype=bool)
    components, count = ndimage.label(mask, structure=face_structure(mask.ndim))
    if count <= keep:
        return mask.copy()
    sizes = np.bincount(components.ravel())[1:]
    # stable sort on -size keeps the lower component index first among ties
    kept = np.argsort(-sizes, kind="stable")[:keep] + 1
    return np.isin(components, kept)


def _labels_and_columns(labels, own_columns) -> tuple[np.ndarray, np.ndarray]:
    """(z, y, x) labels and an (x,) boolean column mask, checked against each other."""
    labels = np.asarray(labels)
    own_columns = np.asarray(own_columns, dtype=bool)
    if labels.ndim != 3 or own_columns.shape != (labels.shape[2],):
        raise ValueError(
            f"own_columns must have one entry per column: labels {labels.shape}, "
            f"own_columns {own_columns.shape}"
        )
    return labels, own_columns


def largest_own_side_component_per_label(
    labels: np.ndarray,
    own_columns: np.ndarray,
    min_own_fraction: float = 0.5,
    sideless: Collection[int] = (),
) -> np.ndarray:
    """Per label, keep the largest 6-connected component lying mainly on the part's own side.

    A side part extends past the left/right cut into the other leg (QMRITools' 10 % overlap),
    so a network can label the other leg's medial muscles there. When such a piece is larger
    than the own leg's piece of the same muscle, plain largest-component selection would give
    the other leg's muscle this part's side. Here only components with at least
    ``min_own_fraction`` of their voxels in ``own_columns`` compete; labels without such a
    component are removed from the part.

    Args:
        labels: (z, y, x) non-negative integer labels of one part.
        own_columns: (x,) boolean, True for the part's columns on its own side of the cut.
        min_own_fraction: minimum share of a component's voxels on the own side.
        sideless: labels without a side (e.g. the sacrum, on the midline): plain largest
            component, wherever it lies.

    Returns:
        Array of the same shape and dtype.
    """
    labels, own_columns = _labels_and_columns(labels, own_columns)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an integer array, got dtype {labels.dtype}")
    out = labels.copy()
    structure = face_structure(3)

    def clean(index: int, box: tuple[slice, ...]) -> None:
        label_mask = labels[box] == index
        components, count = ndimage.label(label_mask, structure=structure)
        sizes = np.bincount(components.ravel(), minlength=count + 1)
        # the components' voxels in the own columns (outside the label the components are 0,
        # a count that is not used)
        own_sizes = np.bincount(_columns(components, own_columns[box[2]]).ravel(),
                                minlength=count + 1)
        sizes[0] = 0
        eligible = own_sizes >= min_own_fraction * sizes
        if index in sideless:
            eligible[:] = True
        eligible[0] = False
        if not eligible.any():
            out[box][label_mask] = 0
            return
        keep = int(np.argmax(np.where(eligible, sizes, -1)))
        out[box][label_mask & (components != keep)] = 0

    _per_label(clean, labels)
    return out


#: Working memory of the labels cleaned at once (:func:`_per_label`), in bytes.
LABEL_WORK_BYTES = 64 * 2**20
#: Bytes a label's clean-up holds per voxel of its bounding box (the label's mask, int32
#: components, own-side mask and its gather, the voxels to drop).
BYTES_PER_BOX_VOXEL = 12


def _per_label(clean: Callable[[int, tuple[slice, ...]], None], labels: np.ndarray) -> None:
    """``clean(label, its bounding box)`` for every label present, the labels shared out over
    the array threads (:mod:`legseg_tf.array_threads`), as many at once as fit in
    LABEL_WORK_BYTES (at least one: a large volume's labels are cleaned one at a time, as
    without threads). Each call writes only its own label's voxels, so the calls do not
    interact and the result does not depend on the thread count."""
    boxes = [(index, box) for index, box in enumerate(ndimage.find_objects(labels), start=1)
             if box is not None]
    at_once = labels_at_once(max((math.prod(s.stop - s.start for s in box) for _, box in boxes),
                                 default=1))
    array_threads.run_all(lambda item: clean(*item), boxes, max_threads=at_once)


def labels_at_once(largest_box_voxels: int) -> int:
    """How many labels to process side by side when the largest label box has this many
    voxels: as many as fit in LABEL_WORK_BYTES, at least one."""
    return max(1, LABEL_WORK_BYTES // (BYTES_PER_BOX_VOXEL * max(int(largest_box_voxels), 1)))


def _columns(array: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``array[:, :, columns]`` for a boolean ``columns``: a view when the chosen columns are
    one run (the own side of a cut always is), else a copy."""
    hits = np.flatnonzero(columns)
    if hits.size and hits[-1] - hits[0] + 1 == hits.size:
        return array[:, :, hits[0]:hits[-1] + 1]
    return array[:, :, columns]


def clear_other_side(
    labels: np.ndarray, own_columns: np.ndarray, sideless: Collection[int] = ()
) -> np.ndarray:
    """Remove sided labels from the columns beyond the left/right cut.

    A side part sees the other leg through the overlap; whatever it predicts there must not
    reach the output with this part's side (the other leg's part labels those voxels). Labels
    in ``sideless`` (midline structures) are kept everywhere.

    Args:
        labels: (z, y, x) non-negative integer labels of one part.
        own_columns: (x,) boolean, True for the part's columns on its own side of the cut.
        sideless: labels without a side.

    Returns:
        Array of the same shape and dtype; sided labels only in ``own_columns``.
    """
    labels, own_columns = _labels_and_columns(labels, own_columns)
    out = labels.copy()
    other = out[:, :, ~own_columns]
    if sideless:
        other[~np.isin(other, list(sideless))] = 0
    else:
        other[:] = 0
    out[:, :, ~own_columns] = other
    return out


def largest_component_per_label(labels: np.ndarray) -> np.ndarray:
    """Reduce every non-zero label to its largest face-connected component.

    Voxels of the smaller components become 0 (background). Works per label on the label's
    bounding box (``scipy.ndimage.find_objects``), so memory stays at one box per array
    thread.

    Args:
        labels: non-negative integer label array, any dimensionality (usually (z, y, x)).

    Returns:
        Array of the same shape and dtype.
    """
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an integer array, got dtype {labels.dtype}")
    if labels.size == 0:
        return labels.copy()
    if labels.min() < 0:
        raise ValueError("labels must be non-negative")
    out = labels.copy()
    structure = face_structure(labels.ndim)

    def clean(index: int, box: tuple[slice, ...]) -> None:
        label_mask = labels[box] == index
        components, count = ndimage.label(label_mask, structure=structure)
        if count <= 1:
            return
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        drop = label_mask & (components != int(np.argmax(sizes)))
        out[box][drop] = 0

    _per_label(clean, labels)
    return out
