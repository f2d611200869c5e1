"""Keras building blocks shared by the network builders (channels-last, 2-D or 3-D).

Every function takes a Keras tensor ``x`` of shape (batch, *spatial, channels) and returns
the output tensor; every layer gets the explicit name passed in (see
:mod:`legseg_tf.networks.naming`). Numerics follow the Wolfram layers they replace:

* convolutions have a bias; the Wolfram padding is reproduced exactly: symmetric "same"
  padding for stride-1 odd kernels, otherwise an explicit ``ZeroPadding`` layer (name
  suffix ``_pad``) followed by a ``valid`` convolution, because Keras ``padding="same"``
  with stride 2 pads (0 before, 1 after) where Wolfram pads (1, 1);
* batch normalisation: ``epsilon`` and ``momentum`` from the config (Wolfram 0.001 / 0.9);
* instance normalisation (Wolfram ``NormalizationLayer[]``): ``GroupNormalization`` with one
  group per channel, i.e. mean and biased variance per sample and channel over the spatial
  axes, ``(x - mean) / sqrt(var + epsilon) * gamma + beta``;
* GELU is the exact form ``0.5 x (1 + erf(x / sqrt 2))``, not the tanh approximation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import keras

from legseg_tf.networks.naming import layer_name

_CONV = {2: keras.layers.Conv2D, 3: keras.layers.Conv3D}
_PAD = {2: keras.layers.ZeroPadding2D, 3: keras.layers.ZeroPadding3D}
_UPSAMPLE = {2: keras.layers.UpSampling2D, 3: keras.layers.UpSampling3D}


@dataclass(frozen=True)
class NormSpec:
    """Normalisation settings: kind ("batch" or "instance"), epsilon, batch-norm momentum."""

    kind: str
    epsilon: float = 1e-3
    momentum: float = 0.9


def norm(x, spec: NormSpec, *, name: str):
    """Batch or instance normalisation over the last (channel) axis."""
    if spec.kind == "batch":
        layer = keras.layers.BatchNormalization(
            axis=-1, epsilon=spec.epsilon, momentum=spec.momentum, name=name)
    elif spec.kind == "instance":
        layer = keras.layers.GroupNormalization(
            groups=int(x.shape[-1]), axis=-1, epsilon=spec.epsilon, name=name)
    else:
        raise ValueError(f"unknown normalisation {spec.kind!r}; use 'batch' or 'instance'")
    return layer(x)


def gelu(x, *, name: str):
    """Exact GELU, ``0.5 x (1 + erf(x / sqrt 2))``."""
    return keras.layers.Activation("gelu", name=name)(x)


def wolfram_same_padding(kernel: int) -> tuple[int, int]:
    """Wolfram ``Conv`` helper padding ``ceil(k/2) - 1`` on both sides (k=1: 0, k=3: 1)."""
    pad = math.ceil(kernel / 2) - 1
    return pad, pad


def conv(x, filters: int, kernel: tuple[int, ...], *, name: str,
         strides: tuple[int, ...] | None = None,
         padding: tuple[tuple[int, int], ...] | None = None):
    """Convolution with bias and an exact Wolfram padding (before, after) per spatial axis.

    Args:
        x: input tensor (batch, *spatial, channels).
        filters: output channels.
        kernel: kernel size per spatial axis.
        name: layer name; an explicit padding layer is called ``name + "_pad"``.
        strides: stride per axis (default 1).
        padding: zero padding (before, after) per axis (default none).
    """
    ndim = len(kernel)
    strides = strides or (1,) * ndim
    padding = padding or ((0, 0),) * ndim
    symmetric_same = all(
        s == 1 and k % 2 == 1 and p == ((k - 1) // 2, (k - 1) // 2)
        for k, s, p in zip(kernel, strides, padding))
    if any(p != (0, 0) for p in padding) and not symmetric_same:
        x = _PAD[ndim](padding=tuple(tuple(p) for p in padding), name=f"{name}_pad")(x)
    mode = "same" if symmetric_same else "valid"
    return _CONV[ndim](filters, tuple(kernel), strides=tuple(strides), padding=mode,
                       use_bias=True, name=name)(x)


def resnet_block(x, features: int, *, generation: str, spec: NormSpec, node: str):
    """QMRITools ResNet block (``ConvBlock["ResNet"]``, two convolutions).

    main ("con"): Conv3(round(f/2)) -> Norm -> GELU -> Conv3(f) -> Norm [-> GELU in "A"];
    shortcut ("skip"): Conv1(f) -> Norm; output ("tot") = main + shortcut [-> GELU in "B"].
    ``round`` is round-half-to-even, like Wolfram ``Round``.

    Layer names: ``{node}__block__con__1..6``, ``__skip__1..2``, ``__tot__1..2``.
    """
    ndim = len(x.shape) - 2
    k3, k1 = (3,) * ndim, (1,) * ndim
    same3 = (wolfram_same_padding(3),) * ndim

    def name(*parts):
        return layer_name(node, "block", *parts)

    h = conv(x, round(features / 2), k3, padding=same3, name=name("con", 1))
    h = norm(h, spec, name=name("con", 2))
    h = gelu(h, name=name("con", 3))
    h = conv(h, features, k3, padding=same3, name=name("con", 4))
    h = norm(h, spec, name=name("con", 5))
    if generation == "A":
        h = gelu(h, name=name("con", 6))
    s = conv(x, features, k1, name=name("skip", 1))
    s = norm(s, spec, name=name("skip", 2))
    out = keras.layers.Add(name=name("tot", 1))([h, s])
    if generation == "B":
        out = gelu(out, name=name("tot", 2))
    return out


def down_conv_a(x, filters: int, scale: tuple[int, ...], *, node: str):
    """Generation A down-sampling on entry to a level (``scaleD``).

    Conv kernel 3 on every axis, stride = ``scale``, zero padding 1 on both sides of every
    axis, no normalisation or activation. Output size per axis ``ceil(n / s)``.
    """
    ndim = len(scale)
    return conv(x, filters, (3,) * ndim, strides=scale, padding=((1, 1),) * ndim,
                name=layer_name(node, "scaleD", 1))


def down_conv_b(x, filters: int, scale: tuple[int, ...], *, node: str):
    """Generation B down-sampling after a level (``scaleD``): kernel = stride = ``scale``."""
    return conv(x, filters, scale, strides=scale, name=layer_name(node, "scaleD", 1))


def upsample(x, scale: tuple[int, ...], *, name: str):
    """Nearest-neighbour up-sampling by integer factors (Wolfram ``ResizeLayer`` Nearest)."""
    ndim = len(scale)
    if ndim == 2:
        return _UPSAMPLE[2](size=scale, interpolation="nearest", name=name)(x)
    return _UPSAMPLE[3](size=scale, name=name)(x)


def up_conv_a(x, filters: int, scale: tuple[int, ...], *, node: str):
    """Generation A up-sampling (``scaleU``): resize x ``scale``, then Conv3 (padding 1)."""
    ndim = len(scale)
    x = upsample(x, scale, name=layer_name(node, "scaleU", 1))
    return conv(x, filters, (3,) * ndim, padding=(wolfram_same_padding(3),) * ndim,
                name=layer_name(node, "scaleU", 2))


def up_conv_b(x, filters: int, scale: tuple[int, ...], *, node: str):
    """Generation B up-sampling (``scaleU``): resize x ``scale``, then Conv with kernel
    ``scale``, stride 1 and padding (ceil(k/2)-1, ceil(k/2)-1) for odd k, (0, k/2) for even
    k, so the size is kept (k = 2 pads one voxel at the end of the axis)."""
    padding = tuple(wolfram_same_padding(k) if k % 2 else (0, k // 2) for k in scale)
    x = upsample(x, scale, name=layer_name(node, "scaleU", 1))
    return conv(x, filters, scale, padding=padding, name=layer_name(node, "scaleU", 2))
