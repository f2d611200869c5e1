"""``legseg-train`` end to end on a tiny generated dataset: train, resume, evaluate, install."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from legseg_tf.training.cli import main
from tests.conftest import write_nifti


def _phantom(tmp_path, seed):
    """Two legs in RAS (x, y, z): discs with a 'femur' (103/104) inside 'vastus' (55/56)."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = 64, 32, 8
    xx, yy = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    image = np.zeros((nx, ny, nz), np.float32)
    labels = np.zeros((nx, ny, nz), np.int16)
    for cx, muscle, bone in ((16, 55, 103), (48, 56, 104)):   # low x = patient left
        leg = (xx - cx) ** 2 + (yy - 16) ** 2 <= 12 ** 2
        core = (xx - cx) ** 2 + (yy - 16) ** 2 <= 4 ** 2
        image[leg] = 80.0
        image[core] = 20.0
        labels[leg & ~core] = muscle
        labels[core] = bone
    image += rng.normal(0, 2, image.shape).astype(np.float32) * (image > 0)
    affine = np.diag([1.5, 1.5, 6.0, 1.0])
    img = write_nifti(tmp_path / f"img{seed}.nii.gz", image, affine)
    lab = write_nifti(tmp_path / f"lab{seed}.nii.gz", labels, affine)
    return img, lab


def _train_args(img, lab, run_dir, steps):
    return ["segmentation", "--image", str(img), "--labels", str(lab), "--table", "N5_UpperLeg",
            "--run-dir", str(run_dir), "--split-legs", "--hold-out", "left",
            "--patch", "4", "16", "16", "--features", "4", "8", "--batch-size", "2",
            "--round-length", "4", "--rounds", "3", "--max-steps", str(steps),
            "--validation-patches", "2", "--dropout", "0", "--no-progress", "--threads", "1"]


@pytest.mark.slow
def test_train_resume_evaluate_install(tmp_path, capsys):
    from legseg_tf import model_store

    img, lab = _phantom(tmp_path, 0)
    run = tmp_path / "run"
    assert main(_train_args(img, lab, run, 2)) == 0
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2 and state["round"] == 1
    first_weights = (run / "checkpoint" / "model.weights.h5").read_bytes()
    # a second fresh start into the same directory is refused
    assert main(_train_args(img, lab, run, 2)) == 1
    # resume (with another thread count: an execution setting, not the recipe): continues at
    # step 2 and finishes the 3 rounds (6 steps)
    resumed = _train_args(img, lab, run, 10) + ["--resume"]
    resumed[resumed.index("--threads") + 1] = "2"
    assert main(resumed) == 0
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["step"] == 6 and state["round"] == 3
    assert (run / "checkpoint" / "model.weights.h5").read_bytes() != first_weights
    with open(run / "log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [2, 4, 6]
    assert all(0 <= float(r["dice_19"]) <= 1 for r in rows)
    # resuming with a different recipe is refused
    changed = _train_args(img, lab, run, 2) + ["--resume"]
    changed[changed.index("--batch-size") + 1] = "4"
    changed[changed.index("--round-length") + 1] = "8"
    assert main(changed) == 64

    capsys.readouterr()
    assert main(["evaluate", "--run-dir", str(run), "--image", str(img), "--labels", str(lab),
                 "--table", "N5_UpperLeg", "--output", str(tmp_path / "eval.json")]) == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    assert "Vastus lateralis" in report["summary"]["per_label"]
    assert "mean Dice" in capsys.readouterr().out

    models = tmp_path / "models"
    assert main(["install", "--run-dir", str(run), "--models", str(models), "--id", "tiny-upper",
                 "--role", "upper_leg", "--table", "N5_UpperLeg"]) == 0
    entry = model_store.load_manifest(models).get("upper_leg")
    model = model_store.load_model(entry)
    assert model.outputs[0].shape[-1] == 22

    # fine-tuning: a new run from the trained weights, class-balanced patch centres
    tuned = tmp_path / "tuned"
    start = run / "checkpoint" / "model.weights.h5"
    assert main(_train_args(img, lab, tuned, 2) + ["--init-from", str(start),
                                                    "--class-balanced"]) == 0
    assert (tuned / "initial_weights.txt").read_text().strip() == str(start)
    stored = json.loads((tuned / "train_config.json").read_text())
    assert stored["patch"]["class_balanced"] is True
    assert main(_train_args(img, lab, tmp_path / "t2", 2)
                + ["--init-from", str(tmp_path / "missing.weights.h5")]) == 1
    assert not (tmp_path / "t2").exists()   # nothing written for a run that cannot start


def test_resume_batches_equal_uninterrupted_batches():
    from legseg_tf.networks.config import UNetConfig
    from legseg_tf.training.data import TrainingCase
    from legseg_tf.training.sampling import PatchConfig
    from legseg_tf.training.train import TrainConfig, _batch_for_step

    image = np.zeros((6, 24, 24), np.float32)
    image[1:5, 4:20, 4:20] = 50 + np.arange(16)[None, None, :]
    labels = (image > 55).astype(np.int32)
    case = TrainingCase("c", image, labels, (6, 1.5, 1.5))
    config = TrainConfig(network=UNetConfig(n_classes=2, features=(4, 8),
                                            downsample=((2, 2, 2), (1, 1, 1))),
                         patch=PatchConfig(patch_size=(4, 8, 8)), batch_size=2)
    norm = lambda p: p / p.max()  # noqa: E731
    a = _batch_for_step([case], config, 5, norm)
    b = _batch_for_step([case], config, 5, norm)
    c = _batch_for_step([case], config, 6, norm)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


def test_compare_two_label_maps(tmp_path, capsys):
    _, lab = _phantom(tmp_path, 1)
    assert main(["evaluate", "--reference", str(lab), "--prediction", str(lab)]) == 0
    out = capsys.readouterr().out
    assert "Vastus lateralis Left" in out and "Dice 1.0000" in out


def test_usage_errors():
    assert main([]) == 64
    assert main(["evaluate"]) == 64
    assert main(["segmentation", "--image", "a", "--labels", "b", "--table", "Nope",
                 "--run-dir", "x"]) == 64
