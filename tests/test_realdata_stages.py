"""SegmentData stages on the QMRITools test thighs (real MRI) against QMRITools' own labels.

``test.nii.gz`` holds both thighs; ``out.nii.gz`` is QMRITools' segmentation of it (odd labels
= Left, femurs 103 Left and 104 Right). The header is a simple QMRITools header, read as RAS.
"""
from pathlib import Path

import numpy as np
import pytest

from legseg_tf import nifti_io
from legseg_tf.body_position import ClassifierConfig, classifier_images, classify_body
from legseg_tf.labels import rename_train_labels, train_label_map
from legseg_tf.masking import apply_mask, body_mask
from legseg_tf.merge import merge_parts
from legseg_tf.postprocessing import (
    largest_component_per_label,
    largest_own_side_component_per_label,
)
from legseg_tf.side import decide_side, geometric_side, midline_column, resolve_midline
from legseg_tf.split import find_middle, split_parts

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "data" / "qmritools" / "scripts_test_data"

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not (DATA / "test.nii.gz").is_file(),
                       reason=f"real test data not found at {DATA}"),
]

FEMUR_LEFT, FEMUR_RIGHT = 103, 104


@pytest.fixture(scope="module")
def thighs():
    volume_ras, geometry = nifti_io.load_canonical(DATA / "test.nii.gz")
    labels_ras, _ = nifti_io.load_canonical(DATA / "out.nii.gz")
    volume = nifti_io.ras_to_qmri(volume_ras)
    labels = nifti_io.ras_to_qmri(np.rint(labels_ras).astype(np.int32))
    mask = body_mask(volume)
    masked = apply_mask(volume, mask)
    return volume, labels, mask, masked, geometry, volume_ras.shape


def test_body_mask_covers_the_reference_labels(thighs):
    _, labels, mask, _, _, _ = thighs
    labelled = labels > 0
    coverage = mask[labelled].mean()
    assert coverage >= 0.99, f"mask covers {coverage:.4f} of labelled voxels"
    # and it is a body mask, not the whole field of view
    assert mask.mean() < 0.5


def test_reference_left_labels_lie_on_the_patient_left_columns(thighs):
    _, labels, _, _, _, _ = thighs
    left = np.isin(labels, np.arange(31, 71, 2))
    right = np.isin(labels, np.arange(32, 71, 2))
    # QMRITools layout: column 0 = patient right, so Left labels have the higher columns
    assert np.nonzero(left)[2].mean() > np.nonzero(right)[2].mean()


def test_classifier_images(thighs):
    _, _, mask, masked, _, _ = thighs
    inputs = classifier_images(masked, ClassifierConfig())
    assert inputs.images.shape[1:] == (128, 128)
    assert inputs.images.dtype == np.float32
    assert inputs.images.min() >= 0.0 and inputs.images.max() <= 1.0
    # tissue fills every slice of this volume: all slices are classified, none blank
    tissue_slices = np.flatnonzero(mask.any(axis=(1, 2)))
    assert set(tissue_slices) <= set(inputs.slices)
    # every slice was min-max scaled (bilinear down-sampling lowers the single brightest pixel)
    assert np.all(inputs.images.max(axis=(1, 2)) > 0.75)
    assert np.all(inputs.images.mean(axis=(1, 2)) > 0.1)


def test_cut_between_the_femurs_and_each_part_holds_one_femur(thighs):
    _, labels, mask, masked, geometry, shape_ras = thighs
    nz, _, nx = masked.shape
    cut = find_middle(masked)
    right_femur_columns = np.nonzero(labels == FEMUR_RIGHT)[2]
    left_femur_columns = np.nonzero(labels == FEMUR_LEFT)[2]
    assert right_femur_columns.max() < cut <= left_femur_columns.min()

    midline, _ = resolve_midline(midline_column(geometry.ras_affine, shape_ras), nx)
    decision = decide_side("Both", geometric_side(mask, cut, midline))
    assert decision.side == "Both" and not decision.warnings

    parts = split_parts(masked, "Both", cut, {"UpperLegs": (0, nz - 1)})
    assert [p.side for p in parts] == ["R", "L"]
    femurs = {}
    for part in parts:
        inside = labels[part.box]
        for femur in (FEMUR_LEFT, FEMUR_RIGHT):
            share = (inside == femur).sum() / (labels == femur).sum()
            assert share in (0.0, 1.0), f"femur {femur} split by part {part.side}"
            if share == 1.0:
                femurs.setdefault(part.side, []).append(femur)
        np.testing.assert_array_equal(masked[part.box], part.data)
    assert femurs == {"R": [FEMUR_RIGHT], "L": [FEMUR_LEFT]}
    # each part holds (nearly) all of its own leg's reference labels
    for part, parity in ((parts[0], 0), (parts[1], 1)):
        own = (labels > 0) & (labels % 2 == parity) & (labels < 121)
        covered = own[part.box].sum() / own.sum()
        assert covered > 0.99


def reference_as_train_labels(reference):
    """Map Muscles_leg labels back to N5_UpperLeg classes, forgetting the side."""
    inverse = np.zeros(256, dtype=np.int32)
    for side in ("L", "R"):
        for train_class, final in enumerate(train_label_map("N5_UpperLeg", side)):
            if train_class:
                inverse[final] = train_class
    return inverse[reference]


@pytest.mark.parametrize("network_keeps_largest", [False, True])
def test_split_rename_merge_reproduce_the_reference(thighs, network_keeps_largest):
    """An oracle 'network' that returns the reference labels of each part without side.

    The gracilis and sartorius of each leg reach into the other leg's part (10 % overlap);
    the right ones are the larger, so per-part largest-component selection alone would name
    the right gracilis and sartorius Left. Own-side selection keeps the sides right.
    """
    _, labels, _, masked, _, _ = thighs
    nz = masked.shape[0]
    cut = find_middle(masked)
    train = reference_as_train_labels(labels)
    crops = []
    for part in split_parts(masked, "Both", cut, {"UpperLegs": (0, nz - 1)}):
        predicted = train[part.box]
        if network_keeps_largest:
            predicted = largest_component_per_label(predicted)
        columns = np.arange(part.box[2].start, part.box[2].stop)
        own = columns < cut if part.side == "R" else columns >= cut
        predicted = largest_own_side_component_per_label(predicted, own)
        crops.append((rename_train_labels(predicted, "N5_UpperLeg", part.side), part.box))
    merged = merge_parts(crops, masked.shape)
    odd = (merged % 2 == 1) & (merged < 121)
    even = (merged % 2 == 0) & (merged > 0) & (merged < 121)
    assert not odd[:, :, :cut].any() and not even[:, :, cut:].any()
    if network_keeps_largest:
        # the left gracilis (47) and sartorius (63) are lost, but nothing is mislabelled
        differs = merged != labels
        assert set(np.unique(labels[differs])) <= {47, 63}
        assert set(np.unique(merged[differs])) == {0}
    else:
        np.testing.assert_array_equal(merged, labels)


def test_segmenter_with_an_oracle_network_reproduces_the_reference(thighs, monkeypatch):
    """Whole SegmentData flow on the real thighs; the 'network' returns the side-less reference
    classes of the part it is given, so every difference comes from the pipeline."""
    from legseg_tf import segmenter as segmenter_module
    from legseg_tf.segmenter import QMRIToolsSegmenter, RegionNetwork

    volume, labels, _, _, geometry, shape_ras = thighs
    train = reference_as_train_labels(labels)
    boxes = []

    def recording_split_parts(*args, **kwargs):
        parts = split_parts(*args, **kwargs)
        boxes.extend(part.box for part in parts)
        return parts

    monkeypatch.setattr(segmenter_module, "split_parts", recording_split_parts)
    calls = iter(range(10))

    def oracle(part):
        box = boxes[next(calls)]
        assert part.shape == train[box].shape
        return train[box]

    network = RegionNetwork("upper_leg", "oracle", "0" * 64, "N5_UpperLeg", oracle)
    result = QMRIToolsSegmenter("upper", {"upper_leg": network}).segment(
        volume, nifti_io.qmri_spacing(geometry),
        midline_column=midline_column(geometry.ras_affine, shape_ras))
    assert result.report.side.decision == "Both" and len(boxes) == 2
    assert (result.labels == labels).mean() > 0.9999
    for label in set(np.unique(labels)) - {0}:
        a, b = labels == label, result.labels == label
        dice = 2 * (a & b).sum() / (a.sum() + b.sum())
        assert dice > 0.99, f"label {label}: Dice {dice:.4f}"


def test_installed_classifier_finds_the_thighs(thighs):
    """The shipped side/position classifier finds the thighs of test.nii.gz through the
    segmenter's path (v2 trains on every real stack; its figure for this stack with the stack
    left out is in models/cards/legseg-classifier-small-v2.md: the same ranges)."""
    models_dir = Path(__file__).resolve().parents[1] / "models"
    from legseg_tf import model_store

    manifest = model_store.load_manifest(models_dir)
    if manifest.get("classifier") is None:
        pytest.skip(f"no classifier installed in {models_dir}")
    from legseg_tf.config import InferenceConfig
    from legseg_tf.model_adapters import slice_classifier as _slice_classifier

    classifier = _slice_classifier(manifest.get("classifier"), InferenceConfig())
    _, _, _, masked, _, _ = thighs
    result = classify_body(masked, classifier, ("LowerLegs", "UpperLegs"),
                           ClassifierConfig(image_size=classifier.image_size))
    assert result.side == "Both"
    assert result.ranges == {"UpperLegs": (0, masked.shape[0] - 1)}
