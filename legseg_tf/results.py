"""Records that cross module boundaries at the participant level."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class InputImage:
    """One input image selected from the BIDS dataset.

    Attributes:
        subject: participant label without ``sub-``.
        session: session label without ``ses-``, or None.
        path: absolute path of the NIfTI file.
        relpath: path relative to the BIDS root (POSIX separators).
        entities: BIDS entities of the file as pybids names them (subject, session, acquisition,
            echo, part, suffix, extension, ...).
        echo_time: EchoTime of the image in seconds, when known.
        body_part: BodyPartExamined of the image's sidecar (e.g. "THIGH", "LEG"), when known;
            a prior for the segmenter's region ranges.
    """

    subject: str
    session: str | None
    path: Path
    relpath: str
    entities: dict = field(default_factory=dict, hash=False, compare=False)
    echo_time: float | None = None
    body_part: str | None = None

    @property
    def source_stem(self) -> str:
        """File name without suffix and extension: the BIDS "source entities"."""
        name = Path(self.relpath).name
        for ext in (".nii.gz", ".nii"):
            if name.endswith(ext):
                name = name[: -len(ext)]
                break
        return name.rsplit("_", 1)[0]


@dataclass
class ImageResult:
    """What the participant level produced for one input image.

    Attributes:
        image: the input.
        status: "done", "skipped" (output existed) or "failed".
        dseg_path: the written label map (also set when skipped).
        sidecar_path: its JSON sidecar.
        labels_ras: (x, y, z) uint16 label map in canonical RAS (None when skipped/failed).
        volume_ras: (x, y, z) float32 input image in canonical RAS (None when skipped/failed).
        affine_ras: 4x4 affine of the canonical RAS arrays.
        zooms_mm: voxel size (x, y, z) in mm of the canonical RAS arrays.
        report: the segmenter's report in its JSON form
            (:meth:`legseg_tf.segmentation_report.SegmentationReport.to_dict`, with
            ``timings_s``); a skipped image's comes from its sidecar (``legseg.report``).
        models: models used ({id, role, sha256}).
        probseg_path: 4-D probability map, when written.
        error: one-line error message when failed.
    """

    image: InputImage
    status: str
    dseg_path: Path | None = None
    sidecar_path: Path | None = None
    labels_ras: np.ndarray | None = None
    volume_ras: np.ndarray | None = None
    affine_ras: np.ndarray | None = None
    zooms_mm: tuple[float, float, float] | None = None
    report: dict = field(default_factory=dict)
    models: list[dict] = field(default_factory=list)
    probseg_path: Path | None = None
    error: str | None = None
