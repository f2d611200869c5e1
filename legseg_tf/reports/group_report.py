"""The group page: per-muscle distributions, left/right asymmetry, outliers, subject links."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from legseg_tf import derivatives
from legseg_tf.reports import html, plotting

MEASURE_TITLES = {
    "volume_ml": "Volume (ml)",
    "max_csa_cm2": "Maximum cross-sectional area (cm\u00b2)",
    "ff_median": "Median fat fraction (%)",
    "ff_eroded_median": "Median fat fraction, eroded label (%)",
}


def _report(output_dir: Path, participant: str) -> Path:
    """The participant report of ``sub-<label>`` (:func:`legseg_tf.derivatives.report_path`)."""
    return derivatives.report_path(Path(output_dir), participant.removeprefix("sub-"))


def group_page(table: pd.DataFrame, asymmetry: pd.DataFrame, output_dir: Path,
               robust_z_limit: float, qc_counts: pd.DataFrame | None = None,
               qc_flags: pd.DataFrame | None = None) -> str:
    """The self-contained group HTML page.

    Args:
        table: long table from :func:`legseg_tf.group.long_table`.
        asymmetry: table from :func:`legseg_tf.group.asymmetry_table`.
        output_dir: the derivatives folder (for links to existing subject reports).
        robust_z_limit: |robust z| above which a muscle volume is flagged as an outlier.
        qc_counts: per image ``qc_flags``/``qc_fail`` counts (``legseg_tf.group.image_qc``).
        qc_flags: one row per QC flag (``legseg_tf.group.QC_FLAG_COLUMNS``).
    """

    muscles = table[table["region"].isin(["lower_leg", "upper_leg", "hip"])]
    images = table[["participant_id", "session_id", "source"]].drop_duplicates()
    parts = [
        "<h1>legseg group report</h1>",
        f"<p>{images['participant_id'].nunique()} participant(s), {len(images)} image(s), "
        f"{muscles['label'].nunique()} muscle label(s). Tables: "
        + ", ".join(f'<a href="{name}">{name}</a>' for name in (
            derivatives.GROUP_LONG_TSV, derivatives.GROUP_WIDE_TSV,
            derivatives.GROUP_ASYMMETRY_TSV)
            + ((derivatives.GROUP_QC_FLAGS_TSV,) if qc_flags is not None else ()))
        + ".</p>",
    ]
    if qc_flags is not None:
        parts.append(qc_summary(qc_counts, qc_flags, output_dir))
    parts.append("<h2>Participants</h2>")
    rows = []
    for participant, group in images.groupby("participant_id", sort=True):
        report = _report(output_dir, participant)
        link = (
            f'<a href="{html.escape(report.name)}">{html.escape(participant)}</a>'
            if report.exists()
            else html.escape(participant)
        )
        subset = table[table["participant_id"] == participant]
        flags = _participant_flags(qc_counts, participant)
        rows.append(
            f'<tr><td class="text">{link}</td><td>{len(group)}</td>'
            f"<td>{int(subset['outlier'].sum())}</td><td>{flags}</td></tr>"
        )
    parts.append(
        '<table class="participants"><thead><tr><th class="text">participant</th>'
        "<th>images</th><th>outlier rows</th><th>QC flags (fail)</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )

    parts.append("<h2>Per-muscle summary</h2>")
    parts.append(summary_table(muscles, asymmetry))
    parts.append("<h2>Per-muscle distributions</h2>")
    parts.append(
        '<p class="note">Boxes: quartiles and median; whiskers 1.5 IQR; one point per '
        f"image, red = outlier (|robust z| &gt; {robust_z_limit}).</p>"
    )
    for measure, title in MEASURE_TITLES.items():
        if measure not in muscles or not np.isfinite(muscles[measure].astype(float)).any():
            continue
        z_column = f"{measure}_robust_z"
        highlight = muscles[z_column].abs() > robust_z_limit if z_column in muscles else None
        parts.append(f"<h3>{html.escape(title)}</h3>")
        parts.append(
            html.png_img(
                plotting.muscle_distributions(muscles, measure, title, highlight),
                f"distribution of {title} per muscle",
            )
        )

    parts.append("<h2>Left/right asymmetry</h2>")
    if len(asymmetry):
        parts.append(
            '<p class="note">Asymmetry index 100 (L - R) / mean(L, R) in %; fat fraction '
            "as the difference L - R in percentage points. L and R are the patient's "
            "sides from the image affine.</p>"
        )
        bilateral = asymmetry[asymmetry["muscle"].isin(muscles["muscle"].unique())]
        parts.append(
            html.png_img(
                plotting.asymmetry_figure(
                    bilateral, "volume_ml_asymmetry_pct", "volume asymmetry (%)"
                ),
                "volume asymmetry per muscle",
            )
        )
        if (
            "ff_median_difference" in bilateral
            and np.isfinite(bilateral["ff_median_difference"].astype(float)).any()
        ):
            parts.append(
                html.png_img(
                    plotting.asymmetry_figure(
                        bilateral, "ff_median_difference", "fat fraction L - R (points)"
                    ),
                    "fat fraction asymmetry per muscle",
                )
            )
    else:
        parts.append('<p class="note">No muscle was segmented on both sides.</p>')

    parts.append("<h2>Outliers</h2>")
    outliers = table[table["outlier"]]
    if len(outliers):
        columns = ["participant_id", "session_id", "source", "abbreviation"]
        for measure in ("volume_ml", "max_csa_cm2", "ff_median"):
            columns += [measure, f"{measure}_robust_z"]
        parts.append(
            html.table(
                outliers.to_dict("records"),
                columns,
                text_columns=["participant_id", "session_id", "source", "abbreviation"],
                css_class="outliers",
            )
        )
    else:
        parts.append(
            f'<p class="ok">No value with |robust z| &gt; {robust_z_limit} '
            "(needs at least 3 images per label).</p>"
        )
    return html.page("legseg group report", "\n".join(parts))


def _participant_flags(qc_counts: pd.DataFrame | None, participant: str) -> str:
    """"<flags> (<fails>)" over a participant's images; "n/a" when none recorded them."""
    if qc_counts is None:
        return "n/a"
    mine = qc_counts[qc_counts["participant_id"] == participant]
    recorded = mine[mine["qc_flags"].notna()]
    if recorded.empty:
        return "n/a"
    text = f"{int(recorded['qc_flags'].sum())} ({int(recorded['qc_fail'].sum())})"
    return text + (" + n/a" if len(recorded) < len(mine) else "")


def qc_summary(
    qc_counts: pd.DataFrame | None, qc_flags: pd.DataFrame, output_dir: Path
) -> str:
    """The "QC flags" section: counts per check and severity, then every flag, one line each,
    grouped by image with a link to the subject's page."""
    parts = ['<div class="qc-box" id="qc-flags">', "<h2>QC flags</h2>"]
    recorded = 0 if qc_counts is None else int(qc_counts["qc_flags"].notna().sum())
    total = 0 if qc_counts is None else len(qc_counts)
    flagged = 0 if qc_counts is None else int((qc_counts["qc_flags"].fillna(0) > 0).sum())
    parts.append(
        f"<p>{len(qc_flags)} flag(s) on {flagged} of {total} image(s)"
        + (f"; {total - recorded} image(s) without recorded QC flags" if recorded < total else "")
        + ".</p>"
    )
    if len(qc_flags) == 0:
        parts.append('<p class="ok qc-none">no QC flag raised</p>')
    else:
        counts = (qc_flags.groupby(["code", "severity"]).size().rename("flags").reset_index()
                  .to_dict("records"))
        parts.append(html.table(counts, ["code", "severity", "flags"],
                                text_columns=["code", "severity"], css_class="qc-counts"))
        for (participant, session, source), group in qc_flags.groupby(
                ["participant_id", "session_id", "source"], sort=True):
            report = _report(output_dir, participant)
            name = html.escape(source)
            link = f'<a href="{html.escape(report.name)}#qc-flags">{name}</a>' \
                if report.exists() else name
            parts.append(f'<p class="qc-image">{link}</p>')
            items = "".join(
                f'<li class="qc-{html.escape(str(r.severity))}" '
                f'data-code="{html.escape(str(r.code))}">'
                f'<span class="qc-severity">{html.escape(str(r.severity).upper())}</span> '
                f"<code>{html.escape(str(r.code))}</code>: {html.escape(str(r.message))}</li>"
                for r in group.itertuples()
            )
            parts.append(f'<ul class="qc-flags">{items}</ul>')
    parts.append("</div>")
    return "\n".join(parts)


def _spread(values: pd.Series) -> str | None:
    """"median [P25-P75]" of the finite values, or None."""
    values = values.astype(float)
    values = values[np.isfinite(values)]
    if not values.size:
        return None
    q25, q50, q75 = np.percentile(values, [25, 50, 75])
    return f"{q50:.4g} [{q25:.4g}-{q75:.4g}]"


#: Measures of the per-muscle summary: column -> heading.
SUMMARY_MEASURES = {"volume_ml": "volume (ml)", "max_csa_cm2": "max CSA (cm\u00b2)",
                    "ff_median": "median FF (%)"}


def summary_table(muscles: pd.DataFrame, asymmetry: pd.DataFrame | None = None) -> str:
    """Median [P25-P75] over images of volume, cross-section and fat fraction: one row per
    muscle, its left and right side in neighbouring columns, and the median volume asymmetry
    of the images that have both sides."""
    rows = []
    order = muscles.groupby("muscle")["label"].min().sort_values()
    for muscle in order.index:
        group = muscles[muscles["muscle"] == muscle]
        stem = str(group["abbreviation"].iloc[0]).rsplit("_", 1)[0] \
            if group["side"].isin(["L", "R"]).all() else str(group["abbreviation"].iloc[0])
        row = {"muscle": muscle, "abbreviation": stem}
        for side, word in (("L", "left"), ("R", "right")):
            part = group[group["side"] == side]
            row[f"images {word}"] = len(part)
            for measure, title in SUMMARY_MEASURES.items():
                row[f"{title} {word}"] = _spread(part[measure]) if len(part) else None
        if asymmetry is not None and len(asymmetry) and "muscle" in asymmetry:
            pairs = asymmetry[asymmetry["muscle"] == muscle]
            row["volume asymmetry (%)"] = _spread(pairs["volume_ml_asymmetry_pct"]) \
                if len(pairs) else None
        rows.append(row)
    columns = ["muscle", "abbreviation", "images left", "images right"]
    for title in SUMMARY_MEASURES.values():
        columns += [f"{title} left", f"{title} right"]
    if asymmetry is not None:
        columns.append("volume asymmetry (%)")
    text = [c for c in columns if not c.startswith("images")]
    return ('<p class="note">Median [25th-75th percentile] over images, left and right side '
            "of each muscle side by side (the patient's sides); asymmetry 100 (L - R) / "
            "mean(L, R) over the images with both sides.</p>"
            + html.table(rows, columns, text_columns=text, css_class="summary"))
