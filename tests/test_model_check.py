"""The manifest and the requested region are checked before TensorFlow is imported, and a run
loads only the region networks its images need (issues 12 and 15)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from legseg_tf import model_store, regions
from legseg_tf.config import InferenceConfig
from legseg_tf.errors import NoModelError
from tests.conftest import REPO_ROOT

BUNDLED = REPO_ROOT / "models"


def test_missing_region_model_exits_3_before_tensorflow_and_input_discovery(tiny_dataset,
                                                                            tmp_path):
    """`--region hip` with the bundled models (no hip network): exit 3 from the manifest alone;
    neither TensorFlow nor pybids is imported (the exit takes a fraction of a second)."""
    code = (
        "import json, sys, time\n"
        "started = time.perf_counter()\n"
        "from legseg_tf.cli import main\n"
        f"code = main([{str(tiny_dataset)!r}, {str(tmp_path / 'out')!r}, 'participant',"
        f" '--region', 'hip', '--models', {str(BUNDLED)!r}])\n"
        "print(json.dumps({'code': int(code), 'seconds': time.perf_counter() - started,"
        " 'imported': sorted(m for m in ('tensorflow', 'keras', 'bids') if m in sys.modules)}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["code"] == 3
    assert outcome["imported"] == [], outcome
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "'hip'" in errors[0] and "['hip']" in errors[0], done.stderr
    assert "cover --region legs, upper, lower" in errors[0]
    assert not list((tmp_path / "out").rglob("*_dseg.nii.gz"))


def test_check_models_reads_only_the_manifest(tmp_path):
    with pytest.raises(NoModelError, match="no models folder"):
        regions.check_models("legs", None)
    with pytest.raises(NoModelError, match="no usable model manifest"):
        regions.check_models("legs", tmp_path / "none")
    manifest = regions.check_models("upper", BUNDLED)
    assert manifest.get("upper_leg") is not None
    assert regions.covered_regions(manifest) == ["legs", "upper", "lower"]
    with pytest.raises(NoModelError, match=r"needs model role\(s\) \['hip'\]"):
        regions.check_models("legs-hip", BUNDLED)


def _upper_only(models):
    """A models folder with the bundled upper-leg network alone."""
    manifest = json.loads((BUNDLED / "manifest.json").read_text())
    entry = next(e for e in manifest["models"] if e["role"] == "upper_leg")
    models.mkdir()
    for name in (entry["config"], entry["weights"]):
        shutil.copyfile(BUNDLED / name, models / name)
    (models / "manifest.json").write_text(json.dumps({**manifest, "models": [entry]}))
    return models, entry


def test_region_networks_are_loaded_when_a_part_needs_them(tmp_path, monkeypatch):
    from legseg_tf import inference
    from legseg_tf.segmenter import load_segmenter

    models, entry = _upper_only(tmp_path / "models")
    loads, runs = [], []
    monkeypatch.setattr(model_store, "load_model",
                        lambda entry, verify=True: loads.append(entry.id) or f"model:{entry.id}")
    monkeypatch.setattr(inference, "apply_segmentation_network",
                        lambda part, model, *args, **kwargs: runs.append(model) or part)
    segmenter = load_segmenter(InferenceConfig(region="upper"), models)
    assert loads == []                      # checked, not built
    network = segmenter.networks["upper_leg"]
    part = np.zeros((4, 16, 16), np.float32)
    network.predict(part)
    network.predict(part)
    assert loads == [entry["id"]]                    # built once, on the first part
    assert runs == [f"model:{entry['id']}"] * 2


def test_a_corrupt_network_still_stops_the_run_before_any_image(tmp_path):
    from legseg_tf.segmenter import load_segmenter

    models, entry = _upper_only(tmp_path / "models")
    with open(models / entry["weights"], "r+b") as handle:
        handle.seek(4000)
        handle.write(b"flip")
    with pytest.raises(NoModelError, match="sha256"):
        load_segmenter(InferenceConfig(region="upper"), models)
