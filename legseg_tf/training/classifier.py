"""Training data and training of the per-slice side/position classifier
(QMRITools ``MakeClassifyNetwork``, ``MakeClassifyImage``, ``ClassifyData``).

Each slice of a labelled stack gives classifier images exactly as the segmenter makes them
(:func:`legseg_tf.body_position.slice_image` on the body-masked slice): the whole slice
("Both"), and, for two-leg slices, the part right of the inter-leg cut ("Right": columns
``< cut`` of the QMRITools layout, i.e. the patient's right, decided from the affine) and
the part left of it ("Left"). Augmented copies get a random in-plane rotation and scaling, a
random contrast curve and noise; a horizontal mirror swaps "Left" and "Right".
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from legseg_tf.body_position import POSITION_CLASSES, SIDE_CLASSES, slice_image
from legseg_tf.derivatives import atomic_write_text
from legseg_tf.masking import apply_mask, body_mask, bounding_box
from legseg_tf.model_store import save_weights_atomically
from legseg_tf.split import find_middle
from legseg_tf.training.augmentation import gamma_contrast, intensity_curve, rician_noise

logger = logging.getLogger(__name__)

SIDE_SWAP = {"Left": "Right", "Right": "Left", "Both": "Both"}


@dataclass(frozen=True)
class SliceStack:
    """A (z, y, x) volume with a body position name per slice.

    Attributes:
        name: identifier.
        volume: (z, y, x) intensities in the QMRITools layout (column 0 = patient right).
        positions: one name of :data:`legseg_tf.body_position.POSITION_CLASSES` per slice.
        two_legs: the slices show both legs (then single-side examples are cut out).
    """

    name: str
    volume: np.ndarray
    positions: tuple[str, ...]
    two_legs: bool = True

    def __post_init__(self) -> None:
        if np.ndim(self.volume) != 3:
            raise ValueError(f"stack {self.name!r}: volume must be (z, y, x)")
        if len(self.positions) != np.shape(self.volume)[0]:
            raise ValueError(f"stack {self.name!r}: {len(self.positions)} positions for "
                             f"{np.shape(self.volume)[0]} slices")
        unknown = set(self.positions) - set(POSITION_CLASSES)
        if unknown:
            raise ValueError(f"stack {self.name!r}: unknown positions {sorted(unknown)}")


def positions_from_ranges(n_slices: int, ranges: Sequence[tuple[int, int, str]]) -> tuple[str, ...]:
    """Per-slice names from inclusive ``(first, last, name)`` ranges covering 0..n-1."""
    names: list[str | None] = [None] * n_slices
    for first, last, name in ranges:
        for z in range(first, last + 1):
            names[z] = name
    if any(n is None for n in names):
        raise ValueError(f"ranges {ranges} do not cover slices 0..{n_slices - 1}")
    return tuple(names)  # type: ignore[arg-type]


@dataclass(frozen=True)
class SliceAugment:
    """Random slice transforms of the classifier training images.

    Attributes:
        rotate_deg: max |in-plane rotation|.
        scale_range: (min, max) isotropic scale.
        p_flip: probability of a mirror (with the Left/Right swap).
        p_curve: probability of a random intensity curve.
        p_gamma: probability of a gamma curve.
        p_noise: probability of Rician noise (SNR 5-50).
        p_lowres: probability of a coarser in-plane resolution: the slice is shrunk by a
            factor from ``lowres_range`` (linear interpolation) and enlarged back, as a scan
            with that many times larger pixels (0.6-3 mm in-plane across scanners).
        lowres_range: (min, max) shrink factor.
    """

    rotate_deg: float = 15.0
    scale_range: tuple[float, float] = (0.85, 1.15)
    p_flip: float = 0.5
    p_curve: float = 0.5
    p_gamma: float = 0.3
    p_noise: float = 0.5
    p_lowres: float = 0.0
    lowres_range: tuple[float, float] = (1.0, 3.0)


def coarser_resolution(image: np.ndarray, factor: float) -> np.ndarray:
    """A (y, x) slice as if acquired with ``factor`` times larger pixels, on its own grid."""
    if factor <= 1.0:
        return image
    small = ndimage.zoom(image, 1.0 / factor, order=1)
    back = ndimage.zoom(small, [n / m for n, m in zip(image.shape, small.shape)], order=1)
    out = np.zeros_like(image)
    rows, cols = min(back.shape[0], image.shape[0]), min(back.shape[1], image.shape[1])
    out[:rows, :cols] = back[:rows, :cols]
    return out


def augment_slice(slice_yx: np.ndarray, side: str, rng: np.random.Generator,
                  config: SliceAugment) -> tuple[np.ndarray, str]:
    """One random variant of a masked (y, x) slice and its side name (swapped on a mirror)."""
    image = slice_yx.astype(np.float32)
    if rng.random() < config.p_flip:
        image, side = image[:, ::-1], SIDE_SWAP[side]
    angle = rng.uniform(-1, 1) * config.rotate_deg
    image = ndimage.rotate(image, angle, reshape=True, order=1, mode="constant")
    image = ndimage.zoom(image, rng.uniform(*config.scale_range), order=1)
    if rng.random() < config.p_lowres:
        image = coarser_resolution(image, rng.uniform(*config.lowres_range))
    image = np.clip(image, 0, None)[None]
    if rng.random() < config.p_curve:
        image = intensity_curve(image, rng, 3)
    if rng.random() < config.p_gamma:
        image = gamma_contrast(image, rng, (0.6, 1.6))
    if rng.random() < config.p_noise:
        image = rician_noise(image, rng, (5.0, 50.0))
    return image[0], side


def stack_examples(stack: SliceStack, image_size: tuple[int, int], rng: np.random.Generator,
                   copies: int = 1, augment: SliceAugment | None = None,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Classifier examples of one stack.

    Args:
        stack: the labelled stack.
        image_size: classifier input (rows, cols).
        rng: random source of the augmentation.
        copies: images per slice and side variant (the first is never augmented).
        augment: slice augmentation (None = only un-augmented copies).

    Returns:
        ``(images (n, rows, cols) float32, side index (n,), position index (n,))``; the
        indices refer to :data:`SIDE_CLASSES` and :data:`POSITION_CLASSES`.
    """
    volume = np.asarray(stack.volume, dtype=np.float32)
    masked = apply_mask(volume, body_mask(volume))
    box = bounding_box(masked, 5)
    if box is None:
        raise ValueError(f"stack {stack.name!r} has no body voxel")
    cut = find_middle(masked)
    images, sides, positions = [], [], []
    for z in range(box[0].start, box[0].stop):
        full = masked[z]
        if float(full.sum()) < 10:
            continue
        variants = [("Both", full)]
        if stack.two_legs:
            right, left = full.copy(), full.copy()
            right[:, cut:] = 0
            left[:, :cut] = 0
            variants += [("Right", right), ("Left", left)]
        for side, part in variants:
            if float(part.sum()) < 10:
                continue
            for copy in range(copies):
                image, name = part, side
                if copy and augment is not None:
                    image, name = augment_slice(part, side, rng, augment)
                images.append(slice_image(image, image_size))
                sides.append(SIDE_CLASSES.index(name))
                positions.append(POSITION_CLASSES.index(stack.positions[z]))
    return (np.stack(images).astype(np.float32), np.asarray(sides, np.int32),
            np.asarray(positions, np.int32))


def stacks_examples(stacks: Sequence[SliceStack], image_size: tuple[int, int], seed: int,
                    copies: int, augment: SliceAugment | None):
    """Concatenated :func:`stack_examples` of several stacks (one Generator per stack)."""
    parts = [stack_examples(s, image_size, np.random.default_rng([seed, i]), copies, augment)
             for i, s in enumerate(stacks)]
    return tuple(np.concatenate(arrays) for arrays in zip(*parts))


def balanced_order(positions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices that repeat rarer position classes up to the most frequent one's count."""
    classes, counts = np.unique(positions, return_counts=True)
    target = counts.max()
    order = [rng.choice(np.flatnonzero(positions == c), size=target, replace=True)
             for c in classes]
    order = np.concatenate(order)
    rng.shuffle(order)
    return order


@dataclass(frozen=True)
class ClassifierTrainConfig:
    """Classifier training settings.

    Attributes:
        image_size: classifier input (rows, cols).
        head: "mlp" or "linear" head.
        copies: images per slice and side variant (1 original + copies-1 augmented).
        epochs: passes over the class-balanced training set.
        batch_size: images per step.
        base_rate: Adam learning rate (cosine decay to 10 %).
        seed: master seed.
        augment: the slice augmentation of the copies.
    """

    image_size: tuple[int, int] = (64, 64)
    head: str = "mlp"
    copies: int = 6
    epochs: int = 8
    batch_size: int = 32
    base_rate: float = 1e-3
    seed: int = 0
    augment: SliceAugment = SliceAugment()


def accuracy_report(sides: np.ndarray, positions: np.ndarray, side_true: np.ndarray,
                    position_true: np.ndarray) -> dict:
    """Accuracies overall and per true class (names as keys)."""
    report = {"n": int(side_true.size),
              "side_accuracy": float(np.mean(sides == side_true)) if side_true.size else None,
              "position_accuracy": (float(np.mean(positions == position_true))
                                    if side_true.size else None),
              "side_per_class": {}, "position_per_class": {}}
    for i, name in enumerate(SIDE_CLASSES):
        sel = side_true == i
        if sel.any():
            report["side_per_class"][name] = [float(np.mean(sides[sel] == i)), int(sel.sum())]
    for i, name in enumerate(POSITION_CLASSES):
        sel = position_true == i
        if sel.any():
            report["position_per_class"][name] = [float(np.mean(positions[sel] == i)),
                                                  int(sel.sum())]
    return report


def train_classifier(config: ClassifierTrainConfig, train_stacks: Sequence[SliceStack],
                     validation_stacks: Sequence[SliceStack], run_dir: str | Path,
                     progress: bool = True) -> dict:
    """Train the classifier; write ``classifier.json``, weights and ``report.json``.

    Returns:
        The report: example counts, wall time, accuracy on training and validation stacks.
    """
    import keras

    from legseg_tf.networks.classifier import build_classifier
    from legseg_tf.networks.config import ClassifierConfig

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    keras.utils.set_random_seed(config.seed)
    images, sides, positions = stacks_examples(train_stacks, config.image_size, config.seed,
                                               config.copies, config.augment)
    rng = np.random.default_rng(config.seed)
    order = balanced_order(positions, rng)
    net_config = ClassifierConfig(image_size=config.image_size, head=config.head)
    model = build_classifier(net_config)
    steps = config.epochs * int(np.ceil(order.size / config.batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(config.base_rate, steps, alpha=0.1)
    model.compile(optimizer=keras.optimizers.Adam(schedule, beta_2=0.99, epsilon=1e-5),
                  loss={"side": "sparse_categorical_crossentropy",
                        "position": "sparse_categorical_crossentropy"})
    model.fit(images[order][..., None], {"side": sides[order], "position": positions[order]},
              batch_size=config.batch_size, epochs=config.epochs, shuffle=True,
              verbose=2 if progress else 0)
    atomic_write_text(run_dir / "classifier.json", net_config.to_json())
    save_weights_atomically(model, run_dir / "classifier.weights.h5")

    def evaluate(stacks):
        if not stacks:
            return {}
        out = {}
        for stack in stacks:
            imgs, s_true, p_true = stack_examples(stack, config.image_size,
                                                  np.random.default_rng(0), 1, None)
            pred = model.predict(imgs[..., None], verbose=0)
            out[stack.name] = accuracy_report(np.argmax(pred["side"], -1),
                                              np.argmax(pred["position"], -1), s_true, p_true)
        return out

    report = {"config": json.loads(json.dumps(asdict(config))),
              "n_train_examples": int(images.shape[0]),
              "n_balanced_per_epoch": int(order.size),
              "train_stacks": [s.name for s in train_stacks],
              "validation_stacks": [s.name for s in validation_stacks],
              "validation": evaluate(validation_stacks),
              "training": evaluate(train_stacks)}
    report["wall_seconds"] = round(time.monotonic() - t0, 1)
    atomic_write_text(run_dir / "report.json", json.dumps(report, indent=2))
    return report
