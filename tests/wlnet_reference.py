"""Independent numpy evaluation of Wolfram layer semantics (test oracle).

Works directly on the reader's net description in Wolfram layout: every array is
``(batch, *wolfram_dims)``, i.e. channels first. Written from the Wolfram layer definitions
(cross-correlation convolution with explicit per-side padding, ``(x - mean) / sqrt(var + eps)``
normalisations, exact GELU, nearest resize by repetition, C-order flattening), with plain loops
over kernel offsets; it shares no code with ``legseg_tf.wlnet.translator`` or
``legseg_tf.wlnet.scalar``.

Both input encodings of multi-input layers are evaluated (ports "1", "2", ... of Wolfram
>= 11.3.2, or one list-valued port "Input"), ``ScalarFunctionObject`` programs are interpreted
here by recursive evaluation of their SSA association, and TransposeLayer Rules move a level
(``rules_move=True``, Wolfram >= 11.3.2) or swap it (older files).
"""
from __future__ import annotations

import itertools

import numpy as np
from scipy.special import erf

from legseg_tf.wlnet.expr import Expr, Symbol
from legseg_tf.wlnet.reader import Container, Layer, TensorType


def run_net(node, inputs: dict[str, np.ndarray], rules_move: bool = True) -> dict:
    """Evaluate a container or layer on batched float64 inputs (port name -> array)."""
    if isinstance(node, Container):
        return _run_container(node, inputs, rules_move)
    return _run_layer(node, inputs, rules_move)


def _run_container(net: Container, inputs: dict, rules_move: bool) -> dict:
    results: dict[str, dict] = {}

    def sources_of(node_name, port):
        found = []
        for dest, sources in net.edges:
            if dest.node == node_name and dest.port == port and \
                    dest.direction == ("Outputs" if node_name is None else "Inputs"):
                for k, src in enumerate(sources):
                    found.append(((dest.index or 0), k, src))
        found.sort(key=lambda t: (t[0], t[1]))
        return [value_of(src) for _, _, src in found]

    def value_of(src):
        if src.node is None:
            value = inputs[src.port]
        else:
            value = evaluate(src.node)[src.port]
        if src.index is not None:
            value = value[src.index - 1]
        return value

    def evaluate(name):
        if name not in results:
            child = net.nodes[name]
            feed = {}
            for port, spec in child.inputs.items():
                values = sources_of(name, port)
                if isinstance(spec, tuple):
                    flat = []
                    for v in values:
                        flat.extend(v if isinstance(v, list) else [v])
                    feed[port] = flat
                else:
                    (feed[port],) = values
            results[name] = run_net(child, feed, rules_move)
        return results[name]

    for name in net.nodes:
        evaluate(name)
    out = {}
    for port in net.outputs:
        (out[port],) = sources_of(None, port)
    return out


def _unwrap(v):
    while isinstance(v, Expr) and v.head_name == "ValidatedParameter":
        v = v.args[0]
    return v


def _per_axis(value, n):
    value = _unwrap(value)
    return [value] * n if isinstance(value, int) else list(value)


def _pads(value, n):
    value = _unwrap(value)
    if isinstance(value, int):
        return [(value, value)] * n
    return [(v, v) if isinstance(v, int) else (v[0], v[1]) for v in value]


def conv_nd(x, w, b, stride, dilation, pads, groups):
    """Cross-correlation, x (B, C, *S), w (O, C/groups, *K), explicit (lo, hi) pads."""
    n = w.ndim - 2
    x = np.pad(x, [(0, 0), (0, 0)] + list(pads))
    kernel = w.shape[2:]
    out_sz = [(x.shape[2 + i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1
              for i in range(n)]
    out_ch, cin_g = w.shape[0], w.shape[1]
    og = out_ch // groups
    y = np.zeros((x.shape[0], out_ch, *out_sz))
    for offs in itertools.product(*[range(k) for k in kernel]):
        sl = tuple(slice(offs[i] * dilation[i],
                         offs[i] * dilation[i] + stride[i] * (out_sz[i] - 1) + 1, stride[i])
                   for i in range(n))
        patch = x[(slice(None), slice(None)) + sl]
        for g in range(groups):
            wk = w[(slice(g * og, (g + 1) * og), slice(None)) + tuple(offs)]
            y[:, g * og:(g + 1) * og] += np.einsum(
                "bc...,oc->bo...", patch[:, g * cin_g:(g + 1) * cin_g], wk)
    if b is not None:
        y += b.reshape((1, -1) + (1,) * n)
    return y


def deconv_nd(x, w, b, stride, pads):
    """Transposed convolution: every input voxel scatters w[i, o, k] to position n*s + k."""
    n = w.ndim - 2
    kernel = w.shape[2:]
    full = [(x.shape[2 + i] - 1) * stride[i] + kernel[i] for i in range(n)]
    y = np.zeros((x.shape[0], w.shape[1], *full))
    for offs in itertools.product(*[range(k) for k in kernel]):
        sl = tuple(slice(offs[i], offs[i] + stride[i] * (x.shape[2 + i] - 1) + 1, stride[i])
                   for i in range(n))
        y[(slice(None), slice(None)) + sl] += np.einsum(
            "bi...,io->bo...", x, w[(slice(None), slice(None)) + tuple(offs)])
    crop = tuple(slice(lo, full[i] - hi) for i, (lo, hi) in enumerate(pads))
    y = y[(slice(None), slice(None)) + crop]
    if b is not None:
        y += b.reshape((1, -1) + (1,) * n)
    return y


def pool_nd(x, kernel, stride, pads, func):
    n = len(kernel)
    x = np.pad(x, [(0, 0), (0, 0)] + list(pads))
    out_sz = [(x.shape[2 + i] - kernel[i]) // stride[i] + 1 for i in range(n)]
    windows = []
    for offs in itertools.product(*[range(k) for k in kernel]):
        sl = tuple(slice(offs[i], offs[i] + stride[i] * (out_sz[i] - 1) + 1, stride[i])
                   for i in range(n))
        windows.append(x[(slice(None), slice(None)) + sl])
    stack = np.stack(windows)
    return stack.max(axis=0) if func == "Max" else stack.mean(axis=0)


def activation(name, x):
    table = {
        "Ramp": lambda v: np.maximum(v, 0.0),
        "Tanh": np.tanh,
        "LogisticSigmoid": lambda v: 1.0 / (1.0 + np.exp(-v)),
        "ELU": lambda v: np.where(v > 0, v, np.expm1(np.minimum(v, 0))),
        "GELU": lambda v: 0.5 * v * (1.0 + erf(v / np.sqrt(2.0))),
        "SELU": lambda v: 1.0507009873554805 * np.where(
            v > 0, v, 1.6732632423543772 * np.expm1(np.minimum(v, 0))),
        "SoftPlus": lambda v: np.logaddexp(0.0, v),
        "Swish": lambda v: v / (1.0 + np.exp(-v)),
    }
    return table[name](x)


def _transpose_axes(spec, rank, rules_move=True):
    spec = _unwrap(spec)
    if isinstance(spec, Expr):
        spec = [spec]
    if rules_move and spec and all(isinstance(r, Expr) and r.head_name == "Rule" for r in spec):
        # level a ends up at position b; the others keep their relative order
        moved = {b - 1 if b > 0 else rank + b: a - 1 if a > 0 else rank + a
                 for a, b in (r.args for r in spec)}
        others = [k for k in range(rank) if k not in moved.values()]
        return [moved[j] if j in moved else others.pop(0) for j in range(rank)]
    if all(isinstance(v, int) for v in spec):
        # Transpose[a, {p1..pn}]: input level k becomes output level p_k.
        axes = list(range(rank))
        for k, p in enumerate(spec):
            axes[p - 1] = k
        return axes
    axes = list(range(rank))
    for rule in spec:
        i, j = (a - 1 if a > 0 else rank + a for a in rule.args)
        axes[i], axes[j] = axes[j], axes[i]
    return axes


_SELU = (1.6732632423543772, 1.0507009873554805)
_SSA_OPS = {
    "Times": lambda *v: np.prod(np.broadcast_arrays(*v), axis=0),
    "Plus": lambda *v: np.sum(np.broadcast_arrays(*v), axis=0),
    "Subtract": lambda u, v: u - v, "Divide": lambda u, v: u / v, "Power": np.power,
    "Minus": np.negative, "Min": lambda *v: np.min(np.broadcast_arrays(*v), axis=0),
    "Max": lambda *v: np.max(np.broadcast_arrays(*v), axis=0),
    "Erf": erf, "Exp": np.exp, "Log": np.log, "Tanh": np.tanh, "Sqrt": np.sqrt,
    "Abs": np.abs, "Sin": np.sin, "Cos": np.cos, "Square": np.square,
    "LogisticSigmoid": lambda v: 0.5 * (1.0 + np.tanh(0.5 * v)),
    "Ramp": lambda v: np.where(v > 0, v, 0.0),
    "Clip": lambda v, bounds: np.clip(v, bounds[0], bounds[1]),
    "Greater": lambda u, v: (u > v) * 1.0, "Less": lambda u, v: (u < v) * 1.0,
    "If": lambda c, u, v: np.where(c > 0.5, u, v), "Identity": lambda v: v,
    "RectifiedLinearUnit": lambda v: np.where(v > 0, v, 0.0),
    "ExponentialLinearUnit": lambda v: np.where(v > 0, v, np.exp(np.minimum(v, 0)) - 1.0),
    "ScaledExponentialLinearUnit": lambda v: _SELU[1] * np.where(
        v > 0, v, _SELU[0] * (np.exp(np.minimum(v, 0)) - 1.0)),
    "SoftPlus": lambda v: np.log1p(np.exp(-np.abs(v))) + np.maximum(v, 0),
    "SoftSign": lambda v: v / (1.0 + np.abs(v)),
    "HardSigmoid": lambda v: np.clip((v + 1.0) / 2.0, 0.0, 1.0),
    "HardTanh": lambda v: np.clip(v, -1.0, 1.0),
    "Sigmoid": lambda v: 0.5 * (1.0 + np.tanh(0.5 * v)),
}


def run_scalar_function(sfo: Expr, *xs):
    """Evaluate ``ScalarFunctionObject[ins, out, ssa]`` on arrays by recursive lookup."""
    ins, out, ssa = sfo.args
    env = {sym: x for sym, x in zip(ins, xs)}

    def value(arg):
        if isinstance(arg, Expr) and arg.head_name == "ScalarSymbol":
            if arg not in env:
                op, *args = ssa[arg]
                name = op.name if isinstance(op, Symbol) else op
                env[arg] = _SSA_OPS[name](*[value(v) for v in args])
            return env[arg]
        if isinstance(arg, list):
            return [value(v) for v in arg]
        return float(arg)

    return value(out) * np.ones_like(xs[0])


def _inputs_list(layer: Layer, inputs: dict) -> list:
    if "Input" in layer.inputs:
        return list(inputs["Input"])
    return [inputs[str(k)] for k in range(1, len(layer.inputs) + 1)]


def _run_layer(layer: Layer, inputs: dict, rules_move: bool = True) -> dict:
    p, a, t = layer.parameters, layer.arrays, layer.type
    x = inputs.get("Input")
    if t in ("Catenate", "Total", "Threading"):
        x = _inputs_list(layer, inputs)
    if t == "Function":
        return run_net(layer.subnet, inputs, rules_move)
    if t == "Convolution":
        w = a["Weights"].astype(np.float64)
        n = w.ndim - 2
        y = conv_nd(x, w, a.get("Biases"), _per_axis(p.get("Stride", 1), n),
                    _per_axis(p.get("Dilation", 1), n), _pads(p.get("PaddingSize", 0), n),
                    int(p.get("ChannelGroups", p.get("$GroupNumber", 1))))
    elif t == "Deconvolution":
        w = a["Weights"].astype(np.float64)
        n = w.ndim - 2
        y = deconv_nd(x, w, a.get("Biases"), _per_axis(p.get("Stride", 1), n),
                      _pads(p.get("PaddingSize", 0), n))
    elif t == "Pooling":
        n = x.ndim - 2
        func = _unwrap(p.get("Function", Symbol("Max")))
        y = pool_nd(x, _per_axis(p["KernelSize"], n), _per_axis(p.get("Stride", 1), n),
                    _pads(p.get("PaddingSize", 0), n), func.name)
    elif t == "BatchNormalization":
        shape = (1, -1) + (1,) * (x.ndim - 2)
        gamma = a.get("Scaling", a.get("Gamma"))
        beta = a.get("Biases", a.get("Beta"))
        y = (x - a["MovingMean"].reshape(shape)) / np.sqrt(
            a["MovingVariance"].reshape(shape) + p.get("Epsilon", 1e-3))
        y = y * gamma.reshape(shape) + beta.reshape(shape)
    elif t == "Normalization":
        axes = tuple(range(2, x.ndim))
        mean = x.mean(axis=axes, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
        y = (x - mean) / np.sqrt(var + p.get("Epsilon", 1e-3))
        shape = (1, -1) + (1,) * (x.ndim - 2)
        if a.get("Scaling") is not None:
            y = y * a["Scaling"].reshape(shape)
        if a.get("Biases") is not None:
            y = y + a["Biases"].reshape(shape)
    elif t == "Elementwise":
        func = _unwrap(p["Function"])
        if isinstance(func, Expr) and func.head_name == "ScalarFunctionObject":
            y = run_scalar_function(func, x)
        elif isinstance(func, Symbol) and func.name in _SSA_OPS and func.name not in (
                "Ramp", "Tanh", "LogisticSigmoid"):
            y = _SSA_OPS[func.name](x)
        else:
            y = activation(func.name if isinstance(func, Symbol) else func, x)
    elif t == "Resize":
        y = x
        for axis, entry in enumerate(_unwrap(p["Specification"])):
            y = np.repeat(y, entry.args[0], axis=axis + 2)
    elif t == "Catenate":
        level = p.get("Level", 1)
        rank = x[0].ndim - 1
        axis = level if level > 0 else rank + level + 1
        y = np.concatenate(x, axis=axis)
    elif t == "Total":
        y = np.sum(np.stack(x), axis=0)
    elif t == "Threading":
        func = _unwrap(p["Function"])
        if isinstance(func, Expr) and func.head_name == "ScalarFunctionObject":
            y = run_scalar_function(func, *x)
        else:
            y = _SSA_OPS[func.name](*x)
    elif t == "Dropout":
        y = x
    elif t == "Flatten":
        level = _unwrap(p.get("Level"))
        if isinstance(level, int):
            y = x.reshape((x.shape[0], -1) + x.shape[level + 2:])
        else:
            y = x.reshape(x.shape[0], -1)
    elif t == "Linear":
        w = a["Weights"]
        units = w.shape[0]
        y = x.reshape(x.shape[0], -1) @ w.reshape(units, -1).T.astype(np.float64)
        if a.get("Biases") is not None:
            y = y + a["Biases"]
    elif t == "Softmax":
        level = p.get("Level", -1)
        axis = level if level > 0 else x.ndim + level
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        y = e / e.sum(axis=axis, keepdims=True)
    elif t == "Transpose":
        rank = x.ndim - 1
        axes = _transpose_axes(p.get("Specification"), rank, rules_move)
        y = np.transpose(x, [0] + [v + 1 for v in axes])
    elif t == "Reshape":
        out = layer.outputs["Output"]
        y = x.reshape((x.shape[0],) + tuple(out.shape))
    else:
        raise NotImplementedError(f"reference has no semantics for {t}")
    return {"Output": y}


def random_inputs(net, rng: np.random.Generator, batch: int = 2) -> dict[str, np.ndarray]:
    """Random standard-normal inputs for every input port, Wolfram layout with batch."""
    out = {}
    for port, spec in net.inputs.items():
        assert isinstance(spec, TensorType)
        out[port] = rng.standard_normal((batch,) + tuple(spec.shape))
    return out


def to_keras_layout(x: np.ndarray) -> np.ndarray:
    """Wolfram (batch, C, *S) -> Keras (batch, *S, C) for rank >= 2 tensors."""
    return np.moveaxis(x, 1, -1) if x.ndim >= 3 else x
