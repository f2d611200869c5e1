"""Segmentation-network training loop (QMRITools ``TrainSegmentationNetwork``).

One *round* is ``round_length`` samples (``round_length // batch_size`` steps); after every
round the weights, the optimiser state and the loop state are checkpointed, the fixed
validation patches are scored (loss and Dice per class) and a row is appended to
``log.csv``. A run directory holds everything::

    run_dir/train_config.json     TrainConfig (incl. the network config)
    run_dir/network.json          the network architecture config (kind "unet")
    run_dir/validation.npz        the fixed validation patches
    run_dir/checkpoint/           model.weights.h5, optimizer.npz, state.json
    run_dir/best.weights.h5       weights of the round with the best mean validation Dice
    run_dir/log.csv               one row per round

Resuming (``resume=True``) reloads the checkpoint and continues at the next step; the batch
of step t is generated from ``default_rng([seed, t])``, so a resumed run draws exactly the
batches an uninterrupted run would have drawn. Raising ``rounds`` on resume extends the
run (the learning-rate schedule is then recomputed for the new total, as QMRITools'
continuation offsets the schedule by the rounds already done).
"""
from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from legseg_tf.derivatives import atomic_write, atomic_write_text
from legseg_tf.model_store import save_weights_atomically
from legseg_tf.networks.config import UNetConfig, total_stride
from legseg_tf.training.augmentation import AugmentConfig
from legseg_tf.training.data import IGNORE_LABEL, TrainingCase
from legseg_tf.training.metrics import batch_dice_per_class
from legseg_tf.training.progress import ProgressBar
from legseg_tf.training.sampling import (
    PatchConfig,
    fixed_patches,
    make_batch,
    one_hot,
    patch_stream,
)
from legseg_tf.training.schedule import learning_rate

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
WEIGHTS_NAME = "model.weights.h5"
BEST_WEIGHTS = "best.weights.h5"
LOG_NAME = "log.csv"


def _default_loss_weights() -> dict[str, float]:
    """:data:`~legseg_tf.training.losses.LOSS_WEIGHTS`, imported when a config is made (the
    losses module imports TensorFlow; reading this module's defaults does not)."""
    from legseg_tf.training.losses import LOSS_WEIGHTS

    return dict(LOSS_WEIGHTS)


def _savez(path: Path, saver: Callable, **arrays: np.ndarray) -> None:
    """``saver`` (``np.savez`` or ``np.savez_compressed``) into ``path`` through a handle:
    given a name, numpy would append ".npz" to it (the temporary file of an atomic write)."""
    with open(path, "wb") as handle:
        saver(handle, **arrays)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a segmentation training run (defaults: ``TrainSegmentationNetwork``'s).

    Attributes:
        network: the UNET architecture.
        patch: patch sampling.
        augmentation: random transforms.
        batch_size: patches per step (QMRITools 4).
        round_length: samples per round (QMRITools 512).
        rounds: number of rounds (QMRITools 150).
        base_rate: base learning rate (1e-3).
        beta_1, beta_2, epsilon: Adam parameters (0.9, 0.99, 1e-5).
        clip_norm: per-tensor gradient norm clip (1).
        l2: L2 regularisation weight on convolution kernels (1e-4), added to the loss as
            ``l2 * sum(w^2)``.
        loss_weights: loss name -> weight (:data:`~legseg_tf.training.losses.LOSS_WEIGHTS`).
        validation_patches: size of the fixed validation set (QMRITools 0.1 x round length).
        seed: master seed of batches, validation patches and initialisation.
        sideless_labels: the training labels carry no side, so left-right flips are allowed
            without a label swap (the only mode supported here).
        threads: TensorFlow intra/inter-op threads (None = TensorFlow default).
    """

    network: UNetConfig
    patch: PatchConfig = PatchConfig()
    augmentation: AugmentConfig = AugmentConfig()
    batch_size: int = 4
    round_length: int = 512
    rounds: int = 150
    base_rate: float = 1e-3
    beta_1: float = 0.9
    beta_2: float = 0.99
    epsilon: float = 1e-5
    clip_norm: float = 1.0
    l2: float = 1e-4
    loss_weights: dict[str, float] = field(default_factory=_default_loss_weights)
    validation_patches: int = 51
    seed: int = 0
    sideless_labels: bool = True
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.round_length < self.batch_size or self.rounds < 1:
            raise ValueError(f"need batch_size >= 1, round_length >= batch_size, rounds >= 1; "
                             f"got {self.batch_size}, {self.round_length}, {self.rounds}")
        if not self.sideless_labels:
            raise ValueError("only side-less training labels are supported (left-right flips "
                             "would need a side-label swap)")
        stride = total_stride(self.network)
        if any(p % s for p, s in zip(self.patch.patch_size, stride)):
            raise ValueError(f"patch {self.patch.patch_size} must be a multiple of the network "
                             f"stride {stride}")
        if self.network.spatial_dims != 3:
            raise ValueError("only 3-D networks are trained here")

    @property
    def steps_per_round(self) -> int:
        return self.round_length // self.batch_size

    @property
    def total_steps(self) -> int:
        return self.rounds * self.steps_per_round

    def to_dict(self) -> dict:
        data = asdict(self)
        data["network"] = self.network.to_dict()
        return json.loads(json.dumps(data))

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        data = dict(data)
        patch = dict(data.pop("patch"))
        patch = PatchConfig(**{k: tuple(v) if isinstance(v, list) else v
                               for k, v in patch.items()})
        augmentation = AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v
                                        for k, v in data.pop("augmentation").items()})
        network = UNetConfig.from_dict(data.pop("network"))
        return cls(network=network, patch=patch, augmentation=augmentation, **data)


@dataclass
class TrainState:
    """Loop state saved with every checkpoint."""

    step: int = 0
    round: int = 0
    best_dice: float = -1.0
    best_round: int = -1
    wall_seconds: float = 0.0


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train`: the final state and the run directory."""

    state: TrainState
    run_dir: Path
    last_row: dict = field(default_factory=dict)


def kaiming_initialise(model, seed: int) -> None:
    """Re-draw every convolution kernel from a He (Kaiming) normal distribution."""
    import keras

    initializer = keras.initializers.HeNormal(seed=seed)
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv3D, keras.layers.Conv2D)):
            layer.kernel.assign(initializer(layer.kernel.shape))


class _Trainer:
    """Model, optimiser and the compiled step functions of one run."""

    def __init__(self, config: TrainConfig) -> None:
        import keras
        import tensorflow as tf

        from legseg_tf.networks.unet import build_unet
        from legseg_tf.training.losses import combined_loss

        self.config = config
        keras.utils.set_random_seed(config.seed)
        self.model = build_unet(config.network, config.patch.patch_size)
        kaiming_initialise(self.model, config.seed)
        self.optimizer = keras.optimizers.Adam(
            learning_rate=config.base_rate, beta_1=config.beta_1, beta_2=config.beta_2,
            epsilon=config.epsilon, clipnorm=config.clip_norm)
        self.optimizer.build(self.model.trainable_variables)
        kernels = [v for v in self.model.trainable_variables if "kernel" in v.path]
        weights = dict(config.loss_weights)
        l2 = float(config.l2)

        def total_loss(y, p):
            loss = combined_loss(y, p, weights)
            if l2:
                loss = loss + l2 * tf.add_n([tf.reduce_sum(tf.square(k)) for k in kernels])
            return loss

        @tf.function(reduce_retracing=True)
        def train_step(x, y):
            with tf.GradientTape() as tape:
                p = self.model(x, training=True)
                loss = total_loss(y, p)
            grads = tape.gradient(loss, self.model.trainable_variables)
            self.optimizer.apply(grads, self.model.trainable_variables)
            return loss

        @tf.function(reduce_retracing=True)
        def eval_step(x, y):
            p = self.model(x, training=False)
            return combined_loss(y, p, weights), tf.argmax(p, axis=-1)

        self.train_step = train_step
        self.eval_step = eval_step

    def set_learning_rate(self, value: float) -> None:
        self.optimizer.learning_rate.assign(value)

    def save(self, directory: Path, state: TrainState) -> None:
        """Checkpoint: weights, optimizer state and ``state.json``, each written atomically."""
        directory.mkdir(parents=True, exist_ok=True)
        save_weights_atomically(self.model, directory / WEIGHTS_NAME)
        arrays = {f"v{i:04d}": np.asarray(v.numpy())
                  for i, v in enumerate(self.optimizer.variables)}
        atomic_write(directory / "optimizer.npz", lambda tmp: _savez(tmp, np.savez, **arrays))
        atomic_write_text(directory / "state.json", json.dumps(asdict(state), indent=2))

    def load(self, directory: Path) -> TrainState:
        self.model.load_weights(directory / WEIGHTS_NAME)
        with np.load(directory / "optimizer.npz") as arrays:
            values = [arrays[k] for k in sorted(arrays.files)]
        if len(values) != len(self.optimizer.variables):
            raise ValueError(f"{directory}: optimizer state has {len(values)} arrays, the "
                             f"optimizer {len(self.optimizer.variables)}")
        for variable, value in zip(self.optimizer.variables, values):
            variable.assign(value)
        return TrainState(**json.loads((directory / "state.json").read_text()))


def _batch_for_step(cases: Sequence[TrainingCase], config: TrainConfig, step: int,
                    normalise: Callable) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([config.seed, step])
    stream = patch_stream(cases, config.patch, config.augmentation, rng, normalise,
                          sideless=True)
    return make_batch(stream, config.batch_size, config.network.n_classes)


def _batches(cases, config, first_step, last_step, normalise):
    """tf.data pipeline of (images, one-hot) batches for steps first..last-1, prefetched."""
    import tensorflow as tf

    n_classes = config.network.n_classes
    shape = tuple(config.patch.patch_size)

    def generate():
        for step in range(first_step, last_step):
            yield _batch_for_step(cases, config, step, normalise)

    signature = (
        tf.TensorSpec((config.batch_size, *shape, 1), tf.float32),
        tf.TensorSpec((config.batch_size, *shape, n_classes), tf.float32),
    )
    return tf.data.Dataset.from_generator(generate, output_signature=signature).prefetch(2)


def _validate(trainer: _Trainer, images: np.ndarray, labels: np.ndarray,
              n_classes: int, batch_size: int) -> tuple[float, np.ndarray]:
    losses, predicted = [], []
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size]
        y = one_hot(labels[start:start + batch_size], n_classes)
        loss, pred = trainer.eval_step(x, y)
        losses.append(float(loss) * x.shape[0])
        predicted.append(np.asarray(pred))
    # ignored voxels are left out of every class's Dice
    predicted = np.where(labels == IGNORE_LABEL, IGNORE_LABEL, np.concatenate(predicted))
    return (sum(losses) / images.shape[0],
            batch_dice_per_class(labels, predicted, n_classes))


def _present_classes(labels: np.ndarray) -> list[int]:
    return [int(c) for c in np.unique(labels) if c and c != IGNORE_LABEL]


def train(config: TrainConfig, cases: Sequence[TrainingCase],
          validation_cases: Sequence[TrainingCase], run_dir: str | Path, *,
          resume: bool = False, normalise: Callable | None = None, progress: bool = True,
          max_steps: int | None = None,
          initial_weights: str | Path | None = None) -> TrainResult:
    """Train (or continue training) a segmentation network.

    Args:
        config: the run definition; on resume it must equal the stored one except for
            ``rounds`` (which may grow) and ``threads`` (an execution setting).
        cases: training cases (side-less training labels).
        validation_cases: held-out cases for the fixed validation patches (may be the
            training cases when nothing is held out).
        run_dir: run directory (created).
        resume: continue from ``run_dir/checkpoint``.
        normalise: patch normalisation (default: the "Uniform" histogram normalisation).
        progress: draw a progress bar on stderr.
        max_steps: stop after this many steps in this call (at a round boundary or not;
            a checkpoint is always written before returning).
        initial_weights: a fresh run starts from these weights (same architecture) instead of
            a random initialisation (fine-tuning); ignored on resume.

    Returns:
        :class:`TrainResult`.
    """
    import tensorflow as tf

    if normalise is None:
        from legseg_tf.normalization import uniform_normalise as normalise
    if config.threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(config.threads)
            tf.config.threading.set_inter_op_parallelism_threads(config.threads)
        except RuntimeError as error:  # TensorFlow already initialised in this process
            logger.warning("thread settings unchanged: %s", error)
    run_dir = Path(run_dir)
    checkpoint = run_dir / CHECKPOINT_DIR
    config_path = run_dir / "train_config.json"
    n_classes = config.network.n_classes
    for case in list(cases) + list(validation_cases):
        top = int(case.labels[case.labels != IGNORE_LABEL].max(initial=0))
        if top >= n_classes:
            raise ValueError(f"case {case.name!r} has label {top} but the network "
                             f"has {n_classes} classes")
    if resume:
        if not (checkpoint / "state.json").is_file():
            raise FileNotFoundError(f"no checkpoint to resume in {checkpoint}")
        stored = TrainConfig.from_dict(json.loads(config_path.read_text()))
        if replace(stored, rounds=config.rounds, threads=config.threads) != config:
            raise ValueError(f"{config_path} differs from the given configuration in more than "
                             "'rounds' and 'threads'; resume with the stored configuration")
    elif (checkpoint / "state.json").exists():
        raise FileExistsError(f"{run_dir} already holds a run; resume it or choose another "
                              "directory")
    if initial_weights is not None and not resume and not Path(initial_weights).is_file():
        raise FileNotFoundError(f"initial weights {initial_weights} not found")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(config_path, json.dumps(config.to_dict(), indent=2))
    atomic_write_text(run_dir / "network.json", config.network.to_json())

    validation_file = run_dir / "validation.npz"
    if validation_file.is_file():
        with np.load(validation_file) as stored_patches:
            val_images, val_labels = stored_patches["images"], stored_patches["labels"]
    else:
        val_images, val_labels = fixed_patches(validation_cases, config.patch,
                                               config.validation_patches, config.seed + 1,
                                               normalise)
        atomic_write(validation_file, lambda tmp: _savez(tmp, np.savez_compressed,
                                                         images=val_images, labels=val_labels))

    trainer = _Trainer(config)
    if initial_weights is not None and not resume:
        trainer.model.load_weights(str(initial_weights))
        atomic_write_text(run_dir / "initial_weights.txt", f"{initial_weights}\n")
        logger.info("starting from the weights in %s", initial_weights)
    state = trainer.load(checkpoint) if resume else TrainState()
    total = config.total_steps
    stop = total if max_steps is None else min(total, state.step + max_steps)
    logger.info("training %s: step %d -> %d of %d (%d per round), batch %d, patch %s",
                run_dir, state.step, stop, total, config.steps_per_round, config.batch_size,
                config.patch.patch_size)
    log_path = run_dir / LOG_NAME
    present = _present_classes(val_labels)
    header = (["round", "step", "learning_rate", "train_loss", "val_loss", "val_mean_dice",
               "wall_seconds"] + [f"dice_{c}" for c in range(1, n_classes)])
    if not log_path.exists():
        with open(log_path, "w", newline="") as handle:
            csv.writer(handle).writerow(header)

    bar = ProgressBar(stop, state.step, enabled=progress)
    losses: list[float] = []
    last_row: dict = {}
    t0 = time.monotonic()
    wall_before = state.wall_seconds
    for x, y in _batches(cases, config, state.step, stop, normalise):
        rate = learning_rate(state.step, total, config.base_rate)
        trainer.set_learning_rate(rate)
        loss = float(trainer.train_step(x, y))
        if not np.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at step {state.step}")
        losses.append(loss)
        state.step += 1
        bar.update(state.step, f"loss {np.mean(losses[-20:]):.3f}")
        end_of_round = state.step % config.steps_per_round == 0
        if end_of_round or state.step == stop:
            if end_of_round:
                state.round += 1
            val_loss, dice = _validate(trainer, val_images, val_labels, n_classes,
                                       config.batch_size)
            mean_dice = float(np.mean(dice[present])) if present else float("nan")
            state.wall_seconds = wall_before + time.monotonic() - t0
            last_row = {"round": state.round, "step": state.step, "learning_rate": rate,
                        "train_loss": float(np.mean(losses)) if losses else float("nan"),
                        "val_loss": val_loss, "val_mean_dice": mean_dice,
                        "wall_seconds": round(state.wall_seconds, 1)}
            last_row.update({f"dice_{c}": float(dice[c]) for c in range(1, n_classes)})
            with open(log_path, "a", newline="") as handle:
                csv.writer(handle).writerow([last_row[k] for k in header])
            if mean_dice > state.best_dice:
                state.best_dice, state.best_round = mean_dice, state.round
                save_weights_atomically(trainer.model, run_dir / BEST_WEIGHTS)
            trainer.save(checkpoint, state)
            logger.info("round %d step %d: train loss %.4f, val loss %.4f, val mean Dice %.4f",
                        state.round, state.step, last_row["train_loss"], val_loss, mean_dice)
            losses = []
    bar.close()
    return TrainResult(state=state, run_dir=run_dir, last_row=last_row)
