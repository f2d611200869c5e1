"""Adapters from installed models to the segmenter: tiling stride and classifier mapping."""
from __future__ import annotations

import json

import numpy as np
import pytest

from legseg_tf.config import InferenceConfig
from legseg_tf.errors import NoModelError
from legseg_tf.model_adapters import (
    POSITION_ALIASES,
    SIDE_ALIASES,
    fixed_patch,
    graph_stride,
    map_class_names,
    network_stride,
    slice_classifier,
)
from legseg_tf.wlnet.reader import read_wlnet
from tests import wlnet_writer as W


def _graph_config(tmp_path, net, name="net", free_spatial=True):
    from legseg_tf.wlnet.translator import describe

    path = W.write_wlnet(tmp_path / f"{name}.wlnet", net)
    return describe(read_wlnet(path), free_spatial=free_spatial).config


@pytest.mark.parametrize("generation, downsample, expected", [
    ("B", ((2, 2, 2), (1, 2, 2), (1, 1, 1)), (2, 4, 4)),
    ("B", ((1, 2, 2), (2, 2, 2), (1, 2, 2), (1, 1, 1)), (2, 8, 8)),
    ("A", ((1, 1, 1), (2, 2, 2), (1, 2, 2)), (2, 4, 4)),
])
def test_stride_of_an_imported_unet_comes_from_its_graph(tmp_path, generation, downsample,
                                                         expected):
    features = tuple(4 * (i + 1) for i in range(len(downsample)))
    spec = W.UNetSpec(generation=generation, features=features, downsample=downsample,
                      input_size=tuple(2 * e for e in expected))
    config = _graph_config(tmp_path, W.unet_net(spec))
    assert "total_stride" not in config
    assert graph_stride(config) == expected
    assert network_stride(config) == expected
    assert fixed_patch(config) is None


def test_stride_composition_rules():
    def op(name, kind, inputs, **config):
        return {"name": name, "op": kind, "inputs": inputs, "config": config}

    base = {"kind": "wlnet_graph", "inputs": [
        {"name": "in", "port": "Input", "keras_shape": [None, None, None, 1]}]}
    # strided conv on y/x, pool on z, then a permute that swaps z and y before a strided conv
    config = {**base, "ops": [
        op("a", "conv", ["in"], rank=3, strides=[1, 2, 2]),
        op("b", "max_pool", ["a"], rank=3, strides=[2, 1, 1], pool_size=[2, 1, 1]),
        op("p", "permute", ["b"], dims=[2, 1, 3, 4]),
        op("c", "conv", ["p"], rank=3, strides=[3, 1, 1]),   # strides the original y axis
        op("u", "upsample", ["c"], rank=3, size=[3, 2, 2]),
        op("s", "add", ["u", "u"]),
    ]}
    assert graph_stride(config) == (2, 6, 2)
    with pytest.raises(NoModelError, match="resamples"):
        graph_stride({**base, "ops": [
            op("r", "permute", ["in"], dims=[4, 1, 2, 3]),
            op("c", "conv", ["r"], rank=3, strides=[2, 1, 1])]})
    with pytest.raises(NoModelError, match="one image input"):
        graph_stride({"kind": "wlnet_graph", "inputs": [], "ops": []})


def test_a_net_exported_with_a_fixed_input_is_tiled_with_that_patch(tmp_path):
    spec = W.UNetSpec(input_size=(4, 8, 8))
    config = _graph_config(tmp_path, W.unet_net(spec), free_spatial=False)
    assert fixed_patch(config) == (4, 8, 8)
    mixed = json.loads(json.dumps(config))
    mixed["inputs"][0]["keras_shape"][0] = None
    with pytest.raises(NoModelError, match="mixes"):
        fixed_patch(mixed)


def test_class_names_map_by_name_whatever_their_order():
    assert map_class_names(["right", "Both", "LEFT"], SIDE_ALIASES, "side") == \
        ("Right", "Both", "Left")
    assert map_class_names(["Upper_Leg", "pelvis", "Lower"], POSITION_ALIASES, "position") == \
        ("Upper", "Hip", "Lower")
    with pytest.raises(NoModelError, match="'Middle'"):
        map_class_names(["Left", "Middle"], SIDE_ALIASES, "side")
    with pytest.raises(NoModelError, match="duplicates"):
        map_class_names(["Left", "L"], SIDE_ALIASES, "side")


def _install(tmp_path, net, stem, role="classifier"):
    """Convert a writer-made net into a models folder as legseg-import does; the entry."""
    from legseg_tf import model_store
    from legseg_tf.wlnet.translator import translate

    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    wl = read_wlnet(W.write_wlnet(tmp_path / f"{stem}.wlnet", net))
    model, config = translate(wl)
    (models / f"{stem}.json").write_text(json.dumps(config))
    model.save_weights(models / f"{stem}.weights.h5")
    model_store.write_entry(models, {
        "id": stem, "role": role, "config": f"{stem}.json", "weights": f"{stem}.weights.h5",
        "sha256": model_store.sha256_file(models / f"{stem}.weights.h5"), "label_table": None,
        "provenance": {"source": "qmritools-wlnet"}})
    return model_store.load_manifest(models).get(role), model


def test_imported_classifier_votes_by_port_name_and_decoded_class_names(tmp_path):
    """A Body_Pos_Side-like net whose Side classes are stored as Right/Both/Left: the adapter
    reads the ports by name and maps each decoded class to legseg's meaning."""
    spec = W.ClassifierSpec(image_size=64, side_labels=("Right", "Both", "Left"),
                            position_labels=("Upper", "Lower", "Knee", "Hip"),
                            head=(16,), seed=5)
    entry, model = _install(tmp_path, W.classifier_net(spec), "Body_Pos_Side")
    classifier = slice_classifier(entry, InferenceConfig())
    assert classifier.image_size == (64, 64)
    assert classifier.side_classes == ("Right", "Both", "Left")
    assert classifier.position_classes == ("Upper", "Lower", "Knee", "Hip")
    images = np.random.default_rng(0).normal(size=(5, 64, 64)).astype(np.float32)
    raw = model(images[..., None], training=False)
    sides, positions = classifier(images)
    assert sides == [spec.side_labels[i] for i in np.argmax(np.asarray(raw["Side"]), -1)]
    assert positions == [spec.position_labels[i]
                         for i in np.argmax(np.asarray(raw["Position"]), -1)]


def test_imported_classifier_with_unknown_classes_is_not_usable(tmp_path):
    spec = W.ClassifierSpec(image_size=64, side_labels=("Sinister", "Dexter"), head=(8,))
    entry, _ = _install(tmp_path, W.classifier_net(spec), "Body_Pos_Side")
    with pytest.raises(NoModelError, match="Sinister"):
        slice_classifier(entry, InferenceConfig())
