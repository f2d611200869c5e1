"""The embedded demo dataset."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from legseg_tf import demo, pipeline
from legseg_tf.bids_inputs import find_inputs


def test_demo_dataset_is_valid_and_left_leg_is_larger(tmp_path):
    root = tmp_path / "demo"
    assert demo.main([str(root), "--subjects", "1"]) == 0
    images = find_inputs(root)
    assert [im.relpath for im in images] == ["sub-01/anat/sub-01_acq-outphase_T1w.nii.gz"]
    image = nib.load(str(images[0].path))
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
    data = np.asarray(image.dataobj)
    tissue = demo.phantom(1)["tissue"]
    middle = data.shape[0] // 2
    # RAS: low x index = patient's left; the left thigh is the bigger one
    assert (tissue[:middle] > 0).sum() > 1.2 * (tissue[middle:] > 0).sum()
    assert data[tissue == 0].mean() < 0.1 * data[tissue == 2].mean()
    for acq in ("water", "fat"):
        assert (root / f"sub-01/anat/sub-01_acq-{acq}_T1w.nii.gz").exists()


def test_demo_refuses_non_empty_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("")
    assert demo.main([str(tmp_path / "x")]) == 73


def test_demo_passes_the_bids_validator(tmp_path):
    if pipeline.find_validator() is None:
        pytest.skip("no BIDS validator installed (pip install bids-validator-deno)")
    demo.write_demo(tmp_path / "demo", subjects=2)
    pipeline.validate_dataset(tmp_path / "demo")


def test_phantom_is_deterministic():
    a, b = demo.phantom(3), demo.phantom(3)
    np.testing.assert_array_equal(a["outphase"], b["outphase"])
