"""Fat fraction on the QMRITools demo Dixon water/fat images (real calf MRI).

Labels for the water grid: QMRITools' manual ``labels.nii.gz`` lives on the ``twoLegs`` grid
whose header places it 480 mm away from the water/fat grid (origins -240 mm and +240 mm, headers
not in a common world space), so resampling through the affines reaches no water/fat voxel -
checked below. The statistics are therefore checked on a threshold-based label map drawn on
the water grid itself: water-dominant voxels of the body, split into the patient's left/right
(canonical RAS x) and anterior/posterior (y) halves of each leg and given the Muscles_leg
values of tibialis anterior (21/22) and soleus (5/6). These labels are not anatomical; they
exercise the arithmetic on real intensities, partial volume and noise.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from legseg_tf import fatfraction as ff
from tests.conftest import shared_file

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def demo():
    water_path = shared_file("data", "qmritools", "DemoData", "water.nii.gz")
    fat_path = shared_file("data", "qmritools", "DemoData", "fat.nii.gz")
    water_image, fat_image = nib.load(str(water_path)), nib.load(str(fat_path))
    assert nib.aff2axcodes(water_image.affine) == ("R", "A", "S")  # canonical as stored
    water = np.asarray(water_image.dataobj, dtype=np.float64)
    fat = np.asarray(fat_image.dataobj, dtype=np.float64)
    return water_path, fat_path, water, fat, water_image.affine


def threshold_labels(water: np.ndarray, fat: np.ndarray) -> np.ndarray:
    body = (water + fat) > 0.1 * np.percentile(water + fat, 99)
    muscle = body & (water > 2.0 * fat)
    labels = np.zeros(water.shape, dtype=np.uint16)
    xs = np.nonzero(body)[0]
    middle = 0.5 * (xs.min() + xs.max())
    x_index = np.arange(water.shape[0])[:, None, None]
    y_index = np.arange(water.shape[1])[None, :, None]
    for left, (anterior, posterior) in ((True, (21, 5)), (False, (22, 6))):
        leg = muscle & ((x_index < middle) if left else (x_index >= middle))
        y_centre = np.nonzero(leg)[1].mean()
        labels[leg & (y_index >= y_centre)] = anterior
        labels[leg & (y_index < y_centre)] = posterior
    return labels


def direct_ff(water, fat):
    water, fat = np.clip(water, 0, None), np.clip(fat, 0, None)
    total = water + fat
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 100 * fat / total, np.nan)


def direct_in_plane_erosion(labels: np.ndarray) -> np.ndarray:
    """Keep a voxel when its 4 in-plane neighbours carry the same label (numpy shifts only)."""
    padded = np.pad(labels, ((1, 1), (1, 1), (0, 0)))
    core = padded[1:-1, 1:-1]
    same = core > 0
    for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        same &= (
            padded[1 + dx : padded.shape[0] - 1 + dx, 1 + dy : padded.shape[1] - 1 + dy] == core
        )
    return np.where(same, labels, 0)


def summary(values):
    values = values[np.isfinite(values)]
    q25, q50, q75 = np.percentile(values, [25, 50, 75])
    return values.mean(), q50, q75 - q25, values.size


def test_ff_per_label_matches_direct_numpy_on_the_water_grid(demo, tmp_path):
    water_path, fat_path, water, fat, affine = demo
    labels = threshold_labels(water, fat)
    assert set(np.unique(labels)) == {0, 5, 6, 21, 22}
    bids = tmp_path / "bids"
    anat = bids / "sub-demo" / "anat"
    anat.mkdir(parents=True)
    (anat / "sub-demo_acq-water_T1w.nii.gz").symlink_to(water_path)
    (anat / "sub-demo_acq-fat_T1w.nii.gz").symlink_to(fat_path)
    result = ff.session_fat_fraction(labels, affine, bids, "demo", None, erosion=1)
    assert result.source.method == "dixon" and not result.resampled
    assert result.source.describe(bids)["Water"] == "sub-demo/anat/sub-demo_acq-water_T1w.nii.gz"
    voxel_ff = direct_ff(water, fat)
    eroded = direct_in_plane_erosion(labels)
    for value in (5, 6, 21, 22):
        stats = result.per_label[value]
        mean, median, iqr, count = summary(voxel_ff[labels == value])
        assert (stats["ff_mean"], stats["ff_median"], stats["ff_iqr"]) == pytest.approx(
            (mean, median, iqr), rel=1e-9
        )
        assert stats["ff_voxels"] == count
        e_mean, e_median, e_iqr, e_count = summary(voxel_ff[eroded == value])
        assert (
            stats["ff_eroded_mean"],
            stats["ff_eroded_median"],
            stats["ff_eroded_iqr"],
        ) == pytest.approx((e_mean, e_median, e_iqr), rel=1e-9)
        assert stats["ff_eroded_voxels"] == e_count
        for key in ("ff_mean", "ff_median", "ff_eroded_mean", "ff_eroded_median"):
            assert 0.0 <= stats[key] <= 100.0
        # erosion removes the partial-volume rim next to fat: never a fattier estimate
        assert stats["ff_eroded_mean"] <= stats["ff_mean"]


def test_ff_on_a_coarser_label_grid_samples_the_water_grid(demo):
    _, _, water, fat, affine = demo
    labels = threshold_labels(water, fat)
    coarse_affine = affine.copy()
    coarse_affine[:3, :3] = np.diag([3.0, 3.0, 6.0])  # centres on every 2nd water voxel
    coarse = labels[::2, ::2, :]
    per_label, resampled = ff.label_fat_fraction(
        coarse, coarse_affine, water, fat, affine, erosion=0
    )
    assert resampled
    expected = direct_ff(water[::2, ::2], fat[::2, ::2])
    for value in (5, 6, 21, 22):
        mean, median, iqr, count = summary(expected[coarse == value])
        stats = per_label[value]
        assert (stats["ff_mean"], stats["ff_median"], stats["ff_iqr"]) == pytest.approx(
            (mean, median, iqr), rel=1e-6
        )
        assert stats["ff_voxels"] == count


def test_manual_labels_do_not_overlap_the_water_grid_in_world_space(demo):
    _, _, water, fat, affine = demo
    label_image = nib.load(str(shared_file("data", "qmritools", "DemoData", "labels.nii.gz")))
    labels = np.asarray(label_image.dataobj).astype(np.uint16)
    per_label, resampled = ff.label_fat_fraction(
        labels, label_image.affine, water, fat, affine, erosion=1
    )
    assert resampled and sorted(per_label) == list(range(13, 27))
    assert all(stats["ff_voxels"] == 0 for stats in per_label.values())
