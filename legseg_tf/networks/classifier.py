"""Keras builder of the 2-D per-slice side/position classifier (QMRITools ``Body_Pos_Side``).

Input ``(batch, rows, cols, 1)``: one grey-scale slice image per batch item, values in [0, 1]
(QMRITools default 128 x 128). Outputs, as a dict: ``"side"`` (batch, n_side) and
``"position"`` (batch, n_position) softmax probabilities in the class order of the config.

Shared trunk (Wolfram node ``Conv``), five stages of Conv(k x k, "same" padding ceil(k/2)-1,
with bias) -> BatchNorm -> GELU -> MaxPool(p, stride p, valid):
(16, 7, 2), (32, 5, 2), (32, 5, 2), (64, 3, 2), (64, 3, 4), then Flatten. A 128 x 128 input
gives 64 x 2 x 2 = 256 features. The flatten runs in Wolfram's channels-first order
(channel, row, column): a ``Permute`` layer (Keras-only, suffix ``_channels_first``) precedes
it, so imported Linear weights need only a transpose.

Heads (Wolfram nodes ``Side`` and ``Position``): "mlp" = [Linear(u) -> BatchNorm -> GELU] for
u in 256, 128, 64, 32, then Linear(n) -> Softmax; "linear" = Linear(n) -> Softmax.

Layer names (Wolfram chain position with ``/`` -> ``__``, see
:mod:`legseg_tf.networks.naming`): ``Conv__1`` .. ``Conv__20`` for the trunk stages (4 layers
per stage: conv, norm, GELU, pool), ``Conv__21_channels_first`` and ``Conv__21`` (flatten);
``Side__1`` .. ``Side__14`` and ``Position__1`` .. ``Position__14`` for the MLP heads (3 layers
per hidden width, then Linear and Softmax), ``Side__1``/``Side__2`` for linear heads.
"""
from __future__ import annotations

from typing import Any

import keras

from legseg_tf.networks import blocks
from legseg_tf.networks.config import ClassifierConfig
from legseg_tf.networks.naming import layer_name

TRUNK_NODE = "Conv"
HEAD_NODES = {"side": "Side", "position": "Position"}


def build_classifier(config: ClassifierConfig) -> keras.Model:
    """Build the side/position classifier described by ``config``.

    Returns:
        An uncompiled ``keras.Model`` named ``body_pos_side`` with input (batch, rows, cols, 1)
        and a dict of outputs ``{"side": (batch, n_side), "position": (batch, n_position)}``.
    """
    spec = blocks.NormSpec("batch", config.norm_epsilon, config.bn_momentum)
    inputs = keras.Input(shape=(*config.image_size, 1), name="input")
    x = inputs
    index = 1
    for filters, kernel, pool in ClassifierConfig.TRUNK:
        x = blocks.conv(x, filters, (kernel, kernel),
                        padding=(blocks.wolfram_same_padding(kernel),) * 2,
                        name=layer_name(TRUNK_NODE, index))
        x = blocks.norm(x, spec, name=layer_name(TRUNK_NODE, index + 1))
        x = blocks.gelu(x, name=layer_name(TRUNK_NODE, index + 2))
        x = keras.layers.MaxPooling2D(pool_size=pool, strides=pool, padding="valid",
                                      name=layer_name(TRUNK_NODE, index + 3))(x)
        index += 4
    flatten_name = layer_name(TRUNK_NODE, index)
    x = keras.layers.Permute((3, 1, 2), name=f"{flatten_name}_channels_first")(x)
    features = keras.layers.Flatten(name=flatten_name)(x)
    outputs = {
        "side": _head(features, len(config.side_classes), config, spec, HEAD_NODES["side"]),
        "position": _head(features, len(config.position_classes), config, spec,
                          HEAD_NODES["position"]),
    }
    return keras.Model(inputs, outputs, name="body_pos_side")


def build_from_config(config: dict[str, Any]) -> keras.Model:
    """Build from the JSON form of a :class:`ClassifierConfig` (``kind == "classifier"``)."""
    return build_classifier(ClassifierConfig.from_dict(config))


def _head(x, n_classes: int, config: ClassifierConfig, spec: blocks.NormSpec, node: str):
    index = 1
    if config.head == "mlp":
        for units in config.head_units:
            x = keras.layers.Dense(units, name=layer_name(node, index))(x)
            x = blocks.norm(x, spec, name=layer_name(node, index + 1))
            x = blocks.gelu(x, name=layer_name(node, index + 2))
            index += 3
    x = keras.layers.Dense(n_classes, name=layer_name(node, index))(x)
    return keras.layers.Softmax(axis=-1, name=layer_name(node, index + 1))(x)
