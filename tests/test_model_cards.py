"""The "what these networks can and cannot do" facts: read from the manifest and model cards."""
from __future__ import annotations

from pathlib import Path

import pytest

from legseg_tf.labels import BY_INDEX
from legseg_tf.reports import model_cards
from tests.helpers import CARD, planted_models, write_models_dir

REPO_MODELS = Path(__file__).resolve().parents[1] / "models"

def test_facts_from_the_card(tmp_path):
    models = planted_models(tmp_path)
    facts = model_cards.model_facts({"id": "planted", "role": "upper_leg"}, models)
    assert facts.notes == [] and facts.card == "cards/planted.md"
    assert facts.training[0].startswith("Two people, both thighs: Join_5 and the UCL")
    assert facts.training[1] == "trained at 6 x 1.5 x 1.5 mm (z, y, x)"
    # the leave-one-subject-out section wins over the same-subject validation
    assert facts.validation_title.startswith("Leave-one-subject-out")
    assert facts.validation == ["Expect a mean Dice of about 0.4 on a new person.",
                                "mean: mean Dice 0.39"]
    assert facts.never_source == "model card"
    assert facts.never_names == ["Adductor minimus", "Iliacus", "Psoas major", "Pectineus",
                                 "Patella", "Subcutaneous fat"]
    assert facts.never_labels == {41, 42, 49, 50, 51, 52, 65, 66, 105, 106, 151}
    assert "Ilium" not in facts.never_names  # named in the next clause, not as never predicted
    assert facts.limits[1] == "A small network trained on a CPU."
    assert model_cards.known_absent([facts]) == {"UpperLegs": facts.never_labels}


def test_structured_manifest_fields_win_over_the_card(tmp_path):
    models = write_models_dir(tmp_path, [
        {"id": "m", "role": "lower_leg", "label_table": "N6_LowerLeg",
         "provenance": {"card": "cards/planted.md",
                        "training_subjects": ["calf A", "calf B"],
                        "unseen_subject_dice": {"calf A": 0.412, "mean": 0.4},
                        "validation": "leave-one-subject-out: lower --hold-out A | B",
                        "never_predicted": ["FDL", "Flexor hallucis longus", 15, "Bones?"]}},
    ], {"cards/planted.md": CARD})
    facts = model_cards.model_facts({"id": "m", "role": "lower_leg"}, models)
    assert facts.training == ["2 training subjects: calf A; calf B"]
    assert facts.validation == ["calf A: 0.41", "mean: 0.40",
                                "protocol: leave-one-subject-out: lower --hold-out A | B"]
    assert facts.never_source == "manifest"
    assert facts.never_names == ["Flexor digitorum longus", "Flexor hallucis longus", "Patella"]
    assert facts.never_labels == {11, 12, 13, 14, 105, 106}


@pytest.mark.parametrize("model, manifest, card, note", [
    ({"id": "other", "role": "upper_leg"}, True, True, "is not in the manifest"),
    ({"id": "planted", "role": "upper_leg"}, True, False, "model card cards/planted.md not found"),
    ({"id": "planted", "role": "upper_leg"}, False, False, "no manifest.json"),
])
def test_missing_sources_are_said(tmp_path, model, manifest, card, note):
    models = planted_models(tmp_path)
    if not card:
        (models / "cards/planted.md").unlink()
    if not manifest:
        (models / "manifest.json").unlink()
    facts = model_cards.model_facts(model, models)
    assert any(note in n for n in facts.notes), facts.notes
    assert facts.never_labels == frozenset() and facts.validation == []
    assert model_cards.model_facts(model, None).notes == ["no models folder known to this report"]


def test_card_paths_stay_inside_the_models_folder(tmp_path):
    (tmp_path / "secret.md").write_text(CARD)
    models = write_models_dir(tmp_path / "models", [
        {"id": "m", "role": "upper_leg", "label_table": "N5_UpperLeg",
         "provenance": {"card": "../secret.md"}}], {})
    facts = model_cards.model_facts({"id": "m", "role": "upper_leg"}, models)
    assert facts.card is None and "not a path inside the models folder" in facts.notes[0]
    assert model_cards.card_path(models, "/etc/passwd") is None


def test_the_project_cards_are_read():
    """Every card in models/cards gives Dice lines (and a training summary where it has a
    "Training data" section); the calf card's "Not labelled ... never predicted" list becomes
    labels never segmented."""
    import shutil
    import tempfile

    tables = {"lowerleg": "N6_LowerLeg", "upperleg": "N5_UpperLeg"}
    cards = sorted((REPO_MODELS / "cards").glob("*.md"))
    assert cards
    with tempfile.TemporaryDirectory() as folder:
        models = Path(folder)
        shutil.copytree(REPO_MODELS / "cards", models / "cards")
        entries = []
        for card in cards:
            kind = next((k for k in tables if k in card.stem), None)
            entries.append({"id": card.stem, "label_table": tables.get(kind),
                            "role": {"lowerleg": "lower_leg", "upperleg": "upper_leg"}.get(
                                kind, "classifier"),
                            "provenance": {"card": f"cards/{card.name}"}})
        write_models_dir(models, entries, {})
        for entry, card in zip(entries, cards):
            text = card.read_text(encoding="utf-8")
            facts = model_cards.model_facts({"id": entry["id"], "role": entry["role"]}, models)
            assert facts.notes == [] and facts.validation, entry["id"]
            if "\n## Training data" in text:
                assert facts.training, entry["id"]
            if entry["label_table"] and "never predicted" in text:
                assert facts.never_labels, entry["id"]
        calf = model_cards.model_facts({"id": "legseg-lowerleg-small-v1", "role": "lower_leg"},
                                       models)
        assert {BY_INDEX[v].stem for v in calf.never_labels} == {
            "FDL", "FHL", "PLA", "POP", "FIBB", "EHL", "FIBT", "PAT", "TIB", "FIB", "SCF"}


def test_the_installed_manifest_is_read_without_errors():
    """The repository's own models folder: every model gets its facts or a note, no error."""
    entries, note = model_cards.manifest_entries(REPO_MODELS)
    assert note == "" and entries
    for model_id, entry in entries.items():
        facts = model_cards.model_facts({"id": model_id, "role": entry["role"]}, REPO_MODELS)
        assert facts.training or facts.notes, model_id


def test_card_helpers():
    sections = model_cards.card_sections("intro\n## A\ntext\n### sub\nmore\n## B\n")
    assert sections == [("A", "text\n### sub\nmore"), ("B", "")]
    assert model_cards.plain("**bold** `code` [link](x) *it*") == "bold code link it"
    rows = model_cards.table_mean_rows("| m | x | y |\n|---|---|---|\n| a | 1 | 2 |\n"
                                       "| **mean (2)** | **0.5** | - |\n")
    assert rows == ["mean (2): x 0.5"]
