import numpy as np
import pytest

from legseg_tf.side import (
    GeometrySide,
    SideUndeterminedError,
    decide_side,
    geometric_side,
    midline_column,
    resolve_midline,
)
from legseg_tf.split import SplitConfig, crop_part, find_middle, side_columns, split_parts


def leg(shape, centre_x, radius, centre_y=None):
    _, y, x = np.indices(shape)
    cy = shape[1] // 2 if centre_y is None else centre_y
    return (y - cy) ** 2 + (x - centre_x) ** 2 <= radius**2


def legs_volume(shape=(8, 50, 100), right=(28, 15), left=(70, 11), touching=False):
    """(z, y, x) phantom: column 0 = patient right. ``right``/``left`` = (centre x, radius)."""
    volume = np.zeros(shape, dtype=np.float32)
    for centre, radius in (right, left):
        if centre is None:
            continue
        volume[leg(shape, centre, radius)] = 100.0
    if touching:
        volume[:, 20:30, 40:60] = 100.0
    return volume


def test_find_middle_lands_between_asymmetric_legs():
    volume = legs_volume()
    cut = find_middle(volume)
    assert 28 + 15 <= cut <= 70 - 11
    assert find_middle(np.zeros((2, 4, 10))) == 5


def test_find_middle_between_touching_legs():
    volume = legs_volume(right=(35, 16), left=(66, 14), touching=True)
    cut = find_middle(volume)
    assert 40 <= cut <= 62


def test_geometric_side_two_legs_and_single_legs():
    volume = legs_volume()
    mask = volume > 0
    cut = find_middle(volume)
    both = geometric_side(mask, cut, midline=49.5)
    assert both.two_legs
    right_only = legs_volume(left=(None, 0))
    geo = geometric_side(right_only > 0, find_middle(right_only), midline=49.5)
    assert not geo.two_legs and geo.single_side == "Right" and geo.confident
    left_only = legs_volume(right=(None, 0))
    geo = geometric_side(left_only > 0, find_middle(left_only), midline=49.5)
    assert not geo.two_legs and geo.single_side == "Left" and geo.confident
    with pytest.raises(ValueError):
        geometric_side(np.zeros((2, 3, 10), bool), 5, 4.5)
    with pytest.raises(ValueError):
        geometric_side(mask, 0, 4.5)


def test_geometric_side_single_leg_uses_midline_not_image_centre():
    # a left leg imaged off-centre: the tissue (columns 25-55) lies right of the image centre
    # (low columns = patient right) but left of the scanner midline at column 10
    volume = legs_volume(right=(40, 15), left=(None, 0))
    geo = geometric_side(volume > 0, find_middle(volume), midline=10.0)
    assert geo.single_side == "Left" and geo.confident
    geo = geometric_side(volume > 0, find_middle(volume), midline=70.0)
    assert geo.single_side == "Right" and geo.confident
    geo = geometric_side(volume > 0, find_middle(volume), midline=49.5)  # straddles
    assert geo.single_side == "Right" and not geo.confident


def geometry(two_legs=False, single="Right", confident=True, right_fraction=1.0):
    return GeometrySide(two_legs, single, confident, right_fraction, 0.5, 0.3, 49.5, 50)


@pytest.mark.parametrize(
    "classifier, geo, side, warned",
    [
        ("Both", geometry(two_legs=True, confident=False, right_fraction=0.5), "Both", False),
        (None, geometry(two_legs=True, confident=False, right_fraction=0.5), "Both", False),
        ("Left", geometry(two_legs=True, confident=False, right_fraction=0.5), "Both", True),
        ("Both", geometry(single="Right", confident=True), "Right", True),
        ("Both", geometry(confident=False, right_fraction=0.6), "Both", False),
        ("Left", geometry(single="Right", confident=True), "Right", True),
        ("Right", geometry(single="Right", confident=True), "Right", False),
        ("Left", geometry(single="Left", right_fraction=0.0), "Left", False),
        (None, geometry(single="Left", right_fraction=0.0), "Left", False),
        (None, geometry(single="Right", confident=False, right_fraction=0.7), "Right", True),
        # one lobe across the midline: the classifier decides
        ("Left", geometry(single="Right", confident=False, right_fraction=0.6), "Left", False),
        ("Right", geometry(single="Left", confident=False, right_fraction=0.4), "Right", False),
    ],
)
def test_decide_side_rules(classifier, geo, side, warned):
    decision = decide_side(classifier, geo)
    assert decision.side == side
    assert bool(decision.warnings) == warned
    assert decision.classifier_side == classifier


def test_decide_side_without_classifier_for_a_leg_on_the_midline():
    across = geometry(single="Right", confident=False, right_fraction=0.55)
    with pytest.raises(SideUndeterminedError, match="classifier"):
        decide_side(None, across)
    assert decide_side(None, across, midline_structure=True).side == "Both"


def test_decide_side_never_names_right_tissue_left():
    geo = geometry(single="Right", confident=True, right_fraction=0.97)
    for classifier in ("Left", "Right", "Both", None):
        assert decide_side(classifier, geo).side != "Left"
    with pytest.raises(ValueError):
        decide_side("Up", geo)


def test_midline_column_from_affines():
    # RAS canonical, 100 columns of 2 mm, origin -99 mm: world x = 0 at RAS index 49.5
    affine = np.diag([2.0, 2.0, 5.0, 1.0])
    affine[0, 3] = -99.0
    assert midline_column(affine, (100, 10, 4)) == pytest.approx(49.5)
    # origin at +240 (QMRITools-style header): x = 0 far outside the image
    affine[0, 3] = 240.0
    column = midline_column(affine, (100, 10, 4))
    assert column == pytest.approx(99 + 120)
    resolved, warning = resolve_midline(column, 100)
    assert resolved == 49.5 and warning
    assert resolve_midline(None, 100) == (49.5, None)
    assert resolve_midline(10.0, 100) == (10.0, None)


def test_side_columns_overlap():
    assert side_columns(100, "Both", 45, 0.1) == [("R", slice(0, 55)), ("L", slice(35, 100))]
    assert side_columns(100, "Left", 45) == [("L", slice(0, 100))]
    assert side_columns(100, "Both", 95, 0.1) == [("R", slice(0, 100)), ("L", slice(85, 100))]
    with pytest.raises(ValueError):
        side_columns(100, "Up", 45)


def test_crop_part_global_box():
    volume = np.zeros((10, 20, 30), dtype=np.float32)
    volume[3:6, 4:9, 12:18] = 1
    data, box = crop_part(volume, (2, 8), slice(10, 30))
    assert data.shape == (3, 5, 6)
    assert box == (slice(3, 6), slice(4, 9), slice(12, 18))
    np.testing.assert_array_equal(volume[box], data)
    assert crop_part(volume, (7, 9), slice(0, 30)) is None


def test_split_parts_each_leg_in_its_own_part():
    volume = legs_volume(shape=(12, 50, 100))
    cut = find_middle(volume)
    parts = split_parts(volume, "Both", cut, {"LowerLegs": (0, 6), "UpperLegs": (4, 11)})
    assert [(p.region, p.side) for p in parts] == [
        ("LowerLegs", "R"), ("LowerLegs", "L"), ("UpperLegs", "R"), ("UpperLegs", "L")
    ]
    over = 10
    for part in parts:
        np.testing.assert_array_equal(volume[part.box], part.data)
        start, stop = part.box[2].start, part.box[2].stop
        if part.side == "R":  # the whole right leg, at most `over` columns past the cut
            assert start == 28 - 15 and 28 + 15 < stop <= cut + over
        else:
            assert cut - over <= start and stop == 70 + 11 + 1
    assert parts[0].box[0] == slice(0, 7) and parts[2].box[0] == slice(4, 12)
    with pytest.raises(ValueError):
        split_parts(volume, "Both", cut, {"LowerLegs": (0, 12)})


def test_split_parts_single_side_and_empty_slab():
    volume = legs_volume(shape=(6, 50, 100), left=(None, 0))
    volume[4:] = 0
    parts = split_parts(volume, "Right", 50, {"UpperLegs": (0, 5), "Hip": (4, 5)})
    assert len(parts) == 1 and parts[0].side == "R" and parts[0].box[0] == slice(0, 4)


def test_split_config_defaults():
    assert SplitConfig().overlap == 0.1
