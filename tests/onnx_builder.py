"""TEST-ONLY builder of ONNX graphs in the QMRITools topologies (``onnx.helper``).

Builds what ``Export[net, "file.onnx"]`` of a QMRITools net plausibly holds, following
Wolfram's ONNX format page (reference.wolfram.com/language/ref/format/ONNX.html): export
writes standard opsets 9 to 18 (option "OperatorSetVersion"), graph inputs and outputs keep
the net's port names, the model description goes into the doc string, and large arrays may
be written to external files ("ExternalArrays"). How each layer is lowered is not
documented, so the operator patterns are selectable (:class:`Export`) and cover the usual
lowerings: ConvolutionLayer -> Conv with explicit pads; BatchNormalizationLayer ->
BatchNormalization; NormalizationLayer -> InstanceNormalization; ElementwiseLayer GELU ->
Erf arithmetic (opsets < 20 have no Gelu) or a Gelu node; ResizeLayer -> Resize (opset >= 11)
or Upsample (opset 9); Catenate -> Concat; Total -> Add or Sum; DropoutLayer -> Dropout or
Identity; TransposeLayer -> Transpose; SoftmaxLayer -> Softmax; PoolingLayer -> MaxPool;
FlattenLayer -> Flatten or Reshape; LinearLayer -> Gemm (transB) or MatMul + Add.

Node names are the Wolfram layer paths (``enc_1/block/con/1``), which the translator turns
into the Keras layer names of :mod:`legseg_tf.networks` (``enc_1__block__con__1``), so the
weights can be random (seeded) or taken from a native Keras model (:class:`Params`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


@dataclass(frozen=True)
class Export:
    """Operator patterns of one exporter setting."""

    opset: int = 17
    gelu: str = "erf_div"       # "erf_div" | "erf_mul" | "node" (Gelu, opset >= 20)
    resize: str = "resize"      # "resize" | "upsample" (opset 9)
    total: str = "add"          # "add" | "sum"
    linear: str = "gemm"        # "gemm" | "matmul"
    dropout: str = "dropout"    # "dropout" | "identity" | "none"
    flatten: str = "flatten"    # "flatten" | "reshape"
    batch: int | None = None    # None: symbolic batch dimension "N"


class Params:
    """Layer weights by Wolfram path: random (seeded) or from a native Keras model."""

    def __init__(self, seed: int = 0, keras_model=None) -> None:
        self.rng = np.random.default_rng(seed)
        self.model = keras_model

    def _layer(self, path: str):
        return self.model.get_layer(path.replace("/", "__"))

    def conv(self, path: str, out_ch: int, in_ch: int, kernel: tuple[int, ...]):
        if self.model is not None:
            kernel_arr, bias = self._layer(path).get_weights()
            n = kernel_arr.ndim - 2
            w = np.transpose(kernel_arr, (n + 1, n) + tuple(range(n)))
            assert w.shape == (out_ch, in_ch, *kernel), (path, w.shape)
            return w, bias
        fan_in = in_ch * int(np.prod(kernel))
        w = self.rng.standard_normal((out_ch, in_ch, *kernel)) * math.sqrt(1.0 / fan_in)
        return w.astype(np.float32), (0.1 * self.rng.standard_normal(out_ch)).astype(np.float32)

    def norm(self, path: str, ch: int, kind: str):
        if self.model is not None:
            return self._layer(path).get_weights()
        gamma = self.rng.uniform(0.5, 1.5, ch)
        beta = 0.1 * self.rng.standard_normal(ch)
        if kind == "instance":
            return [gamma.astype(np.float32), beta.astype(np.float32)]
        mean = 0.1 * self.rng.standard_normal(ch)
        var = self.rng.uniform(0.5, 1.5, ch)
        return [a.astype(np.float32) for a in (gamma, beta, mean, var)]

    def dense(self, path: str, n_in: int, n_out: int):
        """(W of shape (out, in) as Wolfram stores it, bias)."""
        if self.model is not None:
            kernel, bias = self._layer(path).get_weights()
            return kernel.T, bias
        w = self.rng.standard_normal((n_out, n_in)) * math.sqrt(1.0 / n_in)
        return w.astype(np.float32), (0.1 * self.rng.standard_normal(n_out)).astype(np.float32)


class GraphBuilder:
    """Appends nodes named by Wolfram paths; tensor names are the node names."""

    def __init__(self, export: Export, params: Params) -> None:
        self.export = export
        self.params = params
        self.nodes: list = []
        self.inits: list = []
        self.channels: dict[str, int] = {}
        self.names: set[str] = set()

    def const(self, value, name: str) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, channels: int | None = None,
             n_out: int = 1, **attrs) -> str:
        assert name not in self.names, name
        self.names.add(name)
        outputs = [name] + [f"{name}:{k}" for k in range(1, n_out)]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, **attrs))
        if channels is not None:
            self.channels[name] = channels
        elif inputs and inputs[0] in self.channels:
            self.channels[name] = self.channels[inputs[0]]
        return name

    # -- layers ------------------------------------------------------------------------------
    def conv(self, x: str, path: str, out_ch: int, kernel, *, strides=None, pads=None) -> str:
        kernel = tuple(kernel)
        dims = len(kernel)
        pads = pads or [(0, 0)] * dims
        w, b = self.params.conv(path, out_ch, self.channels[x], kernel)
        attrs = {"kernel_shape": list(kernel),
                 "pads": [p[0] for p in pads] + [p[1] for p in pads]}
        if strides is not None:
            attrs["strides"] = list(strides)
        return self.node("Conv", [x, self.const(w, f"{path}/Weights"),
                                  self.const(b, f"{path}/Biases")], path, out_ch, **attrs)

    def norm(self, x: str, path: str, kind: str, epsilon: float = 1e-3) -> str:
        arrays = self.params.norm(path, self.channels[x], kind)
        names = [self.const(a, f"{path}/{k}") for a, k in
                 zip(arrays, ("Scaling", "Biases", "MovingMean", "MovingVariance"))]
        if kind == "instance":
            return self.node("InstanceNormalization", [x] + names, path, epsilon=epsilon)
        return self.node("BatchNormalization", [x] + names, path, epsilon=epsilon)

    def gelu(self, x: str, path: str) -> str:
        form = self.export.gelu
        if form == "node":
            return self.node("Gelu", [x], path)
        if form == "erf_div":
            t = self.node("Div", [x, self.const(np.float32(math.sqrt(2.0)), f"{path}/sqrt2")],
                          f"{path}/div")
            e = self.node("Erf", [t], f"{path}/erf")
            a = self.node("Add", [e, self.const(np.float32(1.0), f"{path}/one")],
                          f"{path}/add")
            m = self.node("Mul", [x, a], f"{path}/mul")
            return self.node("Mul", [m, self.const(np.float32(0.5), f"{path}/half")], path)
        if form == "erf_mul":
            h = self.node("Mul", [x, self.const(np.full((1,), 0.5, np.float32),
                                                f"{path}/half")], f"{path}/half_x")
            t = self.node("Mul", [x, self.const(np.float32(1 / math.sqrt(2.0)),
                                                f"{path}/rsqrt2")], f"{path}/scaled")
            e = self.node("Erf", [t], f"{path}/erf")
            a = self.node("Add", [self.const(np.float32(1.0), f"{path}/one"), e],
                          f"{path}/add")
            return self.node("Mul", [h, a], path)
        raise ValueError(form)

    def total(self, a: str, b: str, path: str) -> str:
        return self.node("Sum" if self.export.total == "sum" else "Add", [a, b], path)

    def dropout(self, x: str, path: str, rate: float) -> str:
        if rate <= 0 or self.export.dropout == "none":
            return x
        if self.export.dropout == "identity":
            return self.node("Identity", [x], path)
        if self.export.opset >= 12:
            return self.node("Dropout", [x, self.const(np.float32(rate), f"{path}/ratio")],
                             path)
        return self.node("Dropout", [x], path, ratio=rate)

    def resize(self, x: str, path: str, factors) -> str:
        scales = np.asarray([1, 1, *factors], np.float32)
        if self.export.resize == "upsample":
            return self.node("Upsample", [x, self.const(scales, f"{path}/scales")], path,
                             mode="nearest")
        roi = self.const(np.zeros(0, np.float32), f"{path}/roi")
        return self.node("Resize", [x, roi, self.const(scales, f"{path}/scales")], path,
                         mode="nearest")

    def concat(self, xs: list[str], path: str) -> str:
        return self.node("Concat", xs, path, sum(self.channels[x] for x in xs), axis=1)

    def maxpool(self, x: str, path: str, k: int) -> str:
        return self.node("MaxPool", [x], path, kernel_shape=[k, k], strides=[k, k])

    def flatten(self, x: str, path: str, features: int) -> str:
        if self.export.flatten == "reshape":
            shape = self.const(np.asarray([-1 if self.export.batch is None else
                                           self.export.batch, features], np.int64),
                               f"{path}/shape")
            return self.node("Reshape", [x, shape], path, features)
        return self.node("Flatten", [x], path, features, axis=1)

    def linear(self, x: str, path: str, n_out: int) -> str:
        w, b = self.params.dense(path, self.channels[x], n_out)
        if self.export.linear == "matmul":
            m = self.node("MatMul", [x, self.const(w.T.copy(), f"{path}/Weights")],
                          f"{path}/matmul", n_out)
            return self.node("Add", [m, self.const(b, f"{path}/Biases")], path)
        return self.node("Gemm", [x, self.const(w, f"{path}/Weights"),
                                  self.const(b, f"{path}/Biases")], path, n_out, transB=1)

    def softmax(self, x: str, path: str, rank: int) -> str:
        axis = -1 if self.export.opset >= 13 else rank - 1
        return self.node("Softmax", [x], path, axis=axis)

    # -- model -------------------------------------------------------------------------------
    def model(self, inputs: dict[str, list], outputs: list[str],
              metadata: dict[str, str] | None = None, doc: str = "") -> onnx.ModelProto:
        batch = self.export.batch if self.export.batch is not None else "N"
        graph = helper.make_graph(
            self.nodes, "net",
            [helper.make_tensor_value_info(k, TensorProto.FLOAT, [batch, *v])
             for k, v in inputs.items()],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
            self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("",
                                                                            self.export.opset)],
                                  producer_name="Wolfram Language", producer_version="14.3",
                                  doc_string=doc, ir_version=8)
        inferred = onnx.shape_inference.infer_shapes(model)
        shapes = {o.name: o for o in inferred.graph.output}
        del model.graph.output[:]
        model.graph.output.extend(shapes[o] for o in outputs)
        for key, value in (metadata or {}).items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(model)
        return model


# ---------------------------------------------------------------- QMRITools topologies ----

@dataclass(frozen=True)
class UNetSpec:
    """A QMRITools UNET (spatial axes z, y, x)."""

    generation: str = "B"
    n_classes: int = 3
    features: tuple[int, ...] = (4, 8, 12)
    downsample: tuple[tuple[int, ...], ...] = ((2, 2, 2), (1, 2, 2), (1, 1, 1))
    input_size: tuple[int, ...] = (4, 16, 16)
    norm: str = "batch"
    dropout: float = 0.2


#: The documented widths (website, pages/seg_methods.md; QMRITools ``MakeUnet``).
DOCUMENTED = UNetSpec(generation="B", n_classes=22, features=(32, 64, 128, 192, 320),
                      downsample=((2, 2, 2), (1, 2, 2), (2, 2, 2), (1, 2, 2), (1, 1, 1)),
                      input_size=(8, 32, 32))


def _resnet_block(b: GraphBuilder, x: str, node: str, feat: int, spec: UNetSpec) -> str:
    k3 = (3,) * len(spec.input_size)
    k1 = (1,) * len(spec.input_size)
    same = [(1, 1)] * len(spec.input_size)
    p = f"{node}/block"
    h = b.conv(x, f"{p}/con/1", round(feat / 2), k3, pads=same)
    h = b.gelu(b.norm(h, f"{p}/con/2", spec.norm), f"{p}/con/3")
    h = b.norm(b.conv(h, f"{p}/con/4", feat, k3, pads=same), f"{p}/con/5", spec.norm)
    if spec.generation == "A":
        h = b.gelu(h, f"{p}/con/6")
    s = b.norm(b.conv(x, f"{p}/skip/1", feat, k1), f"{p}/skip/2", spec.norm)
    out = b.total(h, s, f"{p}/tot/1")
    if spec.generation == "B":
        out = b.gelu(out, f"{p}/tot/2")
    return b.dropout(out, f"{node}/drop", spec.dropout)


def unet_model(spec: UNetSpec, export: Export = Export(), params: Params | None = None,
               metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """The QMRITools UNET of ``spec`` (input "Input" (N, 1, z, y, x), output "Output")."""
    b = GraphBuilder(export, params or Params(1))
    b.channels["Input"] = 1
    feats, scales = list(spec.features), [tuple(s) for s in spec.downsample]
    depth, dims = len(feats), len(spec.input_size)
    ones = (1,) * dims
    f0 = round(feats[0] / 2)
    x = b.conv("Input", "start/1", f0, (1,) * dims)
    if spec.generation == "B":
        x = b.gelu(b.norm(x, "start/2", spec.norm), "start/3")
    skips = []
    prev = [f0, *feats[:-1]]
    for level in range(1, depth + 1):
        node, scale = f"enc_{level}", scales[level - 1]
        if spec.generation == "A" and scale != ones:
            x = b.conv(x, f"{node}/scaleD/1", prev[level - 1], (3,) * dims, strides=scale,
                       pads=[(1, 1)] * dims)
        x = _resnet_block(b, x, node, feats[level - 1], spec)
        skips.append(x)
        if spec.generation == "B" and level < depth and scale != ones:
            x = b.conv(x, f"{node}/scaleD/1", feats[level - 1], scale, strides=scale)
    if spec.generation == "B":
        for level in range(depth - 1, 0, -1):
            node, scale = f"dec_{level}", scales[level - 1]
            if scale != ones:
                x = b.resize(x, f"{node}/scaleU/1", scale)
                pads = [(0, f // 2) if f % 2 == 0 else (math.ceil(f / 2) - 1,) * 2
                        for f in scale]
                x = b.conv(x, f"{node}/scaleU/2", feats[level - 1], scale, pads=pads)
            x = b.concat([skips[level - 1], x], f"{node}/cat")
            x = _resnet_block(b, x, node, feats[level - 1], spec)
    else:
        for level in range(depth, 1, -1):
            source = f"enc_{level}" if level == depth else f"dec_{level}"
            if scales[level - 1] != ones:
                x = b.resize(x, f"{source}/scaleU/1", scales[level - 1])
                x = b.conv(x, f"{source}/scaleU/2", prev[level - 1], (3,) * dims,
                           pads=[(1, 1)] * dims)
            node = f"dec_{level - 1}"
            x = b.concat([skips[level - 2], x], f"{node}/cat")
            x = _resnet_block(b, x, node, feats[level - 2], spec)
    x = b.conv(x, "map/1", spec.n_classes, (1,) * dims)
    x = b.node("Transpose", [x], "map/2", perm=[0, *range(2, dims + 2), 1])
    x = b.softmax(x, "map/3", dims + 2)
    b.node("Identity", [x], "Output")
    return b.model({"Input": [1, *spec.input_size]}, ["Output"], metadata,
                   doc="QMRITools segmentation network")


@dataclass(frozen=True)
class ClassifierSpec:
    """The Body_Pos_Side classifier (QMRITools ``MakeClassifyNetwork``); 2-D, one grey channel."""

    image_size: int = 128
    n_side: int = 3
    n_position: int = 8
    trunk: tuple[tuple[int, int, int], ...] = (
        (16, 7, 2), (32, 5, 2), (32, 5, 2), (64, 3, 2), (64, 3, 4))
    head: tuple[int, ...] = (256, 128, 64, 32)


def classifier_model(spec: ClassifierSpec = ClassifierSpec(), export: Export = Export(),
                     params: Params | None = None,
                     metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """Trunk "Conv" and heads "Side"/"Position" (outputs of those names)."""
    b = GraphBuilder(export, params or Params(2))
    b.channels["Input"] = 1
    x, index, size = "Input", 1, spec.image_size
    for ch, kernel, pool in spec.trunk:
        pad = math.ceil(kernel / 2) - 1
        x = b.conv(x, f"Conv/{index}", ch, (kernel, kernel), pads=[(pad, pad)] * 2)
        x = b.gelu(b.norm(x, f"Conv/{index + 1}", "batch"), f"Conv/{index + 2}")
        x = b.maxpool(x, f"Conv/{index + 3}", pool)
        index += 4
        size //= pool
    features = spec.trunk[-1][0] * size * size
    x = b.flatten(x, f"Conv/{index}", features)
    outputs = []
    for port, n in (("Side", spec.n_side), ("Position", spec.n_position)):
        h, k = x, 1
        for units in spec.head:
            h = b.linear(h, f"{port}/{k}", units)
            h = b.gelu(b.norm(h, f"{port}/{k + 1}", "batch"), f"{port}/{k + 2}")
            k += 3
        h = b.linear(h, f"{port}/{k}", n)
        h = b.softmax(h, f"{port}/{k + 1}", 2)
        outputs.append(b.node("Identity", [h], port))
    return b.model({"Input": [1, spec.image_size, spec.image_size]}, outputs, metadata,
                   doc="QMRITools body position and side classifier")


def save(model: onnx.ModelProto, path: Path, external: bool = False) -> Path:
    """Write ``model`` (optionally with its arrays of 1 kB or more in an external file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
              location=f"{path.stem}.data", size_threshold=1024)
    return path


@dataclass
class Runner:
    """ONNX Runtime session of a saved file (the independent reference)."""

    path: Path
    session: object = field(init=False)

    def __post_init__(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        self.session = ort.InferenceSession(str(self.path), options,
                                            providers=["CPUExecutionProvider"])

    def __call__(self, **feeds) -> dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(None, feeds)))


def to_keras(x: np.ndarray) -> np.ndarray:
    """(N, C, s...) -> (N, s..., C)."""
    return np.moveaxis(x, 1, -1) if x.ndim >= 3 else x


# ------------------------------------------------------------------ single-operator nets ----

def small_model(nodes: list, inputs: dict[str, list], initializers: dict[str, np.ndarray],
                outputs: tuple[str, ...] = ("y",), opset: int = 17) -> onnx.ModelProto:
    """A graph of ``nodes`` with float inputs (batch first) and shape-inferred outputs."""
    graph = helper.make_graph(
        nodes, "ops",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in inputs.items()],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=8)
    inferred = {o.name: o for o in onnx.shape_inference.infer_shapes(model).graph.output}
    del model.graph.output[:]
    model.graph.output.extend(inferred[o] for o in outputs)
    return model


def translate_file(path: Path, free_spatial: bool = False):
    """(keras model, config) of an ONNX file, through the config like ``legseg-import``."""
    from legseg_tf.onnxnet.graph import read_onnx
    from legseg_tf.onnxnet.translator import describe
    from legseg_tf.wlnet.translator import build_from_config, set_weights

    description = describe(read_onnx(path), free_spatial=free_spatial)
    model = build_from_config(description.config)
    set_weights(model, description.weights)
    return model, description.config


def compare(path: Path, feeds: dict[str, np.ndarray], free_spatial: bool = False,
            model=None) -> tuple[float, dict]:
    """Max abs difference of ONNX Runtime and the translated Keras model on ``feeds``."""
    config = None
    if model is None:
        model, config = translate_file(path, free_spatial)
    want = Runner(path)(**feeds)
    inputs = {k: to_keras(v) for k, v in feeds.items()}
    got = model(next(iter(inputs.values())) if len(inputs) == 1 else inputs, training=False)
    if not isinstance(got, dict):
        got = {next(iter(want)): got}
    diff = 0.0
    for name, ref in want.items():
        value = np.asarray(got[name])
        assert value.shape == ref.shape, (name, value.shape, ref.shape)
        diff = max(diff, float(np.max(np.abs(value - ref))))
    return diff, config
