"""Merge the label crops of all parts into one volume (QMRITools ``PatchesToData``).

For every final label, in ascending order: the union of that label over all parts (pasted at
their global boxes), reduced to its largest 6-connected component; a voxel claimed by several
labels goes to the lowest label (so a Left muscle, odd, beats the Right one, and lower-leg
labels beat upper-leg ones).

Memory: each label is assembled on the union of its bounding boxes in the parts it occurs in,
never as a full-size mask, so the cost is one output volume plus the label boxes assembled at
once: one per array thread, as many as fit in the clean-up's working memory
(:data:`legseg_tf.postprocessing.LABEL_WORK_BYTES`).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from legseg_tf import array_threads
from legseg_tf.postprocessing import labels_at_once, largest_component

LabelCrop = tuple[np.ndarray, tuple[slice, ...]]


def _validate(parts: Sequence[LabelCrop], shape: tuple[int, ...]) -> None:
    for index, (labels, box) in enumerate(parts):
        if len(box) != len(shape):
            raise ValueError(f"part {index}: box has {len(box)} axes, volume has {len(shape)}")
        extent = tuple(s.stop - s.start for s in box)
        if labels.shape != extent:
            raise ValueError(f"part {index}: labels {labels.shape} do not fit box extent {extent}")
        if any(s.start < 0 or s.stop > n for s, n in zip(box, shape)):
            raise ValueError(f"part {index}: box {box} outside volume {shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"part {index}: labels must be integers, got {labels.dtype}")
        if labels.size and labels.min() < 0:
            raise ValueError(f"part {index}: negative labels")


def merge_parts(
    parts: Sequence[LabelCrop], shape: tuple[int, ...], dtype: type = np.uint16
) -> np.ndarray:
    """Merge labelled crops into a full volume.

    Args:
        parts: ``(labels, box)`` pairs: an integer label crop and its global box (one slice
            per axis, the crop's exact extent).
        shape: shape of the full volume, e.g. (z, y, x).
        dtype: output integer dtype.

    Returns:
        Label volume of ``shape``; every label is one 6-connected component, no voxel has two
        labels, overlaps went to the lowest label.
    """
    shape = tuple(int(n) for n in shape)
    _validate(parts, shape)
    out = np.zeros(shape, dtype=dtype)
    # per part, per label: bounding box inside the part
    objects = [ndimage.find_objects(np.asarray(labels)) if labels.size else []
               for labels, _ in parts]
    all_labels = sorted({i + 1 for boxes in objects for i, b in enumerate(boxes) if b is not None})
    # where each label lies: (its crop in a part, global start) per part, and its union box
    where: dict[int, list] = {}
    for label in all_labels:
        for (labels, box), boxes in zip(parts, objects):
            if label - 1 < len(boxes) and boxes[label - 1] is not None:
                local = boxes[label - 1]
                start = tuple(b.start + s.start for b, s in zip(box, local))
                where.setdefault(label, []).append((labels[local], start))
    union_boxes = {
        label: (np.min([start for _, start in pieces], axis=0),
                np.max([np.add(start, crop.shape) for crop, start in pieces], axis=0))
        for label, pieces in where.items()}

    def largest_union(label: int) -> np.ndarray:
        lo, hi = union_boxes[label]
        union = np.zeros(tuple(hi - lo), dtype=bool)
        for crop, start in where[label]:
            offset = tuple(slice(a - b, a - b + n) for a, b, n in zip(start, lo, crop.shape))
            union[offset] |= crop == label
        return largest_component(union)

    # the labels' components on the array threads (as many at once as fit in the clean-up's
    # working memory), written in ascending label order: the lowest label wins overlaps
    at_once = labels_at_once(max((int(np.prod(hi - lo)) for lo, hi in union_boxes.values()),
                                 default=1))
    for first in range(0, len(all_labels), at_once):
        batch = all_labels[first:first + at_once]
        for label, union in zip(batch, array_threads.run_all(largest_union, batch,
                                                             max_threads=at_once)):
            lo, hi = union_boxes[label]
            target = out[tuple(slice(a, b) for a, b in zip(lo, hi))]
            target[union & (target == 0)] = label
    return out


ProbabilityCrop = tuple[np.ndarray, tuple[slice, ...], Sequence[int]]


def merge_probabilities(
    parts: Sequence[ProbabilityCrop], shape: tuple[int, ...], label_map: Sequence[int]
) -> np.ndarray:
    """Per-label probability volume from the parts' class probabilities.

    Each part contributes its class channels at its global box under the final label of the
    channel; where parts overlap the larger probability is kept.

    Args:
        parts: ``(probabilities, box, channel_labels)``: (z, y, x, n) float probabilities of
            a part, its global box, and the final label of each of the n channels (0 = skip).
        shape: spatial shape of the full volume.
        label_map: final labels, one output channel each, in output order.

    Returns:
        float32 array ``shape + (len(label_map),)``; 0 where no part predicted a label.
    """
    shape = tuple(int(n) for n in shape)
    channel_of = {int(label): k for k, label in enumerate(label_map)}
    out = np.zeros(shape + (len(channel_of),), dtype=np.float32)
    for index, (probabilities, box, channel_labels) in enumerate(parts):
        probabilities = np.asarray(probabilities, dtype=np.float32)
        extent = tuple(s.stop - s.start for s in box)
        if probabilities.shape != extent + (len(channel_labels),):
            raise ValueError(
                f"part {index}: probabilities {probabilities.shape} do not fit box extent "
                f"{extent} with {len(channel_labels)} channels"
            )
        for channel, label in enumerate(channel_labels):
            k = channel_of.get(int(label))
            if k is None:
                continue
            view = out[tuple(box) + (k,)]
            np.maximum(view, probabilities[..., channel], out=view)
    return out
