"""Translate a checked ONNX graph into the ``"wlnet_graph"`` config of legseg's Keras builder.

:func:`describe` emits the same JSON-serialisable config and per-layer weights as
:func:`legseg_tf.wlnet.translator.describe`, so an imported ONNX net is stored (config JSON +
``.weights.h5``) and rebuilt by :func:`legseg_tf.wlnet.translator.build_from_config` exactly
like a ``.wlnet`` net.

Layout. ONNX tensors are batch first and channels first, ``(N, C, s1, ..., sn)``. Dropping
the batch axis gives the same channels-first order as Wolfram's tensors (the "logical"
order: ``wolfram_shape`` in the config). As in the ``.wlnet`` translator every tensor records
which logical axis each stored Keras axis holds: layers that need channels last
(convolution, pooling, normalisation, resize) get it through an explicit ``Permute`` only
when the stored order differs; ``Transpose`` nodes only relabel the order; ``Reshape``,
``Flatten``, ``Gemm`` and ``MatMul`` first restore the logical order so that flattening
follows ONNX's C order. A ``Transpose`` or ``Reshape`` that moves the batch axis is refused.

Model interface: an input of rank >= 3 (batch, C, s...) is fed channels last
``(batch, s..., C)``; an input ``(batch, K)`` as is. Outputs are returned in logical order
(the QMRITools UNET ends with a transpose to ``(z, y, x, classes)``).

Exactness. Every attribute that changes the result is either reproduced or refused with a
one-line :class:`OnnxImportError` naming the node and operator. Chains of elementwise nodes
with scalar constants whose function equals a Keras activation on [-4, 4] to 1e-6 (GELU
written as ``Div``/``Erf``/``Add``/``Mul``, ``x * Sigmoid(x)``, ...) become that one
activation; other arithmetic is translated node by node.
"""
from __future__ import annotations

import logging
import math
import re
from typing import Any

import numpy as np

from legseg_tf.onnxnet.graph import OnnxGraph, OnnxImportError
from legseg_tf.wlnet.emitter import OpEmitter, prune_ops
from legseg_tf.wlnet.emitter import Tensor as _Tensor
from legseg_tf.wlnet.emitter import channels_last as _channels_last
from legseg_tf.wlnet.translator import CONFIG_KIND, CONFIG_VERSION, SEP, Description

LOGGER = logging.getLogger(__name__)


def _logical(rank: int) -> tuple[int, ...]:
    return tuple(range(rank))


def _sanitize(text: str) -> str:
    text = SEP.join(p for p in text.replace("\\", "/").split("/") if p)
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", text).strip("_.") or ""


#: Elementwise functions a fused chain may equal, by config op.
_PROBE = np.linspace(-4.0, 4.0, 81)


def _curves() -> dict[str, tuple[str, dict, np.ndarray]]:
    from scipy.special import erf

    x = _PROBE
    sig = 1.0 / (1.0 + np.exp(-x))
    return {
        "gelu": ("activation", {"activation": "gelu"},
                 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))),
        "gelu_tanh": ("unary", {"function": "gelu_tanh"}, 0.5 * x * (1.0 + np.tanh(
            math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))),
        "silu": ("activation", {"activation": "silu"}, x * sig),
        "sigmoid": ("activation", {"activation": "sigmoid"}, sig),
        "tanh": ("activation", {"activation": "tanh"}, np.tanh(x)),
        "relu": ("activation", {"activation": "relu"}, np.maximum(x, 0.0)),
        "elu": ("activation", {"activation": "elu"}, np.where(x > 0, x, np.expm1(
            np.minimum(x, 0.0)))),
        "softplus": ("activation", {"activation": "softplus"}, np.logaddexp(0.0, x)),
        "linear": ("identity", {}, x),
    }


_UNARY_ONNX = {"Erf": "erf", "Sqrt": "sqrt", "Exp": "exp", "Log": "log", "Abs": "abs",
               "Neg": "neg", "Reciprocal": "reciprocal", "Floor": "floor", "Ceil": "ceil"}
_ACTIVATION_ONNX = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh",
                    "Softplus": "softplus", "Softsign": "softsign"}
_BINARY_ONNX = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Pow": "pow",
                "Max": "max", "Min": "min"}
#: Ops a fused elementwise chain may contain (no attributes that change the result).
_CHAIN_OPS = set(_UNARY_ONNX) | set(_ACTIVATION_ONNX) | set(_BINARY_ONNX) | {
    "Gelu", "Elu", "LeakyRelu"}


def describe(graph: OnnxGraph, *, free_spatial: bool = False) -> Description:
    """Describe the Keras equivalent of ``graph`` (a :func:`read_onnx` result).

    Args:
        graph: the checked ONNX graph.
        free_spatial: leave the spatial input sizes open (None) so that a fully
            convolutional net accepts any valid patch size.

    Returns:
        The ``"wlnet_graph"`` config and the weights per Keras layer name.

    Raises:
        OnnxImportError: for anything without an exact Keras equivalent.
    """
    return _Walker(graph).run(free_spatial)


class _Walker(OpEmitter):
    """Emits config ops node by node; tracks tensors, layouts and strides."""

    def __init__(self, graph: OnnxGraph) -> None:
        self.g = graph
        super().__init__()
        self.tensors: dict[str, _Tensor] = {}
        self.node: Any = None

    # -- helpers -----------------------------------------------------------------------------
    def fail(self, message: str, node: Any = None) -> OnnxImportError:
        node = node if node is not None else self.node
        where = f"{self.g.node_label(node)}: " if node is not None else ""
        return OnnxImportError(f"{self.g.path}: {where}{message}")


    def attrs(self, node, allowed: dict[str, Any]) -> dict[str, Any]:
        """Node attributes with defaults; any attribute not in ``allowed`` is refused."""
        from onnx import helper

        out = dict(allowed)
        for attr in node.attribute:
            if attr.name not in allowed:
                raise self.fail(f"attribute {attr.name!r} is not supported")
            value = helper.get_attribute_value(attr)
            out[attr.name] = value.decode() if isinstance(value, bytes) else value
        return out

    def tensor(self, name: str, what: str = "input") -> _Tensor:
        if name in self.tensors:
            return self.tensors[name]
        if name in self.g.constants:
            raise self.fail(f"{what} {name!r} is a constant; only computed tensors are "
                            f"supported here")
        raise self.fail(f"{what} {name!r} is not produced by any node")

    def const(self, name: str, what: str) -> np.ndarray:
        if name not in self.g.constants:
            raise self.fail(f"{what} {name!r} must be a constant (initializer)")
        return self.g.constants[name]

    def optional_const(self, node, index: int, what: str) -> np.ndarray | None:
        if len(node.input) > index and node.input[index]:
            return self.const(node.input[index], what)
        return None

    def layer_name(self, node, index: int) -> str:
        name = _sanitize(node.name) if node.name else ""
        return name or f"{node.op_type.lower()}_{index}"

    # -- walk --------------------------------------------------------------------------------
    def run(self, free_spatial: bool) -> Description:
        g = self.g
        inputs_cfg = []
        for port, shape in g.inputs.items():
            if len(shape) < 2:
                raise self.fail(f"graph input {port!r} of shape {shape} has no batch axis")
            logical = tuple(shape[1:])
            rank = len(logical)
            name = self.unique(_sanitize(port) or "input")
            if rank >= 2 and logical[0] is None:
                raise self.fail(f"graph input {port!r} has an unknown channel count")
            order = _channels_last(rank)
            keras_shape = [logical[a] for a in order]
            if free_spatial and rank >= 2:
                keras_shape = [None] * (rank - 1) + [logical[0]]
            if not free_spatial and None in keras_shape:
                raise self.fail(f"graph input {port!r} has open dimensions {shape}")
            inputs_cfg.append({"name": name, "port": port, "wolfram_shape": list(logical),
                               "keras_shape": keras_shape,
                               "layout": "channels_last" if rank >= 2 else "as_is"})
            self.tensors[port] = _Tensor(name, logical, order)
        fused, skipped = _fuse_chains(g)
        for index, node in enumerate(g.nodes):
            self.node = node
            if id(node) in skipped:
                continue
            if id(node) in fused:
                source, kind, cfg = fused[id(node)]
                x = self.tensor(source)
                name = self.layer_name(node, index)
                self.tensors[node.output[0]] = x if kind == "identity" else self.emit(
                    name, kind, [x], cfg, x.shape, x.order)
                continue
            handler = getattr(self, f"_op_{node.op_type}", None)
            if handler is None:
                raise self.fail("operator has no Keras translation")
            result = handler(node, self.layer_name(node, index))
            results = result if isinstance(result, list) else [result]
            outputs = [o for o in node.output]
            for k, name in enumerate(outputs):
                if not name:
                    continue
                if k >= len(results) or results[k] is None:
                    if self._consumed(name):
                        raise self.fail(f"output {k} ({name!r}) is not supported")
                    continue
                self._check_shape(name, results[k])
                self.tensors[name] = results[k]
        self.node = None
        outputs_cfg = []
        for port in g.outputs:
            if port not in self.tensors:
                raise self.fail(f"graph output {port!r} is not computed from the inputs")
            t = self.tensors[port]
            t = self.to_order(t, _logical(len(t.shape)), f"output_{_sanitize(port) or 'y'}")
            outputs_cfg.append({"name": t.name, "port": port, "wolfram_shape": list(t.shape),
                                "layout": "wolfram"})
        ops = prune_ops(self.ops, [o["name"] for o in outputs_cfg] )
        kept = {op["name"] for op in ops}
        model = g.model
        config = {
            "kind": CONFIG_KIND, "config_version": CONFIG_VERSION,
            "source": {"file": g.path.name, "format": "onnx", "opset": g.opset,
                       "producer": " ".join(p for p in (model.producer_name,
                                                        model.producer_version) if p)},
            "inputs": inputs_cfg, "outputs": outputs_cfg, "ops": ops,
        }
        weights = {k: v for k, v in self.weights.items() if k in kept}
        return Description(config=config, weights=weights)

    def _consumed(self, name: str) -> bool:
        return name in self.g.outputs or any(name in n.input for n in self.g.nodes)

    def _check_shape(self, name: str, t: _Tensor) -> None:
        inferred = self.g.shapes.get(name)
        if inferred is None or len(inferred) != len(t.shape) + 1:
            if inferred is not None:
                raise self.fail(f"computed rank {len(t.shape) + 1} differs from the inferred "
                                f"shape {inferred}")
            return
        for got, want in zip(t.shape, inferred[1:]):
            if got is not None and want is not None and got != want:
                raise self.fail(f"computed shape {t.shape} differs from the inferred shape "
                                f"{inferred[1:]} (batch axis dropped)")

    # -- convolutions ------------------------------------------------------------------------
    def _spatial_in(self, x: _Tensor, dims: int, name: str) -> _Tensor:
        if len(x.shape) != dims + 1:
            raise self.fail(f"expected a rank-{dims + 2} input (batch, channels, "
                            f"{dims} spatial axes), got shape (N, {', '.join(map(str, x.shape))})")
        return self.to_order(x, _channels_last(dims + 1), name)

    def _kernel_attrs(self, a: dict, dims: int, kernel: list[int]) -> tuple:
        if a.get("kernel_shape") is not None and list(a["kernel_shape"]) != list(kernel):
            raise self.fail(f"kernel_shape {list(a['kernel_shape'])} does not fit the weights "
                            f"{kernel}")
        strides = list(a.get("strides") or [1] * dims)
        dilations = list(a.get("dilations") or [1] * dims)
        pads = list(a.get("pads") or [0] * (2 * dims))
        if len(strides) != dims or len(dilations) != dims or len(pads) != 2 * dims:
            raise self.fail("strides/dilations/pads do not fit the kernel rank")
        if min(strides) < 1 or min(dilations) < 1 or min(pads) < 0:
            raise self.fail("strides and dilations must be >= 1 and pads >= 0")
        return strides, dilations, [(pads[i], pads[i + dims]) for i in range(dims)]

    def _auto_pad(self, mode: str, pads, kernel, strides, dilations, spatial):
        """(pads, keras_same) for auto_pad; keras "same" equals SAME_UPPER for any stride."""
        if mode in ("NOTSET", ""):
            return pads, False
        if mode == "VALID":
            return [(0, 0)] * len(kernel), False
        if mode == "SAME_UPPER":
            return [(0, 0)] * len(kernel), True
        if mode == "SAME_LOWER" and max(strides) == 1:
            totals = [d * (k - 1) for k, d in zip(kernel, dilations)]
            return [(t - t // 2, t // 2) for t in totals], False
        raise self.fail(f"auto_pad {mode!r} is not supported (with stride > 1)")

    def _op_Conv(self, node, name: str) -> _Tensor:
        a = self.attrs(node, {"auto_pad": "NOTSET", "dilations": None, "group": 1,
                              "kernel_shape": None, "pads": None, "strides": None})
        x = self.tensor(node.input[0])
        w = self.const(node.input[1], "weights")
        bias = self.optional_const(node, 2, "bias")
        dims = w.ndim - 2
        if dims not in (1, 2, 3):
            raise self.fail(f"weights of shape {w.shape}: only 1-, 2- and 3-D convolutions")
        kernel = list(w.shape[2:])
        strides, dilations, pads = self._kernel_attrs(a, dims, kernel)
        groups = int(a["group"])
        pads, same = self._auto_pad(a["auto_pad"], pads, kernel, strides, dilations, x.shape)
        if max(strides) > 1 and max(dilations) > 1:
            raise self.fail("stride > 1 together with dilation > 1 has no Keras equivalent")
        x = self._spatial_in(x, dims, name)
        out_ch, in_per_group = int(w.shape[0]), int(w.shape[1])
        if groups < 1 or out_ch % groups or x.shape[0] != in_per_group * groups:
            raise self.fail(f"input channels {x.shape[0]} do not fit weights {w.shape} with "
                            f"group {groups}")
        if bias is not None and bias.shape != (out_ch,):
            raise self.fail(f"bias of shape {bias.shape} does not fit {out_ch} output channels")
        if not same:
            same = max(strides) == 1 and all(
                lo == hi and 2 * lo == d * (k - 1)
                for (lo, hi), k, d in zip(pads, kernel, dilations))
            if not same:
                x = self._pad(x, pads, name)
        if same:
            spatial = tuple(None if s is None else -(-s // st)
                            for s, st in zip(x.shape[1:], strides))
        else:
            spatial = tuple(None if s is None else (s - d * (k - 1) - 1) // st + 1
                            for s, k, st, d in zip(x.shape[1:], kernel, strides, dilations))
        if any(s is not None and s < 1 for s in spatial):
            raise self.fail(f"the kernel does not fit the input of shape {x.shape}")
        kernel_arr = np.transpose(w, tuple(range(2, dims + 2)) + (1, 0))
        cfg = {"rank": dims, "filters": out_ch, "kernel_size": kernel, "strides": strides,
               "dilation_rate": dilations, "groups": groups, "use_bias": bias is not None,
               "padding": "same" if same else "valid"}
        return self.emit(name, "conv", [x], cfg, (out_ch,) + spatial, _channels_last(dims + 1),
                         [kernel_arr] + ([bias] if bias is not None else []))

    def _op_ConvTranspose(self, node, name: str) -> _Tensor:
        a = self.attrs(node, {"auto_pad": "NOTSET", "dilations": None, "group": 1,
                              "kernel_shape": None, "output_padding": None,
                              "output_shape": None, "pads": None, "strides": None})
        x = self.tensor(node.input[0])
        w = self.const(node.input[1], "weights")
        bias = self.optional_const(node, 2, "bias")
        dims = w.ndim - 2
        if dims not in (1, 2, 3):
            raise self.fail(f"weights of shape {w.shape}: only 1-, 2- and 3-D")
        kernel = list(w.shape[2:])
        strides, dilations, pads = self._kernel_attrs(a, dims, kernel)
        if int(a["group"]) != 1 or max(dilations) != 1:
            raise self.fail("grouped or dilated ConvTranspose is not supported")
        if a["output_shape"] is not None:
            raise self.fail("attribute 'output_shape' is not supported (give pads)")
        if a["auto_pad"] not in ("NOTSET", "", "VALID"):
            raise self.fail(f"auto_pad {a['auto_pad']!r} is not supported")
        if a["auto_pad"] == "VALID":
            pads = [(0, 0)] * dims
        out_pad = list(a["output_padding"] or [0] * dims)
        x = self._spatial_in(x, dims, name)
        in_ch, out_ch = int(w.shape[0]), int(w.shape[1])
        if x.shape[0] != in_ch:
            raise self.fail(f"input channels {x.shape[0]} do not fit weights {w.shape}")
        if bias is not None and bias.shape != (out_ch,):
            raise self.fail(f"bias of shape {bias.shape} does not fit {out_ch} output channels")
        kernel_arr = np.transpose(w, tuple(range(2, dims + 2)) + (1, 0))
        cfg = {"rank": dims, "filters": out_ch, "kernel_size": kernel, "strides": strides,
               "use_bias": bias is not None}
        keras_len = [None if s is None else s * st + max(k - st, 0)
                     for s, k, st in zip(x.shape[1:], kernel, strides)]
        y = self.emit(name, "conv_transpose", [x], cfg, (out_ch,) + tuple(keras_len),
                      _channels_last(dims + 1),
                      [kernel_arr] + ([bias] if bias is not None else []))
        crops = [(lo, max(st - k, 0) - op + hi)
                 for (lo, hi), k, st, op in zip(pads, kernel, strides, out_pad)]
        if any(c < 0 for pair in crops for c in pair):
            raise self.fail(f"output_padding {out_pad} beyond the kernel's reach is not "
                            f"supported")
        if not any(lo or hi for lo, hi in crops):
            return y
        shape = (out_ch,) + tuple(None if s is None else s - lo - hi
                                  for s, (lo, hi) in zip(keras_len, crops))
        return self.emit(f"{name}_crop", "crop", [y],
                         {"rank": dims, "cropping": [list(c) for c in crops]}, shape, y.order)

    def _pool(self, node, name: str, kind: str) -> _Tensor:
        allowed = {"auto_pad": "NOTSET", "ceil_mode": 0, "dilations": None,
                   "kernel_shape": None, "pads": None, "strides": None}
        if kind == "max_pool":
            allowed["storage_order"] = 0  # only affects the Indices output (refused)
        else:
            allowed["count_include_pad"] = 0
        a = self.attrs(node, allowed)
        x = self.tensor(node.input[0])
        dims = len(x.shape) - 1
        kernel = list(a["kernel_shape"] or [])
        if len(kernel) != dims:
            raise self.fail(f"kernel_shape {kernel} does not fit input rank {dims + 2}")
        strides, dilations, pads = self._kernel_attrs(a, dims, kernel)
        if max(dilations) > 1:
            raise self.fail("dilated pooling is not supported")
        x = self._spatial_in(x, dims, name)
        padding = "valid"
        pads, same = self._auto_pad(a["auto_pad"], pads, kernel, strides, dilations, x.shape)
        padded = any(lo or hi for lo, hi in pads)
        if kind == "avg_pool" and a["count_include_pad"]:
            if same:
                raise self.fail("auto_pad SAME with count_include_pad=1 is not supported")
            x = self._pad(x, pads, name)  # padded zeros count in the average
        elif same:
            padding = "same"  # Keras "same" pooling ignores the padded cells, as ONNX does
        elif padded:
            if not (max(strides) == 1 and all(lo == hi and 2 * lo == k - 1
                                              for (lo, hi), k in zip(pads, kernel))):
                raise self.fail(f"pads {pads} are not supported for this pooling (only "
                                f"symmetric stride-1 'same' padding, or zero-counting "
                                f"average pooling)")
            padding = "same"
        spatial = []
        for s, k, st in zip(x.shape[1:], kernel, strides):
            if s is None:
                spatial.append(None)
            elif padding == "same":
                spatial.append(-(-s // st))
            else:
                if a["ceil_mode"] and (s - k) % st:
                    raise self.fail("ceil_mode with a partial last window is not supported")
                spatial.append((s - k) // st + 1)
        cfg = {"rank": dims, "pool_size": kernel, "strides": strides}
        if padding == "same":
            cfg["padding"] = "same"
        return self.emit(name, kind, [x], cfg, (x.shape[0],) + tuple(spatial), x.order)

    def _op_MaxPool(self, node, name: str) -> _Tensor:
        return self._pool(node, name, "max_pool")

    def _op_AveragePool(self, node, name: str) -> _Tensor:
        return self._pool(node, name, "avg_pool")

    # -- normalisation -----------------------------------------------------------------------
    def _op_BatchNormalization(self, node, name: str) -> _Tensor:
        a = self.attrs(node, {"epsilon": 1e-5, "momentum": 0.9, "spatial": 1,
                              "training_mode": 0, "is_test": 1, "consumed_inputs": None})
        if a["training_mode"] or not a["spatial"]:
            raise self.fail("training-mode or non-spatial batch normalisation is not "
                            "supported")
        if len([o for o in node.output if o]) > 1:
            raise self.fail("the running-statistics outputs are not supported")
        x = self.tensor(node.input[0])
        if len(x.shape) < 1 or x.shape[0] is None:
            raise self.fail("channel count unknown")
        ch = x.shape[0]
        params = [self.const(node.input[k], what).astype(np.float32).reshape(-1)
                  for k, what in ((1, "scale"), (2, "bias"), (3, "mean"), (4, "variance"))]
        if any(p.shape != (ch,) for p in params):
            raise self.fail(f"parameter shapes {[p.shape for p in params]} do not fit {ch} "
                            f"channels")
        x = self.to_order(x, _channels_last(len(x.shape)), name)
        return self.emit(name, "batch_norm", [x], {"epsilon": float(a["epsilon"])}, x.shape,
                         x.order, params)

    def _op_InstanceNormalization(self, node, name: str) -> _Tensor:
        a = self.attrs(node, {"epsilon": 1e-5})
        x = self.tensor(node.input[0])
        if len(x.shape) < 2 or x.shape[0] is None:
            raise self.fail("instance normalisation needs (N, C, spatial...) input")
        ch = x.shape[0]
        gamma = self.const(node.input[1], "scale").astype(np.float32).reshape(-1)
        beta = self.const(node.input[2], "bias").astype(np.float32).reshape(-1)
        if gamma.shape != (ch,) or beta.shape != (ch,):
            raise self.fail(f"scale/bias shapes do not fit {ch} channels")
        x = self.to_order(x, _channels_last(len(x.shape)), name)
        cfg = {"channels": int(ch), "epsilon": float(a["epsilon"]), "scale": True,
               "center": True}
        return self.emit(name, "instance_norm", [x], cfg, x.shape, x.order, [gamma, beta])

    # -- activations -------------------------------------------------------------------------
    def _activation(self, node, name: str, activation: str) -> _Tensor:
        x = self.tensor(node.input[0])
        return self.emit(name, "activation", [x], {"activation": activation}, x.shape,
                         x.order)

    def _op_Relu(self, node, name):
        self.attrs(node, {})
        return self._activation(node, name, "relu")

    def _op_Sigmoid(self, node, name):
        self.attrs(node, {})
        return self._activation(node, name, "sigmoid")

    def _op_Tanh(self, node, name):
        self.attrs(node, {})
        return self._activation(node, name, "tanh")

    def _op_Softplus(self, node, name):
        self.attrs(node, {})
        return self._activation(node, name, "softplus")

    def _op_Softsign(self, node, name):
        self.attrs(node, {})
        return self._activation(node, name, "softsign")

    def _op_Selu(self, node, name):
        a = self.attrs(node, {"alpha": 1.67326319217681884765625,
                              "gamma": 1.05070102214813232421875})
        if abs(a["alpha"] - 1.6732632) > 1e-6 or abs(a["gamma"] - 1.0507010) > 1e-6:
            raise self.fail("Selu with non-default alpha/gamma is not supported")
        return self._activation(node, name, "selu")

    def _op_Gelu(self, node, name):
        a = self.attrs(node, {"approximate": "none"})
        if a["approximate"] == "none":
            return self._activation(node, name, "gelu")
        if a["approximate"] == "tanh":
            x = self.tensor(node.input[0])
            return self.emit(name, "unary", [x], {"function": "gelu_tanh"}, x.shape, x.order)
        raise self.fail(f"approximate={a['approximate']!r} is not supported")

    def _op_Elu(self, node, name):
        a = self.attrs(node, {"alpha": 1.0})
        if a["alpha"] == 1.0:
            return self._activation(node, name, "elu")
        x = self.tensor(node.input[0])
        return self.emit(name, "elu", [x], {"alpha": float(a["alpha"])}, x.shape, x.order)

    def _op_LeakyRelu(self, node, name):
        a = self.attrs(node, {"alpha": 0.01})
        x = self.tensor(node.input[0])
        return self.emit(name, "leaky_relu", [x], {"negative_slope": float(a["alpha"])},
                         x.shape, x.order)

    def _op_PRelu(self, node, name):
        self.attrs(node, {})
        x = self.tensor(node.input[0])
        slope = self.const(node.input[1], "slope").astype(np.float32)
        logical = self._broadcast_constant(slope, x)
        stored = np.transpose(logical, x.order)
        shared = [k + 1 for k, d in enumerate(stored.shape) if d == 1]
        for k, d in enumerate(stored.shape):
            if d != 1 and x.shape[x.order[k]] != d:
                raise self.fail(f"slope of shape {slope.shape} does not fit {x.shape}")
        if any(x.shape[x.order[k - 1]] is None for k in range(1, len(x.shape) + 1)
               if k not in shared):
            raise self.fail("slope varies along an axis of open size")
        return self.emit(name, "prelu", [x], {"shared_axes": shared}, x.shape, x.order,
                         [stored])

    def _unary(self, node, name, function: str) -> _Tensor:
        self.attrs(node, {})
        x = self.tensor(node.input[0])
        return self.emit(name, "unary", [x], {"function": function}, x.shape, x.order)

    def __getattr__(self, attr: str):
        if attr.startswith("_op_") and attr[4:] in _UNARY_ONNX:
            function = _UNARY_ONNX[attr[4:]]
            return lambda node, name: self._unary(node, name, function)
        if attr.startswith("_op_") and attr[4:] in _BINARY_ONNX:
            return lambda node, name: self._binary(node, name, _BINARY_ONNX[attr[4:]])
        raise AttributeError(attr)

    # -- arithmetic --------------------------------------------------------------------------
    def _broadcast_constant(self, c: np.ndarray, x: _Tensor) -> np.ndarray:
        """Constant broadcast against (N, *x.shape) -> logical shape without batch."""
        rank = len(x.shape) + 1
        if c.ndim > rank:
            raise self.fail(f"constant of shape {c.shape} has a higher rank than the tensor")
        full = c.reshape((1,) * (rank - c.ndim) + c.shape)
        if full.shape[0] != 1:
            raise self.fail(f"constant of shape {c.shape} varies along the batch axis")
        logical = full[0]
        for d, s in zip(logical.shape, x.shape):
            if d != 1 and s is not None and d != s:
                raise self.fail(f"constant of shape {c.shape} does not broadcast to the "
                                f"tensor's shape (N, {', '.join(map(str, x.shape))})")
            if d != 1 and s is None:
                raise self.fail("constant varies along an axis of open size")
        return logical

    def _binary(self, node, name: str, op: str) -> _Tensor:
        self.attrs(node, {})
        if len(node.input) != 2:
            raise self.fail("expected two inputs")
        names = list(node.input)
        const = [n in self.g.constants for n in names]
        if all(const):
            raise self.fail("constant expression was not folded")
        if any(const):
            k = const.index(True)
            x = self.tensor(names[1 - k])
            c = self._broadcast_constant(np.asarray(self.g.constants[names[k]], np.float32), x)
            if c.size == 1:
                c = c.reshape(())
                if op in ("add", "sub") and c == 0 and k == 1 or op in ("mul", "div") and \
                        c == 1 and k == 1:
                    return x  # x + 0, x - 0, x * 1, x / 1
            stored = np.transpose(c, x.order) if c.ndim else c
            cfg = {"op": op, "constant_shape": list(stored.shape), "constant_first": k == 0}
            return self.emit(name, "const_arith", [x], cfg, x.shape, x.order, [stored])
        a, b = self.tensor(names[0]), self.tensor(names[1])
        if len(a.shape) != len(b.shape):
            raise self.fail(f"inputs of ranks {len(a.shape) + 1} and {len(b.shape) + 1}: "
                            f"broadcasting across ranks is not supported")
        b = self.to_order(b, a.order, name)
        shape = []
        for da, db in zip(a.shape, b.shape):
            if da is not None and db is not None and da != db and 1 not in (da, db):
                raise self.fail(f"shapes {a.shape} and {b.shape} do not broadcast")
            shape.append(max(da, db) if None not in (da, db) else (da if db == 1 else db))
        if tuple(shape) == a.shape == b.shape and op in ("add", "mul"):
            kind = "add" if op == "add" else "multiply"
            return self.emit(name, kind, [a, b], {}, a.shape, a.order)
        return self.emit(name, "arith", [a, b], {"op": op}, tuple(shape), a.order)

    def _op_Sum(self, node, name):
        self.attrs(node, {})
        values = [self.tensor(n) for n in node.input]
        if len({v.shape for v in values}) != 1:
            raise self.fail(f"inputs of shapes {[v.shape for v in values]}: Sum needs equal "
                            f"shapes")
        if len(values) == 1:
            return values[0]
        order = values[0].order
        values = [self.to_order(v, order, name) for v in values]
        return self.emit(name, "add", values, {}, values[0].shape, order)

    # -- structure ---------------------------------------------------------------------------
    def _op_Identity(self, node, name):
        self.attrs(node, {})
        return self.tensor(node.input[0])

    def _op_Dropout(self, node, name):
        a = self.attrs(node, {"ratio": 0.5, "seed": None, "is_test": 1})
        if len(node.input) > 2 and node.input[2]:
            mode = self.g.constants.get(node.input[2])
            if mode is None or bool(np.asarray(mode).reshape(-1)[0]):
                raise self.fail("training_mode must be a constant false")
        del a
        return [self.tensor(node.input[0]), None]

    def _op_Cast(self, node, name):
        a = self.attrs(node, {"to": 1, "saturate": 1})
        if a["to"] != 1:
            raise self.fail("only casts to float32 are supported on computed tensors")
        return self.tensor(node.input[0])

    def _op_Concat(self, node, name):
        a = self.attrs(node, {"axis": None})
        values = [self.tensor(n) for n in node.input]
        rank = len(values[0].shape) + 1
        if a["axis"] is None or any(len(v.shape) + 1 != rank for v in values):
            raise self.fail("Concat needs an axis and inputs of equal rank")
        axis = a["axis"] + rank if a["axis"] < 0 else a["axis"]
        if axis == 0:
            raise self.fail("concatenation along the batch axis is not supported")
        axis -= 1
        for v in values[1:]:
            if any(x != y for i, (x, y) in enumerate(zip(v.shape, values[0].shape))
                   if i != axis and None not in (x, y)):
                raise self.fail(f"shapes {[v.shape for v in values]} differ off axis "
                                f"{axis + 1}")
        if len(values) == 1:
            return values[0]
        order = values[0].order
        values = [self.to_order(v, order, name) for v in values]
        sizes = [v.shape[axis] for v in values]
        shape = list(values[0].shape)
        shape[axis] = None if None in sizes else sum(sizes)
        return self.emit(name, "concat", values, {"axis": order.index(axis) + 1}, tuple(shape),
                         order)

    def _op_Transpose(self, node, name):
        a = self.attrs(node, {"perm": None})
        x = self.tensor(node.input[0])
        rank = len(x.shape) + 1
        perm = list(a["perm"]) if a["perm"] is not None else list(range(rank))[::-1]
        if sorted(perm) != list(range(rank)):
            raise self.fail(f"bad perm {perm}")
        if perm[0] != 0:
            raise self.fail(f"perm {perm} moves the batch axis")
        p = [q - 1 for q in perm[1:]]
        inverse = {src: dst for dst, src in enumerate(p)}
        shape = tuple(x.shape[p[j]] for j in range(rank - 1))
        return _Tensor(x.name, shape, tuple(inverse[q] for q in x.order))

    def _reshape(self, x: _Tensor, shape: tuple, name: str) -> _Tensor:
        x = self.to_order(x, _logical(len(x.shape)), f"{name}_channels_first")
        if tuple(x.shape) == tuple(shape):
            return x
        return self.emit(name, "reshape", [x], {"target_shape": list(shape)}, shape,
                         _logical(len(shape)))

    def _op_Reshape(self, node, name):
        a = self.attrs(node, {"allowzero": 0, "shape": None})
        x = self.tensor(node.input[0])
        if None in x.shape:
            raise self.fail("reshaping a tensor with open dimensions is not supported")
        target = [int(v) for v in (self.const(node.input[1], "shape").reshape(-1)
                                   if len(node.input) > 1 else a["shape"] or [])]
        if not target:
            raise self.fail("reshape to a scalar is not supported")
        if target[0] not in (0, -1, self.g.batch) or (target[0] == 0 and a["allowzero"]):
            raise self.fail(f"target shape {target} does not keep the batch axis first")
        rest = target[1:]
        if target[0] == -1 and -1 in rest:
            raise self.fail(f"target shape {target} has two -1 entries")
        total = int(np.prod(x.shape)) if x.shape else 1
        resolved = []
        for k, v in enumerate(rest):
            if v == 0 and not a["allowzero"]:
                if k + 1 >= len(x.shape) + 1:
                    raise self.fail(f"target shape {target}: 0 copies a missing axis")
                v = x.shape[k]
            resolved.append(v)
        if -1 in resolved:
            known = int(np.prod([v for v in resolved if v != -1])) if len(resolved) > 1 else 1
            if known <= 0 or total % known:
                raise self.fail(f"cannot reshape {x.shape} to {target}")
            resolved[resolved.index(-1)] = total // known
        if any(v < 0 for v in resolved) or int(np.prod(resolved)) != total:
            raise self.fail(f"cannot reshape (N, {', '.join(map(str, x.shape))}) to {target} "
                            f"keeping the batch axis")
        return self._reshape(x, tuple(resolved), name)

    def _op_Flatten(self, node, name):
        a = self.attrs(node, {"axis": 1})
        x = self.tensor(node.input[0])
        axis = a["axis"] + len(x.shape) + 1 if a["axis"] < 0 else a["axis"]
        if axis != 1:
            raise self.fail(f"Flatten axis {a['axis']} mixes the batch axis (only axis 1)")
        if None in x.shape:
            raise self.fail("flattening a tensor with open dimensions is not supported")
        return self._reshape(x, (int(np.prod(x.shape)),), name)

    def _dense(self, x: _Tensor, kernel: np.ndarray, bias: np.ndarray | None,
               name: str) -> _Tensor:
        x = self.to_order(x, _logical(len(x.shape)), f"{name}_channels_first")
        units = int(kernel.shape[1])
        return self.emit(name, "dense", [x], {"units": units, "use_bias": bias is not None},
                         x.shape[:-1] + (units,), _logical(len(x.shape)),
                         [kernel] + ([bias] if bias is not None else []))

    def _op_Gemm(self, node, name):
        a = self.attrs(node, {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0,
                              "broadcast": None})
        x = self.tensor(node.input[0])
        if a["transA"] or len(x.shape) != 1:
            raise self.fail("Gemm needs a (batch, features) input A without transA")
        b = self.const(node.input[1], "B").astype(np.float32)
        kernel = (b.T if a["transB"] else b) * np.float32(a["alpha"])
        if kernel.ndim != 2 or kernel.shape[0] != x.shape[0]:
            raise self.fail(f"B of shape {b.shape} does not fit {x.shape[0]} input features")
        c = self.optional_const(node, 2, "C")
        bias = None
        if c is not None:
            c = np.asarray(c, np.float32) * np.float32(a["beta"])
            if c.size == 1:
                bias = np.full(kernel.shape[1], c.reshape(()), np.float32)
            elif c.reshape(-1).shape == (kernel.shape[1],) and c.ndim <= 2 and \
                    (c.ndim < 2 or c.shape[0] == 1):
                bias = c.reshape(-1)
            else:
                raise self.fail(f"C of shape {c.shape} is not a per-output bias")
        return self._dense(x, kernel, bias, name)

    def _op_MatMul(self, node, name):
        self.attrs(node, {})
        x = self.tensor(node.input[0])
        b = self.const(node.input[1], "B").astype(np.float32)
        if b.ndim != 2 or not x.shape or x.shape[-1] != b.shape[0]:
            raise self.fail(f"B of shape {b.shape} does not fit A of shape (N, "
                            f"{', '.join(map(str, x.shape))}) (only a constant 2-D B)")
        return self._dense(x, b, None, name)

    def _op_Softmax(self, node, name):
        a = self.attrs(node, {"axis": -1 if self.g.opset >= 13 else 1})
        x = self.tensor(node.input[0])
        rank = len(x.shape) + 1
        axis = a["axis"] + rank if a["axis"] < 0 else a["axis"]
        if not 1 <= axis < rank:
            raise self.fail(f"softmax axis {a['axis']} is the batch axis or out of range")
        if self.g.opset < 13 and any(d != 1 for d in x.shape[axis:]):
            # opsets < 13 normalise over all axes from `axis` on
            raise self.fail(f"opset-{self.g.opset} softmax over several axes "
                            f"({x.shape[axis - 1:]}) is not supported")
        return self.emit(name, "softmax", [x], {"axis": x.order.index(axis - 1) + 1},
                         x.shape, x.order)

    # -- resampling --------------------------------------------------------------------------
    def _upsample(self, x: _Tensor, scales: list[float], name: str) -> _Tensor:
        rank = len(x.shape) + 1
        if len(scales) != rank:
            raise self.fail(f"{len(scales)} scales for a rank-{rank} input")
        if scales[0] != 1 or scales[1] != 1:
            raise self.fail(f"scales {scales}: the batch and channel axes must not be resized")
        factors = []
        for s in scales[2:]:
            if s < 1 or abs(s - round(s)) > 1e-6:
                raise self.fail(f"scales {scales}: only integer up-sampling factors are "
                                f"supported")
            factors.append(int(round(s)))
        dims = rank - 2
        x = self._spatial_in(x, dims, name)
        shape = (x.shape[0],) + tuple(None if s is None else s * f
                                      for s, f in zip(x.shape[1:], factors))
        return self.emit(name, "upsample", [x], {"rank": dims, "size": factors}, shape,
                         x.order)

    def _op_Upsample(self, node, name):
        a = self.attrs(node, {"mode": "nearest", "scales": None})
        if a["mode"] != "nearest":
            raise self.fail(f"mode {a['mode']!r} is not supported (only nearest)")
        x = self.tensor(node.input[0])
        scales = a["scales"] if a["scales"] is not None else \
            self.const(node.input[1], "scales").reshape(-1).tolist()
        return self._upsample(x, [float(s) for s in scales], name)

    def _op_Resize(self, node, name):
        a = self.attrs(node, {
            "mode": "nearest", "coordinate_transformation_mode": "half_pixel"
            if self.g.opset >= 11 else "asymmetric",
            "nearest_mode": "round_prefer_floor" if self.g.opset >= 11 else "floor",
            "cubic_coeff_a": -0.75, "exclude_outside": 0, "extrapolation_value": 0.0,
            "antialias": 0, "axes": None, "keep_aspect_ratio_policy": "stretch"})
        if a["mode"] != "nearest":
            raise self.fail(f"mode {a['mode']!r} is not supported (only nearest)")
        ctm = a["coordinate_transformation_mode"]
        x = self.tensor(node.input[0])
        rank = len(x.shape) + 1
        if self.g.opset < 11:
            scales = self.const(node.input[1], "scales").reshape(-1).astype(float).tolist()
            sizes = None
        else:
            scales = self.optional_const(node, 2, "scales")
            sizes = self.optional_const(node, 3, "sizes")
            scales = None if scales is None or scales.size == 0 else \
                scales.reshape(-1).astype(float).tolist()
        axes = list(a["axes"]) if a["axes"] is not None else None
        if sizes is not None and sizes.size:
            if a["keep_aspect_ratio_policy"] != "stretch":
                raise self.fail("keep_aspect_ratio_policy other than 'stretch' is not "
                                "supported")
            sizes = sizes.reshape(-1).tolist()
            full = [None] * rank
            source = [self.g.batch] + list(x.shape)
            for k, ax in enumerate(axes if axes is not None else range(rank)):
                if source[ax] is None:
                    raise self.fail("sizes on an axis of open size are not supported")
                full[ax] = sizes[k] / source[ax]
            scales = [1.0 if s is None else s for s in full]
            LOGGER.info("%s: Resize sizes %s taken as factors %s", node.name, sizes, scales)
        elif scales is None:
            raise self.fail("neither scales nor sizes are given")
        elif axes is not None:
            full = [1.0] * rank
            for ax, s in zip(axes, scales):
                full[ax + rank if ax < 0 else ax] = s
            scales = full
        for s in scales[2:]:
            if s >= 1 and abs(s - round(s)) <= 1e-6 and not _nearest_repeats(
                    ctm, a["nearest_mode"], int(round(s))):
                raise self.fail(f"coordinate_transformation_mode {ctm!r} with nearest_mode "
                                f"{a['nearest_mode']!r} does not repeat pixels for factor "
                                f"{int(round(s))}")
        return self._upsample(x, scales, name)


def _nearest_repeats(ctm: str, nearest_mode: str, factor: int) -> bool:
    """Whether ONNX nearest resizing by an integer factor copies each input pixel ``factor``
    times (output i takes input i // factor) for every input length 1..12."""
    if ctm in ("align_corners", "tf_crop_and_resize"):
        return factor == 1
    for length in range(1, 13):
        out_len = length * factor
        i = np.arange(out_len, dtype=np.float64)
        if ctm == "half_pixel" or (ctm == "pytorch_half_pixel" and out_len > 1):
            src = (i + 0.5) / factor - 0.5
        elif ctm == "pytorch_half_pixel":
            src = np.zeros_like(i)
        elif ctm in ("asymmetric", "tf_half_pixel_for_nn"):
            src = i / factor + (0.5 / factor if ctm == "tf_half_pixel_for_nn" else 0.0)
        elif ctm == "half_pixel_symmetric":
            adjustment = out_len / (length * factor)
            center = length / 2.0
            offset = center * (1 - adjustment)
            src = offset + (i + 0.5) / factor - 0.5
        else:
            return False
        frac = src - np.floor(src)
        if nearest_mode == "floor":
            idx = np.floor(src)
        elif nearest_mode == "ceil":
            idx = np.ceil(src)
        elif nearest_mode == "round_prefer_floor":
            idx = np.where(frac == 0.5, np.floor(src), np.round(src))
        elif nearest_mode == "round_prefer_ceil":
            idx = np.where(frac == 0.5, np.ceil(src), np.round(src))
        else:
            return False
        idx = np.clip(idx, 0, length - 1)
        if not np.array_equal(idx, np.arange(out_len) // factor):
            return False
    return True




# --------------------------------------------------------------------------------------------
# elementwise chains -> one activation
# --------------------------------------------------------------------------------------------

def _fuse_chains(graph: OnnxGraph) -> tuple[dict[int, tuple[str, str, dict]], set[int]]:
    """Find chains of elementwise nodes equal to one activation.

    For each elementwise node (last first) the candidate chains end at that node and start
    at one tensor ``x`` (every other input of the chain is a scalar constant, and no inner
    result is used outside the chain); the longest chain whose function equals a known
    activation on [-4, 4] to 1e-6 is taken.

    Returns:
        (fused, skipped): ``fused`` maps the id of a chain's last node to (source tensor,
        config op kind, config); ``skipped`` holds the ids of the chain's other nodes.
    """
    nodes = graph.nodes
    index = {id(n): k for k, n in enumerate(nodes)}
    producer = {out: n for n in nodes for out in n.output if out}
    consumers = graph.consumers()
    outputs = set(graph.outputs)
    curves = None
    fused: dict[int, tuple[str, str, dict]] = {}
    claimed: set[int] = set()

    def position(name: str) -> int:
        return index[id(producer[name])] if name in producer else -1

    def cone(root, stop: str | None):
        """(members, non-constant leaves) of the chain ending at root, stopping at ``stop``."""
        members = {id(root): root}
        frontier = {t for t in root.input if t}
        leaves: set[str] = set()
        while frontier:
            t = max(frontier, key=position)
            frontier.discard(t)
            if t in graph.constants:
                if graph.constants[t].size != 1:
                    return None, None
                continue
            p = producer.get(t)
            if (t != stop and p is not None and id(p) not in claimed and _chain_node(graph, p)
                    and t not in outputs and len([o for o in p.output if o]) == 1
                    and all(id(c) in members for c in consumers.get(t, []))):
                members[id(p)] = p
                frontier.update(n for n in p.input if n)
            else:
                leaves.add(t)
        return members, leaves

    for root in reversed(nodes):
        if id(root) in claimed or not _chain_node(graph, root):
            continue
        widest, leaves = cone(root, None)
        if widest is None or len(widest) < 2:
            continue
        # candidate sources: the leaves and every tensor inside the widest chain, the
        # earliest (longest chain) first
        inner = {o for n in widest.values() for o in n.output if o} - {root.output[0]}
        for source in sorted(leaves | inner, key=position):
            members, found = cone(root, source)
            if members is None or len(members) < 2 or found != {source}:
                continue
            values = _evaluate_chain(graph, root, source, producer, members)
            if values is None:
                continue
            curves = curves or _curves()
            match = next((k for k, (_, _, ref) in curves.items()
                          if np.max(np.abs(values - ref)) <= 1e-6), None)
            if match is not None:
                kind, cfg, _ = curves[match]
                fused[id(root)] = (source, kind, cfg)
                claimed.update(members)
                LOGGER.info("%d elementwise nodes ending in %r equal %s", len(members),
                            root.name, match)
                break
    skipped = claimed - set(fused)
    return fused, skipped


def _chain_node(graph: OnnxGraph, node) -> bool:
    if node.op_type not in _CHAIN_OPS or len([o for o in node.output if o]) != 1:
        return False
    allowed = {"Gelu": {"approximate"}, "Elu": {"alpha"}, "LeakyRelu": {"alpha"}}
    return all(a.name in allowed.get(node.op_type, set()) for a in node.attribute)


def _evaluate_chain(graph, root, source, producer, members) -> np.ndarray | None:
    from onnx import helper
    from scipy.special import erf

    cache: dict[str, np.ndarray] = {source: _PROBE}

    def value(name: str) -> np.ndarray:
        if name in cache:
            return cache[name]
        if name in graph.constants:
            return np.asarray(graph.constants[name], np.float64).reshape(())
        node = producer[name]
        args = [value(n) for n in node.input if n]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        op = node.op_type
        unary = {"Erf": erf, "Sqrt": np.sqrt, "Exp": np.exp, "Log": np.log, "Abs": np.abs,
                 "Neg": np.negative, "Reciprocal": lambda v: 1.0 / v, "Floor": np.floor,
                 "Ceil": np.ceil, "Relu": lambda v: np.maximum(v, 0.0),
                 "Sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v)), "Tanh": np.tanh,
                 "Softplus": lambda v: np.logaddexp(0.0, v),
                 "Softsign": lambda v: v / (1.0 + np.abs(v))}
        binary = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide,
                  "Pow": np.power, "Max": np.maximum, "Min": np.minimum}
        if op in unary:
            out = unary[op](args[0])
        elif op in binary and len(args) == 2:
            out = binary[op](args[0], args[1])
        elif op in ("Max", "Min") and args:
            out = args[0]
            for v in args[1:]:
                out = binary[op](out, v)
        elif op == "Elu":
            alpha = attrs.get("alpha", 1.0)
            out = np.where(args[0] > 0, args[0], alpha * np.expm1(np.minimum(args[0], 0)))
        elif op == "LeakyRelu":
            out = np.where(args[0] >= 0, args[0], attrs.get("alpha", 0.01) * args[0])
        elif op == "Gelu":
            v = args[0]
            if attrs.get("approximate", b"none") in (b"tanh", "tanh"):
                out = 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))
            else:
                out = 0.5 * v * (1 + erf(v / math.sqrt(2)))
        else:
            raise ValueError(op)
        cache[name] = np.broadcast_to(out, _PROBE.shape)
        return cache[name]

    try:
        with np.errstate(all="ignore"):
            out = value(root.output[0])
    except (ValueError, KeyError, TypeError):
        return None
    return out if np.all(np.isfinite(out)) else None
