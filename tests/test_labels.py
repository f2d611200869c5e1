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


# ------------------------------------------------------------------ English names

def test_english_names_keep_the_qmritools_keys():
    """People read "Sartorius" and "Subcutaneous fat"; the QMRITools spellings stay the keys
    that map the training tables, and indices and abbreviations do not change."""
    by_index = labels.BY_INDEX
    assert by_index[63].name == "Satorius" and by_index[63].display_name == "Sartorius"
    assert by_index[64].display_full_name == "Sartorius Right"
    assert by_index[151].name == "Subcutanious fat"
    assert by_index[151].display_full_name == "Subcutaneous fat"
    assert by_index[77].display_name == "Tensor fasciae latae"
    assert by_index[31].display_name == "Biceps femoris long head"
    assert by_index[111].display_name == "Foot bones"
    assert (by_index[63].abbreviation, by_index[151].abbreviation) == ("SA_L", "SCF")
    # the QMRITools keys still find the labels, and so do the English names
    assert labels.BY_KEY["Satorius_Left"].index == 63
    assert labels.BY_KEY["Sartorius_Left"].index == 63
    assert labels.BY_KEY["Subcutaneous_Fat"].index == 151
    fat = labels.TRAIN_TABLES["N5_UpperLeg"].index("Subcutanious fat") + 1
    assert labels.train_label_map("N5_UpperLeg", "L")[fat] == 151
    # every correction is of a name in the table, and only these names differ
    assert set(labels.NAME_CORRECTIONS) <= {label.name for label in labels.LABELS}
    changed = {label.name for label in labels.LABELS if label.display_name != label.name}
    assert changed == set(labels.NAME_CORRECTIONS)


def test_user_facing_tables_use_the_english_names():
    texts = {
        "dseg.tsv": labels.dseg_tsv_text(),
        "ITK-SNAP": labels.itksnap_text(),
        "Slicer": labels.slicer_ctbl_text(),
        "FSLeyes": labels.fsleyes_lut_text(),
    }
    for what, text in texts.items():
        assert "Satorius" not in text and "Subcutanious" not in text, what
        assert "Sartorius" in text and "Subcutaneous" in text, what
    assert "63\tSartorius Left\tSA_L\t#cbc100\tL\tupper_leg" in texts["dseg.tsv"].splitlines()
    assert "151\tSubcutaneous fat\tSCF\t#fff0aa\tn/a\tother" in texts["dseg.tsv"].splitlines()
    assert "63 Sartorius_Left 203 193 0 255" in texts["Slicer"].splitlines()


# ------------------------------------------------------------------ report palette

def _lab(rgb):
    """CIELAB (D65) of an sRGB colour 0-255."""
    c = np.asarray(rgb, dtype=float) / 255.0
    c = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722],
                    [0.0193, 0.1192, 0.9505]]) @ c / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_report_palette():
    import colorsys
    import itertools

    colours = {label.index: labels.report_rgb(label.index) for label in labels.LABELS}
    # nothing near-white: every colour has a channel well below white, and is not light grey
    for index, rgb in colours.items():
        lightness, a, b = _lab(rgb)
        assert min(rgb) < 180, (index, rgb)
        assert lightness < 80 or np.hypot(a, b) > 40, (index, rgb)  # light only if vivid
    # the same muscle has related colours on both sides: same hue, the right side lighter
    for label in labels.LABELS:
        if label.side == "L":
            left, right = colours[label.index], colours[label.index + 1]
            h_l, l_l, _ = colorsys.rgb_to_hls(*(v / 255 for v in left))
            h_r, l_r, _ = colorsys.rgb_to_hls(*(v / 255 for v in right))
            assert min(abs(h_l - h_r), 1 - abs(h_l - h_r)) < 0.02, label
            assert l_r > l_l and np.linalg.norm(_lab(left) - _lab(right)) < 40, label
    # different muscles differ (CIELAB distance), left sides and right sides alike
    muscles = [label for label in labels.LABELS if label.is_muscle and label.side == "L"]
    for a, b in itertools.combinations(muscles, 2):
        for offset in (0, 1):
            distance = np.linalg.norm(_lab(colours[a.index + offset])
                                      - _lab(colours[b.index + offset]))
            assert distance > 15, (a.abbreviation, b.abbreviation, distance)
    # bones are told apart (QMRITools gives them all the same grey)
    bones = [label for label in labels.LABELS if label.region == "bone" and label.side != "R"]
    for a, b in itertools.combinations(bones, 2):
        assert np.linalg.norm(_lab(colours[a.index]) - _lab(colours[b.index])) > 15, (a, b)
    assert labels.report_rgb(999) == (255, 0, 255)
    # the QMRITools colours stay in the label table
    assert labels.BY_INDEX[103].rgb == (200, 200, 200)
