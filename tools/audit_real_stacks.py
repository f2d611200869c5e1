#!/usr/bin/env python
"""Run the app on every real stack in ../shared and audit what a user would see.

Each stack becomes one participant of a temporary BIDS dataset (links to ../shared, nothing
copied), the participant level runs once over all of them (``--region legs`` unless
``--region`` says otherwise) and every label map is checked against the anatomy known per
slice (the positions of ``tools/train_default_models.py``: Join stacks by look, calves Lower,
thighs Upper, the top of the QMRITools thigh Hip):

* **wrong region**: muscle voxels of a region the slice does not belong to
  (:data:`legseg_tf.qc_flags.POSITION_LABEL_REGIONS`; knee slices may hold calf and thigh
  muscles, hip slices thigh and hip muscles). A slice counts when such voxels make up at
  least 1 % of its muscle voxels.
* **stack ends**: labelled share of muscle-like tissue (body voxels within the intensity
  range of the labelled ones; :func:`legseg_tf.training.data.labelled_fraction_per_slice`)
  in the first and last 3 slices over the median of the middle half. Checked at ends whose
  slices are thigh or calf anatomy (not knee, hip or the foot stack Join_1) and where the
  stack's reference has muscle labels on any of those slices (QMRITools' ``out.nii.gz``, the
  manual calf labels, or the pseudo-labels of ``tools/make_pseudolabels.py`` outside their
  ignore mask; stacks without one are reported, not checked); the target is >= 0.70.
* the app's own QC flags (sidecar ``legseg.qc``), and the mean Dice per side against the
  stack's reference where it is in the app's numbering (``out.nii.gz``, pseudo-labels; not
  the manual calf labels): a fit where the stack was training data, a new-subject figure
  where it was not (the GE thigh has pseudo-labels but is no training data).

    python tools/audit_real_stacks.py [--models DIR] [--out audit.json] [--region legs]

Prints one line per stack and writes the figures as JSON.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS.parent))
sys.path.insert(0, str(TOOLS))

import train_default_models as recipe  # noqa: E402

from legseg_tf.labels import BY_INDEX  # noqa: E402
from legseg_tf.qc_flags import MUSCLE_REGIONS, POSITION_LABEL_REGIONS  # noqa: E402

logger = logging.getLogger("audit_real_stacks")

END_SLICES = 3
END_TARGET = 0.70
#: Share of a slice's muscle voxels above which wrong-region voxels count for that slice.
WRONG_SHARE = 0.01
#: Positions whose end slices must be labelled (muscle bellies run through the end slice).
BELLY_POSITIONS = ("Upper", "Lower")
#: Participants whose ends are not checked: Join_1 (``join1``) is the foot and ankle (tendons,
#: no calf bellies).
NO_END_CHECK = ("join1",)


#: Participant label -> pseudo-label target of ``tools/make_pseudolabels.py``.
PSEUDO_TARGETS = {"join2": "Join_2", "join3": "Join_3", "join4": "Join_4", "join5": "Join_5",
                  "join6": "Join_6", "join7": "Join_7", "calfwater": "demo_water",
                  "thighucl": "ucl_siemens_thigh", "thighge": "ucl_ge_thigh",
                  "calfucl": "ucl_calf"}


def reference_muscle_slices(label: str, data: Path, pseudolabels: Path) -> np.ndarray | None:
    """(z,) bool: slices on which the stack's reference has muscle labels (ignored voxels
    excluded); None when the stack has no reference."""
    reference = load_reference(label, data, pseudolabels)
    if reference is None:
        return None
    labels, ignore = reference
    if label == "calftwolegs":
        muscle = labels > 0
    else:
        muscle = np.any(list(muscle_regions_map(labels).values()), axis=0)
    if ignore is not None:
        muscle &= ~ignore
    return muscle.reshape(muscle.shape[0], -1).any(axis=1)


def load_reference(label: str, data: Path, pseudolabels: Path):
    """``(labels (z, y, x) int32, ignore (z, y, x) bool or None)`` of the stack's reference,
    or None. The manual calf labels keep their own numbering (13..26); the others are in the
    Muscles_leg numbering of the app's output."""
    from legseg_tf.training.data import load_volume

    q = data / "qmritools"
    ignore = None
    if label == "thighqmritools":
        labels, _ = load_volume(q / "scripts_test_data" / "out.nii.gz")
    elif label == "calftwolegs":
        labels, _ = load_volume(q / "DemoData" / "labels.nii.gz")  # 13..26, all muscles
    elif label in PSEUDO_TARGETS and (pseudolabels / PSEUDO_TARGETS[label]).is_dir():
        folder = pseudolabels / PSEUDO_TARGETS[label]
        labels, _ = load_volume(folder / "labels.nii.gz")
        ignore, _ = load_volume(folder / "ignore.nii.gz")
    else:
        return None
    return np.rint(labels).astype(np.int32), (None if ignore is None else ignore >= 0.5)


def reference_dice(labels: np.ndarray, reference: np.ndarray,
                   ignore: np.ndarray | None) -> dict[str, float]:
    """Mean Dice per side ("R", "L") over the muscles present in ``reference`` (both in the
    Muscles_leg numbering), ignored voxels left out of both maps."""
    from legseg_tf.training.metrics import dice

    if ignore is not None:
        labels, reference = np.where(ignore, 0, labels), np.where(ignore, 0, reference)
    per_side: dict[str, list[float]] = {"R": [], "L": []}
    for value in np.unique(reference):
        entry = BY_INDEX.get(int(value))
        if value and entry is not None and entry.region in MUSCLE_REGIONS and entry.side:
            per_side[entry.side].append(dice(reference == value, labels == value))
    return {side: round(float(np.mean(v)), 3) for side, v in per_side.items() if v}


def real_stacks(data: Path) -> dict[str, tuple[Path, list[str]]]:
    """Participant label -> (stack path, per-slice positions), every real stack once (the
    UCL/GE thighs at TE 3.45 ms; the DemoData fat image is the water image's twin)."""
    q = data / "qmritools"
    stacks = {}
    for name, ranges in recipe.JOIN_POSITIONS.items():
        stacks[name.replace("_", "").lower()] = (q / "DemoData" / f"{name}.nii.gz", ranges)
    stacks["calftwolegs"] = (q / "DemoData" / "twoLegs.nii.gz", [(0, 99, "Lower")])
    stacks["calfwater"] = (q / "DemoData" / "water.nii.gz", [(0, 99, "Lower")])
    stacks["thighqmritools"] = (q / "scripts_test_data" / "test.nii.gz",
                                [(0, 27, "Upper"), (28, 99, "Hip")])
    stacks["thighucl"] = (data.joinpath(*recipe.UCL, "0006-Dixon_TE_345_th.nii.gz"),
                          [(0, 99, "Upper")])
    stacks["thighge"] = (data.joinpath(*recipe.GE, "40006-ORIG_DIXON_TE_345_TH-0000.nii.gz"),
                         [(0, 99, "Upper")])
    stacks["calfucl"] = (data / "swastling_musclemap" / "t2" / "input"
                         / "0007-Dixon_TE_345_cf.nii.gz", [(0, 99, "Lower")])
    return stacks


def positions_per_slice(ranges, nz: int) -> list[str]:
    out = [""] * nz
    for first, last, name in ranges:
        for z in range(first, min(last, nz - 1) + 1):
            out[z] = name
    return out


def write_dataset(root: Path, stacks: dict) -> None:
    """A raw BIDS dataset of links: ``sub-<label>/anat/sub-<label>_T1w.nii.gz``."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "legseg audit of the real stacks", "BIDSVersion": "1.10.0"}))
    for label, (path, _) in stacks.items():
        anat = root / f"sub-{label}" / "anat"
        anat.mkdir(parents=True)
        (anat / f"sub-{label}_T1w.nii.gz").symlink_to(path)


def muscle_regions_map(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean (z, y, x) maps of the muscle voxels of each muscle region."""
    out = {}
    for region in MUSCLE_REGIONS:
        values = [k for k, v in BY_INDEX.items() if v.region == region]
        out[region] = np.isin(labels, values)
    return out


def audit_stack(label: str, image: np.ndarray, labels: np.ndarray, spacing,
                positions: list[str], reference_slices: np.ndarray | None = None) -> dict:
    """Wrong-region slices and stack-end shares of one label map (canonical (z, y, x))."""
    from legseg_tf.training.data import TrainingCase, labelled_fraction_per_slice

    by_region = muscle_regions_map(labels)
    muscle = np.any(list(by_region.values()), axis=0)
    wrong = []
    for z, position in enumerate(positions):
        allowed = POSITION_LABEL_REGIONS.get(position)
        total = int(muscle[z].sum())
        if allowed is None or total == 0:
            continue
        bad = sum(int(m[z].sum()) for region, m in by_region.items() if region not in allowed)
        if bad >= WRONG_SHARE * total:
            wrong.append({"slice": z, "position": position, "voxels": bad,
                          "share": round(bad / total, 3)})
    case = TrainingCase(label, image.astype(np.float32), muscle.astype(np.int32),
                        tuple(float(s) for s in spacing))
    shares, _ = labelled_fraction_per_slice(case)
    nz = shares.size
    middle = float(np.median(shares[nz // 4: nz - nz // 4])) if nz >= 4 else float("nan")
    ends = {}
    for end, block in (("first", slice(0, END_SLICES)), ("last", slice(nz - END_SLICES, nz))):
        checked = (nz >= 2 * END_SLICES + 2 and label not in NO_END_CHECK
                   and all(p in BELLY_POSITIONS for p in positions[block])
                   and reference_slices is not None and bool(reference_slices[block].any()))
        ratio = float(np.mean(shares[block])) / middle if middle > 0 else 0.0
        ends[end] = {"ratio": round(ratio, 3), "checked": checked,
                     "ok": (not checked) or ratio >= END_TARGET}
    return {"slices": nz, "middle_share": round(middle, 3),
            "per_slice_share": [round(float(v), 3) for v in shares],
            "wrong_region_slices": wrong, "ends": ends}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=recipe.DEFAULT_DATA)
    parser.add_argument("--models", type=Path, default=recipe.MODELS)
    parser.add_argument("--region", default="legs")
    parser.add_argument("--out", type=Path, default=None, help="write the figures here (JSON)")
    parser.add_argument("--only", nargs="+", default=None, help="these participant labels only")
    parser.add_argument("--pseudolabels", type=Path, default=recipe.RUNS / "pseudolabels",
                        help="tools/make_pseudolabels.py output (the stacks' references)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from legseg_tf.cli import main as legseg
    from legseg_tf.training.data import load_volume

    stacks = real_stacks(args.data)
    if args.only:
        stacks = {k: v for k, v in stacks.items() if k in args.only}
    report = {"models": str(args.models), "region": args.region, "stacks": {}}
    with tempfile.TemporaryDirectory(prefix="legseg-audit-") as tmp:
        bids, out = Path(tmp) / "bids", Path(tmp) / "out"
        write_dataset(bids, stacks)
        query = Path(tmp) / "filter.json"
        query.write_text(json.dumps({"datatype": "anat", "suffix": "T1w"}))
        code = legseg([str(bids), str(out), "participant", "--models", str(args.models),
                       "--region", args.region, "--skip_bids_validator",
                       "--bids-filter-file", str(query)])
        report["exit_code"] = code
        for label, (path, ranges) in stacks.items():
            anat = out / f"sub-{label}" / "anat"
            found = sorted(anat.glob("*_dseg.nii.gz")) if anat.is_dir() else []
            if not found:
                report["stacks"][label] = {"error": "no label map written"}
                continue
            image, spacing = load_volume(path)  # (z, y, x), slice 0 most inferior
            labels, _ = load_volume(found[0])
            positions = positions_per_slice(ranges, image.shape[0])
            labels = np.rint(labels).astype(np.int32)
            entry = audit_stack(label, image, labels, spacing, positions,
                                reference_muscle_slices(label, args.data, args.pseudolabels))
            reference = load_reference(label, args.data, args.pseudolabels)
            if reference is not None and label != "calftwolegs":
                entry["dice_vs_reference"] = reference_dice(labels, *reference)
            sidecar = json.loads(found[0].with_name(
                found[0].name.replace(".nii.gz", ".json")).read_text())
            qc = sidecar.get("legseg", {}).get("qc") or {}
            entry["app_flags"] = sorted({f.get("code") for f in qc.get("flags", [])})
            report["stacks"][label] = entry
    print(f"{'stack':<16} {'slices':>6} {'middle':>6} {'first3':>7} {'last3':>7} "
          f"{'wrong-region slices':<22} {'Dice R/L':<11} app flags")
    for label, entry in report["stacks"].items():
        if "error" in entry:
            print(f"{label:<16} {entry['error']}")
            continue
        ends = [f"{e['ratio']:.2f}{'' if e['checked'] else '*'}{'' if e['ok'] else '!'}"
                for e in entry["ends"].values()]
        wrong = ",".join(str(w["slice"]) for w in entry["wrong_region_slices"]) or "-"
        dice = entry.get("dice_vs_reference", {})
        dice = "/".join(f"{dice[s]:.2f}" for s in ("R", "L") if s in dice) or "-"
        print(f"{label:<16} {entry['slices']:>6} {entry['middle_share']:>6.2f} {ends[0]:>7} "
              f"{ends[1]:>7} {wrong:<22} {dice:<11} {' '.join(entry['app_flags']) or '-'}")
    print("(* end not checked: knee/hip/foot slices or no reference labels there; "
          "! below the 0.70 target)")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return 0 if code == 0 else code


if __name__ == "__main__":
    sys.exit(main())
