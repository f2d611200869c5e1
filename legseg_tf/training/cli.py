"""``legseg-train``: train, evaluate and install segmentation networks.

Subcommands::

    legseg-train segmentation --image I.nii.gz --labels L.nii.gz [--image ... --labels ...]
                 --table N5_UpperLeg --run-dir DIR [--label-map final] [--split-legs]
                 [--hold-out left|right|none] [--patch Z Y X] [--features F ...]
                 [--batch-size B] [--round-length N] [--rounds R] [--max-steps S]
                 [--augment default|heavy|none] [--target-spacing DZ DY DX]
                 [--seed S] [--resume] [--no-progress]
    legseg-train evaluate --reference REF.nii.gz --prediction PRED.nii.gz
    legseg-train evaluate --run-dir DIR --image I.nii.gz --labels L.nii.gz --table T
                 [--label-map final] [--best]
    legseg-train install --run-dir DIR --models DIR --id ID --role ROLE --table T [--best]

Exit codes: 0 success, 1 failure, 64 usage error.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from legseg_tf.errors import ExitCode

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = ExitCode.OK, ExitCode.FAILED, ExitCode.USAGE
AUGMENTATIONS = ("default", "heavy", "none")

logger = logging.getLogger(__name__)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors exit 64, not argparse's 2
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``legseg-train``; the training options' defaults are those of
    :class:`TrainConfig`, :class:`PatchConfig` and :class:`UNetConfig` (read, not repeated)."""
    from legseg_tf.networks.config import UNetConfig
    from legseg_tf.training.sampling import PatchConfig
    from legseg_tf.training.train import TrainConfig

    parser = _Parser(prog="legseg-train", description="Train and evaluate legseg networks.")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    seg = sub.add_parser("segmentation", help="train a 3-D region network")
    seg.add_argument("--image", type=Path, action="append", required=True)
    seg.add_argument("--labels", type=Path, action="append", required=True)
    seg.add_argument("--table", required=True, help="N5_UpperLeg, N6_LowerLeg or N4_Hip")
    seg.add_argument("--label-map", choices=("final", "none"), default="final",
                     help="'final': labels are Muscles_leg labels, mapped to the table's "
                          "side-less classes; 'none': labels already are training classes")
    seg.add_argument("--run-dir", type=Path, required=True)
    seg.add_argument("--split-legs", action="store_true",
                     help="split each case at the inter-leg valley into two legs")
    seg.add_argument("--hold-out", choices=("left", "right", "none"), default="none",
                     help="with --split-legs: validate on this leg of every case")
    seg.add_argument("--patch", type=int, nargs=3, default=PatchConfig.patch_size)
    seg.add_argument("--features", type=int, nargs="+", default=UNetConfig.features)
    seg.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    seg.add_argument("--round-length", type=int, default=TrainConfig.round_length)
    seg.add_argument("--rounds", type=int, default=TrainConfig.rounds)
    seg.add_argument("--max-steps", type=int, default=None)
    seg.add_argument("--validation-patches", type=int, default=TrainConfig.validation_patches)
    seg.add_argument("--augment", choices=AUGMENTATIONS, default="default",
                     help="'default' = TrainConfig's augmentation")
    seg.add_argument("--target-spacing", type=float, nargs=3, default=None)
    seg.add_argument("--dropout", type=float, default=UNetConfig.dropout_rate)
    seg.add_argument("--seed", type=int, default=TrainConfig.seed)
    seg.add_argument("--threads", type=int, default=TrainConfig.threads)
    seg.add_argument("--class-balanced", action="store_true",
                     help="foreground patch centres drawn class by class (small muscles seen "
                          "as often as large ones)")
    seg.add_argument("--init-from", type=Path, default=None,
                     help="start from these weights (same architecture; fine-tuning)")
    seg.add_argument("--ignore-incomplete", action="store_true",
                     help="reference slices at the stack ends that label far less muscle-like "
                          "tissue than the stack's typical slice are not trusted: their "
                          "unlabelled body voxels are ignored in loss and validation")
    seg.add_argument("--stack-ends", type=float, default=PatchConfig.stack_end_probability,
                     metavar="P",
                     help="probability of an artificial stack end per patch (slices beyond a "
                          "random plane emptied and ignored), so that a stack border is not "
                          "learned as 'no muscle'")
    seg.add_argument("--resume", action="store_true")
    seg.add_argument("--no-progress", action="store_true")

    ev = sub.add_parser("evaluate", help="Dice and HD95 per label")
    ev.add_argument("--reference", type=Path)
    ev.add_argument("--prediction", type=Path)
    ev.add_argument("--run-dir", type=Path)
    ev.add_argument("--image", type=Path)
    ev.add_argument("--labels", type=Path)
    ev.add_argument("--table")
    ev.add_argument("--label-map", choices=("final", "none"), default="final")
    ev.add_argument("--best", action="store_true", help="use best.weights.h5 of the run")
    ev.add_argument("--ignore-incomplete", action="store_true",
                    help="leave incompletely labelled end slices of the reference out of the "
                         "scores (as in training)")
    ev.add_argument("--output", type=Path, help="also write the JSON report here")

    ins = sub.add_parser("install", help="copy a trained network into a models folder")
    ins.add_argument("--run-dir", type=Path, required=True)
    ins.add_argument("--models", type=Path, required=True)
    ins.add_argument("--id", required=True)
    ins.add_argument("--role", required=True, choices=("upper_leg", "lower_leg", "hip"))
    ins.add_argument("--table", required=True)
    ins.add_argument("--best", action="store_true")
    return parser


def _augmentation(name: str):
    from legseg_tf.training.augmentation import (
        HEAVY_AUGMENTATION,
        NO_AUGMENTATION,
        AugmentConfig,
    )

    return {"default": AugmentConfig(), "heavy": HEAVY_AUGMENTATION,
            "none": NO_AUGMENTATION}[name]


def _load_cases(images: Sequence[Path], labels: Sequence[Path], table: str, label_map: str,
                target_spacing):
    from legseg_tf.training.data import (
        crop_to_body,
        final_to_training_map,
        load_case,
        resample_case,
    )

    mapping = final_to_training_map(table) if label_map == "final" else None
    cases = []
    for image, label in zip(images, labels):
        case = load_case(image, label, label_map=mapping)
        if target_spacing is not None:
            case = resample_case(case, tuple(target_spacing))
        cases.append(crop_to_body(case))
    return cases


def _cmd_segmentation(args) -> int:
    from legseg_tf.labels import TRAIN_TABLES
    from legseg_tf.training.data import ignore_incomplete_slices, split_legs
    from legseg_tf.training.train import train

    if len(args.image) != len(args.labels):
        raise ValueError("give one --labels per --image")
    if args.table not in TRAIN_TABLES:
        raise ValueError(f"--table must be one of {sorted(TRAIN_TABLES)}")
    if args.hold_out != "none" and not args.split_legs:
        raise ValueError("--hold-out needs --split-legs")
    cases = _load_cases(args.image, args.labels, args.table, args.label_map,
                        args.target_spacing)
    if args.split_legs:
        legs = [leg for case in cases for leg in split_legs(case)]
        if args.ignore_incomplete:
            legs = [ignore_incomplete_slices(leg) for leg in legs]
        held = {"left": "L", "right": "R"}.get(args.hold_out)
        training = [leg for leg in legs if leg.side != held]
        validation = [leg for leg in legs if leg.side == held] or training
    else:
        if args.ignore_incomplete:
            cases = [ignore_incomplete_slices(case) for case in cases]
        training = validation = cases
    config = _train_config(args, len(TRAIN_TABLES[args.table]) + 1)
    result = train(config, training, validation, args.run_dir, resume=args.resume,
                   progress=not args.no_progress, max_steps=args.max_steps,
                   initial_weights=args.init_from)
    print(json.dumps({"run_dir": str(result.run_dir), "step": result.state.step,
                      "round": result.state.round, "last": result.last_row}, indent=1))
    return EXIT_OK


def _train_config(args, n_classes: int):
    """The :class:`TrainConfig` of a ``segmentation`` command line (``n_classes`` with
    background)."""
    from legseg_tf.networks.config import UNetConfig
    from legseg_tf.training.sampling import PatchConfig
    from legseg_tf.training.train import TrainConfig

    features = tuple(args.features)
    network = UNetConfig(n_classes=n_classes, features=features,
                         downsample=_downsample(len(features)), dropout_rate=args.dropout)
    patch = PatchConfig(patch_size=tuple(args.patch), class_balanced=args.class_balanced,
                        stack_end_probability=args.stack_ends)
    return TrainConfig(network=network, patch=patch,
                       augmentation=_augmentation(args.augment), batch_size=args.batch_size,
                       round_length=args.round_length, rounds=args.rounds,
                       validation_patches=args.validation_patches, seed=args.seed,
                       threads=args.threads)


def _downsample(depth: int) -> tuple[tuple[int, int, int], ...]:
    """QMRITools schedule for ``depth`` levels: alternate (2,2,2)/(1,2,2), last all ones.

    Depth 5 gives the QMRITools default ((2,2,2),(1,2,2),(2,2,2),(1,2,2),(1,1,1)).
    """
    pattern = [(2, 2, 2), (1, 2, 2)]
    return tuple(pattern[i % 2] for i in range(depth - 1)) + ((1, 1, 1),)


def _cmd_evaluate(args) -> int:
    from legseg_tf.training.evaluate import compare_label_files, evaluate_case

    if args.reference and args.prediction:
        report = compare_label_files(args.reference, args.prediction)
    elif args.run_dir and args.image and args.labels and args.table:
        from legseg_tf.networks.config import UNetConfig
        from legseg_tf.training.train import BEST_WEIGHTS, CHECKPOINT_DIR, WEIGHTS_NAME

        config = UNetConfig.from_json((args.run_dir / "network.json").read_text())
        train_config = json.loads((args.run_dir / "train_config.json").read_text())
        patch = tuple(train_config["patch"]["patch_size"])
        weights = (args.run_dir / BEST_WEIGHTS if args.best
                   else args.run_dir / CHECKPOINT_DIR / WEIGHTS_NAME)
        case = _load_cases([args.image], [args.labels], args.table, args.label_map, None)[0]
        if args.ignore_incomplete:
            from legseg_tf.training.data import ignore_incomplete_slices

            case = ignore_incomplete_slices(case)
        report = evaluate_case(config, weights, case, args.table, patch)
    else:
        raise ValueError("evaluate needs --reference and --prediction, or --run-dir, --image, "
                         "--labels and --table")
    text = json.dumps(report, indent=1)
    if args.output:
        from legseg_tf.derivatives import atomic_write_text

        atomic_write_text(args.output, text)
    summary = report["summary"]
    print(f"mean Dice (labels in the reference): {summary['mean_dice_reference_labels']:.4f}")
    for name, row in summary["per_label"].items():
        print(f"{row['label']:>4} {name:<32} Dice {row['dice']:.4f}  HD95 {row['hd95_mm']} mm")
    return EXIT_OK


def _cmd_install(args) -> int:
    from legseg_tf.derivatives import atomic_write
    from legseg_tf.model_store import write_entry
    from legseg_tf.training.train import BEST_WEIGHTS, CHECKPOINT_DIR, WEIGHTS_NAME

    state = json.loads((args.run_dir / CHECKPOINT_DIR / "state.json").read_text())
    weights = (args.run_dir / BEST_WEIGHTS if args.best
               else args.run_dir / CHECKPOINT_DIR / WEIGHTS_NAME)
    args.models.mkdir(parents=True, exist_ok=True)
    for source, name in ((args.run_dir / "network.json", f"{args.id}.json"),
                         (weights, f"{args.id}.weights.h5")):
        atomic_write(args.models / name, lambda tmp, source=source: shutil.copyfile(source, tmp))
    manifest = write_entry(args.models, {
        "id": args.id, "role": args.role, "config": f"{args.id}.json",
        "weights": f"{args.id}.weights.h5", "label_table": args.table,
        "provenance": {"source": "legseg-train", "run_dir": str(args.run_dir),
                       "steps": state["step"], "rounds": state["round"],
                       "weights_from": "best" if args.best else "last"}})
    print(f"installed {args.id} ({args.role}); {len(manifest.entries)} model(s) in "
          f"{manifest.path}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``legseg-train`` with ``argv`` (without the program name); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as stop:
        return int(stop.code) if isinstance(stop.code, int) else EXIT_USAGE
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else
                        logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    handlers = {"segmentation": _cmd_segmentation, "evaluate": _cmd_evaluate,
                "install": _cmd_install}
    try:
        return handlers[args.command](args)
    except ValueError as error:
        print(f"legseg-train: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, RuntimeError, FileExistsError) as error:
        print(f"legseg-train: {error}", file=sys.stderr)
        return EXIT_FAILURE


def main_entry() -> None:
    """Console-script entry point."""
    sys.exit(main(sys.argv[1:]))
