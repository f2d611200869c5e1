"""Both generations of Wolfram encodings, every QMRITools topology, against the numpy reference.

Encodings follow Wolfram's NeuralNetworks package sources (see tests/wlnet_writer.py):
multiport Total/Catenate/Threading with ports "1", "2", ... and one edge per port (files of
Wolfram >= 11.3.2; ``UpgradeToMultiport``, ``UpgradeGraphTupleEdges``) versus one list-valued
"Input" port fed by a tuple edge (11.1 - 11.3.1); elementwise functions stored as
``ScalarFunctionObject`` SSA programs (``CompileScalarFunction``); TransposeLayer Rules that
move a level (>= 11.3.2) or swap it (older files).
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from legseg_tf.wlnet.expr import Expr, Symbol
from legseg_tf.wlnet.reader import (
    UnknownLayerError, WlnetFormatError, iter_layers, layer_encoding, read_wlnet,
)
from tests import wlnet_writer as W
from tests.wlnet_reference import random_inputs, run_net, to_keras_layout

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
TOL = 1e-4


def _write(tmp_path, net, name, encoding="multiport"):
    return W.write_wlnet(tmp_path / f"{name}.wlnet", net, version=W.version_for(encoding))


def _check(model, wl, *, rules_move=True, batch=2, seed=7):
    inputs = random_inputs(wl.net, np.random.default_rng(seed), batch)
    ref = run_net(wl.net, inputs, rules_move=rules_move)
    feed = {k: to_keras_layout(v).astype(np.float32) for k, v in inputs.items()}
    got = model.predict(next(iter(feed.values())) if len(feed) == 1 else feed, verbose=0)
    if not isinstance(got, dict):
        got = {next(iter(ref)): got}
    worst = 0.0
    for port, want in ref.items():
        assert np.asarray(got[port]).shape == want.shape, port
        assert float(np.std(want)) > 1e-3, f"degenerate reference output on {port}"
        worst = max(worst, float(np.max(np.abs(np.asarray(got[port]) - want))))
    return worst


def _translate(path, **kw):
    from legseg_tf.wlnet.translator import translate

    wl = read_wlnet(path)
    model, config = translate(wl, **kw)
    return wl, model, config


TOPOLOGIES = {
    "unet-A": lambda enc: W.unet_net(W.UNetSpec(
        generation="A", encoding=enc, features=(4, 6, 8),
        downsample=((1, 1, 1), (2, 2, 2), (1, 2, 2)), input_size=(4, 8, 8))),
    "unet-B": lambda enc: W.unet_net(W.UNetSpec(
        generation="B", encoding=enc, features=(4, 6, 8), norm="instance")),
    "classifier": lambda enc: W.classifier_net(W.ClassifierSpec(
        encoding=enc, image_size=64, head=(16, 8))),
}


@pytest.mark.parametrize("encoding", W.ENCODINGS)
@pytest.mark.parametrize("topology", sorted(TOPOLOGIES))
def test_qmritools_topologies_in_both_encodings(tmp_path, topology, encoding):
    path = _write(tmp_path, TOPOLOGIES[topology](encoding), topology, encoding)
    wl, model, config = _translate(path)
    assert wl.version == W.version_for(encoding)
    encodings = {layer_encoding(layer) for layer in iter_layers(wl.net)} - {None}
    if topology != "classifier":
        want = "multiport, 2" if encoding == "multiport" else "list port, 2"
        assert want in encodings
    assert "GELU, ScalarFunctionObject" in encodings
    # GELU programs are recognised as Keras' exact gelu, not evaluated step by step
    assert {op["op"] for op in config["ops"]} >= {"activation"}
    assert "scalar_program" not in {op["op"] for op in config["ops"]}
    assert _check(model, wl, batch=3 if topology == "classifier" else 2) <= TOL


def test_multiport_edges_are_one_per_port(tmp_path):
    path = _write(tmp_path, TOPOLOGIES["unet-A"]("multiport"), "mp")
    wl = read_wlnet(path)
    dec = wl.net.nodes["dec_1"]
    cat = dec.nodes["cat"]
    assert list(cat.inputs) == ["1", "2"]
    ports = sorted((d.port, s.port) for d, (s,) in
                   ((d, s) for d, s in dec.edges if d.node == "cat"))
    assert ports == [("1", "Skip"), ("2", "Scale")]  # skip first, as QMRITools catenates
    legacy = read_wlnet(_write(tmp_path, TOPOLOGIES["unet-A"]("legacy"), "lg", "legacy"))
    lcat = legacy.net.nodes["dec_1"].nodes["cat"]
    assert list(lcat.inputs) == ["Input"] and len(lcat.inputs["Input"]) == 2
    (edge,) = [e for e in legacy.net.nodes["dec_1"].edges if e[0].node == "cat"]
    assert [s.port for s in edge[1]] == ["Skip", "Scale"]


PROGRAM_CHAIN = ["GELU", "ELU", "SELU", "SoftPlus", "SoftSign", "HardSigmoid", "Swish",
                 "ReLU", "Tanh", "Sin"]


@pytest.mark.parametrize("encoding", W.ENCODINGS)
def test_elementwise_programs(tmp_path, encoding):
    w = W.Weights(3)
    # 0.3 #1 + Clip[#1, {-1, 1}] and If[#1 > 0.5, #1^2, Exp[#1] - 1]: no Keras activation
    custom1 = W.Call("ValidatedParameter", (W.scalar_function(
        [("Times", 0.3, 1), ("Clip", 1, [-1.0, 1.0]), ("Plus", 2, 3)]),))
    custom2 = W.Call("ValidatedParameter", (W.scalar_function(
        [("Greater", 1, 0.5), ("Power", 1, 2.0), ("Exp", 1), ("Subtract", 4, 1.0),
         ("If", 2, 3, 5)]),))
    steps = []
    for k, name in enumerate(PROGRAM_CHAIN):
        steps.append((f"a{k}", lambda s, n=name: W.elementwise(s, n, encoding)))
        steps.append((f"c{k}", lambda s: W.conv(w, s, 3, 1)))
    steps.append(("custom1", lambda s: W.elementwise(s, custom1)))
    steps.append(("custom2", lambda s: W.elementwise(s, custom2)))
    path = _write(tmp_path, W.chain((3, 5, 4), steps).assoc, "acts", encoding)
    wl, model, config = _translate(path)
    kinds = {op["name"]: op for op in config["ops"]}
    assert kinds["a0"]["config"] == {"activation": "gelu"}
    assert kinds["a1"]["config"] == {"activation": "elu"}
    assert kinds["a6"]["config"] == {"activation": "silu"}
    assert kinds["a7"]["config"] == {"activation": "relu"}
    assert kinds["custom1"]["op"] == "scalar_program"
    assert kinds["custom2"]["op"] == "scalar_program"
    assert kinds["a9"]["op"] == "scalar_program"  # Sin: a primitive without a Keras activation
    assert _check(model, wl) <= TOL
    rl = [layer_encoding(layer) for layer in iter_layers(wl.net) if layer.type == "Elementwise"]
    assert rl[0] == "GELU, ScalarFunctionObject" and rl[8] == "symbol Tanh"
    assert rl[7] == ("symbol Ramp" if encoding == "multiport" else "ReLU, ScalarFunctionObject")
    assert rl[10] == "ScalarFunctionObject"  # custom1: no known activation


def test_unknown_program_operation_is_a_clear_error(tmp_path):
    from legseg_tf.wlnet.translator import TranslationError

    zeta = W.Call("ValidatedParameter", (W.scalar_function([("Zeta", 1), ("Plus", 2, 1.0)]),))
    path = _write(tmp_path, W.chain((2, 3), [("z", lambda s: W.elementwise(s, zeta))]).assoc,
                  "zeta")
    with pytest.raises(TranslationError, match=r"zeta\.wlnet: node z .*Zeta is not supported"):
        _translate(path)


@pytest.mark.parametrize("encoding", W.ENCODINGS)
def test_threading_functions(tmp_path, encoding):
    w = W.Weights(4)
    # #1 + Ramp[#2] * 0.5 (a two-argument ScalarFunctionObject) and Max
    prog = W.Call("ValidatedParameter", (W.scalar_function(
        [("Ramp", 2), ("Times", 0.5, 3), ("Plus", 1, 4)], n_inputs=2),))
    g = W.Graph({"A": (2, 4, 5), "B": (2, 4, 5)})
    g.add("c", W.conv(w, (2, 4, 5), 2, 3, pad=1), {"Input": (None, "B")})
    g.add("t", W.threading([(2, 4, 5)] * 2, prog, encoding),
          {"Input": [(None, "A"), ("c", "Output")]})
    g.add("m", W.threading([(2, 4, 5)] * 3, "Max", encoding),
          {"Input": [(None, "A"), ("c", "Output"), ("t", "Output")]})
    g.output("Output", ("m", "Output"))
    wl, model, config = _translate(_write(tmp_path, g.build().assoc, "thr", encoding))
    assert [op["op"] for op in config["ops"] if op["name"] in ("t", "m")] == [
        "scalar_program", "maximum"]
    assert _check(model, wl) <= TOL


@pytest.mark.parametrize("rules, head, moves, out_shape", [
    ([(2, 4)], "Rule", True, (2, 4, 5, 3)),           # move: (1,2,3,4) -> (1,3,4,2)
    ([(2, 4)], "TwoWayRule", True, (2, 5, 4, 3)),     # swap
    ([(2, 4)], "Rule", False, (2, 5, 4, 3)),          # a Rule in a pre-11.3.2 file swaps
    ([(1, 3), (4, 1)], "Rule", True, (5, 3, 2, 4)),   # others keep their order
])
def test_transpose_rules(tmp_path, rules, head, moves, out_shape):
    built = W.transpose_rules((2, 3, 4, 5), rules, head, moves)
    assert tuple(built.out_shape) == out_shape
    version = W.VERSION if moves else W.LEGACY_VERSION
    path = W.write_wlnet(tmp_path / "t.wlnet", W.chain((2, 3, 4, 5), [
        ("t", lambda s: built), ("s", W.softmax)]).assoc, version=version)
    wl, model, _ = _translate(path)
    enc = layer_encoding(wl.net.nodes["t"])
    assert enc.startswith("rule" if head == "Rule" else "swap")
    assert _check(model, wl, rules_move=moves) <= TOL


def test_transpose_axes_semantics():
    from legseg_tf.wlnet.translator import transpose_axes

    rule = lambda a, b: Expr(Symbol("Rule"), (a, b))  # noqa: E731
    swap = lambda a, b: Expr(Symbol("TwoWayRule"), (a, b))  # noqa: E731
    assert transpose_axes([rule(2, 4)], 4) == [0, 2, 3, 1]
    assert transpose_axes([rule(2, 4)], 4, rules_move=False) == [0, 3, 2, 1]
    assert transpose_axes([swap(2, 4)], 4) == [0, 3, 2, 1]
    assert transpose_axes([4, 1, 2, 3], 4) == [1, 2, 3, 0]
    assert transpose_axes([rule(1, 2), rule(3, 2)], 4) is None   # two levels to one place
    assert transpose_axes([rule(1, 2), swap(3, 4)], 4) is None    # mixed forms


def test_rule_transpose_without_version_is_refused(tmp_path):
    import h5py

    from legseg_tf.wlnet.translator import TranslationError

    path = W.write_wlnet(tmp_path / "nov.wlnet", W.chain((2, 3, 4), [
        ("t", lambda s: W.transpose_rules(s, [(1, 3)], "Rule"))]).assoc)
    with h5py.File(path, "r+") as h5:
        del h5["Version"]
    with pytest.raises(TranslationError, match="version"):
        _translate(path)


# ------------------------------------------------------------ arrays and options checks ----

def _linear_net(w, transposed=False):
    net = W.chain((6,), [("l", lambda s: W.linear(w, s, 4))]).assoc
    if transposed:
        ref = net["Nodes"]["l"]["Arrays"]["Weights"]
        ref.data = np.ascontiguousarray(ref.data.T)
    return net


def test_transposed_linear_weights_are_refused(tmp_path):
    path = W.write_wlnet(tmp_path / "lin.wlnet", _linear_net(W.Weights(1), transposed=True))
    with pytest.raises(WlnetFormatError, match=r"node l: array 'Weights' .* shape \[6, 4\], "
                                               r"the layer needs 4x6"):
        read_wlnet(path)


def test_conv_weights_of_wrong_kernel_are_refused(tmp_path):
    w = W.Weights(1)
    net = W.chain((2, 5, 5), [("c", lambda s: W.conv(w, s, 3, 3, pad=1))]).assoc
    net["Nodes"]["c"]["Parameters"]["KernelSize"] = [3, 2]
    with pytest.raises(WlnetFormatError, match="the layer needs 3x2x3x2"):
        read_wlnet(W.write_wlnet(tmp_path / "k.wlnet", net))


@pytest.mark.parametrize("name", ["Mean", "Variance", "Gamma2"])
def test_unknown_normalisation_array_names_are_refused(tmp_path, name):
    w = W.Weights(1)
    net = W.chain((2, 4, 4), [("b", lambda s: W.batch_norm(w, s))]).assoc
    arrays = net["Nodes"]["b"]["Arrays"]
    arrays[name] = arrays.pop("MovingMean")
    with pytest.raises(UnknownLayerError, match=rf"node b: BatchNormalization layer has an "
                                                rf"unknown array '{name}'"):
        read_wlnet(W.write_wlnet(tmp_path / "bn.wlnet", net))


@pytest.mark.parametrize("layer, key, value, match", [
    ("c", "PaddingMode", "Reflected", "option PaddingMode"),
    ("n", "GroupNumber", [8, 1, 1, 1], "group normalisation"),
    ("c", "Interleaving", True, "Interleaving"),
])
def test_options_that_change_results_are_refused(tmp_path, layer, key, value, match):
    from legseg_tf.wlnet.translator import TranslationError

    w = W.Weights(1)
    net = W.chain((2, 4, 4), [("c", lambda s: W.conv(w, s, 8, 3, pad=1)),
                              ("n", lambda s: W.instance_norm(w, s))]).assoc
    net["Nodes"][layer]["Parameters"][key] = value
    with pytest.raises(TranslationError, match=match):
        _translate(W.write_wlnet(tmp_path / "opt.wlnet", net))


def test_instance_norm_arrays_must_be_per_channel(tmp_path):
    from legseg_tf.wlnet.translator import TranslationError

    w = W.Weights(1)
    net = W.chain((3, 4, 4), [("n", lambda s: W.instance_norm(w, s))]).assoc
    net["Nodes"]["n"]["Arrays"]["Scaling"] = W.ArrayRef(np.ones((3, 4)))
    with pytest.raises(TranslationError, match=r"node n .*scaling of shape \[3, 4\], need \[3\]"):
        _translate(W.write_wlnet(tmp_path / "in.wlnet", net))
