"""Read a Wolfram ``.wlnet`` file into a typed, Wolfram-independent net description.

A ``.wlnet`` file is HDF5 with a ``/Version`` string, a ``/Network`` string holding the layer
tree as a ``Compress`` expression (see :mod:`legseg_tf.wlnet.expr`) and float arrays
``/Arrays/1 .. /Arrays/N`` referenced from the tree as ``ExportedArray[k]``.

:func:`read_wlnet` returns a :class:`WlnetFile`; its ``net`` is a tree of :class:`Container`
(``NetChain``/``NetGraph``) and :class:`Layer` records. Tensor shapes are Wolfram's: channels
first, batch dimension omitted. Arrays are resolved by reference and keep Wolfram's layout,
e.g. convolution weights (out, in/groups, k1, ..., kn).

Importing this module never imports TensorFlow or Keras.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import h5py
import numpy as np

from legseg_tf.wlnet.expr import (
    Expr, ExpressionError, Symbol, WlnetError, to_wl_text, uncompress,
)

LOGGER = logging.getLogger(__name__)

#: Layer types the reader describes and the translator converts.
KNOWN_LAYER_TYPES = frozenset({
    "Convolution", "Deconvolution", "BatchNormalization", "Normalization",
    "InstanceNormalization", "Elementwise", "Function", "Pooling", "Resize", "Catenate",
    "Total", "Threading", "Dropout", "Flatten", "Linear", "Softmax", "Transpose", "Reshape",
})
CONTAINER_TYPES = frozenset({"Chain", "Graph"})
#: Layers whose inputs are ``$Multiport`` since Wolfram 11.3.2 (ports "1", "2", ...; before:
#: one list-valued port "Input"), per the layers' "11.3.2 -> UpgradeToMultiport" upgraders.
MULTIPORT_TYPES = frozenset({"Total", "Catenate", "Threading", "Dot"})
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: Largest /Network (or /Metadata) string read, and largest total of array bytes accepted.
MAX_NETWORK_CHARS = 64 << 20
MAX_ARRAY_BYTES = 4 << 30


class WlnetFormatError(WlnetError):
    """The file is not a readable ``.wlnet`` container (not HDF5, truncated, missing parts)."""


class UnknownLayerError(WlnetError):
    """The net uses a layer type (or container construct) this importer does not know."""


@dataclass(frozen=True)
class TensorType:
    """Type of one port.

    Attributes:
        shape: Wolfram dimensions without the batch axis (channels first); an entry is None
            where the file leaves it open (variable length).
        coder: "encoder", "decoder" or None.
        coder_name: e.g. "Image", "Class", "Scalar" (None without a coder).
        coder_params: the coder's parameter association, as decoded.
    """

    shape: tuple[int | None, ...]
    coder: str | None = None
    coder_name: str | None = None
    coder_params: dict = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return len(self.shape)


PortSpec = Union[TensorType, tuple[TensorType, ...]]


@dataclass(frozen=True)
class PortRef:
    """One end of an edge.

    Attributes:
        node: node name inside the container, or None for the container's own port.
        direction: "Inputs" or "Outputs".
        port: port name, e.g. "Input", "Output", "Input1".
        index: 1-based position inside a list-valued port (Catenate/Total inputs), or None.
    """

    node: str | None
    direction: str
    port: str
    index: int | None = None

    def __str__(self) -> str:
        where = f"{self.node}." if self.node is not None else ""
        suffix = f"[{self.index}]" if self.index is not None else ""
        return f"{where}{self.direction}.{self.port}{suffix}"


@dataclass(frozen=True)
class Layer:
    """One Wolfram layer.

    Attributes:
        path: node names from the top-level container down to this layer.
        type: Wolfram layer type without the "Layer" suffix, e.g. "Convolution".
        parameters: the layer's parameter association, as decoded.
        arrays: array name -> numpy array (Wolfram layout), or None where the file has
            ``None`` (e.g. a convolution without bias).
        inputs: input port name -> type (a tuple of types for list-valued ports).
        outputs: output port name -> type.
        subnet: the wrapped net of an operator layer ("Function"), else None.
    """

    path: tuple[str, ...]
    type: str
    parameters: dict
    arrays: dict[str, np.ndarray | None]
    inputs: dict[str, PortSpec]
    outputs: dict[str, PortSpec]
    subnet: "Node | None" = None

    @property
    def name(self) -> str:
        return "/".join(self.path) if self.path else "<net>"


@dataclass(frozen=True)
class Container:
    """A ``NetChain`` ("Chain") or ``NetGraph`` ("Graph").

    Attributes:
        path: node names from the top-level container down to this one (empty at the top).
        type: "Chain" or "Graph".
        nodes: node name -> child, in file order.
        edges: (destination, sources) pairs; more than one source feeds a list-valued port.
        inputs, outputs: port name -> type.
    """

    path: tuple[str, ...]
    type: str
    nodes: dict[str, "Node"]
    edges: tuple[tuple[PortRef, tuple[PortRef, ...]], ...]
    inputs: dict[str, PortSpec]
    outputs: dict[str, PortSpec]

    @property
    def name(self) -> str:
        return "/".join(self.path) if self.path else "<net>"


Node = Union[Layer, Container]


@dataclass(frozen=True)
class WlnetFile:
    """A decoded ``.wlnet`` file.

    Attributes:
        path: the file read.
        version: the Wolfram version string stored in the file (e.g. "14.3.0").
        unstable: the ``/Unstable`` flag (None in files older than 12.0).
        metadata: the decoded ``/Metadata`` association ({} when absent).
        net: the top-level container or layer.
        arrays: array key (``node/.../ArrayName``, keywords Nodes/Arrays/Parameters dropped)
            -> array, in export order.
        array_datasets: array key -> HDF5 dataset name (``/Arrays/k``).
    """

    path: Path
    version: str
    unstable: int | None
    metadata: dict
    net: Node
    arrays: dict[str, np.ndarray]
    array_datasets: dict[str, str]


def unwrap(value: Any) -> Any:
    """Strip ``ValidatedParameter[...]`` wrappers."""
    while (isinstance(value, Expr) and value.head_name == "ValidatedParameter"
           and len(value.args) == 1):
        value = value.args[0]
    return value


def _int(value: Any) -> int | None:
    value = unwrap(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _ints(value: Any, n: int) -> tuple[int | None, ...]:
    value = unwrap(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * n
    if isinstance(value, list) and len(value) == n:
        return tuple(_int(v) for v in value)
    return (None,) * n


def _first_shape(ports: dict) -> tuple[int | None, ...] | None:
    spec = next(iter(ports.values()), None)
    return spec.shape if isinstance(spec, TensorType) else None


def expected_array_shapes(kind: str, params: dict, inputs: dict,
                          outputs: dict) -> dict[str, tuple[int | None, ...] | None]:
    """Array name -> shape the layer needs (None entries: not determined by the file).

    The names are the ones Wolfram's layer definitions use (11.x ``Gamma``/``Beta`` and
    12+ ``Scaling``/``Biases`` for normalisation); a layer type without arrays maps to {}.
    """
    in_shape, out_shape = _first_shape(inputs), _first_shape(outputs)
    channels_in = in_shape[0] if in_shape else None
    if kind in ("Convolution", "Deconvolution"):
        kernel = unwrap(params.get("KernelSize"))
        dims = len(kernel) if isinstance(kernel, list) else (
            len(in_shape) - 1 if in_shape else None)
        if dims is None:
            return {"Weights": None, "Biases": None}
        kernel_dims = _ints(kernel, dims)
        groups = _int(params.get("ChannelGroups", params.get("$GroupNumber", 1))) or 1
        out_ch = _int(params.get("OutputChannels")) or (out_shape[0] if out_shape else None)
        in_ch = _int(params.get("$InputChannels")) or channels_in
        per_group_in = None if in_ch is None or in_ch % groups else in_ch // groups
        per_group_out = None if out_ch is None or out_ch % groups else out_ch // groups
        if kind == "Convolution":
            weights = (out_ch, per_group_in) + kernel_dims
        else:
            weights = (in_ch, per_group_out) + kernel_dims
        return {"Weights": weights, "Biases": (out_ch,)}
    if kind == "BatchNormalization":
        c = channels_in or _int(params.get("Channels", params.get("$Channels")))
        return {k: (c,) for k in ("Gamma", "Beta", "Scaling", "Biases", "MovingMean",
                                  "MovingVariance")}
    if kind == "InstanceNormalization":
        return {k: (channels_in,) for k in ("Gamma", "Beta", "Scaling", "Biases")}
    if kind == "Normalization":
        return {"Scaling": None, "Biases": None}
    if kind == "Linear":
        out_dims = unwrap(params.get("OutputDimensions"))
        units = None
        if isinstance(out_dims, list) and len(out_dims) == 1:
            units = _int(out_dims[0])
        elif isinstance(out_dims, int) and not isinstance(out_dims, bool):
            units = out_dims
        elif out_dims is None and out_shape is not None and len(out_shape) == 1:
            units = out_shape[0]
        if isinstance(out_dims, list) and len(out_dims) > 1:
            return {"Weights": None, "Biases": None}
        n_in = None
        if in_shape is not None and None not in in_shape:
            n_in = math.prod(in_shape)
        return {"Weights": (units, n_in), "Biases": (units,)}
    return {}


_ACTIVATION_LABELS = {"gelu": "GELU", "elu": "ELU", "selu": "SELU", "silu": "Swish",
                      "softplus": "SoftPlus", "softsign": "SoftSign", "relu": "ReLU",
                      "sigmoid": "LogisticSigmoid", "tanh": "Tanh"}


def layer_encoding(layer: Layer) -> str | None:
    """How the file encodes a layer whose encoding changed across Wolfram versions.

    E.g. ``multiport, 2`` (ports "1", "2"; Wolfram >= 11.3.2), ``list port, 2`` (one
    list-valued "Input", older files), ``GELU, ScalarFunctionObject`` (a compiled program,
    named when it equals a known activation) / ``symbol Ramp`` for elementwise functions,
    ``rule 1->3`` / ``swap 1<->3`` / ``permutation {4, 1, 2, 3}`` for
    TransposeLayer. None for layers with a single encoding.
    """
    if layer.type in MULTIPORT_TYPES:
        if list(layer.inputs) == ["Input"] and isinstance(layer.inputs["Input"], tuple):
            return f"list port, {len(layer.inputs['Input'])}"
        return f"multiport, {len(layer.inputs)}"
    if layer.type in ("Elementwise", "Threading"):
        func = unwrap(layer.parameters.get("Function"))
        if isinstance(func, Expr) and func.head_name == "ScalarFunctionObject":
            from legseg_tf.wlnet.scalar import ScalarProgram, ScalarProgramError, recognise

            try:
                known = recognise(ScalarProgram.from_expr(func))
            except ScalarProgramError:
                known = None
            label = _ACTIVATION_LABELS.get(known or "")
            return f"{label}, ScalarFunctionObject" if label else "ScalarFunctionObject"
        if isinstance(func, Symbol):
            return f"symbol {func.name}"
        if isinstance(func, str):
            return f"name {func!r}"
        return None if func is None else f"{to_wl_text(func)[:40]}"
    if layer.type == "Transpose":
        spec = unwrap(layer.parameters.get("Specification"))
        items = spec if isinstance(spec, list) else [spec]
        if items and all(isinstance(v, int) for v in items):
            return f"permutation {to_wl_text(items)}"
        parts = []
        for item in items:
            if isinstance(item, Expr) and item.head_name == "Rule" and len(item.args) == 2:
                parts.append(f"rule {item.args[0]}->{item.args[1]}")
            elif isinstance(item, Expr) and item.head_name == "TwoWayRule" and \
                    len(item.args) == 2:
                parts.append(f"swap {item.args[0]}<->{item.args[1]}")
            else:
                parts.append(to_wl_text(item)[:30])
        return ", ".join(parts) or None
    return None


def read_wlnet(path: str | Path) -> WlnetFile:
    """Read and decode a ``.wlnet`` file.

    Raises:
        WlnetFormatError: not HDF5, truncated, no ``/Network``, unreadable arrays, malformed
            tree, or a corrupt Compress string (message names the file).
        UnknownLayerError: a layer type or construct outside :data:`KNOWN_LAYER_TYPES`.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
        file_size = path.stat().st_size
    except OSError as exc:
        raise WlnetFormatError(f"{path}: cannot open: {exc.strerror or exc}") from exc
    if head != HDF5_SIGNATURE:
        raise WlnetFormatError(f"{path}: not a .wlnet file (no HDF5 signature)")
    try:
        h5 = h5py.File(path, "r")
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        raise WlnetFormatError(f"{path}: unreadable HDF5 (truncated or corrupt): "
                               f"{_short(exc)}") from exc
    try:
        with h5:
            return _read_open_file(path, h5, file_size)
    except WlnetError:
        raise
    except RecursionError as exc:
        raise WlnetFormatError(f"{path}: net description nested too deeply") from exc
    except MemoryError as exc:
        raise WlnetFormatError(f"{path}: not enough memory to read the file") from exc
    except (OSError, RuntimeError, KeyError, ValueError, TypeError, AttributeError,
            IndexError, OverflowError, UnicodeError) as exc:
        raise WlnetFormatError(f"{path}: malformed .wlnet content: {_short(exc)}") from exc


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _read_open_file(path: Path, h5: h5py.File, file_size: int) -> WlnetFile:
    if "Network" not in h5:
        raise WlnetFormatError(f"{path}: HDF5 file has no /Network dataset (not a .wlnet file)")
    version = _scalar_text(h5, "Version", path) if "Version" in h5 else "unknown"
    if "Unstable" in h5:
        flag = h5["Unstable"]
        if not isinstance(flag, h5py.Dataset) or flag.size != 1 or flag.dtype.kind not in "iub":
            raise WlnetFormatError(f"{path}: /Unstable is not a scalar integer")
        unstable = int(flag[()])
    else:
        unstable = None
    network_text = _scalar_text(h5, "Network", path)
    if not network_text.lstrip().startswith("1:"):
        raise WlnetFormatError(
            f"{path}: /Network is not a Compress string (InputForm text of Wolfram 11.0 or a "
            f"WXF byte array is not supported)")
    try:
        tree = uncompress(network_text)
        metadata = uncompress(_scalar_text(h5, "Metadata", path)) if "Metadata" in h5 else {}
    except ExpressionError as exc:
        raise type(exc)(f"{path}: corrupt /Network expression: {exc}") from exc
    if not isinstance(tree, dict):
        raise WlnetFormatError(f"{path}: /Network does not decode to an association")
    datasets = h5["Arrays"] if "Arrays" in h5 else None
    if datasets is not None and not isinstance(datasets, h5py.Group):
        raise WlnetFormatError(f"{path}: /Arrays is not a group")
    builder = _TreeBuilder(path, datasets, file_size)
    net = builder.node(tree, ())
    unused = builder.unreferenced()
    if unused:
        LOGGER.warning("%s: %d array(s) not referenced by the net: %s", path, len(unused),
                       ", ".join(unused[:5]))
    return WlnetFile(path=path, version=version, unstable=unstable,
                     metadata=metadata if isinstance(metadata, dict) else {}, net=net,
                     arrays=builder.arrays, array_datasets=builder.array_datasets)


def _scalar_text(h5: h5py.File, name: str, path: Path) -> str:
    node = h5[name]
    if not isinstance(node, h5py.Dataset) or node.size != 1 or node.dtype.kind not in "SOU":
        raise WlnetFormatError(f"{path}: /{name} is not a scalar string")
    if node.dtype.kind == "S" and node.dtype.itemsize > MAX_NETWORK_CHARS:
        raise WlnetFormatError(f"{path}: /{name} declares an oversized string")
    value = node[()]
    if isinstance(value, np.ndarray):
        value = value.item() if value.size == 1 else value
    if isinstance(value, (bytes, str)) and len(value) > MAX_NETWORK_CHARS:
        raise WlnetFormatError(f"{path}: /{name} is larger than {MAX_NETWORK_CHARS:,} "
                               f"characters")
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace").rstrip("\x00")
    if isinstance(value, str):
        return value
    raise WlnetFormatError(f"{path}: /{name} is not a string (got {type(value).__name__})")


class _TreeBuilder:
    """Walks the decoded association and builds typed records, resolving arrays."""

    def __init__(self, path: Path, datasets: h5py.Group | None, file_size: int) -> None:
        self.path = path
        self.datasets = datasets
        self.file_size = file_size
        self.total_bytes = 0
        self.arrays: dict[str, np.ndarray] = {}
        self.array_datasets: dict[str, str] = {}
        self.used: set[str] = set()

    def fail(self, cls: type[WlnetError], where: tuple[str, ...], message: str) -> WlnetError:
        node = "/".join(where) if where else "<net>"
        return cls(f"{self.path}: node {node}: {message}")

    def node(self, assoc: Any, path: tuple[str, ...], key: tuple[str, ...] = ()) -> Node:
        if not isinstance(assoc, dict) or "Type" not in assoc:
            raise self.fail(WlnetFormatError, path, "expected a layer association with a Type")
        kind = assoc["Type"]
        if not isinstance(kind, str):
            raise self.fail(WlnetFormatError, path, f"bad Type {to_wl_text(kind)}")
        if kind in CONTAINER_TYPES:
            return self.container(assoc, kind, path, key)
        if kind not in KNOWN_LAYER_TYPES:
            raise self.fail(UnknownLayerError, path, f"unknown layer type {kind!r}")
        return self.layer(assoc, kind, path, key)

    def container(self, assoc: dict, kind: str, path: tuple[str, ...],
                  key: tuple[str, ...]) -> Container:
        if assoc.get("SharedArrays"):
            raise self.fail(UnknownLayerError, path, "shared arrays (NetSharedArray) are not "
                                                     "supported")
        raw_nodes = assoc.get("Nodes")
        if not isinstance(raw_nodes, dict):
            raise self.fail(WlnetFormatError, path, "container without a Nodes association")
        nodes = {}
        for name, child in raw_nodes.items():
            name = str(name)
            nodes[name] = self.node(child, path + (name,), key + (name,))
        edges = tuple(self.edge(rule, path) for rule in assoc.get("Edges", []))
        return Container(path=path, type=kind, nodes=nodes, edges=edges,
                         inputs=self.ports(assoc.get("Inputs", {}), path),
                         outputs=self.ports(assoc.get("Outputs", {}), path))

    def layer(self, assoc: dict, kind: str, path: tuple[str, ...],
              key: tuple[str, ...]) -> Layer:
        params = assoc.get("Parameters", {})
        if not isinstance(params, dict):
            raise self.fail(WlnetFormatError, path, "Parameters is not an association")
        arrays_raw = assoc.get("Arrays", {})
        if arrays_raw is None:
            arrays_raw = {}
        if not isinstance(arrays_raw, dict):
            raise self.fail(WlnetFormatError, path, "Arrays is not an association")
        inputs = self.ports(assoc.get("Inputs", {}), path)
        outputs = self.ports(assoc.get("Outputs", {}), path)
        expected = expected_array_shapes(kind, params, inputs, outputs)
        arrays = {}
        for name, ref in arrays_raw.items():
            name = str(name)
            if name not in expected:
                allowed = ", ".join(expected) or "none"
                raise self.fail(UnknownLayerError, path,
                                f"{kind} layer has an unknown array {name!r} (known: {allowed})")
            arrays[name] = self.array(ref, path, key + (name,), expected[name])
        subnet = None
        if isinstance(params.get("Net"), dict):
            subnet = self.node(params["Net"], path + ("Net",), key + ("Net",))
            params = {k: v for k, v in params.items() if k != "Net"}
        return Layer(path=path, type=kind, parameters=params, arrays=arrays,
                     inputs=inputs, outputs=outputs, subnet=subnet)

    def array(self, ref: Any, path: tuple[str, ...], key: tuple[str, ...],
              expected: tuple[int | None, ...] | None = None) -> np.ndarray | None:
        """Check dataset ``ref``'s declared shape, dtype and size, then read it."""
        if ref is None:
            return None
        if not (isinstance(ref, Expr) and ref.head_name == "ExportedArray" and len(ref.args) == 1
                and isinstance(ref.args[0], int)):
            raise self.fail(UnknownLayerError, path,
                            f"array {key[-1]!r} is {to_wl_text(ref)[:80]}, not ExportedArray[k]")
        index = ref.args[0]
        name = str(index)
        if self.datasets is None or name not in self.datasets:
            raise self.fail(WlnetFormatError, path,
                            f"array {key[-1]!r} refers to missing dataset /Arrays/{index}")
        if name in self.used:
            raise self.fail(UnknownLayerError, path,
                            f"dataset /Arrays/{index} is used twice (shared arrays are not "
                            f"supported)")
        dataset = self.datasets[name]
        if not isinstance(dataset, h5py.Dataset):
            raise self.fail(WlnetFormatError, path, f"/Arrays/{index} is not a dataset")
        if dataset.dtype.kind != "f" or dataset.dtype.itemsize not in (2, 4, 8):
            raise self.fail(WlnetFormatError, path,
                            f"/Arrays/{index} has dtype {dataset.dtype}, expected floats")
        shape = tuple(int(d) for d in dataset.shape)
        if expected is not None and (len(shape) != len(expected) or any(
                e is not None and e != d for e, d in zip(expected, shape))):
            want = "x".join("?" if e is None else str(e) for e in expected)
            raise self.fail(WlnetFormatError, path,
                            f"array {key[-1]!r} (/Arrays/{index}) has shape {list(shape)}, "
                            f"the layer needs {want}")
        nbytes = math.prod(shape) * dataset.dtype.itemsize
        limit = self.file_size if dataset.compression is None else MAX_ARRAY_BYTES
        if nbytes > limit or self.total_bytes + nbytes > MAX_ARRAY_BYTES:
            raise self.fail(WlnetFormatError, path,
                            f"/Arrays/{index} declares {nbytes:,} bytes of data, more than the "
                            f"file can hold")
        self.total_bytes += nbytes
        data = np.asarray(dataset[()])
        if tuple(data.shape) != shape:
            raise self.fail(WlnetFormatError, path, f"/Arrays/{index} read with a wrong shape")
        array_key = "/".join(key)
        self.arrays[array_key] = data
        self.array_datasets[array_key] = f"/Arrays/{index}"
        self.used.add(name)
        return data

    def unreferenced(self) -> list[str]:
        if self.datasets is None:
            return []
        return sorted((n for n in self.datasets.keys() if n not in self.used), key=_natural)

    def ports(self, raw: Any, path: tuple[str, ...]) -> dict[str, PortSpec]:
        if not isinstance(raw, dict):
            raise self.fail(WlnetFormatError, path, "port association expected")
        return {str(name): self.port_type(value, path) for name, value in raw.items()}

    def port_type(self, value: Any, path: tuple[str, ...]) -> PortSpec:
        if isinstance(value, list):
            return tuple(self.port_type(v, path) for v in value)
        if isinstance(value, Expr) and value.head_name == "ListT" and len(value.args) == 2:
            count = value.args[0]
            if not isinstance(count, int) or isinstance(count, bool) or not 0 < count <= 4096:
                raise self.fail(UnknownLayerError, path,
                                f"list port of open or bad length {to_wl_text(count)}")
            inner = self.port_type(value.args[1], path)
            if isinstance(inner, tuple):
                raise self.fail(WlnetFormatError, path, "nested list port")
            return (inner,) * count
        if isinstance(value, Expr) and value.head_name in ("NetEncoder", "NetDecoder"):
            if len(value.args) < 3:
                raise self.fail(WlnetFormatError, path, f"bad coder {to_wl_text(value)[:80]}")
            name, params, tensor = value.args[0], value.args[1], value.args[2]
            inner = self.port_type(tensor, path)
            if not isinstance(inner, TensorType):
                raise self.fail(WlnetFormatError, path, "coder wraps a list of tensors")
            return TensorType(shape=inner.shape,
                              coder="encoder" if value.head_name == "NetEncoder" else "decoder",
                              coder_name=str(name),
                              coder_params=params if isinstance(params, dict) else {})
        if isinstance(value, Expr) and value.head_name == "TensorT" and value.args:
            dims = value.args[0]
            if not isinstance(dims, list):
                return TensorType(shape=())
            if len(dims) > 32:
                raise self.fail(WlnetFormatError, path, f"tensor of rank {len(dims)}")
            shape = tuple(d if isinstance(d, int) and not isinstance(d, bool) else None
                          for d in dims)
            if any(d is not None and not 0 < d < 2**31 for d in shape):
                raise self.fail(WlnetFormatError, path, f"bad tensor dimensions {dims}")
            return TensorType(shape=shape)
        if isinstance(value, Expr) and value.head_name in ("IndexIntegerT", "RealT", "AtomT"):
            return TensorType(shape=())
        if value == Symbol("RealT"):
            return TensorType(shape=())
        # Unknown/abstract types (e.g. a port left untyped) are kept as rank-unknown tensors.
        return TensorType(shape=(None,))

    def edge(self, rule: Any, path: tuple[str, ...]) -> tuple[PortRef, tuple[PortRef, ...]]:
        if not (isinstance(rule, Expr) and rule.head_name == "Rule" and len(rule.args) == 2):
            raise self.fail(WlnetFormatError, path, f"bad edge {to_wl_text(rule)[:80]}")
        dest = self.port_ref(rule.args[0], path)
        src_raw = rule.args[1]
        sources = tuple(self.port_ref(s, path) for s in src_raw) if isinstance(src_raw, list) \
            else (self.port_ref(src_raw, path),)
        return dest, sources

    def port_ref(self, value: Any, path: tuple[str, ...]) -> PortRef:
        if not (isinstance(value, Expr) and value.head_name == "NetPath"):
            raise self.fail(WlnetFormatError, path, f"bad edge end {to_wl_text(value)[:80]}")
        parts = list(value.args)
        index = None
        if parts and isinstance(parts[-1], int):
            index = parts.pop()
        if len(parts) == 4 and parts[0] == "Nodes" and parts[2] in ("Inputs", "Outputs"):
            return PortRef(str(parts[1]), str(parts[2]), str(parts[3]), index)
        if len(parts) == 2 and parts[0] in ("Inputs", "Outputs"):
            return PortRef(None, str(parts[0]), str(parts[1]), index)
        raise self.fail(UnknownLayerError, path, f"unsupported edge end {to_wl_text(value)}")


def _natural(name: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def iter_layers(node: Node):
    """Yield every :class:`Layer` below ``node`` depth-first (operator sub-nets included)."""
    if isinstance(node, Container):
        for child in node.nodes.values():
            yield from iter_layers(child)
    else:
        yield node
        if node.subnet is not None:
            yield from iter_layers(node.subnet)


def count_parameters(wl: WlnetFile) -> int:
    """Total number of array elements in the file."""
    return int(sum(a.size for a in wl.arrays.values()))


def layer_tree_lines(node: Node, indent: int = 0) -> list[str]:
    """Human-readable layer tree (one line per node) for ``legseg-import --inspect``."""
    pad = "  " * indent
    name = node.path[-1] if node.path else "<net>"
    lines = []
    if isinstance(node, Container):
        ins = ", ".join(f"{k}{_shape_text(v)}" for k, v in node.inputs.items())
        outs = ", ".join(f"{k}{_shape_text(v)}" for k, v in node.outputs.items())
        lines.append(f"{pad}{name}: Net{node.type} ({len(node.nodes)} nodes) in: {ins} "
                     f"out: {outs}")
        for child in node.nodes.values():
            lines.extend(layer_tree_lines(child, indent + 1))
        return lines
    arrays = ", ".join(f"{k}{list(v.shape)}" for k, v in node.arrays.items() if v is not None)
    summary = _param_summary(node)
    out = ", ".join(_shape_text(v) for v in node.outputs.values())
    suffix = f"  [{arrays}]" if arrays else ""
    encoding = layer_encoding(node)
    kind = f"{node.type} ({encoding})" if encoding else node.type
    lines.append(f"{pad}{name}: {kind}{summary} -> {out}{suffix}")
    if node.subnet is not None:
        lines.extend(layer_tree_lines(node.subnet, indent + 1))
    return lines


_SUMMARY_KEYS = ("OutputChannels", "KernelSize", "Stride", "PaddingSize", "Dilation",
                 "ChannelGroups", "Function", "Level", "Specification", "OutputDimensions",
                 "Epsilon", "Resampling", "DropoutProbability")


def _param_text(value: Any) -> str:
    value = unwrap(value)
    if isinstance(value, Expr) and value.head_name == "ScalarFunctionObject":
        from legseg_tf.wlnet.scalar import ScalarProgram, ScalarProgramError

        try:
            return ScalarProgram.from_expr(value).text()
        except ScalarProgramError as exc:
            return f"<unreadable ScalarFunctionObject: {exc}>"
    text = to_wl_text(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _param_summary(layer: Layer) -> str:
    parts = [f"{k}={_param_text(layer.parameters[k])}" for k in _SUMMARY_KEYS
             if k in layer.parameters]
    return f"[{', '.join(parts)}]" if parts else ""


def _shape_text(spec: PortSpec) -> str:
    if isinstance(spec, tuple):
        return "[" + ", ".join(_shape_text(s) for s in spec) + "]"
    dims = "x".join("?" if d is None else str(d) for d in spec.shape) or "scalar"
    coder = f" {spec.coder_name} {spec.coder}" if spec.coder else ""
    return f"({dims}{coder})"
