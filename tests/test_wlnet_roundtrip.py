"""Writer -> reader -> translator -> Keras equals the numpy reference, for layer types and
topologies no public sample contains (QMRITools UNET A/B, Body_Pos_Side, deconvolution...)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from legseg_tf.wlnet.reader import read_wlnet
from tests import wlnet_writer as W
from tests.wlnet_reference import random_inputs, run_net, to_keras_layout

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
TOL = 1e-4


def _max_diff(model, wl, rng, batch=2, inputs=None):
    inputs = inputs or random_inputs(wl.net, rng, batch)
    ref = run_net(wl.net, inputs)
    feed = {k: to_keras_layout(v).astype(np.float32) for k, v in inputs.items()}
    got = model.predict(next(iter(feed.values())) if len(feed) == 1 else feed, verbose=0)
    if not isinstance(got, dict):
        got = {next(iter(ref)): got}
    diffs = {}
    for port, want in ref.items():
        assert np.asarray(got[port]).shape == want.shape, port
        assert float(np.std(want)) > 1e-3, f"degenerate reference output on {port}"
        diffs[port] = float(np.max(np.abs(np.asarray(got[port]) - want)))
    return diffs


def _roundtrip(tmp_path, net, name="net", **kw):
    from legseg_tf.wlnet.translator import translate

    path = W.write_wlnet(tmp_path / f"{name}.wlnet", net)
    wl = read_wlnet(path)
    model, config = translate(wl, **kw)
    return wl, model, config


UNET_CASES = {
    "B-batch": W.UNetSpec(generation="B", norm="batch"),
    "B-instance-2d": W.UNetSpec(generation="B", norm="instance", input_size=(8, 12),
                                downsample=((2, 2), (2, 2), (1, 1)), features=(4, 6, 8)),
    "A-instance": W.UNetSpec(generation="A", norm="instance",
                             downsample=((1, 1, 1), (2, 2, 2), (1, 2, 2))),
    "A-batch": W.UNetSpec(generation="A", norm="batch",
                          downsample=((1, 1, 1), (2, 2, 2), (1, 2, 2))),
}


@pytest.mark.parametrize("case", sorted(UNET_CASES))
def test_unet_matches_reference(tmp_path, case):
    spec = UNET_CASES[case]
    wl, model, config = _roundtrip(tmp_path, W.unet_net(spec))
    diffs = _max_diff(model, wl, np.random.default_rng(7))
    print(case, diffs)
    assert max(diffs.values()) <= TOL
    names = {layer.name for layer in model.layers}
    assert {"start__1", "enc_1__block__con__1", "dec_1__cat", "map__1"} <= names
    # the map's transpose is a relabelling: the output is (batch, z, y, x, classes)
    assert model.output_shape == (None,) + spec.input_size + (spec.n_classes,)


def test_unet_free_spatial_accepts_other_patch_sizes(tmp_path):
    spec = UNET_CASES["B-batch"]
    wl, model, _ = _roundtrip(tmp_path, W.unet_net(spec), free_spatial=True)
    assert model.input_shape == (None, None, None, None, 1)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 1, 8, 16, 8))
    diffs = _max_diff(model, wl, rng, inputs={"Input": x})
    assert max(diffs.values()) <= TOL


def test_classifier_matches_reference_and_keeps_decoders(tmp_path):
    spec = W.ClassifierSpec()
    wl, model, config = _roundtrip(tmp_path, W.classifier_net(spec))
    diffs = _max_diff(model, wl, np.random.default_rng(11), batch=3)
    print("classifier", diffs)
    assert set(diffs) == {"Side", "Position"}
    assert max(diffs.values()) <= TOL
    outputs = {o["port"]: o for o in config["outputs"]}
    assert outputs["Side"]["decoder"] == {"type": "Class", "labels": list(spec.side_labels)}
    assert outputs["Position"]["decoder"]["labels"] == list(spec.position_labels)
    (inp,) = config["inputs"]
    assert inp["encoder"]["type"] == "Image"
    assert inp["encoder"]["ImageSize"] == [spec.image_size, spec.image_size]
    assert inp["keras_shape"] == [spec.image_size, spec.image_size, 1]


def _chain_net(in_shape, steps):
    built = W.chain(tuple(in_shape), steps)
    return built.assoc


def _zoo():
    w = W.Weights(5)
    return {
        "conv2d-stride-asym-pad": ((3, 9, 11), [
            ("c", lambda s: W.conv(w, s, 4, (3, 2), stride=2, pad=[[0, 1], [2, 1]]))]),
        "conv2d-dilation-groups": ((4, 10, 10), [
            ("c", lambda s: W.conv(w, s, 6, 3, dilation=2, groups=2, pad=2, bias=False))]),
        "conv3d-stride2-pad1": ((2, 5, 6, 7), [
            ("c", lambda s: W.conv(w, s, 3, 3, stride=2, pad=1))]),
        "deconv2d": ((3, 5, 4), [
            ("d", lambda s: W.deconv(w, s, 2, 3, stride=2, pad=[[1, 1], [0, 1]]))]),
        "deconv3d-k2s2": ((2, 3, 4, 5), [("d", lambda s: W.deconv(w, s, 3, 2, stride=2))]),
        "deconv2d-k2s3": ((2, 4, 3), [
            ("d", lambda s: W.deconv(w, s, 2, 2, stride=3, bias=False))]),
        "pool-mean-3d": ((2, 6, 6, 4), [("p", lambda s: W.pooling(s, 2, 2, "Mean"))]),
        "pool-max-overlap": ((2, 7, 9), [("p", lambda s: W.pooling(s, 3, 2, "Max"))]),
        "activations": ((3, 4, 5), [
            ("a", lambda s: W.elementwise(s, "Tanh")), ("b", lambda s: W.elementwise(s, "ELU")),
            ("c", lambda s: W.elementwise(s, "LogisticSigmoid")),
            ("d", lambda s: W.elementwise(s, "SELU")), ("e", lambda s: W.elementwise(s, "GELU")),
            ("f", lambda s: W.conv(w, s, 2, 1)), ("g", lambda s: W.elementwise(s, "SoftPlus")),
            ("h", lambda s: W.elementwise(s, "Swish")),
            ("i", lambda s: W.elementwise(s, "Ramp"))]),
        "conv1d-stride-pad": ((3, 11), [
            ("c", lambda s: W.conv(w, s, 2, 3, stride=2, pad=[[2, 1]]))]),
        "flatten-linear-nonsquare": ((3, 2, 5), [
            ("f", W.flatten), ("l", lambda s: W.linear(w, s, 7)), ("s", W.softmax)]),
        "linear-on-image-tensor": ((4, 3, 2), [("l", lambda s: W.linear(w, s, 5))]),
        "resize-transpose-softmax": ((3, 2, 3, 4), [
            ("r", lambda s: W.resize(s, (1, 2, 3))), ("t", lambda s: W.transpose(s, [4, 1, 2, 3])),
            ("s", W.softmax)]),
        "instance-norm": ((3, 5, 6), [("n", lambda s: W.instance_norm(w, s))]),
    }


@pytest.mark.parametrize("case", sorted(_zoo()))
def test_layer_zoo_matches_reference(tmp_path, case):
    in_shape, steps = _zoo()[case]  # fresh generator: weights do not depend on test order
    wl, model, _ = _roundtrip(tmp_path, _chain_net(in_shape, steps), case)
    diffs = _max_diff(model, wl, np.random.default_rng(13))
    print(case, diffs)
    assert max(diffs.values()) <= TOL


@pytest.mark.parametrize("indexed", [False, True], ids=["list-edge", "indexed-edges"])
def test_graph_with_catenate_total_and_transpose_rules(tmp_path, indexed):
    w = W.Weights(9)
    g = W.Graph({"A": (2, 4, 6), "B": (3, 4, 6)})
    g.add("cat", W.catenate([(2, 4, 6), (3, 4, 6)]), {"Input": [(None, "A"), (None, "B")]},
          indexed=indexed)
    g.add("conv", W.conv(w, (5, 4, 6), 5, 3, pad=1), {"Input": ("cat", "Output")})
    g.add("sum", W.total([(5, 4, 6)] * 2), {"Input": [("cat", "Output"), ("conv", "Output")]})
    swap = W._layer("Transpose", {"Specification": W.Call("ValidatedParameter", (
        [W.Call("TwoWayRule", (1, 3))],))}, {}, (5, 4, 6), (6, 4, 5))
    g.add("swap", swap, {"Input": ("sum", "Output")})
    g.add("times", W.threading([(5, 4, 6)] * 2, "Times"),
          {"Input": [("sum", "Output"), ("conv", "Output")]})
    g.output("Product", ("times", "Output"))
    g.output("Output", ("swap", "Output"))
    g.output("Other", ("conv", "Output"))
    wl, model, config = _roundtrip(tmp_path, g.build().assoc, "graph")
    rng = np.random.default_rng(4)
    inputs = random_inputs(wl.net, rng, 2)
    ref = run_net(wl.net, inputs)
    got = model.predict({k: to_keras_layout(v).astype(np.float32) for k, v in inputs.items()},
                        verbose=0)
    for port in ("Output", "Other", "Product"):
        assert np.max(np.abs(np.asarray(got[port]) - ref[port])) <= TOL
    assert [i["port"] for i in config["inputs"]] == ["A", "B"]


def _slot():
    return W.Call("Slot", (1,))


GELU_FUNCTION = W.Call("Function", (W.Call("Times", (0.5, _slot(), W.Call("Plus", (1, W.Call(
    "Erf", (W.Call("Times", (_slot(), W.Call("Power", (2, W.Call("Rational", (-1, 2)))))),)))))),))


@pytest.mark.parametrize("function, expected", [
    (GELU_FUNCTION, "gelu"),
    (W.Call("Function", (W.Call("Max", (0, _slot())),)), "relu"),
    (W.Sym("Ramp"), "relu"),
    ("ScaledExponentialLinearUnit", "selu"),
    (W.Call("Function", (W.Call("Times", (_slot(), W.Call("LogisticSigmoid", (_slot(),)))),)),
     "silu"),
    (W.Call("Function", (W.Call("Sin", (_slot(),)),)), None),
    (W.Call("Function", (W.Call("Times", (0.5, _slot())),)), None),
])
def test_identify_activation(tmp_path, function, expected):
    from legseg_tf.wlnet.expr import uncompress
    from legseg_tf.wlnet.translator import identify_activation

    assert identify_activation(uncompress(W.compress(function))) == expected


def test_unsupported_elementwise_function_is_refused(tmp_path):
    from legseg_tf.wlnet.translator import TranslationError, translate

    # Gamma is a Wolfram primitive without a Keras operation
    path = W.write_wlnet(tmp_path / "gamma.wlnet",
                         _chain_net((2, 3), [("a", lambda s: W.elementwise(s, "Gamma"))]))
    with pytest.raises(TranslationError, match=r"gamma\.wlnet.*node a.*Gamma"):
        translate(read_wlnet(path))


def test_dangling_branch_is_dropped(tmp_path):
    w = W.Weights(3)
    g = W.Graph({"Input": (2, 5)})
    g.add("used", W.conv(w, (2, 5), 3, 1), {"Input": (None, "Input")})
    g.add("unused", W.conv(w, (2, 5), 4, 1), {"Input": (None, "Input")})
    g.output("Output", ("used", "Output"))
    wl, model, config = _roundtrip(tmp_path, g.build().assoc, "dangling")
    assert [op["op"] for op in config["ops"]] == ["conv", "permute"]  # no "unused" conv
    assert max(_max_diff(model, wl, np.random.default_rng(2)).values()) <= TOL


def test_config_and_weights_file_rebuild_identically(tmp_path):
    from legseg_tf.wlnet.translator import build_from_config

    wl, model, config = _roundtrip(tmp_path, W.unet_net(UNET_CASES["A-instance"]))
    weights_path = tmp_path / "m.weights.h5"
    model.save_weights(weights_path)
    rebuilt = build_from_config(json.loads(json.dumps(config)))
    rebuilt.load_weights(weights_path)
    x = np.random.default_rng(0).standard_normal((1, 4, 8, 8, 1)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(x, verbose=0), rebuilt.predict(x, verbose=0))


def test_build_from_config_rejects_other_kinds():
    from legseg_tf.wlnet.translator import build_from_config

    with pytest.raises(ValueError, match="wlnet_graph"):
        build_from_config({"kind": "unet"})
