"""The sliding-window merge as it was before the single-tile fast path (frozen reference).

``tests/test_trace_once.py`` checks the current merge against it voxel for voxel, and
``benchmarks/bench_trace_once.py`` times both; one copy serves both.
"""
from __future__ import annotations

import numpy as np

from legseg_tf import sliding_window as sw


def old_predict_probabilities(volume, predict, patch, *, overlap=0.5, batch_size=1,
                              gaussian=True, stride=None):
    """``sliding_window.predict_probabilities`` as it was: every part blended through a
    full-size accumulator, a single tile too. Returns ``(probabilities, n_tiles)``."""
    volume = np.asarray(volume)
    patch = sw.validate_patch(patch, stride) if stride is not None else tuple(patch)
    padded = sw._pad_to(volume, patch)
    tiles = sw._tiles(padded.shape, patch,
                      [sw.tile_starts(s, p, overlap) for s, p in zip(padded.shape, patch)])
    weights = sw.gaussian_importance_map(patch) if gaussian else np.ones(patch, np.float32)
    accumulator = None
    weight_sum = np.zeros(padded.shape, dtype=np.float32)
    for batch in sw._batches(tiles, batch_size):
        outputs = sw._run(predict, padded, batch, patch)
        if accumulator is None:
            accumulator = np.zeros((*padded.shape, outputs.shape[-1]), dtype=np.float32)
        for tile, output in zip(batch, outputs):
            accumulator[tile] += output * weights[..., None]
            weight_sum[tile] += weights
    accumulator /= weight_sum[..., None]
    crop = tuple(slice(0, s) for s in volume.shape)
    return accumulator[crop], len(tiles)
