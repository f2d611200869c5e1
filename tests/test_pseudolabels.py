"""tools/make_pseudolabels.py: side swap on mirroring, fusion, agreement, a tiny registration."""
from __future__ import annotations

import sys

import nibabel as nib
import numpy as np
import pytest

from conftest import REPO_ROOT, shared_file, two_leg_volume

sys.path.insert(0, str(REPO_ROOT / "tools"))
import make_pseudolabels as mp  # noqa: E402

IGNORE = mp.IGNORE


def test_swap_sides_pairs_left_and_right():
    labels = np.array([0, 1, 2, 31, 32, 103, 104, 121, 151, IGNORE], dtype=np.uint16)
    swapped = mp.swap_sides(labels)
    assert swapped.tolist() == [0, 2, 1, 32, 31, 104, 103, 121, 151, IGNORE]
    np.testing.assert_array_equal(mp.swap_sides(swapped), labels)


def test_swap_sides_rejects_values_outside_the_table():
    with pytest.raises(ValueError, match="29"):
        mp.swap_sides(np.array([0, 29]))


def _asymmetric_left_leg():
    """RAS (x, y, z) Left-leg phantom: lateral VL_L (55) at low x, medial VM_L (59) at high x."""
    image = np.zeros((20, 10, 3), dtype=np.float32)
    labels = np.zeros(image.shape, dtype=np.uint16)
    image[2:6] = 100.0
    labels[2:6] = 55
    image[12:14, 3:5] = 50.0
    labels[12:14, 3:5] = 59
    labels[:, :, 2] = IGNORE
    return image, labels


def test_mirror_flips_x_and_swaps_sides():
    image, labels = _asymmetric_left_leg()
    mirrored_image, mirrored = mp.mirror_leg(image, labels)
    # The lateral block is now at high x (lateral of a Right leg) and labelled VL_R.
    assert mirrored_image[14:18].min() == 100.0 and mirrored_image[2:6].max() == 0.0
    assert set(np.unique(mirrored[14:18, :, :2])) == {56}
    assert set(np.unique(mirrored[6:8, 3:5, :2])) == {60}
    assert (mirrored[:, :, 2] == IGNORE).all()
    assert mp.label_sides(mirrored) == {"L": 0, "R": int((labels[:, :, :2] > 0).sum()), "": 0}
    back_image, back = mp.mirror_leg(mirrored_image, mirrored)
    np.testing.assert_array_equal(back, labels)
    np.testing.assert_array_equal(back_image, image)


def test_atlases_for_side_gives_same_side_leg_and_mirrored_other_leg():
    image, labels = _asymmetric_left_leg()
    left = mp.Leg("a_L", "L", image, image > 0, np.eye(4), labels=labels, source_side="L")
    right_image, right_labels = mp.mirror_leg(image, labels)
    right = mp.Leg("a_R", "R", right_image, right_image > 0, np.eye(4), labels=right_labels,
                   source_side="R")
    for side in ("L", "R"):
        chosen = mp.atlases_for_side([left, right], side)
        assert [a.mirrored for a in chosen] == [side == "R", side == "L"]
        for atlas in chosen:
            counts = mp.label_sides(atlas.labels)
            assert counts["L" if side == "R" else "R"] == 0 and counts[side] > 0
            assert atlas.side == side


def test_fuse_votes_majority_agreement_and_ignore():
    votes = np.array([
        [5, 5, 0, 5, IGNORE, IGNORE],
        [5, 6, 0, IGNORE, IGNORE, 0],
    ], dtype=np.uint16)
    fused, agreement, ignore = mp.fuse_votes(votes)
    assert fused.tolist() == [5, 0, 0, 0, 0, 0]
    np.testing.assert_allclose(agreement, [1, 0.5, 1, 0.5, 0, 0.5])
    assert ignore.tolist() == [False, True, False, True, True, True]


def test_fuse_votes_three_atlases_and_threshold():
    votes = np.array([[7, 7, 1], [7, 8, 2], [8, 9, 3]], dtype=np.uint16)
    fused, agreement, ignore = mp.fuse_votes(votes)
    assert fused.tolist() == [7, 0, 0]
    np.testing.assert_allclose(agreement, [2 / 3, 1 / 3, 1 / 3], rtol=1e-6)
    assert ignore.tolist() == [False, True, True]
    _, _, strict = mp.fuse_votes(votes, min_agreement=0.7)
    assert strict.tolist() == [True, True, True]
    with pytest.raises(ValueError):
        mp.fuse_votes(votes, min_agreement=1.0)
    with pytest.raises(ValueError):
        mp.fuse_votes(np.array([1, 2]))


def test_pairwise_dice_skips_ignored_voxels():
    a = np.array([3, 3, 3, 3, 0, IGNORE, 4], dtype=np.uint16)
    b = np.array([3, 3, 0, 0, 0, 3, IGNORE], dtype=np.uint16)
    dice = mp.pairwise_dice(np.stack([a, b]))
    assert dice[3] == (pytest.approx(2 * 2 / (4 + 2)), 1)
    # Label 4 only where the other atlas has no vote: no pair to compare.
    assert np.isnan(dice[4][0]) and dice[4][1] == 0
    assert 0 not in dice and IGNORE not in dice


def test_joint_offset_pools_the_curves():
    curves = [{-1: -0.2, 0: -0.5, 1: -0.3}, {0: -0.1, 1: -0.6, 2: -0.9}]
    assert mp.joint_offset(curves) == 1  # mean -0.45 at 1 beats -0.3 at 0; 2 is not common
    assert mp.joint_offset([{3: -1.0}, {4: -1.0}]) == 3
    assert mp.joint_offset([]) is None
    assert mp.joint_offset([{(0, 1.0): -0.2, (0, 0.9): -0.4}, {(0, 0.9): -0.1, (0, 1.0): -0.1}]) \
        == (0, 0.9)


def test_apply_slab_keeps_inclusive_range():
    mask = np.ones((2, 2, 6), dtype=bool)
    assert mp.apply_slab(mask, (1, 3)).sum(axis=(0, 1)).tolist() == [0, 4, 4, 4, 0, 0]


@pytest.mark.parametrize("flip_x", [False, True])
def test_target_legs_named_from_the_affine(tmp_path, flip_x):
    """The leg on the patient's left (bigger disc) is "L" whatever the file's x direction."""
    ras = two_leg_volume(shape=(64, 40, 6), left_radius=12, right_radius=7)
    affine = np.diag([1.5, 1.5, 6.0, 1.0])
    data = ras
    if flip_x:  # store as L-P-S-like x axis: array index 0 is the patient's right
        data = ras[::-1]
        affine = np.diag([-1.5, 1.5, 6.0, 1.0])
        affine[0, 3] = 63 * 1.5
    path = tmp_path / "stack.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(path))
    spec = mp.TargetSpec("phantom", "stack.nii.gz", "thigh", (0, 5))
    _, _, _, _, legs = mp.load_target(tmp_path, spec)
    by_side = {leg.side: leg for leg in legs}
    assert by_side["L"].mask.sum() > 2 * by_side["R"].mask.sum()
    centre_l = nib.affines.apply_affine(by_side["L"].affine,
                                        np.argwhere(by_side["L"].mask).mean(0))
    centre_r = nib.affines.apply_affine(by_side["R"].affine,
                                        np.argwhere(by_side["R"].mask).mean(0))
    assert centre_l[0] < centre_r[0]  # RAS: the patient's left has the smaller x


def _blob_leg(shift_mm=(0.0, 0.0, 0.0)):
    """An asymmetric (x, y, z) phantom at 2 x 2 x 4 mm, shifted by ``shift_mm`` in the world."""
    shape = (40, 36, 12)
    spacing = np.array([2.0, 2.0, 4.0])
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)],
                                indexing="ij"), axis=-1) - np.asarray(shift_mm)
    centre = np.array([40.0, 36.0, 24.0])
    d = (grid - centre) / np.array([26.0, 20.0, 30.0])
    body = (d ** 2).sum(-1) <= 1
    inner = ((grid - centre - [8.0, -4.0, 0.0]) / [9.0, 6.0, 30.0]) ** 2
    core = inner.sum(-1) <= 1
    image = np.where(body, 60.0, 0.0) + np.where(core, 60.0, 0.0)
    image += 20.0 * body * (grid[..., 0] > centre[0] + 14)
    labels = np.where(core, 55, np.where(body, 57, 0)).astype(np.uint16)
    affine = np.diag([*spacing, 1.0])
    return mp.Leg("blob", "L", image.astype(np.float32), body, affine, labels=labels)


def test_registration_recovers_a_known_shift():
    shift = np.array([6.0, -4.0, 0.0])
    fixed = _blob_leg(shift)
    moving = _blob_leg()
    settings = mp.RegistrationSettings(search_grid_mm=4.0, affine_levels_mm=(4.0, 2.0),
                                       affine_iterations=60, bspline_iterations=0, sampling=0.5)
    result = mp.register_leg(fixed, moving, settings, seed=1)
    point = np.array([50.0, 30.0, 24.0])
    mapped = np.array(result.transform.TransformPoint(point.tolist()))
    np.testing.assert_allclose(mapped, point - shift, atol=1.0)
    carried = mp.propagate_labels(moving, fixed, result.transform)
    core_fixed, core_carried = fixed.labels == 55, carried == 55
    dice = 2 * (core_fixed & core_carried).sum() / (core_fixed.sum() + core_carried.sum())
    assert dice > 0.9
    assert result.seconds < 30


@pytest.mark.realdata
def test_thigh_atlas_sides_and_ignored_slices():
    shared_file("data", "qmritools", "scripts_test_data", "out.nii.gz")
    legs = {leg.side: leg for leg in mp.load_thigh_atlas(mp.DEFAULT_DATA)}
    for side, leg in legs.items():
        counts = mp.label_sides(leg.labels)
        other = "R" if side == "L" else "L"
        assert counts[side] > 0 and counts[other] == 0
        first, last = mp.THIGH_COMPLETE_SLICES[side]
        z = np.arange(leg.box[2].start, leg.box[2].stop)
        assert (leg.labels[:, :, (z < first) | (z > last)] == IGNORE).all()
        assert (leg.labels[:, :, (z >= first) & (z <= last)] != IGNORE).mean() > 0.99


def test_qc_montage_writes_a_png(tmp_path):
    volume = two_leg_volume(shape=(48, 32, 8))
    fused = np.where(volume > 50, 55, 0).astype(np.uint16)
    ignore = np.zeros(volume.shape, dtype=bool)
    ignore[:10] = volume[:10] > 50
    path = mp.qc_montage(volume, fused, ignore, (1.5, 1.5, 6.0), (1, 6), "phantom",
                         tmp_path / "qc.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
