"""Imported QMRITools-topology nets equal the native Keras builders given the same weights.

The writer's UNET (generations A and B) and classifier are imported through the whole
pipeline (writer -> reader -> translator); the native builders of ``legseg_tf.networks`` get
the imported weights copied layer by layer, by name. Every native layer with weights must find
its counterpart, and both models must agree on random inputs.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from legseg_tf.wlnet.reader import read_wlnet
from tests import wlnet_writer as W

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _import(tmp_path, net, name):
    from legseg_tf.wlnet.translator import translate

    model, _ = translate(read_wlnet(W.write_wlnet(tmp_path / f"{name}.wlnet", net)))
    return model


def _copy_weights(imported, native) -> int:
    imported_names = {layer.name for layer in imported.layers if layer.weights}
    native_names = {layer.name for layer in native.layers if layer.weights}
    assert native_names == imported_names
    for name in native_names:
        native.get_layer(name).set_weights(imported.get_layer(name).get_weights())
    return len(native_names)


CASES = {
    "B-batch": W.UNetSpec(generation="B", norm="batch", features=(4, 8, 12)),
    "B-instance": W.UNetSpec(generation="B", norm="instance", features=(4, 8, 12)),
    "A-batch": W.UNetSpec(generation="A", norm="batch", features=(4, 8, 12),
                          downsample=((1, 1, 1), (2, 2, 2), (1, 2, 2))),
    "A-instance": W.UNetSpec(generation="A", norm="instance", features=(4, 8, 12),
                             downsample=((1, 1, 1), (2, 2, 2), (1, 2, 2))),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_unet_import_equals_native_builder(tmp_path, case):
    from legseg_tf.networks import UNetConfig, build_unet

    spec = CASES[case]
    imported = _import(tmp_path, W.unet_net(spec), case)
    native = build_unet(UNetConfig(
        n_classes=spec.n_classes, features=spec.features, downsample=spec.downsample,
        generation=spec.generation, spatial_dims=len(spec.input_size), norm=spec.norm,
        dropout_rate=spec.dropout, patch_size=spec.input_size))
    assert _copy_weights(imported, native) > 10
    assert native.count_params() == imported.count_params()
    x = np.random.default_rng(21).standard_normal((2, *spec.input_size, 1)).astype(np.float32)
    diff = float(np.max(np.abs(native.predict(x, verbose=0) - imported.predict(x, verbose=0))))
    print(case, f"max abs diff native vs imported {diff:.3g}")
    assert diff <= 1e-5


def test_classifier_import_equals_native_builder(tmp_path):
    from legseg_tf.networks import ClassifierConfig, build_classifier

    spec = W.ClassifierSpec()
    imported = _import(tmp_path, W.classifier_net(spec), "Body_Pos_Side")
    native = build_classifier(ClassifierConfig(
        image_size=(spec.image_size, spec.image_size), side_classes=spec.side_labels,
        position_classes=spec.position_labels, head_units=spec.head))
    assert _copy_weights(imported, native) > 10
    x = np.random.default_rng(22).random((3, spec.image_size, spec.image_size, 1)).astype(
        np.float32)
    want = imported.predict(x, verbose=0)
    got = native.predict(x, verbose=0)
    for port, key in (("Side", "side"), ("Position", "position")):
        diff = float(np.max(np.abs(got[key] - want[port])))
        print(port, f"max abs diff native vs imported {diff:.3g}")
        assert diff <= 1e-5
