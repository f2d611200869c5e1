"""Training patches (spec section 5.5, ``GetTrainData`` / ``PatchTrainingData``).

A patch is taken around a centre that is either a random position of the QMRITools patch
grid (``DataToPatches`` with 2 extra positions per axis) or, with probability
``foreground_fraction``, a random labelled voxel. To keep augmentation cheap on a CPU, only
a region somewhat larger than the patch is augmented (instead of the whole volume), then
the central patch is cut out, dropped when empty, and histogram-normalised ("Uniform").
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from legseg_tf.training.augmentation import NO_AUGMENTATION, AugmentConfig, augment
from legseg_tf.training.data import TrainingCase


@dataclass(frozen=True)
class PatchConfig:
    """How patches are drawn.

    Attributes:
        patch_size: (z, y, x) voxels (spec default 32 x 112 x 112).
        foreground_fraction: probability that a patch is centred on a labelled voxel.
        context: region size / patch size per axis for the augmented region (room for
            rotation and scaling).
        grid_extra: extra grid positions per axis beyond the tiling minimum (QMRITools 2).
        max_tries: attempts to find a non-empty patch before giving up.
        class_balanced: a foreground centre is a random voxel of a class drawn uniformly from
            the classes present (nnU-Net's class oversampling), so small muscles are seen as
            often as large ones; otherwise a random labelled voxel.
    """

    patch_size: tuple[int, int, int] = (32, 112, 112)
    foreground_fraction: float = 0.5
    context: tuple[float, float, float] = (1.0, 1.5, 1.5)
    grid_extra: int = 2
    max_tries: int = 20
    class_balanced: bool = False

    def __post_init__(self) -> None:
        size = tuple(int(p) for p in self.patch_size)
        if len(size) != 3 or any(p < 1 for p in size):
            raise ValueError(f"patch_size must be 3 positive sizes, got {self.patch_size}")
        object.__setattr__(self, "patch_size", size)
        if not 0.0 <= self.foreground_fraction <= 1.0:
            raise ValueError(f"foreground_fraction must be in [0, 1], got "
                             f"{self.foreground_fraction}")
        if len(self.context) != 3 or any(c < 1.0 for c in self.context):
            raise ValueError(f"context must be 3 factors >= 1, got {self.context}")


def grid_starts(size: int, patch: int, extra: int = 2) -> np.ndarray:
    """Evenly spaced patch starts along one axis (QMRITools ``GetPatchRangeI``).

    ``ceil(size / patch) + extra`` positions (1 when the patch covers the axis) from 0 to
    ``size - patch``; a patch larger than the axis starts at 0 (zero-padded at the end).
    """
    if size <= patch:
        return np.zeros(1, dtype=np.int64)
    count = int(np.ceil(size / patch)) + extra
    return np.unique(np.rint(np.linspace(0, size - patch, count)).astype(np.int64))


def crop_centered(array: np.ndarray, centre: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """The ``size`` box centred on ``centre`` (start = centre - size // 2), zero outside."""
    out = np.zeros(tuple(size), dtype=array.dtype)
    src, dst = [], []
    for c, s, n in zip(centre, size, array.shape):
        start = int(c) - int(s) // 2
        lo, hi = max(start, 0), min(start + int(s), n)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[tuple(dst)] = array[tuple(src)]
    return out


def foreground_index(case: TrainingCase, config: PatchConfig) -> list[np.ndarray]:
    """Flat indices of labelled voxels: one array, or one per present class (class_balanced)."""
    labels = case.labels.ravel()
    if not config.class_balanced:
        return [np.flatnonzero(labels)]
    return [np.flatnonzero(labels == c) for c in np.unique(labels) if c]


def choose_centre(case: TrainingCase, config: PatchConfig, rng: np.random.Generator,
                  foreground: list[np.ndarray] | None = None) -> tuple[int, int, int]:
    """A patch centre: a random labelled voxel (of a random class when class-balanced) or
    the centre of a random grid patch. ``foreground``: :func:`foreground_index` of the case."""
    if foreground is None:
        foreground = foreground_index(case, config)
    foreground = [f for f in foreground if f.size]
    if foreground and rng.random() < config.foreground_fraction:
        voxels = foreground[int(rng.integers(len(foreground)))]
        flat = int(voxels[rng.integers(voxels.size)])
        return tuple(int(i) for i in np.unravel_index(flat, case.labels.shape))
    centre = []
    for n, p in zip(case.image.shape, config.patch_size):
        starts = grid_starts(n, p, config.grid_extra)
        centre.append(int(starts[rng.integers(starts.size)]) + p // 2)
    return tuple(centre)


def make_patch(case: TrainingCase, config: PatchConfig, augmentation: AugmentConfig,
               rng: np.random.Generator, normalise, *, sideless: bool = True,
               side_swap: Mapping[int, int] | None = None,
               foreground: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One augmented, normalised (image, labels) patch of ``case``.

    Args:
        normalise: patch -> [0, 1] patch (the "Uniform" normalisation).
        sideless, side_swap: the left-right flip declaration (see augmentation).
        foreground: :func:`foreground_index` of the case (cached by the caller).

    Returns:
        ``(image (z, y, x) float32 in [0, 1], labels (z, y, x) int32)`` of ``patch_size``.

    Raises:
        RuntimeError: when ``max_tries`` patches in a row are empty.
    """
    region = tuple(int(np.ceil(p * c)) for p, c in zip(config.patch_size, config.context))
    for _ in range(config.max_tries):
        centre = choose_centre(case, config, rng, foreground)
        image = crop_centered(case.image, centre, region)
        labels = crop_centered(case.labels, centre, region)
        image, labels = augment(image, labels, case.spacing, rng, augmentation,
                                sideless=sideless, side_swap=side_swap)
        middle = tuple(r // 2 for r in region)
        image = crop_centered(image, middle, config.patch_size)
        if not image.any():
            continue
        labels = crop_centered(labels, middle, config.patch_size)
        return np.asarray(normalise(image), dtype=np.float32), labels.astype(np.int32)
    raise RuntimeError(f"no non-empty patch found in case {case.name!r} after "
                       f"{config.max_tries} tries")


def patch_stream(cases: Sequence[TrainingCase], config: PatchConfig,
                 augmentation: AugmentConfig, rng: np.random.Generator, normalise, *,
                 sideless: bool = True, side_swap: Mapping[int, int] | None = None,
                 ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless stream of patches from randomly chosen cases (one patch per pick)."""
    if not cases:
        raise ValueError("no training cases")
    foregrounds = [foreground_index(c, config) for c in cases]
    while True:
        index = int(rng.integers(len(cases)))
        yield make_patch(cases[index], config, augmentation, rng, normalise, sideless=sideless,
                         side_swap=side_swap, foreground=foregrounds[index])


def make_batch(stream: Iterator[tuple[np.ndarray, np.ndarray]], batch_size: int,
               n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Stack ``batch_size`` patches: images (b, z, y, x, 1), one-hot targets (b, z, y, x, C)."""
    images, labels = zip(*(next(stream) for _ in range(batch_size)))
    labels = np.stack(labels)
    if labels.max() >= n_classes:
        raise ValueError(f"label {labels.max()} outside the {n_classes} classes")
    onehot = np.eye(n_classes, dtype=np.float32)[labels]
    return np.stack(images)[..., None], onehot


def fixed_patches(cases: Sequence[TrainingCase], config: PatchConfig, count: int, seed: int,
                  normalise, augmentation: AugmentConfig = NO_AUGMENTATION,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """A fixed validation set of ``count`` patches (images (n, z, y, x, 1), labels (n, z, y, x))."""
    rng = np.random.default_rng(seed)
    stream = patch_stream(cases, config, augmentation, rng, normalise, sideless=True)
    images, labels = zip(*(next(stream) for _ in range(count)))
    return np.stack(images)[..., None], np.stack(labels)
