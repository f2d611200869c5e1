#!/usr/bin/env python
"""Pseudo-labels for the unlabelled real stacks by multi-atlas registration.

Carries the two labelled reference subjects onto every other real stack in ``../shared/data``
(relative to the repository root; override with ``--data``) and writes, per target, a fused
label map in the ``Muscles_leg`` numbering with an agreement map, an ignore mask, a QC montage
and agreement tables into ``training_runs/pseudolabels/`` (git-ignored; override with ``--out``)::

    python tools/make_pseudolabels.py                       # all targets, ~6 min (1 thread)
    python tools/make_pseudolabels.py --targets Join_6 ucl_calf
    python tools/make_pseudolabels.py --list                # the targets and their slabs

Needs the ``tools`` extra (``pip install -e .[tools]``: SimpleITK). Method and limits are in
``docs/pseudolabels.md``. In short:

* Atlases. Thigh: ``scripts_test_data/test.nii.gz`` with QMRITools' automatic
  ``out.nii.gz`` (already in the Muscles_leg numbering; its incomplete end slices become
  "ignore"). Calf: ``DemoData/twoLegs.nii.gz`` with the manual ``labels.nii.gz`` (read on the
  twoLegs grid by shape; 13..26 mapped to muscle names by ``CALF_LABELS`` of
  ``tools/train_default_models.py``). Each atlas is split into its two legs, and each leg is
  also mirrored (array flip along the RAS x axis, side labels swapped odd <-> even), so every
  target leg gets two atlases of the same side: the atlas leg of that side and the mirrored
  opposite leg.
* Sides come from the affine only: images are loaded as canonical RAS arrays
  (``legseg_tf.nifti_io``), the legs are split at the inter-leg valley
  (``legseg_tf.split.find_middle``) and the leg at higher RAS x is the patient's Right.
* Registration per (atlas leg, target leg), in physical space (RAS mm, so the 1.5 x 1.5 x 6 mm
  and 0.8 x 0.8 x 20 mm grids need no special case): body-mask moments + in-plane size for the
  start, an exhaustive search over the superior-inferior offset, then affine and B-spline
  stages with Mattes mutual information (contrasts differ), two resolution levels each.
  Labels are carried with nearest neighbour; target voxels that map outside an atlas's field
  of view or onto its "ignore" voxels get no vote from that atlas.
* Fusion by majority vote: a voxel keeps the winning label (background included) when more
  than ``--min-agreement`` (default 0.5) of *all* atlases vote for it; otherwise it is ignored.
  With two atlases per leg that means both must be valid and agree.

Array conventions: RAS arrays are (x, y, z) with larger index = patient's right / anterior /
superior; voxel sizes in mm. Registration is deterministic for a given ``--seed`` and
``--threads`` (ITK's multi-threaded sums depend on the thread count).

Data (QMRITools, BSD-3-Clause, (c) 2016 Martijn Froeling; Froeling, JOSS 2019, 4:1204;
swastling_musclemap fixtures, MIT, (c) 2025 Stephen Wastling). The outputs are derived from
them; keep the notices with them.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from legseg_tf.labels import BY_INDEX, LABELS, train_label_map  # noqa: E402
from legseg_tf.masking import body_mask  # noqa: E402
from legseg_tf.nifti_io import (  # noqa: E402
    Geometry,
    from_ras,
    load_canonical,
    qmri_to_ras,
    ras_to_qmri,
    save_array,
    save_labels,
    to_ras,
)
from legseg_tf.split import find_middle  # noqa: E402

logger = logging.getLogger("make_pseudolabels")

DEFAULT_DATA = ROOT.parent / "shared" / "data"
DEFAULT_OUT = ROOT / "training_runs" / "pseudolabels"

#: Label value of "no information" inside atlas and propagated label arrays.
IGNORE = 65535

#: Slices of ``out.nii.gz`` (0 = most inferior) that QMRITools labelled completely, per side;
#: the rest of that leg is "ignore" (shared data README: left complete from z >= 7, right from
#: z >= 3, both taper from z ~ 22 upward).
THIGH_COMPLETE_SLICES = {"L": (7, 21), "R": (3, 21)}


@dataclass(frozen=True)
class TargetSpec:
    """One unlabelled real stack.

    Attributes:
        name: short identifier (output folder name).
        image: path relative to the data folder of the image registered to.
        region: "thigh" or "calf": which atlas is used.
        slices: inclusive (first, last) slice range, RAS z (0 = most inferior), showing that
            region; other slices are "ignore".
        note: provenance note (contrast, subject, anything special).
        also_applies_to: other files on the same grid (same voxels) the labels are valid for.
    """

    name: str
    image: str
    region: str
    slices: tuple[int, int]
    note: str = ""
    also_applies_to: tuple[str, ...] = ()


_Q = "qmritools/DemoData"
_U = "swastling_musclemap"

#: Targets and the slabs showing each region, chosen by looking at axial slices of each stack
#: (the Join stacks run foot -> hip; Join_1 is foot/ankle, which no atlas covers).
TARGETS: dict[str, TargetSpec] = {spec.name: spec for spec in (
    TargetSpec("Join_2", f"{_Q}/Join_2.nii.gz", "calf", (12, 30),
               "distal calf; slices 0-11 are ankle (ignored); water-like contrast"),
    TargetSpec("Join_3", f"{_Q}/Join_3.nii.gz", "calf", (0, 30), "calf; water-like contrast"),
    TargetSpec("Join_4", f"{_Q}/Join_4.nii.gz", "calf", (0, 13),
               "proximal calf; slices 14-30 are the knee (ignored); water-like contrast"),
    TargetSpec("Join_5", f"{_Q}/Join_5.nii.gz", "thigh", (5, 30),
               "distal thigh; slices 0-4 are the knee (ignored); water-like contrast"),
    TargetSpec("Join_6", f"{_Q}/Join_6.nii.gz", "thigh", (0, 30), "thigh; water-like contrast"),
    TargetSpec("Join_7", f"{_Q}/Join_7.nii.gz", "thigh", (0, 5),
               "proximal thigh; slices 6-30 are hip/pelvis (ignored); water-like contrast"),
    TargetSpec("ucl_siemens_thigh",
               f"{_U}/ff/siemens/thigh/input/0006-Dixon_TE_345_th.nii.gz", "thigh", (0, 9),
               "UCL Siemens 3 T, out-of-phase magnitude TE 3.45 ms (the atlas's contrast)",
               ("ff/siemens/thigh/input/0008-Dixon_TE_460_th.nii.gz",
                "ff/siemens/thigh/input/0010-Dixon_TE_575_th.nii.gz")),
    TargetSpec("ucl_ge_thigh",
               f"{_U}/ff/ge/thigh_masked/input/40006-ORIG_DIXON_TE_345_TH-0000.nii.gz",
               "thigh", (0, 9), "UCL GE 3 T, out-of-phase magnitude TE 3.45 ms",
               ("ff/ge/thigh_masked/input/40007-ORIG_DIXON_TE_460_TH-0000.nii.gz",
                "ff/ge/thigh_masked/input/40008-ORIG_DIXON_TE_575_TH-0000.nii.gz")),
    TargetSpec("ucl_calf", f"{_U}/t2/input/0007-Dixon_TE_345_cf.nii.gz", "calf", (0, 9),
               "UCL Siemens 3 T calf, out-of-phase magnitude TE 3.45 ms"),
    TargetSpec("demo_water", f"{_Q}/water.nii.gz", "calf", (0, 22),
               "Dixon water of the SAME subject as the calf atlas (twoLegs): not a new subject; "
               "a check of the registration rather than new anatomy",
               (f"{_Q}/fat.nii.gz",)),
)}


@dataclass(frozen=True)
class RegistrationSettings:
    """Registration parameters (lengths in mm).

    Resolution levels are in-plane voxel sizes: the target leg is resampled to each in turn
    (through-plane spacing kept, so 6 mm and 20 mm slices are never merged), and the metric is
    smoothed with a Gaussian of half that size on the coarser levels.

    Attributes:
        search_grid_mm: in-plane voxel size of the superior-inferior offset search.
        search_step_mm: step of that search.
        search_min_overlap: least overlap, as a fraction of the shorter stack, of a tried offset.
        search_size_factors: in-plane size factors tried on top of the body-area ratio.
        bins: Mattes mutual-information histogram bins.
        sampling: fraction of fixed voxels sampled per metric evaluation (random, seeded).
        affine_levels_mm: in-plane voxel sizes of the affine stage's levels.
        affine_iterations: iterations per level of the affine stage.
        bspline_levels_mm: in-plane voxel sizes of the B-spline stage's levels.
        bspline_mesh_mm: B-spline control-point spacing (x, y, z).
        bspline_iterations: iterations per level of the B-spline stage (0 skips it).
        jacobian_limits: the B-spline is discarded (affine kept) when the 1st / 99th
            percentile of its Jacobian determinant inside the leg falls outside these.
        mask_dilation_mm: the fixed leg mask restricting the metric is dilated this much.
    """

    search_grid_mm: float = 5.0
    search_step_mm: float = 6.0
    search_min_overlap: float = 0.6
    search_size_factors: tuple[float, ...] = (0.75, 0.85, 1.0, 1.1)
    bins: int = 32
    sampling: float = 0.1
    affine_levels_mm: tuple[float, ...] = (6.0, 4.0)
    affine_iterations: int = 80
    bspline_levels_mm: tuple[float, ...] = (4.0,)
    bspline_mesh_mm: tuple[float, float, float] = (45.0, 45.0, 60.0)
    bspline_iterations: int = 40
    jacobian_limits: tuple[float, float] = (0.4, 2.5)
    mask_dilation_mm: float = 6.0


# ---------------------------------------------------------------------------------------------
# Pure label logic


def side_swap_lookup() -> dict[int, int]:
    """Label -> label of the same structure on the other side (Muscles_leg table).

    Sided labels pair up by name (odd = Left, even = Right); side-less labels map to
    themselves.
    """
    by_name: dict[str, dict[str, int]] = {}
    for label in LABELS:
        by_name.setdefault(label.name, {})[label.side] = label.index
    swap: dict[int, int] = {}
    for label in LABELS:
        if label.side == "L":
            swap[label.index] = by_name[label.name].get("R", label.index)
        elif label.side == "R":
            swap[label.index] = by_name[label.name].get("L", label.index)
        else:
            swap[label.index] = label.index
    return swap


def swap_sides(labels: np.ndarray) -> np.ndarray:
    """Swap Left and Right labels (odd <-> even of one structure); 0 and IGNORE are kept.

    Raises:
        ValueError: a value that is neither 0, IGNORE nor in the Muscles_leg table.
    """
    labels = np.asarray(labels)
    values = np.unique(labels)
    unknown = [int(v) for v in values if v not in (0, IGNORE) and int(v) not in BY_INDEX]
    if unknown:
        raise ValueError(f"labels not in the Muscles_leg table: {unknown}")
    out = labels.copy()
    swap = side_swap_lookup()
    for value in values:
        if int(value) in swap:
            out[labels == value] = swap[int(value)]
    return out


def mirror_leg(image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror a (x, y, z) RAS leg left <-> right: flip the x axis and swap the side labels.

    The mirrored leg keeps its crop's affine, i.e. it is reflected about the crop's mid
    sagittal plane, and looks like (and is labelled as) a leg of the other side.
    """
    return (np.ascontiguousarray(image[::-1]),
            swap_sides(np.ascontiguousarray(labels[::-1])))


def label_sides(labels: np.ndarray) -> dict[str, int]:
    """Voxel counts of Left, Right and side-less labels (0 and IGNORE not counted)."""
    labels = np.asarray(labels)
    counts = {"L": 0, "R": 0, "": 0}
    values, n = np.unique(labels, return_counts=True)
    for value, count in zip(values, n):
        label = BY_INDEX.get(int(value))
        if label is not None:
            counts[label.side] += int(count)
    return counts


def fuse_votes(votes: np.ndarray, min_agreement: float = 0.5
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Majority-vote fusion of propagated atlas labels.

    Args:
        votes: (n_atlases, ...) integer labels; ``IGNORE`` = that atlas has no vote there.
        min_agreement: a label is kept where the fraction of *all* atlases voting for it is
            above this value (0.5: strict majority; atlases without a vote count against).

    Returns:
        ``(fused, agreement, ignore)`` over the trailing shape: ``fused`` uint16 winning label
        (0 where ignored), ``agreement`` float32 fraction of all atlases voting for the
        winning label, ``ignore`` bool where no label reaches the agreement.
    """
    votes = np.asarray(votes)
    if votes.ndim < 2 or votes.shape[0] < 1:
        raise ValueError(f"votes must be (n_atlases, ...) with n_atlases >= 1, got {votes.shape}")
    if not 0.0 <= min_agreement < 1.0:
        raise ValueError(f"min_agreement must be in [0, 1), got {min_agreement}")
    n = votes.shape[0]
    best = np.zeros(votes.shape[1:], dtype=np.int32)
    winner = np.zeros(votes.shape[1:], dtype=np.uint16)
    for value in np.unique(votes):
        if int(value) == IGNORE:
            continue
        count = np.sum(votes == value, axis=0, dtype=np.int32)
        better = count > best
        best[better] = count[better]
        winner[better] = int(value)
    agreement = (best / float(n)).astype(np.float32)
    ignore = agreement <= min_agreement
    fused = np.where(ignore, 0, winner).astype(np.uint16)
    return fused, agreement, ignore


def pairwise_dice(votes: np.ndarray) -> dict[int, tuple[float, int]]:
    """Mean pairwise Dice per label of the atlases' propagated labels.

    Each pair is compared only where both atlases have a vote (neither is IGNORE); pairs in
    which neither has the label are left out of that label's mean.

    Args:
        votes: (n_atlases, ...) integer labels with IGNORE.

    Returns:
        label -> (mean Dice, number of pairs averaged); labels 0 and IGNORE are not listed.
    """
    votes = np.asarray(votes)
    n = votes.shape[0]
    labels = [int(v) for v in np.unique(votes) if int(v) not in (0, IGNORE)]
    sums = {label: [] for label in labels}
    for i in range(n):
        for j in range(i + 1, n):
            both = (votes[i] != IGNORE) & (votes[j] != IGNORE)
            a, b = votes[i][both], votes[j][both]
            for label in labels:
                in_a, in_b = a == label, b == label
                total = int(in_a.sum()) + int(in_b.sum())
                if total:
                    sums[label].append(2.0 * int((in_a & in_b).sum()) / total)
    return {label: (float(np.mean(d)) if d else float("nan"), len(d))
            for label, d in sums.items()}


# ---------------------------------------------------------------------------------------------
# Legs and crops


@dataclass
class Leg:
    """One leg of a stack, cropped, in canonical RAS.

    Attributes:
        name: e.g. "thigh_atlas_R" or "Join_6_L".
        side: patient side, "L" or "R" (from the affine).
        image: (x, y, z) float32 intensities, other leg and background set to 0.
        mask: (x, y, z) bool body mask of this leg.
        affine: RAS voxel-to-world affine of the crop (mm).
        labels: (x, y, z) uint16 Muscles_leg labels with IGNORE (atlases only).
        box: the crop's slices into the full RAS array.
        mirrored: made by :func:`mirror_leg` from the other side's leg.
    """

    name: str
    side: str
    image: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    labels: np.ndarray | None = None
    box: tuple[slice, slice, slice] = (slice(None),) * 3
    mirrored: bool = False
    source_side: str = ""


def ras_body_mask(volume_ras: np.ndarray) -> np.ndarray:
    """Body mask of an (x, y, z) RAS volume (the app's QMRITools-style mask)."""
    return qmri_to_ras(body_mask(ras_to_qmri(volume_ras)).astype(np.uint8)).astype(bool)


def split_columns(volume_ras: np.ndarray, mask_ras: np.ndarray) -> int:
    """RAS x index of the inter-leg cut: x >= cut is the patient's Right leg.

    The cut is found in the QMRITools layout (columns < c = patient's right) by
    :func:`legseg_tf.split.find_middle` and converted: column j <-> x = nx - 1 - j.
    """
    qmri = ras_to_qmri(np.where(mask_ras, volume_ras, 0.0).astype(np.float32))
    cut = find_middle(qmri)
    return volume_ras.shape[0] - cut


def crop_leg(volume: np.ndarray, mask: np.ndarray, affine: np.ndarray, side: str, cut: int,
             name: str, labels: np.ndarray | None = None, pad_mm: float = 10.0) -> Leg:
    """Crop one leg (``side`` of the RAS cut ``cut``) to its mask box + ``pad_mm``."""
    leg_mask = mask.copy()
    if side == "R":
        leg_mask[:cut] = False
    else:
        leg_mask[cut:] = False
    if not leg_mask.any():
        raise ValueError(f"{name}: no body voxels on the {side} side of the cut x={cut}")
    zooms = nib.affines.voxel_sizes(affine)
    coords = np.nonzero(leg_mask)
    box = []
    for axis in range(3):
        pad = int(np.ceil(pad_mm / zooms[axis])) if axis < 2 else 0
        lo = max(int(coords[axis].min()) - pad, 0)
        hi = min(int(coords[axis].max()) + pad + 1, volume.shape[axis])
        box.append(slice(lo, hi))
    box = tuple(box)
    offset = np.array([s.start for s in box], dtype=float)
    crop_affine = affine.copy()
    crop_affine[:3, 3] = affine[:3, :3] @ offset + affine[:3, 3]
    leg_mask = leg_mask[box]
    image = np.where(leg_mask, volume[box], 0.0).astype(np.float32)
    return Leg(name=name, side=side, image=image, mask=leg_mask, affine=crop_affine,
               labels=None if labels is None else labels[box], box=box, source_side=side)


def normalise_intensity(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Scale so that the 95th percentile inside ``mask`` is 1, clip to [0, 1.5], 0 outside."""
    values = image[mask]
    if values.size == 0:
        return np.zeros_like(image, dtype=np.float32)
    top = float(np.percentile(values, 95)) or 1.0
    return np.where(mask, np.clip(image / top, 0.0, 1.5), 0.0).astype(np.float32)


def apply_slab(mask: np.ndarray, slices: tuple[int, int]) -> np.ndarray:
    """``mask`` with everything outside the inclusive z range ``slices`` cleared."""
    out = np.zeros_like(mask)
    lo, hi = max(slices[0], 0), min(slices[1], mask.shape[2] - 1)
    out[:, :, lo:hi + 1] = mask[:, :, lo:hi + 1]
    return out


# ---------------------------------------------------------------------------------------------
# Atlases


def load_thigh_atlas(data: Path) -> list[Leg]:
    """Thigh atlas legs: test.nii.gz + out.nii.gz, incomplete slices set to IGNORE."""
    folder = data / "qmritools" / "scripts_test_data"
    volume, geometry = load_canonical(folder / "test.nii.gz")
    labels, label_geometry = load_canonical(folder / "out.nii.gz")
    if labels.shape != volume.shape or not np.allclose(label_geometry.ras_affine,
                                                       geometry.ras_affine, atol=1e-3):
        raise ValueError("out.nii.gz is not on the grid of test.nii.gz")
    labels = np.rint(labels).astype(np.uint16)
    mask = ras_body_mask(volume) | (labels > 0)
    cut = split_columns(volume, mask)
    legs = []
    for side in ("L", "R"):
        leg = crop_leg(volume, mask, geometry.ras_affine, side, cut, f"thigh_atlas_{side}",
                       labels=labels)
        counts = label_sides(leg.labels)
        other = "R" if side == "L" else "L"
        if counts[other] > 0.01 * max(counts[side], 1):
            raise ValueError(f"thigh atlas: the {side} leg (from the affine) carries "
                             f"{counts[other]} voxels of {other} labels vs {counts[side]}")
        # The few other-side voxels are the other leg's labels reaching over the cut.
        wrong = [label.index for label in LABELS if label.side == other]
        leg.labels = np.where(np.isin(leg.labels, wrong), IGNORE, leg.labels)
        # Ilium in the mid thigh is a misclassification of QMRITools' network: no vote there.
        leg.labels = np.where(np.isin(leg.labels, (101, 102)), IGNORE, leg.labels)
        first, last = THIGH_COMPLETE_SLICES[side]
        z = np.arange(leg.box[2].start, leg.box[2].stop)
        incomplete = (z < first) | (z > last)
        leg.labels[:, :, incomplete] = IGNORE
        legs.append(leg)
    return legs


def load_calf_atlas(data: Path) -> list[Leg]:
    """Calf atlas legs: twoLegs.nii.gz + manual labels.nii.gz mapped to Muscles_leg."""
    if str(ROOT / "tools") not in sys.path:
        sys.path.insert(0, str(ROOT / "tools"))
    from train_default_models import CALF_LABELS

    folder = data / "qmritools" / "DemoData"
    volume, geometry = load_canonical(folder / "twoLegs.nii.gz")
    raw = np.asarray(nib.load(str(folder / "labels.nii.gz")).dataobj)
    if raw.shape[:3] != geometry.shape:
        raise ValueError(f"labels.nii.gz shape {raw.shape} is not the twoLegs shape "
                         f"{geometry.shape}")
    # Read on the twoLegs grid by shape: the label file's own header is not used.
    raw = np.rint(to_ras(raw, geometry.affine)).astype(np.int64)
    unknown = sorted(set(np.unique(raw).tolist()) - set(CALF_LABELS) - {0})
    if unknown:
        raise ValueError(f"labels.nii.gz has values without a name mapping: {unknown}")
    mask = ras_body_mask(volume) | (raw > 0)
    cut = split_columns(volume, mask)
    legs = []
    for side in ("L", "R"):
        lookup = train_label_map("N6_LowerLeg", side)
        final = np.zeros(raw.shape, dtype=np.uint16)
        for value, cls in CALF_LABELS.items():
            final[raw == value] = lookup[cls]
        leg = crop_leg(volume, mask, geometry.ras_affine, side, cut, f"calf_atlas_{side}",
                       labels=final)
        odd = int(np.isin(raw[leg.box] * leg.mask, list(range(13, 27, 2))).sum())
        even = int(np.isin(raw[leg.box] * leg.mask, list(range(14, 27, 2))).sum())
        logger.info("calf atlas %s leg: %d voxels of odd source labels, %d of even", side,
                    odd, even)
        legs.append(leg)
    return legs


def atlases_for_side(legs: list[Leg], side: str) -> list[Leg]:
    """The atlas legs of ``side``: the leg of that side and the other leg mirrored."""
    out = []
    for leg in legs:
        if leg.side == side:
            out.append(leg)
        else:
            image, labels = mirror_leg(leg.image, leg.labels)
            out.append(replace(leg, name=f"{leg.name}_mirrored", side=side, image=image,
                               mask=np.ascontiguousarray(leg.mask[::-1]), labels=labels,
                               mirrored=True))
    return out


# ---------------------------------------------------------------------------------------------
# Registration (SimpleITK; physical frame = RAS world mm)


def _sitk():
    import SimpleITK as sitk

    return sitk


def to_sitk(array_ras: np.ndarray, affine: np.ndarray, pixel=None):
    """SimpleITK image of an (x, y, z) array with its RAS affine (physical frame: RAS mm)."""
    sitk = _sitk()
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array_ras, (2, 1, 0))))
    if pixel is not None:
        image = sitk.Cast(image, pixel)
    zooms = nib.affines.voxel_sizes(affine)
    image.SetSpacing([float(z) for z in zooms])
    image.SetOrigin([float(v) for v in affine[:3, 3]])
    image.SetDirection([float(v) for v in (affine[:3, :3] / zooms).ravel()])
    return image


def from_sitk(image) -> np.ndarray:
    """(x, y, z) array of a SimpleITK image."""
    return np.transpose(_sitk().GetArrayFromImage(image), (2, 1, 0))


def resample_grid(image, spacing_xy: float, interpolator=None, default: float = 0.0):
    """``image`` resampled to ``spacing_xy`` in-plane, its through-plane spacing kept."""
    sitk = _sitk()
    old = np.array(image.GetSpacing())
    new = np.array([max(spacing_xy, old[0]), max(spacing_xy, old[1]), old[2]])
    size = [max(1, int(round(n * o / s))) for n, o, s in zip(image.GetSize(), old, new)]
    return sitk.Resample(image, size, sitk.Transform(), interpolator or sitk.sitkLinear,
                         image.GetOrigin(), new.tolist(), image.GetDirection(), default,
                         image.GetPixelID())


def _centroid_and_area(mask_ras: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, float,
                                                                            float, float]:
    """World centroid (mm), median slice area (mm^2) and z extent (mm) of a mask."""
    coords = np.argwhere(mask_ras)
    world = nib.affines.apply_affine(affine, coords)
    zooms = nib.affines.voxel_sizes(affine)
    per_slice = mask_ras.sum(axis=(0, 1))
    area = float(np.median(per_slice[per_slice > 0])) * zooms[0] * zooms[1]
    return world.mean(axis=0), area, float(world[:, 2].min()), float(world[:, 2].max())


def _metric_method(settings: RegistrationSettings, seed: int, fixed_mask=None):
    sitk = _sitk()
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings.bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(settings.sampling, seed)
    method.SetInterpolator(sitk.sitkLinear)
    if fixed_mask is not None:
        method.SetMetricFixedMask(fixed_mask)
    return method


class RegistrationError(RuntimeError):
    """A registration stage failed (e.g. the atlas left the target's field of view)."""


@dataclass
class RegistrationResult:
    """Transform fixed (target) -> moving (atlas) points, and what the stages reported."""

    transform: object
    search_offset_mm: float
    in_plane_scale: float
    metric: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    cpu_seconds: float = 0.0


def _images(leg: Leg, settings: RegistrationSettings):
    """Normalised SimpleITK image and dilated-mask image of a leg."""
    sitk = _sitk()
    image = to_sitk(normalise_intensity(leg.image, leg.mask), leg.affine, sitk.sitkFloat32)
    dilated = ndimage.binary_dilation(
        leg.mask, iterations=max(1, int(round(settings.mask_dilation_mm
                                              / nib.affines.voxel_sizes(leg.affine)[0]))))
    return image, to_sitk(dilated.astype(np.uint8), leg.affine, sitk.sitkUInt8)


def initial_transform(fixed: Leg, moving: Leg):
    """Start transform (fixed -> moving points) from the body masks, and its z translation.

    Fixed point p maps to A (p - c) + c + t with c the fixed centroid, t the centroid
    difference and A = diag(1/s, 1/s, 1), s = sqrt of the ratio of median slice areas.
    """
    sitk = _sitk()
    f_centre, f_area, _, _ = _centroid_and_area(fixed.mask, fixed.affine)
    m_centre, m_area, _, _ = _centroid_and_area(moving.mask, moving.affine)
    scale = float(np.sqrt(f_area / m_area)) if m_area > 0 else 1.0
    base = sitk.AffineTransform(3)
    base.SetCenter([float(v) for v in f_centre])
    base.SetMatrix([1.0 / scale, 0, 0, 0, 1.0 / scale, 0, 0, 0, 1.0])
    base.SetTranslation([float(v) for v in m_centre - f_centre])
    return base, float(m_centre[2] - f_centre[2])


def offset_scores(fixed: Leg, moving: Leg, settings: RegistrationSettings
                  ) -> dict[tuple[int, float], float]:
    """Start search: score per (k, f), offset k * search_step_mm from the centroid alignment
    and in-plane size factor f on top of the body-area ratio; lower is better.

    The size factors matter where the body area misleads, e.g. thick subcutaneous fat
    around a small muscle compartment.

    The score is Mattes MI (coarse grid, all voxels) times the fraction of the fixed slab's
    length that overlaps the atlas, so that partial overlaps, whose few samples give an
    optimistic MI, are not favoured. Offsets with less than ``search_min_overlap`` (of the
    shorter stack) are not tried.
    """
    sitk = _sitk()
    fixed_img, fixed_mask = _images(fixed, settings)
    moving_img, _ = _images(moving, settings)
    base, centre_tz = initial_transform(fixed, moving)
    _, _, f_z0, f_z1 = _centroid_and_area(fixed.mask, fixed.affine)
    _, _, m_z0, m_z1 = _centroid_and_area(moving.mask, moving.affine)
    f_len, m_len = max(f_z1 - f_z0, 1e-3), max(m_z1 - m_z0, 1e-3)
    coarse_fixed = resample_grid(fixed_img, settings.search_grid_mm)
    coarse_mask = resample_grid(fixed_mask, settings.search_grid_mm, sitk.sitkNearestNeighbor)
    search = _metric_method(settings, 0, coarse_mask)
    search.SetMetricSamplingStrategy(search.NONE)
    reach = int(np.ceil((f_len + m_len) / settings.search_step_mm))
    scores: dict[tuple[int, float], float] = {}
    for k in range(-reach, reach + 1):
        tz = centre_tz + k * settings.search_step_mm
        overlap = min(f_z1 + tz, m_z1) - max(f_z0 + tz, m_z0)
        if overlap < settings.search_min_overlap * min(f_len, m_len) and k != 0:
            continue
        for factor in settings.search_size_factors:
            trial = start_transform(base, tz, factor)
            search.SetInitialTransform(trial)
            try:
                value = search.MetricEvaluate(coarse_fixed, moving_img)
            except RuntimeError:
                continue
            scores[(k, factor)] = float(value) * min(max(overlap, 0.0) / f_len, 1.0)
    return scores or {(0, 1.0): 0.0}


def start_transform(base, tz: float, factor: float):
    """``base`` with z translation ``tz`` and its in-plane matrix divided by ``factor``."""
    sitk = _sitk()
    trial = sitk.AffineTransform(base)
    translation = list(trial.GetTranslation())
    trial.SetTranslation([translation[0], translation[1], float(tz)])
    matrix = np.asarray(trial.GetMatrix()).reshape(3, 3)
    matrix[:2, :2] /= factor
    trial.SetMatrix(matrix.ravel().tolist())
    return trial


def joint_offset(curves: list[dict]):
    """The start (key of the curves) with the lowest mean score over all curves that tried
    it, among the starts tried by every curve (else by any); None when there is none."""
    common = set.intersection(*(set(c) for c in curves)) if curves else set()
    steps = common or set().union(*(set(c) for c in curves))
    if not steps:
        return None
    return min(sorted(steps), key=lambda k: float(np.mean([c[k] for c in curves if k in c])))


def register_leg(fixed: Leg, moving: Leg, settings: RegistrationSettings, seed: int,
                 start: tuple[int, float] | None = None) -> RegistrationResult:
    """Register an atlas leg (moving) to a target leg (fixed) in RAS world space.

    Stages: start from body-mask centroids, in-plane size ratio and ``start`` = (k, f): a
    superior-inferior offset of k search steps from the centroid alignment and an in-plane
    size factor f (searched with :func:`offset_scores` when None), then affine and B-spline
    optimisation (Mattes MI, multi-resolution, metric restricted to the dilated fixed leg
    mask).
    """
    sitk = _sitk()
    clock, cpu_clock = time.perf_counter(), time.process_time()
    fixed_img, fixed_mask = _images(fixed, settings)
    moving_img, _ = _images(moving, settings)

    start_tf, centre_tz = initial_transform(fixed, moving)
    metric: dict[str, float] = {}
    if start is None:
        curve = offset_scores(fixed, moving, settings)
        start = min(curve, key=curve.get)
        metric["search_score"] = curve[start]
    z_step, factor = start
    best_tz = centre_tz + z_step * settings.search_step_mm
    initial = start_transform(start_tf, best_tz, factor)
    scale = 1.0 / initial.GetMatrix()[0]

    def levels(level_mm: tuple[float, ...]):
        for size in level_mm:
            yield (resample_grid(fixed_img, size),
                   resample_grid(fixed_mask, size, sitk.sitkNearestNeighbor),
                   sitk.SmoothingRecursiveGaussian(moving_img, size / 2.0)
                   if size > settings.affine_levels_mm[-1] else moving_img)

    affine = sitk.AffineTransform(initial)
    for level, (fixed_level, mask_level, moving_level) in enumerate(
            levels(settings.affine_levels_mm)):
        before = affine.GetParameters()
        for attempt, rate in enumerate((2.0 / (level + 1), 0.5 / (level + 1))):
            method = _metric_method(settings, seed + level, mask_level)
            method.SetOptimizerAsRegularStepGradientDescent(
                learningRate=rate, minStep=1e-3, numberOfIterations=settings.affine_iterations,
                relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
            method.SetOptimizerScalesFromPhysicalShift()
            affine.SetParameters(before)
            method.SetInitialTransform(affine, inPlace=True)
            try:
                method.Execute(fixed_level, moving_level)
                break
            except RuntimeError as error:
                # The optimiser stepped out of the atlas: retry once with smaller steps.
                if attempt:
                    raise RegistrationError(f"{fixed.name} <- {moving.name}: affine stage "
                                            f"failed: {str(error).splitlines()[-1]}") from error
                metric["affine_retried"] = 1.0
        metric["affine_mi"] = float(method.GetMetricValue())
    transform = sitk.CompositeTransform([affine])

    if settings.bspline_iterations > 0 and settings.bspline_levels_mm:
        physical = [sz * sp for sz, sp in zip(fixed_img.GetSize(), fixed_img.GetSpacing())]
        mesh = [max(1, int(round(p / m))) for p, m in zip(physical, settings.bspline_mesh_mm)]
        bspline = sitk.BSplineTransformInitializer(fixed_img, mesh, order=3)
        failed = None
        for level, (fixed_level, mask_level, moving_level) in enumerate(
                levels(settings.bspline_levels_mm)):
            method = _metric_method(settings, seed + 10 + level, mask_level)
            method.SetOptimizerAsLBFGSB(
                gradientConvergenceTolerance=1e-5,
                numberOfIterations=settings.bspline_iterations, maximumNumberOfCorrections=5,
                maximumNumberOfFunctionEvaluations=2 * settings.bspline_iterations)
            method.SetMovingInitialTransform(affine)
            method.SetInitialTransform(bspline, inPlace=True)
            try:
                method.Execute(fixed_level, moving_level)
            except RuntimeError as error:
                failed = str(error).splitlines()[-1]
                break
            metric["bspline_mi"] = float(method.GetMetricValue())
        if failed is None:
            low, high = jacobian_range(bspline, fixed_img, fixed_mask, settings)
            metric["jacobian_p1"], metric["jacobian_p99"] = low, high
            if low < settings.jacobian_limits[0] or high > settings.jacobian_limits[1]:
                failed = f"Jacobian 1st/99th percentile {low:.2f}/{high:.2f}"
        if failed is None:
            transform = sitk.CompositeTransform([affine, bspline])
        else:
            # Folding, extreme local scaling or a step out of the atlas: not anatomy; the
            # affine result is kept.
            metric["bspline_rejected"] = 1.0
            logger.warning("%s <- %s: B-spline rejected (%s); affine only", fixed.name,
                           moving.name, failed[:120])
    return RegistrationResult(transform=transform, search_offset_mm=best_tz - centre_tz,
                              in_plane_scale=scale, metric=metric,
                              seconds=time.perf_counter() - clock,
                              cpu_seconds=time.process_time() - cpu_clock)


def jacobian_range(bspline, fixed_img, fixed_mask, settings: RegistrationSettings
                   ) -> tuple[float, float]:
    """1st and 99th percentile of the deformation's Jacobian determinant inside the leg,
    on the coarsest B-spline level's grid."""
    sitk = _sitk()
    grid = resample_grid(fixed_img, settings.bspline_levels_mm[0])
    mask = from_sitk(resample_grid(fixed_mask, settings.bspline_levels_mm[0],
                                   sitk.sitkNearestNeighbor)).astype(bool)
    field = sitk.TransformToDisplacementField(bspline, sitk.sitkVectorFloat64, grid.GetSize(),
                                              grid.GetOrigin(), grid.GetSpacing(),
                                              grid.GetDirection())
    jacobian = from_sitk(sitk.DisplacementFieldJacobianDeterminant(field))
    values = jacobian[mask] if mask.any() else jacobian.ravel()
    return float(np.percentile(values, 1)), float(np.percentile(values, 99))


def propagate_labels(atlas: Leg, target: Leg, transform) -> np.ndarray:
    """Atlas labels carried onto the target leg's crop grid (nearest neighbour).

    Target voxels mapping outside the atlas crop get IGNORE.
    """
    sitk = _sitk()
    moving = to_sitk(atlas.labels.astype(np.uint16), atlas.affine, sitk.sitkUInt16)
    reference = to_sitk(np.zeros(target.image.shape, np.uint8), target.affine, sitk.sitkUInt8)
    out = sitk.Resample(moving, reference, transform, sitk.sitkNearestNeighbor, IGNORE,
                        sitk.sitkUInt16)
    return from_sitk(out).astype(np.uint16)


# ---------------------------------------------------------------------------------------------
# Targets, outputs, QC


def load_target(data: Path, spec: TargetSpec) -> tuple[np.ndarray, Geometry, np.ndarray, int,
                                                        list[Leg]]:
    """Target volume, geometry, slab body mask, cut and its two legs (RAS)."""
    volume, geometry = load_canonical(data / spec.image)
    mask = ras_body_mask(volume)
    cut = split_columns(volume, mask)
    slab = apply_slab(mask, spec.slices)
    legs = []
    for side in ("R", "L"):
        leg = crop_leg(volume, slab, geometry.ras_affine, side, cut, f"{spec.name}_{side}")
        legs.append(leg)
    return volume, geometry, mask, cut, legs


def _outline(labels: np.ndarray) -> np.ndarray:
    """2-D boolean outline of every label region (pixels whose 4-neighbours differ)."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    edge[:-1, :] |= labels[1:, :] != labels[:-1, :]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, 1:] != labels[:, :-1]
    return edge & (labels > 0)


def qc_montage(volume_ras: np.ndarray, fused_ras: np.ndarray, ignore_ras: np.ndarray,
               zooms: tuple[float, float, float], slices: tuple[int, int], title: str,
               path: Path, n_slices: int = 4) -> Path:
    """PNG: axial slices (radiological view: patient's right on the image left) with label
    outlines in the table colours and ignored voxels tinted red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo, hi = max(slices[0], 0), min(slices[1], volume_ras.shape[2] - 1)
    zs = sorted(set(np.linspace(lo, hi, n_slices + 2)[1:-1].round().astype(int).tolist())) \
        if hi - lo >= n_slices else list(range(lo, hi + 1))
    image = ras_to_qmri(volume_ras)
    labels = ras_to_qmri(fused_ras.astype(np.int32))
    ignore = ras_to_qmri(ignore_ras.astype(np.uint8)).astype(bool)
    body = np.argwhere(image[lo:hi + 1] > 0)
    if body.size:
        (_, y0, x0), (_, y1, x1) = body.min(0), body.max(0)
        y0, x0 = max(y0 - 5, 0), max(x0 - 5, 0)
    else:
        y0, x0, y1, x1 = 0, 0, image.shape[1] - 1, image.shape[2] - 1
    colours = np.zeros((max(BY_INDEX) + 1, 3), dtype=np.float32)
    for label in LABELS:
        colours[label.index] = np.asarray(label.rgb) / 255.0
    vmax = float(np.percentile(image[image > 0], 99)) if (image > 0).any() else 1.0
    aspect = zooms[1] / zooms[0]
    width = (x1 - x0 + 6) / max(y1 - y0 + 6, 1) / aspect
    fig, axes = plt.subplots(len(zs), 1, figsize=(4.5 * width, 4.6 * len(zs)), squeeze=False)
    axes = axes[:, 0]
    for ax, z in zip(axes, zs):
        sl = (z, slice(y0, y1 + 6), slice(x0, x1 + 6))
        gray = np.clip(image[sl] / vmax, 0, 1)
        rgb = np.repeat(gray[..., None], 3, axis=2)
        ign = ignore[sl]
        rgb[ign] = 0.7 * rgb[ign] + 0.3 * np.array([1.0, 0.0, 0.0])
        lab = labels[sl]
        edge = _outline(lab)
        rgb[edge] = colours[np.clip(lab[edge], 0, colours.shape[0] - 1)]
        ax.imshow(rgb, aspect=aspect, interpolation="nearest")
        ax.set_title(f"z={z}", fontsize=9)
        ax.text(0.01, 0.98, "R", color="yellow", transform=ax.transAxes, va="top", fontsize=12)
        ax.text(0.97, 0.98, "L", color="yellow", transform=ax.transAxes, va="top", fontsize=12)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.25 / len(zs) / 4.6))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def process_target(spec: TargetSpec, data: Path, out: Path, atlases: dict[str, list[Leg]],
                   settings: RegistrationSettings, seed: int, min_agreement: float,
                   threads: int) -> dict:
    """Register, fuse and write all outputs of one target; returns its summary record."""
    start = time.perf_counter()
    volume, geometry, mask, cut, legs = load_target(data, spec)
    zooms = geometry.zooms_ras
    fused = np.zeros(volume.shape, dtype=np.uint16)
    agreement = np.zeros(volume.shape, dtype=np.float32)
    ignore = np.ones(volume.shape, dtype=bool)
    # Outside the body and the slab nothing can be a muscle: background, not ignore.
    ignore[~mask] = False
    rows: list[dict] = []
    registrations: list[dict] = []
    per_leg: dict[str, dict] = {}
    # One superior-inferior offset for the whole target: both legs lie at one level and all
    # atlas legs come from one stack, so the curves of all pairs are pooled.
    curves = [offset_scores(leg, atlas, settings) for leg in legs
              for atlas in atlases_for_side(atlases[spec.region], leg.side)]
    start_key = joint_offset(curves) or (0, 1.0)
    logger.info("%s: start %+d x %.0f mm from the centroid alignment, in-plane size x %.2f",
                spec.name, start_key[0], settings.search_step_mm, start_key[1])
    for leg in legs:
        leg_atlases = atlases_for_side(atlases[spec.region], leg.side)
        votes = []
        for atlas in leg_atlases:
            try:
                result = register_leg(leg, atlas, settings, seed, start_key)
            except RegistrationError as error:
                # This atlas gets no vote on this leg; with two atlases the leg is ignored.
                logger.warning("%s", error)
                votes.append(np.full(leg.image.shape, IGNORE, dtype=np.uint16))
                registrations.append({"target_leg": leg.name, "side": leg.side,
                                      "atlas": atlas.name, "mirrored": atlas.mirrored,
                                      "failed": str(error)})
                continue
            votes.append(propagate_labels(atlas, leg, result.transform))
            registrations.append({
                "target_leg": leg.name, "side": leg.side, "atlas": atlas.name,
                "atlas_source_side": atlas.source_side, "mirrored": atlas.mirrored,
                "z_offset_from_centroids_mm": round(result.search_offset_mm, 2),
                "in_plane_scale": round(result.in_plane_scale, 4),
                "metric": {k: round(v, 5) for k, v in result.metric.items()},
                "seconds": round(result.seconds, 1),
                "cpu_seconds": round(result.cpu_seconds, 1)})
            logger.info("%s <- %s: %.0f s (cpu %.0f s), z offset %+.0f mm, MI %s", leg.name,
                        atlas.name, result.seconds, result.cpu_seconds, result.search_offset_mm,
                        registrations[-1]["metric"])
        votes = np.stack(votes)
        votes[:, ~leg.mask] = np.where(votes[:, ~leg.mask] == IGNORE, IGNORE, 0)
        leg_fused, leg_agree, leg_ignore = fuse_votes(votes, min_agreement)
        leg_ignore &= leg.mask
        leg_fused[~leg.mask] = 0
        box = leg.box
        region = leg.mask
        fused[box][region] = leg_fused[region]
        agreement[box][region] = leg_agree[region]
        ignore[box][region] = leg_ignore[region]
        dice = pairwise_dice(votes)
        voxel_ml = float(np.prod(zooms)) / 1000.0
        for label, (value, pairs) in sorted(dice.items()):
            info = BY_INDEX.get(label)
            rows.append({
                "target": spec.name, "leg": leg.side, "label": label,
                "abbreviation": info.abbreviation if info else "?",
                "name": info.full_name if info else "?",
                "mean_pairwise_dice": round(value, 4), "pairs": pairs,
                "fused_ml": round(int(((leg_fused == label) & ~leg_ignore).sum()) * voxel_ml, 2),
            })
        muscle = (leg_fused > 0) & (leg_fused < 100) & ~leg_ignore
        per_leg[leg.side] = {
            "leg_voxels": int(leg.mask.sum()),
            "ignored_fraction": round(float(leg_ignore.sum() / max(leg.mask.sum(), 1)), 4),
            "labelled_muscle_ml": round(float(muscle.sum()) * voxel_ml, 1),
            "mean_agreement_in_leg": round(float(leg_agree[leg.mask].mean()), 4),
            "mean_muscle_dice": round(float(np.nanmean(
                [v for k, (v, _) in dice.items() if k < 100] or [np.nan])), 4),
            "labels": len([k for k in np.unique(leg_fused[~leg_ignore]) if k > 0]),
        }
    # Slices outside the slab: no atlas covers them.
    outside = np.ones(volume.shape[2], dtype=bool)
    outside[max(spec.slices[0], 0):spec.slices[1] + 1] = False
    ignore[:, :, outside] = mask[:, :, outside]
    fused[ignore] = 0
    agreement[~mask] = 1.0

    folder = out / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    save_labels(fused, geometry, folder / "labels.nii.gz")
    save_array(from_ras(agreement, geometry), geometry, folder / "agreement.nii.gz")
    save_array(from_ras(ignore.astype(np.uint8), geometry), geometry, folder / "ignore.nii.gz",
               dtype=np.uint8, intent="none")
    qc_montage(volume, fused, ignore, zooms, spec.slices,
               f"{spec.name} ({spec.region} atlas; red = ignore)", folder / "qc.png")
    header = ["target", "leg", "label", "abbreviation", "name", "mean_pairwise_dice", "pairs",
              "fused_ml"]
    lines = ["\t".join(header)] + ["\t".join(str(r[h]) for h in header) for r in rows]
    (folder / "agreement.tsv").write_text("\n".join(lines) + "\n")
    seconds = time.perf_counter() - start
    import SimpleITK

    provenance = {
        "target": {"name": spec.name, "file": spec.image, "sha256": sha256(data / spec.image),
                   "region": spec.region, "slices": list(spec.slices), "note": spec.note,
                   "also_applies_to": list(spec.also_applies_to),
                   "shape": list(geometry.shape), "zooms_ras_mm": list(zooms),
                   "cut_ras_x": int(cut)},
        "atlas": ATLAS_PROVENANCE[spec.region],
        "start_search": {
            "chosen_step": start_key[0], "step_mm": settings.search_step_mm,
            "chosen_size_factor": start_key[1],
            "mean_score_per_step_and_factor": {
                f"{k[0]}:{k[1]}": round(float(np.mean([c[k] for c in curves if k in c])), 5)
                for k in sorted(set().union(*map(set, curves)))}},
        "registrations": registrations,
        "fusion": {"method": "majority vote", "min_agreement": min_agreement,
                   "rule": "label kept where more than min_agreement of all atlases vote for it;"
                           " atlases without a vote (outside their field of view or on their "
                           "ignore voxels) count against"},
        "settings": asdict(settings),
        "seed": seed, "threads": threads,
        "versions": {"SimpleITK": SimpleITK.Version.VersionString(), "numpy": np.__version__,
                     "nibabel": nib.__version__, "python": platform.python_version()},
        "legseg_commit": _git_commit(),
        "outputs": {"labels.nii.gz": "fused Muscles_leg labels on the target grid, 0 where "
                                     "ignored", "agreement.nii.gz": "fraction of atlases voting "
                                     "for the fused label (1 outside the body)",
                    "ignore.nii.gz": "1 = no reliable label (atlas disagreement, atlas ignore, "
                                     "outside the atlas fields of view or the slab)",
                    "agreement.tsv": "mean pairwise Dice of the atlases' propagated labels",
                    "qc.png": "QC montage"},
        "legs": per_leg,
        "runtime_s": round(seconds, 1),
        "licence": "derived from QMRITools data (BSD-3-Clause, (c) 2016 Martijn Froeling) and "
                   "swastling_musclemap fixtures (MIT, (c) 2025 Stephen Wastling)",
    }
    (folder / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    summary = {"target": spec.name, "region": spec.region, "runtime_s": round(seconds, 1)}
    for side in ("R", "L"):
        for key, value in per_leg.get(side, {}).items():
            summary[f"{side}_{key}"] = value
    logger.info("%s done in %.0f s: %s", spec.name, seconds, per_leg)
    return summary


ATLAS_PROVENANCE = {
    "thigh": {"subject": "QMRITools scripts_test_data subject",
              "image": "qmritools/scripts_test_data/test.nii.gz",
              "labels": "qmritools/scripts_test_data/out.nii.gz (QMRITools' automatic CNN "
                        "segmentation, not manual)",
              "ignore": f"slices outside {THIGH_COMPLETE_SLICES} per side (incompletely "
                        "labelled), Ilium labels (misclassified)",
              "legs": "both legs, each also mirrored with side labels swapped; per target leg "
                      "the same-side leg and the mirrored other leg"},
    "calf": {"subject": "QMRITools DemoData subject (also the subject of water/fat)",
             "image": "qmritools/DemoData/twoLegs.nii.gz",
             "labels": "qmritools/DemoData/labels.nii.gz (manual, 7 muscles per leg; read on "
                       "the twoLegs grid by shape; names by CALF_LABELS in "
                       "tools/train_default_models.py)",
             "ignore": "none (all slices labelled); bones and unlisted muscles are background",
             "legs": "both legs, each also mirrored with side labels swapped; per target leg "
                     "the same-side leg and the mirrored other leg"},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help=f"shared data folder (default {DEFAULT_DATA})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--targets", nargs="+", choices=sorted(TARGETS), metavar="TARGET",
                        help="targets to process (default: all; see --list)")
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    parser.add_argument("--seed", type=int, default=20261124, help="metric sampling seed")
    parser.add_argument("--threads", type=int, default=1,
                        help="SimpleITK threads (default 1: bit-reproducible; with more, ITK's "
                             "dynamic work split makes the B-spline stage vary slightly)")
    parser.add_argument("--min-agreement", type=float, default=0.5,
                        help="a label needs more than this fraction of all atlases "
                             "(default 0.5: strict majority)")
    parser.add_argument("--quick", action="store_true",
                        help="affine only with few iterations (smoke test, not for training)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.list:
        for spec in TARGETS.values():
            logger.info("%-18s %-5s slices %2d-%2d  %s", spec.name, spec.region, *spec.slices,
                        spec.note)
        return 0
    if not args.data.is_dir():
        logger.error("data folder %s does not exist", args.data)
        return 2
    if args.threads < 1:
        logger.error("--threads must be at least 1")
        return 2
    try:
        sitk = _sitk()
    except ImportError:
        logger.error("SimpleITK is missing: pip install -e .[tools]")
        return 2
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    settings = RegistrationSettings()
    if args.quick:
        settings = replace(settings, affine_iterations=30, bspline_iterations=0)
    logger.info("registration settings: %s", asdict(settings))
    names = args.targets or list(TARGETS)
    start = time.perf_counter()
    regions = {TARGETS[name].region for name in names}
    atlases = {}
    if "thigh" in regions:
        atlases["thigh"] = load_thigh_atlas(args.data)
    if "calf" in regions:
        atlases["calf"] = load_calf_atlas(args.data)
    summaries = []
    for name in names:
        summaries.append(process_target(TARGETS[name], args.data, args.out, atlases, settings,
                                        args.seed, args.min_agreement, args.threads))
    header = list(dict.fromkeys(k for s in summaries for k in s))
    lines = ["\t".join(header)] + ["\t".join(str(s.get(h, "")) for h in header)
                                   for s in summaries]
    args.out.mkdir(parents=True, exist_ok=True)
    summary_path = args.out / "summary.tsv"
    if args.targets and summary_path.exists():
        # Keep the rows of targets not processed in this run.
        old = summary_path.read_text().splitlines()
        if old and old[0].split("\t") == header:
            done = {s["target"] for s in summaries}
            lines += [row for row in old[1:] if row.split("\t")[0] not in done]
    summary_path.write_text("\n".join(lines) + "\n")
    logger.info("%d targets in %.0f s; summary %s", len(summaries),
                time.perf_counter() - start, summary_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
