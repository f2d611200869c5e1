"""Seeded fuzzing of the .wlnet reader/translator and legseg-import on the public samples.

Every mutated file must either convert (with weights that fit the Keras model exactly) or end
in a ``WlnetError`` (one line, exit 65 through ``legseg-import``), in bounded time and memory:
no other exception type, no hang, no silently wrong array shape. Mutations: flipped bytes,
truncations, HDF5 structure edits (missing/retyped datasets, huge declared dimensions),
edits of the decoded ``/Network`` expression (types, dimensions, array references), and
hand-made payloads (zip bomb, deep nesting, huge packed arrays).
"""
from __future__ import annotations

import base64
import functools
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from legseg_tf.wlnet.expr import Expr, Symbol, WlnetError, uncompress
from legseg_tf.wlnet.reader import read_wlnet
from tests import wlnet_writer as W

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO.parent / "shared" / "wlnet-samples"
EXPECTED = SAMPLES / "expected.json"
NAMES = sorted(json.loads(EXPECTED.read_text())) if EXPECTED.is_file() else []
CASES_PER_SAMPLE = 80
SECONDS_PER_CASE = 10

pytestmark = pytest.mark.skipif(not NAMES, reason=f"sample .wlnet files not found at {SAMPLES}")


# ----------------------------------------------------------------------- mutations ----

def _to_writer(value):
    """Decoded expression -> writer values (so that an edited tree can be re-encoded)."""
    if isinstance(value, dict):
        return {_to_writer(k): _to_writer(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_writer(v) for v in value]
    if isinstance(value, Symbol):
        return W.Sym(value.name)
    if isinstance(value, Expr):
        head = value.head.name if isinstance(value.head, Symbol) else "List"
        return W.Call(head, tuple(_to_writer(a) for a in value.args))
    return value


def _nodes(tree, path=()):
    """Every (container, key) position in a writer-value tree."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield tree, k
            yield from _nodes(v)
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield tree, i
            yield from _nodes(v)
    elif isinstance(tree, W.Call):
        for v in tree.args:
            yield from _nodes(v)


_REPLACEMENTS = [2**31 - 1, -1, 0, 10**9, 3.5, "Convolution", "Bogus", None, True,
                 W.Sym("Ramp"), [], [1, 2, 3], {}, W.Call("ExportedArray", (999,)),
                 W.Call("TensorT", ([10**6, 10**6, 10**6], W.Sym("RealT"))),
                 W.Call("ScalarFunctionObject", ([W.Call("ScalarSymbol", (1,))],
                                                 W.Call("ScalarSymbol", (2,)), {}))]


def _edit_expression(tree, rng):
    tree = _to_writer(tree)
    spots = [(c, k) for c, k in _nodes(tree) if not isinstance(c, tuple)]
    for _ in range(int(rng.integers(1, 4))):
        container, key = spots[int(rng.integers(len(spots)))]
        if isinstance(container, dict) and rng.random() < 0.3:
            container.pop(key, None)
        else:
            container[key] = _REPLACEMENTS[int(rng.integers(len(_REPLACEMENTS)))]
        spots = [(c, k) for c, k in _nodes(tree)]
    return tree


def _set_text(path: Path, name: str, text) -> None:
    with h5py.File(path, "r+") as h5:
        if name in h5:
            del h5[name]
        if isinstance(text, str):
            h5.create_dataset(name, data=text, dtype=h5py.string_dtype())
        else:
            h5.create_dataset(name, data=text)


def _raw(payload: bytes) -> str:
    return "1:" + base64.b64encode(zlib.compress(payload, 1)).decode()


@functools.lru_cache(maxsize=1)
def _payload_cases():
    zeros = b"\0" * (80 << 20)  # beyond the 64 MiB payload cap
    deep = b"!boR" + (b"f\x01\x00\x00\x00s\x04\x00\x00\x00List" * 5000) + b"i\x01\x00\x00\x00"
    packed = b"!boR" + b"e" + struct.pack("<iii", 2, 2**30, 2**30)
    many = b"!boR" + b"f" + struct.pack("<i", 2**31 - 1) + b"s\x04\x00\x00\x00List"
    big_int = b"!boR" + b"I" + struct.pack("<i", 5000) + b"9" * 5000
    return (("zip bomb", _raw(b"!boR" + zeros)), ("deep nesting", _raw(deep)),
            ("huge packed array", _raw(packed)), ("huge argument count", _raw(many)),
            ("huge integer text", _raw(big_int)), ("not compress", "hello"),
            ("empty", "1:"))


def _mutate(src: Path, dst: Path, rng: np.random.Generator, kind: str) -> str:
    data = bytearray(src.read_bytes())
    if kind == "flip":
        for _ in range(int(rng.integers(1, 9))):
            pos = int(rng.integers(len(data)))
            data[pos] ^= 1 << int(rng.integers(8))
        dst.write_bytes(bytes(data))
        return kind
    if kind == "truncate":
        dst.write_bytes(bytes(data[:int(rng.integers(0, len(data)))]))
        return kind
    shutil.copy(src, dst)
    if kind == "expression":
        with h5py.File(dst, "r") as h5:
            text = h5["Network"][()]
        tree = uncompress(text.decode() if isinstance(text, bytes) else text)
        _set_text(dst, "Network", W.compress(_edit_expression(tree, rng)))
        return kind
    with h5py.File(dst, "r+") as h5:
        keys = sorted(h5["Arrays"].keys(), key=int) if "Arrays" in h5 else []
        choice = int(rng.integers(9))
        if choice == 0 and keys:
            k = keys[int(rng.integers(len(keys)))]
            del h5["Arrays"][k]
            h5["Arrays"].create_dataset(k, shape=(1 << 20, 1 << 20), dtype="f4",
                                        chunks=(1, 256))
            return "huge declared dims (chunked)"
        if choice == 1 and keys:
            k = keys[int(rng.integers(len(keys)))]
            shape = h5["Arrays"][k].shape
            del h5["Arrays"][k]
            h5["Arrays"].create_dataset(k, data=np.zeros(tuple(reversed(shape)) + (1,),
                                                         "f4"))
            return "array of another shape"
        if choice == 2 and keys:
            k = keys[int(rng.integers(len(keys)))]
            shape = h5["Arrays"][k].shape
            del h5["Arrays"][k]
            h5["Arrays"].create_dataset(k, data=np.zeros(shape, "i4"))
            return "integer array"
        if choice == 3:
            del h5["Network"]
            return "no network"
        if choice == 4 and "Arrays" in h5:
            del h5["Arrays"]
            h5.create_dataset("Arrays", data=np.zeros(3))
            return "arrays not a group"
        if choice == 5:
            del h5["Version"]
            h5.create_dataset("Version", data=np.arange(5))
            return "version not text"
        if choice == 6:
            del h5["Network"]
            h5.create_dataset("Network", data=np.zeros((4, 4)))
            return "network not text"
        if choice == 7 and keys:
            k = keys[int(rng.integers(len(keys)))]
            del h5["Arrays"][k]
            h5["Arrays"].create_dataset(k, shape=(1 << 16, 1 << 16), dtype="f4")
            return "huge declared dims (contiguous)"
        name, text = _payload_cases()[int(rng.integers(len(_payload_cases())))]
        del h5["Network"]
        h5.create_dataset("Network", data=text, dtype=h5py.string_dtype())
        return name


KINDS = ["flip", "truncate", "expression", "structure"]


# ----------------------------------------------------------------------- the test ----

class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def _check_conversion(wl, models: dict) -> None:
    """A file that reads and translates must give weights that fit its Keras model."""
    from legseg_tf.wlnet.translator import (
        TranslationError, build_from_config, describe, set_weights,
    )

    description = describe(wl)
    key = json.dumps(description.config, sort_keys=True)
    if key not in models:
        try:  # as translate() does
            models[key] = build_from_config(json.loads(key))
        except ValueError as exc:
            raise TranslationError(str(exc)) from exc
    set_weights(models[key], description.weights)  # TranslationError on any shape mismatch


def test_fuzzed_files_end_in_one_line_errors_or_convert(tmp_path):
    rng = np.random.default_rng(20261130)
    expected = json.loads(EXPECTED.read_text())
    models: dict = {}
    outcomes: dict[str, int] = {}
    failures = []
    for name in NAMES:  # one-time TensorFlow import and model builds stay outside the timing
        _check_conversion(read_wlnet(SAMPLES / name), models)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    old = signal.signal(signal.SIGALRM, _alarm)
    cases = 0
    try:
        for name in NAMES:
            src = SAMPLES / name
            for i in range(CASES_PER_SAMPLE):
                kind = KINDS[i % len(KINDS)]
                dst = tmp_path / f"case{cases}.wlnet"
                what = _mutate(src, dst, rng, kind)
                cases += 1
                signal.alarm(SECONDS_PER_CASE)
                try:
                    try:
                        wl = read_wlnet(dst)
                        shapes = {k: list(v.shape) for k, v in wl.arrays.items()}
                        for k, shape in shapes.items():
                            ref = expected[name]["arrays"].get(k)
                            if ref is not None and ref["shape"] != shape:
                                _check_conversion(wl, models)  # must refuse a wrong shape
                                failures.append(f"{name} {what}: {k} read as {shape}")
                        _check_conversion(wl, models)
                        outcomes["converted"] = outcomes.get("converted", 0) + 1
                    except WlnetError as exc:
                        text = " ".join(str(exc).split())
                        if not text or len(text) > 2000:
                            failures.append(f"{name} {what}: bad message {text[:100]!r}")
                        outcomes["WlnetError"] = outcomes.get("WlnetError", 0) + 1
                    finally:
                        signal.alarm(0)
                except _Timeout:
                    failures.append(f"{name} {what}: more than {SECONDS_PER_CASE} s")
                except Exception as exc:  # noqa: BLE001 - the point of the test
                    failures.append(f"{name} {what}: {type(exc).__name__}: {exc}"[:300])
                dst.unlink()
    finally:
        signal.signal(signal.SIGALRM, old)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    print(f"{cases} cases: {outcomes}; peak RSS grew {grown_mb:.0f} MB")
    assert cases >= 300
    assert not failures, "\n".join(failures[:20])
    assert outcomes.get("WlnetError", 0) >= 100 and outcomes.get("converted", 0) >= 20
    assert grown_mb < 1500


@pytest.mark.parametrize("case", ["truncate", "zip bomb", "huge dims", "expression"])
def test_legseg_import_exit_65_one_line(tmp_path, case):
    src = SAMPLES / NAMES[-1]
    dst = tmp_path / "bad.wlnet"
    if case == "truncate":
        dst.write_bytes(src.read_bytes()[:5000])
    elif case == "zip bomb":
        shutil.copy(src, dst)
        _set_text(dst, "Network", dict(_payload_cases())["zip bomb"])
    elif case == "huge dims":
        shutil.copy(src, dst)
        with h5py.File(dst, "r+") as h5:
            del h5["Arrays"]["1"]
            h5["Arrays"].create_dataset("1", shape=(1 << 16, 1 << 16), dtype="f4")
    else:
        shutil.copy(src, dst)
        with h5py.File(dst, "r") as h5:
            tree = uncompress(h5["Network"][()])
        tree["Nodes"][next(iter(tree["Nodes"]))]["Type"] = "Bogus"
        _set_text(dst, "Network", W.compress(_to_writer(tree)))
    proc = subprocess.run([sys.executable, "-m", "legseg_tf.wlnet.cli", str(dst), "--out",
                           str(tmp_path / "m")], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 65, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.wlnet" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
