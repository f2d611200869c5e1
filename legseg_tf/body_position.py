"""Per-slice side and body-position classification and the region staircase
(QMRITools ``ClassifyData``, ``FindBodyPos``, ``MakeClassifyImage``).

The classifier sees one 2-D image per axial slice (:func:`classifier_images`), predicts a side
(Left/Right/Both) and a body position (Lower ... Head) per slice. The side is the majority
vote; the positions are mapped to levels 1..8 and fitted by a monotone staircase
(:func:`fit_body_positions`, an exact dynamic program), from which each region's slice range
follows (:func:`region_ranges`).

Slice indices: QMRITools drops the empty slices at both ends before classifying (the volume is
cropped to its non-zero box plus 5 slices) and then applies the resulting ranges to the
uncropped volume, which shifts them by the number of dropped inferior slices whenever the
tissue does not reach the first slice. Here every range is mapped back to the uncropped volume
(:attr:`ClassifierImages.slices` holds the volume slice index of every image), so ranges always
refer to the slices that were classified.

Arrays are in the QMRITools layout (z, y, x); slice 0 is the most inferior.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from scipy import ndimage

from legseg_tf.masking import bounding_box

logger = logging.getLogger(__name__)

POSITION_CLASSES = ("Lower", "Knee", "Upper", "Hip", "Torso", "Shoulder", "Neck", "Head")
#: Level of each position class (Lower = 1 ... Head = 8).
POSITION_LEVELS = {name: level for level, name in enumerate(POSITION_CLASSES, start=1)}
#: Side classes of the classifier (QMRITools tests for "Both"; the others name the leg).
SIDE_CLASSES = ("Left", "Right", "Both")

#: Position levels that make up each region.
REGION_LEVELS: dict[str, tuple[int, ...]] = {
    "LowerLegs": (1, 2),
    "UpperLegs": (2, 3, 4),
    "Hip": (4,),
    "Torso": (5, 6, 7),
    "Shoulder": (5, 6, 7),
    "HeadNeck": (7, 8),
}
#: Slices added before/after each region's fitted range.
REGION_OFFSETS: dict[str, tuple[int, int]] = {
    "Hip": (-20, 10),
    "Torso": (-20, 0),
    "Shoulder": (-10, 0),
    "HeadNeck": (-10, 0),
}


@dataclass(frozen=True)
class ClassifierConfig:
    """Classifier preprocessing and staircase parameters.

    Attributes:
        image_size: (height, width) of the classifier input (read from the network when known).
        volume_padding: voxels added around the volume's non-zero box before slicing.
        slice_padding: pixels added around each slice's non-zero box.
        min_slice_sum: slices whose intensity sum is below this give an all-zero image.
        min_step_gap: minimum distance in slices between two steps of the staircase.
        median_radius: radius of the median filter applied before the fit.
        pad_from_filtered: take the staircase's end levels from the median-filtered positions
            (see :func:`fit_body_positions`).
    """

    image_size: tuple[int, int] = (128, 128)
    volume_padding: int = 5
    slice_padding: int = 5
    min_slice_sum: float = 10.0
    min_step_gap: int = 6
    median_radius: int = 2
    pad_from_filtered: bool = True


@dataclass(frozen=True)
class ClassifierImages:
    """Classifier input.

    Attributes:
        images: (n, height, width) float32 in [0, 1], one per classified slice.
        slices: (n,) index of each image's slice in the uncropped (z, y, x) volume.
    """

    images: np.ndarray
    slices: np.ndarray


class SliceClassifier(Protocol):
    """Predicts side and body position for a batch of slice images."""

    def __call__(self, images: np.ndarray) -> tuple[Sequence[str], Sequence[str]]:
        """Classify (n, height, width) [0, 1] images; return (sides, positions), n names each."""


@dataclass(frozen=True)
class BodyClassification:
    """Result of classifying a volume.

    Attributes:
        side: majority side over the classified slices ("Left", "Right" or "Both").
        slices: volume slice index of each classified slice.
        slice_sides: per-slice side predictions.
        raw_positions: per-slice position predictions.
        fitted_levels: staircase level per classified slice (may hold min-1 / max+1 at the ends).
        ranges: region -> (first, last) slice of the uncropped volume, inclusive.
    """

    side: str
    slices: np.ndarray
    slice_sides: tuple[str, ...]
    raw_positions: tuple[str, ...]
    fitted_levels: np.ndarray
    ranges: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def fitted_positions(self) -> tuple[str, ...]:
        """Fitted position name per classified slice ("None" outside the known levels)."""
        return tuple(level_name(int(level)) for level in self.fitted_levels)

    def to_report(self) -> dict:
        """JSON-serialisable summary for the segmentation report."""
        return {
            "side": self.side,
            "side_votes": dict(Counter(self.slice_sides)),
            "slices": [int(s) for s in self.slices],
            "raw_positions": list(self.raw_positions),
            "fitted_positions": list(self.fitted_positions),
            "ranges": {name: [int(a), int(b)] for name, (a, b) in self.ranges.items()},
        }


def level_name(level: int) -> str:
    """Position name of a staircase level, "None" when outside 1..8."""
    return POSITION_CLASSES[level - 1] if 1 <= level <= len(POSITION_CLASSES) else "None"


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D image to ``size`` (height, width), aspect ratio not kept.

    Pixel centres are aligned as in image resizing (the first and last output pixels sit half
    an output pixel inside the image edges); samples beyond the edge repeat the edge value.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"resize_image expects a 2-D image, got shape {image.shape}")
    height, width = size
    rows = (np.arange(height) + 0.5) * (image.shape[0] / height) - 0.5
    cols = (np.arange(width) + 0.5) * (image.shape[1] / width) - 0.5
    grid = np.meshgrid(rows, cols, indexing="ij")
    return ndimage.map_coordinates(image, grid, order=1, mode="nearest").astype(np.float32)


def slice_image(
    slice_yx: np.ndarray, size: tuple[int, int], padding: int = 5, min_sum: float = 10.0
) -> np.ndarray:
    """Classifier image of one (y, x) slice: crop to tissue + padding, min-max, resize.

    Returns:
        (height, width) float32 in [0, 1]; all zeros when the slice sum is below ``min_sum``.
    """
    slice_yx = np.asarray(slice_yx, dtype=np.float32)
    if float(slice_yx.sum()) < min_sum:
        return np.zeros(size, dtype=np.float32)
    box = bounding_box(slice_yx, padding)
    crop = slice_yx[box]
    lo, hi = float(crop.min()), float(crop.max())
    scaled = (crop - lo) / (hi - lo) if hi > lo else np.zeros_like(crop)
    return np.clip(resize_image(scaled, size), 0.0, 1.0)


def classifier_images(
    masked_volume: np.ndarray, config: ClassifierConfig = ClassifierConfig()
) -> ClassifierImages:
    """Per-slice classifier images of a masked (z, y, x) volume (QMRITools MakeClassifyImage).

    The volume is cropped to its non-zero box plus ``config.volume_padding`` voxels on all
    axes; every slice of that crop gives one image.

    Returns:
        :class:`ClassifierImages`; empty (0 images) when the volume has no non-zero voxel.
    """
    volume = np.asarray(masked_volume, dtype=np.float32)
    if volume.ndim != 3:
        raise ValueError(f"expected a (z, y, x) volume, got shape {volume.shape}")
    box = bounding_box(volume, config.volume_padding)
    if box is None:
        empty = np.zeros((0, *config.image_size), dtype=np.float32)
        return ClassifierImages(empty, np.zeros(0, dtype=np.int64))
    cropped = volume[box]
    images = np.stack([
        slice_image(s, config.image_size, config.slice_padding, config.min_slice_sum)
        for s in cropped
    ])
    slices = np.arange(box[0].start, box[0].stop, dtype=np.int64)
    return ClassifierImages(images, slices)


def majority_side(sides: Sequence[str]) -> str:
    """Most frequent side; ties go to "Both" when it is among the most frequent, else to the
    side that appears first in ``SIDE_CLASSES``."""
    if len(sides) == 0:
        raise ValueError("no side predictions to vote on")
    counts = Counter(sides)
    top = max(counts.values())
    winners = [s for s in counts if counts[s] == top]
    if "Both" in winners:
        return "Both"
    order = {name: i for i, name in enumerate(SIDE_CLASSES)}
    return min(winners, key=lambda s: (order.get(s, len(order)), s))


def staircase_fit(values: Sequence[int], min_gap: int = 6) -> np.ndarray:
    """Exact monotone staircase fit by dynamic programming.

    Finds integers x_0..x_{n-1} minimising sum |x_i - values_i| subject to x_0 = min(values),
    x_{n-1} = max(values), x_{i+1} - x_i in {0, 1} and any two steps at least ``min_gap``
    positions apart (the landing positions of consecutive steps differ by >= min_gap). Equal
    optima are resolved deterministically.

    Args:
        values: integer sequence (e.g. padded, median-filtered position levels).
        min_gap: minimum step distance (>= 1).

    Returns:
        int64 array of fitted levels, same length as ``values``.

    Raises:
        ValueError: when no sequence satisfies the constraints (too few positions for the
            number of steps).
    """
    c = np.asarray(values, dtype=np.int64)
    if c.ndim != 1 or c.size == 0:
        raise ValueError("values must be a non-empty 1-D sequence")
    if min_gap < 1:
        raise ValueError(f"min_gap must be >= 1, got {min_gap}")
    n, lo, hi = c.size, int(c.min()), int(c.max())
    steps = hi - lo
    if steps == 0:
        return np.full(n, lo, dtype=np.int64)
    if 1 + (steps - 1) * min_gap > n - 1:
        raise ValueError(
            f"{steps} steps at least {min_gap} apart do not fit in {n} positions"
        )
    levels = np.arange(steps + 1)
    gap = min_gap  # state "a": positions since the last landing, capped at gap (= free)
    inf = np.iinfo(np.int64).max // 4
    cost = np.full((steps + 1, gap + 1), inf, dtype=np.int64)
    cost[0, gap] = abs(int(c[0]) - lo)
    # back[t, k, a] = encoded predecessor state (k_prev * (gap + 1) + a_prev)
    back = np.zeros((n, steps + 1, gap + 1), dtype=np.int32)
    for t in range(1, n):
        new = np.full_like(cost, inf)
        prev = np.zeros((steps + 1, gap + 1), dtype=np.int32)
        # step: from (k - 1, a >= gap - 1) to (k, 0)
        candidates = cost[:-1, gap - 1:]
        best = np.argmin(candidates, axis=1)
        new[1:, 0] = candidates[np.arange(steps), best]
        prev[1:, 0] = (levels[:-1] * (gap + 1) + (gap - 1 + best)).astype(np.int32)
        # stay: (k, a) -> (k, min(a + 1, gap))
        for a in range(gap + 1):
            target = min(a + 1, gap)
            better = cost[:, a] <= new[:, target]
            new[better, target] = cost[better, a]
            prev[better, target] = (levels[better] * (gap + 1) + a).astype(np.int32)
        finite = new < inf
        new[finite] += np.abs(c[t] - (lo + levels))[:, None].repeat(gap + 1, axis=1)[finite]
        cost, back[t] = new, prev
    a_end = int(np.argmin(cost[steps]))
    if cost[steps, a_end] >= inf:
        raise ValueError("no feasible staircase")  # unreachable after the check above
    fitted = np.empty(n, dtype=np.int64)
    k, a = steps, a_end
    for t in range(n - 1, -1, -1):
        fitted[t] = lo + k
        if t:
            k, a = divmod(int(back[t, k, a]), gap + 1)
    return fitted


def fit_body_positions(
    levels: Sequence[int],
    min_gap: int = 6,
    median_radius: int = 2,
    pad_from_filtered: bool = True,
) -> np.ndarray:
    """QMRITools ``FindBodyPos``: pad, median-filter and staircase-fit per-slice levels.

    ``pad = max(5, round(0.05 n))`` copies of ``min - 1`` are prepended and of ``max + 1``
    appended; a median filter of radius ``median_radius`` (edges repeat) smooths the padded
    sequence; :func:`staircase_fit` fits it and the padding is stripped. When the steps do not
    fit ``min_gap`` apart (very short volumes), the gap is reduced until they do, with a
    warning.

    ``min`` and ``max`` are taken from the median-filtered levels when ``pad_from_filtered``
    (default): the staircase must visit every level between them for ``min_gap`` slices, so
    with the raw extremes a single misclassified slice forces a whole extra region (one
    "Knee" slice in a thigh stack sent the first thigh slices to the lower-leg network).

    Args:
        levels: per-slice integer levels (Lower = 1 ... Head = 8), inferior slice first.
        min_gap: minimum distance in slices between two steps.
        median_radius: radius of the median filters.
        pad_from_filtered: take the padding levels from the filtered sequence.

    Returns:
        int64 array of fitted levels, one per input slice.
    """
    c = np.asarray(levels, dtype=np.int64)
    if c.ndim != 1 or c.size == 0:
        raise ValueError("levels must be a non-empty 1-D sequence")
    n = c.size
    pad = max(5, int(np.rint(0.05 * n)))
    size = 2 * median_radius + 1
    extremes = ndimage.median_filter(c, size=size, mode="nearest") if pad_from_filtered else c
    padded = np.concatenate([
        np.full(pad, extremes.min() - 1), c, np.full(pad, extremes.max() + 1)
    ])
    filtered = ndimage.median_filter(padded, size=size, mode="nearest")
    gap = min_gap
    while True:
        try:
            fitted = staircase_fit(filtered, gap)
            break
        except ValueError:
            if gap <= 1:
                raise
            gap -= 1
    if gap != min_gap:
        logger.warning("staircase steps relaxed to %d slices apart (%d slices)", gap, n)
    return fitted[pad:pad + n]


def region_ranges(
    fitted_levels: np.ndarray,
    slices: np.ndarray,
    regions: Sequence[str],
) -> dict[str, tuple[int, int]]:
    """Slice range of each region, mapped to the uncropped volume.

    For each region: first and last classified slice whose fitted level belongs to the region
    (:data:`REGION_LEVELS`), widened by :data:`REGION_OFFSETS`, clipped to the classified
    slices, then translated to volume slice indices through ``slices``. Regions that are not
    present, or whose range is a single slice, are left out (QMRITools drops start == end).

    Args:
        fitted_levels: (n,) staircase level per classified slice.
        slices: (n,) consecutive volume slice indices of the classified slices.
        regions: region names, keys of :data:`REGION_LEVELS`.

    Returns:
        region -> (first, last) volume slice, inclusive, in the order of ``regions``.
    """
    fitted_levels = np.asarray(fitted_levels)
    slices = np.asarray(slices)
    if fitted_levels.shape != slices.shape:
        raise ValueError("fitted_levels and slices must have the same length")
    if slices.size > 1 and np.any(np.diff(slices) != 1):
        raise ValueError("slices must be consecutive")
    ranges: dict[str, tuple[int, int]] = {}
    n = fitted_levels.size
    for region in regions:
        if region not in REGION_LEVELS:
            raise ValueError(f"unknown region {region!r}; known: {sorted(REGION_LEVELS)}")
        hits = np.flatnonzero(np.isin(fitted_levels, REGION_LEVELS[region]))
        if hits.size == 0:
            continue
        before, after = REGION_OFFSETS.get(region, (0, 0))
        first = int(np.clip(hits[0] + before, 0, n - 1))
        last = int(np.clip(hits[-1] + after, 0, n - 1))
        if first == last:
            continue
        ranges[region] = (int(slices[first]), int(slices[last]))
    return ranges


def classify_body(
    masked_volume: np.ndarray,
    classifier: SliceClassifier,
    regions: Sequence[str],
    config: ClassifierConfig = ClassifierConfig(),
) -> BodyClassification:
    """Side and region slice ranges of a masked (z, y, x) volume.

    Args:
        masked_volume: body-masked (z, y, x) volume.
        classifier: callable returning per-slice side and position names.
        regions: regions whose ranges are wanted (e.g. ("LowerLegs", "UpperLegs")).
        config: preprocessing and fit parameters.

    Raises:
        ValueError: empty volume, or classifier output of the wrong length or unknown names.
    """
    inputs = classifier_images(masked_volume, config)
    if inputs.images.shape[0] == 0:
        raise ValueError("the body mask is empty: nothing to classify")
    sides, positions = classifier(inputs.images)
    sides, positions = tuple(str(s) for s in sides), tuple(str(p) for p in positions)
    n = inputs.images.shape[0]
    if len(sides) != n or len(positions) != n:
        raise ValueError(
            f"classifier returned {len(sides)} sides and {len(positions)} positions "
            f"for {n} slices"
        )
    unknown = sorted(set(positions) - set(POSITION_LEVELS))
    if unknown:
        raise ValueError(f"unknown position classes {unknown}; known: {POSITION_CLASSES}")
    levels = np.array([POSITION_LEVELS[p] for p in positions])
    fitted = fit_body_positions(levels, config.min_step_gap, config.median_radius,
                                config.pad_from_filtered)
    return BodyClassification(
        side=majority_side(sides),
        slices=inputs.slices,
        slice_sides=sides,
        raw_positions=positions,
        fitted_levels=fitted,
        ranges=region_ranges(fitted, inputs.slices, regions),
    )
