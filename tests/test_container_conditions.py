"""The BIDS App under container conditions, without a container engine.

The app runs from this environment as a separate process the way the images run it: a non-root
user (uid 12345 through ``setpriv`` when the tests run as root, else the current user), a
read-only BIDS_DIR and models folder, an unwritable HOME, a clean environment with the image's
cache variables pointing into the work dir, and no network use. Participant and group levels
on the demo dataset must succeed, and nothing may be written outside OUTPUT_DIR and the work
dir.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from legseg_tf import derivatives
from legseg_tf.pipeline import find_validator
from tests.helpers import install_tiny_models

REPO = Path(__file__).resolve().parents[1]
UID = 12345

pytestmark = pytest.mark.slow


def _tree(root: Path) -> dict[str, tuple]:
    """Every entry below root with its type, size, mode and modification time."""
    state = {}
    for path in [root, *sorted(root.rglob("*"))]:
        info = path.lstat()
        state[str(path.relative_to(root))] = (stat.S_IFMT(info.st_mode), info.st_size,
                                              stat.S_IMODE(info.st_mode), info.st_mtime_ns)
    return state


def _writes_by(uid: int, since: float, skip: list[Path]) -> list[str]:
    """Entries anywhere on this machine owned by uid and changed after `since`.

    Only folders that uid can write into (its own, world-writable or of its group) can hold
    such entries, so the walk descends into those alone; /proc and /sys are left out, and so
    are the `skip` trees.
    """
    found = []
    for dirpath, dirnames, filenames in os.walk("/", onerror=lambda error: None):
        here = Path(dirpath)
        keep = []
        for name in dirnames + filenames:
            path = here / name
            if path in skip or str(path) in ("/proc", "/sys"):
                continue
            try:
                info = path.lstat()
            except OSError:
                continue
            if info.st_uid == uid and info.st_ctime >= since:
                found.append(str(path))
            if name in dirnames and (info.st_uid == uid or info.st_mode & stat.S_IWOTH
                                     or (info.st_gid == uid and info.st_mode & stat.S_IWGRP)):
                keep.append(name)
        dirnames[:] = keep
    return found


def _read_only(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        path.chmod((mode | stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH | (
            stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH if path.is_dir() else 0))
            & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


@pytest.fixture
def sandbox():
    """A world-traversable folder (pytest's tmp_path is private to its owner)."""
    root = Path(tempfile.mkdtemp(prefix="legseg-container-conditions-"))
    root.chmod(0o755)
    yield root
    for path in [root, *root.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
    shutil.rmtree(root, ignore_errors=True)


def test_participant_and_group_as_non_root_with_read_only_inputs(sandbox):
    as_root = os.geteuid() == 0
    if as_root and not shutil.which("setpriv"):
        pytest.skip("running as root and setpriv (util-linux) is missing: cannot drop to a non-root uid")
    uid = UID if as_root else os.geteuid()

    bids, models, home = sandbox / "bids", sandbox / "models", sandbox / "home"
    out, work = sandbox / "out", sandbox / "work"
    subprocess.run([sys.executable, "-m", "legseg_tf.demo", str(bids), "--subjects", "1"],
                   check=True, capture_output=True)
    install_tiny_models(models)
    home.mkdir()
    for path in (bids, models, home):
        _read_only(path)
    home.chmod(0o555)
    for path in (out, work):
        path.mkdir()
        if as_root:
            os.chown(path, UID, UID)

    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": str(home),
        # the image's variables, with its /tmp (the default work dir) replaced by the work dir
        "TMPDIR": str(work),
        "KERAS_HOME": str(work / ".keras"),
        "MPLCONFIGDIR": str(work / ".matplotlib"),
        "XDG_CACHE_HOME": str(work / ".cache"),
        "XDG_CONFIG_HOME": str(work / ".config"),
        "DENO_DIR": str(work / ".deno"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "LEGSEG_DOCKER_TAG": "legseg:conditions-test",
    }
    prefix = ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups", "--"] if as_root else []
    # the code goes where the image has it: a read-only folder of its own (the checkout may lie
    # in a private folder that the uid cannot enter)
    code = sandbox / "app"
    code.mkdir()
    shutil.copy2(REPO / "run.py", code / "run.py")
    shutil.copy2(REPO / "version", code / "version")
    shutil.copytree(REPO / "legseg_tf", code / "legseg_tf",
                    ignore=shutil.ignore_patterns("__pycache__"))
    _read_only(code)
    reachable = subprocess.run([*prefix, sys.executable, "-c", "import numpy, nibabel"],
                               env=env, capture_output=True, text=True)
    if reachable.returncode != 0:
        pytest.skip(f"the Python environment {sys.prefix} cannot be used by uid {uid}: "
                    f"{reachable.stderr.strip().splitlines()[-1:]}")
    app = [*prefix, sys.executable, str(code / "run.py"), str(bids), str(out)]
    options = []
    validator = find_validator()
    probe = "import subprocess, sys\ntry:\n    subprocess.run(sys.argv[1:], check=True, capture_output=True)\n" \
            "except (OSError, subprocess.CalledProcessError):\n    sys.exit(1)"
    if validator is None or subprocess.run([*prefix, sys.executable, "-c", probe, validator, "--version"],
                                           env=env, capture_output=True).returncode != 0:
        # e.g. a virtual environment whose script interpreter lies in root's private HOME;
        # the image test runs the validator as a non-root user
        options.append("--skip_bids_validator")
    watched = {path: _tree(path) for path in (bids, models, home, code)}
    start = time.time() - 1

    participant = subprocess.run(
        [*app, "participant", "--models", str(models), "--region", "upper", "--device", "cpu",
         "--nprocs", "1", "-w", str(work), *options], env=env, capture_output=True, text=True, timeout=600)
    assert participant.returncode == 0, participant.stderr[-3000:]
    # the untrained tiny networks get a low_confidence fail flag: keep the image in the tables
    group = subprocess.run([*app, "group", "-w", str(work), "--include-failed-qc"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert group.returncode == 0, group.stderr[-3000:]

    dseg = sorted(out.glob("sub-*/anat/*_desc-muscles_dseg.nii.gz"))
    assert [p.name for p in dseg] == ["sub-01_acq-outphase_desc-muscles_dseg.nii.gz"]
    for name in ("dataset_description.json", "dseg.tsv", "sub-01.html", "group_muscles.tsv",
                 "group_muscles_wide.tsv", "group.html"):
        assert (out / name).is_file(), name
    description = json.loads((out / "dataset_description.json").read_text())
    # the image's variable counts only together with a container engine's marker file (this
    # test runs the app outside a container, where there is none, or inside a CI container)
    in_engine = any(os.path.lexists(Path("/") / marker) for marker in derivatives.DOCKER_MARKERS)
    assert description["GeneratedBy"][0].get("Container") == (
        {"Type": "docker", "Tag": "legseg:conditions-test"} if in_engine else None)
    assert all(p.stat().st_uid == uid for p in out.rglob("*")), "outputs not owned by the running user"

    for path, before in watched.items():
        assert _tree(path) == before, f"{path} changed during the run"
    if as_root:  # uid 12345 is ours alone: every file it owns must be in out/ or work/
        stray = _writes_by(UID, start, skip=[out, work])
        assert not stray, f"written outside OUTPUT_DIR and the work dir: {stray[:10]}"
