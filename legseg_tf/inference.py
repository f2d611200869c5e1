"""Run one region network over one part volume (QMRITools ``ApplySegmentationNetwork``).

Steps for a (z, y, x) part: crop to the non-zero bounding box -> choose the patch size from the
network's total stride and a memory budget (one patch per part when it fits, as QMRITools
does) -> tiles -> "Uniform" histogram normalisation of every tile -> network -> Gaussian
blending of softmax outputs (or the original hard-label union) -> arg-max -> optionally the
largest 6-connected component per label -> un-crop.
"""
from __future__ import annotations

import logging
import math
import sys
import time
import weakref
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from legseg_tf import postprocessing, sliding_window
from legseg_tf.config import InferenceConfig
from legseg_tf.normalization import uniform_normalise

logger = logging.getLogger(__name__)

#: Fraction of the memory budget a patch may use (QMRITools uses 0.9 of its limit).
BUDGET_FRACTION = 0.9
#: Default budget when none is given: this share of the available memory, at most 32 GB.
AVAILABLE_FRACTION = 0.5
MAX_DEFAULT_BUDGET_GB = 32.0


@dataclass
class NetworkOutput:
    """Result of one network on one part.

    Attributes:
        labels: (z, y, x) int16 training-label indices (0 = background).
        probabilities: (z, y, x, n_classes) float32 blended softmax, when requested.
        patch: patch size used (z, y, x).
        n_tiles: network calls' tiles.
        forward_s: seconds spent inside the network.
        confidence: {"mean_max_probability", "voxels"}: mean of the top softmax probability
            over the voxels labelled foreground (for the QC flags), when probabilities exist.
    """

    labels: np.ndarray
    probabilities: np.ndarray | None = None
    patch: tuple[int, int, int] | None = None
    n_tiles: int = 0
    forward_s: float = 0.0
    confidence: dict | None = None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _levels(base: Path, own: str) -> list[Path]:
    """``base/own`` and each of its parents up to ``base``."""
    group = base.joinpath(*[p for p in own.split("/") if p not in ("", ".", "..")])
    levels = [group]
    while levels[-1] != base:
        levels.append(levels[-1].parent)
    return levels


def cgroup_memory_left(root: Path = Path("/sys/fs/cgroup"),
                       proc_cgroup: Path = Path("/proc/self/cgroup")) -> int | None:
    """Bytes left under the tightest cgroup memory limit of this process, or None (no limit).

    Every level from the process's own group (``/proc/self/cgroup``: a SLURM job step, or
    ``/`` inside a container's namespace) up to the hierarchy's root counts: cgroup v2
    ``memory.max`` - ``memory.current``; cgroup v1 ``memory.limit_in_bytes`` -
    ``memory.usage_in_bytes`` under ``root/memory``.
    """
    own_v2, own_v1 = "/", "/"
    try:
        for line in proc_cgroup.read_text().splitlines():
            number, controllers, path = (line.split(":", 2) + ["", ""])[:3]
            if number == "0" and controllers == "":
                own_v2 = path
            elif "memory" in controllers.split(","):
                own_v1 = path
    except OSError:
        pass
    left: list[int] = []
    for base, own, limit_name, used_name in (
        (root, own_v2, "memory.max", "memory.current"),
        (root / "memory", own_v1, "memory.limit_in_bytes", "memory.usage_in_bytes"),
    ):
        for level in _levels(base, own):
            limit, used = _read_int(level / limit_name), _read_int(level / used_name)
            if limit is not None and used is not None and limit < 2**60:
                left.append(limit - used)
    return max(0, min(left)) if left else None


def available_memory_gb(meminfo: Path = Path("/proc/meminfo"),
                        cgroup: Path = Path("/sys/fs/cgroup"),
                        proc_cgroup: Path = Path("/proc/self/cgroup")) -> float:
    """Memory this process may still use, in GB: MemAvailable of ``meminfo``, capped by the
    tightest cgroup limit (:func:`cgroup_memory_left`: a SLURM job, ``docker run --memory``);
    8 GB assumed where nothing can be read."""
    available = None
    try:
        with open(meminfo, encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) / 1024**2
                    break
    except (OSError, ValueError):
        pass
    left = cgroup_memory_left(cgroup, proc_cgroup)
    if left is not None:
        available = left / 1024**3 if available is None else min(available, left / 1024**3)
    return 8.0 if available is None else available


def default_budget_gb() -> float:
    """Memory budget for one patch when ``--mem-gb`` is not given."""
    return min(AVAILABLE_FRACTION * available_memory_gb(), MAX_DEFAULT_BUDGET_GB)


def _probe_shape(stride: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(s) * 2 for s in stride)


def activation_bytes_per_voxel(model, stride: tuple[int, ...]) -> float:
    """QMRITools' network memory model per input voxel: 4 bytes x all layer outputs.

    Every layer's output size is inferred symbolically for a small probe input (no forward
    pass) and divided by the probe's voxel count. This over-estimates TensorFlow's real peak,
    which frees intermediate tensors, so it is a safe bound.
    """
    return _bytes_per_voxel(model, tuple(int(s) for s in stride))


@lru_cache(maxsize=16)
def _bytes_per_voxel(model, stride: tuple[int, ...]) -> float:
    import keras

    probe = _probe_shape(stride)
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    try:
        symbolic = keras.Model(model.inputs, [layer.output for layer in layers])
        specs = symbolic.compute_output_spec(keras.KerasTensor((1, *probe, 1)))
        total = sum(math.prod(int(d) for d in spec.shape[1:]) for spec in specs)
    except (ValueError, TypeError, AttributeError, NotImplementedError) as error:
        logger.debug("symbolic memory estimate failed (%s); assuming full resolution", error)
        total = 0
        for layer in layers:
            channels = layer.output.shape[-1] if hasattr(layer, "output") else None
            total += int(channels or 1) * math.prod(probe)
    return 4.0 * total / math.prod(probe)


def choose_patch_size(
    shape: tuple[int, ...],
    stride: tuple[int, ...],
    bytes_per_voxel: float,
    budget_bytes: float,
) -> tuple[int, ...]:
    """Largest stride-multiple patch, not bigger than the (rounded-up) part, within budget.

    Starts from the part size rounded up to the stride (one patch per part, as QMRITools) and
    shrinks the axis whose patch is largest in voxels relative to its stride until
    ``bytes_per_voxel x patch voxels <= BUDGET_FRACTION x budget``; no axis goes below one stride.
    """
    patch = [max(math.ceil(s / t), 1) * t for s, t in zip(shape, stride)]
    limit = BUDGET_FRACTION * budget_bytes
    while bytes_per_voxel * math.prod(patch) > limit:
        shrinkable = [i for i, (p, t) in enumerate(zip(patch, stride)) if p > t]
        if not shrinkable:
            logger.warning("even the smallest patch %s exceeds the memory budget of %.2f GB",
                           tuple(patch), budget_bytes / 1e9)
            break
        axis = max(shrinkable, key=lambda i: patch[i] / stride[i])
        patch[axis] -= stride[axis]
    return tuple(patch)


#: model -> its traced forward function (see :func:`forward_function`); weak keys, so a model
#: that is dropped takes its function with it.
_FORWARD: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _keras_model(model) -> bool:
    keras = sys.modules.get("keras")
    if keras is None or not isinstance(model, keras.Model):
        return False
    try:
        return len(model.inputs) == 1
    except (AttributeError, ValueError):  # a subclassed model that was never built
        return False


def forward_function(model):
    """``batch -> outputs`` for ``model``, traced once per model and process.

    A Keras model runs through one ``tf.function`` whose input signature leaves the batch and
    the free spatial axes unknown (``(None, None, None, None, channels)`` for a fully
    convolutional net), so every tile shape and batch size reuses the same trace. Keras'
    ``predict_on_batch`` instead retraces for each new tile shape (0.9-1.5 s per trace with
    QMRITools-sized networks). The graph runs the same operations on the same tensors, so the
    outputs are bit-identical to ``predict_on_batch`` (tested); XLA is used exactly where
    Keras would use it (``model.jit_compile``: on GPUs, never on CPUs). Anything else with a
    ``predict_on_batch`` method (test doubles, proxies) is called through that method.
    """
    if not _keras_model(model):
        return model.predict_on_batch
    try:
        return _FORWARD[model]
    except (KeyError, TypeError):
        pass
    import tensorflow as tf

    reference = weakref.ref(model)  # the function must not keep the model alive
    name = model.name
    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)

    def call(batch):
        # Python runs here only while TensorFlow traces: once per model and process.
        logger.debug("tracing network %s for input %s", name, spec.shape)
        output = reference()(batch, training=False)
        if isinstance(output, (list, tuple)) and len(output) == 1:
            output = output[0]
        if isinstance(output, dict):
            raise TypeError("a segmentation network must have a single output")
        return output

    traced = tf.function(call, input_signature=[spec],
                         jit_compile=bool(getattr(model, "jit_compile", False)))

    def forward(batch: np.ndarray) -> np.ndarray:
        return traced(np.asarray(batch, dtype=np.float32)).numpy()

    forward.traced = traced  # type: ignore[attr-defined]
    _FORWARD[model] = forward
    return forward


def tracing_count(model) -> int:
    """How often :func:`forward_function` traced ``model`` in this process (0: never run)."""
    forward = _FORWARD.get(model) if _keras_model(model) else None
    traced = getattr(forward, "traced", None)
    return int(traced.experimental_get_tracing_count()) if traced is not None else 0


def make_predict(model, timer: list[float] | None = None):
    """Wrap a model as ``predict(tiles) -> softmax`` with per-tile Uniform normalisation.

    The network runs through :func:`forward_function`: a ``tf.function`` traced once per
    model and process whatever the tile shape (graph mode uses about a third of the memory of
    eager calls). Seconds spent in the network are added to ``timer[0]``.
    """
    forward = forward_function(model)

    def predict(tiles: np.ndarray) -> np.ndarray:
        normalised = np.stack([uniform_normalise(tile) for tile in tiles]).astype(np.float32)
        started = time.perf_counter()
        output = forward(normalised)
        if isinstance(output, dict):
            raise TypeError("a segmentation network must have a single output")
        output = np.asarray(output, dtype=np.float32)
        if timer is not None:
            timer[0] += time.perf_counter() - started
        return output

    return predict


def apply_segmentation_network(
    volume: np.ndarray,
    model,
    n_classes: int,
    config: InferenceConfig,
    stride_zyx: tuple[int, int, int],
    *,
    largest_component: bool = True,
    patch: tuple[int, int, int] | None = None,
) -> NetworkOutput:
    """Segment one part with one network.

    Args:
        volume: (z, y, x) float part (background 0).
        model: Keras model mapping (b, z, y, x, 1) to softmax (b, z, y, x, n_classes).
        n_classes: number of output classes including background.
        config: merge mode, overlap, batch size, memory budget, probabilities on/off.
        stride_zyx: the network's total down-sampling per axis.
        largest_component: keep only each label's largest 6-connected component.
        patch: force a patch size (otherwise chosen from the memory budget).

    Returns:
        :class:`NetworkOutput` with labels (and probabilities if ``config.save_probabilities``)
        on the full part grid.
    """
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 3:
        raise ValueError(f"expected a (z, y, x) part, got shape {volume.shape}")
    labels = np.zeros(volume.shape, dtype=np.int16)
    probabilities = None
    nonzero = np.nonzero(volume)
    if nonzero[0].size == 0:
        if config.save_probabilities:
            probabilities = np.zeros((*volume.shape, n_classes), dtype=np.float32)
            probabilities[..., 0] = 1.0
        return NetworkOutput(labels, probabilities)
    box = tuple(slice(int(idx.min()), int(idx.max()) + 1) for idx in nonzero)
    crop = volume[box]
    if patch is None:
        budget_gb = config.mem_gb if config.mem_gb is not None else default_budget_gb()
        patch = choose_patch_size(crop.shape, stride_zyx,
                                  activation_bytes_per_voxel(model, stride_zyx), budget_gb * 1e9)
    timer = [0.0]
    predict = make_predict(model, timer)
    if config.merge == "qmritools":
        mask_filter = postprocessing.largest_component if largest_component else None
        crop_labels, n_tiles = sliding_window.predict_hard_labels(
            crop, predict, patch, batch_size=config.batch_size, stride=stride_zyx,
            mask_filter=mask_filter)
        crop_probabilities = None
    else:
        crop_probabilities, n_tiles = sliding_window.predict_probabilities(
            crop, predict, patch, overlap=config.overlap, batch_size=config.batch_size,
            stride=stride_zyx)
        if crop_probabilities.shape[-1] != n_classes:
            raise ValueError(
                f"network returned {crop_probabilities.shape[-1]} classes, expected {n_classes}"
            )
        winners = np.argmax(crop_probabilities, axis=-1)
        crop_labels = winners.astype(np.int16)
        if largest_component:
            crop_labels = postprocessing.largest_component_per_label(crop_labels)
    confidence = None
    if crop_probabilities is not None and (crop_labels > 0).any():
        # the winning class's probability is the maximum: gathered, not reduced over classes
        top = np.take_along_axis(crop_probabilities, winners[..., None], axis=-1)[..., 0]
        top = top[crop_labels > 0]
        confidence = {"mean_max_probability": round(float(top.mean()), 4), "voxels": int(top.size)}
    labels[box] = crop_labels
    if config.save_probabilities and crop_probabilities is not None:
        probabilities = np.zeros((*volume.shape, n_classes), dtype=np.float32)
        probabilities[..., 0] = 1.0
        probabilities[box] = crop_probabilities
    logger.debug("part %s: patch %s, %d tile(s), %.2f s in the network",
                 volume.shape, patch, n_tiles, timer[0])
    return NetworkOutput(labels, probabilities, tuple(patch), n_tiles, timer[0], confidence)
