"""Test helpers shared by several test modules: oriented and hand-patched NIfTI files, tiny
installed networks, models folders with cards, a planted failed segmentation. (Test modules
import from here, never from each other.)"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations

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


def _always(dense_or_conv, index: int) -> None:
    """Make the last layer before a softmax ignore its input and pick class ``index``."""
    kernel, bias = dense_or_conv.get_weights()
    constant = np.zeros_like(bias)
    constant[index] = 10.0
    dense_or_conv.set_weights([np.zeros_like(kernel), constant])


def install_tiny_models(models_dir: Path, seed: int = 0, always: dict | None = None) -> None:
    """Tiny networks for every role (seeded weights), installed through the model store.

    Args:
        models_dir: the models folder to write (manifest, configs, weights).
        seed: Keras seed of the random weights.
        always: optional deterministic outputs instead of what random weights happen to
            predict: ``{"upper_leg": class, "lower_leg": class}`` (training-table class
            numbers) and ``{"side": name, "position": name}`` for the classifier; the named
            network then gives that class for every voxel or slice (softmax about 0.999).
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
                _always(model.get_layer("map__1"), always[role])
        else:
            config = NetClassifierConfig(image_size=(64, 64), head="linear")
            model = build_classifier(config)
            if "side" in always:
                _always(model.get_layer("Side__1"), config.side_classes.index(always["side"]))
            if "position" in always:
                _always(model.get_layer("Position__1"),
                        config.position_classes.index(always["position"]))
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
