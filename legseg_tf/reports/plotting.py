"""Figures of the reports, drawn with matplotlib (Agg) and returned as PNG bytes.

Orientation: every image panel is drawn in the **radiological** convention (the patient's
right on the viewer's left), derived from canonical RAS arrays (axes x, y, z; larger x = the
patient's right), never from raw file order. Each panel carries "R" and "L" letters at its
sides, and "A"/"P" or "S"/"I" at top and bottom, so the reader need not know the convention.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import os
import tempfile
from typing import TYPE_CHECKING

import numpy as np

from legseg_tf.labels import BY_INDEX

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def ensure_matplotlib_config_dir() -> None:
    """Point MPLCONFIGDIR at a private temporary folder when the usual one is not writable.

    Containers often run with a read-only or missing home folder; matplotlib would then warn
    and build its font cache on every start. Called when plotting starts (:func:`pyplot`),
    never at import: importing this module leaves the environment as it is.
    """
    configured = os.environ.get("MPLCONFIGDIR")
    if configured:
        if os.access(configured, os.W_OK):
            return
    else:
        base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(
            os.path.expanduser("~"), ".config"
        )
        folder = os.path.join(base, "matplotlib")
        probe = folder if os.path.isdir(folder) else base
        if os.path.isdir(probe) and os.access(probe, os.W_OK):
            return
    os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="legseg-mpl-")


@functools.cache
def pyplot():
    """matplotlib's ``pyplot`` on the Agg backend, imported on the first figure (after
    :func:`ensure_matplotlib_config_dir`, since matplotlib reads its config dir on import)."""
    ensure_matplotlib_config_dir()
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


logger = logging.getLogger(__name__)

#: Opacity of the label overlay.
OVERLAY_ALPHA = 0.55
#: Most axial panels in a mosaic.
MAX_PANELS = 16
#: Panels per mosaic row.
MOSAIC_COLUMNS = 4


def figure_png(figure: Figure, dpi: int = 96) -> bytes:
    """Render a figure to PNG bytes and close it."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    pyplot().close(figure)
    return buffer.getvalue()


def label_rgba(labels: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """RGBA overlay (..., 4) float in [0, 1] of a label array with the table colours."""
    labels = np.asarray(labels).astype(np.int64)
    top = max(int(labels.max(initial=0)), max(BY_INDEX)) + 1
    lut = np.zeros((top, 4), dtype=np.float32)
    for index, label in BY_INDEX.items():
        lut[index, :3] = np.asarray(label.rgb, dtype=np.float32) / 255.0
        lut[index, 3] = alpha
    unknown = (labels > 0) & (lut[labels, 3] == 0)
    rgba = lut[labels]
    rgba[unknown] = (1.0, 0.0, 1.0, alpha)
    return rgba


def axial_view(volume_ras: np.ndarray, k: int) -> np.ndarray:
    """Axial slice ``k`` of an (x, y, z) RAS array as a radiological 2-D image.

    Rows run anterior (top) to posterior, columns the patient's right (left of the image)
    to the patient's left.
    """
    return np.asarray(volume_ras)[:, :, k].T[::-1, ::-1]


def coronal_view(volume_ras: np.ndarray, j: int) -> np.ndarray:
    """Coronal slice ``j`` (y index) of an (x, y, z) RAS array, radiological.

    Rows run superior (top) to inferior, columns the patient's right to left.
    """
    return np.asarray(volume_ras)[:, j, :].T[::-1, ::-1]


def display_range(volume: np.ndarray) -> tuple[float, float]:
    """Grey-level window: 1st to 99.5th percentile of the non-zero voxels."""
    values = np.asarray(volume)
    values = values[np.isfinite(values) & (values != 0)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(values, [1.0, 99.5])
    return float(low), float(max(high, low + 1e-6))


def mosaic_slices(labels_ras: np.ndarray, max_panels: int = MAX_PANELS) -> list[int]:
    """Axial slices to show: every N-th slice of the labelled z range (whole volume if none)."""
    nz = labels_ras.shape[2]
    occupied = np.flatnonzero(np.asarray(labels_ras).reshape(-1, nz).any(axis=0))
    first, last = (int(occupied[0]), int(occupied[-1])) if occupied.size else (0, nz - 1)
    step = max(1, math.ceil((last - first + 1) / max_panels))
    return list(range(first, last + 1, step))


def _orientation_letters(axis, top: str, bottom: str) -> None:
    """Patient directions just outside the panel: R left, L right, ``top``/``bottom``."""
    style = dict(color="black", fontsize=9, fontweight="bold", transform=axis.transAxes)
    axis.text(-0.01, 0.5, "R", ha="right", va="center", **style)
    axis.text(1.01, 0.5, "L", ha="left", va="center", **style)
    axis.text(0.5, 1.01, top, ha="center", va="bottom", **style)
    axis.text(0.5, -0.01, bottom, ha="center", va="top", **style)


def _panel_title(axis, text: str) -> None:
    axis.text(
        0.02,
        0.03,
        text,
        color="yellow",
        fontsize=8,
        transform=axis.transAxes,
        ha="left",
        va="bottom",
    )


def in_plane_box(
    volume_ras: np.ndarray, labels_ras: np.ndarray, threshold: float, margin: int = 10
) -> tuple[slice, slice, slice]:
    """(x, y) bounding box of the labels and of the image above ``threshold``, plus a margin.

    Cropping keeps the axes' direction, so the orientation letters stay true.
    """
    content = (np.asarray(labels_ras) > 0) | (np.asarray(volume_ras) > threshold)
    if not content.any():
        return (slice(None), slice(None), slice(None))
    spans = []
    for axis in (0, 1):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(content.any(axis=other))
        spans.append(
            slice(max(0, hits[0] - margin), min(content.shape[axis], hits[-1] + 1 + margin))
        )
    return spans[0], spans[1], slice(None)


def axial_mosaic(
    volume_ras: np.ndarray,
    labels_ras: np.ndarray,
    zooms_mm,
    slices: list[int],
    columns: int = MOSAIC_COLUMNS,
) -> bytes:
    """Mosaic of axial slices with the label overlay; PNG bytes.

    Args:
        volume_ras, labels_ras: (x, y, z) canonical RAS image and labels.
        zooms_mm: voxel size (x, y, z) in mm (sets the pixel aspect ratio).
        slices: z indices to show.
    """
    if volume_ras.shape[:3] != labels_ras.shape[:3]:
        raise ValueError(f"image {volume_ras.shape} and labels {labels_ras.shape} differ in shape")
    rows = max(1, math.ceil(len(slices) / columns))
    low, high = display_range(volume_ras)
    box = in_plane_box(volume_ras, labels_ras, low + 0.1 * (high - low))
    volume_ras, labels_ras = volume_ras[box], labels_ras[box]
    aspect = float(zooms_mm[1]) / float(zooms_mm[0])
    nx, ny = volume_ras.shape[0], volume_ras.shape[1] * aspect
    width = 4.0
    figure, axes = pyplot().subplots(
        rows, columns, figsize=(columns * width, rows * width * ny / nx + 0.1), squeeze=False
    )
    for axis in axes.ravel():
        axis.axis("off")
    for axis, k in zip(axes.ravel(), slices, strict=False):
        axis.imshow(
            axial_view(volume_ras, k),
            cmap="gray",
            vmin=low,
            vmax=high,
            aspect=aspect,
            interpolation="nearest",
        )
        axis.imshow(label_rgba(axial_view(labels_ras, k)), aspect=aspect, interpolation="nearest")
        _orientation_letters(axis, "A", "P")
        _panel_title(axis, f"slice {k}")
    figure.subplots_adjust(wspace=0.12, hspace=0.3)
    return figure_png(figure)


def coronal_figure(volume_ras: np.ndarray, labels_ras: np.ndarray, zooms_mm) -> tuple[bytes, int]:
    """Coronal slice through the labels' centre of mass (y), with overlay; (PNG bytes, y index)."""
    occupied = np.argwhere(np.asarray(labels_ras) > 0)
    j = int(round(occupied[:, 1].mean())) if occupied.size else volume_ras.shape[1] // 2
    low, high = display_range(volume_ras)
    aspect = float(zooms_mm[2]) / float(zooms_mm[0])
    nx, nz = volume_ras.shape[0], volume_ras.shape[2] * aspect
    figure, axis = pyplot().subplots(figsize=(8.0, max(2.0, 8.0 * nz / nx)))
    axis.imshow(
        coronal_view(volume_ras, j),
        cmap="gray",
        vmin=low,
        vmax=high,
        aspect=aspect,
        interpolation="nearest",
    )
    axis.imshow(label_rgba(coronal_view(labels_ras, j)), aspect=aspect, interpolation="nearest")
    _orientation_letters(axis, "S", "I")
    _panel_title(axis, f"coronal, y index {j}")
    axis.axis("off")
    return figure_png(figure), j


def positions_figure(
    positions: dict, region_ranges: dict, n_slices: int, classes: tuple[str, ...]
) -> bytes:
    """Per-slice classifier positions (raw and fitted staircase) and the region ranges."""
    slices = np.asarray(positions.get("slices", []), dtype=int)
    level = {name: i for i, name in enumerate(classes)}
    figure, axis = pyplot().subplots(figsize=(8.0, 3.0))
    palette = pyplot().get_cmap("tab10")
    for i, (region, (first, last)) in enumerate(sorted(region_ranges.items())):
        axis.axvspan(
            first - 0.5,
            last + 0.5,
            color=palette(i % 10),
            alpha=0.15,
            label=f"{region} {first}-{last}",
        )
    raw = [level.get(p, np.nan) for p in positions.get("raw_positions", [])]
    fitted = [level.get(p, np.nan) for p in positions.get("fitted_positions", [])]
    if len(raw) == slices.size and slices.size:
        axis.plot(slices, raw, "o", color="black", markersize=3, label="classifier")
    if len(fitted) == slices.size and slices.size:
        axis.step(slices, fitted, where="mid", color="red", label="fitted staircase")
    axis.set_yticks(range(len(classes)))
    axis.set_yticklabels(classes, fontsize=8)
    axis.set_xlim(-0.5, n_slices - 0.5)
    axis.set_xlabel("slice (z index, inferior to superior)")
    axis.xaxis.set_major_locator(_integer_ticks())
    axis.legend(fontsize=7, loc="upper left", ncols=2)
    axis.grid(alpha=0.3)
    return figure_png(figure)


def confidence_figure(per_slice: dict[int, float], n_slices: int, threshold: float) -> bytes:
    """Mean probability of the assigned label per slice, with the low-confidence threshold."""
    figure, axis = pyplot().subplots(figsize=(8.0, 2.4))
    ks = sorted(per_slice)
    axis.bar(ks, [per_slice[k] for k in ks], color="steelblue")
    axis.axhline(threshold, color="red", linestyle="--", label=f"threshold {threshold:g}")
    axis.set_ylim(0, 1)
    axis.set_xlim(-0.5, n_slices - 0.5)
    axis.set_xlabel("slice (z index)")
    axis.xaxis.set_major_locator(_integer_ticks())
    axis.set_ylabel("mean probability")
    axis.legend(fontsize=7)
    return figure_png(figure)


def muscle_distributions(table, value: str, ylabel: str, highlight=None) -> bytes:
    """Box plots with individual points per muscle (x) of one column of a long table.

    Args:
        table: pandas DataFrame with columns ``abbreviation`` and ``value``.
        value: column to plot.
        ylabel: axis label.
        highlight: optional boolean Series (same index) marking outliers, drawn in red.
    """
    data = table[np.isfinite(table[value].astype(float))]
    order = sorted(data["abbreviation"].unique(), key=_abbreviation_order)
    figure, axis = pyplot().subplots(figsize=(max(6.0, 0.45 * len(order) + 1.5), 3.6))
    groups = [
        data.loc[data["abbreviation"] == name, value].astype(float).to_numpy() for name in order
    ]
    if groups:
        axis.boxplot(groups, positions=range(len(order)), widths=0.6, showfliers=False)
        rng = np.random.default_rng(0)
        for i, name in enumerate(order):
            rows = data[data["abbreviation"] == name]
            jitter = rng.uniform(-0.15, 0.15, len(rows))
            colors = [
                "red" if highlight is not None and bool(highlight.get(idx, False)) else "black"
                for idx in rows.index
            ]
            axis.scatter(i + jitter, rows[value].astype(float), s=10, c=colors, zorder=3)
        axis.set_xlim(-0.6, len(order) - 0.4)
        axis.set_xticks(range(len(order)))
        axis.set_xticklabels(order, rotation=90, fontsize=8)
    axis.set_ylabel(ylabel)
    axis.grid(axis="y", alpha=0.3)
    return figure_png(figure)


def asymmetry_figure(table, value: str, ylabel: str) -> bytes:
    """Strip plot of the left/right asymmetry index per muscle (column ``value``)."""
    data = table[np.isfinite(table[value].astype(float))]
    order = sorted(data["muscle"].unique())
    figure, axis = pyplot().subplots(figsize=(max(6.0, 0.45 * len(order) + 1.5), 3.4))
    rng = np.random.default_rng(0)
    for i, name in enumerate(order):
        values = data.loc[data["muscle"] == name, value].astype(float).to_numpy()
        axis.scatter(i + rng.uniform(-0.15, 0.15, values.size), values, s=12, color="black")
    axis.axhline(0, color="grey", linewidth=0.8)
    axis.set_xlim(-0.6, len(order) - 0.4)
    axis.set_xticks(range(len(order)))
    axis.set_xticklabels(order, rotation=90, fontsize=8)
    axis.set_ylabel(ylabel)
    axis.grid(axis="y", alpha=0.3)
    return figure_png(figure)


def _abbreviation_order(abbreviation: str) -> tuple:
    stem, _, side = abbreviation.partition("_")
    return stem, side


def _integer_ticks():
    """A tick locator that puts ticks on whole numbers only (slice indices)."""
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)
