"""Small Keras layers for the elementwise op kinds of a ``"wlnet_graph"`` config.

Used by :func:`legseg_tf.wlnet.translator.build_from_config` for the op kinds that have no
stock Keras layer (imported nets from ONNX files express activations and scalings as
arithmetic nodes):

* ``"unary"``: ``{"function": name}``, one of :data:`UNARY`;
* ``"const_arith"``: ``x <op> c`` (or ``c <op> x`` with ``constant_first``), ``c`` a
  non-trainable weight of shape ``constant_shape`` in the tensor's stored (Keras) axis order
  without the batch axis, broadcast like numpy; ``op`` one of :data:`BINARY`;
* ``"arith"``: ``a <op> b`` of two tensors with broadcastable shapes.

All layers are elementwise: the output has the input's axis order (batch first).
Importing this module imports Keras.
"""
from __future__ import annotations

import keras
from keras import ops

#: Unary functions by config name.
UNARY = {
    "erf": ops.erf,
    "sqrt": ops.sqrt,
    "exp": ops.exp,
    "log": ops.log,
    "abs": ops.abs,
    "neg": ops.negative,
    "reciprocal": lambda x: ops.divide(ops.ones_like(x), x),
    "floor": ops.floor,
    "ceil": ops.ceil,
    "gelu_tanh": lambda x: keras.activations.gelu(x, approximate=True),
}

#: Binary functions by config name (numpy broadcasting).
BINARY = {
    "add": ops.add,
    "sub": ops.subtract,
    "mul": ops.multiply,
    "div": ops.divide,
    "pow": ops.power,
    "max": ops.maximum,
    "min": ops.minimum,
}


@keras.saving.register_keras_serializable(package="legseg")
class Unary(keras.layers.Layer):
    """``f(x)`` for a function named in :data:`UNARY`."""

    def __init__(self, function: str, **kwargs) -> None:
        super().__init__(**kwargs)
        if function not in UNARY:
            raise ValueError(f"unknown unary function {function!r}; known: {sorted(UNARY)}")
        self.function = function

    def call(self, x):
        return UNARY[self.function](x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "function": self.function}


@keras.saving.register_keras_serializable(package="legseg")
class ConstantArithmetic(keras.layers.Layer):
    """``x <op> c`` (or ``c <op> x``) with a stored constant ``c`` (non-trainable weight)."""

    def __init__(self, operation: str, constant_shape, constant_first: bool = False,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if operation not in BINARY:
            raise ValueError(f"unknown operation {operation!r}; known: {sorted(BINARY)}")
        self.operation = operation
        self.constant_shape = tuple(int(d) for d in constant_shape)
        self.constant_first = bool(constant_first)

    def build(self, input_shape) -> None:
        self.constant = self.add_weight(name="constant", shape=self.constant_shape,
                                        initializer="zeros", trainable=False)

    def call(self, x):
        c = ops.cast(self.constant, x.dtype)
        a, b = (c, x) if self.constant_first else (x, c)
        return BINARY[self.operation](a, b)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "operation": self.operation,
                "constant_shape": list(self.constant_shape),
                "constant_first": self.constant_first}


@keras.saving.register_keras_serializable(package="legseg")
class BinaryArithmetic(keras.layers.Layer):
    """``a <op> b`` of two tensors (numpy broadcasting)."""

    def __init__(self, operation: str, **kwargs) -> None:
        super().__init__(**kwargs)
        if operation not in BINARY:
            raise ValueError(f"unknown operation {operation!r}; known: {sorted(BINARY)}")
        self.operation = operation

    def call(self, inputs):
        a, b = inputs
        return BINARY[self.operation](a, b)

    def get_config(self) -> dict:
        return {**super().get_config(), "operation": self.operation}


def make_layer(kind: str, config: dict, name: str) -> keras.layers.Layer:
    """The layer for a config op of kind "unary", "const_arith" or "arith"."""
    if kind == "unary":
        return Unary(config["function"], name=name)
    if kind == "const_arith":
        return ConstantArithmetic(config["op"], config["constant_shape"],
                                  config.get("constant_first", False), name=name)
    if kind == "arith":
        return BinaryArithmetic(config["op"], name=name)
    raise ValueError(f"unknown elementwise op kind {kind!r}")
