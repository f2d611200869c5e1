"""The ``.onnx`` branch of ``legseg-import``: convert one ONNX file into the models folder.

The result is stored exactly like an imported ``.wlnet`` net: ``<id>.json`` (a
``"wlnet_graph"`` config), ``<id>.weights.h5`` and a manifest entry (or ``<id>.entry.json``
for a net without a pipeline role). The role comes from the file name (the QMRITools names
of :data:`legseg_tf.wlnet.catalogue.KNOWN_NETS`, e.g. ``N5_UpperLeg_3D.onnx``) or from ``--role``.

Class labels. ONNX has no class decoders, so the labels of an output come from the file's
``metadata_props`` or from ``--classes PORT=L1,L2,...`` (which wins). Metadata keys read:
``labels`` or ``class_labels`` (a JSON object port -> list of labels), and
``<port>.labels`` / ``labels.<port>`` (a JSON list or a comma-separated string). Labels are
stored as the output's ``decoder`` entry, like a ``.wlnet`` Class decoder.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

from legseg_tf.derivatives import atomic_write_text
from legseg_tf.model_store import save_weights_atomically, sha256_file
from legseg_tf.onnxnet.graph import OnnxGraph, OnnxImportError, read_onnx
from legseg_tf.wlnet.expr import WlnetError

LOGGER = logging.getLogger(__name__)

#: Provenance sources of imported ONNX nets.
SOURCE_QMRITOOLS, SOURCE_OTHER = "qmritools-onnx", "onnx"


def parse_classes(values: list[str] | None) -> dict[str, list[str]]:
    """``["Side=Left,Right,Both", ...]`` -> ``{"Side": ["Left", "Right", "Both"]}``.

    Raises:
        ValueError: a value without ``PORT=``, an empty label, or a port given twice.
    """
    out: dict[str, list[str]] = {}
    for value in values or []:
        port, sep, rest = value.partition("=")
        port = port.strip()
        labels = [v.strip() for v in rest.split(",")]
        if not sep or not port or not rest.strip() or any(not v for v in labels):
            raise ValueError(f"--classes {value!r}: expected PORT=LABEL,LABEL,... "
                             f"(e.g. Side=Left,Right,Both)")
        if port in out:
            raise ValueError(f"--classes gives output {port!r} twice")
        out[port] = labels
    return out


def metadata_labels(metadata: dict[str, str], ports: list[str]) -> dict[str, list[str]]:
    """Class labels per output port found in an ONNX file's ``metadata_props``."""
    out: dict[str, list[str]] = {}
    for key in ("labels", "class_labels"):
        if key in metadata:
            try:
                table = json.loads(metadata[key])
            except json.JSONDecodeError:
                LOGGER.warning("metadata %r is not a JSON object; ignored", key)
                continue
            if isinstance(table, dict):
                out.update({str(k): [str(v) for v in vs] for k, vs in table.items()
                            if str(k) in ports and isinstance(vs, list)})
    for port in ports:
        for key in (f"{port}.labels", f"labels.{port}"):
            if key not in metadata:
                continue
            text = metadata[key].strip()
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                value = [v.strip() for v in text.split(",") if v.strip()]
            if isinstance(value, list) and value:
                out[port] = [str(v) for v in value]
    return out


def attach_labels(graph: OnnxGraph, config: dict, classes: dict[str, list[str]]) -> dict:
    """Put class labels into the outputs' ``decoder`` entries; returns port -> origin.

    Raises:
        OnnxImportError: a label list names an unknown output or has the wrong length.
    """
    ports = [o["port"] for o in config["outputs"]]
    found = {port: (labels, "metadata") for port, labels in
             metadata_labels(graph.metadata, ports).items()}
    for port, labels in classes.items():
        if port not in ports:
            raise OnnxImportError(f"{graph.path}: --classes names output {port!r}; the net's "
                                  f"outputs are {ports}")
        found[port] = (labels, "--classes")
    origin = {}
    for out in config["outputs"]:
        if out["port"] not in found:
            continue
        labels, source = found[out["port"]]
        width = out["wolfram_shape"][-1] if out["wolfram_shape"] else 1
        if len(labels) != width:
            raise OnnxImportError(f"{graph.path}: output {out['port']!r} has {width} classes "
                                  f"but {len(labels)} labels were given ({source})")
        out["decoder"] = {"type": "Class", "labels": list(labels)}
        origin[out["port"]] = source
    return origin


def _check_classifier(graph: OnnxGraph, config: dict) -> None:
    ports = {o["port"].lower(): o for o in config["outputs"]}
    side = [o for k, o in ports.items() if k.startswith("side")]
    position = [o for k, o in ports.items() if k.startswith("pos")]
    if len(side) != 1 or len(position) != 1:
        raise OnnxImportError(f"{graph.path}: a slice classifier needs outputs named Side and "
                              f"Position, the net has {[o['port'] for o in config['outputs']]}")
    for out in side + position:
        if not (out.get("decoder") or {}).get("labels"):
            raise OnnxImportError(
                f"{graph.path}: classifier output {out['port']!r} has no class labels (ONNX "
                f"stores none); give them, e.g. --classes {out['port']}=Left,Right,Both")


def convert_onnx(path: Path, models_dir: Path, *, role: str | None = None,
                 classes: dict[str, list[str]] | None = None) -> str:
    """Convert one ONNX file into ``models_dir``; returns the one-line summary.

    Args:
        path: the ``.onnx`` file (external data files next to it).
        models_dir: where the config, weights and manifest entry go.
        role: manifest role; default from the file name (QMRITools names), else "other".
        classes: class labels per output port (override the file's metadata).

    Raises:
        OnnxImportError: the file cannot be read or translated, or its classes do not fit.
        OSError: the outputs cannot be written.
    """
    from legseg_tf import __version__
    from legseg_tf.onnxnet.translator import describe
    from legseg_tf.wlnet import catalogue as wl
    from legseg_tf.wlnet.translator import build_from_config, set_weights

    graph = read_onnx(path)
    stem = path.stem
    known = wl.KNOWN_NETS.get(stem)
    role_tables = wl.ROLE_TABLES
    role = role or (known.role if known else "other")
    if role not in role_tables and role != "other":
        raise OnnxImportError(f"{path}: unknown role {role!r}; known: "
                              f"{sorted(role_tables)} or 'other'")
    table = role_tables.get(role)
    description = describe(graph, free_spatial=role in wl.SEGMENTATION_ROLES)
    config = description.config
    origin = attach_labels(graph, config, classes or {})
    if role in wl.SEGMENTATION_ROLES:
        try:
            wl.check_classes(path, config, table)
        except WlnetError as exc:
            raise OnnxImportError(str(exc)) from exc
    elif role == "classifier":
        _check_classifier(graph, config)
    model = build_from_config(config)
    set_weights(model, description.weights)
    qmritools = known is not None
    config_name, weights_name = f"{stem}.json", f"{stem}.weights.h5"
    atomic_write_text(models_dir / config_name, json.dumps(config, indent=1) + "\n")
    save_weights_atomically(model, models_dir / weights_name)
    provenance = {
        "source": SOURCE_QMRITOOLS if qmritools else SOURCE_OTHER,
        "file": path.name, "file_sha256": sha256_file(path), "onnx_opset": graph.opset,
        "onnx_ir_version": int(graph.model.ir_version),
        "producer": config["source"]["producer"] or None,
        "converter": f"legseg-import {__version__}",
    }
    if graph.model.doc_string:
        provenance["description"] = graph.model.doc_string[:500]
    if origin:
        provenance["class_labels"] = origin
    if qmritools:
        provenance["licence"] = wl.LICENCE_NOTICE
        provenance["citation"] = wl.CITATION
    entry = {"id": stem, "role": role, "config": config_name, "weights": weights_name,
             "sha256": sha256_file(models_dir / weights_name), "label_table": table,
             "provenance": provenance}
    if role != "other":
        from legseg_tf.model_store import write_entry

        try:
            write_entry(models_dir, entry)
        except Exception as exc:  # ManifestError: a data problem of this file
            raise OnnxImportError(f"{path}: manifest entry rejected: {exc}") from exc
        where = "manifest.json"
    else:
        atomic_write_text(models_dir / f"{stem}.entry.json", json.dumps(entry, indent=1) + "\n")
        where = f"{stem}.entry.json"
    return summarize(graph, config, role, where)


def summarize(graph: OnnxGraph, config: dict, role: str, where: str) -> str:
    """One line: id, role, opset, node and parameter counts, input size, classes."""
    inputs = "; ".join(f"{i['port']} {'x'.join(map(str, i['wolfram_shape'])) or 'scalar'}"
                       for i in config["inputs"])
    classes = []
    for out in config["outputs"]:
        labels = (out.get("decoder") or {}).get("labels")
        n = len(labels) if labels else (out["wolfram_shape"][-1] if out["wolfram_shape"] else 1)
        classes.append(f"{out['port']} {n}")
    return (f"{graph.path.stem}: role {role}, ONNX opset {graph.opset}, "
            f"{len(graph.model.graph.node)} nodes, {graph.parameter_count():,} parameters, "
            f"input {inputs} (channels first), classes {', '.join(classes)} -> {where}")


def inspect_lines(path: Path) -> list[str]:
    """Human-readable description of an ONNX file (no TensorFlow needed)."""
    graph = read_onnx(path)
    model = graph.model
    producer = " ".join(p for p in (model.producer_name, model.producer_version) if p)
    lines = [f"{path.name}: ONNX IR {model.ir_version}, opset {graph.opset}"
             + (f", producer {producer}" if producer else "")
             + f", {graph.parameter_count():,} parameters"]
    for name, shape in graph.inputs.items():
        lines.append(f"  input  {name}: {_shape_text(shape)}")
    for name in graph.outputs:
        lines.append(f"  output {name}: {_shape_text(graph.shapes.get(name))}")
    counts = Counter(node.op_type for node in model.graph.node)
    lines.append("  operators: " + ", ".join(f"{op} x{n}" for op, n in sorted(counts.items())))
    for key, value in graph.metadata.items():
        lines.append(f"  metadata {key}: {value[:100]}")
    return lines


def _shape_text(shape) -> str:
    if shape is None:
        return "?"
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"
