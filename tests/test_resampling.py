"""Segmentation at the networks' voxel size, labels back on the input grid."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from legseg_tf.resampling import (
    channels_to_shape,
    column_on_grid,
    labels_to_shape,
    needs_resampling,
    parse_resolution,
    resample_volume,
    target_shape,
)
from tests.conftest import make_dataset
from tests.fakes import VL_LEFT, VL_RIGHT, ThresholdPlaceholderSegmenter


def test_parse_resolution():
    assert parse_resolution("model") == "model"
    assert parse_resolution(" Native ") == "native"
    assert parse_resolution("6x1.5x1.5") == (6.0, 1.5, 1.5)
    assert parse_resolution("6,1.5,1.5") == (6.0, 1.5, 1.5)
    for bad in ("6x1.5", "0x1x1", "fine", "6x1.5xnan"):
        with pytest.raises(ValueError):
            parse_resolution(bad)


def test_when_to_resample_and_the_grid_it_gives():
    assert not needs_resampling((6.0, 1.5, 1.5), None)
    assert not needs_resampling((6.0, 1.45, 1.55), (6.0, 1.5, 1.5))
    assert needs_resampling((20.0, 0.8, 0.8), (6.0, 1.5, 1.5))
    assert target_shape((10, 256, 512), (20.0, 0.8, 0.8), (6.0, 1.5, 1.5)) == (33, 137, 273)
    volume = np.random.default_rng(0).uniform(10, 90, (10, 40, 60)).astype(np.float32)
    out, spacing = resample_volume(volume, (20.0, 0.8, 0.8), (6.0, 1.5, 1.5))
    assert out.shape == (33, 21, 32) and out.dtype == np.float32
    # the field of view is kept: shape x spacing equal on every axis
    np.testing.assert_allclose(np.multiply(out.shape, spacing), np.multiply(volume.shape,
                                                                            (20.0, 0.8, 0.8)))
    assert out.min() >= volume.min() and out.max() <= volume.max()   # clipped cubic spline
    assert column_on_grid(None, 60, 32) is None
    assert column_on_grid(-0.5, 60, 32) == pytest.approx(-0.5)       # the left edge stays
    assert column_on_grid(59.5, 60, 32) == pytest.approx(31.5)       # so does the right one


def test_labels_come_back_on_the_input_grid_without_losing_thin_structures():
    """The app maps labels from the (coarser) network grid onto the input grid: a structure
    one network voxel thin survives, large muscles keep their shape."""
    coarse = np.zeros((6, 30, 30), np.uint16)
    coarse[:, 5:25, 5:15] = 55
    coarse[:, 5:25, 15:25] = 56
    coarse[:, 14, 7:12] = 103           # one voxel thin
    fine = labels_to_shape(coarse, (6, 60, 60))
    assert fine.shape == (6, 60, 60) and fine.dtype == coarse.dtype
    assert set(np.unique(fine)) == {0, 55, 56, 103}
    assert (fine == 103).sum() == 4 * (coarse == 103).sum()
    expected = np.repeat(np.repeat(coarse, 2, axis=1), 2, axis=2)
    for value in (55, 56):
        a, b = expected == value, fine == value
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.95
    assert labels_to_shape(coarse, coarse.shape) is not coarse
    probabilities = np.random.default_rng(1).uniform(size=(6, 30, 30, 3)).astype(np.float32)
    assert channels_to_shape(probabilities, (6, 60, 60)).shape == (6, 60, 60, 3)


class _CoarseNetworkSegmenter(ThresholdPlaceholderSegmenter):
    """The placeholder, declaring that its networks run at 6 x 1.5 x 1.5 mm."""

    segmentation_spacing = (6.0, 1.5, 1.5)

    def __init__(self):
        super().__init__()
        self.shapes = []

    def segment(self, volume, spacing_zyx, *, midline_column=None):
        self.shapes.append((volume.shape, tuple(round(s, 3) for s in spacing_zyx)))
        return super().segment(volume, spacing_zyx, midline_column=midline_column)


def test_the_pipeline_segments_at_the_network_voxel_size_and_writes_the_input_grid(
        tmp_path, monkeypatch):
    from legseg_tf import cli, pipeline

    segmenter = _CoarseNetworkSegmenter()
    monkeypatch.setattr(pipeline, "load_segmenter", lambda config, models_dir: segmenter)
    monkeypatch.setattr(pipeline, "_participant_reports", lambda results, config: None)
    rel = "sub-01/anat/sub-01_acq-outphase_T1w.nii.gz"
    bids = make_dataset(tmp_path / "bids", {rel: None}, shape=(96, 64, 8))
    source = nib.load(str(bids / rel))
    affine = source.affine.copy()
    affine[:3, :3] = np.diag([0.75, 0.75, 6.0])       # a finer in-plane grid than the nets'
    image = nib.Nifti1Image(np.asarray(source.dataobj), affine)
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    nib.save(image, str(bids / rel))
    out = tmp_path / "out"
    assert cli.main([str(bids), str(out), "participant", "--skip_bids_validator",
                     "--include-failed-qc"]) == 0
    # the segmenter saw the resampled grid (z, y, x) at 6 x 1.5 x 1.5 mm
    assert segmenter.shapes == [((8, 32, 48), (6.0, 1.5, 1.5))]
    dseg = out / "sub-01/anat/sub-01_acq-outphase_desc-muscles_dseg.nii.gz"
    labels = nib.load(str(dseg))
    assert labels.shape == image.shape and np.allclose(labels.affine, image.affine)
    data = np.asarray(labels.dataobj)
    world_x = nib.affines.apply_affine(labels.affine, np.argwhere(data > 0))[:, 0]
    values = data[data > 0]
    assert world_x[values == VL_LEFT].max() < world_x[values == VL_RIGHT].min()
    report = json.loads(dseg.with_name(dseg.name.replace(".nii.gz", ".json")).read_text())
    grid = report["legseg"]["report"]["segmentation_grid"]
    assert grid["spacing_zyx_mm"] == [6.0, 1.5, 1.5] and grid["input_shape_zyx"] == [8, 64, 96]


def test_model_resolution_comes_from_the_manifest_provenance():
    from types import SimpleNamespace

    from legseg_tf.segmenter import segmentation_spacing

    upper = SimpleNamespace(provenance={"training_voxel_size_mm": [6, 1.5, 1.5]})
    lower = SimpleNamespace(provenance={"training_voxel_size_mm": [6.0, 1.5, 1.5]})
    other = SimpleNamespace(provenance={"training_voxel_size_mm": [3, 1, 1]})
    plain = SimpleNamespace(provenance={"source": "qmritools-wlnet"})
    assert segmentation_spacing("model", [upper, lower]) == (6.0, 1.5, 1.5)
    assert segmentation_spacing("model", [upper, plain]) == (6.0, 1.5, 1.5)
    assert segmentation_spacing("model", [upper, other]) is None
    assert segmentation_spacing("model", [plain]) is None
    assert segmentation_spacing("native", [upper]) is None
    assert segmentation_spacing((3.0, 1.0, 1.0), [upper]) == (3.0, 1.0, 1.0)
