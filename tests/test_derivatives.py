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
    source = tmp_path / "bids"
    source.mkdir()
    (source / "dataset_description.json").write_text(json.dumps({"Name": "raw", "DatasetDOI": "doi:10.1/x"}))
    description = derivatives.dataset_description(source)
    assert description["DatasetType"] == "derivative"
    generated = description["GeneratedBy"][0]
    assert generated["Name"] == "legseg" and generated["Version"] == __version__
    assert generated["Container"] == {"Type": "singularity", "URI": "/images/legseg.sif"}
    assert description["SourceDatasets"][0]["DOI"] == "doi:10.1/x"
    assert description["DatasetLinks"]["raw"].startswith("file://")


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
        [".bidsignore", "dataset_description.json", "dseg.tsv", "legseg_labels.txt"])


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
