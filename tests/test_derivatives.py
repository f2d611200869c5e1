"""Derivative names, dataset_description, sidecars, lookup tables, concurrent writers."""
from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from legseg_tf import __version__, derivatives
from legseg_tf.results import InputImage


def _image(relpath: str) -> InputImage:
    return InputImage(subject="01", session=None, path=Path("/data") / relpath, relpath=relpath)


@pytest.mark.parametrize("relpath,expected", [
    ("sub-01/anat/sub-01_acq-outphase_T1w.nii.gz", "sub-01/anat/sub-01_acq-outphase_desc-muscles_dseg.nii.gz"),
    ("sub-01/ses-2/anat/sub-01_ses-2_echo-2_part-mag_MEGRE.nii.gz",
     "sub-01/ses-2/anat/sub-01_ses-2_echo-2_part-mag_desc-muscles_dseg.nii.gz"),
    ("sub-01/anat/sub-01_acq-outphase_run-1_T1w.nii", "sub-01/anat/sub-01_acq-outphase_run-1_desc-muscles_dseg.nii.gz"),
])
def test_dseg_names_keep_source_entities(tmp_path, relpath, expected):
    assert derivatives.dseg_path(tmp_path, _image(relpath)) == tmp_path / expected
    sidecar = derivatives.sidecar_path(tmp_path / expected)
    assert sidecar.name == Path(expected).name.replace(".nii.gz", ".json")


def test_sidecar_contents():
    image = _image("sub-01/anat/sub-01_acq-outphase_T1w.nii.gz")
    models = [{"id": "m", "role": "upper_leg", "sha256": "ab" * 32}]
    sidecar = derivatives.dseg_sidecar(image, models, {"legseg": {"device": "cpu"}})
    assert sidecar["Sources"] == ["bids:raw:sub-01/anat/sub-01_acq-outphase_T1w.nii.gz"]
    assert sidecar["SpatialReference"] == sidecar["Sources"][0]
    assert sidecar["Models"] == models and sidecar["legseg"]["device"] == "cpu"
    assert sidecar["Manual"] is False


def test_dataset_description_fields(tmp_path, monkeypatch):
    monkeypatch.setenv("APPTAINER_CONTAINER", "/images/legseg.sif")
    fake_root = tmp_path / "root"
    (fake_root / ".singularity.d").mkdir(parents=True)
    monkeypatch.setattr(derivatives, "FILESYSTEM_ROOT", fake_root)
    source = tmp_path / "bids"
    source.mkdir()
    (source / "dataset_description.json").write_text(json.dumps(
        {"Name": "raw", "DatasetDOI": "10.18112/openneuro.ds000001.v1.0.0", "License": "CC-BY-4.0"}))
    description = derivatives.dataset_description(source)
    assert description["DatasetType"] == "derivative"
    assert description["License"] == "CC-BY-4.0"  # the raw data's licence travels with them
    generated = description["GeneratedBy"][0]
    assert generated["Name"] == "legseg" and generated["Version"] == __version__
    assert generated["Container"] == {"Type": "singularity", "URI": "/images/legseg.sif"}
    # BIDS: SourceDatasets objects hold URL, DOI (a doi: URI) and Version, nothing else; the URL
    # is the BIDS URI of the raw dataset, which DatasetLinks resolves (as the sidecars' Sources)
    assert description["SourceDatasets"] == [{"URL": "bids:raw:",
                                              "DOI": "doi:10.18112/openneuro.ds000001.v1.0.0",
                                              "Version": "1.0.0"}]
    assert description["DatasetLinks"] == {"raw": source.resolve().as_uri()}
    assert len(description["Authors"]) >= 2  # BIDS: one entry per contributor


def test_dataset_description_without_raw_licence_or_doi(tmp_path, monkeypatch):
    monkeypatch.setattr(derivatives, "container_info", lambda: None)
    (tmp_path / "dataset_description.json").write_text(json.dumps({"Name": "raw", "BIDSVersion": "1.10.0"}))
    description = derivatives.dataset_description(tmp_path)
    assert "License" not in description
    assert "Container" not in description["GeneratedBy"][0]
    assert description["SourceDatasets"] == [{"URL": "bids:raw:"}]


@pytest.mark.parametrize("output, link", [
    ("bids/derivatives/legseg", "../.."),  # the BIDS layout: relative, survives moving the dataset
    ("elsewhere/out", None),               # unrelated folders: BIDS_DIR's file:// URI
    ("bids", None),                        # (refused by the CLI; no "." link either way)
])
def test_raw_dataset_link_is_relative_for_nested_derivatives(tmp_path, output, link):
    bids = tmp_path / "bids"
    bids.mkdir()
    description = derivatives.dataset_description(bids, tmp_path / output)
    assert description["DatasetLinks"] == {"raw": link or bids.resolve().as_uri()}
    if link:
        assert ((tmp_path / output) / link).resolve() == bids.resolve()


def test_readme_names_the_source_dataset_and_the_files(tmp_path):
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "Thigh study", "BIDSVersion": "1.10.0"}))
    out = tmp_path / "out"
    out.mkdir()
    derivatives.ensure_dataset_files(out, bids)
    readme = (out / "README.md").read_text()
    assert '"Thigh study"' in readme and __version__ in readme
    for name in ("dseg.tsv", "dseg.json", *derivatives.VIEWER_TABLES, "_desc-muscles_dseg.nii.gz"):
        assert name in readme, name


@pytest.mark.parametrize("environ,markers,expected", [
    # a Docker marker alone (e.g. a development machine that is a container) is no legseg image
    ({}, [".dockerenv"], None),
    ({"LEGSEG_DOCKER_TAG": "legseg:1-cpu"}, [], None),  # the variable left in a host shell
    ({"LEGSEG_DOCKER_TAG": "legseg:1-cpu"}, [".dockerenv"], {"Type": "docker", "Tag": "legseg:1-cpu"}),
    ({"LEGSEG_DOCKER_TAG": "legseg:1-cpu"}, ["run/.containerenv"], {"Type": "docker", "Tag": "legseg:1-cpu"}),
    ({"APPTAINER_CONTAINER": "/i/l.sif"}, [], None),
    ({"APPTAINER_CONTAINER": "/i/l.sif"}, [".singularity.d/"], {"Type": "singularity", "URI": "/i/l.sif"}),
    ({"SINGULARITY_CONTAINER": "/i/l.sif"}, [".singularity.d/"], {"Type": "singularity", "URI": "/i/l.sif"}),
    # a SIF converted from the Docker image keeps LEGSEG_DOCKER_TAG: it is still Apptainer
    ({"APPTAINER_CONTAINER": "/i/l.sif", "LEGSEG_DOCKER_TAG": "legseg:1-cpu"}, [".singularity.d/"],
     {"Type": "singularity", "URI": "/i/l.sif"}),
    ({}, [], None),
], ids=["dockerenv-only", "tag-only", "docker", "podman", "apptainer-var-only", "apptainer",
        "singularity", "sif-from-docker-image", "host"])
def test_container_needs_variable_and_marker(tmp_path, environ, markers, expected):
    for marker in markers:
        path = tmp_path / marker
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir() if marker.endswith("/") else path.write_text("")
    assert derivatives.container_info(environ, root=tmp_path) == expected


def _writer(args):
    output_dir, bids_dir = args
    derivatives.ensure_dataset_files(Path(output_dir), Path(bids_dir))
    return json.loads((Path(output_dir) / "dataset_description.json").read_text())["Name"]


def test_eight_concurrent_writers_produce_one_complete_description(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    bids = tmp_path / "bids"
    bids.mkdir()
    context = multiprocessing.get_context("spawn")
    with context.Pool(8) as pool:
        names = pool.map(_writer, [(str(out), str(bids))] * 8)
    assert len(set(names)) == 1
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".bidsignore", "dataset_description.json", "README.md", "dseg.tsv", "dseg.json",
         "legseg_labels.txt", "legseg_labels.ctbl", "legseg_labels.lut"])


def test_existing_description_is_not_replaced(tmp_path, caplog):
    out = tmp_path / "out"
    out.mkdir()
    (out / "dataset_description.json").write_text(json.dumps({"Name": "x", "GeneratedBy": [{"Version": "0.0.1"}]}))
    derivatives.ensure_dataset_files(out, tmp_path)
    assert json.loads((out / "dataset_description.json").read_text())["Name"] == "x"
    assert "mixed" in caplog.text


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "a" / "b.json"
    derivatives.write_json(target, {"x": 1})
    derivatives.write_json(target, {"x": 2})
    assert json.loads(target.read_text()) == {"x": 2}
    assert [p.name for p in target.parent.iterdir()] == ["b.json"]


def test_one_atomic_write_for_text_tables_and_images(tmp_path, monkeypatch):
    """Text, JSON, NIfTI (and checkpoint) outputs share one temporary-file-and-rename
    primitive: the file appears complete, with the permissions the umask allows, or not at
    all, and a failed write leaves the old file and no temporary file behind."""
    import os

    import nibabel as nib
    import numpy as np

    from legseg_tf import nifti_io
    from tests.conftest import write_nifti

    previous = os.umask(0o027)
    try:
        text = derivatives.atomic_write_text(tmp_path / "t.tsv", "a\tb\n")
        source = write_nifti(tmp_path / "src" / "x.nii.gz", np.ones((4, 3, 2)), np.eye(4))
        _, geometry = nifti_io.load_canonical(source)
        image = nifti_io.save_labels(np.ones((4, 3, 2), np.uint8), geometry, tmp_path / "l.nii.gz")
    finally:
        os.umask(previous)
    assert text.read_text() == "a\tb\n" and text.stat().st_mode & 0o777 == 0o640
    assert image.stat().st_mode & 0o777 == 0o640
    assert nib.load(str(image)).get_data_dtype() == np.uint8  # gzip chosen by the name ending
    assert image.read_bytes()[:2] == b"\x1f\x8b"

    def broken(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    for path in (text, image):
        before = path.read_bytes()
        with pytest.raises(OSError, match="disk full"):
            derivatives.atomic_write(path, broken)
        assert path.read_bytes() == before

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        nifti_io.save_labels(np.zeros((4, 3, 2), np.uint8), geometry, tmp_path / "new.nii.gz")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.nii.gz", "src", "t.tsv"]


# ------------------------------------------------------------------ viewer colour tables

def _label_table(out: Path) -> dict[int, tuple[str, tuple[int, int, int]]]:
    """dseg.tsv as written: index -> (name, (R, G, B)); the reference for every viewer table."""
    rows = (out / "dseg.tsv").read_text().splitlines()
    header = rows[0].split("\t")
    table = {}
    for row in rows[1:]:
        cells = dict(zip(header, row.split("\t")))
        colour = cells["color"].lstrip("#")
        table[int(cells["index"])] = (cells["name"], tuple(int(colour[i:i + 2], 16) for i in (0, 2, 4)))
    return table


def _parse_slicer_ctbl(text: str) -> dict[int, tuple[str, tuple[int, int, int], int]]:
    """3D Slicer's colour table file grammar (Slicer docs, "Color table file format"): header
    lines starting with ``#`` (the first one ``# Color table file``), then data lines
    ``index name R G B A`` separated by single spaces: integer index, a name without spaces,
    four integers 0-255. Anything else is an error."""
    lines = text.splitlines()
    assert lines[0].startswith("# Color table file"), lines[0]
    entries = {}
    header = True
    for number, line in enumerate(lines, 1):
        if line.startswith("#"):
            assert header, f"line {number}: comment after the data lines"
            continue
        header = False
        tokens = line.split(" ")
        assert len(tokens) == 6, f"line {number}: {line!r} is not 'index name R G B A'"
        index, name, *channels = tokens
        assert index.isdigit() and name and all(c.isdigit() for c in channels), f"line {number}: {line!r}"
        r, g, b, a = (int(c) for c in channels)
        assert all(0 <= c <= 255 for c in (r, g, b, a)), f"line {number}: {line!r}"
        assert int(index) not in entries, f"line {number}: index {index} twice"
        entries[int(index)] = (name, (r, g, b), a)
    return entries


def _parse_fsleyes_lut(text: str) -> dict[int, tuple[str, tuple[float, float, float]]]:
    """FSLeyes' lookup table grammar (FSLeyes ``luts/README`` and its LookupTable loader):
    every non-empty line is ``value R G B name...`` -- an integer label value (0-65535),
    three floats in 0..1, the name as all remaining columns -- in strictly ascending order.
    No comments (FSLeyes reads a ``#`` line as a label and fails)."""
    entries: dict[int, tuple[str, tuple[float, float, float]]] = {}
    last = -1
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        tokens = line.split()
        assert len(tokens) >= 5, f"line {number}: {line!r} is not 'value R G B name'"
        assert tokens[0].isdigit(), f"line {number}: label value {tokens[0]!r} is not an integer"
        value = int(tokens[0])
        rgb = tuple(float(t) for t in tokens[1:4])
        assert 0 <= value <= 65535 and all(0.0 <= c <= 1.0 for c in rgb), f"line {number}: {line!r}"
        assert value > last, f"line {number}: label values not in ascending order"
        last = value
        entries[value] = (" ".join(tokens[4:]), rgb)
    return entries


def test_viewer_colour_tables_match_the_label_table(tmp_path):
    derivatives.ensure_dataset_files(tmp_path, tmp_path)
    table = _label_table(tmp_path)
    assert len(table) == 101 and table[0][0] == "Background"

    slicer = _parse_slicer_ctbl((tmp_path / "legseg_labels.ctbl").read_text())
    assert set(slicer) == set(table)
    for index, (name, rgb) in table.items():
        assert slicer[index][0] == name.replace(" ", "_"), index
        assert slicer[index][1] == rgb, index
        assert slicer[index][2] == (0 if index == 0 else 255), index

    fsleyes = _parse_fsleyes_lut((tmp_path / "legseg_labels.lut").read_text())
    assert set(fsleyes) == set(table) - {0}  # 0 is FSLeyes' transparent background
    for index, (name, rgb) in fsleyes.items():
        assert name == table[index][0], index
        assert tuple(round(c * 255) for c in rgb) == table[index][1], index

    # and the ITK-SNAP file already written beside them: same labels, same colours
    itk = {}
    for line in (tmp_path / "legseg_labels.txt").read_text().splitlines():
        if not line.startswith("#"):
            tokens = line.split()
            itk[int(tokens[0])] = tuple(int(t) for t in tokens[1:4])
    assert itk == {index: rgb for index, (_, rgb) in table.items()}


def test_viewer_tables_are_bidsignored_and_an_old_bidsignore_is_completed(tmp_path):
    for name in ("legseg_labels.txt", "legseg_labels.ctbl", "legseg_labels.lut"):
        assert name in derivatives.BIDSIGNORE_LINES
    (tmp_path / ".bidsignore").write_text("logs/\nmy_notes.txt")  # an older legseg + a person
    derivatives.ensure_dataset_files(tmp_path, tmp_path)
    lines = (tmp_path / ".bidsignore").read_text().splitlines()
    assert lines[:2] == ["logs/", "my_notes.txt"]
    assert set(lines) == {"my_notes.txt", *derivatives.BIDSIGNORE_LINES} and len(lines) == len(set(lines))


# ------------------------------------------------------------------ TSV data dictionaries

def test_dseg_json_describes_every_non_standard_column(tmp_path):
    derivatives.ensure_dataset_files(tmp_path, tmp_path)
    dictionary = json.loads((tmp_path / "dseg.json").read_text())
    rows = [row.split("\t") for row in (tmp_path / "dseg.tsv").read_text().splitlines()]
    standard = {"index", "name", "abbreviation", "color", "mapping"}  # BIDS dseg.tsv columns
    extra = [column for column in rows[0] if column not in standard]
    assert extra == ["side", "region"]
    for position, column in enumerate(rows[0]):
        if column in standard:
            continue
        assert isinstance(dictionary[column], dict) and dictionary[column]["Description"], column
        values = {row[position] for row in rows[1:]} - {"n/a"}
        assert values == set(dictionary[column]["Levels"]), column


def test_morph_sidecar_columns_are_described_by_objects():
    from legseg_tf.fatfraction import FF_COLUMNS
    from legseg_tf.morphometry import MORPH_COLUMNS
    from legseg_tf.reports.participant import COLUMN_DESCRIPTIONS

    assert set(COLUMN_DESCRIPTIONS) >= set(MORPH_COLUMNS) | set(FF_COLUMNS)
    for column, entry in COLUMN_DESCRIPTIONS.items():
        assert isinstance(entry, dict) and isinstance(entry.get("Description"), str), column
        assert set(entry) <= {"LongName", "Description", "Levels", "Units", "TermURL"}, column


def _validator_issues(dataset: Path) -> list[dict]:
    import subprocess

    from legseg_tf import pipeline

    validator = pipeline.find_validator()
    if validator is None:
        pytest.skip("no BIDS validator installed (pip install bids-validator-deno)")
    done = subprocess.run([*pipeline.validator_command(validator), str(dataset), "--format", "json"],
                          capture_output=True, text=True, timeout=600,
                          env=pipeline.validator_environment(dataset.parent / "cache"))
    return json.loads(done.stdout)["issues"]["issues"]


def test_participant_output_validates_without_errors_or_column_warnings(tmp_path, monkeypatch):
    """The whole participant level (placeholder network, real reports): the derivative dataset
    passes the BIDS validator with no error and no undefined TSV column, and the log file has
    no third-party debug chatter (fsspec logs a line per file pybids opens)."""
    from legseg_tf import cli, demo, pipeline
    from tests.fakes import ThresholdPlaceholderSegmenter

    monkeypatch.setattr(pipeline, "load_segmenter", lambda config, models_dir: ThresholdPlaceholderSegmenter())
    demo.write_demo(tmp_path / "bids", subjects=1)
    out = tmp_path / "out"
    assert cli.main([str(tmp_path / "bids"), str(out), "participant", "--skip_bids_validator"]) == 0
    assert list(out.rglob("*_morph.json"))

    issues = _validator_issues(out)
    assert not [i for i in issues if i["severity"] == "error"], issues
    assert not [i for i in issues if "COLUMN" in i["code"]], issues
    # the dataset-level hints are answered (README, Authors) and no inherited key overrides
    # a sidecar's; the one warning left is SpatialReference recommended for dseg.tsv: an image
    # rule applied to the lookup table (each label map's sidecar names its reference image)
    codes = {(i["code"], i.get("subCode")) for i in issues}
    assert not codes - {("SIDECAR_KEY_RECOMMENDED", "SpatialReference")}, issues

    description = json.loads((out / "dataset_description.json").read_text())
    assert description["License"] == "CC0"  # the demo dataset's

    logs = list((out / "logs").glob("legseg_participant_*.log"))
    assert len(logs) == 1
    text = logs[0].read_text()
    assert "legseg_tf.pipeline" in text
    assert not [line for line in text.splitlines() if " fsspec" in line]
