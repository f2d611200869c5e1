"""Training cases: label remapping, crop, resampling and the geometric left/right leg split."""
from __future__ import annotations

import numpy as np
import pytest

from legseg_tf.training.data import (
    TrainingCase,
    class_counts,
    crop_to_body,
    final_to_training_map,
    load_case,
    remap_labels,
    resample_case,
    split_legs,
)
from tests.conftest import write_nifti


def test_final_to_training_map_merges_sides():
    mapping = final_to_training_map("N5_UpperLeg")
    assert mapping[31] == mapping[32] == 1          # biceps femoris long L/R
    assert mapping[103] == mapping[104] == 19       # femur
    assert mapping[151] == 21                       # subcutaneous fat (no side)
    lower = final_to_training_map("N6_LowerLeg")
    assert lower[1] == lower[2] == 1 and lower[107] == lower[108] == 16
    with pytest.raises(ValueError):
        final_to_training_map("NoSuchTable")


def test_remap_labels_unmapped_become_background():
    labels = np.array([[0, 31, 32], [99, 104, 31]])
    out = remap_labels(labels, {31: 1, 32: 1, 104: 19})
    np.testing.assert_array_equal(out, [[0, 1, 1], [0, 19, 1]])
    with pytest.raises(ValueError):
        remap_labels(np.array([-1]), {1: 2})


def _case(shape=(6, 20, 30)):
    image = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.int32)
    image[1:5, 5:15, 4:12] = 100.0
    labels[2:4, 7:12, 5:10] = 3
    return TrainingCase("phantom", image, labels, (6.0, 1.5, 1.5))


def test_crop_to_body_keeps_all_tissue_with_padding():
    case = crop_to_body(_case(), padding=2)
    assert case.image.shape == (6, 14, 12)
    assert case.image.sum() == _case().image.sum()
    assert class_counts(case.labels, 4)[3] == 2 * 5 * 5


def test_resample_case_changes_grid_and_keeps_labels():
    case = _case()
    out = resample_case(case, (6.0, 0.75, 0.75))
    assert out.image.shape == (6, 40, 60) and out.spacing == (6.0, 0.75, 0.75)
    assert set(np.unique(out.labels)) == {0, 3}
    # label volume in mm^3 is preserved within a voxel layer
    before = (case.labels == 3).sum() * 6 * 1.5 * 1.5
    after = (out.labels == 3).sum() * 6 * 0.75 * 0.75
    assert abs(after - before) / before < 0.25
    assert resample_case(case, case.spacing) is case


def test_case_validation():
    with pytest.raises(ValueError):
        TrainingCase("bad", np.zeros((2, 3, 4)), np.zeros((2, 3, 5)), (1, 1, 1))
    with pytest.raises(ValueError):
        TrainingCase("bad", np.zeros((2, 3, 4)), np.zeros((2, 3, 4)), (1, 0, 1))


@pytest.mark.parametrize("x_step", [1.5, -1.5])
def test_split_legs_sides_come_from_the_affine(tmp_path, x_step):
    """Patient-left leg is big (label 1), patient-right leg small (label 2), in RAS terms.

    With a negative x step the file stores the legs in the opposite array order; the split
    must still call the big leg "L".
    """
    nx, ny, nz = 60, 40, 6
    xx, yy = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    ras = np.zeros((nx, ny, nz), np.float32)
    lab = np.zeros((nx, ny, nz), np.int16)
    left = (xx - 15) ** 2 + (yy - 20) ** 2 <= 11 ** 2     # low RAS x = patient left
    right = (xx - 45) ** 2 + (yy - 20) ** 2 <= 7 ** 2
    ras[left], ras[right] = 100.0, 100.0
    lab[left], lab[right] = 1, 2
    affine = np.diag([x_step, 1.5, 6.0, 1.0])
    data, labels = ras, lab
    if x_step < 0:  # store the same anatomy with the x axis reversed
        data, labels = ras[::-1], lab[::-1]
        affine[0, 3] = (nx - 1) * 1.5
    write_nifti(tmp_path / "img.nii.gz", data, affine)
    write_nifti(tmp_path / "lab.nii.gz", labels, affine)
    case = load_case(tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz")
    right_leg, left_leg = split_legs(case)
    assert right_leg.side == "R" and left_leg.side == "L"
    assert set(np.unique(right_leg.labels)) == {0, 2}
    assert set(np.unique(left_leg.labels)) == {0, 1}
