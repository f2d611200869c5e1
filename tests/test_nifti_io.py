"""Geometry round trips: label maps come back with exactly the input's shape and affine."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from legseg_tf import nifti_io
from tests.conftest import SHARED_DATA, shared_file, write_nifti


def _rotation(degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])


def _affine(diag, rotation=None, origin=(10.0, -20.0, 30.0)) -> np.ndarray:
    linear = np.diag(diag)
    if rotation is not None:
        linear = rotation @ linear
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = origin
    return affine


ORIENTATIONS = {
    "RAS": _affine([1.5, 1.5, 6.0]),
    "LPS": _affine([-1.5, -1.5, 6.0]),
    "LAS": _affine([-1.5, 1.5, 6.0]),
    "flipped_slices": _affine([1.5, 1.5, -6.0]),
    "oblique": _affine([1.5, 1.5, 6.0], rotation=_rotation(17.0)),
    "permuted_PLI": np.array([[0, -1.5, 0, 5], [-1.5, 0, 0, 7], [0, 0, -6.0, 9], [0, 0, 0, 1.0]]),
}


@pytest.mark.parametrize("name", sorted(ORIENTATIONS))
def test_label_round_trip_keeps_shape_affine_codes(tmp_path, name):
    affine = ORIENTATIONS[name]
    rng = np.random.default_rng(1)
    data = rng.random((9, 7, 5)).astype(np.float32)
    src = write_nifti(tmp_path / "in.nii.gz", data, affine)
    img = nib.load(str(src))
    img.header["sform_code"] = 2  # aligned: must survive
    nib.save(img, str(src))

    ras, geometry = nifti_io.load_canonical(src)
    canonical = nib.as_closest_canonical(nib.load(str(src)))
    np.testing.assert_array_equal(ras, np.asarray(canonical.dataobj, dtype=np.float32))
    np.testing.assert_allclose(geometry.ras_affine, canonical.affine)

    labels_ras = (ras * 200).astype(np.uint16)
    out = nifti_io.save_labels(labels_ras, geometry, tmp_path / "labels.nii.gz")
    written = nib.load(str(out))
    assert written.shape == data.shape
    np.testing.assert_allclose(written.affine, affine, atol=1e-6)
    assert int(written.header["sform_code"]) == 2
    assert int(written.header["qform_code"]) == 1
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(written.dataobj), (data * 200).astype(np.uint16))


def test_world_side_survives_every_orientation(tmp_path):
    """A blob on the patient's right (world x > 0) lands in QMRITools columns < middle."""
    for name, affine in ORIENTATIONS.items():
        shape = (20, 10, 4)
        ijk = np.indices(shape).reshape(3, -1).T
        world = nib.affines.apply_affine(affine, ijk)
        centre = nib.affines.apply_affine(affine, (np.array(shape) - 1) / 2)
        data = (world[:, 0] > centre[0] + 3).reshape(shape).astype(np.float32)
        if data.sum() == 0:  # the x axis lies along slices in this orientation
            continue
        ras, _ = nifti_io.load_canonical(write_nifti(tmp_path / f"{name}.nii.gz", data, affine))
        qmri = nifti_io.ras_to_qmri(ras)
        columns = np.nonzero(qmri.sum(axis=(0, 1)))[0]
        assert columns.max() < qmri.shape[2] / 2, name


def test_to_ras_matches_load_canonical_and_keeps_channels(tmp_path):
    """An array read straight from a file (the probability maps of the QC report) lands on
    the same canonical RAS grid as the image :func:`load_canonical` reads, channels kept."""
    rng = np.random.default_rng(3)
    for name, affine in ORIENTATIONS.items():
        data = rng.random((5, 4, 3)).astype(np.float32)
        ras, _ = nifti_io.load_canonical(write_nifti(tmp_path / f"{name}.nii.gz", data, affine))
        np.testing.assert_array_equal(nifti_io.to_ras(data, affine), ras, err_msg=name)
        channels = np.stack([data, 2 * data], axis=-1)
        np.testing.assert_array_equal(nifti_io.to_ras(channels, affine)[..., 1], 2 * ras)


def test_four_d_input_uses_first_volume_and_writes_3d(tmp_path):
    data = np.stack([np.full((4, 5, 3), v, np.float32) for v in (1.0, 2.0)], axis=-1)
    src = write_nifti(tmp_path / "me.nii.gz", data, ORIENTATIONS["LPS"])
    ras, geometry = nifti_io.load_canonical(src)
    assert ras.shape == (4, 5, 3) and geometry.n_volumes == 2
    assert np.all(ras == 1.0)
    out = nifti_io.save_labels(np.ones_like(ras, dtype=np.uint8), geometry, tmp_path / "l.nii.gz")
    assert nib.load(str(out)).shape == (4, 5, 3)


def test_qmri_layout_round_trip_and_spacing(tmp_path):
    rng = np.random.default_rng(0)
    ras = rng.random((6, 5, 4)).astype(np.float32)
    qmri = nifti_io.ras_to_qmri(ras)
    assert qmri.shape == (4, 5, 6)
    # column 0 is the right-most RAS x index, row 0 the most anterior y index
    assert qmri[0, 0, 0] == ras[-1, -1, 0]
    np.testing.assert_array_equal(nifti_io.qmri_to_ras(qmri), ras)
    four_d = rng.random((6, 5, 4, 3))
    np.testing.assert_array_equal(nifti_io.qmri_to_ras(nifti_io.ras_to_qmri(four_d)), four_d)
    _, geometry = nifti_io.load_canonical(write_nifti(tmp_path / "a.nii.gz", ras, ORIENTATIONS["LPS"]))
    assert nifti_io.qmri_spacing(geometry) == pytest.approx((6.0, 1.5, 1.5))


def test_large_labels_use_uint16(tmp_path):
    _, geometry = nifti_io.load_canonical(
        write_nifti(tmp_path / "a.nii.gz", np.zeros((3, 3, 3), np.float32), ORIENTATIONS["RAS"]))
    labels = np.zeros((3, 3, 3), np.uint16)
    labels[1, 1, 1] = 300
    out = nifti_io.save_labels(labels, geometry, tmp_path / "l.nii.gz")
    assert nib.load(str(out)).get_data_dtype() == np.uint16


@pytest.mark.parametrize("content", [b"", b"not a nifti file at all"])
def test_unreadable_images_raise_image_error(tmp_path, content):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(content)
    with pytest.raises(nifti_io.ImageError, match="bad.nii.gz"):
        nifti_io.load_canonical(bad)


def test_two_d_image_rejected(tmp_path):
    image = nib.Nifti1Image(np.zeros((4, 4), np.float32), np.eye(4))
    nib.save(image, str(tmp_path / "flat.nii.gz"))
    with pytest.raises(nifti_io.ImageError, match="3-D or 4-D"):
        nifti_io.load_canonical(tmp_path / "flat.nii.gz")


def test_wrong_label_shape_rejected(tmp_path):
    _, geometry = nifti_io.load_canonical(
        write_nifti(tmp_path / "a.nii.gz", np.zeros((3, 4, 5), np.float32), ORIENTATIONS["LPS"]))
    with pytest.raises(ValueError, match="does not match"):
        nifti_io.save_labels(np.zeros((5, 4, 3), np.uint8), geometry, tmp_path / "l.nii.gz")
    assert not (tmp_path / "l.nii.gz").exists()


@pytest.mark.realdata
def test_real_volume_and_labels_round_trip(tmp_path):
    test = shared_file("data", "qmritools", "scripts_test_data", "test.nii.gz")
    out = shared_file("data", "qmritools", "scripts_test_data", "out.nii.gz")
    volume, geometry = nifti_io.load_canonical(test)
    assert volume.shape == (320, 320, 31)
    labels_ras, label_geometry = nifti_io.load_canonical(out)
    labels = np.rint(labels_ras).astype(np.uint16)
    written = nifti_io.save_labels(labels, geometry, tmp_path / "out_copy.nii.gz")
    original, copy = nib.load(str(out)), nib.load(str(written))
    assert copy.shape == original.shape
    np.testing.assert_allclose(copy.affine, original.affine)
    np.testing.assert_array_equal(np.asarray(copy.dataobj), np.rint(np.asarray(original.dataobj)))
    # the QMRITools layout keeps every label (including both femurs 103/104)
    qmri = nifti_io.ras_to_qmri(labels)
    assert {103, 104} <= set(np.unique(qmri).tolist())
    assert SHARED_DATA.exists()
