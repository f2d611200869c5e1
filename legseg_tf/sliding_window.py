"""legseg's own sliding-window patch merger: network-agnostic, pure NumPy bookkeeping.

Volumes are (z, y, x) arrays; a ``predict`` callable maps a float32 batch of tiles
(b, pz, py, px, 1) to per-class outputs (b, pz, py, px, C). The Gaussian merge of several tiles
weights a writeable output array in place (a read-only one is copied first), so ``predict``
must return arrays it does not use again. Two ways of merging tiles:

* :func:`blend_tiles` (default, "gaussian"; :func:`predict_probabilities` when every class's
  blend is wanted): evenly spaced tiles (first at 0, last flush with the border, nnU-Net's
  placement), each tile's softmax weighted by a Gaussian importance map (sigma = patch / 8)
  and blended in float32. Memory: a float32 accumulator and weight sum one tile deep along the
  first tiled axis (slabs no later tile reaches are divided, arg-maxed and dropped), the
  labels and the winner's probability; bit-identical to a full-size accumulator. When one
  tile covers the volume (a leg part that fits the memory budget, the usual case) only its
  output, cropped to the volume, is weighted and divided by the same weights (bit-identical
  to blending it): no accumulator, no weight sum.
* :func:`predict_hard_labels` ("qmritools"): the original patch layout (minimal, uneven
  overlap) with arg-max labels per tile merged as a per-label union, lowest label winning
  overlaps (spec sections 2.3 and 1.9).

Volumes smaller than the patch are zero-padded at the end (as QMRITools does) and the result is
cropped back.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from legseg_tf import array_threads

Predict = Callable[[np.ndarray], np.ndarray]


def validate_patch(patch: tuple[int, ...], stride: tuple[int, ...]) -> tuple[int, ...]:
    """Check that every patch edge is a positive multiple of the network's total stride."""
    patch = tuple(int(p) for p in patch)
    stride = tuple(int(s) for s in stride)
    if len(patch) != len(stride):
        raise ValueError(f"patch {patch} and stride {stride} have different dimensions")
    bad = [(p, s) for p, s in zip(patch, stride) if s < 1 or p < s or p % s]
    if bad:
        raise ValueError(
            f"patch size {patch} must be a positive multiple of the network stride {stride} per axis"
        )
    return patch


def tile_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Evenly spaced tile starts along one axis: first at 0, last at ``size - patch``.

    ``n = ceil((size - patch) / (patch * (1 - overlap))) + 1`` tiles (nnU-Net's rule), so
    neighbouring tiles overlap by at least ``overlap`` of a tile.

    >>> tile_starts(200, 96, 0.5)
    [0, 35, 69, 104]
    >>> tile_starts(50, 96, 0.5)
    [0]
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if size <= patch:
        return [0]
    step = max(patch * (1.0 - overlap), 1.0)
    n = math.ceil((size - patch) / step) + 1
    return [int(round(i * (size - patch) / (n - 1))) for i in range(n)]


def qmritools_tile_starts(size: int, patch: int) -> list[int]:
    """QMRITools' patch layout along one axis (spec 2.3, no padding, PatchNumber 0)."""
    if size <= patch:
        return [0]
    n = math.ceil(size / patch)
    if n <= 1:
        return [0]
    return [int(round(v)) for v in np.linspace(0.0, 1.0, n) * (size - patch)]


@lru_cache(maxsize=4)
def _gaussian(patch: tuple[int, ...], sigma_scale: float) -> np.ndarray:
    weights = np.ones(patch, dtype=np.float64)
    for axis, n in enumerate(patch):
        centre = (n - 1) / 2.0
        sigma = max(n * sigma_scale, 1e-6)
        profile = np.exp(-((np.arange(n) - centre) ** 2) / (2.0 * sigma**2))
        shape = [1] * len(patch)
        shape[axis] = n
        weights = weights * profile.reshape(shape)
    weights /= weights.max()
    positive = weights[weights > 0]
    weights = np.maximum(weights, positive.min() if positive.size else 1.0)
    result = weights.astype(np.float32)
    result.setflags(write=False)
    return result


def gaussian_importance_map(patch: tuple[int, ...], sigma_scale: float = 0.125) -> np.ndarray:
    """Separable Gaussian weights (peak 1, sigma = ``sigma_scale`` x patch, no zeros)."""
    return _gaussian(tuple(int(p) for p in patch), float(sigma_scale))


def _pad_to(volume: np.ndarray, patch: tuple[int, ...]) -> np.ndarray:
    pad = [(0, max(p - s, 0)) for s, p in zip(volume.shape, patch)]
    if not any(after for _, after in pad):
        return volume
    return np.pad(volume, pad, mode="constant")


def _tiles(shape: tuple[int, ...], patch: tuple[int, ...], starts_per_axis) -> list[tuple[slice, ...]]:
    return [
        tuple(slice(s, s + p) for s, p in zip(corner, patch))
        for corner in itertools.product(*starts_per_axis)
    ]


def _batches(tiles: list, batch_size: int) -> Iterator[list]:
    for first in range(0, len(tiles), batch_size):
        yield tiles[first:first + batch_size]


def _run(predict: Predict, volume: np.ndarray, batch: list, patch: tuple[int, ...]) -> np.ndarray:
    inputs = np.stack([volume[tile] for tile in batch])[..., None].astype(np.float32, copy=False)
    outputs = np.asarray(predict(inputs))
    if outputs.ndim != len(patch) + 2 or outputs.shape[:-1] != (len(batch), *patch):
        raise ValueError(
            f"predict returned shape {outputs.shape} for a batch of shape {inputs.shape}"
        )
    if not np.all(np.isfinite(outputs)):
        raise FloatingPointError("the network produced non-finite values")
    return outputs


@dataclass
class Blended:
    """Result of :func:`blend_tiles` on a (z, y, x) volume.

    Attributes:
        labels: (z, y, x) int16 arg-max of the blended outputs.
        top: (z, y, x) float32 blended output of the winning class.
        n_classes: output channels of the network.
        n_tiles: tiles run.
        probabilities: (z, y, x, C) float32 blended outputs, when asked for.
    """

    labels: np.ndarray
    top: np.ndarray
    n_classes: int
    n_tiles: int
    probabilities: np.ndarray | None = None


def blend_tiles(
    volume: np.ndarray,
    predict: Predict,
    patch: tuple[int, ...],
    *,
    overlap: float = 0.5,
    batch_size: int = 1,
    gaussian: bool = True,
    stride: tuple[int, ...] | None = None,
    keep_probabilities: bool = False,
) -> Blended:
    """Blend tile predictions over a whole volume; labels, the winner's output, and optionally
    every class's blended output.

    Tiles run in row-major order of their corners, so along the first axis that has several
    tile starts they arrive sorted. Once every tile starting before position ``s`` on that
    axis has run, the slab before ``s`` is final: it is divided by its weights, arg-maxed and
    dropped. The accumulator therefore spans one tile along that axis (plus the other axes'
    full extent), not the volume. Every voxel still adds the same tiles in the same order in
    float32, so labels and probabilities are bit-identical to a full-size accumulator.

    Args:
        volume, predict, patch, overlap, batch_size, gaussian, stride: as in
            :func:`predict_probabilities`.
        keep_probabilities: also return the (z, y, x, C) blended outputs.
    """
    volume = np.asarray(volume)
    patch = validate_patch(patch, stride) if stride is not None else tuple(int(p) for p in patch)
    if volume.ndim != len(patch):
        raise ValueError(f"volume of shape {volume.shape} does not match patch {patch}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    padded = _pad_to(volume, patch)
    starts = [tile_starts(s, p, overlap) for s, p in zip(padded.shape, patch)]
    tiles = _tiles(padded.shape, patch, starts)
    crop = tuple(slice(0, s) for s in volume.shape)
    if len(tiles) == 1:
        # One tile covers the whole volume: no accumulator, no weight sum, nothing outside the
        # crop. Weighting and dividing by the same weights changes the softmax only by float
        # rounding (<= 1 ulp); it is kept so that labels (arg-max ties) and probabilities stay
        # bit-identical to blending the one tile (without saved probabilities a few slices at
        # a time, in a small scratch array).
        output = _run(predict, padded, tiles, patch)[0][crop]
        if gaussian and not keep_probabilities:
            labels, top = _weighted_winners(output, gaussian_importance_map(patch)[crop])
            return Blended(labels, top, output.shape[-1], 1)
        if gaussian:
            output = _weighted(output, gaussian_importance_map(patch)[crop])
        elif keep_probabilities and not output.flags.writeable:
            output = output.copy()   # the caller owns the probabilities it is given
        labels, top = _winners(output)
        return Blended(labels, top, output.shape[-1], 1, output if keep_probabilities else None)
    return _StreamingBlend(volume.shape, padded.shape, patch, starts, gaussian,
                           keep_probabilities).run(predict, padded, tiles, batch_size)


#: Bytes of scratch (over all threads) in which :func:`_weighted_winners` weights a single
#: tile.
SLAB_BYTES = 16 * 2**20


def _weighted_winners(output: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_winners` of ``output * weights / weights`` (a single tile's blend, with the
    accumulator's rounding), a few slices at a time: slab-sized scratch arrays instead of a
    weighted copy of every class's output (the same operations on the same values, so the
    same labels and winner's values). The slices are shared out over the array threads
    (:mod:`legseg_tf.array_threads`), each with its own scratch.

    Args:
        output: (z, y, x, C) network output of the tile (may be read-only).
        weights: (z, y, x) blending weights.
    """
    shape = output.shape[:-1]
    dtype = np.result_type(output.dtype, weights.dtype)
    row_elements = math.prod(output.shape[1:])
    if SLAB_BYTES >= dtype.itemsize * row_elements * shape[0]:   # a small tile: weighted whole
        return _winners(_weighted(output, weights))
    labels = np.empty(shape, dtype=np.int16)
    top = np.empty(shape, dtype=np.float32)
    shares = array_threads.pieces(shape[0], row_elements)
    step = max(1, SLAB_BYTES // (len(shares) * dtype.itemsize * row_elements))

    def share(rows: slice) -> None:
        scratch = np.empty((min(step, rows.stop - rows.start), *output.shape[1:]), dtype=dtype)
        for start in range(rows.start, rows.stop, step):
            stop = min(start + step, rows.stop)
            slab = _weigh(output[start:stop], weights[start:stop], scratch[:stop - start])
            labels[start:stop], top[start:stop] = _slab_winners(slab)

    array_threads.run_all(share, shares)
    return labels, top


def _weigh(output: np.ndarray, weights: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``output * weights / weights`` over the class axis (into ``out`` when given), on the
    calling thread."""
    weights = weights[..., None]
    weighted = np.multiply(output, weights, out=out)
    weighted /= weights
    return weighted


def _weighted(output: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``output * weights / weights`` over the class axis, a new array: a single tile's
    blend, with the float rounding of weighting it into an accumulator and dividing by the
    weight sum (slabs shared out over the array threads)."""
    out = np.empty(output.shape, dtype=np.result_type(output.dtype, weights.dtype))
    array_threads.run_all(lambda rows: _weigh(output[rows], weights[rows], out[rows]),
                          array_threads.slabs(out))
    return out


def _winners(blended: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int16 arg-max, float32 value of the arg-max) over the last axis, slabs along the
    first axis shared out over the array threads."""
    shares = array_threads.slabs(blended)
    if len(shares) == 1:
        return _slab_winners(blended)
    labels = np.empty(blended.shape[:-1], dtype=np.int16)
    top = np.empty(blended.shape[:-1], dtype=np.float32)

    def share(rows: slice) -> None:
        labels[rows], top[rows] = _slab_winners(blended[rows])

    array_threads.run_all(share, shares)
    return labels, top


def _slab_winners(blended: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_winners` on the calling thread."""
    winners = np.argmax(blended, axis=-1)
    # gathered through flat indices: take_along_axis builds a full-size index per axis
    flat = np.ascontiguousarray(blended).reshape(-1, blended.shape[-1])
    top = flat[np.arange(winners.size), winners.ravel()].reshape(winners.shape)
    return winners.astype(np.int16), top.astype(np.float32, copy=False)


class _StreamingBlend:
    """Gaussian blending with an accumulator one tile deep along the streaming axis."""

    def __init__(self, shape, padded_shape, patch, starts, gaussian, keep_probabilities):
        self.shape, self.padded_shape, self.patch = tuple(shape), tuple(padded_shape), patch
        # the first axis with several starts: tiles arrive sorted along it
        self.axis = next(a for a, s in enumerate(starts) if len(s) > 1)
        self.weights = (gaussian_importance_map(patch) if gaussian
                        else np.ones(patch, dtype=np.float32))
        self.keep = keep_probabilities
        self.labels = np.zeros(self.shape, dtype=np.int16)
        self.top = np.zeros(self.shape, dtype=np.float32)
        self.probabilities = None
        self.window_start = 0          # global position of the accumulator's first slab
        self.accumulator = None        # created with the first outputs (C known then)
        window = list(self.padded_shape)
        window[self.axis] = patch[self.axis]
        self.window_shape = tuple(window)
        self.weight_sum = np.zeros(self.window_shape, dtype=np.float32)

    def run(self, predict, padded, tiles, batch_size) -> Blended:
        for batch in _batches(tiles, batch_size):
            outputs = _run(predict, padded, batch, self.patch)
            if not outputs.flags.writeable:
                outputs = outputs.copy()
            if self.accumulator is None:
                n_classes = outputs.shape[-1]
                self.accumulator = np.zeros((*self.window_shape, n_classes), dtype=np.float32)
                if self.keep:
                    self.probabilities = np.zeros((*self.shape, n_classes), dtype=np.float32)
            for tile, output in zip(batch, outputs):
                self._move_to(tile[self.axis].start)
                local = list(tile)
                local[self.axis] = slice(tile[self.axis].start - self.window_start,
                                         tile[self.axis].stop - self.window_start)
                local = tuple(local)
                self._add(output, self.accumulator[local], self.weight_sum[local])
        self._finish(self.window_start + self.patch[self.axis])
        return Blended(self.labels, self.top, self.accumulator.shape[-1], len(tiles),
                       self.probabilities)

    def _add(self, output: np.ndarray, accumulator: np.ndarray, weight_sum: np.ndarray) -> None:
        """Weight one tile's output in place (the same float32 products, no tile-sized
        temporary) and add it and its weights to the window, slabs shared out over the
        array threads."""
        weights = self.weights

        def add(rows: slice) -> None:
            np.multiply(output[rows], weights[rows][..., None], out=output[rows])
            accumulator[rows] += output[rows]
            weight_sum[rows] += weights[rows]

        array_threads.run_all(add, array_threads.slabs(output))

    def _move_to(self, start: int) -> None:
        """Finish the slabs before ``start`` and shift the window to begin there."""
        shift = start - self.window_start
        if shift <= 0:
            return
        self._finish(start)
        depth = self.patch[self.axis]
        kept = depth - shift
        for array in (self.accumulator, self.weight_sum):
            moved = np.moveaxis(array, self.axis, 0)
            # one slab at a time, front to back: slab i is read from shift + i > i before
            # anything overwrites it, so no copy of the kept part of the window is needed
            for index in range(max(kept, 0)):
                moved[index] = moved[shift + index]
            moved[max(kept, 0):] = 0
        self.window_start = start

    def _finish(self, stop: int) -> None:
        """Divide, arg-max and store the slabs from the window's start up to ``stop``
        (global position along the streaming axis), inside the un-padded volume."""
        stop = min(stop, self.shape[self.axis])
        if stop <= self.window_start:
            return
        local = [slice(None)] * len(self.shape)
        target = [slice(0, n) for n in self.shape]
        local[self.axis] = slice(0, stop - self.window_start)
        target[self.axis] = slice(self.window_start, stop)
        # the volume's extent on the other axes (the window covers the padded extent)
        for a, n in enumerate(self.shape):
            if a != self.axis:
                local[a] = slice(0, n)
        blended = self.accumulator[tuple(local)]
        weight_sum = self.weight_sum[tuple(local)]

        def divide(rows: slice) -> None:
            blended[rows] /= weight_sum[rows][..., None]

        array_threads.run_all(divide, array_threads.slabs(blended))
        labels, top = _winners(blended)
        self.labels[tuple(target)] = labels
        self.top[tuple(target)] = top
        if self.probabilities is not None:
            self.probabilities[tuple(target)] = blended


def predict_probabilities(
    volume: np.ndarray,
    predict: Predict,
    patch: tuple[int, ...],
    *,
    overlap: float = 0.5,
    batch_size: int = 1,
    gaussian: bool = True,
    stride: tuple[int, ...] | None = None,
) -> tuple[np.ndarray, int]:
    """Blend tile predictions over a whole volume.

    Args:
        volume: (z, y, x) float array.
        predict: tiles (b, pz, py, px, 1) -> outputs (b, pz, py, px, C).
        patch: tile size (pz, py, px).
        overlap: minimum overlap fraction of neighbouring tiles.
        batch_size: tiles per ``predict`` call.
        gaussian: Gaussian importance weighting (otherwise a plain average).
        stride: the network's total stride; when given, ``patch`` is validated against it.

    Returns:
        ``(blended, n_tiles)``: (z, y, x, C) float32 outputs and the number of tiles run.
    """
    blended = blend_tiles(volume, predict, patch, overlap=overlap, batch_size=batch_size,
                          gaussian=gaussian, stride=stride, keep_probabilities=True)
    return blended.probabilities, blended.n_tiles


def predict_hard_labels(
    volume: np.ndarray,
    predict: Predict,
    patch: tuple[int, ...],
    *,
    batch_size: int = 1,
    stride: tuple[int, ...] | None = None,
    mask_filter: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, int]:
    """QMRITools merge: arg-max per tile, per-label union, lowest label wins overlaps.

    Args:
        volume, predict, patch, batch_size, stride: as in :func:`predict_probabilities`.
        mask_filter: applied to each label's union mask before overlaps are resolved (QMRITools
            keeps the largest 6-connected component there).

    Returns:
        ``(labels, n_tiles)`` with (z, y, x) int16 class indices.
    """
    volume = np.asarray(volume)
    patch = validate_patch(patch, stride) if stride is not None else tuple(int(p) for p in patch)
    padded = _pad_to(volume, patch)
    tiles = _tiles(padded.shape, patch, [qmritools_tile_starts(s, p) for s, p in zip(padded.shape, patch)])
    claimed: dict[int, np.ndarray] = {}
    for batch in _batches(tiles, batch_size):
        outputs = _run(predict, padded, batch, patch)
        for tile, output in zip(batch, outputs):
            tile_labels = np.argmax(output, axis=-1)
            for label in np.unique(tile_labels):
                if label == 0:
                    continue
                mask = claimed.setdefault(int(label), np.zeros(padded.shape, dtype=bool))
                mask[tile] |= tile_labels == label
    labels = np.zeros(padded.shape, dtype=np.int16)
    for label in sorted(claimed, reverse=True):  # lowest label written last: it wins
        mask = claimed[label] if mask_filter is None else mask_filter(claimed[label])
        labels[mask] = label
    crop = tuple(slice(0, s) for s in volume.shape)
    return labels[crop], len(tiles)
