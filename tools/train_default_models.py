#!/usr/bin/env python
"""The exact recipe of the default models shipped in ``models/``.

Reads the real data in ``../shared/data`` (relative to the repository root; override with
``--data``), trains into ``training_runs/<model>/`` (git-ignored) and installs the result
into ``models/`` with a manifest entry (``legseg_tf.model_store.write_entry``).

    python tools/train_default_models.py classifier            # ~10 min on 2 cores
    python tools/train_default_models.py upper [--resume] [--rounds N] [--max-steps N]
    python tools/train_default_models.py lower [--resume] [--rounds N] [--max-steps N]
    python tools/train_default_models.py upper --class-balanced --init-from W --run-name NAME
                                                               # fine-tune into upper-NAME/
    python tools/train_default_models.py evaluate upper|lower  # held-out leg, sliding window
    python tools/train_default_models.py install upper|lower|classifier [--best] [--run-name NAME]

The shipped networks' exact command sequences are in their model cards (models/cards/).

Data (QMRITools, BSD-3-Clause, (c) 2016 Martijn Froeling; Froeling, JOSS 2019, 4:1204):

* upper leg: ``scripts_test_data/test.nii.gz`` with QMRITools' own automatic segmentation
  ``out.nii.gz``, final labels mapped to the side-less N5_UpperLeg classes, split at the
  inter-leg valley into the right leg (training) and the left leg (held out).
* lower leg: ``DemoData/twoLegs.nii.gz`` with the manual ``labels.nii.gz`` (7 muscles per
  leg, mapping :data:`CALF_LABELS`), resampled to 1.5 x 1.5 mm in-plane, split into the
  right leg (training) and the left leg (held out).
* classifier: slices of ``Join_1..7``, the calf ``twoLegs``/``fat`` stacks (training) and
  ``test.nii.gz``, the calf ``water`` stack and the two UCL stacks (held out), with the
  per-slice positions of :data:`JOIN_POSITIONS`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from legseg_tf.derivatives import atomic_write, atomic_write_text  # noqa: E402
from legseg_tf.networks.config import UNetConfig  # noqa: E402
from legseg_tf.training.augmentation import HEAVY_AUGMENTATION  # noqa: E402
from legseg_tf.training.data import (  # noqa: E402
    IGNORE_LABEL,
    TrainingCase,
    crop_to_body,
    final_to_training_map,
    ignore_incomplete_slices,
    incomplete_slices,
    load_case,
    load_volume,
    resample_case,
    split_legs,
)
from legseg_tf.training.sampling import PatchConfig  # noqa: E402
from legseg_tf.training.train import TrainConfig  # noqa: E402

logger = logging.getLogger("train_default_models")

DEFAULT_DATA = ROOT.parent / "shared" / "data"
RUNS = ROOT / "training_runs"
MODELS = ROOT / "models"

#: DemoData labels.nii.gz -> N6_LowerLeg classes. Names checked on the images: by centroid
#: (QMRITools layout, right leg) 19/20 is the most anterior (tibialis anterior), 21/22 the most
#: lateral (fibularis longus + brevis, one label), 23/24 small antero-lateral (extensor
#: digitorum longus), 25/26 small, deep, between tibia and fibula (tibialis posterior),
#: 13/14 large, medial-posterior (medial gastrocnemius), 15/16 the most posterior, lateral of
#: it (lateral gastrocnemius), 17/18 the largest, central-posterior (soleus).
CALF_LABELS = {
    13: 2, 14: 2,    # Medial gastrocnemius
    15: 1, 16: 1,    # Lateral gastrocnemius
    17: 3, 18: 3,    # Soleus
    19: 11, 20: 11,  # Tibialis anterior
    21: 9, 22: 9,    # Fibularis longus (with brevis)
    23: 12, 24: 12,  # Extensor digitorum longus
    25: 8, 26: 8,    # Tibialis posterior
}

#: Per-slice body positions (inclusive slice ranges, slice 0 = most inferior) assigned by
#: looking at sagittal and axial views of each stack. Join_1 (foot) has no class of its own
#: and is "Lower", the lowest level.
JOIN_POSITIONS = {
    "Join_1": [(0, 30, "Lower")],
    "Join_2": [(0, 30, "Lower")],
    "Join_3": [(0, 30, "Lower")],
    "Join_4": [(0, 13, "Lower"), (14, 30, "Knee")],
    "Join_5": [(0, 4, "Knee"), (5, 30, "Upper")],
    "Join_6": [(0, 30, "Upper")],
    "Join_7": [(0, 2, "Upper"), (3, 30, "Hip")],
}

#: Slices of out.nii.gz that the data README documents as incompletely labelled (judged from
#: per-slice left/right label areas: left leg complete from z >= 7, right from z >= 3, both
#: tapering from z = 22 up); with ``--hygiene`` they are ignored together with the slices that
#: :func:`legseg_tf.training.data.incomplete_slices` detects.
OUT_NII_INCOMPLETE = {"R": (range(0, 3), range(22, 31)), "L": (range(0, 7), range(22, 31))}

#: Network and training recipe per region (small networks for CPU training).
SMALL_FEATURES = (8, 16, 32, 48, 64)
REGIONS = {
    "upper": {"table": "N5_UpperLeg", "role": "upper_leg", "id": "legseg-upperleg-small-v3",
              "files": "upperleg"},
    "lower": {"table": "N6_LowerLeg", "role": "lower_leg", "id": "legseg-lowerleg-small-v2",
              "files": "lowerleg"},
}


def region_train_config(region: str, rounds: int, threads: int = 2,
                        class_balanced: bool = False, stack_ends: float = 0.0) -> TrainConfig:
    """The training configuration of ``region`` ("upper" or "lower")."""
    from legseg_tf.labels import TRAIN_TABLES

    n_classes = len(TRAIN_TABLES[REGIONS[region]["table"]]) + 1
    network = UNetConfig(n_classes=n_classes, features=SMALL_FEATURES, dropout_rate=0.1)
    augmentation = HEAVY_AUGMENTATION
    return TrainConfig(
        network=network,
        patch=PatchConfig(patch_size=(16, 64, 64), foreground_fraction=0.7,
                          class_balanced=class_balanced, stack_end_probability=stack_ends),
        augmentation=augmentation,
        batch_size=2,
        round_length=64,
        rounds=rounds,
        validation_patches=24,
        seed=20261124,
        threads=threads,
    )


def patch_normaliser():
    """The project's "Uniform" normalisation (QMRITools ``NormDatC``)."""
    from legseg_tf.normalization import uniform_normalise

    return uniform_normalise


#: The shipped classifier (recipe v2).
CLASSIFIER_ID = "legseg-classifier-small-v2"

#: Voxel size (z, y, x) mm of the shipped region networks' training data.
TRAINING_VOXEL_SIZE = (6.0, 1.5, 1.5)

#: Pseudo-labelled stacks (``tools/make_pseudolabels.py``) usable for training, by region:
#: the verdicts of docs/pseudolabels.md ("usable with ignore"; DemoData water is the calf
#: atlas subject itself, GE thigh and Join_7 are unusable).
PSEUDOLABEL_TARGETS = {
    "upper": {"Join_5": "qmritools/DemoData/Join_5.nii.gz",
              "Join_6": "qmritools/DemoData/Join_6.nii.gz",
              "ucl_siemens_thigh": "swastling_musclemap/ff/siemens/thigh/input/"
                                   "0006-Dixon_TE_345_th.nii.gz"},
    "lower": {"Join_2": "qmritools/DemoData/Join_2.nii.gz",
              "Join_3": "qmritools/DemoData/Join_3.nii.gz",
              "Join_4": "qmritools/DemoData/Join_4.nii.gz",
              "ucl_calf": "swastling_musclemap/t2/input/0007-Dixon_TE_345_cf.nii.gz"},
}


#: Subjects per region for leave-one-subject-out folds. Identity is not documented in the data;
#: a subject here is one source and scanner: the region's labelled reference (QMRITools thigh
#: test data, QMRITools calf demo), the QMRITools Join stacks, the UCL Siemens stacks.
#: The GE thigh and Join_7 have no usable pseudo-labels (docs/pseudolabels.md).
REFERENCE_SUBJECT = {"upper": "qmritools-thigh", "lower": "qmritools-calf"}
SUBJECTS = {
    "upper": {"qmritools-thigh": (), "qmritools-join": ("Join_5", "Join_6"),
              "ucl": ("ucl_siemens_thigh",)},
    "lower": {"qmritools-calf": (), "qmritools-join": ("Join_2", "Join_3", "Join_4"),
              "ucl": ("ucl_calf",)},
}


#: Run-name suffix of each subject's fold (``<region>-loso-<suffix>``).
FOLD_NAMES = {"qmritools-thigh": "ref", "qmritools-calf": "ref", "qmritools-join": "join",
              "ucl": "ucl"}


def _is_pseudo(case: TrainingCase, region: str) -> bool:
    return any(case.name.startswith(name) for name in PSEUDOLABEL_TARGETS[region])


def subject_split(region: str, data: Path, pseudolabels: Path, hold_out: str | None,
                  hygiene: bool = True) -> tuple[list[TrainingCase], list[TrainingCase]]:
    """(training legs, held-out legs) of a leave-one-subject-out fold of ``region``.

    Every leg of every subject but ``hold_out`` trains (the reference subject with both legs,
    its incompletely labelled end slices ignored when ``hygiene``); the held-out subject's
    legs are returned for validation. ``hold_out=None`` trains on every subject and returns
    the reference subject's left leg (then also a training leg) for monitoring only.
    """
    subjects = SUBJECTS[region]
    if hold_out is not None and hold_out not in subjects:
        raise SystemExit(f"--hold-out for {region} must be one of {sorted(subjects)}")
    reference = list(region_cases(region, data, hygiene=hygiene))
    train, held = [], []
    for subject, stacks in subjects.items():
        legs = (reference if subject == REFERENCE_SUBJECT[region]
                else pseudolabel_cases(region, data, pseudolabels, list(stacks)))
        (held if subject == hold_out else train).extend(legs)
    if hold_out is None:
        held = [reference[1]]
    return train, held


def pseudolabel_cases(region: str, data: Path, folder: Path,
                      names: list[str] | None = None) -> list[TrainingCase]:
    """Both legs of each pseudo-labelled stack of ``region`` (ignore mask applied), cropped
    to the body; stacks whose folder is missing are skipped with a log line."""
    from legseg_tf.training.data import load_pseudolabel_case

    table = REGIONS[region]["table"]
    cases = []
    for name, image in PSEUDOLABEL_TARGETS[region].items():
        if names and name not in names:
            continue
        target = folder / name
        if not (target / "labels.nii.gz").is_file():
            logger.warning("no pseudo-labels for %s in %s: run tools/make_pseudolabels.py", name,
                           folder)
            continue
        case = load_pseudolabel_case(data / image, target / "labels.nii.gz",
                                     target / "ignore.nii.gz", table, name=name)
        # the shipped networks' voxel size (the app resamples inputs to it at inference)
        case = resample_case(case, TRAINING_VOXEL_SIZE)
        cases += list(split_legs(crop_to_body(case)))
    return cases


def region_cases(region: str, data: Path,
                 hygiene: bool = False) -> tuple[TrainingCase, TrainingCase]:
    """(training leg, held-out leg) of ``region``; with ``hygiene`` the incompletely labelled
    end slices of each leg are marked ignore (detected, and for the thigh also the slices the
    data README documents: :data:`OUT_NII_INCOMPLETE`)."""
    q = data / "qmritools"
    if region == "upper":
        case = load_case(q / "scripts_test_data" / "test.nii.gz",
                         q / "scripts_test_data" / "out.nii.gz", name="test",
                         label_map=final_to_training_map("N5_UpperLeg"))
    else:
        case = load_case(q / "DemoData" / "twoLegs.nii.gz", q / "DemoData" / "labels.nii.gz",
                         name="twoLegs", label_map=CALF_LABELS)
        case = resample_case(case, (case.spacing[0], 1.5, 1.5))
    right, left = split_legs(crop_to_body(case))
    if hygiene:
        right, left = (_hygiene(leg, region) for leg in (right, left))
    return right, left


def _hygiene(leg: TrainingCase, region: str) -> TrainingCase:
    slices = incomplete_slices(leg)
    if region == "upper":
        if leg.image.shape[0] != 31:
            raise ValueError(f"{leg.name}: expected the 31 slices of test.nii.gz")
        for block in OUT_NII_INCOMPLETE[leg.side]:
            slices[list(block)] = True
    return ignore_incomplete_slices(leg, slices)


def classifier_stacks(data: Path):
    """The v1 recipe: Join + DemoData calves for training, four stacks held out."""
    groups = classifier_groups(data)
    train = groups["qmritools-join"] + [s for s in groups["qmritools-calf"]
                                        if s.name in ("twoLegs", "fat")]
    held_names = ("test", "water", "ucl_thigh_TE345", "ucl_calf_TE345")
    held_out = [s for g in groups.values() for s in g if s.name in held_names]
    held_out = [replace(s, positions=(s.positions[0],) * len(s.positions)) if s.name == "test"
                else s for s in held_out]
    return train, held_out


#: Stacks per acquisition group. Subject identity is not documented in the data; a group is
#: one source and scanner (QMRITools Join stacks; QMRITools calf demo; QMRITools thigh test
#: data; UCL Siemens thigh and calf; GE thigh), the unit left out in the classifier's
#: leave-one-group-out validation.
UCL = ("swastling_musclemap", "ff", "siemens", "thigh", "input")
GE = ("swastling_musclemap", "ff", "ge", "thigh_masked", "input")


def classifier_groups(data: Path) -> dict:
    """Every real stack in ../shared with its per-slice positions, by acquisition group.

    Positions: Join stacks from :data:`JOIN_POSITIONS`; calves Lower; thighs Upper, except the
    top slices of ``test.nii.gz`` where QMRITools' reference labels the ilium (z >= 28): Hip.
    The UCL and GE stacks enter with every echo (contrasts differ between echoes).
    """
    from legseg_tf.training.classifier import SliceStack, positions_from_ranges

    q = data / "qmritools"

    def stack(name, path, ranges):
        volume, _ = load_volume(path)
        last = volume.shape[0] - 1
        ranges = [(first, min(end, last), name) for first, end, name in ranges]
        return SliceStack(name, volume, positions_from_ranges(volume.shape[0], ranges))

    groups = {
        "qmritools-join": [stack(name, q / "DemoData" / f"{name}.nii.gz", ranges)
                           for name, ranges in JOIN_POSITIONS.items()],
        "qmritools-calf": [stack(name, q / "DemoData" / f"{name}.nii.gz", [(0, 99, "Lower")])
                           for name in ("twoLegs", "fat", "water")],
        "qmritools-thigh": [stack("test", q / "scripts_test_data" / "test.nii.gz",
                                  [(0, 27, "Upper"), (28, 30, "Hip")])],
        "ucl": [stack(f"ucl_thigh_TE{te}", data.joinpath(*UCL, f"{n}-Dixon_TE_{te}_th.nii.gz"),
                      [(0, 99, "Upper")]) for n, te in (("0006", 345), ("0008", 460),
                                                         ("0010", 575))]
        + [stack("ucl_calf_TE345", data / "swastling_musclemap" / "t2" / "input"
                 / "0007-Dixon_TE_345_cf.nii.gz", [(0, 99, "Lower")])],
        "ge": [stack(f"ge_thigh_TE{te}",
                     data.joinpath(*GE, f"{n}-ORIG_DIXON_TE_{te}_TH-0000.nii.gz"),
                     [(0, 99, "Upper")]) for n, te in (("40006", 345), ("40007", 460),
                                                       ("40008", 575))],
    }
    return groups


def cmd_classifier(args) -> int:
    from legseg_tf.training.classifier import (
        ClassifierTrainConfig,
        SliceAugment,
        train_classifier,
    )

    if args.recipe == "v1":
        train, held_out = classifier_stacks(args.data)
        config = ClassifierTrainConfig(epochs=args.epochs)
        run = RUNS / "classifier"
    else:
        groups = classifier_groups(args.data)
        if args.hold_out and args.hold_out not in groups:
            raise SystemExit(f"--hold-out must be one of {sorted(groups)}")
        train = [s for g, stacks in groups.items() if g != args.hold_out for s in stacks]
        held_out = groups.get(args.hold_out, [])
        config = ClassifierTrainConfig(epochs=args.epochs,
                                       augment=SliceAugment(p_lowres=0.3))
        run = RUNS / (f"classifier-v2-without-{args.hold_out}" if args.hold_out
                      else "classifier-v2")
    report = train_classifier(config, train, held_out, run, progress=not args.no_progress)
    if held_out:
        report["segmenter_path"] = segmenter_path_positions(run, held_out)
        atomic_write_text(run / "report.json", json.dumps(report, indent=2))
    print(json.dumps({k: report.get(k) for k in ("n_train_examples", "wall_seconds",
                                                  "validation", "segmenter_path")}, indent=1))
    return 0


def segmenter_path_positions(run: Path, stacks) -> dict:
    """Per held-out stack: the region ranges the segmenter's own path (body mask, classifier,
    staircase fit) finds with the trained classifier, and the majority side."""
    from legseg_tf.body_position import ClassifierConfig as PathConfig
    from legseg_tf.body_position import classify_body
    from legseg_tf.config import InferenceConfig
    from legseg_tf.masking import apply_mask, body_mask
    from legseg_tf.model_adapters import KerasSliceClassifier
    from legseg_tf.networks.classifier import build_classifier
    from legseg_tf.networks.config import config_from_json

    net = config_from_json((run / "classifier.json").read_text())
    model = build_classifier(net)
    model.load_weights(run / "classifier.weights.h5")
    classifier = KerasSliceClassifier(model, net.side_classes, net.position_classes,
                                      batch_size=max(InferenceConfig().batch_size, 32))
    out = {}
    for stack in stacks:
        masked = apply_mask(stack.volume, body_mask(stack.volume))
        result = classify_body(masked, classifier, ("LowerLegs", "UpperLegs", "Hip"),
                               PathConfig(image_size=net.image_size))
        ranges = {k: [int(v[0]), int(v[1])] for k, v in result.ranges.items()}
        out[stack.name] = {"side": result.side, "ranges": ranges,
                           "truth": sorted(set(stack.positions))}
    return out


def cmd_region(args) -> int:
    from legseg_tf.training.train import train

    config = region_train_config(args.region, args.rounds, args.threads, args.class_balanced,
                                 args.stack_ends)
    if args.subjects:  # leave-one-subject-out fold, or every subject and both legs
        args.pseudolabels = args.pseudolabels or RUNS / "pseudolabels"
        hold_out = None if args.hold_out == "none" else args.hold_out
        cases, held = subject_split(args.region, args.data, args.pseudolabels, hold_out,
                                    hygiene=args.hygiene)
        # patches are drawn case by case: repeating the labelled reference's legs raises its
        # share against the pseudo-labelled legs
        reference = [c for c in cases if not _is_pseudo(c, args.region)]
        cases += reference * (args.reference_repeat - 1)
    else:
        train_case, held_case = region_cases(args.region, args.data, args.hygiene)
        extra = (pseudolabel_cases(args.region, args.data, args.pseudolabels,
                                   args.pseudo_targets) if args.pseudolabels else [])
        cases, held = [train_case, *extra], [held_case]
    logger.info("train %s, validate %s", [c.name for c in cases], [c.name for c in held])
    result = train(config, cases, held, run_dir(args), resume=args.resume,
                   normalise=patch_normaliser(), progress=not args.no_progress,
                   max_steps=args.max_steps, initial_weights=args.init_from)
    print(json.dumps(result.last_row, indent=1))
    return 0


def run_dir(args) -> Path:
    """``training_runs/<region>`` or ``training_runs/<region>-<run name>``."""
    name = getattr(args, "run_name", None)
    return RUNS / (args.region if not name else f"{args.region}-{name}")


def cmd_evaluate(args) -> int:
    """Sliding-window prediction of both legs; the held-out leg is the validation figure."""
    from legseg_tf.training.evaluate import evaluate_case

    # incompletely labelled reference slices are never scored (not "no muscle")
    train_case, held_case = region_cases(args.region, args.data, hygiene=True)
    run = run_dir(args)
    config = UNetConfig.from_json((run / "network.json").read_text())
    weights = run / ("best.weights.h5" if args.best else "checkpoint/model.weights.h5")
    table = REGIONS[args.region]["table"]
    report = {}
    for role, case in (("held_out", held_case), ("training", train_case)):
        report[role] = evaluate_case(config, weights, case, table, patch_size=(16, 64, 64))
        report[role]["stack_ends"] = stack_end_shares(config, weights, case)
    name = "heldout_evaluation_best.json" if args.best else "heldout_evaluation.json"
    atomic_write_text(run / name, json.dumps(report, indent=2))
    print(json.dumps({k: v["summary"] for k, v in report.items()}, indent=1))
    return 0


def stack_end_shares(config: UNetConfig, weights: Path, case: TrainingCase) -> dict:
    """Labelled share of muscle-like tissue per slice of the prediction (app inference path):
    the first and last 3 slices against the middle slices (a stack-end drop-out shows as
    end shares far below the middle)."""
    from legseg_tf.networks.config import total_stride
    from legseg_tf.networks.unet import build_unet
    from legseg_tf.training.data import labelled_fraction_per_slice
    from legseg_tf.training.evaluate import predict_volume

    model = build_unet(config, None)
    model.load_weights(weights)
    predicted = predict_volume(model, case.image, config.n_classes, total_stride(config),
                               (16, 64, 64))
    reference = replace(case, labels=np.where(case.labels == IGNORE_LABEL, 0, case.labels))
    shares, _ = labelled_fraction_per_slice(replace(reference, labels=predicted))
    nz = shares.size
    middle = float(np.median(shares[nz // 4: nz - nz // 4]))
    return {"per_slice": [round(float(v), 3) for v in shares],
            "first3_vs_middle": round(float(np.mean(shares[:3])) / middle, 3),
            "last3_vs_middle": round(float(np.mean(shares[-3:])) / middle, 3)}


def cmd_evaluate_new_subjects(args) -> int:
    """Installed network of ``region`` on the pseudo-labelled stacks of other people
    (``tools/make_pseudolabels.py`` output, ignore masks left out of the scores), through the
    app's inference path. The reference is fused atlas labels, not a manual segmentation."""
    from legseg_tf.training.evaluate import evaluate_case

    models = args.models or MODELS
    spec = REGIONS[args.region]
    config = UNetConfig.from_json((models / f"{spec['files']}.json").read_text())
    weights = models / f"{spec['files']}.weights.h5"
    report = {}
    for case in pseudolabel_cases(args.region, args.data, args.pseudolabels):
        result = evaluate_case(config, weights, case, spec["table"], patch_size=(16, 64, 64))
        report[case.name] = result["summary"]
        print(f"{case.name}: mean Dice {result['summary']['mean_dice_reference_labels']:.3f}")
    print(json.dumps(report, indent=1))
    return 0


def cmd_evaluate_subject(args) -> int:
    """Last weights of a leave-one-subject-out run on the subject it left out, through the
    app's inference path: per label Dice and HD95 against the subject's reference (manual or
    QMRITools labels, incomplete slices ignored) or pseudo-labels (ignore mask left out)."""
    from legseg_tf.training.evaluate import evaluate_case

    run = run_dir(args)
    config = UNetConfig.from_json((run / "network.json").read_text())
    weights = run / "checkpoint" / "model.weights.h5"
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    _, held = subject_split(args.region, args.data, args.pseudolabels, args.hold_out)
    reference = ("reference labels" if args.hold_out == REFERENCE_SUBJECT[args.region]
                 else "pseudo-labels (tools/make_pseudolabels.py)")
    report = {"hold_out": args.hold_out, "scored_against": reference, "rounds": state["round"],
              "steps": state["step"], "legs": {}}
    for case in held:
        result = evaluate_case(config, weights, case, REGIONS[args.region]["table"],
                               patch_size=(16, 64, 64))
        report["legs"][case.name] = result
        print(f"{case.name}: mean Dice {result['summary']['mean_dice_reference_labels']:.3f}")
    atomic_write_text(run / "subject_evaluation.json", json.dumps(report, indent=2))
    return 0


def cmd_subject_table(args) -> int:
    """Markdown table of the leave-one-subject-out runs ``<region>-<prefix><subject>`` that
    ``evaluate-subject`` scored: per label, Dice / HD95 (mm) on each left-out subject (both
    legs pooled by averaging the legs' figures), and the mean over the labels its reference
    has."""
    columns = {}
    for subject in SUBJECTS[args.region]:
        path = RUNS / f"{args.region}-{args.prefix}{FOLD_NAMES[subject]}" / "subject_evaluation.json"
        if path.is_file():
            columns[subject] = json.loads(path.read_text())
    if not columns:
        raise SystemExit("no evaluated folds: run evaluate-subject first")
    names = []
    for report in columns.values():
        for leg in report["legs"].values():
            for name, row in leg["summary"]["per_label"].items():
                if row["n_reference"] > 0 and name not in names:
                    names.append(name)
    head = "| muscle | " + " | ".join(f"{s} (Dice / HD95 mm)" for s in columns) + " |"
    lines = [head, "|---" * (len(columns) + 1) + "|"]
    means = {}
    for name in names:
        cells = []
        for subject, report in columns.items():
            rows = [leg["summary"]["per_label"].get(name) for leg in report["legs"].values()]
            rows = [r for r in rows if r and r["n_reference"] > 0]
            if not rows:
                cells.append("-")
                continue
            dice = float(np.mean([r["dice"] for r in rows]))
            hd = [r["hd95_mm"] for r in rows if r["hd95_mm"] is not None]
            means.setdefault(subject, []).append(dice)
            cells.append(f"{dice:.2f} / {np.mean(hd):.1f}" if hd else f"{dice:.2f} / -")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| **mean** | " + " | ".join(
        f"**{np.mean(means[s]):.2f}**" if s in means else "-" for s in columns) + " |")
    lines.append("| scored against | " + " | ".join(r["scored_against"] for r in columns.values())
                 + " |")
    lines.append("| fold training | " + " | ".join(f"{r['rounds']} rounds" for r in columns.values())
                 + " |")
    print("\n".join(lines))
    return 0


def copy_atomically(source: Path, target: Path) -> Path:
    """Copy ``source`` to ``target`` in one step (a killed copy leaves no half file)."""
    return atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))


def cmd_install(args) -> int:
    from legseg_tf.model_store import write_entry

    models = args.into or MODELS
    models.mkdir(parents=True, exist_ok=True)
    if args.region == "classifier":
        run = RUNS / (args.run_name or "classifier-v2")
        report = json.loads((run / "report.json").read_text())
        for name in ("classifier.json", "classifier.weights.h5"):
            copy_atomically(run / name, models / name)
        entry = {"id": CLASSIFIER_ID, "role": "classifier",
                 "config": "classifier.json", "weights": "classifier.weights.h5",
                 "label_table": None,
                 "provenance": {"source": "legseg-train", "recipe":
                                "tools/train_default_models.py classifier (recipe v2)",
                                "card": f"cards/{CLASSIFIER_ID}.md",
                                "validation": "leave-one-group-out: classifier --hold-out "
                                              "ucl | ge | qmritools-thigh",
                                "training_stacks": report["train_stacks"],
                                "data_licence": "QMRITools data BSD-3-Clause (c) 2016 "
                                                "Martijn Froeling; UCL data MIT (c) 2025 "
                                                "Stephen Wastling"}}
    else:
        spec = REGIONS[args.region]
        run = run_dir(args)
        state = json.loads((run / "checkpoint" / "state.json").read_text())
        weights = run / ("best.weights.h5" if args.best else "checkpoint/model.weights.h5")
        config = UNetConfig.from_json((run / "network.json").read_text())
        atomic_write_text(models / f"{spec['files']}.json", config.to_json() + "\n")
        copy_atomically(weights, models / f"{spec['files']}.weights.h5")
        entry = {"id": spec["id"], "role": spec["role"], "config": f"{spec['files']}.json",
                 "weights": f"{spec['files']}.weights.h5", "label_table": spec["table"],
                 "provenance": {"source": "legseg-train",
                                "recipe": f"tools/train_default_models.py {args.region} "
                                          f"(run {run.name}; the exact command is in the card)",
                                "card": f"cards/{spec['id']}.md",
                                "steps": state["step"], "rounds": state["round"],
                                "weights_from": "best" if args.best else "last",
                                "class_balanced": json.loads((run / "train_config.json")
                                                             .read_text())["patch"].get(
                                                                 "class_balanced", False),
                                "fine_tuned_from": ((run / "initial_weights.txt").read_text()
                                                    .strip().replace(str(ROOT) + "/", "")
                                                    if (run / "initial_weights.txt").exists()
                                                    else None),
                                "data_licence": "QMRITools data BSD-3-Clause (c) 2016 "
                                                "Martijn Froeling; UCL data (pseudo-labelled "
                                                "stacks) MIT (c) 2025 Stephen Wastling"}}
    if args.id:
        entry["id"] = args.id
    if args.region != "classifier":  # the app segments at this voxel size by default
        case, _ = region_cases(args.region, args.data)
        entry["provenance"]["training_voxel_size_mm"] = [float(v) for v in case.spacing]
    manifest = write_entry(models, entry)
    print(f"installed {entry['id']}: {len(manifest.entries)} models in {manifest.path}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--no-progress", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("classifier")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--recipe", choices=("v1", "v2"), default="v2",
                   help="v1: the shipped v1 stacks; v2: every real stack, coarser-resolution "
                        "augmentation")
    p.add_argument("--hold-out", default=None,
                   help="v2: leave this acquisition group out (leave-one-group-out fold)")
    for region in ("upper", "lower"):
        p = sub.add_parser(region)
        p.add_argument("--resume", action="store_true")
        p.add_argument("--rounds", type=int, default=80)
        p.add_argument("--max-steps", type=int, default=None)
        p.add_argument("--threads", type=int, default=2,
                       help="TensorFlow threads (1 when two regions train side by side)")
        p.add_argument("--class-balanced", action="store_true",
                       help="foreground patch centres drawn class by class (nnU-Net style)")
        p.add_argument("--init-from", type=Path, default=None,
                       help="start a new run from these weights (fine-tuning)")
        p.add_argument("--run-name", default=None,
                       help="run folder training_runs/<region>-<name> instead of <region>")
        p.add_argument("--hygiene", action="store_true",
                       help="ignore incompletely labelled reference end slices")
        p.add_argument("--stack-ends", type=float, default=0.0,
                       help="probability of an artificial stack end per patch")
        p.add_argument("--pseudolabels", type=Path, default=None,
                       help="also train on the pseudo-labelled stacks in this folder "
                            "(tools/make_pseudolabels.py output)")
        p.add_argument("--pseudo-targets", nargs="+", default=None,
                       help="only these pseudo-labelled stacks (leave one out for validation)")
        p.add_argument("--subjects", action="store_true",
                       help="train on every subject (reference with both legs + the "
                            "pseudo-labelled stacks of --pseudolabels), leaving --hold-out out")
        p.add_argument("--reference-repeat", type=int, default=1,
                       help="with --subjects: draw the reference subject's legs this many times "
                            "as often as a pseudo-labelled leg")
        p.add_argument("--hold-out", default="none",
                       help=f"with --subjects: the subject left out ({', '.join(SUBJECTS[region])}"
                            ") or none (the shipped network)")
        p.set_defaults(region=region)
    p = sub.add_parser("evaluate-new-subjects")
    p.add_argument("region", choices=("upper", "lower"))
    p.add_argument("--models", type=Path, default=None)
    p.add_argument("--pseudolabels", type=Path, default=RUNS / "pseudolabels")
    p = sub.add_parser("evaluate-subject")
    p.add_argument("region", choices=("upper", "lower"))
    p.add_argument("--run-name", required=True)
    p.add_argument("--hold-out", required=True, help="the subject the run left out")
    p.add_argument("--pseudolabels", type=Path, default=RUNS / "pseudolabels")
    p = sub.add_parser("subject-table")
    p.add_argument("region", choices=("upper", "lower"))
    p.add_argument("--prefix", default="loso-", help="fold runs are <region>-<prefix><subject>")
    p = sub.add_parser("evaluate")
    p.add_argument("region", choices=("upper", "lower"))
    p.add_argument("--best", action="store_true")
    p.add_argument("--run-name", default=None)
    p = sub.add_parser("install")
    p.add_argument("region", choices=("upper", "lower", "classifier"))
    p.add_argument("--into", type=Path, default=None,
                   help="models folder to install into (default: models/)")
    p.add_argument("--id", default=None, help="model id (default: the shipped id)")
    p.add_argument("--best", action="store_true")
    p.add_argument("--run-name", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not args.data.is_dir():
        parser.error(f"data folder {args.data} not found")
    handlers = {"classifier": cmd_classifier, "upper": cmd_region, "lower": cmd_region,
                "evaluate": cmd_evaluate, "install": cmd_install,
                "evaluate-new-subjects": cmd_evaluate_new_subjects,
                "evaluate-subject": cmd_evaluate_subject,
                "subject-table": cmd_subject_table}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
