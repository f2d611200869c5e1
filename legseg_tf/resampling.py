"""Segmentation at the networks' voxel size (QMRITools ``SegmentationResolution``).

A network trained on 1.5 x 1.5 x 6 mm voxels sees a 0.8 x 0.8 x 20 mm scan as a thigh twice
as wide and three times thinner in z: its features do not match. QMRITools resamples the data
to ``SegmentationResolution`` when that option is set (``RescaleData``: cubic spline, clipped
to the input range) and segments there. legseg does the same, by default at the voxel size the
installed region networks were trained on (their manifest provenance
``training_voxel_size_mm``), and maps the labels back onto the input grid (per-label linear
interpolation, then the label with the largest weight), so the label map keeps exactly the
input's shape and affine.

Arrays are (z, y, x) in the QMRITools layout; voxel sizes (dz, dy, dx) in mm. Pure numpy/scipy;
scipy is imported where it is used, since the command line parses ``--segmentation-resolution``
here at start-up.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Relative voxel-size difference below which a volume is segmented on its own grid.
TOLERANCE = 0.1


def parse_resolution(text: str) -> str | tuple[float, float, float]:
    """``--segmentation-resolution``: "model", "native" or "DZxDYxDX" in mm (e.g. "6x1.5x1.5").

    Raises:
        ValueError: anything else, or a non-positive size.
    """
    value = str(text).strip().lower()
    if value in ("model", "native"):
        return value
    parts = value.replace(",", "x").split("x")
    try:
        sizes = tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(f"segmentation resolution must be 'model', 'native' or DZxDYxDX in mm "
                         f"(e.g. 6x1.5x1.5), got {text!r}") from None
    if len(sizes) != 3 or not all(np.isfinite(s) and s > 0 for s in sizes):
        raise ValueError(f"segmentation resolution needs three positive sizes in mm, got {text!r}")
    return sizes  # type: ignore[return-value]


def needs_resampling(spacing_zyx: Sequence[float], target_zyx: Sequence[float] | None,
                     tolerance: float = TOLERANCE) -> bool:
    """True when some axis differs from the target by more than ``tolerance`` (relative)."""
    if target_zyx is None:
        return False
    return any(abs(s - t) > tolerance * t for s, t in zip(spacing_zyx, target_zyx))


def target_shape(shape: Sequence[int], spacing_zyx: Sequence[float],
                 target_zyx: Sequence[float]) -> tuple[int, int, int]:
    """Grid size covering the same field of view at the target voxel size (at least 1)."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing_zyx, target_zyx))


def resample_volume(volume: np.ndarray, spacing_zyx: Sequence[float],
                    target_zyx: Sequence[float]) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Cubic-spline resampling of a (z, y, x) volume to ``target_zyx``, clipped to its range.

    Returns:
        ``(resampled float32, the exact voxel size of the new grid (dz, dy, dx) mm)`` - the
        field of view is kept, so the sizes are those of ``target_zyx`` up to rounding.
    """
    from scipy import ndimage

    volume = np.asarray(volume, dtype=np.float32)
    shape = target_shape(volume.shape, spacing_zyx, target_zyx)
    zoom = [n / m for n, m in zip(shape, volume.shape)]
    out = ndimage.zoom(volume, zoom, order=3, mode="nearest", grid_mode=True)
    out = np.clip(out, float(volume.min()), float(volume.max())).astype(np.float32)
    spacing = tuple(float(s) * m / n for s, m, n in zip(spacing_zyx, volume.shape, shape))
    return out, spacing  # type: ignore[return-value]


def column_on_grid(column: float | None, from_size: int, to_size: int) -> float | None:
    """A column coordinate (x) of one grid on another covering the same field of view."""
    if column is None:
        return None
    return (float(column) + 0.5) * to_size / from_size - 0.5


def labels_to_shape(labels: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Map a (z, y, x) label volume onto a grid of ``shape`` covering the same field of view.

    Per label a linear interpolation of its indicator; each voxel takes the label (background
    included) with the largest value, so thin structures are neither thickened nor dropped the
    way nearest-neighbour sampling would.
    """
    from scipy import ndimage

    labels = np.asarray(labels)
    shape = tuple(int(n) for n in shape)
    if labels.shape == shape:
        return labels.copy()
    zoom = [n / m for n, m in zip(shape, labels.shape)]
    best = np.full(shape, -1.0, dtype=np.float32)
    out = np.zeros(shape, dtype=labels.dtype)
    for value in np.unique(labels):
        weight = ndimage.zoom((labels == value).astype(np.float32), zoom, order=1,
                              mode="nearest", grid_mode=True)
        better = weight > best
        best[better] = weight[better]
        out[better] = value
    return out


def channels_to_shape(probabilities: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Linear resampling of (z, y, x, n) probabilities onto ``shape`` (z, y, x)."""
    from scipy import ndimage

    probabilities = np.asarray(probabilities, dtype=np.float32)
    zoom = [n / m for n, m in zip(shape, probabilities.shape[:3])]
    return np.stack([ndimage.zoom(probabilities[..., c], zoom, order=1, mode="nearest",
                                  grid_mode=True) for c in range(probabilities.shape[-1])],
                    axis=-1).astype(np.float32)
