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
