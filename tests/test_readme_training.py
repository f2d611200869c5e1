"""The README's training commands run as written (phantom pair, a few steps, resume, install)."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from legseg_tf import demo, model_store
from legseg_tf.training import cli as train_cli

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_training_commands() -> list[list[str]]:
    """Command lines of the fenced bash block under '## Training your own networks'."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Training your own networks", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


@pytest.mark.slow
def test_readme_training_commands(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    commands = readme_training_commands()
    assert [c[0] for c in commands] == ["python"] + ["legseg-train"] * 4
    for command in commands:
        if command[0] == "python":
            assert command[1:3] == ["-m", "legseg_tf.demo"]
            assert demo.main(command[3:]) == 0
        else:
            assert train_cli.main(command[1:]) == 0, command
    state = json.loads((tmp_path / "train_demo/run/checkpoint/state.json").read_text())
    assert state["step"] == 12 and state["round"] == 3          # 3 rounds x 8 samples / batch 2
    report = json.loads((tmp_path / "train_demo/evaluation.json").read_text())
    assert "Vastus lateralis" in report["summary"]["per_label"]
    entry = model_store.load_manifest(tmp_path / "train_demo/models").get("upper_leg")
    assert entry.id == "demo-upper" and entry.label_table == "N5_UpperLeg"


def test_phantom_labels_are_sided_by_world_x(tmp_path):
    import nibabel as nib
    import numpy as np

    from legseg_tf.labels import BY_INDEX

    image_path, labels_path = demo.write_training_pair(tmp_path / "pair")
    labels = np.asarray(nib.load(str(labels_path)).dataobj)
    affine = nib.load(str(image_path)).affine
    x = affine[0, 0] * np.arange(labels.shape[0]) + affine[0, 3]
    present = set(np.unique(labels).tolist()) - {0}
    assert len(present) == 10   # 4 muscles + femur per side
    left = labels[x < 0]
    right = labels[x >= 0]
    assert all(BY_INDEX[v].side == "L" for v in np.unique(left) if v)
    assert all(BY_INDEX[v].side == "R" for v in np.unique(right) if v)
    with pytest.raises(FileExistsError):
        demo.write_training_pair(tmp_path / "pair")
