"""The CI entry point (.ci/run) leaves no environment behind, pass or fail.

CI machines share their disk between runs: a fresh 2.5 GB environment left after every run
filled one and a later container build failed with "No space left on device". .ci/run is run
here in a copy of the layout it expects (checkout + ../shared), with a stand-in for .ci/test
that creates the environment's Python and exits with a chosen status, and with no container
stage; the temporary folder is private to the test so the leftovers can be counted.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

STAND_IN_TEST = """#!/usr/bin/env bash
set -euo pipefail
mkdir -p "$LEGSEG_VENV/bin"
printf '#!/usr/bin/env bash\\nexit 0\\n' >"$LEGSEG_VENV/bin/python"
chmod +x "$LEGSEG_VENV/bin/python"
head -c 4096 /dev/zero >"$LEGSEG_VENV/payload"
echo "$LEGSEG_VENV" >"$CI_RUN_RECORD"
exit "$CI_RUN_TEST_STATUS"
"""


def _layout(tmp_path: Path) -> Path:
    checkout = tmp_path / "checkout"
    (checkout / ".ci").mkdir(parents=True)
    shutil.copy2(REPO / ".ci" / "run", checkout / ".ci" / "run")
    (checkout / ".ci" / "test").write_text(STAND_IN_TEST)
    for folder in ("data", "wlnet-samples"):
        (tmp_path / "shared" / folder).mkdir(parents=True)
    # A chromium on PATH so that .ci/run does not try to install one.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "chromium").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "chromium").chmod(0o755)
    (tmp_path / "tmp").mkdir()
    return checkout


def _run(tmp_path: Path, status: int, keep: bool = False) -> tuple[subprocess.CompletedProcess, Path]:
    checkout = _layout(tmp_path)
    record = tmp_path / "venv-path"
    environment = {**os.environ, "TMPDIR": str(tmp_path / "tmp"), "CI_RUN_RECORD": str(record),
                   "CI_RUN_TEST_STATUS": str(status),
                   "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    environment.pop("LEGSEG_VENV", None)
    environment.pop("LEGSEG_KEEP_VENV", None)
    if keep:
        environment["LEGSEG_KEEP_VENV"] = "1"
    result = subprocess.run(["bash", str(checkout / ".ci" / "run")], cwd=checkout, env=environment,
                            capture_output=True, text=True, timeout=120)
    return result, Path(record.read_text().strip())


@pytest.mark.parametrize("status", [0, 1])
def test_ci_run_removes_its_environment(tmp_path, status):
    result, venv = _run(tmp_path, status)
    assert result.returncode == status, result.stderr
    assert venv.parent.parent == tmp_path / "tmp"       # the environment lived in TMPDIR ...
    assert not venv.parent.exists()                      # ... and went with the run
    assert list((tmp_path / "tmp").iterdir()) == []
    assert "MB free in" in result.stdout


def test_ci_run_keeps_its_environment_when_asked(tmp_path):
    result, venv = _run(tmp_path, 0, keep=True)
    assert result.returncode == 0, result.stderr
    assert (venv / "payload").is_file()
