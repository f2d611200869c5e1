"""Network-free level check from bones (legseg_tf.anatomy): synthetic phantoms in mm at two
grids, the cross-check rules, the segmenter wiring, and the real stacks of ../shared/data."""
import logging

import numpy as np
import pytest

from conftest import shared_file
from legseg_tf.anatomy import (
    AnatomyResult,
    SliceLevel,
    anatomy_levels,
    body_part_prior,
    reconcile_positions,
    reconciled_ranges,
    single_region_check,
)
from legseg_tf.segmenter import QMRIToolsSegmenter, RegionNetwork
from tests.helpers import FAT, MUSCLE, VOID, phantom

@pytest.mark.parametrize("spacing", [0.8, 3.0])
@pytest.mark.parametrize("marrow", [FAT, VOID], ids=["fat-marrow", "water-contrast"])
def test_calf_and_thigh_phantoms_at_two_grids(spacing, marrow):
    calf = anatomy_levels(*phantom(spacing, marrow=marrow))
    assert calf.levels == ["Lower"] * 3 and list(calf.confidences) == [1.0] * 3
    for leg in calf.slices[0].legs:
        tibia, fibula = leg.bones[:2]
        assert tibia.area_mm2 == pytest.approx(np.pi * 12.0**2, rel=0.2)
        assert fibula.area_mm2 == pytest.approx(np.pi * 7.0**2, rel=0.4)
        lateral = (fibula.center_yx[1] - tibia.center_yx[1]) * (1 if leg.side == "L" else -1)
        assert lateral > 0
    thigh = anatomy_levels(*phantom(spacing, right="thigh", left="thigh", marrow=marrow))
    assert thigh.levels == ["Upper"] * 3 and list(thigh.confidences) == [1.0] * 3
    femur = thigh.slices[0].legs[0].bones[0]
    assert femur.area_mm2 == pytest.approx(np.pi * 14.0**2, rel=0.15)


@pytest.mark.parametrize("spacing", [0.8, 3.0])
def test_asymmetric_legs_are_read_per_leg(spacing):
    """Right leg a calf (two bones), left leg a thigh (one bone): each leg is read on its own
    and the slice, whose legs disagree, stays undecided."""
    result = anatomy_levels(*phantom(spacing, right="calf", left="thigh"))
    first = result.slices[0]
    assert {leg.side: leg.level for leg in first.legs} == {"R": "Lower", "L": "Upper"}
    assert {leg.side: len(leg.bones) for leg in first.legs} == {"R": 2, "L": 1}
    assert result.levels == [None] * 3 and result.confident_levels() == [None] * 3
    mirrored = anatomy_levels(*phantom(spacing, right="thigh", left="calf"))
    assert {leg.side: leg.level for leg in mirrored.slices[0].legs} == {"R": "Upper", "L": "Lower"}


@pytest.mark.parametrize("spacing", [0.8, 3.0])
def test_pelvis_lobe_across_the_midline_is_hip(spacing):
    volume, spacing_zyx = phantom(spacing, pelvis=True)
    result = anatomy_levels(volume, spacing_zyx, cut=volume.shape[2] // 2)
    assert result.levels == ["Hip"] * 3 and list(result.confidences) == [1.0] * 3


def test_legs_without_bones_and_empty_slices_are_undecided():
    volume, spacing = phantom(1.5)
    from scipy import ndimage

    filled = np.stack([ndimage.binary_fill_holes(v > 10) for v in volume])
    volume[:] = np.where(filled, MUSCLE, 0.0)             # tissue without any void
    volume[1] = 0.0
    result = anatomy_levels(volume, spacing)
    assert result.levels == [None, None, None]
    assert result.to_report()["levels"] == [None, None, None]
    with pytest.raises(ValueError):
        anatomy_levels(volume[0], spacing)
    with pytest.raises(ValueError):
        anatomy_levels(volume, (6.0, 0.0, 1.0))


def _anatomy(levels, confidence=1.0):
    return AnatomyResult(tuple(SliceLevel(lv, confidence if lv else 0.0) for lv in levels), cut=0)


def test_confident_calf_stretch_overrides_the_classifier():
    positions = ["Lower"] * 4 + ["Knee"] * 2 + ["Upper"] * 4
    anatomy = _anatomy(["Lower"] * 9 + [None])
    result = reconcile_positions(positions, np.arange(10), anatomy, with_hip=False)
    assert result.levels == ["Lower"] * 10
    assert result.overridden == [(4, 9, "Upper", "Lower")]
    assert "lower leg" in result.warnings[0]
    assert reconciled_ranges(result.levels, np.arange(10), ("LowerLegs", "UpperLegs")) == {
        "LowerLegs": (0, 9)}


def test_single_or_unconfident_disagreement_changes_nothing():
    positions = ["Upper"] * 8
    one = reconcile_positions(positions, np.arange(8), _anatomy([None, None, "Lower"] + [None] * 5),
                              with_hip=False)
    weak = reconcile_positions(positions, np.arange(8), _anatomy(["Lower"] * 8, 0.5),
                               with_hip=False)
    assert one.levels == positions and weak.levels == positions
    assert not one.warnings and not weak.warnings


def test_legs_region_leaves_the_pelvis_out_and_legs_hip_keeps_it():
    positions = ["Upper"] * 6 + ["Hip"] * 6
    anatomy = _anatomy(["Upper"] * 4 + [None] * 3 + ["Hip"] * 5)
    legs = reconcile_positions(positions, np.arange(12), anatomy, with_hip=False)
    assert legs.excluded == list(range(6, 12))
    assert any("legs-hip" in w for w in legs.warnings)
    ranges = reconciled_ranges(legs.levels, np.arange(12), ("LowerLegs", "UpperLegs"),
                               legs.excluded)
    assert ranges == {"UpperLegs": (0, 5)}
    with_hip = reconcile_positions(positions, np.arange(12), anatomy, with_hip=True)
    assert with_hip.excluded == [] and with_hip.levels == positions


def test_body_part_prior(caplog):
    assert body_part_prior("THIGH") == "Upper"
    assert body_part_prior("lower_leg") == "Lower" and body_part_prior("LEG") == "Lower"
    assert body_part_prior("LOWEREXTREMITY") is None and body_part_prior(None) is None
    with caplog.at_level(logging.DEBUG, logger="legseg_tf.anatomy"):
        assert body_part_prior("BRAIN") is None
    assert "BRAIN" in caplog.text
    positions = ["Lower"] * 6
    thigh = reconcile_positions(positions, np.arange(6), _anatomy([None] * 6), with_hip=False,
                                body_part="THIGH")
    assert thigh.levels == ["Upper"] * 6 and "THIGH" in thigh.warnings[0]
    # the bones outrank the prior
    calf = reconcile_positions(positions, np.arange(6), _anatomy(["Lower"] * 6), with_hip=False,
                               body_part="THIGH")
    assert calf.levels == positions
    unknown = reconcile_positions(positions, np.arange(6), _anatomy([None] * 6),
                                  with_hip=False, body_part="BRAIN")
    assert unknown.levels == positions and not unknown.warnings


def test_single_region_check_warns_only():
    calf = _anatomy(["Lower"] * 5)
    assert "check the --region" in single_region_check("UpperLegs", calf)[0]
    assert single_region_check("LowerLegs", calf) == []
    assert "LEG" in single_region_check("UpperLegs", _anatomy([None] * 5), "LEG")[0]


# ----------------------------------------------------------------------------- segmenter


def _recording_network(role, table):
    calls = []

    def predict(part):
        calls.append(part.shape)
        return np.where(part > 0, 1, 0).astype(np.int32)

    return RegionNetwork(role, f"fake-{role}", "0" * 64, table, predict), calls


def _stub_classifier(positions_for):
    def classify(images):
        n = images.shape[0]
        return ["Both"] * n, positions_for(n)
    return classify


def test_calf_called_thigh_by_the_classifier_goes_to_the_lower_leg_network():
    volume, spacing = phantom(1.5, nz=12)
    upper, upper_calls = _recording_network("upper_leg", "N5_UpperLeg")
    lower, lower_calls = _recording_network("lower_leg", "N6_LowerLeg")
    segmenter = QMRIToolsSegmenter(
        "legs", {"upper_leg": upper, "lower_leg": lower},
        classifier=_stub_classifier(lambda n: ["Upper"] * n))
    result = segmenter.segment(volume, spacing, body_part="LOWEREXTREMITY")
    assert upper_calls == [] and len(lower_calls) == 2
    assert result.report.region_ranges == {"LowerLegs": [0, 11]}
    assert any("lower leg" in w and "classifier" in w for w in result.report.warnings)
    assert result.report.anatomy["levels"] == ["Lower"] * 12
    assert result.report.anatomy["overridden"] == [[0, 11, "Upper", "Lower"]]


def test_legs_region_sends_no_pelvis_slice_to_the_thigh_network():
    thigh, spacing = phantom(1.5, nz=8, right="thigh", left="thigh")
    pelvis, _ = phantom(1.5, nz=6, pelvis=True)
    volume = np.concatenate([thigh, pelvis])
    upper, upper_calls = _recording_network("upper_leg", "N5_UpperLeg")
    lower, _ = _recording_network("lower_leg", "N6_LowerLeg")
    segmenter = QMRIToolsSegmenter(
        "legs", {"upper_leg": upper, "lower_leg": lower},
        classifier=_stub_classifier(lambda n: ["Upper"] * n))
    result = segmenter.segment(volume, spacing)
    first, last = result.report.region_ranges["UpperLegs"]
    assert last < 8
    assert result.report.anatomy["excluded_slices"] == list(range(8, 14))
    assert not result.labels[8:].any()
    assert upper_calls and all(shape[0] <= 8 for shape in upper_calls)
    assert any("legs-hip" in w for w in result.report.warnings)


# ----------------------------------------------------------------------------- real stacks

JOIN_POSITIONS = {
    "Join_1": [(0, 30, "Lower")],
    "Join_2": [(0, 30, "Lower")],
    "Join_3": [(0, 30, "Lower")],
    "Join_4": [(0, 13, "Lower"), (14, 30, "Knee")],
    "Join_5": [(0, 4, "Knee"), (5, 30, "Upper")],
    "Join_6": [(0, 30, "Upper")],
    "Join_7": [(0, 2, "Upper"), (3, 30, "Hip")],
}
#: Measured (confident slices of 31; strict agreement; compatible): Join_1 7, 4/7, 7/7;
#: Join_2 20, 16/20, 20/20; Join_3 20, 20/20, 20/20; Join_4 18, 16/18, 18/18; Join_5 12, 11/12,
#: 12/12; Join_6 28, 28/28, 28/28; Join_7 15, 9/15, 14/15. The foot (Join_1/2: tarsal bones
#: read as knee) and the pelvis (Join_7) are the hard stacks; "compatible" counts a confident
#: level that would not override the true position (:data:`legseg_tf.anatomy.COMPATIBLE`).
MIN_COMPATIBLE = {"Join_7": 0.9}


def _load(*parts):
    from legseg_tf.training.data import load_volume

    return load_volume(shared_file("data", *parts))


@pytest.mark.realdata
@pytest.mark.parametrize("stack", sorted(JOIN_POSITIONS))
def test_join_stacks_agree_with_their_positions(stack):
    from legseg_tf.anatomy import COMPATIBLE

    volume, spacing = _load("qmritools", "DemoData", f"{stack}.nii.gz")
    truth = [None] * volume.shape[0]
    for first, last, level in JOIN_POSITIONS[stack]:
        truth[first:last + 1] = [level] * (last - first + 1)
    result = anatomy_levels(volume, spacing)
    pairs = [(a, t) for a, t in zip(result.confident_levels(), truth) if a is not None]
    compatible = sum(t in COMPATIBLE[a] for a, t in pairs) / len(pairs)
    strict = sum(a == t for a, t in pairs) / len(pairs)
    logging.getLogger(__name__).info("%s: %d confident, strict %.2f, compatible %.2f",
                                     stack, len(pairs), strict, compatible)
    assert len(pairs) >= 6
    assert compatible >= MIN_COMPATIBLE.get(stack, 0.95)
    # with the true positions as the classifier's, the cross-check overrides nothing
    rec = reconcile_positions(truth, np.arange(len(truth)), result, with_hip=True)
    assert rec.overridden == []


REAL_STACKS = {
    "thigh-test": (("qmritools", "scripts_test_data", "test.nii.gz"), "Upper"),
    "calf-demo-water": (("qmritools", "DemoData", "water.nii.gz"), "Lower"),
    "calf-demo-twolegs": (("qmritools", "DemoData", "twoLegs.nii.gz"), "Lower"),
    "ucl-siemens-thigh": (("swastling_musclemap", "ff", "siemens", "thigh", "input",
                           "0006-Dixon_TE_345_th.nii.gz"), "Upper"),
    "ucl-ge-thigh": (("swastling_musclemap", "ff", "ge", "thigh_masked", "input",
                      "40006-ORIG_DIXON_TE_345_TH-0000.nii.gz"), "Upper"),
    "ucl-calf": (("swastling_musclemap", "t2", "input", "0007-Dixon_TE_345_cf.nii.gz"), "Lower"),
}


@pytest.mark.realdata
@pytest.mark.parametrize("name", sorted(REAL_STACKS))
def test_real_stacks_of_one_level(name):
    """Measured: every confident slice right; confident slices thigh-test 24/31, water 23/23,
    twoLegs 14/25, Siemens thigh 10/10, GE thigh 10/10, UCL calf 5/10."""
    parts, level = REAL_STACKS[name]
    volume, spacing = _load(*parts)
    result = anatomy_levels(volume, spacing)
    confident = [a for a in result.confident_levels() if a is not None]
    assert len(confident) >= 0.5 * volume.shape[0]
    assert confident == [level] * len(confident)
    # a classifier calling the whole stack the other leg level is overruled
    other = "Upper" if level == "Lower" else "Lower"
    rec = reconcile_positions([other] * volume.shape[0], np.arange(volume.shape[0]), result,
                              with_hip=False)
    ranges = reconciled_ranges(rec.levels, np.arange(volume.shape[0]),
                               ("LowerLegs", "UpperLegs"), rec.excluded)
    wanted = "LowerLegs" if level == "Lower" else "UpperLegs"
    assert wanted in ranges and rec.warnings
    first, last = ranges[wanted]
    assert last - first + 1 >= len(confident)


def test_body_part_examined_is_read_from_the_sidecar(tmp_path):
    from legseg_tf.bids_inputs import find_inputs
    from tests.conftest import make_dataset

    layout = {
        "sub-01/anat/sub-01_acq-outphase_T1w.nii.gz": {"BodyPartExamined": "THIGH"},
        "sub-02/anat/sub-02_acq-outphase_T1w.nii.gz": {"EchoTime": 0.00345},
    }
    images = find_inputs(make_dataset(tmp_path / "d", layout))
    assert {image.subject: image.body_part for image in images} == {"01": "THIGH", "02": None}


@pytest.mark.realdata
def test_ucl_calf_called_knee_and_thigh_from_mid_calf_up_stays_calf():
    """The reported failure: the classifier called the UCL calf Knee/Upper from mid-calf up."""
    volume, spacing = _load("swastling_musclemap", "t2", "input", "0007-Dixon_TE_345_cf.nii.gz")
    result = anatomy_levels(volume, spacing)
    positions = ["Lower"] * 5 + ["Knee"] * 2 + ["Upper"] * 3
    rec = reconcile_positions(positions, np.arange(10), result, with_hip=False)
    assert rec.levels == ["Lower"] * 10 and rec.warnings
    assert reconciled_ranges(rec.levels, np.arange(10), ("LowerLegs", "UpperLegs"),
                             rec.excluded) == {"LowerLegs": (0, 9)}


def test_shape_from_row_ends_equals_the_hull_of_every_pixel_corner():
    """Solidity from the first and last pixel of each row equals that from the corners of
    every pixel (SciPy's Qhull on all of them), for blobs with notches and holes."""
    from scipy.spatial import ConvexHull

    from legseg_tf.anatomy import _shape

    rng = np.random.default_rng(12)
    yy, xx = np.mgrid[:40, :50]
    for _ in range(40):
        cy, cx, ry, rx = rng.uniform(15, 25), rng.uniform(15, 35), *rng.uniform(3, 14, 2)
        region = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        region &= rng.random(region.shape) > 0.15          # notches and holes
        spacing = tuple(rng.uniform(0.5, 2.0, 2))
        ys, xs = np.nonzero(region)
        if ys.size < 5:
            continue
        points = np.column_stack([ys * spacing[0], xs * spacing[1]])
        corners = np.concatenate([points + [sy * spacing[0] / 2, sx * spacing[1] / 2]
                                  for sy in (-1, 1) for sx in (-1, 1)])
        expected = ys.size * spacing[0] * spacing[1] / ConvexHull(corners).volume
        assert _shape(region, spacing)[0] == pytest.approx(expected, rel=1e-12)


def test_shape_limits_reject_exactly_what_the_full_measures_reject():
    """With limits, ``_shape`` may stop early (axis ratio first, then a polygon inside the
    hull bounding the solidity from above), but accepts and rejects exactly the regions the
    full measures do, and returns the full measures of those it accepts."""
    from scipy.spatial import ConvexHull

    from legseg_tf.anatomy import _extreme_polygon_area, _shape

    rng = np.random.default_rng(13)
    yy, xx = np.mgrid[:40, :50]
    limits = (0.8, 2.5)
    verdicts = set()
    for _ in range(300):
        cy, cx, ry, rx = rng.uniform(15, 25), rng.uniform(15, 35), *rng.uniform(2, 16, 2)
        angle = rng.uniform(0, np.pi)
        u = (yy - cy) * np.cos(angle) + (xx - cx) * np.sin(angle)
        v = -(yy - cy) * np.sin(angle) + (xx - cx) * np.cos(angle)
        region = (u / ry) ** 2 + (v / rx) ** 2 <= 1
        if rng.random() < 0.5:                               # C shapes, crescents, holes
            region &= ((u - rng.uniform(-ry, ry)) / ry) ** 2 + (v / (0.6 * rx)) ** 2 > 1
        region &= rng.random(region.shape) > rng.uniform(0, 0.3)
        spacing = tuple(rng.uniform(0.5, 2.0, 2))
        full = _shape(region, spacing)
        quick = _shape(region, spacing, limits)
        rejected = full[0] < limits[0] or full[1] > limits[1]
        assert (quick[0] < limits[0] or quick[1] > limits[1]) == rejected
        if not rejected:
            assert quick == full
        verdicts.add((rejected, full[1] > limits[1]))
        ys, xs = np.nonzero(region)
        if ys.size >= 5:
            corners = np.column_stack([ys * spacing[0], xs * spacing[1]])
            hull = ConvexHull(corners).volume
            assert _extreme_polygon_area(corners) <= hull * (1 + 1e-12)
    # accepted, rejected for the solidity alone, and for the axis ratio
    assert verdicts == {(False, False), (True, False), (True, True)}
