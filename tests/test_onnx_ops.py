"""ONNX operators -> Keras: each translated net matches ONNX Runtime (the independent reference)
to 1e-4 on random inputs; what cannot be translated exactly is refused in one line."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from legseg_tf.onnxnet.graph import OnnxImportError
from tests import onnx_builder as B

RNG = np.random.default_rng(7)
TOL = 1e-4


def f32(*shape, scale=1.0):
    return (scale * RNG.standard_normal(shape)).astype(np.float32)


def node(op, inputs, outputs=("y",), name=None, **attrs):
    return helper.make_node(op, list(inputs), list(outputs), name=name or f"n_{op}", **attrs)


X5 = [2, 3, 4, 8, 8]   # (N, C, z, y, x)
X4 = [2, 4, 8, 8]      # (N, C, y, x)

CASES = {
    "conv3d_pads_strides": ([node("Conv", "xw", pads=[1, 0, 1, 0, 2, 1], strides=[1, 2, 2])],
                            {"x": X5}, {"w": f32(5, 3, 3, 3, 3)}),
    "conv3d_dilated_same": ([node("Conv", "xwb", pads=[2] * 6, dilations=[2, 2, 2])],
                            {"x": X5}, {"w": f32(4, 3, 3, 3, 3), "b": f32(4)}),
    "conv2d_groups": ([node("Conv", "xwb", group=2, pads=[1, 1, 1, 1])], {"x": X4},
                      {"w": f32(6, 2, 3, 3), "b": f32(6)}),
    "conv2d_same_upper_stride2": ([node("Conv", "xw", auto_pad="SAME_UPPER", strides=[2, 2])],
                                  {"x": [2, 4, 7, 9]}, {"w": f32(3, 4, 3, 3)}),
    "conv2d_same_lower": ([node("Conv", "xw", auto_pad="SAME_LOWER", kernel_shape=[2, 2])],
                          {"x": X4}, {"w": f32(3, 4, 2, 2)}),
    "conv_transpose3d": ([node("ConvTranspose", "xwb", strides=[1, 2, 2])], {"x": X5},
                         {"w": f32(3, 2, 1, 2, 2), "b": f32(2)}),
    "conv_transpose2d_pads": ([node("ConvTranspose", "xw", strides=[2, 2], pads=[1, 1, 1, 1],
                                    output_padding=[1, 1])], {"x": X4},
                              {"w": f32(4, 3, 3, 3)}),
    "batch_norm": ([node("BatchNormalization", ["x", "g", "b", "m", "v"], epsilon=1e-3)],
                   {"x": X5}, {"g": f32(3), "b": f32(3), "m": f32(3),
                               "v": np.abs(f32(3)) + 0.5}),
    "instance_norm": ([node("InstanceNormalization", ["x", "g", "b"], epsilon=1e-3)],
                      {"x": X5}, {"g": f32(3), "b": f32(3)}),
    "relu_sigmoid_tanh": ([node("Relu", "x", ["r"]), node("Sigmoid", "r", ["s"], name="s"),
                           node("Tanh", "s", name="t")], {"x": X4}, {}),
    "elu_alpha": ([node("Elu", "x", alpha=0.5)], {"x": X4}, {}),
    "elu_selu_softplus": ([node("Elu", "x", ["e"]), node("Selu", "e", ["s"], name="s"),
                           node("Softplus", "s", name="p")], {"x": X4}, {}),
    "leaky_relu": ([node("LeakyRelu", "x", alpha=0.2)], {"x": X5}, {}),
    "prelu_per_channel": ([node("PRelu", "xs")], {"x": X5}, {"s": f32(3, 1, 1, 1)}),
    "swish_mul_sigmoid": ([node("Sigmoid", "x", ["s"]), node("Mul", "xs", name="m")],
                          {"x": X4}, {}),
    "arithmetic_generic": ([node("Mul", "xc", ["a"]), node("Erf", "a", ["e"], name="e"),
                            node("Sub", "ke", ["d"], name="d"), node("Add", "dx", name="s")],
                           {"x": X4}, {"c": f32(4, 1, 1), "k": np.float32(2.0)}),
    "div_pow_max_min": ([node("Div", "xc", ["a"]), node("Pow", "ap", ["b"], name="p"),
                         node("Max", "bx", ["m"], name="mx"), node("Min", "mx", name="mn")],
                        {"x": X4}, {"c": np.float32(3.0), "p": np.float32(2.0)}),
    "broadcast_tensor_mul": ([node("AveragePool", "x", ["g"], kernel_shape=[8, 8]),
                              node("Mul", "xg", name="m")], {"x": X4}, {}),
    "sum_three": ([node("Relu", "x", ["a"]), node("Sigmoid", "x", ["b"], name="s"),
                   node("Sum", "xab", name="sum")], {"x": X4}, {}),
    "concat_channels_and_space": ([node("Concat", "xz", ["c"], axis=1),
                                   node("Concat", "cc", axis=3, name="c2")],
                                  {"x": X4, "z": X4}, {}),
    "resize_nearest_half_pixel": ([node("Resize", ["x", "", "s"], mode="nearest")], {"x": X5},
                                  {"s": np.asarray([1, 1, 1, 2, 3], np.float32)}),
    "resize_asymmetric_floor": ([node("Resize", ["x", "", "s"], mode="nearest",
                                      coordinate_transformation_mode="asymmetric",
                                      nearest_mode="floor")], {"x": X5},
                                {"s": np.asarray([1, 1, 2, 2, 2], np.float32)}),
    "resize_sizes": ([node("Resize", ["x", "", "", "s"], mode="nearest")], {"x": X4},
                     {"s": np.asarray([2, 4, 16, 24], np.int64)}),
    "maxpool_same_stride1": ([node("MaxPool", "x", kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
                             {"x": X4}, {}),
    "avgpool_count_pad": ([node("AveragePool", "x", kernel_shape=[2, 2], strides=[2, 2],
                                pads=[1, 1, 1, 1], count_include_pad=1)], {"x": X4}, {}),
    "avgpool_same_upper": ([node("AveragePool", "x", kernel_shape=[3, 3, 3], strides=[2, 2, 2],
                                 auto_pad="SAME_UPPER")], {"x": X5}, {}),
    "transpose_then_conv": ([node("Transpose", "x", ["t"], perm=[0, 1, 3, 2]),
                             node("Conv", "tw", name="c")], {"x": [2, 4, 6, 8]},
                            {"w": f32(3, 4, 3, 1)}),
    "reshape_flatten_gemm": ([node("Reshape", "xs", ["r"]), node("Flatten", "r", ["f"],
                                                                 name="f"),
                              node("Gemm", "fwb", alpha=0.5, beta=2.0, transB=1, name="g")],
                             {"x": X4}, {"s": np.asarray([0, 8, -1], np.int64),
                                         "w": f32(5, 256), "b": f32(5)}),
    "matmul_add_softmax": ([node("Flatten", "x", ["f"]), node("MatMul", "fw", ["m"], name="mm"),
                            node("Add", "mb", ["a"], name="a"),
                            node("Softmax", "a", name="sm")],
                           {"x": X4}, {"w": f32(256, 6), "b": f32(6)}),
    "softmax_channel_axis": ([node("Softmax", "x", axis=1)], {"x": X5}, {}),
    "identity_dropout": ([node("Identity", "x", ["i"]), node("Dropout", "i", name="d")],
                         {"x": X4}, {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_operator_matches_onnxruntime(tmp_path, case):
    nodes, inputs, inits = CASES[case]
    path = B.save(B.small_model(nodes, inputs, inits), tmp_path / f"{case}.onnx")
    feeds = {k: f32(*v) for k, v in inputs.items()}
    diff, _ = B.compare(path, feeds)
    assert diff <= TOL, f"{case}: max abs diff {diff:.3g}"


def test_old_opsets_upsample_and_softmax(tmp_path):
    nodes = [node("Upsample", "xs")]
    model = B.small_model(nodes, {"x": [2, 3, 4, 4]},
                          {"s": np.asarray([1, 1, 2, 2], np.float32)}, opset=9)
    nodes2 = [node("Flatten", "x", ["f"]), node("Softmax", "f", axis=1, name="sm")]
    model2 = B.small_model(nodes2, {"x": [2, 3, 4, 4]}, {}, opset=11)
    for k, m in enumerate((model, model2)):
        path = B.save(m, tmp_path / f"old{k}.onnx")
        diff, _ = B.compare(path, {"x": f32(2, 3, 4, 4)})
        assert diff <= TOL


def test_gelu_forms_become_one_activation(tmp_path):
    """Erf arithmetic (any order), a Gelu node and x*Sigmoid(x) are one Keras activation."""
    for export in (B.Export(gelu="erf_div"), B.Export(gelu="erf_mul"),
                   B.Export(gelu="node", opset=20)):
        b = B.GraphBuilder(export, B.Params(0))
        b.channels["x"] = 3
        b.gelu("x", "g")
        model = b.model({"x": [3, 4, 4]}, ["g"])
        path = B.save(model, tmp_path / f"{export.gelu}.onnx")
        diff, config = B.compare(path, {"x": f32(2, 3, 4, 4, scale=3.0)})
        assert diff <= TOL
        # one activation (and the permute back to the file's channels-first output)
        assert [op["op"] for op in config["ops"]] == ["activation", "permute"]
        assert config["ops"][0]["config"] == {"activation": "gelu"}
    path = B.save(B.small_model(CASES["swish_mul_sigmoid"][0], {"x": X4}, {}),
                  tmp_path / "swish.onnx")
    _, config = B.translate_file(path)
    assert [op["config"].get("activation") for op in config["ops"]] == ["silu", None]  # permute


def test_gelu_tanh_node(tmp_path):
    model = B.small_model([node("Gelu", "x", approximate="tanh")], {"x": X4}, {}, opset=20)
    diff, _ = B.compare(B.save(model, tmp_path / "g.onnx"), {"x": f32(*X4, scale=3.0)})
    assert diff <= TOL


def test_external_data_and_symbolic_batch(tmp_path):
    model = B.small_model([node("Conv", "xw", pads=[1, 1, 1, 1])], {"x": ["N", 4, 8, 8]},
                          {"w": f32(16, 4, 3, 3)})
    path = B.save(model, tmp_path / "ext.onnx", external=True)
    assert (tmp_path / "ext.data").is_file()
    diff, _ = B.compare(path, {"x": f32(5, 4, 8, 8)})
    assert diff <= TOL


# ------------------------------------------------------------------------------- refusals ----

def _error(tmp_path, nodes, inputs, inits, opset=17, free=False) -> str:
    path = B.save(B.small_model(nodes, inputs, inits, opset=opset), tmp_path / "bad.onnx")
    with pytest.raises(OnnxImportError) as info:
        B.translate_file(path, free)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_operator_names_node_and_operator(tmp_path):
    message = _error(tmp_path, [node("LRN", "x", name="enc_1/lrn", size=3)], {"x": X4}, {})
    assert "'enc_1/lrn' (LRN)" in message and "no Keras translation" in message


@pytest.mark.parametrize("nodes, inputs, inits, opset, expected", [
    ([node("Resize", ["x", "", "s"], mode="linear")], {"x": X4},
     {"s": np.asarray([1, 1, 2, 2], np.float32)}, 17, "mode 'linear'"),
    ([node("Resize", ["x", "", "s"], mode="nearest",
           coordinate_transformation_mode="align_corners")], {"x": X4},
     {"s": np.asarray([1, 1, 2, 2], np.float32)}, 17, "does not repeat pixels"),
    ([node("Resize", ["x", "", "s"], mode="nearest")], {"x": X4},
     {"s": np.asarray([1, 1, 0.5, 0.5], np.float32)}, 17, "integer up-sampling"),
    ([node("MaxPool", "x", kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1])], {"x": X4},
     {}, 17, "pads"),
    ([node("AveragePool", "x", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)],
     {"x": X4}, {}, 17, "ceil_mode"),
    ([node("Softmax", "x", axis=1)], {"x": X4}, {}, 11, "several axes"),
    ([node("Transpose", "x", perm=[1, 0, 2, 3])], {"x": X4}, {}, 17, "batch axis"),
    ([node("Flatten", "x", axis=2)], {"x": X4}, {}, 17, "batch axis"),
    ([node("Conv", "xw", strides=[2, 2], dilations=[2, 2])], {"x": X4},
     {"w": f32(3, 4, 3, 3)}, 17, "dilation"),
    ([node("Conv", "xw", auto_pad="SAME_LOWER", strides=[2, 2])], {"x": X4},
     {"w": f32(3, 4, 3, 3)}, 17, "auto_pad"),
    ([node("Conv", ["x", "w2"])], {"x": X4, "w2": [3, 4, 3, 3]}, {}, 17, "must be a constant"),
], ids=["resize_linear", "align_corners", "downscale", "maxpool_pads", "ceil_mode",
        "softmax_opset11", "transpose_batch", "flatten_axis2", "stride_dilation", "same_lower",
        "computed_weights"])
def test_inexact_constructs_are_refused(tmp_path, nodes, inputs, inits, opset, expected):
    message = _error(tmp_path, nodes, inputs, inits, opset)
    assert expected in message, message
    assert f"({nodes[-1].op_type})" in message


def test_bad_files_are_refused_in_one_line(tmp_path):
    good = B.small_model([node("Conv", "xw")], {"x": X4}, {"w": f32(3, 4, 3, 3)})
    data = good.SerializeToString()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    wrong = B.small_model([node("Conv", "xw")], {"x": X4}, {"w": f32(3, 4, 3, 3)})
    wrong.graph.initializer[0].CopyFrom(
        __import__("onnx").numpy_helper.from_array(f32(3, 5, 3, 3), "w"))
    B.save(wrong, tmp_path / "wrong.onnx")
    foreign = B.small_model([node("Conv", "xw")], {"x": X4}, {"w": f32(3, 4, 3, 3)})
    foreign.graph.node.append(helper.make_node("FusedGemm", ["y"], ["z"], name="fg",
                                               domain="com.microsoft"))
    foreign.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    B.save(foreign, tmp_path / "foreign.onnx")
    (tmp_path / "garbage.onnx").write_bytes(b"\x00\x01not a model" * 10)
    for name, expected in (("truncated", "truncated"), ("wrong", "do not fit weights"),
                           ("foreign", "com.microsoft"), ("garbage", "ONNX")):
        with pytest.raises(OnnxImportError) as info:
            B.translate_file(tmp_path / f"{name}.onnx")
        message = str(info.value)
        assert "\n" not in message and expected in message, (name, message)
        assert str(tmp_path / f"{name}.onnx") in message


def test_conv_with_wrong_weights_for_the_channels_is_refused(tmp_path):
    # the checker cannot see it when shape inference has no input channels to compare
    message = _error(tmp_path, [node("Conv", "xw", name="c1")], {"x": [2, 4, 8, 8]},
                     {"w": f32(3, 2, 3, 3)})
    assert "'c1' (Conv)" in message
