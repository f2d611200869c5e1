"""Read and validate an ONNX file; constant folding; the static facts the translator needs.

:func:`read_onnx` loads a model with the ``onnx`` package (external data files next to it
included), checks it (``onnx.checker``, strict shape inference, opset), and returns an
:class:`OnnxGraph`: the nodes in topological order, the constants (initializers, ``Constant``
nodes and every node whose inputs are all constant, folded with ``onnx.reference``), the
graph inputs and outputs with their shapes (batch axis first, ``None`` for symbolic
dimensions) and the inferred static shapes of the intermediate tensors.

Importing this module does not import TensorFlow or Keras.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from legseg_tf.wlnet.expr import WlnetError

LOGGER = logging.getLogger(__name__)

#: Standard-domain opsets accepted (Wolfram exports 9-18; the onnx package defines the rest).
MIN_OPSET = 7


class OnnxImportError(WlnetError):
    """An ONNX file cannot be read or translated exactly (one-line message).

    A :class:`~legseg_tf.wlnet.expr.WlnetError` so that ``legseg-import`` reports it like a
    ``.wlnet`` problem (exit code 65).
    """


def _onnx():
    try:
        import onnx
    except ImportError as exc:  # the optional extra legseg[onnx]
        raise OnnxImportError("ONNX import needs the onnx package: pip install 'legseg[onnx]'"
                              ) from exc
    return onnx


@dataclass
class OnnxGraph:
    """A checked ONNX graph.

    Attributes:
        path: the file.
        model: the ``onnx.ModelProto`` (with external data loaded).
        opset: version of the standard ("" / "ai.onnx") operator set.
        nodes: nodes in topological order, folded ones excluded.
        constants: tensor name -> numpy array (initializers, Constant nodes, folded nodes).
        inputs: graph input name -> shape (batch first; None = symbolic), initializers
            excluded.
        outputs: graph output names in order.
        shapes: inferred static shapes (batch first) of tensors, where known.
        metadata: ``metadata_props`` as a dict.
        batch: the batch size the file's shapes use (1 when symbolic).
    """

    path: Path
    model: Any
    opset: int
    nodes: list = field(default_factory=list)
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    inputs: dict[str, tuple[int | None, ...]] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    shapes: dict[str, tuple[int | None, ...]] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    batch: int = 1

    def node_label(self, node) -> str:
        return f"node {node.name or '(unnamed)'!r} ({node.op_type})"

    def consumers(self) -> dict[str, list]:
        """Tensor name -> nodes that read it."""
        out: dict[str, list] = {}
        for node in self.nodes:
            for name in node.input:
                if name:
                    out.setdefault(name, []).append(node)
        return out

    def parameter_count(self) -> int:
        """Number of values in float initializers (the net's parameters)."""
        return int(sum(init_size(t) for t in self.model.graph.initializer
                       if t.data_type in (1, 10, 11, 16)))


def init_size(tensor) -> int:
    return int(np.prod(tensor.dims)) if len(tensor.dims) else 1


def _shape_of(value_info) -> tuple[int | None, ...] | None:
    ttype = value_info.type.tensor_type
    if not ttype.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim)


def read_onnx(path: str | Path) -> OnnxGraph:
    """Load, check and constant-fold an ONNX file.

    Raises:
        OnnxImportError: unreadable or truncated file, missing external data, a model the
            checker or strict shape inference rejects (e.g. initializers of the wrong shape),
            an unsupported opset or operator domain.
    """
    onnx = _onnx()
    from google.protobuf.message import DecodeError

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=True)
    except DecodeError as exc:
        raise OnnxImportError(f"{path}: not a readable ONNX file (truncated or corrupt: "
                              f"{exc})") from exc
    except (OSError, ValueError) as exc:
        raise OnnxImportError(f"{path}: cannot load the ONNX model or its external data "
                              f"({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - protobuf raises assorted errors on garbage
        raise OnnxImportError(f"{path}: not a readable ONNX file ({type(exc).__name__}: "
                              f"{exc})") from exc
    if not model.HasField("graph") or not model.graph.node:
        raise OnnxImportError(f"{path}: not an ONNX model (no graph nodes)")
    opset = 0
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            opset = int(entry.version)
    supported = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= supported:
        raise OnnxImportError(f"{path}: ONNX opset {opset} is not supported (the onnx package "
                              f"{onnx.__version__} supports {MIN_OPSET}-{supported})")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 - checker.ValidationError and C++ errors
        raise OnnxImportError(f"{path}: invalid ONNX model: {_first_line(exc)}") from exc
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True,
                                                     data_prop=True)
    except Exception as exc:  # noqa: BLE001 - InferenceError: inconsistent shapes
        raise OnnxImportError(f"{path}: inconsistent ONNX model: {_first_line(exc)}") from exc
    graph = OnnxGraph(path=path, model=model, opset=opset)
    graph.metadata = {p.key: p.value for p in model.metadata_props}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + \
            list(inferred.graph.input):
        shape = _shape_of(vi)
        if shape is not None:
            graph.shapes[vi.name] = shape
    for init in model.graph.initializer:
        graph.constants[init.name] = onnx.numpy_helper.to_array(init)
    for vi in model.graph.input:
        if vi.name in graph.constants:
            continue  # IR < 4 lists initializers as inputs
        shape = _shape_of(vi)
        if shape is None or not shape:
            raise OnnxImportError(f"{path}: graph input {vi.name!r} has no tensor shape")
        if vi.type.tensor_type.elem_type != 1:
            raise OnnxImportError(f"{path}: graph input {vi.name!r} is not float32")
        graph.inputs[vi.name] = shape
    batches = {s[0] for s in graph.inputs.values() if s and s[0] is not None}
    graph.batch = batches.pop() if len(batches) == 1 else 1
    graph.outputs = [o.name for o in model.graph.output]
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise OnnxImportError(f"{path}: {graph.node_label(node)}: operator domain "
                                  f"{node.domain!r} is not supported")
        if node.op_type == "Constant":
            graph.constants[node.output[0]] = _constant_value(onnx, graph, node)
        elif _foldable(graph, node):
            _fold(onnx, graph, node)
        else:
            graph.nodes.append(node)
    return graph


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _constant_value(onnx, graph: OnnxGraph, node) -> np.ndarray:
    if len(node.attribute) != 1:
        raise OnnxImportError(f"{graph.path}: {graph.node_label(node)}: expected one value "
                              f"attribute")
    attr = node.attribute[0]
    value = onnx.helper.get_attribute_value(attr)
    if attr.name == "value":
        return onnx.numpy_helper.to_array(value)
    if attr.name in ("value_float", "value_floats"):
        return np.asarray(value, dtype=np.float32)
    if attr.name in ("value_int", "value_ints"):
        return np.asarray(value, dtype=np.int64)
    raise OnnxImportError(f"{graph.path}: {graph.node_label(node)}: constant attribute "
                          f"{attr.name!r} is not supported")


#: Operators never folded (random sources; no inputs to fold).
_NOT_FOLDED = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
               "Multinomial", "Bernoulli", "Dropout"}


def _foldable(graph: OnnxGraph, node) -> bool:
    if node.op_type in _NOT_FOLDED or not node.input:
        return False
    if node.op_type == "Shape":
        shape = graph.inputs.get(node.input[0], graph.shapes.get(node.input[0]))
        return shape is not None and all(d is not None for d in shape[1:])
    return all((not name) or name in graph.constants for name in node.input)


def _fold(onnx, graph: OnnxGraph, node) -> None:
    """Evaluate a node with constant inputs (``Shape`` of a static tensor included)."""
    if node.op_type == "Shape":
        shape = list(graph.inputs.get(node.input[0], graph.shapes.get(node.input[0])))
        shape[0] = graph.batch if shape[0] is None else shape[0]
        start = end = None
        for attr in node.attribute:
            if attr.name == "start":
                start = attr.i
            elif attr.name == "end":
                end = attr.i
        graph.constants[node.output[0]] = np.asarray(shape[start:end], dtype=np.int64)
        return
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    feeds = {name: graph.constants[name] for name in node.input if name}
    inputs = [helper.make_tensor_value_info(
        name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
        for name, value in feeds.items()]
    outputs = [helper.make_empty_tensor_value_info(name) for name in node.output if name]
    model = helper.make_model(
        helper.make_graph([node], "fold", inputs, outputs),
        opset_imports=[helper.make_opsetid("", graph.opset)], ir_version=graph.model.ir_version)
    try:
        results = ReferenceEvaluator(model).run(None, feeds)
    except Exception as exc:  # noqa: BLE001 - the reference raises what the op raises
        raise OnnxImportError(f"{graph.path}: {graph.node_label(node)}: cannot evaluate the "
                              f"constant expression ({_first_line(exc)})") from exc
    for name, value in zip([n for n in node.output if n], results):
        graph.constants[name] = np.asarray(value)
