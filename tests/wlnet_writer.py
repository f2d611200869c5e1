"""TEST-ONLY writer of ``.wlnet`` files (HDF5 + Compress string), independent of the reader.

It encodes Python values as ``!boR`` expressions itself (:func:`compress`), lays out the HDF5
container like Wolfram's exporter (``Version``, ``Unstable``, ``Metadata``, ``Network``,
``Arrays/1..N`` numbered depth-first) and builds small nets with the QMRITools topology:

* :func:`unet_net` - the segmentation UNET, code generation "A" (HEAD) or "B" (<= Jan 2026),
  QMRITools ``MakeUnet``/``MakeNode``/``ConvBlock`` (NetGraph of ``start``, ``enc_i``, ``dec_i``, ``map``);
* :func:`classifier_net` - the ``Body_Pos_Side`` classifier (QMRITools ``MakeClassifyNetwork``), two class
  decoders.

Port types carry shapes computed here (channels first). Parameter names follow the layer
records seen in Wolfram 11.3-14.3 files; for layer types no public file shows (Deconvolution,
Resize, Catenate, Total, Normalization, Transpose) they follow Wolfram's layer definitions.

Two encoding generations (``encoding=``), as Wolfram's NeuralNetworks package sources define
them (layer definitions Total.m/Catenate.m/Threading.m/Dot.m carry the upgrader
"11.3.2 -> DropAllHiddenParams /* UpgradeToMultiport"; see ``SetMultiport``,
``UpgradeToMultiport`` and ``UpgradeGraphTupleEdges``):

* ``"multiport"`` (files of Wolfram >= 11.3.2, written as 14.3.0): multi-input layers have
  ports "1", "2", ... and the graph one edge per port;
* ``"legacy"`` (11.1 - 11.3.1, written as 11.3.0): one list-valued port "Input" (a list of
  TensorT, or ``ListT[n, T]``), hidden ``$InputShapes``/``$InputCount`` parameters, and one
  edge whose right-hand side is a list of sources.

Elementwise functions follow ``ToUnaryElementwiseFunction``/``CompileScalarFunction``
(ScalarFunction.m) in both generations: primitive symbols stay symbols (``Ramp``, ``Tanh``),
everything else is stored as ``ScalarFunctionObject[{ScalarSymbol[1]}, out, <|SSA|>]``; named
functions appear as SSA steps such as ``{"ExponentialLinearUnit", ScalarSymbol[1]}``; GELU is
the program of ``0.5 (#1 (1 + Erf[0.7071067811865475 #1]))&`` (the form a public FLOP counter
for Wolfram nets, rai-project/synthetic_benchmark StaticAnalysis.m, matches); "ReLU" is
``Ramp`` since the ``$namedFunctionsEquivalent`` table and an SSA step
``{"RectifiedLinearUnit", x}`` in older files.
"""
from __future__ import annotations

import base64
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

VERSION = "14.3.0"
LEGACY_VERSION = "11.3.0"
ENCODINGS = ("multiport", "legacy")


def version_for(encoding: str) -> str:
    """The Wolfram version a file of ``encoding`` is written as."""
    return {"multiport": VERSION, "legacy": LEGACY_VERSION}[encoding]


# ------------------------------------------------------------------ expression encoding ----

@dataclass(frozen=True)
class Sym:
    """A symbol (``Ramp``, ``Max``, ``All``)."""

    name: str


@dataclass(frozen=True)
class Call:
    """``head[args...]`` with a symbol head."""

    head: str
    args: tuple = ()


class ArrayRef:
    """Placeholder for an array; replaced by ``ExportedArray[k]`` at write time."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = np.asarray(data, dtype=np.float32)


def _encode(value: Any, out: bytearray) -> None:
    if isinstance(value, bool):
        _encode(Sym("True" if value else "False"), out)
    elif value is None:
        _encode(Sym("None"), out)
    elif isinstance(value, Sym):
        raw = value.name.encode()
        out += b"s" + struct.pack("<i", len(raw)) + raw
    elif isinstance(value, str):
        raw = value.encode()
        out += b"S" + struct.pack("<i", len(raw)) + raw
    elif isinstance(value, (int, np.integer)):
        if -2**31 <= int(value) < 2**31:
            out += b"i" + struct.pack("<i", int(value))
        else:
            raw = str(int(value)).encode()
            out += b"I" + struct.pack("<i", len(raw)) + raw
    elif isinstance(value, (float, np.floating)):
        out += b"r" + struct.pack("<d", float(value))
    elif isinstance(value, dict):
        out += b"f" + struct.pack("<i", len(value))
        _encode(Sym("Association"), out)
        for key, item in value.items():
            _encode(Call("Rule", (key, item)), out)
    elif isinstance(value, (list, tuple)):
        out += b"f" + struct.pack("<i", len(value))
        _encode(Sym("List"), out)
        for item in value:
            _encode(item, out)
    elif isinstance(value, Call):
        out += b"f" + struct.pack("<i", len(value.args))
        _encode(Sym(value.head), out)
        for item in value.args:
            _encode(item, out)
    else:
        raise TypeError(f"cannot encode {type(value).__name__}")


def compress(value: Any) -> str:
    """Wolfram ``Compress`` form: ``"1:" + base64(zlib(b"!boR" + expression))``."""
    out = bytearray(b"!boR")
    _encode(value, out)
    return "1:" + base64.b64encode(zlib.compress(bytes(out))).decode("ascii")


def _export_arrays(value: Any, arrays: list[np.ndarray]) -> Any:
    """Replace ArrayRef placeholders depth-first by ExportedArray[k] (Wolfram export order)."""
    if isinstance(value, ArrayRef):
        arrays.append(value.data)
        return Call("ExportedArray", (len(arrays),))
    if isinstance(value, dict):
        return {k: _export_arrays(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_export_arrays(v, arrays) for v in value]
    return value


def write_wlnet(path: str | Path, net: dict, version: str = VERSION) -> Path:
    """Write ``net`` (an association with ArrayRef placeholders) as a ``.wlnet`` file.

    Versions below 12 get the 11.x container: a fixed-length ``/Version`` string and no
    ``/Unstable`` flag.
    """
    path = Path(path)
    arrays: list[np.ndarray] = []
    exported = _export_arrays(net, arrays)
    old = int(version.split(".")[0]) < 12
    with h5py.File(path, "w", libver="earliest") as h5:
        text = h5py.string_dtype()
        if old:
            h5.create_dataset("Version", data=np.bytes_(version))
            h5.create_dataset("Metadata", data=compress({"Version": version}), dtype=text)
        else:
            h5.create_dataset("Version", data=version, dtype=text)
            h5.create_dataset("Unstable", data=np.int64(0))
            h5.create_dataset("Metadata", data=compress({"Version": version,
                                                         "Unstable": False}), dtype=text)
        h5.create_dataset("Network", data=compress(exported), dtype=text)
        if arrays:
            group = h5.create_group("Arrays")
            for k, array in enumerate(arrays, start=1):
                group.create_dataset(str(k), data=array)
    return path


# ------------------------------------------------------------------------- net building ----

def tensor_t(shape) -> Call:
    return Call("TensorT", (list(shape), Sym("RealT")))


def _port(shape) -> Any:
    if shape and isinstance(shape[0], (list, tuple)):
        return [tensor_t(s) for s in shape]
    return tensor_t(shape)


@dataclass
class Built:
    """A layer or container association plus its port shapes (channels first)."""

    assoc: dict
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    multiport: bool = False

    @property
    def out_shape(self):
        return next(iter(self.outputs.values()))


def _layer(kind: str, params: dict, arrays: dict, in_shape, out_shape) -> Built:
    assoc = {"Type": kind, "Arrays": arrays, "Parameters": params,
             "Inputs": {"Input": _port(in_shape)}, "Outputs": {"Output": tensor_t(out_shape)}}
    return Built(assoc, {"Input": in_shape}, {"Output": tuple(out_shape)})


class Weights:
    """Random but well-scaled arrays from one seeded generator."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def normal(self, shape, scale) -> ArrayRef:
        return ArrayRef(self.rng.standard_normal(shape) * scale)

    def uniform(self, shape, lo, hi) -> ArrayRef:
        return ArrayRef(self.rng.uniform(lo, hi, shape))


def conv(w: Weights, in_shape, out_ch, kernel, *, stride=1, pad=None, dilation=1, groups=1,
         bias=True) -> Built:
    dims = len(in_shape) - 1
    kernel = [kernel] * dims if isinstance(kernel, int) else list(kernel)
    stride = [stride] * dims if isinstance(stride, int) else list(stride)
    dilation = [dilation] * dims if isinstance(dilation, int) else list(dilation)
    if pad is None:
        pad = [[0, 0]] * dims
    elif isinstance(pad, int):
        pad = [[pad, pad]] * dims
    pad = [list(p) for p in pad]
    cin = in_shape[0]
    out_sp = [(s + lo + hi - d * (k - 1) - 1) // st + 1
              for s, (lo, hi), k, st, d in zip(in_shape[1:], pad, kernel, stride, dilation)]
    fan_in = cin // groups * math.prod(kernel)
    arrays = {"Weights": w.normal([out_ch, cin // groups] + kernel, 1.0 / math.sqrt(fan_in)),
              "Biases": w.normal([out_ch], 0.1) if bias else None}
    params = {"OutputChannels": out_ch, "KernelSize": kernel, "Stride": stride,
              "PaddingSize": pad, "Dilation": dilation, "ChannelGroups": groups,
              "Dimensionality": dims, "Interleaving": False, "$InputChannels": cin,
              "$InputSize": list(in_shape[1:]), "$OutputSize": out_sp,
              "$WeightsInputChannels": cin // groups}
    return _layer("Convolution", params, arrays, in_shape, [out_ch] + out_sp)


def deconv(w: Weights, in_shape, out_ch, kernel, *, stride=1, pad=None, bias=True) -> Built:
    dims = len(in_shape) - 1
    kernel = [kernel] * dims if isinstance(kernel, int) else list(kernel)
    stride = [stride] * dims if isinstance(stride, int) else list(stride)
    pad = [[0, 0]] * dims if pad is None else [list(p) for p in pad]
    cin = in_shape[0]
    out_sp = [(s - 1) * st + k - lo - hi
              for s, k, st, (lo, hi) in zip(in_shape[1:], kernel, stride, pad)]
    scale = 1.0 / math.sqrt(cin * math.prod(kernel))
    arrays = {"Weights": w.normal([cin, out_ch] + kernel, scale),
              "Biases": w.normal([out_ch], 0.1) if bias else None}
    params = {"OutputChannels": out_ch, "KernelSize": kernel, "Stride": stride,
              "PaddingSize": pad, "Dilation": [1] * dims, "ChannelGroups": 1,
              "Dimensionality": dims, "Interleaving": False, "$InputChannels": cin,
              "$InputSize": list(in_shape[1:]), "$OutputSize": out_sp}
    return _layer("Deconvolution", params, arrays, in_shape, [out_ch] + out_sp)


def batch_norm(w: Weights, in_shape, epsilon=0.001) -> Built:
    c = in_shape[0]
    arrays = {"Scaling": w.uniform([c], 0.5, 1.5), "Biases": w.normal([c], 0.1),
              "MovingMean": w.normal([c], 0.1), "MovingVariance": w.uniform([c], 0.5, 1.5)}
    params = {"Momentum": 0.9, "Epsilon": epsilon, "Interleaving": False, "$Channels": c,
              "$SpatialDimensions": list(in_shape[1:])}
    return _layer("BatchNormalization", params, arrays, in_shape, in_shape)


def instance_norm(w: Weights, in_shape, epsilon=0.001) -> Built:
    c = in_shape[0]
    arrays = {"Scaling": w.uniform([c], 0.5, 1.5), "Biases": w.normal([c], 0.1)}
    params = {"AggregationLevels": Call("ValidatedParameter", (Call("Span", (2, Sym("All"))),)),
              "ScalingLevels": Call("ValidatedParameter", ("Complement",)),
              "Epsilon": epsilon, "$Dimensions": list(in_shape), "$StatsDimensions": [c]}
    return _layer("Normalization", params, arrays, in_shape, in_shape)


def norm(w: Weights, in_shape, kind: str) -> Built:
    return batch_norm(w, in_shape) if kind == "batch" else instance_norm(w, in_shape)


#: $PrimitiveUnaryElementwiseFunctions of Wolfram 12+ (stored as symbols).
PRIMITIVES = ("ArcCos", "ArcCosh", "ArcSin", "ArcSinh", "ArcTan", "ArcTanh", "Cosh", "Sinh",
              "Gamma", "LogGamma", "LogisticSigmoid", "Ramp", "SoftRamp", "Tanh", "Sin", "Cos",
              "Tan", "Log", "Exp", "Sqrt", "Square", "Abs", "Round", "Ceiling", "Floor", "Sign",
              "Erf")


def scalar_symbol(k: int) -> Call:
    return Call("ScalarSymbol", (k,))


def scalar_function(steps: list[tuple], n_inputs: int = 1) -> Call:
    """``ScalarFunctionObject`` for SSA ``steps`` = [(op, arg, ...)], numbered after the
    inputs; an int argument k means ScalarSymbol[k], a float a constant. The last step is the
    result."""
    ssa = {}
    k = n_inputs
    for op, *args in steps:
        k += 1
        head = op if isinstance(op, str) and op[:1].isupper() and op in _NAMED_SSA else Sym(op)
        ssa[scalar_symbol(k)] = [head] + [scalar_symbol(a) if isinstance(a, int) else a
                                          for a in args]
    return Call("ScalarFunctionObject", ([scalar_symbol(i) for i in range(1, n_inputs + 1)],
                                         scalar_symbol(k), ssa))


_NAMED_SSA = ("RectifiedLinearUnit", "ScaledExponentialLinearUnit", "ExponentialLinearUnit",
              "SoftSign", "SoftPlus", "HardTanh", "HardSigmoid", "Sigmoid")

#: The SSA programs CompileScalarFunction records for named ElementwiseLayer functions.
PROGRAMS = {
    "GELU": [("Times", 0.7071067811865475, 1), ("Erf", 2), ("Plus", 1.0, 3), ("Times", 1, 4),
             ("Times", 0.5, 5)],
    "ELU": [("ExponentialLinearUnit", 1)],
    "SELU": [("ScaledExponentialLinearUnit", 1)],
    "SoftPlus": [("SoftPlus", 1)],
    "SoftSign": [("SoftSign", 1)],
    "HardSigmoid": [("HardSigmoid", 1)],
    "Swish": [("LogisticSigmoid", 1), ("Times", 1, 2)],
    "ReLU-legacy": [("RectifiedLinearUnit", 1)],
}


def elementwise_function(function: str, encoding: str = "multiport") -> Any:
    """The validated ``Function`` parameter Wolfram stores for ``ElementwiseLayer[function]``."""
    if function in ("ReLU", "RectifiedLinearUnit", "Sigmoid"):
        if encoding == "legacy" and function != "Sigmoid":
            return Call("ValidatedParameter", (scalar_function(PROGRAMS["ReLU-legacy"]),))
        return Call("ValidatedParameter", (Sym("Ramp" if function != "Sigmoid"
                                               else "LogisticSigmoid"),))
    if function in PRIMITIVES:
        return Call("ValidatedParameter", (Sym(function),))
    if function in PROGRAMS:
        return Call("ValidatedParameter", (scalar_function(PROGRAMS[function]),))
    raise ValueError(f"writer has no program for {function!r}")


def elementwise(in_shape, function: str | Call, encoding: str = "multiport") -> Built:
    """ElementwiseLayer; ``function`` is a name (see :func:`elementwise_function`) or an
    already encoded ``ValidatedParameter[...]``."""
    value = function if isinstance(function, Call) else elementwise_function(function, encoding)
    params = {"Function": value, "$Dimensions": list(in_shape)}
    return _layer("Elementwise", params, {}, in_shape, in_shape)


def pooling(in_shape, kernel, stride, function="Max") -> Built:
    dims = len(in_shape) - 1
    kernel = [kernel] * dims if isinstance(kernel, int) else list(kernel)
    stride = [stride] * dims if isinstance(stride, int) else list(stride)
    out_sp = [(s - k) // st + 1 for s, k, st in zip(in_shape[1:], kernel, stride)]
    params = {"KernelSize": kernel, "Stride": stride, "PaddingSize": [[0, 0]] * dims,
              "Function": Sym(function), "Dimensionality": dims, "Interleaving": False,
              "$Channels": in_shape[0], "$InputSize": list(in_shape[1:]), "$OutputSize": out_sp,
              "$MXPoolingConvention": "valid", "$MXGlobalPool": False, "$IgnorePadding": False}
    return _layer("Pooling", params, {}, in_shape, [in_shape[0]] + out_sp)


def resize(in_shape, factors) -> Built:
    spec = [Call("Scaled", (f,)) for f in factors]
    out = [in_shape[0]] + [s * f for s, f in zip(in_shape[1:], factors)]
    params = {"Specification": Call("ValidatedParameter", (spec,)), "Resampling": "Nearest",
              "Dimensionality": len(factors), "$Channels": in_shape[0],
              "$InputSize": list(in_shape[1:]), "$OutputSize": out[1:]}
    return _layer("Resize", params, {}, in_shape, out)


def _multi(kind: str, params: dict, shapes, out, encoding: str, hidden: bool = True) -> Built:
    """A multi-input layer in either encoding (see the module docstring)."""
    shapes = [tuple(s) for s in shapes]
    if encoding == "multiport":
        inputs = {str(k): tensor_t(s) for k, s in enumerate(shapes, start=1)}
        ports = {str(k): s for k, s in enumerate(shapes, start=1)}
    else:
        same = len(set(shapes)) == 1
        port = Call("ListT", (len(shapes), tensor_t(shapes[0]))) if same and kind != "Catenate" \
            else [tensor_t(s) for s in shapes]
        inputs = {"Input": port}
        ports = {"Input": [list(s) for s in shapes]}
        if hidden:
            params = {**params, "$InputShapes": [tensor_t(s) for s in shapes],
                      "$InputCount": len(shapes)}
    assoc = {"Type": kind, "Arrays": {}, "Parameters": params, "Inputs": inputs,
             "Outputs": {"Output": tensor_t(out)}}
    return Built(assoc, ports, {"Output": tuple(out)}, multiport=encoding == "multiport")


def catenate(shapes, encoding: str = "multiport") -> Built:
    out = [sum(s[0] for s in shapes)] + list(shapes[0][1:])
    return _multi("Catenate", {"Level": 1}, shapes, out, encoding)


def total(shapes, encoding: str = "multiport") -> Built:
    return _multi("Total", {}, shapes, shapes[0], encoding)


def threading(shapes, function: str | Call, encoding: str = "multiport") -> Built:
    value = function if isinstance(function, Call) else Sym(function)
    return _multi("Threading", {"Function": Call("ValidatedParameter", (value,))}, shapes,
                  shapes[0], encoding)


def dropout(in_shape, rate) -> Built:
    return _layer("Dropout", {"DropoutProbability": rate, "Method": "Dropout"}, {}, in_shape,
                  in_shape)


def flatten(in_shape) -> Built:
    return _layer("Flatten", {"Level": Call("DirectedInfinity", (1,))}, {}, in_shape,
                  [math.prod(in_shape)])


def linear(w: Weights, in_shape, units) -> Built:
    n_in = math.prod(in_shape)
    arrays = {"Weights": w.normal([units, n_in], 1.0 / math.sqrt(n_in)),
              "Biases": w.normal([units], 0.1)}
    params = {"OutputDimensions": [units], "$OutputSize": units, "$InputSize": n_in,
              "$InputDimensions": list(in_shape)}
    return _layer("Linear", params, arrays, in_shape, [units])


def softmax(in_shape) -> Built:
    return _layer("Softmax", {"Level": -1}, {}, in_shape, in_shape)


def transpose(in_shape, perm) -> Built:
    out = [0] * len(in_shape)
    for k, p in enumerate(perm):
        out[p - 1] = in_shape[k]
    params = {"Specification": Call("ValidatedParameter", (list(perm),)),
              "$InputDimensions": list(in_shape), "$OutputDimensions": out}
    return _layer("Transpose", params, {}, in_shape, out)


def transpose_rules(in_shape, rules: list[tuple[int, int]], head: str,
                    moves: bool = True) -> Built:
    """TransposeLayer[{a -> b, ...}] (``head`` "Rule") or {a <-> b, ...} ("TwoWayRule").

    Output shape: TwoWayRules swap successively; Rules move level a to position b (Wolfram
    >= 11.3.2), or swap when ``moves`` is False (files older than 11.3.2).
    """
    rank = len(in_shape)
    levels = list(range(rank))
    if head == "TwoWayRule" or not moves:
        for a, b in rules:
            levels[a - 1], levels[b - 1] = levels[b - 1], levels[a - 1]
    else:
        src = [a - 1 for a, _ in rules]
        placed: list[Any] = [None] * rank
        for a, b in rules:
            placed[b - 1] = a - 1
        rest = iter(k for k in range(rank) if k not in src)
        levels = [p if p is not None else next(rest) for p in placed]
    out = [in_shape[k] for k in levels]
    spec = [Call(head, (a, b)) for a, b in rules]
    params = {"Specification": Call("ValidatedParameter", (spec,)),
              "$InputDimensions": list(in_shape), "$OutputDimensions": out}
    return _layer("Transpose", params, {}, in_shape, out)


def netpath(*parts) -> Call:
    return Call("NetPath", tuple(parts))


class Graph:
    """Incremental NetGraph/NetChain builder: nodes, explicit edges, port shapes."""

    def __init__(self, inputs: dict[str, Any], kind: str = "Graph") -> None:
        self.kind = kind
        self.inputs = {k: tuple(v) for k, v in inputs.items()}
        self.nodes: dict[str, Built] = {}
        self.edges: list[Call] = []
        self.outputs: dict[str, Any] = {}
        self.out_types: dict[str, Any] = {}

    def shape(self, src) -> tuple:
        node, port = src
        return self.inputs[port] if node is None else self.nodes[node].outputs[port]

    def _path(self, src) -> Call:
        node, port = src
        return netpath("Inputs", port) if node is None else netpath("Nodes", node, "Outputs", port)

    def add(self, name: str, built: Built, feeds: dict[str, Any], *,
            indexed: bool = False) -> None:
        """Add a node. A list of sources feeds a multiport layer with one edge per port
        "1", "2", ... (Wolfram >= 11.3.2, ``UpgradeGraphTupleEdges``); a list-valued port of
        an older layer gets one edge with a list on its right-hand side or (``indexed``) one
        edge per ``NetPath[..., k]``."""
        self.nodes[name] = built
        for port, src in feeds.items():
            if isinstance(src, list) and built.multiport:
                for k, one in enumerate(src, start=1):
                    self.edges.append(Call("Rule", (netpath("Nodes", name, "Inputs", str(k)),
                                                    self._path(one))))
                continue
            dest = netpath("Nodes", name, "Inputs", port)
            if isinstance(src, list) and indexed:
                for k, one in enumerate(src, start=1):
                    self.edges.append(Call("Rule", (netpath("Nodes", name, "Inputs", port, k),
                                                    self._path(one))))
                continue
            rhs = [self._path(s) for s in src] if isinstance(src, list) else self._path(src)
            self.edges.append(Call("Rule", (dest, rhs)))

    def output(self, port: str, src, port_type=None) -> None:
        self.outputs[port] = self.shape(src)
        self.out_types[port] = port_type
        self.edges.append(Call("Rule", (netpath("Outputs", port), self._path(src))))

    def build(self, input_types: dict[str, Any] | None = None) -> Built:
        input_types = input_types or {}
        assoc = {"Type": self.kind, "Nodes": {k: v.assoc for k, v in self.nodes.items()},
                 "Edges": self.edges,
                 "Inputs": {k: input_types.get(k) or tensor_t(v) for k, v in self.inputs.items()},
                 "Outputs": {k: self.out_types[k] or tensor_t(v) for k, v in self.outputs.items()}}
        return Built(assoc, dict(self.inputs), dict(self.outputs))


def chain(in_shape, steps: list[tuple[str, Any]]) -> Built:
    """NetChain of ``steps`` = [(name, factory(in_shape) -> Built)], edges made explicit."""
    g = Graph({"Input": in_shape}, kind="Chain")
    src = (None, "Input")
    for name, factory in steps:
        g.add(name, factory(g.shape(src)), {"Input": src})
        src = (name, "Output")
    g.output("Output", src)
    return g.build()


# ---------------------------------------------------------------- QMRITools topologies ----
# Following QMRITools' NeuralNetworkTools.wl (mfroeling/QMRITools): MakeUnet, MakeNode,
# ConvBlock["ResNet"], Conv, ConvScale, UNetStart, UNetMap and MakeClassifyNetwork. Generation
# "A" is the HEAD code (since 2026-02-01): encoder nodes take port "Down" and give "Skip"
# (the deepest gives "Up"), decoders take "Skip" and "Scale" and give "Up" (dec_1: "Output").
# Generation "B" is the code of v4.5.x (<= Jan 2026) as QMRITools ``MakeUnet`` builds it.

@dataclass(frozen=True)
class UNetSpec:
    """A QMRITools UNET (spatial axes z, y, x; channels first in Wolfram)."""

    generation: str = "B"
    n_classes: int = 3
    features: tuple[int, ...] = (4, 8, 12)
    downsample: tuple[tuple[int, ...], ...] = ((2, 2, 2), (1, 2, 2), (1, 1, 1))
    input_size: tuple[int, ...] = (4, 8, 8)
    in_channels: int = 1
    norm: str = "batch"
    dropout: float = 0.2
    seed: int = 1
    encoding: str = "multiport"
    activation: str = "GELU"


def _conv_unit(g: Graph, w: Weights, prefix: str, start: int, src, feat: int, kernel: int,
               norm_kind: str, act: str | None, encoding: str):
    """Conv(k, pad ceil(k/2)-1) -> Norm -> [activation] as consecutive nodes prefix/start..."""
    k = start
    g.add(f"{prefix}/{k}", conv(w, g.shape(src), feat, kernel, pad=math.ceil(kernel / 2) - 1),
          {"Input": src})
    src = (f"{prefix}/{k}", "Output")
    k += 1
    g.add(f"{prefix}/{k}", norm(w, g.shape(src), norm_kind), {"Input": src})
    src = (f"{prefix}/{k}", "Output")
    if act:
        k += 1
        g.add(f"{prefix}/{k}", elementwise(g.shape(src), act, encoding), {"Input": src})
        src = (f"{prefix}/{k}", "Output")
    return src, k + 1


def _resnet_block(g: Graph, w: Weights, src, feat: int, spec: UNetSpec, dropout: float):
    """ConvBlock["ResNet"] into g: nodes block/con/*, block/skip/*, block/tot/*, drop."""
    act = spec.activation
    inner = round(feat / 2)  # Wolfram Round: half to even, like Python round
    con, k = _conv_unit(g, w, "block/con", 1, src, inner, 3, spec.norm, act, spec.encoding)
    con, k = _conv_unit(g, w, "block/con", k, con, feat, 3, spec.norm,
                        act if spec.generation == "A" else None, spec.encoding)
    skip, _ = _conv_unit(g, w, "block/skip", 1, src, feat, 1, spec.norm, None, spec.encoding)
    g.add("block/tot/1", total([g.shape(con), g.shape(skip)], spec.encoding),
          {"Input": [con, skip]})
    out = ("block/tot/1", "Output")
    if spec.generation == "B":
        g.add("block/tot/2", elementwise(g.shape(out), act, spec.encoding), {"Input": out})
        out = ("block/tot/2", "Output")
    if dropout > 0:
        g.add("drop", dropout_layer(g.shape(out), dropout), {"Input": out})
        out = ("drop", "Output")
    return out


def dropout_layer(in_shape, rate) -> Built:
    return dropout(in_shape, rate)


def _up(g: Graph, w: Weights, src, factors, channels, generation: str):
    g.add("scaleU/1", resize(g.shape(src), factors), {"Input": (src[0], src[1])})
    up = ("scaleU/1", "Output")
    if generation == "B":
        pad = [[0, f // 2] if f % 2 == 0 else [math.ceil(f / 2) - 1] * 2 for f in factors]
        built = conv(w, g.shape(up), channels, list(factors), pad=pad)
    else:
        built = conv(w, g.shape(up), channels, 3, pad=1)
    g.add("scaleU/2", built, {"Input": up})
    return ("scaleU/2", "Output")


def unet_net(spec: UNetSpec) -> dict:
    """The UNET association (NetGraph) for ``spec`` (QMRITools ``MakeUnet``)."""
    return _unet_a(spec) if spec.generation == "A" else _unet_b(spec)


def _start_and_map(top: Graph, w: Weights, spec: UNetSpec, f0: int):
    if spec.generation == "B":
        start = chain(top.shape((None, "Input")), [
            ("1", lambda s: conv(w, s, f0, 1)), ("2", lambda s: norm(w, s, spec.norm)),
            ("3", lambda s: elementwise(s, spec.activation, spec.encoding))])
    else:  # UNetStart: Conv[feat, {dim, 1}, {"None", "None"}]
        start = chain(top.shape((None, "Input")), [("1", lambda s: conv(w, s, f0, 1))])
    top.add("start", start, {"Input": (None, "Input")})


def _add_map(top: Graph, w: Weights, spec: UNetSpec, below) -> None:
    """UNetMap: Conv 1x1 (nClass) -> TransposeLayer[{dims+1, 1, ..., dims}] -> Softmax."""
    dims = len(spec.input_size)
    perm = [dims + 1] + list(range(1, dims + 1))
    top.add("map", chain(top.shape(below), [
        ("1", lambda s: conv(w, s, spec.n_classes, 1)),
        ("2", lambda s: transpose(s, perm)), ("3", softmax)]), {"Input": below})
    top.output("Output", ("map", "Output"))


def _unet_a(spec: UNetSpec) -> dict:
    """HEAD MakeUnet: downsampling on entry to level i (strided 3^n conv), Resize + 3^n conv
    on the way up, block order Conv-Norm-Act twice, no activation after the sum."""
    w = Weights(spec.seed)
    depth = len(spec.features)
    dims = len(spec.input_size)
    feats = list(spec.features)
    f0 = round(feats[0] / 2)
    ones = (1,) * dims
    top = Graph({"Input": (spec.in_channels,) + tuple(spec.input_size)})
    _start_and_map(top, w, spec, f0)
    prev = ("start", "Output")
    for i in range(1, depth + 1):
        scale = tuple(spec.downsample[i - 1])
        g = Graph({"Down": top.shape(prev)})
        src = (None, "Down")
        if scale != ones:  # ConvScale Encode Conv: f_{i-1} channels, kernel 3, pad 1
            g.add("scaleD/1", conv(w, g.shape(src), feats[i - 2] if i > 1 else f0, 3,
                                   stride=list(scale), pad=1), {"Input": src})
            src = ("scaleD/1", "Output")
        out = _resnet_block(g, w, src, feats[i - 1], spec, spec.dropout)
        if i < depth:
            g.output("Skip", out)
        else:
            g.output("Up", _up(g, w, out, scale, feats[i - 2], "A") if scale != ones else out)
        top.add(f"enc_{i}", g.build(), {"Down": prev})
        prev = (f"enc_{i}", "Skip")
    below = (f"enc_{depth}", "Up")
    for i in range(depth - 1, 0, -1):
        g = Graph({"Skip": top.shape((f"enc_{i}", "Skip")), "Scale": top.shape(below)})
        g.add("cat", catenate([g.shape((None, "Skip")), g.shape((None, "Scale"))],
                              spec.encoding), {"Input": [(None, "Skip"), (None, "Scale")]})
        out = _resnet_block(g, w, ("cat", "Output"), feats[i - 1], spec, spec.dropout)
        scale = tuple(spec.downsample[i - 1])
        if i > 1:
            g.output("Up", _up(g, w, out, scale, feats[i - 2], "A") if scale != ones else out)
        else:
            g.output("Output", out)
        top.add(f"dec_{i}", g.build(), {"Skip": (f"enc_{i}", "Skip"), "Scale": below})
        below = (f"dec_{i}", "Up" if i > 1 else "Output")
    _add_map(top, w, spec, below)
    return top.build().assoc


def _unet_b(spec: UNetSpec) -> dict:
    """v4.5.x MakeUnet: kernel = stride down conv after level i, Resize + kernel-2 up conv,
    GELU after the residual sum."""
    w = Weights(spec.seed)
    depth = len(spec.features)
    dims = len(spec.input_size)
    feats = list(spec.features)
    f0 = round(feats[0] / 2)
    ones = (1,) * dims
    top = Graph({"Input": (spec.in_channels,) + tuple(spec.input_size)})
    _start_and_map(top, w, spec, f0)
    prev = ("start", "Output")
    for i in range(1, depth + 1):
        scale = tuple(spec.downsample[i - 1])
        g = Graph({"Input": top.shape(prev)})
        out = _resnet_block(g, w, (None, "Input"), feats[i - 1], spec, spec.dropout)
        g.output("Skip", out)
        if i < depth and scale != ones:
            g.add("scaleD/1", conv(w, g.shape(out), feats[i - 1], list(scale),
                                   stride=list(scale)), {"Input": out})
            g.output("Down", ("scaleD/1", "Output"))
        elif i < depth:
            g.output("Down", out)
        top.add(f"enc_{i}", g.build(), {"Input": prev})
        prev = (f"enc_{i}", "Down")
    below = (f"enc_{depth}", "Skip")
    for i in range(depth - 1, 0, -1):
        g = Graph({"Input1": top.shape((f"enc_{i}", "Skip")), "Input2": top.shape(below)})
        up = (None, "Input2")
        scale = tuple(spec.downsample[i - 1])
        if scale != ones:
            up = _up(g, w, up, scale, feats[i - 1], "B")
        g.add("cat", catenate([g.shape((None, "Input1")), g.shape(up)], spec.encoding),
              {"Input": [(None, "Input1"), up]})
        out = _resnet_block(g, w, ("cat", "Output"), feats[i - 1], spec,
                            spec.dropout if i > 1 else 0.0)
        g.output("Output", out)
        top.add(f"dec_{i}", g.build(), {"Input1": (f"enc_{i}", "Skip"), "Input2": below})
        below = (f"dec_{i}", "Output")
    _add_map(top, w, spec, below)
    return top.build().assoc


@dataclass(frozen=True)
class ClassifierSpec:
    """The Body_Pos_Side classifier (MakeClassifyNetwork, QMRITools HEAD); 2-D, one grey
    channel, a shared "Conv" trunk and one head per output port."""

    image_size: int = 128
    side_labels: tuple[str, ...] = ("Left", "Right", "Both")
    position_labels: tuple[str, ...] = ("Lower", "Knee", "Upper", "Hip", "Torso", "Shoulder",
                                        "Neck", "Head")
    trunk: tuple[tuple[int, int, int], ...] = (  # (channels, kernel, pool after)
        (16, 7, 2), (32, 5, 2), (32, 5, 2), (64, 3, 2), (64, 3, 4))
    head: tuple[int, ...] = (256, 128, 64, 32)
    seed: int = 2
    encoding: str = "multiport"


def classifier_net(spec: ClassifierSpec) -> dict:
    """NetGraph: "Conv" trunk chain, "Side" and "Position" head chains with class decoders."""
    w = Weights(spec.seed)
    size = spec.image_size
    version = version_for(spec.encoding)
    top = Graph({"Input": (1, size, size)})
    steps = []
    for k, (ch, kernel, pool) in enumerate(spec.trunk):
        steps += [
            (str(4 * k + 1), lambda s, ch=ch, kernel=kernel: conv(
                w, s, ch, kernel, pad=math.ceil(kernel / 2) - 1)),
            (str(4 * k + 2), lambda s: batch_norm(w, s)),
            (str(4 * k + 3), lambda s: elementwise(s, "GELU", spec.encoding)),
            (str(4 * k + 4), lambda s, pool=pool: pooling(s, pool, pool))]
    steps.append((str(4 * len(spec.trunk) + 1), flatten))
    top.add("Conv", chain(top.shape((None, "Input")), steps), {"Input": (None, "Input")})
    for port, labels in (("Side", spec.side_labels), ("Position", spec.position_labels)):
        hsteps = []
        for k, units in enumerate(spec.head):
            hsteps += [(str(3 * k + 1), lambda s, u=units: linear(w, s, u)),
                       (str(3 * k + 2), lambda s: batch_norm(w, s)),
                       (str(3 * k + 3), lambda s: elementwise(s, "GELU", spec.encoding))]
        n = 3 * len(spec.head)
        hsteps += [(str(n + 1), lambda s, c=len(labels): linear(w, s, c)),
                   (str(n + 2), softmax)]
        top.add(port, chain(top.shape(("Conv", "Output")), hsteps), {"Input": ("Conv", "Output")})
        decoder = Call("NetDecoder", ("Class", {"Labels": list(labels), "InputDepth": 1,
                                                "$Version": version},
                                      tensor_t([len(labels)])))
        top.output(port, (port, "Output"), decoder)
    encoder = Call("NetEncoder", ("Image", {
        "ImageSize": Call("ValidatedParameter", ([size, size],)), "ColorSpace": "Grayscale",
        "ColorChannels": 1, "Interleaving": False, "MeanImage": None, "VarianceImage": None,
        "$Version": version}, tensor_t([1, size, size])))
    return top.build({"Input": encoder}).assoc
