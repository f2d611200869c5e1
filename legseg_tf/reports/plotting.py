"""Figures of the reports, drawn with matplotlib (Agg) and returned as PNG bytes.

Orientation: every image panel is drawn in the **radiological** convention (the patient's
right on the viewer's left), derived from canonical RAS arrays (axes x, y, z; larger x = the
patient's right), never from raw file order. Each panel carries "R" and "L" letters at its
sides, and "A"/"P" or "S"/"I" at top and bottom, so the reader need not know the convention.

Labels are drawn as outlines by default (each label's inner rim in its colour, so the image
stays visible inside), or filled; colours are the report palette of
:func:`legseg_tf.labels.report_rgb` (both sides of a muscle share a hue; nothing near-white),
not QMRITools' table colours. Slice figures are rendered voxel-exact (each voxel a block of
whole pixels, :func:`render_panel`) at their natural size, so an enlarged view shows every
voxel boundary.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import os
import struct
import tempfile
import zlib
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from legseg_tf.labels import BY_INDEX, report_rgb

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

#: Opacity of the filled label overlay.
OVERLAY_ALPHA = 0.45
#: Most axial panels in the overview mosaic.
MAX_PANELS = 16
#: Panels per mosaic row.
MOSAIC_COLUMNS = 4
#: Overlay styles: label outlines (the default: the image stays visible inside each label) or
#: filled labels (with their outlines).
OVERLAY_MODES = ("outline", "filled")
#: Detail figures (representative slices, reformats): at least this many pixels per mm, so a
#: 1.5 mm voxel spans 3 pixels and a one-voxel boundary error is visible at natural size.
DETAIL_MIN_PX_PER_MM = 2.0
#: Detail panels are drawn about this wide (pixels), at most :data:`DETAIL_MAX_PX`.
DETAIL_TARGET_PX = 640
DETAIL_MAX_PX = 1600
#: Overview mosaic panels are drawn about this wide (pixels).
MOSAIC_TARGET_PX = 300
#: Representative axial slices shown as image | overlay pairs.
REPRESENTATIVE_SLICES = 4
#: Fewest axial slices for a coronal/sagittal reformat (fewer give a stripe, not a view).
MIN_REFORMAT_SLICES = 8
#: Colour of unknown label values (not in the table).
UNKNOWN_RGB = (255, 0, 255)
#: Pixels of white margin around each panel (orientation letters, title).
_MARGIN = {"left": 16, "right": 16, "top": 20, "bottom": 16}
_DPI = 100


def figure_png(figure: Figure, dpi: int = 96) -> bytes:
    """Render a figure to PNG bytes and close it."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    pyplot().close(figure)
    return buffer.getvalue()


@functools.cache
def _palette() -> np.ndarray:
    """(top + 1, 3) uint8 report colours by label value (:func:`labels.report_rgb`)."""
    top = max(BY_INDEX) + 1
    lut = np.tile(np.asarray(UNKNOWN_RGB, dtype=np.uint8), (top, 1))
    lut[0] = 0
    for index in BY_INDEX:
        lut[index] = report_rgb(index)
    return lut


#: One RGB pixel as a single element (3 bytes): whole pixels are gathered, chosen and
#: repeated at once instead of byte by byte.
_PIXEL = np.dtype((np.void, 3))


@functools.cache
def _pixel_palette() -> np.ndarray:
    """:func:`_palette` as :data:`_PIXEL` elements, one more for values past its end
    (:data:`UNKNOWN_RGB`)."""
    lut = np.concatenate([_palette(), np.asarray([UNKNOWN_RGB], dtype=np.uint8)])
    return lut.view(_PIXEL)[:, 0]


def label_colours(labels: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 report colours of a label array (unknown values magenta, 0 black;
    negative values black)."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu" or labels.dtype.itemsize < 2:
        labels = labels.astype(np.int64)  # the palette's end must fit the type
    lut = _pixel_palette()
    index = np.clip(labels, 0, lut.shape[0] - 1).reshape(-1)
    return lut[index].view(np.uint8).reshape(labels.shape + (3,))


def label_rgba(labels: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """RGBA overlay (..., 4) float in [0, 1] of a label array with the report colours."""
    labels = np.asarray(labels)
    rgba = np.zeros(labels.shape + (4,), dtype=np.float32)
    rgba[..., :3] = label_colours(labels) / 255.0
    rgba[..., 3] = np.where(labels > 0, alpha, 0.0)
    return rgba


def outline_mask(labels2d: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels of each label's inner rim: labelled pixels with a differently labelled pixel
    (or background) within ``width`` pixels (8-neighbourhood). Where two labels touch, both
    rims are drawn, each in its own colour."""
    from scipy import ndimage

    labels2d = np.asarray(labels2d)
    size = 2 * max(1, int(width)) + 1
    high = ndimage.maximum_filter(labels2d, size=size, mode="nearest")
    low = ndimage.minimum_filter(labels2d, size=size, mode="nearest")
    return (labels2d > 0) & (high != low)


def grey_levels(image2d: np.ndarray, low: float, high: float) -> np.ndarray:
    """uint8 grey levels of an image in the window [low, high] (non-finite values black)."""
    values = np.nan_to_num(np.asarray(image2d, dtype=np.float64), nan=low, posinf=high,
                           neginf=low)
    scaled = np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0)
    return np.round(scaled * 255).astype(np.uint8)


def render_panel(
    image2d: np.ndarray,
    labels2d: np.ndarray | None,
    window: tuple[float, float],
    repeats: tuple[int, int],
    mode: str | None = "outline",
) -> np.ndarray:
    """One panel as an (H, W, 3) uint8 array: the grey image, each voxel drawn as a
    ``repeats`` = (rows, columns) block of pixels, with the labels as outlines or filled.

    The pixels are those of drawing on the enlarged arrays (labels' rim by
    :func:`outline_mask` of the enlarged labels, 2 pixels wide from 4 pixels per voxel on);
    they are computed per voxel and per run of block rows (columns) whose rim windows reach
    the same neighbouring voxels, then enlarged once (:func:`_enlarge`).

    Args:
        image2d, labels2d: 2-D arrays of the same shape (display orientation).
        window: grey-level window (low, high).
        repeats: pixels per voxel along rows and columns (sets the aspect ratio).
        mode: "outline", "filled" or None (image only).
    """
    if mode not in (*OVERLAY_MODES, None):
        raise ValueError(f"mode must be one of {OVERLAY_MODES} or None, got {mode!r}")
    rr, rc = (max(1, int(r)) for r in repeats)
    grey = grey_levels(image2d, *window)
    base = np.repeat(grey[..., None], 3, axis=2)  # (rows, cols, 3): one colour per voxel
    if mode is None or labels2d is None:
        return _enlarge(base[:, None, :, None], [rr], [rc])
    labels = np.ascontiguousarray(labels2d)
    colours = label_colours(labels)
    if mode == "filled":
        inside = labels > 0
        blended = (1 - OVERLAY_ALPHA) * base[inside] + OVERLAY_ALPHA * colours[inside]
        base[inside] = np.round(blended).astype(np.uint8)
    width = 2 if min(rr, rc) >= 4 else 1
    row_runs, col_runs = _reach_runs(rr, width), _reach_runs(rc, width)
    rows, cols = labels.shape
    reach = max(max(abs(d) for d in (r[0], r[-1])) for _, r in row_runs + col_runs)
    padded = np.pad(labels, reach, mode="edge")  # the filters' "nearest" mode
    differs: dict[tuple[int, int], np.ndarray] = {}

    def differ(di: int, dj: int) -> np.ndarray:
        if (di, dj) not in differs:
            moved = padded[reach + di:reach + di + rows, reach + dj:reach + dj + cols]
            differs[di, dj] = labels != moved
        return differs[di, dj]

    labelled = labels > 0
    pieces = np.empty((rows, len(row_runs), cols, len(col_runs)), dtype=_PIXEL)
    colours, base = colours.view(_PIXEL)[..., 0], base.view(_PIXEL)[..., 0]
    for a, (_, reach_i) in enumerate(row_runs):
        for b, (_, reach_j) in enumerate(col_runs):
            rim = np.zeros(labels.shape, dtype=bool)
            for di in reach_i:
                for dj in reach_j:
                    if di or dj:
                        rim |= differ(di, dj)
            rim &= labelled
            pieces[:, a, :, b] = np.where(rim, colours, base)
    return _enlarge(pieces.view(np.uint8).reshape(pieces.shape + (3,)),
                    [n for n, _ in row_runs], [n for n, _ in col_runs])


def _reach_runs(repeat: int, width: int) -> list[tuple[int, range]]:
    """Runs of the ``repeat`` pixels of a block (in order) whose window of ``width`` pixels
    either side reaches the same voxel offsets (``floor((u -+ width) / repeat)``); each run
    as (pixels, offsets). At an array edge the offsets are clipped, as the "nearest" mode of
    :func:`outline_mask`'s filters repeats the edge."""
    runs: list[tuple[int, range]] = []
    for u in range(repeat):
        reach = range((u - width) // repeat, (u + width) // repeat + 1)
        if runs and runs[-1][1] == reach:
            runs[-1] = (runs[-1][0] + 1, reach)
        else:
            runs.append((1, reach))
    return runs


def _enlarge(pieces: np.ndarray, row_counts: list[int], col_counts: list[int]) -> np.ndarray:
    """(rows * sum(row_counts), cols * sum(col_counts), 3) uint8 image from ``pieces``
    (rows, len(row_counts), cols, len(col_counts), 3): piece (i, a, j, b) fills
    ``row_counts[a]`` x ``col_counts[b]`` pixels of voxel (i, j)'s block, runs in order."""
    rows, n_a, cols, n_b, _ = pieces.shape
    cells = np.ascontiguousarray(pieces).view(_PIXEL).reshape(rows * n_a, cols * n_b)
    lines = np.repeat(cells, np.tile(col_counts, cols), axis=1)
    image = np.repeat(lines, np.tile(row_counts, rows), axis=0)
    return image.view(np.uint8).reshape(image.shape[0], image.shape[1], 3)


def repeats_for(zooms_mm: tuple[float, float], px_per_mm: float) -> tuple[int, int]:
    """Pixels per voxel (rows, columns) for a voxel of ``zooms_mm`` (row mm, column mm)."""
    return tuple(max(1, int(round(px_per_mm * float(z)))) for z in zooms_mm)


def px_per_mm(width_mm: float, target_px: int, minimum: float = 0.0,
              maximum_px: int | None = None) -> float:
    """Pixels per mm that draw ``width_mm`` about ``target_px`` wide, at least ``minimum``
    (and at most ``maximum_px`` wide)."""
    value = max(target_px / max(width_mm, 1e-6), minimum)
    if maximum_px:
        value = min(value, maximum_px / max(width_mm, 1e-6))
    return value


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


def sagittal_view(volume_ras: np.ndarray, i: int) -> np.ndarray:
    """Sagittal slice ``i`` (x index) of an (x, y, z) RAS array.

    Rows run superior (top) to inferior, columns anterior (left) to posterior.
    """
    return np.asarray(volume_ras)[i, :, :].T[::-1, ::-1]


def display_range(volume: np.ndarray) -> tuple[float, float]:
    """Grey-level window: 1st to 99.5th percentile of the non-zero voxels."""
    values = np.asarray(volume)
    values = values[np.isfinite(values) & (values != 0)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(values, [1.0, 99.5])
    return float(low), float(max(high, low + 1e-6))


def _labelled_range(labels_ras: np.ndarray) -> tuple[int, int]:
    nz = labels_ras.shape[2]
    occupied = np.flatnonzero(np.asarray(labels_ras).reshape(-1, nz).any(axis=0))
    return (int(occupied[0]), int(occupied[-1])) if occupied.size else (0, nz - 1)


def mosaic_slices(labels_ras: np.ndarray, max_panels: int = MAX_PANELS) -> list[int]:
    """Axial slices to show: every N-th slice of the labelled z range (whole volume if none)."""
    first, last = _labelled_range(labels_ras)
    step = max(1, math.ceil((last - first + 1) / max_panels))
    return list(range(first, last + 1, step))


def representative_slices(labels_ras: np.ndarray, count: int = REPRESENTATIVE_SLICES) -> list[int]:
    """A few axial slices spread over the labelled z range (centres of ``count`` equal
    parts, so neither end slice, where labels are thin, is picked unless the range is short)."""
    first, last = _labelled_range(labels_ras)
    span = last - first + 1
    picks = [first + int((i + 0.5) * span / count) for i in range(count)]
    return sorted(set(min(last, p) for p in picks))


def reformat_possible(shape_xyz: tuple[int, ...]) -> bool:
    """True when the stack has enough axial slices for coronal/sagittal reformats."""
    return int(shape_xyz[2]) >= MIN_REFORMAT_SLICES


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


class Panel:
    """A rendered panel with its title and the patient directions at its four sides."""

    def __init__(self, rgb: np.ndarray, title: str, letters: tuple[str, str, str, str]):
        self.rgb = rgb
        self.title = title
        self.letters = letters  # left, right, top, bottom


def compose(panels: list[Panel], columns: int | None = None) -> bytes:
    """Panels on a white grid (``columns`` per row, default all in one row), each with its
    orientation letters in the margin and its title above; PNG bytes at natural size
    (one array pixel = one image pixel)."""
    return compose_all([(panels, columns)])[0]


def compose_all(figures: list[tuple[list[Panel], int | None]]) -> list[bytes]:
    """:func:`compose` of each (panels, columns), the texts of all figures drawn together
    (one matplotlib figure per canvas height) before the figures are put together."""
    layouts = [_grid(panels, columns) for panels, columns in figures]
    _prepare_texts([(texts, height) for _, texts, _, height in layouts])
    pngs = []
    for (panels, _), (places, texts, width, height) in zip(figures, layouts):
        # The letters and titles stay in the margins: the panels are pasted over the text
        # layer as they are, never resampled (drawing them through matplotlib was far slower).
        canvas = _cached_text_layer(texts, width, height)
        if canvas is None:
            canvas = text_layer(texts, width, height)
        for panel, (x0, y0, w, h) in zip(panels, places):
            canvas[y0:y0 + h, x0:x0 + w] = panel.rgb
        pngs.append(png_bytes(canvas))
    return pngs


def _grid(panels: list[Panel], columns: int | None
          ) -> tuple[list[tuple[int, int, int, int]], list[_Text], int, int]:
    """:func:`compose`'s layout: each panel's (x0, y0, width, height) in the canvas, the
    texts, and the canvas width and height (pixels)."""
    if not panels:
        raise ValueError("no panel to draw")
    columns = max(1, min(columns or len(panels), len(panels)))
    rows = math.ceil(len(panels) / columns)
    m = _MARGIN
    cell_w = max(p.rgb.shape[1] for p in panels) + m["left"] + m["right"]
    cell_h = max(p.rgb.shape[0] for p in panels) + m["top"] + m["bottom"]
    height, width = rows * cell_h, columns * cell_w
    places, texts = [], []
    for n, panel in enumerate(panels):
        y0 = (n // columns) * cell_h + m["top"]
        x0 = (n % columns) * cell_w + m["left"]
        h, w = panel.rgb.shape[:2]
        places.append((x0, y0, w, h))
        left, right, top, bottom = panel.letters
        texts += [
            _Text(x0 - 3, y0 + h / 2, left, "right", "center", _LETTER_STYLE),
            _Text(x0 + w + 3, y0 + h / 2, right, "left", "center", _LETTER_STYLE),
            _Text(x0 + w / 2, y0 - 2, top, "center", "bottom", _LETTER_STYLE),
            _Text(x0 + w / 2, y0 + h + 1, bottom, "center", "top", _LETTER_STYLE),
            _Text(x0, y0 - 2, panel.title, "left", "bottom", _TITLE_STYLE),
        ]
    return places, texts, width, height


class _Text(NamedTuple):
    """A text of a composed figure: anchor (x, y) in canvas pixels (origin top left, y
    down), its alignment to the anchor and its matplotlib style."""

    x: float
    y: float
    text: str
    ha: str
    va: str
    style: tuple[tuple[str, object], ...]


#: matplotlib styles of the orientation letters and of the panel titles.
_LETTER_STYLE = (("color", "black"), ("fontsize", 9), ("fontweight", "bold"))
_TITLE_STYLE = (("color", "#333333"), ("fontsize", 8))


def text_layer(texts: list[_Text], width: int, height: int) -> np.ndarray:
    """(height, width, 3) uint8: ``texts`` drawn by matplotlib (Agg) on white, all at once on
    a figure of that many pixels. The reference for :func:`_cached_text_layer`."""
    plt = pyplot()
    from matplotlib.transforms import IdentityTransform

    figure = plt.figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI, facecolor="white")
    pixels = IdentityTransform()  # figure pixels, origin bottom left
    for t in texts:
        figure.text(t.x + 0.5, height - t.y - 0.5, t.text, transform=pixels, ha=t.ha,
                    va=t.va, **dict(t.style))
    figure.canvas.draw()
    layer = np.array(np.asarray(figure.canvas.buffer_rgba())[..., :3])
    plt.close(figure)
    if layer.shape[:2] != (height, width):
        raise RuntimeError(f"text layer {layer.shape[:2]} differs from canvas {(height, width)}")
    return layer


#: Drawn texts by :func:`_text_key`: (top row, first column relative to the anchor's whole
#: pixel, (h, w, 3) uint8 pixels on white), or None for a text that leaves no ink.
_TEXT_CACHE: dict[tuple, tuple[int, int, np.ndarray] | None] = {}
_TEXT_CACHE_SIZE = 2048
#: White columns kept either side of each text when texts are drawn side by side.
_TEXT_PAD = 8


def _text_key(t: _Text, height: int) -> tuple:
    """What a text's pixels depend on besides a whole-pixel shift along x: Agg places glyphs
    to 1/64 pixel from the anchor's fraction; rows are kept as they are (the y arithmetic
    involves the figure height), so the key holds the canvas height and the anchor's y."""
    x = t.x + 0.5
    return (t.text, t.ha, t.va, t.style, x - math.floor(x), height, t.y)


def _prepare_texts(figures: list[tuple[list[_Text], int]]) -> None:
    """Draw the texts of several figures (texts, canvas height) not cached yet, all those of
    one height on one matplotlib figure (:func:`_draw_texts`); what cannot be vouched for
    is left to :func:`_cached_text_layer`."""
    by_height: dict[int, dict[tuple, _Text]] = {}
    for texts, height in figures:
        for t in texts:
            key = _text_key(t, height)
            if t.text and key not in _TEXT_CACHE:
                by_height.setdefault(height, {}).setdefault(key, t)
    for height, missing in by_height.items():
        _draw_texts(list(missing.items()), height)


def _cached_text_layer(texts: list[_Text], width: int, height: int) -> np.ndarray | None:
    """The pixels of :func:`text_layer`, from texts drawn once and cached (titles and letters
    repeat from figure to figure), or None where that cannot be vouched for: two texts'
    inked boxes overlap (Agg would blend one over the other), or a text could not be drawn
    apart (:func:`_draw_texts`)."""
    keys = [_text_key(t, height) for t in texts]
    missing = {}
    for t, key in zip(texts, keys):
        if key not in _TEXT_CACHE and t.text:
            missing.setdefault(key, t)
    if missing and not _draw_texts(list(missing.items()), height):
        return None
    boxes, patches = [], []
    for t, key in zip(texts, keys):
        cached = _TEXT_CACHE.get(key) if t.text else None
        if cached is None:
            continue
        top, offset, patch = cached
        left = math.floor(t.x + 0.5) + offset
        boxes.append((top, left, top + patch.shape[0], left + patch.shape[1]))
        patches.append(patch)
    if boxes:
        b = np.asarray(boxes)
        meet = ((b[:, None, 0] < b[None, :, 2]) & (b[None, :, 0] < b[:, None, 2])
                & (b[:, None, 1] < b[None, :, 3]) & (b[None, :, 1] < b[:, None, 3]))
        np.fill_diagonal(meet, False)
        if meet.any():
            logger.debug("texts overlap: drawing the text layer at once")
            return None
    layer = np.full((height, width, 3), 255, dtype=np.uint8)
    for (top, left, bottom, right), patch in zip(boxes, patches):
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(bottom, height), min(right, width)
        if y0 < y1 and x0 < x1:  # matplotlib clips at the figure's edges alike
            layer[y0:y1, x0:x1] = patch[y0 - top:y1 - top, x0 - left:x1 - left]
    return layer


def _draw_texts(items: list[tuple[tuple, _Text]], height: int) -> bool:
    """Draw texts side by side on one white figure ``height`` pixels high (each at its own
    y, so that the y arithmetic is that of its canvas, and at its x's fraction of a pixel)
    and cache each one's inked box (:data:`_TEXT_CACHE`). False (nothing cached) when a
    text's ink reaches the edge of its column band (it might not be all there)."""
    plt = pyplot()
    from matplotlib.transforms import IdentityTransform

    if len(_TEXT_CACHE) + len(items) > _TEXT_CACHE_SIZE:
        _TEXT_CACHE.clear()
    figure = plt.figure(figsize=(1, height / _DPI), dpi=_DPI, facecolor="white")
    pixels = IdentityTransform()
    artists = [figure.text(0.5, height - t.y - 0.5, t.text, transform=pixels, ha=t.ha,
                           va=t.va, **dict(t.style)) for _, t in items]
    renderer = figure.canvas.get_renderer()
    bands, start = [], 0
    for (_, t), artist in zip(items, artists):
        extent = artist.get_window_extent(renderer)  # around the anchor at x = 0.5
        x = t.x + 0.5
        anchor = start + _TEXT_PAD - math.floor(extent.x0 - 0.5)
        artist.set_x(anchor + (x - math.floor(x)))
        end = anchor + math.ceil(extent.x1 - 0.5) + 1 + _TEXT_PAD
        bands.append((start, end, anchor))
        start = end
    total = math.ceil(start / _DPI) * _DPI
    figure.set_size_inches(total / _DPI, height / _DPI)
    figure.canvas.draw()
    rgba = np.asarray(figure.canvas.buffer_rgba())
    plt.close(figure)
    if rgba.shape != (height, total, 4):
        return False
    found = {}
    layer = rgba[..., :3]
    # opaque white is 0xFFFFFFFF (text blends onto it and leaves it opaque): one compare per pixel
    inked = rgba.view(np.uint32)[..., 0] != np.uint32(0xFFFFFFFF)
    for (key, _), (start, end, anchor) in zip(items, bands):
        ink = inked[:, start:end]
        if ink[:, 0].any() or ink[:, -1].any():
            logger.debug("text %r reaches the edge of its band", key[0])
            return False
        rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
        if rows.size == 0:
            found[key] = None
            continue
        patch = layer[rows[0]:rows[-1] + 1, start + cols[0]:start + cols[-1] + 1]
        found[key] = (int(rows[0]), int(start + cols[0] - anchor), patch.copy())
    _TEXT_CACHE.update(found)
    return True


def png_bytes(rgb: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 array: 8-bit RGB, every row "Up"-filtered (a voxel's
    block repeats rows, which filter to zeros), zlib level 3. Decodes to the same pixels as
    Pillow's encoding in half its time (Pillow tries five filters per row)."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or 0 in rgb.shape:
        raise ValueError(f"expected a non-empty (H, W, 3) uint8 array, got {rgb.dtype} "
                         f"{rgb.shape}")
    height, width = rgb.shape[:2]
    rows = rgb.reshape(height, width * 3)
    data = np.empty((height, width * 3 + 1), dtype=np.uint8)
    data[:, 0] = 2  # "Up": the byte minus the one above (none above row 0)
    data[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=data[1:, 1:])

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(data.tobytes(), 3)) + chunk(b"IEND", b""))


def _check_shapes(volume_ras: np.ndarray, labels_ras: np.ndarray) -> None:
    if volume_ras.shape[:3] != labels_ras.shape[:3]:
        raise ValueError(f"image {volume_ras.shape} and labels {labels_ras.shape} differ in shape")


def window_and_box(
    volume_ras: np.ndarray,
    labels_ras: np.ndarray,
    window: tuple[float, float] | None = None,
    box: tuple[slice, slice, slice] | None = None,
) -> tuple[tuple[float, float], tuple[slice, slice, slice]]:
    """The figures' grey-level window (:func:`display_range`) and in-plane crop
    (:func:`in_plane_box` above 10 % of the window), each computed unless given: an image's
    figures share them, so its report computes them once."""
    low, high = window if window is not None else display_range(volume_ras)
    if box is None:
        box = in_plane_box(volume_ras, labels_ras, low + 0.1 * (high - low))
    return (low, high), box


def axial_mosaic(
    volume_ras: np.ndarray,
    labels_ras: np.ndarray,
    zooms_mm,
    slices: list[int],
    columns: int = MOSAIC_COLUMNS,
    mode: str = "outline",
    window: tuple[float, float] | None = None,
    box: tuple[slice, slice, slice] | None = None,
) -> bytes:
    """Overview mosaic of axial slices with the label overlay; PNG bytes.

    Args:
        volume_ras, labels_ras: (x, y, z) canonical RAS image and labels.
        zooms_mm: voxel size (x, y, z) in mm (sets the pixel aspect ratio).
        slices: z indices to show.
        mode: "outline" (default) or "filled".
        window, box: grey-level window and in-plane crop (default: :func:`window_and_box`).
    """
    _check_shapes(volume_ras, labels_ras)
    (low, high), box = window_and_box(volume_ras, labels_ras, window, box)
    volume_ras, labels_ras = volume_ras[box], labels_ras[box]
    scale = px_per_mm(volume_ras.shape[0] * float(zooms_mm[0]), MOSAIC_TARGET_PX)
    repeats = repeats_for((zooms_mm[1], zooms_mm[0]), scale)
    panels = [
        Panel(render_panel(axial_view(volume_ras, k), axial_view(labels_ras, k), (low, high),
                           repeats, mode), f"slice {k}", ("R", "L", "A", "P"))
        for k in slices
    ]
    return compose(panels, columns)


def axial_pair(
    volume_ras: np.ndarray,
    labels_ras: np.ndarray,
    zooms_mm,
    k: int,
    mode: str = "outline",
    box: tuple[slice, slice, slice] | None = None,
    window: tuple[float, float] | None = None,
) -> bytes:
    """Axial slice ``k`` twice, side by side: the image alone and the image with the labels
    (``mode``), large enough to judge a one-voxel boundary (:data:`DETAIL_MIN_PX_PER_MM`);
    PNG bytes at natural size. ``box``: in-plane crop (default: :func:`in_plane_box`);
    ``window``: grey-level window (default: :func:`display_range` of the volume)."""
    return axial_pairs(volume_ras, labels_ras, zooms_mm, [k], (mode,), box, window)[k, mode]


def axial_pairs(
    volume_ras: np.ndarray,
    labels_ras: np.ndarray,
    zooms_mm,
    slices: list[int],
    modes: tuple[str, ...] = OVERLAY_MODES,
    box: tuple[slice, slice, slice] | None = None,
    window: tuple[float, float] | None = None,
) -> dict[tuple[int, str], bytes]:
    """:func:`axial_pair` of every slice in ``slices`` and overlay in ``modes``, by
    (slice, mode); each slice's image panel is drawn once and the titles of all together."""
    _check_shapes(volume_ras, labels_ras)
    (low, high), box = window_and_box(volume_ras, labels_ras, window, box)
    volume_ras, labels_ras = volume_ras[box], labels_ras[box]
    scale = px_per_mm(volume_ras.shape[0] * float(zooms_mm[0]), DETAIL_TARGET_PX,
                      DETAIL_MIN_PX_PER_MM, DETAIL_MAX_PX)
    repeats = repeats_for((zooms_mm[1], zooms_mm[0]), scale)
    letters = ("R", "L", "A", "P")
    keys, figures = [], []
    for k in slices:
        image, labels = axial_view(volume_ras, k), axial_view(labels_ras, k)
        alone = Panel(render_panel(image, None, (low, high), repeats, None),
                      f"slice {k}: image", letters)
        for mode in modes:
            overlay = Panel(render_panel(image, labels, (low, high), repeats, mode),
                            f"slice {k}: labels ({mode})", letters)
            keys.append((k, mode))
            figures.append(([alone, overlay], None))
    return dict(zip(keys, compose_all(figures)))


def coronal_figure(
    volume_ras: np.ndarray, labels_ras: np.ndarray, zooms_mm, mode: str = "outline",
    window: tuple[float, float] | None = None, box: tuple[slice, slice, slice] | None = None,
) -> tuple[bytes, int]:
    """Coronal reformat through the labels' centre of mass (y): the image and the image with
    the labels side by side; (PNG bytes, y index). ``window``, ``box``: as
    :func:`window_and_box` (computed when not given)."""
    _check_shapes(volume_ras, labels_ras)
    centre = _mean_index(np.count_nonzero(np.asarray(labels_ras) > 0, axis=(0, 2)))
    j = int(round(centre)) if centre is not None else volume_ras.shape[1] // 2
    (low, high), box = window_and_box(volume_ras, labels_ras, window, box)
    volume_ras, labels_ras = volume_ras[box[0]], labels_ras[box[0]]
    scale = px_per_mm(volume_ras.shape[0] * float(zooms_mm[0]), DETAIL_TARGET_PX,
                      DETAIL_MIN_PX_PER_MM, DETAIL_MAX_PX)
    repeats = repeats_for((zooms_mm[2], zooms_mm[0]), scale)
    image, labels = coronal_view(volume_ras, j), coronal_view(labels_ras, j)
    letters = ("R", "L", "S", "I")
    png = compose([
        Panel(render_panel(image, None, (low, high), repeats, None),
              f"coronal, y index {j}: image", letters),
        Panel(render_panel(image, labels, (low, high), repeats, mode),
              f"coronal, y index {j}: labels ({mode})", letters),
    ])
    return png, j


def sagittal_columns(labels_ras: np.ndarray) -> list[tuple[str, int]]:
    """x indices for sagittal reformats: through the centroid of the right-side labels and
    of the left-side labels (radiological order: right first); the labels' centroid when
    no label has a side; none without labels."""
    labels = np.asarray(labels_ras)
    found = []
    if labels.dtype.kind in "iu":  # 0: no side, 1: R, 2: L
        codes = _side_codes()
        wide = labels if labels.dtype.itemsize >= 2 else labels.astype(np.int16)
        sides = codes[np.clip(wide, 0, codes.size - 1)]
    else:
        right = [v for v, e in BY_INDEX.items() if e.side == "R"]
        left = [v for v, e in BY_INDEX.items() if e.side == "L"]
        sides = np.isin(labels, right) + 2 * np.isin(labels, left)
    for code, side in ((1, "R"), (2, "L")):
        centre = _mean_index(np.count_nonzero(sides == code, axis=(1, 2)))
        if centre is not None:
            found.append((side, int(round(centre))))
    if not found:
        centre = _mean_index(np.count_nonzero(labels > 0, axis=(1, 2)))
        if centre is not None:
            found.append(("", int(round(centre))))
    return found


@functools.cache
def _side_codes() -> np.ndarray:
    """uint8 side code by label value (1: R, 2: L, 0: no side or not in the table; the last
    entry stands for every value past the table)."""
    codes = np.zeros(max(BY_INDEX) + 2, dtype=np.uint8)
    for value, entry in BY_INDEX.items():
        if value >= 0:
            codes[value] = {"R": 1, "L": 2}.get(entry.side, 0)
    return codes


def _mean_index(counts: np.ndarray) -> float | None:
    """Mean index of the voxels counted per index along one axis (None without any): the
    mean of their coordinates, the same float (both sums are exact integers)."""
    total = int(counts.sum())
    if total == 0:
        return None
    return np.float64(np.dot(np.arange(counts.size, dtype=np.int64), counts.astype(np.int64))
                      ) / np.float64(total)


def sagittal_figure(
    volume_ras: np.ndarray, labels_ras: np.ndarray, zooms_mm, mode: str = "outline",
    window: tuple[float, float] | None = None, box: tuple[slice, slice, slice] | None = None,
) -> tuple[bytes, list[tuple[str, int]]] | tuple[None, list]:
    """Sagittal reformats through each leg's labels (patient's right first), with the labels
    (``mode``); (PNG bytes, [(side, x index)]), or (None, []) without labels. ``window``,
    ``box``: as :func:`window_and_box` (computed when not given)."""
    _check_shapes(volume_ras, labels_ras)
    columns = sagittal_columns(labels_ras)
    if not columns:
        return None, []
    (low, high), box = window_and_box(volume_ras, labels_ras, window, box)
    volume_ras, labels_ras = volume_ras[:, box[1]], labels_ras[:, box[1]]
    width_mm = volume_ras.shape[1] * float(zooms_mm[1])
    scale = px_per_mm(width_mm, DETAIL_TARGET_PX // 2, DETAIL_MIN_PX_PER_MM, DETAIL_MAX_PX)
    repeats = repeats_for((zooms_mm[2], zooms_mm[1]), scale)
    words = {"R": "right leg", "L": "left leg", "": "labels"}
    panels = [
        Panel(render_panel(sagittal_view(volume_ras, i), sagittal_view(labels_ras, i),
                           (low, high), repeats, mode),
              f"sagittal, {words[side]}, x index {i}", ("A", "P", "S", "I"))
        for side, i in columns
    ]
    return compose(panels), columns


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
