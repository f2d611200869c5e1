"""The Muscles_leg label table and the training-label tables."""
from __future__ import annotations

import numpy as np
import pytest

from legseg_tf import labels


def test_table_is_consistent():
    indices = [label.index for label in labels.LABELS]
    assert len(indices) == len(set(indices)) == 100
    for label in labels.LABELS:
        if label.side:
            assert (label.index % 2 == 1) == (label.side == "L"), label
            assert label.abbreviation.endswith("_" + label.side)
        assert all(0 <= c <= 255 for c in label.rgb)
    assert {label.index for label in labels.LABELS if not label.side} == {121, 151}
    assert len({label.abbreviation for label in labels.LABELS}) == 100


@pytest.mark.parametrize("table,side,expected", [
    ("N5_UpperLeg", "L", [0, 31, 33, 35, 37, 39, 41, 43, 45, 47, 49, 51, 55, 57, 59, 61, 63, 65, 101, 103, 105, 151]),
    ("N5_UpperLeg", "R", [0, 32, 34, 36, 38, 40, 42, 44, 46, 48, 50, 52, 56, 58, 60, 62, 64, 66, 102, 104, 106, 151]),
    ("N6_LowerLeg", "L", [0, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 105, 107, 109, 151]),
    ("N4_Hip", "R", [0, 72, 74, 76, 78, 80, 82, 84, 90, 92, 52, 50, 102, 104, 121]),
])
def test_train_tables_match_the_spec(table, side, expected):
    assert labels.train_label_map(table, side).tolist() == expected


def test_rename_train_labels():
    train = np.array([[0, 1, 19], [21, 0, 2]])
    assert labels.rename_train_labels(train, "N5_UpperLeg", "R").tolist() == [[0, 32, 104], [151, 0, 34]]
    with pytest.raises(ValueError, match="outside"):
        labels.rename_train_labels(np.array([22]), "N5_UpperLeg", "L")
    with pytest.raises(ValueError, match="side"):
        labels.rename_train_labels(train, "N5_UpperLeg", "B")
    with pytest.raises(KeyError):
        labels.rename_train_labels(train, "N9_Arm", "L")


def test_dseg_tsv_and_itksnap_files():
    rows = labels.dseg_tsv_text().strip().split("\n")
    assert rows[0].split("\t") == ["index", "name", "abbreviation", "color", "side", "region"]
    assert len(rows) == 102
    assert "55\tVastus lateralis Left\tVL_L\t#deb887\tL\tupper_leg" in rows
    itk = labels.itksnap_text().splitlines()
    assert any(line.strip().startswith("56 ") and '"Vastus lateralis Right"' in line for line in itk)


def test_normalise_name_matches_qmritools_rule():
    assert labels.normalise_name("16 Satorius") == "Satorius"
    assert labels.normalise_name("Tensor fascia latae Left") == "Tensor_Fascia_Latae_Left"
