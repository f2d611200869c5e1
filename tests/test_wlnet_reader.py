"""Compress decoding and .wlnet reading: values, and one clear error per kind of damage."""
from __future__ import annotations

import base64
import shutil
import struct
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from legseg_tf.wlnet.expr import Expr, ExpressionError, Symbol, WlnetError, uncompress
from legseg_tf.wlnet.reader import (
    Container, UnknownLayerError, WlnetFormatError, read_wlnet, layer_tree_lines,
)
from tests import wlnet_writer as W


def _raw_compress(payload: bytes) -> str:
    return "1:" + base64.b64encode(zlib.compress(b"!boR" + payload)).decode()


def test_uncompress_decodes_every_documented_tag():
    value = {"a": [1, -2**40, 2.5, "text", W.Sym("Ramp"), True, None],
             "b": W.Call("Scaled", (2,))}
    decoded = uncompress(W.compress(value))
    assert decoded["a"] == [1, -2**40, 2.5, "text", Symbol("Ramp"), True, None]
    assert decoded["b"] == Expr(Symbol("Scaled"), (2,))
    big_real = b"R" + struct.pack("<i", 9) + b"1.25`20.5"
    packed = b"e" + struct.pack("<iii", 2, 2, 3) + np.arange(6, dtype="<f8").tobytes()
    int_text = b"I" + struct.pack("<i", 1) + b"3"
    payload = b"f" + struct.pack("<i", 3) + b"s" + struct.pack("<i", 4) + b"List" \
        + big_real + packed + int_text
    real, array, three = uncompress(_raw_compress(payload))
    assert real == 1.25 and three == 3
    np.testing.assert_array_equal(array, np.arange(6.0).reshape(2, 3))


@pytest.mark.parametrize("text, match", [
    ("2:abc", "must start with '1:'"),
    ("1:@@@not base64@@@", "not valid base64"),
    ("1:" + base64.b64encode(b"not zlib data").decode(), "corrupt zlib"),
    ("1:" + base64.b64encode(zlib.compress(b"XXXXi\x01\x00\x00\x00")).decode(), "!boR"),
    (_raw_compress(b"q\x00\x00\x00\x00"), "unknown expression tag b'q'"),
    (_raw_compress(b"f\x05\x00\x00\x00"), "truncated"),
    (_raw_compress(b"i\x01\x00\x00\x00i"), "trailing"),
])
def test_uncompress_errors(text, match):
    with pytest.raises(ExpressionError, match=match):
        uncompress(text)


@pytest.fixture()
def good_file(tmp_path) -> Path:
    w = W.Weights(0)
    net = W.chain((1, 6, 6), [("c", lambda s: W.conv(w, s, 2, 3, pad=1)),
                              ("f", W.flatten), ("s", W.softmax)]).assoc
    return W.write_wlnet(tmp_path / "good.wlnet", net)


def test_reads_writer_file(good_file):
    wl = read_wlnet(good_file)
    assert isinstance(wl.net, Container) and list(wl.net.nodes) == ["c", "f", "s"]
    assert list(wl.arrays) == ["c/Weights", "c/Biases"]
    assert wl.array_datasets == {"c/Weights": "/Arrays/1", "c/Biases": "/Arrays/2"}
    assert wl.version == "14.3.0" and wl.unstable == 0
    assert any("Convolution" in line for line in layer_tree_lines(wl.net))


def test_truncated_file(good_file, tmp_path):
    data = good_file.read_bytes()
    bad = tmp_path / "truncated.wlnet"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(WlnetFormatError, match="truncated.wlnet"):
        read_wlnet(bad)


def test_not_hdf5(tmp_path):
    bad = tmp_path / "text.wlnet"
    bad.write_text("hello")
    with pytest.raises(WlnetFormatError, match="no HDF5 signature"):
        read_wlnet(bad)


def test_hdf5_without_network(tmp_path):
    bad = tmp_path / "empty.wlnet"
    with h5py.File(bad, "w") as h5:
        h5["Version"] = "14.3.0"
    with pytest.raises(WlnetFormatError, match="no /Network"):
        read_wlnet(bad)


def _replace_network(src: Path, dst: Path, text: str) -> Path:
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as h5:
        del h5["Network"]
        h5.create_dataset("Network", data=text, dtype=h5py.string_dtype())
    return dst


def test_corrupt_base64_and_zlib_name_the_file(good_file, tmp_path):
    with pytest.raises(ExpressionError, match=r"b64\.wlnet.*base64"):
        read_wlnet(_replace_network(good_file, tmp_path / "b64.wlnet", "1:%%%%"))
    broken = "1:" + base64.b64encode(b"\x78\x9c garbage").decode()
    with pytest.raises(ExpressionError, match=r"zl\.wlnet.*zlib"):
        read_wlnet(_replace_network(good_file, tmp_path / "zl.wlnet", broken))


def test_unknown_tag_names_tag_and_file(good_file, tmp_path):
    path = _replace_network(good_file, tmp_path / "tag.wlnet", _raw_compress(b"c\x00"))
    with pytest.raises(ExpressionError, match=r"tag\.wlnet.*unknown expression tag b'c'"):
        read_wlnet(path)


def test_unknown_layer_type_names_type_and_file(tmp_path):
    net = {"Type": "Chain", "Nodes": {"1": {"Type": "LongShortTermMemory", "Arrays": {},
                                            "Parameters": {}, "Inputs": {}, "Outputs": {}}},
           "Edges": [], "Inputs": {}, "Outputs": {}}
    path = W.write_wlnet(tmp_path / "lstm.wlnet", net)
    with pytest.raises(UnknownLayerError, match=r"lstm\.wlnet.*node 1.*'LongShortTermMemory'"):
        read_wlnet(path)


def test_missing_array_dataset(good_file, tmp_path):
    path = tmp_path / "noarr.wlnet"
    shutil.copy(good_file, path)
    with h5py.File(path, "r+") as h5:
        del h5["Arrays/2"]
    with pytest.raises(WlnetFormatError, match=r"missing dataset /Arrays/2"):
        read_wlnet(path)


def test_all_errors_share_one_base():
    for cls in (ExpressionError, WlnetFormatError, UnknownLayerError):
        assert issubclass(cls, WlnetError)
