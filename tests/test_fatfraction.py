"""Fat fraction: image discovery in BIDS, two-point rule, erosion, resampling, per-label stats."""

from __future__ import annotations

import json

import numpy as np
import pytest

from legseg_tf import fatfraction as ff
from legseg_tf.bids_inputs import session_files
from tests.conftest import write_nifti

AFFINE = np.diag([2.0, 2.0, 6.0, 1.0])


def test_fat_fraction_percent_range_and_undefined_voxels():
    water = np.array([100.0, 0.0, 50.0, -5.0, 0.0])
    fat = np.array([0.0, 100.0, 50.0, 10.0, 0.0])
    result = ff.fat_fraction(water, fat)
    np.testing.assert_allclose(result[:4], [0.0, 100.0, 50.0, 100.0])
    assert np.isnan(result[4])


def test_two_point_recovers_water_dominant_and_folds_fat_dominant():
    water = np.array([90.0, 60.0, 30.0])
    fat = np.array([10.0, 40.0, 70.0])
    in_phase, out_phase = water + fat, np.abs(water - fat)
    w, f = ff.two_point_dixon(in_phase, out_phase)
    result = ff.fat_fraction(w, f)
    np.testing.assert_allclose(result[:2], [10.0, 40.0], atol=1e-5)
    # magnitude two-point Dixon cannot tell 70 % from 30 % fat: the documented ambiguity
    assert result[2] == pytest.approx(30.0, abs=1e-5)
    with pytest.raises(ValueError):
        ff.two_point_dixon(np.zeros(3), np.zeros(4))


def test_erosion_is_in_plane_and_per_label():
    labels = np.zeros((12, 9, 4), dtype=np.uint16)
    labels[1:6, 1:6, :] = 55  # 5x5 block on every slice
    labels[6:11, 1:6, :] = 56  # touching neighbour, eroded on its own
    eroded = ff.erode_labels(labels, 1)
    for value, (x0, x1) in ((55, (2, 5)), (56, (7, 10))):
        inside = eroded == value
        assert inside.sum() == 3 * 3 * 4  # every slice kept: no erosion along z
        xs = np.nonzero(inside)[0]
        assert (xs.min(), xs.max() + 1) == (x0, x1)
    assert ff.erode_labels(labels, 2).astype(bool).sum() == 2 * 1 * 4
    np.testing.assert_array_equal(ff.erode_labels(labels, 0), labels)
    with pytest.raises(ValueError):
        ff.erode_labels(labels, -1)


def test_sampling_between_grids_is_exact_for_linear_images_and_nan_outside():
    fine = np.diag([1.0, 1.0, 3.0, 1.0])
    x, y, z = np.meshgrid(np.arange(20.0), np.arange(16.0), np.arange(6.0), indexing="ij")
    image = 2.0 * x + 3.0 * y + 5.0 * (3.0 * z)  # linear in world mm
    coarse = np.diag([2.0, 2.0, 6.0, 1.0])
    coarse[:3, 3] = [0.5, 0.5, 1.5]  # voxel centres between fine centres
    voxels = np.array([[0, 0, 0], [3, 2, 1], [8, 6, 1], [30, 0, 0]])
    values = ff.sample_at_voxels(image, fine, voxels, coarse)
    world = (coarse[:3, :3] @ voxels[:3].T).T + coarse[:3, 3]
    np.testing.assert_allclose(values[:3], 2 * world[:, 0] + 3 * world[:, 1] + 5 * world[:, 2])
    assert np.isnan(values[3])


def _labels_and_images(shape=(16, 12, 4)):
    rng = np.random.default_rng(1)
    labels = np.zeros(shape, dtype=np.uint16)
    labels[2:7, 2:9, :] = 55
    labels[9:14, 2:9, :] = 56
    water = rng.uniform(50, 100, shape)
    fat = rng.uniform(0, 40, shape)
    return labels, water, fat


def _direct(values):
    q25, q50, q75 = np.percentile(values, [25, 50, 75])
    return values.mean(), q50, q75 - q25


def test_label_statistics_match_direct_numpy_on_the_same_grid():
    labels, water, fat = _labels_and_images()
    per_label, resampled = ff.label_fat_fraction(labels, AFFINE, water, fat, AFFINE, erosion=1)
    assert not resampled
    voxel_ff = 100 * fat / (water + fat)
    for value in (55, 56):
        mean, median, iqr = _direct(voxel_ff[labels == value])
        stats = per_label[value]
        assert (stats["ff_mean"], stats["ff_median"], stats["ff_iqr"]) == pytest.approx(
            (mean, median, iqr)
        )
        assert stats["ff_voxels"] == (labels == value).sum()
        core = np.zeros_like(labels, dtype=bool)
        sl = np.nonzero(labels == value)
        core[sl[0].min() + 1 : sl[0].max(), sl[1].min() + 1 : sl[1].max(), :] = True
        e_mean, e_median, e_iqr = _direct(voxel_ff[core])
        assert stats["ff_eroded_mean"] == pytest.approx(e_mean)
        assert stats["ff_eroded_median"] == pytest.approx(e_median)
        assert stats["ff_eroded_iqr"] == pytest.approx(e_iqr)
        assert stats["ff_eroded_voxels"] == core.sum()


def test_label_statistics_on_a_coarser_label_grid_sample_the_fine_images():
    labels, water, fat = _labels_and_images((16, 12, 4))
    fine = np.diag([1.0, 1.0, 6.0, 1.0])
    coarse = np.diag([2.0, 2.0, 6.0, 1.0])  # coarse centres = every 2nd fine centre
    coarse_labels = labels[::2, ::2, :]
    per_label, resampled = ff.label_fat_fraction(
        coarse_labels, coarse, water, fat, fine, erosion=0
    )
    assert resampled
    expected = 100 * fat[::2, ::2] / (water[::2, ::2] + fat[::2, ::2])
    for value in (55, 56):
        mean, median, iqr = _direct(expected[coarse_labels == value])
        stats = per_label[value]
        assert (stats["ff_mean"], stats["ff_median"], stats["ff_iqr"]) == pytest.approx(
            (mean, median, iqr)
        )
        assert stats["ff_eroded_mean"] == pytest.approx(mean)  # erosion 0 = same voxels


def _dataset(
    tmp_path, files: dict[str, dict | None], root_sidecars: dict[str, dict] | None = None
):
    bids = tmp_path / "bids"
    shape = (16, 12, 4)
    labels, water, fat = _labels_and_images(shape)
    for relpath, sidecar in files.items():
        data = water if "water" in relpath or "echo-1" in relpath else fat
        write_nifti(bids / relpath, data.astype(np.float32), AFFINE, sidecar)
    for name, content in (root_sidecars or {}).items():
        (bids / name).write_text(json.dumps(content))
    return bids


def test_finds_dixon_pair_of_the_session(tmp_path):
    bids = _dataset(
        tmp_path,
        {
            "sub-01/ses-a/anat/sub-01_ses-a_acq-water_T1w.nii.gz": None,
            "sub-01/ses-a/anat/sub-01_ses-a_acq-fat_T1w.nii.gz": None,
            "sub-01/ses-b/anat/sub-01_ses-b_acq-fatfrac_T1w.nii.gz": None,
        },
    )
    source = ff.find_fat_water(bids, "01", "a")
    assert source.method == "dixon"
    assert source.first.name.endswith("acq-water_T1w.nii.gz") and source.second.name.endswith(
        "acq-fat_T1w.nii.gz"
    )
    assert ff.find_fat_water(bids, "01", "b") is None
    assert ff.find_fat_water(bids, "02", None) is None


def test_finds_vendor_in_and_out_of_phase_pair(tmp_path):
    bids = _dataset(
        tmp_path,
        {
            "sub-01/anat/sub-01_acq-inphase_T1w.nii.gz": None,
            "sub-01/anat/sub-01_acq-outphase_T1w.nii.gz": None,
        },
    )
    source = ff.find_fat_water(bids, "01", None)
    assert source.method == "two-point"
    assert "inphase" in source.first.name and "outphase" in source.second.name


@pytest.mark.parametrize("field_t, ip_te, op_te", [(3.0, 0.0023, 0.00345), (1.5, 0.0046, 0.0023)])
def test_megre_echoes_chosen_by_phase_at_the_field_strength(tmp_path, field_t, ip_te, op_te):
    files = {}
    for echo, te in ((1, 0.0023), (2, 0.00345), (3, 0.0046)):
        files[f"sub-01/anat/sub-01_echo-{echo}_part-mag_MEGRE.nii.gz"] = {"EchoTime": te}
        files[f"sub-01/anat/sub-01_echo-{echo}_part-phase_MEGRE.nii.gz"] = {
            "EchoTime": te,
            "Units": "rad",
        }
    # field strength inherited from a dataset-level sidecar
    bids = _dataset(tmp_path, files, {"MEGRE.json": {"MagneticFieldStrength": field_t}})
    source = ff.find_fat_water(bids, "01", None)
    assert source.method == "two-point"
    assert source.echo_times_s == (ip_te, op_te)
    assert "part-mag" in source.first.name and "part-mag" in source.second.name
    assert source.describe(bids)["InPhase"].startswith("sub-01/anat/")


def test_session_fat_fraction_end_to_end_and_grid_mismatch(tmp_path):
    bids = _dataset(
        tmp_path,
        {
            "sub-01/anat/sub-01_acq-water_T1w.nii.gz": None,
            "sub-01/anat/sub-01_acq-fat_T1w.nii.gz": None,
        },
    )
    labels, water, fat = _labels_and_images()
    result = ff.session_fat_fraction(labels, AFFINE, bids, "01", None, erosion=1)
    expected = 100 * fat / (water + fat)
    assert result.per_label[55]["ff_mean"] == pytest.approx(
        expected[labels == 55].mean(), rel=1e-5
    )
    assert not result.resampled and result.source.method == "dixon"
    # a label grid far away from the water/fat field of view: no voxel, a warning
    shifted = AFFINE.copy()
    shifted[:3, 3] = [500.0, 0.0, 0.0]
    far = ff.session_fat_fraction(labels, shifted, bids, "01", None)
    assert (
        far.resampled
        and far.per_label[55]["ff_voxels"] == 0
        and np.isnan(far.per_label[55]["ff_mean"])
    )
    assert any("field of view" in w for w in far.warnings)


def test_metadata_inheritance_prefers_the_file_sidecar(tmp_path):
    bids = _dataset(
        tmp_path,
        {"sub-01/anat/sub-01_echo-1_part-mag_MEGRE.nii.gz": {"EchoTime": 0.002}},
        {"MEGRE.json": {"EchoTime": 9.0, "MagneticFieldStrength": 1.5}},
    )
    [image] = session_files(bids, "01", None)
    assert image.path == bids / "sub-01/anat/sub-01_echo-1_part-mag_MEGRE.nii.gz"
    assert image.metadata == {"EchoTime": 0.002, "MagneticFieldStrength": 1.5}
    assert image.entities["echo"] in (1, "1") and image.entities["part"] == "mag"


def test_pair_sharing_the_run_of_the_segmented_image_is_preferred(tmp_path):
    bids = _dataset(
        tmp_path,
        {
            f"sub-01/anat/sub-01_acq-{kind}_run-0{run}_T1w.nii.gz": None
            for kind in ("water", "fat")
            for run in (1, 2)
        },
    )
    assert "run-01" in ff.find_fat_water(bids, "01", None).first.name
    assert "run-02" in ff.find_fat_water(bids, "01", None, {"run": 2}).first.name


def test_two_point_values_near_the_fold_are_warned(tmp_path):
    labels, _, _ = _labels_and_images()
    in_phase = np.full(labels.shape, 100.0, dtype=np.float32)
    out_phase = np.where(labels == 55, 10.0, 60.0).astype(np.float32)  # FF 45 % and 20 %
    bids = tmp_path / "bids"
    for echo, te, data in ((1, 0.0023, in_phase), (2, 0.00345, out_phase)):
        path = bids / f"sub-01/anat/sub-01_echo-{echo}_MEGRE.nii.gz"
        write_nifti(path, data, AFFINE, {"EchoTime": te})
    result = ff.session_fat_fraction(labels, AFFINE, bids, "01", None, erosion=0)
    assert result.source.method == "two-point"
    assert result.per_label[55]["ff_median"] == pytest.approx(45.0)
    assert result.per_label[56]["ff_median"] == pytest.approx(20.0)
    folded = [w for w in result.warnings if "folds fat-dominant voxels" in w]
    assert len(folded) == 1 and "labels 55:" in folded[0]


def test_session_index_holds_only_the_subject_and_skips_broken_sidecars(tmp_path):
    """sub-1 does not see sub-10's pair; a sidecar that does not parse is left out of the
    metadata instead of failing the session."""
    bids = _dataset(
        tmp_path,
        {
            "sub-10/anat/sub-10_acq-water_T1w.nii.gz": None,
            "sub-10/anat/sub-10_acq-fat_T1w.nii.gz": None,
            "sub-1/anat/sub-1_echo-1_MEGRE.nii.gz": {"EchoTime": 0.0023},
        },
    )
    (bids / "sub-10/anat/sub-10_acq-fat_T1w.json").write_text("{broken")
    (bids / "sub-1/anat/sub-1_echo-1_MEGRE.json").write_text("{broken")
    assert ff.find_fat_water(bids, "1", None) is None
    [image] = session_files(bids, "1", None)
    assert image.metadata == {} and image.path.name == "sub-1_echo-1_MEGRE.nii.gz"
    assert ff.find_fat_water(bids, "10", None).method == "dixon"


def test_sessions_of_a_subject_share_one_index_until_its_files_change(tmp_path, monkeypatch):
    """The sessions of a subject are looked up in one pybids index; a file added, removed or
    rewritten under the subject (or at the top level) makes the next lookup index again."""
    from legseg_tf import bids_inputs

    bids = _dataset(tmp_path, {
        "sub-01/ses-a/anat/sub-01_ses-a_acq-water_T1w.nii.gz": None,
        "sub-01/ses-b/anat/sub-01_ses-b_acq-water_T1w.nii.gz": None,
    })
    built = []
    original = bids_inputs._layout
    monkeypatch.setattr(bids_inputs, "_layout",
                        lambda *args, **kwargs: built.append(args) or original(*args, **kwargs))
    [a] = session_files(bids, "01", "a")
    [b] = session_files(bids, "01", "b")
    assert (a.entities["session"], b.entities["session"]) == ("a", "b") and len(built) == 1
    write_nifti(bids / "sub-01/ses-b/anat/sub-01_ses-b_acq-fat_T1w.nii.gz",
                np.zeros((16, 12, 4), np.float32), AFFINE, {"EchoTime": 0.002})
    found = session_files(bids, "01", "b")
    assert len(built) == 2 and [f.path.name for f in found] == [
        "sub-01_ses-b_acq-fat_T1w.nii.gz", "sub-01_ses-b_acq-water_T1w.nii.gz"]
    assert found[0].metadata == {"EchoTime": 0.002}
    (bids / "sub-01/ses-b/anat/sub-01_ses-b_acq-fat_T1w.json").write_text('{"EchoTime": 0.003}')
    assert session_files(bids, "01", "b")[0].metadata == {"EchoTime": 0.003}
    session_files(bids, "02", None)   # no such subject: nothing indexed
    session_files(bids, "01", "a")
    assert len(built) == 3
