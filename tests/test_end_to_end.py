"""The participant and group levels through the command line with tiny installed networks.

The networks' last layers always give one class (vastus lateralis, every slice "Upper" and
"Both"), so the expected label map is known: vastus lateralis Left over the patient's left leg
and Right over the right leg, decided from the affine, on the input's exact grid, for RAS and
LPS files.
"""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from legseg_tf import cli, demo
from legseg_tf.labels import BY_INDEX
from tests.conftest import write_nifti
from tests.helpers import install_tiny_models


VASTUS_LATERALIS = 12      # class of N5_UpperLeg
VL_L, VL_R = 55, 56        # its Muscles_leg values, patient's left / right


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    install_tiny_models(models, always={"upper_leg": VASTUS_LATERALIS, "side": "Both",
                                        "position": "Upper"})
    return models


def _phantom_dataset(root, flip_to_lps: bool):
    volumes = demo.phantom(seed=5)
    image, tissue = volumes["outphase"], volumes["tissue"]
    affine = demo.ras_affine()
    if flip_to_lps:  # store the same anatomy with x and y reversed: an LPS file
        image, tissue = image[::-1, ::-1], tissue[::-1, ::-1]
        affine = affine @ np.array([[-1, 0, 0, image.shape[0] - 1], [0, -1, 0, image.shape[1] - 1],
                                    [0, 0, 1, 0], [0, 0, 0, 1.0]])
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "p", "BIDSVersion": "1.10.0"}))
    path = write_nifti(root / "sub-01/anat/sub-01_acq-outphase_T1w.nii.gz",
                       np.ascontiguousarray(image), affine, {"EchoTime": 0.00345})
    return path, np.ascontiguousarray(tissue), affine


@pytest.mark.parametrize("flip_to_lps", [False, True], ids=["RAS", "LPS"])
def test_participant_and_group_levels_keep_sides_and_geometry(tmp_path, tiny_models, flip_to_lps):
    source, tissue, affine = _phantom_dataset(tmp_path / "bids", flip_to_lps)
    out = tmp_path / "out"
    code = cli.main([str(tmp_path / "bids"), str(out), "participant", "--models", str(tiny_models),
                     "--region", "upper", "--device", "cpu", "--skip_bids_validator"])
    assert code == 0
    dseg_path = out / "sub-01/anat/sub-01_acq-outphase_desc-muscles_dseg.nii.gz"
    dseg = nib.load(str(dseg_path))
    src = nib.load(str(source))
    assert dseg.shape == src.shape
    np.testing.assert_allclose(dseg.affine, src.affine)
    labels = np.asarray(dseg.dataobj)
    assert set(np.unique(labels).tolist()) == {0, VL_L, VL_R}
    assert BY_INDEX[VL_L].side == "L" and BY_INDEX[VL_R].side == "R"
    # world x of every voxel: the patient's left leg has x < 0 (RAS+), the right leg x > 0
    ijk = np.indices(labels.shape).reshape(3, -1).T
    world_x = nib.affines.apply_affine(affine, ijk)[:, 0].reshape(labels.shape)
    left_leg, right_leg = (tissue > 0) & (world_x < 0), (tissue > 0) & (world_x > 0)
    assert not np.any((labels == VL_L) & right_leg), "a Left label lies in the patient's right leg"
    assert not np.any((labels == VL_R) & left_leg), "a Right label lies in the patient's left leg"
    # (the smoothed body mask trims a few edge voxels)
    assert (labels[left_leg] == VL_L).mean() > 0.95 and (labels[right_leg] == VL_R).mean() > 0.95
    sidecar = json.loads(dseg_path.with_name(dseg_path.name.replace(".nii.gz", ".json")).read_text())
    assert {m["id"] for m in sidecar["Models"]} >= {"tiny-upper_leg"}
    assert sidecar["legseg"]["device"]["device"] == "cpu"
    assert (out / "sub-01.html").exists()
    assert (out / "sub-01/anat/sub-01_acq-outphase_desc-muscles_morph.tsv").exists()
    assert sidecar["legseg"]["qc"]["checks"]["low_confidence"] == "passed"   # softmax 0.999
    assert cli.main([str(tmp_path / "bids"), str(out), "group", "--include-failed-qc"]) == 0
    table = (out / "group_muscles.tsv").read_text().splitlines()
    assert len(table) - 1 == 2                   # one row per label: VL_L and VL_R
