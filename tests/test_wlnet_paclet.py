"""Paclet handling of legseg-import: the fake QMRITools release paclet, unsafe archives,
and the per-layer encodings shown by ``--inspect``."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from legseg_tf.wlnet.cli import main
from legseg_tf.wlnet.reader import read_wlnet
from tests import qmritools_paclet as P
from tests import wlnet_writer as W
from tests.wlnet_reference import random_inputs, run_net, to_keras_layout

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]


def test_fake_paclet_layout_and_determinism(tmp_path):
    a = P.build_fake_paclet(tmp_path / "a.paclet", widths="small", seed=3)
    b = P.build_fake_paclet(tmp_path / "b.paclet", widths="small", seed=3)
    with zipfile.ZipFile(a) as za, zipfile.ZipFile(b) as zb:
        names = za.namelist()
        assert names[0] == "QMRITools/PacletInfo.wl"
        assert sorted(names[1:]) == sorted(f"QMRITools/NeuralNetworks/{s}.wlnet" for s in (
            "Body_Pos_Side", "N5_UpperLeg_3D", "N6_LowerLeg_3D", "N4_Hip_3D"))
        info = za.read("QMRITools/PacletInfo.wl").decode()
        assert '"SegThighMuscle3D", "NeuralNetworks/N5_UpperLeg_3D.wlnet"' in info
        for name in names[1:]:  # same seed: same networks
            za.extract(name, tmp_path / "a")
            zb.extract(name, tmp_path / "b")
            wa, wb = read_wlnet(tmp_path / "a" / name), read_wlnet(tmp_path / "b" / name)
            assert wa.version == "14.3.0"
            for key in wa.arrays:
                np.testing.assert_array_equal(wa.arrays[key], wb.arrays[key])
    unet = read_wlnet(tmp_path / "a" / "QMRITools/NeuralNetworks/N6_LowerLeg_3D.wlnet")
    assert list(unet.net.nodes) == ["start", "enc_1", "enc_2", "enc_3", "enc_4", "enc_5",
                                    "dec_4", "dec_3", "dec_2", "dec_1", "map"]
    assert unet.net.outputs["Output"].shape == (32, 112, 112, 19)
    assert list(unet.net.nodes["dec_2"].nodes["cat"].inputs) == ["1", "2"]


def test_fake_paclet_converts_and_matches_the_reference(tmp_path, capsys):
    paclet = P.build_fake_paclet(tmp_path / "QMRITools-4.9.1.paclet", widths="small")
    out = tmp_path / "models"
    assert main([str(paclet), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    roles = {line.split(":")[0]: line for line in lines}
    assert set(roles) == {"Body_Pos_Side", "N4_Hip_3D", "N5_UpperLeg_3D", "N6_LowerLeg_3D"}
    assert "role upper_leg" in roles["N5_UpperLeg_3D"] and "role hip" in roles["N4_Hip_3D"]
    assert "classes Side 3, Position 8" in roles["Body_Pos_Side"]

    from legseg_tf.model_store import load_manifest, load_model

    manifest = load_manifest(out)
    model = load_model(manifest.get("lower_leg"))
    with zipfile.ZipFile(paclet) as archive:
        archive.extract("QMRITools/NeuralNetworks/N6_LowerLeg_3D.wlnet", tmp_path / "x")
    wl = read_wlnet(tmp_path / "x/QMRITools/NeuralNetworks/N6_LowerLeg_3D.wlnet")
    x = np.random.default_rng(0).standard_normal((1, 1, 16, 32, 32))  # any multiple of 4/16
    want = run_net(wl.net, {"Input": x})["Output"]
    got = model.predict(to_keras_layout(x).astype(np.float32), verbose=0)
    assert got.shape == (1, 16, 32, 32, 19)
    assert float(np.max(np.abs(got - want))) <= 1e-4
    assert wl.net.inputs["Input"].shape == (1, 32, 112, 112)  # the declared training patch
    body = load_model(manifest.get("classifier"))
    with zipfile.ZipFile(paclet) as archive:
        archive.extract("QMRITools/NeuralNetworks/Body_Pos_Side.wlnet", tmp_path / "x")
    bwl = read_wlnet(tmp_path / "x/QMRITools/NeuralNetworks/Body_Pos_Side.wlnet")
    inputs = random_inputs(bwl.net, np.random.default_rng(1), batch=2)
    ref = run_net(bwl.net, inputs)
    probs = body.predict(to_keras_layout(inputs["Input"]).astype(np.float32), verbose=0)
    for port in ("Side", "Position"):
        assert float(np.max(np.abs(probs[port] - ref[port]))) <= 1e-4


def _zip(path: Path, members: dict[str, bytes], *, stored=True) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name), data,
                             compress_type=zipfile.ZIP_STORED if stored else
                             zipfile.ZIP_DEFLATED)
    return path


@pytest.fixture()
def tiny_net(tmp_path) -> bytes:
    return W.write_wlnet(tmp_path / "tiny.wlnet",
                         W.chain((1, 4, 4), [("s", W.softmax)]).assoc).read_bytes()


@pytest.mark.parametrize("member, match", [
    ("../evil.wlnet", "unsafe path"),
    ("/abs/evil.wlnet", "unsafe path"),
    ("QMRITools/../../evil.wlnet", "unsafe path"),
])
def test_unsafe_member_paths_are_refused(tmp_path, tiny_net, capsys, member, match):
    paclet = _zip(tmp_path / "p.paclet", {member: tiny_net})
    assert main([str(paclet), "--out", str(tmp_path / "m")]) == 65
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0] and "p.paclet" in err[0]
    assert not (tmp_path / "evil.wlnet").exists()


def test_duplicate_file_names_are_refused(tmp_path, tiny_net, capsys):
    paclet = _zip(tmp_path / "p.paclet", {"QMRITools/NeuralNetworks/N5_UpperLeg_3D.wlnet":
                                          tiny_net, "Other/n5_upperleg_3d.wlnet": tiny_net})
    assert main([str(paclet), "--out", str(tmp_path / "m")]) == 65
    assert "same file name" in capsys.readouterr().err


def test_member_paths_are_kept(tmp_path, tiny_net):
    from legseg_tf.wlnet.cli import collect_sources

    paclet = _zip(tmp_path / "p.paclet", {"QMRITools/NeuralNetworks/a.wlnet": tiny_net,
                                          "QMRITools/Other/b.wlnet": tiny_net,
                                          "QMRITools/PacletInfo.wl": b"PacletObject[<||>]"})
    sources = collect_sources([paclet], tmp_path / "x")
    rel = sorted(str(s.path.relative_to(tmp_path / "x").as_posix()).split("/", 1)[1]
                 for s in sources)
    assert rel == ["QMRITools/NeuralNetworks/a.wlnet", "QMRITools/Other/b.wlnet"]
    assert all(s.container == paclet for s in sources)


def test_zip_bomb_is_refused_before_extraction(tmp_path, capsys):
    paclet = _zip(tmp_path / "bomb.paclet", {"QMRITools/NeuralNetworks/x.wlnet":
                                             b"\0" * (64 << 20)}, stored=False)
    assert main([str(paclet), "--out", str(tmp_path / "m")]) == 65
    err = capsys.readouterr().err
    assert "zip bomb" in err and len(err.strip().splitlines()) == 1


def test_total_size_limit(tmp_path, tiny_net, capsys, monkeypatch):
    from legseg_tf.wlnet import cli

    monkeypatch.setattr(cli, "MAX_EXTRACT_BYTES", len(tiny_net) + 10)
    paclet = _zip(tmp_path / "p.paclet", {"a/a.wlnet": tiny_net, "b/b.wlnet": tiny_net})
    assert main([str(paclet), "--out", str(tmp_path / "m")]) == 65
    assert "total more than" in capsys.readouterr().err


def test_inspect_shows_encodings(tmp_path):
    paclet = P.build_fake_paclet(tmp_path / "p.paclet", widths="small")
    with zipfile.ZipFile(paclet) as archive:
        archive.extract("QMRITools/NeuralNetworks/N5_UpperLeg_3D.wlnet", tmp_path)
    path = tmp_path / "QMRITools/NeuralNetworks/N5_UpperLeg_3D.wlnet"
    legacy = W.write_wlnet(tmp_path / "legacy.wlnet", W.unet_net(W.UNetSpec(
        generation="A", encoding="legacy", downsample=((1, 1, 1), (2, 2, 2), (1, 2, 2)))),
        version=W.LEGACY_VERSION)
    rules = W.write_wlnet(tmp_path / "rules.wlnet", W.chain((2, 3, 4), [
        ("t", lambda s: W.transpose_rules(s, [(1, 3)], "Rule"))]).assoc)
    outputs = []
    for f in (path, legacy, rules):
        proc = subprocess.run([sys.executable, "-m", "legseg_tf.wlnet.cli", "--inspect", str(f)],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout)
    assert "block/tot/1: Total (multiport, 2)" in outputs[0]
    assert "cat: Catenate (multiport, 2)" in outputs[0]
    assert "Elementwise (GELU, ScalarFunctionObject)" in outputs[0]
    assert "Function=0.5*(#1*(1.0+Erf[(0.7071067811865475*#1)]))&" in outputs[0]
    assert "2: Transpose (permutation {4, 1, 2, 3})" in outputs[0]
    assert "block/tot/1: Total (list port, 2)" in outputs[1]
    assert "t: Transpose (rule 1->3)" in outputs[2]
