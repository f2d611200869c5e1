"""Group level: gather the participant outputs of OUTPUT_DIR into group tables and a report.

Reads only what the participant level wrote: the label maps
``sub-*/[ses-*/]<datatype>/*_desc-muscles_dseg.nii.gz`` and their ``*_desc-muscles_morph.tsv``
tables (a missing table is recomputed from the label map, without fat fraction). Writes, at
the output root, replacing earlier versions (so re-running after more participants updates
everything)::

    group_muscles.tsv         long format: one row per image x label
    group_muscles_wide.tsv    one row per image, columns <ABBR>_<measure>
    group_asymmetry.tsv       one row per image x bilateral muscle: left/right asymmetry
    group_qc_flags.tsv        one row per QC flag raised (from the label maps' sidecars)
    group.html                distributions, asymmetry, outliers, links to subject reports

Outliers: for each label and measure (volume, maximum cross-sectional area, median fat
fraction) across images, the robust z-score ``0.6745 * (x - median) / MAD`` (Iglewicz and
Hoaglin); ``|z| > 3.5`` flags the row. Needs at least :data:`MIN_IMAGES_FOR_Z` values and a
non-zero MAD, else z is n/a.

Asymmetry: ``100 * (L - R) / ((L + R) / 2)`` in % for volume and cross-sectional area;
``L - R`` in percentage points for fat fraction.

QC flags (:mod:`legseg_tf.qc_flags`) are read from each label map's sidecar (``legseg.qc``);
the wide table counts them per image (``qc_flags``, ``qc_fail``; n/a when not recorded).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from legseg_tf import derivatives
from legseg_tf.derivatives import morph_path
from legseg_tf.bids_inputs import parse_entities
from legseg_tf.fatfraction import FF_COLUMNS
from legseg_tf.morphometry import MORPH_COLUMNS

logger = logging.getLogger(__name__)

#: Key columns of every group table (BIDS participants.tsv/sessions.tsv names).
ID_COLUMNS = ("participant_id", "session_id", "source")
QC_FLAG_COLUMNS = ID_COLUMNS + ("code", "severity", "message", "structures")
QC_COUNT_COLUMNS = ("qc_flags", "qc_fail")
#: Measures checked for outliers and spread into the wide table.
OUTLIER_MEASURES = ("volume_ml", "max_csa_cm2", "ff_median")
WIDE_MEASURES = ("volume_ml", "max_csa_cm2", "ff_median", "ff_eroded_median")
ROBUST_Z_LIMIT = 3.5
MIN_IMAGES_FOR_Z = 3
#: Scale factor making the MAD a consistent estimator of the standard deviation (normal data).
MAD_SCALE = 0.6745


def image_table(dseg_path: Path) -> pd.DataFrame:
    """The morphometry rows of one label map with participant_id/session_id/source columns."""
    table_path = morph_path(dseg_path)
    if table_path.exists():
        frame = pd.read_csv(table_path, sep="\t", na_values=["n/a"], keep_default_na=False)
    else:
        from legseg_tf import nifti_io
        from legseg_tf.morphometry import label_morphometry

        logger.warning(
            "%s missing; measuring %s without fat fraction", table_path.name, dseg_path.name
        )
        data, geometry = nifti_io.load_canonical(dseg_path)
        frame = pd.DataFrame(
            label_morphometry(np.rint(data).astype(np.uint16), geometry.ras_affine),
            columns=list(MORPH_COLUMNS),
        )
    _english_names(frame)
    for column, value in reversed(image_ids(dseg_path).items()):
        frame.insert(0, column, value)
    return frame


def _english_names(frame: pd.DataFrame) -> None:
    """Set ``name`` and ``muscle`` from the label value (English spelling), so tables of
    earlier versions, written with QMRITools' spellings ("Satorius"), group with new ones."""
    from legseg_tf.labels import BY_INDEX

    if "label" not in frame or not len(frame):
        return
    known = frame["label"].map(lambda v: BY_INDEX.get(int(v)) if pd.notna(v) else None)
    mask = known.notna()
    if "name" in frame:
        frame.loc[mask, "name"] = known[mask].map(lambda e: e.display_full_name)
    if "muscle" in frame:
        frame.loc[mask, "muscle"] = known[mask].map(lambda e: e.display_name)


def image_ids(dseg_path: Path) -> dict[str, str]:
    """participant_id, session_id ("n/a" without) and source of a label map, from its name."""
    entities, _ = parse_entities(dseg_path)
    return {
        "participant_id": f"sub-{entities.get('sub', '')}",
        "session_id": f"ses-{entities['ses']}" if "ses" in entities else "n/a",
        "source": derivatives.dseg_source_stem(dseg_path),
    }


def image_qc(dseg_path: Path) -> tuple[dict, list[dict]]:
    """QC flag counts of one label map and one row per flag, from its JSON sidecar.

    Returns:
        ``(counts, rows)``: counts has the ID columns and ``qc_flags``/``qc_fail`` (NaN when
        the sidecar records no QC flags); rows follow :data:`QC_FLAG_COLUMNS`.
    """
    import json

    ids = image_ids(dseg_path)
    sidecar = derivatives.sidecar_path(dseg_path)
    try:
        qc = json.loads(sidecar.read_text(encoding="utf-8")).get("legseg", {}).get("qc")
    except (OSError, ValueError, AttributeError) as error:
        logger.warning("cannot read the QC flags of %s: %s", dseg_path.name, error)
        qc = None
    if not isinstance(qc, dict) or not isinstance(qc.get("flags"), list):
        return {**ids, "qc_flags": np.nan, "qc_fail": np.nan}, []
    rows = [
        {**ids, "code": f.get("code"), "severity": f.get("severity"),
         "message": f.get("message"), "structures": ";".join(f.get("structures") or [])}
        for f in qc["flags"] if isinstance(f, dict)
    ]
    counts = {**ids, "qc_flags": len(rows), "qc_fail": sum(r["severity"] == "fail" for r in rows)}
    return counts, rows


def robust_z(values: pd.Series) -> pd.Series:
    """Robust z-scores ``0.6745 (x - median) / MAD``; NaN if too few values or MAD = 0."""
    x = values.astype(float)
    finite = x[np.isfinite(x)]
    if finite.size < MIN_IMAGES_FOR_Z:
        return pd.Series(np.nan, index=values.index)
    median = finite.median()
    mad = (finite - median).abs().median()
    if not mad > 0:
        return pd.Series(np.nan, index=values.index)
    return MAD_SCALE * (x - median) / mad


def long_table(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate per-image tables; add robust z-scores per label and an outlier flag."""
    table = pd.concat(frames, ignore_index=True)
    for column in FF_COLUMNS:
        if column not in table:
            table[column] = np.nan
    flags = pd.Series(False, index=table.index)
    for measure in OUTLIER_MEASURES:
        z = table.groupby("label")[measure].transform(robust_z)
        table[f"{measure}_robust_z"] = z
        flags |= z.abs() > ROBUST_Z_LIMIT
    table["outlier"] = flags
    return table


def wide_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per image; columns ``<abbreviation>_<measure>`` ordered by label value."""
    keys = list(ID_COLUMNS)
    images = table[keys].drop_duplicates().reset_index(drop=True)
    order = table[["label", "abbreviation"]].drop_duplicates().sort_values("label")
    measures = [m for m in WIDE_MEASURES if table[m].notna().any()]
    pivot = table.pivot_table(
        index=keys, columns="abbreviation", values=measures, aggfunc="first", dropna=False
    )
    columns = []
    for abbreviation in order["abbreviation"]:
        for measure in measures:
            if (measure, abbreviation) in pivot.columns:
                columns.append((measure, abbreviation))
    pivot = pivot[columns]
    pivot.columns = [f"{abbreviation}_{measure}" for measure, abbreviation in columns]
    return images.merge(pivot.reset_index(), on=keys, how="left")


def asymmetry_table(table: pd.DataFrame) -> pd.DataFrame:
    """Left/right asymmetry per image and bilateral muscle (see the module docstring)."""
    sided = table[table["side"].isin(["L", "R"])]
    keys = list(ID_COLUMNS) + ["muscle"]
    left = sided[sided["side"] == "L"].set_index(keys)
    right = sided[sided["side"] == "R"].set_index(keys)
    both = left.add_suffix("_left").join(right.add_suffix("_right"), how="inner")
    out = pd.DataFrame(index=both.index)
    for measure in ("volume_ml", "max_csa_cm2"):
        left_v = both[f"{measure}_left"].astype(float)
        right_v = both[f"{measure}_right"].astype(float)
        out[f"{measure}_left"], out[f"{measure}_right"] = left_v, right_v
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"{measure}_asymmetry_pct"] = (
                100.0 * (left_v - right_v) / ((left_v + right_v) / 2.0)
            )
    if "ff_median_left" in both:
        left_v = both["ff_median_left"].astype(float)
        right_v = both["ff_median_right"].astype(float)
        out["ff_median_left"], out["ff_median_right"] = left_v, right_v
        out["ff_median_difference"] = left_v - right_v
    return out.reset_index()


def write_tsv(frame: pd.DataFrame, path: Path) -> Path:
    """Write a TSV atomically with n/a for missing values."""
    text = frame.to_csv(
        sep="\t", index=False, na_rep="n/a", float_format="%.6g", lineterminator="\n"
    )
    return derivatives.atomic_write_text(path, text)


def run_group(output_dir: Path, include_failed_qc: bool = False) -> int:
    """Build the group tables and page from OUTPUT_DIR; return the exit code.

    Images with a QC flag of severity "fail" (e.g. ``not_anatomy``, ``low_confidence``) are
    left out of the statistics unless ``include_failed_qc`` (they stay listed in
    ``group_qc_flags.tsv`` and on the page). A label map that cannot be read is named on the
    page and in the log, and the exit code is 1 (the others are still gathered).
    """
    output_dir = Path(output_dir)
    maps = derivatives.label_maps(output_dir) if output_dir.is_dir() else []
    if not maps:
        logger.warning(
            "no participant outputs (*%s) in %s: nothing to do (run the participant level first)",
            derivatives.DSEG_ENDING, output_dir,
        )
        return 0
    frames, qc_counts, qc_rows, unreadable, left_out = [], [], [], [], []
    for dseg in maps:
        try:
            frame = image_table(dseg)
        except Exception as error:  # noqa: BLE001 - one unreadable file must not stop the group
            reason = f"{type(error).__name__}: {error}".splitlines()[0]
            logger.error("cannot read %s: %s", dseg, reason)
            unreadable.append((dseg.relative_to(output_dir).as_posix(), reason))
            continue
        counts, rows = image_qc(dseg)
        qc_counts.append(counts)
        qc_rows += rows
        if not include_failed_qc and pd.notna(counts["qc_fail"]) and counts["qc_fail"] > 0:
            left_out.append(dseg.relative_to(output_dir).as_posix())
            continue
        frames.append(frame)
    for name in left_out:
        logger.warning("%s has a QC fail flag: left out of the group statistics "
                       "(--include-failed-qc keeps it)", name)
    status = 1 if unreadable else 0
    frames = [f for f in frames if len(f)]
    if not frames:
        logger.warning("the participant outputs in %s hold no usable labels: no group tables",
                       output_dir)
        if unreadable or left_out:  # still say which images were left out, and why
            from legseg_tf.reports.html import page

            write_tsv(pd.DataFrame(qc_rows, columns=list(QC_FLAG_COLUMNS)),
                      output_dir / derivatives.GROUP_QC_FLAGS_TSV)
            body = ("<h1>legseg group report</h1><p>No image is in the group statistics: the "
                    "tables are not written.</p>")
            derivatives.atomic_write_text(output_dir / derivatives.GROUP_HTML, _with_exclusions(
                page("legseg group report", body), unreadable, left_out))
        return status
    table = long_table(frames)
    counts = pd.DataFrame(qc_counts, columns=list(ID_COLUMNS + QC_COUNT_COLUMNS))
    for column in QC_COUNT_COLUMNS:
        counts[column] = counts[column].astype("Int64")
    wide = wide_table(table).merge(counts, on=list(ID_COLUMNS), how="left")
    wide = wide[list(ID_COLUMNS + QC_COUNT_COLUMNS)
                + [c for c in wide.columns if c not in ID_COLUMNS + QC_COUNT_COLUMNS]]
    flags = pd.DataFrame(qc_rows, columns=list(QC_FLAG_COLUMNS))
    asymmetry = asymmetry_table(table)
    written = [
        write_tsv(table, output_dir / derivatives.GROUP_LONG_TSV),
        write_tsv(wide, output_dir / derivatives.GROUP_WIDE_TSV),
        write_tsv(asymmetry, output_dir / derivatives.GROUP_ASYMMETRY_TSV),
        write_tsv(flags, output_dir / derivatives.GROUP_QC_FLAGS_TSV),
    ]
    from legseg_tf.reports.group_report import group_page

    page = group_page(table, asymmetry, output_dir, ROBUST_Z_LIMIT, counts, flags)
    written.append(derivatives.atomic_write_text(output_dir / derivatives.GROUP_HTML,
                                     _with_exclusions(page, unreadable, left_out)))
    n_images = len(wide)
    n_outliers = int(table["outlier"].sum())
    logger.info(
        "group level: %d image(s) of %d participant(s), %d outlier row(s), %d QC flag(s); wrote %s",
        n_images,
        table["participant_id"].nunique(),
        n_outliers,
        len(flags),
        ", ".join(p.name for p in written),
    )
    return status


def _with_exclusions(page: str, unreadable: list[tuple[str, str]], left_out: list[str]) -> str:
    """The group page with a box naming the unreadable label maps and the images left out of
    the statistics for a QC fail flag, right under its title."""
    import html

    parts = []
    if unreadable:
        items = "".join(f"<li>{html.escape(name)}: {html.escape(reason)}</li>"
                        for name, reason in unreadable)
        parts.append(f'<div class="qc-fail" id="unreadable"><h2>Unreadable label maps '
                     f"({len(unreadable)})</h2><p>Not in the tables below:</p><ul>{items}</ul></div>")
    if left_out:
        items = "".join(f"<li>{html.escape(name)}</li>" for name in left_out)
        parts.append(f'<div class="qc-fail" id="left-out"><h2>Left out for a QC fail flag '
                     f"({len(left_out)})</h2><p>Not in the statistics (rerun the group level with "
                     f"--include-failed-qc to keep them):</p><ul>{items}</ul></div>")
    if not parts:
        return page
    title = "<h1>legseg group report</h1>"
    if title in page:
        return page.replace(title, title + "".join(parts), 1)
    return page.replace("<body>", "<body>" + "".join(parts), 1)
