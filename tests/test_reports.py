"""Participant outputs: morphometry tables, fat fraction columns and the subject HTML report."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from legseg_tf import demo, nifti_io
from legseg_tf.fatfraction import FF_COLUMNS
from legseg_tf.morphometry import MORPH_COLUMNS
from legseg_tf.reports import plotting, qc
from legseg_tf.reports.participant import morph_path, write_participant_outputs
from legseg_tf.results import ImageResult, InputImage

# Muscles_leg values used by the phantom label map.
VL, VM, BFL, SM, FEM = (55, 56), (59, 60), (31, 32), (35, 36), (103, 104)


def phantom_labels(tissue: np.ndarray) -> np.ndarray:
    """Label map of the demo phantom (x, y, z RAS): four muscle sectors and the femur per thigh.

    The patient's left thigh lies at low canonical x. Anterior-lateral muscle = VL,
    anterior-medial = VM, posterior-lateral = BFL, posterior-medial = SM; fat lines unlabelled.
    """
    labels = np.zeros(tissue.shape, dtype=np.uint16)
    nx = tissue.shape[0]
    x = np.arange(nx)[:, None, None]
    y = np.arange(tissue.shape[1])[None, :, None]
    for side, half in ((0, x < nx // 2), (1, x >= nx // 2)):
        muscle = (tissue == 2) & half
        cx, cy = np.nonzero(muscle)[0].mean(), np.nonzero(muscle)[1].mean()
        lateral = (x < cx) if side == 0 else (x >= cx)
        anterior = y >= cy
        labels[muscle & anterior & lateral] = VL[side]
        labels[muscle & anterior & ~lateral] = VM[side]
        labels[muscle & ~anterior & lateral] = BFL[side]
        labels[muscle & ~anterior & ~lateral] = SM[side]
        labels[np.isin(tissue, (4, 5)) & half] = FEM[side]
    return labels


def segmenter_report(classifier_side: str = "Both") -> dict:
    """A segmenter report shaped like the one of the QMRITools-style segmenter."""
    n = demo.SHAPE_XYZ[2]
    return {
        "side": {
            "decision": "Both",
            "source": "classifier+geometry",
            "classifier": classifier_side,
            "geometry": {"two_legs": True, "single_side": None, "confident": True},
            "midline": "image centre",
        },
        "positions": {
            "side": "Both",
            "side_votes": {"Both": n},
            "slices": list(range(n)),
            "raw_positions": ["Knee"] * 3 + ["Upper"] * (n - 3),
            "fitted_positions": ["Knee"] * 2 + ["Upper"] * (n - 2),
            "ranges": {"UpperLegs": [0, n - 1]},
        },
        "region_ranges": {"UpperLegs": [0, n - 1]},
        "split": {"cut_column": 80},
        "warnings": ["segmenter says hello"],
        "timings_s": {"mask": 0.1, "classify": 0.2, "networks": 1.5},
        "device": "cpu",
    }


def build_outputs(
    root: Path,
    subjects: int = 2,
    sessions: tuple[str | None, ...] = (None,),
    status: str = "done",
    probabilities: bool = False,
) -> tuple[Path, Path, list[ImageResult]]:
    """Demo BIDS dataset + label maps written as the participant level would; the results."""
    bids, out = root / "bids", root / "out"
    demo.write_demo(bids, subjects=subjects)
    results = []
    for index in range(1, subjects + 1):
        subject = f"{index:02d}"
        volumes = demo.phantom(index)
        for session in sessions:
            anat_rel = f"sub-{subject}/" + (f"ses-{session}/" if session else "") + "anat"
            prefix = f"sub-{subject}" + (f"_ses-{session}" if session else "")
            if session:  # move the demo images into the session folder
                for name in ("outphase", "water", "fat"):
                    src = bids / f"sub-{subject}/anat/sub-{subject}_acq-{name}_T1w.nii.gz"
                    dst = bids / anat_rel / f"{prefix}_acq-{name}_T1w.nii.gz"
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    dst.write_bytes(src.read_bytes())
            relpath = f"{anat_rel}/{prefix}_acq-outphase_T1w.nii.gz"
            image = InputImage(
                subject,
                session,
                bids / relpath,
                relpath,
                entities={"subject": subject, "acquisition": "outphase"},
            )
            labels = phantom_labels(volumes["tissue"])
            volume, geometry = nifti_io.load_canonical(image.path)
            dseg = out / anat_rel / f"{prefix}_acq-outphase_desc-muscles_dseg.nii.gz"
            nifti_io.save_labels(labels, geometry, dseg)
            sidecar = dseg.with_name(dseg.name.replace(".nii.gz", ".json"))
            sidecar.write_text(
                json.dumps(
                    {
                        "Sources": [f"bids:raw:{relpath}"],
                        "Models": [
                            {
                                "id": "legseg-upperleg-test",
                                "role": "upper_leg",
                                "sha256": "ab" * 32,
                            }
                        ],
                        "legseg": {
                            "software": {"legseg": "0.0.test"},
                            "timings_s": {"total": 2.0},
                        },
                    }
                )
            )
            probseg = None
            if probabilities:
                probseg = write_probseg(dseg, labels, geometry)
            if status == "done":
                results.append(
                    ImageResult(
                        image,
                        "done",
                        dseg,
                        sidecar,
                        labels,
                        volume,
                        geometry.ras_affine,
                        geometry.zooms_ras,
                        segmenter_report(),
                        [{"id": "legseg-upperleg-test", "role": "upper_leg", "sha256": "ab" * 32}],
                        probseg,
                    )
                )
            else:
                results.append(ImageResult(image, "skipped", dseg, sidecar, probseg_path=probseg))
        for name in ("outphase", "water", "fat"):
            if sessions != (None,):
                (bids / f"sub-{subject}/anat/sub-{subject}_acq-{name}_T1w.nii.gz").unlink()
                (bids / f"sub-{subject}/anat/sub-{subject}_acq-{name}_T1w.json").unlink()
    return bids, out, results


def write_probseg(dseg: Path, labels: np.ndarray, geometry) -> Path:
    """A probability map: 0.9 for the assigned label except 0.3 for VM_L and on slice 3."""
    label_map = [0] + sorted(int(v) for v in np.unique(labels) if v)
    probabilities = np.zeros(labels.shape + (len(label_map),), dtype=np.float32)
    for channel, value in enumerate(label_map):
        probabilities[..., channel][labels == value] = 0.3 if value == VM[0] else 0.9
    probabilities[:, :, 3, :] *= 0.4
    path = dseg.with_name(dseg.name.replace("_dseg.nii.gz", "_probseg.nii.gz"))
    image = nib.Nifti1Image(nifti_io.from_ras(probabilities, geometry), geometry.affine)
    nib.save(image, str(path))
    path.with_name(path.name.replace(".nii.gz", ".json")).write_text(
        json.dumps({"LabelMap": [str(v) for v in label_map]})
    )
    return path


def read_table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)


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
