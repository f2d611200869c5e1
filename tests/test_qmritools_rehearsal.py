"""The user's whole path with the original QMRITools networks, rehearsed end to end.

A fake QMRITools release paclet (``tests/qmritools_paclet.py``: the release layout, the four
networks in the encodings Wolfram >= 11.3.2 writes, QMRITools layer counts and channel widths,
random seeded weights) is converted with ``legseg-import PACLET --out MODELS``, then the
participant level runs ``--models MODELS --region legs-hip`` on the real QMRITools thigh
stack. Random weights make the labels meaningless; what is checked is the path: the import
installs every role, the app runs only on the imported nets (sidecar, with their checksums),
every label comes from the Muscles_leg table, sides follow the patient's anatomy, and the
label map has the input's grid.
"""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from legseg_tf.labels import BY_INDEX
from tests.conftest import thigh_bids
from tests.qmritools_paclet import SEGMENTATION_NETS, build_fake_paclet

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

ROLES = {"Body_Pos_Side": "classifier", "N5_UpperLeg_3D": "upper_leg",
         "N6_LowerLeg_3D": "lower_leg", "N4_Hip_3D": "hip"}


@pytest.mark.parametrize("widths", ["qmritools"])
def test_paclet_import_then_participant_level_on_a_real_thigh(tmp_path, capsys, widths):
    from legseg_tf import model_store
    from legseg_tf.cli import main as legseg
    from legseg_tf.wlnet.cli import main as legseg_import

    paclet = build_fake_paclet(tmp_path / "QMRITools-4.9.1.paclet", seed=7, widths=widths)
    models = tmp_path / "models"
    assert legseg_import([str(paclet), "--out", str(models)]) == 0
    printed = capsys.readouterr().out
    manifest = model_store.load_manifest(models)
    for stem, role in ROLES.items():
        entry = manifest.get(role)
        assert entry is not None and entry.id == stem, printed
        assert entry.provenance["source"] == "qmritools-wlnet"
        assert entry.provenance["paclet"] == paclet.name
        assert entry.sha256 == model_store.sha256_file(entry.weights_path)
    assert set(SEGMENTATION_NETS) <= {e.id for e in manifest.entries}

    bids, image = thigh_bids(tmp_path / "bids")
    out = tmp_path / "out"
    code = legseg([str(bids), str(out), "participant", "--models", str(models),
                   "--region", "legs-hip", "--skip_bids_validator"])
    assert code == 0
    stem = "sub-01_acq-outphase_desc-muscles_dseg"
    result = out / "sub-01" / "anat" / f"{stem}.nii.gz"
    sidecar = json.loads(result.with_name(f"{stem}.json").read_text())

    # every model the run used is an imported one, named with its checksum
    used = sidecar_models(sidecar)
    by_id = {e.id: e for e in manifest.entries}
    assert used, sidecar
    assert "Body_Pos_Side" in {m["id"] for m in used}
    for model in used:
        assert model["id"] in by_id, model
        assert model["sha256"] == by_id[model["id"]].sha256

    # the label map: the input's grid, table labels only, sides from the patient's anatomy
    source, labels = nib.load(str(image)), nib.load(str(result))
    assert labels.shape == source.shape
    assert np.allclose(labels.affine, source.affine)
    data = np.asarray(labels.dataobj).astype(int)
    values = [int(v) for v in np.unique(data) if v]
    assert values and all(v in BY_INDEX for v in values), values
    world_x = nib.affines.apply_affine(labels.affine, np.argwhere(data > 0))[:, 0]
    sides = np.array([BY_INDEX[v].side for v in data[data > 0]])
    left, right = world_x[sides == "L"], world_x[sides == "R"]
    # RAS: the patient's left lies at lower world x (this header's origin is not anatomical,
    # so the two legs are compared with each other, not with x = 0)
    step = abs(labels.affine[0, 0])
    assert left.size and right.size, "both legs should carry labels"
    assert left.max() < right.min() + step, (left.max(), right.min())


def sidecar_models(sidecar: dict) -> list[dict]:
    """The models a dseg sidecar lists (id, role, sha256), wherever the sidecar keeps them."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if {"id", "sha256"} <= set(node):
                found.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(sidecar)
    unique = {(m["id"], m["sha256"]): m for m in found}
    return list(unique.values())
