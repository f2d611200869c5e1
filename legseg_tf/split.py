"""Left/right cut and region crops (QMRITools ``FindMiddle`` and ``SplitDataForSegmentation``).

Arrays are in the QMRITools layout (z, y, x) built from the canonical RAS orientation, so
column 0 is the patient's right-most column: the columns left of the cut (low index) are the
patient's **Right** part and the others the **Left** part. Which legs the image shows (and so
whether it is cut at all) is decided in :mod:`legseg_tf.side`.

Column indices are 0-based; a cut ``c`` means "Right = columns < c, Left = columns >= c".
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from legseg_tf.masking import bounding_box
from legseg_tf.side import BOTH, SIDE_CODES

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitConfig:
    """Split parameters.

    Attributes:
        overlap: fraction of the image width each side part extends past the cut.
        blur_divisors: FindMiddle smoothing tries (Gaussian radius = width / divisor).
    """

    overlap: float = 0.1
    blur_divisors: tuple[int, ...] = (20, 30, 40, 50, 60)


@dataclass(frozen=True)
class Part:
    """One sub-volume sent to a region network.

    Attributes:
        region: "LowerLegs", "UpperLegs" or "Hip".
        side: "L" or "R" (patient side, from geometry).
        data: (z, y, x) float32 crop of the masked volume (non-zero bounding box).
        box: global (z, y, x) slices of ``data`` in the full volume.
    """

    region: str
    side: str
    data: np.ndarray
    box: tuple[slice, slice, slice]

    def box_report(self) -> list[list[int]]:
        """Inclusive-exclusive [start, stop] per axis (z, y, x)."""
        return [[int(s.start), int(s.stop)] for s in self.box]


def find_middle(volume: np.ndarray, config: SplitConfig = SplitConfig()) -> int:
    """Cut column between the legs (QMRITools ``FindMiddle[data, "Legs"]``).

    The intensity profile over columns (volume clipped to [0, 75th percentile of non-zero
    voxels], averaged over slices and rows) is scaled to a maximum of 0.85 * nx; columns below
    0.1 * nx are zeroed; the inverted Gaussian-smoothed profile's local maxima (valleys between
    the legs) within (0.5, 1.5) * mid are candidates and the one closest to
    (mid, 0.75 * 0.85 * nx) wins. Smoothing widens over up to five tries; without a candidate
    the cut is the image centre.

    Args:
        volume: masked (z, y, x) volume.

    Returns:
        The cut c (1 <= c < nx): columns < c form the Right part.
    """
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 3:
        raise ValueError(f"expected a (z, y, x) volume, got shape {volume.shape}")
    nx = volume.shape[2]
    mid = int(np.rint(nx / 2))
    nonzero = volume[volume > 0]
    if nonzero.size == 0 or nx < 3:
        return max(mid, 1)
    top = float(np.percentile(nonzero, 75))
    profile = np.clip(volume, 0.0, top).mean(axis=(0, 1), dtype=np.float64)
    if profile.max() <= 0:
        return max(mid, 1)
    height = 0.85 * nx
    profile = profile * (height / profile.max())
    profile = np.where(profile >= 0.1 * nx, profile, 0.0)
    target = np.array([mid, 0.75 * height])
    for divisor in config.blur_divisors:
        sigma = nx / (2.0 * divisor)
        inverted = height - ndimage.gaussian_filter1d(profile, sigma, mode="nearest", truncate=2.0)
        inner = inverted[1:-1]
        peaks = np.flatnonzero((inner > inverted[:-2]) & (inner >= inverted[2:])) + 1
        if peaks.size >= 5:
            peaks = peaks[1:-1]
        positions = peaks + 1  # 1-based column = number of columns in the Right part
        keep = (positions > 0.5 * mid) & (positions < 1.5 * mid)
        if keep.any():
            candidates = np.stack([positions[keep], inverted[peaks[keep]]], axis=1)
            best = int(np.argmin(np.sum((candidates - target) ** 2, axis=1)))
            return int(np.clip(positions[keep][best], 1, nx - 1))
    return max(mid, 1)


def side_columns(nx: int, side: str, cut: int, overlap: float = 0.1) -> list[tuple[str, slice]]:
    """Column ranges of the side parts: ``[(side code, columns), ...]``.

    For "Both" the Right part is columns [0, cut + over) and the Left part [cut - over, nx),
    ``over = round(overlap * nx)``; a single side gets all columns.
    """
    if side in SIDE_CODES:
        return [(SIDE_CODES[side], slice(0, nx))]
    if side != BOTH:
        raise ValueError(f"side must be Both, Left or Right, got {side!r}")
    over = int(np.rint(overlap * nx))
    return [
        ("R", slice(0, min(cut + over, nx))),
        ("L", slice(max(cut - over, 0), nx)),
    ]


def crop_part(
    volume: np.ndarray, slices: tuple[int, int], columns: slice
) -> tuple[np.ndarray, tuple[slice, slice, slice]] | None:
    """Slab ``slices`` (inclusive) x ``columns`` of ``volume`` cropped to its non-zero box.

    Returns:
        (crop, global box) or None when the slab holds no tissue.
    """
    first, last = slices
    slab = volume[first:last + 1, :, columns]
    box = bounding_box(slab)
    if box is None:
        return None
    z, y, x = box
    global_box = (
        slice(first + z.start, first + z.stop),
        slice(y.start, y.stop),
        slice(columns.start + x.start, columns.start + x.stop),
    )
    return np.ascontiguousarray(slab[box]), global_box


def split_parts(
    volume: np.ndarray,
    side: str,
    cut: int,
    ranges: Mapping[str, tuple[int, int]],
    overlap: float = 0.1,
) -> list[Part]:
    """All (region, side) parts of a masked (z, y, x) volume (QMRITools SplitDataForSegmentation).

    Args:
        volume: masked (z, y, x) float32 volume.
        side: "Both", "Left" or "Right" (see :func:`legseg_tf.side.decide_side`).
        cut: left/right cut column, used when ``side`` is "Both".
        ranges: region -> (first, last) slice, inclusive.
        overlap: fraction of the width each side part extends past the cut.

    Returns:
        Parts in region order, Right before Left; slabs without tissue are left out.
    """
    volume = np.asarray(volume, dtype=np.float32)
    nz, _, nx = volume.shape
    parts: list[Part] = []
    sides = side_columns(nx, side, cut, overlap)
    for region, (first, last) in ranges.items():
        if not 0 <= first <= last < nz:
            raise ValueError(f"range {first}..{last} of {region} outside 0..{nz - 1}")
        for code, columns in sides:
            cropped = crop_part(volume, (first, last), columns)
            if cropped is None:
                logger.warning("no tissue in %s %s slices %d-%d", region, code, first, last)
                continue
            data, box = cropped
            parts.append(Part(region, code, data, box))
    return parts
