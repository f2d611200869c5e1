"""One participant-level process segments many participants with the models it loaded once:
each network is built and traced once, whatever the number of images and participants."""
from __future__ import annotations

import logging

from legseg_tf import cli, demo, model_store
from tests.helpers import install_tiny_models

VASTUS_LATERALIS = 12      # class of N5_UpperLeg


def test_models_are_loaded_and_traced_once_for_all_participants(tmp_path, monkeypatch, caplog):
    models = tmp_path / "models"
    install_tiny_models(models, always={"upper_leg": VASTUS_LATERALIS, "side": "Both",
                                        "position": "Upper"})
    images = demo.write_demo(tmp_path / "bids", subjects=3)
    assert len({path.name.split("_")[0] for path in images}) == 3
    loads = []
    load_model = model_store.load_model

    def counted(entry, *args, **kwargs):
        loads.append(entry.role)
        return load_model(entry, *args, **kwargs)

    monkeypatch.setattr(model_store, "load_model", counted)
    out = tmp_path / "out"
    with caplog.at_level(logging.DEBUG, logger="legseg_tf"):
        code = cli.main([str(tmp_path / "bids"), str(out), "participant", "--models", str(models),
                         "--region", "legs", "--device", "cpu", "--skip_bids_validator", "-v"])
    assert code == 0
    assert len(list(out.glob("sub-*/anat/*_dseg.nii.gz"))) == len(images)
    # the classifier and the upper-leg network (every slice is "Upper": no lower-leg network)
    assert sorted(loads) == ["classifier", "upper_leg"]
    traces = [r.getMessage() for r in caplog.records if r.getMessage().startswith("tracing network")]
    assert len(traces) == 1, traces          # one trace for the one region network used


def test_each_subject_is_reported_and_let_go_before_the_next(tmp_path, monkeypatch):
    """A run over many participants writes a subject's reports as soon as its images are done
    and drops their arrays, so memory does not grow with the number of participants."""
    from legseg_tf import pipeline
    from legseg_tf.reports import participant as reports

    models = tmp_path / "models"
    install_tiny_models(models, always={"upper_leg": VASTUS_LATERALIS, "side": "Both",
                                        "position": "Upper"})
    demo.write_demo(tmp_path / "bids", subjects=3)
    events, reported = [], []
    segment_image, write_outputs = pipeline.segment_image, reports.write_participant_outputs

    def segment(image, *args, **kwargs):
        held = [r for batch in reported for r in batch if r.labels_ras is not None]
        events.append(("segment", image.subject, len(held)))
        return segment_image(image, *args, **kwargs)

    def write(results, *args, **kwargs):
        assert all(r.labels_ras is not None for r in results if r.status == "done")
        events.append(("report", results[0].image.subject, 0))
        reported.append(results)
        return write_outputs(results, *args, **kwargs)

    monkeypatch.setattr(pipeline, "segment_image", segment)
    monkeypatch.setattr(reports, "write_participant_outputs", write)
    out = tmp_path / "out"
    code = cli.main([str(tmp_path / "bids"), str(out), "participant", "--models", str(models),
                     "--region", "legs", "--device", "cpu", "--skip_bids_validator"])
    assert code == 0
    subjects = sorted({subject for _, subject, _ in events})
    assert len(subjects) == 3 and len(list(out.glob("sub-*.html"))) == 3
    # every subject: its images, then its report, before the next subject's first image
    order = [(kind, subject) for kind, subject, _ in events]
    expected = []
    for subject in subjects:
        images = sum(1 for kind, s in order if kind == "segment" and s == subject)
        expected += [("segment", subject)] * images + [("report", subject)]
    assert order == expected
    # no array of an already reported subject is held while the next one is segmented
    assert all(held == 0 for kind, _, held in events if kind == "segment")
    assert all(r.labels_ras is None and r.volume_ras is None for batch in reported for r in batch)
