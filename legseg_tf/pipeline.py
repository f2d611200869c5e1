"""Participant and group levels: loop over inputs, isolate failures, summarise, exit status."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import numpy as np

from legseg_tf import array_threads, derivatives, input_checks, nifti_io, resampling, side
from legseg_tf.labels import abbreviation_of
from legseg_tf.errors import ExitCode, NoModelError, UsageError, is_output_full
from legseg_tf.config import RunConfig
from legseg_tf.device import release_freed_memory
from legseg_tf.results import ImageResult, InputImage
from legseg_tf.segmentation_report import GridReport
from legseg_tf.segmenter import Segmenter, load_segmenter

logger = logging.getLogger(__name__)

VALIDATOR_NAMES = ("bids-validator-deno", "bids-validator")


def run(config: RunConfig) -> int:
    """Run one analysis level; return the exit code.

    Process-wide state is left as it was: the work dir reaches the code that needs it through
    ``config`` (never through ``tempfile.tempdir``)."""
    if config.analysis_level == "group":
        return run_group(config)
    return run_participant(config)


def find_validator() -> str | None:
    """Path of a BIDS validator executable (next to this Python first, then on PATH)."""
    for name in VALIDATOR_NAMES:
        beside = Path(sys.executable).parent / name
        if beside.is_file() and os.access(beside, os.X_OK):
            return str(beside)
        found = shutil.which(name)
        if found:
            return found
    return None


def validator_command(validator: str) -> list[str]:
    """The command that runs ``validator`` without network access.

    The ``bids-validator-deno`` wrapper grants Deno network access (the validator then looks
    up its latest version); when its bundle and the Deno runtime are importable here, the
    bundle is run directly with network access denied."""
    if Path(validator).name == "bids-validator-deno":
        try:
            import bids_validator_deno
            from deno import find_deno_bin
        except ImportError:
            return [validator]
        bundle = Path(bids_validator_deno.__file__).with_name("bids-validator.js")
        # the Deno runtime installed beside the validator first (the deno package's own lookup
        # goes by this Python's folder, then HOME, and misses a validator of another venv)
        deno = Path(validator).with_name("deno")
        if not (deno.is_file() and os.access(deno, os.X_OK)):
            deno = Path(os.fsdecode(find_deno_bin()))
        if bundle.is_file() and deno.is_file():
            return [str(deno), "run", "--allow-read", "--allow-env", "--deny-net",
                    "--no-prompt", str(bundle)]
    return [validator]


def validator_environment(work_dir: Path | None) -> dict:
    """Environment of the validator: Deno's caches in the work dir (else a per-user temporary
    folder), never in HOME; no update check."""
    base = work_dir if work_dir is not None else Path(tempfile.gettempdir()) / f"legseg-cache-{os.getuid()}"
    return {**os.environ, "DENO_DIR": str(Path(base) / ".deno"), "DENO_NO_UPDATE_CHECK": "1",
            "DENO_NO_PROMPT": "1"}


def validate_dataset(bids_dir: Path, work_dir: Path | None = None) -> None:
    """Run the BIDS validator; raise UsageError(16) when the dataset has errors."""
    validator = find_validator()
    if validator is None:
        logger.warning("no BIDS validator installed (pip install bids-validator-deno); skipping validation")
        return
    logger.info("validating %s with %s", bids_dir, Path(validator).name)
    try:
        completed = subprocess.run(
            [*validator_command(validator), str(bids_dir), "--ignoreWarnings"],
            capture_output=True, text=True, check=False, timeout=600,
            env=validator_environment(work_dir),
        )
    except OSError as error:  # installed but not runnable (e.g. its runtime is missing)
        logger.warning("the BIDS validator %s could not be started (%s); skipping validation",
                       validator, error)
        return
    if completed.returncode != 0:
        details = (completed.stdout + completed.stderr).strip().splitlines()
        for line in details[-40:]:
            logger.error("validator: %s", line)
        raise UsageError(
            f"{bids_dir} failed BIDS validation (errors in the log above): fix them, or list the "
            f"files that are not BIDS (e.g. non-standard suffixes such as *_outphase.nii.gz) in "
            f"{Path(bids_dir) / '.bidsignore'} (one glob pattern a line), or use --skip_bids_validator",
            ExitCode.INVALID_DATASET,
        )


def run_participant(config: RunConfig, segmenter: Segmenter | None = None) -> int:
    """Segment every selected image; return 0, or 1 if any image failed.

    ``segmenter`` replaces the installed networks (tests); the device is then not configured
    and each sidecar records the device the segmenter reports."""
    from legseg_tf.bids_inputs import DatasetIndexError, InputSelectionError, find_inputs

    if not config.skip_bids_validator:
        validate_dataset(config.bids_dir, config.work_dir)
    try:
        images = find_inputs(
            config.bids_dir, config.participant_labels, config.session_labels, config.bids_filters,
            exclude=tuple(p for p in (config.output_dir, config.work_dir, config.bids_database_dir)
                          if p is not None),
            skip_invalid_json=config.skip_bids_validator,
            database_dir=config.bids_database_dir,
        )
    except InputSelectionError as error:
        logger.error("%s", error)
        return ExitCode.NO_INPUT
    except DatasetIndexError as error:
        logger.error("%s", error)
        return ExitCode.INVALID_DATASET
    except ValueError as error:
        logger.error("invalid --bids-filter-file query: %s", error)
        return ExitCode.USAGE
    subjects = sorted({image.subject for image in images})
    logger.info("%d image(s) of %d participant(s): %s", len(images), len(subjects), ", ".join(subjects))
    pending = [im for im in images if config.overwrite or not _outputs_exist(config, im)]
    device: dict | None = None
    if segmenter is None and pending:
        try:
            segmenter, device = _load_segmenter(config)
        except NoModelError as error:
            logger.error("%s", error)
            return ExitCode.NO_MODEL
    derivatives.ensure_dataset_files(config.output_dir, config.bids_dir)

    results: list[ImageResult] = []
    # subject by subject: a subject's reports are written as soon as its images are done, and
    # its arrays let go, so that a run over many participants holds one subject's images
    for _, subject_images in groupby(sorted(images, key=lambda im: im.subject),
                                     key=lambda im: im.subject):
        mine: list[ImageResult] = []
        for image in subject_images:
            if image not in pending:
                dseg = derivatives.dseg_path(config.output_dir, image)
                logger.info("%s exists; skipping (use --overwrite to replace it)", dseg)
                mine.append(ImageResult(image, "skipped", dseg_path=dseg,
                                        sidecar_path=derivatives.sidecar_path(dseg)))
                continue
            mine.append(segment_image(image, config, segmenter, device))
        _participant_reports(mine, config)
        for result in mine:
            result.labels_ras = result.volume_ras = None
        results += mine
    failed = [r for r in results if r.status == "failed"]
    done = sum(r.status == "done" for r in results)
    skipped = sum(r.status == "skipped" for r in results)
    logger.info("finished: %d segmented, %d skipped, %d failed", done, skipped, len(failed))
    for result in failed:
        logger.error("FAILED %s: %s", result.image.relpath, result.error)
    return ExitCode.FAILED if failed else ExitCode.OK


def _outputs_exist(config: RunConfig, image: InputImage) -> bool:
    dseg = derivatives.dseg_path(config.output_dir, image)
    return dseg.exists() and derivatives.sidecar_path(dseg).exists()


def _load_segmenter(config: RunConfig) -> tuple[Segmenter, dict]:
    """The installed networks, and what ``configure_device`` chose for them (recorded in every
    sidecar)."""
    from legseg_tf.device import DeviceError, configure_device
    from legseg_tf.regions import check_models

    models_dir = config.inference.models_dir
    if models_dir is None:
        raise NoModelError("no models folder configured")
    check_models(config.inference.region, models_dir)  # before TensorFlow is imported
    try:
        device = configure_device(config.inference.device, config.inference.nprocs)
    except DeviceError as error:
        raise UsageError(str(error), ExitCode.USAGE) from error
    array_threads.set_threads(config.inference.nprocs)
    return load_segmenter(config.inference, models_dir), device


def segment_image(image: InputImage, config: RunConfig, segmenter: Segmenter,
                  device: dict | None = None) -> ImageResult:
    """Segment one image and write its label map and sidecar; never raises.

    ``device`` is what ``configure_device`` chose for ``segmenter`` (None: the device the
    segmenter's report names, if any)."""
    dseg = derivatives.dseg_path(config.output_dir, image)
    sidecar = derivatives.sidecar_path(dseg)
    probseg = derivatives.probseg_path(config.output_dir, image)
    written: list[Path] = []
    started = time.perf_counter()
    try:
        logger.info("segmenting %s", image.relpath)
        volume_ras, geometry = nifti_io.load_canonical(image.path, config.assume_orientation)
        volume = nifti_io.ras_to_qmri(volume_ras)
        input_checks.check_input(volume, image.relpath)
        midline = side.midline_column(geometry.ras_affine, volume_ras.shape)
        # one full-size copy of the image while the networks run: the reports' RAS array is
        # rebuilt from ``volume`` afterwards (an exact transpose and flip)
        del volume_ras
        release_freed_memory()
        prior = {"body_part": image.body_part} if image.body_part else {}
        spacing = nifti_io.qmri_spacing(geometry)
        grid = _segmentation_grid(volume, spacing, midline, segmenter)
        result = segmenter.segment(grid.volume, grid.spacing, midline_column=grid.midline,
                                   **prior)
        if result.labels.shape != grid.volume.shape:
            raise RuntimeError(f"segmenter returned shape {result.labels.shape} for input "
                               f"{grid.volume.shape}")
        qc = _qc_flags(grid.volume, result, grid.spacing, segmenter, image.relpath)
        result.body_mask = None  # QC was its last user
        if grid.resampled:
            result = _to_input_grid(result, volume.shape, spacing, grid)
        volume_ras = nifti_io.qmri_to_ras(volume)
        del volume, grid
        release_freed_memory()
        report = result.report.to_dict()
        labels_ras = nifti_io.qmri_to_ras(result.labels)
        written.append(nifti_io.save_labels(labels_ras, geometry, dseg))
        if config.inference.save_probabilities and result.probabilities is not None:
            written.append(_save_probabilities(result, geometry, probseg))
        elapsed = time.perf_counter() - started
        provenance = {
            "legseg": {
                "version": derivatives.software_versions()["legseg"],
                "software": derivatives.software_versions(),
                "device": dict(device) if device else report.get("device"),
                "region": config.inference.region,
                "merge": config.inference.merge,
                "precision": config.inference.precision,
                "timings_s": {**report.get("timings_s", {}), "total": round(elapsed, 3)},
                "command_line": list(config.command_line),
                "input_orientation": "".join(geometry.axcodes),
                "orientation_assumed": _orientation_assumed(geometry),
                "report": {k: v for k, v in report.items() if k != "timings_s"},
            }
        }
        provenance["legseg"]["qc"] = qc
        written.append(derivatives.write_json(sidecar, derivatives.dseg_sidecar(image, result.models, provenance)))
        present = sorted(int(v) for v in np.unique(result.labels) if v)
        logger.info("wrote %s (%d labels, %.1f s)", dseg, len(present), elapsed)
        return ImageResult(
            image, "done", dseg_path=dseg, sidecar_path=sidecar, labels_ras=labels_ras,
            volume_ras=volume_ras, affine_ras=geometry.ras_affine, zooms_mm=geometry.zooms_ras,
            report=report, models=result.models,
            probseg_path=probseg if probseg in written else None,
        )
    except Exception as error:  # noqa: BLE001 - one image's failure must not stop the others
        logger.debug("failure details for %s", image.relpath, exc_info=True)
        for path in written:
            path.unlink(missing_ok=True)
        if is_output_full(error):
            raise  # a full disk fails every later image too: stop the run (exit 73)
        message = f"{type(error).__name__}: {error}".splitlines()[0]
        return ImageResult(image, "failed", error=message)


@dataclass(frozen=True)
class _Grid:
    """The grid the segmenter runs on: the input's own, or the networks' voxel size."""

    volume: np.ndarray
    spacing: tuple[float, float, float]
    midline: float | None
    resampled: bool


def _segmentation_grid(volume: np.ndarray, spacing, midline, segmenter: Segmenter) -> _Grid:
    """Resample the (z, y, x) volume to the segmenter's ``segmentation_spacing`` when the input's
    voxel size differs from it (:mod:`legseg_tf.resampling`)."""
    target = getattr(segmenter, "segmentation_spacing", None)
    if not resampling.needs_resampling(spacing, target):
        return _Grid(volume, tuple(spacing), midline, False)
    resampled, new_spacing = resampling.resample_volume(volume, spacing, target)
    logger.info("segmenting at %s mm (input %s mm): %s -> %s voxels",
                "x".join(f"{v:g}" for v in new_spacing), "x".join(f"{v:g}" for v in spacing),
                "x".join(map(str, volume.shape)), "x".join(map(str, resampled.shape)))
    return _Grid(resampled, new_spacing,
                 resampling.column_on_grid(midline, volume.shape[2], resampled.shape[2]), True)


def _to_input_grid(result, shape, spacing, grid: _Grid):
    """The segmentation mapped back onto the input grid; the report says on which grid its
    slice and column indices are."""
    result.labels = resampling.labels_to_shape(result.labels, shape)
    if result.probabilities is not None:
        result.probabilities = resampling.channels_to_shape(result.probabilities, shape)
    result.report.segmentation_grid = GridReport(
        spacing_zyx_mm=[round(float(v), 4) for v in grid.spacing],
        shape_zyx=[int(n) for n in grid.volume.shape],
        input_spacing_zyx_mm=[round(float(v), 4) for v in spacing],
        input_shape_zyx=[int(n) for n in shape],
    )
    return result


def _qc_flags(volume: np.ndarray, result, spacing_zyx, segmenter: Segmenter, name: str) -> dict:
    """QC flags of one segmentation (``qc_flags.evaluate``) for the sidecar; never raises.

    ``volume`` and ``result.labels`` are (z, y, x) in the QMRITools layout, spacing (dz, dy, dx)
    in mm; the body mask is the segmenter's own (``result.body_mask``), or recomputed with
    its mask parameters when it gives none.
    """
    from legseg_tf import masking, qc_flags

    try:
        body = getattr(result, "body_mask", None)
        if body is None or np.shape(body) != np.shape(volume):
            config = getattr(segmenter, "mask_config", None) or masking.MaskConfig()
            body = masking.body_mask(volume, config)
        outcome = qc_flags.evaluate(result.labels, body, spacing_zyx, result.report.to_dict())
        extra, state = input_checks.not_anatomy_flags(result.labels, body)
        outcome = qc_flags.QCResult(
            outcome.flags + tuple(qc_flags.QCFlag.from_dict(flag) for flag in extra),
            {**outcome.checks, "not_anatomy": state}, outcome.thresholds,
        )
    except Exception as error:  # noqa: BLE001 - a QC failure must not lose the segmentation
        logger.warning("QC flags of %s not computed: %s: %s", name, type(error).__name__, error)
        logger.debug("QC failure details", exc_info=True)
        return {"error": f"{type(error).__name__}: {error}"}
    qc_flags.log_flags(outcome, name)
    return outcome.to_dict()


def _orientation_assumed(geometry: nifti_io.Geometry) -> bool:
    """True when the input header had no orientation and --assume-orientation supplied it."""
    return int(geometry.header["sform_code"]) == 0 and int(geometry.header["qform_code"]) == 0


def _save_probabilities(result, geometry: nifti_io.Geometry, path: Path) -> Path:
    probabilities_ras = nifti_io.qmri_to_ras(result.probabilities)
    data = nifti_io.from_ras(probabilities_ras, geometry).astype(np.float32)
    nifti_io.save_array(data, geometry, path, dtype=np.float32)
    derivatives.write_json(derivatives.sidecar_path(path), {
        "Description": "Per-label probabilities of the muscle segmentation (4th axis = labels).",
        "LabelMap": [abbreviation_of(index) for index in (result.label_map or [])],
        "LabelIndices": [int(index) for index in (result.label_map or [])],
        "LabelTable": "dseg.tsv",
    })
    return path


def _participant_reports(results: list[ImageResult], config: RunConfig) -> None:
    """Per-image tables and per-subject QC reports; a report failure marks its images failed."""
    from legseg_tf.reports.participant import write_participant_outputs

    ordered = sorted(results, key=lambda r: r.image.subject)
    for subject, group in groupby(ordered, key=lambda r: r.image.subject):
        members = list(group)
        try:
            write_participant_outputs(members, config.bids_dir, config.output_dir,
                                      config.ff_erosion, config.inference.models_dir)
        except Exception as error:  # noqa: BLE001 - reports must not lose the segmentations
            logger.debug("report failure details", exc_info=True)
            if is_output_full(error):
                raise
            for result in members:
                if result.status == "done":
                    result.status = "failed"
                    result.error = f"report for sub-{subject} failed: {type(error).__name__}: {error}"


def run_group(config: RunConfig) -> int:
    """Gather the participant outputs of OUTPUT_DIR into group tables and reports."""
    from legseg_tf.group import run_group as gather

    return gather(config.output_dir, include_failed_qc=config.include_failed_qc)
