"""Keras builder of the QMRITools segmentation UNET with ResNet blocks (both generations).

Input ``(batch, z, y, x, in_channels)`` (2-D: ``(batch, y, x, in_channels)``), channels last;
output ``(batch, z, y, x, n_classes)`` softmax probabilities over the last axis, at the input
resolution. Levels ``1..D`` (D = ``len(config.features)``, QMRITools uses 5) with features
``f_1..f_D`` and per-level factors ``s_1..s_D`` (:class:`~legseg_tf.networks.config.UNetConfig`).

Generation "B" (QMRITools up to January 2026; website block diagrams)
    * ``start``: Conv1(round(f_1/2)) -> Norm -> GELU.
    * ``enc_i``: ResNet block(f_i) [block ends with GELU after the sum] -> dropout; for i < D
      and s_i != 1 a down conv ``scaleD`` (f_i channels, kernel = stride = s_i, no padding)
      feeds ``enc_{i+1}``.
    * ``dec_i`` (i = D-1..1): input from ``enc_D`` / ``dec_{i+1}``; if s_i != 1 ``scaleU`` =
      nearest resize x s_i -> Conv(f_i, kernel s_i, padding {0,1} for kernel 2);
      concatenate [skip from enc_i, upsampled] -> block(f_i) -> dropout.
Generation "A" (QMRITools since 2026-02-01)
    * ``start``: Conv1(f_0 = round(f_1/2)), no normalisation, no activation.
    * ``enc_i``: if s_i != 1 a down conv ``scaleD`` on entry (f_{i-1} channels, kernel 3,
      stride s_i, padding 1 on both sides) -> block(f_i) [no activation after the sum, GELU
      after the second norm] -> dropout. ``enc_D`` also computes the "Up" output.
    * "Up" of ``enc_D`` and ``dec_i`` (i >= 2), if s_i != 1: ``scaleU`` = resize x s_i ->
      Conv3(f_{i-1}, padding 1); ``dec_i``: concatenate [skip from enc_i, Up from below] ->
      block(f_i) -> dropout.
Both: ``map`` = Conv1(n_classes) -> softmax over the class axis; dropout layers are left out
when ``dropout_rate`` is 0 (as in QMRITools).

Layer names (Wolfram layer path with ``/`` -> ``__``, see :mod:`legseg_tf.networks.naming`)::

    input                                 the Input layer
    start__1 [, start__2, start__3]       conv [, norm, GELU (generation B)]
    {node}__block__con__1 .. __con__5     conv, norm, GELU, conv, norm
    {node}__block__con__6                 GELU (generation A only)
    {node}__block__skip__1, __skip__2     1x1 conv, norm
    {node}__block__tot__1 [, __tot__2]    add [, GELU (generation B)]
    {node}__drop                          dropout (absent when dropout_rate == 0)
    {node}__scaleD__1 [, ..._pad]         down conv [, its explicit zero padding]
    {node}__scaleU__1, __scaleU__2 [_pad] nearest resize, up conv [, explicit padding]
    dec_i__cat                            concatenate [skip, upsampled] (skip first)
    map__1, map__3                        1x1 conv, softmax (Wolfram map/2 is the transpose
                                          to channels last, implicit in Keras)

with ``{node}`` one of ``enc_1..enc_D``, ``dec_1..dec_{D-1}``. ``scaleD`` lives in the node
that owns it in Wolfram: ``enc_i`` (i < D) in generation B (after the block), ``enc_i``
(i >= 2) in generation A (on entry). ``scaleU`` lives in ``dec_i`` in generation B (it
upsamples the node's input) and in ``enc_D``/``dec_i`` (i >= 2) in generation A (it
upsamples the node's output). The block/drop/scaleD/scaleU/cat names are those of the
QMRITools node builder; the internal layer numbering of ``start`` and ``map`` follows their
Wolfram chains (conv, norm, activation / conv, transpose, softmax) and should be confirmed on
an exported network.

Convolution kernels in Keras are (k..., in, out); Wolfram stores (out, in, k...), so the
importer transposes with ``(2, 3, 4, 1, 0)`` (3-D). Parameter count: the documented
QMRITools summary (features 32/64/128/192/256, 18 classes, 32x112x112: "6.12 M conv weights,
28 BN + 37 conv layers, 24.56 MB") is reproduced exactly by generation B with the schedule
(2,2,2),(1,2,2),(2,2,2),(1,2,2),(1,1,1) and batch norm: 6,124,368 conv kernel weights,
6,138,898 arrays in total (x 4 bytes = 24.56 MB). Generation A gives 27 norm layers.
"""
from __future__ import annotations

import logging
from typing import Any

import keras

from legseg_tf.networks import blocks
from legseg_tf.networks.config import UNetConfig, total_stride
from legseg_tf.networks.naming import layer_name

logger = logging.getLogger(__name__)


def build_unet(config: UNetConfig, spatial_shape: tuple[int, ...] | None = None) -> keras.Model:
    """Build the UNET described by ``config``.

    Args:
        config: architecture configuration.
        spatial_shape: input size per spatial axis, (z, y, x) or (y, x); overrides
            ``config.patch_size``. None in both gives a network with unknown spatial
            dimensions that accepts any multiple of :func:`total_stride`.

    Returns:
        An uncompiled ``keras.Model`` named ``unet_<generation>_<n>d`` with input
        (batch, *spatial, in_channels) and output (batch, *spatial, n_classes).

    Raises:
        ValueError: if ``spatial_shape`` is not a positive multiple of the total stride.
    """
    ndim = config.spatial_dims
    shape = spatial_shape if spatial_shape is not None else config.patch_size
    if shape is not None:
        shape = tuple(int(s) for s in shape)
        stride = total_stride(config)
        if len(shape) != ndim or any(s < 1 or s % t for s, t in zip(shape, stride)):
            raise ValueError(f"input size {shape} must be {ndim} positive multiples of the "
                             f"total stride {stride}")
    else:
        shape = (None,) * ndim
    spec = blocks.NormSpec(config.norm, config.norm_epsilon, config.bn_momentum)
    inputs = keras.Input(shape=(*shape, config.in_channels), name="input")
    if config.generation == "A":
        outputs = _generation_a(inputs, config, spec)
    else:
        outputs = _generation_b(inputs, config, spec)
    model = keras.Model(inputs, outputs, name=f"unet_{config.generation.lower()}_{ndim}d")
    logger.debug("built %s with %d parameters", model.name, model.count_params())
    return model


def build_from_config(config: dict[str, Any]) -> keras.Model:
    """Build from the JSON form of a :class:`UNetConfig` (``kind == "unet"``)."""
    return build_unet(UNetConfig.from_dict(config))


def _is_unit(scale: tuple[int, ...]) -> bool:
    return all(s == 1 for s in scale)


def _dropout(x, rate: float, node: str):
    if rate <= 0:
        return x
    return keras.layers.Dropout(rate, name=layer_name(node, "drop"))(x)


def _map(x, n_classes: int, ndim: int):
    x = blocks.conv(x, n_classes, (1,) * ndim, name=layer_name("map", 1))
    return keras.layers.Softmax(axis=-1, name=layer_name("map", 3))(x)


def _generation_b(inputs, config: UNetConfig, spec: blocks.NormSpec):
    ndim, feats, scales = config.spatial_dims, config.features, config.downsample
    depth = len(feats)
    x = blocks.conv(inputs, round(feats[0] / 2), (1,) * ndim, name=layer_name("start", 1))
    x = blocks.norm(x, spec, name=layer_name("start", 2))
    x = blocks.gelu(x, name=layer_name("start", 3))
    skips = []
    for level in range(1, depth + 1):
        node = f"enc_{level}"
        x = blocks.resnet_block(x, feats[level - 1], generation="B", spec=spec, node=node)
        x = _dropout(x, config.dropout_rate, node)
        skips.append(x)
        if level < depth and not _is_unit(scales[level - 1]):
            x = blocks.down_conv_b(x, feats[level - 1], scales[level - 1], node=node)
    for level in range(depth - 1, 0, -1):
        node = f"dec_{level}"
        if not _is_unit(scales[level - 1]):
            x = blocks.up_conv_b(x, feats[level - 1], scales[level - 1], node=node)
        x = keras.layers.Concatenate(axis=-1, name=layer_name(node, "cat"))(
            [skips[level - 1], x])
        x = blocks.resnet_block(x, feats[level - 1], generation="B", spec=spec, node=node)
        x = _dropout(x, config.dropout_rate, node)
    return _map(x, config.n_classes, ndim)


def _generation_a(inputs, config: UNetConfig, spec: blocks.NormSpec):
    ndim, feats, scales = config.spatial_dims, config.features, config.downsample
    depth = len(feats)
    prev = [round(feats[0] / 2), *feats[:-1]]  # f_{i-1} for level i (f_0 = round(f_1 / 2))
    x = blocks.conv(inputs, prev[0], (1,) * ndim, name=layer_name("start", 1))
    skips = []
    for level in range(1, depth + 1):
        node = f"enc_{level}"
        if not _is_unit(scales[level - 1]):
            x = blocks.down_conv_a(x, prev[level - 1], scales[level - 1], node=node)
        x = blocks.resnet_block(x, feats[level - 1], generation="A", spec=spec, node=node)
        x = _dropout(x, config.dropout_rate, node)
        skips.append(x)
    for level in range(depth, 1, -1):
        # "Up" output of enc_D / dec_level feeds dec_{level-1}.
        source = f"enc_{level}" if level == depth else f"dec_{level}"
        if not _is_unit(scales[level - 1]):
            x = blocks.up_conv_a(x, prev[level - 1], scales[level - 1], node=source)
        node = f"dec_{level - 1}"
        x = keras.layers.Concatenate(axis=-1, name=layer_name(node, "cat"))(
            [skips[level - 2], x])
        x = blocks.resnet_block(x, feats[level - 2], generation="A", spec=spec, node=node)
        x = _dropout(x, config.dropout_rate, node)
    return _map(x, config.n_classes, ndim)
