"""Nothing wrong passes silently: one test per fault that used to pass with exit 0 (or a
traceback). Each builds the faulty input, runs the CLI in-process with the placeholder
segmenter where the network is irrelevant, and checks the exit code, the message and what is
left on disk. The wider grid of faults is tests/test_fault_matrix.py."""
from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess

import nibabel as nib
import numpy as np
import pytest

from legseg_tf import cli, derivatives, nifti_io, pipeline
from tests.conftest import REPO_ROOT, make_dataset, two_leg_volume, write_nifti
from tests.helpers import patch_header

T1W = "sub-01/anat/sub-01_acq-outphase_T1w.nii.gz"
DSEG = "sub-01/anat/sub-01_acq-outphase_desc-muscles_dseg.nii.gz"


def run(*args) -> int:
    return cli.main([str(a) for a in args])


def one_image_dataset(root, **kwargs):
    return make_dataset(root, {T1W: {"EchoTime": 0.00345}}, **kwargs)


def no_orientation(path):
    return patch_header(path, sform_code=0, qform_code=0)


# 1 ------------------------------------------------------------------------------------------

def test_header_without_orientation_is_refused_unless_assumed(tmp_path, placeholder, caplog):
    bids = one_image_dataset(tmp_path / "bids")
    no_orientation(bids / T1W)
    out = tmp_path / "out"
    assert run(bids, out, "participant", "--skip_bids_validator") == cli.EXIT_FAILED
    assert "sform_code = 0 and qform_code = 0" in caplog.text
    assert "--assume-orientation" in caplog.text
    assert not (out / DSEG).exists() and placeholder.calls == 0
    assert run(bids, out, "participant", "--skip_bids_validator",
               "--assume-orientation", "RAS") == cli.EXIT_OK
    sidecar = json.loads((out / DSEG.replace(".nii.gz", ".json")).read_text())
    assert sidecar["legseg"]["orientation_assumed"] is True
    labels, _ = nifti_io.load_canonical(out / DSEG)
    left_x, right_x = np.nonzero(labels == 55)[0], np.nonzero(labels == 56)[0]
    assert left_x.max() < right_x.min()          # RAS as asserted: the patient's left at low x
    assert run(bids, tmp_path / "o2", "participant", "--assume-orientation", "RAR") == cli.EXIT_USAGE


@pytest.mark.parametrize("fault,words", [
    ("singular", "singular or non-finite"),
    ("nan", "singular or non-finite"),
    ("zero_zoom", "pixdim[1:4]"),
])
def test_unusable_affines_are_refused_with_the_header_field(tmp_path, fault, words):
    path = tmp_path / "x.nii.gz"
    affine = np.diag([2.0, 2.0, 6.0, 1.0])
    if fault == "singular":
        affine[2, 2] = 0.0
    elif fault == "nan":
        affine[0, 3] = np.nan
    write_nifti(path, two_leg_volume(), np.diag([2.0, 2.0, 6.0, 1.0]))
    if fault == "zero_zoom":
        patch_header(path, sform_code=0, pixdim=[1.0, 2.0, 2.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    else:
        patch_header(path, srow_x=affine[0], srow_y=affine[1], srow_z=affine[2])
    with pytest.raises(nifti_io.ImageError, match=words.replace("[", r"\[").replace("]", r"\]")):
        nifti_io.load_canonical(path)


# 2 ------------------------------------------------------------------------------------------

def test_noise_image_is_refused_and_flagged_results_stay_out_of_group(tmp_path, placeholder, caplog):
    bids = one_image_dataset(tmp_path / "bids")
    rng = np.random.default_rng(1)
    write_nifti(bids / T1W, rng.uniform(0, 100, (48, 32, 8)).astype(np.float32),
                np.diag([2.0, 2.0, 6.0, 1.0]))
    out = tmp_path / "out"
    assert run(bids, out, "participant", "--skip_bids_validator") == cli.EXIT_FAILED
    assert "uncorrelated" in caplog.text and not (out / DSEG).exists()
    assert placeholder.calls == 0


def test_not_anatomy_flag_and_group_exclusion(tmp_path):
    from legseg_tf import group, input_checks

    labels = np.zeros((4, 8, 8), np.uint16)
    labels[:, :4] = 55
    body = np.zeros_like(labels, dtype=bool)
    body[:, 6:] = True
    flags, state = input_checks.not_anatomy_flags(labels, body)
    assert state == "flagged" and flags[0]["severity"] == "fail"
    flags, state = input_checks.not_anatomy_flags(labels, np.zeros_like(body))
    assert "no body found" in flags[0]["message"]
    assert input_checks.not_anatomy_flags(labels, labels > 0)[1] == "passed"

    out = _two_outputs(tmp_path)
    sidecar = out / "sub-02/anat/sub-02_acq-outphase_desc-muscles_dseg.json"
    meta = json.loads(sidecar.read_text())
    meta["legseg"]["qc"] = {"flags": [{"code": "not_anatomy", "severity": "fail",
                                       "message": "no body found", "structures": []}]}
    sidecar.write_text(json.dumps(meta))
    assert group.run_group(out) == 0
    assert "sub-02" not in (out / "group_muscles.tsv").read_text()
    assert "sub-02" in (out / "group_qc_flags.tsv").read_text()
    assert 'id="left-out"' in (out / "group.html").read_text()
    assert group.run_group(out, include_failed_qc=True) == 0
    assert "sub-02" in (out / "group_muscles.tsv").read_text()

    # every image flagged: no tables, but the page and the flag table still say why
    other = out / "sub-01/anat/sub-01_acq-outphase_desc-muscles_dseg.json"
    first = json.loads(other.read_text())
    first["legseg"]["qc"] = meta["legseg"]["qc"]
    other.write_text(json.dumps(first))
    for name in ("group.html", "group_qc_flags.tsv", "group_muscles.tsv"):
        (out / name).unlink()
    assert group.run_group(out) == 0
    assert not (out / "group_muscles.tsv").exists()
    page = (out / "group.html").read_text()
    assert 'id="left-out"' in page and "sub-01" in page and "sub-02" in page
    assert "sub-01" in (out / "group_qc_flags.tsv").read_text()


def _two_outputs(tmp_path):
    from tests.fakes import ThresholdPlaceholderSegmenter

    bids = make_dataset(tmp_path / "bids", {T1W: None,
                                            "sub-02/anat/sub-02_acq-outphase_T1w.nii.gz": None})
    out = tmp_path / "out"
    original = pipeline.load_segmenter
    pipeline.load_segmenter = lambda config, models_dir: ThresholdPlaceholderSegmenter()
    try:
        assert run(bids, out, "participant", "--skip_bids_validator") == 0
    finally:
        pipeline.load_segmenter = original
    return out


# 3 ------------------------------------------------------------------------------------------

def test_invalid_json_of_another_participant(tmp_path, placeholder, monkeypatch, caplog):
    bids = make_dataset(tmp_path / "bids", {T1W: None, "sub-02/anat/sub-02_acq-outphase_T1w.nii.gz": None})
    bad = bids / "sub-02/anat/sub-02_acq-outphase_T1w.json"
    bad.write_text("{not json")
    monkeypatch.setattr(pipeline, "find_validator", lambda: None)   # pybids alone must not crash
    out = tmp_path / "out"
    assert run(bids, out, "participant", "--participant_label", "01") == cli.EXIT_INVALID_DATASET
    assert str(bad) in caplog.text and "Traceback" not in caplog.text
    log = next((out / "logs").glob("*.log")).read_text()
    assert str(bad) in log
    caplog.clear()
    assert run(bids, out, "participant", "--participant_label", "01", "--skip_bids_validator") == 0
    assert f"skipping {bad}" in caplog.text and (out / DSEG).exists()


def test_unexpected_exception_reaches_the_log(tmp_path, placeholder, monkeypatch, capsys):
    bids = one_image_dataset(tmp_path / "bids")

    def explode(*args, **kwargs):
        raise KeyError("surprise")

    monkeypatch.setattr(pipeline, "find_inputs", explode, raising=False)
    import legseg_tf.bids_inputs as bids_inputs

    monkeypatch.setattr(bids_inputs, "find_inputs", explode)
    out = tmp_path / "out"
    assert run(bids, out, "participant", "--skip_bids_validator") == cli.EXIT_FAILED
    log = next((out / "logs").glob("*.log")).read_text()
    assert "Traceback" in log and "KeyError: 'surprise'" in log
    assert "Traceback" not in capsys.readouterr().err


# 4 ------------------------------------------------------------------------------------------

def test_symlink_loops_are_not_followed(tmp_path, placeholder):
    bids = one_image_dataset(tmp_path / "bids")
    os.symlink("..", bids / "sub-01/anat/loop")
    os.symlink("../..", bids / "sub-01/anat/loop2")
    out = tmp_path / "out"
    assert run(bids, out, "participant", "--skip_bids_validator") == 0
    assert [p.relative_to(out).as_posix() for p in out.rglob("*_dseg.nii.gz")] == [DSEG]
    assert placeholder.calls == 1


# 5 ------------------------------------------------------------------------------------------

def test_output_inside_bids_dir_is_never_an_input(tmp_path, placeholder):
    bids = one_image_dataset(tmp_path / "bids")
    out = bids / "legseg_out"
    for _ in range(2):
        assert run(bids, out, "participant", "--skip_bids_validator", "--overwrite") == 0
    assert [p.relative_to(out).as_posix() for p in out.rglob("*_dseg.nii.gz")] == [DSEG]
    assert placeholder.calls == 2


# 6 ------------------------------------------------------------------------------------------

def test_group_with_an_unreadable_label_map_exits_1_and_names_it(tmp_path, caplog):
    out = _two_outputs(tmp_path)
    bad = out / "sub-02/anat/sub-02_acq-outphase_desc-muscles_dseg.nii.gz"
    bad.write_bytes(b"not a nifti")
    (out / "sub-02/anat/sub-02_acq-outphase_desc-muscles_morph.tsv").unlink(missing_ok=True)
    assert run(tmp_path / "bids", out, "group") == cli.EXIT_FAILED
    page = (out / "group.html").read_text()
    assert "sub-02/anat/sub-02_acq-outphase_desc-muscles_dseg.nii.gz" in page
    assert "sub-01" in (out / "group_muscles.tsv").read_text()


# 7 ------------------------------------------------------------------------------------------

def test_disk_full_exits_73_with_one_line_and_no_partial_file(tmp_path, placeholder, monkeypatch, capsys):
    bids = one_image_dataset(tmp_path / "bids")
    out = tmp_path / "out"
    real_save = nib.save

    def full(image, filename):
        with open(filename, "wb") as handle:   # a partial file, as a real full disk leaves
            handle.write(b"\x00" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(nifti_io.nib, "save", full)
    assert run(bids, out, "participant", "--skip_bids_validator") == cli.EXIT_OUTPUT_DIR
    err = [line for line in capsys.readouterr().err.splitlines() if "ERROR" in line]
    assert len(err) == 1 and "No space left on device" in err[0]
    assert not list(out.rglob("sub-*/**/*.nii*"))
    monkeypatch.setattr(nifti_io.nib, "save", real_save)

    def full_json(path, payload):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(derivatives, "write_json", full_json)
    assert run(bids, out, "participant", "--skip_bids_validator") == cli.EXIT_OUTPUT_DIR
    assert not (out / DSEG).exists()          # the label map without its sidecar is removed


# 8 ------------------------------------------------------------------------------------------

def test_complex_images_are_used_as_magnitude_with_a_warning(tmp_path, caplog):
    path = tmp_path / "c.nii.gz"
    data = two_leg_volume().astype(np.complex64) * np.exp(1j * 2.0)   # real part negative
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 6.0, 1.0])), str(path))
    with caplog.at_level(logging.WARNING):
        volume, _ = nifti_io.load_canonical(path)
    assert "complex" in caplog.text and "magnitude" in caplog.text
    np.testing.assert_allclose(volume.max(), np.abs(data).max(), rtol=1e-5)
    rgb = tmp_path / "rgb.nii.gz"
    rgb_data = np.zeros((8, 8, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb_data, np.eye(4)), str(rgb))
    with pytest.raises(nifti_io.ImageError, match="RGB"):
        nifti_io.load_canonical(rgb)


# 9 ------------------------------------------------------------------------------------------

def test_dangling_symlink_outputs_are_replaced(tmp_path, placeholder, caplog):
    bids = one_image_dataset(tmp_path / "bids")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(tmp_path / "nowhere.tsv", out / "dseg.tsv")
    target = tmp_path / "elsewhere.json"
    target.write_text("keep me")
    os.symlink(target, out / "dataset_description.json")
    assert run(bids, out, "participant", "--skip_bids_validator") == 0
    for name in ("dseg.tsv", "dataset_description.json"):
        assert not (out / name).is_symlink() and (out / name).is_file()
    assert (out / "dseg.tsv").read_text().startswith("index\tname")
    assert target.read_text() == "keep me"
    assert "is a symbolic link" in caplog.text


# 10 -----------------------------------------------------------------------------------------

def test_validator_runs_without_network_and_keeps_caches_out_of_home(tmp_path):
    validator = pipeline.find_validator()
    if validator is None:
        pytest.skip("no BIDS validator installed (pip install bids-validator-deno)")
    command = pipeline.validator_command(validator)
    if os.path.basename(validator) == "bids-validator-deno":
        assert "--deny-net" in command and "--allow-net" not in command
    env = pipeline.validator_environment(tmp_path / "work")
    assert env["DENO_DIR"] == str(tmp_path / "work" / ".deno")
    bids = one_image_dataset(tmp_path / "bids")
    home = tmp_path / "home"
    home.mkdir()
    done = subprocess.run([*command, str(bids), "--ignoreWarnings"], capture_output=True, text=True,
                          env={**env, "HOME": str(home)}, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not list(home.iterdir())


def test_validator_of_another_venv_runs_with_the_deno_beside_it(tmp_path, monkeypatch):
    """A validator found on PATH in another environment (e.g. a venv that reuses this one)
    runs with the Deno runtime installed beside it, not the deno package's HOME fallback."""
    import deno

    other = tmp_path / "other" / "bin"
    other.mkdir(parents=True)
    for name in ("bids-validator-deno", "deno"):
        (other / name).write_text("#!/bin/sh\n")
        (other / name).chmod(0o755)
    monkeypatch.setattr(deno, "find_deno_bin", lambda: tmp_path / "home" / ".local" / "bin" / "deno")
    command = pipeline.validator_command(str(other / "bids-validator-deno"))
    assert command[0] == str(other / "deno") and "--deny-net" in command


def test_validator_that_cannot_start_is_skipped_with_a_warning(tmp_path, monkeypatch, caplog):
    bids = one_image_dataset(tmp_path / "bids")
    monkeypatch.setattr(pipeline, "find_validator", lambda: str(tmp_path / "bids-validator"))
    monkeypatch.setattr(pipeline, "validator_command", lambda v: [str(tmp_path / "missing-deno")])
    with caplog.at_level(logging.WARNING):
        pipeline.validate_dataset(bids, tmp_path / "work")
    assert "could not be started" in caplog.text


def test_unusable_work_dir_is_named_as_such(tmp_path, capsys):
    bids = one_image_dataset(tmp_path / "bids")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert run(bids, tmp_path / "out", "participant", "-w", blocker / "w") == cli.EXIT_OUTPUT_DIR
    err = capsys.readouterr().err
    assert "work dir" in err and "OUTPUT_DIR" not in err


def test_sigterm_then_rerun_completes(tmp_path, monkeypatch):
    from tests.fakes import ThresholdPlaceholderSegmenter

    bids = make_dataset(tmp_path / "bids", {T1W: None, "sub-02/anat/sub-02_acq-outphase_T1w.nii.gz": None})

    class StopSecond(ThresholdPlaceholderSegmenter):
        def segment(self, volume, spacing, **kwargs):
            if self.calls == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            return super().segment(volume, spacing, **kwargs)

    monkeypatch.setattr(pipeline, "load_segmenter", lambda config, models_dir: StopSecond())
    monkeypatch.setattr(pipeline, "_participant_reports", lambda results, config: None)
    out = tmp_path / "out"
    assert run(bids, out, "participant", "--skip_bids_validator") == cli.EXIT_TERMINATED
    monkeypatch.setattr(pipeline, "load_segmenter",
                        lambda config, models_dir: ThresholdPlaceholderSegmenter())
    assert run(bids, out, "participant", "--skip_bids_validator") == 0
    assert len(list(out.rglob("*_dseg.nii.gz"))) == 2
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_readme_documents_the_refusals():
    readme = (REPO_ROOT / "README.md").read_text()
    assert "## What legseg refuses and why" in readme
    for option in ("--assume-orientation", "--include-failed-qc"):
        assert option in readme
