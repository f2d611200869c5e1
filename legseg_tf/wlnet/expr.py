"""Decoder for Wolfram ``Compress`` strings (the ``!boR`` binary expression format).

A ``Compress`` string is ``"1:" + base64(zlib(b"!boR" + expression))``. The expression is a
prefix-coded token stream with little-endian integers:

==== ============================ ==========================================================
tag  meaning                      body
==== ============================ ==========================================================
f    ``head[a1, ..., an]``        int32 n, head expression, n argument expressions
s    symbol                       int32 length, UTF-8 bytes
S    string                       int32 length, UTF-8 bytes
i    machine integer              int32
r    machine real                 float64
I    integer as decimal text      int32 length, ASCII digits
R    arbitrary-precision real     int32 length, text such as ``1.23`20.`` or ``1.5`*^-7``
e    packed real array            int32 rank, rank x int32 dims, float64 data (C order)
==== ============================ ==========================================================

Decoded values are plain Python: ``Association`` becomes ``dict`` (insertion ordered), ``List``
becomes ``list``, ``True``/``False``/``None`` become the Python constants, other symbols become
:class:`Symbol`, and every other compound expression becomes :class:`Expr`.
"""
from __future__ import annotations

import base64
import binascii
import math
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

MAGIC = b"!boR"
PREFIX = "1:"
_MAX_DEPTH = 200
#: Largest decompressed ``!boR`` payload accepted (real nets: tens of KB; a cap stops zip bombs).
MAX_PAYLOAD_BYTES = 64 << 20
_SPECIAL_SYMBOLS = {"True": True, "False": False, "None": None}


class WlnetError(Exception):
    """Base class of every error raised while reading or translating a ``.wlnet`` file."""


class ExpressionError(WlnetError):
    """The ``Compress`` string or its ``!boR`` payload is malformed or uses an unknown tag."""


@dataclass(frozen=True)
class Symbol:
    """A Wolfram symbol other than ``True``, ``False`` and ``None`` (e.g. ``Ramp``)."""

    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Expr:
    """A compound expression ``head[args...]`` that is not an Association or a List."""

    head: Any
    args: tuple

    @property
    def head_name(self) -> str | None:
        """The head's symbol name, or None when the head is not a symbol."""
        return self.head.name if isinstance(self.head, Symbol) else None

    def __str__(self) -> str:
        return f"{self.head}[{', '.join(map(to_wl_text, self.args))}]"


def to_wl_text(value: Any) -> str:
    """Render a decoded value in a compact Wolfram-like notation (for messages and --inspect)."""
    if isinstance(value, dict):
        items = (f"{to_wl_text(k)} -> {to_wl_text(v)}" for k, v in value.items())
        return "<|" + ", ".join(items) + "|>"
    if isinstance(value, list):
        return "{" + ", ".join(to_wl_text(v) for v in value) + "}"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, np.ndarray):
        return f"PackedArray[{value.shape}]"
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


def uncompress(text: str | bytes, max_payload: int = MAX_PAYLOAD_BYTES) -> Any:
    """Decode a Wolfram ``Compress`` string into Python values.

    Args:
        text: the ``"1:..."`` string (surrounding whitespace and line breaks are ignored).
        max_payload: largest decompressed payload accepted, in bytes.

    Returns:
        The decoded expression (see the module docstring for the value mapping).

    Raises:
        ExpressionError: bad prefix, invalid base64, invalid zlib data, missing ``!boR`` magic,
            truncated payload, trailing bytes, an unknown tag or a payload over the size cap.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError as exc:
            raise ExpressionError("Compress string is not ASCII") from exc
    compact = "".join(text.split())
    if not compact.startswith(PREFIX):
        raise ExpressionError(
            f"Compress string must start with {PREFIX!r}, got {compact[:8]!r}"
        )
    try:
        raw = base64.b64decode(compact[len(PREFIX):], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ExpressionError(f"Compress string is not valid base64: {exc}") from exc
    try:
        inflater = zlib.decompressobj()
        payload = inflater.decompress(raw, max_payload + 1)
        if len(payload) > max_payload or inflater.unconsumed_tail:
            raise ExpressionError(f"Compress string expands beyond {max_payload:,} bytes")
        payload += inflater.flush()
        if len(payload) > max_payload:
            raise ExpressionError(f"Compress string expands beyond {max_payload:,} bytes")
        if not inflater.eof:
            raise ExpressionError("Compress string holds truncated zlib data")
    except zlib.error as exc:
        raise ExpressionError(f"Compress string holds corrupt zlib data: {exc}") from exc
    return decode_payload(payload)


def decode_payload(payload: bytes) -> Any:
    """Decode a ``!boR`` payload (magic + exactly one expression)."""
    if not payload.startswith(MAGIC):
        raise ExpressionError(f"expression payload must start with {MAGIC!r}, got {payload[:4]!r}")
    reader = _Reader(payload, len(MAGIC))
    try:
        value = reader.read(0)
    except RecursionError as exc:
        raise ExpressionError("expression nested too deeply") from exc
    if reader.pos != len(payload):
        raise ExpressionError(
            f"{len(payload) - reader.pos} trailing bytes after the expression at offset "
            f"{reader.pos}"
        )
    return value


class _Reader:
    """Cursor over a ``!boR`` payload."""

    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos

    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ExpressionError(
                f"expression payload truncated at offset {self.pos} (needed {n} bytes)"
            )
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def _int32(self) -> int:
        return struct.unpack("<i", self._take(4))[0]

    def _text(self) -> str:
        length = self._int32()
        try:
            return self._take(length).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ExpressionError(f"invalid UTF-8 text at offset {self.pos}") from exc

    def read(self, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise ExpressionError(f"expression nested deeper than {_MAX_DEPTH} levels")
        offset = self.pos
        tag = self._take(1)
        if tag == b"i":
            return self._int32()
        if tag == b"r":
            return struct.unpack("<d", self._take(8))[0]
        if tag == b"S":
            return self._text()
        if tag == b"s":
            name = self._text()
            return _SPECIAL_SYMBOLS[name] if name in _SPECIAL_SYMBOLS else Symbol(name)
        if tag == b"I":
            digits = self._text()
            try:
                return int(digits)
            except ValueError as exc:
                raise ExpressionError(
                    f"bad integer text {digits[:40]!r} at offset {offset}") from exc
        if tag == b"R":
            return parse_big_real(self._text())
        if tag == b"e":
            return self._packed_real()
        if tag == b"f":
            return self._compound(depth)
        raise ExpressionError(f"unknown expression tag {tag!r} at offset {offset}")

    def _packed_real(self) -> np.ndarray:
        rank = self._int32()
        if not 0 < rank <= 32:
            raise ExpressionError(f"bad packed-array rank {rank} at offset {self.pos - 4}")
        dims = [self._int32() for _ in range(rank)]
        if any(d < 0 for d in dims):
            raise ExpressionError(f"negative packed-array dimension {dims}")
        count = math.prod(dims)
        data = self._take(8 * count)
        return np.frombuffer(data, dtype="<f8").reshape(dims).copy()

    def _compound(self, depth: int) -> Any:
        n = self._int32()
        if n < 0:
            raise ExpressionError(f"negative argument count {n} at offset {self.pos - 4}")
        head = self.read(depth + 1)
        args = [self.read(depth + 1) for _ in range(n)]
        name = head.name if isinstance(head, Symbol) else None
        if name == "List":
            return args
        if name == "Association":
            result: dict = {}
            for rule in args:
                if not (isinstance(rule, Expr) and rule.head_name in ("Rule", "RuleDelayed")
                        and len(rule.args) == 2):
                    raise ExpressionError(f"Association entry is not a Rule: {to_wl_text(rule)}")
                key = rule.args[0]
                result[_hashable(key)] = rule.args[1]
            return result
        return Expr(head, tuple(args))


def _hashable(key: Any) -> Any:
    if isinstance(key, list):
        return tuple(_hashable(k) for k in key)
    if isinstance(key, dict):
        raise ExpressionError("an Association cannot be used as a key")
    return key


_BIG_REAL = re.compile(r"^([+-]?\d*\.?\d*)(?:`[\d.]*)?(?:\*\^([+-]?\d+))?$")


def parse_big_real(text: str) -> float:
    """Parse Wolfram's InputForm of a real, e.g. ``1.23`20.``, ``-5.`` or ``1.5`*^-7``."""
    match = _BIG_REAL.match(text.strip())
    if not match or match.group(1) in ("", "+", "-", "."):
        raise ExpressionError(f"bad real number text {text[:40]!r}")
    mantissa = float(match.group(1))
    exponent = int(match.group(2)) if match.group(2) else 0
    return mantissa * 10.0 ** exponent
