"""``legseg-import`` with ONNX files: roles, class labels, manifest, errors; and the
participant level on the real thigh with networks imported from ONNX files."""
from __future__ import annotations

import json

import numpy as np
import pytest

from legseg_tf.wlnet import cli
from tests import onnx_builder as B
from tests.conftest import REPO_ROOT, shared_file, thigh_bids

SIDES = ["Left", "Right", "Both"]
POSITIONS = ["Lower", "Knee", "Upper", "Hip", "Torso", "Shoulder", "Neck", "Head"]
UPPER = B.UNetSpec("B", n_classes=22, input_size=(4, 16, 16))


def _manifest(models):
    return {m["role"]: m for m in json.loads((models / "manifest.json").read_text())["models"]}


def test_folder_of_qmritools_onnx_files_installs_like_the_paclet(tmp_path, capsys):
    src = tmp_path / "from_author"
    B.save(B.unet_model(UPPER), src / "N5_UpperLeg_3D.onnx", external=True)
    labels = json.dumps({"Side": SIDES, "Position": POSITIONS})
    B.save(B.classifier_model(metadata={"labels": labels}), src / "Body_Pos_Side.onnx")
    models = tmp_path / "models"
    assert cli.main([str(src), "--out", str(models)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all("ONNX opset 17" in line for line in lines)
    entries = _manifest(models)
    assert set(entries) == {"upper_leg", "classifier"}
    upper = entries["upper_leg"]
    assert upper["label_table"] == "N5_UpperLeg" and upper["id"] == "N5_UpperLeg_3D"
    assert upper["provenance"]["source"] == "qmritools-onnx"
    assert "Froeling" in upper["provenance"]["licence"]
    assert "joss.01204" in upper["provenance"]["citation"]
    config = json.loads((models / "N5_UpperLeg_3D.json").read_text())
    assert config["kind"] == "wlnet_graph"
    assert config["inputs"][0]["keras_shape"] == [None, None, None, 1]
    classifier = json.loads((models / "Body_Pos_Side.json").read_text())
    assert [o["decoder"]["labels"] for o in classifier["outputs"]] == [SIDES, POSITIONS]
    assert entries["classifier"]["provenance"]["class_labels"] == {"Side": "metadata",
                                                                  "Position": "metadata"}

    # the app loads both like .wlnet imports
    from legseg_tf import model_store
    from legseg_tf.config import InferenceConfig
    from legseg_tf.model_adapters import network_stride, slice_classifier

    manifest = model_store.load_manifest(models)
    assert network_stride(manifest.get("upper_leg").read_config()) == (2, 4, 4)
    model = model_store.load_model(manifest.get("upper_leg"))
    x = np.random.default_rng(0).standard_normal((1, 1, 4, 16, 16)).astype(np.float32)
    want = B.Runner(src / "N5_UpperLeg_3D.onnx")(Input=x)["Output"]
    assert np.max(np.abs(np.asarray(model(B.to_keras(x))) - want)) <= 1e-4
    classify = slice_classifier(manifest.get("classifier"), InferenceConfig())
    sides, positions = classify(np.random.default_rng(1).random((3, 128, 128), np.float32))
    assert len(sides) == len(positions) == 3


def test_classifier_labels_from_classes_option(tmp_path, capsys):
    path = B.save(B.classifier_model(), tmp_path / "Body_Pos_Side.onnx")
    models = tmp_path / "models"
    assert cli.main([str(path), "--out", str(models)]) == 65
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--classes Side=" in err
    assert cli.main([str(path), "--out", str(models), "--classes", "Side=Left,Right",
                     "--classes", f"Position={','.join(POSITIONS)}"]) == 65
    assert "3 classes but 2 labels" in capsys.readouterr().err
    assert cli.main([str(path), "--out", str(models), "--classes", "Side=" + ",".join(SIDES),
                     "--classes", "Position=" + ",".join(POSITIONS)]) == 0
    entry = _manifest(models)["classifier"]
    assert entry["provenance"]["class_labels"]["Side"] == "--classes"


def test_role_option_installs_an_unnamed_file(tmp_path, capsys):
    lower = B.UNetSpec("A", n_classes=19, downsample=((1, 1, 1), (2, 2, 2), (1, 2, 2)))
    path = B.save(B.unet_model(lower, B.Export(gelu="erf_mul")), tmp_path / "my_calf_net.onnx")
    models = tmp_path / "models"
    assert cli.main([str(path), "--out", str(models)]) == 0  # no role: an "other" net
    assert (models / "my_calf_net.entry.json").is_file()
    assert not (models / "manifest.json").exists()
    assert cli.main([str(path), "--out", str(models), "--role", "lower_leg"]) == 0
    entry = _manifest(models)["lower_leg"]
    assert entry["label_table"] == "N6_LowerLeg"
    assert entry["provenance"]["source"] == "onnx" and "licence" not in entry["provenance"]
    assert "role lower_leg" in capsys.readouterr().out
    # a segmentation net must predict its table's classes
    assert cli.main([str(path), "--out", str(models), "--role", "upper_leg"]) == 65
    assert "predicts 19 classes" in capsys.readouterr().err


def test_errors_and_usage(tmp_path, capsys):
    from onnx import helper

    src = tmp_path / "src"
    B.save(B.unet_model(UPPER), src / "N5_UpperLeg_3D.onnx")
    bad = B.small_model([helper.make_node("LRN", ["x"], ["y"], name="odd", size=3)],
                        {"x": [1, 2, 4, 4]}, {})
    B.save(bad, src / "N6_LowerLeg_3D.onnx")
    models = tmp_path / "models"
    assert cli.main([str(src), "--out", str(models)]) == 65
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "'odd' (LRN)" in err[0]
    assert "N5_UpperLeg_3D" in captured.out and set(_manifest(models)) == {"upper_leg"}
    one = src / "N5_UpperLeg_3D.onnx"
    assert cli.main([str(one), "--out", str(models), "--classes", "Side"]) == 64
    assert cli.main([str(one), "--out", str(models), "--classes", "Nope=a,b"]) == 65
    assert "outputs are ['Output']" in capsys.readouterr().err
    assert cli.main([str(src), "--out", str(models), "--role", "hip"]) == 64
    assert cli.main(["--inspect", str(one)]) == 0
    out = capsys.readouterr().out
    assert "opset 17" in out and "Conv x" in out and "input  Input: (?, 1, 4, 16, 16)" in out
    (tmp_path / "cut.onnx").write_bytes(one.read_bytes()[:500])
    assert cli.main(["--inspect", str(tmp_path / "cut.onnx")]) == 65


# ------------------------------------------------------------------ real thigh, app level ----

def _shipped(name):
    from legseg_tf import model_store

    manifest = REPO_ROOT / "models" / "manifest.json"
    if not manifest.is_file():
        pytest.skip("no shipped models (models/manifest.json missing)")
    entry = model_store.load_manifest(REPO_ROOT / "models").get(name)
    if entry is None:
        pytest.skip(f"no shipped {name} model")
    return model_store.load_model(entry), entry.read_config()


@pytest.mark.realdata
@pytest.mark.slow
def test_participant_level_with_networks_imported_from_onnx(tmp_path, capsys):
    """The shipped trained networks, exported as QMRITools-topology ONNX files and imported
    back, segment the real thigh: exit 0, Muscles_leg labels only, sides on the right legs."""
    import nibabel as nib

    from legseg_tf.cli import main as app
    from legseg_tf.labels import BY_INDEX

    reference = shared_file("data", "qmritools", "scripts_test_data", "out.nii.gz")
    native_upper, upper_cfg = _shipped("upper_leg")
    native_cls, cls_cfg = _shipped("classifier")
    src = tmp_path / "onnx"
    spec = B.UNetSpec("B", n_classes=upper_cfg["n_classes"], features=tuple(
        upper_cfg["features"]), downsample=tuple(map(tuple, upper_cfg["downsample"])),
        input_size=(8, 32, 32), norm=upper_cfg["norm"], dropout=upper_cfg["dropout_rate"])
    upper = B.save(B.unet_model(spec, B.Export(), B.Params(keras_model=native_upper)),
                   src / "N5_UpperLeg_3D.onnx")
    size = cls_cfg["image_size"][0]
    classifier = B.save(B.classifier_model(B.ClassifierSpec(image_size=size), B.Export(),
                                           B.Params(keras_model=native_cls)),
                        src / "Body_Pos_Side.onnx")
    # the ONNX files hold the shipped networks exactly (ONNX Runtime vs native Keras)
    x = np.random.default_rng(2).standard_normal((1, 1, 8, 32, 32)).astype(np.float32)
    native = np.asarray(native_upper(B.to_keras(x), training=False))
    assert np.max(np.abs(B.Runner(upper)(Input=x)["Output"] - native)) <= 1e-4
    models = tmp_path / "models"
    assert cli.main([str(upper), "--out", str(models)]) == 0
    assert cli.main([str(classifier), "--out", str(models),
                     "--classes", "Side=" + ",".join(cls_cfg["side_classes"]),
                     "--classes", "Position=" + ",".join(cls_cfg["position_classes"])]) == 0

    bids, _ = thigh_bids(tmp_path / "bids")
    out = tmp_path / "out"
    code = app([str(bids), str(out), "participant", "--models", str(models),
                "--region", "upper", "--skip_bids_validator"])
    assert code == 0
    result = next((out / "sub-01" / "anat").glob("*_dseg.nii.gz"))
    img = nib.load(str(result))
    labels = np.rint(np.asarray(img.dataobj)).astype(int)
    present = set(np.unique(labels)) - {0}
    assert present and present <= set(BY_INDEX), present - set(BY_INDEX)
    sidecar = json.loads(result.with_name(result.name.replace(".nii.gz", ".json")).read_text())
    assert {m["id"] for m in sidecar["Models"]} >= {"N5_UpperLeg_3D", "Body_Pos_Side"}
    # sides: the file's world x grows towards the patient's right (RAS); QMRITools' own
    # segmentation puts the left leg (odd labels) at lower x than the right leg (even)
    ref = np.rint(np.asarray(nib.load(str(reference)).dataobj)).astype(int)
    world_x = nib.affines.apply_affine(img.affine, np.indices(labels.shape).reshape(3, -1).T)[
        :, 0].reshape(labels.shape)
    odd_ref, even_ref = (ref % 2 == 1) & (ref > 0), (ref % 2 == 0) & (ref > 0)
    middle = 0.5 * (world_x[odd_ref].max() + world_x[even_ref].min())
    sided = np.isin(labels, [k for k, v in BY_INDEX.items() if v.side])
    odd, even = sided & (labels % 2 == 1), sided & (labels % 2 == 0)
    assert odd.any() and even.any()
    assert world_x[odd].max() < middle < world_x[even].min()
    # and the trained weights came through: muscles overlap QMRITools' segmentation
    dice = [2 * np.sum((labels == k) & (ref == k)) / (np.sum(labels == k) + np.sum(ref == k))
            for k in np.unique(ref) if k]
    assert np.mean(dice) > 0.4, np.round(dice, 2)
