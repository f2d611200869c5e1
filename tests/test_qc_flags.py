"""QC flags that catch a failed segmentation: pure checks on planted phantoms, and the flags
through the command line into the sidecar, the subject page and the group outputs."""
from __future__ import annotations

import json

import numpy as np
import pytest

from legseg_tf import qc_flags
from legseg_tf.qc_flags import QCConfig, QCFlag, QCResult
from tests.helpers import AsymmetricSegmenter

# (z, y, x) phantom in the QMRITools layout: columns < CUT are the patient's right leg.
NZ, NY, NX, CUT = 10, 40, 80, 40
SPACING = (5.0, 2.0, 2.0)  # mm: one voxel = 20 mm^3 = 0.02 mL, one pixel = 4 mm^2
GM_L, GM_R, VL_L, VL_R = 3, 4, 55, 56
REPORT = {"side": {"decision": "Both"}, "split": {"cut_column": CUT},
          "region_ranges": {"LowerLegs": [0, NZ - 1]}}


def phantom(left_width: int = 10, right_width: int = 10, left=GM_L, right=GM_R):
    """Two rectangular legs (rows 5-34, columns 2-37 and 42-77); each carries one muscle
    label over 20 rows x ``width`` columns on every slice: 10 columns = 40 mL."""
    body = np.zeros((NZ, NY, NX), dtype=bool)
    body[:, 5:35, 2:38] = True
    body[:, 5:35, 42:78] = True
    labels = np.zeros((NZ, NY, NX), dtype=np.uint16)
    labels[:, 10:30, 5:5 + right_width] = right
    labels[:, 10:30, 45:45 + left_width] = left
    return labels, body


def codes(result: QCResult) -> list[str]:
    return [flag.code for flag in result.flags]


def by_code(result: QCResult, code: str) -> QCFlag:
    (flag,) = [f for f in result.flags if f.code == code]
    return flag


def test_symmetric_phantom_raises_no_flag():
    labels, body = phantom()
    result = qc_flags.evaluate(labels, body, SPACING, REPORT)
    assert result.flags == ()
    assert result.checks == {
        "lr_volume_ratio": "passed",
        "wrong_region_label": "passed",
        "unlabelled_slices": "passed",
        "low_confidence": "not available: no per-part report from the segmenter",
    }
    assert result.thresholds["lr_ratio_warning"] == 1.5


def test_planted_tenfold_asymmetry_fails():
    labels, body = phantom(left_width=10, right_width=1)  # 40 mL vs 4 mL
    result = qc_flags.evaluate(labels, body, SPACING, REPORT)
    assert codes(result) == ["lr_volume_ratio"]
    flag = result.flags[0]
    assert flag.severity == "fail"
    assert flag.structures == ("GM_L", "GM_R")
    assert flag.details == {"left_ml": 40.0, "right_ml": 4.0, "ratio": 10.0}
    assert "left 40.0 mL, right 4.0 mL" in flag.message and "10.00x" in flag.message
    assert result.checks["lr_volume_ratio"] == "flagged"


@pytest.mark.parametrize("left_width, expected", [
    (15, None),        # ratio 1.5: the edge of the band, not flagged
    (16, "warning"),   # 1.6
    (30, "warning"),   # 3.0: the fail edge is still a warning
    (31, "fail"),      # 3.1
])
def test_ratio_thresholds_at_their_edges(left_width, expected):
    labels, body = phantom(left_width=left_width, right_width=10)
    flags = qc_flags.evaluate(labels, body, SPACING, REPORT).flags
    assert [f.severity for f in flags] == ([expected] if expected else [])


def test_ratio_is_symmetric_in_the_sides():
    labels, body = phantom(left_width=10, right_width=16)
    (flag,) = qc_flags.evaluate(labels, body, SPACING, REPORT).flags
    assert flag.severity == "warning" and "the right 1.60x" in flag.message


def test_one_sided_muscle_fails_unless_it_is_often_absent():
    assert [f.message for f in qc_flags.lr_volume_ratio_flags({GM_L: 40.0})] == [
        "Medial gastrocnemius (GM) only on the left (40.0 mL), none on the other side"]
    assert qc_flags.lr_volume_ratio_flags({7: 8.0}) == []  # plantaris, left only
    assert qc_flags.lr_volume_ratio_flags({GM_L: 4.9, GM_R: 0.5}) == []  # both below 5 mL


def test_ratio_not_checked_for_one_leg_or_a_leg_cut_by_the_field_of_view():
    labels, body = phantom(left_width=10, right_width=1)
    one_leg = {**REPORT, "side": {"decision": "Left"}}
    result = qc_flags.evaluate(labels, body, SPACING, one_leg)
    assert "lr_volume_ratio" not in codes(result)
    assert result.checks["lr_volume_ratio"] == "not available: one leg in the image"
    body[:, 5:35, 0:2] = True  # the right leg runs along the first column: 30 rows x 2 mm
    result = qc_flags.evaluate(labels, body, SPACING, REPORT)
    assert "lr_volume_ratio" not in codes(result)
    assert result.checks["lr_volume_ratio"] == (
        "not available: the field of view cuts the right leg on 10 slice(s)")
    body[:, 5:35, 0:2] = False
    body[3, 5:9, 0:2] = True  # 4 rows = 8 mm along the edge: below the 10 mm contact
    assert qc_flags.evaluate(labels, body, SPACING, REPORT).checks["lr_volume_ratio"] == "flagged"


def test_thigh_label_on_lower_leg_range_fails():
    labels, body = phantom()
    labels[2:4, 10:30, 15:20] = VL_R  # 100 pixels = 4 cm^2 of vastus lateralis on 2 slices
    ranges = {**REPORT, "region_ranges": {"LowerLegs": [0, 9], "UpperLegs": [4, 9]}}
    result = qc_flags.evaluate(labels, body, SPACING, ranges)
    assert codes(result) == ["wrong_region_label"]
    flag = result.flags[0]
    assert flag.severity == "fail" and flag.structures == ("VL_R",)
    assert flag.message == "thigh muscles (VL_R) on 2 slice(s) (2-3) assigned to LowerLegs"
    labels[4:6, 10:30, 15:20] = VL_R  # slices 4-5 belong to the thigh range too: fine
    result = qc_flags.evaluate(labels, body, SPACING, ranges)
    assert by_code(result, "wrong_region_label").details["slices"] == [2, 3]


def test_region_check_ignores_specks_and_needs_ranges():
    labels, body = phantom()
    labels[2, 10:14, 15:21] = VL_R  # 24 pixels = 0.96 cm^2 < 1 cm^2
    assert qc_flags.evaluate(labels, body, SPACING, REPORT).flags == ()
    labels[2, 14, 15] = VL_R  # 25 pixels = 1 cm^2
    assert codes(qc_flags.evaluate(labels, body, SPACING, REPORT)) == ["wrong_region_label"]
    no_ranges = {k: v for k, v in REPORT.items() if k != "region_ranges"}
    result = qc_flags.evaluate(labels, body, SPACING, no_ranges)
    assert result.checks["wrong_region_label"].startswith("not available")


def test_thigh_labels_on_slices_the_classifier_called_lower_leg():
    labels, body = phantom(left=VL_L, right=VL_R)
    report = {**REPORT, "region_ranges": {"UpperLegs": [0, NZ - 1]},
              "positions": {"slices": list(range(NZ)),
                            "raw_positions": ["Lower"] * 3 + ["Knee"] + ["Upper"] * 6}}
    (flag,) = qc_flags.evaluate(labels, body, SPACING, report).flags
    assert flag.code == "wrong_region_label" and flag.severity == "warning"
    assert flag.structures == ("VL_L", "VL_R")
    assert "3 consecutive slice(s) (0-2) the classifier called Lower" in flag.message
    report["positions"]["raw_positions"][2] = "Knee"  # a run of 2 is classifier noise
    assert qc_flags.evaluate(labels, body, SPACING, report).flags == ()


def test_thigh_labels_on_slices_whose_bones_are_a_calf():
    """--region upper on a calf: one range, no classifier positions, the bones tell."""
    labels, body = phantom(left=VL_L, right=VL_R)
    levels = ["Lower"] * 4 + ["Knee"] * 2 + ["Upper"] * 4
    confidence = [1.0, 1.0, 0.8, 1.0] + [1.0] * 6
    report = {**REPORT, "region_ranges": {"UpperLegs": [0, NZ - 1]},
              "anatomy": {"levels": levels, "confidence": confidence}}
    (flag,) = qc_flags.evaluate(labels, body, SPACING, report).flags
    assert flag.code == "wrong_region_label" and flag.severity == "warning"
    assert flag.message == ("thigh muscles (VL_L, VL_R) on 4 consecutive slice(s) (0-3) whose "
                            "bones read as Lower")
    levels[4] = "Lower"  # 5 slices: a network on the wrong anatomy
    (flag,) = qc_flags.evaluate(labels, body, SPACING, report).flags
    assert flag.severity == "fail" and flag.details["slices"] == [0, 1, 2, 3, 4]
    levels[4] = "Knee"
    confidence[1] = 0.5  # one leg undecided on slice 1: runs of 1 and 2 slices remain
    assert qc_flags.evaluate(labels, body, SPACING, report).flags == ()
    levels[1] = None
    confidence[1] = 0.0
    assert qc_flags.evaluate(labels, body, SPACING, report).flags == ()


def test_unlabelled_slice_with_leg_tissue():
    labels, body = phantom()
    labels[4, :, :CUT] = 0
    (flag,) = qc_flags.evaluate(labels, body, SPACING, REPORT).flags
    assert flag.code == "unlabelled_slices" and flag.severity == "warning"
    assert flag.structures == ("right leg",)
    assert flag.message == "right leg: 1 slice(s) (4) with 43-43 cm2 of tissue but no muscle label"
    labels[5:9, :, :CUT] = 0  # the right GM halves: also a 2x left/right ratio
    result = qc_flags.evaluate(labels, body, SPACING, REPORT)
    assert codes(result) == ["lr_volume_ratio", "unlabelled_slices"]
    flag = by_code(result, "unlabelled_slices")
    assert flag.severity == "fail" and flag.details["slices"] == [4, 5, 6, 7, 8]


def test_unlabelled_end_slice_ignored_only_when_the_body_is_tiny():
    labels, body = phantom()
    labels[0] = 0
    body[0] = False
    body[0, 10:15, 5:10] = True  # 25 pixels = 1 cm^2 in each leg: below 10 cm^2
    body[0, 10:15, 45:50] = True
    assert qc_flags.evaluate(labels, body, SPACING, REPORT).flags == ()
    body[0, 5:35, 42:78] = True  # a full cross-section of the left leg on the first slice
    (flag,) = qc_flags.evaluate(labels, body, SPACING, REPORT).flags
    assert flag.code == "unlabelled_slices" and flag.structures == ("left leg",)
    assert flag.details["slices"] == [0]


def test_unlabelled_slices_outside_the_segmented_ranges_are_not_flagged():
    labels, body = phantom()
    labels[7:] = 0
    report = {**REPORT, "region_ranges": {"LowerLegs": [0, 6]}}
    assert qc_flags.evaluate(labels, body, SPACING, report).flags == ()
    report = {**REPORT, "region_ranges": {}}  # the classifier found no region: all slices
    assert codes(qc_flags.evaluate(labels, body, SPACING, report)) == ["unlabelled_slices"] * 2


@pytest.mark.parametrize("value, expected", [(0.9, None), (0.75, None), (0.749, "warning"),
                                             (0.6, "warning"), (0.599, "fail")])
def test_confidence_thresholds(value, expected):
    report = {"parts": [{"region": "LowerLegs", "side": "L", "model": "m",
                         "confidence": {"mean_max_probability": value, "voxels": 1000}},
                        {"region": "LowerLegs", "side": "R", "confidence": None}]}
    flags, state = qc_flags.confidence_flags(report)
    assert [f.severity for f in flags] == ([expected] if expected else [])
    assert state == ("flagged" if expected else "passed")
    if expected:
        assert flags[0].structures == ("LowerLegs left",)
        assert f"mean top probability {value:.3f} over 1000 labelled voxels" in flags[0].message


def test_confidence_needs_enough_labelled_volume():
    part = {"region": "LowerLegs", "side": "R",
            "confidence": {"mean_max_probability": 0.5, "voxels": 249}}
    report = {"spacing_zyx_mm": [5.0, 2.0, 2.0], "parts": [part]}  # 249 x 0.02 mL < 5 mL
    assert qc_flags.confidence_flags(report) == ([], "passed")
    part["confidence"]["voxels"] = 250  # 5 mL
    assert [f.severity for f in qc_flags.confidence_flags(report)[0]] == ["fail"]


def test_confidence_not_available_without_probabilities():
    flags, state = qc_flags.confidence_flags({"parts": [{"region": "UpperLegs", "side": "R"}]})
    assert flags == [] and state.startswith("not available: the networks returned no")


def test_legs_without_a_segmenter_report_come_from_the_labels():
    labels, _ = phantom()
    assert qc_flags.legs({}, labels) == ({"R": slice(0, 30), "L": slice(30, NX)}, "labels")
    assert qc_flags.legs(REPORT, labels) == ({"R": slice(0, CUT), "L": slice(CUT, NX)},
                                              "segmenter")
    only_left = np.where(labels == GM_L, labels, 0)
    assert qc_flags.legs({}, only_left)[0] == {"L": slice(0, NX)}


def test_flags_round_trip_and_validation():
    labels, body = phantom(left_width=10, right_width=1)
    result = qc_flags.evaluate(labels, body, SPACING, REPORT)
    again = QCResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again.flags == result.flags and again.checks == result.checks and again.n_fail == 1
    with pytest.raises(ValueError):
        QCFlag("Not A Code", "fail", "x")
    assert QCFlag.from_dict({"code": "newer_check", "severity": "warning", "message": "m"})
    with pytest.raises(ValueError):
        QCFlag("lr_volume_ratio", "info", "x")
    with pytest.raises(ValueError):
        QCConfig(lr_ratio_warning=2.0, lr_ratio_fail=1.5)
    with pytest.raises(ValueError):
        qc_flags.evaluate(labels, body[:, :, :10], SPACING, REPORT)
    with pytest.raises(ValueError):
        qc_flags.evaluate(labels, body, (0.0, 2.0, 2.0), REPORT)
    assert set(QCConfig.reasons()) == set(QCConfig().values())
    assert qc_flags.slice_ranges_text([7, 0, 1, 2, 9, 10]) == "0-2, 7, 9-10"


# ------------------------------------------------------------ through the command line


def _sidecar(out):
    path = out / "sub-01/anat/sub-01_acq-outphase_desc-muscles_dseg.json"
    return json.loads(path.read_text())


def test_planted_asymmetry_reaches_sidecar_html_and_group(tmp_path, monkeypatch):
    from legseg_tf import cli, demo, pipeline

    bids, out = tmp_path / "bids", tmp_path / "out"
    demo.write_demo(bids, subjects=1)
    monkeypatch.setattr(pipeline, "load_segmenter", lambda config, models_dir: AsymmetricSegmenter())
    assert cli.main([str(bids), str(out), "participant", "--skip_bids_validator"]) == 0
    qc = _sidecar(out)["legseg"]["qc"]
    assert [(f["code"], f["severity"], f["structures"]) for f in qc["flags"]] == [
        ("lr_volume_ratio", "fail", ["VL_L", "VL_R"])]
    assert qc["flags"][0]["details"]["ratio"] > 3.0
    assert qc["checks"] == {"lr_volume_ratio": "flagged", "wrong_region_label": "passed",
                            "unlabelled_slices": "passed", "low_confidence": "passed",
                            "not_anatomy": "passed"}
    page = (out / "sub-01.html").read_text()
    box = page[page.index('<div class="qc-box" id="qc-flags">'):]
    box = box[: box.index("</div>")]
    assert 'data-code="lr_volume_ratio"' in box and "FAIL" in box
    assert html_escape(qc["flags"][0]["message"]) in box
    assert page.index("qc-flags") < page.index("<h2>Overview</h2>")  # near the top
    # a fail flag leaves the image out of the group statistics unless asked to keep it
    assert cli.main([str(bids), str(out), "group", "--include-failed-qc"]) == 0
    wide = (out / "group_muscles_wide.tsv").read_text().splitlines()
    header, row = wide[0].split("\t"), wide[1].split("\t")
    assert header[:5] == ["participant_id", "session_id", "source", "qc_flags", "qc_fail"]
    assert row[3:5] == ["1", "1"]
    flags = (out / "group_qc_flags.tsv").read_text().splitlines()
    assert len(flags) == 2 and flags[1].split("\t")[3:5] == ["lr_volume_ratio", "fail"]
    group_page = (out / "group.html").read_text()
    assert 'href="sub-01.html#qc-flags"' in group_page
    assert html_escape(qc["flags"][0]["message"]) in group_page


def test_tiny_networks_on_the_demo_flag_low_confidence(tmp_path):
    """Unsure networks through the CLI: vastus lateralis everywhere, but with a softmax of
    e^0.5 / (e^0.5 + 21) = 0.073 (22 classes), far below 0.75: both legs are flagged."""
    from legseg_tf import cli, demo
    from tests.helpers import install_tiny_models

    install_tiny_models(tmp_path / "models", logit=0.5,
                        always={"upper_leg": 12, "side": "Both", "position": "Upper"})
    bids, out = tmp_path / "bids", tmp_path / "out"
    demo.write_demo(bids, subjects=1)
    assert cli.main([str(bids), str(out), "participant", "--models", str(tmp_path / "models"),
                     "--region", "upper", "--device", "cpu", "--skip_bids_validator"]) == 0
    qc = _sidecar(out)["legseg"]["qc"]
    assert set(qc["checks"]) == set(qc_flags.CHECKS)
    low = [f for f in qc["flags"] if f["code"] == "low_confidence"]
    assert sorted(f["structures"][0] for f in low) == ["UpperLegs left", "UpperLegs right"]
    assert all(f["severity"] == "fail" for f in low)
    expected = np.exp(0.5) / (np.exp(0.5) + 21)
    assert all(f"{expected:.3f}" in f["message"] for f in low)
    page = (out / "sub-01.html").read_text()
    for flag in qc["flags"]:
        assert html_escape(flag["message"]) in page


def test_flag_text_is_escaped_in_the_pages():
    from legseg_tf.reports.group_report import qc_summary
    from legseg_tf.reports.participant import qc_box

    import pandas as pd

    flag = QCFlag("lr_volume_ratio", "fail", "<script>alert(1)</script> & more", ("GM_L",))

    class Summary:  # the attributes qc_box reads
        result = type("R", (), {"image": type("I", (), {"relpath": "sub-01/<x>.nii.gz"})()})()
        qc = QCResult((flag,), {"lr_volume_ratio": "flagged"})
        qc_note = ""

    page = qc_box([Summary()])
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page
    assert "sub-01/&lt;x&gt;.nii.gz" in page
    rows = pd.DataFrame([{"participant_id": "sub-01", "session_id": "n/a", "source": "<s>",
                          "code": "lr_volume_ratio", "severity": "fail",
                          "message": "<b>x</b>", "structures": "GM_L"}])
    section = qc_summary(None, rows, __import__("pathlib").Path("/nonexistent"))
    assert "<b>x</b>" not in section and "&lt;b&gt;x&lt;/b&gt;" in section
    assert "&lt;s&gt;" in section


def html_escape(text: str) -> str:
    from html import escape

    return escape(text)


def test_group_reads_flags_from_sidecars(tmp_path):
    from legseg_tf import group

    anat = tmp_path / "sub-02/ses-a/anat"
    anat.mkdir(parents=True)
    dseg = anat / "sub-02_ses-a_acq-outphase_desc-muscles_dseg.nii.gz"
    ids = {"participant_id": "sub-02", "session_id": "ses-a", "source": "sub-02_ses-a_acq-outphase"}
    counts, rows = group.image_qc(dseg)  # no sidecar: not recorded
    assert rows == [] and counts["qc_flags"] != counts["qc_flags"]  # NaN
    labels, body = phantom(left_width=10, right_width=1)
    labels[4, :, :CUT] = 0
    qc = qc_flags.evaluate(labels, body, SPACING, REPORT).to_dict()
    dseg.with_name(dseg.name.replace(".nii.gz", ".json")).write_text(
        json.dumps({"legseg": {"qc": qc}}))
    counts, rows = group.image_qc(dseg)
    assert counts == {**ids, "qc_flags": 2, "qc_fail": 1}
    assert [(r["code"], r["severity"], r["structures"]) for r in rows] == [
        ("lr_volume_ratio", "fail", "GM_L;GM_R"), ("unlabelled_slices", "warning", "right leg")]


def test_qc_flags_reuse_the_segmenters_body_mask(monkeypatch):
    """The participant level's QC takes the body mask the segmenter made (no second mask run):
    the same flags as recomputing it, and no mask computation at all when one is given."""
    from legseg_tf import masking, pipeline
    from legseg_tf.segmenter import SegmentationResult

    labels, body = phantom()
    volume = np.where(body, 100.0, 0.0).astype(np.float32)
    segmenter = type("Planted", (), {"mask_config": masking.MaskConfig()})()
    report = type("Report", (), {"to_dict": lambda self: dict(REPORT)})()
    fresh = pipeline._qc_flags(volume, SegmentationResult(labels, report), SPACING, segmenter,
                               "phantom")
    given = SegmentationResult(labels, report, body_mask=masking.body_mask(volume))

    def no_second_mask(*args, **kwargs):
        raise AssertionError("body mask computed again")

    monkeypatch.setattr(masking, "body_mask", no_second_mask)
    reused = pipeline._qc_flags(volume, given, SPACING, segmenter, "phantom")
    assert "error" not in fresh and reused == fresh
    # a mask of another grid is not reused
    given.body_mask = given.body_mask[:-1]
    assert "error" in pipeline._qc_flags(volume, given, SPACING, segmenter, "phantom")
