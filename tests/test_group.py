"""Group level: long/wide/asymmetry tables, outliers, the page, re-runs and nothing-to-do."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from legseg_tf import group, nifti_io
from legseg_tf.reports.participant import write_participant_outputs
from tests.helpers import BFL, FEM, SM, VL, VM, build_outputs, read_table


def _run_participants(root, subjects):
    bids, out, results = build_outputs(root, subjects=subjects)
    return bids, out, results


def test_robust_z_matches_formula():
    values = pd.Series([10.0, 11.0, 12.0, 13.0, 100.0])
    z = group.robust_z(values)
    median, mad = 12.0, 1.0
    np.testing.assert_allclose(z, 0.6745 * (values - median) / mad)
    assert group.robust_z(pd.Series([1.0, 2.0])).isna().all()  # too few
    assert group.robust_z(pd.Series([5.0, 5.0, 5.0, 9.0])).isna().all()  # MAD = 0


def test_group_tables_outlier_and_rerun(tmp_path, caplog):
    bids, out, results = _run_participants(tmp_path, subjects=4)
    # the demo thighs have one geometry: give each participant its own muscle sizes, and
    # sub-03 a tiny left vastus lateralis (an outlier in volume)
    for number, result in enumerate(results, start=1):
        labels = result.labels_ras.copy()
        for value in np.unique(labels[labels > 0]):
            voxels = np.argwhere(labels == value)
            keep = 40 if (number == 3 and value == VL[0]) else len(voxels) - 150 * number
            drop = voxels[keep:]
            labels[tuple(drop.T)] = 0
        result.labels_ras = labels
        geometry = nifti_io.load_canonical(result.image.path)[1]
        nifti_io.save_labels(labels, geometry, result.dseg_path)
    write_participant_outputs(results, bids, out, ff_erosion=1)

    caplog.set_level(logging.INFO)
    assert group.run_group(out) == 0
    long = read_table(out / "group_muscles.tsv")
    assert list(long.columns[:9]) == [
        "participant_id",
        "session_id",
        "source",
        "label",
        "name",
        "abbreviation",
        "muscle",
        "side",
        "region",
    ]
    assert len(long) == 4 * 10
    assert set(long["participant_id"]) == {"sub-01", "sub-02", "sub-03", "sub-04"}
    assert (long["session_id"].isna()).all()  # n/a: no sessions
    big = long[long["volume_ml_robust_z"].abs() > 3.5]
    assert set(zip(big["participant_id"], big["label"], strict=False)) == {("sub-03", VL[0])}
    z_columns = ["volume_ml_robust_z", "max_csa_cm2_robust_z", "ff_median_robust_z"]
    expected_flags = (long[z_columns].abs() > 3.5).any(axis=1)
    assert (long["outlier"] == expected_flags).all() and long.loc[big.index, "outlier"].all()
    assert long["ff_median"].between(0, 100).all()

    wide = read_table(out / "group_muscles_wide.tsv")
    assert len(wide) == 4 and "VL_L_volume_ml" in wide and "SM_R_ff_median" in wide
    columns = list(wide.columns)
    assert columns.index("BFL_L_volume_ml") < columns.index("VL_L_volume_ml")  # label order
    row = wide.set_index("participant_id").loc["sub-01"]
    per_image = read_table(
        out / "sub-01/anat/sub-01_acq-outphase_desc-muscles_morph.tsv"
    ).set_index("label")
    assert row["VM_R_volume_ml"] == pytest.approx(per_image.loc[VM[1], "volume_ml"])

    asym = read_table(out / "group_asymmetry.tsv")
    vl = asym[(asym["participant_id"] == "sub-01") & (asym["muscle"] == "Vastus lateralis")].iloc[0]
    left, right = per_image.loc[VL[0], "volume_ml"], per_image.loc[VL[1], "volume_ml"]
    expected = 100 * (left - right) / ((left + right) / 2)
    assert vl["volume_ml_asymmetry_pct"] == pytest.approx(expected, rel=1e-4)
    assert vl["volume_ml_asymmetry_pct"] > 0  # the phantom's left thigh is larger
    assert vl["ff_median_difference"] > 0  # and fattier

    page = (out / "group.html").read_text()
    for subject in ("sub-01", "sub-04"):
        assert f'href="{subject}.html"' in page
    assert "sub-03" in page.split("<h2>Outliers</h2>")[1]
    assert page.count("data:image/png;base64,") >= 4

    # another participant arrives: re-running updates every output
    bids2, out2, more = build_outputs(tmp_path / "more", subjects=5)
    new = more[4]
    target = out / new.dseg_path.relative_to(out2)
    target.parent.mkdir(parents=True)
    for path in new.dseg_path.parent.iterdir():
        (target.parent / path.name).write_bytes(path.read_bytes())
    assert group.run_group(out) == 0
    assert set(read_table(out / "group_muscles.tsv")["participant_id"]) >= {"sub-05"}
    assert len(read_table(out / "group_muscles_wide.tsv")) == 5
    assert "sub-05" in (out / "group.html").read_text()
    # sub-05 came without its morphometry table: measured from the label map, FF n/a
    rows5 = read_table(out / "group_muscles.tsv").query("participant_id == 'sub-05'")
    assert len(rows5) == 10 and rows5["ff_median"].isna().all()


def test_nothing_to_do_returns_zero(tmp_path, caplog):
    assert group.run_group(tmp_path) == 0
    assert "nothing to do" in caplog.text
    assert not (tmp_path / "group_muscles.tsv").exists()
    assert group.run_group(tmp_path / "missing") == 0


def test_sessions_are_kept_apart(tmp_path):
    bids, out, results = build_outputs(tmp_path, subjects=1, sessions=("a", "b"))
    write_participant_outputs(results, bids, out, ff_erosion=1)
    assert group.run_group(out) == 0
    wide = read_table(out / "group_muscles_wide.tsv")
    assert list(wide["session_id"]) == ["ses-a", "ses-b"]
    assert set(read_table(out / "group_muscles.tsv")["label"]) == {*VL, *VM, *BFL, *SM, *FEM}


def test_group_level_from_the_command_line(tmp_path):
    from legseg_tf import cli

    bids, out, results = build_outputs(tmp_path, subjects=2)
    write_participant_outputs(results, bids, out, ff_erosion=1)
    assert cli.main([str(bids), str(out), "group"]) == 0
    assert len(read_table(out / "group_muscles_wide.tsv")) == 2
    assert (out / "group.html").exists()
