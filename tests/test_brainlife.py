"""The brainlife.io App: ``main`` at the repository root, a shim that runs
integrations/brainlife/legseg_brainlife.py.

End-to-end runs use the demo phantom and tiny untrained networks (never the shipped models);
the config errors run ``main`` without TensorFlow and must answer in one line.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from importlib.machinery import SourceFileLoader
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from legseg_tf import __version__, demo
from legseg_tf.bids_inputs import find_inputs, load_filter_file
from tests.helpers import install_tiny_models

REPO_ROOT = Path(__file__).resolve().parents[1]
MAIN = REPO_ROOT / "main"
APP = REPO_ROOT / "integrations" / "brainlife" / "legseg_brainlife.py"


def _module():
    loader = SourceFileLoader("legseg_brainlife_app", str(APP))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _path_without_container_runtimes() -> str:
    """PATH without the folders that hold apptainer or singularity."""
    return os.pathsep.join(folder for folder in os.environ["PATH"].split(os.pathsep)
                           if not any(os.path.exists(os.path.join(folder, name))
                                      for name in ("apptainer", "singularity")))


def _run(workdir: Path, config: dict | None, env: dict | None = None, path_prefix: Path | None = None,
         python: str = sys.executable):
    """Run ``main`` in ``workdir``; PATH has no container runtime unless ``path_prefix`` adds one
    (so that LEGSEG_CONTAINER unset runs this checkout's run.py, as on a machine without one)."""
    if config is not None:
        (workdir / "config.json").write_text(json.dumps(config))
    environment = {k: v for k, v in os.environ.items() if k not in ("LEGSEG_CONTAINER", "LEGSEG_MODELS_DIR")}
    environment["PATH"] = _path_without_container_runtimes()
    environment.update(env or {})
    if path_prefix is not None:
        environment["PATH"] = f"{path_prefix}{os.pathsep}{environment['PATH']}"
    return subprocess.run([python, str(MAIN)], cwd=workdir, capture_output=True, text=True,
                          env=environment, timeout=600)


def _fake_runtime(folder: Path, record: Path) -> Path:
    """An ``apptainer`` that records its arguments (one per line, then ``--``) and succeeds."""
    folder.mkdir()
    (folder / "apptainer").write_text(f"#!/usr/bin/env bash\nprintf '%s\\n' \"$@\" '--' >> {record}\n")
    (folder / "apptainer").chmod(0o755)
    return folder


@pytest.fixture(scope="module")
def demo_bids(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("brainlife") / "bids"
    demo.write_demo(root, subjects=2)
    return root


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> Path:
    models = tmp_path_factory.mktemp("models")
    install_tiny_models(models)
    return models


def test_main_is_an_executable_python_script():
    assert os.access(MAIN, os.X_OK)
    lines = MAIN.read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env python3" and lines[1].startswith("#PBS ")
    assert len(lines) < 20  # a shim: the App is integrations/brainlife/legseg_brainlife.py
    example = json.loads((REPO_ROOT / "integrations" / "brainlife" / "config.example.json").read_text())
    assert _module().check_keys(example) == "outphase"


def test_single_outphase_file_end_to_end(tmp_path, demo_bids, tiny_models):
    source = demo_bids / "sub-02/anat/sub-02_acq-outphase_T1w.nii.gz"
    config = {"outphase": str(source), "echo_time": 0.00345, "magnetic_field_strength": 3, "region": "upper",
              "device": "cpu", "models": str(tiny_models), "_inputs": [{"meta": {"subject": "P_07"}}],
              "include_failed_qc": True}   # the untrained tiny networks get a low_confidence fail flag
    result = _run(tmp_path, config)
    assert result.returncode == 0, result.stderr[-3000:]
    # the minimal BIDS dataset: subject from brainlife's meta (cleaned), sidecar with the echo time
    image = tmp_path / "legseg_input/sub-P07/anat/sub-P07_acq-outphase_T1w.nii.gz"
    assert image.read_bytes() == source.read_bytes()
    sidecar = json.loads(image.with_name("sub-P07_acq-outphase_T1w.json").read_text())
    assert sidecar == {"EchoTime": 0.00345, "MagneticFieldStrength": 3.0}
    # derivatives, both levels
    dseg = tmp_path / "output/sub-P07/anat/sub-P07_acq-outphase_desc-muscles_dseg.nii.gz"
    assert dseg.exists() and (tmp_path / "output/group_muscles.tsv").exists()
    # brainlife neuro/parcellation/volume: parc.nii.gz + label.json naming every label present
    parc = tmp_path / "parc/parc.nii.gz"
    assert parc.read_bytes() == dseg.read_bytes()
    labels = json.loads((tmp_path / "parc/label.json").read_text())
    values = {entry["voxel_value"] for entry in labels}
    present = set(np.unique(np.asarray(nib.load(str(parc)).dataobj)).tolist()) - {0}
    assert present and present <= values and 0 not in values
    assert all(entry["name"] for entry in labels)
    # product.json: success message, volume graph, summary, a few kB at most
    text = (tmp_path / "product.json").read_text()
    assert len(text) < 8000
    product = json.loads(text)
    assert product["brainlife"][0] == {"type": "success",
                                       "msg": f"legseg {__version__}: 1 image(s) segmented (region upper)."}
    graph = product["brainlife"][1]
    assert graph["type"] == "plotly" and len(graph["data"][0]["x"]) == len(present)
    assert product["legseg"]["images"][0]["image"] == "sub-P07/anat/sub-P07_acq-outphase_desc-muscles_dseg.nii.gz"
    assert product["legseg"]["images"][0]["structures"] == len(present)
    assert product["tags"] == ["legseg", "region-upper"]
    assert "--skip_bids_validator" in result.stderr  # the generated dataset is not validated


def test_bids_folder_input_with_participant_label_and_models_from_the_environment(tmp_path, demo_bids, tiny_models):
    config = {"bids": str(demo_bids), "participant_label": "sub-01", "region": "upper", "device": "cpu",
              "skip_bids_validator": True}
    result = _run(tmp_path, config, env={"LEGSEG_MODELS_DIR": str(tiny_models)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "legseg_input").exists()
    maps = sorted((tmp_path / "output").rglob("*_dseg.nii.gz"))
    assert [p.name for p in maps] == ["sub-01_acq-outphase_desc-muscles_dseg.nii.gz"]
    assert (tmp_path / "parc/parc.nii.gz").exists()
    assert "--participant-label 01" in result.stderr


def test_t1_input_is_selected_through_a_filter_file(tmp_path, demo_bids):
    main = _module()
    config = {"t1": str(demo_bids / "sub-01/anat/sub-01_acq-water_T1w.nii.gz"), "participant_label": "7",
              "session_label": "ses-base", "_inputs": [{"meta": {"EchoTime": 0.0023, "subject": "ignored"}}]}
    root, filter_file = main.build_dataset(config, "t1", str(tmp_path))
    image = Path(root) / "sub-7/ses-base/anat/sub-7_ses-base_T1w.nii.gz"
    assert image.exists()
    assert json.loads(image.with_name("sub-7_ses-base_T1w.json").read_text()) == {"EchoTime": 0.0023}
    found = find_inputs(Path(root), filters=load_filter_file(Path(filter_file)))
    assert [(im.subject, im.session, im.path.name) for im in found] == [("7", "base", image.name)]
    options = main.legseg_options(config, "t1", filter_file)
    assert options == ["--skip_bids_validator", "--bids-filter-file", filter_file]
    # a rerun replaces the folder it wrote itself, never a foreign one
    main.build_dataset(config, "t1", str(tmp_path))
    (tmp_path / "legseg_input/dataset_description.json").write_text('{"Name": "someone else"}')
    with pytest.raises(main.ConfigError, match="not written by this App"):
        main.build_dataset(config, "t1", str(tmp_path))


def test_options_map_to_the_cli(tmp_path):
    main = _module()
    config = {"bids": "x", "region": "legs-hip", "device": "gpu", "merge": "qmritools", "overlap": 0.25,
              "batch_size": 2, "ff_erosion": 0, "nprocs": "4", "mem_gb": 6, "save_probabilities": "true",
              "overwrite": False, "verbose": True, "participant_label": ["01", "sub-02"], "session_label": "a b",
              "models": str(tmp_path), "merge_unused": ""}
    options = main.legseg_options(config, "bids", None)
    assert options == ["--region", "legs-hip", "--device", "gpu", "--merge", "qmritools", "--overlap", "0.25",
                       "--batch-size", "2", "--ff-erosion", "0", "--nprocs", "4", "--mem-gb", "6",
                       "--save-probabilities", "-v", "--models", str(tmp_path),
                       "--participant-label", "01", "02", "--session-label", "a", "b"]
    from legseg_tf import cli
    args = cli.build_parser().parse_args(["b", "o", "participant", *options])
    assert args.region == "legs-hip" and args.participant_label == ["01", "02"] and args.verbose == 1


def test_container_runner_binds_the_inputs(tmp_path, demo_bids):
    record = tmp_path / "calls.txt"
    fake = _fake_runtime(tmp_path / "bin", record)
    work = tmp_path / "work"
    work.mkdir()
    result = _run(work, {"bids": str(demo_bids), "device": "gpu"}, env={"LEGSEG_CONTAINER": "/images/legseg.sif"},
                  path_prefix=fake)
    assert result.returncode == 0, result.stderr
    calls = record.read_text().split("--\n")[:-1]
    runtime_words = ["run", "--cleanenv", "--bind", f"{work}:{work}:rw", "--bind", f"{demo_bids}:{demo_bids}:ro",
                     "--nv", "/images/legseg.sif"]
    assert [c.splitlines() for c in calls] == [
        runtime_words + [str(demo_bids), str(work / "output"), level, "--device", "gpu"]
        for level in ("participant", "group")
    ]
    product = json.loads((work / "product.json").read_text())
    assert product["brainlife"][0]["type"] == "warning"  # the fake runtime segmented nothing


@pytest.mark.parametrize("config, code, message", [
    (None, 64, "no config.json in"),
    ({}, 64, "config.json needs one of the keys 'outphase', 't1' (an input NIfTI file) or 'bids'"),
    ({"outphase": "", "t1": None}, 64, "config.json needs one of the keys"),
    ({"outphase": "a.nii.gz", "bids": "b"}, 64, "several inputs (outphase, bids)"),
    ({"outphase": "missing.nii.gz"}, 66, "missing.nii.gz does not exist"),
    ({"bids": "nowhere"}, 66, "'bids':"),
    ({"outphase": "image.txt"}, 64, "is not a NIfTI file"),
    ({"outphase": "image.nii.gz", "participant_label": "a_b"}, 64, "invalid label 'a_b'"),
    ({"outphase": "image.nii.gz", "participant_label": ["01", "02"]}, 64, "must name one label"),
    ({"outphase": "image.nii.gz", "echo_time": 3.45}, 64, "'echo_time' is in seconds"),
    ({"outphase": "image.nii.gz", "save_probabilities": "maybe"}, 64, "must be true or false"),
    ({"outphase": "image.nii.gz", "models": "nomodels"}, 66, "is not a folder"),
])
def test_config_errors_are_one_line_with_an_exit_code(tmp_path, config, code, message):
    (tmp_path / "image.nii.gz").write_bytes(b"")
    (tmp_path / "image.txt").write_text("")
    result = _run(tmp_path, config)
    assert result.returncode == code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("legseg brainlife: error: ") and message in lines[0], lines
    assert not (tmp_path / "output").exists()
    product = json.loads((tmp_path / "product.json").read_text())  # brainlife shows this message
    assert product["brainlife"] == [{"type": "error", "msg": lines[0][len("legseg brainlife: error: "):]}]


def test_missing_container_runtime(tmp_path):
    result = _run(tmp_path, {"bids": str(tmp_path)}, env={"LEGSEG_CONTAINER": "/images/legseg.sif"})
    assert result.returncode == 69 and "neither apptainer nor singularity" in result.stderr


@pytest.mark.parametrize("device, tag", [("cpu", __version__), ("gpu", f"{__version__}-gpu")])
def test_without_legseg_container_a_runtime_runs_the_released_image(tmp_path, demo_bids, device, tag):
    record = tmp_path / "calls.txt"
    fake = _fake_runtime(tmp_path / "bin", record)
    work = tmp_path / "work"
    work.mkdir()
    result = _run(work, {"bids": str(demo_bids), "device": device}, path_prefix=fake)
    assert result.returncode == 0, result.stderr
    calls = [c.splitlines() for c in record.read_text().split("--\n")[:-1]]
    assert len(calls) == 2
    image = f"docker://ghcr.io/legseg/legseg:{tag}"
    assert all(call[call.index(image) + 1:call.index(image) + 4] == [str(demo_bids), str(work / "output"), level]
               for call, level in zip(calls, ("participant", "group")))
    assert ("--nv" in calls[0]) == (device == "gpu")


def test_legseg_container_none_runs_this_checkout_even_with_a_runtime(tmp_path, demo_bids):
    record = tmp_path / "calls.txt"
    fake = _fake_runtime(tmp_path / "bin", record)
    result = _run(tmp_path, {"bids": str(demo_bids), "region": "arms"}, env={"LEGSEG_CONTAINER": "none"},
                  path_prefix=fake)
    assert not record.exists()
    assert result.returncode == 64 and "invalid choice: 'arms'" in result.stderr  # legseg's own answer


def test_no_runtime_and_no_usable_legseg_fails_with_one_product_line(tmp_path, demo_bids):
    """LEGSEG_CONTAINER unset, no apptainer/singularity on PATH, and a Python that cannot import
    legseg's dependencies (a bare virtual environment): one error line on stderr and in
    product.json, exit code 69, no traceback, nothing else written."""
    bare = tmp_path / "bare-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=300)
    python = str(bare / "bin" / "python")
    assert subprocess.run([python, "-c", "import numpy"], capture_output=True).returncode != 0
    work = tmp_path / "work"
    work.mkdir()
    result = _run(work, {"bids": str(demo_bids)}, python=python)
    assert result.returncode == 69
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("legseg brainlife: error: cannot run legseg here"), lines
    assert "neither apptainer nor singularity" in lines[0] and "No module named" in lines[0]
    product = json.loads((work / "product.json").read_text())
    assert product["brainlife"] == [{"type": "error", "msg": lines[0][len("legseg brainlife: error: "):]}]
    assert sorted(p.name for p in work.iterdir()) == ["config.json", "product.json"]


def test_legseg_failure_is_passed_on_with_an_error_product(tmp_path, demo_bids):
    result = _run(tmp_path, {"bids": str(demo_bids), "region": "arms"})
    assert result.returncode == 64  # legseg's usage error
    assert "invalid choice: 'arms'" in result.stderr
    assert "participant level failed with exit code 64" in result.stderr
    product = json.loads((tmp_path / "product.json").read_text())
    assert product["brainlife"] == [{"type": "error",
                                     "msg": "legseg participant level failed with exit code 64 (see output/logs/)"}]


def test_unknown_keys_are_warned_about(tmp_path):
    result = _run(tmp_path, {"regoin": "legs", "_app": "x"})
    assert "config.json key 'regoin' is not used" in result.stderr and "_app" not in result.stderr
    assert result.returncode == 64


def test_the_app_names_derivative_files_as_legseg_writes_them(tmp_path):
    """The App (standard library only) repeats three derivative names of legseg_tf.derivatives;
    they must stay the same strings."""
    from legseg_tf import derivatives

    app = _module()
    (tmp_path / "raw").mkdir()
    derivatives.ensure_dataset_files(tmp_path / "out", tmp_path / "raw")
    assert (tmp_path / "out" / app.LABEL_TABLE).is_file()
    assert app.DSEG_ENDING == derivatives.DSEG_ENDING
    dseg = Path("sub-01/anat/sub-01_T1w" + derivatives.DSEG_ENDING)
    assert app.MORPH_ENDING == derivatives.morph_path(dseg).name[len("sub-01_T1w"):]
