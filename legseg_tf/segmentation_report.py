"""What a segmenter reports about one volume: the schema of the sidecar's ``legseg.report``.

:class:`SegmentationReport` is filled by :class:`legseg_tf.segmenter.QMRIToolsSegmenter` (and
the pipeline adds :class:`GridReport` when it resampled). :meth:`SegmentationReport.to_dict`
gives the JSON object written to the label map's sidecar; the participant report and the QC
flags read that JSON form (:mod:`legseg_tf.reports.participant`, :mod:`legseg_tf.qc_flags`),
so that sidecars of earlier runs read the same way. Keys keep the order of the fields below;
fields left None are left out.

Slice, row and column indices are those of the (z, y, x) QMRITools layout of the grid the
segmenter ran on (column 0 = patient right); sizes are in mm.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class MaskReport:
    """The body mask: voxel count and fraction of the volume."""

    voxels: int
    fraction: float


@dataclass(frozen=True)
class SideReport:
    """The side decision (:func:`legseg_tf.side.decide_side`).

    Attributes:
        decision: "Both", "Left" or "Right".
        source: "geometry", "classifier" or "classifier+geometry".
        classifier: the classifier's majority vote, None without a classifier.
        geometry: :meth:`legseg_tf.side.GeometrySide.to_report`.
        midline: "world x = 0" or "image centre".
    """

    decision: str
    source: str
    classifier: str | None
    geometry: dict[str, Any]
    midline: str


@dataclass(frozen=True)
class SplitReport:
    """The left/right cut (:mod:`legseg_tf.split`).

    Attributes:
        cut_column: Right = columns < cut_column.
        method: "find_middle" or "image centre".
        overlap: fraction of the width each side part reaches past the cut.
        part_labels: how each part's labels are kept, in words.
        parts_columns: ``[side code, first column, stop column]`` per side part.
    """

    cut_column: int
    method: str
    overlap: float
    part_labels: str
    parts_columns: list[list]


@dataclass(frozen=True)
class PartReport:
    """One part sent to a region network.

    Attributes:
        region: "LowerLegs", "UpperLegs" or "Hip".
        side: "L" or "R".
        model: id of the network.
        box_zyx: inclusive-exclusive ``[start, stop]`` per axis (z, y, x).
        labels: final label values the part kept.
        confidence: ``{"mean_max_probability", "voxels"}`` when the network returns
            probabilities, else None.
    """

    region: str
    side: str
    model: str
    box_zyx: list[list[int]]
    labels: list[int]
    confidence: dict[str, Any] | None = None


@dataclass(frozen=True)
class GridReport:
    """The grid the segmenter ran on when it differs from the input's (indices of the report
    refer to it)."""

    spacing_zyx_mm: list[float]
    shape_zyx: list[int]
    input_spacing_zyx_mm: list[float]
    input_shape_zyx: list[int]
    note: str = "slice, row and column indices in this report refer to the segmentation grid"


@dataclass
class SegmentationReport:
    """Facts about one segmentation, for the sidecar and the QC report.

    Attributes:
        method: "qmritools-segmentdata" for :class:`legseg_tf.segmenter.QMRIToolsSegmenter`.
        region: the region choice (``--region``).
        spacing_zyx_mm: voxel size (dz, dy, dx) the segmenter ran at.
        device: the device asked for ("auto", "cpu", "gpu").
        mask: the body mask.
        anatomy: per-slice bone reading (:meth:`legseg_tf.anatomy.AnatomyResult.to_report`)
            with ``body_part_examined`` and, when positions were classified, the reconciled
            ``final_positions``, ``overridden`` runs and ``excluded_slices``.
        positions: per-slice classification
            (:meth:`legseg_tf.body_position.BodyClassification.to_report`), when classified.
        region_ranges: region -> ``[first, last]`` slice, inclusive.
        side: the side decision.
        split: the left/right cut.
        parts: one entry per part segmented.
        timings_s: seconds per stage (mask, classify, split, networks, merge; for one region
            also anatomy_wait: the wait for the anatomy check that ran beside the networks).
        warnings: human-readable problems, in the order they arose.
        segmentation_grid: set by the pipeline when the networks ran on a resampled grid.
    """

    method: str | None = None
    region: str | None = None
    spacing_zyx_mm: list[float] | None = None
    device: str | None = None
    mask: MaskReport | None = None
    anatomy: dict[str, Any] | None = None
    positions: dict[str, Any] | None = None
    region_ranges: dict[str, list[int]] | None = None
    side: SideReport | None = None
    split: SplitReport | None = None
    parts: list[PartReport] | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    segmentation_grid: GridReport | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the sidecar's ``legseg.report`` (plus ``timings_s``, which the
        pipeline moves to ``legseg.timings_s``)."""
        out: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if value is None:
                continue
            if isinstance(value, list):
                value = [asdict(v) if _is_record(v) else v for v in value]
            elif _is_record(value):
                value = asdict(value)
            out[item.name] = value
        return out


def _is_record(value: Any) -> bool:
    return hasattr(value, "__dataclass_fields__") and not isinstance(value, type)
