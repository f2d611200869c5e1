"""integrations/slurm/legseg_slurm.sh: SLURM array submission of the participant level plus the group level.

No SLURM or Apptainer is needed: the dry run prints the commands, and fake ``sbatch`` /
``apptainer`` executables on PATH record what a real submission or array task would run.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from legseg_tf import __version__, demo

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "integrations" / "slurm" / "legseg_slurm.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash not available")


def _run(*args, env: dict | None = None, path_prefix: Path | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    environment.update(env or {})
    if path_prefix is not None:
        environment["PATH"] = f"{path_prefix}{os.pathsep}{environment['PATH']}"
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          env=environment, timeout=60)


def _commands(stdout: str) -> list[list[str]]:
    return [shlex.split(line) for line in stdout.splitlines() if line and not line.startswith("#")]


def _folders(root: Path, relpaths: list[str], participants: list[str] | None = None) -> Path:
    """A dataset skeleton: folders with an empty image each, optionally a participants.tsv."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.10.0"}')
    for rel in relpaths:
        (root / rel).mkdir(parents=True)
        (root / rel / "image.nii.gz").write_bytes(b"")
    if participants is not None:
        (root / "participants.tsv").write_text("age\tparticipant_id\n" + "".join(f"30\t{p}\n" for p in participants))
    return root


def _container(bids, out, work, label, extra=(), sessions=(), cpus="4", mem_gb="8", nv=False):
    """The exact container command of one array task."""
    words = ["apptainer", "run", "--cleanenv", "--bind", f"{bids}:/bids:ro", "--bind", f"{out}:/out",
             "--bind", f"{work}:/work"]
    words += ["--nv"] if nv else []
    words += ["/images/legseg.sif", "/bids", "/out", "participant", "--participant-label", label]
    words += ["--session-label", *sessions] if sessions else []
    return words + ["--nprocs", cpus, "--mem-gb", mem_gb, "-w", "/work", *extra]


@pytest.fixture(scope="module")
def demo_bids(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cluster") / "bids"
    demo.write_demo(root, subjects=3)
    return root


def test_dry_run_prints_one_array_task_per_participant_and_the_group_job(demo_bids, tmp_path):
    out = tmp_path / "out"
    result = _run("submit", demo_bids, out, "--sif", "/images/legseg.sif", "--cpus", "8", "--mem", "32G",
                  "--work-root", "/scratch/me", "--dry-run", "--", "--region", "legs-hip")
    assert result.returncode == 0, result.stderr
    assert "3 participant(s) from participants.tsv: 01 02 03" in result.stderr
    array, group, *tasks = _commands(result.stdout)
    assert array[:2] == ["sbatch", "--parsable"]
    for option, value in (("--array", "0-2"), ("--cpus-per-task", "8"), ("--mem", "32G"), ("--time", "02:00:00"),
                          ("--output", f"{out}/logs/slurm/legseg-%A_%a.log")):
        assert array[array.index(option) + 1] == value
    assert array[array.index("task") - 1] == str(SCRIPT)
    assert group[group.index("--dependency") + 1] == "afterok:ARRAY_JOB_ID"
    assert group[group.index("--kill-on-invalid-dep") + 1] == "yes"
    assert group[group.index("group") + 1:] == ["--bids", str(demo_bids), "--out", str(out), "--sif",
                                               "/images/legseg.sif", "--", "--region", "legs-hip"]
    assert tasks[:3] == [
        _container(demo_bids, out, f"/scratch/me/legseg-ARRAY_JOB_ID-{i}", label, ["--region", "legs-hip"],
                   cpus="8", mem_gb="16")
        for i, label in enumerate(["01", "02", "03"])
    ]
    assert tasks[3] == ["apptainer", "run", "--cleanenv", "--bind", f"{demo_bids}:/bids:ro", "--bind",
                        f"{out}:/out", "/images/legseg.sif", "/bids", "/out", "group", "--region", "legs-hip"]
    assert len(tasks) == 4
    assert not out.exists(), "a dry run must not create anything"


def test_array_index_selects_the_participant_in_the_task_body(demo_bids, tmp_path):
    """Run the task body exactly as sbatch would (its arguments), once per array index."""
    out = tmp_path / "out"
    result = _run("submit", demo_bids, out, "--sif", "/images/legseg.sif", "--work-root", "/scratch",
                  "--participant-label", "sub-03", "01", "--dry-run")
    assert result.returncode == 0, result.stderr
    array = _commands(result.stdout)[0]
    task_args = array[array.index("task"):]
    assert task_args[-1] == "--"  # no legseg options
    for index, label in enumerate(["03", "01"]):
        body = _run(*task_args[:1], "--dry-run", *task_args[1:],
                    env={"SLURM_ARRAY_TASK_ID": str(index), "SLURM_ARRAY_JOB_ID": "4242"})
        assert body.returncode == 0, body.stderr
        assert _commands(body.stdout) == [_container(demo_bids, out, f"/scratch/legseg-4242-{index}", label)]
    for env, message in (({"SLURM_ARRAY_TASK_ID": "2"}, "out of range: 2 participant(s)"),
                         ({}, "runs as a SLURM array task")):
        body = _run(*task_args[:1], "--dry-run", *task_args[1:], env=env)
        assert body.returncode == 64 and message in body.stderr


def test_work_folder_defaults_to_the_node_tmpdir(demo_bids, tmp_path):
    body = _run("task", "--bids", demo_bids, "--out", tmp_path, "--sif", "/images/legseg.sif", "--label", "02",
                "--dry-run", env={"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_JOB_ID": "7", "TMPDIR": "/local/job7"})
    assert body.returncode == 0, body.stderr
    assert "/local/job7/legseg-7-0:/work" in _commands(body.stdout)[0]


def test_sub_folders_without_participants_tsv_one_task_covers_all_sessions(tmp_path):
    bids = _folders(tmp_path / "bids", ["sub-b/ses-1/anat", "sub-b/ses-2/anat", "sub-a/ses-1/anat"])
    result = _run("submit", bids, tmp_path / "out", "--sif", "/images/legseg.sif", "--work-root", "/w",
                  "--dry-run", "--no-group")
    assert result.returncode == 0, result.stderr
    assert "2 participant(s) from sub-* folders: a b" in result.stderr
    array, *tasks = _commands(result.stdout)
    assert array[array.index("--array") + 1] == "0-1"
    assert "group" not in array and len(tasks) == 2
    assert tasks == [_container(bids, tmp_path / "out", f"/w/legseg-ARRAY_JOB_ID-{i}", label)
                     for i, label in enumerate(["a", "b"])]
    # --session-label passes through to every task
    result = _run("submit", bids, tmp_path / "out", "--sif", "/images/legseg.sif", "--work-root", "/w",
                  "--session-label", "ses-1", "2", "--dry-run", "--no-group")
    assert result.returncode == 0, result.stderr
    tasks = _commands(result.stdout)[1:]
    assert tasks == [_container(bids, tmp_path / "out", f"/w/legseg-ARRAY_JOB_ID-{i}", label, sessions=["1", "2"])
                     for i, label in enumerate(["a", "b"])]


def test_participants_tsv_rows_and_folders_that_do_not_match(tmp_path):
    bids = _folders(tmp_path / "bids", ["sub-01/anat", "sub-03/anat"], participants=["sub-01", "sub-02", "03", "sub-01"])
    result = _run("submit", bids, tmp_path / "out", "--sif", "/images/legseg.sif", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "participants.tsv lists sub-02 but" in result.stderr
    assert "2 participant(s) from participants.tsv: 01 03" in result.stderr  # repeats dropped
    (bids / "sub-04" / "anat").mkdir(parents=True)
    result = _run("submit", bids, tmp_path / "out", "--sif", "/images/legseg.sif", "--dry-run")
    assert "sub-04 has a folder but no participants.tsv row" in result.stderr


@pytest.mark.parametrize("case", ["tsv", "folder", "option", "session", "missing", "empty"])
def test_bad_labels_are_rejected_with_a_clear_error(tmp_path, case):
    layouts = {
        "tsv": (["sub-01/anat", "sub-0.2/anat"], ["sub-01", "sub-0.2"], [], "invalid participant label 'sub-0.2'"),
        "folder": (["sub-01/anat", "sub-a_b/anat"], None, [], "invalid participant label 'sub-a_b'"),
        "option": (["sub-01/anat"], None, ["--participant-label", "../x"], "invalid participant label '../x'"),
        "session": (["sub-01/anat"], None, ["--session-label", "pre-op"], "invalid session label 'pre-op'"),
        "missing": (["sub-01/anat"], None, ["--participant-label", "02"], "sub-02 has no folder"),
        "empty": ([], None, [], "no participants found"),
    }
    folders, participants, options, message = layouts[case]
    bids = _folders(tmp_path / "bids", folders, participants)
    result = _run("submit", bids, tmp_path / "out", "--sif", "/images/legseg.sif", *options, "--dry-run")
    assert result.returncode == 64
    assert message in result.stderr
    assert "[A-Za-z0-9]+" in result.stderr or case in ("missing", "empty")
    assert result.stdout == ""


@pytest.mark.parametrize("options, message", [
    (["--", "--participant-label", "01"], "give participants with the script's --participant-label"),
    (["--", "--nthreads", "2"], "set from --cpus"),
    (["--", "-w", "/tmp"], "--work-root"),
    (["--", "--mem", "16G"], "use the script's --mem-gb"),
    (["--", "--mem_mb=16000"], "use the script's --mem-gb"),
    (["--", "--nv"], "put it before '--'"),
    (["--cpus", "0"], "--cpus must be a positive integer"),
    (["--mem", "lots"], "not a SLURM memory size"),
    (["--group-after", "notok"], "--group-after must be ok or any"),
    (["--bogus"], "unknown option '--bogus'"),
])
def test_conflicting_or_bad_options_are_usage_errors(demo_bids, tmp_path, options, message):
    result = _run("submit", demo_bids, tmp_path / "out", "--sif", "/images/legseg.sif", "--dry-run", *options)
    assert result.returncode == 64, result.stderr
    assert message in result.stderr


def test_missing_inputs(tmp_path, demo_bids):
    result = _run("submit", tmp_path / "nope", tmp_path / "out", "--sif", "/images/legseg.sif", "--dry-run")
    assert result.returncode == 66 and "does not exist" in result.stderr
    result = _run("submit", demo_bids, tmp_path / "a:b", "--sif", "/images/legseg.sif", "--dry-run")
    assert result.returncode == 64 and "contains ':' or ','" in result.stderr
    result = _run("submit", demo_bids, tmp_path / "out", "--sif", tmp_path / "missing.sif")
    assert result.returncode == 64 and "missing.sif does not exist" in result.stderr


def test_gpu_and_scheduler_options(demo_bids, tmp_path):
    result = _run("submit", demo_bids, tmp_path / "out", "--sif", "/images/legseg.sif", "--nv", "--gres", "gpu:1",
                  "--partition", "gpu", "--account", "lab", "--max-parallel", "2", "--mem", "12000M",
                  "--group-after", "any", "--bind", "/data/models:/models:ro", "--work-root", "/w", "--dry-run",
                  "--", "--device", "gpu", "--models", "/models")
    assert result.returncode == 0, result.stderr
    array, group, *tasks = _commands(result.stdout)
    assert array[array.index("--array") + 1] == "0-2%2"
    assert array[array.index("--gres") + 1] == "gpu:1" and "--gres" not in group
    assert array[array.index("--partition") + 1] == group[group.index("--partition") + 1] == "gpu"
    assert group[group.index("--dependency") + 1] == "afterany:ARRAY_JOB_ID"
    assert "--kill-on-invalid-dep" not in group
    assert tasks[0][:11] == ["apptainer", "run", "--cleanenv", "--bind", f"{demo_bids}:/bids:ro", "--bind",
                             f"{tmp_path}/out:/out", "--bind", "/w/legseg-ARRAY_JOB_ID-0:/work", "--bind",
                             "/data/models:/models:ro"]
    assert tasks[0][11:13] == ["--nv", "/images/legseg.sif"]
    assert tasks[0][-9:] == ["--nprocs", "4", "--mem-gb", "5.86", "-w", "/work", "--device", "gpu", "--models",
                             "/models"][-9:]


def _fake_tool(folder: Path, name: str, body: str) -> None:
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)


def test_submission_calls_sbatch_twice_with_the_array_job_id(demo_bids, tmp_path):
    calls = tmp_path / "calls"
    calls.mkdir()
    fake = tmp_path / "bin"
    _fake_tool(fake, "sbatch", f"""n=$(ls {calls} | wc -l)
printf '%s\\n' "$@" > {calls}/$n
if [ "$n" = 0 ]; then echo '4711;cluster1'; else echo 4712; fi
""")
    sif = tmp_path / "legseg.sif"
    sif.write_bytes(b"")
    result = _run("submit", demo_bids, tmp_path / "out", "--sif", sif, path_prefix=fake)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "4711"
    array = (calls / "0").read_text().splitlines()
    group = (calls / "1").read_text().splitlines()
    assert array[array.index("--array") + 1] == "0-2"
    assert group[group.index("--dependency") + 1] == "afterok:4711"
    assert (tmp_path / "out" / "logs" / "slurm").is_dir()


def test_task_runs_the_container_in_a_scratch_folder_it_removes(demo_bids, tmp_path):
    record = tmp_path / "record"
    fake = tmp_path / "bin"
    # the fake runtime records its arguments and the work folder it was given, then fails with 1
    _fake_tool(fake, "apptainer", f"""printf '%s\\n' "$@" > {record}
for arg in "$@"; do case "$arg" in *:/work) ls -d "${{arg%:/work}}" >> {record}.work ;; esac; done
exit 1
""")
    scratch = tmp_path / "scratch"
    result = _run("task", "--bids", demo_bids, "--out", tmp_path / "out", "--sif", "/images/legseg.sif",
                  "--cpus", "2", "--mem-gb", "3", "--work-root", scratch, "--label", "01", "--label", "02",
                  env={"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_JOB_ID": "99"}, path_prefix=fake)
    assert result.returncode == 1, "the task exits with legseg's code"
    assert record.read_text().splitlines() == _container(
        demo_bids, tmp_path / "out", scratch / "legseg-99-1", "02", cpus="2", mem_gb="3")[1:]
    assert (tmp_path / "record.work").read_text().strip() == str(scratch / "legseg-99-1")
    assert not (scratch / "legseg-99-1").exists(), "the scratch folder is removed afterwards"
    assert "sub-02 finished with exit code 1" in result.stderr


def _container_many(bids, out, work, labels, cpus="4", mem_gb="8", image="/images/legseg.sif"):
    """The container command of a task that processes several participants at once."""
    return ["apptainer", "run", "--cleanenv", "--bind", f"{bids}:/bids:ro", "--bind", f"{out}:/out",
            "--bind", f"{work}:/work", image, "/bids", "/out", "participant", "--participant-label", *labels,
            "--nprocs", cpus, "--mem-gb", mem_gb, "-w", "/work"]


@pytest.mark.parametrize("count, per_task", [(5, 2), (4, 2), (3, 5), (1, 1), (7, 3)])
def test_per_task_packs_participants_into_one_process_per_array_task(tmp_path, count, per_task):
    labels = [f"{i:02d}" for i in range(1, count + 1)]
    bids = _folders(tmp_path / "bids", [f"sub-{label}/anat" for label in labels])
    out = tmp_path / "out"
    result = _run("submit", bids, out, "--sif", "/images/legseg.sif", "--work-root", "/w",
                  "--per-task", per_task, "--dry-run", "--no-group")
    assert result.returncode == 0, result.stderr
    array, *tasks = _commands(result.stdout)
    n_tasks = -(-count // per_task)
    assert array[array.index("--array") + 1] == f"0-{n_tasks - 1}"
    expected = [labels[i * per_task:(i + 1) * per_task] for i in range(n_tasks)]
    assert tasks == [_container_many(bids, out, f"/w/legseg-ARRAY_JOB_ID-{i}", chunk)
                     for i, chunk in enumerate(expected)]
    assert sorted(label for chunk in expected for label in chunk) == labels  # each exactly once
    # the task body, run as sbatch would with each array index, selects the same participants
    task_args = array[array.index("task"):]
    for index, chunk in enumerate(expected):
        body = _run(*task_args[:1], "--dry-run", *task_args[1:],
                    env={"SLURM_ARRAY_TASK_ID": str(index), "SLURM_ARRAY_JOB_ID": "5"})
        assert body.returncode == 0, body.stderr
        assert _commands(body.stdout) == [_container_many(bids, out, f"/w/legseg-5-{index}", chunk)]
    body = _run(*task_args[:1], "--dry-run", *task_args[1:], env={"SLURM_ARRAY_TASK_ID": str(n_tasks)})
    assert body.returncode == 64 and f"out of range: {count} participant(s), {per_task} per task" in body.stderr


def test_per_task_must_be_a_positive_integer(demo_bids, tmp_path):
    for value in ("0", "two", "-1"):
        result = _run("submit", demo_bids, tmp_path / "out", "--sif", "/images/legseg.sif", "--per-task", value,
                      "--dry-run")
        assert result.returncode == 64 and "--per-task must be a positive integer" in result.stderr


@pytest.mark.parametrize("env, options, image", [
    ({}, [], f"docker://ghcr.io/legseg/legseg:{__version__}"),
    ({}, ["--nv"], f"docker://ghcr.io/legseg/legseg:{__version__}-gpu"),
    ({"LEGSEG_CONTAINER": "docker://example.org/lab/legseg:dev"}, [], "docker://example.org/lab/legseg:dev"),
], ids=["released-cpu", "released-gpu", "LEGSEG_CONTAINER"])
def test_image_defaults_to_the_released_one(demo_bids, tmp_path, env, options, image):
    result = _run("submit", demo_bids, tmp_path / "out", *options, "--dry-run", "--no-group", env=env)
    assert result.returncode == 0, result.stderr
    array, *tasks = _commands(result.stdout)
    assert array[array.index("--sif") + 1] == image
    assert all(image in task for task in tasks) and len(tasks) == 3
    assert f"pull it once instead: apptainer pull legseg.sif {image}" in result.stderr


def test_a_packed_task_runs_one_container_for_its_participants(demo_bids, tmp_path):
    record = tmp_path / "record"
    _fake_tool(tmp_path / "bin", "apptainer", f"printf '%s\\n' \"$@\" >> {record}\n")
    scratch = tmp_path / "scratch"
    result = _run("task", "--bids", demo_bids, "--out", tmp_path / "out", "--sif", "/images/legseg.sif",
                  "--cpus", "2", "--mem-gb", "3", "--work-root", scratch, "--per-task", "2",
                  *[word for label in ("01", "02", "03") for word in ("--label", label)],
                  env={"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_JOB_ID": "8"}, path_prefix=tmp_path / "bin")
    assert result.returncode == 0, result.stderr
    assert record.read_text().splitlines() == _container_many(
        demo_bids, tmp_path / "out", scratch / "legseg-8-1", ["03"], cpus="2", mem_gb="3")[1:]
    assert "array task 1: sub-03 on" in result.stderr and "sub-03 finished with exit code 0" in result.stderr
    record.unlink()
    result = _run("task", "--bids", demo_bids, "--out", tmp_path / "out", "--sif", "/images/legseg.sif",
                  "--per-task", "2", "--label", "01", "--label", "02", "--label", "03",
                  env={"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_JOB_ID": "8", "TMPDIR": str(scratch)},
                  path_prefix=tmp_path / "bin")
    assert result.returncode == 0, result.stderr
    words = record.read_text().splitlines()
    assert words[words.index("--participant-label") + 1:words.index("-w")] == ["01", "02"]
    assert "sub-01 sub-02 finished with exit code 0" in result.stderr
