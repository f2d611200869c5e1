"""QC flags: checks that catch a failed segmentation of one image.

The warnings of :mod:`legseg_tf.reports.qc` direct the eye; the flags here name results that
are implausible for a leg and should not be used without a look. Each flag carries a code, a
severity ("warning" or "fail"), a one-line message with the numbers, and the structures
involved. The checks, by code:

* ``lr_volume_ratio``: a sided muscle whose left and right volumes differ by more than
  :attr:`QCConfig.lr_ratio_warning` (either way), or that is present on one side only.
  Checked only when the segmenter split the image into two legs and neither leg touches the
  in-plane edge of the field of view (a cut-off leg loses volume for a reason other than the
  segmentation).
* ``wrong_region_label``: muscle labels of a region on slices the segmenter did not assign
  to that region (the region slice ranges of its report), or on a run of slices that the
  slice classifier or the network-free bone reading (``report["anatomy"]``, see
  :mod:`legseg_tf.anatomy`) placed at another level (e.g. thigh muscles on slices whose bones
  are a tibia and a fibula).
* ``unlabelled_slices``: per leg, slices inside the segmented range whose body mask covers a
  substantial area but that carry no muscle label.
* ``low_confidence``: mean maximum softmax probability over the voxels a region network
  labelled, per part (region x side), below :attr:`QCConfig.confidence_warning`. Needs the
  per-part summaries the segmenter reports when its networks return probabilities (the
  default "gaussian" merge does; "qmritools" hard-label merging does not); otherwise the
  check is reported as not available.

Arrays are in the QMRITools layout (z, y, x): slice 0 is the most inferior (it is also the
canonical RAS z index), column 0 the patient's right-most column; spacing is (dz, dy, dx) in
mm. Volumes are in mL, areas in cm^2. All functions are pure; :func:`evaluate` runs every check.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields

import numpy as np

from legseg_tf.labels import BY_INDEX

logger = logging.getLogger(__name__)

WARNING, FAIL = "warning", "fail"
SEVERITIES = (WARNING, FAIL)
CHECKS = ("lr_volume_ratio", "wrong_region_label", "unlabelled_slices", "low_confidence",
          "not_anatomy")  # not_anatomy: legseg_tf.input_checks (empty body, labels off the body)
SIDE_WORDS = {"L": "left", "R": "right", "": "single"}

#: Muscle regions (``labels.Label.region``) each segmenter region's network produces: the
#: hip network (N4_Hip) also labels psoas major and iliacus, upper-leg labels in the table.
REGION_LABEL_REGIONS: dict[str, frozenset[str]] = {
    "LowerLegs": frozenset({"lower_leg"}),
    "UpperLegs": frozenset({"upper_leg"}),
    "Hip": frozenset({"hip", "upper_leg"}),
}
#: Muscle regions compatible with each per-slice classifier position: the knee holds the
#: ends of both the calf and the thigh muscles; hip slices hold thigh and hip muscles.
POSITION_LABEL_REGIONS: dict[str, frozenset[str]] = {
    "Lower": frozenset({"lower_leg"}),
    "Knee": frozenset({"lower_leg", "upper_leg"}),
    "Upper": frozenset({"upper_leg"}),
    "Hip": frozenset({"upper_leg", "hip"}),
    "Torso": frozenset({"upper_leg", "hip"}),
}
MUSCLE_REGIONS = frozenset({"lower_leg", "upper_leg", "hip"})
REGION_WORDS = {"lower_leg": "lower-leg", "upper_leg": "thigh", "hip": "hip"}


def _threshold(value, reason: str):
    return field(default=value, metadata={"reason": reason})


@dataclass(frozen=True)
class QCConfig:
    """Thresholds of the QC flags, each with the reason for its value (``reasons()``)."""

    lr_ratio_warning: float = _threshold(
        1.5,
        "In healthy adults a leg muscle's left/right volume difference is usually below "
        "10-15 %: 95 % limits of agreement about +/-11-13 % for the vasti and up to +/-21 % "
        "(rectus femoris, biceps femoris long head) and +/-34 % (biceps femoris short head) "
        "(J Orthop Res 2018;36:963-970, 21 young adults); mean absolute between-limb "
        "difference of single muscles 12.6 % in healthy men (Rothwell, Williams, Furlong, "
        "Loughborough University 2019). A ratio above 1.5 (asymmetry index 40 %) lies beyond "
        "healthy asymmetry and the measurement error of manual outlining.",
    )
    lr_ratio_fail: float = _threshold(
        3.0,
        "Three times the other side's volume is beyond any healthy asymmetry; only severe "
        "unilateral atrophy (denervation, disuse after injury) comes near it.",
    )
    lr_min_volume_ml: float = _threshold(
        5.0,
        "Muscles smaller than 5 mL on both sides (gemelli, psoas minor, thin slices of a "
        "muscle at the edge of the field of view) have relative volume errors of tens of "
        "percent from partial volume alone; their ratio says little.",
    )
    lr_variable_muscles: tuple[str, ...] = _threshold(
        ("PMI", "PLA", "FIBT"),
        "Psoas minor, plantaris and fibularis tertius are absent in a sizeable share of "
        "people, also on one side only: being present on one side only is no error for them.",
    )
    fov_edge_contact_mm: float = _threshold(
        10.0,
        "A leg whose body mask runs along the in-plane image edge for 10 mm or more on any "
        "slice is cut by the field of view; its volumes are not comparable with the other "
        "leg's (shorter contacts are noise of the mask).",
    )
    unlabelled_min_area_cm2: float = _threshold(
        10.0,
        "A leg cross-section below 10 cm^2 is the tip of the foot, the ankle or a partial "
        "end slice: little or no muscle there is expected.",
    )
    unlabelled_min_area_fraction: float = _threshold(
        0.25,
        "A slice holding less than a quarter of the leg's median cross-section is an end "
        "slice or outside the leg; only larger cross-sections must carry muscle labels.",
    )
    unlabelled_fail_slices: int = _threshold(
        5,
        "One or two unlabelled slices can be an end slice the network leaves out; five or "
        "more mean the network missed a whole stretch of the leg.",
    )
    region_min_area_cm2: float = _threshold(
        1.0,
        "A label covering less than 1 cm^2 of a slice is a speck at a region boundary "
        "(tendons crossing the knee), not a muscle of the wrong region.",
    )
    position_min_run: int = _threshold(
        3,
        "The per-slice classifier and the bone reading err on single slices, and the "
        "gastrocnemius heads reach a slice or two above the knee level; wrong-region labels "
        "on 3 or more consecutive slices placed at another level are not such noise.",
    )
    anatomy_fail_slices: int = _threshold(
        5,
        "Muscles of a region on 5 or more slices (3 cm at 6 mm) whose bones read as another "
        "level are far beyond the muscle ends that cross the knee: a network ran on the wrong "
        "anatomy (as the thigh network does on a calf given --region upper). The classifier's "
        "positions, trained on fewer contrasts, only ever raise a warning.",
    )
    anatomy_min_confidence: float = _threshold(
        0.8,
        "The bone reading is 1.0 when both legs agree and 0.8 when the slice shows one leg; "
        "0.5 (one of two legs undecided) is too weak to call a label wrong.",
    )
    confidence_warning: float = _threshold(
        0.75,
        "Measured with the shipped networks (Gaussian merge): the thigh network on the stack "
        "it was trained from gives 0.84-0.87 per leg; on QMRITools stacks of another "
        "subject, resolution or contrast the calf and thigh networks gave 0.68-0.75, mostly "
        "where they also produced left/right volume ratios of 1.6-500x. Below 0.75 a network "
        "is working outside what it learnt.",
    )
    confidence_fail: float = _threshold(
        0.6,
        "A mean top probability below 0.6 means many labelled voxels were near coin flips "
        "between classes (the shipped thigh network gave 0.48-0.54 on knee slices it was "
        "not trained for): the network did not recognise the anatomy.",
    )
    confidence_min_ml: float = _threshold(
        5.0,
        "A part whose network labelled less than 5 mL (a few slices at the end of a region "
        "range) gives a mean over too few voxels to judge the network by.",
    )

    def __post_init__(self) -> None:
        if not 1.0 < self.lr_ratio_warning <= self.lr_ratio_fail:
            raise ValueError("QC ratios need 1 < lr_ratio_warning <= lr_ratio_fail")
        if not 0.0 <= self.confidence_fail <= self.confidence_warning <= 1.0:
            raise ValueError("QC confidences need 0 <= confidence_fail <= confidence_warning <= 1")
        if self.unlabelled_fail_slices < 1 or self.position_min_run < 1:
            raise ValueError("QC slice counts must be >= 1")

    def values(self) -> dict:
        """Threshold name -> value (JSON-serialisable)."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in fields(self)}

    @classmethod
    def reasons(cls) -> dict[str, str]:
        """Threshold name -> why it has its value."""
        return {f.name: f.metadata["reason"] for f in fields(cls)}


@dataclass(frozen=True)
class QCFlag:
    """One raised flag.

    Attributes:
        code: snake_case name of the check, one of :data:`CHECKS` for this module's checks
            (codes of other or newer checks are read back as they are).
        severity: "warning" or "fail".
        message: one line for a reader, with the numbers.
        structures: label abbreviations (e.g. "GM_L"), legs ("left leg") or parts involved.
        details: the numbers behind the message (JSON-serialisable).
    """

    code: str
    severity: str
    message: str
    structures: tuple[str, ...] = ()
    details: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.code or ""):
            raise ValueError(f"a QC flag code is a snake_case name (e.g. one of {CHECKS}), "
                             f"got {self.code!r}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")

    def to_dict(self) -> dict:
        return {"code": self.code, "severity": self.severity, "message": self.message,
                "structures": list(self.structures), "details": dict(self.details)}

    @classmethod
    def from_dict(cls, data: Mapping) -> QCFlag:
        return cls(str(data["code"]), str(data["severity"]), str(data["message"]),
                   tuple(str(s) for s in data.get("structures", ())),
                   dict(data.get("details") or {}))


@dataclass(frozen=True)
class QCResult:
    """All flags of one image and the state of every check.

    Attributes:
        flags: raised flags, in :data:`CHECKS` order.
        checks: code -> "passed", "flagged" or "not available: <reason>".
        thresholds: the :class:`QCConfig` values used.
    """

    flags: tuple[QCFlag, ...]
    checks: dict[str, str]
    thresholds: dict = field(default_factory=dict)

    @property
    def n_fail(self) -> int:
        return sum(flag.severity == FAIL for flag in self.flags)

    def to_dict(self) -> dict:
        return {"flags": [flag.to_dict() for flag in self.flags], "checks": dict(self.checks),
                "thresholds": dict(self.thresholds)}

    @classmethod
    def from_dict(cls, data: Mapping) -> QCResult:
        flags = tuple(QCFlag.from_dict(item) for item in data.get("flags") or [])
        return cls(flags, dict(data.get("checks") or {}), dict(data.get("thresholds") or {}))


# ------------------------------------------------------------------------------ helpers


def slice_ranges_text(slices: Sequence[int]) -> str:
    """Compact text of slice indices: ``[0, 1, 2, 7]`` -> ``"0-2, 7"``."""
    values = sorted(int(s) for s in slices)
    runs: list[list[int]] = []
    for value in values:
        if runs and value == runs[-1][1] + 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index of every run of True in a 1-D boolean array."""
    padded = np.concatenate([[False], np.asarray(mask, dtype=bool), [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2])]


def label_volumes_ml(labels: np.ndarray, spacing_zyx: Sequence[float]) -> dict[int, float]:
    """Volume in mL of every non-zero label of a (z, y, x) label map with (dz, dy, dx) mm."""
    values = np.asarray(labels)
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {values.dtype}")
    counts = np.bincount(values.ravel().astype(np.intp, copy=False)) if values.size else []
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    return {int(v): float(n) * voxel_ml for v, n in enumerate(counts) if v and n}


def slice_label_counts(labels: np.ndarray, columns: slice = slice(None)) -> np.ndarray:
    """(z, max_label + 1) voxel counts of every label per slice within ``columns``."""
    values = np.asarray(labels)
    size = int(values.max()) + 1 if values.size else 1
    counts = np.zeros((values.shape[0], size), dtype=np.int64)
    for z in range(values.shape[0]):
        counts[z] = np.bincount(values[z][:, columns].ravel().astype(np.intp, copy=False),
                                minlength=size)
    return counts


def _muscle_region(value: int) -> str | None:
    entry = BY_INDEX.get(int(value))
    return entry.region if entry is not None and entry.region in MUSCLE_REGIONS else None


def _abbreviation(value: int) -> str:
    entry = BY_INDEX.get(int(value))
    return entry.abbreviation if entry is not None else f"label {value}"


def legs(report: Mapping, labels: np.ndarray) -> tuple[dict[str, slice], str]:
    """Columns of each leg and where that came from.

    The segmenter's report decides: side "Both" splits at ``split.cut_column`` (columns
    before the cut are the patient's right leg, "R"), "Left"/"Right" give one leg over all
    columns. Without a report (older outputs), both legs are assumed when left and right
    labels are present, split half-way between their mean columns; else one leg.

    Returns:
        ``({"R": columns, "L": columns} or {side: all columns}, source)``.
    """
    nx = int(np.shape(labels)[2])
    side = (report.get("side") or {}).get("decision")
    cut = (report.get("split") or {}).get("cut_column")
    if side == "Both" and cut is not None and 0 < int(cut) < nx:
        return {"R": slice(0, int(cut)), "L": slice(int(cut), nx)}, "segmenter"
    if side in ("Left", "Right"):
        return {side[0]: slice(0, nx)}, "segmenter"
    values = np.asarray(labels)
    sided = {code: [v for v, e in BY_INDEX.items() if e.side == code and e.is_muscle]
             for code in ("L", "R")}
    columns = {}
    for code, members in sided.items():
        found = np.isin(values, members)
        if found.any():
            columns[code] = float(np.nonzero(found)[2].mean())
    if len(columns) == 2 and columns["R"] < columns["L"]:
        middle = int(np.rint(0.5 * (columns["R"] + columns["L"])))
        return {"R": slice(0, middle), "L": slice(middle, nx)}, "labels"
    if len(columns) == 1:
        return {next(iter(columns)): slice(0, nx)}, "labels"
    return {"": slice(0, nx)}, "labels"


def edge_contact_mm(body: np.ndarray, columns: slice, spacing_zyx: Sequence[float],
                    ) -> np.ndarray:
    """Per slice, the length in mm along which a leg's body mask touches the image edge.

    Counts the first and last rows within ``columns`` and the first/last image column when
    ``columns`` includes it (the cut between the legs is not an edge).
    """
    _, dy, dx = (float(s) for s in spacing_zyx)
    nx = body.shape[2]
    part = body[:, :, columns]
    contact = (part[:, 0, :].sum(axis=1) + part[:, -1, :].sum(axis=1)) * dx
    start, stop, _ = columns.indices(nx)
    if start == 0:
        contact = contact + body[:, :, 0].sum(axis=1) * dy
    if stop == nx:
        contact = contact + body[:, :, nx - 1].sum(axis=1) * dy
    return contact.astype(np.float64)


def assigned_slices(report: Mapping, nz: int) -> dict[str, np.ndarray] | None:
    """Segmenter region -> boolean (z,) mask of its slices, from ``report["region_ranges"]``;
    None when the report has no ranges."""
    ranges = report.get("region_ranges")
    if not isinstance(ranges, Mapping):
        return None
    out = {}
    for region, extent in ranges.items():
        mask = np.zeros(nz, dtype=bool)
        if extent is not None and len(extent) == 2:
            first, last = max(int(extent[0]), 0), min(int(extent[1]), nz - 1)
            if first <= last:
                mask[first:last + 1] = True
        out[str(region)] = mask
    return out


# ------------------------------------------------------------------------------- checks


def lr_volume_ratio_flags(
    volumes_ml: Mapping[int, float], config: QCConfig = QCConfig()
) -> list[QCFlag]:
    """Sided muscles whose left/right volume ratio lies outside the healthy band.

    Args:
        volumes_ml: label -> volume in mL (both legs fully in the field of view).
        config: thresholds.

    Returns:
        One flag per muscle; "fail" beyond :attr:`QCConfig.lr_ratio_fail` or when present on
        one side only (except :attr:`QCConfig.lr_variable_muscles`).
    """
    flags = []
    for left in sorted(v for v, e in BY_INDEX.items() if e.side == "L" and e.is_muscle):
        right = left + 1
        entry_l, entry_r = BY_INDEX[left], BY_INDEX.get(right)
        if entry_r is None or entry_r.name != entry_l.name:
            continue
        vl, vr = float(volumes_ml.get(left, 0.0)), float(volumes_ml.get(right, 0.0))
        if max(vl, vr) < config.lr_min_volume_ml:
            continue
        stem = entry_l.abbreviation.split("_")[0]
        numbers = {"left_ml": round(vl, 2), "right_ml": round(vr, 2)}
        structures = (entry_l.abbreviation, entry_r.abbreviation)
        if min(vl, vr) == 0.0:
            if stem in config.lr_variable_muscles:
                continue
            present, volume = ("left", vl) if vl else ("right", vr)
            flags.append(QCFlag(
                "lr_volume_ratio", FAIL,
                f"{entry_l.display_name} ({stem}) only on the {present} ({volume:.1f} mL), "
                f"none on the other side",
                structures, {**numbers, "ratio": None}))
            continue
        ratio = max(vl, vr) / min(vl, vr)
        if ratio <= config.lr_ratio_warning:
            continue
        severity = FAIL if ratio > config.lr_ratio_fail else WARNING
        larger = "left" if vl > vr else "right"
        flags.append(QCFlag(
            "lr_volume_ratio", severity,
            f"{entry_l.display_name} ({stem}): left {vl:.1f} mL, right {vr:.1f} mL, the {larger} "
            f"{ratio:.2f}x the other (plausible up to {config.lr_ratio_warning:g}x)",
            structures, {**numbers, "ratio": round(ratio, 3)}))
    return flags


def wrong_region_flags(
    counts: np.ndarray,
    report: Mapping,
    spacing_zyx: Sequence[float],
    config: QCConfig = QCConfig(),
) -> tuple[list[QCFlag], bool]:
    """Muscle labels of a region on slices assigned to, or classified as, another level.

    Args:
        counts: (z, max_label + 1) voxels per slice and label (:func:`slice_label_counts`).
        report: segmenter report (``region_ranges``; ``positions`` when classified;
            ``anatomy`` levels and confidences per slice).
        spacing_zyx: (dz, dy, dx) in mm.
        config: thresholds.

    Returns:
        ``(flags, checked)``; ``checked`` is False when the report has neither region ranges
        nor per-slice levels (classifier positions, bone reading).
    """
    nz = counts.shape[0]
    _, dy, dx = (float(s) for s in spacing_zyx)
    min_voxels = config.region_min_area_cm2 * 100.0 / (dy * dx)
    present = counts >= max(min_voxels, 1.0)  # (z, label): a real piece of the label
    by_region = {region: [v for v in range(counts.shape[1]) if _muscle_region(v) == region]
                 for region in MUSCLE_REGIONS}
    flags: list[QCFlag] = []
    assigned = assigned_slices(report, nz)
    checked = assigned is not None
    if assigned:
        allowed = np.zeros((nz, len(MUSCLE_REGIONS)), dtype=bool)
        order = sorted(MUSCLE_REGIONS)
        for region, mask in assigned.items():
            for i, label_region in enumerate(order):
                if label_region in REGION_LABEL_REGIONS.get(region, ()):
                    allowed[mask, i] = True
        for i, label_region in enumerate(order):
            members = by_region[label_region]
            if not members:
                continue
            wrong = present[:, members] & ~allowed[:, i:i + 1]
            slices = np.flatnonzero(wrong.any(axis=1))
            if slices.size == 0:
                continue
            names = [_abbreviation(members[j]) for j in np.flatnonzero(wrong.any(axis=0))]
            owners = sorted({r for r, m in assigned.items() if m[slices].any()}) or ["no region"]
            flags.append(QCFlag(
                "wrong_region_label", FAIL,
                f"{REGION_WORDS[label_region]} muscles ({', '.join(names)}) on "
                f"{slices.size} slice(s) ({slice_ranges_text(slices)}) assigned to "
                f"{', '.join(owners)}",
                tuple(names),
                {"label_region": label_region, "slices": [int(s) for s in slices],
                 "source": "region_ranges"}))
    positions = report.get("positions")
    if isinstance(positions, Mapping) and positions.get("slices"):
        checked = True
        level = np.full(nz, "", dtype=object)
        for z, name in zip(positions.get("slices", []), positions.get("raw_positions", [])):
            if 0 <= int(z) < nz:
                level[int(z)] = str(name)
        flags += _level_flags(present, by_region, level, "the classifier called", config)
    anatomy = report.get("anatomy")
    if isinstance(anatomy, Mapping) and anatomy.get("levels"):
        checked = True
        level = np.full(nz, "", dtype=object)
        confidence = list(anatomy.get("confidence") or [])
        for z, name in enumerate(list(anatomy["levels"])[:nz]):
            sure = z < len(confidence) and float(confidence[z]) >= config.anatomy_min_confidence
            if name and sure:
                level[z] = str(name)
        flags += _level_flags(present, by_region, level, "whose bones read as", config,
                              fail_slices=config.anatomy_fail_slices)
    return flags, checked


def _level_flags(present, by_region, level, source: str, config,
                 fail_slices: int | None = None) -> list[QCFlag]:
    """Runs of slices whose level (per slice name; "" = unknown) excludes a region's labels
    found there, naming ``source``: warnings, or fails from ``fail_slices`` such slices."""
    flags = []
    for label_region in sorted(MUSCLE_REGIONS):
        members = by_region[label_region]
        if not members:
            continue
        found = present[:, members].any(axis=1)
        known = np.array([name in POSITION_LABEL_REGIONS for name in level])
        excluded = np.array([label_region not in POSITION_LABEL_REGIONS.get(name, ())
                             for name in level])
        wrong = found & known & excluded
        runs = [(a, b) for a, b in _runs(wrong) if b - a + 1 >= config.position_min_run]
        if not runs:
            continue
        slices = [z for a, b in runs for z in range(a, b + 1)]
        names = [_abbreviation(members[j])
                 for j in np.flatnonzero(present[slices][:, members].any(axis=0))]
        called = sorted({str(level[z]) for z in slices})
        severity = FAIL if fail_slices is not None and len(slices) >= fail_slices else WARNING
        flags.append(QCFlag(
            "wrong_region_label", severity,
            f"{REGION_WORDS[label_region]} muscles ({', '.join(names)}) on {len(slices)} "
            f"consecutive slice(s) ({slice_ranges_text(slices)}) {source} "
            f"{'/'.join(called)}",
            tuple(names),
            {"label_region": label_region, "slices": slices, "levels": called,
             "source": source}))
    return flags


def unlabelled_slice_flags(
    labels: np.ndarray,
    body: np.ndarray,
    leg_columns: Mapping[str, slice],
    spacing_zyx: Sequence[float],
    segmented: np.ndarray | None = None,
    config: QCConfig = QCConfig(),
) -> list[QCFlag]:
    """Per leg, slices with a substantial body cross-section but no muscle label.

    Args:
        labels: (z, y, x) label map.
        body: (z, y, x) boolean body mask.
        leg_columns: leg code ("L", "R" or "") -> its columns (:func:`legs`).
        spacing_zyx: (dz, dy, dx) in mm.
        segmented: (z,) boolean, the slices inside a segmented region range; None = all.
        config: thresholds.

    A slice counts when the leg's tissue area is at least :attr:`QCConfig.unlabelled_min_area_cm2`
    and :attr:`QCConfig.unlabelled_min_area_fraction` of the leg's median area over its
    tissue slices; end slices get no exemption beyond that (a tiny end slice falls below it).
    """
    labels, body = np.asarray(labels), np.asarray(body, dtype=bool)
    if labels.shape != body.shape:
        raise ValueError(f"labels {labels.shape} and body mask {body.shape} differ in shape")
    _, dy, dx = (float(s) for s in spacing_zyx)
    muscle = np.isin(labels, [v for v, e in BY_INDEX.items() if e.is_muscle])
    flags = []
    for code, columns in sorted(leg_columns.items()):
        area = body[:, :, columns].sum(axis=(1, 2)) * dy * dx / 100.0
        labelled = muscle[:, :, columns].any(axis=(1, 2))
        tissue = area > 0
        if not tissue.any():
            continue
        minimum = max(config.unlabelled_min_area_cm2,
                      config.unlabelled_min_area_fraction * float(np.median(area[tissue])))
        empty = (area >= minimum) & ~labelled
        if segmented is not None:
            empty &= np.asarray(segmented, dtype=bool)
        slices = np.flatnonzero(empty)
        if slices.size == 0:
            continue
        leg = f"{SIDE_WORDS[code]} leg" if code else "the leg"
        severity = FAIL if slices.size >= config.unlabelled_fail_slices else WARNING
        flags.append(QCFlag(
            "unlabelled_slices", severity,
            f"{leg}: {slices.size} slice(s) ({slice_ranges_text(slices)}) with "
            f"{area[slices].min():.0f}-{area[slices].max():.0f} cm2 of tissue but no muscle "
            f"label",
            (leg,),
            {"slices": [int(s) for s in slices],
             "area_cm2": [round(float(a), 1) for a in area[slices]],
             "min_area_cm2": round(minimum, 1)}))
    return flags


def confidence_flags(report: Mapping, config: QCConfig = QCConfig()) -> tuple[list[QCFlag], str]:
    """Parts whose networks labelled voxels with a low mean top probability.

    Reads ``report["parts"][i]["confidence"] = {"mean_max_probability", "voxels"}`` and the
    voxel size ``report["spacing_zyx_mm"]`` (parts labelling less than
    :attr:`QCConfig.confidence_min_ml` are not judged; without a voxel size, every part is).

    Returns:
        ``(flags, state)`` with state "passed"/"flagged" or "not available: <reason>".
    """
    parts = report.get("parts")
    if not parts:
        return [], "not available: no per-part report from the segmenter"
    rated = [p for p in parts if isinstance(p.get("confidence"), Mapping)
             and p["confidence"].get("mean_max_probability") is not None]
    if not rated:
        return [], ("not available: the networks returned no probabilities "
                    "(hard-label merging, or a network without softmax output)")
    spacing = report.get("spacing_zyx_mm")
    voxel_ml = float(np.prod(spacing)) / 1000.0 if spacing and len(spacing) == 3 else None
    flags = []
    for part in rated:
        value = float(part["confidence"]["mean_max_probability"])
        labelled = int(part["confidence"].get("voxels", 0))
        if voxel_ml is not None and labelled * voxel_ml < config.confidence_min_ml:
            continue
        if value >= config.confidence_warning:
            continue
        severity = FAIL if value < config.confidence_fail else WARNING
        name = f"{part.get('region', '?')} {SIDE_WORDS.get(part.get('side', ''), '?')}"
        flags.append(QCFlag(
            "low_confidence", severity,
            f"{name}: mean top probability {value:.3f} over {labelled} labelled voxels "
            f"(expected >= {config.confidence_warning:g})",
            (name,),
            {"mean_max_probability": round(value, 4), "model": part.get("model")}))
    return flags, "flagged" if flags else "passed"


# ------------------------------------------------------------------------------ all checks


def evaluate(
    labels: np.ndarray,
    body: np.ndarray | None,
    spacing_zyx: Sequence[float],
    report: Mapping | None = None,
    config: QCConfig = QCConfig(),
) -> QCResult:
    """Run every check on one segmented image.

    Args:
        labels: (z, y, x) integer label map in the QMRITools layout, Muscles_leg numbering.
        body: (z, y, x) boolean body mask of the image (``masking.body_mask``), or None
            (the checks that need it are then not available).
        spacing_zyx: voxel size (dz, dy, dx) in mm.
        report: the segmenter's report (side decision, cut column, region ranges, positions,
            parts); {} for outputs without one.
        config: thresholds.

    Returns:
        :class:`QCResult`.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"expected a (z, y, x) label map, got shape {labels.shape}")
    if len(spacing_zyx) != 3 or any(not float(s) > 0 for s in spacing_zyx):
        raise ValueError(f"spacing_zyx must be three positive sizes in mm, got {spacing_zyx}")
    if body is not None and np.shape(body) != labels.shape:
        raise ValueError(f"body mask {np.shape(body)} and labels {labels.shape} differ in shape")
    report = report or {}
    flags: list[QCFlag] = []
    checks: dict[str, str] = {}
    leg_columns, _ = legs(report, labels)

    # left/right volume ratio
    if set(leg_columns) == {""}:
        checks["lr_volume_ratio"] = "not available: no side decision and no sided muscle label"
    elif set(leg_columns) != {"L", "R"}:
        checks["lr_volume_ratio"] = "not available: one leg in the image"
    elif body is None:
        checks["lr_volume_ratio"] = "not available: no body mask to check the field of view"
    else:
        cut = {code: int((edge_contact_mm(body, cols, spacing_zyx)
                          >= config.fov_edge_contact_mm).sum())
               for code, cols in leg_columns.items()}
        cut_legs = [f"{SIDE_WORDS[c]} leg on {n} slice(s)" for c, n in sorted(cut.items()) if n]
        if cut_legs:
            checks["lr_volume_ratio"] = ("not available: the field of view cuts the "
                                         + " and the ".join(cut_legs))
        else:
            found = lr_volume_ratio_flags(label_volumes_ml(labels, spacing_zyx), config)
            flags += found
            checks["lr_volume_ratio"] = "flagged" if found else "passed"

    # wrong region
    counts = slice_label_counts(labels)
    found, checked = wrong_region_flags(counts, report, spacing_zyx, config)
    flags += found
    checks["wrong_region_label"] = ("flagged" if found else "passed") if checked else \
        "not available: no region ranges or slice positions in the segmenter report"

    # unlabelled slices
    if body is None:
        checks["unlabelled_slices"] = "not available: no body mask"
    else:
        assigned = assigned_slices(report, labels.shape[0])
        segmented = np.any(list(assigned.values()), axis=0) if assigned else None
        found = unlabelled_slice_flags(labels, body, leg_columns, spacing_zyx, segmented, config)
        flags += found
        checks["unlabelled_slices"] = "flagged" if found else "passed"

    # confidence
    found, state = confidence_flags(report, config)
    flags += found
    checks["low_confidence"] = state
    return QCResult(tuple(flags), checks, config.values())


def log_flags(result: QCResult, name: str) -> None:
    """Log every raised flag of image ``name`` as a warning."""
    for flag in result.flags:
        logger.warning("QC %s [%s] %s: %s", name, flag.severity, flag.code, flag.message)
