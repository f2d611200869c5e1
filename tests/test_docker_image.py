"""The built Docker image, run for real: read-only root, arbitrary non-root uid, no network.

Needs an image and an engine: ``LEGSEG_TEST_IMAGE=legseg:TAG`` (``bash .ci/container_test.sh``
builds one and runs this file). Without them every test skips with the reason;
``LEGSEG_DOCKER_UNAVAILABLE`` carries the reason the container stage found. ``DOCKER`` names the
client (default ``docker``).

The participant runs use tiny untrained networks mounted at /models, except one run with the
models baked into the image: it must succeed once models/manifest.json lists the upper- and
lower-leg networks and, until then, stop with exit code 3 and its one-line error.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VERSION = (REPO / "version").read_text(encoding="utf-8").strip()
IMAGE = os.environ.get("LEGSEG_TEST_IMAGE", "")
DOCKER = os.environ.get("DOCKER", "docker")
UID = 12345
#: The container conditions of every run: nothing writable but /out and a /tmp tmpfs.
LOCKED = ["--read-only", "--tmpfs", "/tmp:rw,exec,size=2g", "--user", f"{UID}:{UID}",
          "--network", "none"]

pytestmark = [pytest.mark.container, pytest.mark.slow]


def _unavailable() -> str | None:
    if os.environ.get("LEGSEG_DOCKER_UNAVAILABLE"):
        return f"no Docker engine for the image tests: {os.environ['LEGSEG_DOCKER_UNAVAILABLE']}"
    if not IMAGE:
        return "LEGSEG_TEST_IMAGE is not set (bash .ci/container_test.sh builds an image and sets it)"
    if not shutil.which(DOCKER):
        return f"docker client {DOCKER!r} not found"
    try:
        probe = subprocess.run([DOCKER, "image", "inspect", IMAGE], capture_output=True, text=True,
                               timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"docker engine not reachable: {error}"
    if probe.returncode != 0:
        return f"image {IMAGE} not available: {probe.stderr.strip()[:300]}"
    return None


@pytest.fixture(scope="module")
def image() -> dict:
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    inspect = subprocess.run([DOCKER, "image", "inspect", IMAGE], capture_output=True, text=True,
                             check=True)
    return json.loads(inspect.stdout)[0]


def docker(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def space(image):
    """Demo BIDS dataset, tiny models and an output folder the container's uid can write."""
    from tests.helpers import install_tiny_models

    root = Path(tempfile.mkdtemp(prefix="legseg-image-test-"))
    root.chmod(0o755)
    subprocess.run([sys.executable, "-m", "legseg_tf.demo", str(root / "bids"), "--subjects", "1"],
                   check=True, capture_output=True)
    install_tiny_models(root / "models")
    for path in [*(root / "bids").rglob("*"), *(root / "models").rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    yield root
    # outputs belong to the container's uid: remove them from inside a container
    docker("run", "--rm", "--network", "none", "--user", "0", "--entrypoint", "rm",
           "-v", f"{root}:/space", IMAGE, "-rf", "/space/out", "/space/out-baked", "/space/out-paclet", timeout=300)
    shutil.rmtree(root, ignore_errors=True)


def _out(space: Path, name: str) -> Path:
    out = space / name
    out.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        os.chown(out, UID, UID)
    else:
        out.chmod(0o777)
    return out


def test_version_prints_the_version_file(image):
    run = docker("run", "--rm", *LOCKED, IMAGE, "--version", timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"legseg {VERSION}"
    assert docker("run", "--rm", "--network", "none", "--entrypoint", "cat", IMAGE,
                  "/opt/legseg/version").stdout.strip() == VERSION


def test_image_metadata(image):
    config = image["Config"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == VERSION
    assert labels["org.opencontainers.image.title"] == "legseg"
    assert labels["org.opencontainers.image.licenses"] == "BSD-3-Clause"
    for key in ("description", "source"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    assert config["Entrypoint"] == ["/opt/venv/bin/python", "/opt/legseg/run.py"]
    # without arguments the image prints its help
    bare = docker("run", "--rm", *LOCKED, IMAGE, timeout=300)
    assert bare.returncode == 0 and "participant" in bare.stdout, bare.stderr[-2000:]
    assert config["User"] and config["User"].split(":")[0] not in ("root", "0")
    whoami = docker("run", "--rm", "--network", "none", "--entrypoint", "id", IMAGE, "-u")
    assert whoami.stdout.strip() not in ("", "0")
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["LEGSEG_MODELS_DIR"] == "/opt/legseg/models" and env["HOME"] == "/tmp"
    assert not any(key.startswith("PIP_CERT") or key == "PIP_INDEX_URL" for key in env)


def test_baked_models_verify_inside_the_image(image):
    run = docker("run", "--rm", *LOCKED, "--entrypoint", "python", IMAGE,
                 "/opt/legseg/container/verify_models.py", "/opt/legseg/models")
    assert run.returncode == 0, run.stderr
    assert "model(s) verified" in run.stdout


def test_missing_bids_dir_exit_code(image):
    run = docker("run", "--rm", *LOCKED, IMAGE, "/nonexistent", "/tmp/out", "participant")
    assert run.returncode == 66, run.stderr


def test_participant_and_group_locked_down(space):
    out = _out(space, "out")
    mounts = ["-v", f"{space / 'bids'}:/bids:ro", "-v", f"{space / 'models'}:/models:ro",
              "-v", f"{out}:/out"]
    participant = docker("run", "--rm", *LOCKED, *mounts, IMAGE, "/bids", "/out", "participant",
                         "--models", "/models", "--region", "upper", "--nprocs", "2")
    assert participant.returncode == 0, participant.stderr[-4000:]
    assert "validating /bids with bids-validator" in participant.stderr  # offline validation ran
    # the untrained tiny networks get a low_confidence fail flag: keep the image in the tables
    group = docker("run", "--rm", *LOCKED, *mounts, IMAGE, "/bids", "/out", "group",
                   "--include-failed-qc")
    assert group.returncode == 0, group.stderr[-4000:]

    dseg = sorted(out.glob("sub-*/anat/*_desc-muscles_dseg.nii.gz"))
    assert [p.name for p in dseg] == ["sub-01_acq-outphase_desc-muscles_dseg.nii.gz"]
    for name in ("dseg.tsv", "sub-01.html", "group_muscles.tsv", "group_muscles_wide.tsv",
                 "group.html"):
        assert (out / name).is_file(), name
    generated = json.loads((out / "dataset_description.json").read_text())["GeneratedBy"][0]
    assert generated["Version"] == VERSION
    assert generated["Container"]["Type"] == "docker"
    # legseg:<version>-<variant>, or <registry>/<owner>/legseg:... for a released image
    assert generated["Container"]["Tag"].split("/")[-1].startswith(f"legseg:{VERSION}")
    sidecar = json.loads(dseg[0].with_name(dseg[0].name.replace(".nii.gz", ".json")).read_text())
    assert sidecar["Sources"]
    owners = {p.stat().st_uid for p in [out, *out.rglob("*")]}
    assert owners == {UID}, f"outputs owned by {owners}, not by the container's uid {UID}"


def test_run_with_the_baked_models(space):
    """Exit 0 once the shipped manifest has the leg networks; until then exit 3, one error line.

    Run without --read-only and without --rm, so that `docker diff` shows every path the app
    wrote into the container's own file system: only /tmp (its work dir and caches) may appear.
    """
    manifest = json.loads((REPO / "models/manifest.json").read_text())
    roles = {entry["role"] for entry in manifest["models"]}
    out = _out(space, "out-baked")
    name = f"legseg-test-{os.getpid()}"
    run = docker("run", "--name", name, "--user", f"{UID}:{UID}", "--network", "none",
                 "-v", f"{space / 'bids'}:/bids:ro", "-v", f"{out}:/out", IMAGE,
                 "/bids", "/out", "participant", "--skip_bids_validator", "--nprocs", "2")
    try:
        changed = docker("diff", name).stdout.split("\n")
    finally:
        docker("rm", "-f", name)
    if {"upper_leg", "lower_leg", "classifier"} <= roles:
        assert run.returncode == 0, run.stderr[-4000:]
        assert list(out.glob("sub-01/anat/*_desc-muscles_dseg.nii.gz"))
    else:
        assert run.returncode == 3, run.stderr[-4000:]
        errors = [line for line in run.stderr.splitlines() if " ERROR " in line]
        assert len(errors) == 1, run.stderr[-4000:]
        assert "needs model role(s)" in errors[0] and "/opt/legseg/models/manifest.json" in errors[0]
    paths = [line.split(" ", 1)[1] for line in changed if line.strip()]
    mountpoints = {"/bids", "/out"}  # made by the engine for the -v mounts
    outside = [p for p in paths if p not in mountpoints | {"/tmp"} and not p.startswith("/tmp/")]
    assert not outside, f"the app wrote into the image outside /tmp: {outside}"


def test_paclet_baked_at_build_time_segments(space):
    """An image built with a QMRITools release paclet in container/paclets/ (the container stage
    builds one with a fake paclet) segments with the converted networks only."""
    if os.environ.get("LEGSEG_TEST_PACLET_IMAGE") != "1":
        pytest.skip("not an image built with a paclet (LEGSEG_TEST_PACLET_IMAGE=1 marks one)")
    manifest = json.loads(docker("run", "--rm", "--network", "none", "--entrypoint", "cat", IMAGE,
                                 "/opt/legseg/models-qmritools/manifest.json").stdout)
    installed = {m["id"]: m for m in manifest["models"]}
    assert {m["role"] for m in installed.values()} == {"classifier", "upper_leg", "lower_leg",
                                                      "hip"}
    # the paclet was bind-mounted for the build: no copy of it in any layer of the image
    found = docker("run", "--rm", "--network", "none", "--user", "0", "--entrypoint", "find",
                   IMAGE, "/", "-xdev", "-name", "*.paclet")
    assert found.returncode == 0 and found.stdout.strip() == "", found.stdout[-2000:]
    assert all(m["provenance"]["source"] == "qmritools-wlnet" for m in installed.values())
    out = _out(space, "out-paclet")
    run = docker("run", "--rm", *LOCKED,
                 "-v", f"{space / 'bids'}:/bids:ro", "-v", f"{out}:/out", IMAGE,
                 "/bids", "/out", "participant", "--skip_bids_validator",
                 "--models", "/opt/legseg/models-qmritools", "--region", "legs-hip")
    assert run.returncode == 0, run.stderr[-4000:]
    sidecars = list(out.glob("sub-01/anat/*_desc-muscles_dseg.json"))
    assert sidecars, run.stderr[-4000:]
    text = sidecars[0].read_text()
    used = [model_id for model_id in installed if f'"{model_id}"' in text]
    assert "Body_Pos_Side" in used, text[:2000]
    assert all(installed[m]["sha256"] in text for m in used)
