"""Wolfram scalar-function programs (``ScalarFunctionObject``) as data, evaluated generally.

Since Wolfram 11.1 the NeuralNetworks package validates every ``ElementwiseLayer`` /
``ThreadingLayer`` function that is not a primitive symbol (``Ramp``, ``Tanh``, ``Plus``...)
with ``ToUnaryElementwiseFunction`` / ``ToNAryElementwiseFunction``: ``CompileScalarFunction``
evaluates the function on ``ScalarSymbol`` placeholders and stores the trace as

    ValidatedParameter[ScalarFunctionObject[{ScalarSymbol[1], ...}, ScalarSymbol[out],
                                            <|ScalarSymbol[k] -> {op, arg1, ...}, ...|>]]

an SSA program whose steps are lists headed by a symbol (``Times``, ``Erf``, ``Clip``, ``If``,
``Which``, ``Piecewise``, comparisons, ``Boole``...) or by a name string for the functions
Wolfram keeps named (``"ExponentialLinearUnit"``, ``"ScaledExponentialLinearUnit"``,
``"SoftPlus"``, ``"SoftSign"``, ``"HardTanh"``, ``"HardSigmoid"``, ``"Sigmoid"``,
``"RectifiedLinearUnit"``). Numbers are machine reals. ``ElementwiseLayer["GELU"]`` is stored
as the program of ``0.5 x (1 + Erf[0.7071... x])``.

:class:`ScalarProgram` parses such a program (refusing anything outside the known operation
set with a message naming it), renders it as a pure function for messages, serialises it to
JSON and evaluates it on numpy arrays or Keras tensors through one small backend interface.
Importing this module never imports TensorFlow or Keras.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from legseg_tf.wlnet.expr import Expr, Symbol, WlnetError, to_wl_text

MAX_STEPS = 10_000


class ScalarProgramError(WlnetError):
    """A scalar-function program is malformed or uses an operation this importer lacks."""


UNARY = frozenset({
    "ArcCos", "ArcCosh", "ArcSin", "ArcSinh", "ArcTan", "ArcTanh", "Cosh", "Sinh",
    "LogisticSigmoid", "Ramp", "SoftRamp", "Tanh", "Sin", "Cos", "Tan", "Log", "Exp", "Sqrt",
    "Square", "Abs", "Round", "Ceiling", "Floor", "Sign", "Erf", "Minus", "Boole", "Not",
    "Identity",
})
BINARY = frozenset({"Subtract", "Divide", "Power"})
NARY = frozenset({"Times", "Plus", "Min", "Max", "And", "Or"})
COMPARE = frozenset({"Greater", "GreaterEqual", "Less", "LessEqual", "Equal", "Unequal"})
#: Named functions of Wolfram's ScalarFunction.m ($namedFunctions plus their aliases), and
#: names newer versions may keep named (GELU, Swish, Mish).
NAMED = {
    "RectifiedLinearUnit": "RectifiedLinearUnit", "ReLU": "RectifiedLinearUnit",
    "ScaledExponentialLinearUnit": "ScaledExponentialLinearUnit",
    "SELU": "ScaledExponentialLinearUnit",
    "ExponentialLinearUnit": "ExponentialLinearUnit", "ELU": "ExponentialLinearUnit",
    "SoftSign": "SoftSign", "SoftPlus": "SoftPlus", "SoftReLU": "SoftPlus",
    "HardTanh": "HardTanh", "HardSigmoid": "HardSigmoid", "Sigmoid": "Sigmoid",
    "GELU": "GELU", "GaussianErrorLinearUnit": "GELU", "Swish": "Swish", "SiLU": "Swish",
    "Mish": "Mish",
}
SPECIAL = frozenset({"Clip", "If", "Which", "Piecewise"})
#: SELU constants as Wolfram's MXNet writer uses them (SSAtoOp["ScaledExponentialLinearUnit"]).
SELU_ALPHA, SELU_SCALE = 1.6732632423543, 1.0507009873554


@dataclass(frozen=True)
class Ref:
    """Reference to an SSA value (``ScalarSymbol[k]``)."""

    id: int


@dataclass(frozen=True)
class ScalarProgram:
    """A parsed ``ScalarFunctionObject``.

    Attributes:
        inputs: SSA ids of the arguments, in order.
        output: SSA id of the result.
        steps: (id, op, args) in evaluation order; args are :class:`Ref`, floats, bools or
            (for ``Clip``/``Piecewise``) nested tuples of those.
    """

    inputs: tuple[int, ...]
    output: int
    steps: tuple[tuple[int, str, tuple], ...]

    @property
    def arity(self) -> int:
        return len(self.inputs)

    # -- parsing -------------------------------------------------------------------------
    @classmethod
    def from_expr(cls, value: Any) -> "ScalarProgram":
        """Parse ``ScalarFunctionObject[ins, out, ssa]`` (a decoded expression)."""
        if not (isinstance(value, Expr) and value.head_name == "ScalarFunctionObject"
                and len(value.args) == 3):
            raise ScalarProgramError(f"not a ScalarFunctionObject: {to_wl_text(value)[:120]}")
        ins, out, ssa = value.args
        if not isinstance(ins, list) or not ins:
            raise ScalarProgramError("ScalarFunctionObject without argument symbols")
        inputs = tuple(_symbol_id(s) for s in ins)
        output = _symbol_id(out)
        if not isinstance(ssa, dict):
            raise ScalarProgramError("ScalarFunctionObject SSA part is not an association")
        if len(ssa) > MAX_STEPS:
            raise ScalarProgramError(f"scalar program has {len(ssa)} steps (limit {MAX_STEPS})")
        defined = set(inputs)
        steps = []
        for key, body in ssa.items():
            sid = _symbol_id(key)
            if sid in defined:
                raise ScalarProgramError(f"ScalarSymbol[{sid}] is assigned twice")
            if not (isinstance(body, list) and body):
                raise ScalarProgramError(f"bad SSA step {to_wl_text(body)[:80]}")
            op = _op_name(body[0])
            args = tuple(_arg(a, defined) for a in body[1:])
            _check_arity(op, args)
            steps.append((sid, op, args))
            defined.add(sid)
        if output not in defined:
            raise ScalarProgramError(f"result ScalarSymbol[{output}] is never assigned")
        return cls(inputs, output, tuple(steps))

    # -- JSON ----------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"inputs": list(self.inputs), "output": self.output,
                "steps": [[sid, op, [_arg_json(a) for a in args]]
                          for sid, op, args in self.steps]}

    @classmethod
    def from_json(cls, data: dict) -> "ScalarProgram":
        try:
            steps = tuple((int(sid), str(op), tuple(_arg_from_json(a) for a in args))
                          for sid, op, args in data["steps"])
            program = cls(tuple(int(i) for i in data["inputs"]), int(data["output"]), steps)
        except (KeyError, TypeError, ValueError) as exc:
            raise ScalarProgramError(f"malformed scalar program config: {exc}") from exc
        for _, op, args in program.steps:
            _check_arity(op, args)
        return program

    # -- rendering -----------------------------------------------------------------------
    def text(self) -> str:
        """The program as a Wolfram-like pure function, e.g. ``0.5*(#1*(1.+Erf[0.70..*#1]))&``."""
        names: dict[int, str] = {sid: f"#{k}" for k, sid in enumerate(self.inputs, start=1)}

        def show(a: Any) -> str:
            if isinstance(a, Ref):
                return names[a.id]
            if isinstance(a, tuple):
                return "{" + ", ".join(show(v) for v in a) + "}"
            return repr(a) if not isinstance(a, bool) else ("True" if a else "False")

        infix = {"Times": "*", "Plus": "+", "Subtract": "-", "Divide": "/", "Power": "^"}
        for sid, op, args in self.steps:
            if op in infix:
                names[sid] = "(" + infix[op].join(show(a) for a in args) + ")"
            else:
                head = f'"{op}"' if op in NAMED.values() else op
                names[sid] = f"{head}[" + ", ".join(show(a) for a in args) + "]"
        body = names[self.output]
        if body.startswith("(") and body.endswith(")"):
            body = body[1:-1]
        return body + "&"

    # -- evaluation ----------------------------------------------------------------------
    def evaluate(self, backend: "Backend", *xs):
        """Evaluate on ``xs`` (one tensor per argument) with ``backend``'s operations."""
        if len(xs) != self.arity:
            raise ScalarProgramError(f"program takes {self.arity} arguments, got {len(xs)}")
        values: dict[int, Any] = dict(zip(self.inputs, xs))
        like = xs[0]

        def val(a: Any):
            if isinstance(a, Ref):
                return values[a.id]
            if isinstance(a, bool):
                return backend.full_like(like, 1.0 if a else 0.0)
            if isinstance(a, (int, float)):
                return float(a)
            raise ScalarProgramError(f"bad operand {a!r}")

        for sid, op, args in self.steps:
            values[sid] = _apply(backend, op, args, val, like)
        return values[self.output]


def _symbol_id(value: Any) -> int:
    if (isinstance(value, Expr) and value.head_name == "ScalarSymbol" and len(value.args) == 1
            and isinstance(value.args[0], int) and not isinstance(value.args[0], bool)):
        return value.args[0]
    raise ScalarProgramError(f"expected ScalarSymbol[k], got {to_wl_text(value)[:80]}")


def _op_name(head: Any) -> str:
    if isinstance(head, Symbol):
        name = head.name
        if name in UNARY | BINARY | NARY | COMPARE | SPECIAL:
            return name
    elif isinstance(head, str) and head in NAMED:
        return NAMED[head]
    raise ScalarProgramError(f"scalar function operation {to_wl_text(head)} is not supported")


def _arg(a: Any, defined: set[int]) -> Any:
    if isinstance(a, Expr) and a.head_name == "ScalarSymbol":
        sid = _symbol_id(a)
        if sid not in defined:
            raise ScalarProgramError(f"ScalarSymbol[{sid}] used before it is assigned")
        return Ref(sid)
    if isinstance(a, bool):
        return a
    if isinstance(a, (int, float)):
        if not math.isfinite(float(a)):
            raise ScalarProgramError(f"non-finite constant {a!r} in scalar program")
        return float(a)
    if isinstance(a, list):
        return tuple(_arg(v, defined) for v in a)
    raise ScalarProgramError(f"unsupported operand {to_wl_text(a)[:80]} in scalar program")


def _arg_json(a: Any) -> Any:
    if isinstance(a, Ref):
        return {"ref": a.id}
    if isinstance(a, tuple):
        return {"list": [_arg_json(v) for v in a]}
    return a


def _arg_from_json(a: Any) -> Any:
    if isinstance(a, dict) and "ref" in a:
        return Ref(int(a["ref"]))
    if isinstance(a, dict) and "list" in a:
        return tuple(_arg_from_json(v) for v in a["list"])
    if isinstance(a, (bool, int, float)):
        return a if isinstance(a, bool) else float(a)
    raise ValueError(f"bad operand {a!r}")


def _check_arity(op: str, args: tuple) -> None:
    n = len(args)
    if op not in UNARY | BINARY | NARY | COMPARE | SPECIAL and op not in NAMED.values():
        raise ScalarProgramError(f"scalar function operation {op} is not supported")
    ok = False
    if op in UNARY or op in NAMED.values():
        ok = n == 1
    elif op in BINARY or op in COMPARE:
        ok = n == 2
    elif op in NARY:
        ok = n >= 2
    elif op == "Clip":
        ok = n == 2 and isinstance(args[1], tuple) and len(args[1]) == 2 and all(
            isinstance(v, float) for v in args[1])
    elif op == "If":
        ok = n == 3
    elif op == "Which":
        ok = n >= 2 and n % 2 == 0
    elif op == "Piecewise":
        ok = n == 2 and isinstance(args[0], tuple) and all(
            isinstance(c, tuple) and len(c) == 2 for c in args[0])
    if not ok:
        raise ScalarProgramError(f"scalar operation {op} with {n} operand(s) is malformed")
    for a in args:
        if isinstance(a, tuple) and op not in ("Clip", "Piecewise"):
            raise ScalarProgramError(f"list operand to {op} in scalar program")


class Backend:
    """The elementwise operations a program needs, over numpy or Keras tensors."""

    def __init__(self, ops: Any, erf: Callable) -> None:
        self.o = ops
        self.erf = erf

    def full_like(self, like, value: float):
        return self.o.full_like(like, value)


def numpy_backend() -> Backend:
    """Backend over numpy (float64 in, float64 out)."""
    from scipy.special import erf

    return Backend(np, erf)


def keras_backend() -> Backend:
    """Backend over ``keras.ops`` (imports Keras)."""
    from keras import ops

    return Backend(ops, ops.erf)


def _apply(b: Backend, op: str, args: tuple, val: Callable, like: Any):
    o = b.o
    if op in ("Clip",):
        lo, hi = args[1]
        return o.clip(val(args[0]), lo, hi)
    if op == "If":
        return o.where(_truth(b, val(args[0])), val(args[1]), _bcast(b, val(args[2]), like))
    if op == "Which":
        pairs = list(zip(args[::2], args[1::2]))
        return _select(b, pairs, None, val, like)
    if op == "Piecewise":
        return _select(b, list(args[0]), args[1], val, like)
    xs = [val(a) for a in args]
    if op in COMPARE:
        fn = {"Greater": o.greater, "GreaterEqual": o.greater_equal, "Less": o.less,
              "LessEqual": o.less_equal, "Equal": o.equal, "Unequal": o.not_equal}[op]
        return _boole(b, fn(_bcast(b, xs[0], like), xs[1]), like)
    if op in NARY:
        out = _bcast(b, xs[0], like)
        for x in xs[1:]:
            if op in ("Times", "And"):
                out = out * x
            elif op == "Plus":
                out = out + x
            elif op == "Min":
                out = o.minimum(out, x)
            elif op == "Max":
                out = o.maximum(out, x)
            else:  # Or on 0/1 values
                out = o.maximum(out, x)
        return out
    if op == "Subtract":
        return _bcast(b, xs[0], like) - xs[1]
    if op == "Divide":
        return _bcast(b, xs[0], like) / xs[1]
    if op == "Power":
        base, exp = xs
        if isinstance(exp, float) and exp == 2.0:
            return o.square(_bcast(b, base, like))
        return o.power(_bcast(b, base, like), exp)
    x = _bcast(b, xs[0], like)
    table = {
        "ArcCos": o.arccos, "ArcCosh": o.arccosh, "ArcSin": o.arcsin, "ArcSinh": o.arcsinh,
        "ArcTan": o.arctan, "ArcTanh": o.arctanh, "Cosh": o.cosh, "Sinh": o.sinh,
        "Tanh": o.tanh, "Sin": o.sin, "Cos": o.cos, "Tan": o.tan, "Log": o.log, "Exp": o.exp,
        "Sqrt": o.sqrt, "Square": o.square, "Abs": o.abs, "Round": o.round,
        "Ceiling": o.ceil, "Floor": o.floor, "Sign": o.sign, "Erf": b.erf,
    }
    if op in table:
        return table[op](x)
    if op == "Minus":
        return -x
    if op in ("Boole", "Identity"):
        return x
    if op == "Not":
        return 1.0 - x
    if op in ("LogisticSigmoid", "Sigmoid"):
        return 1.0 / (1.0 + o.exp(-x))
    if op in ("Ramp", "RectifiedLinearUnit"):
        return o.maximum(x, 0.0)
    if op in ("SoftRamp", "SoftPlus"):
        return o.logaddexp(x * 0.0, x)
    if op == "ExponentialLinearUnit":
        return o.where(o.greater(x, 0.0), x, o.expm1(o.minimum(x, 0.0)))
    if op == "ScaledExponentialLinearUnit":
        return SELU_SCALE * o.where(o.greater(x, 0.0), x,
                                    SELU_ALPHA * o.expm1(o.minimum(x, 0.0)))
    if op == "SoftSign":
        return x / (1.0 + o.abs(x))
    if op == "HardTanh":
        return o.clip(x, -1.0, 1.0)
    if op == "HardSigmoid":  # SowHardSigmoid: 0.5 (Ramp[x + 1] - Ramp[x - 1])
        return 0.5 * (o.maximum(x + 1.0, 0.0) - o.maximum(x - 1.0, 0.0))
    if op == "GELU":
        return 0.5 * x * (1.0 + b.erf(x * (1.0 / math.sqrt(2.0))))
    if op == "Swish":
        return x / (1.0 + o.exp(-x))
    if op == "Mish":
        return x * o.tanh(o.logaddexp(x * 0.0, x))
    raise ScalarProgramError(f"scalar function operation {op} is not supported")


def _bcast(b: Backend, x: Any, like: Any):
    return b.full_like(like, x) if isinstance(x, float) else x


def _boole(b: Backend, mask: Any, like: Any):
    return b.o.where(mask, b.full_like(like, 1.0), b.full_like(like, 0.0))


def _truth(b: Backend, x: Any):
    return b.o.greater(x, 0.5)


def _select(b: Backend, pairs: list, default: Any, val: Callable, like: Any):
    out = _bcast(b, val(default), like) if default is not None else b.full_like(like, 0.0)
    for cond, value in reversed(pairs):
        v = _bcast(b, val(value), like)
        if isinstance(cond, bool):
            out = v if cond else out
        else:
            out = b.o.where(_truth(b, val(cond)), v, out)
    return out


# ------------------------------------------------------------------ recognition -----------

_PROBE = np.concatenate([np.linspace(-8.0, 8.0, 641),
                         np.array([-1e3, -100.0, -30.0, -12.0, 12.0, 30.0, 100.0, 1e3])])


def reference_curves() -> dict[str, np.ndarray]:
    """Keras activation name -> its values on the probe points (float64)."""
    from scipy.special import erf

    x = _PROBE
    with np.errstate(over="ignore"):
        return {
            "relu": np.maximum(x, 0.0),
            "tanh": np.tanh(x),
            "sigmoid": 1.0 / (1.0 + np.exp(-x)),
            "elu": np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
            "selu": 1.0507009873554805 * np.where(
                x > 0, x, 1.6732632423543772 * np.expm1(np.minimum(x, 0.0))),
            "softplus": np.logaddexp(0.0, x),
            "silu": x / (1.0 + np.exp(-x)),
            "gelu": 0.5 * x * (1.0 + erf(x / math.sqrt(2.0))),
            "softsign": x / (1.0 + np.abs(x)),
            "exponential": np.exp(np.minimum(x, 30.0)),
            "linear": x,
        }


def recognise(program: ScalarProgram) -> str | None:
    """Keras activation name equal to a one-argument program, or None.

    The program is evaluated in float64 on a dense probe over [-8, 8] plus large magnitudes
    (up to 1e3) and must match exactly one activation to 1e-9 relative (1e-12 absolute).
    """
    if program.arity != 1:
        return None
    try:
        with np.errstate(all="ignore"):
            got = np.broadcast_to(np.asarray(
                program.evaluate(numpy_backend(), _PROBE.copy()), dtype=np.float64),
                _PROBE.shape)
    except (ScalarProgramError, TypeError, ValueError, OverflowError, FloatingPointError):
        return None
    matches = []
    for name, ref in reference_curves().items():
        if name == "exponential":
            probe_ok = _PROBE <= 30.0
            close = np.allclose(got[probe_ok], ref[probe_ok], rtol=1e-9, atol=1e-12)
            close = close and bool(np.all(np.isinf(got[~probe_ok]) | (got[~probe_ok] > 1e13)))
        else:
            close = bool(np.all(np.isfinite(got))) and np.allclose(got, ref, rtol=1e-9,
                                                                   atol=1e-12)
        if close:
            matches.append(name)
    return matches[0] if len(matches) == 1 else None
