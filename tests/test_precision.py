"""The optional bfloat16 forward pass: a mixed-precision copy of the network, traced once,
float32 output layer; float32 stays the default and bit-identical to Keras."""
from __future__ import annotations

import numpy as np
import pytest

from legseg_tf import inference
from legseg_tf.config import InferenceConfig


@pytest.fixture(scope="module")
def unet():
    import keras

    from legseg_tf.networks.config import UNetConfig, total_stride
    from legseg_tf.networks.unet import build_unet

    keras.utils.set_random_seed(11)
    config = UNetConfig(n_classes=4, features=(4, 8, 8, 8, 8), dropout_rate=0.0)
    return build_unet(config), tuple(total_stride(config))


def test_the_copy_computes_in_bfloat16_with_a_float32_output_layer(unet):
    model, _ = unet
    copy = inference.bfloat16_copy(model)
    policies = {layer.dtype_policy.name for layer in copy.layers[1:-1]}
    assert policies == {"mixed_bfloat16"}
    assert copy.layers[-1].dtype_policy.name == "float32"
    assert copy.outputs[0].dtype == "float32"
    for original, copied in zip(model.get_weights(), copy.get_weights()):
        np.testing.assert_array_equal(original, copied)   # float32 weights kept


def test_bfloat16_outputs_are_close_and_traced_once_beside_float32(unet):
    model, _ = unet
    rng = np.random.default_rng(4)
    batches = [rng.normal(size=shape).astype(np.float32)
               for shape in ((1, 8, 32, 32, 1), (2, 4, 48, 16, 1))]
    single = inference.forward_function(model, "float32")
    half = inference.forward_function(model, "bfloat16")
    assert half is not single and inference.forward_function(model, "bfloat16") is half
    for batch in batches:
        exact, rounded = single(batch), half(batch)
        np.testing.assert_array_equal(exact, model.predict_on_batch(batch))
        assert rounded.dtype == np.float32 and rounded.shape == exact.shape
        assert not np.array_equal(rounded, exact)             # it does round
        np.testing.assert_allclose(rounded.sum(axis=-1), 1.0, atol=1e-5)
        assert np.abs(rounded - exact).max() < 0.1
        assert (rounded.argmax(-1) == exact.argmax(-1)).mean() > 0.9
    assert inference.tracing_count(model, "bfloat16") == 1
    assert inference.tracing_count(model, "float32") == 1
    with pytest.raises(ValueError, match="precision"):
        inference.forward_function(model, "float16")


def test_a_part_runs_in_bfloat16_when_configured(unet):
    model, stride = unet
    volume = np.random.default_rng(2).gamma(2.0, 50.0, (8, 32, 40)).astype(np.float32) + 1
    outputs = {precision: inference.apply_segmentation_network(
        volume, model, 4, InferenceConfig(precision=precision), stride, largest_component=False)
        for precision in ("float32", "bfloat16")}
    agreement = (outputs["float32"].labels == outputs["bfloat16"].labels).mean()
    assert 0.9 < agreement
    with pytest.raises(ValueError, match="precision"):
        InferenceConfig(precision="half")
