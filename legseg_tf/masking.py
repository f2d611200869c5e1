"""Body mask of a leg volume, as QMRITools computes it before segmentation
(QMRITools ``NormalizeData``, ``Mask``, ``SmoothMask``, ``TakeObject``, ``MaskData``).

``body_mask`` = threshold the "Set"-normalised volume at 10 (10 % of the foreground median),
keep the 2 largest 6-connected components, fill enclosed holes, then smooth three times
(dilate 1 -> Gaussian sigma 1 -> +0.05 -> round -> erode 1). All morphology is done with
``scipy.ndimage`` on the mask's bounding box plus a zero margin, so border effects never
depend on how tightly the field of view is cut.

Arrays are in the QMRITools layout (z, y, x); nothing here depends on the axis order except
that all three axes are treated alike (3x3x3 box morphology, isotropic voxel-unit Gaussian).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from legseg_tf import array_threads
from legseg_tf.postprocessing import face_structure, largest_components


@dataclass(frozen=True)
class MaskConfig:
    """Body-mask parameters (QMRITools defaults used by ``SegmentData``).

    Attributes:
        threshold: lower threshold on the normalised volume (foreground median = 100).
        upper_factor: voxels at or above ``upper_factor * max`` are excluded (1.1: none are).
        components: number of largest 6-connected components kept.
        fill_holes: fill background pockets not connected to the outside (6-connectivity).
        smoothing_iterations: repetitions of dilate -> Gaussian -> round -> erode.
        gaussian_sigma: sigma in voxels (WL ``GaussianFilter[r]`` with r = 2 -> sigma 1).
        gaussian_radius: kernel radius in voxels.
        margin: zero margin (voxels) added around the mask's bounding box while smoothing.
        otsu_bins: histogram bins of the Otsu threshold used by the normalisation.
    """

    threshold: float = 10.0
    upper_factor: float = 1.1
    components: int = 2
    fill_holes: bool = True
    smoothing_iterations: int = 3
    gaussian_sigma: float = 1.0
    gaussian_radius: int = 2
    margin: int = 10
    otsu_bins: int = 256


#: Values converted to float64 at a time by :func:`otsu_threshold`.
_BLOCK = 1 << 20


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu threshold of ``values`` (maximal between-class variance of a histogram).

    Args:
        values: any real array; its histogram spans [min, max] with ``bins`` equal bins.
        bins: number of histogram bins.

    Returns:
        The threshold: values strictly above it are foreground. For constant input, that
        constant.
    """
    values = np.asarray(values).ravel()
    if values.size == 0:
        raise ValueError("otsu_threshold needs at least one value")
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return lo
    counts, edges = _histogram(values, lo, hi, bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    weight_low = np.cumsum(counts)[:-1].astype(np.float64)
    weight_high = values.size - weight_low
    sum_low = np.cumsum(counts * centres)[:-1]
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (np.sum(counts * centres) - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[1:-1][int(np.argmax(between))])


def _histogram(values: np.ndarray, lo: float, hi: float, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.histogram(values.astype(np.float64), bins, range=(lo, hi))`` of a flat array whose
    minimum is ``lo``: equal counts and edges, with less work. The values equal to ``lo`` (in
    a body volume the zero background, most voxels) all fall in the first bin and are only
    counted; the rest is converted to float64 a block at a time (float32 input would
    otherwise get float32 bin edges; one block's worth of memory in all), the blocks shared
    out over the array threads."""
    edges = np.histogram_bin_edges(np.empty(0, dtype=np.float64), bins=bins, range=(lo, hi))
    step = max(1, _BLOCK // len(array_threads.pieces(values.size)))

    def block_counts(start: int) -> np.ndarray:
        block = values[start:start + step]
        rest = block[block != lo]
        counts = np.histogram(rest.astype(np.float64), bins=bins, range=(lo, hi))[0]
        counts[0] += block.size - rest.size
        return counts

    counts = np.zeros(bins, dtype=np.int64)
    for block in array_threads.run_all(block_counts, range(0, values.size, step)):
        counts += block
    return counts, edges


def _percentile_of_nonnegative(values: np.ndarray, q: float) -> float:
    """``np.percentile(values, q)`` of an array with no negative value, with less work: the
    two order statistics it interpolates between are picked from the positive values alone
    (the zeros come first), then interpolated by NumPy itself with the same weight."""
    flat = values.ravel()
    n = flat.size
    position = (n - 1) * np.true_divide(q, 100)  # NumPy's virtual index ("linear" method)
    below = int(np.floor(position))
    indices = [min(max(below, 0), n - 1), min(max(below + 1, 0), n - 1)]
    positive = flat[flat > 0]
    zeros = n - positive.size
    wanted = sorted({i - zeros for i in indices if i >= zeros})
    if wanted:
        positive.partition(wanted)
    pair = np.array([positive[i - zeros] if i >= zeros else 0 for i in indices],
                    dtype=flat.dtype)
    return float(np.quantile(pair, float(position - below)))


def normalize_data(volume: np.ndarray, bins: int = 256) -> np.ndarray:
    """QMRITools ``NormalizeData`` (method "Set"): foreground median scaled to 100.

    Steps: subtract the global minimum; scale provisionally to 100 / median of the non-zero
    voxels; rescale between 0 and the 99th percentile (of all voxels), clip to [0, 1] and
    Otsu-binarise (256-bin histogram) to get the foreground; return ``100 * (volume - min) / median(non-zero foreground voxels)``.

    Args:
        volume: (z, y, x) intensities, any units.
        bins: histogram bins of the Otsu step.

    Returns:
        float32 array of the same shape. An all-constant volume gives all zeros.
    """
    data = np.asarray(volume, dtype=np.float32)
    if data.size == 0:
        raise ValueError("cannot normalise an empty volume")
    # in place where the result is the same, so that a large volume needs few full copies
    shifted = data - data.min()
    nonzero = shifted[shifted > 0]
    if nonzero.size == 0:
        return np.zeros_like(shifted)
    median_nonzero = np.median(nonzero, overwrite_input=True)
    del nonzero
    scaled = shifted * np.float32(100.0 / median_nonzero)
    top = _percentile_of_nonnegative(scaled, 99)
    if top > 0:
        scaled /= top
        np.clip(scaled, 0.0, 1.0, out=scaled)
    foreground = scaled > otsu_threshold(scaled, bins=bins)
    del scaled
    foreground &= shifted > 0
    reference = shifted[foreground]
    del foreground
    median = np.median(reference, overwrite_input=True) if reference.size else median_nonzero
    del reference
    shifted *= np.float32(100.0 / median)
    return shifted


def bounding_box(mask: np.ndarray, padding: int = 0) -> tuple[slice, ...] | None:
    """Bounding box of the non-zero voxels, widened by ``padding`` and clipped to the array.

    Returns:
        One slice per axis, or ``None`` when ``mask`` has no non-zero voxel.
    """
    occupied = np.asarray(mask) != 0
    box = []
    for axis, n in enumerate(occupied.shape):
        # one boolean projection per axis: no label image or index arrays of every voxel
        others = tuple(a for a in range(occupied.ndim) if a != axis)
        hits = np.flatnonzero(occupied.any(axis=others))
        if hits.size == 0:
            return None
        box.append(slice(max(int(hits[0]) - padding, 0), min(int(hits[-1]) + 1 + padding, n)))
    return tuple(box)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background pockets that are not 6-connected to the outside of the volume.

    The outside is a zero shell around the array, so a cavity open to any face of the field of
    view is not a hole.
    """
    mask = np.asarray(mask, dtype=bool)
    # the background's face-connected components: the one holding the zero shell is the
    # outside, every other is a hole (what ``ndimage.binary_fill_holes`` gives with the face
    # structure, in one labelling instead of an iterated propagation: 2-3x faster)
    background = np.pad(~mask, 1, constant_values=True)
    components, _ = ndimage.label(background, structure=face_structure(mask.ndim))
    outside = components[(0,) * mask.ndim]
    return components[(slice(1, -1),) * mask.ndim] != outside


def smooth_mask(mask: np.ndarray, config: MaskConfig = MaskConfig()) -> np.ndarray:
    """QMRITools mask smoothing, repeated: dilate 1 -> Gaussian -> +0.05 -> round -> erode 1.

    Dilation and erosion use a 3x3x3 box; the Gaussian has ``config.gaussian_sigma`` voxels and
    radius ``config.gaussian_radius``. The caller pads the mask with zeros first (see
    :func:`body_mask`); here the array border is treated as background.
    """
    current = np.asarray(mask, dtype=bool)
    truncate = config.gaussian_radius / config.gaussian_sigma
    for _ in range(config.smoothing_iterations):
        dilated = box_dilate(current)
        blurred = gaussian_filter(dilated.astype(np.float32), config.gaussian_sigma, truncate)
        rounded = np.rint(blurred + np.float32(0.05)) >= 1
        current = box_erode(rounded)
    return current


def gaussian_filter(image: np.ndarray, sigma: float, truncate: float) -> np.ndarray:
    """``ndimage.gaussian_filter(image, sigma, truncate=truncate, mode="nearest")`` of a float
    image: one 1-D pass per axis in axis order, the first into a new array, the others in
    place (as SciPy does), each pass's lines shared out over the array threads (whole lines,
    so the result is identical)."""
    image = np.asarray(image)
    out = np.empty_like(image)
    for axis in range(image.ndim):
        source = image if axis == 0 else out
        across = max((a for a in range(image.ndim) if a != axis), key=lambda a: image.shape[a])

        def one_pass(rows: slice, source=source, axis=axis, across=across) -> None:
            index = tuple(rows if a == across else slice(None) for a in range(image.ndim))
            ndimage.gaussian_filter1d(source[index], sigma, axis=axis, truncate=truncate,
                                      mode="nearest", output=out[index])

        array_threads.run_all(one_pass, array_threads.pieces(
            image.shape[across], image.size // max(1, image.shape[across])))
    return out


def box_dilate(mask: np.ndarray) -> np.ndarray:
    """Binary dilation by the 3x3x3 (3**ndim) box, the array border background: one 3-voxel
    line per axis, each an OR of the two neighbours (the same as
    ``ndimage.binary_dilation(mask, np.ones((3,) * ndim))``, 5-10x faster)."""
    out = np.array(mask, dtype=bool)
    for axis in range(out.ndim):
        line = out.copy()
        line[_shifted(axis, out.ndim, 1, None)] |= out[_shifted(axis, out.ndim, None, -1)]
        line[_shifted(axis, out.ndim, None, -1)] |= out[_shifted(axis, out.ndim, 1, None)]
        out = line
    return out


def box_erode(mask: np.ndarray) -> np.ndarray:
    """Binary erosion by the 3x3x3 (3**ndim) box with background outside the array (the same
    as ``ndimage.binary_erosion(mask, np.ones((3,) * ndim), border_value=0)``)."""
    out = np.array(mask, dtype=bool)
    for axis in range(out.ndim):
        line = out.copy()
        line[_shifted(axis, out.ndim, 1, None)] &= out[_shifted(axis, out.ndim, None, -1)]
        line[_shifted(axis, out.ndim, None, -1)] &= out[_shifted(axis, out.ndim, 1, None)]
        line[_shifted(axis, out.ndim, 0, 1)] = False
        line[_shifted(axis, out.ndim, -1, None)] = False
        out = line
    return out


def _shifted(axis: int, ndim: int, start, stop) -> tuple[slice, ...]:
    """Index selecting ``start:stop`` along ``axis`` and everything along the other axes."""
    return tuple(slice(start, stop) if a == axis else slice(None) for a in range(ndim))


def clean_mask(raw: np.ndarray, config: MaskConfig = MaskConfig()) -> np.ndarray:
    """Components, hole filling and smoothing of a thresholded mask, on its bounding box.

    Args:
        raw: boolean (z, y, x) mask.
        config: mask parameters.

    Returns:
        Boolean mask of the same shape.
    """
    raw = np.asarray(raw, dtype=bool)
    box = bounding_box(raw)
    if box is None:
        return np.zeros_like(raw)
    margin = config.margin
    work = np.pad(raw[box], margin)
    work = largest_components(work, config.components)
    if config.fill_holes:
        work = fill_holes(work)
    if config.smoothing_iterations > 0:
        work = smooth_mask(work, config)
    # paste back: the smoothed mask may grow into the margin; keep what lies inside the array
    out = np.zeros_like(raw)
    src, dst = [], []
    for s, n in zip(box, raw.shape):
        lo = max(s.start - margin, 0)
        hi = min(s.stop + margin, n)
        dst.append(slice(lo, hi))
        src.append(slice(lo - (s.start - margin), hi - (s.start - margin)))
    out[tuple(dst)] = work[tuple(src)]
    return out


def body_mask(volume: np.ndarray, config: MaskConfig = MaskConfig()) -> np.ndarray:
    """Body mask of a (z, y, x) volume (QMRITools ``Mask[NormalizeData[data], 10, smoothing]``).

    Args:
        volume: (z, y, x) intensities.
        config: mask parameters.

    Returns:
        Boolean (z, y, x) mask; all False when nothing exceeds the threshold.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"body_mask expects a 3-D (z, y, x) volume, got shape {volume.shape}")
    normalised = normalize_data(volume, bins=config.otsu_bins)
    top = config.upper_factor * float(normalised.max())
    raw = normalised >= config.threshold
    raw &= normalised < top
    del normalised  # not held while the mask is cleaned
    return clean_mask(raw, config)


def apply_mask(volume: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``volume`` with everything outside ``mask`` set to 0 (float32)."""
    volume = np.asarray(volume, dtype=np.float32)
    if volume.shape != np.shape(mask):
        raise ValueError(f"mask shape {np.shape(mask)} differs from volume shape {volume.shape}")
    return np.where(mask, volume, np.float32(0))
