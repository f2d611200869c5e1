"""Training patches (QMRITools ``GetTrainData`` / ``PatchTrainingData``).

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
from legseg_tf.training.data import IGNORE_LABEL, TrainingCase


@dataclass(frozen=True)
class PatchConfig:
    """How patches are drawn.

    Attributes:
        patch_size: (z, y, x) voxels (``TrainSegmentationNetwork``'s default 32 x 112 x 112).
        foreground_fraction: probability that a patch is centred on a labelled voxel.
        context: region size / patch size per axis for the augmented region (room for
            rotation and scaling).
        grid_extra: extra grid positions per axis beyond the tiling minimum (QMRITools 2).
        max_tries: attempts to find a non-empty patch before giving up.
        class_balanced: a foreground centre is a random voxel of a class drawn uniformly from
            the classes present (nnU-Net's class oversampling), so small muscles are seen as
            often as large ones; otherwise a random labelled voxel.
        stack_end_probability: probability that a patch gets an artificial stack end: the
            slices beyond a random plane (above or below, keeping at least
            ``min_stack_slices`` slices) become empty image and ignored labels, so that a
            network does not learn "stack end = no muscle" from where the stacks happened to
            end (a border is then seen next to labelled muscle).
        min_stack_slices: slices kept on the patch side of an artificial stack end.
    """

    patch_size: tuple[int, int, int] = (32, 112, 112)
    foreground_fraction: float = 0.5
    context: tuple[float, float, float] = (1.0, 1.5, 1.5)
    grid_extra: int = 2
    max_tries: int = 20
    class_balanced: bool = False
    stack_end_probability: float = 0.0
    min_stack_slices: int = 2

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
        if not 0.0 <= self.stack_end_probability <= 1.0:
            raise ValueError(f"stack_end_probability must be in [0, 1], got "
                             f"{self.stack_end_probability}")
        if not 1 <= self.min_stack_slices <= size[0]:
            raise ValueError(f"min_stack_slices must be in 1..{size[0]}, got "
                             f"{self.min_stack_slices}")


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
    """Flat indices of labelled voxels: one array, or one per present class (class_balanced).

    Ignored voxels (:data:`IGNORE_LABEL`) are not foreground."""
    labels = case.labels.ravel()
    if not config.class_balanced:
        return [np.flatnonzero((labels > 0) & (labels != IGNORE_LABEL))]
    return [np.flatnonzero(labels == c) for c in np.unique(labels) if c and c != IGNORE_LABEL]


def cut_stack_end(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                  min_slices: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """An artificial stack end: empty image and ignored labels beyond a random slice plane.

    Args:
        image, labels: (z, y, x) patch.
        min_slices: slices kept on the kept side (at least 1).

    Returns:
        copies of ``image`` and ``labels``; the removed side (top or bottom, at random) has
        image 0 and labels :data:`IGNORE_LABEL` (what lies outside a stack is never scored).
    """
    nz = image.shape[0]
    if nz <= min_slices:
        return image, labels
    keep = int(rng.integers(min_slices, nz))  # slices kept, min_slices..nz-1
    image, labels = image.copy(), labels.copy()
    removed = slice(keep, None) if rng.random() < 0.5 else slice(0, nz - keep)
    image[removed] = 0
    labels[removed] = IGNORE_LABEL
    return image, labels


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
        if config.stack_end_probability and rng.random() < config.stack_end_probability:
            cut_image, cut_labels = cut_stack_end(image, labels, rng, config.min_stack_slices)
            if cut_image.any():
                image, labels = cut_image, cut_labels
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


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """One-hot targets (..., C) float32; :data:`IGNORE_LABEL` voxels get an all-zero row,
    which the loss reads as "no target here" (:func:`legseg_tf.training.losses.combined_loss`).
    """
    labels = np.asarray(labels)
    known = labels[labels != IGNORE_LABEL]
    if known.size and (known.min() < 0 or known.max() >= n_classes):
        raise ValueError(f"label {known.max()} outside the {n_classes} classes")
    table = np.zeros((n_classes + 1, n_classes), dtype=np.float32)
    table[:n_classes] = np.eye(n_classes, dtype=np.float32)
    return table[np.where(labels == IGNORE_LABEL, n_classes, labels)]


def make_batch(stream: Iterator[tuple[np.ndarray, np.ndarray]], batch_size: int,
               n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Stack ``batch_size`` patches: images (b, z, y, x, 1), one-hot targets (b, z, y, x, C)
    (all-zero rows where the labels are ignored)."""
    images, labels = zip(*(next(stream) for _ in range(batch_size)))
    return np.stack(images)[..., None], one_hot(np.stack(labels), n_classes)


def fixed_patches(cases: Sequence[TrainingCase], config: PatchConfig, count: int, seed: int,
                  normalise, augmentation: AugmentConfig = NO_AUGMENTATION,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """A fixed validation set of ``count`` patches (images (n, z, y, x, 1), labels (n, z, y, x))."""
    rng = np.random.default_rng(seed)
    stream = patch_stream(cases, config, augmentation, rng, normalise, sideless=True)
    images, labels = zip(*(next(stream) for _ in range(count)))
    return np.stack(images)[..., None], np.stack(labels)
