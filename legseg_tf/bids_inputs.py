"""Find the images to segment in a BIDS dataset.

Default query (replaced entirely by ``--bids-filter-file``):

1. anatomical images whose ``acq`` entity contains ``outphase`` (case-insensitive), e.g.
   ``sub-01_acq-outphase_T1w.nii.gz`` (vendor-reconstructed opposed-phase Dixon images);
2. multi-echo gradient-echo series (``_MEGRE``, magnitude only): from each series one echo is
   chosen, the one whose EchoTime lies nearest an out-of-phase time of fat and water at the
   series' field strength (see :func:`out_of_phase_distance`).

Labels of participants and sessions are given without their ``sub-``/``ses-`` prefixes; files
that have no session are kept when a session filter is given (BIDS execution spec).
"""
from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from pathlib import Path

from legseg_tf.results import InputImage

logger = logging.getLogger(__name__)

LABEL_PATTERN = re.compile(r"^[A-Za-z0-9]+$")
#: Main methylene fat peak relative to water, in ppm.
FAT_WATER_SHIFT_PPM = 3.4
#: Proton gyromagnetic ratio / 2 pi, in MHz per tesla.
GAMMA_MHZ_PER_T = 42.577
#: Field strength assumed when a MEGRE sidecar lacks MagneticFieldStrength, in tesla.
DEFAULT_FIELD_T = 3.0
NIFTI_EXTENSIONS = [".nii", ".nii.gz"]


class InputSelectionError(ValueError):
    """The filters selected no input image (exit code 18)."""


class FilterFileError(ValueError):
    """The ``--bids-filter-file`` is unreadable or malformed (usage error)."""


def normalise_label(label: str, prefix: str) -> str:
    """Strip an optional ``sub-``/``ses-`` prefix and validate the label.

    >>> normalise_label("sub-01", "sub-")
    '01'

    Raises:
        ValueError: when the label is not alphanumeric (e.g. ``../x``).
    """
    value = label[len(prefix):] if label.startswith(prefix) else label
    if not LABEL_PATTERN.fullmatch(value):
        raise ValueError(f"invalid label {label!r}: BIDS labels are alphanumeric ([A-Za-z0-9]+)")
    return value


def load_filter_file(path: Path) -> dict:
    """Read a pybids filter JSON object (entity -> value, list of values, null or "*")."""
    try:
        filters = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise FilterFileError(f"cannot read --bids-filter-file {path}: {error}") from error
    if not isinstance(filters, dict) or not filters:
        raise FilterFileError(
            f"--bids-filter-file {path} must hold a non-empty JSON object of pybids entity filters"
        )
    return filters


def out_of_phase_distance(echo_time_s: float, field_t: float) -> float:
    """How far an echo time is from the nearest fat-water out-of-phase time, in cycles.

    Fat precesses ``3.4 ppm x 42.577 MHz/T x B0`` slower than water; after ``k`` cycles of
    that difference frequency fat and water are in phase (integer ``k``) or opposed (half-odd
    ``k``). Returns ``|frac(k) - 0.5|``: 0 at an out-of-phase echo, 0.5 at an in-phase one.

    >>> round(out_of_phase_distance(3.45e-3, 3.0), 3)
    0.002
    >>> round(out_of_phase_distance(4.60e-3, 3.0), 3)
    0.498
    """
    cycles = echo_time_s * FAT_WATER_SHIFT_PPM * 1e-6 * GAMMA_MHZ_PER_T * 1e6 * field_t
    return abs((cycles % 1.0) - 0.5)


def _layout(bids_dir: Path):
    from bids import BIDSLayout
    from bids.layout import BIDSLayoutIndexer

    indexer = BIDSLayoutIndexer(
        validate=False,
        ignore=["code", "stimuli", "sourcedata", "models", "derivatives", re.compile(r"/\.")],
    )
    return BIDSLayout(str(bids_dir), validate=False, indexer=indexer)


def _pybids_filters(filters: dict) -> dict:
    from bids.layout import Query

    converted = {}
    for key, value in filters.items():
        if value is None:
            converted[key] = Query.NONE
        elif value == "*":
            converted[key] = Query.ANY
        else:
            converted[key] = value
    return converted


def _to_input(bids_file, bids_dir: Path, layout) -> InputImage:
    entities = {k: v for k, v in bids_file.get_entities().items() if isinstance(v, (str, int, float))}
    path = Path(bids_file.path)
    metadata = layout.get_metadata(bids_file.path)
    echo_time = metadata.get("EchoTime")
    body_part = metadata.get("BodyPartExamined")
    return InputImage(
        subject=str(entities["subject"]),
        session=str(entities["session"]) if entities.get("session") is not None else None,
        path=path,
        relpath=path.relative_to(bids_dir).as_posix(),
        entities=entities,
        echo_time=float(echo_time) if isinstance(echo_time, (int, float)) else None,
        body_part=body_part.strip() if isinstance(body_part, str) and body_part.strip() else None,
    )


def _pick_megre_echoes(files: list, layout) -> list:
    """One echo per MEGRE series: the one nearest an out-of-phase echo time."""
    series: dict[tuple, list] = defaultdict(list)
    for bids_file in files:
        entities = bids_file.get_entities()
        key = tuple(sorted((k, str(v)) for k, v in entities.items() if k not in ("echo",)))
        series[key].append(bids_file)
    chosen = []
    for members in series.values():
        scored = []
        for bids_file in members:
            metadata = layout.get_metadata(bids_file.path)
            echo_time = metadata.get("EchoTime")
            if not isinstance(echo_time, (int, float)):
                logger.warning("%s has no EchoTime; it cannot be ranked", bids_file.path)
                continue
            field_t = metadata.get("MagneticFieldStrength")
            if not isinstance(field_t, (int, float)):
                field_t = DEFAULT_FIELD_T
                logger.warning(
                    "%s has no MagneticFieldStrength; assuming %.1f T for echo choice",
                    bids_file.path, DEFAULT_FIELD_T,
                )
            scored.append((out_of_phase_distance(float(echo_time), float(field_t)), float(echo_time), bids_file))
        if scored:
            scored.sort(key=lambda item: (round(item[0], 3), item[1]))
            logger.info(
                "MEGRE series: chose %s (TE %.2f ms)", Path(scored[0][2].path).name, scored[0][1] * 1e3
            )
            chosen.append(scored[0][2])
    return chosen


def find_inputs(
    bids_dir: Path,
    participant_labels: tuple[str, ...] = (),
    session_labels: tuple[str, ...] = (),
    filters: dict | None = None,
) -> list[InputImage]:
    """Select the images to segment.

    Args:
        bids_dir: root of the BIDS dataset.
        participant_labels: labels without ``sub-``; empty = all participants.
        session_labels: labels without ``ses-``; empty = all sessions.
        filters: pybids entity filters replacing the default query (``--bids-filter-file``).

    Returns:
        The selected images, sorted by path.

    Raises:
        InputSelectionError: a requested participant does not exist, or nothing matched.
    """
    bids_dir = Path(bids_dir).resolve()
    layout = _layout(bids_dir)
    subjects = set(layout.get_subjects())
    missing = sorted(set(participant_labels) - subjects)
    if missing:
        raise InputSelectionError(
            f"participant(s) {', '.join(missing)} not found in {bids_dir} "
            f"(available: {', '.join(sorted(subjects)) or 'none'})"
        )
    scope: dict = {"extension": NIFTI_EXTENSIONS}
    if participant_labels:
        scope["subject"] = list(participant_labels)

    def query(**entities) -> list:
        found = layout.get(return_type="object", **{**scope, **entities})
        if session_labels:
            found = [f for f in found if f.get_entities().get("session") in (None, *session_labels)]
        return found

    if filters is not None:
        selected = query(**_pybids_filters(filters))
        megre = [f for f in selected if f.get_entities().get("suffix") == "MEGRE"]
        if megre and "echo" not in filters:
            selected = [f for f in selected if f not in megre] + _pick_megre_echoes(megre, layout)
    else:
        anat = query(datatype="anat")
        outphase = [
            f for f in anat
            if "outphase" in str(f.get_entities().get("acquisition", "")).lower()
            and f.get_entities().get("part", "mag") == "mag"
            and f.get_entities().get("suffix") != "MEGRE"
        ]
        megre = [
            f for f in anat
            if f.get_entities().get("suffix") == "MEGRE" and f.get_entities().get("part", "mag") == "mag"
        ]
        selected = outphase + _pick_megre_echoes(megre, layout)
    images = sorted({_to_input(f, bids_dir, layout) for f in selected}, key=lambda im: im.relpath)
    if not images:
        what = "the --bids-filter-file query" if filters is not None else "the default query (acq-*outphase* anatomical images or MEGRE series)"
        raise InputSelectionError(f"no input images in {bids_dir} matched {what}")
    return images
