"""Architecture configurations of the networks (frozen dataclasses, JSON round trip).

Importing this module never imports TensorFlow or Keras.

Two kinds exist, told apart by the ``"kind"`` field of their JSON form:

* ``"unet"`` (:class:`UNetConfig`): the QMRITools segmentation UNET with ResNet blocks
  (``MakeUnet``), in either code generation (see :mod:`legseg_tf.networks.unet`).
* ``"classifier"`` (:class:`ClassifierConfig`): the per-slice side/position classifier
  ``Body_Pos_Side`` (``MakeClassifyNetwork``).

Spatial axes are ordered (z, y, x) for 3-D networks and (y, x) for 2-D ones, matching the
QMRITools array layout ``data[z, y, x]``; every per-axis tuple below follows that order.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

GENERATIONS = ("A", "B")
NORMS = ("batch", "instance")
CLASSIFIER_HEADS = ("mlp", "linear")

#: Default per-level features of the shipped leg networks (website ``MakeUnet`` call).
DEFAULT_FEATURES = (32, 64, 128, 192, 320)
#: Default generation-B downsample schedule (z, y, x), entry i = factor after level i.
DEFAULT_DOWNSAMPLE = ((2, 2, 2), (1, 2, 2), (2, 2, 2), (1, 2, 2), (1, 1, 1))


def _as_int_tuple(value: Any, what: str) -> tuple[int, ...]:
    """Convert a list/tuple of integral numbers into a tuple of ints, or raise ValueError."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{what} must be a sequence of integers, got {value!r}")
    out = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, float)) or item != int(item):
            raise ValueError(f"{what} must contain integers only, got {value!r}")
        out.append(int(item))
    return tuple(out)


def _check_fields(cls: type, data: dict[str, Any]) -> None:
    """Reject unknown keys and a wrong ``kind`` in a JSON dict for ``cls``."""
    if not isinstance(data, dict):
        raise ValueError(f"a {cls.__name__} must be a JSON object, got {type(data).__name__}")
    kind = data.get("kind")
    if kind != cls.kind:
        raise ValueError(f"{cls.__name__} needs kind {cls.kind!r}, got {kind!r}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known - {"kind"})
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; known: {sorted(known)}")


@dataclass(frozen=True)
class UNetConfig:
    """The QMRITools segmentation UNET with ResNet blocks.

    Attributes:
        n_classes: output classes including background (class 0); the output is a softmax
            over the last axis.
        features: output channels per level, one entry per level (the depth is the length;
            QMRITools uses 5 levels).
        downsample: per-level integer factors per spatial axis, (z, y, x) in 3-D, (y, x) in
            2-D, one entry per level. Generation "B": entry i is the factor between level i
            and level i+1; the last entry must be all ones (the deepest level is never
            downsampled). Generation "A": entry i is applied on entry to level i; the first
            entry must be all ones (otherwise the output would not be at input resolution).
            A level whose entry is all ones gets neither a down- nor an up-sampling conv.
        generation: "A" (QMRITools since 2026-02-01) or "B" (up to January 2026, the block
            diagrams of the website); see :mod:`legseg_tf.networks.unet`.
        spatial_dims: 3 for a volumetric network, 2 for a slice network.
        in_channels: input channels (QMRITools: 1).
        norm: "batch" (BatchNormalization) or "instance" (per sample and channel over the
            spatial axes, with a learned per-channel scale and offset).
        dropout_rate: dropout after every block, in [0, 1); 0 leaves the dropout layers out
            (as QMRITools does). Dropout is the identity at inference.
        patch_size: stored input size per spatial axis, or None for a network that accepts
            any size that is a multiple of :func:`total_stride`.
        norm_epsilon: epsilon of the normalisation layers (Wolfram default 0.001).
        bn_momentum: moving-average momentum of batch normalisation (Wolfram default 0.9,
            same convention as Keras: ``moving = momentum * moving + (1 - momentum) * batch``).
    """

    kind: ClassVar[str] = "unet"

    n_classes: int
    features: tuple[int, ...] = DEFAULT_FEATURES
    downsample: tuple[tuple[int, ...], ...] = DEFAULT_DOWNSAMPLE
    generation: str = "B"
    spatial_dims: int = 3
    in_channels: int = 1
    norm: str = "batch"
    dropout_rate: float = 0.2
    patch_size: tuple[int, ...] | None = None
    norm_epsilon: float = 1e-3
    bn_momentum: float = 0.9

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "features", _as_int_tuple(self.features, "features"))
        if isinstance(self.downsample, (str, bytes)) or not hasattr(self.downsample, "__iter__"):
            raise ValueError(f"downsample must be a sequence of per-level factors, "
                             f"got {self.downsample!r}")
        set_(self, "downsample", tuple(_as_int_tuple(entry, "each downsample entry")
                                       for entry in self.downsample))
        if self.patch_size is not None:
            set_(self, "patch_size", _as_int_tuple(self.patch_size, "patch_size"))
        self._validate()

    def _validate(self) -> None:
        if isinstance(self.n_classes, bool) or not isinstance(self.n_classes, int) \
                or self.n_classes < 2:
            raise ValueError(f"n_classes must be an integer >= 2 (background + at least one "
                             f"structure), got {self.n_classes!r}")
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims!r}")
        if self.generation not in GENERATIONS:
            raise ValueError(f"generation must be one of {GENERATIONS}, got {self.generation!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if isinstance(self.in_channels, bool) or not isinstance(self.in_channels, int) \
                or self.in_channels < 1:
            raise ValueError(f"in_channels must be a positive integer, got {self.in_channels!r}")
        depth = len(self.features)
        if depth < 2:
            raise ValueError(f"features needs at least 2 levels, got {self.features}")
        if any(f < 2 for f in self.features):
            raise ValueError(f"features must all be >= 2, got {self.features}")
        if len(self.downsample) != depth:
            raise ValueError(f"downsample needs one entry per level ({depth}), "
                             f"got {len(self.downsample)}: {self.downsample}")
        for level, entry in enumerate(self.downsample, start=1):
            if len(entry) != self.spatial_dims:
                raise ValueError(f"downsample entry {level} must have {self.spatial_dims} "
                                 f"factors (one per spatial axis), got {entry}")
            if any(f < 1 for f in entry):
                raise ValueError(f"downsample factors must be >= 1, got {entry} at level {level}")
            if self.generation == "B" and any(f > 3 for f in entry):
                # The generation-B up conv (kernel = factor, padding {0, k/2} for even k)
                # only keeps the size for factors 1, 2 and 3.
                raise ValueError(f"generation B supports downsample factors 1, 2 and 3, got "
                                 f"{entry} at level {level}")
        ones = (1,) * self.spatial_dims
        if self.generation == "B" and self.downsample[-1] != ones:
            raise ValueError(f"generation B never downsamples the deepest level; set the last "
                             f"downsample entry to {ones}, got {self.downsample[-1]}")
        if self.generation == "A" and self.downsample[0] != ones:
            raise ValueError(f"generation A applies entry 1 on entry to level 1, which would "
                             f"halve the output resolution; set the first downsample entry to "
                             f"{ones}, got {self.downsample[0]}")
        if not 0.0 <= float(self.dropout_rate) < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate!r}")
        if not float(self.norm_epsilon) > 0.0:
            raise ValueError(f"norm_epsilon must be positive, got {self.norm_epsilon!r}")
        if not 0.0 <= float(self.bn_momentum) < 1.0:
            raise ValueError(f"bn_momentum must be in [0, 1), got {self.bn_momentum!r}")
        if self.patch_size is not None:
            stride = total_stride(self)
            if len(self.patch_size) != self.spatial_dims:
                raise ValueError(f"patch_size must have {self.spatial_dims} entries, "
                                 f"got {self.patch_size}")
            bad = [p for p, s in zip(self.patch_size, stride) if p < 1 or p % s]
            if bad:
                raise ValueError(f"patch_size {self.patch_size} must be a positive multiple of "
                                 f"the total stride {stride} on every axis")

    @property
    def depth(self) -> int:
        """Number of levels."""
        return len(self.features)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict including ``"kind"``; tuples become lists."""
        data = {"kind": self.kind}
        data.update(json.loads(json.dumps(asdict(self))))
        return data

    def to_json(self) -> str:
        """Indented JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        """Inverse of :meth:`to_dict`; raises ValueError on unknown keys or bad values."""
        _check_fields(cls, data)
        kwargs = {k: v for k, v in data.items() if k != "kind"}
        try:
            return cls(**kwargs)
        except TypeError as err:  # a required field is missing
            raise ValueError(f"invalid UNetConfig: {err}") from err

    @classmethod
    def from_json(cls, text: str) -> UNetConfig:
        """Parse JSON text written by :meth:`to_json`."""
        return cls.from_dict(_loads(text))


@dataclass(frozen=True)
class ClassifierConfig:
    """The 2-D per-slice side/position classifier ``Body_Pos_Side``.

    The convolution trunk is fixed (:attr:`TRUNK`); only the input size, the class names and
    the head type vary.

    Attributes:
        image_size: input image size (rows, columns) in pixels; each at least 64 (the trunk
            downsamples by 64 in total). QMRITools default 128 x 128.
        side_classes: class names of the "Side" output, in output order.
        position_classes: class names of the "Position" output, in output order.
        head: "mlp" (Linear-BN-GELU x 4 then Linear-Softmax; QMRITools since 2026-02-20) or
            "linear" (Linear-Softmax; earlier versions).
        head_units: widths of the hidden Linear layers of the "mlp" head.
        norm_epsilon: batch-normalisation epsilon (Wolfram default 0.001).
        bn_momentum: batch-normalisation momentum (Wolfram default 0.9).
    """

    kind: ClassVar[str] = "classifier"
    #: Trunk stages: (output channels, square kernel size, max-pool size = stride).
    TRUNK: ClassVar[tuple[tuple[int, int, int], ...]] = (
        (16, 7, 2), (32, 5, 2), (32, 5, 2), (64, 3, 2), (64, 3, 4),
    )

    image_size: tuple[int, int] = (128, 128)
    side_classes: tuple[str, ...] = ("Left", "Right", "Both")
    position_classes: tuple[str, ...] = (
        "Lower", "Knee", "Upper", "Hip", "Torso", "Shoulder", "Neck", "Head",
    )
    head: str = "mlp"
    head_units: tuple[int, ...] = (256, 128, 64, 32)
    norm_epsilon: float = 1e-3
    bn_momentum: float = 0.9

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "image_size", _as_int_tuple(self.image_size, "image_size"))
        set_(self, "head_units", _as_int_tuple(self.head_units, "head_units"))
        for name in ("side_classes", "position_classes"):
            value = getattr(self, name)
            if isinstance(value, str) or not hasattr(value, "__iter__"):
                raise ValueError(f"{name} must be a list of class names, got {value!r}")
            value = tuple(value)
            if len(value) < 2 or not all(isinstance(v, str) and v for v in value):
                raise ValueError(f"{name} needs at least 2 non-empty names, got {value!r}")
            if len(set(value)) != len(value):
                raise ValueError(f"{name} has duplicate names: {value!r}")
            set_(self, name, value)
        total = math.prod(pool for _, _, pool in self.TRUNK)
        if len(self.image_size) != 2 or any(s < total for s in self.image_size):
            raise ValueError(f"image_size must be 2 sizes of at least {total} pixels (the trunk "
                             f"downsamples by {total}), got {self.image_size}")
        if self.head not in CLASSIFIER_HEADS:
            raise ValueError(f"head must be one of {CLASSIFIER_HEADS}, got {self.head!r}")
        if any(u < 1 for u in self.head_units) or (self.head == "mlp" and not self.head_units):
            raise ValueError(f"head_units must be positive widths, got {self.head_units}")
        if not float(self.norm_epsilon) > 0.0:
            raise ValueError(f"norm_epsilon must be positive, got {self.norm_epsilon!r}")
        if not 0.0 <= float(self.bn_momentum) < 1.0:
            raise ValueError(f"bn_momentum must be in [0, 1), got {self.bn_momentum!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict including ``"kind"``; tuples become lists."""
        data = {"kind": self.kind}
        data.update(json.loads(json.dumps(asdict(self))))
        return data

    def to_json(self) -> str:
        """Indented JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassifierConfig:
        """Inverse of :meth:`to_dict`; raises ValueError on unknown keys or bad values."""
        _check_fields(cls, data)
        return cls(**{k: v for k, v in data.items() if k != "kind"})

    @classmethod
    def from_json(cls, text: str) -> ClassifierConfig:
        """Parse JSON text written by :meth:`to_json`."""
        return cls.from_dict(_loads(text))


CONFIG_TYPES: dict[str, type] = {
    UNetConfig.kind: UNetConfig,
    ClassifierConfig.kind: ClassifierConfig,
}


def _loads(text: str) -> dict[str, Any]:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"network config is not valid JSON: {err}") from err


def config_from_dict(data: dict[str, Any]) -> UNetConfig | ClassifierConfig:
    """Build the config class named by ``data["kind"]`` ("unet" or "classifier")."""
    if not isinstance(data, dict):
        raise ValueError(f"a network config must be a JSON object, got {type(data).__name__}")
    kind = data.get("kind")
    if kind not in CONFIG_TYPES:
        raise ValueError(f"network config kind must be one of {sorted(CONFIG_TYPES)}, "
                         f"got {kind!r}")
    return CONFIG_TYPES[kind].from_dict(data)


def config_from_json(text: str) -> UNetConfig | ClassifierConfig:
    """Parse a config JSON text and dispatch on its ``"kind"``."""
    return config_from_dict(_loads(text))


def total_stride(config: UNetConfig) -> tuple[int, ...]:
    """Total downsampling factor per spatial axis, (z, y, x) or (y, x).

    Every patch fed to the network must be a multiple of this on each axis, so that the
    encoder and decoder shapes meet at the skip connections (QMRITools ``FindPatchDim`` step).
    """
    if config.generation == "B":
        effective = config.downsample[:-1]
    else:
        effective = config.downsample[1:]
    return tuple(math.prod(entry[axis] for entry in effective)
                 for axis in range(config.spatial_dims))
