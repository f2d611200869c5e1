"""Random augmentation of (z, y, x) training volumes (QMRITools
``AugmentTrainingDataI``, plus older extras).

Every transform takes an explicit :class:`numpy.random.Generator`; the same seed gives the
same result. Geometric transforms work in physical space (mm, from the voxel size) and use
linear interpolation for the image and nearest neighbour for the labels (QMRITools uses
nearest neighbour for both; linear avoids the staircase look on the image).

Left-right flips mirror the patient: a flip is only allowed on side-less training labels
(``sideless=True``) or together with a side-label swap (``side_swap``); the caller has to
say which (:func:`flip_left_right`).

Intensity transforms that are monotonic (brightness, gamma) are almost invisible after the
per-patch "Uniform" histogram normalisation; contrast randomisation therefore also uses
non-monotonic random intensity curves and smooth multiplicative bias fields.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of the random transforms (defaults: ``AugmentTrainingDataI``'s where
    it has them).

    Attributes:
        p_flip: probability of a left-right mirror.
        p_geometric: probability of the affine transform.
        rotate_inplane_deg: max |rotation| about z (in-plane), degrees.
        rotate_outplane_deg: max |rotation| about y and x, degrees.
        scale_range: (min, max) scale factor per axis (in-plane axes independently).
        scale_z: also scale along z.
        skew: max |shear| coefficient in-plane.
        translate_mm: max |translation| per in-plane axis in mm.
        p_blur, blur_radius: probability and max radius (voxels, sigma = r/2) of an in-plane
            Gaussian blur.
        p_sharpen, sharpen_amount: probability and (min, max) amount of unsharp masking.
        p_noise, snr_range: probability and SNR range of Rician noise (sigma = mean/(SNR+1)).
        p_salt_pepper, salt_pepper_fraction: probability and fraction range of salt-and-
            pepper voxels (half set to the image maximum, half to 0).
        p_contrast, gamma_range: probability and range of a gamma curve.
        p_brightness, brightness_range: probability and range of a global gain.
        p_curve, curve_points: probability of a random, possibly non-monotonic piecewise-
            linear intensity curve with that many inner control points.
        p_bias, bias_strength: probability and max log-amplitude of a smooth bias field.
    """

    p_flip: float = 0.5
    p_geometric: float = 0.5
    rotate_inplane_deg: float = 30.0
    rotate_outplane_deg: float = 5.0
    scale_range: tuple[float, float] = (0.6, 1.6)
    scale_z: bool = False
    skew: float = 0.1
    translate_mm: float = 10.0
    p_blur: float = 0.5
    blur_radius: float = 2.0
    p_sharpen: float = 0.2
    sharpen_amount: tuple[float, float] = (0.3, 1.0)
    p_noise: float = 0.5
    snr_range: tuple[float, float] = (5.0, 50.0)
    p_salt_pepper: float = 0.25
    salt_pepper_fraction: tuple[float, float] = (0.001, 0.01)
    p_contrast: float = 0.3
    gamma_range: tuple[float, float] = (0.6, 1.6)
    p_brightness: float = 0.3
    brightness_range: tuple[float, float] = (0.8, 1.2)
    p_curve: float = 0.0
    curve_points: int = 3
    p_bias: float = 0.0
    bias_strength: float = 0.3

    def __post_init__(self) -> None:
        for name in ("p_flip", "p_geometric", "p_blur", "p_sharpen", "p_noise",
                     "p_salt_pepper", "p_contrast", "p_brightness", "p_curve", "p_bias"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
        for name in ("scale_range", "sharpen_amount", "snr_range", "salt_pepper_fraction",
                     "gamma_range", "brightness_range"):
            low, high = getattr(self, name)
            if not 0 < float(low) <= float(high):
                raise ValueError(f"{name} must be (low, high) with 0 < low <= high, "
                                 f"got {(low, high)}")
            object.__setattr__(self, name, (float(low), float(high)))
        if self.curve_points < 1:
            raise ValueError(f"curve_points must be >= 1, got {self.curve_points}")


#: No augmentation at all (validation).
NO_AUGMENTATION = AugmentConfig(p_flip=0.0, p_geometric=0.0, p_blur=0.0, p_sharpen=0.0,
                                p_noise=0.0, p_salt_pepper=0.0, p_contrast=0.0,
                                p_brightness=0.0, p_curve=0.0, p_bias=0.0)
#: Heavy augmentation with contrast randomisation (for single-contrast training data).
HEAVY_AUGMENTATION = AugmentConfig(p_geometric=0.8, p_contrast=0.5, p_brightness=0.5,
                                   p_curve=0.5, p_bias=0.5, p_sharpen=0.3)


def flip_left_right(image: np.ndarray, labels: np.ndarray, *,
                    side_swap: Mapping[int, int] | None = None,
                    sideless: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Mirror a (z, y, x) volume along x, keeping the labels anatomically right.

    Exactly one declaration is required: ``sideless=True`` when the labels carry no side
    (training classes), or ``side_swap`` mapping each side label to its counterpart (both
    directions, e.g. ``{31: 32, 32: 31}``), applied to the mirrored labels.

    Raises:
        ValueError: when neither or both are given, or ``side_swap`` is not symmetric.
    """
    if sideless == (side_swap is not None):
        raise ValueError("flip_left_right needs exactly one of sideless=True (labels without "
                         "side) or side_swap={left: right, right: left}")
    flipped_image = np.ascontiguousarray(image[..., ::-1])
    flipped_labels = np.ascontiguousarray(labels[..., ::-1])
    if side_swap is not None:
        for a, b in side_swap.items():
            if side_swap.get(b) != a:
                raise ValueError(f"side_swap must be symmetric; {a} -> {b} has no {b} -> {a}")
        lookup = np.arange(max(int(flipped_labels.max(initial=0)), max(side_swap)) + 1)
        for a, b in side_swap.items():
            lookup[a] = b
        flipped_labels = lookup[flipped_labels].astype(labels.dtype)
    return flipped_image, flipped_labels


def rotation_matrix(angles_rad: tuple[float, float, float]) -> np.ndarray:
    """3x3 rotation in (z, y, x) coordinates: about z (in-plane), then y, then x."""
    az, ay, ax = angles_rad
    rz = np.array([[1, 0, 0], [0, np.cos(az), -np.sin(az)], [0, np.sin(az), np.cos(az)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rx = np.array([[np.cos(ax), -np.sin(ax), 0], [np.sin(ax), np.cos(ax), 0], [0, 0, 1]])
    return rx @ ry @ rz


def random_affine(rng: np.random.Generator, config: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """Random physical-space (mm) transform: rotation, per-axis scale, in-plane skew, shift.

    Returns:
        ``(matrix 3x3, translation_mm 3)`` in (z, y, x) order mapping output to input
        positions around the volume centre.
    """
    deg = np.pi / 180.0
    angles = (rng.uniform(-1, 1) * config.rotate_inplane_deg * deg,
              rng.uniform(-1, 1) * config.rotate_outplane_deg * deg,
              rng.uniform(-1, 1) * config.rotate_outplane_deg * deg)
    low, high = config.scale_range
    scales = rng.uniform(low, high, size=3)
    if not config.scale_z:
        scales[0] = 1.0
    shear = np.eye(3)
    shear[1, 2] = rng.uniform(-1, 1) * config.skew
    shear[2, 1] = rng.uniform(-1, 1) * config.skew
    forward = rotation_matrix(angles) @ shear @ np.diag(scales)
    shift = np.array([0.0, *rng.uniform(-1, 1, size=2) * config.translate_mm])
    return np.linalg.inv(forward), shift


def apply_affine(image: np.ndarray, labels: np.ndarray, spacing: tuple[float, float, float],
                 matrix: np.ndarray, shift_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Resample image (linear) and labels (nearest) through an output->input mm transform.

    The transform acts about the array centre; the output grid equals the input grid;
    outside samples are 0.
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    centre = (np.asarray(image.shape, dtype=np.float64) - 1) / 2
    # index_in = S^-1 (M (S (index_out - c)) + shift) + c, S = diag(spacing)
    index_matrix = np.diag(1 / spacing) @ matrix @ np.diag(spacing)
    offset = centre - index_matrix @ centre + shift_mm / spacing
    out_image = ndimage.affine_transform(image, index_matrix, offset, order=1, mode="constant",
                                         cval=0.0)
    out_labels = ndimage.affine_transform(labels, index_matrix, offset, order=0,
                                          mode="constant", cval=0)
    return out_image.astype(np.float32), out_labels.astype(labels.dtype)


def gaussian_blur(image: np.ndarray, rng: np.random.Generator, max_radius: float) -> np.ndarray:
    """In-plane Gaussian blur with radius U(0, max_radius) voxels (sigma = radius / 2)."""
    sigma = rng.uniform(0.0, max_radius) / 2.0
    if sigma <= 0:
        return image
    return ndimage.gaussian_filter(image, (0.0, sigma, sigma)).astype(np.float32)


def sharpen(image: np.ndarray, rng: np.random.Generator,
            amount: tuple[float, float]) -> np.ndarray:
    """Unsharp mask: v + a (v - blur(v)), a ~ U(amount), clipped at 0, background kept 0."""
    a = rng.uniform(*amount)
    blurred = ndimage.gaussian_filter(image, (0.0, 1.0, 1.0))
    out = np.clip(image + a * (image - blurred), 0.0, None)
    return np.where(image > 0, out, 0.0).astype(np.float32)


def rician_noise(image: np.ndarray, rng: np.random.Generator,
                 snr_range: tuple[float, float]) -> np.ndarray:
    """QMRITools ``AddSaltAndRice`` noise: sigma = mean(non-zero)/(SNR+1), Rician on tissue.

    Non-zero voxels v -> sqrt((v + n1)^2 + n2^2) with n2 a shuffled copy of n1; background
    stays 0.
    """
    tissue = image > 0
    if not tissue.any():
        return image
    sigma = float(image[tissue].mean()) / (rng.uniform(*snr_range) + 1.0)
    n1 = rng.normal(0.0, sigma, size=int(tissue.sum()))
    n2 = rng.permutation(n1)
    out = image.copy()
    out[tissue] = np.sqrt((image[tissue] + n1) ** 2 + n2 ** 2)
    return out.astype(np.float32)


def salt_and_pepper(image: np.ndarray, rng: np.random.Generator,
                    fraction: tuple[float, float]) -> np.ndarray:
    """Set a fraction U(fraction) of tissue voxels, half to the maximum, half to 0."""
    index = np.flatnonzero(image > 0)
    count = int(round(rng.uniform(*fraction) * index.size))
    if count == 0:
        return image
    chosen = rng.choice(index, size=count, replace=False)
    out = image.copy().ravel()
    half = count // 2
    out[chosen[:half]] = float(image.max())
    out[chosen[half:]] = 0.0
    return out.reshape(image.shape)


def gamma_contrast(image: np.ndarray, rng: np.random.Generator,
                   gamma_range: tuple[float, float]) -> np.ndarray:
    """v -> max (v / max)^gamma, gamma ~ U(gamma_range)."""
    top = float(image.max())
    if top <= 0:
        return image
    return (top * (image / top) ** rng.uniform(*gamma_range)).astype(np.float32)


def brightness(image: np.ndarray, rng: np.random.Generator,
               gain_range: tuple[float, float]) -> np.ndarray:
    """Global gain U(gain_range)."""
    return (image * rng.uniform(*gain_range)).astype(np.float32)


def intensity_curve(image: np.ndarray, rng: np.random.Generator, points: int) -> np.ndarray:
    """Random piecewise-linear intensity curve on tissue (may be non-monotonic).

    Tissue intensities are rescaled to [0, 1] by their 99.5th percentile; the curve passes
    through ``points`` random inner control points with values U(0.05, 1); background stays 0.
    """
    tissue = image > 0
    if not tissue.any():
        return image
    top = float(np.percentile(image[tissue], 99.5)) or float(image.max())
    xs = np.concatenate([[0.0], np.sort(rng.uniform(0.05, 0.95, size=points)), [1.0]])
    ys = np.concatenate([[rng.uniform(0.0, 0.3)], rng.uniform(0.05, 1.0, size=points),
                         [rng.uniform(0.3, 1.0)]])
    mapped = np.interp(np.clip(image / top, 0.0, 1.0), xs, ys) * top
    return np.where(tissue, np.maximum(mapped, 1e-3 * top), 0.0).astype(np.float32)


def bias_field(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Multiply by exp(smooth random field), log-amplitude up to ``strength``."""
    coarse = rng.normal(0.0, 1.0, size=(2, 4, 4))
    field = ndimage.zoom(coarse, np.asarray(image.shape) / np.asarray(coarse.shape), order=3,
                         mode="nearest", grid_mode=True)
    field = field[:image.shape[0], :image.shape[1], :image.shape[2]]
    scale = np.abs(field).max() or 1.0
    return (image * np.exp(strength * rng.uniform(0, 1) * field / scale)).astype(np.float32)


def augment(image: np.ndarray, labels: np.ndarray, spacing: tuple[float, float, float],
            rng: np.random.Generator, config: AugmentConfig, *,
            side_swap: Mapping[int, int] | None = None,
            sideless: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Apply the random transforms in order: flip, affine, blur, sharpen, contrast, gain,
    curve, bias, Rician noise, salt-and-pepper; each with its probability.

    Args:
        image, labels: (z, y, x) arrays.
        spacing: (dz, dy, dx) in mm.
        rng: the random source; the same state gives the same output.
        config: probabilities and ranges.
        side_swap, sideless: the flip declaration (see :func:`flip_left_right`); needed only
            when ``config.p_flip > 0``.

    Returns:
        ``(image float32, labels)`` of the input shape.
    """
    image = np.asarray(image, dtype=np.float32)
    labels = np.asarray(labels)
    if image.shape != labels.shape or image.ndim != 3:
        raise ValueError(f"image {image.shape} and labels {labels.shape} must be equal 3-D")
    if config.p_flip > 0 and not sideless and side_swap is None:
        raise ValueError("augment with p_flip > 0 needs sideless=True or a side_swap mapping")
    if rng.random() < config.p_flip:
        image, labels = flip_left_right(image, labels, side_swap=side_swap, sideless=sideless)
    if rng.random() < config.p_geometric:
        matrix, shift = random_affine(rng, config)
        image, labels = apply_affine(image, labels, spacing, matrix, shift)
    if rng.random() < config.p_blur:
        image = gaussian_blur(image, rng, config.blur_radius)
    if rng.random() < config.p_sharpen:
        image = sharpen(image, rng, config.sharpen_amount)
    if rng.random() < config.p_contrast:
        image = gamma_contrast(image, rng, config.gamma_range)
    if rng.random() < config.p_brightness:
        image = brightness(image, rng, config.brightness_range)
    if rng.random() < config.p_curve:
        image = intensity_curve(image, rng, config.curve_points)
    if rng.random() < config.p_bias:
        image = bias_field(image, rng, config.bias_strength)
    if rng.random() < config.p_noise:
        image = rician_noise(image, rng, config.snr_range)
    if rng.random() < config.p_salt_pepper:
        image = salt_and_pepper(image, rng, config.salt_pepper_fraction)
    return image.astype(np.float32, copy=False), labels
