"""Participant-level outputs after segmentation: per-image tables and the subject's QC report.

For every segmented (or previously segmented) image, next to its label map::

    <source entities>_desc-muscles_morph.tsv     one row per label (see MORPH_COLUMNS, FF_COLUMNS)
    <source entities>_desc-muscles_morph.json    column descriptions and the fat-fraction source

Naming: ``_morph.tsv`` is the suffix the BIDS structural-derivatives proposal (BEP011) uses
for morphometry tables of a segmentation; the table keeps the label map's source entities
and ``desc-muscles`` so that it pairs with its ``_dseg.nii.gz`` by name. The suffix is not in
the released specification yet, hence its ``.bidsignore`` entry.

And one self-contained page per subject, all sessions inside, at the output root::

    OUTPUT_DIR/sub-<label>.html

The page covers every label map of the subject found in OUTPUT_DIR, so running one session
at a time still leaves a complete report. Per label map it shows a one-line side verdict
(details folded), the device used, links to the label map, its tables and the label table,
a few representative axial slices as image | labels pairs (outlines; filled variant folded;
click to enlarge to the voxel-exact full resolution), an outlined overview mosaic and, where
the stack has enough slices, coronal and sagittal reformats. Near the top, one box per model
says what it can and cannot do (:mod:`legseg_tf.reports.model_cards`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from legseg_tf import nifti_io
from legseg_tf.derivatives import (
    atomic_write_text,
    label_maps,
    morph_path,
    probseg_path,
    report_path,
    sidecar_path,
    software_versions,
    write_json,
)
from legseg_tf.bids_inputs import parse_entities
from legseg_tf.fatfraction import FF_COLUMNS, FatFractionResult, session_fat_fraction
from legseg_tf.labels import REGION_LEVELS, SIDE_LEVELS
from legseg_tf.morphometry import MORPH_COLUMNS, label_morphometry
from legseg_tf.qc_flags import QCResult
from legseg_tf.reports import html, model_cards, plotting, qc
from legseg_tf.results import ImageResult, InputImage

logger = logging.getLogger(__name__)

#: Column descriptions written to the JSON sidecar of every morphometry table, as BIDS asks
#: of a TSV data dictionary: one object per column (Description, and Units or Levels).
COLUMN_DESCRIPTIONS = {
    "label": {"Description": "Label value in the _dseg.nii.gz (Muscles_leg numbering, see dseg.tsv)."},
    "name": {"Description": "Structure name with side (English spelling, as in dseg.tsv)."},
    "abbreviation": {"Description": "Short name with side suffix (_L / _R)."},
    "muscle": {"Description": "Structure name without side."},
    "side": {
        "Description": "Patient side (L, R; n/a: no side), from the image affine (RAS).",
        "Levels": dict(SIDE_LEVELS),
    },
    "region": {
        "Description": "Body region of the structure.",
        "Levels": {**REGION_LEVELS, "unknown": "label value not in the Muscles_leg table"},
    },
    "voxels": {"Description": "Number of voxels with this label."},
    "volume_ml": {"Description": "Label volume.", "Units": "ml"},
    "slices": {"Description": "Number of axial slices (z of the canonical RAS grid) containing the label."},
    "first_slice": {"Description": "Lowest z index (canonical RAS, 0 = most inferior) containing the label."},
    "last_slice": {"Description": "Highest z index containing the label."},
    "max_csa_cm2": {
        "Description": "Largest cross-sectional area over the axial slices of the "
        "acquired grid (not resliced perpendicular to the muscle).",
        "Units": "cm^2",
    },
    "max_csa_slice": {"Description": "z index of the largest cross-sectional area."},
    "centroid_x_mm": {"Description": "Centroid, RAS world x.", "Units": "mm"},
    "centroid_y_mm": {"Description": "Centroid, RAS world y.", "Units": "mm"},
    "centroid_z_mm": {"Description": "Centroid, RAS world z.", "Units": "mm"},
    "components": {"Description": "Number of 26-connected pieces of the label."},
    "largest_component_fraction": {"Description": "Fraction of the voxels in the largest piece."},
    "ff_mean": {
        "Description": "Mean voxel fat fraction 100*F/(F+W) over the label.",
        "Units": "%",
    },
    "ff_median": {"Description": "Median voxel fat fraction over the label.", "Units": "%"},
    "ff_iqr": {
        "Description": "Inter-quartile range (P75-P25) of the voxel fat fraction.",
        "Units": "%",
    },
    "ff_voxels": {"Description": "Voxels with a defined fat fraction (inside the water/fat field of view)."},
    "ff_eroded_mean": {
        "Description": "Mean fat fraction over the label eroded in-plane.",
        "Units": "%",
    },
    "ff_eroded_median": {
        "Description": "Median fat fraction over the eroded label.",
        "Units": "%",
    },
    "ff_eroded_iqr": {"Description": "Inter-quartile range over the eroded label.", "Units": "%"},
    "ff_eroded_voxels": {"Description": "Voxels of the eroded label with a defined fat fraction."},
}


@dataclass
class ImageSummary:
    """Everything the report shows about one label map."""

    result: ImageResult
    labels_ras: np.ndarray
    volume_ras: np.ndarray | None
    affine_ras: np.ndarray
    zooms_mm: tuple[float, float, float]
    rows: list[dict]
    morph_path: Path
    fat_fraction: FatFractionResult | None
    sidecar: dict
    warnings: list[str] = field(default_factory=list)
    confidence: tuple[dict, dict] | None = None
    fat_source: dict = field(default_factory=dict)
    qc: QCResult | None = None
    qc_note: str = ""
    model_facts: list = field(default_factory=list)


def write_participant_outputs(
    results: list[ImageResult], bids_dir: Path, output_dir: Path, ff_erosion: int,
    models_dir: Path | None = None,
) -> list[Path]:
    """Write the morphometry tables of the images and the subjects' HTML reports.

    Args:
        results: per-image results of one run; "done" and "skipped" ones get a table
            (skipped images are re-read from disk), "failed" ones are listed in the report.
        bids_dir: the BIDS dataset (source images, water/fat images).
        output_dir: the derivatives folder.
        ff_erosion: in-plane erosion (voxels) for the eroded fat-fraction columns; 0 disables
            (the run's ``RunConfig.ff_erosion``).
        models_dir: the models folder (manifest and model cards) for the boxes on what each
            model can and cannot do; None: the boxes say that no card could be read.

    Returns:
        The files written.
    """
    if int(ff_erosion) != ff_erosion or ff_erosion < 0:
        raise ValueError(f"ff_erosion must be a whole number >= 0, got {ff_erosion!r}")
    bids_dir, output_dir = Path(bids_dir), Path(output_dir)
    usable = [r for r in results if r.status in ("done", "skipped") and r.dseg_path is not None]
    failed = [r for r in results if r.status == "failed"]
    written: list[Path] = []
    for subject in sorted({r.image.subject for r in usable + failed}):
        mine = [r for r in usable if r.image.subject == subject]
        known = {Path(r.dseg_path).resolve() for r in mine}
        mine += disk_results(output_dir, bids_dir, subject, skip=known)
        summaries = []
        for result in sorted(mine, key=lambda r: (r.image.session or "", r.image.relpath)):
            summary = summarise_image(result, bids_dir, int(ff_erosion), models_dir)
            written += write_morph_table(summary, bids_dir, output_dir)
            summaries.append(summary)
        target = report_path(output_dir, subject)
        errors = [r for r in failed if r.image.subject == subject]
        atomic_write_text(target, subject_page(subject, summaries, output_dir, errors))
        written.append(target)
        logger.info("wrote %s", target)
    return written


def disk_results(
    output_dir: Path, bids_dir: Path, subject: str, skip: set[Path] = frozenset()
) -> list[ImageResult]:
    """Label maps of a subject already in OUTPUT_DIR as "skipped" results (source: the sidecar)."""
    found = []
    for dseg in label_maps(output_dir, subject):
        if dseg.resolve() in skip:
            continue
        sidecar = sidecar_path(dseg)
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
            source = meta["Sources"][0]
        except (OSError, json.JSONDecodeError, KeyError, IndexError, TypeError):
            logger.warning("%s has no readable sidecar with Sources; left out of the report", dseg)
            continue
        relpath = source.split(":", 2)[-1] if source.startswith("bids:") else source
        entities, _ = parse_entities(Path(relpath))
        image = InputImage(
            subject=entities.get("sub", subject),
            session=entities.get("ses"),
            path=bids_dir / relpath,
            relpath=relpath,
        )
        found.append(ImageResult(image, "skipped", dseg_path=dseg, sidecar_path=sidecar))
    return found


def _read_sidecar(result: ImageResult) -> dict:
    path = result.sidecar_path
    if path is None or not Path(path).exists():
        return {}
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        logger.warning("cannot read %s: %s", path, error)
        return {}


def summarise_image(
    result: ImageResult, bids_dir: Path, ff_erosion: int, models_dir: Path | None = None
) -> ImageSummary:
    """Measures, fat fraction and QC warnings of one label map (re-read from disk if needed).

    Labels that the image's models are known never to produce (``models_dir``'s manifest and
    model cards) are not warned of as missing."""
    warnings: list[str] = []
    if result.labels_ras is not None and result.affine_ras is not None:
        labels = np.asarray(result.labels_ras)
        affine = np.asarray(result.affine_ras, dtype=np.float64)
    else:
        data, geometry = nifti_io.load_canonical(result.dseg_path)
        labels = np.rint(data).astype(np.uint16)
        affine = geometry.ras_affine
    zooms = tuple(float(z) for z in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
    volume = result.volume_ras
    if volume is None:
        try:
            volume, geometry = nifti_io.load_canonical(result.image.path)
            if volume.shape != labels.shape:
                warnings.append(
                    f"source image {result.image.relpath} no longer matches the label map grid"
                )
                volume = None
        except Exception as error:  # noqa: BLE001 - the report shows labels alone then
            warnings.append(f"source image unavailable for the figures: {error}")
            volume = None
    rows = label_morphometry(labels, affine)
    fat = None
    try:
        fat = session_fat_fraction(
            labels,
            affine,
            bids_dir,
            result.image.subject,
            result.image.session,
            ff_erosion,
            result.image.entities,
        )
    except Exception as error:  # noqa: BLE001 - a broken water/fat pair must not lose the table
        logger.debug("fat fraction failure", exc_info=True)
        warnings.append(f"fat fraction not computed: {type(error).__name__}: {error}")
    if fat is not None:
        for row in rows:
            row.update(fat.per_label.get(row["label"], dict.fromkeys(FF_COLUMNS, np.nan)))
        warnings += fat.warnings
    sidecar = _read_sidecar(result)
    if not result.report:
        stored = (sidecar.get("legseg") or {}).get("report") if isinstance(sidecar, dict) else None
        if isinstance(stored, dict):
            result.report = stored  # segmenter report kept in the sidecar by an earlier run
    report = result.report or {}
    models = result.models or (sidecar.get("Models") if isinstance(sidecar, dict) else None) or []
    facts = [model_cards.model_facts(m, models_dir) for m in models if isinstance(m, dict)]
    warnings = (list(report.get("warnings", []))
                + qc.morphometry_warnings(rows, report, model_cards.known_absent(facts))
                + warnings)
    confidence = None
    if result.probseg_path is not None and Path(result.probseg_path).exists():
        try:
            confidence = qc.label_confidence(result.dseg_path, result.probseg_path)
            names = {row["label"]: row["abbreviation"] for row in rows}
            warnings += qc.confidence_warnings(*confidence, names)
        except (OSError, ValueError, json.JSONDecodeError) as error:
            warnings.append(f"probability map not usable for confidence checks: {error}")
    qc_result, qc_note = image_qc_flags(sidecar, labels, volume, zooms, report)
    return ImageSummary(
        result,
        labels,
        volume,
        affine,
        zooms,
        rows,
        morph_path(result.dseg_path),
        fat,
        sidecar,
        warnings,
        confidence,
        fat.source.describe(bids_dir) if fat is not None else {},
        qc_result,
        qc_note,
        facts,
    )


def image_qc_flags(
    sidecar: dict,
    labels_ras: np.ndarray,
    volume_ras: np.ndarray | None,
    zooms_mm: tuple[float, float, float],
    report: dict,
) -> tuple[QCResult | None, str]:
    """The QC flags of one label map: from its sidecar, else computed for the report.

    Args:
        sidecar: the label map's JSON sidecar (``legseg.qc`` written by the participant level).
        labels_ras, volume_ras: (x, y, z) label map and source image in canonical RAS.
        zooms_mm: voxel size (x, y, z) in mm.
        report: the segmenter report (may be empty for outputs of older versions).

    Returns:
        ``(result or None, note)``; the note says where the flags come from when not from
        the sidecar, or why there are none.
    """
    from legseg_tf import masking, qc_flags

    stored = (sidecar.get("legseg") or {}).get("qc") if isinstance(sidecar, dict) else None
    if isinstance(stored, dict) and "flags" in stored:
        try:
            return QCResult.from_dict(stored), ""
        except (KeyError, TypeError, ValueError) as error:
            logger.warning("unreadable QC flags in the sidecar: %s", error)
    elif isinstance(stored, dict) and stored.get("error"):
        return None, f"QC flags not computed by the participant level: {stored['error']}"
    try:
        labels = nifti_io.ras_to_qmri(np.asarray(labels_ras))
        body = (masking.body_mask(nifti_io.ras_to_qmri(np.asarray(volume_ras)))
                if volume_ras is not None else None)
        spacing = (zooms_mm[2], zooms_mm[1], zooms_mm[0])
        result = qc_flags.evaluate(labels, body, spacing, report or {})
    except Exception as error:  # noqa: BLE001 - the report shows the rest then
        logger.debug("QC flag failure", exc_info=True)
        return None, f"QC flags not computed: {type(error).__name__}: {error}"
    return result, "not recorded in the sidecar (earlier version): computed for this report"


def morph_frame(rows: list[dict], with_fat_fraction: bool) -> pd.DataFrame:
    """The morphometry rows as a DataFrame with the fixed column order."""
    columns = list(MORPH_COLUMNS) + (list(FF_COLUMNS) if with_fat_fraction else [])
    frame = pd.DataFrame(rows, columns=columns)
    for column in ("ff_voxels", "ff_eroded_voxels"):
        if column in frame:
            frame[column] = frame[column].astype("Int64")
    return frame


def write_morph_table(summary: ImageSummary, bids_dir: Path, output_dir: Path) -> list[Path]:
    """Write the TSV and its JSON sidecar; return both paths."""
    frame = morph_frame(summary.rows, summary.fat_fraction is not None)
    text = frame.to_csv(
        sep="\t", index=False, na_rep="n/a", float_format="%.6g", lineterminator="\n"
    )
    path = atomic_write_text(summary.morph_path, text)
    meta: dict = {key: COLUMN_DESCRIPTIONS[key] for key in frame.columns}
    meta["Sources"] = [f"bids::{_relative(summary.result.dseg_path, output_dir)}"]
    if summary.fat_fraction is not None:
        meta["FatFraction"] = {
            **summary.fat_fraction.source.describe(bids_dir),
            "ErosionVoxels": summary.fat_fraction.erosion,
            "Erosion": "per label, in-plane (4-neighbourhood within each axial slice)",
            "ResampledToLabelGrid": summary.fat_fraction.resampled,
        }
    sidecar = write_json(sidecar_path(path), meta)
    logger.info("wrote %s (%d labels)", path, len(frame))
    return [path, sidecar]


# --------------------------------------------------------------------------- HTML page


def subject_page(
    subject: str,
    summaries: list[ImageSummary],
    output_dir: Path,
    failed: list[ImageResult] = (),
) -> str:
    """The self-contained HTML report of one subject (``failed``: images that failed)."""
    sessions = sorted({s.result.image.session or "" for s in summaries})
    parts = [f"<h1>legseg report: sub-{html.escape(subject)}</h1>"]
    if failed:
        parts.append("<h2>Failed images</h2>")
        parts.append(
            html.bullet_list(
                [f"{r.image.relpath}: {r.error or 'unknown error'}" for r in failed], "warnings"
            )
        )
    parts.append(qc_box(summaries))
    parts.append(models_box(summaries))
    parts.append(
        '<p class="note">Figures are in the radiological convention: the patient\'s '
        "right (R) is on the left of each image; R/L, A/P and S/I are marked on every "
        "panel (from the image affine). Slices are numbered along the canonical RAS z "
        "axis, 0 = most inferior.</p>"
    )
    anchors = {}
    for session in sessions:
        mine = [x for x in summaries if (x.result.image.session or "") == session]
        for number, summary in enumerate(mine):
            anchors[id(summary)] = f"image-{session or 'none'}-{number}"
    rows = []
    for s in summaries:
        link = f'<a href="#{anchors[id(s)]}">{html.escape(s.result.image.relpath)}</a>'
        method = s.fat_fraction.source.method if s.fat_fraction else "n/a"
        status = "segmented" if s.result.status == "done" else "existing output"
        flags = str(len(s.qc.flags)) if s.qc is not None else "n/a"
        rows.append(
            f'<tr><td class="text">{html.escape(s.result.image.session or "n/a")}</td>'
            f'<td class="text">{link}</td><td class="text">{status}</td>'
            f"<td>{len(s.rows)}</td><td>{flags}</td><td>{len(s.warnings)}</td>"
            f'<td class="text">{html.escape(method)}</td></tr>'
        )
    head = "".join(
        f'<th class="text">{name}</th>'
        if name not in ("labels", "QC flags", "warnings")
        else f"<th>{name}</th>"
        for name in ("session", "image", "status", "labels", "QC flags", "warnings",
                     "fat fraction")
    )
    parts.append("<h2>Overview</h2>")
    parts.append(
        f'<table class="overview"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
    for session in sessions:
        title = f"ses-{session}" if session else "no session"
        parts.append(f'<h2 id="ses-{html.escape(session or "none")}">{html.escape(title)}</h2>')
        for s in summaries:
            if (s.result.image.session or "") == session:
                parts.append(image_section(s, output_dir, anchors[id(s)]))
    return html.page(f"legseg: sub-{subject}", "\n".join(parts))


def qc_box(summaries: list[ImageSummary]) -> str:
    """The "QC flags" box at the top of a subject page: every flag of every image, one line
    each (severity, code, message), the checks that could not run, or "no QC flag raised"."""
    parts = ['<div class="qc-box" id="qc-flags">', "<h2>QC flags</h2>"]
    if not summaries:
        parts.append('<p class="note">No label map to check.</p>')
    for s in summaries:
        parts.append(f'<p class="qc-image">{html.escape(s.result.image.relpath)}</p>')
        if s.qc is None:
            parts.append(f'<p class="note">{html.escape(s.qc_note or "not recorded")}</p>')
            continue
        if s.qc.flags:
            items = "".join(
                f'<li class="qc-{html.escape(f.severity)}" data-code="{html.escape(f.code)}">'
                f'<span class="qc-severity">{html.escape(f.severity.upper())}</span> '
                f"<code>{html.escape(f.code)}</code>: {html.escape(f.message)}</li>"
                for f in s.qc.flags
            )
            parts.append(f'<ul class="qc-flags">{items}</ul>')
        else:
            parts.append('<p class="ok qc-none">no QC flag raised</p>')
        skipped = [(c, state) for c, state in s.qc.checks.items()
                   if state.startswith("not available")]
        notes = [f"{code}: {state}" for code, state in skipped]
        if s.qc_note:
            notes.append(s.qc_note)
        if notes:
            parts.append('<p class="note">' + html.escape("; ".join(notes)) + "</p>")
    parts.append("</div>")
    return "\n".join(parts)


def models_box(summaries: list[ImageSummary]) -> str:
    """The "What these networks can and cannot do" section: one box per model used by the
    subject's label maps, from its model card or manifest entry (training data, unseen-subject
    Dice, labels it never segments, known limits), or a note saying what could not be read."""
    parts = ['<h2 id="models">What these networks can and cannot do</h2>']
    facts: dict[str, model_cards.ModelFacts] = {}
    for summary in summaries:
        for fact in summary.model_facts:
            facts.setdefault(fact.id, fact)
    if not facts:
        parts.append('<p class="note">No model is recorded for these label maps.</p>')
    for fact in facts.values():
        parts.append(model_box(fact))
    return "\n".join(parts)


def _lines(lines: list[str], missing: str) -> str:
    if not lines:
        return f'<span class="note">{html.escape(missing)}</span>'
    if len(lines) == 1:
        return html.escape(lines[0])
    return html.bullet_list(lines)


def model_box(fact: model_cards.ModelFacts) -> str:
    """One model's box (see :func:`models_box`)."""
    from legseg_tf.labels import BY_INDEX

    if fact.never_labels:
        stems = {}
        for value in sorted(fact.never_labels):
            label = BY_INDEX[value]
            stems.setdefault(label.display_name, label.stem)
        names = ", ".join(f"{name} ({stem})" for name, stem in stems.items())
        never = (f'<span class="never-labels" data-labels="'
                 f'{" ".join(str(v) for v in sorted(fact.never_labels))}">'
                 f"{html.escape(names)}</span>"
                 f'<br><span class="note">this network never produces these labels (from its '
                 f"{html.escape(fact.never_source)}); their absence is not warned of on each "
                 "image.</span>")
    elif fact.label_table is None and fact.role == "classifier":
        never = '<span class="note">not a segmentation network (slice classifier)</span>'
    elif fact.never_source:
        never = '<span class="note">none: every label of its table can be produced</span>'
    else:
        never = '<span class="note">not documented</span>'
    title = fact.validation_title or "Unseen-subject Dice"
    source = (f"model card {fact.card}" if fact.card and not any(
        "card" in n for n in fact.notes) else "")
    rows = [
        ("Training data", _lines(fact.training, "not documented")),
        ("Unseen-subject Dice", (f'<span class="note">{html.escape(title)}</span><br>'
                                 if fact.validation else "")
         + _lines(fact.validation, "not documented")),
        ("Labels never segmented", never),
    ]
    if fact.limits:
        rows.append(("Known limits", _lines(fact.limits, "")))
    notes = ([source] if source else []) + fact.notes
    if notes:
        rows.append(("Source", html.escape("; ".join(notes))))
    items = "".join(f"<dt>{html.escape(k)}</dt><dd>{v}</dd>" for k, v in rows)
    table = f", training table {fact.label_table}" if fact.label_table else ""
    return (f'<div class="model-box" data-model="{html.escape(fact.id)}">'
            f"<h3>{html.escape(fact.id)} <span class=\"note\">({html.escape(fact.role)}"
            f"{html.escape(table)})</span></h3><dl>{items}</dl></div>")


def _relative(path: Path, output_dir: Path) -> str:
    """``path`` relative to ``output_dir`` (as named, else with links resolved), else as is."""
    for resolve in (False, True):
        try:
            a, b = Path(path).absolute(), Path(output_dir).absolute()
            if resolve:
                a, b = a.resolve(), b.resolve()
            return a.relative_to(b).as_posix()
        except ValueError:
            continue
    return str(path)


def _link_or_text(path: Path | None, output_dir: Path) -> object:
    """A link (relative to the report at the output root) to an existing file, else its
    relative path as text, or "n/a"."""
    if path is None:
        return "n/a"
    relative = _relative(path, output_dir)
    return html.link(relative) if Path(path).exists() else relative


def device_text(legseg_meta: dict, report: dict) -> str:
    """The device the networks ran on, as the sidecar records it (``legseg.device``: what
    ``configure_device`` chose), never the requested "auto"."""
    device = legseg_meta.get("device")
    if isinstance(device, dict) and device.get("device"):
        parts = [str(device["device"]).upper()]
        if device.get("gpus"):
            parts.append(", ".join(str(g) for g in device["gpus"]))
        if device.get("intra_op_threads"):
            parts.append(f"{device['intra_op_threads']} intra-op thread(s)")
        if device.get("tensorflow"):
            parts.append(f"TensorFlow {device['tensorflow']}")
        return ", ".join(parts)
    value = device if isinstance(device, str) and device else (report or {}).get("device")
    if isinstance(value, str) and value and value != "auto":
        return value
    return "not recorded" + (f" (requested: {value})" if value else "")


def _figure_id(anchor: str, name: str) -> str:
    return f"fig-{anchor}-{name}"


def image_section(s: ImageSummary, output_dir: Path, anchor: str) -> str:
    """Report section of one label map."""
    result, report = s.result, s.result.report or {}
    legseg_meta = s.sidecar.get("legseg", {}) if isinstance(s.sidecar.get("legseg"), dict) else {}
    dseg = Path(result.dseg_path)
    probseg = result.probseg_path or probseg_path(output_dir, result.image)
    tables = [_link_or_text(s.morph_path, output_dir),
              _link_or_text(sidecar_path(s.morph_path), output_dir)]
    parts = [
        f'<section class="image" id="{html.escape(anchor)}">',
        f"<h3>{html.escape(result.image.relpath)}</h3>",
        html.key_values(
            [
                (
                    "status",
                    "segmented in this run"
                    if result.status == "done"
                    else "existing label map (not re-segmented)",
                ),
                ("label map", _link_or_text(dseg, output_dir)),
                ("label map sidecar", _link_or_text(result.sidecar_path, output_dir)),
                ("probability map", _link_or_text(probseg, output_dir)
                 if Path(probseg).exists() else "not written"),
                ("tables", html.Raw(", ".join(str(t) if isinstance(t, html.Raw)
                                              else html.escape(str(t)) for t in tables))),
                ("label table", _link_or_text(Path(output_dir) / "dseg.tsv", output_dir)),
                ("grid (x, y, z)", " x ".join(str(n) for n in s.labels_ras.shape)),
                ("voxel size (mm)", " x ".join(f"{z:.3g}" for z in s.zooms_mm)),
                ("device", device_text(legseg_meta, report)),
            ]
        ),
    ]
    parts.append("<h4>Warnings</h4>")
    parts.append(
        html.bullet_list(s.warnings, "warnings")
        if s.warnings
        else '<p class="ok">No warnings.</p>'
    )
    parts.append("<h4>Side decision</h4>" + side_section(report, result.status))
    present = [row["label"] for row in s.rows]
    volume = s.volume_ras if s.volume_ras is not None else np.zeros(s.labels_ras.shape, np.float32)
    window, box = plotting.window_and_box(volume, s.labels_ras)  # shared by all figures
    parts += slice_figures(s, volume, anchor, window, box)
    parts.append(html.legend(present))
    parts += reformat_figures(s, volume, anchor, window, box)
    parts.append(
        "<h4>Body position and regions</h4>"
        + positions_section(report, s.labels_ras.shape[2], result.status)
    )
    if s.confidence is not None:
        from legseg_tf.reports.qc import LOW_CONFIDENCE

        parts.append(
            "<h4>Confidence per slice</h4>"
            + html.png_img(
                plotting.confidence_figure(s.confidence[1], s.labels_ras.shape[2], LOW_CONFIDENCE),
                "mean probability per slice",
            )
        )
    parts.append("<h4>Muscles</h4>")
    columns = [
        "label",
        "abbreviation",
        "name",
        "voxels",
        "volume_ml",
        "slices",
        "max_csa_cm2",
        "components",
    ]
    if s.fat_fraction is not None:
        columns += [
            "ff_mean",
            "ff_median",
            "ff_iqr",
            "ff_eroded_mean",
            "ff_eroded_median",
            "ff_eroded_iqr",
        ]
    parts.append(
        html.table(s.rows, columns, text_columns=["abbreviation", "name"], css_class="muscles")
    )
    if s.fat_fraction is not None:
        parts.append(
            '<p class="note">Fat fraction in %: '
            + html.escape(
                "; ".join(f"{k}: {v}" for k, v in s.fat_source.items())
                + f"; eroded columns: {s.fat_fraction.erosion} voxel(s) in-plane"
                + (
                    "; water/fat interpolated onto the label grid"
                    if s.fat_fraction.resampled
                    else ""
                )
            )
            + "</p>"
        )
    parts.append("<h4>Models and software</h4>" + models_section(result, s.sidecar, legseg_meta))
    timings = report.get("timings_s") or legseg_meta.get("timings_s") or {}
    parts.append(
        "<h4>Timings (s)</h4>"
        + (
            html.key_values(list(timings.items()))
            if timings
            else '<p class="note">not recorded</p>'
        )
    )
    parts.append("</section>")
    return "\n".join(parts)


def slice_figures(s: ImageSummary, volume: np.ndarray, anchor: str,
                  window: tuple[float, float] | None = None,
                  box: tuple[slice, slice, slice] | None = None) -> list[str]:
    """Representative axial slices as image | outline pairs (filled variant folded), then the
    outlined overview mosaic; every figure opens at full resolution on a click. ``window``,
    ``box``: :func:`plotting.window_and_box` of the image (computed when not given)."""
    relpath = s.result.image.relpath
    picks = plotting.representative_slices(s.labels_ras)
    scale = plotting.px_per_mm(
        s.labels_ras.shape[0] * s.zooms_mm[0], plotting.DETAIL_TARGET_PX,
        plotting.DETAIL_MIN_PX_PER_MM, plotting.DETAIL_MAX_PX)
    repeats = plotting.repeats_for((s.zooms_mm[1], s.zooms_mm[0]), scale)
    (low, high), box = plotting.window_and_box(volume, s.labels_ras, window, box)
    parts = [
        f"<h4>Representative slices {', '.join(str(k) for k in picks)}</h4>",
        '<p class="note">Each slice twice: the image alone and the image with the labels as '
        "outlines (each label's edge in its colour; the palette gives both sides of a muscle "
        f"related colours). Drawn voxel-exact, {repeats[1]} x {repeats[0]} pixels per voxel: "
        "click a figure to see it at full resolution.</p>",
    ]
    figures = []
    filled = []
    pairs = plotting.axial_pairs(volume, s.labels_ras, s.zooms_mm, picks,
                                 ("outline", "filled"), box, (low, high))
    for k in picks:
        figures.append(html.zoom_figure(
            pairs[k, "outline"], f"axial slice {k} of {relpath}: image and label outlines",
            _figure_id(anchor, f"z{k}"), 'data-overlay="outline" data-view="axial"'))
        filled.append(html.zoom_figure(
            pairs[k, "filled"], f"axial slice {k} of {relpath}: image and filled labels",
            _figure_id(anchor, f"z{k}-filled"), 'data-overlay="filled" data-view="axial"'))
    parts.append(f'<div class="figures">{"".join(figures)}</div>')
    parts.append(
        '<details class="filled"><summary>Filled labels on the same slices</summary>'
        f'<div class="figures">{"".join(filled)}</div></details>'
    )
    slices = plotting.mosaic_slices(s.labels_ras)
    parts.append(
        f"<h4>Axial overview: slices {slices[0]}-{slices[-1]}"
        f"{f', every {slices[1] - slices[0]}' if len(slices) > 1 else ''}</h4>"
    )
    parts.append(html.zoom_figure(
        plotting.axial_mosaic(volume, s.labels_ras, s.zooms_mm, slices,
                              window=(low, high), box=box),
        f"axial mosaic of {relpath} (label outlines)", _figure_id(anchor, "mosaic"),
        'data-overlay="outline" data-view="mosaic"'))
    return parts


def reformat_figures(s: ImageSummary, volume: np.ndarray, anchor: str,
                     window: tuple[float, float] | None = None,
                     box: tuple[slice, slice, slice] | None = None) -> list[str]:
    """Coronal (image | outlines) and sagittal (one per leg) reformats, or why there are none.
    ``window``, ``box``: as for :func:`slice_figures`."""
    relpath = s.result.image.relpath
    nz = s.labels_ras.shape[2]
    parts = ["<h4>Coronal and sagittal reformats</h4>"]
    if not plotting.reformat_possible(s.labels_ras.shape):
        parts.append(
            f'<p class="note">Not shown: the stack has {nz} axial slice(s); a reformat needs '
            f"at least {plotting.MIN_REFORMAT_SLICES}.</p>"
        )
        return parts
    parts.append(
        f'<p class="note">Through the labels ({nz} slices of {s.zooms_mm[2]:.3g} mm): '
        "coronal as image | outlines, sagittal through each leg\'s labels.</p>"
    )
    coronal, _ = plotting.coronal_figure(volume, s.labels_ras, s.zooms_mm,
                                         window=window, box=box)
    parts.append(html.zoom_figure(
        coronal, f"coronal reformat of {relpath}: image and label outlines",
        _figure_id(anchor, "coronal"), 'data-overlay="outline" data-view="coronal"'))
    sagittal, _ = plotting.sagittal_figure(volume, s.labels_ras, s.zooms_mm,
                                           window=window, box=box)
    if sagittal is not None:
        parts.append(html.zoom_figure(
            sagittal, f"sagittal reformats of {relpath} (label outlines)",
            _figure_id(anchor, "sagittal"), 'data-overlay="outline" data-view="sagittal"'))
    return parts


def side_verdict(report: dict) -> tuple[str, bool]:
    """One line on the side decision and whether the classifier and the geometry agree;
    ``(text, disagree)``."""
    side = report.get("side") or {}
    geometry = side.get("geometry") or {}
    classifier = side.get("classifier")
    conclusive = geometry.get("two_legs") or geometry.get("confident", True)
    geometric = (
        "Both"
        if geometry.get("two_legs")
        else {"L": "Left", "R": "Right"}.get(
            geometry.get("single_side"), geometry.get("single_side")
        )
        if conclusive
        else None
    )
    if classifier is None:
        check = "no classifier vote: decided from geometry alone"
    elif geometric is None:
        check = f"classifier {classifier}; geometry not conclusive"
    elif classifier == geometric:
        check = f"agree ({classifier})"
    else:
        check = f"DISAGREE: classifier {classifier}, geometry {geometric}"
    words = {"Both": "both legs", "Left": "the left leg only", "Right": "the right leg only"}
    decision = side.get("decision")
    text = f"{words.get(decision, decision or 'undecided')}"
    if side.get("source"):
        text += f", decided by {side['source']}"
    text += f"; classifier and geometry: {check}"
    return text, check.startswith("DISAGREE")


def side_section(report: dict, status: str = "done") -> str:
    """Side decision as a one-line verdict, its sources and cross-check folded below."""
    side = report.get("side")
    if not side:
        return '<p class="note">' + _not_recorded(status) + "</p>"
    geometry = side.get("geometry") or {}
    verdict, disagree = side_verdict(report)
    pairs = [
        ("decision", side.get("decision")),
        ("decided by", side.get("source")),
        ("classifier vote", side.get("classifier")),
        ("midline", side.get("midline")),
    ]
    pairs += [(f"geometry: {k}", v) for k, v in geometry.items()]
    split = report.get("split") or {}
    if split:
        pairs.append(("cut column (QMRITools layout)", split.get("cut_column")))
    css = "verdict disagree" if disagree else "verdict"
    return (f'<p class="{css}">{html.escape(verdict)}</p>'
            f'<details class="side-details"><summary>details of the side decision</summary>'
            f"{html.key_values(pairs)}</details>")


def _not_recorded(status: str) -> str:
    if status == "done":
        return "Not reported by the segmenter."
    return "Not recorded: this label map comes from an earlier run (only its sidecar is read)."


def positions_section(report: dict, n_slices: int, status: str = "done") -> str:
    """Per-slice positions figure and region ranges table."""
    from legseg_tf.body_position import POSITION_CLASSES

    ranges = report.get("region_ranges") or {}
    positions = report.get("positions")
    parts = []
    if positions:
        parts.append(
            html.png_img(
                plotting.positions_figure(positions, ranges, n_slices, POSITION_CLASSES),
                "per-slice body positions",
            )
        )
        votes = positions.get("side_votes")
        if votes:
            parts.append(
                '<p class="note">Classifier side votes: '
                + html.escape(", ".join(f"{k} {v}" for k, v in sorted(votes.items())))
                + "</p>"
            )
    elif report:
        parts.append('<p class="note">No per-slice classification (single region segmented).</p>')
    if ranges:
        rows = [
            {"region": k, "first slice": v[0], "last slice": v[1]}
            for k, v in sorted(ranges.items())
        ]
        parts.append(
            html.table(rows, ["region", "first slice", "last slice"], text_columns=["region"])
        )
    if not parts:
        parts.append('<p class="note">' + _not_recorded(status) + "</p>")
    return "\n".join(parts)


def models_section(result: ImageResult, sidecar: dict, legseg_meta: dict) -> str:
    """Models (id, role, checksum) and software versions."""
    models = result.models or sidecar.get("Models") or []
    rows = [
        {
            "id": m.get("id"),
            "role": m.get("role"),
            "sha256": (m.get("sha256") or "")[:16] + ("..." if m.get("sha256") else ""),
        }
        for m in models
    ]
    parts = [
        html.table(rows, ["id", "role", "sha256"], text_columns=["id", "role", "sha256"])
        if rows
        else '<p class="note">not recorded</p>'
    ]
    software = legseg_meta.get("software") or {}
    if not software:
        software = software_versions()
    parts.append(html.key_values(sorted(software.items())))
    parts.append(f'<p class="note">device: '
                 f"{html.escape(device_text(legseg_meta, result.report or {}))}</p>")
    return "\n".join(parts)
