"""What each network can and cannot do, for the participant report: read from the models
folder (the manifest entry of the model id a label map's sidecar names, and its model card).

Sources, structured first:

* the manifest entry's ``provenance``:

  - ``training_subjects`` (list of text; else ``training_stacks``) and
    ``training_voxel_size_mm``: the training data;
  - ``unseen_subject_dice``: a number, or an object ``{what: number or text}`` (e.g. per
    held-out subject, or ``{"mean": 0.41}``); ``validation``: text describing the protocol;
  - ``never_predicted``: the labels of the model's training table that it never produces,
    as a list of names (QMRITools or English spelling, without side), abbreviation stems
    (``"FDL"``) or training class numbers;
  - ``card``: the model card, a Markdown file relative to the models folder.

* the model card, where the manifest has no such field: the first paragraph of the section
  whose title starts "Training data"; the Dice figures of the first section titled
  "Leave-one-subject-out...", "Unseen...", "New subjects...", "Other people..." or, failing
  those, "Validation..." (bold sentences that name a Dice, the "mean" rows of its tables, or
  its sentences that name a Dice, in that order); the first items of "Known limits"; and the
  labels named in the sentences that say "never predicted", "not labelled" or "never
  segmented".

Every reader is lenient: a missing models folder, manifest, entry or card gives a note saying
so, never an exception, since the report must still be written.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from legseg_tf.labels import BY_INDEX, NAME_CORRECTIONS, TRAIN_TABLES, train_label_map

logger = logging.getLogger(__name__)

#: Segmenter region (report ``region_ranges`` keys) of each manifest role.
ROLE_REGIONS = {"lower_leg": "LowerLegs", "upper_leg": "UpperLegs", "hip": "Hip"}
#: Card section titles holding unseen-subject figures, most specific first.
VALIDATION_TITLES = (
    r"leave[- ]one[- ]subject[- ]out",
    r"unseen",
    r"new (subject|person|people)",
    r"other (people|subjects|persons)",
    r"validation",
)
#: Phrases of a card sentence listing the labels a network never produces.
NEVER_PHRASES = (r"never predicted", r"not labell?ed", r"never segmented", r"never produced")
#: Longest summary line taken from a card (characters).
MAX_LINE = 320


@dataclass
class ModelFacts:
    """What the report says about one model.

    Attributes:
        id, role: as in the label map's sidecar (``Models``).
        label_table: training-label table (manifest), or None.
        card: the card's path relative to the models folder, when the manifest names one.
        notes: what could not be read, and why (shown in the box).
        training: lines on the training data.
        validation_title: title of the card section the Dice lines come from ("" if none).
        validation: lines on the unseen-subject Dice.
        limits: the first items of the card's "Known limits".
        never_names: English names (without side) of the training-table structures the
            model never produces.
        never_labels: their final label values (both sides).
        never_source: "manifest", "model card" or "" (unknown).
    """

    id: str
    role: str
    label_table: str | None = None
    card: str | None = None
    notes: list[str] = field(default_factory=list)
    training: list[str] = field(default_factory=list)
    validation_title: str = ""
    validation: list[str] = field(default_factory=list)
    limits: list[str] = field(default_factory=list)
    never_names: list[str] = field(default_factory=list)
    never_labels: frozenset[int] = frozenset()
    never_source: str = ""

    @property
    def region(self) -> str | None:
        """Segmenter region of the model's role (None for the classifier)."""
        return ROLE_REGIONS.get(self.role)


# ------------------------------------------------------------------ manifest and card reading


@functools.lru_cache(maxsize=16)
def _manifest(path: str, mtime: float) -> dict:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise ValueError("no 'models' list")
    return {entry["id"]: entry for entry in data["models"]
            if isinstance(entry, dict) and isinstance(entry.get("id"), str)}


def manifest_entries(models_dir: Path | None) -> tuple[dict, str]:
    """``(id -> raw manifest entry, note)``; the note says why there are none."""
    if models_dir is None:
        return {}, "no models folder known to this report"
    path = Path(models_dir) / "manifest.json"
    try:
        return _manifest(str(path), path.stat().st_mtime), ""
    except FileNotFoundError:
        return {}, f"no manifest.json in the models folder {models_dir}"
    except (OSError, ValueError, KeyError, TypeError) as error:
        return {}, f"the manifest {path} is not readable: {error}"


def card_path(models_dir: Path, card: object) -> Path | None:
    """The card file of a manifest ``card`` value: relative to the models folder, POSIX,
    without ``..``; None for anything else."""
    if not isinstance(card, str) or not card:
        return None
    relative = PurePosixPath(card)
    if relative.is_absolute() or ".." in relative.parts:
        return None
    return Path(models_dir).joinpath(*relative.parts)


def card_sections(text: str) -> list[tuple[str, str]]:
    """``(title, body)`` of each ``## `` section of a Markdown card (deeper headings stay in
    their section's body)."""
    sections: list[tuple[str, str]] = []
    title, body = None, []
    for line in text.splitlines():
        match = re.match(r"^##\s+(.*\S)\s*$", line)
        if match and not line.startswith("###"):
            if title is not None:
                sections.append((title, "\n".join(body)))
            title, body = match.group(1), []
        elif title is not None:
            body.append(line)
    if title is not None:
        sections.append((title, "\n".join(body)))
    return sections


def plain(text: str) -> str:
    """Markdown inline text as plain text: no emphasis, code marks or links; one line."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = text.replace("**", "").replace("`", "")
    text = re.sub(r"(?<!\w)[*_](\S[^*_]*?)[*_](?!\w)", r"\1", text)
    return re.sub(r"\s+", " ", text).strip()


def _short(text: str, limit: int = MAX_LINE) -> str:
    text = plain(text)
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


def paragraphs(body: str) -> list[str]:
    """Prose paragraphs and list items of a section body (tables and headings left out),
    each joined into one line."""
    found, current = [], []

    def flush():
        if current:
            found.append(" ".join(current))
            current.clear()

    for line in body.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("|") or stripped.startswith("#"):
            flush()
            continue
        if re.match(r"^([*+-]|\d+\.)\s+", stripped):
            flush()
            stripped = re.sub(r"^([*+-]|\d+\.)\s+", "", stripped)
        current.append(stripped)
    flush()
    return found


def sentences(paragraph: str) -> list[str]:
    """Sentences of a paragraph (split after ". " before a capital, a digit or "*")."""
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+(?=[A-Z0-9*(`])", paragraph) if s.strip()]


def table_mean_rows(body: str) -> list[str]:
    """Each "mean" row of the section's Markdown tables as "first cell: header value; ..."."""
    lines = []
    header: list[str] | None = None
    for line in body.splitlines():
        stripped = line.strip()
        if not stripped.startswith("|"):
            header = None
            continue
        cells = [plain(c) for c in stripped.strip("|").split("|")]
        if all(re.fullmatch(r":?-{2,}:?", c) or not c for c in cells):
            continue
        if header is None:
            header = cells
            continue
        if cells and re.search(r"\bmean\b", cells[0], re.IGNORECASE):
            pairs = [f"{h} {v}" for h, v in zip(header[1:], cells[1:]) if v and v != "-"]
            if pairs:
                lines.append(f"{cells[0]}: " + "; ".join(pairs))
    return lines


def validation_summary(sections: list[tuple[str, str]]) -> tuple[str, list[str]]:
    """``(section title, lines)`` on the Dice of the first section whose title matches
    :data:`VALIDATION_TITLES` (in that order of preference)."""
    for pattern in VALIDATION_TITLES:
        for title, body in sections:
            if not re.match(pattern, title.strip(), re.IGNORECASE):
                continue
            lines = []
            for paragraph in paragraphs(body):
                for bold in re.findall(r"\*\*(.+?)\*\*", paragraph):
                    if re.search(r"dice", bold, re.IGNORECASE) and re.search(r"\d", bold):
                        lines.append(_short(bold))
            lines += [_short(row) for row in table_mean_rows(body)]
            if not lines:
                lines = [_short(s) for p in paragraphs(body) for s in sentences(p)
                         if re.search(r"dice", s, re.IGNORECASE) and re.search(r"\d\.\d", s)]
            if not lines:
                prose = [p for p in paragraphs(body) if not p.rstrip().endswith(":")]
                lines = [_short(prose[0])] if prose else []
            if lines:
                return plain(title), list(dict.fromkeys(lines))[:4]
    return "", []


def training_summary(sections: list[tuple[str, str]]) -> list[str]:
    """The first paragraph of the card's "Training data..." section."""
    for title, body in sections:
        if re.match(r"training data", title.strip(), re.IGNORECASE):
            found = paragraphs(body)
            if found:
                return [_short(found[0], 2 * MAX_LINE)]
    return []


def limits_summary(sections: list[tuple[str, str]], count: int = 3) -> list[str]:
    """The first ``count`` items of the card's "Known limits" section."""
    for title, body in sections:
        if re.match(r"(known )?limit", title.strip(), re.IGNORECASE):
            return [_short(item) for item in paragraphs(body)[:count]]
    return []


def never_sentences(text: str) -> list[str]:
    """Sentences (or ";"-clauses) of a card that say which labels are never produced."""
    found = []
    for _, body in card_sections(text) or [("", text)]:
        for paragraph in paragraphs(body):
            for sentence in sentences(paragraph):
                for clause in sentence.split(";"):
                    if any(re.search(p, clause, re.IGNORECASE) for p in NEVER_PHRASES):
                        found.append(plain(clause))
    return found


# ------------------------------------------------------------------ labels never produced


def _table_names(table: str) -> list[str]:
    """The structures of a training table (QMRITools spelling), in class order."""
    return list(TRAIN_TABLES.get(table, ()))


def _final_labels(table: str, names: list[str]) -> frozenset[int]:
    """Final label values (both sides) of training-table structures."""
    classes = [_table_names(table).index(n) + 1 for n in names]
    values = set()
    for side in ("L", "R"):
        lookup = train_label_map(table, side)
        values.update(int(lookup[c]) for c in classes)
    return frozenset(values)


def _match_structures(table: str, text: str) -> list[str]:
    """Training-table structures (QMRITools names) named in ``text``: by QMRITools or English
    name, whole words, case-insensitive; longer names first so that a name inside another
    one is not counted twice."""
    text = text.lower()
    found = []
    for name in sorted(_table_names(table), key=len, reverse=True):
        spellings = {name, NAME_CORRECTIONS.get(name, name)}
        for spelling in spellings:
            pattern = r"(?<![a-z])" + re.escape(spelling.lower()) + r"(?![a-z])"
            if re.search(pattern, text):
                found.append(name)
                text = re.sub(pattern, " ", text)
                break
    return [n for n in _table_names(table) if n in found]


def _structures_from_manifest(table: str, values: list) -> list[str]:
    """Training-table structures from a manifest ``never_predicted`` list."""
    names = _table_names(table)
    stems = {}
    for name in names:
        for label in BY_INDEX.values():
            if label.name == name:
                stems[label.stem.lower()] = name
    found = []
    for value in values:
        if isinstance(value, bool):
            continue
        if isinstance(value, int) and 1 <= value <= len(names):
            found.append(names[value - 1])
        elif isinstance(value, str):
            matched = stems.get(value.strip().lower()) or next(iter(
                _match_structures(table, value)), None)
            if matched:
                found.append(matched)
            else:
                logger.warning("never_predicted entry %r is not in table %s", value, table)
    return [n for n in names if n in found]


# ------------------------------------------------------------------ assembling the facts


def _format_dice(value) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{float(value):.2f}"
    return str(value)


def model_facts(model: dict, models_dir: Path | None) -> ModelFacts:
    """The box content for one model of a label map's sidecar (``{"id", "role", ...}``)."""
    facts = ModelFacts(str(model.get("id") or "unknown"), str(model.get("role") or "unknown"))
    entries, note = manifest_entries(models_dir)
    entry = entries.get(facts.id)
    if entry is None:
        facts.notes.append(note or f"model {facts.id} is not in the manifest of the models "
                                   f"folder {models_dir}: no model card to read")
        return facts
    facts.label_table = entry.get("label_table") if isinstance(
        entry.get("label_table"), str) else None
    provenance = entry.get("provenance") if isinstance(entry.get("provenance"), dict) else {}

    text = ""
    path = card_path(models_dir, provenance.get("card"))
    if provenance.get("card") is None:
        facts.notes.append("no model card recorded in the manifest (provenance 'card')")
    elif path is None:
        facts.notes.append(f"model card path {provenance.get('card')!r} is not a path inside "
                           "the models folder")
    else:
        facts.card = str(provenance["card"])
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            facts.notes.append(f"model card {facts.card} not found in the models folder "
                               f"{models_dir}")
    sections = card_sections(text) if text else []

    # training data
    subjects = provenance.get("training_subjects") or provenance.get("training_stacks")
    if isinstance(subjects, list) and subjects:
        what = "subjects" if provenance.get("training_subjects") else "stacks"
        facts.training.append(f"{len(subjects)} training {what}: "
                              + "; ".join(str(s) for s in subjects))
    elif sections:
        facts.training += training_summary(sections)
    size = provenance.get("training_voxel_size_mm")
    if isinstance(size, list) and len(size) == 3:
        facts.training.append("trained at " + " x ".join(f"{float(v):g}" for v in size)
                              + " mm (z, y, x)")

    # unseen-subject Dice
    dice = provenance.get("unseen_subject_dice")
    if isinstance(dice, dict) and dice:
        facts.validation_title = "unseen-subject Dice (manifest)"
        facts.validation = [f"{k}: {_format_dice(v)}" for k, v in dice.items()]
    elif dice is not None and not isinstance(dice, dict):
        facts.validation_title = "unseen-subject Dice (manifest)"
        facts.validation = [f"mean Dice {_format_dice(dice)}"]
    elif sections:
        facts.validation_title, facts.validation = validation_summary(sections)
    if isinstance(provenance.get("validation"), str):
        facts.validation.append("protocol: " + _short(provenance["validation"]))
    facts.limits = limits_summary(sections)

    # labels never produced
    if facts.label_table in TRAIN_TABLES:
        listed = provenance.get("never_predicted")
        if isinstance(listed, list):
            facts.never_source = "manifest"
            names = _structures_from_manifest(facts.label_table, listed)
        elif text:
            clauses = never_sentences(text)
            names = _match_structures(facts.label_table, " ".join(clauses))
            facts.never_source = "model card" if clauses else ""
        else:
            names = []
        facts.never_names = [NAME_CORRECTIONS.get(n, n) for n in names]
        facts.never_labels = _final_labels(facts.label_table, names) if names else frozenset()
    return facts


def models_of(summaries) -> list[dict]:
    """The distinct models (by id, first seen first) of report summaries (``result.models``,
    else the sidecar's ``Models``)."""
    seen: dict[str, dict] = {}
    for summary in summaries:
        models = summary.result.models or (summary.sidecar or {}).get("Models") or []
        for model in models:
            if isinstance(model, dict) and model.get("id") not in seen:
                seen[str(model.get("id"))] = model
    return list(seen.values())


def known_absent(facts: list[ModelFacts]) -> dict[str, frozenset[int]]:
    """Segmenter region -> labels its model is known never to produce."""
    out: dict[str, frozenset[int]] = {}
    for fact in facts:
        if fact.region and fact.never_labels:
            out[fact.region] = out.get(fact.region, frozenset()) | fact.never_labels
    return out
