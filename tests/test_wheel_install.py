"""A wheel of legseg carries the bundled models and runs the demo outside the source tree.

The wheel is built without network (``--no-build-isolation``: the running environment's
setuptools) from a copy of the project files, installed with ``--no-deps`` into a fresh venv
outside the source tree, and that venv reuses the running environment's packages (TensorFlow,
nibabel, ...) through a ``.pth`` line placed *after* its own site-packages, so the installed
``legseg_tf`` wins over the editable development install.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from legseg_tf import model_store

REPO_ROOT = Path(__file__).resolve().parent.parent
#: What a wheel build needs from the repository (copied so that no build/ or egg-info
#: lands in the checkout, and stale build/ files never reach the wheel).
PROJECT_FILES = ("pyproject.toml", "setup.py", "MANIFEST.in", "version", "README.md", "LICENSE")
PROJECT_DIRS = ("legseg_tf", "models")


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited {result.returncode}\n"
        f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}")
    return result


def _clean_env(home: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if key not in ("LEGSEG_MODELS_DIR", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV",
                          "COVERAGE_PROCESS_START", "PIP_REQUIRE_VIRTUALENV")}
    env.update(PYTHONNOUSERSITE="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               HOME=str(home), MPLCONFIGDIR=str(home / "mpl"), TF_CPP_MIN_LOG_LEVEL="2",
               CUDA_VISIBLE_DEVICES="")
    return env


def _venv_python(root: Path) -> Path:
    return root / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def test_bundled_models_dir_is_used_outside_a_source_tree(monkeypatch, tmp_path):
    monkeypatch.delenv("LEGSEG_MODELS_DIR", raising=False)
    import legseg_tf

    assert model_store.resolve_models_dir(None) == REPO_ROOT / "models"
    monkeypatch.setattr(legseg_tf, "SOURCE_ROOT", tmp_path)
    assert model_store.resolve_models_dir(None) == model_store.bundled_models_dir()
    assert model_store.bundled_models_dir().parent == Path(legseg_tf.__file__).resolve().parent
    monkeypatch.setenv("LEGSEG_MODELS_DIR", str(tmp_path / "m"))
    assert model_store.resolve_models_dir(None) == tmp_path / "m"


@pytest.mark.slow
def test_wheel_carries_the_models_and_runs_the_demo_outside_the_tree(tmp_path):
    env = _clean_env(tmp_path / "home")
    (tmp_path / "home").mkdir()

    # 1. Build the wheel from a copy of the project (no network: no build isolation).
    src = tmp_path / "src"
    src.mkdir()
    for name in PROJECT_FILES:
        shutil.copy2(REPO_ROOT / name, src / name)
    for name in PROJECT_DIRS:
        shutil.copytree(REPO_ROOT / name, src / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--no-index", "-q", "-w", str(dist), str(src)], cwd=tmp_path, env=env, timeout=300)
    wheels = sorted(dist.glob("legseg-*.whl"))
    assert len(wheels) == 1, wheels

    import zipfile

    manifest = json.loads((REPO_ROOT / "models" / "manifest.json").read_text(encoding="utf-8"))
    with zipfile.ZipFile(wheels[0]) as archive:
        names = set(archive.namelist())
    bundled = "legseg_tf/_bundled_models/"
    assert bundled + "manifest.json" in names
    for entry in manifest["models"]:
        assert bundled + entry["config"] in names
        assert bundled + entry["weights"] in names
    assert any(name.startswith(bundled + "cards/") and name.endswith(".md") for name in names)

    # 2. A fresh venv outside the source tree; install the wheel while it sees nothing else,
    #    then let it reuse the running environment's packages (after its own site-packages).
    root = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False, symlinks=os.name != "nt").create(root)
    python = _venv_python(root)
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
          "--no-index", "--force-reinstall", "-q", str(wheels[0])], cwd=tmp_path, env=env,
         timeout=300)
    new_site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         cwd=tmp_path, env=env, timeout=60).stdout.strip())
    ours = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    lines = [path for path in dict.fromkeys(ours) if Path(path).resolve() != new_site.resolve()]
    (new_site / "zz_legseg_test_parent_env.pth").write_text("\n".join(lines) + "\n", encoding="utf-8")

    # 3. Installed legseg, not the checkout's, and it resolves its bundled models.
    where = _run([str(python), "-c",
                  "import legseg_tf, legseg_tf.model_store as m; "
                  "print(legseg_tf.__file__); print(m.resolve_models_dir())"],
                 cwd=tmp_path, env=env, timeout=60).stdout.split("\n")
    package_file, models_dir = Path(where[0]).resolve(), Path(where[1])
    assert package_file.is_relative_to(root.resolve()), package_file
    assert not package_file.is_relative_to(REPO_ROOT)
    assert models_dir.resolve() == package_file.parent / "_bundled_models"

    # 4. The demo dataset and the participant level from a working folder outside the tree.
    work = tmp_path / "work"
    work.mkdir()
    _run([str(python), "-m", "legseg_tf.demo", "bids", "--subjects", "1"], cwd=work, env=env,
         timeout=120)
    scripts = root / ("Scripts" if os.name == "nt" else "bin")
    legseg = scripts / ("legseg.exe" if os.name == "nt" else "legseg")
    assert legseg.exists()
    _run([str(legseg), "bids", "out", "participant", "--participant_label", "01"], cwd=work,
         env=env, timeout=600)
    dsegs = sorted((work / "out").rglob("*_dseg.nii.gz"))
    assert dsegs, sorted(p.relative_to(work) for p in (work / "out").rglob("*"))
    sidecar = json.loads(Path(str(dsegs[0]).replace(".nii.gz", ".json")).read_text(encoding="utf-8"))
    by_id = {entry["id"]: entry for entry in manifest["models"]}
    used = [entry for entry in sidecar.get("Models") or [] if isinstance(entry, dict)]
    assert used and all(entry.get("id") in by_id for entry in used), sidecar.get("Models")
    assert any(by_id[entry["id"]]["role"] != "classifier" for entry in used)
    for entry in used:
        if "sha256" in entry:
            assert entry["sha256"] == by_id[entry["id"]]["sha256"]
