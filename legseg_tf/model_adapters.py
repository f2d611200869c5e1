"""Adapters from installed models (manifest entries) to what the segmenter calls.

Every model kind runs through the same two adapters, whatever made it: legseg's own builders
(``unet``, ``classifier``) or the importers of the original QMRITools networks (``.wlnet`` and
ONNX files, config kind ``wlnet_graph``):

* :func:`region_network` -> :class:`RegionNetwork`: a 3-D segmentation net tiled by the
  sliding-window merger. The tiling constraint (total down-sampling per axis) comes from the
  architecture config, or, for an imported graph, from its operations
  (:func:`graph_stride`: strided convolutions and pools multiply, up-sampling and transposed
  convolutions divide); a net with a fixed input size is tiled with exactly that patch.
* :func:`slice_classifier` -> :class:`KerasSliceClassifier`: the 2-D per-slice side/position
  classifier. Outputs are found by port name (``Side``/``Position``, any case) and class
  names come from the file's decoders (imported nets) or the config; both are mapped to
  legseg's meaning by name (:data:`SIDE_ALIASES`, :data:`POSITION_ALIASES`), so a file whose
  classes are in another order still votes correctly.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np

from legseg_tf.body_position import POSITION_CLASSES, SIDE_CLASSES
from legseg_tf.config import InferenceConfig
from legseg_tf.errors import NoModelError

if TYPE_CHECKING:
    import keras

    from legseg_tf.model_store import ModelEntry

logger = logging.getLogger(__name__)

#: Side class names (lower case, spaces/underscores removed) -> legseg side.
SIDE_ALIASES = {"left": "Left", "l": "Left", "right": "Right", "r": "Right",
                "both": "Both", "b": "Both", "bilateral": "Both"}
#: Position class names (normalised like the side names) -> legseg position.
POSITION_ALIASES = {
    **{name.lower(): name for name in POSITION_CLASSES},
    "lowerleg": "Lower", "lowerlegs": "Lower", "calf": "Lower", "leg": "Lower",
    "upperleg": "Upper", "upperlegs": "Upper", "thigh": "Upper",
    "pelvis": "Hip", "hips": "Hip", "trunk": "Torso", "chest": "Torso",
}
#: Operations of a ``wlnet_graph`` config that change the sampling grid.
_DOWN_OPS = ("conv", "max_pool", "avg_pool")
_UP_OPS = ("upsample", "conv_transpose")


# -------------------------------------------------------------------- region networks ----

@dataclass(frozen=True)
class RegionNetwork:
    """One installed region network, ready to run on a part.

    Attributes:
        role: manifest role ("lower_leg", "upper_leg" or "hip").
        model_id: manifest id.
        sha256: checksum of the weights.
        label_table: training-label table name (``legseg_tf.labels.TRAIN_TABLES`` key).
        predict: (z, y, x) float32 part -> (z, y, x) integer training labels, or an object
            with ``labels`` and optional ``probabilities`` ((z, y, x, n_classes)). Best
            without the per-label largest-component step: the segmenter selects, per label,
            the largest component on the part's own side of the left/right cut.
    """

    role: str
    model_id: str
    sha256: str
    label_table: str
    predict: Callable[[np.ndarray], np.ndarray]

    def describe(self) -> dict:
        return {"id": self.model_id, "role": self.role, "sha256": self.sha256}


def graph_stride(config: Mapping[str, Any]) -> tuple[int, ...]:
    """Total down-sampling per spatial input axis of a ``wlnet_graph`` config.

    Each tensor carries, per tensor axis, the input spatial axis it samples (``None`` for
    channels or for axes mixed by a reshape) and, per input axis, its sampling step relative
    to the input. Strided convolutions and pools multiply the step of the axes they stride,
    up-sampling and transposed convolutions divide it, permutations move axes. An input size
    must be divisible by the largest step any tensor reaches on that axis (as an integer:
    the least common multiple of the numerators).

    Raises:
        NoModelError: the config has not exactly one input of rank >= 2, or uses a strided
            operation on an axis whose origin is lost.
    """
    inputs = [i for i in config.get("inputs", []) if len(i.get("keras_shape", [])) >= 2]
    if len(inputs) != 1:
        raise NoModelError(f"a segmentation graph needs exactly one image input, got "
                           f"{len(config.get('inputs', []))}")
    n_spatial = len(inputs[0]["keras_shape"]) - 1
    one = tuple(Fraction(1) for _ in range(n_spatial))
    # tensor name -> (origin input axis per keras axis (batch excluded), step per input axis)
    state: dict[str, tuple[tuple[int | None, ...], tuple[Fraction, ...]]] = {
        inputs[0]["name"]: (tuple(range(n_spatial)) + (None,), one)}
    required = [1] * n_spatial
    for op in config.get("ops", []):
        known = [state[name] for name in op.get("inputs", []) if name in state]
        if not known:
            continue
        axes, steps = known[0]
        if len(known) > 1:  # add / concat / multiply: same grid, keep the coarsest record
            steps = tuple(max(s[1][i] for s in known) for i in range(n_spatial))
        kind, c = op["op"], op.get("config", {})
        factors = None
        if kind in _DOWN_OPS:
            factors = [Fraction(int(s)) for s in c.get("strides", [1] * c.get("rank", 0))]
        elif kind == "upsample":
            factors = [Fraction(1, int(s)) for s in c.get("size", [])]
        elif kind == "conv_transpose":
            factors = [Fraction(1, int(s)) for s in c.get("strides", [])]
        elif kind == "permute":
            dims = [int(d) for d in c["dims"]]  # 1-based, batch excluded
            axes = tuple(axes[d - 1] for d in dims)
        elif kind in ("reshape", "dense"):
            axes = tuple(None for _ in axes)
        if factors:
            new = list(steps)
            for position, factor in enumerate(factors):
                origin = axes[position] if position < len(axes) else None
                if factor == 1:
                    continue
                if origin is None:
                    raise NoModelError(f"operation {op['name']!r} resamples an axis that is "
                                       "not a spatial input axis; the net cannot be tiled")
                new[origin] *= factor
            steps = tuple(new)
        for axis, step in enumerate(steps):
            if step > 1:
                required[axis] = math.lcm(required[axis], step.numerator)
        state[op["name"]] = (axes, steps)
    return tuple(required)


def network_stride(config: Mapping[str, Any]) -> tuple[int, int, int]:
    """Total down-sampling per axis (z, y, x) of a region network config.

    Raises:
        NoModelError: the config does not tell how the net may be tiled, or is not 3-D.
    """
    kind = config.get("kind")
    if kind == "unet":
        from legseg_tf.networks.config import UNetConfig, total_stride

        stride = tuple(total_stride(UNetConfig.from_dict(dict(config))))
    elif "total_stride" in config:
        stride = tuple(int(s) for s in config["total_stride"])
    elif kind == "wlnet_graph":
        stride = graph_stride(config)
    else:
        raise NoModelError(
            f"network config of kind {kind!r} declares no 'total_stride'; it cannot be tiled")
    if len(stride) != 3:
        raise NoModelError(f"region networks must be 3-D, got stride {stride}")
    return stride  # type: ignore[return-value]


def fixed_patch(config: Mapping[str, Any]) -> tuple[int, int, int] | None:
    """The input patch (z, y, x) a graph net was exported for, or ``None`` when it is free.

    Raises:
        NoModelError: some spatial axes are fixed and others free.
    """
    if config.get("kind") != "wlnet_graph":
        return None
    inputs = [i for i in config.get("inputs", []) if len(i.get("keras_shape", [])) >= 2]
    if len(inputs) != 1:
        return None
    spatial = inputs[0]["keras_shape"][:-1]
    if all(s is None for s in spatial):
        return None
    if any(s is None for s in spatial) or len(spatial) != 3:
        raise NoModelError(f"input shape {inputs[0]['keras_shape']} mixes fixed and free "
                           "spatial axes; convert the net with free spatial axes")
    return tuple(int(s) for s in spatial)  # type: ignore[return-value]


def region_network(entry: ModelEntry, config: InferenceConfig, *,
                   lazy: bool = False) -> RegionNetwork:
    """Load a region network and wrap it for the sliding-window merger.

    Args:
        entry: the manifest entry.
        config: inference settings.
        lazy: check the weights' checksum and the config now, but build the network and load
            its weights on the first part it segments (then keep it): a run loads only the
            networks its images need (a thigh-only volume never loads the lower-leg net).
            Weights that do not fit the architecture are then reported by the first image
            that needs them.

    Raises:
        NoModelError: the weights (checksum; with ``lazy=False`` also their fit) or the
            config are unusable.
    """
    from legseg_tf import model_store
    from legseg_tf.inference import apply_segmentation_network
    from legseg_tf.labels import TRAIN_TABLES

    def unusable(error: Exception) -> NoModelError:
        return NoModelError(f"model {entry.id!r} ({entry.role}) is not usable: {error}")

    loaded: list = []
    try:
        if lazy:
            model_store.verify_weights(entry)
        else:
            loaded.append(model_store.load_model(entry))
        raw = entry.read_config()
        stride = network_stride(raw)
        patch = fixed_patch(raw)
    except (model_store.ModelError, model_store.ManifestError) as error:
        raise unusable(error) from error
    except NoModelError as error:
        raise NoModelError(f"model {entry.id!r} ({entry.role}): {error}") from error
    if entry.label_table not in TRAIN_TABLES:
        raise NoModelError(f"model {entry.id!r} names an unknown label table "
                           f"{entry.label_table!r}")
    n_classes = len(TRAIN_TABLES[entry.label_table]) + 1
    if patch is not None:
        logger.info("%s takes fixed %s patches", entry.id, "x".join(map(str, patch)))

    def model():
        if not loaded:
            try:
                loaded.append(model_store.load_model(entry, verify=False))  # verified above
            except (model_store.ModelError, model_store.ManifestError) as error:
                raise unusable(error) from error
        return loaded[0]

    def predict(part: np.ndarray):
        # raw arg-max labels: the segmenter picks each label's component on the own side
        return apply_segmentation_network(part, model(), n_classes, config, stride,
                                          largest_component=False, patch=patch)

    return RegionNetwork(entry.role, entry.id, entry.sha256, entry.label_table, predict)


# ------------------------------------------------------------------- slice classifier ----

def _normalise(name: str) -> str:
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


def map_class_names(names: Sequence[str], aliases: Mapping[str, str], what: str) -> tuple[str, ...]:
    """Map a file's class names to legseg's by name (see :data:`SIDE_ALIASES`).

    Raises:
        NoModelError: a name has no legseg meaning, or two names map to the same class.
    """
    mapped = []
    for name in names:
        key = _normalise(name)
        if key not in aliases:
            raise NoModelError(f"{what} class {name!r} has no legseg meaning (known: "
                               f"{', '.join(sorted(set(aliases.values())))})")
        mapped.append(aliases[key])
    if len(set(mapped)) != len(mapped):
        raise NoModelError(f"{what} classes {list(names)} map to duplicates {mapped}")
    return tuple(mapped)


class KerasSliceClassifier:
    """Adapter: a Keras side/position classifier as a ``SliceClassifier``.

    Args:
        model: Keras model with input (batch, rows, cols, 1) and two softmax outputs: a dict
            keyed by ``side_key``/``position_key``, or a pair in that order.
        side_classes, position_classes: legseg class names in output order.
        batch_size: slices per call.
        side_key, position_key: output names of a dict-valued model.
    """

    def __init__(self, model: keras.Model, side_classes: Sequence[str],
                 position_classes: Sequence[str], batch_size: int = 32,
                 side_key: str = "side", position_key: str = "position") -> None:
        self.model = model
        self.side_classes = tuple(side_classes)
        self.position_classes = tuple(position_classes)
        self.batch_size = int(batch_size)
        self.side_key, self.position_key = side_key, position_key
        shape = model.input_shape
        if len(shape) != 4 or shape[1] is None or shape[2] is None:
            raise NoModelError(f"a slice classifier needs a fixed (rows, cols, 1) input, got "
                               f"{shape}")
        self.image_size = (int(shape[1]), int(shape[2]))

    def __call__(self, images: np.ndarray) -> tuple[list[str], list[str]]:
        images = np.asarray(images, dtype=np.float32)
        if images.shape[1:] != self.image_size:
            raise ValueError(
                f"classifier expects {self.image_size} images, got {images.shape[1:]}")
        sides, positions = [], []
        for start in range(0, images.shape[0], self.batch_size):
            batch = images[start:start + self.batch_size, ..., None]
            output = self.model(batch, training=False)
            if isinstance(output, Mapping):
                side_p, position_p = output[self.side_key], output[self.position_key]
            else:
                side_p, position_p = output
            side_p, position_p = np.asarray(side_p), np.asarray(position_p)
            if side_p.shape[-1] != len(self.side_classes) or \
                    position_p.shape[-1] != len(self.position_classes):
                raise ValueError(f"classifier outputs {side_p.shape[-1]} side and "
                                 f"{position_p.shape[-1]} position scores for "
                                 f"{len(self.side_classes)} and {len(self.position_classes)} "
                                 "classes")
            sides += [self.side_classes[i] for i in np.argmax(side_p, axis=-1)]
            positions += [self.position_classes[i] for i in np.argmax(position_p, axis=-1)]
        return sides, positions


def _graph_classifier_outputs(raw: Mapping[str, Any]) -> tuple[str, list, str, list]:
    """(side port, side labels, position port, position labels) of an imported classifier."""
    ports = {}
    for out in raw.get("outputs", []):
        key = _normalise(out.get("port", ""))
        role = ("side" if key.startswith("side") else
                "position" if key.startswith("pos") else None)
        if role is None:
            continue
        if role in ports:
            raise NoModelError(f"two classifier outputs look like {role!r}: "
                               f"{ports[role]['port']!r} and {out['port']!r}")
        ports[role] = out
    names = [o.get("port") for o in raw.get("outputs", [])]
    if set(ports) != {"side", "position"}:
        raise NoModelError(f"a slice classifier needs outputs named Side and Position, got "
                           f"{names}")
    labels = {}
    for role, out in ports.items():
        given = (out.get("decoder") or {}).get("labels")
        if not given:
            given = raw.get(f"{role}_classes")
        if not given:
            raise NoModelError(f"classifier output {out['port']!r} stores no class labels "
                               "(no decoder); give them when importing (--classes)")
        labels[role] = [str(v) for v in given]
    return ports["side"]["port"], labels["side"], ports["position"]["port"], labels["position"]


def slice_classifier(entry: ModelEntry, config: InferenceConfig) -> KerasSliceClassifier:
    """Load the side/position classifier of ``entry`` and wrap it.

    Raises:
        NoModelError: the weights, the outputs or the class names are unusable.
    """
    from legseg_tf import model_store
    from legseg_tf.networks.config import ClassifierConfig as NetClassifierConfig

    try:
        model = model_store.load_model(entry)
        raw = entry.read_config()
    except (model_store.ModelError, model_store.ManifestError) as error:
        raise NoModelError(f"classifier {entry.id!r} is not usable: {error}") from error
    try:
        if raw.get("kind") == "wlnet_graph":
            side_key, side_names, position_key, position_names = _graph_classifier_outputs(raw)
        else:
            defaults = NetClassifierConfig()
            side_key, position_key = "side", "position"
            side_names = raw.get("side_classes", defaults.side_classes)
            position_names = raw.get("position_classes", defaults.position_classes)
        side_classes = map_class_names(side_names, SIDE_ALIASES, "side")
        position_classes = map_class_names(position_names, POSITION_ALIASES, "position")
        classifier = KerasSliceClassifier(model, side_classes, position_classes,
                                          batch_size=max(config.batch_size, 32),
                                          side_key=side_key, position_key=position_key)
    except NoModelError as error:
        raise NoModelError(f"classifier {entry.id!r}: {error}") from error
    unknown_sides = set(side_classes) - set(SIDE_CLASSES)
    if unknown_sides:  # pragma: no cover - the alias table only yields SIDE_CLASSES
        raise NoModelError(f"classifier {entry.id!r}: unknown sides {sorted(unknown_sides)}")
    logger.info("classifier %s: side classes %s, position classes %s", entry.id,
                list(side_classes), list(position_classes))
    return classifier
