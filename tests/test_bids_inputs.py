"""Input discovery on tiny generated datasets."""
from __future__ import annotations

import json

import pytest

from legseg_tf import bids_inputs
from legseg_tf.bids_inputs import InputSelectionError, find_inputs, normalise_label
from tests.conftest import make_dataset


def names(images):
    return [image.relpath.split("/")[-1] for image in images]


def test_default_query_finds_outphase_and_the_out_of_phase_megre_echo(tiny_dataset):
    images = find_inputs(tiny_dataset)
    assert names(images) == ["sub-01_acq-outphase_T1w.nii.gz", "sub-02_echo-2_part-mag_MEGRE.nii.gz"]
    assert images[1].echo_time == pytest.approx(0.00345)
    assert images[0].source_stem == "sub-01_acq-outphase"
    assert str(images[1].entities["echo"]) == "2"


def test_participant_filter_with_and_without_prefix(tiny_dataset):
    assert names(find_inputs(tiny_dataset, ("02",))) == ["sub-02_echo-2_part-mag_MEGRE.nii.gz"]
    with pytest.raises(InputSelectionError, match="03"):
        find_inputs(tiny_dataset, ("03",))


def test_field_strength_changes_the_chosen_echo(tmp_path):
    # At 1.5 T fat and water are opposed at about 2.3 ms and in phase at about 4.6 ms.
    layout = {
        f"sub-01/anat/sub-01_echo-{e}_MEGRE.nii.gz": {"EchoTime": te, "MagneticFieldStrength": 1.5}
        for e, te in ((1, 0.0023), (2, 0.0046))
    }
    images = find_inputs(make_dataset(tmp_path / "d", layout))
    assert names(images) == ["sub-01_echo-1_MEGRE.nii.gz"]


def test_sessions_are_filtered_and_sessionless_files_kept(tmp_path):
    layout = {
        "sub-01/ses-a/anat/sub-01_ses-a_acq-outphase_T1w.nii.gz": None,
        "sub-01/ses-b/anat/sub-01_ses-b_acq-outphase_T1w.nii.gz": None,
        "sub-02/anat/sub-02_acq-outphase_T1w.nii.gz": None,
    }
    root = make_dataset(tmp_path / "d", layout)
    assert len(find_inputs(root)) == 3
    chosen = find_inputs(root, session_labels=("b",))
    assert names(chosen) == ["sub-01_ses-b_acq-outphase_T1w.nii.gz", "sub-02_acq-outphase_T1w.nii.gz"]
    assert chosen[0].session == "b" and chosen[1].session is None


def test_several_stacks_of_one_participant_are_all_processed(tmp_path):
    layout = {
        "sub-01/anat/sub-01_acq-outphase_run-1_T1w.nii.gz": None,
        "sub-01/anat/sub-01_acq-outphase_run-2_T1w.nii.gz": None,
        "sub-01/anat/sub-01_acq-water_T1w.nii.gz": None,
    }
    assert len(find_inputs(make_dataset(tmp_path / "d", layout))) == 2


def test_filter_file_replaces_the_default_query(tmp_path):
    layout = {
        "sub-01/anat/sub-01_acq-outphase_T1w.nii.gz": None,
        "sub-01/anat/sub-01_acq-water_T1w.nii.gz": None,
    }
    root = make_dataset(tmp_path / "d", layout)
    images = find_inputs(root, filters={"suffix": "T1w", "acquisition": "water"})
    assert names(images) == ["sub-01_acq-water_T1w.nii.gz"]
    with pytest.raises(InputSelectionError, match="filter"):
        find_inputs(root, filters={"suffix": "T2w"})


def test_no_matching_input_raises(tmp_path):
    root = make_dataset(tmp_path / "d", {"sub-01/anat/sub-01_T2w.nii.gz": None})
    with pytest.raises(InputSelectionError, match="default query"):
        find_inputs(root)


def test_derivatives_inside_the_dataset_are_ignored(tiny_dataset):
    out = tiny_dataset / "derivatives" / "legseg" / "sub-01" / "anat"
    out.mkdir(parents=True)
    (out / "sub-01_acq-outphase_desc-muscles_dseg.nii.gz").write_bytes(b"")
    assert len(find_inputs(tiny_dataset)) == 2


@pytest.mark.parametrize("label,expected", [("01", "01"), ("sub-01", "01"), ("ABC9", "ABC9")])
def test_normalise_label(label, expected):
    assert normalise_label(label, "sub-") == expected


@pytest.mark.parametrize("label", ["../x", "0 1", "a_b", "", "sub-"])
def test_bad_labels_rejected(label):
    with pytest.raises(ValueError, match="invalid label"):
        normalise_label(label, "sub-")


def test_filter_file_errors(tmp_path):
    bad = tmp_path / "f.json"
    bad.write_text("[1, 2]")
    with pytest.raises(bids_inputs.FilterFileError):
        bids_inputs.load_filter_file(bad)
    bad.write_text("{not json")
    with pytest.raises(bids_inputs.FilterFileError):
        bids_inputs.load_filter_file(bad)
    good = tmp_path / "g.json"
    good.write_text(json.dumps({"suffix": "T1w"}))
    assert bids_inputs.load_filter_file(good) == {"suffix": "T1w"}


def test_out_of_phase_distance_is_periodic():
    period = 1 / (3.4e-6 * 42.577e6 * 3.0)
    assert bids_inputs.out_of_phase_distance(0.5 * period, 3.0) == pytest.approx(0.0, abs=1e-9)
    assert bids_inputs.out_of_phase_distance(1.5 * period, 3.0) == pytest.approx(0.0, abs=1e-9)
    assert bids_inputs.out_of_phase_distance(2.0 * period, 3.0) == pytest.approx(0.5, abs=1e-9)


#: Parent folders named like BIDS path components (issue 15): pybids matched its entity patterns
#: on the absolute path, so these leaked datatype/subject/session/acq values into every file.
BIDS_LIKE_PARENTS = ["anat", "perf", "sub-01", "ses-1", "acq-water", "anat/perf/sub-01/ses-1"]


def _dataset_under(parent_dir):
    layout = {
        "sub-02/ses-2/anat/sub-02_ses-2_acq-outphase_T1w.nii.gz": None,
        "sub-02/ses-2/perf/sub-02_ses-2_asl.nii.gz": None,
    }
    root = make_dataset(parent_dir / "study", layout, shape=(8, 6, 2))
    # EchoTime only in a top-level sidecar: inheritance must still associate it with the image
    (root / "acq-outphase_T1w.json").write_text(json.dumps({"EchoTime": 0.00345}))
    return root


@pytest.mark.parametrize("parents", BIDS_LIKE_PARENTS)
def test_inputs_are_found_whatever_the_parent_folders_are_called(tmp_path, parents):
    root = _dataset_under(tmp_path.joinpath(*parents.split("/")))
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    images = find_inputs(root)
    assert names(images) == ["sub-02_ses-2_acq-outphase_T1w.nii.gz"]
    image = images[0]
    assert (image.subject, image.session) == ("02", "2")
    assert image.relpath == "sub-02/ses-2/anat/sub-02_ses-2_acq-outphase_T1w.nii.gz"
    assert {k: str(v) for k, v in image.entities.items()} == {
        "subject": "02", "session": "2", "datatype": "anat", "acquisition": "outphase",
        "suffix": "T1w", "extension": ".nii.gz",
    }
    assert image.echo_time == pytest.approx(0.00345)
    # label filters and --bids-filter-file queries see the dataset's own entities only
    assert names(find_inputs(root, ("02",), ("2",))) == names(images)
    with pytest.raises(InputSelectionError, match="participant"):
        find_inputs(root, ("01",))
    perf = find_inputs(root, filters={"datatype": "perf"})
    assert names(perf) == ["sub-02_ses-2_asl.nii.gz"]
    assert perf[0].entities["suffix"] == "asl"
    # nothing was written, linked or left behind next to the dataset
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before


def test_cli_finds_inputs_under_a_datatype_named_parent(tmp_path, monkeypatch):
    # Stops right after input discovery: the model loader (reached only when inputs were
    # found; the manifest itself is checked before discovery) exits 3 (no model), not 18.
    from legseg_tf import cli, pipeline
    from legseg_tf.errors import NoModelError

    def stop(config):
        raise NoModelError("stopped after input discovery")

    monkeypatch.setattr(pipeline, "_load_segmenter", stop)
    root = _dataset_under(tmp_path / "data" / "perf")
    code = cli.main([str(root), str(tmp_path / "out"), "participant", "--participant_label", "02",
                     "--skip_bids_validator"])
    assert code == cli.EXIT_NO_MODEL
