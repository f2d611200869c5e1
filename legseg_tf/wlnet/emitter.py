"""The op emitter both importers share: it writes a ``"wlnet_graph"`` config op by op.

The ``.wlnet`` translator (:mod:`legseg_tf.wlnet.translator`) and the ONNX translator
(:mod:`legseg_tf.onnxnet.translator`) walk different graphs but emit the same config (see
:func:`legseg_tf.wlnet.translator.build_from_config`): a topologically ordered list of
Keras-level ops (channels last) plus the weights of each Keras layer. Every tensor carries its
logical shape (the source format's, without the batch axis) and the logical axis held by each
stored Keras axis, so that layout changes are explicit ``permute`` ops, emitted once per
tensor and order.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tensor:
    """Keras tensor name, logical shape (no batch axis), and the logical axis of each stored
    Keras axis (batch excluded)."""

    name: str
    shape: tuple[int | None, ...]
    order: tuple[int, ...]


def channels_last(rank: int) -> tuple[int, ...]:
    """Stored order of a channels-first logical tensor of ``rank`` axes kept channels last."""
    return tuple(range(1, rank)) + (0,) if rank >= 2 else tuple(range(rank))


class OpEmitter:
    """Collects config ops and weights; names are unique, permutations emitted once."""

    def __init__(self) -> None:
        self.ops: list[dict] = []
        self.weights: dict[str, list[np.ndarray]] = {}
        self.names: set[str] = set()
        self.permuted: dict[tuple[str, tuple[int, ...]], Tensor] = {}

    def unique(self, name: str) -> str:
        """``name``, or ``name_2``, ``name_3``, ... when taken."""
        base, k = name, 1
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def emit(self, name: str, op: str, inputs: list[Tensor], config: dict, shape: tuple,
             order: tuple, weights: list[np.ndarray] | None = None) -> Tensor:
        """Append one op; returns its output tensor."""
        name = self.unique(name)
        self.ops.append({"name": name, "op": op, "inputs": [t.name for t in inputs],
                         "config": config})
        if weights is not None:
            self.weights[name] = [np.asarray(w, dtype=np.float32) for w in weights]
        return Tensor(name, tuple(shape), tuple(order))

    def _pad(self, x: Tensor, pads: list[tuple[int, int]], name: str) -> Tensor:
        """``x`` zero-padded by (low, high) per spatial axis (logical channels-first shape);
        no op when all pads are 0."""
        if not any(lo or hi for lo, hi in pads):
            return x
        shape = (x.shape[0],) + tuple(None if s is None else s + lo + hi
                                      for s, (lo, hi) in zip(x.shape[1:], pads))
        return self.emit(f"{name}_pad", "zero_pad", [x],
                         {"rank": len(pads), "padding": [list(p) for p in pads]},
                         shape, x.order)

    def to_order(self, t: Tensor, order: tuple[int, ...], hint: str) -> Tensor:
        """``t`` stored in ``order`` (a ``permute`` op the first time it is asked for)."""
        if t.order == order:
            return t
        key = (t.name, order)
        if key not in self.permuted:
            dims = [t.order.index(a) + 1 for a in order]
            self.permuted[key] = self.emit(f"{hint}_permute", "permute", [t], {"dims": dims},
                                           t.shape, order)
        return self.permuted[key]


def prune_ops(ops: list[dict], outputs: list[str]) -> list[dict]:
    """Drop ops that no output depends on (dangling branches), keeping the order."""
    producer = {op["name"]: op for op in ops}
    needed, stack = set(), list(outputs)
    while stack:
        name = stack.pop()
        if name in needed or name not in producer:
            continue
        needed.add(name)
        stack.extend(producer[name]["inputs"])
    dropped = [op["name"] for op in ops if op["name"] not in needed]
    if dropped:
        LOGGER.info("dropping %d layer(s) no output depends on: %s", len(dropped),
                    ", ".join(dropped[:5]))
    return [op for op in ops if op["name"] in needed]
