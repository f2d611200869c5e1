"""The group page: per-muscle distributions, left/right asymmetry, outliers, subject links."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from legseg_tf.reports import html, plotting

MEASURE_TITLES = {
    "volume_ml": "Volume (ml)",
    "max_csa_cm2": "Maximum cross-sectional area (cm\u00b2)",
    "ff_median": "Median fat fraction (%)",
    "ff_eroded_median": "Median fat fraction, eroded label (%)",
}


def group_page(table: pd.DataFrame, asymmetry: pd.DataFrame, output_dir: Path,
               robust_z_limit: float) -> str:
    """The self-contained group HTML page.

    Args:
        table: long table from :func:`legseg_tf.group.long_table`.
        asymmetry: table from :func:`legseg_tf.group.asymmetry_table`.
        output_dir: the derivatives folder (for links to existing subject reports).
        robust_z_limit: |robust z| above which a muscle volume is flagged as an outlier.
    """

    muscles = table[table["region"].isin(["lower_leg", "upper_leg", "hip"])]
    images = table[["participant", "session", "source"]].drop_duplicates()
    parts = [
        "<h1>legseg group report</h1>",
        f"<p>{images['participant'].nunique()} participant(s), {len(images)} image(s), "
        f"{muscles['label'].nunique()} muscle label(s). Tables: "
        '<a href="group_muscles.tsv">group_muscles.tsv</a>, '
        '<a href="group_muscles_wide.tsv">group_muscles_wide.tsv</a>, '
        '<a href="group_asymmetry.tsv">group_asymmetry.tsv</a>.</p>',
    ]
    parts.append("<h2>Participants</h2>")
    rows = []
    for participant, group in images.groupby("participant", sort=True):
        report = Path(output_dir) / f"{participant}.html"
        link = (
            f'<a href="{html.escape(report.name)}">{html.escape(participant)}</a>'
            if report.exists()
            else html.escape(participant)
        )
        subset = table[table["participant"] == participant]
        rows.append(
            f'<tr><td class="text">{link}</td><td>{len(group)}</td>'
            f"<td>{int(subset['outlier'].sum())}</td></tr>"
        )
    parts.append(
        '<table class="participants"><thead><tr><th class="text">participant</th>'
        "<th>images</th><th>outlier rows</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )

    parts.append("<h2>Per-muscle summary</h2>")
    parts.append(summary_table(muscles))
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
        columns = ["participant", "session", "source", "abbreviation"]
        for measure in ("volume_ml", "max_csa_cm2", "ff_median"):
            columns += [measure, f"{measure}_robust_z"]
        parts.append(
            html.table(
                outliers.to_dict("records"),
                columns,
                text_columns=["participant", "session", "source", "abbreviation"],
                css_class="outliers",
            )
        )
    else:
        parts.append(
            f'<p class="ok">No value with |robust z| &gt; {robust_z_limit} '
            "(needs at least 3 images per label).</p>"
        )
    return html.page("legseg group report", "\n".join(parts))


def summary_table(muscles: pd.DataFrame) -> str:
    """Median [P25-P75] over images of volume, cross-section and fat fraction, per label."""
    rows = []
    for (label, abbreviation), group in muscles.groupby(["label", "abbreviation"], sort=True):
        row = {"label": int(label), "abbreviation": abbreviation, "images": len(group)}
        for measure in ("volume_ml", "max_csa_cm2", "ff_median"):
            values = group[measure].astype(float)
            values = values[np.isfinite(values)]
            if values.size:
                q25, q50, q75 = np.percentile(values, [25, 50, 75])
                row[measure] = f"{q50:.4g} [{q25:.4g}-{q75:.4g}]"
        rows.append(row)
    return '<p class="note">Median [25th-75th percentile] over images.</p>' + html.table(
        rows,
        ["label", "abbreviation", "images", "volume_ml", "max_csa_cm2", "ff_median"],
        text_columns=["abbreviation", "volume_ml", "max_csa_cm2", "ff_median"],
        css_class="summary",
    )
