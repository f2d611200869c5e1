"""The "Uniform" intensity normalisation QMRITools applies to every network patch.

A 1024-bin histogram equalisation to [0, 1] (QMRITools ``NormDatC``), reproduced exactly:

1. ``lo, hi`` = min and max of the whole patch (zero padding included); if equal, the patch
   is returned unchanged.
2. 1024 equal-width bins over ``[lo, hi)`` (a value equal to ``hi`` falls outside every bin);
   the first bin's count is set to 0, so the background and the darkest intensities do not
   shape the mapping; ``cdf = cumsum(counts) / sum(counts)`` (unchanged patch if the sum is 0).
3. Each voxel ``v`` maps to ``cdf[k - 1]`` with the 1-based index
   ``k = clip(floor(1023 (v - lo) / (hi - lo) + 1), 1, 1024)``.

The bin width (1/1024 of the range) and the lookup scale (1023) differ on purpose: that is the
original recipe, and the networks were trained with it.
"""
from __future__ import annotations

import numpy as np

from legseg_tf import array_threads

N_BINS = 1024


def uniform_normalise(patch: np.ndarray) -> np.ndarray:
    """Histogram-equalise one patch to [0, 1].

    Args:
        patch: array of any shape (e.g. (z, y, x)), any real dtype.

    Returns:
        float32 array of the same shape; the patch's minimum (the zero background) maps to 0.
    """
    values = np.asarray(patch)
    if values.size == 0:
        return values.astype(np.float32)
    lo, hi = float(values.min()), float(values.max())
    if lo == hi:
        return np.asarray(patch, dtype=np.float32)
    # the voxels at the minimum (the zero background: often most of a patch) fall in the
    # first bin, whose count is dropped, and map to cdf[0] = 0: only the others are binned;
    # pieces of the patch are binned and mapped on the array threads (integer counts summed:
    # the same cdf whatever the split)
    flat = values.reshape(-1)
    pieces = array_threads.pieces(flat.size)

    def scale(piece: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        above = flat[piece] > lo
        scaled = (flat[piece][above].astype(np.float64) - lo) / (hi - lo)
        bins = np.minimum((scaled[scaled < 1.0] * N_BINS).astype(np.int64), N_BINS - 1)
        return above, scaled, np.bincount(bins, minlength=N_BINS)

    scaled_pieces = array_threads.run_all(scale, pieces)
    counts = sum(counts for _, _, counts in scaled_pieces).astype(np.float64)
    counts[0] = 0.0
    total = counts.sum()
    if total == 0:
        return np.asarray(patch, dtype=np.float32)
    cdf = np.cumsum(counts) / total
    out = np.zeros(flat.size, dtype=np.float32)

    def look_up(item: tuple[slice, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        piece, (above, scaled, _) = item
        index = np.clip(np.floor((N_BINS - 1) * scaled + 1.0), 1, N_BINS).astype(np.int64) - 1
        out[piece][above] = cdf[index]

    array_threads.run_all(look_up, zip(pieces, scaled_pieces))
    return out.reshape(values.shape)
