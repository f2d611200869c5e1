"""Participant outputs: morphometry tables, fat fraction columns and the subject HTML report."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from legseg_tf import demo
from legseg_tf.fatfraction import FF_COLUMNS
from legseg_tf.morphometry import MORPH_COLUMNS
from legseg_tf.reports import plotting, qc
from legseg_tf.derivatives import morph_path
from legseg_tf.reports.participant import write_participant_outputs
from legseg_tf.results import ImageResult, InputImage
from tests.helpers import (
    BFL,
    CARD,
    FEM,
    SM,
    VL,
    VM,
    build_outputs,
    read_table,
    segmenter_report,
    write_models_dir,
)

def images_of(page: str) -> list[bytes]:
    return [
        base64.b64decode(m)
        for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    ]


@pytest.fixture(scope="module")
def done_outputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reports")
    bids, out, results = build_outputs(root)
    written = write_participant_outputs(results, bids, out, ff_erosion=1)
    return bids, out, results, written


def test_tables_have_measures_and_fat_fraction(done_outputs):
    bids, out, results, written = done_outputs
    table_path = out / "sub-01/anat/sub-01_acq-outphase_desc-muscles_morph.tsv"
    assert table_path in written and table_path.with_suffix(".json") in written
    table = read_table(table_path).set_index("label")
    assert list(table.reset_index().columns) == list(MORPH_COLUMNS) + list(FF_COLUMNS)
    labels = results[0].labels_ras
    voxel_ml = np.prod(demo.SPACING_MM) / 1000
    for value in (*VL, *VM, *BFL, *SM, *FEM):
        assert table.loc[value, "voxels"] == (labels == value).sum()
        assert table.loc[value, "volume_ml"] == pytest.approx(
            (labels == value).sum() * voxel_ml, rel=1e-5
        )
    # the phantom's left thigh is larger and fattier (12 % vs 5 % muscle fat fraction)
    assert table.loc[VL[0], "volume_ml"] > table.loc[VL[1], "volume_ml"]
    for left, right in (VL, VM, BFL, SM):
        assert 9.0 < table.loc[left, "ff_median"] < 16.0
        assert 2.0 < table.loc[right, "ff_median"] < 9.0
        assert table.loc[left, "side"] == "L" and table.loc[right, "side"] == "R"
        assert table.loc[left, "centroid_x_mm"] < 0 < table.loc[right, "centroid_x_mm"]
        assert 0 < table.loc[left, "ff_eroded_voxels"] < table.loc[left, "ff_voxels"]
    meta = json.loads(table_path.with_suffix(".json").read_text())
    assert meta["FatFraction"]["Method"] == "dixon"
    assert meta["FatFraction"]["Water"] == "sub-01/anat/sub-01_acq-water_T1w.nii.gz"
    assert meta["FatFraction"]["ErosionVoxels"] == 1
    assert meta["volume_ml"]["Units"] == "ml"


def test_subject_page_content(done_outputs):
    bids, out, results, written = done_outputs
    page_path = out / "sub-01.html"
    assert page_path in written and (out / "sub-02.html").exists()
    page = page_path.read_text()
    present = sorted(int(v) for v in np.unique(results[0].labels_ras) if v)
    legend = sorted(int(v) for v in re.findall(r'class="item" data-label="(\d+)"', page))
    assert legend == present
    assert "Vastus lateralis Left" in page and "segmenter says hello" in page
    missing = re.search(r"missing expected muscles for region UpperLegs: ([A-Z_, ]+)", page)
    assert set(missing.group(1).split(", ")) == {
        f"{stem}_{side}" for stem in ("VI", "RF", "SA", "GR", "ST", "AM") for side in "LR"
    }
    assert "agree (Both)" in page and "legseg-upperleg-test" in page
    assert "http://" not in page and "https://" not in page  # self-contained
    pictures = images_of(page)
    assert len(pictures) >= 3  # mosaic, coronal, positions
    for png in pictures:
        assert mpimg.imread(io.BytesIO(png), format="png").shape[0] > 50


def test_disagreeing_side_check_is_shown(tmp_path):
    bids, out, results = build_outputs(tmp_path, subjects=1)
    results[0].report["side"]["classifier"] = "Left"
    write_participant_outputs(results, bids, out, ff_erosion=0)
    page = (out / "sub-01.html").read_text()
    assert "DISAGREE: classifier Left, geometry Both" in page
    table = read_table(morph_path(results[0].dseg_path))
    # erosion 0: the eroded columns use the same voxels
    np.testing.assert_allclose(table["ff_eroded_mean"], table["ff_mean"])


def test_skipped_images_are_read_back_and_sessions_share_one_page(tmp_path):
    bids, out, results = build_outputs(tmp_path, subjects=1, sessions=("a", "b"), status="skipped")
    assert all(r.labels_ras is None for r in results)
    # this run only knows session b; session a is found on disk
    written = write_participant_outputs(results[1:], bids, out, ff_erosion=1)
    page = (out / "sub-01.html").read_text()
    assert 'id="ses-a"' in page and 'id="ses-b"' in page
    assert "existing label map (not re-segmented)" in page
    for anchor in re.findall(r'href="#([^"]+)"', page):
        assert f'id="{anchor}"' in page
    assert len(re.findall(r'href="#image-', page)) == 2
    for session in ("a", "b"):
        table_path = (
            out
            / f"sub-01/ses-{session}/anat/sub-01_ses-{session}_acq-outphase_desc-muscles_morph.tsv"
        )
        assert table_path in written
        table = read_table(table_path).set_index("label")
        assert table.loc[VL[0], "ff_median"] > table.loc[VL[1], "ff_median"]


def test_low_confidence_from_probability_maps(tmp_path):
    bids, out, results = build_outputs(tmp_path, subjects=1, probabilities=True)
    write_participant_outputs(results, bids, out, ff_erosion=1)
    page = (out / "sub-01.html").read_text()
    assert "low-confidence label VM_L" in page
    assert "low-confidence label VL_L" not in page
    assert re.search(r"low-confidence slices \(mean probability &lt; 0.5\): 3(?!\d)", page)
    per_label, per_slice = qc.label_confidence(results[0].dseg_path, results[0].probseg_path)
    assert per_label[VL[0]] == pytest.approx(0.9 * (1 - 0.6 / demo.SHAPE_XYZ[2]), rel=0.05)
    assert per_slice[3] < 0.5 < per_slice[4]
    # A sidecar of an earlier version: the indices as strings in LabelMap, no LabelIndices.
    sidecar = results[0].probseg_path.with_name(
        results[0].probseg_path.name.replace(".nii.gz", ".json"))
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({"LabelMap": [str(v) for v in meta["LabelIndices"]]}))
    assert qc.label_confidence(results[0].dseg_path, results[0].probseg_path) == (
        per_label, per_slice)


def test_small_and_fragmented_labels_are_warned():
    rows = [
        {
            "label": 55,
            "abbreviation": "VL_L",
            "region": "upper_leg",
            "volume_ml": 0.4,
            "slices": 3,
            "components": 1,
            "largest_component_fraction": 1.0,
        },
        {
            "label": 57,
            "abbreviation": "VI_L",
            "region": "upper_leg",
            "volume_ml": 50.0,
            "slices": 10,
            "components": 3,
            "largest_component_fraction": 0.7,
        },
        {
            "label": 103,
            "abbreviation": "FEM_L",
            "region": "bone",
            "volume_ml": 0.1,
            "slices": 1,
            "components": 1,
            "largest_component_fraction": 1.0,
        },
    ]
    warnings = qc.morphometry_warnings(rows, {})
    assert any(w.startswith("very small label VL_L") for w in warnings)
    assert any(w.startswith("fragmented label VI_L: 3 pieces") for w in warnings)
    assert not any("FEM_L" in w for w in warnings)
    expected = qc.expected_labels({"LowerLegs": [0, 5]}, "Right")
    assert 6 in expected and 5 not in expected and 56 not in expected


def test_views_are_radiological():
    volume = np.zeros((10, 8, 3), dtype=np.float32)
    volume[0:3, 6:8, 1] = 1.0  # patient's left (low RAS x), anterior (high y)
    axial = plotting.axial_view(volume, 1)
    rows, cols = np.nonzero(axial)
    assert cols.min() >= 7 and rows.max() <= 1  # viewer's right, top of the image
    coronal = plotting.coronal_view(volume, 7)
    rows, cols = np.nonzero(coronal)
    assert cols.min() >= 7 and set(rows) == {1}


def test_invalid_erosion_is_rejected(tmp_path):
    with pytest.raises(ValueError):
        write_participant_outputs([], tmp_path, tmp_path, ff_erosion=-1)


def test_demo_dataset_through_the_participant_level(tmp_path, monkeypatch):
    """The demo dataset and the test-only placeholder segmenter, through the command line."""
    from legseg_tf import cli, pipeline
    from tests.fakes import ThresholdPlaceholderSegmenter

    bids, out = tmp_path / "bids", tmp_path / "out"
    demo.write_demo(bids, subjects=1)
    monkeypatch.setattr(
        pipeline, "load_segmenter", lambda config, models_dir: ThresholdPlaceholderSegmenter()
    )
    assert cli.main([str(bids), str(out), "participant", "--skip_bids_validator"]) == 0
    table = read_table(out / "sub-01/anat/sub-01_acq-outphase_desc-muscles_morph.tsv")
    assert set(table["label"]) == {55, 56}
    assert table["ff_median"].between(0, 100).all()
    assert (out / "sub-01.html").exists()


def test_megre_series_gives_two_point_fat_fraction(tiny_dataset, tmp_path, monkeypatch):
    """A MEGRE input: the in-phase/out-of-phase echoes of its series give a two-point estimate."""
    from legseg_tf import cli, pipeline
    from tests.fakes import ThresholdPlaceholderSegmenter

    out = tmp_path / "out"
    monkeypatch.setattr(
        pipeline, "load_segmenter", lambda config, models_dir: ThresholdPlaceholderSegmenter()
    )
    assert (
        cli.main(
            [
                str(tiny_dataset),
                str(out),
                "participant",
                "--skip_bids_validator",
                "--participant_label",
                "02",
            ]
        )
        == 0
    )
    tables = sorted(out.glob("sub-02/anat/*_morph.tsv"))
    assert len(tables) == 1
    table = read_table(tables[0])
    assert table["ff_median"].between(0, 50).all()  # two-point magnitude rule: FF <= 50 %
    meta = json.loads(tables[0].with_suffix(".json").read_text())
    assert meta["FatFraction"]["EchoTimes"] == [0.0023, 0.00345]
    assert "echo-1_part-mag" in meta["FatFraction"]["InPhase"]
    assert "echo-2_part-mag" in meta["FatFraction"]["OutOfPhase"]


@pytest.mark.realdata
def test_qmritools_thigh_labels_measured_with_sides_from_the_affine(tmp_path):
    """QMRITools' own segmentation of its test thighs: odd (Left) labels lie at smaller RAS x."""
    from tests.conftest import shared_file

    labels_path = shared_file("data", "qmritools", "scripts_test_data", "out.nii.gz")
    image_path = shared_file("data", "qmritools", "scripts_test_data", "test.nii.gz")
    bids, out = tmp_path / "bids", tmp_path / "out"
    relpath = "sub-r/anat/sub-r_acq-outphase_T1w.nii.gz"
    (bids / relpath).parent.mkdir(parents=True)
    (bids / relpath).symlink_to(image_path)
    dseg = out / "sub-r/anat/sub-r_acq-outphase_desc-muscles_dseg.nii.gz"
    dseg.parent.mkdir(parents=True)
    dseg.symlink_to(labels_path)
    image = InputImage("r", None, bids / relpath, relpath)
    write_participant_outputs([ImageResult(image, "skipped", dseg)], bids, out, ff_erosion=1)
    table = read_table(morph_path(dseg)).set_index("label")
    assert len(table) == 29 and "ff_median" not in table  # no water/fat images here
    pairs = [v for v in table.index if v % 2 == 1 and v + 1 in table.index and v < 100]
    assert len(pairs) >= 12
    for left in pairs:
        assert table.loc[left, "centroid_x_mm"] < table.loc[left + 1, "centroid_x_mm"]
    # thigh muscles span most of the 31 slices; the large ones are single pieces
    assert table.loc[55, "slices"] >= 25 and table.loc[55, "components"] == 1
    assert 20 < table.loc[55, "max_csa_cm2"] < 80
    page = (out / "sub-r.html").read_text()
    legend = sorted(int(v) for v in re.findall(r'class="item" data-label="(\d+)"', page))
    assert legend == sorted(table.index)


def test_empty_label_map_still_gives_a_table_and_a_page(tmp_path):
    bids, out, results = build_outputs(tmp_path, subjects=1)
    results[0].labels_ras = np.zeros_like(results[0].labels_ras)
    results[0].report["region_ranges"] = {}
    write_participant_outputs(results, bids, out, ff_erosion=1)
    table = read_table(morph_path(results[0].dseg_path))
    assert len(table) == 0 and list(table.columns)[:3] == ["label", "name", "abbreviation"]
    page = (out / "sub-01.html").read_text()
    assert 'class="legend"></div>' in page and len(images_of(page)) >= 2


def test_failed_images_are_listed(tmp_path):
    bids, out, results = build_outputs(tmp_path, subjects=1)
    broken = ImageResult(
        InputImage("01", None, bids / "x.nii.gz", "sub-01/anat/sub-01_acq-x_T1w.nii.gz"),
        "failed",
        error="RuntimeError: simulated network failure",
    )
    write_participant_outputs([*results, broken], bids, out, ff_erosion=1)
    page = (out / "sub-01.html").read_text()
    assert "Failed images" in page and "simulated network failure" in page
    assert "sub-01_acq-outphase_T1w.nii.gz" in page


def test_segmenter_report_kept_in_the_sidecar_is_shown_for_skipped_images(tmp_path):
    bids, out, results = build_outputs(tmp_path, subjects=1, status="skipped")
    sidecar = json.loads(results[0].sidecar_path.read_text())
    sidecar["legseg"]["report"] = segmenter_report(classifier_side="Right")
    results[0].sidecar_path.write_text(json.dumps(sidecar))
    write_participant_outputs(results, bids, out, ff_erosion=1)
    page = (out / "sub-01.html").read_text()
    assert "DISAGREE: classifier Right, geometry Both" in page
    assert "segmenter says hello" in page and "per-slice body positions" in page


def test_importing_the_figures_module_leaves_the_environment_alone(tmp_path):
    """Importing ``reports.plotting`` changes no environment variable and does not load
    matplotlib; the first figure gets a writable matplotlib config dir even where HOME has
    none (a container's missing or read-only home)."""
    import os
    import subprocess
    import sys

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {key: value for key, value in os.environ.items()
           if key not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME")}
    env.update(HOME=str(tmp_path / "no-home"), TMPDIR=str(scratch),
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    code = (
        "import os, sys\n"
        "before = dict(os.environ)\n"
        "from legseg_tf.reports import plotting\n"
        "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())\n"
        "assert 'matplotlib' not in sys.modules\n"
        "png = plotting.confidence_figure({0: 0.9, 1: 0.4}, 2, 0.6)\n"
        "assert png.startswith(b'\\x89PNG')\n"
        "print(os.environ['MPLCONFIGDIR'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    folder = Path(done.stdout.strip().splitlines()[-1])
    assert folder.parent == scratch and folder.is_dir()


# ------------------------------------------------------------------ issue 12: reports a researcher can check


def test_outlines_mark_each_labels_rim_only():
    labels = np.zeros((10, 10), dtype=np.uint16)
    labels[2:8, 2:8] = 55
    labels[4:6, 5:8] = 57  # a second label reaching the first one's right edge
    rim = plotting.outline_mask(labels)
    assert not rim[labels == 0].any()
    assert rim[2, 2:8].all() and rim[7, 2:8].all() and rim[2:8, 2].all()
    assert not rim[3, 3] and not rim[6, 3]  # the interior stays clear
    assert rim[4, 5] and rim[4, 4]  # both labels are outlined where they touch
    image = np.linspace(0, 1, 100).reshape(10, 10)
    panel = plotting.render_panel(image, labels, (0.0, 1.0), (3, 2), "outline")
    assert panel.shape == (30, 20, 3) and panel.dtype == np.uint8
    grey = plotting.render_panel(image, None, (0.0, 1.0), (3, 2), None)
    inside = (slice(3 * 3 + 1, 3 * 3 + 2), slice(2 * 3 + 1, 2 * 3 + 2))  # voxel (3, 3)
    np.testing.assert_array_equal(panel[inside], grey[inside])  # image visible inside
    assert tuple(panel[0 + 6, 2 * 2]) == labels_module_rgb(55)  # voxel (2, 2): the rim
    filled = plotting.render_panel(image, labels, (0.0, 1.0), (3, 2), "filled")
    assert not np.array_equal(filled[inside], grey[inside])


def labels_module_rgb(index):
    from legseg_tf.labels import report_rgb

    return report_rgb(index)


def test_detail_figures_are_large_enough_for_a_voxel_boundary():
    """A 1.5 mm grid: the representative-slice pair draws each voxel as >= 3 x 3 pixels, both
    panels side by side; reformats need enough slices."""
    volume = np.random.default_rng(0).uniform(50, 100, (200, 150, 12)).astype(np.float32)
    labels = np.zeros(volume.shape, dtype=np.uint16)
    labels[20:90, 30:120, :] = 55
    labels[110:180, 30:120, :] = 56
    zooms = (1.5, 1.5, 6.0)
    png = plotting.axial_pair(volume, labels, zooms, 5)
    width, height = (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big"))
    crop = plotting.in_plane_box(volume, labels, 0)
    nx = len(range(200)[crop[0]])
    assert width >= 2 * nx * 3 and height >= len(range(150)[crop[1]]) * 3
    assert plotting.repeats_for((1.5, 1.5), plotting.DETAIL_MIN_PX_PER_MM) == (3, 3)
    assert plotting.representative_slices(labels) == [1, 4, 7, 10]
    assert plotting.reformat_possible(labels.shape)
    assert not plotting.reformat_possible((200, 150, plotting.MIN_REFORMAT_SLICES - 1))
    assert [side for side, _ in plotting.sagittal_columns(labels)] == ["R", "L"]
    sagittal, columns = plotting.sagittal_figure(volume, labels, zooms)
    assert sagittal.startswith(b"\x89PNG") and columns[0][1] > columns[1][1]
    coronal, _ = plotting.coronal_figure(volume, labels, zooms, "filled")
    assert coronal.startswith(b"\x89PNG")
    vertical = plotting.sagittal_view(np.arange(24).reshape(2, 3, 4), 1)
    assert vertical.shape == (4, 3) and vertical[0, 0] == 12 + 2 * 4 + 3  # top: superior, left: A


def test_figures_outlines_filled_variant_and_reformats(done_outputs):
    bids, out, results, written = done_outputs
    page = (out / "sub-01.html").read_text()
    outlines = re.findall(r'<img class="figure" alt="axial slice (\d+) [^"]*label outlines" '
                          r'data-overlay="outline"', page)
    assert len(outlines) == 4
    assert page.count('data-overlay="filled"') == 4
    filled_box = page[page.index('<details class="filled">'):]
    assert filled_box.index('data-overlay="filled"') < filled_box.index("</details>")
    for view in ("mosaic", "coronal", "sagittal"):
        assert f'data-overlay="outline" data-view="{view}"' in page
    # click to enlarge: each figure links to its own box, which "close" leaves
    for box in re.findall(r'<a class="zoom-open" href="#([^"]+)"', page):
        assert f'<div class="zoom" id="{box}">' in page
    assert len(re.findall(r'class="zoom-open"', page)) == 4 + 4 + 3


def test_short_stacks_get_no_reformat():
    from types import SimpleNamespace

    from legseg_tf.reports.participant import reformat_figures

    labels = np.zeros((20, 20, 3), dtype=np.uint16)
    labels[5:15, 5:15] = 55
    summary = SimpleNamespace(result=SimpleNamespace(image=SimpleNamespace(relpath="x.nii.gz")),
                              labels_ras=labels, zooms_mm=(1.0, 1.0, 6.0))
    html_text = "".join(reformat_figures(summary, np.ones(labels.shape, np.float32), "a"))
    assert "Not shown: the stack has 3 axial slice(s)" in html_text and "<img" not in html_text


def test_side_verdict_device_and_links(tmp_path):
    bids, out, results = build_outputs(tmp_path, subjects=1)
    (out / "dseg.tsv").write_text("index\tname\n")
    sidecar = json.loads(results[0].sidecar_path.read_text())
    sidecar["legseg"]["device"] = {"device": "gpu", "gpus": ["/physical_device:GPU:0"],
                                   "intra_op_threads": 4, "tensorflow": "2.99"}
    results[0].sidecar_path.write_text(json.dumps(sidecar))
    results[0].report["device"] = "auto"  # what was asked, not what was used
    write_participant_outputs(results, bids, out, ff_erosion=1)
    page = (out / "sub-01.html").read_text()
    assert re.search(r'<p class="verdict">both legs, decided by classifier\+geometry; '
                     r"classifier and geometry: agree \(Both\)</p>"
                     r'<details class="side-details">', page)
    assert "GPU, /physical_device:GPU:0, 4 intra-op thread(s), TensorFlow 2.99" in page
    assert ">auto<" not in page and "device: auto" not in page
    for target in ("sub-01/anat/sub-01_acq-outphase_desc-muscles_dseg.nii.gz",
                   "sub-01/anat/sub-01_acq-outphase_desc-muscles_dseg.json",
                   "sub-01/anat/sub-01_acq-outphase_desc-muscles_morph.tsv",
                   "sub-01/anat/sub-01_acq-outphase_desc-muscles_morph.json", "dseg.tsv"):
        assert f'<a href="{target}">' in page and (out / target).exists()
    # the device is not recorded: say so rather than echo the request
    del sidecar["legseg"]["device"]
    results[0].sidecar_path.write_text(json.dumps(sidecar))
    write_participant_outputs(results, bids, out, ff_erosion=1)
    assert "not recorded (requested: auto)" in (out / "sub-01.html").read_text()


def test_disagreement_is_the_verdict(tmp_path):
    bids, out, results = build_outputs(tmp_path, subjects=1)
    results[0].report["side"]["classifier"] = "Right"
    write_participant_outputs(results, bids, out, ff_erosion=0)
    page = (out / "sub-01.html").read_text()
    assert re.search(r'<p class="verdict disagree">[^<]*DISAGREE: classifier Right, geometry '
                     r"Both</p>", page)


def test_model_box_and_no_warning_for_labels_a_model_never_produces(tmp_path):
    bids, out, results = build_outputs(tmp_path, subjects=1)
    models = write_models_dir(tmp_path / "models", [
        {"id": "legseg-upperleg-test", "role": "upper_leg", "label_table": "N5_UpperLeg",
         "provenance": {"card": "cards/upper.md", "never_predicted": ["GR", "Satorius"]}},
    ], {"cards/upper.md": CARD})
    write_participant_outputs(results, bids, out, ff_erosion=1, models_dir=models)
    page = (out / "sub-01.html").read_text()
    box = re.search(r'<div class="model-box" data-model="legseg-upperleg-test">(.*?)</div>',
                    page, re.S).group(1)
    assert "Two people, both thighs" in box
    assert "Leave-one-subject-out" in box and "Expect a mean Dice of about 0.4" in box
    assert 'data-labels="47 48 63 64"' in box and "Gracilis (GR), Sartorius (SA)" in box
    assert "A small network trained on a CPU." in box
    missing = re.search(r"missing expected muscles for region UpperLegs: ([A-Z_, ]+)", page)
    assert set(missing.group(1).split(", ")) == {
        f"{stem}_{side}" for stem in ("VI", "RF", "ST", "AM") for side in "LR"}
    # the box comes after the QC box and before the images
    assert page.index('id="qc-flags"') < page.index('id="models"') < page.index('id="ses-none"')


def test_model_box_says_when_there_is_no_card(done_outputs):
    bids, out, results, written = done_outputs
    page = (out / "sub-01.html").read_text()
    assert '<div class="model-box" data-model="legseg-upperleg-test">' in page
    assert "no models folder known to this report" in page
    assert "GR_L" in page  # without a card, nothing is known absent: the warning stays


def test_english_names_in_tables_and_pages(done_outputs):
    from legseg_tf import morphometry

    bids, out, results, written = done_outputs
    assert morphometry.identify(63).name == "Sartorius Left"
    assert morphometry.identify(63).muscle == "Sartorius"
    assert morphometry.identify(151).name == "Subcutaneous fat"
    labels = results[0].labels_ras.copy()
    labels[labels == 55] = 63
    rows = morphometry.label_morphometry(labels, np.eye(4))
    assert "Sartorius Left" in {row["name"] for row in rows}
    from legseg_tf.reports import html

    legend = html.legend([63, 151])
    assert "SA_L Sartorius Left" in legend and "SCF Subcutaneous fat" in legend
    assert "Satorius" not in legend


def test_group_report_pairs_left_and_right(tmp_path):
    from legseg_tf import group

    bids, out, results = build_outputs(tmp_path, subjects=2)
    write_participant_outputs(results, bids, out, ff_erosion=0)
    # an earlier version's table with the QMRITools spelling is shown in English
    table = out / "sub-02/anat/sub-02_acq-outphase_desc-muscles_morph.tsv"
    text = table.read_text()
    assert "Biceps femoris long head" in text
    table.write_text(text.replace("Biceps femoris long head", "Biceps femoris long"))
    assert group.run_group(out) == 0
    gathered = read_table(out / "group_muscles.tsv")
    assert set(gathered.loc[gathered["label"] == 31, "muscle"]) == {"Biceps femoris long head"}
    page = (out / "group.html").read_text()
    summary = page[page.index('<table class="summary">'):]
    summary = summary[:summary.index("</table>")]
    head = re.findall(r"<th[^>]*>([^<]*)</th>", summary)
    assert head[:4] == ["muscle", "abbreviation", "images left", "images right"]
    assert head.index("volume (ml) right") == head.index("volume (ml) left") + 1
    assert "volume asymmetry (%)" in head
    rows = re.findall(r'<tr><td class="text">([^<]*)</td><td class="text">([^<]*)</td>',
                      summary)
    assert rows == [("Biceps femoris long head", "BFL"), ("Semimembranosus", "SM"),
                    ("Vastus lateralis", "VL"), ("Vastus medialis", "VM")]


# ------------------------------------------------------------------ issue 15: faster reports, same pixels


def _panel_on_enlarged_arrays(image2d, labels2d, window, repeats, mode):
    """The straightforward drawing that render_panel's per-voxel computation must match:
    enlarge image and labels, colour, blend, then outline on the enlarged labels."""
    rr, rc = repeats
    grey = plotting.grey_levels(image2d, *window)
    rgb = np.repeat(np.repeat(grey, rr, axis=0), rc, axis=1)[..., None].repeat(3, axis=2)
    if mode is None:
        return rgb
    labels = np.repeat(np.repeat(labels2d, rr, axis=0), rc, axis=1)
    colours = plotting.label_colours(labels)
    if mode == "filled":
        inside = labels > 0
        blended = ((1 - plotting.OVERLAY_ALPHA) * rgb[inside]
                   + plotting.OVERLAY_ALPHA * colours[inside])
        rgb[inside] = np.round(blended).astype(np.uint8)
    edge = plotting.outline_mask(labels, width=2 if min(rr, rc) >= 4 else 1)
    rgb[edge] = colours[edge]
    return rgb


def test_render_panel_gives_the_pixels_of_drawing_on_the_enlarged_arrays():
    rng = np.random.default_rng(15)
    for trial in range(120):
        rows, cols = (int(n) for n in rng.integers(1, 14, 2))
        labels = rng.choice([0, 0, 0, 11, 12, 55, 57, 300], size=(rows, cols)).astype(np.uint16)
        if trial % 2:  # blobs rather than noise
            labels = np.kron(labels, np.ones((3, 3), np.uint16))[:rows, :cols]
        image = rng.normal(size=labels.shape)
        image[0, 0] = np.nan
        repeats = tuple(int(r) for r in rng.integers(1, 7, 2))
        view = (slice(None, None, -1), slice(None, None, -1))  # views as the figures pass
        for mode in ("outline", "filled", None):
            drawn = plotting.render_panel(image[view], labels[view], (-1.0, 1.0), repeats, mode)
            expected = _panel_on_enlarged_arrays(image[view], labels[view], (-1.0, 1.0),
                                                 repeats, mode)
            assert drawn.dtype == np.uint8 and drawn.shape == expected.shape
            np.testing.assert_array_equal(drawn, expected, err_msg=f"{repeats} {mode}")


def test_label_colours_of_unknown_negative_and_non_integer_values():
    lut = plotting._palette()
    for values in (np.arange(-3, lut.shape[0] + 40).reshape(1, -1),
                   np.arange(0, 65000, 13, dtype=np.uint16), np.arange(256, dtype=np.uint8),
                   np.array([0.0, 1.7, 55.2]), np.array(55), np.zeros((0, 3), np.int32)):
        wide = np.asarray(values).astype(np.int64)
        expected = lut[np.clip(wide, 0, lut.shape[0] - 1)]
        expected[wide >= lut.shape[0]] = plotting.UNKNOWN_RGB
        np.testing.assert_array_equal(plotting.label_colours(values), expected)
        assert plotting.label_colours(values).shape == wide.shape + (3,)


def test_png_bytes_decode_to_the_same_pixels():
    from PIL import Image

    rng = np.random.default_rng(3)
    for shape in ((1, 1, 3), (7, 5, 3), (64, 33, 3)):
        rgb = rng.integers(0, 256, shape).astype(np.uint8)
        rgb = np.repeat(rgb, 3, axis=0)[:, ::-1]  # repeated rows, a non-contiguous view
        decoded = Image.open(io.BytesIO(plotting.png_bytes(rgb)))
        assert decoded.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(decoded), rgb)
    with pytest.raises(ValueError):
        plotting.png_bytes(np.zeros((4, 4), np.uint8))


def _figure_texts(rng, width, height, count):
    texts = []
    for _ in range(count):
        x = float(rng.integers(0, width)) + rng.choice([0.0, 0.5])
        y = float(rng.integers(10, height - 10)) + rng.choice([0.0, 0.5])
        text = rng.choice(["R", "L", "A", "P", "S", "I", "slice 12: image",
                           "sagittal, right leg, x index 130", "slice 7: labels (filled)"])
        ha, va = rng.choice(["left", "center", "right"]), rng.choice(["top", "center",
                                                                        "bottom"])
        style = plotting._LETTER_STYLE if len(text) == 1 else plotting._TITLE_STYLE
        texts.append(plotting._Text(x, y, str(text), str(ha), str(va), style))
    return texts


def test_cached_text_layer_gives_matplotlibs_pixels():
    """Letters and titles drawn once and pasted: the same pixels as matplotlib drawing every
    text of the figure, whatever the anchors' fractions and however often they repeat; texts
    whose boxes meet are left to matplotlib."""
    plotting._TEXT_CACHE.clear()
    rng = np.random.default_rng(7)
    cached = 0
    for trial in range(12):
        width, height = int(rng.integers(60, 700)), int(rng.integers(40, 300))
        texts = _figure_texts(rng, width, height, int(rng.integers(1, 6)))
        for _ in range(2):  # drawn, then from the cache
            layer = plotting._cached_text_layer(texts, width, height)
            if layer is not None:
                cached += 1
                np.testing.assert_array_equal(layer, plotting.text_layer(texts, width, height),
                                              err_msg=str(texts))
    assert cached >= 12
    # two texts on one another: not pasted
    both = [plotting._Text(20.5, 20.0, "slice 1: image", "left", "bottom",
                           plotting._TITLE_STYLE),
            plotting._Text(30.0, 18.0, "A", "center", "bottom", plotting._LETTER_STYLE)]
    assert plotting._cached_text_layer(both, 200, 60) is None


def test_composed_figures_match_drawing_all_text_with_matplotlib():
    plotting._TEXT_CACHE.clear()
    rng = np.random.default_rng(11)
    for columns, sizes in ((None, [(40, 61), (40, 61)]), (3, [(25, 30)] * 7),
                           (2, [(33, 150), (20, 151), (33, 20)])):
        panels = [plotting.Panel(rng.integers(0, 256, size + (3,)).astype(np.uint8),
                                 f"sagittal, x index {n}", ("R", "L", "S", "I"))
                  for n, size in enumerate(sizes)]
        for _ in range(2):
            drawn = np.asarray(Image_open(plotting.compose(panels, columns)))
            texts, places, width, height = _compose_layout(panels, columns)
            expected = plotting.text_layer(texts, width, height)
            for panel, (x0, y0, w, h) in zip(panels, places):
                expected[y0:y0 + h, x0:x0 + w] = panel.rgb
            np.testing.assert_array_equal(drawn, expected)


def Image_open(png: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(png))


def _compose_layout(panels, columns):
    """compose's grid and texts, written out independently."""
    import math

    columns = max(1, min(columns or len(panels), len(panels)))
    m = plotting._MARGIN
    cell_w = max(p.rgb.shape[1] for p in panels) + m["left"] + m["right"]
    cell_h = max(p.rgb.shape[0] for p in panels) + m["top"] + m["bottom"]
    places, texts = [], []
    for n, p in enumerate(panels):
        y0, x0 = (n // columns) * cell_h + m["top"], (n % columns) * cell_w + m["left"]
        h, w = p.rgb.shape[:2]
        places.append((x0, y0, w, h))
        left, right, top, bottom = p.letters
        letter, title = plotting._LETTER_STYLE, plotting._TITLE_STYLE
        texts += [plotting._Text(x0 - 3, y0 + h / 2, left, "right", "center", letter),
                  plotting._Text(x0 + w + 3, y0 + h / 2, right, "left", "center", letter),
                  plotting._Text(x0 + w / 2, y0 - 2, top, "center", "bottom", letter),
                  plotting._Text(x0 + w / 2, y0 + h + 1, bottom, "center", "top", letter),
                  plotting._Text(x0, y0 - 2, p.title, "left", "bottom", title)]
    return texts, places, columns * cell_w, math.ceil(len(panels) / columns) * cell_h


def test_reformat_positions_are_the_mean_voxel_coordinates():
    """sagittal_columns and the coronal y index from per-index counts: the same integers as
    the means of the voxels' coordinates."""
    from legseg_tf.labels import BY_INDEX

    right = [v for v, e in BY_INDEX.items() if e.side == "R"]
    left = [v for v, e in BY_INDEX.items() if e.side == "L"]
    plain = [v for v, e in BY_INDEX.items() if not e.side]
    rng = np.random.default_rng(5)
    for trial in range(40):
        choices = [0] * 6 + right[:3] + left[:2] + plain[:2] + [max(BY_INDEX) + 40]
        if trial % 3 == 0:
            choices = [0] * 6 + plain[:2]  # no side: the labels' centroid
        labels = rng.choice(choices, size=tuple(rng.integers(1, 9, 3))).astype(np.uint16)
        expected = []
        for side, values in (("R", right), ("L", left)):
            xs = np.nonzero(np.isin(labels, values))[0]
            if xs.size:
                expected.append((side, int(round(xs.mean()))))
        if not expected and (labels > 0).any():
            expected.append(("", int(round(np.nonzero(labels > 0)[0].mean()))))
        assert plotting.sagittal_columns(labels) == expected
        assert plotting.sagittal_columns(labels.astype(np.float32)) == expected
        assert plotting.sagittal_columns(labels.astype(np.int32)) == expected
        occupied = np.argwhere(labels > 0)
        centre = plotting._mean_index(np.count_nonzero(labels > 0, axis=(0, 2)))
        if occupied.size:
            assert centre == occupied[:, 1].mean()
        else:
            assert centre is None


def _nested_labels_phantom(seed, shape, outer, inner):
    """A noisy (x, y, z) volume with label 57 (box ``inner``) inside label 55 (``outer``)."""
    volume = np.random.default_rng(seed).normal(100, 20, shape).astype(np.float32)
    labels = np.zeros(shape, np.uint16)
    labels[outer] = 55
    labels[inner] = 57
    return volume, labels


def test_window_and_box_given_or_computed_draw_the_same_figures():
    volume, labels = _nested_labels_phantom(9, (30, 26, 9), np.s_[5:20, 6:18, 1:8],
                                            np.s_[8:12, 8:12, 2:6])
    window, box = plotting.window_and_box(volume, labels)
    zooms = (1.5, 1.5, 4.0)
    assert (plotting.coronal_figure(volume, labels, zooms)
            == plotting.coronal_figure(volume, labels, zooms, window=window, box=box))
    assert (plotting.sagittal_figure(volume, labels, zooms)
            == plotting.sagittal_figure(volume, labels, zooms, window=window, box=box))
    assert (plotting.axial_mosaic(volume, labels, zooms, [1, 3, 5])
            == plotting.axial_mosaic(volume, labels, zooms, [1, 3, 5], window=window,
                                     box=box))


def test_axial_pairs_drawn_together_equal_each_pair_drawn_alone():
    volume, labels = _nested_labels_phantom(21, (28, 24, 7), np.s_[4:20, 5:18, 1:6],
                                            np.s_[6:10, 7:11, 2:5])
    zooms = (1.5, 1.5, 5.0)
    plotting._TEXT_CACHE.clear()
    together = plotting.axial_pairs(volume, labels, zooms, [1, 3, 5])
    assert sorted(together) == [(k, m) for k in (1, 3, 5) for m in ("filled", "outline")]
    plotting._TEXT_CACHE.clear()
    for (k, mode), png in together.items():
        assert png == plotting.axial_pair(volume, labels, zooms, k, mode)
