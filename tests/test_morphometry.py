"""Per-label shape measures on asymmetric phantoms with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from legseg_tf.morphometry import (
    MORPH_COLUMNS,
    identify,
    in_plane_area_cm2,
    label_morphometry,
    voxel_volume_ml,
)

AFFINE = np.array([[2.0, 0, 0, -50.0], [0, 3.0, 0, 10.0], [0, 0, 6.0, -30.0], [0, 0, 0, 1]])


def _phantom() -> np.ndarray:
    labels = np.zeros((20, 12, 6), dtype=np.uint16)
    # VL_L (55): a growing block on slices 1..4 (area 2x2, 3x3, 4x4, 5x5 voxels)
    for k, size in zip(range(1, 5), (2, 3, 4, 5), strict=False):
        labels[1 : 1 + size, 1 : 1 + size, k] = 55
    # VL_R (56): two pieces, 8 + 2 voxels
    labels[12:14, 2:4, 0:2] = 56
    labels[18, 10, 0:2] = 56
    # sacrum (121): no side
    labels[10, 10, 5] = 121
    return labels


def test_rows_measure_known_shapes():
    rows = {row["label"]: row for row in label_morphometry(_phantom(), AFFINE)}
    assert sorted(rows) == [55, 56, 121]
    vl = rows[55]
    assert vl["voxels"] == 4 + 9 + 16 + 25
    assert vl["volume_ml"] == pytest.approx(54 * 2 * 3 * 6 / 1000)
    assert (vl["slices"], vl["first_slice"], vl["last_slice"]) == (4, 1, 4)
    assert vl["max_csa_cm2"] == pytest.approx(25 * 2 * 3 / 100)
    assert vl["max_csa_slice"] == 4
    coords = np.argwhere(_phantom() == 55).mean(axis=0)
    expected = AFFINE[:3, :3] @ coords + AFFINE[:3, 3]
    assert [vl["centroid_x_mm"], vl["centroid_y_mm"], vl["centroid_z_mm"]] == pytest.approx(
        expected
    )
    assert vl["components"] == 1 and vl["largest_component_fraction"] == 1.0
    assert (vl["name"], vl["abbreviation"], vl["muscle"], vl["side"], vl["region"]) == (
        "Vastus lateralis Left",
        "VL_L",
        "Vastus lateralis",
        "L",
        "upper_leg",
    )
    right = rows[56]
    assert right["components"] == 2
    assert right["largest_component_fraction"] == pytest.approx(8 / 10)
    assert right["side"] == "R"
    assert rows[121]["side"] == "n/a" and rows[121]["region"] == "bone"
    assert set(MORPH_COLUMNS) == set(vl)


def test_left_label_lies_at_negative_x():
    rows = {row["label"]: row for row in label_morphometry(_phantom(), AFFINE)}
    assert rows[55]["centroid_x_mm"] < rows[56]["centroid_x_mm"]


def test_voxel_sizes_of_oblique_affine():
    rotation = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([1.5, 2.0, 5.0])
    assert voxel_volume_ml(affine) == pytest.approx(1.5 * 2.0 * 5.0 / 1000)
    assert in_plane_area_cm2(affine) == pytest.approx(1.5 * 2.0 / 100)


def test_unknown_label_is_named_and_kept(caplog):
    labels = np.zeros((4, 4, 2), dtype=np.int32)
    labels[0, 0, 0] = 250
    rows = label_morphometry(labels, np.eye(4))
    assert rows[0]["name"] == "unknown_250" and rows[0]["region"] == "unknown"
    assert "not in the Muscles_leg table" in caplog.text
    assert identify(55).abbreviation == "VL_L"


def test_empty_map_gives_no_rows():
    assert label_morphometry(np.zeros((3, 3, 3), np.uint8), np.eye(4)) == []


@pytest.mark.parametrize(
    "labels", [np.zeros((3, 3)), -np.ones((2, 2, 2), int), np.full((2, 2, 2), 1.5)]
)
def test_invalid_maps_raise(labels):
    with pytest.raises(ValueError):
        label_morphometry(labels, np.eye(4))


def test_float_maps_with_integer_values_are_accepted():
    labels = np.zeros((3, 3, 3), np.float32)
    labels[1, 1, 1] = 56
    assert label_morphometry(labels, np.eye(4))[0]["label"] == 56
