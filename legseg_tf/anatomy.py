"""Network-free body-level check from bone cross-sections (calf, knee, thigh, pelvis).

The position classifier (:mod:`legseg_tf.body_position`) only knows the contrasts and scanners
it was trained on. This module estimates each slice's level from anatomy that every
lower-extremity MRI shows, whatever the contrast: bone cortex is a signal void, so a bone is a
compact, closed, roughly round dark structure inside the leg:

* water-like images (fat dark): cortex and marrow are one dark disc;
* in-phase, opposed-phase and fat images (marrow bright): a dark ring around bright marrow.
  Opposed-phase images also draw thin dark lines at every fat-water boundary; a one-pixel
  opening removes them, and only compact round structures count.

Per leg (the columns on either side of the left/right cut) the bones are found and read:

* **Lower** (calf): a large bone (tibia) with a small bone (fibula) lateral to it;
* **Upper** (thigh): one round bone (femur, 2.5-12 cm\\ :sup:`2` with marrow) deep in the leg
  and no second bone;
* **Knee**: one very large bone (condyles, tibial plateau), or a tibia-fibula pair whose tibia
  is very large (plateau and fibular head);
* **Hip**: bone on the body midline (pubis, sacrum), a large bone medial to the femur
  (ischium, pubic ramus) or one body lobe without separate legs.

All measurements are in mm and mm\\ :sup:`2` (the voxel size is used), so a 0.8 mm and a 3 mm
in-plane grid behave alike. Arrays are in the QMRITools layout (z, y, x): slice 0 inferior, row
0 anterior, column 0 the patient's right; spacing is (dz, dy, dx) in mm. Columns ``< cut`` are
the patient's right leg, whose lateral side is towards column 0.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from legseg_tf.masking import apply_mask, bounding_box

logger = logging.getLogger(__name__)

#: Levels this module can return, in body order.
ANATOMY_LEVELS = ("Lower", "Knee", "Upper", "Hip")


@dataclass(frozen=True)
class AnatomyConfig:
    """Thresholds of the bone detector (lengths in mm, areas in mm^2).

    Attributes:
        tissue_fraction: tissue = intensity above this fraction of the volume's 98th percentile.
        dark_fraction: a voxel is void (cortex) below this fraction of its leg's 75th
            percentile.
        min_bone_area, max_bone_area: filled cross-section of a bone candidate.
        min_solidity: area / convex-hull area of a candidate.
        max_axis_ratio: major / minor axis of a candidate's second moments.
        min_bright_rim: fraction of the 2-mm rim around a candidate that must be non-void (a
            bone lies in muscle; fat pockets along the skin in water images do not).
        femur_area: (min, max) cross-section of a thigh femur.
        knee_area: a single bone at least this large is a knee (condyles or tibial plateau).
        tibia_knee_area: a tibia of a tibia-fibula pair at least this large is a knee level.
        fibula_area: (min, max) cross-section of the fibula.
        fibula_distance: (min, max) distance between the tibia and fibula centres.
        fibula_lateral: minimum lateral offset of the fibula centre from the tibia centre.
        min_femur_depth: minimum distance from the femur centre to the skin.
        tibia_max_depth: maximum distance from the tibia centre to the skin (its
            anteromedial face lies under the skin).
        knee_fraction: a knee bone covers at least this fraction of the leg's cross-section;
            a very large deep bone covering less is a proximal femur (hip level).
        min_inner_depth: minimum distance from the skin to the centre of a bone other than
            the largest (void pockets in subcutaneous fat are shallower).
        midline_zone: half-width of the zone around the cut where a deep bone in a body
            lobe crossing the cut means pelvis.
        hip_medial_area, hip_medial_depth: a second bone this large, this deep, medial to the
            main bone means pelvis (ischium, pubis; femoral vessels are shallower).
        lobe_ratio: one lobe across the cut spanning this fraction of the body's
            anterior-posterior extent (with no bone pattern of legs) means pelvis.
        pelvis_width: a body lobe narrower than this (left to right) is one leg, not a pelvis.
        max_knee_leg_area: a leg (body half) larger than this is no calf or knee.
    """

    tissue_fraction: float = 0.12
    dark_fraction: float = 0.3
    min_bone_area: float = 40.0
    max_bone_area: float = 6000.0
    min_solidity: float = 0.8
    max_axis_ratio: float = 2.5
    min_bright_rim: float = 0.5
    femur_area: tuple[float, float] = (250.0, 1200.0)
    knee_area: float = 1200.0
    tibia_knee_area: float = 1300.0
    fibula_area: tuple[float, float] = (50.0, 450.0)
    fibula_distance: tuple[float, float] = (12.0, 75.0)
    fibula_lateral: float = 5.0
    min_femur_depth: float = 25.0
    tibia_max_depth: float = 35.0
    knee_fraction: float = 0.12
    min_inner_depth: float = 12.0
    midline_zone: float = 15.0
    hip_medial_area: float = 300.0
    hip_medial_depth: float = 25.0
    lobe_ratio: float = 0.85
    pelvis_width: float = 260.0
    max_knee_leg_area: float = 18000.0


@dataclass(frozen=True)
class Bone:
    """One bone candidate of a slice (positions in the slice's pixel grid)."""

    area_mm2: float
    center_yx: tuple[float, float]
    solidity: float
    axis_ratio: float
    depth_mm: float

    def to_report(self) -> dict:
        return {"area_mm2": round(self.area_mm2, 1),
                "center_yx": [round(c, 1) for c in self.center_yx],
                "solidity": round(self.solidity, 3), "axis_ratio": round(self.axis_ratio, 2),
                "depth_mm": round(self.depth_mm, 1)}


@dataclass(frozen=True)
class LegReading:
    """Level read from one leg of one slice."""

    side: str
    level: str | None
    reason: str
    bones: tuple[Bone, ...] = ()


@dataclass(frozen=True)
class SliceLevel:
    """Anatomical level of one slice.

    Attributes:
        level: "Lower", "Knee", "Upper", "Hip" or None (undecided).
        confidence: 0..1; 1.0 when both legs agree (or a pelvis sign), 0.8 when the slice
            shows one leg, 0.5 when one of two legs is undecided, 0 when undecided.
        legs: per-leg readings.
    """

    level: str | None
    confidence: float
    legs: tuple[LegReading, ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class AnatomyResult:
    """Per-slice levels of a volume (index = slice of the (z, y, x) volume)."""

    slices: tuple[SliceLevel, ...]
    cut: int
    config: AnatomyConfig = field(default_factory=AnatomyConfig)

    @property
    def levels(self) -> list[str | None]:
        return [s.level for s in self.slices]

    @property
    def confidences(self) -> np.ndarray:
        return np.array([s.confidence for s in self.slices], dtype=np.float64)

    def confident_levels(self, threshold: float = 0.75) -> list[str | None]:
        """Level of each slice whose confidence reaches ``threshold``, otherwise None."""
        return [s.level if s.level is not None and s.confidence >= threshold else None
                for s in self.slices]

    def to_report(self) -> dict:
        """JSON-serialisable per-slice levels for the segmentation report."""
        return {
            "method": "bone cross-sections (network-free)",
            "cut_column": int(self.cut),
            "levels": [s.level for s in self.slices],
            "confidence": [round(float(s.confidence), 2) for s in self.slices],
            "counts": dict(Counter(s.level for s in self.slices if s.level)),
        }


def _disc(radius_px: int) -> np.ndarray:
    r = max(int(radius_px), 1)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return yy**2 + xx**2 <= r * r + 0.5


def tissue_mask(image: np.ndarray, threshold: float, spacing_yx: tuple[float, float]) -> np.ndarray:
    """Filled tissue mask of one (y, x) slice: above ``threshold``, closed over ~3 mm."""
    above = image > threshold
    box = bounding_box(above)
    if box is None:
        return above
    # on the bounding box of what is above the threshold: closing, hole filling and opening
    # stay inside it, and pixels outside it are background whatever is done
    radius = max(1, int(round(3.0 / min(spacing_yx))))
    mask = ndimage.binary_closing(np.pad(above[box], radius + 1), structure=_disc(radius))
    mask = mask[radius + 1:-radius - 1, radius + 1:-radius - 1]
    mask = ndimage.binary_fill_holes(mask)
    out = np.zeros_like(above)
    out[box] = ndimage.binary_opening(mask, structure=np.ones((3, 3), bool))
    return out


def _shape(region: np.ndarray, spacing_yx: tuple[float, float],
           limits: tuple[float, float] | None = None) -> tuple[float, float]:
    """(solidity, axis ratio) of a filled 2-D region, in mm.

    With ``limits`` = (minimum solidity, maximum axis ratio), a region that fails either is
    told so as cheaply as possible: the returned pair then fails the same test (and is not
    otherwise meaningful). The axis ratio comes first; the solidity is first bounded from
    above by the area of the region's extreme corners in eight directions, a polygon inside
    the convex hull, and the hull itself is computed only when that bound passes.
    """
    ys, xs = np.nonzero(region)
    dy, dx = spacing_yx
    if ys.size < 5:
        return 0.0, np.inf
    points = np.column_stack([ys * dy, xs * dx])
    cov = np.cov(points.T) + np.eye(2) * (dy * dx / 12.0)
    eig = np.sort(np.linalg.eigvalsh(cov))
    ratio = float(np.sqrt(eig[1] / eig[0])) if eig[0] > 0 else np.inf
    if limits is not None and ratio > limits[1]:
        return 0.0, ratio
    # the hull's corners come from the first and last pixel of each row: a pixel between
    # them has its corners on the segments joining theirs
    ends = np.flatnonzero(np.diff(ys, prepend=-1, append=ys[-1] + 1) != 0)
    rows = np.unique(np.concatenate([ends[:-1], ends[1:] - 1]))
    corners = np.concatenate([points[rows] + [sy * dy / 2, sx * dx / 2]
                              for sy in (-1, 1) for sx in (-1, 1)])
    area = ys.size * dy * dx
    if limits is not None:
        inscribed = _extreme_polygon_area(corners)
        # area / hull <= area / inscribed: below the minimum already (with a margin for
        # rounding far above float64's), the hull cannot lift it
        if inscribed > 0 and area / inscribed < limits[0] * (1.0 - 1e-9):
            return area / inscribed, ratio
    try:
        hull_area = ConvexHull(corners).volume
    except QhullError:
        return 0.0, np.inf
    solidity = area / hull_area if hull_area > 0 else 0.0
    return float(solidity), ratio


#: Eight directions (y, x) in counter-clockwise order of angle.
_DIRECTIONS = np.array([(0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1)],
                       dtype=float)


def _extreme_polygon_area(points: np.ndarray) -> float:
    """Area of the polygon through the points of ``points`` (n, 2) that lie farthest in eight
    directions, in angular order: its corners are on the convex hull, in the hull's order, so
    it lies inside the hull (area <= the hull's)."""
    corners = points[np.argmax(points @ _DIRECTIONS.T, axis=0)]
    y, x = corners[:, 0], corners[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _depth_map(leg: np.ndarray, spacing_yx: tuple[float, float]) -> np.ndarray:
    """Distance (mm) of each pixel of ``leg`` to the nearest pixel outside it (0 outside),
    as ``distance_transform_edt`` of the whole slice gives it.

    Computed on the leg's bounding box grown by one pixel (within the slice): every
    background pixel beyond that ring lies farther than some ring pixel.
    """
    depth = np.zeros(leg.shape, dtype=np.float64)
    box = bounding_box(leg, 1)
    if box is None:
        return depth
    depth[box] = ndimage.distance_transform_edt(leg[box], sampling=spacing_yx)
    return depth


def find_bones(
    image: np.ndarray,
    leg: np.ndarray,
    spacing_yx: tuple[float, float],
    config: AnatomyConfig = AnatomyConfig(),
) -> list[Bone]:
    """Bone candidates in one leg of one slice, largest first.

    Args:
        image: (y, x) intensities of the slice.
        leg: (y, x) bool mask of the leg (filled tissue).
        spacing_yx: (dy, dx) pixel size in mm.

    Returns:
        Compact round void structures (rings filled with their marrow, or dark discs) inside
        the leg, surrounded mainly by non-void tissue.
    """
    leg = np.asarray(leg, dtype=bool)
    # Work on the leg's bounding box grown by the rim radius (within the slice): every
    # candidate, its rim and the depth map's nearest background pixel lie inside it, so the
    # bones are those of the whole slice, at a fraction of the work.
    box = bounding_box(leg, max(1, int(round(2.0 / min(spacing_yx)))))
    if box is None:
        return []
    return _find_bones_in_box(np.asarray(image)[box], leg[box], spacing_yx, config,
                              (box[0].start, box[1].start))


def _find_bones_in_box(
    image: np.ndarray,
    leg: np.ndarray,
    spacing_yx: tuple[float, float],
    config: AnatomyConfig,
    origin: tuple[int, int],
) -> list[Bone]:
    """:func:`find_bones` on a crop whose pixel (0, 0) is the slice's pixel ``origin``."""
    dy, dx = spacing_yx
    pixel_area = dy * dx
    values = image[leg]
    if values.size == 0:
        return []
    reference = float(np.percentile(values, 75))
    if reference <= 0:
        return []
    dark = (image < config.dark_fraction * reference) & leg
    depth_map = _depth_map(leg, spacing_yx)
    candidates: list[np.ndarray] = []
    # three routes: raw void components (thin isolated rings such as a fibula), a one-pixel
    # opening (drops fat-water lines touching a ring; rings keep their marrow)
    thin = ndimage.binary_opening(dark, structure=np.ones((3, 3), bool))
    # thick route: a ~3.5 mm opening parts dark discs from thin fat layers they touch
    radius = max(1, int(round(3.5 / min(spacing_yx))))
    thick = ndimage.binary_opening(dark, structure=_disc(radius))
    seen: set[tuple] = set()
    for route in (dark, thin, thick):
        labels, count = ndimage.label(route, structure=np.ones((3, 3), bool))  # 8-connected
        if not count:
            continue
        for index, box in enumerate(ndimage.find_objects(labels), start=1):
            component = labels[box] == index
            area = component.sum() * pixel_area
            # filling holes only grows a component, within its box: outside the bone sizes
            # before filling (too big) or even when its whole box is filled (too small),
            # it is outside them after
            if area < config.min_bone_area * 0.3 or area > config.max_bone_area or \
                    component.size * pixel_area < config.min_bone_area:
                continue
            # a component found by an earlier route again: its twin would meet the same tests
            # right after it (same size) and be dropped as taken or for the same reason
            key = (tuple((b.start, b.stop) for b in box), component.tobytes())
            if key in seen:
                continue
            seen.add(key)
            candidates.append((box, ndimage.binary_fill_holes(component)))
    bones: list[Bone] = []
    taken = np.zeros(image.shape, dtype=bool)
    rim_radius = max(1, int(round(2.0 / min(spacing_yx))))
    disc = _disc(rim_radius)
    for box, filled in sorted(candidates, key=lambda c: -int(c[1].sum())):
        area = filled.sum() * pixel_area
        if not config.min_bone_area <= area <= config.max_bone_area:
            continue
        # the candidate within its box grown by the rim radius (clipped to the crop): the rim
        # cannot reach farther, so every test below sees what it would on the whole crop
        window = tuple(slice(max(b.start - rim_radius, 0), min(b.stop + rim_radius, n))
                       for b, n in zip(box, image.shape))
        inner = tuple(slice(b.start - w.start, b.stop - w.start) for b, w in zip(box, window))
        full = np.zeros([w.stop - w.start for w in window], dtype=bool)
        full[inner] = filled
        if (full & taken[window]).sum() > 0.3 * full.sum():
            continue
        if not leg[box][filled].all():
            continue
        solidity, ratio = _shape(filled, spacing_yx,
                                 (config.min_solidity, config.max_axis_ratio))
        if solidity < config.min_solidity or ratio > config.max_axis_ratio:
            continue
        rim = ndimage.binary_dilation(full, structure=disc) & ~full
        if not rim.any() or \
                (rim & leg[window] & ~dark[window]).sum() < config.min_bright_rim * rim.sum():
            continue
        ys, xs = np.nonzero(filled)
        ys, xs = ys + box[0].start + origin[0], xs + box[1].start + origin[1]
        center = (float(ys.mean()), float(xs.mean()))
        depth = float(depth_map[int(round(center[0])) - origin[0],
                                int(round(center[1])) - origin[1]])
        bones.append(Bone(float(area), center, solidity, ratio, depth))
        taken[window] |= full
    bones.sort(key=lambda b: -b.area_mm2)
    return bones


def read_leg(
    bones: list[Bone],
    side: str,
    cut: int,
    spacing_yx: tuple[float, float],
    leg_area_mm2: float,
    config: AnatomyConfig = AnatomyConfig(),
) -> tuple[str | None, str]:
    """Level of one leg from its bones: (level or None, reason).

    Args:
        bones: candidates from :func:`find_bones`, largest first.
        side: "R" (columns < cut; lateral = towards column 0) or "L".
        cut: the left/right cut column.
        spacing_yx: (dy, dx) in mm.
        leg_area_mm2: cross-section of the leg.
    """
    if not bones:
        return None, "no bone found"
    dy, dx = spacing_yx
    lateral_sign = -1.0 if side == "R" else 1.0
    main = bones[0]
    # secondary bones lie deep in the leg; void pockets in the subcutaneous fat do not count
    others = [b for b in bones[1:] if b.depth_mm >= config.min_inner_depth]

    def offsets(bone: Bone) -> tuple[float, float, float]:
        lateral = (bone.center_yx[1] - main.center_yx[1]) * dx * lateral_sign
        posterior = (bone.center_yx[0] - main.center_yx[0]) * dy
        return lateral, posterior, float(np.hypot(lateral, posterior))

    fibulae = []
    medial_large = []
    for bone in others:
        lateral, posterior, distance = offsets(bone)
        if (config.fibula_area[0] <= bone.area_mm2 <= min(config.fibula_area[1],
                                                          0.6 * main.area_mm2)
                and config.fibula_distance[0] <= distance <= config.fibula_distance[1]
                and lateral >= config.fibula_lateral and posterior >= -10.0):
            fibulae.append(bone)
        elif (bone.area_mm2 >= config.hip_medial_area and lateral < -15.0
              and bone.depth_mm >= config.hip_medial_depth):
            medial_large.append(bone)
    if medial_large and main.area_mm2 >= config.femur_area[0]:
        return "Hip", "large bone medial to the femur"
    if leg_area_mm2 > config.max_knee_leg_area:
        # a calf or knee this wide does not occur; half a pelvis does
        if main.area_mm2 >= config.knee_area:
            return "Hip", "very large bone in a very large body half"
        if not (config.femur_area[0] <= main.area_mm2 < config.femur_area[1]):
            return None, "body half too large for a calf or knee"
        fibulae = []
    large = main.area_mm2 >= config.knee_area
    knee_sized = large and main.area_mm2 >= config.knee_fraction * leg_area_mm2
    if fibulae and main.depth_mm <= config.tibia_max_depth:
        if main.area_mm2 >= config.tibia_knee_area:
            return "Knee", "very large tibia with fibula"
        if main.area_mm2 >= config.fibula_area[0] * 2:
            return "Lower", "tibia with lateral fibula"
    if knee_sized:
        return "Knee", "very large bone filling much of the leg"
    if large and main.depth_mm >= config.min_femur_depth:
        return "Hip", "very large deep bone in a large leg (proximal femur)"
    if (config.femur_area[0] <= main.area_mm2 < config.femur_area[1]
            and main.depth_mm >= config.min_femur_depth and main.axis_ratio <= 1.8):
        sizeable = [b for b in others if b.area_mm2 >= 0.15 * main.area_mm2]
        if not sizeable:
            return "Upper", "one round deep bone"
        return None, "one femur-like bone and others"
    return None, "no known bone pattern"


def _legs(tissue: np.ndarray, cut: int) -> list[tuple[str, np.ndarray]]:
    """(side, mask) of the largest tissue component on each side of the cut."""
    legs = []
    for side, columns in (("R", slice(0, cut)), ("L", slice(cut, tissue.shape[1]))):
        half = np.zeros_like(tissue)
        half[:, columns] = tissue[:, columns]
        labels, count = ndimage.label(half)
        if not count:
            continue
        sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        legs.append((side, labels == int(np.argmax(sizes)) + 1))
    return legs


def _single_lobe(tissue: np.ndarray, cut: int, spacing_yx: tuple[float, float],
                 config: AnatomyConfig) -> bool:
    """The body crosses the cut over most of its anterior-posterior extent (no two legs)."""
    rows = np.flatnonzero(tissue.any(axis=1))
    columns = np.flatnonzero(tissue.any(axis=0))
    if rows.size == 0 or (columns[-1] - columns[0] + 1) * spacing_yx[1] < config.pelvis_width:
        return False
    width = max(1, int(round(5.0 / spacing_yx[1])))
    band = tissue[:, max(cut - width, 0):cut + width + 1].all(axis=1)
    return band.sum() >= config.lobe_ratio * (rows[-1] - rows[0] + 1)


def slice_level(
    image: np.ndarray,
    spacing_yx: tuple[float, float],
    cut: int,
    threshold: float,
    config: AnatomyConfig = AnatomyConfig(),
) -> SliceLevel:
    """Level of one (y, x) slice (see the module docstring for the rules).

    Args:
        image: (y, x) intensities.
        spacing_yx: (dy, dx) in mm.
        cut: left/right cut column (columns < cut: right leg).
        threshold: tissue intensity threshold.
    """
    tissue = tissue_mask(image, threshold, spacing_yx)
    min_leg = 2000.0 / (spacing_yx[0] * spacing_yx[1])  # 20 cm^2
    if tissue.sum() < min_leg:
        return SliceLevel(None, 0.0, (), "no tissue")
    readings = []
    for side, leg in _legs(tissue, cut):
        if leg.sum() < min_leg:
            continue
        bones = find_bones(image, leg, spacing_yx, config)
        level, reason = read_leg(bones, side, cut, spacing_yx,
                                 float(leg.sum()) * spacing_yx[0] * spacing_yx[1], config)
        readings.append(LegReading(side, level, reason, tuple(bones)))
    lobe = _single_lobe(tissue, cut, spacing_yx, config)
    midline = [b for r in readings for b in r.bones
               if abs(b.center_yx[1] - cut) * spacing_yx[1] < config.midline_zone
               and b.area_mm2 >= config.hip_medial_area * 0.5
               and b.depth_mm >= config.min_inner_depth]
    if lobe and midline:
        return SliceLevel("Hip", 1.0, tuple(readings), "bone on the midline of one body lobe")
    decided = [r.level for r in readings if r.level is not None]
    if lobe and not decided:
        return SliceLevel("Hip", 0.8, tuple(readings), "one lobe across the midline, no leg bones")
    if not decided:
        return SliceLevel(None, 0.0, tuple(readings), "undecided")
    if len(set(decided)) > 1:
        return SliceLevel(None, 0.0, tuple(readings), "legs disagree")
    level = decided[0]
    if len(decided) == 2:
        confidence = 1.0
    elif len(readings) == 1:
        confidence = 0.8
    else:
        confidence = 0.5
    if level == "Hip" and lobe:
        confidence = max(confidence, 0.8)
    elif lobe:
        confidence = min(confidence, 0.5)
    return SliceLevel(level, confidence, tuple(readings), "bones")


def tissue_threshold(volume: np.ndarray, config: AnatomyConfig = AnatomyConfig(),
                     mask: np.ndarray | None = None) -> float | None:
    """Intensity above which :func:`anatomy_levels` calls a pixel tissue:
    ``config.tissue_fraction`` x the 98th percentile of the positive voxels of ``volume``
    (within ``mask`` when given); None when there is no positive voxel."""
    volume = np.asarray(volume, dtype=np.float32)
    inside = volume > 0
    if mask is not None:
        inside &= _mask_like(mask, volume)
    positive = volume[inside]
    if positive.size == 0:
        return None
    return config.tissue_fraction * float(np.percentile(positive, 98))


def _mask_like(mask: np.ndarray, volume: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != volume.shape:
        raise ValueError(f"mask shape {mask.shape} differs from volume shape {volume.shape}")
    return mask


def slice_reader(
    volume: np.ndarray,
    spacing_zyx: tuple[float, float, float],
    cut: int,
    config: AnatomyConfig = AnatomyConfig(),
    *,
    mask: np.ndarray | None = None,
    threshold: float | None = None,
) -> Callable[[int], SliceLevel]:
    """``z -> SliceLevel`` of one slice: what :func:`anatomy_levels` maps over the slices
    (arguments as there, ``cut`` required), for callers that share the slices out."""
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 3:
        raise ValueError(f"expected a (z, y, x) volume, got shape {volume.shape}")
    if len(spacing_zyx) != 3 or any(not s > 0 for s in spacing_zyx):
        raise ValueError(f"spacing_zyx must be three positive sizes, got {spacing_zyx}")
    if mask is not None:
        mask = _mask_like(mask, volume)
    if threshold is None:
        threshold = tissue_threshold(volume, config, mask)
    spacing_yx = (float(spacing_zyx[1]), float(spacing_zyx[2]))

    def read(z: int) -> SliceLevel:
        if threshold is None:   # no tissue anywhere
            return SliceLevel(None, 0.0)
        image = volume[z] if mask is None else np.where(mask[z], volume[z], np.float32(0))
        return slice_level(image, spacing_yx, int(cut), threshold, config)

    return read


def anatomy_levels(
    volume: np.ndarray,
    spacing_zyx: tuple[float, float, float],
    cut: int | None = None,
    config: AnatomyConfig = AnatomyConfig(),
    *,
    mask: np.ndarray | None = None,
    threshold: float | None = None,
) -> AnatomyResult:
    """Per-slice anatomical level of a (z, y, x) volume.

    Args:
        volume: (z, y, x) intensities in the QMRITools layout (body-masked or not).
        spacing_zyx: (dz, dy, dx) voxel size in mm.
        cut: left/right cut column (columns < cut: right leg); default
            :func:`legseg_tf.split.find_middle` of the (masked) volume.
        config: detector thresholds.
        mask: (z, y, x) body mask: the volume is read as if zero outside it (one slice at a
            time, so no masked copy of the volume is made); None = as given.
        threshold: :func:`tissue_threshold` of the (masked) volume, if already known.

    Returns:
        :class:`AnatomyResult` with one :class:`SliceLevel` per slice.
    """
    volume = np.asarray(volume, dtype=np.float32)
    if cut is None and volume.ndim == 3:
        from legseg_tf.split import find_middle

        cut = find_middle(volume if mask is None else apply_mask(volume, _mask_like(mask, volume)))
    read = slice_reader(volume, spacing_zyx, cut, config, mask=mask, threshold=threshold)
    return AnatomyResult(tuple(read(z) for z in range(volume.shape[0])), int(cut), config)


# --------------------------------------------------------------------------------------------
# Cross-check of the classifier's staircase (used by the segmenter)

#: Classifier levels each anatomical level is compatible with. Knee slices go to both leg
#: networks, so a slice whose bones show calf (thigh) is not left at "Knee"; the classifier's
#: "Hip" class starts at the proximal thigh.
COMPATIBLE = {
    "Lower": frozenset({"Lower"}),
    "Knee": frozenset({"Lower", "Knee", "Upper"}),
    "Upper": frozenset({"Upper", "Hip"}),
    "Hip": frozenset({"Hip"}),
}

#: DICOM ``BodyPartExamined`` values (as dcm2niix writes them) -> anatomical prior. "LEG" is
#: the DICOM term for the lower leg.
BODY_PART_PRIORS = {
    "THIGH": "Upper", "UPPERLEG": "Upper", "UPPER LEG": "Upper", "FEMUR": "Upper",
    "LEG": "Lower", "LOWER LEG": "Lower", "LOWERLEG": "Lower", "CALF": "Lower",
    "TIBIA": "Lower", "ANKLE": "Lower",
    "KNEE": "Knee",
    "PELVIS": "Hip", "HIP": "Hip",
    "LOWEREXTREMITY": None, "LOWER EXTREMITY": None, "EXTREMITY": None, "LEGS": None,
}


def body_part_prior(body_part: str | None) -> str | None:
    """Anatomical prior ("Upper", "Lower", "Knee", "Hip") of a ``BodyPartExamined`` value;
    None for a missing, unspecific or unknown value (unknown ones are logged at debug level)."""
    if not body_part or not isinstance(body_part, str):
        return None
    key = " ".join(body_part.replace("_", " ").upper().split())
    if key not in BODY_PART_PRIORS:
        logger.debug("BodyPartExamined %r is not a known lower-extremity term; ignored", body_part)
        return None
    return BODY_PART_PRIORS[key]


@dataclass
class Reconciled:
    """Per-slice positions after the anatomical cross-check.

    Attributes:
        levels: final position name per classified slice ("Lower", "Knee", "Upper", "Hip";
            other classifier names pass through).
        overridden: (first, last, classifier level, anatomical level) volume-slice runs where
            the anatomy replaced the classifier.
        excluded: volume slices left out of every leg network (pelvis under ``--region legs``).
        warnings: messages for the report.
    """

    levels: list[str]
    overridden: list[tuple[int, int, str, str]] = field(default_factory=list)
    excluded: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs (first, last) of sorted integers."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def reconcile_positions(
    positions: list[str],
    slices: np.ndarray,
    anatomy: AnatomyResult,
    *,
    with_hip: bool,
    body_part: str | None = None,
    threshold: float = 0.75,
    min_run: int = 2,
) -> Reconciled:
    """Cross-check the classifier's fitted per-slice positions with the anatomy.

    Rules, in order:

    1. A confident anatomical level (confidence >= ``threshold``) that is incompatible with
       the classifier's level (:data:`COMPATIBLE`) replaces it where at least ``min_run`` such
       slices lie within two slices of each other; undecided slices between two replaced
       slices of one level take that level too, and so do the undecided slices next to a
       replaced run whose classifier level is also incompatible with it (up to the next
       confidently read slice). A calf stretch thus never goes to the thigh network,
       nor a thigh stretch to the calf network.
    2. ``body_part`` (``BodyPartExamined``) prior: "Upper" turns classifier "Lower" slices
       into "Upper" unless the bones confidently say calf; "Lower" turns "Upper"/"Hip" slices
       into "Lower" unless the bones confidently say thigh or pelvis.
    3. Without the hip network (``with_hip`` False), pelvis slices go to no network. A slice
       is judged pelvis when its anatomy is confidently "Hip", or the classifier says "Hip"
       and the bones do not confidently show a leg level; every confident "Hip" slice, and
       every slice from the lowest judged slice at which judged slices make up half of the
       rest of the stack, is left out.

    Args:
        positions: fitted classifier position per classified slice (inferior first).
        slices: volume slice index of each classified slice.
        anatomy: per-volume-slice levels (:func:`anatomy_levels`).
        with_hip: the region includes the hip network.
        body_part: the image's ``BodyPartExamined``, if any.

    Returns:
        :class:`Reconciled`.
    """
    slices = np.asarray(slices)
    if len(positions) != slices.size:
        raise ValueError("positions and slices must have the same length")
    confident = anatomy.confident_levels(threshold)
    anat = [confident[int(z)] if 0 <= int(z) < len(confident) else None for z in slices]
    levels = list(positions)
    result = Reconciled(levels)
    n = len(levels)

    disagree = [i for i in range(n) if anat[i] is not None and levels[i] in POSITION_SET
                and levels[i] not in COMPATIBLE[anat[i]]]
    chosen = [i for i in disagree
              if sum(1 for j in disagree if abs(j - i) <= 2 and anat[j] == anat[i]) >= min_run]
    for a, b in zip(chosen, chosen[1:]):
        if b - a <= 3 and anat[a] == anat[b]:
            chosen.extend(k for k in range(a + 1, b) if anat[k] is None)
    replaced: dict[int, tuple[str, str]] = {}
    for i in sorted(set(chosen)):
        new = anat[i] or anat[max(j for j in chosen if j < i and anat[j])]
        replaced[i] = (levels[i], new)
    # undecided neighbours that the classifier also placed against the bones follow them too
    for first, last in _runs(sorted(replaced)):
        for step, start in ((-1, first), (1, last)):
            _, new = replaced[start]
            k = start + step
            while (0 <= k < n and k not in replaced and anat[k] is None
                   and levels[k] in POSITION_SET and levels[k] not in COMPATIBLE[new]):
                replaced[k] = (levels[k], new)
                k += step
    for i, (_, new) in replaced.items():
        levels[i] = new
    for first, last in _runs(sorted(replaced)):
        before = Counter(replaced[i][0] for i in range(first, last + 1)).most_common(1)[0][0]
        after = Counter(replaced[i][1] for i in range(first, last + 1)).most_common(1)[0][0]
        za, zb = int(slices[first]), int(slices[last])
        result.overridden.append((za, zb, before, after))
        result.warnings.append(
            f"the bones of slices {za}-{zb} show {LEVEL_WORDS[after]} where the position "
            f"classifier found {LEVEL_WORDS.get(before, before)}: those slices are segmented "
            f"as {LEVEL_WORDS[after]}")

    prior = body_part_prior(body_part)
    if prior in ("Upper", "Lower"):
        wrong = {"Upper": {"Lower"}, "Lower": {"Upper", "Hip"}}[prior]
        keep = {"Upper": {"Lower"}, "Lower": {"Upper", "Hip"}}[prior]
        moved = [i for i in range(n) if levels[i] in wrong and anat[i] not in keep]
        for i in moved:
            levels[i] = prior
        if moved:
            result.warnings.append(
                f"BodyPartExamined {body_part!r}: {len(moved)} slice(s) the classifier placed "
                f"in {sorted(wrong)} are segmented as {LEVEL_WORDS[prior]}")

    if not with_hip:
        judged = [anat[i] == "Hip"
                  or (levels[i] == "Hip" and anat[i] not in ("Lower", "Knee", "Upper"))
                  for i in range(n)]
        # the pelvis is superior: from the lowest judged slice at which judged slices make up
        # at least half of the rest of the stack, every slice is left out
        start = next((i for i in range(n) if judged[i] and sum(judged[i:]) >= 0.5 * (n - i)), n)
        hip = [i for i in range(n) if i >= start or (anat[i] == "Hip")]
        result.excluded = [int(slices[i]) for i in hip]
        if hip:
            spans = ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in _runs(result.excluded))
            result.warnings.append(
                f"slices {spans} show the pelvis (hip level) and are not segmented: the "
                "thigh network is not made for them; use --region legs-hip to segment the hip")
    return result


POSITION_SET = frozenset(ANATOMY_LEVELS)
LEVEL_WORDS = {"Lower": "the lower leg (calf)", "Knee": "the knee", "Upper": "the thigh",
               "Hip": "the pelvis (hip)"}


def reconciled_ranges(
    levels: list[str],
    slices: np.ndarray,
    regions: tuple[str, ...] | list[str],
    excluded: list[int] = (),
) -> dict[str, tuple[int, int]]:
    """Region slice ranges from reconciled per-slice positions.

    Like :func:`legseg_tf.body_position.region_ranges`, but a region's range is the longest
    run of consecutive slices whose level belongs to it (positions need not be monotone after
    the cross-check), excluded slices belong to no region, and a leg region never spans a slice
    of the other leg level or of the pelvis (the Hip region keeps its widening offsets).

    Args:
        levels: position name per classified slice.
        slices: consecutive volume slice index per classified slice.
        regions: region names (keys of ``REGION_LEVELS``).
        excluded: volume slices that go to no network.

    Returns:
        region -> (first, last) volume slice, inclusive.
    """
    from legseg_tf.body_position import POSITION_LEVELS, REGION_LEVELS, REGION_OFFSETS

    slices = np.asarray(slices)
    skip = {int(z) for z in excluded}
    numbers = [POSITION_LEVELS.get(name, 0) if int(z) not in skip else 0
               for name, z in zip(levels, slices)]
    ranges: dict[str, tuple[int, int]] = {}
    n = len(numbers)
    for region in regions:
        member = [i for i in range(n) if numbers[i] in REGION_LEVELS[region]]
        runs = _runs(member)
        if not runs:
            continue
        first, last = max(runs, key=lambda r: (r[1] - r[0], -r[0]))
        if region == "Hip":
            before, after = REGION_OFFSETS.get(region, (0, 0))
            first, last = max(first + before, 0), min(last + after, n - 1)
        if first == last:
            continue
        ranges[region] = (int(slices[first]), int(slices[last]))
    return ranges


#: The anatomical level each single-region choice expects.
REGION_LEVEL = {"LowerLegs": "Lower", "UpperLegs": "Upper", "Hip": "Hip"}


def single_region_check(region: str, anatomy: AnatomyResult, body_part: str | None = None,
                        threshold: float = 0.75) -> list[str]:
    """Warnings when a volume given one region (``--region upper``/``lower``/``hip``) shows
    another level: more than half of the confidently read slices contradict the region, or the
    ``BodyPartExamined`` prior names another level. Nothing is changed (the user chose the
    region)."""
    expected = REGION_LEVEL.get(region)
    if expected is None:
        return []
    messages = []
    confident = [lv for lv in anatomy.confident_levels(threshold) if lv is not None]
    contra = [lv for lv in confident if lv != expected and lv != "Knee"
              and not (expected == "Upper" and lv == "Hip")]
    if confident and len(contra) > 0.5 * len(confident):
        level = Counter(contra).most_common(1)[0][0]
        messages.append(
            f"the bones of {len(contra)} of {len(confident)} confidently read slices show "
            f"{LEVEL_WORDS[level]}, not {LEVEL_WORDS[expected]}: check the --region choice")
    prior = body_part_prior(body_part)
    if prior is not None and prior not in (expected, "Knee"):
        messages.append(f"BodyPartExamined {body_part!r} suggests {LEVEL_WORDS[prior]}, but "
                        f"{LEVEL_WORDS[expected]} was segmented: check the --region choice")
    return messages
