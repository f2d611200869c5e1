"""Fat fraction per label from water and fat images of the same session.

Where the water and fat images come from (first match wins, same subject and session as the
segmented image, any datatype folder):

1. **Dixon water/fat images**: a pair of files that differ only in the ``acq`` entity, one
   ``acq`` ending in ``water`` and one ending in ``fat`` (case-insensitive), e.g.
   ``sub-01_acq-water_T1w.nii.gz`` + ``sub-01_acq-fat_T1w.nii.gz``.
2. **In-phase/out-of-phase magnitudes** giving a two-point estimate: either a pair differing
   only in ``acq`` (``...inphase`` / ``...outphase``), or two echoes of one multi-echo
   gradient-echo series (``_MEGRE``, magnitude, ``EchoTime`` in the sidecars) whose echo times
   lie within :data:`PHASE_TOLERANCE_CYCLES` of an in-phase and of an out-of-phase time at the
   series' field strength (the closest such pair in time is used).

Two-point rule (magnitude images)::

    water = (IP + OP) / 2,   fat = (IP - OP) / 2   (negative fat set to 0)

Magnitude two-point Dixon cannot tell a fat-dominant voxel from a water-dominant one: both
give the same IP and |OP|. The rule assumes water-dominant tissue (FF <= 50 %), which holds
for muscle except in severe fatty replacement; there the estimate folds back below 50 %.
T2* decay between the two echoes is ignored (a small bias towards higher fat). Use
reconstructed water/fat images when available.

Fat fraction per voxel: ``FF = fat / (water + fat)`` with negative inputs set to 0, in
percent; voxels with ``water + fat <= 0`` or outside the water/fat field of view are
excluded. Statistics per label: mean, median and inter-quartile range (75th - 25th
percentile), on the label and on the label eroded in-plane (see :func:`erode_labels`).

When the water/fat grid differs from the label grid, water and fat are sampled at the
centres of the labelled voxels (world coordinates from both affines) by linear
interpolation (``scipy.ndimage.map_coordinates``, order 1); no label is ever resampled.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from legseg_tf import nifti_io
from legseg_tf.bids_inputs import (
    DEFAULT_FIELD_T,
    SessionFile,
    megre_series,
    out_of_phase_distance,
    session_files,
)

logger = logging.getLogger(__name__)

#: Columns added to the morphometry table (percent; voxel counts are integers).
FF_COLUMNS = (
    "ff_mean",
    "ff_median",
    "ff_iqr",
    "ff_voxels",
    "ff_eroded_mean",
    "ff_eroded_median",
    "ff_eroded_iqr",
    "ff_eroded_voxels",
)
#: How far (in cycles of the fat-water frequency difference) an echo may lie from an exact
#: in-phase or out-of-phase time and still be used for the two-point estimate.
PHASE_TOLERANCE_CYCLES = 0.1
#: Median two-point fat fraction (%) above which a label is reported as near the 50 % fold.
TWO_POINT_CEILING_WARN = 40.0
#: Affine entries (mm) within which two grids count as identical.
GRID_TOLERANCE_MM = 1e-3

@dataclass(frozen=True)
class FatWaterSource:
    """Where the water and fat signal of one session come from.

    Attributes:
        method: "dixon" (water + fat images) or "two-point" (in-phase + out-of-phase).
        first: water image (dixon) or in-phase image (two-point).
        second: fat image (dixon) or out-of-phase image (two-point).
        echo_times_s: (in-phase, out-of-phase) echo times for MEGRE pairs, else None.
    """

    method: str
    first: Path
    second: Path
    echo_times_s: tuple[float, float] | None = None

    def describe(self, bids_dir: Path | None = None) -> dict:
        """JSON-ready description (paths relative to ``bids_dir`` when given)."""

        def rel(path: Path) -> str:
            if bids_dir is None:
                return str(path)
            for a, b in (
                (os.path.abspath(path), os.path.abspath(bids_dir)),
                (os.path.realpath(path), os.path.realpath(bids_dir)),
            ):
                try:
                    return Path(a).relative_to(b).as_posix()
                except ValueError:
                    continue
            return str(path)

        if self.method == "dixon":
            info = {"Method": "dixon", "Water": rel(self.first), "Fat": rel(self.second)}
        else:
            info = {
                "Method": "two-point magnitude Dixon",
                "InPhase": rel(self.first),
                "OutOfPhase": rel(self.second),
                "Rule": "water=(IP+OP)/2, fat=(IP-OP)/2; assumes FF <= 50 %",
            }
            if self.echo_times_s is not None:
                info["EchoTimes"] = list(self.echo_times_s)
        return info


@dataclass
class FatFractionResult:
    """Per-label fat fraction statistics of one label map.

    Attributes:
        source: the water/fat images used.
        erosion: in-plane erosion (voxels) of the ``ff_eroded_*`` columns; 0 = none.
        per_label: label value -> {column of :data:`FF_COLUMNS`: value}; NaN where undefined.
        resampled: whether water/fat were interpolated onto the label grid.
        warnings: human-readable problems (e.g. labels that vanish when eroded).
    """

    source: FatWaterSource
    erosion: int
    per_label: dict[int, dict[str, float]]
    resampled: bool
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- finding images


def _acq_pairs(files: list[SessionFile], first_end: str, second_end: str
               ) -> list[tuple[SessionFile, SessionFile]]:
    """Pairs of files identical but for an ``acq`` ending in ``first_end`` / ``second_end``
    (``.nii`` and ``.nii.gz`` pair too)."""

    def key(item: SessionFile, ending: str):
        acq = str(item.entities.get("acquisition", ""))
        if not acq.lower().endswith(ending):
            return None
        rest = {k: str(v) for k, v in item.entities.items()
                if k not in ("acquisition", "extension")}
        rest["acquisition"] = acq[: len(acq) - len(ending)].lower()
        return tuple(sorted(rest.items()))

    seconds = {}
    for item in files:
        k = key(item, second_end)
        if k is not None:
            seconds.setdefault(k, item)
    pairs = []
    for item in files:
        k = key(item, first_end)
        if k is not None and k in seconds:
            pairs.append((item, seconds[k]))
    return pairs


def _megre_pairs(files: list[SessionFile]) -> list[tuple[SessionFile, SessionFile, float, float]]:
    """(in-phase, out-of-phase, TE_ip, TE_op) magnitude echo pairs of MEGRE series."""
    echoes = []
    for item in files:
        entities = item.entities
        if (entities.get("suffix") != "MEGRE" or entities.get("part", "mag") != "mag"
                or "echo" not in entities):
            continue
        echo_time = item.metadata.get("EchoTime")
        if not isinstance(echo_time, (int, float)) or echo_time <= 0:
            logger.debug("no EchoTime for %s; not used for fat fraction", item.path)
            continue
        echoes.append(item)
    pairs = []
    for series in megre_series(echoes, lambda item: item.entities):
        by_field: dict[float, list[tuple[float, SessionFile]]] = {}
        for item in series:
            field_t = item.metadata.get("MagneticFieldStrength", DEFAULT_FIELD_T)
            by_field.setdefault(float(field_t), []).append(
                (float(item.metadata["EchoTime"]), item))
        for field_t, members in sorted(by_field.items()):
            in_phase = [(te, f) for te, f in members
                        if out_of_phase_distance(te, field_t) >= 0.5 - PHASE_TOLERANCE_CYCLES]
            out_phase = [(te, f) for te, f in members
                         if out_of_phase_distance(te, field_t) <= PHASE_TOLERANCE_CYCLES]
            candidates = sorted(
                ((abs(ti - to), min(ti, to), ti, to, str(fi.path), str(fo.path)), fi, fo)
                for ti, fi in in_phase for to, fo in out_phase)
            if candidates:
                (_, _, ti, to, _, _), fi, fo = candidates[0]
                pairs.append((fi, fo, ti, to))
    return pairs


def find_fat_water(
    bids_dir: Path, subject: str, session: str | None, prefer_entities: dict | None = None
) -> FatWaterSource | None:
    """Water/fat (or in-phase/out-of-phase) images of a session, or None (module docstring).

    The session's images, their entities and inherited sidecar metadata come from the pybids
    index (:func:`legseg_tf.bids_inputs.session_files`).

    Args:
        bids_dir: BIDS root.
        subject, session: labels without prefixes.
        prefer_entities: pybids entities of the segmented image; among several candidate pairs
            the one sharing most of its ``run``/``reconstruction``/``ceagent`` values is chosen.
    """
    files = session_files(bids_dir, subject, session)
    prefer = prefer_entities or {}

    def norm(value) -> str:
        text = str(value)
        return str(int(text)) if text.isdigit() else text

    wanted = {name: norm(prefer[name]) for name in ("run", "reconstruction", "ceagent")
              if prefer.get(name) is not None}

    def score(item: SessionFile) -> tuple:
        matches = sum(norm(item.entities.get(name, "")) == value
                      for name, value in wanted.items())
        return (-matches, str(item.path))

    dixon = sorted(_acq_pairs(files, "water", "fat"), key=lambda pair: score(pair[0]))
    if dixon:
        if len(dixon) > 1:
            logger.info("several water/fat pairs for sub-%s; using %s", subject,
                        dixon[0][0].path.name)
        return FatWaterSource("dixon", dixon[0][0].path, dixon[0][1].path)
    phase_pairs = sorted(_acq_pairs(files, "inphase", "outphase"), key=lambda pair: score(pair[0]))
    if phase_pairs:
        return FatWaterSource("two-point", phase_pairs[0][0].path, phase_pairs[0][1].path)
    echoes = sorted(_megre_pairs(files), key=lambda pair: score(pair[0]))
    if echoes:
        ip, op, te_ip, te_op = echoes[0]
        return FatWaterSource("two-point", ip.path, op.path, (te_ip, te_op))
    return None


# --------------------------------------------------------------------------- array functions


def two_point_dixon(in_phase: np.ndarray, out_phase: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Water and fat from in-phase and out-of-phase magnitudes (water-dominant assumption).

    Returns:
        ``(water, fat)`` float32 arrays: ``water = (IP + OP) / 2``,
        ``fat = max((IP - OP) / 2, 0)``.
    """
    in_phase = np.asarray(in_phase, dtype=np.float32)
    out_phase = np.asarray(out_phase, dtype=np.float32)
    if in_phase.shape != out_phase.shape:
        raise ValueError(
            f"in-phase {in_phase.shape} and out-of-phase {out_phase.shape} differ in shape"
        )
    water = 0.5 * (in_phase + out_phase)
    fat = np.maximum(0.5 * (in_phase - out_phase), 0.0)
    return water, fat


def fat_fraction(water: np.ndarray, fat: np.ndarray) -> np.ndarray:
    """Voxel fat fraction in percent, ``100 * fat / (water + fat)``; NaN where undefined.

    Negative water or fat values are set to 0 first, so the result lies in [0, 100].
    """
    water = np.clip(np.asarray(water, dtype=np.float64), 0.0, None)
    fat = np.clip(np.asarray(fat, dtype=np.float64), 0.0, None)
    total = water + fat
    with np.errstate(invalid="ignore", divide="ignore"):
        ff = np.where(total > 0, 100.0 * fat / total, np.nan)
    return ff


def erode_labels(labels: np.ndarray, iterations: int) -> np.ndarray:
    """Erode every label separately, in-plane (within each z slice), by ``iterations`` voxels.

    In-plane rather than 3-D because slices are typically 5-10 mm thick against 1-2 mm
    in-plane: a 3-D erosion would strip whole end slices of each muscle while removing the
    partial-volume rim with the fat around it is what matters. The structuring element is
    the 4-neighbourhood cross of the (x, y) plane.

    Args:
        labels: integer label map (x, y, z).
        iterations: erosion depth in voxels; 0 returns a copy.
    """
    if iterations < 0:
        raise ValueError(f"erosion must be >= 0 voxels, got {iterations}")
    labels = np.asarray(labels)
    out = np.zeros_like(labels)
    if iterations == 0:
        out[...] = labels
        return out
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[:, :, 1] = ndimage.generate_binary_structure(2, 1)
    for index, box in enumerate(
        ndimage.find_objects(labels.astype(np.int64, copy=False)), start=1
    ):
        if box is None:
            continue
        mask = labels[box] == index
        eroded = ndimage.binary_erosion(
            mask, structure=structure, iterations=iterations, border_value=0
        )
        out[box][eroded] = index
    return out


def same_grid(
    shape_a, affine_a, shape_b, affine_b, tolerance_mm: float = GRID_TOLERANCE_MM
) -> bool:
    """Whether two (shape, affine) grids coincide."""
    return tuple(shape_a[:3]) == tuple(shape_b[:3]) and np.allclose(
        np.asarray(affine_a), np.asarray(affine_b), atol=tolerance_mm
    )


def sample_at_voxels(
    image: np.ndarray,
    image_affine: np.ndarray,
    voxels_ijk: np.ndarray,
    grid_affine: np.ndarray,
    order: int = 1,
) -> np.ndarray:
    """Values of ``image`` at the world positions of voxel indices of another grid.

    Args:
        image: (x, y, z) array.
        image_affine: its 4x4 affine.
        voxels_ijk: (n, 3) voxel indices on the grid of ``grid_affine``.
        grid_affine: 4x4 affine of that grid.
        order: 0 nearest, 1 linear interpolation.

    Returns:
        (n,) float64 values; NaN where the point lies outside ``image``.
    """
    voxels = np.asarray(voxels_ijk, dtype=np.float64).reshape(-1, 3)
    mapping = np.linalg.inv(np.asarray(image_affine, dtype=np.float64)) @ np.asarray(
        grid_affine, dtype=np.float64
    )
    coords = (mapping[:3, :3] @ voxels.T) + mapping[:3, 3:4]
    return ndimage.map_coordinates(
        np.asarray(image, dtype=np.float64), coords, order=order, mode="constant", cval=np.nan
    )


def _stats(values: np.ndarray) -> tuple[float, float, float, int]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return np.nan, np.nan, np.nan, 0
    q25, median, q75 = np.percentile(values, [25, 50, 75])
    return float(values.mean()), float(median), float(q75 - q25), int(values.size)


def label_fat_fraction(
    labels_ras: np.ndarray,
    label_affine: np.ndarray,
    water: np.ndarray,
    fat: np.ndarray,
    image_affine: np.ndarray,
    erosion: int = 1,
) -> tuple[dict[int, dict[str, float]], bool]:
    """Fat fraction statistics (percent) per label, plain and eroded.

    Args:
        labels_ras: integer label map (x, y, z) in canonical RAS.
        label_affine: its affine.
        water, fat: (x, y, z) canonical RAS images on one grid.
        image_affine: their affine.
        erosion: in-plane erosion for the ``ff_eroded_*`` columns; 0 disables (those columns
            then equal the plain ones).

    Returns:
        ``(per_label, resampled)``: label -> {FF column: value}, and whether water/fat were
        interpolated onto the label grid.
    """
    labels = np.asarray(labels_ras)
    water = np.asarray(water)
    fat = np.asarray(fat)
    if water.shape != fat.shape:
        raise ValueError(f"water {water.shape} and fat {fat.shape} images differ in shape")
    eroded = erode_labels(labels, erosion)
    voxels = np.argwhere(labels > 0)
    resampled = not same_grid(labels.shape, label_affine, water.shape, image_affine)
    if resampled:
        w = sample_at_voxels(water, image_affine, voxels, label_affine)
        f = sample_at_voxels(fat, image_affine, voxels, label_affine)
    else:
        index = tuple(voxels.T)
        w, f = water[index].astype(np.float64), fat[index].astype(np.float64)
    ff = fat_fraction(w, f)
    values = labels[tuple(voxels.T)]
    kept = eroded[tuple(voxels.T)] > 0
    per_label: dict[int, dict[str, float]] = {}
    for value in np.unique(values):
        in_label = values == value
        mean, median, iqr, count = _stats(ff[in_label])
        e_mean, e_median, e_iqr, e_count = _stats(ff[in_label & kept])
        per_label[int(value)] = {
            "ff_mean": mean,
            "ff_median": median,
            "ff_iqr": iqr,
            "ff_voxels": count,
            "ff_eroded_mean": e_mean,
            "ff_eroded_median": e_median,
            "ff_eroded_iqr": e_iqr,
            "ff_eroded_voxels": e_count,
        }
    return per_label, resampled


def load_fat_water(source: FatWaterSource) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Water and fat (x, y, z) canonical RAS arrays and their affine for a source."""
    first, geometry_a = nifti_io.load_canonical(source.first)
    second, geometry_b = nifti_io.load_canonical(source.second)
    if not same_grid(first.shape, geometry_a.ras_affine, second.shape, geometry_b.ras_affine):
        raise ValueError(f"{source.first.name} and {source.second.name} are not on the same grid")
    if source.method == "dixon":
        return first, second, geometry_a.ras_affine
    water, fat = two_point_dixon(first, second)
    return water, fat, geometry_a.ras_affine


def session_fat_fraction(
    labels_ras: np.ndarray,
    label_affine: np.ndarray,
    bids_dir: Path,
    subject: str,
    session: str | None,
    erosion: int = 1,
    prefer_entities: dict | None = None,
) -> FatFractionResult | None:
    """Find the session's water/fat images and compute per-label fat fraction; None if none."""
    source = find_fat_water(bids_dir, subject, session, prefer_entities)
    if source is None:
        return None
    water, fat, affine = load_fat_water(source)
    per_label, resampled = label_fat_fraction(
        labels_ras, label_affine, water, fat, affine, erosion
    )
    warnings = []
    if source.method == "two-point":
        high = [
            v for v, st in sorted(per_label.items()) if st["ff_median"] > TWO_POINT_CEILING_WARN
        ]
        if high:
            warnings.append(
                f"two-point fat fraction above {TWO_POINT_CEILING_WARN:g} % for labels "
                f"{', '.join(map(str, high))}: magnitude two-point Dixon folds fat-dominant "
                "voxels "
                "back below 50 %, so these values may be underestimates"
            )
    for value, stats in sorted(per_label.items()):
        if stats["ff_voxels"] == 0:
            warnings.append(f"label {value}: no voxel inside the water/fat field of view")
        elif erosion and stats["ff_eroded_voxels"] == 0:
            warnings.append(f"label {value}: nothing left after {erosion}-voxel erosion")
    logger.info(
        "fat fraction for sub-%s%s from %s (%s)%s",
        subject,
        f" ses-{session}" if session else "",
        source.first.name,
        source.method,
        ", resampled onto the label grid" if resampled else "",
    )
    return FatFractionResult(source, erosion, per_label, resampled, warnings)
