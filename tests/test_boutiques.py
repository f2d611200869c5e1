"""The Boutiques descriptor (integrations/boutiques/legseg.json) against the command line it describes.

The sync tests read the descriptor as plain JSON and walk ``cli.build_parser()``, so adding,
renaming or changing a CLI option without updating the descriptor fails here. The validation
and command-line generation tests use the ``boutiques`` package (the ``test`` extra) offline.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from legseg_tf import __version__, cli, demo
from tests.helpers import install_tiny_models

REPO_ROOT = Path(__file__).resolve().parents[1]
DESCRIPTOR = REPO_ROOT / "integrations" / "boutiques" / "legseg.json"
EXAMPLE_INVOCATION = REPO_ROOT / "integrations" / "boutiques" / "example_invocation.json"
NOT_DESCRIBED = {"help", "version"}  # informational actions, not part of a run


def _descriptor() -> dict:
    return json.loads(DESCRIPTOR.read_text(encoding="utf-8"))


def _inputs() -> dict[str, dict]:
    return {item["id"]: item for item in _descriptor()["inputs"]}


def _actions() -> dict[str, argparse.Action]:
    return {a.dest: a for a in cli.build_parser()._actions if a.dest not in NOT_DESCRIBED}


def _bosh():
    import boutiques

    return boutiques.bosh


def _accepts(action: argparse.Action, text: str) -> bool:
    try:
        action.type(text)
    except (ValueError, argparse.ArgumentTypeError):
        return False
    return True


def _number_kind(action: argparse.Action):
    """int or float for numeric argparse types (probed), None otherwise."""
    if action.type is None or action.type is Path:
        return None
    for probe in ("1", "0.5", "0"):
        if _accepts(action, probe):
            value = action.type(probe)
            return type(value) if isinstance(value, (int, float)) else None
    return None  # a parser that takes no number: a String input


def test_descriptor_is_valid_boutiques():
    bosh = _bosh()
    assert bosh(["validate", str(DESCRIPTOR)]) is None  # raises DescriptorValidationError otherwise


def test_validation_catches_a_broken_descriptor(tmp_path):
    bosh = _bosh()
    broken = _descriptor()
    broken["inputs"][0]["value-key"] = "[NOT_IN_COMMAND_LINE]"
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(Exception, match="NOT_IN_COMMAND_LINE"):
        bosh(["validate", str(path)])


def test_versions_match_the_version_file():
    descriptor = _descriptor()
    version = (REPO_ROOT / "version").read_text(encoding="utf-8").strip()
    assert descriptor["tool-version"] == version == __version__
    # the released image (.github/workflows/release.yml pushes it; tests/test_release.py)
    assert descriptor["container-image"] == {"type": "docker", "image": f"ghcr.io/legseg/legseg:{version}"}


def test_every_cli_option_is_described_and_nothing_else():
    actions, inputs = set(_actions()), set(_inputs())
    assert not actions - inputs, f"CLI options missing from {DESCRIPTOR.name}: {sorted(actions - inputs)}"
    assert not inputs - actions, f"descriptor inputs the CLI does not have: {sorted(inputs - actions)}"


@pytest.mark.parametrize("dest", sorted(_actions()))
def test_input_matches_its_cli_option(dest):
    action, item = _actions()[dest], _inputs()[dest]
    assert f"[{dest.upper()}]" == item["value-key"]
    assert item["value-key"] in _descriptor()["command-line"]
    if not action.option_strings:  # positional
        assert item["optional"] is False and "command-line-flag" not in item
    else:
        assert item["optional"] is True
        assert item["command-line-flag"] in action.option_strings
    if dest == "analysis_level":  # checked after parsing (exit 17), so argparse has no choices
        assert item["value-choices"] == list(cli.ANALYSIS_LEVELS)
    elif action.choices is not None:
        assert item["type"] == "String" and item["value-choices"] == list(action.choices)
    else:
        assert "value-choices" not in item
    # list-ness
    assert bool(item.get("list")) == (action.nargs == "+")
    if action.nargs == "+":
        assert item["min-list-entries"] == 1
    # types
    kind = _number_kind(action)
    if isinstance(action, (argparse._StoreTrueAction, argparse._CountAction)):
        assert item["type"] == "Flag"
    elif kind is not None:
        assert item["type"] == "Number" and bool(item.get("integer")) == (kind is int)
    elif action.type is Path:
        assert item["type"] in ("File", "String")
    else:
        assert item["type"] == "String"
    # defaults: "absent" on the CLI (None, [], False, 0 for a counter) means no default-value
    absent = action.default in (None, [], False) or isinstance(action, argparse._CountAction)
    if absent:
        assert "default-value" not in item, f"{dest}: the CLI has no default, the descriptor has one"
    else:
        assert item["default-value"] == action.default


@pytest.mark.parametrize("dest", sorted(d for d, a in _actions().items() if _number_kind(a)))
def test_number_ranges_match_the_argparse_types(dest):
    action, item = _actions()[dest], _inputs()[dest]
    step = 1 if item.get("integer") else 0.001
    if "minimum" in item:
        low = item["minimum"]
        assert _accepts(action, str(low)) is not item.get("exclusive-minimum", False)
        assert not _accepts(action, str(low - step))
    else:
        assert _accepts(action, "-1")
    if "maximum" in item:
        high = item["maximum"]
        assert _accepts(action, str(high)) is not item.get("exclusive-maximum", False)
        assert not _accepts(action, str(high + step))
    else:
        assert _accepts(action, "100000")
    if item.get("integer"):
        assert not _accepts(action, str(item.get("minimum", 0) + 1.5))


def test_readme_lists_every_cli_option():
    """README's option table names every option of the CLI (in one of its spellings)."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Usage", 1)[1].split("### Exit codes", 1)[0]
    named = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", table))
    missing = [a.option_strings for a in cli.build_parser()._actions
               if a.option_strings and a.dest != "help" and not named & set(a.option_strings)]
    assert not missing, f"options missing from README's option table: {missing}"


def test_error_codes_are_the_documented_exit_codes():
    described = {e["code"] for e in _descriptor()["error-codes"]}
    in_cli = {getattr(cli, n) for n in dir(cli) if n.startswith("EXIT_")} - {cli.EXIT_OK}
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Exit codes", 1)[1].split("\n#", 1)[0]
    documented = {int(c) for c in re.findall(r"^\| (\d+) \|", section, flags=re.M)} - {0}
    assert described == in_cli == documented


def _simulate(bosh, invocation: dict, tmp_path) -> list[str]:
    path = tmp_path / "invocation.json"
    path.write_text(json.dumps(invocation))
    bosh(["invocation", "-i", str(path), str(DESCRIPTOR)])  # raises when the invocation is invalid
    words = shlex.split(bosh(["exec", "simulate", "-i", str(path), str(DESCRIPTOR)]).shell_command)
    assert words[0] == "legseg"
    return words[1:]


def test_generated_command_line_parses_back_to_the_same_values(tmp_path):
    bosh = _bosh()
    invocation = {
        "bids_dir": str(tmp_path / "bids"), "output_dir": str(tmp_path / "out"),
        "analysis_level": "participant", "participant_label": ["01", "sub-02"],
        "session_label": ["pre"], "bids_filter_file": str(tmp_path / "filter.json"),
        "skip_bids_validator": True, "region": "legs-hip", "device": "cpu",
        "models": str(tmp_path / "models"), "merge": "qmritools", "precision": "bfloat16",
        "overlap": 0.25, "batch_size": 2,
        "save_probabilities": True, "ff_erosion": 0, "nprocs": 4, "mem_gb": 2.5,
        "work_dir": str(tmp_path / "work"), "overwrite": True, "verbose": True,
        "assume_orientation": "LPS", "include_failed_qc": True,
        "segmentation_resolution": "6x1.5x1.5", "notrack": True,
        "bids_database_dir": str(tmp_path / "bids_db"),
    }
    alternatives = {"mem", "mem_mb"}   # exclusive with mem_gb: tested on their own below
    assert set(invocation) | alternatives == set(_inputs())  # every input exercised
    args = cli.build_parser().parse_args(_simulate(bosh, invocation, tmp_path))
    for key, value in invocation.items():
        got = getattr(args, key)
        expected = Path(value) if isinstance(got, Path) else value
        if key == "verbose":
            expected = 1
        if key == "segmentation_resolution":
            expected = (6.0, 1.5, 1.5)
        assert got == expected, key


def test_exclusive_groups_match_the_cli(tmp_path):
    """The descriptor's mutually exclusive groups are argparse's, and each spelling of the
    memory budget gives the same value."""
    bosh = _bosh()
    parser = cli.build_parser()
    in_cli = [sorted(a.dest for a in group._group_actions) for group in parser._mutually_exclusive_groups]
    described = [sorted(g["members"]) for g in _descriptor().get("groups", []) if g.get("mutually-exclusive")]
    assert sorted(in_cli) == sorted(described)
    base = {"bids_dir": "b", "output_dir": "o", "analysis_level": "participant"}
    for key, value in (("mem", "2500"), ("mem", "2.5G"), ("mem_mb", "2500")):
        args = parser.parse_args(_simulate(bosh, {**base, key: value}, tmp_path))
        assert cli.memory_gb(getattr(args, key)) == 2.5
    with pytest.raises(Exception):
        _simulate(bosh, {**base, "mem": "2500", "mem_gb": 2.5}, tmp_path)


def test_defaults_fill_in_a_minimal_invocation(tmp_path):
    bosh = _bosh()
    words = _simulate(bosh, {"bids_dir": "b", "output_dir": "o", "analysis_level": "group"}, tmp_path)
    args, defaults = cli.build_parser().parse_args(words), cli.build_parser().parse_args(["b", "o", "group"])
    assert vars(args) == vars(defaults)


def test_invalid_choice_is_rejected_by_the_descriptor(tmp_path):
    bosh = _bosh()
    with pytest.raises(Exception):
        _simulate(bosh, {"bids_dir": "b", "output_dir": "o", "analysis_level": "site"}, tmp_path)


def test_example_invocation_is_valid(tmp_path):
    bosh = _bosh()
    words = _simulate(bosh, json.loads(EXAMPLE_INVOCATION.read_text()), tmp_path)
    args = cli.build_parser().parse_args(words)
    assert args.participant_label == ["01"] and args.analysis_level == "participant"


def test_launch_without_container_finds_the_described_outputs(tmp_path, monkeypatch):
    """``bosh exec launch --no-container`` with tiny networks: the output-files templates match."""
    bosh = _bosh()
    bin_dir = str(Path(sys.executable).parent)
    if shutil.which("legseg", path=bin_dir) is None:
        pytest.skip(f"the legseg console script is not installed next to {sys.executable}")
    monkeypatch.setenv("PATH", bin_dir + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.chdir(tmp_path)
    demo.write_demo(tmp_path / "bids", subjects=1)
    install_tiny_models(tmp_path / "models")
    found = {}
    for level in ("participant", "group"):
        invocation = {"bids_dir": str(tmp_path / "bids"), "output_dir": str(tmp_path / "out"),
                      "analysis_level": level, "region": "upper", "device": "cpu",
                      "models": str(tmp_path / "models"), "skip_bids_validator": True}
        if level == "group":   # the untrained tiny networks get a low_confidence fail flag
            invocation["include_failed_qc"] = True
        path = tmp_path / f"{level}.json"
        path.write_text(json.dumps(invocation))
        result = bosh(["exec", "launch", "--no-container", "--skip-data-collection", str(DESCRIPTOR), str(path)])
        assert result.exit_code == 0, result.stderr
        assert not result.missing_files
        found.update({f.boutiques_name: f.file_name for f in result.output_files})
    assert found["dseg"] == str(tmp_path / "out/sub-01/anat/sub-01_acq-outphase_desc-muscles_dseg.nii.gz")
    assert {"derivatives", "dataset_description", "label_table", "label_dictionary", "itksnap_labels",
            "slicer_colour_table", "fsleyes_lut", "readme", "morph_tables", "participant_reports",
            "group_table", "group_tables", "group_report", "logs"} <= set(found)
    # every file or folder the two levels wrote at the top of OUTPUT_DIR is a declared output
    templates = [item["path-template"].replace("[OUTPUT_DIR]", str(tmp_path / "out"))
                 for item in _descriptor()["output-files"]]
    written = sorted((tmp_path / "out").iterdir())
    assert {"dseg.json", "legseg_labels.ctbl", "legseg_labels.lut"} <= {p.name for p in written}
    undeclared = [p.name for p in written if p.name != "sub-01"
                  and not any(fnmatch.fnmatchcase(str(p), t) for t in templates)]
    assert not undeclared, f"outputs missing from the descriptor's output-files: {undeclared}"
