"""Run one region network over one part volume (QMRITools ``ApplySegmentationNetwork``).

Steps for a (z, y, x) part: crop to the non-zero bounding box -> choose the patch size from the
network's total stride and the whole process's memory budget (one patch per part when it
fits, as QMRITools does; :func:`choose_patch_size`) -> tiles -> "Uniform" histogram normalisation of every tile -> network -> Gaussian
blending of softmax outputs (or the original hard-label union) -> arg-max -> optionally the
largest 6-connected component per label -> un-crop.
"""
from __future__ import annotations

import logging
import math
import sys
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from legseg_tf import postprocessing, sliding_window
from legseg_tf.config import PRECISIONS, InferenceConfig
from legseg_tf.device import (
    GB_PER_GIB,
    default_budget_gb,
    process_memory_gb,
    release_freed_memory,
)
from legseg_tf.masking import bounding_box
from legseg_tf.normalization import uniform_normalise

logger = logging.getLogger(__name__)

#: Fraction of the memory budget the process may fill by the estimate (QMRITools uses 0.9 of
#: its limit). The rest absorbs what the allocators keep after a part and do not reuse for
#: the next: a second leg part of a 512x512x120 volume grew the resident set by another
#: 0.3-0.5 GB (docs/benchmarks.md).
BUDGET_FRACTION = 0.8


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


#: Multiplier on the live-activation estimate (:func:`activation_bytes_per_voxel`) for what
#: TensorFlow and oneDNN allocate beside the tensors (scratch buffers, weight re-orders). A
#: 32x160x160 tile of the QMRITools-sized net raised the peak RSS by 730 B per voxel on a
#: 2-core Xeon, against 665 B per voxel of live tensors.
ACTIVATION_MARGIN = 1.5


def _probe_shape(stride: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(s) * 2 for s in stride)


def activation_bytes_per_voxel(model, stride: tuple[int, ...]) -> float:
    """Peak activation memory of one forward pass per input voxel, in bytes.

    Every layer's output size is inferred symbolically for a small probe input (no forward
    pass); walking the layers in order, a tensor lives from the layer that makes it to its
    last consumer (the skip connections of a U-Net live across the whole decoder). The
    largest sum of live float32 tensors, divided by the probe's voxel count and multiplied by
    ACTIVATION_MARGIN, is the estimate. Where the graph cannot be walked, every layer output
    counts at once (QMRITools' memory model, several times TensorFlow's real peak).
    """
    return _bytes_per_voxel(model, tuple(int(s) for s in stride))


def _live_peak(model, layers, sizes: dict) -> int:
    """Largest sum of live tensor sizes while ``layers`` run in order."""
    last_use: dict[int, int] = {}
    for index, layer in enumerate(layers):
        inputs = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
        for tensor in inputs:
            last_use[id(tensor)] = index
    keep = {id(t) for t in model.outputs}
    live = {id(t) for t in model.inputs}
    peak = 0
    for index, layer in enumerate(layers):
        live.add(id(layer.output))
        peak = max(peak, sum(sizes.get(t, 0) for t in live))
        live = {t for t in live if t in keep or last_use.get(t, -1) > index}
    return peak


@lru_cache(maxsize=16)
def _bytes_per_voxel(model, stride: tuple[int, ...]) -> float:
    import keras

    probe = _probe_shape(stride)
    voxels = math.prod(probe)
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    try:
        symbolic = keras.Model(model.inputs, [layer.output for layer in layers])
        specs = symbolic.compute_output_spec(keras.KerasTensor((1, *probe, 1)))
        sizes = {id(layer.output): 4 * math.prod(int(d) for d in spec.shape[1:])
                 for layer, spec in zip(layers, specs)}
        sizes.update({id(t): 4 * voxels * int(t.shape[-1] or 1) for t in model.inputs})
        return ACTIVATION_MARGIN * _live_peak(model, layers, sizes) / voxels
    except (ValueError, TypeError, AttributeError, NotImplementedError) as error:
        logger.debug("live memory estimate failed (%s); counting every layer output", error)
    total = 0
    for layer in layers:
        channels = layer.output.shape[-1] if hasattr(layer, "output") else None
        total += int(channels or 1) * voxels
    return 4.0 * total / voxels


def merge_buffer_bytes(part_shape: tuple[int, ...], patch: tuple[int, ...], n_classes: int,
                       config: InferenceConfig) -> float:
    """Bytes the merger holds for one (z, y, x) part beside the network's activations.

    Gaussian merge: the zero-padded copy, the batch of normalised tiles and its outputs, the
    labels and the winner's probability of the part; for several tiles the float32
    accumulator and weight sum, one tile deep along the first tiled axis
    (:func:`legseg_tf.sliding_window.blend_tiles`, which weights the outputs in place); for
    one tile its weighted copy (an upper bound: without saved probabilities it is weighted a
    few slices at a time); with probabilities saved, two part-sized copies of them.
    QMRITools merge: one boolean mask per class and the labels.
    """
    part = math.prod(part_shape)
    padded_shape = [max(s, p) for s, p in zip(part_shape, patch)]
    padded = math.prod(padded_shape)
    tile = math.prod(patch) * config.batch_size
    total = 4.0 * padded if padded != part else 0.0
    total += 8.0 * tile + 4.0 * n_classes * tile
    if config.merge == "qmritools":
        return total + 4.0 * n_classes * math.prod(patch) + (n_classes + 2.0) * padded
    total += 8.0 * part  # int16 labels (part and crop) + float32 winner's probability
    tiled = [a for a, (n, p) in enumerate(zip(padded_shape, patch)) if n > p]
    if tiled:
        window = padded // padded_shape[tiled[0]] * patch[tiled[0]]
        total += 4.0 * (n_classes + 1) * window
    else:
        total += 4.0 * n_classes * (math.prod(patch) + part)
    if config.save_probabilities:
        total += 2 * 4.0 * n_classes * part
    return total


def choose_patch_size(
    shape: tuple[int, ...],
    stride: tuple[int, ...],
    bytes_per_voxel: float,
    budget_bytes: float,
    *,
    buffer_bytes: Callable[[tuple[int, ...]], float] | None = None,
    minimum: tuple[int, ...] | None = None,
) -> tuple[int, ...]:
    """Largest stride-multiple patch, not bigger than the (rounded-up) part, within budget.

    Starts from the part size rounded up to the stride (one patch per part, as QMRITools) and
    shrinks the axis whose patch is largest in voxels relative to its stride until
    ``bytes_per_voxel x patch voxels + buffer_bytes(patch) <= budget_bytes``; no axis goes
    below one stride, nor below ``minimum`` (rounded up to the stride; the smallest tile that
    still gives a network enough context) where the part is that large. When even the
    smallest allowed patch does not fit, it is used anyway, with a warning.
    """
    patch = [max(math.ceil(s / t), 1) * t for s, t in zip(shape, stride)]
    floor = [t for t in stride] if minimum is None else [
        min(p, max(math.ceil(m / t), 1) * t) for p, m, t in zip(patch, minimum, stride)]

    def needed() -> float:
        extra = buffer_bytes(tuple(patch)) if buffer_bytes is not None else 0.0
        return bytes_per_voxel * math.prod(patch) + extra

    while needed() > budget_bytes:
        shrinkable = [i for i, (p, f) in enumerate(zip(patch, floor)) if p > f]
        if not shrinkable:
            logger.warning("the memory budget leaves %.2f GB for the networks, less than the "
                           "%.2f GB of the smallest usable patch %s: running it anyway (the "
                           "process may exceed the budget)", max(budget_bytes, 0.0) / 1e9,
                           needed() / 1e9, tuple(patch))
            break
        axis = max(shrinkable, key=lambda i: patch[i] / stride[i])
        patch[axis] -= stride[axis]
    return tuple(patch)


class _RetainedMemory:
    """Memory that earlier parts left for reuse by the next ones, in GB (process-wide).

    TensorFlow's CPU allocator keeps the activation buffers of a forward pass after it
    returns (about 0.5 GB after a 32x160x160 tile of a QMRITools-sized net; ``malloc_trim``
    frees none of it) and reuses them for the next tiles; the C allocator keeps freed
    tile-sized NumPy buffers. The resident-set growth over each part, less the arrays the
    part returns, is added here, so that this memory is counted once, with the next part's
    activations and buffers, and not again as memory in use (:func:`fixed_memory_gb`). The
    next part does not reuse all of it (measured: 0.3 GB more for the second leg of a
    512x512x120 image); BUDGET_FRACTION's headroom absorbs that.
    """

    def __init__(self) -> None:
        self.gb = 0.0

    def add(self, resident_before_gb: float, kept_bytes: int) -> None:
        """Count the growth since ``resident_before_gb`` less ``kept_bytes`` still in use."""
        resident, _ = process_memory_gb()
        self.gb += max(0.0, resident - resident_before_gb - kept_bytes / 1024**3)


_RETAINED = _RetainedMemory()


def fixed_memory_gb() -> float:
    """Memory this process holds that the next tile cannot reuse, in GiB: the resident set
    (TensorFlow runtime, loaded models, the image and its intermediate arrays) less what
    earlier parts left for reuse."""
    resident, _ = process_memory_gb()
    return max(0.0, resident - _RETAINED.gb)


#: model -> {precision: its traced forward function} (see :func:`forward_function`); weak
#: keys, so a model that is dropped takes its functions with it.
_FORWARD: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _keras_model(model) -> bool:
    keras = sys.modules.get("keras")
    if keras is None or not isinstance(model, keras.Model):
        return False
    try:
        return len(model.inputs) == 1
    except (AttributeError, ValueError):  # a subclassed model that was never built
        return False


def bfloat16_copy(model):
    """A copy of a functional Keras ``model`` that computes in bfloat16 (Keras'
    ``mixed_bfloat16`` policy: float32 weights, bfloat16 arithmetic) except its output layer,
    which stays float32 so that the softmax is not rounded to bfloat16's 8 bits."""
    import keras

    output_layers = {id(t._keras_history[0]) for t in model.outputs}

    def clone(layer):
        config = layer.get_config()
        config["dtype"] = "float32" if id(layer) in output_layers else "mixed_bfloat16"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def forward_function(model, precision: str = "float32"):
    """``batch -> outputs`` for ``model``, traced once per model, precision and process.

    The outputs of a Keras model are a read-only NumPy view of the result tensor (no copy).

    A Keras model runs through one ``tf.function`` whose input signature leaves the batch and
    the free spatial axes unknown (``(None, None, None, None, channels)`` for a fully
    convolutional net), so every tile shape and batch size reuses the same trace. Keras'
    ``predict_on_batch`` instead retraces for each new tile shape (0.9-1.5 s per trace with
    QMRITools-sized networks). The graph runs the same operations on the same tensors, so the
    outputs are bit-identical to ``predict_on_batch`` (tested); XLA is used exactly where
    Keras would use it (``model.jit_compile``: on GPUs, never on CPUs). ``precision``
    "bfloat16" runs :func:`bfloat16_copy` of the model instead (outputs differ from float32
    by rounding). Anything else with a ``predict_on_batch`` method (test doubles, proxies) is
    called through that method, in its own precision.
    """
    if not _keras_model(model):
        return model.predict_on_batch
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    functions = _FORWARD.setdefault(model, {})
    if precision in functions:
        return functions[precision]
    import tensorflow as tf

    if precision == "bfloat16":
        held = bfloat16_copy(model)   # owned by this function, which dies with the model
        network = lambda: held  # noqa: E731
    else:
        network = weakref.ref(model)  # the function must not keep the model alive
    name = model.name
    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)

    def call(batch):
        # Python runs here only while TensorFlow traces: once per model and process.
        logger.debug("tracing network %s (%s) for input %s", name, precision, spec.shape)
        output = network()(batch, training=False)
        if isinstance(output, (list, tuple)) and len(output) == 1:
            output = output[0]
        if isinstance(output, dict):
            raise TypeError("a segmentation network must have a single output")
        return tf.cast(output, tf.float32)

    # No AutoGraph: a Keras network has no Python control flow on tensors, and converting
    # ``call`` would convert the logging module behind the debug line too (3-4 s per trace).
    traced = tf.function(call, input_signature=[spec], autograph=False,
                         jit_compile=bool(getattr(model, "jit_compile", False)))

    def forward(batch: np.ndarray) -> np.ndarray:
        # a read-only view of the output tensor's buffer: ``Tensor.numpy()`` would copy it
        # (60 ms and a second 120 MB buffer for a QMRITools-sized tile of a thigh)
        return np.asarray(traced(np.asarray(batch, dtype=np.float32)))

    forward.traced = traced  # type: ignore[attr-defined]
    functions[precision] = forward
    return forward


def tracing_count(model, precision: str = "float32") -> int:
    """How often :func:`forward_function` traced ``model`` in ``precision`` in this process
    (0: never run)."""
    forward = (_FORWARD.get(model) or {}).get(precision) if _keras_model(model) else None
    traced = getattr(forward, "traced", None)
    return int(traced.experimental_get_tracing_count()) if traced is not None else 0


def make_predict(model, timer: list[float] | None = None, precision: str = "float32"):
    """Wrap a model as ``predict(tiles) -> softmax`` with per-tile Uniform normalisation.

    The network runs through :func:`forward_function`: a ``tf.function`` traced once per
    model and process whatever the tile shape (graph mode uses about a third of the memory of
    eager calls). Seconds spent in the network are added to ``timer[0]``.
    """
    forward = forward_function(model, precision)

    def predict(tiles: np.ndarray) -> np.ndarray:
        normalised = np.stack([uniform_normalise(tile) for tile in tiles]).astype(
            np.float32, copy=False)
        started = time.perf_counter()
        output = forward(normalised)
        if isinstance(output, dict):
            raise TypeError("a segmentation network must have a single output")
        output = np.asarray(output, dtype=np.float32)
        if timer is not None:
            timer[0] += time.perf_counter() - started
        return output

    return predict


def _patch_within_budget(shape, model, n_classes: int, config: InferenceConfig,
                         stride_zyx) -> tuple[int, int, int]:
    """The patch for a (z, y, x) crop that keeps the whole process within the memory budget:
    memory in use (:func:`fixed_memory_gb`) + merge buffers + activations <= BUDGET_FRACTION x
    ``config.mem_gb`` (default :func:`legseg_tf.device.default_budget_gb`)."""
    budget_gb = config.mem_gb if config.mem_gb is not None else default_budget_gb()
    fixed_gb = fixed_memory_gb()
    per_voxel = activation_bytes_per_voxel(model, stride_zyx) * config.batch_size
    left = BUDGET_FRACTION * budget_gb * 1e9 - fixed_gb * 1024**3
    patch = choose_patch_size(
        shape, stride_zyx, per_voxel, left,
        buffer_bytes=lambda p: merge_buffer_bytes(shape, p, n_classes, config),
        minimum=config.min_patch)
    logger.debug("part %s: budget %.2f GB, %.2f GB in use, patch %s (activations about "
                 "%.2f GB, merge buffers %.2f GB)", shape, budget_gb, fixed_gb * GB_PER_GIB, patch,
                 per_voxel * math.prod(patch) / 1e9,
                 merge_buffer_bytes(shape, patch, n_classes, config) / 1e9)
    return patch  # type: ignore[return-value]


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
    box = bounding_box(volume)
    if box is None:
        if config.save_probabilities:
            probabilities = np.zeros((*volume.shape, n_classes), dtype=np.float32)
            probabilities[..., 0] = 1.0
        return NetworkOutput(labels, probabilities)
    crop = volume[box]
    if patch is None:
        patch = _patch_within_budget(crop.shape, model, n_classes, config, stride_zyx)
    resident_before, _ = process_memory_gb()
    timer = [0.0]
    predict = make_predict(model, timer, config.precision)
    crop_probabilities, confidence = None, None
    if config.merge == "qmritools":
        mask_filter = postprocessing.largest_component if largest_component else None
        crop_labels, n_tiles = sliding_window.predict_hard_labels(
            crop, predict, patch, batch_size=config.batch_size, stride=stride_zyx,
            mask_filter=mask_filter)
    else:
        # only the labels, the winner's probability and (when saved) the probabilities
        # leave the merger: no part-sized accumulator of every class
        blended = sliding_window.blend_tiles(
            crop, predict, patch, overlap=config.overlap, batch_size=config.batch_size,
            stride=stride_zyx, keep_probabilities=config.save_probabilities)
        if blended.n_classes != n_classes:
            raise ValueError(
                f"network returned {blended.n_classes} classes, expected {n_classes}"
            )
        n_tiles, crop_probabilities = blended.n_tiles, blended.probabilities
        crop_labels = blended.labels
        if largest_component:
            crop_labels = postprocessing.largest_component_per_label(crop_labels)
        if (crop_labels > 0).any():
            top = blended.top[crop_labels > 0]
            confidence = {"mean_max_probability": round(float(top.mean()), 4),
                          "voxels": int(top.size)}
    labels[box] = crop_labels
    if config.save_probabilities and crop_probabilities is not None:
        probabilities = np.zeros((*volume.shape, n_classes), dtype=np.float32)
        probabilities[..., 0] = 1.0
        probabilities[box] = crop_probabilities
    del crop_labels, crop_probabilities
    if config.merge != "qmritools":
        del blended
    release_freed_memory()  # the merger's tile-sized buffers: not retained for the next part
    _RETAINED.add(resident_before, labels.nbytes + getattr(probabilities, "nbytes", 0))
    logger.debug("part %s: patch %s, %d tile(s), %.2f s in the network",
                 volume.shape, patch, n_tiles, timer[0])
    return NetworkOutput(labels, probabilities, tuple(patch), n_tiles, timer[0], confidence)
