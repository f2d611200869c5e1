"""Generate the embedded demo: a small BIDS dataset with a synthetic two-thigh phantom.

``python -m legseg_tf.demo DIR [--subjects N] [--seed S]`` writes, offline, for each subject an
opposed-phase Dixon-like image ``sub-XX/anat/sub-XX_acq-outphase_T1w.nii.gz`` and matching
water and fat images (``acq-water``/``acq-fat``), all in RAS with JSON sidecars.
``python -m legseg_tf.demo --training-pair DIR`` instead writes one phantom image with its
ground-truth label map (``image.nii.gz``, ``labels.nii.gz``) for trying ``legseg-train``.

The phantom (axes x, y, z in RAS; 2.5 x 2.5 x 6 mm voxels) has two thighs, the patient's left
one deliberately larger and fattier so that left/right mistakes are visible: skin and
subcutaneous fat, muscle compartments separated by thin fat lines (dark in opposed phase),
and a femur (dark cortex, fatty marrow). Intensities are arbitrary magnitude units.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from legseg_tf.derivatives import sidecar_path

logger = logging.getLogger(__name__)

SHAPE_XYZ = (160, 112, 20)
SPACING_MM = (2.5, 2.5, 6.0)


@dataclass(frozen=True)
class LegSpec:
    """Geometry of one phantom thigh, in mm relative to the volume centre (RAS)."""

    center_x_mm: float
    radius_mm: float
    fat_thickness_mm: float
    muscle_fat_fraction: float


#: Patient's left leg (negative x in RAS) is larger and fattier than the right one.
LEFT = LegSpec(center_x_mm=-95.0, radius_mm=78.0, fat_thickness_mm=14.0, muscle_fat_fraction=0.12)
RIGHT = LegSpec(center_x_mm=95.0, radius_mm=68.0, fat_thickness_mm=9.0, muscle_fat_fraction=0.05)


def phantom(seed: int = 0) -> dict[str, np.ndarray]:
    """Water, fat and opposed-phase magnitude volumes (x, y, z) float32, plus a tissue map.

    Tissue map values: 0 background, 1 subcutaneous fat, 2 muscle, 3 fat line, 4 cortex,
    5 marrow.
    """
    rng = np.random.default_rng(seed)
    nx, ny, nz = SHAPE_XYZ
    x = (np.arange(nx) - (nx - 1) / 2) * SPACING_MM[0]
    y = (np.arange(ny) - (ny - 1) / 2) * SPACING_MM[1]
    xx, yy = np.meshgrid(x, y, indexing="ij")
    tissue = np.zeros(SHAPE_XYZ, dtype=np.uint8)
    muscle_ff = np.zeros(SHAPE_XYZ, dtype=np.float32)
    for k in range(nz):
        taper = 0.75 + 0.25 * k / max(nz - 1, 1)  # thighs narrow towards the knee (low z)
        for leg in (LEFT, RIGHT):
            dx, dy = xx - leg.center_x_mm, yy
            r = np.hypot(dx / 1.0, dy / 0.85)
            outer = leg.radius_mm * taper
            inner = outer - leg.fat_thickness_mm
            angle = np.arctan2(dy, dx)
            slab = tissue[:, :, k]
            slab[r <= outer] = 1
            slab[r <= inner] = 2
            muscle_ff[:, :, k][r <= inner] = leg.muscle_fat_fraction
            # Fat lines between compartments: four spokes and one inner ring.
            for spoke in (0.3, 1.9, 3.3, 4.7):
                d = np.abs(np.angle(np.exp(1j * (angle - spoke))))
                slab[(r <= inner) & (r > 14) & (d * r < 1.6)] = 3
            slab[(np.abs(r - 0.55 * inner) < 1.3) & (dy > 0)] = 3
            femur = np.hypot(dx + 6.0, dy + 4.0)
            slab[femur <= 13.0] = 4
            slab[femur <= 8.5] = 5
    water = np.zeros(SHAPE_XYZ, dtype=np.float32)
    fat = np.zeros(SHAPE_XYZ, dtype=np.float32)
    water[tissue == 2] = 600.0 * (1 - muscle_ff[tissue == 2])
    fat[tissue == 2] = 600.0 * muscle_ff[tissue == 2]
    fat[tissue == 1] = 560.0
    water[tissue == 1] = 40.0
    fat[tissue == 3] = 300.0
    water[tissue == 3] = 260.0
    fat[tissue == 5] = 520.0
    water[tissue == 5] = 60.0
    shading = np.linspace(0.9, 1.1, ny, dtype=np.float32)[None, :, None]
    noise = 12.0
    water_n = np.abs(water * shading + rng.normal(0, noise, SHAPE_XYZ) + 1j * rng.normal(0, noise, SHAPE_XYZ))
    fat_n = np.abs(fat * shading + rng.normal(0, noise, SHAPE_XYZ) + 1j * rng.normal(0, noise, SHAPE_XYZ))
    outphase = np.abs(water_n - fat_n)
    body = tissue > 0
    for image in (water_n, fat_n, outphase):
        image[~body] *= 0.05  # faint background noise, as in masked scanner output
    return {
        "outphase": outphase.astype(np.float32),
        "water": water_n.astype(np.float32),
        "fat": fat_n.astype(np.float32),
        "tissue": tissue,
    }


#: Phantom compartments (angular sectors between the fat-line spokes, radians) and their
#: ``Muscles_leg`` names; the femur is labelled "Femur".
SECTOR_MUSCLES = ((0.3, 1.9, "Rectus femoris"), (1.9, 3.3, "Vastus medialis"),
                  (3.3, 4.7, "Biceps femoris long"), (4.7, 0.3 + 2 * np.pi, "Vastus lateralis"))


def phantom_labels(tissue: np.ndarray) -> np.ndarray:
    """Ground-truth ``Muscles_leg`` labels of a phantom tissue map (x, y, z), uint16.

    Muscle compartments are the angular sectors of :data:`SECTOR_MUSCLES` around each leg's
    centre, measured from the lateral direction (mirrored between legs); cortex and marrow are
    the femur. The side comes from world x (RAS, left < 0).
    """
    from legseg_tf.labels import BY_KEY, normalise_name

    nx, ny, nz = tissue.shape
    x = (np.arange(nx) - (nx - 1) / 2) * SPACING_MM[0]
    y = (np.arange(ny) - (ny - 1) / 2) * SPACING_MM[1]
    xx, yy = np.meshgrid(x, y, indexing="ij")
    labels = np.zeros(tissue.shape, dtype=np.uint16)
    for leg, side in ((LEFT, "Left"), (RIGHT, "Right")):
        on_side = (xx < 0) if side == "Left" else (xx >= 0)
        # mirrored between the legs: the same muscle lies on the lateral side of both
        lateral = (xx - leg.center_x_mm) * (-1.0 if side == "Left" else 1.0)
        angle = np.mod(np.arctan2(yy, lateral), 2 * np.pi)
        angle = np.where(angle < SECTOR_MUSCLES[0][0], angle + 2 * np.pi, angle)
        for start, stop, name in SECTOR_MUSCLES:
            index = BY_KEY[f"{normalise_name(name)}_{side}"].index
            sector = on_side & (angle >= start) & (angle < stop)
            labels[(tissue == 2) & sector[:, :, None]] = index
        femur = BY_KEY[f"{normalise_name('Femur')}_{side}"].index
        labels[np.isin(tissue, (4, 5)) & on_side[:, :, None]] = femur
    return labels


def write_training_pair(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write ``image.nii.gz`` (opposed phase) and ``labels.nii.gz`` (Muscles_leg) under ``root``."""
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not empty; choose a new folder")
    root.mkdir(parents=True, exist_ok=True)
    volumes = phantom(seed)
    image_path, labels_path = root / "image.nii.gz", root / "labels.nii.gz"
    for path, data in ((image_path, volumes["outphase"]),
                       (labels_path, phantom_labels(volumes["tissue"]))):
        image = nib.Nifti1Image(data, ras_affine())
        image.set_qform(ras_affine(), code=1)
        image.set_sform(ras_affine(), code=1)
        nib.save(image, str(path))
    logger.info("phantom training pair written to %s", root)
    return image_path, labels_path


def ras_affine() -> np.ndarray:
    """RAS affine of the phantom grid, centred on the origin."""
    affine = np.diag([*SPACING_MM, 1.0])
    affine[:3, 3] = [-(n - 1) / 2 * s for n, s in zip(SHAPE_XYZ, SPACING_MM)]
    return affine


def _write_image(path: Path, data: np.ndarray, sidecar: dict) -> None:
    image = nib.Nifti1Image(data, ras_affine())
    image.set_qform(ras_affine(), code=1)
    image.set_sform(ras_affine(), code=1)
    image.header.set_xyzt_units("mm", "sec")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    sidecar_path(path).write_text(json.dumps(sidecar, indent=2) + "\n")


def write_demo(root: Path, subjects: int = 2, seed: int = 0) -> list[Path]:
    """Write the demo BIDS dataset under ``root``; return the opposed-phase image paths."""
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not empty; choose a new folder")
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({
        "Name": "legseg demo: synthetic two-thigh phantom",
        "BIDSVersion": "1.10.0",
        "DatasetType": "raw",
        "License": "CC0",
        "Authors": ["legseg developers"],
        "GeneratedBy": [{"Name": "legseg demo generator"}],
    }, indent=2) + "\n")
    (root / "README").write_text(
        "Synthetic two-thigh phantom generated by `python -m legseg_tf.demo`.\n"
        "The patient's left thigh is larger and fattier than the right one.\n"
    )
    rows = ["participant_id\tage\tsex"]
    written = []
    base = {"MagneticFieldStrength": 3.0, "Manufacturer": "synthetic", "RepetitionTime": 0.01}
    for index in range(1, subjects + 1):
        label = f"{index:02d}"
        volumes = phantom(seed + index)
        anat = root / f"sub-{label}" / "anat"
        for acq, key, te in (("outphase", "outphase", 0.00345), ("water", "water", None), ("fat", "fat", None)):
            sidecar = dict(base)
            if te is not None:
                sidecar["EchoTime"] = te
            path = anat / f"sub-{label}_acq-{acq}_T1w.nii.gz"
            _write_image(path, volumes[key], sidecar)
            if acq == "outphase":
                written.append(path)
        rows.append(f"sub-{label}\tn/a\tn/a")
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    logger.info("demo dataset with %d subject(s) written to %s", subjects, root)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m legseg_tf.demo", description=__doc__.splitlines()[0])
    parser.add_argument("bids_dir", type=Path, help="folder to create (must be new or empty)")
    parser.add_argument("--training-pair", action="store_true",
                        help="write image.nii.gz + labels.nii.gz (ground truth) for legseg-train "
                             "instead of a BIDS dataset")
    parser.add_argument("--subjects", type=int, default=2, help="number of participants (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.subjects < 1:
        parser.error("--subjects must be >= 1")
    try:
        if args.training_pair:
            write_training_pair(args.bids_dir, args.seed)
        else:
            write_demo(args.bids_dir, args.subjects, args.seed)
    except FileExistsError as error:
        print(f"legseg demo: error: {error}", file=sys.stderr)
        return 73
    return 0


if __name__ == "__main__":
    sys.exit(main())
