"""Participant level end to end with the test-only placeholder segmenter."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile

import nibabel as nib
import numpy as np
import pytest

from legseg_tf import cli, pipeline
from legseg_tf.labels import BY_INDEX
from tests.conftest import REPO_ROOT
from tests.fakes import ThresholdPlaceholderSegmenter
from tests.helpers import install_tiny_models


def run(bids, out, *extra):
    return cli.main([str(bids), str(out), "participant", "--skip_bids_validator", *map(str, extra)])


def _snapshot(root):
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")}


def test_outputs_are_skipped_unless_overwrite(tiny_dataset, tmp_path, placeholder, caplog):
    out = tmp_path / "out"
    assert run(tiny_dataset, out) == 0
    dseg = out / "sub-01/anat/sub-01_acq-outphase_desc-muscles_dseg.nii.gz"
    first = dseg.stat().st_mtime_ns
    assert placeholder.calls == 2
    assert run(tiny_dataset, out) == 0
    assert placeholder.calls == 2 and dseg.stat().st_mtime_ns == first
    assert "use --overwrite" in caplog.text
    assert run(tiny_dataset, out, "--overwrite") == 0
    assert placeholder.calls == 4


def test_outputs_geometry_sidecar_and_side(tiny_dataset, tmp_path, placeholder):
    out = tmp_path / "out"
    assert run(tiny_dataset, out, "--participant_label", "01") == 0
    src = nib.load(str(tiny_dataset / "sub-01/anat/sub-01_acq-outphase_T1w.nii.gz"))
    dseg = nib.load(str(out / "sub-01/anat/sub-01_acq-outphase_desc-muscles_dseg.nii.gz"))
    assert dseg.shape == src.shape
    np.testing.assert_allclose(dseg.affine, src.affine)
    data = np.asarray(dseg.dataobj)
    assert np.issubdtype(data.dtype, np.integer)
    # the placeholder names sides from geometry: Left labels (odd) only at low RAS x here
    left_x = np.nonzero(data == 55)[0]
    right_x = np.nonzero(data == 56)[0]
    assert left_x.size and right_x.size and left_x.max() < right_x.min()
    assert BY_INDEX[55].side == "L"
    sidecar = json.loads((out / "sub-01/anat/sub-01_acq-outphase_desc-muscles_dseg.json").read_text())
    assert sidecar["Sources"] == ["bids:raw:sub-01/anat/sub-01_acq-outphase_T1w.nii.gz"]
    assert sidecar["Models"][0]["sha256"] == "0" * 64
    assert sidecar["legseg"]["software"]["nibabel"] == nib.__version__
    assert "total" in sidecar["legseg"]["timings_s"]
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert (out / "dseg.tsv").read_text().startswith("index\tname")


def test_bids_dir_is_never_written(tiny_dataset, tmp_path, placeholder):
    before = _snapshot(tiny_dataset)
    modes = {}
    for path in [tiny_dataset, *tiny_dataset.rglob("*")]:
        modes[path] = path.stat().st_mode
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        assert run(tiny_dataset, tmp_path / "out") == 0
    finally:
        for path, mode in modes.items():
            path.chmod(mode)
    assert _snapshot(tiny_dataset) == before


def test_probabilities_are_written_when_requested(tiny_dataset, tmp_path, monkeypatch):
    class WithProbabilities(ThresholdPlaceholderSegmenter):
        def segment(self, volume, spacing, **kwargs):
            result = super().segment(volume, spacing)
            result.probabilities = np.stack([(result.labels == v).astype(np.float32) for v in (55, 56)], -1)
            result.label_map = [55, 56]
            return result

    monkeypatch.setattr(pipeline, "load_segmenter", lambda config, models_dir: WithProbabilities())
    monkeypatch.setattr(pipeline, "_participant_reports", lambda results, config: None)
    out = tmp_path / "out"
    assert run(tiny_dataset, out, "--participant_label", "01", "--save-probabilities") == 0
    prob = nib.load(str(out / "sub-01/anat/sub-01_acq-outphase_desc-muscles_probseg.nii.gz"))
    dseg = nib.load(str(out / "sub-01/anat/sub-01_acq-outphase_desc-muscles_dseg.nii.gz"))
    assert prob.shape == (*dseg.shape, 2)
    labels = np.asarray(dseg.dataobj)
    np.testing.assert_array_equal(np.asarray(prob.dataobj)[..., 0] > 0.5, labels == 55)
    meta = json.loads((out / "sub-01/anat/sub-01_acq-outphase_desc-muscles_probseg.json").read_text())
    assert meta["LabelMap"] == ["VL_L", "VL_R"]       # dseg.tsv abbreviations, volume order
    assert meta["LabelIndices"] == [55, 56]


def test_work_dir_sets_no_process_wide_temporary_folder(tiny_dataset, tmp_path, placeholder):
    work = tmp_path / "work"
    before = tempfile.tempdir
    assert run(tiny_dataset, tmp_path / "out", "-w", work) == 0
    assert work.is_dir()
    assert tempfile.tempdir == before


@pytest.mark.slow
def test_work_dir_receives_the_caches_and_tmpdir_is_left_empty(tmp_path):
    """A run with -w, the validator on and no writable HOME, in a process of its own: the
    validator's Deno cache, Keras's config and Matplotlib's font cache land in the work dir;
    nothing is left in TMPDIR and nothing is written to HOME."""
    from legseg_tf import demo

    install_tiny_models(tmp_path / "models")
    demo.write_demo(tmp_path / "bids", subjects=1)
    work, scratch, home = tmp_path / "work", tmp_path / "tmp", tmp_path / "no-home"
    scratch.mkdir()
    env = {key: value for key, value in os.environ.items()
           if key not in ("KERAS_HOME", "MPLCONFIGDIR", "DENO_DIR", "XDG_CACHE_HOME")}
    env.update(HOME=str(home), TMPDIR=str(scratch), PYTHONPATH=str(REPO_ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "legseg_tf", str(tmp_path / "bids"), str(tmp_path / "out"),
         "participant", "-w", str(work), "--models", str(tmp_path / "models"),
         "--region", "upper", "--device", "cpu"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "validating" in done.stderr
    assert list((work / ".deno").iterdir())                     # the validator's cache
    assert (work / ".keras" / "keras.json").is_file()
    assert list((work / ".matplotlib").glob("fontlist-*.json"))
    assert sorted(p.name for p in work.iterdir()) == [".deno", ".keras", ".matplotlib"]
    assert not list(scratch.iterdir())
    assert not home.exists()


def test_device_choice_is_recorded_per_run_not_kept_in_the_process(tiny_dataset, tmp_path,
                                                                   placeholder, monkeypatch):
    """What configure_device chose reaches the sidecars of that run only: a later run with a
    segmenter of its own records that segmenter's device, not the earlier choice."""
    from legseg_tf import device
    from legseg_tf.config import RunConfig

    chosen = {"device": "gpu", "gpus": ["/physical_device:GPU:0"], "tensorflow": "x"}
    monkeypatch.setattr(device, "configure_device", lambda name, nprocs: dict(chosen))
    out = tmp_path / "out"
    assert run(tiny_dataset, out, "--participant_label", "01") == 0
    sidecar = out / "sub-01/anat/sub-01_acq-outphase_desc-muscles_dseg.json"
    assert json.loads(sidecar.read_text())["legseg"]["device"] == chosen
    config = RunConfig(tiny_dataset, tmp_path / "again", "participant", participant_labels=("01",),
                       skip_bids_validator=True)
    config.output_dir.mkdir()
    assert pipeline.run_participant(config, segmenter=ThresholdPlaceholderSegmenter()) == 0
    again = tmp_path / "again/sub-01/anat/sub-01_acq-outphase_desc-muscles_dseg.json"
    assert json.loads(again.read_text())["legseg"]["device"] == "cpu"  # the segmenter's report


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_output_dir_exits_73(tiny_dataset, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        assert run(tiny_dataset, out) == cli.EXIT_OUTPUT_DIR
    finally:
        out.chmod(0o755)
