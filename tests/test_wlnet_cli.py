"""legseg-import: conversion of samples, paclets and folders; exit codes; lazy TensorFlow."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from legseg_tf.wlnet.cli import main
from legseg_tf.wlnet.reader import read_wlnet
from tests import wlnet_writer as W
from tests.wlnet_reference import random_inputs, run_net, to_keras_layout

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO.parent / "shared" / "wlnet-samples"
TRAINED = SAMPLES / "loss-landscape__trainedNet1.wlnet"


def _load(models_dir: Path, config_name: str, weights_name: str):
    from legseg_tf.model_store import build_from_config

    config = json.loads((models_dir / config_name).read_text())
    model = build_from_config(config)
    model.load_weights(models_dir / weights_name)
    return model


@pytest.mark.skipif(not TRAINED.is_file(), reason=f"sample {TRAINED} not found")
def test_acceptance_sample_converts_to_loadable_equivalent_model(tmp_path, capsys):
    out = tmp_path / "converted"
    assert main([str(TRAINED), "--out", str(out)]) == 0
    summary = capsys.readouterr().out
    assert "loss-landscape__trainedNet1: role other" in summary and "570 parameters" in summary
    entry = json.loads((out / "loss-landscape__trainedNet1.entry.json").read_text())
    assert entry["role"] == "other" and entry["id"] == "loss-landscape__trainedNet1"
    assert entry["provenance"]["wolfram_version"] == "14.3.0"
    from legseg_tf.model_store import sha256_file

    assert entry["sha256"] == sha256_file(out / entry["weights"])
    assert entry["provenance"]["file_sha256"] == sha256_file(TRAINED)
    model = _load(out, entry["config"], entry["weights"])
    wl = read_wlnet(TRAINED)
    inputs = random_inputs(wl.net, np.random.default_rng(5), batch=4)
    want = run_net(wl.net, inputs)["Output"]
    got = model.predict(to_keras_layout(inputs["Input"]).astype(np.float32), verbose=0)
    assert float(np.max(np.abs(got - want))) <= 1e-4


def test_paclet_installs_known_nets_into_manifest(tmp_path, capsys):
    unet_spec = W.UNetSpec(generation="B", n_classes=22)  # N5_UpperLeg + background
    unet = W.write_wlnet(tmp_path / "N5_UpperLeg_3D.wlnet", W.unet_net(unet_spec))
    clf = W.write_wlnet(tmp_path / "Body_Pos_Side.wlnet", W.classifier_net(W.ClassifierSpec()))
    paclet = tmp_path / "QMRITools-9.9.9.paclet"
    with zipfile.ZipFile(paclet, "w") as archive:
        archive.writestr("QMRITools/PacletInfo.wl", "Paclet[]")
        archive.write(unet, "QMRITools/NeuralNetworks/N5_UpperLeg_3D.wlnet")
        archive.write(clf, "QMRITools/NeuralNetworks/Body_Pos_Side.wlnet")
    out = tmp_path / "models"
    assert main([str(paclet), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and any("role upper_leg" in line for line in lines)
    assert any("classes Side 3, Position 8" in line for line in lines)

    from legseg_tf.model_store import load_manifest, load_model

    manifest = load_manifest(out)
    upper, classifier = manifest.get("upper_leg"), manifest.get("classifier")
    assert upper.label_table == "N5_UpperLeg" and classifier.label_table is None
    prov = upper.provenance
    assert prov["source"] == "qmritools-wlnet" and prov["paclet"] == paclet.name
    assert "Copyright (c) 2016, Martijn Froeling" in prov["licence"]
    assert "JOSS" in prov["citation"] or "J Open Source Softw" in prov["citation"]
    assert "2019;4" in prov["citation"] and "1204" in prov["citation"]
    model = load_model(upper)
    assert model.input_shape == (None, None, None, None, 1)  # any valid patch size
    wl = read_wlnet(unet)
    inputs = random_inputs(wl.net, np.random.default_rng(1), batch=1)
    want = run_net(wl.net, inputs)["Output"]
    got = model.predict(to_keras_layout(inputs["Input"]).astype(np.float32), verbose=0)
    assert float(np.max(np.abs(got - want))) <= 1e-4
    probs = load_model(classifier).predict(np.zeros((2, 128, 128, 1), np.float32), verbose=0)
    assert {k: v.shape for k, v in probs.items()} == {"Side": (2, 3), "Position": (2, 8)}
    np.testing.assert_allclose(probs["Side"].sum(axis=1), 1.0, rtol=1e-5)


def test_bad_file_exits_65_with_one_line_and_converts_the_rest(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    good = W.write_wlnet(tmp_path / "in" / "tiny.wlnet",
                         W.chain((1, 4, 4), [("s", W.softmax)]).assoc)
    (tmp_path / "in" / "broken.wlnet").write_bytes(good.read_bytes()[:300])
    assert main([str(tmp_path / "in"), "--out", str(tmp_path / "m")]) == 65
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "broken.wlnet" in err[0] and "Traceback" not in captured.err
    assert "tiny: role other" in captured.out
    assert (tmp_path / "m" / "tiny.weights.h5").is_file()


def test_untranslatable_layer_is_a_data_error(tmp_path, capsys):
    net = W.chain((2, 4, 4), [("r", lambda s: W.resize(s, (2, 2)))]).assoc
    net["Nodes"]["r"]["Parameters"]["Resampling"] = "Linear"
    path = W.write_wlnet(tmp_path / "linear_resize.wlnet", net)
    assert main([str(path), "--out", str(tmp_path / "m")]) == 65
    err = capsys.readouterr().err
    assert "linear_resize.wlnet" in err and "Resampling" in err and len(err.splitlines()) == 1


def test_class_count_must_fit_label_table(tmp_path, capsys):
    path = W.write_wlnet(tmp_path / "N6_LowerLeg_3D.wlnet", W.unet_net(W.UNetSpec(n_classes=5)))
    assert main([str(path), "--out", str(tmp_path / "m")]) == 65
    err = capsys.readouterr().err
    assert "N6_LowerLeg" in err and "5 classes" in err
    assert not (tmp_path / "m" / "manifest.json").exists()


def test_usage_and_missing_input_codes(tmp_path, capsys):
    assert main([]) == 64
    assert main(["--bogus"]) == 64
    assert main([str(tmp_path / "nope.wlnet")]) == 66
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty), "--out", str(tmp_path / "m")]) == 66


def test_inspect_prints_tree_without_tensorflow(tmp_path):
    path = W.write_wlnet(tmp_path / "u.wlnet", W.unet_net(W.UNetSpec()))
    code = ("import sys; from legseg_tf.wlnet.cli import main; rc = main(['--inspect', "
            f"{str(path)!r}]); assert 'tensorflow' not in sys.modules and 'keras' not in "
            "sys.modules; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "enc_1: NetGraph" in proc.stdout and "block/tot/1: Total" in proc.stdout


def test_a_failed_weights_write_leaves_no_file_behind(tmp_path, capsys, monkeypatch):
    """Configs and weights are written through a temporary file and a rename: a write that
    fails (full disk) leaves neither a half-written weights file nor the temporary file."""
    import keras

    path = W.write_wlnet(tmp_path / "tiny.wlnet", W.chain((1, 4, 4), [("s", W.softmax)]).assoc)

    def half_then_full(self, filepath, *args, **kwargs):
        Path(filepath).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keras.Model, "save_weights", half_then_full)
    out = tmp_path / "m"
    assert main([str(path), "--out", str(out)]) == 73
    assert "No space left" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["tiny.json"]
