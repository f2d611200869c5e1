"""The segmenter that the participant level calls: QMRITools ``SegmentData``.

A segmenter turns one volume in the QMRITools array layout (z, y, x; see
``docs/architecture.md``) into a label volume in the Muscles_leg numbering:

body mask -> per-slice side/position classification (when the region needs it) -> side
decision cross-checked with the image geometry -> left/right split and region crops -> one
region network per part -> training labels renamed with the part's side -> merge.

The stages are pure functions in :mod:`legseg_tf.masking`, :mod:`legseg_tf.body_position`,
:mod:`legseg_tf.anatomy`, :mod:`legseg_tf.side`, :mod:`legseg_tf.split` and
:mod:`legseg_tf.merge`; the networks are loaded by :mod:`legseg_tf.model_adapters`. This module
wires them together (:func:`load_segmenter`) and records what was decided in a
:class:`legseg_tf.segmentation_report.SegmentationReport`.

Where this differs from QMRITools, on purpose:

* region slice ranges refer to the classified slices of the uncropped volume (QMRITools
  applies ranges found on the cropped stack to the uncropped one);
* the side comes from the image geometry whenever it is conclusive, the classifier only
  settles a single leg lying across the midline (:func:`legseg_tf.side.decide_side`);
* within each side part, every sided label keeps its largest component *on the part's own
  side of the cut*: the 10 % overlap reaches into the other leg, whose medial muscles
  (gracilis, sartorius) would otherwise be renamed to this part's side;
* a part whose only label is training class 1 is renamed like any other (QMRITools leaves
  such a part unrenamed, which would give it a lower-leg label number).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from legseg_tf import background
from legseg_tf.anatomy import (
    AnatomyResult,
    anatomy_levels,
    reconcile_positions,
    reconciled_ranges,
    single_region_check,
    slice_reader,
    tissue_threshold,
)
from legseg_tf.body_position import (
    ClassifierConfig,
    SliceClassifier,
    classifier_images,
    classify_body,
    majority_side,
)
from legseg_tf.config import InferenceConfig
from legseg_tf.device import release_freed_memory
from legseg_tf.errors import NoModelError
from legseg_tf.labels import rename_train_labels, train_label_map
from legseg_tf.masking import MaskConfig, apply_mask, body_mask
from legseg_tf.merge import merge_parts, merge_probabilities
from legseg_tf.model_adapters import (  # noqa: F401 - RegionNetwork: part of this API
    RegionNetwork,
    region_network,
    slice_classifier,
)
from legseg_tf.postprocessing import (
    clear_other_side,
    largest_component_per_label,
    largest_own_side_component_per_label,
)
from legseg_tf.regions import (  # noqa: F401 - RegionPlan, required_roles: part of this API
    MODELS_HELP,
    REGION_PLANS,
    REGION_ROLES,
    RegionPlan,
    check_models,
    required_roles,
)
from legseg_tf.segmentation_report import (
    MaskReport,
    PartReport,
    SegmentationReport,
    SideReport,
    SplitReport,
)
from legseg_tf.side import (
    SideConfig,
    SideDecision,
    decide_side,
    geometric_side,
    resolve_midline,
)
from legseg_tf.split import Part, SplitConfig, find_middle, side_columns, split_parts

logger = logging.getLogger(__name__)


@dataclass
class SegmentationResult:
    """Output of :meth:`Segmenter.segment`.

    Attributes:
        labels: (z, y, x) uint16 label volume, Muscles_leg numbering, same shape as the input.
        report: what was decided (side, region ranges, per-slice positions, parts, timings,
            warnings); its ``to_dict()`` is the sidecar's ``legseg.report``.
        models: one dict per model used: id, role, sha256.
        probabilities: optional (z, y, x, n) float32 probabilities with ``label_map`` naming the
            label index of each channel.
        label_map: label index per probability channel.
        body_mask: the (z, y, x) boolean body mask the segmentation started from (None when a
            segmenter does not say), reused by the QC flags instead of computing it again.
    """

    labels: np.ndarray
    report: SegmentationReport = field(default_factory=SegmentationReport)
    models: list[dict] = field(default_factory=list)
    probabilities: np.ndarray | None = None
    label_map: list[int] | None = None
    body_mask: np.ndarray | None = None


class Segmenter(Protocol):
    def segment(
        self,
        volume: np.ndarray,
        spacing_zyx: tuple[float, float, float],
        *,
        midline_column: float | None = None,
    ) -> SegmentationResult:
        """Segment a (z, y, x) float32 volume with voxel spacing (dz, dy, dx) in mm.

        ``midline_column`` is the column of world x = 0 (the table's midline) when known.
        Segmenters may accept ``body_part`` (sidecar ``BodyPartExamined``) as a keyword; the
        pipeline passes it only when the sidecar has one.
        """


def sideless_classes(table: str) -> frozenset[int]:
    """Training classes of ``table`` whose final label has no side (sacrum, subcutaneous fat)."""
    left, right = train_label_map(table, "L"), train_label_map(table, "R")
    return frozenset(int(c) for c in np.flatnonzero(left == right) if c)


def own_side_probabilities(
    probabilities: np.ndarray, part: Part, table: str, own_columns: np.ndarray | None
) -> tuple[np.ndarray, tuple[slice, ...], list[int]]:
    """A part's class probabilities for :func:`merge_probabilities`, with final labels.

    Sided classes are zeroed on the other side of the cut (``own_columns`` False), so the
    other leg's tissue in the overlap never carries this part's side.
    """
    probabilities = np.asarray(probabilities, dtype=np.float32)
    lookup = train_label_map(table, part.side)
    if probabilities.shape != part.data.shape + (lookup.size,):
        raise RuntimeError(
            f"probabilities of shape {probabilities.shape} for a part of shape "
            f"{part.data.shape} and {lookup.size} classes of {table}"
        )
    if own_columns is not None and not own_columns.all():
        probabilities = probabilities.copy()
        sided = [c for c in range(1, lookup.size) if c not in sideless_classes(table)]
        other = np.flatnonzero(~own_columns)
        probabilities[:, :, other[:, None], sided] = 0.0
    return probabilities, part.box, [int(v) for v in lookup]


class QMRIToolsSegmenter:
    """QMRITools ``SegmentData`` for one region choice.

    Args:
        region: "legs", "legs-hip", "upper", "lower" or "hip".
        networks: role -> :class:`RegionNetwork` for every region of ``region``.
        classifier: per-slice side/position classifier; required for "legs" and "legs-hip".
        classifier_model: {"id", "role", "sha256"} of the classifier, for the report.
        mask_config, classifier_config, split_config, side_config: stage parameters.
        device: the device the networks run on, for the report.
        save_probabilities: also return per-label probabilities (when the networks give them).
        background_checks: run the anatomy cross-check of a single-region volume (report and
            warnings only) beside the networks, at the lowest CPU priority
            (:mod:`legseg_tf.background`); False = before them. Same result either way.

    Raises:
        NoModelError: a needed network or the needed classifier is missing.
    """

    def __init__(
        self,
        region: str,
        networks: Mapping[str, RegionNetwork],
        classifier: SliceClassifier | None = None,
        classifier_model: Mapping[str, str] | None = None,
        mask_config: MaskConfig = MaskConfig(),
        classifier_config: ClassifierConfig | None = None,
        split_config: SplitConfig = SplitConfig(),
        side_config: SideConfig = SideConfig(),
        device: str | None = None,
        save_probabilities: bool = False,
        segmentation_spacing: tuple[float, float, float] | None = None,
        background_checks: bool = True,
    ) -> None:
        if region not in REGION_PLANS:
            raise ValueError(f"unknown region {region!r}; known: {sorted(REGION_PLANS)}")
        self.region = region
        self.plan = REGION_PLANS[region]
        missing = [role for role in required_roles(region, with_classifier=False)
                   if role not in networks]
        if self.plan.needs_positions and classifier is None:
            missing.append("classifier")
        if missing:
            raise NoModelError(
                f"region {region!r} needs model role(s) {missing}"
                + (" (the slice classifier finds where the lower and upper legs are)"
                   if "classifier" in missing else "")
                + f"; {MODELS_HELP}"
            )
        self.networks = dict(networks)
        self.classifier = classifier
        self.classifier_model = dict(classifier_model) if classifier_model else None
        if classifier_config is None:
            size = getattr(classifier, "image_size", None)
            classifier_config = (ClassifierConfig(image_size=tuple(size)) if size
                                 else ClassifierConfig())
        self.mask_config = mask_config
        self.classifier_config = classifier_config
        self.split_config = split_config
        self.side_config = side_config
        self.device = device
        self.save_probabilities = save_probabilities
        #: (dz, dy, dx) mm the networks run at (the pipeline resamples to it); None = native.
        self.segmentation_spacing = segmentation_spacing
        self.background_checks = background_checks

    def segment(
        self,
        volume: np.ndarray,
        spacing_zyx: tuple[float, float, float],
        *,
        midline_column: float | None = None,
        body_part: str | None = None,
    ) -> SegmentationResult:
        """Segment a (z, y, x) volume in the QMRITools layout (column 0 = patient right).

        Args:
            volume: (z, y, x) intensities.
            spacing_zyx: voxel size (dz, dy, dx) in mm (recorded; inference runs at the native
                voxel size as QMRITools does; the anatomical cross-check measures in mm).
            midline_column: column of the body midline (world x = 0, see
                :func:`legseg_tf.side.midline_column`); None = the image centre.
            body_part: the image's ``BodyPartExamined`` (sidecar), a prior for the region
                ranges (:func:`legseg_tf.anatomy.reconcile_positions`); None = none.

        Returns:
            :class:`SegmentationResult` with uint16 labels of the input's shape.
        """
        volume = np.asarray(volume, dtype=np.float32)
        if volume.ndim != 3:
            raise ValueError(f"expected a (z, y, x) volume, got shape {volume.shape}")
        if len(spacing_zyx) != 3 or any(not s > 0 for s in spacing_zyx):
            raise ValueError(f"spacing_zyx must be three positive sizes, got {spacing_zyx}")
        timings: dict[str, float] = {}
        report = SegmentationReport(
            method="qmritools-segmentdata", region=self.region,
            spacing_zyx_mm=[float(s) for s in spacing_zyx], device=self.device)

        clock = time.perf_counter()
        mask = body_mask(volume, self.mask_config)
        masked = apply_mask(volume, mask)
        timings["mask"] = time.perf_counter() - clock
        report.mask = MaskReport(voxels=int(mask.sum()), fraction=float(mask.mean()))
        empty = np.zeros(volume.shape, dtype=np.uint16)
        if not mask.any():
            report.warnings.append("the body mask is empty: nothing to segment")
            return self._result(empty, report, timings, used=[], body_mask=mask)

        clock = time.perf_counter()
        middle = find_middle(masked, self.split_config)
        if self.plan.needs_positions:
            location, anatomy = self._locate(masked, spacing_zyx, body_part, middle), None
        else:
            location, anatomy = self._locate_single_region(volume, mask, masked, spacing_zyx,
                                                           body_part, middle)
        report.anatomy, report.positions = location.anatomy, location.positions
        report.region_ranges = {name: [int(a), int(b)] for name, (a, b) in location.ranges.items()}
        report.warnings.extend(location.warnings)
        anatomy_warnings_at = len(report.warnings)
        timings["classify"] = time.perf_counter() - clock

        clock = time.perf_counter()
        choice = self._decide_side(location.classifier_side, mask, masked, midline_column,
                                   location.middle)
        report.side, report.split = choice.side_report, choice.split_report
        report.warnings.extend(choice.warnings)
        decision, cut = choice.decision, choice.cut
        parts = split_parts(masked, decision.side, cut, location.ranges, self.split_config.overlap)
        timings["split"] = time.perf_counter() - clock
        # the parts hold what the networks need: the full-size masked copy goes before them
        del masked
        release_freed_memory()

        clock = time.perf_counter()
        own_side_cut = cut if decision.side == "Both" else None
        n_parts = len(parts)
        try:
            outputs = self._run_networks(parts, own_side_cut)
        except BaseException:
            if anatomy is not None:
                anatomy.cancel()
            raise
        report.parts = outputs.parts
        timings["networks"] = time.perf_counter() - clock
        if anatomy is not None:
            clock = time.perf_counter()
            report.anatomy, warnings = anatomy.result()
            report.warnings[anatomy_warnings_at:anatomy_warnings_at] = warnings
            timings["anatomy_wait"] = time.perf_counter() - clock

        clock = time.perf_counter()
        labels = merge_parts(outputs.crops, volume.shape) if outputs.crops else empty
        label_map, probabilities = None, None
        if self.save_probabilities:
            if outputs.probability_crops:
                label_map = sorted(int(v) for v in np.unique(labels) if v)
                probabilities = merge_probabilities(outputs.probability_crops, volume.shape,
                                                    label_map)
            elif n_parts:
                report.warnings.append("the networks returned no probabilities to save")
        timings["merge"] = time.perf_counter() - clock
        used = list(outputs.models)
        if self.classifier is not None and self.classifier_model:
            used.insert(0, dict(self.classifier_model))
        result = self._result(labels, report, timings, used, body_mask=mask)
        result.probabilities, result.label_map = probabilities, label_map
        return result

    def _locate_single_region(
        self, volume: np.ndarray, mask: np.ndarray, masked: np.ndarray,
        spacing_zyx: tuple[float, float, float], body_part: str | None, middle: int,
    ) -> tuple[_Location, _SingleRegionAnatomy]:
        """The whole volume for the one region, the classifier's side vote, and the anatomy
        cross-check started (beside the networks with ``background_checks``)."""
        classifier_side = self._classify_side(masked) if self.classifier else None
        anatomy = _SingleRegionAnatomy(self.plan.regions[0], volume, mask, spacing_zyx,
                                       body_part, middle, beside=self.background_checks)
        ranges = {region: (0, masked.shape[0] - 1) for region in self.plan.regions}
        return _Location(classifier_side, ranges, None, None, (), middle), anatomy

    def _locate(
        self, masked: np.ndarray, spacing_zyx: tuple[float, float, float],
        body_part: str | None, middle: int,
    ) -> _Location:
        """Classifier side vote and the slice range of every region, cross-checked with the
        bones (:mod:`legseg_tf.anatomy`): where they disagree confidently the bones win."""
        anatomy = anatomy_levels(masked, spacing_zyx, cut=middle)
        anatomy_report = {**anatomy.to_report(), "body_part_examined": body_part}
        classification = classify_body(masked, self.classifier, self.plan.regions,
                                       self.classifier_config)
        ranges = dict(classification.ranges)
        reconciled = reconcile_positions(
            list(classification.fitted_positions), classification.slices, anatomy,
            with_hip="Hip" in self.plan.regions, body_part=body_part)
        warnings = list(reconciled.warnings)
        anatomy_report.update(
            final_positions=list(reconciled.levels),
            overridden=[list(run) for run in reconciled.overridden],
            excluded_slices=list(reconciled.excluded))
        if reconciled.levels != list(classification.fitted_positions) or reconciled.excluded:
            ranges = reconciled_ranges(reconciled.levels, classification.slices,
                                       self.plan.regions, reconciled.excluded)
        if not ranges:
            warnings.append(f"the classifier found none of {list(self.plan.regions)} in this volume")
        return _Location(classification.side, ranges, anatomy_report,
                         classification.to_report(), tuple(warnings), middle)

    def _decide_side(
        self,
        classifier_side: str | None,
        mask: np.ndarray,
        masked: np.ndarray,
        midline_column: float | None,
        middle: int,
    ) -> _SideChoice:
        """Cut column and the side decision (classifier vote cross-checked with geometry);
        ``middle`` is :func:`find_middle` of ``masked``."""
        nx = masked.shape[2]
        if self.plan.find_middle:
            cut = middle
        else:
            cut = max(1, min(nx - 1, int(np.rint(0.5 * nx))))
        midline, midline_warning = resolve_midline(midline_column, nx)
        geometry = geometric_side(mask, cut, midline, self.side_config)
        decision = decide_side(classifier_side, geometry,
                               midline_structure=not self.plan.find_middle,
                               config=self.side_config)
        side_report = SideReport(
            decision=decision.side,
            source=decision.source,
            classifier=classifier_side,
            geometry=geometry.to_report(),
            midline="world x = 0" if midline_column is not None and not midline_warning
            else "image centre",
        )
        split_report = SplitReport(
            cut_column=int(cut),
            method="find_middle" if self.plan.find_middle else "image centre",
            overlap=self.split_config.overlap,
            part_labels="largest component on the part's own side of the cut; "
                        "sided labels cleared beyond the cut",
            parts_columns=[[code, c.start, c.stop] for code, c in
                           side_columns(nx, decision.side, cut, self.split_config.overlap)],
        )
        warnings = ((midline_warning,) if midline_warning else ()) + decision.warnings
        return _SideChoice(decision, cut, side_report, split_report, warnings)

    def _run_networks(self, parts: list[Part], own_side_cut: int | None) -> _NetworkOutputs:
        """Region network on every part: final-label crops, probability crops, models used.

        ``parts`` is emptied as they run: a part's crop is freed before the next part's
        tiles are sized against the memory budget."""
        outputs = _NetworkOutputs()
        while parts:
            part = parts.pop(0)
            network = self.networks[REGION_ROLES[part.region]]
            output = network.predict(part.data)
            train = np.asarray(getattr(output, "labels", output))
            if train.shape != part.data.shape:
                raise RuntimeError(
                    f"network {network.model_id} returned shape {train.shape} for a part of "
                    f"shape {part.data.shape}"
                )
            own = None
            if own_side_cut is not None:
                columns = np.arange(part.box[2].start, part.box[2].stop)
                own = columns < own_side_cut if part.side == "R" else columns >= own_side_cut
                sideless = sideless_classes(network.label_table)
                train = largest_own_side_component_per_label(train, own, sideless=sideless)
                train = clear_other_side(train, own, sideless=sideless)
            else:
                train = largest_component_per_label(train)
            final = rename_train_labels(train, network.label_table, part.side)
            outputs.crops.append((final, part.box))
            probabilities = getattr(output, "probabilities", None)
            if self.save_probabilities and probabilities is not None:
                outputs.probability_crops.append(
                    own_side_probabilities(probabilities, part, network.label_table, own))
            outputs.parts.append(PartReport(
                region=part.region, side=part.side, model=network.model_id,
                box_zyx=part.box_report(),
                labels=sorted(int(v) for v in np.unique(final) if v),
                confidence=getattr(output, "confidence", None),
            ))
            if network.describe() not in outputs.models:
                outputs.models.append(network.describe())
            del part, output, train, final, probabilities
            release_freed_memory()
        return outputs

    def _classify_side(self, masked: np.ndarray) -> str | None:
        """Classifier side vote for single-region volumes (positions are not used)."""
        inputs = classifier_images(masked, self.classifier_config)
        if inputs.images.shape[0] == 0:
            return None
        sides, _ = self.classifier(inputs.images)
        return majority_side([str(s) for s in sides])

    @staticmethod
    def _result(labels, report: SegmentationReport, timings, used,
                body_mask: np.ndarray | None = None) -> SegmentationResult:
        """Result with the report's timings filled in (its warnings are logged)."""
        for message in report.warnings:
            logger.warning("%s", message)
        report.timings_s = {k: round(v, 3) for k, v in timings.items()}
        return SegmentationResult(labels=labels.astype(np.uint16, copy=False), report=report,
                                  models=list(used), body_mask=body_mask)


class _SingleRegionAnatomy:
    """The anatomy cross-check of a single-region volume (report entry and warnings; nothing
    else depends on it): its slices are read by the background worker while the networks run
    (:class:`legseg_tf.background.SharedMap`), through the body mask one slice at a time (no
    masked copy is held while the parts are sized against the memory in use); whatever the
    worker has not reached when :meth:`result` is called is read there."""

    def __init__(self, region: str, volume: np.ndarray, mask: np.ndarray,
                 spacing_zyx: tuple[float, float, float], body_part: str | None, middle: int,
                 *, beside: bool) -> None:
        # the threshold (a percentile over the whole volume) is taken here, before the
        # networks: the worker then allocates no more than a slice at a time
        read = slice_reader(volume, spacing_zyx, middle, mask=mask,
                            threshold=tissue_threshold(volume, mask=mask))
        self._slices = background.SharedMap(read, range(volume.shape[0]), beside=beside)
        self._region, self._body_part, self._cut = region, body_part, int(middle)

    def cancel(self) -> None:
        self._slices.cancel()

    def result(self) -> tuple[dict, tuple[str, ...]]:
        """(the report's anatomy entry, the warnings of :func:`single_region_check`)."""
        anatomy = AnatomyResult(tuple(self._slices.finish()), self._cut)
        return ({**anatomy.to_report(), "body_part_examined": self._body_part},
                tuple(single_region_check(self._region, anatomy, self._body_part)))


@dataclass(frozen=True)
class _Location:
    """Where the regions are: the classifier's side vote, region -> (first, last) slice, the
    anatomy and positions report entries (the anatomy of a single-region volume comes later),
    warnings, and the valley column between the legs (:func:`find_middle`)."""

    classifier_side: str | None
    ranges: dict[str, tuple[int, int]]
    anatomy: dict | None
    positions: dict | None
    warnings: tuple[str, ...]
    middle: int


@dataclass(frozen=True)
class _SideChoice:
    """The side decision, the cut column, their report entries and warnings."""

    decision: SideDecision
    cut: int
    side_report: SideReport
    split_report: SplitReport
    warnings: tuple[str, ...]


@dataclass
class _NetworkOutputs:
    """What the region networks gave: final-label crops ``(labels, box)``, probability crops
    for :func:`merge_probabilities`, per-part reports and the models used."""

    crops: list = field(default_factory=list)
    probability_crops: list = field(default_factory=list)
    parts: list[PartReport] = field(default_factory=list)
    models: list[dict] = field(default_factory=list)


def load_segmenter(config: InferenceConfig, models_dir: Path) -> Segmenter:
    """Build the segmenter for ``config`` from the models in ``models_dir``.

    "legs" and "legs-hip" need the slice classifier; "upper", "lower" and "hip" use it for the
    side vote when it is installed and otherwise decide the side from the image geometry.
    Region networks are checked (checksum, config) here but built on the first part that
    needs them (:func:`legseg_tf.model_adapters.region_network` with ``lazy=True``).

    Raises:
        NoModelError: when ``models_dir`` holds no usable model for the requested region (the
            message names the missing roles and how to install models).
    """
    models_dir = Path(models_dir)
    manifest = check_models(config.region, models_dir)
    plan = REGION_PLANS[config.region]
    networks = {}
    for region in plan.regions:
        entry = manifest.get(REGION_ROLES[region])
        # built on the first part that needs it: a run loads only what its images need
        networks[entry.role] = region_network(entry, config, lazy=True)
    classifier_entry = manifest.get("classifier")
    classifier = None
    classifier_model = None
    if classifier_entry is not None:
        classifier = slice_classifier(classifier_entry, config)
        classifier_model = {"id": classifier_entry.id, "role": "classifier",
                            "sha256": classifier_entry.sha256}
    elif not plan.needs_positions:
        logger.info("no classifier installed: the side of %r volumes comes from the image "
                    "geometry", config.region)
    return QMRIToolsSegmenter(config.region, networks, classifier, classifier_model,
                              device=config.device,
                              save_probabilities=config.save_probabilities,
                              segmentation_spacing=segmentation_spacing(
                                  config.segmentation_resolution,
                                  [manifest.get(REGION_ROLES[r]) for r in plan.regions]))


def segmentation_spacing(resolution, entries) -> tuple[float, float, float] | None:
    """The voxel size (dz, dy, dx) mm the networks run at, or None for the input's own.

    "model": the ``training_voxel_size_mm`` the region networks' manifest provenance records,
    when they all record the same one (else native, with a log line); "native": None; three
    sizes: those.
    """
    if resolution == "native":
        return None
    if resolution != "model":
        return tuple(float(v) for v in resolution)  # type: ignore[return-value]
    sizes = {tuple(float(v) for v in (e.provenance or {}).get("training_voxel_size_mm") or ())
             for e in entries if e is not None}
    sizes.discard(())
    if len(sizes) == 1:
        return next(iter(sizes))  # type: ignore[return-value]
    if sizes:
        logger.info("the region networks were trained at different voxel sizes %s: they run "
                    "at the input's own", sorted(sizes))
    return None
