"""Tests of the network configs and Keras builders (tiny networks, CPU)."""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from legseg_tf.networks import naming  # noqa: E402
from legseg_tf.networks.config import (  # noqa: E402
    ClassifierConfig,
    UNetConfig,
    config_from_dict,
    config_from_json,
    total_stride,
)

try:  # keep TensorFlow modest on shared CPUs; fails harmlessly once TF is initialised
    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)
except RuntimeError:
    pass

from legseg_tf.networks import blocks  # noqa: E402
from legseg_tf.networks.classifier import build_classifier  # noqa: E402
from legseg_tf.networks.unet import build_from_config, build_unet  # noqa: E402

SCHEDULE_B3 = ((1, 2, 2), (2, 2, 2), (1, 1, 1))
SCHEDULE_A3 = ((1, 1, 1), (1, 2, 2), (2, 2, 2))
TINY = (4, 8, 12)


def tiny_unet(generation="B", spatial_dims=3, **kwargs) -> UNetConfig:
    if spatial_dims == 3:
        schedule = SCHEDULE_B3 if generation == "B" else SCHEDULE_A3
    else:
        schedule = ((2, 2), (2, 2), (1, 1)) if generation == "B" else ((1, 1), (2, 2), (2, 2))
    kwargs.setdefault("n_classes", 3)
    kwargs.setdefault("features", TINY)
    kwargs.setdefault("downsample", schedule)
    return UNetConfig(generation=generation, spatial_dims=spatial_dims, **kwargs)


def random_weights(model, seed=0):
    """Replace every weight by random values (BN variances positive)."""
    rng = np.random.default_rng(seed)
    new = []
    for var in model.weights:
        value = rng.normal(0.0, 0.3, var.shape).astype("float32")
        if "variance" in var.path:
            value = np.abs(value) + 0.5
        new.append(value)
    model.set_weights(new)


# ---------------------------------------------------------------------------------- configs

def test_unet_config_json_round_trip_and_kind():
    config = tiny_unet("A", patch_size=(8, 16, 16), norm="instance", dropout_rate=0.1)
    data = json.loads(config.to_json())
    assert data["kind"] == "unet"
    assert data["downsample"] == [list(e) for e in SCHEDULE_A3]
    assert UNetConfig.from_json(config.to_json()) == config
    assert config_from_json(config.to_json()) == config


def test_classifier_config_json_round_trip_and_kind():
    config = ClassifierConfig(head="linear", image_size=(96, 128))
    data = config.to_dict()
    assert data["kind"] == "classifier"
    assert config_from_dict(data) == config
    assert ClassifierConfig.from_json(config.to_json()) == config


def test_configs_accept_lists_and_stay_hashable():
    config = UNetConfig(n_classes=3, features=[4, 8], downsample=[[2, 2, 2], [1, 1, 1]])
    assert config.features == (4, 8) and config.downsample == ((2, 2, 2), (1, 1, 1))
    hash(config)


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_classes=1), "n_classes"),
    (dict(n_classes=3, generation="C"), "generation"),
    (dict(n_classes=3, norm="group"), "norm"),
    (dict(n_classes=3, spatial_dims=4), "spatial_dims"),
    (dict(n_classes=3, features=(8,), downsample=((1, 1, 1),)), "at least 2 levels"),
    (dict(n_classes=3, features=(4, 8, 16), downsample=((2, 2, 2), (1, 1, 1))), "one entry per"),
    (dict(n_classes=3, features=(4, 8), downsample=((2, 2), (1, 1))), "3 factors"),
    (dict(n_classes=3, features=(4, 8), downsample=((0, 2, 2), (1, 1, 1))), ">= 1"),
    (dict(n_classes=3, features=(4, 8), downsample=((2, 2, 2), (2, 2, 2))), "deepest level"),
    (dict(n_classes=3, features=(4, 8), downsample=((4, 4, 4), (1, 1, 1))), "1, 2 and 3"),
    (dict(n_classes=3, features=(4, 8), downsample=((2, 2, 2), (1, 1, 1)), generation="A"),
     "first downsample entry"),
    (dict(n_classes=3, dropout_rate=1.0), "dropout_rate"),
    (dict(n_classes=3, norm_epsilon=0.0), "norm_epsilon"),
    (dict(n_classes=3, features=(4, 8), downsample=((2, 2.5, 2), (1, 1, 1))), "integers"),
    (dict(n_classes=3, patch_size=(30, 112, 112)), "multiple of the total stride"),
    (dict(n_classes=3, patch_size=(32, 112)), "3 entries"),
])
def test_unet_config_rejects_bad_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UNetConfig(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(image_size=(32, 128)), "at least 64"),
    (dict(image_size=(128,)), "2 sizes"),
    (dict(head="conv"), "head"),
    (dict(side_classes=("Left",)), "at least 2"),
    (dict(position_classes=("Hip", "Hip", "Knee")), "duplicate"),
    (dict(head_units=(256, 0)), "head_units"),
])
def test_classifier_config_rejects_bad_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClassifierConfig(**kwargs)


@pytest.mark.parametrize("data, message", [
    ({"kind": "unet", "n_classes": 3, "widths": [4, 8]}, "unknown UNetConfig field"),
    ({"kind": "classifier", "n_classes": 3}, "needs kind 'unet'"),
    ({"kind": "unet"}, "n_classes"),
    ({"n_classes": 3}, "kind must be one of"),
    ({"kind": "unet", "n_classes": 3, "features": "wide"}, "sequence of integers"),
])
def test_config_json_errors(data, message):
    with pytest.raises(ValueError, match=message):
        if data.get("kind") == "classifier":
            UNetConfig.from_dict(data)
        else:
            config_from_dict(data)


def test_config_from_json_rejects_malformed_text():
    with pytest.raises(ValueError, match="not valid JSON"):
        config_from_json("{kind: unet")


@pytest.mark.parametrize("config, expected", [
    (UNetConfig(n_classes=3), (4, 16, 16)),  # the documented QMRITools leg schedule
    (UNetConfig(n_classes=3, generation="A",
                downsample=((1, 1, 1), (2, 2, 2), (1, 2, 2), (2, 2, 2), (1, 2, 2))), (4, 16, 16)),
    (tiny_unet("B", 2), (4, 4)),
    (tiny_unet("A", 3), (2, 4, 4)),
])
def test_total_stride(config, expected):
    assert total_stride(config) == expected


def test_config_module_does_not_import_tensorflow():
    code = ("import sys; import legseg_tf.networks, legseg_tf.networks.config; "
            "print(any(m.split('.')[0] in ('tensorflow', 'keras') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("generation, spatial_dims, shape", [
    ("B", 3, (4, 16, 16)),
    ("B", 3, (8, 32, 16)),
    ("A", 3, (2, 8, 12)),
    ("A", 3, (6, 16, 24)),
    ("B", 2, (16, 16)),
    ("B", 2, (12, 32)),
    ("A", 2, (8, 20)),
])
def test_unet_output_shape_and_softmax(generation, spatial_dims, shape):
    config = tiny_unet(generation, spatial_dims)
    model = build_unet(config, shape)
    x = np.random.default_rng(1).random((2, *shape, 1), dtype=np.float32)
    y = model.predict(x, verbose=0)
    assert y.shape == (2, *shape, 3)
    np.testing.assert_allclose(y.sum(axis=-1), 1.0, rtol=1e-5)


def test_unet_without_fixed_size_accepts_several_sizes():
    model = build_unet(tiny_unet("B"))
    assert model.input_shape == (None, None, None, None, 1)
    for shape in [(2, 8, 8), (4, 12, 20)]:
        assert model.predict(np.zeros((1, *shape, 1), np.float32), verbose=0).shape == \
            (1, *shape, 3)


def test_unet_rejects_input_size_off_the_stride():
    with pytest.raises(ValueError, match="total stride"):
        build_unet(tiny_unet("B"), (4, 16, 18))


def test_unet_level_shapes_follow_the_documented_table():
    # QMRITools shape table for 1x32x112x112 with schedule (2,2,2),(1,2,2),(2,2,2),(1,2,2),1.
    config = UNetConfig(n_classes=2, features=(2, 4, 6, 8, 10))
    model = build_unet(config, (32, 112, 112))
    expected = {"enc_1": (32, 112, 112), "enc_2": (16, 56, 56), "enc_3": (16, 28, 28),
                "enc_4": (8, 14, 14), "enc_5": (8, 7, 7), "dec_4": (8, 14, 14),
                "dec_3": (16, 28, 28), "dec_2": (16, 56, 56), "dec_1": (32, 112, 112)}
    for node, size in expected.items():
        level = int(node[-1])
        out = model.get_layer(f"{node}__drop").output.shape
        assert tuple(out[1:]) == (*size, config.features[level - 1])


@pytest.mark.parametrize("generation, schedule", [
    ("B", ((1, 2, 2), (1, 1, 1), (2, 2, 2), (1, 1, 1))),
    ("A", ((1, 1, 1), (1, 2, 2), (1, 1, 1), (2, 2, 2))),
])
def test_unit_level_has_no_resampling_convs(generation, schedule):
    config = UNetConfig(n_classes=2, features=(4, 6, 8, 10), downsample=schedule,
                        generation=generation)
    model = build_unet(config, (4, 8, 8))
    names = layer_names(model)
    unit = 2 if generation == "B" else 3
    assert not [n for n in names if n.startswith((f"enc_{unit}__scale", f"dec_{unit}__scale"))]
    assert model.predict(np.zeros((1, 4, 8, 8, 1), np.float32), verbose=0).shape == \
        (1, 4, 8, 8, 2)


def test_multichannel_input():
    model = build_unet(tiny_unet("A", in_channels=2), (2, 8, 8))
    assert model.input_shape == (None, 2, 8, 8, 2)


# ------------------------------------------------------------------------------------ names

def layer_names(model):
    return [layer.name for layer in model.layers]


@pytest.mark.parametrize("generation", ["A", "B"])
def test_layer_names_are_explicit_unique_and_stable(generation):
    config = tiny_unet(generation)
    first, second = layer_names(build_unet(config)), layer_names(build_unet(config))
    assert first == second
    assert len(set(first)) == len(first)
    for name in first:
        assert name == "input" or naming.SEP in name, name


def test_generation_b_layer_names():
    names = set(layer_names(build_unet(tiny_unet("B"))))
    expected = {
        "start__1", "start__2", "start__3",
        "enc_1__block__con__1", "enc_1__block__con__5", "enc_1__block__skip__1",
        "enc_1__block__skip__2", "enc_1__block__tot__1", "enc_1__block__tot__2", "enc_1__drop",
        "enc_1__scaleD__1", "enc_2__scaleD__1", "dec_1__scaleU__1", "dec_1__scaleU__2",
        "dec_1__scaleU__2_pad", "dec_2__scaleU__2", "dec_1__cat", "dec_2__cat", "map__1",
        "map__3",
    }
    assert expected <= names
    for absent in ("enc_1__block__con__6", "enc_3__scaleD__1", "enc_3__scaleU__1",
                   "enc_1__scaleD__1_pad"):
        assert absent not in names


def test_generation_a_layer_names():
    names = set(layer_names(build_unet(tiny_unet("A"))))
    expected = {
        "start__1", "enc_1__block__con__6", "enc_1__block__tot__1", "enc_2__scaleD__1",
        "enc_2__scaleD__1_pad", "enc_3__scaleD__1", "enc_3__scaleU__1", "enc_3__scaleU__2",
        "dec_2__scaleU__1", "dec_2__scaleU__2", "dec_1__cat", "dec_2__cat", "map__1", "map__3",
    }
    assert expected <= names
    for absent in ("start__2", "enc_1__scaleD__1", "enc_1__block__tot__2", "dec_1__scaleU__1"):
        assert absent not in names


def test_dropout_layers_absent_at_rate_zero():
    names = layer_names(build_unet(tiny_unet("B", dropout_rate=0.0)))
    assert not [n for n in names if n.endswith("__drop")]


def test_wolfram_path_mapping():
    assert naming.layer_name("dec_2", "block/skip", 2) == "dec_2__block__skip__2"
    assert naming.wolfram_path("dec_2__block__skip__2") == ("dec_2", "block/skip/2")
    assert naming.wolfram_path("map__3") == ("map", "3")
    assert naming.wolfram_path("enc_2__scaleD__1_pad") is None
    assert naming.wolfram_path("Conv__21_channels_first") is None
    assert naming.wolfram_path("input") is None
    with pytest.raises(ValueError):
        naming.layer_name("enc_1", "block//con")


def test_every_weighted_layer_maps_to_a_wolfram_path():
    model = build_unet(tiny_unet("A", norm="instance"))
    for layer in model.layers:
        if layer.weights:
            assert naming.wolfram_path(layer.name) is not None, layer.name


# --------------------------------------------------------------------------------- numerics

def test_instance_norm_matches_numpy():
    channels, eps = 3, 1e-3
    inputs = keras.Input((3, 4, 5, channels))
    spec = blocks.NormSpec("instance", epsilon=eps)
    model = keras.Model(inputs, blocks.norm(inputs, spec, name="n"))
    layer = model.get_layer("n")
    assert isinstance(layer, keras.layers.GroupNormalization) and layer.groups == channels
    rng = np.random.default_rng(2)
    gamma, beta = rng.normal(size=channels), rng.normal(size=channels)
    layer.set_weights([gamma.astype("float32"), beta.astype("float32")])
    x = rng.normal(size=(2, 3, 4, 5, channels)) * np.array([1.0, 5.0, 0.1]) + 3.0
    x[1] *= 7.0  # the second sample has other statistics: normalisation is per sample
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    var = x.var(axis=(1, 2, 3), keepdims=True)  # biased (ddof = 0)
    expected = (x - mean) / np.sqrt(var + eps) * gamma + beta
    got = model.predict(x.astype("float32"), verbose=0)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_instance_norm_unet_uses_one_group_per_channel():
    model = build_unet(tiny_unet("B", norm="instance"))
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.GroupNormalization)]
    assert norms and not [layer for layer in model.layers
                          if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        assert layer.groups == layer.input.shape[-1]
        assert layer.epsilon == pytest.approx(1e-3)


def test_batch_norm_settings():
    model = build_unet(tiny_unet("A", bn_momentum=0.9, norm_epsilon=1e-3))
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms
    assert all(layer.momentum == pytest.approx(0.9) and layer.epsilon == pytest.approx(1e-3)
               for layer in norms)


def test_gelu_is_exact():
    from scipy.special import erf

    x = np.linspace(-6, 6, 241, dtype=np.float32)
    inputs = keras.Input((1,))
    model = keras.Model(inputs, blocks.gelu(inputs, name="g"))
    got = model.predict(x[:, None], verbose=0)[:, 0]
    exact = 0.5 * x * (1 + erf(x / np.sqrt(2)))
    tanh_approx = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    np.testing.assert_allclose(got, exact, atol=2e-6)
    assert np.abs(got - tanh_approx).max() > 1e-4


def wolfram_conv(x_cf, weights, bias, strides, padding):
    """Reference Wolfram/MXNet convolution (cross-correlation), channels first.

    x_cf (in, *spatial); weights (out, in, *k) in Wolfram layout; padding (lo, hi) per axis.
    """
    xp = np.pad(x_cf, [(0, 0), *padding])
    kernel = weights.shape[2:]
    out_size = [(n - k) // s + 1 for n, k, s in zip(xp.shape[1:], kernel, strides)]
    out = np.zeros((weights.shape[0], *out_size))
    for offset in itertools.product(*[range(k) for k in kernel]):
        window = tuple(slice(o, o + s * (m - 1) + 1, s)
                       for o, s, m in zip(offset, strides, out_size))
        out += np.einsum("oi,i...->o...", weights[(slice(None), slice(None), *offset)],
                         xp[(slice(None), *window)])
    return out + bias.reshape(-1, *([1] * len(kernel)))


def run_single_conv(build, x_cf, weights, bias):
    """Build ``build(inputs)`` on one sample, load Wolfram-layout weights, run channels last."""
    ndim = x_cf.ndim - 1
    inputs = keras.Input(x_cf.shape[1:] + x_cf.shape[:1])
    model = keras.Model(inputs, build(inputs))
    conv_layer = [layer for layer in model.layers if layer.weights][0]
    perm = (*range(2, 2 + ndim), 1, 0)  # Wolfram (out, in, k...) -> Keras (k..., in, out)
    conv_layer.set_weights([weights.transpose(perm).astype("float32"), bias.astype("float32")])
    x_cl = np.moveaxis(x_cf, 0, -1)[None].astype("float32")
    return np.moveaxis(model.predict(x_cl, verbose=0)[0], -1, 0), model


@pytest.mark.parametrize("spatial, scale", [
    ((5, 6, 7), (2, 2, 2)),
    ((4, 8, 6), (1, 2, 2)),
    ((6, 6, 9), (3, 3, 3)),
    ((7, 9), (2, 2)),
])
def test_generation_a_down_conv_samples_the_wolfram_grid(spatial, scale):
    rng = np.random.default_rng(3)
    ndim = len(spatial)
    x = rng.normal(size=(2, *spatial))
    weights, bias = rng.normal(size=(3, 2, *(3,) * ndim)), rng.normal(size=3)
    got, model = run_single_conv(
        lambda t: blocks.down_conv_a(t, 3, scale, node="enc_2"), x, weights, bias)
    expected = wolfram_conv(x, weights, bias, scale, ((1, 1),) * ndim)
    assert [layer.name for layer in model.layers[1:]] == \
        ["enc_2__scaleD__1_pad", "enc_2__scaleD__1"]
    assert got.shape == expected.shape == (3, *[-(-n // s) for n, s in zip(spatial, scale)])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    if any(s == 2 and n % 2 == 0 for n, s in zip(spatial, scale)):
        # Keras padding="same" with stride 2 pads (0, 1): a different sampling grid.
        conv_cls = keras.layers.Conv3D if ndim == 3 else keras.layers.Conv2D
        same, _ = run_single_conv(
            lambda t: conv_cls(3, 3, strides=scale, padding="same")(t), x, weights, bias)
        assert not np.allclose(same, expected, atol=1e-3)


@pytest.mark.parametrize("scale", [(2, 2, 2), (1, 2, 2), (3, 1, 2)])
def test_generation_b_up_conv_matches_wolfram_padding(scale):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 3, 4, 2))
    weights, bias = rng.normal(size=(3, 2, *scale)), rng.normal(size=3)
    got, _ = run_single_conv(
        lambda t: blocks.up_conv_b(t, 3, scale, node="dec_1"), x, weights, bias)
    upsampled = x
    for axis, s in enumerate(scale, start=1):
        upsampled = np.repeat(upsampled, s, axis=axis)
    padding = tuple((1, 1) if k == 3 else (0, k // 2) if k % 2 == 0 else (0, 0) for k in scale)
    expected = wolfram_conv(upsampled, weights, bias, (1, 1, 1), padding)
    assert got.shape == expected.shape == (3, *[n * s for n, s in zip(x.shape[1:], scale)])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_generation_b_down_conv_is_kernel_equals_stride():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 4, 6, 6))
    weights, bias = rng.normal(size=(3, 2, 1, 2, 2)), rng.normal(size=3)
    got, _ = run_single_conv(
        lambda t: blocks.down_conv_b(t, 3, (1, 2, 2), node="enc_1"), x, weights, bias)
    np.testing.assert_allclose(got, wolfram_conv(x, weights, bias, (1, 2, 2), ((0, 0),) * 3),
                               rtol=1e-4, atol=1e-4)


def test_dropout_is_identity_at_inference():
    with_dropout = build_unet(tiny_unet("B", dropout_rate=0.5), (4, 8, 8))
    random_weights(with_dropout)
    without = build_unet(tiny_unet("B", dropout_rate=0.0), (4, 8, 8))
    without.set_weights(with_dropout.get_weights())  # dropout layers hold no weights
    x = np.random.default_rng(6).random((1, 4, 8, 8, 1), dtype=np.float32)
    np.testing.assert_allclose(with_dropout.predict(x, verbose=0),
                               without.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    training = with_dropout(x, training=True).numpy()
    assert not np.allclose(training, without.predict(x, verbose=0), atol=1e-4)


# ------------------------------------------------------------------------ weights round trip

def test_unet_weights_round_trip(tmp_path):
    config = tiny_unet("A", norm="instance")
    model = build_unet(config)
    random_weights(model, seed=7)
    path = tmp_path / "net.weights.h5"
    model.save_weights(path)
    fresh = build_from_config(json.loads(config.to_json()))
    fresh.load_weights(path)
    x = np.random.default_rng(8).random((1, 2, 8, 8, 1), dtype=np.float32)
    np.testing.assert_array_equal(model.predict(x, verbose=0), fresh.predict(x, verbose=0))


def test_classifier_weights_round_trip(tmp_path):
    config = ClassifierConfig(image_size=(64, 64))
    model = build_classifier(config)
    random_weights(model, seed=9)
    path = tmp_path / "cls.weights.h5"
    model.save_weights(path)
    fresh = build_classifier(ClassifierConfig.from_json(config.to_json()))
    fresh.load_weights(path)
    x = np.random.default_rng(10).random((2, 64, 64, 1), dtype=np.float32)
    a, b = model.predict(x, verbose=0), fresh.predict(x, verbose=0)
    for key in ("side", "position"):
        np.testing.assert_array_equal(a[key], b[key])


# --------------------------------------------------------------------- documented summaries

def wolfram_network_memory_gb(model) -> float:
    """QMRITools ``NetSummary`` network memory: 4 bytes x (all array elements + the output
    elements of every Wolfram layer), in GB (10^9 bytes). Keras-only padding layers are not
    Wolfram layers; the map transpose (implicit in Keras) is one."""
    outputs = 0
    for layer in model.layers:
        if naming.wolfram_path(layer.name) is None:
            continue
        size = int(np.prod(layer.output.shape[1:]))
        outputs += size * (2 if layer.name == "map__1" else 1)
    return 4 * (model.count_params() + outputs) / 1e9


def test_parameter_counts_match_the_documented_qmritools_summary():
    """makeUnet.png: features 32/64/128/192/256, 18 classes, 32x112x112: "6.12 M conv
    weights, 28 BN + 37 conv layers", 24.56 MB weights, 1.78 GB network memory. Generation B
    with the documented schedule reproduces every figure; generation A does not."""
    config = UNetConfig(n_classes=18, features=(32, 64, 128, 192, 256), generation="B")
    model = build_unet(config, (32, 112, 112))
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv3D)]
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    kernel_weights = sum(int(np.prod(layer.kernel.shape)) for layer in convs)
    assert (len(convs), len(norms)) == (37, 28)
    assert kernel_weights == 6_124_368 and round(kernel_weights / 1e6, 2) == 6.12
    assert model.count_params() == 6_138_898
    assert round(4 * model.count_params() / 1e6, 2) == 24.56
    assert round(wolfram_network_memory_gb(model), 2) == 1.78

    gen_a = build_unet(UNetConfig(
        n_classes=18, features=(32, 64, 128, 192, 256), generation="A",
        downsample=((1, 1, 1), (2, 2, 2), (1, 2, 2), (2, 2, 2), (1, 2, 2))))
    norms_a = [layer for layer in gen_a.layers
               if isinstance(layer, keras.layers.BatchNormalization)]
    convs_a = [layer for layer in gen_a.layers if isinstance(layer, keras.layers.Conv3D)]
    assert (len(convs_a), len(norms_a)) == (37, 27)
    assert round(sum(int(np.prod(layer.kernel.shape)) for layer in convs_a) / 1e6, 2) != 6.12


# ------------------------------------------------------------------------------- classifier

@pytest.mark.parametrize("head, size, flat", [
    ("mlp", (128, 128), 256),
    ("linear", (128, 128), 256),
    ("mlp", (64, 96), 64),
])
def test_classifier_outputs(head, size, flat):
    config = ClassifierConfig(head=head, image_size=size)
    model = build_classifier(config)
    assert model.get_layer("Conv__21").output.shape[-1] == flat
    x = np.random.default_rng(11).random((3, *size, 1), dtype=np.float32)
    out = model.predict(x, verbose=0)
    assert set(out) == {"side", "position"}
    assert out["side"].shape == (3, 3) and out["position"].shape == (3, 8)
    for probs in out.values():
        np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=1e-5)


def test_classifier_layer_names():
    mlp = layer_names(build_classifier(ClassifierConfig()))
    assert mlp[:5] == ["input", "Conv__1", "Conv__2", "Conv__3", "Conv__4"]
    assert {"Conv__20", "Conv__21_channels_first", "Conv__21", "Side__14",
            "Position__14"} <= set(mlp)
    assert "Side__15" not in mlp
    linear = set(layer_names(build_classifier(ClassifierConfig(head="linear"))))
    assert {"Side__1", "Side__2", "Position__1", "Position__2"} <= linear
    assert "Side__3" not in linear


def test_classifier_trunk_follows_the_documented_layers():
    model = build_classifier(ClassifierConfig())
    convs = [model.get_layer(f"Conv__{i}") for i in (1, 5, 9, 13, 17)]
    assert [(layer.filters, layer.kernel_size[0]) for layer in convs] == \
        [(16, 7), (32, 5), (32, 5), (64, 3), (64, 3)]
    pools = [model.get_layer(f"Conv__{i}") for i in (4, 8, 12, 16, 20)]
    assert [layer.pool_size[0] for layer in pools] == [2, 2, 2, 2, 4]
    assert [model.get_layer(f"Side__{i}").units for i in (1, 4, 7, 10, 13)] == \
        [256, 128, 64, 32, 3]


def test_classifier_flattens_in_wolfram_channel_first_order():
    model = build_classifier(ClassifierConfig(image_size=(128, 128)))
    probe = keras.Model(model.input, [model.get_layer("Conv__20").output,
                                      model.get_layer("Conv__21").output])
    x = np.random.default_rng(12).random((2, 128, 128, 1), dtype=np.float32)
    pooled, flat = probe.predict(x, verbose=0)
    np.testing.assert_array_equal(flat, pooled.transpose(0, 3, 1, 2).reshape(2, -1))
