"""Tests of the model manifest store (tiny networks, CPU)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from legseg_tf import model_store  # noqa: E402
from legseg_tf.labels import TRAIN_TABLES  # noqa: E402
from legseg_tf.model_store import (  # noqa: E402
    ManifestError,
    ModelError,
    load_manifest,
    load_model,
    sha256_file,
    write_entry,
)
from legseg_tf.networks.config import ClassifierConfig, UNetConfig  # noqa: E402

try:  # keep TensorFlow modest on shared CPUs; fails harmlessly once TF is initialised
    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)
except RuntimeError:
    pass

LOWER_CLASSES = len(TRAIN_TABLES["N6_LowerLeg"]) + 1


def tiny_config(n_classes=LOWER_CLASSES, features=(4, 8)) -> UNetConfig:
    schedule = tuple((2, 2, 2) for _ in features[:-1]) + ((1, 1, 1),)
    return UNetConfig(n_classes=n_classes, features=features, downsample=schedule,
                      dropout_rate=0.0)


def install(models_dir, name, config, seed=0, weights_from=None):
    """Build ``config``, give it random weights, save config + weights in ``models_dir``."""
    from legseg_tf.networks import build_classifier, build_unet

    builder = build_unet if config.kind == "unet" else build_classifier
    model = builder(weights_from or config)
    rng = np.random.default_rng(seed)
    weights = []
    for var in model.weights:
        value = rng.normal(0.0, 0.3, var.shape)
        weights.append((np.abs(value) + 0.5 if "variance" in var.path else value)
                       .astype("float32"))
    model.set_weights(weights)
    (models_dir / f"{name}.json").write_text(config.to_json(), encoding="utf-8")
    model.save_weights(models_dir / f"{name}.weights.h5")
    return model


def entry_dict(name, role="lower_leg", table="N6_LowerLeg", **extra):
    data = {"id": f"test-{name}", "role": role, "config": f"{name}.json",
            "weights": f"{name}.weights.h5", "sha256": None, "label_table": table,
            "provenance": {"source": "legseg-train", "seed": 0}}
    data.update(extra)
    return data


def write_manifest(models_dir, models, schema_version=1):
    (models_dir / "manifest.json").write_text(
        json.dumps({"schema_version": schema_version, "models": models}), encoding="utf-8")


@pytest.fixture
def lower_leg_dir(tmp_path):
    model = install(tmp_path, "lower", tiny_config())
    write_entry(tmp_path, entry_dict("lower"))
    return tmp_path, model


# ------------------------------------------------------------------------------- load/verify

def test_sha256_file_matches_hashlib(tmp_path):
    import hashlib

    path = tmp_path / "blob.bin"
    data = np.random.default_rng(0).bytes(3 * (1 << 20) + 17)  # spans several read chunks
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_load_manifest_and_model_round_trip(lower_leg_dir):
    models_dir, original = lower_leg_dir
    manifest = load_manifest(models_dir)
    entry = manifest.get("lower_leg")
    assert entry is not None and manifest.get("upper_leg") is None
    assert [e.id for e in manifest.entries] == ["test-lower"]
    assert entry.weights_path == (models_dir / "lower.weights.h5").resolve()
    assert entry.sha256 == sha256_file(entry.weights_path)
    assert entry.provenance["source"] == "legseg-train"
    model = load_model(entry)
    x = np.random.default_rng(1).random((1, 2, 8, 8, 1), dtype=np.float32)
    np.testing.assert_array_equal(model.predict(x, verbose=0), original.predict(x, verbose=0))


def test_checksum_mismatch_raises_model_error(lower_leg_dir):
    models_dir, _ = lower_leg_dir
    entry = load_manifest(models_dir).get("lower_leg")
    with open(entry.weights_path, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ModelError, match="sha256.*does not match"):
        load_model(entry)


def test_weights_that_do_not_fit_the_architecture(tmp_path):
    install(tmp_path, "lower", tiny_config(), weights_from=tiny_config(features=(4, 6)))
    write_entry(tmp_path, entry_dict("lower"))
    with pytest.raises(ModelError, match="do not fit"):
        load_model(load_manifest(tmp_path).get("lower_leg"))


def test_class_count_must_match_the_label_table(tmp_path):
    install(tmp_path, "lower", tiny_config(n_classes=5))
    write_entry(tmp_path, entry_dict("lower"))
    with pytest.raises(ModelError, match="5 classes"):
        load_model(load_manifest(tmp_path).get("lower_leg"))


def test_classifier_entry_without_label_table(tmp_path):
    config = ClassifierConfig(image_size=(64, 64))
    original = install(tmp_path, "body", config)
    write_entry(tmp_path, entry_dict("body", role="classifier", table=None))
    model = load_model(load_manifest(tmp_path).get("classifier"))
    x = np.random.default_rng(2).random((2, 64, 64, 1), dtype=np.float32)
    np.testing.assert_array_equal(model.predict(x, verbose=0)["position"],
                                  original.predict(x, verbose=0)["position"])


# ------------------------------------------------------------------------ malformed manifests

def test_missing_manifest_names_the_file(tmp_path):
    with pytest.raises(ManifestError, match="manifest.json: file not found"):
        load_manifest(tmp_path)


def test_malformed_json_names_the_file(tmp_path):
    (tmp_path / "manifest.json").write_text('{"schema_version": 1, "models": [', "utf-8")
    with pytest.raises(ManifestError, match=r"manifest\.json: not valid JSON"):
        load_manifest(tmp_path)


def test_missing_weights_file_names_the_file(lower_leg_dir):
    models_dir, _ = lower_leg_dir
    (models_dir / "lower.weights.h5").unlink()
    with pytest.raises(ManifestError, match=r"lower\.weights\.h5 not found"):
        load_manifest(models_dir)


def test_missing_config_file_names_the_file(lower_leg_dir):
    models_dir, _ = lower_leg_dir
    (models_dir / "lower.json").unlink()
    with pytest.raises(ManifestError, match=r"lower\.json not found"):
        load_manifest(models_dir)


def test_malformed_config_file(lower_leg_dir):
    models_dir, _ = lower_leg_dir
    (models_dir / "lower.json").write_text("not json", "utf-8")
    entry = load_manifest(models_dir).get("lower_leg")
    with pytest.raises(ManifestError, match=r"lower\.json: not valid JSON"):
        load_model(entry)


def test_invalid_config_values_raise_model_error(lower_leg_dir):
    models_dir, _ = lower_leg_dir
    config = json.loads((models_dir / "lower.json").read_text("utf-8"))
    config["norm"] = "layer"
    (models_dir / "lower.json").write_text(json.dumps(config), "utf-8")
    with pytest.raises(ModelError, match="invalid 'unet' network config.*norm"):
        load_model(load_manifest(models_dir).get("lower_leg"))


@pytest.mark.parametrize("change, message", [
    ({"role": "thigh"}, "'role' must be one of"),
    ({"label_table": "N9_Foot"}, "'label_table' must be one of"),
    ({"sha256": "ABC"}, "64 lower-case hex"),
    ({"provenance": {"source": "somewhere"}}, "'provenance'"),
    ({"weights": "../lower.weights.h5"}, "without '..'"),
    ({"weights": "/abs/lower.weights.h5"}, "without '..'"),
    ({"weights": "lower.json"}, "must end with .weights.h5"),
    ({"notes": "x"}, "unknown model entry field"),
    ({"id": ""}, "'id' must be a non-empty string"),
])
def test_invalid_entries_are_rejected(lower_leg_dir, change, message):
    models_dir, _ = lower_leg_dir
    raw = json.loads((models_dir / "manifest.json").read_text("utf-8"))["models"][0]
    raw.update(change)
    write_manifest(models_dir, [raw])
    with pytest.raises(ManifestError, match=message):
        load_manifest(models_dir)


def test_missing_entry_field_and_duplicates_and_schema(lower_leg_dir):
    models_dir, _ = lower_leg_dir
    raw = json.loads((models_dir / "manifest.json").read_text("utf-8"))["models"][0]
    write_manifest(models_dir, [{k: v for k, v in raw.items() if k != "sha256"}])
    with pytest.raises(ManifestError, match=r"missing \['sha256'\]"):
        load_manifest(models_dir)
    write_manifest(models_dir, [raw, dict(raw, id="other")])
    with pytest.raises(ManifestError, match=r"duplicate model role\(s\) \['lower_leg'\]"):
        load_manifest(models_dir)
    write_manifest(models_dir, [raw], schema_version=2)
    with pytest.raises(ManifestError, match="unsupported schema_version 2"):
        load_manifest(models_dir)
    (models_dir / "manifest.json").write_text("[]", "utf-8")
    with pytest.raises(ManifestError, match="must be a JSON object"):
        load_manifest(models_dir)


def test_get_rejects_unknown_role(lower_leg_dir):
    with pytest.raises(ValueError, match="role must be one of"):
        load_manifest(lower_leg_dir[0]).get("thigh")


# ------------------------------------------------------------------------------- write_entry

def test_write_entry_adds_and_replaces(tmp_path):
    install(tmp_path, "lower", tiny_config(), seed=1)
    install(tmp_path, "upper", tiny_config(n_classes=len(TRAIN_TABLES["N5_UpperLeg"]) + 1))
    write_entry(tmp_path, entry_dict("lower"))
    manifest = write_entry(tmp_path, entry_dict("upper", role="upper_leg", table="N5_UpperLeg"))
    assert [e.role for e in manifest.entries] == ["lower_leg", "upper_leg"]

    install(tmp_path, "lower2", tiny_config(), seed=2)
    manifest = write_entry(tmp_path, entry_dict("lower2"))  # same role: replaces test-lower
    assert sorted(e.id for e in manifest.entries) == ["test-lower2", "test-upper"]
    assert manifest.get("lower_leg").weights_path.name == "lower2.weights.h5"

    data = json.loads((tmp_path / "manifest.json").read_text("utf-8"))
    assert data["schema_version"] == 1
    assert {m["weights"] for m in data["models"]} == {"lower2.weights.h5", "upper.weights.h5"}
    assert all(len(m["sha256"]) == 64 for m in data["models"])
    assert not list(tmp_path.glob(".manifest-*"))  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "manifest.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_write_entry_checks_a_given_checksum(tmp_path):
    install(tmp_path, "lower", tiny_config())
    with pytest.raises(ManifestError, match="differs from the given"):
        write_entry(tmp_path, entry_dict("lower", sha256="0" * 64))
    good = sha256_file(tmp_path / "lower.weights.h5")
    assert write_entry(tmp_path, entry_dict("lower", sha256=good)).get("lower_leg").sha256 == good


def test_write_entry_is_atomic(lower_leg_dir, monkeypatch):
    models_dir, _ = lower_leg_dir
    before = (models_dir / "manifest.json").read_bytes()
    install(models_dir, "upper", tiny_config(n_classes=len(TRAIN_TABLES["N5_UpperLeg"]) + 1))

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(model_store.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_entry(models_dir, entry_dict("upper", role="upper_leg", table="N5_UpperLeg"))
    assert (models_dir / "manifest.json").read_bytes() == before
    assert not [p.name for p in models_dir.iterdir() if ".tmp" in p.name]


def test_write_entry_rejects_invalid_entries_without_touching_the_manifest(lower_leg_dir):
    models_dir, _ = lower_leg_dir
    before = (models_dir / "manifest.json").read_bytes()
    with pytest.raises(ManifestError, match="not found"):
        write_entry(models_dir, entry_dict("missing"))
    with pytest.raises(ManifestError, match="'role' must be one of"):
        write_entry(models_dir, entry_dict("lower", role="arm"))
    assert (models_dir / "manifest.json").read_bytes() == before


# ---------------------------------------------------------------------------------- registry

def test_registered_builder_is_used(tmp_path, monkeypatch):
    import keras

    calls = []

    def toy_builder(config):
        calls.append(config)
        inputs = keras.Input((None, None, None, 1))
        outputs = keras.layers.Conv3D(config["n_classes"], 1, name="toy__1")(inputs)
        return keras.Model(inputs, outputs)

    monkeypatch.setattr(model_store, "_BUILDERS", {})
    model_store.register_builder("toy", toy_builder)
    config = {"kind": "toy", "n_classes": LOWER_CLASSES}
    (tmp_path / "toy.json").write_text(json.dumps(config), "utf-8")
    toy_builder(config).save_weights(tmp_path / "toy.weights.h5")
    write_entry(tmp_path, entry_dict("toy"))
    model = load_model(load_manifest(tmp_path).get("lower_leg"))
    assert model.get_layer("toy__1").filters == LOWER_CLASSES
    assert calls[-1] == config


def test_wlnet_graph_kind_is_imported_lazily(monkeypatch):
    fake = types.ModuleType("legseg_tf.wlnet.translator")
    fake.build_from_config = lambda config: ("built", config["kind"])
    monkeypatch.setitem(sys.modules, "legseg_tf.wlnet.translator", fake)
    assert model_store.build_from_config({"kind": "wlnet_graph"}) == ("built", "wlnet_graph")


def test_missing_builder_module_raises_model_error(monkeypatch):
    monkeypatch.setitem(model_store._LAZY_BUILDERS, "wlnet_graph",
                        ("legseg_tf.no_such_module", "build_from_config"))
    with pytest.raises(ModelError, match="legseg_tf.no_such_module.*cannot be imported"):
        model_store.build_from_config({"kind": "wlnet_graph"})


def test_unknown_kind_and_bad_registration():
    with pytest.raises(ModelError, match="no builder for network kind 'onnx'"):
        model_store.build_from_config({"kind": "onnx"})
    with pytest.raises(ModelError, match="'kind' field"):
        model_store.build_from_config({"n_classes": 3})
    with pytest.raises(ValueError):
        model_store.register_builder("", lambda c: None)
    with pytest.raises(ValueError):
        model_store.register_builder("x", "not callable")


def test_importing_model_store_does_not_import_tensorflow():
    code = ("import sys; import legseg_tf.model_store; "
            "print(any(m.split('.')[0] in ('tensorflow', 'keras') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
