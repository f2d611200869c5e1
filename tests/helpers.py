"""Test helpers shared by several test modules: oriented and hand-patched NIfTI files, tiny
installed networks, models folders with cards, a planted failed segmentation, participant
outputs of the demo phantom. (Test modules import from here, never from each other.)"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from nibabel import orientations

from legseg_tf import demo, nifti_io
from legseg_tf.results import ImageResult, InputImage
from legseg_tf.labels import abbreviation_of

# ------------------------------------------------------------------ NIfTI files


def save_as(volume_ras: np.ndarray, affine_ras: np.ndarray, axcodes, path: Path) -> Path:
    """Store a canonical RAS (x, y, z) volume in another axis orientation (``axcodes``, e.g.
    ``("L", "P", "S")``) with the matching affine: the same anatomy in world space."""
    transform = orientations.ornt_transform(
        orientations.axcodes2ornt(("R", "A", "S")), orientations.axcodes2ornt(axcodes))
    data = orientations.apply_orientation(volume_ras, transform)
    affine = affine_ras @ orientations.inv_ornt_aff(transform, volume_ras.shape)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def patch_header(path: Path, **fields) -> Path:
    """Rewrite header fields of a written NIfTI file byte for byte (nibabel would fix them on
    save), e.g. ``sform_code=0``, ``pixdim=[...]``, ``dim=[...]``."""
    raw = path.read_bytes()
    zipped = raw[:2] == b"\x1f\x8b"
    data = bytearray(gzip.decompress(raw) if zipped else raw)
    header = nib.Nifti1Header(bytes(data[:348]), check=False)
    for key, value in fields.items():
        header[key] = value
    data[:348] = header.binaryblock
    path.write_bytes(gzip.compress(bytes(data)) if zipped else bytes(data))
    return path


# ------------------------------------------------------------------ installed networks


def _always(dense_or_conv, index: int, logit: float) -> None:
    """Make the last layer before a softmax ignore its input and pick class ``index`` with
    ``logit`` (the other classes 0)."""
    kernel, bias = dense_or_conv.get_weights()
    constant = np.zeros_like(bias)
    constant[index] = logit
    dense_or_conv.set_weights([np.zeros_like(kernel), constant])


def install_tiny_models(models_dir: Path, seed: int = 0, always: dict | None = None,
                        logit: float = 10.0) -> None:
    """Tiny networks for every role (seeded weights), installed through the model store.

    Args:
        models_dir: the models folder to write (manifest, configs, weights).
        seed: Keras seed of the random weights.
        always: optional deterministic outputs instead of what random weights happen to
            predict: ``{"upper_leg": class, "lower_leg": class}`` (training-table class
            numbers) and ``{"side": name, "position": name}`` for the classifier; the named
            network then gives that class for every voxel or slice.
        logit: the chosen class's logit, the others' being 0: the softmax of the chosen class
            is ``e^logit / (e^logit + n - 1)`` for n classes (10: about 0.999; 0.5: a network
            that is unsure).
    """
    import keras

    from legseg_tf.labels import TRAIN_TABLES
    from legseg_tf.model_store import write_entry
    from legseg_tf.networks import build_classifier, build_unet
    from legseg_tf.networks.config import ClassifierConfig as NetClassifierConfig
    from legseg_tf.networks.config import UNetConfig

    always = always or {}
    models_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(seed)
    specs = [("lower_leg", "N6_LowerLeg"), ("upper_leg", "N5_UpperLeg"), ("classifier", None)]
    for role, table in specs:
        if table:
            config = UNetConfig(n_classes=len(TRAIN_TABLES[table]) + 1, features=(4, 8),
                                downsample=((2, 2, 2), (1, 1, 1)), dropout_rate=0.0)
            model = build_unet(config)
            if role in always:
                _always(model.get_layer("map__1"), always[role], logit)
        else:
            config = NetClassifierConfig(image_size=(64, 64), head="linear")
            model = build_classifier(config)
            if "side" in always:
                _always(model.get_layer("Side__1"), config.side_classes.index(always["side"]),
                        logit)
            if "position" in always:
                _always(model.get_layer("Position__1"),
                        config.position_classes.index(always["position"]), logit)
        (models_dir / f"{role}.json").write_text(config.to_json(), encoding="utf-8")
        model.save_weights(models_dir / f"{role}.weights.h5")
        write_entry(models_dir, {
            "id": f"tiny-{role}", "role": role, "config": f"{role}.json",
            "weights": f"{role}.weights.h5", "sha256": None, "label_table": table,
            "provenance": {"source": "legseg-train"},
        })


# ------------------------------------------------------------------ models folders with cards

#: A card shaped like the project's cards (sections, tables, bold figures, a never-list).
CARD = """# planted-upperleg-v1 — upper-leg network

| | |
|---|---|
| role | `upper_leg` |

## Training data

Two people, both thighs: `Join_5` and the UCL Siemens thigh, pseudo-labels
(`tools/make_pseudolabels.py`). **Two subjects.**

## Validation on the held-out leg (same subject)

| muscle | held-out Dice |
|---|---|
| Vastus lateralis | 0.96 |
| **mean (15 labels)** | **0.82** |

## Leave-one-subject-out: each subject scored by a network that never saw it

| left-out subject | mean Dice |
|---|---|
| Join_5 | 0.41 |
| UCL | 0.37 |
| **mean** | **0.39** |

**Expect a mean Dice of about 0.4 on a new person.**

## Known limits

* Adductor minimus, iliacus, psoas major, pectineus, patella and subcutaneous fat do not occur
  in the references and are never predicted; the ilium occurs only in the top slices.
* A small network trained on a CPU.
"""


def write_models_dir(folder: Path, models: list[dict], cards: dict[str, str]) -> Path:
    """A models folder that ``regions.check_models`` accepts: a manifest whose entries have
    placeholder config and weights files (``models``: id, role, label_table, provenance)."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for number, model in enumerate(models):
        (folder / f"m{number}.json").write_text("{}")
        (folder / f"m{number}.weights.h5").write_bytes(b"not a network")
        entries.append({"id": model["id"], "role": model["role"], "config": f"m{number}.json",
                        "weights": f"m{number}.weights.h5", "sha256": "0" * 64,
                        "label_table": model.get("label_table"),
                        "provenance": {"source": "legseg-train", **model.get("provenance", {})}})
    for relative, text in cards.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(text)
    (folder / "manifest.json").write_text(json.dumps({"schema_version": 1, "models": entries}))
    return folder


def planted_models(folder: Path, model_id: str = "planted") -> Path:
    """A models folder whose upper-leg model ``model_id`` has :data:`CARD` as its card."""
    return write_models_dir(folder, [
        {"id": model_id, "role": "upper_leg", "label_table": "N5_UpperLeg",
         "provenance": {"card": "cards/planted.md", "training_voxel_size_mm": [6, 1.5, 1.5]}},
    ], {"cards/planted.md": CARD})


# ------------------------------------------------------------------ planted segmentations

VL_L, VL_R = 55, 56   # vastus lateralis, patient's left / right (Muscles_leg values)


class AsymmetricSegmenter:
    """Test segmenter planting a failed segmentation: vastus lateralis over the bright voxels
    of the patient's left leg, but only on every tenth row of the right leg (about 10x less).
    Columns before the middle of the (z, y, x) layout are the patient's right."""

    def segment(self, volume, spacing_zyx, *, midline_column=None):
        from legseg_tf.segmentation_report import (
            PartReport,
            SegmentationReport,
            SideReport,
            SplitReport,
        )
        from legseg_tf.segmenter import SegmentationResult

        labels = np.zeros(volume.shape, dtype=np.uint16)
        middle = volume.shape[2] // 2
        bright = volume > 50
        labels[:, :, middle:][bright[:, :, middle:]] = VL_L
        right = np.zeros_like(bright)
        right[:, ::10, :middle] = bright[:, ::10, :middle]
        labels[right] = VL_R
        report = SegmentationReport(
            side=SideReport(decision="Both", source="geometry", classifier=None, geometry={},
                            midline="image centre"),
            split=SplitReport(cut_column=middle, method="image centre", overlap=0.1,
                              part_labels="planted", parts_columns=[]),
            region_ranges={"UpperLegs": [0, volume.shape[0] - 1]},
            parts=[PartReport(region="UpperLegs", side=side, model="planted", box_zyx=[],
                              labels=[], confidence={"mean_max_probability": 0.95, "voxels": 1})
                   for side in ("R", "L")])
        return SegmentationResult(labels=labels, report=report,
                                  models=[{"id": "planted", "role": "upper_leg", "sha256": None}])


# ------------------------------------------------------------------ participant outputs

# Muscles_leg values used by the phantom label map.
VL, VM, BFL, SM, FEM = (55, 56), (59, 60), (31, 32), (35, 36), (103, 104)


def phantom_labels(tissue: np.ndarray) -> np.ndarray:
    """Label map of the demo phantom (x, y, z RAS): four muscle sectors and the femur per thigh.

    The patient's left thigh lies at low canonical x. Anterior-lateral muscle = VL,
    anterior-medial = VM, posterior-lateral = BFL, posterior-medial = SM; fat lines unlabelled.
    """
    labels = np.zeros(tissue.shape, dtype=np.uint16)
    nx = tissue.shape[0]
    x = np.arange(nx)[:, None, None]
    y = np.arange(tissue.shape[1])[None, :, None]
    for side, half in ((0, x < nx // 2), (1, x >= nx // 2)):
        muscle = (tissue == 2) & half
        cx, cy = np.nonzero(muscle)[0].mean(), np.nonzero(muscle)[1].mean()
        lateral = (x < cx) if side == 0 else (x >= cx)
        anterior = y >= cy
        labels[muscle & anterior & lateral] = VL[side]
        labels[muscle & anterior & ~lateral] = VM[side]
        labels[muscle & ~anterior & lateral] = BFL[side]
        labels[muscle & ~anterior & ~lateral] = SM[side]
        labels[np.isin(tissue, (4, 5)) & half] = FEM[side]
    return labels


def segmenter_report(classifier_side: str = "Both") -> dict:
    """A segmenter report shaped like the one of the QMRITools-style segmenter."""
    n = demo.SHAPE_XYZ[2]
    return {
        "side": {
            "decision": "Both",
            "source": "classifier+geometry",
            "classifier": classifier_side,
            "geometry": {"two_legs": True, "single_side": None, "confident": True},
            "midline": "image centre",
        },
        "positions": {
            "side": "Both",
            "side_votes": {"Both": n},
            "slices": list(range(n)),
            "raw_positions": ["Knee"] * 3 + ["Upper"] * (n - 3),
            "fitted_positions": ["Knee"] * 2 + ["Upper"] * (n - 2),
            "ranges": {"UpperLegs": [0, n - 1]},
        },
        "region_ranges": {"UpperLegs": [0, n - 1]},
        "split": {"cut_column": 80},
        "warnings": ["segmenter says hello"],
        "timings_s": {"mask": 0.1, "classify": 0.2, "networks": 1.5},
        "device": "cpu",
    }


def build_outputs(
    root: Path,
    subjects: int = 2,
    sessions: tuple[str | None, ...] = (None,),
    status: str = "done",
    probabilities: bool = False,
) -> tuple[Path, Path, list[ImageResult]]:
    """Demo BIDS dataset + label maps written as the participant level would; the results."""
    bids, out = root / "bids", root / "out"
    demo.write_demo(bids, subjects=subjects)
    results = []
    for index in range(1, subjects + 1):
        subject = f"{index:02d}"
        volumes = demo.phantom(index)
        for session in sessions:
            anat_rel = f"sub-{subject}/" + (f"ses-{session}/" if session else "") + "anat"
            prefix = f"sub-{subject}" + (f"_ses-{session}" if session else "")
            if session:  # move the demo images into the session folder
                for name in ("outphase", "water", "fat"):
                    src = bids / f"sub-{subject}/anat/sub-{subject}_acq-{name}_T1w.nii.gz"
                    dst = bids / anat_rel / f"{prefix}_acq-{name}_T1w.nii.gz"
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    dst.write_bytes(src.read_bytes())
            relpath = f"{anat_rel}/{prefix}_acq-outphase_T1w.nii.gz"
            image = InputImage(
                subject,
                session,
                bids / relpath,
                relpath,
                entities={"subject": subject, "acquisition": "outphase"},
            )
            labels = phantom_labels(volumes["tissue"])
            volume, geometry = nifti_io.load_canonical(image.path)
            dseg = out / anat_rel / f"{prefix}_acq-outphase_desc-muscles_dseg.nii.gz"
            nifti_io.save_labels(labels, geometry, dseg)
            sidecar = dseg.with_name(dseg.name.replace(".nii.gz", ".json"))
            sidecar.write_text(
                json.dumps(
                    {
                        "Sources": [f"bids:raw:{relpath}"],
                        "Models": [
                            {
                                "id": "legseg-upperleg-test",
                                "role": "upper_leg",
                                "sha256": "ab" * 32,
                            }
                        ],
                        "legseg": {
                            "software": {"legseg": "0.0.test"},
                            "timings_s": {"total": 2.0},
                        },
                    }
                )
            )
            probseg = None
            if probabilities:
                probseg = write_probseg(dseg, labels, geometry)
            if status == "done":
                results.append(
                    ImageResult(
                        image,
                        "done",
                        dseg,
                        sidecar,
                        labels,
                        volume,
                        geometry.ras_affine,
                        geometry.zooms_ras,
                        segmenter_report(),
                        [{"id": "legseg-upperleg-test", "role": "upper_leg", "sha256": "ab" * 32}],
                        probseg,
                    )
                )
            else:
                results.append(ImageResult(image, "skipped", dseg, sidecar, probseg_path=probseg))
        for name in ("outphase", "water", "fat"):
            if sessions != (None,):
                (bids / f"sub-{subject}/anat/sub-{subject}_acq-{name}_T1w.nii.gz").unlink()
                (bids / f"sub-{subject}/anat/sub-{subject}_acq-{name}_T1w.json").unlink()
    return bids, out, results


def write_probseg(dseg: Path, labels: np.ndarray, geometry) -> Path:
    """A probability map: 0.9 for the assigned label except 0.3 for VM_L and on slice 3."""
    label_map = [0] + sorted(int(v) for v in np.unique(labels) if v)
    probabilities = np.zeros(labels.shape + (len(label_map),), dtype=np.float32)
    for channel, value in enumerate(label_map):
        probabilities[..., channel][labels == value] = 0.3 if value == VM[0] else 0.9
    probabilities[:, :, 3, :] *= 0.4
    path = dseg.with_name(dseg.name.replace("_dseg.nii.gz", "_probseg.nii.gz"))
    image = nib.Nifti1Image(nifti_io.from_ras(probabilities, geometry), geometry.affine)
    nib.save(image, str(path))
    path.with_name(path.name.replace(".nii.gz", ".json")).write_text(
        json.dumps({"LabelMap": [abbreviation_of(v) for v in label_map],
                    "LabelIndices": [int(v) for v in label_map]})
    )
    return path


def read_table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)


# ------------------------------------------------ leg phantoms in mm (anatomy check) ----

MUSCLE, FAT, VOID = 100.0, 85.0, 2.0


def _ellipse(yy, xx, cy, cx, ry, rx):
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _bone(image, yy, xx, cy, cx, radius, marrow):
    """Cortex (3 mm thick void ring, 40 % of the radius at most) around marrow."""
    image[_ellipse(yy, xx, cy, cx, radius, radius)] = VOID
    inner = radius - min(3.0, 0.4 * radius)
    image[_ellipse(yy, xx, cy, cx, inner, inner)] = marrow


def _leg(image, yy, xx, cx, kind, side, marrow):
    """One leg in mm coordinates; side "R" lies at low x (lateral = towards x = 0)."""
    lateral = -1.0 if side == "R" else 1.0
    cy = 0.0
    ry, rx = (50.0, 55.0) if kind == "calf" else (70.0, 75.0)
    image[_ellipse(yy, xx, cy, cx, ry, rx)] = FAT                       # subcutaneous fat
    image[_ellipse(yy, xx, cy, cx, ry - 8, rx - 8)] = VOID              # fat-water line
    image[_ellipse(yy, xx, cy, cx, ry - 9, rx - 9)] = MUSCLE
    if kind == "calf":
        _bone(image, yy, xx, cy - ry + 22, cx - 8 * lateral, 12.0, marrow)      # tibia
        _bone(image, yy, xx, cy - ry + 40, cx + 22 * lateral, 7.0, marrow)      # fibula
    elif kind == "thigh":
        _bone(image, yy, xx, cy, cx, 14.0, marrow)                              # femur


def phantom_slice(spacing_mm, right="calf", left="calf", marrow=FAT, pelvis=False):
    """(y, x) slice of two legs (or one pelvis-like lobe) on a grid of ``spacing_mm``."""
    ny, nx = int(round(200 / spacing_mm)), int(round(420 / spacing_mm))
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64) * spacing_mm
    yy -= 100.0
    image = np.zeros((ny, nx), dtype=np.float32)
    if pelvis:
        image[_ellipse(yy, xx, 0.0, 210.0, 85.0, 170.0)] = FAT
        image[_ellipse(yy, xx, 0.0, 210.0, 75.0, 160.0)] = MUSCLE
        _bone(image, yy, xx, 30.0, 210.0, 18.0, marrow)                   # sacrum/symphysis
        _bone(image, yy, xx, 0.0, 110.0, 22.0, marrow)                    # femoral heads
        _bone(image, yy, xx, 0.0, 310.0, 22.0, marrow)
    else:
        _leg(image, yy, xx, 110.0, right, "R", marrow)
        _leg(image, yy, xx, 310.0, left, "L", marrow)
    rng = np.random.default_rng(0)
    return (image + rng.normal(0, 1.0, image.shape).astype(np.float32)).clip(0)


def phantom(spacing_mm, nz=3, **kwargs):
    """(z, y, x) volume of identical slices and its spacing (dz, dy, dx) in mm."""
    image = phantom_slice(spacing_mm, **kwargs)
    return np.repeat(image[None], nz, axis=0), (6.0, spacing_mm, spacing_mm)
