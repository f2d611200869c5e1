"""The command-line contract: options, labels and every documented exit code."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from legseg_tf import cli, pipeline
from legseg_tf.model_store import resolve_models_dir
from tests.conftest import REPO_ROOT, make_dataset
from tests.fakes import FailingSegmenter, ThresholdPlaceholderSegmenter


def run_cli(*args) -> int:
    return cli.main([str(a) for a in args])


def test_version_is_fast_and_does_not_import_tensorflow():
    code = (
        "import sys; from legseg_tf.cli import main\n"
        "try:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    version = (REPO_ROOT / "version").read_text().strip()
    done = subprocess.run([sys.executable, "run.py", "--version"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == f"legseg {version}"


def test_missing_bids_dir_exits_66_with_one_line(tmp_path, capsys):
    assert run_cli("/nonexistent", tmp_path / "out", "participant") == cli.EXIT_NO_BIDS_DIR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "/nonexistent" in err[0]
    assert not (tmp_path / "out").exists()


def test_unknown_analysis_level_exits_17(tiny_dataset, tmp_path):
    assert run_cli(tiny_dataset, tmp_path / "out", "session") == cli.EXIT_UNKNOWN_LEVEL


@pytest.mark.parametrize("extra", [
    ["--participant_label", "../x"],
    ["--session-label", "a_b"],
    ["--overlap", "1.5"],
    ["--nprocs", "0"],
    ["--region", "arm"],
    ["--no-such-option"],
])
def test_usage_errors_exit_64(tiny_dataset, tmp_path, extra):
    assert run_cli(tiny_dataset, tmp_path / "out", "participant", *extra) == cli.EXIT_USAGE


def test_missing_positional_exits_64(tiny_dataset):
    assert run_cli(tiny_dataset) == cli.EXIT_USAGE


def test_output_dir_equal_to_bids_dir_is_a_usage_error(tiny_dataset):
    assert run_cli(tiny_dataset, tiny_dataset, "participant") == cli.EXIT_USAGE


def test_uncreatable_output_dir_exits_73(tiny_dataset, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert run_cli(tiny_dataset, blocker / "out", "participant", "--skip_bids_validator") == cli.EXIT_OUTPUT_DIR


def test_unknown_participant_exits_18(tiny_dataset, tmp_path, placeholder):
    assert run_cli(tiny_dataset, tmp_path / "out", "participant", "--participant_label", "03",
                   "--skip_bids_validator") == cli.EXIT_NO_INPUT
    assert placeholder.calls == 0


def test_filters_matching_nothing_exit_18(tiny_dataset, tmp_path, placeholder):
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"suffix": "FLAIR"}))
    assert run_cli(tiny_dataset, tmp_path / "out", "participant", "--bids-filter-file", filters,
                   "--skip_bids_validator") == cli.EXIT_NO_INPUT


def _error_lines(caplog, words: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "ERROR" and words in r.getMessage()]


def test_exit_18_message_gives_a_filter_file_that_works(tiny_dataset, tmp_path, placeholder, caplog):
    """The one error line of exit 18 names what the dataset has and a --bids-filter-file
    content in the project's format (pybids entities) that, used as it stands, selects images."""
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"suffix": "FLAIR"}))
    assert run_cli(tiny_dataset, tmp_path / "out", "participant", "--bids-filter-file", filters,
                   "--skip_bids_validator") == cli.EXIT_NO_INPUT
    [message] = _error_lines(caplog, "no input images")
    assert "\n" not in message and "--bids-filter-file" in message
    assert "anat/acq-outphase_T1w (1)" in message and "anat/MEGRE (6)" in message
    example = json.loads(message.split("holding e.g. ", 1)[1])
    assert example == {"datatype": "anat", "suffix": "T1w", "acquisition": "outphase"}
    filters.write_text(json.dumps(example))
    assert run_cli(tiny_dataset, tmp_path / "out", "participant", "--bids-filter-file", filters,
                   "--skip_bids_validator") == cli.EXIT_OK
    assert placeholder.calls == 1


def test_exit_18_hint_for_the_default_query_and_for_no_images(tmp_path, placeholder, caplog):
    water = make_dataset(tmp_path / "water", {"sub-01/anat/sub-01_acq-water_T1w.nii.gz": None})
    assert run_cli(water, tmp_path / "out", "participant", "--skip_bids_validator") == cli.EXIT_NO_INPUT
    [message] = _error_lines(caplog, "no input images")
    assert message.endswith('holding e.g. {"datatype": "anat", "suffix": "T1w", "acquisition": "water"}')
    caplog.clear()
    (water / "sub-01/anat/sub-01_acq-water_T1w.nii.gz").unlink()
    assert run_cli(water, tmp_path / "out2", "participant", "--skip_bids_validator") == cli.EXIT_NO_INPUT
    [message] = _error_lines(caplog, "no input images")
    assert message.endswith("no NIfTI images at all (is BIDS_DIR right?)")


def test_exit_16_message_points_to_bidsignore(tmp_path, monkeypatch, caplog):
    validator = tmp_path / "bids-validator"
    validator.write_text("#!/bin/sh\necho '[ERROR] NOT_INCLUDED sub-01/anat/sub-01_outphase.nii.gz'\nexit 16\n")
    validator.chmod(0o755)
    monkeypatch.setattr(pipeline, "find_validator", lambda: str(validator))
    root = make_dataset(tmp_path / "bids", {"sub-01/anat/sub-01_acq-outphase_T1w.nii.gz": None})
    assert run_cli(root, tmp_path / "out", "participant") == cli.EXIT_INVALID_DATASET
    [message] = _error_lines(caplog, "failed BIDS validation")
    assert "\n" not in message
    assert f"{root / '.bidsignore'}" in message and "--skip_bids_validator" in message
    assert _error_lines(caplog, "validator: [ERROR] NOT_INCLUDED")  # the validator's own words


def test_malformed_filter_file_exits_64(tiny_dataset, tmp_path):
    filters = tmp_path / "filters.json"
    filters.write_text("{broken")
    assert run_cli(tiny_dataset, tmp_path / "out", "participant", "--bids-filter-file", filters) == cli.EXIT_USAGE


def test_no_model_exits_3_and_writes_no_segmentation(tiny_dataset, tmp_path):
    empty_models = tmp_path / "models"
    empty_models.mkdir()
    out = tmp_path / "out"
    assert run_cli(tiny_dataset, out, "participant", "--models", empty_models,
                   "--skip_bids_validator") == cli.EXIT_NO_MODEL
    assert not list(out.rglob("*_dseg.nii.gz"))


def test_participant_success_exits_0(tiny_dataset, tmp_path, placeholder):
    out = tmp_path / "out"
    assert run_cli(tiny_dataset, out, "participant", "--participant-label", "sub-01", "sub-02",
                   "--skip_bids_validator") == cli.EXIT_OK
    assert placeholder.calls == 2
    assert len(list(out.rglob("*_desc-muscles_dseg.nii.gz"))) == 2
    assert list((out / "logs").glob("legseg_participant_*.log"))


def test_one_failing_participant_exits_1_and_others_are_processed(tiny_dataset, tmp_path, monkeypatch):
    class FailSecond(ThresholdPlaceholderSegmenter):
        def segment(self, volume, spacing, **kwargs):
            if self.calls == 1:
                self.calls += 1
                raise RuntimeError("boom")
            return super().segment(volume, spacing, **kwargs)

    monkeypatch.setattr(pipeline, "load_segmenter", lambda config, models_dir: FailSecond())
    monkeypatch.setattr(pipeline, "_participant_reports", lambda results, config: None)
    out = tmp_path / "out"
    assert run_cli(tiny_dataset, out, "participant", "--skip_bids_validator") == cli.EXIT_FAILED
    written = sorted(p.name for p in out.rglob("*_dseg.nii.gz"))
    assert written == ["sub-01_acq-outphase_desc-muscles_dseg.nii.gz"]
    assert not list(out.rglob("sub-02*"))


def test_sigterm_stops_cleanly_with_143(tiny_dataset, tmp_path, monkeypatch):
    import signal

    class TerminatedDuringSecond(ThresholdPlaceholderSegmenter):
        def segment(self, volume, spacing, **kwargs):
            if self.calls == 1:
                os.kill(os.getpid(), signal.SIGTERM)   # e.g. the SLURM time limit
            return super().segment(volume, spacing, **kwargs)

    monkeypatch.setattr(pipeline, "load_segmenter",
                        lambda config, models_dir: TerminatedDuringSecond())
    monkeypatch.setattr(pipeline, "_participant_reports", lambda results, config: None)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "out"
    assert run_cli(tiny_dataset, out, "participant", "--skip_bids_validator") == cli.EXIT_TERMINATED
    assert signal.getsignal(signal.SIGTERM) is before
    written = sorted(p.name for p in out.rglob("*_dseg.nii.gz"))
    assert written == ["sub-01_acq-outphase_desc-muscles_dseg.nii.gz"]
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_all_failing_leaves_no_partial_files(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "load_segmenter", lambda config, models_dir: FailingSegmenter())
    out = tmp_path / "out"
    assert run_cli(tiny_dataset, out, "participant", "--skip_bids_validator") == cli.EXIT_FAILED
    assert not list(out.rglob("sub-*/**/*.*"))
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_invalid_dataset_exits_16(tmp_path, placeholder):
    if pipeline.find_validator() is None:
        pytest.skip("no BIDS validator installed (pip install bids-validator-deno)")
    root = make_dataset(tmp_path / "bids", {"sub-01/anat/sub-01_acq-outphase_T1w.nii.gz": None})
    (root / "dataset_description.json").unlink()
    assert run_cli(root, tmp_path / "out", "participant") == cli.EXIT_INVALID_DATASET
    assert placeholder.calls == 0


def test_valid_dataset_passes_the_validator(tiny_dataset, tmp_path, placeholder):
    if pipeline.find_validator() is None:
        pytest.skip("no BIDS validator installed (pip install bids-validator-deno)")
    assert run_cli(tiny_dataset, tmp_path / "out", "participant", "--participant_label", "01") == cli.EXIT_OK


def test_models_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("LEGSEG_MODELS_DIR", raising=False)
    assert resolve_models_dir(None) == REPO_ROOT / "models"
    monkeypatch.setenv("LEGSEG_MODELS_DIR", str(tmp_path))
    assert resolve_models_dir(None) == tmp_path
    assert resolve_models_dir(tmp_path / "x") == tmp_path / "x"


def test_parse_args_builds_the_run_config(tiny_dataset, tmp_path):
    config = cli.parse_args([
        str(tiny_dataset), str(tmp_path / "o"), "participant", "--participant_label", "sub-01", "01",
        "--session_label", "ses-a", "--region", "upper", "--device", "cpu", "--mem-gb", "2",
        "--nprocs", "2", "--merge", "qmritools", "--overlap", "0.25", "--ff-erosion", "0", "-vv",
    ])
    assert config.participant_labels == ("01",)
    assert config.session_labels == ("a",)
    assert config.inference.region == "upper" and config.inference.mem_gb == 2.0
    assert config.inference.merge == "qmritools" and config.inference.overlap == 0.25
    assert config.verbosity == 2 and config.ff_erosion == 0
    assert json.loads(config.to_json())["analysis_level"] == "participant"
    assert config.inference.precision == "float32"


def test_precision_option_reaches_the_inference_config(tiny_dataset, tmp_path):
    args = [str(tiny_dataset), str(tmp_path / "o"), "participant"]
    assert cli.parse_args([*args, "--precision", "bfloat16"]).inference.precision == "bfloat16"
    with pytest.raises(SystemExit):
        cli.parse_args([*args, "--precision", "float16"])


def test_ff_erosion_default_lives_in_the_run_config(tiny_dataset, tmp_path):
    """--ff-erosion's default is RunConfig's (one home); a negative value is refused."""
    from legseg_tf.config import RunConfig

    default = {f.name: f.default for f in dataclasses.fields(RunConfig)}["ff_erosion"]
    assert cli.build_parser().get_default("ff_erosion") == default
    config = cli.parse_args([str(tiny_dataset), str(tmp_path / "o"), "participant"])
    assert config.ff_erosion == default
    assert cli.parse_args([str(tiny_dataset), str(tmp_path / "o"), "participant",
                           "--ff-erosion", "3"]).ff_erosion == 3
    with pytest.raises(ValueError, match="ff_erosion"):
        RunConfig(tmp_path, tmp_path / "o", "participant", ff_erosion=-1)


def test_console_script_module_entry(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-m", "legseg_tf", "--version"], capture_output=True, text=True,
                          env=env, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("legseg ")


def test_caches_leave_an_unwritable_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("KERAS_HOME", raising=False)
    monkeypatch.delenv("MPLCONFIGDIR", raising=False)
    cli._cache_dirs_off_an_unwritable_home(tmp_path / "work")     # writable HOME: unchanged
    assert "KERAS_HOME" not in os.environ
    monkeypatch.setattr(cli.os, "access", lambda path, mode: False)   # as for a read-only HOME
    monkeypatch.setenv("MPLCONFIGDIR", "/elsewhere")
    cli._cache_dirs_off_an_unwritable_home(tmp_path / "work")
    assert os.environ["KERAS_HOME"] == str(tmp_path / "work" / ".keras")
    assert os.environ["MPLCONFIGDIR"] == "/elsewhere"                  # set by the user: kept
    monkeypatch.delenv("KERAS_HOME")
    cli._cache_dirs_off_an_unwritable_home(None)
    assert os.environ["KERAS_HOME"].endswith(f"legseg-cache-{os.getuid()}/.keras")


def test_fmriprep_spellings_are_aliases_and_abbreviations_are_refused(tiny_dataset, tmp_path):
    """fMRIPrep/MRIQC users' spellings parse to the same options; an abbreviated option is a
    usage error (argparse's prefix matching would let "--mem" mean "--mem-gb")."""
    base = [str(tiny_dataset), str(tmp_path / "out"), "participant"]
    parser = cli.build_parser()
    for words, dest, value in ((["--skip-bids-validation"], "skip_bids_validator", True),
                               (["--n-cpus", "3"], "nprocs", 3), (["--n_procs", "3"], "nprocs", 3),
                               (["--omp-nthreads", "2"], "nprocs", 2)):
        assert getattr(parser.parse_args(base + words), dest) == value, words
    assert run_cli(*base[:2], "participant", "--mem-g", "2") == cli.EXIT_USAGE
    assert run_cli(*base[:2], "participant", "--skip-bids") == cli.EXIT_USAGE


@pytest.mark.parametrize("words, gb", [
    (["--mem", "16000"], 16.0), (["--mem", "16G"], 16.0), (["--mem", "16GB"], 16.0),
    (["--mem", "16000M"], 16.0), (["--mem", "16000mb"], 16.0), (["--mem", "1.5t"], 1500.0),
    (["--mem", "2GiB"], 2**31 / 1e9), (["--mem-mb", "2500"], 2.5), (["--mem_mb", "8G"], 8.0),
    (["--mem-gb", "3"], 3.0), (["--mem_gb", "0.5"], 0.5), ([], None),
])
def test_memory_spellings_set_the_same_budget(tiny_dataset, tmp_path, words, gb):
    """fMRIPrep's --mem (MB, or with a unit) and --mem-mb size the same budget as --mem-gb."""
    config = cli.parse_args([str(tiny_dataset), str(tmp_path / "o"), "participant", *words])
    assert config.inference.mem_gb == pytest.approx(gb) if gb else config.inference.mem_gb is None


@pytest.mark.parametrize("words", [
    ["--mem", "16"],                       # 16 MB: meant as GB, surely; refused with a hint
    ["--mem", "16X"], ["--mem", "G"], ["--mem", "0G"], ["--mem-mb", "-5000"],
    ["--mem", "16000", "--mem-gb", "16"],  # two spellings of one budget
    ["--mem", "16000", "--mem-mb", "16000"],
    ["--mem_mb", "16000", "--mem_gb", "16"],
])
def test_memory_spelling_errors_exit_64(tiny_dataset, tmp_path, capsys, words):
    assert run_cli(tiny_dataset, tmp_path / "out", "participant", *words) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    if words == ["--mem", "16"]:
        assert "16G" in err
    if len(words) == 4:
        assert "not allowed with argument" in err


def test_notrack_is_accepted_and_changes_nothing(tiny_dataset, tmp_path):
    base = [str(tiny_dataset), str(tmp_path / "o"), "participant"]
    with_flag = cli.parse_args([*base, "--notrack"])
    without = cli.parse_args(base)
    assert with_flag == dataclasses.replace(without, command_line=(*base, "--notrack"))
    assert "never sends" in cli.build_parser().format_help().replace("\n", " ").replace("  ", " ")


def test_bids_database_dir_is_created_and_reused(tiny_dataset, tmp_path, placeholder, caplog):
    """--bids-database-dir keeps the pybids index between runs (a job array indexes once);
    a changed dataset gets a new index, and the folder may lie inside BIDS_DIR."""
    import logging

    from legseg_tf import bids_inputs
    from legseg_tf.config import RunConfig

    assert RunConfig(tmp_path, tmp_path / "o", "group").bids_database_dir is None
    config = cli.parse_args([str(tiny_dataset), str(tmp_path / "o"), "participant",
                             "--bids_database_dir", "rel/db"])
    assert config.bids_database_dir == (cli.Path("rel/db")).absolute()
    for database in (tmp_path / "new" / "db", tiny_dataset / "bids_db"):
        out = tmp_path / f"out-{database.parent.name}"
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="legseg_tf.bids_inputs"):
            for run in range(2):
                assert run_cli(tiny_dataset, out, "participant", "--skip_bids_validator",
                               "--bids-database-dir", database, "--overwrite") == cli.EXIT_OK
        saved = [p for p in database.iterdir()]
        assert len(saved) == 1 and (saved[0] / bids_inputs.INDEX_FILE).is_file(), saved
        messages = [r.getMessage() for r in caplog.records if "BIDS index" in r.getMessage()]
        assert messages == [f"saved the BIDS index as {saved[0]}", f"reusing the BIDS index {saved[0]}"]
    assert placeholder.calls == 8
    # a new participant, or an edited sidecar: indexed again, never a stale index
    make_dataset(tiny_dataset, {"sub-03/anat/sub-03_acq-outphase_T1w.nii.gz": {"EchoTime": 0.00345}})
    images = bids_inputs.find_inputs(tiny_dataset, ("03",), database_dir=tmp_path / "new" / "db")
    assert [im.subject for im in images] == ["03"]
    sidecar = tiny_dataset / "sub-03/anat/sub-03_acq-outphase_T1w.json"
    sidecar.write_text(json.dumps({"EchoTime": 0.0046}))
    os.utime(sidecar, ns=(1, 1))
    images = bids_inputs.find_inputs(tiny_dataset, ("03",), database_dir=tmp_path / "new" / "db")
    assert images[0].echo_time == 0.0046
    assert len(list((tmp_path / "new" / "db").iterdir())) == 3


def test_bids_index_saved_by_another_task_first_is_kept(tiny_dataset, tmp_path, monkeypatch):
    """Two tasks that index at once: the first rename wins; the loser keeps no copy."""
    from legseg_tf import bids_inputs

    database = tmp_path / "db"
    first = bids_inputs.find_inputs(tiny_dataset, database_dir=database)
    (index,) = database.iterdir()
    monkeypatch.setattr(bids_inputs, "INDEX_FILE", "not-there")  # as if this task came too late
    assert bids_inputs.find_inputs(tiny_dataset, database_dir=database) == first
    assert list(database.iterdir()) == [index]


def test_unwritable_bids_database_dir(tiny_dataset, tmp_path, placeholder):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert run_cli(tiny_dataset, tmp_path / "out", "participant", "--skip_bids_validator",
                   "--bids-database-dir", blocker / "db") == cli.EXIT_OUTPUT_DIR


def test_missing_tensorflow_is_one_line_with_exit_3(tiny_dataset, tmp_path):
    """Without TensorFlow (an extra), the participant level ends with exit 3 and one line
    that names the extra to install, not with an ImportError's traceback. (The installed
    models serve the region: a manifest that does not is reported first, without TensorFlow.)"""
    code = (
        "import sys\n"
        "sys.modules['tensorflow'] = None  # import tensorflow -> ModuleNotFoundError\n"
        "from legseg_tf.cli import main\n"
        f"sys.exit(main([{str(tiny_dataset)!r}, {str(tmp_path / 'out')!r}, 'participant',"
        f" '--skip_bids_validator', '--models', {str(REPO_ROOT / 'models')!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == cli.EXIT_NO_MODEL == 3, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, done.stderr
    assert "TensorFlow is not installed" in errors[0]
    assert 'pip install "legseg[cpu]"' in errors[0] and '"legseg[gpu]"' in errors[0]
    assert not list((tmp_path / "out").rglob("*_dseg.nii.gz"))


def test_tensorflow_that_cannot_be_imported_is_one_line(monkeypatch):
    from legseg_tf import device

    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(device.MissingTensorFlowError, match=r"TensorFlow is not installed.*legseg\[cpu\]"):
        device.configure_device("cpu")
    monkeypatch.delitem(sys.modules, "tensorflow")
    monkeypatch.setattr("builtins.__import__", _import_raising_for("tensorflow"))
    with pytest.raises(device.MissingTensorFlowError) as caught:
        device.import_tensorflow()
    assert str(caught.value).startswith("TensorFlow cannot be imported (libcudnn.so.9: cannot open")
    assert "\n" not in str(caught.value) and 'pip install "legseg[cpu]"' in str(caught.value)
    assert isinstance(caught.value, pipeline.NoModelError)   # so the pipeline exits with 3


def _import_raising_for(name):
    import builtins

    real = builtins.__import__

    def fake(module, *args, **kwargs):
        if module.split(".")[0] == name:
            raise ImportError("libcudnn.so.9: cannot open shared object file\nmore details")
        return real(module, *args, **kwargs)
    return fake


def test_version_is_legseg_own_never_slash_version(tmp_path, monkeypatch):
    """The version comes from legseg's own source tree, else its installed metadata, else
    "unknown"; never from /version (another application's file in a container) nor from a
    stray version file next to an installed package."""
    import importlib.metadata

    import legseg_tf

    assert legseg_tf.__version__ == (REPO_ROOT / "version").read_text().strip()
    looked_at = []
    for method in ("read_text", "is_file", "exists", "open"):
        def spy(self, *args, _real=getattr(cli.Path, method), **kwargs):
            looked_at.append(str(self))
            return _real(self, *args, **kwargs)
        monkeypatch.setattr(cli.Path, method, spy)
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "version").write_text("9.8.7\n")
    (tree / "pyproject.toml").write_text('[project]\nname = "legseg"\ndynamic = ["version"]\n')
    assert legseg_tf._read_version(tree) == "9.8.7"                 # a checkout / the image
    site = tmp_path / "site-packages"
    site.mkdir()
    (site / "version").write_text("6.6.6\n")                         # not legseg's: ignored
    monkeypatch.setattr(importlib.metadata, "version", lambda name: {"legseg": "1.2.3"}[name])
    assert legseg_tf._read_version(site) == "1.2.3"                  # installed from a wheel

    def not_found(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_found)
    assert legseg_tf._read_version(tmp_path / "nothing") == "unknown"
    assert not [p for p in looked_at if p == "/version"]
    assert str(site / "version") not in looked_at or str(site / "pyproject.toml") in looked_at


def test_help_names_the_regions_the_installed_models_cover(tmp_path, monkeypatch, capsys):
    from legseg_tf.cli import build_parser

    monkeypatch.delenv("LEGSEG_MODELS_DIR", raising=False)
    text = " ".join(build_parser().format_help().split())
    assert "the installed models cover legs, upper, lower" in text
    monkeypatch.setenv("LEGSEG_MODELS_DIR", str(tmp_path))
    text = " ".join(build_parser().format_help().split())
    assert "no usable models in" in text and "installed models cover" not in text
