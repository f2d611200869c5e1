"""Test helpers shared by several test modules: oriented NIfTI files, tiny installed networks
and models folders with cards. (Test modules import from here, never from each other.)"""
from __future__ import annotations

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
