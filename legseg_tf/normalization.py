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

N_BINS = 1024


def uniform_normalise(patch: np.ndarray) -> np.ndarray:
    """Histogram-equalise one patch to [0, 1].

    Args:
        patch: array of any shape (e.g. (z, y, x)), any real dtype.

    Returns:
        float32 array of the same shape; the patch's minimum (the zero background) maps to 0.
    """
    values = np.asarray(patch, dtype=np.float64)
    if values.size == 0:
        return values.astype(np.float32)
    lo, hi = float(values.min()), float(values.max())
    if lo == hi:
        return np.asarray(patch, dtype=np.float32)
    scaled = (values - lo) / (hi - lo)
    inside = scaled < 1.0
    bins = np.minimum((scaled[inside] * N_BINS).astype(np.int64), N_BINS - 1)
    counts = np.bincount(bins, minlength=N_BINS).astype(np.float64)
    counts[0] = 0.0
    total = counts.sum()
    if total == 0:
        return np.asarray(patch, dtype=np.float32)
    cdf = np.cumsum(counts) / total
    index = np.clip(np.floor((N_BINS - 1) * scaled + 1.0), 1, N_BINS).astype(np.int64) - 1
    return cdf[index].astype(np.float32)
