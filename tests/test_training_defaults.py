"""``legseg-train``'s defaults are the training config dataclasses' defaults, read from them:
a default changed in one place cannot drift from the other."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

from legseg_tf.networks.config import UNetConfig
from legseg_tf.training import cli
from legseg_tf.training.sampling import PatchConfig
from legseg_tf.training.train import TrainConfig

#: option dest -> the dataclass field it sets.
DEFAULTS_FROM = {
    "patch": (PatchConfig, "patch_size"),
    "class_balanced": (PatchConfig, "class_balanced"),
    "stack_ends": (PatchConfig, "stack_end_probability"),
    "features": (UNetConfig, "features"),
    "dropout": (UNetConfig, "dropout_rate"),
    "batch_size": (TrainConfig, "batch_size"),
    "round_length": (TrainConfig, "round_length"),
    "rounds": (TrainConfig, "rounds"),
    "validation_patches": (TrainConfig, "validation_patches"),
    "seed": (TrainConfig, "seed"),
    "threads": (TrainConfig, "threads"),
}
MINIMAL = ["segmentation", "--image", "i.nii.gz", "--labels", "l.nii.gz", "--table", "N5_UpperLeg",
           "--run-dir", "run"]


def _field_default(cls, name):
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    assert field.default is not dataclasses.MISSING, f"{cls.__name__}.{name} has no plain default"
    return field.default


def test_every_training_option_default_is_its_dataclass_default():
    args = cli.build_parser().parse_args(MINIMAL)
    for dest, (cls, name) in DEFAULTS_FROM.items():
        got = getattr(args, dest)
        got = tuple(got) if isinstance(got, list) else got
        assert got == _field_default(cls, name), f"--{dest.replace('_', '-')} vs {cls.__name__}.{name}"
    assert cli._augmentation(args.augment) == _field_default(TrainConfig, "augmentation")
    assert cli._downsample(len(args.features)) == _field_default(UNetConfig, "downsample")


def test_default_command_line_gives_the_default_training_config():
    """Nothing on the command line but the data: the configuration is the dataclasses' own."""
    args = cli.build_parser().parse_args(MINIMAL)
    assert cli._train_config(args, n_classes=7) == TrainConfig(network=UNetConfig(n_classes=7))


def test_parser_does_not_import_tensorflow():
    """Reading the defaults keeps ``legseg-train --help`` and usage errors light."""
    code = ("import sys\nfrom legseg_tf.training import cli\ncli.build_parser()\n"
            "assert 'tensorflow' not in sys.modules, 'TensorFlow imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
