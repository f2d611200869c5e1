"""Translate a decoded Wolfram net into an equivalent Keras 3 functional model.

Two steps, so that a converted model can be stored as JSON + ``.weights.h5`` and rebuilt:

1. :func:`describe` walks the Wolfram graph (containers, edges, operator sub-nets) and emits
   a JSON-serialisable config of kind ``"wlnet_graph"``: a topologically ordered list of
   Keras-level operations (channels-last), plus the converted weights per Keras layer.
2. :func:`build_from_config` turns such a config into a ``keras.Model`` (no weights);
   :func:`translate` does both and loads the weights.

Layout rules. Wolfram tensors are channels first, ``(C, s1, ..., sn)``; Keras layers want
channels last. Every tensor carries the order in which its Wolfram axes are stored; layers
that need channels last (convolution, pooling, normalisation, resize) get it through an
explicit ``Permute`` only when the stored order differs, ``TransposeLayer`` only relabels the
order (no op), and ``Flatten``/``Linear``/``Reshape`` first restore Wolfram order so that the
flattening order is Wolfram's (C-order over channels-first dims).

Model interface: an input port of rank >= 2 is fed channels last, ``(batch, s1..sn, C)``;
rank 0/1 inputs as is. Output ports are returned in Wolfram axis order (the QMRITools UNETs
already end with a transpose to ``(z, y, x, classes)``). One input/output port gives a plain
tensor, several give dicts keyed by the Wolfram port names.

Padding is reproduced exactly: explicit ``ZeroPadding`` + ``"valid"`` layers, except for
stride-1 convolutions with symmetric padding ``(k - 1) / 2``, which are exactly ``"same"``.
Keras layer names are the Wolfram node paths joined by ``__`` (``enc_1__block__con__1``);
helper layers without Wolfram counterpart append a suffix such as ``_pad`` or ``_crop``.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from legseg_tf.wlnet.emitter import OpEmitter, prune_ops
from legseg_tf.wlnet.emitter import Tensor as _Tensor
from legseg_tf.wlnet.emitter import channels_last as _channels_last
from legseg_tf.wlnet.expr import Expr, Symbol, WlnetError, to_wl_text
from legseg_tf.wlnet.reader import (
    Container, Layer, Node, PortRef, TensorType, WlnetFile, unwrap,
)
from legseg_tf.wlnet.scalar import NAMED, ScalarProgram, ScalarProgramError, recognise

LOGGER = logging.getLogger(__name__)

CONFIG_KIND = "wlnet_graph"
CONFIG_VERSION = 1
SEP = "__"

#: Wolfram ``ElementwiseLayer`` functions (symbols or names) -> Keras activation names.
ACTIVATIONS = {
    "Ramp": "relu", "ReLU": "relu", "RectifiedLinearUnit": "relu", "Tanh": "tanh",
    "LogisticSigmoid": "sigmoid", "Sigmoid": "sigmoid", "ELU": "elu",
    "ExponentialLinearUnit": "elu", "SELU": "selu", "ScaledExponentialLinearUnit": "selu",
    "GELU": "gelu", "GaussianErrorLinearUnit": "gelu", "SoftPlus": "softplus",
    "Softplus": "softplus", "Swish": "silu", "SiLU": "silu", "Exp": "exponential",
    "SoftSign": "softsign", "Identity": "linear",
}


_CONV = {"OutputChannels", "KernelSize", "Stride", "PaddingSize", "Dilation", "ChannelGroups",
         "Dimensionality", "Interleaving"}
#: Public parameters each layer type may carry (Wolfram's own names, all versions seen or
#: defined); any other public key is refused. Hidden ``$`` keys are derived shape data and are
#: ignored unless the handler reads them (``$GroupNumber``, ``$MXGlobalPool``...).
KNOWN_PARAMETERS = {
    "Convolution": _CONV, "Deconvolution": _CONV,
    "BatchNormalization": {"Momentum", "Epsilon", "Interleaving", "Channels"},
    "Normalization": {"AggregationLevels", "ScalingLevels", "Epsilon", "GroupNumber"},
    "InstanceNormalization": {"Epsilon", "Channels"},
    "Elementwise": {"Function"}, "Function": {"Function"},
    "Pooling": {"KernelSize", "Stride", "PaddingSize", "Function", "Dimensionality",
                "Interleaving"},
    "Resize": {"Specification", "Resampling", "Dimensionality", "Interleaving"},
    "Catenate": {"Level"}, "Total": set(), "Threading": {"Function"},
    "Dropout": {"DropoutProbability", "Method"}, "Flatten": {"Level"},
    "Linear": {"OutputDimensions"}, "Softmax": {"Level"}, "Transpose": {"Specification"},
    "Reshape": {"Specification"},
}


class TranslationError(WlnetError):
    """The net uses a layer, parameter or construct that cannot be translated exactly."""


# --------------------------------------------------------------------------------------------
# step 1: Wolfram graph -> config + weights
# --------------------------------------------------------------------------------------------

def _wolfram_order(rank: int) -> tuple[int, ...]:
    return tuple(range(rank))


@dataclass(frozen=True)
class Description:
    """Result of :func:`describe`: the JSON config and weights per Keras layer name."""

    config: dict
    weights: dict[str, list[np.ndarray]]


def describe(wl: WlnetFile, *, free_spatial: bool = False) -> Description:
    """Describe the Keras equivalent of ``wl``.

    Args:
        wl: a file read by :func:`legseg_tf.wlnet.reader.read_wlnet`.
        free_spatial: leave the spatial input sizes open (None) so that a fully
            convolutional net accepts any valid patch size.

    Raises:
        TranslationError: for anything without an exact Keras equivalent.
    """
    walker = _Walker(str(wl.path), wl.version)
    net = wl.net
    inputs_cfg = []
    port_tensors: dict[str, _Tensor] = {}
    for port, spec in net.inputs.items():
        if isinstance(spec, tuple):
            raise TranslationError(f"{wl.path}: list-valued net input {port!r} not supported")
        if any(d is None for d in spec.shape):
            raise TranslationError(f"{wl.path}: net input {port!r} has open dimensions "
                                   f"{spec.shape}")
        name = walker.unique(_sanitize(port))
        order = _channels_last(spec.rank)
        keras_shape = [spec.shape[a] for a in order]
        if free_spatial and spec.rank >= 2:
            keras_shape = [None] * (spec.rank - 1) + [spec.shape[0]]
        entry = {"name": name, "port": port, "wolfram_shape": list(spec.shape),
                 "keras_shape": keras_shape,
                 "layout": "channels_last" if spec.rank >= 2 else "as_is"}
        if spec.coder:
            entry["encoder"] = coder_summary(spec)
        inputs_cfg.append(entry)
        port_tensors[port] = _Tensor(name, spec.shape, order)
    outputs = walker.node(net, port_tensors)
    outputs_cfg = []
    for port, spec in net.outputs.items():
        if port not in outputs:
            raise TranslationError(f"{wl.path}: net output {port!r} is not connected")
        tensor = walker.to_order(outputs[port], _wolfram_order(len(outputs[port].shape)),
                                 f"output_{_sanitize(port)}")
        entry = {"name": tensor.name, "port": port, "wolfram_shape": list(tensor.shape),
                 "layout": "wolfram"}
        if isinstance(spec, TensorType) and spec.coder:
            entry["decoder"] = coder_summary(spec)
        outputs_cfg.append(entry)
    ops = prune_ops(walker.ops, [o["name"] for o in outputs_cfg])
    kept = {op["name"] for op in ops}
    config = {
        "kind": CONFIG_KIND, "config_version": CONFIG_VERSION,
        "source": {"file": wl.path.name, "wolfram_version": wl.version},
        "inputs": inputs_cfg, "outputs": outputs_cfg, "ops": ops,
    }
    weights = {k: v for k, v in walker.weights.items() if k in kept}
    return Description(config=config, weights=weights)




def coder_summary(spec: TensorType) -> dict:
    """JSON summary of a NetEncoder/NetDecoder (the fields an application needs)."""
    params = {k: unwrap(v) for k, v in spec.coder_params.items()}
    out: dict[str, Any] = {"type": spec.coder_name}
    if spec.coder_name == "Image":
        for key in ("ImageSize", "ColorSpace", "ColorChannels", "MeanImage", "VarianceImage",
                    "Method"):
            if key in params:
                out[key] = to_jsonable(params[key])
    elif "Labels" in params:
        out["labels"] = to_jsonable(params["Labels"])
    return out


def to_jsonable(value: Any) -> Any:
    """Convert a decoded expression into JSON-friendly values (symbols become names)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Symbol):
        return value.name
    if isinstance(value, Expr):
        return to_wl_text(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _sanitize(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", text) or "x"


class _Walker(OpEmitter):
    """Emits ops while walking containers; tracks tensors and layouts."""

    def __init__(self, source: str, version: str = "unknown") -> None:
        self.source = source
        self.version = version
        super().__init__()

    # -- helpers -----------------------------------------------------------------------------
    def fail(self, layer: Layer | Container, message: str) -> TranslationError:
        kind = getattr(layer, "type", "")
        return TranslationError(f"{self.source}: node {layer.name} ({kind}): {message}")


    # -- graph walk --------------------------------------------------------------------------
    def node(self, node: Node, inputs: dict[str, Any]) -> dict[str, _Tensor]:
        if isinstance(node, Container):
            return self.container(node, inputs)
        return self.layer(node, inputs)

    def container(self, net: Container, inputs: dict[str, Any]) -> dict[str, _Tensor]:
        feeds: dict[PortRef, list[tuple[int | None, int, PortRef]]] = {}
        for order_key, (dest, sources) in enumerate(net.edges):
            key = PortRef(dest.node, dest.direction, dest.port)
            for pos, src in enumerate(sources):
                feeds.setdefault(key, []).append(
                    (dest.index, order_key * 1000 + pos, src))
        done: dict[str, dict[str, _Tensor]] = {}
        active: set[str] = set()

        def resolve(src: PortRef) -> Any:
            if src.node is None:
                if src.port not in inputs:
                    raise self.fail(net, f"edge from unknown net input {src.port!r}")
                value = inputs[src.port]
            else:
                outs = run(src.node)
                if src.port not in outs:
                    raise self.fail(net, f"node {src.node!r} has no output {src.port!r}")
                value = outs[src.port]
            if src.index is not None:
                if not isinstance(value, list) or not 1 <= src.index <= len(value):
                    raise self.fail(net, f"bad indexed edge source {src}")
                value = value[src.index - 1]
            return value

        def gather(dest: PortRef, list_port: bool) -> Any:
            entries = sorted(feeds.get(dest, []),
                             key=lambda e: (e[0] if e[0] is not None else 0, e[1]))
            values = [resolve(src) for _, _, src in entries]
            if not values:
                return None
            if list_port:
                flat = []
                for v in values:
                    flat.extend(v if isinstance(v, list) else [v])
                return flat
            if len(values) != 1:
                raise self.fail(net, f"port {dest} has {len(values)} sources")
            return values[0]

        def run(name: str) -> dict[str, _Tensor]:
            if name in done:
                return done[name]
            if name not in net.nodes:
                raise self.fail(net, f"edge refers to unknown node {name!r}")
            if name in active:
                raise self.fail(net, f"cycle through node {name!r}")
            active.add(name)
            child = net.nodes[name]
            child_inputs = {}
            for port, spec in child.inputs.items():
                value = gather(PortRef(name, "Inputs", port), isinstance(spec, tuple))
                if value is None:
                    raise self.fail(child, f"input port {port!r} is not connected")
                child_inputs[port] = value
            done[name] = self.node(child, child_inputs)
            active.discard(name)
            return done[name]

        for name in net.nodes:
            run(name)
        outputs = {}
        for port in net.outputs:
            value = gather(PortRef(None, "Outputs", port), False)
            if value is None:
                raise self.fail(net, f"output port {port!r} is not connected")
            outputs[port] = value
        return outputs

    def layer(self, layer: Layer, inputs: dict[str, Any]) -> dict[str, _Tensor]:
        handler = getattr(self, f"_l_{layer.type}", None)
        if handler is None:
            raise self.fail(layer, "layer type has no Keras translation")
        self._check_params(layer)
        name = SEP.join(_sanitize(p) for part in layer.path for p in part.split("/")) or "layer"
        try:
            result = handler(layer, name, inputs)
        except WlnetError:
            raise
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError,
                OverflowError) as exc:
            raise self.fail(layer, f"malformed parameters or arrays ({type(exc).__name__}: "
                                   f"{str(exc)[:200]})") from exc
        if isinstance(result, _Tensor):
            result = {"Output": result}
        for port, tensor in result.items():
            declared = layer.outputs.get(port)
            if isinstance(declared, TensorType) and declared.shape and \
                    None not in declared.shape and tuple(declared.shape) != tuple(tensor.shape):
                raise self.fail(layer, f"computed output shape {tensor.shape} differs from the "
                                       f"file's {declared.shape}")
        return result

    def _check_params(self, layer: Layer) -> None:
        """Refuse options this translator does not model (they could change results)."""
        known = KNOWN_PARAMETERS.get(layer.type)
        if known is None:
            return
        for key, value in layer.parameters.items():
            if key in known:
                continue
            if isinstance(key, str) and key.startswith("$"):
                LOGGER.debug("%s: ignoring internal parameter %s", layer.name, key)
                continue
            raise self.fail(layer, f"option {key} -> {to_wl_text(value)[:60]} is not supported")
        if layer.parameters.get("Interleaving") is True:
            raise self.fail(layer, "Interleaving -> True (channels-last Wolfram layers) is not "
                                   "supported")
        groups = unwrap(layer.parameters.get("GroupNumber"))
        if groups not in (None, Symbol("Automatic"), Symbol("None"), 1) and not (
                isinstance(groups, list) and all(g == 1 for g in groups)):
            raise self.fail(layer, f"group normalisation (GroupNumber -> {to_wl_text(groups)}) "
                                   f"is not supported")

    # -- layer handlers ----------------------------------------------------------------------
    def _single(self, layer: Layer, inputs: dict) -> _Tensor:
        value = inputs.get("Input")
        if not isinstance(value, _Tensor):
            raise self.fail(layer, "expected one tensor on port 'Input'")
        return value

    def _spatial_in(self, layer: Layer, x: _Tensor, name: str, dims: int) -> _Tensor:
        if len(x.shape) != dims + 1:
            raise self.fail(layer, f"expected a rank-{dims + 1} input, got shape {x.shape}")
        if layer.parameters.get("Interleaving") is True:
            raise self.fail(layer, "Interleaving -> True (channels-last Wolfram layers) is "
                                   "not supported")
        return self.to_order(x, _channels_last(dims + 1), name)

    def _l_Convolution(self, layer: Layer, name: str, inputs: dict) -> _Tensor:
        p = layer.parameters
        x = self._single(layer, inputs)
        weights = _required(self, layer, "Weights")
        dims = weights.ndim - 2
        kernel = _int_list(self, layer, p.get("KernelSize"), dims, "KernelSize")
        stride = _int_list(self, layer, p.get("Stride", 1), dims, "Stride")
        dilation = _int_list(self, layer, p.get("Dilation", 1), dims, "Dilation")
        pads = _padding(self, layer, p.get("PaddingSize", 0), dims)
        groups = int(p.get("ChannelGroups", p.get("$GroupNumber", 1)))
        if max(stride) > 1 and max(dilation) > 1:
            raise self.fail(layer, "stride > 1 together with dilation > 1 has no Keras "
                                   "equivalent")
        x = self._spatial_in(layer, x, name, dims)
        out_ch, in_per_group = weights.shape[0], weights.shape[1]
        if x.shape[0] is not None and x.shape[0] != in_per_group * groups:
            raise self.fail(layer, f"input channels {x.shape[0]} != weights {in_per_group} x "
                                   f"groups {groups}")
        # Stride 1 with symmetric padding (k_eff - 1) / 2 is exactly Keras "same" (no copy of
        # the padded tensor); every other case gets an explicit ZeroPadding + "valid".
        same = max(stride) == 1 and all(
            lo == hi and 2 * lo == d * (k - 1) for (lo, hi), k, d in zip(pads, kernel, dilation))
        if not same:
            x = self._pad(x, pads, name)
            pads = [(0, 0)] * dims
        spatial = tuple(None if s is None else (s + lo + hi - d * (k - 1) - 1) // st + 1
                        for s, (lo, hi), k, st, d in zip(x.shape[1:], pads, kernel, stride,
                                                         dilation))
        bias = layer.arrays.get("Biases")
        kernel_arr = np.transpose(weights, tuple(range(2, dims + 2)) + (1, 0))
        cfg = {"rank": dims, "filters": int(out_ch), "kernel_size": kernel, "strides": stride,
               "dilation_rate": dilation, "groups": groups, "use_bias": bias is not None,
               "padding": "same" if same else "valid"}
        return self.emit(name, "conv", [x], cfg, (out_ch,) + spatial, _channels_last(dims + 1),
                         [kernel_arr] + ([bias] if bias is not None else []))

    def _l_Deconvolution(self, layer: Layer, name: str, inputs: dict) -> _Tensor:
        p = layer.parameters
        x = self._single(layer, inputs)
        weights = _required(self, layer, "Weights")
        dims = weights.ndim - 2
        kernel = _int_list(self, layer, p.get("KernelSize"), dims, "KernelSize")
        stride = _int_list(self, layer, p.get("Stride", 1), dims, "Stride")
        dilation = _int_list(self, layer, p.get("Dilation", 1), dims, "Dilation")
        pads = _padding(self, layer, p.get("PaddingSize", 0), dims)
        groups = int(p.get("ChannelGroups", p.get("$GroupNumber", 1)))
        if groups != 1 or max(dilation) != 1:
            raise self.fail(layer, "grouped or dilated deconvolution is not supported")
        x = self._spatial_in(layer, x, name, dims)
        in_ch, out_ch = weights.shape[0], weights.shape[1]
        if x.shape[0] is not None and x.shape[0] != in_ch:
            raise self.fail(layer, f"input channels {x.shape[0]} != weights {in_ch}")
        bias = layer.arrays.get("Biases")
        kernel_arr = np.transpose(weights, tuple(range(2, dims + 2)) + (1, 0))
        cfg = {"rank": dims, "filters": int(out_ch), "kernel_size": kernel, "strides": stride,
               "use_bias": bias is not None}
        keras_len = [None if s is None else s * st + max(k - st, 0)
                     for s, k, st in zip(x.shape[1:], kernel, stride)]
        y = self.emit(name, "conv_transpose", [x], cfg, (out_ch,) + tuple(keras_len),
                      _channels_last(dims + 1),
                      [kernel_arr] + ([bias] if bias is not None else []))
        wl_len = [None if s is None else (s - 1) * st + k - lo - hi
                  for s, k, st, (lo, hi) in zip(x.shape[1:], kernel, stride, pads)]
        crops = [(lo, 0 if kl is None else kl - lo - wlen)
                 for (lo, _), kl, wlen in zip(pads, keras_len, wl_len)]
        if any(c < 0 for pair in crops for c in pair):
            raise self.fail(layer, f"negative crop {crops}")
        if not any(lo or hi for lo, hi in crops):
            return y
        return self.emit(f"{name}_crop", "crop", [y],
                         {"rank": dims, "cropping": [list(c) for c in crops]},
                         (out_ch,) + tuple(wl_len), y.order)

    def _l_Pooling(self, layer: Layer, name: str, inputs: dict) -> _Tensor:
        p = layer.parameters
        x = self._single(layer, inputs)
        dims = len(x.shape) - 1
        func = unwrap(p.get("Function", Symbol("Max")))
        func = func.name if isinstance(func, Symbol) else str(func)
        if func not in ("Max", "Mean"):
            raise self.fail(layer, f"pooling function {func!r} is not supported")
        if p.get("$MXGlobalPool") is True:
            raise self.fail(layer, "global pooling flag is not supported")
        kernel = _int_list(self, layer, p.get("KernelSize"), dims, "KernelSize")
        stride = _int_list(self, layer, p.get("Stride", 1), dims, "Stride")
        pads = _padding(self, layer, p.get("PaddingSize", 0), dims)
        x = self._spatial_in(layer, x, name, dims)
        if any(lo or hi for lo, hi in pads):
            if func == "Max" or p.get("$IgnorePadding") is True:
                raise self.fail(layer, "padded max pooling / padding-ignoring mean pooling "
                                       "is not supported")
            x = self._pad(x, pads, name)
        convention = p.get("$MXPoolingConvention", "valid")
        spatial = []
        for s, k, st in zip(x.shape[1:], kernel, stride):
            if s is None:
                spatial.append(None)
                continue
            floor_len = (s - k) // st + 1
            if convention == "full" and (s - k) % st:
                raise self.fail(layer, "'full' pooling convention with a partial last window "
                                       "is not supported")
            spatial.append(floor_len)
        cfg = {"rank": dims, "pool_size": kernel, "strides": stride}
        return self.emit(name, "max_pool" if func == "Max" else "avg_pool", [x], cfg,
                         (x.shape[0],) + tuple(spatial), x.order)

    def _l_Resize(self, layer: Layer, name: str, inputs: dict) -> _Tensor:
        p = layer.parameters
        x = self._single(layer, inputs)
        dims = len(x.shape) - 1
        spec = unwrap(p.get("Specification"))
        method = unwrap(p.get("Resampling", "Linear"))
        if method != "Nearest":
            raise self.fail(layer, f"Resampling -> {to_wl_text(method)} is not supported "
                                   f"(only \"Nearest\")")
        if not isinstance(spec, list) or len(spec) != dims:
            raise self.fail(layer, f"bad resize specification {to_wl_text(spec)}")
        factors = []
        for entry in spec:
            if isinstance(entry, Expr) and entry.head_name == "Scaled" and \
                    len(entry.args) == 1 and isinstance(entry.args[0], int):
                factors.append(int(entry.args[0]))
            elif entry == Symbol("All"):
                factors.append(1)
            else:
                raise self.fail(layer, f"resize entry {to_wl_text(entry)} is not Scaled[n]")
        x = self._spatial_in(layer, x, name, dims)
        shape = (x.shape[0],) + tuple(None if s is None else s * f
                                      for s, f in zip(x.shape[1:], factors))
        return self.emit(name, "upsample", [x], {"rank": dims, "size": factors}, shape, x.order)

    def _l_BatchNormalization(self, layer: Layer, name: str, inputs: dict) -> _Tensor:
        p = layer.parameters
        x = self._single(layer, inputs)
        if p.get("Interleaving") is True:
            raise self.fail(layer, "Interleaving -> True is not supported")
        x = self.to_order(x, _channels_last(len(x.shape)), name)
        a = layer.arrays
        gamma = a.get("Scaling", a.get("Gamma"))
        beta = a.get("Biases", a.get("Beta"))
        mean, var = a.get("MovingMean"), a.get("MovingVariance")
        if mean is None or var is None:
            raise self.fail(layer, "missing MovingMean/MovingVariance")
        channels = mean.shape[0]
        gamma = np.ones(channels, np.float32) if gamma is None else gamma
        beta = np.zeros(channels, np.float32) if beta is None else beta
        cfg = {"epsilon": float(p.get("Epsilon", 1e-3))}
        return self.emit(name, "batch_norm", [x], cfg, x.shape, x.order,
                         [gamma, beta, mean, var])

    def _l_Normalization(self, layer: Layer, name: str, inputs: dict) -> _Tensor:
        p = layer.parameters
        x = self._single(layer, inputs)
        rank = len(x.shape)
        agg = unwrap(p.get("AggregationLevels", Expr(Symbol("Span"), (2, Symbol("All")))))
        scl = unwrap(p.get("ScalingLevels", "Complement"))
        instance = rank >= 2 and (
            (isinstance(agg, Expr) and agg.head_name == "Span" and agg.args[:1] == (2,)
             and len(agg.args) == 2 and agg.args[1] in (Symbol("All"), -1, rank))
            or agg == list(range(2, rank + 1)))
        if not instance or scl not in ("Complement", [1], 1):
            raise self.fail(layer, f"only instance normalisation (AggregationLevels 2;;All, "
                                   f"ScalingLevels Complement) is supported, got "
                                   f"{to_wl_text(agg)}, {to_wl_text(scl)}")
        return self._instance_norm(layer, name, x, float(p.get("Epsilon", 1e-3)),
                                   layer.arrays.get("Scaling"), layer.arrays.get("Biases"))

    def _l_InstanceNormalization(self, layer: Layer, name: str, inputs: dict) -> _Tensor:
        x = self._single(layer, inputs)
        a = layer.arrays
        return self._instance_norm(layer, name, x, float(layer.parameters.get("Epsilon", 1e-3)),
                                   a.get("Gamma", a.get("Scaling")),
                                   a.get("Beta", a.get("Biases")))

    def _instance_norm(self, layer, name, x, eps, gamma, beta) -> _Tensor:
        x = self.to_order(x, _channels_last(len(x.shape)), name)
        channels = x.shape[0]
        if channels is None:
            raise self.fail(layer, "channel count unknown")
        for label, array in (("scaling", gamma), ("biases", beta)):
            if array is not None and array.shape != (channels,):
                raise self.fail(layer, f"{label} of shape {list(array.shape)}, need "
                                       f"[{channels}] (per-channel instance normalisation)")
        cfg = {"channels": int(channels), "epsilon": eps, "scale": gamma is not None,
               "center": beta is not None}
        weights = [w for w in (gamma, beta) if w is not None]
        return self.emit(name, "instance_norm", [x], cfg, x.shape, x.order, weights)

    def _l_Elementwise(self, layer: Layer, name: str, inputs: dict) -> _Tensor:
        x = self._single(layer, inputs)
        func = unwrap(layer.parameters.get("Function"))
        activation = identify_activation(func)
        if activation is not None:
            return self.emit(name, "activation", [x], {"activation": activation}, x.shape,
                             x.order)
        program = self._program(layer, func, 1)
        return self.emit(name, "scalar_program", [x], {"program": program.to_json()}, x.shape,
                         x.order)

    def _program(self, layer: Layer, func: Any, arity: int | None) -> ScalarProgram:
        """The scalar program of an elementwise/threading function (symbol, name or SFO)."""
        try:
            if isinstance(func, Expr) and func.head_name == "ScalarFunctionObject":
                program = ScalarProgram.from_expr(func)
            elif isinstance(func, (Symbol, str)) and arity is not None:
                program = _single_step_program(func, arity)
            else:
                raise ScalarProgramError("not a scalar function")
        except ScalarProgramError as exc:
            raise self.fail(layer, f"function {to_wl_text(func)[:100]} is not supported "
                                   f"({exc})") from None
        if arity is not None and program.arity != arity:
            raise self.fail(layer, f"function {program.text()} takes {program.arity} "
                                   f"argument(s), the layer has {arity} input(s)")
        return program

    def _l_Function(self, layer: Layer, name: str, inputs: dict) -> dict[str, _Tensor]:
        if layer.subnet is None:
            raise self.fail(layer, "operator layer without a sub-net")
        return self.node(layer.subnet, inputs)

    def _l_Dropout(self, layer: Layer, name: str, inputs: dict) -> _Tensor:
        x = self._single(layer, inputs)
        rate = float(layer.parameters.get("DropoutProbability", 0.5))
        return self.emit(name, "dropout", [x], {"rate": rate}, x.shape, x.order)

    def _list_inputs(self, layer: Layer, inputs: dict) -> list[_Tensor]:
        """Inputs of a multiport layer: ports "1".."n" (Wolfram >= 11.3.2, one edge per port)
        or one list-valued port "Input" (older files; ``UpgradeToMultiport`` converts it)."""
        ports = list(layer.inputs)
        if ports == ["Input"]:
            values = inputs.get("Input")
            if isinstance(values, _Tensor):
                values = [values]
        elif ports and ports == [str(k) for k in range(1, len(ports) + 1)]:
            values = [inputs.get(p) for p in ports]
        else:
            raise self.fail(layer, f"unsupported input ports {ports} (expected \"1\", \"2\", "
                                   f"... or one list port \"Input\")")
        if not values or not all(isinstance(v, _Tensor) for v in values):
            raise self.fail(layer, "expected one tensor per input port")
        return values

    def _merge(self, layer: Layer, name: str, values: list[_Tensor], op: str) -> _Tensor:
        shapes = {v.shape for v in values}
        if len(shapes) != 1:
            raise self.fail(layer, f"inputs must have equal shapes (no broadcasting), got "
                                   f"{[v.shape for v in values]}")
        if len(values) == 1:
            return values[0]
        order = values[0].order
        values = [self.to_order(v, order, name) for v in values]
        return self.emit(name, op, values, {}, values[0].shape, order)

    def _l_Total(self, layer: Layer, name: str, inputs: dict) -> _Tensor:
        return self._merge(layer, name, self._list_inputs(layer, inputs), "add")

    def _l_Threading(self, layer: Layer, name: str, inputs: dict) -> _Tensor:
        func = unwrap(layer.parameters.get("Function"))
        values = self._list_inputs(layer, inputs)
        ops = {Symbol("Plus"): "add", Symbol("Times"): "multiply", Symbol("Max"): "maximum",
               Symbol("Min"): "minimum"}
        if isinstance(func, Symbol) and func in ops:
            return self._merge(layer, name, values, ops[func])
        program = self._program(layer, func, len(values))
        shapes = {v.shape for v in values}
        if len(shapes) != 1:
            raise self.fail(layer, f"inputs must have equal shapes, got {sorted(shapes)}")
        order = values[0].order
        values = [self.to_order(v, order, name) for v in values]
        return self.emit(name, "scalar_program", values, {"program": program.to_json()},
                         values[0].shape, order)

    def _l_Catenate(self, layer: Layer, name: str, inputs: dict) -> _Tensor:
        values = self._list_inputs(layer, inputs)
        ranks = {len(v.shape) for v in values}
        if len(ranks) != 1:
            raise self.fail(layer, "catenating tensors of different ranks is not supported")
        rank = ranks.pop()
        level = int(unwrap(layer.parameters.get("Level", 1)))
        axis = level - 1 if level > 0 else rank + level
        if not 0 <= axis < rank:
            raise self.fail(layer, f"level {level} out of range for rank {rank}")
        for v in values[1:]:
            if any(a != b for i, (a, b) in enumerate(zip(v.shape, values[0].shape)) if i != axis):
                raise self.fail(layer, f"shapes {[v.shape for v in values]} differ off level "
                                       f"{level}")
        order = values[0].order
        values = [self.to_order(v, order, name) for v in values]
        sizes = [v.shape[axis] for v in values]
        shape = list(values[0].shape)
        shape[axis] = None if None in sizes else sum(sizes)
        if len(values) == 1:
            return values[0]
        return self.emit(name, "concat", values, {"axis": order.index(axis) + 1}, tuple(shape),
                         order)

    def _l_Softmax(self, layer: Layer, name: str, inputs: dict) -> _Tensor:
        x = self._single(layer, inputs)
        rank = len(x.shape)
        level = int(unwrap(layer.parameters.get("Level", -1)))
        axis = level - 1 if level > 0 else rank + level
        if not 0 <= axis < rank:
            raise self.fail(layer, f"softmax level {level} out of range for rank {rank}")
        return self.emit(name, "softmax", [x], {"axis": x.order.index(axis) + 1}, x.shape,
                         x.order)

    def _l_Transpose(self, layer: Layer, name: str, inputs: dict) -> _Tensor:
        x = self._single(layer, inputs)
        rank = len(x.shape)
        spec = unwrap(layer.parameters.get("Specification", [Expr(Symbol("TwoWayRule"),
                                                                  (1, 2))]))
        has_rule = any(isinstance(v, Expr) and v.head_name == "Rule"
                       for v in (spec if isinstance(spec, list) else [spec]))
        moves = _version_at_least(self.version, (11, 3, 2))
        if has_rule and moves is None:
            raise self.fail(layer, f"a Rule transpose specification means a swap before "
                                   f"Wolfram 11.3.2 and a move since; the file's version "
                                   f"{self.version!r} does not tell which")
        perm = transpose_axes(spec, rank, rules_move=bool(moves))
        if perm is None:
            raise self.fail(layer, "unsupported transpose specification "
                                   f"{to_wl_text(layer.parameters.get('Specification'))}")
        # Wolfram output axis j holds input axis perm[j]; relabel the stored order (no op).
        inverse = {src: dst for dst, src in enumerate(perm)}
        shape = tuple(x.shape[perm[j]] for j in range(rank))
        return _Tensor(x.name, shape, tuple(inverse[a] for a in x.order))

    def _flat_input(self, layer: Layer, name: str, x: _Tensor) -> _Tensor:
        return self.to_order(x, _wolfram_order(len(x.shape)), f"{name}_channels_first")

    def _reshape(self, x: _Tensor, shape: tuple, name: str) -> _Tensor:
        if tuple(x.shape) == tuple(shape) and x.order == _wolfram_order(len(shape)):
            return x
        return self.emit(name, "reshape", [x], {"target_shape": list(shape)}, shape,
                         _wolfram_order(len(shape)))

    def _l_Flatten(self, layer: Layer, name: str, inputs: dict) -> _Tensor:
        x = self._single(layer, inputs)
        if None in x.shape:
            raise self.fail(layer, "flattening a tensor with open dimensions")
        level = unwrap(layer.parameters.get("Level", Expr(Symbol("DirectedInfinity"), (1,))))
        rank = len(x.shape)
        if isinstance(level, Expr) and level.head_name == "DirectedInfinity":
            shape = (int(np.prod(x.shape)),)
        elif isinstance(level, int) and 0 < level < rank:
            shape = (int(np.prod(x.shape[:level + 1])),) + tuple(x.shape[level + 1:])
        else:
            raise self.fail(layer, f"flatten level {to_wl_text(level)} is not supported")
        return self._reshape(self._flat_input(layer, name, x), shape, name)

    def _l_Reshape(self, layer: Layer, name: str, inputs: dict) -> _Tensor:
        x = self._single(layer, inputs)
        declared = layer.outputs.get("Output")
        if not isinstance(declared, TensorType) or None in declared.shape:
            raise self.fail(layer, "reshape without a known output shape")
        if int(np.prod(declared.shape)) != int(np.prod(x.shape)):
            raise self.fail(layer, f"cannot reshape {x.shape} to {declared.shape}")
        return self._reshape(self._flat_input(layer, name, x), tuple(declared.shape), name)

    def _l_Linear(self, layer: Layer, name: str, inputs: dict) -> _Tensor:
        x = self._single(layer, inputs)
        weights = _required(self, layer, "Weights")
        bias = layer.arrays.get("Biases")
        out_dims = layer.parameters.get("OutputDimensions", [weights.shape[0]])
        out_dims = (tuple(int(d) for d in out_dims) if isinstance(out_dims, list)
                    else (int(out_dims),))
        units = int(np.prod(out_dims))
        n_in = int(np.prod(x.shape)) if x.shape else 1
        if weights.shape != (units, n_in):
            raise self.fail(layer, f"weights of shape {list(weights.shape)} do not fit "
                                   f"{n_in} inputs -> {units} outputs (need [{units}, {n_in}])")
        if bias is not None and bias.shape != (units,):
            raise self.fail(layer, f"biases of shape {list(bias.shape)}, need [{units}]")
        w2 = weights
        flat = self._reshape(self._flat_input(layer, name, x), (n_in,), f"{name}_flatten")
        y = self.emit(name, "dense", [flat], {"units": units, "use_bias": bias is not None},
                      (units,), (0,), [w2.T] + ([bias.reshape(units)] if bias is not None else []))
        return self._reshape(y, out_dims, f"{name}_reshape") if len(out_dims) != 1 else y


_PROBE = np.linspace(-4.0, 4.0, 81)
#: Reference curves used to recognise pure functions (``Function[...]``) numerically.
_CURVES = {
    "relu": np.maximum(_PROBE, 0.0),
    "tanh": np.tanh(_PROBE),
    "sigmoid": 1.0 / (1.0 + np.exp(-_PROBE)),
    "elu": np.where(_PROBE > 0, _PROBE, np.expm1(np.minimum(_PROBE, 0.0))),
    "selu": 1.0507009873554805 * np.where(
        _PROBE > 0, _PROBE, 1.6732632423543772 * np.expm1(np.minimum(_PROBE, 0.0))),
    "softplus": np.logaddexp(0.0, _PROBE),
    "silu": _PROBE / (1.0 + np.exp(-_PROBE)),
    "linear": _PROBE,
}


def identify_activation(func: Any) -> str | None:
    """Keras activation name equal to a Wolfram elementwise function, or None.

    Named functions (``Ramp``, ``"GELU"``, ...) are looked up in :data:`ACTIVATIONS`. A pure
    function ``Function[body]`` of one argument is evaluated numerically on [-4, 4] and
    recognised when it matches one activation to 1e-6 (e.g. ``0.5 # (1 + Erf[#/Sqrt[2]])``
    is the exact GELU).
    """
    if isinstance(func, Symbol):
        return ACTIVATIONS.get(func.name)
    if isinstance(func, str):
        return ACTIVATIONS.get(func)
    if isinstance(func, Expr) and func.head_name == "ScalarFunctionObject":
        try:
            return recognise(ScalarProgram.from_expr(func))
        except ScalarProgramError:
            return None
    if not (isinstance(func, Expr) and func.head_name == "Function" and func.args):
        return None
    try:
        with np.errstate(all="ignore"):
            values = np.broadcast_to(
                np.asarray(_evaluate(func.args[-1], _PROBE), dtype=np.float64), _PROBE.shape)
    except (_Unevaluable, TypeError, ValueError, OverflowError):
        return None
    if not np.all(np.isfinite(values)):
        return None
    curves = dict(_CURVES)
    from scipy.special import erf  # only needed here

    curves["gelu"] = 0.5 * _PROBE * (1.0 + erf(_PROBE / math.sqrt(2.0)))
    matches = [k for k, ref in curves.items() if np.max(np.abs(values - ref)) <= 1e-6]
    return matches[0] if len(matches) == 1 else None


class _Unevaluable(Exception):
    """A pure-function body uses something outside the small numeric subset."""


def _evaluate(expr: Any, x: np.ndarray) -> Any:
    if isinstance(expr, bool) or expr is None:
        raise _Unevaluable(expr)
    if isinstance(expr, (int, float)):
        return float(expr)
    if isinstance(expr, Symbol):
        constants = {"Pi": math.pi, "E": math.e}
        if expr.name in constants:
            return constants[expr.name]
        raise _Unevaluable(expr.name)
    if not isinstance(expr, Expr) or expr.head_name is None:
        raise _Unevaluable(expr)
    head, args = expr.head_name, expr.args
    if head == "Slot" and args in ((1,), ()):
        return x
    if head == "Rational" and len(args) == 2:
        return args[0] / args[1]
    values = [_evaluate(a, x) for a in args]
    from scipy.special import erf, erfc

    unary = {"Erf": erf, "Erfc": erfc, "Tanh": np.tanh, "Exp": np.exp, "Log": np.log,
             "Sqrt": np.sqrt, "Abs": np.abs, "Ramp": lambda v: np.maximum(v, 0.0),
             "LogisticSigmoid": lambda v: 1.0 / (1.0 + np.exp(-v)), "Sinh": np.sinh,
             "Cosh": np.cosh}
    if head in unary and len(values) == 1:
        return unary[head](values[0])
    if head == "Plus":
        return sum(values[1:], values[0])
    if head == "Times":
        out = values[0]
        for v in values[1:]:
            out = out * v
        return out
    if head == "Power" and len(values) == 2:
        return np.power(values[0], values[1])
    if head in ("Max", "Min") and values:
        fn = np.maximum if head == "Max" else np.minimum
        out = values[0]
        for v in values[1:]:
            out = fn(out, v)
        return out
    raise _Unevaluable(head)


def transpose_axes(spec: Any, rank: int, *, rules_move: bool = True) -> list[int] | None:
    """Axis list ``perm`` (output axis j holds input axis perm[j], 0-based) of a TransposeLayer.

    Accepts a permutation list ``{p1, ..., pn}`` (``Transpose`` semantics: input level k goes
    to output level p_k), TwoWayRules ``{a <-> b, ...}`` applied as successive swaps, and
    Rules ``{a -> b, ...}``: since Wolfram 11.3.2 a Rule *moves* level a to position b (the
    other levels keep their order: ``2 -> 4`` on (1,2,3,4) gives (1,3,4,2)); files written
    before 11.3.2 meant a swap (``rules_move=False``; the package upgrades them to
    TwoWayRule). Returns None for anything else.
    """
    if isinstance(spec, Expr) and spec.head_name in ("Rule", "TwoWayRule"):
        spec = [spec]
    if isinstance(spec, int) and not isinstance(spec, bool):
        spec = [Expr(Symbol("TwoWayRule"), (1, spec))]
    if not isinstance(spec, list) or not spec:
        return None
    if all(isinstance(v, int) and not isinstance(v, bool) for v in spec):
        n = len(spec)
        if n > rank or sorted(spec) != list(range(1, n + 1)):
            return None
        perm = list(range(rank))
        for k, target in enumerate(spec):
            perm[target - 1] = k
        return perm
    pairs = []
    heads = set()
    for rule in spec:
        if not (isinstance(rule, Expr) and rule.head_name in ("Rule", "TwoWayRule")
                and len(rule.args) == 2
                and all(isinstance(a, int) and not isinstance(a, bool) for a in rule.args)):
            return None
        a, b = (v - 1 if v > 0 else rank + v for v in rule.args)
        if not (0 <= a < rank and 0 <= b < rank):
            return None
        pairs.append((a, b))
        heads.add("TwoWayRule" if rule.head_name == "TwoWayRule" or not rules_move else "Rule")
    if heads == {"TwoWayRule"}:
        perm = list(range(rank))
        for a, b in pairs:
            perm[a], perm[b] = perm[b], perm[a]
        return perm
    if heads != {"Rule"}:
        return None
    sources = [a for a, _ in pairs]
    targets = [b for _, b in pairs]
    if len(set(sources)) != len(sources) or len(set(targets)) != len(targets):
        return None
    perm: list[int | None] = [None] * rank
    for a, b in pairs:
        perm[b] = a
    rest = iter(k for k in range(rank) if k not in sources)
    return [p if p is not None else next(rest) for p in perm]


def _version_at_least(version: str, minimum: tuple[int, ...]) -> bool | None:
    """Whether a file's Wolfram version string is >= ``minimum`` (None if unparsable)."""
    parts = re.findall(r"\d+", str(version))
    if not parts:
        return None
    numbers = tuple(int(p) for p in parts[:3])
    return numbers + (0,) * (3 - len(numbers)) >= minimum


def _single_step_program(func: Symbol | str, arity: int) -> ScalarProgram:
    """A one-operation program for a primitive symbol or a named function."""
    from legseg_tf.wlnet.scalar import Ref

    name = func.name if isinstance(func, Symbol) else NAMED.get(func)
    if name is None:
        raise ScalarProgramError(f"unknown function name {func!r}")
    program = ScalarProgram(tuple(range(1, arity + 1)), arity + 1,
                            ((arity + 1, name, tuple(Ref(k) for k in range(1, arity + 1))),))
    return ScalarProgram.from_json(program.to_json())  # validates op name and arity


def _required(walker: _Walker, layer: Layer, key: str) -> np.ndarray:
    value = layer.arrays.get(key)
    if value is None:
        raise walker.fail(layer, f"missing array {key!r}")
    return value


def _int_list(walker: _Walker, layer: Layer, value: Any, dims: int, what: str) -> list[int]:
    value = unwrap(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return [value] * dims
    if isinstance(value, list) and len(value) == dims and all(isinstance(v, int) for v in value):
        return [int(v) for v in value]
    raise walker.fail(layer, f"bad {what} {to_wl_text(value)} for {dims} spatial dims")


def _padding(walker: _Walker, layer: Layer, value: Any, dims: int) -> list[tuple[int, int]]:
    """PaddingSize as (before, after) per axis: 11.x ``{p, ...}``, 12+ ``{{lo, hi}, ...}``."""
    value = unwrap(value)
    if isinstance(value, int):
        return [(value, value)] * dims
    if isinstance(value, list) and len(value) == dims:
        out = []
        for v in value:
            if isinstance(v, int):
                out.append((v, v))
            elif isinstance(v, list) and len(v) == 2 and all(isinstance(u, int) for u in v):
                out.append((v[0], v[1]))
            else:
                break
        else:
            if all(lo >= 0 and hi >= 0 for lo, hi in out):
                return out
    raise walker.fail(layer, f"bad PaddingSize {to_wl_text(value)}")


# --------------------------------------------------------------------------------------------
# step 2: config -> Keras model
# --------------------------------------------------------------------------------------------

def build_from_config(config: dict):
    """Build the (uninitialised) Keras model described by a ``"wlnet_graph"`` config.

    Raises:
        ValueError: wrong kind/version or a malformed config.
    """
    import keras

    if not isinstance(config, dict) or config.get("kind") != CONFIG_KIND:
        raise ValueError(f"config kind must be {CONFIG_KIND!r}, got "
                         f"{config.get('kind') if isinstance(config, dict) else config!r}")
    if config.get("config_version") != CONFIG_VERSION:
        raise ValueError(f"unsupported {CONFIG_KIND} config_version "
                         f"{config.get('config_version')!r} (expected {CONFIG_VERSION})")
    tensors: dict[str, Any] = {}
    model_inputs = {}
    for entry in config["inputs"]:
        shape = tuple(entry["keras_shape"])
        tensors[entry["name"]] = keras.Input(shape=shape, name=entry["name"])
        model_inputs[entry["port"]] = tensors[entry["name"]]
    for op in config["ops"]:
        try:
            args = [tensors[n] for n in op["inputs"]]
        except KeyError as exc:
            raise ValueError(f"op {op['name']!r} uses undefined tensor {exc}") from None
        layer = _keras_layer(keras, op)
        tensors[op["name"]] = layer(args if op["op"] in _MULTI_INPUT else args[0])
    outputs = {}
    for entry in config["outputs"]:
        if entry["name"] not in tensors:
            raise ValueError(f"output {entry['port']!r} refers to undefined tensor")
        outputs[entry["port"]] = tensors[entry["name"]]
    ins = next(iter(model_inputs.values())) if len(model_inputs) == 1 else model_inputs
    outs = next(iter(outputs.values())) if len(outputs) == 1 else outputs
    source = config.get("source", {}).get("file", "wlnet")
    return keras.Model(ins, outs, name=_sanitize(source.rsplit(".", 1)[0]))


_MULTI_INPUT = {"add", "multiply", "concat", "arith", "maximum", "minimum", "scalar_program"}


def _keras_layer(keras, op: dict):
    kind, c, name = op["op"], op["config"], op["name"]
    L = keras.layers
    if kind == "conv":
        cls = {1: L.Conv1D, 2: L.Conv2D, 3: L.Conv3D}[c["rank"]]
        return cls(c["filters"], tuple(c["kernel_size"]), strides=tuple(c["strides"]),
                   padding=c.get("padding", "valid"), dilation_rate=tuple(c["dilation_rate"]),
                   groups=c["groups"], use_bias=c["use_bias"], name=name)
    if kind == "conv_transpose":
        cls = {1: L.Conv1DTranspose, 2: L.Conv2DTranspose, 3: L.Conv3DTranspose}[c["rank"]]
        return cls(c["filters"], tuple(c["kernel_size"]), strides=tuple(c["strides"]),
                   padding="valid", use_bias=c["use_bias"], name=name)
    if kind == "zero_pad":
        pads = tuple(tuple(p) for p in c["padding"])
        cls = {1: L.ZeroPadding1D, 2: L.ZeroPadding2D, 3: L.ZeroPadding3D}[c["rank"]]
        return cls(pads[0] if c["rank"] == 1 else pads, name=name)
    if kind == "crop":
        crops = tuple(tuple(p) for p in c["cropping"])
        cls = {1: L.Cropping1D, 2: L.Cropping2D, 3: L.Cropping3D}[c["rank"]]
        return cls(crops[0] if c["rank"] == 1 else crops, name=name)
    if kind == "batch_norm":
        return L.BatchNormalization(axis=-1, epsilon=c["epsilon"], name=name)
    if kind == "instance_norm":
        return L.GroupNormalization(groups=c["channels"], axis=-1, epsilon=c["epsilon"],
                                    center=c["center"], scale=c["scale"], name=name)
    if kind == "activation":
        return L.Activation(c["activation"], name=name)
    if kind in ("max_pool", "avg_pool"):
        table = {"max_pool": (L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D),
                 "avg_pool": (L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D)}
        cls = table[kind][c["rank"] - 1]
        return cls(pool_size=tuple(c["pool_size"]), strides=tuple(c["strides"]),
                   padding=c.get("padding", "valid"), name=name)
    if kind == "upsample":
        cls = {1: L.UpSampling1D, 2: L.UpSampling2D, 3: L.UpSampling3D}[c["rank"]]
        size = c["size"][0] if c["rank"] == 1 else tuple(c["size"])
        return cls(size=size, name=name)
    if kind == "concat":
        return L.Concatenate(axis=c["axis"], name=name)
    if kind == "add":
        return L.Add(name=name)
    if kind == "multiply":
        return L.Multiply(name=name)
    if kind == "maximum":
        return L.Maximum(name=name)
    if kind == "minimum":
        return L.Minimum(name=name)
    if kind == "scalar_program":
        from legseg_tf.wlnet.scalar import keras_backend

        program = ScalarProgram.from_json(c["program"])
        backend = keras_backend()
        return L.Lambda(lambda xs: program.evaluate(backend, *xs), name=name)
    if kind == "dropout":
        return L.Dropout(c["rate"], name=name)
    if kind == "permute":
        return L.Permute(tuple(c["dims"]), name=name)
    if kind == "reshape":
        return L.Reshape(tuple(c["target_shape"]), name=name)
    if kind == "dense":
        return L.Dense(c["units"], use_bias=c["use_bias"], name=name)
    if kind == "softmax":
        return L.Softmax(axis=c["axis"], name=name)
    if kind == "leaky_relu":
        return L.LeakyReLU(negative_slope=c["negative_slope"], name=name)
    if kind == "prelu":
        return L.PReLU(shared_axes=c["shared_axes"] or None, name=name)
    if kind == "elu":
        return L.ELU(alpha=c["alpha"], name=name)
    if kind in ("unary", "const_arith", "arith"):
        from legseg_tf.wlnet import keras_ops  # elementwise kinds of imported ONNX nets

        return keras_ops.make_layer(kind, c, name)
    raise ValueError(f"unknown op {kind!r} in {CONFIG_KIND} config")


def set_weights(model, weights: dict[str, list[np.ndarray]]) -> None:
    """Load converted weights into ``model`` by layer name (shapes must match exactly)."""
    for name, arrays in weights.items():
        layer = model.get_layer(name)
        expected = [tuple(w.shape) for w in layer.get_weights()]
        got = [tuple(a.shape) for a in arrays]
        if expected != got:
            raise TranslationError(f"layer {name}: weight shapes {got} do not fit {expected}")
        layer.set_weights(arrays)


def translate(wl: WlnetFile, *, free_spatial: bool = False):
    """Translate ``wl`` into a Keras model with its weights loaded.

    Returns:
        (model, config): the ``keras.Model`` and its ``"wlnet_graph"`` config.
    """
    description = describe(wl, free_spatial=free_spatial)
    try:
        model = build_from_config(description.config)
    except ValueError as exc:  # Keras refuses a layer configuration the file implies
        raise TranslationError(f"{wl.path}: Keras cannot build the translated net: "
                               f"{' '.join(str(exc).split())[:300]}") from exc
    set_weights(model, description.weights)
    return model, description.config
